//! `ferry bench --spawn` end to end: a short verified run whose counts add up, a closed loop,
//! a missed goal, and a run that must fail. (The verifier's logic is unit-tested in
//! `src/commands/bench/verify.rs`: gaps, duplicates, reorders, lost writes.)

use std::process::{Command, Output};

use serde_json::Value;

fn bench(args: &[&str]) -> (Output, Value) {
    let tmp = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .current_dir(tmp.path())
        .env_remove("FERRY_CONFIG")
        .env_remove("FERRY_URL")
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_AUTH__SECRET")
        .args(["bench", "--spawn", "--json", "--drain-timeout", "10s"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("{e}: stdout {stdout}, stderr {}", String::from_utf8_lossy(&output.stderr))
    });
    (output, report)
}

fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn a_short_run_is_verified_and_its_counts_add_up() {
    let (output, report) = bench(&[
        "--connections",
        "6",
        "--rate",
        "150",
        "--watchers-per-file",
        "2",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
    ]);
    assert!(output.status.success(), "{report:#}");
    assert_eq!(report["verified"], true);
    let run = &report["runs"][0];
    assert_eq!(run["failures"], serde_json::json!([]));
    let connections = &run["connections"];
    assert_eq!((count(&connections["opened"]), count(&connections["failed"])), (6, 0));
    // 2.5 s at 150/s: every due write sent, every one acknowledged.
    let sent = count(&run["writes_sent"]);
    assert!((370..=380).contains(&sent), "{sent} writes sent");
    let errors: u64 = run["errors"].as_object().unwrap().values().map(count).sum();
    assert_eq!(count(&run["writes_acked"]) + errors + count(&run["writes_unanswered"]), sent);
    assert_eq!(count(&run["store"]["acked"]), count(&run["writes_acked"]));
    // Each applied write reached its two watchers, once each.
    let watchers = &run["watchers"];
    assert_eq!(count(&watchers["received"]), 2 * count(&run["writes_acked"]));
    assert_eq!(count(&run["events_received"]), count(&watchers["received"]));
    for failure in ["missing", "duplicates", "reorders", "unexpected"] {
        assert_eq!(count(&watchers[failure]), 0, "{failure}");
    }
    // Latencies only from the measured window (2 s of the 2.5 s).
    let acks = count(&run["ack_latency"]["count"]);
    assert!((290..=310).contains(&acks), "{acks} ack latencies");
    assert!(run["ack_latency"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(count(&run["fanout_latency"]["count"]), 2 * acks);
    assert!(run["achieved_rate"].as_f64().unwrap() > 0.0, "{run:#}");
    assert!(count(&report["server_rss_kib_before"]) > 0);
}

#[test]
fn a_closed_loop_keeps_its_writes_in_flight_and_stops_at_the_end() {
    let (output, report) = bench(&[
        "--connections",
        "4",
        "--closed-loop",
        "--max-in-flight",
        "2",
        "--duration",
        "1s",
        "--warmup",
        "300ms",
    ]);
    assert!(output.status.success(), "{report:#}");
    assert_eq!(report["verified"], true);
    let run = &report["runs"][0];
    assert_eq!(run["closed_loop_in_flight"], 2);
    assert_eq!(run["target_rate"], 0.0);
    // No schedule: nothing is ever due and unsent, and every write sent is answered.
    assert_eq!(count(&run["writes_not_sent"]), 0);
    assert_eq!(count(&run["writes_unanswered"]), 0);
    let sent = count(&run["writes_sent"]);
    assert_eq!(count(&run["writes_acked"]), sent);
    assert_eq!(count(&run["store"]["acked"]), sent);
    // Unpaced, 8 writes in flight make far more than one round trip per connection and
    // second; the latencies are measured from sending, so they stay far below the run.
    assert!(run["achieved_rate"].as_f64().unwrap() > 100.0, "{run:#}");
    let acks = count(&run["ack_latency"]["count"]);
    assert!(acks > 0 && acks < sent, "{acks} of {sent}");
    assert!(run["ack_latency"]["max_ms"].as_f64().unwrap() < 1000.0, "{run:#}");
}

#[test]
fn appends_are_read_back_at_their_revisions_and_a_missed_goal_exits_2() {
    let (output, report) = bench(&[
        "--connections",
        "3",
        "--files",
        "6",
        "--rate",
        "120",
        "--op",
        "append",
        "--size",
        "64",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--goal-ack-p99-ms",
        "0.001",
    ]);
    assert_eq!(output.status.code(), Some(2), "{report:#}");
    assert_eq!(report["verified"], true);
    let run = &report["runs"][0];
    assert!(count(&run["store"]["acked"]) >= 115, "{run:#}");
    assert_eq!(count(&run["store"]["lost"]), 0);
    let goal = report["goals"].as_array().unwrap().iter().find(|g| g["name"] == "ack p99").unwrap();
    assert_eq!(goal["met"], false);
}

#[test]
fn refused_connections_fail_the_run_and_say_why() {
    // The server takes 3 connections: the read-back one and 2 of the 5 asked for.
    let (output, report) = bench(&[
        "--server-set",
        "ingress.max_connections=3",
        "--connections",
        "5",
        "--rate",
        "50",
        "--duration",
        "1s",
        "--warmup",
        "0s",
    ]);
    assert_eq!(output.status.code(), Some(1), "{report:#}");
    assert_eq!(report["verified"], false);
    let connections = &report["runs"][0]["connections"];
    assert_eq!((count(&connections["opened"]), count(&connections["failed"])), (2, 3));
    let reasons = connections["failure_reasons"].as_object().unwrap();
    assert!(
        reasons.keys().any(|r| r.contains("503") && r.contains("max_connections")),
        "{reasons:?}"
    );
}

#[test]
fn idle_connections_are_counted_and_the_server_memory_read() {
    let (output, report) = bench(&["--idle-connections", "40", "--goal-idle-bytes", "1000000000"]);
    assert!(output.status.success(), "{report:#}");
    let memory = &report["memory"];
    assert_eq!((count(&memory["opened"]), count(&memory["failed"])), (40, 0));
    assert!(count(&memory["rss_kib_before"]) > 0 && count(&memory["rss_kib_after"]) > 0);
    assert!(memory["bytes_per_connection"].as_f64().is_some());
    assert_eq!(report["goals"][0]["met"], true, "{report:#}");
    assert!(report["runs"].as_array().unwrap().is_empty());
}
