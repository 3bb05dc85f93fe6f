//! Crash safety: the daemon is killed with SIGKILL at random moments of an
//! fsync-heavy workload, many times. After each crash a remount replays our
//! journal: every file whose fsync returned is there with its content, and
//! gfs2-utils' `fsck.gfs2 -n` finds the image clean. Some crashed images are
//! instead handed to the Linux kernel, which must replay our journal itself
//! and see the same files.

mod common;

use common::kvm::run_vm;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A content fingerprint (FNV-1a and the length).
fn sha(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}-{}", data.len())
}

fn start(img: &Path, mnt: &Path) -> Child {
    let child = Command::new(gfs2_fuse())
        .arg("mount")
        .arg(img)
        .arg(mnt)
        .arg("-f")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gfs2-fuse");
    let t = Instant::now();
    while !is_mounted(mnt) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "mount did not appear"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// Unmount normally (the daemon flushes and closes its journal) and wait
/// for the daemon to exit.
fn unmount(mnt: &Path, mut child: Child) {
    let st = Command::new(tool("fusermount3"))
        .arg("-u")
        .arg(mnt)
        .status();
    assert!(st.is_ok_and(|s| s.success()), "fusermount3 -u failed");
    let t = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "daemon did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn force_unmount(mnt: &Path) {
    let _ = Command::new(tool("fusermount3"))
        .arg("-uz")
        .arg(mnt)
        .status();
    let t = Instant::now();
    while is_mounted(mnt) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Files whose fsync returned: name and fingerprint of the last content.
type Durable = Arc<Mutex<Vec<(String, String)>>>;

fn workload(dir: PathBuf, seed: u64, stop: Arc<AtomicBool>, durable: Durable) {
    use std::os::unix::fs::MetadataExt;
    // The mount's device: once the crashed mount is detached, a path under
    // `dir` reaches the directory beneath it, where a create and fsync
    // would succeed on the host's filesystem; such a file is no file of
    // ours and must not count as durable.
    let Ok(mount_dev) = std::fs::metadata(&dir).map(|m| m.dev()) else {
        return;
    };
    let mut rng = Rng(seed | 1);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let name = format!("f{seed}_{i}");
        let len = (rng.next() % 150_000) as usize;
        let data: Vec<u8> = (0..len).map(|k| (k as u64 ^ i ^ seed) as u8).collect();
        let r = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(dir.join(&name))?;
            f.write_all(&data)?;
            f.sync_all()?;
            if f.metadata()?.dev() != mount_dev {
                return Err(std::io::Error::other("the mount is gone"));
            }
            // Churn that must not disturb durable files.
            if i.is_multiple_of(5) {
                std::fs::write(dir.join("scratch"), &data[..len.min(3000)])?;
                std::fs::rename(dir.join("scratch"), dir.join(format!("scratch{}", i % 3)))?;
            }
            if i.is_multiple_of(7) {
                let _ = std::fs::remove_file(dir.join(format!("scratch{}", i % 3)));
                std::fs::create_dir_all(dir.join(format!("d{}", i % 4)).join("x"))?;
            }
            Ok(())
        })();
        if r.is_err() {
            return;
        }
        durable.lock().unwrap().push((name, sha(&data)));
    }
}

/// Run the workload against a fresh mount of `img` and kill the daemon
/// after `delay`; returns the files that were durable.
fn crash_once(img: &Path, mnt: &Path, seed: u64, delay: Duration) -> Vec<(String, String)> {
    let mut child = start(img, mnt);
    let stop = Arc::new(AtomicBool::new(false));
    let durable: Durable = Default::default();
    let h = {
        let (d, s, du) = (mnt.to_path_buf(), stop.clone(), durable.clone());
        std::thread::spawn(move || workload(d, seed, s, du))
    };
    std::thread::sleep(delay);
    child.kill().expect("kill -9 the daemon");
    let _ = child.wait();
    stop.store(true, Ordering::Relaxed);
    force_unmount(mnt);
    let _ = h.join();
    let v = durable.lock().unwrap().clone();
    v
}

fn check_files(mnt: &Path, files: &[(String, String)], what: &str) {
    for (name, fp) in files {
        let data = std::fs::read(mnt.join(name))
            .unwrap_or_else(|e| panic!("{what}: fsync'd file {name} lost: {e}"));
        assert_eq!(
            &sha(&data),
            fp,
            "{what}: fsync'd file {name} has other content"
        );
    }
}

#[test]
fn kill_9_loses_no_fsynced_file() {
    let runs = 50;
    let kernel_runs = 10;
    let mut rng = Rng(0x5eed_1234);
    let mnt = mountpoint("crash");
    let mut for_kernel: Vec<(TempPath, Vec<(String, String)>)> = Vec::new();
    let mut total = 0usize;
    for r in 0..runs {
        let img = mkfs(
            if r % 2 == 0 { 4096 } else { 1024 },
            1,
            256,
            &format!("crash{r}"),
        );
        let delay = Duration::from_millis(30 + rng.next() % 400);
        let files = crash_once(&img.0, &mnt.0, r as u64 + 1, delay);
        total += files.len();
        if r < kernel_runs {
            // Left as the crash left it: the kernel must replay our journal.
            for_kernel.push((img, files));
            continue;
        }
        let child = start(&img.0, &mnt.0);
        check_files(&mnt.0, &files, &format!("run {r}"));
        unmount(&mnt.0, child);
        fsck_clean(&img.0, &format!("run {r} after recovery"));
    }
    assert!(
        total > 100,
        "the workload made too few durable files: {total}"
    );

    // Those crashes left dirty journals (gfs2-utils says so) for the kernel.
    let dirty = for_kernel
        .iter()
        .filter(|(img, _)| {
            let out = Command::new(tool("fsck.gfs2"))
                .arg("-n")
                .arg(&img.0)
                .output()
                .expect("fsck.gfs2");
            // gfs2-utils 3.5 reports the dirty journal but exits 0 when the
            // metadata it checks is consistent without replay.
            String::from_utf8_lossy(&out.stderr).contains("is dirty")
        })
        .count();
    assert!(
        dirty >= kernel_runs / 2,
        "only {dirty} of {kernel_runs} crashes left a dirty journal"
    );

    // The kernel recovers the other crashed images and checks the files.
    let mut w = String::new();
    for (i, (_, files)) in for_kernel.iter().enumerate() {
        let dev = format!("/dev/vd{}", (b'a' + i as u8) as char);
        w += &format!(
            "mount -t gfs2 -o lockproto=lock_nolock {dev} /mnt || echo MOUNTFAIL-{i}\n\
             echo BEGIN-K{i}\n"
        );
        for (name, _) in files {
            w += &format!("[ -f /mnt/{name} ] || echo LOST-{i}-{name}\n");
        }
        w += &format!("echo END-K{i}\numount /mnt || echo UMOUNTFAIL-{i}\n");
    }
    let disks: Vec<&Path> = for_kernel.iter().map(|(i, _)| i.0.as_path()).collect();
    let console = run_vm(&w, &disks);
    assert!(
        console.contains("KVM-WORKLOAD-DONE"),
        "kernel run incomplete:\n{console}"
    );
    for bad in ["MOUNTFAIL", "LOST-", "UMOUNTFAIL", "withdraw"] {
        assert!(!console.contains(bad), "kernel: {bad}:\n{console}");
    }
    for (i, (img, files)) in for_kernel.iter().enumerate() {
        fsck_clean(&img.0, &format!("kernel-recovered image {i}"));
        // Content check through our mount of what the kernel recovered.
        let child = start(&img.0, &mnt.0);
        check_files(&mnt.0, files, &format!("kernel-recovered image {i}"));
        unmount(&mnt.0, child);
    }
}

fn statvfs_free(p: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path");
    // SAFETY: statvfs fills a zeroed struct we own.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bfree
}

#[test]
fn inode_unlinked_while_open_is_freed_after_a_crash() {
    let img = mkfs(4096, 1, 256, "orphan");
    let mnt = mountpoint("orphan");
    let mut child = start(&img.0, &mnt.0);
    let free0 = statvfs_free(&mnt.0);
    let mut f = std::fs::File::create(mnt.0.join("victim")).expect("create");
    f.write_all(&vec![9u8; 4 << 20]).expect("write");
    std::fs::remove_file(mnt.0.join("victim")).expect("unlink while open");
    f.sync_all().expect("fsync");
    assert!(
        statvfs_free(&mnt.0) < free0,
        "the open file's blocks are still allocated"
    );
    child.kill().expect("kill -9");
    let _ = child.wait();
    drop(f);
    force_unmount(&mnt.0);
    // The unlink is in the journal, not yet in place: gfs2-utils reports the
    // dirty journal, and once it has replayed it (on a copy) it sees the
    // allocated, nameless inode the crash left behind.
    let out = Command::new(tool("fsck.gfs2"))
        .arg("-n")
        .arg(&img.0)
        .output()
        .expect("fsck");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("is dirty"), "journal not dirty:\n{text}");
    let copy = img.0.with_extension("copy");
    std::fs::copy(&img.0, &copy).expect("copy image");
    let out = Command::new(tool("fsck.gfs2"))
        .arg("-y")
        .arg(&copy)
        .output()
        .expect("fsck");
    let _ = std::fs::remove_file(&copy);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("bitmap says"),
        "no leftover inode seen by fsck after replay:\n{text}"
    );
    // Our next mount frees it, as the kernel would.
    let child = start(&img.0, &mnt.0);
    let t = Instant::now();
    while statvfs_free(&mnt.0) < free0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the unlinked inode was not freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    unmount(&mnt.0, child);
    fsck_clean(&img.0, "after reclaiming the unlinked inode");
}

/// Revokes: a file's indirect blocks are logged, the file is deleted, and a
/// second file on the nearly full filesystem reuses the freed blocks for
/// data, fsync'd; then the daemon is killed before any checkpoint. Replay
/// must not write the old indirect blocks over the new data: the journal
/// holds revoke records for them (gfs2_edit shows them), and both our
/// recovery and the kernel's leave the second file intact and fsck clean.
#[test]
fn freed_metadata_reused_as_data_is_revoked() {
    let img = mkfs(4096, 1, 160, "revoke");
    let mnt = mountpoint("revoke");
    let mut child = start(&img.0, &mnt.0);
    let mut rng = Rng(0x05ee_d4e4_07e5);
    let mut fill =
        |n: usize| -> Vec<u8> { (0..n / 8).flat_map(|_| rng.next().to_le_bytes()).collect() };
    let a = fill(100 << 20);
    let mut f = std::fs::File::create(mnt.0.join("a")).expect("create a");
    f.write_all(&a).expect("write a");
    f.sync_all().expect("fsync a");
    drop(f);
    std::fs::remove_file(mnt.0.join("a")).expect("unlink a");
    std::fs::File::open(&mnt.0)
        .and_then(|d| d.sync_all())
        .expect("fsync dir");
    // A small file first shifts the allocations, so that b's data (not
    // b's own indirect blocks) lands where a's indirect blocks were.
    std::fs::write(mnt.0.join("c"), fill(3 * 4096 + 100)).expect("write c");
    let b = fill(100 << 20);
    let mut f = std::fs::File::create(mnt.0.join("b")).expect("create b");
    f.write_all(&b).expect("write b");
    f.sync_all().expect("fsync b");
    drop(f);
    child.kill().expect("kill -9");
    let _ = child.wait();
    force_unmount(&mnt.0);
    let want = sha(&b);
    drop(a);
    drop(b);

    let out = Command::new(tool("gfs2_edit"))
        .args(["-p", "journal0"])
        .arg(&img.0)
        .output()
        .expect("gfs2_edit");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.to_ascii_lowercase().contains("revoke"),
        "no revoke records in the journal:\n{}",
        &text[..text.len().min(4000)]
    );

    let kimg = TempPath(img.0.with_extension("kernel"));
    std::fs::copy(&img.0, &kimg.0).expect("copy image");
    // Our recovery.
    let child = start(&img.0, &mnt.0);
    let got = std::fs::read(mnt.0.join("b")).expect("read b");
    assert_eq!(sha(&got), want, "our recovery: b damaged");
    assert!(!mnt.0.join("a").exists(), "our recovery: a is back");
    unmount(&mnt.0, child);
    fsck_clean(&img.0, "after our recovery");
    // The kernel's.
    let w = "mount -t gfs2 -o lockproto=lock_nolock /dev/vda /mnt || echo MOUNTFAIL\n\
             [ -f /mnt/a ] && echo ABACK\n\
             umount /mnt || echo UMOUNTFAIL\n";
    let console = run_vm(w, &[kimg.0.as_path()]);
    assert!(
        console.contains("KVM-WORKLOAD-DONE"),
        "kernel run incomplete:\n{console}"
    );
    for bad in ["MOUNTFAIL", "ABACK", "UMOUNTFAIL", "withdraw"] {
        assert!(!console.contains(bad), "kernel: {bad}:\n{console}");
    }
    fsck_clean(&kimg.0, "after the kernel's recovery");
    let child = start(&kimg.0, &mnt.0);
    let got = std::fs::read(mnt.0.join("b")).expect("read b");
    assert_eq!(sha(&got), want, "kernel recovery: b damaged");
    unmount(&mnt.0, child);
}

fn attrs(p: &Path) -> String {
    let out = Command::new(tool("lsattr"))
        .arg("-d")
        .arg(p)
        .output()
        .expect("lsattr");
    assert!(out.status.success(), "lsattr {}", p.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Journaled data (`chattr +j`): a file in a `+j` directory inherits the
/// flag and its data goes through the log, including a block that starts
/// with the GFS2 magic (logged escaped). After kill -9 the journal holds
/// journaled-data descriptors (gfs2_edit shows them); our replay and the
/// kernel's both restore the fsync'd content; the kernel then appends to
/// the file through its own journal and we read that back.
#[test]
fn journaled_data_survives_kill_and_replay() {
    let img = mkfs(4096, 1, 128, "jdata");
    let mnt = mountpoint("jdata");
    let mut child = start(&img.0, &mnt.0);
    let d = mnt.0.join("d");
    std::fs::create_dir(&d).expect("mkdir");
    let st = Command::new(tool("chattr")).arg("+j").arg(&d).status();
    assert!(st.is_ok_and(|s| s.success()), "chattr +j");
    assert!(attrs(&d).contains('j'), "directory flag: {}", attrs(&d));
    let mut rng = Rng(0x0da7_a5ee_d001);
    let mut data: Vec<u8> = (0..300 * 1024 / 8)
        .flat_map(|_| rng.next().to_le_bytes())
        .collect();
    data[2 * 4096..2 * 4096 + 4].copy_from_slice(&0x0116_1970u32.to_be_bytes());
    let f = d.join("j");
    std::fs::write(&f, &data).expect("write j");
    assert!(attrs(&f).contains('j'), "inherited flag: {}", attrs(&f));
    std::fs::File::open(&f)
        .and_then(|h| h.sync_all())
        .expect("fsync j");
    // Rewrite part of one block in place, then fsync again.
    {
        use std::os::unix::fs::FileExt;
        let h = std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .expect("open j");
        h.write_all_at(b"overwritten in place", 5 * 4096 + 100)
            .expect("pwrite");
        h.sync_all().expect("fsync j again");
    }
    data[5 * 4096 + 100..5 * 4096 + 120].copy_from_slice(b"overwritten in place");
    child.kill().expect("kill -9");
    let _ = child.wait();
    force_unmount(&mnt.0);

    let out = Command::new(tool("gfs2_edit"))
        .args(["-p", "journal0"])
        .arg(&img.0)
        .output()
        .expect("gfs2_edit");
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        text.contains("jdata"),
        "no journaled-data descriptors in the journal:\n{}",
        &text[..text.len().min(4000)]
    );
    let kimg = TempPath(img.0.with_extension("kernel"));
    std::fs::copy(&img.0, &kimg.0).expect("copy image");

    let child = start(&img.0, &mnt.0);
    assert!(
        std::fs::read(&f).expect("read j") == data,
        "our replay: j differs"
    );
    assert!(attrs(&f).contains('j'), "flag after replay");
    unmount(&mnt.0, child);
    fsck_clean(&img.0, "after our replay");

    let w = "mount -t gfs2 -o lockproto=lock_nolock /dev/vda /mnt || echo MOUNTFAIL\n\
             echo appended-by-the-kernel >> /mnt/d/j || echo APPENDFAIL\n\
             sync\n\
             umount /mnt || echo UMOUNTFAIL\n";
    let console = run_vm(w, &[kimg.0.as_path()]);
    assert!(
        console.contains("KVM-WORKLOAD-DONE"),
        "kernel run incomplete:\n{console}"
    );
    for bad in ["MOUNTFAIL", "APPENDFAIL", "UMOUNTFAIL", "withdraw"] {
        assert!(!console.contains(bad), "kernel: {bad}:\n{console}");
    }
    fsck_clean(&kimg.0, "after the kernel's replay and append");
    data.extend_from_slice(b"appended-by-the-kernel\n");
    let child = start(&kimg.0, &mnt.0);
    assert!(
        std::fs::read(&f).expect("read j") == data,
        "kernel replay + append: j differs"
    );
    unmount(&mnt.0, child);
}

/// The log wraps: on an 8 MiB journal (2,048 blocks) 2,000 fsync'd creates
/// take at least 4 journal blocks each (descriptor, dinode, directory,
/// header), so the log goes round the journal several times, checkpointing
/// as it fills. Then kill -9: our replay and the kernel's find every file.
#[test]
fn log_wraps_around_a_small_journal() {
    let p = std::env::temp_dir().join(format!("gfs2t-wrap-{}.img", std::process::id()));
    let img = TempPath(p.clone());
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(128 << 20))
        .expect("image");
    let out = Command::new(tool("mkfs.gfs2"))
        .args([
            "-O",
            "-p",
            "lock_nolock",
            "-b",
            "4096",
            "-j",
            "1",
            "-J",
            "8",
        ])
        .arg(&p)
        .output()
        .expect("mkfs.gfs2");
    assert!(out.status.success(), "mkfs.gfs2 -J 8");
    let mnt = mountpoint("wrap");
    let mut child = start(&img.0, &mnt.0);
    let n = 2000;
    for i in 0..n {
        let name = mnt.0.join(format!("w{i}"));
        let mut f = std::fs::File::create(&name).expect("create");
        f.write_all(format!("file {i}\n").as_bytes())
            .expect("write");
        f.sync_all().expect("fsync");
    }
    assert!(n * 4 > 3 * 2048, "not enough journal traffic to wrap");
    child.kill().expect("kill -9");
    let _ = child.wait();
    force_unmount(&mnt.0);
    let kimg = TempPath(img.0.with_extension("kernel"));
    std::fs::copy(&img.0, &kimg.0).expect("copy image");
    let check = |what: &str| {
        for i in 0..n {
            let got = std::fs::read(mnt.0.join(format!("w{i}")))
                .unwrap_or_else(|e| panic!("{what}: w{i} lost: {e}"));
            assert_eq!(got, format!("file {i}\n").as_bytes(), "{what}: w{i}");
        }
    };
    let child = start(&img.0, &mnt.0);
    check("our replay");
    unmount(&mnt.0, child);
    fsck_clean(&img.0, "after our replay");
    let w = "mount -t gfs2 -o lockproto=lock_nolock /dev/vda /mnt || echo MOUNTFAIL\n\
             ls /mnt | wc -l\n\
             umount /mnt || echo UMOUNTFAIL\n";
    let console = run_vm(w, &[kimg.0.as_path()]);
    assert!(
        console.contains("KVM-WORKLOAD-DONE"),
        "kernel run incomplete:\n{console}"
    );
    for bad in ["MOUNTFAIL", "UMOUNTFAIL", "withdraw"] {
        assert!(!console.contains(bad), "kernel: {bad}:\n{console}");
    }
    fsck_clean(&kimg.0, "after the kernel's replay");
    let child = start(&kimg.0, &mnt.0);
    check("kernel replay");
    unmount(&mnt.0, child);
}
