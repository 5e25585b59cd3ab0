//! The load: real WebSocket connections (the `ferry_ingress::client` library), each writing its
//! files on an open-loop schedule and watching others', then reading every file back.
//!
//! Open loop: write number `k` of the run is due at `t0 + k / rate`, whatever happened to the
//! writes before it; its acknowledgement latency and the fan-out latency of its events are
//! measured from that due time, so that a stalled server cannot hide its stall by slowing the
//! generator down (coordinated omission). Each write's content carries its number and due time
//! (`verify::content`), which is how a watcher knows when the change it received was due.
//!
//! Closed loop (`Pace::ClosedLoop`): no schedule; a connection sends its next write whenever
//! fewer than `max_in_flight` of its writes are unanswered, until the end. The achieved rate is
//! then the server's throughput at that many writes in flight, the figure a closed-loop
//! ceiling (such as the raw broker's) is measured as, and a write's latency runs from its
//! sending.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use ferry_ingress::client::{Client, ClientError, ConnectOptions};
use ferry_ingress::direct_client::{DirectConnection, Frame};

use super::timeline::{LoadSecond, Timeline};
use super::verify::{self, Acked, FileCheck, ReadBack, RevisionSequence, StreamCheck, WriteOp};

/// Largest latency recorded (longer ones are recorded as this).
const MAX_LATENCY_US: u64 = 120_000_000;
/// Histogram shards (connections record into `index % SHARDS`).
const SHARDS: usize = 16;
/// Samples a connection keeps before adding them to its shard.
const SAMPLE_BATCH: usize = 256;
/// Frames a connection handles per wake-up at most, so that its writes stay on time.
const FRAMES_PER_WAKE: usize = 64;
/// Concurrent `get`s when reading the files back, and attempts per file on `busy`.
const READ_BACK_CONCURRENCY: usize = 32;
const READ_BACK_ATTEMPTS: u32 = 50;
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(30);

/// One load run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// One server URL, or several separated by commas (ingress nodes of one cluster):
    /// connection `i` uses the `i mod n`-th.
    pub url: String,
    pub token: Option<String>,
    pub connections: usize,
    pub files: usize,
    pub watchers_per_file: usize,
    pub pace: Pace,
    pub size: usize,
    pub op: WriteOp,
    pub warmup: Duration,
    pub duration: Duration,
    /// After the last due write: how long answers, then events, may still take.
    pub drain_timeout: Duration,
    pub connect_timeout: Duration,
    pub connect_concurrency: usize,
    /// Writes a connection may have unanswered; later ones wait (and their latency grows).
    pub max_in_flight: usize,
    /// Every file of the run is under this prefix: `PREFIX` + `w<writer>/f<file>` (a directory
    /// per writing connection, as clients' home directories are, so that the run spreads over
    /// partitions), or `PREFIX` + `/f<file>` when `one_directory` (every file in one
    /// partition: the worst case).
    pub prefix: String,
    pub one_directory: bool,
}

impl Plan {
    /// The URL connection `index` uses.
    pub fn url_for(&self, index: usize) -> &str {
        let count = self.url.split(',').count();
        self.url.split(',').nth(index % count).unwrap_or(&self.url)
    }

    fn path(&self, file: usize) -> String {
        if self.one_directory {
            format!("{}/f{file:06}", self.prefix)
        } else {
            format!("{}w{:06}/f{file:06}", self.prefix, file % self.connections)
        }
    }

    /// The files connection `c` writes: file `f` is written by connection `f % connections`.
    fn written_by(&self, c: usize) -> Vec<usize> {
        (c..self.files).step_by(self.connections).collect()
    }

    /// The files connection `c` watches: file `f` by the `watchers_per_file` connections after
    /// its writer.
    fn watched_by(&self, c: usize) -> Vec<usize> {
        let n = self.connections;
        (0..self.files)
            .filter(|f| {
                let after_writer = (c + n - f % n) % n;
                after_writer >= 1 && after_writer <= self.watchers_per_file
            })
            .collect()
    }
}

/// How a run's writes are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Open loop: this many writes per second over all connections, on a schedule.
    Rate(f64),
    /// Each connection sends whenever fewer than `Plan::max_in_flight` of its writes are
    /// unanswered.
    ClosedLoop,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        if histogram.is_empty() {
            return Latency::default();
        }
        Latency {
            count: histogram.len(),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// Connections asked for, opened and lost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionCounts {
    pub requested: usize,
    pub opened: usize,
    pub failed: usize,
    /// Why connections failed to open (or to subscribe), with counts.
    pub failure_reasons: BTreeMap<String, u64>,
    /// Connections the server closed (or lost) before the run ended.
    pub lost_during_run: usize,
    pub lost_reasons: BTreeMap<String, u64>,
}

/// What one run measured and verified.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// The open loop's rate (zero in a closed loop, which has none).
    pub target_rate: f64,
    /// Writes each connection kept in flight, when the run was a closed loop.
    pub closed_loop_in_flight: Option<usize>,
    /// Writes acknowledged `ok` during the measured window, per second.
    pub achieved_rate: f64,
    pub measured_secs: f64,
    pub writes_sent: u64,
    pub writes_acked: u64,
    /// Writes never answered (connection lost, or still unanswered at the drain deadline).
    pub writes_unanswered: u64,
    /// Of `writes_unanswered`, those whose answer came after the drain deadline (while the
    /// connection still read its events): answered, but too late to be counted.
    pub writes_answered_late: u64,
    /// Writes due but never sent (their connection was lost first).
    pub writes_not_sent: u64,
    /// Error answers by code.
    pub errors: BTreeMap<String, u64>,
    pub ack_latency: Latency,
    pub fanout_latency: Latency,
    /// How late the generator sent writes after their due time (its own overload).
    pub send_lag: Latency,
    /// Acknowledgements second by second, warm-up included.
    pub timeline: Vec<LoadSecond>,
    pub events_received: u64,
    /// Change events received during the measured window, per second.
    pub delivered_events_per_sec: f64,
    pub connections: ConnectionCounts,
    /// Every watcher's revisions, summed over (watcher, file).
    pub watchers: StreamCheck,
    pub snapshots: u64,
    /// Events for a file the connection does not watch, or without the bench's header.
    pub stray_events: u64,
    /// Every file read back, summed.
    pub store: FileCheck,
    pub files_unreadable: u64,
    /// Every failure of the run; empty means verification passed.
    pub failures: Vec<String>,
}

impl LoadReport {
    pub fn verified(&self) -> bool {
        self.failures.is_empty()
    }

    fn collect_failures(&mut self) {
        let mut failures = Vec::new();
        let mut fail = |count: u64, what: &str| {
            if count > 0 {
                failures.push(format!("{count} {what}"));
            }
        };
        fail(self.connections.failed as u64, "connections failed to open or subscribe");
        fail(self.connections.lost_during_run as u64, "connections lost during the run");
        fail(self.writes_unanswered, "writes never answered");
        fail(self.writes_not_sent, "writes never sent");
        fail(self.store.lost, "acknowledged writes not in the store");
        fail(self.store.wrong_content, "files with other content than their last write");
        fail(self.store.duplicate_revs, "revisions acknowledged twice");
        fail(self.store.unexplained_revs, "store revisions no write explains");
        fail(self.files_unreadable, "files that could not be read back");
        fail(self.watchers.missing, "events missing (gaps)");
        fail(self.watchers.duplicates, "duplicate events");
        fail(self.watchers.reorders, "events out of order");
        fail(self.watchers.unexpected, "events outside the expected revisions");
        fail(self.snapshots, "snapshot events (a watcher fell behind its history)");
        fail(self.stray_events, "stray or malformed events");
        self.failures = failures;
    }
}

/// Latency histograms shared by every connection, sharded to keep lock contention low.
struct Recorder {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Recorder {
    fn new() -> Recorder {
        let histogram = || Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds");
        Recorder { shards: (0..SHARDS).map(|_| Mutex::new(histogram())).collect() }
    }

    fn add(&self, shard: usize, samples: &mut Vec<u64>) {
        let mut histogram =
            self.shards[shard % SHARDS].lock().unwrap_or_else(PoisonError::into_inner);
        for &us in samples.iter() {
            histogram.saturating_record(us.clamp(1, MAX_LATENCY_US));
        }
        samples.clear();
    }

    fn merged(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds");
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            all.add(&*shard).expect("same bounds");
        }
        all
    }
}

/// A connection's samples for one recorder, added to it in batches.
struct Samples<'a> {
    recorder: &'a Recorder,
    shard: usize,
    values: Vec<u64>,
}

impl<'a> Samples<'a> {
    fn new(recorder: &'a Recorder, shard: usize) -> Samples<'a> {
        Samples { recorder, shard, values: Vec::with_capacity(SAMPLE_BATCH) }
    }

    fn push(&mut self, us: u64) {
        self.values.push(us);
        if self.values.len() >= SAMPLE_BATCH {
            self.recorder.add(self.shard, &mut self.values);
        }
    }
}

impl Drop for Samples<'_> {
    fn drop(&mut self) {
        self.recorder.add(self.shard, &mut self.values);
    }
}

/// What every connection task shares.
struct Run {
    plan: Plan,
    paths: Vec<String>,
    t0: Instant,
    /// Start and end of the measured window (after the warm-up).
    measure_from: Instant,
    end: Instant,
    ack: Recorder,
    fanout: Recorder,
    lag: Recorder,
    timeline: Timeline,
}

impl Run {
    fn in_window(&self, at: Instant) -> bool {
        at >= self.measure_from && at < self.end
    }
}

/// A connection's writes, handed over once all are answered (or the drain deadline passed).
struct WritesDone {
    /// Per written file: (file, acknowledged writes, writes of unknown outcome).
    files: Vec<(usize, Vec<Acked>, u64)>,
}

/// What a connection task saw.
#[derive(Default)]
struct ConnectionOutcome {
    sent: u64,
    acked: u64,
    acked_in_window: u64,
    unanswered: u64,
    answered_late: u64,
    not_sent: u64,
    errors: BTreeMap<String, u64>,
    events: u64,
    events_in_window: u64,
    stream: StreamCheck,
    snapshots: u64,
    stray_events: u64,
    lost: Option<String>,
}

/// A connection ready for the load: its socket and the files it watches (with their
/// revision when subscribed).
struct Ready {
    index: usize,
    connection: DirectConnection,
    watched: Vec<(usize, RevisionSequence)>,
}

fn describe(error: &ClientError) -> String {
    match error {
        ClientError::Refused { status: 503, .. } => {
            "HTTP 503 (the server is at ingress.max_connections, or stopping)".to_owned()
        }
        ClientError::Refused { status, .. } => format!("HTTP {status}"),
        ClientError::Server { code, .. } => format!("error answer {code}"),
        ClientError::Connect { source, .. } => format!("connect: {source}"),
        other => other.to_string(),
    }
}

async fn open(plan: &Plan, index: usize) -> Result<Ready, String> {
    let setup = async {
        let options = ConnectOptions {
            url: plan.url_for(index).to_owned(),
            token: plan.token.clone(),
            ..ConnectOptions::default()
        };
        let mut connection = DirectConnection::open(&options).await.map_err(|e| describe(&e))?;
        let mut watched = Vec::new();
        for file in plan.watched_by(index) {
            let base = connection.sub(&plan.path(file)).await.map_err(|e| describe(&e))?;
            watched.push((file, RevisionSequence::new(base)));
        }
        Ok(Ready { index, connection, watched })
    };
    tokio::time::timeout(plan.connect_timeout, setup)
        .await
        .unwrap_or_else(|_| Err(format!("no connection within {:?}", plan.connect_timeout)))
}

/// Opens `count` connections, `concurrency` at a time; the open ones, and failures by reason.
pub async fn open_many<T, F, Fut>(
    count: usize,
    concurrency: usize,
    connect: F,
) -> (Vec<T>, BTreeMap<String, u64>)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let results: Vec<Result<T, String>> = futures_util::stream::iter(0..count)
        .map(connect)
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut reasons = BTreeMap::new();
    let mut open = Vec::new();
    for result in results {
        match result {
            Ok(ready) => open.push(ready),
            Err(reason) => *reasons.entry(reason).or_insert(0) += 1,
        }
    }
    (open, reasons)
}

/// Runs `plan` and verifies it.
pub async fn run(plan: Plan) -> anyhow::Result<LoadReport> {
    let mut report = LoadReport {
        target_rate: match plan.pace {
            Pace::Rate(rate) => rate,
            Pace::ClosedLoop => 0.0,
        },
        closed_loop_in_flight: (plan.pace == Pace::ClosedLoop).then_some(plan.max_in_flight),
        ..LoadReport::default()
    };
    report.connections.requested = plan.connections;
    let reader = Client::connect(plan.url_for(0), plan.token.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!("the read-back connection: {e}"))?;
    // Connections that only write get a runtime (and thread) of their own: in a fan-out run the
    // generator's 2 threads read up to a million events/s, and a writer polled once per round of
    // 1,000 busy readers would measure the generator's queueing, not the server's answers.
    let writers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-writers")
        .enable_all()
        .build()
        .context("starting the writers' runtime")?;
    let writers_only: Vec<bool> = (0..plan.connections)
        .map(|c| !plan.written_by(c).is_empty() && plan.watched_by(c).is_empty())
        .collect();
    let (ready, reasons) = open_many(plan.connections, plan.connect_concurrency, |i| {
        let on_writers = writers_only[i].then(|| (writers.handle().clone(), plan.clone()));
        let plan = &plan;
        async move {
            match on_writers {
                Some((handle, plan)) => handle
                    .spawn(async move { open(&plan, i).await })
                    .await
                    .unwrap_or_else(|e| Err(format!("opening a writer: {e}"))),
                None => open(plan, i).await,
            }
        }
    })
    .await;
    report.connections.opened = ready.len();
    report.connections.failed = plan.connections - ready.len();
    report.connections.failure_reasons = reasons;

    let t0 = Instant::now() + Duration::from_millis(50);
    let run = Arc::new(Run {
        paths: (0..plan.files).map(|f| plan.path(f)).collect(),
        t0,
        measure_from: t0 + plan.warmup,
        end: t0 + plan.warmup + plan.duration,
        ack: Recorder::new(),
        fanout: Recorder::new(),
        lag: Recorder::new(),
        timeline: Timeline::new((plan.warmup + plan.duration).as_secs() as usize + 1),
        plan,
    });
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let (finals_tx, finals_rx) = watch::channel(None);
    let mut tasks = tokio::task::JoinSet::new();
    for ready in ready {
        let on_writers = writers_only[ready.index];
        let driven = drive(ready, run.clone(), done_tx.clone(), finals_rx.clone());
        if on_writers {
            tasks.spawn_on(driven, writers.handle());
        } else {
            tasks.spawn(driven);
        }
    }
    drop(done_tx);

    // Every file's acknowledged writes; files whose writer never connected have none.
    let mut acked: Vec<Vec<Acked>> = vec![Vec::new(); run.plan.files];
    let mut uncertain = vec![0u64; run.plan.files];
    let collect_deadline = run.end + run.plan.drain_timeout * 2 + Duration::from_secs(10);
    for _ in 0..tasks.len() {
        let next = tokio::time::timeout_at(collect_deadline.into(), done_rx.recv()).await;
        let Ok(Some(done)) = next else { break };
        for (file, writes, unknown) in done.files {
            acked[file] = writes;
            uncertain[file] = unknown;
        }
    }

    let mut finals: Vec<ReadBack> =
        uncertain.iter().map(|&unknown| ReadBack { rev: 0, settled: unknown == 0 }).collect();
    let stored = read_back(&reader, &run.paths).await;
    for (file, stored) in stored.into_iter().enumerate() {
        let check = match &stored {
            Ok(found) => {
                let found = found.as_ref().map(|(rev, bytes)| (*rev, bytes.as_slice()));
                finals[file].rev = found.map_or(0, |(rev, _)| rev);
                let op = run.plan.op;
                verify::check_file(op, run.plan.size, &mut acked[file], uncertain[file], found)
            }
            Err(_) => {
                report.files_unreadable += 1;
                FileCheck { acked: acked[file].len() as u64, ..FileCheck::default() }
            }
        };
        report.store.add(&check);
    }
    reader.close();
    let _ = finals_tx.send(Some(Arc::new(finals)));

    while let Some(joined) = tasks.join_next().await {
        let outcome = joined?;
        report.writes_sent += outcome.sent;
        report.writes_acked += outcome.acked;
        report.writes_unanswered += outcome.unanswered;
        report.writes_answered_late += outcome.answered_late;
        report.writes_not_sent += outcome.not_sent;
        for (code, n) in outcome.errors {
            *report.errors.entry(code).or_insert(0) += n;
        }
        report.events_received += outcome.events;
        report.delivered_events_per_sec += outcome.events_in_window as f64;
        report.achieved_rate += outcome.acked_in_window as f64;
        report.watchers.add(&outcome.stream);
        report.snapshots += outcome.snapshots;
        report.stray_events += outcome.stray_events;
        if let Some(reason) = outcome.lost {
            report.connections.lost_during_run += 1;
            *report.connections.lost_reasons.entry(reason).or_insert(0) += 1;
        }
    }
    writers.shutdown_background();
    let secs = run.plan.duration.as_secs_f64();
    report.measured_secs = secs;
    report.achieved_rate /= secs;
    report.delivered_events_per_sec /= secs;
    report.ack_latency = Latency::of(&run.ack.merged());
    report.fanout_latency = Latency::of(&run.fanout.merged());
    report.send_lag = Latency::of(&run.lag.merged());
    report.timeline = run.timeline.seconds();
    report.collect_failures();
    Ok(report)
}

/// Each file's revision and content (`None`: not found), or why it could not be read.
async fn read_back(
    reader: &Client,
    paths: &[String],
) -> Vec<Result<Option<(u64, Vec<u8>)>, String>> {
    futures_util::stream::iter(paths)
        .map(|path| async move {
            for _ in 0..READ_BACK_ATTEMPTS {
                let answer = tokio::time::timeout(READ_BACK_TIMEOUT, reader.get(path)).await;
                let Ok(answer) = answer else {
                    return Err(format!("{path}: no answer within {READ_BACK_TIMEOUT:?}"));
                };
                match answer {
                    Ok(answer) => {
                        let rev = answer["rev"].as_u64().unwrap_or(0);
                        let content =
                            match (answer["content"].as_str(), answer["content_b64"].as_str()) {
                                (Some(text), _) => text.as_bytes().to_vec(),
                                (None, Some(b64)) => {
                                    use base64::Engine;
                                    base64::engine::general_purpose::STANDARD
                                        .decode(b64)
                                        .map_err(|e| format!("{path}: bad base64: {e}"))?
                                }
                                (None, None) => {
                                    return Err(format!("{path}: no content in {answer}"))
                                }
                            };
                        return Ok(Some((rev, content)));
                    }
                    Err(e) if e.code() == Some("not_found") => return Ok(None),
                    // Over the server's per-connection rate: back off and ask again.
                    Err(e) if e.code() == Some("busy") => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) => return Err(format!("{path}: {e}")),
                }
            }
            Err(format!("{path}: busy {READ_BACK_ATTEMPTS} times"))
        })
        .buffered(READ_BACK_CONCURRENCY)
        .collect()
        .await
}

/// A write sent and not yet answered.
#[derive(Debug)]
struct InFlight {
    /// Index into the connection's written files.
    slot: usize,
    seq: u64,
    due: Instant,
}

/// A connection's writes sent and not answered yet, and those given up on at the drain
/// deadline (whose answers may still come while the connection reads its events).
#[derive(Default)]
struct Outstanding {
    in_flight: HashMap<u64, InFlight>,
    abandoned: HashSet<u64>,
}

/// Which write an answer belongs to.
#[derive(Debug)]
enum Answered {
    Write(InFlight),
    /// A write already counted as unanswered.
    Late,
    /// No write of this connection.
    Unknown,
}

impl Outstanding {
    fn sent(&mut self, id: u64, write: InFlight) {
        self.in_flight.insert(id, write);
    }

    fn len(&self) -> usize {
        self.in_flight.len()
    }

    fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    fn answer(&mut self, id: Option<u64>) -> Answered {
        let Some(id) = id else { return Answered::Unknown };
        match self.in_flight.remove(&id) {
            Some(write) => Answered::Write(write),
            None if self.abandoned.remove(&id) => Answered::Late,
            None => Answered::Unknown,
        }
    }

    /// Gives up on every write in flight; their answers count as late from now on.
    fn abandon(&mut self) -> Vec<InFlight> {
        self.in_flight
            .drain()
            .map(|(id, write)| {
                self.abandoned.insert(id);
                write
            })
            .collect()
    }
}

/// One connection through the run: writes due on its schedule and events of the files it
/// watches until the end; then the remaining answers (up to the drain deadline), handed to the
/// coordinator; then the remaining events, until every watched file's final revision arrived
/// (or the drain timeout passed again).
async fn drive(
    ready: Ready,
    run: Arc<Run>,
    done_tx: mpsc::UnboundedSender<WritesDone>,
    mut finals_rx: watch::Receiver<Option<Arc<Vec<ReadBack>>>>,
) -> ConnectionOutcome {
    let Ready { index, mut connection, mut watched } = ready;
    let plan = &run.plan;
    // foldhash: SipHash of the path was a visible share of a fan-out watcher's time per event.
    let watch_slot: HashMap<&str, usize, foldhash::fast::RandomState> = watched
        .iter()
        .enumerate()
        .map(|(slot, (file, _))| (run.paths[*file].as_str(), slot))
        .collect();
    let written = plan.written_by(index);
    let mut acked: Vec<Vec<Acked>> = vec![Vec::new(); written.len()];
    let mut uncertain = vec![0u64; written.len()];
    let mut outcome = ConnectionOutcome::default();
    let mut ack_samples = Samples::new(&run.ack, index);
    let mut fanout_samples = Samples::new(&run.fanout, index);
    let mut lag_samples = Samples::new(&run.lag, index);
    let mut in_flight = Outstanding::default();
    // Write j of this connection is write k = (j / m) * files + written[j % m] of the run. In
    // a closed loop it may go as soon as the run starts; its due time becomes its sending time.
    let closed_loop = plan.pace == Pace::ClosedLoop;
    let due = |j: u64| -> (u64, Instant) {
        let m = written.len() as u64;
        let k = (j / m) * plan.files as u64 + written[(j % m) as usize] as u64;
        let at = match plan.pace {
            Pace::Rate(rate) => run.t0 + Duration::from_secs_f64(k as f64 / rate),
            Pace::ClosedLoop => run.t0,
        };
        (k, at)
    };
    let mut next_write = 0u64;
    let mut next_due = (!written.is_empty()).then(|| due(0)).filter(|(_, at)| *at < run.end);
    let drain_deadline = run.end + plan.drain_timeout;
    let mut writes_reported = false;
    let mut finals: Option<Arc<Vec<ReadBack>>> = None;
    let mut catch_up_deadline = drain_deadline + plan.drain_timeout;
    let op = plan.op.name();
    // One timer, moved when its deadline does: a fresh one each turn of the loop (a frame
    // received) registered and cleared a timer entry every time.
    let mut timer = pin!(tokio::time::sleep_until(drain_deadline.into()));

    loop {
        let now = Instant::now();
        let closed = outcome.lost.is_some();
        // A closed loop has no schedule: once it ends, or its connection is lost, no write is
        // due (none counts as not sent).
        if closed_loop && (closed || now >= run.end) {
            next_due = None;
        }
        if !writes_reported
            && (closed || now >= drain_deadline || (next_due.is_none() && in_flight.is_empty()))
        {
            for write in in_flight.abandon() {
                uncertain[write.slot] += 1;
                outcome.unanswered += 1;
            }
            // Bounded: due times grow with every write, and stop at the end.
            while next_due.is_some() {
                outcome.not_sent += 1;
                next_write += 1;
                next_due = Some(due(next_write)).filter(|(_, at)| *at < run.end);
            }
            let files = written
                .iter()
                .zip(acked.iter_mut().zip(&uncertain))
                .map(|(&file, (writes, &unknown))| (file, std::mem::take(writes), unknown))
                .collect();
            let _ = done_tx.send(WritesDone { files });
            writes_reported = true;
        }
        if writes_reported {
            if finals.is_none() {
                if let Some(known) = finals_rx.borrow_and_update().clone() {
                    finals = Some(known);
                    catch_up_deadline = Instant::now() + plan.drain_timeout;
                }
            }
            let late = Instant::now() >= catch_up_deadline;
            if let Some(finals) = &finals {
                let caught_up =
                    watched.iter().all(|(file, seq)| seq.highest() >= finals[*file].rev);
                if caught_up || closed || late {
                    for (file, sequence) in &watched {
                        outcome.stream.add(&sequence.finish(finals[*file]));
                    }
                    break;
                }
            } else if late {
                // The files were never read back: the stream cannot be checked against them.
                outcome.lost.get_or_insert_with(|| "no final revisions to check against".into());
                break;
            }
        }
        let can_send = !writes_reported && !closed && in_flight.len() < plan.max_in_flight;
        let send_at = next_due.filter(|_| can_send).map(|(_, at)| at);
        let wake_at = if writes_reported { catch_up_deadline } else { drain_deadline };
        let deadline = send_at.unwrap_or(wake_at);
        if timer.deadline() != deadline.into() {
            timer.as_mut().reset(deadline.into());
        }
        tokio::select! {
            text = connection.next(), if !closed => {
                let now = Instant::now();
                let Some(text) = text else {
                    outcome.lost = Some(match connection.close_info() {
                        Some(close) => format!("closed {} {}", close.code, close.reason),
                        None => "connection lost".to_owned(),
                    });
                    continue;
                };
                // The frames already received are handled at the same instant, without a turn
                // of the loop each (a clock read, the select's futures): a watcher in a fan-out
                // reads several per wake-up.
                let mut next = Some(text);
                let mut budget = FRAMES_PER_WAKE;
                while let Some(text) = next.take() {
                    budget -= 1;
                    if budget > 0 {
                        next = connection.next_ready();
                    }
                    let Some(frame) = Frame::parse(text.as_str()) else {
                        outcome.stray_events += 1;
                        continue;
                    };
                    if let Some(kind) = &frame.event {
                        outcome.events += 1;
                        if run.in_window(now) {
                            outcome.events_in_window += 1;
                        }
                        let slot = frame.path.as_deref().and_then(|path| watch_slot.get(path));
                        match (kind.as_ref(), slot) {
                            ("change", Some(&slot)) => {
                                watched[slot].1.observe(frame.rev.unwrap_or(0));
                                match frame.content.as_deref().and_then(verify::parse_header) {
                                    Some((_, ts_us)) => {
                                        let due = run.t0 + Duration::from_micros(ts_us);
                                        if run.in_window(due) {
                                            fanout_samples.push(micros(now, due));
                                        }
                                    }
                                    None => outcome.stray_events += 1,
                                }
                            }
                            ("snapshot", Some(_)) => outcome.snapshots += 1,
                            _ => outcome.stray_events += 1,
                        }
                        continue;
                    }
                    let write = match in_flight.answer(frame.id) {
                        Answered::Write(write) => write,
                        Answered::Late => {
                            outcome.answered_late += 1;
                            continue;
                        }
                        Answered::Unknown => {
                            *outcome.errors.entry("unmatched_answer".to_owned()).or_insert(0) += 1;
                            continue;
                        }
                    };
                    match (frame.ok, frame.rev) {
                        (Some(true), Some(rev)) => {
                            let ts_us = micros(write.due, run.t0);
                            acked[write.slot].push(Acked { rev, seq: write.seq, ts_us });
                            run.timeline.record(ts_us, micros(now, write.due));
                            outcome.acked += 1;
                            if run.in_window(now) {
                                outcome.acked_in_window += 1;
                            }
                            if run.in_window(write.due) {
                                ack_samples.push(micros(now, write.due));
                            }
                        }
                        _ => {
                            let code = frame.error.as_ref().map_or("malformed_answer", |e| &e.code);
                            if matches!(code, "unavailable" | "internal") {
                                uncertain[write.slot] += 1;
                            }
                            *outcome.errors.entry(code.to_owned()).or_insert(0) += 1;
                        }
                    }
                }
            }
            () = &mut timer => {
                if send_at.is_none() {
                    // The drain or catch-up deadline: the top of the loop acts on it.
                    continue;
                }
                let now = Instant::now();
                let mut frames = Vec::new();
                while let Some((k, due_at)) = next_due.filter(|(_, at)| *at <= now) {
                    if in_flight.len() >= plan.max_in_flight || (closed_loop && now >= run.end) {
                        break;
                    }
                    let at = if closed_loop { now } else { due_at };
                    let slot = (next_write % written.len() as u64) as usize;
                    let id = (1u64 << 40) + next_write;
                    let path = &run.paths[written[slot]];
                    let mut frame = String::with_capacity(plan.size + path.len() + 64);
                    let _ = write!(frame, r#"{{"op":"{op}","id":{id},"path":"{path}","content":""#);
                    verify::push_content(&mut frame, k, micros(at, run.t0), plan.size);
                    frame.push_str(r#""}"#);
                    frames.push(frame);
                    in_flight.sent(id, InFlight { slot, seq: k, due: at });
                    outcome.sent += 1;
                    if run.in_window(at) {
                        lag_samples.push(micros(now, at));
                    }
                    next_write += 1;
                    next_due = Some(due(next_write)).filter(|(_, at)| *at < run.end);
                }
                // A write that could not be handed to the socket stays in flight, unanswered:
                // its connection is lost, which the next read reports.
                let _ = connection.send(frames).await;
            }
            changed = finals_rx.changed(), if writes_reported && finals.is_none() => {
                if changed.is_err() {
                    // The coordinator is gone: nothing more to wait for.
                    break;
                }
            }
        }
    }
    connection.close().await;
    outcome
}

fn micros(later: Instant, earlier: Instant) -> u64 {
    later.saturating_duration_since(earlier).as_micros() as u64
}

/// Opens `count` idle connections (no subscription, no write) and makes one round trip on
/// each, so that the server has set every one of them up; the open ones and failures by reason.
pub async fn open_idle(
    url: &str,
    token: Option<&str>,
    count: usize,
    concurrency: usize,
    timeout: Duration,
) -> (Vec<Client>, BTreeMap<String, u64>) {
    open_many(count, concurrency, |_| async move {
        let setup = async {
            let client = Client::connect(url, token).await.map_err(|e| describe(&e))?;
            let answer = client
                .request(json!({"op": "stat", "path": "/bench-idle/none"}))
                .await
                .map_err(|e| describe(&e))?;
            if answer["ok"].as_bool().is_none() {
                return Err(format!("unexpected answer {answer}"));
            }
            Ok(client)
        };
        tokio::time::timeout(timeout, setup)
            .await
            .unwrap_or_else(|_| Err(format!("no connection within {timeout:?}")))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(connections: usize, files: usize, watchers_per_file: usize) -> Plan {
        Plan {
            url: String::new(),
            token: None,
            connections,
            files,
            watchers_per_file,
            pace: Pace::Rate(1.0),
            size: 64,
            op: WriteOp::Put,
            warmup: Duration::ZERO,
            duration: Duration::ZERO,
            drain_timeout: Duration::ZERO,
            connect_timeout: Duration::ZERO,
            connect_concurrency: 1,
            max_in_flight: 1,
            prefix: "/b/r-".to_owned(),
            one_directory: false,
        }
    }

    #[test]
    fn each_writer_has_a_directory_of_its_own_unless_one_directory_is_asked() {
        let mut p = plan(3, 6, 0);
        assert_eq!(p.path(4), "/b/r-w000001/f000004");
        assert_eq!(p.path(1), "/b/r-w000001/f000001");
        assert_eq!(p.path(5), "/b/r-w000002/f000005");
        p.one_directory = true;
        assert_eq!(p.path(4), "/b/r-/f000004");
    }

    #[test]
    fn connections_spread_over_several_urls_in_turn() {
        let mut p = plan(4, 4, 1);
        p.url = "ws://a/v1/ws,ws://b/v1/ws".to_owned();
        let urls: Vec<&str> = (0..4).map(|i| p.url_for(i)).collect();
        assert_eq!(urls, ["ws://a/v1/ws", "ws://b/v1/ws", "ws://a/v1/ws", "ws://b/v1/ws"]);
        p.url = "ws://one/v1/ws".to_owned();
        assert_eq!(p.url_for(3), "ws://one/v1/ws");
    }

    #[test]
    fn an_answer_after_the_drain_deadline_is_late_not_unmatched() {
        // The fan-out run of 2026-11-22 counted 155 "unmatched_answer" errors: the writer's
        // answers that came after it had given up on them at the drain deadline.
        let now = Instant::now();
        let mut writes = Outstanding::default();
        writes.sent(7, InFlight { slot: 0, seq: 1, due: now });
        writes.sent(8, InFlight { slot: 0, seq: 2, due: now });
        assert!(matches!(writes.answer(Some(7)), Answered::Write(InFlight { seq: 1, .. })));
        assert_eq!(writes.abandon().len(), 1);
        assert!(writes.is_empty());
        assert!(matches!(writes.answer(Some(8)), Answered::Late));
        // Each late answer once; answers to nothing this connection sent stay unmatched.
        assert!(matches!(writes.answer(Some(8)), Answered::Unknown));
        assert!(matches!(writes.answer(Some(9)), Answered::Unknown));
        assert!(matches!(writes.answer(None), Answered::Unknown));
    }

    #[test]
    fn every_file_has_one_writer_and_its_watchers_are_other_connections() {
        for (n, f, w) in [(4, 4, 1), (5, 12, 3), (1001, 1, 1000), (3, 2, 0)] {
            let plan = plan(n, f, w);
            let mut writers = vec![0; f];
            let mut watchers = vec![0; f];
            for c in 0..n {
                for file in plan.written_by(c) {
                    writers[file] += 1;
                    assert!(
                        !plan.watched_by(c).contains(&file),
                        "a writer does not watch its file"
                    );
                }
                for file in plan.watched_by(c) {
                    watchers[file] += 1;
                }
            }
            assert!(writers.iter().all(|&x| x == 1), "{n} {f} {w}: {writers:?}");
            assert!(watchers.iter().all(|&x| x == w), "{n} {f} {w}: {watchers:?}");
        }
    }
}
