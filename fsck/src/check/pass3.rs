//! Pass 3, connectivity: inodes the bitmaps mark as dinodes that no
//! directory reaches are moved to lost+found (made if missing), except
//! empty files without EAs, which are freed as gfs2-utils frees them.

use super::*;

impl Fsck {
    /// Inodes the bitmaps say exist but no directory reaches: moved to
    /// lost+found (created if needed) with -y, so nothing is lost.
    pub(super) fn orphans(&mut self) -> Res<()> {
        let mut found = Vec::new();
        for i in 0..self.rgs.len() {
            if self.rgs[i].bits_lost {
                continue;
            }
            let ri = self.rgs[i].ri;
            let bits = self.rg_bits(i)?;
            for (j, &b) in bits.iter().enumerate() {
                // Both bits of a pair set: a dinode.
                let both = b & (b >> 1) & 0x55;
                if both == 0 {
                    continue;
                }
                for k in 0..4 {
                    let idx = (j * 4 + k) as u64;
                    let blk = ri.data0 + idx;
                    if both & (1 << (2 * k)) != 0
                        && idx < u64::from(ri.data)
                        && want_get(&self.want, blk) == W_FREE
                    {
                        found.push(blk);
                    }
                }
            }
        }
        for blk in found {
            if want_get(&self.want, blk) != W_FREE {
                continue; // reached through an earlier orphan directory
            }
            let Ok(b) = self.read(blk) else { continue };
            let Ok(di) = Dinode::parse(&b) else { continue };
            if di.header.magic != MAGIC
                || di.header.mh_type != metatype::DI
                || di.num.addr != blk
                || !valid_ifmt(di.mode)
                || di.height > gfs2_ondisk::MAX_META_HEIGHT
            {
                continue; // the bitmap check frees it
            }
            if !di.is_dir() && di.size == 0 && di.eattr == 0 {
                // As gfs2-utils: an unlinked empty file (no extended
                // attributes either) holds nothing worth keeping; the
                // bitmap check frees it.
                continue;
            }
            let msg = format!(
                "Inode {blk} (mode {:o}, {} blocks) is not linked from any directory; moving it to lost+found",
                di.mode, di.blocks
            );
            if !self.r.problem(&msg, true) {
                // -n: account for its blocks so they are not reported again.
                let idx = self.add_inode(&di, blk);
                self.ino(idx).links = di.nlink;
                self.ino(idx).parent = VIRTUAL;
                let quiet = std::mem::replace(&mut self.r.verbosity, -1);
                let (found0, left0) = (self.r.found, self.r.left);
                self.inspect(idx)?;
                self.drain_queue()?;
                self.r.verbosity = quiet;
                (self.r.found, self.r.left) = (found0, left0);
                continue;
            }
            let Some(lf) = self.lost_and_found()? else {
                self.r.info("no lost+found: the inode is freed instead");
                continue;
            };
            let name = format!("#{blk}");
            let dt = ifmt_to_dt(di.mode);
            match self.insert_dirent(lf, name.as_bytes(), di.num, dt)? {
                Some(at) => {
                    self.queue.push_back(Ref {
                        inum: di.num,
                        de_type: dt,
                        dir: lf,
                        at,
                    });
                    self.drain_queue()?;
                }
                None => self
                    .r
                    .info("lost+found is full: the inode is freed instead"),
            }
        }
        Ok(())
    }

    /// The lost+found directory under the root, made if missing.
    pub(super) fn lost_and_found(&mut self) -> Res<Option<u64>> {
        let root = self.sb.root_dir.addr;
        if !self.inodes.contains_key(&root) {
            return Ok(None);
        }
        let ridx = root;
        let blocks = self
            .dirs
            .get(&ridx)
            .map(|d| d.dirent_blocks.clone())
            .unwrap_or_default();
        for (blk, start) in blocks {
            let b = self.read(blk)?;
            for d in DirentIter::new(&b, start).flatten() {
                if d.name == b"lost+found" && !d.dirent.is_unused() {
                    let i = d.dirent.inum.addr;
                    if self.inodes.get(&i).is_some_and(|x| x.is_dir) {
                        return Ok(Some(i));
                    }
                }
            }
        }
        // Make one: a stuffed directory in the first free block.
        let mut free = None;
        for k in 0..self.rgs.len() {
            let ri = self.rgs[k].ri;
            let bits = self.rg_bits(k)?;
            free = (0..u64::from(ri.data)).find_map(|i| {
                let blk = ri.data0 + i;
                (bitmap_get(&bits, i as usize) == Some(BlockState::Free)
                    && want_get(&self.want, blk) == W_FREE)
                    .then_some(blk)
            });
            if free.is_some() {
                break;
            }
        }
        let Some(addr) = free else {
            return Ok(None);
        };
        let formal = self.max_formal + 1;
        let inum = Inum {
            formal_ino: formal,
            addr,
        };
        let rinum = Inum {
            formal_ino: self.ino(ridx).formal,
            addr: root,
        };
        let (di, b) = self.empty_dir(inum, rinum, 0o40700)?;
        let dotdot_off = Dinode::SIZE + dirent_size(1);
        let Some(at) = self.insert_dirent(ridx, b"lost+found", inum, dt::DIR)? else {
            return Ok(None);
        };
        self.write(addr, b);
        self.set_bit(addr, BlockState::Dinode);
        self.r.info(&format!("created lost+found at block {addr}"));
        let idx = self.add_inode(&di, addr);
        want_set(&mut self.want, addr, W_DINODE);
        let ino = &mut self.ino(idx);
        ino.parent = root;
        ino.links = 2; // the root's entry and '.'
        ino.blocks = 1;
        let d = self.dirs.entry(idx).or_default();
        d.dirent_blocks.push((addr, Dinode::SIZE));
        d.dotdot = Some((root, addr, dotdot_off));
        d.has_dot = true;
        let _ = at;
        Ok(Some(idx))
    }
}
