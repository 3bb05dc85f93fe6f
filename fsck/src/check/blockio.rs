//! Block I/O for the checker: reads through a small read cache (a dinode
//! or indirect block looked at by several checks is read once, and the
//! dinodes the walk reads next come in one request), repairs kept in memory
//! (`Fsck::write`) and written in block order at the end (`Fsck::flush`),
//! and the bitmaps of the rgrps, read per rgrp when needed rather than all
//! kept (which would cost two bits per block on top of the expected state).

use super::*;

/// The bitmap bytes of an rgrp from its header and bitmap blocks.
pub(super) fn bitmap_bytes(raw: &[u8], bsize: usize, ri: &Rindex) -> Vec<u8> {
    let mut bits = Vec::with_capacity(ri.bitbytes as usize);
    let mut left = ri.bitbytes as usize;
    let mut k = 0;
    while left > 0 && (k + 1) * bsize <= raw.len() {
        let start = if k == 0 { Rgrp::SIZE } else { MetaHeader::SIZE };
        let n = (bsize - start).min(left);
        let o = k * bsize + start;
        bits.extend_from_slice(&raw[o..o + n]);
        left -= n;
        k += 1;
    }
    bits.resize(ri.bitbytes as usize, 0);
    bits
}

/// Bitmap bytes of an rgrp: kept if loaded, else read (zeros for a bitmap
/// that cannot be trusted).
pub(super) fn rg_bits_of<'a>(
    dev: &dyn BlockDevice,
    bs: usize,
    rg: &'a Rg,
) -> std::io::Result<std::borrow::Cow<'a, [u8]>> {
    if rg.loaded {
        return Ok(std::borrow::Cow::Borrowed(&rg.bits));
    }
    if rg.bits_lost {
        return Ok(std::borrow::Cow::Owned(vec![0u8; rg.ri.bitbytes as usize]));
    }
    let mut raw = vec![0u8; rg.ri.length as usize * bs];
    dev.read_at(&mut raw, rg.ri.addr * bs as u64)?;
    Ok(std::borrow::Cow::Owned(bitmap_bytes(&raw, bs, &rg.ri)))
}

impl Fsck {
    /// A block to change (a copy).
    pub(super) fn read(&self, blk: u64) -> Res<Vec<u8>> {
        if let Some(b) = self.cache.get(&blk) {
            return Ok(b.clone());
        }
        Ok(self.read_rc(blk)?.to_vec())
    }

    /// A block to look at (shared with the read cache: no copy).
    pub(super) fn read_rc(&self, blk: u64) -> Res<Blk> {
        if let Some(b) = self.cache.get(&blk) {
            return Ok(std::rc::Rc::new(b.clone()));
        }
        if blk >= self.dev_blocks {
            return Err(Fatal(format!("block {blk} is beyond the device")));
        }
        let mut r = self.recent.borrow_mut();
        r.1 += 1;
        let now = r.1;
        if let Some(e) = r.0.iter_mut().find(|e| e.0 == blk) {
            e.2 = now;
            return Ok(e.1.clone());
        }
        let bs = self.bsize as usize;
        // The next entries' dinodes right after this one: one read for all.
        let run = match self.run_hint.get() {
            (start, n) if start == blk && n > 1 => {
                let mut n = n.min(RUN_MAX).min(self.dev_blocks - blk);
                // Stop before a block changed in memory or cached.
                for k in 1..n {
                    let p = blk + k;
                    if self.cache.contains_key(&p) || r.0.iter().any(|e| e.0 == p) {
                        n = k;
                        break;
                    }
                }
                n
            }
            _ => 1,
        };
        if run > 1 {
            self.run_hint.set((0, 0));
            let mut all = vec![0u8; run as usize * bs];
            self.dev.read_at(&mut all, blk * bs as u64)?;
            let mut mine = None;
            for (k, chunk) in all.chunks_exact(bs).enumerate() {
                let data = std::rc::Rc::new(chunk.to_vec());
                if k == 0 {
                    mine = Some(data.clone());
                }
                let p = blk + k as u64;
                if r.0.len() < RECENT {
                    r.0.push((p, data, now));
                } else if let Some(e) = r.0.iter_mut().min_by_key(|e| e.2) {
                    *e = (p, data, now);
                }
            }
            return mine.ok_or_else(|| Fatal(format!("block {blk}: read failed")));
        }
        let mut b = vec![0u8; bs];
        self.dev.read_at(&mut b, blk * bs as u64)?;
        let data = std::rc::Rc::new(b);
        // Least recently used out: a directory block being followed stays
        // while the dinodes it names come and go.
        if r.0.len() < RECENT {
            r.0.push((blk, data.clone(), now));
        } else if let Some(e) = r.0.iter_mut().min_by_key(|e| e.2) {
            *e = (blk, data.clone(), now);
        }
        Ok(data)
    }

    /// Write `di` over the dinode at `addr`, the rest of its block (stuffed
    /// data, the tree's pointers) as it is so far.
    pub(super) fn put_dinode(&mut self, addr: u64, di: &Dinode) -> Res<()> {
        let mut b = self.read(addr)?;
        di.write(&mut b)?;
        self.write(addr, b);
        Ok(())
    }

    pub(super) fn write(&mut self, blk: u64, b: Vec<u8>) {
        self.recent.borrow_mut().0.retain(|e| e.0 != blk);
        self.cache.insert(blk, b);
    }

    pub(super) fn zero_ptr(&mut self, loc: PtrLoc) -> Res<()> {
        let mut b = self.read(loc.block)?;
        put_be64(&mut b, loc.off, 0);
        self.write(loc.block, b);
        Ok(())
    }

    /// Write every changed block and flush.
    pub(super) fn flush(&mut self) -> Res<()> {
        if self.cache.is_empty() || !self.r.repairing() {
            return Ok(());
        }
        let mut blocks: Vec<_> = self.cache.drain().collect();
        blocks.sort_by_key(|(b, _)| *b);
        for (blk, data) in blocks {
            self.dev.write_at(&data, blk * u64::from(self.bsize))?;
        }
        self.dev.flush()?;
        Ok(())
    }

    /// Which rgrp holds data block `blk`, and its index there.
    pub(super) fn rg_of(&self, blk: u64) -> Option<(usize, u64)> {
        // Most lookups fall in the rgrp of the one before.
        let h = self.rg_hint.get();
        if let Some(r) = self.rgs.get(h) {
            if blk >= r.ri.data0 && blk - r.ri.data0 < u64::from(r.ri.data) {
                return Some((h, blk - r.ri.data0));
            }
        }
        let i = self.rgs.partition_point(|r| r.ri.data0 <= blk);
        let r = self.rgs.get(i.checked_sub(1)?)?;
        let idx = blk - r.ri.data0;
        let found = (idx < u64::from(r.ri.data)).then_some((i - 1, idx));
        if found.is_some() {
            self.rg_hint.set(i - 1);
        }
        found
    }

    /// Bitmap bytes of rgrp `i`: kept if loaded, else read (zeros for a
    /// bitmap that cannot be trusted).
    pub(super) fn rg_bits(&self, i: usize) -> Res<std::borrow::Cow<'_, [u8]>> {
        Ok(rg_bits_of(&self.dev, self.bsize as usize, &self.rgs[i])?)
    }

    /// Keep rgrp `i`'s bitmap in memory (it is about to change).
    pub(super) fn load_bits(&mut self, i: usize) -> Res<()> {
        if !self.rgs[i].loaded {
            let bits = self.rg_bits(i)?.into_owned();
            self.rgs[i].bits = bits;
            self.rgs[i].loaded = true;
        }
        Ok(())
    }

    /// A repair allocates or frees `blk`: its bitmap state, and the
    /// rgrp's free and dinode counts follow (as an allocation by the
    /// kernel keeps them), so pass 5 does not report the repair's own
    /// doing as another problem.
    pub(super) fn set_bit(&mut self, blk: u64, st: BlockState) {
        self.put_bit(blk, st, true);
    }

    /// Pass 5 corrects `blk`'s bitmap state to what the walk found: the
    /// counts are compared with the corrected bitmap afterwards.
    pub(super) fn correct_bit(&mut self, blk: u64, st: BlockState) {
        self.put_bit(blk, st, false);
    }

    fn put_bit(&mut self, blk: u64, st: BlockState, counted: bool) {
        if let Some((i, idx)) = self.rg_of(blk) {
            if self.load_bits(i).is_err() {
                return;
            }
            let rg = &mut self.rgs[i];
            let old = bitmap_get(&rg.bits, idx as usize);
            bitmap_set(&mut rg.bits, idx as usize, st);
            rg.dirty = true;
            if counted && !rg.bits_lost {
                let h = &mut rg.hdr;
                match old {
                    Some(BlockState::Free) => h.free = h.free.saturating_sub(1),
                    Some(BlockState::Dinode) => h.dinodes = h.dinodes.saturating_sub(1),
                    _ => {}
                }
                match st {
                    BlockState::Free => h.free = h.free.saturating_add(1),
                    BlockState::Dinode => h.dinodes = h.dinodes.saturating_add(1),
                    _ => {}
                }
            }
        }
    }
}
