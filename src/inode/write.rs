//! The write side of an inode's metadata tree (the kernel's bmap.c):
//! unstuffing, growing the tree's height, mapping a logical block with
//! allocation, and freeing everything past a point (truncate, deallocate).
//!
//! All of it runs inside a transaction: the dinode and indirect blocks are
//! edited as transaction copies, blocks come from [`crate::rgrp`].
//! Directories store their hash table as "journaled data": data blocks with
//! a JD meta header and `bsize - 24` bytes of payload each.

use crate::error::{FsError, Result};
use crate::format::{mt, Dinode, Rindex, DINODE_SIZE, META_HEADER_SIZE};
use crate::log::trans::{Txn, View};
use crate::rgrp;
use gfs2_lockproto::{lm_type, ResName};
use gfs2_ondisk::consts::format;
use gfs2_ondisk::{layout, BlockState};
use std::collections::HashSet;

/// What the allocator needs: the resource groups and the blocks that must
/// not be reused before the next log flush.
#[derive(Clone, Copy)]
pub struct Alloc<'a> {
    pub rindex: &'a [Rindex],
    /// Blocks freed since the last log flush (not reused before it).
    pub busy: &'a std::sync::Mutex<HashSet<u64>>,
}

/// The glock of inode `ino`.
pub fn glock(ino: u64) -> ResName {
    ResName::new(lm_type::INODE, ino)
}

/// Read the dinode of `ino` from the transaction.
pub fn dinode(tx: &mut Txn<'_>, ino: u64) -> Result<Dinode> {
    let di = Dinode::parse(&tx.view(glock(ino), ino, mt::DI)?)?;
    super::validate(&di, ino, tx.bsize())?;
    // Stricter than a reader needs: the write path slices the stuffed area
    // of every inode kind by its size, devices and linear directories too.
    if di.height == 0
        && !(di.is_dir() && di.is_exhash())
        && di.size > layout::stuffed_max(tx.bsize())
    {
        return Err(FsError::corrupt(ino, "stuffed inode larger than its block"));
    }
    Ok(di)
}

/// Store `di` into its block in the transaction.
pub fn put_dinode(tx: &mut Txn<'_>, di: &Dinode) -> Result<()> {
    let ino = di.num.addr;
    let b = tx.get_mut(glock(ino), ino, mt::DI)?;
    di.write(b)?;
    Ok(())
}

/// Blocks a tree of `height` maps (0 for stuffed).
fn capacity(bsize: u32, height: u16) -> Option<u64> {
    if height == 0 {
        return Some(0);
    }
    let mut c = layout::diptrs(bsize);
    for _ in 1..height {
        c = c.checked_mul(layout::inptrs(bsize))?;
    }
    Some(c)
}

/// Whether the inode keeps its data as journaled-data blocks (directories).
fn is_jdata_tree(di: &Dinode) -> bool {
    di.is_dir()
}

/// Payload bytes per data block.
pub fn payload(bsize: u32, di: &Dinode) -> u64 {
    if is_jdata_tree(di) {
        u64::from(bsize) - META_HEADER_SIZE as u64
    } else {
        u64::from(bsize)
    }
}

pub(crate) fn alloc_block(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    di: &mut Dinode,
    meta: bool,
) -> Result<u64> {
    let goal = if meta { di.goal_meta } else { di.goal_data };
    let (b, _) = rgrp::alloc(
        tx,
        al.rindex,
        al.busy,
        goal.max(di.num.addr),
        BlockState::Used,
    )?;
    di.blocks += 1;
    if meta {
        di.goal_meta = b;
    } else {
        di.goal_data = b;
    }
    Ok(b)
}

pub(crate) fn get_ptr(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

pub(crate) fn set_ptr(b: &mut [u8], off: usize, v: u64) {
    if let Some(s) = b.get_mut(off..off + 8) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Move stuffed content out of the dinode into a first data block. For
/// regular files the content is written to the device at once (ordered
/// data); for directories the block is journaled metadata.
pub fn unstuff(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    ino: u64,
    dev: &dyn crate::dev::BlockDevice,
) -> Result<()> {
    let mut di = dinode(tx, ino)?;
    if di.height != 0 {
        return Ok(());
    }
    let bsize = tx.bsize();
    let dblock = tx.get(glock(ino), ino, mt::DI)?;
    let len = (di.size as usize).min(bsize as usize - DINODE_SIZE);
    let content = dblock[DINODE_SIZE..DINODE_SIZE + len].to_vec();
    let has = di.size > 0 && !content.iter().all(|b| *b == 0) || is_jdata_tree(&di);
    let mut first = 0;
    if has {
        first = alloc_block(tx, al, &mut di, false)?;
        if is_jdata_tree(&di) {
            let nb = tx.new_meta(glock(ino), first, mt::JD, format::JD);
            nb[META_HEADER_SIZE..META_HEADER_SIZE + len].copy_from_slice(&content);
        } else if di.flags & crate::format::dif::JDATA != 0 {
            let mut buf = vec![0u8; bsize as usize];
            buf[..len].copy_from_slice(&content);
            tx.put_jdata(glock(ino), first, buf);
        } else {
            let mut buf = vec![0u8; bsize as usize];
            buf[..len].copy_from_slice(&content);
            dev.write_at(&buf, first * u64::from(bsize))
                .map_err(|e| FsError::Io {
                    what: format!("unstuffing inode {ino}"),
                    source: e,
                })?;
        }
    }
    di.height = 1;
    put_dinode(tx, &di)?;
    let b = tx.get_mut(glock(ino), ino, mt::DI)?;
    b[DINODE_SIZE..].fill(0);
    set_ptr(b, DINODE_SIZE, first);
    Ok(())
}

/// Grow the tree until it maps `nblocks` logical blocks: each new level is
/// an indirect block taking over the dinode's pointers.
pub fn ensure_height(tx: &mut Txn<'_>, al: Alloc<'_>, ino: u64, nblocks: u64) -> Result<()> {
    let bsize = tx.bsize();
    let mut di = dinode(tx, ino)?;
    if di.height == 0 {
        return Err(FsError::corrupt(ino, "growing a stuffed inode"));
    }
    while capacity(bsize, di.height).is_some_and(|c| c < nblocks) {
        if di.height >= crate::format::MAX_META_HEIGHT {
            return Err(FsError::Errno(libc::EFBIG));
        }
        let dblock = tx.get(glock(ino), ino, mt::DI)?;
        let ptrs = dblock[DINODE_SIZE..].to_vec();
        let any = ptrs.iter().any(|b| *b != 0);
        if any {
            let nb_addr = alloc_block(tx, al, &mut di, true)?;
            let nb = tx.new_meta(glock(ino), nb_addr, mt::IN, format::IN);
            let n = ptrs.len().min(nb.len() - META_HEADER_SIZE);
            nb[META_HEADER_SIZE..META_HEADER_SIZE + n].copy_from_slice(&ptrs[..n]);
            di.height += 1;
            put_dinode(tx, &di)?;
            let b = tx.get_mut(glock(ino), ino, mt::DI)?;
            b[DINODE_SIZE..].fill(0);
            set_ptr(b, DINODE_SIZE, nb_addr);
        } else {
            di.height += 1;
            put_dinode(tx, &di)?;
        }
    }
    Ok(())
}

/// Indices of `lblock` at each level of a tree of `height` (dinode first).
fn metapath(bsize: u32, height: u16, lblock: u64) -> Vec<u64> {
    let inp = layout::inptrs(bsize);
    let mut path = vec![0u64; height as usize];
    let mut rest = lblock;
    for l in (1..height as usize).rev() {
        path[l] = rest % inp;
        rest /= inp;
    }
    if let Some(p) = path.first_mut() {
        *p = rest;
    }
    path
}

/// The disk block of logical block `lblock`, allocating it (and missing
/// indirect blocks) when `create`. Returns `(block, newly allocated)`, or
/// `None` for a hole when not creating. The tree must already be tall
/// enough ([`ensure_height`]).
pub fn map(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    ino: u64,
    lblock: u64,
    create: bool,
) -> Result<Option<(u64, bool)>> {
    let bsize = tx.bsize();
    let mut di = dinode(tx, ino)?;
    if di.height == 0 {
        return Err(FsError::corrupt(ino, "mapping a stuffed inode"));
    }
    if capacity(bsize, di.height).is_some_and(|c| lblock >= c) {
        return if create {
            Err(FsError::Errno(libc::EFBIG))
        } else {
            Ok(None)
        };
    }
    let path = metapath(bsize, di.height, lblock);
    let mut cur = ino;
    let mut new = false;
    let mut dirty_di = false;
    for (l, idx) in path.iter().enumerate() {
        let (mty, b, off) = tree_slot(tx, ino, cur, l, *idx)?;
        let mut ptr = get_ptr(&b, off);
        if ptr == 0 {
            if !create {
                return Ok(None);
            }
            let leaf = l + 1 == path.len();
            ptr = alloc_block(tx, al, &mut di, !leaf)?;
            dirty_di = true;
            if !leaf {
                tx.new_meta(glock(ino), ptr, mt::IN, format::IN);
            } else if is_jdata_tree(&di) {
                tx.new_meta(glock(ino), ptr, mt::JD, format::JD);
            }
            // The dinode copy in `di` carries the block count; store it
            // before editing pointers in the dinode block itself.
            if l == 0 {
                put_dinode(tx, &di)?;
                dirty_di = false;
            }
            let wb = tx.get_mut(glock(ino), cur, mty)?;
            set_ptr(wb, off, ptr);
            new = leaf;
        } else if tx.cache().device().size() / u64::from(bsize) <= ptr {
            return Err(FsError::corrupt(
                cur,
                format!("pointer {ptr} beyond the device"),
            ));
        }
        cur = ptr;
    }
    if dirty_di {
        put_dinode(tx, &di)?;
    }
    Ok(Some((cur, new)))
}

/// Level `level` of inode `ino`'s metadata tree, block `cur`: its type, the
/// block, and the offset of its pointer `idx`, checked to lie inside it.
fn tree_slot<'t>(
    tx: &'t mut Txn<'_>,
    ino: u64,
    cur: u64,
    level: usize,
    idx: u64,
) -> Result<(u32, View<'t>, usize)> {
    let (mty, hdr) = if level == 0 {
        (mt::DI, DINODE_SIZE)
    } else {
        (mt::IN, META_HEADER_SIZE)
    };
    let off = usize::try_from(idx)
        .ok()
        .and_then(|i| i.checked_mul(8))
        .and_then(|i| i.checked_add(hdr))
        .ok_or_else(|| FsError::corrupt(cur, "metapath beyond the block"))?;
    let b = tx.view(glock(ino), cur, mty)?;
    if off + 8 > b.len() {
        return Err(FsError::corrupt(cur, "metapath beyond the block"));
    }
    Ok((mty, b, off))
}

/// The disk blocks of logical blocks `lblock..lblock + max` as one run
/// (ending early where the mapping stops being contiguous or the leaf
/// pointer block ends), allocating missing indirect blocks and, when
/// `lblock` is a hole, the holes that follow it as one extent
/// ([`rgrp::alloc_extent`]). Returns `(first disk block, blocks)`, at least
/// one block. For whole-block writes of regular files, which overwrite
/// every block they get: fresh blocks are not zeroed.
pub fn map_run(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    ino: u64,
    lblock: u64,
    max: u64,
) -> Result<(u64, u64)> {
    let bsize = tx.bsize();
    let dev_blocks = tx.cache().device().size() / u64::from(bsize);
    let mut di = dinode(tx, ino)?;
    if di.height == 0 {
        return Err(FsError::corrupt(ino, "mapping a stuffed inode"));
    }
    if capacity(bsize, di.height).is_some_and(|c| lblock >= c) {
        return Err(FsError::Errno(libc::EFBIG));
    }
    let path = metapath(bsize, di.height, lblock);
    let mut cur = ino;
    for (l, idx) in path.iter().enumerate() {
        let (mty, view, off) = tree_slot(tx, ino, cur, l, *idx)?;
        let b = &*view;
        let ptr = get_ptr(b, off);
        if l + 1 == path.len() {
            // The leaf pointers: a mapped run, or holes to fill at once.
            let room = (((b.len() - off) / 8) as u64).min(max.max(1));
            let same = |n: u64| {
                let p = get_ptr(b, off + (n as usize) * 8);
                if ptr == 0 {
                    p == 0
                } else {
                    p == ptr + n
                }
            };
            let mut n = 1;
            while n < room && same(n) {
                n += 1;
            }
            if ptr != 0 {
                if ptr.checked_add(n).is_none_or(|e| e > dev_blocks) {
                    return Err(FsError::corrupt(
                        cur,
                        format!("pointer {ptr} beyond the device"),
                    ));
                }
                return Ok((ptr, n));
            }
            let goal = di.goal_data.max(di.num.addr);
            let (start, got) = rgrp::alloc_extent(tx, al.rindex, al.busy, goal, n)?;
            di.blocks += got;
            di.goal_data = start + got - 1;
            // The block count first: the pointers may live in the dinode
            // block itself.
            put_dinode(tx, &di)?;
            let wb = tx.get_mut(glock(ino), cur, mty)?;
            for k in 0..got {
                set_ptr(wb, off + (k as usize) * 8, start + k);
            }
            return Ok((start, got));
        }
        let ptr = if ptr == 0 {
            let p = alloc_block(tx, al, &mut di, true)?;
            tx.new_meta(glock(ino), p, mt::IN, format::IN);
            put_dinode(tx, &di)?;
            let wb = tx.get_mut(glock(ino), cur, mty)?;
            set_ptr(wb, off, p);
            p
        } else if dev_blocks <= ptr {
            return Err(FsError::corrupt(
                cur,
                format!("pointer {ptr} beyond the device"),
            ));
        } else {
            ptr
        };
        cur = ptr;
    }
    Err(FsError::corrupt(ino, "metadata tree walk ended early"))
}

/// Free every data block from logical block `first` on, and the indirect
/// blocks left empty; returns how many blocks were freed. The dinode's block
/// count is updated; its size is the caller's business.
pub fn free_from(tx: &mut Txn<'_>, al: Alloc<'_>, ino: u64, first: u64) -> Result<u64> {
    free_range(tx, al, ino, first, u64::MAX)
}

/// Free the data blocks of logical blocks `first..end` (a punched hole, or
/// everything from `first` with `end == u64::MAX`) and the indirect blocks
/// left empty; returns how many blocks were freed. Freeing from block 0 to
/// the end makes the inode stuffed (height 0) again, as the kernel does.
pub fn free_range(tx: &mut Txn<'_>, al: Alloc<'_>, ino: u64, first: u64, end: u64) -> Result<u64> {
    let bsize = tx.bsize();
    let mut di = dinode(tx, ino)?;
    if di.height == 0 {
        return Ok(0);
    }
    let inp = layout::inptrs(bsize);
    // Blocks covered by one pointer at level l of a tree of height h.
    let span = |l: usize| -> u64 {
        let mut s = 1u64;
        for _ in l + 1..di.height as usize {
            s = s.saturating_mul(inp);
        }
        s
    };
    let mut freed = 0u64;
    // Depth-first walk: (block, level, first logical block it maps).
    #[allow(clippy::too_many_arguments)]
    fn walk(
        tx: &mut Txn<'_>,
        al: Alloc<'_>,
        ino: u64,
        blk: u64,
        level: usize,
        base: u64,
        range: (u64, u64),
        height: usize,
        span: &dyn Fn(usize) -> u64,
        freed: &mut u64,
        guard: &mut u64,
    ) -> Result<bool> {
        *guard += 1;
        if *guard > 1 << 32 {
            return Err(FsError::corrupt(ino, "metadata tree loops"));
        }
        let (mty, hdr) = if level == 0 {
            (mt::DI, DINODE_SIZE)
        } else {
            (mt::IN, META_HEADER_SIZE)
        };
        let b = tx.get(glock(ino), blk, mty)?;
        let n = (b.len() - hdr) / 8;
        let s = span(level);
        let mut all_empty = true;
        let mut changes = Vec::new();
        // Data blocks go back to the bitmaps a disk-contiguous run at a time.
        let mut run: Option<(u64, u64)> = None;
        for i in 0..n {
            let off = hdr + i * 8;
            let p = get_ptr(&b, off);
            if p == 0 {
                continue;
            }
            let lb = base.saturating_add((i as u64).saturating_mul(s));
            let lend = lb.saturating_add(s);
            if lend <= range.0 || lb >= range.1 {
                all_empty = false;
                continue;
            }
            if level + 1 == height {
                run = match run {
                    Some((start, len)) if start.checked_add(len) == Some(p) => {
                        Some((start, len + 1))
                    }
                    Some((start, len)) => {
                        rgrp::free_run(tx, al.rindex, start, len)?;
                        Some((p, 1))
                    }
                    None => Some((p, 1)),
                };
                *freed += 1;
                changes.push(off);
            } else {
                let empty = walk(
                    tx,
                    al,
                    ino,
                    p,
                    level + 1,
                    lb,
                    range,
                    height,
                    span,
                    freed,
                    guard,
                )?;
                if empty {
                    rgrp::free(tx, al.rindex, p)?;
                    *freed += 1;
                    changes.push(off);
                } else {
                    all_empty = false;
                }
            }
        }
        if let Some((start, len)) = run {
            rgrp::free_run(tx, al.rindex, start, len)?;
        }
        if !changes.is_empty() {
            let wb = tx.get_mut(glock(ino), blk, mty)?;
            for off in changes {
                set_ptr(wb, off, 0);
            }
        }
        Ok(all_empty)
    }
    let mut guard = 0;
    walk(
        tx,
        al,
        ino,
        ino,
        0,
        0,
        (first, end),
        di.height as usize,
        &span,
        &mut freed,
        &mut guard,
    )?;
    di = dinode(tx, ino)?;
    di.blocks = di.blocks.saturating_sub(freed);
    let all = first == 0 && end == u64::MAX;
    if all {
        // Nothing is mapped any more: the inode is stuffed and empty (the
        // caller sets the size it wants on top).
        di.height = 0;
        if !di.is_exhash() {
            di.size = 0;
        }
        di.goal_meta = ino;
        di.goal_data = ino;
    }
    put_dinode(tx, &di)?;
    if all {
        let b = tx.get_mut(glock(ino), ino, mt::DI)?;
        b[DINODE_SIZE..].fill(0);
    }
    Ok(freed)
}
