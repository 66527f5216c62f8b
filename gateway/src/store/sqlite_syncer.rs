//! Makes the writer's commits durable on a thread of its own, so that the one writer thread goes
//! on with the next group while the disk syncs the last one.
//!
//! Why: with `synchronous=FULL` each COMMIT waits on the writer thread for the fsync of the WAL
//! (and spends its CPU in the kernel's writeback), and no write can start meanwhile. The writer
//! connection now commits with `synchronous=NORMAL` (a commit writes its WAL frames without
//! syncing them; SQLite stays consistent after a crash or a power loss in that mode, and its
//! checkpoints still sync the WAL before copying it), and this thread syncs the WAL file after
//! each commit, or once for all the commits that arrived during the last sync, before any of
//! their writes is answered. A write is still acknowledged only once it is on disk.
//!
//! Readers see a commit as soon as it is made, before it is synced. So that nothing leaves the
//! server that a power loss could take back, every read waits, after its query, until what it
//! could have seen is synced ([`Durability::settled`]): a group is announced (`visible`) before
//! its COMMIT, so a reader that finishes its query after a commit sees the announcement too.
//! With no write in flight that is one atomic load.
//!
//! A failed sync leaves it unknown what is on disk: like PostgreSQL on a failed fsync, the store
//! then refuses every further write and read (the server must be restarted, and SQLite's
//! recovery decides what survived).

use crate::error::{Error, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

/// What readers and the two threads share.
#[derive(Default)]
pub struct Durability {
    /// The newest group that readers may see: set before its COMMIT.
    visible: AtomicU64,
    /// The newest group whose WAL frames are on disk.
    synced: AtomicU64,
    /// A sync failed: nothing is answered from here on.
    failed: AtomicBool,
    changed: tokio::sync::Notify,
}

impl Durability {
    /// Announces group `n` (numbered from 1 up), before its COMMIT.
    pub fn announce(&self, n: u64) {
        self.visible.store(n, Ordering::SeqCst);
    }

    /// Whether a sync failed.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Waits until every group a read that has finished could have seen is on disk.
    pub async fn settled(&self) -> Result<()> {
        self.synced_to(self.visible.load(Ordering::SeqCst)).await
    }

    /// Waits until group `needed` is on disk.
    pub async fn synced_to(&self, needed: u64) -> Result<()> {
        loop {
            if self.synced.load(Ordering::SeqCst) >= needed {
                return Ok(());
            }
            if self.failed() {
                return Err(unsynced());
            }
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the second look, so a sync finishing in between still wakes it.
            changed.as_mut().enable();
            if self.synced.load(Ordering::SeqCst) >= needed || self.failed() {
                continue;
            }
            changed.await;
        }
    }

    pub(super) fn synced_up_to(&self, n: u64) {
        self.synced.fetch_max(n, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    pub(super) fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

pub fn unsynced() -> Error {
    Error::store(
        "the database could not be synced to disk; restart the gateway",
        false,
    )
}

/// A group's commit, for the sync thread to make durable and then answer.
pub struct Committed<J> {
    /// The group's number, as announced.
    pub n: u64,
    /// The COMMIT's outcome (an error: nothing of the group was written).
    pub outcome: Result<()>,
    /// Whom to answer.
    pub jobs: Vec<J>,
}

/// Starts the thread that syncs `wal` (the WAL file of the database the writer commits to) and
/// then calls `answer` with each group's jobs and final outcome. Ends when the sender is dropped.
pub fn start<J, F>(
    wal: PathBuf,
    durability: std::sync::Arc<Durability>,
    answer: F,
) -> std::io::Result<mpsc::Sender<Committed<J>>>
where
    J: Send + 'static,
    F: Fn(J, Result<()>) + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Committed<J>>();
    std::thread::Builder::new()
        .name("sqlite-sync".into())
        .spawn(move || run(wal, rx, &durability, answer))?;
    Ok(tx)
}

fn run<J, F>(wal: PathBuf, rx: mpsc::Receiver<Committed<J>>, durability: &Durability, answer: F)
where
    F: Fn(J, Result<()>),
{
    // Opened at the first commit (the file exists from then on); fsync flushes the file's
    // pages whichever descriptor wrote them.
    let mut file: Option<File> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(next) = rx.try_recv() {
            batch.push(next);
        }
        let newest = batch.iter().map(|c| c.n).max().unwrap_or(0);
        let wrote = batch.iter().any(|c| c.outcome.is_ok());
        let synced = if !wrote || durability.failed() {
            Ok(())
        } else {
            sync(&mut file, &wal)
        };
        match &synced {
            Ok(()) if !durability.failed() => durability.synced_up_to(newest),
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, wal = %wal.display(), "fsync of the WAL failed: the store refuses further requests");
                durability.fail();
            }
        }
        for c in batch {
            let outcome = if durability.failed() && c.outcome.is_ok() {
                Err(unsynced())
            } else {
                c.outcome
            };
            for job in c.jobs {
                answer(job, outcome.clone());
            }
        }
    }
}

fn sync(file: &mut Option<File>, wal: &Path) -> std::io::Result<()> {
    if file.is_none() {
        *file = Some(File::open(wal)?);
    }
    file.as_ref().expect("opened above").sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_read_waits_for_the_sync_of_what_it_could_see() {
        let d = Arc::new(Durability::default());
        d.settled().await.expect("nothing written: settled at once");
        d.announce(1);
        let waiting = tokio::spawn({
            let d = d.clone();
            async move { d.settled().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "group 1 is not synced yet");
        d.synced_up_to(1);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the sync")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_failed_sync_fails_every_waiting_and_later_read() {
        let d = Arc::new(Durability::default());
        d.announce(1);
        let waiting = tokio::spawn({
            let d = d.clone();
            async move { d.settled().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        d.fail();
        let r = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(r.is_err());
        d.announce(2);
        assert!(d.settled().await.is_err());
    }

    #[test]
    fn groups_are_answered_after_the_sync_and_a_failed_sync_fails_them() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("x-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let d = Arc::new(Durability::default());
        let (answers, got) = mpsc::channel();
        let tx = start(wal.clone(), d.clone(), move |job: u32, r| {
            answers.send((job, r)).unwrap()
        })
        .unwrap();
        d.announce(1);
        tx.send(Committed {
            n: 1,
            outcome: Ok(()),
            jobs: vec![1, 2],
        })
        .unwrap();
        d.announce(2);
        tx.send(Committed {
            n: 2,
            outcome: Err(Error::store("rolled back", true)),
            jobs: vec![3],
        })
        .unwrap();
        let mut seen: Vec<_> = (0..3)
            .map(|_| got.recv_timeout(Duration::from_secs(5)).unwrap())
            .map(|(job, r): (u32, Result<()>)| (job, r.map_err(|e| e.log_detail())))
            .collect();
        seen.sort_by_key(|(j, _)| *j);
        assert_eq!(seen[0], (1, Ok(())));
        assert_eq!(seen[1], (2, Ok(())));
        assert_eq!(
            seen[2],
            (
                3,
                Err("the store is unavailable; try again | rolled back".into())
            ),
            "a rolled-back group keeps its own error"
        );
        assert_eq!(d.synced.load(Ordering::SeqCst), 2);

        // The file is gone (as it would be if it could not be synced): the commit is not
        // answered as written, and the store stays failed.
        drop(tx);
        let d = Arc::new(Durability::default());
        let (answers, got) = mpsc::channel();
        let tx = start(
            dir.path().join("missing-wal"),
            d.clone(),
            move |job: u32, r| answers.send((job, r)).unwrap(),
        )
        .unwrap();
        d.announce(1);
        tx.send(Committed {
            n: 1,
            outcome: Ok(()),
            jobs: vec![7],
        })
        .unwrap();
        let (job, r) = got.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(job, 7);
        let e = r.expect_err("not answered as written");
        assert_eq!(
            e.status,
            hyper::StatusCode::INTERNAL_SERVER_ERROR,
            "the store is failed: not the 503 that invites a retry"
        );
        assert!(d.failed());
    }
}
