//! Directories: stuffed linear directories and exhash directories.
//!
//! A small directory keeps its dirents in the dinode block. A large one is
//! *exhash*: its data (blocks with `JD` headers) is a hash table of `2^depth`
//! leaf pointers indexed by the top `depth` bits of the name hash; a leaf of
//! depth `d` is pointed to by `2^(depth - d)` consecutive slots and may be
//! followed by a chain of overflow leaves (`lf_next`).
//!
//! Readdir offsets must stay valid across calls and survive entries being
//! added or removed meanwhile. Like the kernel we order entries by hash; the
//! cookie of an entry is `(hash >> 1) << 32 | n`, where `n` numbers the
//! entries sharing `hash >> 1` in (hash, name) order. Such entries always live
//! in the same leaf chain, so each chain is sorted on its own and a resumed
//! readdir starts at the hash-table slot of the cookie's hash.

use super::{Inode, Meta};
use crate::buf::Block;
use crate::error::{FsError, Result};
use crate::format::{
    be64, dif, disk_hash, mt, Dirent, Leaf, DINODE_SIZE, DIRENT_SIZE, LEAF_SIZE, META_HEADER_SIZE,
};
use std::collections::HashSet;

/// A directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name (no NUL, not necessarily UTF-8).
    pub name: Vec<u8>,
    /// Inode number (dinode block address).
    pub ino: u64,
    /// `no_formal_ino` of the target.
    pub formal_ino: u64,
    /// The name hash as stored.
    pub hash: u32,
    /// `DT_*` type.
    pub de_type: u16,
}

/// Bound on the leaves of one chain: a cycle or absurd chain is corruption.
const MAX_CHAIN: usize = 1 << 16;

/// Parse the dirents of a block from byte `start`, skipping unused ones.
pub fn parse_dirents(block: &[u8], start: usize, blkno: u64) -> Result<Vec<DirEntry>> {
    let mut slots = Vec::new();
    slot_dirents(block, start, blkno, 0, &mut slots)?;
    Ok(slots
        .iter()
        .map(|s| DirEntry {
            name: block[s.name_at as usize..s.name_at as usize + s.name_len as usize].to_vec(),
            ino: s.ino,
            formal_ino: s.formal_ino,
            hash: s.hash,
            de_type: s.de_type,
        })
        .collect())
}

/// Read `len` bytes of directory data at `offset`: the stuffed area, or data
/// blocks that each start with a `JD` metadata header.
pub fn read_dir_data(m: Meta<'_>, ip: &Inode, offset: u64, len: usize) -> Result<Vec<u8>> {
    let end = offset
        .checked_add(len as u64)
        .filter(|e| *e <= ip.di.size)
        .ok_or_else(|| FsError::corrupt(ip.ino, "directory read past its size"))?;
    if ip.is_stuffed() {
        return ip
            .stuffed()
            .get(offset as usize..end as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| FsError::corrupt(ip.ino, "stuffed directory data beyond the block"));
    }
    let jbsize = (m.bsize() as usize - META_HEADER_SIZE) as u64;
    let mut out = Vec::with_capacity(len);
    let mut pos = offset;
    while pos < end {
        let lblock = pos / jbsize;
        let o = (pos % jbsize) as usize;
        let n = ((jbsize - o as u64).min(end - pos)) as usize;
        let blk = super::bmap::map_block(m, ip, lblock)?
            .ok_or_else(|| FsError::corrupt(ip.ino, format!("hole in directory at {lblock}")))?;
        let b = m.read(blk, mt::JD)?;
        out.extend_from_slice(&b[META_HEADER_SIZE + o..META_HEADER_SIZE + o + n]);
        pos += n as u64;
    }
    Ok(out)
}

fn is_exhash(ip: &Inode) -> bool {
    ip.di.flags & dif::EXHASH != 0
}

/// Hash-table slots `[first, first + count)` of an exhash directory.
fn hash_ptrs(m: Meta<'_>, ip: &Inode, first: u64, count: u64) -> Result<Vec<u64>> {
    let data = read_dir_data(m, ip, first * 8, (count * 8) as usize)?;
    Ok(data.chunks_exact(8).filter_map(|c| be64(c, 0)).collect())
}

/// Read the leaf chain starting at `leaf` into `blocks` (and their addresses
/// into `addrs`), refusing leaves already in `seen`; the first leaf's depth.
fn chain_blocks(
    m: Meta<'_>,
    ip: &Inode,
    leaf: u64,
    seen: &mut HashSet<u64>,
    blocks: &mut Vec<Block>,
    addrs: &mut Vec<u64>,
) -> Result<u16> {
    let first = seen.len();
    let mut blk = leaf;
    let mut depth = None;
    while blk != 0 {
        if !seen.insert(blk) || seen.len() - first > MAX_CHAIN {
            return Err(FsError::corrupt(blk, "directory leaf chain loops"));
        }
        let b = m.read(blk, mt::LF)?;
        let lf = Leaf::parse(&b).map_err(|_| FsError::corrupt(blk, "short leaf"))?;
        if lf.depth > ip.di.depth {
            return Err(FsError::corrupt(
                blk,
                format!("leaf depth {} > directory depth {}", lf.depth, ip.di.depth),
            ));
        }
        depth.get_or_insert(lf.depth);
        blocks.push(b);
        addrs.push(blk);
        blk = lf.next;
    }
    Ok(depth.unwrap_or(0))
}

fn slot_of(hash: u32, depth: u16) -> u64 {
    if depth == 0 {
        0
    } else {
        (hash >> (32 - depth as u32)) as u64
    }
}

/// Look a name up.
pub fn lookup(m: Meta<'_>, ip: &Inode, name: &[u8]) -> Result<Option<DirEntry>> {
    if !ip.is_dir() {
        return Err(FsError::Errno(libc::ENOTDIR));
    }
    let hash = disk_hash(name);
    // The chain's dirents are checked whole, as a listing would, but only
    // the match is copied out: no name is allocated for the others.
    let mut slots = Vec::new();
    let blocks = if is_exhash(ip) {
        let slot = slot_of(hash, ip.di.depth);
        let leaf = hash_ptrs(m, ip, slot, 1)?
            .first()
            .copied()
            .ok_or_else(|| FsError::corrupt(ip.ino, "short hash table"))?;
        let (mut blocks, mut addrs) = (Vec::new(), Vec::new());
        chain_blocks(m, ip, leaf, &mut HashSet::new(), &mut blocks, &mut addrs)?;
        for (bi, (b, blkno)) in blocks.iter().zip(&addrs).enumerate() {
            slot_dirents(b, LEAF_SIZE, *blkno, bi as u32, &mut slots)?;
        }
        blocks
    } else {
        if !ip.is_stuffed() {
            return Err(FsError::corrupt(
                ip.ino,
                "unstuffed directory without a hash table",
            ));
        }
        slot_dirents(&ip.block, DINODE_SIZE, ip.ino, 0, &mut slots)?;
        vec![ip.block.clone()]
    };
    Ok(slots.iter().find_map(|s| {
        let b = &blocks[s.block as usize];
        let n = &b[s.name_at as usize..s.name_at as usize + s.name_len as usize];
        (s.hash == hash && n == name).then(|| DirEntry {
            name: n.to_vec(),
            ino: s.ino,
            formal_ino: s.formal_ino,
            hash: s.hash,
            de_type: s.de_type,
        })
    }))
}

/// A directory entry borrowed from the block it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirentRef<'a> {
    /// The name (no NUL, not necessarily UTF-8).
    pub name: &'a [u8],
    /// Inode number (dinode block address).
    pub ino: u64,
    /// `no_formal_ino` of the target.
    pub formal_ino: u64,
    /// The name hash as stored.
    pub hash: u32,
    /// `DT_*` type.
    pub de_type: u16,
}

impl DirentRef<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> DirEntry {
        DirEntry {
            name: self.name.to_vec(),
            ino: self.ino,
            formal_ino: self.formal_ino,
            hash: self.hash,
            de_type: self.de_type,
        }
    }
}

/// Where one live dirent of a leaf chain sits: which of the chain's blocks,
/// and the name's byte range in it. Listing a big directory sorts these
/// instead of copying names.
#[derive(Clone, Copy)]
struct Slot {
    hash: u32,
    block: u32,
    name_at: u32,
    name_len: u8,
    de_type: u16,
    ino: u64,
    formal_ino: u64,
}

/// Record the live dirents of `block` (block `bi` of the chain) from byte
/// `start`, with the same checks as [`parse_dirents`].
fn slot_dirents(
    block: &[u8],
    start: usize,
    blkno: u64,
    bi: u32,
    out: &mut Vec<Slot>,
) -> Result<()> {
    let mut off = start;
    while off < block.len() {
        let d = Dirent::parse(block.get(off..).unwrap_or(&[]))
            .map_err(|_| FsError::corrupt(blkno, format!("dirent at {off} past the end")))?;
        let rec = d.rec_len as usize;
        if rec < DIRENT_SIZE || off + rec > block.len() {
            return Err(FsError::corrupt(
                blkno,
                format!("dirent at {off} with bad rec_len {rec}"),
            ));
        }
        let nl = d.name_len as usize;
        if nl > rec - DIRENT_SIZE || nl > u8::MAX as usize {
            return Err(FsError::corrupt(
                blkno,
                format!("dirent at {off}: bad name_len {nl} (rec_len {rec})"),
            ));
        }
        if d.inum.addr != 0 && nl > 0 {
            out.push(Slot {
                hash: d.hash,
                block: bi,
                name_at: (off + DIRENT_SIZE) as u32,
                name_len: nl as u8,
                de_type: d.de_type,
                ino: d.inum.addr,
                formal_ino: d.inum.formal_ino,
            });
        }
        off += rec;
    }
    Ok(())
}

/// The entries of one leaf chain (or a linear directory) in cookie order,
/// each with its cookie, borrowed from `blocks`.
fn emit_keyed(
    blocks: &[Block],
    slots: &[Slot],
    order: &mut Vec<u64>,
    from: u64,
    emit: &mut impl FnMut(u64, DirentRef<'_>) -> bool,
) -> bool {
    let name = |s: &Slot| -> &[u8] {
        let b = &blocks[s.block as usize];
        &b[s.name_at as usize..s.name_at as usize + s.name_len as usize]
    };
    // Sorted as plain integers, `hash << 32 | index`: the slots stay put and
    // no comparison reads a name. Names only break ties between equal
    // hashes, which are rare: those runs are sorted again by name.
    order.clear();
    order.extend(
        slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.hash as u64) << 32 | i as u64),
    );
    order.sort_unstable();
    let mut run = 0;
    while run < order.len() {
        let h = order[run] >> 32;
        let end = run + order[run..].partition_point(|k| k >> 32 == h);
        if end - run > 1 {
            order[run..end].sort_unstable_by(|a, b| {
                name(&slots[*a as u32 as usize]).cmp(name(&slots[*b as u32 as usize]))
            });
        }
        run = end;
    }
    let mut prev = None;
    let mut n = 0u64;
    for s in order.iter().map(|k| &slots[*k as u32 as usize]) {
        let g = (s.hash >> 1) as u64;
        if prev == Some(g) {
            n += 1;
        } else {
            n = 0;
            prev = Some(g);
        }
        let k = (g << 32) | n.min(u32::MAX as u64);
        if k < from {
            continue;
        }
        let e = DirentRef {
            name: name(s),
            ino: s.ino,
            formal_ino: s.formal_ino,
            hash: s.hash,
            de_type: s.de_type,
        };
        if !emit(k, e) {
            return false;
        }
    }
    true
}

/// List entries whose cookie is `>= from`, in cookie order, calling `emit`
/// with each entry and its cookie until it returns `false`.
///
/// Names are lent from the directory's blocks, never copied: listing a
/// directory of 100,000 entries allocates a handful of buffers.
pub fn readdir(
    m: Meta<'_>,
    ip: &Inode,
    from: u64,
    mut emit: impl FnMut(u64, DirentRef<'_>) -> bool,
) -> Result<()> {
    if !ip.is_dir() {
        return Err(FsError::Errno(libc::ENOTDIR));
    }
    let mut slots = Vec::new();
    if !is_exhash(ip) {
        if !ip.is_stuffed() {
            return Err(FsError::corrupt(
                ip.ino,
                "unstuffed directory without a hash table",
            ));
        }
        slot_dirents(&ip.block, DINODE_SIZE, ip.ino, 0, &mut slots)?;
        emit_keyed(
            std::slice::from_ref(&ip.block),
            &slots,
            &mut Vec::new(),
            from,
            &mut emit,
        );
        return Ok(());
    }
    let depth = ip.di.depth;
    let nslots = 1u64 << depth;
    let from_hash = ((from >> 32) as u32) << 1;
    let mut slot = slot_of(from_hash, depth);
    const CHUNK: u64 = 512;
    let mut cache: (u64, Vec<u64>) = (u64::MAX, Vec::new());
    let mut seen = HashSet::new();
    let mut blocks: Vec<Block> = Vec::new();
    let mut addrs = Vec::new();
    let mut order = Vec::new();
    while slot < nslots {
        let base = slot - slot % CHUNK;
        if cache.0 != base {
            cache = (base, hash_ptrs(m, ip, base, CHUNK.min(nslots - base))?);
        }
        let leaf = cache
            .1
            .get((slot - base) as usize)
            .copied()
            .ok_or_else(|| FsError::corrupt(ip.ino, "short hash table"))?;
        if seen.contains(&leaf) {
            // A slot pointing to a leaf already listed: damaged leaf depths.
            slot += 1;
            continue;
        }
        blocks.clear();
        slots.clear();
        addrs.clear();
        let ld = chain_blocks(m, ip, leaf, &mut seen, &mut blocks, &mut addrs)?;
        for (bi, (b, blkno)) in blocks.iter().zip(&addrs).enumerate() {
            slot_dirents(b, LEAF_SIZE, *blkno, bi as u32, &mut slots)?;
        }
        if !emit_keyed(&blocks, &slots, &mut order, from, &mut emit) {
            return Ok(());
        }
        let span = 1u64 << (depth - ld);
        slot = (slot - slot % span) + span;
    }
    Ok(())
}
