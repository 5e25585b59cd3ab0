// Load client for the Socket.IO peer: one writer emitting `--rate` changes/s into the room
// (paced open-loop: change k is due at t0 + k/rate, latencies are measured from that due time),
// `--watchers` watchers spread over `--threads` worker threads, each checking that it receives
// every change once and in order. Reports delivered events/s and fan-out latency (due time ->
// received by a watcher), p50/p99/p99.9/max, like `ferry bench`. Exit 1 if any event was
// missing, duplicated or reordered, or a connection failed.
"use strict";
const { Worker, isMainThread, parentPort, workerData } = require("worker_threads");
const { performance } = require("perf_hooks");
const { io } = require("socket.io-client");
const hdr = require("hdr-histogram-js");

const now = () => performance.timeOrigin + performance.now(); // epoch ms, shared by threads
const histogram = () =>
  hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120e6, numberOfSignificantValueDigits: 3 });

function connect(url) {
  return new Promise((resolve, reject) => {
    const socket = io(url, { transports: ["websocket"], forceNew: true, reconnection: false, timeout: 30000 });
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (e) => reject(e));
  });
}

// Revisions (here: sequence numbers) of one watcher: missing, duplicates, reorders, as
// `ferry bench` counts them (src/commands/bench/verify.rs).
class Sequence {
  constructor() { this.next = 0; this.holes = []; this.received = 0; this.duplicates = 0; this.reorders = 0; }
  observe(seq) {
    this.received++;
    if (seq >= this.next) {
      if (seq > this.next) this.holes.push([this.next, seq]);
      this.next = seq + 1;
      return;
    }
    const i = this.holes.findIndex(([a, b]) => a <= seq && seq < b);
    if (i < 0) { this.duplicates++; return; }
    this.reorders++;
    const [a, b] = this.holes[i];
    this.holes.splice(i, 1);
    if (a < seq) this.holes.push([a, seq]);
    if (seq + 1 < b) this.holes.push([seq + 1, b]);
  }
  missing(last) { return this.holes.reduce((n, [a, b]) => n + b - a, 0) + Math.max(0, last + 1 - this.next); }
}

async function watcherThread() {
  const { url, count, warmupMs, durationMs } = workerData;
  let t0 = Infinity; // set by the "start" message, before the writer sends anything
  const latency = histogram();
  let failed = 0;
  let inWindow = 0;
  const sequences = [];
  const sockets = [];
  for (let i = 0; i < count; i += 50) {
    const batch = await Promise.allSettled(Array.from({ length: Math.min(50, count - i) }, () => connect(url)));
    for (const r of batch) {
      if (r.status !== "fulfilled") { failed++; continue; }
      const sequence = new Sequence();
      sequences.push(sequence);
      sockets.push(r.value);
      r.value.on("change", (m) => {
        const t = now();
        sequence.observe(m.seq);
        if (t >= t0 + warmupMs && t < t0 + warmupMs + durationMs) inWindow++;
        if (m.due >= warmupMs && m.due < warmupMs + durationMs) {
          latency.recordValue(Math.max(1, Math.round((t - t0 - m.due) * 1000)));
        }
      });
    }
  }
  parentPort.postMessage({ type: "ready", opened: sockets.length, failed });
  parentPort.on("message", (m) => {
    if (m.type === "start") t0 = m.t0;
    if (m.type === "finish") {
      const last = m.lastSeq;
      const deadline = now() + m.drainMs;
      const check = () => {
        const done = sequences.every((s) => s.next > last);
        if (!done && now() < deadline) return setTimeout(check, 5);
        const totals = { received: 0, missing: 0, duplicates: 0, reorders: 0 };
        for (const s of sequences) {
          totals.received += s.received; totals.missing += s.missing(last);
          totals.duplicates += s.duplicates; totals.reorders += s.reorders;
        }
        sockets.forEach((s) => s.close());
        parentPort.postMessage({ type: "done", totals, inWindow, latency: hdr.encodeIntoCompressedBase64(latency) });
      };
      check();
    }
  });
}

function parseArgs(argv) {
  const a = { url: "http://127.0.0.1:7800", watchers: 1000, rate: 1000, duration: 30, warmup: 5, size: 500, threads: 2, drain: 15, json: false };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, "");
    if (key === "json") { a.json = true; continue; }
    if (!(key in a)) throw new Error(`unknown option ${argv[i]}`);
    a[key] = key === "url" ? argv[++i] : Number(argv[++i]);
  }
  return a;
}

function latencyOf(h) {
  const ms = (us) => us / 1000;
  return { count: h.totalCount, p50_ms: ms(h.getValueAtPercentile(50)), p99_ms: ms(h.getValueAtPercentile(99)),
    p999_ms: ms(h.getValueAtPercentile(99.9)), max_ms: ms(h.maxValue) };
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const warmupMs = a.warmup * 1000, durationMs = a.duration * 1000;
  const threads = Math.max(1, Math.min(a.threads, a.watchers));
  // t0 is only known once everyone is connected; the watcher threads learn it by message.
  const workers = [];
  for (let t = 0; t < threads; t++) {
    const count = Math.floor(a.watchers / threads) + (t < a.watchers % threads ? 1 : 0);
    workers.push(new Worker(__filename, { workerData: { url: a.url, count, warmupMs, durationMs } }));
  }
  const ready = await Promise.all(workers.map((w) => new Promise((r) => w.once("message", r))));
  const writer = await connect(a.url);
  const opened = ready.reduce((n, r) => n + r.opened, 0) + 1;
  const failed = ready.reduce((n, r) => n + r.failed, 0);
  const t0 = now() + 50;
  workers.forEach((w) => w.postMessage({ type: "start", t0 }));
  const ack = histogram();
  const total = Math.floor(((warmupMs + durationMs) * a.rate) / 1000);
  const pad = "x".repeat(Math.max(0, a.size - 27));
  let k = 0, acked = 0;
  await new Promise((resolve) => {
    const tick = () => {
      const t = now();
      while (k < total && t0 + (k * 1000) / a.rate <= t) {
        const due = (k * 1000) / a.rate;
        const seq = k++;
        writer.emit("change", { seq, due, content: String(seq).padStart(12, "0") + "." + pad }, () => {
          acked++;
          if (due >= warmupMs && due < warmupMs + durationMs) ack.recordValue(Math.max(1, Math.round((now() - t0 - due) * 1000)));
        });
      }
      if (k >= total) return resolve();
      setTimeout(tick, Math.max(0, t0 + (k * 1000) / a.rate - now()));
    };
    tick();
  });
  const results = await Promise.all(workers.map((w) => new Promise((r) => {
    w.on("message", (m) => m.type === "done" && r(m));
    w.postMessage({ type: "finish", lastSeq: total - 1, drainMs: a.drain * 1000 });
  })));
  writer.close();
  await Promise.all(workers.map((w) => w.terminate()));
  const fanout = histogram();
  const totals = { received: 0, missing: 0, duplicates: 0, reorders: 0 };
  let inWindow = 0;
  for (const r of results) {
    fanout.add(hdr.decodeFromCompressedBase64(r.latency));
    for (const key of Object.keys(totals)) totals[key] += r.totals[key];
    inWindow += r.inWindow;
  }
  const report = {
    peer: "socket.io 4.8.4", watchers: a.watchers, rate: a.rate, size: a.size, warmup_secs: a.warmup, duration_secs: a.duration, threads,
    connections: { opened, failed }, changes_sent: total, changes_acked: acked,
    delivered_events_per_sec: inWindow / a.duration, ack_latency: latencyOf(ack), fanout_latency: latencyOf(fanout), watchers_check: totals,
  };
  report.verified = failed === 0 && totals.missing === 0 && totals.duplicates === 0 && totals.reorders === 0;
  if (a.json) console.log(JSON.stringify(report, null, 2));
  else {
    const f = report.fanout_latency;
    console.log(`socket.io: ${opened} connections (${failed} failed), ${total} changes at ${a.rate}/s to ${a.watchers} watchers`);
    console.log(`delivered ${report.delivered_events_per_sec.toFixed(0)} events/s; fan-out ms p50 ${f.p50_ms} p99 ${f.p99_ms} p99.9 ${f.p999_ms} max ${f.max_ms} (${f.count})`);
    console.log(`watchers: ${totals.received} received, ${totals.missing} missing, ${totals.duplicates} duplicates, ${totals.reorders} reordered: ${report.verified ? "PASSED" : "FAILED"}`);
  }
  process.exit(report.verified ? 0 : 1);
}

if (isMainThread) main().catch((e) => { console.error(e); process.exit(1); });
else watcherThread().catch((e) => { console.error(e); process.exit(1); });
