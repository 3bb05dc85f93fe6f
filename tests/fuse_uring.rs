//! FUSE over io_uring (`-o io_uring=on`): a real mount whose requests the
//! kernel hands over through io_uring, used through ordinary syscalls from
//! several threads; what it wrote must be what a classic mount reads back,
//! fsck.gfs2 must find the disk clean after the unmount (whose DESTROY
//! comes through a ring too), and the daemon's own count says the rings
//! carried the requests. With the kernel not offering it, the same option
//! mounts through `/dev/fuse` as always.
//!
//! The kernel offers io_uring only while the `fuse` module's `enable_uring`
//! is set; the test sets it and puts the old value back. Other tests' mounts
//! do not ask for io_uring, so they are not affected meanwhile.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A foreground daemon with its log in a file.
fn spawn(img: &Path, mnt: &Path, opts: &str, log: &Path) -> Child {
    let mut child = Command::new(gfs2_fuse())
        .args(["mount", "-f"])
        .arg(img)
        .arg(mnt)
        .args(["-o", opts])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_mounted(mnt) {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "daemon exited ({st}) before mounting:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "never mounted");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Unmount as `umount(8)` does (a root mount is `fuseblk`: the kernel sends
/// DESTROY and returns once we replied, i.e. once the disk is clean) and
/// wait for the daemon's exit.
fn unmount(mnt: &Path, mut child: Child) {
    let st = Command::new(tool("umount")).arg(mnt).status().unwrap();
    assert!(st.success(), "umount {}", mnt.display());
    let st = child.wait().unwrap();
    assert!(st.success(), "gfs2-fuse exited with {st}");
}

/// Number after `what` in the log, if the line is there.
fn logged(log: &Path, what: &str) -> Option<u64> {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines().find_map(|l| {
        let rest = &l[l.find(what)? + what.len()..];
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Files, links, xattrs and renames from one thread in its own directory;
/// returns what the directory must hold (name -> contents).
fn workload(dir: &Path, seed: u64) -> BTreeMap<String, Vec<u8>> {
    let mut rng = Rng(seed | 1);
    let mut want = BTreeMap::new();
    std::fs::create_dir(dir).unwrap();
    for i in 0..60u64 {
        // Sizes up to 3 MiB: a write larger than a ring entry (1 MiB)
        // arrives as several requests.
        let len = match i % 4 {
            0 => 0,
            1 => rng.below(5000) as usize,
            2 => rng.below(200_000) as usize,
            _ => rng.below(3 << 20) as usize,
        };
        let mut data = vec![0u8; len];
        fill(&mut rng, &mut data);
        let name = format!("f{i}");
        let p = dir.join(&name);
        std::fs::write(&p, &data).unwrap();
        if i % 5 == 0 {
            // An overwrite in the middle, through pwrite, then fsync.
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            let patch = [0xa5u8; 777];
            let at = len / 3;
            f.write_all_at(&patch, at as u64).unwrap();
            f.sync_all().unwrap();
            if data.len() < at + patch.len() {
                data.resize(at + patch.len(), 0);
            }
            data[at..at + patch.len()].copy_from_slice(&patch);
        }
        same(&std::fs::read(&p).unwrap(), &data, &p);
        xattr_set(&p, "user.seed", &seed.to_le_bytes());
        want.insert(name, data);
    }
    // Renames, unlinks, truncation, a hard link and a subdirectory.
    for i in (0..60u64).step_by(3) {
        let from = format!("f{i}");
        let to = format!("renamed{i}");
        std::fs::rename(dir.join(&from), dir.join(&to)).unwrap();
        let v = want.remove(&from).unwrap();
        want.insert(to, v);
    }
    for i in (1..60u64).step_by(7) {
        let name = format!("f{i}");
        if want.remove(&name).is_some() {
            std::fs::remove_file(dir.join(&name)).unwrap();
        }
    }
    if let Some((name, data)) = want.iter_mut().find(|(_, d)| d.len() > 10_000) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(name))
            .unwrap();
        f.set_len(4097).unwrap();
        data.truncate(4097);
    }
    let (first, data) = want
        .iter()
        .next()
        .map(|(n, d)| (n.clone(), d.clone()))
        .unwrap();
    std::fs::hard_link(dir.join(&first), dir.join("link")).unwrap();
    want.insert("link".into(), data);
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/inner"), b"inner").unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expect: Vec<String> = want.keys().cloned().collect();
    expect.push("sub".into());
    expect.sort();
    assert_eq!(names, expect, "listing of {}", dir.display());
    want
}

/// Contents equal, or where they part (not megabytes of bytes).
fn same(got: &[u8], want: &[u8], p: &Path) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{}: {} bytes read, {} written, first difference at {at:?}",
            p.display(),
            got.len(),
            want.len()
        );
    }
}

fn check(dir: &Path, want: &BTreeMap<String, Vec<u8>>, seed: u64) {
    for (name, data) in want {
        let p = dir.join(name);
        same(&std::fs::read(&p).unwrap(), data, &p);
        assert_eq!(
            xattr_get(&p, "user.seed"),
            Some(seed.to_le_bytes().to_vec()),
            "{}",
            p.display()
        );
    }
    assert_eq!(std::fs::read(dir.join("sub/inner")).unwrap(), b"inner");
}

#[test]
fn requests_over_io_uring_reach_the_disk_as_through_dev_fuse() {
    let img = mkfs(4096, 1, 512, "uring");
    let mnt = mountpoint("uring");
    let log = PathBuf::from(format!("{}.log", img.0.display()));
    let _log_gone = TempPath(log.clone());
    let seeds = [11u64, 22, 33, 44];

    let wants = {
        let _on = FuseUring::set(true);
        let child = spawn(&img.0, &mnt.0, "io_uring=on,threads=4", &log);
        let _guard = MountGuard(mnt.0.clone());
        let wants: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = seeds
                .iter()
                .map(|&seed| {
                    let dir = mnt.0.join(format!("t{seed}"));
                    s.spawn(move || workload(&dir, seed))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        unmount(&mnt.0, child);
        std::mem::forget(_guard);
        wants
    };
    let threads = logged(&log, "FUSE over io_uring:");
    assert!(
        threads.is_some_and(|n| n >= 2),
        "no io_uring set up:\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let served = logged(&log, "served").expect("no count of ring requests in the log");
    // Every write of up to 1 MiB, read, lookup, create... of four threads:
    // far more than the handful a fallback would leave to the rings.
    assert!(served > 2000, "only {served} requests came over io_uring");
    eprintln!("{served} requests over io_uring");
    fsck_clean(&img.0, "after an io_uring mount");

    // A classic mount reads back what went through the rings.
    with_mount(&img.0, "", "uring-check", |m| {
        for (seed, want) in seeds.iter().zip(&wants) {
            check(&m.join(format!("t{seed}")), want, *seed);
        }
    });

    // Not offered by the kernel: the same option serves through /dev/fuse.
    let _off = FuseUring::set(false);
    let child = spawn(&img.0, &mnt.0, "io_uring=on", &log);
    let _guard = MountGuard(mnt.0.clone());
    check(&mnt.0.join("t11"), &wants[0], 11);
    std::fs::write(mnt.0.join("classic"), b"through /dev/fuse").unwrap();
    unmount(&mnt.0, child);
    std::mem::forget(_guard);
    assert_eq!(logged(&log, "FUSE over io_uring:"), None);
    assert_eq!(logged(&log, "served"), None);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the kernel does not offer it"),
        "no word of the fallback:\n{text}"
    );
    fsck_clean(&img.0, "after the fallback mount");
}
