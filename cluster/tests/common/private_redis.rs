//! A private `redis-server` for tests that kill and restart Redis: its own loopback port and
//! directory, no persistence (a restart starts empty), killed when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts a server on a free port and waits until it answers.
    pub fn start() -> PrivateRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("finding a free loopback port")
            .port();
        let dir = tempfile::tempdir().expect("creating the private redis directory");
        let mut redis = PrivateRedis { port, dir, child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (SIGKILL): clients see their connections break.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("killing the private redis");
            child.wait().expect("reaping the private redis");
        }
    }

    /// Starts the server (again) on the same port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answered = redis::Client::open(self.url())
                .and_then(|client| client.get_connection())
                .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con));
            match answered {
                Ok(_) => return,
                Err(err) if Instant::now() > deadline => {
                    panic!("the private redis on port {} did not answer: {err}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
