//! The cost of FUSE itself for a filesystem with a disk: a daemon that
//! serves a plain directory through FUSE, every request answered by the
//! matching system call on the directory beneath (pread for READ, pwrite
//! for WRITE, a directory read for READDIR), on the same `fuser`
//! configuration as gfs2-fuse (threads, cloned device descriptors,
//! `max_write`, `max_background`, readahead, capabilities, mount options,
//! `CACHE_DIR` listings). Whatever gfs2-fuse costs above this daemon on the
//! same workload is its own work; what this daemon costs above the plain
//! directory is the kernel's and the protocol's. `scripts/bench-fs.sh`
//! prints it beside ours, fuse2fs and the plain directory.
//!
//! `fuse_passthrough DIRECTORY MOUNTPOINT` serves in the foreground until
//! unmounted (`fusermount3 -u MOUNTPOINT`). FUSE passthrough (the kernel
//! reading the backing file itself) is not used: it would measure the
//! backing filesystem, not a FUSE daemon.
//!
//! Inode numbers are the backing files' own (the root is 1); the path of
//! each inode the kernel knows is kept in a table. It is a benchmark
//! anchor, not a filesystem: hard links keep the last name looked up.
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// gfs2-fuse's attribute and entry TTL on a node alone on its disk.
const TTL: Duration = Duration::from_secs(1);

type Entries = Arc<Vec<(u64, FileType, OsString)>>;

struct Passthrough {
    /// FUSE inode -> backing path.
    paths: RwLock<HashMap<u64, PathBuf>>,
    root_ino: u64,
    files: RwLock<HashMap<u64, Arc<File>>>,
    dirs: Mutex<HashMap<u64, Entries>>,
    next_fh: AtomicU64,
}

fn err(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn kind(ft: std::fs::FileType) -> FileType {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_fifo() {
        FileType::NamedPipe
    } else if ft.is_socket() {
        FileType::Socket
    } else if ft.is_char_device() {
        FileType::CharDevice
    } else if ft.is_block_device() {
        FileType::BlockDevice
    } else {
        FileType::RegularFile
    }
}

fn time(s: i64, ns: i64) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::new(s as u64, ns as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
    }
}

fn to_timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(st)) => {
            let d = st.duration_since(UNIX_EPOCH).unwrap_or_default();
            libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: d.subsec_nanos() as libc::c_long,
            }
        }
    }
}

impl Passthrough {
    fn fuse_ino(&self, ino: u64) -> u64 {
        if ino == self.root_ino {
            1
        } else {
            ino
        }
    }

    fn path(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ESTALE)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    fn attr(&self, m: &std::fs::Metadata) -> FileAttr {
        FileAttr {
            ino: INodeNo(self.fuse_ino(m.ino())),
            size: m.size(),
            blocks: m.blocks(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: time(m.ctime(), m.ctime_nsec()),
            kind: kind(m.file_type()),
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: m.blksize() as u32,
            flags: 0,
        }
    }

    /// stat `p` and remember it under its inode number.
    fn remember(&self, p: PathBuf) -> Result<FileAttr, Errno> {
        let m = std::fs::symlink_metadata(&p).map_err(err)?;
        let a = self.attr(&m);
        self.paths
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(a.ino.0, p);
        Ok(a)
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<File>, Errno> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn add_file(&self, f: File) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::new(f));
        FileHandle(fh)
    }

    fn open_options(flags: i32) -> OpenOptions {
        let mut o = OpenOptions::new();
        match flags & libc::O_ACCMODE {
            libc::O_RDONLY => o.read(true),
            libc::O_WRONLY => o.write(true),
            _ => o.read(true).write(true),
        };
        // O_APPEND stays with the kernel's offsets (writes come with one).
        o.custom_flags(flags & (libc::O_DIRECT | libc::O_SYNC | libc::O_DSYNC));
        o
    }

    /// The listing of a directory handle: read once at offset 0.
    fn entries(&self, ino: INodeNo, fh: FileHandle, offset: u64) -> Result<Entries, Errno> {
        if offset != 0 {
            if let Some(e) = self
                .dirs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&fh.0)
            {
                return Ok(e.clone());
            }
        }
        let p = self.path(ino)?;
        let mut v = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (ino.0, FileType::Directory, OsString::from("..")),
        ];
        for d in std::fs::read_dir(&p).map_err(err)? {
            let d = d.map_err(err)?;
            let ft = d.file_type().map_err(err)?;
            use std::os::unix::fs::DirEntryExt;
            v.push((self.fuse_ino(d.ino()), kind(ft), d.file_name()));
        }
        let e = Arc::new(v);
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh.0, e.clone());
        Ok(e)
    }
}

macro_rules! tryr {
    ($reply:ident, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $reply.error(e),
        }
    };
}

impl fuser::Filesystem for Passthrough {
    /// gfs2-fuse's `init`, capability for capability.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        let caps = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_AUTO_INVAL_DATA
            | InitFlags::FUSE_DONT_MASK;
        let _ = config.add_capabilities(caps);
        gfs2fuse::fuse::tune_kernel_config(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let p = tryr!(reply, self.child(parent, name));
        let a = tryr!(reply, self.remember(p));
        reply.entry(&TTL, &a, Generation(0))
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let m = match fh.and_then(|fh| self.file(fh).ok()) {
            Some(f) => f.metadata(),
            None => std::fs::symlink_metadata(tryr!(reply, self.path(ino))),
        };
        let m = tryr!(reply, m.map_err(err));
        reply.attr(&TTL, &self.attr(&m))
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
        _kill_suidgid: bool,
        reply: ReplyAttr,
    ) {
        let p = tryr!(reply, self.path(ino));
        if let Some(m) = mode {
            let perm = std::fs::Permissions::from_mode(m & 0o7777);
            tryr!(reply, std::fs::set_permissions(&p, perm).map_err(err));
        }
        if uid.is_some() || gid.is_some() {
            tryr!(reply, std::os::unix::fs::lchown(&p, uid, gid).map_err(err));
        }
        if let Some(s) = size {
            let f = tryr!(reply, OpenOptions::new().write(true).open(&p).map_err(err));
            tryr!(reply, f.set_len(s).map_err(err));
        }
        if atime.is_some() || mtime.is_some() {
            let ts = [to_timespec(atime), to_timespec(mtime)];
            let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
                .map_err(|_| Errno::EINVAL);
            let c = tryr!(reply, c);
            // SAFETY: a NUL-terminated path and two timespecs.
            let r = unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    ts.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if r != 0 {
                return reply.error(err(io::Error::last_os_error()));
            }
        }
        let m = tryr!(reply, std::fs::symlink_metadata(&p).map_err(err));
        reply.attr(&TTL, &self.attr(&m))
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let p = tryr!(reply, self.child(parent, name));
        tryr!(reply, std::fs::create_dir(&p).map_err(err));
        let perm = std::fs::Permissions::from_mode(mode & !umask & 0o7777);
        tryr!(reply, std::fs::set_permissions(&p, perm).map_err(err));
        let a = tryr!(reply, self.remember(p));
        reply.entry(&TTL, &a, Generation(0))
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let p = tryr!(reply, self.child(parent, name));
        tryr!(reply, std::fs::remove_file(p).map_err(err));
        reply.ok()
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let p = tryr!(reply, self.child(parent, name));
        tryr!(reply, std::fs::remove_dir(p).map_err(err));
        reply.ok()
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let from = tryr!(reply, self.child(parent, name));
        let to = tryr!(reply, self.child(newparent, newname));
        tryr!(reply, std::fs::rename(&from, &to).map_err(err));
        let _ = self.remember(to);
        reply.ok()
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let p = tryr!(reply, self.child(parent, link_name));
        tryr!(reply, std::os::unix::fs::symlink(target, &p).map_err(err));
        let a = tryr!(reply, self.remember(p));
        reply.entry(&TTL, &a, Generation(0))
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let p = tryr!(reply, self.path(ino));
        let t = tryr!(reply, std::fs::read_link(p).map_err(err));
        reply.data(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str()))
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let from = tryr!(reply, self.path(ino));
        let to = tryr!(reply, self.child(newparent, newname));
        tryr!(reply, std::fs::hard_link(&from, &to).map_err(err));
        let a = tryr!(reply, self.remember(to));
        reply.entry(&TTL, &a, Generation(0))
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let p = tryr!(reply, self.path(ino));
        let f = tryr!(reply, Self::open_options(flags.0).open(p).map_err(err));
        let direct = if flags.0 & libc::O_DIRECT != 0 {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        };
        reply.opened(self.add_file(f), direct)
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let p = tryr!(reply, self.child(parent, name));
        let mut o = Self::open_options(flags);
        o.create(true).mode(mode & !umask & 0o7777);
        if flags & libc::O_EXCL != 0 {
            o.create_new(true);
        }
        let f = tryr!(reply, o.open(&p).map_err(err));
        let a = tryr!(reply, self.remember(p));
        reply.created(
            &TTL,
            &a,
            Generation(0),
            self.add_file(f),
            FopenFlags::empty(),
        )
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let f = tryr!(reply, self.file(fh));
        let mut buf = vec![0u8; size as usize];
        let mut n = 0;
        while n < buf.len() {
            match f.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(err(e)),
            }
        }
        reply.data(&buf[..n])
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let f = tryr!(reply, self.file(fh));
        tryr!(reply, f.write_all_at(data, offset).map_err(err));
        reply.written(data.len() as u32)
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let f = tryr!(reply, self.file(fh));
        let r = if datasync {
            f.sync_data()
        } else {
            f.sync_all()
        };
        tryr!(reply, r.map_err(err));
        reply.ok()
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        reply.opened(
            FileHandle(fh),
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        )
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let v = tryr!(reply, self.entries(ino, fh, offset));
        for (i, (ino, k, name)) in v.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *k, name) {
                break;
            }
        }
        reply.ok()
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let v = tryr!(reply, self.entries(ino, fh, offset));
        let dir = tryr!(reply, self.path(ino));
        for (i, (_, _, name)) in v.iter().enumerate().skip(offset as usize) {
            let p = if name == "." || name == ".." {
                dir.clone()
            } else {
                dir.join(name)
            };
            let Ok(a) = self.remember(p) else { continue };
            if reply.add(a.ino, i as u64 + 1, name, &TTL, &a, Generation(0)) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let p = tryr!(reply, self.path(ino));
        let f = tryr!(reply, File::open(p).map_err(err));
        tryr!(reply, f.sync_all().map_err(err));
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096)
    }
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, mountpoint] = &args[..] else {
        eprintln!("usage: fuse_passthrough DIRECTORY MOUNTPOINT");
        std::process::exit(2);
    };
    let root = std::fs::canonicalize(dir)?;
    let root_ino = std::fs::metadata(&root)?.ino();
    let fs = Passthrough {
        paths: RwLock::new(HashMap::from([(1, root)])),
        root_ino,
        files: Default::default(),
        dirs: Default::default(),
        next_fh: AtomicU64::new(1),
    };
    // gfs2-fuse's mount options and threads (src/fuse.rs, `config`).
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("fuse_passthrough".into()),
        MountOption::Subtype("passthrough".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
    ];
    cfg.n_threads = Some(4);
    cfg.clone_fd = true;
    fuser::mount(fs, mountpoint, &cfg)
}
