//! What the HTTP service answers when a request fails: a status and a JSON error body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::StoreError;
use crate::path::PathError;

/// Why a request failed. Each variant is one `code` of the JSON error body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// No such file, a reserved one, or no such route.
    #[error("{what}")]
    NotFound { what: String },
    #[error("bad path: {0}")]
    BadPath(#[from] PathError),
    #[error("bad prefix: {what}")]
    BadPrefix { what: String },
    #[error("{what}")]
    BadRequest { what: String },
    #[error("reading the store failed: {0}")]
    Store(#[from] StoreError),
    #[error("a read task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl HttpError {
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::NotFound { .. } => "not_found",
            HttpError::BadPath(_) | HttpError::BadPrefix { .. } => "bad_path",
            HttpError::BadRequest { .. } => "bad_request",
            HttpError::Store(_) | HttpError::Task(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::NotFound { .. } => StatusCode::NOT_FOUND,
            HttpError::BadPath(_) | HttpError::BadPrefix { .. } | HttpError::BadRequest { .. } => {
                StatusCode::BAD_REQUEST
            }
            HttpError::Store(_) | HttpError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(serde::Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "file-server http request failed");
        }
        let body =
            ErrorBody { error: ErrorDetail { code: self.code(), message: self.to_string() } };
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_code_and_status() {
        let bad = HttpError::from(crate::FilePath::parse("/a//b").unwrap_err());
        assert_eq!((bad.code(), bad.status()), ("bad_path", StatusCode::BAD_REQUEST));
        assert!(bad.to_string().contains("empty segment"), "{bad}");
        let missing = HttpError::NotFound { what: "no file /x".into() };
        assert_eq!((missing.code(), missing.status()), ("not_found", StatusCode::NOT_FOUND));
        let broken = HttpError::from(StoreError::Closed);
        assert_eq!(
            (broken.code(), broken.status()),
            ("internal", StatusCode::INTERNAL_SERVER_ERROR)
        );
    }
}
