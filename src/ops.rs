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

/// Pinned (logged, not yet in place) blocks beyond which a flush is
/// followed by a checkpoint, bounding memory.
const MAX_PINNED: usize = 16384;

/// Inodes remembered in `Writer::changed` beyond which those a flush made
/// durable are forgotten (an fsync of a forgotten one flushes what is
/// pending, as a plain sync does).
const MAX_CHANGED: usize = 4096;

/// What one log flush writes, taken from the dirty set while the flush
/// lock is held exclusively (no transaction half done).
struct FlushSnapshot {
    /// Transactions joined when it was taken.
    joined: u64,
    blocks: Vec<(u64, crate::buf::Block)>,
    jdata: Vec<(u64, crate::buf::Block)>,
    /// Blocks freed since the last flush (reusable once it is durable).
    freed: Vec<u64>,
    /// This node's statfs changes as of the snapshot.
    local_statfs: Option<[i64; 3]>,
}

/// What `setattr` changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<(i64, u32)>,
    pub mtime: Option<(i64, u32)>,
    /// The caller leaves killing privileges to us (FUSE's
    /// `FUSE_HANDLE_KILLPRIV_V2`): a change of owner or group of a
    /// non-directory clears set-user-ID, and set-group-ID if
    /// group-executable, as the kernel's `chown` does.
    pub killpriv: bool,
    /// `FATTR_KILL_SUIDGID`: the size change is by a caller without
    /// `CAP_FSETID`, so set-user-ID and set-group-ID go as for a write.
    pub kill_suidgid: bool,
}

/// `mode` without set-user-ID, and without set-group-ID if group-executable
/// (without group execute it means mandatory locking, which a write keeps):
/// what the kernel's `file_remove_privs` clears.
fn without_suidgid(mode: u32) -> u32 {
    let sgid_x = libc::S_ISGID | libc::S_IXGRP;
    let mut m = mode & !libc::S_ISUID;
    if mode & sgid_x == sgid_x {
        m &= !libc::S_ISGID;
    }
    m
}

/// What a write through FUSE must clear besides writing, the kernel leaving
/// it to us (`FUSE_HANDLE_KILLPRIV_V2`, which spares a `security.capability`
/// look-up round trip per write): the file's capabilities always, and with
/// `suidgid` (the writer lacks `CAP_FSETID`: `FUSE_WRITE_KILL_SUIDGID`) its
/// set-user-ID and set-group-ID bits, as `file_remove_privs` would. `di`:
/// the dinode as the write left it in the transaction.
fn kill_privs(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    ino: u64,
    mut di: Dinode,
    suidgid: bool,
) -> Result<()> {
    use crate::inode::{ea_write, xattr::EATYPE_SECURITY};
    if suidgid && without_suidgid(di.mode) != di.mode {
        di.mode = without_suidgid(di.mode);
        put_dinode(tx, &di)?;
    }
    let name = b"capability";
    if di.eattr != 0 && ea_write::get(tx, ino, EATYPE_SECURITY, name)?.is_some() {
        ea_write::set(
            tx,
            al,
            ino,
            EATYPE_SECURITY,
            name,
            None,
            ea_write::SetMode::Any,
        )?;
    }
    Ok(())
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

// The `FS_*_FL` inode flags of `chattr`/`lsattr` (linux/fs.h).
const FS_SYNC_FL: u32 = 0x0000_0008;
const FS_IMMUTABLE_FL: u32 = 0x0000_0010;
const FS_APPEND_FL: u32 = 0x0000_0020;
const FS_NOATIME_FL: u32 = 0x0000_0080;
const FS_INDEX_FL: u32 = 0x0000_1000;
const FS_JOURNAL_DATA_FL: u32 = 0x0000_4000;
const FS_TOPDIR_FL: u32 = 0x0002_0000;

/// Dinode flags and their `FS_*_FL` twins (the kernel's `gfs2_fileattr_get`);
/// journaled data is mapped apart (it means another bit on directories).
const FLAG_MAP: [(u32, u32); 6] = [
    (dif::SYNC, FS_SYNC_FL),
    (dif::IMMUTABLE, FS_IMMUTABLE_FL),
    (dif::APPENDONLY, FS_APPEND_FL),
    (dif::NOATIME, FS_NOATIME_FL),
    (dif::EXHASH, FS_INDEX_FL),
    (dif::TOPDIR, FS_TOPDIR_FL),
];

/// The dinode bit `chattr +j` stands for: new files inherit it on a
/// directory, the data is journaled on a file.
fn jdata_bit(di: &Dinode) -> u32 {
    if di.is_dir() {
        dif::INHERIT_JDATA
    } else {
        dif::JDATA
    }
}

/// GFS2 dinode flags as `FS_*_FL`.
fn fsflags_of(di: &Dinode) -> u32 {
    let mut f = FLAG_MAP
        .iter()
        .filter(|(d, _)| di.flags & d != 0)
        .fold(0, |f, (_, fl)| f | fl);
    if di.flags & jdata_bit(di) != 0 {
        f |= FS_JOURNAL_DATA_FL;
    }
    f
}

/// Whether inode `di` journals its file data (`GFS2_DIF_JDATA`).
fn is_jdata(di: &Dinode) -> bool {
    di.flags & dif::JDATA != 0 && !di.is_dir()
}

/// Write whole data block `blk` of inode `ino`: through the log for a
/// journaled-data file, straight to the device otherwise (ordered mode:
/// the log flush that makes it reachable flushes the device first).
fn put_data(
    tx: &mut Txn<'_>,
    dev: &dyn BlockDevice,
    jdata: bool,
    ino: u64,
    blk: u64,
    data: Vec<u8>,
) -> Result<()> {
    if jdata {
        tx.put_jdata(glock(ino), blk, data);
        return Ok(());
    }
    dev.write_at(&data, blk * u64::from(tx.bsize()))
        .map_err(|e| FsError::Io {
            what: format!("writing data block {blk} of inode {ino}"),
            source: e,
        })
}

/// The current content of data block `blk`: for a journaled-data file the
/// log may hold a newer version than the device.
fn get_data(tx: &Txn<'_>, dev: &dyn BlockDevice, jdata: bool, blk: u64) -> Result<Vec<u8>> {
    if jdata {
        if let Some(d) = tx.jdata_overlay(blk) {
            return Ok(d);
        }
    }
    let mut b = vec![0u8; tx.bsize() as usize];
    dev.read_at(&mut b, blk * u64::from(tx.bsize()))
        .map_err(|e| FsError::Io {
            what: format!("reading data block {blk}"),
            source: e,
        })?;
    Ok(b)
}

/// Write `data` at `offset` (or at the end of the file, `None`) of regular
/// file `ino` within transaction `tx`: the body of [`Fs::write`], shared
/// with writers of system files (the rindex of a grow) that must change
/// other files in the same transaction. Returns the updated dinode.
pub(crate) fn write_tx(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    dev: &dyn BlockDevice,
    ino: u64,
    at: Option<u64>,
    data: &[u8],
) -> Result<Dinode> {
    let bsize = tx.bsize();
    let bs = u64::from(bsize);
    let mut di = dinode(tx, ino)?;
    if di.is_dir() {
        return Err(errno(libc::EISDIR));
    }
    let offset = at.unwrap_or(di.size);
    let end = offset
        .checked_add(data.len() as u64)
        .filter(|e| *e <= i64::MAX as u64)
        .ok_or(errno(libc::EFBIG))?;
    if di.height == 0 && end <= layout::stuffed_max(bsize) {
        let b = tx.get_mut(glock(ino), ino, mt::DI)?;
        let s = DINODE_SIZE + offset as usize;
        b[s..s + data.len()].copy_from_slice(data);
        di = dinode(tx, ino)?;
    } else {
        if di.height == 0 {
            write::unstuff(tx, al, ino, dev)?;
        }
        write::ensure_height(tx, al, ino, end.div_ceil(bs))?;
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        let mut run_next = 0u64;
        let flush_run = |run: &mut Vec<u8>, start: u64| -> Result<()> {
            if !run.is_empty() {
                dev.write_at(run, start * bs).map_err(|e| FsError::Io {
                    what: format!("writing data of inode {ino}"),
                    source: e,
                })?;
                run.clear();
            }
            Ok(())
        };
        let jd = is_jdata(&di);
        if !jd && offset.is_multiple_of(bs) && end.is_multiple_of(bs) {
            // Whole blocks (every page-cache writeback, every aligned
            // O_DIRECT or 4 KiB write): each physical run goes to the
            // device straight from the request's buffer, with no copy and
            // no allocation per block.
            let first = offset / bs;
            let mut span: Option<(u64, u64, u64)> = None; // (lblock, phys, blocks)
            let put = |(lb, phys, n): (u64, u64, u64)| -> Result<()> {
                let at = ((lb - first) * bs) as usize;
                let src = &data[at..at + (n * bs) as usize];
                dev.write_at(src, phys * bs).map_err(|e| FsError::Io {
                    what: format!("writing data of inode {ino}"),
                    source: e,
                })
            };
            // Mapped (or allocated, holes as one extent each) a run at a
            // time, runs that continue on the disk written as one.
            let mut lb = first;
            while lb < end / bs {
                let (phys, len) = write::map_run(tx, al, ino, lb, end / bs - lb)?;
                span = match span {
                    Some((l, p, n)) if p + n == phys => Some((l, p, n + len)),
                    Some(done) => {
                        put(done)?;
                        Some((lb, phys, len))
                    }
                    None => Some((lb, phys, len)),
                };
                lb += len;
            }
            if let Some(done) = span {
                put(done)?;
            }
            di = dinode(tx, ino)?;
            di.size = di.size.max(end);
            touch_mc(&mut di);
            put_dinode(tx, &di)?;
            return Ok(di);
        }
        for lb in offset / bs..end.div_ceil(bs) {
            let (phys, new) = write::map(tx, al, ino, lb, true)?
                .ok_or_else(|| FsError::corrupt(ino, "allocation failed"))?;
            let bstart = lb * bs;
            let s = offset.max(bstart) - bstart;
            let e = end.min(bstart + bs) - bstart;
            let src = &data[(bstart + s - offset) as usize..(bstart + e - offset) as usize];
            let mut block = if s == 0 && e == bs {
                src.to_vec()
            } else {
                let mut b = if new {
                    vec![0u8; bsize as usize]
                } else {
                    get_data(tx, dev, jd, phys)?
                };
                b[s as usize..e as usize].copy_from_slice(src);
                b
            };
            if jd {
                put_data(tx, dev, jd, ino, phys, block)?;
                continue;
            }
            if run.is_empty() || phys != run_next {
                flush_run(&mut run, run_start)?;
                run_start = phys;
            }
            run.append(&mut block);
            run_next = phys + 1;
            if run.len() >= 8 << 20 {
                flush_run(&mut run, run_start)?;
                run_start = run_next;
            }
        }
        flush_run(&mut run, run_start)?;
        di = dinode(tx, ino)?;
    }
    di.size = di.size.max(end);
    touch_mc(&mut di);
    // Set-id bits and capabilities: the caller's (see `kill_privs`).
    put_dinode(tx, &di)?;
    Ok(di)
}

impl Fs {
    /// Run `f` as one transaction with the given inodes' glocks held
    /// exclusively, and whatever other glocks it turns out to need.
    ///
    /// Glocks are taken before the flush lock and in lock order (by type,
    /// then number: inodes before resource groups, as the kernel's
    /// `gfs2_glock_nq_m` sorts them), never while holding it: a demotion
    /// of one of our glocks that another node waits for flushes the log,
    /// which needs the flush lock exclusively, so no thread may wait on a
    /// glock while holding it shared. When the transaction reaches a block
    /// whose glock is not held (a resource group to allocate from, a new
    /// inode, the statfs files), it fails with [`FsError::NeedGlock`]; the
    /// transaction is dropped, the flush lock released, the glock taken
    /// (after letting go of every glock sorting after it, so the order
    /// holds) and `f` runs again from the start. Transactions of other
    /// threads run at the same time under glocks of their own.
    pub(crate) fn modify<T>(
        &self,
        inodes: &[u64],
        f: impl FnMut(&mut Txn<'_>, Alloc<'_>, &Opens) -> Result<T>,
    ) -> Result<T> {
        self.modify_as(inodes, true, None, f)
    }

    /// [`Fs::modify`] of the inode whose glock `pin` keeps (the pNFS layout
    /// service): its holder is taken under the pin, so neither the pin nor
    /// a demotion the pin holds back makes the transaction wait.
    pub(crate) fn modify_pinned<T>(
        &self,
        pin: &crate::glock::Pin,
        f: impl FnMut(&mut Txn<'_>, Alloc<'_>, &Opens) -> Result<T>,
    ) -> Result<T> {
        self.modify_as(&[pin.name().number], true, Some(pin), f)
    }

    /// [`Fs::modify`]; `freeze`: hold the freeze lock shared. Every
    /// transaction does, so a node freezing the filesystem (taking it
    /// exclusively) makes us write everything out and start no transaction
    /// until it thaws; the one exception is the statfs fold that the
    /// freeze itself runs while giving the lock up.
    fn modify_as<T>(
        &self,
        inodes: &[u64],
        freeze: bool,
        pin: Option<&crate::glock::Pin>,
        mut f: impl FnMut(&mut Txn<'_>, Alloc<'_>, &Opens) -> Result<T>,
    ) -> Result<T> {
        let w = self.writer().ok_or(errno(libc::EROFS))?;
        // Not on the freeze path: that runs on the glock worker thread,
        // which must never wait for a glock.
        if freeze {
            self.refresh_rindex()?;
        }
        let mut want: BTreeMap<ResName, Mode> =
            inodes.iter().map(|&i| (glock(i), Mode::EX)).collect();
        // It sorts before every other glock taken here.
        if freeze {
            want.insert(freeze_glock(), Mode::PR);
        }
        let mut holders: BTreeMap<ResName, Holder> = BTreeMap::new();
        let mut retried = false;
        loop {
            self.take_glocks(&want, &mut holders, pin)?;
            let held: HashMap<ResName, Mode> =
                holders.iter().map(|(n, h)| (*n, h.mode())).collect();
            let rindex = w.rindex();
            let running = w.flush_lock.read().unwrap_or_else(|e| e.into_inner());
            let mut tx = Txn::new(self.cache(), self.glocks(), held);
            let al = Alloc {
                rindex: &rindex,
                busy: &w.busy,
            };
            let r = match f(&mut tx, al, &w.open) {
                Ok(r) => r,
                Err(FsError::NeedGlock(name, mode)) => {
                    let m = want.entry(name).or_insert(mode);
                    *m = (*m).max(mode);
                    continue;
                }
                // Blocks freed since the last flush become usable after it,
                // as in the kernel, which flushes the log when it runs out.
                Err(e) if e.errno() == libc::ENOSPC && !retried && w.has_busy() => {
                    drop(tx);
                    drop(running);
                    self.flush_now(w)?;
                    retried = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if tx.statfs != Default::default() && w.local_statfs == 0 {
                // No statfs_change file: the master file takes the changes
                // in the transaction itself.
                let ino = w.master_statfs;
                let d = tx.statfs;
                let b = match tx.get_mut(glock(ino), ino, mt::DI) {
                    Ok(b) => b,
                    Err(FsError::NeedGlock(name, mode)) => {
                        want.insert(name, mode);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let mut sc = StatfsChange::parse(&b[DINODE_SIZE..])?;
                sc.total += d.total;
                sc.free += d.free;
                sc.dinodes += d.dinodes;
                sc.write(&mut b[DINODE_SIZE..])?;
                tx.statfs = Default::default();
            }
            // Join the log. What is dirty must fit one flush: a transaction
            // that would overflow it waits for a flush and runs again (the
            // kernel reserves log space before a transaction begins).
            let mut joined = w.joined();
            let dirty = self.cache().dirty_len();
            if dirty > 0 && dirty + tx.len() + 1 > w.capacity {
                drop(joined);
                drop(tx);
                drop(running);
                self.flush_now(w)?;
                continue;
            }
            if tx.statfs != Default::default() {
                // As in the kernel, allocation changes go to this node's
                // statfs_change file; statfs_sync folds them into the master.
                self.add_local_statfs(w, tx.statfs)?;
            }
            let taken = tx.take_holders();
            let changed = tx.changed_inodes();
            let freed = tx.publish();
            w.busy().extend(freed);
            *joined += 1;
            if !changed.is_empty() {
                let mut c = w.changed();
                for ino in changed {
                    c.insert(ino, *joined);
                }
            }
            drop(joined);
            drop(running);
            drop(taken);
            if self.cache().dirty_len() > w.capacity / 2 {
                self.flush_now(w)?;
            }
            drop(holders);
            return Ok(r);
        }
    }

    /// Add `d` to this node's statfs_change block (its glock is held for
    /// the whole mount); under `join`, as a transaction joins the log.
    fn add_local_statfs(&self, w: &Writer, d: crate::log::trans::StatfsDelta) -> Result<()> {
        let ino = w.local_statfs;
        let cur = self.cache().read_meta_as(glock(ino), ino, mt::DI)?;
        let mut b = cur.to_vec();
        let rest = b
            .get_mut(DINODE_SIZE..)
            .ok_or_else(|| FsError::corrupt(ino, "short statfs_change file"))?;
        let mut sc = StatfsChange::parse(rest)?;
        sc.total += d.total;
        sc.free += d.free;
        sc.dinodes += d.dinodes;
        sc.write(rest)?;
        self.cache()
            .put_dirty(glock(ino), ino, std::sync::Arc::from(b.into_boxed_slice()));
        Ok(())
    }

    /// This node's local statfs changes as they stand (its statfs_change
    /// file with every joined transaction), `None` when another file holds
    /// them or the mount does not write.
    pub(crate) fn local_statfs(&self, ino: u64) -> Option<Result<StatfsChange>> {
        let w = self.writer()?;
        if w.local_statfs == 0 || w.local_statfs != ino {
            return None;
        }
        let _joined = w.joined();
        Some(
            self.cache()
                .read_meta_as(glock(ino), ino, mt::DI)
                .and_then(|b| Ok(StatfsChange::parse(b.get(DINODE_SIZE..).unwrap_or(&[]))?)),
        )
    }

    /// Hold every glock of `want` in (at least) its mode, in lock order.
    /// `holders` keeps what is held already; a glock missing or held too
    /// weakly that sorts before a held one makes us let go of those after
    /// it first, so that glocks are always taken in ascending order.
    fn take_glocks(
        &self,
        want: &BTreeMap<ResName, Mode>,
        holders: &mut BTreeMap<ResName, Holder>,
        pin: Option<&crate::glock::Pin>,
    ) -> Result<()> {
        let first_missing = want
            .iter()
            .find(|(n, m)| holders.get(n).is_none_or(|h| h.mode() < **m))
            .map(|(n, _)| *n);
        let Some(mut first) = first_missing else {
            return Ok(());
        };
        'again: loop {
            // Everything from the first missing one on is (re)taken in order.
            drop(holders.split_off(&first));
            for (&name, &mode) in want.range(first..) {
                let h = match pin {
                    Some(p) if p.name() == name => self.glocks().acquire_pinned(p, mode)?,
                    _ => match self.glocks().acquire_unless_pinned(name, mode)? {
                        Some(h) => h,
                        None => {
                            // A pNFS layout keeps it: its owner was told.
                            // Wait holding nothing, since letting go may
                            // need a glock we hold (a statfs file's).
                            holders.clear();
                            self.glocks().wait_unpinned(name);
                            match want.keys().next() {
                                Some(f) => first = *f,
                                None => return Ok(()),
                            }
                            continue 'again;
                        }
                    },
                };
                holders.insert(name, h);
            }
            return Ok(());
        }
    }

    /// Flush the log now: wait for the transactions under way, keep new
    /// ones out while the snapshot is taken.
    fn flush_now(&self, w: &Writer) -> Result<()> {
        let mut log = w.log();
        self.flush_log(w, &mut log).map(|_| ())
    }

    /// A log flush with the log held (not the flush lock): the flush lock
    /// is taken exclusively for the snapshot only, so transactions run on
    /// while the journal is written; `true` if it wrote anything.
    fn flush_log(&self, w: &Writer, ls: &mut LogState) -> Result<bool> {
        let x = w.flush_exclusive();
        let snap = self.flush_snapshot(w, ls);
        drop(x);
        self.flush_write(w, ls, snap)
    }

    /// The log flush proper, with the log and the flush lock (exclusively)
    /// held; `true` if it wrote anything.
    fn flush_locked(&self, w: &Writer, ls: &mut LogState) -> Result<bool> {
        let snap = self.flush_snapshot(w, ls);
        self.flush_write(w, ls, snap)
    }

    /// What the next flush writes (see [`FlushSnapshot`]); the flush lock
    /// is held exclusively and the log is held. Freed blocks are dropped
    /// from the cache now: nothing may log them or write them in place.
    fn flush_snapshot(&self, w: &Writer, _log_held: &LogState) -> FlushSnapshot {
        let cache = self.cache();
        let joined = *w.joined();
        let mut freed: Vec<u64> = w.busy().iter().copied().collect();
        freed.sort_unstable();
        for &b in &freed {
            cache.drop_freed(b);
        }
        let (jdata, blocks): (Vec<_>, Vec<_>) = cache
            .dirty_blocks()
            .into_iter()
            .partition(|(b, _)| cache.is_jdata(*b));
        let local_statfs = (w.local_statfs != 0)
            .then(|| blocks.iter().find(|(b, _)| *b == w.local_statfs))
            .flatten()
            .and_then(|(_, b)| StatfsChange::parse(b.get(DINODE_SIZE..).unwrap_or(&[])).ok())
            .map(|sc| [sc.total, sc.free, sc.dinodes]);
        FlushSnapshot {
            joined,
            blocks,
            jdata,
            freed,
            local_statfs,
        }
    }

    /// Write `snap` to the journal (the log held, the flush lock not
    /// needed: transactions that join meanwhile change other versions of
    /// the blocks, which stay dirty for the next flush); `true` if it
    /// wrote anything.
    fn flush_write(&self, w: &Writer, ls: &mut LogState, snap: FlushSnapshot) -> Result<bool> {
        let cache = self.cache();
        let FlushSnapshot {
            joined,
            blocks,
            jdata,
            freed,
            local_statfs,
        } = snap;
        let mut revokes: Vec<u64> = freed
            .iter()
            .copied()
            .filter(|b| ls.log.is_logged(*b))
            .collect();
        if blocks.is_empty() && jdata.is_empty() && revokes.is_empty() {
            Self::forget_freed(w, &freed);
            Self::made_durable(w, ls, joined);
            return Ok(false);
        }
        if !ls.log.has_room(blocks.len() + jdata.len(), revokes.len()) {
            self.checkpoint_locked(ls)?;
            // Nothing is live in the log any more: no revokes needed.
            revokes.retain(|b| ls.log.is_logged(*b));
        }
        if let Some(l) = local_statfs {
            ls.log.set_local_statfs(l);
        }
        ls.log.flush(&blocks, &jdata, &revokes)?;
        cache.logged(&blocks);
        cache.logged(&jdata);
        Self::forget_freed(w, &freed);
        Self::made_durable(w, ls, joined);
        if ls.log.wants_checkpoint() || cache.pinned_len() > MAX_PINNED {
            self.checkpoint_locked(ls)?;
        }
        Ok(true)
    }

    /// The blocks a flush made free durably may be allocated again.
    fn forget_freed(w: &Writer, freed: &[u64]) {
        if freed.is_empty() {
            return;
        }
        let mut busy = w.busy();
        for b in freed {
            busy.remove(b);
        }
    }

    /// Transactions up to `joined` are durable.
    fn made_durable(w: &Writer, ls: &mut LogState, joined: u64) {
        ls.durable = ls.durable.max(joined);
        let mut c = w.changed();
        if c.len() > MAX_CHANGED {
            let durable = ls.durable;
            c.retain(|_, &mut n| n > durable);
        }
    }

    /// Write every logged block in place and move the log's tail past them.
    fn checkpoint_locked(&self, ls: &mut LogState) -> Result<()> {
        let ail = self.cache().pinned_blocks();
        ls.log.checkpoint(&ail)?;
        self.cache().unpin(&ail);
        Ok(())
    }

    /// Fold this node's statfs changes into the master statfs file and zero
    /// them, in one transaction under the master file's glock (the
    /// kernel's `gfs2_statfs_sync`, run every `statfs_quantum` and at
    /// unmount).
    pub fn statfs_sync(&self) -> Result<()> {
        self.fold_own_statfs(true)
    }

    /// [`Fs::statfs_sync`]; `freeze` as in [`Fs::modify_as`]. The local
    /// changes read are added to the master file and taken off the local
    /// file as the transaction joins, so that changes other transactions
    /// join meanwhile stay in the local file.
    fn fold_own_statfs(&self, freeze: bool) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        let (master, local) = (w.master_statfs, w.local_statfs);
        if local == 0 || master == 0 {
            return Ok(());
        }
        self.modify_as(&[master], freeze, None, |tx, _, _| {
            let l = match self.local_statfs(local) {
                Some(l) => l?,
                None => return Ok(()),
            };
            if l == StatfsChange::default() {
                return Ok(());
            }
            add_to_master(tx, master, &l)?;
            tx.statfs = crate::log::trans::StatfsDelta {
                total: -l.total,
                free: -l.free,
                dinodes: -l.dinodes,
            };
            Ok(())
        })
    }

    /// A dead node's journal was replayed: its local statfs changes (its
    /// `statfs_change` file as the replay left it) go into the master file
    /// like ours, under both files' glocks, which are free again now.
    pub(crate) fn fold_dead_statfs(&self, jid: u32) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        let master = w.master_statfs;
        let local = self.per_node_file(&format!("statfs_change{jid}"));
        if local == 0 || master == 0 || local == w.local_statfs {
            return Ok(());
        }
        self.modify_as(&[master, local], true, None, |tx, _, _| {
            let lb = tx.get(glock(local), local, mt::DI)?;
            let mut l = StatfsChange::parse(&lb[DINODE_SIZE..])?;
            if l == StatfsChange::default() {
                return Ok(());
            }
            add_to_master(tx, master, &l)?;
            l = StatfsChange::default();
            let b = tx.get_mut(glock(local), local, mt::DI)?;
            l.write(&mut b[DINODE_SIZE..])?;
            Ok(())
        })
    }

    /// Make everything done so far durable (syncfs, the commit timer).
    /// Group commit: a caller whose changes a flush that started after
    /// them has made durable returns at once, so syncs that wait for the
    /// log together share one flush.
    pub fn sync(&self) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        let mine = *w.joined();
        self.sync_upto(w, mine)
    }

    /// fsync of inode `ino`: the transactions that changed it are durable
    /// when this returns (its data is written before they join). Only
    /// when one of them is not yet is the log flushed, as the kernel's
    /// `gfs2_fsync` flushes the log for the inode's glock only; an inode
    /// this mount does not remember changing gets a plain [`Fs::sync`].
    pub fn fsync(&self, ino: u64) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        let mine = w.changed().get(&ino).copied();
        match mine {
            Some(n) => self.sync_upto(w, n),
            None => self.sync(),
        }
    }

    /// Make the transactions up to the `mine`th joined durable.
    fn sync_upto(&self, w: &Writer, mine: u64) -> Result<()> {
        let mut log = w.log();
        if log.durable >= mine && mine > 0 {
            return Ok(());
        }
        let wrote = self.flush_log(w, &mut log)?;
        drop(log);
        if wrote {
            // The flush ended with a device flush of its own.
            return Ok(());
        }
        self.device().flush().map_err(|e| FsError::Io {
            what: "flushing the device".into(),
            source: e,
        })
    }

    /// Before an inode or rgrp glock held exclusively goes to another node:
    /// every change in the log and in place, durably, because the other node
    /// reads the blocks where they live, not in our journal.
    pub(crate) fn flush_for_demote(&self) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        let mut log = w.log();
        let _x = w.flush_exclusive();
        // Every transaction joined was flushed (each flush ends with a
        // device flush, and file data is written before its transaction
        // joins): nothing reached the device since (the kernel syncs a
        // glock only when it has dirty data or log work, `GLF_DIRTY`).
        // Without this, an unmount flushed the device once per glock held
        // exclusively.
        let pending = log.durable < *w.joined();
        let wrote = self.flush_locked(w, &mut log)?;
        let pinned = self.cache().pinned_len() > 0;
        // A checkpoint of pinned blocks ends with a device flush too.
        self.checkpoint_locked(&mut log)?;
        if wrote || pinned || !pending {
            return Ok(());
        }
        self.device().flush().map_err(|e| FsError::Io {
            what: "flushing the device".into(),
            source: e,
        })
    }

    /// Flush the log and write everything in place (before a file changes
    /// between ordered and journaled data, as the kernel does).
    pub fn checkpoint(&self) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        let mut log = w.log();
        let _x = w.flush_exclusive();
        self.flush_locked(w, &mut log)?;
        self.checkpoint_locked(&mut log)
    }

    /// The inode's flags as `FS_IOC_GETFLAGS` reports them (`lsattr`).
    pub fn fsflags(&self, ino: u64) -> Result<u32> {
        self.with_inode(ino, |_, ip| Ok(fsflags_of(&ip.di)))
    }

    /// `FS_IOC_SETFLAGS` (`chattr`): journaled data (`+j`: a regular file's
    /// data goes through the log; on a directory, new files inherit it),
    /// `+S` synchronous writes, `+A` no atime, `+T` top directory. The
    /// immutable and append-only flags are refused (EOPNOTSUPP): nothing
    /// here would enforce them.
    pub fn set_fsflags(&self, ino: u64, uid: u32, fs: u32) -> Result<()> {
        let cur = self.with_inode(ino, |_, ip| Ok(ip.di))?;
        if uid != 0 && uid != cur.uid {
            return Err(errno(libc::EPERM));
        }
        if (fs ^ fsflags_of(&cur)) & (FS_IMMUTABLE_FL | FS_APPEND_FL) != 0 {
            return Err(errno(libc::EOPNOTSUPP));
        }
        // The dinode bits chattr may change, and what they become.
        let jflag = jdata_bit(&cur);
        let mask = dif::SYNC | dif::NOATIME | dif::TOPDIR | jflag;
        let mut want = FLAG_MAP
            .iter()
            .filter(|(d, fl)| mask & d != 0 && fs & fl != 0)
            .fold(0, |w, (d, _)| w | d);
        if fs & FS_JOURNAL_DATA_FL != 0 {
            want |= jflag;
        }
        if want & dif::TOPDIR != 0 && !cur.is_dir() {
            return Err(errno(libc::EINVAL));
        }
        let known = FS_SYNC_FL
            | FS_NOATIME_FL
            | FS_JOURNAL_DATA_FL
            | FS_TOPDIR_FL
            | FS_INDEX_FL
            | FS_IMMUTABLE_FL
            | FS_APPEND_FL;
        if fs & !known != 0 {
            return Err(errno(libc::EOPNOTSUPP));
        }
        let flags = (cur.flags & !mask) | want;
        if flags == cur.flags {
            return Ok(());
        }
        if (flags ^ cur.flags) & dif::JDATA != 0 {
            // No journaled block of this file may stay pinned once its
            // writes go straight to the device, and ordered data must be
            // in place before the log starts carrying newer versions.
            self.checkpoint()?;
        }
        self.modify(&[ino], |tx, _, _| {
            let mut di = dinode(tx, ino)?;
            di.flags = (di.flags & !mask) | want;
            touch_c(&mut di);
            put_dinode(tx, &di)
        })
    }

    /// Before the freeze lock goes to a node freezing the filesystem: our
    /// statfs changes in the master file, everything in place, and a clean
    /// header in our journal (the kernel checks that its journal is clean
    /// when it thaws), so the frozen disk is complete as it stands.
    pub(crate) fn sync_for_freeze(&self) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        self.fold_own_statfs(false)?;
        let mut log = w.log();
        let _x = w.flush_exclusive();
        self.flush_locked(w, &mut log)?;
        self.checkpoint_locked(&mut log)?;
        log.log.write_freeze()
    }

    /// Flush and leave the journal clean (unmount); the statfs_change
    /// file's glock goes with it.
    pub(crate) fn sync_and_close_log(&self) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        self.statfs_sync()?;
        let mut log = w.log();
        let x = w.flush_exclusive();
        self.flush_locked(w, &mut log)?;
        self.checkpoint_locked(&mut log)?;
        log.log.write_unmount()?;
        drop(x);
        drop(log);
        drop(w.statfs_gh.lock().unwrap_or_else(|e| e.into_inner()).take());
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn new_inode(
        &self,
        tx: &mut Txn<'_>,
        al: Alloc<'_>,
        parent: u64,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
    ) -> Result<Dinode> {
        let pdi = dinode(tx, parent)?;
        let (addr, generation) = rgrp::alloc(tx, al.rindex, al.busy, parent, BlockState::Dinode)?;
        let (s, ns) = now();
        let is_dir = mode & S_IFMT == S_IFDIR;
        let mut mode = mode;
        let mut gid = gid;
        if pdi.mode & libc::S_ISGID != 0 {
            gid = pdi.gid;
            if is_dir {
                mode |= libc::S_ISGID;
            }
        }
        let mut flags = 0;
        if is_dir {
            flags |= dif::JDATA | (pdi.flags & dif::INHERIT_JDATA);
        } else if mode & S_IFMT == 0o100000 && pdi.flags & dif::INHERIT_JDATA != 0 {
            // A regular file in a directory marked `chattr +j` journals its data.
            flags |= dif::JDATA;
        }
        let bsize = tx.bsize();
        let di = Dinode {
            num: Inum {
                formal_ino: generation,
                addr,
            },
            mode,
            uid,
            gid,
            nlink: if is_dir { 2 } else { 1 },
            size: if is_dir {
                layout::stuffed_max(bsize)
            } else {
                0
            },
            blocks: 1,
            atime: s,
            mtime: s,
            ctime: s,
            atime_nsec: ns,
            mtime_nsec: ns,
            ctime_nsec: ns,
            major: (rdev >> 8) & 0xfff,
            minor: (rdev & 0xff) | ((rdev >> 12) & !0xff),
            goal_meta: addr,
            goal_data: addr,
            generation,
            flags,
            payload_format: if is_dir { format::DE } else { 0 },
            entries: if is_dir { 2 } else { 0 },
            ..Dinode::default()
        };
        // The new inode's glock, exclusively, before anything of it is
        // cached (the kernel's gfs2_create_inode does the same).
        tx.require(glock(addr), Mode::EX)?;
        let b = tx.new_meta(glock(addr), addr, mt::DI, format::DI);
        di.write(b)?;
        if is_dir {
            dirops::init_dir_block(b, di.num, pdi.num)?;
        }
        Ok(di)
    }

    /// Create a file, device node, FIFO, socket or directory `name` in
    /// `parent`; returns its attributes.
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        symlink: Option<&[u8]>,
    ) -> Result<Attr> {
        check_name(name)?;
        let dev = self.device().clone();
        let ino = self.modify(&[parent], |tx, al, _| {
            let pdi = dinode(tx, parent)?;
            if !pdi.is_dir() {
                return Err(errno(libc::ENOTDIR));
            }
            if pdi.nlink == 0 {
                return Err(errno(libc::ENOENT));
            }
            if dirops::find(tx, al, parent, name)?.is_some() {
                return Err(errno(libc::EEXIST));
            }
            let is_dir = mode & S_IFMT == S_IFDIR;
            if let Some(t) = symlink {
                if t.is_empty() {
                    return Err(errno(libc::ENOENT));
                }
                if t.len() as u64 >= layout::stuffed_max(tx.bsize()) {
                    return Err(errno(libc::ENAMETOOLONG));
                }
            }
            // The umask applies unless a default ACL takes its place.
            let inherits = self.options().acl
                && symlink.is_none()
                && crate::inode::ea_write::get(
                    tx,
                    parent,
                    crate::inode::xattr::EATYPE_SYS,
                    b"posix_acl_default",
                )?
                .is_some();
            let mode = if inherits {
                mode
            } else {
                mode & !(umask & 0o777)
            };
            let mut di = self.new_inode(tx, al, parent, mode, uid, gid, rdev)?;
            if inherits {
                Self::inherit_acl(tx, al, parent, &mut di)?;
            }
            if let Some(t) = symlink {
                di.size = t.len() as u64;
                put_dinode(tx, &di)?;
                let b = tx.get_mut(glock(di.num.addr), di.num.addr, mt::DI)?;
                b[DINODE_SIZE..DINODE_SIZE + t.len()].copy_from_slice(t);
            }
            dirops::add(tx, al, parent, name, di.num, ifmt_to_dt(mode), dev.as_ref())?;
            let mut pdi = dinode(tx, parent)?;
            if is_dir {
                pdi.nlink += 1;
            }
            touch_mc(&mut pdi);
            put_dinode(tx, &pdi)?;
            Ok(di.num.addr)
        })?;
        self.getattr(ino)
    }

    /// Give a new inode its directory's default ACL (see [`crate::inode::acl`]).
    fn inherit_acl(tx: &mut Txn<'_>, al: Alloc<'_>, parent: u64, di: &mut Dinode) -> Result<()> {
        use crate::inode::{acl, ea_write, xattr::EATYPE_SYS};
        let Some(def) = ea_write::get(tx, parent, EATYPE_SYS, b"posix_acl_default")? else {
            return Ok(());
        };
        let Some((mode, access)) = acl::inherit(&def, di.mode) else {
            return Ok(());
        };
        di.mode = mode;
        put_dinode(tx, di)?;
        let ino = di.num.addr;
        if let Some(a) = access {
            ea_write::set(
                tx,
                al,
                ino,
                EATYPE_SYS,
                b"posix_acl_access",
                Some(&a),
                ea_write::SetMode::Any,
            )?;
        }
        if di.is_dir() {
            ea_write::set(
                tx,
                al,
                ino,
                EATYPE_SYS,
                b"posix_acl_default",
                Some(&def),
                ea_write::SetMode::Any,
            )?;
        }
        *di = dinode(tx, ino)?;
        Ok(())
    }

    /// `symlink`: `name` in `parent` pointing at `target`.
    pub fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        self.mknod(parent, name, S_IFLNK | 0o777, 0, uid, gid, 0, Some(target))
    }

    /// `link`: a new name for `ino`.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> Result<Attr> {
        check_name(name)?;
        let dev = self.device().clone();
        self.modify(&[ino, parent], |tx, al, _| {
            let pdi = dinode(tx, parent)?;
            if !pdi.is_dir() {
                return Err(errno(libc::ENOTDIR));
            }
            let mut di = dinode(tx, ino)?;
            if di.is_dir() {
                return Err(errno(libc::EPERM));
            }
            if di.nlink == 0 {
                return Err(errno(libc::ENOENT));
            }
            if di.nlink >= u32::MAX - 1 {
                return Err(errno(libc::EMLINK));
            }
            if dirops::find(tx, al, parent, name)?.is_some() {
                return Err(errno(libc::EEXIST));
            }
            dirops::add(
                tx,
                al,
                parent,
                name,
                di.num,
                ifmt_to_dt(di.mode),
                dev.as_ref(),
            )?;
            di.nlink += 1;
            touch_c(&mut di);
            put_dinode(tx, &di)?;
            let mut pdi = dinode(tx, parent)?;
            touch_mc(&mut pdi);
            put_dinode(tx, &pdi)
        })?;
        self.getattr(ino)
    }

    /// Free an inode and everything it owns.
    fn dealloc(tx: &mut Txn<'_>, al: Alloc<'_>, ino: u64) -> Result<()> {
        let di = dinode(tx, ino)?;
        if di.is_dir() {
            for leaf in dirops::leaves(tx, al, ino)? {
                rgrp::free(tx, al.rindex, leaf)?;
            }
        }
        write::free_from(tx, al, ino, 0)?;
        crate::inode::ea_write::free_all(tx, al, ino)?;
        rgrp::free(tx, al.rindex, ino)
    }

    /// Drop one link of `ino` (already removed from its directory): free
    /// it now, or mark it unlinked if it is still open.
    fn drop_link(
        tx: &mut Txn<'_>,
        al: Alloc<'_>,
        open: &Opens,
        ino: u64,
        whole_dir: bool,
    ) -> Result<()> {
        let mut di = dinode(tx, ino)?;
        di.nlink = if whole_dir {
            0
        } else {
            di.nlink.saturating_sub(1)
        };
        touch_c(&mut di);
        put_dinode(tx, &di)?;
        if di.nlink == 0 {
            let open_here = open.contains_key(&ino);
            if !open_here && tx.try_take_uncached(iopen_glock(ino), Mode::EX)? {
                Self::dealloc(tx, al, ino)?;
            } else {
                // Open here or on another node: the last to close frees it.
                rgrp::set_dinode_state(tx, al.rindex, ino, BlockState::Unlinked)?;
            }
        }
        Ok(())
    }

    /// `unlink` (`dir == false`) or `rmdir` (`dir == true`).
    pub fn remove(&self, parent: u64, name: &[u8], dir: bool) -> Result<()> {
        check_name(name)?;
        retry_changed(|| self.remove_once(parent, name, dir))
    }

    fn remove_once(&self, parent: u64, name: &[u8], dir: bool) -> Result<()> {
        // Which inode to lock with the directory (the transaction finds the
        // name again under both glocks).
        let target = self
            .with_inode(parent, |m, ip| crate::inode::dir::lookup(m, ip, name))?
            .ok_or(FsError::Errno(libc::ENOENT))?
            .ino;
        let unopened = self
            .writer()
            .map(|w| !w.open.contains_key(&target))
            .unwrap_or(false);
        if !dir && unopened && self.is_single_node() {
            let ta = self.getattr(target)?;
            if ta.nlink == 1 {
                // Its data goes with it: free it in bounded transactions
                // first. (In a cluster another node may have it open: the
                // last to close it frees it whole, see drop_link.)
                self.free_tail_in_chunks(target, &ta, 0)?;
            }
        }
        self.modify(&[parent, target], |tx, al, open| {
            let (inum, _) = dirops::find(tx, al, parent, name)?.ok_or(errno(libc::ENOENT))?;
            if inum.addr != target {
                return Err(FsError::Changed);
            }
            let di = dinode(tx, target)?;
            if dir && !di.is_dir() {
                return Err(errno(libc::ENOTDIR));
            }
            if !dir && di.is_dir() {
                return Err(errno(libc::EISDIR));
            }
            if dir && di.entries > 2 {
                return Err(errno(libc::ENOTEMPTY));
            }
            dirops::remove(tx, al, parent, name)?;
            let mut pdi = dinode(tx, parent)?;
            if dir {
                pdi.nlink = pdi.nlink.saturating_sub(1);
            }
            touch_mc(&mut pdi);
            put_dinode(tx, &pdi)?;
            Self::drop_link(tx, al, open, target, dir)
        })
    }

    /// Whether `ancestor` is `ino` or one of its ancestors (via "..").
    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> Result<bool> {
        for _ in 0..4096 {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == self.root() {
                return Ok(false);
            }
            let up = self.lookup(ino, b"..")?.ino;
            if up == ino {
                return Ok(false);
            }
            ino = up;
        }
        Err(FsError::corrupt(ino, "directory tree too deep or looping"))
    }

    /// `rename`, with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.
    pub fn rename(
        &self,
        sparent: u64,
        sname: &[u8],
        dparent: u64,
        dname: &[u8],
        flags: u32,
    ) -> Result<()> {
        check_name(sname)?;
        check_name(dname)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(errno(libc::EINVAL));
        }
        // As the kernel: a rename between directories holds the cluster's
        // rename lock, so that no other node moves a directory while this
        // one checks that the move does not put a directory under itself.
        let _rename_gh = if sparent != dparent {
            Some(self.glocks().acquire(rename_glock(), Mode::EX)?)
        } else {
            None
        };
        retry_changed(|| self.rename_once(sparent, sname, dparent, dname, flags))
    }

    fn rename_once(
        &self,
        sparent: u64,
        sname: &[u8],
        dparent: u64,
        dname: &[u8],
        flags: u32,
    ) -> Result<()> {
        let src = self.lookup(sparent, sname)?;
        let dst = match self.lookup(dparent, dname) {
            Ok(a) => Some(a),
            Err(e) if e.errno() == libc::ENOENT => None,
            Err(e) => return Err(e),
        };
        if dst.is_some() && flags & RENAME_NOREPLACE != 0 {
            return Err(errno(libc::EEXIST));
        }
        if dst.is_none() && flags & RENAME_EXCHANGE != 0 {
            return Err(errno(libc::ENOENT));
        }
        let src_dir = src.mode & S_IFMT == S_IFDIR;
        // Moving a directory under itself would cut it off the tree.
        if src_dir && sparent != dparent && self.is_ancestor(src.ino, dparent)? {
            return Err(errno(libc::EINVAL));
        }
        if let Some(d) = &dst {
            if d.mode & S_IFMT == S_IFDIR
                && flags & RENAME_EXCHANGE != 0
                && sparent != dparent
                && self.is_ancestor(d.ino, sparent)?
            {
                return Err(errno(libc::EINVAL));
            }
            if d.ino == src.ino {
                return Ok(());
            }
        }
        let dev = self.device().clone();
        let mut locks = vec![sparent, dparent, src.ino];
        if let Some(d) = &dst {
            locks.push(d.ino);
        }
        self.modify(&locks, |tx, al, open| {
            let (sinum, stype) =
                dirops::find(tx, al, sparent, sname)?.ok_or(errno(libc::ENOENT))?;
            if sinum.addr != src.ino {
                return Err(FsError::Changed);
            }
            let sdi = dinode(tx, src.ino)?;
            if flags & RENAME_EXCHANGE != 0 {
                let d = dst.ok_or(errno(libc::ENOENT))?;
                let (dinum, dtype) =
                    dirops::find(tx, al, dparent, dname)?.ok_or(errno(libc::ENOENT))?;
                let ddi = dinode(tx, d.ino)?;
                dirops::retarget(tx, al, sparent, sname, dinum, dtype)?;
                dirops::retarget(tx, al, dparent, dname, sinum, stype)?;
                if sparent != dparent {
                    let pdi_s = dinode(tx, sparent)?;
                    let pdi_d = dinode(tx, dparent)?;
                    if sdi.is_dir() {
                        dirops::retarget(tx, al, src.ino, b"..", pdi_d.num, dt::DIR)?;
                    }
                    if ddi.is_dir() {
                        dirops::retarget(tx, al, d.ino, b"..", pdi_s.num, dt::DIR)?;
                    }
                    let delta = i64::from(sdi.is_dir()) - i64::from(ddi.is_dir());
                    let mut ps = dinode(tx, sparent)?;
                    ps.nlink = (i64::from(ps.nlink) - delta) as u32;
                    touch_mc(&mut ps);
                    put_dinode(tx, &ps)?;
                    let mut pd = dinode(tx, dparent)?;
                    pd.nlink = (i64::from(pd.nlink) + delta) as u32;
                    touch_mc(&mut pd);
                    put_dinode(tx, &pd)?;
                } else {
                    let mut p = dinode(tx, sparent)?;
                    touch_mc(&mut p);
                    put_dinode(tx, &p)?;
                }
                for ino in [src.ino, d.ino] {
                    let mut x = dinode(tx, ino)?;
                    touch_c(&mut x);
                    put_dinode(tx, &x)?;
                }
                return Ok(());
            }
            if let Some(d) = &dst {
                let (dinum, _) =
                    dirops::find(tx, al, dparent, dname)?.ok_or(errno(libc::ENOENT))?;
                if dinum.addr != d.ino {
                    return Err(FsError::Changed);
                }
                let ddi = dinode(tx, d.ino)?;
                match (sdi.is_dir(), ddi.is_dir()) {
                    (true, false) => return Err(errno(libc::ENOTDIR)),
                    (false, true) => return Err(errno(libc::EISDIR)),
                    (true, true) if ddi.entries > 2 => return Err(errno(libc::ENOTEMPTY)),
                    _ => {}
                }
                dirops::remove(tx, al, dparent, dname)?;
                if ddi.is_dir() {
                    let mut pd = dinode(tx, dparent)?;
                    pd.nlink = pd.nlink.saturating_sub(1);
                    put_dinode(tx, &pd)?;
                }
                Self::drop_link(tx, al, open, d.ino, ddi.is_dir())?;
            }
            if dst.is_none() && dirops::find(tx, al, dparent, dname)?.is_some() {
                return Err(FsError::Changed);
            }
            dirops::remove(tx, al, sparent, sname)?;
            dirops::add(tx, al, dparent, dname, sinum, stype, dev.as_ref())?;
            if sdi.is_dir() && sparent != dparent {
                let pd_num = dinode(tx, dparent)?.num;
                dirops::retarget(tx, al, src.ino, b"..", pd_num, dt::DIR)?;
                let mut ps = dinode(tx, sparent)?;
                ps.nlink = ps.nlink.saturating_sub(1);
                put_dinode(tx, &ps)?;
                let mut pd = dinode(tx, dparent)?;
                pd.nlink += 1;
                put_dinode(tx, &pd)?;
            }
            for p in [sparent, dparent] {
                let mut x = dinode(tx, p)?;
                touch_mc(&mut x);
                put_dinode(tx, &x)?;
            }
            let mut s = dinode(tx, src.ino)?;
            touch_c(&mut s);
            put_dinode(tx, &s)
        })
    }

    /// Write `data` at `offset` of regular file `ino`; returns bytes written.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_at(ino, Some(offset), data, None)
    }

    /// A write through FUSE with `FUSE_HANDLE_KILLPRIV_V2`: at `offset`, or
    /// at the end of the file (`None`, `O_APPEND`), clearing what
    /// [`kill_privs`] says (`kill_suidgid`: `FUSE_WRITE_KILL_SUIDGID`).
    pub fn write_killing_privs(
        &self,
        ino: u64,
        offset: Option<u64>,
        data: &[u8],
        kill_suidgid: bool,
    ) -> Result<usize> {
        self.write_at(ino, offset, data, Some(kill_suidgid))
    }

    /// Append `data` at the end of file `ino` as it is on disk when the
    /// inode's glock is held exclusively (`O_APPEND`). The kernel's own
    /// append offset comes from its cached size, which another node may
    /// have moved since: only the holder of the glock knows the end.
    pub fn append(&self, ino: u64, data: &[u8]) -> Result<usize> {
        self.write_at(ino, None, data, None)
    }

    /// Write at `offset`, or at the end of the file (`None`); with `kill`,
    /// clear privileges as [`kill_privs`] says.
    fn write_at(
        &self,
        ino: u64,
        at: Option<u64>,
        data: &[u8],
        kill: Option<bool>,
    ) -> Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        // One transaction per MiB: a journaled-data write must fit a flush.
        const CHUNK: usize = 1 << 20;
        if data.len() > CHUNK {
            let mut done = 0;
            for piece in data.chunks(CHUNK) {
                done += self.write_at(ino, at.map(|o| o + done as u64), piece, kill)?;
            }
            return Ok(done);
        }
        let dev = self.device().clone();
        let sync = self.modify(&[ino], |tx, al, _| {
            let di = write_tx(tx, al, dev.as_ref(), ino, at, data)?;
            let sync = di.flags & dif::SYNC != 0;
            if let Some(suidgid) = kill {
                kill_privs(tx, al, ino, di, suidgid)?;
            }
            Ok(sync)
        })?;
        if sync {
            // `chattr +S`: every write is durable when it returns.
            self.sync()?;
        }
        Ok(data.len())
    }

    fn truncate(
        tx: &mut Txn<'_>,
        al: Alloc<'_>,
        ino: u64,
        size: u64,
        dev: &dyn crate::dev::BlockDevice,
    ) -> Result<()> {
        let bsize = tx.bsize();
        let bs = u64::from(bsize);
        let di = dinode(tx, ino)?;
        if di.is_dir() {
            return Err(errno(libc::EISDIR));
        }
        let old = di.size;
        if di.height == 0 {
            if size <= layout::stuffed_max(bsize) {
                if size < old {
                    let b = tx.get_mut(glock(ino), ino, mt::DI)?;
                    let hi = (DINODE_SIZE as u64 + old).min(b.len() as u64) as usize;
                    b[DINODE_SIZE + size as usize..hi].fill(0);
                }
            } else {
                write::unstuff(tx, al, ino, dev)?;
                write::ensure_height(tx, al, ino, size.div_ceil(bs))?;
            }
        } else if size < old {
            write::free_from(tx, al, ino, size.div_ceil(bs))?;
            if size & (bs - 1) != 0 {
                if let Some((blk, _)) = write::map(tx, al, ino, size / bs, false)? {
                    let jd = is_jdata(&dinode(tx, ino)?);
                    let mut b = get_data(tx, dev, jd, blk)?;
                    b[(size % bs) as usize..].fill(0);
                    put_data(tx, dev, jd, ino, blk, b)?;
                }
            }
        } else if size > old {
            write::ensure_height(tx, al, ino, size.div_ceil(bs))?;
        }
        let mut di = dinode(tx, ino)?;
        di.size = size;
        if size != old {
            touch_mc(&mut di);
        }
        put_dinode(tx, &di)
    }

    /// `setattr`: mode, owner, size, times; ctime is updated.
    pub fn setattr(&self, ino: u64, a: SetAttr) -> Result<Attr> {
        if let Some(size) = a.size {
            self.free_tail_in_chunks(ino, &self.getattr(ino)?, size)?;
        }
        let dev = self.device().clone();
        self.modify(&[ino], |tx, al, _| {
            if let Some(size) = a.size {
                Self::truncate(tx, al, ino, size, dev.as_ref())?;
            }
            let mut di = dinode(tx, ino)?;
            if let Some(m) = a.mode {
                di.mode = (di.mode & S_IFMT) | (m & !S_IFMT);
                if self.options().acl {
                    use crate::inode::{acl, ea_write, xattr::EATYPE_SYS};
                    let name = b"posix_acl_access";
                    if let Some(old) = ea_write::get(tx, ino, EATYPE_SYS, name)? {
                        if let Some(new) = acl::chmod(&old, di.mode) {
                            put_dinode(tx, &di)?;
                            ea_write::set(
                                tx,
                                al,
                                ino,
                                EATYPE_SYS,
                                name,
                                Some(&new),
                                ea_write::SetMode::Any,
                            )?;
                            let mode = di.mode;
                            di = dinode(tx, ino)?;
                            di.mode = mode;
                        }
                    }
                }
            }
            if let Some(u) = a.uid {
                di.uid = u;
            }
            if let Some(g) = a.gid {
                di.gid = g;
            }
            let chown = a.killpriv && (a.uid.is_some() || a.gid.is_some()) && a.mode.is_none();
            if !di.is_dir() && (chown || (a.kill_suidgid && a.size.is_some())) {
                di.mode = without_suidgid(di.mode);
            }
            if let Some((s, ns)) = a.atime {
                di.atime = s as u64;
                di.atime_nsec = ns;
            }
            if let Some((s, ns)) = a.mtime {
                di.mtime = s as u64;
                di.mtime_nsec = ns;
            }
            touch_c(&mut di);
            put_dinode(tx, &di)
        })?;
        self.getattr(ino)
    }

    /// A file handle was opened on `ino`.
    pub fn open_inode(&self, ino: u64) {
        if let Some(w) = self.writer() {
            // Taken before anything else: it may wait for another node.
            let h = match self.glocks().acquire_uncached(iopen_glock(ino), Mode::PR) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::error!("iopen glock of inode {ino}: {e}");
                    None
                }
            };
            let mut o = w.open.lock();
            *o.count.entry(ino).or_default() += 1;
            if let Some(h) = h {
                o.iopen.entry(ino).or_insert(h);
            }
        }
    }

    /// A file handle on `ino` was closed: an unlinked inode goes with its
    /// last handle.
    pub fn release_inode(&self, ino: u64) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        let (last, iopen) = {
            let mut o = w.open.lock();
            match o.count.get_mut(&ino) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    (false, None)
                }
                Some(_) => {
                    o.count.remove(&ino);
                    (true, o.iopen.remove(&ino))
                }
                None => (false, None),
            }
        };
        drop(iopen);
        if !last {
            return Ok(());
        }
        // Only an unlinked inode has anything to do, and most closes are of
        // linked ones: look under a shared glock first, so that closing a
        // file does not take it exclusively from every other node that
        // caches it (the kernel, too, decides at eviction, from nlink).
        if self.with_inode(ino, |_, ip| Ok(ip.di.nlink))? > 0 {
            return Ok(());
        }
        self.modify(&[ino], |tx, al, open| {
            if open.contains_key(&ino) {
                return Ok(());
            }
            let di = dinode(tx, ino)?;
            if di.nlink == 0
                && rgrp::state(tx, al.rindex, ino)? == BlockState::Unlinked
                && tx.try_take_uncached(iopen_glock(ino), Mode::EX)?
            {
                Self::dealloc(tx, al, ino)?;
            }
            Ok(())
        })
    }

    /// `setxattr` (`value = Some`) or `removexattr` (`None`) of a full name
    /// with its namespace prefix. `flags`: `XATTR_CREATE`, `XATTR_REPLACE`.
    pub fn set_xattr(&self, ino: u64, name: &[u8], value: Option<&[u8]>, flags: i32) -> Result<()> {
        use crate::inode::ea_write::{self, SetMode};
        use crate::inode::xattr;
        let (t, n) = xattr::split_name(name).ok_or(errno(libc::EOPNOTSUPP))?;
        if t == xattr::EATYPE_SYS {
            let acl = n == b"posix_acl_access" || n == b"posix_acl_default";
            if !acl || !self.options().acl {
                return Err(errno(libc::EOPNOTSUPP));
            }
        }
        let mode = if flags & libc::XATTR_CREATE != 0 {
            SetMode::Create
        } else if flags & libc::XATTR_REPLACE != 0 {
            SetMode::Replace
        } else {
            SetMode::Any
        };
        self.modify(&[ino], |tx, al, _| {
            ea_write::set(tx, al, ino, t, n, value, mode)?;
            let mut di = dinode(tx, ino)?;
            touch_c(&mut di);
            put_dinode(tx, &di)
        })
    }

    /// `fallocate`: allocate (mode 0, or `FALLOC_FL_KEEP_SIZE`) zeroed
    /// blocks, or punch a hole (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`).
    pub fn fallocate(&self, ino: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        if mode & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE) != 0 || (punch && !keep)
        {
            return Err(errno(libc::EOPNOTSUPP));
        }
        if len == 0 {
            return Err(errno(libc::EINVAL));
        }
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(errno(libc::EFBIG))?;
        let dev = self.device().clone();
        self.modify(&[ino], |tx, al, _| {
            let bsize = tx.bsize();
            let bs = u64::from(bsize);
            let mut di = dinode(tx, ino)?;
            if di.mode & S_IFMT != 0o100000 {
                return Err(errno(libc::ENODEV));
            }
            if punch {
                let stop = end.min(di.size);
                if offset >= stop {
                    return Ok(());
                }
                if di.height == 0 {
                    let b = tx.get_mut(glock(ino), ino, mt::DI)?;
                    b[DINODE_SIZE + offset as usize..DINODE_SIZE + stop as usize].fill(0);
                } else {
                    let first_full = offset.div_ceil(bs);
                    let end_full = stop / bs;
                    if first_full < end_full {
                        write::free_range(tx, al, ino, first_full, end_full)?;
                    }
                    // Zero the partial blocks at both edges.
                    for lb in [offset / bs, stop / bs] {
                        let (s, e) = (offset.max(lb * bs), stop.min(lb * bs + bs));
                        if s >= e || (s == lb * bs && e == lb * bs + bs) {
                            continue;
                        }
                        if let Some((blk, _)) = write::map(tx, al, ino, lb, false)? {
                            let jd = is_jdata(&dinode(tx, ino)?);
                            let mut b = get_data(tx, dev.as_ref(), jd, blk)?;
                            b[(s - lb * bs) as usize..(e - lb * bs) as usize].fill(0);
                            put_data(tx, dev.as_ref(), jd, ino, blk, b)?;
                        }
                    }
                }
                di = dinode(tx, ino)?;
                touch_mc(&mut di);
                return put_dinode(tx, &di);
            }
            if di.height == 0 && end <= layout::stuffed_max(bsize) {
                // Stuffed space is always there.
            } else {
                if di.height == 0 {
                    write::unstuff(tx, al, ino, dev.as_ref())?;
                }
                write::ensure_height(tx, al, ino, end.div_ceil(bs))?;
                let jd = is_jdata(&dinode(tx, ino)?);
                for lb in offset / bs..end.div_ceil(bs) {
                    let (blk, new) = write::map(tx, al, ino, lb, true)?
                        .ok_or_else(|| FsError::corrupt(ino, "allocation failed"))?;
                    if new {
                        put_data(tx, dev.as_ref(), jd, ino, blk, vec![0u8; bsize as usize])?;
                    }
                }
            }
            di = dinode(tx, ino)?;
            if !keep && end > di.size {
                di.size = end;
            }
            touch_c(&mut di);
            put_dinode(tx, &di)
        })
    }

    /// Free the blocks of `ino` past `size` in transactions of bounded size
    /// (from the end backwards), so that truncating or deleting a huge file
    /// never needs more journal than one flush can carry. The size is left
    /// alone: the caller's own transaction sets it.
    /// `a`: the inode's attributes, as the caller read them.
    fn free_tail_in_chunks(&self, ino: u64, a: &Attr, size: u64) -> Result<()> {
        const CHUNK: u64 = 1 << 16;
        if a.mode & S_IFMT != 0o100000 {
            return Ok(());
        }
        let bs = u64::from(a.blksize);
        let first = size.div_ceil(bs);
        let mut end = a.size.div_ceil(bs);
        while end > first.saturating_add(CHUNK) {
            let lo = end - CHUNK;
            self.modify(&[ino], |tx, al, _| {
                let di = dinode(tx, ino)?;
                if di.height > 0 {
                    write::free_range(tx, al, ino, lo, end)?;
                }
                Ok(())
            })?;
            end = lo;
        }
        Ok(())
    }

    /// Free the inodes a crash left unlinked (nameless but allocated, state
    /// "unlinked" in the bitmap): the kernel frees them when it comes across
    /// them; we look once, after mount, in the background. Returns how many
    /// were freed.
    pub fn reclaim_unlinked(&self) -> Result<usize> {
        let Some(w) = self.writer() else {
            return Ok(0);
        };
        let rindex = w.rindex().to_vec();
        let mut found = Vec::new();
        for ri in &rindex {
            let gl = rgrp::glock(ri);
            let _gh = self.glocks().acquire(gl, Mode::PR)?;
            let hdr = self.cache().read_meta_as(gl, ri.addr, mt::RG)?;
            let rg = gfs2_ondisk::Rgrp::parse(&hdr)?;
            if rg.dinodes == 0 {
                continue;
            }
            rgrp::for_each_in_state(self.cache(), ri, BlockState::Unlinked, |b| found.push(b))?;
        }
        let mut freed = 0;
        for ino in found {
            let done = self.modify(&[ino], |tx, al, open| {
                if open.contains_key(&ino)
                    || rgrp::state(tx, al.rindex, ino)? != BlockState::Unlinked
                {
                    return Ok(false);
                }
                // Open on another node: its last close frees it.
                if !tx.try_take_uncached(iopen_glock(ino), Mode::EX)? {
                    return Ok(false);
                }
                let di = dinode(tx, ino)?;
                if di.nlink != 0 {
                    return Ok(false);
                }
                Self::dealloc(tx, al, ino)?;
                Ok(true)
            })?;
            freed += usize::from(done);
        }
        if freed > 0 {
            tracing::info!(freed, "freed inodes left unlinked by a crash");
        }
        Ok(freed)
    }
}

/// Add the local statfs changes `l` to the master statfs file's counts in
/// `tx` (both folds: ours and a dead node's).
fn add_to_master(tx: &mut Txn<'_>, master: u64, l: &StatfsChange) -> Result<()> {
    let b = tx.get_mut(glock(master), master, mt::DI)?;
    let mut m = StatfsChange::parse(&b[DINODE_SIZE..])?;
    m.total += l.total;
    m.free += l.free;
    m.dinodes += l.dinodes;
    m.write(&mut b[DINODE_SIZE..])?;
    Ok(())
}
