//! Pass 1c, extended attributes: an inode's EA block (or its indirect EA
//! block and the EA blocks it lists) must be EA blocks of readable records,
//! and every data block those records point at an EA data block; each is
//! claimed for the inode. On the first bad one, whatever was claimed is
//! given back and pass 1 removes the inode's EAs (as gfs2-utils' pass 1c
//! does with EAs it cannot trust).

use super::*;

impl Fsck {
    /// Check and claim inode `idx`'s EA blocks; the reason when they are
    /// not valid (nothing stays claimed then).
    pub(super) fn check_ea(&mut self, idx: u64, di: &Dinode) -> Result<(), String> {
        let mut blocks = vec![di.eattr];
        let mut claimed = Vec::new();
        let res = (|| {
            self.claim(di.eattr, idx, W_USED)?;
            claimed.push(di.eattr);
            let b = self.read(di.eattr).map_err(|e| e.0)?;
            if di.flags & dif::EA_INDIRECT != 0 {
                if !meta_ok(&b, metatype::IN) {
                    return Err(format!("block {} is not an EA indirect block", di.eattr));
                }
                blocks.clear();
                for off in (MetaHeader::SIZE..b.len()).step_by(8) {
                    let p = be64(&b, off);
                    if p == 0 {
                        break;
                    }
                    self.claim(p, idx, W_USED)?;
                    claimed.push(p);
                    blocks.push(p);
                }
            }
            for eb in blocks {
                let b = self.read(eb).map_err(|e| e.0)?;
                if !meta_ok(&b, metatype::EA) {
                    return Err(format!("block {eb} is not an EA block"));
                }
                for ea in EaIter::new(&b) {
                    let ea = ea.map_err(|e| e.to_string())?;
                    for p in ea.ptrs {
                        self.claim(p, idx, W_USED)?;
                        claimed.push(p);
                        let d = self.read(p).map_err(|e| e.0)?;
                        if !meta_ok(&d, metatype::ED) {
                            return Err(format!("block {p} is not an EA data block"));
                        }
                    }
                }
            }
            Ok(())
        })();
        if res.is_err() {
            for c in claimed {
                self.unclaim(c, idx);
            }
        }
        res
    }
}
