//! Per-type glock operations (the kernel's `glops.c`): what to write back and
//! what to forget when a glock is demoted.

use crate::buf::BufCache;
use crate::error::Result;
use gfs2_lockproto::ResName;
use std::sync::{Arc, OnceLock};

/// Operations run on demotion.
pub trait GlockOps: Send + Sync {
    /// Write back everything this glock covers (`go_sync`): before converting
    /// down from EX, other nodes must find it on disk.
    fn go_sync(&self, name: ResName) -> Result<()>;
    /// Drop every cached object this glock covers (`go_inval`): after the lock
    /// is converted down, other nodes may change them.
    fn go_inval(&self, name: ResName);
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

/// What syncing a glock takes: the filesystem's log flush and checkpoint.
pub type SyncFn = Box<dyn Fn() -> Result<()> + Send + Sync>;

/// Inode and rgrp glocks: they cover metadata buffers (dinode, indirect
/// blocks, directory leaves and hash table, EA blocks; rgrp headers and
/// bitmaps). Syncing one held exclusively flushes the log and writes every
/// logged block in place (`sync`), since the next holder reads them there;
/// the kernel writes back only the glock's own blocks (its per-glock AIL),
/// we write the whole AIL, which is simpler and never less safe.
pub struct CacheOps {
    cache: Arc<BufCache>,
    sync: OnceLock<SyncFn>,
}

impl CacheOps {
    /// Operations invalidating `cache`; syncing does nothing until
    /// [`CacheOps::set_sync`] (a read-only mount never dirties anything).
    pub fn new(cache: Arc<BufCache>) -> Arc<Self> {
        Arc::new(CacheOps {
            cache,
            sync: OnceLock::new(),
        })
    }

    /// What `go_sync` runs, given once the filesystem exists.
    pub fn set_sync(&self, f: SyncFn) {
        let _ = self.sync.set(f);
    }
}

impl GlockOps for CacheOps {
    fn go_sync(&self, _name: ResName) -> Result<()> {
        match self.sync.get() {
            Some(f) => f(),
            None => Ok(()),
        }
    }
    fn go_inval(&self, name: ResName) {
        self.cache.invalidate(name);
    }
}
