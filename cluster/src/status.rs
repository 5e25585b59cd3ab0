//! `ferry status`: what a cluster is doing, from what its members describe in Redis
//! ([`crate::membership`]) and what RabbitMQ says of its queues.
//!
//! A [`StatusProbe`] takes [`Sample`]s (I/O only); [`merge`] turns one or two samples into a
//! [`ClusterStatus`] (pure): partition owners come from the workers' descriptions, and
//! instructions per second from the `applied` totals the workers describe, compared between two
//! samples. Workers describe themselves every tick (250 ms by default), so a rate over a 1 s
//! interval is good to about a quarter. Queue depths come from passive declares: RabbitMQ's
//! counts of a quorum queue trail it by a moment.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Instant;

use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use serde::Serialize;

use crate::membership::{Membership, MembershipError, Role};
use crate::topology::Topology;

/// Why a status sample could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error("connecting to the broker at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("reading the depth of queue {queue}: {source}")]
    Queue {
        queue: String,
        #[source]
        source: lapin::Error,
    },
}

/// A queue as a passive `queue.declare` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueDepth {
    /// Messages ready for delivery (not those delivered and not yet acknowledged).
    pub ready: u32,
    pub consumers: u32,
}

/// A live member and the fields it describes itself with (empty until its first description).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSample {
    pub id: String,
    pub fields: BTreeMap<String, String>,
}

/// What the brokers said at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub workers: Vec<MemberSample>,
    pub ingress: Vec<MemberSample>,
    /// By partition; `None` for a queue that is not declared (no process has started yet).
    pub queues: Vec<Option<QueueDepth>>,
    pub dead_letters: Option<QueueDepth>,
}

/// Takes samples of one cluster.
pub struct StatusProbe {
    topology: Topology,
    workers: Membership,
    ingress: Membership,
    connection: Connection,
}

impl StatusProbe {
    /// Connects to the cluster's brokers (RabbitMQ at `broker_url`, Redis at `bus_url`).
    pub async fn connect(
        broker_url: &str,
        bus_url: &str,
        topology: Topology,
    ) -> Result<StatusProbe, StatusError> {
        let workers = Membership::connect(bus_url, &topology.namespace, Role::Worker).await?;
        let ingress = Membership::connect(bus_url, &topology.namespace, Role::Ingress).await?;
        let connection = Connection::connect(broker_url, ConnectionProperties::default())
            .await
            .map_err(|source| StatusError::Connect { url: broker_url.to_owned(), source })?;
        Ok(StatusProbe { topology, workers, ingress, connection })
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "ferry status done".into()).await;
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub async fn sample(&self) -> Result<Sample, StatusError> {
        let at = Instant::now();
        let workers = members(&self.workers).await?;
        let ingress = members(&self.ingress).await?;
        let mut channel = self.channel(&self.topology.dead_letters()).await?;
        let mut queues = Vec::with_capacity(self.topology.partitions as usize);
        for p in 0..self.topology.partitions {
            queues.push(self.depth(&mut channel, self.topology.partition_queue(p)).await?);
        }
        let dead_letters = self.depth(&mut channel, self.topology.dead_letters()).await?;
        let _ = channel.close(200, "status sampled".into()).await;
        Ok(Sample { at, workers, ingress, queues, dead_letters })
    }

    async fn channel(&self, queue: &str) -> Result<Channel, StatusError> {
        self.connection
            .create_channel()
            .await
            .map_err(|source| StatusError::Queue { queue: queue.to_owned(), source })
    }

    /// A missing queue closes the channel (404): it is reported as missing and the sample goes
    /// on with a new channel.
    async fn depth(
        &self,
        channel: &mut Channel,
        queue: String,
    ) -> Result<Option<QueueDepth>, StatusError> {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        match channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await {
            Ok(q) => {
                Ok(Some(QueueDepth { ready: q.message_count(), consumers: q.consumer_count() }))
            }
            Err(e) if is_not_found(&e) => {
                *channel = self.channel(&queue).await?;
                Ok(None)
            }
            Err(source) => Err(StatusError::Queue { queue, source }),
        }
    }
}

/// Whether the broker answered that a queue or exchange does not exist.
pub(crate) fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
}

async fn members(membership: &Membership) -> Result<Vec<MemberSample>, StatusError> {
    let mut out = Vec::new();
    for id in membership.live().await? {
        let fields = membership.description(&id).await?.into_iter().collect();
        out.push(MemberSample { id, fields });
    }
    Ok(out)
}

/// A worker as `ferry status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerStatus {
    pub id: String,
    pub pid: Option<u32>,
    pub partitions: Vec<u32>,
    pub data_dir: Option<String>,
    /// Instructions this process applied since it started.
    pub applied: Option<u64>,
    pub instructions_per_sec: Option<f64>,
}

/// An ingress node as `ferry status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngressStatus {
    pub id: String,
    pub pid: Option<u32>,
    pub addr: Option<String>,
    pub connections: Option<u64>,
}

/// One partition's queue and owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionStatus {
    pub partition: u32,
    /// `None` when the queue is not declared.
    pub ready: Option<u32>,
    pub consumers: Option<u32>,
    /// The worker that describes itself as holding the partition.
    pub owner: Option<String>,
}

/// The whole cluster, for `ferry status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterStatus {
    pub namespace: String,
    pub partitions: u32,
    pub workers: Vec<WorkerStatus>,
    pub ingress: Vec<IngressStatus>,
    pub queues: Vec<PartitionStatus>,
    /// Messages in `{ns}.dead`; `None` when it is not declared.
    pub dead_letters: Option<u32>,
    /// Over every worker seen in both samples; `None` from a single sample.
    pub instructions_per_sec: Option<f64>,
    /// Time between the two samples (ms).
    pub interval_ms: Option<u64>,
}

impl ClusterStatus {
    /// The partitions no worker describes as held.
    pub fn unowned(&self) -> Vec<u32> {
        self.queues.iter().filter(|q| q.owner.is_none()).map(|q| q.partition).collect()
    }
}

fn field<T: std::str::FromStr>(member: &MemberSample, name: &str) -> Option<T> {
    member.fields.get(name).and_then(|v| v.parse().ok())
}

/// A comma list of partitions; what is not a number is left out.
fn partition_list(text: &str) -> Vec<u32> {
    let mut out: Vec<u32> = text.split(',').filter_map(|p| p.trim().parse().ok()).collect();
    out.sort_unstable();
    out
}

/// Merges a sample (and an earlier one, for rates) into the cluster's status.
pub fn merge(topology: &Topology, earlier: Option<&Sample>, later: &Sample) -> ClusterStatus {
    let elapsed = earlier.map(|e| later.at.saturating_duration_since(e.at));
    let seconds = elapsed.map(|d| d.as_secs_f64()).filter(|s| *s > 0.0);
    let mut owners: BTreeMap<u32, String> = BTreeMap::new();
    let workers: Vec<WorkerStatus> = later
        .workers
        .iter()
        .map(|w| {
            let partitions =
                w.fields.get("partitions").map_or_else(Vec::new, |p| partition_list(p));
            for p in &partitions {
                owners.entry(*p).or_insert_with(|| w.id.clone());
            }
            let applied: Option<u64> = field(w, "applied");
            let before = earlier
                .and_then(|e| e.workers.iter().find(|b| b.id == w.id))
                .and_then(|b| field::<u64>(b, "applied"));
            let instructions_per_sec = match (before, applied, seconds) {
                (Some(b), Some(a), Some(s)) if a >= b => Some((a - b) as f64 / s),
                _ => None,
            };
            WorkerStatus {
                id: w.id.clone(),
                pid: field(w, "pid"),
                partitions,
                data_dir: w.fields.get("data_dir").cloned(),
                applied,
                instructions_per_sec,
            }
        })
        .collect();
    let rates: Vec<f64> = workers.iter().filter_map(|w| w.instructions_per_sec).collect();
    let instructions_per_sec = seconds.map(|_| rates.iter().sum());
    let ingress = later
        .ingress
        .iter()
        .map(|i| IngressStatus {
            id: i.id.clone(),
            pid: field(i, "pid"),
            addr: i.fields.get("addr").cloned(),
            connections: field(i, "connections"),
        })
        .collect();
    let queues = (0..topology.partitions)
        .map(|p| {
            let depth = later.queues.get(p as usize).copied().flatten();
            PartitionStatus {
                partition: p,
                ready: depth.map(|d| d.ready),
                consumers: depth.map(|d| d.consumers),
                owner: owners.get(&p).cloned(),
            }
        })
        .collect();
    ClusterStatus {
        namespace: topology.namespace.clone(),
        partitions: topology.partitions,
        workers,
        ingress,
        queues,
        dead_letters: later.dead_letters.map(|d| d.ready),
        instructions_per_sec,
        interval_ms: elapsed.map(|d| d.as_millis() as u64),
    }
}

/// `0-3,5,7-8`.
pub fn partition_ranges(partitions: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < partitions.len() {
        let start = partitions[i];
        let mut end = start;
        while i + 1 < partitions.len() && partitions[i + 1] == end + 1 {
            i += 1;
            end = partitions[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if end == start {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}-{end}");
        }
        i += 1;
    }
    out
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn rate(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))
}

/// Left-aligned columns, two spaces apart, indented by two (also for `ferry dlq`).
pub fn text_table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::from("  ");
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(text, "{cell:<w$}  ");
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(out, &mut headers.iter().copied());
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

impl fmt::Display for ClusterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cluster {}: {} partitions, {} worker(s), {} ingress node(s)",
            self.namespace,
            self.partitions,
            self.workers.len(),
            self.ingress.len()
        );
        match (self.instructions_per_sec, self.interval_ms) {
            (Some(r), Some(ms)) => {
                let _ = writeln!(out, "instructions/s: {r:.1} (over {:.2} s)", ms as f64 / 1000.0);
            }
            _ => {
                let _ = writeln!(out, "instructions/s: -");
            }
        }
        let ready: u64 = self.queues.iter().filter_map(|q| q.ready).map(u64::from).sum();
        let _ = writeln!(out, "queued instruction messages: {ready}");
        let _ = match self.dead_letters {
            Some(0) => writeln!(out, "dead letters: 0"),
            Some(n) => writeln!(out, "dead letters: {n} (see `ferry dlq list`)"),
            None => writeln!(out, "dead letters: - (queue not declared)"),
        };
        let unowned = self.unowned();
        if !unowned.is_empty() {
            let _ = writeln!(out, "unowned partitions: {}", partition_ranges(&unowned));
        }
        let _ = writeln!(out, "\nworkers");
        let rows: Vec<Vec<String>> = self
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.id.clone(),
                    or_dash(w.pid),
                    partition_ranges(&w.partitions),
                    or_dash(w.applied),
                    rate(w.instructions_per_sec),
                    or_dash(w.data_dir.clone()),
                ]
            })
            .collect();
        text_table(&mut out, &["ID", "PID", "PARTITIONS", "APPLIED", "INSTR/S", "DATA DIR"], &rows);
        let _ = writeln!(out, "\ningress nodes");
        let rows: Vec<Vec<String>> = self
            .ingress
            .iter()
            .map(|i| {
                vec![i.id.clone(), or_dash(i.pid), or_dash(i.addr.clone()), or_dash(i.connections)]
            })
            .collect();
        text_table(&mut out, &["ID", "PID", "ADDR", "CONNECTIONS"], &rows);
        let _ = writeln!(out, "\npartitions");
        let rows: Vec<Vec<String>> = self
            .queues
            .iter()
            .map(|q| {
                vec![
                    Topology::routing_key(q.partition),
                    or_dash(q.ready),
                    or_dash(q.consumers),
                    or_dash(q.owner.clone()),
                ]
            })
            .collect();
        text_table(&mut out, &["PARTITION", "READY", "CONSUMERS", "OWNER"], &rows);
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::topology::QueueLimits;

    fn member(id: &str, fields: &[(&str, &str)]) -> MemberSample {
        MemberSample {
            id: id.to_owned(),
            fields: fields.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    fn sample(at: Instant, applied: (&str, &str)) -> Sample {
        Sample {
            at,
            workers: vec![
                member("w1", &[("pid", "11"), ("partitions", "0,1,3"), ("applied", applied.0)]),
                member("w2", &[("pid", "12"), ("partitions", "2"), ("applied", applied.1)]),
            ],
            ingress: vec![member(
                "i1",
                &[("pid", "20"), ("addr", "127.0.0.1:1"), ("connections", "7")],
            )],
            queues: vec![
                Some(QueueDepth { ready: 5, consumers: 1 }),
                Some(QueueDepth { ready: 0, consumers: 1 }),
                None,
                Some(QueueDepth { ready: 2, consumers: 2 }),
            ],
            dead_letters: Some(QueueDepth { ready: 3, consumers: 0 }),
        }
    }

    #[test]
    fn descriptions_give_owners_and_two_samples_give_rates() {
        let t = Topology::new("ns", 4, QueueLimits::default());
        let start = Instant::now();
        let first = sample(start, ("100", "50"));
        let second = sample(start + Duration::from_secs(2), ("300", "50"));
        let status = merge(&t, Some(&first), &second);
        assert_eq!(status.workers[0].partitions, [0, 1, 3]);
        assert_eq!(status.workers[0].instructions_per_sec, Some(100.0));
        assert_eq!(status.workers[1].instructions_per_sec, Some(0.0));
        assert_eq!(status.instructions_per_sec, Some(100.0));
        assert_eq!(status.interval_ms, Some(2000));
        let owners: Vec<Option<&str>> = status.queues.iter().map(|q| q.owner.as_deref()).collect();
        assert_eq!(owners, [Some("w1"), Some("w1"), Some("w2"), Some("w1")]);
        assert_eq!(status.queues[0].ready, Some(5));
        assert_eq!(status.queues[2].ready, None);
        assert_eq!(status.dead_letters, Some(3));
        assert_eq!(status.ingress[0].connections, Some(7));
        assert!(status.unowned().is_empty());
    }

    #[test]
    fn no_rate_from_one_sample_nor_for_a_worker_new_or_restarted_between_samples() {
        let t = Topology::new("ns", 4, QueueLimits::default());
        let start = Instant::now();
        let alone = merge(&t, None, &sample(start, ("1", "1")));
        assert_eq!(alone.instructions_per_sec, None);
        assert_eq!(alone.workers[0].instructions_per_sec, None);
        let mut first = sample(start, ("500", "10"));
        first.workers.remove(1);
        let second = sample(start + Duration::from_secs(1), ("20", "30"));
        let status = merge(&t, Some(&first), &second);
        assert_eq!(status.workers[0].instructions_per_sec, None, "a counter going back");
        assert_eq!(status.workers[1].instructions_per_sec, None, "not in the first sample");
        assert_eq!(status.instructions_per_sec, Some(0.0));
    }

    #[test]
    fn a_worker_without_a_description_yet_owns_nothing() {
        let t = Topology::new("ns", 2, QueueLimits::default());
        let mut s = sample(Instant::now(), ("1", "1"));
        s.workers = vec![member("w9", &[])];
        let status = merge(&t, None, &s);
        assert_eq!(status.workers[0].pid, None);
        assert_eq!(status.unowned(), [0, 1]);
    }

    #[test]
    fn partition_ranges_compress_runs() {
        assert_eq!(partition_ranges(&[]), "");
        assert_eq!(partition_ranges(&[4]), "4");
        assert_eq!(partition_ranges(&[0, 1, 2, 3, 5, 7, 8]), "0-3,5,7-8");
        assert_eq!(partition_list("3, 1,x,,2"), [1, 2, 3]);
    }

    #[test]
    fn the_text_shows_every_section_aligned() {
        let t = Topology::new("ns", 4, QueueLimits::default());
        let start = Instant::now();
        let status = merge(
            &t,
            Some(&sample(start, ("0", "0"))),
            &sample(start + Duration::from_secs(1), ("42", "0")),
        );
        let text = status.to_string();
        assert!(
            text.starts_with("cluster ns: 4 partitions, 2 worker(s), 1 ingress node(s)\n"),
            "{text}"
        );
        assert!(text.contains("instructions/s: 42.0 (over 1.00 s)"), "{text}");
        assert!(text.contains("queued instruction messages: 7"), "{text}");
        assert!(text.contains("dead letters: 3 (see `ferry dlq list`)"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        let header = lines.iter().position(|l| l.trim_start().starts_with("PARTITION")).unwrap();
        assert_eq!(lines[header], "  PARTITION  READY  CONSUMERS  OWNER");
        assert_eq!(lines[header + 1], "  p000       5      1          w1");
        assert_eq!(lines[header + 3], "  p002       -      -          w2");
        let worker = lines.iter().find(|l| l.trim_start().starts_with("w1 ")).unwrap();
        assert_eq!(*worker, "  w1  11   0-1,3       42       42.0     -");
    }
}
