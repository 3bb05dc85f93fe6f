//! Refusing a mounted device: a repair under a live mount would be
//! overwritten by (or corrupt) the mounter's cache. Image files count when
//! mounted through a loop device; a read-only check of a gfs2-fuse node's
//! device is allowed, as gfs2-utils' `-n` allows it.

use super::*;

/// Refuse a device that is mounted here. With `live_node_ok` (a read-only
/// check), a mount by a gfs2-fuse node (`fuse.gfs2`, `fuseblk.gfs2`) is
/// let through, as gfs2-utils' `-n` reads a device whoever holds it: the
/// node writes straight to the device, so a check sees what a crash would
/// leave (a live journal reads as dirty).
pub fn check_not_mounted(path: &Path, live_node_ok: bool) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let meta = std::fs::metadata(&canon).ok();
    let rdev = meta
        .as_ref()
        .filter(|m| m.file_type().is_block_device())
        .map(|m| m.rdev());
    // An image file can be mounted through a loop device: those count too.
    let mut loops: Vec<String> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/block") {
        for ent in dir.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let backing = ent.path().join("loop/backing_file");
            if let Ok(b) = std::fs::read_to_string(&backing) {
                if Path::new(b.trim_end()) == canon {
                    loops.push(format!("/dev/{name}"));
                }
            }
        }
    }
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Ok(());
    };
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        let source = f.get(sep + 2).copied().unwrap_or("");
        let mnt = f.get(4).copied().unwrap_or("");
        let fstype = f.get(sep + 1).copied().unwrap_or("");
        if live_node_ok && (fstype == "fuse.gfs2" || fstype == "fuseblk.gfs2") {
            continue;
        }
        let src_path = Path::new(source);
        let same_path = source == path.to_string_lossy()
            || std::fs::canonicalize(src_path).is_ok_and(|c| c == canon);
        let same_dev = rdev.is_some_and(|rd| {
            let majmin = f.get(2).copied().unwrap_or("");
            let mm = format!("{}:{}", libc::major(rd), libc::minor(rd));
            majmin == mm
        });
        if same_path || same_dev {
            return Err(format!("{} is mounted on {mnt}", path.display()));
        }
        if loops.iter().any(|l| l == source) {
            return Err(format!(
                "{} is mounted on {mnt} through {source}",
                path.display()
            ));
        }
    }
    Ok(())
}
