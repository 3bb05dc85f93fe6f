//! The checker. `Fsck::run` goes through it in gfs2-utils' order, each
//! step in a file of its own named as gfs2-utils names its parts:
//!
//! - `initialize.rs`: superblock, rindex and rgrp headers;
//!   `rgrepair.rs` rebuilds the rgrp layout from the headers when the
//!   rindex is wrong or lost; `sysdirs.rs` rebuilds a destroyed master
//!   directory, jindex or per_node from the system files found by scanning;
//! - `journals.rs`: heads found, dirty journals replayed;
//! - `pass1.rs`: the inode walk from the master and root directories, every
//!   dinode's tree (`pass1c.rs`: its EA blocks; `sysfiles.rs` rebuilds
//!   destroyed system files empty), and `pass2.rs`: directory entries and
//!   blocks as they are reached (`exhash.rs` rebuilds a broken hash table);
//! - `pass3.rs`: inodes no directory reaches, to lost+found;
//! - `pass1b.rs`: blocks claimed twice get a copy for the data owner;
//! - `pass4.rs`: '.', '..', entry, link and block counts;
//! - `pass5.rs`: bitmaps, rgrp counts and statfs.
//!
//! Underneath: `blockio.rs` (reads, the in-memory repairs and the final
//! write), `blockmap.rs` (claims, the expected state of every block,
//! allocation), `metawalk.rs` (reading trees and directories without
//! claiming), `dirwrite.rs` (new directories and entries), `filewrite.rs`
//! (new metadata trees), `mounted.rs`.
//!
//! Repairs are made in memory (`cache`) as problems are found and written
//! out at the end, so a check that stops on an operational error (exit 8)
//! leaves the device as it was.

mod blockio;
mod blockmap;
mod dirwrite;
mod exhash;
mod filewrite;
mod initialize;
mod journals;
mod metawalk;
mod mounted;
mod pass1;
mod pass1b;
mod pass1c;
mod pass2;
mod pass3;
mod pass4;
mod pass5;
mod rgrepair;
mod sysdirs;
mod sysfiles;

use blockio::rg_bits_of;
use filewrite::Alloc;
use journals::clean_log_header;
use metawalk::TreeOut;
pub use mounted::check_not_mounted;

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

impl Fsck {
    pub fn open(o: &Options) -> Res<Self> {
        // A path, or a network disk (nbd://, aoe:, iscsi://) as the mount
        // takes it.
        let dev = gfs2fuse::dev::spec::open(&o.device, o.mode == Mode::No)?;
        Ok(Self::with_device(dev, Report::new(o.mode, o.verbosity)))
    }

    /// A checker that has read nothing yet, on `dev`.
    fn with_device(dev: std::sync::Arc<dyn BlockDevice>, r: Report) -> Self {
        let dev_size = dev.size();
        Fsck {
            dev: dev.clone(),
            r,
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
        }
    }

    /// Run every check.
    pub fn run(&mut self) -> Res<()> {
        self.check_sb()?;
        if self.replay_first()? {
            // Start again on the replayed disk, keeping the report (the
            // replay counts as a repair).
            let r = Report::new(self.r.mode, self.r.verbosity);
            let mut fresh = Self::with_device(self.dev.clone(), r);
            std::mem::swap(&mut fresh.r, &mut self.r);
            *self = fresh;
            self.check_sb()?;
        }
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
