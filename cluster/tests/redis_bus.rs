//! [`RedisChangeBus`] against real Redis: the shared server at 127.0.0.1:6379 (a namespace per
//! test, its keys deleted afterwards, never restarted) and private `redis-server`s for the
//! tests that kill Redis.

#[path = "common/private_redis.rs"]
mod private_redis;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_cluster::redis_bus::{RedisBusOptions, RedisChangeBus};
use ferry_protocol::{ChangeBus, ChangeEvent, ChangeOp, EventSink, History, Topic};
use private_redis::PrivateRedis;
use redis::Commands;
use tokio::runtime::Runtime;

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";
/// How long any wait for the bus may take.
const DEADLINE: Duration = Duration::from_secs(60);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a runtime")
}

fn event(path: &str, rev: u64) -> ChangeEvent {
    ChangeEvent {
        path: path.into(),
        rev,
        change: ChangeOp::Append { content: format!("{path}@{rev}").into() },
        author: "tester".into(),
        ts_ms: 1_700_000_000_000 + rev,
        partition: 3,
    }
}

/// Polls `done` until it holds.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A namespace of its own on one Redis; its keys are deleted when dropped.
struct Namespace {
    url: String,
    name: String,
}

impl Namespace {
    fn new(url: &str) -> Namespace {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Namespace { url: url.to_owned(), name: format!("ferry-test-{}-{n}", std::process::id()) }
    }

    fn bus(&self, options: RedisBusOptions, runtime: &Runtime) -> RedisChangeBus {
        RedisChangeBus::connect(&self.url, &self.name, options, runtime.handle().clone())
            .expect("connecting the bus")
    }

    fn redis(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|client| client.get_connection())
            .expect("connecting to redis")
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // A private server may be gone already, with its keys.
        let Ok(mut redis) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
        else {
            return;
        };
        let keys: Vec<String> = match redis.scan_match(format!("{}:*", self.name)) {
            Ok(keys) => keys.filter_map(Result::ok).collect(),
            Err(_) => return,
        };
        for key in keys {
            let _: Result<(), _> = redis.del(key);
        }
    }
}

#[derive(Default, Clone)]
struct Seen {
    events: Vec<Arc<ChangeEvent>>,
    lost: usize,
}

impl Seen {
    fn revs(&self, path: &str) -> Vec<u64> {
        self.events.iter().filter(|e| &*e.path == path).map(|e| e.rev).collect()
    }

    fn by_path(&self) -> BTreeMap<String, Vec<u64>> {
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in &self.events {
            out.entry(e.path.to_string()).or_default().push(e.rev);
        }
        out
    }
}

/// A sink recording what it gets, which a test can wait on.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Seen>,
    changed: Condvar,
}

impl Recorder {
    /// Waits until `done` holds; returns what was seen then.
    fn wait(&self, what: &str, done: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + DEADLINE;
        let mut seen = self.seen.lock().unwrap();
        while !done(&seen) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                panic!(
                    "timed out waiting for {what}: saw {:?}, lost {}",
                    seen.by_path(),
                    seen.lost
                );
            };
            seen = self.changed.wait_timeout(seen, left).unwrap().0;
        }
        seen.clone()
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }
}

impl EventSink for Recorder {
    fn deliver(&self, event: &Arc<ChangeEvent>) {
        self.seen.lock().unwrap().events.push(event.clone());
        self.changed.notify_all();
    }

    fn lost(&self) {
        self.seen.lock().unwrap().lost += 1;
        self.changed.notify_all();
    }
}

fn range(from: u64, to: u64) -> Vec<u64> {
    (from..=to).collect()
}

#[test]
fn path_and_prefix_subscriptions_receive_events_in_order_exactly_once() {
    let runtime = runtime();
    let ns = Namespace::new(SHARED_REDIS);
    let bus = ns.bus(RedisBusOptions::default(), &runtime);
    let file = Arc::new(Recorder::default());
    let dir = Arc::new(Recorder::default());
    let nested = Arc::new(Recorder::default());
    let globby = Arc::new(Recorder::default());
    let everything = Arc::new(Recorder::default());
    bus.subscribe(Topic::Path("/a/x".into()), file.clone());
    bus.subscribe(Topic::Prefix("/a/".into()), dir.clone());
    bus.subscribe(Topic::Prefix("/a/x".into()), nested.clone());
    // Unescaped, this prefix would be a pattern matching "/gzz1/f" too.
    bus.subscribe(Topic::Prefix("/g*[1]/".into()), globby.clone());
    bus.subscribe(Topic::Prefix(String::new()), everything.clone());
    assert_eq!(bus.subscription_count(), 5);

    for rev in 1..=5 {
        bus.publish(event("/a/x", rev));
        if rev <= 3 {
            bus.publish(event("/a/y", rev));
        }
        if rev <= 2 {
            bus.publish(event("/b/z", rev));
        }
    }
    bus.publish(event("/g*[1]/f", 1));
    bus.publish(event("/gzz1/f", 1));
    // The last events: once they are in, any duplicate of an earlier one would be too.
    bus.publish(event("/a/x", 6));
    bus.publish(event("/g*[1]/f", 2));

    let has = |path: &'static str, rev: u64| move |s: &Seen| s.revs(path).contains(&rev);
    assert_eq!(
        file.wait("/a/x@6", has("/a/x", 6)).by_path(),
        [("/a/x".into(), range(1, 6))].into()
    );
    assert_eq!(
        dir.wait("/a/x@6", has("/a/x", 6)).by_path(),
        [("/a/x".into(), range(1, 6)), ("/a/y".into(), range(1, 3))].into()
    );
    assert_eq!(
        nested.wait("/a/x@6", has("/a/x", 6)).by_path(),
        [("/a/x".into(), range(1, 6))].into()
    );
    assert_eq!(
        globby.wait("/g*[1]/f@2", has("/g*[1]/f", 2)).by_path(),
        [("/g*[1]/f".into(), range(1, 2))].into()
    );
    assert_eq!(
        everything.wait("/g*[1]/f@2", has("/g*[1]/f", 2)).by_path(),
        [
            ("/a/x".into(), range(1, 6)),
            ("/a/y".into(), range(1, 3)),
            ("/b/z".into(), range(1, 2)),
            ("/g*[1]/f".into(), range(1, 2)),
            ("/gzz1/f".into(), range(1, 1)),
        ]
        .into()
    );
    assert_eq!(*file.seen().events[0], event("/a/x", 1), "events arrive whole");
    wait_for("37 deliveries counted", || bus.delivered() == 6 + 9 + 6 + 2 + 14);
    wait_for("14 events published", || bus.published() == 14);
    assert_eq!((bus.dropped(), bus.reconnects()), (0, 0));
}

#[test]
fn unsubscribe_stops_delivery_and_leaves_the_redis_channel_after_the_last_sink() {
    let runtime = runtime();
    let ns = Namespace::new(SHARED_REDIS);
    let bus = ns.bus(RedisBusOptions::default(), &runtime);
    let first = Arc::new(Recorder::default());
    let second = Arc::new(Recorder::default());
    let prefix = Arc::new(Recorder::default());
    let first_id = bus.subscribe(Topic::Path("/u".into()), first.clone());
    let second_id = bus.subscribe(Topic::Path("/u".into()), second.clone());
    let prefix_id = bus.subscribe(Topic::Prefix("/u".into()), prefix.clone());
    let channel = format!("{}:c:/u", ns.name);
    let mut redis = ns.redis();
    let subscribers = |redis: &mut redis::Connection| -> u64 {
        let (_, n): (String, u64) =
            redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel).query(redis).unwrap();
        n
    };
    assert_eq!(subscribers(&mut redis), 1, "one redis subscription for both sinks");

    bus.publish(event("/u", 1));
    for sink in [&first, &second, &prefix] {
        sink.wait("/u@1", |s| s.revs("/u") == [1]);
    }
    bus.unsubscribe(first_id);
    bus.unsubscribe(prefix_id);
    bus.unsubscribe(prefix_id);
    assert_eq!(bus.subscription_count(), 1);
    bus.publish(event("/u", 2));
    second.wait("/u@2", |s| s.revs("/u") == [1, 2]);
    assert_eq!(first.seen().revs("/u"), [1]);
    assert_eq!(prefix.seen().revs("/u"), [1]);

    bus.unsubscribe(second_id);
    assert_eq!(bus.subscription_count(), 0);
    wait_for("redis to drop the channel's subscription", || subscribers(&mut redis) == 0);
    bus.publish(event("/u", 3));
    wait_for("/u@3 published", || bus.published() == 3);
    assert_eq!(second.seen().revs("/u"), [1, 2]);
}

#[test]
fn history_after_a_revision_gap_when_trimmed_none_when_absent() {
    let runtime = runtime();
    let ns = Namespace::new(SHARED_REDIS);
    let options = RedisBusOptions { history_per_file: 10, ..RedisBusOptions::default() };
    let bus = ns.bus(options, &runtime);
    let events = |history: History| match history {
        History::Events(events) => events.iter().map(|e| (**e).clone()).collect::<Vec<_>>(),
        gap => panic!("expected events, got {gap:?}"),
    };

    for rev in 1..=5 {
        bus.publish(event("/h", rev));
    }
    wait_for("5 events published", || bus.published() == 5);
    let expected: Vec<_> = (3..=5).map(|rev| event("/h", rev)).collect();
    assert_eq!(events(bus.history("/h", 2)), expected);
    assert_eq!(events(bus.history("/h", 0)).len(), 5);
    assert_eq!(events(bus.history("/h", 5)), []);
    assert_eq!(bus.history("/h", 7), History::Gap { current_rev: Some(5) });
    assert_eq!(bus.history("/absent", 0), History::Gap { current_rev: None });
    let mut redis = ns.redis();
    let ttl: i64 = redis.ttl(format!("{}:h:/h", ns.name)).unwrap();
    assert!(ttl > 24 * 3600 - 60 && ttl <= 24 * 3600, "history expires a day after: {ttl}");

    for rev in 1..=300 {
        bus.publish(event("/t", rev));
    }
    wait_for("305 events published", || bus.published() == 305);
    assert_eq!(bus.history("/t", 0), History::Gap { current_rev: Some(300) });
    assert_eq!(
        events(bus.history("/t", 290)),
        (291..=300).map(|r| event("/t", r)).collect::<Vec<_>>()
    );
    let len: usize = redis.xlen(format!("{}:h:/t", ns.name)).unwrap();
    assert!((10..300).contains(&len), "the stream is trimmed to about 10 entries: {len}");

    // A store reopened from older data publishes lower revisions: the history starts over.
    for rev in [10, 11, 12, 3] {
        bus.publish(event("/r", rev));
    }
    wait_for("309 events published", || bus.published() == 309);
    assert_eq!(events(bus.history("/r", 2)), [event("/r", 3)]);
    assert_eq!(bus.history("/r", 0), History::Gap { current_rev: Some(3) });
}

#[test]
fn twenty_thousand_events_from_four_threads_arrive_in_per_file_order() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 5000;
    const FILES_PER_THREAD: u64 = 10;
    let runtime = runtime();
    let ns = Namespace::new(SHARED_REDIS);
    let bus = Arc::new(ns.bus(RedisBusOptions::default(), &runtime));
    let all = Arc::new(Recorder::default());
    bus.subscribe(Topic::Prefix("/load/".into()), all.clone());

    let started = Instant::now();
    let publishers: Vec<_> = (0..THREADS)
        .map(|t| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for k in 0..PER_THREAD {
                    let path = format!("/load/t{t}/f{}", k % FILES_PER_THREAD);
                    bus.publish(event(&path, k / FILES_PER_THREAD + 1));
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.join().unwrap();
    }
    let total = THREADS * PER_THREAD;
    wait_for("20,000 events published", || bus.published() == total);
    let published = started.elapsed();
    let seen = all.wait("20,000 events", |s| s.events.len() as u64 >= total);
    let delivered = started.elapsed();
    let rate = |elapsed: Duration| total as f64 / elapsed.as_secs_f64();
    println!(
        "{total} events from {THREADS} threads: in redis after {published:?} ({:.0}/s), \
         delivered after {delivered:?} ({:.0}/s)",
        rate(published),
        rate(delivered)
    );
    let by_path = seen.by_path();
    assert_eq!(by_path.len(), (THREADS * FILES_PER_THREAD) as usize);
    let per_file = range(1, PER_THREAD / FILES_PER_THREAD);
    for (path, revs) in &by_path {
        assert!(revs == &per_file, "{path} got revisions out of order or twice");
    }
    assert_eq!(seen.events.len() as u64, total);
    assert_eq!(bus.dropped(), 0);
}

/// The id of the connection named `name` in `CLIENT LIST`.
fn client_id(redis: &mut redis::Connection, name: &str) -> Option<u64> {
    let list: String = redis::cmd("CLIENT").arg("LIST").query(redis).unwrap();
    let needle = format!(" name={name} ");
    let line = list.lines().find(|line| line.contains(&needle))?;
    line.strip_prefix("id=")?.split(' ').next()?.parse().ok()
}

#[test]
fn a_killed_subscription_connection_comes_back_and_delivers_what_it_missed_once_in_order() {
    let runtime = runtime();
    let ns = Namespace::new(SHARED_REDIS);
    let bus = ns.bus(RedisBusOptions::default(), &runtime);
    let file = Arc::new(Recorder::default());
    let prefix = Arc::new(Recorder::default());
    bus.subscribe(Topic::Path("/k".into()), file.clone());
    bus.subscribe(Topic::Prefix("/k".into()), prefix.clone());
    for rev in 1..=3 {
        bus.publish(event("/k", rev));
    }
    file.wait("/k@3", |s| s.revs("/k") == [1, 2, 3]);

    let mut redis = ns.redis();
    let name = bus.pubsub_client_name();
    let id = client_id(&mut redis, &name).expect("the bus's named subscription connection");
    let killed: u64 = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query(&mut redis).unwrap();
    assert_eq!(killed, 1);
    for rev in 4..=10 {
        bus.publish(event("/k", rev));
    }
    file.wait("/k@10", |s| s.revs("/k").contains(&10));
    bus.publish(event("/k", 11));
    assert_eq!(file.wait("/k@11", |s| s.revs("/k").contains(&11)).revs("/k"), range(1, 11));
    assert_eq!(file.seen().lost, 0, "the history bridged the gap");
    prefix.wait("the prefix topic told it may have lost events", |s| s.lost >= 1);
    assert!(bus.reconnects() >= 1);
    let again = client_id(&mut redis, &name).expect("a new subscription connection");
    assert_ne!(again, id);
}

#[test]
fn after_a_redis_restart_wiped_topics_are_lost_and_publishing_resumes_in_order() {
    let mut server = PrivateRedis::start();
    let runtime = runtime();
    let ns = Namespace::new(&server.url());
    let bus = ns.bus(RedisBusOptions::default(), &runtime);
    let file = Arc::new(Recorder::default());
    let prefix = Arc::new(Recorder::default());
    bus.subscribe(Topic::Path("/w".into()), file.clone());
    bus.subscribe(Topic::Prefix("/w".into()), prefix.clone());
    for rev in 1..=3 {
        bus.publish(event("/w", rev));
    }
    file.wait("/w@3", |s| s.revs("/w") == [1, 2, 3]);

    server.restart();
    file.wait("the file topic told it lost events", |s| s.lost == 1);
    prefix.wait("the prefix topic told it lost events", |s| s.lost == 1);
    bus.publish(event("/w", 4));
    file.wait("/w@4 after the restart", |s| s.revs("/w").contains(&4));
    assert_eq!(bus.history("/w", 3), History::Events(vec![Arc::new(event("/w", 4))]));

    // Published while Redis is down: queued, then sent in order once it is back.
    server.kill();
    for rev in 5..=7 {
        bus.publish(event("/w", rev));
    }
    server.restart();
    let seen = file.wait("/w@7", |s| s.revs("/w").contains(&7));
    assert_eq!(seen.revs("/w"), range(1, 7));
    wait_for("7 events published", || bus.published() == 7);
    assert_eq!(bus.dropped(), 0);
    assert!(bus.reconnects() >= 2);
}

#[test]
fn events_beyond_the_publish_queue_are_dropped_and_counted_while_redis_is_down() {
    let mut server = PrivateRedis::start();
    let runtime = runtime();
    let ns = Namespace::new(&server.url());
    let options = RedisBusOptions { publish_queue: 10, ..RedisBusOptions::default() };
    let bus = ns.bus(options, &runtime);
    let file = Arc::new(Recorder::default());
    bus.subscribe(Topic::Path("/o".into()), file.clone());

    server.kill();
    for rev in 1..=1000 {
        bus.publish(event("/o", rev));
    }
    let dropped = bus.dropped();
    assert!(dropped > 0 && dropped <= 990, "dropped {dropped}: the queue holds 10");
    server.restart();
    let kept = 1000 - dropped;
    wait_for("the queued events published", || bus.published() == kept);
    let revs = file.wait("the queued events", |s| s.revs("/o").len() as u64 >= kept).revs("/o");
    assert_eq!(revs.len() as u64, kept);
    assert_eq!(revs[..10], range(1, 10), "the first events always fit in the queue");
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "in order: {revs:?}");
}

#[test]
fn bad_urls_and_unreachable_servers_are_typed_errors() {
    let runtime = runtime();
    let connect = |url: &str| {
        RedisChangeBus::connect(
            url,
            "ferry-test",
            RedisBusOptions::default(),
            runtime.handle().clone(),
        )
    };
    let err = connect("http://nowhere").err().expect("a bad url is refused");
    assert_eq!(err.to_string(), "invalid redis url for the change bus");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = connect(&format!("redis://127.0.0.1:{closed}")).err().expect("nothing listens");
    assert!(
        err.to_string().starts_with("connecting the change bus to redis at 127.0.0.1:"),
        "{err}"
    );
    let err = RedisChangeBus::connect(
        SHARED_REDIS,
        "",
        RedisBusOptions::default(),
        runtime.handle().clone(),
    )
    .err()
    .expect("an empty namespace is refused");
    assert!(err.to_string().contains("namespace"), "{err}");
}
