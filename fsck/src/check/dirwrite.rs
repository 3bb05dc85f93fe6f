//! Writing directory entries for repairs: a new empty directory dinode
//! (lost+found, rebuilt system directories) and an entry inserted into an
//! existing directory where its hash says (a full exhash leaf chain gets one
//! more chained leaf, as the kernel does when a leaf cannot be split).

use super::*;

impl Fsck {
    /// A stuffed directory holding only '.' and '..'.
    pub(super) fn empty_dir(&self, inum: Inum, parent: Inum, mode: u32) -> Res<(Dinode, Vec<u8>)> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let di = Dinode {
            num: inum,
            mode,
            nlink: 2,
            size: layout::stuffed_max(self.bsize),
            blocks: 1,
            atime: now,
            mtime: now,
            ctime: now,
            goal_meta: inum.addr,
            goal_data: inum.addr,
            payload_format: format::DE,
            entries: 2,
            ..Dinode::default()
        };
        let mut b = vec![0u8; self.bsize as usize];
        di.write(&mut b)?;
        let dot = Entry::new(".", inum, dt::DIR);
        let dotdot = Entry::new("..", parent, dt::DIR);
        dirlayout::pack(&mut b[Dinode::SIZE..], &[&dot, &dotdot]).map_err(Fatal)?;
        Ok((di, b))
    }

    /// Add an entry to a directory where its hash says, if there is room.
    pub(super) fn insert_dirent(
        &mut self,
        idx: u64,
        name: &[u8],
        inum: Inum,
        dt: u16,
    ) -> Res<Option<(u64, usize, usize)>> {
        let addr = self.ino(idx).addr;
        let (di, _) = self.dinode(addr)?;
        let need = dirent_size(name.len());
        let h = hash::dirent_hash(name);
        let mut candidates = Vec::new();
        if di.is_exhash() {
            let table = self.file_data(addr)?;
            let slot = if di.depth == 0 {
                0
            } else {
                (h >> (32 - u32::from(di.depth.min(32)))) as usize
            };
            let mut p = be64(&table, slot * 8);
            while p != 0 && candidates.len() < 100 && self.rg_of(p).is_some() {
                candidates.push((p, Leaf::SIZE));
                let b = self.read(p)?;
                p = Leaf::parse(&b).map(|l| l.next).unwrap_or(0);
            }
        } else {
            candidates.push((addr, Dinode::SIZE));
        }
        for &(blk, start) in &candidates {
            let mut b = self.read(blk)?;
            let mut spot = None;
            for d in DirentIter::new(&b, start) {
                let Ok(d) = d else { break };
                let used = if d.dirent.is_unused() {
                    0
                } else {
                    dirent_size(usize::from(d.dirent.name_len))
                };
                let rec = usize::from(d.dirent.rec_len);
                if rec >= used + need {
                    spot = Some((d.offset, used, rec));
                    break;
                }
            }
            let Some((off, used, rec)) = spot else {
                continue;
            };
            if used > 0 {
                b[off + 20..off + 22].copy_from_slice(&(used as u16).to_be_bytes());
            }
            let noff = off + used;
            Dirent {
                inum,
                hash: h,
                rec_len: (rec - used) as u16,
                name_len: name.len() as u16,
                de_type: dt,
                ..Dirent::default()
            }
            .write(&mut b[noff..])?;
            b[noff + Dirent::SIZE..noff + Dirent::SIZE + name.len()].copy_from_slice(name);
            self.write(blk, b);
            return Ok(Some((blk, noff, start)));
        }
        // Every leaf of the hash chain is full: chain one more leaf, as the
        // kernel does when a leaf cannot be split.
        let Some(&(last, _)) = candidates.last().filter(|_| di.is_exhash()) else {
            return Ok(None);
        };
        let mut lb = self.read(last)?;
        let Ok(mut tail) = Leaf::parse(&lb) else {
            return Ok(None);
        };
        let Some(nb) = self.alloc(idx, true) else {
            self.r.info("no free block for another directory leaf");
            return Ok(None);
        };
        let mut b = vec![0u8; self.bsize as usize];
        Leaf {
            depth: tail.depth,
            entries: 1,
            inode: addr,
            dist: u32::try_from(candidates.len() + 1).unwrap_or(u32::MAX),
            ..Leaf::default()
        }
        .write(&mut b)?;
        Dirent {
            inum,
            hash: h,
            rec_len: (self.bsize as usize - Leaf::SIZE) as u16,
            name_len: name.len() as u16,
            de_type: dt,
            ..Dirent::default()
        }
        .write(&mut b[Leaf::SIZE..])?;
        b[Leaf::SIZE + Dirent::SIZE..Leaf::SIZE + Dirent::SIZE + name.len()].copy_from_slice(name);
        self.write(nb, b);
        tail.next = nb;
        tail.write(&mut lb)?;
        self.write(last, lb);
        // Counted with the directory's other entries from now on.
        if let Some(d) = self.dirs.get_mut(&idx) {
            d.dirent_blocks.push((nb, Leaf::SIZE));
        }
        Ok(Some((nb, Leaf::SIZE, Leaf::SIZE)))
    }
}
