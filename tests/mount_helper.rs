//! mount(8) through our helper: `mount -t fuse.gfs2-fuse`, an fstab line
//! (`mount -T FSTAB MOUNTPOINT`) and, installed as `mount.gfs2`,
//! `mount -t gfs2`, with mount(8)'s and systemd's options in the line. The
//! helper is installed into /sbin for the test (where mount(8) looks; a
//! helper already there is put back afterwards). Each mount must be listed
//! as `fuseblk.gfs2`, apply the generic flags mount(8) adds for `user`,
//! and its `umount` must leave the image clean for gfs2-utils'
//! `fsck.gfs2 -n` the moment it returns, with the data there on the next
//! mount.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gfs2-fuse")
}

/// `/sbin/NAME` as a symlink to the binary under test while alive; what
/// was there before comes back on drop.
struct Helper {
    path: PathBuf,
    saved: Option<PathBuf>,
}

impl Helper {
    fn install(name: &str) -> Helper {
        let path = Path::new("/sbin").join(name);
        let saved = if std::fs::symlink_metadata(&path).is_ok() {
            let s = path.with_extension(format!("saved-by-test-{}", std::process::id()));
            std::fs::rename(&path, &s).expect("set the existing helper aside");
            Some(s)
        } else {
            None
        };
        std::os::unix::fs::symlink(bin(), &path).expect("install the helper into /sbin");
        Helper { path, saved }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(s) = &self.saved {
            let _ = std::fs::rename(s, &self.path);
        }
    }
}

/// Unmounts (lazily) on drop if a failed check left the mount behind.
struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new(tool("umount")).arg("-l").arg(&self.0).status();
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run")
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The /proc/mounts line of `mnt`: (type, options).
fn mount_entry(mnt: &Path) -> Option<(String, String)> {
    let m = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    m.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(1) == mnt.to_str().as_ref()).then(|| (f[2].to_string(), f[3].to_string()))
    })
}

fn umount(mnt: &Path) {
    ok(&run(Command::new(tool("umount")).arg(mnt)), "umount");
    assert!(
        !is_mounted(mnt),
        "{} still mounted after umount",
        mnt.display()
    );
}

fn fsck_clean(img: &Path, when: &str) {
    let out = run(Command::new(tool("fsck.gfs2")).arg("-n").arg(img));
    assert_eq!(
        out.status.code(),
        Some(0),
        "fsck.gfs2 -n {when}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Some data: a small file, a 3 MiB file, a directory of 300 entries.
fn write_tree(mnt: &Path, tag: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let d = mnt.join(tag);
    std::fs::create_dir(&d).expect("mkdir");
    let mut big = Vec::with_capacity(3 << 20);
    let mut x = 0x1234_5678u32;
    while big.len() < 3 << 20 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        big.extend_from_slice(&x.to_le_bytes());
    }
    for (name, data) in [
        ("small", format!("hello {tag}\n").into_bytes()),
        ("big", big),
    ] {
        let p = d.join(name);
        std::fs::write(&p, &data).expect("write");
        out.push((p.strip_prefix(mnt).expect("inside").to_path_buf(), data));
    }
    for i in 0..300 {
        let p = d.join(format!("entry-{i}"));
        std::fs::write(&p, i.to_string()).expect("write entry");
        out.push((
            p.strip_prefix(mnt).expect("inside").to_path_buf(),
            i.to_string().into_bytes(),
        ));
    }
    out
}

fn check_tree(mnt: &Path, files: &[(PathBuf, Vec<u8>)]) {
    for (p, data) in files {
        let got = std::fs::read(mnt.join(p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(got == *data, "{} differs after remount", p.display());
    }
}

#[test]
fn mount_t_fstab_and_mount_gfs2_through_the_helper() {
    let img = mkfs(4096, 2, 256, "helper");
    let mnt = mountpoint("helper");
    let _fuse_helper = Helper::install("mount.fuse.gfs2-fuse");
    let _guard = Unmount(mnt.0.clone());

    // 1. mount -t fuse.gfs2-fuse, with options meant for mount(8) and
    // systemd, and `user` (mount(8) then adds nosuid,nodev,noexec).
    let out = run(Command::new(tool("mount"))
        .args(["-t", "fuse.gfs2-fuse"])
        .arg(&img.0)
        .arg(&mnt.0)
        .args([
            "-o",
            "_netdev,nofail,x-systemd.automount,x-systemd.device-timeout=10,user,acl",
        ]));
    ok(&out, "mount -t fuse.gfs2-fuse");
    let (ty, opts) = mount_entry(&mnt.0).expect("listed in /proc/mounts");
    assert_eq!(ty, "fuseblk.gfs2", "filesystem type in /proc/mounts");
    for f in ["nosuid", "nodev", "noexec"] {
        assert!(opts.split(',').any(|o| o == f), "{f} missing from {opts}");
    }
    let mut files = write_tree(&mnt.0, "first");
    // A metadata dump of the mounted filesystem may be taken, but restoring
    // one onto it is refused: the mount owns the device.
    let dump = mnt.0.with_extension("meta");
    let _dump_file = TempPath(dump.clone());
    ok(
        &run(Command::new(bin())
            .args(["savemeta", "-q"])
            .arg(&img.0)
            .arg(&dump)),
        "savemeta of the mounted image",
    );
    let out = run(Command::new(bin())
        .args(["restoremeta", "-q"])
        .arg(&dump)
        .arg(&img.0));
    assert_eq!(
        out.status.code(),
        Some(1),
        "restoremeta onto a mounted image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by pid"),
        "the refusal names the holder: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    umount(&mnt.0);
    fsck_clean(&img.0, "right after umount of the mount -t mount");

    // 2. An fstab line (mount -T FSTAB MOUNTPOINT).
    let fstab = mnt.0.with_extension("fstab");
    let _fstab_file = TempPath(fstab.clone());
    std::fs::write(
        &fstab,
        format!(
            "# gfs2-fuse test\n{} {} fuse.gfs2-fuse defaults,_netdev,noauto,nofail,\
             x-systemd.requires=network-online.target,comment=test,acl,commit=5 0 0\n",
            img.0.display(),
            mnt.0.display()
        ),
    )
    .expect("write fstab");
    let out = run(Command::new(tool("mount"))
        .arg("-T")
        .arg(&fstab)
        .arg(&mnt.0));
    ok(&out, "mount -T FSTAB");
    let (ty, opts) = mount_entry(&mnt.0).expect("listed");
    assert_eq!(ty, "fuseblk.gfs2");
    assert!(!opts.split(',').any(|o| o == "noexec"), "no user: {opts}");
    check_tree(&mnt.0, &files);
    files.extend(write_tree(&mnt.0, "second"));
    umount(&mnt.0);
    fsck_clean(&img.0, "right after umount of the fstab mount");

    // 3. Installed as mount.gfs2: `mount -t gfs2`.
    {
        let _gfs2_helper = Helper::install("mount.gfs2");
        let out = run(Command::new(tool("mount"))
            .args(["-t", "gfs2", "-o", "_netdev,acl"])
            .arg(&img.0)
            .arg(&mnt.0));
        ok(&out, "mount -t gfs2");
        let (ty, _) = mount_entry(&mnt.0).expect("listed");
        assert_eq!(ty, "fuseblk.gfs2");
        check_tree(&mnt.0, &files);
        std::fs::write(mnt.0.join("third"), b"third\n").expect("write");
        umount(&mnt.0);
    }
    fsck_clean(&img.0, "right after umount of the mount -t gfs2 mount");

    // 4. The helper's own flags: -f (fake) mounts nothing; an unknown
    // option is refused unless -s (sloppy).
    let helper = Path::new("/sbin/mount.fuse.gfs2-fuse");
    let out = run(Command::new(helper)
        .arg(&img.0)
        .arg(&mnt.0)
        .args(["-f", "-o", "rw"]));
    ok(&out, "helper -f");
    assert!(!is_mounted(&mnt.0), "-f (fake) mounted");
    let out = run(Command::new(helper)
        .arg(&img.0)
        .arg(&mnt.0)
        .args(["-o", "rw,bogus_option"]));
    assert!(!out.status.success(), "an unknown option was accepted");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bogus_option"),
        "the refusal names the option: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mnt.0));
    let out =
        run(Command::new(helper)
            .arg(&img.0)
            .arg(&mnt.0)
            .args(["-s", "-o", "rw,bogus_option"]));
    ok(&out, "helper -s with an unknown option");
    assert_eq!(
        std::fs::read(mnt.0.join("third")).expect("read"),
        b"third\n"
    );
    umount(&mnt.0);
    fsck_clean(&img.0, "after the sloppy mount");
}
