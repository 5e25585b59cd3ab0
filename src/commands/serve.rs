//! `ferry serve`: the whole pipeline in one process: store, worker, in-process queue and bus,
//! WebSocket ingress and logger.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use ferry_config::FerryConfig;
use ferry_file_server::Store;
use ferry_ingress::{Authenticator, Ingress};
use ferry_instruction_worker::{
    LocalBus, LocalBusOptions, LocalQueue, LocalQueueOptions, Worker, WorkerOptions,
};
use tokio::net::TcpListener;

use super::ingress_options::{authenticator, ingress_options, listen_addr};
use super::signals::cancel_on_signal;
use super::startup::{ensure_data_dir, runtime, start_logger};
use super::store_options::store_options;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (default: ingress.listen, 127.0.0.1:7700); port 0 picks a free one.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

pub fn run(config: &FerryConfig, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let listen = match args.listen {
        Some(addr) => addr,
        None => listen_addr(&config.ingress)?,
    };
    let auth = authenticator(listen, &config.auth)?;
    ensure_data_dir(config)?;
    let dir = &config.store.data_dir;
    let (logger, _sighup) = start_logger(config, &format!("serve-{}", std::process::id()))?;
    let store = Arc::new(
        Store::open(dir, store_options(&config.store))
            .with_context(|| format!("opening {}", dir.display()))?,
    );
    let bus = Arc::new(LocalBus::new(LocalBusOptions::default()));
    let worker_options = WorkerOptions::default();
    let mut ingress_options = ingress_options(&config.ingress);
    ingress_options.custom_ops =
        worker_options.custom_ops.iter().map(|op| op.name().to_owned()).collect();
    let worker =
        Worker::new(store.clone(), bus.clone(), Some(logger.instruction_log()), worker_options)?;
    let queue = Arc::new(LocalQueue::start(Arc::new(worker), LocalQueueOptions::default())?);
    let ingress = Ingress::new(ingress_options, auth.clone(), queue.clone(), bus);
    if config.ingress.metrics {
        super::metrics::expose(&ingress, Some(&store), logger.control());
    }

    let runtime = runtime("ferry-ingress")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let shutdown = cancel_on_signal("serve")?;
        announce(addr, &auth, config);
        ingress.serve(listener, shutdown).await;
        anyhow::Ok(())
    })?;
    tracing::info!("connections drained; stopping the worker");
    drop(ingress);
    // Applies and answers whatever is still queued, then joins the worker threads.
    queue.shutdown();
    drop(queue);
    match Arc::try_unwrap(store) {
        Ok(store) => store.close().context("closing the store")?,
        Err(store) => {
            store.flush().context("flushing the store")?;
        }
    }
    tracing::info!("store closed");
    logger.shutdown().context("stopping the logger")?;
    eprintln!("ferry serve: stopped");
    Ok(ExitCode::SUCCESS)
}

fn announce(addr: SocketAddr, auth: &Authenticator, config: &FerryConfig) {
    println!("ferry serving ws://{addr}/v1/ws (data {})", config.store.data_dir.display());
    println!("  health: http://{addr}/healthz  readiness: http://{addr}/readyz");
    if config.ingress.metrics {
        println!("  metrics: http://{addr}/metrics");
    }
    if auth.is_open() {
        let warning = "WARNING: no auth secret configured: this server is OPEN (loopback only): \
                       every client may read and write every file";
        eprintln!("{warning}");
        tracing::warn!("{warning}");
        println!("  try: ferry client --url ws://{addr}/v1/ws put /hello.txt - <<< 'hi'");
    } else {
        println!("  tokens required: ferry token issue --sub NAME --read / --write /home/NAME/");
        println!("  try: ferry client --url ws://{addr}/v1/ws --token TOKEN get /home/NAME/x");
    }
    tracing::info!(%addr, "serving");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
