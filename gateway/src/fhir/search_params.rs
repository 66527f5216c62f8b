//! The search parameters the gateway knows: the R4 base definitions generated into
//! `schemas/fhir/search-parameters.json` (see its PROVENANCE.md), expressions parsed once.

use crate::fhir::fhirpath::FhirPath;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};

const DEFINITIONS: &str = include_str!("../../../schemas/fhir/search-parameters.json");

/// The eight R4 search parameter types (and `special`, which is not indexed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl Kind {
    fn parse(s: &str) -> Kind {
        match s {
            "number" => Kind::Number,
            "date" => Kind::Date,
            "string" => Kind::String,
            "token" => Kind::Token,
            "reference" => Kind::Reference,
            "composite" => Kind::Composite,
            "quantity" => Kind::Quantity,
            "uri" => Kind::Uri,
            _ => Kind::Special,
        }
    }
}

#[derive(Debug)]
pub struct Definition {
    pub code: String,
    pub kind: Kind,
    /// The canonical url (how a composite names its components).
    pub url: String,
    /// `None` when the definition has no expression for this type (`_text`, `_content`, ...).
    pub expression: Option<FhirPath>,
    pub targets: Vec<String>,
    /// A composite's components: each one's type and its expression, relative to what the
    /// composite's own expression selects (`code` and `value.as(Quantity)` of an Observation).
    pub components: Vec<(Kind, FhirPath)>,
}

/// type -> code -> definition; `Resource` holds `_id`, `_lastUpdated`, `_tag`, ...
static REGISTRY: LazyLock<HashMap<String, HashMap<String, Definition>>> = LazyLock::new(|| {
    let all: HashMap<String, HashMap<String, Value>> =
        serde_json::from_str(DEFINITIONS).expect("the generated search parameters are JSON");
    // A composite names its components' definitions by url.
    let kind_of_url: HashMap<String, Kind> = all
        .values()
        .flat_map(HashMap::values)
        .filter_map(|d| {
            Some((
                d["url"].as_str()?.to_owned(),
                Kind::parse(d["type"].as_str()?),
            ))
        })
        .collect();
    all.into_iter()
        .map(|(ty, params)| {
            let defs = params
                .into_iter()
                .map(|(code, d)| {
                    let expression = d["expression"].as_str().map(|e| {
                        FhirPath::parse(e).unwrap_or_else(|err| {
                            panic!("search parameter {ty}.{code}: cannot parse '{e}': {err}")
                        })
                    });
                    let def = Definition {
                        code: code.clone(),
                        kind: Kind::parse(d["type"].as_str().unwrap_or_default()),
                        url: d["url"].as_str().unwrap_or_default().to_owned(),
                        expression,
                        targets: d["target"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect(),
                        components: d["component"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|c| {
                                let kind = *kind_of_url.get(c["definition"].as_str()?)?;
                                let e = c["expression"].as_str()?;
                                let path = FhirPath::parse(e).unwrap_or_else(|err| {
                                    panic!(
                                        "search parameter {ty}.{code}: cannot parse '{e}': {err}"
                                    )
                                });
                                Some((kind, path))
                            })
                            .collect(),
                    };
                    (code, def)
                })
                .collect();
            (ty, defs)
        })
        .collect()
});

/// type -> code -> definition of the custom SearchParameters installed (see [`install`]).
/// Definitions are leaked so that they are `'static` like the spec's: an install happens when an
/// operator reindexes, and each leaks a few hundred bytes per parameter.
static CUSTOM: LazyLock<RwLock<HashMap<String, HashMap<String, &'static Definition>>>> =
    LazyLock::new(Default::default);

/// The definition of `code` on `ty` (its own, one every resource has, or a custom one).
pub fn definition(ty: &str, code: &str) -> Option<&'static Definition> {
    REGISTRY
        .get(ty)
        .and_then(|p| p.get(code))
        .or_else(|| REGISTRY.get("Resource")?.get(code))
        .or_else(|| REGISTRY.get("DomainResource")?.get(code))
        .or_else(|| custom(ty).into_iter().find(|d| d.code == code))
}

fn custom(ty: &str) -> Vec<&'static Definition> {
    let custom = CUSTOM.read().expect("custom search parameters lock");
    custom
        .get(ty)
        .map(|p| p.values().copied().collect())
        .unwrap_or_default()
}

/// Installs the custom SearchParameter resources (replacing those installed before) and
/// returns `Type.code` of each; a definition that cannot be used is an error naming it, and then
/// nothing changes. A custom parameter may not redefine one of the spec's on the same type.
pub fn install(resources: &[Value]) -> Result<Vec<String>, String> {
    let kind_of_url: HashMap<&str, Kind> = REGISTRY
        .values()
        .flat_map(HashMap::values)
        .map(|d| (d.url.as_str(), d.kind))
        .chain(
            resources
                .iter()
                .filter_map(|r| Some((r["url"].as_str()?, Kind::parse(r["type"].as_str()?)))),
        )
        .collect();
    let mut next: HashMap<String, HashMap<String, &'static Definition>> = HashMap::new();
    let mut installed = Vec::new();
    for r in resources {
        if r["status"] == "retired" {
            continue;
        }
        let code = r["code"].as_str().unwrap_or_default();
        let name = r["url"].as_str().or(r["id"].as_str()).unwrap_or(code);
        let bad = |why: &str| format!("SearchParameter {name}: {why}");
        if code.is_empty()
            || code.starts_with('_')
            || !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(bad(
                "code must be letters, digits and '-', not starting with '_'",
            ));
        }
        let kind = Kind::parse(r["type"].as_str().unwrap_or_default());
        if kind == Kind::Special {
            return Err(bad("type must be one of the eight searchable types"));
        }
        let text = r["expression"]
            .as_str()
            .ok_or_else(|| bad("an expression is needed"))?;
        let expression = FhirPath::parse(text).map_err(|e| bad(&format!("expression: {e}")))?;
        let components = r["component"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let kind = c["definition"]
                    .as_str()
                    .and_then(|u| kind_of_url.get(u))
                    .ok_or_else(|| bad("a component's definition is not known"))?;
                let e = c["expression"].as_str().unwrap_or_default();
                Ok((
                    *kind,
                    FhirPath::parse(e).map_err(|e| bad(&format!("component: {e}")))?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let bases: Vec<&str> = r["base"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if bases.is_empty() {
            return Err(bad("a base resource type is needed"));
        }
        for ty in bases {
            if REGISTRY.get(ty).is_some_and(|p| p.contains_key(code))
                || REGISTRY
                    .get("Resource")
                    .is_some_and(|p| p.contains_key(code))
                || REGISTRY
                    .get("DomainResource")
                    .is_some_and(|p| p.contains_key(code))
            {
                return Err(bad(&format!("{ty} already has a parameter '{code}'")));
            }
            let def: &'static Definition = Box::leak(Box::new(Definition {
                code: code.to_owned(),
                kind,
                url: r["url"].as_str().unwrap_or_default().to_owned(),
                expression: Some(expression.clone()),
                targets: r["target"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                components: components.clone(),
            }));
            next.entry(ty.to_owned())
                .or_default()
                .insert(code.to_owned(), def);
            installed.push(format!("{ty}.{code}"));
        }
    }
    *CUSTOM.write().expect("custom search parameters lock") = next;
    installed.sort();
    Ok(installed)
}

/// Every parameter of `ty` that has an expression (what is indexed on write).
pub fn indexed(ty: &str) -> impl Iterator<Item = &'static Definition> {
    [ty, "Resource", "DomainResource"]
        .into_iter()
        .filter_map(|t| REGISTRY.get(t))
        .flat_map(|p| p.values())
        .chain(custom(ty))
        // `_id` is the resource's key, searched on `resource_current` itself; `phonetic` would
        // need a phonetic algorithm, and a plain string match under that name would mislead.
        .filter(|d| d.code != "_id" && d.code != "phonetic")
        .filter(|d| d.expression.is_some() && d.kind != Kind::Special)
        .filter(|d| d.kind != Kind::Composite || composite_pair(d).is_some())
}

/// The two components of a composite the index keeps: a token or reference, then a token,
/// string, date, number or quantity (every two-part composite of R4; the one three-part
/// composite, a sequence's coordinates, is not indexed).
pub fn composite_pair(d: &Definition) -> Option<[&(Kind, FhirPath); 2]> {
    match d.components.as_slice() {
        [a @ (Kind::Token | Kind::Reference, _), b] if b.0 != Kind::Composite => Some([a, b]),
        _ => None,
    }
}

/// The parts of a HumanName or Address that a string parameter on one indexes (`strings` in
/// `search_index`), in the order it reads them.
pub const STRING_PARTS: [&str; 11] = [
    "family",
    "given",
    "prefix",
    "suffix",
    "text",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
];

/// Type -> parameter -> the parameters whose index rows are all rows of it too: `name` holds
/// every `family` and `given` row, `address` every `address-city` row, Observation's
/// `combo-code` every `code` and `component-code` row. Such a row is stored once, under the
/// narrower parameter, and a search on the wider one reads both (`aliases`). Each of an HL7 ADT
/// message's Patients saves 5 of its 21 rows, an Observation its `combo-*` rows: on SQLite each
/// index row is about a page of the write's commit, and at one message per commit the commit's
/// pages are most of its cost.
///
/// Derived from the definitions, not listed: (P, Q) holds on a type where Q's expression is one
/// of the alternatives of P's (`A | B` covers `A`; composites with the same components), or, for
/// string parameters, P's expression followed by one of the [`STRING_PARTS`].
static BASE_ALIASES: LazyLock<HashMap<String, HashMap<String, Vec<String>>>> =
    LazyLock::new(|| {
        let all: HashMap<String, HashMap<String, Value>> =
            serde_json::from_str(DEFINITIONS).expect("the generated search parameters are JSON");
        alias_pairs(&all)
    });

fn alias_pairs(
    all: &HashMap<String, HashMap<String, Value>>,
) -> HashMap<String, HashMap<String, Vec<String>>> {
    let kind_of_url: HashMap<&str, &str> = all
        .values()
        .flat_map(HashMap::values)
        .filter_map(|d| Some((d["url"].as_str()?, d["type"].as_str()?)))
        .collect();
    // `phonetic` is not indexed (see `indexed`): a search on it must not read `family` rows.
    let usable = |code: &str| code != "phonetic" && code != "_id";
    let mut out: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
    for (ty, params) in all {
        for (p, pd) in params.iter().filter(|(p, _)| usable(p)) {
            let mut qs: Vec<String> = params
                .iter()
                .filter(|(q, qd)| usable(q) && *q != p && covers(pd, qd, &kind_of_url))
                .map(|(q, _)| q.clone())
                .collect();
            if !qs.is_empty() {
                qs.sort();
                out.entry(ty.clone()).or_default().insert(p.clone(), qs);
            }
        }
    }
    out
}

/// Whether every index row of definition `q` is one of definition `p` (same type of parameter).
fn covers(p: &Value, q: &Value, kind_of_url: &HashMap<&str, &str>) -> bool {
    let (Some(pe), Some(qe)) = (p["expression"].as_str(), q["expression"].as_str()) else {
        return false;
    };
    if p["type"] != q["type"] || pe == qe {
        return false;
    }
    let components = |d: &Value| -> Vec<(Option<String>, Option<String>)> {
        d["component"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["definition"]
                        .as_str()
                        .and_then(|u| kind_of_url.get(u).map(|k| k.to_string())),
                    c["expression"].as_str().map(str::to_owned),
                )
            })
            .collect()
    };
    if components(p) != components(q) {
        return false;
    }
    if p["type"] == "string"
        && qe
            .strip_prefix(pe)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|part| STRING_PARTS.contains(&part))
    {
        return true;
    }
    let (pa, qa) = (alternatives(pe), alternatives(qe));
    qa.iter().all(|a| pa.contains(a))
}

/// The top-level alternatives of a FHIRPath union (`A | (B) | C.where(x | y)` -> `A`, `B`,
/// `C.where(x | y)`), each without parentheses around it whole.
fn alternatives(e: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, ch) in e.char_indices() {
        match ch {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            '|' if !quoted && depth == 0 => {
                out.push(unwrap_parens(e[start..i].trim()));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(unwrap_parens(e[start..].trim()));
    out
}

/// `(A)` -> `A`, but `(A).b` and `(A) | (B)` stay as they are.
fn unwrap_parens(e: &str) -> &str {
    let Some(inner) = e.strip_prefix('(').and_then(|r| r.strip_suffix(')')) else {
        return e;
    };
    let mut depth = 0i32;
    for ch in inner.chars() {
        match ch {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return e;
                }
            }
            _ => {}
        }
    }
    inner.trim()
}

/// The parameters whose rows a search on `code` reads besides its own on `ty` (see
/// [`BASE_ALIASES`]). Only the spec's parameters alias one another, and a custom parameter
/// cannot take one of their codes on the same type ([`install`] refuses it), so custom
/// parameters never change the answer.
pub fn aliases(ty: &str, code: &str) -> &'static [String] {
    BASE_ALIASES
        .get(ty)
        .and_then(|p| p.get(code))
        .map_or(&[], Vec::as_slice)
}

/// The types on which a search on `code` reads other parameters' rows too.
pub fn types_aliasing(code: &str) -> Vec<&'static str> {
    let mut types: Vec<&'static str> = BASE_ALIASES
        .iter()
        .filter(|(ty, _)| !aliases(ty, code).is_empty())
        .map(|(ty, _)| ty.as_str())
        .collect();
    types.sort_unstable();
    types
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_derived_from_the_definitions() {
        let mut pairs: Vec<String> = BASE_ALIASES
            .iter()
            .flat_map(|(t, ps)| {
                ps.iter()
                    .flat_map(move |(p, qs)| qs.iter().map(move |q| format!("{t}.{p} > {q}")))
            })
            .collect();
        pairs.sort();
        eprintln!("{pairs:#?}");
        assert_eq!(aliases("Patient", "name"), ["family", "given"]);
        assert_eq!(aliases("Practitioner", "name"), ["family", "given"]);
        assert_eq!(
            aliases("Patient", "address"),
            [
                "address-city",
                "address-country",
                "address-postalcode",
                "address-state"
            ]
        );
        assert_eq!(
            aliases("Observation", "combo-code"),
            ["code", "component-code"]
        );
        assert_eq!(
            aliases("Observation", "combo-code-value-quantity"),
            ["code-value-quantity", "component-code-value-quantity"]
        );
        assert!(aliases("Observation", "code").is_empty());
        // Organization's `name` is `name | alias`, and it has no `family`.
        assert!(aliases("Organization", "name").is_empty());
        // `patient` is `subject.where(resolve() is Patient)`: a subject row need not be a
        // patient row, so no alias.
        assert!(aliases("Observation", "patient").is_empty());
        assert!(aliases("Patient", "phonetic").is_empty());
        assert_eq!(types_aliasing("combo-code"), ["Observation"]);
        assert!(types_aliasing("name").contains(&"Patient"));
    }

    #[test]
    fn alternatives_split_only_the_top_level_union() {
        assert_eq!(
            alternatives("(A as Quantity) | B.where(x | y) | (C | D).e"),
            ["A as Quantity", "B.where(x | y)", "(C | D).e"]
        );
        assert_eq!(alternatives("A.b"), ["A.b"]);
        assert_eq!(unwrap_parens("(A) | (B)"), "(A) | (B)");
        assert_eq!(alternatives("A.where(c = '|')"), ["A.where(c = '|')"]);
    }

    #[test]
    fn every_expression_parses_and_common_parameters_exist() {
        let n: usize = REGISTRY.values().map(HashMap::len).sum();
        assert!(n > 1_700, "{n} (type, code) pairs");
        let p = definition("Observation", "patient").unwrap();
        assert_eq!(p.kind, Kind::Reference);
        assert_eq!(
            definition("Patient", "_lastUpdated").unwrap().kind,
            Kind::Date
        );
        assert_eq!(definition("Patient", "birthdate").unwrap().kind, Kind::Date);
        assert!(indexed("Patient").any(|d| d.code == "family"));
    }
}
