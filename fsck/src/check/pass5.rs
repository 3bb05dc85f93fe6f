//! Pass 5, bitmaps: every rgrp's bitmap against the expected state the
//! walk built, the free and dinode counts of each rgrp header (and its
//! `rg_crc`), and the statfs file (master plus the per-node changes) against
//! the totals, all rewritten where they differ.

use super::*;

impl Fsck {
    /// Every bitmap against the expected state, the rgrp counts and statfs.
    pub(super) fn check_bitmaps(&mut self) -> Res<()> {
        self.r.progress("Checking bitmaps");
        // Compare on two threads, reading the bitmaps that are not in
        // memory; also count free blocks and dinodes as the bitmaps are.
        let want = &self.want;
        let rgs = &self.rgs;
        let dev = &self.dev;
        let bsize = self.bsize as usize;
        type Cmp = (Vec<(u64, BlockState, u8)>, u32, u32, Option<String>);
        let cmp = |rg: &Rg| -> Cmp {
            let bits = match rg_bits_of(dev, bsize, rg) {
                Ok(b) => b,
                Err(e) => return (Vec::new(), 0, 0, Some(e.to_string())),
            };
            let mut v = Vec::new();
            let (mut free, mut dinodes) = (0u32, 0u32);
            let aligned = rg.ri.data0 & 3 == 0;
            let w0 = (rg.ri.data0 >> 2) as usize;
            for (j, &byte) in bits.iter().enumerate() {
                let base = 4 * j as u64;
                if base >= u64::from(rg.ri.data) {
                    break;
                }
                let full = base + 4 <= u64::from(rg.ri.data);
                if aligned && full && want.get(w0 + j) == Some(&byte) {
                    // Same four states: count them only.
                    for k in 0..4 {
                        match (byte >> (2 * k)) & 3 {
                            0 => free += 1,
                            3 => dinodes += 1,
                            _ => {}
                        }
                    }
                    continue;
                }
                for k in 0..4u64 {
                    let idx = base + k;
                    if idx >= u64::from(rg.ri.data) {
                        break;
                    }
                    let blk = rg.ri.data0 + idx;
                    let have = BlockState::from_bits(byte >> (2 * k));
                    match have {
                        BlockState::Free => free += 1,
                        BlockState::Dinode => dinodes += 1,
                        _ => {}
                    }
                    let w = want_get(want, blk);
                    let ok = match have {
                        BlockState::Free => w == W_FREE,
                        BlockState::Used => w == W_USED,
                        BlockState::Dinode => w == W_DINODE,
                        BlockState::Unlinked => false,
                    };
                    if !ok {
                        v.push((blk, have, w));
                    }
                }
            }
            (v, free, dinodes, None)
        };
        let half = rgs.len().div_ceil(2);
        let results: Vec<Cmp> = std::thread::scope(|s| {
            let (a, b) = rgs.split_at(half);
            let h = s.spawn(|| b.iter().map(cmp).collect::<Vec<_>>());
            let mut v: Vec<_> = a.iter().map(cmp).collect();
            v.extend(h.join().unwrap_or_default());
            v
        });
        let mut counts = Vec::with_capacity(results.len());
        let mut diffs = Vec::with_capacity(results.len());
        for (i, (d, f, n, err)) in results.into_iter().enumerate() {
            if let Some(e) = err {
                return Err(Fatal(format!("resource group {i}: bitmap read error: {e}")));
            }
            diffs.push(d);
            counts.push((f, n));
        }
        let name = |s: BlockState| match s {
            BlockState::Free => "free",
            BlockState::Used => "data/metadata",
            BlockState::Unlinked => "unlinked inode",
            BlockState::Dinode => "inode",
        };
        let wname = |w: u8| match w {
            W_FREE => "free",
            W_USED => "data/metadata",
            _ => "inode",
        };
        for (i, list) in diffs.into_iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            if self.rgs[i].bits_lost {
                if self.r.problem(
                    &format!(
                        "Resource group {i}: rebuilding its bitmap ({} blocks differ)",
                        list.len()
                    ),
                    true,
                ) {
                    for (blk, _, w) in list {
                        self.correct_bit(blk, BlockState::from_bits(w));
                    }
                }
                continue;
            }
            let total = list.len();
            let verbosity = self.r.verbosity;
            for (k, (blk, have, w)) in list.into_iter().enumerate() {
                // Without -v, the first few of an rgrp are shown one by one.
                if k == 10 && verbosity == 0 {
                    eprintln!(
                        "... and {} more bitmap differences in resource group {i} (-v lists them)",
                        total - 10
                    );
                    self.r.verbosity = -1;
                }
                let mut what = format!(
                    "Block {blk}: bitmap says {}, but it is {}",
                    name(have),
                    wname(w)
                );
                if have == BlockState::Dinode && w == W_FREE {
                    if let Ok((di, _)) = self.dinode(blk) {
                        what = format!("Inode {blk} (mode {:o}, {} blocks) is not linked from any directory; freeing it", di.mode, di.blocks);
                    }
                }
                if self.r.problem(&what, true) {
                    self.correct_bit(blk, BlockState::from_bits(w));
                }
            }
            self.r.verbosity = verbosity;
        }
        // Counts and headers.
        let mut tot = (0u64, 0u64, 0u64);
        for (i, &(f0, d0)) in counts.iter().enumerate() {
            let rg = &self.rgs[i];
            let (mut free, mut dinodes) = (f0, d0);
            if rg.loaded {
                // Changed since it was compared: count again.
                (free, dinodes) = (0, 0);
                for idx in 0..rg.ri.data as usize {
                    match bitmap_get(&rg.bits, idx) {
                        Some(BlockState::Free) => free += 1,
                        Some(BlockState::Dinode) => dinodes += 1,
                        _ => {}
                    }
                }
            }
            let (hf, hd, lost) = (rg.hdr.free, rg.hdr.dinodes, rg.bits_lost);
            if hf != free
                && (lost
                    || self.r.problem(
                        &format!("Resource group {i}: rg_free is {hf}, bitmap says {free}"),
                        true,
                    ))
            {
                self.rgs[i].hdr.free = free;
                self.rgs[i].dirty = true;
            }
            if hd != dinodes
                && (lost
                    || self.r.problem(
                        &format!("Resource group {i}: rg_dinodes is {hd}, bitmap says {dinodes}"),
                        true,
                    ))
            {
                self.rgs[i].hdr.dinodes = dinodes;
                self.rgs[i].dirty = true;
            }
            tot.0 += u64::from(self.rgs[i].ri.data);
            tot.1 += u64::from(free);
            tot.2 += u64::from(dinodes);
            if self.rgs[i].dirty && self.r.repairing() {
                self.write_rg(i)?;
            }
        }
        self.check_statfs(tot)
    }

    pub(super) fn write_rg(&mut self, i: usize) -> Res<()> {
        self.load_bits(i)?;
        let bs = self.bsize as usize;
        let rg = &self.rgs[i];
        let ri = rg.ri;
        let mut blocks = Vec::new();
        let mut pos = 0usize;
        for k in 0..ri.length as usize {
            let blk = ri.addr + k as u64;
            let mut b = self.read(blk)?;
            let start = if k == 0 { Rgrp::SIZE } else { MetaHeader::SIZE };
            if k > 0 {
                MetaHeader::new(metatype::RB, format::RB).write(&mut b)?;
            }
            let n = (bs - start).min(rg.bits.len().saturating_sub(pos));
            b[start..start + n].copy_from_slice(&rg.bits[pos..pos + n]);
            pos += n;
            if k == 0 {
                let mut h = rg.hdr;
                h.header = MetaHeader::new(metatype::RG, format::RG);
                h.data0 = ri.data0;
                h.data = ri.data;
                h.bitbytes = ri.bitbytes;
                h.write_with_crc(&mut b)?;
            }
            blocks.push((blk, b));
        }
        for (blk, b) in blocks {
            self.write(blk, b);
        }
        Ok(())
    }

    pub(super) fn check_statfs(&mut self, (total, free, dinodes): (u64, u64, u64)) -> Res<()> {
        self.r.progress("Checking statfs");
        if self.statfs_addr == 0 {
            return Ok(());
        }
        let read_sc = |me: &Self, a: u64| -> Res<StatfsChange> {
            let b = me.read(a)?;
            Ok(StatfsChange::parse(&b[Dinode::SIZE..])?)
        };
        let master = read_sc(self, self.statfs_addr)?;
        let mut sum = (master.total, master.free, master.dinodes);
        let locals = self.local_statfs.clone();
        for a in &locals {
            if let Ok(l) = read_sc(self, *a) {
                sum.0 = sum.0.wrapping_add(l.total);
                sum.1 = sum.1.wrapping_add(l.free);
                sum.2 = sum.2.wrapping_add(l.dinodes);
            }
        }
        let real = (total as i64, free as i64, dinodes as i64);
        let have = sum;
        if have != real
            && self.r.problem(
                &format!(
                    "The statfs file is wrong: blocks {} free {} dinodes {}, resource groups say {total} {free} {dinodes}",
                    have.0, have.1, have.2
                ),
                true,
            )
        {
            let mut b = self.read(self.statfs_addr)?;
            StatfsChange {
                total: real.0,
                free: real.1,
                dinodes: real.2,
            }
            .write(&mut b[Dinode::SIZE..])?;
            self.write(self.statfs_addr, b);
            for a in locals {
                let mut b = self.read(a)?;
                b[Dinode::SIZE..Dinode::SIZE + 24].fill(0);
                self.write(a, b);
            }
        }
        Ok(())
    }
}
