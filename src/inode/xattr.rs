//! Extended attributes.
//!
//! `di_eattr` points either to one EA block or, with `GFS2_DIF_EA_INDIRECT`,
//! to an indirect block listing EA blocks. An EA block holds records; a
//! record's value is either stored after its name or, when `ea_num_ptrs > 0`,
//! in that many `ED` blocks (each `bsize - 24` bytes of value). The namespace
//! is a type code: user, system (POSIX ACLs as `posix_acl_access` /
//! `posix_acl_default`, stored in the kernel's xattr ACL format), security,
//! trusted.

use super::{Inode, Meta};
use crate::error::{FsError, Result};
use crate::format::{be64, dif, mt, EaHeader, EA_HEADER_SIZE, META_HEADER_SIZE};

/// `GFS2_EATYPE_*`.
pub const EATYPE_USR: u8 = 1;
/// System namespace (POSIX ACLs).
pub const EATYPE_SYS: u8 = 2;
/// Security namespace.
pub const EATYPE_SECURITY: u8 = 3;
/// Trusted namespace.
pub const EATYPE_TRUSTED: u8 = 4;
const EAFLAG_LAST: u8 = 1;
/// `GFS2_EA_MAX_DATA_LEN`.
pub const MAX_DATA_LEN: u32 = 65536;

/// The prefix of a namespace type.
pub fn prefix(ea_type: u8) -> Option<&'static str> {
    match ea_type {
        EATYPE_USR => Some("user."),
        EATYPE_SYS => Some("system."),
        EATYPE_SECURITY => Some("security."),
        EATYPE_TRUSTED => Some("trusted."),
        _ => None,
    }
}

/// Split a full attribute name into namespace type and on-disk name.
pub fn split_name(full: &[u8]) -> Option<(u8, &[u8])> {
    for t in [EATYPE_USR, EATYPE_SYS, EATYPE_SECURITY, EATYPE_TRUSTED] {
        let p = prefix(t)?.as_bytes();
        if let Some(rest) = full.strip_prefix(p) {
            return Some((t, rest));
        }
    }
    None
}

/// One attribute record found in an EA block.
struct Record {
    blkno: u64,
    offset: usize,
    header: EaHeader,
}

/// The EA blocks of an inode.
fn ea_blocks(m: Meta<'_>, ip: &Inode) -> Result<Vec<u64>> {
    let ea = ip.di.eattr;
    if ea == 0 {
        return Ok(Vec::new());
    }
    if ip.di.flags & dif::EA_INDIRECT == 0 {
        return Ok(vec![ea]);
    }
    let ind = m.read(ea, mt::IN)?;
    let mut out = Vec::new();
    let mut off = META_HEADER_SIZE;
    while let Some(p) = be64(&ind, off) {
        if p == 0 {
            break;
        }
        out.push(p);
        off += 8;
    }
    Ok(out)
}

/// Walk every used record of every EA block.
fn for_each(
    m: Meta<'_>,
    ip: &Inode,
    mut f: impl FnMut(&[u8], &Record) -> Result<bool>,
) -> Result<()> {
    for blk in ea_blocks(m, ip)? {
        let b = m.read(blk, mt::EA)?;
        let mut off = META_HEADER_SIZE;
        loop {
            let h = EaHeader::parse(b.get(off..).unwrap_or(&[]))
                .map_err(|_| FsError::corrupt(blk, format!("EA header at {off} past the end")))?;
            let rec = h.rec_len as usize;
            if rec < EA_HEADER_SIZE || off + rec > b.len() {
                return Err(FsError::corrupt(
                    blk,
                    format!("EA record at {off}: rec_len {rec}"),
                ));
            }
            if h.ea_type > EATYPE_TRUSTED {
                return Err(FsError::corrupt(blk, format!("EA type {}", h.ea_type)));
            }
            if h.ea_type != 0 {
                let need = EA_HEADER_SIZE
                    + if h.num_ptrs == 0 {
                        h.name_len as usize + h.data_len as usize
                    } else {
                        (h.name_len as usize).div_ceil(8) * 8 + 8 * h.num_ptrs as usize
                    };
                if need > rec {
                    return Err(FsError::corrupt(
                        blk,
                        format!("EA record at {off} overflows"),
                    ));
                }
                let r = Record {
                    blkno: blk,
                    offset: off,
                    header: h,
                };
                if !f(&b, &r)? {
                    return Ok(());
                }
            }
            if h.flags & EAFLAG_LAST != 0 {
                break;
            }
            off += rec;
            if off >= b.len() {
                break;
            }
        }
    }
    Ok(())
}

fn name_of<'b>(b: &'b [u8], r: &Record) -> &'b [u8] {
    let s = r.offset + EA_HEADER_SIZE;
    &b[s..s + r.header.name_len as usize]
}

/// Full names of all attributes (`user.foo`, ...).
pub fn list(m: Meta<'_>, ip: &Inode) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for_each(m, ip, |b, r| {
        if let Some(p) = prefix(r.header.ea_type) {
            let mut n = p.as_bytes().to_vec();
            n.extend_from_slice(name_of(b, r));
            out.push(n);
        }
        Ok(true)
    })?;
    Ok(out)
}

/// The value of attribute `name` in namespace `ea_type`, or `None`.
pub fn get(m: Meta<'_>, ip: &Inode, ea_type: u8, name: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut found: Option<(Vec<u8>, Record)> = None;
    for_each(m, ip, |b, r| {
        if r.header.ea_type == ea_type && name_of(b, r) == name {
            found = Some((
                b.to_vec(),
                Record {
                    blkno: r.blkno,
                    offset: r.offset,
                    header: r.header,
                },
            ));
            return Ok(false);
        }
        Ok(true)
    })?;
    let Some((b, r)) = found else {
        return Ok(None);
    };
    let h = r.header;
    let len = h.data_len as usize;
    if h.data_len > MAX_DATA_LEN {
        return Err(FsError::corrupt(
            r.blkno,
            format!("EA value of {len} bytes"),
        ));
    }
    let start = r.offset + EA_HEADER_SIZE;
    if h.num_ptrs == 0 {
        let v = start + h.name_len as usize;
        return Ok(Some(b[v..v + len].to_vec()));
    }
    let jbsize = m.bsize() as usize - META_HEADER_SIZE;
    if len.div_ceil(jbsize) != h.num_ptrs as usize {
        return Err(FsError::corrupt(
            r.blkno,
            format!("EA of {len} bytes with {} data blocks", h.num_ptrs),
        ));
    }
    let ptrs = start + (h.name_len as usize).div_ceil(8) * 8;
    let mut out = Vec::with_capacity(len);
    for i in 0..h.num_ptrs as usize {
        let p = be64(&b, ptrs + 8 * i)
            .ok_or_else(|| FsError::corrupt(r.blkno, "EA pointer past the end"))?;
        let d = m.read(p, mt::ED)?;
        let n = (len - out.len()).min(jbsize);
        out.extend_from_slice(&d[META_HEADER_SIZE..META_HEADER_SIZE + n]);
    }
    Ok(Some(out))
}
