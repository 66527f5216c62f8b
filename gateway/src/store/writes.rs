//! The write rules, once for every backend: version checks (`If-Match`), update-as-create,
//! conditional create/update/delete with "more than one match is 412". A backend supplies a
//! transaction with three primitives ([`WriteTx`]) and makes it atomic and isolated enough that
//! the decisions here cannot interleave with another writer (SQLite: one writer connection;
//! PostgreSQL: advisory locks taken before the transaction reads).

use super::{Created, Stored, Updated, WriteMethod, new_id};
use crate::error::{Error, Result};
use crate::fhir::operation::{Create, Delete, Target, Update};
use crate::fhir::search::Criteria;
use serde_json::Value;

#[async_trait::async_trait]
pub trait WriteTx: Send {
    /// Current version of a resource and whether it is deleted.
    async fn current(&mut self, ty: &str, id: &str) -> Result<Option<(u64, bool)>>;
    /// Current, non-deleted resources matching the criteria (at most `limit`).
    async fn matches(&mut self, ty: &str, criteria: &Criteria, limit: i64) -> Result<Vec<Stored>>;
    /// Writes a version (a deletion when `resource` is `None`) and makes it current.
    async fn write(
        &mut self,
        ty: &str,
        id: &str,
        version: u64,
        method: WriteMethod,
        resource: Option<&Value>,
    ) -> Result<Stored>;
}

/// The single match of conditional criteria: `None` for none, 412 for several.
async fn single_match(
    tx: &mut dyn WriteTx,
    ty: &str,
    criteria: &Criteria,
) -> Result<Option<Stored>> {
    let mut found = tx.matches(ty, criteria, 2).await?;
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(Error::precondition_failed(
            "the conditional criteria match more than one resource",
        )),
    }
}

pub async fn create(tx: &mut dyn WriteTx, op: &Create) -> Result<Created> {
    if let Some(criteria) = &op.if_none_exist
        && let Some(existing) = single_match(tx, &op.ty, criteria).await?
    {
        return Ok(Created::Existing(existing));
    }
    let stored = tx
        .write(&op.ty, &new_id(), 1, WriteMethod::Post, Some(&op.resource))
        .await?;
    Ok(Created::New(stored))
}

pub async fn update(tx: &mut dyn WriteTx, op: &Update) -> Result<Updated> {
    match &op.target {
        Target::Id(id) => update_by_id(tx, op, id).await,
        Target::Criteria(criteria) => {
            let body_id = op
                .resource
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            match single_match(tx, &op.ty, criteria).await? {
                Some(found) => {
                    if body_id.as_deref().is_some_and(|b| b != found.id) {
                        return Err(Error::invalid(
                            "the resource's id differs from the resource the criteria match",
                        ));
                    }
                    update_by_id(tx, op, &found.id).await
                }
                None => {
                    if op.if_match.is_some() {
                        return Err(Error::precondition_failed(
                            "If-Match given but no resource matches",
                        ));
                    }
                    match body_id {
                        Some(id) => update_by_id(tx, op, &id).await,
                        None => {
                            let stored = tx
                                .write(&op.ty, &new_id(), 1, WriteMethod::Put, Some(&op.resource))
                                .await?;
                            Ok(Updated {
                                stored,
                                created: true,
                            })
                        }
                    }
                }
            }
        }
    }
}

async fn update_by_id(tx: &mut dyn WriteTx, op: &Update, id: &str) -> Result<Updated> {
    match tx.current(&op.ty, id).await? {
        None => {
            if op.if_match.is_some() {
                return Err(Error::precondition_failed(format!(
                    "{}/{id} does not exist",
                    op.ty
                )));
            }
            if !op.allow_create {
                return Err(Error::client(
                    http::StatusCode::METHOD_NOT_ALLOWED,
                    "not-supported",
                    "this server does not create resources by update (rest.update_create = false)",
                ));
            }
            let stored = tx
                .write(&op.ty, id, 1, WriteMethod::Put, Some(&op.resource))
                .await?;
            Ok(Updated {
                stored,
                created: true,
            })
        }
        Some((version, _deleted)) => {
            check_if_match(op.if_match, version)?;
            let stored = tx
                .write(
                    &op.ty,
                    id,
                    version + 1,
                    WriteMethod::Put,
                    Some(&op.resource),
                )
                .await?;
            Ok(Updated {
                stored,
                created: false,
            })
        }
    }
}

/// The deletion version written, or `None` when there was nothing to delete.
pub async fn delete(tx: &mut dyn WriteTx, op: &Delete) -> Result<Option<Stored>> {
    let id = match &op.target {
        Target::Id(id) => id.clone(),
        Target::Criteria(criteria) => match single_match(tx, &op.ty, criteria).await? {
            Some(s) => s.id,
            None => return Ok(None),
        },
    };
    match tx.current(&op.ty, &id).await? {
        None if op.if_match.is_some() => Err(Error::precondition_failed(format!(
            "{}/{id} does not exist",
            op.ty
        ))),
        None => Ok(None),
        Some((version, deleted)) => {
            check_if_match(op.if_match, version)?;
            if deleted {
                return Ok(None);
            }
            Ok(Some(
                tx.write(&op.ty, &id, version + 1, WriteMethod::Delete, None)
                    .await?,
            ))
        }
    }
}

fn check_if_match(expected: Option<u64>, current: u64) -> Result<()> {
    match expected {
        Some(e) if e != current => Err(Error::precondition_failed(format!(
            "version conflict: If-Match {e}, current version is {current}"
        ))),
        _ => Ok(()),
    }
}
