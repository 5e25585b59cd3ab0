//! The raw TCP fan-out Ferry's fan-out scenario is compared with: the same load with nothing
//! of Ferry in it. One source makes `--rate` messages/s of `--size` bytes (Ferry's change event
//! for a 500-byte write is about 600 bytes with its WebSocket header); every one of `--watchers`
//! loopback TCP connections receives each message. No WebSocket, no JSON, no store: the server
//! puts each message in a `tokio::sync::broadcast` channel, and each connection's task writes
//! everything it finds there in one `write` (as Ferry's connection writers do); the client's
//! task per connection reads 64 KiB at a time and records each message's latency from the
//! timestamp the source wrote in it. Both sides are tokio's multi-threaded runtime, in two
//! processes, as `ferry bench --spawn` runs; so what it measures is what the loopback TCP stack,
//! tokio and the two cores allow a fan-out of this shape, the load generator included.
//!
//! `cargo bench -p ferry-ingress --bench tcp_fanout -- [--watchers 1000] [--rate 1000]
//! [--size 600] [--seconds 30] [--warmup 5]`
//!
//! Prints one JSON line: messages delivered per second in the measured window, the latency
//! percentiles (source -> watcher), the CPU seconds of each process, and whether every
//! watcher received every message once and in order.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// The raw TCP fan-out (see the module documentation).
#[derive(clap::Parser, Clone)]
struct Args {
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
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
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
    let args = <Args as clap::Parser>::parse();
    anyhow::ensure!(args.size >= 16, "--size must be at least 16");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match &args.serve {
        Some(listen) => runtime.block_on(serve(args.clone(), listen.clone())),
        None => runtime.block_on(measure(args)),
    }
}

/// The server side: accepts `--watchers` connections, then runs the source for warm-up plus
/// measured seconds, closes every connection, and prints its CPU seconds.
async fn serve(args: Args, listen: String) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&listen).await?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
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
    let mut writes = 0;
    while let Some(written) = writers.join_next().await {
        writes += written?;
    }
    println!("{:.3} {writes}", own_cpu_seconds() - cpu_before);
    Ok(())
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

/// The client side: starts the server, connects, reads until the server closes, reports.
async fn measure(args: Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut server = Command::new(exe)
        .args(["--serve", "127.0.0.1:0", "--watchers", &args.watchers.to_string()])
        .args(["--rate", &args.rate.to_string(), "--size", &args.size.to_string()])
        .args(["--seconds", &args.seconds.to_string(), "--warmup", &args.warmup.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let lines = BufReader::new(server.stdout.take().expect("piped stdout")).lines();
    let outcome = watch_and_report(&args, lines).await;
    if outcome.is_err() {
        // It would wait for connections, or write to ones nobody reads, until killed.
        let _ = server.kill();
    }
    server.wait()?;
    outcome
}

/// Connects every watcher to the server whose port is `lines`' first line, reads until the
/// server closes them, and prints the report.
async fn watch_and_report(
    args: &Args,
    mut lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
) -> anyhow::Result<()> {
    let port: u16 = lines.next().transpose()?.unwrap_or_default().parse()?;
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
    let last_line = lines.next().transpose()?.unwrap_or_default();
    let (server_cpu, writes) = last_line
        .split_once(' ')
        .and_then(|(cpu, writes)| Some((cpu.parse::<f64>().ok()?, writes.parse::<u64>().ok()?)))
        .ok_or_else(|| {
            anyhow::anyhow!("the server's last line {last_line:?}: no CPU and writes")
        })?;
    let run_s = (args.warmup + args.seconds) as f64;
    let complete = short == 0 && out_of_order == 0;
    println!(
        "{}",
        serde_json::json!({
            "watchers": args.watchers, "rate": args.rate, "size": args.size,
            "seconds": args.seconds, "warmup": args.warmup,
            "delivered_per_s": latency.len() as f64 / args.seconds as f64,
            "delivered": delivered, "expected": total * args.watchers as u64,
            "p50_ms": latency.value_at_quantile(0.5) as f64 / 1000.0,
            "p99_ms": latency.value_at_quantile(0.99) as f64 / 1000.0,
            "p999_ms": latency.value_at_quantile(0.999) as f64 / 1000.0,
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
