//! Patient compartment membership, from `schemas/fhir/patient-compartment.json` (generated from
//! the R4 CompartmentDefinition and SearchParameters): which patients a resource belongs to.

use serde_json::Value;
use std::collections::HashMap;
use std::sync::OnceLock;

const TABLE: &str = include_str!("../../../schemas/fhir/patient-compartment.json");

fn table() -> &'static HashMap<String, Vec<Vec<String>>> {
    static T: OnceLock<HashMap<String, Vec<Vec<String>>>> = OnceLock::new();
    T.get_or_init(|| {
        let raw: HashMap<String, Vec<String>> =
            serde_json::from_str(TABLE).expect("the compartment table is JSON");
        raw.into_iter()
            .map(|(ty, paths)| {
                (
                    ty,
                    paths
                        .iter()
                        .map(|p| p.split('.').map(str::to_owned).collect())
                        .collect(),
                )
            })
            .collect()
    })
}

/// The ids of the patients whose compartment holds this resource (a Patient is in its own).
pub fn patients(ty: &str, id: &str, resource: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if ty == "Patient" {
        out.push(id.to_owned());
    }
    for path in table().get(ty).into_iter().flatten() {
        let mut nodes = vec![resource];
        for seg in path {
            nodes = nodes
                .into_iter()
                .filter_map(|n| n.get(seg.as_str()))
                .flat_map(|v| match v {
                    Value::Array(a) => a.iter().collect::<Vec<_>>(),
                    other => vec![other],
                })
                .collect();
        }
        for node in nodes {
            if let Some(r) = node.get("reference").and_then(Value::as_str)
                && let Some(pid) = patient_id(r)
                && !out.iter().any(|o| o == pid)
            {
                out.push(pid.to_owned());
            }
        }
    }
    out
}

/// `Patient/123`, `Patient/123/_history/2` or an absolute URL ending so -> `123`.
fn patient_id(reference: &str) -> Option<&str> {
    let at = reference.rfind("Patient/")?;
    if at > 0 && !reference[..at].ends_with('/') {
        return None;
    }
    reference[at + 8..]
        .split('/')
        .next()
        .filter(|id| !id.is_empty())
}

/// Whether the type has a patient compartment at all.
pub fn has_compartment(ty: &str) -> bool {
    ty == "Patient" || table().contains_key(ty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn membership_follows_the_definition() {
        let obs = json!({"subject": {"reference": "Patient/p1"}, "performer": [{"reference": "Practitioner/x"}, {"reference": "Patient/p2"}]});
        assert_eq!(patients("Observation", "o", &obs), vec!["p1", "p2"]);
        assert_eq!(patients("Patient", "p1", &json!({})), vec!["p1"]);
        let group = json!({"member": [{"entity": {"reference": "Patient/a"}}, {"entity": {"reference": "Device/d"}}]});
        assert_eq!(patients("Group", "g", &group), vec!["a"]);
        assert!(
            patients(
                "Organization",
                "o",
                &json!({"partOf": {"reference": "Patient/x"}})
            )
            .is_empty()
        );
        assert_eq!(
            patients(
                "Observation",
                "o",
                &json!({"subject": {"reference": "https://x/fhir/Patient/p9"}})
            ),
            vec!["p9"]
        );
        assert!(
            patients(
                "Observation",
                "o",
                &json!({"subject": {"reference": "NotPatient/p9"}})
            )
            .is_empty()
        );
    }
}
