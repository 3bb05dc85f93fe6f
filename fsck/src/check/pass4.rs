//! Pass 4, counts: '.' and '..' of every directory (a missing one added,
//! a wrong '..' pointed at the parent that links it), `di_entries`, link
//! counts against the links found, `di_blocks` against the blocks claimed.

use super::*;

impl Fsck {
    /// After the walk: '.' and '..', entry counts, link counts, di_blocks.
    pub(super) fn check_counts(&mut self) -> Res<()> {
        self.r.progress("Checking link counts and entry counts");
        // '..'
        for i in self.tracked() {
            if !self.ino(i).is_dir || self.ino(i).parent == VIRTUAL {
                continue;
            }
            let parent = self.ino(i).parent;
            let addr = self.ino(i).addr;
            match self.dirs.get(&i).and_then(|d| d.dotdot) {
                Some((t, blk, off)) => {
                    let pf = self.inodes.get(&parent).map(|p| p.formal).unwrap_or(0);
                    let tf = be64(&self.read(blk)?, off);
                    if (t != parent || tf != pf)
                        && self.r.problem(
                            &format!("Directory {addr}: '..' is {tf}/{t}, should be {pf}/{parent}"),
                            true,
                        )
                    {
                        let pf = self.inodes.get(&parent).map(|p| p.formal).unwrap_or(0);
                        let mut b = self.read(blk)?;
                        put_be64(&mut b, off, pf);
                        put_be64(&mut b, off + 8, parent);
                        self.write(blk, b);
                    }
                    if let Some(p) = self.inodes.get_mut(&parent) {
                        p.links += 1;
                    }
                }
                None => {
                    if self.r.problem(
                        &format!("Directory {addr}: no '..' entry; adding one"),
                        true,
                    ) {
                        let pf = self.inodes.get(&parent).map(|p| p.formal).unwrap_or(0);
                        let pinum = Inum {
                            formal_ino: pf,
                            addr: parent,
                        };
                        if self.insert_dirent(i, b"..", pinum, dt::DIR)?.is_none() {
                            self.r.info("no room for '..' in the directory");
                        }
                    }
                    if let Some(p) = self.inodes.get_mut(&parent) {
                        p.links += 1;
                    }
                }
            }
            let has_dot = self.dirs.get(&i).is_some_and(|d| d.has_dot);
            if !has_dot
                && self
                    .r
                    .problem(&format!("Directory {addr}: no '.' entry; adding one"), true)
            {
                let me = Inum {
                    formal_ino: self.ino(i).formal,
                    addr,
                };
                if self.insert_dirent(i, b".", me, dt::DIR)?.is_some() {
                    self.ino(i).links += 1;
                }
            }
        }
        // Entry counts.
        for i in self.tracked() {
            if !self.ino(i).is_dir {
                continue;
            }
            let addr = self.ino(i).addr;
            let mut total = 0u32;
            let blocks = self
                .dirs
                .get(&i)
                .map(|d| d.dirent_blocks.clone())
                .unwrap_or_default();
            for (blk, start) in blocks {
                let b = self.read(blk)?;
                let n = DirentIter::new(&b, start)
                    .flatten()
                    .filter(|d| !d.dirent.is_unused())
                    .count() as u32;
                total += n;
                if start == Leaf::SIZE {
                    let mut lf = Leaf::parse(&b)?;
                    if u32::from(lf.entries) != n
                        && self.r.problem(
                            &format!(
                                "Directory {addr}: leaf {blk} says {} entries, found {n}",
                                lf.entries
                            ),
                            true,
                        )
                    {
                        let mut b = b.clone();
                        lf.entries = n as u16;
                        lf.write(&mut b)?;
                        self.write(blk, b);
                    }
                }
            }
            let (mut di, _) = self.dinode(addr)?;
            if di.entries != total
                && self.r.problem(
                    &format!(
                        "Directory {addr}: di_entries is {}, found {total}",
                        di.entries
                    ),
                    true,
                )
            {
                di.entries = total;
                self.put_dinode(addr, &di)?;
            }
        }
        // Link counts and block counts.
        for i in self.tracked() {
            let ino = &self.ino(i);
            let (addr, mut links, nlink, blocks) = (ino.addr, ino.links, ino.nlink, ino.blocks);
            if ino.parent == VIRTUAL {
                links = nlink;
            }
            if links == nlink && blocks == ino.di_blocks {
                continue;
            }
            let Ok((mut di, _)) = self.dinode(addr) else {
                continue;
            };
            let mut dirty = false;
            if links != nlink
                && self.r.problem(
                    &format!("Inode {addr}: link count {nlink}, found {links} links"),
                    true,
                )
            {
                di.nlink = links;
                dirty = true;
            }
            if blocks != di.blocks
                && self.r.problem(
                    &format!(
                        "Inode {addr}: di_blocks {}, found {blocks} blocks",
                        di.blocks
                    ),
                    true,
                )
            {
                di.blocks = blocks;
                dirty = true;
            }
            if dirty {
                self.put_dinode(addr, &di)?;
            }
        }
        Ok(())
    }
}
