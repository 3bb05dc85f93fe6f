//! Pass 1, the inode walk: every inode reachable from the master and root
//! directories is inspected: dinode header and address, formal number,
//! mode, height against size, every pointer of its metadata tree (out of
//! range or already claimed ones cleared), EA blocks (`pass1c.rs`), `di_blocks`,
//! allocation goals, and the system files' flags and sizes. Only
//! directories, system files and inodes whose counts are not settled keep
//! a record; a plain file is dropped once checked, to keep memory small.

use super::*;

impl Fsck {
    /// Walk every inode reachable from the master and root directories.
    pub(super) fn walk(&mut self) -> Res<()> {
        self.r.progress("Checking inodes and directories");
        let master = self.sb.master_dir;
        let root = self.sb.root_dir;
        for (inum, what) in [(master, "master"), (root, "root")] {
            if self.rg_of(inum.addr).is_none() {
                self.r.problem(
                    &format!(
                        "Superblock: {what} directory address {} out of range",
                        inum.addr
                    ),
                    false,
                );
                continue;
            }
            match self.dinode(inum.addr) {
                Ok((di, _)) if di.is_dir() => {
                    let idx = self.add_inode(&di, inum.addr);
                    self.ino(idx).links = 0;
                    self.inspect(idx)?;
                }
                _ => {
                    // A destroyed root is made again, empty: what it held
                    // is found as orphans and goes to lost+found.
                    let can = what == "root" && want_get(&self.want, inum.addr) == W_FREE;
                    let msg = format!(
                        "The {what} directory at block {} is not a valid directory{}",
                        inum.addr,
                        if can { "; making a new, empty one" } else { "" }
                    );
                    if self.r.problem(&msg, can) {
                        let (di, b) = self.empty_dir(inum, inum, 0o40755)?;
                        self.write(inum.addr, b);
                        let idx = self.add_inode(&di, inum.addr);
                        self.ino(idx).links = 0;
                        self.inspect(idx)?;
                    }
                }
            }
            self.drain_queue()?;
        }
        Ok(())
    }

    pub(super) fn add_inode(&mut self, di: &Dinode, addr: u64) -> u64 {
        self.max_formal = self.max_formal.max(di.num.formal_ino);
        self.inodes.insert(
            addr,
            Ino {
                addr,
                formal: di.num.formal_ino,
                mode: di.mode,
                nlink: di.nlink,
                links: 1,
                blocks: 0,
                is_dir: di.is_dir(),
                parent: addr,
                quota_change: false,
                di_blocks: di.blocks,
            },
        );
        addr
    }

    /// The record of inode `addr`; one that was dropped after its check
    /// (one link, block count right) is read back as it was then.
    pub(super) fn ino(&mut self, addr: u64) -> &mut Ino {
        if !self.inodes.contains_key(&addr) {
            let di = self.dinode(addr).map(|d| d.0).unwrap_or_default();
            let ino = Ino {
                addr,
                formal: di.num.formal_ino,
                mode: di.mode,
                nlink: di.nlink,
                links: 1,
                blocks: di.blocks,
                is_dir: di.is_dir(),
                parent: 0,
                quota_change: false,
                di_blocks: di.blocks,
            };
            self.inodes.insert(addr, ino);
        }
        self.inodes.entry(addr).or_insert(Ino {
            addr,
            formal: 0,
            mode: 0,
            nlink: 0,
            links: 0,
            blocks: 0,
            is_dir: false,
            parent: 0,
            quota_change: false,
            di_blocks: 0,
        })
    }

    /// Whether inode `addr` was reached already.
    pub(super) fn visited(&self, addr: u64) -> bool {
        self.inodes.contains_key(&addr) || want_get(&self.want, addr) == W_DINODE
    }

    /// Drop the record of a checked plain file: nothing is left to settle
    /// unless another link to it turns up.
    pub(super) fn retire(&mut self, addr: u64) {
        let plain = self.inodes.get(&addr).is_some_and(|i| {
            !i.is_dir
                && !i.quota_change
                && i.nlink == 1
                && i.links == 1
                && i.blocks == i.di_blocks
                && i.parent != VIRTUAL
                && i.parent != self.sb.master_dir.addr
                && i.parent != self.jindex
                && i.parent != self.per_node
        });
        if plain && want_get(&self.want, addr) == W_DINODE {
            self.inodes.remove(&addr);
        }
    }

    /// Follow the queued directory entries (depth first).
    pub(super) fn drain_queue(&mut self) -> Res<()> {
        while let Some(rf) = self.queue.pop_back() {
            // How many of the next entries' dinodes follow this one's.
            let mut n = 1u64;
            for next in self.queue.iter().rev().take(RUN_MAX as usize - 1) {
                if next.inum.addr != rf.inum.addr + n {
                    break;
                }
                n += 1;
            }
            self.run_hint.set((rf.inum.addr, n));
            self.follow(rf)?;
        }
        self.run_hint.set((0, 0));
        Ok(())
    }

    /// Check one inode: its metadata tree, EA blocks, and for a directory
    /// its entries.
    pub(super) fn inspect(&mut self, idx: u64) -> Res<()> {
        let addr = self.ino(idx).addr;
        if let Err(e) = self.claim(addr, idx, W_DINODE) {
            self.r.problem(&format!("Inode {addr}: {e}"), false);
            return Ok(());
        }
        let (mut di, buf) = self.dinode(addr)?;
        let label = format!("Inode {addr}");
        let mut dirty = false;
        // Height and size.
        if di.height > gfs2_ondisk::MAX_META_HEIGHT {
            self.r.problem(
                &format!("{label}: height {} is too large", di.height),
                false,
            );
            return Ok(());
        }
        let maxsz = layout::max_size_for_height(self.bsize, di.height).unwrap_or(u64::MAX);
        if di.size > maxsz
            && self.r.problem(
                &format!(
                    "{label}: size {} is too large for height {}",
                    di.size, di.height
                ),
                true,
            )
        {
            di.size = maxsz;
            dirty = true;
        }
        // Metadata tree. A journal's indirect blocks with a damaged header
        // but sane pointers are kept (and their header rewritten).
        let is_dir = di.is_dir();
        let journal = self.ino(idx).parent == self.jindex && !is_dir;
        // Journals and quota change files keep indirect blocks whose header
        // is damaged but whose pointers are sane, and get holes filled.
        let keep_map = journal || self.ino(idx).quota_change;
        let t = self.tree_ex(&di, &buf, addr, keep_map)?;
        for (p, loc) in &t.meta {
            // Pointers inside indirect blocks that were dropped.
            if loc.block != addr && self.owner_of(loc.block) != Some(idx) {
                continue;
            }
            if let Err(e) = self.claim(*p, idx, W_USED) {
                if self.try_steal(*p, idx, metatype::IN) {
                    self.r.problem(
                        &format!("{label}: indirect block {p} is also another file's data; that file gets a copy"),
                        true,
                    );
                } else if self
                    .r
                    .problem(&format!("{label}: indirect pointer: {e}"), true)
                {
                    self.zero_ptr(*loc)?;
                }
            } else if keep_map
                && self
                    .read(*p)
                    .is_ok_and(|b| !meta_ok(&b, metatype::IN) && self.indirect_ok(&b, true))
            {
                if self.r.problem(
                    &format!("{label}: system file indirect block {p} has a damaged header"),
                    true,
                ) {
                    let mut b = self.read(*p)?;
                    MetaHeader::new(metatype::IN, format::IN).write(&mut b)?;
                    self.write(*p, b);
                }
            } else if !self.read(*p).is_ok_and(|b| meta_ok(&b, metatype::IN)) {
                if self.r.problem(
                    &format!("{label}: block {p} is not an indirect block"),
                    true,
                ) {
                    self.zero_ptr(*loc)?;
                }
                self.unclaim(*p, idx);
            }
        }
        let mut data = Vec::with_capacity(t.data.len());
        for (l, p, loc) in t.data {
            // Skip data under indirect blocks that were dropped.
            if loc.block != addr && self.owner_of(loc.block) != Some(idx) {
                continue;
            }
            match self.claim_ex(p, idx, W_USED, is_dir) {
                Ok(()) => data.push((l, p)),
                Err(e) => {
                    let dup = self.rg_of(p).is_some();
                    if dup && !is_dir {
                        if self
                            .r
                            .problem(&format!("{label}: data {e}; copying it"), true)
                        {
                            if let Some(nb) = self.alloc(idx, false) {
                                let b = self.read(p)?;
                                self.write(nb, b);
                                let mut pb = self.read(loc.block)?;
                                put_be64(&mut pb, loc.off, nb);
                                self.write(loc.block, pb);
                                data.push((l, nb));
                            } else {
                                self.zero_ptr(loc)?;
                            }
                        }
                    } else if self.ino(idx).parent == self.jindex && !is_dir {
                        // A journal must not have holes: give it a new block.
                        if self.r.problem(
                            &format!("{label}: journal block pointer: {e}; replacing the block"),
                            true,
                        ) {
                            if let Some(nb) = self.alloc(idx, false) {
                                self.write(nb, vec![0u8; self.bsize as usize]);
                                let mut pb = self.read(loc.block)?;
                                put_be64(&mut pb, loc.off, nb);
                                self.write(loc.block, pb);
                                data.push((l, nb));
                            } else {
                                self.zero_ptr(loc)?;
                            }
                        }
                    } else if self.r.problem(&format!("{label}: data pointer: {e}"), true) {
                        self.zero_ptr(loc)?;
                    }
                }
            }
        }
        // Journals and quota change files are exactly as long as their map.
        if (journal || self.ino(idx).quota_change) && !data.is_empty() {
            // A complete map up to the size with pointers past it: the
            // pointers are wrong, not the size.
            let bs = u64::from(self.bsize);
            let nsize = di.size / bs;
            let inside = data.iter().filter(|d| d.0 < nsize).count() as u64;
            if di.size % bs == 0 && nsize > 0 && inside == nsize && data.len() as u64 > inside {
                if self.r.problem(
                    &format!("{label}: block pointers past the end of the system file"),
                    true,
                ) {
                    let cur = self.read(addr)?;
                    let t = self.tree_ex(&di, &cur, addr, journal)?;
                    for (l, p, loc) in t.data {
                        if l >= nsize && data.iter().any(|d| d.0 == l && d.1 == p) {
                            self.zero_ptr(loc)?;
                            want_set(&mut self.want, p, W_FREE);
                            self.ino(idx).blocks -= 1;
                        }
                    }
                }
                data.retain(|d| d.0 < nsize);
            }
            let blocks = data.iter().map(|d| d.0).max().unwrap_or(0) + 1;
            let want = blocks.saturating_mul(u64::from(self.bsize));
            if di.size != want
                && self.r.problem(
                    &format!(
                        "{label}: system file size {} does not match its {blocks} mapped blocks",
                        di.size
                    ),
                    true,
                )
            {
                di.size = want;
                dirty = true;
            }
        }
        if keep_map && self.r.repairing() {
            self.fill_journal_holes(idx, &di, &mut data)?;
        }
        if self.ino(idx).quota_change {
            for &(_, p) in &data {
                let b = self.read(p)?;
                if !meta_ok(&b, metatype::QC)
                    && self.r.problem(
                        &format!("{label}: quota change block {p} has a bad header"),
                        true,
                    )
                {
                    let mut b = b;
                    MetaHeader::new(metatype::QC, format::QC).write(&mut b)?;
                    self.write(p, b);
                }
            }
        }
        // Allocation goals.
        for (what, goal) in [("goal_meta", di.goal_meta), ("goal_data", di.goal_data)] {
            if (goal >= self.fs_blocks || goal == 0)
                && self
                    .r
                    .problem(&format!("{label}: bad allocation goal {what} {goal}"), true)
            {
                if what == "goal_meta" {
                    di.goal_meta = addr;
                } else {
                    di.goal_data = addr;
                }
                dirty = true;
            }
        }
        // Extended attributes.
        if di.eattr != 0 {
            if let Err(e) = self.check_ea(idx, &di) {
                if self.r.problem(
                    &format!("{label}: extended attributes: {e}; removing them"),
                    true,
                ) {
                    di.eattr = 0;
                    di.flags &= !dif::EA_INDIRECT;
                    dirty = true;
                }
            }
        }
        if dirty {
            self.put_dinode(addr, &di)?;
        }
        if is_dir {
            // Follow the entries in block order (sequential reads; the
            // queue is popped from the back).
            let from = self.queue.len();
            self.check_dir(idx, &di, &data)?;
            let tail = self.queue.make_contiguous();
            if let Some(new) = tail.get_mut(from..) {
                new.sort_unstable_by_key(|r| std::cmp::Reverse(r.inum.addr));
            }
        }
        Ok(())
    }

    /// The inodes with a record, in address order.
    pub(super) fn tracked(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.inodes.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Every dinode the walk reached, in address order.
    pub(super) fn reached_dinodes(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, b) in self.want.iter().enumerate() {
            if *b == 0 {
                continue;
            }
            for k in 0..4 {
                if (b >> (2 * k)) & 3 == W_DINODE {
                    out.push((i * 4 + k) as u64);
                }
            }
        }
        out
    }
}
