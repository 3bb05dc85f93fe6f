//! The on-disk format as the filesystem core names it.
//!
//! Everything here comes from the `gfs2-ondisk` crate, which owns the format
//! (structures, constants, checksums). This module only gives the core short
//! names for the constants it uses everywhere and a few bounds-checked field
//! readers for pointer arrays, so that no second copy of a parser exists.

pub use gfs2_ondisk::consts::{dif, metatype as mt, DIR_MAX_DEPTH, MAGIC, MAX_META_HEIGHT};
pub use gfs2_ondisk::log::LH_V1_SIZE;
pub use gfs2_ondisk::{
    Dinode, Dirent, EaHeader, Inum, Leaf, LogDescriptor, LogHeader, MetaHeader, Rindex,
    StatfsChange, Superblock,
};

/// Superblock address in 512-byte basic blocks.
pub const SB_ADDR_BASIC: u64 = gfs2_ondisk::SB_ADDR;
pub const META_HEADER_SIZE: usize = MetaHeader::SIZE;
pub const DINODE_SIZE: usize = Dinode::SIZE;
pub const LEAF_SIZE: usize = Leaf::SIZE;
pub const DIRENT_SIZE: usize = Dirent::SIZE;
pub const EA_HEADER_SIZE: usize = EaHeader::SIZE;
pub const RINDEX_SIZE: usize = Rindex::SIZE;
pub const LOG_DESC_SIZE: usize = LogDescriptor::SIZE;

/// Log header flags and log descriptor types.
pub mod log {
    use gfs2_ondisk::consts::{ld, lh};
    pub const HEAD_UNMOUNT: u32 = lh::UNMOUNT;
    pub const HEAD_RECOVERY: u32 = lh::RECOVERY;
    pub const HEAD_USERSPACE: u32 = lh::USERSPACE;
    pub const DESC_METADATA: u32 = ld::METADATA;
    pub const DESC_REVOKE: u32 = ld::REVOKE;
    pub const DESC_JDATA: u32 = ld::JDATA;
}

/// Big-endian u64 at `off`, or `None` past the end of `b`.
pub(crate) fn be64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Store a big-endian u32 at `off` if it fits.
pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) {
    if let Some(s) = b.get_mut(off..off + 4) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Store a big-endian u64 at `off` if it fits.
pub(crate) fn put64(b: &mut [u8], off: usize, v: u64) {
    if let Some(s) = b.get_mut(off..off + 8) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// The directory-name hash.
pub fn disk_hash(data: &[u8]) -> u32 {
    gfs2_ondisk::hash::disk_hash(data)
}

/// `lh_hash` of a log header block, or `None` if the block is too short.
pub fn log_header_hash(block: &[u8]) -> Option<u32> {
    gfs2_ondisk::hash::log_header_hash(block).ok()
}

/// `lh_crc` of a log header block, or `None` if the block is too short.
pub fn log_header_crc(block: &[u8]) -> Option<u32> {
    gfs2_ondisk::hash::log_header_crc(block).ok()
}
