//! Finding filesystems by superblock: `gfs2-fuse scan` lists GFS2 volumes
//! among named targets and local block devices (read afresh, no cache), and
//! `mount` accepts `UUID=` and `LOCKTABLE=` in place of a device.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

fn make(path: &Path, size_mb: u64, args: &[&str]) {
    let f = std::fs::File::create(path).expect("image");
    f.set_len(size_mb << 20).expect("size");
    drop(f);
    let out = Command::new(tool("mkfs.gfs2"))
        .args(["-O", "-q"])
        .args(args)
        .arg(path)
        .output()
        .expect("mkfs.gfs2");
    assert!(
        out.status.success(),
        "mkfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scan(args: &[&str]) -> (i32, String) {
    let out = Command::new(gfs2_fuse())
        .arg("scan")
        .args(args)
        .output()
        .expect("scan");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Detaches a loop device on drop.
struct Loop(String);
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn scan_lists_volumes_and_mount_finds_them_by_uuid_and_table() {
    let dir = std::env::temp_dir().join(format!("gfs2-scan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let a = dir.join("a.img");
    let b = dir.join("b.img");
    let c = dir.join("c.img");
    let uuid = "4f3a2b1c-0d9e-4a8b-9c7d-6e5f4a3b2c1d";
    make(
        &a,
        300,
        &["-p", "lock_dlm", "-t", "clus:scanfs", "-j", "3", "-U", uuid],
    );
    make(&b, 200, &["-p", "lock_nolock", "-b", "1024", "-j", "1"]);
    std::fs::write(&c, vec![0u8; 1 << 20]).expect("non-gfs2 file");
    let (code, text) = scan(&[
        "--no-local",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        c.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "exactly the two GFS2 images:\n{text}");
    let ra: Vec<&str> = rows[0].split_whitespace().collect();
    assert_eq!(ra[0], a.to_str().unwrap());
    assert_eq!(ra[1], uuid);
    assert_eq!(
        &ra[2..],
        [
            "lock_dlm",
            "clus:scanfs",
            "4096",
            &(300u64 << 20).to_string(),
            "3"
        ]
    );
    let rb: Vec<&str> = rows[1].split_whitespace().collect();
    assert_eq!(rb[0], b.to_str().unwrap());
    // A nolock filesystem has an empty table: 7 columns become 6.
    assert_eq!(
        &rb[2..],
        ["lock_nolock", "1024", &(200u64 << 20).to_string(), "1"]
    );
    let (code, _) = scan(&["--no-local", c.to_str().unwrap()]);
    assert_eq!(code, 1, "no filesystem found is exit 1");

    // On a local block device (a loop device here), UUID= and LOCKTABLE= find it.
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&a)
        .output()
        .expect("losetup (util-linux) is needed");
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lo = Loop(String::from_utf8_lossy(&out.stdout).trim().to_string());
    let (_, text) = scan(&[]);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&lo.0) && l.contains(uuid)),
        "local scan misses {}:\n{text}",
        lo.0
    );
    for spec in [format!("UUID={uuid}"), "LOCKTABLE=clus:scanfs".to_string()] {
        let mnt = mountpoint("scan");
        let out = Command::new(gfs2_fuse())
            .args(["mount", &spec])
            .arg(&mnt.0)
            .args(["-o", "lockproto=lock_nolock"])
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "{spec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let g = MountGuard(mnt.0.clone());
        std::fs::write(mnt.0.join("hello"), b"found by superblock").expect("write");
        drop(g);
        wait_daemon_gone(&mnt.0);
    }
    let out = Command::new(gfs2_fuse())
        .args([
            "mount",
            "UUID=00000000-0000-0000-0000-000000000000",
            "/nonexistent",
        ])
        .output()
        .expect("mount");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no local block device"));
    drop(lo);
    fsck_clean(&a, "after mounts by UUID and table");
    let _ = std::fs::remove_dir_all(&dir);
}
