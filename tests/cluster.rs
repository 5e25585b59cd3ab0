//! End to end through the distributed mode: `ferry worker` and `ferry ingress` processes on the
//! machine's RabbitMQ and Redis, each test in its own namespace (queues, exchanges and keys
//! deleted at the end), real WebSocket clients.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{free_port, within, Cluster, SHARED_AMQP_URL, SHARED_REDIS_URL, TIMEOUT};
use common::http;
use common::writes::Writes;
use ferry_ingress::client::Client;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_ingress_nodes_share_files_applied_by_two_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(tmp.path());
    cluster.worker("w1");
    cluster.worker("w2");
    let url1 = cluster.ingress("i1");
    let url2 = cluster.ingress("i2");
    // Placement: both nodes learn each other's load through Redis and name the same node.
    within(async {
        loop {
            let (a, b) = (route(&url1).await, route(&url2).await);
            if a == b && [&url1, &url2].contains(&&a) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    let writer = within(Client::connect(&url1, None)).await.unwrap();
    let mut near = within(Client::connect(&url1, None)).await.unwrap();
    let mut far = within(Client::connect(&url2, None)).await.unwrap();
    let path = "/home/alice/notes.txt";
    assert_eq!(within(near.sub(path, None)).await.unwrap(), 0);
    assert_eq!(within(far.sub(path, None)).await.unwrap(), 0);
    for i in 1..=30u64 {
        assert_eq!(within(writer.append(path, &format!("{i};"))).await.unwrap(), i);
    }
    for watcher in [&mut near, &mut far] {
        for i in 1..=30u64 {
            let event = within(watcher.next_event()).await.unwrap();
            assert_eq!(event.rev, i);
            assert_eq!(event.raw["content"].as_str(), Some(format!("{i};").as_str()));
        }
    }
    // Files of many partitions, read back through the other node, and listed across partitions.
    for user in 0..20 {
        within(writer.put(&format!("/home/u{user}/f"), &format!("user {user}"))).await.unwrap();
    }
    let reader = within(Client::connect(&url2, None)).await.unwrap();
    for user in 0..20 {
        let file = within(reader.get(&format!("/home/u{user}/f"))).await.unwrap();
        assert_eq!(file["content"].as_str(), Some(format!("user {user}").as_str()));
    }
    // Each ingress node counts what it received; it has no store of its own to show.
    let (status, metrics) = within(http::get(&url2, "/metrics")).await;
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(http::sample(&metrics, "ferry_requests_total{op=\"get\"}"), Some(20.0), "{metrics}");
    assert_eq!(http::sample(&metrics, "ferry_ingress_connections"), Some(2.0), "{metrics}");
    assert!(!metrics.contains("ferry_store_"), "{metrics}");
    let listing = within(reader.call(json!({"op": "list", "prefix": "/home/", "limit": 1000})))
        .await
        .unwrap();
    let entries = listing["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 21, "{listing}");
    let paths: Vec<&str> = entries.iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(paths.windows(2).all(|w| w[0] < w[1]), "listing in path order: {paths:?}");
    // A retried write with the same key is applied once, whichever node it comes through.
    let keyed = json!({"op": "append", "path": "/home/bob/k", "content": "once", "key": "k-1"});
    let first = within(writer.call(keyed.clone())).await.unwrap();
    let again = within(reader.call(keyed)).await;
    // Different connections are the same subject here (open server: "anonymous").
    assert_eq!(again.unwrap()["rev"], first["rev"]);
    assert_eq!(within(reader.get("/home/bob/k")).await.unwrap()["content"], "once");
    // A conflict is answered by the worker through the reply route.
    let conflict =
        within(reader.call(json!({"op": "put", "path": path, "content": "x", "if_rev": 3})))
            .await
            .unwrap_err();
    assert_eq!(conflict.code(), Some("conflict"), "{conflict}");
}

/// Failover measurements: `FERRY_FAILOVER_KILLS=10` kills a worker ten times (a fresh one
/// replaces it each time) and prints the median and the max; the default run kills once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_under_load_loses_nothing_and_applies_nothing_twice() {
    let kills: usize =
        std::env::var("FERRY_FAILOVER_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(tmp.path());
    let mut workers = vec![cluster.worker("w0"), cluster.worker("w1")];
    let url = cluster.ingress("i1");
    let mut failovers = Vec::new();
    for round in 0..kills {
        // Files spread over the partitions, so that the killed worker owned some of them.
        let files: Vec<String> = (0..8).map(|f| format!("/home/r{round}f{f}/log")).collect();
        let writes_per_file = 60usize;
        let writes = Writes::new(TIMEOUT);
        let pace = Duration::from_millis(10);
        let tasks =
            write_files(&url, &files, writes_per_file, &format!("{round}-"), pace, &writes).await;
        writes.acked_at_least(40).await;
        cluster.kill(workers.remove(0));
        let killed_at = Instant::now();
        workers.push(cluster.worker(&format!("w{}", round + 2)));
        // Failover: until every file has had a write acknowledged after the kill (the files of
        // the killed worker's partitions wait for the takeover).
        let mut failover = Duration::ZERO;
        for task in tasks {
            let acks = within(task).await.unwrap();
            let first_after = acks.iter().find(|t| **t > killed_at).expect("writes after the kill");
            failover = failover.max(*first_after - killed_at);
        }
        failovers.push(failover);
        assert_files_hold(&url, &files, writes_per_file).await;
    }
    failovers.sort();
    eprintln!(
        "failover after SIGKILL over {kills} kills: median {:?}, max {:?} (all {failovers:?})",
        failovers[failovers.len() / 2],
        failovers.last().unwrap()
    );
}

/// Appends `0;`, `1;`, ... to each of `files`, each through a connection of its own, `pace`
/// apart, with idempotency keys `{key_prefix}{file}-{i}`, checking every revision; each task
/// returns when its acknowledgements came.
async fn write_files(
    url: &str,
    files: &[String],
    writes_per_file: usize,
    key_prefix: &str,
    pace: Duration,
    writes: &Writes,
) -> Vec<tokio::task::JoinHandle<Vec<Instant>>> {
    let mut tasks = Vec::new();
    for (f, path) in files.iter().enumerate() {
        let client = within(Client::connect(url, None)).await.unwrap();
        let (path, writes, key_prefix) = (path.clone(), writes.clone(), key_prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::with_capacity(writes_per_file);
            for i in 0..writes_per_file {
                let key = format!("{key_prefix}{f}-{i}");
                let rev = writes.append_until_acked(&client, &path, &format!("{i};"), &key).await;
                assert_eq!(rev, i as u64 + 1, "{path}: write {i} got revision {rev}");
                acks.push(Instant::now());
                tokio::time::sleep(pace).await;
            }
            acks
        }));
    }
    tasks
}

/// Every file holds each of its `writes_per_file` appends once and in order.
async fn assert_files_hold(url: &str, files: &[String], writes_per_file: usize) {
    let reader = within(Client::connect(url, None)).await.unwrap();
    let expected: String = (0..writes_per_file).map(|i| format!("{i};")).collect();
    for path in files {
        let file = within(reader.get(path)).await.unwrap();
        assert_eq!(file["content"].as_str(), Some(expected.as_str()), "{path}");
        assert_eq!(file["rev"].as_u64(), Some(writes_per_file as u64), "{path}");
    }
}

/// Runs `scripts/scale.sh` (or `cluster.sh`) for this cluster.
fn script(dir: &Path, namespace: &str, name: &str, args: &[&str]) -> String {
    let out = Command::new(format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .env("FERRY_BIN", env!("CARGO_BIN_EXE_ferry"))
        .env("FERRY_CLUSTER_DIR", dir)
        .env("FERRY_CLUSTER__NAMESPACE", namespace)
        .env("FERRY_CLUSTER__BROKER_URL", SHARED_AMQP_URL)
        .env("FERRY_CLUSTER__BUS_URL", SHARED_REDIS_URL)
        .env("FERRY_INGRESS_BASE_PORT", free_port().to_string())
        .env_remove("FERRY_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{name} {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_workers_one_three_one_under_load_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(tmp.path());
    let (dir, namespace) = (cluster.dir.clone(), cluster.namespace.clone());
    let up = script(&dir, &namespace, "cluster.sh", &["up", "1", "1"]);
    let url = up
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .expect("cluster.sh up printed the ingress URL")
        .to_owned();
    let files: Vec<String> = (0..8).map(|f| format!("/home/s{f}/log")).collect();
    let writes_per_file = 250usize;
    let writes = Writes::new(TIMEOUT);
    let pace = Duration::from_millis(15);
    let tasks = write_files(&url, &files, writes_per_file, "", pace, &writes).await;
    // Scale while the writers run: the scripts return once the processes started or stopped.
    let scale = |workers: &'static str| {
        let (dir, namespace) = (dir.clone(), namespace.clone());
        tokio::task::spawn_blocking(move || {
            script(&dir, &namespace, "scale.sh", &["worker", workers])
        })
    };
    writes.acked_at_least(40).await;
    let up = within(scale("3")).await.unwrap();
    let at = writes.acked();
    writes.acked_at_least(at + 100).await;
    let down = within(scale("1")).await.unwrap();
    assert!(writes.acked() < 8 * writes_per_file as u32, "the load ended too soon");
    assert_eq!(up.matches("started worker").count(), 2, "{up}");
    assert_eq!(down.matches("stopped worker").count(), 2, "{down}");
    for task in tasks {
        within(task).await.unwrap();
    }
    assert_files_hold(&url, &files, writes_per_file).await;
    script(&dir, &namespace, "cluster.sh", &["down"]);
}

/// The URL `GET /v1/route` on the ingress at `ws_url` names.
async fn route(ws_url: &str) -> String {
    let (_, body) = http::get(ws_url, "/v1/route").await;
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    answer["url"].as_str().unwrap_or_default().to_owned()
}
