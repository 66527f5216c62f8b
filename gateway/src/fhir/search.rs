//! Search criteria the store understands. The foundation indexes `_id` and `identifier`, which is
//! what conditional create/update/delete rely on; the search issue adds every other parameter.

use crate::error::{Error, Result};
use crate::fhir::validate::Structure;
use serde_json::Value;

/// A token search value: `system|code`, `|code` (no system), `code` (any system), `system|`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// `None`: any system; `Some("")`: the identifier must have no system.
    pub system: Option<String>,
    /// `None`: any value (the `system|` form).
    pub value: Option<String>,
}

/// AND of ORs: each inner list is one parameter occurrence with comma-separated alternatives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Criteria {
    pub ids: Vec<Vec<String>>,
    pub identifiers: Vec<Vec<Token>>,
    /// Only resources in this patient's compartment (set by the policy for patient-context
    /// scopes, never from client input).
    pub compartment: Option<String>,
}

impl Criteria {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.identifiers.is_empty() && self.compartment.is_none()
    }
}

/// The search parameters the store can evaluate for a type (for the CapabilityStatement too).
pub fn supported_parameters(ty: &str, s: &Structure) -> Vec<(&'static str, &'static str)> {
    let mut out = vec![("_id", "token")];
    if s.has_identifier(ty) {
        out.push(("identifier", "token"));
    }
    out
}

/// Splits parameters into criteria and the names that are not understood.
pub fn parse_criteria(
    ty: &str,
    params: &[(String, String)],
    s: &Structure,
) -> Result<(Criteria, Vec<String>)> {
    let mut c = Criteria::default();
    let mut unknown = Vec::new();
    for (name, value) in params {
        match name.as_str() {
            "_id" => {
                let ids: Vec<String> = split_or(value)
                    .into_iter()
                    .filter(|v| !v.is_empty())
                    .collect();
                if ids.is_empty() {
                    return Err(Error::invalid("_id needs a value"));
                }
                c.ids.push(ids);
            }
            "identifier" if s.has_identifier(ty) => {
                let tokens = split_or(value)
                    .iter()
                    .map(|v| token(v))
                    .collect::<Result<Vec<_>>>()?;
                c.identifiers.push(tokens);
            }
            _ => unknown.push(name.clone()),
        }
    }
    Ok((c, unknown))
}

/// Commas separate alternatives; `\,` is a literal comma (FHIR search escaping).
fn split_or(v: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ (',' | '|' | '$' | '\\')) => {
                    out.last_mut().unwrap().push_str(&format!("\\{n}"))
                }
                Some(n) => {
                    let last = out.last_mut().unwrap();
                    last.push('\\');
                    last.push(n);
                }
                None => out.last_mut().unwrap().push('\\'),
            },
            ',' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

fn token(v: &str) -> Result<Token> {
    // Find the first unescaped '|'.
    let bytes = v.as_bytes();
    let mut split = None;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == b'|' {
            split = Some(i);
            break;
        }
        i += 1;
    }
    let unescape = |s: &str| {
        s.replace("\\,", ",")
            .replace("\\|", "|")
            .replace("\\$", "$")
            .replace("\\\\", "\\")
    };
    let t = match split {
        None => Token {
            system: None,
            value: Some(unescape(v)),
        },
        Some(i) => {
            let (sys, val) = (&v[..i], &v[i + 1..]);
            Token {
                system: Some(unescape(sys)),
                value: (!val.is_empty()).then(|| unescape(val)),
            }
        }
    };
    if t.value.is_none() && t.system.as_deref().unwrap_or("").is_empty() {
        return Err(Error::invalid(
            "an identifier search needs a system or a value",
        ));
    }
    Ok(t)
}

/// The `identifier` tokens of a resource, as `(system, value)`; shared by every store backend.
pub fn identifier_tokens(resource: &Value) -> Vec<(String, String)> {
    let items: Vec<&Value> = match resource.get("identifier") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => Vec::new(),
    };
    items
        .into_iter()
        .filter_map(|i| {
            let value = i.get("value")?.as_str()?;
            Some((
                i.get("system")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                value.to_owned(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_forms() {
        assert_eq!(
            token("a|b").unwrap(),
            Token {
                system: Some("a".into()),
                value: Some("b".into())
            }
        );
        assert_eq!(
            token("|b").unwrap(),
            Token {
                system: Some("".into()),
                value: Some("b".into())
            }
        );
        assert_eq!(
            token("b").unwrap(),
            Token {
                system: None,
                value: Some("b".into())
            }
        );
        assert_eq!(
            token("a|").unwrap(),
            Token {
                system: Some("a".into()),
                value: None
            }
        );
        assert_eq!(
            token(r"a\|b").unwrap(),
            Token {
                system: None,
                value: Some("a|b".into())
            }
        );
        assert!(token("|").is_err());
    }

    #[test]
    fn commas_are_alternatives_unless_escaped() {
        assert_eq!(split_or("a,b"), vec!["a", "b"]);
        assert_eq!(split_or(r"a\,b"), vec![r"a\,b"]);
    }

    #[test]
    fn identifiers_single_and_list() {
        let p =
            json!({"identifier": [{"system": "s", "value": "1"}, {"value": "2"}, {"system": "x"}]});
        assert_eq!(
            identifier_tokens(&p),
            vec![("s".into(), "1".into()), ("".into(), "2".into())]
        );
        let b = json!({"identifier": {"system": "s", "value": "9"}});
        assert_eq!(identifier_tokens(&b), vec![("s".into(), "9".into())]);
    }
}
