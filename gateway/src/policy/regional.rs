//! The region's rules on top of each patient's consent, and the facts they are decided on: who
//! holds a resource (stamped at write) and what kind of data it is.
//!
//! - An organisation always sees the data it holds itself.
//! - Administrative data (the patient's demographics, organisations, practitioners, ...) is
//!   shared by scope alone; medical and social-domain data held by another organisation needs an
//!   explicit permit (opt-in), from the patient's Consent or the external decision point.
//! - Organisation types listed in `consent.medical_barred` (the municipalities' social-domain
//!   apps) never see medical data, whatever a consent says, break-the-glass included.

use crate::config::{ConsentPolicy, Organization};
use serde_json::{Map, Value, json};

use super::consent::DATA_CATEGORY_SYSTEM;

/// `meta.tag` system naming the organisation that holds (wrote) a resource version; the code is
/// `identifier-system|identifier-value`. The gateway sets it on every write and ignores what a
/// client sends for it.
pub const HOLDER_SYSTEM: &str = "https://healthhub-utrecht.nl/fhir/CodeSystem/holder";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataClass {
    Administrative,
    Medical,
    SocialDomain,
}

/// Sets the holder tag of `resource` to `org`, replacing any the client sent.
pub fn stamp_holder(resource: &mut Value, org: &Organization) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let meta = obj
        .entry("meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let meta = meta.as_object_mut().expect("meta is an object");
    let mut tags: Vec<Value> = match meta.remove("tag") {
        Some(Value::Array(t)) => t
            .into_iter()
            .filter(|t| t["system"] != HOLDER_SYSTEM)
            .collect(),
        _ => Vec::new(),
    };
    tags.push(json!({
        "system": HOLDER_SYSTEM,
        "code": format!("{}|{}", org.system, org.value),
        "display": org.name,
    }));
    meta.insert("tag".into(), Value::Array(tags));
}

/// The (identifier system, value) of the organisation that holds a resource, if it is tagged.
pub fn holder_of(resource: &Value) -> Option<(&str, &str)> {
    resource["meta"]["tag"]
        .as_array()?
        .iter()
        .find(|t| t["system"] == HOLDER_SYSTEM)?["code"]
        .as_str()?
        .rsplit_once('|')
}

/// What kind of data a resource is, and its data categories: its security labels, its
/// `category` codings, and what the gateway derives ([`DATA_CATEGORY_SYSTEM`]: `lab`,
/// `medication`, `social-domain`, and `medical` for all medical data).
pub fn classify(
    policy: &ConsentPolicy,
    ty: &str,
    resource: &Value,
) -> (DataClass, Vec<(String, String)>) {
    let mut cats: Vec<(String, String)> = Vec::new();
    let mut push = |c: &Value| {
        if let Some(code) = c["code"].as_str() {
            cats.push((
                c["system"].as_str().unwrap_or("").to_owned(),
                code.to_owned(),
            ));
        }
    };
    for c in resource["meta"]["security"]
        .as_array()
        .into_iter()
        .flatten()
    {
        push(c);
    }
    let category = &resource["category"];
    let concepts: Vec<&Value> = match category {
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![category],
        _ => vec![],
    };
    for cc in concepts {
        for c in cc["coding"].as_array().into_iter().flatten() {
            push(c);
        }
    }
    let derived = |code: &str| (DATA_CATEGORY_SYSTEM.to_owned(), code.to_owned());
    let social = cats
        .iter()
        .any(|(s, c)| s == DATA_CATEGORY_SYSTEM && c == "social-domain");
    if cats.iter().any(|(s, c)| {
        (s == "http://terminology.hl7.org/CodeSystem/observation-category" && c == "laboratory")
            || (s == "http://terminology.hl7.org/CodeSystem/v2-0074" && c == "LAB")
    }) {
        cats.push(derived("lab"));
    }
    if ty.starts_with("Medication") || ty == "Immunization" {
        cats.push(derived("medication"));
    }
    let class = if social {
        DataClass::SocialDomain
    } else if policy.administrative_types.iter().any(|t| t == ty) {
        DataClass::Administrative
    } else {
        cats.push(derived("medical"));
        DataClass::Medical
    };
    (class, cats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org() -> Organization {
        Organization {
            system: "http://fhir.nl/fhir/NamingSystem/ura".into(),
            value: "1".into(),
            kind: "hospital".into(),
            name: "H".into(),
        }
    }

    #[test]
    fn holder_tag_replaces_a_forged_one_and_keeps_other_tags() {
        let mut r = json!({"resourceType": "Observation", "meta": {"tag": [
            {"system": HOLDER_SYSTEM, "code": "x|forged"}, {"system": "urn:t", "code": "keep"}]}});
        stamp_holder(&mut r, &org());
        let tags = r["meta"]["tag"].as_array().unwrap();
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[0]["code"], "keep");
        assert_eq!(
            holder_of(&r),
            Some(("http://fhir.nl/fhir/NamingSystem/ura", "1"))
        );
        let mut bare = json!({"resourceType": "Patient", "meta": "nonsense"});
        stamp_holder(&mut bare, &org());
        assert!(holder_of(&bare).is_some());
    }

    #[test]
    fn classes_and_derived_categories() {
        let p = ConsentPolicy::default();
        let lab = json!({"category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}]});
        let (class, cats) = classify(&p, "Observation", &lab);
        assert_eq!(class, DataClass::Medical);
        assert!(cats.contains(&(DATA_CATEGORY_SYSTEM.into(), "lab".into())));
        assert!(cats.contains(&(DATA_CATEGORY_SYSTEM.into(), "medical".into())));
        let (_, cats) = classify(
            &p,
            "Observation",
            &json!({"category": [{"coding": [{"system": "urn:other", "code": "laboratory"}]}]}),
        );
        assert!(!cats.contains(&(DATA_CATEGORY_SYSTEM.into(), "lab".into())));
        assert_eq!(
            classify(&p, "Patient", &json!({})).0,
            DataClass::Administrative
        );
        let wmo = json!({"category": {"coding": [{"system": DATA_CATEGORY_SYSTEM, "code": "social-domain"}]}});
        assert_eq!(
            classify(&p, "ServiceRequest", &wmo).0,
            DataClass::SocialDomain
        );
        let (_, cats) = classify(&p, "MedicationRequest", &json!({}));
        assert!(cats.contains(&(DATA_CATEGORY_SYSTEM.into(), "medication".into())));
    }
}
