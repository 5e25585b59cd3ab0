//! A distributed cluster for end-to-end tests: `ferry worker` and `ferry ingress` processes on
//! the machine's RabbitMQ and Redis, in a namespace of the test's own whose queues, exchanges
//! and keys are deleted (and whose processes are killed) on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ferry_cluster::topology::{QueueLimits, Topology};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// `ferry init`'s default.
pub const PARTITIONS: u32 = 16;

/// A namespace of our own on the shared brokers, removed on drop.
pub struct Cluster {
    pub dir: PathBuf,
    pub namespace: String,
    processes: Vec<Process>,
}

struct Process {
    name: String,
    child: Child,
    url: Option<String>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cluster {
    /// A data directory under `dir` (created with `ferry init`) and a fresh namespace.
    pub fn new(dir: &Path) -> Cluster {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let namespace = format!("t{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let cluster = Cluster { dir: dir.to_owned(), namespace, processes: Vec::new() };
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
            .env("FERRY_CLUSTER__BROKER_URL", AMQP_URL)
            .env("FERRY_CLUSTER__BUS_URL", REDIS_URL)
            .arg("--data")
            .arg(self.dir.join("data"))
            .arg("--set")
            .arg(format!("logger.directory={:?}", self.dir.join("logs").display().to_string()));
        command
    }

    /// Starts a process and waits for its first line on stdout; returns its index.
    pub fn spawn(&mut self, name: &str, args: &[&str]) -> usize {
        let mut child = self
            .ferry()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap_or_else(|| panic!("{name} printed nothing")).unwrap();
        let url = first.split_whitespace().find(|w| w.starts_with("ws://")).map(str::to_owned);
        std::thread::spawn(move || lines.for_each(drop));
        self.processes.push(Process { name: name.to_owned(), child, url });
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
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.processes.clear();
        // Processes that scripts/scale.sh started (a failed test never reached its `down`).
        for entry in std::fs::read_dir(self.dir.join("run")).into_iter().flatten().flatten() {
            let pid =
                std::fs::read_to_string(entry.path()).ok().and_then(|s| s.trim().parse().ok());
            if let (Some(pid), true) = (pid, entry.path().extension().is_some_and(|e| e == "pid")) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let namespace = self.namespace.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            runtime.unwrap().block_on(async {
                if let Ok(connection) =
                    lapin::Connection::connect(AMQP_URL, Default::default()).await
                {
                    if let Ok(channel) = connection.create_channel().await {
                        let topology =
                            Topology::new(&namespace, PARTITIONS, QueueLimits::default());
                        let _ = topology.delete(&channel).await;
                    }
                }
                if let Ok(client) = redis::Client::open(REDIS_URL) {
                    if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                        let keys: Vec<String> = redis::cmd("KEYS")
                            .arg(format!("{namespace}:*"))
                            .query_async(&mut conn)
                            .await
                            .unwrap_or_default();
                        if !keys.is_empty() {
                            let _: redis::RedisResult<()> =
                                redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                        }
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

pub async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, future).await.expect("timed out")
}
