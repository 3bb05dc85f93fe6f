//! The fastest a FUSE filesystem can list a directory on this kernel: a
//! daemon with no disk at all, serving one directory `l` of N names
//! (`entry_0` ...) from a listing built before the mount. Whatever a real
//! filesystem's first listing costs above this daemon's is its own work;
//! what this daemon costs is the kernel's and the protocol's, and no FUSE
//! filesystem can beat it. `scripts/bench-fs.sh` prints it beside ours.
//!
//! `fuse_floor MOUNTPOINT [N] [--cache-dir]` serves in the foreground until
//! unmounted (`fusermount3 -u MOUNTPOINT`). `--cache-dir` answers opendir
//! with FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE, as gfs2-fuse does.
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig,
    MountOption, OpenFlags, ReplyAttr, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};
use std::ffi::OsStr;
use std::time::{Duration, UNIX_EPOCH};

const TTL: Duration = Duration::from_secs(60);
const DIR: u64 = 2;
const FIRST_FILE: u64 = 3;

struct Floor {
    names: Vec<String>,
    cache_dir: bool,
}

fn attr(ino: u64) -> FileAttr {
    let dir = ino < FIRST_FILE;
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: if dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if dir { 0o755 } else { 0o644 },
        nlink: if dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

impl Floor {
    /// The file named `name` in `l`, if there is one.
    fn file(&self, name: &OsStr) -> Option<u64> {
        let i: usize = name.to_str()?.strip_prefix("entry_")?.parse().ok()?;
        (i < self.names.len()).then_some(FIRST_FILE + i as u64)
    }
}

impl fuser::Filesystem for Floor {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = match parent.0 {
            1 if name == "l" => Some(DIR),
            DIR => self.file(name),
            _ => None,
        };
        match ino {
            Some(i) => reply.entry(&TTL, &attr(i), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino.0 < FIRST_FILE + self.names.len() as u64 {
            reply.attr(&TTL, &attr(ino.0))
        } else {
            reply.error(Errno::ENOENT)
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let flags = if self.cache_dir {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(0), flags)
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let names: &[String] = if ino.0 == DIR { &self.names } else { &[] };
        // Cookie k = "after entry k-1"; 0 is the start.
        for (i, n) in names.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(FIRST_FILE + i as u64),
                i as u64 + 1,
                FileType::RegularFile,
                n,
            ) {
                break;
            }
        }
        reply.ok()
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cache_dir = args.iter().any(|a| a == "--cache-dir");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let Some(mountpoint) = pos.first() else {
        eprintln!("usage: fuse_floor MOUNTPOINT [N] [--cache-dir]");
        std::process::exit(2);
    };
    let n: usize = match pos.get(1).map(|s| s.parse()) {
        None => 100_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("fuse_floor: bad entry count: {e}");
            std::process::exit(2);
        }
    };
    let names = (0..n).map(|i| format!("entry_{i}")).collect();
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![MountOption::FSName("fuse_floor".into()), MountOption::RO];
    cfg.n_threads = Some(4);
    cfg.clone_fd = true;
    fuser::mount(Floor { names, cache_dir }, mountpoint, &cfg)
}
