//! The writer thread: drains both streams' queues, batches records into per-stream buffers,
//! writes, fsyncs, rotates, and survives disk errors.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::mem;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use ferry_config::logger::{LogFormat, LoggerConfig, RotationPeriod};

use crate::background_sync::{BackgroundSync, SyncJob};
use crate::clock::Clock;
use crate::error::LoggerError;
use crate::housekeeping::{Housekeeper, Job};
use crate::record::{write_drop_notice, InstructionRecord};
use crate::rotation::{next_chunk, period_of, rotated_name, Chunk};
use crate::stats::{Counters, LogStats, StreamCounters, StreamKind};
use crate::storage::{LogFile, LogStorage};

/// Longest the writer sleeps with nothing to do: it then notes drops counted meanwhile.
const IDLE_TICK: Duration = Duration::from_secs(1);
const MIN_SYNC_WAIT: Duration = Duration::from_millis(1);
/// While records keep coming, the writer polls this often instead of being woken per record.
const ACTIVE_NAP: Duration = Duration::from_millis(1);

type Reply<T> = Sender<T>;

/// Requests to the writer, queued behind the instruction records sent before them.
pub(crate) enum Control {
    Rotate(Reply<Result<(), LoggerError>>),
    Reopen(Reply<Result<(), LoggerError>>),
    SetDirectory(PathBuf, Reply<Result<(), LoggerError>>),
    Flush(Reply<FlushReport>),
    Shutdown(Reply<FlushReport>),
}

pub(crate) enum InstructionMsg {
    Record(InstructionRecord),
    Control(Control),
}

/// What a flush or shutdown achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushReport {
    pub stats: LogStats,
    /// Bytes accepted but not yet on disk because writing is failing (after a shutdown: lost).
    pub unwritten_bytes: u64,
    /// The current disk error of each failing stream, as also printed on stderr.
    pub errors: Vec<String>,
}

struct ActiveFile {
    file: Box<dyn LogFile>,
    len: u64,
    period: Option<u64>,
    unsynced: bool,
}

struct Failure {
    retry_at: Instant,
    error: String,
}

struct Stream {
    kind: StreamKind,
    file_name: String,
    active: Option<ActiveFile>,
    pending: Vec<u8>,
    pending_records: u64,
    failure: Option<Failure>,
    queue_drops_noted: u64,
    disk_drops_unnoted: u64,
}

pub(crate) struct Writer {
    node: String,
    dir: PathBuf,
    format: LogFormat,
    batch_records: usize,
    batch_interval: Duration,
    buffer_bytes: usize,
    sync_interval: Duration,
    retry_interval: Duration,
    error_buffer_bytes: usize,
    max_bytes: u64,
    every: RotationPeriod,
    clock: Arc<dyn Clock>,
    storage: Arc<dyn LogStorage>,
    counters: Arc<Counters>,
    housekeeper: Housekeeper,
    syncer: BackgroundSync,
    diagnostics: Stream,
    instructions: Stream,
    batch_len: usize,
    batch_started: Option<Instant>,
    last_sync: Instant,
}

/// What the writer saw on its last pass over the queues.
#[derive(Clone, Copy)]
enum Activity {
    /// A full batch was taken and more is queued: go on at once.
    Backlog,
    /// The queues were emptied after taking something: more is likely soon.
    Active,
    /// Nothing came: wait on the queues.
    Idle,
}

enum Incoming {
    Instruction(InstructionMsg),
    Diagnostic(Vec<u8>),
}

impl Stream {
    fn new(kind: StreamKind, file_name: &str, capacity: usize) -> Self {
        Stream {
            kind,
            file_name: file_name.to_owned(),
            active: None,
            pending: Vec::with_capacity(capacity),
            pending_records: 0,
            failure: None,
            queue_drops_noted: 0,
            disk_drops_unnoted: 0,
        }
    }
}

impl Writer {
    pub(crate) fn new(
        config: &LoggerConfig,
        node: &str,
        clock: Arc<dyn Clock>,
        storage: Arc<dyn LogStorage>,
        counters: Arc<Counters>,
        housekeeper: Housekeeper,
        syncer: BackgroundSync,
    ) -> Self {
        let capacity = config.buffer_bytes + config.buffer_bytes / 4;
        Writer {
            node: node.to_owned(),
            dir: config.directory.clone(),
            format: config.diagnostics.format,
            batch_records: config.batch_records,
            batch_interval: Duration::from_millis(config.batch_interval_ms),
            buffer_bytes: config.buffer_bytes,
            sync_interval: Duration::from_millis(config.sync_interval_ms),
            retry_interval: Duration::from_millis(config.retry_interval_ms),
            error_buffer_bytes: config.error_buffer_bytes,
            max_bytes: config.rotation.max_bytes,
            every: config.rotation.every,
            clock,
            storage,
            counters,
            housekeeper,
            syncer,
            diagnostics: Stream::new(
                StreamKind::Diagnostics,
                &config.diagnostics.file_name,
                capacity,
            ),
            instructions: Stream::new(
                StreamKind::Instructions,
                &config.instructions.file_name,
                capacity,
            ),
            batch_len: 0,
            batch_started: None,
            last_sync: Instant::now(),
        }
    }

    /// The thread's body: returns after a shutdown request (or once every sender is gone).
    pub(crate) fn run(
        mut self,
        instructions: Receiver<InstructionMsg>,
        diagnostics: Receiver<Vec<u8>>,
    ) {
        let never = crossbeam_channel::never();
        let mut diagnostics_open = true;
        let mut state = Activity::Idle;
        loop {
            let deadline = self.next_deadline();
            let mut next = match state {
                Activity::Backlog => None,
                // Busy lately: nap instead of waiting on the queues, so that the senders do not
                // pay for waking this thread on every record (a futex wake, and often their
                // own preemption on a small machine).
                Activity::Active => {
                    let until = deadline.min(Instant::now() + ACTIVE_NAP);
                    thread::sleep(until.saturating_duration_since(Instant::now()));
                    None
                }
                Activity::Idle => {
                    let timeout = deadline.saturating_duration_since(Instant::now());
                    let diag_rx = if diagnostics_open { &diagnostics } else { &never };
                    crossbeam_channel::select! {
                        recv(instructions) -> msg => match msg {
                            Ok(msg) => Some(Incoming::Instruction(msg)),
                            Err(_) => return self.finish(&instructions, &diagnostics, None),
                        },
                        recv(diag_rx) -> msg => match msg {
                            Ok(line) => Some(Incoming::Diagnostic(line)),
                            Err(_) => {
                                diagnostics_open = false;
                                None
                            }
                        },
                        default(timeout) => None,
                    }
                }
            };
            let mut handled = 0usize;
            let mut queue_empty = false;
            // Take what is already queued, up to one batch, before deciding to write.
            loop {
                if let Some(item) = next.take() {
                    handled += 1;
                    if let Some(reply) = self.handle(item, &diagnostics) {
                        return self.finish(&instructions, &diagnostics, Some(reply));
                    }
                }
                if self.batch_len >= self.batch_records {
                    break;
                }
                next = match instructions.try_recv() {
                    Ok(msg) => Some(Incoming::Instruction(msg)),
                    Err(_) => match diagnostics.try_recv() {
                        Ok(line) => Some(Incoming::Diagnostic(line)),
                        Err(_) => {
                            queue_empty = true;
                            break;
                        }
                    },
                };
            }
            state = match (queue_empty, handled) {
                (false, _) => Activity::Backlog,
                (true, 0) => Activity::Idle,
                (true, _) => Activity::Active,
            };
            let now = Instant::now();
            let batch_due = self.batch_len >= self.batch_records
                || (queue_empty && self.batch_interval.is_zero())
                || self.batch_started.is_some_and(|t| now >= t + self.batch_interval);
            if batch_due || self.retry_due(now) {
                self.write_batch(false);
            }
            if self.batch_len == 0 {
                self.note_queue_drops_if_any();
            }
            self.sync_if_due(false);
        }
    }

    /// Takes one message; a shutdown request is handed back to the loop.
    fn handle(
        &mut self,
        item: Incoming,
        diagnostics: &Receiver<Vec<u8>>,
    ) -> Option<Reply<FlushReport>> {
        match item {
            Incoming::Diagnostic(line) => self.accept_diagnostic(line),
            Incoming::Instruction(InstructionMsg::Record(r)) => self.accept_record(&r),
            Incoming::Instruction(InstructionMsg::Control(Control::Shutdown(reply))) => {
                return Some(reply)
            }
            Incoming::Instruction(InstructionMsg::Control(c)) => self.control(c, diagnostics),
        }
        None
    }

    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut deadline = now + IDLE_TICK;
        if let Some(started) = self.batch_started {
            deadline = deadline.min(started + self.batch_interval);
        }
        if self.has_unsynced() {
            // At least 1 ms: a busy fsync thread must not turn this loop into a spin.
            deadline = deadline.min(self.last_sync + self.sync_interval.max(MIN_SYNC_WAIT));
        }
        for stream in [&self.diagnostics, &self.instructions] {
            if let Some(f) = stream.failure.as_ref().filter(|_| !stream.pending.is_empty()) {
                deadline = deadline.min(f.retry_at);
            }
        }
        deadline
    }

    /// A failing stream with records waiting whose retry time has come.
    fn retry_due(&self, now: Instant) -> bool {
        [&self.diagnostics, &self.instructions]
            .iter()
            .any(|s| !s.pending.is_empty() && s.failure.as_ref().is_some_and(|f| now >= f.retry_at))
    }

    fn has_unsynced(&self) -> bool {
        [&self.diagnostics, &self.instructions]
            .iter()
            .any(|s| s.active.as_ref().is_some_and(|a| a.unsynced))
    }

    fn accept_record(&mut self, record: &InstructionRecord) {
        if self.refuse_for_disk_error(StreamKind::Instructions) {
            return;
        }
        record.write_json_line(&self.node, &mut self.instructions.pending);
        self.instructions.pending_records += 1;
        self.after_accept(StreamKind::Instructions);
    }

    fn accept_diagnostic(&mut self, line: Vec<u8>) {
        if self.refuse_for_disk_error(StreamKind::Diagnostics) {
            return;
        }
        let pending = &mut self.diagnostics.pending;
        pending.extend_from_slice(&line);
        if pending.last() != Some(&b'\n') {
            pending.push(b'\n');
        }
        self.diagnostics.pending_records += 1;
        self.after_accept(StreamKind::Diagnostics);
    }

    /// While a stream's disk fails, its memory is bounded: past the limit, records are counted
    /// and dropped, and the count is written once the disk is back.
    fn refuse_for_disk_error(&mut self, kind: StreamKind) -> bool {
        let limit = self.error_buffer_bytes;
        let (stream, counters) = self.stream_mut(kind);
        if stream.failure.is_some() && stream.pending.len() >= limit {
            stream.disk_drops_unnoted += 1;
            counters.dropped_disk_error.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    fn after_accept(&mut self, kind: StreamKind) {
        self.batch_len += 1;
        self.batch_started.get_or_insert_with(Instant::now);
        if self.stream(kind).pending.len() >= self.buffer_bytes {
            self.write_stream(kind, false);
        }
    }

    fn stream(&self, kind: StreamKind) -> &Stream {
        match kind {
            StreamKind::Diagnostics => &self.diagnostics,
            StreamKind::Instructions => &self.instructions,
        }
    }

    fn stream_mut(&mut self, kind: StreamKind) -> (&mut Stream, &StreamCounters) {
        match kind {
            StreamKind::Diagnostics => (&mut self.diagnostics, self.counters.stream(kind)),
            StreamKind::Instructions => (&mut self.instructions, self.counters.stream(kind)),
        }
    }

    fn write_batch(&mut self, force: bool) {
        self.write_stream(StreamKind::Instructions, force);
        self.write_stream(StreamKind::Diagnostics, force);
        self.batch_len = 0;
        self.batch_started = None;
    }

    fn note_queue_drops_if_any(&mut self) {
        for kind in [StreamKind::Instructions, StreamKind::Diagnostics] {
            let (stream, counters) = self.stream_mut(kind);
            if counters.dropped_queue_full.load(Ordering::Relaxed) > stream.queue_drops_noted {
                self.write_stream(kind, false);
            }
        }
    }

    /// Appends a notice for records dropped since the last one; the notice goes into the log
    /// before any record accepted after the drops were counted.
    fn note_drops(&mut self, kind: StreamKind) {
        let now = self.clock.now();
        let format = self.format;
        let node = mem::take(&mut self.node);
        let (stream, counters) = self.stream_mut(kind);
        let full = counters.dropped_queue_full.load(Ordering::Relaxed);
        if full > stream.queue_drops_noted {
            let count = full - stream.queue_drops_noted;
            stream.queue_drops_noted = full;
            notice(kind, format, now, &node, count, "queue_full", &mut stream.pending);
        }
        if stream.failure.is_none() && stream.disk_drops_unnoted > 0 {
            let count = mem::take(&mut stream.disk_drops_unnoted);
            notice(kind, format, now, &node, count, "disk_error", &mut stream.pending);
        }
        self.node = node;
    }

    /// Writes the stream's pending bytes, rotating as needed. Without `force`, a failing
    /// stream is only retried once its retry time has come.
    fn write_stream(&mut self, kind: StreamKind, force: bool) {
        self.note_drops(kind);
        let now = Instant::now();
        {
            let stream = self.stream(kind);
            if stream.pending.is_empty() {
                return;
            }
            if !force && stream.failure.as_ref().is_some_and(|f| now < f.retry_at) {
                return;
            }
        }
        let period = period_of(self.every, self.clock.now());
        self.reopen_if_moved(kind);
        loop {
            if let Err(e) = self.ensure_open(kind) {
                return self.fail(kind, &e);
            }
            let max_bytes = self.max_bytes;
            let (stream, counters) = self.stream_mut(kind);
            let active = stream.active.as_mut().expect("opened above");
            if active.len > 0 && period.is_some() && active.period != period {
                if let Err(e) = self.rotate(kind) {
                    return self.fail(kind, &e);
                }
                continue;
            }
            active.period = period.or(active.period);
            let n = match next_chunk(&stream.pending, active.len, max_bytes) {
                Chunk::Write(n) => n,
                Chunk::RotateFirst => {
                    if let Err(e) = self.rotate(kind) {
                        return self.fail(kind, &e);
                    }
                    continue;
                }
            };
            let (written, result) = write_fully(active.file.as_mut(), &stream.pending[..n]);
            active.len += written as u64;
            active.unsynced |= written > 0;
            stream.pending.drain(..written);
            counters.bytes_written.fetch_add(written as u64, Ordering::Relaxed);
            if let Err(e) = result {
                let path = self.dir.join(&self.stream(kind).file_name);
                return self.fail(kind, &LoggerError::File { action: "write", path, source: e });
            }
            if stream.pending.is_empty() {
                counters
                    .written
                    .fetch_add(mem::take(&mut stream.pending_records), Ordering::Relaxed);
                if let Some(failure) = stream.failure.take() {
                    let path = self.dir.join(&self.stream(kind).file_name);
                    eprintln!(
                        "ferry-logger: writing {} again after: {}",
                        path.display(),
                        failure.error
                    );
                    self.note_drops(kind);
                    if !self.stream(kind).pending.is_empty() {
                        continue;
                    }
                }
                if self.sync_interval.is_zero() {
                    self.sync_stream(kind);
                }
                return;
            }
        }
    }

    /// Once per batch: if the active file was renamed away or its directory removed, writing
    /// more into it would lose the records from view, so the path is reopened instead.
    fn reopen_if_moved(&mut self, kind: StreamKind) {
        let path = self.dir.join(&self.stream(kind).file_name);
        let moved = self
            .stream(kind)
            .active
            .as_ref()
            .is_some_and(|a| matches!(a.file.is_at(&path), Ok(false)));
        if moved {
            self.close(kind);
        }
    }

    fn ensure_open(&mut self, kind: StreamKind) -> Result<(), LoggerError> {
        if self.stream(kind).active.is_some() {
            return Ok(());
        }
        let path = self.dir.join(&self.stream(kind).file_name);
        let opened = self.storage.open_append(&path).map_err(|source| LoggerError::File {
            action: "open",
            path,
            source,
        })?;
        let placed_at = if opened.len > 0 {
            opened.modified.unwrap_or_else(|| self.clock.now())
        } else {
            self.clock.now()
        };
        let period = period_of(self.every, placed_at);
        let (stream, _) = self.stream_mut(kind);
        stream.active =
            Some(ActiveFile { file: opened.file, len: opened.len, period, unsynced: false });
        Ok(())
    }

    /// Closes the active file (after an fsync) and renames it to its rotated name; the next
    /// write opens a fresh file. Compression and retention happen on the housekeeping thread.
    fn rotate(&mut self, kind: StreamKind) -> Result<(), LoggerError> {
        self.close(kind);
        let now = self.clock.now();
        let file_name = self.stream(kind).file_name.clone();
        let active_path = self.dir.join(&file_name);
        let rotated = (0u32..)
            .map(|seq| self.dir.join(rotated_name(&file_name, now, seq)))
            .find(|p| !p.exists() && !gz_twin(p).exists())
            .expect("some sequence number is free");
        match fs::rename(&active_path, &rotated) {
            Ok(()) => {}
            // Renamed away already (e.g. by logrotate): nothing left to rotate.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(LoggerError::File { action: "rotate", path: active_path, source })
            }
        }
        self.stream_mut(kind).1.rotations.fetch_add(1, Ordering::Relaxed);
        let job = Job::Rotated { dir: self.dir.clone(), file_name, rotated };
        if let Err(Job::Rotated { rotated, .. }) = self.housekeeper.submit(job) {
            eprintln!(
                "ferry-logger: housekeeping queue full; {} stays uncompressed",
                rotated.display()
            );
        }
        Ok(())
    }

    fn close(&mut self, kind: StreamKind) {
        self.sync_stream(kind);
        self.stream_mut(kind).0.active = None;
    }

    fn sync_stream(&mut self, kind: StreamKind) {
        let path = self.dir.join(&self.stream(kind).file_name);
        let (stream, _) = self.stream_mut(kind);
        let Some(active) = stream.active.as_mut().filter(|a| a.unsynced) else { return };
        match active.file.sync() {
            Ok(()) => active.unsynced = false,
            Err(source) => self.fail(kind, &LoggerError::File { action: "fsync", path, source }),
        }
    }

    /// With `force` (flush, shutdown), fsyncs here; otherwise, when the interval is up, hands
    /// the fsyncs to the background thread.
    fn sync_if_due(&mut self, force: bool) {
        if force {
            self.sync_stream(StreamKind::Instructions);
            self.sync_stream(StreamKind::Diagnostics);
            self.last_sync = Instant::now();
        } else if Instant::now() >= self.last_sync + self.sync_interval {
            self.sync_in_background(StreamKind::Instructions);
            self.sync_in_background(StreamKind::Diagnostics);
            self.last_sync = Instant::now();
        }
    }

    fn sync_in_background(&mut self, kind: StreamKind) {
        let path = self.dir.join(&self.stream(kind).file_name);
        let stream = match kind {
            StreamKind::Diagnostics => &mut self.diagnostics,
            StreamKind::Instructions => &mut self.instructions,
        };
        let Some(active) = stream.active.as_mut().filter(|a| a.unsynced) else { return };
        let Ok(file) = active.file.try_clone() else { return self.sync_stream(kind) };
        if self.syncer.submit(SyncJob { kind, path, file }) {
            active.unsynced = false;
        }
    }

    /// Reports a disk error once per distinct message, counts it, drops the file handle (the
    /// retry reopens the path, which also recovers from a removed directory) and schedules a
    /// retry. The pending bytes stay in memory.
    fn fail(&mut self, kind: StreamKind, error: &LoggerError) {
        let retry_at = Instant::now() + self.retry_interval;
        let retry_ms = self.retry_interval.as_millis();
        let (stream, counters) = self.stream_mut(kind);
        counters.write_errors.fetch_add(1, Ordering::Relaxed);
        let message = error.to_string();
        if stream.failure.as_ref().is_none_or(|f| f.error != message) {
            eprintln!(
                "ferry-logger: {message}; keeping {} bytes of {:?} records in memory, retrying every {retry_ms} ms",
                stream.pending.len(),
                stream.kind
            );
        }
        stream.active = None;
        stream.failure = Some(Failure { retry_at, error: message });
    }

    fn control(&mut self, control: Control, diagnostics: &Receiver<Vec<u8>>) {
        match control {
            Control::Flush(reply) => {
                let mut report = self.flush(diagnostics);
                let counters = self.counters.clone();
                let after = reply.clone();
                // The counters are read again once earlier gzip and retention work is done.
                let job = Job::After(Box::new(move || {
                    report.stats = counters.snapshot();
                    let _ = after.send(report);
                }));
                if let Err(Job::After(send)) = self.housekeeper.submit(job) {
                    send();
                }
            }
            Control::Rotate(reply) => {
                self.write_batch(true);
                let mut result = Ok(());
                for kind in [StreamKind::Instructions, StreamKind::Diagnostics] {
                    if self.stream(kind).active.is_none()
                        && self.dir.join(&self.stream(kind).file_name).exists()
                    {
                        // A closed but non-empty file still gets rotated.
                        let _ = self.ensure_open(kind);
                    }
                    let has_data = self.stream(kind).active.as_ref().is_some_and(|a| a.len > 0);
                    if has_data {
                        if let Err(e) = self.rotate(kind) {
                            result = Err(e);
                        }
                    }
                }
                let _ = reply.send(result);
            }
            Control::Reopen(reply) => {
                self.write_batch(true);
                let _ = reply.send(self.reopen_all());
            }
            Control::SetDirectory(dir, reply) => {
                self.write_batch(true);
                self.close(StreamKind::Instructions);
                self.close(StreamKind::Diagnostics);
                let result = fs::create_dir_all(&dir)
                    .map_err(|source| LoggerError::Directory { path: dir.clone(), source });
                if result.is_ok() {
                    self.dir = dir;
                }
                let _ = reply.send(result.and_then(|()| self.reopen_all()));
            }
            Control::Shutdown(_) => unreachable!("handled by the loop"),
        }
    }

    fn reopen_all(&mut self) -> Result<(), LoggerError> {
        let mut result = Ok(());
        for kind in [StreamKind::Instructions, StreamKind::Diagnostics] {
            self.close(kind);
            if let Err(e) = self.ensure_open(kind) {
                self.fail(kind, &e);
                result = Err(e);
            }
        }
        result
    }

    /// Writes everything queued so far on both streams and fsyncs.
    fn flush(&mut self, diagnostics: &Receiver<Vec<u8>>) -> FlushReport {
        while let Ok(line) = diagnostics.try_recv() {
            self.accept_diagnostic(line);
        }
        self.write_batch(true);
        self.sync_if_due(true);
        self.report()
    }

    fn report(&self) -> FlushReport {
        let streams = [&self.diagnostics, &self.instructions];
        FlushReport {
            stats: self.counters.snapshot(),
            unwritten_bytes: streams.iter().map(|s| s.pending.len() as u64).sum(),
            errors: streams
                .iter()
                .filter_map(|s| s.failure.as_ref().map(|f| f.error.clone()))
                .collect(),
        }
    }

    /// Drains both queues, writes, fsyncs, waits for housekeeping, then answers.
    fn finish(
        mut self,
        instructions: &Receiver<InstructionMsg>,
        diagnostics: &Receiver<Vec<u8>>,
        reply: Option<Reply<FlushReport>>,
    ) {
        let mut replies: Vec<Reply<FlushReport>> = reply.into_iter().collect();
        loop {
            match instructions.try_recv() {
                Ok(InstructionMsg::Record(r)) => self.accept_record(&r),
                Ok(InstructionMsg::Control(Control::Shutdown(r))) => replies.push(r),
                Ok(InstructionMsg::Control(c)) => self.control(c, diagnostics),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let mut report = self.flush(diagnostics);
        if report.unwritten_bytes > 0 {
            eprintln!(
                "ferry-logger: shutting down with {} bytes unwritten: {}",
                report.unwritten_bytes,
                report.errors.join("; ")
            );
        }
        self.close(StreamKind::Instructions);
        self.close(StreamKind::Diagnostics);
        let Writer { housekeeper, syncer, counters, .. } = self;
        syncer.stop();
        housekeeper.stop();
        report.stats = counters.snapshot();
        for reply in replies {
            let _ = reply.send(report.clone());
        }
    }
}

fn gz_twin(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".gz");
    PathBuf::from(name)
}

/// Writes all of `buf` unless an error comes first; says how much went out either way.
fn write_fully(file: &mut dyn LogFile, buf: &[u8]) -> (usize, io::Result<()>) {
    let mut done = 0;
    while done < buf.len() {
        match file.write(&buf[done..]) {
            Ok(0) => return (done, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Err(e)),
        }
    }
    (done, Ok(()))
}

/// The "N records dropped" line in the stream's own format.
fn notice(
    kind: StreamKind,
    format: LogFormat,
    time: SystemTime,
    node: &str,
    count: u64,
    reason: &str,
    out: &mut Vec<u8>,
) {
    match (kind, format) {
        (StreamKind::Instructions, _) => write_drop_notice(time, node, count, reason, out),
        (StreamKind::Diagnostics, LogFormat::Json) => {
            let line = serde_json::json!({
                "timestamp": humantime::format_rfc3339_micros(time).to_string(),
                "level": "WARN",
                "fields": { "message": format!("{count} records dropped ({reason})"), "count": count, "reason": reason },
                "target": "ferry_logger",
            });
            out.extend_from_slice(line.to_string().as_bytes());
            out.push(b'\n');
        }
        (StreamKind::Diagnostics, LogFormat::Text) => {
            let mut line = String::new();
            let _ = writeln!(
                line,
                "{}  WARN ferry_logger: {count} records dropped ({reason})",
                humantime::format_rfc3339_micros(time)
            );
            out.extend_from_slice(line.as_bytes());
        }
    }
}
