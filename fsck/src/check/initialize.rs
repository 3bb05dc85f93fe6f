//! Initialization (gfs2-utils' initialize.c): the superblock (magic,
//! formats, a bad block size found again from where the master and root
//! dinodes and the first rgrp are, lock protocol and table), then the
//! rindex and every rgrp header read on two threads and checked against
//! each other (fields, `rg_skip`, `rg_crc`, bitmap block headers). Wrong
//! or lost rindex entries and a destroyed master directory are handed to
//! [`super::rgrepair`] and [`super::sysdirs`]; nothing else can be checked
//! until the rgrps are known.

use super::*;

impl Fsck {
    /// The superblock, found at 64 KiB: its block size found again when
    /// wrong, then formats, lock protocol and table.
    pub(super) fn check_sb(&mut self) -> Res<()> {
        self.r.progress("Checking the superblock");
        let mut raw = vec![0u8; Superblock::SIZE];
        self.dev
            .read_at(&mut raw, SB_OFFSET)
            .map_err(|e| Fatal(format!("cannot read the superblock: {e}")))?;
        let mut sb = Superblock::parse(&raw)?;
        if sb.header.magic != MAGIC || sb.header.mh_type != metatype::SB {
            return Err(Fatal(
                "no GFS2 superblock found (bad magic or type)".to_string(),
            ));
        }
        let mut changed = false;
        if sb.fs_format != format::FS && sb.fs_format != format::FS_1801 {
            self.r.problem(
                &format!("Superblock: unknown fs format {}", sb.fs_format),
                false,
            );
        }
        if sb.multihost_format != format::MULTI
            && self.r.problem(
                &format!(
                    "Superblock: multihost format {} (should be {})",
                    sb.multihost_format,
                    format::MULTI
                ),
                true,
            )
        {
            sb.multihost_format = format::MULTI;
            changed = true;
        }
        let size = self.dev.size();
        let bs_ok = (512..=65536).contains(&sb.bsize) && sb.bsize.is_power_of_two();
        if !bs_ok {
            let probed = self.probe_bsize(&sb, size);
            let msg = match probed {
                Some(b) => format!(
                    "Superblock: invalid block size {} (the layout says {b})",
                    sb.bsize
                ),
                None => format!("Superblock: invalid block size {}", sb.bsize),
            };
            match probed {
                Some(b) => {
                    if self.r.problem(&msg, true) {
                        changed = true;
                    }
                    // Use the probed size for the rest of the check either way.
                    sb.bsize = b;
                    sb.bsize_shift = b.trailing_zeros();
                }
                None => {
                    self.r.problem(&msg, false);
                    return Err(Fatal(
                        "cannot find the block size from the resource group layout".into(),
                    ));
                }
            }
        } else if 1u64.checked_shl(sb.bsize_shift) != Some(u64::from(sb.bsize))
            && self.r.problem(
                &format!(
                    "Superblock: block size shift {} does not match block size {}",
                    sb.bsize_shift, sb.bsize
                ),
                true,
            )
        {
            sb.bsize_shift = sb.bsize.trailing_zeros();
            changed = true;
        }
        let proto = sb.lockproto_str();
        if proto != "lock_nolock" && proto != "lock_dlm" {
            self.r.problem(
                &format!("Superblock: unknown lock protocol {proto:?}"),
                false,
            );
        }
        let table = sb.locktable_str();
        if proto == "lock_dlm" && !table.contains(':') {
            self.r.problem(
                &format!("Superblock: lock table {table:?} is not cluster:fsname"),
                false,
            );
        }
        self.bsize = sb.bsize;
        self.dev_blocks = size / u64::from(self.bsize);
        self.r.info(&format!(
            "block size {}, {} blocks on the device, lock {proto} {table:?}",
            self.bsize, self.dev_blocks
        ));
        self.sb = sb;
        if changed {
            let blk = SB_OFFSET / u64::from(self.bsize);
            let mut b = vec![0u8; self.bsize as usize];
            let _ = self.dev.read_at(&mut b, blk * u64::from(self.bsize));
            self.sb.write(&mut b)?;
            self.write(blk, b);
        }
        Ok(())
    }

    /// Find the block size at which the master and root dinodes and the
    /// first resource group are where the superblock says.
    pub(super) fn probe_bsize(&self, sb: &Superblock, size: u64) -> Option<u32> {
        let dinode_at = |bs: u64, inum: Inum| -> bool {
            let off = match inum.addr.checked_mul(bs) {
                Some(o) if o + Dinode::SIZE as u64 <= size => o,
                _ => return false,
            };
            let mut b = vec![0u8; Dinode::SIZE];
            if self.dev.read_at(&mut b, off).is_err() {
                return false;
            }
            Dinode::parse(&b).is_ok_and(|d| {
                d.header.magic == MAGIC && d.header.mh_type == metatype::DI && d.num == inum
            })
        };
        (9..=16).map(|s| 1u32 << s).find(|&bs| {
            let b = u64::from(bs);
            let rg_at = SB_OFFSET / b + 1;
            let mut h = vec![0u8; Rgrp::SIZE];
            let rg_ok = self.dev.read_at(&mut h, rg_at * b).is_ok()
                && Rgrp::parse(&h).is_ok_and(|r| {
                    r.header.magic == MAGIC && r.header.mh_type == metatype::RG && r.data0 > rg_at
                });
            rg_ok && dinode_at(b, sb.master_dir) && dinode_at(b, sb.root_dir)
        })
    }

    /// The rindex and every rgrp header; the rgrp layout from the headers
    /// when the rindex is wrong or lost, and the master directory rebuilt
    /// when it is destroyed.
    pub(super) fn check_rgrps(&mut self) -> Res<()> {
        self.r.progress("Checking resource groups");
        let master = self.sb.master_dir.addr;
        // A destroyed master directory: the rgrps come from their headers,
        // and its files are found after they are read.
        let master_lost = self.dinode(master).map_or(true, |d| !d.0.is_dir());
        let ri_inum = if master_lost {
            Inum::default()
        } else {
            self.lookup(master, "rindex")?
        };
        let ri_addr = ri_inum.addr;
        let read = if master_lost {
            Err(Fatal("the master directory is destroyed".into()))
        } else {
            self.file_data(ri_addr)
        };
        let data = match read {
            Ok(d) => d,
            Err(e) if master_lost => {
                let ris = self.rindex_from_headers();
                if !self.chain_covers(&ris) {
                    return Err(Fatal(format!(
                        "{}; the resource group headers do not cover the device",
                        e.0
                    )));
                }
                ris.iter().flat_map(|r| r.to_bytes()).collect()
            }
            Err(e) => {
                // The rindex dinode is gone: follow the rgrp headers instead,
                // and write a new rindex after the walk.
                let ris = self.rindex_from_headers();
                // The chain must reach the end of the device (within one
                // rgrp): stopping early at a damaged header would lose
                // every rgrp after it.
                let end = ris.last().map(|r| r.data0 + u64::from(r.data)).unwrap_or(0);
                let span = ris
                    .iter()
                    .map(|r| u64::from(r.length) + u64::from(r.data))
                    .max()
                    .unwrap_or(0);
                if ris.is_empty() || self.dev_blocks.saturating_sub(end) > span {
                    return Err(Fatal(format!(
                        "rindex: {}; the resource group headers do not cover the device",
                        e.0
                    )));
                }
                self.r.problem(
                    &format!(
                        "The rindex file at block {ri_addr} is damaged ({}); rebuilding it from {} resource group headers",
                        e.0,
                        ris.len()
                    ),
                    true,
                );
                self.rindex_damaged = Some(ri_inum);
                ris.iter().flat_map(|r| r.to_bytes()).collect()
            }
        };
        if data.len() % Rindex::SIZE != 0 {
            self.r.problem(
                &format!(
                    "rindex size {} is not a multiple of {}",
                    data.len(),
                    Rindex::SIZE
                ),
                false,
            );
        }
        // Entries in file order (unreadable ones as zeros).
        let file_ris: Vec<Rindex> = data
            .chunks_exact(Rindex::SIZE)
            .map(|c| Rindex::parse(c).unwrap_or_default())
            .collect();
        let mut ris = file_ris.clone();
        ris.sort_by_key(|r| r.addr);
        let first = SB_OFFSET / u64::from(self.bsize) + 1;
        let mut prev_end = first;
        let mut good = Vec::new();
        let mut bad_entries = Vec::new();
        for ri in ris.iter() {
            if !self.entry_sane(ri, prev_end) {
                bad_entries.push(*ri);
                continue;
            }
            prev_end = ri.data0 + u64::from(ri.data);
            good.push(*ri);
        }
        // The layout the rgrp headers give (with the sane entries standing
        // in for destroyed headers): when it covers the device, it is what
        // the rindex should say.
        if self.rindex_damaged.is_none() {
            let chain = self.rgrp_chain(&good);
            let key = |r: &Rindex| (r.addr, r.length, r.data0, r.data, r.bitbytes);
            let differs =
                chain.len() != good.len() || chain.iter().zip(&good).any(|(a, b)| key(a) != key(b));
            if (differs || !bad_entries.is_empty()) && self.chain_covers(&chain) {
                let key = |r: &Rindex| (r.addr, r.length, r.data0, r.data, r.bitbytes);
                let wrong: Vec<(usize, Rindex)> = file_ris
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| !chain.iter().any(|c| key(c) == key(r)))
                    .map(|(i, r)| (i, *r))
                    .collect();
                let mut missing = chain
                    .iter()
                    .filter(|c| !file_ris.iter().any(|r| key(c) == key(r)));
                for (i, ri) in &wrong {
                    let should = missing
                        .next()
                        .map(|c| {
                            format!(
                                "; the resource group headers say addr {} length {} data0 {} data {} bitbytes {}",
                                c.addr, c.length, c.data0, c.data, c.bitbytes
                            )
                        })
                        .unwrap_or_else(|| "; no resource group is there".into());
                    self.r.problem(
                        &format!(
                            "rindex entry {i} is wrong (addr {} length {} data0 {} data {} bitbytes {}){should}",
                            ri.addr, ri.length, ri.data0, ri.data, ri.bitbytes
                        ),
                        true,
                    );
                }
                if wrong.is_empty() || chain.len() != file_ris.len() {
                    self.r.problem(
                        &format!(
                            "rindex has {} entries, the resource group headers give {}",
                            file_ris.len(),
                            chain.len()
                        ),
                        true,
                    );
                }
                self.rindex_fix = Some(ri_inum);
                good = chain;
                bad_entries.clear();
            }
        }
        for ri in bad_entries {
            self.r.problem(
                &format!(
                    "rindex entry (addr {} length {} data0 {} data {} bitbytes {}) is invalid and the resource group headers do not tell the layout",
                    ri.addr, ri.length, ri.data0, ri.data, ri.bitbytes
                ),
                false,
            );
        }
        if good.is_empty() {
            return Err(Fatal("no usable resource groups".into()));
        }
        self.fs_blocks = good
            .iter()
            .map(|r| r.data0 + u64::from(r.data))
            .max()
            .unwrap_or(0);
        self.r.info(&format!(
            "{} resource groups, {} blocks",
            good.len(),
            self.fs_blocks
        ));
        // Read every rgrp (header and bitmap blocks) on two threads.
        let bsize = self.bsize as usize;
        let dev = &self.dev;
        let n = good.len();
        let half = n.div_ceil(2);
        // Per rgrp: its header, the bitmap blocks with a bad header, and
        // read errors. The bitmaps are read again when needed (keeping them
        // all would cost two bits per block).
        type RgRead = (Vec<u8>, Vec<usize>, Vec<String>);
        let read_rg = |ri: &Rindex| -> RgRead {
            let len = ri.length as usize * bsize;
            let mut raw = vec![0u8; len];
            let mut notes = Vec::new();
            if let Err(e) = dev.read_at(&mut raw, ri.addr * bsize as u64) {
                notes.push(format!("read error: {e}"));
            }
            let bad: Vec<usize> = (1..ri.length as usize)
                .filter(|k| !meta_ok(&raw[k * bsize..(k + 1) * bsize], metatype::RB))
                .collect();
            raw.truncate(Rgrp::SIZE);
            raw.shrink_to_fit();
            (raw, bad, notes)
        };
        let results: Vec<RgRead> = std::thread::scope(|s| {
            let (a, b) = good.split_at(half);
            let h = s.spawn(|| b.iter().map(read_rg).collect::<Vec<_>>());
            let mut v: Vec<_> = a.iter().map(read_rg).collect();
            v.extend(h.join().unwrap_or_default());
            v
        });
        for (i, (ri, (raw, bad_rb, notes))) in good.iter().zip(results).enumerate() {
            if let Some(note) = notes.into_iter().next() {
                return Err(Fatal(format!("resource group {i}: {note}")));
            }
            let skip = good
                .get(i + 1)
                .map(|nx| (nx.addr - ri.addr) as u32)
                .unwrap_or(0);
            let mut rg = Rg {
                ri: *ri,
                hdr: Rgrp::default(),
                bits: Vec::new(),
                loaded: false,
                bits_lost: false,
                dirty: false,
            };
            let hdr = Rgrp::parse(&raw)?;
            if hdr.header.magic != MAGIC || hdr.header.mh_type != metatype::RG {
                if self.r.problem(
                    &format!(
                        "Resource group {i} at block {}: header is damaged; rebuilding it from rindex",
                        ri.addr
                    ),
                    true,
                ) {
                    rg.dirty = true;
                }
                rg.bits_lost = true;
                rg.hdr = Rgrp {
                    skip,
                    data0: ri.data0,
                    data: ri.data,
                    bitbytes: ri.bitbytes,
                    ..Rgrp::default()
                };
            } else {
                rg.hdr = hdr;
                let fix = |r: &mut Report, what: &str, have: u64, want: u64| {
                    if have != want
                        && r.problem(
                            &format!(
                                "Resource group {i} at block {}: {what} is {have}, rindex says {want}",
                                ri.addr
                            ),
                            true,
                        )
                    {
                        return true;
                    }
                    false
                };
                if fix(&mut self.r, "rg_data0", hdr.data0, ri.data0) {
                    rg.hdr.data0 = ri.data0;
                    rg.dirty = true;
                }
                if fix(&mut self.r, "rg_data", hdr.data.into(), ri.data.into()) {
                    rg.hdr.data = ri.data;
                    rg.dirty = true;
                }
                if fix(
                    &mut self.r,
                    "rg_bitbytes",
                    hdr.bitbytes.into(),
                    ri.bitbytes.into(),
                ) {
                    rg.hdr.bitbytes = ri.bitbytes;
                    rg.dirty = true;
                }
                if hdr.skip != 0
                    && hdr.skip != skip
                    && self.r.problem(
                        &format!(
                            "Resource group {i} at block {}: rg_skip is {}, should be {skip}",
                            ri.addr, hdr.skip
                        ),
                        true,
                    )
                {
                    rg.hdr.skip = skip;
                    rg.dirty = true;
                }
                if hdr.crc != 0 {
                    let crc = hash::rgrp_crc(&raw)?;
                    if crc != hdr.crc
                        && self.r.problem(
                            &format!(
                                "Resource group {i} at block {}: rg_crc {:#x} should be {crc:#x}",
                                ri.addr, hdr.crc
                            ),
                            true,
                        )
                    {
                        rg.dirty = true;
                    }
                }
            }
            // Bitmap blocks after the header.
            for k in bad_rb {
                if self.r.problem(
                    &format!(
                        "Resource group {i}: bitmap block {} has a bad header",
                        ri.addr + k as u64
                    ),
                    true,
                ) {
                    rg.dirty = true;
                }
            }
            self.rgs.push(rg);
        }
        let nblocks = usize::try_from(self.fs_blocks).map_err(|_| Fatal("too big".into()))?;
        self.want = vec![0u8; nblocks.div_ceil(4)];
        if master_lost {
            self.rebuild_master()?;
        }
        Ok(())
    }
}
