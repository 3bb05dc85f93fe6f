//! The filesystem: mount, the read operations a VFS asks for, unmount.
//! Independent of FUSE so it can be driven directly (tests, fuzzing, tools).
//!
//! Every operation takes the glocks of the inodes it reads (shared) for its
//! duration; what it reads from the metadata cache is valid only while they
//! are held.

use crate::buf::BufCache;
use crate::dev::BlockDevice;
use crate::error::{FsError, Result};
use crate::format::{Rindex, StatfsChange, Superblock, DINODE_SIZE};
use crate::glock::{ops::CacheOps, GlockCallbacks, GlockOps, GlockTable, Holder};
use crate::inode::{bmap, dir, xattr, Inode, Meta};
use crate::log::recovery::{self, JournalExtent};
use gfs2_lockproto::{lm_type, LockProto, Mode, ResName};
use std::collections::HashMap;
use std::sync::Arc;

/// Mount options, named as the kernel's gfs2 names them.
#[derive(Clone, Default)]
pub struct MountOptions {
    /// `lockproto=`; default: the superblock's.
    pub lockproto: Option<String>,
    /// `locktable=`; default: the superblock's.
    pub locktable: Option<String>,
    /// `hostdata=jid=N`.
    pub jid: Option<u32>,
    /// `ro`.
    pub read_only: bool,
    /// `acl`: expose and enforce POSIX ACLs.
    pub acl: bool,
    /// `norecovery`: do not replay journals.
    pub norecovery: bool,
    /// `spectator`: mount without a journal (read-only, no recovery).
    pub spectator: bool,
    /// A lock module to use instead of the one named by `lockproto`
    /// (`lock_mem` instances sharing one in-process manager).
    pub lock_module: Option<Arc<dyn LockProto>>,
    /// Bytes of metadata to cache (default 128 MiB).
    pub cache_bytes: Option<usize>,
    /// The device cannot be written (journal replay is then impossible and
    /// a dirty journal refuses the mount, as the kernel does).
    pub device_read_only: bool,
    /// `commit=`: seconds between periodic log flushes (default 30).
    pub commit_secs: Option<u64>,
    /// Only replay journal N and stop (with `lock_nolock` rules): the
    /// journal of a daemon of this node that died in a cluster, whose locks
    /// the lock manager still keeps (see `LockError::Orphaned`).
    pub replay_only: Option<u32>,
    /// `max_glocks=`: glocks kept at most, beyond those in use (default
    /// [`crate::glock::DEFAULT_MAX_GLOCKS`]); the oldest idle ones are given up.
    pub max_glocks: Option<usize>,
}

/// Attributes of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number (dinode address).
    pub ino: u64,
    /// Bytes.
    pub size: u64,
    /// 512-byte units allocated.
    pub blocks: u64,
    /// `st_mode` (type and permissions).
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number.
    pub rdev: u32,
    /// Access time (seconds, nanoseconds).
    pub atime: (i64, u32),
    /// Modification time.
    pub mtime: (i64, u32),
    /// Change time.
    pub ctime: (i64, u32),
    /// Preferred I/O size.
    pub blksize: u32,
    /// Generation (for NFS-style handles).
    pub generation: u64,
}

/// Filesystem usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    /// Block size.
    pub bsize: u32,
    /// Data blocks in all resource groups.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Inodes in use plus free blocks (each free block could become one).
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Longest name.
    pub namelen: u32,
}

/// A directory entry as returned by [`Fs::readdir`].
#[derive(Debug, Clone)]
pub struct DirItem<'a> {
    /// Name, lent by the directory block it was read from.
    pub name: &'a [u8],
    /// Inode.
    pub ino: u64,
    /// `DT_*`.
    pub dtype: u16,
    /// Offset to resume after this entry.
    pub next: u64,
}

/// A journal found in the jindex.
#[derive(Debug, Clone)]
pub struct Journal {
    /// Journal id (N of `journalN`).
    pub jid: u32,
    /// The journal's dinode.
    pub ino: u64,
    /// Its blocks.
    pub extents: Vec<JournalExtent>,
}

/// A mounted GFS2 filesystem.
pub struct Fs {
    dev: Arc<dyn BlockDevice>,
    sb: Superblock,
    cache: Arc<BufCache>,
    glocks: Arc<GlockTable>,
    opts: MountOptions,
    journals: Vec<Journal>,
    /// The resource groups, read at mount and again when the rindex glock
    /// was invalidated (another node grew the filesystem) or we grew it.
    rindex: std::sync::RwLock<Arc<Vec<Rindex>>>,
    /// The rindex inode, and whether our copy may be out of date.
    rindex_ino: u64,
    rindex_stale: Arc<std::sync::atomic::AtomicBool>,
    statfs_inos: Vec<u64>,
    per_node: u64,
    jid: u32,
    /// The writer state; `None` for read-only and spectator mounts.
    writer: Option<crate::ops::Writer>,
    /// The live lock, held shared for the whole mount.
    _live: Holder,
    /// The lock on our journal (type 9, number jid), held exclusively for
    /// the whole mount so that no other node uses it (none for spectators).
    journal_gh: Option<Holder>,
    /// Alone on the disk (`lock_nolock`): no other node can have an inode
    /// open or in its caches.
    nolock: bool,
    /// The inode and rgrp glocks' operations (for the invalidation hook).
    cache_ops: Arc<CacheOps>,
    /// How the first [`Fs::unmount`] ended; later calls return it.
    unmounted: std::sync::Mutex<Option<std::result::Result<(), String>>>,
    /// Told of inodes changed behind the caches above us (pNFS commits).
    on_changed: std::sync::Mutex<Option<crate::glock::ops::InvalFn>>,
    /// The pNFS layout service of this mount, if one was started (one per
    /// mount: see [`crate::pnfs::LayoutService::start`]); its layouts are
    /// dropped before the unmount.
    pub(crate) layouts: std::sync::Mutex<std::sync::Weak<crate::pnfs::LayoutService>>,
}

/// Leaves the lockspace when a mount fails after joining it: a cluster
/// lock module keeps the locks of a mounter that just goes away (the DLM's
/// are persistent, so that a crashed daemon's stay), and every other node
/// would then wait for ever on the mount lock or the journal lock it took.
struct LeaveOnError(Option<Arc<GlockTable>>);

impl Drop for LeaveOnError {
    fn drop(&mut self) {
        if let Some(g) = self.0.take() {
            if let Err(e) = g.shutdown() {
                tracing::warn!("leaving the lockspace after the failed mount: {e}");
            }
        }
    }
}

fn inode_lock(ino: u64) -> ResName {
    ResName::new(lm_type::INODE, ino)
}

impl Fs {
    /// Mount the filesystem on `dev`.
    pub fn mount(dev: Arc<dyn BlockDevice>, opts: MountOptions) -> Result<Arc<Fs>> {
        let mut sb = crate::sb::read_sb(dev.as_ref())?;
        let proto: Arc<dyn LockProto> = match &opts.lock_module {
            Some(p) => p.clone(),
            None => {
                let name = opts.lockproto.clone().unwrap_or_else(|| sb.lockproto_str());
                gfs2_lockproto::by_name(&name).ok_or_else(|| {
                    FsError::Mount(format!("lock protocol {name:?} is not supported"))
                })?
            }
        };
        // A lock_nolock node owns its device alone (the kernel cannot mount
        // one device twice either); cluster protocols share it through their
        // locks. The superblock is read again under the claim: whoever held
        // the device before (a mkfs) may have rewritten it.
        let nolock = proto.name() == "lock_nolock";
        if nolock {
            dev.claim(crate::dev::claim::Claimant::Mount)
                .map_err(|e| FsError::Mount(e.to_string()))?;
            sb = crate::sb::read_sb(dev.as_ref())?;
        }
        let bsize = sb.bsize;
        let table = opts
            .locktable
            .clone()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| sb.locktable_str());
        let table = if table.is_empty() {
            "nolock:gfs2".to_string()
        } else {
            table
        };
        let table = if table.contains(':') {
            table
        } else {
            format!("nolock:{table}")
        };
        let cache = Arc::new(BufCache::new(
            dev.clone(),
            bsize,
            opts.cache_bytes.unwrap_or(128 << 20),
        ));
        let callbacks = GlockCallbacks::new();
        let (ls, info) = match proto.join(&table, callbacks.clone()) {
            Err(gfs2_lockproto::LockError::Orphaned { jid, .. }) if opts.replay_only.is_none() => {
                // A daemon of this node died; its locks still keep every
                // node away from what its journal holds. Replay that
                // journal (nothing else: other journals belong to live
                // nodes), then let the locks go and join afresh.
                tracing::warn!(
                    jid,
                    "a daemon of this node died in the cluster: replaying its journal"
                );
                let replay = MountOptions {
                    lock_module: Some(Arc::new(gfs2_lockproto::nolock::NoLock)),
                    replay_only: Some(jid),
                    cache_bytes: opts.cache_bytes,
                    ..Default::default()
                };
                Fs::mount(dev.clone(), replay)?.unmount()?;
                proto.release_orphans(&table)?;
                proto.join(&table, callbacks.clone())?
            }
            r => r?,
        };
        let mut ops: HashMap<u32, Arc<dyn GlockOps>> = HashMap::new();
        let cops = CacheOps::new(cache.clone());
        ops.insert(lm_type::INODE, cops.clone());
        ops.insert(lm_type::RGRP, cops.clone());
        let nondisk = crate::glock::ops::NonDiskOps::new();
        ops.insert(lm_type::NONDISK, nondisk.clone());
        let glocks = GlockTable::new(ls, &callbacks, ops);
        if let Some(n) = opts.max_glocks {
            glocks.set_max_glocks(n);
        }
        let mut leave_on_error = LeaveOnError(Some(glocks.clone()));

        // As the kernel: the mount lock serialises mounts and recovery, the
        // live lock is held shared while mounted.
        let mount_gh = glocks.acquire(ResName::new(lm_type::NONDISK, 0), Mode::EX)?;
        let live = glocks.acquire(ResName::new(lm_type::NONDISK, 1), Mode::PR)?;

        let mut fs = Fs {
            dev,
            sb,
            cache,
            glocks,
            opts,
            journals: Vec::new(),
            rindex: Default::default(),
            rindex_ino: 0,
            rindex_stale: Default::default(),
            statfs_inos: Vec::new(),
            per_node: 0,
            jid: 0,
            writer: None,
            _live: live,
            journal_gh: None,
            nolock,
            cache_ops: cops.clone(),
            unmounted: Default::default(),
            on_changed: Default::default(),
            layouts: Default::default(),
        };
        let master = fs.sb.master_dir.addr;
        let jindex = fs.lookup_sys(master, b"jindex")?;
        fs.journals = fs.read_jindex(jindex)?;
        let count = u32::try_from(fs.journals.len()).unwrap_or(u32::MAX);
        fs.glocks.lockspace().journals(count);
        if !fs.opts.spectator && fs.opts.replay_only.is_none() {
            let (jid, holder) = fs.claim_journal(info.jid)?;
            fs.jid = jid;
            fs.journal_gh = Some(holder);
        }
        let statfs = fs.lookup_sys(master, b"statfs")?;
        fs.statfs_inos.push(statfs);
        let per_node = fs.lookup_sys(master, b"per_node")?;
        fs.per_node = per_node;
        // Alone on the disk every node's local changes are ours to read (a
        // spectator of a crashed node's disk sees them too). In a cluster
        // each node holds its own statfs_change exclusively for as long as
        // it is mounted, as the kernel does, so another node's is never
        // read: usage is the master file plus our own changes, as the
        // kernel's statfs (others' changes arrive as they fold theirs into
        // the master every commit interval).
        let own_jid = (!fs.opts.spectator).then_some(fs.jid);
        for j in fs
            .journals
            .iter()
            .filter(|j| fs.nolock || Some(j.jid) == own_jid)
        {
            let name = format!("statfs_change{}", j.jid);
            match fs.lookup_sys(per_node, name.as_bytes()) {
                Ok(i) => fs.statfs_inos.push(i),
                Err(FsError::Errno(libc::ENOENT)) => {}
                Err(e) => return Err(e),
            }
        }

        if let Some(jid) = fs.opts.replay_only {
            if fs.replay_dead_journal(jid)?.is_none() {
                return Err(FsError::Mount(format!("journal {jid} is busy")));
            }
            // Its statfs changes stay in its statfs_change file, folded by
            // whichever node takes that journal next (as after a crash).
            tracing::info!(jid, "journal of the dead daemon replayed");
            leave_on_error.0 = None;
            return Ok(Arc::new(fs));
        }
        if info.first && !fs.opts.norecovery && !fs.opts.spectator {
            fs.recover_all()?;
        }
        if info.first {
            fs.glocks.lockspace().first_done()?;
        }
        // After the replay, as the kernel reads it (at the first
        // allocation): a crash halfway through writing a grow in place
        // leaves the rindex whole only in the log.
        let rindex = fs.lookup_sys(master, b"rindex")?;
        fs.rindex_ino = rindex;
        let ri = fs.read_rindex(rindex)?;
        // The kernel trusts rgrp LVBs from format 1802 on (`rgrplvb`).
        fs.cache_ops
            .set_rindex(ri.clone(), fs.sb.fs_format > 1801 && !nolock);
        fs.cache_ops.watch_rindex(rindex, fs.rindex_stale.clone());
        fs.rindex = std::sync::RwLock::new(Arc::new(ri));
        // `norecovery` is the kernel's alias of `spectator`: no journal of
        // our own, so no writes (writing on an unreplayed journal would
        // mark it clean and lose the crashed node's transactions).
        if !fs.opts.read_only
            && !fs.opts.spectator
            && !fs.opts.norecovery
            && !fs.opts.device_read_only
        {
            fs.writer = Some(fs.open_writer()?);
        }
        drop(mount_gh);
        // The root must be readable for the mount to be useful.
        fs.getattr(fs.root())?;
        leave_on_error.0 = None;
        let fs = Arc::new(fs);
        let weak = Arc::downgrade(&fs);
        cops.set_sync(Box::new(move || {
            weak.upgrade()
                .map_or(Ok(()), |fs: Arc<Fs>| fs.flush_for_demote())
        }));
        let weak = Arc::downgrade(&fs);
        nondisk.set_sync(Box::new(move || {
            weak.upgrade()
                .map_or(Ok(()), |fs: Arc<Fs>| fs.sync_for_freeze())
        }));
        if fs.writer.is_some() {
            Self::start_commit_timer(&fs);
            // Survivors replay a dead node's journals, on a thread of their
            // own: the lock module's thread must stay free for grants.
            let weak = Arc::downgrade(&fs);
            fs.glocks.on_recover(Arc::new(move |jids: Vec<u32>| {
                let weak = weak.clone();
                let what = format!("{jids:?}");
                let spawned = std::thread::Builder::new()
                    .name("gfs2-recover".into())
                    .spawn(move || {
                        if let Some(fs) = weak.upgrade() {
                            fs.recover_dead(&jids);
                        }
                    });
                if let Err(e) = spawned {
                    tracing::error!("no thread to recover the journals {what} of a dead node: {e}");
                }
            }));
        }
        // Only a node alone on the disk may free what a crash left unlinked:
        // in a cluster another node may still have such an inode open; this
        // scan does not try their iopen glocks yet, so it is left alone.
        if fs.writer.is_some() && nolock {
            let weak = Arc::downgrade(&fs);
            let spawned = std::thread::Builder::new()
                .name("gfs2-reclaim".into())
                .spawn(move || {
                    if let Some(fs) = weak.upgrade() {
                        if let Err(e) = fs.reclaim_unlinked() {
                            tracing::warn!("reclaiming unlinked inodes: {e}");
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!("inodes a crash left unlinked are not reclaimed: no thread: {e}");
            }
        }
        Ok(fs)
    }

    /// Take a journal for this node: the one `hostdata=jid=N` names, else
    /// the first whose journal lock no other node holds. The lock is held
    /// for the whole mount, as the kernel holds its journal glock, so a node
    /// never writes a journal another live node uses.
    fn claim_journal(&self, assigned: Option<u32>) -> Result<(u32, Holder)> {
        let n = self.journals.len();
        if let Some(j) = assigned {
            // The lock module's choice (lock_dlm: the DLM slot), as the
            // kernel's: a preset jid would collide with a kernel node's.
            if self.opts.jid.is_some_and(|o| o != j) {
                return Err(FsError::Mount(format!(
                    "jid= cannot be chosen with this lock module: the cluster assigned journal {j}"
                )));
            }
            if !self.journals.iter().any(|x| x.jid == j) {
                return Err(FsError::Mount(format!(
                    "the cluster assigned journal {j} to this node, but the filesystem has {n}                      journals: add journals with gfs2_jadd"
                )));
            }
        }
        let wanted: Vec<u32> = match assigned.or(self.opts.jid) {
            Some(j) if !self.journals.iter().any(|x| x.jid == j) => {
                return Err(FsError::Mount(format!(
                    "journal id {j} does not exist ({n} journals)"
                )));
            }
            Some(j) => vec![j],
            None => {
                let mut all: Vec<u32> = self.journals.iter().map(|j| j.jid).collect();
                all.sort_unstable();
                all
            }
        };
        for &jid in &wanted {
            let name = ResName::new(lm_type::JOURNAL, u64::from(jid));
            if let Some(h) = self.glocks.try_acquire_nocache(name, Mode::EX)? {
                tracing::info!("journal {jid} of {n}");
                return Ok((jid, h));
            }
        }
        Err(FsError::Mount(match assigned.or(self.opts.jid) {
            Some(j) => format!("journal {j} is in use by another node"),
            None => format!(
                "all {n} journals are in use by other nodes: a filesystem needs one \
                 journal per node mounting it (add journals with gfs2_jadd)"
            ),
        }))
    }

    /// Our journal, positioned after its head, and what the write path
    /// needs besides.
    fn open_writer(&self) -> Result<crate::ops::Writer> {
        let j = self
            .journals
            .iter()
            .find(|j| j.jid == self.jid)
            .ok_or_else(|| FsError::Mount(format!("no journal {}", self.jid)))?;
        let hdr = recovery::CleanHeader {
            writer_jid: self.jid,
            jinode: j.ino,
            statfs_addr: self.per_node_file(&format!("statfs_change{}", self.jid)),
            quota_addr: self.per_node_file(&format!("quota_change{}", self.jid)),
            master_statfs_addr: self.statfs_inos.first().copied().unwrap_or(0),
        };
        let mut log = crate::log::writer::LogWriter::open(
            self.dev.clone(),
            self.sb.bsize,
            j.extents.clone(),
            hdr,
        )?;
        if hdr.statfs_addr != 0 {
            let sc = self.with_inode(hdr.statfs_addr, |_, ip| {
                StatfsChange::parse(ip.block.get(DINODE_SIZE..).unwrap_or(&[]))
                    .map_err(|_| FsError::corrupt(ip.ino, "short statfs_change file"))
            })?;
            log.set_local_statfs([sc.total, sc.free, sc.dinodes]);
        }
        // Held for the whole mount, as the kernel holds it: transactions
        // add their statfs changes to its block as they join the log, each
        // time a whole new cached block, so local readers (a walk of the
        // master directory) may read it beside this holder.
        let statfs_gh = if hdr.statfs_addr != 0 {
            Some(
                self.glocks
                    .acquire_open_to_readers(inode_lock(hdr.statfs_addr))?,
            )
        } else {
            None
        };
        Ok(crate::ops::Writer::new(
            log,
            Vec::clone(&self.rindex()),
            hdr.master_statfs_addr,
            hdr.statfs_addr,
            statfs_gh,
        ))
    }

    /// Flush the log every `commit` seconds (the kernel's default: 30), so
    /// an idle mount loses nothing old.
    fn start_commit_timer(fs: &Arc<Fs>) {
        let weak = Arc::downgrade(fs);
        let secs = fs.opts.commit_secs.unwrap_or(30).max(1);
        let spawned = std::thread::Builder::new()
            .name("gfs2-commit".into())
            .spawn(move || loop {
                // Sleep in short steps so that the thread ends soon after
                // the filesystem is dropped.
                for _ in 0..secs * 4 {
                    std::thread::sleep(std::time::Duration::from_millis(250));
                    if weak.strong_count() == 0 {
                        return;
                    }
                }
                let Some(fs) = weak.upgrade() else {
                    return;
                };
                // The kernel's statfs_quantum defaults to its commit interval.
                if let Err(e) = fs.statfs_sync() {
                    tracing::error!("periodic statfs sync: {e}");
                }
                if let Err(e) = fs.sync() {
                    tracing::error!("periodic log flush: {e}");
                }
            });
        if let Err(e) = spawned {
            tracing::error!(
                "no commit timer (no thread: {e}): changes become durable only at fsync, sync \
                 or unmount"
            );
        }
    }

    pub(crate) fn writer(&self) -> Option<&crate::ops::Writer> {
        self.writer.as_ref()
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    fn recover_all(&self) -> Result<()> {
        for j in &self.journals {
            // Our own journal's lock is held already (claim_journal); a
            // journal whose lock another node holds is that live node's.
            let jgh = if self.journal_gh.is_some() && j.jid == self.jid {
                None
            } else {
                let name = ResName::new(lm_type::JOURNAL, u64::from(j.jid));
                match self.glocks.try_acquire_nocache(name, Mode::EX)? {
                    Some(h) => Some(h),
                    None => continue,
                }
            };
            let head = recovery::find_head(self.dev.as_ref(), self.sb.bsize, &j.extents)
                .map_err(|e| FsError::Mount(format!("journal {}: {e}", j.jid)))?;
            if head.is_clean() {
                drop(jgh);
                continue;
            }
            if self.opts.device_read_only {
                return Err(FsError::Mount(format!(
                    "journal {} needs recovery but the device is read-only",
                    j.jid
                )));
            }
            tracing::info!(jid = j.jid, "replaying journal");
            let clean = recovery::CleanHeader {
                writer_jid: self.jid,
                jinode: j.ino,
                statfs_addr: self.per_node_file(&format!("statfs_change{}", j.jid)),
                quota_addr: self.per_node_file(&format!("quota_change{}", j.jid)),
                master_statfs_addr: self.statfs_inos.first().copied().unwrap_or(0),
            };
            let stats =
                recovery::recover(self.dev.as_ref(), self.sb.bsize, &j.extents, &head, &clean)
                    .map_err(|e| FsError::Mount(format!("journal {} recovery: {e}", j.jid)))?;
            tracing::info!(
                jid = j.jid,
                replayed = stats.replayed,
                revoked = stats.revoked,
                "journal recovered"
            );
            // Replay wrote behind the cache's back.
            self.cache.invalidate_all();
            drop(jgh);
        }
        Ok(())
    }

    /// Another node died holding journals `jids`: replay each one whose
    /// lock we get (another survivor may be on it), tell the lock module
    /// (the dead node's other locks stay blocked until then: nothing it may
    /// have changed is given out before its journal is replayed), then
    /// fold its statfs changes into the master file and free what it left
    /// unlinked.
    ///
    /// The journal's lock is kept until the fold is done, as the kernel
    /// recovers a journal under its glock: a node that took the journal
    /// meanwhile would hold its `statfs_change` glock for its whole mount
    /// (as every writer holds its own), and the fold, holding the master
    /// statfs file's glock by then, would wait for it for ever; every
    /// node's statfs sync and unmount would then wait for the master file.
    pub fn recover_dead(&self, jids: &[u32]) {
        for &jid in jids {
            match self.replay_dead_journal(jid) {
                Ok(None) => tracing::info!(jid, "journal busy: another node recovers it"),
                Ok(Some(jgh)) => {
                    if let Err(e) = self.glocks.lockspace().recovery_done(jid) {
                        tracing::error!(jid, "reporting recovery: {e}");
                        continue;
                    }
                    if let Err(e) = self.fold_dead_statfs(jid) {
                        tracing::error!(jid, "folding a dead node's statfs changes: {e}");
                    }
                    drop(jgh);
                }
                // Its locks stay blocked: the cluster waits rather than
                // read what that node may have half written.
                Err(e) => tracing::error!(jid, "recovering journal: {e}"),
            }
        }
        match self.reclaim_unlinked() {
            Ok(_) => {}
            Err(e) => tracing::warn!("reclaiming inodes a dead node left unlinked: {e}"),
        }
    }

    /// Replay journal `jid` of a dead node if its lock is ours to take
    /// (`Ok(None)`: another survivor has it); the journal's lock comes
    /// back held. The replay writes only
    /// blocks under locks the dead node still holds (every lock it gave up
    /// was synced and its log tail moved past them), which this node
    /// therefore does not cache; it does not touch the master statfs file
    /// (see [`Fs::fold_dead_statfs`]).
    fn replay_dead_journal(&self, jid: u32) -> Result<Option<Holder>> {
        let j = self
            .journals
            .iter()
            .find(|j| j.jid == jid)
            .ok_or_else(|| FsError::Mount(format!("no journal {jid}")))?;
        let name = ResName::new(lm_type::JOURNAL, u64::from(jid));
        let Some(jgh) = self.glocks.try_acquire_nocache(name, Mode::EX)? else {
            return Ok(None);
        };
        let head = recovery::find_head(self.dev.as_ref(), self.sb.bsize, &j.extents)
            .map_err(|e| FsError::Mount(format!("journal {jid}: {e}")))?;
        if !head.is_clean() {
            tracing::info!(jid, "replaying a dead node's journal");
            let clean = recovery::CleanHeader {
                writer_jid: self.jid,
                jinode: j.ino,
                statfs_addr: self.per_node_file(&format!("statfs_change{jid}")),
                quota_addr: self.per_node_file(&format!("quota_change{jid}")),
                master_statfs_addr: 0,
            };
            let stats =
                recovery::recover(self.dev.as_ref(), self.sb.bsize, &j.extents, &head, &clean)
                    .map_err(|e| FsError::Mount(format!("journal {jid} recovery: {e}")))?;
            tracing::info!(
                jid,
                replayed = stats.replayed,
                revoked = stats.revoked,
                "dead node's journal recovered"
            );
        }
        Ok(Some(jgh))
    }

    /// A per-node system file's inode (0 when missing).
    pub(crate) fn per_node_file(&self, name: &str) -> u64 {
        self.with_inode(self.per_node, |m, ip| dir::lookup(m, ip, name.as_bytes()))
            .ok()
            .flatten()
            .map_or(0, |e| e.ino)
    }

    /// Look up a system file in a system directory.
    fn lookup_sys(&self, dir_ino: u64, name: &[u8]) -> Result<u64> {
        let e = self.with_inode(dir_ino, |m, ip| dir::lookup(m, ip, name))?;
        e.map(|e| e.ino)
            .ok_or(FsError::Errno(libc::ENOENT))
            .map_err(|err| {
                if name.starts_with(b"statfs_change") {
                    err
                } else {
                    FsError::Mount(format!(
                        "system file {} missing from directory {dir_ino}",
                        String::from_utf8_lossy(name)
                    ))
                }
            })
    }

    fn read_jindex(&self, jindex: u64) -> Result<Vec<Journal>> {
        let mut names = Vec::new();
        self.with_inode(jindex, |m, ip| {
            dir::readdir(m, ip, 0, |_, e| {
                names.push(e.to_owned());
                true
            })
        })?;
        let mut out = Vec::new();
        for e in names {
            let Some(n) = e.name.strip_prefix(b"journal") else {
                continue;
            };
            let Some(jid) = std::str::from_utf8(n)
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let extents = self.with_inode(e.ino, journal_extents)?;
            out.push(Journal {
                jid,
                ino: e.ino,
                extents,
            });
        }
        out.sort_by_key(|j| j.jid);
        if out.is_empty() {
            return Err(FsError::Mount("no journals in the jindex".into()));
        }
        Ok(out)
    }

    fn read_rindex(&self, ino: u64) -> Result<Vec<Rindex>> {
        let fs_blocks = self.dev.size() / self.sb.bsize as u64;
        self.with_inode(ino, |m, ip| {
            // One 96-byte entry per resource group; no rgrp is smaller than
            // a few blocks, so anything bigger is damage.
            let cap = (fs_blocks / 4).saturating_mul(96).min(1 << 30);
            let size = usize::try_from(ip.di.size)
                .ok()
                .filter(|s| (*s as u64) <= cap)
                .ok_or_else(|| FsError::corrupt(ino, "rindex absurdly large"))?;
            let mut data = vec![0u8; size];
            let n = bmap::read_data(m, ip, 0, &mut data)?;
            data.truncate(n);
            crate::sb::parse_rindex(&data, fs_blocks, ino)
        })
    }

    /// Run `f` on inode `ino` with its glock held shared.
    pub fn with_inode<T>(
        &self,
        ino: u64,
        f: impl FnOnce(Meta<'_>, &Inode) -> Result<T>,
    ) -> Result<T> {
        let gh = self.glocks.acquire(inode_lock(ino), Mode::PR)?;
        let m = Meta {
            cache: &self.cache,
            gh: &gh,
        };
        let ip = Inode::read(m, ino)?;
        f(m, &ip)
    }

    /// [`Fs::with_inode`] for the owner of `pin` on the inode's glock (the
    /// pNFS layout service): the holder is taken under the pin.
    pub(crate) fn with_inode_pinned<T>(
        &self,
        pin: &crate::glock::Pin,
        f: impl FnOnce(Meta<'_>, &Inode) -> Result<T>,
    ) -> Result<T> {
        let ino = pin.name().number;
        let gh = self.glocks.acquire_pinned(pin, Mode::PR)?;
        let m = Meta {
            cache: &self.cache,
            gh: &gh,
        };
        let ip = Inode::read(m, ino)?;
        f(m, &ip)
    }

    /// Tell whoever caches inode `ino` above the filesystem (the FUSE
    /// kernel's attributes and pages) that it changed behind their back:
    /// a pNFS client wrote its blocks on the disk.
    pub fn notify_inode_changed(&self, ino: u64) {
        let hook = self
            .on_changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(f) = hook {
            f(ino);
        }
    }

    /// Have `f` told the number of every inode whose data or attributes
    /// changed behind the caches above the filesystem (see
    /// [`Fs::notify_inode_changed`]); `None` stops it.
    pub fn on_inode_changed(&self, f: Option<crate::glock::ops::InvalFn>) {
        *self.on_changed.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }

    /// The superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }
    /// The root directory's inode number.
    pub fn root(&self) -> u64 {
        self.sb.root_dir.addr
    }
    /// Journals found in the jindex.
    pub fn journals(&self) -> &[Journal] {
        &self.journals
    }
    /// Resource groups from the rindex (as last read; a grow replaces the
    /// whole list, so a caller's copy stays consistent).
    pub fn rindex(&self) -> Arc<Vec<Rindex>> {
        self.rindex
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The rindex inode.
    pub fn rindex_inode(&self) -> u64 {
        self.rindex_ino
    }

    /// Take `rindex` (sorted by address) as the resource groups from now
    /// on: ours, the allocator's and the LVB code's. A shorter one than
    /// what we have is ignored: a filesystem never shrinks.
    pub(crate) fn install_rindex(&self, mut rindex: Vec<Rindex>) {
        rindex.sort_by_key(|r| r.addr);
        {
            let mut cur = self.rindex.write().unwrap_or_else(|e| e.into_inner());
            if rindex.len() <= cur.len() {
                return;
            }
            *cur = Arc::new(rindex.clone());
        }
        self.cache_ops
            .set_rindex(rindex.clone(), self.sb.fs_format > 1801 && !self.nolock);
        if let Some(w) = self.writer() {
            w.set_rindex(rindex);
        }
    }

    /// Read the rindex again if its glock was invalidated since we last
    /// read it (another node grew the filesystem: the kernel's
    /// `gfs2_rindex_update`). The device's size is looked at again first,
    /// since the new resource groups lie beyond what it was. Runs before
    /// every transaction, outside the flush lock.
    pub(crate) fn refresh_rindex(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if !self.rindex_stale.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let r = self
            .dev
            .refresh_size()
            .map_err(|source| FsError::Io {
                what: "the device's size".into(),
                source,
            })
            .and_then(|_| self.read_rindex(self.rindex_ino));
        match r {
            Ok(ri) => {
                let n = ri.len();
                let before = self.rindex.read().unwrap_or_else(|e| e.into_inner()).len();
                if n > before {
                    tracing::info!(rgrps = n, before, "the filesystem grew: rindex read again");
                }
                self.install_rindex(ri);
                Ok(())
            }
            Err(e) => {
                self.rindex_stale.store(true, Ordering::SeqCst);
                Err(e)
            }
        }
    }
    /// The glock table.
    pub fn glocks(&self) -> &Arc<GlockTable> {
        &self.glocks
    }
    /// The metadata cache.
    pub fn cache(&self) -> &Arc<BufCache> {
        &self.cache
    }
    /// Have `f` told the number of every inode whose glock this node gives
    /// up (see [`crate::glock::ops::InvalFn`]); `None` stops it. Called from
    /// the demotion worker, or from a thread whose glock conversion had to
    /// wait, never with a glock's state locked.
    pub fn on_inode_invalidate(&self, f: Option<crate::glock::ops::InvalFn>) {
        self.cache_ops.set_on_inval(f);
    }

    /// Is this node alone on the disk (`lock_nolock`)?
    pub fn is_single_node(&self) -> bool {
        self.nolock
    }
    /// The mount options.
    pub fn options(&self) -> &MountOptions {
        &self.opts
    }

    pub(crate) fn attr_of(&self, ip: &Inode) -> Attr {
        let d = &ip.di;
        let rdev = if matches!(ip.kind(), 0o020000 | 0o060000) {
            ip.rdev()
        } else {
            0
        };
        Attr {
            ino: ip.ino,
            size: d.size,
            blocks: d.blocks.saturating_mul(self.sb.bsize as u64 / 512),
            mode: d.mode,
            nlink: d.nlink,
            uid: d.uid,
            gid: d.gid,
            rdev,
            atime: (d.atime as i64, d.atime_nsec.min(999_999_999)),
            mtime: (d.mtime as i64, d.mtime_nsec.min(999_999_999)),
            ctime: (d.ctime as i64, d.ctime_nsec.min(999_999_999)),
            blksize: self.sb.bsize,
            generation: d.generation,
        }
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        self.with_inode(ino, |_, ip| Ok(self.attr_of(ip)))
    }

    /// Look `name` up in directory `parent`: ENOENT when absent.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        if name.len() > 255 {
            return Err(FsError::Errno(libc::ENAMETOOLONG));
        }
        let e = self
            .with_inode(parent, |m, ip| dir::lookup(m, ip, name))?
            .ok_or(FsError::Errno(libc::ENOENT))?;
        self.getattr(e.ino)
    }

    /// Directory entries from `offset` (0 = start; "." and ".." come first),
    /// until `emit` returns false. Offsets passed back stay valid across calls.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        mut emit: impl FnMut(&DirItem) -> bool,
    ) -> Result<()> {
        self.with_inode(ino, |m, ip| {
            if !ip.is_dir() {
                return Err(FsError::Errno(libc::ENOTDIR));
            }
            let mut off = offset;
            if off == 0 {
                let it = DirItem {
                    name: b".",
                    ino,
                    dtype: 4,
                    next: 1,
                };
                if !emit(&it) {
                    return Ok(());
                }
                off = 1;
            }
            if off == 1 {
                // ".." is a real entry in GFS2 directories; list it from the
                // directory itself below. Offset 1 just means "after '.'".
                off = 2;
            }
            dir::readdir(m, ip, off - 2, |k, e| {
                if e.name == b"." {
                    return true;
                }
                emit(&DirItem {
                    name: e.name,
                    ino: e.ino,
                    dtype: e.de_type,
                    next: k + 3,
                })
            })
        })
    }

    /// How many entries directory `ino` says it holds (`di_entries`): a
    /// hint for sizing a listing, not trusted beyond that.
    pub fn dir_entries(&self, ino: u64) -> Result<u64> {
        self.with_inode(ino, |_, ip| Ok(ip.di.entries as u64))
    }

    /// Read file data.
    pub fn read(&self, ino: u64, offset: u64, size: usize) -> Result<Vec<u8>> {
        self.with_inode(ino, |m, ip| {
            if ip.is_dir() {
                return Err(FsError::Errno(libc::EISDIR));
            }
            let mut buf = vec![0u8; size.min(ip.di.size.saturating_sub(offset) as usize)];
            let n = bmap::read_data(m, ip, offset, &mut buf)?;
            buf.truncate(n);
            Ok(buf)
        })
    }

    /// Read file data into `buf`, as much of it as the file holds from
    /// `offset`; returns how many bytes that is. The FUSE read path hands
    /// in the reply's own buffer (the io_uring entry, or a buffer its
    /// thread keeps), so nothing is allocated, zeroed or copied per request.
    pub fn read_to(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.with_inode(ino, |m, ip| {
            if ip.is_dir() {
                return Err(FsError::Errno(libc::EISDIR));
            }
            bmap::read_data(m, ip, offset, buf)
        })
    }

    /// Target of a symbolic link.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        self.with_inode(ino, |m, ip| ip.readlink(m))
    }

    /// `SEEK_DATA` (`hole == false`) or `SEEK_HOLE` from `offset`.
    pub fn seek(&self, ino: u64, offset: u64, hole: bool) -> Result<u64> {
        self.with_inode(ino, |m, ip| bmap::seek(m, ip, offset, hole))
    }

    fn acl_name(name: &[u8]) -> bool {
        name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
    }

    /// Value of extended attribute `name` (full name with namespace).
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let (t, n) = xattr::split_name(name).ok_or(FsError::Errno(libc::EOPNOTSUPP))?;
        if t == xattr::EATYPE_SYS && !Self::acl_name(name) {
            return Err(FsError::Errno(libc::EOPNOTSUPP));
        }
        if Self::acl_name(name) && !self.opts.acl {
            return Err(FsError::Errno(libc::EOPNOTSUPP));
        }
        self.with_inode(ino, |m, ip| xattr::get(m, ip, t, n))?
            .ok_or(FsError::Errno(libc::ENODATA))
    }

    /// Names of extended attributes, each with its namespace prefix.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let all = self.with_inode(ino, xattr::list)?;
        Ok(all
            .into_iter()
            .filter(|n| self.opts.acl || !Self::acl_name(n))
            .collect())
    }

    /// Filesystem usage: the master statfs plus local changes (see
    /// `Fs::mount` for whose).
    pub fn statfs(&self) -> Result<StatFs> {
        let mut sum = StatfsChange::default();
        for &ino in &self.statfs_inos {
            // Our own statfs_change's glock is held for the whole mount.
            if let Some(sc) = self.local_statfs(ino) {
                let sc = sc?;
                sum.total = sum.total.saturating_add(sc.total);
                sum.free = sum.free.saturating_add(sc.free);
                sum.dinodes = sum.dinodes.saturating_add(sc.dinodes);
                continue;
            }
            let sc = self.with_inode(ino, |_, ip| {
                StatfsChange::parse(ip.block.get(DINODE_SIZE..).unwrap_or(&[]))
                    .map_err(|_| FsError::corrupt(ino, "short statfs file"))
            })?;
            sum.total = sum.total.saturating_add(sc.total);
            sum.free = sum.free.saturating_add(sc.free);
            sum.dinodes = sum.dinodes.saturating_add(sc.dinodes);
        }
        let total = sum.total.max(0) as u64;
        let free = (sum.free.max(0) as u64).min(total);
        let dinodes = sum.dinodes.max(0) as u64;
        Ok(StatFs {
            bsize: self.sb.bsize,
            blocks: total,
            bfree: free,
            files: dinodes.saturating_add(free),
            ffree: free,
            namelen: 255,
        })
    }

    /// Unmount: flush the log and mark our journal clean, drop every glock
    /// and leave the lockspace, then give the device up (its claim, its
    /// connection), so that whatever comes next finds a clean, free disk.
    /// Only the first call does the work; later ones return its outcome.
    pub fn unmount(&self) -> Result<()> {
        let mut done = self.unmounted.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = match &*done {
            Some(o) => o.clone(),
            None => {
                // Layouts end with the mount: blocks granted and never
                // committed past the end of a file are freed first.
                let svc = self
                    .layouts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .upgrade();
                if let Some(svc) = svc {
                    svc.release_all();
                }
                let r = self.sync_and_close_log();
                tracing::debug!(ok = r.is_ok(), "unmount: log closed");
                let g = self.glocks.shutdown();
                tracing::debug!(ok = g.is_ok(), "unmount: glocks released, lockspace left");
                self.dev.release();
                let o = r.and(g).map_err(|e| e.to_string());
                *done = Some(o.clone());
                o
            }
        };
        outcome.map_err(|msg| FsError::Io {
            what: "unmount".into(),
            source: std::io::Error::other(msg),
        })
    }
}

/// The block runs of a journal file, in journal order.
pub fn journal_extents(m: Meta<'_>, ip: &Inode) -> Result<Vec<JournalExtent>> {
    let bsize = m.bsize() as u64;
    let nblocks = ip.di.size / bsize;
    if ip.di.size > m.cache.device().size() {
        return Err(FsError::corrupt(ip.ino, "journal larger than the device"));
    }
    if ip.is_stuffed() || nblocks == 0 {
        return Err(FsError::corrupt(ip.ino, "journal is empty or stuffed"));
    }
    let mut out: Vec<JournalExtent> = Vec::new();
    let mut lb = 0;
    while lb < nblocks {
        let e = bmap::map_extent(m, ip, lb, nblocks - lb)?;
        let Some(p) = e.phys else {
            return Err(FsError::corrupt(
                ip.ino,
                format!("hole in journal at block {lb}"),
            ));
        };
        out.push(JournalExtent {
            lblock: lb,
            phys: p,
            len: e.len,
        });
        lb += e.len;
    }
    Ok(out)
}
