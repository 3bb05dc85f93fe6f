//! Resource group repair (gfs2-utils' rgrepair.c): the rgrp layout found
//! from the headers themselves, followed from the first after the
//! superblock (a destroyed header's place taken by a sane rindex entry, or
//! the device searched for the next header and the gap laid out as mkfs
//! lays an rgrp). Wrong entries are rewritten into the rindex file, and a
//! destroyed rindex dinode is rebuilt where it was.

use super::*;

impl Fsck {
    /// Whether rindex entry `ri` is consistent in itself and starts after
    /// `prev_end`.
    pub(super) fn entry_sane(&self, ri: &Rindex, prev_end: u64) -> bool {
        let bits_cap = (self.bsize as u64 - Rgrp::SIZE as u64)
            + u64::from(ri.length.saturating_sub(1))
                * (self.bsize as u64 - MetaHeader::SIZE as u64);
        let end = ri.data0.saturating_add(u64::from(ri.data));
        !(ri.addr < prev_end
            || ri.length == 0
            || ri.data == 0
            || ri.data0 != ri.addr + u64::from(ri.length)
            || u64::from(ri.bitbytes) * 4 < u64::from(ri.data)
            || u64::from(ri.bitbytes) > bits_cap
            || end > self.dev_blocks)
    }

    /// Whether a layout reaches the end of the device (within one rgrp):
    /// stopping early at damage would lose every rgrp after it.
    pub(super) fn chain_covers(&self, ris: &[Rindex]) -> bool {
        let end = ris.last().map(|r| r.data0 + u64::from(r.data)).unwrap_or(0);
        let span = ris
            .iter()
            .map(|r| u64::from(r.length) + u64::from(r.data))
            .max()
            .unwrap_or(0);
        !ris.is_empty() && self.dev_blocks.saturating_sub(end) <= span
    }

    /// The rgrp header at `addr`, as a rindex entry, if there is a valid one.
    pub(super) fn header_entry(&self, addr: u64) -> Option<(Rindex, u32)> {
        let bs = u64::from(self.bsize);
        let mut h = vec![0u8; Rgrp::SIZE];
        self.dev.read_at(&mut h, addr * bs).ok()?;
        let rg = Rgrp::parse(&h).ok()?;
        if rg.header.magic != MAGIC
            || rg.header.mh_type != metatype::RG
            || rg.data0 <= addr
            || rg.data0 - addr > u64::from(u32::MAX)
            || rg.data == 0
            || rg.data0.saturating_add(u64::from(rg.data)) > self.dev_blocks
        {
            return None;
        }
        let ri = Rindex {
            addr,
            length: (rg.data0 - addr) as u32,
            data0: rg.data0,
            data: rg.data,
            bitbytes: rg.bitbytes,
            ..Rindex::default()
        };
        self.entry_sane(&ri, addr).then_some((ri, rg.skip))
    }

    /// The next valid rgrp header after block `from` (scanning the device a
    /// megabyte at a time), if any.
    pub(super) fn scan_for_header(&self, from: u64) -> Option<u64> {
        let bs = self.bsize as usize;
        let per = (1usize << 20) / bs;
        let mut buf = vec![0u8; per * bs];
        let mut at = from;
        while at < self.dev_blocks {
            let n = (per as u64).min(self.dev_blocks - at) as usize;
            self.dev.read_at(&mut buf[..n * bs], at * bs as u64).ok()?;
            for k in 0..n {
                let b = &buf[k * bs..k * bs + 8];
                if b[..4] == MAGIC.to_be_bytes()
                    && b[4..8] == metatype::RG.to_be_bytes()
                    && self.header_entry(at + k as u64).is_some()
                {
                    return Some(at + k as u64);
                }
            }
            at += n as u64;
        }
        None
    }

    /// The rgrp layout from the headers, following each to the next from
    /// the first one after the superblock. Where a header is destroyed, a
    /// sane rindex entry (`hints`) for that place stands in; without one,
    /// the device is searched for the next header and the gap becomes one
    /// rgrp laid out as mkfs does.
    pub(super) fn rgrp_chain(&self, hints: &[Rindex]) -> Vec<Rindex> {
        let mut out: Vec<Rindex> = Vec::new();
        let mut addr = SB_OFFSET / u64::from(self.bsize) + 1;
        while addr < self.dev_blocks && out.len() < 1 << 20 {
            let (ri, skip) = if let Some(h) = self.header_entry(addr) {
                h
            } else if let Some(h) = hints.iter().find(|h| h.addr == addr) {
                (*h, 0)
            } else {
                // Where does the next rgrp start?
                let next = hints
                    .iter()
                    .map(|h| h.addr)
                    .filter(|&a| a > addr)
                    .min()
                    .or_else(|| self.scan_for_header(addr + 1));
                let Some(next) = next else { break };
                let Ok(gap) = u32::try_from(next - addr) else {
                    break;
                };
                let (length, data) = gfs2_mkfs::plan::rgblocks2bitblocks(self.bsize, gap);
                let ri = Rindex {
                    addr,
                    length,
                    data0: addr + u64::from(length),
                    data,
                    bitbytes: data / 4,
                    ..Rindex::default()
                };
                if !self.entry_sane(&ri, addr) {
                    break;
                }
                (ri, gap)
            };
            out.push(ri);
            addr = if skip != 0 && addr + u64::from(skip) >= ri.data0 + u64::from(ri.data) {
                addr + u64::from(skip)
            } else {
                ri.data0 + u64::from(ri.data)
            };
        }
        out
    }

    /// Rindex entries from the rgrp headers alone.
    pub(super) fn rindex_from_headers(&self) -> Vec<Rindex> {
        self.rgrp_chain(&[])
    }

    /// The rindex file's contents as the rgrps now are.
    fn rindex_bytes(&self) -> Vec<u8> {
        self.rgs.iter().flat_map(|r| r.ri.to_bytes()).collect()
    }

    /// Put `data` into the rindex dinode `di` at `addr` (inode `idx`, its
    /// current block `b`): stuffed when it fits, else in a new tree (after
    /// the walk: its blocks claimed at once).
    fn fill_rindex(&mut self, idx: u64, di: &mut Dinode, b: &mut [u8], data: &[u8]) -> Res<()> {
        let bs = self.bsize as usize;
        di.size = data.len() as u64;
        b[Dinode::SIZE..].fill(0);
        if data.len() as u64 <= layout::stuffed_max(self.bsize) {
            di.height = 0;
            b[Dinode::SIZE..Dinode::SIZE + data.len()].copy_from_slice(data);
        } else {
            let nblocks = data.len().div_ceil(bs) as u64;
            let mut chunk = |l: u64, _p: u64| -> Res<Vec<u8>> {
                let from = l as usize * bs;
                Ok(data[from..data.len().min(from + bs)].to_vec())
            };
            self.write_tree(di, b, nblocks, &mut chunk, Alloc::Claim(idx))?;
        }
        di.blocks = self.ino(idx).blocks;
        self.ino(idx).di_blocks = di.blocks;
        di.write(b)?;
        Ok(())
    }

    /// Write the rindex entries as the rgrps now are into the rindex file:
    /// into the blocks it has when they hold them, else into a new tree
    /// (the old one given back), so a rindex that lost entries can grow
    /// again however far.
    pub(super) fn rewrite_rindex(&mut self) -> Res<()> {
        let Some(inum) = self.rindex_fix else {
            return Ok(());
        };
        if !self.r.repairing() {
            return Ok(());
        }
        let data = self.rindex_bytes();
        let (mut di, buf) = self.dinode(inum.addr)?;
        let bs = self.bsize as usize;
        let mut b = buf.to_vec();
        let stuffed = data.len() as u64 <= layout::stuffed_max(self.bsize);
        if di.height == 0 && stuffed {
            b[Dinode::SIZE..].fill(0);
            b[Dinode::SIZE..Dinode::SIZE + data.len()].copy_from_slice(&data);
            di.size = data.len() as u64;
            di.write(&mut b)?;
            self.write(inum.addr, b);
            return Ok(());
        }
        let t = if di.height == 0 {
            TreeOut::default()
        } else {
            self.tree(&di, &buf, inum.addr)?
        };
        let nblocks = data.len().div_ceil(bs) as u64;
        let have: Vec<(u64, u64)> = t.data.iter().map(|d| (d.0, d.1)).collect();
        if di.height == 0 || (0..nblocks).any(|l| !have.iter().any(|h| h.0 == l)) {
            // Too few blocks: a new tree, the old blocks given back.
            let idx = inum.addr;
            let old: Vec<u64> = have
                .iter()
                .map(|h| h.1)
                .chain(t.meta.iter().map(|m| m.0))
                .collect();
            for p in old {
                self.release(p, idx);
            }
            self.r.info(&format!(
                "rindex: {} entries need {nblocks} blocks; writing it anew",
                self.rgs.len()
            ));
            self.fill_rindex(idx, &mut di, &mut b, &data)?;
            self.write(inum.addr, b);
            return Ok(());
        }
        for (l, p) in have {
            let Ok(lu) = usize::try_from(l) else { continue };
            let start = lu * bs;
            if start >= data.len() {
                continue;
            }
            let mut blk = self.read(p)?;
            let n = bs.min(data.len() - start);
            blk.fill(0);
            blk[..n].copy_from_slice(&data[start..start + n]);
            self.write(p, blk);
        }
        let mut b = self.read(inum.addr)?;
        di.size = data.len() as u64;
        di.write(&mut b)?;
        self.write(inum.addr, b);
        Ok(())
    }

    /// Write a new rindex file where the destroyed one was (or at the
    /// block set aside for it when the master directory was rebuilt).
    pub(super) fn rebuild_rindex(&mut self) -> Res<()> {
        let Some(inum) = self.rindex_damaged else {
            return Ok(());
        };
        if !self.r.repairing() {
            return Ok(());
        }
        let addr = inum.addr;
        if want_get(&self.want, addr) != W_FREE || self.rg_of(addr).is_none() {
            self.r.problem(
                &format!("Block {addr} of the old rindex is in use: rindex not rebuilt"),
                false,
            );
            return Ok(());
        }
        let data = self.rindex_bytes();
        let master = self.sb.master_dir.addr;
        let mut di = Dinode {
            num: inum,
            mode: 0o100600,
            nlink: 1,
            blocks: 1,
            goal_meta: addr,
            goal_data: addr,
            flags: dif::SYSTEM | dif::JDATA,
            payload_format: format::RI,
            ..Dinode::default()
        };
        let idx = self.add_inode(&di, addr);
        self.ino(idx).parent = master;
        want_set(&mut self.want, addr, W_DINODE);
        self.ino(idx).blocks = 1;
        let mut b = vec![0u8; self.bsize as usize];
        self.fill_rindex(idx, &mut di, &mut b, &data)?;
        self.write(addr, b);
        self.set_bit(addr, BlockState::Dinode);
        Ok(())
    }
}
