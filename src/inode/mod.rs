//! Inodes: dinodes and what hangs off them, read under the inode's glock.

pub mod acl;
pub mod bmap;
pub mod dir;
pub mod dirops;
pub mod ea_write;
pub mod write;
pub mod xattr;

use crate::buf::{Block, BufCache};
use crate::error::{FsError, Result};
use crate::format::{self, mt, Dinode, DINODE_SIZE};
use crate::glock::Holder;

/// Where an inode's metadata is read from: the cache, and the holder proving
/// the inode glock is held for as long as the borrowed objects are used.
#[derive(Clone, Copy)]
pub struct Meta<'a> {
    /// The metadata cache.
    pub cache: &'a BufCache,
    /// The inode's glock holder.
    pub gh: &'a Holder,
}

impl<'a> Meta<'a> {
    /// Read a metadata block covered by this glock.
    pub fn read(&self, blkno: u64, mh_type: u32) -> Result<Block> {
        self.cache.read_meta(self.gh, blkno, mh_type)
    }
    /// Block size.
    pub fn bsize(&self) -> u32 {
        self.cache.bsize()
    }
}

/// A dinode as read from disk, with the block it lives in (stuffed data,
/// top-level block pointers and the hash table of small directories are in
/// that block). Valid while the inode glock is held.
#[derive(Clone)]
pub struct Inode {
    /// Inode number = dinode block address.
    pub ino: u64,
    /// The parsed dinode.
    pub di: Dinode,
    /// The whole dinode block.
    pub block: Block,
}

/// File type bits of `mode`.
pub const S_IFMT: u32 = 0o170000;

/// The checks every reader of a dinode relies on (the kernel's
/// `gfs2_dinode_in`): its own address, a known file type, a sane height,
/// stuffed data that fits the block, a hash table that matches its depth.
pub fn validate(di: &Dinode, ino: u64, bsize: u32) -> Result<()> {
    if di.num.addr != ino {
        return Err(FsError::corrupt(
            ino,
            format!("dinode says it is at block {}", di.num.addr),
        ));
    }
    let kind = di.mode & S_IFMT;
    let valid_kind = matches!(
        kind,
        0o100000 | 0o040000 | 0o120000 | 0o020000 | 0o060000 | 0o010000 | 0o140000
    );
    if !valid_kind {
        return Err(FsError::corrupt(
            ino,
            format!("bad file mode {:o}", di.mode),
        ));
    }
    if di.height > format::MAX_META_HEIGHT {
        return Err(FsError::corrupt(
            ino,
            format!("height {} too large", di.height),
        ));
    }
    let bsize = u64::from(bsize);
    if di.height == 0 && kind != 0o020000 && kind != 0o060000 {
        let cap = bsize - DINODE_SIZE as u64;
        // Directories are checked by the directory code (hash tables).
        if kind != 0o040000 && di.size > cap {
            return Err(FsError::corrupt(
                ino,
                format!("stuffed inode of size {} > {cap}", di.size),
            ));
        }
    }
    if kind == 0o040000 && di.flags & format::dif::EXHASH != 0 {
        if di.depth > format::DIR_MAX_DEPTH {
            return Err(FsError::corrupt(ino, format!("dir depth {}", di.depth)));
        }
        if (8u64 << di.depth) != di.size {
            return Err(FsError::corrupt(
                ino,
                format!("hash table size {} != 8 << depth {}", di.size, di.depth),
            ));
        }
    }
    Ok(())
}

impl Inode {
    /// Read and validate dinode `ino`.
    pub fn read(m: Meta<'_>, ino: u64) -> Result<Inode> {
        let block = m.read(ino, mt::DI)?;
        let di = Dinode::parse(&block).map_err(|_| FsError::corrupt(ino, "short dinode"))?;
        validate(&di, ino, m.bsize())?;
        Ok(Inode { ino, di, block })
    }

    /// `S_IF*` bits.
    pub fn kind(&self) -> u32 {
        self.di.mode & S_IFMT
    }
    /// A directory?
    pub fn is_dir(&self) -> bool {
        self.kind() == 0o040000
    }
    /// A regular file?
    pub fn is_reg(&self) -> bool {
        self.kind() == 0o100000
    }
    /// A symbolic link?
    pub fn is_symlink(&self) -> bool {
        self.kind() == 0o120000
    }
    /// Data stored inside the dinode block?
    pub fn is_stuffed(&self) -> bool {
        self.di.height == 0
    }
    /// The stuffed data area (after the dinode header).
    pub fn stuffed(&self) -> &[u8] {
        self.block.get(DINODE_SIZE..).unwrap_or(&[])
    }
    /// Device number for character and block devices (Linux encoding).
    pub fn rdev(&self) -> u32 {
        let (ma, mi) = (self.di.major, self.di.minor);
        ((ma & 0xfff) << 8) | (mi & 0xff) | ((mi & !0xff) << 12)
    }

    /// The target of a symbolic link: stuffed in the dinode (short) or in one
    /// data block (long, up to a block of the path).
    pub fn readlink(&self, m: Meta<'_>) -> Result<Vec<u8>> {
        if !self.is_symlink() {
            return Err(FsError::Errno(libc::EINVAL));
        }
        let size = self.di.size;
        if size == 0 || size > m.bsize() as u64 {
            return Err(FsError::corrupt(
                self.ino,
                format!("symlink of length {size}"),
            ));
        }
        let mut buf = vec![0u8; size as usize];
        let n = bmap::read_data(m, self, 0, &mut buf)?;
        if n != buf.len() {
            return Err(FsError::corrupt(self.ino, "short symlink"));
        }
        Ok(buf)
    }
}
