//! NFSv4 attributes (`fattr4`): the bitmap the client asks with, the values
//! we answer from an inode's [`Attr`] and the filesystem's figures, and the
//! settable attributes a client sends (SETATTR, CREATE, OPEN).
//!
//! Values are encoded in attribute-number order, as `fattr4` requires;
//! attributes we do not support are left out of the returned mask (which
//! is how NFSv4 says "not supported" in GETATTR). Owners are numeric
//! strings (the Linux client's default with AUTH_SYS, no id mapping).

use super::proto::{fattr as fa, ftype, st, LAYOUT4_BLOCK_VOLUME, LAYOUT4_SCSI};
use super::xdr::{Dec, Enc, XResult};
use crate::fs::{Attr, StatFs};

/// Facts about the export every GETATTR may report.
#[derive(Debug, Clone)]
pub struct FsInfo {
    /// `fsid` (major, minor).
    pub fsid: (u64, u64),
    /// Lease time in seconds.
    pub lease_secs: u32,
    /// Largest READ/WRITE.
    pub max_io: u64,
    /// Layouts offered (`fs_layout_type` = block volume).
    pub layouts: bool,
    /// The SCSI layout offered too (first: the server's preference).
    pub scsi: bool,
    /// Block size (`layout_blksize`).
    pub blksize: u32,
}

/// Whether attribute `n` is set in `mask`.
pub fn has(mask: &[u32], n: u32) -> bool {
    mask.get((n / 32) as usize)
        .is_some_and(|w| w & (1 << (n % 32)) != 0)
}

/// Set attribute `n` in `mask`.
pub fn set(mask: &mut Vec<u32>, n: u32) {
    let w = (n / 32) as usize;
    if mask.len() <= w {
        mask.resize(w + 1, 0);
    }
    mask[w] |= 1 << (n % 32);
}

/// The set bits of `mask`, ascending.
pub fn bits(mask: &[u32]) -> impl Iterator<Item = u32> + '_ {
    mask.iter().enumerate().flat_map(|(i, &w)| {
        (0..32)
            .filter(move |b| w & (1 << b) != 0)
            .map(move |b| i as u32 * 32 + b)
    })
}

/// Attributes we can report.
const READABLE: &[u32] = &[
    fa::SUPPORTED_ATTRS,
    fa::TYPE,
    fa::FH_EXPIRE_TYPE,
    fa::CHANGE,
    fa::SIZE,
    fa::LINK_SUPPORT,
    fa::SYMLINK_SUPPORT,
    fa::NAMED_ATTR,
    fa::FSID,
    fa::UNIQUE_HANDLES,
    fa::LEASE_TIME,
    fa::RDATTR_ERROR,
    fa::ACLSUPPORT,
    fa::CANSETTIME,
    fa::CASE_INSENSITIVE,
    fa::CASE_PRESERVING,
    fa::CHOWN_RESTRICTED,
    fa::FILEHANDLE,
    fa::FILEID,
    fa::FILES_AVAIL,
    fa::FILES_FREE,
    fa::FILES_TOTAL,
    fa::HOMOGENEOUS,
    fa::MAXFILESIZE,
    fa::MAXLINK,
    fa::MAXNAME,
    fa::MAXREAD,
    fa::MAXWRITE,
    fa::MODE,
    fa::NO_TRUNC,
    fa::NUMLINKS,
    fa::OWNER,
    fa::OWNER_GROUP,
    fa::RAWDEV,
    fa::SPACE_AVAIL,
    fa::SPACE_FREE,
    fa::SPACE_TOTAL,
    fa::SPACE_USED,
    fa::TIME_ACCESS,
    fa::TIME_ACCESS_SET,
    fa::TIME_DELTA,
    fa::TIME_METADATA,
    fa::TIME_MODIFY,
    fa::TIME_MODIFY_SET,
    fa::MOUNTED_ON_FILEID,
    fa::SUPPATTR_EXCLCREAT,
];

/// The `supported_attrs` bitmap.
pub fn supported(info: &FsInfo) -> Vec<u32> {
    let mut m = Vec::new();
    for &n in READABLE {
        set(&mut m, n);
    }
    if info.layouts {
        set(&mut m, fa::FS_LAYOUT_TYPES);
        set(&mut m, fa::LAYOUT_BLKSIZE);
    }
    m
}

/// Attributes a client may set at exclusive create (`suppattr_exclcreat`):
/// those that do not hold the verifier.
fn exclcreat() -> Vec<u32> {
    let mut m = Vec::new();
    for n in [fa::SIZE, fa::MODE, fa::OWNER, fa::OWNER_GROUP] {
        set(&mut m, n);
    }
    m
}

/// Whether `mask` asks for anything that needs the filesystem's statfs.
pub fn needs_statfs(mask: &[u32]) -> bool {
    [
        fa::FILES_AVAIL,
        fa::FILES_FREE,
        fa::FILES_TOTAL,
        fa::SPACE_AVAIL,
        fa::SPACE_FREE,
        fa::SPACE_TOTAL,
    ]
    .iter()
    .any(|&n| has(mask, n))
}

/// `nfs_ftype4` of a mode.
pub fn ftype_of(mode: u32) -> u32 {
    match mode & 0o170000 {
        0o040000 => ftype::DIR,
        0o120000 => ftype::LNK,
        0o060000 => ftype::BLK,
        0o020000 => ftype::CHR,
        0o140000 => ftype::SOCK,
        0o010000 => ftype::FIFO,
        _ => ftype::REG,
    }
}

/// The `change` attribute: the inode's ctime in nanoseconds (every change
/// of data or metadata moves it).
pub fn change_of(a: &Attr) -> u64 {
    (a.ctime.0.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(a.ctime.1 as u64)
}

fn time(e: &mut Enc, t: (i64, u32)) {
    e.i64(t.0).u32(t.1);
}

/// Encode `fattr4` for `req`: the mask of what is answered and the values.
pub fn encode(e: &mut Enc, req: &[u32], a: &Attr, fh: &[u8], info: &FsInfo, sf: Option<&StatFs>) {
    let sup = supported(info);
    let mut mask = Vec::new();
    let mut v = Enc::new();
    for n in bits(req) {
        if !has(&sup, n) || n == fa::TIME_ACCESS_SET || n == fa::TIME_MODIFY_SET {
            continue;
        }
        let statfs_attr = matches!(
            n,
            fa::FILES_AVAIL
                | fa::FILES_FREE
                | fa::FILES_TOTAL
                | fa::SPACE_AVAIL
                | fa::SPACE_FREE
                | fa::SPACE_TOTAL
        );
        if statfs_attr && sf.is_none() {
            continue;
        }
        let bsize = sf.map_or(0, |s| s.bsize as u64);
        match n {
            fa::SUPPORTED_ATTRS => {
                v.u32s(&sup);
            }
            fa::TYPE => {
                v.u32(ftype_of(a.mode));
            }
            fa::FH_EXPIRE_TYPE => {
                v.u32(0); // FH4_PERSISTENT
            }
            fa::CHANGE => {
                v.u64(change_of(a));
            }
            fa::SIZE => {
                v.u64(a.size);
            }
            fa::LINK_SUPPORT | fa::SYMLINK_SUPPORT | fa::UNIQUE_HANDLES | fa::CANSETTIME => {
                v.bool(true);
            }
            fa::CASE_PRESERVING | fa::CHOWN_RESTRICTED | fa::HOMOGENEOUS | fa::NO_TRUNC => {
                v.bool(true);
            }
            fa::NAMED_ATTR | fa::CASE_INSENSITIVE => {
                v.bool(false);
            }
            fa::FSID => {
                v.u64(info.fsid.0).u64(info.fsid.1);
            }
            fa::LEASE_TIME => {
                v.u32(info.lease_secs);
            }
            fa::RDATTR_ERROR => {
                v.u32(st::OK);
            }
            fa::ACLSUPPORT => {
                v.u32(0);
            }
            fa::FILEHANDLE => {
                v.opaque(fh);
            }
            fa::FILEID | fa::MOUNTED_ON_FILEID => {
                v.u64(a.ino);
            }
            fa::FILES_AVAIL | fa::FILES_FREE => {
                v.u64(sf.map_or(0, |s| s.ffree));
            }
            fa::FILES_TOTAL => {
                v.u64(sf.map_or(0, |s| s.files));
            }
            fa::MAXFILESIZE => {
                v.u64(i64::MAX as u64);
            }
            fa::MAXLINK => {
                v.u32(u32::MAX - 1);
            }
            fa::MAXNAME => {
                v.u32(255);
            }
            fa::MAXREAD | fa::MAXWRITE => {
                v.u64(info.max_io);
            }
            fa::MODE => {
                v.u32(a.mode & 0o7777);
            }
            fa::NUMLINKS => {
                v.u32(a.nlink);
            }
            fa::OWNER => {
                v.opaque(a.uid.to_string().as_bytes());
            }
            fa::OWNER_GROUP => {
                v.opaque(a.gid.to_string().as_bytes());
            }
            fa::RAWDEV => {
                let (ma, mi) = (
                    (a.rdev >> 8) & 0xfff,
                    (a.rdev & 0xff) | ((a.rdev >> 12) & !0xff),
                );
                v.u32(ma).u32(mi);
            }
            fa::SPACE_AVAIL | fa::SPACE_FREE => {
                v.u64(sf.map_or(0, |s| s.bfree.saturating_mul(bsize)));
            }
            fa::SPACE_TOTAL => {
                v.u64(sf.map_or(0, |s| s.blocks.saturating_mul(bsize)));
            }
            fa::SPACE_USED => {
                v.u64(a.blocks.saturating_mul(512));
            }
            fa::TIME_ACCESS => time(&mut v, a.atime),
            fa::TIME_DELTA => time(&mut v, (0, 1)),
            fa::TIME_METADATA => time(&mut v, a.ctime),
            fa::TIME_MODIFY => time(&mut v, a.mtime),
            fa::FS_LAYOUT_TYPES => {
                if info.scsi {
                    v.u32s(&[LAYOUT4_SCSI, LAYOUT4_BLOCK_VOLUME]);
                } else {
                    v.u32s(&[LAYOUT4_BLOCK_VOLUME]);
                }
            }
            fa::LAYOUT_BLKSIZE => {
                v.u32(info.blksize);
            }
            fa::SUPPATTR_EXCLCREAT => {
                v.u32s(&exclcreat());
            }
            _ => continue,
        }
        set(&mut mask, n);
    }
    e.u32s(&mask);
    e.opaque(&v.buf);
}

/// A time a client sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// `SET_TO_SERVER_TIME4`.
    Server,
    /// `SET_TO_CLIENT_TIME4`.
    Client(i64, u32),
}

/// Settable attributes a client sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttrs {
    /// `size`.
    pub size: Option<u64>,
    /// `mode` (permission bits).
    pub mode: Option<u32>,
    /// `owner`.
    pub uid: Option<u32>,
    /// `owner_group`.
    pub gid: Option<u32>,
    /// `time_access_set`.
    pub atime: Option<SetTime>,
    /// `time_modify_set`.
    pub mtime: Option<SetTime>,
    /// The mask of what was sent (for `attrsset` replies).
    pub mask: Vec<u32>,
}

fn owner_id(s: &[u8]) -> Result<u32, u32> {
    let s = std::str::from_utf8(s).map_err(|_| st::BADOWNER)?;
    if s == "nobody" {
        return Ok(crate::pnfs::nfs::rpc::NOBODY);
    }
    s.parse::<u32>().map_err(|_| st::BADOWNER)
}

fn settime(d: &mut Dec<'_>) -> XResult<SetTime> {
    Ok(match d.u32()? {
        super::proto::SET_TO_CLIENT_TIME4 => {
            let s = d.i64()?;
            let ns = d.u32()?;
            SetTime::Client(s, ns)
        }
        _ => SetTime::Server,
    })
}

/// Decode a client's `fattr4` for setting. `Err(status)`: an attribute we
/// cannot set (`ATTRNOTSUPP`, or `INVAL` for read-only ones), a bad owner,
/// or values that do not decode (`BADXDR`).
pub fn decode_set(d: &mut Dec<'_>) -> Result<SetAttrs, u32> {
    let mask = d.u32s(64).map_err(|_| st::BADXDR)?;
    let vals = d.opaque(1 << 16).map_err(|_| st::BADXDR)?;
    let mut v = Dec::new(vals);
    let mut s = SetAttrs {
        mask: mask.clone(),
        ..SetAttrs::default()
    };
    let bad = |_| st::BADXDR;
    for n in bits(&mask) {
        match n {
            fa::SIZE => s.size = Some(v.u64().map_err(bad)?),
            fa::MODE => s.mode = Some(v.u32().map_err(bad)? & 0o7777),
            fa::OWNER => s.uid = Some(owner_id(v.opaque(1024).map_err(bad)?)?),
            fa::OWNER_GROUP => s.gid = Some(owner_id(v.opaque(1024).map_err(bad)?)?),
            fa::TIME_ACCESS_SET => s.atime = Some(settime(&mut v).map_err(bad)?),
            fa::TIME_MODIFY_SET => s.mtime = Some(settime(&mut v).map_err(bad)?),
            n if READABLE.contains(&n) => return Err(st::INVAL),
            _ => return Err(st::ATTRNOTSUPP),
        }
    }
    if v.remaining() != 0 {
        return Err(st::BADXDR);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> FsInfo {
        FsInfo {
            fsid: (1, 2),
            lease_secs: 90,
            max_io: 1 << 20,
            layouts: true,
            scsi: false,
            blksize: 4096,
        }
    }

    fn attr() -> Attr {
        Attr {
            ino: 1234,
            size: 77,
            blocks: 8,
            mode: 0o100644,
            nlink: 1,
            uid: 1000,
            gid: 100,
            rdev: 0,
            atime: (1, 2),
            mtime: (3, 4),
            ctime: (5, 6),
            blksize: 4096,
            generation: 9,
        }
    }

    #[test]
    fn bitmaps() {
        let mut m = Vec::new();
        set(&mut m, 1);
        set(&mut m, 33);
        set(&mut m, 75);
        assert_eq!(m.len(), 3);
        assert_eq!(bits(&m).collect::<Vec<_>>(), vec![1, 33, 75]);
        assert!(has(&m, 33) && !has(&m, 34) && !has(&m, 200));
    }

    #[test]
    fn values_in_order_and_unsupported_left_out() {
        let mut req = Vec::new();
        for n in [
            fa::SIZE,
            fa::TYPE,
            fa::OWNER,
            fa::FILEID,
            12, /* acl */
            fa::FS_LAYOUT_TYPES,
        ] {
            set(&mut req, n);
        }
        let mut e = Enc::new();
        encode(&mut e, &req, &attr(), b"fh", &info(), None);
        let mut d = Dec::new(&e.buf);
        let mask = d.u32s(8).unwrap();
        assert_eq!(
            bits(&mask).collect::<Vec<_>>(),
            vec![
                fa::TYPE,
                fa::SIZE,
                fa::FILEID,
                fa::OWNER,
                fa::FS_LAYOUT_TYPES
            ]
        );
        let vals = d.opaque(1000).unwrap();
        let mut v = Dec::new(vals);
        assert_eq!(v.u32(), Ok(ftype::REG));
        assert_eq!(v.u64(), Ok(77));
        assert_eq!(v.u64(), Ok(1234));
        assert_eq!(v.opaque(10), Ok(&b"1000"[..]));
        assert_eq!(v.u32s(4), Ok(vec![LAYOUT4_BLOCK_VOLUME]));
        assert_eq!(v.remaining(), 0);
    }

    #[test]
    fn settable_attrs() {
        let mut mask = Vec::new();
        set(&mut mask, fa::SIZE);
        set(&mut mask, fa::MODE);
        set(&mut mask, fa::OWNER_GROUP);
        set(&mut mask, fa::TIME_MODIFY_SET);
        let mut v = Enc::new();
        v.u64(5).u32(0o100755).opaque(b"42").u32(1).i64(10).u32(20);
        let mut e = Enc::new();
        e.u32s(&mask).opaque(&v.buf);
        let s = decode_set(&mut Dec::new(&e.buf)).unwrap();
        assert_eq!(s.size, Some(5));
        assert_eq!(s.mode, Some(0o755));
        assert_eq!(s.gid, Some(42));
        assert_eq!(s.mtime, Some(SetTime::Client(10, 20)));
        // A name instead of a number, a read-only attribute, trailing bytes.
        let mut m2 = Vec::new();
        set(&mut m2, fa::OWNER);
        let mut e = Enc::new();
        e.u32s(&m2).opaque(&Enc::new().opaque(b"alice@x").buf);
        assert_eq!(decode_set(&mut Dec::new(&e.buf)), Err(st::BADOWNER));
        let mut m3 = Vec::new();
        set(&mut m3, fa::FILEID);
        let mut e = Enc::new();
        e.u32s(&m3).opaque(&Enc::new().u64(1).buf);
        assert_eq!(decode_set(&mut Dec::new(&e.buf)), Err(st::INVAL));
        let mut e = Enc::new();
        e.u32s(&[]).opaque(&[0, 0, 0, 0]);
        assert_eq!(decode_set(&mut Dec::new(&e.buf)), Err(st::BADXDR));
    }
}
