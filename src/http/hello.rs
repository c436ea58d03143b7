//! `/hello/{username}`: save, greet, erase.

use super::AppState;
use super::body::{MAX_BODY_BYTES, decode_put_body, is_json_content_type};
use super::error::ApiError;
use crate::domain::{DateOfBirth, DomainError, Username, greeting};
use crate::trace::db_call;
use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use std::time::Instant;

/// The username from the path, validated. Any failure to read the segment
/// (such as percent-encoded bytes that are not UTF-8) is an invalid username:
/// 400 on every method, never 404.
pub struct User(pub Username);

impl<S: Send + Sync> FromRequestParts<S> for User {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::Invalid(DomainError::InvalidUsername))?;
        Ok(Self(Username::parse(&raw)?))
    }
}

#[derive(Serialize)]
pub struct Greeting {
    message: String,
}

pub async fn get(State(st): State<AppState>, User(user): User) -> Result<Json<Greeting>, ApiError> {
    let started = Instant::now();
    let found = db_call(st.store.backend(), "get", st.store.get(&user)).await;
    st.metrics
        .observe_db("get", started.elapsed(), found.is_ok());
    let dob = found?.ok_or(ApiError::UserNotFound)?;
    Ok(Json(Greeting {
        message: greeting(&user, &dob, (st.clock)()),
    }))
}

pub async fn put(
    State(st): State<AppState>,
    User(user): User,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_json_content_type(v.as_bytes()));
    if !json {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type must be application/json (charset=utf-8 or none)",
        ));
    }
    // A coded body (gzip...) read as plain JSON would be a different body
    // from the one a proxy or the client meant: refuse any coding.
    if headers.contains_key(header::CONTENT_ENCODING) {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Encoding is not supported; send the JSON body uncoded",
        ));
    }
    // `observe` has already read the body into memory within its deadline
    // and its size limit; the limit is kept here so the handler stays safe
    // on its own.
    let bytes = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::PayloadTooLarge(MAX_BODY_BYTES)
            } else {
                ApiError::BadBody("the request body could not be read".into())
            }
        })?;
    let decoded =
        decode_put_body(&bytes.to_bytes()).map_err(|e| ApiError::BadBody(e.to_string()))?;
    let dob = DateOfBirth::parse(&decoded.date_of_birth, (st.clock)())?;

    let started = Instant::now();
    let saved = db_call(st.store.backend(), "upsert", st.store.upsert(&user, dob)).await;
    st.metrics
        .observe_db("upsert", started.elapsed(), saved.is_ok());
    saved?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn delete(State(st): State<AppState>, User(user): User) -> Result<StatusCode, ApiError> {
    let started = Instant::now();
    let deleted = db_call(st.store.backend(), "delete", st.store.delete(&user)).await;
    st.metrics
        .observe_db("delete", started.elapsed(), deleted.is_ok());
    if deleted? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::UserNotFound)
    }
}

/// `/hello/` names no user: an invalid (empty) username, on every method.
pub async fn empty_username() -> ApiError {
    ApiError::Invalid(DomainError::InvalidUsername)
}
