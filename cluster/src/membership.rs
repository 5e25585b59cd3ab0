//! Who is alive: worker and ingress processes heartbeat into Redis, and every heartbeat
//! answers with the live members of the same role, so that each worker computes partition
//! ownership ([`crate::assignment`]) from the same list.
//!
//! Keys (all under the cluster's namespace), for role `worker` or `ingress`:
//! - `{ns}:{role}s`, a sorted set: member = process id, score = when its lease ends (ms, Redis's
//!   own clock, so that the machines' clocks need not agree). A heartbeat renews the lease and
//!   drops expired members in one script;
//! - `{ns}:{role}:{id}`, a hash the process describes itself in (pid, owned partitions,
//!   connections...), expiring with the lease, for `ferry status`;
//! - `{ns}:layout`, `"{partitions}/{depth}"`, written by the first worker: ingress nodes on
//!   machines without the data directory route by it.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

/// Why Redis could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    #[error("redis at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("redis {what}: {source}")]
    Command {
        what: &'static str,
        #[source]
        source: redis::RedisError,
    },
    #[error(
        "the cluster's layout in redis is {found:?} but this data directory has {ours:?}: \
         every worker of a cluster must serve the same data directory layout"
    )]
    LayoutMismatch { found: String, ours: String },
    #[error("the cluster's layout in redis is unreadable: {found:?}")]
    BadLayout { found: String },
}

const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[2] == '0' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  -- A cluster that stops heartbeating leaves nothing behind.
  redis.call('PEXPIRE', KEYS[1], 10 * tonumber(ARGV[2]))
end
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
";

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Worker,
    Ingress,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Ingress => "ingress",
        }
    }
}

/// The cluster's membership of one role in one Redis.
#[derive(Clone)]
pub struct Membership {
    namespace: String,
    role: Role,
    redis: ConnectionManager,
    heartbeat: Script,
}

impl Membership {
    pub async fn connect(
        url: &str,
        namespace: &str,
        role: Role,
    ) -> Result<Membership, MembershipError> {
        let connect = |source| MembershipError::Connect { url: url.to_owned(), source };
        let client = redis::Client::open(url).map_err(connect)?;
        let redis = ConnectionManager::new(client).await.map_err(connect)?;
        Ok(Membership {
            namespace: namespace.to_owned(),
            role,
            redis,
            heartbeat: Script::new(HEARTBEAT),
        })
    }

    fn workers_key(&self) -> String {
        format!("{}:{}s", self.namespace, self.role.as_str())
    }

    fn worker_key(&self, id: &str) -> String {
        format!("{}:{}:{id}", self.namespace, self.role.as_str())
    }

    fn layout_key(&self) -> String {
        format!("{}:layout", self.namespace)
    }

    /// Renews `id`'s lease for `lease` and returns the live workers, sorted.
    pub async fn heartbeat(
        &self,
        id: &str,
        lease: Duration,
    ) -> Result<Vec<String>, MembershipError> {
        let ms = lease.as_millis().max(1) as u64;
        self.invoke(id, ms).await
    }

    /// Removes `id` at once (a clean stop), returning the workers left.
    pub async fn leave(&self, id: &str) -> Result<Vec<String>, MembershipError> {
        let live = self.invoke(id, 0).await?;
        let mut redis = self.redis.clone();
        let _: () = redis
            .del(self.worker_key(id))
            .await
            .map_err(|source| MembershipError::Command { what: "del", source })?;
        Ok(live)
    }

    /// The live workers, without renewing anyone.
    pub async fn live(&self) -> Result<Vec<String>, MembershipError> {
        let mut redis = self.redis.clone();
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut redis)
            .await
            .map_err(|source| MembershipError::Command { what: "time", source })?;
        let now = secs * 1000 + micros / 1000;
        let mut live: Vec<String> = redis
            .zrangebyscore(self.workers_key(), now, "+inf")
            .await
            .map_err(|source| MembershipError::Command { what: "zrangebyscore", source })?;
        live.sort();
        Ok(live)
    }

    async fn invoke(&self, id: &str, lease_ms: u64) -> Result<Vec<String>, MembershipError> {
        let mut redis = self.redis.clone();
        let mut live: Vec<String> = self
            .heartbeat
            .key(self.workers_key())
            .arg(id)
            .arg(lease_ms)
            .invoke_async(&mut redis)
            .await
            .map_err(|source| MembershipError::Command { what: "heartbeat script", source })?;
        live.sort();
        Ok(live)
    }

    /// Describes worker `id` for `ferry status`; the description expires after `ttl`.
    pub async fn describe(
        &self,
        id: &str,
        fields: &[(&str, String)],
        ttl: Duration,
    ) -> Result<(), MembershipError> {
        let mut redis = self.redis.clone();
        let key = self.worker_key(id);
        let _: () = redis::pipe()
            .atomic()
            .del(&key)
            .hset_multiple(&key, fields)
            .pexpire(&key, ttl.as_millis() as i64)
            .query_async(&mut redis)
            .await
            .map_err(|source| MembershipError::Command { what: "describe worker", source })?;
        Ok(())
    }

    /// A worker's description (empty when it has none).
    pub async fn description(&self, id: &str) -> Result<Vec<(String, String)>, MembershipError> {
        let mut redis = self.redis.clone();
        redis
            .hgetall(self.worker_key(id))
            .await
            .map_err(|source| MembershipError::Command { what: "hgetall", source })
    }

    /// Records the data directory's layout, or checks it against the one recorded.
    pub async fn agree_layout(&self, partitions: u32, depth: u32) -> Result<(), MembershipError> {
        let ours = format!("{partitions}/{depth}");
        let mut redis = self.redis.clone();
        let _: bool = redis
            .set_nx(self.layout_key(), &ours)
            .await
            .map_err(|source| MembershipError::Command { what: "setnx layout", source })?;
        let found: String = redis
            .get(self.layout_key())
            .await
            .map_err(|source| MembershipError::Command { what: "get layout", source })?;
        if found != ours {
            return Err(MembershipError::LayoutMismatch { found, ours });
        }
        Ok(())
    }

    /// The layout a worker recorded, if any: `(partitions, depth)`.
    pub async fn layout(&self) -> Result<Option<(u32, u32)>, MembershipError> {
        let mut redis = self.redis.clone();
        let found: Option<String> = redis
            .get(self.layout_key())
            .await
            .map_err(|source| MembershipError::Command { what: "get layout", source })?;
        found.map(|f| parse_layout(&f).ok_or(MembershipError::BadLayout { found: f })).transpose()
    }
}

fn parse_layout(text: &str) -> Option<(u32, u32)> {
    let (p, d) = text.split_once('/')?;
    let (p, d) = (p.parse().ok()?, d.parse().ok()?);
    (p > 0 && d > 0).then_some((p, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_parse_strictly() {
        assert_eq!(parse_layout("16/2"), Some((16, 2)));
        assert_eq!(parse_layout("0/2"), None);
        assert_eq!(parse_layout("16"), None);
        assert_eq!(parse_layout("a/b"), None);
    }
}
