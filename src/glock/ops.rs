//! Per-type glock operations (the kernel's `glops.c`): what to write back and
//! what to forget when a glock is demoted.

use crate::buf::BufCache;
use crate::error::Result;
use gfs2_lockproto::ResName;
use std::sync::Arc;

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

/// Inode and rgrp glocks: they cover metadata buffers (dinode, indirect
/// blocks, directory leaves and hash table, EA blocks; rgrp headers and
/// bitmaps). The read path never dirties buffers, so sync has nothing to do
/// until the write path adds its journal flush here.
pub struct CacheOps {
    cache: Arc<BufCache>,
}

impl CacheOps {
    /// Operations invalidating `cache`.
    pub fn new(cache: Arc<BufCache>) -> Arc<Self> {
        Arc::new(CacheOps { cache })
    }
}

impl GlockOps for CacheOps {
    fn go_sync(&self, _name: ResName) -> Result<()> {
        Ok(())
    }
    fn go_inval(&self, name: ResName) {
        self.cache.invalidate(name);
    }
}
