//! Helpers shared by the logger's integration tests.
#![allow(dead_code)]

use std::borrow::Cow;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender};
use ferry_logger::{
    FsStorage, InstructionRecord, LogFile, LogStorage, LoggerConfig, OpenedLog, Outcome,
};
use flate2::read::GzDecoder;
use serde_json::Value;

/// A configuration writing into `dir` with gzip off and the defaults otherwise.
pub fn config(dir: &Path) -> LoggerConfig {
    let mut config = LoggerConfig { directory: dir.to_owned(), ..LoggerConfig::default() };
    config.rotation.gzip = false;
    config
}

/// A record of about 200 bytes as JSON, identified by (`client`, `seq`).
pub fn record(client: usize, seq: u64) -> InstructionRecord {
    InstructionRecord {
        time: SystemTime::now(),
        client_id: Arc::from(format!("client-{client}")),
        instruction_id: seq,
        op: Cow::Borrowed("append"),
        path: Arc::from(format!("/home/user-{client}/projects/ferry/notes/{seq:08}.txt")),
        revision: Some(seq + 1),
        outcome: Outcome::Ok,
        latency_us: 42,
    }
}

/// Files of `file_name` in `dir`, rotated ones oldest first, then the active one.
pub fn stream_files(dir: &Path, file_name: &str) -> Vec<PathBuf> {
    let mut rotated: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(&format!("{file_name}.")))
        .collect();
    rotated.sort_by(|a, b| a.trim_end_matches(".gz").cmp(b.trim_end_matches(".gz")));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|n| dir.join(n)).collect();
    let active = dir.join(file_name);
    if active.exists() {
        files.push(active);
    }
    files
}

/// The text of a log file, gunzipped if it ends in `.gz`.
pub fn read_text(path: &Path) -> String {
    let bytes = fs::read(path).unwrap();
    if path.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        GzDecoder::new(&bytes[..]).read_to_string(&mut text).unwrap();
        text
    } else {
        String::from_utf8(bytes).unwrap()
    }
}

/// Every JSON line of the instruction log, across rotated and active files, in order.
pub fn instruction_lines(dir: &Path, file_name: &str) -> Vec<Value> {
    stream_files(dir, file_name).iter().flat_map(|p| lines_of(p)).collect()
}

pub fn lines_of(path: &Path) -> Vec<Value> {
    read_text(path).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// (client, seq) of the instruction records among `lines`, skipping notices.
pub fn ids(lines: &[Value]) -> Vec<(String, u64)> {
    lines
        .iter()
        .filter(|v| v.get("event").is_none())
        .map(|v| {
            (v["client_id"].as_str().unwrap().to_owned(), v["instruction_id"].as_u64().unwrap())
        })
        .collect()
}

/// The sum of the counts in the drop notices among `lines` with `reason`.
pub fn noted_drops(lines: &[Value], reason: &str) -> u64 {
    lines
        .iter()
        .filter(|v| v["event"] == "records_dropped" && v["reason"] == reason)
        .map(|v| v["count"].as_u64().unwrap())
        .sum()
}

pub fn at(rfc3339: &str) -> SystemTime {
    humantime::parse_rfc3339(rfc3339).unwrap()
}

/// Storage over the real file system with switchable faults: failing opens and writes (as a
/// full disk would), and a gate that holds the writer inside its next write.
#[derive(Default)]
pub struct FaultyStorage {
    pub failing: AtomicBool,
    /// Whether the last thing done to any file was an fsync (not a write).
    pub synced_last: AtomicBool,
    gate: Mutex<Option<Gate>>,
}

struct Gate {
    entered: Sender<()>,
    release: Receiver<()>,
}

impl FaultyStorage {
    /// Makes the next write block; the returned receiver fires when the writer is inside it,
    /// and the write proceeds once the returned sender is dropped.
    pub fn arm_gate(&self) -> (Receiver<()>, Sender<()>) {
        let (entered_tx, entered_rx) = crossbeam_channel::bounded(1);
        let (release_tx, release_rx) = crossbeam_channel::bounded(0);
        *self.gate.lock().unwrap() = Some(Gate { entered: entered_tx, release: release_rx });
        (entered_rx, release_tx)
    }
}

pub struct FaultyFile {
    inner: Box<dyn LogFile>,
    storage: Arc<FaultyStorage>,
}

fn disk_full() -> io::Error {
    io::Error::from_raw_os_error(28)
}

/// Wraps `storage` so that it can be shared with the logger and kept by the test.
pub struct SharedFaultyStorage(pub Arc<FaultyStorage>);

impl LogStorage for SharedFaultyStorage {
    fn open_append(&self, path: &Path) -> io::Result<OpenedLog> {
        if self.0.failing.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
        let opened = FsStorage.open_append(path)?;
        Ok(OpenedLog {
            file: Box::new(FaultyFile { inner: opened.file, storage: self.0.clone() }),
            ..opened
        })
    }
}

impl LogFile for FaultyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let gate = self.storage.gate.lock().unwrap().take();
        if let Some(gate) = gate {
            gate.entered.send(()).unwrap();
            let _ = gate.release.recv();
        }
        if self.storage.failing.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
        self.storage.synced_last.store(false, Ordering::SeqCst);
        self.inner.write(buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()?;
        self.storage.synced_last.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn is_at(&self, path: &Path) -> io::Result<bool> {
        self.inner.is_at(path)
    }

    fn try_clone(&self) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(FaultyFile { inner: self.inner.try_clone()?, storage: self.storage.clone() }))
    }
}
