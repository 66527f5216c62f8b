//! A thin VFS over SQLite's default one that writes the frames a commit appends to the WAL with
//! one `pwrite` instead of two per frame. Only the group writer's connection opens it.
//!
//! Why: SQLite writes each WAL frame as two `pwrite`s, its 24-byte header and then the page. An
//! HL7 ADT message's commit appends ~85 frames: ~170 system calls, and as a frame is 4,120 bytes
//! and not aligned to the page cache's 4 KiB, each touches one or two of the WAL file's cached
//! pages. perf at one MLLP connection put these `pwrite`s at 16-18 % of the gateway's CPU, on the
//! path every acknowledgement waits for.
//!
//! What it does, on WAL files only (the database file and any other file pass straight through):
//! - a write that continues the previous one is appended to a buffer in memory;
//! - the buffer is written out when the page of a commit frame (a frame header whose "database
//!   size after commit" field is not zero) has been appended. That write is part of SQLite's
//!   `xWrite` of the page, so an error (a full disk) fails the commit as it did before;
//! - it is also written out before anything else is done with the file (a write elsewhere, a
//!   read, a sync, a truncate, its size, a lock, a file control, close) and once it holds
//!   [`BUFFER_LIMIT`] bytes (a large import's spilled pages).
//!
//! Why that is enough: the frames of a commit are only ever read, by this connection or another
//! (readers, the checkpointer), after SQLite has published them in the wal-index header in shared
//! memory, which it does after `walFrames` has written the commit frame, that is after the buffer
//! went out; every read by this connection flushes first anyway. A crash before the commit frame
//! loses an uncommitted transaction, as without the buffer: SQLite's recovery takes only frames up
//! to the last valid commit frame. Durability is unchanged: `sqlite_syncer` syncs the WAL after
//! the commit returns, and the acknowledgement waits for that sync.

use rusqlite::ffi;
use std::ffi::{c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

/// The VFS's name, for `Connection::open_with_flags_and_vfs`.
pub const NAME: &str = "gateway-wal-writes";
const NAME_C: &std::ffi::CStr = c"gateway-wal-writes";

/// The most a WAL file's buffer holds before it is written out.
const BUFFER_LIMIT: usize = 4 << 20;

/// The most the default VFS writes in one call: its `seekAndWriteFd` keeps only the low 17 bits of
/// the length (a longer write failed as "disk full").
const MAX_WRITE: usize = 0x1ffff;

/// The size of a WAL frame header; bytes 4..8 hold the database size after a commit, 0 otherwise.
const FRAME_HEADER: c_int = 24;

/// SQLite's default VFS, which this one wraps (its address: `sqlite3_vfs` is not `Sync`).
static INNER: OnceLock<Result<usize, String>> = OnceLock::new();

/// Registers the VFS (once per process; later calls return the first call's outcome).
pub fn register() -> Result<(), String> {
    INNER
        .get_or_init(|| unsafe {
            let inner = ffi::sqlite3_vfs_find(ptr::null());
            if inner.is_null() {
                return Err("SQLite has no default VFS".into());
            }
            // A copy of the default VFS with our `xOpen` and a larger file object. Its other
            // methods are the default's own and read only fields kept as they were (`pAppData`,
            // `mxPathname`), so they may be called with this copy.
            let mut vfs: ffi::sqlite3_vfs = ptr::read(inner);
            vfs.szOsFile = std::mem::size_of::<File>() as c_int + (*inner).szOsFile;
            vfs.pNext = ptr::null_mut();
            vfs.zName = NAME_C.as_ptr();
            vfs.xOpen = Some(open);
            let rc = ffi::sqlite3_vfs_register(Box::leak(Box::new(vfs)), 0);
            if rc != ffi::SQLITE_OK {
                return Err(format!("sqlite3_vfs_register: {rc}"));
            }
            Ok(inner as usize)
        })
        .clone()
        .map(|_| ())
}

/// An open file: SQLite's `sqlite3_file` header (which must come first), the default VFS's file
/// object (stored right after this struct, in the same allocation), and for a WAL file its buffer.
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    wal: Option<Box<Pending>>,
}

/// Bytes written to a WAL file but not yet passed on: `buf` belongs at offset `start`.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    start: i64,
    /// The last write was a commit frame's header: the next one is its page, the commit's end.
    commit_page_next: bool,
}

impl Pending {
    /// Writes the buffer out through the default VFS.
    unsafe fn flush(&mut self, inner: *mut ffi::sqlite3_file) -> c_int {
        if self.buf.is_empty() {
            return ffi::SQLITE_OK;
        }
        self.commit_page_next = false;
        #[cfg(test)]
        tests::WRITES_OUT.with(|n| n.set(n.get() + 1));
        let Some(write) = (unsafe { (*(*inner).pMethods).xWrite }) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let mut rc = ffi::SQLITE_OK;
        for (i, chunk) in self.buf.chunks(MAX_WRITE).enumerate() {
            let at = self.start + (i * MAX_WRITE) as i64;
            rc = unsafe { write(inner, chunk.as_ptr().cast(), chunk.len() as c_int, at) };
            if rc != ffi::SQLITE_OK {
                break;
            }
        }
        self.buf.clear();
        rc
    }
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let Some(Ok(inner_vfs)) = INNER.get() else {
        return ffi::SQLITE_ERROR;
    };
    let inner_vfs = *inner_vfs as *mut ffi::sqlite3_vfs;
    let Some(inner_open) = (unsafe { (*inner_vfs).xOpen }) else {
        return ffi::SQLITE_ERROR;
    };
    unsafe {
        let inner = file
            .cast::<u8>()
            .add(std::mem::size_of::<File>())
            .cast::<ffi::sqlite3_file>();
        // SQLite hands over uninitialised memory; nothing may read or drop it before this.
        ptr::write(
            file.cast::<File>(),
            File {
                base: ffi::sqlite3_file {
                    pMethods: ptr::null(),
                },
                inner,
                wal: None,
            },
        );
        (*inner).pMethods = ptr::null();
        let rc = inner_open(inner_vfs, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            // SQLite calls xClose only when `pMethods` is set; ours stays null, so close the
            // inner file here if it was opened after all.
            if !(*inner).pMethods.is_null()
                && let Some(close) = (*(*inner).pMethods).xClose
            {
                close(inner);
            }
            return rc;
        }
        if flags & ffi::SQLITE_OPEN_WAL != 0 {
            (*file.cast::<File>()).wal = Some(Box::default());
        }
        (*file).pMethods = &METHODS;
        rc
    }
}

/// The file's inner object and methods, after writing out what its buffer holds. A failed
/// write-out is returned as `Err(code)`.
unsafe fn flushed(
    file: *mut ffi::sqlite3_file,
) -> Result<(*mut ffi::sqlite3_file, &'static ffi::sqlite3_io_methods), c_int> {
    unsafe {
        let f = &mut *file.cast::<File>();
        let inner = f.inner;
        if let Some(p) = f.wal.as_mut() {
            let rc = p.flush(inner);
            if rc != ffi::SQLITE_OK {
                return Err(rc);
            }
        }
        Ok((inner, &*(*inner).pMethods))
    }
}

/// The file's inner object and methods, its buffer left as it is (for calls that neither read
/// nor change the file's bytes).
unsafe fn direct(
    file: *mut ffi::sqlite3_file,
) -> (*mut ffi::sqlite3_file, &'static ffi::sqlite3_io_methods) {
    unsafe {
        let inner = (*file.cast::<File>()).inner;
        (inner, &*(*inner).pMethods)
    }
}

/// Calls the inner file's method `$m` on `$file` with `$args`, or answers `$missing` if it has
/// none:
/// - `flushed`: after writing out the buffer (a failure to do so is the answer), for calls that
///   read or change the file or its locks;
/// - `direct`: as it is, for calls that do not, and only if the inner methods table is at least
///   version `$v` (the shared-memory methods came with 2, the mapped ones with 3).
macro_rules! delegate {
    (flushed $file:expr, $m:ident, $missing:expr $(, $arg:expr)*) => {
        match flushed($file) {
            Ok((inner, m)) => match m.$m {
                Some(f) => f(inner $(, $arg)*),
                None => $missing,
            },
            Err(rc) => rc,
        }
    };
    (direct $v:literal, $file:expr, $m:ident, $missing:expr $(, $arg:expr)*) => {{
        let (inner, m) = direct($file);
        // The version first: an older table has no such field at all.
        match if m.iVersion >= $v { m.$m } else { None } {
            Some(f) => f(inner $(, $arg)*),
            None => $missing,
        }
    }};
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        let flushed_rc = match flushed(file) {
            Ok(_) => ffi::SQLITE_OK,
            Err(rc) => rc,
        };
        let rc = delegate!(direct 1, file, xClose, ffi::SQLITE_OK);
        ptr::drop_in_place(ptr::addr_of_mut!((*file.cast::<File>()).wal));
        (*file).pMethods = ptr::null();
        if flushed_rc != ffi::SQLITE_OK {
            flushed_rc
        } else {
            rc
        }
    }
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    unsafe {
        let f = &mut *file.cast::<File>();
        let inner = f.inner;
        let Some(p) = f.wal.as_mut() else {
            return delegate!(direct 1, file, xWrite, ffi::SQLITE_IOERR_WRITE, data, amount, offset);
        };
        if amount < 0 {
            return ffi::SQLITE_IOERR_WRITE;
        }
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), amount as usize);
        let continues = !p.buf.is_empty() && offset == p.start + p.buf.len() as i64;
        if !continues {
            let rc = p.flush(inner);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            p.start = offset;
        }
        p.buf.extend_from_slice(bytes);
        let commit_header = amount == FRAME_HEADER && bytes[4..8] != [0, 0, 0, 0];
        if p.commit_page_next && !commit_header || p.buf.len() >= BUFFER_LIMIT {
            return p.flush(inner);
        }
        p.commit_page_next = commit_header;
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    data: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    unsafe { delegate!(flushed file, xRead, ffi::SQLITE_IOERR_READ, data, amount, offset) }
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    unsafe { delegate!(flushed file, xTruncate, ffi::SQLITE_IOERR_TRUNCATE, size) }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    unsafe { delegate!(flushed file, xSync, ffi::SQLITE_IOERR_FSYNC, flags) }
}

unsafe extern "C" fn file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    unsafe { delegate!(flushed file, xFileSize, ffi::SQLITE_IOERR_FSTAT, size) }
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    unsafe { delegate!(flushed file, xLock, ffi::SQLITE_IOERR_LOCK, level) }
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    unsafe { delegate!(flushed file, xUnlock, ffi::SQLITE_IOERR_UNLOCK, level) }
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    unsafe { delegate!(flushed file, xCheckReservedLock, ffi::SQLITE_IOERR_CHECKRESERVEDLOCK, out) }
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    unsafe { delegate!(flushed file, xFileControl, ffi::SQLITE_NOTFOUND, op, arg) }
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe { delegate!(direct 1, file, xSectorSize, 4096) }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    unsafe { delegate!(direct 1, file, xDeviceCharacteristics, 0) }
}

// Shared memory belongs to the database file, which has no buffer; these only pass through.

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    unsafe { delegate!(direct 2, file, xShmMap, ffi::SQLITE_IOERR_SHMMAP, page, size, extend, out) }
}

unsafe extern "C" fn shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    unsafe { delegate!(direct 2, file, xShmLock, ffi::SQLITE_IOERR_SHMLOCK, offset, n, flags) }
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    unsafe { delegate!(direct 2, file, xShmBarrier, ()) }
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    unsafe { delegate!(direct 2, file, xShmUnmap, ffi::SQLITE_OK, delete) }
}

// Memory-mapped reads of the database file (`mmap_size`); a WAL file is never mapped.

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    unsafe {
        // Without a mapping SQLite reads the page with xRead instead.
        *out = ptr::null_mut();
        delegate!(direct 3, file, xFetch, ffi::SQLITE_OK, offset, amount, out)
    }
}

unsafe extern "C" fn unfetch(
    file: *mut ffi::sqlite3_file,
    offset: ffi::sqlite3_int64,
    page: *mut c_void,
) -> c_int {
    unsafe { delegate!(direct 3, file, xUnfetch, ffi::SQLITE_OK, offset, page) }
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, OpenFlags};
    use std::cell::Cell;
    use std::path::Path;

    thread_local! {
        /// Buffers written out by this thread (each connection here is used on its test's thread).
        pub(super) static WRITES_OUT: Cell<usize> = const { Cell::new(0) };
    }

    fn writer(path: &Path) -> Connection {
        super::register().unwrap();
        let c = Connection::open_with_flags_and_vfs(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            super::NAME,
        )
        .unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.pragma_update(None, "synchronous", "NORMAL").unwrap();
        c.pragma_update(None, "cache_size", -512).unwrap();
        // Checkpoints by hand only, so that the WAL holds every commit.
        c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v BLOB);
             CREATE INDEX IF NOT EXISTS t_v ON t (v);",
        )
        .unwrap();
        c
    }

    fn wal_size(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    fn rows(c: &Connection) -> (i64, i64) {
        c.query_row(
            "SELECT count(*), coalesce(sum(length(v)), 0) FROM t",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    /// Rows with values spread over the index, so a commit changes many pages.
    fn insert(c: &Connection, from: i64, n: i64, size: usize) {
        let tx = c.unchecked_transaction().unwrap();
        for k in from..from + n {
            let v: Vec<u8> = (0..size)
                .map(|i| ((k * 7919 + i as i64) % 251) as u8)
                .collect();
            tx.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, v))
                .unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn a_commit_of_many_pages_is_written_out_once() {
        let dir = tempfile::tempdir().unwrap();
        let c = writer(&dir.path().join("db"));
        insert(&c, 0, 10, 100);
        let wal = dir.path().join("db-wal");
        let (size, writes) = (wal_size(&wal), WRITES_OUT.with(Cell::get));
        insert(&c, 1000, 400, 300);
        let frames = (wal_size(&wal) - size) / (24 + 4096);
        assert!(frames > 30, "the commit wrote {frames} frames");
        assert_eq!(WRITES_OUT.with(Cell::get) - writes, 1);
    }

    #[test]
    fn other_connections_see_each_commit_and_none_of_a_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let c = writer(&path);
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut expected = (0, 0);
        for round in 0..20 {
            insert(&c, round * 100, 50, 200 + round as usize * 50);
            expected.0 += 50;
            expected.1 += 50 * (200 + round * 50);
            assert_eq!(rows(&reader), expected, "after commit {round}");
            // A transaction rolled back, and a savepoint rolled back inside a committed one.
            let tx = c.unchecked_transaction().unwrap();
            tx.execute(
                "INSERT INTO t (k, v) VALUES (?, zeroblob(5000))",
                [round * 100 + 99],
            )
            .unwrap();
            drop(tx);
            c.execute_batch(&format!(
                "BEGIN; SAVEPOINT s; INSERT INTO t VALUES ({k}, zeroblob(9000)); ROLLBACK TO s;
                 INSERT INTO t VALUES ({k}, zeroblob(10)); COMMIT;",
                k = round * 100 + 98
            ))
            .unwrap();
            expected.0 += 1;
            expected.1 += 10;
            assert_eq!(
                rows(&reader),
                expected,
                "after the rollbacks of round {round}"
            );
        }
        // A transaction larger than the buffer (its pages spill to the WAL before the commit).
        insert(&c, 100_000, 3000, 2000);
        expected.0 += 3000;
        expected.1 += 3000 * 2000;
        assert_eq!(rows(&reader), expected);
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        insert(&c, 200_000, 10, 10);
        expected.0 += 10;
        expected.1 += 100;
        assert_eq!(rows(&reader), expected, "after the WAL restarted");
    }

    #[test]
    fn a_copy_taken_while_the_writer_is_open_recovers_every_commit() {
        // What a crash leaves: the database file and the WAL as the last commit left them.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let c = writer(&path);
        for round in 0..30 {
            insert(&c, round * 1000, 40, 100 + round as usize * 10);
        }
        let expected = rows(&c);
        let copy = dir.path().join("copy");
        std::fs::copy(&path, &copy).unwrap();
        std::fs::copy(dir.path().join("db-wal"), dir.path().join("copy-wal")).unwrap();
        let recovered = Connection::open(&copy).unwrap();
        assert_eq!(rows(&recovered), expected);
        let check: String = recovered
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
}
