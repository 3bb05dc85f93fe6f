//! The checker's block map: which inode claims each block (`claim`: a
//! second claim is a duplicate for pass 1b or an error), the expected
//! state of every block (two bits, checked against the bitmaps in pass 5),
//! and allocation for repairs (new blocks taken from what the walk found
//! free, not from the on-disk bitmaps, which may be wrong).

use super::*;

impl Fsck {
    /// Claim `blk` for inode `owner`. Returns an error text when the block
    /// is out of range or already claimed.
    pub(super) fn claim(&mut self, blk: u64, owner: u64, st: u8) -> Result<(), String> {
        self.claim_ex(blk, owner, st, true)
    }

    pub(super) fn claim_ex(
        &mut self,
        blk: u64,
        owner: u64,
        st: u8,
        track: bool,
    ) -> Result<(), String> {
        if self.rg_of(blk).is_none() {
            return Err(format!("block {blk} is outside the resource groups' data"));
        }
        if want_get(&self.want, blk) != W_FREE {
            return Err(match self.owner_of(blk) {
                Some(o) => format!("block {blk} is already used by inode {}", o),
                None => format!("block {blk} is already used as file data"),
            });
        }
        want_set(&mut self.want, blk, st);
        if track && st != W_DINODE {
            self.owner.insert(blk, owner);
        }
        match self.inodes.get_mut(&owner) {
            Some(i) => i.blocks += 1,
            None => self.ino(owner).blocks += 1,
        }
        Ok(())
    }

    pub(super) fn owner_of(&self, blk: u64) -> Option<u64> {
        if want_get(&self.want, blk) == W_DINODE {
            return Some(blk);
        }
        self.owner.get(&blk).copied()
    }

    /// A free block (bitmap free and not claimed), marked used for `owner`.
    pub(super) fn alloc(&mut self, owner: u64, track: bool) -> Option<u64> {
        // From the end of the filesystem backwards: allocations happen during
        // the walk, and a block the bitmap wrongly calls free is more likely
        // to be near the start, where files are allocated first.
        let n = self.rgs.len();
        let start = self.alloc_hint.min(n.saturating_sub(1));
        let last = self.alloc_last;
        for i in (0..=start).rev().chain((start + 1..n).rev()) {
            if self.load_bits(i).is_err() {
                continue;
            }
            let rg = &self.rgs[i];
            let mut top = u64::from(rg.ri.data);
            if i == start && last >= rg.ri.data0 && last < rg.ri.data0 + top {
                top = last - rg.ri.data0;
            }
            for idx in (0..top).rev() {
                let blk = rg.ri.data0 + idx;
                if bitmap_get(&rg.bits, idx as usize) == Some(BlockState::Free)
                    && want_get(&self.want, blk) == W_FREE
                {
                    self.alloc_hint = i;
                    self.alloc_last = blk;
                    self.set_bit(blk, BlockState::Used);
                    want_set(&mut self.want, blk, W_USED);
                    if track {
                        self.owner.insert(blk, owner);
                    }
                    match self.inodes.get_mut(&owner) {
                        Some(i) => i.blocks += 1,
                        None => self.ino(owner).blocks += 1,
                    }
                    return Some(blk);
                }
            }
        }
        None
    }

    /// `n` consecutive blocks free in the bitmap and not claimed, marked
    /// used in the bitmap (the walk claims them). From the end backwards,
    /// and never in an rgrp whose bitmap was lost (before the walk has
    /// claimed everything, its zeros would say every block is free).
    pub(super) fn alloc_run(&mut self, n: u64) -> Option<u64> {
        for i in (0..self.rgs.len()).rev() {
            if self.rgs[i].bits_lost || self.load_bits(i).is_err() {
                continue;
            }
            let ri = self.rgs[i].ri;
            let mut run = 0u64;
            let mut found = None;
            for idx in (0..u64::from(ri.data)).rev() {
                let blk = ri.data0 + idx;
                if bitmap_get(&self.rgs[i].bits, idx as usize) == Some(BlockState::Free)
                    && want_get(&self.want, blk) == W_FREE
                    && !self.cache.contains_key(&blk)
                {
                    run += 1;
                    if run == n {
                        found = Some(blk);
                        break;
                    }
                } else {
                    run = 0;
                }
            }
            if let Some(start) = found {
                for b in start..start + n {
                    self.set_bit(b, BlockState::Used);
                }
                return Some(start);
            }
        }
        None
    }

    pub(super) fn unclaim(&mut self, blk: u64, idx: u64) {
        if self.owner_of(blk) == Some(idx) {
            self.owner.remove(&blk);
            want_set(&mut self.want, blk, W_FREE);
            self.ino(idx).blocks -= 1;
        }
    }
}
