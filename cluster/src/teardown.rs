//! Deleting a stopped cluster from its brokers (`ferry destroy`): its partition queues, dead
//! letters and exchanges in RabbitMQ, and every Redis key of its namespace (file histories,
//! membership, descriptions, the recorded layout).
//!
//! Durable queues and history streams outlive every process on purpose, so a cluster that is
//! gone for good (a test, a benchmark, a retired deployment) leaves them behind until someone
//! deletes them; each idle quorum queue still costs RabbitMQ its own processes and ticks. A
//! running member would declare its queues again and lose what the queues held, so
//! [`destroy`] refuses while any worker or ingress node holds a live lease.

use lapin::{Connection, ConnectionProperties};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, RedisError};

use crate::membership::{Membership, MembershipError, Role};
use crate::redis_bus::glob_escape;
use crate::topology::Topology;

/// Keys asked for per `SCAN` step and deleted per `UNLINK`.
const KEYS_PER_STEP: usize = 1000;

/// Why a cluster was not (entirely) deleted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TeardownError {
    #[error(
        "cluster {namespace:?} still has live members (workers {workers:?}, ingress nodes \
         {ingress:?}): stop them first"
    )]
    LiveMembers { namespace: String, workers: Vec<String>, ingress: Vec<String> },
    #[error("reading the membership of cluster {namespace:?}")]
    Membership {
        namespace: String,
        #[source]
        source: MembershipError,
    },
    #[error("connecting to rabbitmq at {url}")]
    ConnectBroker {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("deleting the queues and exchanges of cluster {namespace:?}")]
    DeleteTopology {
        namespace: String,
        #[source]
        source: lapin::Error,
    },
    #[error("deleting the redis keys of cluster {namespace:?} at {url}")]
    DeleteKeys {
        namespace: String,
        url: String,
        #[source]
        source: RedisError,
    },
}

/// What [`destroy`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Partition queues deleted (with the dead-letter queue and both exchanges).
    pub partition_queues: u32,
    /// Redis keys deleted.
    pub redis_keys: u64,
}

/// Deletes `topology`'s queues and exchanges from the broker at `broker_url` and every key of
/// its namespace from the Redis at `bus_url`, unless a member is live.
pub async fn destroy(
    broker_url: &str,
    bus_url: &str,
    topology: &Topology,
) -> Result<Removed, TeardownError> {
    let namespace = topology.namespace.clone();
    let live = |role| async move {
        Membership::connect(bus_url, &topology.namespace, role).await?.live().await
    };
    let membership = |source| TeardownError::Membership { namespace: namespace.clone(), source };
    let workers = live(Role::Worker).await.map_err(membership)?;
    let ingress = live(Role::Ingress).await.map_err(membership)?;
    if !workers.is_empty() || !ingress.is_empty() {
        return Err(TeardownError::LiveMembers { namespace, workers, ingress });
    }

    let connection = Connection::connect(broker_url, ConnectionProperties::default())
        .await
        .map_err(|source| TeardownError::ConnectBroker { url: broker_url.to_owned(), source })?;
    let deleted = async { topology.delete(&connection.create_channel().await?).await }.await;
    let _ = connection.close(0, "deleted".into()).await;
    deleted
        .map_err(|source| TeardownError::DeleteTopology { namespace: namespace.clone(), source })?;

    let keys_error = |source| TeardownError::DeleteKeys {
        namespace: namespace.clone(),
        url: bus_url.to_owned(),
        source,
    };
    let client = redis::Client::open(bus_url).map_err(keys_error)?;
    let mut redis = client.get_multiplexed_async_connection().await.map_err(keys_error)?;
    let redis_keys = delete_namespace_keys(&mut redis, &namespace).await.map_err(keys_error)?;
    Ok(Removed { partition_queues: topology.partitions, redis_keys })
}

/// Deletes every Redis key of `namespace`, a step of `SCAN` at a time (never `KEYS`, which
/// would hold a shared Redis for the whole keyspace); returns how many there were. Members of
/// the namespace still running would write theirs again: [`destroy`] checks first.
pub async fn delete_namespace_keys(
    redis: &mut MultiplexedConnection,
    namespace: &str,
) -> Result<u64, RedisError> {
    let pattern = format!("{}:*", glob_escape(namespace));
    let mut cursor = 0u64;
    let mut deleted = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(KEYS_PER_STEP)
            .query_async(redis)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis.unlink(keys).await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}
