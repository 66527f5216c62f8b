//! Checkpoints `gateway.db`'s write-ahead log on a thread of its own, beside the writer.
//!
//! Why: with SQLite's automatic checkpoint (every 1,000 WAL pages) the commit that crosses the
//! threshold copies the WAL's pages into the database file and fsyncs it, on the one writer
//! thread, while every write behind it waits. An HL7 v2 message writes ~120 pages (three
//! resources and ~35 search-index rows), so that was every eighth message, and 16-20 % of the
//! writer thread's CPU (perf, ADT^A04 over MLLP on 1 and 8 connections) plus its fsync waits.
//! A checkpoint needs no write lock in WAL mode, so this thread does it on its own connection
//! while the writer goes on. The writer keeps an automatic checkpoint at a higher threshold as a
//! backstop (see [`BACKSTOP_PAGES`]): a passive checkpoint running beside a busy writer rarely
//! catches up with the WAL's end, and only a complete one lets the next write start the log
//! from its beginning again; the writer's own checkpoint then finds almost every page copied
//! already.

use rusqlite::Connection;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

/// The writer's own automatic checkpoint threshold while this thread runs, in pages (16 MiB).
pub const BACKSTOP_PAGES: u32 = 4_000;

/// How long the thread waits after a checkpoint before the next: commits in between are copied
/// together, and a page that several of them changed (an index's last leaf, say) is written to
/// the database file once.
const PAUSE: Duration = Duration::from_millis(20);

/// The writer's handle: [`Checkpointer::nudge`] after each commit. The thread ends when every
/// clone is dropped.
#[derive(Clone)]
pub struct Checkpointer {
    wake: SyncSender<()>,
    /// Set during a bulk load, whose writer checkpoints on its own schedule (see
    /// `SqliteStore::bulk_load`).
    paused: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Starts the thread on `conn`, a read-write connection to the database the writer writes.
    pub fn start(conn: Connection) -> std::io::Result<Checkpointer> {
        // One pending wake-up is enough: the checkpoint copies everything committed before it.
        let (wake, rx) = mpsc::sync_channel(1);
        let paused = Arc::new(AtomicBool::new(false));
        let flag = paused.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(conn, rx, flag))?;
        Ok(Checkpointer { wake, paused })
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
    }
}

fn run(conn: Connection, wake: Receiver<()>, paused: Arc<AtomicBool>) {
    while wake.recv().is_ok() {
        if !paused.load(Ordering::Relaxed) {
            // PASSIVE: copies what no reader still needs, never waits for a lock. A failure (the
            // disk, say) leaves the pages in the WAL, where they are durable; the writer's
            // backstop checkpoint and the next nudge try again.
            if let Err(e) = passive_checkpoint(&conn) {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
        }
        std::thread::sleep(PAUSE);
    }
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
