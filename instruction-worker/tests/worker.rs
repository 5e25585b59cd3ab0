//! The worker against a real store: answers, errors, rights, idempotency (also across a
//! reopen of the store), custom ops, events and the instruction log.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use ferry_file_server::{Store, StoreError, StoreOptions};
use ferry_instruction_worker::{
    store_error_body, CounterIncrement, LocalBus, LocalBusOptions, Worker, WorkerOptions,
    LEDGER_PATH_PREFIX,
};
use ferry_protocol::{AnswerBody, ChangeOp, ErrorCode, Operation, Rights, Topic};
use serde_json::json;

fn code(result: Result<AnswerBody, ferry_protocol::ErrorBody>) -> ErrorCode {
    match result {
        Ok(body) => panic!("expected an error, got {body:?}"),
        Err(e) => e.code,
    }
}

#[test]
fn writes_and_reads_answer_with_revisions_and_content() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), store_options());
    let (worker, _bus) = worker(&store, WorkerOptions::default());
    let answers = apply(
        &worker,
        vec![
            instruction(1, "alice", "k1", put("/home/alice/a", "hello", Some(0))),
            instruction(2, "alice", "k2", append("/home/alice/a", " world")),
            instruction(
                3,
                "alice",
                "k3",
                Operation::Patch {
                    path: "/home/alice/a".into(),
                    at: 0,
                    delete: 5,
                    insert: Bytes::from("HELLO"),
                    if_rev: Some(2),
                },
            ),
            // A read sees the batch's earlier writes (and is answered after they are durable).
            instruction(4, "alice", "", get("/home/alice/a")),
            instruction(5, "alice", "", Operation::Stat { path: "/home/alice/a".into() }),
        ],
    );
    let revs: Vec<Option<u64>> = answers.iter().map(|a| a.result.as_ref().unwrap().rev()).collect();
    assert_eq!(revs, [Some(1), Some(2), Some(3), Some(3), Some(3)]);
    assert_eq!(answers.iter().map(|a| a.instruction_id).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    let AnswerBody::File(file) = answers[3].result.clone().unwrap() else { panic!() };
    assert_eq!(&file.content[..], b"HELLO world");
    assert_eq!(&*file.author, "alice");
    let AnswerBody::Meta(meta) = answers[4].result.clone().unwrap() else { panic!() };
    assert_eq!(meta.size, 11);

    let deleted = apply_one(
        &worker,
        instruction(
            6,
            "alice",
            "k6",
            Operation::Delete { path: "/home/alice/a".into(), if_rev: None },
        ),
    );
    assert_eq!(rev_of(&deleted), 4);
    assert_eq!(
        code(apply_one(&worker, instruction(7, "alice", "", get("/home/alice/a")))),
        ErrorCode::NotFound
    );
    // Re-creating continues the revision count.
    let again =
        apply_one(&worker, instruction(8, "alice", "k8", put("/home/alice/a", "x", Some(0))));
    assert_eq!(rev_of(&again), 5);
}

#[test]
fn list_pages_in_path_order_and_hides_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), store_options());
    let (worker, _bus) = worker(&store, WorkerOptions::default());
    for (i, name) in ["c", "a", "b"].iter().enumerate() {
        let path = format!("/home/bob/{name}");
        rev_of(&apply_one(&worker, instruction(i as u64, "bob", name, put(&path, name, None))));
    }
    let list = |after: Option<&str>, limit| {
        let op = Operation::List { prefix: "/home/".into(), limit, after: after.map(Into::into) };
        match apply_one(&worker, instruction(9, "bob", "", op)).unwrap() {
            AnswerBody::Listing { entries, next } => {
                (entries.iter().map(|e| e.path.to_string()).collect::<Vec<_>>(), next)
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        list(None, 2),
        (vec!["/home/bob/a".into(), "/home/bob/b".into()], Some("/home/bob/b".into()))
    );
    assert_eq!(list(Some("/home/bob/b"), 2), (vec!["/home/bob/c".into()], None));
    // The ledger files exist (the writes had keys) but no listing shows them.
    let all = Operation::List { prefix: "/".into(), limit: 1000, after: None };
    let AnswerBody::Listing { entries, .. } =
        apply_one(&worker, instruction(10, "bob", "", all)).unwrap()
    else {
        panic!()
    };
    assert_eq!(entries.len(), 3);
    assert!(!store.list(LEDGER_PATH_PREFIX, None, 10).unwrap().is_empty());
}

#[test]
fn every_store_error_maps_to_its_protocol_code() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), StoreOptions { max_file_size: 10, ..store_options() });
    let (worker, _bus) = worker(&store, WorkerOptions::default());
    rev_of(&apply_one(&worker, instruction(1, "u", "k1", put("/f/a", "añb", None))));

    let conflict =
        apply_one(&worker, instruction(2, "u", "k2", put("/f/a", "x", Some(0)))).unwrap_err();
    assert_eq!((conflict.code, conflict.rev), (ErrorCode::Conflict, Some(1)));
    let patch = |at, delete| Operation::Patch {
        path: "/f/a".into(),
        at,
        delete,
        insert: Bytes::new(),
        if_rev: None,
    };
    let cases = vec![
        (put("/f/a", "01234567890", None), ErrorCode::TooLarge),
        (append("/f/a", "12345678"), ErrorCode::TooLarge),
        (patch(2, 0), ErrorCode::BadRequest),
        (patch(3, 9), ErrorCode::BadRequest),
        (
            Operation::Patch {
                path: "/f/none".into(),
                at: 0,
                delete: 0,
                insert: Bytes::new(),
                if_rev: None,
            },
            ErrorCode::NotFound,
        ),
        (Operation::Delete { path: "/f/none".into(), if_rev: None }, ErrorCode::NotFound),
        (Operation::Delete { path: "/f/a".into(), if_rev: Some(7) }, ErrorCode::Conflict),
        (get("/f/none"), ErrorCode::NotFound),
        (Operation::Stat { path: "/f/none".into() }, ErrorCode::NotFound),
        (get("no/slash"), ErrorCode::BadPath),
        (put("/a//b", "x", None), ErrorCode::BadPath),
        (Operation::List { prefix: "nope".into(), limit: 1, after: None }, ErrorCode::BadPath),
        (
            Operation::Custom { name: "unknown".into(), path: "/f/a".into(), args: json!({}) },
            ErrorCode::BadRequest,
        ),
    ];
    for (i, (op, expected)) in cases.into_iter().enumerate() {
        let what = format!("{op:?}");
        let result = apply_one(&worker, instruction(10 + i as u64, "u", &format!("c{i}"), op));
        assert_eq!(code(result), expected, "{what}");
    }
    // Nothing of the refused writes was applied.
    let AnswerBody::File(file) = apply_one(&worker, instruction(50, "u", "", get("/f/a"))).unwrap()
    else {
        panic!()
    };
    assert_eq!((file.rev, &file.content[..]), (1, "añb".as_bytes()));

    // The store's own failures.
    let io = StoreError::io("write", "/x", std::io::Error::other("disk on fire"));
    assert_eq!(store_error_body(&io).code, ErrorCode::Internal);
    assert_eq!(store_error_body(&StoreError::Closed).code, ErrorCode::Unavailable);
    let author = StoreError::AuthorTooLong { len: 300, max: 255 };
    assert_eq!(store_error_body(&author).code, ErrorCode::BadRequest);
}

#[test]
fn a_partition_this_process_does_not_serve_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_store(dir.path(), store_options()));
    let store = Arc::new(Store::open_partitions(dir.path(), &[0], store_options()).unwrap());
    let (worker, _bus) = worker(&store, WorkerOptions::default());
    let path = (0..100)
        .map(|i| format!("/p/{i}"))
        .find(|p| store.partition_of(&ferry_file_server::FilePath::parse(p).unwrap()) != 0)
        .unwrap();
    assert_eq!(
        code(apply_one(&worker, instruction(1, "u", "k", put(&path, "x", None)))),
        ErrorCode::Unavailable
    );
    assert_eq!(
        code(apply_one(&worker, instruction(2, "u", "", get(&path)))),
        ErrorCode::Unavailable
    );
}

#[test]
fn rights_are_checked_again_and_the_reserved_namespace_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), store_options());
    let (worker, _bus) = worker(&store, WorkerOptions::default());
    let as_alice = |id, op| {
        let mut i = instruction(id, "alice", &format!("k{id}"), op);
        i.rights =
            Arc::new(Rights { read: vec!["/home/".into()], write: vec!["/home/alice/".into()] });
        apply_one(&worker, i)
    };
    rev_of(&as_alice(1, put("/home/alice/x", "mine", None)));
    assert_eq!(code(as_alice(2, put("/home/bob/x", "yours", None))), ErrorCode::Forbidden);
    assert_eq!(code(as_alice(3, put("/etc/x", "no", None))), ErrorCode::Forbidden);
    let counter = Operation::Custom {
        name: "counter_increment".into(),
        path: "/home/bob/n".into(),
        args: json!({}),
    };
    assert_eq!(code(as_alice(4, counter)), ErrorCode::Forbidden);
    assert_eq!(code(as_alice(5, get("/etc/passwd"))), ErrorCode::Forbidden);
    assert_eq!(
        code(as_alice(6, Operation::List { prefix: "/".into(), limit: 5, after: None })),
        ErrorCode::Forbidden
    );
    assert_eq!(rev_of(&as_alice(7, get("/home/alice/x"))), 1);
    // Even a subject allowed everywhere may not touch Ferry's own files.
    let ledger = format!("{LEDGER_PATH_PREFIX}0");
    for op in [
        get(&ledger),
        put(&ledger, "x", None),
        Operation::List { prefix: "/.ferry-".into(), limit: 1, after: None },
    ] {
        assert_eq!(code(apply_one(&worker, instruction(8, "root", "r", op))), ErrorCode::Forbidden);
    }
    assert!(store
        .get(&ferry_file_server::FilePath::parse("/home/bob/x").unwrap())
        .unwrap()
        .is_none());
}

#[test]
fn a_repeated_key_is_applied_once_and_gets_the_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), store_options());
    let (worker, bus) = worker(&store, WorkerOptions::default());
    let events = subscribe(&*bus, Topic::Path("/home/a/log".into()));
    let first = apply_one(&worker, instruction(1, "alice", "retry-1", append("/home/a/log", "x")));
    assert_eq!(rev_of(&first), 1);
    // Repeated in a later batch, and twice within one batch.
    let again = apply_one(&worker, instruction(2, "alice", "retry-1", append("/home/a/log", "x")));
    assert_eq!(again, first);
    let answers = apply(
        &worker,
        vec![
            instruction(3, "alice", "retry-2", append("/home/a/log", "y")),
            instruction(4, "alice", "retry-2", append("/home/a/log", "y")),
            // The same key from another subject is another write.
            instruction(5, "bob", "retry-2", append("/home/a/log", "z")),
        ],
    );
    assert_eq!(answers[0].result, answers[1].result);
    assert_eq!(rev_of(&answers[0].result), 2);
    assert_eq!(rev_of(&answers[2].result), 3);
    let AnswerBody::File(file) =
        apply_one(&worker, instruction(6, "alice", "", get("/home/a/log"))).unwrap()
    else {
        panic!()
    };
    assert_eq!(&file.content[..], b"xyz");
    let revs: Vec<u64> = events.try_iter().map(|e| e.rev).collect();
    assert_eq!(revs, [1, 2, 3], "one event per applied write, none for repeats");
}

#[test]
fn an_idempotent_retry_after_a_store_reopen_gets_the_original_answer() {
    let dir = tempfile::tempdir().unwrap();
    // Small ledger slots, so that the retry's key sits in an older slot than the current one.
    let options =
        || WorkerOptions { ledger_slots: 4, keys_per_slot: 3, ..WorkerOptions::default() };
    let original = {
        let store = open_store(dir.path(), store_options());
        let (worker, _bus) = worker(&store, options());
        let original =
            apply_one(&worker, instruction(1, "alice", "once", append("/home/a/f", "A")));
        for i in 0..5 {
            let path = format!("/home/a/other{i}");
            rev_of(&apply_one(
                &worker,
                instruction(2 + i, "alice", &format!("o{i}"), put(&path, "x", None)),
            ));
        }
        drop(worker);
        Arc::try_unwrap(store).ok().expect("the worker let go of the store").close().unwrap();
        original
    };
    let store = Arc::new(Store::open(dir.path(), store_options()).unwrap());
    let (worker, bus) = worker(&store, options());
    let events = subscribe(&*bus, Topic::Prefix("/".into()));
    let retry = apply_one(&worker, instruction(10, "alice", "once", append("/home/a/f", "A")));
    assert_eq!(retry, original);
    let retry =
        apply_one(&worker, instruction(11, "alice", "o4", put("/home/a/other4", "x", None)));
    assert_eq!(rev_of(&retry), 1);
    assert_eq!(events.try_iter().count(), 0, "nothing applied, nothing published");
    let AnswerBody::File(file) =
        apply_one(&worker, instruction(12, "alice", "", get("/home/a/f"))).unwrap()
    else {
        panic!()
    };
    assert_eq!((file.rev, &file.content[..]), (1, &b"A"[..]));
}

#[test]
fn keys_beyond_the_ledger_window_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), store_options());
    let options = WorkerOptions { ledger_slots: 2, keys_per_slot: 2, ..WorkerOptions::default() };
    let (worker, _bus) = worker(&store, options);
    // All in one directory, hence one partition and one ledger.
    rev_of(&apply_one(&worker, instruction(1, "u", "old", append("/d/x/f", "a"))));
    for i in 0..4 {
        rev_of(&apply_one(
            &worker,
            instruction(2 + i, "u", &format!("n{i}"), append("/d/x/g", "b")),
        ));
    }
    // The window is 2 to 4 keys: "old" was the first of five, so it is gone and applies anew.
    assert_eq!(rev_of(&apply_one(&worker, instruction(9, "u", "old", append("/d/x/f", "a")))), 2);
    // The most recent is remembered.
    assert_eq!(rev_of(&apply_one(&worker, instruction(10, "u", "n3", append("/d/x/g", "b")))), 4);
}

#[test]
fn counter_increment_is_a_custom_op_with_events_and_idempotency() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), store_options());
    let bus = Arc::new(LocalBus::new(LocalBusOptions::default()));
    let options =
        WorkerOptions { custom_ops: vec![Arc::new(CounterIncrement)], ..WorkerOptions::default() };
    let worker = Worker::new(store.clone(), bus.clone(), None, options).unwrap();
    assert!(worker.is_custom_op("counter_increment"));
    assert!(!worker.is_custom_op("put"));
    let events = subscribe(&*bus, Topic::Path("/c/n".into()));
    let inc =
        |args| Operation::Custom { name: "counter_increment".into(), path: "/c/n".into(), args };
    assert_eq!(
        apply_one(&worker, instruction(1, "u", "i1", inc(json!({})))).unwrap(),
        AnswerBody::Custom { rev: Some(1), result: json!({"value": 1}) }
    );
    assert_eq!(
        apply_one(&worker, instruction(2, "u", "i2", inc(json!({"by": 5})))).unwrap(),
        AnswerBody::Custom { rev: Some(2), result: json!({"value": 6}) }
    );
    // A retry is not counted twice.
    assert_eq!(
        apply_one(&worker, instruction(3, "u", "i2", inc(json!({"by": 5})))).unwrap(),
        AnswerBody::Custom { rev: Some(2), result: json!({"value": 6}) }
    );
    assert_eq!(
        code(apply_one(&worker, instruction(4, "u", "i4", inc(json!({"by": "x"}))))),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(apply_one(&worker, instruction(5, "u", "i5", inc(json!({"step": 1}))))),
        ErrorCode::BadRequest
    );
    rev_of(&apply_one(&worker, instruction(6, "u", "i6", put("/c/n", "not a number", None))));
    assert_eq!(
        code(apply_one(&worker, instruction(7, "u", "i7", inc(json!({}))))),
        ErrorCode::BadRequest
    );
    let events: Vec<_> = events.try_iter().collect();
    assert_eq!(events.iter().map(|e| e.rev).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(events[1].change, ChangeOp::Put { content: Bytes::from("6") });
    assert_eq!(&*events[1].author, "u");
    // Registering a built-in name or the same name twice is refused.
    let twice = WorkerOptions {
        custom_ops: vec![Arc::new(CounterIncrement), Arc::new(CounterIncrement)],
        ..WorkerOptions::default()
    };
    assert!(Worker::new(store.clone(), bus.clone(), None, twice).is_err());
}

#[test]
fn each_instruction_gets_one_record_in_the_instruction_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir.path().join("data"), store_options());
    let config = ferry_logger::LoggerConfig {
        directory: dir.path().join("logs"),
        ..ferry_logger::LoggerConfig::default()
    };
    let logger = ferry_logger::start(&config, "node-t").unwrap();
    let bus = Arc::new(LocalBus::new(LocalBusOptions::default()));
    let worker =
        Worker::new(store.clone(), bus, Some(logger.instruction_log()), WorkerOptions::default())
            .unwrap();
    apply(
        &worker,
        vec![
            instruction(1, "u", "k1", put("/l/a", "x", None)),
            instruction(2, "u", "k2", put("/l/a", "x", Some(0))),
            instruction(3, "u", "", get("/l/a")),
        ],
    );
    logger.shutdown().unwrap();
    let text =
        std::fs::read_to_string(dir.path().join("logs").join(&config.instructions.file_name))
            .unwrap();
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["instruction_id"], 1);
    assert_eq!((lines[0]["op"].as_str(), lines[0]["revision"].as_u64()), (Some("put"), Some(1)));
    assert_eq!(lines[1]["outcome"], "error");
    assert_eq!(lines[1]["error_code"], "conflict");
    assert_eq!((lines[2]["op"].as_str(), lines[2]["path"].as_str()), (Some("get"), Some("/l/a")));
    assert_eq!(lines[2]["client_id"], "conn-u");
}

struct Panics;

impl ferry_instruction_worker::CustomOp for Panics {
    fn name(&self) -> &str {
        "panics"
    }

    fn apply(
        &self,
        _args: &serde_json::Value,
        _ctx: &mut ferry_instruction_worker::OpContext<'_>,
    ) -> Result<serde_json::Value, ferry_protocol::ErrorBody> {
        panic!("an application bug")
    }
}

#[test]
fn a_panicking_custom_op_is_an_internal_error_and_the_batch_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), store_options());
    let options = WorkerOptions { custom_ops: vec![Arc::new(Panics)], ..WorkerOptions::default() };
    let (worker, _bus) = worker(&store, options);
    let op = Operation::Custom { name: "panics".into(), path: "/p/a".into(), args: json!({}) };
    let answers = apply(
        &worker,
        vec![instruction(1, "u", "k1", op), instruction(2, "u", "k2", put("/p/a", "x", None))],
    );
    assert_eq!(answers[0].result.clone().unwrap_err().code, ErrorCode::Internal);
    assert_eq!(rev_of(&answers[1].result), 1);
}

#[test]
fn writes_without_a_key_are_not_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), store_options());
    let (worker, _bus) = worker(&store, WorkerOptions::default());
    let answers = apply(
        &worker,
        vec![
            instruction(1, "u", "", append("/n/a", "x")),
            instruction(2, "u", "", append("/n/a", "x")),
        ],
    );
    assert_eq!(answers.iter().map(|a| rev_of(&a.result)).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(rev_of(&apply_one(&worker, instruction(3, "u", "", append("/n/a", "x")))), 3);
}

#[test]
fn a_working_set_is_loaded_into_the_cache_and_released_within_the_subjects_rights() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path(), store_options());
    let (worker, _bus) = worker(&store, WorkerOptions::default());
    for i in 0..5 {
        rev_of(&apply_one(
            &worker,
            instruction(i, "alice", "", put(&format!("/home/alice/{i}"), "x", None)),
        ));
    }
    store.flush().unwrap();
    let working_set = |load| Operation::WorkingSet { prefix: "/home/alice/".into(), load };
    let as_alice = |id, op| {
        let mut i = instruction(id, "alice", "", op);
        i.rights = Arc::new(Rights { read: vec!["/home/alice/".into()], write: vec![] });
        apply_one(&worker, i)
    };
    let cached = || store.stats().iter().map(|p| p.cache_bytes).sum::<u64>();
    for id in [10, 12] {
        assert_eq!(as_alice(id, working_set(false)), Ok(AnswerBody::WorkingSet { files: 0 }));
        store.flush().unwrap();
        assert_eq!(cached(), 0, "released files left the cache");
        assert_eq!(as_alice(id + 1, working_set(true)), Ok(AnswerBody::WorkingSet { files: 5 }));
        assert!(cached() > 0, "the working set is in the cache");
    }
    let mut bob = instruction(14, "bob", "", working_set(true));
    bob.rights = Arc::new(Rights { read: vec!["/home/bob/".into()], write: vec![] });
    assert_eq!(code(apply_one(&worker, bob)), ErrorCode::Forbidden);
}
