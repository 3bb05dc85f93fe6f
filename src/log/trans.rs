//! Transactions: the metadata blocks one operation changes, built in memory
//! and handed to the log as a unit.
//!
//! An operation reads metadata through its transaction (seeing its own
//! changes), edits whole-block copies, and finally `publish`es them: from
//! then on readers see the new blocks (the cache's dirty set) and the next
//! log flush writes them to the journal and in place, all or nothing.

use crate::buf::{Block, BufCache};
use crate::error::{FsError, Result};
use crate::format::MetaHeader;
use crate::glock::{GlockTable, Holder};
use gfs2_lockproto::{Mode, ResName};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Changes to the master statfs totals made by a transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatfsDelta {
    pub total: i64,
    pub free: i64,
    pub dinodes: i64,
}

/// One operation's metadata changes.
///
/// A block may only be read under its glock held at least shared, and
/// changed under it held exclusively: a transaction knows the glocks its
/// operation holds and answers [`FsError::NeedGlock`] for any other, so
/// that the operation can take it (in lock order, holding nothing a
/// demotion needs) and start again.
pub struct Txn<'c> {
    cache: &'c BufCache,
    glocks: &'c Arc<GlockTable>,
    /// The glocks held for this transaction and their modes.
    held: HashMap<ResName, Mode>,
    /// Glocks the transaction took itself (see [`Txn::require`]).
    taken: Vec<Holder>,
    blocks: BTreeMap<u64, (ResName, Vec<u8>)>,
    /// Data blocks of journaled-data files (no metadata header).
    jdata: BTreeMap<u64, (ResName, Vec<u8>)>,
    /// Blocks this transaction freed (not reusable until the log flush).
    pub freed: Vec<u64>,
    /// Allocation changes for the statfs file.
    pub statfs: StatfsDelta,
}

/// A block read through a transaction (see [`Txn::view`]).
pub enum View<'a> {
    /// The transaction's own changed copy.
    Own(&'a [u8]),
    /// The cache's block, not part of the transaction.
    Cached(crate::buf::Block),
}

impl std::ops::Deref for View<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            View::Own(b) => b,
            View::Cached(b) => b,
        }
    }
}

impl<'c> Txn<'c> {
    /// A transaction reading through `cache`, under the glocks `held` (of
    /// `glocks`).
    pub fn new(
        cache: &'c BufCache,
        glocks: &'c Arc<GlockTable>,
        held: HashMap<ResName, Mode>,
    ) -> Self {
        Txn {
            cache,
            glocks,
            held,
            taken: Vec::new(),
            blocks: BTreeMap::new(),
            jdata: BTreeMap::new(),
            freed: Vec::new(),
            statfs: StatfsDelta::default(),
        }
    }

    /// The block size.
    pub fn bsize(&self) -> u32 {
        self.cache.bsize()
    }

    /// The cache the transaction reads from.
    pub fn cache(&self) -> &'c BufCache {
        self.cache
    }

    /// Make sure `glock` is held in `mode` or a stronger one: taken here
    /// if that needs no waiting (cached, or granted at once), else
    /// [`FsError::NeedGlock`] for the operation to wait for it outside the
    /// transaction, in lock order.
    pub fn require(&mut self, glock: ResName, mode: Mode) -> Result<()> {
        if self.take(glock, mode, false)? {
            Ok(())
        } else {
            Err(FsError::NeedGlock(glock, mode))
        }
    }

    /// Hold `glock` in `mode` or stronger if that needs no waiting; `false`
    /// when another node holds it (or a demotion for one is under way).
    pub fn try_require(&mut self, glock: ResName, mode: Mode) -> Result<bool> {
        self.take(glock, mode, false)
    }

    /// Take `glock` in `mode`, uncached, if that needs no waiting; `false`
    /// when another node holds it. For iopen glocks: whoever gets one
    /// exclusively knows no other node has the inode open.
    pub fn try_take_uncached(&mut self, glock: ResName, mode: Mode) -> Result<bool> {
        self.take(glock, mode, true)
    }

    /// Hold `glock` in `mode` or stronger, taking it here if that needs no
    /// waiting; `false` if it would.
    fn take(&mut self, glock: ResName, mode: Mode, uncached: bool) -> Result<bool> {
        if self.held.get(&glock).is_some_and(|&m| m >= mode) {
            return Ok(true);
        }
        let h = if uncached {
            self.glocks.try_acquire_nocache(glock, mode)?
        } else {
            self.glocks.try_acquire(glock, mode)?
        };
        Ok(h.is_some_and(|h| {
            self.held.insert(glock, h.mode());
            self.taken.push(h);
            true
        }))
    }

    /// The holders this transaction took: the operation keeps them until
    /// its changes are published.
    pub fn take_holders(&mut self) -> Vec<Holder> {
        std::mem::take(&mut self.taken)
    }

    /// Metadata block `blkno` of type `mh_type`, as this transaction sees
    /// it, for editing. `glock` is the lock covering it, needed exclusively.
    pub fn get_mut(&mut self, glock: ResName, blkno: u64, mh_type: u32) -> Result<&mut Vec<u8>> {
        self.require(glock, Mode::EX)?;
        self.fetch(glock, blkno, mh_type)
    }

    fn fetch(&mut self, glock: ResName, blkno: u64, mh_type: u32) -> Result<&mut Vec<u8>> {
        if !self.blocks.contains_key(&blkno) {
            let b = self.cache.read_meta_as(glock, blkno, mh_type)?;
            self.blocks.insert(blkno, (glock, b.to_vec()));
        }
        let (_, data) = self
            .blocks
            .get_mut(&blkno)
            .ok_or_else(|| FsError::corrupt(blkno, "transaction lost a block"))?;
        crate::buf::check_header(data, blkno, mh_type)?;
        Ok(data)
    }

    /// Read-only copy of a block; its glock is needed shared.
    pub fn get(&mut self, glock: ResName, blkno: u64, mh_type: u32) -> Result<Vec<u8>> {
        self.view(glock, blkno, mh_type).map(|b| b.to_vec())
    }

    /// A block as this transaction sees it, without a copy: its own changed
    /// copy, or else the cached block. A block only read is not part of the
    /// transaction: it is neither logged nor published (the glock held
    /// keeps it as read until the transaction ends). The allocator's and
    /// the block map's hot paths read through this: a copy of every bitmap
    /// and indirect block per mapped block was most of a sequential write's
    /// CPU time, and logging blocks only read most of a log flush's.
    pub fn view(&mut self, glock: ResName, blkno: u64, mh_type: u32) -> Result<View<'_>> {
        self.require(glock, Mode::PR)?;
        if let Some((_, data)) = self.blocks.get(&blkno) {
            crate::buf::check_header(data, blkno, mh_type)?;
            return Ok(View::Own(data));
        }
        Ok(View::Cached(
            self.cache.read_meta_as(glock, blkno, mh_type)?,
        ))
    }

    /// A freshly allocated metadata block: zeroed, with a header of the
    /// given type and format.
    pub fn new_meta(
        &mut self,
        glock: ResName,
        blkno: u64,
        mh_type: u32,
        format: u32,
    ) -> &mut Vec<u8> {
        let mut b = vec![0u8; self.bsize() as usize];
        let _ = MetaHeader::new(mh_type, format).write(&mut b);
        self.blocks.insert(blkno, (glock, b));
        &mut self.blocks.entry(blkno).or_insert((glock, Vec::new())).1
    }

    /// Write a whole data block of a journaled-data file through the log.
    pub fn put_jdata(&mut self, glock: ResName, blkno: u64, data: Vec<u8>) {
        self.jdata.insert(blkno, (glock, data));
    }

    /// The latest content of journaled data block `blkno` that is not yet
    /// in place: this transaction's, or the cache's (dirty or pinned).
    pub fn jdata_overlay(&self, blkno: u64) -> Option<Vec<u8>> {
        match self.jdata.get(&blkno) {
            Some((_, d)) => Some(d.clone()),
            None => self.cache.data_overlay(blkno).map(|b| b.to_vec()),
        }
    }

    /// Drop a block the transaction freed: it must not be logged.
    pub fn discard(&mut self, blkno: u64) {
        self.blocks.remove(&blkno);
        self.jdata.remove(&blkno);
        self.cache.forget(blkno);
    }

    /// Number of blocks changed so far.
    pub fn len(&self) -> usize {
        self.blocks.len() + self.jdata.len()
    }

    /// Whether nothing was changed.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.jdata.is_empty()
    }

    /// The inodes whose glocks cover a block this transaction changed
    /// (what an fsync of one of them must see flushed: the kernel's log
    /// work of an inode glock).
    pub fn changed_inodes(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .blocks
            .values()
            .chain(self.jdata.values())
            .filter(|(g, _)| g.lk_type == gfs2_lockproto::lm_type::INODE)
            .map(|(g, _)| g.number)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Make the changes visible and queue them for the next log flush.
    /// Returns the blocks the transaction left free: a block it freed and
    /// then allocated again as metadata is not among them.
    pub fn publish(self) -> Vec<u64> {
        let freed = self
            .freed
            .into_iter()
            .filter(|b| !self.blocks.contains_key(b) && !self.jdata.contains_key(b))
            .collect();
        for (blkno, (glock, data)) in self.blocks {
            let b: Block = Arc::from(data.into_boxed_slice());
            self.cache.put_dirty(glock, blkno, b);
        }
        for (blkno, (glock, data)) in self.jdata {
            let b: Block = Arc::from(data.into_boxed_slice());
            self.cache.put_dirty_jdata(glock, blkno, b);
        }
        freed
    }
}
