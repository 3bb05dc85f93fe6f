//! Writing a new filesystem: journals, resource groups, the system
//! directories and files, and the superblock.
//!
//! The order and the choices follow gfs2-utils' mkfs so that images look
//! alike under `gfs2_edit`: journals are single extents at the start of their
//! own resource groups and get formal inode numbers 1..J; then come master,
//! jindex, per_node (inum_range, statfs_change and quota_change per journal),
//! inum, statfs, rindex, quota and the root directory, each taking the first
//! free block. Everything except the journals is assembled in memory (a few
//! hundred blocks at most) and written at the end in address order, so a
//! failure part-way leaves no superblock pointing at half-built metadata.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use gfs2_ondisk::{
    consts::{dif, dt, format, lh, metatype},
    layout, BlockState, Dinode, Inum, Leaf, LogHeader, MetaHeader, Quota, Rgrp, Rindex,
    StatfsChange, Superblock,
};

use gfs2fuse::dev::BlockDevice;

use crate::alloc::Allocator;
use crate::dirlayout::{self, Entry};
use crate::plan::Layout;
use crate::progress::Progress;

/// What to write besides the layout.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub bsize: u32,
    pub jsize_mb: u32,
    pub qcsize_mb: u32,
    pub lockproto: String,
    pub locktable: String,
    pub uuid: [u8; 16],
    /// `sb_fs_format`: 1801 or 1802.
    pub format: u32,
    /// `-o root_inherit_jdata`: new files under / get journaled data.
    pub root_inherit_jdata: bool,
    pub quiet: bool,
    /// Creation time for every timestamp, in seconds since the epoch.
    pub now: u64,
    /// First journal sequence number for each journal (gfs2-utils picks a
    /// random one in `0..blocks`); `None` picks randomly.
    pub seq_seed: Option<u64>,
}

/// Numbers the summary and tests need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub master: Inum,
    pub root: Inum,
    pub journals: Vec<Inum>,
    pub next_inum: u64,
    pub statfs: StatfsChange,
}

/// Blocks of metadata waiting to be written, by address.
type Blocks = BTreeMap<u64, Vec<u8>>;

/// A random-enough number for journal sequence starts, without a dependency
/// on a RNG crate: the v4 UUID generator's OS randomness.
fn random_u64() -> u64 {
    let b = *uuid::Uuid::new_v4().as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Sizes of the levels of a metadata tree mapping `data` blocks: element 0
/// is the data level, the last is the level the dinode points at. The tree
/// height is the vector's length.
fn tree_levels(bsize: u32, data: u64) -> Vec<u64> {
    let mut lv = vec![data];
    while lv.last().copied().unwrap_or(0) > layout::diptrs(bsize) {
        let n = lv
            .last()
            .copied()
            .unwrap_or(0)
            .div_ceil(layout::inptrs(bsize));
        lv.push(n);
    }
    lv
}

/// Fill `area` with big-endian block pointers.
fn put_ptrs(area: &mut [u8], ptrs: &[u64]) {
    for (slot, p) in area.chunks_exact_mut(8).zip(ptrs) {
        slot.copy_from_slice(&p.to_be_bytes());
    }
}

/// Writes a run of consecutive blocks through a large buffer.
struct SeqWriter<'f> {
    file: &'f dyn BlockDevice,
    bsize: u64,
    next: u64,
    start: u64,
    buf: Vec<u8>,
}

impl<'f> SeqWriter<'f> {
    const CHUNK: usize = 4 << 20;

    fn new(file: &'f dyn BlockDevice, bsize: u32, start: u64) -> Self {
        SeqWriter {
            file,
            bsize: bsize.into(),
            next: start,
            start,
            buf: Vec::with_capacity(Self::CHUNK),
        }
    }

    fn push(&mut self, block: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(block);
        self.next += 1;
        if self.buf.len() >= Self::CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.file
                .write_at(&self.buf, self.start * self.bsize)
                .with_context(|| format!("writing blocks {}..{}", self.start, self.next))?;
            self.buf.clear();
        }
        self.start = self.next;
        Ok(())
    }
}

/// A dinode being assembled, with its block.
struct Node {
    di: Dinode,
    block: Vec<u8>,
}

/// A directory whose entries are collected first and laid out at the end.
struct Dir {
    node: Node,
    entries: Vec<Entry>,
}

struct Builder<'a> {
    o: &'a BuildOptions,
    bsize: u32,
    alloc: Allocator,
    blocks: Blocks,
    next_inum: u64,
}

impl<'a> Builder<'a> {
    fn new_dinode(&mut self, mode: u32, flags: u32) -> Result<Node> {
        let addr = self.alloc.block(BlockState::Dinode)?;
        let num = Inum {
            formal_ino: self.next_inum,
            addr,
        };
        self.next_inum += 1;
        let t = self.o.now;
        let di = Dinode {
            num,
            mode,
            nlink: 1,
            blocks: 1,
            atime: t,
            mtime: t,
            ctime: t,
            goal_meta: addr,
            goal_data: addr,
            flags,
            ..Dinode::default()
        };
        Ok(Node {
            di,
            block: vec![0u8; self.bsize as usize],
        })
    }

    fn new_dir(&mut self, parent: Option<Inum>, mode: u32, flags: u32) -> Result<Dir> {
        let mut node = self.new_dinode(libc::S_IFDIR | mode, flags | dif::JDATA)?;
        node.di.nlink = 2;
        node.di.payload_format = format::DE;
        let me = node.di.num;
        Ok(Dir {
            node,
            entries: vec![
                Entry::new(".", me, dt::DIR),
                Entry::new("..", parent.unwrap_or(me), dt::DIR),
            ],
        })
    }

    fn link(dir: &mut Dir, name: &str, node: &Node) {
        let is_dir = node.di.is_dir();
        dir.entries.push(Entry::new(
            name,
            node.di.num,
            gfs2_ondisk::consts::ifmt_to_dt(node.di.mode),
        ));
        if is_dir {
            dir.node.di.nlink += 1;
        }
    }

    /// Give `node` `data` blocks (already formatted), with indirect blocks
    /// as needed, all allocated first-fit after the dinode.
    fn attach_blocks(&mut self, node: &mut Node, data: Vec<Vec<u8>>) -> Result<()> {
        let bsize = self.bsize;
        let levels = tree_levels(bsize, data.len() as u64);
        let height = levels.len();
        // Allocate top-down: the level under the dinode first, data last.
        let mut addrs: Vec<Vec<u64>> = vec![Vec::new(); height];
        for lvl in (0..height).rev() {
            for _ in 0..levels[lvl] {
                addrs[lvl].push(self.alloc.block(BlockState::Used)?);
            }
        }
        put_ptrs(&mut node.block[Dinode::SIZE..], &addrs[height - 1]);
        let per = layout::inptrs(bsize) as usize;
        for lvl in (1..height).rev() {
            for (i, a) in addrs[lvl].iter().enumerate() {
                let mut b = vec![0u8; bsize as usize];
                MetaHeader::new(metatype::IN, format::IN).write(&mut b)?;
                let lo = (i * per).min(addrs[lvl - 1].len());
                let hi = ((i + 1) * per).min(addrs[lvl - 1].len());
                put_ptrs(&mut b[MetaHeader::SIZE..], &addrs[lvl - 1][lo..hi]);
                self.blocks.insert(*a, b);
            }
        }
        for (a, b) in addrs[0].iter().zip(data) {
            self.blocks.insert(*a, b);
        }
        let meta: u64 = levels[1..].iter().sum();
        node.di.height = height as u16;
        node.di.blocks = 1 + meta + levels[0];
        node.di.goal_data = addrs[0].last().copied().unwrap_or(node.di.num.addr);
        node.di.goal_meta = if height > 1 {
            addrs[1].last().copied().unwrap_or(node.di.num.addr)
        } else {
            node.di.num.addr
        };
        Ok(())
    }

    /// Store `content` as a regular file's data: stuffed if it fits, else in
    /// data blocks. `capacity` may exceed the content to reserve room.
    fn set_content(&mut self, node: &mut Node, content: &[u8], capacity: usize) -> Result<()> {
        let stuffed = layout::stuffed_max(self.bsize) as usize;
        node.di.size = content.len() as u64;
        if capacity <= stuffed {
            node.block[Dinode::SIZE..Dinode::SIZE + content.len()].copy_from_slice(content);
            return Ok(());
        }
        let bs = self.bsize as usize;
        let nblocks = capacity.div_ceil(bs);
        let data = (0..nblocks)
            .map(|i| {
                let mut b = vec![0u8; bs];
                let lo = (i * bs).min(content.len());
                let hi = ((i + 1) * bs).min(content.len());
                b[..hi - lo].copy_from_slice(&content[lo..hi]);
                b
            })
            .collect();
        self.attach_blocks(node, data)
    }

    fn finish_node(&mut self, mut node: Node) -> Result<()> {
        node.di.write(&mut node.block)?;
        self.blocks.insert(node.di.num.addr, node.block);
        Ok(())
    }

    /// Lay out a directory's entries (stuffed or exhash) and queue its blocks.
    fn finish_dir(&mut self, dir: Dir) -> Result<()> {
        let Dir { mut node, entries } = dir;
        let bsize = self.bsize;
        node.di.entries = entries.len() as u32;
        if dirlayout::fits_stuffed(bsize, &entries) {
            let refs: Vec<&Entry> = entries.iter().collect();
            dirlayout::pack(&mut node.block[Dinode::SIZE..], &refs).map_err(anyhow::Error::msg)?;
            node.di.size = layout::stuffed_max(bsize);
            return self.finish_node(node);
        }
        let (depth, leaves) =
            dirlayout::plan_exhash(bsize, &entries).map_err(anyhow::Error::msg)?;
        let mut table = Vec::with_capacity(8usize << depth);
        let mut nleaves = 0u64;
        for l in &leaves {
            let addr = self.alloc.block(BlockState::Used)?;
            nleaves += 1;
            let mut b = vec![0u8; bsize as usize];
            let leaf = Leaf {
                depth: l.lf_depth,
                entries: l.entries.len() as u16,
                inode: node.di.num.addr,
                ..Leaf::default()
            };
            leaf.write(&mut b)?;
            dirlayout::pack(&mut b[Leaf::SIZE..], &l.entries).map_err(anyhow::Error::msg)?;
            self.blocks.insert(addr, b);
            for _ in 0..(1u64 << (depth - l.lf_depth)) {
                table.extend_from_slice(&addr.to_be_bytes());
            }
            node.di.goal_meta = addr;
        }
        node.di.flags |= dif::EXHASH;
        node.di.payload_format = 0;
        node.di.depth = depth;
        node.di.size = table.len() as u64;
        if table.len() <= layout::stuffed_max(bsize) as usize {
            node.block[Dinode::SIZE..Dinode::SIZE + table.len()].copy_from_slice(&table);
            node.di.blocks = 1 + nleaves;
        } else {
            // Directory data blocks carry a JD header; the table continues
            // after it in each block.
            let payload = bsize as usize - MetaHeader::SIZE;
            let data = table
                .chunks(payload)
                .map(|c| {
                    let mut b = vec![0u8; bsize as usize];
                    let _ = MetaHeader::new(metatype::JD, format::JD).write(&mut b);
                    b[MetaHeader::SIZE..MetaHeader::SIZE + c.len()].copy_from_slice(c);
                    b
                })
                .collect();
            let goal_leaf = node.di.goal_meta;
            self.attach_blocks(&mut node, data)?;
            node.di.blocks += nleaves;
            if node.di.height == 1 {
                node.di.goal_meta = goal_leaf;
            }
        }
        self.finish_node(node)
    }
}

/// Write one journal: dinode, indirect blocks and a clean log header in
/// every data block, as one sequential stream.
fn write_journal(file: &dyn BlockDevice, o: &BuildOptions, inum: Inum, total: u64) -> Result<()> {
    let bsize = o.bsize;
    let bs = bsize as usize;
    let size = u64::from(o.jsize_mb) << 20;
    let dblocks = size.div_ceil(u64::from(bsize));
    let levels = tree_levels(bsize, dblocks);
    let height = levels.len();
    let meta: u64 = levels[1..].iter().sum();
    if 1 + meta + dblocks != total {
        bail!("journal layout mismatch: {} != {total}", 1 + meta + dblocks);
    }
    let addr = inum.addr;
    let goal_data = addr + total - 1;
    let t = o.now;
    let di = Dinode {
        num: inum,
        mode: libc::S_IFREG | 0o600,
        nlink: 1,
        size,
        blocks: total,
        atime: t,
        mtime: t,
        ctime: t,
        goal_meta: goal_data - dblocks,
        goal_data,
        flags: dif::SYSTEM,
        height: height as u16,
        ..Dinode::default()
    };
    let mut w = SeqWriter::new(file, bsize, addr);
    // Level k's blocks start right after level k+1's (the dinode is the top).
    let mut level_start = vec![0u64; height];
    let mut next = addr + 1;
    for lvl in (0..height).rev() {
        level_start[lvl] = next;
        next += levels[lvl];
    }
    let mut b = vec![0u8; bs];
    di.write(&mut b)?;
    let top: Vec<u64> = (0..levels[height - 1])
        .map(|i| level_start[height - 1] + i)
        .collect();
    put_ptrs(&mut b[Dinode::SIZE..], &top);
    w.push(&b)?;
    let per = layout::inptrs(bsize);
    for lvl in (1..height).rev() {
        for i in 0..levels[lvl] {
            b.fill(0);
            MetaHeader::new(metatype::IN, format::IN).write(&mut b)?;
            let lo = (i * per).min(levels[lvl - 1]);
            let hi = ((i + 1) * per).min(levels[lvl - 1]);
            let ptrs: Vec<u64> = (lo..hi).map(|p| level_start[lvl - 1] + p).collect();
            put_ptrs(&mut b[MetaHeader::SIZE..], &ptrs);
            w.push(&b)?;
        }
    }
    let mut seq = o.seq_seed.unwrap_or_else(random_u64) % dblocks;
    let first = level_start[0];
    for i in 0..dblocks {
        let h = LogHeader {
            sequence: seq,
            flags: lh::UNMOUNT | lh::USERSPACE,
            blkno: i as u32,
            addr: first + i,
            jinode: addr,
            ..LogHeader::default()
        };
        h.write_block(&mut b)?;
        w.push(&b)?;
        seq += 1;
        if seq == dblocks {
            seq = 0;
        }
    }
    w.flush()
}

/// Encode a resource group's header and bitmap blocks.
fn rgrp_blocks(bsize: u32, rg: &crate::alloc::RgState) -> Result<Vec<u8>> {
    let bs = bsize as usize;
    let s = &rg.spec;
    let mut buf = vec![0u8; bs * s.length as usize];
    let hdr = Rgrp {
        free: rg.free,
        dinodes: rg.dinodes,
        skip: s.skip,
        data0: s.data0,
        data: s.data,
        bitbytes: s.bitbytes,
        ..Rgrp::default()
    };
    hdr.write_with_crc(&mut buf[..bs])?;
    for i in 1..s.length as usize {
        MetaHeader::new(metatype::RB, format::RB).write(&mut buf[i * bs..])?;
    }
    if let Some(bm) = &rg.bitmap {
        let mut rest: &[u8] = bm;
        for i in 0..s.length as usize {
            let off = if i == 0 { Rgrp::SIZE } else { MetaHeader::SIZE };
            let n = rest.len().min(bs - off);
            buf[i * bs + off..i * bs + off + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
    }
    Ok(buf)
}

/// Write the whole filesystem described by `layout` to `file`.
pub fn build(file: &dyn BlockDevice, lay: &Layout, o: &BuildOptions) -> Result<Built> {
    let bsize = o.bsize;
    if lay.rgrps.len() < lay.journals as usize {
        bail!("layout has fewer resource groups than journals");
    }
    let mut b = Builder {
        o,
        bsize,
        alloc: Allocator::new(&lay.rgrps),
        blocks: Blocks::new(),
        next_inum: 1,
    };

    let mut prog = Progress::start("Adding journals: ", lay.journals.into(), o.quiet);
    let mut journals = Vec::new();
    for j in 0..lay.journals {
        prog.update(u64::from(j) + 1);
        let len = u32::try_from(lay.journal_blocks).context("journal too large")?;
        let addr = b
            .alloc
            .extent_at_start(j as usize, len)
            .with_context(|| format!("Failed to allocate space for journal {j}"))?;
        let inum = Inum {
            formal_ino: b.next_inum,
            addr,
        };
        b.next_inum += 1;
        write_journal(file, o, inum, lay.journal_blocks)
            .with_context(|| format!("Failed to write journal {j}"))?;
        journals.push(inum);
    }
    prog.finish("Done\n");

    // The system directories and files, in gfs2-utils' creation order.
    let mut master = b.new_dir(None, 0o755, dif::SYSTEM)?;
    let mut jindex = b.new_dir(Some(master.node.di.num), 0o700, dif::SYSTEM)?;
    Builder::link(&mut master, "jindex", &jindex.node);
    for (j, inum) in journals.iter().enumerate() {
        jindex
            .entries
            .push(Entry::new(&format!("journal{j}"), *inum, dt::REG));
    }
    let mut per_node = b.new_dir(Some(master.node.di.num), 0o700, dif::SYSTEM)?;
    Builder::link(&mut master, "per_node", &per_node.node);
    let sysreg = libc::S_IFREG | 0o600;
    for j in 0..lay.journals {
        let mut ir = b.new_dinode(sysreg, dif::SYSTEM | dif::JDATA)?;
        ir.di.size = gfs2_ondisk::InumRange::SIZE as u64;
        Builder::link(&mut per_node, &format!("inum_range{j}"), &ir);
        b.finish_node(ir)?;
        let mut sc = b.new_dinode(sysreg, dif::SYSTEM | dif::JDATA)?;
        sc.di.size = StatfsChange::SIZE as u64;
        Builder::link(&mut per_node, &format!("statfs_change{j}"), &sc);
        b.finish_node(sc)?;
        let mut qc = b.new_dinode(sysreg, dif::SYSTEM)?;
        Builder::link(&mut per_node, &format!("quota_change{j}"), &qc);
        let qblocks = (u64::from(o.qcsize_mb) << 20) / u64::from(bsize);
        let data = (0..qblocks)
            .map(|_| {
                let mut blk = vec![0u8; bsize as usize];
                let _ = MetaHeader::new(metatype::QC, format::QC).write(&mut blk);
                blk
            })
            .collect();
        b.attach_blocks(&mut qc, data)?;
        qc.di.size = qblocks * u64::from(bsize);
        b.finish_node(qc)?;
    }
    let mut inum_file = b.new_dinode(sysreg, dif::SYSTEM | dif::JDATA)?;
    Builder::link(&mut master, "inum", &inum_file);
    let mut statfs_file = b.new_dinode(sysreg, dif::SYSTEM | dif::JDATA)?;
    Builder::link(&mut master, "statfs", &statfs_file);
    let mut rindex = b.new_dinode(sysreg, dif::SYSTEM | dif::JDATA)?;
    rindex.di.payload_format = format::RI;
    Builder::link(&mut master, "rindex", &rindex);
    let mut ri_bytes = Vec::with_capacity(lay.rgrps.len() * Rindex::SIZE);
    for s in &lay.rgrps {
        let ri = Rindex {
            addr: s.addr,
            length: s.length,
            data0: s.data0,
            data: s.data,
            bitbytes: s.bitbytes,
            ..Rindex::default()
        };
        ri_bytes.extend_from_slice(&ri.to_bytes());
    }
    // Like gfs2-utils, reserve room for one more entry (for gfs2_grow).
    b.set_content(&mut rindex, &ri_bytes, ri_bytes.len() + Rindex::SIZE)?;
    b.finish_node(rindex)?;
    let mut quota = b.new_dinode(sysreg, dif::SYSTEM | dif::JDATA)?;
    quota.di.payload_format = format::QU;
    Builder::link(&mut master, "quota", &quota);
    // Records for user 0 and group 0, each charged one block (the root).
    let q = Quota {
        value: 1,
        ..Quota::default()
    };
    let qbytes = [q.to_bytes(), q.to_bytes()].concat();
    b.set_content(&mut quota, &qbytes, qbytes.len())?;
    b.finish_node(quota)?;
    let root_flags = if o.root_inherit_jdata {
        dif::INHERIT_JDATA
    } else {
        0
    };
    let root = b.new_dir(None, 0o755, root_flags)?;
    let root_inum = root.node.di.num;
    let master_inum = master.node.di.num;

    b.finish_dir(jindex)?;
    b.finish_dir(per_node)?;
    b.finish_dir(master)?;
    b.finish_dir(root)?;

    let next_inum = b.next_inum;
    b.set_content(&mut inum_file, &next_inum.to_be_bytes(), 8)?;
    b.finish_node(inum_file)?;
    // The statfs file is written last so that it counts every allocation.
    let (total, free, dinodes) = b.alloc.totals();
    let sc = StatfsChange {
        total: total as i64,
        free: free as i64,
        dinodes: dinodes as i64,
    };
    b.set_content(&mut statfs_file, &sc.to_bytes(), StatfsChange::SIZE)?;
    b.finish_node(statfs_file)?;

    let mut prog = Progress::start(
        "Building resource groups: ",
        b.alloc.rgrps.len() as u64,
        o.quiet,
    );
    for (i, rg) in b.alloc.rgrps.iter().enumerate() {
        prog.update(i as u64 + 1);
        let buf = rgrp_blocks(bsize, rg)?;
        file.write_at(&buf, rg.spec.addr * u64::from(bsize))
            .with_context(|| format!("writing resource group at block {}", rg.spec.addr))?;
    }
    prog.finish("Done\n");

    // Metadata in address order, contiguous runs in one write each. The
    // label is gfs2-utils' (the quota file is the last one it reports).
    if !o.quiet {
        eprint!("Creating quota file: ");
    }
    let mut run: Option<SeqWriter> = None;
    for (addr, blk) in &b.blocks {
        let cont = run.as_ref().is_some_and(|w| w.next == *addr);
        if !cont {
            if let Some(mut w) = run.take() {
                w.flush()?;
            }
            run = Some(SeqWriter::new(file, bsize, *addr));
        }
        if let Some(w) = run.as_mut() {
            w.push(blk)?;
        }
    }
    if let Some(mut w) = run.take() {
        w.flush()?;
    }
    if !o.quiet {
        eprintln!("Done");
        eprint!("Writing superblock and syncing: ");
    }
    let sb = Superblock {
        fs_format: o.format,
        bsize,
        bsize_shift: bsize.trailing_zeros(),
        master_dir: master_inum,
        root_dir: root_inum,
        lockproto: gfs2_ondisk::sb::lockname("sb_lockproto", &o.lockproto)?,
        locktable: gfs2_ondisk::sb::lockname("sb_locktable", &o.locktable)?,
        uuid: o.uuid,
        ..Superblock::default()
    };
    // Zero everything before the superblock, then write it.
    let sb_addr = layout::sb_addr(bsize);
    let mut head = vec![0u8; (sb_addr as usize + 1) * bsize as usize];
    sb.write(&mut head[sb_addr as usize * bsize as usize..])?;
    file.write_at(&head, 0).context("writing the superblock")?;
    file.flush().context("syncing the device")?;
    if !o.quiet {
        eprintln!("Done");
    }
    Ok(Built {
        master: master_inum,
        root: root_inum,
        journals,
        next_inum,
        statfs: sc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_levels_match_space_for_data() {
        for bsize in [512u32, 1024, 4096] {
            for mb in [1u64, 8, 128, 1024] {
                let bytes = mb << 20;
                let d = bytes / u64::from(bsize);
                let lv = tree_levels(bsize, d);
                let total: u64 = 1 + lv.iter().sum::<u64>();
                assert_eq!(total, crate::plan::space_for_data(bsize, bytes));
                assert_eq!(
                    lv.len() as u16,
                    layout::height_for_size(bsize, bytes).unwrap()
                );
            }
        }
    }
}
