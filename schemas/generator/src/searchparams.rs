//! The R4 base search parameters, per resource type, from the package's `SearchParameter`
//! resources: code, type, FHIRPath expression (only the part that applies to that type), targets
//! of references, and the components of composites.
//!
//! A definition's expression covers all its base types joined with `|`
//! (`AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | ...`); each type
//! gets the terms that start with its own name, so the gateway evaluates only what can match.
//! Terms that name no type (rare) are kept for every base.

use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

pub fn search_parameters(tgz: &[u8]) -> Result<Value, String> {
    // base type -> code -> definition
    let mut by_type: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    let files = crate::package::json_files(tgz, |p| {
        p.starts_with("package/SearchParameter-") && p.ends_with(".json")
    })?;
    for (path, sp) in files {
        // The package also carries example SearchParameters (experimental, ids `example*`) that
        // would shadow the base definitions (`Condition.subject` targeting Organization).
        if sp["experimental"] == true {
            continue;
        }
        let code = sp["code"].as_str().ok_or(format!("{path}: no code"))?;
        let ty = sp["type"].as_str().ok_or(format!("{path}: no type"))?;
        let expression = sp["expression"].as_str().unwrap_or_default();
        for base in sp["base"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            let mut def = Map::new();
            def.insert("url".into(), sp["url"].clone());
            def.insert("type".into(), json!(ty));
            let own = terms_for(expression, base);
            if !own.is_empty() {
                def.insert("expression".into(), json!(own));
            }
            if let Some(t) = sp.get("target") {
                def.insert("target".into(), t.clone());
            }
            if let Some(components) = sp["component"].as_array() {
                let components: Vec<Value> = components
                    .iter()
                    .map(
                        |c| json!({ "definition": c["definition"], "expression": c["expression"] }),
                    )
                    .collect();
                def.insert("component".into(), Value::Array(components));
            }
            by_type
                .entry(base.to_owned())
                .or_default()
                .insert(code.to_owned(), Value::Object(def));
        }
    }
    if by_type.is_empty() {
        return Err("no SearchParameters in the package".into());
    }
    serde_json::to_value(by_type).map_err(|e| e.to_string())
}

/// The `|`-separated terms of `expression` that apply to `base`, joined again.
fn terms_for(expression: &str, base: &str) -> String {
    let terms = split_union(expression);
    let own: Vec<&str> = terms
        .iter()
        .map(|t| t.trim())
        .filter(|t| match leading_type(t) {
            Some(ty) => ty == base,
            None => true,
        })
        .collect();
    // A base such as Resource or DomainResource: its terms name it (`Resource.id`).
    own.join(" | ")
}

/// The type name an expression term starts with (`(Observation.value as Quantity)` → Observation),
/// if its first identifier is capitalised.
fn leading_type(term: &str) -> Option<&str> {
    let t = term.trim_start_matches('(').trim_start();
    let end = t
        .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .unwrap_or(t.len());
    let first = &t[..end];
    first
        .chars()
        .next()
        .filter(char::is_ascii_uppercase)
        .map(|_| first)
}

/// Splits at top-level `|` (not inside parentheses or string literals).
fn split_union(e: &str) -> Vec<&str> {
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    let mut out = Vec::new();
    for (i, c) in e.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            '|' if !quoted && depth == 0 => {
                out.push(&e[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&e[start..]);
    out.into_iter().filter(|t| !t.trim().is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_union_is_split_per_type() {
        let e = "AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | (Observation.value as Quantity) | Observation.code";
        assert_eq!(
            terms_for(e, "CarePlan"),
            "CarePlan.subject.where(resolve() is Patient)"
        );
        assert_eq!(
            terms_for(e, "Observation"),
            "(Observation.value as Quantity) | Observation.code"
        );
        assert_eq!(terms_for(e, "Patient"), "");
        assert_eq!(split_union("a.where(b = 'x|y') | c").len(), 2);
    }
}
