//! gfs2_grow and gfs2_jadd on a filesystem gfs2-fuse has mounted, with the
//! daemon (which makes the change) killed by SIGKILL amid it: at chosen
//! device writes of the change (the daemon's kill hook, see
//! `gfs2fuse::dev::killpoint`), and once right after it answered the tool.
//! After each kill the FUSE mount is gone (lazily unmounted) and:
//! - `fsck.gfs2 -n` accepts the image unless its journal is dirty; a mount
//!   replays the journal and then it is clean; gfs2-utils' `fsck.gfs2 -y`
//!   and ours repair it; every file written before the change reads back
//!   the same after each (checksums);
//! - a daemon mounting it again serves the same files, the tool run again
//!   online completes (or, for a grow already done, finds nothing to add),
//!   the unmount leaves a clean journal, `fsck.gfs2 -n` is clean and the
//!   change is there (the rindex reaches the device's end; a usable new
//!   journal).
//!
//! A kill after the daemon's answer must find the change made: an `ok` is
//! durable.

mod common;

use common::{after_crash, assert_clean, daemon, mount, points, s, seed};
use gfs2_oracle::{mkfs, Scratch};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const GROW: &str = env!("CARGO_BIN_EXE_gfs2_grow");
const JADD: &str = env!("CARGO_BIN_EXE_gfs2_jadd");
const KILL_AFTER: &str = gfs2fuse::dev::killpoint::DAEMON_KILL_AFTER;
const COUNT: &str = gfs2fuse::dev::killpoint::DAEMON_COUNT;

/// Written through the FUSE mount before the tool runs: the first set
/// when the base image is made (then unmounted), the second by the daemon
/// that is then killed, each file fsync'd.
const EARLY: [(&str, usize); 3] = [("a", 100), ("b", 300_000), ("c", 1)];
const LATE: [(&str, usize); 2] = [("late1", 5000), ("late2", 200_000)];

fn all_files() -> impl Iterator<Item = (usize, &'static str, usize)> {
    EARLY
        .iter()
        .chain(LATE.iter())
        .enumerate()
        .map(|(i, (n, l))| (i, *n, *l))
}

fn write_files(mnt: &Path, files: &[(&str, usize)], first: usize) {
    for (k, (name, len)) in files.iter().enumerate() {
        let mut f = std::fs::File::create(mnt.join(name)).expect("create");
        f.write_all(&common::content((first + k) as u64, *len))
            .expect("write");
        f.sync_all().expect("fsync");
    }
    std::fs::File::open(mnt)
        .and_then(|d| d.sync_all())
        .expect("fsync the directory");
}

/// Every file reads back as written, through our library.
fn check_files(img: &Path, what: &str) {
    let fs = mount(img, None);
    for (i, name, len) in all_files() {
        let a = fs
            .lookup(fs.root(), name.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: file {name} lost: {e}"));
        let got = fs.read(a.ino, 0, len + 10).expect("read");
        assert!(
            got == common::content(i as u64, len),
            "{what}: file {name} changed"
        );
    }
    fs.unmount().expect("unmount");
}

/// A running daemon: its mount point, pid and run-state file.
struct Node {
    mnt: PathBuf,
    pid: i32,
    state: PathBuf,
}

fn alive(pid: i32) -> bool {
    // A zombie (not reaped: we are not its parent) is dead.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
        st.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Whether process `pid` has `img` open (the daemon serving it).
fn holds(pid: i32, img: &Path) -> bool {
    let Ok(canon) = img.canonicalize() else {
        return false;
    };
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|d| {
        d.flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == canon))
    })
}

/// Whether something is mounted on `mnt`.
fn mounted(mnt: &Path) -> bool {
    // Not the mount point itself: a dead daemon's mount cannot be stat'ed.
    let canon = mnt
        .parent()
        .and_then(|p| p.canonicalize().ok())
        .and_then(|p| Some(p.join(mnt.file_name()?)))
        .expect("mount point");
    let want = gfs2fuse::dev::mountinfo::escape(s(&canon));
    gfs2fuse::dev::mountinfo::mounts()
        .iter()
        .any(|m| m.point == want)
}

/// `gfs2-fuse mount img mnt` with `env`; waits for its control socket.
fn mount_daemon(img: &Path, mnt: &Path, env: &[(&str, String)]) -> Node {
    // Our own library mounts (the checks) claim the image too: another
    // test thread forking meanwhile may hold a copy of that claim's
    // descriptor for the instant before its exec, so a refusal naming the
    // claim is tried again shortly.
    let mut tries = 0;
    loop {
        let mut c = Command::new(daemon());
        c.arg("mount").arg(img).arg(mnt);
        for (k, v) in env {
            c.env(k, v);
        }
        // The detached daemon lets go of these pipes once it serves.
        let o = c.output().expect("gfs2-fuse mount");
        if o.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            tries < 50 && err.contains("is in use"),
            "gfs2-fuse mount {} failed: {err}",
            img.display()
        );
        tries += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    // The daemon writes its run-state file and socket once it serves; a
    // stale file of a killed daemon at the same device number is told
    // apart by its pid (which must hold the image).
    let t0 = Instant::now();
    loop {
        if let Some(sock) = gfs2fuse::runstate::control_socket_of(mnt) {
            let state = sock.with_extension("");
            let pid = std::fs::read_to_string(&state)
                .ok()
                .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
            if let Some(pid) = pid.filter(|p| alive(*p) && holds(*p, img)) {
                return Node {
                    mnt: mnt.to_path_buf(),
                    pid,
                    state,
                };
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no control socket for {}",
            mnt.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Node {
    /// Wait for the daemon to be gone (killed by its hook), or kill it.
    fn kill(&self, wait: bool) {
        let t0 = Instant::now();
        while wait && alive(self.pid) && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !wait || !alive(self.pid),
            "the daemon outlived its kill point"
        );
        if alive(self.pid) {
            // SAFETY: kill(2) with a valid signal on the daemon we started.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let t0 = Instant::now();
            while alive(self.pid) {
                assert!(t0.elapsed() < Duration::from_secs(10), "SIGKILL ignored");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // The mount of a dead daemon (unless an unmount took it):
        // detached at once.
        if !mounted(&self.mnt) {
            return self.forget();
        }
        let st = Command::new("fusermount")
            .args(["-u", "-z"])
            .arg(&self.mnt)
            .status()
            .expect("fusermount");
        assert!(st.success(), "fusermount -u -z {}", self.mnt.display());
        self.forget();
    }

    /// The run-state files of a killed daemon go (unless a new daemon on
    /// the same device number wrote its own meanwhile).
    fn forget(&self) {
        let pid = std::fs::read_to_string(&self.state)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<i32>().ok());
        if pid != Some(self.pid) {
            return;
        }
        for ext in ["", "ctl", "glocks"] {
            let _ = std::fs::remove_file(self.state.with_extension(ext));
        }
    }

    /// `gfs2-fuse umount`: the journal must be left clean.
    fn umount(&self) {
        if let Err(e) = self.try_umount() {
            panic!("gfs2-fuse umount {}: {e}", self.mnt.display());
        }
    }

    /// `gfs2-fuse umount`: whether the daemon left the journal clean (or
    /// what it said).
    fn try_umount(&self) -> Result<(), String> {
        // A child the other test thread forks holds copies of our
        // descriptors (files in the mount) until its exec: the mount is
        // busy for that instant.
        let mut tries = 0;
        loop {
            let o = Command::new(daemon())
                .arg("umount")
                .arg(&self.mnt)
                .output()
                .expect("gfs2-fuse umount");
            if o.status.success() {
                return Ok(());
            }
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            if tries == 50 || !err.contains("Device or resource busy") {
                return Err(err);
            }
            tries += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `tool args mnt`; (exit code, stdout and stderr).
fn run(tool: &str, args: &[&str], mnt: &Path) -> (i32, String) {
    let o = Command::new(tool)
        .args(args)
        .arg(mnt)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tool");
    (
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Kill the daemon at `n` points of the online `tool args` (plus once
/// after its answer) and check each outcome (see the module doc).
fn kill_points(
    tag: &str,
    tool: &str,
    args: &[&str],
    prepare: &dyn Fn(&Path),
    done: &dyn Fn(&Path, &str),
    n: usize,
) {
    let seed = seed();
    eprintln!("{tag}: seed {seed} (GFS2_TEST_SEED)");
    let t = Scratch::new(tag).expect("scratch");
    let mnt = t.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let base = t.join("base.img");
    prepare(&base);
    {
        let node = mount_daemon(&base, &mnt, &[]);
        write_files(&mnt, &EARLY, 0);
        node.umount();
    }
    let img = t.join("img.img");
    // How many device writes the change makes.
    std::fs::copy(&base, &img).expect("copy");
    let count = t.join("count");
    let node = mount_daemon(&img, &mnt, &[(COUNT, s(&count).to_string())]);
    write_files(&mnt, &LATE, EARLY.len());
    let (code, out) = run(tool, args, &mnt);
    assert_eq!(code, 0, "{tool} {args:?}: {out}");
    node.umount();
    let total: u64 = std::fs::read_to_string(&count)
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .expect("write count");
    assert!(total >= 3, "only {total} writes");
    eprintln!("{tag}: {total} device writes");
    // None: killed by the test right after the tool's answer.
    let mut kills: Vec<Option<u64>> = points(total, n, seed).into_iter().map(Some).collect();
    kills.push(None);
    for k in kills {
        let what = match k {
            Some(w) => format!("{tag}: daemon killed at write {w} of {total} (seed {seed})"),
            None => format!("{tag}: daemon killed after its answer"),
        };
        std::fs::copy(&base, &img).expect("copy");
        let env: Vec<(&str, String)> = k.map(|w| (KILL_AFTER, w.to_string())).into_iter().collect();
        let node = mount_daemon(&img, &mnt, &env);
        write_files(&mnt, &LATE, EARLY.len());
        let (code, out) = run(tool, args, &mnt);
        let answered = code == 0;
        assert!(answered || k.is_some(), "{what}: {out}");
        if k.is_none() {
            node.kill(false);
        } else if !answered || node.try_umount().is_err() {
            // Killed by its hook: amid the change (the tool lost its
            // daemon), or in the writes after it (log flushes,
            // checkpoints, the unmount).
            node.kill(true);
        } else {
            // Other threads' writes (the commit timer) counted in the
            // first run may be missing in this one: the last points may
            // then fall after the unmount.
            let w = k.unwrap_or(0);
            assert!(
                w + 2 + total / 10 >= total,
                "{what}: the daemon was not killed"
            );
            eprintln!("{what}: the run ended before that write");
        }
        after_crash(&img, t.path(), &what, &check_files);
        if answered {
            // The answer came: the change must have survived.
            done(&img, &format!("{what}, before the rerun"));
        }
        // The same files through a new daemon, then the change again.
        let node = mount_daemon(&img, &mnt, &[]);
        for (i, name, len) in all_files() {
            let got = std::fs::read(mnt.join(name))
                .unwrap_or_else(|e| panic!("{what}: {name} through the new mount: {e}"));
            assert!(
                got == common::content(i as u64, len),
                "{what}: {name} changed"
            );
        }
        let (code, out) = run(tool, args, &mnt);
        assert!(
            code == 0 || (tool == GROW && code == 255 && out.contains("has not grown")),
            "{what}: rerun: {out}"
        );
        node.umount();
        assert_clean(&img, &format!("{what}, rerun"));
        done(&img, &format!("{what}, rerun"));
        check_files(&img, &format!("{what}, rerun"));
    }
}

fn extend(img: &Path, mb: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(img)
        .expect("open image")
        .set_len(mb << 20)
        .expect("extend image");
}

#[test]
fn kill9_online_grow() {
    let prepare = |img: &Path| {
        mkfs(img, 64, &["-p", "lock_nolock", "-j", "1"]).expect("mkfs");
        extend(img, 160);
    };
    let done = |img: &Path, what: &str| {
        let fs = mount(img, None);
        let end = fs.rindex().last().map(|r| r.data0 + u64::from(r.data));
        let total: u64 = fs.rindex().iter().map(|r| u64::from(r.data)).sum();
        let st = fs.statfs().expect("statfs");
        fs.unmount().expect("unmount");
        assert!(
            end.is_some_and(|e| e > (128 << 20) / 4096),
            "{what}: grow not done: rgrps end at {end:?}"
        );
        assert_eq!(st.blocks, total, "{what}: statfs total vs rindex");
    };
    kill_points("online-grow", GROW, &[], &prepare, &done, 8);
}

#[test]
fn kill9_online_jadd() {
    let prepare = |img: &Path| {
        mkfs(img, 128, &["-p", "lock_nolock", "-j", "1"]).expect("mkfs");
    };
    let done = |img: &Path, what: &str| {
        let fs = mount(img, None);
        let n = fs.journal_count().expect("journals");
        fs.unmount().expect("unmount");
        // The killed run may have finished journal 1 before the rerun
        // added one more.
        assert!(n >= 2, "{what}: {n} journals");
        // The newest journal is usable: a node mounts on it and writes.
        let fs = mount(img, Some(n - 1));
        let a = fs
            .mknod(
                fs.root(),
                format!("on-jid{}", n - 1).as_bytes(),
                0o100644,
                0,
                0,
                0,
                0,
                None,
            )
            .unwrap_or_else(|e| panic!("{what}: create on journal {}: {e}", n - 1));
        fs.write(a.ino, 0, &common::content(99, 70_000))
            .expect("write");
        fs.unmount().expect("unmount on the newest journal");
        assert_clean(img, &format!("{what}, after a mount on journal {}", n - 1));
    };
    kill_points("online-jadd", JADD, &["-J", "32"], &prepare, &done, 8);
}
