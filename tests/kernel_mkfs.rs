//! Images made by our mkfs.gfs2 are real GFS2 to the Linux kernel: for a
//! representative set of options the kernel (in a VM) mounts each one, writes
//! files of several sizes, a directory big enough to become an exhash
//! directory, xattrs and symlinks, reads them back after a remount, and
//! unmounts cleanly; afterwards gfs2-utils' `fsck.gfs2 -n` finds every image
//! clean.

mod common;

use common::kvm::run_vm;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Our mkfs binary. `cargo test --workspace` builds it next to this test's
/// executable; when this test is run on its own it is built here.
fn our_mkfs() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join("mkfs-gfs2");
    if !bin.exists() {
        let profile = if dir.ends_with("release") {
            vec!["--release"]
        } else {
            vec![]
        };
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "gfs2-mkfs"])
            .args(profile)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build -p gfs2-mkfs");
        assert!(st.success(), "building mkfs-gfs2 failed");
    }
    assert!(bin.exists(), "{} missing after build", bin.display());
    bin
}

const WRITE: &str = r#"
mount -t gfs2 -o lockproto=lock_nolock DEV /mnt || echo MOUNTFAIL-TAG
cd /mnt
mkdir -p dir/sub many
echo hello > dir/hello
dd if=/dev/urandom of=dir/r64k bs=1024 count=64 2>/dev/null
dd if=/dev/urandom of=dir/r3m bs=4096 count=768 2>/dev/null
dd if=/dev/urandom of=dir/sparse bs=4096 count=2 seek=5000 2>/dev/null
for i in $(seq 1 400); do echo $i > many/file_with_a_long_name_$i; done
ln -s hello dir/link
setfattr -n user.k -v value dir/hello
sync
cd /
umount /mnt || echo UMOUNTFAIL-TAG
mount -t gfs2 -o lockproto=lock_nolock DEV /mnt || echo MOUNTFAIL-TAG
echo BEGIN-TAG
(cd /mnt && md5sum dir/hello dir/r64k dir/r3m dir/sparse && ls many | wc -l && \
  readlink dir/link && getfattr --only-values -n user.k dir/hello && echo)
echo END-TAG
umount /mnt || echo UMOUNTFAIL-TAG
"#;

#[test]
fn kernel_mounts_writes_and_reads_our_images() {
    let mkfs = our_mkfs();
    // (tag, size MB, options): every block size, 1..8 journals, both lock
    // protocols, both formats, small and larger journals and rgrps.
    let cases: [(&str, u64, &[&str]); 5] = [
        (
            "b512",
            300,
            &["-b", "512", "-j", "1", "-J", "8", "-r", "32"],
        ),
        (
            "b1024",
            600,
            &["-b", "1024", "-j", "3", "-p", "lock_dlm", "-t", "c1:fs1"],
        ),
        (
            "b2048",
            1200,
            &["-b", "2048", "-j", "8", "-J", "8", "-r", "64"],
        ),
        (
            "b4096",
            2048,
            &["-b", "4096", "-j", "2", "-J", "64", "-o", "format=1801"],
        ),
        ("b4096big", 6144, &["-j", "1", "-r", "2048"]),
    ];
    let mut imgs = Vec::new();
    let mut w = String::new();
    for (i, (tag, mb, opts)) in cases.iter().enumerate() {
        let path = std::env::temp_dir().join(format!("kmkfs-{}-{tag}.img", std::process::id()));
        let f = std::fs::File::create(&path).expect("image");
        f.set_len(mb << 20).expect("size image");
        drop(f);
        let img = TempPath(path);
        let mut args = vec!["-O", "-q"];
        if !opts.contains(&"-p") {
            args.extend(["-p", "lock_nolock"]);
        }
        args.extend_from_slice(opts);
        let out = Command::new(&mkfs)
            .args(&args)
            .arg(&img.0)
            .output()
            .expect("run our mkfs");
        assert!(
            out.status.success(),
            "{tag}: our mkfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = format!("/dev/vd{}", (b'a' + i as u8) as char);
        w += &WRITE.replace("DEV", &dev).replace("TAG", tag);
        imgs.push(img);
    }
    let disks: Vec<&Path> = imgs.iter().map(|i| i.0.as_path()).collect();
    let console = run_vm(&w, &disks);
    assert!(
        console.contains("KVM-WORKLOAD-DONE"),
        "workload incomplete:\n{console}"
    );
    assert!(
        !console.contains("withdraw"),
        "the kernel withdrew from one of our images:\n{console}"
    );
    for (tag, _, _) in &cases {
        assert!(
            !console.contains(&format!("MOUNTFAIL-{tag}")),
            "{tag}: kernel refused our image:\n{console}"
        );
        assert!(
            !console.contains(&format!("UMOUNTFAIL-{tag}")),
            "{tag}: kernel unmount failed:\n{console}"
        );
        let begin = format!("BEGIN-{tag}");
        let end = format!("END-{tag}");
        let body: Vec<&str> = console
            .lines()
            .skip_while(|l| !l.contains(&begin))
            .skip(1)
            .take_while(|l| !l.contains(&end))
            .collect();
        assert!(body.len() >= 7, "{tag}: short readback:\n{console}");
        let sums: Vec<&str> = body.iter().take(4).copied().collect();
        for s in &sums {
            assert_eq!(s.split_whitespace().count(), 2, "{tag}: md5sum line {s:?}");
        }
        assert_eq!(
            sums[0].split_whitespace().next(),
            Some("b1946ac92492d2347c6235b4d2611184"),
            "{tag}: content of dir/hello"
        );
        assert_eq!(body[4].trim(), "400", "{tag}: entries in many/");
        assert_eq!(body[5].trim(), "hello", "{tag}: symlink target");
        assert_eq!(body[6].trim(), "value", "{tag}: xattr value");
    }
    for ((tag, _, _), img) in cases.iter().zip(&imgs) {
        let out = Command::new(tool("fsck.gfs2"))
            .arg("-n")
            .arg(&img.0)
            .output()
            .expect("fsck.gfs2");
        assert!(
            out.status.success(),
            "{tag}: fsck.gfs2 -n after the kernel wrote to our image:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
