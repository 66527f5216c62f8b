//! The gateway's own store. [`Store`] is the contract every backend implements (SQLite now,
//! PostgreSQL next); `tests/store_contract.rs` runs one suite against each.
//!
//! Every call takes a [`Permit`]: the store cannot be reached without the policy's decision.
//! Resources are kept as the JSON that was validated, with the server's `id` and `meta` stamped
//! in, and every version is kept.

pub mod audit_codec;
mod audit_journal;
pub mod deferred_sync;
pub mod postgres;
mod postgres_held;
mod postgres_locks;
pub mod sql;
pub mod sqlite;
mod sqlite_checkpointer;
mod sqlite_inline;
mod sqlite_syncer;
mod sqlite_wal_writes;
mod sqlite_writer;
pub mod statistics;
pub mod writes;

use crate::error::Result;
use crate::fhir::operation::{Create, Delete, History, Read, Search, Update, VRead};
use crate::policy::Permit;
use bytes::Bytes;
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// How a version came to be (history entries report it as `request.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMethod {
    Post,
    Put,
    Delete,
}

impl WriteMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMethod::Post => "POST",
            WriteMethod::Put => "PUT",
            WriteMethod::Delete => "DELETE",
        }
    }
    pub fn parse(s: &str) -> WriteMethod {
        match s {
            "POST" => WriteMethod::Post,
            "DELETE" => WriteMethod::Delete,
            _ => WriteMethod::Put,
        }
    }
}

/// One stored version.
#[derive(Debug, Clone)]
pub struct Stored {
    pub ty: String,
    pub id: String,
    pub version: u64,
    pub last_updated: OffsetDateTime,
    pub method: WriteMethod,
    /// The resource JSON with server meta; `None` for a deletion.
    pub body: Option<Bytes>,
}

impl Stored {
    pub fn is_deleted(&self) -> bool {
        self.body.is_none()
    }

    /// The stored JSON as a value (`Null` for a deletion). The store wrote it, so text that does
    /// not parse is the server's fault.
    pub fn json(&self) -> crate::error::Result<serde_json::Value> {
        match &self.body {
            Some(b) => serde_json::from_slice(b).map_err(crate::error::Error::internal),
            None => Ok(serde_json::Value::Null),
        }
    }
}

#[derive(Debug)]
pub enum Created {
    New(Stored),
    /// `If-None-Exist` matched this one; nothing was written.
    Existing(Stored),
}

#[derive(Debug)]
pub struct Updated {
    pub stored: Stored,
    /// The update created the resource (no earlier version existed).
    pub created: bool,
}

/// A page of search or history results.
#[derive(Debug, Default)]
pub struct Page {
    pub entries: Vec<Stored>,
    pub total: Option<u64>,
    /// Cursor for the next page, if there is one.
    pub next: Option<String>,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync {
    async fn create(&self, permit: &Permit<Create>) -> Result<Created>;
    /// The current version, which may be a deletion.
    async fn read(&self, permit: &Permit<Read>) -> Result<Option<Stored>>;
    async fn vread(&self, permit: &Permit<VRead>) -> Result<Option<Stored>>;
    async fn update(&self, permit: &Permit<Update>) -> Result<Updated>;
    /// The deletion version written, or `None` if there was nothing to delete.
    async fn delete(&self, permit: &Permit<Delete>) -> Result<Option<Stored>>;
    /// Newest first, paged by a cursor that stays stable while writes go on.
    async fn history(&self, permit: &Permit<History>) -> Result<Page>;
    async fn search(&self, permit: &Permit<Search>) -> Result<Page>;
    /// Whether the store answers and its schema is the one this binary knows (for readiness).
    async fn ping(&self) -> Result<()>;
    /// Rebuilds the search index of every current resource (after the search parameters
    /// changed, or for data written before the index existed); returns how many. Maintenance:
    /// it discloses nothing, so it takes no permit.
    async fn reindex(&self) -> Result<u64>;
    /// Tunes the store for a bulk load (`gateway import`) while `on`, and back to normal service
    /// afterwards. A store with nothing to tune ignores it.
    async fn bulk_load(&self, _on: bool) -> Result<()> {
        Ok(())
    }

    /// A transaction Bundle's writes, all or none, in one store transaction (see
    /// [`writes::transaction`] for the order and how references are resolved); one outcome per
    /// write, in the order given.
    async fn transaction(&self, tx: Transaction) -> Result<Vec<TxOutcome>>;

    /// Appends audit records in order, chaining each to the last with [`chain_hash`]. All or none.
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()>;
    /// Audit rows matching the query, newest first, at most `query.count + 1`.
    async fn search_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRow>>;
    /// Audit rows in chain order after `after_seq`, at most `limit` (for verification).
    async fn scan_audit(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditRow>>;
}

/// One write of a transaction, permitted.
pub enum TxPermit {
    Create(Permit<Create>),
    Update(Permit<Update>),
    Delete(Permit<Delete>),
}

/// A transaction's writes and what they need resolved inside the store transaction.
pub struct Transaction {
    pub writes: Vec<TxWrite>,
    /// Conditional references (`Patient?identifier=...`) in the written resources, with the
    /// permit to search their type (they reveal what matches).
    pub conditional_refs: Vec<(String, Permit<Search>)>,
    /// What conditional references resolved to before the transaction (already rewritten in
    /// the resources): the transaction fails (409) if one resolves otherwise inside it.
    pub expected: std::collections::HashMap<String, String>,
}

pub struct TxWrite {
    /// Where the entry is in the bundle (`Bundle.entry[3]`), for errors.
    pub place: String,
    /// The entry's `fullUrl`, which references in other entries may use.
    pub full_url: Option<String>,
    pub permit: TxPermit,
    /// The resource's index rows, computed beforehand when its references are final.
    pub indexing: Option<sql::Indexing>,
    /// Its references still name other entries or conditions (resolved in the transaction).
    pub unresolved: bool,
}

impl Transaction {
    /// The permitted operations, owned (the transaction rewrites references in them), and the
    /// conditional references as (text, type, criteria).
    pub fn into_parts(
        self,
    ) -> (
        Vec<writes::TxEntry>,
        Vec<ConditionalRef>,
        std::collections::HashMap<String, String>,
    ) {
        let entries = self
            .writes
            .into_iter()
            .map(|w| writes::TxEntry {
                op: match w.permit {
                    TxPermit::Create(p) => writes::TxOp::Create(p.into_op()),
                    TxPermit::Update(p) => writes::TxOp::Update(p.into_op()),
                    TxPermit::Delete(p) => writes::TxOp::Delete(p.into_op()),
                },
                place: w.place,
                full_url: w.full_url,
                indexing: w.indexing,
                unresolved: w.unresolved,
            })
            .collect();
        let refs = self
            .conditional_refs
            .into_iter()
            .map(|(text, p)| (text, p.op().ty.clone(), p.op().criteria.clone()))
            .collect();
        (entries, refs, self.expected)
    }
}

/// A conditional reference to resolve: its text, the type it names and the criteria.
pub type ConditionalRef = (String, String, crate::fhir::search::Criteria);

/// What one write of a transaction did.
#[derive(Debug)]
pub enum TxOutcome {
    Created(Created),
    Updated(Updated),
    Deleted(Option<Stored>),
}

/// One audit event to append: the record as stored and the fields it is searched by.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub id: String,
    pub recorded_ms: i64,
    /// `Patient/[id]` of the patient whose data the request concerned, if any.
    pub patient: Option<String>,
    pub agent: String,
    /// AuditEvent.outcome: 0 success, 4 minor failure, 8 serious failure.
    pub outcome: String,
    /// The record as stored (see `audit_codec`): the access's facts, or for records of earlier
    /// versions the `AuditEvent` JSON, compressed or plain.
    pub packed: Bytes,
}

impl AuditRecord {
    pub fn new(
        id: String,
        recorded_ms: i64,
        patient: Option<String>,
        agent: String,
        outcome: String,
        packed: Bytes,
    ) -> AuditRecord {
        AuditRecord {
            id,
            recorded_ms,
            patient,
            agent,
            outcome,
            packed,
        }
    }

    /// What the hash chain seals (see [`audit_codec::sealed`]); the stored bytes themselves if
    /// they cannot be read, so that the record fails to verify rather than the read.
    pub fn sealed(&self) -> std::borrow::Cow<'_, [u8]> {
        audit_codec::sealed(&self.packed).unwrap_or(std::borrow::Cow::Borrowed(&self.packed[..]))
    }

    /// The `AuditEvent` JSON (the stored bytes if they cannot be read).
    pub fn json(&self) -> Bytes {
        audit_codec::unpack(&self.packed).unwrap_or_else(|| self.packed.clone())
    }
}

/// An appended audit event with its place in the chain.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub seq: i64,
    pub record: AuditRecord,
    pub prev_hash: String,
    pub hash: String,
}

/// What AuditEvent search can ask (each list is OR; the fields are AND).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub patients: Vec<String>,
    pub agents: Vec<String>,
    pub outcomes: Vec<String>,
    /// Inclusive lower and exclusive upper bounds on `recorded`, in ms.
    pub from_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub ids: Vec<String>,
    /// Rows with `seq` below this (paging, newest first).
    pub before_seq: Option<i64>,
    pub count: u32,
}

/// The hash of the chain's first link's predecessor.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A page from the rows a backend fetched (at most `size + 1`: one more says there is a next
/// page) and the total; `next` is the cursor of the last row shown.
/// The number of matches when a search's first page already holds them all (fewer rows than
/// the page size plus the one that tells whether a next page exists): the count query, about
/// as costly as the page itself, is then not run. `None` when it must be counted.
pub fn whole_result(first_page: bool, size: u32, rows: usize) -> Option<i64> {
    (first_page && size > 0 && rows <= size as usize).then_some(rows as i64)
}

pub fn page_of<R>(
    total: Option<i64>,
    rows: &[R],
    size: u32,
    to_stored: impl Fn(&R) -> Stored,
    next_of: impl Fn(&R) -> String,
) -> Page {
    let shown = &rows[..rows.len().min(size as usize)];
    let next = if rows.len() > size as usize {
        shown.last().map(next_of)
    } else {
        None
    };
    Page {
        entries: shown.iter().map(to_stored).collect(),
        total: total.map(|t| t as u64),
        next,
    }
}

/// Each record with its (prev_hash, hash), continuing the chain after `last`.
pub fn chain(last: String, records: &[AuditRecord]) -> Vec<(String, String)> {
    let mut prev = last;
    records
        .iter()
        .map(|r| {
            let hash = chain_hash(&prev, &r.sealed());
            (std::mem::replace(&mut prev, hash.clone()), hash)
        })
        .collect()
}

/// `sha256(prev_hash "\n" body)`, hex: each record seals the one before it, so editing or
/// removing any record breaks every hash after it.
pub fn chain_hash(prev_hash: &str, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(body);
    hex::encode(h.finalize())
}

/// A new version as it will be stored: stamped now, with the server's meta.
pub fn new_version(
    ty: &str,
    id: &str,
    version: u64,
    method: WriteMethod,
    resource: Option<&Value>,
) -> Stored {
    let last_updated = now_ms();
    Stored {
        ty: ty.to_owned(),
        id: id.to_owned(),
        version,
        last_updated,
        method,
        body: resource.map(|r| stamp(r, id, version, last_updated)),
    }
}

/// The resource as stored: `resourceType`, `id` and `meta` first (with the server's `versionId`
/// and `lastUpdated`; the client's tags, profiles, security labels and source kept), the rest in
/// the order sent.
pub fn stamp(resource: &Value, id: &str, version: u64, last_updated: OffsetDateTime) -> Bytes {
    use serde::ser::{SerializeMap, Serializer};
    let empty = Map::new();
    let src = resource.as_object().unwrap_or(&empty);
    let mut meta = Map::new();
    meta.insert("versionId".into(), Value::String(version.to_string()));
    meta.insert(
        "lastUpdated".into(),
        Value::String(format_instant(last_updated)),
    );
    if let Some(Value::Object(client_meta)) = src.get("meta") {
        for (k, v) in client_meta {
            if k != "versionId" && k != "lastUpdated" {
                meta.insert(k.clone(), v.clone());
            }
        }
    }
    // Written straight from the borrowed resource: this runs on the store's single writer
    // thread, where copying the resource first cost a tenth of a bulk import's writer time.
    let mut out = Vec::with_capacity(1024);
    let mut ser = serde_json::Serializer::new(&mut out);
    let written = (|| {
        let mut map = ser.serialize_map(None)?;
        map.serialize_entry(
            "resourceType",
            src.get("resourceType").unwrap_or(&Value::Null),
        )?;
        map.serialize_entry("id", id)?;
        map.serialize_entry("meta", &meta)?;
        for (k, v) in src {
            if !matches!(k.as_str(), "resourceType" | "id" | "meta") {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    })();
    written.expect("a JSON value serializes");
    Bytes::from(out)
}

/// FHIR instant in UTC with millisecond precision (what the store keeps).
pub fn format_instant(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Now, truncated to the millisecond the store keeps.
pub fn now_ms() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    from_millis(to_millis(now))
}

pub fn to_millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn from_millis(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A fresh server-assigned id: a time-ordered UUID (v7). Every index keyed by (type, id) then
/// receives new resources at its right edge, so consecutive writes share pages, instead of each
/// dirtying a random leaf page per index that every commit writes to the WAL and every
/// checkpoint writes again (random v4 ids: ~18 such pages per HL7 v2 message of three
/// resources). The id reveals its creation time to the millisecond, as `meta.lastUpdated` of
/// its first version does anyway (ids are no secret: every access is decided by the policy).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stamp_puts_server_meta_first_and_keeps_client_meta() {
        let r = json!({"name": [{"family": "X"}], "resourceType": "Patient", "id": "old",
            "meta": {"versionId": "99", "tag": [{"code": "t"}], "profile": ["p"]}});
        let t = from_millis(1_700_000_000_123);
        let out: Value = serde_json::from_slice(&stamp(&r, "new", 3, t)).unwrap();
        let keys: Vec<_> = out.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, vec!["resourceType", "id", "meta", "name"]);
        assert_eq!(out["id"], "new");
        assert_eq!(out["meta"]["versionId"], "3");
        assert_eq!(out["meta"]["lastUpdated"], "2023-11-14T22:13:20.123Z");
        assert_eq!(out["meta"]["tag"][0]["code"], "t");
        assert_eq!(out["meta"]["profile"][0], "p");
    }
}
