//! Superblock and resource-group index checks, as the kernel's
//! `gfs2_check_sb` / `gfs2_read_sb` and `gfs2_ri_update` do them.

use crate::dev::BlockDevice;
use crate::error::{FsError, Result};
use crate::format::{mt, Rindex, Superblock, MAGIC, RINDEX_SIZE, SB_ADDR_BASIC};

/// `GFS2_FS_FORMAT_MIN` / `MAX` and `GFS2_FORMAT_MULTI`.
pub const FS_FORMAT_MIN: u32 = 1801;
/// Newest on-disk format the kernel mounts.
pub const FS_FORMAT_MAX: u32 = 1802;
/// The only multihost format.
pub const FORMAT_MULTI: u32 = 1900;

/// Read and check the superblock of `dev`.
pub fn read_sb(dev: &dyn BlockDevice) -> Result<Superblock> {
    let off = SB_ADDR_BASIC * 512;
    let mut buf = vec![0u8; 512];
    if dev.size() < off + 512 {
        return Err(FsError::Mount(format!(
            "{}: device of {} bytes is too small for a GFS2 superblock",
            dev.describe(),
            dev.size()
        )));
    }
    dev.read_at(&mut buf, off).map_err(|e| FsError::Io {
        what: format!("superblock of {}", dev.describe()),
        source: e,
    })?;
    let sb = Superblock::parse(&buf).map_err(|_| FsError::Mount("short superblock".into()))?;
    check_sb(&sb, dev.size())?;
    Ok(sb)
}

/// The kernel's superblock checks, plus sanity of the addresses we follow.
pub fn check_sb(sb: &Superblock, dev_size: u64) -> Result<()> {
    let bad = |m: String| Err(FsError::Mount(m));
    if sb.header.magic != MAGIC || sb.header.mh_type != mt::SB {
        return bad("not a GFS2 filesystem (bad superblock magic or type)".into());
    }
    if !(FS_FORMAT_MIN..=FS_FORMAT_MAX).contains(&sb.fs_format)
        || sb.multihost_format != FORMAT_MULTI
    {
        return bad(format!(
            "unknown on-disk format {}/{} (supported {FS_FORMAT_MIN}-{FS_FORMAT_MAX}/{FORMAT_MULTI})",
            sb.fs_format, sb.multihost_format
        ));
    }
    let bs = sb.bsize;
    if !(512..=65536).contains(&bs) || !bs.is_power_of_two() {
        return bad(format!("invalid block size {bs}"));
    }
    if sb.bsize_shift != bs.trailing_zeros() {
        return bad(format!(
            "block size shift {} does not match block size {bs}",
            sb.bsize_shift
        ));
    }
    let blocks = dev_size / bs as u64;
    for (what, addr) in [("master", sb.master_dir.addr), ("root", sb.root_dir.addr)] {
        if addr == 0 || addr >= blocks {
            return bad(format!(
                "{what} directory at block {addr} outside the device ({blocks} blocks)"
            ));
        }
    }
    Ok(())
}

/// Parse and check the rindex contents: whole entries, each rgrp inside the
/// device, its bitmap big enough for its data blocks.
pub fn parse_rindex(data: &[u8], fs_blocks: u64, rindex_ino: u64) -> Result<Vec<Rindex>> {
    if !data.len().is_multiple_of(RINDEX_SIZE) {
        return Err(FsError::corrupt(
            rindex_ino,
            format!(
                "rindex size {} is not a multiple of {RINDEX_SIZE}",
                data.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(data.len() / RINDEX_SIZE);
    for (i, c) in data.chunks_exact(RINDEX_SIZE).enumerate() {
        let ri = Rindex::parse(c).map_err(|_| FsError::corrupt(rindex_ino, "short rindex"))?;
        let bad = |why: &str| FsError::corrupt(rindex_ino, format!("rindex entry {i}: {why}"));
        let hdr_end = ri.addr.checked_add(ri.length as u64);
        let data_end = ri.data0.checked_add(ri.data as u64);
        if ri.length == 0 || hdr_end.is_none_or(|e| e > fs_blocks) {
            return Err(bad("header outside the filesystem"));
        }
        if data_end.is_none_or(|e| e > fs_blocks) || ri.data0 < ri.addr {
            return Err(bad("data outside the filesystem"));
        }
        if (ri.bitbytes as u64) * 4 < ri.data as u64 {
            return Err(bad("bitmap too small for its data blocks"));
        }
        out.push(ri);
    }
    if out.is_empty() {
        return Err(FsError::corrupt(rindex_ino, "empty rindex"));
    }
    Ok(out)
}
