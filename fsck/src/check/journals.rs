//! Journals (gfs2-utils' fs_recovery.c): each journal's head is found with
//! the mount code's recovery module, a dirty journal is replayed (not with
//! `-p` on a clustered lock protocol, where another node may own it), and a
//! journal with no valid header is reset to one clean header. A journal
//! whose block map is damaged is looked at again after the walk repaired
//! the map. Reading goes through the repairs made so far ([`CacheDev`]).

use super::*;

/// The device as modified so far (for reading journals after repairs).
pub(super) struct CacheDev<'a> {
    dev: &'a dyn BlockDevice,
    cache: &'a HashMap<u64, Vec<u8>>,
    bsize: u64,
}

impl BlockDevice for CacheDev<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if buf.len() as u64 == self.bsize && offset & (self.bsize - 1) == 0 {
            if let Some(b) = self.cache.get(&(offset / self.bsize)) {
                buf.copy_from_slice(b);
                return Ok(());
            }
        }
        self.dev.read_at(buf, offset)
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> std::io::Result<()> {
        Err(std::io::Error::other("read-only view"))
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.dev.size()
    }
    fn describe(&self) -> String {
        self.dev.describe()
    }
}

/// A clean (unmounted) log header for block `lblock` of journal `jid`,
/// at `addr`.
pub(super) fn clean_log_header(
    bsize: u32,
    jid: u32,
    seq: u64,
    lblock: u32,
    addr: u64,
    clean: &CleanHeader,
) -> Res<Vec<u8>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let h = gfs2_ondisk::LogHeader {
        header: MetaHeader {
            jid,
            ..MetaHeader::new(metatype::LH, format::LH)
        },
        sequence: seq,
        flags: lh::UNMOUNT | lh::USERSPACE,
        blkno: lblock,
        nsec: now.subsec_nanos(),
        sec: now.as_secs(),
        addr,
        jinode: clean.jinode,
        statfs_addr: clean.statfs_addr,
        quota_addr: clean.quota_addr,
        ..gfs2_ondisk::LogHeader::default()
    };
    let mut b = vec![0u8; bsize as usize];
    h.write_block(&mut b)?;
    Ok(b)
}

/// The address of per_node's file `name` (0 when it has none).
fn node_file(nodes: &[(String, Inum)], name: &str) -> u64 {
    nodes
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, i)| i.addr)
        .unwrap_or(0)
}

impl Fsck {
    /// A journal's blocks as extents; `None` if it has holes.
    pub(super) fn extents(&self, addr: u64) -> Res<Option<Vec<JournalExtent>>> {
        let (di, buf) = self.dinode(addr)?;
        let t = self.tree_ex(&di, &buf, addr, true)?;
        let mut ex: Vec<JournalExtent> = Vec::new();
        let nblocks = di.size / u64::from(self.bsize);
        let mut next = 0u64;
        for (l, p, _) in t.data {
            if l >= nblocks {
                break;
            }
            if l != next || p >= self.fs_blocks {
                return Ok(None);
            }
            next += 1;
            match ex.last_mut() {
                Some(e) if e.phys + e.len == p => e.len += 1,
                _ => ex.push(JournalExtent {
                    lblock: l,
                    phys: p,
                    len: 1,
                }),
            }
        }
        if next != nblocks || nblocks == 0 {
            return Ok(None);
        }
        Ok(Some(ex))
    }

    /// Dirty journals replayed before anything else is read, when the
    /// journals can be found without repairs. A replay may rewrite what
    /// the later checks read first: the last transaction of a `gfs2_grow`
    /// extends the rindex and the master statfs, and a check of the rgrps
    /// against the old rindex would "repair" the new rgrps away and write
    /// its in-memory repairs over the replayed blocks. Returns whether a
    /// journal was replayed; the checks then start again on the disk as it
    /// is now. With `-n` nothing is replayed and nothing is done here;
    /// when the journals cannot be found this way (a damaged master
    /// directory, jindex or per_node), [`Fsck::check_journals`] does the
    /// work after the repairs, as before.
    pub(super) fn replay_first(&mut self) -> Res<bool> {
        if self.r.mode == Mode::No {
            return Ok(false);
        }
        let master = self.sb.master_dir.addr;
        if !self.dinode(master).is_ok_and(|d| d.0.is_dir()) {
            return Ok(false);
        }
        // The rgrps are not read yet: pointers are bounded by the device.
        self.fs_blocks = self.dev_blocks;
        let found = (|| {
            let jindex = self.lookup(master, "jindex").ok()?.addr;
            let per_node = self.lookup(master, "per_node").ok()?.addr;
            let statfs = self.lookup(master, "statfs").ok()?.addr;
            let js = self.list_dir(jindex).ok()?;
            let nodes = self.list_dir(per_node).ok()?;
            Some((statfs, js, nodes))
        })();
        let Some((statfs, js, nodes)) = found else {
            return Ok(false);
        };
        let node_file = |name: String| node_file(&nodes, &name);
        let mut replayed = false;
        for (name, inum) in &js {
            let Some(j) = name
                .strip_prefix("journal")
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(Some(ex)) = self.extents(inum.addr) else {
                continue;
            };
            let view = CacheDev {
                dev: &self.dev,
                cache: &self.cache,
                bsize: u64::from(self.bsize),
            };
            // A journal with no valid header is reset by the main check.
            if !recovery::find_head(&view, self.bsize, &ex).is_ok_and(|h| !h.is_clean()) {
                continue;
            }
            let clean = CleanHeader {
                writer_jid: j,
                jinode: inum.addr,
                statfs_addr: node_file(format!("statfs_change{j}")),
                quota_addr: node_file(format!("quota_change{j}")),
                master_statfs_addr: statfs,
            };
            self.check_journal(j, &ex, &clean, true)?;
            replayed = true;
        }
        Ok(replayed)
    }

    /// The jindex and per_node directories (rebuilt when unreadable), and
    /// each journal: clean, replayed, or reset.
    pub(super) fn check_journals(&mut self) -> Res<()> {
        self.r.progress("Checking journals");
        let master = self.sb.master_dir.addr;
        // A destroyed master directory seen with -n: the files it lacks
        // were reported with it, and their checks are left out.
        let lost = self.master_list.is_some();
        let jindex_inum = match self.lookup(master, "jindex") {
            Err(_) if lost => return Ok(()),
            r => r?,
        };
        let jindex = jindex_inum.addr;
        self.jindex = jindex;
        let per_node = self.lookup(master, "per_node").map(|i| i.addr).ok();
        self.per_node = per_node.unwrap_or(0);
        self.statfs_addr = match self.lookup(master, "statfs") {
            Err(_) if lost => 0,
            r => r?.addr,
        };
        let listed = match self.list_dir(jindex) {
            Ok(l) => l,
            Err(e) => self.rebuild_jindex(jindex_inum, &e.0)?,
        };
        let mut js: Vec<(u32, u64)> = listed
            .into_iter()
            .filter_map(|(n, i)| Some((n.strip_prefix("journal")?.parse().ok()?, i.addr)))
            .collect();
        js.sort();
        let nodes = match per_node {
            Some(p) => match self.list_dir(p) {
                Ok(l) => l,
                Err(e) => {
                    let inum = self.lookup(master, "per_node")?;
                    let ids: Vec<u32> = js.iter().map(|j| j.0).collect();
                    self.rebuild_per_node(inum, &e.0, &ids)?
                }
            },
            None => Vec::new(),
        };
        let node_file = |name: String| node_file(&nodes, &name);
        for (j, jaddr) in js {
            let sc = node_file(format!("statfs_change{j}"));
            if sc != 0 {
                self.local_statfs.push(sc);
            }
            let clean = CleanHeader {
                writer_jid: j,
                jinode: jaddr,
                statfs_addr: sc,
                quota_addr: node_file(format!("quota_change{j}")),
                master_statfs_addr: self.statfs_addr,
            };
            self.journals.push((j, clean));
            match self.extents(jaddr) {
                Ok(Some(ex)) => self.check_journal(j, &ex, &clean, true)?,
                // Damaged metadata tree: the walk repairs what it can;
                // the journal is looked at again after it.
                _ => self.deferred.push(j),
            }
        }
        Ok(())
    }

    /// Journals whose block map was damaged, after the walk repaired it.
    pub(super) fn check_deferred_journals(&mut self) -> Res<()> {
        for j in std::mem::take(&mut self.deferred) {
            let Some(&(_, clean)) = self.journals.iter().find(|(n, _)| *n == j) else {
                continue;
            };
            match self.extents(clean.jinode) {
                Ok(Some(ex)) => self.check_journal(j, &ex, &clean, false)?,
                _ => {
                    self.r.problem(
                        &format!(
                            "Journal #{} (\"journal{j}\") has holes in its block map",
                            j + 1
                        ),
                        false,
                    );
                }
            }
        }
        Ok(())
    }

    pub(super) fn check_journal(
        &mut self,
        j: u32,
        ex: &[JournalExtent],
        clean: &CleanHeader,
        can_replay: bool,
    ) -> Res<()> {
        let view = CacheDev {
            dev: &self.dev,
            cache: &self.cache,
            bsize: u64::from(self.bsize),
        };
        let head = match recovery::find_head(&view, self.bsize, ex) {
            Ok(h) => h,
            Err(e) => {
                if self.r.problem(
                    &format!(
                        "Journal #{} (\"journal{j}\") is corrupt: {e}; resetting it",
                        j + 1
                    ),
                    true,
                ) {
                    self.reset_journal(j, ex, clean)?;
                }
                return Ok(());
            }
        };
        if head.is_clean() {
            self.r
                .info(&format!("journal{j}: clean, head at block {}", head.lblock));
            return Ok(());
        }
        let unsafe_preen = self.r.mode == Mode::Preen && self.sb.lockproto_str() != "lock_nolock";
        let msg = format!("Journal #{} (\"journal{j}\") is dirty", j + 1);
        if unsafe_preen {
            self.r.problem(&msg, false);
            return Err(Fatal(
                "not replaying with -p: the lock protocol is not lock_nolock".into(),
            ));
        }
        if self.r.problem(&msg, can_replay) {
            let st = recovery::recover(&self.dev, self.bsize, ex, &head, clean)
                .map_err(|e| Fatal(format!("journal{j}: replay failed: {e}")))?;
            self.recent.borrow_mut().0.clear();
            self.r.info(&format!(
                "journal{j}: replayed {} blocks, {} revoked, {} revokes",
                st.replayed, st.revoked, st.revokes
            ));
        }
        Ok(())
    }

    /// Make a journal with no valid header usable: one clean header at 0.
    pub(super) fn reset_journal(
        &mut self,
        j: u32,
        ex: &[JournalExtent],
        clean: &CleanHeader,
    ) -> Res<()> {
        let clean = CleanHeader {
            master_statfs_addr: 0,
            ..*clean
        };
        let phys = ex[0].phys;
        let b = clean_log_header(self.bsize, j, 1, 0, phys, &clean)?;
        self.write(phys, b);
        Ok(())
    }
}
