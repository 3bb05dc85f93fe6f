//! `restoremeta`: write the blocks of a savemeta file back onto a device.
//!
//! The superblock goes to its address for the saved block size, every
//! other record to its own block, zero-filled past its significant bytes;
//! blocks not in the file are left as they are (gfs2_edit's restore on a
//! fresh sparse image gives zeros there). Each record is checked before
//! anything is written at its address: a block number past the saved
//! filesystem's size or past the end of the device, or a record longer
//! than a block, stops the restore with an error.

use std::io::Write;

use super::format::{io_err, MetaError, Reader, Result};
use super::save::Progress;
use crate::dev::BlockDevice;

/// What a restore wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub bsize: u32,
    /// Blocks of the saved filesystem (0 when the file does not say).
    pub fs_blocks: u64,
    /// Records written, the superblock included.
    pub blocks: u64,
}

/// Restore every record of `r` onto `dev`; `info` gets gfs2_edit's
/// informational lines.
pub fn restoremeta(
    mut r: Reader,
    dev: &dyn BlockDevice,
    progress: bool,
    info: &mut dyn FnMut(String),
) -> Result<Restored> {
    let bsize = r.superblock().bsize;
    let bs = u64::from(bsize);
    let dev_blocks = dev.size() / bs;
    let fs_blocks = r.header().map_or(0, |h| h.fs_bytes / bs);
    if fs_blocks > 0 {
        info(format!(
            "Saved file system size is {fs_blocks} blocks, {:.2}GB",
            (fs_blocks * bs) as f64 / f64::from(1u32 << 30)
        ));
    }
    info(format!("Block size is {bsize}B"));
    info("This is gfs2 metadata.".into());
    info(format!(
        "There are {dev_blocks} free blocks on the destination device."
    ));
    if fs_blocks > dev_blocks {
        return Err(MetaError::Corrupt(format!(
            "the device ({dev_blocks} blocks of {bsize} bytes) is too small for the saved filesystem ({fs_blocks} blocks)"
        )));
    }
    let limit = if fs_blocks > 0 { fs_blocks } else { dev_blocks };
    let mut block = vec![0u8; bsize as usize];
    let mut write = |blk: u64, data: &[u8]| -> Result<()> {
        if blk >= limit || blk >= dev_blocks {
            return Err(MetaError::Corrupt(format!(
                "block {blk} (0x{blk:x}) in the savemeta file is past the end of the {} ({limit} blocks): nothing more restored",
                if fs_blocks > 0 && fs_blocks <= dev_blocks { "saved filesystem" } else { "device" }
            )));
        }
        // The reader checked data.len() <= bsize.
        block[..data.len()].copy_from_slice(data);
        block[data.len()..].fill(0);
        dev.write_at(&block, blk * bs)
            .map_err(io_err(format!("writing block {blk} (0x{blk:x})")))
    };
    let sb_addr = gfs2_ondisk::layout::sb_addr(bsize);
    let sb_data = r.sb_record().data.clone();
    write(sb_addr, &sb_data)?;
    let mut blocks = 1u64;
    let mut prog = Progress::new(progress);
    while let Some(rec) = r.next_record()? {
        write(rec.blk, &rec.data)?;
        blocks += 1;
        prog.report(rec.blk, limit, blocks, false);
    }
    prog.report(limit, limit, blocks, true);
    dev.flush().map_err(io_err("flushing the device"))?;
    let _ = std::io::stdout().flush();
    Ok(Restored {
        bsize,
        fs_blocks,
        blocks,
    })
}
