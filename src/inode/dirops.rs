//! Changing directories, laid out as the kernel lays them out (dir.c):
//! entries go into the first record with room (splitting its slack); a full
//! stuffed directory becomes an exhash directory with one leaf and a
//! half-block hash table in the dinode; a full leaf is split in two while its
//! depth is below the table's, otherwise the table doubles, and at the
//! maximum depth leaves are chained. Deleting merges a record into the one
//! before it, or blanks the inode of the first record of a block.

use super::write::{self, alloc_block, dinode, glock, put_dinode, Alloc};
use crate::error::{FsError, Result};
use crate::format::{dif, mt, Dirent, Inum, Leaf, DINODE_SIZE, DIR_MAX_DEPTH, META_HEADER_SIZE};
use crate::log::trans::Txn;
use gfs2_ondisk::consts::{dt, format};
use gfs2_ondisk::{dirent_size, hash, layout};

/// Write the "." and ".." entries of a new directory into its dinode block.
pub fn init_dir_block(block: &mut [u8], me: Inum, parent: Inum) -> Result<()> {
    let one = dirent_size(1);
    let d = Dirent {
        inum: me,
        hash: hash::dirent_hash(b"."),
        rec_len: one as u16,
        name_len: 1,
        de_type: dt::DIR,
        ..Dirent::default()
    };
    d.write(&mut block[DINODE_SIZE..])?;
    block[DINODE_SIZE + Dirent::SIZE] = b'.';
    let off = DINODE_SIZE + one;
    let d = Dirent {
        inum: parent,
        hash: hash::dirent_hash(b".."),
        rec_len: (block.len() - off) as u16,
        name_len: 2,
        de_type: dt::DIR,
        ..Dirent::default()
    };
    d.write(&mut block[off..])?;
    block[off + Dirent::SIZE..off + Dirent::SIZE + 2].copy_from_slice(b"..");
    Ok(())
}

/// Records of a block from `start`: (offset, dirent). Damage is an error.
fn records(block: &[u8], start: usize, blkno: u64) -> Result<Vec<(usize, Dirent)>> {
    gfs2_ondisk::DirentIter::new(block, start)
        .map(|r| {
            r.map(|r| (r.offset, r.dirent))
                .map_err(|e| FsError::corrupt(blkno, e.to_string()))
        })
        .collect()
}

fn name_at<'a>(block: &'a [u8], off: usize, d: &Dirent) -> &'a [u8] {
    let s = off + Dirent::SIZE;
    block.get(s..s + usize::from(d.name_len)).unwrap_or(&[])
}

/// Put an entry into the first record of `block` (from `start`) with room.
fn try_insert(
    block: &mut [u8],
    start: usize,
    blkno: u64,
    name: &[u8],
    inum: Inum,
    de_type: u16,
) -> Result<bool> {
    let need = dirent_size(name.len());
    for (off, d) in records(block, start, blkno)? {
        let rec = usize::from(d.rec_len);
        let (at, len) = if d.is_unused() {
            (off, rec)
        } else {
            let used = dirent_size(usize::from(d.name_len));
            if rec < used {
                return Err(FsError::corrupt(blkno, "dirent shorter than its name"));
            }
            (off + used, rec - used)
        };
        if len < need {
            continue;
        }
        if !d.is_unused() {
            let mut d2 = d;
            d2.rec_len = (at - off) as u16;
            d2.write(&mut block[off..])?;
        }
        let nd = Dirent {
            inum,
            hash: hash::dirent_hash(name),
            rec_len: len as u16,
            name_len: name.len() as u16,
            de_type,
            ..Dirent::default()
        };
        nd.write(&mut block[at..])?;
        block[at + Dirent::SIZE..at + Dirent::SIZE + name.len()].copy_from_slice(name);
        return Ok(true);
    }
    Ok(false)
}

/// Remove `name` from `block`; returns what it pointed at.
fn delete_in(
    block: &mut [u8],
    start: usize,
    blkno: u64,
    name: &[u8],
) -> Result<Option<(Inum, u16)>> {
    let recs = records(block, start, blkno)?;
    for (i, (off, d)) in recs.iter().enumerate() {
        if d.is_unused() || name_at(block, *off, d) != name {
            continue;
        }
        let found = (d.inum, d.de_type);
        if i == 0 {
            let mut d2 = *d;
            d2.inum = Inum::default();
            d2.write(&mut block[*off..])?;
        } else {
            let (poff, mut p) = recs[i - 1];
            p.rec_len = p.rec_len.saturating_add(d.rec_len);
            p.write(&mut block[poff..])?;
        }
        return Ok(Some(found));
    }
    Ok(None)
}

fn find_in(block: &[u8], start: usize, blkno: u64, name: &[u8]) -> Result<Option<(usize, Dirent)>> {
    for (off, d) in records(block, start, blkno)? {
        if !d.is_unused() && name_at(block, off, &d) == name {
            return Ok(Some((off, d)));
        }
    }
    Ok(None)
}

fn slot(hash: u32, depth: u16) -> u64 {
    if depth == 0 {
        0
    } else {
        u64::from(hash) >> (32 - u32::from(depth))
    }
}

/// Hash table entry `idx` of exhash directory `dino`.
fn table_get(tx: &mut Txn<'_>, al: Alloc<'_>, dino: u64, idx: u64) -> Result<u64> {
    let di = dinode(tx, dino)?;
    let off = idx * 8;
    if off + 8 > di.size {
        return Err(FsError::corrupt(dino, "hash index beyond the table"));
    }
    if di.height == 0 {
        let b = tx.get(glock(dino), dino, mt::DI)?;
        return Ok(write::get_ptr(&b, DINODE_SIZE + off as usize));
    }
    let jb = write::payload(tx.bsize(), &di);
    let (blk, _) = write::map(tx, al, dino, off / jb, false)?
        .ok_or_else(|| FsError::corrupt(dino, "hole in the hash table"))?;
    let b = tx.get(glock(dino), blk, mt::JD)?;
    Ok(write::get_ptr(&b, META_HEADER_SIZE + (off % jb) as usize))
}

fn table_set(tx: &mut Txn<'_>, al: Alloc<'_>, dino: u64, idx: u64, val: u64) -> Result<()> {
    let di = dinode(tx, dino)?;
    let off = idx * 8;
    if di.height == 0 {
        let b = tx.get_mut(glock(dino), dino, mt::DI)?;
        write::set_ptr(b, DINODE_SIZE + off as usize, val);
        return Ok(());
    }
    let jb = write::payload(tx.bsize(), &di);
    let (blk, _) = write::map(tx, al, dino, off / jb, false)?
        .ok_or_else(|| FsError::corrupt(dino, "hole in the hash table"))?;
    let b = tx.get_mut(glock(dino), blk, mt::JD)?;
    write::set_ptr(b, META_HEADER_SIZE + (off % jb) as usize, val);
    Ok(())
}

/// Replace the whole hash table with `table`.
fn table_write(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    dino: u64,
    table: &[u64],
    depth: u16,
    dev: &dyn crate::dev::BlockDevice,
) -> Result<()> {
    let bsize = tx.bsize();
    let bytes: Vec<u8> = table.iter().flat_map(|p| p.to_be_bytes()).collect();
    write::free_from(tx, al, dino, 0)?;
    let mut di = dinode(tx, dino)?;
    // Size and depth change together: the table is consistent at every step.
    di.size = bytes.len() as u64;
    di.depth = depth;
    put_dinode(tx, &di)?;
    if bytes.len() <= layout::stuffed_max(bsize) as usize {
        let b = tx.get_mut(glock(dino), dino, mt::DI)?;
        b[DINODE_SIZE..DINODE_SIZE + bytes.len()].copy_from_slice(&bytes);
        return Ok(());
    }
    write::unstuff(tx, al, dino, dev)?;
    let jb = write::payload(bsize, &di) as usize;
    let nblocks = bytes.len().div_ceil(jb) as u64;
    write::ensure_height(tx, al, dino, nblocks)?;
    for (i, chunk) in bytes.chunks(jb).enumerate() {
        let (blk, _) = write::map(tx, al, dino, i as u64, true)?
            .ok_or_else(|| FsError::corrupt(dino, "hash table block not mapped"))?;
        let b = tx.get_mut(glock(dino), blk, mt::JD)?;
        b[META_HEADER_SIZE..META_HEADER_SIZE + chunk.len()].copy_from_slice(chunk);
    }
    Ok(())
}

fn new_leaf(tx: &mut Txn<'_>, al: Alloc<'_>, dino: u64, depth: u16) -> Result<u64> {
    let mut di = dinode(tx, dino)?;
    let blk = alloc_block(tx, al, &mut di, true)?;
    put_dinode(tx, &di)?;
    let bsize = tx.bsize() as usize;
    let b = tx.new_meta(glock(dino), blk, mt::LF, format::LF);
    let lf = Leaf {
        depth,
        dirent_format: format::DE,
        inode: dino,
        ..Leaf::default()
    };
    lf.write(b)?;
    let d = Dirent {
        rec_len: (bsize - Leaf::SIZE) as u16,
        ..Dirent::default()
    };
    d.write(&mut b[Leaf::SIZE..])?;
    Ok(blk)
}

fn leaf_update(tx: &mut Txn<'_>, dino: u64, blk: u64, f: impl FnOnce(&mut Leaf)) -> Result<()> {
    let b = tx.get_mut(glock(dino), blk, mt::LF)?;
    let mut lf = Leaf::parse(b)?;
    f(&mut lf);
    lf.write(b)?;
    Ok(())
}

/// Turn a full stuffed directory into an exhash one (`dir_make_exhash`).
fn make_exhash(tx: &mut Txn<'_>, al: Alloc<'_>, dino: u64) -> Result<()> {
    let bsize = tx.bsize() as usize;
    let di0 = dinode(tx, dino)?;
    let leaf = new_leaf(tx, al, dino, 0)?;
    let dblock = tx.get(glock(dino), dino, mt::DI)?;
    let area = dblock[DINODE_SIZE..].to_vec();
    let lb = tx.get_mut(glock(dino), leaf, mt::LF)?;
    lb[Leaf::SIZE..Leaf::SIZE + area.len()].copy_from_slice(&area);
    let recs = records(&lb[..Leaf::SIZE + area.len()], Leaf::SIZE, leaf)?;
    let (last_off, mut last) = *recs
        .last()
        .ok_or_else(|| FsError::corrupt(dino, "directory without entries"))?;
    last.rec_len = (bsize - last_off) as u16;
    last.write(&mut lb[last_off..])?;
    let mut lf = Leaf::parse(lb)?;
    lf.entries = di0.entries.min(u32::from(u16::MAX)) as u16;
    lf.write(lb)?;
    let ptrs = bsize / 16;
    let mut di = dinode(tx, dino)?;
    di.flags |= dif::EXHASH;
    di.payload_format = 0;
    di.size = (ptrs * 8) as u64;
    di.depth = ptrs.trailing_zeros() as u16;
    put_dinode(tx, &di)?;
    let b = tx.get_mut(glock(dino), dino, mt::DI)?;
    b[DINODE_SIZE..].fill(0);
    for i in 0..ptrs {
        write::set_ptr(b, DINODE_SIZE + i * 8, leaf);
    }
    Ok(())
}

/// Split the leaf that hash slot `index` points at (`dir_split_leaf`).
fn split_leaf(tx: &mut Txn<'_>, al: Alloc<'_>, dino: u64, index: u64) -> Result<()> {
    let di = dinode(tx, dino)?;
    let depth = di.depth;
    let old = table_get(tx, al, dino, index)?;
    let ob = tx.get(glock(dino), old, mt::LF)?;
    let olf = Leaf::parse(&ob)?;
    if olf.depth >= depth {
        return Err(FsError::corrupt(old, "leaf depth not below the table's"));
    }
    let len = 1u64 << (depth - olf.depth);
    let start = index & !(len - 1);
    let half = len / 2;
    let nleaf = new_leaf(tx, al, dino, olf.depth + 1)?;
    for i in start + half..start + len {
        table_set(tx, al, dino, i, nleaf)?;
    }
    let divider = (start + half) << (32 - u32::from(depth));
    let moving: Vec<(Vec<u8>, Dirent)> = records(&ob, Leaf::SIZE, old)?
        .into_iter()
        .filter(|(_, d)| !d.is_unused() && u64::from(d.hash) >= divider)
        .map(|(off, d)| (name_at(&ob, off, &d).to_vec(), d))
        .collect();
    let moved = moving.len() as u16;
    for (name, d) in &moving {
        let nb = tx.get_mut(glock(dino), nleaf, mt::LF)?;
        if !try_insert(nb, Leaf::SIZE, nleaf, name, d.inum, d.de_type)? {
            return Err(FsError::corrupt(nleaf, "split leaf overflow"));
        }
        let ob = tx.get_mut(glock(dino), old, mt::LF)?;
        delete_in(ob, Leaf::SIZE, old, name)?;
    }
    leaf_update(tx, dino, nleaf, |l| l.entries = moved)?;
    leaf_update(tx, dino, old, |l| {
        l.entries = l.entries.saturating_sub(moved);
        l.depth += 1;
    })?;
    Ok(())
}

/// Double the hash table (`dir_double_exhash`).
fn double_table(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    dino: u64,
    dev: &dyn crate::dev::BlockDevice,
) -> Result<()> {
    let di = dinode(tx, dino)?;
    let n = 1u64 << di.depth;
    let mut table = Vec::with_capacity(2 * n as usize);
    for i in 0..n {
        let p = table_get(tx, al, dino, i)?;
        table.push(p);
        table.push(p);
    }
    table_write(tx, al, dino, &table, di.depth + 1, dev)
}

/// Add `name` -> `inum` (of type `de_type`) to directory `dino`. The caller
/// checked that the name is new.
pub fn add(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    dino: u64,
    name: &[u8],
    inum: Inum,
    de_type: u16,
    dev: &dyn crate::dev::BlockDevice,
) -> Result<()> {
    let di = dinode(tx, dino)?;
    if !di.is_exhash() {
        let b = tx.get_mut(glock(dino), dino, mt::DI)?;
        if try_insert(b, DINODE_SIZE, dino, name, inum, de_type)? {
            let mut di = dinode(tx, dino)?;
            di.entries += 1;
            return put_dinode(tx, &di);
        }
        make_exhash(tx, al, dino)?;
    }
    let h = hash::dirent_hash(name);
    for _round in 0..64 {
        let di = dinode(tx, dino)?;
        let index = slot(h, di.depth);
        let first = table_get(tx, al, dino, index)?;
        let mut blk = first;
        let mut last = first;
        let mut guard = 0;
        while blk != 0 {
            guard += 1;
            if guard > 100_000 {
                return Err(FsError::corrupt(first, "leaf chain loops"));
            }
            let b = tx.get_mut(glock(dino), blk, mt::LF)?;
            if try_insert(b, Leaf::SIZE, blk, name, inum, de_type)? {
                leaf_update(tx, dino, blk, |l| l.entries = l.entries.saturating_add(1))?;
                let mut di = dinode(tx, dino)?;
                di.entries += 1;
                return put_dinode(tx, &di);
            }
            last = blk;
            blk = Leaf::parse(b)?.next;
        }
        let lf = Leaf::parse(&tx.get(glock(dino), first, mt::LF)?)?;
        if lf.depth < di.depth {
            split_leaf(tx, al, dino, index)?;
        } else if di.depth < DIR_MAX_DEPTH {
            double_table(tx, al, dino, dev)?;
        } else {
            let nl = new_leaf(tx, al, dino, lf.depth)?;
            leaf_update(tx, dino, last, |l| l.next = nl)?;
        }
    }
    Err(FsError::corrupt(dino, "no room for a directory entry"))
}

/// Blocks (first leaf of the chain and the chain) that may hold `name`.
fn leaf_chain(tx: &mut Txn<'_>, al: Alloc<'_>, dino: u64, name: &[u8]) -> Result<Vec<u64>> {
    let di = dinode(tx, dino)?;
    let index = slot(hash::dirent_hash(name), di.depth);
    let mut blk = table_get(tx, al, dino, index)?;
    let mut out = Vec::new();
    while blk != 0 {
        if out.len() > 100_000 || out.contains(&blk) {
            return Err(FsError::corrupt(blk, "leaf chain loops"));
        }
        out.push(blk);
        blk = Leaf::parse(&tx.get(glock(dino), blk, mt::LF)?)?.next;
    }
    Ok(out)
}

/// The blocks where entry `name` of `dino` can be, with their metadata type
/// and where their entries start: the dinode of a stuffed directory, or the
/// leaf chain of the name's hash-table slot.
fn name_blocks(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    dino: u64,
    name: &[u8],
) -> Result<Vec<(u64, u32, usize)>> {
    if !dinode(tx, dino)?.is_exhash() {
        return Ok(vec![(dino, mt::DI, DINODE_SIZE)]);
    }
    Ok(leaf_chain(tx, al, dino, name)?
        .into_iter()
        .map(|b| (b, mt::LF, Leaf::SIZE))
        .collect())
}

/// Look `name` up in directory `dino` as the transaction sees it.
pub fn find(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    dino: u64,
    name: &[u8],
) -> Result<Option<(Inum, u16)>> {
    for (blk, mty, start) in name_blocks(tx, al, dino, name)? {
        let b = tx.get(glock(dino), blk, mty)?;
        if let Some((_, d)) = find_in(&b, start, blk, name)? {
            return Ok(Some((d.inum, d.de_type)));
        }
    }
    Ok(None)
}

/// Remove `name` from directory `dino`; returns what it pointed at.
pub fn remove(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    dino: u64,
    name: &[u8],
) -> Result<Option<(Inum, u16)>> {
    for (blk, mty, start) in name_blocks(tx, al, dino, name)? {
        let b = tx.get_mut(glock(dino), blk, mty)?;
        if let Some(f) = delete_in(b, start, blk, name)? {
            if mty == mt::LF {
                leaf_update(tx, dino, blk, |l| l.entries = l.entries.saturating_sub(1))?;
            }
            let mut di = dinode(tx, dino)?;
            di.entries = di.entries.saturating_sub(1);
            put_dinode(tx, &di)?;
            return Ok(Some(f));
        }
    }
    Ok(None)
}

/// Point entry `name` of `dino` at `inum` (rename over, "..").
pub fn retarget(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    dino: u64,
    name: &[u8],
    inum: Inum,
    de_type: u16,
) -> Result<()> {
    for (blk, mty, start) in name_blocks(tx, al, dino, name)? {
        let b = tx.get_mut(glock(dino), blk, mty)?;
        if let Some((off, mut d)) = find_in(b, start, blk, name)? {
            d.inum = inum;
            d.de_type = de_type;
            d.write(&mut b[off..])?;
            return Ok(());
        }
    }
    Err(FsError::corrupt(dino, "entry to retarget is missing"))
}

/// Every block a directory owns besides its dinode and metadata tree: the
/// leaves its hash table points at, and their chains.
pub fn leaves(tx: &mut Txn<'_>, al: Alloc<'_>, dino: u64) -> Result<Vec<u64>> {
    let di = dinode(tx, dino)?;
    if !di.is_exhash() {
        return Ok(Vec::new());
    }
    let n = 1u64 << di.depth;
    let mut out: Vec<u64> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut prev = 0;
    for i in 0..n {
        let mut blk = table_get(tx, al, dino, i)?;
        if blk == prev {
            continue;
        }
        prev = blk;
        while blk != 0 && seen.insert(blk) {
            out.push(blk);
            blk = Leaf::parse(&tx.get(glock(dino), blk, mt::LF)?)?.next;
        }
    }
    Ok(out)
}
