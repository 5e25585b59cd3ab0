//! The bodies of Ferry's AMQP and Redis messages: MessagePack (`rmp-serde`, field names kept so
//! that a reader in another language can decode them) behind one format byte, so that a later
//! format can be told apart from this one.
//!
//! - an instruction message carries several instructions of one partition from one ingress,
//!   in the order the ingress received them;
//! - an answer message carries answers for one ingress node, to one or more instruction
//!   messages (of any partitions); the ingress matches them by instruction id;
//! - a change event travels alone (Redis pub/sub and history).

use ferry_protocol::{Answer, ChangeEvent, Instruction};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The first byte of every body this version writes.
pub const FORMAT_V1: u8 = 1;

/// Why a message body could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("empty {what} message")]
    Empty { what: &'static str },
    #[error("{what} message has format {found}, this build reads format {FORMAT_V1}")]
    UnknownFormat { what: &'static str, found: u8 },
    #[error("decoding a {what} message: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: rmp_serde::decode::Error,
    },
    #[error("encoding a {what} message: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: rmp_serde::encode::Error,
    },
}

fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_V1];
    rmp_serde::encode::write_named(&mut out, value)
        .map_err(|source| CodecError::Encode { what, source })?;
    Ok(out)
}

fn decode<T: DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, CodecError> {
    match body.split_first() {
        None => Err(CodecError::Empty { what }),
        Some((&FORMAT_V1, rest)) => {
            rmp_serde::from_slice(rest).map_err(|source| CodecError::Decode { what, source })
        }
        Some((&found, _)) => Err(CodecError::UnknownFormat { what, found }),
    }
}

pub fn encode_instructions(batch: &[Instruction]) -> Result<Vec<u8>, CodecError> {
    encode("instruction", batch)
}

pub fn decode_instructions(body: &[u8]) -> Result<Vec<Instruction>, CodecError> {
    decode("instruction", body)
}

pub fn encode_answers(batch: &[Answer]) -> Result<Vec<u8>, CodecError> {
    encode("answer", batch)
}

pub fn decode_answers(body: &[u8]) -> Result<Vec<Answer>, CodecError> {
    decode("answer", body)
}

pub fn encode_event(event: &ChangeEvent) -> Result<Vec<u8>, CodecError> {
    encode("change event", event)
}

pub fn decode_event(body: &[u8]) -> Result<ChangeEvent, CodecError> {
    decode("change event", body)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ferry_protocol::{
        AnswerBody, ChangeOp, ErrorBody, ErrorCode, FileBody, Operation, RequestId, Rights,
    };

    use super::*;

    fn instruction(id: u64, op: Operation) -> Instruction {
        Instruction {
            id,
            client_id: "c1".into(),
            request_id: if id.is_multiple_of(2) {
                RequestId::from(id)
            } else {
                RequestId::from("r")
            },
            subject: "alice".into(),
            rights: Arc::new(Rights::all()),
            key: format!("k{id}"),
            op,
            received_at_us: 17,
        }
    }

    #[test]
    fn instructions_round_trip_with_binary_content_and_custom_args() {
        let batch = vec![
            instruction(
                1,
                Operation::Put { path: "/a".into(), content: vec![0, 255, 1].into(), if_rev: None },
            ),
            instruction(
                2,
                Operation::Patch {
                    path: "/a".into(),
                    at: 1,
                    delete: 2,
                    insert: "é".into(),
                    if_rev: Some(3),
                },
            ),
            instruction(
                3,
                Operation::Custom {
                    name: "counter".into(),
                    path: "/c".into(),
                    args: serde_json::json!({"by": -2, "f": 1.5, "s": ["x"]}),
                },
            ),
            instruction(4, Operation::List { prefix: "/".into(), limit: 10, after: None }),
        ];
        let body = encode_instructions(&batch).unwrap();
        assert_eq!(body[0], FORMAT_V1);
        assert_eq!(decode_instructions(&body).unwrap(), batch);
    }

    #[test]
    fn answers_and_events_round_trip() {
        let answers = vec![
            Answer {
                instruction_id: 9,
                request_id: RequestId::from("x"),
                result: Ok(AnswerBody::File(FileBody {
                    path: "/a".into(),
                    rev: 4,
                    content: "hi".into(),
                    mtime_ms: 5,
                    author: "bob".into(),
                })),
            },
            Answer {
                instruction_id: 10,
                request_id: RequestId::from(10),
                result: Err(ErrorBody {
                    code: ErrorCode::Conflict,
                    message: "m".into(),
                    rev: Some(2),
                }),
            },
        ];
        assert_eq!(decode_answers(&encode_answers(&answers).unwrap()).unwrap(), answers);
        let event = ChangeEvent {
            path: "/a".into(),
            rev: 7,
            change: ChangeOp::Delete,
            author: "bob".into(),
            ts_ms: 1,
            partition: 3,
        };
        assert_eq!(decode_event(&encode_event(&event).unwrap()).unwrap(), event);
    }

    #[test]
    fn bad_bodies_are_typed_errors() {
        assert!(matches!(decode_instructions(&[]), Err(CodecError::Empty { .. })));
        assert!(matches!(
            decode_answers(&[9, 1, 2]),
            Err(CodecError::UnknownFormat { found: 9, .. })
        ));
        let err = decode_event(&[FORMAT_V1, 0xc1]).unwrap_err();
        assert!(err.to_string().starts_with("decoding a change event message"), "{err}");
    }
}
