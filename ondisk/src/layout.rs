//! Arithmetic the format implies for a block size: where the superblock is,
//! how many pointers a block holds, how tall a metadata tree must be for a
//! file size, and where a block's bits live in an rgrp's bitmaps.
//!
//! All functions take the block size as found on disk, so they use checked
//! or saturating arithmetic and return `None` where the answer does not
//! exist instead of overflowing.

use crate::consts::{BASIC_BLOCK, MAX_META_HEIGHT, SB_ADDR};
use crate::dinode::Dinode;
use crate::meta::MetaHeader;
use crate::rgrp::{Rgrp, NBBY};

/// Block number of the superblock (`GFS2_SB_ADDR` in basic blocks).
pub fn sb_addr(bsize: u32) -> u64 {
    SB_ADDR * u64::from(BASIC_BLOCK) / u64::from(bsize.max(1))
}

/// Block pointers in a dinode block (`sd_diptrs`).
pub fn diptrs(bsize: u32) -> u64 {
    u64::from(bsize.saturating_sub(Dinode::SIZE as u32) / 8)
}

/// Block pointers in an indirect block (`sd_inptrs`).
pub fn inptrs(bsize: u32) -> u64 {
    u64::from(bsize.saturating_sub(MetaHeader::SIZE as u32) / 8)
}

/// Bytes of data a stuffed dinode holds.
pub fn stuffed_max(bsize: u32) -> u64 {
    u64::from(bsize.saturating_sub(Dinode::SIZE as u32))
}

/// Largest file size a metadata tree of `height` can map (`sd_heightsize`):
/// height 0 is stuffed, height 1 uses the dinode's pointers directly. `None`
/// when it exceeds `u64`.
pub fn max_size_for_height(bsize: u32, height: u16) -> Option<u64> {
    if height == 0 {
        return Some(stuffed_max(bsize));
    }
    let mut blocks = diptrs(bsize);
    for _ in 1..height {
        blocks = blocks.checked_mul(inptrs(bsize))?;
    }
    blocks.checked_mul(u64::from(bsize))
}

/// Smallest metadata tree height that maps `size` bytes, or `None` if even
/// `GFS2_MAX_META_HEIGHT` cannot.
pub fn height_for_size(bsize: u32, size: u64) -> Option<u16> {
    (0..=MAX_META_HEIGHT).find(|h| match max_size_for_height(bsize, *h) {
        None => true,
        Some(m) => m >= size,
    })
}

/// Blocks whose state the rgrp header block maps.
pub fn rgrp_header_blocks_mapped(bsize: u32) -> u64 {
    bsize.saturating_sub(Rgrp::SIZE as u32) as u64 * NBBY as u64
}

/// Blocks whose state each further bitmap block maps.
pub fn bitmap_block_blocks_mapped(bsize: u32) -> u64 {
    bsize.saturating_sub(MetaHeader::SIZE as u32) as u64 * NBBY as u64
}

/// Where the 2-bit state of data block `index` (counted from `ri_data0`)
/// lives: `(bitmap block within the rgrp, byte offset in that block, bit
/// shift)`. Block 0 of an rgrp is its header, whose bitmap starts after the
/// `gfs2_rgrp`; later blocks start after a meta header.
pub fn bitmap_position(bsize: u32, index: u64) -> Option<(u32, usize, u32)> {
    let first = rgrp_header_blocks_mapped(bsize);
    let per = bitmap_block_blocks_mapped(bsize);
    if first == 0 || per == 0 {
        return None;
    }
    let (blk, within, base) = if index < first {
        (0u64, index, Rgrp::SIZE)
    } else {
        let rest = index - first;
        (1 + rest / per, rest % per, MetaHeader::SIZE)
    };
    let off = base + usize::try_from(within / NBBY as u64).ok()?;
    Some((
        u32::try_from(blk).ok()?,
        off,
        ((within % NBBY as u64) * 2) as u32,
    ))
}

/// Number of hash table pointers of a directory of `depth` (`1 << depth`).
pub fn dir_hash_ptrs(depth: u16) -> Option<u64> {
    1u64.checked_shl(u32::from(depth))
}

/// Convert a block number to 512-byte sectors.
pub fn fsb_to_sectors(bsize: u32, block: u64) -> Option<u64> {
    block.checked_mul(u64::from(bsize / BASIC_BLOCK))
}
