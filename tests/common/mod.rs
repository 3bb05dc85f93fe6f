//! Helpers shared by the workspace-level tests: gfs2-utils images made at
//! test time and FUSE mounts that are always unmounted.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Path of a system tool; fails loudly when it is missing.
pub fn tool(name: &str) -> PathBuf {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install it (scripts/test.sh installs gfs2-utils and fuse3)");
}

/// A file or directory removed on drop.
pub struct TempPath(pub PathBuf);
impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A fresh image made by gfs2-utils' mkfs.gfs2.
pub fn mkfs(bsize: u32, journals: u32, size_mb: u64, tag: &str) -> TempPath {
    let p = std::env::temp_dir().join(format!("gfs2t-{tag}-{}.img", std::process::id()));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size_mb << 20).unwrap();
    drop(f);
    let out = Command::new(tool("mkfs.gfs2"))
        .args(["-O", "-p", "lock_nolock", "-b", &bsize.to_string()])
        .args(["-j", &journals.to_string()])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.gfs2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    TempPath(p)
}

/// A temporary directory to mount on.
pub fn mountpoint(tag: &str) -> TempPath {
    let p = std::env::temp_dir().join(format!("gfs2m-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    TempPath(p)
}

/// Unmounts a FUSE mount on drop (`fusermount3 -u`, then lazily if busy).
pub struct MountGuard(pub PathBuf);
impl Drop for MountGuard {
    fn drop(&mut self) {
        let st = Command::new(tool("fusermount3"))
            .arg("-u")
            .arg(&self.0)
            .status();
        if !st.is_ok_and(|s| s.success()) {
            let _ = Command::new(tool("fusermount3"))
                .arg("-uz")
                .arg(&self.0)
                .status();
        }
    }
}

/// Is `p` a mount point listed in /proc/mounts?
pub fn is_mounted(p: &Path) -> bool {
    let m = std::fs::read_to_string("/proc/mounts").unwrap();
    m.lines()
        .any(|l| l.split(' ').nth(1) == Some(p.to_str().unwrap()))
}
