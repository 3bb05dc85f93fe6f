//! Pass 1b, blocks claimed twice: a metadata block (of the right type for
//! where it is claimed) that a file claimed first as data goes to its
//! metadata owner, and the file gets a copy of the data in a new block
//! after the walk, so neither loses anything.

use super::*;

impl Fsck {
    /// A metadata block of the right type that a file claimed as data first:
    /// it goes to `idx`, and the file is given a copy after the walk.
    pub(super) fn try_steal(&mut self, blk: u64, idx: u64, mh_type: u32) -> bool {
        if self.rg_of(blk).is_some()
            && want_get(&self.want, blk) == W_USED
            && self.owner_of(blk).is_none()
            && self.read(blk).is_ok_and(|b| meta_ok(&b, mh_type))
        {
            self.owner.insert(blk, idx);
            self.ino(idx).blocks += 1;
            self.stolen.insert(blk);
            return true;
        }
        false
    }

    /// Give the files whose data blocks were taken back as metadata their
    /// own copies (a journal gets zeroed blocks).
    pub(super) fn resolve_stolen(&mut self) -> Res<()> {
        if self.stolen.is_empty() || !self.r.repairing() {
            return Ok(());
        }
        for addr in self.reached_dinodes() {
            let i = addr;
            let Ok((di, buf)) = self.dinode(addr) else {
                continue;
            };
            if di.is_dir() || di.height == 0 {
                continue;
            }
            let journal = self.journals.iter().any(|(_, c)| c.jinode == addr);
            let t = self.tree_ex(&di, &buf, addr, journal)?;
            for (_, p, loc) in t.data {
                if !self.stolen.contains(&p)
                    || (loc.block != addr && self.owner_of(loc.block) != Some(i))
                {
                    continue;
                }
                match self.alloc(i, false) {
                    Some(nb) => {
                        let content = if journal {
                            vec![0u8; self.bsize as usize]
                        } else {
                            self.read(p)?
                        };
                        self.write(nb, content);
                        let mut b = self.read(loc.block)?;
                        put_be64(&mut b, loc.off, nb);
                        self.write(loc.block, b);
                        self.ino(i).blocks -= 1;
                    }
                    None => {
                        self.zero_ptr(loc)?;
                        self.ino(i).blocks -= 1;
                    }
                }
            }
        }
        Ok(())
    }
}
