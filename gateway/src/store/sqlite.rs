//! The embedded SQLite store.
//!
//! Durability: WAL with `synchronous=FULL`, so a commit is on disk before the response.
//! Atomicity of conditional writes: all writes go through one connection (SQLite has one writer
//! anyway), each in its own transaction, so "search, then create if nothing matched" cannot
//! interleave with another write. Reads use a separate pool and never wait for writers (WAL).

use super::sql::{self, Dialect, Sql};
use super::writes::{self, WriteTx};
use super::{
    AUDIT_GENESIS, AuditQuery, AuditRecord, AuditRow, Created, Page, Store, Stored, Updated,
    WriteMethod, chain, page_of,
};
use crate::error::{Error, Result};
use crate::fhir::operation::{Create, Delete, History, Read, Search, Update, VRead};
use crate::fhir::search::Criteria;
use crate::policy::Permit;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::path::Path;
use std::time::Duration;

const D: Dialect = Dialect::Sqlite;

/// Schema versions this binary knows, applied in order. A database at a newer version than the
/// last one here is refused: an older binary must not write to a schema it does not understand.
const MIGRATIONS: &[&str] = &[
    r#"
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
"#,
    r#"
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    id        TEXT    NOT NULL UNIQUE,
    recorded  INTEGER NOT NULL,
    patient   TEXT,
    agent     TEXT    NOT NULL,
    outcome   TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL,
    body      BLOB    NOT NULL
);
CREATE INDEX audit_log_patient ON audit_log (patient, seq);
CREATE INDEX audit_log_recorded ON audit_log (recorded);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#,
    r#"
CREATE TABLE compartment (
    type    TEXT NOT NULL,
    id      TEXT NOT NULL,
    patient TEXT NOT NULL
);
CREATE INDEX compartment_patient ON compartment (patient, type, id);
CREATE INDEX compartment_owner ON compartment (type, id);
"#,
];

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

sql::relational_common!(
    Sqlite,
    SqliteRow,
    SqliteArguments,
    sqlx::SqliteConnection,
    sql::Dialect::Sqlite
);

/// The writer's transaction, as the shared write rules see it.
struct Tx(Transaction<'static, Sqlite>);

#[async_trait::async_trait]
impl WriteTx for Tx {
    async fn current(&mut self, ty: &str, id: &str) -> Result<Option<(u64, bool)>> {
        let row = query(&sql::current_version(D, ty, id))
            .fetch_optional(&mut *self.0)
            .await?;
        Ok(row.map(|r| (r.get::<i64, _>(0) as u64, r.get::<i64, _>(1) != 0)))
    }

    async fn matches(&mut self, ty: &str, criteria: &Criteria, limit: i64) -> Result<Vec<Stored>> {
        let rows = query(&sql::matching(D, ty, criteria, limit))
            .fetch_all(&mut *self.0)
            .await?;
        Ok(rows.iter().map(row_to_stored).collect())
    }

    async fn write(
        &mut self,
        ty: &str,
        id: &str,
        version: u64,
        method: WriteMethod,
        resource: Option<&Value>,
    ) -> Result<Stored> {
        write_version(&mut self.0, ty, id, version, method, resource).await
    }
}

impl SqliteStore {
    async fn begin(&self) -> Result<Tx> {
        Ok(Tx(self.writer.begin().await?))
    }

    /// A page from (count, page) statements; `next` from the last row shown.
    async fn page(
        &self,
        count: &Sql,
        page: &Sql,
        size: u32,
        next_of: fn(&SqliteRow) -> String,
    ) -> Result<Page> {
        let total: i64 = scalar(count).fetch_one(&self.reader).await?;
        // `_count=0` asks for the total only.
        let rows = if size == 0 {
            Vec::new()
        } else {
            query(page).fetch_all(&self.reader).await?
        };
        Ok(page_of(total, &rows, size, row_to_stored, next_of))
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create(&self, permit: &Permit<Create>) -> Result<Created> {
        let mut tx = self.begin().await?;
        let created = writes::create(&mut tx, permit.op()).await?;
        tx.0.commit().await?;
        Ok(created)
    }

    async fn read(&self, permit: &Permit<Read>) -> Result<Option<Stored>> {
        let op = permit.op();
        let row = query(&sql::read(D, &op.ty, &op.id))
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.as_ref().map(row_to_stored))
    }

    async fn vread(&self, permit: &Permit<VRead>) -> Result<Option<Stored>> {
        let op = permit.op();
        let row = query(&sql::vread(D, &op.ty, &op.id, op.version))
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.as_ref().map(row_to_stored))
    }

    async fn update(&self, permit: &Permit<Update>) -> Result<Updated> {
        let mut tx = self.begin().await?;
        let updated = writes::update(&mut tx, permit.op()).await?;
        tx.0.commit().await?;
        Ok(updated)
    }

    async fn delete(&self, permit: &Permit<Delete>) -> Result<Option<Stored>> {
        let mut tx = self.begin().await?;
        let deleted = writes::delete(&mut tx, permit.op()).await?;
        tx.0.commit().await?;
        Ok(deleted)
    }

    async fn history(&self, permit: &Permit<History>) -> Result<Page> {
        let op = permit.op();
        let (count, page) = sql::history(D, op);
        self.page(&count, &page, op.count, |r| r.get::<i64, _>(6).to_string())
            .await
    }

    async fn search(&self, permit: &Permit<Search>) -> Result<Page> {
        let op = permit.op();
        let (count, page) = sql::search(D, op);
        self.page(&count, &page, op.count, |r| r.get::<String, _>(1))
            .await
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let last: String =
            sqlx::query_scalar("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or_else(|| AUDIT_GENESIS.to_owned());
        let links = chain(last, records);
        // One multi-row INSERT per batch (at most 512 rows, 4,096 parameters): a statement per
        // row would make the audit, which every request waits for, the server's bottleneck.
        let mut q = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO audit_log (id, recorded, patient, agent, outcome, prev_hash, hash, body) ",
        );
        q.push_values(records.iter().zip(links), |mut row, (r, (prev, hash))| {
            row.push_bind(r.id.clone())
                .push_bind(r.recorded_ms)
                .push_bind(r.patient.clone())
                .push_bind(r.agent.clone())
                .push_bind(r.outcome.clone())
                .push_bind(prev)
                .push_bind(hash)
                .push_bind(r.body.to_vec());
        });
        q.build().execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn search_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRow>> {
        let rows = query(&sql::audit_search(D, q))
            .fetch_all(&self.reader)
            .await?;
        Ok(rows.iter().map(audit_row).collect())
    }

    async fn scan_audit(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditRow>> {
        let rows = query(&sql::audit_scan(D, after_seq, limit))
            .fetch_all(&self.reader)
            .await?;
        Ok(rows.iter().map(audit_row).collect())
    }

    async fn ping(&self) -> Result<()> {
        let version: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM gateway_schema")
                .fetch_one(&self.reader)
                .await?;
        if version != MIGRATIONS.len() as i64 {
            return Err(Error::store(
                format!("schema version {version}, expected {}", MIGRATIONS.len()),
                true,
            ));
        }
        Ok(())
    }
}
