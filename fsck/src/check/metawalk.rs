//! Reading files without claiming anything (gfs2-utils' metawalk.c): a
//! dinode, the data and metadata blocks of its tree (each pointer's
//! location kept so a repair can clear it), a small file's contents and a
//! directory's entries. Used by the system file and rgrp checks before the
//! walk, and by the walk itself.

use super::*;

#[derive(Default)]
pub(super) struct TreeOut {
    pub(super) data: Vec<(u64, u64, PtrLoc)>,
    pub(super) meta: Vec<(u64, PtrLoc)>,
}

impl Fsck {
    pub(super) fn dinode(&self, addr: u64) -> Res<(Dinode, Blk)> {
        if addr == 0 || addr >= self.dev_blocks {
            return Err(Fatal(format!("dinode address {addr} out of range")));
        }
        let b = self.read_rc(addr)?;
        let d = Dinode::parse(&b)?;
        if d.header.magic != MAGIC || d.header.mh_type != metatype::DI || d.num.addr != addr {
            return Err(Fatal(format!("block {addr} is not a valid dinode")));
        }
        Ok((d, b))
    }

    /// Data block pointers of a file as (logical block, address), plus
    /// the indirect blocks, with `loc` of each pointer. No claims.
    pub(super) fn tree(&self, di: &Dinode, buf: &[u8], addr: u64) -> Res<TreeOut> {
        self.tree_ex(di, buf, addr, false)
    }

    /// Whether a block is an indirect block, or (`lenient`) one with a
    /// damaged header whose pointers all look sane.
    pub(super) fn indirect_ok(&self, b: &[u8], lenient: bool) -> bool {
        if meta_ok(b, metatype::IN) {
            return true;
        }
        lenient
            && (MetaHeader::SIZE..b.len())
                .step_by(8)
                .all(|o| be64(b, o) < self.fs_blocks)
            && (MetaHeader::SIZE..b.len())
                .step_by(8)
                .any(|o| be64(b, o) != 0)
    }

    pub(super) fn tree_ex(
        &self,
        di: &Dinode,
        buf: &[u8],
        addr: u64,
        lenient: bool,
    ) -> Res<TreeOut> {
        let mut out = TreeOut::default();
        if di.height == 0 || di.height > gfs2_ondisk::MAX_META_HEIGHT {
            return Ok(out);
        }
        let inptrs = layout::inptrs(self.bsize);
        let mut span = 1u64;
        for _ in 1..di.height {
            span = span.saturating_mul(inptrs);
        }
        // (block, start offset, count, first lblock, span per pointer)
        let mut level: Vec<(u64, usize, usize, u64, u64)> = vec![(
            addr,
            Dinode::SIZE,
            layout::diptrs(self.bsize) as usize,
            0,
            span,
        )];
        let mut h = di.height;
        let mut first = true;
        while h > 0 {
            let mut next = Vec::new();
            for (blk, start, n, l0, sp) in level {
                let held;
                let b: &[u8] = if std::mem::take(&mut first) {
                    buf
                } else {
                    held = self.read_rc(blk)?;
                    &held
                };
                for i in 0..n {
                    let off = start + 8 * i;
                    let p = be64(b, off);
                    if p == 0 {
                        continue;
                    }
                    let lblk = l0.saturating_add((i as u64).saturating_mul(sp));
                    let loc = PtrLoc { block: blk, off };
                    if h == 1 {
                        out.data.push((lblk, p, loc));
                    } else {
                        out.meta.push((p, loc));
                        next.push((p, MetaHeader::SIZE, inptrs as usize, lblk, sp / inptrs));
                    }
                }
            }
            level = next;
            h -= 1;
            if h > 0 {
                // Only descend into blocks that are in range and indirect.
                level.retain(|(p, ..)| {
                    *p < self.fs_blocks
                        && self.read(*p).is_ok_and(|b| self.indirect_ok(&b, lenient))
                });
            }
        }
        Ok(out)
    }

    /// File contents (for system files); directory data blocks skip their
    /// meta header.
    pub(super) fn file_data(&self, addr: u64) -> Res<Vec<u8>> {
        let (di, buf) = self.dinode(addr)?;
        let size = usize::try_from(di.size).map_err(|_| Fatal("file too large".into()))?;
        if di.height == 0 {
            let end = (Dinode::SIZE + size).min(buf.len());
            return Ok(buf[Dinode::SIZE..end].to_vec());
        }
        let hdr = if di.is_dir() { MetaHeader::SIZE } else { 0 };
        let per = self.bsize as usize - hdr;
        if size > 1 << 30 {
            return Err(Fatal(format!("system file {addr} of {size} bytes")));
        }
        let mut out = vec![0u8; size];
        let t = self.tree(&di, &buf, addr)?;
        for (l, p, _) in t.data {
            let Ok(l) = usize::try_from(l) else { continue };
            let Some(pos) = l.checked_mul(per) else {
                continue;
            };
            if pos >= size || p >= self.dev_blocks {
                continue;
            }
            let b = self.read(p)?;
            let n = per.min(size - pos);
            out[pos..pos + n].copy_from_slice(&b[hdr..hdr + n]);
        }
        Ok(out)
    }

    /// Entries of a directory (no checks beyond what is needed to read).
    pub(super) fn list_dir(&self, addr: u64) -> Res<Vec<(String, Inum)>> {
        let (di, buf) = self.dinode(addr)?;
        let mut blocks = Vec::new();
        if di.is_exhash() {
            let table = self.file_data(addr)?;
            let mut seen = std::collections::HashSet::new();
            for i in 0..table.len() / 8 {
                let mut p = be64(&table, 8 * i);
                while p != 0 && p < self.dev_blocks && seen.insert(p) {
                    let b = self.read(p)?;
                    if !meta_ok(&b, metatype::LF) {
                        break;
                    }
                    let next = Leaf::parse(&b).map(|l| l.next).unwrap_or(0);
                    blocks.push((b, Leaf::SIZE));
                    p = next;
                }
            }
        } else {
            blocks.push((buf.to_vec(), Dinode::SIZE));
        }
        let mut out = Vec::new();
        for (b, start) in &blocks {
            for d in DirentIter::new(b, *start).flatten() {
                if !d.dirent.is_unused() {
                    out.push((String::from_utf8_lossy(d.name).into_owned(), d.dirent.inum));
                }
            }
        }
        Ok(out)
    }

    pub(super) fn lookup(&self, dir: u64, name: &str) -> Res<Inum> {
        if dir == self.sb.master_dir.addr {
            if let Some(l) = &self.master_list {
                return l
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, i)| *i)
                    .ok_or_else(|| Fatal(format!("no {name} found for the master directory")));
            }
        }
        self.list_dir(dir)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| i)
            .ok_or_else(|| Fatal(format!("no {name} in system directory {dir}")))
    }
}
