//! The access log (NEN 7513), as FHIR `AuditEvent`s after IHE Basic Audit Log Patterns (BALP):
//! one per request, allowed, denied or failed, stored append-only and hash-chained in the
//! gateway's own store.
//!
//! Fail closed: a request is answered only after its event is committed; if the audit write
//! fails, the request fails. Writes are batched by one writer task (many requests, one commit)
//! so that logging every read does not serialize the server behind one fsync per request.

use crate::error::{Error, Result};
use crate::policy::Principal;
use crate::store::{
    AUDIT_GENESIS, AuditRecord, Store, chain_hash, format_instant, from_millis, now_ms, to_millis,
};
use serde_json::Value;
use std::borrow::Cow;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

mod event;
pub mod facts;

pub use facts::Facts;

/// The most events one commit carries.
const MAX_BATCH: usize = 512;

/// What a request did, for its audit event.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// BALP subtype: the FHIR interaction (read, vread, search-type, create, ...).
    pub interaction: String,
    /// C, R, U, D or E.
    pub action: &'static str,
    /// HTTP status of the answer.
    pub status: u16,
    /// Resources the answer carried or the request wrote, as `Type/id/_history/v`.
    pub entities: Vec<String>,
    /// `Patient/[id]` of the patients whose data it concerned.
    pub patients: Vec<String>,
    /// The query of a search, as sent.
    pub query: Option<String>,
    pub peer: String,
    /// Emergency access: the break-the-glass reason.
    pub emergency_reason: Option<String>,
    /// How many resources only break-the-glass released.
    pub emergency_releases: usize,
    /// (`Patient/[id]`, BSN) for the patients whose BSN is known.
    pub bsns: Vec<(String, String)>,
}

pub struct Auditor {
    queue: mpsc::Sender<(AuditRecord, oneshot::Sender<bool>)>,
}

impl Auditor {
    /// Starts the writer task on `store`.
    pub fn start(store: Arc<dyn Store>) -> Auditor {
        let (queue, mut rx) = mpsc::channel::<(AuditRecord, oneshot::Sender<bool>)>(8192);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let (records, waiters): (Vec<AuditRecord>, Vec<_>) = batch.into_iter().unzip();
                let ok = match store.append_audit(&records).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(error = %e, events = records.len(), "audit write failed; the requests fail");
                        false
                    }
                };
                for done in waiters {
                    let _ = done.send(ok);
                }
            }
        });
        Auditor { queue }
    }

    /// Records the event and waits until it is committed.
    pub async fn record(&self, principal: &Principal, access: &Access) -> Result<()> {
        let record = build(principal, access);
        let (done, wait) = oneshot::channel();
        // Without its audit record no request is answered: the server cannot serve right now (503).
        let failed = || {
            Error::store(
                "the access could not be logged; the request was not answered",
                true,
            )
        };
        self.queue
            .send((record, done))
            .await
            .map_err(|_| failed())?;
        match wait.await {
            Ok(true) => Ok(()),
            _ => Err(failed()),
        }
    }
}

/// BALP outcome codes from the HTTP status.
fn outcome(status: u16) -> &'static str {
    match status {
        200..=399 => "0",
        400..=499 => "4",
        _ => "8",
    }
}

/// The audit record of one request: its facts, stored as they are (see [`facts`]).
pub fn build(principal: &Principal, a: &Access) -> AuditRecord {
    let recorded = to_millis(now_ms());
    // Time-ordered (v7): consecutive events land on the right edge of `audit_log`'s id index
    // instead of dirtying a random page of it per event, which every commit then writes twice
    // (WAL frame and checkpoint).
    let id = uuid::Uuid::now_v7().to_string();
    let (who, agent_key) = match principal {
        Principal::Anonymous => (None, "anonymous".to_owned()),
        Principal::Token(t) => (
            Some(facts::Who {
                issuer: Cow::Borrowed(&t.issuer),
                subject: Cow::Borrowed(&t.subject),
                user: t.fhir_user.as_deref().map(Cow::Borrowed),
                org: (
                    Cow::Borrowed(&t.organization.system),
                    Cow::Borrowed(&t.organization.value),
                    Cow::Borrowed(&t.organization.name),
                ),
                purpose: t.purpose_of_use.as_deref().map(Cow::Borrowed),
            }),
            format!("{}|{}", t.issuer, t.subject),
        ),
    };
    let facts = Facts {
        id: Cow::Borrowed(&id),
        recorded,
        interaction: Cow::Borrowed(&a.interaction),
        action: Cow::Borrowed(a.action),
        status: a.status,
        peer: Cow::Borrowed(&a.peer),
        who,
        patients: borrowed(&a.patients),
        bsns: a
            .bsns
            .iter()
            .map(|(p, b)| (Cow::Borrowed(p.as_str()), Cow::Borrowed(b.as_str())))
            .collect(),
        entities: borrowed(&a.entities),
        query: a.query.as_deref().map(Cow::Borrowed),
        emergency: a.emergency_reason.as_deref().map(Cow::Borrowed),
        released: a.emergency_releases,
    };
    let stored = crate::store::audit_codec::pack_facts(&facts);
    AuditRecord::new(
        id,
        recorded,
        a.patients.first().cloned(),
        agent_key,
        outcome(a.status).to_owned(),
        stored,
    )
}

fn borrowed(v: &[String]) -> Vec<Cow<'_, str>> {
    v.iter().map(|s| Cow::Borrowed(s.as_str())).collect()
}

/// The `AuditEvent` JSON of stored facts.
pub fn render(f: &Facts) -> Vec<u8> {
    use event::{Agent, Coding, Concept, Entity, Event, Identifier, Meta};
    let at = format_instant(from_millis(f.recorded));
    let emergency = f.emergency.is_some();
    let (who, org, purpose) = match &f.who {
        None => (
            event::Who {
                identifier: None,
                display: "anonymous",
            },
            None,
            None,
        ),
        Some(w) => (
            event::Who {
                identifier: Some(Identifier {
                    system: &w.issuer,
                    value: &w.subject,
                }),
                display: w.user.as_deref().unwrap_or(&w.subject),
            },
            Some(event::Who {
                identifier: Some(Identifier {
                    system: &w.org.0,
                    value: &w.org.1,
                }),
                display: &w.org.2,
            }),
            w.purpose.as_deref(),
        ),
    };
    let mut agent = vec![Agent::recipient(who, &f.peer)];
    agent.extend(org.map(Agent::organisation));
    let mut entity: Vec<Entity> = f
        .patients
        .iter()
        .map(|p| {
            let bsn = f.bsns.iter().find(|(r, _)| r == p).map(|(_, b)| &**b);
            Entity::patient(p, bsn)
        })
        .collect();
    entity.extend(f.entities.iter().map(|e| Entity::data(e)));
    if let Some(q) = &f.query {
        entity.push(Entity::query(q));
    }
    let mut subtype = vec![Coding {
        system: "http://hl7.org/fhir/restful-interaction",
        code: &f.interaction,
        display: None,
    }];
    let glass;
    if let Some(reason) = &f.emergency {
        glass = format!(
            "{reason} (released {} resource(s) consent withheld)",
            f.released
        );
        subtype.push(Coding::of(
            "urn:healthhub-utrecht:audit",
            "break-the-glass",
            &glass,
        ));
    }
    let purpose = purpose.or(emergency.then_some("ETREAT"));
    let event = Event {
        resource_type: "AuditEvent",
        id: &f.id,
        meta: Meta {
            version_id: "1",
            last_updated: &at,
        },
        ty: if emergency {
            Coding::of(
                "http://dicom.nema.org/resources/ontology/DCM",
                "110113",
                "Security Alert",
            )
        } else {
            Coding::of(
                "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "rest",
                "RESTful Operation",
            )
        },
        subtype,
        action: &f.action,
        recorded: &at,
        outcome: outcome(f.status),
        outcome_desc: format!("HTTP {}", f.status),
        agent,
        source: event::SOURCE,
        purpose_of_event: purpose.map(|code| {
            [Concept {
                coding: [Coding {
                    system: "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                    code,
                    display: None,
                }],
            }]
        }),
        entity,
    };
    serde_json::to_vec(&event).expect("an AuditEvent serializes")
}

/// What `gateway audit verify` found.
#[derive(Debug, PartialEq, Eq)]
pub struct Verification {
    pub records: u64,
    /// Sequence numbers where the chain breaks (an edited, inserted or removed record).
    pub broken: Vec<i64>,
}

/// Walks the whole chain and recomputes every hash.
pub async fn verify(store: &dyn Store) -> Result<Verification> {
    let mut prev = AUDIT_GENESIS.to_owned();
    let mut after = 0;
    let mut records = 0;
    let mut broken = Vec::new();
    loop {
        let rows = store.scan_audit(after, 10_000).await?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            records += 1;
            let expected = chain_hash(&prev, &row.record.sealed());
            if row.prev_hash != prev || row.hash != expected {
                broken.push(row.seq);
            }
            prev = row.hash.clone();
            after = row.seq;
        }
    }
    Ok(Verification { records, broken })
}

/// `Patient/[id]` references a resource concerns: the Patient itself, or its subject/patient.
pub fn patients_of(ty: &str, id: &str, resource: &Value) -> Vec<String> {
    if ty == "Patient" {
        return vec![format!("Patient/{id}")];
    }
    ["subject", "patient", "beneficiary"]
        .iter()
        .filter_map(|k| resource.get(*k)?.get("reference")?.as_str())
        .filter(|r| r.starts_with("Patient/"))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::OffsetDateTime;

    /// The event as this module built it before `event`: a `serde_json::Value` tree.
    fn as_value_tree(
        principal: &Principal,
        a: &Access,
        id: String,
        recorded: OffsetDateTime,
    ) -> (Value, String) {
        let (who, org, agent_key, purpose) = match principal {
            Principal::Anonymous => (
                json!({ "display": "anonymous" }),
                Value::Null,
                "anonymous".to_owned(),
                None,
            ),
            Principal::Token(t) => (
                json!({
                    "identifier": { "system": t.issuer, "value": t.subject },
                    "display": t.fhir_user.clone().unwrap_or_else(|| t.subject.clone())
                }),
                json!({ "identifier": { "system": t.organization.system, "value": t.organization.value }, "display": t.organization.name }),
                format!("{}|{}", t.issuer, t.subject),
                t.purpose_of_use.clone(),
            ),
        };
        let emergency = a.emergency_reason.is_some();
        let mut agents = vec![json!({
            "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient" }] },
            "who": who,
            "requestor": true,
            "network": { "address": a.peer, "type": "2" }
        })];
        if !org.is_null() {
            // The organisation the user acted for (NEN 7513: the responsible party).
            agents.push(json!({
                "type": { "coding": [{ "system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150", "display": "Application" }] },
                "who": org,
                "requestor": false
            }));
        }
        let mut entities: Vec<Value> = a
            .patients
            .iter()
            .map(|p| {
                let what = match a.bsns.iter().find(|(r, _)| r == p) {
                    Some((_, bsn)) => json!({ "reference": p, "identifier": { "system": crate::policy::privacy::BSN_SYSTEM, "value": bsn } }),
                    None => json!({ "reference": p }),
                };
                json!({
                    "what": what,
                    "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person" },
                    "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient" }
                })
            })
            .collect();
        entities.extend(a.entities.iter().map(|e| {
            json!({
                "what": { "reference": e },
                "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object" },
                "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource" }
            })
        }));
        if let Some(q) = &a.query {
            use base64::Engine;
            entities.push(json!({
                "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object" },
                "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query" },
                "query": base64::engine::general_purpose::STANDARD.encode(q.as_bytes())
            }));
        }
        let mut event = json!({
            "resourceType": "AuditEvent",
            "id": id,
            "meta": { "versionId": "1", "lastUpdated": format_instant(recorded) },
            "type": if emergency {
                json!({ "system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110113", "display": "Security Alert" })
            } else {
                json!({ "system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation" })
            },
            "subtype": [{ "system": "http://hl7.org/fhir/restful-interaction", "code": a.interaction }],
            "action": a.action,
            "recorded": format_instant(recorded),
            "outcome": outcome(a.status),
            "outcomeDesc": format!("HTTP {}", a.status),
            "agent": agents,
            "source": {
                "observer": { "display": "Health Hub Utrecht regional FHIR gateway" },
                "type": [{ "system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server" }]
            },
        });
        if let Some(p) = purpose.or_else(|| emergency.then(|| "ETREAT".to_owned())) {
            event["purposeOfEvent"] = json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p }] }]);
        }
        if let Some(reason) = &a.emergency_reason {
            event["subtype"].as_array_mut().expect("subtype is an array").push(json!({
                "system": "urn:healthhub-utrecht:audit", "code": "break-the-glass",
                "display": format!("{reason} (released {} resource(s) consent withheld)", a.emergency_releases)
            }));
        }
        if !entities.is_empty() {
            event["entity"] = Value::Array(entities);
        }
        (event, agent_key)
    }

    fn token(fhir_user: Option<&str>, purpose: Option<&str>) -> Principal {
        let (_, org) = crate::policy::demo::organizations().remove(0);
        let Principal::Token(t) = crate::policy::feed_principal(org, "UMCU") else {
            unreachable!("a feed principal is a token")
        };
        let mut t = (*t).clone();
        t.fhir_user = fhir_user.map(str::to_owned);
        t.purpose_of_use = purpose.map(str::to_owned);
        Principal::Token(Arc::new(t))
    }

    /// The event `build` writes, byte for byte, against the same event built as a value tree
    /// (how it was built before `event`): same keys, same order, same values.
    #[test]
    fn events_are_written_as_the_value_tree_wrote_them() {
        let search = Access {
            interaction: "search-type".into(),
            action: "E",
            status: 200,
            entities: vec![
                "Observation/o1/_history/2".into(),
                "Observation/o2/_history/1".into(),
            ],
            patients: vec!["Patient/p1".into(), "Patient/p2".into()],
            query: Some("Observation?patient=Patient/p1&code=\"x\"".into()),
            peer: "10.0.0.7".into(),
            bsns: vec![("Patient/p2".into(), "999911120".into())],
            ..Default::default()
        };
        let glass = Access {
            interaction: "read".into(),
            action: "R",
            status: 200,
            entities: vec!["Observation/o1/_history/2".into()],
            patients: vec!["Patient/p1".into()],
            peer: "10.0.0.8".into(),
            emergency_reason: Some("unconscious \"patient\" at the ER".into()),
            emergency_releases: 3,
            ..Default::default()
        };
        let denied = Access {
            interaction: "create".into(),
            action: "C",
            status: 403,
            peer: "hl7v2 UMCU 42".into(),
            ..Default::default()
        };
        let principals = [
            Principal::Anonymous,
            token(None, None),
            token(Some("Practitioner/7"), Some("TREAT")),
        ];
        for principal in &principals {
            for access in [&search, &glass, &denied] {
                let record = build(principal, access);
                let json = record.json();
                let written: Value = serde_json::from_slice(&json).unwrap();
                let recorded = crate::store::from_millis(record.recorded_ms);
                let (tree, agent) = as_value_tree(principal, access, record.id.clone(), recorded);
                assert_eq!(record.agent, agent);
                assert_eq!(
                    std::str::from_utf8(&json).unwrap(),
                    serde_json::to_string(&tree).unwrap(),
                    "{access:?}"
                );
                assert_eq!(written["id"], json!(record.id));
            }
        }
    }
}
