//! The SQLite statements every request runs, executed on rusqlite connections without sqlx's
//! per-connection worker thread.
//!
//! Why: sqlx's SQLite driver sends each statement to a thread of its own and each row back through
//! a channel; on a point read that hand-off (futex wake-ups and context switches) cost more CPU
//! than SQLite itself. So the statement most requests run goes direct:
//!
//! - **point reads** (read, vread): a primary-key lookup answered from the page cache in
//!   microseconds, run on the calling task's thread (inline, like a mutex held briefly) on one of a
//!   small set of read-only connections.
//!
//! The group writer (`sqlite_writer`) and the access log's indexer (`audit_journal`) open their
//! connections with [`open`] too.
//!
//! Everything else (searches, history, writes, migrations) stays on sqlx.

use super::Stored;
use super::sql::Sql;
use super::sqlite_writer::{params, stored_row};
use crate::error::{Error, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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
    configure(Connection::open_with_flags(
        path,
        flags | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?)
}

/// [`open`] for the group writer: its WAL frames go out one `pwrite` per commit (see
/// `sqlite_wal_writes`).
pub fn open_group_writer(path: &Path) -> Result<Connection> {
    super::sqlite_wal_writes::register().map_err(|e| Error::store(e, false))?;
    configure(Connection::open_with_flags_and_vfs(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        super::sqlite_wal_writes::NAME,
    )?)
}

fn configure(conn: Connection) -> Result<Connection> {
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
