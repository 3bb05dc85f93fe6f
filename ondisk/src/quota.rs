//! Small fixed records of the system files and lock value blocks:
//! `gfs2_inum_range`, `gfs2_statfs_change`, `gfs2_quota_change`,
//! `gfs2_quota`, `gfs2_quota_lvb`, `gfs2_inode_lvb`.

use crate::bytes::{fixed_struct, get, put, put32, put64, u32_at, u64_at};
use crate::error::{need, Result};

/// `struct gfs2_inum_range`: a node's reserved range of formal inode numbers
/// (the per-node `inum_range` file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InumRange {
    pub start: u64,
    pub length: u64,
}

impl InumRange {
    pub const SIZE: usize = 16;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_inum_range", b, Self::SIZE)?;
        Ok(InumRange {
            start: u64_at(b, 0),
            length: u64_at(b, 8),
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_inum_range", b, Self::SIZE)?;
        put64(b, 0, self.start);
        put64(b, 8, self.length);
        Ok(())
    }
}
fixed_struct!(InumRange);

/// `struct gfs2_statfs_change`: the master statfs totals, or a node's
/// pending change to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatfsChange {
    pub total: i64,
    pub free: i64,
    pub dinodes: i64,
}

impl StatfsChange {
    pub const SIZE: usize = 24;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_statfs_change", b, Self::SIZE)?;
        Ok(StatfsChange {
            total: u64_at(b, 0) as i64,
            free: u64_at(b, 8) as i64,
            dinodes: u64_at(b, 16) as i64,
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_statfs_change", b, Self::SIZE)?;
        put64(b, 0, self.total as u64);
        put64(b, 8, self.free as u64);
        put64(b, 16, self.dinodes as u64);
        Ok(())
    }
}
fixed_struct!(StatfsChange);

/// `struct gfs2_quota_change`: one slot of a node's quota_change file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaChange {
    pub change: i64,
    pub flags: u32,
    pub id: u32,
}

impl QuotaChange {
    pub const SIZE: usize = 16;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_quota_change", b, Self::SIZE)?;
        Ok(QuotaChange {
            change: u64_at(b, 0) as i64,
            flags: u32_at(b, 8),
            id: u32_at(b, 12),
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_quota_change", b, Self::SIZE)?;
        put64(b, 0, self.change as u64);
        put32(b, 8, self.flags);
        put32(b, 12, self.id);
        Ok(())
    }
}
fixed_struct!(QuotaChange);

/// `struct gfs2_quota`: one user's or group's record in the quota file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub warn: u64,
    pub value: i64,
    pub reserved: [u8; 64],
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            limit: 0,
            warn: 0,
            value: 0,
            reserved: [0; 64],
        }
    }
}

impl Quota {
    pub const SIZE: usize = 88;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_quota", b, Self::SIZE)?;
        Ok(Quota {
            limit: u64_at(b, 0),
            warn: u64_at(b, 8),
            value: u64_at(b, 16) as i64,
            reserved: get(b, 24),
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_quota", b, Self::SIZE)?;
        put64(b, 0, self.limit);
        put64(b, 8, self.warn);
        put64(b, 16, self.value as u64);
        put(b, 24, &self.reserved);
        Ok(())
    }
}
fixed_struct!(Quota);

/// `struct gfs2_quota_lvb`: quota values carried in the DLM lock value block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaLvb {
    pub magic: u32,
    pub pad: u32,
    pub limit: u64,
    pub warn: u64,
    pub value: i64,
}

impl QuotaLvb {
    pub const SIZE: usize = 32;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_quota_lvb", b, Self::SIZE)?;
        Ok(QuotaLvb {
            magic: u32_at(b, 0),
            pad: u32_at(b, 4),
            limit: u64_at(b, 8),
            warn: u64_at(b, 16),
            value: u64_at(b, 24) as i64,
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_quota_lvb", b, Self::SIZE)?;
        put32(b, 0, self.magic);
        put32(b, 4, self.pad);
        put64(b, 8, self.limit);
        put64(b, 16, self.warn);
        put64(b, 24, self.value as u64);
        Ok(())
    }
}
fixed_struct!(QuotaLvb);

/// `struct gfs2_inode_lvb`: inode glock value block (deleted generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InodeLvb {
    pub magic: u32,
    pub pad: u32,
    pub generation_deleted: u64,
}

impl InodeLvb {
    pub const SIZE: usize = 16;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_inode_lvb", b, Self::SIZE)?;
        Ok(InodeLvb {
            magic: u32_at(b, 0),
            pad: u32_at(b, 4),
            generation_deleted: u64_at(b, 8),
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_inode_lvb", b, Self::SIZE)?;
        put32(b, 0, self.magic);
        put32(b, 4, self.pad);
        put64(b, 8, self.generation_deleted);
        Ok(())
    }
}
fixed_struct!(InodeLvb);
