//! Executes a parsed request: each interaction gets its permit from the policy, calls the store,
//! and hands what leaves back through the policy's disclosure. The only way to build a [`Reply`]
//! that carries a resource is from a [`Disclosed`] value.

mod batch;
mod export;
mod include;
mod link;
mod operations;
mod patch;

use crate::app::App;
use crate::error::{Error, Result, information};
use crate::fhir::bundle::{self, PageInfo};
use crate::fhir::operation::{HistoryScope, Operation, Request, Return};
use crate::policy::scopes::Permission;
use crate::policy::{Asked, Disclosed, Principal};
use crate::store::{AuditQuery, AuditRow, Created, Page, Stored};
use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;
use time::OffsetDateTime;

/// What goes on the wire, before formatting (pretty, gzip) and headers common to every response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Option<Payload>,
    pub version: Option<u64>,
    pub last_modified: Option<OffsetDateTime>,
    pub location: Option<String>,
    /// What the answer disclosed or the request wrote (`Type/id/_history/v`), for the audit.
    pub entities: Vec<String>,
    /// The patients it concerned (`Patient/[id]`), for the audit.
    pub patients: Vec<String>,
    /// Break-the-glass was invoked with this reason.
    pub emergency_reason: Option<String>,
    /// How many resources only break-the-glass released.
    pub emergency_releases: usize,
    /// Headers an operation adds (`Content-Location`, `X-Progress`, `Retry-After`, `Expires`).
    pub headers: Vec<(http::header::HeaderName, String)>,
}

#[derive(Debug)]
pub enum Payload {
    /// A stored resource's JSON, sent as kept.
    Stored(Bytes),
    Json(Value),
    /// A search or history Bundle, its stored resources written as kept (see `fhir::spliced`).
    Bundle(crate::fhir::spliced::SplicedBundle),
    /// Another media type: a bulk export's manifest (`application/json`) or NDJSON file.
    Raw {
        content_type: &'static str,
        bytes: Bytes,
    },
}

impl Reply {
    fn new(status: StatusCode, body: Option<Payload>) -> Reply {
        Reply {
            status,
            body,
            version: None,
            last_modified: None,
            location: None,
            entities: Vec::new(),
            patients: Vec::new(),
            emergency_reason: None,
            emergency_releases: 0,
            headers: Vec::new(),
        }
    }

    /// Appends `OperationOutcome` entries (search mode `outcome`) to a searchset reply: what
    /// the gateway says about the search itself (a backend that failed or was not asked). They
    /// carry no patient data, so there is nothing to disclose.
    fn add_outcome_entries(&mut self, outcomes: Vec<Value>) -> Result<()> {
        use crate::fhir::spliced::{Entry, Resource};
        let Some(Payload::Bundle(bundle)) = &mut self.body else {
            return Err(Error::internal(
                "outcome entries on a reply that is not a Bundle",
            ));
        };
        bundle.entries.extend(outcomes.into_iter().map(|o| {
            let mut after = serde_json::Map::new();
            after.insert("search".into(), serde_json::json!({"mode": "outcome"}));
            Entry {
                before: serde_json::Map::new(),
                resource: Some(Resource::Json(o)),
                after,
            }
        }));
        Ok(())
    }

    /// A stored version the policy released.
    fn resource(status: StatusCode, d: Disclosed<Stored>) -> Reply {
        let (entities, patients) = audit_refs(std::slice::from_ref(&d));
        let emergency_releases = usize::from(d.by_emergency());
        let s = d.into_inner();
        Reply {
            status,
            version: Some(s.version),
            last_modified: Some(s.last_updated),
            body: s.body.map(Payload::Stored),
            location: None,
            entities,
            patients,
            emergency_reason: None,
            emergency_releases,
            headers: Vec::new(),
        }
    }

    /// A document the policy released (bundle, CapabilityStatement).
    fn json(status: StatusCode, d: Disclosed<Value>) -> Reply {
        Reply::new(status, Some(Payload::Json(d.into_inner())))
    }

    /// A search or history Bundle the policy released.
    fn bundle(status: StatusCode, d: Disclosed<crate::fhir::spliced::SplicedBundle>) -> Reply {
        Reply::new(status, Some(Payload::Bundle(d.into_inner())))
    }

    /// A server-written informational outcome: carries no resource data.
    fn information(status: StatusCode, message: impl Into<String>) -> Reply {
        Reply::new(status, Some(Payload::Json(information(message))))
    }
}

pub async fn execute(app: &App, principal: &Principal, req: Request) -> Result<Reply> {
    let token_purpose = match principal {
        Principal::Token(t) => t.purpose_of_use.as_deref(),
        Principal::Anonymous => None,
    };
    let asked = Asked::from_request(
        token_purpose,
        req.purpose.as_deref(),
        req.break_glass_reason.as_deref(),
    )?;
    let mut reply = interaction(app, principal, &asked, req).await?;
    reply.emergency_reason = asked.emergency_reason;
    Ok(reply)
}

/// [`interaction`] behind a pointer: a batch runs its entries through it, and an async function
/// cannot contain itself.
fn interaction_boxed<'a>(
    app: &'a App,
    principal: &'a Principal,
    asked: &'a Asked,
    req: Request,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply>> + Send + 'a>> {
    Box::pin(interaction(app, principal, asked, req))
}

async fn interaction(
    app: &App,
    principal: &Principal,
    asked: &Asked,
    req: Request,
) -> Result<Reply> {
    let policy = &app.policy;
    let unchanged = Unchanged {
        version: req.if_none_match,
        since: req.if_modified_since,
    };
    match req.op {
        Operation::Capabilities => {
            let permit = policy.authorize(principal, ())?;
            Ok(Reply::json(
                StatusCode::OK,
                policy.release_public(&permit, app.capability()),
            ))
        }
        Operation::Read(op) if op.ty == "AuditEvent" => {
            let permit = policy.authorize(principal, op)?;
            let query = AuditQuery {
                ids: vec![permit.op().id.clone()],
                count: 1,
                ..Default::default()
            };
            let row = app.store.search_audit(&query).await?.into_iter().next();
            let s = row
                .map(audit_stored)
                .ok_or_else(|| Error::not_found("no such AuditEvent"))?;
            Ok(Reply::resource(
                StatusCode::OK,
                policy
                    .disclose(permit.principal(), asked, s, Permission::Read)
                    .await?,
            ))
        }
        Operation::Create(op) if op.ty == "AuditEvent" => Err(server_written()),
        Operation::Update(op) if op.ty == "AuditEvent" => Err(server_written()),
        Operation::Delete(op) if op.ty == "AuditEvent" => Err(server_written()),
        Operation::Search(mut op) if op.audit.is_some() => {
            if let (Some(p), Some(q)) = (
                policy.search_compartment(principal, "AuditEvent"),
                op.audit.as_mut(),
            ) {
                q.patients = vec![format!("Patient/{p}")];
            }
            let url = format!("{}/AuditEvent", req.base);
            let params = op.applied.clone();
            let cursor = op.cursor.clone();
            let permit = policy.authorize(principal, op)?;
            let query = permit.op().audit.clone().unwrap_or_default();
            let rows = app.store.search_audit(&query).await?;
            let more = rows.len() > query.count as usize;
            let next = if more {
                rows.get(query.count as usize - 1)
                    .map(|r| r.seq.to_string())
            } else {
                None
            };
            let stored: Vec<Stored> = rows
                .into_iter()
                .take(query.count as usize)
                .map(audit_stored)
                .collect();
            let page = Page {
                entries: stored,
                total: None,
                next,
            };
            let listing = Listing {
                base: &req.base,
                url,
                params,
                cursor: cursor.as_deref(),
                how: Permission::Search,
                kind: Kind::Searchset,
                includes: Vec::new(),
                subset: None,
            };
            page_reply(app, permit.principal(), asked, listing, page).await
        }
        Operation::Read(op) => {
            let what = format!("{}/{}", op.ty, op.id);
            let person = as_person(app, principal).await?;
            let permit = policy.authorize(&person, op)?;
            let found = if app.federation.holds(&permit.op().id) {
                app.federation.read(&permit).await?
            } else {
                app.store.read(&permit).await?
            };
            match found {
                None => Err(Error::not_found(format!("{what} is not known"))),
                Some(s) if s.is_deleted() => {
                    policy
                        .disclose(permit.principal(), asked, s, Permission::Read)
                        .await?;
                    Err(Error::gone(format!("{what} was deleted")))
                }
                Some(s) => {
                    let d = policy
                        .disclose(permit.principal(), asked, s, Permission::Read)
                        .await?;
                    let d = link::add_links(app, permit.principal(), asked, d).await?;
                    Ok(unchanged.reply(Reply::resource(StatusCode::OK, d)))
                }
            }
        }
        Operation::VRead(op) => {
            let what = format!("{}/{}/_history/{}", op.ty, op.id, op.version);
            let person = as_person(app, principal).await?;
            let permit = policy.authorize(&person, op)?;
            match app.store.vread(&permit).await? {
                None => Err(Error::not_found(format!("{what} is not known"))),
                Some(s) if s.is_deleted() => {
                    policy
                        .disclose(permit.principal(), asked, s, Permission::Read)
                        .await?;
                    Err(Error::gone(format!("{what} is a deletion")))
                }
                Some(s) => Ok(unchanged.reply(Reply::resource(
                    StatusCode::OK,
                    policy
                        .disclose(permit.principal(), asked, s, Permission::Read)
                        .await?,
                ))),
            }
        }
        Operation::Create(op) => {
            app.structure.validate(&op.resource)?;
            let permit = policy.authorize(principal, op)?;
            let write = Write {
                policy,
                principal: permit.principal(),
                asked,
                ret: req.ret,
            };
            match app.store.create(&permit).await? {
                Created::New(s) => {
                    policy.written(&s.ty, &s.id).await;
                    let location = version_url(&req.base, &s);
                    let mut reply = write.reply(StatusCode::CREATED, s, "created").await;
                    reply.location = Some(location);
                    Ok(reply)
                }
                Created::Existing(s) => Ok(write
                    .reply(
                        StatusCode::OK,
                        s,
                        "a matching resource exists; nothing was created",
                    )
                    .await),
            }
        }
        Operation::Update(op) => update(app, principal, asked, op, &req.base, req.ret).await,
        Operation::Patch(op) => {
            let meta = matches!(op.body, crate::fhir::patch::PatchBody::Meta { .. });
            let reply = patch::execute(app, principal, asked, op, &req.base, req.ret).await?;
            if meta {
                operations::meta_of_reply(reply)
            } else {
                Ok(reply)
            }
        }
        Operation::Meta(op) => operations::meta(app, principal, asked, op).await,
        Operation::Validate(op) => operations::validate(app, principal, asked, op).await,
        Operation::Everything(op) => {
            operations::everything(app, principal, asked, op, &req.base).await
        }
        Operation::Export(op) => export::kick_off(app, principal, asked, op, &req.base).await,
        Operation::ExportJob(job) => export::job(app, principal, job, &req.base).await,
        Operation::Bundle(b) => batch::execute(app, principal, asked, b, &req.base, req.ret).await,
        Operation::Delete(op) => {
            let permit = policy.authorize(principal, op)?;
            policy.check_target(&permit).await?;
            match app.store.delete(&permit).await? {
                Some(s) => {
                    policy.written(&s.ty, &s.id).await;
                    let mut reply =
                        Reply::information(StatusCode::OK, format!("deleted {}/{}", s.ty, s.id));
                    reply.version = Some(s.version);
                    Ok(reply)
                }
                None => Ok(Reply::new(StatusCode::NO_CONTENT, None)),
            }
        }
        Operation::Reindex(op) => {
            let _permit = policy.authorize(principal, op)?;
            let installed = install_search_parameters(app).await?;
            // Runs to the end even if the client stops waiting (request time-out).
            let store = app.store.clone();
            let n = tokio::spawn(async move { store.reindex().await })
                .await
                .map_err(|e| Error::internal(format!("reindex task: {e}")))??;
            Ok(Reply::information(
                StatusCode::OK,
                format!(
                    "reindexed {n} resources; custom search parameters: {}",
                    if installed.is_empty() {
                        "none".to_owned()
                    } else {
                        installed.join(", ")
                    }
                ),
            ))
        }
        Operation::History(op) => {
            let (url, how) = match &op.scope {
                HistoryScope::System => (format!("{}/_history", req.base), Permission::Search),
                HistoryScope::Type(ty) => {
                    (format!("{}/{ty}/_history", req.base), Permission::Search)
                }
                HistoryScope::Instance(ty, id) => {
                    (format!("{}/{ty}/{id}/_history", req.base), Permission::Read)
                }
            };
            let mut params = vec![("_count".to_owned(), op.count.to_string())];
            if let Some(since) = op.since {
                params.push(("_since".into(), crate::store::format_instant(since)));
            }
            let cursor = op.cursor.map(|c| c.to_string());
            let permit = policy.authorize(principal, op)?;
            let page = app.store.history(&permit).await?;
            let listing = Listing {
                base: &req.base,
                url,
                params,
                cursor: cursor.as_deref(),
                how,
                kind: Kind::History,
                includes: Vec::new(),
                subset: None,
            };
            page_reply(app, permit.principal(), asked, listing, page).await
        }
        Operation::Search(mut op) => {
            op.criteria.compartment = policy.search_compartment(principal, &op.ty);
            // A patient-context token speaks for a person: with backends configured, the
            // launch patient's other records (same BSN) are theirs too, here and elsewhere.
            let person;
            let principal = if op.criteria.compartment.is_some() && op.audit.is_none() {
                person = as_person(app, principal).await?;
                &person
            } else {
                principal
            };
            let url = match &op.criteria.within {
                Some(patient) => format!("{}/Patient/{patient}/{}", req.base, op.ty),
                None => format!("{}/{}", req.base, op.ty),
            };
            let params = op.applied.clone();
            let cursor = op.cursor.clone();
            // A cursor of a federated search holds the local store's cursor and each backend's.
            let federated = match cursor.as_deref().map(crate::federation::Cursor::decode) {
                Some(c) => c?,
                None => None,
            };
            if let Some(f) = &federated {
                op.cursor = f.local.clone();
            }
            // One person, several organisations: a search for one patient's data gathers from
            // every Patient linked to it by BSN (on every page, so the pages stay one search).
            let mut link_notes = Vec::new();
            if op.audit.is_none()
                && op.criteria.compartment.is_none()
                && let Some(patient) = link::patient_of(&op)
                && let Some(linked) = link::linked(app, principal, asked, &patient).await?
            {
                link::widen(&mut op, &linked);
                if cursor.is_none() {
                    link_notes = linked.conflicts;
                }
            }
            let partners_hold_me = link::for_person(app, &mut op, principal);
            let includes = op.includes.clone();
            let subset = op.subset.clone();
            let permit = policy.authorize(principal, op)?;
            // Backends are asked from the first page on, and on later pages through the
            // federated cursor; for a patient-context token only about the person's records
            // there; not for a compartment search (`Patient/[id]/...`: its ids are the store's).
            let fan_out = !app.federation.is_empty()
                && (cursor.is_none() || federated.is_some())
                && permit.op().audit.is_none()
                && (permit.op().criteria.compartment.is_none() || partners_hold_me)
                && permit.op().criteria.within.is_none();
            let local_done = federated.as_ref().is_some_and(|f| f.local_done);
            let local = async {
                if local_done {
                    Ok(crate::store::Page::default())
                } else {
                    app.store.search(&permit).await
                }
            };
            let (page, fanned) = if fan_out {
                let pages = federated.as_ref().map(|f| &f.backends);
                let (local, fanned) = futures::join!(local, app.federation.search(&permit, pages));
                (local?, Some(fanned))
            } else {
                (local.await?, None)
            };
            let mut page = page;
            let mut outcomes = link_notes;
            if let Some(f) = fanned {
                page.total = page.total.zip(f.total).map(|(a, b)| a + b);
                page.entries.extend(f.matches);
                outcomes.extend(f.outcomes);
                if !f.next.is_empty() {
                    page.next = Some(
                        crate::federation::Cursor {
                            local_done: page.next.is_none(),
                            local: page.next.take(),
                            backends: f.next,
                        }
                        .encode(),
                    );
                }
            }
            let listing = Listing {
                base: &req.base,
                url,
                params,
                cursor: cursor.as_deref(),
                how: Permission::Search,
                kind: Kind::Searchset,
                includes,
                subset,
            };
            let mut reply = page_reply(app, permit.principal(), asked, listing, page).await?;
            if !outcomes.is_empty() {
                reply.add_outcome_entries(outcomes)?;
            }
            Ok(reply)
        }
    }
}

/// A patient-context token as the person it speaks for (see [`crate::policy::Policy::as_person`]):
/// only where backends are configured, for this store alone holds one record per person and
/// organisation and links are the federation's business.
async fn as_person(app: &App, principal: &Principal) -> Result<Principal> {
    if app.federation.is_empty() {
        Ok(principal.clone())
    } else {
        // Boxed: the lookup's future is large, and `execute` runs inside bundles' entries.
        Box::pin(app.policy.as_person(principal)).await
    }
}

/// An update (PUT, or what a PATCH amounts to): validated, permitted, written, answered.
async fn update(
    app: &App,
    principal: &Principal,
    asked: &Asked,
    op: crate::fhir::operation::Update,
    base: &str,
    ret: Return,
) -> Result<Reply> {
    let policy = &app.policy;
    app.structure.validate(&op.resource)?;
    let permit = policy.authorize(principal, op)?;
    policy.check_target(&permit).await?;
    let updated = app.store.update(&permit).await?;
    policy.written(&updated.stored.ty, &updated.stored.id).await;
    let (status, message) = if updated.created {
        (StatusCode::CREATED, "created")
    } else {
        (StatusCode::OK, "updated")
    };
    let location = updated.created.then(|| version_url(base, &updated.stored));
    let write = Write {
        policy,
        principal: permit.principal(),
        asked,
        ret,
    };
    let mut reply = write.reply(status, updated.stored, message).await;
    reply.location = location;
    Ok(reply)
}

/// A conditional read's preconditions (`If-None-Match`, `If-Modified-Since`).
struct Unchanged {
    version: Option<u64>,
    since: Option<OffsetDateTime>,
}

impl Unchanged {
    /// 304 Not Modified, without the body, when the client's copy is current. Decided after the
    /// disclosure, so a resource the principal may not see is still "not found", never a 304.
    fn reply(&self, r: Reply) -> Reply {
        let same_version = self.version.is_some() && self.version == r.version;
        // HTTP dates have whole seconds.
        let not_newer = match (self.since, r.last_modified) {
            (Some(since), Some(modified)) => modified.unix_timestamp() <= since.unix_timestamp(),
            _ => false,
        };
        let fresh = if self.version.is_some() {
            same_version
        } else {
            not_newer
        };
        if !fresh {
            return r;
        }
        let mut out = Reply::new(StatusCode::NOT_MODIFIED, None);
        out.version = r.version;
        out.last_modified = r.last_modified;
        out.entities = r.entities;
        out.patients = r.patients;
        out.emergency_releases = r.emergency_releases;
        out
    }
}

/// Installs the stored SearchParameters (at start and by `$reindex`); returns `Type.code` of each.
pub async fn install_search_parameters(app: &App) -> Result<Vec<String>> {
    let resources = app.policy.search_parameter_resources().await?;
    let installed = crate::fhir::search_params::install(&resources).map_err(Error::invalid)?;
    app.refresh_capability();
    Ok(installed)
}

fn server_written() -> Error {
    Error::client(
        StatusCode::METHOD_NOT_ALLOWED,
        "not-supported",
        "AuditEvents are written by the server only",
    )
}

/// An audit row as a stored resource, so it passes the same disclosure as everything else.
fn audit_stored(row: AuditRow) -> Stored {
    let body = row.record.json();
    Stored {
        ty: "AuditEvent".into(),
        id: row.record.id,
        version: 1,
        last_updated: crate::store::from_millis(row.record.recorded_ms),
        method: crate::store::WriteMethod::Post,
        body: Some(body),
    }
}

fn with_refs(mut reply: Reply, entries: &[Disclosed<Stored>]) -> Reply {
    let (entities, patients) = audit_refs(entries);
    reply.entities = entities;
    reply.patients = patients;
    reply
}

/// What disclosed resources the audit names: each version, and the patients they concern.
fn audit_refs(entries: &[Disclosed<Stored>]) -> (Vec<String>, Vec<String>) {
    let mut entities = Vec::new();
    let mut patients = Vec::new();
    for d in entries {
        let s = d.get();
        entities.push(format!("{}/{}/_history/{}", s.ty, s.id, s.version));
        if s.ty == "AuditEvent" {
            continue;
        }
        for p in d.patients() {
            if !patients.contains(p) {
                patients.push(p.clone());
            }
        }
    }
    (entities, patients)
}

/// Where a listing lives, how it was asked for (for its links), and what it lists.
struct Listing<'a> {
    base: &'a str,
    url: String,
    params: Vec<(String, String)>,
    cursor: Option<&'a str>,
    /// Read for an instance's history, search otherwise.
    how: Permission,
    kind: Kind,
    /// `_include`/`_revinclude` of a search (empty otherwise).
    includes: Vec<crate::fhir::operation::Include>,
    /// `_summary`/`_elements` of a search.
    subset: Option<crate::fhir::subset::Subset>,
}

enum Kind {
    Searchset,
    History,
    /// `$everything`: a searchset whose included resources are only those outside every
    /// patient's compartment (the patient's own are matches, on this page or another).
    Everything,
}

/// A page of search or history results as a bundle: each entry disclosed on its own, the bundle
/// made only of what was disclosed, and the audit told what left.
async fn page_reply(
    app: &App,
    principal: &Principal,
    asked: &Asked,
    listing: Listing<'_>,
    page: Page,
) -> Result<Reply> {
    let disclosure = app
        .policy
        .disclose_each(principal, asked, page.entries, listing.how)
        .await?;
    let entries = disclosure.entries;
    // When any entry was withheld, the total is left out: it would count what may not be seen.
    let total = if disclosure.withheld == 0 {
        page.total
    } else {
        None
    };
    let info = PageInfo {
        url: listing.url,
        params: listing.params,
        cursor: listing.cursor,
        next: page.next.as_deref(),
        total,
    };
    let mut included = if listing.includes.is_empty() {
        Vec::new()
    } else {
        let limit = app.config.rest.max_page_size as usize;
        include::gather(app, principal, asked, &entries, &listing.includes, limit).await?
    };
    if matches!(listing.kind, Kind::Everything) {
        included.retain(|d| !crate::fhir::compartment::has_compartment(&d.get().ty));
    }
    let b = match listing.kind {
        Kind::Searchset | Kind::Everything => bundle::searchset(
            listing.base,
            info,
            &entries,
            &included,
            listing.subset.as_ref(),
        ),
        Kind::History => bundle::history(listing.base, info, &entries),
    };
    let mut all = entries;
    all.extend(included);
    let mut reply = with_refs(
        Reply::bundle(StatusCode::OK, app.policy.release_document(&all, b)),
        &all,
    );
    reply.emergency_releases = all.iter().filter(|d| d.by_emergency()).count();
    Ok(reply)
}

fn version_url(base: &str, s: &Stored) -> String {
    format!("{base}/{}/{}/_history/{}", s.ty, s.id, s.version)
}

/// How to answer a write.
struct Write<'a> {
    policy: &'a crate::policy::Policy,
    principal: &'a Principal,
    asked: &'a Asked,
    ret: Return,
}

impl Write<'_> {
    /// The answer to a write, shaped by `Prefer: return=`. A principal that may write but not
    /// read the result (`user/Observation.c`) gets the status, Location and ETag without the
    /// resource.
    async fn reply(&self, status: StatusCode, s: Stored, message: &str) -> Reply {
        let (version, last_updated) = (s.version, s.last_updated);
        let entity = format!("{}/{}/_history/{}", s.ty, s.id, s.version);
        let shown = self
            .policy
            .disclose(self.principal, self.asked, s, Permission::Read)
            .await;
        let mut reply = match shown {
            Ok(d) => Reply::resource(status, d),
            Err(_) => {
                let mut r = Reply::new(status, None);
                r.version = Some(version);
                r.last_modified = Some(last_updated);
                r.entities = vec![entity];
                return r;
            }
        };
        match self.ret {
            Return::Representation => {}
            Return::Minimal => reply.body = None,
            Return::OperationOutcome => reply.body = Some(Payload::Json(information(message))),
        }
        reply
    }
}
