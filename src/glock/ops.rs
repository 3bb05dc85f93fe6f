//! Per-type glock operations (the kernel's `glops.c`): what to write back and
//! what to forget when a glock is demoted.

use crate::buf::BufCache;
use crate::error::Result;
use gfs2_lockproto::{lm_type, Lvb, ResName};
use std::sync::{Arc, Mutex, OnceLock};

/// Operations run on demotion.
pub trait GlockOps: Send + Sync {
    /// Write back everything this glock covers (`go_sync`): before converting
    /// down from EX, other nodes must find it on disk.
    fn go_sync(&self, name: ResName) -> Result<()>;
    /// Drop every cached object this glock covers (`go_inval`): after the lock
    /// is converted down, other nodes may change them.
    fn go_inval(&self, name: ResName);
    /// Whether holders change what this glock covers even in shared mode,
    /// so that it is synced before any release, not only from EX (the
    /// freeze lock, which every transaction holds shared).
    fn syncs_shared(&self, _name: ResName) -> bool {
        false
    }
    /// Whether locks of this glock carry a lock value block (`GLOF_LVB`).
    fn has_lvb(&self, _name: ResName) -> bool {
        false
    }
    /// The LVB to store with the lock as it goes down from EX, computed
    /// after `go_sync` and before `go_inval`.
    fn lvb_out(&self, _name: ResName) -> Option<Lvb> {
        None
    }
    /// The lock manager granted the glock with `lvb`: check what it says
    /// before anything is read under it (`go_instantiate`).
    fn go_granted(&self, _name: ResName, _lvb: Option<&Lvb>) -> Result<()> {
        Ok(())
    }
    /// A conversion up from a shared mode is about to be asked for. While
    /// it waits, the lock manager may take the shared mode away to break a
    /// conversion deadlock, and another node may change what it covers
    /// before we learn of it: whatever is trusted without a holder (the
    /// FUSE kernel's attributes, used for their TTL without asking us) must
    /// go now, not when we learn. Our own caches are safe meanwhile: no new
    /// holder is granted while the request is in flight.
    fn go_before_upconvert(&self, _name: ResName) {}
}

/// Non-disk locks (mount, live, rename, freeze), iopen and journal locks:
/// nothing cached under them.
pub struct NoOps;

impl GlockOps for NoOps {
    fn go_sync(&self, _name: ResName) -> Result<()> {
        Ok(())
    }
    fn go_inval(&self, _name: ResName) {}
}

/// The kernel's freeze lock (non-disk lock 2, `GFS2_FREEZE_LOCK`).
pub const FREEZE_LOCK: u64 = 2;

/// Non-disk locks: nothing cached under them, except that giving up the
/// freeze lock (a node freezing the filesystem asked for it exclusively)
/// first writes the log out and everything in place, so the frozen disk is
/// complete; transactions hold it shared, so none runs until the freezer
/// lets it go (the kernel's `freeze_go_sync`).
pub struct NonDiskOps {
    sync: OnceLock<SyncFn>,
}

impl NonDiskOps {
    /// Operations whose freeze sync does nothing until [`NonDiskOps::set_sync`].
    pub fn new() -> Arc<Self> {
        Arc::new(NonDiskOps {
            sync: OnceLock::new(),
        })
    }

    /// What syncing the freeze lock runs.
    pub fn set_sync(&self, f: SyncFn) {
        let _ = self.sync.set(f);
    }
}

impl GlockOps for NonDiskOps {
    fn go_sync(&self, name: ResName) -> Result<()> {
        match self.sync.get() {
            Some(f) if name.number == FREEZE_LOCK => f(),
            _ => Ok(()),
        }
    }
    fn go_inval(&self, _name: ResName) {}
    fn syncs_shared(&self, name: ResName) -> bool {
        name.number == FREEZE_LOCK
    }
}

/// What syncing a glock takes: the filesystem's log flush and checkpoint.
pub type SyncFn = Box<dyn Fn() -> Result<()> + Send + Sync>;

/// Told the number of an inode whose glock was given up, so that caches
/// above the filesystem (the FUSE kernel's attributes, pages, listings)
/// are dropped with ours.
pub type InvalFn = Arc<dyn Fn(u64) + Send + Sync>;

/// Inode and rgrp glocks: they cover metadata buffers (dinode, indirect
/// blocks, directory leaves and hash table, EA blocks; rgrp headers and
/// bitmaps). Syncing one held exclusively flushes the log and writes every
/// logged block in place (`sync`), since the next holder reads them there;
/// the kernel writes back only the glock's own blocks (its per-glock AIL),
/// we write the whole AIL, which is simpler and never less safe. A glock
/// none of whose changes is still dirty or pinned (`has_unsynced`) has
/// nothing to write and is not synced, as the kernel skips a glock without
/// `GLF_DIRTY`.
pub struct CacheOps {
    cache: Arc<BufCache>,
    sync: OnceLock<SyncFn>,
    on_inval: Mutex<Option<InvalFn>>,
    /// The resource groups (sorted by address), for their LVBs; replaced
    /// when the filesystem grows.
    rindex: std::sync::RwLock<Vec<crate::format::Rindex>>,
    /// The rindex inode and the flag its invalidation raises (the kernel's
    /// `sd_rindex_uptodate` cleared by `inode_go_inval`): another node
    /// took the rindex glock to change it, so ours is read again.
    rindex_watch: OnceLock<(u64, Arc<std::sync::atomic::AtomicBool>)>,
    /// Check rgrp LVBs on grant: format 1802, where kernel nodes trust
    /// them (`rgrplvb`).
    check_rgrp_lvb: std::sync::atomic::AtomicBool,
}

impl CacheOps {
    /// Operations invalidating `cache`; syncing does nothing until
    /// [`CacheOps::set_sync`] (a read-only mount never dirties anything).
    pub fn new(cache: Arc<BufCache>) -> Arc<Self> {
        Arc::new(CacheOps {
            cache,
            sync: OnceLock::new(),
            on_inval: Mutex::new(None),
            rindex: Default::default(),
            rindex_watch: OnceLock::new(),
            check_rgrp_lvb: Default::default(),
        })
    }

    /// The resource groups, as read at mount or after a grow; `check_lvb`
    /// for format 1802.
    pub fn set_rindex(&self, mut rindex: Vec<crate::format::Rindex>, check_lvb: bool) {
        rindex.sort_by_key(|r| r.addr);
        *self.rindex.write().unwrap_or_else(|e| e.into_inner()) = rindex;
        self.check_rgrp_lvb
            .store(check_lvb, std::sync::atomic::Ordering::Relaxed);
    }

    /// Raise `stale` whenever the glock of inode `rindex_ino` is
    /// invalidated (set once, at mount).
    pub fn watch_rindex(&self, rindex_ino: u64, stale: Arc<std::sync::atomic::AtomicBool>) {
        let _ = self.rindex_watch.set((rindex_ino, stale));
    }

    fn rgrp(&self, name: ResName) -> Option<crate::format::Rindex> {
        let all = self.rindex.read().unwrap_or_else(|e| e.into_inner());
        all.binary_search_by_key(&name.number, |r| r.addr)
            .ok()
            .map(|i| all[i])
    }

    /// What to tell when an inode glock is invalidated (`None`: nobody).
    pub fn set_on_inval(&self, f: Option<InvalFn>) {
        *self.on_inval.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }

    /// What `go_sync` runs, given once the filesystem exists.
    pub fn set_sync(&self, f: SyncFn) {
        let _ = self.sync.set(f);
    }
}

impl GlockOps for CacheOps {
    fn go_sync(&self, name: ResName) -> Result<()> {
        // Nothing changed under it is still on its way to its place: the
        // next holder reads what it would read after a sync (the kernel
        // syncs a glock only when `GLF_DIRTY`). Giving up the oldest of
        // many idle inode glocks (the LRU) then costs no log flush each.
        if !self.cache.has_unsynced(name) {
            return Ok(());
        }
        match self.sync.get() {
            Some(f) => f(),
            None => Ok(()),
        }
    }
    fn has_lvb(&self, name: ResName) -> bool {
        name.lk_type == lm_type::RGRP
    }

    fn lvb_out(&self, name: ResName) -> Option<Lvb> {
        let ri = self.rgrp(name)?;
        match crate::rgrp::lvb(&self.cache, &ri) {
            Ok(l) => Some(l),
            Err(e) => {
                // Zeros make every reader rebuild it from the rgrp.
                tracing::warn!(rgrp = ri.addr, "rgrp LVB not computed, invalidated: {e}");
                Some([0; gfs2_lockproto::LVB_SIZE])
            }
        }
    }

    fn go_granted(&self, name: ResName, lvb: Option<&Lvb>) -> Result<()> {
        if !self
            .check_rgrp_lvb
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(());
        }
        match (self.rgrp(name), lvb) {
            (Some(ri), Some(l)) => crate::rgrp::check_lvb(&self.cache, &ri, l).inspect_err(|e| {
                tracing::error!("{e}");
            }),
            _ => Ok(()),
        }
    }

    fn go_before_upconvert(&self, name: ResName) {
        self.tell_invalidated(name);
    }

    fn go_inval(&self, name: ResName) {
        self.cache.invalidate(name);
        if let Some((ino, stale)) = self.rindex_watch.get() {
            if name.lk_type == lm_type::INODE && name.number == *ino {
                stale.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        self.tell_invalidated(name);
    }
}

impl CacheOps {
    /// Tell whoever caches an inode's attributes outside the glock (the
    /// FUSE kernel) that they are no longer valid.
    fn tell_invalidated(&self, name: ResName) {
        if name.lk_type == lm_type::INODE {
            let hook = self
                .on_inval
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(f) = hook {
                f(name.number);
            }
        }
    }
}
