//! `ferry worker`: one instruction worker of the distributed mode. It owns the partitions the
//! membership rule gives it, consumes their RabbitMQ queues, applies to the shared data
//! directory and publishes changes on Redis.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use ferry_cluster::redis_bus::RedisChangeBus;
use ferry_cluster::worker_node::{WorkerNode, WorkerNodeOptions};
use ferry_config::FerryConfig;
use std::time::Duration;

use super::cluster_options::{bus_options, node_id, queue_limits};
use super::signals::cancel_on_signal;
use super::startup::{ensure_data_dir, runtime, start_logger};
use super::store_options::store_options;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// This worker's id in the cluster (default: role, host, pid and start time).
    #[arg(long)]
    id: Option<String>,
}

pub fn run(config: &FerryConfig, args: &WorkerArgs) -> anyhow::Result<ExitCode> {
    let id = args.id.clone().unwrap_or_else(|| node_id("worker"));
    ensure_data_dir(config)?;
    let dir = &config.store.data_dir;
    let (logger, _sighup) = start_logger(config, &id)?;
    let c = &config.cluster;
    let runtime = runtime("ferry-worker")?;
    let bus =
        RedisChangeBus::connect(&c.bus_url, &c.namespace, bus_options(c), runtime.handle().clone())
            .with_context(|| format!("connecting to the change bus at {}", c.bus_url))?;
    let mut options = WorkerNodeOptions::new(&id, dir.clone(), &c.broker_url, &c.bus_url);
    options.namespace = c.namespace.clone();
    options.store = store_options(&config.store);
    options.queue_limits = queue_limits(c);
    options.lease = Duration::from_millis(c.lease_ms);
    runtime.block_on(async {
        let shutdown = cancel_on_signal("worker")?;
        let bus = Arc::new(bus);
        let node = WorkerNode::new(options, bus.clone(), Some(logger.instruction_log()))
            .await
            .context("starting the worker")?;
        println!(
            "ferry worker {id} running (data {}, broker {}, bus {})",
            dir.display(),
            c.broker_url,
            c.bus_url
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        node.run(shutdown).await;
        // The partitions are closed: let the last change events reach Redis before exiting.
        let flushed = tokio::task::spawn_blocking(move || bus.flush(Duration::from_secs(5))).await;
        if !matches!(flushed, Ok(true)) {
            tracing::warn!("some change events may not have reached redis before stopping");
        }
        anyhow::Ok(())
    })?;
    drop(runtime);
    logger.shutdown().context("stopping the logger")?;
    eprintln!("ferry worker: stopped");
    Ok(ExitCode::SUCCESS)
}
