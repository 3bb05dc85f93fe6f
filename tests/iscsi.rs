//! The iSCSI initiator (`gfs2fuse::dev::iscsi`) against tgt's `tgtd` on
//! loopback (one daemon per test, each on its own portal and control port).
//! Our mkfs writes through iSCSI and gfs2-utils' fsck.gfs2 finds the
//! backing image clean; a FUSE mount over iSCSI writes files that fsck
//! accepts and a second mount reads back; CHAP (one-way and mutual) logs in
//! with the right secrets and fails clearly with wrong ones; random
//! concurrent I/O (unaligned too, 512 and 4096-byte logical blocks) matches
//! a model and the backing file; restarting tgtd mid-stream loses no
//! acknowledged write; an outage longer than the timeout gives EIO in about
//! the timeout and the device recovers; errors the target reports (a LUN
//! turned read-only, a backing file cut short) come back as EROFS/EIO with
//! the sense data in the message.

mod common;

use common::tgt::{Setup, Tgt};
use common::*;
use gfs2fuse::dev::iscsi::{errno_of, IscsiDevice};
use gfs2fuse::dev::{spec, BlockDevice};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MB: u64 = 1 << 20;

fn bin(name: &str) -> PathBuf {
    let p = Path::new(gfs2_fuse()).with_file_name(name);
    assert!(
        p.exists(),
        "{} missing: build the workspace (cargo build --release --workspace)",
        p.display()
    );
    p
}

fn tmp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("gfs2iscsi-{tag}-{}", std::process::id()))
}

/// A sparse image file of `mb` MiB, removed on drop.
fn image(tag: &str, mb: u64) -> TempPath {
    let p = tmp(tag).with_extension("img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(mb * MB).unwrap();
    TempPath(p)
}

fn our_mkfs(url: &str, bsize: u32) {
    let out = Command::new(bin("mkfs-gfs2"))
        .args(["-O", "-p", "lock_nolock", "-j", "1", "-b"])
        .arg(bsize.to_string())
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs-gfs2 {url}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Mount `url` with a foreground daemon; returns it once the mount is up.
fn mount_foreground(url: &str, mnt: &Path, envs: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(gfs2_fuse());
    cmd.envs(envs.iter().copied());
    let mut child = cmd
        .arg("mount")
        .arg("-f")
        .arg(url)
        .arg(mnt)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(mnt) {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("gfs2-fuse {url} exited ({st}): {err}");
        }
        assert!(Instant::now() < deadline, "{url}: never mounted");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn content(i: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    fill(&mut Rng(0x5eed_0000 + i), &mut b);
    b
}

/// mkfs through iSCSI (fsck.gfs2 clean), then a FUSE mount over iSCSI with
/// CHAP writes files; after unmount fsck.gfs2 is clean again and a second
/// mount reads every byte back; with the LUN turned read-only the mount
/// falls back to read-only.
const SECRET: &[(&str, &str)] = &[("LIBISCSI_CHAP_PASSWORD", "fs-secret-123")];

#[test]
fn mkfs_and_fuse_mount_over_iscsi() {
    let img = image("fs", 256);
    let tgt = Tgt::start(
        "fs",
        &img.0,
        Setup {
            chap: Some(("fsuser", "fs-secret-123")),
            ..Setup::default()
        },
    );
    our_mkfs(&tgt.url("fsuser%fs-secret-123@"), 4096);
    fsck_clean(&img.0, "after mkfs over iSCSI");
    // The secret from the environment, as libiscsi's tools take it, keeps
    // it out of the mount table.
    let url = tgt.url("fsuser@");
    let mnt = mountpoint("iscsi-fs");
    let child = mount_foreground(&url, &mnt.0, SECRET);
    let guard = MountGuard(mnt.0.clone());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == mnt.0.to_str())
        .unwrap();
    assert!(
        !line.contains("fs-secret"),
        "the CHAP secret shows in /proc/mounts: {line}"
    );
    let sizes = [0usize, 1, 4095, 4096, 70_000, 3 << 20, (5 << 20) + 17];
    std::fs::create_dir(mnt.0.join("d")).unwrap();
    for (i, len) in sizes.iter().enumerate() {
        std::fs::write(mnt.0.join(format!("d/f{i}")), content(i as u64, *len)).unwrap();
    }
    for i in 0..100 {
        std::fs::write(mnt.0.join(format!("d/small{i}")), format!("{i}\n")).unwrap();
    }
    std::fs::remove_file(mnt.0.join("d/small50")).unwrap();
    std::os::unix::fs::symlink("f1", mnt.0.join("d/link")).unwrap();
    for (i, len) in sizes.iter().enumerate() {
        assert!(
            std::fs::read(mnt.0.join(format!("d/f{i}"))).unwrap() == content(i as u64, *len),
            "f{i} differs before unmount"
        );
    }
    unmount_and_wait(&mnt.0, child);
    std::mem::forget(guard);
    fsck_clean(&img.0, "after the FUSE mount over iSCSI");
    our_fsck_clean(&url, SECRET, "over iSCSI after the FUSE mount");
    let child = mount_foreground(&url, &mnt.0, SECRET);
    let guard = MountGuard(mnt.0.clone());
    for (i, len) in sizes.iter().enumerate() {
        assert!(
            std::fs::read(mnt.0.join(format!("d/f{i}"))).unwrap() == content(i as u64, *len),
            "f{i} differs after remount"
        );
    }
    assert_eq!(std::fs::read(mnt.0.join("d/small77")).unwrap(), b"77\n");
    assert!(!mnt.0.join("d/small50").exists());
    assert_eq!(
        std::fs::read_link(mnt.0.join("d/link")).unwrap(),
        Path::new("f1")
    );
    assert_eq!(std::fs::read_dir(mnt.0.join("d")).unwrap().count(), 107);
    unmount_and_wait(&mnt.0, child);
    std::mem::forget(guard);
    fsck_clean(&img.0, "after the second mount");
    // The LUN made read-only: the read-write open is refused with EROFS and
    // gfs2-fuse falls back to a read-only mount.
    tgt.set_read_only(true);
    let child = mount_foreground(&url, &mnt.0, SECRET);
    let guard = MountGuard(mnt.0.clone());
    assert!(std::fs::read(mnt.0.join("d/f6")).unwrap() == content(6, sizes[6]));
    let e = std::fs::write(mnt.0.join("d/new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    unmount_and_wait(&mnt.0, child);
    std::mem::forget(guard);
    fsck_clean(&img.0, "after the read-only mount");
}

/// CHAP: the right secret logs in; a wrong secret, no secret, or (mutual
/// CHAP) a target that cannot prove itself fail at once with a clear error.
#[test]
fn chap_login_success_and_failure() {
    let img = image("chap", 16);
    let tgt = Tgt::start(
        "chap",
        &img.0,
        Setup {
            chap: Some(("alice", "alice-secret-1")),
            mutual: Some(("tgtname", "target-secret-2")),
            ..Setup::default()
        },
    );
    // One-way CHAP.
    let dev = spec::open(&tgt.url("alice%alice-secret-1@"), false).unwrap();
    assert_eq!(dev.size(), 16 * MB);
    assert_eq!(dev.describe(), tgt.url(""));
    dev.write_at(&[0x5a; 4096], 8192).unwrap();
    let mut b = [0u8; 4096];
    dev.read_at(&mut b, 8192).unwrap();
    assert_eq!(b, [0x5a; 4096]);
    drop(dev);
    // Mutual CHAP.
    let good = format!(
        "{}?target_user=tgtname&target_password=target-secret-2",
        tgt.url("alice%alice-secret-1@")
    );
    let dev = spec::open(&good, true).unwrap();
    dev.read_at(&mut b, 8192).unwrap();
    assert_eq!(b, [0x5a; 4096]);
    drop(dev);
    let failures = [
        (tgt.url("alice%wrong-secret-9@"), "Authentication"),
        (tgt.url(""), "Authentication"),
        (tgt.url("mallory%alice-secret-1@"), "Authentication"),
        (
            format!(
                "{}?target_user=tgtname&target_password=not-the-target",
                tgt.url("alice%alice-secret-1@")
            ),
            "",
        ),
    ];
    for (url, text) in failures {
        let t = Instant::now();
        let e = spec::open(&url, false).err().expect("login accepted");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{url}: {:?}",
            t.elapsed()
        );
        let msg = e.to_string();
        assert!(msg.contains(&tgt.url("")), "{msg}");
        assert!(msg.contains(text), "{url}: {msg}");
        assert!(!msg.contains("secret"), "secret in the message: {msg}");
        if !text.is_empty() {
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{msg}");
        }
    }
    // Nothing listening; unknown target.
    let port = free_port();
    let e = spec::open(&format!("iscsi://127.0.0.1:{port}/iqn.x:y/1"), false)
        .err()
        .expect("connected to nothing");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    let e = spec::open(
        &format!(
            "iscsi://alice%alice-secret-1@127.0.0.1:{}/iqn.nope:x/1",
            tgt.port
        ),
        false,
    )
    .err()
    .expect("unknown target accepted");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("not found"), "{e}");
    // No such LUN (tgt's LUN 0 is the controller, ours is 1).
    let e = spec::open(
        &format!(
            "{}/7",
            tgt.url("alice%alice-secret-1@").trim_end_matches("/1")
        ),
        false,
    )
    .err()
    .expect("unknown LUN accepted");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("LOGICAL_UNIT_NOT_SUPPORTED"), "{e}");
}

/// Four threads do random reads and writes (unaligned, 1 byte to 3 MiB)
/// in their own quarter of the LUN and check every read against their
/// model; then the backing file equals the models, a 40 MiB unaligned write
/// (many commands) reads back, and bounds are enforced.
fn random_io(block_size: u32) {
    let size = 64 * MB;
    let img = image(&format!("rio{block_size}"), 64);
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img.0)
            .unwrap();
        let mut init = vec![0u8; MB as usize];
        let mut rng = Rng(0x1234_5678);
        for m in 0..size / MB {
            fill(&mut rng, &mut init);
            f.write_all_at(&init, m * MB).unwrap();
        }
    }
    let tgt = Tgt::start(
        &format!("rio{block_size}"),
        &img.0,
        Setup {
            block_size: Some(block_size),
            ..Setup::default()
        },
    );
    let dev = Arc::new(IscsiDevice::connect(tgt.config(Duration::from_secs(30))).unwrap());
    assert_eq!(dev.size(), size);
    assert_eq!(dev.info().block_size, block_size);
    assert!(!dev.info().write_protected);
    let quarter = size / 4;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let dev = dev.clone();
            let base = img.0.clone();
            std::thread::spawn(move || {
                let start = t * quarter;
                let mut model = vec![0u8; quarter as usize];
                std::fs::File::open(&base)
                    .unwrap()
                    .read_exact_at(&mut model, start)
                    .unwrap();
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                for i in 0..250 {
                    let len = match rng.below(4) {
                        0 => 1 + rng.below(600),
                        1 => 4096 * (1 + rng.below(16)),
                        2 => 1 + rng.below(256 << 10),
                        _ => 1 + rng.below(3 << 20),
                    };
                    let off = if rng.below(3) == 0 {
                        rng.below((quarter - len) / 4096) * 4096
                    } else {
                        rng.below(quarter - len)
                    };
                    let (o, l) = (off as usize, len as usize);
                    if rng.below(2) == 0 {
                        let mut data = vec![0u8; l];
                        fill(&mut rng, &mut data);
                        dev.write_at(&data, start + off).unwrap();
                        model[o..o + l].copy_from_slice(&data);
                    } else {
                        let mut data = vec![0u8; l];
                        dev.read_at(&mut data, start + off).unwrap();
                        assert!(
                            data == model[o..o + l],
                            "thread {t} op {i}: read {len} at {} differs",
                            start + off
                        );
                    }
                }
                model
            })
        })
        .collect();
    let mut whole = Vec::with_capacity(size as usize);
    for t in threads {
        whole.extend_from_slice(&t.join().unwrap());
    }
    // Four callers at once: more sessions logged in for them.
    assert!(dev.sessions() >= 2, "sessions {}", dev.sessions());
    dev.flush().unwrap();
    let mut file = std::fs::read(&img.0).unwrap();
    assert!(file == whole, "backing file differs from the model");
    // Many commands for one call, unaligned at both ends.
    let mut big = vec![0u8; (40 * MB) as usize + 777];
    fill(&mut Rng(42), &mut big);
    let off = 5 * MB + 123;
    dev.write_at(&big, off).unwrap();
    let mut back = vec![0u8; big.len()];
    dev.read_at(&mut back, off).unwrap();
    assert!(back == big, "40 MiB read-back differs");
    // 40 commands of 1 MiB were handed to the session together.
    assert!(dev.peak_in_flight() >= 16, "peak {}", dev.peak_in_flight());
    dev.flush().unwrap();
    file[off as usize..off as usize + big.len()].copy_from_slice(&big);
    assert!(
        std::fs::read(&img.0).unwrap() == file,
        "backing file after the big write"
    );
    // Bounds.
    let mut two = [0u8; 2];
    let e = dev.read_at(&mut two, size - 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
    assert_eq!(
        dev.write_at(&two, size).unwrap_err().kind(),
        ErrorKind::UnexpectedEof
    );
    dev.read_at(&mut two, size - 2).unwrap();
    assert_eq!(two[..], file[file.len() - 2..]);
    assert_eq!(dev.reconnections().0, 0);
}

#[test]
fn random_concurrent_io_512() {
    random_io(512);
}

#[test]
fn random_concurrent_io_4096() {
    random_io(4096);
}

/// Two writers stream distinct 16 KiB blocks; tgtd is SIGKILLed after 600
/// acknowledgements and restarted a second later on the same portal. Every
/// write must still succeed (those in flight are resent after the new
/// login), and every acknowledged block must be in the image.
#[test]
fn target_restart_mid_stream_loses_no_acknowledged_write() {
    const BLK: usize = 16 << 10;
    let img = image("restart", 64);
    let mut tgt = Tgt::start("restart", &img.0, Setup::default());
    let dev = Arc::new(IscsiDevice::connect(tgt.config(Duration::from_secs(30))).unwrap());
    let nblocks = (64 * MB) as usize / BLK;
    let block = |i: usize| {
        let mut b = content(i as u64, BLK);
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        b
    };
    let at_kill = stream_across_restart(
        &*dev,
        nblocks,
        BLK,
        &block,
        600,
        &mut tgt,
        |t| t.kill(),
        |t| t.spawn(),
    );
    dev.flush().unwrap();
    assert!(dev.is_connected());
    let (reconnects, resent) = dev.reconnections();
    assert!(reconnects >= 1, "never reconnected");
    assert!(resent >= 1, "nothing was in flight across the restart");
    eprintln!(
        "killed after {at_kill} acks: {reconnects} reconnections, {resent} commands resent, {} sessions",
        dev.sessions()
    );
    drop(dev);
    assert_blocks_in_image(&img.0, nblocks, BLK, &block);
}

fn expect_eio(r: std::io::Result<()>, what: &str, started: Instant, timeout: Duration) {
    let e = r.expect_err(what);
    assert_eq!(errno_of(&e), Some(libc::EIO), "{what}: {e}");
    let took = started.elapsed();
    assert!(
        took >= timeout - Duration::from_millis(200) && took < timeout * 2,
        "{what}: EIO after {took:?} (timeout {timeout:?}): {e}"
    );
}

/// tgtd killed (connections refused) or frozen (SIGSTOP: connection up, no
/// answers) longer than the 3 s timeout: EIO for reads, writes and flushes
/// in about the timeout; the device recovers once the target is back, and
/// dropping it never hangs.
#[test]
fn outage_longer_than_timeout_gives_eio_then_recovers() {
    let timeout = Duration::from_secs(3);
    let img = image("outage", 16);
    let mut tgt = Tgt::start("outage", &img.0, Setup::default());
    let dev = IscsiDevice::connect(tgt.config(timeout)).unwrap();
    let data = vec![0xabu8; 8192];
    dev.write_at(&data, 0).unwrap();
    // Killed.
    tgt.kill();
    let t = Instant::now();
    expect_eio(dev.write_at(&data, 4096), "write while down", t, timeout);
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    expect_eio(dev.read_at(&mut buf, 0), "read while down", t, timeout);
    let t = Instant::now();
    expect_eio(dev.flush(), "flush while down", t, timeout);
    assert!(!dev.is_connected());
    // Back: the background login picks it up.
    tgt.spawn();
    dev.write_at(&data, 8192).unwrap();
    assert!(dev.reconnections().0 >= 1);
    dev.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|b| *b == 0xab));
    // Frozen: commands go out but nothing comes back.
    tgt.signal(libc::SIGSTOP);
    let t = Instant::now();
    expect_eio(dev.read_at(&mut buf, 0), "read while frozen", t, timeout);
    let t = Instant::now();
    expect_eio(dev.write_at(&data, 0), "write while frozen", t, timeout);
    tgt.signal(libc::SIGCONT);
    dev.write_at(&data, 0).unwrap();
    dev.flush().unwrap();
    // Gone for good: dropping the device returns promptly.
    tgt.kill();
    let t = Instant::now();
    expect_eio(dev.write_at(&data, 0), "write after the end", t, timeout);
    let t = Instant::now();
    drop(dev);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "drop took {:?}",
        t.elapsed()
    );
}

/// Errors the target reports: a read-only LUN refuses a read-write open
/// with EROFS (gfs2-fuse then mounts read-only); a LUN turned read-only
/// under an open device fails writes with EROFS and the DATA PROTECT sense
/// in the message, at once and without dropping the session; reads past the
/// end of a backing file cut short fail with EIO and the sense data.
#[test]
fn target_errors_come_back_with_sense_data() {
    let img = image("err", 32);
    let tgt = Tgt::start(
        "err",
        &img.0,
        Setup {
            read_only: true,
            ..Setup::default()
        },
    );
    let e = spec::open(&tgt.url(""), false)
        .err()
        .expect("rw open of a read-only LUN");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let dev = spec::open(&tgt.url(""), true).unwrap();
    let mut b = vec![1u8; 4096];
    dev.read_at(&mut b, 0).unwrap();
    assert!(b.iter().all(|x| *x == 0));
    assert_eq!(
        dev.write_at(&b, 0).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    drop(dev);
    // Read-write, then the target turns the LUN read-only.
    tgt.set_read_only(false);
    let dev = IscsiDevice::connect(tgt.config(Duration::from_secs(30))).unwrap();
    dev.write_at(&[7u8; 4096], 4096).unwrap();
    tgt.set_read_only(true);
    let t = Instant::now();
    let e = dev.write_at(&[8u8; 4096], 4096).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(errno_of(&e), Some(libc::EROFS), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("WRITE(16)") && msg.contains("DATA PROTECTION"),
        "{msg}"
    );
    dev.read_at(&mut b, 4096).unwrap();
    assert_eq!(b, vec![7u8; 4096]);
    tgt.set_read_only(false);
    dev.write_at(&[9u8; 4096], 4096).unwrap();
    dev.flush().unwrap();
    // The backing file cut to 8 MiB under a 32 MiB LUN.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img.0)
        .unwrap()
        .set_len(8 * MB)
        .unwrap();
    let t = Instant::now();
    let e = dev.read_at(&mut b, 20 * MB).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(errno_of(&e), Some(libc::EIO), "{e}");
    assert!(
        e.to_string().contains("READ(16)") && e.to_string().contains("sense key"),
        "{e}"
    );
    // The session survives all that.
    dev.read_at(&mut b, 4096).unwrap();
    assert_eq!(b, vec![9u8; 4096]);
    assert_eq!(dev.reconnections().0, 0, "errors must not drop the session");
}

/// A FUSE mount over iSCSI (GFS2_ISCSI_TIMEOUT=4) writing and fsyncing files: tgtd
/// killed and restarted mid-workload goes unnoticed by the application;
/// frozen longer than the timeout, fsync fails with EIO in about the
/// timeout while the daemon stays up; once the target thaws the mount works
/// again, and after unmount the image is fsck-clean with every file that
/// was fsynced successfully intact.
#[test]
fn fuse_mount_rides_out_restart_and_fails_cleanly_on_a_frozen_target() {
    use std::io::Write;
    let img = image("ff", 256);
    let mut tgt = Tgt::start("ff", &img.0, Setup::default());
    our_mkfs(&tgt.url(""), 4096);
    let mnt = mountpoint("iscsi-ff");
    let url = tgt.url("");
    let mut child = mount_foreground(&url, &mnt.0, &[("GFS2_ISCSI_TIMEOUT", "4")]);
    let guard = MountGuard(mnt.0.clone());
    let write = |name: &str, data: &[u8]| -> std::io::Result<()> {
        let mut f = std::fs::File::create(mnt.0.join(name))?;
        f.write_all(data)?;
        f.sync_all()
    };
    for i in 0..16u64 {
        if i == 6 {
            tgt.kill();
            let m = mnt.0.clone();
            // Writes go on (and wait) while the target is away.
            let h = std::thread::spawn(move || {
                let mut f = std::fs::File::create(m.join("during")).unwrap();
                f.write_all(b"written while the target was down\n").unwrap();
                f.sync_all().unwrap();
            });
            std::thread::sleep(Duration::from_millis(500));
            tgt.spawn();
            h.join().unwrap();
        }
        write(&format!("f{i}"), &content(100 + i, 1 << 20)).unwrap();
    }
    tgt.signal(libc::SIGSTOP);
    let t = Instant::now();
    let r = write("frozen", &[7u8; 100_000]);
    let took = t.elapsed();
    let alive = child.try_wait().unwrap().is_none();
    tgt.signal(libc::SIGCONT);
    let e = r.expect_err("fsync succeeded on a frozen target");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        took >= Duration::from_millis(3500) && took < Duration::from_secs(12),
        "EIO after {took:?}"
    );
    assert!(alive, "gfs2-fuse died on the EIO");
    write("after", b"after\n").unwrap();
    assert!(std::fs::read(mnt.0.join("f3")).unwrap() == content(103, 1 << 20));
    unmount_and_wait(&mnt.0, child);
    std::mem::forget(guard);
    fsck_clean(&img.0, "after the outages");
    // Read back through a detached daemon (the usual `gfs2-fuse mount`,
    // which forks before it opens the device).
    drop(mnt);
    with_mount(Path::new(&tgt.url("")), "", "iscsi-ff2", |m| {
        for i in 0..16u64 {
            assert!(
                std::fs::read(m.join(format!("f{i}"))).unwrap() == content(100 + i, 1 << 20),
                "f{i} differs"
            );
        }
        assert_eq!(
            std::fs::read(m.join("during")).unwrap(),
            b"written while the target was down\n"
        );
        assert_eq!(std::fs::read(m.join("after")).unwrap(), b"after\n");
    });
    fsck_clean(&img.0, "after the detached mount");
}

/// Opening and closing in a loop: every cycle logs in, writes, logs out
/// promptly, and leaves no descriptor or thread behind.
#[test]
fn open_close_cycles_leak_nothing() {
    let img = image("cyc", 8);
    let tgt = Tgt::start("cyc", &img.0, Setup::default());
    // Our eventfds and I/O threads (other tests' devices come and go
    // meanwhile, a handful at a time; a leak would show 30).
    let eventfds = || {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("eventfd"))
            })
            .count()
    };
    let io_threads = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "iscsi-io")
            })
            .count()
    };
    // One warm-up cycle (libiscsi is loaded once per process).
    drop(spec::open(&tgt.url(""), false).unwrap());
    let (fds, threads) = (eventfds(), io_threads());
    for i in 0..30u8 {
        let t = Instant::now();
        let dev = spec::open(&tgt.url(""), false).unwrap();
        dev.write_at(&[i; 512], 512 * u64::from(i)).unwrap();
        dev.flush().unwrap();
        drop(dev);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "cycle {i}: {:?}",
            t.elapsed()
        );
    }
    assert!(
        eventfds() < fds + 10,
        "eventfds leak: {fds} -> {}",
        eventfds()
    );
    assert!(
        io_threads() < threads + 10,
        "I/O threads leak: {threads} -> {}",
        io_threads()
    );
    let file = std::fs::read(&img.0).unwrap();
    for i in 0..30usize {
        assert!(file[512 * i..512 * (i + 1)].iter().all(|b| *b == i as u8));
    }
}

/// `qemu-io` (another initiator: qemu's own libiscsi session, registered
/// with nothing) doing one command on the LUN; its output, and whether it
/// reported an error.
fn qemu_io(url: &str, cmd: &str) -> (bool, String) {
    let out = Command::new(package_tool("qemu-io", "qemu-utils"))
        .args(["-f", "raw", "-c", cmd, url])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // qemu-io exits 0 even when the command failed; it says so instead.
    let failed = !out.status.success() || text.contains("failed") || text.contains("error");
    (!failed, text)
}

/// Persistent reservations and the LUN's identity through our initiator,
/// as tgt enforces them and another initiator (qemu-io) meets them:
/// VPD page 0x83 gives a binary NAA designator of the logical unit; with
/// our key registered and an Exclusive Access - Registrants Only
/// reservation taken, READ KEYS / READ RESERVATION report exactly that,
/// the unregistered qemu-io can neither write nor read, our own writes go
/// on from every session of the pool; a second device of ours registers
/// and writes, then PREEMPT AND ABORT of its key by the holder makes its
/// next write fail with RESERVATION CONFLICT while the holder's data stays;
/// and releasing everything (CLEAR) lets qemu-io write again.
#[test]
fn persistent_reservations() {
    use gfs2fuse::dev::scsi::{self, PrOut, PrType};
    const EA_RO: PrType = PrType::ExclusiveAccessRegistrantsOnly;
    const KEY: u64 = 0x0100_0000_0000_0001;
    const OTHER: u64 = 0x0000_0000_0000_0042;
    let img = image("pr", 16);
    let tgt = Tgt::start("pr", &img.0, Setup::default());
    let url = tgt.url("");
    let a = spec::open(&url, false).unwrap();
    let lun = a.scsi().expect("an iSCSI device is a SCSI LUN");
    // Another device of ours on the LUN, opened before the registration
    // (as the second node of a daemon is).
    let early = spec::open(&url, false).unwrap();

    let d = scsi::designator(lun).unwrap();
    eprintln!("designator: {d:02x?}");
    assert_eq!((d.kind, d.code_set, d.association), (3, 1, 0));
    assert!(matches!(d.bytes.len(), 8 | 16), "{d:?}");
    assert!(
        scsi::supports(lun, EA_RO).unwrap(),
        "tgt offers Exclusive Access - Registrants Only"
    );
    assert_eq!(scsi::read_keys(lun).unwrap(), Vec::<u64>::new());
    assert_eq!(scsi::read_reservation(lun).unwrap(), None);
    let (ok, text) = qemu_io(&url, "write -P 0x11 0 4k");
    assert!(ok, "before any reservation qemu-io writes: {text}");

    scsi::register(lun, KEY).unwrap();
    scsi::reserve(lun, KEY, EA_RO).unwrap();
    let keys = scsi::read_keys(lun).unwrap();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| *k == KEY),
        "{keys:x?}"
    );
    assert_eq!(
        scsi::read_reservation(lun).unwrap(),
        Some(scsi::Reservation {
            key: KEY,
            ty: EA_RO
        })
    );
    // The unregistered initiator is shut out, reads included.
    let (ok, text) = qemu_io(&url, "write -P 0x22 0 4k");
    assert!(!ok, "an unregistered initiator wrote: {text}");
    let (ok, text) = qemu_io(&url, "read 0 4k");
    assert!(!ok, "an unregistered initiator read: {text}");
    assert!(std::fs::read(&img.0).unwrap()[..4096]
        .iter()
        .all(|b| *b == 0x11));

    // Our writes go on from every session (concurrent callers make the
    // pool log more in; each registers before it is used).
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let off = (1 << 20) + (t * 200 + i) * 512;
                    a.write_at(&[t as u8 + 1; 512], off).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let keys = scsi::read_keys(lun).unwrap();
    eprintln!("registrations of the holder's sessions: {}", keys.len());
    assert!(keys.iter().all(|k| *k == KEY), "{keys:x?}");

    early.write_at(&[0x78; 512], 4096 * 4).unwrap();
    let mut back = [0u8; 512];
    early.read_at(&mut back, 4096 * 4).unwrap();
    drop(early);
    // A device of ours opened later on the same LUN is registered too
    // (the nodes of one daemon each open the device): it writes.
    let c = spec::open(&url, false).unwrap();
    c.write_at(&[0x77; 512], 4096 * 3).unwrap();
    drop(c);
    // A second initiator of ours with a key of its own: devices share the
    // registration per LUN as named, so it names the portal differently.
    let url2 = url.replace("127.0.0.1", "localhost");
    let b = spec::open(&url2, false).unwrap();
    let blun = b.scsi().unwrap();
    assert!(b.write_at(&[0x33; 512], 8192).is_err(), "unregistered");
    scsi::register(blun, OTHER).unwrap();
    b.write_at(&[0x33; 512], 8192).unwrap();
    let keys = scsi::read_keys(lun).unwrap();
    assert_eq!(keys.iter().filter(|k| **k == OTHER).count(), 1, "{keys:x?}");
    // Fenced: its key preempted (and its commands aborted).
    // tgt 1.0.85 has no PREEMPT AND ABORT (its table leaves it out):
    // the fallback is PREEMPT.
    assert_eq!(
        scsi::preempt_abort(lun, KEY, OTHER, EA_RO).unwrap(),
        scsi::Preempted::RegistrationsOnly
    );
    let keys = scsi::read_keys(lun).unwrap();
    assert!(!keys.contains(&OTHER), "{keys:x?}");
    let e = b.write_at(&[0x44; 512], 8192).unwrap_err();
    assert!(e.to_string().contains("RESERVATION CONFLICT"), "{e}");
    // Preempting a key that is gone is refused by the target.
    let e = scsi::preempt_abort(lun, KEY, OTHER, EA_RO).unwrap_err();
    assert_eq!(errno_of(&e), Some(libc::EBADE), "{e}");
    a.write_at(&[0x55; 512], 8192).unwrap();
    a.flush().unwrap();
    let file = std::fs::read(&img.0).unwrap();
    assert!(file[8192..8704].iter().all(|b| *b == 0x55));
    assert!(file[4096 * 3..4096 * 3 + 512].iter().all(|b| *b == 0x77));
    for t in 0..6usize {
        let off = (1 << 20) + t * 200 * 512;
        assert!(file[off..off + 200 * 512].iter().all(|b| *b == t as u8 + 1));
    }

    // Everything released: the other initiator is back.
    lun.pr_out(PrOut::Clear, None, KEY, 0).unwrap();
    assert_eq!(scsi::read_keys(lun).unwrap(), Vec::<u64>::new());
    assert_eq!(scsi::read_reservation(lun).unwrap(), None);
    let (ok, text) = qemu_io(&url, "write -P 0x66 0 4k");
    assert!(ok, "after CLEAR: {text}");
}

/// The pNFS SCSI layout's reservation (`pnfs::scsi::Fencing`) on a tgt
/// LUN: taken with the server's key (READ RESERVATION says so); taken
/// again by a later "run" (another initiator of ours) while the first one
/// still holds it, as after a crash: the later one becomes the holder and
/// writes, the earlier one's registration is gone (its writes refused);
/// a stale client key is preempted at start; release gives it all up.
#[test]
fn scsi_layout_reservation_takeover() {
    use gfs2fuse::dev::scsi;
    use gfs2fuse::pnfs::scsi::{Fencing, RESERVATION, SERVER_KEY};
    let img = image("prt", 16);
    let tgt = Tgt::start("prt", &img.0, Setup::default());
    let url = tgt.url("");
    let first = spec::open(&url, false).unwrap();
    let f1 = Fencing::take(&first).unwrap().expect("an iSCSI LUN");
    let lun = first.scsi().unwrap();
    assert_eq!(
        scsi::read_reservation(lun).unwrap(),
        Some(scsi::Reservation {
            key: SERVER_KEY,
            ty: RESERVATION
        })
    );
    assert_eq!(f1.volume().designator, scsi::designator(lun).unwrap().bytes);
    // A client's registration from an earlier run, left behind.
    let client = spec::open(&url.replace("127.0.0.1", "localhost"), false).unwrap();
    scsi::register(client.scsi().unwrap(), 0x42).unwrap();
    // The next run of the server, as another initiator (the first one
    // never released: a crash). Devices of one process share registrations
    // per LUN as named, so this one names the portal a third way.
    let url2 = format!(
        "iscsi://127.1:{}/{}/1?initiator_per_session=1",
        tgt.port, tgt.iqn
    );
    let second = spec::open(&url2, false).unwrap();
    let f2 = Fencing::take(&second).unwrap().expect("an iSCSI LUN");
    let lun2 = second.scsi().unwrap();
    let keys = scsi::read_keys(lun2).unwrap();
    assert!(keys.iter().all(|k| *k == SERVER_KEY), "{keys:x?}");
    second.write_at(&[0x5a; 512], 0).unwrap();
    let e = first.write_at(&[0xa5; 512], 0).unwrap_err();
    assert!(e.to_string().contains("RESERVATION CONFLICT"), "{e}");
    let e = client.write_at(&[0xa5; 512], 0).unwrap_err();
    assert!(e.to_string().contains("RESERVATION CONFLICT"), "{e}");
    f2.release();
    assert_eq!(scsi::read_reservation(lun2).unwrap(), None);
    assert_eq!(scsi::read_keys(lun2).unwrap(), Vec::<u64>::new());
    drop(f1);
    second.flush().unwrap();
    assert!(std::fs::read(&img.0).unwrap()[..512]
        .iter()
        .all(|b| *b == 0x5a));
}
