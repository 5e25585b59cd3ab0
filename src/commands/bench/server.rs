//! The process side of the bench: a `ferry serve` of its own in a temporary data directory,
//! the resident memory of a process, and the open-file limit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a spawned server may take to print its URL, and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A `ferry serve` started by the bench; killed on drop if still running.
pub struct SpawnedServer {
    child: Child,
    pub url: String,
    stderr_path: PathBuf,
    /// Removed (data and logs) when the server is dropped.
    _dir: tempfile::TempDir,
}

impl SpawnedServer {
    /// Starts `exe`'s (default: this executable's) `ferry serve` on a free loopback port in a
    /// new temporary data directory, with `sets` (`section.key=value`) as `--set` options.
    pub fn start(exe: Option<&Path>, sets: &[String]) -> anyhow::Result<SpawnedServer> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-bench-")
            .tempdir()
            .context("creating a temporary data directory")?;
        let exe = match exe {
            Some(exe) => exe.to_path_buf(),
            None => std::env::current_exe().context("finding the ferry executable")?,
        };
        let stderr_path = dir.path().join("serve.stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let logs = dir.path().join("logs");
        let mut command = Command::new(&exe);
        command.arg("--data").arg(dir.path().join("data"));
        command.arg("--set").arg(format!("logger.directory={:?}", logs.display().to_string()));
        for set in sets {
            command.arg("--set").arg(set);
        }
        command.args(["serve", "--listen", "127.0.0.1:0"]);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {} serve", exe.display()))?;
        let stdout = child.stdout.take().context("ferry serve's stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the first line (the URL), then keeps draining so that the server never blocks.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            lines.for_each(drop);
        });
        let mut server = SpawnedServer { child, url: String::new(), stderr_path, _dir: dir };
        let first = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            _ => bail!("ferry serve did not start: {}", server.stderr_tail()),
        };
        server.url = first
            .split_whitespace()
            .find(|w| w.starts_with("ws://"))
            .with_context(|| format!("no ws:// URL in ferry serve's first line {first:?}"))?
            .to_owned();
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the server with SIGTERM (drain, flush, fsync) and waits for it to exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) with a pid this process spawned and has not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("ferry serve exited with {status}: {}", self.stderr_tail());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("ferry serve did not stop within {STOP_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The resident set size of process `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
}

/// CPU time (user + system, all threads) the process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_cpu_ticks(&stat).with_context(|| format!("no utime/stime in {path}"))?;
    // SAFETY: sysconf reads a constant and touches no memory of ours.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(ticks as f64 / per_second as f64)
}

/// utime + stime, fields 14 and 15 of `/proc/PID/stat`, counted after the command name's
/// closing parenthesis (the name itself may hold spaces and parentheses).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Raises this process's soft open-file limit to its hard limit (children inherit it); the
/// new soft limit.
pub fn raise_open_file_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write and read the one struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit(RLIMIT_NOFILE): {}", std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (ferry (a) b) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 37 0 0 20 0 9";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
        assert_eq!(parse_cpu_ticks("4242 (ferry) S 1"), None);
    }

    #[test]
    fn vm_rss_is_read_from_the_status_text() {
        let status = "Name:\tferry\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
