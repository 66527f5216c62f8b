//! The embedded SQLite store.
//!
//! Durability: WAL with `synchronous=FULL`, so a commit is on disk before the response.
//! Atomicity of conditional writes: all writes go through one connection (SQLite has one writer
//! anyway), each in its own transaction, so "search, then create if nothing matched" cannot
//! interleave with another write. Reads use a separate pool and never wait for writers (WAL).

use super::{
    Created, Page, Store, Stored, Updated, WriteMethod, from_millis, new_id, now_ms, stamp,
    to_millis,
};
use crate::error::{Error, Result};
use crate::fhir::operation::{
    Create, Delete, History, HistoryScope, Read, Search, Target, Update, VRead,
};
use crate::fhir::search::{Criteria, identifier_tokens};
use crate::policy::Permit;
use bytes::Bytes;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use std::path::Path;
use std::time::Duration;

/// Schema versions this binary knows, applied in order. A database at a newer version than the
/// last one here is refused: an older binary must not write to a schema it does not understand.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE resource_version (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    type         TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    method       TEXT    NOT NULL,
    body         BLOB,
    UNIQUE (type, id, version)
);
CREATE INDEX resource_version_type_seq ON resource_version (type, seq);
CREATE TABLE resource_current (
    type    TEXT    NOT NULL,
    id      TEXT    NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (type, id)
) WITHOUT ROWID;
CREATE TABLE token_index (
    type   TEXT NOT NULL,
    id     TEXT NOT NULL,
    param  TEXT NOT NULL,
    system TEXT NOT NULL,
    value  TEXT NOT NULL
);
CREATE INDEX token_index_lookup ON token_index (type, param, value, system);
CREATE INDEX token_index_owner ON token_index (type, id);
"#];

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/gateway.db` and brings its schema up to date.
    pub async fn open(dir: &Path) -> Result<SqliteStore> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::store(
                format!("cannot create data directory {}: {e}", dir.display()),
                false,
            )
        })?;
        let path = dir.join("gateway.db");
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .pragma("cache_size", "-65536");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        migrate(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore { writer, reader })
    }
}

async fn migrate(pool: &SqlitePool) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS gateway_schema (version INTEGER NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM gateway_schema")
        .fetch_one(&mut *tx)
        .await?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(Error::store(
            format!(
                "database schema version {current} is newer than this binary knows ({known}); refusing to start"
            ),
            false,
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        sqlx::raw_sql(*sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO gateway_schema (version) VALUES (?)")
            .bind(i as i64 + 1)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Columns of a version row; `seq` last (history pages by it). A macro so that queries built from
/// it stay `&'static str`, which sqlx accepts as audited SQL.
macro_rules! select_version {
    () => {
        "SELECT v.type, v.id, v.version, v.last_updated, v.method, v.body, v.seq FROM "
    };
}
const SELECT_VERSION: &str = select_version!();

fn row_to_stored(row: &SqliteRow) -> Stored {
    let body: Option<Vec<u8>> = row.get(5);
    Stored {
        ty: row.get(0),
        id: row.get(1),
        version: row.get::<i64, _>(2) as u64,
        last_updated: from_millis(row.get(3)),
        method: WriteMethod::parse(row.get::<&str, _>(4)),
        body: body.map(Bytes::from),
    }
}

/// Appends `AND (...)` for each criterion; `c` is the alias of `resource_current`.
fn push_criteria(q: &mut QueryBuilder<Sqlite>, criteria: &Criteria) {
    for ors in &criteria.ids {
        q.push(" AND c.id IN (");
        let mut sep = q.separated(", ");
        for id in ors {
            sep.push_bind(id.clone());
        }
        q.push(")");
    }
    for ors in &criteria.identifiers {
        q.push(" AND EXISTS (SELECT 1 FROM token_index t WHERE t.type = c.type AND t.id = c.id AND t.param = 'identifier' AND (");
        for (i, tok) in ors.iter().enumerate() {
            if i > 0 {
                q.push(" OR ");
            }
            q.push("(1=1");
            if let Some(v) = &tok.value {
                q.push(" AND t.value = ").push_bind(v.clone());
            }
            if let Some(s) = &tok.system {
                q.push(" AND t.system = ").push_bind(s.clone());
            }
            q.push(")");
        }
        q.push("))");
    }
}

/// Current, non-deleted resources of `ty` matching `criteria`, on the writer's connection (inside
/// its transaction), at most `limit`.
async fn matches_in_tx(
    conn: &mut SqliteConnection,
    ty: &str,
    criteria: &Criteria,
    limit: i64,
) -> Result<Vec<Stored>> {
    let mut q = QueryBuilder::new(SELECT_VERSION);
    q.push("resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.deleted = 0 AND c.type = ");
    q.push_bind(ty.to_owned());
    push_criteria(&mut q, criteria);
    q.push(" LIMIT ").push_bind(limit);
    let rows = q.build().fetch_all(&mut *conn).await?;
    Ok(rows.iter().map(row_to_stored).collect())
}

async fn current_in_tx(
    conn: &mut SqliteConnection,
    ty: &str,
    id: &str,
) -> Result<Option<(u64, bool)>> {
    let row =
        sqlx::query("SELECT version, deleted FROM resource_current WHERE type = ? AND id = ?")
            .bind(ty)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|r| (r.get::<i64, _>(0) as u64, r.get::<i64, _>(1) != 0)))
}

/// Writes one version and makes it current; keeps the token index in step.
async fn write_version(
    conn: &mut SqliteConnection,
    ty: &str,
    id: &str,
    version: u64,
    method: WriteMethod,
    resource: Option<&Value>,
) -> Result<Stored> {
    let last_updated = now_ms();
    let body = resource.map(|r| stamp(r, id, version, last_updated));
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO resource_version (type, id, version, last_updated, method, body) VALUES (?, ?, ?, ?, ?, ?) RETURNING seq",
    )
    .bind(ty)
    .bind(id)
    .bind(version as i64)
    .bind(to_millis(last_updated))
    .bind(method.as_str())
    .bind(body.as_deref())
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO resource_current (type, id, version, deleted, seq) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (type, id) DO UPDATE SET version = excluded.version, deleted = excluded.deleted, seq = excluded.seq",
    )
    .bind(ty)
    .bind(id)
    .bind(version as i64)
    .bind(resource.is_none() as i64)
    .bind(seq)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM token_index WHERE type = ? AND id = ?")
        .bind(ty)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if let Some(r) = resource {
        for (system, value) in identifier_tokens(r) {
            sqlx::query("INSERT INTO token_index (type, id, param, system, value) VALUES (?, ?, 'identifier', ?, ?)")
                .bind(ty)
                .bind(id)
                .bind(system)
                .bind(value)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(Stored {
        ty: ty.to_owned(),
        id: id.to_owned(),
        version,
        last_updated,
        method,
        body,
    })
}

/// The single match of conditional criteria: `Ok(None)` for none, 412 for several.
async fn single_match(
    conn: &mut SqliteConnection,
    ty: &str,
    criteria: &Criteria,
) -> Result<Option<Stored>> {
    let mut found = matches_in_tx(conn, ty, criteria, 2).await?;
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(Error::precondition_failed(
            "the conditional criteria match more than one resource",
        )),
    }
}

/// Update by id inside the writer's transaction.
async fn update_by_id(conn: &mut SqliteConnection, op: &Update, id: &str) -> Result<Updated> {
    match current_in_tx(conn, &op.ty, id).await? {
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
            let stored =
                write_version(conn, &op.ty, id, 1, WriteMethod::Put, Some(&op.resource)).await?;
            Ok(Updated {
                stored,
                created: true,
            })
        }
        Some((version, _deleted)) => {
            if let Some(expected) = op.if_match
                && expected != version
            {
                return Err(Error::precondition_failed(format!(
                    "version conflict: If-Match {expected}, current version is {version}"
                )));
            }
            let stored = write_version(
                conn,
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

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create(&self, permit: &Permit<Create>) -> Result<Created> {
        let op = permit.op();
        let mut tx = self.writer.begin().await?;
        if let Some(criteria) = &op.if_none_exist
            && let Some(existing) = single_match(&mut tx, &op.ty, criteria).await?
        {
            tx.commit().await?;
            return Ok(Created::Existing(existing));
        }
        let stored = write_version(
            &mut tx,
            &op.ty,
            &new_id(),
            1,
            WriteMethod::Post,
            Some(&op.resource),
        )
        .await?;
        tx.commit().await?;
        Ok(Created::New(stored))
    }

    async fn read(&self, permit: &Permit<Read>) -> Result<Option<Stored>> {
        let op = permit.op();
        let row = sqlx::query(concat!(
            select_version!(),
            "resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.type = ? AND c.id = ?"
        ))
        .bind(&op.ty)
        .bind(&op.id)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.as_ref().map(row_to_stored))
    }

    async fn vread(&self, permit: &Permit<VRead>) -> Result<Option<Stored>> {
        let op = permit.op();
        let row = sqlx::query(concat!(
            select_version!(),
            "resource_version v WHERE v.type = ? AND v.id = ? AND v.version = ?"
        ))
        .bind(&op.ty)
        .bind(&op.id)
        .bind(op.version as i64)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.as_ref().map(row_to_stored))
    }

    async fn update(&self, permit: &Permit<Update>) -> Result<Updated> {
        let op = permit.op();
        let mut tx = self.writer.begin().await?;
        let result = match &op.target {
            Target::Id(id) => update_by_id(&mut tx, op, id).await?,
            Target::Criteria(criteria) => {
                let body_id = op
                    .resource
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                match single_match(&mut tx, &op.ty, criteria).await? {
                    Some(found) => {
                        if body_id.as_deref().is_some_and(|b| b != found.id) {
                            return Err(Error::invalid(
                                "the resource's id differs from the resource the criteria match",
                            ));
                        }
                        update_by_id(&mut tx, op, &found.id).await?
                    }
                    None => {
                        if op.if_match.is_some() {
                            return Err(Error::precondition_failed(
                                "If-Match given but no resource matches",
                            ));
                        }
                        match body_id {
                            Some(id) => update_by_id(&mut tx, op, &id).await?,
                            None => {
                                let stored = write_version(
                                    &mut tx,
                                    &op.ty,
                                    &new_id(),
                                    1,
                                    WriteMethod::Put,
                                    Some(&op.resource),
                                )
                                .await?;
                                Updated {
                                    stored,
                                    created: true,
                                }
                            }
                        }
                    }
                }
            }
        };
        tx.commit().await?;
        Ok(result)
    }

    async fn delete(&self, permit: &Permit<Delete>) -> Result<Option<Stored>> {
        let op = permit.op();
        let mut tx = self.writer.begin().await?;
        let id = match &op.target {
            Target::Id(id) => Some(id.clone()),
            Target::Criteria(criteria) => {
                single_match(&mut tx, &op.ty, criteria).await?.map(|s| s.id)
            }
        };
        let Some(id) = id else { return Ok(None) };
        let result = match current_in_tx(&mut tx, &op.ty, &id).await? {
            None => {
                if op.if_match.is_some() {
                    return Err(Error::precondition_failed(format!(
                        "{}/{id} does not exist",
                        op.ty
                    )));
                }
                None
            }
            Some((version, deleted)) => {
                if let Some(expected) = op.if_match
                    && expected != version
                {
                    return Err(Error::precondition_failed(format!(
                        "version conflict: If-Match {expected}, current version is {version}"
                    )));
                }
                if deleted {
                    None
                } else {
                    Some(
                        write_version(&mut tx, &op.ty, &id, version + 1, WriteMethod::Delete, None)
                            .await?,
                    )
                }
            }
        };
        tx.commit().await?;
        Ok(result)
    }

    async fn history(&self, permit: &Permit<History>) -> Result<Page> {
        let op = permit.op();
        let filter = |q: &mut QueryBuilder<Sqlite>| {
            q.push(" WHERE 1=1");
            match &op.scope {
                HistoryScope::System => {}
                HistoryScope::Type(ty) => {
                    q.push(" AND v.type = ").push_bind(ty.clone());
                }
                HistoryScope::Instance(ty, id) => {
                    q.push(" AND v.type = ")
                        .push_bind(ty.clone())
                        .push(" AND v.id = ")
                        .push_bind(id.clone());
                }
            }
            if let Some(since) = op.since {
                q.push(" AND v.last_updated >= ")
                    .push_bind(to_millis(since));
            }
        };
        let mut count_q = QueryBuilder::new("SELECT COUNT(*) FROM resource_version v");
        filter(&mut count_q);
        let total: i64 = count_q.build_query_scalar().fetch_one(&self.reader).await?;

        let mut q = QueryBuilder::new(SELECT_VERSION);
        q.push("resource_version v");
        filter(&mut q);
        if let Some(cursor) = op.cursor {
            q.push(" AND v.seq < ").push_bind(cursor);
        }
        q.push(" ORDER BY v.seq DESC LIMIT ")
            .push_bind(op.count as i64 + 1);
        let rows = q.build().fetch_all(&self.reader).await?;
        let more = rows.len() > op.count as usize;
        let shown = &rows[..rows.len().min(op.count as usize)];
        // The cursor is the sequence number of the last entry shown.
        let next = if more {
            shown.last().map(|r| r.get::<i64, _>(6).to_string())
        } else {
            None
        };
        let mut entries: Vec<Stored> = shown.iter().map(row_to_stored).collect();
        if op.count == 0 {
            entries.clear();
        }
        Ok(Page {
            entries,
            total: Some(total as u64),
            next,
        })
    }

    async fn search(&self, permit: &Permit<Search>) -> Result<Page> {
        let op = permit.op();
        let from = |q: &mut QueryBuilder<Sqlite>| {
            q.push("resource_current c JOIN resource_version v ON v.seq = c.seq WHERE c.deleted = 0 AND c.type = ");
            q.push_bind(op.ty.clone());
            push_criteria(q, &op.criteria);
        };
        let mut count_q = QueryBuilder::new("SELECT COUNT(*) FROM ");
        from(&mut count_q);
        let total: i64 = count_q.build_query_scalar().fetch_one(&self.reader).await?;
        if op.count == 0 {
            return Ok(Page {
                entries: Vec::new(),
                total: Some(total as u64),
                next: None,
            });
        }
        // Keyset paging on id: a page never repeats or skips a resource that existed when the
        // search began, whatever is written meanwhile.
        let mut q = QueryBuilder::new(SELECT_VERSION);
        from(&mut q);
        if let Some(after) = &op.cursor {
            q.push(" AND c.id > ").push_bind(after.clone());
        }
        q.push(" ORDER BY c.id LIMIT ")
            .push_bind(op.count as i64 + 1);
        let rows = q.build().fetch_all(&self.reader).await?;
        let more = rows.len() > op.count as usize;
        let entries: Vec<Stored> = rows
            .iter()
            .take(op.count as usize)
            .map(row_to_stored)
            .collect();
        let next = if more {
            entries.last().map(|s| s.id.clone())
        } else {
            None
        };
        Ok(Page {
            entries,
            total: Some(total as u64),
            next,
        })
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}
