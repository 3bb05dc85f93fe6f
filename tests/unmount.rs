//! Data safety at the edges: a `lock_nolock` node owns its device alone, and
//! an unmount returns only once the disk is clean.
//!
//! Oracles: gfs2-utils' `fsck.gfs2 -n` run the instant the unmount returns,
//! the kernel's GFS2 in a VM mounting images of some rounds and listing the
//! tree we listed through FUSE before unmounting, and the refusals of a
//! second mount, our mkfs and our fsck.

mod common;

use common::kvm::{host_manifest, run_vm, section};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loop device over an image, detached on drop.
struct Loop(PathBuf);
impl Loop {
    fn attach(img: &Path) -> Loop {
        let out = Command::new(tool("losetup"))
            .args(["-f", "--show"])
            .arg(img)
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }
}
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new(tool("losetup"))
            .arg("-d")
            .arg(&self.0)
            .status();
    }
}

/// Mount `dev` (detached daemon); the mount's error output on failure.
fn try_mount(dev: &str, mnt: &Path) -> Result<(), String> {
    let out = Command::new(gfs2_fuse())
        .arg("mount")
        .arg(dev)
        .arg(mnt)
        .output()
        .expect("gfs2-fuse");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The filesystem type /proc/self/mountinfo gives the mount at `mnt`.
fn fstype(mnt: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mnt.to_str().unwrap();
    info.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        (f.get(4) == Some(&want)).then(|| f[sep + 1].to_string())
    })
}

/// Run `cmd`, returning (exit code, stdout + stderr).
fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("command");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A second `lock_nolock` mount of a device a node holds is refused with a
/// message naming the holder; our mkfs and repairing fsck are refused too,
/// `fsck -n` still reads it; the first node keeps working and leaves a
/// clean filesystem.
fn one_owner(dev: &str, fsck_target: &Path, tag: &str) {
    let m1 = mountpoint(&format!("{tag}1"));
    let m2 = mountpoint(&format!("{tag}2"));
    try_mount(dev, &m1.0).unwrap_or_else(|e| panic!("{tag}: first mount: {e}"));
    let g1 = MountGuard(m1.0.clone());
    assert_eq!(fstype(&m1.0).as_deref(), Some("fuseblk.gfs2"), "{tag}");
    std::fs::write(m1.0.join("before"), b"first node\n").unwrap();

    let err = try_mount(dev, &m2.0).expect_err("a second lock_nolock mount succeeded");
    assert!(!is_mounted(&m2.0), "{tag}: second mount left behind");
    assert!(
        err.contains("is in use by pid") && err.contains("gfs2-fuse mount"),
        "{tag}: the refusal does not name the holder: {err}"
    );

    let (rc, out) = run(Command::new(mkfs_bin()).args(["-O", "-p", "lock_nolock", dev]));
    assert_eq!(rc, 1, "{tag}: our mkfs on a held device: {out}");
    assert!(out.contains("in use"), "{tag}: {out}");
    let (rc, out) = run(Command::new(fsck_bin()).arg("-y").arg(dev));
    assert!(
        rc == 8 || rc == 16,
        "{tag}: our fsck -y on a held device: {rc} {out}"
    );
    assert!(out.contains("mounted") || out.contains("busy"), "{out}");
    // -n reads a live node's disk (nothing flushed yet may show as a dirty
    // journal, exit 4), as gfs2-utils' -n does.
    let (rc, out) = run(Command::new(fsck_bin()).arg("-n").arg(dev));
    assert!(
        rc == 0 || rc == 4,
        "{tag}: our fsck -n on a held device: {rc} {out}"
    );
    assert!(
        out.contains("Checking bitmaps"),
        "{tag}: fsck -n did not run: {out}"
    );

    // The first node was not disturbed.
    std::fs::write(m1.0.join("after"), b"still mine\n").unwrap();
    assert_eq!(std::fs::read(m1.0.join("before")).unwrap(), b"first node\n");
    assert_eq!(std::fs::read(m1.0.join("after")).unwrap(), b"still mine\n");
    let st = Command::new(tool("umount")).arg(&m1.0).status().unwrap();
    assert!(st.success(), "{tag}: umount");
    std::mem::forget(g1);
    fsck_clean(
        fsck_target,
        &format!("{tag}: after the refused second mount"),
    );
    // Once unmounted, the device is free again at once.
    try_mount(dev, &m2.0).unwrap_or_else(|e| panic!("{tag}: remount: {e}"));
    let g2 = MountGuard(m2.0.clone());
    assert_eq!(std::fs::read(m2.0.join("after")).unwrap(), b"still mine\n");
    drop(g2);
    fsck_clean(fsck_target, &format!("{tag}: after the remount"));
}

#[test]
fn one_owner_per_image_file() {
    let img = mkfs(4096, 2, 256, "own-img");
    one_owner(img.0.to_str().unwrap(), &img.0, "own-img");
}

#[test]
fn one_owner_per_block_device() {
    let img = mkfs(4096, 2, 256, "own-blk");
    let lo = Loop::attach(&img.0);
    one_owner(lo.0.to_str().unwrap(), &lo.0, "own-blk");
    // The kernel's claim of a fuseblk-mounted block device also keeps
    // gfs2-utils' mkfs (O_EXCL) away.
    let m = mountpoint("own-blk3");
    try_mount(lo.0.to_str().unwrap(), &m.0).unwrap();
    let g = MountGuard(m.0.clone());
    let (rc, out) = run(Command::new(tool("mkfs.gfs2"))
        .args(["-O", "-p", "lock_nolock"])
        .arg(&lo.0));
    assert_ne!(rc, 0, "gfs2-utils' mkfs formatted a mounted device: {out}");
    assert!(out.contains("busy"), "{out}");
    drop(g);
    fsck_clean(&lo.0, "own-blk: after gfs2-utils' refused mkfs");
}

/// Write a few hundred files under `d{round}` (and remove the previous
/// round's directory), so that every round's unmount has a log to flush:
/// new inodes, directory growth, frees, renames, links and xattrs.
fn round_workload(mnt: &Path, round: u64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ round.wrapping_mul(0x1000_0001));
    let d = mnt.join(format!("d{round}"));
    for sub in 0..4 {
        std::fs::create_dir_all(d.join(format!("s{sub}"))).unwrap();
    }
    let mut buf = vec![0u8; 24 << 10];
    for i in 0..240 {
        let len = rng.below(buf.len() as u64) as usize;
        fill(&mut rng, &mut buf[..len]);
        let p = d.join(format!("s{}/f{i}", i % 4));
        std::fs::write(&p, &buf[..len]).unwrap();
    }
    std::fs::rename(d.join("s0/f0"), d.join("s1/moved")).unwrap();
    std::fs::hard_link(d.join("s2/f2"), d.join("s3/link")).unwrap();
    std::os::unix::fs::symlink("s1/moved", d.join("sym")).unwrap();
    for i in (5..240).step_by(17) {
        std::fs::remove_file(d.join(format!("s{}/f{i}", i % 4))).unwrap();
    }
    let c = std::ffi::CString::new(d.join("s1/moved").to_str().unwrap()).unwrap();
    let v = format!("round {round}");
    // SAFETY: NUL-terminated name and value buffers that outlive the call.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"user.round".as_ptr(),
            v.as_ptr().cast(),
            v.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
    use std::io::Write;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(mnt.join("rounds.log"))
        .unwrap();
    writeln!(log, "round {round}").unwrap();
    if round > 0 {
        let prev = mnt.join(format!("d{}", round - 1));
        if prev.exists() {
            std::fs::remove_dir_all(prev).unwrap();
        }
    }
}

/// How a round unmounts: each is a documented way.
#[derive(Clone, Copy, Debug)]
enum Unmount {
    /// `umount MNT` (root; a fuseblk mount waits).
    Umount,
    /// `fusermount3 -u MNT`.
    Fusermount,
    /// `gfs2-fuse umount MNT` (waits for the daemon on any mount).
    Ours,
}

fn unmount_with(how: Unmount, mnt: &Path) {
    let st = match how {
        Unmount::Umount => Command::new(tool("umount")).arg(mnt).status(),
        Unmount::Fusermount => Command::new(tool("fusermount3"))
            .arg("-u")
            .arg(mnt)
            .status(),
        Unmount::Ours => Command::new(gfs2_fuse()).arg("umount").arg(mnt).status(),
    }
    .unwrap();
    assert!(st.success(), "{how:?} of {} failed", mnt.display());
}

/// `rounds` rounds of mount, write, unmount, and at once gfs2-utils'
/// `fsck.gfs2 -n` of `check` (the image or device as the disk holds it).
/// Returns copies of the image after the rounds in `keep`, with the tree
/// we listed through FUSE before those unmounts.
fn rounds(
    dev: &str,
    check: &Path,
    backing: &Path,
    how: Unmount,
    n: u64,
    keep: &[u64],
    tag: &str,
) -> Vec<(TempPath, Vec<String>)> {
    let mnt = mountpoint(tag);
    let mut kept = Vec::new();
    let t0 = Instant::now();
    for r in 0..n {
        try_mount(dev, &mnt.0).unwrap_or_else(|e| panic!("{tag} round {r}: mount: {e}"));
        let guard = MountGuard(mnt.0.clone());
        round_workload(&mnt.0, r);
        let manifest = keep.contains(&r).then(|| host_manifest(&mnt.0));
        unmount_with(how, &mnt.0);
        std::mem::forget(guard);
        assert!(!is_mounted(&mnt.0), "{tag} round {r}: still mounted");
        fsck_clean(check, &format!("{tag} round {r}, right after {how:?}"));
        if let Some(m) = manifest {
            let copy =
                std::env::temp_dir().join(format!("gfs2t-{tag}-r{r}-{}.img", std::process::id()));
            let st = Command::new("cp")
                .arg("--sparse=always")
                .arg(backing)
                .arg(&copy)
                .status()
                .unwrap();
            assert!(st.success());
            kept.push((TempPath(copy), m));
        }
    }
    eprintln!(
        "{tag}: {n} rounds in {:.1}s, every one fsck-clean at once",
        t0.elapsed().as_secs_f64()
    );
    kept
}

/// qemu-nbd serving `img` on a Unix socket, killed on drop.
struct Nbd(Child, PathBuf);
impl Nbd {
    fn start(img: &Path) -> Nbd {
        let sock = img.with_extension("sock");
        let _ = std::fs::remove_file(&sock);
        // One client at a time (-e 1): a round's mount connects only if the
        // previous unmount really let go of the export.
        let child = Command::new(package_tool("qemu-nbd", "qemu-utils"))
            .args(["-f", "raw", "-x", "exp", "-e", "1", "-t", "-k"])
            .arg(&sock)
            .arg(img)
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-nbd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "qemu-nbd never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nbd(child, sock)
    }
    fn spec(&self) -> String {
        format!("nbd+unix:///exp?socket={}", self.1.display())
    }
}
impl Drop for Nbd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

/// 50 rounds on an image file, on a block device and over NBD, each
/// unmounted a documented way and checked by gfs2-utils the instant the
/// unmount returns; images of three rounds of each mounted by the kernel's
/// GFS2 (one VM for all), which must list the tree we listed.
#[test]
fn fifty_unmounts_each_leave_a_clean_disk() {
    const N: u64 = 50;
    let keep = [9, 29, 49];
    let mut kept = Vec::new();

    let img = mkfs(4096, 1, 256, "rnd-img");
    kept.extend(rounds(
        img.0.to_str().unwrap(),
        &img.0,
        &img.0,
        Unmount::Umount,
        N,
        &keep,
        "rnd-img",
    ));

    let bimg = mkfs(4096, 1, 256, "rnd-blk");
    {
        let lo = Loop::attach(&bimg.0);
        kept.extend(rounds(
            lo.0.to_str().unwrap(),
            &lo.0,
            &bimg.0,
            Unmount::Fusermount,
            N,
            &keep,
            "rnd-blk",
        ));
    }

    let nimg = mkfs(4096, 1, 256, "rnd-nbd");
    {
        let nbd = Nbd::start(&nimg.0);
        kept.extend(rounds(
            &nbd.spec(),
            &nimg.0,
            &nimg.0,
            Unmount::Ours,
            N,
            &keep,
            "rnd-nbd",
        ));
    }

    let mut w = String::new();
    for i in 0..kept.len() {
        w += &gfs2_oracle::sh::manifest(&gfs2_oracle::sh::dev(i), &format!("k{i}"));
    }
    let disks: Vec<&Path> = kept.iter().map(|(p, _)| p.0.as_path()).collect();
    let console = run_vm(&w, &disks);
    assert!(
        !console.contains("withdraw"),
        "the kernel withdrew:\n{console}"
    );
    for (i, (_, ours)) in kept.iter().enumerate() {
        let k = section(&console, &format!("k{i}"));
        compare_manifests(
            &without_rdev(&k),
            &without_rdev(ours),
            &format!("kernel's view of kept image {i}"),
        );
    }
}

/// Without the privilege to mount fuseblk, the mount is plain FUSE, whose
/// `umount` returns early; `gfs2-fuse umount` waits for the daemon and
/// reports a clean disk, which gfs2-utils confirms at once.
#[test]
fn unprivileged_mount_and_gfs2_fuse_umount() {
    // Users reach /dev/fuse on Debian (mode 0666, from udev's default
    // rules); this sandbox creates it 0600.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata("/dev/fuse").unwrap().permissions().mode();
        if mode & 0o666 != 0o666 {
            std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666))
                .expect("chmod 0666 /dev/fuse");
        }
    }
    let img = mkfs(4096, 1, 128, "unpriv");
    let mnt = mountpoint("unpriv");
    let nobody = "65534";
    // The user's own root directory, given by root through a mount of ours.
    try_mount(img.0.to_str().unwrap(), &mnt.0).unwrap();
    let st = Command::new("chown")
        .arg(format!("{nobody}:{nobody}"))
        .arg(&mnt.0)
        .status()
        .unwrap();
    assert!(st.success());
    unmount_with(Unmount::Umount, &mnt.0);
    for p in [&img.0, &mnt.0] {
        let st = Command::new("chown")
            .arg(format!("{nobody}:{nobody}"))
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let as_nobody = |args: &[&std::ffi::OsStr]| {
        let mut c = Command::new(tool("setpriv"));
        c.args(["--reuid", nobody, "--regid", nobody, "--clear-groups", "--"])
            .arg(gfs2_fuse())
            .args(args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir());
        c
    };
    let (rc, out) = run(&mut as_nobody(&[
        "mount".as_ref(),
        img.0.as_os_str(),
        mnt.0.as_os_str(),
    ]));
    assert_eq!(rc, 0, "unprivileged mount: {out}");
    let guard = MountGuard(mnt.0.clone());
    assert_eq!(fstype(&mnt.0).as_deref(), Some("fuse.gfs2"));
    // Only the mounting user may enter a plain FUSE mount (no allow_other).
    let st = Command::new(tool("setpriv"))
        .args(["--reuid", nobody, "--regid", nobody, "--clear-groups", "--"])
        .args(["sh", "-ec"])
        .arg(
            "cp -r /usr/share/doc/apt \"$1/apt\"; mkdir \"$1/d\"; i=0; \
             while [ $i -lt 300 ]; do echo $i > \"$1/d/f$i\"; i=$((i+1)); done; \
             rm \"$1\"/d/f1*; mv \"$1/d/f0\" \"$1/apt/\"",
        )
        .arg("sh")
        .arg(&mnt.0)
        .status()
        .unwrap();
    assert!(st.success(), "workload as an unprivileged user");
    let (rc, out) = run(&mut as_nobody(&["umount".as_ref(), mnt.0.as_os_str()]));
    assert_eq!(rc, 0, "gfs2-fuse umount: {out}");
    std::mem::forget(guard);
    assert!(!is_mounted(&mnt.0));
    fsck_clean(&img.0, "right after gfs2-fuse umount of a plain FUSE mount");
    // Not a gfs2-fuse mount point: a clear refusal.
    let (rc, out) = run(Command::new(gfs2_fuse()).arg("umount").arg(&mnt.0));
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("not a gfs2-fuse mount point"), "{out}");
}
