//! Resource groups: `struct gfs2_rindex`, `struct gfs2_rgrp`, the rgrp LVB,
//! and the 2-bit block state bitmaps.

use crate::bytes::{fixed_struct, get, put, put32, put64, u32_at, u64_at};
use crate::consts::{format, metatype};
use crate::error::{need, Result};
use crate::meta::MetaHeader;

/// `struct gfs2_rindex`: one entry of the rindex system file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rindex {
    pub addr: u64,
    pub length: u32,
    pub pad: u32,
    pub data0: u64,
    pub data: u32,
    pub bitbytes: u32,
    pub reserved: [u8; 64],
}

impl Default for Rindex {
    fn default() -> Self {
        Rindex {
            addr: 0,
            length: 0,
            pad: 0,
            data0: 0,
            data: 0,
            bitbytes: 0,
            reserved: [0; 64],
        }
    }
}

impl Rindex {
    pub const SIZE: usize = 96;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_rindex", b, Self::SIZE)?;
        Ok(Rindex {
            addr: u64_at(b, 0),
            length: u32_at(b, 8),
            pad: u32_at(b, 12),
            data0: u64_at(b, 16),
            data: u32_at(b, 24),
            bitbytes: u32_at(b, 28),
            reserved: get(b, 32),
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_rindex", b, Self::SIZE)?;
        put64(b, 0, self.addr);
        put32(b, 8, self.length);
        put32(b, 12, self.pad);
        put64(b, 16, self.data0);
        put32(b, 24, self.data);
        put32(b, 28, self.bitbytes);
        put(b, 32, &self.reserved);
        Ok(())
    }
}
fixed_struct!(Rindex);

/// `struct gfs2_rgrp`: the header in the first block of a resource group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rgrp {
    pub header: MetaHeader,
    pub flags: u32,
    pub free: u32,
    pub dinodes: u32,
    /// Distance to the next rgrp in blocks (0 in the last one).
    pub skip: u32,
    pub igeneration: u64,
    pub data0: u64,
    pub data: u32,
    pub bitbytes: u32,
    /// CRC-32 of the 128 header bytes with this field zero; see
    /// [`crate::hash::rgrp_crc`].
    pub crc: u32,
    pub reserved: [u8; 60],
}

impl Default for Rgrp {
    fn default() -> Self {
        Rgrp {
            header: MetaHeader::new(metatype::RG, format::RG),
            flags: 0,
            free: 0,
            dinodes: 0,
            skip: 0,
            igeneration: 0,
            data0: 0,
            data: 0,
            bitbytes: 0,
            crc: 0,
            reserved: [0; 60],
        }
    }
}

impl Rgrp {
    pub const SIZE: usize = 128;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_rgrp", b, Self::SIZE)?;
        Ok(Rgrp {
            header: MetaHeader::parse(b)?,
            flags: u32_at(b, 24),
            free: u32_at(b, 28),
            dinodes: u32_at(b, 32),
            skip: u32_at(b, 36),
            igeneration: u64_at(b, 40),
            data0: u64_at(b, 48),
            data: u32_at(b, 56),
            bitbytes: u32_at(b, 60),
            crc: u32_at(b, 64),
            reserved: get(b, 68),
        })
    }

    /// Encode, storing `crc` as it is (use [`Rgrp::write_with_crc`] to
    /// compute it).
    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_rgrp", b, Self::SIZE)?;
        self.header.write(b)?;
        put32(b, 24, self.flags);
        put32(b, 28, self.free);
        put32(b, 32, self.dinodes);
        put32(b, 36, self.skip);
        put64(b, 40, self.igeneration);
        put64(b, 48, self.data0);
        put32(b, 56, self.data);
        put32(b, 60, self.bitbytes);
        put32(b, 64, self.crc);
        put(b, 68, &self.reserved);
        Ok(())
    }

    /// Encode with `rg_crc` computed the way the kernel does.
    pub fn write_with_crc(&self, b: &mut [u8]) -> Result<()> {
        let mut r = *self;
        r.crc = 0;
        r.write(b)?;
        r.crc = crate::hash::rgrp_crc(&b[..Self::SIZE])?;
        put32(b, 64, r.crc);
        Ok(())
    }
}
fixed_struct!(Rgrp);

/// `struct gfs2_rgrp_lvb`: rgrp summary carried in the DLM lock value block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RgrpLvb {
    pub magic: u32,
    pub flags: u32,
    pub free: u32,
    pub dinodes: u32,
    pub igeneration: u64,
    pub unlinked: u32,
    pub pad: u32,
}

impl RgrpLvb {
    pub const SIZE: usize = 32;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_rgrp_lvb", b, Self::SIZE)?;
        Ok(RgrpLvb {
            magic: u32_at(b, 0),
            flags: u32_at(b, 4),
            free: u32_at(b, 8),
            dinodes: u32_at(b, 12),
            igeneration: u64_at(b, 16),
            unlinked: u32_at(b, 24),
            pad: u32_at(b, 28),
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_rgrp_lvb", b, Self::SIZE)?;
        put32(b, 0, self.magic);
        put32(b, 4, self.flags);
        put32(b, 8, self.free);
        put32(b, 12, self.dinodes);
        put64(b, 16, self.igeneration);
        put32(b, 24, self.unlinked);
        put32(b, 28, self.pad);
        Ok(())
    }
}
fixed_struct!(RgrpLvb);

/// The 2-bit allocation state of a block (`GFS2_BLKST_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockState {
    Free = 0,
    Used = 1,
    Unlinked = 2,
    Dinode = 3,
}

impl BlockState {
    pub fn from_bits(v: u8) -> Self {
        match v & 3 {
            0 => BlockState::Free,
            1 => BlockState::Used,
            2 => BlockState::Unlinked,
            _ => BlockState::Dinode,
        }
    }
}

/// `GFS2_NBBY`: block states per byte.
pub const NBBY: usize = 4;

/// State of block `index` in a bitmap (four blocks per byte, lowest bits
/// first); `None` when the index is outside the bitmap.
pub fn bitmap_get(bitmap: &[u8], index: usize) -> Option<BlockState> {
    let byte = bitmap.get(index / NBBY)?;
    Some(BlockState::from_bits(byte >> ((index % NBBY) * 2)))
}

/// Set block `index` in a bitmap; returns the previous state, or `None` (and
/// changes nothing) when the index is outside the bitmap.
pub fn bitmap_set(bitmap: &mut [u8], index: usize, state: BlockState) -> Option<BlockState> {
    let byte = bitmap.get_mut(index / NBBY)?;
    let shift = (index % NBBY) * 2;
    let old = BlockState::from_bits(*byte >> shift);
    *byte = (*byte & !(3 << shift)) | ((state as u8) << shift);
    Some(old)
}
