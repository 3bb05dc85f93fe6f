//! Setting and removing extended attributes.
//!
//! An inode has few attributes, so a change rewrites its whole attribute
//! set: the current records are read, edited in memory, the old EA, ED and
//! indirect blocks are freed, and a fresh layout is written. Records are
//! packed into EA blocks in order; a value stays in its record when the
//! record fits in one block's payload (the kernel's "stuffed" rule), else it
//! goes to ED blocks the record points at; more than one EA block means an
//! indirect block (`GFS2_DIF_EA_INDIRECT`), as the kernel lays them out.

use super::write::{alloc_block, dinode, get_ptr, glock, put_dinode, set_ptr, Alloc};
use crate::error::{FsError, Result};
use crate::format::{dif, mt, EaHeader, META_HEADER_SIZE};
use crate::log::trans::Txn;
use crate::rgrp;
use gfs2_ondisk::consts::format;
use gfs2_ondisk::{ea, EaIter};

/// One attribute: namespace type, name (without prefix), value.
pub type Attr = (u8, Vec<u8>, Vec<u8>);

/// Every attribute of `ino`, and every block holding them.
fn read_all(tx: &mut Txn<'_>, ino: u64) -> Result<(Vec<Attr>, Vec<u64>)> {
    let di = dinode(tx, ino)?;
    if di.eattr == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let jb = tx.bsize() as usize - META_HEADER_SIZE;
    let mut owned = vec![di.eattr];
    let mut ea_blocks = Vec::new();
    if di.flags & dif::EA_INDIRECT != 0 {
        let b = tx.get(glock(ino), di.eattr, mt::IN)?;
        for i in 0..(b.len() - META_HEADER_SIZE) / 8 {
            let p = get_ptr(&b, META_HEADER_SIZE + 8 * i);
            if p != 0 {
                ea_blocks.push(p);
                owned.push(p);
            }
        }
    } else {
        ea_blocks.push(di.eattr);
    }
    let mut attrs = Vec::new();
    for eb in ea_blocks {
        let b = tx.get(glock(ino), eb, mt::EA)?;
        for r in EaIter::new(&b) {
            let r = r.map_err(|e| FsError::corrupt(eb, e.to_string()))?;
            if r.header.ea_type == ea::TYPE_UNUSED {
                continue;
            }
            let value = match r.value {
                Some(v) => v.to_vec(),
                None => {
                    let mut v =
                        Vec::with_capacity((r.header.data_len as usize).min(ea::MAX_DATA_LEN));
                    for p in &r.ptrs {
                        owned.push(*p);
                        let d = tx.get(glock(ino), *p, mt::ED)?;
                        let n = (r.header.data_len as usize - v.len()).min(jb);
                        v.extend_from_slice(&d[META_HEADER_SIZE..META_HEADER_SIZE + n]);
                    }
                    v
                }
            };
            attrs.push((r.header.ea_type, r.name.to_vec(), value));
        }
    }
    Ok((attrs, owned))
}

/// Record size of an attribute, and how many ED blocks its value needs
/// (0 when stuffed).
fn record_size(jb: usize, name: usize, value: usize) -> (usize, usize) {
    let stuffed = EaHeader::stuffed_rec_len(name, value);
    if stuffed <= jb {
        (stuffed, 0)
    } else {
        let n = value.div_ceil(jb);
        (EaHeader::SIZE + name.div_ceil(8) * 8 + 8 * n, n)
    }
}

/// Write `attrs` as the attribute set of `ino` (after the old one was freed).
fn write_all(tx: &mut Txn<'_>, al: Alloc<'_>, ino: u64, attrs: &[Attr]) -> Result<()> {
    let bsize = tx.bsize() as usize;
    let jb = bsize - META_HEADER_SIZE;
    let mut di = dinode(tx, ino)?;
    di.eattr = 0;
    di.flags &= !dif::EA_INDIRECT;
    if attrs.is_empty() {
        return put_dinode(tx, &di);
    }
    // Pack records into blocks, first fit in order.
    let mut blocks: Vec<Vec<usize>> = vec![Vec::new()];
    let mut used = 0;
    for (i, (_, n, v)) in attrs.iter().enumerate() {
        let (sz, _) = record_size(jb, n.len(), v.len());
        if used + sz > jb {
            blocks.push(Vec::new());
            used = 0;
        }
        used += sz;
        if let Some(b) = blocks.last_mut() {
            b.push(i);
        }
    }
    let indirect = blocks.len() > 1;
    if indirect && blocks.len() > (bsize - META_HEADER_SIZE) / 8 {
        return Err(FsError::Errno(libc::ENOSPC));
    }
    let ind = if indirect {
        let a = alloc_block(tx, al, &mut di, true)?;
        tx.new_meta(glock(ino), a, mt::IN, format::IN);
        Some(a)
    } else {
        None
    };
    let mut first = 0;
    for (bi, recs) in blocks.iter().enumerate() {
        let addr = alloc_block(tx, al, &mut di, true)?;
        if bi == 0 {
            first = addr;
        }
        if let Some(ind) = ind {
            let b = tx.get_mut(glock(ino), ind, mt::IN)?;
            set_ptr(b, META_HEADER_SIZE + 8 * bi, addr);
        }
        // ED blocks of this EA block's unstuffed values.
        let mut eds: Vec<Vec<u64>> = Vec::new();
        for &i in recs {
            let (_, n, v) = &attrs[i];
            let (_, k) = record_size(jb, n.len(), v.len());
            let mut ptrs = Vec::with_capacity(k);
            for c in 0..k {
                let ed = alloc_block(tx, al, &mut di, false)?;
                let chunk = &v[c * jb..((c + 1) * jb).min(v.len())];
                let b = tx.new_meta(glock(ino), ed, mt::ED, format::ED);
                b[META_HEADER_SIZE..META_HEADER_SIZE + chunk.len()].copy_from_slice(chunk);
                ptrs.push(ed);
            }
            eds.push(ptrs);
        }
        let b = tx.new_meta(glock(ino), addr, mt::EA, format::EA);
        let mut off = META_HEADER_SIZE;
        for (ri, &i) in recs.iter().enumerate() {
            let (t, n, v) = &attrs[i];
            let (sz, _) = record_size(jb, n.len(), v.len());
            let last = ri + 1 == recs.len();
            let h = EaHeader {
                rec_len: if last {
                    (bsize - off) as u32
                } else {
                    sz as u32
                },
                data_len: v.len() as u32,
                name_len: n.len() as u8,
                ea_type: *t,
                flags: if last { ea::FLAG_LAST } else { 0 },
                num_ptrs: eds[ri].len() as u8,
                pad: 0,
            };
            h.write(&mut b[off..])?;
            b[off + EaHeader::SIZE..off + EaHeader::SIZE + n.len()].copy_from_slice(n);
            if eds[ri].is_empty() {
                let d = off + h.data_offset();
                b[d..d + v.len()].copy_from_slice(v);
            } else {
                let d = off + h.ptrs_offset();
                for (k, p) in eds[ri].iter().enumerate() {
                    set_ptr(b, d + 8 * k, *p);
                }
            }
            off += sz;
        }
    }
    di.eattr = ind.unwrap_or(first);
    if indirect {
        di.flags |= dif::EA_INDIRECT;
    }
    put_dinode(tx, &di)
}

/// What `set` should do when the attribute exists or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetMode {
    Any,
    Create,
    Replace,
}

/// Set (or with `value == None` remove) attribute `name` of type `ea_type`.
pub fn set(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    ino: u64,
    ea_type: u8,
    name: &[u8],
    value: Option<&[u8]>,
    mode: SetMode,
) -> Result<()> {
    if name.is_empty() || name.len() > ea::MAX_NAME_LEN {
        return Err(FsError::Errno(libc::ERANGE));
    }
    if value.is_some_and(|v| v.len() > ea::MAX_DATA_LEN) {
        return Err(FsError::Errno(libc::E2BIG));
    }
    let (mut attrs, owned) = read_all(tx, ino)?;
    let pos = attrs
        .iter()
        .position(|(t, n, _)| *t == ea_type && n.as_slice() == name);
    match (value, pos) {
        (None, None) => return Err(FsError::Errno(libc::ENODATA)),
        (None, Some(i)) => {
            attrs.remove(i);
        }
        (Some(_), Some(_)) if mode == SetMode::Create => return Err(FsError::Errno(libc::EEXIST)),
        (Some(_), None) if mode == SetMode::Replace => return Err(FsError::Errno(libc::ENODATA)),
        (Some(v), Some(i)) => attrs[i].2 = v.to_vec(),
        (Some(v), None) => attrs.push((ea_type, name.to_vec(), v.to_vec())),
    }
    free_blocks(tx, al, ino, &owned)?;
    write_all(tx, al, ino, &attrs)
}

fn free_blocks(tx: &mut Txn<'_>, al: Alloc<'_>, ino: u64, owned: &[u64]) -> Result<()> {
    let mut di = dinode(tx, ino)?;
    for b in owned {
        rgrp::free(tx, al.rindex, *b)?;
    }
    di.blocks = di.blocks.saturating_sub(owned.len() as u64);
    di.eattr = 0;
    di.flags &= !dif::EA_INDIRECT;
    put_dinode(tx, &di)
}

/// Free every attribute block of `ino` (deallocation).
pub fn free_all(tx: &mut Txn<'_>, al: Alloc<'_>, ino: u64) -> Result<()> {
    let (_, owned) = read_all(tx, ino)?;
    free_blocks(tx, al, ino, &owned)
}

/// The value of attribute `name` of type `ea_type`, as the transaction sees
/// it.
pub fn get(tx: &mut Txn<'_>, ino: u64, ea_type: u8, name: &[u8]) -> Result<Option<Vec<u8>>> {
    let (attrs, _) = read_all(tx, ino)?;
    Ok(attrs
        .into_iter()
        .find(|(t, n, _)| *t == ea_type && n.as_slice() == name)
        .map(|(_, _, v)| v))
}
