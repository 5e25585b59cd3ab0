//! `ferry status`: a distributed cluster at a glance: ingress nodes and their connections,
//! workers and the partitions they hold, queue depths, dead letters and instructions/s.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use ferry_cluster::membership::{Membership, Role};
use ferry_cluster::status::{merge, StatusProbe};
use ferry_cluster::topology::Topology;
use ferry_config::FerryConfig;
use ferry_file_server::store::read_layout;

use super::cluster_options::queue_limits;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
    /// Time between the two samples instructions/s are computed from (0s: one sample, no rate).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    interval: Duration,
}

pub fn run(config: &FerryConfig, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::startup::single_thread_runtime()?;
    runtime.block_on(async {
        let c = &config.cluster;
        let topology = cluster_topology(config).await?;
        let probe = StatusProbe::connect(&c.broker_url, &c.bus_url, topology).await?;
        let first = probe.sample().await.context("sampling the cluster")?;
        let status = if args.interval.is_zero() {
            merge(probe.topology(), None, &first)
        } else {
            tokio::time::sleep(args.interval).await;
            let second = probe.sample().await.context("sampling the cluster")?;
            merge(probe.topology(), Some(&first), &second)
        };
        probe.close().await;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            print!("{status}");
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// The cluster's topology, sized by the layout the workers agreed on in Redis, or else by the
/// local data directory's.
pub(super) async fn cluster_topology(config: &FerryConfig) -> anyhow::Result<Topology> {
    let c = &config.cluster;
    let workers = Membership::connect(&c.bus_url, &c.namespace, Role::Worker)
        .await
        .context("connecting to redis")?;
    let recorded = workers.layout().await.context("reading the cluster's layout from redis")?;
    let partitions = match recorded {
        Some((partitions, _)) => partitions,
        None => match read_layout(&config.store.data_dir) {
            Ok(layout) => layout.partitions,
            Err(e) => bail!(
                "cluster {:?} has no layout in redis (no worker has started) and the local \
                 data directory gives none either: {e}",
                c.namespace
            ),
        },
    };
    Ok(Topology::new(&c.namespace, partitions, queue_limits(c)))
}
