//! The Patient compartment as element paths: for each resource type, the elements whose
//! references to a Patient put the resource in that patient's compartment. From
//! `CompartmentDefinition/patient` and the `SearchParameter` expressions of its parameters.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub fn patient_compartment(tgz: &[u8]) -> Result<Value, String> {
    let mut definition = None;
    // (base type, code) -> expression
    let mut expressions: BTreeMap<(String, String), String> = BTreeMap::new();
    let files = crate::package::json_files(tgz, |p| {
        p == "package/CompartmentDefinition-patient.json"
            || p.starts_with("package/SearchParameter-")
    })?;
    for (path, v) in files {
        let is_cd = path == "package/CompartmentDefinition-patient.json";
        if is_cd {
            definition = Some(v);
            continue;
        }
        let code = v["code"].as_str().unwrap_or_default().to_owned();
        let expression = v["expression"].as_str().unwrap_or_default().to_owned();
        for base in v["base"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            expressions.insert((base.to_owned(), code.clone()), expression.clone());
        }
    }
    let definition = definition.ok_or("no CompartmentDefinition-patient in the package")?;
    let mut out = Map::new();
    for r in definition["resource"].as_array().into_iter().flatten() {
        let ty = r["code"].as_str().unwrap_or_default();
        let mut paths: Vec<String> = Vec::new();
        for param in r["param"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if param == "{def}" {
                continue; // Patient itself: a Patient is in its own compartment.
            }
            let expr = expressions
                .get(&(ty.to_owned(), param.to_owned()))
                .or_else(|| expressions.get(&("Resource".to_owned(), param.to_owned())))
                .ok_or_else(|| {
                    format!("{ty}: no SearchParameter for compartment parameter {param}")
                })?;
            for path in paths_of(ty, expr)? {
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
        }
        if !paths.is_empty() || ty == "Patient" {
            out.insert(ty.to_owned(), Value::from(paths));
        }
    }
    Ok(Value::Object(out))
}

/// `Observation.subject.where(resolve() is Patient) | Group.member.entity` for `Observation` ->
/// `["subject"]`. Only plain paths (with an optional Patient filter) are accepted.
fn paths_of(ty: &str, expression: &str) -> Result<Vec<String>, String> {
    let prefix = format!("{ty}.");
    let mut out = Vec::new();
    for part in expression.split('|').map(str::trim) {
        let part = part.replace(".where(resolve() is Patient)", "");
        let part = part.trim_start_matches('(').trim_end_matches(')');
        let Some(rest) = part.strip_prefix(&prefix) else {
            continue;
        };
        if !rest
            .split('.')
            .all(|seg| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(format!("{ty}: unsupported compartment expression {part}"));
        }
        out.push(rest.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_expressions() {
        assert_eq!(
            paths_of(
                "Observation",
                "Observation.subject.where(resolve() is Patient)"
            )
            .unwrap(),
            vec!["subject"]
        );
        assert_eq!(
            paths_of("Group", "Group.member.entity | Observation.subject").unwrap(),
            vec!["member.entity"]
        );
        assert!(paths_of("X", "X.a.as(Reference)").is_err());
    }
}
