//! The write path through a real FUSE mount, checked by the oracles:
//! a workload of every operation (create, mkdir, mknod, symlink, link,
//! unlink, rmdir, rename across directories and over targets, write at all
//! metadata heights, sparse writes, truncate up and down, chmod, chown,
//! utimes) on images of several block sizes; after unmount gfs2-utils'
//! `fsck.gfs2 -n` finds them clean, our own remount shows the same tree,
//! the Linux kernel mounts them and its manifest equals ours, then the
//! kernel writes more and our mount reads its changes back.

mod common;

use common::kvm::{host_manifest, run_vm, section};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workload, for bash on the host and busybox sh in the VM. `N` is the
/// number of entries in the big directory.
const WORKLOAD: &str = r#"
set -e
mkdir -p a/b/c many gone/deeper
echo hello > a/hello
i=0; s=x; while [ $i -lt 11 ]; do s=$s$s; i=$((i+1)); done
printf '%s' "$s" > a/b/two_k
dd if=/dev/urandom of=a/b/c/r1m bs=4096 count=256 2>/dev/null
dd if=/dev/urandom of=a/sparse bs=4096 count=2 seek=3000 2>/dev/null
dd if=/dev/urandom of=a/grow bs=1000 count=5 2>/dev/null
dd if=/dev/urandom of=a/grow bs=1000 count=3 seek=20 conv=notrunc 2>/dev/null
for i in $(seq 1 N); do echo $i > many/a_fairly_long_entry_name_$i; done
for i in $(seq 1 3 N); do rm many/a_fairly_long_entry_name_$i; done
ln a/hello a/hardlink
ln -s hello a/symlink
ln -s $(printf 'p%.0s' $(seq 1 150))/target a/longlink
mkfifo a/fifo
mknod a/chr c 1 3
mknod a/blk b 8 17
mv a/b/c a/moved
mv a/hello a/b/renamed
echo replaced > a/victim; echo winner > a/winner; mv a/winner a/victim
rmdir gone/deeper; rmdir gone
truncate -s 100000 a/b/two_k
dd if=/dev/urandom of=a/shrink bs=4096 count=300 2>/dev/null
truncate -s 5000 a/shrink
truncate -s 0 a/moved/r1m
echo again >> a/moved/r1m
chmod 640 a/hardlink
chmod 4755 a/b/two_k
chown 1000:100 a/b/two_k
touch -t 200101011200 a/b/renamed
mkdir -p deep/1/2/3/4/5 && echo bottom > deep/1/2/3/4/5/file
mv deep/1/2 a/moved/
setfattr -n user.small -v hello a/b/renamed
setfattr -n user.big -v 0x$(printf 'cd%.0s' $(seq 1 3000)) a/hardlink
for i in $(seq 1 50); do setfattr -n user.many_$i -v value_$i a/grow; done
setfattr -x user.many_7 a/grow
setfattr -n trusted.t1 -v tv a/grow
setfattr -n security.s1 -v sv a/moved
fallocate -l 100000 a/falloc
fallocate -n -o 100000 -l 50000 a/falloc
fallocate -p -o 4096 -l 8192 a/shrink
mkdir src && tar -xf TARBALL -C src
rm -r src/ondisk src/fsck/tests
"#;

/// More changes, made by the kernel on top of ours.
const KERNEL_MORE: &str = r#"
echo from-kernel > a/kernel_file
mkdir a/kernel_dir
for i in $(seq 1 200); do echo k$i > a/kernel_dir/k$i; done
rm -f many/a_fairly_long_entry_name_2 a/symlink
mv a/moved a/moved_by_kernel
dd if=/dev/urandom of=a/kernel_big bs=4096 count=100 2>/dev/null
"#;

/// The workload with `N` entries in the big directory; it also unpacks a
/// real source tree (this repository's) and removes part of it.
fn workload(n: u32) -> String {
    WORKLOAD
        .replace("TARBALL", &source_tarball().display().to_string())
        .replace("N", &n.to_string())
}

/// A tarball of this repository's sources, made once per test run.
fn source_tarball() -> PathBuf {
    static TAR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TAR.get_or_init(|| {
        let t = std::env::temp_dir().join(format!("gfs2t-src-{}.tar", std::process::id()));
        let st = Command::new("tar")
            .arg("-cf")
            .arg(&t)
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(["src", "ondisk", "fsck", "mkfs", "lockproto", "Cargo.toml"])
            .status()
            .expect("tar");
        assert!(st.success(), "tar of the sources failed");
        t
    })
    .clone()
}

fn run_sh(dir: &Path, script: &str) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "workload failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unmount and wait until the daemon has finished (journal closed).
fn unmount(g: MountGuard, mnt: &Path) {
    drop(g);
    for _ in 0..200 {
        if !is_mounted(mnt) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    wait_daemon_gone(mnt);
}

#[test]
fn workload_is_fsck_clean_and_kernel_compatible() {
    let cases = [
        (512u32, 600u32, "w512"),
        (1024, 1500, "w1024"),
        (4096, 3000, "w4096"),
    ];
    let mut imgs = Vec::new();
    let mut ours_before = Vec::new();
    for (bs, n, tag) in cases {
        let img = mkfs(bs, 2, 600, tag);
        let (mnt, g) = mount_ours(&img.0, "allow_other", tag);
        run_sh(&mnt.0, &workload(n));
        let m1 = host_manifest(&mnt.0);
        unmount(g, &mnt.0);
        fsck_clean(&img.0, tag);
        // Our own remount (recovery finds a clean journal) sees the same.
        let (mnt, g) = mount_ours(&img.0, "allow_other", tag);
        let m2 = host_manifest(&mnt.0);
        unmount(g, &mnt.0);
        compare_manifests(&m1, &m2, &format!("{tag}: before and after remount"));
        ours_before.push(m1);
        imgs.push(img);
    }
    // The kernel reads what we wrote, then writes on top of it.
    let mut w = String::new();
    for (i, (_, _, tag)) in cases.iter().enumerate() {
        let dev = format!("/dev/vd{}", (b'a' + i as u8) as char);
        w += &format!(
            "mount -t gfs2 -o lockproto=lock_nolock,noatime {dev} /mnt || echo MOUNTFAIL\n\
             echo BEGIN-{tag}-1\n(cd /mnt && . /manifest.sh)\necho END-{tag}-1\n\
             (cd /mnt && {KERNEL_MORE}) || echo KWRITEFAIL\n\
             echo BEGIN-{tag}-2\n(cd /mnt && . /manifest.sh)\necho END-{tag}-2\n\
             umount /mnt || echo UMOUNTFAIL\n"
        );
    }
    let disks: Vec<&Path> = imgs.iter().map(|i| i.0.as_path()).collect();
    let console = run_vm(&w, &disks);
    for bad in ["MOUNTFAIL", "KWRITEFAIL", "UMOUNTFAIL", "withdraw"] {
        assert!(!console.contains(bad), "kernel: {bad}:\n{console}");
    }
    assert!(
        console.contains("KVM-WORKLOAD-DONE"),
        "workload incomplete:\n{console}"
    );
    for (((_, _, tag), img), ours) in cases.iter().zip(&imgs).zip(&ours_before) {
        let k1 = section(&console, &format!("{tag}-1"));
        compare_manifests(
            &without_rdev(&k1),
            &without_rdev(ours),
            &format!("{tag}: kernel's view of our image"),
        );
        let k2 = section(&console, &format!("{tag}-2"));
        fsck_clean(&img.0, &format!("{tag} after the kernel wrote"));
        let (mnt, g) = mount_ours(&img.0, "allow_other", tag);
        let m3 = host_manifest(&mnt.0);
        // And we keep writing on the kernel's changes.
        run_sh(
            &mnt.0,
            "echo ours-again > a/after_kernel && rm -r a/kernel_dir && mkdir a/kernel_dir",
        );
        unmount(g, &mnt.0);
        compare_manifests(
            &without_rdev(&k2),
            &without_rdev(&m3),
            &format!("{tag}: our view of the kernel's changes"),
        );
        fsck_clean(
            &img.0,
            &format!("{tag} after we wrote on the kernel's changes"),
        );
    }
}

/// A directory grown to the maximum hash-table depth by names whose hashes
/// share their top 17 bits: our mount chains leaves as the kernel does, and
/// gfs2-utils and the kernel agree with the result.
#[test]
fn colliding_names_chain_leaves_at_max_depth() {
    let names = gfs2_oracle::colliding_names(40, 17, "chained_leaf_entry", 200);
    assert_eq!(names.len(), 40);
    let img = mkfs(512, 1, 300, "chain");
    let (mnt, g) = mount_ours(&img.0, "", "chain");
    let dir = mnt.0.join("chain");
    std::fs::create_dir(&dir).expect("mkdir");
    for (i, n) in names.iter().enumerate() {
        std::fs::write(dir.join(n), format!("{i}\n")).expect("create colliding name");
    }
    for n in &names[..5] {
        std::fs::remove_file(dir.join(n)).expect("unlink");
    }
    let listed = std::fs::read_dir(&dir).expect("readdir").count();
    assert_eq!(listed, 35);
    unmount(g, &mnt.0);
    fsck_clean(&img.0, "chained leaves");
    let console = run_vm(
        "mount -t gfs2 -o lockproto=lock_nolock /dev/vda /mnt || echo MOUNTFAIL\n\
         echo COUNT $(ls /mnt/chain | wc -l)\n\
         echo SUM $(cat /mnt/chain/* | sort -n | tr '\\n' ' ')\numount /mnt\n",
        &[img.0.as_path()],
    );
    assert!(!console.contains("MOUNTFAIL"), "kernel mount:\n{console}");
    assert!(console.contains("COUNT 35"), "kernel listing:\n{console}");
    let want: Vec<String> = (5..40).map(|i| i.to_string()).collect();
    assert!(
        console
            .lines()
            .any(|l| l.trim() == format!("SUM {}", want.join(" "))),
        "kernel contents:\n{console}"
    );
}

/// A random sequence of namespace and data operations (seeded; failures
/// such as renaming a missing file are part of the sequence), then
/// unmount: fsck clean, our remount and the kernel see the same tree.
#[test]
fn random_operations_agree_with_the_kernel() {
    let mut rng = Rng(0x00c0_ffee_d00d);
    let names = ["a", "b", "c", "d/e", "d/f", "d/g/h", "i", "d/g/j"];
    let mut script = String::from("mkdir -p d/g\n");
    for step in 0..600 {
        let mut pick = || names[rng.below(names.len() as u64) as usize];
        let (x, y) = (pick(), pick());
        let op = rng.below(12);
        let n = rng.below(300_000);
        let line = match op {
            0 => format!("head -c {n} /dev/urandom > {x}"),
            1 => format!("mkdir {x}"),
            2 => format!("rm -f {x}"),
            3 => format!("rmdir {x}"),
            4 => format!("mv -T {x} {y}"),
            5 => format!("ln {x} {y}"),
            6 => format!("ln -s {y} {x}"),
            7 => format!("truncate -s {n} {x}"),
            8 => format!("dd if=/dev/urandom of={x} bs=1 count=100 seek={n} conv=notrunc"),
            9 => format!("setfattr -n user.k{step} -v {n} {x}"),
            10 => format!("chmod {:o} {x}", 0o600 + rng.below(0o177)),
            _ => format!("fallocate -p -o {} -l 5000 {x}", n / 2),
        };
        script += &format!("{line} 2>/dev/null || true\n");
    }
    let img = mkfs(4096, 1, 256, "randops");
    let (mnt, g) = mount_ours(&img.0, "allow_other", "randops");
    run_sh(&mnt.0, &script);
    let ours = host_manifest(&mnt.0);
    unmount(g, &mnt.0);
    fsck_clean(&img.0, "random operations");
    let (mnt, g) = mount_ours(&img.0, "allow_other", "randops");
    let again = host_manifest(&mnt.0);
    unmount(g, &mnt.0);
    compare_manifests(&ours, &again, "random operations: after remount");
    let w = "mount -t gfs2 -o lockproto=lock_nolock,noatime /dev/vda /mnt || echo MOUNTFAIL\n\
             echo BEGIN-rand\n(cd /mnt && . /manifest.sh)\necho END-rand\n\
             umount /mnt || echo UMOUNTFAIL\n";
    let console = run_vm(w, &[img.0.as_path()]);
    for bad in ["MOUNTFAIL", "UMOUNTFAIL", "withdraw"] {
        assert!(!console.contains(bad), "kernel: {bad}:\n{console}");
    }
    let k = section(&console, "rand");
    compare_manifests(
        &without_rdev(&k),
        &without_rdev(&ours),
        "random operations: the kernel's view",
    );
    assert!(ours.len() > 3, "the sequence left almost nothing: {ours:?}");
}

/// Whole-block writes map and allocate a run of blocks at a time
/// (`write::map_run`, `rgrp::alloc_extent`): big aligned writes over files
/// that are part mapped, part holes, across the dinode's and the indirect
/// blocks' pointer boundaries (483 and 509 pointers at 4 KiB), into a
/// sparse file three levels tall, and two files growing in turns (runs that
/// stop where the other file's blocks begin); then a truncate and a delete
/// give runs back (`rgrp::free_run`). gfs2-utils' `fsck.gfs2 -n` checks
/// every bitmap bit, block count and pointer; a remount reads every byte
/// back.
#[test]
fn block_runs_over_holes_and_pointer_blocks() {
    use std::os::unix::fs::FileExt;
    const B: u64 = 4096;
    let img = mkfs(4096, 1, 512, "runs");
    const CUT: u64 = (1 << 20) + 100;
    let mut rng = Rng(0x5eed_0018);
    // (name, offset, data) in the order written; later writes win.
    let mut writes: Vec<(&str, u64, Vec<u8>)> = Vec::new();
    let mut chunk = |len: usize| {
        let mut b = vec![0u8; len];
        fill(&mut rng, &mut b);
        b
    };
    // Scattered blocks first, then 4 MiB over them from 0.
    for lb in [1u64, 7, 8, 300, 482, 483, 700, 1000] {
        writes.push(("mixed", lb * B, chunk(B as usize)));
    }
    writes.push(("mixed", 0, chunk(4 << 20)));
    // Two files growing 1 MiB at a time in turns.
    for k in 0..4u64 {
        writes.push(("turn_a", k << 20, chunk(1 << 20)));
        writes.push(("turn_b", k << 20, chunk(1 << 20)));
    }
    // Three levels of pointers (past 483 * 509 blocks), mostly holes; the
    // two writes meet but do not overlap (checked range by range).
    writes.push(("tall", 1 << 30, chunk(1 << 20)));
    writes.push(("tall", (1 << 30) - 16 * B, chunk(64 << 10)));
    with_mount(&img.0, "", "runs", |m| {
        for (name, off, data) in &writes {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(m.join(name))
                .unwrap();
            f.write_all_at(data, *off).unwrap();
            f.sync_all().unwrap();
        }
        // Runs given back: a truncate into the middle of a block, a delete.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("mixed"))
            .unwrap();
        f.set_len(CUT).unwrap();
        f.sync_all().unwrap();
        std::fs::remove_file(m.join("turn_a")).unwrap();
    });
    fsck_clean(&img.0, "block runs");
    // What the small files must hold: the writes replayed in memory.
    let mut want: std::collections::BTreeMap<&str, Vec<u8>> = Default::default();
    for (name, off, data) in writes.iter().filter(|w| w.0 != "tall") {
        let v = want.entry(name).or_default();
        let end = *off as usize + data.len();
        if v.len() < end {
            v.resize(end, 0);
        }
        v[*off as usize..end].copy_from_slice(data);
    }
    want.remove("turn_a");
    if let Some(v) = want.get_mut("mixed") {
        v.truncate(CUT as usize);
    }
    with_mount(&img.0, "", "runs2", |m| {
        assert!(!m.join("turn_a").exists(), "turn_a was deleted");
        for (name, v) in &want {
            let got = std::fs::read(m.join(name)).unwrap();
            assert_eq!(got.len(), v.len(), "{name}: size");
            let bad = got.iter().zip(v).position(|(a, b)| a != b);
            assert!(bad.is_none(), "{name}: differs at byte {bad:?}");
        }
        let tall = std::fs::File::open(m.join("tall")).unwrap();
        assert_eq!(tall.metadata().unwrap().len(), (1 << 30) + (1 << 20));
        for (_, off, data) in writes.iter().filter(|w| w.0 == "tall") {
            let mut got = vec![0u8; data.len()];
            tall.read_exact_at(&mut got, *off).unwrap();
            assert!(
                got == *data,
                "tall: the write at {off} reads back different"
            );
        }
        let mut hole = vec![1u8; 1 << 20];
        tall.read_exact_at(&mut hole, 512 << 20).unwrap();
        assert!(hole.iter().all(|b| *b == 0), "tall: a hole reads non-zero");
    });
}
