//! Layout planning: where resource groups and journals go, as gfs2-utils 3.5 decides it.
//!
//! Everything here is pure arithmetic on block numbers so that the filesystem can reuse it (e.g.
//! to grow or to add journals) and so that tests can compare it with `gfs2_edit -p rindex` output
//! without writing anything. The rules are those of libgfs2's rgrp.c and fs_ops.c and of
//! main_mkfs.c; matching them exactly is what makes our rindex identical to gfs2-utils'.

use thiserror::Error;

/// Sizes of the on-disk headers that bound how many blocks a bitmap block maps.
const RGRP_HEADER_SIZE: u32 = 128;
const META_HEADER_SIZE: u32 = 24;
const DINODE_SIZE: u32 = 232;
/// Bits per byte / 2 bits per block: 4 blocks per bitmap byte.
const NBBY: u32 = 4;
pub const MIN_RGSIZE_MB: u32 = 32;
pub const MAX_RGSIZE_MB: u32 = 2048;
pub const MIN_JSIZE_MB: u32 = 8;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("gfs2 will not fit on this device")]
    TooSmall,
    #[error("gfs2 will not fit on this device; maximum size for {journals} journals on this device is {max_mb}MB")]
    JournalsTooBig { journals: u32, max_mb: u32 },
    #[error("stripe unit ({0}) must be a multiple of block size ({1})")]
    SunitNotBlockMultiple(u64, u32),
    #[error("stripe width ({0}) must be a multiple of stripe unit ({1})")]
    SwidthNotSunitMultiple(u64, u64),
    #[error("not enough space for journal {0}")]
    NoSpaceForJournal(u32),
    #[error("block size {0} is not supported")]
    BadBlockSize(u32),
}

/// Resource-group alignment: rgrps start on multiples of `align_off` and have lengths that are
/// multiples of `align` plus `align_off` (stripe width and unit in blocks). Zero disables it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Align {
    pub align: u64,
    pub align_off: u64,
}

// Kept as `%` rather than `is_multiple_of` for the workspace's rust-version (1.80).
#[allow(clippy::manual_is_multiple_of)]
fn align_block(base: u64, align: u64) -> u64 {
    if align > 0 && base % align > 0 {
        base - base % align + align
    } else {
        base
    }
}

impl Align {
    pub fn addr(&self, addr: u64) -> u64 {
        align_block(addr, self.align_off)
    }
    pub fn len(&self, len: u32) -> u32 {
        (align_block(u64::from(len), self.align) + self.align_off) as u32
    }

    /// The alignment gfs2-utils derives from `-o sunit=,swidth=` (bytes) or from the device
    /// topology (minimum/optimal I/O sizes); regular files have no topology, so no alignment.
    pub fn choose(
        bsize: u32,
        enabled: bool,
        stripe: Option<(u64, u64)>,
        topo: Option<(u64, u64, u64)>,
    ) -> Result<Align, PlanError> {
        let b = u64::from(bsize);
        if !enabled {
            return Ok(Align::default());
        }
        if let Some((sunit, swidth)) = stripe {
            if sunit % b != 0 {
                return Err(PlanError::SunitNotBlockMultiple(sunit, bsize));
            }
            if sunit == 0 || swidth % sunit != 0 {
                return Err(PlanError::SwidthNotSunitMultiple(swidth, sunit));
            }
            return Ok(Align {
                align: swidth / b,
                align_off: sunit / b,
            });
        }
        // topo = (minimum_io_size, optimal_io_size, physical_sector_size)
        match topo {
            Some((min_io, opt_io, phys))
                if opt_io > phys && min_io > phys && min_io != 0 && opt_io % min_io == 0 =>
            {
                Ok(Align {
                    align: opt_io / b,
                    align_off: min_io / b,
                })
            }
            _ => Ok(Align::default()),
        }
    }
}

// Superblock address and pointers per dinode/indirect block: the format's
// own arithmetic.
pub use gfs2_ondisk::layout::{diptrs, inptrs, sb_addr};

/// Blocks (dinode + indirect + data) a file of `bytes` needs (libgfs2 `lgfs2_space_for_data`).
pub fn space_for_data(bsize: u32, bytes: u64) -> u64 {
    let b = u64::from(bsize);
    let mut blks = bytes.div_ceil(b);
    if bytes <= b - u64::from(DINODE_SIZE) {
        return 1;
    }
    let mut ptrs = blks;
    while ptrs > diptrs(bsize) {
        ptrs = ptrs.div_ceil(inptrs(bsize));
        blks += ptrs;
    }
    blks + 1
}

/// Total rgrp length giving at least `blksreq` data blocks (libgfs2 `lgfs2_rgsize_for_data`).
pub fn rgsize_for_data(blksreq: u64, bsize: u32) -> u32 {
    let blks_rgrp = u64::from(NBBY * (bsize - RGRP_HEADER_SIZE));
    let blks_meta = u64::from(NBBY * (bsize - META_HEADER_SIZE));
    let req = (blksreq + 3) & !3;
    let mut bitblocks = 1;
    if req > blks_rgrp {
        bitblocks += (req - blks_rgrp).div_ceil(blks_meta);
    }
    (bitblocks + req) as u32
}

/// Header+bitmap blocks and data blocks of an rgrp of `rgblocks` blocks
/// (libgfs2 `lgfs2_rgblocks2bitblocks`): returns `(ri_length, ri_data)`.
pub fn rgblocks2bitblocks(bsize: u32, rgblocks: u32) -> (u32, u32) {
    let blks_rgrp = NBBY * (bsize - RGRP_HEADER_SIZE);
    let blks_meta = NBBY * (bsize - META_HEADER_SIZE);
    let mut bitblocks: u32 = 0;
    while u64::from(blks_rgrp) + u64::from(blks_meta) * u64::from(bitblocks)
        < u64::from(rgblocks.saturating_sub(bitblocks) & !3)
    {
        bitblocks += 1;
    }
    let mappable = if bitblocks > 0 {
        blks_rgrp + blks_meta * (bitblocks - 1)
    } else {
        0
    };
    let data = rgblocks.saturating_sub(bitblocks + 1) & !3;
    if mappable < data {
        bitblocks += 1;
    }
    (bitblocks, data)
}

/// Default journal size in blocks for a device share of `num_blocks` (main_mkfs.c, after
/// e2fsprogs); `None` if the filesystem cannot fit.
pub fn default_journal_blocks(bsize: u32, num_blocks: u64) -> Option<u64> {
    let min_blocks = u64::from((MIN_JSIZE_MB << 20) / bsize);
    Some(if num_blocks < 2 * min_blocks {
        return None;
    } else if num_blocks < 131_072 {
        min_blocks
    } else if num_blocks < 512 * 1024 {
        4096
    } else if num_blocks < 2048 * 1024 {
        8192
    } else if num_blocks < 4096 * 1024 {
        16384
    } else if num_blocks < 262_144 * 1024 {
        32768
    } else if num_blocks < 2_621_440 * 1024 {
        131_072
    } else {
        262_144
    })
}

/// The journal size in MB gfs2-utils would use: the given one (checked against half the device)
/// or the default scaled to the device.
pub fn journal_size_mb(
    bsize: u32,
    dev_blocks: u64,
    journals: u32,
    given_mb: Option<u32>,
) -> Result<u32, PlanError> {
    let b = u64::from(bsize);
    match given_mb {
        None => {
            let jb = default_journal_blocks(bsize, dev_blocks / u64::from(journals.max(1)))
                .ok_or(PlanError::TooSmall)?;
            let mb = ((jb * b) >> 20) as u32;
            Ok(mb.max(MIN_JSIZE_MB))
        }
        Some(mb) => {
            // gfs2-utils computes this in 32-bit unsigned arithmetic; -J and -j are small enough
            // for it not to overflow except for absurd -j, where we are stricter (u64).
            if ((u64::from(mb) * u64::from(journals)) << 20) / b > dev_blocks / 2 {
                let max_mb = ((dev_blocks / 2 * b / u64::from(journals.max(1))) >> 20) as u32;
                return Err(PlanError::JournalsTooBig { journals, max_mb });
            }
            Ok(mb)
        }
    }
}

/// One resource group: its rindex fields plus the rg_skip gfs2-utils stores in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RgrpSpec {
    pub addr: u64,
    pub length: u32,
    pub data0: u64,
    pub data: u32,
    pub bitbytes: u32,
    /// Distance to the next rgrp header; 0 for the last one.
    pub skip: u32,
}

impl RgrpSpec {
    pub fn new(bsize: u32, addr: u64, len: u32) -> RgrpSpec {
        let (length, data) = rgblocks2bitblocks(bsize, len);
        RgrpSpec {
            addr,
            length,
            data0: addr + u64::from(length),
            data,
            bitbytes: data / NBBY,
            skip: len,
        }
    }
    /// One past the last data block.
    pub fn end(&self) -> u64 {
        self.data0 + u64::from(self.data)
    }
}

/// Up to two rgrp lengths and how many of each (libgfs2 `lgfs2_rgrps_plan`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RgPlan {
    pub specs: [(u32, u32); 2],
}

/// Split `space` blocks into rgrps of at most `tgtsize` blocks, with at most two sizes.
/// Returns the plan and the planned count (0 if the rgrps would be smaller than the minimum,
/// which gfs2-utils only uses for its progress total).
pub fn plan_rgrps(bsize: u32, align: Align, space: u64, mut tgtsize: u32) -> (RgPlan, u32) {
    let maxlen = (MAX_RGSIZE_MB << 20) / bsize;
    let minlen = (MIN_RGSIZE_MB << 20) / bsize;
    let mut p = RgPlan::default();
    let al = align.align;
    loop {
        p.specs[0].0 = align.len(tgtsize);
        tgtsize = tgtsize.wrapping_sub((al + 1) as u32);
        if p.specs[0].0 <= maxlen {
            break;
        }
    }
    let len0 = u64::from(p.specs[0].0);
    let mut num0 = space / len0;
    if space - num0 * len0 > al {
        let adj = if al > 0 { al } else { 1 };
        num0 += 1;
        let mut len = len0;
        while (len - adj) * num0 >= space {
            len -= adj;
        }
        let len1 = len - adj;
        let mut num1 = 0u64;
        while len * num0 + len1 * num1 >= space {
            num0 -= 1;
            num1 += 1;
        }
        p.specs[0].0 = len as u32;
        p.specs[1] = (len1 as u32, num1 as u32);
    }
    p.specs[0].1 = num0 as u32;
    let n = if p.specs[0].0 < minlen {
        0
    } else {
        p.specs[0].1 + p.specs[1].1
    };
    (p, n)
}

/// Inputs that decide the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutParams {
    pub bsize: u32,
    /// Filesystem length in blocks (device size or the BLOCKS argument).
    pub dev_blocks: u64,
    pub journals: u32,
    pub jsize_mb: u32,
    pub rgsize_mb: u32,
    pub align: Align,
}

/// The complete placement: every rgrp (journal rgrps first) and the journals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub rgrps: Vec<RgrpSpec>,
    /// Journal i occupies `journal_blocks` blocks from the data0 of rgrp i.
    pub journal_blocks: u64,
    pub journals: u32,
}

impl Layout {
    /// Filesystem size as gfs2-utils reports it: end of the last rgrp's data.
    pub fn fs_blocks(&self) -> u64 {
        self.rgrps.last().map_or(0, RgrpSpec::end)
    }
    /// Sum of all rgrps' data blocks.
    pub fn data_blocks(&self) -> u64 {
        self.rgrps.iter().map(|r| u64::from(r.data)).sum()
    }
}

/// Compute the layout mkfs.gfs2 writes: one rgrp per journal sized for the journal, then the
/// rest of the device split by [`plan_rgrps`].
pub fn layout(p: &LayoutParams) -> Result<Layout, PlanError> {
    let bsize = p.bsize;
    if !(512..=65536).contains(&bsize) || !bsize.is_power_of_two() {
        return Err(PlanError::BadBlockSize(bsize));
    }
    let jbytes = u64::from(p.jsize_mb) << 20;
    let jblocks = space_for_data(bsize, jbytes);
    let jrglen = p.align.len(rgsize_for_data(jblocks, bsize));
    let mut addr = p.align.addr(sb_addr(bsize) + 1);
    let mut rgrps = Vec::new();
    for j in 0..p.journals {
        if addr + u64::from(jrglen) > p.dev_blocks {
            return Err(PlanError::NoSpaceForJournal(j));
        }
        rgrps.push(RgrpSpec::new(bsize, addr, jrglen));
        addr += u64::from(jrglen);
    }
    let tgt = ((u64::from(p.rgsize_mb) << 20) / u64::from(bsize)) as u32;
    let (mut plan, _) = plan_rgrps(bsize, p.align, p.dev_blocks.saturating_sub(addr), tgt);
    loop {
        let idx = if plan.specs[0].1 > 0 {
            0
        } else if plan.specs[1].1 > 0 {
            1
        } else {
            break;
        };
        let len = plan.specs[idx].0;
        plan.specs[idx].1 -= 1;
        if addr + u64::from(len) > p.dev_blocks {
            break;
        }
        rgrps.push(RgrpSpec::new(bsize, addr, len));
        addr += u64::from(len);
    }
    if let Some(last) = rgrps.last_mut() {
        last.skip = 0;
    }
    Ok(Layout {
        rgrps,
        journal_blocks: jblocks,
        journals: p.journals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_for_small_and_big_files() {
        assert_eq!(space_for_data(4096, 100), 1);
        // 8 MB journal at 4k: 2048 data + 1 indirect... + dinode
        assert!(space_for_data(4096, 8 << 20) > 2048);
    }

    #[test]
    fn plan_covers_space() {
        let (p, n) = plan_rgrps(4096, Align::default(), 1_000_000, 65536);
        let used: u64 = p
            .specs
            .iter()
            .map(|(l, k)| u64::from(*l) * u64::from(*k))
            .sum();
        assert!(used <= 1_000_000 && 1_000_000 - used < 2 * u64::from(n));
    }
}
