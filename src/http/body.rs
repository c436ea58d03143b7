//! The `PUT /hello/{username}` body: a JSON object with exactly the field
//! `dateOfBirth`, a string. Decoded strictly so a typo is an error, not a
//! silently ignored field.

use serde::Deserialize;

/// Largest accepted body. A valid one is about 30 bytes.
pub const MAX_BODY_BYTES: usize = 4096;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    #[serde(rename = "dateOfBirth")]
    pub date_of_birth: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("the body is empty; expected {{\"dateOfBirth\": \"YYYY-MM-DD\"}}")]
    Empty,
    #[error("the body must be a JSON object {{\"dateOfBirth\": \"YYYY-MM-DD\"}}")]
    NotAnObject,
    #[error("invalid JSON body: {0}")]
    Json(String),
}

pub fn decode_put_body(bytes: &[u8]) -> Result<PutBody, BodyError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err(BodyError::Empty),
        // serde would also accept a JSON array for a struct; only objects are.
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| BodyError::Json(e.to_string())),
        Some(_) => Err(BodyError::NotAnObject),
    }
}

/// Whether a Content-Type header names JSON: `application/json`, any case.
/// A `charset` parameter is allowed only if it is `utf-8` (JSON is UTF-8,
/// RFC 8259; a UTF-16 body would be read as different bytes); other
/// parameters are ignored.
pub fn is_json_content_type(value: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(value) else {
        return false;
    };
    let mut parts = s.split(';');
    let essence = parts.next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        && parts.all(|param| {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            !name.trim().eq_ignore_ascii_case("charset")
                || value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_one_shape() {
        let b = decode_put_body(br#" {"dateOfBirth": "1990-09-16"} "#).unwrap();
        assert_eq!(b.date_of_birth, "1990-09-16");
    }

    #[test]
    fn refuses_everything_else() {
        for (raw, want_kind) in [
            (&b""[..], "empty"),
            (b"   ", "empty"),
            (b"[\"1990-09-16\"]", "object"),
            (b"\"1990-09-16\"", "object"),
            (b"null", "object"),
            (b"{}", "json"),
            (b"{\"dateOfBirth\": 19900916}", "json"),
            (b"{\"dateOfBirth\": null}", "json"),
            (b"{\"dateOfBirth\": \"1990-09-16\", \"x\": 1}", "json"),
            (b"{\"dateofbirth\": \"1990-09-16\"}", "json"),
            (b"{\"dateOfBirth\": \"1990-09-16\"", "json"),
            (b"{\"dateOfBirth\": \"1990-09-16\"} {}", "json"),
            (
                b"{\"dateOfBirth\": \"1990-09-16\", \"dateOfBirth\": \"1990-09-17\"}",
                "json",
            ),
            (b"{\"dateOfBirth\": \"\xff\"}", "json"),
        ] {
            let err = decode_put_body(raw).unwrap_err();
            let kind = match err {
                BodyError::Empty => "empty",
                BodyError::NotAnObject => "object",
                BodyError::Json(_) => "json",
            };
            assert_eq!(kind, want_kind, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn content_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(is_json_content_type(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "text/plain",
            "application/jsonx",
            "application/x-www-form-urlencoded",
            "json",
            "application/json; charset=utf-16",
            "application/json; charset=iso-8859-1",
            "application/json; charset=utf-8; charset=utf-16",
        ] {
            assert!(!is_json_content_type(bad.as_bytes()), "{bad}");
        }
    }
}
