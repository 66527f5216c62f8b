//! Group commit for SQLite writes. SQLite has one writer; with a transaction and an fsync per
//! request, and each of a write's ~10 statements handed to sqlx's worker thread and back, the
//! gateway managed ~400 writes/s on 2 cores while using half of them. Here one thread owns the
//! write connection (rusqlite, statements run inline), takes every write that is waiting (up to
//! [`MAX_GROUP`]), runs them inside one transaction, commits once, and only then answers each: a
//! write is still durable before it is acknowledged (the sync of the commit runs on a thread of
//! its own, `sqlite_syncer`, while this one goes on with the next group), and one that fails (a
//! version conflict, a 412) is rolled back alone (see [`run_group`]).

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
    /// May run again after its transaction was rolled back; the last run's outcome counts.
    fn run(&mut self, tx: &mut InlineTx) -> bool;
    /// Answers the caller once the group's commit is known.
    fn deliver(self: Box<Self>, committed: Result<()>);
    /// Called right after group `n` committed (or failed to): `true` when the caller waits for
    /// the sync itself (see `deferred_sync`), so that the job is answered now rather than after
    /// the sync.
    fn answer_at_commit(&mut self, _n: u64) -> bool {
        false
    }
}

struct WriteJob<T, F> {
    work: F,
    indexing: Option<Indexing>,
    result: Option<Result<T>>,
    /// The result, and the group still to be synced when answered at the commit.
    reply: tokio::sync::oneshot::Sender<Result<(T, Option<u64>)>>,
    /// The caller waits for the sync itself (it runs in `deferred_sync::deferring`).
    defer_sync: bool,
    /// Set when answered at the commit of this group.
    unsynced: Option<u64>,
}

impl<T, F> Job for WriteJob<T, F>
where
    T: Send,
    F: FnMut(&mut dyn WriteTx) -> Result<T> + Send,
{
    fn run(&mut self, tx: &mut InlineTx) -> bool {
        // A second run indexes the resource on this thread (`InlineTx::write`).
        tx.indexing = self.indexing.take();
        let r = (self.work)(tx);
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
        let _ = self.reply.send(r.map(|t| (t, self.unsynced)));
    }

    fn answer_at_commit(&mut self, n: u64) -> bool {
        if self.defer_sync {
            self.unsynced = Some(n);
        }
        self.defer_sync
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
    /// one writer thread only writes. `work` may run twice (a rolled-back first run, see
    /// [`run_group`]): it must not depend on what its first run changed outside the database.
    pub async fn write<T, F>(&self, indexing: Option<Indexing>, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnMut(&mut dyn WriteTx) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = WriteJob {
            work,
            indexing,
            result: None,
            reply,
            defer_sync: super::deferred_sync::active(),
            unsynced: None,
        };
        let (t, unsynced) = self.submit(Box::new(job), answer).await?;
        if let Some(n) = unsynced {
            super::deferred_sync::owe(&self.durability, n);
        }
        Ok(t)
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
        // Before the group is taken: the writes that arrive while it waits join it.
        checkpointer.begin_group();
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
            checkpointer.end_group();
            continue;
        }
        n += 1;
        // Before the COMMIT: a reader that sees the group must find it announced.
        durability.announce(n);
        // A failed group left nothing written: its clients may try again.
        let outcome = run_group(&mut tx, &mut group).map_err(|e| Error::store(e, true));
        checkpointer.end_group();
        checkpointer.nudge();
        // Jobs whose callers wait for the sync themselves are answered now; the sync thread
        // still syncs the group (it wrote) and answers the rest.
        let mut after_sync = Vec::with_capacity(group.len());
        for mut job in group {
            if job.answer_at_commit(n) {
                job.deliver(outcome.clone());
            } else {
                after_sync.push(job);
            }
        }
        if let Err(mpsc::SendError(c)) = synced.send(Committed {
            n,
            outcome,
            jobs: after_sync,
        }) {
            // Answered at the commit, some callers wait for this group's sync: they are
            // failed rather than left waiting.
            durability.fail();
            for job in c.jobs {
                job.deliver(Err(Error::internal(
                    "the SQLite WAL sync thread has stopped",
                )));
            }
        }
    }
}

/// One transaction for the group. It runs first with the jobs one after the other, no
/// savepoints: a savepoint makes SQLite copy every page a job changes to a statement journal
/// first, and FTS5 flush its pending terms (without them, groups of 100-entry transaction
/// bundles committed 13-18 % more resources per second). When a job fails, that transaction is
/// rolled back and the group runs again with each job in a savepoint of its own, so that the
/// failure undoes only it. A group of one job needs no second run: its failure is its outcome.
fn run_group(tx: &mut InlineTx, group: &mut [Box<dyn Job>]) -> std::result::Result<(), String> {
    tx.conn.execute_batch("BEGIN IMMEDIATE").map_err(fail)?;
    // `all` stops at the first failure: the jobs after it run only in the second pass.
    if group.iter_mut().all(|job| job.run(tx)) {
        return commit(tx);
    }
    rollback(tx);
    if group.len() == 1 {
        return Ok(());
    }
    tx.conn.execute_batch("BEGIN IMMEDIATE").map_err(fail)?;
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
            rollback(tx);
            return Err(e);
        }
    }
    commit(tx)
}

fn fail(e: rusqlite::Error) -> String {
    e.to_string()
}

/// Writes the group's full-text rows, then commits; a failure of either rolls everything back
/// (full-text rows last: their failure fails the group like a failed commit would).
fn commit(tx: &mut InlineTx) -> std::result::Result<(), String> {
    let done = tx
        .flush_group_fulltext()
        .map_err(|e| e.log_detail())
        .and_then(|()| tx.conn.execute_batch("COMMIT").map_err(fail));
    if done.is_err() {
        rollback(tx);
    }
    done
}

/// Ends the open transaction without writing it, and forgets the full-text rows it held.
fn rollback(tx: &mut InlineTx) {
    let _ = tx.conn.execute_batch("ROLLBACK");
    tx.fulltext.clear();
    tx.group_fulltext.clear();
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
        let upsert = sql::upsert_current(D, &stored, seq);
        let rid: i64 = self
            .conn
            .prepare_cached(&upsert.text)
            .and_then(|mut s| s.query_row(params(&upsert), |r| r.get(0)))
            .map_err(store)?;
        for statement in sql::after_upsert_but_fulltext(D, &stored, rid, indexing.as_ref()) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Inserts `row` into `t`, then fails when `fails` is set (after writing: its row must go).
    struct Insert {
        row: i64,
        fails: bool,
        runs: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Job for Insert {
        fn run(&mut self, tx: &mut InlineTx) -> bool {
            self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tx.conn
                .execute("INSERT INTO t VALUES (?1)", [self.row])
                .unwrap();
            !self.fails
        }

        fn deliver(self: Box<Self>, _committed: Result<()>) {}
    }

    fn inline_tx() -> InlineTx {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        InlineTx {
            conn,
            indexing: None,
            fulltext: FullTextBatch::default(),
            group_fulltext: FullTextBatch::default(),
        }
    }

    fn rows(tx: &InlineTx) -> Vec<i64> {
        let mut s = tx.conn.prepare("SELECT x FROM t ORDER BY x").unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// Jobs 1..=n, job `failing` failing; (group, run counters).
    fn group(
        n: i64,
        failing: Option<i64>,
    ) -> (Vec<Box<dyn Job>>, Vec<Arc<std::sync::atomic::AtomicUsize>>) {
        let runs: Vec<_> = (0..n).map(|_| Arc::default()).collect();
        let jobs = (1..=n)
            .map(|row| {
                Box::new(Insert {
                    row,
                    fails: Some(row) == failing,
                    runs: Arc::clone(&runs[row as usize - 1]),
                }) as Box<dyn Job>
            })
            .collect();
        (jobs, runs)
    }

    fn counts(runs: &[Arc<std::sync::atomic::AtomicUsize>]) -> Vec<usize> {
        runs.iter()
            .map(|r| r.load(std::sync::atomic::Ordering::SeqCst))
            .collect()
    }

    /// A writer thread on a file database whose commits go to `committed` instead of a sync
    /// thread: nothing is synced until the test says so.
    fn unsynced_writer() -> (
        tempfile::TempDir,
        GroupWriter,
        mpsc::Receiver<Committed<Box<dyn Job>>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let open = |p: &std::path::Path| {
            super::super::sqlite_inline::open(
                p,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                    | rusqlite::OpenFlags::SQLITE_OPEN_CREATE,
            )
            .unwrap()
        };
        let conn = open(&path);
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (x INTEGER)")
            .unwrap();
        let checkpointer = Checkpointer::start(open(&path)).unwrap();
        let (jobs, rx) = mpsc::channel::<Box<dyn Job>>();
        let (synced, committed) = mpsc::channel();
        let durability = Arc::new(Durability::default());
        let shared = durability.clone();
        std::thread::spawn(move || writer_loop(conn, rx, checkpointer, &shared, synced));
        (dir, GroupWriter { jobs, durability }, committed)
    }

    #[tokio::test]
    async fn a_deferring_write_is_answered_at_its_commit_and_owes_its_sync() {
        let (_dir, writer, committed) = unsynced_writer();
        let (answer, owed) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            super::super::deferred_sync::deferring(writer.write(None, |_| Ok(7))),
        )
        .await
        .expect("answered at the commit, before any sync");
        assert_eq!(answer.unwrap(), 7, "answered although nothing is synced");
        let group = committed
            .recv_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        assert!(
            group.jobs.is_empty(),
            "nobody left to answer after the sync"
        );
        assert!(group.outcome.is_ok(), "but the group is still synced");
        let paid = tokio::spawn(owed.paid());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!paid.is_finished(), "the sync owed is not made yet");
        writer.durability.synced_up_to(group.n);
        tokio::time::timeout(std::time::Duration::from_secs(5), paid)
            .await
            .expect("paid once synced")
            .unwrap()
            .unwrap();

        // Outside `deferring`, the answer waits for the sync thread.
        let plain = tokio::spawn({
            let writer = writer.clone();
            async move { writer.write(None, |_| Ok(8)).await }
        });
        let group = tokio::task::spawn_blocking(move || {
            committed
                .recv_timeout(std::time::Duration::from_secs(5))
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(group.jobs.len(), 1, "left for the sync thread to answer");
        assert!(!plain.is_finished());
        for job in group.jobs {
            job.deliver(Ok(()));
        }
        assert_eq!(plain.await.unwrap().unwrap(), 8);
    }

    #[tokio::test]
    async fn a_sync_that_fails_fails_the_write_that_owes_it() {
        let (_dir, writer, committed) = unsynced_writer();
        let (answer, owed) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            super::super::deferred_sync::deferring(writer.write(None, |_| Ok(()))),
        )
        .await
        .expect("answered at the commit");
        answer.unwrap();
        let _group = committed.recv().unwrap();
        writer.durability.fail();
        let e = owed.paid().await.expect_err("never on disk");
        assert_eq!(e.status, hyper::StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn a_group_without_failures_runs_once() {
        let mut tx = inline_tx();
        let (mut jobs, runs) = group(3, None);
        run_group(&mut tx, &mut jobs).unwrap();
        assert_eq!(rows(&tx), vec![1, 2, 3]);
        assert_eq!(counts(&runs), vec![1, 1, 1]);
        assert!(tx.conn.is_autocommit(), "the transaction is committed");
    }

    #[test]
    fn a_failed_job_is_undone_alone_in_a_second_pass() {
        let mut tx = inline_tx();
        let (mut jobs, runs) = group(4, Some(2));
        run_group(&mut tx, &mut jobs).unwrap();
        // Its own row is gone, the others' are kept.
        assert_eq!(rows(&tx), vec![1, 3, 4]);
        // The first pass stopped at the failure; the second ran every job.
        assert_eq!(counts(&runs), vec![2, 2, 1, 1]);
        assert!(tx.conn.is_autocommit());
    }

    #[test]
    fn a_failed_job_alone_is_rolled_back_once() {
        let mut tx = inline_tx();
        let (mut jobs, runs) = group(1, Some(1));
        run_group(&mut tx, &mut jobs).unwrap();
        assert!(rows(&tx).is_empty());
        assert_eq!(counts(&runs), vec![1]);
        assert!(tx.conn.is_autocommit());
    }
}
