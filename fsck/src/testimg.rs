//! Populating a freshly made filesystem image offline, for tests and
//! benchmarks: directories (stuffed or exhash), regular files of any size
//! (stuffed or with a metadata tree), hard links. Every count the checkers
//! look at (bitmaps, rgrp free/dinodes and rg_crc, statfs, link counts,
//! di_blocks, di_entries) is kept consistent, so `fsck.gfs2 -n` finds the
//! result clean. Data blocks are allocated but not written.

use gfs2_mkfs::dirlayout::{self, Entry};
use gfs2_ondisk::{
    bitmap_get, bitmap_set, consts::dif, consts::dt, consts::format, consts::metatype, layout,
    BlockState, Dinode, DirentIter, Inum, Leaf, MetaHeader, Rgrp, Rindex, StatfsChange, Superblock,
};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

type Res<T> = Result<T, String>;

fn e<E: std::fmt::Display>(x: E) -> String {
    x.to_string()
}

pub struct Rg {
    pub ri: Rindex,
    pub hdr: Rgrp,
    pub bits: Vec<u8>,
}

struct DirBuild {
    inum: Inum,
    parent: Inum,
    mode: u32,
    entries: Vec<Entry>,
    subdirs: u32,
    existing: bool,
}

/// A filesystem image being populated.
pub struct Image {
    file: File,
    pub bsize: u32,
    pub sb: Superblock,
    pub rgs: Vec<Rg>,
    cursor: (usize, u64),
    next_formal: u64,
    inum_file: u64,
    statfs_file: u64,
    dirs: BTreeMap<u64, DirBuild>,
    /// Regular files and symlinks: addr -> (dinode, stuffed payload).
    files: BTreeMap<u64, Dinode>,
    nlinks: BTreeMap<u64, u32>,
    blocks: BTreeMap<u64, Vec<u8>>,
    used: u64,
    dinodes: u64,
}

fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

impl Image {
    pub fn open(path: &Path) -> Res<Image> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(e)?;
        let mut sbb = vec![0u8; Superblock::SIZE];
        file.read_exact_at(&mut sbb, 65536).map_err(e)?;
        let sb = Superblock::parse(&sbb).map_err(e)?;
        sb.validate().map_err(e)?;
        let mut img = Image {
            file,
            bsize: sb.bsize,
            sb,
            rgs: Vec::new(),
            cursor: (0, 0),
            next_formal: 0,
            inum_file: 0,
            statfs_file: 0,
            dirs: BTreeMap::new(),
            files: BTreeMap::new(),
            nlinks: BTreeMap::new(),
            blocks: BTreeMap::new(),
            used: 0,
            dinodes: 0,
        };
        let master = img.sb.master_dir.addr;
        let ents = img.entries(master)?;
        let find = |n: &str| {
            ents.iter()
                .find(|(x, _)| x == n)
                .map(|(_, i)| i.addr)
                .ok_or(format!("no {n} in master"))
        };
        img.inum_file = find("inum")?;
        img.statfs_file = find("statfs")?;
        let ri_addr = find("rindex")?;
        let data = img.file_data(ri_addr)?;
        for c in data.chunks_exact(Rindex::SIZE) {
            let ri = Rindex::parse(c).map_err(e)?;
            let raw = img.read_n(ri.addr, ri.length as usize)?;
            let hdr = Rgrp::parse(&raw).map_err(e)?;
            let bs = img.bsize as usize;
            let mut bits = raw[Rgrp::SIZE..bs].to_vec();
            for k in 1..ri.length as usize {
                bits.extend_from_slice(&raw[k * bs + MetaHeader::SIZE..(k + 1) * bs]);
            }
            bits.truncate(ri.bitbytes as usize);
            img.rgs.push(Rg { ri, hdr, bits });
        }
        img.rgs.sort_by_key(|r| r.ri.addr);
        let inum = img.read(img.inum_file)?;
        img.next_formal = be64(&inum, Dinode::SIZE).max(100);
        // Root: reuse its entries.
        let root = img.sb.root_dir;
        let rd = Dinode::parse(&img.read(root.addr)?).map_err(e)?;
        let mut entries = Vec::new();
        let mut subdirs = 0;
        for (n, i) in img.entries(root.addr)? {
            if n == "." || n == ".." {
                continue;
            }
            entries.push(Entry::new(&n, i, dt::DIR));
            subdirs += 1;
        }
        img.dirs.insert(
            root.addr,
            DirBuild {
                inum: root,
                parent: root,
                mode: rd.mode,
                entries,
                subdirs,
                existing: true,
            },
        );
        Ok(img)
    }

    fn read_n(&self, blk: u64, n: usize) -> Res<Vec<u8>> {
        let mut b = vec![0u8; self.bsize as usize * n];
        self.file
            .read_exact_at(&mut b, blk * u64::from(self.bsize))
            .map_err(e)?;
        Ok(b)
    }

    pub fn read(&self, blk: u64) -> Res<Vec<u8>> {
        self.read_n(blk, 1)
    }

    fn entries(&self, dir: u64) -> Res<Vec<(String, Inum)>> {
        let b = self.read(dir)?;
        let d = Dinode::parse(&b).map_err(e)?;
        let mut blocks = Vec::new();
        if d.is_exhash() {
            // The hash table: stuffed, or in JD blocks after their header.
            let n = 1usize << d.depth.min(20);
            let mut table = Vec::with_capacity(n);
            if d.height == 0 {
                for i in 0..n.min((b.len() - Dinode::SIZE) / 8) {
                    table.push(be64(&b, Dinode::SIZE + 8 * i));
                }
            } else {
                if d.height != 1 {
                    return Err("exhash system directory taller than 1".into());
                }
                let mut i = 0;
                while table.len() < n && Dinode::SIZE + 8 * i + 8 <= b.len() {
                    let p = be64(&b, Dinode::SIZE + 8 * i);
                    let jb = self.read(p)?;
                    let mut o = MetaHeader::SIZE;
                    while o + 8 <= jb.len() && table.len() < n {
                        table.push(be64(&jb, o));
                        o += 8;
                    }
                    i += 1;
                }
            }
            table.dedup();
            let mut seen = std::collections::BTreeSet::new();
            for p in table {
                if seen.insert(p) {
                    blocks.push((self.read(p)?, Leaf::SIZE));
                }
            }
        } else {
            blocks.push((b, Dinode::SIZE));
        }
        Ok(blocks
            .iter()
            .flat_map(|(blk, start)| {
                DirentIter::new(blk, *start)
                    .flatten()
                    .filter(|x| !x.dirent.is_unused())
                    .map(|x| (String::from_utf8_lossy(x.name).into_owned(), x.dirent.inum))
                    .collect::<Vec<_>>()
            })
            .collect())
    }

    fn file_data(&self, addr: u64) -> Res<Vec<u8>> {
        let b = self.read(addr)?;
        let d = Dinode::parse(&b).map_err(e)?;
        let size = d.size as usize;
        if d.height == 0 {
            return Ok(b[Dinode::SIZE..Dinode::SIZE + size].to_vec());
        }
        if d.height != 1 {
            return Err("system file taller than 1".into());
        }
        let mut out = Vec::new();
        let mut i = 0;
        while out.len() < size {
            let p = be64(&b, Dinode::SIZE + 8 * i);
            out.extend_from_slice(&self.read(p)?);
            i += 1;
        }
        out.truncate(size);
        Ok(out)
    }

    /// Allocate a block (skipping rgrps whose first block is a journal's).
    fn alloc(&mut self, st: BlockState) -> Res<u64> {
        loop {
            let (ri, idx) = self.cursor;
            let Some(rg) = self.rgs.get_mut(ri) else {
                return Err("filesystem full".into());
            };
            if idx >= u64::from(rg.ri.data) {
                self.cursor = (ri + 1, 0);
                continue;
            }
            self.cursor.1 += 1;
            if bitmap_get(&rg.bits, idx as usize) == Some(BlockState::Free) {
                bitmap_set(&mut rg.bits, idx as usize, st);
                rg.hdr.free -= 1;
                if st == BlockState::Dinode {
                    rg.hdr.dinodes += 1;
                    self.dinodes += 1;
                }
                self.used += 1;
                return Ok(rg.ri.data0 + idx);
            }
        }
    }

    fn new_dinode(&mut self, mode: u32) -> Res<Dinode> {
        let addr = self.alloc(BlockState::Dinode)?;
        self.next_formal += 1;
        Ok(Dinode {
            num: Inum {
                formal_ino: self.next_formal,
                addr,
            },
            mode,
            nlink: 1,
            blocks: 1,
            atime: 1_700_000_000,
            mtime: 1_700_000_000,
            ctime: 1_700_000_000,
            goal_meta: addr,
            goal_data: addr,
            ..Dinode::default()
        })
    }

    fn add_entry(&mut self, parent: u64, name: &str, inum: Inum, t: u16) -> Res<()> {
        let d = self
            .dirs
            .get_mut(&parent)
            .ok_or(format!("{parent} is not a directory being built"))?;
        d.entries.push(Entry::new(name, inum, t));
        Ok(())
    }

    pub fn root(&self) -> u64 {
        self.sb.root_dir.addr
    }

    pub fn mkdir(&mut self, parent: u64, name: &str) -> Res<u64> {
        let di = self.new_dinode(0o40755)?;
        let pinum = self.dirs.get(&parent).map(|d| d.inum).ok_or("no parent")?;
        self.add_entry(parent, name, di.num, dt::DIR)?;
        if let Some(p) = self.dirs.get_mut(&parent) {
            p.subdirs += 1;
        }
        self.dirs.insert(
            di.num.addr,
            DirBuild {
                inum: di.num,
                parent: pinum,
                mode: di.mode,
                entries: Vec::new(),
                subdirs: 0,
                existing: false,
            },
        );
        Ok(di.num.addr)
    }

    /// A regular file of `size` bytes (contents not written).
    pub fn create(&mut self, parent: u64, name: &str, size: u64) -> Res<u64> {
        let mut di = self.new_dinode(0o100644)?;
        di.size = size;
        let addr = di.num.addr;
        self.add_entry(parent, name, di.num, dt::REG)?;
        let bs = u64::from(self.bsize);
        let mut block = vec![0u8; self.bsize as usize];
        if size > layout::stuffed_max(self.bsize) {
            let h = layout::height_for_size(self.bsize, size).ok_or("file too large")?;
            di.height = h;
            let n = size.div_ceil(bs);
            let mut level: Vec<u64> = Vec::with_capacity(n as usize);
            for _ in 0..n {
                level.push(self.alloc(BlockState::Used)?);
            }
            di.goal_data = level.last().copied().unwrap_or(addr);
            di.blocks += n;
            let inptrs = layout::inptrs(self.bsize) as usize;
            for _ in 1..h {
                let mut up = Vec::new();
                for chunk in level.chunks(inptrs) {
                    let ib = self.alloc(BlockState::Used)?;
                    let mut b = vec![0u8; self.bsize as usize];
                    MetaHeader::new(metatype::IN, format::IN)
                        .write(&mut b)
                        .map_err(e)?;
                    for (i, p) in chunk.iter().enumerate() {
                        b[MetaHeader::SIZE + 8 * i..MetaHeader::SIZE + 8 * i + 8]
                            .copy_from_slice(&p.to_be_bytes());
                    }
                    self.blocks.insert(ib, b);
                    di.blocks += 1;
                    up.push(ib);
                }
                level = up;
            }
            for (i, p) in level.iter().enumerate() {
                block[Dinode::SIZE + 8 * i..Dinode::SIZE + 8 * i + 8]
                    .copy_from_slice(&p.to_be_bytes());
            }
        }
        self.blocks.insert(addr, block);
        self.files.insert(addr, di);
        self.nlinks.insert(addr, 1);
        Ok(addr)
    }

    /// Another name for regular file `target`.
    pub fn link(&mut self, parent: u64, name: &str, target: u64) -> Res<()> {
        let num = self.files.get(&target).ok_or("not a file")?.num;
        self.add_entry(parent, name, num, dt::REG)?;
        *self.nlinks.entry(target).or_insert(1) += 1;
        Ok(())
    }

    fn finish_dir(&mut self, d: DirBuild) -> Res<()> {
        let bsize = self.bsize;
        let addr = d.inum.addr;
        let mut di = if d.existing {
            Dinode::parse(&self.read(addr)?).map_err(e)?
        } else {
            let mut di = Dinode {
                num: d.inum,
                mode: d.mode,
                atime: 1_700_000_000,
                mtime: 1_700_000_000,
                ctime: 1_700_000_000,
                goal_meta: addr,
                goal_data: addr,
                ..Dinode::default()
            };
            di.flags = 0;
            di
        };
        let mut entries = vec![
            Entry::new(".", d.inum, dt::DIR),
            Entry::new("..", d.parent, dt::DIR),
        ];
        entries.extend(d.entries);
        di.nlink = 2 + d.subdirs;
        di.entries = entries.len() as u32;
        di.height = 0;
        di.depth = 0;
        di.flags &= !dif::EXHASH;
        di.blocks = 1;
        let mut block = vec![0u8; bsize as usize];
        if dirlayout::fits_stuffed(bsize, &entries) {
            let refs: Vec<&Entry> = entries.iter().collect();
            dirlayout::pack(&mut block[Dinode::SIZE..], &refs)?;
            di.size = layout::stuffed_max(bsize);
        } else {
            let (depth, leaves) = dirlayout::plan_exhash(bsize, &entries)?;
            let mut table: Vec<u8> = Vec::with_capacity(8usize << depth);
            for l in &leaves {
                let la = self.alloc(BlockState::Used)?;
                di.blocks += 1;
                let mut b = vec![0u8; bsize as usize];
                Leaf {
                    depth: l.lf_depth,
                    entries: l.entries.len() as u16,
                    inode: addr,
                    ..Leaf::default()
                }
                .write(&mut b)
                .map_err(e)?;
                dirlayout::pack(&mut b[Leaf::SIZE..], &l.entries)?;
                self.blocks.insert(la, b);
                for _ in 0..(1u64 << (depth - l.lf_depth)) {
                    table.extend_from_slice(&la.to_be_bytes());
                }
            }
            di.flags |= dif::EXHASH;
            di.depth = depth;
            di.size = table.len() as u64;
            if table.len() <= layout::stuffed_max(bsize) as usize {
                block[Dinode::SIZE..Dinode::SIZE + table.len()].copy_from_slice(&table);
            } else {
                let payload = bsize as usize - MetaHeader::SIZE;
                let chunks: Vec<&[u8]> = table.chunks(payload).collect();
                if chunks.len() as u64 > layout::diptrs(bsize) {
                    return Err("directory too large for this populator".into());
                }
                di.height = 1;
                for (i, c) in chunks.iter().enumerate() {
                    let jb = self.alloc(BlockState::Used)?;
                    di.blocks += 1;
                    let mut b = vec![0u8; bsize as usize];
                    MetaHeader::new(metatype::JD, format::JD)
                        .write(&mut b)
                        .map_err(e)?;
                    b[MetaHeader::SIZE..MetaHeader::SIZE + c.len()].copy_from_slice(c);
                    self.blocks.insert(jb, b);
                    block[Dinode::SIZE + 8 * i..Dinode::SIZE + 8 * i + 8]
                        .copy_from_slice(&jb.to_be_bytes());
                }
            }
        }
        di.write(&mut block).map_err(e)?;
        self.blocks.insert(addr, block);
        Ok(())
    }

    /// Lay out the directories and write everything.
    pub fn finish(mut self) -> Res<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (_, d) in dirs {
            self.finish_dir(d)?;
        }
        let files = std::mem::take(&mut self.files);
        for (addr, mut di) in files {
            di.nlink = self.nlinks.get(&addr).copied().unwrap_or(1);
            let mut b = self
                .blocks
                .remove(&addr)
                .unwrap_or_else(|| vec![0u8; self.bsize as usize]);
            di.write(&mut b).map_err(e)?;
            self.blocks.insert(addr, b);
        }
        // Resource groups.
        let bs = self.bsize as usize;
        for rg in &self.rgs {
            let mut raw = self.read_n(rg.ri.addr, rg.ri.length as usize)?;
            rg.hdr.write_with_crc(&mut raw).map_err(e)?;
            let first = (bs - Rgrp::SIZE).min(rg.bits.len());
            raw[Rgrp::SIZE..Rgrp::SIZE + first].copy_from_slice(&rg.bits[..first]);
            let mut pos = first;
            for k in 1..rg.ri.length as usize {
                let n = (bs - MetaHeader::SIZE).min(rg.bits.len() - pos);
                let o = k * bs + MetaHeader::SIZE;
                raw[o..o + n].copy_from_slice(&rg.bits[pos..pos + n]);
                pos += n;
            }
            self.file
                .write_all_at(&raw, rg.ri.addr * bs as u64)
                .map_err(e)?;
        }
        // statfs and the next inode number.
        let mut sf = self.read(self.statfs_file)?;
        let mut sc = StatfsChange::parse(&sf[Dinode::SIZE..]).map_err(e)?;
        sc.free -= self.used as i64;
        sc.dinodes += self.dinodes as i64;
        sc.write(&mut sf[Dinode::SIZE..]).map_err(e)?;
        self.blocks.insert(self.statfs_file, sf);
        let mut inum = self.read(self.inum_file)?;
        inum[Dinode::SIZE..Dinode::SIZE + 8].copy_from_slice(&(self.next_formal + 1).to_be_bytes());
        self.blocks.insert(self.inum_file, inum);
        for (blk, b) in &self.blocks {
            self.file.write_all_at(b, blk * bs as u64).map_err(e)?;
        }
        self.file.sync_all().map_err(e)
    }
}

/// A tree of `dirs` directories under the root, each holding `files`
/// files of sizes cycling through stuffed, one-block, multi-block and
/// indirect sizes, plus a few hard links. Returns the number of inodes made.
pub fn populate(path: &Path, dirs: usize, files: usize, big: u64) -> Res<usize> {
    let mut img = Image::open(path)?;
    let root = img.root();
    let bs = u64::from(img.bsize);
    let sizes = [0, 100, bs, 5 * bs + 17, big];
    let mut n = 0;
    for d in 0..dirs {
        let dir = img.mkdir(root, &format!("dir{d}"))?;
        n += 1;
        let mut first = None;
        for f in 0..files {
            let a = img.create(dir, &format!("file{f}"), sizes[(d + f) % sizes.len()])?;
            first.get_or_insert(a);
            n += 1;
        }
        if let Some(a) = first {
            img.link(root, &format!("link{d}"), a)?;
        }
    }
    img.finish()?;
    Ok(n)
}
