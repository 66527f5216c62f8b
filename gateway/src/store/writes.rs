//! The write rules, once for every backend: version checks (`If-Match`), update-as-create,
//! conditional create/update/delete with "more than one match is 412". A backend supplies a
//! transaction with three primitives ([`WriteTx`]) and makes it atomic and isolated enough that
//! the decisions here cannot interleave with another writer (SQLite: one writer connection;
//! PostgreSQL: advisory locks taken before the transaction reads).

use super::{Created, Stored, TxOutcome, Updated, WriteMethod, new_id};
use crate::error::{Error, Result};
use crate::fhir::operation::{Create, Delete, Target, Update};
use crate::fhir::search::Criteria;
use serde_json::Value;
use std::collections::HashMap;

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
    /// The index rows of the next write's resource, computed beforehand (a backend that indexes
    /// on its own ignores this).
    fn prepare(&mut self, _indexing: Option<super::sql::Indexing>) {}
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
    let id = op.id.clone().unwrap_or_else(new_id);
    let stored = tx
        .write(&op.ty, &id, 1, WriteMethod::Post, Some(&op.resource))
        .await?;
    Ok(Created::New(stored))
}

pub async fn update(tx: &mut dyn WriteTx, op: &Update) -> Result<Updated> {
    let id = update_target(tx, op).await?;
    update_by_id(tx, op, &id).await
}

/// The id an update writes: its own, or for a conditional update the one match, the body's id,
/// or a new one.
async fn update_target(tx: &mut dyn WriteTx, op: &Update) -> Result<String> {
    let criteria = match &op.target {
        Target::Id(id) => return Ok(id.clone()),
        Target::Criteria(criteria) => criteria,
    };
    let body_id = op
        .resource
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match single_match(tx, &op.ty, criteria).await? {
        Some(found) => {
            if op.only_if_absent {
                return Err(Error::precondition_failed(
                    "a resource matches the criteria (If-None-Match: *)",
                ));
            }
            if body_id.as_deref().is_some_and(|b| b != found.id) {
                return Err(Error::invalid(
                    "the resource's id differs from the resource the criteria match",
                ));
            }
            Ok(found.id)
        }
        None if op.if_match.is_some() => Err(Error::precondition_failed(
            "If-Match given but no resource matches",
        )),
        None => Ok(body_id.unwrap_or_else(new_id)),
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
        Some((version, deleted)) => {
            if op.only_if_absent && !deleted {
                return Err(Error::precondition_failed(format!(
                    "{}/{id} exists (If-None-Match: *)",
                    op.ty
                )));
            }
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

/// One write of a transaction, owned: its references are rewritten before it is written.
#[derive(Debug, Clone)]
pub enum TxOp {
    Create(Create),
    Update(Update),
    Delete(Delete),
}

pub struct TxEntry {
    /// Where the entry is in the bundle (`Bundle.entry[3]`), for errors.
    pub place: String,
    pub full_url: Option<String>,
    pub op: TxOp,
    pub indexing: Option<super::sql::Indexing>,
    /// Its resource still has references to other entries or conditional references.
    pub unresolved: bool,
}

/// A transaction's writes, inside one store transaction. The order is the spec's (FHIR R4
/// 3.1.0.11.2): deletes, then creates, then updates. Before anything is created, every entry's
/// id is settled (a conditional create that matches is the match; a conditional update's
/// target is found) and every conditional reference (`Type?query`) is searched (exactly one
/// match, else 404 or 412); then the resources' remaining references to other entries'
/// `fullUrl`s and conditions are rewritten to `Type/id`. A reference to a `urn:` no entry
/// defines fails the transaction (400). Any failure fails the whole transaction.
///
/// May run again on the same entries after a rolled-back run (the SQLite writer's second pass):
/// ids given to new resources and references rewritten to them stay as the first run left them,
/// which is what the second run would choose anyway.
pub async fn transaction(
    tx: &mut dyn WriteTx,
    entries: &mut [TxEntry],
    conditional_refs: &[super::ConditionalRef],
    expected: &HashMap<String, String>,
) -> Result<Vec<TxOutcome>> {
    let mut outcomes: Vec<Option<TxOutcome>> = entries.iter().map(|_| None).collect();
    let mut resolved: HashMap<String, String> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let TxOp::Delete(op) = &e.op {
            let deleted = delete(tx, op).await.map_err(|x| x.at(&e.place))?;
            outcomes[i] = Some(TxOutcome::Deleted(deleted));
        }
    }
    for (i, e) in entries.iter_mut().enumerate() {
        let reference = match &mut e.op {
            TxOp::Create(op) => {
                if let Some(criteria) = &op.if_none_exist
                    && let Some(existing) = single_match(tx, &op.ty, criteria)
                        .await
                        .map_err(|x| x.at(&e.place))?
                {
                    let r = format!("{}/{}", existing.ty, existing.id);
                    outcomes[i] = Some(TxOutcome::Created(Created::Existing(existing)));
                    r
                } else {
                    let id = op.id.get_or_insert_with(new_id).clone();
                    format!("{}/{id}", op.ty)
                }
            }
            TxOp::Update(op) => {
                let id = update_target(tx, op).await.map_err(|x| x.at(&e.place))?;
                op.target = Target::Id(id.clone());
                format!("{}/{id}", op.ty)
            }
            TxOp::Delete(_) => continue,
        };
        if let Some(f) = &e.full_url {
            resolved.insert(f.clone(), reference);
        }
    }
    for (text, ty, criteria) in conditional_refs {
        let mut found = tx.matches(ty, criteria, 2).await?;
        let s = match found.len() {
            1 => found.pop().expect("one match"),
            0 => {
                return Err(Error::not_found(format!(
                    "the conditional reference {text} matches no resource"
                )));
            }
            _ => {
                return Err(Error::precondition_failed(format!(
                    "the conditional reference {text} matches more than one resource"
                )));
            }
        };
        let now = format!("{}/{}", s.ty, s.id);
        if expected.get(text).is_some_and(|before| *before != now) {
            return Err(Error::conflict(format!(
                "the conditional reference {text} named another resource while the transaction ran; send it again"
            )));
        }
        resolved.insert(text.clone(), now);
    }
    // Creates first, then updates, each in bundle order.
    for pass in [0, 1] {
        for (i, e) in entries.iter_mut().enumerate() {
            if outcomes[i].is_some() {
                continue;
            }
            let resource = match (&mut e.op, pass) {
                (TxOp::Create(op), 0) => &mut op.resource,
                (TxOp::Update(op), 1) => &mut op.resource,
                _ => continue,
            };
            if e.unresolved {
                crate::fhir::references::rewrite(resource, &resolved);
                let mut left = Vec::new();
                crate::fhir::references::collect(resource, &mut left);
                if let Some(r) = left.iter().find(|r| {
                    crate::fhir::references::is_placeholder(r)
                        || crate::fhir::references::conditional(r).is_some()
                }) {
                    return Err(Error::invalid(format!(
                        "the reference {} names no entry of this transaction",
                        crate::fhir::operation::clip(r)
                    ))
                    .at(&e.place));
                }
            }
            tx.prepare(e.indexing.take());
            let outcome = match &e.op {
                TxOp::Create(op) => TxOutcome::Created(
                    tx.write(
                        &op.ty,
                        op.id.as_deref().unwrap_or_default(),
                        1,
                        WriteMethod::Post,
                        Some(&op.resource),
                    )
                    .await
                    .map(Created::New)
                    .map_err(|x| x.at(&e.place))?,
                ),
                TxOp::Update(op) => {
                    let Target::Id(id) = &op.target else {
                        return Err(Error::internal("an update target was not resolved"));
                    };
                    TxOutcome::Updated(update_by_id(tx, op, id).await.map_err(|x| x.at(&e.place))?)
                }
                TxOp::Delete(_) => continue,
            };
            outcomes[i] = Some(outcome);
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| Error::internal("a transaction entry was not processed")))
        .collect()
}
