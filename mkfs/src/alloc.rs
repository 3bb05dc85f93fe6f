//! In-memory block allocation over the planned resource groups.
//!
//! mkfs allocates a few hundred blocks at most outside the journals, so the
//! allocator keeps a bitmap only for resource groups it has touched and
//! hands out blocks first-fit in rgrp order, as libgfs2's `block_alloc` does
//! (the first rgrp with enough free blocks, then its first free block).

use gfs2_ondisk::{bitmap_get, bitmap_set, BlockState};

use crate::plan::RgrpSpec;

/// One resource group's allocation state.
#[derive(Debug, Clone)]
pub struct RgState {
    pub spec: RgrpSpec,
    pub free: u32,
    pub dinodes: u32,
    /// The data bitmap (`ri_bitbytes` bytes), once anything was allocated.
    pub bitmap: Option<Vec<u8>>,
    /// No block below this index is free.
    hint: u32,
}

/// Allocation failed: the filesystem is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no space left for {0} more blocks")]
pub struct NoSpace(pub u64);

/// All resource groups' allocation state.
#[derive(Debug, Clone)]
pub struct Allocator {
    pub rgrps: Vec<RgState>,
}

impl Allocator {
    pub fn new(specs: &[RgrpSpec]) -> Allocator {
        Allocator {
            rgrps: specs
                .iter()
                .map(|s| RgState {
                    spec: *s,
                    free: s.data,
                    dinodes: 0,
                    bitmap: None,
                    hint: 0,
                })
                .collect(),
        }
    }

    fn mark(rg: &mut RgState, index: u32, state: BlockState) {
        let bytes = rg.spec.bitbytes as usize;
        let bm = rg.bitmap.get_or_insert_with(|| vec![0u8; bytes]);
        bitmap_set(bm, index as usize, state);
        rg.free -= 1;
        if state == BlockState::Dinode {
            rg.dinodes += 1;
        }
    }

    /// Allocate `len` contiguous blocks at the start of rgrp `rg` (a
    /// journal): the first becomes a dinode, the rest are used.
    pub fn extent_at_start(&mut self, rg: usize, len: u32) -> Result<u64, NoSpace> {
        let r = self.rgrps.get_mut(rg).ok_or(NoSpace(len.into()))?;
        if r.hint != 0 || r.free < len || len == 0 {
            return Err(NoSpace(len.into()));
        }
        for i in 0..len {
            let st = if i == 0 {
                BlockState::Dinode
            } else {
                BlockState::Used
            };
            Self::mark(r, i, st);
        }
        r.hint = len;
        Ok(r.spec.data0)
    }

    /// Allocate one block first-fit.
    pub fn block(&mut self, state: BlockState) -> Result<u64, NoSpace> {
        for r in self.rgrps.iter_mut() {
            if r.free == 0 {
                continue;
            }
            let mut i = r.hint;
            while i < r.spec.data {
                if is_free(r.bitmap.as_deref(), i as usize) {
                    Self::mark(r, i, state);
                    r.hint = i + 1;
                    return Ok(r.spec.data0 + u64::from(i));
                }
                i += 1;
            }
        }
        Err(NoSpace(1))
    }

    /// Total data blocks, free blocks and dinodes, for the statfs file.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.rgrps.iter().fold((0, 0, 0), |(t, f, d), r| {
            (
                t + u64::from(r.spec.data),
                f + u64::from(r.free),
                d + u64::from(r.dinodes),
            )
        })
    }
}

/// Whether block `i` is free in an optional (absent = all free) bitmap.
fn is_free(bitmap: Option<&[u8]>, i: usize) -> bool {
    bitmap.is_none() || bitmap.and_then(|bm| bitmap_get(bm, i)) == Some(BlockState::Free)
}
