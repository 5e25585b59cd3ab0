//! `ferry destroy`: deletes a stopped distributed cluster from its brokers (its queues with
//! whatever they still hold, its exchanges, its Redis history and membership). The data
//! directory is left alone.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use ferry_cluster::teardown::destroy;
use ferry_config::FerryConfig;

use super::status::cluster_topology;

#[derive(Args, Debug)]
pub struct DestroyArgs {
    /// The cluster's namespace (`cluster.namespace`) typed out again: what is deleted cannot
    /// be recovered.
    #[arg(long, value_name = "NAMESPACE")]
    confirm: String,
}

pub fn run(config: &FerryConfig, args: &DestroyArgs) -> anyhow::Result<ExitCode> {
    let c = &config.cluster;
    if args.confirm != c.namespace {
        bail!(
            "--confirm {:?} is not this configuration's cluster namespace {:?}: nothing deleted",
            args.confirm,
            c.namespace
        );
    }
    let runtime = super::startup::single_thread_runtime()?;
    runtime.block_on(async {
        let topology = cluster_topology(config).await?;
        let removed = destroy(&c.broker_url, &c.bus_url, &topology).await?;
        println!(
            "deleted cluster {}: {} partition queues, the dead letters, 2 exchanges, {} redis keys",
            c.namespace, removed.partition_queues, removed.redis_keys
        );
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
