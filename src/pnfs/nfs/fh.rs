//! NFS file handles: an inode's block address and its generation, so that
//! a handle to a file that was deleted (and whose block may hold another
//! inode since) is answered `NFS4ERR_STALE` rather than naming the new one.
//!
//! Handles come back from clients, so decoding checks the length and a
//! magic, and the server then checks the generation against the dinode.

use crate::fs::Fs;

/// Handle length: magic (4) + inode (8) + generation (8).
pub const FH_LEN: usize = 20;
const MAGIC: [u8; 4] = *b"G2F\x01";

/// A decoded handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fh {
    /// The dinode's block address.
    pub ino: u64,
    /// Its generation when the handle was made.
    pub generation: u64,
}

/// Why a handle is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FhError {
    /// Not one of ours (`NFS4ERR_BADHANDLE`).
    Bad,
    /// The inode is gone or was reused (`NFS4ERR_STALE`).
    Stale,
}

impl Fh {
    /// The bytes sent to clients.
    pub fn encode(&self) -> [u8; FH_LEN] {
        let mut b = [0u8; FH_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..12].copy_from_slice(&self.ino.to_be_bytes());
        b[12..].copy_from_slice(&self.generation.to_be_bytes());
        b
    }

    /// Parse a client's handle (shape only).
    pub fn decode(b: &[u8]) -> Result<Fh, FhError> {
        if b.len() != FH_LEN || b[..4] != MAGIC {
            return Err(FhError::Bad);
        }
        let mut ino = [0u8; 8];
        ino.copy_from_slice(&b[4..12]);
        let mut g = [0u8; 8];
        g.copy_from_slice(&b[12..]);
        Ok(Fh {
            ino: u64::from_be_bytes(ino),
            generation: u64::from_be_bytes(g),
        })
    }

    /// The handle of `ino` as it is now.
    pub fn of(fs: &Fs, ino: u64) -> Result<Fh, crate::error::FsError> {
        let a = fs.getattr(ino)?;
        Ok(Fh {
            ino,
            generation: a.generation,
        })
    }

    /// Check that the handle still names an inode: the block must be
    /// allocated as a dinode in its resource group's bitmap (a freed dinode
    /// keeps its old contents on disk, links and all), read as a dinode, and
    /// carry the handle's generation (a reused block has a new one). An
    /// unlinked dinode still open somewhere passes: the caller decides.
    pub fn check(&self, fs: &Fs) -> Result<crate::fs::Attr, FhError> {
        let blocks = fs.device().size() / u64::from(fs.superblock().bsize.max(1));
        if self.ino == 0 || self.ino >= blocks {
            return Err(FhError::Stale);
        }
        if self.ino != fs.root() && !matches!(allocated_dinode(fs, self.ino), Ok(true)) {
            return Err(FhError::Stale);
        }
        match fs.getattr(self.ino) {
            Ok(a) if a.generation == self.generation && a.mode != 0 => Ok(a),
            _ => Err(FhError::Stale),
        }
    }
}

/// Whether block `blk` is a dinode (in use, or unlinked but open) in its
/// resource group's bitmap, read under the rgrp's glock held shared.
fn allocated_dinode(fs: &Fs, blk: u64) -> crate::error::Result<bool> {
    use gfs2_ondisk::BlockState;
    let rindex = fs.rindex();
    let Some(i) = crate::rgrp::locate(&rindex, blk) else {
        return Ok(false);
    };
    let ri = &rindex[i];
    let Some(index) = blk.checked_sub(ri.data0) else {
        return Ok(false);
    };
    let Some((bb, off, shift)) = gfs2_ondisk::layout::bitmap_position(fs.superblock().bsize, index)
    else {
        return Ok(false);
    };
    if bb >= ri.length {
        return Ok(false);
    }
    let (mty, gl) = (
        if bb == 0 {
            crate::format::mt::RG
        } else {
            crate::format::mt::RB
        },
        crate::rgrp::glock(ri),
    );
    let _gh = fs.glocks().acquire(gl, gfs2_lockproto::Mode::PR)?;
    let b = fs.cache().read_meta_as(gl, ri.addr + u64::from(bb), mty)?;
    let Some(byte) = b.get(off) else {
        return Ok(false);
    };
    Ok(matches!(
        BlockState::from_bits(byte >> shift),
        BlockState::Dinode | BlockState::Unlinked
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let f = Fh {
            ino: 0x1234_5678_9abc,
            generation: 42,
        };
        assert_eq!(Fh::decode(&f.encode()), Ok(f));
        let mut b = f.encode();
        b[0] ^= 1;
        assert_eq!(Fh::decode(&b), Err(FhError::Bad));
        assert_eq!(Fh::decode(&f.encode()[..19]), Err(FhError::Bad));
        assert_eq!(Fh::decode(&[]), Err(FhError::Bad));
    }
}
