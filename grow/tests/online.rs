//! gfs2_grow and gfs2_jadd on a filesystem gfs2-fuse has mounted: the tools
//! find the daemon's control socket from the mount point and the daemon
//! makes the change while a writer keeps writing files through the FUSE
//! mount. The writer then writes more than the old filesystem could hold,
//! every file reads back, `gfs2-fuse umount` reports a clean journal,
//! `fsck.gfs2 -n` is clean and gfs2-utils lists the new journal. The
//! device path of the mounted filesystem is refused (it is claimed).

mod common;

use common::daemon;
use gfs2_oracle::{fsck_n, mkfs, Scratch};
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const GROW: &str = env!("CARGO_BIN_EXE_gfs2_grow");
const JADD: &str = env!("CARGO_BIN_EXE_gfs2_jadd");

fn content(i: usize) -> Vec<u8> {
    let mut v = vec![0u8; 1 << 20];
    for (k, b) in v.iter_mut().enumerate() {
        *b = (k as u64)
            .wrapping_mul(i as u64 + 7)
            .wrapping_add(k as u64 >> 12) as u8;
    }
    v
}

/// Unmounts on drop if the test fails midway.
struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new(daemon()).arg("umount").arg(&self.0).status();
    }
}

#[test]
fn grow_and_jadd_while_writing() {
    let t = Scratch::new("online").expect("scratch");
    let img = t.join("o.img");
    mkfs(&img, 100, &["-p", "lock_nolock", "-j", "1"]).expect("mkfs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .expect("open")
        .set_len(300 << 20)
        .expect("extend");
    let mnt = t.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let st = Command::new(daemon())
        .arg("mount")
        .arg(&img)
        .arg(&mnt)
        .status()
        .expect("gfs2-fuse mount");
    assert!(st.success(), "gfs2-fuse mount failed");
    let guard = Mounted(mnt.clone());

    // The claimed device is refused with the holder named.
    let o = Command::new(GROW).arg(&img).output().expect("grow");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("in use"), "{err}");

    // A writer keeps going through the mount: until the grow has answered
    // it paces itself and stays within 70 MiB of the 100 MiB filesystem
    // (writing flat out, it could fill the old size before the grow is
    // done), then writes more than the old size could hold.
    let stop = Arc::new(AtomicBool::new(false));
    let grown = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mnt, stop, grown) = (mnt.clone(), stop.clone(), grown.clone());
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) || n < 150 {
                if !grown.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    if n >= 70 {
                        continue;
                    }
                }
                let mut f = std::fs::File::create(mnt.join(format!("f{n}")))
                    .unwrap_or_else(|e| panic!("create f{n}: {e}"));
                f.write_all(&content(n))
                    .unwrap_or_else(|e| panic!("write f{n}: {e}"));
                if n & 15 == 0 {
                    f.sync_all().expect("fsync");
                }
                n += 1;
                assert!(n < 400, "writer never told to stop");
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = Command::new(GROW).arg(&mnt).output().expect("grow");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.starts_with(&format!("Mount point: {}\n", mnt.display())),
        "{out}"
    );
    assert!(out.contains("The file system will grow by 200MB."), "{out}");
    grown.store(true, Ordering::SeqCst);
    let o = Command::new(JADD)
        .args(["-J", "32"])
        .arg(&mnt)
        .output()
        .expect("jadd");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!(
            "Filesystem: {}\nOld journals: 1\nNew journals: 2\n",
            mnt.display()
        ),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stop.store(true, Ordering::SeqCst);
    let n = writer.join().expect("writer");
    for i in 0..n {
        let got = std::fs::read(mnt.join(format!("f{i}"))).expect("read back");
        assert!(got == content(i), "f{i} differs");
    }
    let st = Command::new(daemon())
        .arg("umount")
        .arg(&mnt)
        .status()
        .expect("gfs2-fuse umount");
    std::mem::forget(guard);
    assert!(st.success(), "gfs2-fuse umount: not clean");
    let f = fsck_n(&img).expect("fsck");
    assert_eq!(f.code, 0, "fsck.gfs2 -n:\n{}", f.output);
    let o = Command::new("gfs2_edit")
        .args(["-p", "jindex"])
        .arg(&img)
        .output()
        .expect("gfs2_edit");
    let j = String::from_utf8_lossy(&o.stdout);
    assert!(j.contains(" journal1\n"), "{j}");
}
