//! `fuseblk` mounts: the kind of FUSE mount whose unmount waits for us.
//!
//! On a plain `fuse` mount the kernel aborts the connection at unmount and
//! `umount(2)` returns at once, while the daemon is still flushing its log:
//! a script that runs fsck, mounts the disk elsewhere or detaches a LUN right
//! after `umount` sees a half-written filesystem. On a `fuseblk` mount the
//! kernel sends FUSE_DESTROY and holds `umount(2)` until the daemon answers
//! (`fuse_conn_destroy` with `fc->destroy`, set for fuseblk only), and we
//! answer only once the journal is clean and the device released (the
//! vendored fuser's `unmounting` hook). So `umount`, `fusermount3 -u` and
//! `umount -l` of the last user are all safe to script.
//!
//! A `fuseblk` mount needs a block device, which the kernel opens
//! exclusively for the mount's life; it never reads or writes it (every
//! request still comes to us). What stands in for the device:
//! - a block device: itself (so the kernel's claim also keeps gfs2-utils'
//!   mkfs and fsck, which open `O_EXCL`, away from it);
//! - an image file: a loop device over it, set to detach itself when the
//!   mount lets go of it (`LO_FLAGS_AUTOCLEAR`), so `losetup -l` shows the
//!   image; we keep doing our I/O on the file itself;
//! - a network disk: a loop device over a one-block memfd named after the
//!   disk (`losetup -l` shows "/memfd:gfs2-fuse nbd://...").
//!
//! Only root may mount `fuseblk` (fusermount3 refuses `blkdev` to users),
//! and the loop driver must be there; otherwise the caller falls back to a
//! plain `fuse` mount, whose safe unmount is `gfs2-fuse umount`.

use super::FuseOptions;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// What the kernel's `fuseblk` mount can claim in place of our device.
pub enum Token<'a> {
    /// A local block device: itself.
    BlockDevice(&'a Path),
    /// An image file: a loop device over it.
    Image(&'a Path),
    /// A network disk: a loop device over a memfd named after the disk
    /// (`shown`, its name without secrets), which /proc/mounts also shows.
    Network(&'a str),
}

impl<'a> Token<'a> {
    /// The token for a device given as `spec` (a path or a network URL),
    /// shown as `shown` where it is a network disk.
    pub fn for_device(spec: &'a str, shown: &'a str) -> Token<'a> {
        let p = Path::new(spec);
        match std::fs::metadata(p) {
            Ok(m) if m.file_type().is_block_device() => Token::BlockDevice(p),
            Ok(m) if m.is_file() => Token::Image(p),
            _ => Token::Network(shown),
        }
    }
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` of `linux/loop.h`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` of `linux/loop.h` (LOOP_CONFIGURE, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// `e` with `what` in its message, keeping its errno (see
/// [`crate::dev::errno_of`]): the caller decides on it.
fn ctx(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    match e.raw_os_error() {
        Some(errno) => crate::dev::dev_err(errno, format!("{what}: {e}")),
        None => io::Error::new(e.kind(), format!("{what}: {e}")),
    }
}

/// A free loop device bound to `backing`, detaching itself when its last
/// user closes it. `label` goes into its file name field. The returned
/// descriptor keeps it bound until the mount has opened it too: closing it
/// before (a failed mount) detaches the device.
fn attach_loop(backing: &File, label: &[u8]) -> io::Result<(PathBuf, File)> {
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| ctx(e, "/dev/loop-control"))?;
    // Another process may take the device we were offered between the two
    // calls: LOOP_CONFIGURE then fails with EBUSY and we ask again.
    for _ in 0..16 {
        // SAFETY: an argument-less ioctl on a descriptor we own.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(ctx(io::Error::last_os_error(), "LOOP_CTL_GET_FREE"));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| ctx(e, path.display()))?;
        // SAFETY: all-zero is a valid loop_config (plain integers and bytes).
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = backing.as_raw_fd() as u32;
        cfg.info.flags = LO_FLAGS_AUTOCLEAR;
        let l = label.len().min(63);
        cfg.info.file_name[..l].copy_from_slice(&label[..l]);
        // SAFETY: LOOP_CONFIGURE reads a loop_config we own for the call.
        if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg) } == 0 {
            return Ok((path, dev));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(ctx(e, format!("LOOP_CONFIGURE {}", path.display())));
        }
    }
    Err(io::Error::other("no free loop device"))
}

/// A one-block memfd named after a network disk, as a loop device's
/// backing.
fn memfd(name: &str) -> io::Result<File> {
    let cname = CString::new(format!("gfs2-fuse {name}").replace('\0', "?"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: memfd_create with a NUL-terminated name; we own the result.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(ctx(io::Error::last_os_error(), "memfd_create"));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(4096)?;
    Ok(f)
}

/// The block device to name as the mount's source for `token`, and the
/// loop device's descriptor to hold until the mount is made.
fn source(token: &Token<'_>) -> io::Result<(PathBuf, Option<File>)> {
    let looped = |(p, f)| (p, Some(f));
    match token {
        Token::BlockDevice(p) => Ok((p.to_path_buf(), None)),
        Token::Image(p) => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .map_err(|e| ctx(e, p.display()))?;
            attach_loop(&f, p.as_os_str().as_bytes()).map(looped)
        }
        Token::Network(name) => attach_loop(&memfd(name)?, name.as_bytes()).map(looped),
    }
}

/// Mount a `fuseblk` filesystem served through the returned `/dev/fuse`
/// descriptor at `mountpoint`, with `token` as its block device. Returns
/// the descriptor and the source the kernel shows.
pub fn mount(
    token: &Token<'_>,
    mountpoint: &Path,
    opts: &FuseOptions,
    read_only: bool,
) -> io::Result<(OwnedFd, PathBuf)> {
    let dev_fuse = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| ctx(e, "/dev/fuse"))?;
    let root_mode = std::fs::metadata(mountpoint)
        .map_err(|e| ctx(e, mountpoint.display()))?
        .mode();
    let (src, _loop_held) = source(token)?;
    // A network disk's name is what /proc/mounts should show, as on a
    // plain FUSE mount, not the loop device standing in for it.
    let shown = match token {
        Token::Network(name) => NamedSource::new(name, &src),
        _ => None,
    };
    // The kernel's fuse options; blksize must be a power of two between the
    // device's logical block size and the page size.
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={},blksize=4096,default_permissions,subtype=gfs2",
        dev_fuse.as_raw_fd(),
        root_mode,
        // SAFETY: getuid/getgid cannot fail.
        unsafe { libc::getuid() },
        unsafe { libc::getgid() },
    );
    if opts.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags: libc::c_ulong = 0;
    if read_only {
        flags |= libc::MS_RDONLY | libc::MS_NOATIME;
    }
    for (on, f) in [
        (opts.nosuid, libc::MS_NOSUID),
        (opts.nodev, libc::MS_NODEV),
        (opts.noexec, libc::MS_NOEXEC),
    ] {
        if on {
            flags |= f;
        }
    }
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    };
    let (csrc, cmnt) = match &shown {
        Some(n) => (c(Path::new(n.name))?, c(mountpoint)?),
        None => (c(&src)?, c(mountpoint)?),
    };
    let (ctype, cdata) = (
        CString::new("fuseblk").map_err(io::Error::other)?,
        CString::new(data).map_err(io::Error::other)?,
    );
    let mount = || {
        // SAFETY: NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                csrc.as_ptr(),
                cmnt.as_ptr(),
                ctype.as_ptr(),
                flags,
                cdata.as_ptr().cast(),
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let r = match &shown {
        Some(n) => n.resolving(mount),
        None => mount(),
    };
    // On failure the loop device, if any, detaches itself as `_loop_held`
    // closes.
    r.map_err(|e| {
        let what = format!(
            "mount -t fuseblk {} {}",
            src.display(),
            mountpoint.display()
        );
        ctx(e, what)
    })?;
    Ok((OwnedFd::from(dev_fuse), src))
}

/// A name for the mount's source that resolves to its loop device: the
/// kernel looks a `fuseblk` source up as a path and keeps the string as
/// given, so a network disk's name (relative: `nbd://host/export` is the
/// path `nbd:/host/export`) is laid out as directories and a symlink to the
/// loop device in a private directory, entered only for the mount call.
struct NamedSource<'a> {
    name: &'a str,
    dir: PathBuf,
}

impl<'a> NamedSource<'a> {
    /// `None` when `name` cannot be a relative path (absolute, `.`/`..`
    /// components, over-long components): the loop device is shown then.
    fn new(name: &'a str, dev: &Path) -> Option<NamedSource<'a>> {
        let parts: Vec<&str> = name.split('/').filter(|c| !c.is_empty()).collect();
        let usable = !name.starts_with('/')
            && !parts.is_empty()
            && parts
                .iter()
                .all(|c| *c != "." && *c != ".." && c.len() <= 255);
        if !usable {
            return None;
        }
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gfs2-fuse-src-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let link = parts.iter().fold(dir.clone(), |p, c| p.join(c));
        let made = link
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::os::unix::fs::symlink(dev, &link));
        let named = NamedSource { name, dir };
        match made {
            Ok(()) => Some(named),
            Err(e) => {
                tracing::debug!("{name} as a mount source: {e}");
                None
            }
        }
    }

    /// Run `mount` (the mount(2) call) with the private directory as the
    /// current one, then return to where we were.
    fn resolving(&self, mount: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let here = File::open(".")?;
        std::env::set_current_dir(&self.dir)?;
        let r = mount();
        // SAFETY: fchdir to a directory descriptor we hold.
        if unsafe { libc::fchdir(here.as_raw_fd()) } != 0 {
            tracing::warn!(
                "back from {}: {}",
                self.dir.display(),
                io::Error::last_os_error()
            );
        }
        r
    }
}

impl Drop for NamedSource<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the block device at `dev` is mounted, if anywhere.
pub fn mounted_on(dev: &Path) -> io::Result<Option<String>> {
    let rdev = std::fs::metadata(dev)
        .map_err(|e| ctx(e, dev.display()))?
        .rdev();
    Ok(crate::dev::claim::mounted_on(rdev))
}

/// Unmount `mountpoint`. A busy mount fails with `EBUSY`, or with
/// `lazy_if_busy` is detached lazily (the kernel then sends FUSE_DESTROY
/// when its last user leaves).
pub fn unmount(mountpoint: &Path, lazy_if_busy: bool) -> io::Result<()> {
    let cmnt = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::umount2(cmnt.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !lazy_if_busy || e.raw_os_error() != Some(libc::EBUSY) {
        return Err(e);
    }
    tracing::warn!(
        "{} is busy: detached, unmounted when its last user leaves",
        mountpoint.display()
    );
    // SAFETY: as above.
    if unsafe { libc::umount2(cmnt.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
