//! A test hook that kills the process (SIGKILL, as `kill -9`) right after
//! a chosen device write, so that the crash tests of `gfs2_grow` and
//! `gfs2_jadd` can stop a change at every kind of point without racing a
//! timer. The filesystem then holds exactly what a `kill -9` at that moment
//! leaves: the writes done so far (in the page cache or on the medium),
//! nothing more.
//!
//! Writes are counted, from 1, only while the hook is armed:
//! - offline, the tool is the process that writes: armed from the start
//!   ([`wrap_tool`]; `GFS2_TOOLS_KILL_AFTER_WRITES=N`,
//!   `GFS2_TOOLS_COUNT_WRITES=1`, see the grow crate's `killpoint`), so
//!   the points cover its whole run, its unmount included;
//! - online, the daemon writes on the tool's behalf: the device of every
//!   node it mounts is wrapped ([`wrap_daemon`]) when
//!   `GFS2_FUSE_KILL_AFTER_WRITES=N` or `GFS2_FUSE_COUNT_WRITES=FILE` is
//!   set, and armed from the first control request (a grow or a jadd, see
//!   [`crate::control`]) on: the points cover the change, the log flushes
//!   and checkpoints that write it in place afterwards and the unmount
//!   that leaves the journal clean, as offline. FILE receives the count
//!   so far after each request and at the unmount. Other threads' writes
//!   in that span (the commit timer) count as well, so two runs may count
//!   a little differently.
//!
//! Without the variables the device is used as it is, unwrapped.

use super::claim::Claimant;
use super::BlockDevice;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The daemon's variables (the tools have their own, in the grow crate).
pub const DAEMON_KILL_AFTER: &str = "GFS2_FUSE_KILL_AFTER_WRITES";
pub const DAEMON_COUNT: &str = "GFS2_FUSE_COUNT_WRITES";

static ARMED: AtomicBool = AtomicBool::new(false);
/// A daemon's device was wrapped: control requests arm the hook.
static HOOKED: AtomicBool = AtomicBool::new(false);
static WRITES: AtomicU64 = AtomicU64::new(0);
/// The write after which the process dies; 0: none.
static KILL_AFTER: AtomicU64 = AtomicU64::new(0);

struct Counted {
    inner: Arc<dyn BlockDevice>,
    /// Where the count goes at release (the daemon's count file).
    report_to: Option<std::ffi::OsString>,
}

impl BlockDevice for Counted {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let r = self.inner.write_at(buf, offset);
        if ARMED.load(Ordering::SeqCst) {
            let n = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
            if KILL_AFTER.load(Ordering::SeqCst) == n {
                // SAFETY: kill(2) on our own pid with a valid signal number.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
        }
        r
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn refresh_size(&self) -> io::Result<u64> {
        self.inner.refresh_size()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn claim(&self, who: Claimant) -> io::Result<()> {
        self.inner.claim(who)
    }
    fn scsi(&self) -> Option<&dyn super::scsi::ScsiLun> {
        self.inner.scsi()
    }
    fn release(&self) {
        self.inner.release();
        if let Some(p) = &self.report_to {
            report(p);
        }
    }
}

fn kill_after(var: &str) -> Option<u64> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// A tool's device: counted from now on (and killing after the write
/// `kill_var` names) if `kill_var` holds a number or `count_var` is set;
/// `dev` itself otherwise.
pub fn wrap_tool(
    dev: Arc<dyn BlockDevice>,
    kill_var: &str,
    count_var: &str,
) -> Arc<dyn BlockDevice> {
    let k = kill_after(kill_var);
    if k.is_none() && std::env::var_os(count_var).is_none() {
        return dev;
    }
    KILL_AFTER.store(k.unwrap_or(0), Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    Arc::new(Counted {
        inner: dev,
        report_to: None,
    })
}

/// A daemon node's device: counted from the first control request on (see
/// [`during_request`]) if the daemon's variables are set; `dev` itself
/// otherwise.
pub fn wrap_daemon(dev: Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
    let k = kill_after(DAEMON_KILL_AFTER);
    let report_to = std::env::var_os(DAEMON_COUNT);
    if k.is_none() && report_to.is_none() {
        return dev;
    }
    KILL_AFTER.store(k.unwrap_or(0), Ordering::SeqCst);
    HOOKED.store(true, Ordering::SeqCst);
    Arc::new(Counted {
        inner: dev,
        report_to,
    })
}

/// The writes counted so far.
pub fn writes() -> u64 {
    WRITES.load(Ordering::SeqCst)
}

fn report(path: &std::ffi::OsStr) {
    if let Err(e) = std::fs::write(path, format!("{}\n", writes())) {
        tracing::warn!("{}: {e}", std::path::Path::new(path).display());
    }
}

/// The daemon's side: `f` (a control request's change), with the writes
/// counted from its start on if [`wrap_daemon`] wrapped a device, and the
/// count so far written to the file `GFS2_FUSE_COUNT_WRITES` names after
/// it.
pub fn during_request<T>(f: impl FnOnce() -> T) -> T {
    if !HOOKED.load(Ordering::SeqCst) {
        return f();
    }
    ARMED.store(true, Ordering::SeqCst);
    let r = f();
    if let Some(p) = std::env::var_os(DAEMON_COUNT) {
        report(&p);
    }
    r
}
