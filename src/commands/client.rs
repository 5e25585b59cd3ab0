//! `ferry client`: talk to a running server over WebSocket.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Args, Subcommand};
use ferry_config::FerryConfig;
use ferry_ingress::client::Client;
use serde_json::{json, Value};

use super::ingress_options::listen_addr;

#[derive(Args, Debug)]
pub struct ClientArgs {
    /// The server (default: ws://<ingress.listen>/v1/ws).
    #[arg(long, env = "FERRY_URL", global = true)]
    url: Option<String>,
    /// The token, when the server requires one.
    #[arg(long, env = "FERRY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: ClientCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Create or replace a file with the content of FILE, or of stdin with `-`.
    Put {
        path: String,
        #[arg(default_value = "-")]
        source: String,
        /// Only if the file is at this revision (0: must not exist).
        #[arg(long)]
        if_rev: Option<u64>,
        /// Idempotency key: a retry with the same key is applied once.
        #[arg(long)]
        key: Option<String>,
    },
    /// Append the content of FILE (or stdin) to a file, creating it if absent.
    Append {
        path: String,
        #[arg(default_value = "-")]
        source: String,
        #[arg(long)]
        key: Option<String>,
    },
    /// Write a file's content to stdout.
    Get { path: String },
    /// List files under a prefix.
    Ls {
        #[arg(default_value = "/")]
        prefix: String,
        /// Also print revision and size.
        #[arg(long, short)]
        long: bool,
    },
    /// Print changes of a file (or of every file under --prefix) as JSON lines.
    Watch {
        /// The file to watch.
        #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
        path: Option<String>,
        /// Watch every file under this prefix instead.
        #[arg(long)]
        prefix: Option<String>,
        /// First replay the changes after this revision (files only).
        #[arg(long)]
        since_rev: Option<u64>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

pub fn run(config: &FerryConfig, args: &ClientArgs) -> anyhow::Result<ExitCode> {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => {
            let mut addr = listen_addr(&config.ingress)?;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("ws://{addr}/v1/ws")
        }
    };
    let runtime = super::startup::single_thread_runtime()?;
    runtime.block_on(async {
        let mut client = Client::connect(&url, args.token.as_deref()).await?;
        let code = command(&mut client, &args.command).await;
        client.close();
        code
    })
}

fn read_source(source: &str) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if source == "-" {
        std::io::stdin().read_to_end(&mut bytes).context("reading stdin")?;
    } else {
        bytes = std::fs::read(source).with_context(|| format!("reading {source}"))?;
    }
    Ok(bytes)
}

/// `content` as text when it is UTF-8, else `content_b64`.
fn with_content(mut request: Value, bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(text) => request["content"] = json!(text),
        Err(e) => {
            request["content_b64"] =
                json!(base64::engine::general_purpose::STANDARD.encode(e.into_bytes()))
        }
    }
    request
}

async fn command(client: &mut Client, command: &ClientCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClientCommand::Put { path, source, if_rev, key } => {
            let request = json!({"op": "put", "path": path, "if_rev": if_rev, "key": key});
            let answer = client.call(with_content(request, read_source(source)?)).await?;
            println!("{path} rev {}", answer["rev"]);
        }
        ClientCommand::Append { path, source, key } => {
            let request = json!({"op": "append", "path": path, "key": key});
            let answer = client.call(with_content(request, read_source(source)?)).await?;
            println!("{path} rev {}", answer["rev"]);
        }
        ClientCommand::Get { path } => {
            let answer = client.get(path).await?;
            let content = match (answer["content"].as_str(), answer["content_b64"].as_str()) {
                (Some(text), _) => text.as_bytes().to_vec(),
                (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64)?,
                (None, None) => bail!("the answer has no content: {answer}"),
            };
            let mut out = std::io::stdout().lock();
            out.write_all(&content)?;
            out.flush()?;
        }
        ClientCommand::Ls { prefix, long } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut after: Option<String> = None;
            loop {
                let page = client.list(prefix, after.as_deref()).await?;
                for entry in page["entries"].as_array().into_iter().flatten() {
                    let path = entry["path"].as_str().unwrap_or_default();
                    if *long {
                        let (rev, size) = (entry["rev"].as_u64(), entry["size"].as_u64());
                        let (rev, size) = (rev.unwrap_or(0), size.unwrap_or(0));
                        writeln!(out, "{rev:>6} {size:>10} {path}")?;
                    } else {
                        writeln!(out, "{path}")?;
                    }
                }
                match page["next"].as_str() {
                    Some(next) => after = Some(next.to_owned()),
                    None => break,
                }
            }
            out.flush()?;
        }
        ClientCommand::Watch { path, prefix, since_rev, count } => {
            match (path, prefix) {
                (Some(path), _) => {
                    let rev = client.sub(path, *since_rev).await?;
                    eprintln!("watching {path} (at rev {rev})");
                }
                (None, Some(prefix)) => {
                    client.sub_prefix(prefix).await?;
                    eprintln!("watching {prefix}*");
                }
                (None, None) => bail!("give a path or --prefix"),
            }
            let mut seen = 0u64;
            while count.is_none_or(|n| seen < n) {
                let Some(event) = client.next_event().await else {
                    match client.close_info() {
                        Some(close) => bail!(
                            "the server closed the connection: {} {}",
                            close.code,
                            close.reason
                        ),
                        None => bail!("the connection was lost"),
                    }
                };
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", event.raw)?;
                out.flush()?;
                seen += 1;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
