//! The wire format: every request parses into its typed form, every malformed frame into a
//! typed error naming what was wrong, and answers and events serialize as documented.

use std::sync::Arc;

use bytes::Bytes;
use ferry_protocol::*;
use serde_json::{json, Value};

fn parse(text: &str) -> RequestFrame {
    parse_request(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn error(text: &str) -> RequestError {
    match parse_request(text) {
        Ok(frame) => panic!("{text} parsed as {frame:?}"),
        Err(e) => e,
    }
}

fn op(text: &str) -> (Operation, Option<String>) {
    match parse(text).request {
        Request::Instruction { op, key } => (op, key),
        other => panic!("{text}: not an instruction: {other:?}"),
    }
}

#[test]
fn every_builtin_op_parses() {
    let frame = parse(r#"{"op":"put","id":1,"path":"/a/b","content":"hi","if_rev":0,"key":"k"}"#);
    assert_eq!(frame.id, RequestId::from(1));
    assert_eq!(
        frame.request,
        Request::Instruction {
            op: Operation::Put { path: "/a/b".into(), content: Bytes::from("hi"), if_rev: Some(0) },
            key: Some("k".into())
        }
    );
    assert_eq!(
        op(r#"{"op":"append","id":"x","path":"/a","content_b64":"//79"}"#).0,
        Operation::Append { path: "/a".into(), content: Bytes::from_static(&[0xff, 0xfe, 0xfd]) }
    );
    assert_eq!(
        op(r#"{"op":"patch","id":2,"path":"/a","at":3,"delete":1,"insert":"é"}"#).0,
        Operation::Patch {
            path: "/a".into(),
            at: 3,
            delete: 1,
            insert: Bytes::from("é"),
            if_rev: None
        }
    );
    assert_eq!(
        op(r#"{"op":"delete","id":3,"path":"/a","if_rev":4}"#).0,
        Operation::Delete { path: "/a".into(), if_rev: Some(4) }
    );
    assert_eq!(op(r#"{"op":"get","id":4,"path":"/a"}"#).0, Operation::Get { path: "/a".into() });
    assert_eq!(op(r#"{"op":"stat","id":5,"path":"/a"}"#).0, Operation::Stat { path: "/a".into() });
    assert_eq!(
        op(r#"{"op":"list","id":6,"prefix":"/home/"}"#).0,
        Operation::List { prefix: "/home/".into(), limit: MAX_LIST_LIMIT, after: None }
    );
    assert_eq!(
        op(r#"{"op":"list","id":6,"prefix":"/","limit":2,"after":"/b"}"#).0,
        Operation::List { prefix: "/".into(), limit: 2, after: Some("/b".into()) }
    );
    assert_eq!(
        parse(r#"{"op":"sub","id":7,"path":"/a","since_rev":9}"#).request,
        Request::Sub { topic: Topic::Path("/a".into()), since_rev: Some(9) }
    );
    assert_eq!(
        parse(r#"{"op":"sub","id":7,"prefix":"/home/"}"#).request,
        Request::Sub { topic: Topic::Prefix("/home/".into()), since_rev: None }
    );
    assert_eq!(
        parse(r#"{"op":"unsub","id":8,"prefix":"/home/"}"#).request,
        Request::Unsub { topic: Topic::Prefix("/home/".into()) }
    );
}

#[test]
fn custom_ops_parse_only_when_registered() {
    let text = r#"{"op":"counter_increment","id":1,"path":"/c","by":2,"key":"k"}"#;
    let e = error(text);
    assert_eq!((e.code, e.id), (ErrorCode::BadRequest, Some(RequestId::from(1))));
    assert!(e.message.contains("unknown op \"counter_increment\""), "{}", e.message);
    let frame = parse_request_with(text, &|name| name == "counter_increment").unwrap();
    assert_eq!(
        frame.request,
        Request::Instruction {
            op: Operation::Custom {
                name: "counter_increment".into(),
                path: "/c".into(),
                args: json!({"by": 2})
            },
            key: Some("k".into())
        }
    );
    let e = parse_request_with(r#"{"op":"c","id":1}"#, &|_| true).unwrap_err();
    assert_eq!(e.message, "missing field `path`");
}

#[test]
fn malformed_frames_are_typed_errors_naming_the_problem() {
    let cases: &[(&str, Option<RequestId>, ErrorCode, &str)] = &[
        ("{not json", None, ErrorCode::BadRequest, "malformed JSON"),
        ("", None, ErrorCode::BadRequest, "malformed JSON"),
        ("[1,2]", None, ErrorCode::BadRequest, "must be a JSON object"),
        (r#"{"op":"get","path":"/a"}"#, None, ErrorCode::BadRequest, "missing field `id`"),
        (
            r#"{"op":"get","id":[1]}"#,
            None,
            ErrorCode::BadRequest,
            "`id` must be a string or a number",
        ),
        (r#"{"id":"a"}"#, Some("a".into()), ErrorCode::BadRequest, "missing field `op`"),
        (r#"{"id":1,"op":5}"#, Some(1.into()), ErrorCode::BadRequest, "`op` must be a string"),
        (
            r#"{"id":1,"op":"frobnicate"}"#,
            Some(1.into()),
            ErrorCode::BadRequest,
            "unknown op \"frobnicate\"",
        ),
        (r#"{"id":1,"op":"get"}"#, Some(1.into()), ErrorCode::BadRequest, "missing field `path`"),
        (
            r#"{"id":1,"op":"get","path":7}"#,
            Some(1.into()),
            ErrorCode::BadRequest,
            "field `path` must be a string",
        ),
        (
            r#"{"id":1,"op":"get","path":"a/b"}"#,
            Some(1.into()),
            ErrorCode::BadPath,
            "field `path`: path \"a/b\" does not start with '/'",
        ),
        (
            r#"{"id":1,"op":"get","path":"/a/../b"}"#,
            Some(1.into()),
            ErrorCode::BadPath,
            "'..' segment",
        ),
        (
            r#"{"id":1,"op":"get","path":"/a","x":1}"#,
            Some(1.into()),
            ErrorCode::BadRequest,
            "unknown field `x` for op \"get\"",
        ),
        (
            r#"{"id":1,"op":"put","path":"/a"}"#,
            Some(1.into()),
            ErrorCode::BadRequest,
            "missing field `content` (or `content_b64`)",
        ),
        (
            r#"{"id":1,"op":"put","path":"/a","content":"x","content_b64":"eA=="}"#,
            Some(1.into()),
            ErrorCode::BadRequest,
            "not both",
        ),
        (
            r#"{"id":1,"op":"put","path":"/a","content_b64":"%%%"}"#,
            Some(1.into()),
            ErrorCode::BadRequest,
            "`content_b64` is not valid base64",
        ),
        (
            r#"{"id":1,"op":"put","path":"/a","content":"x","if_rev":-1}"#,
            Some(1.into()),
            ErrorCode::BadRequest,
            "`if_rev` must be a non-negative integer",
        ),
        (
            r#"{"id":1,"op":"put","path":"/a","content":"x","if_rev":1.5}"#,
            Some(1.into()),
            ErrorCode::BadRequest,
            "`if_rev` must be a non-negative integer",
        ),
        (
            r#"{"id":1,"op":"put","path":"/a","content":"x","key":""}"#,
            Some(1.into()),
            ErrorCode::BadRequest,
            "`key` is 0 bytes",
        ),
        (
            r#"{"id":1,"op":"patch","path":"/a","at":"3","delete":0,"insert":""}"#,
            Some(1.into()),
            ErrorCode::BadRequest,
            "field `at` must be a non-negative integer",
        ),
        (
            r#"{"id":1,"op":"patch","path":"/a","at":3,"insert":""}"#,
            Some(1.into()),
            ErrorCode::BadRequest,
            "missing field `delete`",
        ),
        (
            r#"{"id":1,"op":"list","prefix":"home"}"#,
            Some(1.into()),
            ErrorCode::BadPath,
            "does not start with '/'",
        ),
        (
            r#"{"id":1,"op":"list","prefix":"/","limit":0}"#,
            Some(1.into()),
            ErrorCode::BadRequest,
            "`limit` is 0",
        ),
        (
            r#"{"id":1,"op":"sub","prefix":"/","since_rev":1}"#,
            Some(1.into()),
            ErrorCode::BadRequest,
            "`since_rev` is allowed with `path` only",
        ),
        (
            r#"{"id":1,"op":"sub","path":"/a","prefix":"/"}"#,
            Some(1.into()),
            ErrorCode::BadRequest,
            "not both",
        ),
        (
            r#"{"id":1,"op":"unsub"}"#,
            Some(1.into()),
            ErrorCode::BadRequest,
            "missing field `path` or `prefix`",
        ),
    ];
    for (text, id, code, needle) in cases {
        let e = error(text);
        assert_eq!((&e.id, e.code), (id, *code), "{text}: {e}");
        assert!(e.message.contains(needle), "{text}: {:?} lacks {needle:?}", e.message);
    }
}

#[test]
fn error_answers_carry_the_id_when_known() {
    let e = error("{oops");
    let v: Value = serde_json::from_str(&e.to_json()).unwrap();
    assert!(v.get("id").is_none());
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["code"], "bad_request");
    let e = error(r#"{"id":"q","op":"nope"}"#);
    let v: Value = serde_json::from_str(&e.to_json()).unwrap();
    assert_eq!(v["id"], "q");
}

#[test]
fn answers_serialize_as_documented() {
    let id = RequestId::from(9);
    let as_json = |body: AnswerBody| -> Value {
        let answer = Answer { instruction_id: 1, request_id: id.clone(), result: Ok(body) };
        serde_json::from_str(&answer_json(&answer)).unwrap()
    };
    assert_eq!(as_json(AnswerBody::Written { rev: 3 }), json!({"id":9,"ok":true,"rev":3}));
    let file = FileBody {
        path: Arc::from("/a"),
        rev: 2,
        content: Bytes::from("hé"),
        mtime_ms: 5,
        author: Arc::from("al\"ice"),
    };
    assert_eq!(
        as_json(AnswerBody::File(file.clone())),
        json!({
            "id": 9, "ok": true, "rev": 2, "path": "/a", "content": "hé", "size": 3, "mtime": 5,
            "author": "al\"ice"
        })
    );
    let binary = FileBody { content: Bytes::from_static(&[0xff, 0xfe, 0xfd]), ..file };
    assert_eq!(as_json(AnswerBody::File(binary))["content_b64"], "//79");
    let meta =
        MetaBody { path: Arc::from("/a"), rev: 2, size: 3, mtime_ms: 5, author: Arc::from("a") };
    assert_eq!(
        as_json(AnswerBody::Meta(meta)),
        json!({"id":9,"ok":true,"rev":2,"path":"/a","size":3,"mtime":5,"author":"a"})
    );
    let entries = vec![ListEntry { path: Arc::from("/a"), rev: 1, size: 2, mtime_ms: 3 }];
    assert_eq!(
        as_json(AnswerBody::Listing { entries, next: Some("/a".into()) }),
        json!({"id":9,"ok":true,"entries":[{"path":"/a","rev":1,"size":2,"mtime":3}],"next":"/a"})
    );
    assert_eq!(
        as_json(AnswerBody::Custom { rev: Some(4), result: json!({"value":1}) }),
        json!({"id":9,"ok":true,"rev":4,"result":{"value":1}})
    );
    assert_eq!(as_json(AnswerBody::Subscribed { rev: Some(0) }), json!({"id":9,"ok":true,"rev":0}));
    assert_eq!(as_json(AnswerBody::Unsubscribed), json!({"id":9,"ok":true}));
    let conflict = Answer {
        instruction_id: 1,
        request_id: RequestId::from("c"),
        result: Err(ErrorBody { code: ErrorCode::Conflict, message: "m".into(), rev: Some(7) }),
    };
    assert_eq!(
        serde_json::from_str::<Value>(&answer_json(&conflict)).unwrap(),
        json!({"id":"c","ok":false,"error":{"code":"conflict","message":"m"},"rev":7})
    );
}

#[test]
fn events_serialize_as_documented() {
    let event = |change| ChangeEvent {
        path: Arc::from("/a"),
        rev: 4,
        change,
        author: Arc::from("bob"),
        ts_ms: 99,
        partition: 3,
    };
    let as_json = |e: &ChangeEvent| serde_json::from_str::<Value>(&change_event_json(e)).unwrap();
    assert_eq!(
        as_json(&event(ChangeOp::Put { content: Bytes::from("x") })),
        json!({
            "event": "change", "path": "/a", "rev": 4, "op": "put", "content": "x",
            "author": "bob", "ts": 99
        })
    );
    assert_eq!(
        as_json(&event(ChangeOp::Append { content: Bytes::from_static(&[0xff]) }))["content_b64"],
        "/w=="
    );
    assert_eq!(
        as_json(&event(ChangeOp::Patch { at: 1, delete: 2, insert: Bytes::from("y") })),
        json!({
            "event": "change", "path": "/a", "rev": 4, "op": "patch", "at": 1, "delete": 2,
            "insert": "y", "author": "bob", "ts": 99
        })
    );
    assert_eq!(
        as_json(&event(ChangeOp::Delete)),
        json!({"event":"change","path":"/a","rev":4,"op":"delete","author":"bob","ts":99})
    );
    assert_eq!(
        serde_json::from_str::<Value>(&snapshot_json("/a", 7, Some(b"whole"))).unwrap(),
        json!({"event":"snapshot","path":"/a","rev":7,"content":"whole"})
    );
    assert_eq!(
        serde_json::from_str::<Value>(&snapshot_json("/a", 8, None)).unwrap(),
        json!({"event":"snapshot","path":"/a","rev":8,"deleted":true})
    );
}

#[test]
fn internal_messages_round_trip_through_serde() {
    let instruction = Instruction {
        id: 77,
        client_id: Arc::from("conn-1"),
        request_id: RequestId::from("r"),
        subject: Arc::from("alice"),
        rights: Arc::new(Rights { read: vec!["/".into()], write: vec!["/home/alice/".into()] }),
        key: "k".into(),
        op: Operation::Patch {
            path: "/home/alice/a".into(),
            at: 1,
            delete: 0,
            insert: Bytes::from_static(&[0, 1, 0xff]),
            if_rev: Some(3),
        },
        received_at_us: 123,
    };
    let text = serde_json::to_string(&instruction).unwrap();
    assert_eq!(serde_json::from_str::<Instruction>(&text).unwrap(), instruction);
    let custom = Operation::Custom { name: "c".into(), path: "/x".into(), args: json!({"by":1}) };
    let text = serde_json::to_string(&custom).unwrap();
    assert_eq!(serde_json::from_str::<Operation>(&text).unwrap(), custom);
    let answer = Answer {
        instruction_id: 77,
        request_id: RequestId::from(5),
        result: Err(ErrorBody::new(ErrorCode::Busy, "full")),
    };
    let text = serde_json::to_string(&answer).unwrap();
    assert_eq!(serde_json::from_str::<Answer>(&text).unwrap(), answer);
    let event = ChangeEvent {
        path: Arc::from("/a"),
        rev: 1,
        change: ChangeOp::Append { content: Bytes::from("z") },
        author: Arc::from("al"),
        ts_ms: 1,
        partition: 0,
    };
    let text = serde_json::to_string(&event).unwrap();
    assert_eq!(serde_json::from_str::<ChangeEvent>(&text).unwrap(), event);
}

#[test]
fn rights_cover_paths_by_prefix_and_topics_match() {
    let rights = Rights { read: vec!["/".into()], write: vec!["/home/alice/".into()] };
    assert!(rights.may_read("/anything"));
    assert!(rights.may_write("/home/alice/x"));
    assert!(!rights.may_write("/home/alicia/x"));
    assert!(!rights.may_write("/home/"));
    assert!(!Rights::default().may_read("/"));
    assert!(Topic::Prefix("/home/".into()).matches("/home/a"));
    assert!(!Topic::Path("/home/a".into()).matches("/home/ab"));
    assert!(is_reserved("/.ferry-idem-3"));
    assert!(!is_reserved("/ferry"));
}

use proptest::strategy::Strategy as _;

const OPS: [&str; 10] =
    ["put", "append", "patch", "delete", "get", "stat", "list", "sub", "unsub", "x"];
const FIELDS: [&str; 13] = [
    "id",
    "path",
    "prefix",
    "content",
    "content_b64",
    "at",
    "delete",
    "insert",
    "if_rev",
    "key",
    "limit",
    "after",
    "since_rev",
];

proptest::proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        let _ = parse_request(&text);
    }

    #[test]
    fn arbitrary_objects_never_panic(
        op in proptest::sample::select(OPS.to_vec()),
        fields in proptest::collection::vec(
            (proptest::sample::select(FIELDS.to_vec()),
             proptest::prop_oneof![
                proptest::strategy::Just(json!(null)),
                proptest::num::i64::ANY.prop_map(|n| json!(n)),
                ".{0,8}".prop_map(|s| json!(s)),
                proptest::strategy::Just(json!("/a/b")),
                proptest::strategy::Just(json!([1])),
             ]),
            0..8),
    ) {
        let mut map = serde_json::Map::new();
        map.insert("op".into(), json!(op));
        for (k, v) in fields {
            map.insert(k.into(), v);
        }
        let text = Value::Object(map).to_string();
        if let Err(e) = parse_request(&text) {
            let v: Value = serde_json::from_str(&e.to_json()).unwrap();
            proptest::prop_assert_eq!(&v["ok"], &json!(false));
        }
    }
}
