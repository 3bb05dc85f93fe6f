//! A test hook that kills the tool (SIGKILL, as `kill -9`) at a chosen
//! write, so that the crash tests can stop a grow or jadd at every kind of
//! point without racing a timer.
//!
//! `GFS2_TOOLS_KILL_AFTER_WRITES=N` makes the N-th device write (counting
//! from 1) the last: the process kills itself right after it. The
//! filesystem sees exactly what a `kill -9` at that moment leaves (the
//! writes done so far, in the page cache or on the medium, nothing more).
//! `GFS2_TOOLS_COUNT_WRITES=1` prints `device writes: N` on stderr at the
//! end instead, so that a test knows how many points there are. Without
//! either variable the device is used as it is.

use gfs2fuse::dev::claim::Claimant;
use gfs2fuse::dev::BlockDevice;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub const KILL_AFTER: &str = "GFS2_TOOLS_KILL_AFTER_WRITES";
pub const COUNT: &str = "GFS2_TOOLS_COUNT_WRITES";

static WRITES: AtomicU64 = AtomicU64::new(0);

struct Counted {
    inner: Arc<dyn BlockDevice>,
    kill_after: Option<u64>,
}

impl BlockDevice for Counted {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let r = self.inner.write_at(buf, offset);
        let n = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
        if self.kill_after == Some(n) {
            // SAFETY: kill(2) on our own pid with a valid signal number.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        r
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
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
    fn release(&self) {
        self.inner.release()
    }
}

/// `dev`, counted if the environment asks for it.
pub fn wrap(dev: Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
    let kill_after = std::env::var(KILL_AFTER)
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    if kill_after.is_none() && std::env::var_os(COUNT).is_none() {
        return dev;
    }
    Arc::new(Counted {
        inner: dev,
        kill_after,
    })
}

/// Print the write count if asked to (at the end of a run).
pub fn report() {
    if std::env::var_os(COUNT).is_some() {
        eprintln!("device writes: {}", WRITES.load(Ordering::SeqCst));
    }
}
