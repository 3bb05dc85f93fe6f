//! The system directories rebuilt by scanning: a destroyed master
//! directory, jindex or per_node is written again where it was, with the
//! system files found among the dinodes the bitmaps list (as gfs2-utils
//! finds its system inodes): journals by their log headers, per-node files
//! by size and quota change headers, the others by size and format.
//!
//! A system file that is not found (destroyed with its directory) gets a
//! new dinode block, set aside here and named in the rebuilt directory; the
//! later steps then make it as they make any destroyed system file: a
//! jindex or per_node directory from the files found ([`Fsck::rebuild_jindex`],
//! [`Fsck::rebuild_per_node`], when the journals are checked), the rindex
//! from the rgrps after the walk, the others empty during the walk
//! (`sysfiles.rs`). The block comes from the end of the filesystem, free in
//! the bitmaps of rgrps whose bitmaps are intact.

use super::*;

impl Fsck {
    /// The master directory is destroyed: find its files (system dinodes:
    /// the directory holding journal0 is the jindex, the one holding
    /// statfs_change0 per_node; then inum by its 8 bytes, statfs by its 24
    /// (told from a statfs_change, which has 24 bytes too, by its formal
    /// number: mkfs makes statfs right after inum and before rindex, and
    /// each statfs_change right after an inum_range), rindex and quota by
    /// their formats) and, with
    /// -y, write a new master directory where the old one was, with new
    /// dinodes set aside for the files not found.
    pub(super) fn rebuild_master(&mut self) -> Res<()> {
        let mut found: Vec<(String, Inum)> = Vec::new();
        let mut small = Vec::new();
        let mut pn_files: Vec<u64> = Vec::new();
        for i in 0..self.rgs.len() {
            let ri = self.rgs[i].ri;
            let bits = self.rg_bits(i)?;
            for idx in dinode_indexes(&bits, ri.data) {
                let blk = ri.data0 + idx;
                let Ok((di, _)) = self.dinode(blk) else {
                    continue;
                };
                self.max_formal = self.max_formal.max(di.num.formal_ino);
                if di.flags & dif::SYSTEM == 0 || blk == self.sb.master_dir.addr {
                    continue;
                }
                let has = |n: &str| found.iter().any(|f| f.0 == n);
                if di.is_dir() {
                    let Ok(list) = self.list_dir(blk) else {
                        continue;
                    };
                    if list.iter().any(|e| e.0 == "journal0") && !has("jindex") {
                        found.push(("jindex".into(), di.num));
                    } else if list.iter().any(|e| e.0 == "statfs_change0") && !has("per_node") {
                        pn_files.extend(list.iter().map(|e| e.1.addr));
                        found.push(("per_node".into(), di.num));
                    }
                } else if di.payload_format == format::RI && !has("rindex") {
                    found.push(("rindex".into(), di.num));
                } else if di.payload_format == format::QU && !has("quota") {
                    found.push(("quota".into(), di.num));
                } else if di.height == 0 && matches!(di.size, 8 | 16 | 24) {
                    small.push(di);
                }
            }
        }
        let formal_of = |found: &[(String, Inum)], n: &str| {
            found.iter().find(|f| f.0 == n).map(|f| f.1.formal_ino)
        };
        if let Some(di) = small.iter().find(|d| d.size == 8) {
            found.push(("inum".into(), di.num));
        }
        let ranges: Vec<u64> = small
            .iter()
            .filter(|d| d.size == 16)
            .map(|d| d.num.formal_ino)
            .collect();
        let statfs: Vec<&Dinode> = small
            .iter()
            .filter(|d| d.size == 24 && !pn_files.contains(&d.num.addr))
            .collect();
        let after_inum = formal_of(&found, "inum").map(|f| f + 1);
        let before_rindex = formal_of(&found, "rindex").map(|f| f.saturating_sub(1));
        let pick = statfs
            .iter()
            .find(|d| Some(d.num.formal_ino) == after_inum)
            .or_else(|| {
                statfs
                    .iter()
                    .find(|d| Some(d.num.formal_ino) == before_rindex)
            })
            .or_else(|| {
                statfs
                    .iter()
                    .find(|d| !ranges.contains(&d.num.formal_ino.wrapping_sub(1)))
            });
        if let Some(di) = pick {
            found.push(("statfs".into(), di.num));
        }
        let order = ["jindex", "per_node", "inum", "statfs", "rindex", "quota"];
        let missing: Vec<&str> = order
            .into_iter()
            .filter(|n| !found.iter().any(|f| f.0 == *n))
            .collect();
        let master = self.sb.master_dir;
        let names: Vec<&str> = order.into_iter().filter(|n| !missing.contains(n)).collect();
        let mut msg = format!(
            "The master directory at block {} is destroyed; rebuilding it with the system files found ({})",
            master.addr,
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        );
        if !missing.is_empty() {
            msg += &format!("; not found, made anew: {}", missing.join(", "));
        }
        if self.r.problem(&msg, true) {
            for name in missing {
                let inum = self.set_aside_dinode()?;
                if name == "rindex" {
                    // Written after the walk, from the rgrps as they are then.
                    self.rindex_damaged = Some(inum);
                }
                found.push((name.into(), inum));
            }
            found.sort_by_key(|f| order.iter().position(|o| *o == f.0));
            let (mut di, mut b) = self.empty_dir(master, master, 0o40755)?;
            di.flags = dif::SYSTEM;
            let entries: Vec<Entry> = [
                Entry::new(".", master, dt::DIR),
                Entry::new("..", master, dt::DIR),
            ]
            .into_iter()
            .chain(found.iter().map(|(n, i)| {
                let t = if n == "jindex" || n == "per_node" {
                    dt::DIR
                } else {
                    dt::REG
                };
                Entry::new(n, *i, t)
            }))
            .collect();
            let subdirs = entries.iter().skip(2).filter(|e| e.dt == dt::DIR).count();
            let refs: Vec<&Entry> = entries.iter().collect();
            dirlayout::pack(&mut b[Dinode::SIZE..], &refs).map_err(Fatal)?;
            di.entries = entries.len() as u32;
            di.nlink = 2 + subdirs as u32;
            di.write(&mut b)?;
            self.write(master.addr, b);
            self.set_bit(master.addr, BlockState::Dinode);
        } else {
            found.sort_by_key(|f| order.iter().position(|o| *o == f.0));
            self.master_list = Some(found);
        }
        Ok(())
    }

    /// A new dinode block for a system file that was not found, named in
    /// the directory being rebuilt: free in the bitmaps, marked as a dinode
    /// there, zeroed (so the step that makes the file finds it destroyed,
    /// not whatever was there), with a formal number above every one seen.
    fn set_aside_dinode(&mut self) -> Res<Inum> {
        let addr = self
            .alloc_run(1)
            .ok_or_else(|| Fatal("no free block for a new system dinode".into()))?;
        self.set_bit(addr, BlockState::Dinode);
        self.write(addr, vec![0u8; self.bsize as usize]);
        self.max_formal += 1;
        Ok(Inum {
            formal_ino: self.max_formal,
            addr,
        })
    }

    /// The jindex directory is unreadable: find the journals (system files
    /// whose first block is a log header; in address order, as mkfs makes
    /// them) and, with -y, write a new jindex where the old one was.
    pub(super) fn rebuild_jindex(&mut self, inum: Inum, why: &str) -> Res<Vec<(String, Inum)>> {
        let mut found = Vec::new();
        for i in 0..self.rgs.len() {
            let ri = self.rgs[i].ri;
            let bits = self.rg_bits(i)?;
            for idx in dinode_indexes(&bits, ri.data) {
                let blk = ri.data0 + idx;
                let Ok((di, buf)) = self.dinode(blk) else {
                    continue;
                };
                if di.flags & dif::SYSTEM == 0
                    || di.mode & 0o170000 != 0o100000
                    || di.height == 0
                    || di.size < 8 << 20
                {
                    continue;
                }
                // A journal: some of its first blocks are log headers.
                let t = self.tree_ex(&di, &buf, blk, true).unwrap_or_default();
                let is_log = t.data.iter().take(16).any(|d| {
                    d.1 < self.dev_blocks && self.read(d.1).is_ok_and(|b| meta_ok(&b, metatype::LH))
                });
                if is_log && di.size % u64::from(self.bsize) == 0 {
                    found.push(di.num);
                }
            }
        }
        let max = (layout::stuffed_max(self.bsize) as usize - 2 * dirent_size(2)) / dirent_size(10);
        if found.is_empty() || found.len() > max || self.rg_of(inum.addr).is_none() {
            return Err(Fatal(format!(
                "jindex: {why}; cannot find the journals to rebuild it"
            )));
        }
        let msg = format!(
            "The jindex directory at block {} is damaged ({why}); rebuilding it with the {} journals found",
            inum.addr,
            found.len()
        );
        let list: Vec<(String, Inum)> = found
            .iter()
            .enumerate()
            .map(|(j, i)| (format!("journal{j}"), *i))
            .collect();
        if self.r.problem(&msg, true) {
            let master = Inum {
                formal_ino: self.sb.master_dir.formal_ino,
                addr: self.sb.master_dir.addr,
            };
            let (mut di, mut b) = self.empty_dir(inum, master, 0o40700)?;
            di.flags = dif::SYSTEM;
            di.write(&mut b)?;
            let entries: Vec<Entry> = [
                Entry::new(".", inum, dt::DIR),
                Entry::new("..", master, dt::DIR),
            ]
            .into_iter()
            .chain(list.iter().map(|(n, i)| Entry::new(n, *i, dt::REG)))
            .collect();
            let refs: Vec<&Entry> = entries.iter().collect();
            dirlayout::pack(&mut b[Dinode::SIZE..], &refs).map_err(Fatal)?;
            di.entries = entries.len() as u32;
            di.write(&mut b)?;
            self.write(inum.addr, b);
            self.set_bit(inum.addr, BlockState::Dinode);
        }
        Ok(list)
    }

    /// The per_node directory is unreadable: find its files (system
    /// dinodes nothing else claims: inum_range of 16 bytes, statfs_change
    /// of 24, quota_change starting with a quota change block) and, with
    /// -y, write a new per_node where the old one was. mkfs and jadd make
    /// each journal's three files together, so in address order they fall
    /// into one group per journal (a kind seen again starts the next
    /// group); a file missing from its group (destroyed too) gets a new
    /// dinode, made empty by the walk.
    pub(super) fn rebuild_per_node(
        &mut self,
        inum: Inum,
        why: &str,
        journals: &[u32],
    ) -> Res<Vec<(String, Inum)>> {
        const KINDS: [&str; 3] = ["inum_range", "statfs_change", "quota_change"];
        let mut groups: Vec<[Option<Inum>; 3]> = Vec::new();
        let mut nfound = 0;
        for i in 0..self.rgs.len() {
            let ri = self.rgs[i].ri;
            let bits = self.rg_bits(i)?;
            for idx in dinode_indexes(&bits, ri.data) {
                let blk = ri.data0 + idx;
                if blk == self.statfs_addr {
                    continue;
                }
                let Ok((di, buf)) = self.dinode(blk) else {
                    continue;
                };
                self.max_formal = self.max_formal.max(di.num.formal_ino);
                if di.flags & dif::SYSTEM == 0 || di.mode & 0o170000 != 0o100000 {
                    continue;
                }
                let kind = if di.height == 0 && di.size == 16 {
                    0
                } else if di.height == 0 && di.size == 24 {
                    1
                } else if di.height > 0 && di.size < 64 << 20 {
                    let t = self.tree_ex(&di, &buf, blk, true).unwrap_or_default();
                    let qc = t.data.first().is_some_and(|d| {
                        d.1 < self.dev_blocks
                            && self.read_rc(d.1).is_ok_and(|b| meta_ok(&b, metatype::QC))
                    });
                    if !qc {
                        continue;
                    }
                    2
                } else {
                    continue;
                };
                match groups.last_mut() {
                    Some(g) if g[kind].is_none() => g[kind] = Some(di.num),
                    _ => {
                        let mut g = [None; 3];
                        g[kind] = Some(di.num);
                        groups.push(g);
                    }
                }
                nfound += 1;
            }
        }
        let mut list: Vec<(String, Inum)> = Vec::new();
        let mut missing: Vec<String> = Vec::new();
        for (k, &j) in journals.iter().enumerate() {
            for (kind, name) in KINDS.iter().enumerate() {
                match groups.get(k).and_then(|g| g[kind]) {
                    Some(i) => list.push((format!("{name}{j}"), i)),
                    None => missing.push(format!("{name}{j}")),
                }
            }
        }
        let master = self.sb.master_dir;
        let entries = move |list: &[(String, Inum)]| -> Vec<Entry> {
            [
                Entry::new(".", inum, dt::DIR),
                Entry::new("..", master, dt::DIR),
            ]
            .into_iter()
            .chain(list.iter().map(|(n, i)| Entry::new(n, *i, dt::REG)))
            .collect()
        };
        // The full directory must fit (stuffed, as mkfs makes it).
        let all: Vec<(String, Inum)> = list
            .iter()
            .cloned()
            .chain(missing.iter().map(|n| (n.clone(), Inum::default())))
            .collect();
        if journals.is_empty()
            || !dirlayout::fits_stuffed(self.bsize, &entries(&all))
            || self.rg_of(inum.addr).is_none()
        {
            return Err(Fatal(format!(
                "per_node: {why}; cannot find its files to rebuild it"
            )));
        }
        let mut msg = format!(
            "The per_node directory at block {} is damaged ({why}); rebuilding it with the {nfound} files found",
            inum.addr,
        );
        if !missing.is_empty() {
            msg += &format!("; not found, made anew: {}", missing.join(", "));
        }
        if self.r.problem(&msg, true) {
            for name in missing {
                let i = self.set_aside_dinode()?;
                list.push((name, i));
            }
            let (mut di, mut b) = self.empty_dir(inum, self.sb.master_dir, 0o40700)?;
            di.flags = dif::SYSTEM;
            let entries = entries(&list);
            let refs: Vec<&Entry> = entries.iter().collect();
            dirlayout::pack(&mut b[Dinode::SIZE..], &refs).map_err(Fatal)?;
            di.entries = entries.len() as u32;
            di.write(&mut b)?;
            self.write(inum.addr, b);
            self.set_bit(inum.addr, BlockState::Dinode);
        }
        Ok(list)
    }
}
