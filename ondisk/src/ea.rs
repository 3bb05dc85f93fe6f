//! Extended attributes: `struct gfs2_ea_header` and walking an EA block.

use crate::bytes::{fixed_struct, put32, u32_at, u64_at};
use crate::error::{need, FormatError, Result};
use crate::meta::MetaHeader;

// Extended attribute types and flags (`GFS2_EATYPE_*`, `GFS2_EAFLAG_*`).
pub const MAX_NAME_LEN: usize = 255;
pub const MAX_DATA_LEN: usize = 65536;
pub const TYPE_UNUSED: u8 = 0;
pub const TYPE_USR: u8 = 1;
pub const TYPE_SYS: u8 = 2;
pub const TYPE_SECURITY: u8 = 3;
pub const TYPE_TRUSTED: u8 = 4;
pub const TYPE_LAST: u8 = 4;
pub const FLAG_LAST: u8 = 0x01;

/// `struct gfs2_ea_header` (the name, then the value or the block pointers,
/// follow it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EaHeader {
    pub rec_len: u32,
    pub data_len: u32,
    pub name_len: u8,
    pub ea_type: u8,
    pub flags: u8,
    pub num_ptrs: u8,
    pub pad: u32,
}

impl EaHeader {
    pub const SIZE: usize = 16;

    pub fn parse(b: &[u8]) -> Result<Self> {
        need("gfs2_ea_header", b, Self::SIZE)?;
        Ok(EaHeader {
            rec_len: u32_at(b, 0),
            data_len: u32_at(b, 4),
            name_len: b[8],
            ea_type: b[9],
            flags: b[10],
            num_ptrs: b[11],
            pad: u32_at(b, 12),
        })
    }

    pub fn write(&self, b: &mut [u8]) -> Result<()> {
        need("gfs2_ea_header", b, Self::SIZE)?;
        put32(b, 0, self.rec_len);
        put32(b, 4, self.data_len);
        b[8] = self.name_len;
        b[9] = self.ea_type;
        b[10] = self.flags;
        b[11] = self.num_ptrs;
        put32(b, 12, self.pad);
        Ok(())
    }

    /// Whether this is the last record of its block.
    pub fn is_last(&self) -> bool {
        self.flags & FLAG_LAST != 0
    }

    /// Offset from the header to a value stored in the record
    /// (`GFS2_EA2DATA`): right after the name, unaligned.
    pub fn data_offset(&self) -> usize {
        Self::SIZE + usize::from(self.name_len)
    }

    /// Offset from the header to the block pointers of a value stored in ED
    /// blocks (`GFS2_EA2DATAPTRS`): after the name rounded up to 8 bytes.
    pub fn ptrs_offset(&self) -> usize {
        Self::SIZE + ((usize::from(self.name_len) + 7) & !7)
    }

    /// Record size needed for a name and an inline value of these lengths
    /// (`GFS2_EA_REC_LEN` for stuffed data).
    pub fn stuffed_rec_len(name_len: usize, data_len: usize) -> usize {
        (Self::SIZE + name_len + data_len + 7) & !7
    }
}
fixed_struct!(EaHeader);

/// One record found by [`EaIter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEa<'a> {
    /// Byte offset of the record in the block.
    pub offset: usize,
    pub header: EaHeader,
    pub name: &'a [u8],
    /// The value when it is stored in the record (`num_ptrs == 0`).
    pub value: Option<&'a [u8]>,
    /// Block numbers of the value's data blocks when it is not.
    pub ptrs: Vec<u64>,
}

/// Walks the EA records of an EA block (after its meta header) until the
/// record flagged last. Records are checked like directory entries: each must
/// lie inside the block with `rec_len` a multiple of 8, and its name and
/// inline value or pointers inside the record. The first bad record yields
/// one error and ends the walk.
#[derive(Debug, Clone)]
pub struct EaIter<'a> {
    block: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> EaIter<'a> {
    pub fn new(block: &'a [u8]) -> Self {
        EaIter {
            block,
            pos: MetaHeader::SIZE,
            done: block.len() <= MetaHeader::SIZE,
        }
    }
}

impl<'a> Iterator for EaIter<'a> {
    type Item = Result<RawEa<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let off = self.pos;
        let rest = &self.block[off..];
        let bad = |field, value: u64| FormatError::BadValue {
            what: "gfs2_ea_header",
            field,
            value,
        };
        let res = EaHeader::parse(rest).and_then(|h| {
            let rec = h.rec_len as usize;
            if rec < EaHeader::SIZE || rec & 7 != 0 || rec > rest.len() {
                return Err(bad("ea_rec_len", u64::from(h.rec_len)));
            }
            let rec_bytes = &rest[..rec];
            let name_end = EaHeader::SIZE + usize::from(h.name_len);
            let name = rec_bytes
                .get(EaHeader::SIZE..name_end)
                .ok_or(bad("ea_name_len", u64::from(h.name_len)))?;
            let doff = h.data_offset();
            let poff = h.ptrs_offset();
            let (value, ptrs) = if h.num_ptrs == 0 {
                let end = doff
                    .checked_add(h.data_len as usize)
                    .ok_or(bad("ea_data_len", u64::from(h.data_len)))?;
                if h.ea_type == TYPE_UNUSED && h.name_len == 0 {
                    (None, Vec::new())
                } else {
                    let v = rec_bytes
                        .get(doff..end)
                        .ok_or(bad("ea_data_len", u64::from(h.data_len)))?;
                    (Some(v), Vec::new())
                }
            } else {
                let n = usize::from(h.num_ptrs);
                let p = rec_bytes
                    .get(poff..poff + 8 * n)
                    .ok_or(bad("ea_num_ptrs", n as u64))?;
                (None, (0..n).map(|i| u64_at(p, 8 * i)).collect())
            };
            Ok(RawEa {
                offset: off,
                header: h,
                name,
                value,
                ptrs,
            })
        });
        match &res {
            Ok(r) => {
                self.pos = off + r.header.rec_len as usize;
                self.done = r.header.is_last() || self.pos >= self.block.len();
            }
            Err(_) => self.done = true,
        }
        Some(res)
    }
}
