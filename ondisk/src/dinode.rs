//! `struct gfs2_dinode`.

use crate::bytes::{fixed_struct, get, put, put16, put32, put64, u16_at, u32_at, u64_at};
use crate::consts::{dif, format, metatype};
use crate::error::{need, Result};
use crate::meta::{Inum, MetaHeader};

/// `struct gfs2_dinode`: the first 232 bytes of an inode block. The rest of
/// the block holds stuffed data, directory entries or block pointers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dinode {
    pub header: MetaHeader,
    pub num: Inum,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub major: u32,
    pub minor: u32,
    pub goal_meta: u64,
    pub goal_data: u64,
    pub generation: u64,
    pub flags: u32,
    pub payload_format: u32,
    pub pad1: u16,
    pub height: u16,
    pub pad2: u32,
    pub pad3: u16,
    pub depth: u16,
    pub entries: u32,
    pub pad4: Inum,
    pub eattr: u64,
    pub atime_nsec: u32,
    pub mtime_nsec: u32,
    pub ctime_nsec: u32,
    pub reserved: [u8; 44],
}

impl Default for Dinode {
    fn default() -> Self {
        Dinode {
            header: MetaHeader::new(metatype::DI, format::DI),
            num: Inum::default(),
            mode: 0,
            uid: 0,
            gid: 0,
            nlink: 0,
            size: 0,
            blocks: 0,
            atime: 0,
            mtime: 0,
            ctime: 0,
            major: 0,
            minor: 0,
            goal_meta: 0,
            goal_data: 0,
            generation: 0,
            flags: 0,
            payload_format: 0,
            pad1: 0,
            height: 0,
            pad2: 0,
            pad3: 0,
            depth: 0,
            entries: 0,
            pad4: Inum::default(),
            eattr: 0,
            atime_nsec: 0,
            mtime_nsec: 0,
            ctime_nsec: 0,
            reserved: [0; 44],
        }
    }
}

impl Dinode {
    pub const SIZE: usize = 232;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_dinode", b, Self::SIZE)?;
        Ok(Dinode {
            header: MetaHeader::parse(b)?,
            num: Inum::at(b, 24),
            mode: u32_at(b, 40),
            uid: u32_at(b, 44),
            gid: u32_at(b, 48),
            nlink: u32_at(b, 52),
            size: u64_at(b, 56),
            blocks: u64_at(b, 64),
            atime: u64_at(b, 72),
            mtime: u64_at(b, 80),
            ctime: u64_at(b, 88),
            major: u32_at(b, 96),
            minor: u32_at(b, 100),
            goal_meta: u64_at(b, 104),
            goal_data: u64_at(b, 112),
            generation: u64_at(b, 120),
            flags: u32_at(b, 128),
            payload_format: u32_at(b, 132),
            pad1: u16_at(b, 136),
            height: u16_at(b, 138),
            pad2: u32_at(b, 140),
            pad3: u16_at(b, 144),
            depth: u16_at(b, 146),
            entries: u32_at(b, 148),
            pad4: Inum::at(b, 152),
            eattr: u64_at(b, 168),
            atime_nsec: u32_at(b, 176),
            mtime_nsec: u32_at(b, 180),
            ctime_nsec: u32_at(b, 184),
            reserved: get(b, 188),
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_dinode", b, Self::SIZE)?;
        self.header.write(b)?;
        self.num.put(b, 24);
        put32(b, 40, self.mode);
        put32(b, 44, self.uid);
        put32(b, 48, self.gid);
        put32(b, 52, self.nlink);
        put64(b, 56, self.size);
        put64(b, 64, self.blocks);
        put64(b, 72, self.atime);
        put64(b, 80, self.mtime);
        put64(b, 88, self.ctime);
        put32(b, 96, self.major);
        put32(b, 100, self.minor);
        put64(b, 104, self.goal_meta);
        put64(b, 112, self.goal_data);
        put64(b, 120, self.generation);
        put32(b, 128, self.flags);
        put32(b, 132, self.payload_format);
        put16(b, 136, self.pad1);
        put16(b, 138, self.height);
        put32(b, 140, self.pad2);
        put16(b, 144, self.pad3);
        put16(b, 146, self.depth);
        put32(b, 148, self.entries);
        self.pad4.put(b, 152);
        put64(b, 168, self.eattr);
        put32(b, 176, self.atime_nsec);
        put32(b, 180, self.mtime_nsec);
        put32(b, 184, self.ctime_nsec);
        put(b, 188, &self.reserved);
        Ok(())
    }

    /// Whether the file type bits say directory.
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }

    /// Whether the directory uses a hash table of leaf blocks.
    pub fn is_exhash(&self) -> bool {
        self.flags & dif::EXHASH != 0
    }
}
fixed_struct!(Dinode);
