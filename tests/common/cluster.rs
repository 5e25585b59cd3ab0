//! A distributed cluster for end-to-end tests: `ferry worker` and `ferry ingress` processes on
//! a RabbitMQ and a Redis (the machine's shared ones unless the test brings its own), in a
//! namespace of the test's own whose queues, exchanges and keys are deleted (and whose processes
//! are killed) on drop. Each process's stderr goes to a file in the cluster's directory, whose
//! last lines are printed when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::process::{spawn_announcing, url_in};
use ferry_cluster::teardown::delete_namespace_keys;
use ferry_cluster::topology::{QueueLimits, Topology};

pub const SHARED_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const SHARED_REDIS_URL: &str = "redis://127.0.0.1:6379/";
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// `ferry init`'s default.
pub const PARTITIONS: u32 = 16;
/// Each broker's part of the cleanup on drop: a broker that is down must not hang the test.
const CLEANUP_WITHIN: Duration = Duration::from_secs(10);
/// How much of a process's stderr a failed test prints.
const STDERR_TAIL_LINES: usize = 30;

/// A namespace of our own on the brokers, removed on drop.
pub struct Cluster {
    pub dir: PathBuf,
    pub namespace: String,
    amqp_url: String,
    redis_url: String,
    processes: Vec<Process>,
}

struct Process {
    name: String,
    child: Child,
    url: Option<String>,
    stderr: PathBuf,
}

impl Process {
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn print_stderr_tail(&self) {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(STDERR_TAIL_LINES).collect();
        eprintln!("--- {} stderr (last lines) ---", self.name);
        tail.iter().rev().for_each(|line| eprintln!("{line}"));
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Cluster {
    /// A data directory under `dir` (created with `ferry init`) and a fresh namespace on the
    /// machine's shared brokers.
    pub fn new(dir: &Path) -> Cluster {
        Cluster::with_brokers(dir, SHARED_AMQP_URL, SHARED_REDIS_URL)
    }

    /// Like [`Cluster::new`], on the given brokers.
    pub fn with_brokers(dir: &Path, amqp_url: &str, redis_url: &str) -> Cluster {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let namespace = format!("t{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let cluster = Cluster {
            dir: dir.to_owned(),
            namespace,
            amqp_url: amqp_url.to_owned(),
            redis_url: redis_url.to_owned(),
            processes: Vec::new(),
        };
        let out = cluster.ferry().arg("init").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        cluster
    }

    /// `ferry` configured for this cluster (namespace, brokers, data and log directories).
    pub fn ferry(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command
            .env_remove("FERRY_CONFIG")
            .env_remove("FERRY_AUTH__SECRET")
            .env("FERRY_CLUSTER__NAMESPACE", &self.namespace)
            .env("FERRY_CLUSTER__BROKER_URL", &self.amqp_url)
            .env("FERRY_CLUSTER__BUS_URL", &self.redis_url)
            .arg("--data")
            .arg(self.dir.join("data"))
            .arg("--set")
            .arg(format!("logger.directory={:?}", self.dir.join("logs").display().to_string()));
        command
    }

    /// Starts a process and waits for its first line on stdout; returns its index.
    pub fn spawn(&mut self, name: &str, args: &[&str]) -> usize {
        let stderr = self.dir.join(format!("{name}.stderr"));
        let stderr_file = std::fs::File::create(&stderr).unwrap();
        let (child, first) = spawn_announcing(self.ferry().args(args).stderr(stderr_file), name);
        let url = url_in(&first, "ws://");
        self.processes.push(Process { name: name.to_owned(), child, url, stderr });
        self.processes.len() - 1
    }

    pub fn worker(&mut self, id: &str) -> usize {
        self.spawn(id, &["worker", "--id", id])
    }

    /// Starts an ingress node on a free loopback port; returns its WebSocket URL.
    pub fn ingress(&mut self, id: &str) -> String {
        let i = self.spawn(id, &["ingress", "--id", id, "--listen", "127.0.0.1:0"]);
        self.processes[i].url.clone().expect("the ingress printed its URL")
    }

    pub fn kill(&mut self, index: usize) {
        let p = &mut self.processes[index];
        p.child.kill().unwrap_or_else(|e| panic!("killing {}: {e}", p.name));
        p.child.wait().unwrap();
    }

    /// Asserts that every process started is still the one running (none exited, none was
    /// restarted).
    pub fn assert_all_running(&mut self) {
        for p in &mut self.processes {
            let status = p.child.try_wait().unwrap();
            assert!(status.is_none(), "{} exited: {status:?}", p.name);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for mut p in std::mem::take(&mut self.processes) {
            p.stop();
            if failed {
                p.print_stderr_tail();
            }
        }
        // Processes that scripts/scale.sh started (a failed test never reached its `down`).
        for entry in std::fs::read_dir(self.dir.join("run")).into_iter().flatten().flatten() {
            let pid =
                std::fs::read_to_string(entry.path()).ok().and_then(|s| s.trim().parse().ok());
            if let (Some(pid), true) = (pid, entry.path().extension().is_some_and(|e| e == "pid")) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let (namespace, amqp_url, redis_url) =
            (self.namespace.clone(), self.amqp_url.clone(), self.redis_url.clone());
        // A thread of its own: the test's runtime may be the one dropping us.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            runtime.unwrap().block_on(async {
                let deleting = async {
                    let connection =
                        lapin::Connection::connect(&amqp_url, Default::default()).await.ok()?;
                    let channel = connection.create_channel().await.ok()?;
                    let topology = Topology::new(&namespace, PARTITIONS, QueueLimits::default());
                    let _ = topology.delete(&channel).await;
                    Some(())
                };
                let _ = tokio::time::timeout(CLEANUP_WITHIN, deleting).await;
                let forgetting = async {
                    let client = redis::Client::open(redis_url.as_str()).ok()?;
                    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                    let _ = delete_namespace_keys(&mut conn, &namespace).await;
                    Some(())
                };
                let _ = tokio::time::timeout(CLEANUP_WITHIN, forgetting).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// Awaits `future` for at most [`TIMEOUT`].
pub async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    within_for(TIMEOUT, "a step", future).await
}

/// Awaits `future` for at most `limit`; the panic names `what` was not done.
pub async fn within_for<T>(
    limit: Duration,
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
