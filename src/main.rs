//! The `ferry` binary: one CLI, one subcommand per job.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferry_config::{ConfigSources, LoadedConfig};

/// jemalloc rather than glibc's malloc: it keeps allocations of one size together (the
/// store's cached records among them), and on transparent huge pages its arenas need far
/// fewer TLB entries. Cached reads of 100,000 files were about a quarter faster (see
/// BENCHMARKS.md); the store's benchmark runs the same allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: its arenas on transparent huge pages (where the
/// kernel allows them on request, as Debian's default `madvise` does).
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_OPTIONS: &[u8; 11] = b"thp:always\0";

#[derive(Parser, Debug)]
#[command(name = "ferry", version, about = "Realtime file and instruction processing pipeline")]
struct Cli {
    /// Configuration file (default: ./ferry.toml when present).
    #[arg(long, global = true, env = "FERRY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set store.wal_sync=os (repeatable; wins over file and env).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    sets: Vec<String>,
    /// The data directory (same as --set store.data_dir=DIR).
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a data directory with its partitions.
    Init(commands::init::InitArgs),
    /// Show or check the configuration.
    #[command(subcommand)]
    Config(commands::config::ConfigCommand),
    /// Read, write and inspect the file store directly (no server needed).
    #[command(subcommand)]
    Files(commands::files::FilesCommand),
    /// Run the whole pipeline in this process: WebSocket ingress, worker, store and logger.
    Serve(commands::serve::ServeArgs),
    /// Serve the data directory read-only over HTTP for reporting tools (no authentication:
    /// loopback only unless --public).
    FileServer(commands::file_server::FileServerArgs),
    /// Run one instruction worker of the distributed mode (RabbitMQ and Redis, [cluster]).
    Worker(commands::worker::WorkerArgs),
    /// Run one WebSocket ingress node of the distributed mode (RabbitMQ and Redis, [cluster]).
    Ingress(commands::ingress_node::IngressArgs),
    /// Show a distributed cluster: ingress nodes, workers and their partitions, queue depths,
    /// dead letters, instructions/s ([cluster]).
    Status(commands::status::StatusArgs),
    /// List or replay the dead letters of a distributed cluster ([cluster]).
    #[command(subcommand)]
    Dlq(commands::dlq::DlqCommand),
    /// Delete a stopped distributed cluster's queues, exchanges and Redis keys ([cluster]);
    /// refused while a worker or ingress node is live.
    Destroy(commands::destroy::DestroyArgs),
    /// Issue client tokens signed with the auth secret.
    #[command(subcommand)]
    Token(commands::token::TokenCommand),
    /// Talk to a running server: put, append, get, ls, watch.
    Client(commands::client::ClientArgs),
    /// Load a server over real WebSocket connections, measure, and verify nothing was lost.
    Bench(Box<commands::bench::BenchArgs>),
}

impl Cli {
    fn load_config(&self) -> anyhow::Result<LoadedConfig> {
        let mut sets = self.sets.clone();
        if let Some(dir) = &self.data {
            let dir = dir.to_str().context("--data must be valid UTF-8")?;
            sets.push(format!("store.data_dir={}", toml_quote(dir)));
        }
        let sources = ConfigSources { file: self.config.clone(), env: true, sets };
        Ok(ferry_config::load(&sources)?)
    }
}

fn toml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Config(cmd) => commands::config::run(&cli, cmd),
        Command::Init(args) => commands::init::run(&cli.load_config()?.config, args),
        Command::Files(cmd) => commands::files::run(&cli.load_config()?.config, cmd),
        Command::Serve(args) => commands::serve::run(&cli.load_config()?.config, args),
        Command::FileServer(args) => commands::file_server::run(&cli.load_config()?.config, args),
        Command::Worker(args) => commands::worker::run(&cli.load_config()?.config, args),
        Command::Ingress(args) => commands::ingress_node::run(&cli.load_config()?.config, args),
        Command::Status(args) => commands::status::run(&cli.load_config()?.config, args),
        Command::Dlq(cmd) => commands::dlq::run(&cli.load_config()?.config, cmd),
        Command::Destroy(args) => commands::destroy::run(&cli.load_config()?.config, args),
        Command::Token(cmd) => commands::token::run(&cli.load_config()?.config, cmd),
        Command::Client(args) => commands::client::run(&cli.load_config()?.config, args),
        Command::Bench(args) => commands::bench::run(&cli.load_config()?.config, args),
    }
}
