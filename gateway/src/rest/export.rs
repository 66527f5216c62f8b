//! Bulk data `$export` over HTTP: kick-off (202 + `Content-Location`), status polling (202 with
//! `X-Progress` while it runs, the manifest when done), cancel/delete (`DELETE` on the status
//! URL) and the output files. Only the principal that kicked a job off sees it; the job itself
//! runs in `crate::export` with that principal's rights.

use super::{Payload, Reply};
use crate::app::App;
use crate::error::{Error, Result, information};
use crate::export::{Owner, Plan, State};
use crate::fhir::named_operations::{Export, ExportJob, ExportLevel};
use crate::fhir::operation::{Read, Search};
use crate::policy::scopes::Permission;
use crate::policy::{Asked, Authenticated, Principal};
use bytes::Bytes;
use http::StatusCode;
use http::header::{CONTENT_LOCATION, EXPIRES, RETRY_AFTER};
use serde_json::json;

pub async fn kick_off(
    app: &App,
    principal: &Principal,
    asked: &Asked,
    op: Export,
    base: &str,
) -> Result<Reply> {
    app.policy.authorize(principal, Authenticated)?;
    let owner = Owner::of(principal).ok_or_else(Error::unauthenticated)?;
    if asked.emergency_reason.is_some() {
        return Err(Error::forbidden(
            "break-the-glass is for one patient's care, not for a bulk export",
        ));
    }
    let patient_level = op.level != ExportLevel::System;
    let explicit = !op.types.is_empty();
    if op.types.iter().any(|t| t == "AuditEvent") {
        return Err(Error::invalid(
            "the audit log is not exported; search AuditEvent instead",
        ));
    }
    let candidates: Vec<String> = if explicit {
        op.types.clone()
    } else {
        app.structure
            .resource_types()
            .filter(|t| *t != "AuditEvent")
            .filter(|t| !patient_level || crate::fhir::compartment::has_compartment(t))
            .map(str::to_owned)
            .collect()
    };
    // The types the token may search: an explicit type it may not is refused; without `_type`,
    // the export is of every type it may search.
    let mut types = Vec::new();
    for ty in candidates {
        let probe = Search {
            ty: ty.clone(),
            ..Default::default()
        };
        match app.policy.authorize(principal, probe) {
            Ok(_) => types.push(ty),
            Err(e) if explicit => return Err(e),
            Err(_) => {}
        }
    }
    if types.is_empty() {
        return Err(Error::forbidden(
            "the token's scopes allow no resource type to be exported",
        ));
    }
    match &op.level {
        ExportLevel::System => {}
        ExportLevel::Patient => {
            let probe = Search {
                ty: "Patient".into(),
                ..Default::default()
            };
            app.policy.authorize(principal, probe)?;
        }
        ExportLevel::Group(id) => {
            // The group must exist and be visible now, not only when the job reads it.
            let permit = app.policy.authorize(
                principal,
                Read {
                    ty: "Group".into(),
                    id: id.clone(),
                },
            )?;
            let group = app
                .store
                .read(&permit)
                .await?
                .filter(|s| !s.is_deleted())
                .ok_or_else(|| Error::not_found(format!("Group/{id} is not known")))?;
            app.policy
                .disclose(permit.principal(), asked, group, Permission::Read)
                .await?;
        }
    }
    let shared = app
        .shared()
        .ok_or_else(|| Error::internal("export needs the server's shared state"))?;
    let cfg = &app.config.export;
    let request = format!("{base}/{}", op.request_url.trim_start_matches('/'));
    let job = app.exports.start(
        owner,
        request,
        cfg.max_running_jobs as usize,
        std::time::Duration::from_secs(cfg.retention_secs),
    )?;
    let plan = Plan {
        level: op.level,
        types,
        since: op.since,
    };
    tokio::spawn(crate::export::run(
        shared,
        job.clone(),
        principal.clone(),
        asked.clone(),
        plan,
    ));
    let mut reply = Reply::information(
        StatusCode::ACCEPTED,
        format!("export job {} started", job.id),
    );
    reply
        .headers
        .push((CONTENT_LOCATION, status_url(base, &job.id)));
    Ok(reply)
}

fn status_url(base: &str, id: &str) -> String {
    format!("{base}/$export-status/{id}")
}

pub async fn job(app: &App, principal: &Principal, job: ExportJob, base: &str) -> Result<Reply> {
    app.policy.authorize(principal, Authenticated)?;
    let owner = Owner::of(principal).ok_or_else(Error::unauthenticated)?;
    match job {
        ExportJob::Status(id) => {
            let job = app.exports.get(&id, &owner)?;
            match job.state() {
                State::Running => {
                    let mut reply = Reply::new(StatusCode::ACCEPTED, None);
                    reply.headers.push((
                        http::header::HeaderName::from_static("x-progress"),
                        format!("{} resources exported", job.exported()),
                    ));
                    reply.headers.push((RETRY_AFTER, "1".into()));
                    Ok(reply)
                }
                State::Failed(message) => Err(Error::client(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "exception",
                    format!("the export failed: {message}"),
                )),
                State::Complete { output, finished } => {
                    let manifest = json!({
                        "transactionTime": crate::store::format_instant(job.transaction_time),
                        "request": job.request,
                        "requiresAccessToken": true,
                        "output": output.iter().map(|o| json!({
                            "type": o.ty,
                            "url": format!("{base}/$export-file/{}/{}", job.id, o.file),
                            "count": o.count,
                        })).collect::<Vec<_>>(),
                        "error": [],
                    });
                    let left = std::time::Duration::from_secs(app.config.export.retention_secs)
                        .saturating_sub(finished.elapsed());
                    let expires = std::time::SystemTime::now() + left;
                    let mut reply = Reply::new(
                        StatusCode::OK,
                        Some(Payload::Raw {
                            content_type: "application/json",
                            bytes: Bytes::from(
                                serde_json::to_vec(&manifest).map_err(Error::internal)?,
                            ),
                        }),
                    );
                    reply
                        .headers
                        .push((EXPIRES, httpdate::fmt_http_date(expires)));
                    Ok(reply)
                }
            }
        }
        ExportJob::Cancel(id) => {
            app.exports.cancel(&id, &owner)?;
            Ok(Reply::new(
                StatusCode::ACCEPTED,
                Some(Payload::Json(information(format!(
                    "export job {id} cancelled and its files deleted"
                )))),
            ))
        }
        ExportJob::File(id, name) => {
            let job = app.exports.get(&id, &owner)?;
            let path = job
                .file(&name)
                .ok_or_else(|| Error::not_found("no such export file"))?;
            // The file holds what the job disclosed to this same principal (and audited).
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| Error::internal(format!("export file: {e}")))?;
            Ok(Reply::new(
                StatusCode::OK,
                Some(Payload::Raw {
                    content_type: "application/fhir+ndjson",
                    bytes: Bytes::from(bytes),
                }),
            ))
        }
    }
}
