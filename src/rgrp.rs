//! Resource groups: allocating and freeing blocks in the bitmaps.
//!
//! Every change goes through a transaction under the rgrp's glock (EX), so
//! the header's free/dinode counts, its checksum and the bitmap change
//! together. Blocks freed since the last log flush are not handed out again
//! until that flush, as the kernel does with its clone bitmaps: a crash before
//! the flush must find the old owner's data intact.

use crate::error::{FsError, Result};
use crate::format::{mt, Rindex};
use crate::log::trans::Txn;
use gfs2_lockproto::{lm_type, Mode, ResName};
use gfs2_ondisk::{layout, BlockState, Rgrp};
use std::collections::HashSet;
use std::sync::Mutex;

/// The glock covering a resource group.
pub fn glock(ri: &Rindex) -> ResName {
    ResName::new(lm_type::RGRP, ri.addr)
}

/// Index of the resource group holding data block `blk` (rindex sorted by
/// address).
pub fn locate(rindex: &[Rindex], blk: u64) -> Option<usize> {
    let i = rindex.partition_point(|r| r.data0 + u64::from(r.data) <= blk);
    rindex
        .get(i)
        .filter(|r| blk >= r.data0 && blk < r.data0 + u64::from(r.data))
        .map(|_| i)
}

fn header(tx: &mut Txn<'_>, ri: &Rindex) -> Result<Rgrp> {
    Ok(Rgrp::parse(&tx.view(glock(ri), ri.addr, mt::RG)?)?)
}

fn put_header(tx: &mut Txn<'_>, ri: &Rindex, rg: &Rgrp) -> Result<()> {
    let b = tx.get_mut(glock(ri), ri.addr, mt::RG)?;
    rg.write_with_crc(b)?;
    Ok(())
}

/// Where the bits of data block `index` of `ri` live.
fn bit_at(bsize: u32, ri: &Rindex, index: u64) -> Result<(u64, u32, usize, u32)> {
    let (bb, off, shift) = layout::bitmap_position(bsize, index)
        .ok_or_else(|| FsError::corrupt(ri.addr, "bitmap position"))?;
    if bb >= ri.length {
        return Err(FsError::corrupt(ri.addr, "block beyond the rgrp's bitmaps"));
    }
    let mty = if bb == 0 { mt::RG } else { mt::RB };
    Ok((ri.addr + u64::from(bb), mty, off, shift))
}

/// The state of block `blk`.
pub fn state(tx: &mut Txn<'_>, rindex: &[Rindex], blk: u64) -> Result<BlockState> {
    let ri =
        &rindex[locate(rindex, blk).ok_or_else(|| FsError::corrupt(blk, "not in any rgrp"))?];
    let (bblk, mty, off, shift) = bit_at(tx.bsize(), ri, blk - ri.data0)?;
    let b = tx.view(glock(ri), bblk, mty)?;
    let byte = *b
        .get(off)
        .ok_or_else(|| FsError::corrupt(bblk, "bitmap offset"))?;
    Ok(BlockState::from_bits(byte >> shift))
}

fn set_bits(tx: &mut Txn<'_>, ri: &Rindex, blk: u64, st: BlockState) -> Result<BlockState> {
    let (bblk, mty, off, shift) = bit_at(tx.bsize(), ri, blk - ri.data0)?;
    let b = tx.get_mut(glock(ri), bblk, mty)?;
    let byte = b
        .get_mut(off)
        .ok_or_else(|| FsError::corrupt(bblk, "bitmap offset"))?;
    let old = BlockState::from_bits(*byte >> shift);
    *byte = (*byte & !(3 << shift)) | ((st as u8) << shift);
    Ok(old)
}

/// [`set_bits`] for `n` blocks from `blk`, all mapped by one bitmap block
/// (as [`free_len`] finds them): one lookup of that block for the run.
fn set_run_bits(tx: &mut Txn<'_>, ri: &Rindex, blk: u64, n: u64, st: BlockState) -> Result<()> {
    let bsize = tx.bsize();
    let (bblk, mty, _, _) = bit_at(bsize, ri, blk - ri.data0)?;
    let bits = tx.get_mut(glock(ri), bblk, mty)?;
    for b in blk..blk + n {
        let (bb, _, off, shift) = bit_at(bsize, ri, b - ri.data0)?;
        if bb != bblk {
            return Err(FsError::corrupt(bblk, "block run across bitmap blocks"));
        }
        let byte = bits
            .get_mut(off)
            .ok_or_else(|| FsError::corrupt(bblk, "bitmap offset"))?;
        *byte = (*byte & !(3 << shift)) | ((st as u8) << shift);
    }
    Ok(())
}

/// Whether a bitmap byte maps at least one free block.
fn has_free(b: u8) -> bool {
    ((b & 0x55) | ((b >> 1) & 0x55)) != 0x55
}

/// Find a free block in `ri` at or after `from` (wrapping within the rgrp),
/// skipping `busy` ones.
fn find_free(
    tx: &mut Txn<'_>,
    ri: &Rindex,
    from: u64,
    busy: &Mutex<HashSet<u64>>,
) -> Result<Option<u64>> {
    let is_busy = |b: u64| busy.lock().unwrap_or_else(|e| e.into_inner()).contains(&b);
    let bsize = tx.bsize();
    let data = u64::from(ri.data);
    let first = layout::rgrp_header_blocks_mapped(bsize);
    let per = layout::bitmap_block_blocks_mapped(bsize);
    // Scan bitmap block by bitmap block: [from, data) then [0, from).
    for (lo, hi) in [(from.min(data), data), (0, from.min(data))] {
        let mut idx = lo;
        while idx < hi {
            let (bb, base_idx, span) = if idx < first {
                (0u32, 0u64, first)
            } else {
                let k = (idx - first) / per;
                (1 + k as u32, first + k * per, per)
            };
            let end = (base_idx + span).min(hi);
            let (bblk, mty, _, _) = bit_at(bsize, ri, idx)?;
            let _ = bb;
            let bytes = tx.view(glock(ri), bblk, mty)?;
            let hdr = if bblk == ri.addr {
                Rgrp::SIZE
            } else {
                crate::format::META_HEADER_SIZE
            };
            let mut i = idx;
            while i < end {
                let off = hdr + ((i - base_idx) / 4) as usize;
                let byte = *bytes
                    .get(off)
                    .ok_or_else(|| FsError::corrupt(bblk, "bitmap too short"))?;
                if (i - base_idx) % 4 == 0 && !has_free(byte) {
                    i += 4;
                    continue;
                }
                let shift = ((i - base_idx) % 4) * 2;
                if (byte >> shift) & 3 == 0 && !is_busy(ri.data0 + i) {
                    return Ok(Some(ri.data0 + i));
                }
                i += 1;
            }
            idx = end;
        }
    }
    Ok(None)
}

/// Allocate one block near `goal` in state `st` (a dinode, or a used data or
/// metadata block). For dinodes, also returns the generation the rgrp hands
/// out (the kernel's `rd_igeneration`), which becomes the formal inode
/// number.
///
/// A resource group whose glock another node holds is passed over for the
/// next one this node can take at once, as the kernel passes over congested
/// rgrps: nodes allocating at
/// the same time settle on rgrps of their own instead of taking one glock
/// from each other (each take flushes the holder's log). Only when every
/// rgrp with room is held elsewhere does the transaction wait, for the first
/// of them. The same holds for an rgrp another transaction of this node
/// holds (local holders exclude each other): threads allocating at once
/// spread over rgrps of their own, as the kernel's reservations make them.
pub fn alloc(
    tx: &mut Txn<'_>,
    rindex: &[Rindex],
    busy: &Mutex<HashSet<u64>>,
    goal: u64,
    st: BlockState,
) -> Result<(u64, u64)> {
    alloc_run(tx, rindex, busy, goal, st, 1).map(|(blk, _, generation)| (blk, generation))
}

/// Allocate up to `max` consecutive data blocks near `goal` as one
/// extent, as the kernel's reservations hand a writer a multi-block run:
/// one bitmap edit and one header update for the whole run instead of one
/// allocation per block. Returns `(first block, blocks)`; the run is the
/// free blocks following the first free one found, within its bitmap
/// block, so it may be shorter than asked (at least 1).
pub fn alloc_extent(
    tx: &mut Txn<'_>,
    rindex: &[Rindex],
    busy: &Mutex<HashSet<u64>>,
    goal: u64,
    max: u64,
) -> Result<(u64, u64)> {
    alloc_run(tx, rindex, busy, goal, BlockState::Used, max).map(|(blk, n, _)| (blk, n))
}

/// How many blocks from `blk` (free, found by [`find_free`]) on are free,
/// not busy and mapped by the same bitmap block, up to `max`.
fn free_len(
    tx: &mut Txn<'_>,
    ri: &Rindex,
    blk: u64,
    max: u64,
    busy: &Mutex<HashSet<u64>>,
) -> Result<u64> {
    let bsize = tx.bsize();
    let idx0 = blk - ri.data0;
    let (bblk, mty, _, _) = bit_at(bsize, ri, idx0)?;
    let busy = busy.lock().unwrap_or_else(|e| e.into_inner());
    let bytes = tx.view(glock(ri), bblk, mty)?;
    let mut n = 1;
    while n < max && idx0 + n < u64::from(ri.data) {
        let (bb, _, off, shift) = bit_at(bsize, ri, idx0 + n)?;
        let byte = bytes.get(off).copied().unwrap_or(0xff);
        if bb != bblk || (byte >> shift) & 3 != 0 || busy.contains(&(blk + n)) {
            break;
        }
        n += 1;
    }
    Ok(n)
}

/// [`alloc`] of up to `max` blocks in state `st` (more than one only for
/// data blocks): `(first block, blocks, generation)`.
fn alloc_run(
    tx: &mut Txn<'_>,
    rindex: &[Rindex],
    busy: &Mutex<HashSet<u64>>,
    goal: u64,
    st: BlockState,
    max: u64,
) -> Result<(u64, u64, u64)> {
    let n = rindex.len();
    let start = locate(rindex, goal).unwrap_or(0);
    let mut held_elsewhere = None;
    for k in 0..n {
        let i = (start + k) % n;
        let ri = &rindex[i];
        if !tx.try_require(glock(ri), Mode::EX)? {
            held_elsewhere.get_or_insert(glock(ri));
            continue;
        }
        let mut rg = header(tx, ri)?;
        if rg.free == 0 {
            continue;
        }
        let from = if k == 0 && goal >= ri.data0 {
            goal - ri.data0
        } else {
            0
        };
        let Some(blk) = find_free(tx, ri, from, busy)? else {
            continue;
        };
        let run = if max > 1 && st == BlockState::Used {
            free_len(tx, ri, blk, max, busy)?.min(u64::from(rg.free))
        } else {
            1
        };
        if run == 1 {
            set_bits(tx, ri, blk, st)?;
        } else {
            set_run_bits(tx, ri, blk, run, st)?;
        }
        rg.free -= run as u32;
        tx.statfs.free -= run as i64;
        let mut generation = 0;
        if st == BlockState::Dinode {
            rg.dinodes += 1;
            tx.statfs.dinodes += 1;
            generation = rg.igeneration;
            rg.igeneration = rg.igeneration.wrapping_add(1);
            if generation == 0 {
                generation = rg.igeneration;
                rg.igeneration = rg.igeneration.wrapping_add(1);
            }
        }
        put_header(tx, ri, &rg)?;
        return Ok((blk, run, generation));
    }
    match held_elsewhere {
        Some(gl) => Err(FsError::NeedGlock(gl, Mode::EX)),
        None => Err(FsError::Errno(libc::ENOSPC)),
    }
}

/// Free block `blk` (data, metadata or dinode).
pub fn free(tx: &mut Txn<'_>, rindex: &[Rindex], blk: u64) -> Result<()> {
    let i = locate(rindex, blk)
        .ok_or_else(|| FsError::corrupt(blk, "freeing a block outside every rgrp"))?;
    let ri = &rindex[i];
    let old = set_bits(tx, ri, blk, BlockState::Free)?;
    if old == BlockState::Free {
        return Err(FsError::corrupt(blk, "freeing a free block"));
    }
    let mut rg = header(tx, ri)?;
    rg.free = rg.free.saturating_add(1);
    tx.statfs.free += 1;
    if matches!(old, BlockState::Dinode | BlockState::Unlinked) {
        rg.dinodes = rg.dinodes.saturating_sub(1);
        tx.statfs.dinodes -= 1;
    }
    put_header(tx, ri, &rg)?;
    tx.freed.push(blk);
    tx.discard(blk);
    Ok(())
}

/// Free the `n` consecutive blocks from `start` (a file's data run): one
/// bitmap edit per bitmap block and one header update per resource group,
/// where [`free`] would do both per block (a truncate of a big file frees
/// hundreds of thousands).
pub fn free_run(tx: &mut Txn<'_>, rindex: &[Rindex], start: u64, n: u64) -> Result<()> {
    let bsize = tx.bsize();
    let end = start
        .checked_add(n)
        .ok_or_else(|| FsError::corrupt(start, "block run beyond 2^64"))?;
    let mut blk = start;
    while blk < end {
        let i = locate(rindex, blk)
            .ok_or_else(|| FsError::corrupt(blk, "freeing a block outside every rgrp"))?;
        let ri = &rindex[i];
        let stop = end.min(ri.data0 + u64::from(ri.data));
        let mut dinodes = 0u32;
        let mut b = blk;
        while b < stop {
            let (bblk, mty, _, _) = bit_at(bsize, ri, b - ri.data0)?;
            let bits = tx.get_mut(glock(ri), bblk, mty)?;
            while b < stop {
                let (bb, _, off, shift) = bit_at(bsize, ri, b - ri.data0)?;
                if bb != bblk {
                    break;
                }
                let byte = bits
                    .get_mut(off)
                    .ok_or_else(|| FsError::corrupt(bblk, "bitmap offset"))?;
                let old = BlockState::from_bits(*byte >> shift);
                match old {
                    BlockState::Free => return Err(FsError::corrupt(b, "freeing a free block")),
                    BlockState::Dinode | BlockState::Unlinked => dinodes += 1,
                    _ => {}
                }
                *byte = (*byte & !(3 << shift)) | ((BlockState::Free as u8) << shift);
                b += 1;
            }
        }
        let count = stop - blk;
        let mut rg = header(tx, ri)?;
        rg.free = rg.free.saturating_add(count as u32);
        rg.dinodes = rg.dinodes.saturating_sub(dinodes);
        tx.statfs.free += count as i64;
        tx.statfs.dinodes -= i64::from(dinodes);
        put_header(tx, ri, &rg)?;
        for x in blk..stop {
            tx.freed.push(x);
            tx.discard(x);
        }
        blk = stop;
    }
    Ok(())
}

/// Change a dinode's state between dinode and unlinked (open but nameless).
pub fn set_dinode_state(
    tx: &mut Txn<'_>,
    rindex: &[Rindex],
    blk: u64,
    st: BlockState,
) -> Result<()> {
    let i =
        locate(rindex, blk).ok_or_else(|| FsError::corrupt(blk, "dinode outside every rgrp"))?;
    set_bits(tx, &rindex[i], blk, st)?;
    Ok(())
}

/// Call `f` with every block of `ri` whose bitmap state is `want`, reading
/// the bitmaps through `cache` (the caller holds the rgrp's glock).
pub fn for_each_in_state(
    cache: &crate::buf::BufCache,
    ri: &Rindex,
    want: BlockState,
    mut f: impl FnMut(u64),
) -> Result<()> {
    let gl = glock(ri);
    let mut index = 0u64;
    for b in 0..ri.length {
        let (blk, ty, start) = if b == 0 {
            (ri.addr, mt::RG, Rgrp::SIZE)
        } else {
            (
                ri.addr + u64::from(b),
                mt::RB,
                crate::format::META_HEADER_SIZE,
            )
        };
        let data = cache.read_meta_as(gl, blk, ty)?;
        for byte in data.get(start..).unwrap_or(&[]) {
            for k in 0..4 {
                if index >= u64::from(ri.data) {
                    return Ok(());
                }
                if (byte >> (2 * k)) & 3 == want as u8 {
                    f(ri.data0 + index);
                }
                index += 1;
            }
        }
    }
    Ok(())
}

/// The rgrp's lock value block as the kernel keeps it
/// (`gfs2_rgrp_ondisk2lvb`, plus the count of unlinked dinodes it keeps
/// beside): written to the lock manager whenever the rgrp glock goes down
/// from EX. Kernel nodes of a format 1802 filesystem (`rgrplvb`) decide
/// where to allocate from it without reading the rgrp, and withdraw if it
/// disagrees with the header when they do read it: a node that changed the
/// rgrp must leave the LVB true.
pub fn lvb(cache: &crate::buf::BufCache, ri: &Rindex) -> Result<gfs2_lockproto::Lvb> {
    let hdr = cache.read_meta_as(glock(ri), ri.addr, mt::RG)?;
    let rg = Rgrp::parse(&hdr)?;
    let mut unlinked = 0u32;
    for_each_in_state(cache, ri, BlockState::Unlinked, |_| {
        unlinked = unlinked.saturating_add(1)
    })?;
    let l = gfs2_ondisk::RgrpLvb {
        magic: gfs2_ondisk::consts::MAGIC,
        flags: rg.flags,
        free: rg.free,
        dinodes: rg.dinodes,
        igeneration: rg.igeneration,
        unlinked,
        pad: 0,
    };
    let mut out = [0u8; gfs2_lockproto::LVB_SIZE];
    l.write(&mut out)?;
    Ok(out)
}

/// Check an LVB received with the rgrp's glock against the header on disk,
/// as the kernel does with `rgrplvb` (`gfs2_rgrp_lvb_valid`): an LVB
/// without the magic (never written, or invalidated when its writer died)
/// says nothing; one with it must agree on flags, free and dinode counts
/// and generation.
pub fn check_lvb(
    cache: &crate::buf::BufCache,
    ri: &Rindex,
    lvb: &gfs2_lockproto::Lvb,
) -> Result<()> {
    let l = gfs2_ondisk::RgrpLvb::parse(lvb)?;
    if l.magic != gfs2_ondisk::consts::MAGIC {
        return Ok(());
    }
    let hdr = cache.read_meta_as(glock(ri), ri.addr, mt::RG)?;
    let rg = Rgrp::parse(&hdr)?;
    if (l.flags, l.free, l.dinodes, l.igeneration)
        != (rg.flags, rg.free, rg.dinodes, rg.igeneration)
    {
        return Err(FsError::corrupt(
            ri.addr,
            format!(
                "rgrp LVB (flags {:#x}, free {}, dinodes {}, generation {}) disagrees with its \
                 header (flags {:#x}, free {}, dinodes {}, generation {}): a node left a stale LVB",
                l.flags,
                l.free,
                l.dinodes,
                l.igeneration,
                rg.flags,
                rg.free,
                rg.dinodes,
                rg.igeneration
            ),
        ));
    }
    Ok(())
}
