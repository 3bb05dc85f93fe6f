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

    /// Check that the handle still names an inode: any failure to read
    /// it as a dinode (a block past the device, one that holds something
    /// else now) or a different generation is stale. (A dinode freed in
    /// place keeps its header with no links: the caller decides about
    /// `nlink == 0`, which an open file may have.)
    pub fn check(&self, fs: &Fs) -> Result<crate::fs::Attr, FhError> {
        let blocks = fs.device().size() / u64::from(fs.superblock().bsize.max(1));
        if self.ino == 0 || self.ino >= blocks {
            return Err(FhError::Stale);
        }
        match fs.getattr(self.ino) {
            Ok(a) if a.generation == self.generation && a.mode != 0 => Ok(a),
            _ => Err(FhError::Stale),
        }
    }
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
