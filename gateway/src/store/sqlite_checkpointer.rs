//! Checkpoints `gateway.db`'s write-ahead log on a thread of its own, beside the writer.
//!
//! Why: with SQLite's automatic checkpoint (every 1,000 WAL pages) the commit that crosses the
//! threshold copies the WAL's pages into the database file and fsyncs it, on the one writer
//! thread, while every write behind it waits. An HL7 v2 message writes ~120 pages (three
//! resources and ~35 search-index rows), so that was every eighth message, and 16-20 % of the
//! writer thread's CPU (perf, ADT^A04 over MLLP on 1 and 8 connections) plus its fsync waits.
//! A checkpoint needs no write lock in WAL mode, so this thread does it on its own connection
//! while the writer goes on.
//!
//! A passive checkpoint beside a busy writer rarely catches up with the WAL's end, and only a
//! complete one lets the next write start the log from its beginning again. So once the WAL
//! holds [`RESTART_PAGES`], the thread asks the writer to stop before its next group
//! ([`Checkpointer::begin_group`]), copies the little the writer committed since its last
//! checkpoint, and lets it go on: the writer's next transaction restarts the log. Before, the
//! writer's own automatic checkpoint did this at 4,000 pages, copying on its thread whatever
//! this one had not copied yet (its fsync of the database file was the writer's longest wait,
//! perf sched); now that checkpoint stays only as a backstop ([`BACKSTOP_PAGES`]) for a thread
//! that cannot keep up or has stopped.

use rusqlite::Connection;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// WAL pages (16 MiB) from which the thread has the writer stop so that the log restarts.
pub const RESTART_PAGES: i64 = 4_000;

/// The writer's own automatic checkpoint threshold while this thread runs, in pages (64 MiB).
pub const BACKSTOP_PAGES: u32 = 16_000;

/// How long the thread waits after a checkpoint before the next: commits in between are copied
/// together, and a page that several of them changed (an index's last leaf, say) is written to
/// the database file once.
const PAUSE: Duration = Duration::from_millis(20);

/// How long the writer waits for a restart at most; then it goes on (the backstop remains).
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// The writer's handle: [`Checkpointer::nudge`] after each commit. The thread ends when every
/// clone is dropped.
#[derive(Clone)]
pub struct Checkpointer {
    wake: SyncSender<()>,
    /// Set during a bulk load, whose writer checkpoints on its own schedule (see
    /// `SqliteStore::bulk_load`).
    paused: Arc<AtomicBool>,
    drain: Arc<Drain>,
}

/// The thread's request that the writer stop until the WAL is copied whole, and what the writer
/// is doing; one lock, so that the writer cannot begin a group unseen between the thread's look
/// and its checkpoint.
#[derive(Default)]
struct Drain {
    state: Mutex<DrainState>,
    changed: Condvar,
}

#[derive(Default)]
struct DrainState {
    requested: bool,
    /// The writer is running a group (it may commit more frames).
    in_group: bool,
}

impl Drain {
    fn lock(&self) -> std::sync::MutexGuard<'_, DrainState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request(&self) {
        self.lock().requested = true;
    }

    /// Ends the request (done, given up, or paused): a waiting writer goes on.
    fn release(&self) {
        self.lock().requested = false;
        self.changed.notify_all();
    }

    /// Waits until the writer is between groups, and stays there because the request holds;
    /// `false` when the request ended first (the writer gave up waiting) or the wait timed out.
    fn writer_at_rest(&self) -> bool {
        let (state, _) = self
            .changed
            .wait_timeout_while(self.lock(), DRAIN_WAIT, |s| s.requested && s.in_group)
            .unwrap_or_else(|e| e.into_inner());
        state.requested && !state.in_group
    }
}

impl Checkpointer {
    /// Starts the thread on `conn`, a read-write connection to the database the writer writes.
    pub fn start(conn: Connection) -> std::io::Result<Checkpointer> {
        // One pending wake-up is enough: the checkpoint copies everything committed before it.
        let (wake, rx) = mpsc::sync_channel(1);
        let paused = Arc::new(AtomicBool::new(false));
        let drain = Arc::new(Drain::default());
        let (flag, thread_drain) = (paused.clone(), drain.clone());
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(conn, rx, flag, &thread_drain))?;
        Ok(Checkpointer {
            wake,
            paused,
            drain,
        })
    }

    /// Something was committed: checkpoint soon.
    pub fn nudge(&self) {
        match self.wake.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }

    /// Stops (true) or resumes (false) checkpoints from this thread.
    pub fn pause(&self, on: bool) {
        self.paused.store(on, Ordering::Relaxed);
        if on {
            self.drain.release();
        }
    }

    /// The writer, before it begins a group: when the thread asked, waits until it has copied
    /// the whole WAL (at most [`DRAIN_WAIT`]), so that the group's transaction restarts the log.
    pub fn begin_group(&self) {
        let state = self.drain.lock();
        let (mut state, waited) = self
            .drain
            .changed
            .wait_timeout_while(state, DRAIN_WAIT, |s| s.requested)
            .unwrap_or_else(|e| e.into_inner());
        if waited.timed_out() {
            tracing::warn!("the WAL checkpoint did not catch up in time; writing on");
            state.requested = false;
        }
        state.in_group = true;
    }

    /// The writer, once its group is committed (or rolled back).
    pub fn end_group(&self) {
        self.drain.lock().in_group = false;
        self.drain.changed.notify_all();
    }
}

fn run(conn: Connection, wake: Receiver<()>, paused: Arc<AtomicBool>, drain: &Drain) {
    while wake.recv().is_ok() {
        if !paused.load(Ordering::Relaxed) {
            round(&conn, drain);
        }
        std::thread::sleep(PAUSE);
    }
    drain.release();
}

/// A passive checkpoint; then, when the log has grown to [`RESTART_PAGES`] and nothing held that
/// checkpoint back, the writer is stopped once it is between groups, the few frames it committed
/// meanwhile are copied, and it is released: its next transaction restarts the log.
fn round(conn: &Connection, drain: &Drain) {
    let Some((log, copied)) = checkpoint(conn) else {
        return;
    };
    // With a reader on frames of an older snapshot, stopping the writer would not let the log
    // restart.
    if log < RESTART_PAGES || copied < log {
        return;
    }
    drain.request();
    let mut before = copied;
    while drain.writer_at_rest() {
        let Some((log, copied)) = checkpoint(conn) else {
            break;
        };
        // Done; or no progress: a reader still reads frames no checkpoint may overwrite, and
        // the log restarts at a later round.
        if copied >= log || copied <= before {
            break;
        }
        before = copied;
    }
    drain.release();
}

/// PASSIVE: copies what no reader still needs, never waits for a lock. A failure (the disk, say)
/// leaves the pages in the WAL, where they are durable; the writer's backstop checkpoint and the
/// next round try again.
fn checkpoint(conn: &Connection) -> Option<(i64, i64)> {
    passive_checkpoint(conn)
        .map_err(|e| tracing::warn!(error = %e, "WAL checkpoint failed"))
        .ok()
}

/// Runs a passive checkpoint; answers (frames in the WAL, frames copied to the database).
pub fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &std::path::Path) -> Connection {
        let c = Connection::open(path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        c
    }

    /// A writer connection with one table, and a checkpoint thread on a second connection.
    fn writer_and_thread() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        Connection,
        Checkpointer,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let writer = open(&path);
        writer.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let cp = Checkpointer::start(open(&path)).unwrap();
        (dir, path, writer, cp)
    }

    /// Commits `rows` rows of 3,000 bytes, nudging the thread after each.
    fn write(writer: &Connection, cp: &Checkpointer, rows: usize) {
        for _ in 0..rows {
            writer
                .execute("INSERT INTO t VALUES (randomblob(3000))", [])
                .unwrap();
            cp.nudge();
        }
    }

    /// Waits (10 s at most) until the database file holds `rows` such rows.
    fn wait_until_copied(path: &std::path::Path, rows: u64, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(path).unwrap().len() < rows * 3000 {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The thread copies what the writer commits into the database file without the writer
    /// checkpointing (its automatic checkpoint is off here).
    #[test]
    fn checkpoints_beside_the_writer() {
        let (_dir, path, writer, cp) = writer_and_thread();
        write(&writer, &cp, 50);
        // Until a checkpoint copies them, the rows are in the WAL alone and the database file
        // holds only the empty table.
        wait_until_copied(&path, 50, "never checkpointed");
        drop(cp);
    }

    /// A writer that waits when asked finds the log restarted: the WAL file stays near
    /// `RESTART_PAGES` however much is written (the writer's own checkpoint is off here).
    #[test]
    fn the_log_restarts_while_the_writer_writes() {
        let (_dir, path, writer, cp) = writer_and_thread();
        writer.pragma_update(None, "synchronous", "OFF").unwrap();
        let rows = 3 * RESTART_PAGES as usize;
        for n in 0..rows {
            // ~40,000 WAL frames a second, a busy writer's pace (it is unbounded without disk
            // syncs; then the pause between checkpoints alone lets the WAL grow past any bound).
            if n % 20 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            cp.begin_group();
            writer
                .execute("INSERT INTO t VALUES (randomblob(3000))", [])
                .unwrap();
            cp.end_group();
            cp.nudge();
        }
        let wal = std::fs::metadata(path.with_file_name("db-wal"))
            .unwrap()
            .len();
        // A frame is a page of 4,096 bytes and a 24-byte header; a commit writes ~2, so a log
        // that never restarted would hold ~6 x RESTART_PAGES frames (~99 MB). The bound leaves
        // the checkpoint thread room to fall behind when the tests running beside this one take
        // the cores (a fresh-clone CI run saw 36.7 MB against a bound of 2 x RESTART_PAGES).
        let most = 3 * RESTART_PAGES as u64 * 4_120;
        assert!(wal < most, "the WAL grew to {wal} bytes for {rows} rows");
        wait_until_copied(&path, rows as u64, "never checkpointed");
        drop(cp);
    }

    /// A reader on an old snapshot keeps the log from restarting; the writer must not wait for
    /// that (up to `DRAIN_WAIT` per group) while it lasts.
    #[test]
    fn a_lasting_reader_does_not_hold_the_writer_up() {
        let (_dir, path, writer, cp) = writer_and_thread();
        writer.pragma_update(None, "synchronous", "OFF").unwrap();
        writer
            .execute("INSERT INTO t VALUES (randomblob(3000))", [])
            .unwrap();
        let reader = open(&path);
        reader.execute_batch("BEGIN").unwrap();
        let n: i64 = reader
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        for n in 0..2 * RESTART_PAGES {
            if n % 20 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            // A wait for a restart that cannot come lasts `DRAIN_WAIT`.
            let started = std::time::Instant::now();
            cp.begin_group();
            let took = started.elapsed();
            assert!(took < DRAIN_WAIT / 2, "row {n} waited {took:?}");
            writer
                .execute("INSERT INTO t VALUES (randomblob(3000))", [])
                .unwrap();
            cp.end_group();
            cp.nudge();
        }
        reader.execute_batch("COMMIT").unwrap();
        drop(cp);
    }

    /// Paused, the thread copies nothing.
    #[test]
    fn pausing_stops_checkpoints() {
        let (_dir, path, writer, cp) = writer_and_thread();
        cp.pause(true);
        write(&writer, &cp, 20);
        std::thread::sleep(PAUSE * 5);
        let on_disk = std::fs::metadata(&path).unwrap().len();
        assert!(
            on_disk < 20 * 3000,
            "the database file grew to {on_disk} bytes"
        );
        cp.pause(false);
        cp.nudge();
        wait_until_copied(&path, 20, "never resumed");
    }
}
