//! When to refresh the query planner's statistics. PostgreSQL's autovacuum analyzes a table a
//! minute or more after 10 % of it changed; until then a freshly loaded table has none, and the
//! planner, taking each search-index condition to match one row, nests loops that turn a chained
//! search over a few hundred resources into minutes. The store counts its writes and analyzes
//! once the writes since the last analysis reach a fifth of what was there then (at least
//! [`MIN_WRITES`]), one analysis at a time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Below this many writes the statistics are not refreshed (small changes do not move plans).
pub const MIN_WRITES: u64 = 200;

#[derive(Debug, Default)]
pub struct Schedule {
    since: AtomicU64,
    /// Resources written up to the last analysis (an estimate of the table sizes it saw).
    at_last: AtomicU64,
    running: AtomicBool,
}

impl Schedule {
    /// Counts `n` writes; `true` when the caller should analyze now (and then call [`done`]).
    ///
    /// [`done`]: Schedule::done
    pub fn wrote(&self, n: u64) -> bool {
        let since = self.since.fetch_add(n, Ordering::Relaxed) + n;
        let due = since >= MIN_WRITES.max(self.at_last.load(Ordering::Relaxed) / 5);
        due && !self.running.swap(true, Ordering::AcqRel)
    }

    /// The analysis finished (or failed: then the writes count on towards the next one).
    pub fn done(&self, ok: bool) {
        if ok {
            let since = self.since.swap(0, Ordering::Relaxed);
            self.at_last.fetch_add(since, Ordering::Relaxed);
        }
        self.running.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyzes_after_a_fifth_more_and_one_at_a_time() {
        let s = Schedule::default();
        assert!(!s.wrote(MIN_WRITES - 1));
        assert!(s.wrote(1), "the first {MIN_WRITES} writes");
        assert!(!s.wrote(1_000), "one analysis at a time");
        s.done(true);
        // 1,201 written so far: the next is due after 240 more.
        assert!(!s.wrote(MIN_WRITES));
        assert!(s.wrote(40));
        s.done(false);
        assert!(s.wrote(1), "a failed analysis is retried on the next write");
    }
}
