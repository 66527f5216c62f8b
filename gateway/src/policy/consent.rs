//! A patient's recorded consent, as FHIR R4 `Consent` resources, turned into rules and decided
//! the way Dutch practice (Mitz) decides them: the most specific provision that applies wins, and
//! at equal specificity a deny (an objection) wins.
//!
//! What a provision can say (each dimension optional; a nested provision also carries its
//! ancestors' conditions, since FHIR defines nested provisions as exceptions to their parent):
//! - `actor` with role `PRCP`/`IRCP` or no role: the requesting organisation, by identifier
//!   (`system` + `value`) or by organisation type (`identifier.system` = [`ORG_TYPE_SYSTEM`]);
//!   with role `CST` (custodian): the organisation that holds the data, likewise;
//! - `purpose`: purposes of use (v3 ActReason codes, e.g. `TREAT`, `ETREAT`);
//! - `class`: resource types (`http://hl7.org/fhir/resource-types`);
//! - `securityLabel` and `code`: data categories, matched against a resource's security labels,
//!   its `category` codings and the categories the gateway derives ([`DATA_CATEGORY_SYSTEM`]);
//! - `period`.
//!
//! Specificity, compared as a pair: first the sum over the dimensions (a named organisation 2, an
//! organisation type 1; resource type 1; data category 1; purpose 1; period 1), then the nesting
//! depth (an exception is more specific than its parent). Only `active` consents of scope
//! `patient-privacy` count.

use crate::config::Organization;
use serde_json::Value;
use time::OffsetDateTime;

/// `Identifier.system` for an organisation type in a provision's actor (RoleCodeNL-like codes
/// as the gateway's config names them: hospital, gp, vvt, youth-care, ggz, municipality, ggd, ...).
pub const ORG_TYPE_SYSTEM: &str = "https://healthhub-utrecht.nl/fhir/CodeSystem/organization-type";

/// The data categories the gateway derives from a resource, for consents that name them.
pub const DATA_CATEGORY_SYSTEM: &str = "https://healthhub-utrecht.nl/fhir/CodeSystem/data-category";

const RESOURCE_TYPES: &str = "http://hl7.org/fhir/resource-types";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Permit,
    Deny,
}

/// Who an actor condition names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgMatch {
    Named { system: String, value: String },
    Kind(String),
}

impl OrgMatch {
    fn matches(&self, org: &Organization) -> bool {
        match self {
            OrgMatch::Named { system, value } => &org.system == system && &org.value == value,
            OrgMatch::Kind(k) => &org.kind == k,
        }
    }
    fn weight(&self) -> u32 {
        match self {
            OrgMatch::Named { .. } => 2,
            OrgMatch::Kind(_) => 1,
        }
    }
}

/// A coding condition: the system may be left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub system: Option<String>,
    pub code: String,
}

impl Code {
    fn matches(&self, system: &str, code: &str) -> bool {
        self.code == code && self.system.as_deref().is_none_or(|s| s == system)
    }
}

/// One provision, flattened with the conditions it inherits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub verdict: Verdict,
    /// Each list is "any of"; an empty list does not constrain. Lists inherited from ancestors
    /// are kept apart so every level must hold.
    pub recipients: Vec<Vec<OrgMatch>>,
    pub holders: Vec<Vec<OrgMatch>>,
    pub purposes: Vec<Vec<Code>>,
    pub types: Vec<Vec<String>>,
    pub categories: Vec<Vec<Code>>,
    /// Inclusive start, exclusive end (either open).
    pub periods: Vec<(Option<OffsetDateTime>, Option<OffsetDateTime>)>,
    pub depth: u32,
    /// The Consent it came from (`Consent/[id]`), for the audit and for explanations.
    pub source: String,
}

/// What one disclosure is about.
#[derive(Debug)]
pub struct Facts<'a> {
    pub requester: &'a Organization,
    pub holder: Option<&'a Organization>,
    pub purpose: &'a str,
    pub resource_type: &'a str,
    /// (system, code) data categories of the resource.
    pub categories: &'a [(String, String)],
    pub at: OffsetDateTime,
}

impl Rule {
    fn applies(&self, f: &Facts<'_>) -> bool {
        self.recipients
            .iter()
            .all(|any| any.iter().any(|m| m.matches(f.requester)))
            && self
                .holders
                .iter()
                .all(|any| f.holder.is_some_and(|h| any.iter().any(|m| m.matches(h))))
            && self.purposes.iter().all(|any| {
                any.iter().any(|c| {
                    c.matches(
                        "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        f.purpose,
                    )
                })
            })
            && self
                .types
                .iter()
                .all(|any| any.iter().any(|t| t == f.resource_type))
            && self.categories.iter().all(|any| {
                any.iter()
                    .any(|c| f.categories.iter().any(|(s, k)| c.matches(s, k)))
            })
            && self
                .periods
                .iter()
                .all(|(start, end)| start.is_none_or(|s| f.at >= s) && end.is_none_or(|e| f.at < e))
    }

    /// (dimension weight, depth): compared lexicographically.
    pub fn specificity(&self) -> (u32, u32) {
        let org = |levels: &Vec<Vec<OrgMatch>>| {
            levels
                .iter()
                .map(|any| any.iter().map(OrgMatch::weight).min().unwrap_or(0))
                .max()
                .unwrap_or(0)
        };
        let present = |n: usize| u32::from(n > 0);
        let weight = org(&self.recipients)
            + org(&self.holders)
            + present(self.purposes.len())
            + present(self.types.len())
            + present(self.categories.len())
            + present(self.periods.len());
        (weight, self.depth)
    }
}

/// The decision of a patient's rules for these facts: `None` when no provision applies.
pub fn decide(rules: &[Rule], facts: &Facts<'_>) -> Option<(Verdict, String)> {
    let mut best: Option<&Rule> = None;
    for r in rules.iter().filter(|r| r.applies(facts)) {
        best = match best {
            None => Some(r),
            Some(b) => {
                let (rs, bs) = (r.specificity(), b.specificity());
                if rs > bs || (rs == bs && r.verdict == Verdict::Deny) {
                    Some(r)
                } else {
                    Some(b)
                }
            }
        };
    }
    best.map(|r| (r.verdict, r.source.clone()))
}

/// Whether a Consent counts: active, scope patient-privacy.
pub fn in_force(consent: &Value) -> bool {
    consent["status"] == "active"
        && consent["scope"]["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["code"] == "patient-privacy")
}

/// The rules of one Consent resource (none when it is not in force).
pub fn rules_of(consent: &Value, id: &str) -> Vec<Rule> {
    let mut out = Vec::new();
    if !in_force(consent) {
        return out;
    }
    let Some(root) = consent.get("provision") else {
        return out;
    };
    let base = Rule {
        verdict: Verdict::Deny,
        recipients: vec![],
        holders: vec![],
        purposes: vec![],
        types: vec![],
        categories: vec![],
        periods: vec![],
        depth: 0,
        source: format!("Consent/{id}"),
    };
    flatten(root, &base, 0, &mut out);
    out
}

fn flatten(p: &Value, parent: &Rule, depth: u32, out: &mut Vec<Rule>) {
    let mut rule = parent.clone();
    rule.depth = depth;
    // FHIR: a provision without a type inherits its meaning from the parent; the root without
    // one is a deny (deny by default).
    rule.verdict = match p["type"].as_str() {
        Some("permit") => Verdict::Permit,
        Some("deny") => Verdict::Deny,
        _ => parent.verdict,
    };
    let (mut recipients, mut holders) = (Vec::new(), Vec::new());
    for actor in p["actor"].as_array().into_iter().flatten() {
        let Some(m) = org_match(&actor["reference"]) else {
            continue;
        };
        let custodian = actor["role"]["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["code"] == "CST");
        if custodian {
            holders.push(m);
        } else {
            recipients.push(m);
        }
    }
    // An actor that cannot be understood must not widen a rule: it narrows it to nobody.
    let unreadable = p["actor"]
        .as_array()
        .is_some_and(|a| a.len() != recipients.len() + holders.len());
    if unreadable {
        recipients.push(OrgMatch::Kind("\u{0}unreadable".into()));
    }
    if !recipients.is_empty() {
        rule.recipients.push(recipients);
    }
    if !holders.is_empty() {
        rule.holders.push(holders);
    }
    let purposes: Vec<Code> = p["purpose"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(code_of)
        .collect();
    if !purposes.is_empty() {
        rule.purposes.push(purposes);
    }
    let types: Vec<String> = p["class"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["system"].as_str().is_none_or(|s| s == RESOURCE_TYPES))
        .filter_map(|c| c["code"].as_str().map(str::to_owned))
        .collect();
    if p["class"].as_array().is_some_and(|a| !a.is_empty()) {
        // Classes in other systems (profiles, ...) are not evaluated: such a rule applies to nothing.
        rule.types.push(types);
    }
    let mut categories: Vec<Code> = p["securityLabel"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(code_of)
        .collect();
    for cc in p["code"].as_array().into_iter().flatten() {
        categories.extend(
            cc["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(code_of),
        );
    }
    if !categories.is_empty() {
        rule.categories.push(categories);
    }
    if let Some(period) = p.get("period") {
        let at = |k: &str| {
            period[k]
                .as_str()
                .and_then(|s| crate::fhir::operation::parse_instant(s).ok())
        };
        rule.periods.push((at("start"), at("end")));
    }
    for child in p["provision"].as_array().into_iter().flatten() {
        flatten(child, &rule, depth + 1, out);
    }
    out.push(rule);
}

fn code_of(c: &Value) -> Option<Code> {
    Some(Code {
        system: c["system"].as_str().map(str::to_owned),
        code: c["code"].as_str()?.to_owned(),
    })
}

/// An actor reference: `{identifier: {system, value}}` naming an organisation or, with
/// [`ORG_TYPE_SYSTEM`], an organisation type.
fn org_match(reference: &Value) -> Option<OrgMatch> {
    let system = reference["identifier"]["system"].as_str()?;
    let value = reference["identifier"]["value"].as_str()?;
    Some(if system == ORG_TYPE_SYSTEM {
        OrgMatch::Kind(value.to_owned())
    } else {
        OrgMatch::Named {
            system: system.to_owned(),
            value: value.to_owned(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn org(value: &str, kind: &str) -> Organization {
        Organization {
            system: "http://fhir.nl/fhir/NamingSystem/ura".into(),
            value: value.into(),
            kind: kind.into(),
            name: value.into(),
        }
    }

    fn consent(provision: Value) -> Value {
        json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": "Patient/p"}, "provision": provision})
    }

    fn ask(
        rules: &[Rule],
        requester: &Organization,
        ty: &str,
        cats: &[(&str, &str)],
    ) -> Option<Verdict> {
        let categories: Vec<(String, String)> = cats
            .iter()
            .map(|(s, c)| (s.to_string(), c.to_string()))
            .collect();
        let holder = org("1", "hospital");
        decide(
            rules,
            &Facts {
                requester,
                holder: Some(&holder),
                purpose: "TREAT",
                resource_type: ty,
                categories: &categories,
                at: OffsetDateTime::now_utc(),
            },
        )
        .map(|(v, _)| v)
    }

    #[test]
    fn nested_exception_and_specificity() {
        // Deny everyone; permit GPs; but deny GPs lab results; and permit GP 7 everything.
        let c = consent(json!({"type": "deny", "provision": [
            {"type": "permit", "actor": [{"reference": {"identifier": {"system": ORG_TYPE_SYSTEM, "value": "gp"}}}],
             "provision": [{"type": "deny", "securityLabel": [{"system": DATA_CATEGORY_SYSTEM, "code": "lab"}]}]},
            {"type": "permit", "actor": [{"reference": {"identifier": {"system": "http://fhir.nl/fhir/NamingSystem/ura", "value": "7"}}}]}
        ]}));
        let rules = rules_of(&c, "c1");
        assert_eq!(rules.len(), 4);
        let lab = [(DATA_CATEGORY_SYSTEM, "lab")];
        assert_eq!(
            ask(&rules, &org("5", "hospital"), "Observation", &[]),
            Some(Verdict::Deny)
        );
        assert_eq!(
            ask(&rules, &org("6", "gp"), "Condition", &[]),
            Some(Verdict::Permit)
        );
        assert_eq!(
            ask(&rules, &org("6", "gp"), "Observation", &lab),
            Some(Verdict::Deny)
        );
        // A named organisation (2) weighs as much as "type + category" (1 + 1); the nested
        // exception is deeper, so the deny wins (as it would a tie).
        assert_eq!(
            ask(&rules, &org("7", "gp"), "Observation", &lab),
            Some(Verdict::Deny)
        );
        assert_eq!(
            ask(&rules, &org("7", "gp"), "Condition", &[]),
            Some(Verdict::Permit)
        );
    }

    #[test]
    fn deny_wins_ties_across_consents() {
        let gp = json!([{"reference": {"identifier": {"system": ORG_TYPE_SYSTEM, "value": "gp"}}}]);
        let mut rules = rules_of(&consent(json!({"type": "permit", "actor": gp})), "a");
        rules.extend(rules_of(
            &consent(json!({"type": "deny", "actor": gp})),
            "b",
        ));
        assert_eq!(
            ask(&rules, &org("6", "gp"), "Condition", &[]),
            Some(Verdict::Deny)
        );
        assert_eq!(ask(&rules, &org("6", "vvt"), "Condition", &[]), None);
    }

    #[test]
    fn inactive_expired_and_other_scopes_do_not_count() {
        let mut c = consent(json!({"type": "permit"}));
        c["status"] = json!("inactive");
        assert!(rules_of(&c, "x").is_empty());
        let mut c = consent(json!({"type": "permit"}));
        c["scope"]["coding"][0]["code"] = json!("research");
        assert!(rules_of(&c, "x").is_empty());
        let c = consent(json!({"type": "permit", "period": {"end": "2001-01-01"}}));
        let rules = rules_of(&c, "x");
        assert_eq!(ask(&rules, &org("6", "gp"), "Condition", &[]), None);
    }

    #[test]
    fn class_custodian_purpose_and_unreadable_actor() {
        let c = consent(json!({"type": "deny", "provision": [
            {"type": "permit", "class": [{"system": RESOURCE_TYPES, "code": "Immunization"}]},
            {"type": "permit", "actor": [{"role": {"coding": [{"code": "CST"}]}, "reference": {"identifier": {"system": ORG_TYPE_SYSTEM, "value": "hospital"}}}],
             "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]},
            {"type": "permit", "actor": [{"reference": {"reference": "Organization/x"}}]}
        ]}));
        let rules = rules_of(&c, "x");
        assert_eq!(
            ask(&rules, &org("6", "vvt"), "Immunization", &[]),
            Some(Verdict::Permit)
        );
        // Holder is a hospital and the purpose is TREAT: permitted for anyone.
        assert_eq!(
            ask(&rules, &org("6", "vvt"), "Condition", &[]),
            Some(Verdict::Permit)
        );
        // The unreadable actor (a literal reference) widened nothing.
        assert!(rules.iter().any(|r| {
            r.recipients
                .iter()
                .flatten()
                .any(|m| matches!(m, OrgMatch::Kind(k) if k.starts_with('\u{0}')))
        }));
    }
}
