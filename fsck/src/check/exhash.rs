//! Repairs of an exhash directory's hash table: when the table does not
//! cover the leaves as the exhash invariants require (aligned runs of
//! 2^(depth - lf_depth) slots per leaf), it is rebuilt from the leaves
//! themselves (their depths and the hashes of their entries) and written
//! back into the directory's table blocks.

use super::*;

impl Fsck {
    /// Rebuild an exhash table from its valid leaves: each leaf goes where
    /// its entries' hashes say (or where it was found if empty); holes get
    /// new empty leaves.
    pub(super) fn rebuild_table(
        &mut self,
        idx: u64,
        di: &Dinode,
        table: &mut [u64],
        info: &HashMap<u64, Option<Leaf>>,
    ) -> Res<Vec<(u64, u16)>> {
        let depth = di.depth;
        let nptrs = table.len();
        let mut fresh = vec![0u64; nptrs];
        let mut leaves = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut info = info.clone();
        for p in table.iter() {
            if !info.contains_key(p) {
                let l = if *p == 0 || self.rg_of(*p).is_none() {
                    None
                } else {
                    self.read(*p).ok().and_then(|b| {
                        if meta_ok(&b, metatype::LF) {
                            Leaf::parse(&b).ok()
                        } else {
                            None
                        }
                    })
                };
                info.insert(*p, l);
            }
        }
        for (i, p) in table.iter().enumerate() {
            let Some(Some(l)) = info.get(p) else { continue };
            if l.depth > depth || !seen.insert(*p) {
                continue;
            }
            let n = 1usize << (depth - l.depth);
            let b = self.read(*p)?;
            let h = DirentIter::new(&b, Leaf::SIZE)
                .flatten()
                .find(|d| !d.dirent.is_unused())
                .map(|d| d.dirent.hash);
            let slot = match h {
                Some(h) if depth > 0 => (h >> (32 - u32::from(depth))) as usize,
                Some(_) => 0,
                None => i,
            };
            let s0 = slot & !(n - 1);
            if fresh[s0..s0 + n].iter().any(|&x| x != 0) {
                continue;
            }
            fresh[s0..s0 + n].fill(*p);
            leaves.push((*p, l.depth));
        }
        // Fill holes with new empty leaves covering maximal aligned runs.
        let mut i = 0;
        while i < nptrs {
            if fresh[i] != 0 {
                i += 1;
                continue;
            }
            let mut n = 1usize;
            while i % (n * 2) == 0
                && i + n * 2 <= nptrs
                && fresh[i..i + n * 2].iter().all(|&x| x == 0)
            {
                n *= 2;
            }
            let lfd = depth - n.trailing_zeros() as u16;
            let Some(nb) = self.alloc(idx, true) else {
                return Err(Fatal("no free block for a directory leaf".into()));
            };
            let mut b = vec![0u8; self.bsize as usize];
            Leaf {
                depth: lfd,
                ..Leaf::default()
            }
            .write(&mut b)?;
            Dirent {
                rec_len: (self.bsize as usize - Leaf::SIZE) as u16,
                ..Dirent::default()
            }
            .write(&mut b[Leaf::SIZE..])?;
            self.write(nb, b);
            // alloc() counted it; check_dir's leaf walk claims it again.
            self.unclaim(nb, idx);
            self.set_bit(nb, BlockState::Used);
            fresh[i..i + n].fill(nb);
            leaves.push((nb, lfd));
            i += n;
        }
        table.copy_from_slice(&fresh);
        self.write_table(idx, di, table)?;
        Ok(leaves)
    }

    pub(super) fn write_table(&mut self, idx: u64, di: &Dinode, table: &[u64]) -> Res<()> {
        let addr = self.ino(idx).addr;
        if di.height == 0 {
            let mut b = self.read(addr)?;
            for (i, p) in table.iter().enumerate() {
                put_be64(&mut b, Dinode::SIZE + 8 * i, *p);
            }
            self.write(addr, b);
            return Ok(());
        }
        let (d2, buf) = self.dinode(addr)?;
        let t = self.tree(&d2, &buf, addr)?;
        let per = (self.bsize as usize - MetaHeader::SIZE) / 8;
        for (l, p, _) in t.data {
            if self.owner_of(p) != Some(idx) {
                continue;
            }
            let mut b = self.read(p)?;
            MetaHeader::new(metatype::JD, format::JD).write(&mut b)?;
            for k in 0..per {
                let ti = l as usize * per + k;
                if let Some(v) = table.get(ti) {
                    put_be64(&mut b, MetaHeader::SIZE + 8 * k, *v);
                }
            }
            self.write(p, b);
        }
        Ok(())
    }
}
