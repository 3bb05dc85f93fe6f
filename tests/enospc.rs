//! Running out of space and of inodes in the middle of workloads: every
//! failing call reports ENOSPC, nothing else breaks, space freed is usable
//! again at once, and gfs2-utils' `fsck.gfs2 -n` finds the image consistent.

mod common;

use common::*;
use std::io::Write;
use std::process::Command;

fn is_enospc(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
}

#[test]
fn enospc_is_clean_and_recoverable() {
    let img = mkfs(4096, 1, 80, "enospc");
    let mnt = mountpoint("enospc");
    let out = Command::new(gfs2_fuse())
        .arg("mount")
        .arg(&img.0)
        .arg(&mnt.0)
        .output()
        .expect("mount");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = MountGuard(mnt.0.clone());
    let m = &mnt.0;
    // Data: write until the device is full.
    let mut f = std::fs::File::create(m.join("fill")).expect("create");
    let chunk = vec![0xA5u8; 1 << 20];
    let mut written = 0u64;
    let err = loop {
        match f.write_all(&chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
    };
    assert!(is_enospc(&err), "filling the disk ended with {err}");
    assert!(written > 40 << 20, "only {written} bytes fit");
    drop(f);
    // Inodes: create files until no block is left for a dinode.
    let mut made = 0;
    let err = loop {
        match std::fs::write(m.join(format!("f{made}")), b"x") {
            Ok(()) => made += 1,
            Err(e) => break e,
        }
        assert!(made < 100_000, "never ran out of inodes");
    };
    assert!(is_enospc(&err), "creating files ended with {err}");
    let err = std::fs::create_dir(m.join("one_more_dir")).expect_err("mkdir on a full disk");
    assert!(is_enospc(&err), "mkdir on a full disk: {err}");
    // What exists is intact; freeing space makes it usable at once.
    assert_eq!(std::fs::read(m.join("f0")).expect("read"), b"x");
    std::fs::remove_file(m.join("fill")).expect("unlink");
    std::fs::write(m.join("after"), vec![7u8; 10 << 20]).expect("write after freeing");
    for i in 0..made {
        std::fs::remove_file(m.join(format!("f{i}"))).expect("unlink");
    }
    drop(g);
    wait_daemon_gone(m);
    let out = Command::new(tool("fsck.gfs2"))
        .arg("-n")
        .arg(&img.0)
        .output()
        .expect("fsck");
    assert!(
        out.status.success(),
        "fsck.gfs2 -n after ENOSPC:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
