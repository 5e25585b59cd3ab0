//! `ferry file-server`: the read-only HTTP service over a data directory, for reporting tools.
//! It reads the committed B+tree snapshots beside a running writer and needs read permission
//! only: no lock, no WAL, no queue, and nothing written into the data directory.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use ferry_config::FerryConfig;
use ferry_file_server::http::{self, PathRules};
use ferry_file_server::ReadOnlyStore;
use tokio::net::TcpListener;

use super::signals::cancel_on_signal;
use super::startup::runtime;

#[derive(Args, Debug)]
pub struct FileServerArgs {
    /// Address to listen on; port 0 picks a free one. Must be a loopback address unless
    /// --public is given.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7701")]
    listen: SocketAddr,
    /// Allow a non-loopback address. The service has NO authentication: whoever can reach the
    /// address can read every file.
    #[arg(long)]
    public: bool,
}

pub fn run(config: &FerryConfig, args: &FileServerArgs) -> anyhow::Result<ExitCode> {
    let listen = args.listen;
    if !listen.ip().is_loopback() && !args.public {
        bail!(
            "refusing to listen on {listen}: the file server has no authentication, so it binds \
             loopback addresses only; give --public to serve every file to whoever can reach it"
        );
    }
    let dir = &config.store.data_dir;
    let store = Arc::new(
        ReadOnlyStore::open(dir).with_context(|| format!("opening {} to read", dir.display()))?,
    );
    let rules = PathRules {
        is_reserved: ferry_protocol::is_reserved,
        check_prefix: ferry_protocol::check_prefix,
    };
    let runtime = runtime("ferry-file-server")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let shutdown = cancel_on_signal("file-server")?;
        announce(addr, config);
        http::serve(listener, store, rules, shutdown).await.context("serving HTTP")
    })?;
    eprintln!("ferry file-server: stopped");
    Ok(ExitCode::SUCCESS)
}

fn announce(addr: SocketAddr, config: &FerryConfig) {
    println!(
        "ferry file-server serving http://{addr}/ (data {}, read-only)",
        config.store.data_dir.display()
    );
    println!("  try: curl http://{addr}/list?prefix=/  |  curl http://{addr}/files/PATH");
    if !addr.ip().is_loopback() {
        eprintln!("WARNING: no authentication: every file is readable by whoever reaches {addr}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
