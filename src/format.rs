//! The parts of the on-disk format (`linux/gfs2_ondisk.h`) the read path and
//! journal recovery need, parsed with bounds checks.
//!
//! This is a stop-gap: the `gfs2-ondisk` crate is meant to own the format,
//! but it had no content when the read path was written. Every parser here
//! takes an untrusted byte slice and returns `None` when it is too short; the
//! callers turn that into a corruption error with the block number. Once
//! `gfs2-ondisk` has these structures this module should become a thin
//! re-export of it.

/// `GFS2_MAGIC`.
pub const MAGIC: u32 = 0x0116_1970;
/// Superblock address in 512-byte basic blocks.
pub const SB_ADDR_BASIC: u64 = 128;
/// `sizeof(struct gfs2_meta_header)`.
pub const META_HEADER_SIZE: usize = 24;
/// `sizeof(struct gfs2_dinode)`.
pub const DINODE_SIZE: usize = 232;
/// `sizeof(struct gfs2_leaf)`.
pub const LEAF_SIZE: usize = 104;
/// `sizeof(struct gfs2_dirent)`.
pub const DIRENT_SIZE: usize = 40;
/// `sizeof(struct gfs2_ea_header)`.
pub const EA_HEADER_SIZE: usize = 16;
/// `sizeof(struct gfs2_rindex)`.
pub const RINDEX_SIZE: usize = 96;
/// `sizeof(struct gfs2_log_descriptor)`.
pub const LOG_DESC_SIZE: usize = 72;
/// `LH_V1_SIZE`: the part of a log header covered by `lh_hash`.
pub const LH_V1_SIZE: usize = 48;
/// `GFS2_MAX_META_HEIGHT`.
pub const MAX_META_HEIGHT: u16 = 10;
/// `GFS2_DIR_MAX_DEPTH`.
pub const DIR_MAX_DEPTH: u16 = 17;

/// Metadata block types (`GFS2_METATYPE_*`).
pub mod mt {
    pub const SB: u32 = 1;
    pub const RG: u32 = 2;
    pub const RB: u32 = 3;
    pub const DI: u32 = 4;
    pub const IN: u32 = 5;
    pub const LF: u32 = 6;
    pub const JD: u32 = 7;
    pub const LH: u32 = 8;
    pub const LD: u32 = 9;
    pub const EA: u32 = 10;
    pub const ED: u32 = 11;
    pub const LB: u32 = 12;
    pub const QC: u32 = 14;
}

/// Dinode flags (`GFS2_DIF_*`).
pub mod dif {
    pub const JDATA: u32 = 0x1;
    pub const EXHASH: u32 = 0x2;
    pub const EA_INDIRECT: u32 = 0x8;
    pub const SYSTEM: u32 = 0x200;
}

/// Log header flags and log descriptor types.
pub mod log {
    pub const HEAD_UNMOUNT: u32 = 0x1;
    pub const HEAD_RECOVERY: u32 = 0x20;
    pub const HEAD_USERSPACE: u32 = 0x8000_0000;
    pub const DESC_METADATA: u32 = 300;
    pub const DESC_REVOKE: u32 = 301;
    pub const DESC_JDATA: u32 = 302;
}

pub(crate) fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}
pub(crate) fn be32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}
pub(crate) fn be64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}
pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}
pub(crate) fn put64(b: &mut [u8], off: usize, v: u64) {
    if let Some(s) = b.get_mut(off..off + 8) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// `struct gfs2_meta_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaHeader {
    pub magic: u32,
    pub mh_type: u32,
    pub format: u32,
    pub jid: u32,
}

impl MetaHeader {
    pub fn parse(b: &[u8]) -> Option<Self> {
        Some(MetaHeader {
            magic: be32(b, 0)?,
            mh_type: be32(b, 4)?,
            format: be32(b, 16)?,
            jid: be32(b, 20)?,
        })
    }
}

/// `struct gfs2_inum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inum {
    pub formal_ino: u64,
    pub addr: u64,
}

impl Inum {
    fn parse(b: &[u8], off: usize) -> Option<Self> {
        Some(Inum {
            formal_ino: be64(b, off)?,
            addr: be64(b, off + 8)?,
        })
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// `struct gfs2_sb`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub header: MetaHeader,
    pub fs_format: u32,
    pub multihost_format: u32,
    pub bsize: u32,
    pub bsize_shift: u32,
    pub master_dir: Inum,
    pub root_dir: Inum,
    pub lockproto: String,
    pub locktable: String,
    pub uuid: [u8; 16],
}

impl Superblock {
    pub fn parse(b: &[u8]) -> Option<Self> {
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(b.get(256..272)?);
        Some(Superblock {
            header: MetaHeader::parse(b)?,
            fs_format: be32(b, 24)?,
            multihost_format: be32(b, 28)?,
            bsize: be32(b, 36)?,
            bsize_shift: be32(b, 40)?,
            master_dir: Inum::parse(b, 48)?,
            root_dir: Inum::parse(b, 80)?,
            lockproto: cstr(b.get(96..160)?),
            locktable: cstr(b.get(160..224)?),
            uuid,
        })
    }
}

/// `struct gfs2_dinode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dinode {
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
    pub generation: u64,
    pub flags: u32,
    pub payload_format: u32,
    pub height: u16,
    pub depth: u16,
    pub entries: u32,
    pub eattr: u64,
    pub atime_nsec: u32,
    pub mtime_nsec: u32,
    pub ctime_nsec: u32,
}

impl Dinode {
    pub fn parse(b: &[u8]) -> Option<Self> {
        Some(Dinode {
            num: Inum::parse(b, 24)?,
            mode: be32(b, 40)?,
            uid: be32(b, 44)?,
            gid: be32(b, 48)?,
            nlink: be32(b, 52)?,
            size: be64(b, 56)?,
            blocks: be64(b, 64)?,
            atime: be64(b, 72)?,
            mtime: be64(b, 80)?,
            ctime: be64(b, 88)?,
            major: be32(b, 96)?,
            minor: be32(b, 100)?,
            generation: be64(b, 120)?,
            flags: be32(b, 128)?,
            payload_format: be32(b, 132)?,
            height: be16(b, 138)?,
            depth: be16(b, 146)?,
            entries: be32(b, 148)?,
            eattr: be64(b, 168)?,
            atime_nsec: be32(b, 176)?,
            mtime_nsec: be32(b, 180)?,
            ctime_nsec: be32(b, 184)?,
        })
    }
}

/// `struct gfs2_dirent` (without the name that follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dirent {
    pub inum: Inum,
    pub hash: u32,
    pub rec_len: u16,
    pub name_len: u16,
    pub de_type: u16,
}

impl Dirent {
    pub fn parse(b: &[u8], off: usize) -> Option<Self> {
        Some(Dirent {
            inum: Inum::parse(b, off)?,
            hash: be32(b, off + 16)?,
            rec_len: be16(b, off + 20)?,
            name_len: be16(b, off + 22)?,
            de_type: be16(b, off + 24)?,
        })
    }
}

/// `struct gfs2_leaf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    pub depth: u16,
    pub entries: u16,
    pub next: u64,
}

impl Leaf {
    pub fn parse(b: &[u8]) -> Option<Self> {
        Some(Leaf {
            depth: be16(b, 24)?,
            entries: be16(b, 26)?,
            next: be64(b, 32)?,
        })
    }
}

/// `struct gfs2_ea_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EaHeader {
    pub rec_len: u32,
    pub data_len: u32,
    pub name_len: u8,
    pub ea_type: u8,
    pub flags: u8,
    pub num_ptrs: u8,
}

impl EaHeader {
    pub fn parse(b: &[u8], off: usize) -> Option<Self> {
        let s = b.get(off..off.checked_add(EA_HEADER_SIZE)?)?;
        Some(EaHeader {
            rec_len: be32(s, 0)?,
            data_len: be32(s, 4)?,
            name_len: s[8],
            ea_type: s[9],
            flags: s[10],
            num_ptrs: s[11],
        })
    }
}

/// `struct gfs2_rindex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rindex {
    pub addr: u64,
    pub length: u32,
    pub data0: u64,
    pub data: u32,
    pub bitbytes: u32,
}

impl Rindex {
    pub fn parse(b: &[u8]) -> Option<Self> {
        Some(Rindex {
            addr: be64(b, 0)?,
            length: be32(b, 8)?,
            data0: be64(b, 16)?,
            data: be32(b, 24)?,
            bitbytes: be32(b, 28)?,
        })
    }
}

/// `struct gfs2_log_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHeader {
    pub sequence: u64,
    pub flags: u32,
    pub tail: u32,
    pub blkno: u32,
    pub hash: u32,
    pub crc: u32,
    pub nsec: u32,
    pub sec: u64,
    pub addr: u64,
    pub jinode: u64,
    pub statfs_addr: u64,
    pub quota_addr: u64,
    pub local_total: u64,
    pub local_free: u64,
    pub local_dinodes: u64,
}

impl LogHeader {
    pub fn parse(b: &[u8]) -> Option<Self> {
        Some(LogHeader {
            sequence: be64(b, 24)?,
            flags: be32(b, 32)?,
            tail: be32(b, 36)?,
            blkno: be32(b, 40)?,
            hash: be32(b, 44)?,
            crc: be32(b, 48)?,
            nsec: be32(b, 52)?,
            sec: be64(b, 56)?,
            addr: be64(b, 64)?,
            jinode: be64(b, 72)?,
            statfs_addr: be64(b, 80)?,
            quota_addr: be64(b, 88)?,
            local_total: be64(b, 96)?,
            local_free: be64(b, 104)?,
            local_dinodes: be64(b, 112)?,
        })
    }
}

/// `struct gfs2_log_descriptor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogDescriptor {
    pub ld_type: u32,
    pub length: u32,
    pub data1: u32,
    pub data2: u32,
}

impl LogDescriptor {
    pub fn parse(b: &[u8]) -> Option<Self> {
        Some(LogDescriptor {
            ld_type: be32(b, 24)?,
            length: be32(b, 28)?,
            data1: be32(b, 32)?,
            data2: be32(b, 36)?,
        })
    }
}

/// `struct gfs2_statfs_change`, stored after the dinode header of the
/// master and per-node statfs files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatfsChange {
    pub total: i64,
    pub free: i64,
    pub dinodes: i64,
}

impl StatfsChange {
    pub fn parse(b: &[u8]) -> Option<Self> {
        Some(StatfsChange {
            total: be64(b, 0)? as i64,
            free: be64(b, 8)? as i64,
            dinodes: be64(b, 16)? as i64,
        })
    }
}

/// The directory-name hash (`gfs2_disk_hash`): the standard CRC-32 of the name.
pub fn disk_hash(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// `lh_hash` of a log header block: the CRC-32 of the first `LH_V1_SIZE` bytes
/// with the `lh_hash` field itself zeroed.
pub fn log_header_hash(block: &[u8]) -> Option<u32> {
    let mut v1 = block.get(..LH_V1_SIZE)?.to_vec();
    v1[44..48].fill(0);
    Some(disk_hash(&v1))
}

/// `lh_crc` of a log header block: the kernel's `crc32c(~0, ...)` (no final
/// inversion) from just after `lh_crc` to the end of the block.
pub fn log_header_crc(block: &[u8]) -> Option<u32> {
    Some(!crc32c::crc32c(block.get(LH_V1_SIZE + 4..)?))
}
