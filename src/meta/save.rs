//! `savemeta`: the walk that chooses which blocks go into a metadata dump,
//! block for block the choice gfs2-utils' `gfs2_edit savemeta` makes, so
//! that a dump from either tool holds the same records.
//!
//! The superblock first; then, resource group by resource group in address
//! order, the header and bitmap blocks, every block whose bitmap state is
//! "dinode", and from each dinode its metadata tree: indirect blocks
//! (for a regular file all levels but the last, which holds user data),
//! directory hash tables, leaves and chained leaves, extended-attribute
//! blocks. System files (the master directory's children, the per-node
//! files when `per_node` is hashed) and files flagged `GFS2_DIF_SYSTEM`
//! (the journals) are followed to their last level, where only blocks that
//! carry a GFS2 header are kept: the journals' log headers and descriptors,
//! never journaled user data. A regular file's dinode keeps its 232-byte
//! header only; directories, symlinks, files with a tree and system files
//! keep the whole block. Record lengths follow gfs2_edit's per type (a log
//! header's structure, the superblock's structure, otherwise the block).
//!
//! The device is untrusted: a pointer outside the filesystem is reported
//! and skipped (as gfs2_edit does), a leaf chain that loops is cut, no
//! length from the disk indexes memory unchecked.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::time::Instant;

use gfs2_ondisk::consts::{dif, metatype, MAGIC as GFS2_MAGIC, MAX_META_HEIGHT};
use gfs2_ondisk::dinode::Dinode;
use gfs2_ondisk::rgrp::{Rindex, NBBY};
use gfs2_ondisk::sb::Superblock;

use super::format::{io_err, MetaError, Result, Writer};
use super::rindex;
use crate::dev::BlockDevice;

/// `sizeof(struct gfs2_log_header)` in the header gfs2-utils is built
/// against (the version-2 log header).
const LOG_HEADER_SIZE: usize = 120;
/// `sizeof(struct gfs2_meta_header)`.
const MH_SIZE: usize = 24;
/// `sizeof(struct gfs2_rgrp)`.
const RGRP_SIZE: usize = 128;
/// Bitmap state "dinode".
const BLKST_DINODE: u8 = 3;

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

/// What a dump came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Blocks of the filesystem (the end of its last resource group).
    pub fs_blocks: u64,
    pub bsize: u32,
    /// Records written, the superblock included.
    pub saved: u64,
}

/// Progress on a long dump: a line on stderr at most once a second, as
/// gfs2_edit prints one.
pub struct Progress {
    enabled: bool,
    last: Instant,
    printed: bool,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            last: Instant::now(),
            printed: false,
        }
    }

    /// Report that blocks up to `at` of `total` were handled, `done`
    /// records written; `force` prints at once and ends the line.
    pub fn report(&mut self, at: u64, total: u64, done: u64, force: bool) {
        if !self.enabled || total == 0 {
            return;
        }
        if !force && self.last.elapsed().as_secs() < 1 {
            return;
        }
        self.last = Instant::now();
        let pct = (u128::from(at.min(total)) * 100 / u128::from(total)) as u64;
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r{done} blocks saved ({pct}% complete)");
        if force {
            let _ = writeln!(e);
        }
        let _ = e.flush();
        self.printed = true;
    }
}

/// A run of consecutive blocks read together, with each one's type and
/// the length that is saved of it.
struct Range {
    start: u64,
    len: u64,
    buf: Vec<u8>,
    /// Metadata type of each block (0: no GFS2 header).
    types: Vec<u32>,
    lens: Vec<usize>,
}

impl Range {
    fn block(&self, i: usize, bsize: usize) -> &[u8] {
        &self.buf[i * bsize..(i + 1) * bsize]
    }
}

struct Saver<'a, W: Write> {
    dev: &'a dyn BlockDevice,
    bsize: usize,
    sb_addr: u64,
    /// End of the filesystem in blocks: pointers at or past it are bad.
    fssize: u64,
    /// gfs2_edit's "system files": the master directory's children (it
    /// takes them for the journals) and a hashed per_node's entries.
    system: HashSet<u64>,
    out: Writer<W>,
    progress: Progress,
    warnings: u64,
}

fn be32(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4)
        .map_or(0, |x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
}

fn be64(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8).map_or(0, |x| {
        let mut a = [0u8; 8];
        a.copy_from_slice(x);
        u64::from_be_bytes(a)
    })
}

fn is_meta(b: &[u8], ty: u32) -> bool {
    be32(b, 0) == GFS2_MAGIC && be32(b, 4) == ty
}

impl<'a, W: Write> Saver<'a, W> {
    fn warn(&mut self, msg: String) {
        self.warnings += 1;
        eprintln!("{msg}");
    }

    fn read(&self, blk: u64, n: u64) -> std::io::Result<Vec<u8>> {
        let bs = self.bsize as u64;
        let (off, end) = blk
            .checked_mul(bs)
            .and_then(|o| Some((o, n.checked_mul(bs)?.checked_add(o)?)))
            .filter(|(_, e)| *e <= self.dev.size())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "past the end of the device",
                )
            })?;
        let mut b = vec![0u8; (end - off) as usize];
        self.dev.read_at(&mut b, off)?;
        Ok(b)
    }

    fn is_system(&self, blk: u64) -> bool {
        self.system.contains(&blk)
    }

    /// How much of a dinode block is saved.
    fn dinode_len(&self, b: &[u8], owner: u64) -> usize {
        let Ok(di) = Dinode::parse(b) else {
            return self.bsize;
        };
        let fmt = di.mode & S_IFMT;
        if di.height > 0 || fmt == S_IFDIR || fmt == S_IFLNK || self.is_system(owner) {
            self.bsize
        } else {
            Dinode::SIZE
        }
    }

    /// gfs2_edit's type and saved length of one block.
    fn block_info(&self, b: &[u8], owner: u64) -> (u32, usize) {
        if be32(b, 0) != GFS2_MAGIC {
            let len = if self.is_system(owner) { self.bsize } else { 0 };
            return (0, len);
        }
        let ty = be32(b, 4);
        let len = match ty {
            metatype::SB => Superblock::SIZE,
            metatype::DI => self.dinode_len(b, owner),
            metatype::LH => LOG_HEADER_SIZE,
            _ => self.bsize,
        };
        (ty, len.min(self.bsize))
    }

    /// Read `len` blocks from `start` with their types, or `None` (with a
    /// warning) when they are outside the filesystem or unreadable.
    /// `owner` 0 means each block is its own owner.
    fn read_range(&mut self, start: u64, len: u64, owner: u64) -> Option<Range> {
        let inside =
            start >= self.sb_addr && start.checked_add(len).is_some_and(|end| end <= self.fssize);
        if !inside {
            self.warn(format!(
                "Warning: bad range 0x{start:x} ({len} blocks) ignored."
            ));
            return None;
        }
        let buf = match self.read(start, len) {
            Ok(b) => b,
            Err(e) => {
                self.warn(format!(
                    "Failed to read block range 0x{start:x} ({len} blocks): {e}"
                ));
                return None;
            }
        };
        let mut r = Range {
            start,
            len,
            buf,
            types: Vec::with_capacity(len as usize),
            lens: Vec::with_capacity(len as usize),
        };
        for i in 0..len as usize {
            let own = if owner == 0 { start + i as u64 } else { owner };
            let (t, l) = self.block_info(r.block(i, self.bsize), own);
            r.types.push(t);
            r.lens.push(l);
        }
        Some(r)
    }

    fn save(&mut self, blk: u64, data: &[u8]) -> Result<()> {
        self.out
            .record(blk, data)
            .map_err(io_err("writing the savemeta file"))?;
        Ok(())
    }

    fn save_range(&mut self, r: &Range) -> Result<()> {
        for i in 0..r.len as usize {
            let l = r.lens[i];
            self.save(r.start + i as u64, &r.block(i, self.bsize)[..l])?;
        }
        Ok(())
    }

    /// The data blocks of the extended attributes in one EA block.
    fn save_ea_block(&mut self, b: &[u8], owner: u64) -> Result<()> {
        let mut e = MH_SIZE;
        while e + 16 <= self.bsize {
            let rec_len = be32(b, e) as usize;
            let name_len = usize::from(b[e + 8]);
            let num_ptrs = usize::from(b[e + 11]);
            let first = (e + name_len + 16).div_ceil(8);
            for i in 0..num_ptrs {
                let off = (first + i) * 8;
                if off + 8 > self.bsize {
                    break;
                }
                let blk = be64(b, off);
                if let Some(r) = self.read_range(blk, 1, owner) {
                    self.save(blk, r.block(0, self.bsize))?;
                }
            }
            if rec_len == 0 {
                break;
            }
            e = match e.checked_add(rec_len) {
                Some(n) => n,
                None => break,
            };
        }
        Ok(())
    }

    fn save_indirect_range(
        &mut self,
        start: u64,
        len: u64,
        owner: u64,
        queue: Option<&mut VecDeque<Range>>,
    ) -> Result<()> {
        let Some(r) = self.read_range(start, len, owner) else {
            return Ok(());
        };
        self.save_range(&r)?;
        for i in 0..r.len as usize {
            if r.types[i] == metatype::EA {
                self.save_ea_block(r.block(i, self.bsize), owner)?;
            }
        }
        if let Some(q) = queue {
            q.push_back(r);
        }
        Ok(())
    }

    /// Save the blocks the pointers of `b` (from `head` on) point to, in
    /// runs of consecutive blocks; queue them for the next level if asked.
    fn save_indirect_blocks(
        &mut self,
        b: &[u8],
        owner: u64,
        mut queue: Option<&mut VecDeque<Range>>,
        head: usize,
    ) -> Result<()> {
        let mut old = 0u64;
        let mut run: Option<(u64, u64)> = None;
        let mut off = head;
        while off + 8 <= self.bsize {
            let p = be64(b, off);
            off += 8;
            if p == 0 || p == old {
                continue;
            }
            old = p;
            run = match run {
                None => Some((p, 1)),
                Some((s, l)) if s.checked_add(l) == Some(p) => Some((s, l + 1)),
                Some((s, l)) => {
                    self.save_indirect_range(s, l, owner, queue.as_deref_mut())?;
                    Some((p, 1))
                }
            };
        }
        if let Some((s, l)) = run {
            self.save_indirect_range(s, l, owner, queue)?;
        }
        Ok(())
    }

    /// Follow the `lf_next` chain of a leaf.
    fn save_leaf_chain(&mut self, leaf: &[u8]) -> Result<()> {
        let mut next = be64(leaf, 32);
        let mut seen = HashSet::new();
        while next != 0 {
            let blk = next;
            if blk > self.fssize || blk <= self.sb_addr || !seen.insert(blk) {
                return Ok(());
            }
            let b = match self.read(blk, 1) {
                Ok(b) => b,
                Err(e) => {
                    self.warn(format!("Failed to read leaf block {blk:x}: {e}"));
                    return Ok(());
                }
            };
            self.progress
                .report(blk, self.fssize, self.out.records(), false);
            if is_meta(&b, metatype::LF) {
                self.save(blk, &b)?;
            }
            next = be64(&b, 32);
        }
        Ok(())
    }

    /// The metadata tree, leaves and extended attributes of one dinode.
    fn save_inode_data(&mut self, ib: &[u8], iblk: u64) -> Result<()> {
        let Ok(di) = Dinode::parse(ib) else {
            return Ok(());
        };
        let is_dir = di.mode & S_IFMT == S_IFDIR;
        let is_exhash = is_dir && di.flags & dif::EXHASH != 0;
        let mut height = usize::from(di.height);
        if is_exhash {
            height += 1;
        } else if height > 0 && di.flags & dif::SYSTEM == 0 && !self.is_system(iblk) && !is_dir {
            height -= 1;
        }
        if height > usize::from(MAX_META_HEIGHT) + 1 {
            self.warn(format!(
                "Warning: dinode {iblk} (0x{iblk:x}) has height {}: its tree is not saved",
                di.height
            ));
            height = 0;
        }
        let mut queues: Vec<VecDeque<Range>> =
            (0..height.max(1)).map(|_| VecDeque::new()).collect();
        if height == 1 {
            self.save_indirect_blocks(ib, iblk, None, Dinode::SIZE)?;
        } else if height > 1 {
            self.save_indirect_blocks(ib, iblk, Some(&mut queues[0]), Dinode::SIZE)?;
        }
        for i in 1..height {
            let (done, rest) = queues.split_at_mut(i);
            let from = &mut done[i - 1];
            let last = !is_exhash && i == height - 1;
            while let Some(r) = from.pop_front() {
                for j in 0..r.len as usize {
                    let next = if last { None } else { Some(&mut rest[0]) };
                    self.save_indirect_blocks(r.block(j, self.bsize), iblk, next, MH_SIZE)?;
                }
                self.progress
                    .report(r.start + r.len, self.fssize, self.out.records(), false);
            }
        }
        if is_exhash && height > 0 {
            let leaves = std::mem::take(&mut queues[height - 1]);
            for r in leaves {
                for j in 0..r.len as usize {
                    self.save_leaf_chain(r.block(j, self.bsize))?;
                }
            }
        }
        if di.eattr != 0 {
            if let Some(r) = self.read_range(di.eattr, 1, iblk) {
                let b = r.block(0, self.bsize);
                self.save(di.eattr, &b[..r.lens[0]])?;
                match r.types[0] {
                    metatype::EA => self.save_ea_block(b, iblk)?,
                    metatype::IN => self.save_indirect_blocks(b, iblk, None, MH_SIZE)?,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn save_allocated_run(&mut self, start: u64, len: u64) -> Result<()> {
        let Some(r) = self.read_range(start, len, 0) else {
            return Ok(());
        };
        self.save_range(&r)?;
        for i in 0..r.len as usize {
            if r.types[i] == metatype::DI {
                self.save_inode_data(r.block(i, self.bsize), r.start + i as u64)?;
            }
        }
        Ok(())
    }

    /// One resource group: header and bitmaps, then every dinode it holds
    /// with what hangs from it.
    fn save_rgrp(&mut self, ri: &Rindex) -> Result<()> {
        let len = u64::from(ri.length);
        // gfs2-utils' limit: a 2 GB rgrp of 512-byte blocks needs 2149.
        if len == 0
            || len > 2149
            || ri.addr > self.fssize
            || ri.addr <= self.sb_addr
            || ri.addr.checked_add(len).is_none_or(|e| e > self.fssize)
        {
            self.warn(format!(
                "Warning: resource group at 0x{:x} ({len} blocks) is outside the filesystem: skipped",
                ri.addr
            ));
            return Ok(());
        }
        let buf = match self.read(ri.addr, len) {
            Ok(b) => b,
            Err(e) => {
                self.warn(format!(
                    "Failed to read resource group at 0x{:x}: {e}",
                    ri.addr
                ));
                return Ok(());
            }
        };
        for i in 0..len as usize {
            self.progress
                .report(ri.addr + i as u64, self.fssize, self.out.records(), false);
            self.save(
                ri.addr + i as u64,
                &buf[i * self.bsize..(i + 1) * self.bsize],
            )?;
        }
        // The bitmap of each block, laid out as gfs2-utils computes it
        // from ri_bitbytes.
        let mut start_byte = 0usize;
        let bitbytes = ri.bitbytes as usize;
        for i in 0..len as usize {
            let (offset, mut blen) = if i == 0 {
                (RGRP_SIZE, self.bsize - RGRP_SIZE)
            } else {
                (MH_SIZE, self.bsize - MH_SIZE)
            };
            if i == len as usize - 1 {
                blen = bitbytes.saturating_sub(start_byte).min(blen);
            }
            let block = &buf[i * self.bsize..(i + 1) * self.bsize];
            let bits = &block[offset..offset + blen];
            let mut run: Option<(u64, u64)> = None;
            for (byte_i, byte) in bits.iter().enumerate() {
                if byte & (byte >> 1) & 0x55 == 0 {
                    // No entry of this byte is a dinode (state 3: both bits).
                    continue;
                }
                for k in 0..NBBY {
                    if (byte >> (2 * k)) & 3 != BLKST_DINODE {
                        continue;
                    }
                    let blk = ri
                        .data0
                        .saturating_add(((start_byte + byte_i) * NBBY + k) as u64);
                    run = match run {
                        None => Some((blk, 1)),
                        Some((s, l)) if s.checked_add(l) == Some(blk) => Some((s, l + 1)),
                        Some((s, l)) => {
                            self.save_allocated_run(s, l)?;
                            Some((blk, 1))
                        }
                    };
                    self.progress
                        .report(blk, self.fssize, self.out.records(), false);
                }
            }
            if let Some((s, l)) = run {
                self.save_allocated_run(s, l)?;
            }
            start_byte += blen;
        }
        Ok(())
    }
}

/// Read the superblock of `dev`: its bytes and the parsed structure.
pub fn read_superblock(dev: &dyn BlockDevice) -> Result<(Vec<u8>, Superblock)> {
    let mut b = vec![0u8; Superblock::SIZE];
    dev.read_at(&mut b, 65536)
        .map_err(io_err("reading the superblock"))?;
    let sb = Superblock::parse(&b)
        .and_then(|sb| sb.validate().map(|()| sb))
        .map_err(|e| MetaError::Corrupt(format!("no valid GFS2 superblock: {e}")))?;
    Ok((b, sb))
}

/// Options of a dump.
#[derive(Debug, Clone, Copy)]
pub struct SaveOptions {
    /// gzip level 1-9, 0 for none.
    pub level: u32,
    /// Progress lines on stderr.
    pub progress: bool,
}

/// Dump the metadata of the filesystem on `dev` into `out`. The
/// informational lines gfs2_edit prints go to stdout through `info`.
pub fn savemeta<W: Write>(
    dev: &dyn BlockDevice,
    out: W,
    opts: SaveOptions,
    info: &mut dyn FnMut(String),
) -> Result<(Summary, W)> {
    let (sb_bytes, sb) = read_superblock(dev)?;
    let bsize = sb.bsize as usize;
    let sb_addr = gfs2_ondisk::layout::sb_addr(sb.bsize);
    let dev_blocks = dev.size() / bsize as u64;
    let rgs = rindex::read(dev, &sb, dev_blocks)?;
    // gfs2_edit's filesystem size: the end of the last resource group.
    let fssize = rgs
        .iter()
        .map(|r| r.data0.saturating_add(u64::from(r.data)))
        .max()
        .unwrap_or(dev_blocks);
    info(format!(
        "There are {fssize} blocks of {bsize} bytes in the filesystem."
    ));
    info(format!(
        "Filesystem size: {:.2}GB",
        (fssize as f64 * bsize as f64) / f64::from(1u32 << 30)
    ));
    let system = rindex::system_files(dev, &sb, dev_blocks)?;
    let header = super::format::Header {
        format: super::format::FORMAT,
        time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        fs_bytes: fssize.saturating_mul(bsize as u64),
    };
    let out =
        Writer::new(out, opts.level, &header).map_err(io_err("writing the savemeta header"))?;
    let mut s = Saver {
        dev,
        bsize,
        sb_addr,
        fssize,
        system,
        out,
        progress: Progress::new(opts.progress),
        warnings: 0,
    };
    s.save(sb_addr, &sb_bytes)?;
    for ri in &rgs {
        s.save_rgrp(ri)?;
    }
    let saved = s.out.records();
    s.progress.report(fssize, fssize, saved, true);
    if s.warnings > 0 {
        tracing::warn!("{} blocks or ranges could not be saved", s.warnings);
    }
    let w = s
        .out
        .finish()
        .map_err(io_err("finishing the savemeta file"))?;
    Ok((
        Summary {
            fs_blocks: fssize,
            bsize: sb.bsize,
            saved,
        },
        w,
    ))
}
