//! An fsx-style checker: random writes, reads, truncates and mmap reads and
//! writes on files in a real FUSE mount, every read verified against an
//! in-memory model of the file, for a bounded time; then remount and
//! compare every file with its model, and gfs2-utils' `fsck.gfs2 -n`.

mod common;

use common::*;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn mount(img: &Path, mnt: &Path, opts: &str) -> MountGuard {
    let out = Command::new(gfs2_fuse())
        .arg("mount")
        .arg(img)
        .arg(mnt)
        .args(["-o", opts])
        .output()
        .expect("gfs2-fuse");
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    MountGuard(mnt.to_path_buf())
}

/// One file under test and its model.
struct Subject {
    name: String,
    model: Vec<u8>,
}

fn op(rng: &mut Rng, dir: &Path, s: &mut Subject, max: u64, log: &mut Vec<String>) {
    let path = dir.join(&s.name);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .expect("open");
    let len = s.model.len() as u64;
    match rng.below(10) {
        0..=3 => {
            // write, sometimes far beyond the end (sparse)
            let off = if rng.below(4) == 0 {
                rng.below(max)
            } else {
                rng.below(len + 1)
            };
            let cap = if rng.below(3) == 0 { 200_000 } else { 5000 };
            let n = 1 + rng.below(cap);
            let n = n.min(max - off.min(max - 1));
            let byte = rng.next() as u8;
            let data: Vec<u8> = (0..n).map(|i| byte.wrapping_add(i as u8)).collect();
            log.push(format!("write {} {off} {n}", s.name));
            f.write_all_at(&data, off).expect("write");
            let end = (off + n) as usize;
            if s.model.len() < end {
                s.model.resize(end, 0);
            }
            s.model[off as usize..end].copy_from_slice(&data);
        }
        4..=5 => {
            let off = rng.below(len + 1);
            let n = rng.below(100_000);
            log.push(format!("read {} {off} {n}", s.name));
            let mut buf = vec![0u8; n as usize];
            let mut got = 0;
            while got < buf.len() {
                let k = f.read_at(&mut buf[got..], off + got as u64).expect("read");
                if k == 0 {
                    break;
                }
                got += k;
            }
            let want_end = (off + n).min(len) as usize;
            let want = &s.model[off.min(len) as usize..want_end];
            assert_eq!(got, want.len(), "short read; ops:\n{}", log.join("\n"));
            assert!(
                buf[..got] == *want,
                "data mismatch reading {} at {off}; ops:\n{}",
                s.name,
                log.join("\n")
            );
        }
        6..=7 => {
            let size = if rng.below(2) == 0 {
                rng.below(len + 1)
            } else {
                rng.below(max)
            };
            log.push(format!("truncate {} {size}", s.name));
            f.set_len(size).expect("truncate");
            s.model.resize(size as usize, 0);
        }
        8 => {
            // mmap read of the whole file, compared with the model
            log.push(format!("mmapread {}", s.name));
            if len > 0 {
                let m = unsafe {
                    // SAFETY: a private read-only mapping of a file we own,
                    // unmapped below; length is the current file size.
                    libc::mmap(
                        std::ptr::null_mut(),
                        len as usize,
                        libc::PROT_READ,
                        libc::MAP_SHARED,
                        std::os::fd::AsRawFd::as_raw_fd(&f),
                        0,
                    )
                };
                assert_ne!(m, libc::MAP_FAILED, "mmap failed");
                // SAFETY: the mapping is `len` bytes long and readable.
                let view = unsafe { std::slice::from_raw_parts(m as *const u8, len as usize) };
                let same = view == &s.model[..];
                // SAFETY: unmapping what we mapped.
                unsafe { libc::munmap(m, len as usize) };
                assert!(same, "mmap view differs; ops:\n{}", log.join("\n"));
            }
        }
        9 if rng.below(2) == 0 => {
            // fallocate: allocate (maybe keeping the size) or punch a hole
            let off = rng.below(len + 10_000);
            let n = 1 + rng.below(100_000);
            let n = n.min(max - off.min(max - 1));
            let punch = rng.below(2) == 0;
            let keep = punch || rng.below(2) == 0;
            let mode = if punch {
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
            } else if keep {
                libc::FALLOC_FL_KEEP_SIZE
            } else {
                0
            };
            log.push(format!("fallocate {} {off} {n} mode {mode}", s.name));
            // SAFETY: fallocate on an open descriptor with plain integers.
            let r = unsafe {
                libc::fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    mode,
                    off as i64,
                    n as i64,
                )
            };
            assert_eq!(
                r,
                0,
                "fallocate failed: {}",
                std::io::Error::last_os_error()
            );
            let end = (off + n) as usize;
            if punch {
                let stop = end.min(s.model.len());
                if (off as usize) < stop {
                    s.model[off as usize..stop].fill(0);
                }
            } else if !keep && s.model.len() < end {
                s.model.resize(end, 0);
            }
        }
        _ => {
            log.push(format!("fsync {}", s.name));
            f.sync_all().expect("fsync");
        }
    }
}

/// The third round takes the requests over io_uring (`io_uring=on`, the
/// kernel made to offer it), and so does its remount.
#[test]
fn random_io_matches_the_model() {
    for (bsize, secs, opts) in [
        (1024u32, 12u64, "rw"),
        (4096, 12, "rw"),
        (4096, 8, "io_uring=on"),
    ] {
        let _uring = (opts == "io_uring=on").then(|| FuseUring::set(true));
        let tag = format!("fsx{bsize}{}", if opts == "rw" { "" } else { "u" });
        let img = mkfs(bsize, 1, 512, &tag);
        let mnt = mountpoint(&tag);
        let g = mount(&img.0, &mnt.0, opts);
        let mut rng = Rng(0x1234_5678 ^ u64::from(bsize));
        let mut subjects: Vec<Subject> = (0..4)
            .map(|i| Subject {
                name: format!("subject{i}"),
                model: Vec::new(),
            })
            .collect();
        let mut log = Vec::new();
        let t = Instant::now();
        let mut ops = 0;
        let max = 3 << 20;
        while t.elapsed() < Duration::from_secs(secs) {
            let k = rng.below(subjects.len() as u64) as usize;
            op(&mut rng, &mnt.0, &mut subjects[k], max, &mut log);
            if log.len() > 200 {
                log.drain(..100);
            }
            ops += 1;
        }
        assert!(ops > 500, "only {ops} operations in {secs} s");
        drop(g);
        wait_daemon_gone(&mnt.0);
        let out = Command::new(tool("fsck.gfs2"))
            .arg("-n")
            .arg(&img.0)
            .output()
            .expect("fsck.gfs2");
        assert!(
            out.status.success(),
            "fsck.gfs2 -n after {ops} ops:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let g = mount(&img.0, &mnt.0, opts);
        for s in &subjects {
            let data = std::fs::read(mnt.0.join(&s.name)).expect("read back");
            assert!(data == s.model, "{} differs after remount", s.name);
        }
        drop(g);
        wait_daemon_gone(&mnt.0);
    }
}
