//! `ferry status` and `ferry dlq` against a running cluster: one `ferry worker` and one
//! `ferry ingress` in a namespace of the test's own, written to by a WebSocket client; and
//! `ferry destroy` once the cluster has stopped.

mod common;

use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{within, Cluster, PARTITIONS, SHARED_AMQP_URL, SHARED_REDIS_URL, TIMEOUT};
use ferry_cluster::topology::{QueueLimits, Topology};
use ferry_ingress::client::Client;
use serde_json::Value;

fn succeeded(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn status_json(cluster: &Cluster, interval: &str) -> Value {
    let out = cluster.ferry().args(["status", "--json", "--interval", interval]).output().unwrap();
    serde_json::from_str(&succeeded(out, "ferry status --json")).expect("status is JSON")
}

/// Whether the status shows what the test is waiting for; `Err` says what is still missing.
fn settled(status: &Value) -> Result<(), String> {
    let workers = status["workers"].as_array().ok_or("no workers array")?;
    let ingress = status["ingress"].as_array().ok_or("no ingress array")?;
    if workers.len() != 1 || ingress.len() != 1 {
        return Err(format!("{} worker(s), {} ingress node(s)", workers.len(), ingress.len()));
    }
    let all: Vec<Value> = (0..PARTITIONS).map(Value::from).collect();
    if workers[0]["partitions"].as_array() != Some(&all) {
        return Err(format!("the worker holds {}", workers[0]["partitions"]));
    }
    // The 20 writes answered, counted at the worker's next description.
    if workers[0]["applied"].as_u64().unwrap_or(0) < 20 {
        return Err(format!("the worker applied {}", workers[0]["applied"]));
    }
    // RabbitMQ's counts of a quorum queue trail it by a moment.
    let queues = status["queues"].as_array().ok_or("no queues array")?;
    if let Some(q) = queues.iter().find(|q| q["ready"] != 0 || q["consumers"] != 1) {
        return Err(format!("queue {q}"));
    }
    if ingress[0]["connections"].as_u64().unwrap_or(0) < 1 {
        return Err(format!("the ingress reports {} connections", ingress[0]["connections"]));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_worker_the_ingress_and_empty_queues_after_the_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(tmp.path());
    cluster.worker("w1");
    let url = cluster.ingress("i1");
    let client = within(Client::connect(&url, None)).await.unwrap();
    for user in 0..20 {
        let rev = within(client.put(&format!("/home/u{user}/f"), "x")).await.unwrap();
        assert_eq!(rev, 1);
    }

    // Descriptions are refreshed every tick (worker) or lease/3 (ingress): poll until current.
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        let status = tokio::task::block_in_place(|| status_json(&cluster, "0s"));
        match settled(&status) {
            Ok(()) => break status,
            Err(missing) => {
                assert!(Instant::now() < deadline, "status never settled: {missing}\n{status:#}")
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["namespace"], cluster.namespace.as_str());
    assert_eq!(status["partitions"], PARTITIONS);
    let worker = &status["workers"][0];
    assert_eq!(worker["id"], "w1");
    assert!(worker["pid"].as_u64().is_some(), "{worker}");
    let ingress = &status["ingress"][0];
    assert_eq!(ingress["id"], "i1");
    assert_eq!(url, format!("ws://{}/v1/ws", ingress["addr"].as_str().unwrap()));
    let queues = status["queues"].as_array().unwrap();
    assert_eq!(queues.len(), PARTITIONS as usize);
    for q in queues {
        assert_eq!(
            (&q["ready"], &q["consumers"], &q["owner"]),
            (&0.into(), &1.into(), &"w1".into())
        );
    }
    assert_eq!(status["dead_letters"], 0);
    assert_eq!(status["instructions_per_sec"], Value::Null, "one sample has no rate");

    // Under a steady load, two samples a second apart see instructions applied.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU32::new(0));
    let load = {
        let (stop, written) = (stop.clone(), written.clone());
        tokio::spawn(async move {
            for i in 0..1000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                within(client.append("/home/load/f", &format!("{i};"))).await.unwrap();
                written.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            client
        })
    };
    while written.load(Ordering::Relaxed) < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let loaded = tokio::task::block_in_place(|| status_json(&cluster, "1s"));
    let text = tokio::task::block_in_place(|| {
        succeeded(cluster.ferry().arg("status").output().unwrap(), "ferry status")
    });
    stop.store(true, Ordering::Relaxed);
    let client = within(load).await.unwrap();
    let rate = loaded["instructions_per_sec"].as_f64().expect("a rate from two samples");
    assert!(rate > 0.0, "{loaded:#}");
    assert_eq!(loaded["workers"][0]["instructions_per_sec"].as_f64(), Some(rate));
    assert!(loaded["interval_ms"].as_u64().unwrap() >= 1000, "{loaded:#}");
    eprintln!("{text}");
    let heading =
        format!("cluster {}: 16 partitions, 1 worker(s), 1 ingress node(s)", cluster.namespace);
    assert!(text.starts_with(&heading), "{text}");
    assert!(text.contains("dead letters: 0"), "{text}");
    assert!(text.contains("  w1  "), "{text}");
    assert!(text.contains("0-15"), "{text}");

    let out = cluster.ferry().args(["dlq", "list", "--json"]).output().unwrap();
    let letters: Value = serde_json::from_str(&succeeded(out, "ferry dlq list --json")).unwrap();
    assert_eq!(letters, Value::Array(Vec::new()));
    let out = cluster.ferry().args(["dlq", "replay"]).output().unwrap();
    assert_eq!(succeeded(out, "ferry dlq replay"), "replayed 0 dead letter(s)\n");
    drop(client);
}

/// `ferry destroy --confirm {confirm}`: whether it succeeded, its stdout and its stderr.
fn destroy(cluster: &Cluster, confirm: &str) -> (bool, String, String) {
    let out = cluster.ferry().args(["destroy", "--confirm", confirm]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// Whether the shared broker has the queue `name` (a passive declare, on a channel of its own:
/// a missing queue closes the channel).
async fn queue_exists(name: &str) -> bool {
    let connection =
        within(lapin::Connection::connect(SHARED_AMQP_URL, Default::default())).await.unwrap();
    let channel = within(connection.create_channel()).await.unwrap();
    let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let declared = within(channel.queue_declare(name.into(), options, Default::default())).await;
    let _ = connection.close(0, "checked".into()).await;
    declared.is_ok()
}

async fn redis_keys(namespace: &str) -> Vec<String> {
    let client = redis::Client::open(SHARED_REDIS_URL).unwrap();
    let mut redis = within(client.get_multiplexed_async_connection()).await.unwrap();
    within(redis::cmd("KEYS").arg(format!("{namespace}:*")).query_async(&mut redis)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_refuses_while_a_member_is_live_then_deletes_queues_and_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(tmp.path());
    let worker = cluster.worker("w1");
    let namespace = cluster.namespace.clone();
    let (ok, _, stderr) = destroy(&cluster, "another-cluster");
    assert!(!ok && stderr.contains("nothing deleted"), "{stderr}");
    let deadline = Instant::now() + TIMEOUT;
    while status_json(&cluster, "0s")["workers"].as_array().is_none_or(|w| w.is_empty()) {
        assert!(Instant::now() < deadline, "the worker never joined");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, _, stderr) = destroy(&cluster, &namespace);
    assert!(!ok && stderr.contains("live members") && stderr.contains("w1"), "{stderr}");
    let topology = Topology::new(&namespace, PARTITIONS, QueueLimits::default());
    let first_queue = topology.partition_queue(0);
    assert!(queue_exists(&first_queue).await, "a refused destroy deleted the queues");
    assert!(!redis_keys(&namespace).await.is_empty());

    // SIGKILL: the worker's lease has to run out before the cluster counts as stopped.
    cluster.kill(worker);
    let stdout = loop {
        let (ok, stdout, stderr) = destroy(&cluster, &namespace);
        if ok {
            break stdout;
        }
        assert!(stderr.contains("live members"), "{stderr}");
        assert!(Instant::now() < deadline, "the killed worker stayed live: {stderr}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let expected = format!("deleted cluster {namespace}: {PARTITIONS} partition queues");
    assert!(stdout.starts_with(&expected), "{stdout}");
    assert!(!queue_exists(&first_queue).await);
    assert!(!queue_exists(&topology.partition_queue(PARTITIONS - 1)).await);
    assert!(!queue_exists(&topology.dead_letters()).await);
    assert_eq!(redis_keys(&namespace).await, Vec::<String>::new());
}
