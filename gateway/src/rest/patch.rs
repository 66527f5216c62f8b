//! PATCH: the current version is patched and the result written as an update with `If-Match` on
//! that version. The current version is read with the policy's own permit after the principal
//! was found allowed to update it: its content is not disclosed, only the patched result is,
//! through the same disclosure as every answer. A concurrent write makes the update miss its
//! `If-Match`; the patch is then applied again to the newer version (three tries in all),
//! unless the client named the version itself, in which case the 412 is the client's.

use super::{Reply, update};
use crate::app::App;
use crate::error::{Error, Result};
use crate::fhir::operation::{Return, Target, Update};
use crate::fhir::patch::{Patch, apply};
use crate::policy::{Asked, Principal};

const TRIES: usize = 3;

pub async fn execute(
    app: &App,
    principal: &Principal,
    asked: &Asked,
    op: Patch,
    base: &str,
    ret: Return,
) -> Result<Reply> {
    let mut tries = 0;
    loop {
        tries += 1;
        let u = prepare(app, principal, &op).await?;
        match update(app, principal, asked, u, base, ret).await {
            Err(e)
                if e.status == http::StatusCode::PRECONDITION_FAILED
                    && op.if_match.is_none()
                    && tries < TRIES => {}
            r => return r,
        }
    }
}

/// The update a patch amounts to now: the patched current version, `If-Match` on it.
pub async fn prepare(app: &App, principal: &Principal, op: &Patch) -> Result<Update> {
    let current = app.policy.patch_base(principal, op).await?;
    if let Some(expected) = op.if_match
        && expected != current.version
    {
        return Err(Error::precondition_failed(format!(
            "version conflict: If-Match {expected}, current version is {}",
            current.version
        )));
    }
    if current.is_deleted() {
        return Err(Error::gone(format!(
            "{}/{} was deleted",
            current.ty, current.id
        )));
    }
    let resource = current.json()?;
    let patched = apply(&op.body, &resource, &app.structure)?;
    if patched.get("resourceType") != resource.get("resourceType")
        || patched.get("id") != resource.get("id")
    {
        return Err(Error::client(
            http::StatusCode::UNPROCESSABLE_ENTITY,
            "processing",
            "a patch may not change the resource's type or id",
        ));
    }
    Ok(Update {
        ty: current.ty,
        target: Target::Id(current.id),
        resource: patched,
        if_match: Some(current.version),
        allow_create: false,
        only_if_absent: false,
    })
}
