//! The journal: `struct gfs2_log_header` and `struct gfs2_log_descriptor`.

use crate::bytes::{fixed_struct, get, put, put32, put64, u32_at, u64_at};
use crate::consts::{format, metatype};
use crate::error::{need, Result};
use crate::meta::MetaHeader;

/// `struct gfs2_log_header` (version 2, with the crc32c and statfs fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHeader {
    pub header: MetaHeader,
    pub sequence: u64,
    pub flags: u32,
    pub tail: u32,
    pub blkno: u32,
    /// CRC-32 of the first `LH_V1_SIZE` bytes with this field zero.
    pub hash: u32,
    /// crc32c of the rest of the block after this field.
    pub crc: u32,
    pub nsec: u32,
    pub sec: u64,
    pub addr: u64,
    pub jinode: u64,
    pub statfs_addr: u64,
    pub quota_addr: u64,
    pub local_total: i64,
    pub local_free: i64,
    pub local_dinodes: i64,
}

impl Default for LogHeader {
    fn default() -> Self {
        LogHeader {
            header: MetaHeader::new(metatype::LH, format::LH),
            sequence: 0,
            flags: 0,
            tail: 0,
            blkno: 0,
            hash: 0,
            crc: 0,
            nsec: 0,
            sec: 0,
            addr: 0,
            jinode: 0,
            statfs_addr: 0,
            quota_addr: 0,
            local_total: 0,
            local_free: 0,
            local_dinodes: 0,
        }
    }
}

/// `LH_V1_SIZE`: the prefix of a log header covered by `lh_hash`.
pub const LH_V1_SIZE: usize = 48;

impl LogHeader {
    pub const SIZE: usize = 120;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_log_header", b, Self::SIZE)?;
        Ok(LogHeader {
            header: MetaHeader::parse(b)?,
            sequence: u64_at(b, 24),
            flags: u32_at(b, 32),
            tail: u32_at(b, 36),
            blkno: u32_at(b, 40),
            hash: u32_at(b, 44),
            crc: u32_at(b, 48),
            nsec: u32_at(b, 52),
            sec: u64_at(b, 56),
            addr: u64_at(b, 64),
            jinode: u64_at(b, 72),
            statfs_addr: u64_at(b, 80),
            quota_addr: u64_at(b, 88),
            local_total: u64_at(b, 96) as i64,
            local_free: u64_at(b, 104) as i64,
            local_dinodes: u64_at(b, 112) as i64,
        })
    }

    /// Encode the fields as they are (checksums included, not computed).
    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_log_header", b, Self::SIZE)?;
        self.header.write(b)?;
        put64(b, 24, self.sequence);
        put32(b, 32, self.flags);
        put32(b, 36, self.tail);
        put32(b, 40, self.blkno);
        put32(b, 44, self.hash);
        put32(b, 48, self.crc);
        put32(b, 52, self.nsec);
        put64(b, 56, self.sec);
        put64(b, 64, self.addr);
        put64(b, 72, self.jinode);
        put64(b, 80, self.statfs_addr);
        put64(b, 88, self.quota_addr);
        put64(b, 96, self.local_total as u64);
        put64(b, 104, self.local_free as u64);
        put64(b, 112, self.local_dinodes as u64);
        Ok(())
    }

    /// Encode into a whole journal block, zero the rest of it, and fill in
    /// `lh_hash` and `lh_crc` as the kernel does.
    pub fn write_block(&self, block: &mut [u8]) -> Result<()> {
        need("gfs2_log_header block", block, Self::SIZE)?;
        block.fill(0);
        let mut lh = *self;
        lh.hash = 0;
        lh.crc = 0;
        lh.write(block)?;
        let hash = crate::hash::log_header_hash(block)?;
        put32(block, 44, hash);
        let crc = crate::hash::log_header_crc(block)?;
        put32(block, 48, crc);
        Ok(())
    }
}
fixed_struct!(LogHeader);

/// `struct gfs2_log_descriptor`: starts a run of logged blocks or revokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogDescriptor {
    pub header: MetaHeader,
    pub ld_type: u32,
    pub length: u32,
    pub data1: u32,
    pub data2: u32,
    pub reserved: [u8; 32],
}

impl Default for LogDescriptor {
    fn default() -> Self {
        LogDescriptor {
            header: MetaHeader::new(metatype::LD, format::LD),
            ld_type: 0,
            length: 0,
            data1: 0,
            data2: 0,
            reserved: [0; 32],
        }
    }
}

impl LogDescriptor {
    pub const SIZE: usize = 72;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_log_descriptor", b, Self::SIZE)?;
        Ok(LogDescriptor {
            header: MetaHeader::parse(b)?,
            ld_type: u32_at(b, 24),
            length: u32_at(b, 28),
            data1: u32_at(b, 32),
            data2: u32_at(b, 36),
            reserved: get(b, 40),
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_log_descriptor", b, Self::SIZE)?;
        self.header.write(b)?;
        put32(b, 24, self.ld_type);
        put32(b, 28, self.length);
        put32(b, 32, self.data1);
        put32(b, 36, self.data2);
        put(b, 40, &self.reserved);
        Ok(())
    }
}
fixed_struct!(LogDescriptor);
