//! The format's checksums.

use crate::error::{need, Result};
use crate::log::LH_V1_SIZE;
use crate::rgrp::Rgrp;

/// `gfs2_disk_hash`: the standard (reflected, inverted) CRC-32. Used for
/// directory names, log header `lh_hash`, and `rg_crc`.
pub fn disk_hash(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// The hash stored in `de_hash` for a directory entry name.
pub fn dirent_hash(name: &[u8]) -> u32 {
    disk_hash(name)
}

/// `lh_hash`: CRC-32 of the first `LH_V1_SIZE` bytes of a log header block
/// with the `lh_hash` field taken as zero.
pub fn log_header_hash(block: &[u8]) -> Result<u32> {
    need("gfs2_log_header", block, LH_V1_SIZE)?;
    let mut v1 = [0u8; LH_V1_SIZE];
    v1.copy_from_slice(&block[..LH_V1_SIZE]);
    v1[44..48].fill(0);
    Ok(disk_hash(&v1))
}

/// `lh_crc`: the kernel's `crc32c(~0, ...)` (no final inversion) over the
/// block from just after `lh_crc` to its end.
pub fn log_header_crc(block: &[u8]) -> Result<u32> {
    need("gfs2_log_header", block, LH_V1_SIZE + 4)?;
    Ok(!crc32c::crc32c(&block[LH_V1_SIZE + 4..]))
}

/// `rg_crc`: CRC-32 of the 128-byte rgrp header with `rg_crc` taken as zero.
pub fn rgrp_crc(header: &[u8]) -> Result<u32> {
    need("gfs2_rgrp", header, Rgrp::SIZE)?;
    let mut h = [0u8; Rgrp::SIZE];
    h.copy_from_slice(&header[..Rgrp::SIZE]);
    h[64..68].fill(0);
    Ok(disk_hash(&h))
}
