//! One owner per local device: the claim a `lock_nolock` node, mkfs and
//! fsck take on an image file or block device.
//!
//! The kernel's GFS2 cannot mount one block device twice (one superblock per
//! device), and gfs2-utils' mkfs and fsck open block devices `O_EXCL`. A
//! FUSE daemon opens its device like any file, so without a claim of its own
//! a second `lock_nolock` mount, a mkfs or a repairing fsck would write the
//! disk under a running node. The claim is an exclusive `flock` on a
//! descriptor of its own:
//! - it conflicts across processes whatever path names the file (a symlink,
//!   `/dev/disk/by-uuid/...`), and the kernel drops it when the holder dies,
//!   so a crashed node never leaves a stale claim behind;
//! - `/proc/locks` names the holder's pid, so a refusal says who holds it.
//!
//! Tools (mkfs, fsck without `-n`) also open a block device `O_EXCL`, as
//! gfs2-utils does, so a device the kernel has mounted (the kernel's GFS2,
//! or our own `fuseblk` mount, which the kernel claims the same way) is
//! refused too. The mounting daemon cannot: its own `fuseblk` mount must be
//! able to claim the device after it.
//!
//! Cluster lock protocols share the device by design and coordinate through
//! their locks: they never take this claim. Network disks have no such lock
//! in their protocol (NBD has none; see [`super::BlockDevice::claim`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Who claims a device, which decides how much is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimant {
    /// A mounting `lock_nolock` node: the `flock` only.
    Mount,
    /// mkfs or a repairing fsck: also refuse a block device that anything
    /// holds `O_EXCL` (a kernel mount, a `fuseblk` mount, gfs2-utils).
    Tool,
}

/// An exclusive claim on a local device, held until dropped.
#[derive(Debug)]
pub struct Claim {
    _file: File,
}

impl Claim {
    /// Claim `path` for this process, or fail with `EBUSY` and a message
    /// naming the holder.
    pub fn take(path: &Path, who: Claimant) -> io::Result<Claim> {
        let meta = std::fs::metadata(path)?;
        let is_blk = meta.file_type().is_block_device();
        let mut opts = OpenOptions::new();
        opts.read(true);
        if is_blk && who == Claimant::Tool {
            opts.custom_flags(libc::O_EXCL);
        }
        let file = match opts.open(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(super::dev_err(
                    libc::EBUSY,
                    format!(
                        "{} is in use: {}",
                        path.display(),
                        match (mounted_on(meta.rdev()), holder_of(&meta)) {
                            (Some(m), Some(h)) => format!("mounted on {m} by {h}"),
                            (Some(m), None) => format!("mounted on {m}"),
                            (None, Some(h)) => format!("held by {h}"),
                            (None, None) => "held open exclusively by another program".into(),
                        }
                    ),
                ));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: flock: {e}", path.display()),
                ));
            }
            let who = holder_of(&meta).unwrap_or_else(|| "another process".into());
            return Err(super::dev_err(
                libc::EBUSY,
                format!(
                    "{} is in use by {who}: a lock_nolock node owns its device alone; \
                     unmount it first (or mount every node with a cluster lock protocol)",
                    path.display()
                ),
            ));
        }
        Ok(Claim { _file: file })
    }
}

/// The process holding a `flock` on the file `meta` describes, as
/// "pid N (command line)", from `/proc/locks`.
fn holder_of(meta: &std::fs::Metadata) -> Option<String> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = flock_holder(&locks, meta.dev(), meta.ino())?;
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .map(|c| {
            c.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|c| !c.is_empty());
    Some(match cmd {
        Some(c) => format!("pid {pid} ({c})"),
        None => format!("pid {pid}"),
    })
}

/// Where the block device `rdev` is mounted, if anywhere.
pub fn mounted_on(rdev: u64) -> Option<String> {
    let want = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    super::mountinfo::mounts()
        .into_iter()
        .find(|m| m.dev == want)
        .map(|m| m.point)
}

/// The pid of the granted `FLOCK` on inode `ino` of device `dev` in the
/// text of `/proc/locks` (`N: FLOCK ADVISORY WRITE PID MAJ:MIN:INO 0 EOF`,
/// major and minor in hex; waiters are marked `->` and skipped).
fn flock_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let want = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&want.as_str()))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines() {
        let dev = libc::makedev(0xfe, 1);
        let text = "1: POSIX  ADVISORY  WRITE 77 fe:01:42 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 1234 fe:01:42 0 EOF\n\
                    2: -> FLOCK  ADVISORY  WRITE 99 fe:01:42 0 EOF\n";
        assert_eq!(flock_holder(text, dev, 42), Some(1234));
        assert_eq!(flock_holder(text, dev, 43), None);
        assert_eq!(flock_holder("garbage\n\n3: FLOCK", dev, 42), None);
    }

    #[test]
    fn second_claim_names_the_first() {
        let p = std::env::temp_dir().join(format!("gfs2-claim-{}", std::process::id()));
        std::fs::write(&p, b"x").unwrap();
        let first = Claim::take(&p, Claimant::Mount).unwrap();
        let e = Claim::take(&p, Claimant::Tool).unwrap_err();
        assert_eq!(super::super::errno_of(&e), Some(libc::EBUSY));
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        let again = Claim::take(&p, Claimant::Mount).unwrap();
        drop(again);
        let _ = std::fs::remove_file(&p);
    }
}
