//! The SQLite statements every request runs, executed on rusqlite connections without sqlx's
//! per-connection worker thread.
//!
//! Why: sqlx's SQLite driver sends each statement to a thread of its own and each row back through
//! a channel; on a point read that hand-off (futex wake-ups and context switches) cost more CPU
//! than SQLite itself. Two statements run on every request, so they go direct:
//!
//! - **point reads** (read, vread): a primary-key lookup answered from the page cache in
//!   microseconds, run on the calling task's thread (inline, like a mutex held briefly) on one of a
//!   small set of read-only connections;
//! - **the audit append**: one transaction per batch on the access log's own connection, run on
//!   tokio's blocking pool because its commit waits for fsync.
//!
//! Everything else (searches, history, writes, migrations) stays on sqlx.

use super::sql::Sql;
use super::sqlite_writer::{params, stored_row};
use super::{AUDIT_GENESIS, AuditRecord, Stored, chain};
use crate::error::{Error, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        let busy = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        // The detail stays internal (logged by the rescue layer); the client sees the generic message.
        Error::store(e, busy)
    }
}

pub fn open(path: &Path, flags: OpenFlags) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.pragma_update(None, "mmap_size", super::sqlite::MMAP_BYTES)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Index inserts are multi-row statements whose text depends on the row count: rusqlite's
    // default cache of 16 statements would prepare most of them again on every write.
    conn.set_prepared_statement_cache_capacity(512);
    Ok(conn)
}

/// Read-only connections to `gateway.db`, checked out one per point read. At most `limit` idle
/// ones are kept; a burst opens more and drops them afterwards.
pub struct PointReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    limit: usize,
}

impl PointReads {
    pub fn new(path: &Path, limit: usize) -> PointReads {
        PointReads {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            limit,
        }
    }

    /// The row of a `VERSION_COLUMNS` statement, if any.
    pub fn one(&self, q: &Sql) -> Result<Option<Stored>> {
        let taken = self.idle.lock().expect("pool lock").pop();
        let conn = match taken {
            Some(c) => c,
            None => open(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)?,
        };
        let row = run_one(&conn, q);
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < self.limit {
            idle.push(conn);
        }
        row
    }
}

fn run_one(conn: &Connection, q: &Sql) -> Result<Option<Stored>> {
    let mut stmt = conn.prepare_cached(&q.text)?;
    Ok(stmt.query_row(params(q), stored_row).optional()?)
}

/// The access log's writer: one connection, so the chain has one writer.
#[derive(Clone)]
pub struct AuditAppender {
    conn: Arc<Mutex<Connection>>,
}

impl AuditAppender {
    pub fn open(path: &Path) -> Result<AuditAppender> {
        let conn = open(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        // Appends touch the right edges of the table and its indexes (and one leaf of the
        // patient index per event): a small page cache suffices, and SQLite walks the whole
        // cache at the end of every commit (`pcache1Truncate`: 11 % of the gateway's CPU under
        // a read load with the shared 64 MiB setting).
        conn.pragma_update(None, "cache_size", -4096)?;
        // A checkpoint runs inside the commit that crosses the threshold, and every request
        // waiting on that batch waits for it, so its size sets the reads' tail latency: at
        // 10,000 pages reads ran ~9 % faster but their p99 was 43 ms instead of 19 ms (wrk -c32,
        // point reads); on the 1M-resource search set, 250 pages against 2,000 took the p99 of
        // `Patient?identifier=bsn|N` at 8 connections from 12-14 ms to 5-6 ms, and of the first
        // lab page of a patient at 1 connection from 7.7-8.8 ms to 4.1-4.5 ms, at the same rate
        // within the runs' noise (3 alternating series).
        conn.pragma_update(None, "wal_autocheckpoint", 250)?;
        // Checkpoints stay automatic, in the commit that crosses the threshold. A background
        // PASSIVE checkpointer was tried: it never caught up with a steady stream of appends, so
        // the WAL never restarted and grew by ~100 MB/s under load.
        Ok(AuditAppender {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Appends the records in order in one transaction, chained to the last stored hash.
    pub async fn append(&self, records: &[AuditRecord]) -> Result<()> {
        let conn = self.conn.clone();
        let records = records.to_vec();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().expect("audit connection lock");
            append(&conn, &records)
        })
        .await
        .map_err(|e| Error::internal(format!("audit append task: {e}")))?
    }
}

/// One transaction per batch. Its statements, BEGIN and COMMIT included, are prepared once per
/// connection: with one batch per request at low load, preparing them (the last-hash query's
/// plan above all) was ~5 % of the request threads' CPU under an HL7 feed on one connection.
fn append(conn: &Connection, records: &[AuditRecord]) -> Result<()> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let written = append_in_transaction(conn, records)
        .and_then(|()| Ok(conn.prepare_cached("COMMIT")?.execute([]).map(|_| ())?));
    if written.is_err() {
        // Nothing of the batch stays; the next batch chains to the last committed hash.
        let _ = conn.execute_batch("ROLLBACK");
    }
    written
}

fn append_in_transaction(conn: &Connection, records: &[AuditRecord]) -> Result<()> {
    let last: String = conn
        .prepare_cached("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or_else(|| AUDIT_GENESIS.to_owned());
    let mut insert = conn.prepare_cached(
        "INSERT INTO audit_log (id, recorded, patient, agent, outcome, prev_hash, hash, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for (r, (prev, hash)) in records.iter().zip(chain(last, records)) {
        insert.execute(rusqlite::params![
            r.id,
            r.recorded_ms,
            r.patient,
            r.agent,
            r.outcome,
            prev,
            hash,
            &r.packed[..]
        ])?;
    }
    Ok(())
}
