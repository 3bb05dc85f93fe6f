//! The operations on a file's data and attributes: write (ordered data
//! straight to the device, journaled data through the log), truncate,
//! setattr, fallocate, extended attributes, `chattr` flags, and clearing
//! privileges on a write or chown.

use super::*;

/// What `setattr` changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<(i64, u32)>,
    pub mtime: Option<(i64, u32)>,
    /// The caller leaves killing privileges to us (FUSE's
    /// `FUSE_HANDLE_KILLPRIV_V2`): a change of owner or group of a
    /// non-directory clears set-user-ID, and set-group-ID if
    /// group-executable, as the kernel's `chown` does.
    pub killpriv: bool,
    /// `FATTR_KILL_SUIDGID`: the size change is by a caller without
    /// `CAP_FSETID`, so set-user-ID and set-group-ID go as for a write.
    pub kill_suidgid: bool,
}

/// `mode` without set-user-ID, and without set-group-ID if group-executable
/// (without group execute it means mandatory locking, which a write keeps):
/// what the kernel's `file_remove_privs` clears.
pub(crate) fn without_suidgid(mode: u32) -> u32 {
    let sgid_x = libc::S_ISGID | libc::S_IXGRP;
    let mut m = mode & !libc::S_ISUID;
    if mode & sgid_x == sgid_x {
        m &= !libc::S_ISGID;
    }
    m
}

/// What a write through FUSE must clear besides writing, the kernel leaving
/// it to us (`FUSE_HANDLE_KILLPRIV_V2`, which spares a `security.capability`
/// look-up round trip per write): the file's capabilities always, and with
/// `suidgid` (the writer lacks `CAP_FSETID`: `FUSE_WRITE_KILL_SUIDGID`) its
/// set-user-ID and set-group-ID bits, as `file_remove_privs` would. `di`:
/// the dinode as the write left it in the transaction.
fn kill_privs(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    ino: u64,
    mut di: Dinode,
    suidgid: bool,
) -> Result<()> {
    use crate::inode::{ea_write, xattr::EATYPE_SECURITY};
    if suidgid && without_suidgid(di.mode) != di.mode {
        di.mode = without_suidgid(di.mode);
        put_dinode(tx, &di)?;
    }
    let name = b"capability";
    if di.eattr != 0 && ea_write::get(tx, ino, EATYPE_SECURITY, name)?.is_some() {
        ea_write::set(
            tx,
            al,
            ino,
            EATYPE_SECURITY,
            name,
            None,
            ea_write::SetMode::Any,
        )?;
    }
    Ok(())
}

// The `FS_*_FL` inode flags of `chattr`/`lsattr` (linux/fs.h).
const FS_SYNC_FL: u32 = 0x0000_0008;
const FS_IMMUTABLE_FL: u32 = 0x0000_0010;
const FS_APPEND_FL: u32 = 0x0000_0020;
const FS_NOATIME_FL: u32 = 0x0000_0080;
const FS_INDEX_FL: u32 = 0x0000_1000;
const FS_JOURNAL_DATA_FL: u32 = 0x0000_4000;
const FS_TOPDIR_FL: u32 = 0x0002_0000;

/// Dinode flags and their `FS_*_FL` twins (the kernel's `gfs2_fileattr_get`);
/// journaled data is mapped apart (it means another bit on directories).
const FLAG_MAP: [(u32, u32); 6] = [
    (dif::SYNC, FS_SYNC_FL),
    (dif::IMMUTABLE, FS_IMMUTABLE_FL),
    (dif::APPENDONLY, FS_APPEND_FL),
    (dif::NOATIME, FS_NOATIME_FL),
    (dif::EXHASH, FS_INDEX_FL),
    (dif::TOPDIR, FS_TOPDIR_FL),
];

/// The dinode bit `chattr +j` stands for: new files inherit it on a
/// directory, the data is journaled on a file.
fn jdata_bit(di: &Dinode) -> u32 {
    if di.is_dir() {
        dif::INHERIT_JDATA
    } else {
        dif::JDATA
    }
}

/// GFS2 dinode flags as `FS_*_FL`.
fn fsflags_of(di: &Dinode) -> u32 {
    let mut f = FLAG_MAP
        .iter()
        .filter(|(d, _)| di.flags & d != 0)
        .fold(0, |f, (_, fl)| f | fl);
    if di.flags & jdata_bit(di) != 0 {
        f |= FS_JOURNAL_DATA_FL;
    }
    f
}

/// Whether inode `di` journals its file data (`GFS2_DIF_JDATA`).
fn is_jdata(di: &Dinode) -> bool {
    di.flags & dif::JDATA != 0 && !di.is_dir()
}

/// Write whole data block `blk` of inode `ino`: through the log for a
/// journaled-data file, straight to the device otherwise (ordered mode:
/// the log flush that makes it reachable flushes the device first).
fn put_data(
    tx: &mut Txn<'_>,
    dev: &dyn BlockDevice,
    jdata: bool,
    ino: u64,
    blk: u64,
    data: Vec<u8>,
) -> Result<()> {
    if jdata {
        tx.put_jdata(glock(ino), blk, data);
        return Ok(());
    }
    dev.write_at(&data, blk * u64::from(tx.bsize()))
        .map_err(|e| FsError::Io {
            what: format!("writing data block {blk} of inode {ino}"),
            source: e,
        })
}

/// The current content of data block `blk`: for a journaled-data file the
/// log may hold a newer version than the device.
fn get_data(tx: &Txn<'_>, dev: &dyn BlockDevice, jdata: bool, blk: u64) -> Result<Vec<u8>> {
    if jdata {
        if let Some(d) = tx.jdata_overlay(blk) {
            return Ok(d);
        }
    }
    let mut b = vec![0u8; tx.bsize() as usize];
    dev.read_at(&mut b, blk * u64::from(tx.bsize()))
        .map_err(|e| FsError::Io {
            what: format!("reading data block {blk}"),
            source: e,
        })?;
    Ok(b)
}

/// Write `data` at `offset` (or at the end of the file, `None`) of regular
/// file `ino` within transaction `tx`: the body of [`Fs::write`], shared
/// with writers of system files (the rindex of a grow) that must change
/// other files in the same transaction. Returns the updated dinode.
pub(crate) fn write_tx(
    tx: &mut Txn<'_>,
    al: Alloc<'_>,
    dev: &dyn BlockDevice,
    ino: u64,
    at: Option<u64>,
    data: &[u8],
) -> Result<Dinode> {
    let bsize = tx.bsize();
    let bs = u64::from(bsize);
    let mut di = dinode(tx, ino)?;
    if di.is_dir() {
        return Err(errno(libc::EISDIR));
    }
    let offset = at.unwrap_or(di.size);
    let end = offset
        .checked_add(data.len() as u64)
        .filter(|e| *e <= i64::MAX as u64)
        .ok_or(errno(libc::EFBIG))?;
    if di.height == 0 && end <= layout::stuffed_max(bsize) {
        let b = tx.get_mut(glock(ino), ino, mt::DI)?;
        let s = DINODE_SIZE + offset as usize;
        b[s..s + data.len()].copy_from_slice(data);
        di = dinode(tx, ino)?;
    } else {
        if di.height == 0 {
            write::unstuff(tx, al, ino, dev)?;
        }
        write::ensure_height(tx, al, ino, end.div_ceil(bs))?;
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        let mut run_next = 0u64;
        let flush_run = |run: &mut Vec<u8>, start: u64| -> Result<()> {
            if !run.is_empty() {
                dev.write_at(run, start * bs).map_err(|e| FsError::Io {
                    what: format!("writing data of inode {ino}"),
                    source: e,
                })?;
                run.clear();
            }
            Ok(())
        };
        let jd = is_jdata(&di);
        if !jd && offset.is_multiple_of(bs) && end.is_multiple_of(bs) {
            // Whole blocks (every page-cache writeback, every aligned
            // O_DIRECT or 4 KiB write): each physical run goes to the
            // device straight from the request's buffer, with no copy and
            // no allocation per block.
            let first = offset / bs;
            let mut span: Option<(u64, u64, u64)> = None; // (lblock, phys, blocks)
            let put = |(lb, phys, n): (u64, u64, u64)| -> Result<()> {
                let at = ((lb - first) * bs) as usize;
                let src = &data[at..at + (n * bs) as usize];
                dev.write_at(src, phys * bs).map_err(|e| FsError::Io {
                    what: format!("writing data of inode {ino}"),
                    source: e,
                })
            };
            // Mapped (or allocated, holes as one extent each) a run at a
            // time, runs that continue on the disk written as one.
            let mut lb = first;
            while lb < end / bs {
                let (phys, len) = write::map_run(tx, al, ino, lb, end / bs - lb)?;
                span = match span {
                    Some((l, p, n)) if p + n == phys => Some((l, p, n + len)),
                    Some(done) => {
                        put(done)?;
                        Some((lb, phys, len))
                    }
                    None => Some((lb, phys, len)),
                };
                lb += len;
            }
            if let Some(done) = span {
                put(done)?;
            }
            di = dinode(tx, ino)?;
            di.size = di.size.max(end);
            touch_mc(&mut di);
            put_dinode(tx, &di)?;
            return Ok(di);
        }
        for lb in offset / bs..end.div_ceil(bs) {
            let (phys, new) = write::map(tx, al, ino, lb, true)?
                .ok_or_else(|| FsError::corrupt(ino, "allocation failed"))?;
            let bstart = lb * bs;
            let s = offset.max(bstart) - bstart;
            let e = end.min(bstart + bs) - bstart;
            let src = &data[(bstart + s - offset) as usize..(bstart + e - offset) as usize];
            let mut block = if s == 0 && e == bs {
                src.to_vec()
            } else {
                let mut b = if new {
                    vec![0u8; bsize as usize]
                } else {
                    get_data(tx, dev, jd, phys)?
                };
                b[s as usize..e as usize].copy_from_slice(src);
                b
            };
            if jd {
                put_data(tx, dev, jd, ino, phys, block)?;
                continue;
            }
            if run.is_empty() || phys != run_next {
                flush_run(&mut run, run_start)?;
                run_start = phys;
            }
            run.append(&mut block);
            run_next = phys + 1;
            if run.len() >= 8 << 20 {
                flush_run(&mut run, run_start)?;
                run_start = run_next;
            }
        }
        flush_run(&mut run, run_start)?;
        di = dinode(tx, ino)?;
    }
    di.size = di.size.max(end);
    touch_mc(&mut di);
    // Set-id bits and capabilities: the caller's (see `kill_privs`).
    put_dinode(tx, &di)?;
    Ok(di)
}

impl Fs {
    /// The inode's flags as `FS_IOC_GETFLAGS` reports them (`lsattr`).
    pub fn fsflags(&self, ino: u64) -> Result<u32> {
        self.with_inode(ino, |_, ip| Ok(fsflags_of(&ip.di)))
    }

    /// `FS_IOC_SETFLAGS` (`chattr`): journaled data (`+j`: a regular file's
    /// data goes through the log; on a directory, new files inherit it),
    /// `+S` synchronous writes, `+A` no atime, `+T` top directory. The
    /// immutable and append-only flags are refused (EOPNOTSUPP): nothing
    /// here would enforce them.
    pub fn set_fsflags(&self, ino: u64, uid: u32, fs: u32) -> Result<()> {
        let cur = self.with_inode(ino, |_, ip| Ok(ip.di))?;
        if uid != 0 && uid != cur.uid {
            return Err(errno(libc::EPERM));
        }
        if (fs ^ fsflags_of(&cur)) & (FS_IMMUTABLE_FL | FS_APPEND_FL) != 0 {
            return Err(errno(libc::EOPNOTSUPP));
        }
        // The dinode bits chattr may change, and what they become.
        let jflag = jdata_bit(&cur);
        let mask = dif::SYNC | dif::NOATIME | dif::TOPDIR | jflag;
        let mut want = FLAG_MAP
            .iter()
            .filter(|(d, fl)| mask & d != 0 && fs & fl != 0)
            .fold(0, |w, (d, _)| w | d);
        if fs & FS_JOURNAL_DATA_FL != 0 {
            want |= jflag;
        }
        if want & dif::TOPDIR != 0 && !cur.is_dir() {
            return Err(errno(libc::EINVAL));
        }
        let known = FS_SYNC_FL
            | FS_NOATIME_FL
            | FS_JOURNAL_DATA_FL
            | FS_TOPDIR_FL
            | FS_INDEX_FL
            | FS_IMMUTABLE_FL
            | FS_APPEND_FL;
        if fs & !known != 0 {
            return Err(errno(libc::EOPNOTSUPP));
        }
        let flags = (cur.flags & !mask) | want;
        if flags == cur.flags {
            return Ok(());
        }
        if (flags ^ cur.flags) & dif::JDATA != 0 {
            // No journaled block of this file may stay pinned once its
            // writes go straight to the device, and ordered data must be
            // in place before the log starts carrying newer versions.
            self.checkpoint()?;
        }
        self.modify(&[ino], |tx, _, _| {
            let mut di = dinode(tx, ino)?;
            di.flags = (di.flags & !mask) | want;
            touch_c(&mut di);
            put_dinode(tx, &di)
        })
    }

    /// Write `data` at `offset` of regular file `ino`; returns bytes written.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_at(ino, Some(offset), data, None)
    }

    /// A write through FUSE with `FUSE_HANDLE_KILLPRIV_V2`: at `offset`, or
    /// at the end of the file (`None`, `O_APPEND`), clearing what
    /// [`kill_privs`] says (`kill_suidgid`: `FUSE_WRITE_KILL_SUIDGID`).
    pub fn write_killing_privs(
        &self,
        ino: u64,
        offset: Option<u64>,
        data: &[u8],
        kill_suidgid: bool,
    ) -> Result<usize> {
        self.write_at(ino, offset, data, Some(kill_suidgid))
    }

    /// Append `data` at the end of file `ino` as it is on disk when the
    /// inode's glock is held exclusively (`O_APPEND`). The kernel's own
    /// append offset comes from its cached size, which another node may
    /// have moved since: only the holder of the glock knows the end.
    pub fn append(&self, ino: u64, data: &[u8]) -> Result<usize> {
        self.write_at(ino, None, data, None)
    }

    /// Write at `offset`, or at the end of the file (`None`); with `kill`,
    /// clear privileges as [`kill_privs`] says.
    fn write_at(
        &self,
        ino: u64,
        at: Option<u64>,
        data: &[u8],
        kill: Option<bool>,
    ) -> Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        // One transaction per MiB: a journaled-data write must fit a flush.
        const CHUNK: usize = 1 << 20;
        if data.len() > CHUNK {
            let mut done = 0;
            for piece in data.chunks(CHUNK) {
                done += self.write_at(ino, at.map(|o| o + done as u64), piece, kill)?;
            }
            return Ok(done);
        }
        let dev = self.device().clone();
        let sync = self.modify(&[ino], |tx, al, _| {
            let di = write_tx(tx, al, dev.as_ref(), ino, at, data)?;
            let sync = di.flags & dif::SYNC != 0;
            if let Some(suidgid) = kill {
                kill_privs(tx, al, ino, di, suidgid)?;
            }
            Ok(sync)
        })?;
        if sync {
            // `chattr +S`: every write is durable when it returns.
            self.sync()?;
        }
        Ok(data.len())
    }

    fn truncate(
        tx: &mut Txn<'_>,
        al: Alloc<'_>,
        ino: u64,
        size: u64,
        dev: &dyn crate::dev::BlockDevice,
    ) -> Result<()> {
        let bsize = tx.bsize();
        let bs = u64::from(bsize);
        let di = dinode(tx, ino)?;
        if di.is_dir() {
            return Err(errno(libc::EISDIR));
        }
        let old = di.size;
        if di.height == 0 {
            if size <= layout::stuffed_max(bsize) {
                if size < old {
                    let b = tx.get_mut(glock(ino), ino, mt::DI)?;
                    let hi = (DINODE_SIZE as u64 + old).min(b.len() as u64) as usize;
                    b[DINODE_SIZE + size as usize..hi].fill(0);
                }
            } else {
                write::unstuff(tx, al, ino, dev)?;
                write::ensure_height(tx, al, ino, size.div_ceil(bs))?;
            }
        } else if size < old {
            write::free_from(tx, al, ino, size.div_ceil(bs))?;
            if size & (bs - 1) != 0 {
                if let Some((blk, _)) = write::map(tx, al, ino, size / bs, false)? {
                    let jd = is_jdata(&dinode(tx, ino)?);
                    let mut b = get_data(tx, dev, jd, blk)?;
                    b[(size % bs) as usize..].fill(0);
                    put_data(tx, dev, jd, ino, blk, b)?;
                }
            }
        } else if size > old {
            write::ensure_height(tx, al, ino, size.div_ceil(bs))?;
        }
        let mut di = dinode(tx, ino)?;
        di.size = size;
        if size != old {
            touch_mc(&mut di);
        }
        put_dinode(tx, &di)
    }

    /// `setattr`: mode, owner, size, times; ctime is updated.
    pub fn setattr(&self, ino: u64, a: SetAttr) -> Result<Attr> {
        if let Some(size) = a.size {
            self.free_tail_in_chunks(ino, &self.getattr(ino)?, size)?;
        }
        let dev = self.device().clone();
        self.modify(&[ino], |tx, al, _| {
            if let Some(size) = a.size {
                Self::truncate(tx, al, ino, size, dev.as_ref())?;
            }
            let mut di = dinode(tx, ino)?;
            if let Some(m) = a.mode {
                di.mode = (di.mode & S_IFMT) | (m & !S_IFMT);
                if self.options().acl {
                    use crate::inode::{acl, ea_write, xattr::EATYPE_SYS};
                    let name = b"posix_acl_access";
                    if let Some(old) = ea_write::get(tx, ino, EATYPE_SYS, name)? {
                        if let Some(new) = acl::chmod(&old, di.mode) {
                            put_dinode(tx, &di)?;
                            ea_write::set(
                                tx,
                                al,
                                ino,
                                EATYPE_SYS,
                                name,
                                Some(&new),
                                ea_write::SetMode::Any,
                            )?;
                            let mode = di.mode;
                            di = dinode(tx, ino)?;
                            di.mode = mode;
                        }
                    }
                }
            }
            if let Some(u) = a.uid {
                di.uid = u;
            }
            if let Some(g) = a.gid {
                di.gid = g;
            }
            let chown = a.killpriv && (a.uid.is_some() || a.gid.is_some()) && a.mode.is_none();
            if !di.is_dir() && (chown || (a.kill_suidgid && a.size.is_some())) {
                di.mode = without_suidgid(di.mode);
            }
            if let Some((s, ns)) = a.atime {
                di.atime = s as u64;
                di.atime_nsec = ns;
            }
            if let Some((s, ns)) = a.mtime {
                di.mtime = s as u64;
                di.mtime_nsec = ns;
            }
            touch_c(&mut di);
            put_dinode(tx, &di)
        })?;
        self.getattr(ino)
    }

    /// `setxattr` (`value = Some`) or `removexattr` (`None`) of a full name
    /// with its namespace prefix. `flags`: `XATTR_CREATE`, `XATTR_REPLACE`.
    pub fn set_xattr(&self, ino: u64, name: &[u8], value: Option<&[u8]>, flags: i32) -> Result<()> {
        use crate::inode::ea_write::{self, SetMode};
        use crate::inode::xattr;
        let (t, n) = xattr::split_name(name).ok_or(errno(libc::EOPNOTSUPP))?;
        if t == xattr::EATYPE_SYS {
            let acl = n == b"posix_acl_access" || n == b"posix_acl_default";
            if !acl || !self.options().acl {
                return Err(errno(libc::EOPNOTSUPP));
            }
        }
        let mode = if flags & libc::XATTR_CREATE != 0 {
            SetMode::Create
        } else if flags & libc::XATTR_REPLACE != 0 {
            SetMode::Replace
        } else {
            SetMode::Any
        };
        self.modify(&[ino], |tx, al, _| {
            ea_write::set(tx, al, ino, t, n, value, mode)?;
            let mut di = dinode(tx, ino)?;
            touch_c(&mut di);
            put_dinode(tx, &di)
        })
    }

    /// `fallocate`: allocate (mode 0, or `FALLOC_FL_KEEP_SIZE`) zeroed
    /// blocks, or punch a hole (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`).
    pub fn fallocate(&self, ino: u64, offset: u64, len: u64, mode: i32) -> Result<()> {
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        if mode & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE) != 0 || (punch && !keep)
        {
            return Err(errno(libc::EOPNOTSUPP));
        }
        if len == 0 {
            return Err(errno(libc::EINVAL));
        }
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= i64::MAX as u64)
            .ok_or(errno(libc::EFBIG))?;
        let dev = self.device().clone();
        self.modify(&[ino], |tx, al, _| {
            let bsize = tx.bsize();
            let bs = u64::from(bsize);
            let mut di = dinode(tx, ino)?;
            if di.mode & S_IFMT != 0o100000 {
                return Err(errno(libc::ENODEV));
            }
            if punch {
                let stop = end.min(di.size);
                if offset >= stop {
                    return Ok(());
                }
                if di.height == 0 {
                    let b = tx.get_mut(glock(ino), ino, mt::DI)?;
                    b[DINODE_SIZE + offset as usize..DINODE_SIZE + stop as usize].fill(0);
                } else {
                    let first_full = offset.div_ceil(bs);
                    let end_full = stop / bs;
                    if first_full < end_full {
                        write::free_range(tx, al, ino, first_full, end_full)?;
                    }
                    // Zero the partial blocks at both edges.
                    for lb in [offset / bs, stop / bs] {
                        let (s, e) = (offset.max(lb * bs), stop.min(lb * bs + bs));
                        if s >= e || (s == lb * bs && e == lb * bs + bs) {
                            continue;
                        }
                        if let Some((blk, _)) = write::map(tx, al, ino, lb, false)? {
                            let jd = is_jdata(&dinode(tx, ino)?);
                            let mut b = get_data(tx, dev.as_ref(), jd, blk)?;
                            b[(s - lb * bs) as usize..(e - lb * bs) as usize].fill(0);
                            put_data(tx, dev.as_ref(), jd, ino, blk, b)?;
                        }
                    }
                }
                di = dinode(tx, ino)?;
                touch_mc(&mut di);
                return put_dinode(tx, &di);
            }
            if di.height == 0 && end <= layout::stuffed_max(bsize) {
                // Stuffed space is always there.
            } else {
                if di.height == 0 {
                    write::unstuff(tx, al, ino, dev.as_ref())?;
                }
                write::ensure_height(tx, al, ino, end.div_ceil(bs))?;
                let jd = is_jdata(&dinode(tx, ino)?);
                for lb in offset / bs..end.div_ceil(bs) {
                    let (blk, new) = write::map(tx, al, ino, lb, true)?
                        .ok_or_else(|| FsError::corrupt(ino, "allocation failed"))?;
                    if new {
                        put_data(tx, dev.as_ref(), jd, ino, blk, vec![0u8; bsize as usize])?;
                    }
                }
            }
            di = dinode(tx, ino)?;
            if !keep && end > di.size {
                di.size = end;
            }
            touch_c(&mut di);
            put_dinode(tx, &di)
        })
    }

    /// Free the blocks of `ino` past `size` in transactions of bounded size
    /// (from the end backwards), so that truncating or deleting a huge file
    /// never needs more journal than one flush can carry. The size is left
    /// alone: the caller's own transaction sets it.
    /// `a`: the inode's attributes, as the caller read them.
    pub(super) fn free_tail_in_chunks(&self, ino: u64, a: &Attr, size: u64) -> Result<()> {
        const CHUNK: u64 = 1 << 16;
        if a.mode & S_IFMT != 0o100000 {
            return Ok(());
        }
        let bs = u64::from(a.blksize);
        let first = size.div_ceil(bs);
        let mut end = a.size.div_ceil(bs);
        while end > first.saturating_add(CHUNK) {
            let lo = end - CHUNK;
            self.modify(&[ino], |tx, al, _| {
                let di = dinode(tx, ino)?;
                if di.height > 0 {
                    write::free_range(tx, al, ino, lo, end)?;
                }
                Ok(())
            })?;
            end = lo;
        }
        Ok(())
    }
}
