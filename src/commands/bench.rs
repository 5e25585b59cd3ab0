//! `ferry bench`: a load generator over real WebSocket connections, against a running server
//! (`--url`) or one it starts itself (`--spawn`); it measures throughput and latencies and then
//! verifies that nothing acknowledged was lost and every watcher saw every revision once, in
//! order.
//!
//! Exit status: 0 when verification passed and every goal was met, 1 when verification failed
//! (or the run could not be made), 2 when verification passed but a goal was missed.

mod load;
mod server;
mod timeline;
mod verify;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use ferry_config::FerryConfig;
use serde::Serialize;

use load::{LoadReport, Pace, Plan};
use server::SpawnedServer;
use verify::{WriteOp, HEADER_BYTES};

/// Upper bound on `--find-max` steps.
const MAX_FIND_STEPS: usize = 12;
/// File descriptors kept free besides one per connection.
const SPARE_FDS: u64 = 128;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The server to load (default: ws://<ingress.listen>/v1/ws); several ingress nodes of one
    /// cluster separated by commas (connection i uses the (i mod n)-th).
    #[arg(long, env = "FERRY_URL", conflicts_with = "spawn")]
    url: Option<String>,
    /// The token, when the server requires one (it must allow --prefix).
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Start a `ferry serve` of our own in a temporary data directory, stop it at the end.
    #[arg(long)]
    spawn: bool,
    /// A setting for the spawned server, e.g. --server-set store.wal_sync=os (repeatable).
    #[arg(long = "server-set", value_name = "SECTION.KEY=VALUE", requires = "spawn")]
    server_sets: Vec<String>,
    /// The `ferry` executable --spawn starts (default: this one), e.g. an older build to
    /// compare servers under the same load generator.
    #[arg(long, value_name = "PATH", requires = "spawn")]
    server_exe: Option<std::path::PathBuf>,
    /// One of the scenarios: its settings and goals (flags given here win).
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// The original workload: normal (500 clients, 1,000/s) or peak (10,000 clients,
    /// 15,000/s, 500-byte messages).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// WebSocket connections (clients).
    #[arg(long)]
    connections: Option<usize>,
    /// Instructions (writes) per second over all connections, paced open-loop.
    #[arg(long)]
    rate: Option<f64>,
    /// No schedule: each connection sends whenever fewer than --max-in-flight of its writes
    /// are unanswered, so the achieved rate is the server's throughput at
    /// connections x max-in-flight writes in flight, as a closed-loop ceiling is measured;
    /// --rate does not apply.
    #[arg(long, conflicts_with_all = ["rate", "find_max", "scenario"])]
    closed_loop: bool,
    /// Bytes of content per write (at least 27: the bench's header).
    #[arg(long)]
    size: Option<usize>,
    /// Files written; file f is written by connection f % connections (default: one per
    /// connection).
    #[arg(long)]
    files: Option<usize>,
    /// Connections watching each file (never its writer).
    #[arg(long)]
    watchers_per_file: Option<usize>,
    /// How long the measured load lasts.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Load before the measured window (not in the latencies; verified like the rest).
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// What each write does.
    #[arg(long, value_enum, default_value = "put")]
    op: WriteOp,
    /// Where the run's files go: each run adds a unique directory per writing connection
    /// under it (like clients' home directories, spread over partitions)
    #[arg(long, default_value = "/bench/")]
    prefix: String,
    /// Put all the run's files in one directory, so one partition (and one worker thread or
    /// one queue) carries the whole load: the worst case
    #[arg(long)]
    one_directory: bool,
    /// After the load: how long answers, then events, may still take.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
    drain_timeout: Duration,
    /// Per connection: opening it and making its subscriptions.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    connect_timeout: Duration,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Unanswered writes per connection; later ones wait (their latency counts the wait).
    /// Default 10,000; 1 with --closed-loop.
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Search the highest rate meeting --goal-ack-p99-ms, starting at --rate: double until a
    /// step fails, then bisect.
    #[arg(long)]
    find_max: bool,
    /// Steps of --find-max at most.
    #[arg(long, default_value_t = 8)]
    max_steps: usize,
    /// Goal: p99 acknowledgement latency at most this.
    #[arg(long)]
    goal_ack_p99_ms: Option<f64>,
    /// Goal: p99 fan-out latency at most this.
    #[arg(long)]
    goal_fanout_p99_ms: Option<f64>,
    /// Memory mode: open this many idle connections and report the server's RSS growth per
    /// connection (needs --spawn or --server-pid).
    #[arg(long)]
    idle_connections: Option<usize>,
    /// Goal (with --find-max): the highest rate meeting the other goals is at least this.
    #[arg(long)]
    goal_min_rate: Option<f64>,
    /// Goal: server RSS growth per idle connection at most this many bytes.
    #[arg(long)]
    goal_idle_bytes: Option<f64>,
    /// The pid of a running local server, for memory readings without --spawn.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also print acknowledgements second by second (count, mean, how many over 10 ms, max),
    /// by the second each write was due; the JSON report always has them.
    #[arg(long)]
    timeline: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    Normal,
    Peak,
}

/// The benchmark scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Peak preset for 60 s (10 s warm-up): p99 ack < 10 ms, no error, nothing lost.
    Peak,
    /// Highest rate with p99 ack < 50 ms (goal >= 50,000/s): 1,000 connections, from 2,000/s,
    /// 10 s steps.
    FindMax,
    /// One writer, one file, 1,000 watchers, 1,000 changes/s for 30 s: p99 fan-out < 20 ms.
    Fanout,
    /// 10,000 idle connections: the server's RSS growth per connection (goal <= 10 KiB).
    Memory,
}

/// The settings of a run once scenario, preset and flags are combined.
#[derive(Debug, Clone, Serialize)]
struct Settings {
    connections: usize,
    rate: f64,
    size: usize,
    files: usize,
    watchers_per_file: usize,
    warmup_secs: f64,
    duration_secs: f64,
    op: WriteOp,
    goal_ack_p99_ms: Option<f64>,
    goal_fanout_p99_ms: Option<f64>,
    goal_idle_bytes: Option<f64>,
    goal_min_rate: Option<f64>,
    /// Goals every load scenario of the issue has: no error answer, and the target rate
    /// reached (within 5 %).
    goal_sustained: bool,
    find_max: bool,
    idle_connections: Option<usize>,
}

fn settings(args: &BenchArgs) -> anyhow::Result<Settings> {
    let mut s = Settings {
        connections: 10,
        rate: 100.0,
        size: 500,
        files: 0,
        watchers_per_file: 1,
        warmup_secs: 2.0,
        duration_secs: 10.0,
        op: args.op,
        goal_ack_p99_ms: None,
        goal_fanout_p99_ms: None,
        goal_idle_bytes: None,
        goal_min_rate: None,
        goal_sustained: false,
        find_max: args.find_max,
        idle_connections: None,
    };
    let preset = match args.scenario {
        Some(Scenario::Peak) => Some(Preset::Peak),
        _ => args.preset,
    };
    match preset {
        Some(Preset::Normal) => (s.connections, s.rate) = (500, 1_000.0),
        Some(Preset::Peak) => (s.connections, s.rate, s.size) = (10_000, 15_000.0, 500),
        None => {}
    }
    match args.scenario {
        Some(Scenario::Peak) => {
            (s.warmup_secs, s.duration_secs) = (10.0, 60.0);
            s.goal_ack_p99_ms = Some(10.0);
            s.goal_sustained = true;
        }
        Some(Scenario::FindMax) => {
            (s.connections, s.rate) = (1_000, 2_000.0);
            (s.warmup_secs, s.duration_secs) = (3.0, 10.0);
            s.goal_ack_p99_ms = Some(50.0);
            s.goal_min_rate = Some(50_000.0);
            s.goal_sustained = true;
            s.find_max = true;
        }
        Some(Scenario::Fanout) => {
            (s.connections, s.files, s.watchers_per_file, s.rate) = (1_001, 1, 1_000, 1_000.0);
            (s.warmup_secs, s.duration_secs) = (5.0, 30.0);
            s.goal_fanout_p99_ms = Some(20.0);
            s.goal_sustained = true;
        }
        Some(Scenario::Memory) => {
            s.idle_connections = Some(10_000);
            s.goal_idle_bytes = Some(10_240.0);
        }
        None => {}
    }
    s.connections = args.connections.unwrap_or(s.connections);
    s.rate = args.rate.unwrap_or(s.rate);
    s.size = args.size.unwrap_or(s.size);
    s.files = args.files.unwrap_or(if s.files == 0 { s.connections } else { s.files });
    s.watchers_per_file = args.watchers_per_file.unwrap_or(s.watchers_per_file);
    s.warmup_secs = args.warmup.map_or(s.warmup_secs, |d| d.as_secs_f64());
    s.duration_secs = args.duration.map_or(s.duration_secs, |d| d.as_secs_f64());
    s.goal_ack_p99_ms = args.goal_ack_p99_ms.or(s.goal_ack_p99_ms);
    s.goal_fanout_p99_ms = args.goal_fanout_p99_ms.or(s.goal_fanout_p99_ms);
    s.idle_connections = args.idle_connections.or(s.idle_connections);
    s.goal_idle_bytes = args.goal_idle_bytes.or(s.goal_idle_bytes);
    s.goal_min_rate = args.goal_min_rate.or(s.goal_min_rate);
    if s.connections == 0 || s.files == 0 {
        bail!("--connections and --files must be at least 1");
    }
    if !(s.rate.is_finite() && s.rate > 0.0) {
        bail!("--rate must be a positive number of instructions per second, not {}", s.rate);
    }
    if s.size < HEADER_BYTES {
        bail!("--size must be at least {HEADER_BYTES} bytes (the bench's header), not {}", s.size);
    }
    if s.watchers_per_file >= s.connections && s.watchers_per_file > 0 {
        bail!(
            "--watchers-per-file {} needs more connections than that (a writer does not watch \
             its own file): --connections is {}",
            s.watchers_per_file,
            s.connections
        );
    }
    if s.duration_secs <= 0.0 {
        bail!("--duration must be more than zero");
    }
    if s.find_max && s.goal_ack_p99_ms.is_none() {
        bail!("--find-max needs --goal-ack-p99-ms (or --scenario find-max)");
    }
    Ok(s)
}

/// The whole report, as printed with --json.
#[derive(Debug, Serialize)]
struct BenchReport {
    scenario: Option<Scenario>,
    preset: Option<Preset>,
    settings: Settings,
    url: String,
    spawned_server: bool,
    started_unix: u64,
    /// /proc/loadavg (1, 5, 15 min) before and after.
    load_before: [f64; 3],
    load_after: [f64; 3],
    open_file_limit: u64,
    server_rss_kib_before: Option<u64>,
    server_rss_kib_after: Option<u64>,
    /// The server's CPU seconds (all threads, user + system) before and after the runs.
    server_cpu_s_before: Option<f64>,
    server_cpu_s_after: Option<f64>,
    warnings: Vec<String>,
    runs: Vec<LoadReport>,
    /// The highest rate among the steps that met every goal (with --find-max).
    max_sustained_rate: Option<f64>,
    memory: Option<MemoryReport>,
    goals: Vec<Goal>,
    verified: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Goal {
    name: String,
    target: String,
    actual: String,
    met: bool,
}

#[derive(Debug, Clone, Serialize)]
struct MemoryReport {
    requested: usize,
    opened: usize,
    failed: usize,
    failure_reasons: BTreeMap<String, u64>,
    /// Connections opened before the first reading (first allocations are not per-connection).
    warm_connections: usize,
    rss_kib_before: u64,
    rss_kib_after: u64,
    bytes_per_connection: f64,
}

fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut fields = text.split_whitespace().map(|f| f.parse().unwrap_or(f64::NAN));
    [(); 3].map(|_| fields.next().unwrap_or(f64::NAN))
}

fn unique_prefix(base: &str, step: usize) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let base = base.trim_end_matches('/');
    format!("{base}/run-{}-{}-{step}-", now.as_millis(), std::process::id())
}

pub fn run(config: &FerryConfig, args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let s = settings(args)?;
    if !args.prefix.starts_with('/') {
        bail!("--prefix must start with /, not {:?}", args.prefix);
    }
    let open_file_limit = server::raise_open_file_limit()?;
    let needed = s.idle_connections.unwrap_or(s.connections) as u64 + SPARE_FDS;
    if open_file_limit < needed {
        bail!(
            "{} connections need about {needed} open files, and the limit (RLIMIT_NOFILE, hard \
             limit included) is {open_file_limit}: raise it (ulimit -Hn) or use fewer connections",
            s.idle_connections.unwrap_or(s.connections)
        );
    }
    let mut warnings = Vec::new();
    let spawned = if args.spawn {
        // Room for every connection, and no per-connection rate limit in the way of the load.
        let mut sets = vec![
            format!("ingress.max_connections={}", needed + SPARE_FDS),
            "ingress.max_requests_per_sec=10000000".to_owned(),
        ];
        sets.extend(args.server_sets.iter().cloned());
        Some(SpawnedServer::start(args.server_exe.as_deref(), &sets)?)
    } else {
        // The run's connections and the one that reads the files back.
        let (max, wanted) = (config.ingress.max_connections, s.connections + 1);
        if s.idle_connections.is_none() && max < wanted {
            warnings.push(format!(
                "this configuration's ingress.max_connections is {max}, below the {wanted} \
                 connections of the run: if the server uses it, the rest are refused with \
                 HTTP 503"
            ));
        }
        let per_connection = s.rate / s.files.min(s.connections) as f64;
        if per_connection > f64::from(config.ingress.max_requests_per_sec) {
            warnings.push(format!(
                "a writing connection sends about {per_connection:.0} requests/s, above this \
                 configuration's ingress.max_requests_per_sec {}: expect busy answers",
                config.ingress.max_requests_per_sec
            ));
        }
        None
    };
    let url = match (&spawned, &args.url) {
        (Some(server), _) => server.url.clone(),
        (None, Some(url)) => url.clone(),
        (None, None) => {
            let mut addr = super::ingress_options::listen_addr(&config.ingress)?;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("ws://{addr}/v1/ws")
        }
    };
    let server_pid = spawned.as_ref().map(SpawnedServer::pid).or(args.server_pid);
    let rss = || server_pid.and_then(|pid| server::rss_kib(pid).ok());
    let cpu = || server_pid.and_then(|pid| server::cpu_seconds(pid).ok());
    let mut report = BenchReport {
        scenario: args.scenario,
        preset: args.preset,
        settings: s.clone(),
        url: url.clone(),
        spawned_server: spawned.is_some(),
        started_unix: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
        load_before: load_average(),
        load_after: [0.0; 3],
        open_file_limit,
        server_rss_kib_before: rss(),
        server_rss_kib_after: None,
        server_cpu_s_before: cpu(),
        server_cpu_s_after: None,
        warnings,
        runs: Vec::new(),
        max_sustained_rate: None,
        memory: None,
        goals: Vec::new(),
        verified: true,
    };
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferry-bench")
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(async {
        match s.idle_connections {
            Some(count) => {
                let pid =
                    server_pid.context("the memory measurement needs --spawn or --server-pid")?;
                let memory = measure_memory(args, &url, pid, count).await?;
                if let Some(target) = s.goal_idle_bytes {
                    report.goals.push(Goal {
                        name: "RSS per idle connection".into(),
                        target: format!("<= {target:.0} B"),
                        actual: format!("{:.0} B", memory.bytes_per_connection),
                        met: memory.failed == 0 && memory.bytes_per_connection <= target,
                    });
                }
                report.memory = Some(memory);
                anyhow::Ok(())
            }
            None => load_runs(args, &s, &url, &mut report).await,
        }
    });
    report.server_rss_kib_after = rss();
    report.server_cpu_s_after = cpu();
    report.load_after = load_average();
    drop(runtime);
    if let Some(server) = spawned {
        server.stop().context("stopping the spawned server")?;
    }
    outcome?;
    report.verified = report.runs.iter().all(LoadReport::verified)
        && report.memory.as_ref().is_none_or(|m| m.failed == 0);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report, args.timeline));
    }
    Ok(if !report.verified {
        ExitCode::from(1)
    } else if report.goals.iter().any(|g| !g.met) {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn plan(args: &BenchArgs, s: &Settings, url: &str, rate: f64, step: usize) -> Plan {
    Plan {
        url: url.to_owned(),
        token: args.token.clone(),
        connections: s.connections,
        files: s.files,
        watchers_per_file: s.watchers_per_file,
        pace: if args.closed_loop { Pace::ClosedLoop } else { Pace::Rate(rate) },
        size: s.size,
        op: s.op,
        warmup: Duration::from_secs_f64(s.warmup_secs),
        duration: Duration::from_secs_f64(s.duration_secs),
        drain_timeout: args.drain_timeout,
        connect_timeout: args.connect_timeout,
        connect_concurrency: args.connect_concurrency,
        max_in_flight: args.max_in_flight.unwrap_or(if args.closed_loop { 1 } else { 10_000 }),
        prefix: unique_prefix(&args.prefix, step),
        one_directory: args.one_directory,
    }
}

/// The goals of `s` for one run.
fn goals(s: &Settings, run: &LoadReport) -> Vec<Goal> {
    let mut goals = vec![Goal {
        name: "verification".to_owned(),
        target: "nothing lost, every event once and in order".to_owned(),
        actual: if run.verified() { "passed".to_owned() } else { run.failures.join("; ") },
        met: run.verified(),
    }];
    let ms = |v: f64| format!("{v:.2} ms");
    if let Some(target) = s.goal_ack_p99_ms {
        let actual = run.ack_latency.p99_ms;
        let met = run.ack_latency.count > 0 && actual <= target;
        goals.push(Goal { name: "ack p99".into(), target: ms(target), actual: ms(actual), met });
    }
    if let Some(target) = s.goal_fanout_p99_ms {
        let actual = run.fanout_latency.p99_ms;
        let met = run.fanout_latency.count > 0 && actual <= target;
        goals.push(Goal {
            name: "fan-out p99".into(),
            target: ms(target),
            actual: ms(actual),
            met,
        });
    }
    if s.goal_sustained {
        let errors: u64 = run.errors.values().sum();
        goals.push(Goal {
            name: "error answers".into(),
            target: "0".into(),
            actual: errors.to_string(),
            met: errors == 0,
        });
        goals.push(Goal {
            name: "throughput".into(),
            target: format!(">= 95% of {:.0}/s", run.target_rate),
            actual: format!("{:.0}/s", run.achieved_rate),
            met: run.achieved_rate >= 0.95 * run.target_rate,
        });
    }
    goals
}

async fn load_runs(
    args: &BenchArgs,
    s: &Settings,
    url: &str,
    report: &mut BenchReport,
) -> anyhow::Result<()> {
    if !s.find_max {
        let run = load::run(plan(args, s, url, s.rate, 0)).await?;
        report.goals = goals(s, &run);
        report.runs.push(run);
        return Ok(());
    }
    // Double while steps meet every goal, then bisect between the best pass and the first fail.
    let (mut passed, mut failed): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = s.rate;
    for step in 0..args.max_steps.min(MAX_FIND_STEPS) {
        let run = load::run(plan(args, s, url, rate, step)).await?;
        let step_goals = goals(s, &run);
        let met = step_goals.iter().all(|g| g.met);
        if !args.json {
            eprintln!(
                "find-max step {step}: {rate:.0}/s -> {:.0}/s, ack p99 {:.2} ms: {}",
                run.achieved_rate,
                run.ack_latency.p99_ms,
                if met { "met" } else { "missed" }
            );
        }
        report.runs.push(run);
        if met {
            passed = Some(passed.map_or(rate, |p: f64| p.max(rate)));
        } else {
            failed = Some(failed.map_or(rate, |f: f64| f.min(rate)));
        }
        rate = match (passed, failed) {
            (_, None) => rate * 2.0,
            (None, Some(f)) => f / 2.0,
            (Some(p), Some(f)) if f / p < 1.1 => break,
            (Some(p), Some(f)) => (p + f) / 2.0,
        };
        if rate < 1.0 {
            break;
        }
    }
    report.max_sustained_rate = passed;
    let min = s.goal_min_rate.unwrap_or(0.0);
    report.goals = vec![Goal {
        name: "max sustained rate".into(),
        target: format!(
            ">= {min:.0}/s with p99 ack <= {:.0} ms, verified, no errors",
            s.goal_ack_p99_ms.unwrap_or(0.0)
        ),
        actual: passed.map_or("no step met the goals".into(), |p| format!("{p:.0}/s")),
        met: passed.is_some_and(|p| p >= min),
    }];
    Ok(())
}

async fn measure_memory(
    args: &BenchArgs,
    url: &str,
    pid: u32,
    count: usize,
) -> anyhow::Result<MemoryReport> {
    let token = args.token.as_deref();
    let (concurrency, timeout) = (args.connect_concurrency, args.connect_timeout);
    // The first connections also allocate the server's shared structures: not per connection.
    let warm = (count / 100).clamp(1, 100);
    let (mut clients, mut reasons) = load::open_idle(url, token, warm, concurrency, timeout).await;
    let warm_opened = clients.len();
    let before = server::rss_kib(pid)?;
    let (more, more_reasons) =
        load::open_idle(url, token, count - warm, concurrency, timeout).await;
    let after = server::rss_kib(pid)?;
    let measured = more.len();
    clients.extend(more);
    for (reason, n) in more_reasons {
        *reasons.entry(reason).or_insert(0) += n;
    }
    for client in &clients {
        client.close();
    }
    let growth = after.saturating_sub(before) as f64 * 1024.0;
    Ok(MemoryReport {
        requested: count,
        opened: warm_opened + measured,
        failed: count - warm_opened - measured,
        failure_reasons: reasons,
        warm_connections: warm_opened,
        rss_kib_before: before,
        rss_kib_after: after,
        bytes_per_connection: if measured > 0 { growth / measured as f64 } else { 0.0 },
    })
}

fn table(report: &BenchReport, timeline: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let s = &report.settings;
    let load = |l: [f64; 3]| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]);
    let _ = writeln!(
        out,
        "ferry bench against {}{}",
        report.url,
        if report.spawned_server { " (spawned)" } else { "" }
    );
    let _ = writeln!(
        out,
        "  load average before {} / after {}; open-file limit {}",
        load(report.load_before),
        load(report.load_after),
        report.open_file_limit
    );
    if let (Some(a), Some(b)) = (report.server_rss_kib_before, report.server_rss_kib_after) {
        let _ = writeln!(out, "  server RSS {a} KiB before, {b} KiB after");
    }
    if let (Some(a), Some(b)) = (report.server_cpu_s_before, report.server_cpu_s_after) {
        let acked: u64 = report.runs.iter().map(|r| r.writes_acked).sum();
        let per_write = if acked > 0 {
            format!(
                ", {:.1} us per acknowledged write (warm-up and drain included)",
                (b - a) * 1e6 / acked as f64
            )
        } else {
            String::new()
        };
        let _ = writeln!(out, "  server CPU {:.2} s during the runs{per_write}", b - a);
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "  WARNING: {warning}");
    }
    if let Some(m) = &report.memory {
        let _ = writeln!(
            out,
            "idle connections: {} asked, {} open, {} failed",
            m.requested, m.opened, m.failed
        );
        for (reason, n) in &m.failure_reasons {
            let _ = writeln!(out, "  failed: {n} x {reason}");
        }
        let _ = writeln!(
            out,
            "server RSS: {} KiB after {} warm connections, {} KiB after all: {:.0} bytes per idle connection",
            m.rss_kib_before, m.warm_connections, m.rss_kib_after, m.bytes_per_connection
        );
    }
    if s.idle_connections.is_none() {
        let _ = writeln!(
            out,
            "settings: {} connections, {} files, {} watchers/file, {} {} B writes, warm-up {}s, measured {}s",
            s.connections, s.files, s.watchers_per_file, s.op.name(), s.size, s.warmup_secs, s.duration_secs
        );
    }
    for (i, run) in report.runs.iter().enumerate() {
        if report.runs.len() > 1 {
            let _ = writeln!(out, "--- step {i}");
        }
        let c = &run.connections;
        let _ = writeln!(
            out,
            "connections   {} asked, {} open, {} failed, {} lost during the run",
            c.requested, c.opened, c.failed, c.lost_during_run
        );
        for (reason, n) in c.failure_reasons.iter().chain(&c.lost_reasons) {
            let _ = writeln!(out, "  {n} x {reason}");
        }
        let _ = match run.closed_loop_in_flight {
            Some(n) => writeln!(
                out,
                "throughput    {:.0}/s acknowledged, closed loop ({} writes in flight per connection)",
                run.achieved_rate, n
            ),
            None => writeln!(
                out,
                "throughput    {:.0}/s acknowledged of {:.0}/s target ({:.1}%)",
                run.achieved_rate,
                run.target_rate,
                100.0 * run.achieved_rate / run.target_rate
            ),
        };
        let _ = writeln!(
            out,
            "writes        {} sent, {} acknowledged, {} unanswered ({} answered after the drain deadline), {} not sent",
            run.writes_sent,
            run.writes_acked,
            run.writes_unanswered,
            run.writes_answered_late,
            run.writes_not_sent
        );
        let errors: Vec<String> = run.errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let _ = writeln!(
            out,
            "errors        {}",
            if errors.is_empty() { "none".into() } else { errors.join(", ") }
        );
        let _ = writeln!(out, "latency (ms)       count      p50      p99    p99.9      max");
        for (name, l) in [
            ("ack", &run.ack_latency),
            ("fan-out", &run.fanout_latency),
            ("send lag", &run.send_lag),
        ] {
            let _ = writeln!(
                out,
                "  {name:<12} {:>10} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                l.count, l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
            );
        }
        if timeline {
            let _ = writeln!(
                out,
                "second     acked  mean ms  over {} ms   max ms",
                timeline::SLOW_ACK_US / 1000
            );
            for s in &run.timeline {
                let _ = writeln!(
                    out,
                    "  {:>4} {:>9} {:>8.2} {:>10} {:>8.2}",
                    s.second, s.acked, s.mean_ms, s.slow, s.max_ms
                );
            }
        }
        let _ = writeln!(
            out,
            "events        {} received, {:.0}/s delivered in the window",
            run.events_received, run.delivered_events_per_sec
        );
        let w = &run.watchers;
        let _ = writeln!(
            out,
            "watchers      {} missing, {} duplicates, {} reordered, {} unexpected, {} snapshots, {} stray, {} past the read-back",
            w.missing,
            w.duplicates,
            w.reorders,
            w.unexpected,
            run.snapshots,
            run.stray_events,
            w.past_read_back
        );
        let st = &run.store;
        let _ = writeln!(
            out,
            "store         {} acknowledged writes checked: {} lost, {} wrong content, {} duplicate revs, {} unexplained revs, {} unreadable files",
            st.acked, st.lost, st.wrong_content, st.duplicate_revs, st.unexplained_revs, run.files_unreadable
        );
        let _ = writeln!(
            out,
            "VERIFY        {}",
            if run.verified() {
                "PASSED".to_owned()
            } else {
                format!("FAILED: {}", run.failures.join("; "))
            }
        );
    }
    if let Some(rate) = report.max_sustained_rate {
        let _ = writeln!(out, "max sustained rate: {rate:.0}/s");
    }
    for goal in &report.goals {
        let _ = writeln!(
            out,
            "goal {:<20} {:<8} target {}, actual {}",
            goal.name,
            if goal.met { "MET" } else { "MISSED" },
            goal.target,
            goal.actual
        );
    }
    out
}
