//! Domain types of the store: keys, versions, stored values and write outcomes.
//! Pure data and validation; nothing here knows about HTTP or SQLite.

use std::sync::Arc;

/// Longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// Largest version number: versions are stored as SQLite INTEGER (i64).
pub const MAX_VERSION: u64 = i64::MAX as u64;

/// One stored version of a key. Cheap to clone: the value text is shared.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub version: u64,
    /// The value as JSON text, exactly as the client sent it (validated on the way in).
    pub value: Arc<str>,
    /// When this version was written, Unix seconds.
    pub timestamp: f64,
}

/// What a put asks for.
#[derive(Debug, Clone)]
pub struct PutRequest {
    pub key: Arc<str>,
    pub value: Arc<str>,
    /// Store only if the key's latest version is this (0 = only if the key does not exist).
    pub if_version: Option<u64>,
}

/// What a successful put did.
#[derive(Debug, Clone, PartialEq)]
pub struct PutOutcome {
    pub version: u64,
    pub previous_version: Option<u64>,
    /// Versions of the key after this put. Versions are gap-free from 1, so this is the new
    /// version; it is spelled out because the seed's clients read it.
    pub total_versions: u64,
    pub timestamp: f64,
}

/// Versions to store exactly as a primary assigned them, from a push or a catch-up pull.
#[derive(Debug, Clone, Default)]
pub struct ReplicaBatch {
    pub records: Vec<ReplicaRecord>,
    /// Saved in the same transaction as the records, so catch-up resumes exactly there.
    pub cursor: Option<Cursor>,
}

#[derive(Debug, Clone)]
pub struct ReplicaRecord {
    pub key: Arc<str>,
    /// Version, value and timestamp as the primary stored them.
    pub stored: Versioned,
}

/// How far catch-up has read a peer's change sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub peer: String,
    /// The peer database's instance id the sequence belongs to.
    pub instance: String,
    pub seq: u64,
}

/// What storing a [`ReplicaBatch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaOutcome {
    pub stored: u64,
    /// Already held with the same value: a harmless repeat.
    pub duplicates: u64,
    /// Already held with a different value: refused, the held value stays.
    pub conflicts: Vec<(String, u64)>,
}

/// A page of a key's versions, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionsPage {
    pub latest_version: u64,
    pub versions: Vec<Versioned>,
}

/// Whether a read was served from memory or from SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSource {
    Cache,
    Database,
}

/// Counts of the whole database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DbCounts {
    pub total_keys: u64,
    pub total_versions: u64,
    pub database_size_bytes: u64,
    pub wal_size_bytes: u64,
}

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("Key must not be empty")]
    Empty,
    #[error("Key is {0} bytes long; the limit is {MAX_KEY_BYTES} bytes")]
    TooLong(usize),
}

/// Checks a (percent-decoded) key.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        Err(KeyError::Empty)
    } else if key.len() > MAX_KEY_BYTES {
        Err(KeyError::TooLong(key.len()))
    } else {
        Ok(())
    }
}

/// Parses a version number from a query parameter: an integer from 1 to [`MAX_VERSION`].
/// Like the seed, a leading `+` and leading zeros are accepted (`+1`, `01`); unlike the seed,
/// `0`, negatives and numbers past i64 are refused instead of giving a 404 or a 500.
pub fn parse_version(raw: &str) -> Result<u64, String> {
    parse_number(raw, 1)
}

/// Parses a non-negative count such as `after=` or `if_version=` (0 allowed).
pub fn parse_count(raw: &str) -> Result<u64, String> {
    parse_number(raw, 0)
}

fn parse_number(raw: &str, min: u64) -> Result<u64, String> {
    let digits = raw.strip_prefix('+').unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{raw}' is not a whole number from {min} to {MAX_VERSION}"
        ));
    }
    match digits.parse::<u64>() {
        Ok(n) if n >= min && n <= MAX_VERSION => Ok(n),
        _ => Err(format!(
            "{raw} is out of range: expected {min} to {MAX_VERSION}"
        )),
    }
}

/// Current time as Unix seconds, the format the seed used for timestamps.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_accept_what_the_seed_accepted_and_refuse_what_broke_it() {
        assert_eq!(parse_version("1"), Ok(1));
        assert_eq!(parse_version("+1"), Ok(1));
        assert_eq!(parse_version("01"), Ok(1));
        assert_eq!(parse_version("9223372036854775807"), Ok(MAX_VERSION));
        for bad in [
            "0",
            "-1",
            "abc",
            "1.5",
            "",
            " 1",
            "1 ",
            "+",
            "9223372036854775808",
            "99999999999999999999",
        ] {
            assert!(parse_version(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(parse_count("0"), Ok(0));
    }

    #[test]
    fn keys_must_be_non_empty_and_at_most_1024_bytes() {
        assert_eq!(validate_key(""), Err(KeyError::Empty));
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert_eq!(
            validate_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(KeyError::TooLong(MAX_KEY_BYTES + 1))
        );
        // Bytes, not characters: 'é' is two bytes.
        assert!(validate_key(&"é".repeat(513)).is_err());
        assert!(validate_key("a/b with space été").is_ok());
    }
}

/// Deepest nesting of arrays and objects a new value may have. Readers built on serde_json
/// (the `kvstore` CLI, Rust clients) stop at 128 levels for a whole document, and a value
/// sits up to three levels down in an answer (`/versions`): 100 leaves room for that. Values
/// stored before this limit, up to serde_json's own, are still served.
pub const MAX_VALUE_DEPTH: usize = 100;

/// Why a new value is refused ([`check_new_value`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueProblem {
    /// A number that overflows f64 (`1e400`): every reader would turn it into infinity.
    NonFinite(String),
    /// A `\u` escape that is no Unicode character: a lone surrogate such as `"\ud800"`.
    /// JSON's grammar lets it through, but strict readers (this server's own read check
    /// among them) refuse it, so it would be stored and then fail every read.
    NotUnicode(String),
    /// Arrays and objects nested deeper than [`MAX_VALUE_DEPTH`].
    TooDeep,
    /// Not one JSON value at all.
    Invalid(String),
}

/// Checks a value about to be stored: one JSON value, numbers finite as f64, strings Unicode,
/// nesting within [`MAX_VALUE_DEPTH`]. serde_json's `RawValue` checks syntax only, and
/// `1e400` is valid syntax (the seed stored it as `Infinity`, then failed every read).
pub fn check_new_value(text: &str) -> Result<(), ValueProblem> {
    walk(text, MAX_VALUE_DEPTH).map_err(|e| {
        let message = e.to_string();
        if message.starts_with(TOO_DEEP) {
            ValueProblem::TooDeep
        } else if message.starts_with(OUT_OF_RANGE) {
            // serde_json's own error for `1e400`, and ours for whatever it lets through.
            ValueProblem::NonFinite(message)
        } else if ["surrogate", "hex escape", "unicode code point"]
            .iter()
            .any(|m| message.contains(m))
        {
            // serde_json's words for the surrogate cases (a leading one at the end of a
            // string is "unexpected end of hex escape"); RawValue has checked the rest of
            // every escape already.
            ValueProblem::NotUnicode(message)
        } else {
            ValueProblem::Invalid(message)
        }
    })
}

/// Checks that stored `text` is one JSON value whose numbers are all finite as f64, so that
/// it can be sent as it is. Looser than [`check_new_value`] on depth only: what an earlier
/// build stored stays readable.
pub fn validate_json(text: &str) -> Result<(), String> {
    walk(text, usize::MAX).map_err(|e| e.to_string())
}

/// What a value nested too deep fails with (a custom error, so serde_json's own limit, 128
/// levels, is never what stops a new value).
const TOO_DEEP: &str = "nested too deep";

/// serde_json's message for a number that overflows f64, which [`Finite`] uses too.
const OUT_OF_RANGE: &str = "number out of range";

/// Walks the value without building it: about one parse, no allocation.
fn walk(text: &str, max_depth: usize) -> Result<(), serde_json::Error> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(text);
    Finite {
        levels_left: max_depth,
    }
    .deserialize(&mut de)?;
    de.end()
}

/// Accepts any JSON value with finite numbers and at most `levels_left` levels of nesting.
#[derive(Clone, Copy)]
struct Finite {
    levels_left: usize,
}

impl Finite {
    /// The check for what is inside an array or object.
    fn inner<E: serde::de::Error>(self) -> Result<Finite, E> {
        match self.levels_left.checked_sub(1) {
            Some(levels_left) => Ok(Finite { levels_left }),
            None => Err(E::custom(TOO_DEEP)),
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Finite {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Finite {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value with finite numbers")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        if v.is_finite() {
            Ok(())
        } else {
            Err(E::custom(OUT_OF_RANGE))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod json_tests {
    use super::{MAX_VALUE_DEPTH, ValueProblem, check_new_value, validate_json};

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn new_values_are_refused_for_what_would_fail_their_reads() {
        assert_eq!(check_new_value(r#"{"a": ["x", 1.5, null]}"#), Ok(()));
        assert!(matches!(
            check_new_value(r#"{"a": [1, 1e999]}"#),
            Err(ValueProblem::NonFinite(_))
        ));
        // Lone surrogates, leading or trailing, anywhere: the read check refuses them too.
        for lone in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""a\ud800b""#,
            r#"{"k": ["\ud83d"]}"#,
            r#"{"\udfff": 1}"#,
        ] {
            assert!(
                matches!(check_new_value(lone), Err(ValueProblem::NotUnicode(_))),
                "{lone}: {:?}",
                check_new_value(lone)
            );
            assert!(validate_json(lone).is_err(), "{lone}");
        }
        // A surrogate pair is one character, and an escaped backslash before a `u` no escape.
        assert_eq!(check_new_value(r#""\ud83d\ude00""#), Ok(()));
        assert_eq!(check_new_value(r#""C:\\users""#), Ok(()));
        assert!(matches!(
            check_new_value("[1,"),
            Err(ValueProblem::Invalid(_))
        ));
    }

    #[test]
    fn nesting_is_limited_for_new_values_only() {
        assert_eq!(check_new_value(&nested(MAX_VALUE_DEPTH)), Ok(()));
        assert_eq!(
            check_new_value(&nested(MAX_VALUE_DEPTH + 1)),
            Err(ValueProblem::TooDeep)
        );
        let objects = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_VALUE_DEPTH + 1),
            "}".repeat(MAX_VALUE_DEPTH + 1)
        );
        assert_eq!(check_new_value(&objects), Err(ValueProblem::TooDeep));
        // Far past serde_json's own limit: still our answer, not a parse error.
        assert_eq!(
            check_new_value(&nested(100_000)),
            Err(ValueProblem::TooDeep)
        );
        // What an earlier build could store (up to serde_json's limit) is still served.
        assert_eq!(validate_json(&nested(MAX_VALUE_DEPTH + 20)), Ok(()));
    }

    #[test]
    fn numbers_that_overflow_to_infinity_are_refused_anywhere_in_the_value() {
        for ok in [
            "1",
            "1e308",
            "1e-400",
            r#"{"a": [1, 2.5, null, true, "x"]}"#,
            "12345678901234567890123",
        ] {
            assert_eq!(validate_json(ok), Ok(()), "{ok}");
        }
        for bad in [
            "1e400",
            "-1e400",
            r#"{"a": [1, 1e999]}"#,
            "Infinity",
            "NaN",
            "[1,",
        ] {
            assert!(validate_json(bad).is_err(), "{bad}");
        }
    }
}
