//! The write operations of [`Fs`]: create, mkdir, mknod, symlink, link,
//! unlink, rmdir, rename, write, setattr (chmod, chown, truncate, times),
//! fsync, and deallocation of unlinked inodes at last close.
//!
//! Each operation runs as one transaction with the exclusive glocks of the
//! inodes it changes, beside the transactions of other threads (the log
//! flush is their only meeting point, see [`Writer`]); its metadata becomes visible
//! when it returns and durable at the next log flush (fsync, the commit
//! timer, a full log, unmount). File data is written to the device before
//! the flush that makes it reachable (ordered mode).
//!
//! By what they touch: `txn` runs a transaction, `flush` makes
//! transactions durable (log flushes, group commit, checkpoints, statfs
//! folds), `namespace` changes names and inodes' lives (create, link,
//! unlink, rename, deallocation at last close), `file` a file's data and
//! attributes (write, truncate, setattr, fallocate, xattrs, `chattr`). The
//! mount's [`Writer`] state and the helpers they share are here.

mod file;
mod flush;
mod namespace;
mod txn;

pub use file::SetAttr;
pub(crate) use file::{without_suidgid, write_tx};

use crate::dev::BlockDevice;
use crate::error::{FsError, Result};
use crate::format::{dif, mt, Dinode, Inum, Rindex, StatfsChange, DINODE_SIZE};
use crate::fs::{Attr, Fs};
use crate::glock::Holder;
use crate::inode::dirops;
use crate::inode::write::{self, dinode, glock, put_dinode, Alloc};
use crate::log::trans::Txn;
use crate::log::writer::LogWriter;
use crate::rgrp;
use gfs2_lockproto::Mode;
use gfs2_lockproto::ResName;
use gfs2_ondisk::consts::{dt, format};
use gfs2_ondisk::{ifmt_to_dt, layout, BlockState};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, RwLock};

/// State of a writable mount.
///
/// Transactions run in parallel, each under the glocks of what it changes
/// (local holders of one glock exclude each other as other nodes do); the
/// log is where they meet, as in the kernel: every transaction holds the
/// flush lock shared from its first read to its publication (the kernel's
/// `sd_log_flush_lock`, taken for read in `gfs2_trans_begin`), a log flush
/// holds it exclusively, so a flush never sees half a transaction. A
/// finished transaction joins the dirty set under a short lock (`join`),
/// and fsyncs waiting for the log share one flush (group commit). A flush
/// holds the flush lock only to take its snapshot of the dirty set; the
/// journal writes and device flushes run under the log lock alone, while
/// new transactions go on. (The kernel holds `sd_log_flush_lock` through
/// its whole flush; here the snapshot is of immutable whole-block copies,
/// so a transaction that joins meanwhile makes new versions of the blocks,
/// left dirty for the next flush.)
pub struct Writer {
    /// The journal; taken by flushes and checkpoints only, before
    /// `flush_lock`, so that fsyncs queue here without holding up
    /// transactions, and find their changes flushed by the one before them.
    log: Mutex<LogState>,
    /// Shared by every transaction while it runs, exclusive for a flush.
    flush_lock: RwLock<()>,
    /// Joins a finished transaction to the dirty set (room in the log, its
    /// blocks, its statfs changes); counts the transactions joined.
    join: Mutex<u64>,
    /// For each inode, the count of the last joined transaction that
    /// changed a block under its glock (taken inside `join`): an fsync of
    /// it waits for that transaction only, as the kernel's fsync flushes the
    /// log only when the inode's glock has log work.
    changed: Mutex<HashMap<u64, u64>>,
    /// Metadata blocks one flush may carry (the log's capacity).
    capacity: usize,
    /// Blocks freed since the last log flush (not reused before it).
    busy: Mutex<HashSet<u64>>,
    /// Open handles per inode, and their iopen glocks.
    open: Opens,
    /// Resource groups sorted by address (replaced whole by a grow; each
    /// transaction allocates from the list it started with).
    rindex: RwLock<std::sync::Arc<Vec<Rindex>>>,
    /// The master statfs file.
    master_statfs: u64,
    /// This node's `statfs_changeN` (0 when the filesystem has none: then
    /// changes go to the master file directly).
    local_statfs: u64,
    /// The glock of `local_statfs`, held exclusively for the whole mount as
    /// the kernel holds it (`sd_sc_gh`): each transaction adds its
    /// allocation changes to that one block as it joins, under `join`,
    /// rather than every allocating transaction taking its glock in turn.
    /// Open to local readers (`GlockTable::acquire_open_to_readers`).
    statfs_gh: Mutex<Option<Holder>>,
}

/// The journal and how much of what was joined it holds durably.
struct LogState {
    log: LogWriter,
    /// Transactions joined (`Writer::join`) before the last flush.
    durable: u64,
}

/// Open handles per inode (unlinked inodes are freed at last close).
#[derive(Default)]
pub struct Opens(Mutex<OpenFiles>);

#[derive(Default)]
struct OpenFiles {
    count: HashMap<u64, u32>,
    /// The iopen glock (shared, uncached) of every inode with open handles:
    /// other nodes then know it is in use here. Whoever unlinks or closes an
    /// unlinked inode frees it only if it can take that glock exclusively,
    /// that is when no node has it open (the kernel's iopen protocol).
    iopen: HashMap<u64, Holder>,
}

impl Opens {
    fn lock(&self) -> std::sync::MutexGuard<'_, OpenFiles> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether inode `ino` has open handles on this node.
    pub fn contains_key(&self, ino: &u64) -> bool {
        self.lock().count.get(ino).is_some_and(|&n| n > 0)
    }
}

impl Writer {
    /// The write state of a mount: its journal `log`, the resource groups,
    /// the master statfs file, this node's statfs_change file and the
    /// holder of its glock (exclusive, kept until unmount).
    pub fn new(
        log: LogWriter,
        mut rindex: Vec<Rindex>,
        master_statfs: u64,
        local_statfs: u64,
        statfs_gh: Option<Holder>,
    ) -> Self {
        rindex.sort_by_key(|r| r.addr);
        Writer {
            capacity: log.capacity(),
            log: Mutex::new(LogState { log, durable: 0 }),
            flush_lock: RwLock::new(()),
            join: Mutex::new(0),
            changed: Mutex::default(),
            busy: Mutex::default(),
            open: Opens::default(),
            rindex: RwLock::new(std::sync::Arc::new(rindex)),
            master_statfs,
            local_statfs,
            statfs_gh: Mutex::new(statfs_gh),
        }
    }

    /// The resource groups, sorted by address.
    pub fn rindex(&self) -> std::sync::Arc<Vec<Rindex>> {
        self.rindex
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Allocate from `rindex` (sorted by address) from now on.
    pub(crate) fn set_rindex(&self, rindex: Vec<Rindex>) {
        *self.rindex.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(rindex);
    }

    /// The master statfs file and this node's statfs_change file (0 when
    /// the filesystem has none).
    pub fn statfs_files(&self) -> (u64, u64) {
        (self.master_statfs, self.local_statfs)
    }

    fn log(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flush_exclusive(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.flush_lock.write().unwrap_or_else(|e| e.into_inner())
    }

    fn joined(&self) -> std::sync::MutexGuard<'_, u64> {
        self.join.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.changed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn has_busy(&self) -> bool {
        !self.busy().is_empty()
    }

    fn busy(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

fn now() -> (u64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

fn touch_mc(di: &mut Dinode) {
    let (s, ns) = now();
    di.mtime = s;
    di.mtime_nsec = ns;
    di.ctime = s;
    di.ctime_nsec = ns;
}

fn touch_c(di: &mut Dinode) {
    let (s, ns) = now();
    di.ctime = s;
    di.ctime_nsec = ns;
}

/// The iopen glock of inode `ino`.
fn iopen_glock(ino: u64) -> ResName {
    ResName::new(gfs2_lockproto::lm_type::IOPEN, ino)
}

fn errno(e: i32) -> FsError {
    FsError::Errno(e)
}

/// The cluster's freeze lock.
fn freeze_glock() -> ResName {
    ResName::new(
        gfs2_lockproto::lm_type::NONDISK,
        crate::glock::ops::FREEZE_LOCK,
    )
}

/// The cluster's rename lock (the kernel's non-disk lock 3,
/// `GFS2_RENAME_LOCK`).
fn rename_glock() -> ResName {
    ResName::new(gfs2_lockproto::lm_type::NONDISK, 3)
}

/// Run `f` again while it finds that a name it looked up changed before
/// its glocks were held ([`FsError::Changed`]): each try sees another
/// node's change, so only a name changing under us hundreds of times in
/// a row gives up (EAGAIN).
fn retry_changed<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    for _ in 0..1000 {
        match f() {
            Err(FsError::Changed) => std::thread::yield_now(),
            r => return r,
        }
    }
    Err(FsError::Changed)
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(errno(libc::EINVAL));
    }
    if name.len() > gfs2_ondisk::FNAMESIZE {
        return Err(errno(libc::ENAMETOOLONG));
    }
    Ok(())
}
