//! Every failure the API can answer with, mapped in one place to a status and
//! an RFC 9457 `application/problem+json` body. Internal details are logged,
//! never sent.

use crate::domain::DomainError;
use crate::store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] DomainError),
    #[error("{0}")]
    BadBody(String),
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    #[error("{0}")]
    AmbiguousRequest(&'static str),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("no user with that username")]
    UserNotFound,
    #[error("no such route")]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the server is at capacity; retry shortly")]
    Overloaded,
    #[error("the request took too long; retry shortly")]
    Timeout,
    #[error("not ready: {0}")]
    NotReady(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error")]
    Internal,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
}

impl ApiError {
    /// (status, problem type slug, title)
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            Self::Invalid(DomainError::InvalidUsername) => {
                (S::BAD_REQUEST, "invalid-username", "Invalid username")
            }
            Self::Invalid(_) => (
                S::BAD_REQUEST,
                "invalid-date-of-birth",
                "Invalid date of birth",
            ),
            Self::BadBody(_) => (S::BAD_REQUEST, "invalid-body", "Invalid request body"),
            Self::AmbiguousRequest(_) => (S::BAD_REQUEST, "bad-request", "Bad request"),
            Self::BodyTimeout => (S::REQUEST_TIMEOUT, "body-timeout", "Request body timed out"),
            Self::UnsupportedMediaType(_) => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            Self::PayloadTooLarge(_) => (
                S::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
            ),
            Self::UserNotFound => (S::NOT_FOUND, "user-not-found", "User not found"),
            Self::RouteNotFound => (S::NOT_FOUND, "not-found", "Not found"),
            Self::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Self::Overloaded => (S::SERVICE_UNAVAILABLE, "overloaded", "Service overloaded"),
            Self::Timeout => (S::SERVICE_UNAVAILABLE, "timeout", "Request timed out"),
            Self::NotReady(_) => (S::SERVICE_UNAVAILABLE, "not-ready", "Not ready"),
            Self::Store(StoreError::Unavailable(_)) => (
                S::SERVICE_UNAVAILABLE,
                "database-unavailable",
                "Database unavailable",
            ),
            Self::Store(StoreError::Full(_)) => {
                (S::INSUFFICIENT_STORAGE, "storage-full", "Storage full")
            }
            Self::Store(StoreError::Internal(_)) | Self::Internal => (
                S::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }

    /// What the client may read. Store errors carry driver messages, which
    /// stay in the logs.
    fn detail(&self) -> String {
        match self {
            Self::Store(StoreError::Unavailable(_)) => {
                "the database did not answer; retry shortly".into()
            }
            Self::Store(StoreError::Full(_)) => {
                "the server cannot store more data right now; reads still work".into()
            }
            Self::Store(StoreError::Internal(_)) | Self::Internal => {
                "an internal error occurred; it has been logged".into()
            }
            other => other.to_string(),
        }
    }
}

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER: HeaderValue = HeaderValue::from_static("1");

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        if let Self::Store(e) = &self {
            match e {
                StoreError::Internal(_) => tracing::error!(error = %e.chain(), "database error"),
                other => tracing::warn!(error = %other.chain(), "database call failed"),
            }
        }
        let body = Problem {
            kind: format!("urn:hello-birthday:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail: self.detail(),
        };
        let mut resp = (
            status,
            serde_json::to_string(&body).expect("serialising a problem"),
        )
            .into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, RETRY_AFTER);
        }
        if matches!(
            self,
            Self::AmbiguousRequest(_) | Self::BodyTimeout | Self::PayloadTooLarge(_)
        ) {
            // The rest of the request cannot be trusted, has not arrived or
            // will not be read: reading on would misframe the next one.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
