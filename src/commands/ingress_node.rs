//! `ferry ingress`: one WebSocket ingress node of the distributed mode. Instructions go to
//! RabbitMQ, answers come back on the node's reply queue, change events come from Redis.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use ferry_cluster::amqp_queue::{AmqpQueue, PartitionLayout};
use ferry_cluster::membership::{Membership, Role};
use ferry_cluster::redis_bus::RedisChangeBus;
use ferry_cluster::topology::Topology;
use ferry_config::FerryConfig;
use ferry_file_server::store::read_layout;
use ferry_ingress::placement::NodeLoad;
use ferry_ingress::{ws_url, Ingress};
use tokio::net::TcpListener;

use super::cluster_options::{amqp_queue_options, bus_options, node_id, queue_limits};
use super::ingress_options::{authenticator, ingress_options, listen_addr};
use super::signals::cancel_on_signal;
use super::startup::{runtime, start_logger};

/// How long an ingress waits for a worker to record the cluster's layout.
const LAYOUT_WAIT: Duration = Duration::from_secs(60);

#[derive(Args, Debug)]
pub struct IngressArgs {
    /// Address to listen on (default: ingress.listen); port 0 picks a free one.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// This node's id in the cluster (default: role, host, pid and start time).
    #[arg(long)]
    id: Option<String>,
}

pub fn run(config: &FerryConfig, args: &IngressArgs) -> anyhow::Result<ExitCode> {
    let listen = match args.listen {
        Some(addr) => addr,
        None => listen_addr(&config.ingress)?,
    };
    let auth = authenticator(listen, &config.auth)?;
    let id = args.id.clone().unwrap_or_else(|| node_id("ingress"));
    let c = &config.cluster;
    let (logger, _sighup) = start_logger(config, &id)?;
    let runtime = runtime("ferry-ingress")?;
    let bus =
        RedisChangeBus::connect(&c.bus_url, &c.namespace, bus_options(c), runtime.handle().clone())
            .with_context(|| format!("connecting to the change bus at {}", c.bus_url))?;
    runtime.block_on(async {
        let shutdown = cancel_on_signal("ingress")?;
        let membership = Membership::connect(&c.bus_url, &c.namespace, Role::Ingress)
            .await
            .context("connecting to redis")?;
        let layout = cluster_layout(config, &membership).await?;
        let topology = Topology::new(&c.namespace, layout.partitions, queue_limits(c));
        let queue = AmqpQueue::start(&c.broker_url, topology, layout, &id, amqp_queue_options(c))
            .await
            .context("connecting the instruction queue")?;
        let queue = Arc::new(queue);
        let ingress = Ingress::new(
            ingress_options(&config.ingress),
            auth.clone(),
            queue.clone(),
            Arc::new(bus),
        );
        if config.ingress.metrics {
            super::metrics::expose(&ingress, None, logger.control());
        }
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        println!(
            "ferry ingress {id} serving ws://{addr}/v1/ws (broker {}, bus {})",
            c.broker_url, c.bus_url
        );
        if auth.is_open() {
            eprintln!("WARNING: no auth secret configured: this ingress is OPEN (loopback only)");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let ingress = Arc::new(ingress);
        let capacity = config.ingress.max_connections;
        let heartbeat = tokio::spawn(heartbeat(
            membership,
            id.clone(),
            addr,
            capacity,
            ingress.clone(),
            queue,
            c.lease_ms,
        ));
        ingress.serve(listener, shutdown).await;
        heartbeat.abort();
        anyhow::Ok(())
    })?;
    drop(runtime);
    logger.shutdown().context("stopping the logger")?;
    eprintln!("ferry ingress: stopped");
    Ok(ExitCode::SUCCESS)
}

/// The partition layout: from the local data directory when there is one, else as a worker
/// recorded it in Redis.
async fn cluster_layout(
    config: &FerryConfig,
    membership: &Membership,
) -> anyhow::Result<PartitionLayout> {
    if let Ok(layout) = read_layout(&config.store.data_dir) {
        return Ok(PartitionLayout {
            partitions: layout.partitions,
            depth: layout.partition_depth,
        });
    }
    let deadline = tokio::time::Instant::now() + LAYOUT_WAIT;
    loop {
        if let Some((partitions, depth)) = membership.layout().await? {
            return Ok(PartitionLayout { partitions, depth });
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no worker has recorded the cluster's layout in redis after {LAYOUT_WAIT:?}: start a worker first");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keeps the node in the membership with its address, connection count, capacity and the
/// instructions and AMQP messages it sent (their ratio is how well batching works), and
/// refreshes the other nodes' loads for `GET /v1/route`.
async fn heartbeat(
    membership: Membership,
    id: String,
    addr: SocketAddr,
    capacity: usize,
    ingress: Arc<Ingress>,
    queue: Arc<AmqpQueue>,
    lease_ms: u64,
) {
    let lease = Duration::from_millis(lease_ms);
    let mut tick = tokio::time::interval(lease / 3);
    loop {
        tick.tick().await;
        let members = match membership.heartbeat(&id, lease).await {
            Ok(members) => members,
            Err(e) => {
                tracing::warn!(error = %e, "ingress heartbeat");
                continue;
            }
        };
        let stats = ingress.stats();
        let fields = [
            ("pid", std::process::id().to_string()),
            ("addr", addr.to_string()),
            ("connections", stats.connections.to_string()),
            ("capacity", capacity.to_string()),
            ("submitted", queue.stats().submitted.load(Ordering::Relaxed).to_string()),
            ("messages", queue.stats().messages_published.load(Ordering::Relaxed).to_string()),
        ];
        if let Err(e) = membership.describe(&id, &fields, lease).await {
            tracing::warn!(error = %e, "describing the ingress");
        }
        let mut peers = Vec::new();
        for member in members.iter().filter(|m| **m != id) {
            if let Ok(description) = membership.description(member).await {
                peers.extend(peer_load(&description));
            }
        }
        ingress.set_peers(peers);
    }
}

/// A peer's load from its description in Redis, if complete.
fn peer_load(description: &[(String, String)]) -> Option<NodeLoad> {
    let field = |name: &str| description.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let addr: SocketAddr = field("addr")?.parse().ok()?;
    Some(NodeLoad {
        url: ws_url(addr),
        connections: field("connections")?.parse().ok()?,
        capacity: field("capacity")?.parse().ok()?,
    })
}
