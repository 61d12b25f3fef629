//! Strict decoding of untrusted token parts: base64url without padding, and JSON objects
//! without duplicate member names and with a nesting bound.
//!
//! serde_json silently keeps the last of two equal member names and serde's derive only
//! notices duplicates of the fields it knows; two parsers disagreeing on `{"sub":"a","sub":"b"}`
//! is a classic token-confusion bug, so every object at every depth is checked here.

use std::cell::Cell;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Deepest nesting of arrays/objects accepted in a token part or a key document.
pub(crate) const MAX_JSON_DEPTH: usize = 16;

/// Why a JSON text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonProblem {
    /// Not valid JSON, or not an object at the top level.
    Syntax,
    /// An object had two members with the same name.
    DuplicateKey,
    /// Nested deeper than [`MAX_JSON_DEPTH`].
    TooDeep,
}

/// Decodes unpadded base64url (RFC 7515 §2), refusing padding, other alphabets and
/// non-canonical trailing bits.
pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// Encodes unpadded base64url.
pub(crate) fn b64url_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Parses a JSON object, refusing duplicate member names at any depth.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonProblem> {
    let problem = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Seed { depth: 0, problem: &problem }.deserialize(&mut de);
    let value = match parsed {
        Ok(v) => v,
        Err(_) => return Err(problem.get().unwrap_or(JsonProblem::Syntax)),
    };
    if de.end().is_err() {
        return Err(JsonProblem::Syntax);
    }
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(JsonProblem::Syntax),
    }
}

struct Seed<'p> {
    depth: usize,
    problem: &'p Cell<Option<JsonProblem>>,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl Seed<'_> {
    fn fail<E: de::Error>(&self, p: JsonProblem) -> E {
        self.problem.set(Some(p));
        E::custom("refused")
    }

    fn nested(&self) -> Seed<'_> {
        Seed { depth: self.depth + 1, problem: self.problem }
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json never produces non-finite numbers; `from_f64` is total here.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if self.depth >= MAX_JSON_DEPTH {
            return Err(self.fail(JsonProblem::TooDeep));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self.nested())? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.depth >= MAX_JSON_DEPTH {
            return Err(self.fail(JsonProblem::TooDeep));
        }
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(self.fail(JsonProblem::DuplicateKey));
            }
            let v = map.next_value_seed(self.nested())?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_found_at_every_depth_and_after_unescaping() {
        assert_eq!(parse_object(br#"{"a":1,"a":2}"#), Err(JsonProblem::DuplicateKey));
        assert_eq!(parse_object(br#"{"c":{"x":1,"x":1}}"#), Err(JsonProblem::DuplicateKey));
        assert_eq!(parse_object(br#"{"c":[{"x":1,"x":1}]}"#), Err(JsonProblem::DuplicateKey));
        assert_eq!(parse_object(br#"{"sub":"a","s\u0075b":"b"}"#), Err(JsonProblem::DuplicateKey));
        assert!(parse_object(br#"{"a":{"a":1},"b":[1,2.5,null,true]}"#).is_ok());
    }

    #[test]
    fn non_objects_trailing_bytes_and_depth_are_refused() {
        assert_eq!(parse_object(b"[1]"), Err(JsonProblem::Syntax));
        assert_eq!(parse_object(b"{} x"), Err(JsonProblem::Syntax));
        assert_eq!(parse_object(b"{"), Err(JsonProblem::Syntax));
        let deep = format!("{}{}", "{\"a\":".repeat(40), "1".to_owned() + &"}".repeat(40));
        assert_eq!(parse_object(deep.as_bytes()), Err(JsonProblem::TooDeep));
        let ok = format!(
            "{}{}",
            "{\"a\":".repeat(MAX_JSON_DEPTH),
            "1".to_owned() + &"}".repeat(MAX_JSON_DEPTH)
        );
        assert!(parse_object(ok.as_bytes()).is_ok());
    }

    #[test]
    fn base64url_is_strict() {
        assert_eq!(b64url_decode("AQID"), Some(vec![1, 2, 3]));
        assert_eq!(b64url_decode("AQ"), Some(vec![1]));
        assert_eq!(b64url_decode("AQ=="), None, "padding");
        assert_eq!(b64url_decode("AR"), None, "non-canonical trailing bits");
        assert_eq!(b64url_decode("A+/B"), None, "standard alphabet");
        assert_eq!(b64url_decode("A"), None, "impossible length");
        assert_eq!(b64url_decode("AQ I"), None, "whitespace");
    }
}
