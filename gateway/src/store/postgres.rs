//! The PostgreSQL store, for several gateway replicas on one database.
//!
//! Correctness across replicas rests on the database alone, never on process memory:
//! - every write is one transaction;
//! - a write to a known resource takes a transaction-scoped advisory lock on (type, id), and reads
//!   the current version `FOR UPDATE`, so concurrent `If-Match` updates from any replica see each
//!   other: exactly one wins, the rest get 412;
//! - conditional writes (`If-None-Exist`, conditional update/delete) take advisory locks on the
//!   identifier values their criteria require (or on their resource type when the criteria name
//!   none) before they search, so "search, then create if nothing matched" is atomic across
//!   replicas (see `postgres_locks`);
//! - unique constraints on (type, id, version) and (type, id) are the last line: a race that gets
//!   past the locks fails with 409 instead of writing twice.
//!
//! Migrations run at start under an advisory lock (replicas starting together migrate once) and a
//! database at a newer schema version than this binary knows is refused.

use super::postgres_held::Held;
use super::postgres_locks::{self, Lock, Write as LockedWrite};
use super::sql::{self, Dialect, Sql};
use super::statistics;
use super::writes::{self, WriteTx};
use super::{
    AUDIT_GENESIS, AuditQuery, AuditRecord, AuditRow, Created, Page, Store, Stored, Updated,
    WriteMethod, chain, page_of,
};
use crate::config;
use crate::error::{Error, Result};
use crate::fhir::operation::{Create, Delete, History, Read, Search, Update, VRead};
use crate::fhir::search::Criteria;
use crate::policy::Permit;
use serde_json::Value;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use std::str::FromStr;
use std::time::Duration;

const D: Dialect = Dialect::Postgres;

/// What one statement's fetch returns (see `PostgresStore::on_connection`).
type Fetch<'c, T> = futures::future::BoxFuture<'c, std::result::Result<T, sqlx::Error>>;

/// Key of the advisory lock that serializes migrations across replicas.
const MIGRATION_LOCK: i64 = 0x4648_4952_0001;
/// Key of the advisory lock that serializes audit appends (one hash chain).
const AUDIT_LOCK: i64 = 0x4648_4952_0002;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE resource_version (
    seq          BIGSERIAL PRIMARY KEY,
    type         TEXT COLLATE "C" NOT NULL,
    id           TEXT COLLATE "C" NOT NULL,
    version      BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    method       TEXT   NOT NULL,
    body         BYTEA,
    UNIQUE (type, id, version)
);
CREATE INDEX resource_version_type_seq ON resource_version (type, seq);
CREATE INDEX resource_version_last_updated ON resource_version (last_updated);
CREATE TABLE resource_current (
    type    TEXT COLLATE "C" NOT NULL,
    id      TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL,
    deleted BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (type, id)
);
CREATE TABLE token_index (
    type   TEXT COLLATE "C" NOT NULL,
    id     TEXT COLLATE "C" NOT NULL,
    param  TEXT NOT NULL,
    system TEXT NOT NULL,
    value  TEXT NOT NULL
);
CREATE INDEX token_index_lookup ON token_index (type, param, value, system);
CREATE INDEX token_index_owner ON token_index (type, id);
"#,
    r#"
CREATE TABLE audit_log (
    seq       BIGSERIAL PRIMARY KEY,
    id        TEXT   NOT NULL UNIQUE,
    recorded  BIGINT NOT NULL,
    patient   TEXT COLLATE "C",
    agent     TEXT   NOT NULL,
    outcome   TEXT   NOT NULL,
    prev_hash TEXT   NOT NULL,
    hash      TEXT   NOT NULL,
    body      BYTEA  NOT NULL
);
CREATE INDEX audit_log_patient ON audit_log (patient, seq);
CREATE INDEX audit_log_recorded ON audit_log (recorded);
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
"#,
    r#"
CREATE TABLE compartment (
    type    TEXT COLLATE "C" NOT NULL,
    id      TEXT COLLATE "C" NOT NULL,
    patient TEXT COLLATE "C" NOT NULL
);
CREATE INDEX compartment_patient ON compartment (patient, type, id);
CREATE INDEX compartment_owner ON compartment (type, id);
"#,
    // Search parameters (fhir/search_index.rs describes the row shape).
    r#"
CREATE TABLE search_index (
    type   TEXT COLLATE "C" NOT NULL,
    id     TEXT COLLATE "C" NOT NULL,
    param  TEXT COLLATE "C" NOT NULL,
    system TEXT COLLATE "C" NOT NULL,
    value  TEXT COLLATE "C" NOT NULL,
    raw    TEXT NOT NULL,
    low    DOUBLE PRECISION,
    high   DOUBLE PRECISION
);
CREATE INDEX search_index_value ON search_index (type, param, value, system);
CREATE INDEX search_index_range ON search_index (type, param, low);
CREATE INDEX search_index_owner ON search_index (type, id, param);
"#,
    // The order of a sorted search's matches, kept for its pages (sql::snapshot_insert).
    r#"
CREATE TABLE search_snapshot (
    search_id TEXT COLLATE "C" NOT NULL,
    pos       BIGINT NOT NULL,
    type      TEXT COLLATE "C" NOT NULL,
    id        TEXT COLLATE "C" NOT NULL,
    created   BIGINT NOT NULL,
    PRIMARY KEY (search_id, pos)
);
CREATE INDEX search_snapshot_created ON search_snapshot (created);
"#,
    // Full text (`_text`, `_content`), 'simple' configuration: the words are folded already.
    r#"
CREATE TABLE fulltext (
    type      TEXT COLLATE "C" NOT NULL,
    id        TEXT COLLATE "C" NOT NULL,
    narrative TSVECTOR NOT NULL,
    content   TSVECTOR NOT NULL,
    PRIMARY KEY (type, id)
);
CREATE INDEX fulltext_narrative ON fulltext USING GIN (narrative);
CREATE INDEX fulltext_content ON fulltext USING GIN (content);
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
    // A key per resource for the index tables in place of its random id (see the SQLite store's
    // migration of the same name).
    r#"
ALTER TABLE resource_current ADD COLUMN rid BIGINT;
UPDATE resource_current SET rid = seq;
CREATE UNIQUE INDEX resource_current_rid ON resource_current (rid);
CREATE INDEX resource_current_type_rid ON resource_current (type, rid, deleted, seq);
DROP TABLE search_index;
CREATE TABLE search_index (
    rid    BIGINT NOT NULL,
    type   TEXT COLLATE "C" NOT NULL,
    param  TEXT COLLATE "C" NOT NULL,
    system TEXT COLLATE "C" NOT NULL,
    value  TEXT COLLATE "C" NOT NULL,
    raw    TEXT NOT NULL,
    low    DOUBLE PRECISION,
    high   DOUBLE PRECISION
);
CREATE INDEX search_index_value ON search_index (type, param, value, rid, system);
CREATE INDEX search_index_range ON search_index (type, param, low) WHERE low IS NOT NULL;
CREATE INDEX search_index_owner ON search_index (rid, param);
DROP TABLE compartment;
CREATE TABLE compartment (
    rid     BIGINT NOT NULL,
    type    TEXT COLLATE "C" NOT NULL,
    patient TEXT COLLATE "C" NOT NULL
);
CREATE INDEX compartment_patient ON compartment (patient, type, rid);
CREATE INDEX compartment_owner ON compartment (rid);
"#,
];

pub struct PostgresStore {
    /// Connections that plan every statement for its values (`plan_cache_mode =
    /// force_custom_plan`): searches whose best plan depends on them, and every write.
    pool: PgPool,
    /// Connections that plan each statement once and reuse the plan (`force_generic_plan`): the
    /// statements marked [`Sql::generic`] and the audit append. Planning a point read took
    /// 0.2 ms against its 0.04 ms run, one patient's lab page 1.0 ms against 0.46 ms; on 2 cores
    /// a third of PostgreSQL's CPU under a search load went to planning. Held by the store, not
    /// pooled by sqlx (see `postgres_held`).
    generic: Held,
    statistics: std::sync::Arc<statistics::Schedule>,
}

/// The sizes of the two pools (`planned`, `generic`): `pool_size` split between them, at least
/// one each.
fn pool_sizes(pool_size: u32) -> (u32, u32) {
    let generic = (pool_size / 2).max(1);
    ((pool_size.saturating_sub(generic)).max(1), generic)
}

impl PostgresStore {
    /// Connects, creates the schema if needed and brings it up to date.
    pub async fn open(url: &str, cfg: &config::Postgres) -> Result<PostgresStore> {
        let options = |plan_cache_mode: &str| -> Result<PgConnectOptions> {
            Ok(PgConnectOptions::from_str(url)
                .map_err(|e| Error::store(format!("store URL: {e}"), false))?
                .application_name("fhir-gateway")
                .options([
                    ("search_path", cfg.schema.clone()),
                    (
                        "statement_timeout",
                        format!("{}ms", cfg.statement_timeout_ms),
                    ),
                    // A crashed client never holds locks for long.
                    ("idle_in_transaction_session_timeout", "60s".to_owned()),
                    ("plan_cache_mode", plan_cache_mode.to_owned()),
                ]))
        };
        let (planned_size, generic_size) = pool_sizes(cfg.pool_size);
        let pool_of = |size: u32| {
            PgPoolOptions::new()
                .max_connections(size)
                .acquire_timeout(Duration::from_millis(cfg.connect_timeout_ms))
                // A connection that died with a restarted server is noticed before it is handed
                // out.
                .test_before_acquire(true)
        };
        // Plan each search for its own values: after five runs PostgreSQL may switch a prepared
        // statement to a generic plan, and for `value IN ($4, $5)` that plan scanned every
        // Observation (20 s, against 10 ms planned for the values).
        let pool = pool_of(planned_size)
            .connect_with(options("force_custom_plan")?)
            .await?;
        // Connections are opened when first needed.
        let generic = Held::new(
            options("force_generic_plan")?,
            generic_size,
            Duration::from_millis(cfg.connect_timeout_ms),
        );
        migrate(&pool, &cfg.schema).await?;
        let store = PostgresStore {
            pool,
            generic,
            statistics: Default::default(),
        };
        // Data written before the search index existed is indexed once (see the SQLite store).
        let missing: i64 = scalar(&sql::index_missing(D))
            .fetch_one(&store.pool)
            .await?;
        if missing == 1 {
            tracing::warn!("the search index is empty but resources exist: reindexing");
            let n = store.reindex().await?;
            tracing::warn!(resources = n, "reindexed");
        }
        Ok(store)
    }
}

async fn migrate(pool: &PgPool, schema: &str) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    // The schema name is checked by the config schema (^[a-z_][a-z0-9_]{0,62}$), so it can be
    // spliced as an identifier.
    sqlx::query(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS gateway_schema (version BIGINT NOT NULL)")
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
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        sqlx::raw_sql(*migration).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO gateway_schema (version) VALUES ($1)")
            .bind(i as i64 + 1)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

sql::relational_common!(
    Postgres,
    PgRow,
    PgArguments,
    sqlx::PgConnection,
    sql::Dialect::Postgres
);

/// Writes one version (a deletion when `resource` is `None`), makes it current and keeps
/// the indexes in step; inside the caller's transaction.
async fn write_version(
    conn: &mut sqlx::PgConnection,
    ty: &str,
    id: &str,
    version: u64,
    method: crate::store::WriteMethod,
    resource: Option<&serde_json::Value>,
    prepared: Option<sql::Indexing>,
) -> crate::error::Result<crate::store::Stored> {
    use crate::store::sql;
    let stored = crate::store::new_version(ty, id, version, method, resource);
    let seq: i64 = scalar(&sql::insert_version(D, &stored))
        .fetch_one(&mut *conn)
        .await?;
    let rid: i64 = scalar(&sql::upsert_current(D, &stored, seq))
        .fetch_one(&mut *conn)
        .await?;
    let indexing = match (resource, prepared) {
        (Some(_), Some(ix)) => Some(ix),
        (Some(r), None) => Some(sql::Indexing::of(ty, r)),
        (None, _) => None,
    };
    for statement in sql::after_upsert(D, &stored, rid, indexing.as_ref()) {
        query(&statement).execute(&mut *conn).await?;
    }
    Ok(stored)
}

/// A write transaction, and the index rows of its next write when they were computed
/// beforehand (`WriteTx::prepare`).
struct Tx(Transaction<'static, Postgres>, Option<sql::Indexing>);

impl Tx {
    /// Advisory locks held until commit or rollback, taken in the order given, in one round trip
    /// (see `postgres_locks`).
    async fn take(&mut self, locks: &[Lock]) -> Result<()> {
        if locks.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = locks.iter().map(|l| l.key.as_str()).collect();
        let shared: Vec<bool> = locks.iter().map(|l| l.shared).collect();
        // `unnest` yields the rows in the arrays' order, and each row's lock is taken as it is
        // read.
        sqlx::query(
            "SELECT count(CASE WHEN s THEN pg_advisory_xact_lock_shared(hashtextextended(k, 0)) \
             ELSE pg_advisory_xact_lock(hashtextextended(k, 0)) END) \
             FROM unnest($1::text[], $2::bool[]) AS l(k, s)",
        )
        .bind(keys)
        .bind(shared)
        .execute(&mut *self.0)
        .await?;
        Ok(())
    }
}

/// Whether `c` matches by `_id` and `identifier` alone (see `PostgresStore::begin_write`).
fn by_id_or_identifier(c: &Criteria) -> bool {
    let Criteria {
        ids: _,
        identifiers: _,
        compartment,
        compartment_linked,
        clauses,
        within,
        fulltext,
        types,
    } = c;
    compartment.is_none()
        && compartment_linked.is_empty()
        && clauses.is_empty()
        && within.is_none()
        && fulltext.is_empty()
        && types.is_empty()
}

/// A transaction's entries as the locks see them.
fn locked_writes(entries: &[writes::TxEntry]) -> Vec<LockedWrite<'_>> {
    entries
        .iter()
        .filter_map(|e| match &e.op {
            writes::TxOp::Create(op) => op
                .if_none_exist
                .as_ref()
                .map(|c| LockedWrite::Create(&op.ty, c, &op.resource, e.indexing.as_ref())),
            writes::TxOp::Update(op) => Some(LockedWrite::Update(
                &op.ty,
                &op.target,
                &op.resource,
                e.indexing.as_ref(),
            )),
            writes::TxOp::Delete(op) => Some(LockedWrite::Delete(&op.ty, &op.target)),
        })
        .collect()
}

#[async_trait::async_trait]
impl WriteTx for Tx {
    async fn current(&mut self, ty: &str, id: &str) -> Result<Option<(u64, bool)>> {
        let mut q = sql::current_version(D, ty, id);
        q.push(" FOR UPDATE");
        let row = query(&q).fetch_optional(&mut *self.0).await?;
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
        let prepared = self.1.take();
        write_version(&mut self.0, ty, id, version, method, resource, prepared).await
    }

    fn prepare(&mut self, indexing: Option<sql::Indexing>) {
        self.1 = indexing;
    }
}

impl PostgresStore {
    /// Begins a write and takes the advisory locks of `writes` (see `postgres_locks`), before it
    /// reads anything.
    ///
    /// A write whose searches (`writes`' conditional criteria, conditional references `refs`)
    /// are all by id or identifier plans each of its statements once per connection and reuses
    /// the plan: those searches and the inserts have one good plan whatever the values, and
    /// planning them for their values cost more than running them (an HL7 v2 message's
    /// conditional identifier search: 0.32 ms to plan, 0.02 ms to run). Any other search keeps
    /// the connections' plan per set of values.
    async fn begin_write(
        &self,
        writes: &[LockedWrite<'_>],
        refs: &[crate::store::ConditionalRef],
    ) -> Result<Tx> {
        let mut searched = writes
            .iter()
            .filter_map(LockedWrite::criteria)
            .chain(refs.iter().map(|(_, _, c)| c));
        let tx = if searched.all(by_id_or_identifier) {
            self.pool
                .begin_with("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
                .await?
        } else {
            self.pool.begin().await?
        };
        let mut tx = Tx(tx, None);
        tx.take(&postgres_locks::locks(writes)).await?;
        Ok(tx)
    }

    /// Runs `fetch` for `q` on the connections that plan it once or for its values (see
    /// [`Sql::generic`]).
    async fn on_connection<T>(
        &self,
        q: &Sql,
        fetch: for<'c> fn(&'c Sql, &'c mut sqlx::PgConnection) -> Fetch<'c, T>,
    ) -> Result<T> {
        if !q.generic {
            let mut c = self.pool.acquire().await?;
            return Ok(fetch(q, &mut c).await?);
        }
        self.generic
            .run(|mut c| {
                Box::pin(async move {
                    let r = fetch(q, &mut c).await;
                    (c, r)
                })
            })
            .await
    }

    async fn fetch_all(&self, q: &Sql) -> Result<Vec<PgRow>> {
        self.on_connection(q, |q, c| Box::pin(query(q).fetch_all(c)))
            .await
    }

    async fn fetch_optional(&self, q: &Sql) -> Result<Option<PgRow>> {
        self.on_connection(q, |q, c| Box::pin(query(q).fetch_optional(c)))
            .await
    }

    async fn fetch_scalar(&self, q: &Sql) -> Result<i64> {
        self.on_connection(q, |q, c| Box::pin(scalar(q).fetch_one(c)))
            .await
    }

    async fn page(
        &self,
        count: Option<&Sql>,
        page: &Sql,
        size: u32,
        first: bool,
        next_of: fn(&PgRow) -> String,
    ) -> Result<Page> {
        // `_count=0` asks for the total only.
        let rows = if size == 0 {
            Vec::new()
        } else {
            self.fetch_all(page).await?
        };
        // `_total=none`: no count query at all; a first page that holds every match counts them.
        let total: Option<i64> = match (count, super::whole_result(first, size, rows.len())) {
            (None, _) => None,
            (Some(_), Some(n)) => Some(n),
            (Some(c), None) => Some(self.fetch_scalar(c).await?),
        };
        Ok(page_of(total, &rows, size, row_to_stored, next_of))
    }
}

impl PostgresStore {
    /// Counts writes and, when due, refreshes the planner's statistics and the visibility map in
    /// the background (see `store::statistics`). VACUUM, not only ANALYZE: index-only scans (the
    /// `_total` counts, the semi-joins of searches) read the heap for every row on a page the
    /// visibility map does not mark all-visible, and only VACUUM marks them. Without it, on a
    /// database whose autovacuum is off or has not come by yet, `_total=accurate` over 112,000
    /// DiagnosticReports of a 1M-resource schema took 231 ms, after it 45 ms. A plain VACUUM
    /// blocks neither reads nor writes, and only visits pages changed since the last one.
    fn wrote(&self, n: u64) {
        if !self.statistics.wrote(n) {
            return;
        }
        let (pool, schedule) = (self.pool.clone(), self.statistics.clone());
        tokio::spawn(async move {
            let r = sqlx::raw_sql(
                "VACUUM (ANALYZE) resource_current, search_index, compartment, fulltext, resource_version",
            )
            .execute(&pool)
            .await;
            if let Err(e) = &r {
                tracing::warn!(error = %e, "refreshing the planner's statistics failed");
            }
            schedule.done(r.is_ok());
        });
    }
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn create(&self, permit: &Permit<Create>) -> Result<Created> {
        let op = permit.op();
        let mut tx = match &op.if_none_exist {
            Some(c) => {
                // Indexed once, for the locks (its identifiers) and for the write.
                let indexing = sql::Indexing::of(&op.ty, &op.resource);
                let write = LockedWrite::Create(&op.ty, c, &op.resource, Some(&indexing));
                let mut tx = self.begin_write(&[write], &[]).await?;
                tx.prepare(Some(indexing));
                tx
            }
            None => self.begin_write(&[], &[]).await?,
        };
        let created = writes::create(&mut tx, op).await?;
        tx.0.commit().await?;
        self.wrote(1);
        Ok(created)
    }

    async fn read(&self, permit: &Permit<Read>) -> Result<Option<Stored>> {
        let op = permit.op();
        let q = sql::read(D, &op.ty, &op.id);
        let row = self.fetch_optional(&q).await?;
        Ok(row.as_ref().map(row_to_stored))
    }

    async fn vread(&self, permit: &Permit<VRead>) -> Result<Option<Stored>> {
        let op = permit.op();
        let q = sql::vread(D, &op.ty, &op.id, op.version);
        let row = self.fetch_optional(&q).await?;
        Ok(row.as_ref().map(row_to_stored))
    }

    async fn update(&self, permit: &Permit<Update>) -> Result<Updated> {
        let op = permit.op();
        // Indexed once, for the locks (its identifiers) and for the write.
        let indexing = sql::Indexing::of(&op.ty, &op.resource);
        let write = LockedWrite::Update(&op.ty, &op.target, &op.resource, Some(&indexing));
        let mut tx = self.begin_write(&[write], &[]).await?;
        tx.prepare(Some(indexing));
        let updated = writes::update(&mut tx, op).await?;
        tx.0.commit().await?;
        self.wrote(1);
        Ok(updated)
    }

    async fn delete(&self, permit: &Permit<Delete>) -> Result<Option<Stored>> {
        let op = permit.op();
        let write = LockedWrite::Delete(&op.ty, &op.target);
        let mut tx = self.begin_write(&[write], &[]).await?;
        let deleted = writes::delete(&mut tx, op).await?;
        tx.0.commit().await?;
        self.wrote(1);
        Ok(deleted)
    }

    async fn transaction(
        &self,
        t: crate::store::Transaction,
    ) -> Result<Vec<crate::store::TxOutcome>> {
        let (mut entries, refs, expected) = t.into_parts();
        let n = entries.len() as u64;
        let mut tx = self.begin_write(&locked_writes(&entries), &refs).await?;
        let outcomes = writes::transaction(&mut tx, &mut entries, &refs, &expected).await?;
        tx.0.commit().await?;
        self.wrote(n);
        Ok(outcomes)
    }

    async fn history(&self, permit: &Permit<History>) -> Result<Page> {
        let op = permit.op();
        let (count, page) = sql::history(D, op);
        self.page(Some(&count), &page, op.count, false, |r| {
            r.get::<i64, _>(6).to_string()
        })
        .await
    }

    async fn search(&self, permit: &Permit<Search>) -> Result<Page> {
        let op = permit.op();
        let (count, page) = sql::search(D, op)?;
        let count = op.total.then_some(&count);
        let next_of: fn(&PgRow) -> String =
            |r: &_| r.get::<i64, _>(sql::PAGE_CURSOR_COLUMN).to_string();
        if sql::counts_on_page(D, op) {
            let rows = self.fetch_all(&page).await?;
            let total = rows
                .first()
                .map_or(0, |r| r.get::<i64, _>(sql::PAGE_TOTAL_COLUMN));
            return Ok(page_of(
                Some(total),
                &rows,
                op.count,
                row_to_stored,
                next_of,
            ));
        }
        if op.sort.is_empty() || op.count == 0 {
            let first = op.cursor.is_none();
            return self.page(count, &page, op.count, first, next_of).await;
        }
        let total = match count {
            Some(c) => Some(scalar(c).fetch_one(&self.pool).await?),
            None => None,
        };
        sorted_search(&self.pool, &self.pool, op, total).await
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<()> {
        self.generic
            .run(|mut c| {
                Box::pin(async move {
                    let r = append_audit(&mut c, records).await;
                    (c, r)
                })
            })
            .await
    }

    async fn search_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRow>> {
        let rows = query(&sql::audit_search(D, q))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(audit_row).collect())
    }

    async fn scan_audit(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditRow>> {
        let rows = query(&sql::audit_scan(D, after_seq, limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(audit_row).collect())
    }

    async fn reindex(&self) -> Result<u64> {
        let (mut ty, mut id) = (String::new(), String::new());
        let mut done = 0u64;
        loop {
            let rows = query(&sql::current_after(D, &ty, &id, 500))
                .fetch_all(&self.pool)
                .await?;
            let Some(last) = rows.last() else {
                return Ok(done);
            };
            let stored: Vec<Stored> = rows.iter().map(row_to_stored).collect();
            (ty, id) = (last.get(0), last.get(1));
            // One transaction per batch: a reindex interrupted part-way leaves whole resources.
            let mut tx = self.pool.begin().await?;
            reindex_rows(&mut tx, &stored).await?;
            tx.commit().await?;
            done += stored.len() as u64;
            self.wrote(stored.len() as u64);
        }
    }

    async fn ping(&self) -> Result<()> {
        let version: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM gateway_schema")
                .fetch_one(&self.pool)
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

/// Appends `records` to the hash chain, in one transaction. Every statement here is the same
/// whatever is appended: planned once.
async fn append_audit(
    conn: &mut sqlx::PgConnection,
    records: &[AuditRecord],
) -> std::result::Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    // One chain across every replica: appends are serialized by the database.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(AUDIT_LOCK)
        .execute(&mut *tx)
        .await?;
    let last: String = sqlx::query_scalar("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or_else(|| AUDIT_GENESIS.to_owned());
    let links = chain(last, records);
    let col = |f: fn(&AuditRecord) -> String| records.iter().map(f).collect::<Vec<String>>();
    // One statement per batch; WITH ORDINALITY keeps the chain order in seq.
    sqlx::query(
        "INSERT INTO audit_log (id, recorded, patient, agent, outcome, prev_hash, hash, body) \
         SELECT id, recorded, patient, agent, outcome, prev_hash, hash, body FROM UNNEST( \
           $1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bytea[]) \
         WITH ORDINALITY AS t(id, recorded, patient, agent, outcome, prev_hash, hash, body, n) ORDER BY n",
    )
    .bind(col(|r| r.id.clone()))
    .bind(records.iter().map(|r| r.recorded_ms).collect::<Vec<i64>>())
    .bind(records.iter().map(|r| r.patient.clone()).collect::<Vec<Option<String>>>())
    .bind(col(|r| r.agent.clone()))
    .bind(col(|r| r.outcome.clone()))
    .bind(links.iter().map(|(p, _)| p.clone()).collect::<Vec<String>>())
    .bind(links.iter().map(|(_, h)| h.clone()).collect::<Vec<String>>())
    .bind(records.iter().map(|r| r.packed.to_vec()).collect::<Vec<Vec<u8>>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::search::Token;

    /// Only searches by id or identifier, whose plan does not depend on the values, are planned
    /// once; anything else in the criteria keeps the plan made for the values.
    #[test]
    fn writes_searching_by_id_or_identifier_plan_once() {
        let by_identifier = Criteria {
            identifiers: vec![vec![Token {
                system: Some("http://hospital/pid".into()),
                value: Some("L1".into()),
            }]],
            ids: vec![vec!["a".into()]],
            ..Default::default()
        };
        assert!(by_id_or_identifier(&by_identifier));
        assert!(by_id_or_identifier(&Criteria::default()));
        let in_compartment = Criteria {
            compartment: Some("Patient/1".into()),
            ..by_identifier.clone()
        };
        assert!(!by_id_or_identifier(&in_compartment));
        let with_text = Criteria {
            fulltext: vec![crate::fhir::search::FullText {
                content: true,
                any_of: vec![vec!["x".into()]],
            }],
            ..by_identifier
        };
        assert!(!by_id_or_identifier(&with_text));
    }
}
