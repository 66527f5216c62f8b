//! Identity linking by BSN: Patients that different organisations hold (in the gateway's store or
//! behind adapters) with the same BSN are one person. A search for one patient's data
//! (`Observation?patient=X`) is widened to every Patient linked to X, so it gathers from every
//! organisation that holds data; each result is still disclosed by the policy (consent decides).
//!
//! The links are found with the asking principal's own rights: X must be readable and Patients
//! searchable by it, or the search stays as asked. Linked Patients whose demographics disagree
//! with X's (birth date, gender, family name) are reported in an outcome, never merged silently.

use crate::app::App;
use crate::error::Result;
use crate::fhir::operation::{Read, Search};
use crate::fhir::search::{ClauseKind, Criteria, Pred, Token};
use crate::policy::privacy::BSN_SYSTEM;
use crate::policy::scopes::Permission;
use crate::policy::{Asked, Principal};
use serde_json::{Value, json};

/// The reference parameters a patient's data is searched by.
const PATIENT_PARAMS: &[&str] = &["patient", "subject", "subject:Patient"];

/// At most this many linked Patients are looked for (one person, a few organisations).
const MAX_LINKED: u32 = 50;

/// Patients linked to one.
#[derive(Debug, Default)]
pub struct Linked {
    /// Gateway ids (local and `{adapter}.{id}`) of the other Patients with the same BSN.
    pub others: Vec<String>,
    /// One outcome per linked Patient whose demographics disagree.
    pub conflicts: Vec<Value>,
}

/// The single Patient a search is for, if it names one (`patient=Patient/X` or `patient=X`).
pub fn patient_of(op: &Search) -> Option<String> {
    let mut found = None;
    for (k, v) in &op.applied {
        if PATIENT_PARAMS.contains(&k.as_str()) {
            if found.is_some() || v.contains(',') {
                return None;
            }
            let id = v.strip_prefix("Patient/").unwrap_or(v);
            if id.contains('/') || id.is_empty() {
                return None;
            }
            found = Some(id.to_owned());
        }
    }
    found
}

/// A patient-context search (`op.criteria.compartment` set) by `person` (see
/// [`crate::policy::Policy::as_person`]): the compartment covers the person's other records in
/// this store; a search that names one of their records (`patient=X`) is widened to all of them,
/// as for any principal; one that names none asks the backends that hold the person's records
/// for those only. Whether any backend holds one of them (and so is to be asked).
pub fn for_person(app: &App, op: &mut Search, person: &Principal) -> bool {
    let Principal::Token(t) = person else {
        return false;
    };
    if op.criteria.compartment.is_none() || t.linked.is_empty() {
        return false;
    }
    let mut partner_records = Vec::new();
    for id in &t.linked {
        if app.federation.holds(id) {
            partner_records.push(id.clone());
        } else {
            op.criteria.compartment_linked.push(id.clone());
        }
    }
    let named =
        patient_of(op).filter(|p| t.patient.as_deref() == Some(p.as_str()) || t.linked.contains(p));
    if let Some(p) = named {
        let others = t
            .linked
            .iter()
            .chain(t.patient.as_ref())
            .filter(|id| **id != p)
            .cloned()
            .collect();
        widen(
            op,
            &Linked {
                others,
                conflicts: Vec::new(),
            },
        );
    } else if !partner_records.is_empty() {
        let (param, refs): (&str, Vec<String>) = if op.ty == "Patient" {
            ("_id", partner_records.clone())
        } else {
            (
                "patient",
                partner_records
                    .iter()
                    .map(|id| format!("Patient/{id}"))
                    .collect(),
            )
        };
        op.applied.push((param.to_owned(), refs.join(",")));
    }
    !partner_records.is_empty()
}

/// Widens `op` to the linked Patients: the local criteria and the parameters backends get.
pub fn widen(op: &mut Search, linked: &Linked) {
    if linked.others.is_empty() {
        return;
    }
    let refs: Vec<String> = linked
        .others
        .iter()
        .map(|id| format!("Patient/{id}"))
        .collect();
    for c in &mut op.criteria.clauses {
        if PATIENT_PARAMS.contains(&c.param.as_str())
            && let ClauseKind::Any(preds) = &mut c.how
        {
            preds.push(Pred::Reference(refs.clone()));
        }
    }
    for (k, v) in &mut op.applied {
        if PATIENT_PARAMS.contains(&k.as_str()) {
            for r in &refs {
                v.push(',');
                v.push_str(r);
            }
        }
    }
}

/// Adds `link` (type `seealso`) to a released Patient for every other Patient with its BSN that
/// the principal may see, unless the Patient already links to it. Only in deployments with
/// backends: it costs a search per Patient read.
pub async fn add_links(
    app: &App,
    principal: &Principal,
    asked: &Asked,
    patient: crate::policy::Disclosed<crate::store::Stored>,
) -> Result<crate::policy::Disclosed<crate::store::Stored>> {
    let s = patient.get();
    if app.federation.is_empty() || s.ty != "Patient" || s.is_deleted() {
        return Ok(patient);
    }
    let id = s.id.clone();
    let mut me = s.json()?;
    let Some(bsn) = bsn_of(&me) else {
        return Ok(patient);
    };
    let found = same_bsn(app, principal, asked, &id, &me, &bsn).await?;
    let Some(found) = found.filter(|l| !l.others.is_empty()) else {
        return Ok(patient);
    };
    let links = me["link"].as_array().cloned().unwrap_or_default();
    let mut links = links;
    for other in &found.others {
        let reference = format!("Patient/{other}");
        if !links
            .iter()
            .any(|l| l["other"]["reference"] == reference.as_str())
        {
            links.push(json!({"other": {"reference": reference}, "type": "seealso"}));
        }
    }
    me["link"] = Value::Array(links);
    let body = serde_json::to_vec(&me).map_err(crate::error::Error::internal)?;
    Ok(patient.amend(|s| s.body = Some(body.into())))
}

/// The Patients linked to `patient` by BSN, as far as `principal` may see them.
pub async fn linked(
    app: &App,
    principal: &Principal,
    asked: &Asked,
    patient: &str,
) -> Result<Option<Linked>> {
    let policy = &app.policy;
    let read = Read {
        ty: "Patient".into(),
        id: patient.to_owned(),
    };
    let Ok(permit) = policy.authorize(principal, read) else {
        return Ok(None);
    };
    let found = if app.federation.holds(patient) {
        // A backend that is down links nothing; the search itself reports it.
        app.federation.read(&permit).await.ok().flatten()
    } else {
        policy.read_for_linking(&permit).await?
    };
    let Some(found) = found.filter(|s| !s.is_deleted()) else {
        return Ok(None);
    };
    let Ok(me) = policy
        .disclose(principal, asked, found, Permission::Read)
        .await
    else {
        return Ok(None);
    };
    let me = me.get().json()?;
    let Some(bsn) = bsn_of(&me) else {
        return Ok(None);
    };
    same_bsn(app, principal, asked, patient, &me, &bsn).await
}

/// The other Patients with `bsn` (local and at backends) that `principal` may see, and where
/// their demographics disagree with `me`'s.
async fn same_bsn(
    app: &App,
    principal: &Principal,
    asked: &Asked,
    patient: &str,
    me: &Value,
    bsn: &str,
) -> Result<Option<Linked>> {
    let policy = &app.policy;
    let search = Search {
        ty: "Patient".into(),
        criteria: Criteria {
            identifiers: vec![vec![Token {
                system: Some(BSN_SYSTEM.into()),
                value: Some(bsn.to_owned()),
            }]],
            compartment: policy.search_compartment(principal, "Patient"),
            ..Default::default()
        },
        count: MAX_LINKED,
        applied: vec![("identifier".into(), format!("{BSN_SYSTEM}|{bsn}"))],
        total: false,
        ..Default::default()
    };
    let Ok(permit) = policy.authorize(principal, search) else {
        return Ok(None);
    };
    let (local, remote) = futures::join!(
        policy.search_for_linking(&permit),
        app.federation.search(&permit, None)
    );
    let mut all = local?;
    all.extend(remote.matches);
    let seen = policy
        .disclose_each(principal, asked, all, Permission::Search)
        .await?;
    let mut out = Linked::default();
    for d in seen.entries {
        let other = d.get().json()?;
        let id = d.get().id.clone();
        // Only a Patient that really carries the BSN (a backend may match loosely).
        if id == patient || bsn_of(&other).as_deref() != Some(bsn) {
            continue;
        }
        let differ = differences(me, &other);
        if !differ.is_empty() {
            out.conflicts.push(json!({
                "resourceType": "OperationOutcome",
                "issue": [{
                    "severity": "warning",
                    "code": "business-rule",
                    "diagnostics": format!(
                        "Patient/{id} has the BSN of Patient/{patient} but another {}; its data is included, the records are not merged",
                        differ.join(", ")
                    ),
                }]
            }));
        }
        out.others.push(id);
    }
    Ok(Some(out))
}

fn bsn_of(patient: &Value) -> Option<String> {
    patient["identifier"]
        .as_array()?
        .iter()
        .find(|i| i["system"] == BSN_SYSTEM)?["value"]
        .as_str()
        .map(str::to_owned)
}

/// The demographics two records of one person disagree on (where both say something).
fn differences(a: &Value, b: &Value) -> Vec<&'static str> {
    let family = |p: &Value| {
        p["name"][0]["family"]
            .as_str()
            .map(crate::fhir::search_index::fold)
    };
    let mut out = Vec::new();
    for (what, x, y) in [
        (
            "birthDate",
            a["birthDate"].as_str().map(str::to_owned),
            b["birthDate"].as_str().map(str::to_owned),
        ),
        (
            "gender",
            a["gender"].as_str().map(str::to_owned),
            b["gender"].as_str().map(str::to_owned),
        ),
        ("family name", family(a), family(b)),
    ] {
        if let (Some(x), Some(y)) = (x, y)
            && x != y
        {
            out.push(what);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_patient_parameter_is_recognised_and_widened() {
        let mut op = Search {
            ty: "Observation".into(),
            applied: vec![
                ("patient".into(), "Patient/p1".into()),
                ("code".into(), "x".into()),
            ],
            ..Default::default()
        };
        assert_eq!(patient_of(&op).as_deref(), Some("p1"));
        widen(
            &mut op,
            &Linked {
                others: vec!["antonius.9".into(), "p2".into()],
                conflicts: vec![],
            },
        );
        assert_eq!(op.applied[0].1, "Patient/p1,Patient/antonius.9,Patient/p2");
        let two = Search {
            applied: vec![("patient".into(), "Patient/p1,Patient/p2".into())],
            ..Default::default()
        };
        assert_eq!(patient_of(&two), None);
    }

    #[test]
    fn differing_demographics_are_named() {
        let a =
            json!({"birthDate": "1980-05-17", "gender": "female", "name": [{"family": "Jänsen"}]});
        let b =
            json!({"birthDate": "1980-05-17", "gender": "female", "name": [{"family": "Jansen"}]});
        assert!(
            differences(&a, &b).is_empty(),
            "diacritics are not a conflict"
        );
        let c = json!({"birthDate": "1981-05-17", "name": [{"family": "Pietersen"}]});
        assert_eq!(differences(&a, &c), vec!["birthDate", "family name"]);
    }
}
