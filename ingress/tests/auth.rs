//! Tokens at the handshake, and the rights they carry on every request.

mod common;

use common::{start, within};
use ferry_ingress::auth::unix_now_secs;
use ferry_ingress::client::{Client, ClientError};
use ferry_ingress::{issue_token, Authenticator, Claims, IngressOptions};
use serde_json::json;

const SECRET: &[u8] = b"test-secret-test-secret-test-secret";

fn token(sub: &str, read: &[&str], write: &[&str], exp: u64) -> String {
    let claims = Claims {
        sub: sub.to_owned(),
        read: read.iter().map(|s| s.to_string()).collect(),
        write: write.iter().map(|s| s.to_string()).collect(),
        exp,
    };
    issue_token(SECRET, &claims).unwrap()
}

fn refused_status(result: Result<Client, ClientError>) -> (u16, String) {
    match result {
        Err(ClientError::Refused { status, body, .. }) => (status, body),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_forged_and_expired_tokens_get_401() {
    let node = start(IngressOptions::default(), Authenticator::hs256(SECRET)).await;
    let (status, body) = refused_status(node.client_with(None, None).await);
    assert_eq!(status, 401);
    assert!(body.contains("missing token"), "{body}");
    let forged = issue_token(
        b"some-other-secret-some-other",
        &Claims {
            sub: "eve".into(),
            read: vec!["/".into()],
            write: vec!["/".into()],
            exp: unix_now_secs() + 60,
        },
    )
    .unwrap();
    let (status, body) = refused_status(node.client_with(Some(&forged), None).await);
    assert_eq!(status, 401);
    assert!(body.contains("invalid token"), "{body}");
    let expired = token("alice", &["/"], &["/"], unix_now_secs() - 3600);
    let (status, body) = refused_status(node.client_with(Some(&expired), None).await);
    assert_eq!(status, 401);
    assert!(body.contains("expired"), "{body}");
    let (status, _) = refused_status(node.client_with(Some("garbage"), None).await);
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_query_works_like_the_header() {
    let node = start(IngressOptions::default(), Authenticator::hs256(SECRET)).await;
    let alice = token("alice", &["/"], &["/home/alice/"], unix_now_secs() + 600);
    let client = Client::connect(&format!("{}?token={alice}", node.url), None).await.unwrap();
    assert_eq!(client.put("/home/alice/q", "via query").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rights_limit_every_request_and_the_subject_is_the_author() {
    let node = start(IngressOptions::default(), Authenticator::hs256(SECRET)).await;
    let alice = node
        .client_with(
            Some(&token(
                "alice",
                &["/home/", "/shared/"],
                &["/home/alice/"],
                unix_now_secs() + 600,
            )),
            None,
        )
        .await
        .unwrap();
    let bob = node
        .client_with(Some(&token("bob", &["/home/"], &["/home/bob/"], unix_now_secs() + 600)), None)
        .await
        .unwrap();
    assert_eq!(alice.put("/home/alice/notes", "mine").await.unwrap(), 1);
    let denied = bob.put("/home/alice/notes", "bob was here").await.unwrap_err();
    assert_eq!(denied.code(), Some("forbidden"));
    assert!(denied.to_string().contains("bob may not write"), "{denied}");
    // bob may read it, and the author is the token's subject.
    let got = bob.get("/home/alice/notes").await.unwrap();
    assert_eq!((got["content"].as_str(), got["author"].as_str()), (Some("mine"), Some("alice")));
    assert_eq!(bob.get("/shared/x").await.unwrap_err().code(), Some("forbidden"));
    assert_eq!(bob.sub("/shared/x", None).await.unwrap_err().code(), Some("forbidden"));
    assert_eq!(
        bob.call(json!({"op": "list", "prefix": "/"})).await.unwrap_err().code(),
        Some("forbidden")
    );
    // Refusals leave the connection usable.
    assert_eq!(bob.put("/home/bob/x", "ok").await.unwrap(), 1);
    let mut watcher = node
        .client_with(Some(&token("carol", &["/home/"], &[], unix_now_secs() + 600)), None)
        .await
        .unwrap();
    watcher.sub("/home/bob/x", Some(0)).await.unwrap();
    let event = within(watcher.next_event()).await.unwrap();
    assert_eq!((event.rev, event.raw["author"].as_str()), (1, Some("bob")));
    assert_eq!(watcher.put("/home/carol/x", "no").await.unwrap_err().code(), Some("forbidden"));
}
