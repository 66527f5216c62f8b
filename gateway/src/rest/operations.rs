//! `$meta`, `$validate` and `Patient/[id]/$everything`. Each one asks the policy for the same
//! permits as the interaction it resembles (a read, a search) and what it returns passes the same
//! disclosure. `$meta-add`/`$meta-delete` are patches (`rest::patch`).

use super::{Kind, Listing, Reply, page_reply};
use crate::app::App;
use crate::error::{Error, Issue, Result, outcome};
use crate::fhir::named_operations::{Mode, Validate};
use crate::fhir::operation::{Include, Read, Search};
use crate::policy::scopes::Permission;
use crate::policy::{Asked, Authenticated, Principal};
use http::StatusCode;
use serde_json::Value;

/// `[type]/[id]/$meta`: a read whose answer is only the meta.
pub async fn meta(app: &App, principal: &Principal, asked: &Asked, op: Read) -> Result<Reply> {
    let what = format!("{}/{}", op.ty, op.id);
    let permit = app.policy.authorize(principal, op)?;
    let stored = app
        .store
        .read(&permit)
        .await?
        .ok_or_else(|| Error::not_found(format!("{what} is not known")))?;
    let deleted = stored.is_deleted();
    let d = app
        .policy
        .disclose(permit.principal(), asked, stored, Permission::Read)
        .await?;
    if deleted {
        return Err(Error::gone(format!("{what} was deleted")));
    }
    let resource = d.get().json()?;
    let parameters = crate::fhir::meta::parameters(&crate::fhir::meta::of(&resource));
    let doc = app
        .policy
        .release_document(std::slice::from_ref(&d), parameters);
    Ok(super::with_refs(
        Reply::json(StatusCode::OK, doc),
        std::slice::from_ref(&d),
    ))
}

/// The answer of `$meta-add`/`$meta-delete`: the written resource's meta (from the disclosed
/// resource the update answered with).
pub fn meta_of_reply(mut reply: Reply) -> Result<Reply> {
    let resource: Value = match reply.body.take() {
        Some(super::Payload::Stored(b)) => serde_json::from_slice(&b).map_err(Error::internal)?,
        Some(super::Payload::Json(v)) => v,
        Some(super::Payload::Bundle(b)) => b.into_value(),
        other @ (Some(super::Payload::Raw { .. }) | None) => {
            reply.body = other;
            return Ok(reply);
        }
    };
    reply.body = Some(super::Payload::Json(crate::fhir::meta::parameters(
        &crate::fhir::meta::of(&resource),
    )));
    reply.status = StatusCode::OK;
    reply.location = None;
    Ok(reply)
}

/// `$validate`: the structure (R4 JSON schema), then the profile if one is named, then what the
/// mode needs (an update's id; a delete's target exists and may be seen). The answer is an
/// OperationOutcome with status 200 whether the resource is valid or not (R4 §3.1.0.2); a profile
/// that is not loaded, or a target that does not exist, is an error of the operation itself.
pub async fn validate(
    app: &App,
    principal: &Principal,
    asked: &Asked,
    op: Validate,
) -> Result<Reply> {
    // Validating what the client sent discloses nothing; it still needs a principal.
    app.policy.authorize(principal, Authenticated)?;
    let mut issues: Vec<Issue> = Vec::new();
    let mut refs = Vec::new();
    if let Some(id) = &op.id {
        // The instance must exist and be visible to this principal: a read like any other.
        let permit = app.policy.authorize(
            principal,
            Read {
                ty: op.ty.clone(),
                id: id.clone(),
            },
        )?;
        let stored = app.store.read(&permit).await?;
        match stored {
            Some(s) if !s.is_deleted() => {
                let d = app
                    .policy
                    .disclose(permit.principal(), asked, s, Permission::Read)
                    .await?;
                refs.push(d);
            }
            _ if op.mode == Mode::Delete => {
                return Err(Error::not_found(format!("{}/{id} is not known", op.ty)));
            }
            // An update may create the resource when the server allows it.
            _ if !app.config.rest.update_create => {
                return Err(Error::not_found(format!("{}/{id} is not known", op.ty)));
            }
            _ => {}
        }
    }
    if let Some(resource) = &op.resource {
        if let Err(e) = app.structure.validate(resource) {
            issues.extend(e.issues);
        }
        match (op.mode, &op.id, resource["id"].as_str()) {
            (Mode::Update, Some(id), Some(body_id)) if id != body_id => issues.push(error(
                "invalid",
                "the resource's id differs from the id in the URL",
            )),
            (Mode::Update, _, None) => {
                issues.push(error("required", "an update must carry the resource's id"))
            }
            (Mode::Create, _, Some(_)) => issues.push(Issue {
                severity: "warning",
                code: "informational",
                diagnostics: "a create's id is ignored; the server assigns one".into(),
                expression: Some(format!("{}.id", op.ty)),
            }),
            _ => {}
        }
        let mut profiles: Vec<String> = op.profile.iter().cloned().collect();
        // The profiles the resource claims, when the gateway holds them.
        for p in resource["meta"]["profile"].as_array().into_iter().flatten() {
            if let Some(p) = p.as_str()
                && !profiles.iter().any(|x| x == p)
            {
                profiles.push(p.to_owned());
            }
        }
        for url in &profiles {
            match app.policy.structure_definition(url).await? {
                Some(sd) => issues.extend(crate::fhir::profile::check(&sd, resource)),
                None if op.profile.as_deref() == Some(url.as_str()) => {
                    return Err(Error::invalid(format!(
                        "the profile {url} is not loaded into this server"
                    )));
                }
                None => issues.push(Issue {
                    severity: "warning",
                    code: "not-supported",
                    diagnostics: format!(
                        "the claimed profile {url} is not loaded; not validated against it"
                    ),
                    expression: Some(format!("{}.meta.profile", op.ty)),
                }),
            }
        }
    }
    if !issues.iter().any(|i| i.severity == "error") {
        issues.insert(
            0,
            Issue {
                severity: "information",
                code: "informational",
                diagnostics: "validation passed".into(),
                expression: None,
            },
        );
    }
    let doc = app.policy.release_document(&refs, outcome(&issues));
    Ok(super::with_refs(Reply::json(StatusCode::OK, doc), &refs))
}

fn error(code: &'static str, message: &str) -> Issue {
    Issue {
        severity: "error",
        code,
        diagnostics: message.into(),
        expression: None,
    }
}

/// `Patient/[id]/$everything`: a page of the compartment search over every type, plus what the
/// page's resources reference outside any patient's compartment (practitioners, organisations,
/// locations, medications), each read and disclosed like an `_include`.
pub async fn everything(
    app: &App,
    principal: &Principal,
    asked: &Asked,
    mut op: Search,
    base: &str,
) -> Result<Reply> {
    op.criteria.compartment = app
        .policy
        .search_compartment(principal, crate::fhir::operation::ALL_TYPES);
    let patient = op.criteria.within.clone().unwrap_or_default();
    let url = format!("{base}/Patient/{patient}/$everything");
    let params = op.applied.clone();
    let cursor = op.cursor.clone();
    let count = op.count;
    let compartment = op.criteria.compartment.is_some();
    let permit = app.policy.authorize(principal, op)?;
    let mut page = app.store.search(&permit).await?;
    // One person, several organisations: on the first page, what backends hold for the
    // Patients linked to this one by BSN (each disclosed like the rest of the page).
    let mut notes = Vec::new();
    if cursor.is_none()
        && !compartment
        && let Some(linked) = super::link::linked(app, principal, asked, &patient).await?
    {
        notes = linked.conflicts;
        // `Patient/[backend id]/$everything` asks for that backend's record too.
        let (remote, local): (Vec<String>, Vec<String>) = std::iter::once(patient.clone())
            .chain(linked.others)
            .partition(|id| app.federation.holds(id));
        let (found, outcomes) = from_backends(app, principal, &remote, count).await?;
        page.entries.extend(found);
        notes.extend(outcomes);
        // Other organisations' records of the person in this store: their compartments too.
        for other in local.iter().filter(|id| **id != patient) {
            let (found, more) = local_compartment(app, principal, other, count).await?;
            page.entries.extend(found);
            notes.extend(more);
        }
        // The count was of the local compartment only.
        page.total = None;
    }
    let mut types: Vec<String> = page.entries.iter().map(|s| s.ty.clone()).collect();
    types.sort();
    types.dedup();
    let includes = types
        .into_iter()
        .map(|source| Include {
            reverse: false,
            source,
            param: "*".into(),
            target: None,
            iterate: false,
        })
        .collect();
    let listing = Listing {
        base,
        url,
        params,
        cursor: cursor.as_deref(),
        how: Permission::Search,
        kind: Kind::Everything,
        includes,
        subset: None,
    };
    let mut reply = page_reply(app, permit.principal(), asked, listing, page).await?;
    if !notes.is_empty() {
        reply.add_outcome_entries(notes)?;
    }
    Ok(reply)
}

/// The first page of a linked local Patient's compartment (the Patient included), with the
/// principal's own permit; a note when there is more.
async fn local_compartment(
    app: &App,
    principal: &Principal,
    patient: &str,
    count: u32,
) -> Result<(Vec<crate::store::Stored>, Option<Value>)> {
    let op = Search {
        ty: crate::fhir::operation::ALL_TYPES.into(),
        criteria: crate::fhir::search::Criteria {
            within: Some(patient.to_owned()),
            compartment: app
                .policy
                .search_compartment(principal, crate::fhir::operation::ALL_TYPES),
            ..Default::default()
        },
        count,
        total: false,
        ..Default::default()
    };
    let Ok(permit) = app.policy.authorize(principal, op) else {
        return Ok((Vec::new(), None));
    };
    let page = app.store.search(&permit).await?;
    let more = page.next.is_some().then(|| {
        serde_json::json!({
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "incomplete",
                "diagnostics": format!("Patient/{patient} (the same person) holds more than one page; ask its own $everything")}]
        })
    });
    Ok((page.entries, more))
}

/// The linked Patients at their backends and, for each type a backend searches by `patient`,
/// their resources (one page each, with the principal's own permits; a type it may not search
/// is left out as the local part leaves it out). Failures and further pages are reported.
async fn from_backends(
    app: &App,
    principal: &Principal,
    patients: &[String],
    count: u32,
) -> Result<(Vec<crate::store::Stored>, Vec<Value>)> {
    let (mut found, mut notes) = (Vec::new(), Vec::new());
    if patients.is_empty() {
        return Ok((found, notes));
    }
    for id in patients {
        let read = crate::fhir::operation::Read {
            ty: "Patient".into(),
            id: id.clone(),
        };
        if let Ok(permit) = app.policy.authorize(principal, read)
            && let Ok(Some(p)) = app.federation.read(&permit).await
        {
            found.push(p);
        }
    }
    let refs = patients
        .iter()
        .map(|id| format!("Patient/{id}"))
        .collect::<Vec<_>>()
        .join(",");
    for ty in app.federation.patient_types() {
        let op = Search {
            ty: ty.clone(),
            count,
            applied: vec![("patient".into(), refs.clone())],
            total: false,
            ..Default::default()
        };
        let Ok(permit) = app.policy.authorize(principal, op) else {
            continue;
        };
        let fanned = app.federation.search(&permit, None).await;
        found.extend(fanned.matches);
        notes.extend(
            fanned
                .outcomes
                .into_iter()
                .filter(|o| o["issue"][0]["severity"] != "information"),
        );
        for backend in fanned.next.keys() {
            notes.push(serde_json::json!({
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "information", "code": "incomplete",
                    "diagnostics": format!("backend {backend} holds more {ty} for this person than one page; search {ty}?patient=[id] to page through them")}]
            }));
        }
    }
    Ok((found, notes))
}
