//! Turning raw request parts into checked domain values, with the error a client should see
//! for each way they can be wrong. Parsing is done by hand (not by axum's `Json`/`Query`
//! rejections) so every mistake gets the same JSON error shape and a precise message.

use std::sync::Arc;

use axum::extract::Path;
use axum::extract::Query;
use axum::extract::rejection::PathRejection;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::StatusCode;
use bytes::Bytes;
use kv_common::ErrorCode;
use serde_json::value::RawValue;

use super::error::ApiError;
use crate::store::model::{
    KeyError, MAX_VALUE_DEPTH, ValueProblem, check_new_value, parse_count, parse_version,
    validate_key,
};

pub type KeyPath = Result<Path<String>, PathRejection>;
pub type Params = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The percent-decoded key of `/{route}/{key}`.
pub fn key(path: KeyPath) -> Result<String, ApiError> {
    let Path(key) = path.map_err(|e| {
        ApiError::bad_request(ErrorCode::InvalidKey, format!("Invalid key in path: {e}"))
    })?;
    validate_key(&key).map_err(|e| match e {
        KeyError::Empty => ApiError::bad_request(ErrorCode::EmptyKey, e.to_string()),
        KeyError::TooLong(_) => ApiError::new(
            StatusCode::URI_TOO_LONG,
            ErrorCode::KeyTooLong,
            e.to_string(),
        ),
    })?;
    Ok(key)
}

/// Query parameters as pairs; a repeated parameter takes its last value, as the seed did.
pub struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub fn from(params: Params) -> Result<QueryParams, ApiError> {
        let Query(pairs) = params.map_err(|e| {
            ApiError::bad_request(
                ErrorCode::InvalidQuery,
                format!("Invalid query string: {e}"),
            )
        })?;
        Ok(QueryParams(pairs))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `?version=N`: 1 to i64::MAX.
    pub fn version(&self) -> Result<Option<u64>, ApiError> {
        self.get("version")
            .map(|raw| {
                parse_version(raw).map_err(|msg| {
                    ApiError::bad_request(
                        ErrorCode::InvalidVersion,
                        format!("Invalid version: {msg}"),
                    )
                })
            })
            .transpose()
    }

    /// A count parameter (`after`, `if_version`): 0 to i64::MAX.
    pub fn count(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.get(name)
            .map(|raw| {
                parse_count(raw).map_err(|msg| {
                    ApiError::bad_request(ErrorCode::InvalidQuery, format!("Invalid {name}: {msg}"))
                })
            })
            .transpose()
    }
}

/// The `value` of a put body, as JSON text exactly as sent.
pub fn put_value(
    body: Result<Bytes, BytesRejection>,
    max_value_bytes: usize,
) -> Result<Arc<str>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::ValueTooLarge,
            format!("Value is larger than the limit of {max_value_bytes} bytes"),
        )
    };
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::bad_request(ErrorCode::InvalidBody, format!("Cannot read body: {e}"))
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidBody,
            r#"Request body is required: {"value": <any JSON value>}"#,
        ));
    }
    // serde would happily read a struct from an array (`[1]` as `{"value": 1}`): only an
    // object is a valid body.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                Ok(_) => ApiError::unprocessable(
                    ErrorCode::InvalidBody,
                    r#"Request body must be a JSON object with a "value" field"#,
                ),
                Err(e) => ApiError::bad_request(
                    ErrorCode::InvalidJson,
                    format!("Request body is not valid JSON: {e}"),
                ),
            },
        );
    }
    let body: BorrowedPutBody = serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_data() {
            let detail = if e.to_string().starts_with("missing field `value`") {
                "Field 'value' is required".to_owned()
            } else {
                format!(r#"Request body must be a JSON object with a "value" field: {e}"#)
            };
            ApiError::unprocessable(ErrorCode::InvalidBody, detail)
        } else {
            ApiError::bad_request(
                ErrorCode::InvalidJson,
                format!("Request body is not valid JSON: {e}"),
            )
        }
    })?;
    if body.value.get().len() > max_value_bytes {
        return Err(too_large());
    }
    // RawValue only checks syntax; a full walk refuses what every read would then fail on:
    // numbers that overflow to infinity (the seed stored `1e400` as `Infinity`), `\u`
    // escapes that are no character, nesting past MAX_VALUE_DEPTH. A string without a `\u`
    // holds none of these, so it is spared that second pass over every byte (about 8 % of a
    // server's CPU per put of a 256 KiB string, docs/benchmarks.md).
    let text = body.value.get();
    if !text.starts_with('"') || text.contains("\\u") {
        check_new_value(text).map_err(value_refused)?;
    }
    // The one copy of the value, from the request into what the store and the cache share.
    Ok(Arc::from(text))
}

/// The answer to a value [`check_new_value`] refused.
fn value_refused(problem: ValueProblem) -> ApiError {
    match problem {
        ValueProblem::NonFinite(e) => ApiError::unprocessable(
            ErrorCode::NonFiniteNumber,
            format!("Value contains a number JSON cannot represent: {e}"),
        ),
        ValueProblem::NotUnicode(e) => ApiError::bad_request(
            ErrorCode::InvalidJson,
            format!("Value has a \\u escape that is no Unicode character (a lone surrogate): {e}"),
        ),
        ValueProblem::TooDeep => ApiError::unprocessable(
            ErrorCode::InvalidBody,
            format!("Value is nested deeper than {MAX_VALUE_DEPTH} arrays and objects"),
        ),
        ValueProblem::Invalid(e) => ApiError::bad_request(
            ErrorCode::InvalidJson,
            format!("Request body is not valid JSON: {e}"),
        ),
    }
}

/// [`kv_common::api::PutBody`] reading the value in place: the text is copied once, into
/// the `Arc` the store and the cache share, not first into a `Box` of its own.
#[derive(serde::Deserialize)]
struct BorrowedPutBody<'a> {
    #[serde(borrow)]
    value: &'a RawValue,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<String, (StatusCode, ErrorCode)> {
        put_value(Ok(Bytes::from(body.to_owned())), 16)
            .map(|v| v.to_string())
            .map_err(|e| (e.status, e.code))
    }

    #[test]
    fn every_kind_of_bad_body_gets_its_own_error() {
        assert_eq!(parse(r#"{"value": [1, 2.0]}"#).unwrap(), "[1, 2.0]");
        assert_eq!(parse(r#"{"value": null, "extra": 1}"#).unwrap(), "null");
        let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
        assert_eq!(parse(""), Err((unprocessable, ErrorCode::InvalidBody)));
        assert_eq!(
            parse(r#"{"val": 1}"#),
            Err((unprocessable, ErrorCode::InvalidBody))
        );
        assert_eq!(
            parse("[1, 2]"),
            Err((unprocessable, ErrorCode::InvalidBody))
        );
        assert_eq!(parse("[1]"), Err((unprocessable, ErrorCode::InvalidBody)));
        assert_eq!(
            parse("value=1"),
            Err((StatusCode::BAD_REQUEST, ErrorCode::InvalidJson))
        );
        assert_eq!(
            parse(r#""text""#),
            Err((unprocessable, ErrorCode::InvalidBody))
        );
        assert_eq!(
            parse("not json"),
            Err((StatusCode::BAD_REQUEST, ErrorCode::InvalidJson))
        );
        assert_eq!(
            parse(r#"{"value": "#),
            Err((StatusCode::BAD_REQUEST, ErrorCode::InvalidJson))
        );
        assert_eq!(
            parse(r#"{"value": 1e400}"#),
            Err((unprocessable, ErrorCode::NonFiniteNumber))
        );
        assert_eq!(
            parse(r#"{"value": -1e400}"#),
            Err((unprocessable, ErrorCode::NonFiniteNumber))
        );
        assert_eq!(
            parse(r#"{"value": "seventeen chars.."}"#),
            Err((StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::ValueTooLarge))
        );
        // Tiny exponents underflow to zero, which JSON can represent: accepted.
        assert_eq!(parse(r#"{"value": 1e-400}"#).unwrap(), "1e-400");
        // A string is text, whatever it spells; a number inside an array or object is not.
        assert_eq!(parse(r#"{"value": "1e400"}"#).unwrap(), r#""1e400""#);
        assert_eq!(
            parse(r#"{"value": ["1e400", 1e400]}"#),
            Err((unprocessable, ErrorCode::NonFiniteNumber))
        );
        assert_eq!(
            parse(r#"{"value": {"n":-1e999}}"#),
            Err((unprocessable, ErrorCode::NonFiniteNumber))
        );
    }

    /// What was stored and then failed every read: a lone surrogate in a string (strings skip
    /// the number check) and nesting past serde_json's limit (refused as a bad number).
    #[test]
    fn values_every_read_would_fail_on_are_refused_with_what_is_wrong() {
        let parse = |body: &str| {
            put_value(Ok(Bytes::from(body.to_owned())), 1 << 20)
                .map(|v| v.to_string())
                .map_err(|e| (e.status, e.code, e.detail))
        };
        for lone in [
            r#"{"value": "\ud800"}"#,
            r#"{"value": "text \udc00"}"#,
            r#"{"value": ["\ud800"]}"#,
        ] {
            let (status, code, detail) = parse(lone).unwrap_err();
            assert_eq!(
                (status, code),
                (StatusCode::BAD_REQUEST, ErrorCode::InvalidJson)
            );
            assert!(detail.contains("lone surrogate"), "{detail}");
        }
        assert_eq!(
            parse(r#"{"value": "\ud83d\ude00 \u00e9"}"#).unwrap(),
            r#""\ud83d\ude00 \u00e9""#
        );
        let nested = |depth: usize| {
            format!(
                r#"{{"value": {}1{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        assert!(parse(&nested(MAX_VALUE_DEPTH)).is_ok());
        for depth in [MAX_VALUE_DEPTH + 1, 200, 100_000] {
            let (status, code, detail) = parse(&nested(depth)).unwrap_err();
            assert_eq!(
                (status, code),
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::InvalidBody)
            );
            assert!(detail.contains("nested deeper than 100"), "{detail}");
        }
    }
}
