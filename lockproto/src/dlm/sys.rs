//! Finding the running DLM: its configuration in configfs (written by
//! dlm_controld from corosync's), the control device and a lockspace's
//! device.
//!
//! The devices are misc character devices (major 10) named `dlm-control` and
//! `dlm_<lockspace>`. Where they appear under `/dev` depends on the device
//! manager (udev's dlm rule and busybox mdev rules put them in `/dev/misc/`,
//! a bare devtmpfs at `/dev/`), and a lockspace's node may appear a moment
//! after the lockspace was created; sysfs knows the numbers at once, so a
//! missing node is made privately from `/sys/class/misc/<name>/dev`.

use crate::LockError;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const CONFIG: &str = "/sys/kernel/config/dlm/cluster";

fn manager(why: String) -> LockError {
    LockError::Manager(why)
}

/// What configfs says of the cluster this node is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// corosync's `cluster_name`.
    pub name: String,
    /// This node's id.
    pub node_id: u32,
}

/// The cluster as configured in configfs: a clear error when the DLM is not
/// loaded or dlm_controld has not configured it.
pub fn cluster() -> Result<Cluster, LockError> {
    cluster_at(Path::new(CONFIG))
}

fn cluster_at(root: &Path) -> Result<Cluster, LockError> {
    if !root.exists() {
        return Err(manager(format!(
            "no DLM cluster configured ({} is missing): load the dlm module and start \
             corosync and dlm_controld, or mount with lockproto=lock_nolock on a single node",
            root.display()
        )));
    }
    let name = std::fs::read_to_string(root.join("cluster_name"))
        .map_err(|e| manager(format!("{}/cluster_name: {e}", root.display())))?
        .trim()
        .to_string();
    let comms = root.join("comms");
    let entries =
        std::fs::read_dir(&comms).map_err(|e| manager(format!("{}: {e}", comms.display())))?;
    for e in entries.flatten() {
        let local = std::fs::read_to_string(e.path().join("local")).unwrap_or_default();
        if local.trim() == "1" {
            let id = e
                .file_name()
                .to_string_lossy()
                .parse::<u32>()
                .map_err(|_| manager(format!("{}: not a node id", e.path().display())))?;
            return Ok(Cluster { name, node_id: id });
        }
    }
    Err(manager(format!(
        "the DLM knows no local node in {} (is dlm_controld running?)",
        comms.display()
    )))
}

/// Open misc device `name` read-write.
pub fn open_misc(name: &str) -> Result<File, LockError> {
    let mut tried = Vec::new();
    for dir in ["/dev/misc", "/dev"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return open_rw(&p);
        }
        tried.push(p);
    }
    // No node (yet): make one from the numbers sysfs gives.
    let sys = Path::new("/sys/class/misc").join(name).join("dev");
    let numbers = std::fs::read_to_string(&sys).map_err(|e| {
        manager(format!(
            "no device {name} (not in /dev/misc or /dev, {}: {e}): is the dlm module loaded?",
            sys.display()
        ))
    })?;
    let (maj, min) = parse_dev(&numbers)
        .ok_or_else(|| manager(format!("{}: cannot parse {numbers:?}", sys.display())))?;
    let dir = private_dir();
    std::fs::create_dir_all(&dir).map_err(|e| manager(format!("{}: {e}", dir.display())))?;
    let node = dir.join(name);
    let _ = std::fs::remove_file(&node);
    let c = std::ffi::CString::new(node.as_os_str().as_encoded_bytes())
        .map_err(|_| manager("device path with a NUL".into()))?;
    // SAFETY: mknod of a character device at a path we own.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(maj, min)) };
    if r != 0 {
        return Err(manager(format!(
            "making device node {} ({maj}:{min}): {}",
            node.display(),
            std::io::Error::last_os_error()
        )));
    }
    let f = open_rw(&node);
    let _ = std::fs::remove_file(&node);
    f
}

/// Whether this node has a lockspace device `name` (a lockspace created
/// from userspace: a kernel mount's lockspace has none).
pub fn misc_exists(name: &str) -> bool {
    Path::new("/sys/class/misc").join(name).exists()
}

/// The minor number of misc device `name`.
pub fn misc_minor(name: &str) -> Result<u32, LockError> {
    let sys = Path::new("/sys/class/misc").join(name).join("dev");
    let s =
        std::fs::read_to_string(&sys).map_err(|e| manager(format!("{}: {e}", sys.display())))?;
    parse_dev(&s)
        .map(|(_, m)| m)
        .ok_or_else(|| manager(format!("{}: cannot parse {s:?}", sys.display())))
}

/// Where a node records the journal its lockspace gave it, for a daemon
/// restarted after a crash (the slot cannot change while the lockspace
/// stays, and no new recovery tells it again).
pub fn jid_record(fsname: &str) -> PathBuf {
    PathBuf::from("/run/gfs2-fuse/dlm").join(format!("{fsname}.jid"))
}

fn private_dir() -> PathBuf {
    PathBuf::from("/run/gfs2-fuse/dev")
}

fn open_rw(p: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| manager(format!("{}: {e}", p.display())))
}

/// `MAJ:MIN` as sysfs writes it.
fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configfs_is_read_and_its_absence_explained() {
        let dir = std::env::temp_dir().join(format!("dlm-cfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let e = cluster_at(&dir).unwrap_err().to_string();
        assert!(e.contains("no DLM cluster configured"), "{e}");
        std::fs::create_dir_all(dir.join("comms/1")).unwrap();
        std::fs::create_dir_all(dir.join("comms/2")).unwrap();
        std::fs::write(dir.join("cluster_name"), "alpha\n").unwrap();
        std::fs::write(dir.join("comms/1/local"), "0\n").unwrap();
        std::fs::write(dir.join("comms/2/local"), "1\n").unwrap();
        assert_eq!(
            cluster_at(&dir).unwrap(),
            Cluster {
                name: "alpha".into(),
                node_id: 2
            }
        );
        std::fs::write(dir.join("comms/2/local"), "0\n").unwrap();
        assert!(cluster_at(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(parse_dev("10:58\n"), Some((10, 58)));
        assert_eq!(parse_dev("10"), None);
    }
}
