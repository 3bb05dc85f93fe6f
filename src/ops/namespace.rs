//! The operations on names and inodes' lives: create, mkdir, mknod,
//! symlink, link, unlink, rmdir, rename, the open-handle count that keeps
//! an unlinked inode alive, its deallocation at last close, and the scan
//! for inodes a crash left unlinked.

use super::*;

impl Fs {
    #[allow(clippy::too_many_arguments)]
    fn new_inode(
        &self,
        tx: &mut Txn<'_>,
        al: Alloc<'_>,
        parent: u64,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
    ) -> Result<Dinode> {
        let pdi = dinode(tx, parent)?;
        let (addr, generation) = rgrp::alloc(tx, al.rindex, al.busy, parent, BlockState::Dinode)?;
        let (s, ns) = now();
        let is_dir = mode & S_IFMT == S_IFDIR;
        let mut mode = mode;
        let mut gid = gid;
        if pdi.mode & libc::S_ISGID != 0 {
            gid = pdi.gid;
            if is_dir {
                mode |= libc::S_ISGID;
            }
        }
        let mut flags = 0;
        if is_dir {
            flags |= dif::JDATA | (pdi.flags & dif::INHERIT_JDATA);
        } else if mode & S_IFMT == 0o100000 && pdi.flags & dif::INHERIT_JDATA != 0 {
            // A regular file in a directory marked `chattr +j` journals its data.
            flags |= dif::JDATA;
        }
        let bsize = tx.bsize();
        let di = Dinode {
            num: Inum {
                formal_ino: generation,
                addr,
            },
            mode,
            uid,
            gid,
            nlink: if is_dir { 2 } else { 1 },
            size: if is_dir {
                layout::stuffed_max(bsize)
            } else {
                0
            },
            blocks: 1,
            atime: s,
            mtime: s,
            ctime: s,
            atime_nsec: ns,
            mtime_nsec: ns,
            ctime_nsec: ns,
            major: (rdev >> 8) & 0xfff,
            minor: (rdev & 0xff) | ((rdev >> 12) & !0xff),
            goal_meta: addr,
            goal_data: addr,
            generation,
            flags,
            payload_format: if is_dir { format::DE } else { 0 },
            entries: if is_dir { 2 } else { 0 },
            ..Dinode::default()
        };
        // The new inode's glock, exclusively, before anything of it is
        // cached (the kernel's gfs2_create_inode does the same).
        tx.require(glock(addr), Mode::EX)?;
        let b = tx.new_meta(glock(addr), addr, mt::DI, format::DI);
        di.write(b)?;
        if is_dir {
            dirops::init_dir_block(b, di.num, pdi.num)?;
        }
        Ok(di)
    }

    /// Create a file, device node, FIFO, socket or directory `name` in
    /// `parent`; returns its attributes.
    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        symlink: Option<&[u8]>,
    ) -> Result<Attr> {
        check_name(name)?;
        let dev = self.device().clone();
        let ino = self.modify(&[parent], |tx, al, _| {
            let pdi = dinode(tx, parent)?;
            if !pdi.is_dir() {
                return Err(errno(libc::ENOTDIR));
            }
            if pdi.nlink == 0 {
                return Err(errno(libc::ENOENT));
            }
            if dirops::find(tx, al, parent, name)?.is_some() {
                return Err(errno(libc::EEXIST));
            }
            let is_dir = mode & S_IFMT == S_IFDIR;
            if let Some(t) = symlink {
                if t.is_empty() {
                    return Err(errno(libc::ENOENT));
                }
                if t.len() as u64 >= layout::stuffed_max(tx.bsize()) {
                    return Err(errno(libc::ENAMETOOLONG));
                }
            }
            // The umask applies unless a default ACL takes its place.
            let inherits = self.options().acl
                && symlink.is_none()
                && crate::inode::ea_write::get(
                    tx,
                    parent,
                    crate::inode::xattr::EATYPE_SYS,
                    b"posix_acl_default",
                )?
                .is_some();
            let mode = if inherits {
                mode
            } else {
                mode & !(umask & 0o777)
            };
            let mut di = self.new_inode(tx, al, parent, mode, uid, gid, rdev)?;
            if inherits {
                Self::inherit_acl(tx, al, parent, &mut di)?;
            }
            if let Some(t) = symlink {
                di.size = t.len() as u64;
                put_dinode(tx, &di)?;
                let b = tx.get_mut(glock(di.num.addr), di.num.addr, mt::DI)?;
                b[DINODE_SIZE..DINODE_SIZE + t.len()].copy_from_slice(t);
            }
            dirops::add(tx, al, parent, name, di.num, ifmt_to_dt(mode), dev.as_ref())?;
            let mut pdi = dinode(tx, parent)?;
            if is_dir {
                pdi.nlink += 1;
            }
            touch_mc(&mut pdi);
            put_dinode(tx, &pdi)?;
            Ok(di.num.addr)
        })?;
        self.getattr(ino)
    }

    /// Give a new inode its directory's default ACL (see [`crate::inode::acl`]).
    fn inherit_acl(tx: &mut Txn<'_>, al: Alloc<'_>, parent: u64, di: &mut Dinode) -> Result<()> {
        use crate::inode::{acl, ea_write, xattr::EATYPE_SYS};
        let Some(def) = ea_write::get(tx, parent, EATYPE_SYS, b"posix_acl_default")? else {
            return Ok(());
        };
        let Some((mode, access)) = acl::inherit(&def, di.mode) else {
            return Ok(());
        };
        di.mode = mode;
        put_dinode(tx, di)?;
        let ino = di.num.addr;
        if let Some(a) = access {
            ea_write::set(
                tx,
                al,
                ino,
                EATYPE_SYS,
                b"posix_acl_access",
                Some(&a),
                ea_write::SetMode::Any,
            )?;
        }
        if di.is_dir() {
            ea_write::set(
                tx,
                al,
                ino,
                EATYPE_SYS,
                b"posix_acl_default",
                Some(&def),
                ea_write::SetMode::Any,
            )?;
        }
        *di = dinode(tx, ino)?;
        Ok(())
    }

    /// `symlink`: `name` in `parent` pointing at `target`.
    pub fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        uid: u32,
        gid: u32,
    ) -> Result<Attr> {
        self.mknod(parent, name, S_IFLNK | 0o777, 0, uid, gid, 0, Some(target))
    }

    /// `link`: a new name for `ino`.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> Result<Attr> {
        check_name(name)?;
        let dev = self.device().clone();
        self.modify(&[ino, parent], |tx, al, _| {
            let pdi = dinode(tx, parent)?;
            if !pdi.is_dir() {
                return Err(errno(libc::ENOTDIR));
            }
            let mut di = dinode(tx, ino)?;
            if di.is_dir() {
                return Err(errno(libc::EPERM));
            }
            if di.nlink == 0 {
                return Err(errno(libc::ENOENT));
            }
            if di.nlink >= u32::MAX - 1 {
                return Err(errno(libc::EMLINK));
            }
            if dirops::find(tx, al, parent, name)?.is_some() {
                return Err(errno(libc::EEXIST));
            }
            dirops::add(
                tx,
                al,
                parent,
                name,
                di.num,
                ifmt_to_dt(di.mode),
                dev.as_ref(),
            )?;
            di.nlink += 1;
            touch_c(&mut di);
            put_dinode(tx, &di)?;
            let mut pdi = dinode(tx, parent)?;
            touch_mc(&mut pdi);
            put_dinode(tx, &pdi)
        })?;
        self.getattr(ino)
    }

    /// Free an inode and everything it owns.
    fn dealloc(tx: &mut Txn<'_>, al: Alloc<'_>, ino: u64) -> Result<()> {
        let di = dinode(tx, ino)?;
        if di.is_dir() {
            for leaf in dirops::leaves(tx, al, ino)? {
                rgrp::free(tx, al.rindex, leaf)?;
            }
        }
        write::free_from(tx, al, ino, 0)?;
        crate::inode::ea_write::free_all(tx, al, ino)?;
        rgrp::free(tx, al.rindex, ino)
    }

    /// Drop one link of `ino` (already removed from its directory): free
    /// it now, or mark it unlinked if it is still open.
    fn drop_link(
        tx: &mut Txn<'_>,
        al: Alloc<'_>,
        open: &Opens,
        ino: u64,
        whole_dir: bool,
    ) -> Result<()> {
        let mut di = dinode(tx, ino)?;
        di.nlink = if whole_dir {
            0
        } else {
            di.nlink.saturating_sub(1)
        };
        touch_c(&mut di);
        put_dinode(tx, &di)?;
        if di.nlink == 0 {
            let open_here = open.contains_key(&ino);
            if !open_here && tx.try_take_uncached(iopen_glock(ino), Mode::EX)? {
                Self::dealloc(tx, al, ino)?;
            } else {
                // Open here or on another node: the last to close frees it.
                rgrp::set_dinode_state(tx, al.rindex, ino, BlockState::Unlinked)?;
            }
        }
        Ok(())
    }

    /// `unlink` (`dir == false`) or `rmdir` (`dir == true`).
    pub fn remove(&self, parent: u64, name: &[u8], dir: bool) -> Result<()> {
        check_name(name)?;
        retry_changed(|| self.remove_once(parent, name, dir))
    }

    fn remove_once(&self, parent: u64, name: &[u8], dir: bool) -> Result<()> {
        // Which inode to lock with the directory (the transaction finds the
        // name again under both glocks).
        let target = self
            .with_inode(parent, |m, ip| crate::inode::dir::lookup(m, ip, name))?
            .ok_or(FsError::Errno(libc::ENOENT))?
            .ino;
        let unopened = self
            .writer()
            .map(|w| !w.open.contains_key(&target))
            .unwrap_or(false);
        if !dir && unopened && self.is_single_node() {
            let ta = self.getattr(target)?;
            if ta.nlink == 1 {
                // Its data goes with it: free it in bounded transactions
                // first. (In a cluster another node may have it open: the
                // last to close it frees it whole, see drop_link.)
                self.free_tail_in_chunks(target, &ta, 0)?;
            }
        }
        self.modify(&[parent, target], |tx, al, open| {
            let (inum, _) = dirops::find(tx, al, parent, name)?.ok_or(errno(libc::ENOENT))?;
            if inum.addr != target {
                return Err(FsError::Changed);
            }
            let di = dinode(tx, target)?;
            if dir && !di.is_dir() {
                return Err(errno(libc::ENOTDIR));
            }
            if !dir && di.is_dir() {
                return Err(errno(libc::EISDIR));
            }
            if dir && di.entries > 2 {
                return Err(errno(libc::ENOTEMPTY));
            }
            dirops::remove(tx, al, parent, name)?;
            let mut pdi = dinode(tx, parent)?;
            if dir {
                pdi.nlink = pdi.nlink.saturating_sub(1);
            }
            touch_mc(&mut pdi);
            put_dinode(tx, &pdi)?;
            Self::drop_link(tx, al, open, target, dir)
        })
    }

    /// Whether `ancestor` is `ino` or one of its ancestors (via "..").
    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> Result<bool> {
        for _ in 0..4096 {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == self.root() {
                return Ok(false);
            }
            let up = self.lookup(ino, b"..")?.ino;
            if up == ino {
                return Ok(false);
            }
            ino = up;
        }
        Err(FsError::corrupt(ino, "directory tree too deep or looping"))
    }

    /// `rename`, with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`.
    pub fn rename(
        &self,
        sparent: u64,
        sname: &[u8],
        dparent: u64,
        dname: &[u8],
        flags: u32,
    ) -> Result<()> {
        check_name(sname)?;
        check_name(dname)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(errno(libc::EINVAL));
        }
        // As the kernel: a rename between directories holds the cluster's
        // rename lock, so that no other node moves a directory while this
        // one checks that the move does not put a directory under itself.
        let _rename_gh = if sparent != dparent {
            Some(self.glocks().acquire(rename_glock(), Mode::EX)?)
        } else {
            None
        };
        retry_changed(|| self.rename_once(sparent, sname, dparent, dname, flags))
    }

    fn rename_once(
        &self,
        sparent: u64,
        sname: &[u8],
        dparent: u64,
        dname: &[u8],
        flags: u32,
    ) -> Result<()> {
        let src = self.lookup(sparent, sname)?;
        let dst = match self.lookup(dparent, dname) {
            Ok(a) => Some(a),
            Err(e) if e.errno() == libc::ENOENT => None,
            Err(e) => return Err(e),
        };
        if dst.is_some() && flags & RENAME_NOREPLACE != 0 {
            return Err(errno(libc::EEXIST));
        }
        if dst.is_none() && flags & RENAME_EXCHANGE != 0 {
            return Err(errno(libc::ENOENT));
        }
        let src_dir = src.mode & S_IFMT == S_IFDIR;
        // Moving a directory under itself would cut it off the tree.
        if src_dir && sparent != dparent && self.is_ancestor(src.ino, dparent)? {
            return Err(errno(libc::EINVAL));
        }
        if let Some(d) = &dst {
            if d.mode & S_IFMT == S_IFDIR
                && flags & RENAME_EXCHANGE != 0
                && sparent != dparent
                && self.is_ancestor(d.ino, sparent)?
            {
                return Err(errno(libc::EINVAL));
            }
            if d.ino == src.ino {
                return Ok(());
            }
        }
        let dev = self.device().clone();
        let mut locks = vec![sparent, dparent, src.ino];
        if let Some(d) = &dst {
            locks.push(d.ino);
        }
        self.modify(&locks, |tx, al, open| {
            let (sinum, stype) =
                dirops::find(tx, al, sparent, sname)?.ok_or(errno(libc::ENOENT))?;
            if sinum.addr != src.ino {
                return Err(FsError::Changed);
            }
            let sdi = dinode(tx, src.ino)?;
            if flags & RENAME_EXCHANGE != 0 {
                let d = dst.ok_or(errno(libc::ENOENT))?;
                let (dinum, dtype) =
                    dirops::find(tx, al, dparent, dname)?.ok_or(errno(libc::ENOENT))?;
                let ddi = dinode(tx, d.ino)?;
                dirops::retarget(tx, al, sparent, sname, dinum, dtype)?;
                dirops::retarget(tx, al, dparent, dname, sinum, stype)?;
                if sparent != dparent {
                    let pdi_s = dinode(tx, sparent)?;
                    let pdi_d = dinode(tx, dparent)?;
                    if sdi.is_dir() {
                        dirops::retarget(tx, al, src.ino, b"..", pdi_d.num, dt::DIR)?;
                    }
                    if ddi.is_dir() {
                        dirops::retarget(tx, al, d.ino, b"..", pdi_s.num, dt::DIR)?;
                    }
                    let delta = i64::from(sdi.is_dir()) - i64::from(ddi.is_dir());
                    let mut ps = dinode(tx, sparent)?;
                    ps.nlink = (i64::from(ps.nlink) - delta) as u32;
                    touch_mc(&mut ps);
                    put_dinode(tx, &ps)?;
                    let mut pd = dinode(tx, dparent)?;
                    pd.nlink = (i64::from(pd.nlink) + delta) as u32;
                    touch_mc(&mut pd);
                    put_dinode(tx, &pd)?;
                } else {
                    let mut p = dinode(tx, sparent)?;
                    touch_mc(&mut p);
                    put_dinode(tx, &p)?;
                }
                for ino in [src.ino, d.ino] {
                    let mut x = dinode(tx, ino)?;
                    touch_c(&mut x);
                    put_dinode(tx, &x)?;
                }
                return Ok(());
            }
            if let Some(d) = &dst {
                let (dinum, _) =
                    dirops::find(tx, al, dparent, dname)?.ok_or(errno(libc::ENOENT))?;
                if dinum.addr != d.ino {
                    return Err(FsError::Changed);
                }
                let ddi = dinode(tx, d.ino)?;
                match (sdi.is_dir(), ddi.is_dir()) {
                    (true, false) => return Err(errno(libc::ENOTDIR)),
                    (false, true) => return Err(errno(libc::EISDIR)),
                    (true, true) if ddi.entries > 2 => return Err(errno(libc::ENOTEMPTY)),
                    _ => {}
                }
                dirops::remove(tx, al, dparent, dname)?;
                if ddi.is_dir() {
                    let mut pd = dinode(tx, dparent)?;
                    pd.nlink = pd.nlink.saturating_sub(1);
                    put_dinode(tx, &pd)?;
                }
                Self::drop_link(tx, al, open, d.ino, ddi.is_dir())?;
            }
            if dst.is_none() && dirops::find(tx, al, dparent, dname)?.is_some() {
                return Err(FsError::Changed);
            }
            dirops::remove(tx, al, sparent, sname)?;
            dirops::add(tx, al, dparent, dname, sinum, stype, dev.as_ref())?;
            if sdi.is_dir() && sparent != dparent {
                let pd_num = dinode(tx, dparent)?.num;
                dirops::retarget(tx, al, src.ino, b"..", pd_num, dt::DIR)?;
                let mut ps = dinode(tx, sparent)?;
                ps.nlink = ps.nlink.saturating_sub(1);
                put_dinode(tx, &ps)?;
                let mut pd = dinode(tx, dparent)?;
                pd.nlink += 1;
                put_dinode(tx, &pd)?;
            }
            for p in [sparent, dparent] {
                let mut x = dinode(tx, p)?;
                touch_mc(&mut x);
                put_dinode(tx, &x)?;
            }
            let mut s = dinode(tx, src.ino)?;
            touch_c(&mut s);
            put_dinode(tx, &s)
        })
    }

    /// A file handle was opened on `ino`.
    pub fn open_inode(&self, ino: u64) {
        if let Some(w) = self.writer() {
            // Taken before anything else: it may wait for another node.
            let h = match self.glocks().acquire_uncached(iopen_glock(ino), Mode::PR) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::error!("iopen glock of inode {ino}: {e}");
                    None
                }
            };
            let mut o = w.open.lock();
            *o.count.entry(ino).or_default() += 1;
            if let Some(h) = h {
                o.iopen.entry(ino).or_insert(h);
            }
        }
    }

    /// A file handle on `ino` was closed: an unlinked inode goes with its
    /// last handle.
    pub fn release_inode(&self, ino: u64) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        let (last, iopen) = {
            let mut o = w.open.lock();
            match o.count.get_mut(&ino) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    (false, None)
                }
                Some(_) => {
                    o.count.remove(&ino);
                    (true, o.iopen.remove(&ino))
                }
                None => (false, None),
            }
        };
        drop(iopen);
        if !last {
            return Ok(());
        }
        // Only an unlinked inode has anything to do, and most closes are of
        // linked ones: look under a shared glock first, so that closing a
        // file does not take it exclusively from every other node that
        // caches it (the kernel, too, decides at eviction, from nlink).
        if self.with_inode(ino, |_, ip| Ok(ip.di.nlink))? > 0 {
            return Ok(());
        }
        self.modify(&[ino], |tx, al, open| {
            if open.contains_key(&ino) {
                return Ok(());
            }
            let di = dinode(tx, ino)?;
            if di.nlink == 0
                && rgrp::state(tx, al.rindex, ino)? == BlockState::Unlinked
                && tx.try_take_uncached(iopen_glock(ino), Mode::EX)?
            {
                Self::dealloc(tx, al, ino)?;
            }
            Ok(())
        })
    }

    /// Free the inodes a crash left unlinked (nameless but allocated, state
    /// "unlinked" in the bitmap): the kernel frees them when it comes across
    /// them; we look once, after mount, in the background. Returns how many
    /// were freed.
    pub fn reclaim_unlinked(&self) -> Result<usize> {
        let Some(w) = self.writer() else {
            return Ok(0);
        };
        let rindex = w.rindex().to_vec();
        let mut found = Vec::new();
        for ri in &rindex {
            let gl = rgrp::glock(ri);
            let _gh = self.glocks().acquire(gl, Mode::PR)?;
            let hdr = self.cache().read_meta_as(gl, ri.addr, mt::RG)?;
            let rg = gfs2_ondisk::Rgrp::parse(&hdr)?;
            if rg.dinodes == 0 {
                continue;
            }
            rgrp::for_each_in_state(self.cache(), ri, BlockState::Unlinked, |b| found.push(b))?;
        }
        let mut freed = 0;
        for ino in found {
            let done = self.modify(&[ino], |tx, al, open| {
                if open.contains_key(&ino)
                    || rgrp::state(tx, al.rindex, ino)? != BlockState::Unlinked
                {
                    return Ok(false);
                }
                // Open on another node: its last close frees it.
                if !tx.try_take_uncached(iopen_glock(ino), Mode::EX)? {
                    return Ok(false);
                }
                let di = dinode(tx, ino)?;
                if di.nlink != 0 {
                    return Ok(false);
                }
                Self::dealloc(tx, al, ino)?;
                Ok(true)
            })?;
            freed += usize::from(done);
        }
        if freed > 0 {
            tracing::info!(freed, "freed inodes left unlinked by a crash");
        }
        Ok(freed)
    }
}
