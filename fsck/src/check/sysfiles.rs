//! System files rebuilt empty: a destroyed inum, statfs, quota,
//! inum_range, statfs_change, quota_change or journal dinode named by a
//! system directory is written again where it was (a journal as big as the
//! others and all clean log headers, a quota file with records for user and
//! group 0), and a journal whose map lost blocks gets new ones. Also the
//! checks every system inode gets: the SYSTEM flag and the fixed sizes.

use super::*;

impl Fsck {
    /// What kind of system file entry `name` of system directory `parent`
    /// names (None: not one this can rebuild).
    pub(super) fn system_kind(&self, parent: u64, name: &str) -> Option<SysKind> {
        let num = |p: &str| name.strip_prefix(p).and_then(|n| n.parse::<u32>().ok());
        let master = parent == self.sb.master_dir.addr;
        let per_node = parent == self.per_node && parent != 0;
        if master && name == "inum" {
            return Some(SysKind::Small(8));
        }
        if master && name == "statfs" {
            return Some(SysKind::Small(24));
        }
        if master && name == "quota" {
            return Some(SysKind::Quota);
        }
        if per_node && num("statfs_change").is_some() {
            return Some(SysKind::Small(24));
        }
        if per_node && num("inum_range").is_some() {
            return Some(SysKind::Small(16));
        }
        if per_node && num("quota_change").is_some() {
            // LGFS2_DEFAULT_QCSIZE: 1 MB.
            return Some(SysKind::QuotaChange((1 << 20) / u64::from(self.bsize)));
        }
        if parent == self.jindex && parent != 0 {
            let j = num("journal")?;
            // As big as the other journals.
            let size = self
                .journals
                .iter()
                .filter(|(n, _)| *n != j)
                .find_map(|(_, c)| self.dinode(c.jinode).ok().map(|d| d.0.size))
                .filter(|&s| s >= 1 << 20 && s & (u64::from(self.bsize) - 1) == 0)
                .unwrap_or(32 << 20);
            return Some(SysKind::Journal(j, size / u64::from(self.bsize)));
        }
        None
    }

    /// Write a new, empty system file of `kind` with dinode `inum` (its
    /// block is free). Its blocks are claimed by the walk afterwards.
    pub(super) fn build_system_file(&mut self, inum: Inum, kind: SysKind) -> Res<()> {
        let bs = self.bsize as usize;
        let addr = inum.addr;
        let mut di = Dinode {
            num: inum,
            mode: 0o100600,
            nlink: 1,
            blocks: 1,
            goal_meta: addr,
            goal_data: addr,
            flags: dif::SYSTEM | dif::JDATA,
            ..Dinode::default()
        };
        let mut b = vec![0u8; bs];
        let nblocks = match kind {
            SysKind::Small(size) => {
                di.size = size;
                di.write(&mut b)?;
                self.write(addr, b);
                return Ok(());
            }
            SysKind::Quota => {
                // Usage records for user 0 and group 0 (gfs2-utils writes
                // a value of 1 in each).
                let q = gfs2_ondisk::Quota {
                    value: 1,
                    ..gfs2_ondisk::Quota::default()
                };
                let rec = q.to_bytes();
                di.size = 2 * rec.len() as u64;
                di.payload_format = format::QU;
                b[Dinode::SIZE..Dinode::SIZE + rec.len()].copy_from_slice(&rec);
                b[Dinode::SIZE + rec.len()..Dinode::SIZE + 2 * rec.len()].copy_from_slice(&rec);
                di.write(&mut b)?;
                self.write(addr, b);
                return Ok(());
            }
            SysKind::QuotaChange(n) | SysKind::Journal(_, n) => n,
        };
        di.flags = dif::SYSTEM;
        di.size = nblocks * bs as u64;
        let clean = match kind {
            SysKind::Journal(j, _) => self
                .journals
                .iter()
                .find(|(n, _)| *n == j)
                .map(|(_, c)| CleanHeader { jinode: addr, ..*c }),
            _ => None,
        };
        let bsize = self.bsize;
        let mut data = |l: u64, p: u64| -> Res<Vec<u8>> {
            Ok(match (kind, &clean) {
                (SysKind::Journal(j, _), Some(c)) => {
                    clean_log_header(bsize, j, l + 1, l as u32, p, c)?
                }
                (SysKind::Journal(j, _), None) => {
                    let c = CleanHeader {
                        writer_jid: j,
                        jinode: addr,
                        ..CleanHeader::default()
                    };
                    clean_log_header(bsize, j, l + 1, l as u32, p, &c)?
                }
                _ => {
                    let mut z = vec![0u8; bs];
                    MetaHeader::new(metatype::QC, format::QC).write(&mut z)?;
                    z
                }
            })
        };
        self.write_tree(&mut di, &mut b, nblocks, &mut data, Alloc::Run)?;
        di.write(&mut b)?;
        self.write(addr, b);
        Ok(())
    }

    /// System inodes carry the SYSTEM flag; the small ones have fixed sizes.
    pub(super) fn check_system(&mut self, addr: u64, name: &str) -> Res<()> {
        let (mut di, _) = self.dinode(addr)?;
        let mut dirty = false;
        if di.flags & dif::SYSTEM == 0
            && self.r.problem(
                &format!("System inode {name} ({addr}) is missing the system flag"),
                true,
            )
        {
            di.flags |= dif::SYSTEM;
            dirty = true;
        }
        let size = if name == "inum" {
            Some(8)
        } else if name == "statfs" || name.starts_with("statfs_change") {
            Some(24)
        } else if name.starts_with("inum_range") {
            Some(16)
        } else {
            None
        };
        if let Some(sz) = size {
            if di.size != sz
                && di.height == 0
                && self.r.problem(
                    &format!(
                        "System file {name} ({addr}) has size {}, should be {sz}",
                        di.size
                    ),
                    true,
                )
            {
                di.size = sz;
                dirty = true;
            }
        }
        if dirty {
            self.put_dinode(addr, &di)?;
        }
        Ok(())
    }

    /// Give every block of a journal that its map lost a new (zeroed) block,
    /// making indirect blocks where they are missing.
    pub(super) fn fill_journal_holes(
        &mut self,
        idx: u64,
        di: &Dinode,
        data: &mut Vec<(u64, u64)>,
    ) -> Res<()> {
        let nblocks = di.size / u64::from(self.bsize);
        let maxb =
            layout::max_size_for_height(self.bsize, di.height).unwrap_or(0) / u64::from(self.bsize);
        if di.height == 0 || nblocks > maxb {
            return Ok(());
        }
        let have: std::collections::HashSet<u64> = data.iter().map(|(l, _)| *l).collect();
        let holes: Vec<u64> = (0..nblocks).filter(|l| !have.contains(l)).collect();
        if holes.is_empty() {
            return Ok(());
        }
        let addr = self.ino(idx).addr;
        self.r.problem(
            &format!(
                "System file {addr}: {} blocks missing from its map; replacing them",
                holes.len()
            ),
            true,
        );
        let inptrs = layout::inptrs(self.bsize);
        for l in holes {
            let mut span = 1u64;
            for _ in 1..di.height {
                span = span.saturating_mul(inptrs);
            }
            let mut blk = addr;
            let mut base = Dinode::SIZE;
            let mut top = true;
            for _ in 1..di.height {
                let slot = if top { l / span } else { (l / span) % inptrs };
                top = false;
                let off = base + 8 * slot as usize;
                let b = self.read(blk)?;
                let p = be64(&b, off);
                let ok = p != 0
                    && self.owner_of(p) == Some(idx)
                    && self.read(p).is_ok_and(|x| meta_ok(&x, metatype::IN));
                let next = if ok {
                    p
                } else {
                    let Some(nb) = self.alloc(idx, true) else {
                        return Err(Fatal("no free block to repair a journal".into()));
                    };
                    let mut z = vec![0u8; self.bsize as usize];
                    MetaHeader::new(metatype::IN, format::IN).write(&mut z)?;
                    self.write(nb, z);
                    let mut b = b;
                    put_be64(&mut b, off, nb);
                    self.write(blk, b);
                    nb
                };
                blk = next;
                base = MetaHeader::SIZE;
                span /= inptrs;
            }
            let slot = if top { l } else { l % inptrs };
            let Some(nb) = self.alloc(idx, false) else {
                return Err(Fatal("no free block to repair a journal".into()));
            };
            let mut z = vec![0u8; self.bsize as usize];
            if self.ino(idx).quota_change {
                MetaHeader::new(metatype::QC, format::QC).write(&mut z)?;
            }
            self.write(nb, z);
            let mut b = self.read(blk)?;
            put_be64(&mut b, base + 8 * slot as usize, nb);
            self.write(blk, b);
            data.push((l, nb));
        }
        Ok(())
    }
}
