//! The resource groups a grow adds, placed and written as gfs2-utils'
//! `gfs2_grow` places and writes them.
//!
//! The new space starts one block past the end of the last resource group's
//! data (gfs2_grow's `filesystem_size() + 1`, aligned like mkfs when the
//! device reports a stripe; we use no alignment, as for regular files), and
//! is split by mkfs's planner ([`gfs2_mkfs::plan::plan_rgrps`]) into
//! resource groups of at most 2 GiB, at most two sizes, each header
//! recording the distance to the next (`rg_skip`, 0 in the last new one).
//! Every block of a new group is free; the library writes the headers and
//! bitmaps and flushes them before the rindex names them (see
//! [`gfs2fuse::grow`]).

use gfs2_mkfs::plan::{plan_rgrps, Align, RgrpSpec, MAX_RGSIZE_MB};
use gfs2_ondisk::Rindex;

/// Where the new resource groups go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrowPlan {
    /// First block of the new space (gfs2_grow reports it as "Size").
    pub start: u64,
    /// Device length in blocks ("Length").
    pub dev_blocks: u64,
    pub rgrps: Vec<RgrpSpec>,
}

impl GrowPlan {
    /// The growth gfs2_grow reports, in MiB.
    pub fn growth_mb(&self, bsize: u32) -> u64 {
        (self.dev_blocks.saturating_sub(self.start) * u64::from(bsize)) >> 20
    }

    /// The rindex entries of the new resource groups.
    pub fn rindex(&self) -> Vec<Rindex> {
        self.rgrps
            .iter()
            .map(|s| Rindex {
                addr: s.addr,
                length: s.length,
                data0: s.data0,
                data: s.data,
                bitbytes: s.bitbytes,
                ..Rindex::default()
            })
            .collect()
    }
}

/// Plan the resource groups that fill the device after `old`; `None` when
/// the space left is too small for one (gfs2_grow's "The calculated
/// resource group size is too small").
pub fn plan(bsize: u32, old: &[Rindex], dev_blocks: u64) -> Option<GrowPlan> {
    let last = old.last()?;
    let start = last.data0 + u64::from(last.data) + 1;
    let growth = dev_blocks.checked_sub(start)?;
    let tgt = (MAX_RGSIZE_MB << 20) / bsize;
    let (mut p, count) = plan_rgrps(bsize, Align::default(), growth, tgt);
    if count == 0 {
        return None;
    }
    let mut rgrps = Vec::new();
    let mut addr = start;
    loop {
        let idx = if p.specs[0].1 > 0 {
            0
        } else if p.specs[1].1 > 0 {
            1
        } else {
            break;
        };
        let len = p.specs[idx].0;
        p.specs[idx].1 -= 1;
        if addr + u64::from(len) > dev_blocks {
            break;
        }
        rgrps.push(RgrpSpec::new(bsize, addr, len));
        addr += u64::from(len);
    }
    let last = rgrps.last_mut()?;
    last.skip = 0;
    Some(GrowPlan {
        start,
        dev_blocks,
        rgrps,
    })
}
