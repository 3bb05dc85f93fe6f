//! The daemon's run-state file, and `gfs2-fuse umount`, which uses it.
//!
//! Where the kernel gives us a `fuseblk` mount (root, loop driver present;
//! see [`crate::fuse::blkmount`]) a plain `umount` already waits until the
//! disk is clean. A plain `fuse` mount (an unprivileged user) cannot: the
//! kernel detaches it and returns while the daemon still flushes. For those,
//! and for scripts that want the outcome, `gfs2-fuse umount MOUNTPOINT`
//! unmounts, waits for the daemon serving the mount to exit and reports
//! whether it left the journal clean.
//!
//! The daemon finds itself again through a small file named after the
//! mount's device number (`MAJ:MIN`, the third field of mountinfo) in
//! `/run/gfs2-fuse` (root) or `$XDG_RUNTIME_DIR/gfs2-fuse`: its pid on the
//! first line, written once the mount is ready, and `clean` or
//! `failed: REASON` appended when it has unmounted.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The run-state file of a mounted daemon; removed by `gfs2-fuse umount`.
pub struct RunState {
    path: PathBuf,
}

fn state_dir() -> PathBuf {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/gfs2-fuse");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => Path::new(&d).join("gfs2-fuse"),
        // SAFETY: getuid cannot fail.
        _ => PathBuf::from(format!("/tmp/gfs2-fuse-{}", unsafe { libc::getuid() })),
    }
}

/// The device number (`MAJ:MIN`) and type of the mount at the absolute,
/// canonical path `mountpoint` (see [`crate::dev::mountinfo`]). The last
/// entry wins: a mount on top of another hides it.
fn mount_entry(mountpoint: &Path) -> Option<(String, String)> {
    let want = crate::dev::mountinfo::escape(mountpoint.to_str()?);
    crate::dev::mountinfo::mounts()
        .into_iter()
        .rev()
        .find(|m| m.point == want)
        .map(|m| (m.dev, m.fstype))
}

/// The control socket of the gfs2-fuse daemon serving the mount at `path`
/// (made absolute and canonical here); `None` when `path` is not a mount
/// point or its daemon left no socket (not gfs2-fuse, or too old).
pub fn control_socket_of(path: &Path) -> Option<PathBuf> {
    let canon = path.canonicalize().ok()?;
    let p = crate::control::socket_path(&state_path(&canon).ok()?);
    p.exists().then_some(p)
}

/// The state file of the mount at `mountpoint` (absolute and canonical).
fn state_path(mountpoint: &Path) -> io::Result<PathBuf> {
    let (dev, _) = mount_entry(mountpoint).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is not a mount point", mountpoint.display()),
        )
    })?;
    Ok(state_dir().join(dev))
}

impl RunState {
    /// Record this process as the daemon of the mount at `mountpoint`
    /// (absolute and canonical: see [`mount_entry`]).
    pub fn create(mountpoint: &Path) -> io::Result<RunState> {
        let path = state_path(mountpoint)?;
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&path, format!("{}\n", std::process::id()))?;
        Ok(RunState { path })
    }

    /// This daemon's control socket (see [`crate::control`]).
    pub fn control_path(&self) -> PathBuf {
        crate::control::socket_path(&self.path)
    }

    /// Where this daemon writes its glock dump (`gfs2-fuse glocks`).
    pub fn glocks_path(&self) -> PathBuf {
        self.path.with_extension("glocks")
    }

    /// Write a glock dump to `path` whole (through a temporary name), so
    /// that a reader never sees half of it.
    pub fn write_glocks(path: &Path, text: &str) {
        let tmp = path.with_extension("glocks-new");
        let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = r {
            tracing::warn!("{}: {e}", path.display());
        }
    }

    /// Record how the unmount ended (and close the control socket).
    pub fn finish(&self, outcome: &Result<(), String>) {
        let _ = std::fs::remove_file(self.control_path());
        let line = match outcome {
            Ok(()) => "clean\n".to_string(),
            Err(e) => format!("failed: {}\n", e.replace('\n', " ")),
        };
        let r = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = r {
            tracing::warn!("{}: {e}", self.path.display());
        }
    }
}

fn wait_exit(pid: i32, mountpoint: &Path) {
    // SAFETY: pidfd_open has no memory arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let alive = || Path::new(&format!("/proc/{pid}")).exists();
    let t0 = Instant::now();
    let mut next_note = Duration::from_secs(5);
    loop {
        let gone = if fd >= 0 {
            let mut p = libc::pollfd {
                fd: fd as i32,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd we own.
            unsafe { libc::poll(&mut p, 1, 1000) > 0 }
        } else {
            std::thread::sleep(Duration::from_millis(50));
            !alive()
        };
        if gone {
            if fd >= 0 {
                // SAFETY: closing the pidfd we opened.
                unsafe { libc::close(fd as i32) };
            }
            return;
        }
        if t0.elapsed() >= next_note {
            eprintln!(
                "gfs2-fuse umount: the daemon of {} (pid {pid}) is still writing to disk ({}s)",
                mountpoint.display(),
                t0.elapsed().as_secs()
            );
            next_note += Duration::from_secs(5);
        }
    }
}

/// The one MOUNTPOINT argument of a subcommand; `--help` prints `usage`
/// (exit 0), anything else than one argument is a usage error (exit 2).
fn the_mountpoint<'a>(args: &'a [String], usage: &str) -> &'a str {
    match args {
        [h] if h == "-h" || h == "--help" => {
            println!("{usage}");
            std::process::exit(0);
        }
        [mnt] => mnt,
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}

/// `gfs2-fuse umount MOUNTPOINT`: unmount, wait until the daemon has
/// finished with the disk, and exit 0 only if it left it clean.
pub fn umount_main(args: &[String]) -> ! {
    let usage = "usage: gfs2-fuse umount MOUNTPOINT\n\
        Unmounts a gfs2-fuse mount and returns once the daemon has flushed everything,\n\
        marked its journal clean and released the device (exit 0), or says why not (exit 1).";
    let mnt = the_mountpoint(args, usage);
    let (canon, daemon) = daemon_of(mnt).unwrap_or_else(|e| {
        eprintln!("gfs2-fuse umount: {e}");
        std::process::exit(1);
    });
    let mountpoint = canon.as_path();
    if let Err(e) = unmount(mountpoint) {
        eprintln!("gfs2-fuse umount: {mnt}: {e}");
        std::process::exit(1);
    }
    let Some((state, pid)) = daemon else {
        eprintln!(
            "gfs2-fuse umount: {mnt} unmounted, but its daemon left no state file: \
             cannot tell when the disk is clean"
        );
        std::process::exit(1);
    };
    wait_exit(pid, mountpoint);
    let text = std::fs::read_to_string(&state).unwrap_or_default();
    let _ = std::fs::remove_file(&state);
    match text.lines().nth(1) {
        Some("clean") => std::process::exit(0),
        Some(l) => {
            eprintln!("gfs2-fuse umount: {mnt}: {l}");
            std::process::exit(1)
        }
        None => {
            eprintln!(
                "gfs2-fuse umount: the daemon of {mnt} died before finishing; the next \
                 mount replays its journal"
            );
            std::process::exit(1)
        }
    }
}

/// The canonical path of the gfs2-fuse mount point `mnt`, with its state
/// file and the daemon's pid when it left one; an error when `mnt` is not
/// a gfs2-fuse mount point.
type Daemon = (PathBuf, Option<(PathBuf, i32)>);
fn daemon_of(mnt: &str) -> Result<Daemon, String> {
    let canon = std::fs::canonicalize(mnt).unwrap_or_else(|_| PathBuf::from(mnt));
    let ours = mount_entry(&canon).is_some_and(|(_, t)| t == "fuse.gfs2" || t == "fuseblk.gfs2");
    if !ours {
        return Err(format!("{mnt} is not a gfs2-fuse mount point"));
    }
    let found = state_path(&canon).ok().and_then(|state| {
        let pid = std::fs::read_to_string(&state)
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse::<i32>()
            .ok()?;
        Some((state, pid))
    });
    Ok((canon, found))
}

/// `gfs2-fuse glocks MOUNTPOINT`: print the glocks of the node serving the
/// mount (see [`crate::glock::GlockTable::dump`]): its daemon writes them
/// on SIGUSR1.
pub fn glocks_main(args: &[String]) -> ! {
    let usage = "usage: gfs2-fuse glocks MOUNTPOINT\n\
        Prints the glocks of the node serving MOUNTPOINT, one per line:\n\
        G: s:STATE n:TYPE/NUMBER f:FLAGS d:DEMOTE h:SHARED/EXCLUSIVE w:WAITING\n\
        STATE is UN, SH, DF or EX (- for no lock); FLAGS: b request in flight,\n\
        D demotion pending, n not cached, p grant on its way to a holder.";
    let mnt = the_mountpoint(args, usage);
    let (state, pid) = match daemon_of(mnt) {
        Ok((_, Some(d))) => d,
        Ok((_, None)) => {
            eprintln!("gfs2-fuse glocks: the daemon of {mnt} left no state file");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("gfs2-fuse glocks: {e}");
            std::process::exit(1);
        }
    };
    let dump = RunState { path: state }.glocks_path();
    let _ = std::fs::remove_file(&dump);
    // SAFETY: kill with a pid and a signal number.
    if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
        eprintln!(
            "gfs2-fuse glocks: signalling pid {pid}: {}",
            io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if let Ok(text) = std::fs::read_to_string(&dump) {
            print!("{text}");
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("gfs2-fuse glocks: pid {pid} wrote no dump in 10 s");
    std::process::exit(1);
}

/// Unmount as root directly, otherwise through `fusermount3 -u`.
fn unmount(mountpoint: &Path) -> io::Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let st = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg(mountpoint)
            .status()?;
        return if st.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("fusermount3 -u exited with {st}")))
        };
    }
    crate::fuse::blkmount::unmount(mountpoint, false)
}
