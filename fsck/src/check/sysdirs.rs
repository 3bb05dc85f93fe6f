//! The system directories rebuilt by scanning: a destroyed master
//! directory, jindex or per_node is written again where it was, with the
//! system files found among the dinodes the bitmaps list (as gfs2-utils
//! finds its system inodes): journals by their log headers, per-node files
//! by size and quota change headers, the others by size and format.

use super::*;

impl Fsck {
    /// The master directory is destroyed: find its files (system dinodes:
    /// the directory holding journal0 is the jindex, the one holding
    /// statfs_change0 per_node; then inum by its 8 bytes, statfs by its 24
    /// (not a per_node file), rindex and quota by their formats) and, with
    /// -y, write a new master directory where the old one was.
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
                } else if di.height == 0 && (di.size == 8 || di.size == 24) {
                    small.push(di);
                }
            }
        }
        for di in small {
            let name = if di.size == 8 { "inum" } else { "statfs" };
            if !pn_files.contains(&di.num.addr) && !found.iter().any(|f| f.0 == name) {
                found.push((name.into(), di.num));
            }
        }
        for need in ["jindex", "rindex"] {
            if !found.iter().any(|f| f.0 == need) {
                return Err(Fatal(format!(
                    "the master directory is destroyed and no {need} was found to rebuild it"
                )));
            }
        }
        let order = ["jindex", "per_node", "inum", "statfs", "rindex", "quota"];
        found.sort_by_key(|f| order.iter().position(|o| *o == f.0));
        let master = self.sb.master_dir;
        let names: Vec<&str> = found.iter().map(|f| f.0.as_str()).collect();
        let msg = format!(
            "The master directory at block {} is destroyed; rebuilding it with the system files found ({})",
            master.addr,
            names.join(", ")
        );
        if self.r.problem(&msg, true) {
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
            self.master_list = Some(found);
        }
        Ok(())
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
    /// of 24, quota_change starting with a quota change block; per kind in
    /// address order, as mkfs makes them) and, with -y, write a new
    /// per_node where the old one was.
    pub(super) fn rebuild_per_node(
        &mut self,
        inum: Inum,
        why: &str,
        journals: &[u32],
    ) -> Res<Vec<(String, Inum)>> {
        let mut ranges = Vec::new();
        let mut changes = Vec::new();
        let mut quotas = Vec::new();
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
                if di.flags & dif::SYSTEM == 0 || di.mode & 0o170000 != 0o100000 {
                    continue;
                }
                if di.height == 0 && di.size == 16 {
                    ranges.push(di.num);
                } else if di.height == 0 && di.size == 24 {
                    changes.push(di.num);
                } else if di.height > 0 && di.size < 64 << 20 {
                    let t = self.tree_ex(&di, &buf, blk, true).unwrap_or_default();
                    let qc = t.data.first().is_some_and(|d| {
                        d.1 < self.dev_blocks
                            && self.read_rc(d.1).is_ok_and(|b| meta_ok(&b, metatype::QC))
                    });
                    if qc {
                        quotas.push(di.num);
                    }
                }
            }
        }
        let mut list: Vec<(String, Inum)> = Vec::new();
        for (k, &j) in journals.iter().enumerate() {
            for (name, found) in [
                ("inum_range", &ranges),
                ("statfs_change", &changes),
                ("quota_change", &quotas),
            ] {
                if let Some(i) = found.get(k) {
                    list.push((format!("{name}{j}"), *i));
                }
            }
        }
        let entries: Vec<Entry> = [
            Entry::new(".", inum, dt::DIR),
            Entry::new("..", self.sb.master_dir, dt::DIR),
        ]
        .into_iter()
        .chain(list.iter().map(|(n, i)| Entry::new(n, *i, dt::REG)))
        .collect();
        if list.is_empty()
            || !dirlayout::fits_stuffed(self.bsize, &entries)
            || self.rg_of(inum.addr).is_none()
        {
            return Err(Fatal(format!(
                "per_node: {why}; cannot find its files to rebuild it"
            )));
        }
        let msg = format!(
            "The per_node directory at block {} is damaged ({why}); rebuilding it with the {} files found",
            inum.addr,
            list.len()
        );
        if self.r.problem(&msg, true) {
            let (mut di, mut b) = self.empty_dir(inum, self.sb.master_dir, 0o40700)?;
            di.flags = dif::SYSTEM;
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
