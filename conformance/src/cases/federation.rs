//! Federation: resources from backends behind the gateway's adapters. The backends are found at
//! the gateway's operator endpoint `GET /federation` (beside `/fhir`); a deployment that lists
//! none skips this group (the summary says so).

use super::{Case, Outcome, is_outcome, test_patient};
use crate::client::Fhir;
use crate::{case, ensure};
use serde_json::Value;

const HOLDER: &str = "https://healthhub-utrecht.nl/fhir/CodeSystem/holder";

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "resources from a backend carry its id prefix, meta.source and the holder tag",
            provenance
        ),
        case!(
            "a backend's unknown id is 404; a backend that is down is a 502/504 naming it",
            reads
        ),
        case!(
            "a search answers 200 with what it has; a backend down is named in an outcome entry",
            partial_results
        ),
        case!("a tampered federated cursor is refused with 400", cursor),
        case!(
            "a Consent at the gateway governs a backend's data; its holder still sees its own",
            consent_across_organisations
        ),
    ]
}

/// The backends the deployment lists (`GET /federation`), empty when it lists none.
pub async fn backends(c: &Fhir) -> Vec<Value> {
    let root = c.base.trim_end_matches('/').trim_end_matches("/fhir");
    let Ok(r) = c.anonymous.get(format!("{root}/federation")).send().await else {
        return Vec::new();
    };
    let Ok(v) = r.json::<Value>().await else {
        return Vec::new();
    };
    v["backends"].as_array().cloned().unwrap_or_default()
}

fn name(b: &Value) -> &str {
    b["name"].as_str().unwrap_or_default()
}

fn is_up(b: &Value) -> bool {
    b["health"] == "up"
}

fn first_type(b: &Value) -> Option<&str> {
    b["searchable"].as_array()?.first()?.as_str()
}

fn outcome_texts(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "outcome")
        .map(|e| e["resource"].to_string())
        .collect()
}

async fn provenance(c: Fhir) -> Outcome {
    let all = backends(&c).await;
    let up: Vec<&Value> = all.iter().filter(|b| is_up(b)).collect();
    ensure!(!up.is_empty(), "no backend is up at /federation: {all:?}");
    for b in up {
        let Some(ty) = first_type(b) else { continue };
        let a = c.get(&format!("{ty}?_count=50")).await?;
        ensure!(a.status == 200, "{ty} search: {} {}", a.status, a.text);
        let prefix = format!("{}.", name(b));
        let theirs: Vec<&Value> = a.body["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| &e["resource"])
            .filter(|r| r["id"].as_str().is_some_and(|id| id.starts_with(&prefix)))
            .collect();
        ensure!(
            !theirs.is_empty(),
            "no {ty} from backend {} in the first 50 matches",
            name(b)
        );
        for r in theirs {
            ensure!(
                r["meta"]["source"].as_str().is_some_and(|s| !s.is_empty()),
                "{} has no meta.source",
                r["id"]
            );
            let tags = r["meta"]["tag"].as_array().cloned().unwrap_or_default();
            ensure!(
                tags.iter().any(|t| t["system"] == HOLDER),
                "{} has no holder tag",
                r["id"]
            );
        }
    }
    Ok(())
}

async fn reads(c: Fhir) -> Outcome {
    let all = backends(&c).await;
    ensure!(!all.is_empty(), "no backends at /federation");
    for b in &all {
        let Some(ty) = first_type(b) else { continue };
        let id = format!("{}.conformance-{}", name(b), uuid::Uuid::new_v4().simple());
        let a = c.get(&format!("{ty}/{id}")).await?;
        ensure!(
            is_outcome(&a.body),
            "{ty}/{id}: not an OperationOutcome: {}",
            a.text
        );
        if is_up(b) {
            ensure!(
                a.status == 404,
                "{ty}/{id} at a backend that is up: {}",
                a.status
            );
        } else {
            ensure!(
                a.status == 502 || a.status == 504,
                "{ty}/{id} at a backend that is down: {}",
                a.status
            );
            ensure!(
                a.text.contains(name(b)),
                "the outcome does not name {}",
                name(b)
            );
        }
    }
    Ok(())
}

async fn partial_results(c: Fhir) -> Outcome {
    let all = backends(&c).await;
    ensure!(!all.is_empty(), "no backends at /federation");
    for b in &all {
        let Some(ty) = first_type(b) else { continue };
        let a = c.get(&format!("{ty}?_count=5")).await?;
        ensure!(a.status == 200, "{ty} search: {} {}", a.status, a.text);
        let named = outcome_texts(&a.body)
            .iter()
            .any(|o| o.contains(&format!("backend {}", name(b))) && o.contains("\"warning\""));
        if is_up(b) {
            ensure!(!named, "backend {} is up but reported failed", name(b));
        } else {
            ensure!(named, "backend {} is down but no outcome names it", name(b));
            ensure!(
                a.body.get("total").is_none(),
                "a partial result carries a total"
            );
        }
    }
    Ok(())
}

async fn cursor(c: Fhir) -> Outcome {
    let all = backends(&c).await;
    let ty = all.iter().find_map(first_type).unwrap_or("Patient");
    let a = c.get(&format!("{ty}?_cursor=~bm90LWpzb24")).await?;
    ensure!(a.status == 400, "tampered cursor: {} {}", a.status, a.text);
    ensure!(is_outcome(&a.body), "not an OperationOutcome: {}", a.text);
    Ok(())
}

/// The holder tag's code (`system|value` of the organisation) of a resource.
fn holder(r: &Value) -> Option<String> {
    r["meta"]["tag"]
        .as_array()?
        .iter()
        .find(|t| t["system"] == HOLDER)?["code"]
        .as_str()
        .map(str::to_owned)
}

/// A resource from a backend about one of its patients (not a Patient: demographics are
/// administrative data, not what consent guards), and that patient's gateway id.
async fn backend_record(c: &Fhir, b: &Value) -> Result<Option<(Value, String)>, String> {
    let prefix = format!("Patient/{}.", name(b));
    let types: Vec<&str> = b["searchable"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|t| *t != "Patient")
        .collect();
    for ty in types {
        let a = c.get(&format!("{ty}?_count=20")).await?;
        ensure!(a.status == 200, "{ty} search: {} {}", a.status, a.text);
        for e in a.body["entry"].as_array().into_iter().flatten() {
            let r = &e["resource"];
            let patient = ["subject", "patient"]
                .iter()
                .filter_map(|k| r[*k]["reference"].as_str())
                .find(|p| p.starts_with(&prefix));
            if e["search"]["mode"] == "match"
                && let Some(p) = patient
            {
                return Ok(Some((r.clone(), p.to_owned())));
            }
        }
    }
    Ok(None)
}

/// Records a deny (no actor: every requester) for a backend's patient at the gateway, then reads
/// the backend's resource about them again. The organisation the suite's token speaks for (found
/// from the holder tag of a Patient it writes) decides what must happen: another organisation's
/// token no longer sees it, and sees it again once the Consent is deleted; the holder's own token
/// still sees it (a holder always sees its own data).
async fn consent_across_organisations(c: Fhir) -> Outcome {
    let all = backends(&c).await;
    let mut found = None;
    for b in all.iter().filter(|b| is_up(b)) {
        if let Some(f) = backend_record(&c, b).await? {
            found = Some(f);
            break;
        }
    }
    let Some((record, patient)) = found else {
        return Err(
            "no resource about a backend's patient is visible to this token (a backend up, a \
             searchable type other than Patient, a consent that lets this token see it)"
                .into(),
        );
    };
    let ty = record["resourceType"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let path = format!("{ty}/{}", record["id"].as_str().unwrap_or_default());
    let theirs = holder(&record).ok_or(format!("{path} has no holder tag"))?;

    let me = c
        .post("Patient", &test_patient("federation-consent"), &[])
        .await?;
    ensure!(
        me.status == 201,
        "Patient create: {} {}",
        me.status,
        me.text
    );
    let mine = holder(&me.body).ok_or("a Patient written here has no holder tag")?;
    let me_id = me.body["id"].as_str().unwrap_or_default().to_owned();
    c.delete(&format!("Patient/{me_id}"), &[]).await?;

    let deny = serde_json::json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": patient},
        "policy": [{"uri": "urn:conformance:federation-consent"}],
        "provision": {"type": "deny",
            "class": [{"system": "http://hl7.org/fhir/resource-types", "code": ty}]}
    });
    let posted = c.post("Consent", &deny, &[]).await?;
    ensure!(
        posted.status == 201,
        "the token must be able to write a Consent for this case: {} {}",
        posted.status,
        posted.text
    );
    let consent = posted.body["id"].as_str().unwrap_or_default().to_owned();
    let during = c.get(&path).await?;
    let mut verdict = Ok(());
    if theirs == mine {
        if during.status != 200 {
            verdict = Err(format!(
                "{path}: its holder's own token got {} under another's deny",
                during.status
            ));
        }
    } else if during.status == 200 {
        verdict = Err(format!(
            "{path} (held by {theirs}) is still disclosed to {mine} after a deny for {patient}"
        ));
    } else if !(during.status == 403 || during.status == 404) || !is_outcome(&during.body) {
        verdict = Err(format!(
            "{path} under a deny: {} {}",
            during.status, during.text
        ));
    }
    let gone = c.delete(&format!("Consent/{consent}"), &[]).await?;
    ensure!(
        gone.status == 200 || gone.status == 204,
        "Consent delete: {}",
        gone.status
    );
    verdict?;
    let after = c.get(&path).await?;
    ensure!(
        after.status == 200,
        "{path} after the deny was deleted: {}",
        after.status
    );
    Ok(())
}
