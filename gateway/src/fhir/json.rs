//! Reading a request body as FHIR JSON, with the limits applied before serde sees it.

use crate::error::{Error, Result};
use serde_json::Value;

/// Nesting depth of a JSON text, counted without parsing, stopping as soon as `limit` is passed.
/// Runs before serde so that a 10,000-deep array costs a linear scan, not a deep recursion.
pub fn depth_exceeds(bytes: &[u8], limit: u32) -> bool {
    let mut depth: u32 = 0;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Parses a body into a JSON object, with errors a client can act on.
pub fn parse_resource(bytes: &[u8], max_depth: u32) -> Result<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid(
            "the request has no body; a FHIR resource in JSON was expected",
        ));
    }
    if depth_exceeds(bytes, max_depth) {
        return Err(Error::invalid(format!(
            "JSON nested deeper than {max_depth} levels"
        )));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        // serde's message names line and column only: no input is echoed back.
        Error::client(
            http::StatusCode::BAD_REQUEST,
            "structure",
            format!("body is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(Error::client(
            http::StatusCode::BAD_REQUEST,
            "structure",
            "a FHIR resource must be a JSON object",
        ));
    }
    check_numbers(&value)?;
    Ok(value)
}

/// FHIR decimals are kept exactly as written (serde_json's arbitrary precision), but a number no
/// 64-bit float can hold (1e999) is not a FHIR decimal and would break every consumer.
fn check_numbers(v: &Value) -> Result<()> {
    match v {
        Value::Number(n) => {
            let finite = n.as_f64().map(f64::is_finite).unwrap_or(false);
            if !finite || n.to_string().len() > 64 {
                return Err(Error::invalid(format!(
                    "number out of range: {}",
                    truncate(&n.to_string(), 40)
                )));
            }
            Ok(())
        }
        Value::Array(a) => a.iter().try_for_each(check_numbers),
        Value::Object(m) => m.values().try_for_each(check_numbers),
        _ => Ok(()),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_owned()
    } else {
        format!("{}...", &s[..n])
    }
}

/// A FHIR logical id: `[A-Za-z0-9\-\.]{1,64}` (and no longer than the configured maximum).
pub fn valid_id(id: &str, max_len: u32) -> bool {
    !id.is_empty()
        && id.len() <= max_len as usize
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_is_counted_outside_strings_only() {
        assert!(!depth_exceeds(br#"{"a":"[[[[[[[[[[[[[[[[[[[["}"#, 3));
        assert!(depth_exceeds(b"[[[[1]]]]", 3));
        assert!(!depth_exceeds(b"[[[1]]]", 3));
        assert!(!depth_exceeds(br#"{"a":"\"[[[[["}"#, 1));
        let deep = "[".repeat(10_000);
        assert!(depth_exceeds(deep.as_bytes(), 64));
    }

    #[test]
    fn bodies_that_are_not_resources_are_refused() {
        assert!(parse_resource(b"", 64).is_err());
        assert!(parse_resource(b"[1]", 64).is_err());
        assert!(parse_resource(b"{\"a\":", 64).is_err());
        assert!(parse_resource(b"\xff\xfe{}", 64).is_err());
        assert!(parse_resource(br#"{"n": 1e999}"#, 64).is_err());
        assert!(parse_resource(br#"{"n": 1.50}"#, 64).is_ok());
    }

    #[test]
    fn decimals_keep_their_precision() {
        let v = parse_resource(br#"{"n": 1.50}"#, 64).unwrap();
        assert_eq!(v.to_string(), r#"{"n":1.50}"#);
    }

    #[test]
    fn ids_follow_the_fhir_rule() {
        assert!(valid_id("abc-1.2", 64));
        assert!(!valid_id("", 64));
        assert!(!valid_id("a/b", 64));
        assert!(!valid_id("a_b", 64));
        assert!(!valid_id(&"a".repeat(65), 64));
        assert!(!valid_id("abcd", 3));
    }
}
