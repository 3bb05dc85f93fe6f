//! Directories: `struct gfs2_dirent`, `struct gfs2_leaf`, and walking the
//! entries packed in a dinode or leaf block.

use crate::bytes::{fixed_struct, get, put, put16, put32, put64, u16_at, u32_at, u64_at};
use crate::consts::{format, metatype};
use crate::error::{need, FormatError, Result};
use crate::meta::{Inum, MetaHeader};

/// `struct gfs2_dirent` (the fixed part; the name follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dirent {
    pub inum: Inum,
    pub hash: u32,
    pub rec_len: u16,
    pub name_len: u16,
    pub de_type: u16,
    pub rahead: u16,
    pub cookie: u32,
    pub pad: [u8; 8],
}

/// `GFS2_DIRENT_SIZE`: record size of an entry with an `n`-byte name.
pub const fn dirent_size(name_len: usize) -> usize {
    (Dirent::SIZE + name_len + 7) & !7
}

impl Dirent {
    pub const SIZE: usize = 40;

    #[inline]
    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_dirent", b, Self::SIZE)?;
        Ok(Dirent {
            inum: Inum::at(b, 0),
            hash: u32_at(b, 16),
            rec_len: u16_at(b, 20),
            name_len: u16_at(b, 22),
            de_type: u16_at(b, 24),
            rahead: u16_at(b, 26),
            cookie: u32_at(b, 28),
            pad: get(b, 32),
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_dirent", b, Self::SIZE)?;
        self.inum.put(b, 0);
        put32(b, 16, self.hash);
        put16(b, 20, self.rec_len);
        put16(b, 22, self.name_len);
        put16(b, 24, self.de_type);
        put16(b, 26, self.rahead);
        put32(b, 28, self.cookie);
        put(b, 32, &self.pad);
        Ok(())
    }

    /// An entry that only reserves space (the kernel's "sentinel"): a zero
    /// inode address.
    pub fn is_unused(&self) -> bool {
        self.inum.addr == 0
    }
}
fixed_struct!(Dirent);

/// `struct gfs2_leaf`: header of a directory leaf block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    pub header: MetaHeader,
    pub depth: u16,
    pub entries: u16,
    pub dirent_format: u32,
    pub next: u64,
    pub inode: u64,
    pub dist: u32,
    pub nsec: u32,
    pub sec: u64,
    pub reserved2: [u8; 40],
}

impl Default for Leaf {
    fn default() -> Self {
        Leaf {
            header: MetaHeader::new(metatype::LF, format::LF),
            depth: 0,
            entries: 0,
            dirent_format: format::DE,
            next: 0,
            inode: 0,
            dist: 0,
            nsec: 0,
            sec: 0,
            reserved2: [0; 40],
        }
    }
}

impl Leaf {
    pub const SIZE: usize = 104;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_leaf", b, Self::SIZE)?;
        Ok(Leaf {
            header: MetaHeader::parse(b)?,
            depth: u16_at(b, 24),
            entries: u16_at(b, 26),
            dirent_format: u32_at(b, 28),
            next: u64_at(b, 32),
            inode: u64_at(b, 40),
            dist: u32_at(b, 48),
            nsec: u32_at(b, 52),
            sec: u64_at(b, 56),
            reserved2: get(b, 64),
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_leaf", b, Self::SIZE)?;
        self.header.write(b)?;
        put16(b, 24, self.depth);
        put16(b, 26, self.entries);
        put32(b, 28, self.dirent_format);
        put64(b, 32, self.next);
        put64(b, 40, self.inode);
        put32(b, 48, self.dist);
        put32(b, 52, self.nsec);
        put64(b, 56, self.sec);
        put(b, 64, &self.reserved2);
        Ok(())
    }
}
fixed_struct!(Leaf);

/// One record found by [`DirentIter`]: where it is, its header and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDirent<'a> {
    /// Byte offset of the record in the block.
    pub offset: usize,
    pub dirent: Dirent,
    /// The name bytes (`name_len` of them; empty for an unused record).
    pub name: &'a [u8],
}

/// Walks the chain of dirent records from `start` to the end of a block.
///
/// Each record is checked: its header must fit, `rec_len` must be a multiple
/// of 8 no smaller than a dirent and must not run past the block, and the
/// name must fit inside the record. The first bad record yields one error and
/// ends the walk. Unused records (zero inode address) are yielded too; the
/// caller decides whether to skip them.
#[derive(Debug, Clone)]
pub struct DirentIter<'a> {
    block: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> DirentIter<'a> {
    /// Entries of a dinode block (`start` = `Dinode::SIZE`) or a leaf block
    /// (`start` = `Leaf::SIZE`).
    pub fn new(block: &'a [u8], start: usize) -> Self {
        DirentIter {
            block,
            pos: start,
            done: start >= block.len(),
        }
    }
}

impl<'a> Iterator for DirentIter<'a> {
    type Item = Result<RawDirent<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let off = self.pos;
        let bad = |field, value: u64| FormatError::BadValue {
            what: "gfs2_dirent",
            field,
            value,
        };
        let rest = &self.block[off..];
        let res = Dirent::parse(rest).and_then(|d| {
            let rec = usize::from(d.rec_len);
            if rec < Dirent::SIZE || rec & 7 != 0 || rec > rest.len() {
                return Err(bad("de_rec_len", rec as u64));
            }
            let nlen = usize::from(d.name_len);
            if nlen > rec - Dirent::SIZE || (!d.is_unused() && nlen == 0) {
                return Err(bad("de_name_len", nlen as u64));
            }
            let name = if d.is_unused() {
                &rest[..0]
            } else {
                &rest[Dirent::SIZE..Dirent::SIZE + nlen]
            };
            Ok(RawDirent {
                offset: off,
                dirent: d,
                name,
            })
        });
        match &res {
            Ok(r) => {
                self.pos = off + usize::from(r.dirent.rec_len);
                self.done = self.pos >= self.block.len();
            }
            Err(_) => self.done = true,
        }
        Some(res)
    }
}
