//! Namespace and attribute operations: file handles (PUTROOTFH, PUTFH,
//! GETFH, LOOKUP, LOOKUPP), attributes (GETATTR, SETATTR, VERIFY, NVERIFY,
//! ACCESS), directories (READDIR, CREATE, REMOVE, RENAME, LINK), READLINK
//! and the security flavour queries. Each maps onto one call of the
//! filesystem library ([`crate::fs::Fs`]), after the permission check the
//! kernel would have made for a local caller ([`super::perm`]).

use super::attr::{self, SetAttrs, SetTime};
use super::compound::{fs_status, xdr, Ctx, OpResult};
use super::fh::Fh;
use super::perm::{self, R, W, X};
use super::proto::{access as acc, fattr, ftype, st};
use super::rpc::AUTH_SYS;
use super::state::Stateid;
use super::xdr::{Dec, Enc};
use crate::fs::Attr;
use crate::ops::SetAttr;

/// A `component4`: a name in a directory, checked.
pub fn component(d: &mut Dec<'_>) -> Result<Vec<u8>, u32> {
    let n = d.opaque(4096).map_err(xdr)?;
    if n.is_empty() {
        return Err(st::INVAL);
    }
    if n.len() > 255 {
        return Err(st::NAMETOOLONG);
    }
    if n.contains(&b'/') || n.contains(&0) || n == b"." || n == b".." {
        return Err(st::BADNAME);
    }
    Ok(n.to_vec())
}

/// `change_info4` of a directory around a change.
pub fn cinfo(e: &mut Enc, before: &Attr, after: Option<&Attr>) {
    let b = attr::change_of(before);
    let a = after.map_or(b.wrapping_add(1), attr::change_of);
    e.bool(false).u64(b).u64(a);
}

fn need(ctx: &Ctx<'_>, a: &Attr, want: u32) -> OpResult {
    if perm::allowed(&ctx.cred, a, want) {
        Ok(())
    } else {
        Err(st::ACCESS)
    }
}

/// SECINFO_NO_NAME: AUTH_SYS only. Consumes the current file handle.
pub fn secinfo_no_name(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let _style = d.u32().map_err(xdr)?;
    ctx.cur()?;
    ctx.cur = None;
    e.u32(1).u32(AUTH_SYS);
    Ok(())
}

/// SECINFO of a name: AUTH_SYS only.
pub fn secinfo(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let name = component(d)?;
    let dir = ctx.cur_dir()?;
    ctx.srv
        .fs
        .lookup(dir.ino, &name)
        .map_err(|e| fs_status(&e))?;
    ctx.cur = None;
    e.u32(1).u32(AUTH_SYS);
    Ok(())
}

/// PUTROOTFH.
pub fn putrootfh(ctx: &mut Ctx<'_>) -> OpResult {
    let root = ctx.srv.fs.root();
    ctx.cur = Some(Fh::of(&ctx.srv.fs, root).map_err(|e| fs_status(&e))?);
    Ok(())
}

/// PUTFH: the handle's shape is checked here, its inode when used.
pub fn putfh(ctx: &mut Ctx<'_>, d: &mut Dec<'_>) -> OpResult {
    let b = d.opaque(128).map_err(xdr)?;
    let fh = Fh::decode(b).map_err(|_| st::BADHANDLE)?;
    ctx.srv.check_fh(&fh)?;
    ctx.cur = Some(fh);
    Ok(())
}

/// GETFH.
pub fn getfh(ctx: &mut Ctx<'_>, e: &mut Enc) -> OpResult {
    let fh = ctx.cur()?;
    e.opaque(&fh.encode());
    Ok(())
}

/// LOOKUP.
pub fn lookup(ctx: &mut Ctx<'_>, d: &mut Dec<'_>) -> OpResult {
    let raw = d.opaque(4096).map_err(xdr)?;
    let dir = ctx.cur_dir()?;
    if raw.is_empty() {
        return Err(st::INVAL);
    }
    if raw.len() > 255 {
        return Err(st::NAMETOOLONG);
    }
    if raw.contains(&b'/') || raw.contains(&0) || raw == b"." || raw == b".." {
        return Err(st::BADNAME);
    }
    need(ctx, &dir, X)?;
    let a = ctx.srv.fs.lookup(dir.ino, raw).map_err(|e| fs_status(&e))?;
    ctx.cur = Some(Fh {
        ino: a.ino,
        generation: a.generation,
    });
    Ok(())
}

/// LOOKUPP: the parent; the root has none.
pub fn lookupp(ctx: &mut Ctx<'_>) -> OpResult {
    let dir = ctx.cur_dir()?;
    if dir.ino == ctx.srv.fs.root() {
        return Err(st::NOENT);
    }
    need(ctx, &dir, X)?;
    let a = ctx
        .srv
        .fs
        .lookup(dir.ino, b"..")
        .map_err(|e| fs_status(&e))?;
    ctx.cur = Some(Fh {
        ino: a.ino,
        generation: a.generation,
    });
    Ok(())
}

/// GETATTR.
pub fn getattr(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let mask = d.u32s(64).map_err(xdr)?;
    let fh = ctx.cur()?;
    let a = ctx.srv.check_fh(&fh)?;
    ctx.srv.encode_attrs(e, &mask, &a)
}

/// VERIFY (`same`) and NVERIFY: compare the client's values with ours.
pub fn verify(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, same: bool) -> OpResult {
    let mask = d.u32s(64).map_err(xdr)?;
    let vals = d.opaque(1 << 16).map_err(xdr)?;
    let a = ctx.cur_attr()?;
    if attr::has(&mask, fattr::RDATTR_ERROR) {
        return Err(st::INVAL);
    }
    let mut e = Enc::new();
    ctx.srv.encode_attrs(&mut e, &mask, &a)?;
    let mut ours = Dec::new(&e.buf);
    let got = ours.u32s(64).map_err(xdr)?;
    let trim = |m: &[u32]| {
        let mut m = m.to_vec();
        while m.last() == Some(&0) {
            m.pop();
        }
        m
    };
    if trim(&got) != trim(&mask) {
        return Err(st::ATTRNOTSUPP);
    }
    let ours = ours.opaque(1 << 16).map_err(xdr)?;
    match (ours == vals, same) {
        (true, true) | (false, false) => Ok(()),
        (false, true) => Err(st::NOT_SAME),
        (true, false) => Err(st::SAME),
    }
}

/// ACCESS.
pub fn access(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let asked = d.u32().map_err(xdr)?;
    let a = ctx.cur_attr()?;
    let is_dir = a.mode & 0o170000 == 0o040000;
    let c = &ctx.cred;
    let mut ok = 0;
    let mut sup = 0;
    for (bit, want, dir_only, file_only) in [
        (acc::READ, R, false, false),
        (acc::LOOKUP, X, true, false),
        (acc::MODIFY, W, false, false),
        (acc::EXTEND, W, false, false),
        (acc::DELETE, W, true, false),
        (acc::EXECUTE, X, false, true),
    ] {
        if asked & bit == 0 || (dir_only && !is_dir) || (file_only && is_dir) {
            continue;
        }
        sup |= bit;
        if perm::allowed(c, &a, want) {
            ok |= bit;
        }
    }
    e.u32(sup).u32(ok);
    Ok(())
}

/// READDIR: entries after `cookie` (an offset [`crate::fs::Fs::readdir`]
/// gave), without "." and "..", up to `maxcount` bytes of reply.
pub fn readdir(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let cookie = d.u64().map_err(xdr)?;
    let _verf: [u8; 8] = d.array().map_err(xdr)?;
    let _dircount = d.u32().map_err(xdr)?;
    let maxcount = (d.u32().map_err(xdr)? as usize).min(ctx.srv.max_io() as usize);
    let mask = d.u32s(64).map_err(xdr)?;
    let dir = ctx.cur_dir()?;
    need(ctx, &dir, R)?;
    if cookie == 1 || cookie == 2 {
        return Err(st::BAD_COOKIE);
    }
    // Names first (the directory's glock is held while it is walked), then
    // each entry's attributes.
    let limit = (maxcount / 24).clamp(1, 8192);
    let mut items: Vec<(Vec<u8>, u64, u64)> = Vec::new();
    let mut walked_all = true;
    ctx.srv
        .fs
        .readdir(dir.ino, cookie, |it| {
            if it.name == b"." || it.name == b".." {
                return true;
            }
            if items.len() >= limit {
                walked_all = false;
                return false;
            }
            items.push((it.name.to_vec(), it.ino, it.next));
            true
        })
        .map_err(|e| fs_status(&e))?;
    // verifier (8) + the final "no more entries" (4) + eof (4)
    let mut used = 8 + 8;
    let mut out = Enc::new();
    out.fixed(&[0u8; 8]);
    let mut eof = walked_all;
    let mut n = 0;
    for (name, ino, next) in &items {
        let mut ent = Enc::new();
        ent.u32(1).u64(*next).opaque(name);
        match ctx.srv.fs.getattr(*ino) {
            Ok(a) => ctx.srv.encode_attrs(&mut ent, &mask, &a)?,
            Err(err) if attr::has(&mask, fattr::RDATTR_ERROR) => {
                let mut m = Vec::new();
                attr::set(&mut m, fattr::RDATTR_ERROR);
                ent.u32s(&m).opaque(&Enc::new().u32(fs_status(&err)).buf);
            }
            Err(err) => return Err(fs_status(&err)),
        }
        if used + ent.len() > maxcount {
            eof = false;
            break;
        }
        used += ent.len();
        out.buf.extend_from_slice(&ent.buf);
        n += 1;
    }
    if n == 0 && !eof {
        return Err(st::TOOSMALL);
    }
    out.u32(0).bool(eof);
    e.buf.extend_from_slice(&out.buf);
    Ok(())
}

/// READLINK.
pub fn readlink(ctx: &mut Ctx<'_>, e: &mut Enc) -> OpResult {
    let a = ctx.cur_attr()?;
    if a.mode & 0o170000 != 0o120000 {
        return Err(if a.mode & 0o170000 == 0o040000 {
            st::ISDIR
        } else {
            st::INVAL
        });
    }
    let t = ctx.srv.fs.readlink(a.ino).map_err(|e| fs_status(&e))?;
    e.opaque(&t);
    Ok(())
}

fn now() -> (i64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

/// Apply `s` to `a` after checking the caller's rights; `open_for_write`:
/// the caller presented an open of the file for writing (a size change is
/// then allowed whatever the mode, as for `ftruncate`). Returns the mask
/// of what was set.
pub fn apply_setattr(
    ctx: &Ctx<'_>,
    a: &Attr,
    s: &SetAttrs,
    open_for_write: bool,
) -> Result<Vec<u32>, u32> {
    let c = &ctx.cred;
    let is_owner = perm::owner(c, a);
    let mut sa = SetAttr::default();
    if let Some(size) = s.size {
        match a.mode & 0o170000 {
            0o100000 => {}
            0o040000 => return Err(st::ISDIR),
            _ => return Err(st::INVAL),
        }
        if !open_for_write && !perm::allowed(c, a, W) {
            return Err(st::ACCESS);
        }
        sa.size = Some(size);
    }
    if let Some(m) = s.mode {
        if !is_owner {
            return Err(st::PERM);
        }
        let mut m = m;
        // As chmod(2): a non-root owner outside the file's group loses setgid.
        if c.uid() != 0 && !c.in_group(a.gid) {
            m &= !0o2000;
        }
        sa.mode = Some(m);
    }
    if let Some(u) = s.uid {
        if u != a.uid && c.uid() != 0 {
            return Err(st::PERM);
        }
        sa.uid = Some(u);
    }
    if let Some(g) = s.gid {
        if g != a.gid && c.uid() != 0 && !(is_owner && c.in_group(g)) {
            return Err(st::PERM);
        }
        sa.gid = Some(g);
    }
    // As the kernel's nfsd: a new owner or group of a non-directory revokes
    // set-user-ID, and set-group-ID if group-executable, also from a mode
    // set with it (`Fs::setattr` clears them when no mode is given); a
    // size change by a caller without CAP_FSETID (anyone but root, whose
    // capabilities nfsd keeps) clears them as a write does.
    sa.killpriv = true;
    sa.kill_suidgid = c.uid() != 0;
    if (sa.uid.is_some() || sa.gid.is_some()) && a.mode & 0o170000 != 0o040000 {
        if let Some(m) = sa.mode.as_mut() {
            *m = crate::ops::without_suidgid(*m);
        }
    }
    for (t, slot) in [(s.atime, &mut sa.atime), (s.mtime, &mut sa.mtime)] {
        match t {
            None => {}
            Some(SetTime::Server) => {
                if !is_owner && !perm::allowed(c, a, W) {
                    return Err(st::ACCESS);
                }
                *slot = Some(now());
            }
            Some(SetTime::Client(sec, ns)) => {
                if !is_owner {
                    return Err(st::PERM);
                }
                if ns >= 1_000_000_000 {
                    return Err(st::INVAL);
                }
                *slot = Some((sec, ns));
            }
        }
    }
    if sa.size.is_some()
        || sa.mode.is_some()
        || sa.uid.is_some()
        || sa.gid.is_some()
        || sa.atime.is_some()
        || sa.mtime.is_some()
    {
        ctx.writable()?;
        ctx.srv.fs.setattr(a.ino, sa).map_err(|e| fs_status(&e))?;
    }
    Ok(s.mask.clone())
}

/// SETATTR. Its reply always carries `attrsset`, failed or not.
pub fn setattr(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let r = (|| {
        let sid = ctx.stateid(Stateid::decode(d).map_err(xdr)?);
        let s = attr::decode_set(d)?;
        let a = ctx.cur_attr()?;
        let mut open_w = false;
        if s.size.is_some() && !sid.is_special() {
            let client = ctx.client()?;
            ctx.srv.states().check_io(client, &sid, a.ino, true)?;
            open_w = true;
        }
        apply_setattr(ctx, &a, &s, open_w)
    })();
    match r {
        Ok(m) => {
            e.u32s(&m);
            Ok(())
        }
        Err(s) => {
            e.u32s(&[]);
            Err(s)
        }
    }
}

/// CREATE: directories, symlinks, device nodes, FIFOs and sockets
/// (regular files are made by OPEN).
pub fn create(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let t = d.u32().map_err(xdr)?;
    let mut target = None;
    let mut rdev = 0;
    let ifmt = match t {
        ftype::LNK => {
            target = Some(d.opaque(4096).map_err(xdr)?.to_vec());
            0o120000
        }
        ftype::BLK | ftype::CHR => {
            let ma = d.u32().map_err(xdr)?;
            let mi = d.u32().map_err(xdr)?;
            rdev = ((ma & 0xfff) << 8) | (mi & 0xff) | ((mi & !0xff) << 12);
            if t == ftype::BLK {
                0o060000
            } else {
                0o020000
            }
        }
        ftype::SOCK => 0o140000,
        ftype::FIFO => 0o010000,
        ftype::DIR => 0o040000,
        _ => return Err(st::BADTYPE),
    };
    let name = component(d)?;
    let s = attr::decode_set(d)?;
    let dir = ctx.cur_dir()?;
    need(ctx, &dir, W | X)?;
    ctx.writable()?;
    if s.size.is_some() {
        return Err(st::INVAL);
    }
    let fs = &ctx.srv.fs;
    let (uid, gid) = (ctx.cred.uid(), ctx.cred.gid());
    let new = match &target {
        Some(t) => fs.symlink(dir.ino, &name, t, uid, gid),
        None => {
            let mode = ifmt
                | s.mode
                    .unwrap_or(if ifmt == 0o040000 { 0o777 } else { 0o644 });
            fs.mknod(dir.ino, &name, mode, 0, uid, gid, rdev, None)
        }
    }
    .map_err(|e| fs_status(&e))?;
    // What mknod did not set: owner, group, times (a symlink's mode too).
    let rest = SetAttrs {
        uid: s.uid.filter(|&u| u != new.uid),
        gid: s.gid.filter(|&g| g != new.gid),
        atime: s.atime,
        mtime: s.mtime,
        ..SetAttrs::default()
    };
    if rest != SetAttrs::default() {
        apply_setattr(ctx, &new, &rest, false)?;
    }
    let after = fs.getattr(dir.ino).ok();
    ctx.cur = Some(Fh {
        ino: new.ino,
        generation: new.generation,
    });
    cinfo(e, &dir, after.as_ref());
    let mut set = s.mask.clone();
    if target.is_some() {
        // A symlink's mode is always 0777.
        set = set
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 1 {
                    w & !(1 << (fattr::MODE % 32))
                } else {
                    *w
                }
            })
            .collect();
    }
    e.u32s(&set);
    Ok(())
}

/// REMOVE (files and empty directories).
pub fn remove(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let name = component(d)?;
    let dir = ctx.cur_dir()?;
    need(ctx, &dir, W | X)?;
    ctx.writable()?;
    let fs = &ctx.srv.fs;
    let victim = fs.lookup(dir.ino, &name).map_err(|e| fs_status(&e))?;
    if !perm::sticky_ok(&ctx.cred, &dir, &victim) {
        return Err(st::ACCESS);
    }
    let is_dir = victim.mode & 0o170000 == 0o040000;
    fs.remove(dir.ino, &name, is_dir)
        .map_err(|e| fs_status(&e))?;
    let after = fs.getattr(dir.ino).ok();
    cinfo(e, &dir, after.as_ref());
    Ok(())
}

/// RENAME: from the saved directory to the current one.
pub fn rename(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let old = component(d)?;
    let new = component(d)?;
    let dst = ctx.cur_dir()?;
    let sfh = ctx.saved.ok_or(st::NOFILEHANDLE)?;
    let src = ctx.srv.check_fh(&sfh)?;
    if src.mode & 0o170000 != 0o040000 {
        return Err(st::NOTDIR);
    }
    need(ctx, &src, W | X)?;
    need(ctx, &dst, W | X)?;
    ctx.writable()?;
    let fs = &ctx.srv.fs;
    let victim = fs.lookup(src.ino, &old).map_err(|e| fs_status(&e))?;
    if !perm::sticky_ok(&ctx.cred, &src, &victim) {
        return Err(st::ACCESS);
    }
    if let Ok(t) = fs.lookup(dst.ino, &new) {
        if !perm::sticky_ok(&ctx.cred, &dst, &t) {
            return Err(st::ACCESS);
        }
        if t.ino == victim.ino {
            // Two names of one file: nothing to do (rename(2)).
            cinfo(e, &src, Some(&src));
            cinfo(e, &dst, Some(&dst));
            return Ok(());
        }
    }
    fs.rename(src.ino, &old, dst.ino, &new, 0)
        .map_err(|e| fs_status(&e))?;
    let sa = fs.getattr(src.ino).ok();
    let da = fs.getattr(dst.ino).ok();
    cinfo(e, &src, sa.as_ref());
    cinfo(e, &dst, da.as_ref());
    Ok(())
}

/// LINK: the saved file gets a name in the current directory.
pub fn link(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let name = component(d)?;
    let dir = ctx.cur_dir()?;
    let sfh = ctx.saved.ok_or(st::NOFILEHANDLE)?;
    let src = ctx.srv.check_fh(&sfh)?;
    if src.mode & 0o170000 == 0o040000 {
        return Err(st::ISDIR);
    }
    need(ctx, &dir, W | X)?;
    ctx.writable()?;
    let fs = &ctx.srv.fs;
    fs.link(src.ino, dir.ino, &name)
        .map_err(|e| fs_status(&e))?;
    let after = fs.getattr(dir.ino).ok();
    cinfo(e, &dir, after.as_ref());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components() {
        let enc = |b: &[u8]| Enc::new().opaque(b).buf.clone();
        assert_eq!(component(&mut Dec::new(&enc(b"ok"))), Ok(b"ok".to_vec()));
        assert_eq!(component(&mut Dec::new(&enc(b""))), Err(st::INVAL));
        assert_eq!(component(&mut Dec::new(&enc(b"a/b"))), Err(st::BADNAME));
        assert_eq!(component(&mut Dec::new(&enc(b".."))), Err(st::BADNAME));
        assert_eq!(
            component(&mut Dec::new(&enc(&[b'x'; 256]))),
            Err(st::NAMETOOLONG)
        );
        assert_eq!(component(&mut Dec::new(&[0, 0, 0, 9, 1])), Err(st::BADXDR));
    }
}
