//! Lets a write made from inside the gateway (an HL7 v2 message, a municipal message, an
//! import) wait for its sync to disk together with its audit record, instead of before it.
//!
//! Why: the feed acknowledges a message only once its resources and its access record are both
//! on disk. On SQLite those are two files and two syncs (the WAL, then the audit journal), and
//! waiting for them one after the other made each message's round trip two syncs long; the MLLP
//! listener's rate per connection is bounded by that round trip. Inside [`deferring`], a write
//! is answered as soon as its group has committed, and the caller waits for the group's sync
//! ([`Owed::paid`]) while its audit record is appended, so that the two syncs overlap.
//!
//! What it changes after a crash: the audit record of a write is appended once the write's
//! outcome is known (committed), not once it is on disk. A power loss between the two syncs can
//! leave the record of a write that did not survive; the message was not acknowledged, so its
//! sender sends it again and the log then holds both attempts. The opposite (a durable write
//! without its record) could happen before as well, in the moment between the two syncs. Nothing
//! is acknowledged before both syncs.
//!
//! Only the SQLite store's group writer defers (a PostgreSQL commit is durable when it returns),
//! and only for writes made on the task that runs [`deferring`]: whatever it spawns waits as
//! usual.

use super::sqlite_syncer::Durability;
use crate::error::Result;
use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    /// The syncs owed by the writes of the task running `deferring`: (store, newest group).
    static OWED: RefCell<Vec<(Arc<Durability>, u64)>>;
}

/// The syncs that the writes made in [`deferring`] still wait for.
#[must_use = "the writes are not known to be on disk until the sync owed is paid"]
pub struct Owed(Vec<(Arc<Durability>, u64)>);

impl Owed {
    /// Waits until every write made in [`deferring`] is on disk (an error if a sync failed).
    pub async fn paid(self) -> Result<()> {
        for (durability, n) in self.0 {
            durability.synced_to(n).await?;
        }
        Ok(())
    }
}

/// Runs `work`, whose SQLite writes answer at their commit; returns its output and the syncs it
/// owes, which the caller must wait for ([`Owed::paid`]) before it tells anyone the writes are
/// done.
pub async fn deferring<F: Future>(work: F) -> (F::Output, Owed) {
    OWED.scope(RefCell::new(Vec::new()), async {
        let out = work.await;
        (out, Owed(OWED.with(|o| o.take())))
    })
    .await
}

/// Whether the current task runs in [`deferring`].
pub(super) fn active() -> bool {
    OWED.try_with(|_| ()).is_ok()
}

/// Records that the current task's write is in group `n` of `durability`, not yet synced.
pub(super) fn owe(durability: &Arc<Durability>, n: u64) {
    let _ = OWED.try_with(|o| {
        let mut o = o.borrow_mut();
        match o.iter_mut().find(|(d, _)| Arc::ptr_eq(d, durability)) {
            Some((_, newest)) => *newest = (*newest).max(n),
            None => o.push((durability.clone(), n)),
        }
    });
}
