//! The in-process change bus: delivery by topic, unsubscribe, and the bounded history with
//! gaps.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use ferry_instruction_worker::{LocalBus, LocalBusOptions};
use ferry_protocol::{ChangeBus, ChangeEvent, ChangeOp, History, Topic};

fn event(path: &str, rev: u64, bytes: usize) -> ChangeEvent {
    ChangeEvent {
        path: Arc::from(path),
        rev,
        change: ChangeOp::Append { content: Bytes::from(vec![b'x'; bytes]) },
        author: Arc::from("u"),
        ts_ms: rev,
        partition: 0,
    }
}

fn revs(history: History) -> Vec<u64> {
    match history {
        History::Events(events) => events.iter().map(|e| e.rev).collect(),
        gap => panic!("expected events, got {gap:?}"),
    }
}

#[test]
fn events_reach_path_and_prefix_subscribers_until_they_unsubscribe() {
    let bus = LocalBus::new(LocalBusOptions::default());
    let (tx, exact) = crossbeam_channel::unbounded();
    let exact_id = bus.subscribe(Topic::Path("/a/b".into()), Arc::new(ChannelSink(tx)));
    let prefix = subscribe(&bus, Topic::Prefix("/a/".into()));
    let partial = subscribe(&bus, Topic::Prefix("/a/b".into()));
    let other = subscribe(&bus, Topic::Prefix("/z/".into()));
    bus.publish(event("/a/b", 1, 1));
    bus.publish(event("/a/bc", 1, 1));
    bus.publish(event("/a/b", 2, 1));
    assert_eq!(exact.try_iter().map(|e| e.rev).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        prefix.try_iter().map(|e| e.path.to_string()).collect::<Vec<_>>(),
        ["/a/b", "/a/bc", "/a/b"]
    );
    assert_eq!(partial.try_iter().count(), 3, "a prefix is a string prefix, not a directory");
    assert_eq!(other.try_iter().count(), 0);
    assert_eq!(bus.subscription_count(), 4);
    bus.unsubscribe(exact_id);
    bus.unsubscribe(exact_id);
    bus.publish(event("/a/b", 3, 1));
    assert_eq!(exact.try_iter().count(), 0);
    assert_eq!(prefix.try_iter().count(), 1);
    assert_eq!(bus.subscription_count(), 3);
}

#[test]
fn history_bridges_from_any_kept_revision_and_reports_gaps() {
    let bus = LocalBus::new(LocalBusOptions { history_per_file: 3, ..LocalBusOptions::default() });
    assert_eq!(bus.history("/f", 0), History::Gap { current_rev: None });
    for rev in 1..=5 {
        bus.publish(event("/f", rev, 1));
    }
    // Revisions 3, 4, 5 are kept.
    assert_eq!(revs(bus.history("/f", 2)), [3, 4, 5]);
    assert_eq!(revs(bus.history("/f", 4)), [5]);
    assert_eq!(revs(bus.history("/f", 5)), Vec::<u64>::new());
    assert_eq!(bus.history("/f", 1), History::Gap { current_rev: Some(5) });
    assert_eq!(bus.history("/f", 0), History::Gap { current_rev: Some(5) });
    // A client ahead of the bus (e.g. the server lost data) is told where the file is.
    assert_eq!(bus.history("/f", 9), History::Gap { current_rev: Some(5) });
    assert_eq!(bus.history("/other", 0), History::Gap { current_rev: None });
}

#[test]
fn history_is_bounded_in_bytes_per_file_and_in_total() {
    let bus = LocalBus::new(LocalBusOptions {
        history_per_file: 1000,
        history_bytes_per_file: 1000,
        history_bytes_total: 1 << 20,
    });
    for rev in 1..=10 {
        bus.publish(event("/big", rev, 300));
    }
    // Each event weighs a little over 300 bytes: at most three fit in 1000.
    let kept = match bus.history("/big", 0) {
        History::Gap { current_rev: Some(10) } => {
            (1..=10).filter(|&r| matches!(bus.history("/big", r), History::Events(_))).count()
        }
        other => panic!("{other:?}"),
    };
    assert!((2..=4).contains(&kept), "{kept} bridging points");
    // The newest is always kept, even when larger than the budget.
    bus.publish(event("/big", 11, 5000));
    assert_eq!(revs(bus.history("/big", 10)), [11]);

    let bus = LocalBus::new(LocalBusOptions {
        history_per_file: 1000,
        history_bytes_per_file: 64 << 10,
        history_bytes_total: 256 << 10,
    });
    // 64 files growing to 50 KiB each: 3.2 MiB offered, 256 KiB allowed.
    for rev in 1..=50 {
        for f in 0..64 {
            bus.publish(event(&format!("/many/{f}"), rev, 1000));
        }
    }
    let (files, bytes) = bus.history_size();
    assert!(bytes <= 256 << 10, "{files} files weigh {bytes} bytes");
    assert!(files >= 2, "recent files keep their history: {files}");
    assert_eq!(revs(bus.history("/many/63", 49)), [50]);

    // 1,000 files of one 1,000-byte event each: only about 200 fit. The others' histories
    // must be gone, not merely uncounted.
    let bus = LocalBus::new(LocalBusOptions {
        history_bytes_total: 256 << 10,
        ..LocalBusOptions::default()
    });
    for f in 0..1_000 {
        bus.publish(event(&format!("/one/{f}"), 1, 1000));
    }
    let (files, bytes) = bus.history_size();
    assert!(files * 1_000 <= bytes && bytes <= 256 << 10, "{files} files held, {bytes} bytes");
    assert!(files >= 100, "{files} files held, {bytes} bytes");
    let held = (0..1_000)
        .filter(|f| bus.history(&format!("/one/{f}"), 0) != History::Gap { current_rev: None });
    assert_eq!(held.count() as u64, files);
}
