//! The checker: superblock, resource groups, journals, the inode walk,
//! directories, link counts, bitmaps and statfs. Repairs are made in memory
//! (`cache`) as problems are found and written out at the end.

use crate::cli::{Mode, Options};
use crate::report::Report;
use gfs2_mkfs::dirlayout::{self, Entry};
use gfs2_ondisk::consts::dt;
use gfs2_ondisk::{
    bitmap_get, bitmap_set, consts::dif, consts::format, consts::lh, consts::metatype, dirent_size,
    dt_to_ifmt, hash, ifmt_to_dt, layout, BlockState, Dinode, Dirent, DirentIter, EaIter, Inum,
    Leaf, MetaHeader, Rgrp, Rindex, StatfsChange, Superblock, MAGIC,
};
use gfs2fuse::dev::BlockDevice;
use gfs2fuse::log::recovery::{self, CleanHeader, JournalExtent};
use std::collections::VecDeque;

/// Maps keyed by block number, with a cheap multiplicative hash (the keys
/// are not chosen by an attacker who could exploit collisions; the worst a
/// crafted image can do is slow the check down).
type HashMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<BlockHasher>>;

#[derive(Default)]
struct BlockHasher(u64);

impl std::hash::Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}
use std::path::Path;

/// An operational error (exit status 8).
#[derive(Debug)]
pub struct Fatal(pub String);

impl<E: std::fmt::Display> From<E> for Fatal {
    fn from(e: E) -> Self {
        Fatal(e.to_string())
    }
}

type Res<T> = Result<T, Fatal>;

/// A block read from the device, shared with the read cache.
type Blk = std::rc::Rc<Vec<u8>>;

/// The read cache: (block, contents, last use) and a use counter.
type Recent = (Vec<(u64, Blk, u64)>, u64);

/// Most dinodes read at once (neighbours the walk reads next).
const RUN_MAX: u64 = 8;

/// Blocks kept by the read cache.
const RECENT: usize = 16;

/// Byte offset of the superblock.
const SB_OFFSET: u64 = 65536;

/// `Ino::parent` of an orphan looked at under -n (not linked anywhere).
const VIRTUAL: u64 = u64::MAX;

/// Expected states (`want`).
const W_FREE: u8 = 0;
const W_USED: u8 = 1;
const W_DINODE: u8 = 3;

struct Rg {
    ri: Rindex,
    hdr: Rgrp,
    /// The bitmap, once loaded ([`Fsck::load_bits`]); empty before.
    bits: Vec<u8>,
    loaded: bool,
    /// The bitmap could not be trusted (header destroyed): rebuild it.
    bits_lost: bool,
    /// Header or bitmap changed: write back.
    dirty: bool,
}

struct Ino {
    addr: u64,
    formal: u64,
    mode: u32,
    nlink: u32,
    links: u32,
    blocks: u64,
    is_dir: bool,
    /// Directory that first linked it (itself for root and master).
    parent: u64,

    /// A per_node quota_change file: its data blocks carry QC headers.
    quota_change: bool,
    /// `di_blocks` as found.
    di_blocks: u64,
}

/// What is known about a directory beyond [`Ino`].
#[derive(Default)]
struct DirInfo {
    /// '..': (target, block, offset of the record).
    dotdot: Option<(u64, u64, usize)>,
    /// Blocks holding its entries (dinode or leaves) and where they start.
    dirent_blocks: Vec<(u64, usize)>,
    /// A '.' entry was seen.
    has_dot: bool,
}

/// A directory entry waiting to be followed.
struct Ref {
    inum: Inum,
    de_type: u16,
    dir: u64,
    /// Where the entry is: (block, record offset, start of records).
    at: (u64, usize, usize),
}

/// "Directory D: entry NAME -> ADDR" for messages, the name read from the
/// directory block only when it is shown.
struct Label {
    dir: u64,
    addr: u64,
    /// The directory block if it was changed (only in memory so far).
    block: Option<Blk>,
    /// Else the device, read when the label is shown.
    file: std::sync::Arc<dyn BlockDevice>,
    bsize: u64,
    at: (u64, usize),
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

/// System files that are rebuilt empty when destroyed.
#[derive(Clone, Copy, Debug)]
enum SysKind {
    /// A stuffed file of this size (inum, statfs, inum_range, statfs_change).
    Small(u64),
    /// The quota file: records for user and group 0.
    Quota,
    /// A quota_change file of this many blocks.
    QuotaChange(u64),
    /// Journal j of this many blocks, all clean log headers.
    Journal(u32, u64),
}

#[derive(Clone, Copy)]
struct PtrLoc {
    block: u64,
    off: usize,
}

pub struct Fsck {
    dev: std::sync::Arc<dyn BlockDevice>,
    pub r: Report,
    bsize: u32,
    sb: Superblock,
    dev_blocks: u64,
    fs_blocks: u64,
    cache: HashMap<u64, Vec<u8>>,
    /// Recently read blocks (unchanged ones), so that a dinode or indirect
    /// block looked at by several checks is read once.
    recent: std::cell::RefCell<Recent>,
    /// The device again, for the names in messages.
    names: std::sync::Arc<dyn BlockDevice>,
    /// The dinode the walk reads next (read together with the current one
    /// when they are neighbours).
    run_hint: std::cell::Cell<(u64, u64)>,
    /// The rgrp the last block looked up was in.
    rg_hint: std::cell::Cell<usize>,
    rgs: Vec<Rg>,
    want: Vec<u8>,
    /// Owner of every claimed dinode, indirect, leaf, EA and directory
    /// data block (not of file data, to keep memory small).
    owner: HashMap<u64, u64>,
    /// Inodes being tracked, by address: directories, system files and
    /// every inode whose counts are not settled yet. A plain file (one
    /// link, `di_blocks` right) is dropped once checked; a later link to
    /// it reads it back ([`Fsck::ino`]).
    inodes: HashMap<u64, Ino>,
    /// Largest formal inode number seen.
    max_formal: u64,
    dirs: HashMap<u64, DirInfo>,
    queue: VecDeque<Ref>,
    statfs_addr: u64,
    local_statfs: Vec<u64>,
    jindex: u64,
    per_node: u64,
    /// The rindex dinode was destroyed; rgrps came from their headers.
    rindex_damaged: Option<Inum>,
    /// The rindex entries were wrong; rewritten from the rgrps at the end.
    rindex_fix: Option<Inum>,
    /// The master directory's entries as found (it is destroyed; -n).
    master_list: Option<Vec<(String, Inum)>>,
    /// File data blocks taken back as metadata by their rightful owner.
    stolen: std::collections::HashSet<u64>,
    /// Resource group to allocate from first, and the last block allocated.
    alloc_hint: usize,
    alloc_last: u64,
    journals: Vec<(u32, CleanHeader)>,
    deferred: Vec<u32>,
}

/// The device as modified so far (for reading journals after repairs).
struct CacheDev<'a> {
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

fn be64(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .map(|s| u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
        .unwrap_or(0)
}

fn put_be64(b: &mut [u8], off: usize, v: u64) {
    if let Some(s) = b.get_mut(off..off + 8) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Whether a mode's file type bits name a real file type.
fn valid_ifmt(mode: u32) -> bool {
    matches!(
        mode & 0o170000,
        0o010000 | 0o020000 | 0o040000 | 0o060000 | 0o100000 | 0o120000 | 0o140000
    )
}

/// The expected state of a block, two bits per block.
fn want_get(want: &[u8], blk: u64) -> u8 {
    let i = blk as usize;
    want.get(i >> 2)
        .map(|b| (b >> ((i & 3) * 2)) & 3)
        .unwrap_or(W_FREE)
}

fn want_set(want: &mut [u8], blk: u64, st: u8) {
    let i = blk as usize;
    if let Some(b) = want.get_mut(i >> 2) {
        let sh = (i & 3) * 2;
        *b = (*b & !(3 << sh)) | ((st & 3) << sh);
    }
}

/// The bitmap bytes of an rgrp from its header and bitmap blocks.
fn bitmap_bytes(raw: &[u8], bsize: usize, ri: &Rindex) -> Vec<u8> {
    let mut bits = Vec::with_capacity(ri.bitbytes as usize);
    let mut left = ri.bitbytes as usize;
    let mut k = 0;
    while left > 0 && (k + 1) * bsize <= raw.len() {
        let start = if k == 0 { Rgrp::SIZE } else { MetaHeader::SIZE };
        let n = (bsize - start).min(left);
        let o = k * bsize + start;
        bits.extend_from_slice(&raw[o..o + n]);
        left -= n;
        k += 1;
    }
    bits.resize(ri.bitbytes as usize, 0);
    bits
}

/// Bitmap bytes of an rgrp: kept if loaded, else read (zeros for a bitmap
/// that cannot be trusted).
fn rg_bits_of<'a>(
    dev: &dyn BlockDevice,
    bs: usize,
    rg: &'a Rg,
) -> std::io::Result<std::borrow::Cow<'a, [u8]>> {
    if rg.loaded {
        return Ok(std::borrow::Cow::Borrowed(&rg.bits));
    }
    if rg.bits_lost {
        return Ok(std::borrow::Cow::Owned(vec![0u8; rg.ri.bitbytes as usize]));
    }
    let mut raw = vec![0u8; rg.ri.length as usize * bs];
    dev.read_at(&mut raw, rg.ri.addr * bs as u64)?;
    Ok(std::borrow::Cow::Owned(bitmap_bytes(&raw, bs, &rg.ri)))
}

/// A clean (unmounted) log header for block `lblock` of journal `jid`,
/// at `addr`.
fn clean_log_header(
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

/// Indexes of the blocks a bitmap marks as dinodes (of `data` blocks).
fn dinode_indexes(bits: &[u8], data: u32) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, &b) in bits.iter().enumerate() {
        // Both bits of a pair set: a dinode.
        let both = b & (b >> 1) & 0x55;
        if both == 0 {
            continue;
        }
        for k in 0..4 {
            let idx = (i * 4 + k) as u64;
            if both & (1 << (2 * k)) != 0 && idx < u64::from(data) {
                out.push(idx);
            }
        }
    }
    out
}

fn meta_ok(b: &[u8], mh_type: u32) -> bool {
    MetaHeader::parse(b).is_ok_and(|h| h.magic == MAGIC && h.mh_type == mh_type)
}

/// Refuse a device that is mounted here. With `live_node_ok` (a read-only
/// check), a mount by a gfs2-fuse node (`fuse.gfs2`, `fuseblk.gfs2`) is
/// let through, as gfs2-utils' `-n` reads a device whoever holds it: the
/// node writes straight to the device, so a check sees what a crash would
/// leave (a live journal reads as dirty).
pub fn check_not_mounted(path: &Path, live_node_ok: bool) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let meta = std::fs::metadata(&canon).ok();
    let rdev = meta
        .as_ref()
        .filter(|m| m.file_type().is_block_device())
        .map(|m| m.rdev());
    // An image file can be mounted through a loop device: those count too.
    let mut loops: Vec<String> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/block") {
        for ent in dir.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let backing = ent.path().join("loop/backing_file");
            if let Ok(b) = std::fs::read_to_string(&backing) {
                if Path::new(b.trim_end()) == canon {
                    loops.push(format!("/dev/{name}"));
                }
            }
        }
    }
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Ok(());
    };
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        let source = f.get(sep + 2).copied().unwrap_or("");
        let mnt = f.get(4).copied().unwrap_or("");
        let fstype = f.get(sep + 1).copied().unwrap_or("");
        if live_node_ok && (fstype == "fuse.gfs2" || fstype == "fuseblk.gfs2") {
            continue;
        }
        let src_path = Path::new(source);
        let same_path = source == path.to_string_lossy()
            || std::fs::canonicalize(src_path).is_ok_and(|c| c == canon);
        let same_dev = rdev.is_some_and(|rd| {
            let majmin = f.get(2).copied().unwrap_or("");
            let mm = format!("{}:{}", libc::major(rd), libc::minor(rd));
            majmin == mm
        });
        if same_path || same_dev {
            return Err(format!("{} is mounted on {mnt}", path.display()));
        }
        if loops.iter().any(|l| l == source) {
            return Err(format!(
                "{} is mounted on {mnt} through {source}",
                path.display()
            ));
        }
    }
    Ok(())
}

impl Fsck {
    pub fn open(o: &Options) -> Res<Self> {
        // A path, or a network disk (nbd://, aoe:, iscsi://) as the mount
        // takes it.
        let dev = gfs2fuse::dev::spec::open(&o.device, o.mode == Mode::No)?;
        let dev_size = dev.size();
        Ok(Fsck {
            dev: dev.clone(),
            r: Report::new(o.mode, o.verbosity),
            bsize: 4096,
            sb: Superblock::default(),
            dev_blocks: dev_size / 4096,
            fs_blocks: 0,
            cache: HashMap::default(),
            recent: std::cell::RefCell::new((Vec::new(), 0)),
            rg_hint: std::cell::Cell::new(0),
            run_hint: std::cell::Cell::new((0, 0)),
            names: dev.clone(),
            rgs: Vec::new(),
            want: Vec::new(),
            owner: HashMap::default(),
            inodes: HashMap::default(),
            max_formal: 0,
            dirs: HashMap::default(),
            queue: VecDeque::new(),
            statfs_addr: 0,
            local_statfs: Vec::new(),
            jindex: 0,
            per_node: 0,
            stolen: Default::default(),
            rindex_damaged: None,
            rindex_fix: None,
            master_list: None,
            alloc_hint: usize::MAX,
            alloc_last: 0,
            journals: Vec::new(),
            deferred: Vec::new(),
        })
    }

    // ---- block I/O -------------------------------------------------------

    /// A block to change (a copy).
    fn read(&self, blk: u64) -> Res<Vec<u8>> {
        if let Some(b) = self.cache.get(&blk) {
            return Ok(b.clone());
        }
        Ok(self.read_rc(blk)?.to_vec())
    }

    /// A block to look at (shared with the read cache: no copy).
    fn read_rc(&self, blk: u64) -> Res<Blk> {
        if let Some(b) = self.cache.get(&blk) {
            return Ok(std::rc::Rc::new(b.clone()));
        }
        if blk >= self.dev_blocks {
            return Err(Fatal(format!("block {blk} is beyond the device")));
        }
        let mut r = self.recent.borrow_mut();
        r.1 += 1;
        let now = r.1;
        if let Some(e) = r.0.iter_mut().find(|e| e.0 == blk) {
            e.2 = now;
            return Ok(e.1.clone());
        }
        let bs = self.bsize as usize;
        // The next entries' dinodes right after this one: one read for all.
        let run = match self.run_hint.get() {
            (start, n) if start == blk && n > 1 => {
                let mut n = n.min(RUN_MAX).min(self.dev_blocks - blk);
                // Stop before a block changed in memory or cached.
                for k in 1..n {
                    let p = blk + k;
                    if self.cache.contains_key(&p) || r.0.iter().any(|e| e.0 == p) {
                        n = k;
                        break;
                    }
                }
                n
            }
            _ => 1,
        };
        if run > 1 {
            self.run_hint.set((0, 0));
            let mut all = vec![0u8; run as usize * bs];
            self.dev.read_at(&mut all, blk * bs as u64)?;
            let mut mine = None;
            for (k, chunk) in all.chunks_exact(bs).enumerate() {
                let data = std::rc::Rc::new(chunk.to_vec());
                if k == 0 {
                    mine = Some(data.clone());
                }
                let p = blk + k as u64;
                if r.0.len() < RECENT {
                    r.0.push((p, data, now));
                } else if let Some(e) = r.0.iter_mut().min_by_key(|e| e.2) {
                    *e = (p, data, now);
                }
            }
            return mine.ok_or_else(|| Fatal(format!("block {blk}: read failed")));
        }
        let mut b = vec![0u8; bs];
        self.dev.read_at(&mut b, blk * bs as u64)?;
        let data = std::rc::Rc::new(b);
        // Least recently used out: a directory block being followed stays
        // while the dinodes it names come and go.
        if r.0.len() < RECENT {
            r.0.push((blk, data.clone(), now));
        } else if let Some(e) = r.0.iter_mut().min_by_key(|e| e.2) {
            *e = (blk, data.clone(), now);
        }
        Ok(data)
    }

    fn write(&mut self, blk: u64, b: Vec<u8>) {
        self.recent.borrow_mut().0.retain(|e| e.0 != blk);
        self.cache.insert(blk, b);
    }

    fn zero_ptr(&mut self, loc: PtrLoc) -> Res<()> {
        let mut b = self.read(loc.block)?;
        put_be64(&mut b, loc.off, 0);
        self.write(loc.block, b);
        Ok(())
    }

    /// Write every changed block and flush.
    pub fn flush(&mut self) -> Res<()> {
        if self.cache.is_empty() || !self.r.repairing() {
            return Ok(());
        }
        let mut blocks: Vec<_> = self.cache.drain().collect();
        blocks.sort_by_key(|(b, _)| *b);
        for (blk, data) in blocks {
            self.dev.write_at(&data, blk * u64::from(self.bsize))?;
        }
        self.dev.flush()?;
        Ok(())
    }

    /// Which rgrp holds data block `blk`, and its index there.
    fn rg_of(&self, blk: u64) -> Option<(usize, u64)> {
        // Most lookups fall in the rgrp of the one before.
        let h = self.rg_hint.get();
        if let Some(r) = self.rgs.get(h) {
            if blk >= r.ri.data0 && blk - r.ri.data0 < u64::from(r.ri.data) {
                return Some((h, blk - r.ri.data0));
            }
        }
        let i = self.rgs.partition_point(|r| r.ri.data0 <= blk);
        let r = self.rgs.get(i.checked_sub(1)?)?;
        let idx = blk - r.ri.data0;
        let found = (idx < u64::from(r.ri.data)).then_some((i - 1, idx));
        if found.is_some() {
            self.rg_hint.set(i - 1);
        }
        found
    }

    /// Bitmap bytes of rgrp `i`: kept if loaded, else read (zeros for a
    /// bitmap that cannot be trusted).
    fn rg_bits(&self, i: usize) -> Res<std::borrow::Cow<'_, [u8]>> {
        Ok(rg_bits_of(&self.dev, self.bsize as usize, &self.rgs[i])?)
    }

    /// Keep rgrp `i`'s bitmap in memory (it is about to change).
    fn load_bits(&mut self, i: usize) -> Res<()> {
        if !self.rgs[i].loaded {
            let bits = self.rg_bits(i)?.into_owned();
            self.rgs[i].bits = bits;
            self.rgs[i].loaded = true;
        }
        Ok(())
    }

    fn set_bit(&mut self, blk: u64, st: BlockState) {
        if let Some((i, idx)) = self.rg_of(blk) {
            if self.load_bits(i).is_err() {
                return;
            }
            let rg = &mut self.rgs[i];
            bitmap_set(&mut rg.bits, idx as usize, st);
            rg.dirty = true;
        }
    }

    // ---- superblock ------------------------------------------------------

    pub fn check_sb(&mut self) -> Res<()> {
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
    fn probe_bsize(&self, sb: &Superblock, size: u64) -> Option<u32> {
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

    // ---- files without claiming ---------------------------------------

    fn dinode(&self, addr: u64) -> Res<(Dinode, Blk)> {
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
    fn tree(&self, di: &Dinode, buf: &[u8], addr: u64) -> Res<TreeOut> {
        self.tree_ex(di, buf, addr, false)
    }

    /// Whether a block is an indirect block, or (`lenient`) one with a
    /// damaged header whose pointers all look sane.
    fn indirect_ok(&self, b: &[u8], lenient: bool) -> bool {
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

    fn tree_ex(&self, di: &Dinode, buf: &[u8], addr: u64, lenient: bool) -> Res<TreeOut> {
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
    fn file_data(&self, addr: u64) -> Res<Vec<u8>> {
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
    fn list_dir(&self, addr: u64) -> Res<Vec<(String, Inum)>> {
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

    fn lookup(&self, dir: u64, name: &str) -> Res<Inum> {
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

    // ---- resource groups ----------------------------------------------

    pub fn check_rgrps(&mut self) -> Res<()> {
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

    /// The master directory is destroyed: find its files (system dinodes:
    /// the directory holding journal0 is the jindex, the one holding
    /// statfs_change0 per_node; then inum by its 8 bytes, statfs by its 24
    /// (not a per_node file), rindex and quota by their formats) and, with
    /// -y, write a new master directory where the old one was.
    fn rebuild_master(&mut self) -> Res<()> {
        let mut found: Vec<(String, Inum)> = Vec::new();
        let mut small = Vec::new();
        let mut pn_files: Vec<u64> = Vec::new();
        for i in 0..self.rgs.len() {
            let ri = self.rgs[i].ri;
            let bits = self.rg_bits(i)?;
            for idx in dinode_indexes(&bits, ri.data) {
                let blk = ri.data0 + idx;
                let Ok((di, _)) = self.dinode(blk) else {
                    continue;
                };
                if di.flags & dif::SYSTEM == 0 || blk == self.sb.master_dir.addr {
                    continue;
                }
                let has = |n: &str| found.iter().any(|f| f.0 == n);
                if di.is_dir() {
                    let Ok(list) = self.list_dir(blk) else {
                        continue;
                    };
                    if list.iter().any(|e| e.0 == "journal0") && !has("jindex") {
                        found.push(("jindex".into(), di.num));
                    } else if list.iter().any(|e| e.0 == "statfs_change0") && !has("per_node") {
                        pn_files.extend(list.iter().map(|e| e.1.addr));
                        found.push(("per_node".into(), di.num));
                    }
                } else if di.payload_format == format::RI && !has("rindex") {
                    found.push(("rindex".into(), di.num));
                } else if di.payload_format == format::QU && !has("quota") {
                    found.push(("quota".into(), di.num));
                } else if di.height == 0 && (di.size == 8 || di.size == 24) {
                    small.push(di);
                }
            }
        }
        for di in small {
            let name = if di.size == 8 { "inum" } else { "statfs" };
            if !pn_files.contains(&di.num.addr) && !found.iter().any(|f| f.0 == name) {
                found.push((name.into(), di.num));
            }
        }
        for need in ["jindex", "rindex"] {
            if !found.iter().any(|f| f.0 == need) {
                return Err(Fatal(format!(
                    "the master directory is destroyed and no {need} was found to rebuild it"
                )));
            }
        }
        let order = ["jindex", "per_node", "inum", "statfs", "rindex", "quota"];
        found.sort_by_key(|f| order.iter().position(|o| *o == f.0));
        let master = self.sb.master_dir;
        let names: Vec<&str> = found.iter().map(|f| f.0.as_str()).collect();
        let msg = format!(
            "The master directory at block {} is destroyed; rebuilding it with the system files found ({})",
            master.addr,
            names.join(", ")
        );
        if self.r.problem(&msg, true) {
            let (mut di, mut b) = self.empty_dir(master, master, 0o40755)?;
            di.flags = dif::SYSTEM;
            let entries: Vec<Entry> = [
                Entry::new(".", master, dt::DIR),
                Entry::new("..", master, dt::DIR),
            ]
            .into_iter()
            .chain(found.iter().map(|(n, i)| {
                let t = if n == "jindex" || n == "per_node" {
                    dt::DIR
                } else {
                    dt::REG
                };
                Entry::new(n, *i, t)
            }))
            .collect();
            let subdirs = entries.iter().skip(2).filter(|e| e.dt == dt::DIR).count();
            let refs: Vec<&Entry> = entries.iter().collect();
            dirlayout::pack(&mut b[Dinode::SIZE..], &refs).map_err(Fatal)?;
            di.entries = entries.len() as u32;
            di.nlink = 2 + subdirs as u32;
            di.write(&mut b)?;
            self.write(master.addr, b);
            self.set_bit(master.addr, BlockState::Dinode);
        } else {
            self.master_list = Some(found);
        }
        Ok(())
    }

    /// Whether rindex entry `ri` is consistent in itself and starts after
    /// `prev_end`.
    fn entry_sane(&self, ri: &Rindex, prev_end: u64) -> bool {
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
    fn chain_covers(&self, ris: &[Rindex]) -> bool {
        let end = ris.last().map(|r| r.data0 + u64::from(r.data)).unwrap_or(0);
        let span = ris
            .iter()
            .map(|r| u64::from(r.length) + u64::from(r.data))
            .max()
            .unwrap_or(0);
        !ris.is_empty() && self.dev_blocks.saturating_sub(end) <= span
    }

    /// The rgrp header at `addr`, as a rindex entry, if there is a valid one.
    fn header_entry(&self, addr: u64) -> Option<(Rindex, u32)> {
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
    fn scan_for_header(&self, from: u64) -> Option<u64> {
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
    fn rgrp_chain(&self, hints: &[Rindex]) -> Vec<Rindex> {
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
    fn rindex_from_headers(&self) -> Vec<Rindex> {
        self.rgrp_chain(&[])
    }

    /// Write the rindex entries as the rgrps now are into the existing
    /// rindex file (its size changes only within the blocks it has).
    fn rewrite_rindex(&mut self) -> Res<()> {
        let Some(inum) = self.rindex_fix else {
            return Ok(());
        };
        if !self.r.repairing() {
            return Ok(());
        }
        let data: Vec<u8> = self.rgs.iter().flat_map(|r| r.ri.to_bytes()).collect();
        let (mut di, buf) = self.dinode(inum.addr)?;
        let bs = self.bsize as usize;
        if di.height == 0 {
            if data.len() as u64 > layout::stuffed_max(self.bsize) {
                self.r.problem(
                    "the rindex does not fit in its dinode: not rewritten",
                    false,
                );
                return Ok(());
            }
            let mut b = buf.to_vec();
            b[Dinode::SIZE..].fill(0);
            b[Dinode::SIZE..Dinode::SIZE + data.len()].copy_from_slice(&data);
            di.size = data.len() as u64;
            di.write(&mut b)?;
            self.write(inum.addr, b);
            return Ok(());
        }
        let t = self.tree(&di, &buf, inum.addr)?;
        let nblocks = data.len().div_ceil(bs) as u64;
        let have: Vec<(u64, u64)> = t.data.iter().map(|d| (d.0, d.1)).collect();
        if (0..nblocks).any(|l| !have.iter().any(|h| h.0 == l)) {
            self.r.problem(
                "the rindex file lacks blocks for its new entries: not rewritten",
                false,
            );
            return Ok(());
        }
        for (l, p) in have {
            let Ok(lu) = usize::try_from(l) else { continue };
            let start = lu * bs;
            if start >= data.len() {
                continue;
            }
            let mut b = self.read(p)?;
            let n = bs.min(data.len() - start);
            b.fill(0);
            b[..n].copy_from_slice(&data[start..start + n]);
            self.write(p, b);
        }
        let mut b = self.read(inum.addr)?;
        di.size = data.len() as u64;
        di.write(&mut b)?;
        self.write(inum.addr, b);
        Ok(())
    }

    /// Write a new rindex file where the destroyed one was.
    fn rebuild_rindex(&mut self) -> Res<()> {
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
        let data: Vec<u8> = self.rgs.iter().flat_map(|r| r.ri.to_bytes()).collect();
        let master = self.sb.master_dir.addr;
        let mut di = Dinode {
            num: inum,
            mode: 0o100600,
            nlink: 1,
            size: data.len() as u64,
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
        if data.len() as u64 <= layout::stuffed_max(self.bsize) {
            b[Dinode::SIZE..Dinode::SIZE + data.len()].copy_from_slice(&data);
        } else {
            let chunks: Vec<&[u8]> = data.chunks(self.bsize as usize).collect();
            if chunks.len() as u64 > layout::diptrs(self.bsize) {
                self.r.problem("rindex too large to rebuild here", false);
                return Ok(());
            }
            di.height = 1;
            for (i, c) in chunks.iter().enumerate() {
                let Some(nb) = self.alloc(idx, false) else {
                    return Err(Fatal("no free block for the rindex".into()));
                };
                let mut d = vec![0u8; self.bsize as usize];
                d[..c.len()].copy_from_slice(c);
                self.write(nb, d);
                put_be64(&mut b, Dinode::SIZE + 8 * i, nb);
            }
        }
        di.blocks = self.ino(idx).blocks;
        self.ino(idx).di_blocks = di.blocks;
        di.write(&mut b)?;
        self.write(addr, b);
        self.set_bit(addr, BlockState::Dinode);
        Ok(())
    }

    // ---- journals -----------------------------------------------------

    /// A journal's blocks as extents; `None` if it has holes.
    fn extents(&self, addr: u64) -> Res<Option<Vec<JournalExtent>>> {
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

    pub fn check_journals(&mut self) -> Res<()> {
        self.r.progress("Checking journals");
        let master = self.sb.master_dir.addr;
        let jindex_inum = self.lookup(master, "jindex")?;
        let jindex = jindex_inum.addr;
        self.jindex = jindex;
        let per_node = self.lookup(master, "per_node").map(|i| i.addr).ok();
        self.per_node = per_node.unwrap_or(0);
        self.statfs_addr = self.lookup(master, "statfs")?.addr;
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
        let node_file = |name: String| {
            nodes
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, i)| i.addr)
                .unwrap_or(0)
        };
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

    /// The jindex directory is unreadable: find the journals (system files
    /// whose first block is a log header; in address order, as mkfs makes
    /// them) and, with -y, write a new jindex where the old one was.
    fn rebuild_jindex(&mut self, inum: Inum, why: &str) -> Res<Vec<(String, Inum)>> {
        let mut found = Vec::new();
        for i in 0..self.rgs.len() {
            let ri = self.rgs[i].ri;
            let bits = self.rg_bits(i)?;
            for idx in dinode_indexes(&bits, ri.data) {
                let blk = ri.data0 + idx;
                let Ok((di, buf)) = self.dinode(blk) else {
                    continue;
                };
                if di.flags & dif::SYSTEM == 0
                    || di.mode & 0o170000 != 0o100000
                    || di.height == 0
                    || di.size < 8 << 20
                {
                    continue;
                }
                // A journal: some of its first blocks are log headers.
                let t = self.tree_ex(&di, &buf, blk, true).unwrap_or_default();
                let is_log = t.data.iter().take(16).any(|d| {
                    d.1 < self.dev_blocks && self.read(d.1).is_ok_and(|b| meta_ok(&b, metatype::LH))
                });
                if is_log && di.size % u64::from(self.bsize) == 0 {
                    found.push(di.num);
                }
            }
        }
        let max = (layout::stuffed_max(self.bsize) as usize - 2 * dirent_size(2)) / dirent_size(10);
        if found.is_empty() || found.len() > max || self.rg_of(inum.addr).is_none() {
            return Err(Fatal(format!(
                "jindex: {why}; cannot find the journals to rebuild it"
            )));
        }
        let msg = format!(
            "The jindex directory at block {} is damaged ({why}); rebuilding it with the {} journals found",
            inum.addr,
            found.len()
        );
        let list: Vec<(String, Inum)> = found
            .iter()
            .enumerate()
            .map(|(j, i)| (format!("journal{j}"), *i))
            .collect();
        if self.r.problem(&msg, true) {
            let master = Inum {
                formal_ino: self.sb.master_dir.formal_ino,
                addr: self.sb.master_dir.addr,
            };
            let (mut di, mut b) = self.empty_dir(inum, master, 0o40700)?;
            di.flags = dif::SYSTEM;
            di.write(&mut b)?;
            let entries: Vec<Entry> = [
                Entry::new(".", inum, dt::DIR),
                Entry::new("..", master, dt::DIR),
            ]
            .into_iter()
            .chain(list.iter().map(|(n, i)| Entry::new(n, *i, dt::REG)))
            .collect();
            let refs: Vec<&Entry> = entries.iter().collect();
            dirlayout::pack(&mut b[Dinode::SIZE..], &refs).map_err(Fatal)?;
            di.entries = entries.len() as u32;
            di.write(&mut b)?;
            self.write(inum.addr, b);
            self.set_bit(inum.addr, BlockState::Dinode);
        }
        Ok(list)
    }

    /// The per_node directory is unreadable: find its files (system
    /// dinodes nothing else claims: inum_range of 16 bytes, statfs_change
    /// of 24, quota_change starting with a quota change block; per kind in
    /// address order, as mkfs makes them) and, with -y, write a new
    /// per_node where the old one was.
    fn rebuild_per_node(
        &mut self,
        inum: Inum,
        why: &str,
        journals: &[u32],
    ) -> Res<Vec<(String, Inum)>> {
        let mut ranges = Vec::new();
        let mut changes = Vec::new();
        let mut quotas = Vec::new();
        for i in 0..self.rgs.len() {
            let ri = self.rgs[i].ri;
            let bits = self.rg_bits(i)?;
            for idx in dinode_indexes(&bits, ri.data) {
                let blk = ri.data0 + idx;
                if blk == self.statfs_addr {
                    continue;
                }
                let Ok((di, buf)) = self.dinode(blk) else {
                    continue;
                };
                if di.flags & dif::SYSTEM == 0 || di.mode & 0o170000 != 0o100000 {
                    continue;
                }
                if di.height == 0 && di.size == 16 {
                    ranges.push(di.num);
                } else if di.height == 0 && di.size == 24 {
                    changes.push(di.num);
                } else if di.height > 0 && di.size < 64 << 20 {
                    let t = self.tree_ex(&di, &buf, blk, true).unwrap_or_default();
                    let qc = t.data.first().is_some_and(|d| {
                        d.1 < self.dev_blocks
                            && self.read_rc(d.1).is_ok_and(|b| meta_ok(&b, metatype::QC))
                    });
                    if qc {
                        quotas.push(di.num);
                    }
                }
            }
        }
        let mut list: Vec<(String, Inum)> = Vec::new();
        for (k, &j) in journals.iter().enumerate() {
            for (name, found) in [
                ("inum_range", &ranges),
                ("statfs_change", &changes),
                ("quota_change", &quotas),
            ] {
                if let Some(i) = found.get(k) {
                    list.push((format!("{name}{j}"), *i));
                }
            }
        }
        let entries: Vec<Entry> = [
            Entry::new(".", inum, dt::DIR),
            Entry::new("..", self.sb.master_dir, dt::DIR),
        ]
        .into_iter()
        .chain(list.iter().map(|(n, i)| Entry::new(n, *i, dt::REG)))
        .collect();
        if list.is_empty()
            || !dirlayout::fits_stuffed(self.bsize, &entries)
            || self.rg_of(inum.addr).is_none()
        {
            return Err(Fatal(format!(
                "per_node: {why}; cannot find its files to rebuild it"
            )));
        }
        let msg = format!(
            "The per_node directory at block {} is damaged ({why}); rebuilding it with the {} files found",
            inum.addr,
            list.len()
        );
        if self.r.problem(&msg, true) {
            let (mut di, mut b) = self.empty_dir(inum, self.sb.master_dir, 0o40700)?;
            di.flags = dif::SYSTEM;
            let refs: Vec<&Entry> = entries.iter().collect();
            dirlayout::pack(&mut b[Dinode::SIZE..], &refs).map_err(Fatal)?;
            di.entries = entries.len() as u32;
            di.write(&mut b)?;
            self.write(inum.addr, b);
            self.set_bit(inum.addr, BlockState::Dinode);
        }
        Ok(list)
    }

    /// Journals whose block map was damaged, after the walk repaired it.
    fn check_deferred_journals(&mut self) -> Res<()> {
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

    fn check_journal(
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
    fn reset_journal(&mut self, j: u32, ex: &[JournalExtent], clean: &CleanHeader) -> Res<()> {
        let clean = CleanHeader {
            master_statfs_addr: 0,
            ..*clean
        };
        let phys = ex[0].phys;
        let b = clean_log_header(self.bsize, j, 1, 0, phys, &clean)?;
        self.write(phys, b);
        Ok(())
    }

    // ---- the inode walk -------------------------------------------------

    /// Claim `blk` for inode `owner`. Returns an error text when the block
    /// is out of range or already claimed.
    fn claim(&mut self, blk: u64, owner: u64, st: u8) -> Result<(), String> {
        self.claim_ex(blk, owner, st, true)
    }

    fn claim_ex(&mut self, blk: u64, owner: u64, st: u8, track: bool) -> Result<(), String> {
        if self.rg_of(blk).is_none() {
            return Err(format!("block {blk} is outside the resource groups' data"));
        }
        if want_get(&self.want, blk) != W_FREE {
            return Err(match self.owner_of(blk) {
                Some(o) => format!("block {blk} is already used by inode {}", o),
                None => format!("block {blk} is already used as file data"),
            });
        }
        want_set(&mut self.want, blk, st);
        if track && st != W_DINODE {
            self.owner.insert(blk, owner);
        }
        match self.inodes.get_mut(&owner) {
            Some(i) => i.blocks += 1,
            None => self.ino(owner).blocks += 1,
        }
        Ok(())
    }

    fn owner_of(&self, blk: u64) -> Option<u64> {
        if want_get(&self.want, blk) == W_DINODE {
            return Some(blk);
        }
        self.owner.get(&blk).copied()
    }

    /// A free block (bitmap free and not claimed), marked used for `owner`.
    fn alloc(&mut self, owner: u64, track: bool) -> Option<u64> {
        // From the end of the filesystem backwards: allocations happen during
        // the walk, and a block the bitmap wrongly calls free is more likely
        // to be near the start, where files are allocated first.
        let n = self.rgs.len();
        let start = self.alloc_hint.min(n.saturating_sub(1));
        let last = self.alloc_last;
        for i in (0..=start).rev().chain((start + 1..n).rev()) {
            if self.load_bits(i).is_err() {
                continue;
            }
            let rg = &self.rgs[i];
            let mut top = u64::from(rg.ri.data);
            if i == start && last >= rg.ri.data0 && last < rg.ri.data0 + top {
                top = last - rg.ri.data0;
            }
            for idx in (0..top).rev() {
                let blk = rg.ri.data0 + idx;
                if bitmap_get(&rg.bits, idx as usize) == Some(BlockState::Free)
                    && want_get(&self.want, blk) == W_FREE
                {
                    self.alloc_hint = i;
                    self.alloc_last = blk;
                    self.set_bit(blk, BlockState::Used);
                    want_set(&mut self.want, blk, W_USED);
                    if track {
                        self.owner.insert(blk, owner);
                    }
                    match self.inodes.get_mut(&owner) {
                        Some(i) => i.blocks += 1,
                        None => self.ino(owner).blocks += 1,
                    }
                    return Some(blk);
                }
            }
        }
        None
    }

    pub fn walk(&mut self) -> Res<()> {
        self.r.progress("Checking inodes and directories");
        let master = self.sb.master_dir;
        let root = self.sb.root_dir;
        for (inum, what) in [(master, "master"), (root, "root")] {
            if self.rg_of(inum.addr).is_none() {
                self.r.problem(
                    &format!(
                        "Superblock: {what} directory address {} out of range",
                        inum.addr
                    ),
                    false,
                );
                continue;
            }
            match self.dinode(inum.addr) {
                Ok((di, _)) if di.is_dir() => {
                    let idx = self.add_inode(&di, inum.addr);
                    self.ino(idx).links = 0;
                    self.inspect(idx)?;
                }
                _ => {
                    // A destroyed root is made again, empty: what it held
                    // is found as orphans and goes to lost+found.
                    let can = what == "root" && want_get(&self.want, inum.addr) == W_FREE;
                    let msg = format!(
                        "The {what} directory at block {} is not a valid directory{}",
                        inum.addr,
                        if can { "; making a new, empty one" } else { "" }
                    );
                    if self.r.problem(&msg, can) {
                        let (di, b) = self.empty_dir(inum, inum, 0o40755)?;
                        self.write(inum.addr, b);
                        let idx = self.add_inode(&di, inum.addr);
                        self.ino(idx).links = 0;
                        self.inspect(idx)?;
                    }
                }
            }
            self.drain_queue()?;
        }
        Ok(())
    }

    fn add_inode(&mut self, di: &Dinode, addr: u64) -> u64 {
        self.max_formal = self.max_formal.max(di.num.formal_ino);
        self.inodes.insert(
            addr,
            Ino {
                addr,
                formal: di.num.formal_ino,
                mode: di.mode,
                nlink: di.nlink,
                links: 1,
                blocks: 0,
                is_dir: di.is_dir(),
                parent: addr,
                quota_change: false,
                di_blocks: di.blocks,
            },
        );
        addr
    }

    /// The record of inode `addr`; one that was dropped after its check
    /// (one link, block count right) is read back as it was then.
    fn ino(&mut self, addr: u64) -> &mut Ino {
        if !self.inodes.contains_key(&addr) {
            let di = self.dinode(addr).map(|d| d.0).unwrap_or_default();
            let ino = Ino {
                addr,
                formal: di.num.formal_ino,
                mode: di.mode,
                nlink: di.nlink,
                links: 1,
                blocks: di.blocks,
                is_dir: di.is_dir(),
                parent: 0,
                quota_change: false,
                di_blocks: di.blocks,
            };
            self.inodes.insert(addr, ino);
        }
        self.inodes.entry(addr).or_insert(Ino {
            addr,
            formal: 0,
            mode: 0,
            nlink: 0,
            links: 0,
            blocks: 0,
            is_dir: false,
            parent: 0,
            quota_change: false,
            di_blocks: 0,
        })
    }

    /// Whether inode `addr` was reached already.
    fn visited(&self, addr: u64) -> bool {
        self.inodes.contains_key(&addr) || want_get(&self.want, addr) == W_DINODE
    }

    /// Drop the record of a checked plain file: nothing is left to settle
    /// unless another link to it turns up.
    fn retire(&mut self, addr: u64) {
        let plain = self.inodes.get(&addr).is_some_and(|i| {
            !i.is_dir
                && !i.quota_change
                && i.nlink == 1
                && i.links == 1
                && i.blocks == i.di_blocks
                && i.parent != VIRTUAL
                && i.parent != self.sb.master_dir.addr
                && i.parent != self.jindex
                && i.parent != self.per_node
        });
        if plain && want_get(&self.want, addr) == W_DINODE {
            self.inodes.remove(&addr);
        }
    }

    /// Follow the queued directory entries (depth first).
    fn drain_queue(&mut self) -> Res<()> {
        while let Some(rf) = self.queue.pop_back() {
            // How many of the next entries' dinodes follow this one's.
            let mut n = 1u64;
            for next in self.queue.iter().rev().take(RUN_MAX as usize - 1) {
                if next.inum.addr != rf.inum.addr + n {
                    break;
                }
                n += 1;
            }
            self.run_hint.set((rf.inum.addr, n));
            self.follow(rf)?;
        }
        self.run_hint.set((0, 0));
        Ok(())
    }

    /// The name in the directory entry at `at`.
    fn ref_name(&self, at: (u64, usize, usize)) -> String {
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
    fn follow(&mut self, rf: Ref) -> Res<()> {
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

    /// What kind of system file entry `name` of system directory `parent`
    /// names (None: not one this can rebuild).
    fn system_kind(&self, parent: u64, name: &str) -> Option<SysKind> {
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
    fn build_system_file(&mut self, inum: Inum, kind: SysKind) -> Res<()> {
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
        // Height and indirect blocks per level (lowest first).
        let inptrs = layout::inptrs(self.bsize);
        let diptrs = layout::diptrs(self.bsize);
        let mut levels: Vec<u64> = Vec::new();
        let mut count = nblocks;
        while count > diptrs {
            count = count.div_ceil(inptrs);
            levels.push(count);
        }
        if levels.len() + 1 > usize::from(gfs2_ondisk::MAX_META_HEIGHT) {
            return Err(Fatal("system file too large".into()));
        }
        di.height = levels.len() as u16 + 1;
        let total = nblocks + levels.iter().sum::<u64>();
        let start = self
            .alloc_run(total)
            .ok_or_else(|| Fatal(format!("no run of {total} free blocks")))?;
        // Indirect blocks first (top level first), then the data blocks.
        let mut level_start = Vec::new();
        let mut at = start;
        for &c in levels.iter().rev() {
            level_start.push(at);
            at += c;
        }
        level_start.reverse(); // lowest level first, as `levels`
        let data0 = at;
        let clean = match kind {
            SysKind::Journal(j, _) => self
                .journals
                .iter()
                .find(|(n, _)| *n == j)
                .map(|(_, c)| CleanHeader { jinode: addr, ..*c }),
            _ => None,
        };
        for l in 0..nblocks {
            let p = data0 + l;
            let blk = match (kind, &clean) {
                (SysKind::Journal(j, _), Some(c)) => {
                    clean_log_header(self.bsize, j, l + 1, l as u32, p, c)?
                }
                (SysKind::Journal(j, _), None) => {
                    let c = CleanHeader {
                        writer_jid: j,
                        jinode: addr,
                        ..CleanHeader::default()
                    };
                    clean_log_header(self.bsize, j, l + 1, l as u32, p, &c)?
                }
                _ => {
                    let mut z = vec![0u8; bs];
                    MetaHeader::new(metatype::QC, format::QC).write(&mut z)?;
                    z
                }
            };
            self.write(p, blk);
        }
        // Pointers: each level points at the one below (data for the lowest).
        let mut below_start = data0;
        let mut below_count = nblocks;
        for (k, &c) in levels.iter().enumerate() {
            for i in 0..c {
                let mut ib = vec![0u8; bs];
                MetaHeader::new(metatype::IN, format::IN).write(&mut ib)?;
                for s in 0..inptrs {
                    let child = i * inptrs + s;
                    if child >= below_count {
                        break;
                    }
                    put_be64(
                        &mut ib,
                        MetaHeader::SIZE + 8 * s as usize,
                        below_start + child,
                    );
                }
                self.write(level_start[k] + i, ib);
            }
            below_start = level_start[k];
            below_count = c;
        }
        for s in 0..below_count {
            put_be64(&mut b, Dinode::SIZE + 8 * s as usize, below_start + s);
        }
        di.blocks = 1 + total;
        di.write(&mut b)?;
        self.write(addr, b);
        Ok(())
    }

    /// `n` consecutive blocks free in the bitmap and not claimed, marked
    /// used in the bitmap (the walk claims them). From the end backwards.
    fn alloc_run(&mut self, n: u64) -> Option<u64> {
        for i in (0..self.rgs.len()).rev() {
            if self.load_bits(i).is_err() {
                continue;
            }
            let ri = self.rgs[i].ri;
            let mut run = 0u64;
            let mut found = None;
            for idx in (0..u64::from(ri.data)).rev() {
                let blk = ri.data0 + idx;
                if bitmap_get(&self.rgs[i].bits, idx as usize) == Some(BlockState::Free)
                    && want_get(&self.want, blk) == W_FREE
                    && !self.cache.contains_key(&blk)
                {
                    run += 1;
                    if run == n {
                        found = Some(blk);
                        break;
                    }
                } else {
                    run = 0;
                }
            }
            if let Some(start) = found {
                for b in start..start + n {
                    self.set_bit(b, BlockState::Used);
                }
                return Some(start);
            }
        }
        None
    }

    fn check_de_type(&mut self, rf: &Ref, dt: u16, label: &Label) -> Res<()> {
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

    fn fix_dirent_inum(&mut self, at: (u64, usize, usize), formal: u64) -> Res<()> {
        let mut b = self.read(at.0)?;
        put_be64(&mut b, at.1, formal);
        self.write(at.0, b);
        Ok(())
    }

    /// Remove the record at `at` (as the kernel's dirent_del does).
    fn del_dirent(&mut self, at: (u64, usize, usize)) -> Res<()> {
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

    /// Check one inode: its metadata tree, EA blocks, and for a directory
    /// its entries.
    fn inspect(&mut self, idx: u64) -> Res<()> {
        let addr = self.ino(idx).addr;
        if let Err(e) = self.claim(addr, idx, W_DINODE) {
            self.r.problem(&format!("Inode {addr}: {e}"), false);
            return Ok(());
        }
        let (mut di, buf) = self.dinode(addr)?;
        let label = format!("Inode {addr}");
        let mut dirty = false;
        // Height and size.
        if di.height > gfs2_ondisk::MAX_META_HEIGHT {
            self.r.problem(
                &format!("{label}: height {} is too large", di.height),
                false,
            );
            return Ok(());
        }
        let maxsz = layout::max_size_for_height(self.bsize, di.height).unwrap_or(u64::MAX);
        if di.size > maxsz
            && self.r.problem(
                &format!(
                    "{label}: size {} is too large for height {}",
                    di.size, di.height
                ),
                true,
            )
        {
            di.size = maxsz;
            dirty = true;
        }
        // Metadata tree. A journal's indirect blocks with a damaged header
        // but sane pointers are kept (and their header rewritten).
        let is_dir = di.is_dir();
        let journal = self.ino(idx).parent == self.jindex && !is_dir;
        // Journals and quota change files keep indirect blocks whose header
        // is damaged but whose pointers are sane, and get holes filled.
        let keep_map = journal || self.ino(idx).quota_change;
        let t = self.tree_ex(&di, &buf, addr, keep_map)?;
        for (p, loc) in &t.meta {
            // Pointers inside indirect blocks that were dropped.
            if loc.block != addr && self.owner_of(loc.block) != Some(idx) {
                continue;
            }
            if let Err(e) = self.claim(*p, idx, W_USED) {
                if self.try_steal(*p, idx, metatype::IN) {
                    self.r.problem(
                        &format!("{label}: indirect block {p} is also another file's data; that file gets a copy"),
                        true,
                    );
                } else if self
                    .r
                    .problem(&format!("{label}: indirect pointer: {e}"), true)
                {
                    self.zero_ptr(*loc)?;
                }
            } else if keep_map
                && self
                    .read(*p)
                    .is_ok_and(|b| !meta_ok(&b, metatype::IN) && self.indirect_ok(&b, true))
            {
                if self.r.problem(
                    &format!("{label}: system file indirect block {p} has a damaged header"),
                    true,
                ) {
                    let mut b = self.read(*p)?;
                    MetaHeader::new(metatype::IN, format::IN).write(&mut b)?;
                    self.write(*p, b);
                }
            } else if !self.read(*p).is_ok_and(|b| meta_ok(&b, metatype::IN)) {
                if self.r.problem(
                    &format!("{label}: block {p} is not an indirect block"),
                    true,
                ) {
                    self.zero_ptr(*loc)?;
                }
                self.unclaim(*p, idx);
            }
        }
        let mut data = Vec::with_capacity(t.data.len());
        for (l, p, loc) in t.data {
            // Skip data under indirect blocks that were dropped.
            if loc.block != addr && self.owner_of(loc.block) != Some(idx) {
                continue;
            }
            match self.claim_ex(p, idx, W_USED, is_dir) {
                Ok(()) => data.push((l, p)),
                Err(e) => {
                    let dup = self.rg_of(p).is_some();
                    if dup && !is_dir {
                        if self
                            .r
                            .problem(&format!("{label}: data {e}; copying it"), true)
                        {
                            if let Some(nb) = self.alloc(idx, false) {
                                let b = self.read(p)?;
                                self.write(nb, b);
                                let mut pb = self.read(loc.block)?;
                                put_be64(&mut pb, loc.off, nb);
                                self.write(loc.block, pb);
                                data.push((l, nb));
                            } else {
                                self.zero_ptr(loc)?;
                            }
                        }
                    } else if self.ino(idx).parent == self.jindex && !is_dir {
                        // A journal must not have holes: give it a new block.
                        if self.r.problem(
                            &format!("{label}: journal block pointer: {e}; replacing the block"),
                            true,
                        ) {
                            if let Some(nb) = self.alloc(idx, false) {
                                self.write(nb, vec![0u8; self.bsize as usize]);
                                let mut pb = self.read(loc.block)?;
                                put_be64(&mut pb, loc.off, nb);
                                self.write(loc.block, pb);
                                data.push((l, nb));
                            } else {
                                self.zero_ptr(loc)?;
                            }
                        }
                    } else if self.r.problem(&format!("{label}: data pointer: {e}"), true) {
                        self.zero_ptr(loc)?;
                    }
                }
            }
        }
        // Journals and quota change files are exactly as long as their map.
        if (journal || self.ino(idx).quota_change) && !data.is_empty() {
            // A complete map up to the size with pointers past it: the
            // pointers are wrong, not the size.
            let bs = u64::from(self.bsize);
            let nsize = di.size / bs;
            let inside = data.iter().filter(|d| d.0 < nsize).count() as u64;
            if di.size % bs == 0 && nsize > 0 && inside == nsize && data.len() as u64 > inside {
                if self.r.problem(
                    &format!("{label}: block pointers past the end of the system file"),
                    true,
                ) {
                    let cur = self.read(addr)?;
                    let t = self.tree_ex(&di, &cur, addr, journal)?;
                    for (l, p, loc) in t.data {
                        if l >= nsize && data.iter().any(|d| d.0 == l && d.1 == p) {
                            self.zero_ptr(loc)?;
                            want_set(&mut self.want, p, W_FREE);
                            self.ino(idx).blocks -= 1;
                        }
                    }
                }
                data.retain(|d| d.0 < nsize);
            }
            let blocks = data.iter().map(|d| d.0).max().unwrap_or(0) + 1;
            let want = blocks.saturating_mul(u64::from(self.bsize));
            if di.size != want
                && self.r.problem(
                    &format!(
                        "{label}: system file size {} does not match its {blocks} mapped blocks",
                        di.size
                    ),
                    true,
                )
            {
                di.size = want;
                dirty = true;
            }
        }
        if keep_map && self.r.repairing() {
            self.fill_journal_holes(idx, &di, &mut data)?;
        }
        if self.ino(idx).quota_change {
            for &(_, p) in &data {
                let b = self.read(p)?;
                if !meta_ok(&b, metatype::QC)
                    && self.r.problem(
                        &format!("{label}: quota change block {p} has a bad header"),
                        true,
                    )
                {
                    let mut b = b;
                    MetaHeader::new(metatype::QC, format::QC).write(&mut b)?;
                    self.write(p, b);
                }
            }
        }
        // Allocation goals.
        for (what, goal) in [("goal_meta", di.goal_meta), ("goal_data", di.goal_data)] {
            if (goal >= self.fs_blocks || goal == 0)
                && self
                    .r
                    .problem(&format!("{label}: bad allocation goal {what} {goal}"), true)
            {
                if what == "goal_meta" {
                    di.goal_meta = addr;
                } else {
                    di.goal_data = addr;
                }
                dirty = true;
            }
        }
        // Extended attributes.
        if di.eattr != 0 {
            if let Err(e) = self.check_ea(idx, &di) {
                if self.r.problem(
                    &format!("{label}: extended attributes: {e}; removing them"),
                    true,
                ) {
                    di.eattr = 0;
                    di.flags &= !dif::EA_INDIRECT;
                    dirty = true;
                }
            }
        }
        if dirty {
            let mut b = self.read(addr)?;
            di.write(&mut b)?;
            self.write(addr, b);
        }
        if is_dir {
            // Follow the entries in block order (sequential reads; the
            // queue is popped from the back).
            let from = self.queue.len();
            self.check_dir(idx, &di, &data)?;
            let tail = self.queue.make_contiguous();
            if let Some(new) = tail.get_mut(from..) {
                new.sort_unstable_by_key(|r| std::cmp::Reverse(r.inum.addr));
            }
        }
        Ok(())
    }

    /// System inodes carry the SYSTEM flag; the small ones have fixed sizes.
    fn check_system(&mut self, addr: u64, name: &str) -> Res<()> {
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
            let mut b = self.read(addr)?;
            di.write(&mut b)?;
            self.write(addr, b);
        }
        Ok(())
    }

    /// Give every block of a journal that its map lost a new (zeroed) block,
    /// making indirect blocks where they are missing.
    fn fill_journal_holes(&mut self, idx: u64, di: &Dinode, data: &mut Vec<(u64, u64)>) -> Res<()> {
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

    /// A metadata block of the right type that a file claimed as data first:
    /// it goes to `idx`, and the file is given a copy after the walk.
    fn try_steal(&mut self, blk: u64, idx: u64, mh_type: u32) -> bool {
        if self.rg_of(blk).is_some()
            && want_get(&self.want, blk) == W_USED
            && self.owner_of(blk).is_none()
            && self.read(blk).is_ok_and(|b| meta_ok(&b, mh_type))
        {
            self.owner.insert(blk, idx);
            self.ino(idx).blocks += 1;
            self.stolen.insert(blk);
            return true;
        }
        false
    }

    /// Give the files whose data blocks were taken back as metadata their
    /// own copies (a journal gets zeroed blocks).
    pub fn resolve_stolen(&mut self) -> Res<()> {
        if self.stolen.is_empty() || !self.r.repairing() {
            return Ok(());
        }
        for addr in self.reached_dinodes() {
            let i = addr;
            let Ok((di, buf)) = self.dinode(addr) else {
                continue;
            };
            if di.is_dir() || di.height == 0 {
                continue;
            }
            let journal = self.journals.iter().any(|(_, c)| c.jinode == addr);
            let t = self.tree_ex(&di, &buf, addr, journal)?;
            for (_, p, loc) in t.data {
                if !self.stolen.contains(&p)
                    || (loc.block != addr && self.owner_of(loc.block) != Some(i))
                {
                    continue;
                }
                match self.alloc(i, false) {
                    Some(nb) => {
                        let content = if journal {
                            vec![0u8; self.bsize as usize]
                        } else {
                            self.read(p)?
                        };
                        self.write(nb, content);
                        let mut b = self.read(loc.block)?;
                        put_be64(&mut b, loc.off, nb);
                        self.write(loc.block, b);
                        self.ino(i).blocks -= 1;
                    }
                    None => {
                        self.zero_ptr(loc)?;
                        self.ino(i).blocks -= 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// The inodes with a record, in address order.
    fn tracked(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.inodes.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Every dinode the walk reached, in address order.
    fn reached_dinodes(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, b) in self.want.iter().enumerate() {
            if *b == 0 {
                continue;
            }
            for k in 0..4 {
                if (b >> (2 * k)) & 3 == W_DINODE {
                    out.push((i * 4 + k) as u64);
                }
            }
        }
        out
    }

    fn unclaim(&mut self, blk: u64, idx: u64) {
        if self.owner_of(blk) == Some(idx) {
            self.owner.remove(&blk);
            want_set(&mut self.want, blk, W_FREE);
            self.ino(idx).blocks -= 1;
        }
    }

    fn check_ea(&mut self, idx: u64, di: &Dinode) -> Result<(), String> {
        let mut blocks = vec![di.eattr];
        let mut claimed = Vec::new();
        let res = (|| {
            self.claim(di.eattr, idx, W_USED)?;
            claimed.push(di.eattr);
            let b = self.read(di.eattr).map_err(|e| e.0)?;
            if di.flags & dif::EA_INDIRECT != 0 {
                if !meta_ok(&b, metatype::IN) {
                    return Err(format!("block {} is not an EA indirect block", di.eattr));
                }
                blocks.clear();
                for off in (MetaHeader::SIZE..b.len()).step_by(8) {
                    let p = be64(&b, off);
                    if p == 0 {
                        break;
                    }
                    self.claim(p, idx, W_USED)?;
                    claimed.push(p);
                    blocks.push(p);
                }
            }
            for eb in blocks {
                let b = self.read(eb).map_err(|e| e.0)?;
                if !meta_ok(&b, metatype::EA) {
                    return Err(format!("block {eb} is not an EA block"));
                }
                for ea in EaIter::new(&b) {
                    let ea = ea.map_err(|e| e.to_string())?;
                    for p in ea.ptrs {
                        self.claim(p, idx, W_USED)?;
                        claimed.push(p);
                        let d = self.read(p).map_err(|e| e.0)?;
                        if !meta_ok(&d, metatype::ED) {
                            return Err(format!("block {p} is not an EA data block"));
                        }
                    }
                }
            }
            Ok(())
        })();
        if res.is_err() {
            for c in claimed {
                self.unclaim(c, idx);
            }
        }
        res
    }

    // ---- directories ----------------------------------------------------

    fn check_dir(&mut self, idx: u64, di: &Dinode, data: &[(u64, u64)]) -> Res<()> {
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
                let mut b = self.read(addr)?;
                di.write(&mut b)?;
                self.write(addr, b);
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

    /// Rebuild an exhash table from its valid leaves: each leaf goes where
    /// its entries' hashes say (or where it was found if empty); holes get
    /// new empty leaves.
    fn rebuild_table(
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

    fn write_table(&mut self, idx: u64, di: &Dinode, table: &[u64]) -> Res<()> {
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

    /// Check the entries of one block of a directory and queue their
    /// targets. `range`: for a leaf, the hash-table slots it covers.
    fn scan_dirents(
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

    // ---- orphans and lost+found -------------------------------------

    /// Inodes the bitmaps say exist but no directory reaches: moved to
    /// lost+found (created if needed) with -y, so nothing is lost.
    pub fn orphans(&mut self) -> Res<()> {
        let mut found = Vec::new();
        for i in 0..self.rgs.len() {
            if self.rgs[i].bits_lost {
                continue;
            }
            let ri = self.rgs[i].ri;
            let bits = self.rg_bits(i)?;
            for (j, &b) in bits.iter().enumerate() {
                // Both bits of a pair set: a dinode.
                let both = b & (b >> 1) & 0x55;
                if both == 0 {
                    continue;
                }
                for k in 0..4 {
                    let idx = (j * 4 + k) as u64;
                    let blk = ri.data0 + idx;
                    if both & (1 << (2 * k)) != 0
                        && idx < u64::from(ri.data)
                        && want_get(&self.want, blk) == W_FREE
                    {
                        found.push(blk);
                    }
                }
            }
        }
        for blk in found {
            if want_get(&self.want, blk) != W_FREE {
                continue; // reached through an earlier orphan directory
            }
            let Ok(b) = self.read(blk) else { continue };
            let Ok(di) = Dinode::parse(&b) else { continue };
            if di.header.magic != MAGIC
                || di.header.mh_type != metatype::DI
                || di.num.addr != blk
                || !valid_ifmt(di.mode)
                || di.height > gfs2_ondisk::MAX_META_HEIGHT
            {
                continue; // the bitmap check frees it
            }
            if !di.is_dir() && di.size == 0 && di.eattr == 0 {
                // As gfs2-utils: an unlinked empty file (no extended
                // attributes either) holds nothing worth keeping; the
                // bitmap check frees it.
                continue;
            }
            let msg = format!(
                "Inode {blk} (mode {:o}, {} blocks) is not linked from any directory; moving it to lost+found",
                di.mode, di.blocks
            );
            if !self.r.problem(&msg, true) {
                // -n: account for its blocks so they are not reported again.
                let idx = self.add_inode(&di, blk);
                self.ino(idx).links = di.nlink;
                self.ino(idx).parent = VIRTUAL;
                let quiet = std::mem::replace(&mut self.r.verbosity, -1);
                let (found0, left0) = (self.r.found, self.r.left);
                self.inspect(idx)?;
                self.drain_queue()?;
                self.r.verbosity = quiet;
                (self.r.found, self.r.left) = (found0, left0);
                continue;
            }
            let Some(lf) = self.lost_and_found()? else {
                self.r.info("no lost+found: the inode is freed instead");
                continue;
            };
            let name = format!("#{blk}");
            let dt = ifmt_to_dt(di.mode);
            match self.insert_dirent(lf, name.as_bytes(), di.num, dt)? {
                Some(at) => {
                    self.queue.push_back(Ref {
                        inum: di.num,
                        de_type: dt,
                        dir: lf,
                        at,
                    });
                    self.drain_queue()?;
                }
                None => self
                    .r
                    .info("lost+found is full: the inode is freed instead"),
            }
        }
        Ok(())
    }

    /// The lost+found directory under the root, made if missing.
    fn lost_and_found(&mut self) -> Res<Option<u64>> {
        let root = self.sb.root_dir.addr;
        if !self.inodes.contains_key(&root) {
            return Ok(None);
        }
        let ridx = root;
        let blocks = self
            .dirs
            .get(&ridx)
            .map(|d| d.dirent_blocks.clone())
            .unwrap_or_default();
        for (blk, start) in blocks {
            let b = self.read(blk)?;
            for d in DirentIter::new(&b, start).flatten() {
                if d.name == b"lost+found" && !d.dirent.is_unused() {
                    let i = d.dirent.inum.addr;
                    if self.inodes.get(&i).is_some_and(|x| x.is_dir) {
                        return Ok(Some(i));
                    }
                }
            }
        }
        // Make one: a stuffed directory in the first free block.
        let mut free = None;
        for k in 0..self.rgs.len() {
            let ri = self.rgs[k].ri;
            let bits = self.rg_bits(k)?;
            free = (0..u64::from(ri.data)).find_map(|i| {
                let blk = ri.data0 + i;
                (bitmap_get(&bits, i as usize) == Some(BlockState::Free)
                    && want_get(&self.want, blk) == W_FREE)
                    .then_some(blk)
            });
            if free.is_some() {
                break;
            }
        }
        let Some(addr) = free else {
            return Ok(None);
        };
        let formal = self.max_formal + 1;
        let inum = Inum {
            formal_ino: formal,
            addr,
        };
        let rinum = Inum {
            formal_ino: self.ino(ridx).formal,
            addr: root,
        };
        let (di, b) = self.empty_dir(inum, rinum, 0o40700)?;
        let dotdot_off = Dinode::SIZE + dirent_size(1);
        let Some(at) = self.insert_dirent(ridx, b"lost+found", inum, dt::DIR)? else {
            return Ok(None);
        };
        self.write(addr, b);
        self.set_bit(addr, BlockState::Dinode);
        self.r.info(&format!("created lost+found at block {addr}"));
        let idx = self.add_inode(&di, addr);
        want_set(&mut self.want, addr, W_DINODE);
        let ino = &mut self.ino(idx);
        ino.parent = root;
        ino.links = 2; // the root's entry and '.'
        ino.blocks = 1;
        let d = self.dirs.entry(idx).or_default();
        d.dirent_blocks.push((addr, Dinode::SIZE));
        d.dotdot = Some((root, addr, dotdot_off));
        d.has_dot = true;
        let _ = at;
        Ok(Some(idx))
    }

    /// A stuffed directory holding only '.' and '..'.
    fn empty_dir(&self, inum: Inum, parent: Inum, mode: u32) -> Res<(Dinode, Vec<u8>)> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let di = Dinode {
            num: inum,
            mode,
            nlink: 2,
            size: layout::stuffed_max(self.bsize),
            blocks: 1,
            atime: now,
            mtime: now,
            ctime: now,
            goal_meta: inum.addr,
            goal_data: inum.addr,
            payload_format: format::DE,
            entries: 2,
            ..Dinode::default()
        };
        let mut b = vec![0u8; self.bsize as usize];
        di.write(&mut b)?;
        let dot = Entry::new(".", inum, dt::DIR);
        let dotdot = Entry::new("..", parent, dt::DIR);
        dirlayout::pack(&mut b[Dinode::SIZE..], &[&dot, &dotdot]).map_err(Fatal)?;
        Ok((di, b))
    }

    /// Add an entry to a directory where its hash says, if there is room.
    fn insert_dirent(
        &mut self,
        idx: u64,
        name: &[u8],
        inum: Inum,
        dt: u16,
    ) -> Res<Option<(u64, usize, usize)>> {
        let addr = self.ino(idx).addr;
        let (di, _) = self.dinode(addr)?;
        let need = dirent_size(name.len());
        let h = hash::dirent_hash(name);
        let mut candidates = Vec::new();
        if di.is_exhash() {
            let table = self.file_data(addr)?;
            let slot = if di.depth == 0 {
                0
            } else {
                (h >> (32 - u32::from(di.depth.min(32)))) as usize
            };
            let mut p = be64(&table, slot * 8);
            while p != 0 && candidates.len() < 100 && self.rg_of(p).is_some() {
                candidates.push((p, Leaf::SIZE));
                let b = self.read(p)?;
                p = Leaf::parse(&b).map(|l| l.next).unwrap_or(0);
            }
        } else {
            candidates.push((addr, Dinode::SIZE));
        }
        for &(blk, start) in &candidates {
            let mut b = self.read(blk)?;
            let mut spot = None;
            for d in DirentIter::new(&b, start) {
                let Ok(d) = d else { break };
                let used = if d.dirent.is_unused() {
                    0
                } else {
                    dirent_size(usize::from(d.dirent.name_len))
                };
                let rec = usize::from(d.dirent.rec_len);
                if rec >= used + need {
                    spot = Some((d.offset, used, rec));
                    break;
                }
            }
            let Some((off, used, rec)) = spot else {
                continue;
            };
            if used > 0 {
                b[off + 20..off + 22].copy_from_slice(&(used as u16).to_be_bytes());
            }
            let noff = off + used;
            Dirent {
                inum,
                hash: h,
                rec_len: (rec - used) as u16,
                name_len: name.len() as u16,
                de_type: dt,
                ..Dirent::default()
            }
            .write(&mut b[noff..])?;
            b[noff + Dirent::SIZE..noff + Dirent::SIZE + name.len()].copy_from_slice(name);
            self.write(blk, b);
            return Ok(Some((blk, noff, start)));
        }
        // Every leaf of the hash chain is full: chain one more leaf, as the
        // kernel does when a leaf cannot be split.
        let Some(&(last, _)) = candidates.last().filter(|_| di.is_exhash()) else {
            return Ok(None);
        };
        let mut lb = self.read(last)?;
        let Ok(mut tail) = Leaf::parse(&lb) else {
            return Ok(None);
        };
        let Some(nb) = self.alloc(idx, true) else {
            self.r.info("no free block for another directory leaf");
            return Ok(None);
        };
        let mut b = vec![0u8; self.bsize as usize];
        Leaf {
            depth: tail.depth,
            entries: 1,
            inode: addr,
            dist: u32::try_from(candidates.len() + 1).unwrap_or(u32::MAX),
            ..Leaf::default()
        }
        .write(&mut b)?;
        Dirent {
            inum,
            hash: h,
            rec_len: (self.bsize as usize - Leaf::SIZE) as u16,
            name_len: name.len() as u16,
            de_type: dt,
            ..Dirent::default()
        }
        .write(&mut b[Leaf::SIZE..])?;
        b[Leaf::SIZE + Dirent::SIZE..Leaf::SIZE + Dirent::SIZE + name.len()].copy_from_slice(name);
        self.write(nb, b);
        tail.next = nb;
        tail.write(&mut lb)?;
        self.write(last, lb);
        // Counted with the directory's other entries from now on.
        if let Some(d) = self.dirs.get_mut(&idx) {
            d.dirent_blocks.push((nb, Leaf::SIZE));
        }
        Ok(Some((nb, Leaf::SIZE, Leaf::SIZE)))
    }

    /// After the walk: '.' and '..', entry counts, link counts, di_blocks.
    pub fn check_counts(&mut self) -> Res<()> {
        self.r.progress("Checking link counts and entry counts");
        // '..'
        for i in self.tracked() {
            if !self.ino(i).is_dir || self.ino(i).parent == VIRTUAL {
                continue;
            }
            let parent = self.ino(i).parent;
            let addr = self.ino(i).addr;
            match self.dirs.get(&i).and_then(|d| d.dotdot) {
                Some((t, blk, off)) => {
                    let pf = self.inodes.get(&parent).map(|p| p.formal).unwrap_or(0);
                    let tf = be64(&self.read(blk)?, off);
                    if (t != parent || tf != pf)
                        && self.r.problem(
                            &format!("Directory {addr}: '..' is {tf}/{t}, should be {pf}/{parent}"),
                            true,
                        )
                    {
                        let pf = self.inodes.get(&parent).map(|p| p.formal).unwrap_or(0);
                        let mut b = self.read(blk)?;
                        put_be64(&mut b, off, pf);
                        put_be64(&mut b, off + 8, parent);
                        self.write(blk, b);
                    }
                    if let Some(p) = self.inodes.get_mut(&parent) {
                        p.links += 1;
                    }
                }
                None => {
                    if self.r.problem(
                        &format!("Directory {addr}: no '..' entry; adding one"),
                        true,
                    ) {
                        let pf = self.inodes.get(&parent).map(|p| p.formal).unwrap_or(0);
                        let pinum = Inum {
                            formal_ino: pf,
                            addr: parent,
                        };
                        if self.insert_dirent(i, b"..", pinum, dt::DIR)?.is_none() {
                            self.r.info("no room for '..' in the directory");
                        }
                    }
                    if let Some(p) = self.inodes.get_mut(&parent) {
                        p.links += 1;
                    }
                }
            }
            let has_dot = self.dirs.get(&i).is_some_and(|d| d.has_dot);
            if !has_dot
                && self
                    .r
                    .problem(&format!("Directory {addr}: no '.' entry; adding one"), true)
            {
                let me = Inum {
                    formal_ino: self.ino(i).formal,
                    addr,
                };
                if self.insert_dirent(i, b".", me, dt::DIR)?.is_some() {
                    self.ino(i).links += 1;
                }
            }
        }
        // Entry counts.
        for i in self.tracked() {
            if !self.ino(i).is_dir {
                continue;
            }
            let addr = self.ino(i).addr;
            let mut total = 0u32;
            let blocks = self
                .dirs
                .get(&i)
                .map(|d| d.dirent_blocks.clone())
                .unwrap_or_default();
            for (blk, start) in blocks {
                let b = self.read(blk)?;
                let n = DirentIter::new(&b, start)
                    .flatten()
                    .filter(|d| !d.dirent.is_unused())
                    .count() as u32;
                total += n;
                if start == Leaf::SIZE {
                    let mut lf = Leaf::parse(&b)?;
                    if u32::from(lf.entries) != n
                        && self.r.problem(
                            &format!(
                                "Directory {addr}: leaf {blk} says {} entries, found {n}",
                                lf.entries
                            ),
                            true,
                        )
                    {
                        let mut b = b.clone();
                        lf.entries = n as u16;
                        lf.write(&mut b)?;
                        self.write(blk, b);
                    }
                }
            }
            let (mut di, _) = self.dinode(addr)?;
            if di.entries != total
                && self.r.problem(
                    &format!(
                        "Directory {addr}: di_entries is {}, found {total}",
                        di.entries
                    ),
                    true,
                )
            {
                di.entries = total;
                let mut b = self.read(addr)?;
                di.write(&mut b)?;
                self.write(addr, b);
            }
        }
        // Link counts and block counts.
        for i in self.tracked() {
            let ino = &self.ino(i);
            let (addr, mut links, nlink, blocks) = (ino.addr, ino.links, ino.nlink, ino.blocks);
            if ino.parent == VIRTUAL {
                links = nlink;
            }
            if links == nlink && blocks == ino.di_blocks {
                continue;
            }
            let Ok((mut di, _)) = self.dinode(addr) else {
                continue;
            };
            let mut dirty = false;
            if links != nlink
                && self.r.problem(
                    &format!("Inode {addr}: link count {nlink}, found {links} links"),
                    true,
                )
            {
                di.nlink = links;
                dirty = true;
            }
            if blocks != di.blocks
                && self.r.problem(
                    &format!(
                        "Inode {addr}: di_blocks {}, found {blocks} blocks",
                        di.blocks
                    ),
                    true,
                )
            {
                di.blocks = blocks;
                dirty = true;
            }
            if dirty {
                let mut b = self.read(addr)?;
                di.write(&mut b)?;
                self.write(addr, b);
            }
        }
        Ok(())
    }

    // ---- bitmaps and counts ------------------------------------------

    pub fn check_bitmaps(&mut self) -> Res<()> {
        self.r.progress("Checking bitmaps");
        // Compare on two threads, reading the bitmaps that are not in
        // memory; also count free blocks and dinodes as the bitmaps are.
        let want = &self.want;
        let rgs = &self.rgs;
        let dev = &self.dev;
        let bsize = self.bsize as usize;
        type Cmp = (Vec<(u64, BlockState, u8)>, u32, u32, Option<String>);
        let cmp = |rg: &Rg| -> Cmp {
            let bits = match rg_bits_of(dev, bsize, rg) {
                Ok(b) => b,
                Err(e) => return (Vec::new(), 0, 0, Some(e.to_string())),
            };
            let mut v = Vec::new();
            let (mut free, mut dinodes) = (0u32, 0u32);
            let aligned = rg.ri.data0 & 3 == 0;
            let w0 = (rg.ri.data0 >> 2) as usize;
            for (j, &byte) in bits.iter().enumerate() {
                let base = 4 * j as u64;
                if base >= u64::from(rg.ri.data) {
                    break;
                }
                let full = base + 4 <= u64::from(rg.ri.data);
                if aligned && full && want.get(w0 + j) == Some(&byte) {
                    // Same four states: count them only.
                    for k in 0..4 {
                        match (byte >> (2 * k)) & 3 {
                            0 => free += 1,
                            3 => dinodes += 1,
                            _ => {}
                        }
                    }
                    continue;
                }
                for k in 0..4u64 {
                    let idx = base + k;
                    if idx >= u64::from(rg.ri.data) {
                        break;
                    }
                    let blk = rg.ri.data0 + idx;
                    let have = BlockState::from_bits(byte >> (2 * k));
                    match have {
                        BlockState::Free => free += 1,
                        BlockState::Dinode => dinodes += 1,
                        _ => {}
                    }
                    let w = want_get(want, blk);
                    let ok = match have {
                        BlockState::Free => w == W_FREE,
                        BlockState::Used => w == W_USED,
                        BlockState::Dinode => w == W_DINODE,
                        BlockState::Unlinked => false,
                    };
                    if !ok {
                        v.push((blk, have, w));
                    }
                }
            }
            (v, free, dinodes, None)
        };
        let half = rgs.len().div_ceil(2);
        let results: Vec<Cmp> = std::thread::scope(|s| {
            let (a, b) = rgs.split_at(half);
            let h = s.spawn(|| b.iter().map(cmp).collect::<Vec<_>>());
            let mut v: Vec<_> = a.iter().map(cmp).collect();
            v.extend(h.join().unwrap_or_default());
            v
        });
        let mut counts = Vec::with_capacity(results.len());
        let mut diffs = Vec::with_capacity(results.len());
        for (i, (d, f, n, err)) in results.into_iter().enumerate() {
            if let Some(e) = err {
                return Err(Fatal(format!("resource group {i}: bitmap read error: {e}")));
            }
            diffs.push(d);
            counts.push((f, n));
        }
        let name = |s: BlockState| match s {
            BlockState::Free => "free",
            BlockState::Used => "data/metadata",
            BlockState::Unlinked => "unlinked inode",
            BlockState::Dinode => "inode",
        };
        let wname = |w: u8| match w {
            W_FREE => "free",
            W_USED => "data/metadata",
            _ => "inode",
        };
        for (i, list) in diffs.into_iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            if self.rgs[i].bits_lost {
                if self.r.problem(
                    &format!(
                        "Resource group {i}: rebuilding its bitmap ({} blocks differ)",
                        list.len()
                    ),
                    true,
                ) {
                    for (blk, _, w) in list {
                        self.set_bit(blk, BlockState::from_bits(w));
                    }
                }
                continue;
            }
            let total = list.len();
            let verbosity = self.r.verbosity;
            for (k, (blk, have, w)) in list.into_iter().enumerate() {
                // Without -v, the first few of an rgrp are shown one by one.
                if k == 10 && verbosity == 0 {
                    eprintln!(
                        "... and {} more bitmap differences in resource group {i} (-v lists them)",
                        total - 10
                    );
                    self.r.verbosity = -1;
                }
                let mut what = format!(
                    "Block {blk}: bitmap says {}, but it is {}",
                    name(have),
                    wname(w)
                );
                if have == BlockState::Dinode && w == W_FREE {
                    if let Ok((di, _)) = self.dinode(blk) {
                        what = format!("Inode {blk} (mode {:o}, {} blocks) is not linked from any directory; freeing it", di.mode, di.blocks);
                    }
                }
                if self.r.problem(&what, true) {
                    self.set_bit(blk, BlockState::from_bits(w));
                }
            }
            self.r.verbosity = verbosity;
        }
        // Counts and headers.
        let mut tot = (0u64, 0u64, 0u64);
        for (i, &(f0, d0)) in counts.iter().enumerate() {
            let rg = &self.rgs[i];
            let (mut free, mut dinodes) = (f0, d0);
            if rg.loaded {
                // Changed since it was compared: count again.
                (free, dinodes) = (0, 0);
                for idx in 0..rg.ri.data as usize {
                    match bitmap_get(&rg.bits, idx) {
                        Some(BlockState::Free) => free += 1,
                        Some(BlockState::Dinode) => dinodes += 1,
                        _ => {}
                    }
                }
            }
            let (hf, hd, lost) = (rg.hdr.free, rg.hdr.dinodes, rg.bits_lost);
            if hf != free
                && (lost
                    || self.r.problem(
                        &format!("Resource group {i}: rg_free is {hf}, bitmap says {free}"),
                        true,
                    ))
            {
                self.rgs[i].hdr.free = free;
                self.rgs[i].dirty = true;
            }
            if hd != dinodes
                && (lost
                    || self.r.problem(
                        &format!("Resource group {i}: rg_dinodes is {hd}, bitmap says {dinodes}"),
                        true,
                    ))
            {
                self.rgs[i].hdr.dinodes = dinodes;
                self.rgs[i].dirty = true;
            }
            tot.0 += u64::from(self.rgs[i].ri.data);
            tot.1 += u64::from(free);
            tot.2 += u64::from(dinodes);
            if self.rgs[i].dirty && self.r.repairing() {
                self.write_rg(i)?;
            }
        }
        self.check_statfs(tot)
    }

    fn write_rg(&mut self, i: usize) -> Res<()> {
        self.load_bits(i)?;
        let bs = self.bsize as usize;
        let rg = &self.rgs[i];
        let ri = rg.ri;
        let mut blocks = Vec::new();
        let mut pos = 0usize;
        for k in 0..ri.length as usize {
            let blk = ri.addr + k as u64;
            let mut b = self.read(blk)?;
            let start = if k == 0 { Rgrp::SIZE } else { MetaHeader::SIZE };
            if k > 0 {
                MetaHeader::new(metatype::RB, format::RB).write(&mut b)?;
            }
            let n = (bs - start).min(rg.bits.len().saturating_sub(pos));
            b[start..start + n].copy_from_slice(&rg.bits[pos..pos + n]);
            pos += n;
            if k == 0 {
                let mut h = rg.hdr;
                h.header = MetaHeader::new(metatype::RG, format::RG);
                h.data0 = ri.data0;
                h.data = ri.data;
                h.bitbytes = ri.bitbytes;
                h.write_with_crc(&mut b)?;
            }
            blocks.push((blk, b));
        }
        for (blk, b) in blocks {
            self.write(blk, b);
        }
        Ok(())
    }

    fn check_statfs(&mut self, (total, free, dinodes): (u64, u64, u64)) -> Res<()> {
        self.r.progress("Checking statfs");
        if self.statfs_addr == 0 {
            return Ok(());
        }
        let read_sc = |me: &Self, a: u64| -> Res<StatfsChange> {
            let b = me.read(a)?;
            Ok(StatfsChange::parse(&b[Dinode::SIZE..])?)
        };
        let master = read_sc(self, self.statfs_addr)?;
        let mut sum = (master.total, master.free, master.dinodes);
        let locals = self.local_statfs.clone();
        for a in &locals {
            if let Ok(l) = read_sc(self, *a) {
                sum.0 = sum.0.wrapping_add(l.total);
                sum.1 = sum.1.wrapping_add(l.free);
                sum.2 = sum.2.wrapping_add(l.dinodes);
            }
        }
        let real = (total as i64, free as i64, dinodes as i64);
        let have = sum;
        if have != real
            && self.r.problem(
                &format!(
                    "The statfs file is wrong: blocks {} free {} dinodes {}, resource groups say {total} {free} {dinodes}",
                    have.0, have.1, have.2
                ),
                true,
            )
        {
            let mut b = self.read(self.statfs_addr)?;
            StatfsChange {
                total: real.0,
                free: real.1,
                dinodes: real.2,
            }
            .write(&mut b[Dinode::SIZE..])?;
            self.write(self.statfs_addr, b);
            for a in locals {
                let mut b = self.read(a)?;
                b[Dinode::SIZE..Dinode::SIZE + 24].fill(0);
                self.write(a, b);
            }
        }
        Ok(())
    }

    /// Run every check.
    pub fn run(&mut self) -> Res<()> {
        self.check_sb()?;
        self.check_rgrps()?;
        self.check_journals()?;
        self.walk()?;
        self.orphans()?;
        self.resolve_stolen()?;
        self.rebuild_rindex()?;
        self.rewrite_rindex()?;
        self.check_counts()?;
        self.check_bitmaps()?;
        self.check_deferred_journals()?;
        self.flush()
    }
}

#[derive(Default)]
struct TreeOut {
    data: Vec<(u64, u64, PtrLoc)>,
    meta: Vec<(u64, PtrLoc)>,
}

#[allow(dead_code)]
fn _unused() -> usize {
    dirent_size(1)
}
