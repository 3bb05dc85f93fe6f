//! Metadata block cache.
//!
//! Every cached block is attached to the glock that covers it and is dropped
//! when that glock is invalidated; clean blocks are also evicted in LRU order
//! to bound memory. Reads check the metadata header, so a block of the wrong
//! kind gives a corruption error (EIO) instead of being misparsed.

use crate::dev::BlockDevice;
use crate::error::{FsError, Result};
use crate::format::{MetaHeader, MAGIC};
use crate::glock::Holder;
use gfs2_lockproto::ResName;
use lru::LruCache;
use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

/// A cached block: immutable once read (the write path will add copy-on-write).
pub type Block = Arc<[u8]>;

struct Entry {
    data: Block,
    glock: ResName,
}

struct Inner {
    lru: LruCache<u64, Entry>,
    by_glock: HashMap<ResName, HashSet<u64>>,
}

/// The metadata cache of one mounted filesystem.
pub struct BufCache {
    dev: Arc<dyn BlockDevice>,
    bsize: u32,
    inner: Mutex<Inner>,
}

impl BufCache {
    /// A cache of at most `max_bytes` of blocks of `bsize` bytes.
    pub fn new(dev: Arc<dyn BlockDevice>, bsize: u32, max_bytes: usize) -> Self {
        let n = (max_bytes / bsize.max(512) as usize).max(16);
        BufCache {
            dev,
            bsize,
            inner: Mutex::new(Inner {
                lru: LruCache::new(NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)),
                by_glock: HashMap::new(),
            }),
        }
    }

    /// The filesystem block size.
    pub fn bsize(&self) -> u32 {
        self.bsize
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// Number of blocks cached (for tests).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lru
            .len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Read block `blkno` without checking its header (and without caching):
    /// for superblock probing and journal scans.
    pub fn read_raw(&self, blkno: u64) -> Result<Vec<u8>> {
        read_block(self.dev.as_ref(), self.bsize, blkno)
    }

    /// Read metadata block `blkno` of type `mh_type` covered by the glock `gh`
    /// holds. The header's magic and type are checked on every access.
    pub fn read_meta(&self, gh: &Holder, blkno: u64, mh_type: u32) -> Result<Block> {
        let glock = gh.name();
        let cached = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.lru.get(&blkno).map(|e| e.data.clone())
        };
        let data = match cached {
            Some(d) => d,
            None => {
                let d: Block = read_block(self.dev.as_ref(), self.bsize, blkno)?.into();
                let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((old_blk, old)) = inner.lru.push(
                    blkno,
                    Entry {
                        data: d.clone(),
                        glock,
                    },
                ) {
                    if let Some(s) = inner.by_glock.get_mut(&old.glock) {
                        if old_blk != blkno || old.glock != glock {
                            s.remove(&old_blk);
                        }
                    }
                }
                inner.by_glock.entry(glock).or_default().insert(blkno);
                d
            }
        };
        check_header(&data, blkno, mh_type)?;
        Ok(data)
    }

    /// Drop everything (after journal replay wrote behind the cache).
    pub fn invalidate_all(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.lru.clear();
        inner.by_glock.clear();
    }

    /// Drop every block attached to `glock` (its `go_inval`).
    pub fn invalidate(&self, glock: ResName) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(blocks) = inner.by_glock.remove(&glock) {
            for b in blocks {
                if inner.lru.peek(&b).is_some_and(|e| e.glock == glock) {
                    inner.lru.pop(&b);
                }
            }
        }
    }
}

/// Read one whole block from a device, with range checks.
pub fn read_block(dev: &dyn BlockDevice, bsize: u32, blkno: u64) -> Result<Vec<u8>> {
    let off = blkno
        .checked_mul(bsize as u64)
        .filter(|o| o.checked_add(bsize as u64).is_some_and(|e| e <= dev.size()))
        .ok_or_else(|| FsError::corrupt(blkno, "block number beyond the end of the device"))?;
    let mut buf = vec![0u8; bsize as usize];
    dev.read_at(&mut buf, off).map_err(|e| FsError::Io {
        what: format!("block {blkno} of {}", dev.describe()),
        source: e,
    })?;
    Ok(buf)
}

/// Check a metadata block's header: GFS2 magic and the expected type.
pub fn check_header(data: &[u8], blkno: u64, mh_type: u32) -> Result<()> {
    let h = MetaHeader::parse(data).map_err(|_| FsError::corrupt(blkno, "short block"))?;
    if h.magic != MAGIC {
        return Err(FsError::corrupt(
            blkno,
            format!(
                "bad magic {:#x} (expected metadata type {mh_type})",
                h.magic
            ),
        ));
    }
    if h.mh_type != mh_type {
        return Err(FsError::corrupt(
            blkno,
            format!("metadata type {} where {mh_type} was expected", h.mh_type),
        ));
    }
    Ok(())
}
