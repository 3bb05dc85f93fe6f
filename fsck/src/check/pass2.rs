//! Pass 2, directory entries: each entry is followed to its inode (hash,
//! record and name lengths, the type against the inode's mode, formal
//! number, '.' and '..', a target that is not a dinode removed) and each
//! directory's blocks are checked (stuffed or exhash: table size against
//! depth, leaves and their chains, `lf_entries`, `di_entries`). A broken
//! hash table goes to [`super::exhash`].

use super::*;

/// "Directory D: entry NAME -> ADDR" for messages, the name read from the
/// directory block only when it is shown.
pub(super) struct Label {
    pub(super) dir: u64,
    pub(super) addr: u64,
    /// The directory block if it was changed (only in memory so far).
    pub(super) block: Option<Blk>,
    /// Else the device, read when the label is shown.
    pub(super) file: std::sync::Arc<dyn BlockDevice>,
    pub(super) bsize: u64,
    pub(super) at: (u64, usize),
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (blk, off) = self.at;
        let b = match &self.block {
            Some(b) => b.to_vec(),
            None => {
                let mut b = vec![0u8; self.bsize as usize];
                if self.file.read_at(&mut b, blk * self.bsize).is_err() {
                    b.clear();
                }
                b
            }
        };
        let name = b
            .get(off..)
            .and_then(|r| Dirent::parse(r).ok())
            .and_then(|de| {
                let from = off + Dirent::SIZE;
                b.get(from..from + usize::from(de.name_len))
            })
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default();
        write!(f, "Directory {}: entry {name:?} -> {}", self.dir, self.addr)
    }
}

impl Fsck {
    /// The name in the directory entry at `at`.
    pub(super) fn ref_name(&self, at: (u64, usize, usize)) -> String {
        let Ok(b) = self.read_rc(at.0) else {
            return String::new();
        };
        let Some(de) = b.get(at.1..).and_then(|r| Dirent::parse(r).ok()) else {
            return String::new();
        };
        let from = at.1 + Dirent::SIZE;
        b.get(from..from + usize::from(de.name_len))
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_default()
    }

    /// Follow a directory entry to its inode.
    pub(super) fn follow(&mut self, rf: Ref) -> Res<()> {
        let addr = rf.inum.addr;
        let parent_addr = rf.dir;
        // The name is read back from the entry (the queue does not keep it).
        // Names matter for system directories; elsewhere the label reads
        // it only when a problem is reported.
        let system_dir = parent_addr == self.sb.master_dir.addr
            || parent_addr == self.jindex
            || parent_addr == self.per_node;
        let name = if system_dir {
            self.ref_name(rf.at)
        } else {
            String::new()
        };
        let label = Label {
            dir: parent_addr,
            addr,
            block: self
                .cache
                .get(&rf.at.0)
                .map(|b| std::rc::Rc::new(b.clone())),
            file: self.names.clone(),
            bsize: u64::from(self.bsize),
            at: (rf.at.0, rf.at.1),
        };
        if self.visited(addr) {
            let idx = addr;
            let (formal, is_dir, mode) = {
                let ino = &self.ino(idx);
                (ino.formal, ino.is_dir, ino.mode)
            };
            if formal != rf.inum.formal_ino
                && self.r.problem(
                    &format!(
                        "{label}: formal inode number {} should be {formal}",
                        rf.inum.formal_ino
                    ),
                    true,
                )
            {
                self.fix_dirent_inum(rf.at, formal)?;
            }
            if is_dir {
                if self
                    .r
                    .problem(&format!("{label}: a second link to a directory"), true)
                {
                    self.del_dirent(rf.at)?;
                }
                return Ok(());
            }
            let dt = ifmt_to_dt(mode);
            self.ino(idx).links += 1;
            self.check_de_type(&rf, dt, &label)?;
            return Ok(());
        }
        let mut fix_mode = None;
        let bad = if self.rg_of(addr).is_none() {
            Some("points outside the filesystem's data".to_string())
        } else if want_get(&self.want, addr) != W_FREE {
            Some("points at a block used by another inode".into())
        } else {
            match self.read_rc(addr).map(|b| Dinode::parse(&b)) {
                Ok(Ok(d))
                    if d.header.magic == MAGIC
                        && d.header.mh_type == metatype::DI
                        && d.num.addr == addr =>
                {
                    if d.height > gfs2_ondisk::MAX_META_HEIGHT {
                        Some(format!(
                            "points at an inode with invalid height {}",
                            d.height
                        ))
                    } else if valid_ifmt(d.mode) {
                        None
                    } else if valid_ifmt(dt_to_ifmt(rf.de_type)) {
                        fix_mode = Some((d.mode & 0o7777) | dt_to_ifmt(rf.de_type));
                        None
                    } else {
                        Some(format!("points at an inode with invalid mode {:o}", d.mode))
                    }
                }
                _ => Some("points at a block that is not an inode".into()),
            }
        };
        let system = parent_addr == self.sb.master_dir.addr
            || parent_addr == self.jindex
            || parent_addr == self.per_node;
        if bad.is_some()
            && parent_addr == self.sb.master_dir.addr
            && self.rindex_damaged.is_some_and(|i| i.addr == addr)
        {
            return Ok(()); // reported already; rebuilt after the walk
        }
        if let Some(why) = bad {
            if system {
                // Removing a system file's entry only makes the next run
                // fail: rebuild it (empty, as gfs2-utils does) where it was.
                let kind = self.system_kind(parent_addr, &name);
                let free = self.rg_of(addr).is_some() && want_get(&self.want, addr) == W_FREE;
                let Some(kind) = kind.filter(|_| free) else {
                    self.r.problem(&format!("System {label}: {why}"), false);
                    return Ok(());
                };
                if !self
                    .r
                    .problem(&format!("System {label}: {why}; rebuilding it"), true)
                {
                    return Ok(());
                }
                let inum = Inum {
                    formal_ino: rf.inum.formal_ino,
                    addr,
                };
                if let Err(e) = self.build_system_file(inum, kind) {
                    self.r.problem(
                        &format!("System {label}: cannot rebuild it: {}", e.0),
                        false,
                    );
                    return Ok(());
                }
            } else {
                if self
                    .r
                    .problem(&format!("{label}: {why}; removing the entry"), true)
                {
                    self.del_dirent(rf.at)?;
                }
                return Ok(());
            }
        }
        if let Some(m) = fix_mode {
            if self.r.problem(
                &format!("{label}: the inode's mode has no valid file type; taking it from the entry ({m:o})"),
                true,
            ) {
                let mut b = self.read(addr)?;
                b[40..44].copy_from_slice(&m.to_be_bytes());
                self.write(addr, b);
            }
        }
        let (di, _) = self.dinode(addr)?;
        if di.num.formal_ino != rf.inum.formal_ino
            && self.r.problem(
                &format!(
                    "{label}: formal inode number {} should be {}",
                    rf.inum.formal_ino, di.num.formal_ino
                ),
                true,
            )
        {
            self.fix_dirent_inum(rf.at, di.num.formal_ino)?;
        }
        let idx = self.add_inode(&di, addr);
        self.ino(idx).parent = parent_addr;
        self.ino(idx).quota_change =
            parent_addr == self.per_node && name.starts_with("quota_change");
        if parent_addr == self.sb.master_dir.addr
            || parent_addr == self.jindex
            || parent_addr == self.per_node
        {
            self.check_system(addr, &name)?;
        }
        self.check_de_type(&rf, ifmt_to_dt(di.mode), &label)?;
        self.inspect(idx)?;
        self.retire(idx);
        Ok(())
    }

    pub(super) fn check_de_type(&mut self, rf: &Ref, dt: u16, label: &Label) -> Res<()> {
        if rf.de_type != dt
            && self.r.problem(
                &format!(
                    "{label}: entry type {} does not match the inode's type {dt}",
                    rf.de_type
                ),
                true,
            )
        {
            let mut b = self.read(rf.at.0)?;
            let o = rf.at.1 + 24;
            if let Some(s) = b.get_mut(o..o + 2) {
                s.copy_from_slice(&dt.to_be_bytes());
            }
            self.write(rf.at.0, b);
        }
        Ok(())
    }

    pub(super) fn fix_dirent_inum(&mut self, at: (u64, usize, usize), formal: u64) -> Res<()> {
        let mut b = self.read(at.0)?;
        put_be64(&mut b, at.1, formal);
        self.write(at.0, b);
        Ok(())
    }

    /// Remove the record at `at` (as the kernel's dirent_del does).
    pub(super) fn del_dirent(&mut self, at: (u64, usize, usize)) -> Res<()> {
        let (blk, off, start) = at;
        let mut b = self.read(blk)?;
        let mut prev = None;
        for d in DirentIter::new(&b, start) {
            let Ok(d) = d else { break };
            if d.offset == off {
                break;
            }
            prev = Some((d.offset, d.dirent.rec_len));
        }
        let cur_len = u16::from_be_bytes([b[off + 20], b[off + 21]]);
        match prev {
            Some((p, plen)) if off != start => {
                let n = plen.saturating_add(cur_len);
                b[p + 20..p + 22].copy_from_slice(&n.to_be_bytes());
            }
            _ => {
                b[off..off + 16].fill(0);
            }
        }
        self.write(blk, b);
        Ok(())
    }

    pub(super) fn check_dir(&mut self, idx: u64, di: &Dinode, data: &[(u64, u64)]) -> Res<()> {
        let addr = self.ino(idx).addr;
        let label = format!("Directory {addr}");
        if !di.is_exhash() {
            if di.height != 0 {
                self.r.problem(
                    &format!("{label}: linear directory with a metadata tree"),
                    false,
                );
                return Ok(());
            }
            self.dirs
                .entry(idx)
                .or_default()
                .dirent_blocks
                .push((addr, Dinode::SIZE));
            self.scan_dirents(idx, addr, Dinode::SIZE, None)?;
            return Ok(());
        }
        // Hash table.
        let depth = di.depth;
        let want_size = layout::dir_hash_ptrs(depth).map(|n| n * 8);
        let capacity = if di.height == 0 {
            layout::stuffed_max(self.bsize)
        } else {
            data.len() as u64 * (u64::from(self.bsize) - MetaHeader::SIZE as u64)
        };
        let fits = depth <= gfs2_ondisk::DIR_MAX_DEPTH && want_size.is_some_and(|w| w <= capacity);
        let mut di = *di;
        if want_size != Some(di.size) || !fits {
            let msg = format!(
                "{label}: hash table size {} does not match depth {depth}",
                di.size
            );
            if !fits {
                self.r.problem(&msg, false);
                return Ok(());
            }
            if self.r.problem(&msg, true) {
                di.size = want_size.unwrap_or(0);
                self.put_dinode(addr, &di)?;
            }
        }
        let di = &di;
        let nptrs = 1usize << depth;
        let mut table = vec![0u64; nptrs];
        if di.height == 0 {
            let b = self.read(addr)?;
            if Dinode::SIZE + nptrs * 8 > b.len() {
                self.r
                    .problem(&format!("{label}: stuffed hash table too large"), false);
                return Ok(());
            }
            for (i, t) in table.iter_mut().enumerate() {
                *t = be64(&b, Dinode::SIZE + 8 * i);
            }
        } else {
            let per = (self.bsize as usize - MetaHeader::SIZE) / 8 * 8;
            let per_ptrs = (self.bsize as usize - MetaHeader::SIZE) / 8;
            let _ = per;
            for &(l, p) in data {
                let b = self.read(p)?;
                if !meta_ok(&b, metatype::JD) {
                    continue;
                }
                // Bytes of the table in logical block l.
                let byte0 = l as usize * (self.bsize as usize - MetaHeader::SIZE);
                for k in 0..per_ptrs {
                    let tb = byte0 + 8 * k;
                    if tb / 8 >= nptrs {
                        continue;
                    }
                    table[tb / 8] = be64(&b, MetaHeader::SIZE + 8 * k);
                }
            }
        }
        // Validate the table: each leaf covers an aligned run.
        let mut leaves: Vec<(u64, u16)> = Vec::new(); // (blk, lf_depth) per distinct leaf
        let mut ok = true;
        let mut i = 0usize;
        let mut leaf_info: HashMap<u64, Option<Leaf>> = HashMap::default();
        while i < nptrs {
            let p = table[i];
            let lf = *leaf_info.entry(p).or_insert_with(|| {
                if p == 0 || self.rg_of(p).is_none() {
                    return None;
                }
                self.read(p).ok().and_then(|b| {
                    if meta_ok(&b, metatype::LF) {
                        Leaf::parse(&b).ok()
                    } else {
                        None
                    }
                })
            });
            let run = lf
                .filter(|l| l.depth <= depth)
                .map(|l| 1usize << (depth - l.depth));
            let good = match run {
                Some(n) => {
                    i & (n - 1) == 0 && i + n <= nptrs && table[i..i + n].iter().all(|&x| x == p)
                }
                None => false,
            };
            if !good {
                ok = false;
                break;
            }
            if let (Some(n), Some(l)) = (run, lf) {
                leaves.push((p, l.depth));
                i += n;
            }
        }
        if !ok {
            if self.r.problem(
                &format!("{label}: hash table is inconsistent; rebuilding it"),
                true,
            ) {
                leaves = self.rebuild_table(idx, di, &mut table, &leaf_info)?;
            } else {
                // Check whatever leaves are valid.
                let mut seen = std::collections::HashSet::new();
                leaves = table
                    .iter()
                    .filter(|p| seen.insert(**p))
                    .filter_map(|p| leaf_info.get(p).copied().flatten().map(|l| (*p, l.depth)))
                    .collect();
            }
        }
        // Walk leaves and their chains.
        let mut slot = 0u64;
        let mut start_of: HashMap<u64, u64> = HashMap::default();
        for (i, p) in table.iter().enumerate() {
            start_of.entry(*p).or_insert(i as u64);
        }
        let _ = &mut slot;
        for (p, lfd) in leaves {
            let start = start_of.get(&p).copied().unwrap_or(0);
            let len = 1u64 << (depth - lfd.min(depth));
            let mut cur = p;
            let mut hops = 0;
            let mut prev: Option<u64> = None;
            while cur != 0 {
                hops += 1;
                if let Err(e) = self.claim(cur, idx, W_USED) {
                    if self.try_steal(cur, idx, metatype::LF) {
                        self.r.problem(
                            &format!("{label}: leaf {cur} is also another file's data; that file gets a copy"),
                            true,
                        );
                    } else {
                        // A chain link can be cut; a table slot cannot.
                        if self
                            .r
                            .problem(&format!("{label}: leaf {e}"), prev.is_some())
                        {
                            if let Some(pb) = prev {
                                let mut b = self.read(pb)?;
                                put_be64(&mut b, 32, 0);
                                self.write(pb, b);
                            }
                        }
                        break;
                    }
                }
                let b = self.read(cur)?;
                if !meta_ok(&b, metatype::LF) || hops > 1000 {
                    self.unclaim(cur, idx);
                    if self.r.problem(
                        &format!("{label}: leaf chain block {cur} is not a leaf"),
                        true,
                    ) {
                        if let Some(pb) = prev {
                            let mut b = self.read(pb)?;
                            put_be64(&mut b, 32, 0);
                            self.write(pb, b);
                        }
                    }
                    break;
                }
                self.dirs
                    .entry(idx)
                    .or_default()
                    .dirent_blocks
                    .push((cur, Leaf::SIZE));
                self.scan_dirents(idx, cur, Leaf::SIZE, Some((start, len, depth)))?;
                prev = Some(cur);
                cur = Leaf::parse(&b).map(|l| l.next).unwrap_or(0);
            }
        }
        Ok(())
    }

    /// Check the entries of one block of a directory and queue their
    /// targets. `range`: for a leaf, the hash-table slots it covers.
    pub(super) fn scan_dirents(
        &mut self,
        idx: u64,
        blk: u64,
        start: usize,
        range: Option<(u64, u64, u16)>,
    ) -> Res<()> {
        let dir_addr = self.ino(idx).addr;
        let label = format!("Directory {dir_addr} block {blk}");
        let mut b = self.read(blk)?;
        let mut changed = false;
        let mut dels = Vec::new();
        let mut last_good: Option<usize> = None;
        let mut offs = Vec::new();
        for d in DirentIter::new(&b, start) {
            match d {
                Ok(d) => {
                    offs.push(d.offset);
                    last_good = Some(d.offset);
                }
                Err(e) => {
                    if self.r.problem(
                        &format!("{label}: damaged entry ({e}); dropping the rest of the block"),
                        true,
                    ) {
                        let end = b.len();
                        match last_good {
                            Some(o) => {
                                let n = (end - o) as u16;
                                b[o + 20..o + 22].copy_from_slice(&n.to_be_bytes());
                            }
                            None => {
                                Dirent {
                                    rec_len: (end - start) as u16,
                                    ..Dirent::default()
                                }
                                .write(&mut b[start..])?;
                                offs.clear();
                            }
                        }
                        changed = true;
                    }
                    break;
                }
            }
        }
        for off in offs {
            let Ok(de) = Dirent::parse(&b[off..]) else {
                continue;
            };
            if de.is_unused() {
                continue;
            }
            let nl = usize::from(de.name_len);
            let name = b[off + Dirent::SIZE..off + Dirent::SIZE + nl].to_vec();
            let sname = String::from_utf8_lossy(&name).into_owned();
            let h = hash::dirent_hash(&name);
            if h != de.hash
                && self.r.problem(
                    &format!(
                        "{label}: entry {sname:?} has hash {:#x}, should be {h:#x}",
                        de.hash
                    ),
                    true,
                )
            {
                b[off + 16..off + 20].copy_from_slice(&h.to_be_bytes());
                changed = true;
            }
            if let Some((s, n, depth)) = range {
                let slot = if depth == 0 {
                    0
                } else {
                    u64::from(h >> (32 - u32::from(depth)))
                };
                if slot < s || slot >= s + n {
                    if self.r.problem(
                        &format!("{label}: entry {sname:?} is in the wrong leaf; removing it"),
                        true,
                    ) {
                        dels.push(off);
                    }
                    continue;
                }
            }
            if name == b"." {
                let formal = self.ino(idx).formal;
                if (de.inum.addr != dir_addr || de.inum.formal_ino != formal)
                    && self.r.problem(
                        &format!(
                            "{label}: '.' is {}/{}, should be {formal}/{dir_addr}",
                            de.inum.formal_ino, de.inum.addr
                        ),
                        true,
                    )
                {
                    put_be64(&mut b, off + 8, dir_addr);
                    put_be64(&mut b, off, self.ino(idx).formal);
                    changed = true;
                }
                self.ino(idx).links += 1;
                self.dirs.entry(idx).or_default().has_dot = true;
                continue;
            }
            if name == b".." {
                self.dirs.entry(idx).or_default().dotdot = Some((de.inum.addr, blk, off));
                continue;
            }
            if name.contains(&b'/') || name.contains(&0) {
                if self.r.problem(
                    &format!("{label}: entry {sname:?} has an invalid name; removing it"),
                    true,
                ) {
                    dels.push(off);
                }
                continue;
            }
            self.queue.push_back(Ref {
                inum: de.inum,
                de_type: de.de_type,
                dir: idx,
                at: (blk, off, start),
            });
        }
        if changed || !dels.is_empty() {
            self.write(blk, b);
        }
        for off in dels.into_iter().rev() {
            self.del_dirent((blk, off, start))?;
        }
        Ok(())
    }
}
