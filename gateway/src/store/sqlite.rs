//! The embedded SQLite store.
//!
//! Durability: WAL; a write is answered once its commit is synced to disk, and a read once every
//! commit it could have seen is (`sqlite_syncer`).
//! Atomicity of conditional writes: all writes go through one connection (SQLite has one writer
//! anyway), each in its own transaction, so "search, then create if nothing matched" cannot
//! interleave with another write. Reads use a separate pool and never wait for writers (WAL).
//!
//! The access log lives in its own file, `audit.db`, with its own writer connection: its appends,
//! one per batch of requests, never queue behind resource writes for the one writer, resource
//! readers keep their page caches when the log grows, and the log can be kept, copied and
//! retained apart from the clinical data. Point reads run through `sqlite_inline`; the log is
//! appended to a journal file and indexed into `audit.db` behind the requests (`audit_journal`).

use super::audit_journal::AuditJournal;
use super::sql::{self, Dialect, Sql};
use super::sqlite_checkpointer::{BACKSTOP_PAGES, Checkpointer};
use super::sqlite_inline::PointReads;
use super::sqlite_writer::GroupWriter;
use super::writes;
use super::{
    AuditQuery, AuditRecord, AuditRow, Created, Page, Store, Stored, Transaction, TxOutcome,
    Updated, page_of,
};
use crate::error::{Error, Result};
use crate::fhir::operation::{Create, Delete, History, Read, Search, Update, VRead};
use crate::policy::Permit;
use futures::executor::block_on;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite};
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
    // Version 2 created the access log here; it now lives in `audit.db` (see [`AUDIT_MIGRATIONS`]).
    // A database written by an older binary has its log moved there by `move_audit_log`.
    "SELECT 1;",
    r#"
CREATE TABLE compartment (
    type    TEXT NOT NULL,
    id      TEXT NOT NULL,
    patient TEXT NOT NULL
);
CREATE INDEX compartment_patient ON compartment (patient, type, id);
CREATE INDEX compartment_owner ON compartment (type, id);
"#,
    // Search parameters (fhir/search_index.rs describes the row shape). Resources written before
    // this version have no rows until they are written again or reindexed.
    r#"
CREATE TABLE search_index (
    type   TEXT NOT NULL,
    id     TEXT NOT NULL,
    param  TEXT NOT NULL,
    system TEXT NOT NULL,
    value  TEXT NOT NULL,
    raw    TEXT NOT NULL,
    low    REAL,
    high   REAL
);
CREATE INDEX search_index_value ON search_index (type, param, value, system);
CREATE INDEX search_index_range ON search_index (type, param, low);
CREATE INDEX search_index_owner ON search_index (type, id, param);
"#,
    // The order of a sorted search's matches, kept for its pages (sql::snapshot_insert).
    r#"
CREATE TABLE search_snapshot (
    search_id TEXT    NOT NULL,
    pos       INTEGER NOT NULL,
    type      TEXT    NOT NULL,
    id        TEXT    NOT NULL,
    created   INTEGER NOT NULL,
    PRIMARY KEY (search_id, pos)
) WITHOUT ROWID;
CREATE INDEX search_snapshot_created ON search_snapshot (created);
"#,
    // Full text (`_text`, `_content`): FTS5 without a copy of the text, one document number per
    // resource. Resources written before are searchable by text after `gateway reindex`.
    r#"
CREATE TABLE fulltext_doc (
    doc  INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    id   TEXT NOT NULL,
    UNIQUE (type, id)
);
CREATE VIRTUAL TABLE text_fts USING fts5(body, content = '', contentless_delete = 1, tokenize = 'unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE content_fts USING fts5(body, content = '', contentless_delete = 1, tokenize = 'unicode61 remove_diacritics 2');
"#, // The id in the value indexes: a search that starts from a value (`c.id IN (SELECT s.id
    // ...)`) and a count over 100,000 matches read the index alone, not the rows (620 ms -> 110 ms
    // for 112,000 of 1,000,000 on SQLite). The id before the system: a probe for one resource's
    // value (`EXISTS ... s.id = c.id AND s.value = ?`) seeks straight to it; with the system
    // first, SQLite scanned every row of the value for each resource (3 s for one page).
    r#"
DROP INDEX search_index_value;
CREATE INDEX search_index_value ON search_index (type, param, value, id, system);
DROP INDEX token_index_lookup;
CREATE INDEX token_index_lookup ON token_index (type, param, value, id, system);
"#,
    // The range index holds only rows with a range (dates, numbers, quantities: ~1 in 6); tokens,
    // strings and references had an entry each under a NULL that no search reads. A condition
    // on `s.low` implies `low IS NOT NULL`, so the planner uses it wherever it could use `low`
    // before; one on `s.high` alone used only its (type, param) prefix, which the value index
    // has too. A write inserts ~20 % fewer index entries.
    r#"
DROP INDEX search_index_range;
CREATE INDEX search_index_range ON search_index (type, param, low) WHERE low IS NOT NULL;
"#,
    super::sql::DROP_TOKEN_INDEX,
    // No range index on SQLite. Its planner (3.51, no statistics) ran a range condition's
    // `EXISTS (SELECT 1 FROM search_index s WHERE s.type = c.type AND s.id = c.id AND s.param =
    // 'date' AND s.low < ?)` on it: for each candidate resource a scan of the parameter's range
    // entries from the start, checking the id. `Observation?date=lt2030-01-01&_total=accurate`
    // over 68,000 Observations did not answer in 20 s; on the owner index each probe is one seek
    // (the same count: 0.34 s). Nothing else read it here: a range never drives a search
    // (`sql::driver`), sorting and `:missing` read the owner index. Each write saves an entry per
    // date, number and quantity (an HL7 ADT message's commit ~8 of its ~105 pages).
    // PostgreSQL keeps its own: with statistics its planner uses it for semi-joins.
    "DROP INDEX search_index_range;",
    // A key per resource (`rid`, the `seq` of the version that made it current first, kept by
    // every later one) for the index tables, in place of its (type, id). The id is random (a
    // UUID), so an index ordered by it took every new entry at a random place: each of a
    // resource's ~14 search parameters dirtied a page of the value index inside its value's
    // range and another of the owner index, each written to the WAL and again to the database
    // (a million resources loaded wrote ~195 KB per resource). Keys that only grow append at
    // the end of each range instead (`bench/index_key_model.py`: 48.0 -> 8.8 KB of WAL per
    // resource). The rows are rebuilt by the reindex that an empty index starts at open.
    // `resource_current_type_rid` holds every column a search reads of `resource_current`, so
    // that a search's keys (`c.rid IN (...)`, see `sql::Driver`) are looked up in it alone: with
    // (type, rid) only, each match cost a second seek into the table for `deleted` and `seq`
    // (a count of 22,000 Observations by code 79 -> 128 ms at 1M resources), and SQLite
    // (no statistics) chose to scan all Observations by their primary key for a sorted search
    // (0.6 -> 93 ms for one patient's 34).
    SQLITE_RID,
];

const SQLITE_RID: &str = r#"
ALTER TABLE resource_current ADD COLUMN rid INTEGER;
UPDATE resource_current SET rid = seq;
CREATE UNIQUE INDEX resource_current_rid ON resource_current (rid);
CREATE INDEX resource_current_type_rid ON resource_current (type, rid, deleted, seq);
DROP TABLE search_index;
CREATE TABLE search_index (
    rid    INTEGER NOT NULL,
    type   TEXT NOT NULL,
    param  TEXT NOT NULL,
    system TEXT NOT NULL,
    value  TEXT NOT NULL,
    raw    TEXT NOT NULL,
    low    REAL,
    high   REAL
);
CREATE INDEX search_index_value ON search_index (type, param, value, rid, system);
CREATE INDEX search_index_owner ON search_index (rid, param);
DROP TABLE compartment;
CREATE TABLE compartment (
    rid     INTEGER NOT NULL,
    type    TEXT NOT NULL,
    patient TEXT NOT NULL
);
CREATE INDEX compartment_patient ON compartment (patient, type, rid);
CREATE INDEX compartment_owner ON compartment (rid);
"#;

/// Schema versions of `audit.db`.
const AUDIT_MIGRATIONS: &[&str] = &[r#"
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
"#];

pub struct SqliteStore {
    /// Maintenance writes (migrations, reindex, search snapshots).
    writer: SqlitePool,
    /// Resource writes, committed in groups (see `sqlite_writer`).
    group: GroupWriter,
    /// Copies the WAL into the database file beside the writer; paused during bulk loads.
    checkpointer: Checkpointer,
    reader: SqlitePool,
    /// Read and vread, without sqlx's worker thread (see `sqlite_inline`).
    point_reads: PointReads,
    /// The access log: appended to a journal, indexed into `audit.db`, read by a small pool.
    audit_journal: AuditJournal,
    audit_reader: SqlitePool,
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
        let audit = dir.join("audit.db");
        let (audit_writer, audit_reader) = pools(&audit, 2).await?;
        migrate(&audit_writer, AUDIT_MIGRATIONS).await?;
        // From here on the log is appended through `audit_appender` alone.
        audit_writer.close().await;
        let main = dir.join("gateway.db");
        let (writer, reader) = pools(&main, 8).await?;
        migrate(&writer, MIGRATIONS).await?;
        move_audit_log(&writer, &audit).await?;
        let group_conn = super::sqlite_inline::open_group_writer(&main)?;
        // The WAL is checkpointed beside the writer (see `sqlite_checkpointer`), which also has
        // the writer stop now and then so that the log restarts; the writer's own automatic
        // checkpoint stays as a backstop. The WAL must not stay large once writes stop: readers
        // load WAL pages they need into their heap page cache instead of mapping them (an export
        // after an import that left 40 MB in the WAL grew the server's memory by a third more);
        // the thread copies everything within a pause of the last commit.
        group_conn.pragma_update(None, "wal_autocheckpoint", BACKSTOP_PAGES)?;
        let checkpointer = Checkpointer::start(super::sqlite_inline::open(
            &main,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
        )?)
        .map_err(|e| {
            Error::store(
                format!("cannot start the WAL checkpoint thread: {e}"),
                false,
            )
        })?;
        // When a group runs again after a failed write, each write runs in its own savepoint, so
        // SQLite copies every page it changes to a statement journal first; in memory, not a
        // temporary file (with a file, those pwrites were a fifth of the writer thread's time
        // under concurrent REST writes, when every group ran that way).
        group_conn.pragma_update(None, "temp_store", "MEMORY")?;
        // The writer's commits do not wait for the disk; `sqlite_syncer` syncs the WAL after them,
        // before any of their writes is answered and before any read that could see them is.
        group_conn.pragma_update(None, "synchronous", "NORMAL")?;
        group_conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
        let wal = dir.join("gateway.db-wal");
        let group = GroupWriter::start(group_conn, checkpointer.clone(), wal);
        let store = SqliteStore {
            writer,
            group,
            checkpointer,
            reader,
            point_reads: PointReads::new(&main, 8),
            audit_journal: AuditJournal::open(&audit, &dir.join("audit-journal"))?,
            audit_reader,
        };
        reindex_if_missing(&store, &store.reader).await?;
        Ok(store)
    }
}

/// Data written before the search index existed is indexed once, at the first start after the
/// upgrade (logged); afterwards every write keeps the index.
async fn reindex_if_missing(store: &SqliteStore, pool: &SqlitePool) -> Result<()> {
    let missing: i64 = scalar(&sql::index_missing(D)).fetch_one(pool).await?;
    if missing == 1 {
        tracing::warn!("the search index is empty but resources exist: reindexing");
        let n = store.reindex().await?;
        tracing::warn!(resources = n, "reindexed");
    }
    Ok(())
}

/// The group writer's page cache, in KiB (negative: SQLite's unit for a size in KiB), smaller
/// than the readers' 64 MiB. At every commit SQLite drops cached pages past the database's end
/// (`pcache1TruncateUnsafe`), which can walk the cache's whole hash table, and that table grows
/// with the cache (SQLite 3.51's source; which branch runs here was not traced): with 64 MiB it
/// was 4.4 % of the gateway's CPU for HL7 v2 ADT messages on one connection (perf), 0.6 % with
/// 4 MiB. The writer reads unchanged pages from the mapped file
/// (`mmap_size`), so what it caches is mostly the pages it changed since the last checkpoint.
/// Measured side by side on fresh stores: ADT over MLLP +5-7 % on 1 and 8 connections,
/// `gateway import` of the Synthea sample +15 %.
const WRITER_CACHE_KIB: i64 = -4096;

/// The writer's WAL checkpoint interval while `gateway import` runs, in pages (its checkpoints
/// replace the checkpoint thread's then).
const BULK_CHECKPOINT_PAGES: u32 = 10_000;

/// How much of `gateway.db` each connection maps (address space, not memory).
pub(crate) const MMAP_BYTES: &str = "8589934592";

/// A one-connection writer pool and a read-only pool of `readers` on the database at `path`.
async fn pools(path: &Path, readers: u32) -> Result<(SqlitePool, SqlitePool)> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .pragma("cache_size", "-65536")
        // Reads come from the mapped file: a connection whose page cache a write made stale
        // (every reader, after every write) then has little to throw away. Without it, emptying
        // 64 MiB caches after each write took a fifth of the gateway's time under a write load.
        .pragma("mmap_size", MMAP_BYTES);
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options.clone())
        .await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(readers)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options.read_only(true))
        .await?;
    Ok((writer, reader))
}

/// Moves an access log that an older binary kept in `gateway.db` into `audit.db`, rows, sequence
/// numbers and hashes unchanged, in one transaction, so the chain verifies as before. Refuses if
/// both files hold records: which one is the log would be a guess.
async fn move_audit_log(writer: &SqlitePool, audit: &Path) -> Result<()> {
    let mut conn = writer.acquire().await?;
    let old: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'audit_log'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if old.is_none() {
        return Ok(());
    }
    sqlx::query("ATTACH DATABASE ? AS audit")
        .bind(audit.to_string_lossy().into_owned())
        .execute(&mut *conn)
        .await?;
    let moved = async {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let there: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit.audit_log")
            .fetch_one(&mut *tx)
            .await?;
        let here: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM main.audit_log")
            .fetch_one(&mut *tx)
            .await?;
        if here > 0 && there > 0 {
            return Err(Error::store(
                "both gateway.db and audit.db hold access-log records; refusing to start",
                false,
            ));
        }
        sqlx::raw_sql(
            "INSERT INTO audit.audit_log SELECT * FROM main.audit_log ORDER BY seq;
             DROP TRIGGER main.audit_log_no_update;
             DROP TRIGGER main.audit_log_no_delete;
             DROP TABLE main.audit_log;",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    sqlx::query("DETACH DATABASE audit")
        .execute(&mut *conn)
        .await?;
    if moved.is_ok() {
        tracing::info!("moved the access log from gateway.db to audit.db");
    }
    moved
}

async fn migrate(pool: &SqlitePool, migrations: &[&'static str]) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS gateway_schema (version INTEGER NOT NULL)")
        .execute(&mut *tx)
        .await?;
    let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM gateway_schema")
        .fetch_one(&mut *tx)
        .await?;
    let known = migrations.len() as i64;
    if current > known {
        return Err(Error::store(
            format!(
                "database schema version {current} is newer than this binary knows ({known}); refusing to start"
            ),
            false,
        ));
    }
    for (i, sql) in migrations.iter().enumerate().skip(current as usize) {
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

impl SqliteStore {
    /// A page from (count, page) statements; `next` from the last row shown.
    async fn page(
        &self,
        count: Option<&Sql>,
        page: &Sql,
        size: u32,
        first: bool,
        next_of: fn(&SqliteRow) -> String,
    ) -> Result<Page> {
        // `_count=0` asks for the total only.
        let rows = if size == 0 {
            Vec::new()
        } else {
            query(page).fetch_all(&self.reader).await?
        };
        // `_total=none`: no count query at all; a first page that holds every match counts them.
        let total: Option<i64> = match (count, super::whole_result(first, size, rows.len())) {
            (None, _) => None,
            (Some(_), Some(n)) => Some(n),
            (Some(c), None) => Some(scalar(c).fetch_one(&self.reader).await?),
        };
        Ok(page_of(total, &rows, size, row_to_stored, next_of))
    }

    /// A search's page, read without waiting for the sync of what it saw.
    async fn search_unsettled(&self, op: &Search) -> Result<Page> {
        let (count, page) = sql::search(D, op)?;
        let count = op.total.then_some(&count);
        if op.sort.is_empty() || op.count == 0 {
            let next_of: fn(&SqliteRow) -> String =
                |r: &_| r.get::<i64, _>(sql::PAGE_CURSOR_COLUMN).to_string();
            let first = op.cursor.is_none();
            return self.page(count, &page, op.count, first, next_of).await;
        }
        let total = match count {
            Some(c) => Some(scalar(c).fetch_one(&self.reader).await?),
            None => None,
        };
        sorted_search(&self.reader, &self.writer, op, total).await
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create(&self, permit: &Permit<Create>) -> Result<Created> {
        let op = permit.op().clone();
        let indexing = Some(sql::Indexing::of(&op.ty, &op.resource));
        self.group
            .write(indexing, move |tx| block_on(writes::create(tx, &op)))
            .await
    }

    async fn read(&self, permit: &Permit<Read>) -> Result<Option<Stored>> {
        let op = permit.op();
        let found = self.point_reads.one(&sql::read(D, &op.ty, &op.id))?;
        self.group.settled().await?;
        Ok(found)
    }

    async fn vread(&self, permit: &Permit<VRead>) -> Result<Option<Stored>> {
        let op = permit.op();
        let found = self
            .point_reads
            .one(&sql::vread(D, &op.ty, &op.id, op.version))?;
        self.group.settled().await?;
        Ok(found)
    }

    async fn update(&self, permit: &Permit<Update>) -> Result<Updated> {
        let op = permit.op().clone();
        let indexing = Some(sql::Indexing::of(&op.ty, &op.resource));
        self.group
            .write(indexing, move |tx| block_on(writes::update(tx, &op)))
            .await
    }

    async fn delete(&self, permit: &Permit<Delete>) -> Result<Option<Stored>> {
        let op = permit.op().clone();
        self.group
            .write(None, move |tx| block_on(writes::delete(tx, &op)))
            .await
    }

    async fn history(&self, permit: &Permit<History>) -> Result<Page> {
        let op = permit.op();
        let (count, page) = sql::history(D, op);
        let found = self
            .page(Some(&count), &page, op.count, false, |r| {
                r.get::<i64, _>(6).to_string()
            })
            .await?;
        self.group.settled().await?;
        Ok(found)
    }

    async fn search(&self, permit: &Permit<Search>) -> Result<Page> {
        let found = self.search_unsettled(permit.op()).await?;
        self.group.settled().await?;
        Ok(found)
    }

    async fn transaction(&self, t: Transaction) -> Result<Vec<TxOutcome>> {
        let (mut entries, refs, expected) = t.into_parts();
        // One job of the group writer, which commits or rolls back each job as a whole.
        self.group
            .write(None, move |tx| {
                block_on(writes::transaction(tx, &mut entries, &refs, &expected))
            })
            .await
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        self.audit_journal.append(records).await
    }

    async fn search_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRow>> {
        self.audit_journal.settled().await?;
        let rows = query(&sql::audit_search(D, q))
            .fetch_all(&self.audit_reader)
            .await?;
        Ok(rows.iter().map(audit_row).collect())
    }

    async fn scan_audit(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditRow>> {
        self.audit_journal.settled().await?;
        let rows = query(&sql::audit_scan(D, after_seq, limit))
            .fetch_all(&self.audit_reader)
            .await?;
        Ok(rows.iter().map(audit_row).collect())
    }

    /// During a bulk load the writer checkpoints every 10,000 WAL pages itself (~7 % faster
    /// imports than every 1,000; the checkpoint thread pauses, leaving both cores to parsing and
    /// indexing); at its end the WAL is checkpointed and truncated, since readers load WAL pages
    /// into their heap instead of mapping them, and a 40 MB WAL left behind made an export after
    /// an import grow the server's memory by a third more.
    async fn bulk_load(&self, on: bool) -> Result<()> {
        if on {
            self.checkpointer.pause(true);
            return self.group.checkpoint_every(BULK_CHECKPOINT_PAGES).await;
        }
        self.group.checkpoint_every(BACKSTOP_PAGES).await?;
        self.checkpointer.pause(false);
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn reindex(&self) -> Result<u64> {
        let (mut ty, mut id) = (String::new(), String::new());
        let mut done = 0u64;
        loop {
            let rows = query(&sql::current_after(D, &ty, &id, 500))
                .fetch_all(&self.reader)
                .await?;
            let Some(last) = rows.last() else {
                return Ok(done);
            };
            let stored: Vec<Stored> = rows.iter().map(row_to_stored).collect();
            (ty, id) = (last.get(0), last.get(1));
            // One transaction per batch: a reindex interrupted part-way leaves whole resources.
            let mut tx = self.writer.begin().await?;
            reindex_rows(&mut tx, &stored).await?;
            tx.commit().await?;
            done += stored.len() as u64;
        }
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
        // No request is answered without its audit record, so the access log must answer too.
        sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(version), 0) FROM gateway_schema")
            .fetch_one(&self.audit_reader)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AUDIT_GENESIS, AuditRecord, chain};

    fn record(n: u8) -> AuditRecord {
        AuditRecord::new(
            format!("event-{n}"),
            1_700_000_000_000 + i64::from(n),
            Some("Patient/p1".into()),
            "issuer|user".into(),
            "0".into(),
            bytes::Bytes::from(format!(
                "{{\"resourceType\":\"AuditEvent\",\"id\":\"event-{n}\"}}"
            )),
        )
    }

    /// A data directory written by a binary that kept the access log in `gateway.db` opens with
    /// the log moved to `audit.db`: same records, chain intact, appending continues the chain.
    #[tokio::test]
    async fn an_access_log_in_gateway_db_moves_to_audit_db() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (writer, _) = pools(&dir.path().join("gateway.db"), 1).await.unwrap();
            // The layout of schema version 3 as older binaries wrote it.
            let old = [MIGRATIONS[0], AUDIT_MIGRATIONS[0], MIGRATIONS[2]];
            migrate(&writer, &old).await.unwrap();
            let records: Vec<_> = (1..=3).map(record).collect();
            let links = chain(AUDIT_GENESIS.to_owned(), &records);
            for (r, (prev, hash)) in records.iter().zip(links) {
                sqlx::query("INSERT INTO audit_log (id, recorded, patient, agent, outcome, prev_hash, hash, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
                    .bind(&r.id).bind(r.recorded_ms).bind(&r.patient).bind(&r.agent).bind(&r.outcome)
                    .bind(prev).bind(hash).bind(r.packed.to_vec())
                    .execute(&writer).await.unwrap();
            }
            writer.close().await;
        }
        let store = SqliteStore::open(dir.path()).await.unwrap();
        store.ping().await.unwrap();
        let v = crate::audit::verify(&store).await.unwrap();
        assert_eq!((v.records, v.broken.clone()), (3, vec![]));
        let fourth = crate::audit::build(
            &crate::policy::Principal::Anonymous,
            &crate::audit::Access {
                interaction: "read".into(),
                status: 401,
                ..Default::default()
            },
        );
        store
            .append_audit(std::slice::from_ref(&fourth))
            .await
            .unwrap();
        let v = crate::audit::verify(&store).await.unwrap();
        assert_eq!((v.records, v.broken), (4, vec![]));
        // The old records were stored as plain JSON and read back as it; the new one as its
        // facts, read back as the AuditEvent they render.
        let rows = store.scan_audit(0, 10).await.unwrap();
        for (row, n) in rows.iter().zip(1..4) {
            assert_eq!(row.record.json(), record(n).packed);
            assert_eq!(row.record.packed.first(), Some(&b'{'));
        }
        assert_eq!(rows[3].record.packed, fourth.packed);
        let event: serde_json::Value = serde_json::from_slice(&rows[3].record.json()).unwrap();
        assert_eq!(event["id"], serde_json::json!(fourth.id));
        assert_eq!(event["outcome"], "4");
        let left: Option<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name = 'audit_log'")
                .fetch_optional(&store.reader)
                .await
                .unwrap();
        assert_eq!(left, None, "gateway.db no longer holds the log");
        drop(store);
        // Opening again is a no-op (nothing left to move).
        let store = SqliteStore::open(dir.path()).await.unwrap();
        assert_eq!(crate::audit::verify(&store).await.unwrap().records, 4);
    }

    /// A batch that fails (here: an id used twice) leaves nothing behind, and the next batch
    /// chains to the last record that was committed.
    #[tokio::test]
    async fn a_failed_audit_batch_is_undone_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        store.append_audit(&[record(1)]).await.unwrap();
        assert!(store.append_audit(&[record(2), record(2)]).await.is_err());
        store.append_audit(&[record(3)]).await.unwrap();
        let ids: Vec<String> = store
            .scan_audit(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.record.id)
            .collect();
        assert_eq!(ids, ["event-1", "event-3"]);
        let v = crate::audit::verify(&store).await.unwrap();
        assert_eq!((v.records, v.broken), (2, vec![]));
    }

    /// The steps of SQLite's query plan for `statement`.
    async fn plan(store: &SqliteStore, mut statement: Sql) -> Vec<String> {
        statement.text.insert_str(0, "EXPLAIN QUERY PLAN ");
        query(&statement)
            .fetch_all(&store.reader)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(3))
            .collect()
    }

    /// A range condition (a date, a number, a quantity) is probed per candidate resource on the
    /// owner index, one seek each: with a range index SQLite scanned the parameter's range
    /// entries from the start for every candidate, and a date search over 68,000 Observations
    /// did not answer in 20 s. Asserted on the plan, for each prefix's form of condition.
    #[tokio::test]
    async fn range_conditions_seek_each_candidate_on_the_owner_index() {
        use crate::fhir::search::{Clause, ClauseKind, Criteria, Pred, Prefix};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        for prefix in [Prefix::Eq, Prefix::Lt, Prefix::Gt, Prefix::Le, Prefix::Ap] {
            let op = Search {
                ty: "Observation".into(),
                criteria: Criteria {
                    clauses: vec![Clause {
                        param: "date".into(),
                        how: ClauseKind::Any(vec![Pred::Range(prefix, 1.5e12, 1.6e12)]),
                    }],
                    ..Default::default()
                },
                count: 10,
                total: true,
                ..Default::default()
            };
            let (count, page) = sql::search(D, &op).unwrap();
            for statement in [count, page] {
                let steps = plan(&store, statement).await;
                assert!(
                    steps
                        .iter()
                        .any(|s| s.contains("search_index_owner (rid=?")),
                    "{prefix:?}: {steps:?}"
                );
                assert!(
                    !steps.iter().any(|s| s.contains("search_index_range")),
                    "{prefix:?}: {steps:?}"
                );
            }
        }
    }

    /// A search that starts from the keys an index range names (a patient's, a code's) looks
    /// each up in `resource_current_type_rid` alone, for its page, its count and a sorted page:
    /// without statistics SQLite otherwise scanned every resource of the type by primary key for
    /// the sorted one (93 ms for one patient's 34 Observations among 748,000). Plans do not
    /// depend on the data here (no statistics), so an empty store shows them.
    #[tokio::test]
    async fn driven_searches_read_resource_keys_from_one_index() {
        use crate::fhir::search::{Clause, ClauseKind, Criteria, Pred, SortBy, SortKey};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let mut op = Search {
            ty: "Observation".into(),
            criteria: Criteria {
                clauses: vec![Clause {
                    param: "patient".into(),
                    how: ClauseKind::Any(vec![Pred::Reference(vec!["Patient/p1".into()])]),
                }],
                ..Default::default()
            },
            count: 20,
            total: true,
            ..Default::default()
        };
        let (count, page) = sql::search(D, &op).unwrap();
        op.sort = vec![SortKey {
            by: SortBy::Param {
                code: "date".into(),
                ordered: true,
            },
            descending: true,
        }];
        let sorted = sql::sorted_page(D, &op, 21);
        for (what, statement) in [("count", count), ("page", page), ("sorted", sorted)] {
            let steps = plan(&store, statement).await;
            assert!(
                steps.iter().any(|s| s.contains(
                    "SEARCH c USING COVERING INDEX resource_current_type_rid (type=? AND rid=?"
                )),
                "{what}: {steps:?}"
            );
            assert!(
                !steps.iter().any(|s| s.contains("PRIMARY KEY (type=?)")),
                "{what}: {steps:?}"
            );
        }
    }

    /// The migration that drops `token_index` keeps the identifiers the search index lacks (a
    /// type without an `identifier` search parameter) and adds none that it holds already.
    #[tokio::test]
    async fn identifier_tokens_move_into_the_search_index() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _) = pools(&dir.path().join("gateway.db"), 1).await.unwrap();
        let drop_tokens = MIGRATIONS
            .iter()
            .position(|m| *m == super::super::sql::DROP_TOKEN_INDEX)
            .unwrap();
        migrate(&writer, &MIGRATIONS[..drop_tokens]).await.unwrap();
        for q in [
            "INSERT INTO token_index (type, id, param, system, value) VALUES ('Patient', 'p1', 'identifier', 'bsn', '999911120'), ('ObservationDefinition', 'od1', 'identifier', 's', 'v1')",
            "INSERT INTO search_index (type, id, param, system, value, raw) VALUES ('Patient', 'p1', 'identifier', 'bsn', '999911120', '')",
        ] {
            sqlx::query(q).execute(&writer).await.unwrap();
        }
        migrate(&writer, &MIGRATIONS[..=drop_tokens]).await.unwrap();
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT type, id, system, value FROM search_index WHERE param = 'identifier' ORDER BY type",
        )
        .fetch_all(&writer)
        .await
        .unwrap();
        let row = |t: &str, i: &str, s: &str, v: &str| {
            (t.to_owned(), i.to_owned(), s.to_owned(), v.to_owned())
        };
        assert_eq!(
            rows,
            vec![
                row("ObservationDefinition", "od1", "s", "v1"),
                row("Patient", "p1", "bsn", "999911120")
            ]
        );
        let left: Option<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name = 'token_index'")
                .fetch_optional(&writer)
                .await
                .unwrap();
        assert_eq!(left, None);
    }

    /// A database written before resources had a key (`rid`) opens with one for each, and its
    /// index rows, rebuilt under those keys at the start, point at the right resources.
    #[tokio::test]
    async fn index_rows_move_to_resource_keys() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (writer, _) = pools(&dir.path().join("gateway.db"), 1).await.unwrap();
            let before = MIGRATIONS.iter().position(|m| *m == SQLITE_RID).unwrap();
            migrate(&writer, &MIGRATIONS[..before]).await.unwrap();
            for (n, id) in ["a", "b"].into_iter().enumerate() {
                let body = format!(
                    r#"{{"resourceType":"Patient","id":"{id}","identifier":[{{"system":"bsn","value":"v{id}"}}]}}"#
                );
                sqlx::query("INSERT INTO resource_version (type, id, version, last_updated, method, body) VALUES ('Patient', ?, 1, 0, 'POST', ?)")
                    .bind(id)
                    .bind(body.into_bytes())
                    .execute(&writer)
                    .await
                    .unwrap();
                sqlx::query("INSERT INTO resource_current (type, id, version, deleted, seq) VALUES ('Patient', ?, 1, 0, ?)")
                    .bind(id)
                    .bind(n as i64 + 1)
                    .execute(&writer)
                    .await
                    .unwrap();
                sqlx::query("INSERT INTO search_index (type, id, param, system, value, raw) VALUES ('Patient', ?, 'identifier', 'bsn', ?, '')")
                    .bind(id)
                    .bind(format!("v{id}"))
                    .execute(&writer)
                    .await
                    .unwrap();
            }
            writer.close().await;
        }
        let store = SqliteStore::open(dir.path()).await.unwrap();
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT c.id, s.value, k.patient FROM resource_current c \
             JOIN search_index s ON s.rid = c.rid AND s.param = 'identifier' \
             JOIN compartment k ON k.rid = c.rid ORDER BY c.id",
        )
        .fetch_all(&store.reader)
        .await
        .unwrap();
        let row = |i: &str| (i.to_owned(), format!("v{i}"), i.to_owned());
        assert_eq!(rows, vec![row("a"), row("b")]);
        let keys: Vec<i64> = sqlx::query_scalar("SELECT rid FROM resource_current ORDER BY id")
            .fetch_all(&store.reader)
            .await
            .unwrap();
        assert_eq!(keys, vec![1, 2]);
    }
}
