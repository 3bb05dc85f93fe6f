//! The FUSE adapter: maps `fuser` requests to [`Fs`] operations and errors to
//! errno. Thin on purpose; every rule about the filesystem lives in the core.
//!
//! FUSE inode 1 is the root directory; every other FUSE inode number is the
//! dinode's block address (block 1 is never a dinode). Permission checks are
//! the kernel's (`default_permissions` is always set), and with `acl` the
//! kernel also enforces POSIX ACLs read through `getxattr`.

use crate::error::FsError;
use crate::fs::{Attr, Fs};
use crate::ops::SetAttr;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, MountOption, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use listing::Listing;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod blkmount;
mod listing;

/// How long the kernel may cache attributes, and names on a node alone on
/// its disk. In a cluster an inode's attributes stay cached only while this
/// node holds its glock: giving the glock up tells the kernel to drop them
/// (attributes, and with them, through `AUTO_INVAL_DATA`, pages and
/// listings whose mtime moved), see [`invalidate_on_demote`].
const TTL: Duration = Duration::from_secs(1);

/// FUSE-side options.
#[derive(Debug, Clone, Default)]
pub struct FuseOptions {
    /// `allow_other`.
    pub allow_other: bool,
    /// Serve requests on this many threads (default 4).
    pub threads: Option<usize>,
    /// Name shown in /proc/mounts as the source.
    pub fsname: String,
    /// Other nodes of this process mount the same device (`lock_mem`): a
    /// `fuseblk` mount then never stands on the block device itself, since
    /// two such mounts of one block device would share one superblock, and
    /// with it one daemon's node; each gets a loop device of its own.
    pub shared_device: bool,
    /// `nosuid`, `nodev`, `noexec`: the generic mount flags (mount(8)
    /// adds all three for an fstab line with `user`).
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    /// `io_uring=on`: take requests over io_uring when the kernel offers it
    /// (Linux 6.14+ with the `fuse` module's `enable_uring` set), served on
    /// threads pinned to the CPU of their queue. Off by default: the round
    /// trip halves for a caller that stays on one CPU, but one the
    /// scheduler moves between CPUs pays more than through `/dev/fuse`
    /// (figures in ARCHITECTURE.md).
    pub io_uring: bool,
}

/// The `fuser::Filesystem` over a mounted [`Fs`].
pub struct Gfs2Fuse {
    fs: Arc<Fs>,
    /// Listings of open directory handles: a directory is read once per
    /// `opendir` (at offset 0) and served from memory after that, so a
    /// listing costs one walk however many READDIR calls it takes.
    listings: std::sync::Mutex<std::collections::HashMap<u64, Arc<Listing>>>,
    next_fh: std::sync::atomic::AtomicU64,
    /// How long the kernel may keep a name: [`TTL`] alone on the disk; in a
    /// cluster none, since a name belongs to its directory's glock and the
    /// kernel's name cache can only be told of a name it is asked about
    /// (FUSE's entry invalidation takes the directory's inode lock, which a
    /// request waiting for that very glock may hold: a deadlock).
    entry_ttl: Duration,
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(logged_errno(e))
}

/// The errno for `e`; damage and device errors are logged on the way out.
fn logged_errno(e: &FsError) -> i32 {
    if let FsError::Corrupt { .. } | FsError::Io { .. } = e {
        tracing::error!("{e}");
    }
    e.errno()
}

fn time(t: (i64, u32)) -> SystemTime {
    let (s, ns) = t;
    if s >= 0 {
        UNIX_EPOCH + Duration::new(s as u64, ns)
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + Duration::from_nanos(ns as u64)
    }
}

fn kind_of(mode: u32) -> FileType {
    match mode & 0o170000 {
        0o040000 => FileType::Directory,
        0o120000 => FileType::Symlink,
        0o020000 => FileType::CharDevice,
        0o060000 => FileType::BlockDevice,
        0o010000 => FileType::NamedPipe,
        0o140000 => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// `FS_*_FL` flags and their `FS_XFLAG_*` twins (linux/fs.h): sync,
/// immutable, append-only, noatime.
const FL_XFLAG: [(u32, u32); 4] = [(0x08, 0x20), (0x10, 0x08), (0x20, 0x10), (0x80, 0x40)];

fn xflags_of(fs: u32) -> u32 {
    FL_XFLAG
        .iter()
        .filter(|(f, _)| fs & f != 0)
        .fold(0, |x, (_, xf)| x | xf)
}

fn xflags_to_fs(x: u32) -> u32 {
    FL_XFLAG
        .iter()
        .filter(|(_, xf)| x & xf != 0)
        .fold(0, |f, (fl, _)| f | fl)
}

/// `O_DIRECT` opens bypass the kernel's page cache: each read and write
/// reaches us (and the device) as the application issued it.
fn direct_io(open_flags: i32) -> FopenFlags {
    if open_flags & libc::O_DIRECT != 0 {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}

fn dtype_kind(dt: u16) -> FileType {
    match dt {
        4 => FileType::Directory,
        10 => FileType::Symlink,
        2 => FileType::CharDevice,
        6 => FileType::BlockDevice,
        1 => FileType::NamedPipe,
        12 => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

impl Gfs2Fuse {
    /// An adapter over `fs`.
    pub fn new(fs: Arc<Fs>) -> Self {
        let entry_ttl = if fs.is_single_node() {
            TTL
        } else {
            Duration::ZERO
        };
        Gfs2Fuse {
            fs,
            listings: Default::default(),
            next_fh: std::sync::atomic::AtomicU64::new(1),
            entry_ttl,
        }
    }

    /// The listing of directory `ino` for handle `fh` from `offset`: a fresh
    /// walk at offset 0 (rewinddir sees changes), the stored one after.
    fn listing(&self, ino: u64, fh: u64, offset: u64) -> crate::error::Result<Arc<Listing>> {
        if offset != 0 {
            if let Some(l) = self.lock_listings().get(&fh) {
                return Ok(l.clone());
            }
        }
        let l = Listing::start(&self.fs, ino)?;
        if fh != 0 {
            if let Some(old) = self.lock_listings().insert(fh, l.clone()) {
                old.cancel();
            }
        }
        Ok(l)
    }

    fn lock_listings(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Arc<Listing>>> {
        self.listings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ino(&self, i: INodeNo) -> u64 {
        if i.0 == 1 {
            self.fs.root()
        } else {
            i.0
        }
    }

    fn fuse_ino(&self, ino: u64) -> INodeNo {
        if ino == self.fs.root() {
            INodeNo(1)
        } else {
            INodeNo(ino)
        }
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        FileAttr {
            ino: self.fuse_ino(a.ino),
            size: a.size,
            blocks: a.blocks,
            atime: time(a.atime),
            mtime: time(a.mtime),
            ctime: time(a.ctime),
            crtime: time(a.ctime),
            kind: kind_of(a.mode),
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            blksize: a.blksize,
            flags: 0,
        }
    }
}

/// Answer an operation that returns nothing.
fn empty(r: crate::error::Result<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

impl Gfs2Fuse {
    fn entry(&self, r: crate::error::Result<Attr>, reply: ReplyEntry) {
        match r {
            Ok(a) => reply.entry_with_ttls(
                &TTL,
                &self.entry_ttl,
                &self.attr(&a),
                Generation(a.generation),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// The sizes asked of the kernel at `init`, shared with the passthrough
/// daemon of `examples/fuse_passthrough.rs` so that the benchmark's anchor
/// runs on the same settings. Readahead 1 MiB (the kernel's cap on a
/// request, `max_pages` 256); WRITE requests up to 1 MiB too (fuser's
/// default of 16 MiB is cut to `max_pages` by the kernel anyway).
pub fn tune_kernel_config(config: &mut KernelConfig) {
    let _ = config.set_max_readahead(1 << 20);
    let _ = config.set_max_write(1 << 20);
}

impl fuser::Filesystem for Gfs2Fuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        tune_kernel_config(config);
        // readdirplus only when the kernel sees it pays (AUTO): listing a
        // big directory needs names only.
        // DONT_MASK: the umask reaches us unapplied, so a directory's
        // default ACL can take its place as POSIX requires.
        let mut caps = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_AUTO_INVAL_DATA
            | InitFlags::FUSE_DONT_MASK;
        if self.fs.options().acl {
            caps |= InitFlags::FUSE_POSIX_ACL;
        }
        if let Err(missing) = config.add_capabilities(caps) {
            tracing::warn!("kernel lacks FUSE capabilities {missing:?}");
            if self.fs.options().acl && missing.contains(InitFlags::FUSE_POSIX_ACL) {
                return Err(std::io::Error::other(
                    "kernel FUSE has no POSIX ACL support",
                ));
            }
        }
        // We clear set-user/group-ID and capabilities on write, truncate
        // and chown: the kernel then no longer asks for
        // `security.capability` before every write. A kernel without it
        // goes on doing that itself (and our clearing finds nothing).
        if config
            .add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
            .is_err()
        {
            tracing::debug!("kernel FUSE without HANDLE_KILLPRIV_V2");
        }
        Ok(())
    }

    /// FUSE_DESTROY of a `fuseblk` mount: umount(2) waits for our reply,
    /// so the disk is clean and free before it returns.
    fn unmounting(&self) {
        self.fs.on_inode_invalidate(None);
        self.fs.on_inode_changed(None);
        if let Err(e) = self.fs.unmount() {
            tracing::error!("unmount: {e}");
        }
    }

    /// The serving threads ended: a plain `fuse` mount was unmounted (no
    /// DESTROY comes then), or this follows [`Self::unmounting`] and does
    /// nothing.
    fn destroy(&mut self) {
        self.fs.on_inode_invalidate(None);
        self.fs.on_inode_changed(None);
        if let Err(e) = self.fs.unmount() {
            tracing::error!("unmount: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(self.ino(parent), name.as_bytes()) {
            Ok(a) => reply.entry_with_ttls(
                &TTL,
                &self.entry_ttl,
                &self.attr(&a),
                Generation(a.generation),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(self.ino(ino)) {
            Ok(a) => reply.attr(&TTL, &self.attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(self.ino(ino)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY && self.fs.options().read_only {
            return reply.error(Errno::EROFS);
        }
        self.fs.open_inode(self.ino(ino));
        reply.opened(FileHandle(0), direct_io(flags.0));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        empty(self.fs.release_inode(self.ino(ino)), reply)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.fs.mknod(
            self.ino(parent),
            name.as_bytes(),
            mode,
            umask,
            req.uid(),
            req.gid(),
            0,
            None,
        );
        match r {
            Ok(a) => {
                self.fs.open_inode(a.ino);
                reply.created(
                    &self.entry_ttl,
                    &self.attr(&a),
                    Generation(a.generation),
                    FileHandle(0),
                    direct_io(flags),
                )
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self.fs.mknod(
            self.ino(parent),
            name.as_bytes(),
            mode,
            umask,
            req.uid(),
            req.gid(),
            rdev,
            None,
        );
        self.entry(r, reply)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.fs.mknod(
            self.ino(parent),
            name.as_bytes(),
            0o040000 | (mode & 0o7777),
            umask,
            req.uid(),
            req.gid(),
            0,
            None,
        );
        self.entry(r, reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self.fs.symlink(
            self.ino(parent),
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
            req.uid(),
            req.gid(),
        );
        self.entry(r, reply)
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self
            .fs
            .link(self.ino(ino), self.ino(newparent), newname.as_bytes());
        self.entry(r, reply)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            self.fs.remove(self.ino(parent), name.as_bytes(), false),
            reply,
        )
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            self.fs.remove(self.ino(parent), name.as_bytes(), true),
            reply,
        )
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let r = self.fs.rename(
            self.ino(parent),
            name.as_bytes(),
            self.ino(newparent),
            newname.as_bytes(),
            flags.bits(),
        );
        empty(r, reply)
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        // O_APPEND: the end of the file is ours to find, under its glock;
        // the kernel's offset comes from a size another node may have moved.
        let at = (flags.0 & libc::O_APPEND == 0).then_some(offset);
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let r = self.fs.write_killing_privs(self.ino(ino), at, data, kill);
        match r {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        kill_suidgid: bool,
        reply: ReplyAttr,
    ) {
        let t = |x: Option<TimeOrNow>| {
            x.map(|t| {
                let st = match t {
                    TimeOrNow::SpecificTime(s) => s,
                    TimeOrNow::Now => SystemTime::now(),
                };
                match st.duration_since(UNIX_EPOCH) {
                    Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
                    Err(e) => (-(e.duration().as_secs() as i64), 0),
                }
            })
        };
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: t(atime),
            mtime: t(mtime),
            killpriv: true,
            kill_suidgid,
        };
        match self.fs.setattr(self.ino(ino), a) {
            Ok(a) => reply.attr(&TTL, &self.attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        empty(
            self.fs
                .set_xattr(self.ino(ino), name.as_bytes(), Some(value), flags),
            reply,
        )
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            self.fs.set_xattr(self.ino(ino), name.as_bytes(), None, 0),
            reply,
        )
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(
            self.fs.fallocate(self.ino(ino), offset, length, mode),
            reply,
        )
    }

    /// Nothing to do at `close`: data is written through (an error shows at
    /// the write), and POSIX locks are the kernel's (no `FUSE_POSIX_LOCKS`).
    /// ENOSYS makes the kernel stop sending FLUSH for the mount
    /// (`fc->no_flush`): one round trip less per `close` (creating a file
    /// took five requests, now four).
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS)
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(self.fs.fsync(self.ino(ino)), reply)
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(self.fs.fsync(self.ino(ino)), reply)
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        thread_local! {
            /// This serving thread's read buffer (see [`Fs::read_to`]).
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with_borrow_mut(|buf| {
            reply.data_filled(size as usize, buf, |out| {
                self.fs
                    .read_to(self.ino(ino), offset, out)
                    .map_err(|e| errno(&e))
            })
        })
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self
            .next_fh
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The kernel may keep what it listed (CACHE_DIR) across opens
        // (KEEP_CACHE): it drops the cache itself when the directory changes
        // through this mount, and, with AUTO_INVAL_DATA, when a refreshed
        // mtime differs: the attribute TTL bounds staleness as for stat.
        reply.opened(
            FileHandle(fh),
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        if let Some(l) = self.lock_listings().remove(&fh.0) {
            l.cancel();
        }
        reply.ok()
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let l = match self.listing(self.ino(ino), fh.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut any = false;
        let r = l.entries(offset, |e| {
            any = true;
            !reply.add(
                self.fuse_ino(e.ino),
                e.next,
                dtype_kind(e.dtype),
                OsStr::from_bytes(e.name),
            )
        });
        // Entries before a failure are passed on; the next call gets the error.
        match r {
            Err(e) if !any => reply.error(errno(&e)),
            _ => reply.ok(),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        // The names come from the handle's listing (taken under the
        // directory's glock); each entry is then stat'ed under its own:
        // never two inode glocks at once.
        let l = match self.listing(self.ino(ino), fh.0, offset) {
            Ok(l) => l,
            Err(e) => return reply.error(errno(&e)),
        };
        let (mut any, mut left) = (false, 256);
        let r = l.entries(offset, |it| {
            any = true;
            left -= 1;
            match self.fs.getattr(it.ino) {
                Ok(a) => {
                    let fa = self.attr(&a);
                    let full = reply.add(
                        fa.ino,
                        it.next,
                        OsStr::from_bytes(it.name),
                        &self.entry_ttl,
                        &fa,
                        Generation(a.generation),
                    );
                    !full && left > 0
                }
                Err(e) => {
                    // One damaged inode must not hide the rest of the directory.
                    tracing::warn!("readdirplus: inode {}: {e}", it.ino);
                    left > 0
                }
            }
        });
        match r {
            Err(e) if !any => reply.error(errno(&e)),
            _ => reply.ok(),
        }
    }

    /// `FS_IOC_GETFLAGS`/`FS_IOC_SETFLAGS` (lsattr, chattr; the kernel's
    /// fileattr calls arrive as these with a 4-byte argument).
    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        const GETFLAGS: [u32; 2] = [0x8008_6601, 0x8004_6601];
        const SETFLAGS: [u32; 2] = [0x4008_6602, 0x4004_6602];
        const FSGETXATTR: u32 = 0x801c_581f;
        const FSSETXATTR: u32 = 0x401c_5820;
        let ino = self.ino(ino);
        if cmd == FSGETXATTR {
            // struct fsxattr: the kernel asks for it to learn the old flags
            // before a chattr; only fsx_xflags carries anything here.
            return match self.fs.fsflags(ino) {
                Ok(f) => {
                    let mut out = [0u8; 28];
                    out[..4].copy_from_slice(&xflags_of(f).to_ne_bytes());
                    reply.ioctl(0, &out[..(out_size as usize).min(28)])
                }
                Err(e) => reply.error(errno(&e)),
            };
        }
        if cmd == FSSETXATTR {
            let Some(b) = in_data.get(..4) else {
                return reply.error(Errno::EINVAL);
            };
            let x = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            let r = self.fs.fsflags(ino).and_then(|cur| {
                // xflags cannot say "journaled data": keep what is set.
                let keep = cur & !xflags_to_fs(u32::MAX);
                self.fs.set_fsflags(ino, req.uid(), keep | xflags_to_fs(x))
            });
            return match r {
                Ok(()) => reply.ioctl(0, &[]),
                Err(e) => reply.error(errno(&e)),
            };
        }
        if GETFLAGS.contains(&cmd) {
            match self.fs.fsflags(ino) {
                Ok(f) => {
                    let mut out = u64::from(f).to_ne_bytes().to_vec();
                    out.truncate((out_size as usize).min(8));
                    reply.ioctl(0, &out)
                }
                Err(e) => reply.error(errno(&e)),
            }
        } else if SETFLAGS.contains(&cmd) {
            let Some(b) = in_data.get(..4) else {
                return reply.error(Errno::EINVAL);
            };
            let f = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            match self.fs.set_fsflags(ino, req.uid(), f) {
                Ok(()) => reply.ioctl(0, &[]),
                Err(e) => reply.error(errno(&e)),
            }
        } else {
            reply.error(Errno::ENOTTY)
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bfree, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(self.ino(ino), name.as_bytes()) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(Errno::ERANGE),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(self.ino(ino)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32)
                } else if buf.len() <= size as usize {
                    reply.data(&buf)
                } else {
                    reply.error(Errno::ERANGE)
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(Errno::EINVAL);
        };
        let hole = match whence {
            libc::SEEK_DATA => false,
            libc::SEEK_HOLE => true,
            _ => return reply.error(Errno::EINVAL),
        };
        match self.fs.seek(self.ino(ino), off, hole) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// Is the mount read-only: asked for, or the device cannot be written?
fn read_only(fs: &Fs) -> bool {
    fs.options().read_only || fs.options().device_read_only
}

/// The fuser configuration for a mount of `fs`.
pub fn config(fs: &Fs, opts: &FuseOptions) -> fuser::Config {
    let mut mo = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("gfs2".into()),
        MountOption::DefaultPermissions,
        if opts.nodev {
            MountOption::NoDev
        } else {
            MountOption::Dev
        },
        if opts.nosuid {
            MountOption::NoSuid
        } else {
            MountOption::Suid
        },
    ];
    if opts.noexec {
        mo.push(MountOption::NoExec);
    }
    if read_only(fs) {
        mo.push(MountOption::RO);
        mo.push(MountOption::NoAtime);
    }
    let mut c = fuser::Config::default();
    c.mount_options = mo;
    if opts.allow_other {
        c.acl = fuser::SessionACL::All;
    }
    c.n_threads = Some(opts.threads.unwrap_or(4).max(1));
    c.clone_fd = true;
    c.io_uring = opts.io_uring;
    c
}

/// In a cluster, have every inode glock this node gives up drop the
/// kernel's attributes of that inode (`FUSE_NOTIFY_INVAL_INODE` with a
/// negative offset: attributes only). The next use asks us again, under
/// the glock; pages and directory listings go with `AUTO_INVAL_DATA` when
/// the refreshed mtime or size differ. Pages are not dropped here: that
/// waits for page locks, and a read holding one may be waiting for this
/// very glock. An attribute reply already on its way when the glock went
/// is discarded by the kernel (its attribute version is older).
///
/// The same notification drops the attributes of a file a pNFS client
/// changed on the disk (`Fs::notify_inode_changed`), on every node.
fn invalidate_on_demote(fs: &Arc<Fs>, notifier: fuser::Notifier) {
    let root = fs.root();
    let f: crate::glock::ops::InvalFn = Arc::new(move |ino| {
        let fino = if ino == root { 1 } else { ino };
        // ENOENT: the kernel has no such inode cached; nothing to drop.
        if let Err(e) = notifier.inval_inode(INodeNo(fino), -1, 0) {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::debug!(ino, "FUSE invalidation: {e}");
            }
        }
    });
    fs.on_inode_changed(Some(f.clone()));
    if !fs.is_single_node() {
        fs.on_inode_invalidate(Some(f));
    }
}

/// Mount `fs` at `mountpoint` and serve it on background threads until the
/// returned session is dropped or unmounted.
pub fn spawn(
    fs: Arc<Fs>,
    mountpoint: &Path,
    opts: &FuseOptions,
) -> std::io::Result<fuser::BackgroundSession> {
    let cfg = config(&fs, opts);
    let s = fuser::spawn_mount(Gfs2Fuse::new(fs.clone()), mountpoint, &cfg)?;
    invalidate_on_demote(&fs, s.notifier());
    Ok(s)
}

/// A mounted session that is not yet serving: lets the caller report success
/// (and detach) between the mount and the serving loop.
pub struct Mounted {
    /// The session to run.
    pub session: fuser::Session<Gfs2Fuse>,
    /// A `fuseblk` mount (its `umount` waits for the disk to be clean);
    /// otherwise a plain `fuse` mount, for which `gfs2-fuse umount` waits.
    pub fuseblk: bool,
}

/// Mount `fs` (stored on `device`, a path or a network disk's name) at
/// `mountpoint`: as `fuseblk` where the kernel lets us (see [`blkmount`]),
/// else as plain `fuse`.
pub fn session(
    fs: Arc<Fs>,
    device: &str,
    mountpoint: &Path,
    opts: &FuseOptions,
) -> std::io::Result<Mounted> {
    let cfg = config(&fs, opts);
    let mut token = blkmount::Token::for_device(device, &opts.fsname);
    if opts.shared_device && matches!(token, blkmount::Token::BlockDevice(_)) {
        token = blkmount::Token::Network(&opts.fsname);
    }
    if let blkmount::Token::BlockDevice(p) = &token {
        // A second fuseblk mount of one block device would silently share
        // the first one's superblock, and with it the first daemon.
        if let Some(m) = blkmount::mounted_on(p)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ResourceBusy,
                format!("{} is already mounted on {}", p.display(), m),
            ));
        }
    }
    match blkmount::mount(&token, mountpoint, opts, read_only(&fs)) {
        Ok((fd, src)) => {
            tracing::info!("fuseblk mount on {}", src.display());
            match fuser::Session::from_fd(Gfs2Fuse::new(fs.clone()), fd, cfg.acl, cfg) {
                Ok(session) => {
                    invalidate_on_demote(&fs, session.notifier());
                    return Ok(Mounted {
                        session,
                        fuseblk: true,
                    });
                }
                Err(e) => {
                    let _ = blkmount::unmount(mountpoint, true);
                    return Err(e);
                }
            }
        }
        // Not root, no loop driver, no fuseblk in the kernel: plain fuse.
        Err(e)
            if matches!(
                crate::dev::errno_of(&e),
                Some(libc::EPERM | libc::EACCES | libc::ENOENT | libc::ENODEV | libc::ENXIO)
            ) =>
        {
            tracing::warn!(
                "no fuseblk mount ({e}): a plain FUSE mount, whose umount returns before the \
                 disk is clean; unmount it with `gfs2-fuse umount {}`",
                mountpoint.display()
            );
        }
        Err(e) => return Err(e),
    }
    let session = fuser::Session::new(Gfs2Fuse::new(fs.clone()), mountpoint, &cfg)?;
    invalidate_on_demote(&fs, session.notifier());
    Ok(Mounted {
        session,
        fuseblk: false,
    })
}
