//! What `savemeta` needs to know before its walk, read straight from the
//! device without mounting (a dump is most wanted for a filesystem that
//! will not mount): the resource groups from the rindex file, and the
//! blocks gfs2_edit treats as system files.
//!
//! gfs2_edit's notion of a system file is its own and is kept here so that
//! both tools save the same bytes: the master directory's children (its
//! code means to list the journals but reads the master directory's
//! entries), and the entries of `per_node` when that directory is hashed
//! with its hash table in the dinode. Everything read is bounds-checked.

use std::collections::HashSet;

use gfs2_ondisk::consts::{dif, MAX_META_HEIGHT};
use gfs2_ondisk::dinode::Dinode;
use gfs2_ondisk::dir::{DirentIter, Leaf};
use gfs2_ondisk::rgrp::Rindex;
use gfs2_ondisk::sb::Superblock;

use super::format::{io_err, MetaError, Result};
use crate::dev::BlockDevice;

/// Largest rindex read (a 16 TiB filesystem of the smallest resource
/// groups needs about 25 MiB).
const MAX_RINDEX: u64 = 256 << 20;

fn be64(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8).map_or(0, |x| {
        let mut a = [0u8; 8];
        a.copy_from_slice(x);
        u64::from_be_bytes(a)
    })
}

fn read_block(dev: &dyn BlockDevice, bsize: usize, blk: u64, dev_blocks: u64) -> Result<Vec<u8>> {
    if blk >= dev_blocks {
        return Err(MetaError::Corrupt(format!(
            "block {blk} is past the end of the device ({dev_blocks} blocks)"
        )));
    }
    let mut b = vec![0u8; bsize];
    dev.read_at(&mut b, blk * bsize as u64)
        .map_err(io_err(format!("reading block {blk}")))?;
    Ok(b)
}

/// The live entries of a stuffed directory block or a leaf as gfs2_edit
/// collects them: in order, up to the first unused entry or bad length.
pub fn dirent_addrs(block: &[u8], start: usize) -> Vec<(Vec<u8>, u64)> {
    let mut out = Vec::new();
    let mut x = start;
    while x + 40 <= block.len() {
        let rec_len = usize::from(u16::from_be_bytes([block[x + 20], block[x + 21]]));
        if !(40..=4096 - 40).contains(&rec_len) {
            break;
        }
        let addr = be64(block, x + 8);
        if addr == 0 {
            break;
        }
        let name_len = usize::from(u16::from_be_bytes([block[x + 22], block[x + 23]]));
        let name = block
            .get(x + 40..x + 40 + name_len)
            .unwrap_or_default()
            .to_vec();
        out.push((name, addr));
        x += rec_len;
    }
    out
}

/// The entry lists gfs2_edit collects from a directory's dinode block (its
/// `do_dinode_extended`): one list for a stuffed directory; for a hashed
/// one whose table is in the dinode, one per leaf, read where the table's
/// pointer changes or at the slot whose end is the table's size; nothing
/// otherwise.
fn edit_dir_lists(
    dev: &dyn BlockDevice,
    bsize: usize,
    b: &[u8],
    dev_blocks: u64,
) -> Vec<Vec<(Vec<u8>, u64)>> {
    let Ok(di) = Dinode::parse(b) else {
        return Vec::new();
    };
    if di.mode & 0o170000 != 0o040000 || di.height > 0 {
        return Vec::new();
    }
    if di.flags & dif::EXHASH == 0 {
        return vec![dirent_addrs(b, Dinode::SIZE)];
    }
    let mut lists = Vec::new();
    let mut last = be64(b, Dinode::SIZE);
    let slots = 1u64.checked_shl(u32::from(di.depth)).unwrap_or(u64::MAX);
    let mut y = 0u64;
    while y < slots {
        let off = Dinode::SIZE + (y as usize) * 8;
        if off + 8 > bsize {
            break;
        }
        let p = be64(b, off);
        if p != last || (y + 1) * 8 == di.size {
            if last >= dev_blocks {
                break;
            }
            if let Ok(leaf) = read_block(dev, bsize, last, dev_blocks) {
                lists.push(dirent_addrs(&leaf, Leaf::SIZE));
            }
            last = p;
        }
        y += 1;
    }
    lists
}

/// Look `name` up in the directory at `dir` as a filesystem would: every
/// entry of a stuffed directory, or of every leaf (and chained leaf) of a
/// hashed one.
fn lookup(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    dir: u64,
    name: &[u8],
    dev_blocks: u64,
) -> Result<Option<u64>> {
    let bsize = sb.bsize as usize;
    let b = read_block(dev, bsize, dir, dev_blocks)?;
    let di = Dinode::parse(&b).map_err(|e| MetaError::Corrupt(format!("directory {dir}: {e}")))?;
    let find = |block: &[u8], start: usize| {
        DirentIter::new(block, start)
            .map_while(|r| r.ok())
            .find(|d| !d.dirent.is_unused() && d.name == name)
            .map(|d| d.dirent.inum.addr)
    };
    if di.flags & dif::EXHASH == 0 {
        return Ok(find(&b, Dinode::SIZE));
    }
    let table = if di.height == 0 {
        let end = (Dinode::SIZE + di.size as usize).min(bsize);
        b[Dinode::SIZE..end].to_vec()
    } else {
        file_data(dev, sb, dir, MAX_RINDEX, dev_blocks)?
    };
    let mut seen = HashSet::new();
    for off in (0..table.len().saturating_sub(7)).step_by(8) {
        let mut leaf = be64(&table, off);
        while leaf != 0 && seen.insert(leaf) {
            let lb = read_block(dev, bsize, leaf, dev_blocks)?;
            if let Some(a) = find(&lb, Leaf::SIZE) {
                return Ok(Some(a));
            }
            leaf = be64(&lb, 32);
        }
    }
    Ok(None)
}

/// gfs2_edit's view of the master directory: the entries of its first
/// list, after the first two (which are `.` and `..` when it is stuffed).
fn master_entries(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    dev_blocks: u64,
) -> Result<Vec<(Vec<u8>, u64)>> {
    let bsize = sb.bsize as usize;
    let b = read_block(dev, bsize, sb.master_dir.addr, dev_blocks)?;
    let lists = edit_dir_lists(dev, bsize, &b, dev_blocks);
    Ok(lists
        .into_iter()
        .next()
        .unwrap_or_default()
        .into_iter()
        .skip(2)
        .collect())
}

/// gfs2_edit's `masterblock`: the first of the master's entries (after the
/// first two, up to the eighth) whose name starts with `name`.
fn master_block(entries: &[(Vec<u8>, u64)], name: &str) -> Option<u64> {
    entries
        .iter()
        .take(6)
        .find(|(n, _)| n.starts_with(name.as_bytes()))
        .map(|(_, a)| *a)
}

/// The blocks gfs2_edit treats as system files (see the module doc).
pub fn system_files(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    dev_blocks: u64,
) -> Result<HashSet<u64>> {
    let bsize = sb.bsize as usize;
    let entries = master_entries(dev, sb, dev_blocks)?;
    let mut set: HashSet<u64> = entries.iter().map(|(_, a)| *a).collect();
    let Some(pn) = master_block(&entries, "per_node") else {
        return Ok(set);
    };
    let b = match read_block(dev, bsize, pn, dev_blocks) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!("per_node: {e}");
            return Ok(set);
        }
    };
    // Only a hashed per_node's lists count: gfs2_edit reads the entries
    // of its leaves, not those of a stuffed directory.
    let hashed = Dinode::parse(&b).is_ok_and(|d| d.flags & dif::EXHASH != 0);
    if hashed {
        for list in edit_dir_lists(dev, bsize, &b, dev_blocks) {
            set.extend(list.into_iter().map(|(_, a)| a));
        }
    }
    Ok(set)
}

/// The data blocks of a file, in order, up to `nblocks` of them.
fn data_blocks(
    dev: &dyn BlockDevice,
    bsize: usize,
    ptrs: &[u8],
    height: u16,
    nblocks: u64,
    dev_blocks: u64,
    out: &mut Vec<u64>,
) -> Result<()> {
    for off in (0..ptrs.len().saturating_sub(7)).step_by(8) {
        if out.len() as u64 >= nblocks {
            return Ok(());
        }
        let p = be64(ptrs, off);
        if height <= 1 {
            out.push(p);
            continue;
        }
        if p == 0 {
            // A hole: the blocks below it read as zeros.
            let per = ((bsize - 24) / 8) as u64;
            let span = per.saturating_pow(u32::from(height - 1));
            for _ in 0..span.min(nblocks - out.len() as u64) {
                out.push(0);
            }
            continue;
        }
        let b = read_block(dev, bsize, p, dev_blocks)?;
        data_blocks(dev, bsize, &b[24..], height - 1, nblocks, dev_blocks, out)?;
    }
    Ok(())
}

/// The content of the file whose dinode is at `addr`, up to `max` bytes.
fn file_data(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    addr: u64,
    max: u64,
    dev_blocks: u64,
) -> Result<Vec<u8>> {
    let bsize = sb.bsize as usize;
    let b = read_block(dev, bsize, addr, dev_blocks)?;
    let di = Dinode::parse(&b).map_err(|e| MetaError::Corrupt(format!("dinode {addr}: {e}")))?;
    if di.size > max {
        return Err(MetaError::Corrupt(format!(
            "file at block {addr} claims {} bytes (at most {max} expected)",
            di.size
        )));
    }
    let size = di.size as usize;
    if di.height == 0 {
        let end = (Dinode::SIZE + size).min(bsize);
        let mut v = b[Dinode::SIZE..end].to_vec();
        v.resize(size, 0);
        return Ok(v);
    }
    if di.height > MAX_META_HEIGHT {
        return Err(MetaError::Corrupt(format!(
            "dinode {addr}: height {}",
            di.height
        )));
    }
    let nblocks = di.size.div_ceil(bsize as u64);
    let mut blocks = Vec::new();
    data_blocks(
        dev,
        bsize,
        &b[Dinode::SIZE..],
        di.height,
        nblocks,
        dev_blocks,
        &mut blocks,
    )?;
    let mut v = Vec::with_capacity(size);
    for blk in blocks {
        if blk == 0 {
            v.resize(v.len() + bsize, 0);
        } else {
            v.extend_from_slice(&read_block(dev, bsize, blk, dev_blocks)?);
        }
    }
    v.resize(size, 0);
    Ok(v)
}

/// The resource groups in address order, as gfs2-utils reads the rindex
/// (an entry whose address is outside the device takes the place after its
/// predecessor).
pub fn read(dev: &dyn BlockDevice, sb: &Superblock, dev_blocks: u64) -> Result<Vec<Rindex>> {
    let Some(ri_addr) = lookup(dev, sb, sb.master_dir.addr, b"rindex", dev_blocks)? else {
        return Err(MetaError::Corrupt(
            "no rindex in the master directory".into(),
        ));
    };
    let data = file_data(dev, sb, ri_addr, MAX_RINDEX, dev_blocks)?;
    let sb_addr = gfs2_ondisk::layout::sb_addr(sb.bsize);
    let mut out: Vec<Rindex> = Vec::new();
    for chunk in data.chunks_exact(Rindex::SIZE) {
        let Ok(mut ri) = Rindex::parse(chunk) else {
            continue;
        };
        if ri.addr > dev_blocks || ri.addr <= sb_addr {
            match out.last() {
                None => continue,
                Some(prev) => ri.addr = prev.data0.saturating_add(u64::from(prev.data)),
            }
        }
        out.push(ri);
    }
    if out.is_empty() {
        return Err(MetaError::Corrupt(
            "the rindex lists no resource group".into(),
        ));
    }
    // An address given twice keeps its last entry, as gfs2-utils' tree.
    out.reverse();
    let mut seen = HashSet::new();
    out.retain(|r| seen.insert(r.addr));
    out.sort_by_key(|r| r.addr);
    Ok(out)
}
