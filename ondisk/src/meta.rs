//! `struct gfs2_meta_header` and `struct gfs2_inum`.

use crate::bytes::{fixed_struct, put32, put64, u32_at, u64_at};
use crate::consts::MAGIC;
use crate::error::{need, FormatError, Result};

/// `struct gfs2_meta_header`: the first 24 bytes of every metadata block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MetaHeader {
    pub magic: u32,
    pub mh_type: u32,
    /// `__pad0` (the gfs1 generation number); kept for exact round trips.
    pub pad0: u64,
    pub format: u32,
    pub jid: u32,
}

impl MetaHeader {
    pub const SIZE: usize = 24;

    /// A header with `GFS2_MAGIC` and the given type and format.
    pub fn new(mh_type: u32, format: u32) -> Self {
        MetaHeader {
            magic: MAGIC,
            mh_type,
            pad0: 0,
            format,
            jid: 0,
        }
    }

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_meta_header", b, Self::SIZE)?;
        Ok(MetaHeader {
            magic: u32_at(b, 0),
            mh_type: u32_at(b, 4),
            pad0: u64_at(b, 8),
            format: u32_at(b, 16),
            jid: u32_at(b, 20),
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_meta_header", b, Self::SIZE)?;
        put32(b, 0, self.magic);
        put32(b, 4, self.mh_type);
        put64(b, 8, self.pad0);
        put32(b, 16, self.format);
        put32(b, 20, self.jid);
        Ok(())
    }

    /// Check the magic number and the metadata type.
    pub fn check(&self, what: &'static str, mh_type: u32) -> Result<()> {
        if self.magic != MAGIC {
            return Err(FormatError::BadMagic {
                what,
                found: self.magic,
            });
        }
        if self.mh_type != mh_type {
            return Err(FormatError::BadType {
                what,
                found: self.mh_type,
                expected: mh_type,
            });
        }
        Ok(())
    }
}
fixed_struct!(MetaHeader);

/// `struct gfs2_inum`: an inode's formal number and block address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Inum {
    pub formal_ino: u64,
    pub addr: u64,
}

impl Inum {
    pub const SIZE: usize = 16;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_inum", b, Self::SIZE)?;
        Ok(Inum {
            formal_ino: u64_at(b, 0),
            addr: u64_at(b, 8),
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_inum", b, Self::SIZE)?;
        put64(b, 0, self.formal_ino);
        put64(b, 8, self.addr);
        Ok(())
    }

    pub(crate) fn at(b: &[u8], off: usize) -> Self {
        Inum {
            formal_ino: u64_at(b, off),
            addr: u64_at(b, off + 8),
        }
    }

    pub(crate) fn put(&self, b: &mut [u8], off: usize) {
        put64(b, off, self.formal_ino);
        put64(b, off + 8, self.addr);
    }
}
fixed_struct!(Inum);
