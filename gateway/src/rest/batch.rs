//! Batch and transaction Bundles.
//!
//! A **batch** runs each entry as the request it describes, through the same interaction code
//! as a single request (its own permit, its own disclosure); one entry's failure is that entry's
//! OperationOutcome.
//!
//! A **transaction** is all or nothing. Every entry must parse, validate and be permitted before
//! anything is written; the writes then run in one store transaction ([`writes::transaction`]:
//! deletes, creates, updates; `urn:uuid:`/`urn:oid:` full URLs and conditional references
//! resolved there); its reads run after the commit. Any failure answers with that entry's error
//! and leaves the store as it was.
//!
//! [`writes::transaction`]: crate::store::writes::transaction

use super::{Payload, Reply, Write, interaction_boxed, version_url};
use crate::app::App;
use crate::error::{Error, Result};
use crate::fhir::bundle_request::{BundleRequest, Kind, place};
use crate::fhir::operation::{Operation, Request, Return, Search, Target};
use crate::fhir::references;
use crate::policy::{Asked, Principal};
use crate::store::sql::Indexing;
use crate::store::{Created, Stored, Transaction, TxOutcome, TxPermit, TxWrite, new_id};
use http::StatusCode;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};

pub async fn execute(
    app: &App,
    principal: &Principal,
    asked: &Asked,
    b: BundleRequest,
    base: &str,
    ret: Return,
) -> Result<Reply> {
    // A bundle is a request like any other: without a principal, nothing, even for no entries.
    let _permit = app
        .policy
        .authorize(principal, crate::policy::Authenticated)?;
    match b.kind {
        Kind::Batch => batch(app, principal, asked, b).await,
        Kind::Transaction => transaction(app, principal, asked, b, base, ret).await,
    }
}

/// What the response bundle and the audit collect from each entry's reply.
#[derive(Default)]
struct Collected {
    entries: Vec<Value>,
    audit_entities: Vec<String>,
    audit_patients: Vec<String>,
    emergency_releases: usize,
}

impl Collected {
    fn push(&mut self, r: Result<Reply>) {
        self.entries.push(match r {
            Ok(mut reply) => {
                self.audit_entities.append(&mut reply.entities);
                for p in reply.patients.drain(..) {
                    if !self.audit_patients.contains(&p) {
                        self.audit_patients.push(p);
                    }
                }
                self.emergency_releases += reply.emergency_releases;
                entry_of(reply)
            }
            Err(e) => {
                let (status, outcome) = e.outcome();
                json!({ "response": { "status": status_line(status), "outcome": outcome } })
            }
        });
    }

    fn into_reply(self, app: &App, kind: &str) -> Reply {
        let bundle = json!({
            "resourceType": "Bundle",
            "id": new_id(),
            "type": kind,
            "entry": self.entries,
        });
        // Every resource in it came from a reply, and replies carry only disclosed resources.
        let mut reply = Reply::json(StatusCode::OK, app.policy.release_document(&[], bundle));
        reply.entities = self.audit_entities;
        reply.patients = self.audit_patients;
        reply.emergency_releases = self.emergency_releases;
        reply
    }
}

fn status_line(s: StatusCode) -> String {
    format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
        .trim_end()
        .to_owned()
}

/// A response entry from an entry's reply.
fn entry_of(reply: Reply) -> Value {
    let mut response = json!({ "status": status_line(reply.status) });
    if let Some(l) = &reply.location {
        response["location"] = json!(l);
    }
    if let Some(v) = reply.version {
        response["etag"] = json!(crate::fhir::bundle::etag(v));
    }
    if let Some(t) = reply.last_modified {
        response["lastModified"] = json!(crate::store::format_instant(t));
    }
    let body = match reply.body {
        Some(Payload::Stored(b)) => serde_json::from_slice(&b).ok(),
        Some(Payload::Json(v)) => Some(v),
        Some(Payload::Bundle(b)) => Some(b.into_value()),
        Some(Payload::Raw { .. }) | None => None,
    };
    match body {
        Some(v) if v.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome") => {
            response["outcome"] = v;
            json!({ "response": response })
        }
        Some(v) => json!({ "resource": v, "response": response }),
        None => json!({ "response": response }),
    }
}

async fn batch(app: &App, principal: &Principal, asked: &Asked, b: BundleRequest) -> Result<Reply> {
    let mut out = Collected::default();
    for (i, e) in b.entries.into_iter().enumerate() {
        let r = match e.request {
            Ok(req) => interaction_boxed(app, principal, asked, *req)
                .await
                .map_err(|x| x.at(&place(i))),
            // Placed by the parser already.
            Err(err) => Err(err),
        };
        out.push(r);
    }
    Ok(out.into_reply(app, "batch-response"))
}

/// A write of the transaction before it is permitted.
enum Planned {
    Create(crate::fhir::operation::Create),
    Update(crate::fhir::operation::Update),
    Delete(crate::fhir::operation::Delete),
}

async fn transaction(
    app: &App,
    principal: &Principal,
    asked: &Asked,
    b: BundleRequest,
    base: &str,
    ret: Return,
) -> Result<Reply> {
    // Every entry parses, or nothing happens.
    let mut full_urls = HashSet::new();
    let mut planned: Vec<(usize, Option<String>, Planned)> = Vec::new();
    let mut reads: Vec<(usize, Request)> = Vec::new();
    for (i, e) in b.entries.into_iter().enumerate() {
        let at = |x: Error| x.at(&place(i));
        let req = e.request?;
        if let Some(f) = &e.full_url
            && !full_urls.insert(f.clone())
        {
            return Err(at(Error::invalid(format!(
                "fullUrl {} appears twice in the transaction",
                crate::fhir::operation::clip(f)
            ))));
        }
        let op = match req.op {
            Operation::Create(c) => Planned::Create(c),
            Operation::Update(u) => Planned::Update(u),
            Operation::Delete(d) => Planned::Delete(d),
            Operation::Patch(p) => Planned::Update(
                super::patch::prepare(app, principal, &p)
                    .await
                    .map_err(at)?,
            ),
            Operation::Read(_)
            | Operation::VRead(_)
            | Operation::Search(_)
            | Operation::History(_)
            | Operation::Meta(_)
            | Operation::Everything(_)
            | Operation::Validate(_)
            | Operation::Capabilities => {
                reads.push((i, *req));
                continue;
            }
            Operation::Reindex(_)
            | Operation::Bundle(_)
            | Operation::Export(_)
            | Operation::ExportJob(_) => {
                return Err(at(Error::invalid(
                    "this operation cannot be part of a transaction",
                )));
            }
        };
        planned.push((i, e.full_url, op));
    }

    // Ids known before the store is asked: plain creates get theirs now, updates by id have one.
    // References to those entries are rewritten here; the rest inside the store transaction.
    let mut known: HashMap<String, String> = HashMap::new();
    let mut targets = HashSet::new();
    for (i, full_url, op) in &mut planned {
        let reference = match op {
            Planned::Create(c) if c.if_none_exist.is_none() => {
                let id = c.id.get_or_insert_with(new_id);
                Some(format!("{}/{id}", c.ty))
            }
            Planned::Update(u) => match &u.target {
                Target::Id(id) => Some(format!("{}/{id}", u.ty)),
                Target::Criteria(_) => None,
            },
            Planned::Delete(d) => match &d.target {
                Target::Id(id) => Some(format!("{}/{id}", d.ty)),
                Target::Criteria(_) => None,
            },
            Planned::Create(_) => None,
        };
        if let Some(r) = &reference
            && !targets.insert(r.clone())
        {
            return Err(Error::invalid(format!(
                "{r} is written by more than one entry of the transaction"
            ))
            .at(&place(*i)));
        }
        if let (Some(f), Some(r), false) = (full_url, reference, matches!(op, Planned::Delete(_))) {
            known.insert(f.clone(), r);
        }
    }

    // Conditional references: parsed, permitted (each is a search), and looked up now, so that
    // most resources are final (and indexed here, not on the store's one writer). The store
    // transaction resolves them again and refuses to go on if one now names another resource.
    let mut conditional: HashMap<String, (String, crate::fhir::search::Criteria)> = HashMap::new();
    for (i, _, op) in &mut planned {
        let resource = match op {
            Planned::Create(c) => &mut c.resource,
            Planned::Update(u) => &mut u.resource,
            Planned::Delete(_) => continue,
        };
        references::rewrite(resource, &known);
        let mut refs = Vec::new();
        references::collect(resource, &mut refs);
        for r in refs {
            let Some((ty, query)) = references::conditional(&r) else {
                continue;
            };
            if conditional.contains_key(&r) {
                continue;
            }
            let at = |x: Error| x.at(&place(*i));
            if !app.structure.is_resource_type(ty) {
                return Err(at(Error::invalid(format!(
                    "the conditional reference {} names no resource type",
                    crate::fhir::operation::clip(&r)
                ))));
            }
            let criteria = crate::fhir::operation::conditional_criteria(ty, query, &app.structure)
                .map_err(at)?;
            conditional.insert(r.clone(), (ty.to_owned(), criteria));
        }
    }
    let mut conditional_refs = Vec::with_capacity(conditional.len());
    let mut expected: HashMap<String, String> = HashMap::new();
    for (text, (ty, criteria)) in conditional {
        let search = Search {
            ty,
            criteria,
            count: 2,
            ..Default::default()
        };
        let permit = app.policy.authorize(principal, search)?;
        let page = app.store.search(&permit).await?;
        if let [one] = page.entries.as_slice() {
            expected.insert(text.clone(), format!("{}/{}", one.ty, one.id));
        }
        conditional_refs.push((text, permit));
    }

    let mut writes = Vec::with_capacity(planned.len());
    let mut places = Vec::with_capacity(planned.len());
    for (i, full_url, mut op) in planned {
        let at = |x: Error| x.at(&place(i));
        let mut unresolved = false;
        if let Some(resource) = match &mut op {
            Planned::Create(c) => Some(&mut c.resource),
            Planned::Update(u) => Some(&mut u.resource),
            Planned::Delete(_) => None,
        } {
            references::rewrite(resource, &expected);
            let mut refs = Vec::new();
            references::collect(resource, &mut refs);
            unresolved = refs
                .iter()
                .any(|r| references::is_placeholder(r) || references::conditional(r).is_some());
            app.structure.validate(resource).map_err(at)?;
        }
        let policy = &app.policy;
        let (permit, indexing) = match op {
            Planned::Create(c) => {
                let p = policy.authorize(principal, c).map_err(at)?;
                let ix = (!unresolved).then(|| Indexing::of(&p.op().ty, &p.op().resource));
                (TxPermit::Create(p), ix)
            }
            Planned::Update(u) => {
                let p = policy.authorize(principal, u).map_err(at)?;
                policy.check_target(&p).await.map_err(at)?;
                let ix = (!unresolved).then(|| Indexing::of(&p.op().ty, &p.op().resource));
                (TxPermit::Update(p), ix)
            }
            Planned::Delete(d) => {
                let p = policy.authorize(principal, d).map_err(at)?;
                policy.check_target(&p).await.map_err(at)?;
                (TxPermit::Delete(p), None)
            }
        };
        places.push(i);
        writes.push(TxWrite {
            place: place(i),
            full_url,
            permit,
            indexing,
            unresolved,
        });
    }

    let outcomes = app
        .store
        .transaction(Transaction {
            writes,
            conditional_refs,
            expected,
        })
        .await?;

    // Committed: answer each write, then run the reads, all in the bundle's order.
    let write = Write {
        policy: &app.policy,
        principal,
        asked,
        ret,
    };
    let mut answers: Vec<(usize, Result<Reply>)> = Vec::new();
    for (i, outcome) in places.into_iter().zip(outcomes) {
        let reply = match outcome {
            TxOutcome::Created(Created::New(s)) => {
                app.policy.written(&s.ty, &s.id).await;
                created(&write, base, s).await
            }
            TxOutcome::Created(Created::Existing(s)) => {
                write
                    .reply(StatusCode::OK, s, "a matching resource exists")
                    .await
            }
            TxOutcome::Updated(u) => {
                app.policy.written(&u.stored.ty, &u.stored.id).await;
                if u.created {
                    created(&write, base, u.stored).await
                } else {
                    write.reply(StatusCode::OK, u.stored, "updated").await
                }
            }
            TxOutcome::Deleted(Some(s)) => {
                app.policy.written(&s.ty, &s.id).await;
                let mut r =
                    Reply::information(StatusCode::OK, format!("deleted {}/{}", s.ty, s.id));
                r.version = Some(s.version);
                r.entities = vec![format!("{}/{}/_history/{}", s.ty, s.id, s.version)];
                r
            }
            TxOutcome::Deleted(None) => Reply::new(StatusCode::NO_CONTENT, None),
        };
        answers.push((i, Ok(reply)));
    }
    for (i, req) in reads {
        let r = interaction_boxed(app, principal, asked, req).await;
        answers.push((i, r.map_err(|x| x.at(&place(i)))));
    }
    answers.sort_by_key(|(i, _)| *i);
    let mut out = Collected::default();
    for (_, r) in answers {
        out.push(r);
    }
    Ok(out.into_reply(app, "transaction-response"))
}

async fn created(write: &Write<'_>, base: &str, s: Stored) -> Reply {
    let location = version_url(base, &s);
    let mut r = write.reply(StatusCode::CREATED, s, "created").await;
    r.location = Some(location);
    r
}
