//! Integrity of the file: what is checked at open, and what is checked later, in the background.
//!
//! `PRAGMA quick_check` reads every page of the file: ~0.1 s for 120 MB from the page cache, 3–4 s
//! from disk. Running it before every open made start-up grow with the log, so the work is split:
//!
//! - **Every open** reads the 100-byte header and checks it ([`check_header`]): the magic string,
//!   the page size, the format bytes, and — when the WAL holds nothing — that the file is as long
//!   as the header says. A truncated file or an overwritten header is refused at once with
//!   [`StoreError::Corrupt`] naming what is wrong. Opening then has SQLite parse the schema
//!   (migrations) and walk the right edge of the events tree (the last position).
//! - **After an unclean shutdown** the full `PRAGMA quick_check` runs before the journal opens,
//!   exactly as it always did, after one sequential read of the file ([`prefetch`]) so the
//!   check's page-by-page reads come from memory. "Unclean" is anything but a matching clean-shutdown marker
//!   ([`Unclean`]).
//! - **After a clean shutdown** the file is opened without the full check, and the same
//!   `quick_check` runs in the background ([`spawn_check`]) on a read-only connection of its own,
//!   after a delay and throttled. If it finds damage, the journal stops writing the file and
//!   reports it (see `Shared::mark_corrupt`).
//!
//! ## The clean-shutdown marker
//!
//! `<file>-clean`, written by [`write_marker`] after `Journal::close` has written everything,
//! run `wal_checkpoint(TRUNCATE)` and closed the write connection, and only if the WAL is then
//! empty. It records the file's identity and state ([`Stamp`]: length, mtime in ns, inode,
//! device, and the 100-byte header, which holds the change counter, the page count and the schema
//! cookie). A writer removes it before it connects and again right after, so a crash afterwards
//! leaves none. At open it is trusted only if it equals the file as it is now, is itself newer
//! than the file's mtime, *and* the WAL is absent or empty.
//!
//! Why that is enough, with several processes on one file (the CLI beside `serve`): a writer that
//! crashed leaves a non-empty WAL if it wrote anything since its last `TRUNCATE` checkpoint (a
//! WAL only shrinks to zero through that checkpoint or when the last connection closes, both of
//! which leave the file whole); a checkpoint into the file changes its mtime, ctime and usually
//! its header. So another process writing after our marker either makes the WAL non-empty or
//! changes the stamp — and then the next open runs the full check. What the marker cannot see
//! (bits rotting at rest, a writer that puts the mtime back) the background check finds.

use super::{Durability, StoreError, classify, connect_options};
use crate::journal::BackgroundCheck;
use serde::{Deserialize, Serialize};
use sqlx::{ConnectOptions, Connection};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How the file's integrity is established, and what the background check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Integrity {
    /// The full `PRAGMA quick_check` passed before the journal opened, because the last shutdown
    /// was not known to be clean (the reason).
    CheckedAtOpen(Unclean),
    /// The last shutdown was clean: only the header was checked at open; the background
    /// `quick_check` is waiting for its delay or running.
    Checking,
    /// The background `quick_check` passed.
    Verified,
    /// The background check did not finish (the journal closed first, or it could not run: the
    /// reason). Nothing is assumed; the next open after a clean close starts it again.
    Unfinished(String),
    /// The background check found damage: nothing more is written to the file, events stay
    /// buffered (bounded), `progress().failing` is `corrupt`. Restore the file or inspect it; on
    /// the next open it is refused.
    Corrupt(StoreError),
}

/// Why the full check ran at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unclean {
    /// No clean-shutdown marker: a new file, a crash, a kill, a `Journal` dropped without
    /// `close`, or a close that left no marker (the store failing, or the WAL not emptied
    /// because another connection was using it).
    NoMarker,
    /// A marker, but it does not describe the file as it is now (the file was written, replaced
    /// or copied after the clean close), or it cannot be read.
    MarkerMismatch,
    /// A matching marker, but the WAL holds frames: some writer ran after the clean close.
    WalNotEmpty,
}

/// SQLite's magic string, the first 16 bytes of every database file.
const MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// The header's length.
const HEADER: usize = 100;

/// The file's first 100 bytes.
#[derive(Clone, Copy)]
pub(crate) struct Header([u8; HEADER]);

impl Header {
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }

    /// Bytes per page (the stored value 1 means 65,536).
    fn page_size(&self) -> u32 {
        match u16::from_be_bytes([self.0[16], self.0[17]]) {
            1 => 65_536,
            n => u32::from(n),
        }
    }

    /// The page count stored at 28..32, when SQLite would trust it: non-zero, and written by the
    /// same transaction as the change counter (24..28 equal to "version-valid-for", 92..96).
    fn page_count(&self) -> Option<u32> {
        let pages = self.u32_at(28);
        (pages != 0 && self.u32_at(24) == self.u32_at(92)).then_some(pages)
    }
}

fn wal_path(path: &Path) -> PathBuf {
    sidecar(path, "-wal")
}

fn marker_path(path: &Path) -> PathBuf {
    sidecar(path, "-clean")
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// True when the WAL is absent or empty (no frames: nothing to replay over the file).
fn wal_is_empty(path: &Path) -> Result<bool, StoreError> {
    match std::fs::metadata(wal_path(path)) {
        Ok(m) => Ok(m.len() == 0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(StoreError::Io(format!("reading {}: {e}", wal_path(path).display()))),
    }
}

/// Reads the file and its WAL front to back into the page cache before the full check, so that
/// check is served from memory. `quick_check` itself reads one page at a time as it walks each
/// tree; on a cold cache that cost 2–3 s for a 120 MB log here, where one sequential pass costs
/// ~0.25 s (the disk reads ~500 MB/s sequentially but ~55 MB/s in 4 KiB reads). Errors are left
/// to the check itself to report. Bounded: one 1 MiB buffer; what stays cached is the kernel's.
pub(crate) fn prefetch(path: &Path) {
    let mut buf = vec![0u8; 1 << 20];
    for p in [path.to_path_buf(), wal_path(path)] {
        let Ok(mut f) = std::fs::File::open(&p) else { continue };
        while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// The cheap checks of every open: reads the header only. `Ok(None)` for a missing or empty
/// file (SQLite creates the database in it).
pub(crate) fn check_header(path: &Path) -> Result<Option<Header>, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.display().to_string(),
        detail,
    };
    let io = |e: std::io::Error| StoreError::Io(format!("reading {}: {e}", path.display()));
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        return Ok(None);
    }
    if len < HEADER as u64 {
        return Err(corrupt(format!(
            "the file is {len} bytes, shorter than SQLite's {HEADER}-byte header"
        )));
    }
    let mut h = [0u8; HEADER];
    file.read_exact(&mut h).map_err(io)?;
    let h = Header(h);
    if &h.0[..16] != MAGIC {
        return Err(corrupt(format!(
            "the header does not start with \"SQLite format 3\" (first bytes {:02x?}): not an SQLite file, or its \
             header was overwritten",
            &h.0[..16]
        )));
    }
    let page_size = h.page_size();
    if !(512..=65_536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(corrupt(format!(
            "the header's page size {page_size} is not a power of two between 512 and 65536"
        )));
    }
    // File format versions (1 legacy, 2 WAL) and the payload fractions the format fixes.
    if !matches!(h.0[18], 1 | 2) || !matches!(h.0[19], 1 | 2) || h.0[21..24] != [64, 32, 32] {
        return Err(corrupt(format!(
            "the header's format bytes are wrong (versions {} {}, payload fractions {:?})",
            h.0[18],
            h.0[19],
            &h.0[21..24]
        )));
    }
    // With frames in the WAL, the file may legitimately be shorter than its own header says (a
    // checkpoint writes page 1 first); the WAL then completes it, and the full check runs anyway.
    if let Some(pages) = h.page_count()
        && wal_is_empty(path)?
    {
        let expected = u64::from(pages) * u64::from(page_size);
        if len < expected {
            return Err(corrupt(format!(
                "the file is {len} bytes but its header says {pages} pages of {page_size} bytes ({expected} bytes): \
                 it was truncated"
            )));
        }
    }
    Ok(Some(h))
}

/// What the marker records: the file's identity and state when it was closed cleanly. Not its
/// ctime: bit rot changes no metadata, and a test simulates it by putting the mtime back, which
/// it could not do with the ctime. A writer that resets the mtime on purpose fools the marker;
/// the background check still reads every page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    inode: u64,
    device: u64,
    /// The 100-byte header, hex.
    header: String,
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    m.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(-1, |d| d.as_nanos() as i128)
}

impl Stamp {
    fn of(path: &Path, header: &Header) -> Result<Stamp, StoreError> {
        let m = std::fs::metadata(path).map_err(|e| StoreError::Io(format!("reading {}: {e}", path.display())))?;
        #[cfg(unix)]
        let (inode, device) = {
            use std::os::unix::fs::MetadataExt;
            (m.ino(), m.dev())
        };
        #[cfg(not(unix))]
        let (inode, device) = (0, 0);
        Ok(Stamp {
            len: m.len(),
            mtime_ns: mtime_ns(&m),
            inode,
            device,
            header: header.0.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }
}

/// Decides, before the writer connects, whether the full check must run, and removes the marker
/// (a crash from here on must leave none). `header` is the result of [`check_header`].
pub(crate) fn take_marker(path: &Path, header: Option<&Header>) -> Result<(), Unclean> {
    let marker = marker_path(path);
    let saved = std::fs::read(&marker).and_then(|bytes| std::fs::metadata(&marker).map(|m| (bytes, m)));
    remove_marker(path);
    let (saved, written) = match saved {
        Ok(saved) => saved,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Unclean::NoMarker),
        Err(_) => return Err(Unclean::MarkerMismatch),
    };
    let Some(header) = header else {
        return Err(Unclean::MarkerMismatch);
    };
    let saved: Stamp = serde_json::from_slice(&saved).map_err(|_| Unclean::MarkerMismatch)?;
    match Stamp::of(path, header) {
        // The file's mtime must be older than the marker's own (see `write_marker`): a write in
        // the same clock tick as the marker would otherwise leave the mtime unchanged.
        Ok(now) if now == saved && now.mtime_ns < mtime_ns(&written) => {}
        _ => return Err(Unclean::MarkerMismatch),
    }
    match wal_is_empty(path) {
        Ok(true) => Ok(()),
        _ => Err(Unclean::WalNotEmpty),
    }
}

/// Removes the marker; a missing one is fine. A marker that cannot be removed is reported: after
/// a crash it could still match (only if the WAL were empty too, which a crashed writer that
/// wrote anything does not leave).
pub(crate) fn remove_marker(path: &Path) {
    let marker = marker_path(path);
    match std::fs::remove_file(&marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(marker = %marker.display(), error = %e, "cannot remove the clean-shutdown marker"),
    }
}

/// Writes the marker after a clean close: only if the WAL is empty (the `TRUNCATE` checkpoint
/// completed and nobody wrote since). Atomic (a temporary file renamed over it); not synced — a
/// marker lost to a power cut only means a full check at the next open.
///
/// File times advance in clock ticks (1–10 ms), so a write to the file in the same tick as the
/// checkpoint would not change its mtime. As git does with its index, the marker is trusted only
/// if it is strictly newer than the file: it is rewritten until its own mtime is past the file's
/// (at most one tick, a few ms, at close), and any later write to the file then gives the file
/// an mtime at least the marker's.
pub(crate) fn write_marker(path: &Path) -> Result<bool, StoreError> {
    if !wal_is_empty(path)? {
        return Ok(false);
    }
    let Some(header) = check_header(path)? else {
        return Ok(false);
    };
    let stamp = Stamp::of(path, &header)?;
    let marker = marker_path(path);
    let tmp = sidecar(path, &format!("-clean.{}.tmp", std::process::id()));
    let io = |e: std::io::Error| StoreError::Io(format!("writing {}: {e}", marker.display()));
    let bytes = serde_json::to_vec(&stamp).expect("a stamp always encodes");
    for _ in 0..MARKER_TRIES {
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, &marker).map_err(io)?;
        if mtime_ns(&std::fs::metadata(&marker).map_err(io)?) > stamp.mtime_ns {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // The clock does not move past the file's mtime (a file dated in the future?): no marker.
    remove_marker(path);
    Ok(false)
}

/// Attempts at writing a marker newer than the file (1 ms apart).
const MARKER_TRIES: u32 = 50;

/// A stop signal the check thread can sleep on and the progress handler can poll cheaply.
#[derive(Default)]
pub(crate) struct Stop {
    flag: AtomicBool,
    lock: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    pub(crate) fn set(&self) {
        self.flag.store(true, Ordering::Relaxed);
        *self.lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_all();
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Sleeps up to `d`; true if stopped.
    fn sleep(&self, d: Duration) -> bool {
        let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, d, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

/// The check works at least this long between rests, so the progress handler (called every
/// [`PROGRESS_OPS`] pages or VM instructions) costs one clock read most of the time.
const WORK_QUANTUM: Duration = Duration::from_millis(10);
/// Pages (inside the b-tree walk) or VM instructions (in the row checks) between calls of the
/// progress handler.
const PROGRESS_OPS: i32 = 100;

/// Where the background check reports what it found: the writer's shared state, which stops
/// writing a damaged file (`Shared::mark_corrupt`).
pub(crate) trait CheckReport: Send + Sync + 'static {
    /// What the check established (never replaces a corruption found earlier).
    fn set_integrity(&self, integrity: Integrity);
    /// The file is damaged.
    fn mark_corrupt(&self, e: StoreError);
}

/// The background check: a thread of its own (the writer's commits never wait on it), a
/// read-only connection of its own (the readers' pool keeps all its connections), started after
/// `pace.delay`, resting `pace.rest_ratio` times as long as it worked. Stopped by `stop`.
pub(crate) fn spawn_check(
    path: &Path,
    durability: Durability,
    busy_timeout: Duration,
    pace: BackgroundCheck,
    shared: Arc<dyn CheckReport>,
    stop: Arc<Stop>,
) -> Result<std::thread::JoinHandle<()>, StoreError> {
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("breakerbox-journal-check".into())
        .spawn(move || {
            if stop.sleep(pace.delay) {
                shared.set_integrity(Integrity::Unfinished("the journal closed before the check started".into()));
                return;
            }
            let started = Instant::now();
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    shared.set_integrity(Integrity::Unfinished(format!("starting its runtime: {e}")));
                    return;
                }
            };
            let found = rt.block_on(quick_check(&path, durability, busy_timeout, pace, stop.clone()));
            match found {
                Ok(()) => {
                    tracing::info!(
                        path = %path.display(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "event log integrity check (background quick_check) passed"
                    );
                    shared.set_integrity(Integrity::Verified);
                }
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::error!(
                        error = %e,
                        "the background integrity check (PRAGMA quick_check) found the event log damaged: nothing more \
                         is written to it; breakers keep deciding in memory and events stay buffered (bounded, drops \
                         counted). Inspect the file or restore it from a backup: it is refused at the next start"
                    );
                    shared.mark_corrupt(e);
                }
                Err(_) if stop.is_set() => {
                    shared.set_integrity(Integrity::Unfinished("the journal closed before the check finished".into()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the background integrity check could not run; it runs at the next open");
                    shared.set_integrity(Integrity::Unfinished(e.to_string()));
                }
            }
        })
        .map_err(|e| StoreError::Io(format!("starting the integrity check thread: {e}")))
}

/// `PRAGMA quick_check` on a read-only connection, throttled and stoppable through SQLite's
/// progress handler (which `quick_check` calls for every page it checks).
async fn quick_check(
    path: &Path,
    durability: Durability,
    busy_timeout: Duration,
    pace: BackgroundCheck,
    stop: Arc<Stop>,
) -> Result<(), StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.display().to_string(),
        detail,
    };
    let with_path = |e: StoreError| match e {
        StoreError::Corrupt { detail, .. } => corrupt(detail),
        other => other,
    };
    let mut conn = connect_options(path, durability, busy_timeout)
        .read_only(true)
        .connect()
        .await
        .map_err(|e| with_path(classify(e)))?;
    {
        let mut handle = conn.lock_handle().await.map_err(classify)?;
        let ratio = pace.rest_ratio;
        let mut since = Instant::now();
        handle.set_progress_handler(PROGRESS_OPS, move || {
            if stop.is_set() {
                return false;
            }
            let worked = since.elapsed();
            if worked >= WORK_QUANTUM {
                if ratio > 0 && stop.sleep(worked * ratio) {
                    return false;
                }
                since = Instant::now();
            }
            true
        });
    }
    let check: Result<Vec<(String,)>, StoreError> = sqlx::query_as("PRAGMA quick_check")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| with_path(classify(e)));
    let _ = conn.close().await;
    let check = check?;
    if check.len() != 1 || check[0].0 != "ok" {
        let detail = check.into_iter().map(|(s,)| s).take(5).collect::<Vec<_>>().join("; ");
        return Err(corrupt(detail));
    }
    Ok(())
}
