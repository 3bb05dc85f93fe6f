//! The `gfs2-fuse` binary and the FUSE adapter on real FUSE mounts of images
//! made at test time by gfs2-utils' mkfs.gfs2.

mod common;

use common::*;
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gfs2-fuse")
}

#[test]
fn binary_mounts_detaches_and_unmounts() {
    let img = mkfs(4096, 2, 256, "bin");
    let mnt = mountpoint("bin");
    let out = Command::new(bin())
        .arg("mount")
        .arg(&img.0)
        .arg(&mnt.0)
        .output()
        .unwrap();
    let _guard = MountGuard(mnt.0.clone());
    assert!(
        out.status.success(),
        "mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        is_mounted(&mnt.0),
        "not in /proc/mounts after the daemon reported success"
    );
    // The root directory of a fresh filesystem: empty, mode from mkfs.
    let md = std::fs::metadata(&mnt.0).unwrap();
    assert!(md.is_dir());
    let names: Vec<_> = std::fs::read_dir(&mnt.0).unwrap().collect();
    assert!(names.is_empty(), "{names:?}");
    // statfs through FUSE equals gfs2-utils' statfs file view: total blocks
    // of the filesystem's resource groups, as `gfs2_edit -p statfs` prints.
    let st = nix_statvfs(&mnt.0);
    let edit = Command::new(tool("gfs2_edit"))
        .args(["-p", "statfs"])
        .arg(&img.0)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&edit.stdout);
    let total = field(&text, "sc_total");
    let free = field(&text, "sc_free");
    assert_eq!(st.0, total, "f_blocks vs sc_total\n{text}");
    assert_eq!(st.1, free, "f_bfree vs sc_free\n{text}");
}

#[test]
fn mount_fuse3_form_and_errors_before_detaching() {
    // A file that is not GFS2: the mount must fail with a clear message and
    // a non-zero exit, without leaving a mount behind.
    let bad = std::env::temp_dir().join(format!("notgfs2-{}.img", std::process::id()));
    std::fs::write(&bad, vec![0u8; 1 << 20]).unwrap();
    let bad = TempPath(bad);
    let mnt = mountpoint("bad");
    let out = Command::new(bin())
        .arg(&bad.0)
        .arg(&mnt.0)
        .args(["-o", "rw,nosuid,nodev"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a GFS2 filesystem"), "{err}");
    assert!(!is_mounted(&mnt.0));
    // Unknown options are refused.
    let img = mkfs(1024, 1, 64, "opts");
    let out = Command::new(bin())
        .arg(&img.0)
        .arg(&mnt.0)
        .args(["-o", "bogus_option"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!is_mounted(&mnt.0));
    // The mount.fuse3 form with kernel-style options works.
    let _guard = mount_ok(
        &[
            img.0.as_os_str(),
            mnt.0.as_os_str(),
            "-o".as_ref(),
            "rw,dev,suid,lockproto=lock_nolock,hostdata=jid=0,acl".as_ref(),
        ],
        &mnt.0,
    );
    assert!(is_mounted(&mnt.0));
    // A read-write mount: files can be created and read back.
    std::fs::write(mnt.0.join("x"), b"written").unwrap();
    assert_eq!(std::fs::read(mnt.0.join("x")).unwrap(), b"written");
}

/// Runs `gfs2-fuse ARGS...`, which must mount `mnt`; the guard unmounts it
/// (also when the mount failed half-way).
fn mount_ok(args: &[&std::ffi::OsStr], mnt: &std::path::Path) -> MountGuard {
    let out = Command::new(bin()).args(args).output().unwrap();
    let guard = MountGuard(mnt.to_path_buf());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    guard
}

fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name)).then(|| w.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{name} not in gfs2_edit output:\n{text}"))
}

fn nix_statvfs(p: &std::path::Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    (s.f_blocks, s.f_bfree)
}

#[test]
fn sigterm_unmounts_cleanly() {
    // A foreground daemon killed politely (SIGTERM, as systemd or `kill`
    // does) must unmount, flush and exit 0, leaving no stale mount behind
    // and a filesystem gfs2-utils finds clean.
    let img = mkfs(4096, 1, 128, "sigterm");
    let mnt = mountpoint("sigterm");
    let mut child = Command::new(bin())
        .arg("mount")
        .arg("-f")
        .arg(&img.0)
        .arg(&mnt.0)
        .spawn()
        .unwrap();
    let _guard = MountGuard(mnt.0.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !is_mounted(&mnt.0) {
        assert!(std::time::Instant::now() < deadline, "never mounted");
        assert!(child.try_wait().unwrap().is_none(), "daemon exited early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(std::fs::metadata(&mnt.0).unwrap().is_dir());
    // Unflushed changes must survive the signal too.
    std::fs::create_dir(mnt.0.join("made_before_sigterm")).unwrap();
    std::fs::write(mnt.0.join("made_before_sigterm/f"), b"data").unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "daemon after SIGTERM: {status:?}");
    assert!(!is_mounted(&mnt.0), "still mounted after SIGTERM");
    let fsck = Command::new(tool("fsck.gfs2"))
        .arg("-n")
        .arg(&img.0)
        .output()
        .unwrap();
    assert_eq!(
        fsck.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// O_DIRECT: aligned writes and reads through a direct handle work, a
/// buffered reader sees them at once, and they are on disk after unmount
/// (fsck clean, the bytes read back by a fresh mount).
#[test]
fn o_direct_reads_and_writes() {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let img = mkfs(4096, 1, 64, "odirect");
    // An aligned buffer: O_DIRECT wants memory aligned to the block size.
    let mut raw = vec![0u8; 3 * 4096 + 4096];
    let off = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[off..off + 3 * 4096];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    let want = buf.to_vec();
    with_mount(&img.0, "", "odirect", |m| {
        let p = m.join("direct");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p)
            .expect("open O_DIRECT");
        f.write_all_at(buf, 4096).expect("direct write");
        let mut back = vec![0u8; 4096 * 4 + 4096];
        let o = back.as_ptr().align_offset(4096);
        let rb = &mut back[o..o + 4 * 4096];
        f.read_exact_at(rb, 0).expect("direct read");
        assert!(rb[..4096].iter().all(|b| *b == 0), "hole before the data");
        assert_eq!(&rb[4096..], &want[..], "direct read back");
        let buffered = std::fs::read(&p).expect("buffered read");
        assert_eq!(&buffered[4096..], &want[..], "buffered reader");
    });
    fsck_clean(&img.0, "after O_DIRECT writes");
    with_mount(&img.0, "", "odirect2", |m| {
        let got = std::fs::read(m.join("direct")).expect("read after remount");
        assert_eq!(&got[4096..], &want[..], "after remount");
    });
}

/// Every name of a directory listed through `readdir(3)` on `dir`, with the
/// `telldir` position after each, until the end.
struct Dir(*mut libc::DIR);
impl Dir {
    fn open(p: &std::path::Path) -> Dir {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; the handle is closed on drop.
        let d = unsafe { libc::opendir(c.as_ptr()) };
        assert!(!d.is_null(), "opendir {}", p.display());
        Dir(d)
    }
    /// The next name and the position after it.
    fn next(&mut self) -> Option<(String, i64)> {
        // SAFETY: an open DIR; the entry is copied before the next call.
        unsafe {
            *libc::__errno_location() = 0;
            let e = libc::readdir(self.0);
            if e.is_null() {
                let err = *libc::__errno_location();
                assert_eq!(err, 0, "readdir failed: errno {err}");
                return None;
            }
            let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr())
                .to_string_lossy()
                .into_owned();
            Some((name, libc::telldir(self.0)))
        }
    }
    fn seek(&mut self, pos: i64) {
        // SAFETY: a position telldir returned on this handle.
        unsafe { libc::seekdir(self.0, pos) }
    }
    fn rewind(&mut self) {
        // SAFETY: an open DIR.
        unsafe { libc::rewinddir(self.0) }
    }
    fn names(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next().map(|(n, _)| n)).collect()
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: closing the handle opened in `open`, once.
        unsafe { libc::closedir(self.0) };
    }
}

/// A directory big enough to be listed on the daemon's background thread
/// (several thousand entries, many leaves, names of varied length): every
/// name once, positions from telldir stable when seeked back to, rewinddir
/// sees a file created meanwhile, four listers at once agree, handles
/// closed part way through do not keep the daemon from unmounting, and
/// gfs2-utils finds the image clean.
#[test]
fn big_directory_listing() {
    let img = mkfs(4096, 1, 256, "biglist");
    let n = 9000usize;
    let name = |i: usize| format!("{}_{i}", "n".repeat(1 + i % 40));
    let mut want: Vec<String> = (0..n).map(name).collect();
    with_mount(&img.0, "", "biglist", |mnt| {
        let d = mnt.join("big");
        std::fs::create_dir(&d).unwrap();
        for w in &want {
            std::fs::File::create(d.join(w)).unwrap();
        }
        let mut expect = want.clone();
        expect.extend([".".to_string(), "..".to_string()]);
        expect.sort();

        let mut h = Dir::open(&d);
        let mut got = Vec::new();
        let mut marks = Vec::new();
        while let Some((nm, pos)) = h.next() {
            got.push(nm);
            if got.len() % 1500 == 0 {
                marks.push((got.len(), pos));
            }
        }
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, expect, "first listing");
        // Back to positions part way through: the same names follow.
        for (at, pos) in marks.into_iter().rev() {
            h.seek(pos);
            let again: Vec<String> = (0..200).filter_map(|_| h.next().map(|x| x.0)).collect();
            let end = (at + 200).min(got.len());
            assert_eq!(again, got[at..end], "after seekdir to entry {at}");
        }
        // A fresh walk on rewind sees a file created meanwhile.
        std::fs::File::create(d.join("late")).unwrap();
        h.rewind();
        let mut after = h.names();
        after.sort();
        expect.push("late".into());
        expect.sort();
        assert_eq!(after, expect, "after rewinddir");
        drop(h);

        // Listers in parallel, each on its own handle.
        let all: Vec<Vec<String>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut v = Dir::open(&d).names();
                        v.sort();
                        v
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for v in &all {
            assert_eq!(v, &expect, "parallel lister");
        }
        // Handles dropped after a few entries, while their walk runs.
        for _ in 0..20 {
            let mut h = Dir::open(&d);
            for _ in 0..5 {
                assert!(h.next().is_some());
            }
        }
        want.push("late".into());
    });
    fsck_clean(&img.0, "after the listings");
    // Our own fresh mount lists the same names.
    with_mount(&img.0, "ro", "biglist2", |mnt| {
        let mut v = Dir::open(&mnt.join("big")).names();
        v.retain(|x| x != "." && x != "..");
        v.sort();
        want.sort();
        assert_eq!(v, want, "after remount");
    });
}

/// `gfs2-fuse glocks MOUNTPOINT` lists the serving node's glocks: the
/// inode glock of a file just created there (held exclusively, cached with
/// no holder), its journal lock and the live lock.
#[test]
fn glock_dump_of_a_mounted_filesystem() {
    use std::os::unix::fs::MetadataExt;
    let img = mkfs(4096, 2, 128, "glocks");
    with_mount(&img.0, "", "glocks", |mnt| {
        std::fs::write(mnt.join("f"), b"x").unwrap();
        let ino = std::fs::metadata(mnt.join("f")).unwrap().ino();
        let out = Command::new(bin()).arg("glocks").arg(mnt).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = |name: &str| {
            text.lines()
                .find(|l| l.contains(&format!(" n:{name} ")))
                .unwrap_or_else(|| panic!("no glock {name} in:\n{text}"))
                .to_string()
        };
        let f = line(&format!("2/{ino:x}"));
        assert!(f.starts_with("G: s:EX ") && f.contains(" h:0/0 "), "{f}");
        let j = line("9/0");
        // Held exclusively by the mount itself, never cached (flag n).
        assert!(
            j.starts_with("G: s:EX ") && j.contains(" f:n ") && j.contains(" h:0/1 "),
            "{j}"
        );
        assert!(line("1/1").starts_with("G: s:SH "), "{text}");
        // Not a mount point of ours: a clear refusal.
        let out = Command::new(bin()).arg("glocks").arg("/").output().unwrap();
        assert_eq!(out.status.code(), Some(1));
    });
}

/// We clear privileges ourselves (`FUSE_HANDLE_KILLPRIV_V2`), so the kernel
/// does not ask for `security.capability` before every write: a write by a
/// user without `CAP_FSETID` clears set-user-ID and (group-executable)
/// set-group-ID, a write by root keeps them, any write drops the file's
/// capabilities, a truncation by such a user and a `chown` clear them too,
/// exactly as the kernel does on a local filesystem.
#[test]
fn writes_truncation_and_chown_clear_privileges() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let img = mkfs(4096, 1, 128, "killpriv");
    let mnt = mountpoint("killpriv");
    let _guard = mount_ok(
        &[
            "mount".as_ref(),
            img.0.as_os_str(),
            mnt.0.as_os_str(),
            "-o".as_ref(),
            "allow_other".as_ref(),
        ],
        &mnt.0,
    );
    let f = |n: &str| mnt.0.join(n);
    let make = |n: &str, mode: u32| {
        std::fs::write(f(n), b"0123456789").unwrap();
        std::fs::set_permissions(f(n), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    make("user-write", 0o6777);
    make("user-write-sgid-noexec", 0o2767);
    make("root-write", 0o6777);
    make("user-trunc", 0o4777);
    make("chown", 0o4755);
    make("caps", 0o755);
    // A capability set (VFS_CAP_REVISION_2, cap_net_raw permitted).
    let caps: [u8; 20] = [
        0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    xattr_set(&f("caps"), "security.capability", &caps);
    // As an unprivileged user (no CAP_FSETID).
    let user = |script: &str| {
        let st = Command::new("setpriv")
            .args([
                "--reuid=1000",
                "--regid=1000",
                "--clear-groups",
                "sh",
                "-c",
                script,
            ])
            .current_dir(&mnt.0)
            .status()
            .expect("setpriv (util-linux)");
        assert!(st.success(), "{script}");
    };
    user("printf x >> user-write && printf x >> user-write-sgid-noexec && : > user-trunc");
    std::fs::OpenOptions::new()
        .append(true)
        .open(f("root-write"))
        .and_then(|mut o| std::io::Write::write_all(&mut o, b"x"))
        .unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(f("caps"))
        .and_then(|mut o| std::io::Write::write_all(&mut o, b"x"))
        .unwrap();
    std::os::unix::fs::chown(f("chown"), Some(1000), None).unwrap();
    // Past the attribute TTL: the modes as stored.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let mode = |n: &str| std::fs::metadata(f(n)).unwrap().mode() & 0o7777;
    assert_eq!(
        mode("user-write"),
        0o0777,
        "a user's write kept set-ID bits"
    );
    assert_eq!(
        mode("user-write-sgid-noexec"),
        0o2767,
        "set-group-ID without group execute is kept"
    );
    assert_eq!(
        mode("root-write"),
        0o6777,
        "root's write cleared set-ID bits"
    );
    assert_eq!(
        mode("user-trunc"),
        0o0777,
        "a user's truncation kept set-user-ID"
    );
    assert_eq!(std::fs::metadata(f("user-trunc")).unwrap().len(), 0);
    assert_eq!(mode("chown"), 0o0755, "chown kept set-user-ID");
    assert_eq!(std::fs::metadata(f("chown")).unwrap().uid(), 1000);
    assert_eq!(
        xattr_get(&f("caps"), "security.capability"),
        None,
        "a write kept the file's capabilities"
    );
    assert_eq!(std::fs::read(f("user-write")).unwrap(), b"0123456789x");
}
