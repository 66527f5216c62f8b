//! The access log's write path on SQLite: an append-only journal file, indexed into `audit.db`
//! behind the requests.
//!
//! Why: every request (reads included) must have its audit record on disk before it is answered.
//! Committing those records straight into `audit.db` cost each batch a SQLite commit (a WAL frame
//! per touched page of the table and its three indexes, then copied again by a checkpoint) and
//! was ~40 % of the gateway's CPU under a point-read load. Here a batch is one frame appended to
//! a segment file and one `fdatasync`; a thread of its own then inserts the journaled records
//! into `audit_log` in large transactions, where many records share each page written.
//!
//! - **Durable before answered**: [`AuditJournal::append`] returns only after the frame is synced.
//! - **All or none**: a batch is one frame with one CRC; a frame cut short by a crash (never
//!   acknowledged) is dropped at the next start.
//! - **The chain**: sequence numbers and hashes are assigned here, in journal order; the indexer
//!   copies them unchanged, so `gateway audit verify` checks the table as before.
//! - **Reads see every answered access**: AuditEvent search and verification first wait until
//!   everything appended so far is indexed ([`AuditJournal::settled`]).
//! - **Fail closed**: a failed journal write closes the journal for good (a torn frame could
//!   follow); while the indexer cannot write `audit.db` (disk full, say) appends are refused, and
//!   they resume once it catches up. Nothing is answered without its record.
//! - **Recovery**: at open, journaled records the table lacks are inserted, then the segments are
//!   removed. A segment is otherwise removed once all its records are committed to `audit.db`
//!   (synchronous=FULL, so committed means on disk).
//! - **One appender**: the journal directory is locked (`flock`) by the process that appends; a
//!   second process on the same data directory (`gateway audit verify` beside a running server)
//!   opens without a journal: it reads what is indexed and cannot append.

use super::{AuditRecord, AuditRow, chain};
use crate::error::{Error, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A segment is closed and a new one begun once it holds this many bytes. Each segment is
/// written full of zeros and synced before it is used (see [`prepare_spare`]).
const SEGMENT_BYTES: u64 = 4 << 20;
/// The most records one indexing transaction inserts.
const INDEX_BATCH: usize = 20_000;
/// How long the indexer gathers rows before it commits them (unless a reader is waiting): one
/// transaction for many batches of requests, so each page of the table and its indexes is
/// written once for many records. Committing whatever had arrived as soon as it could cost as
/// much as the direct commits did (the indexer kept pace with one small transaction per batch).
const INDEX_DELAY: Duration = Duration::from_millis(500);
/// How long the indexer waits before it retries a failed transaction.
const INDEX_RETRY: Duration = Duration::from_millis(200);
/// How long [`AuditJournal::open`] waits for the journal lock (a store of this process that was
/// just dropped releases it once its indexer has finished).
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// The writer side of the access log.
pub struct AuditJournal {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    tail: Mutex<Tail>,
    /// To the indexer: appended rows, closed segments, and readers' requests to commit now
    /// (see [`AuditJournal::settled`]). `None` only while dropping, which ends the indexer.
    to_indexer: Option<mpsc::Sender<Msg>>,
    shared: Arc<Shared>,
    indexer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What appenders, the indexer and readers share.
struct Shared {
    /// The highest sequence number durable in the journal.
    appended: AtomicI64,
    /// (highest sequence number committed to `audit.db`, whether indexing is failing now).
    indexed: watch::Sender<(i64, bool)>,
    /// A journal write failed: closed until a restart.
    closed: AtomicBool,
}

/// The segment appended to, and where the chain stands.
struct Tail {
    dir: PathBuf,
    file: File,
    /// The first sequence number of the segment `file`, which names it.
    first_seq: i64,
    size: u64,
    /// Roll to a new segment beyond this size.
    segment_bytes: u64,
    next_seq: i64,
    last_hash: String,
    /// Held while this process appends; released after the indexer has finished.
    _lock: File,
}

enum Msg {
    Rows(Vec<AuditRow>),
    /// A segment that is complete: removed once `last_seq` is indexed.
    Closed {
        path: PathBuf,
        last_seq: i64,
    },
    /// A reader waits: commit what has arrived without waiting for more.
    Flush,
    /// The spare segment was taken: write the next one.
    PrepareSpare,
}

impl AuditJournal {
    /// Opens the journal in `dir` for appending to the log in `audit_db`: recovers what the last
    /// run journaled but did not index, then starts the indexer. If another process holds the
    /// journal, the result appends nothing (see the module comment).
    pub fn open(audit_db: &Path, dir: &Path) -> Result<AuditJournal> {
        AuditJournal::open_with(audit_db, dir, SEGMENT_BYTES)
    }

    fn open_with(audit_db: &Path, dir: &Path, segment_bytes: u64) -> Result<AuditJournal> {
        std::fs::create_dir_all(dir).map_err(io("create the audit journal directory"))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(io("open the audit journal lock"))?;
        if !acquire(&lock)? {
            tracing::warn!(
                dir = %dir.display(),
                "another gateway process appends to this access log: this one reads it only"
            );
            return Ok(AuditJournal { inner: None });
        }
        let conn = super::sqlite_inline::open(audit_db, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        // The indexer appends to the right edges of the table and its indexes (and one leaf of
        // the patient index per patient): a small cache is enough.
        conn.pragma_update(None, "cache_size", -8192)?;
        let (last_seq, last_hash) = recover(&conn, dir)?;
        prepare_spare(dir, segment_bytes).map_err(io("prepare an audit journal segment"))?;
        let file = begin_segment(dir, last_seq + 1)?;
        let (tx, rx) = mpsc::channel();
        let (indexed, _) = watch::channel((last_seq, false));
        let shared = Arc::new(Shared {
            appended: AtomicI64::new(last_seq),
            indexed,
            closed: AtomicBool::new(false),
        });
        let indexer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("audit-indexer".into())
                .spawn({
                    let dir = dir.to_owned();
                    move || index(conn, rx, &shared, &dir, segment_bytes)
                })
                .map_err(io("start the audit indexer"))?
        };
        Ok(AuditJournal {
            inner: Some(Arc::new(Inner {
                tail: Mutex::new(Tail {
                    dir: dir.to_owned(),
                    file,
                    first_seq: last_seq + 1,
                    size: 0,
                    segment_bytes,
                    next_seq: last_seq + 1,
                    last_hash,
                    _lock: lock,
                }),
                to_indexer: Some(tx),
                shared,
                indexer: Mutex::new(Some(indexer)),
            })),
        })
    }

    /// Appends the records in order, chained to the last, and returns once they are on disk.
    pub async fn append(&self, records: &[AuditRecord]) -> Result<()> {
        let Some(inner) = self.inner.clone() else {
            return Err(Error::store(
                "another gateway process appends to this access log",
                false,
            ));
        };
        let records = records.to_vec();
        tokio::task::spawn_blocking(move || inner.append(records))
            .await
            .map_err(|e| Error::internal(format!("audit append task: {e}")))?
    }

    /// Waits until every record appended before the call is in `audit.db`.
    pub async fn settled(&self) -> Result<()> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let target = inner.shared.appended.load(Ordering::Acquire);
        let mut seen = inner.shared.indexed.subscribe();
        if seen.borrow().0 >= target {
            return Ok(());
        }
        if let Some(to) = &inner.to_indexer {
            let _ = to.send(Msg::Flush);
        }
        let state = *seen
            .wait_for(|(seq, failing)| *seq >= target || *failing)
            .await
            .map_err(|_| Error::internal("the audit indexer stopped"))?;
        if state.0 >= target {
            Ok(())
        } else {
            Err(Error::store("the access log cannot be indexed now", true))
        }
    }
}

impl Inner {
    fn append(&self, records: Vec<AuditRecord>) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::store(
                "the audit journal failed; restart the gateway",
                false,
            ));
        }
        if self.shared.indexed.borrow().1 {
            return Err(Error::store("the access log cannot be indexed now", true));
        }
        // The table's id is unique; a batch that repeats one would stop the indexer for good.
        let mut ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::internal("an audit batch repeats a record id"));
        }
        let mut tail = self.tail.lock().expect("audit journal lock");
        let links = chain(tail.last_hash.clone(), &records);
        let first = tail.next_seq;
        let rows: Vec<AuditRow> = records
            .into_iter()
            .zip(links)
            .zip(first..)
            .map(|((record, (prev_hash, hash)), seq)| AuditRow {
                seq,
                record,
                prev_hash,
                hash,
            })
            .collect();
        let Some(last) = rows.last() else {
            return Ok(());
        };
        let (last_seq, last_hash) = (last.seq, last.hash.clone());
        let frame = frame(&rows);
        let written = tail
            .file
            .write_all(&frame)
            .and_then(|()| tail.file.sync_data());
        if let Err(e) = written {
            self.shared.closed.store(true, Ordering::Release);
            tracing::error!(error = %e, "audit journal write failed; the access log is closed");
            return Err(Error::store(format!("audit journal write: {e}"), false));
        }
        tail.size += frame.len() as u64;
        tail.next_seq = last_seq + 1;
        tail.last_hash = last_hash;
        if let Some(to) = &self.to_indexer {
            let _ = to.send(Msg::Rows(rows));
        }
        // After the rows are sent: a reader that waits for them and wakes the indexer must not
        // wake it before they are there (it would then wait out the indexer's whole delay).
        self.shared.appended.store(last_seq, Ordering::Release);
        if tail.size >= tail.segment_bytes
            && let Err(e) = tail.roll(last_seq, self.to_indexer.as_ref())
        {
            // This batch is on disk; the next cannot be.
            self.shared.closed.store(true, Ordering::Release);
            tracing::error!(error = %e, "cannot begin a new audit journal segment; the access log is closed");
        }
        Ok(())
    }
}

impl Tail {
    fn roll(&mut self, last_seq: i64, to_indexer: Option<&mpsc::Sender<Msg>>) -> Result<()> {
        let file = begin_segment(&self.dir, last_seq + 1)?;
        if let Some(to) = to_indexer {
            let _ = to.send(Msg::PrepareSpare);
        }
        self.file = file;
        self.size = 0;
        let first = std::mem::replace(&mut self.first_seq, last_seq + 1);
        if let Some(to) = to_indexer {
            let _ = to.send(Msg::Closed {
                path: segment_path(&self.dir, first),
                last_seq,
            });
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The indexer finishes what it holds, then ends; only then is the lock released (with
        // `tail`), so a store reopened in this process recovers after it, not beside it.
        self.to_indexer = None;
        if let Some(h) = self.indexer.get_mut().ok().and_then(Option::take) {
            let _ = h.join();
        }
    }
}

/// Takes the journal lock, waiting a little for a store of this process that is closing.
fn acquire(lock: &File) -> Result<bool> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::store(format!("audit journal lock: {e}"), false));
            }
        }
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::store(format!("cannot {what}: {e}"), false)
}

fn segment_path(dir: &Path, first_seq: i64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

/// The segments in `dir`, in order: (first sequence number, path).
fn segments(dir: &Path) -> std::io::Result<Vec<(i64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<i64>().ok());
        if let Some(first) = first {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Makes the spare segment the one whose first record will be `first_seq`, and makes its name
/// durable before anything in it is acknowledged. Without a spare ready (segments filling faster
/// than the indexer thread writes them) an empty file does, whose appends sync slower.
fn begin_segment(dir: &Path, first_seq: i64) -> Result<File> {
    let path = segment_path(dir, first_seq);
    if std::fs::rename(dir.join(SPARE), &path).is_err() {
        tracing::debug!("no spare audit journal segment ready");
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io("create an audit journal segment"))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync the audit journal directory"))?;
    Ok(file)
}

/// The name of the next segment while it is prepared.
const SPARE: &str = "spare";

/// Writes the next segment ahead of time, `bytes` of zeros, synced. Why: a frame written over
/// allocated blocks syncs with one write; one that extends the file also has its new size
/// written (`fdatasync` of 6 KB appended: p50 0.13-0.17 ms; over zeros: 0.085 ms).
fn prepare_spare(dir: &Path, bytes: u64) -> std::io::Result<()> {
    let spare = dir.join(SPARE);
    if spare.exists() {
        return Ok(());
    }
    let tmp = dir.join("spare.tmp");
    let mut f = File::create(&tmp)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    std::fs::rename(tmp, spare)
}

/// Inserts what the journal holds beyond the table, then removes the segments. Returns the last
/// sequence number and hash.
fn recover(conn: &Connection, dir: &Path) -> Result<(i64, String)> {
    let (mut last_seq, mut last_hash) = last_link(conn)?;
    let found = segments(dir).map_err(io("list the audit journal"))?;
    let mut missing = Vec::new();
    for (i, (_, path)) in found.iter().enumerate() {
        let data = std::fs::read(path).map_err(io("read the audit journal"))?;
        let (rows, intact) = parse(&data);
        // A segment ends at its first frame of zeros: the rest was written ahead of time.
        let clean = data[intact..].iter().all(|b| *b == 0);
        if !clean {
            if i + 1 < found.len() {
                return Err(Error::store(
                    format!(
                        "audit journal segment {} is damaged at byte {intact}; refusing to start",
                        path.display()
                    ),
                    false,
                ));
            }
            // The last frame of the last segment was cut short by a crash: its batch was never
            // acknowledged.
            tracing::warn!(
                segment = %path.display(),
                bytes = data.len() - intact,
                "dropping an incomplete audit journal frame (written when the gateway stopped)"
            );
        }
        missing.extend(rows.into_iter().filter(|r| r.seq > last_seq));
    }
    if !missing.is_empty() {
        insert(conn, &missing)?;
        let last = missing.last().expect("not empty");
        tracing::info!(
            records = missing.len(),
            "indexed audit records the last run journaled"
        );
        (last_seq, last_hash) = (last.seq, last.hash.clone());
    }
    for (_, path) in found {
        std::fs::remove_file(&path).map_err(io("remove an indexed audit journal segment"))?;
    }
    Ok((last_seq, last_hash))
}

fn last_link(conn: &Connection) -> Result<(i64, String)> {
    Ok(conn
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, super::AUDIT_GENESIS.to_owned())))
}

/// The indexer thread: inserts journaled rows into `audit.db`, as many per transaction as have
/// arrived, retrying a failed transaction until it succeeds or the journal is dropped.
fn index(
    conn: Connection,
    rx: mpsc::Receiver<Msg>,
    shared: &Shared,
    dir: &Path,
    segment_bytes: u64,
) {
    let mut pending: Vec<AuditRow> = Vec::new();
    let mut closed: Vec<(PathBuf, i64)> = Vec::new();
    let mut open = true;
    loop {
        // Gather: wait for the first rows, then for more until the delay is up, a reader asks,
        // the batch is full or the journal is dropped.
        let mut flush = false;
        let mut deadline = None;
        while open && !flush && pending.len() < INDEX_BATCH {
            let got = match deadline {
                None if pending.is_empty() => {
                    rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
                }
                None => {
                    deadline = Some(std::time::Instant::now() + INDEX_DELAY);
                    continue;
                }
                Some(d) => rx.recv_timeout(d.saturating_duration_since(std::time::Instant::now())),
            };
            match got {
                Ok(Msg::Rows(rows)) => {
                    pending.extend(rows);
                    deadline.get_or_insert_with(|| std::time::Instant::now() + INDEX_DELAY);
                }
                Ok(Msg::Closed { path, last_seq }) => closed.push((path, last_seq)),
                Ok(Msg::Flush) => flush = true,
                Ok(Msg::PrepareSpare) => {
                    if let Err(e) = prepare_spare(dir, segment_bytes) {
                        tracing::warn!(error = %e, "cannot prepare the next audit journal segment");
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
        }
        if pending.is_empty() {
            remove_indexed(&mut closed, shared.indexed.borrow().0);
            if open {
                continue;
            }
            break;
        }
        match insert(&conn, &pending) {
            Ok(()) => {
                let last = pending.last().expect("not empty").seq;
                pending.clear();
                shared.indexed.send_replace((last, false));
            }
            Err(e) => {
                if !shared.indexed.borrow().1 {
                    tracing::error!(error = %e, "cannot index the access log; requests are refused until it can");
                    shared.indexed.send_modify(|s| s.1 = true);
                }
                if !open {
                    // The journal keeps the rows; the next start indexes them.
                    break;
                }
                std::thread::sleep(INDEX_RETRY);
            }
        }
        remove_indexed(&mut closed, shared.indexed.borrow().0);
    }
}

fn remove_indexed(closed: &mut Vec<(PathBuf, i64)>, indexed: i64) {
    closed.retain(|(path, last_seq)| {
        if *last_seq > indexed {
            return true;
        }
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(segment = %path.display(), error = %e, "cannot remove an indexed audit journal segment");
        }
        false
    });
}

/// One transaction; nothing of it stays if it fails.
fn insert(conn: &Connection, rows: &[AuditRow]) -> Result<()> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let written = insert_rows(conn, rows)
        .and_then(|()| Ok(conn.prepare_cached("COMMIT")?.execute([]).map(|_| ())?));
    if written.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    written
}

fn insert_rows(conn: &Connection, rows: &[AuditRow]) -> Result<()> {
    // OR FAIL: no statement journal (which SQLite walks from its start after every statement
    // of a long transaction); a failure still rolls the whole transaction back.
    let mut stmt = conn.prepare_cached(
        "INSERT OR FAIL INTO audit_log (seq, id, recorded, patient, agent, outcome, prev_hash, hash, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for row in rows {
        let r = &row.record;
        stmt.execute(rusqlite::params![
            row.seq,
            r.id,
            r.recorded_ms,
            r.patient,
            r.agent,
            r.outcome,
            row.prev_hash,
            row.hash,
            &r.packed[..]
        ])?;
    }
    Ok(())
}

// Frames: [payload length u32][CRC-32 of the payload u32][payload], little-endian. A payload is
// one batch: [row count u32] then per row seq i64, recorded i64, id, patient (u8 0/1, then the
// string if 1), agent, outcome, prev_hash, hash, packed body; strings and bytes as u32 length
// then the bytes.

fn frame(rows: &[AuditRow]) -> Vec<u8> {
    let mut p = Vec::with_capacity(rows.len() * 400);
    p.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    for row in rows {
        let r = &row.record;
        p.extend_from_slice(&row.seq.to_le_bytes());
        p.extend_from_slice(&r.recorded_ms.to_le_bytes());
        put(&mut p, r.id.as_bytes());
        match &r.patient {
            Some(patient) => {
                p.push(1);
                put(&mut p, patient.as_bytes());
            }
            None => p.push(0),
        }
        put(&mut p, r.agent.as_bytes());
        put(&mut p, r.outcome.as_bytes());
        put(&mut p, row.prev_hash.as_bytes());
        put(&mut p, row.hash.as_bytes());
        put(&mut p, &r.packed);
    }
    let mut f = Vec::with_capacity(p.len() + 8);
    f.extend_from_slice(&(p.len() as u32).to_le_bytes());
    f.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
    f.extend_from_slice(&p);
    f
}

fn put(p: &mut Vec<u8>, bytes: &[u8]) {
    p.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    p.extend_from_slice(bytes);
}

/// The rows of the intact frames at the start of `data`, and how many bytes those frames take.
fn parse(data: &[u8]) -> (Vec<AuditRow>, usize) {
    let mut rows = Vec::new();
    let mut at = 0;
    while let Some((batch, len)) = parse_frame(&data[at..]) {
        rows.extend(batch);
        at += len;
    }
    (rows, at)
}

fn parse_frame(data: &[u8]) -> Option<(Vec<AuditRow>, usize)> {
    let mut r = Reader(data);
    let len = r.u32()? as usize;
    let crc = r.u32()?;
    let payload = r.take(len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let mut p = Reader(payload);
    let count = p.u32()?;
    let mut rows = Vec::new();
    for _ in 0..count {
        let seq = p.i64()?;
        let recorded_ms = p.i64()?;
        let id = p.string()?;
        let patient = match p.take(1)?[0] {
            0 => None,
            _ => Some(p.string()?),
        };
        let agent = p.string()?;
        let outcome = p.string()?;
        let prev_hash = p.string()?;
        let hash = p.string()?;
        let packed = bytes::Bytes::copy_from_slice(p.bytes()?);
        rows.push(AuditRow {
            seq,
            record: AuditRecord::new(id, recorded_ms, patient, agent, outcome, packed),
            prev_hash,
            hash,
        });
    }
    p.0.is_empty().then_some((rows, 8 + len))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{AUDIT_GENESIS, Store};

    fn record(n: usize) -> AuditRecord {
        AuditRecord::new(
            format!("event-{n}"),
            1_700_000_000_000 + n as i64,
            Some(format!("Patient/p{}", n % 3)),
            "issuer|user".into(),
            "0".into(),
            bytes::Bytes::from(format!(
                "{{\"resourceType\":\"AuditEvent\",\"id\":\"event-{n}\"}}"
            )),
        )
    }

    fn rows(range: std::ops::Range<usize>, after: &str, first_seq: i64) -> Vec<AuditRow> {
        let records: Vec<AuditRecord> = range.map(record).collect();
        let links = chain(after.to_owned(), &records);
        records
            .into_iter()
            .zip(links)
            .zip(first_seq..)
            .map(|((record, (prev_hash, hash)), seq)| AuditRow {
                seq,
                record,
                prev_hash,
                hash,
            })
            .collect()
    }

    async fn ids(store: &SqliteStore) -> Vec<String> {
        store
            .scan_audit(0, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.record.id)
            .collect()
    }

    fn names(n: std::ops::Range<usize>) -> Vec<String> {
        n.map(|i| format!("event-{i}")).collect()
    }

    /// An empty data directory's `audit.db`, schema in place, and its journal directory.
    async fn fresh() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path()).await.unwrap());
        let db = dir.path().join("audit.db");
        let journal = dir.path().join("audit-journal");
        (dir, db, journal)
    }

    /// What a crash left behind: batches journaled (and so acknowledged) but not yet indexed,
    /// and a last frame cut short. The next start indexes the former, drops the latter, and the
    /// chain is whole; the segments are gone afterwards.
    #[tokio::test]
    async fn a_restart_indexes_what_was_journaled_and_drops_a_torn_frame() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("audit-journal");
        std::fs::create_dir_all(&journal).unwrap();
        let first = rows(0..3, AUDIT_GENESIS, 1);
        let second = rows(3..5, &first[2].hash, 4);
        let torn = frame(&rows(5..6, &second[1].hash, 6));
        // Segments are written full of zeros ahead of time: one ends where its zeros begin.
        let mut one = frame(&first);
        one.extend(vec![0u8; 1000]);
        std::fs::write(segment_path(&journal, 1), one).unwrap();
        let mut two = frame(&second);
        two.extend(&torn[..torn.len() - 7]);
        two.extend(vec![0u8; 1000]);
        std::fs::write(segment_path(&journal, 4), two).unwrap();

        let store = SqliteStore::open(dir.path()).await.unwrap();
        assert_eq!(ids(&store).await, names(0..5));
        let v = crate::audit::verify(&store).await.unwrap();
        assert_eq!((v.records, v.broken), (5, vec![]));
        // Appending continues the chain after the recovered records.
        store.append_audit(&[record(9)]).await.unwrap();
        let v = crate::audit::verify(&store).await.unwrap();
        assert_eq!((v.records, v.broken), (6, vec![]));
        drop(store);
        let left = segments(&journal).unwrap();
        assert!(
            left.iter().all(|(first, _)| *first > 5),
            "recovered segments are removed: {left:?}"
        );
        // Opening again indexes nothing twice.
        let store = SqliteStore::open(dir.path()).await.unwrap();
        assert_eq!(ids(&store).await.len(), 6);
    }

    /// Damage anywhere but at the very end is not a crash: the gateway refuses to start rather
    /// than drop or guess at records.
    #[tokio::test]
    async fn a_damaged_segment_before_the_last_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("audit-journal");
        std::fs::create_dir_all(&journal).unwrap();
        let first = rows(0..2, AUDIT_GENESIS, 1);
        let mut damaged = frame(&first);
        let at = damaged.len() - 3;
        damaged[at] ^= 0xff;
        std::fs::write(segment_path(&journal, 1), damaged).unwrap();
        std::fs::write(
            segment_path(&journal, 3),
            frame(&rows(2..3, &first[1].hash, 3)),
        )
        .unwrap();
        let err = SqliteStore::open(dir.path()).await.err().expect("refused");
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    /// Segments roll at their size limit and are removed once everything in them is indexed.
    #[tokio::test]
    async fn full_segments_are_removed_once_indexed() {
        let (_dir, db, journal_dir) = fresh().await;
        let journal = AuditJournal::open_with(&db, &journal_dir, 1024).unwrap();
        for n in 0..40 {
            journal
                .append(&[record(2 * n), record(2 * n + 1)])
                .await
                .unwrap();
        }
        journal.settled().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while segments(&journal_dir).unwrap().len() > 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = segments(&journal_dir).unwrap();
        assert_eq!(left.len(), 1, "only the segment appended to now: {left:?}");
        let conn = Connection::open(&db).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM audit_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 80);
    }

    /// A journal write that fails closes the log for good: that batch and every later one is
    /// refused (a torn frame could follow the failed write).
    #[tokio::test]
    async fn a_failed_journal_write_refuses_every_later_append() {
        let (_dir, db, journal_dir) = fresh().await;
        let journal = AuditJournal::open_with(&db, &journal_dir, SEGMENT_BYTES).unwrap();
        journal.append(&[record(1)]).await.unwrap();
        {
            let inner = journal.inner.as_ref().unwrap();
            let mut tail = inner.tail.lock().unwrap();
            // A handle that cannot write, in place of the segment's.
            tail.file = File::open(segment_path(&journal_dir, 1)).unwrap();
        }
        assert!(journal.append(&[record(2)]).await.is_err());
        {
            let inner = journal.inner.as_ref().unwrap();
            let mut tail = inner.tail.lock().unwrap();
            tail.file = OpenOptions::new()
                .append(true)
                .open(segment_path(&journal_dir, 1))
                .unwrap();
        }
        assert!(
            journal.append(&[record(3)]).await.is_err(),
            "closed until a restart"
        );
    }

    /// While `audit.db` refuses the indexer's inserts (here a trigger; a full disk in life),
    /// appends are refused and reads of the log fail, rather than the log falling behind
    /// unboundedly; once it accepts them again, everything journaled is indexed and appends
    /// resume.
    #[tokio::test]
    async fn appends_wait_out_an_index_that_cannot_be_written() {
        let (_dir, db, journal_dir) = fresh().await;
        let journal = AuditJournal::open_with(&db, &journal_dir, SEGMENT_BYTES).unwrap();
        journal.append(&[record(0)]).await.unwrap();
        journal.settled().await.unwrap();
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TRIGGER broken BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'disk full'); END",
        )
        .unwrap();
        journal.append(&[record(1)]).await.unwrap();
        assert!(journal.settled().await.is_err(), "the index cannot take it");
        assert!(
            journal.append(&[record(2)]).await.is_err(),
            "refused meanwhile"
        );
        conn.execute_batch("DROP TRIGGER broken").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if journal.append(&[record(3)]).await.is_ok() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "appends resume");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        journal.settled().await.unwrap();
        let got: Vec<String> = conn
            .prepare("SELECT id FROM audit_log ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(got, ["event-0", "event-1", "event-3"]);
    }

    /// A second process on the same data directory (here: a second journal) cannot append to
    /// the log the first one appends to; it still reads it.
    #[tokio::test]
    async fn one_appender_per_log() {
        let (_dir, db, journal_dir) = fresh().await;
        let first = AuditJournal::open_with(&db, &journal_dir, SEGMENT_BYTES).unwrap();
        first.append(&[record(1)]).await.unwrap();
        let second = AuditJournal::open_with(&db, &journal_dir, SEGMENT_BYTES).unwrap();
        assert!(second.append(&[record(2)]).await.is_err());
        second.settled().await.unwrap();
        first.append(&[record(3)]).await.unwrap();
    }
}
