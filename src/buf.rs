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

/// A cached block: immutable once read. The write path replaces whole blocks
/// (copy-on-write) through [`BufCache::put_dirty`].
pub type Block = Arc<[u8]>;

struct Entry {
    data: Block,
    glock: ResName,
}

struct Inner {
    lru: LruCache<u64, Entry>,
    by_glock: HashMap<ResName, HashSet<u64>>,
    /// Blocks changed by committed transactions whose log flush has not
    /// happened yet: they win over the LRU and are never evicted.
    dirty: HashMap<u64, Block>,
    /// Blocks the log holds but the device does not yet hold in place (the
    /// kernel's AIL): read from here until a checkpoint writes them.
    pinned: HashMap<u64, Block>,
    /// Which dirty or pinned blocks are journaled file data (no header,
    /// logged with JDATA descriptors, read by the data path only).
    jdata: HashSet<u64>,
    /// The glock each dirty or pinned block was last changed under, and
    /// how many such blocks each glock has: a glock with none has nothing
    /// to write back before it goes (the kernel's `GLF_DIRTY` and per-glock
    /// AIL).
    owner: HashMap<u64, ResName>,
    unsynced: HashMap<ResName, usize>,
}

impl Inner {
    /// `blkno` was changed under `glock` (dirty now).
    fn own(&mut self, blkno: u64, glock: ResName) {
        match self.owner.insert(blkno, glock) {
            Some(old) if old == glock => return,
            Some(old) => self.uncount(old),
            None => {}
        }
        *self.unsynced.entry(glock).or_default() += 1;
    }

    /// `blkno` is neither dirty nor pinned any more.
    fn disown(&mut self, blkno: u64) {
        if let Some(g) = self.owner.remove(&blkno) {
            self.uncount(g);
        }
    }

    fn uncount(&mut self, glock: ResName) {
        if let Some(n) = self.unsynced.get_mut(&glock) {
            *n -= 1;
            if *n == 0 {
                self.unsynced.remove(&glock);
            }
        }
    }
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
                dirty: HashMap::new(),
                pinned: HashMap::new(),
                jdata: HashSet::new(),
                owner: HashMap::new(),
                unsynced: HashMap::new(),
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
        self.read_meta_as(gh.name(), blkno, mh_type)
    }

    /// [`BufCache::read_meta`] for a caller that holds `glock` through a
    /// transaction rather than a single holder.
    pub fn read_meta_as(&self, glock: ResName, blkno: u64, mh_type: u32) -> Result<Block> {
        let cached = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            match inner.dirty.get(&blkno).or_else(|| inner.pinned.get(&blkno)) {
                Some(d) => Some(d.clone()),
                None => inner.lru.get(&blkno).map(|e| e.data.clone()),
            }
        };
        let data = match cached {
            Some(d) => d,
            None => {
                let d = read_block_shared(self.dev.as_ref(), self.bsize, blkno)?;
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
                            // No entry per glock once its blocks are gone.
                            if s.is_empty() {
                                inner.by_glock.remove(&old.glock);
                            }
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

    /// The current content of `blkno` if it is dirty (not yet logged).
    pub fn dirty_block(&self, blkno: u64) -> Option<Block> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.dirty.get(&blkno).cloned()
    }

    /// Replace block `blkno` with `data` as part of a committed transaction;
    /// it stays dirty until the log flush writes it ([`BufCache::logged`]).
    pub fn put_dirty(&self, glock: ResName, blkno: u64, data: Block) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.lru.pop(&blkno);
        inner.jdata.remove(&blkno);
        inner.dirty.insert(blkno, data.clone());
        inner.own(blkno, glock);
        inner.by_glock.entry(glock).or_default().insert(blkno);
        inner.lru.push(blkno, Entry { data, glock });
    }

    /// A journaled-data block written by a committed transaction: dirty
    /// until logged, like metadata, but never served by [`Self::read_meta`].
    pub fn put_dirty_jdata(&self, glock: ResName, blkno: u64, data: Block) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.lru.pop(&blkno);
        inner.dirty.insert(blkno, data);
        inner.jdata.insert(blkno);
        inner.own(blkno, glock);
    }

    /// The content of journaled data block `blkno` when the device does
    /// not hold it yet (dirty or pinned).
    pub fn data_overlay(&self, blkno: u64) -> Option<Block> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !inner.jdata.contains(&blkno) {
            return None;
        }
        inner
            .dirty
            .get(&blkno)
            .or_else(|| inner.pinned.get(&blkno))
            .cloned()
    }

    /// Whether dirty or pinned block `blkno` is journaled file data.
    pub fn is_jdata(&self, blkno: u64) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.jdata.contains(&blkno)
    }

    /// Every dirty block, in address order (for the log flush).
    pub fn dirty_blocks(&self) -> Vec<(u64, Block)> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(u64, Block)> = inner.dirty.iter().map(|(b, d)| (*b, d.clone())).collect();
        v.sort_by_key(|(b, _)| *b);
        v
    }

    /// Number of dirty blocks.
    pub fn dirty_len(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.dirty.len()
    }

    /// The log flush wrote these blocks to the journal: they stay pinned
    /// (served from memory, never evicted) until a checkpoint writes them in
    /// place. A block changed again since stays dirty as well.
    pub fn logged(&self, written: &[(u64, Block)]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (b, d) in written {
            if inner.dirty.get(b).is_some_and(|cur| Arc::ptr_eq(cur, d)) {
                inner.dirty.remove(b);
            }
            inner.pinned.insert(*b, d.clone());
        }
    }

    /// Every pinned block, in address order (for a checkpoint).
    pub fn pinned_blocks(&self) -> Vec<(u64, Block)> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(u64, Block)> = inner.pinned.iter().map(|(b, d)| (*b, d.clone())).collect();
        v.sort_by_key(|(b, _)| *b);
        v
    }

    /// Number of pinned blocks.
    pub fn pinned_len(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.pinned.len()
    }

    /// A checkpoint wrote these blocks in place: ordinary cached blocks
    /// again (unless logged again since).
    pub fn unpin(&self, written: &[(u64, Block)]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (b, d) in written {
            if inner.pinned.get(b).is_some_and(|cur| Arc::ptr_eq(cur, d)) {
                inner.pinned.remove(b);
                if !inner.dirty.contains_key(b) {
                    inner.jdata.remove(b);
                    inner.disown(*b);
                }
            }
        }
    }

    /// Forget a block that was freed (it must not be read back as metadata).
    pub fn forget(&self, blkno: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.lru.pop(&blkno);
    }

    /// A freed block's last word, at the log flush that makes the freeing
    /// durable: whatever the cache holds of it is dropped, so it is neither
    /// logged nor written in place over what reuses it.
    pub fn drop_freed(&self, blkno: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.lru.pop(&blkno);
        inner.dirty.remove(&blkno);
        inner.pinned.remove(&blkno);
        inner.jdata.remove(&blkno);
        inner.disown(blkno);
    }

    /// Whether a block changed under `glock` is not yet in place on the
    /// device (dirty, or logged and not yet checkpointed): only then has
    /// the glock anything to write back before another node may have it.
    pub fn has_unsynced(&self, glock: ResName) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.unsynced.contains_key(&glock)
    }

    /// Drop everything (after journal replay wrote behind the cache).
    pub fn invalidate_all(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.lru.clear();
        inner.by_glock.clear();
        // Dirty and pinned blocks stay: reads find them before the LRU.
    }

    /// Drop every block attached to `glock` (its `go_inval`).
    pub fn invalidate(&self, glock: ResName) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(blocks) = inner.by_glock.remove(&glock) {
            for b in blocks {
                if inner.dirty.contains_key(&b) || inner.pinned.contains_key(&b) {
                    // Never drop unflushed changes; go_sync flushes first.
                    continue;
                }
                if inner.lru.peek(&b).is_some_and(|e| e.glock == glock) {
                    inner.lru.pop(&b);
                }
            }
        }
    }
}

/// Read one whole block from a device, with range checks.
pub fn read_block(dev: &dyn BlockDevice, bsize: u32, blkno: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; bsize as usize];
    read_block_into(dev, blkno, &mut buf)?;
    Ok(buf)
}

/// [`read_block`] straight into a shareable buffer: what the cache keeps is
/// the buffer the device filled, never a copy of it.
fn read_block_shared(dev: &dyn BlockDevice, bsize: u32, blkno: u64) -> Result<Block> {
    let mut b: Block = (0..bsize).map(|_| 0u8).collect();
    match Arc::get_mut(&mut b) {
        Some(buf) => read_block_into(dev, blkno, buf)?,
        // Unreachable (a new Arc has one owner); fall back to a copy.
        None => b = read_block(dev, bsize, blkno)?.into(),
    }
    Ok(b)
}

/// Fill `buf` (one block) with block `blkno`, refusing addresses past the
/// end of the device.
fn read_block_into(dev: &dyn BlockDevice, blkno: u64, buf: &mut [u8]) -> Result<()> {
    let bsize = buf.len() as u64;
    let off = blkno
        .checked_mul(bsize)
        .filter(|o| o.checked_add(bsize).is_some_and(|e| e <= dev.size()))
        .ok_or_else(|| FsError::corrupt(blkno, "block number beyond the end of the device"))?;
    dev.read_at(buf, off).map_err(|e| FsError::Io {
        what: format!("block {blkno} of {}", dev.describe()),
        source: e,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use gfs2_lockproto::lm_type;

    /// A device the tests never read or write: the cache's bookkeeping alone.
    struct NoDevice;

    impl BlockDevice for NoDevice {
        fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
            Err(std::io::ErrorKind::Unsupported.into())
        }
        fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
            Err(std::io::ErrorKind::Unsupported.into())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn size(&self) -> u64 {
            0
        }
        fn describe(&self) -> String {
            "none".into()
        }
    }

    fn block(byte: u8) -> Block {
        Arc::from(vec![byte; 512].into_boxed_slice())
    }

    #[test]
    fn a_glock_has_unsynced_blocks_until_they_are_in_place() {
        let c = BufCache::new(Arc::new(NoDevice), 512, 1 << 20);
        let (a, b) = (
            ResName::new(lm_type::INODE, 100),
            ResName::new(lm_type::INODE, 200),
        );
        assert!(!c.has_unsynced(a));
        let v1 = block(1);
        c.put_dirty(a, 100, v1.clone());
        c.put_dirty_jdata(b, 300, block(3));
        assert!(c.has_unsynced(a) && c.has_unsynced(b));
        // Logged: pinned, not yet in place.
        c.logged(&[(100, v1.clone())]);
        assert!(c.has_unsynced(a));
        // Changed again before the checkpoint of the first version: the
        // checkpoint of that version leaves the newer one to write.
        let v2 = block(2);
        c.put_dirty(a, 100, v2.clone());
        c.unpin(&[(100, v1)]);
        assert!(c.has_unsynced(a));
        c.logged(&[(100, v2.clone())]);
        c.unpin(&[(100, v2)]);
        assert!(!c.has_unsynced(a), "in place: nothing left to sync");
        assert!(c.has_unsynced(b));
        // A freed block is forgotten with its changes.
        c.drop_freed(300);
        assert!(!c.has_unsynced(b));
        // A block changed under another glock moves to it.
        c.put_dirty(a, 400, block(4));
        c.put_dirty(b, 400, block(5));
        assert!(!c.has_unsynced(a) && c.has_unsynced(b));
    }
}
