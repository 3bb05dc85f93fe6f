//! Opens and file data: OPEN (CLAIM_NULL and CLAIM_FH, the four create
//! modes), OPEN_DOWNGRADE, CLOSE, READ, WRITE, COMMIT, TEST_STATEID and
//! FREE_STATEID. Data goes through the metadata server here (the path a
//! client takes without a layout, or when it cannot reach the disk).
//!
//! WRITE lands in the filesystem's running transaction; UNSTABLE writes
//! become durable at COMMIT (a log flush, `Fs::sync`), FILE_SYNC and
//! DATA_SYNC ones before the reply. The write verifier is the server's
//! start time: after a restart a client re-sends what it had not seen
//! committed.

use super::attr::{self, SetAttrs};
use super::compound::{fs_status, xdr, Ctx, OpResult};
use super::fh::Fh;
use super::op_namespace::{apply_setattr, cinfo, component};
use super::perm::{self, R, W, X};
use super::proto::*;
use super::state::Stateid;
use super::xdr::{Dec, Enc};
use crate::fs::Attr;

enum How {
    NoCreate,
    Unchecked(SetAttrs),
    Guarded(SetAttrs),
    Exclusive([u8; 8], SetAttrs),
}

fn file_type_ok(a: &Attr) -> OpResult {
    match a.mode & 0o170000 {
        0o100000 => Ok(()),
        0o040000 => Err(st::ISDIR),
        0o120000 => Err(st::SYMLINK),
        _ => Err(st::WRONG_TYPE),
    }
}

/// OPEN.
pub fn open(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let _seqid = d.u32().map_err(xdr)?;
    let share = d.u32().map_err(xdr)?;
    let _deny = d.u32().map_err(xdr)?;
    let _owner_client = d.u64().map_err(xdr)?;
    let owner = d.opaque(1024).map_err(xdr)?.to_vec();
    let how = match d.u32().map_err(xdr)? {
        OPEN4_NOCREATE => How::NoCreate,
        OPEN4_CREATE => match d.u32().map_err(xdr)? {
            UNCHECKED4 => How::Unchecked(attr::decode_set(d)?),
            GUARDED4 => How::Guarded(attr::decode_set(d)?),
            EXCLUSIVE4 => How::Exclusive(d.array().map_err(xdr)?, SetAttrs::default()),
            EXCLUSIVE4_1 => {
                let v = d.array().map_err(xdr)?;
                How::Exclusive(v, attr::decode_set(d)?)
            }
            _ => return Err(st::BADXDR),
        },
        _ => return Err(st::BADXDR),
    };
    let claim = d.u32().map_err(xdr)?;
    let name = match claim {
        CLAIM_NULL => Some(component(d)?),
        CLAIM_FH => None,
        1 => {
            d.u32().map_err(xdr)?;
            return Err(st::NO_GRACE);
        }
        _ => return Err(st::NOTSUPP),
    };
    let client = ctx.client()?;
    let access = share & OPEN4_SHARE_ACCESS_BOTH;
    if access == 0 {
        return Err(st::INVAL);
    }
    let fs = ctx.srv.fs.clone();
    let mut attrset = Vec::new();
    let mut created = false;
    let (dir_before, file) = match &name {
        None => {
            let a = ctx.cur_attr()?;
            (a, a)
        }
        Some(name) => {
            let dir = ctx.cur_dir()?;
            if !perm::allowed(&ctx.cred, &dir, X) {
                return Err(st::ACCESS);
            }
            let found = match fs.lookup(dir.ino, name) {
                Ok(a) => Some(a),
                Err(err) if err.errno() == libc::ENOENT => None,
                Err(err) => return Err(fs_status(&err)),
            };
            let file = match (&how, found) {
                (How::NoCreate, None) => return Err(st::NOENT),
                (How::NoCreate, Some(a)) => a,
                (How::Guarded(_), Some(_)) => return Err(st::EXIST),
                (How::Exclusive(v, _), Some(a)) => {
                    // A retransmitted exclusive create finds its own file.
                    if ctx.srv.exclusive_verifier(a.ino) != Some(*v) {
                        return Err(st::EXIST);
                    }
                    a
                }
                (How::Unchecked(s), Some(a)) => {
                    if let Some(sz) = s.size {
                        file_type_ok(&a)?;
                        let only_size = SetAttrs {
                            size: Some(sz),
                            mask: {
                                let mut m = Vec::new();
                                attr::set(&mut m, fattr::SIZE);
                                m
                            },
                            ..SetAttrs::default()
                        };
                        attrset = apply_setattr(ctx, &a, &only_size, false)?;
                    }
                    a
                }
                (How::Unchecked(s) | How::Guarded(s) | How::Exclusive(_, s), None) => {
                    if !perm::allowed(&ctx.cred, &dir, W | X) {
                        return Err(st::ACCESS);
                    }
                    ctx.writable()?;
                    let mode = 0o100000 | s.mode.unwrap_or(0o644);
                    let a = fs
                        .mknod(
                            dir.ino,
                            name,
                            mode,
                            0,
                            ctx.cred.uid(),
                            ctx.cred.gid(),
                            0,
                            None,
                        )
                        .map_err(|e| fs_status(&e))?;
                    created = true;
                    if let How::Exclusive(v, _) = &how {
                        ctx.srv.set_exclusive_verifier(a.ino, *v);
                    }
                    let rest = SetAttrs {
                        size: s.size.filter(|&z| z != 0),
                        uid: s.uid.filter(|&u| u != a.uid),
                        gid: s.gid.filter(|&g| g != a.gid),
                        atime: s.atime,
                        mtime: s.mtime,
                        ..SetAttrs::default()
                    };
                    if rest != SetAttrs::default() {
                        apply_setattr(ctx, &a, &rest, true)?;
                    }
                    attrset = s.mask.clone();
                    a
                }
            };
            (dir, file)
        }
    };
    file_type_ok(&file)?;
    if !created {
        // An owner may open its own file whatever the mode for an open
        // it just made; otherwise the mode decides (read also for execute).
        if access & OPEN4_SHARE_ACCESS_READ != 0
            && !perm::allowed(&ctx.cred, &file, R)
            && !perm::allowed(&ctx.cred, &file, X)
        {
            return Err(st::ACCESS);
        }
        if access & OPEN4_SHARE_ACCESS_WRITE != 0 {
            ctx.writable()?;
            if !perm::allowed(&ctx.cred, &file, W) {
                return Err(st::ACCESS);
            }
        }
    }
    let opened = ctx.srv.states().open(client, &owner, file.ino, access);
    if opened.new {
        fs.open_inode(file.ino);
    }
    ctx.cur = Some(Fh {
        ino: file.ino,
        generation: file.generation,
    });
    ctx.cur_stateid = Some(opened.stateid);
    tracing::debug!(client, ino = file.ino, access, created, "OPEN");
    opened.stateid.encode(e);
    let after = if name.is_some() {
        fs.getattr(dir_before.ino).ok()
    } else {
        Some(dir_before)
    };
    cinfo(e, &dir_before, after.as_ref());
    e.u32(OPEN4_RESULT_LOCKTYPE_POSIX);
    e.u32s(&attrset);
    e.u32(OPEN_DELEGATE_NONE);
    Ok(())
}

/// OPEN_DOWNGRADE.
pub fn open_downgrade(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let sid = ctx.stateid(Stateid::decode(d).map_err(xdr)?);
    let _seqid = d.u32().map_err(xdr)?;
    let access = d.u32().map_err(xdr)? & OPEN4_SHARE_ACCESS_BOTH;
    let _deny = d.u32().map_err(xdr)?;
    let client = ctx.client()?;
    let s = ctx.srv.states().downgrade(client, &sid, access)?;
    ctx.cur_stateid = Some(s);
    s.encode(e);
    Ok(())
}

/// CLOSE: the open goes, and with the last one an unlinked file.
pub fn close(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let _seqid = d.u32().map_err(xdr)?;
    let sid = ctx.stateid(Stateid::decode(d).map_err(xdr)?);
    let client = ctx.client()?;
    let ino = ctx.srv.states().close(client, &sid)?;
    if let Err(err) = ctx.srv.fs.release_inode(ino) {
        tracing::warn!(ino, "CLOSE: releasing the inode: {err}");
    }
    Stateid::INVALID.encode(e);
    Ok(())
}

fn io_file(ctx: &Ctx<'_>, sid: &Stateid, write: bool) -> Result<Attr, u32> {
    let a = ctx.cur_attr()?;
    match a.mode & 0o170000 {
        0o100000 => {}
        0o040000 => return Err(st::ISDIR),
        0o120000 => return Err(st::SYMLINK),
        _ => return Err(st::INVAL),
    }
    let client = ctx.client()?;
    ctx.srv.states().check_io(client, sid, a.ino, write)?;
    if sid.is_special() {
        let ok = if write {
            perm::allowed(&ctx.cred, &a, W)
        } else {
            perm::allowed(&ctx.cred, &a, R) || perm::allowed(&ctx.cred, &a, X)
        };
        if !ok {
            return Err(st::ACCESS);
        }
    }
    Ok(a)
}

/// READ.
pub fn read(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let sid = ctx.stateid(Stateid::decode(d).map_err(xdr)?);
    let offset = d.u64().map_err(xdr)?;
    let count = (d.u32().map_err(xdr)? as u64).min(ctx.srv.max_io()) as usize;
    let a = io_file(ctx, &sid, false)?;
    let data = if offset >= a.size {
        Vec::new()
    } else {
        ctx.srv
            .fs
            .read(a.ino, offset, count)
            .map_err(|e| fs_status(&e))?
    };
    let eof = offset.saturating_add(data.len() as u64) >= a.size;
    e.bool(eof).opaque(&data);
    Ok(())
}

/// WRITE.
pub fn write(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let sid = ctx.stateid(Stateid::decode(d).map_err(xdr)?);
    let offset = d.u64().map_err(xdr)?;
    let stable = d.u32().map_err(xdr)?;
    let data = d.opaque(ctx.srv.max_io() as usize).map_err(xdr)?;
    ctx.writable()?;
    let a = io_file(ctx, &sid, true)?;
    if offset
        .checked_add(data.len() as u64)
        .is_none_or(|end| end > i64::MAX as u64)
    {
        return Err(st::FBIG);
    }
    // A write drops capabilities, and for a caller without CAP_FSETID
    // (not root) set-user-ID and set-group-ID, as through the kernel's nfsd.
    let n = ctx
        .srv
        .fs
        .write_killing_privs(a.ino, Some(offset), data, ctx.cred.uid() != 0)
        .map_err(|e| fs_status(&e))?;
    let committed = if stable == UNSTABLE4 {
        UNSTABLE4
    } else {
        ctx.srv.fs.sync().map_err(|e| fs_status(&e))?;
        FILE_SYNC4
    };
    e.u32(n as u32)
        .u32(committed)
        .fixed(&ctx.srv.write_verifier());
    Ok(())
}

/// COMMIT: the log is flushed (every transaction before it is on disk).
pub fn commit(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let _offset = d.u64().map_err(xdr)?;
    let _count = d.u32().map_err(xdr)?;
    let a = ctx.cur_attr()?;
    if a.mode & 0o170000 == 0o040000 {
        return Err(st::ISDIR);
    }
    ctx.srv.fs.sync().map_err(|e| fs_status(&e))?;
    e.fixed(&ctx.srv.write_verifier());
    Ok(())
}

/// TEST_STATEID.
pub fn test_stateid(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let n = d.count(1024, 16).map_err(xdr)?;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(Stateid::decode(d).map_err(xdr)?);
    }
    let client = ctx.client()?;
    let t = ctx.srv.states();
    e.u32(n as u32);
    for s in ids {
        e.u32(t.test(client, &s));
    }
    Ok(())
}

/// FREE_STATEID.
pub fn free_stateid(ctx: &mut Ctx<'_>, d: &mut Dec<'_>) -> OpResult {
    let sid = ctx.stateid(Stateid::decode(d).map_err(xdr)?);
    let client = ctx.client()?;
    match ctx.srv.states().free(client, &sid) {
        st::OK => Ok(()),
        s => Err(s),
    }
}
