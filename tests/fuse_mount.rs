//! The `gfs2-fuse` binary and the FUSE adapter on real FUSE mounts of images
//! made at test time by gfs2-utils' mkfs.gfs2.

mod common;

use common::*;
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gfs2-fuse")
}

#[test]
fn binary_mounts_detaches_and_unmounts() {
    let img = mkfs(4096, 2, 256, "bin");
    let mnt = mountpoint("bin");
    let out = Command::new(bin())
        .arg("mount")
        .arg(&img.0)
        .arg(&mnt.0)
        .output()
        .unwrap();
    let _guard = MountGuard(mnt.0.clone());
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        is_mounted(&mnt.0),
        "not in /proc/mounts after the daemon reported success"
    );
    // The root directory of a fresh filesystem: empty, mode from mkfs.
    let md = std::fs::metadata(&mnt.0).unwrap();
    assert!(md.is_dir());
    let names: Vec<_> = std::fs::read_dir(&mnt.0).unwrap().collect();
    assert!(names.is_empty(), "{names:?}");
    // statfs through FUSE equals gfs2-utils' statfs file view: total blocks
    // of the filesystem's resource groups, as `gfs2_edit -p statfs` prints.
    let st = nix_statvfs(&mnt.0);
    let edit = Command::new(tool("gfs2_edit"))
        .args(["-p", "statfs"])
        .arg(&img.0)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&edit.stdout);
    let total = field(&text, "sc_total");
    let free = field(&text, "sc_free");
    assert_eq!(st.0, total, "f_blocks vs sc_total\n{text}");
    assert_eq!(st.1, free, "f_bfree vs sc_free\n{text}");
}

#[test]
fn mount_fuse3_form_and_errors_before_detaching() {
    // A file that is not GFS2: the mount must fail with a clear message and
    // a non-zero exit, without leaving a mount behind.
    let bad = std::env::temp_dir().join(format!("notgfs2-{}.img", std::process::id()));
    std::fs::write(&bad, vec![0u8; 1 << 20]).unwrap();
    let bad = TempPath(bad);
    let mnt = mountpoint("bad");
    let out = Command::new(bin())
        .arg(&bad.0)
        .arg(&mnt.0)
        .args(["-o", "rw,nosuid,nodev"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a GFS2 filesystem"), "{err}");
    assert!(!is_mounted(&mnt.0));
    // Unknown options are refused.
    let img = mkfs(1024, 1, 64, "opts");
    let out = Command::new(bin())
        .arg(&img.0)
        .arg(&mnt.0)
        .args(["-o", "bogus_option"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!is_mounted(&mnt.0));
    // The mount.fuse3 form with kernel-style options works.
    let out = Command::new(bin())
        .arg(&img.0)
        .arg(&mnt.0)
        .args(["-o", "rw,dev,suid,lockproto=lock_nolock,hostdata=jid=0,acl"])
        .output()
        .unwrap();
    let _guard = MountGuard(mnt.0.clone());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mnt.0));
    // A read-write mount: files can be created and read back.
    std::fs::write(mnt.0.join("x"), b"written").unwrap();
    assert_eq!(std::fs::read(mnt.0.join("x")).unwrap(), b"written");
}

fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name)).then(|| w.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{name} not in gfs2_edit output:\n{text}"))
}

fn nix_statvfs(p: &std::path::Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    (s.f_blocks, s.f_bfree)
}

#[test]
fn sigterm_unmounts_cleanly() {
    // A foreground daemon killed politely (SIGTERM, as systemd or `kill`
    // does) must unmount, flush and exit 0, leaving no stale mount behind
    // and a filesystem gfs2-utils finds clean.
    let img = mkfs(4096, 1, 128, "sigterm");
    let mnt = mountpoint("sigterm");
    let mut child = Command::new(bin())
        .arg("mount")
        .arg("-f")
        .arg(&img.0)
        .arg(&mnt.0)
        .spawn()
        .unwrap();
    let _guard = MountGuard(mnt.0.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !is_mounted(&mnt.0) {
        assert!(std::time::Instant::now() < deadline, "never mounted");
        assert!(child.try_wait().unwrap().is_none(), "daemon exited early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(std::fs::metadata(&mnt.0).unwrap().is_dir());
    // Unflushed changes must survive the signal too.
    std::fs::create_dir(mnt.0.join("made_before_sigterm")).unwrap();
    std::fs::write(mnt.0.join("made_before_sigterm/f"), b"data").unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "daemon after SIGTERM: {status:?}");
    assert!(!is_mounted(&mnt.0), "still mounted after SIGTERM");
    let fsck = Command::new(tool("fsck.gfs2"))
        .arg("-n")
        .arg(&img.0)
        .output()
        .unwrap();
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// O_DIRECT: aligned writes and reads through a direct handle work, a
/// buffered reader sees them at once, and they are on disk after unmount
/// (fsck clean, the bytes read back by a fresh mount).
#[test]
fn o_direct_reads_and_writes() {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let img = mkfs(4096, 1, 64, "odirect");
    // An aligned buffer: O_DIRECT wants memory aligned to the block size.
    let mut raw = vec![0u8; 3 * 4096 + 4096];
    let off = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[off..off + 3 * 4096];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    let want = buf.to_vec();
    with_mount(&img.0, "", "odirect", |m| {
        let p = m.join("direct");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p)
            .expect("open O_DIRECT");
        f.write_all_at(buf, 4096).expect("direct write");
        let mut back = vec![0u8; 4096 * 4 + 4096];
        let o = back.as_ptr().align_offset(4096);
        let rb = &mut back[o..o + 4 * 4096];
        f.read_exact_at(rb, 0).expect("direct read");
        assert!(rb[..4096].iter().all(|b| *b == 0), "hole before the data");
        assert_eq!(&rb[4096..], &want[..], "direct read back");
        let buffered = std::fs::read(&p).expect("buffered read");
        assert_eq!(&buffered[4096..], &want[..], "buffered reader");
    });
    fsck_clean(&img.0, "after O_DIRECT writes");
    with_mount(&img.0, "", "odirect2", |m| {
        let got = std::fs::read(m.join("direct")).expect("read after remount");
        assert_eq!(&got[4096..], &want[..], "after remount");
    });
}
