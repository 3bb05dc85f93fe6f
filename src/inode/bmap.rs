//! The metadata tree: map a file's logical blocks to disk blocks.
//!
//! A dinode of height 0 is *stuffed*: its data follows the dinode header. A
//! dinode of height `h >= 1` holds `diptrs` pointers; each points to an
//! indirect block of `inptrs` pointers, down `h - 1` levels, and the pointers
//! of the last level point to data blocks. A zero pointer is a hole covering
//! its whole subtree.

use super::{Inode, Meta};
use crate::error::{FsError, Result};
use crate::format::{be64, mt, DINODE_SIZE, META_HEADER_SIZE};

/// A run of logical blocks: either mapped to consecutive disk blocks from
/// `phys`, or a hole (`phys == None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First disk block, or `None` for a hole.
    pub phys: Option<u64>,
    /// Number of blocks (at least 1).
    pub len: u64,
}

/// Pointers in a dinode block and in an indirect block.
pub fn ptrs_per_block(bsize: u32) -> (u64, u64) {
    let b = bsize as u64;
    (
        (b - DINODE_SIZE as u64) / 8,
        (b - META_HEADER_SIZE as u64) / 8,
    )
}

/// Map logical block `lblock` of `ip` (not stuffed) and the run that follows
/// it, at most `max` blocks long.
pub fn map_extent(m: Meta<'_>, ip: &Inode, lblock: u64, max: u64) -> Result<Extent> {
    let max = max.max(1);
    let h = ip.di.height as usize;
    if h == 0 {
        return Err(FsError::Errno(libc::EINVAL));
    }
    let (diptrs, inptrs) = ptrs_per_block(m.bsize());
    // span[l]: data blocks covered by one pointer at level l (on the stack:
    // this runs for every READ request).
    let mut spans = [1u64; crate::format::MAX_META_HEIGHT as usize + 1];
    let span = spans
        .get_mut(..h)
        .ok_or_else(|| FsError::corrupt(ip.ino, format!("height {h} too large")))?;
    for l in (0..h - 1).rev() {
        span[l] = span[l + 1].saturating_mul(inptrs);
    }
    let top = lblock / span[0];
    if top >= diptrs {
        return Ok(Extent {
            phys: None,
            len: max,
        });
    }
    let mut data = ip.block.clone();
    let mut start = DINODE_SIZE;
    let mut nptrs = diptrs;
    let mut blk = ip.ino;
    #[allow(clippy::needless_range_loop)]
    for l in 0..h {
        let idx = if l == 0 {
            top
        } else {
            (lblock / span[l]) % inptrs
        };
        let ptr_at = |i: u64| -> Result<u64> {
            be64(&data, start + (i as usize) * 8)
                .ok_or_else(|| FsError::corrupt(blk, "pointer beyond the block"))
        };
        let ptr = ptr_at(idx)?;
        if l == h - 1 {
            let mut len = 1u64;
            let mut i = idx + 1;
            while len < max && i < nptrs {
                let p = ptr_at(i)?;
                let contiguous = if ptr == 0 {
                    p == 0
                } else {
                    Some(p) == ptr.checked_add(len)
                };
                if !contiguous {
                    break;
                }
                len += 1;
                i += 1;
            }
            return Ok(Extent {
                phys: (ptr != 0).then_some(ptr),
                len,
            });
        }
        if ptr == 0 {
            let len = span[l] - (lblock % span[l]);
            return Ok(Extent {
                phys: None,
                len: len.min(max),
            });
        }
        data = m.read(ptr, mt::IN)?;
        blk = ptr;
        start = META_HEADER_SIZE;
        nptrs = inptrs;
    }
    Err(FsError::corrupt(ip.ino, "metadata tree walk ended early"))
}

/// Map one logical block: `Some(disk block)` or `None` for a hole.
pub fn map_block(m: Meta<'_>, ip: &Inode, lblock: u64) -> Result<Option<u64>> {
    if ip.is_stuffed() {
        return Ok((lblock == 0).then_some(ip.ino));
    }
    Ok(map_extent(m, ip, lblock, 1)?.phys)
}

/// Journaled data may be newer in the log than on the device: lay the
/// cache's versions of the blocks `dst` covers (from byte `in_block` of
/// block `first`) over what the device gave.
fn overlay_jdata(m: Meta<'_>, first: u64, in_block: u64, dst: &mut [u8]) {
    let bsize = m.bsize() as u64;
    let mut pos = 0usize;
    let mut blk = first;
    let mut skip = in_block as usize;
    while pos < dst.len() {
        let n = (bsize as usize - skip).min(dst.len() - pos);
        if let Some(b) = m.cache.data_overlay(blk) {
            dst[pos..pos + n].copy_from_slice(&b[skip..skip + n]);
        }
        pos += n;
        blk += 1;
        skip = 0;
    }
}

/// Read file data at `offset` into `buf`, up to the file size; holes read as
/// zeros. Data blocks go straight from the device in one request per extent.
/// Returns the number of bytes read.
pub fn read_data(m: Meta<'_>, ip: &Inode, offset: u64, buf: &mut [u8]) -> Result<usize> {
    let size = ip.di.size;
    if offset >= size {
        return Ok(0);
    }
    let want = (buf.len() as u64).min(size - offset) as usize;
    let buf = &mut buf[..want];
    if ip.is_stuffed() {
        let src = ip
            .stuffed()
            .get(offset as usize..offset as usize + want)
            .ok_or_else(|| FsError::corrupt(ip.ino, "stuffed size beyond the block"))?;
        buf.copy_from_slice(src);
        return Ok(want);
    }
    let bsize = m.bsize() as u64;
    let dev = m.cache.device();
    let mut done = 0usize;
    while done < want {
        let pos = offset + done as u64;
        let lblock = pos / bsize;
        let in_block = pos % bsize;
        let left = (want - done) as u64;
        let blocks = (in_block + left).div_ceil(bsize);
        let ext = map_extent(m, ip, lblock, blocks)?;
        let n = (ext.len * bsize - in_block).min(left) as usize;
        let dst = &mut buf[done..done + n];
        match ext.phys {
            None => dst.fill(0),
            Some(p) => {
                let at = p
                    .checked_mul(bsize)
                    .and_then(|a| a.checked_add(in_block))
                    .filter(|a| a.checked_add(n as u64).is_some_and(|e| e <= dev.size()))
                    .ok_or_else(|| {
                        FsError::corrupt(ip.ino, format!("data block {p} beyond the device"))
                    })?;
                dev.read_at(dst, at).map_err(|e| FsError::Io {
                    what: format!("data of inode {} at block {p}", ip.ino),
                    source: e,
                })?;
                if ip.di.flags & crate::format::dif::JDATA != 0 {
                    overlay_jdata(m, p, in_block, dst);
                }
            }
        }
        done += n;
    }
    Ok(done)
}

/// `lseek(SEEK_DATA)` (`hole == false`) or `lseek(SEEK_HOLE)` from `offset`.
/// The end of file counts as a hole; ENXIO at or past the end.
pub fn seek(m: Meta<'_>, ip: &Inode, offset: u64, hole: bool) -> Result<u64> {
    let size = ip.di.size;
    if offset >= size {
        return Err(FsError::Errno(libc::ENXIO));
    }
    if ip.is_stuffed() {
        return Ok(if hole { size } else { offset });
    }
    let bsize = m.bsize() as u64;
    let last = size.div_ceil(bsize);
    let mut lblock = offset / bsize;
    // A damaged tree can describe an absurd number of extents; past this many
    // treat the rest as data, which lseek allows.
    let mut budget = 1u32 << 22;
    while lblock < last {
        budget -= 1;
        if budget == 0 {
            return Ok(if hole {
                size
            } else {
                (lblock * bsize).max(offset)
            });
        }
        let ext = map_extent(m, ip, lblock, last - lblock)?;
        if ext.phys.is_none() == hole {
            return Ok((lblock * bsize).max(offset).min(size));
        }
        lblock = lblock.saturating_add(ext.len);
    }
    if hole {
        Ok(size)
    } else {
        Err(FsError::Errno(libc::ENXIO))
    }
}
