//! What bare loopback TCP allows the shapes of Ferry's benchmark scenarios on this machine,
//! the load generator included: the floor Ferry's own figures are compared with. Nothing of
//! Ferry is in it, no WebSocket, no JSON, no store; both sides are tokio's multi-threaded
//! runtime, in two processes, as `ferry bench --spawn` runs.
//!
//! - `fanout`: one source makes `--rate` messages/s of `--size` bytes (Ferry's change event for
//!   a 500-byte write is about 600 bytes with its WebSocket header); every one of `--watchers`
//!   connections receives each message. The server puts each message in a
//!   `tokio::sync::broadcast` channel, and each connection's task writes everything it finds
//!   there in one `write` (as Ferry's connection writers do); the client's task per connection
//!   reads 64 KiB at a time and records each message's latency from the timestamp the source
//!   wrote in it. Prints one JSON line: delivered/s, latency percentiles (source -> watcher), the
//!   CPU seconds of each process, the writes, and whether every watcher received every message
//!   once and in order.
//! - `requests`: the find-max scenario's shape. `--connections` clients each send
//!   `--size`-byte requests (a 500-byte put is about 560) on an open-loop schedule, the rate
//!   shared evenly; the server answers each with `--answer-size` bytes and sends it on to the
//!   next connection as a `--event-size`-byte event (that connection's watcher), each
//!   connection's output through a channel to its writer task, written in one write as Ferry's
//!   are. One step per rate of `--rates`, each against a fresh server, until a step misses
//!   the goal: one JSON line per step (answered/s, ack and event latency percentiles, CPU
//!   seconds of each process, whether every answer and event arrived), then the highest rate
//!   that met the goal.
//!
//! `cargo bench -p ferry-ingress --bench tcp_floor -- fanout [--watchers 1000] [--rate 1000]
//! [--size 600] [--seconds 30] [--warmup 5]`
//!
//! `cargo bench -p ferry-ingress --bench tcp_floor -- requests [--connections 1000]
//! [--rates 10000,20000,40000,60000,80000] [--size 560] [--answer-size 40] [--event-size 600]
//! [--seconds 10] [--warmup 2] [--goal-p99-ms 50]`

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// What bare loopback TCP allows (see the module documentation).
#[derive(clap::Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// Passed by `cargo bench`.
    #[arg(long, global = true, hide = true)]
    bench: bool,
}

#[derive(clap::Subcommand)]
enum Mode {
    /// One source, every message to every connection.
    Fanout(FanoutArgs),
    /// Requests and answers, open-loop, at rising rates.
    Requests(RequestArgs),
}

#[derive(clap::Args, Clone)]
struct FanoutArgs {
    /// Connections, each receiving every message.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Messages per second from the source.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Bytes per message (at least 16: the timestamp and the sequence number).
    #[arg(long, default_value_t = 600)]
    size: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seconds before measuring.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Run the server side on this address (the benchmark starts itself so).
    #[arg(long, hide = true)]
    serve: Option<String>,
}

#[derive(clap::Args, Clone)]
struct RequestArgs {
    /// Client connections, sharing the rate evenly.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Requests per second, one step each, in order, until a step misses the goal.
    #[arg(long, value_delimiter = ',', default_value = "10000,20000,40000,60000,80000")]
    rates: Vec<u64>,
    /// Bytes per request (at least 21, the header).
    #[arg(long, default_value_t = 560)]
    size: usize,
    /// Bytes per answer (at least 21).
    #[arg(long, default_value_t = 40)]
    answer_size: usize,
    /// Bytes per event, the request sent on to the next connection as a watcher's event (0:
    /// none; else at least 21).
    #[arg(long, default_value_t = 600)]
    event_size: usize,
    /// Measured seconds per step.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds before measuring, per step.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// A step meets the goal with at least 95 % of its rate answered and p99 under this.
    #[arg(long, default_value_t = 50.0)]
    goal_p99_ms: f64,
    /// Run the server side on this address (the benchmark starts itself so).
    #[arg(long, hide = true)]
    serve: Option<String>,
}

/// Messages a connection's task may fall behind before the channel drops them for it; the
/// client then counts them missing.
const CHANNEL_CAPACITY: usize = 1 << 16;
/// The most a connection's task puts in one `write`.
const WRITE_MAX: usize = 64 * 1024;
const READ_BYTES: usize = 64 * 1024;

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// CPU seconds (user + system) this process has used.
fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only into the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn main() -> anyhow::Result<()> {
    let cli = <Cli as clap::Parser>::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.mode {
        Mode::Fanout(args) => {
            anyhow::ensure!(args.size >= 16, "--size must be at least 16");
            match args.serve.clone() {
                Some(listen) => runtime.block_on(serve_fanout(args, listen)),
                None => runtime.block_on(measure_fanout(args)),
            }
        }
        Mode::Requests(args) => {
            anyhow::ensure!(args.size >= HEADER, "--size must be at least {HEADER}");
            anyhow::ensure!(args.answer_size >= HEADER, "--answer-size must be at least {HEADER}");
            anyhow::ensure!(
                args.event_size == 0 || args.event_size >= HEADER,
                "--event-size must be 0 or at least {HEADER}"
            );
            match args.serve.clone() {
                Some(listen) => runtime.block_on(serve_requests(args, listen)),
                None => runtime.block_on(measure_requests(args)),
            }
        }
    }
}

/// The server side, started by the client as this executable with `server_args`: it prints
/// its port first, and "CPU-seconds writes" last, when it is done.
struct Server {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Server {
    fn start(server_args: &[String]) -> anyhow::Result<(Server, u16)> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(server_args)
            .stdout(Stdio::piped())
            .spawn()?;
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut server = Server { child, lines };
        let port = server.next_line()?.parse()?;
        Ok((server, port))
    }

    fn next_line(&mut self) -> anyhow::Result<String> {
        Ok(self.lines.next().transpose()?.unwrap_or_default())
    }

    /// The CPU seconds it used and the writes it made, once it exits.
    fn finish(mut self) -> anyhow::Result<(f64, u64)> {
        let line = self.next_line()?;
        self.child.wait()?;
        line.split_once(' ')
            .and_then(|(cpu, writes)| Some((cpu.parse().ok()?, writes.parse().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("the server's last line {line:?}: no CPU and writes"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only a server given up on is still running here: it would wait for connections, or
        // write to ones nobody reads, until killed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prints the server's last line: its CPU seconds since `cpu_before` and its writes.
async fn report_server(
    mut connections: tokio::task::JoinSet<u64>,
    cpu_before: f64,
) -> anyhow::Result<()> {
    let mut writes = 0;
    while let Some(written) = connections.join_next().await {
        writes += written?;
    }
    println!("{:.3} {writes}", own_cpu_seconds() - cpu_before);
    Ok(())
}

async fn listen(address: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(address).await?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    Ok(listener)
}

/// The fan-out's server: accepts `--watchers` connections, then runs the source for warm-up
/// plus measured seconds, and closes every connection.
async fn serve_fanout(args: FanoutArgs, address: String) -> anyhow::Result<()> {
    let listener = listen(&address).await?;
    let (tx, _) = broadcast::channel::<Arc<[u8]>>(CHANNEL_CAPACITY);
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..args.watchers {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        writers.spawn(write_connection(stream, tx.subscribe()));
    }
    let cpu_before = own_cpu_seconds();
    let total = args.rate * (args.warmup + args.seconds);
    let start = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0u64;
    while sent < total {
        ticks.tick().await;
        let due = (start.elapsed().as_micros() as u64 * args.rate / 1_000_000).min(total);
        while sent < due {
            let mut message = vec![0u8; args.size];
            message[..8].copy_from_slice(&now_us().to_le_bytes());
            message[8..16].copy_from_slice(&sent.to_le_bytes());
            // No receiver is an error only when every connection has gone: nothing to count.
            let _ = tx.send(message.into());
            sent += 1;
        }
    }
    drop(tx);
    report_server(writers, cpu_before).await
}

/// Writes what the channel holds until it closes; returns the number of writes.
async fn write_connection(mut stream: TcpStream, mut rx: broadcast::Receiver<Arc<[u8]>>) -> u64 {
    let mut buffer = Vec::with_capacity(WRITE_MAX);
    let mut writes = 0;
    loop {
        match rx.recv().await {
            Ok(message) => buffer.extend_from_slice(&message),
            // Lagged: the client sees the gap in the sequence numbers.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return writes,
        }
        while buffer.len() < WRITE_MAX {
            match rx.try_recv() {
                Ok(message) => buffer.extend_from_slice(&message),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        if stream.write_all(&buffer).await.is_err() {
            return writes;
        }
        writes += 1;
        buffer.clear();
    }
}

/// What one watcher saw.
struct Received {
    latency: Histogram<u64>,
    count: u64,
    out_of_order: u64,
}

/// The fan-out's client: starts the server, connects, reads until the server closes, reports.
async fn measure_fanout(args: FanoutArgs) -> anyhow::Result<()> {
    let (server, port) = Server::start(&[
        "fanout".into(),
        "--serve".into(),
        "127.0.0.1:0".into(),
        format!("--watchers={}", args.watchers),
        format!("--rate={}", args.rate),
        format!("--size={}", args.size),
        format!("--seconds={}", args.seconds),
        format!("--warmup={}", args.warmup),
    ])?;
    // The source starts when the last connection is accepted; its first timestamp marks the
    // start, so the window is read off the messages' own clock.
    let mut tasks = tokio::task::JoinSet::new();
    let measure_after = Arc::new(std::sync::OnceLock::<u64>::new());
    for _ in 0..args.watchers {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        tasks.spawn(read_connection(stream, args.size, args.warmup, measure_after.clone()));
    }
    let cpu_before = own_cpu_seconds();
    let mut latency = Histogram::<u64>::new(3)?;
    let (mut delivered, mut out_of_order, mut short) = (0u64, 0u64, 0usize);
    let total = args.rate * (args.warmup + args.seconds);
    while let Some(received) = tasks.join_next().await {
        let received = received??;
        latency.add(&received.latency)?;
        delivered += received.count;
        out_of_order += received.out_of_order;
        short += usize::from(received.count != total);
    }
    let client_cpu = own_cpu_seconds() - cpu_before;
    let (server_cpu, writes) = server.finish()?;
    let run_s = (args.warmup + args.seconds) as f64;
    let complete = short == 0 && out_of_order == 0;
    println!(
        "{}",
        serde_json::json!({
            "watchers": args.watchers, "rate": args.rate, "size": args.size,
            "seconds": args.seconds, "warmup": args.warmup,
            "delivered_per_s": latency.len() as f64 / args.seconds as f64,
            "delivered": delivered, "expected": total * args.watchers as u64,
            "p50_ms": quantile_ms(&latency, 0.5),
            "p99_ms": quantile_ms(&latency, 0.99),
            "p999_ms": quantile_ms(&latency, 0.999),
            "max_ms": latency.max() as f64 / 1000.0,
            "server_cpu_s": server_cpu, "client_cpu_s": client_cpu,
            // The cost of a write, both ends (with the events it carries), and how long one
            // write to every connection takes at that rate: the fan-out's round.
            "writes_per_s": writes as f64 / run_s,
            "cpu_us_per_write": (server_cpu + client_cpu) * 1e6 / writes.max(1) as f64,
            "round_ms": args.watchers as f64 * run_s * 1e3 / writes.max(1) as f64,
            "watchers_short": short, "out_of_order": out_of_order, "complete": complete,
        })
    );
    anyhow::ensure!(complete, "{short} watchers missed messages, {out_of_order} out of order");
    Ok(())
}

fn quantile_ms(latency: &Histogram<u64>, quantile: f64) -> f64 {
    latency.value_at_quantile(quantile) as f64 / 1000.0
}

async fn read_connection(
    mut stream: TcpStream,
    size: usize,
    warmup_s: u64,
    measure_after: Arc<std::sync::OnceLock<u64>>,
) -> anyhow::Result<Received> {
    let mut received = Received { latency: Histogram::new(3)?, count: 0, out_of_order: 0 };
    let mut buffer = vec![0u8; READ_BYTES + size];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buffer[filled..]).await?;
        if n == 0 {
            return Ok(received);
        }
        filled += n;
        let now = now_us();
        let whole = filled / size * size;
        for message in buffer[..whole].chunks_exact(size) {
            let sent_at = u64::from_le_bytes(message[..8].try_into()?);
            let sequence = u64::from_le_bytes(message[8..16].try_into()?);
            if sequence == 0 {
                measure_after.get_or_init(|| sent_at + warmup_s * 1_000_000);
            }
            if sequence != received.count {
                received.out_of_order += 1;
            }
            received.count += 1;
            if measure_after.get().is_some_and(|&from| sent_at >= from) {
                received.latency.record(now.saturating_sub(sent_at))?;
            }
        }
        buffer.copy_within(whole..filled, 0);
        filled -= whole;
    }
}

/// A request, answer or event on the wire: the client's timestamp (us on its clock) and the
/// request's sequence number, the message's length, its kind, then padding to the length.
const HEADER: usize = 21;
const REQUEST: u8 = 0;
const ANSWER: u8 = 1;
const EVENT: u8 = 2;

fn append_message(out: &mut Vec<u8>, stamp_and_sequence: &[u8], len: usize, kind: u8) {
    let at = out.len();
    out.resize(at + len, 0);
    out[at..at + 16].copy_from_slice(&stamp_and_sequence[..16]);
    out[at + 16..at + 20].copy_from_slice(&(len as u32).to_le_bytes());
    out[at + 20] = kind;
}

/// The whole messages at the start of `bytes`, each with its kind, in order.
fn whole_messages(bytes: &[u8]) -> impl Iterator<Item = (&[u8], u8)> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let len = u32::from_le_bytes(rest.get(16..20)?.try_into().ok()?) as usize;
        if len < HEADER {
            return None;
        }
        let message = rest.get(..len)?;
        rest = &rest[len..];
        Some((message, message[20]))
    })
}

/// The requests' server: answers every request on `--connections` connections, and sends it
/// as an event to the next connection, until the client has closed every connection's
/// sending side.
async fn serve_requests(args: RequestArgs, address: String) -> anyhow::Result<()> {
    let listener = listen(&address).await?;
    let mut streams = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        streams.push(stream.into_split());
    }
    let (outboxes, inboxes): (Vec<_>, Vec<_>) =
        (0..args.connections).map(|_| tokio::sync::mpsc::unbounded_channel()).unzip();
    let outboxes: Arc<[tokio::sync::mpsc::UnboundedSender<Vec<u8>>]> = outboxes.into();
    let cpu_before = own_cpu_seconds();
    let mut writers = tokio::task::JoinSet::new();
    for (i, ((reader, writer), inbox)) in streams.into_iter().zip(inboxes).enumerate() {
        tokio::spawn(read_requests(reader, i, outboxes.clone(), args.clone()));
        writers.spawn(write_outbox(writer, inbox));
    }
    // The writers end when every reader has, and with them these senders.
    drop(outboxes);
    report_server(writers, cpu_before).await
}

/// Reads connection `i`'s requests until it closes its sending side; the answers to one read
/// go to its outbox, the events to the next connection's.
async fn read_requests(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    i: usize,
    outboxes: Arc<[tokio::sync::mpsc::UnboundedSender<Vec<u8>>]>,
    args: RequestArgs,
) {
    let mut buffer = vec![0u8; READ_BYTES + args.size];
    let mut filled = 0;
    loop {
        let n = match reader.read(&mut buffer[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        filled += n;
        let (mut answers, mut events, mut used) = (Vec::new(), Vec::new(), 0);
        for (request, _) in whole_messages(&buffer[..filled]) {
            append_message(&mut answers, request, args.answer_size, ANSWER);
            if args.event_size > 0 {
                append_message(&mut events, request, args.event_size, EVENT);
            }
            used += request.len();
        }
        buffer.copy_within(used..filled, 0);
        filled -= used;
        // A closed outbox is a writer whose client went: nothing left to tell it.
        if !answers.is_empty() {
            let _ = outboxes[i].send(answers);
        }
        if !events.is_empty() {
            let _ = outboxes[(i + 1) % outboxes.len()].send(events);
        }
    }
}

/// Writes everything waiting in `inbox` in one write, until every sender is gone; returns
/// the number of writes.
async fn write_outbox(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) -> u64 {
    let mut writes = 0;
    while let Some(mut buffer) = inbox.recv().await {
        while buffer.len() < WRITE_MAX {
            match inbox.try_recv() {
                Ok(more) => buffer.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if writer.write_all(&buffer).await.is_err() {
            return writes;
        }
        writes += 1;
    }
    writes
}

/// One connection's share of a step.
struct Exchanged {
    acks: Histogram<u64>,
    events: Histogram<u64>,
    sent: u64,
    answered: u64,
    events_received: u64,
}

/// A step's schedule, on the client's clock.
#[derive(Clone, Copy)]
struct Schedule {
    base: Instant,
    measure_from: Instant,
    end: Instant,
    /// Between one connection's requests.
    interval: Duration,
}

/// The requests' client: one step per rate, each against a fresh server, until one misses
/// the goal.
async fn measure_requests(args: RequestArgs) -> anyhow::Result<()> {
    let mut highest = None;
    for &rate in &args.rates {
        if !request_step(&args, rate).await? {
            break;
        }
        highest = Some(rate);
    }
    println!(
        "{}",
        serde_json::json!({
            "connections": args.connections, "goal_p99_ms": args.goal_p99_ms,
            "highest_rate_meeting_goal": highest,
        })
    );
    Ok(())
}

/// Runs one step at `rate` requests/s, prints its line, and says whether it met the goal.
async fn request_step(args: &RequestArgs, rate: u64) -> anyhow::Result<bool> {
    let (server, port) = Server::start(&[
        "requests".into(),
        "--serve".into(),
        "127.0.0.1:0".into(),
        format!("--connections={}", args.connections),
        format!("--size={}", args.size),
        format!("--answer-size={}", args.answer_size),
        format!("--event-size={}", args.event_size),
    ])?;
    let mut streams = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    let base = Instant::now();
    let start = base + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs(args.warmup);
    let schedule = Schedule {
        base,
        measure_from,
        end: measure_from + Duration::from_secs(args.seconds),
        interval: Duration::from_secs_f64(args.connections as f64 / rate.max(1) as f64),
    };
    let cpu_before = own_cpu_seconds();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, stream) in streams.into_iter().enumerate() {
        // Spread over one interval, so that the connections do not send in step.
        let first = start + schedule.interval.mul_f64(i as f64 / args.connections as f64);
        tasks.spawn(exchange(stream, first, schedule, args.clone()));
    }
    let mut acks = Histogram::<u64>::new(3)?;
    let mut events = Histogram::<u64>::new(3)?;
    let (mut sent, mut answered, mut events_received) = (0, 0, 0);
    while let Some(exchanged) = tasks.join_next().await {
        let exchanged = exchanged??;
        acks.add(&exchanged.acks)?;
        events.add(&exchanged.events)?;
        sent += exchanged.sent;
        answered += exchanged.answered;
        events_received += exchanged.events_received;
    }
    let client_cpu = own_cpu_seconds() - cpu_before;
    let (server_cpu, writes) = server.finish()?;
    let answered_per_s = acks.len() as f64 / args.seconds as f64;
    let p99_ms = quantile_ms(&acks, 0.99);
    let events_expected = if args.event_size > 0 { sent } else { 0 };
    let met = sent == answered
        && events_received == events_expected
        && answered_per_s >= 0.95 * rate as f64
        && p99_ms < args.goal_p99_ms;
    println!(
        "{}",
        serde_json::json!({
            "connections": args.connections, "rate": rate, "size": args.size,
            "answer_size": args.answer_size, "event_size": args.event_size,
            "seconds": args.seconds, "warmup": args.warmup,
            "answered_per_s": answered_per_s, "sent": sent, "unanswered": sent - answered,
            "events_missing": events_expected.saturating_sub(events_received),
            "ack_p50_ms": quantile_ms(&acks, 0.5), "ack_p99_ms": p99_ms,
            "ack_p999_ms": quantile_ms(&acks, 0.999), "ack_max_ms": acks.max() as f64 / 1000.0,
            "event_p50_ms": quantile_ms(&events, 0.5),
            "event_p99_ms": quantile_ms(&events, 0.99),
            "server_cpu_s": server_cpu, "client_cpu_s": client_cpu, "server_writes": writes,
            "met": met,
        })
    );
    Ok(met)
}

/// How long a connection waits for its last answers and events after the step's end.
const DRAIN: Duration = Duration::from_secs(5);

/// One connection's step: sends on the schedule (every request due at once in one write, as a
/// client that fell behind would) while reading answers and events; once every answer is in,
/// closes its sending side and reads the rest of the events until the server closes.
async fn exchange(
    stream: TcpStream,
    first: Instant,
    schedule: Schedule,
    args: RequestArgs,
) -> anyhow::Result<Exchanged> {
    let micros = |at: Instant| at.duration_since(schedule.base).as_micros() as u64;
    let measure_from = micros(schedule.measure_from);
    let (mut reader, mut writer) = stream.into_split();
    let mut exchanged = Exchanged {
        acks: Histogram::new(3)?,
        events: Histogram::new(3)?,
        sent: 0,
        answered: 0,
        events_received: 0,
    };
    let mut next = first;
    let mut requests = Vec::new();
    let mut buffer = vec![0u8; READ_BYTES + args.answer_size.max(args.event_size)];
    let mut filled = 0;
    let mut sending = true;
    let deadline = tokio::time::Instant::from_std(schedule.end + DRAIN);
    loop {
        if sending && next >= schedule.end && exchanged.answered == exchanged.sent {
            writer.shutdown().await?;
            sending = false;
        }
        let due = tokio::time::Instant::from_std(next);
        tokio::select! {
            () = tokio::time::sleep_until(due), if sending && next < schedule.end => {
                let now = Instant::now();
                while next <= now && next < schedule.end {
                    let mut stamp = [0u8; 16];
                    stamp[..8].copy_from_slice(&micros(now).to_le_bytes());
                    stamp[8..].copy_from_slice(&exchanged.sent.to_le_bytes());
                    append_message(&mut requests, &stamp, args.size, REQUEST);
                    exchanged.sent += 1;
                    next += schedule.interval;
                }
                writer.write_all(&requests).await?;
                requests.clear();
            }
            read = reader.read(&mut buffer[filled..]) => {
                let n = read?;
                if n == 0 {
                    return Ok(exchanged);
                }
                filled += n;
                let now = micros(Instant::now());
                let mut used = 0;
                for (message, kind) in whole_messages(&buffer[..filled]) {
                    used += message.len();
                    let sent_at = u64::from_le_bytes(message[..8].try_into()?);
                    let histogram = if kind == ANSWER {
                        exchanged.answered += 1;
                        &mut exchanged.acks
                    } else {
                        exchanged.events_received += 1;
                        &mut exchanged.events
                    };
                    // Events carry their writer's clock: the same process's.
                    if sent_at >= measure_from {
                        histogram.record(now.saturating_sub(sent_at))?;
                    }
                }
                buffer.copy_within(used..filled, 0);
                filled -= used;
            }
            () = tokio::time::sleep_until(deadline) => return Ok(exchanged),
        }
    }
}
