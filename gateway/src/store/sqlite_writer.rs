//! Group commit for SQLite writes. SQLite has one writer; with a transaction and an fsync per
//! request, and each of a write's ~10 statements handed to sqlx's worker thread and back, the
//! gateway managed ~400 writes/s on 2 cores while using half of them. Here one thread owns the
//! write connection (rusqlite, statements run inline), takes every write that is waiting (up to
//! [`MAX_GROUP`]), runs each in its own savepoint inside one transaction, commits once, and only
//! then answers each: a write is still durable before it is acknowledged (the sync of the commit
//! runs on a thread of its own, `sqlite_syncer`, while this one goes on with the next group), and
//! one that fails (a version conflict, a 412) is rolled back alone.

use super::sql::{self, Bind, Dialect, FullTextBatch, Indexing, Sql};
use super::sqlite_checkpointer::Checkpointer;
use super::sqlite_syncer::{self, Committed, Durability};
use super::writes::WriteTx;
use super::{Stored, WriteMethod, from_millis};
use crate::error::{Error, Result};
use crate::fhir::search::Criteria;
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};

/// The most writes one commit takes.
pub const MAX_GROUP: usize = 256;

const D: Dialect = Dialect::Sqlite;

/// One write waiting for the writer thread.
trait Job: Send {
    /// Runs the write inside the open transaction; `false` when it failed (and must be undone).
    fn run(&mut self, tx: &mut InlineTx) -> bool;
    /// Answers the caller once the group's commit is known.
    fn deliver(self: Box<Self>, committed: Result<()>);
}

struct WriteJob<T, F> {
    work: Option<F>,
    indexing: Option<Indexing>,
    result: Option<Result<T>>,
    reply: tokio::sync::oneshot::Sender<Result<T>>,
}

impl<T, F> Job for WriteJob<T, F>
where
    T: Send,
    F: FnOnce(&mut dyn WriteTx) -> Result<T> + Send,
{
    fn run(&mut self, tx: &mut InlineTx) -> bool {
        let work = self.work.take().expect("a job runs once");
        tx.indexing = self.indexing.take();
        let r = work(tx);
        // The full-text rows of the group's successful jobs are written together before the
        // commit (see `FullTextBatch`).
        if r.is_ok() {
            tx.group_fulltext.absorb(&mut tx.fulltext);
        } else {
            tx.fulltext.clear();
        }
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn deliver(self: Box<Self>, committed: Result<()>) {
        let r = match committed {
            Ok(()) => self
                .result
                .unwrap_or_else(|| Err(Error::internal("a write job did not run"))),
            Err(e) => Err(e),
        };
        let _ = self.reply.send(r);
    }
}

/// The handle the store keeps; cloning shares the one writer thread.
#[derive(Clone)]
pub struct GroupWriter {
    jobs: mpsc::Sender<Box<dyn Job>>,
    durability: Arc<Durability>,
}

impl GroupWriter {
    /// Starts the writer thread on `conn` (opened read-write by the caller, schema migrated);
    /// after each commit it nudges `checkpointer`, which copies the WAL into the database file
    /// on a thread of its own.
    ///
    /// `conn` commits without syncing (`synchronous=NORMAL`); a thread of its own syncs `wal`,
    /// the database's WAL file, after the commits and only then answers their writes (see
    /// `sqlite_syncer`).
    pub fn start(conn: Connection, checkpointer: Checkpointer, wal: PathBuf) -> GroupWriter {
        let (jobs, rx) = mpsc::channel::<Box<dyn Job>>();
        let durability = Arc::new(Durability::default());
        let synced = sqlite_syncer::start(wal, durability.clone(), |job: Box<dyn Job>, r| {
            job.deliver(r)
        })
        .expect("a thread for the SQLite WAL sync");
        let shared = durability.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, checkpointer, &shared, synced))
            .expect("a thread for the SQLite writer");
        GroupWriter { jobs, durability }
    }

    /// Waits until every write that a read finished now could have seen is on disk.
    pub async fn settled(&self) -> Result<()> {
        self.durability.settled().await
    }

    /// Runs `work` in the next group; answers after its commit. `work` runs on the writer thread
    /// with the write rules of `store::writes`, whose calls complete without waiting; the
    /// resource it writes was indexed beforehand (`indexing`), on the caller's task, so that the
    /// one writer thread only writes.
    pub async fn write<T, F>(&self, indexing: Option<Indexing>, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn WriteTx) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = WriteJob {
            work: Some(work),
            indexing,
            result: None,
            reply,
        };
        self.submit(Box::new(job), answer).await
    }

    /// Hands `job` to the writer thread and waits for the answer it sends on `answer`.
    async fn submit<T>(
        &self,
        job: Box<dyn Job>,
        answer: tokio::sync::oneshot::Receiver<Result<T>>,
    ) -> Result<T> {
        let stopped = || Error::store("the SQLite writer has stopped", false);
        self.jobs.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Sets the writer connection's WAL checkpoint interval, in pages (a pragma, so it runs inside
/// the group's transaction without writing anything).
struct CheckpointInterval {
    pages: u32,
    outcome: Option<std::result::Result<(), String>>,
    reply: tokio::sync::oneshot::Sender<Result<()>>,
}

impl Job for CheckpointInterval {
    fn run(&mut self, tx: &mut InlineTx) -> bool {
        let r = tx
            .conn
            .pragma_update(None, "wal_autocheckpoint", self.pages)
            .map_err(|e| e.to_string());
        let ok = r.is_ok();
        self.outcome = Some(r);
        ok
    }

    fn deliver(self: Box<Self>, committed: Result<()>) {
        let r = committed.and(
            self.outcome
                .unwrap_or(Ok(()))
                .map_err(|e| Error::store(e, false)),
        );
        let _ = self.reply.send(r);
    }
}

impl GroupWriter {
    /// Checkpoints the WAL every `pages` pages from the next group on (SQLite's default: 1,000).
    pub async fn checkpoint_every(&self, pages: u32) -> Result<()> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = CheckpointInterval {
            pages,
            outcome: None,
            reply,
        };
        self.submit(Box::new(job), answer).await
    }
}

fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<Box<dyn Job>>,
    checkpointer: Checkpointer,
    durability: &Durability,
    synced: mpsc::Sender<Committed<Box<dyn Job>>>,
) {
    let mut tx = InlineTx {
        conn,
        indexing: None,
        fulltext: FullTextBatch::default(),
        group_fulltext: FullTextBatch::default(),
    };
    let mut n = 0;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        if durability.failed() {
            for job in group {
                job.deliver(Err(sqlite_syncer::unsynced()));
            }
            continue;
        }
        n += 1;
        // Before the COMMIT: a reader that sees the group must find it announced.
        durability.announce(n);
        // A failed group left nothing written: its clients may try again.
        let outcome = run_group(&mut tx, &mut group).map_err(|e| Error::store(e, true));
        checkpointer.nudge();
        if let Err(mpsc::SendError(c)) = synced.send(Committed {
            n,
            outcome,
            jobs: group,
        }) {
            for job in c.jobs {
                job.deliver(Err(Error::internal(
                    "the SQLite WAL sync thread has stopped",
                )));
            }
        }
    }
}

/// One transaction for the group; each job in a savepoint so that its failure undoes only it.
fn run_group(tx: &mut InlineTx, group: &mut [Box<dyn Job>]) -> std::result::Result<(), String> {
    let fail = |e: rusqlite::Error| e.to_string();
    tx.conn.execute_batch("BEGIN IMMEDIATE").map_err(fail)?;
    // Full-text rows last: a failure there fails the group like a failed commit would.
    let finish = |tx: &mut InlineTx| {
        let written = tx.flush_group_fulltext();
        tx.group_fulltext.clear();
        written.map_err(|e| e.log_detail())
    };
    if let [job] = group {
        // Alone in its group, a job needs no savepoint: its failure undoes the transaction,
        // which holds only it. (A savepoint makes SQLite copy every page the job changes to a
        // statement journal, and FTS5 flush its pending terms: a tenth of a bulk import's
        // writer time.)
        let done = if job.run(tx) { "COMMIT" } else { "ROLLBACK" };
        if let Err(e) = finish(tx) {
            let _ = tx.conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        return tx.conn.execute_batch(done).map_err(|e| {
            let _ = tx.conn.execute_batch("ROLLBACK");
            e.to_string()
        });
    }
    for job in group.iter_mut() {
        let step = tx
            .conn
            .execute_batch("SAVEPOINT w")
            .map_err(fail)
            .and_then(|()| {
                let undo = if job.run(tx) {
                    "RELEASE w"
                } else {
                    "ROLLBACK TO w; RELEASE w"
                };
                tx.conn.execute_batch(undo).map_err(fail)
            });
        if let Err(e) = step {
            let _ = tx.conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    if let Err(e) = finish(tx) {
        let _ = tx.conn.execute_batch("ROLLBACK");
        return Err(e);
    }
    tx.conn.execute_batch("COMMIT").map_err(|e| {
        let _ = tx.conn.execute_batch("ROLLBACK");
        e.to_string()
    })
}

/// [`WriteTx`] on the writer thread's open transaction: statements run inline.
pub struct InlineTx {
    conn: Connection,
    /// The current job's resource, indexed by the caller.
    indexing: Option<Indexing>,
    /// The current job's full-text rows.
    fulltext: FullTextBatch,
    /// Those of the group's jobs that succeeded, written before the commit.
    group_fulltext: FullTextBatch,
}

impl InlineTx {
    /// Writes the current job's pending full-text rows (so that its own searches see them).
    fn flush_fulltext(&mut self) -> Result<()> {
        let statements = self.fulltext.take_statements();
        self.execute(statements)
    }

    fn flush_group_fulltext(&mut self) -> Result<()> {
        let statements = self.group_fulltext.take_statements();
        self.execute(statements)
    }

    fn execute(&mut self, statements: Vec<Sql>) -> Result<()> {
        for statement in statements {
            self.conn
                .prepare_cached(&statement.text)
                .and_then(|mut s| s.execute(params(&statement)))
                .map_err(store)?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl WriteTx for InlineTx {
    async fn current(&mut self, ty: &str, id: &str) -> Result<Option<(u64, bool)>> {
        let q = sql::current_version(D, ty, id);
        let mut stmt = self.conn.prepare_cached(&q.text).map_err(store)?;
        stmt.query_row(params(&q), |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? != 0))
        })
        .optional()
        .map_err(store)
    }

    async fn matches(&mut self, ty: &str, criteria: &Criteria, limit: i64) -> Result<Vec<Stored>> {
        if !criteria.fulltext.is_empty() {
            // The job's own earlier writes are searchable too.
            self.flush_fulltext()?;
        }
        let q = sql::matching(D, ty, criteria, limit);
        let mut stmt = self.conn.prepare_cached(&q.text).map_err(store)?;
        let rows = stmt
            .query_map(params(&q), stored_row)
            .map_err(store)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(store)?;
        Ok(rows)
    }

    fn prepare(&mut self, indexing: Option<Indexing>) {
        self.indexing = indexing;
    }

    async fn write(
        &mut self,
        ty: &str,
        id: &str,
        version: u64,
        method: WriteMethod,
        resource: Option<&Value>,
    ) -> Result<Stored> {
        let stored = super::new_version(ty, id, version, method, resource);
        let insert = sql::insert_version(D, &stored);
        let seq: i64 = self
            .conn
            .prepare_cached(&insert.text)
            .and_then(|mut s| s.query_row(params(&insert), |r| r.get(0)))
            .map_err(store)?;
        let indexing = match (resource, self.indexing.take()) {
            (Some(_), Some(ix)) => Some(ix),
            (Some(r), None) => Some(Indexing::of(ty, r)),
            (None, _) => None,
        };
        self.fulltext.add(&stored, indexing.as_ref());
        for statement in sql::after_insert_but_fulltext(D, &stored, seq, indexing.as_ref()) {
            self.conn
                .prepare_cached(&statement.text)
                .and_then(|mut s| s.execute(params(&statement)))
                .map_err(store)?;
        }
        Ok(stored)
    }
}

fn store(e: rusqlite::Error) -> Error {
    Error::store(e, false)
}

pub fn params(q: &Sql) -> impl rusqlite::Params + '_ {
    params_from_iter(q.binds.iter())
}

/// Binds are handed to SQLite by reference: a resource body or a long string is not copied
/// once more per statement.
impl rusqlite::ToSql for Bind {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Bind::Text(s) => ValueRef::Text(s.as_bytes()),
            Bind::Int(i) => ValueRef::Integer(*i),
            Bind::Bytes(Some(v)) => ValueRef::Blob(v),
            Bind::Bytes(None) => ValueRef::Null,
            Bind::Real(r) => ValueRef::Real(*r),
            Bind::NullableReal(r) => r.map_or(ValueRef::Null, ValueRef::Real),
        }))
    }
}

/// A `VERSION_COLUMNS` row.
pub fn stored_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    let body: Option<Vec<u8>> = r.get(5)?;
    let method: String = r.get(4)?;
    Ok(Stored {
        ty: r.get(0)?,
        id: r.get(1)?,
        version: r.get::<_, i64>(2)? as u64,
        last_updated: from_millis(r.get(3)?),
        method: WriteMethod::parse(&method),
        body: body.map(bytes::Bytes::from),
    })
}
