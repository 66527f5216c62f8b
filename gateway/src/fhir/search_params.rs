//! The search parameters the gateway knows: the R4 base definitions generated into
//! `schemas/fhir/search-parameters.json` (see its PROVENANCE.md), expressions parsed once.

use crate::fhir::fhirpath::FhirPath;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::LazyLock;

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
    /// `None` when the definition has no expression for this type (`_text`, `_content`, ...).
    pub expression: Option<FhirPath>,
    pub targets: Vec<String>,
}

/// type -> code -> definition; `Resource` holds `_id`, `_lastUpdated`, `_tag`, ...
static REGISTRY: LazyLock<HashMap<String, HashMap<String, Definition>>> = LazyLock::new(|| {
    let all: HashMap<String, HashMap<String, Value>> =
        serde_json::from_str(DEFINITIONS).expect("the generated search parameters are JSON");
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
                        expression,
                        targets: d["target"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect(),
                    };
                    (code, def)
                })
                .collect();
            (ty, defs)
        })
        .collect()
});

/// The definition of `code` on `ty` (its own, or one every resource has).
pub fn definition(ty: &str, code: &str) -> Option<&'static Definition> {
    REGISTRY
        .get(ty)
        .and_then(|p| p.get(code))
        .or_else(|| REGISTRY.get("Resource")?.get(code))
        .or_else(|| REGISTRY.get("DomainResource")?.get(code))
}

/// Every parameter of `ty` that has an expression (what is indexed on write).
pub fn indexed(ty: &str) -> impl Iterator<Item = &'static Definition> {
    [ty, "Resource", "DomainResource"]
        .into_iter()
        .filter_map(|t| REGISTRY.get(t))
        .flat_map(|p| p.values())
        // `_id` is the resource's key, searched on `resource_current` itself; `phonetic` would
        // need a phonetic algorithm, and a plain string match under that name would mislead.
        .filter(|d| d.code != "_id" && d.code != "phonetic")
        .filter(|d| d.expression.is_some() && !matches!(d.kind, Kind::Special | Kind::Composite))
}

#[cfg(test)]
mod tests {
    use super::*;

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
