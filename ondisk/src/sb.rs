//! `struct gfs2_sb`, the superblock at `GFS2_SB_ADDR` basic blocks.

use crate::bytes::{fixed_struct, get, put, put32, u32_at};
use crate::consts::{format, metatype, LOCKNAME_LEN};
use crate::error::{need, FormatError, Result};
use crate::meta::{Inum, MetaHeader};

/// `struct gfs2_sb`. The `pad*` fields are the gfs1 leftovers, kept so that a
/// parsed superblock writes back unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub header: MetaHeader,
    pub fs_format: u32,
    pub multihost_format: u32,
    pub pad0: u32,
    pub bsize: u32,
    pub bsize_shift: u32,
    pub pad1: u32,
    pub master_dir: Inum,
    pub pad2: Inum,
    pub root_dir: Inum,
    /// NUL-padded lock protocol name; see [`Superblock::lockproto_str`].
    pub lockproto: [u8; LOCKNAME_LEN],
    /// NUL-padded lock table name; see [`Superblock::locktable_str`].
    pub locktable: [u8; LOCKNAME_LEN],
    pub pad3: Inum,
    pub pad4: Inum,
    pub uuid: [u8; 16],
}

impl Default for Superblock {
    fn default() -> Self {
        Superblock {
            header: MetaHeader::new(metatype::SB, format::SB),
            fs_format: format::FS,
            multihost_format: format::MULTI,
            pad0: 0,
            bsize: 4096,
            bsize_shift: 12,
            pad1: 0,
            master_dir: Inum::default(),
            pad2: Inum::default(),
            root_dir: Inum::default(),
            lockproto: [0; LOCKNAME_LEN],
            locktable: [0; LOCKNAME_LEN],
            pad3: Inum::default(),
            pad4: Inum::default(),
            uuid: [0; 16],
        }
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Encode a lock name into its NUL-padded field; it must leave room for the
/// terminating NUL, as the kernel requires.
pub fn lockname(field: &'static str, s: &str) -> Result<[u8; LOCKNAME_LEN]> {
    let b = s.as_bytes();
    if b.len() >= LOCKNAME_LEN || b.contains(&0) {
        return Err(FormatError::BadValue {
            what: "gfs2_sb",
            field,
            value: b.len() as u64,
        });
    }
    let mut out = [0u8; LOCKNAME_LEN];
    out[..b.len()].copy_from_slice(b);
    Ok(out)
}

impl Superblock {
    pub const SIZE: usize = 272;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_sb", b, Self::SIZE)?;
        Ok(Superblock {
            header: MetaHeader::parse(b)?,
            fs_format: u32_at(b, 24),
            multihost_format: u32_at(b, 28),
            pad0: u32_at(b, 32),
            bsize: u32_at(b, 36),
            bsize_shift: u32_at(b, 40),
            pad1: u32_at(b, 44),
            master_dir: Inum::at(b, 48),
            pad2: Inum::at(b, 64),
            root_dir: Inum::at(b, 80),
            lockproto: get(b, 96),
            locktable: get(b, 160),
            pad3: Inum::at(b, 224),
            pad4: Inum::at(b, 240),
            uuid: get(b, 256),
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_sb", b, Self::SIZE)?;
        self.header.write(b)?;
        put32(b, 24, self.fs_format);
        put32(b, 28, self.multihost_format);
        put32(b, 32, self.pad0);
        put32(b, 36, self.bsize);
        put32(b, 40, self.bsize_shift);
        put32(b, 44, self.pad1);
        self.master_dir.put(b, 48);
        self.pad2.put(b, 64);
        self.root_dir.put(b, 80);
        put(b, 96, &self.lockproto);
        put(b, 160, &self.locktable);
        self.pad3.put(b, 224);
        self.pad4.put(b, 240);
        put(b, 256, &self.uuid);
        Ok(())
    }

    /// The lock protocol up to its first NUL.
    pub fn lockproto_str(&self) -> String {
        cstr(&self.lockproto)
    }

    /// The lock table up to its first NUL.
    pub fn locktable_str(&self) -> String {
        cstr(&self.locktable)
    }

    /// Check what a mount needs before trusting any other field: magic,
    /// type, a power-of-two block size between 512 and 65536 that matches
    /// its shift, and a known format.
    pub fn validate(&self) -> Result<()> {
        self.header.check("gfs2_sb", metatype::SB)?;
        let bad = |field, value: u64| FormatError::BadValue {
            what: "gfs2_sb",
            field,
            value,
        };
        if !(512..=65536).contains(&self.bsize) || !self.bsize.is_power_of_two() {
            return Err(bad("sb_bsize", self.bsize.into()));
        }
        if 1u64.checked_shl(self.bsize_shift) != Some(self.bsize.into()) {
            return Err(bad("sb_bsize_shift", self.bsize_shift.into()));
        }
        if self.fs_format != format::FS && self.fs_format != format::FS_1801 {
            return Err(bad("sb_fs_format", self.fs_format.into()));
        }
        if self.multihost_format != format::MULTI {
            return Err(bad("sb_multihost_format", self.multihost_format.into()));
        }
        Ok(())
    }
}
fixed_struct!(Superblock);
