//! Ferry's logger against `tracing-appender`'s non-blocking writer and a `BufWriter` under a
//! mutex, side by side in one run:
//! - hot path: the cost of logging one ~200-byte instruction record from 1, 2 and 4 threads,
//!   p50 and p99 in ns, in bursts that fit the queues (no backpressure), once for the logging
//!   call alone and once with building the record (clock read, `Arc<str>` clones) included;
//! - drain: records per second from one producer until every record was handed to the file.
//!
//! `cargo bench -p ferry-logger --bench logger`; `FERRY_BENCH_DRAIN_RECORDS` (default 500000)
//! and `FERRY_BENCH_BURST` (records per thread per burst, default 16000) scale it.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ferry_config::logger::RotationPeriod;
use ferry_logger::{InstructionRecord, Logger, LoggerConfig, Outcome};
use hdrhistogram::Histogram;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

const BURSTS: u64 = 4;
/// Diagnostic bursts are smaller (they must fit the 16,384-line queue), so there are more.
const DIAGNOSTIC_BURSTS: u64 = 16;
const QUEUE: usize = 65_536;
const PATHS: usize = 4096;

type Sink = Box<dyn FnMut(InstructionRecord) + Send>;
type MakePeer = fn(&Path) -> Box<dyn Peer>;
type DiagLayer = Box<dyn Layer<Registry> + Send + Sync>;

trait Peer: Sync {
    fn name(&self) -> &'static str;
    /// A per-thread way to log one record.
    fn sink(&self) -> Sink;
    /// Records handed to the file so far.
    fn drained(&self) -> u64;
    /// A fmt layer writing `tracing` events through this peer.
    fn diagnostics_layer(&self) -> DiagLayer;
    /// Diagnostic lines handed to the file so far.
    fn diagnostics_drained(&self) -> u64;
    /// Fsyncs everything drained (untimed), so that no peer's disk writeback runs during the
    /// next measurement.
    fn settle(&self);
}

struct Ferry {
    logger: Logger,
}

impl Peer for Ferry {
    fn name(&self) -> &'static str {
        "ferry-logger"
    }

    fn sink(&self) -> Sink {
        let log = self.logger.instruction_log();
        Box::new(move |record| log.send(record).expect("logger running"))
    }

    fn drained(&self) -> u64 {
        self.logger.stats().instructions.written
    }

    fn diagnostics_layer(&self) -> DiagLayer {
        self.logger.diagnostics_layer()
    }

    fn diagnostics_drained(&self) -> u64 {
        self.logger.stats().diagnostics.written
    }

    fn settle(&self) {
        self.logger.flush().unwrap();
    }
}

/// A file that counts the lines written into it.
struct CountingFile {
    file: File,
    lines: Arc<AtomicU64>,
}

impl Write for CountingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        let lines = buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        self.lines.fetch_add(lines, Ordering::Release);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

struct Appender {
    writer: tracing_appender::non_blocking::NonBlocking,
    lines: Arc<AtomicU64>,
    diagnostics: tracing_appender::non_blocking::NonBlocking,
    diagnostic_lines: Arc<AtomicU64>,
    /// Second handles of the two files, for `settle`.
    files: [File; 2],
    _guards: [WorkerGuard; 2],
}

impl Peer for Appender {
    fn name(&self) -> &'static str {
        "tracing-appender"
    }

    fn sink(&self) -> Sink {
        let mut writer = self.writer.clone();
        let mut buf = Vec::with_capacity(512);
        Box::new(move |record| {
            buf.clear();
            record.write_json_line("node-a", &mut buf);
            writer.write_all(&buf).expect("appender running");
        })
    }

    fn drained(&self) -> u64 {
        self.lines.load(Ordering::Acquire)
    }

    fn diagnostics_layer(&self) -> DiagLayer {
        let writer = self.diagnostics.clone();
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
            .with_filter(EnvFilter::new("info"))
            .boxed()
    }

    fn diagnostics_drained(&self) -> u64 {
        self.diagnostic_lines.load(Ordering::Acquire)
    }

    fn settle(&self) {
        self.files.iter().for_each(|f| f.sync_data().unwrap());
    }
}

struct MutexBufWriter {
    file: Arc<Mutex<BufWriter<File>>>,
    sent: Arc<AtomicU64>,
    diagnostics: Arc<Mutex<BufWriter<File>>>,
}

/// One locked write per event into the shared `BufWriter`.
struct LockedWriter(Arc<Mutex<BufWriter<File>>>);

impl Write for LockedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.lock().unwrap().flush()
    }
}

impl Peer for MutexBufWriter {
    fn name(&self) -> &'static str {
        "Mutex<BufWriter>"
    }

    fn sink(&self) -> Sink {
        let file = self.file.clone();
        let sent = self.sent.clone();
        let mut buf = Vec::with_capacity(512);
        Box::new(move |record| {
            buf.clear();
            record.write_json_line("node-a", &mut buf);
            file.lock().unwrap().write_all(&buf).unwrap();
            sent.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Synchronous: a record is in the file (or its buffer, flushed at the end) once sent.
    fn drained(&self) -> u64 {
        let n = self.sent.load(Ordering::Relaxed);
        self.file.lock().unwrap().flush().unwrap();
        n
    }

    fn diagnostics_layer(&self) -> DiagLayer {
        let file = self.diagnostics.clone();
        tracing_subscriber::fmt::layer()
            .with_writer(move || LockedWriter(file.clone()))
            .with_ansi(false)
            .with_filter(EnvFilter::new("info"))
            .boxed()
    }

    /// Synchronous: never behind.
    fn diagnostics_drained(&self) -> u64 {
        u64::MAX
    }

    fn settle(&self) {
        for file in [&self.file, &self.diagnostics] {
            let mut file = file.lock().unwrap();
            file.flush().unwrap();
            file.get_ref().sync_data().unwrap();
        }
    }
}

fn ferry(dir: &Path) -> Ferry {
    let mut config = LoggerConfig { directory: dir.to_owned(), ..LoggerConfig::default() };
    config.instructions.queue_capacity = QUEUE;
    config.rotation.max_bytes = 0;
    config.rotation.every = RotationPeriod::Never;
    config.rotation.gzip = false;
    Ferry { logger: ferry_logger::start(&config, "node-a").unwrap() }
}

fn appender(dir: &Path) -> Appender {
    let lines = Arc::new(AtomicU64::new(0));
    let file = File::create(dir.join("appender.log")).unwrap();
    let file_handle = file.try_clone().unwrap();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUE)
        .finish(CountingFile { file, lines: lines.clone() });
    // Diagnostics with tracing-appender's defaults (lossy, 128,000 lines), like Ferry's `drop`.
    let diagnostic_lines = Arc::new(AtomicU64::new(0));
    let file = File::create(dir.join("appender-diagnostics.log")).unwrap();
    let files = [file_handle, file.try_clone().unwrap()];
    let (diagnostics, diagnostics_guard) = NonBlockingBuilder::default()
        .finish(CountingFile { file, lines: diagnostic_lines.clone() });
    Appender {
        writer,
        lines,
        diagnostics,
        diagnostic_lines,
        files,
        _guards: [guard, diagnostics_guard],
    }
}

fn mutex_buf_writer(dir: &Path) -> MutexBufWriter {
    let file = File::create(dir.join("mutex.log")).unwrap();
    let diagnostics = File::create(dir.join("mutex-diagnostics.log")).unwrap();
    MutexBufWriter {
        file: Arc::new(Mutex::new(BufWriter::with_capacity(64 * 1024, file))),
        sent: Arc::new(AtomicU64::new(0)),
        diagnostics: Arc::new(Mutex::new(BufWriter::with_capacity(64 * 1024, diagnostics))),
    }
}

/// Distinct file paths, held the way Ferry holds them (`FilePath` is an `Arc<str>`, kept by the
/// cache), so a record clones one.
fn paths() -> Vec<Arc<str>> {
    (0..PATHS)
        .map(|i| Arc::from(format!("/home/user-7/projects/ferry/notes/{i:012}.txt")))
        .collect()
}

/// ~200 bytes as a JSON line.
fn record(client: &Arc<str>, paths: &[Arc<str>], seq: u64) -> InstructionRecord {
    InstructionRecord {
        time: SystemTime::now(),
        client_id: client.clone(),
        instruction_id: seq,
        op: Cow::Borrowed("append"),
        path: paths[seq as usize % paths.len()].clone(),
        revision: Some(seq + 1),
        outcome: Outcome::Ok,
        latency_us: 42,
    }
}

/// Waits (untimed) until `count` of `peer` reaches `target`.
fn wait_for(peer: &dyn Peer, target: u64, count: fn(&dyn Peer) -> u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(peer) < target {
        assert!(Instant::now() < deadline, "{}: {} of {target} drained", peer.name(), count(peer));
        thread::sleep(Duration::from_micros(200));
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
}

/// Runs `bursts` bursts on `threads` threads, each thread's work made by `worker(thread)` and
/// returning its latencies; between bursts waits until `count` reaches all sent so far.
fn timed_bursts<W>(
    peer: &dyn Peer,
    bursts: u64,
    threads: usize,
    burst: u64,
    already: &mut u64,
    count: fn(&dyn Peer) -> u64,
    worker: impl Fn(usize) -> W,
) -> (u64, u64)
where
    W: FnOnce() -> Histogram<u64> + Send,
{
    let mut total = histogram();
    for _ in 0..bursts {
        let parts: Vec<Histogram<u64>> = thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|t| s.spawn(worker(t))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for part in parts {
            total.add(part).unwrap();
        }
        *already += threads as u64 * burst;
        wait_for(peer, *already, count);
        peer.settle();
    }
    (total.value_at_quantile(0.5), total.value_at_quantile(0.99))
}

/// p50 and p99 (ns) of logging one record from `threads` threads; with `build`, building the
/// record (clock read, `Arc<str>` clones) is inside the timed region too.
fn hot_path(
    peer: &dyn Peer,
    paths: &[Arc<str>],
    threads: usize,
    burst: u64,
    build: bool,
    already: &mut u64,
) -> (u64, u64) {
    timed_bursts(
        peer,
        BURSTS,
        threads,
        burst,
        already,
        |p| p.drained(),
        |t| {
            let mut sink = peer.sink();
            move || {
                let client: Arc<str> = Arc::from(format!("client-{t}"));
                let mut h = histogram();
                for seq in 0..burst {
                    let elapsed = if build {
                        let start = Instant::now();
                        sink(record(&client, paths, seq));
                        start.elapsed()
                    } else {
                        let record = record(&client, paths, seq);
                        let start = Instant::now();
                        sink(record);
                        start.elapsed()
                    };
                    h.saturating_record(elapsed.as_nanos() as u64);
                }
                h
            }
        },
    )
}

/// p50 and p99 (ns) of one `tracing::info!` event with two fields through the peer's fmt
/// layer (formatting included), from `threads` threads.
fn diagnostic_hot_path(
    peer: &dyn Peer,
    threads: usize,
    burst: u64,
    already: &mut u64,
) -> (u64, u64) {
    timed_bursts(
        peer,
        DIAGNOSTIC_BURSTS,
        threads,
        burst,
        already,
        |p| p.diagnostics_drained(),
        |_| {
            let subscriber = tracing_subscriber::registry().with(peer.diagnostics_layer());
            move || {
                let mut h = histogram();
                tracing::subscriber::with_default(subscriber, || {
                    for seq in 0..burst {
                        let start = Instant::now();
                        tracing::info!(seq, path = "/home/user-7/notes.txt", "instruction applied");
                        h.saturating_record(start.elapsed().as_nanos() as u64);
                    }
                });
                h
            }
        },
    )
}

/// Records per second from one producer until all are handed to the file.
fn drain(peer: &dyn Peer, paths: &[Arc<str>], records: u64, already: u64) -> f64 {
    let mut sink = peer.sink();
    let client: Arc<str> = Arc::from("client-drain");
    let start = Instant::now();
    for seq in 0..records {
        sink(record(&client, paths, seq));
    }
    wait_for(peer, already + records, |p| p.drained());
    let rate = records as f64 / start.elapsed().as_secs_f64();
    peer.settle();
    rate
}

fn timer_overhead() -> (u64, u64) {
    let mut h = histogram();
    for _ in 0..100_000 {
        let start = Instant::now();
        h.saturating_record(start.elapsed().as_nanos() as u64);
    }
    (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test` run of bench targets passes nothing
    // and only wants to know the target builds and starts.
    let quick = !std::env::args().any(|a| a == "--bench");
    let drain_records = if quick { 10_000 } else { env_u64("FERRY_BENCH_DRAIN_RECORDS", 500_000) };
    let burst = if quick { 1_000 } else { env_u64("FERRY_BENCH_BURST", 16_000) };
    // Four threads' bursts must fit Ferry's default diagnostics queue (16,384 lines).
    let diag_burst = burst.min(4_000);
    let mut diagnostic_cells = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let paths = paths();
    let line_len = {
        let mut buf = Vec::new();
        record(&Arc::from("client-0"), &paths, 0).write_json_line("node-a", &mut buf);
        buf.len()
    };
    let (t50, t99) = timer_overhead();
    println!(
        "record: {line_len} bytes as JSON; burst {burst} records/thread x {BURSTS}; drain {drain_records} records; \
         timer overhead p50 {t50} ns, p99 {t99} ns (included below)"
    );
    println!("hot path ns p50/p99: log = the logging call on a built record; build+log = the");
    println!("record built (clock read, two Arc<str> clones) inside the timed region too");
    println!(
        "{:<18} {:>12} {:>12} {:>12} | {:>12} {:>12} {:>12} | {:>11}",
        "peer",
        "log 1 thr",
        "log 2 thr",
        "log 4 thr",
        "b+l 1 thr",
        "b+l 2 thr",
        "b+l 4 thr",
        "drain rec/s"
    );
    let peers: [(&str, MakePeer); 3] = [
        ("ferry", |d| Box::new(ferry(d))),
        ("appender", |d| Box::new(appender(d))),
        ("mutex", |d| Box::new(mutex_buf_writer(d))),
    ];
    for (sub, make) in peers {
        let peer_dir = dir.path().join(sub);
        std::fs::create_dir_all(&peer_dir).unwrap();
        let peer = make(&peer_dir);
        let mut sent = 0;
        // Untimed warm-up: the first burst through a peer pays for growing the heap.
        hot_path(peer.as_ref(), &paths, 4, burst, true, &mut sent);
        let mut cells = Vec::new();
        for build in [false, true] {
            for threads in [1, 2, 4] {
                let (p50, p99) = hot_path(peer.as_ref(), &paths, threads, burst, build, &mut sent);
                cells.push(format!("{p50}/{p99}"));
            }
        }
        let mut diagnostic_sent = 0;
        diagnostic_hot_path(peer.as_ref(), 4, diag_burst, &mut diagnostic_sent);
        for threads in [1, 2, 4] {
            let (p50, p99) =
                diagnostic_hot_path(peer.as_ref(), threads, diag_burst, &mut diagnostic_sent);
            diagnostic_cells.push(format!("{:<18} {threads} thr {p50}/{p99}", peer.name()));
        }
        let rate = drain(peer.as_ref(), &paths, drain_records, sent);
        println!(
            "{:<18} {:>12} {:>12} {:>12} | {:>12} {:>12} {:>12} | {:>11.0}",
            peer.name(),
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            rate
        );
        drop(peer);
        std::fs::remove_dir_all(&peer_dir).unwrap();
    }
    println!(
        "diagnostic event (tracing::info! with 2 fields, fmt text, EnvFilter \"info\"; \
         {diag_burst} events/thread x {DIAGNOSTIC_BURSTS}), ns p50/p99:"
    );
    for cell in diagnostic_cells {
        println!("  {cell}");
    }
}
