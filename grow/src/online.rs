//! Reaching a filesystem that gfs2-fuse has mounted: the tools talk to the
//! daemon serving the mount through its control socket (see
//! [`gfs2fuse::control`]), found from the mount point through mountinfo's
//! device number and the daemon's run-state directory. The daemon makes
//! the change with the glocks it needs, as the kernel does for gfs2-utils'
//! tools through the metafs.

use gfs2_ondisk::Rindex;
use gfs2fuse::control;
use gfs2fuse::jadd::JournalSpec;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// What the daemon reports.
pub struct Info {
    pub bsize: u32,
    pub device_bytes: u64,
    pub journals: u32,
    pub rindex: Vec<Rindex>,
}

/// The control socket of the gfs2-fuse mount at `path`, if it is one.
pub fn find(path: &OsStr) -> Option<PathBuf> {
    let p = Path::new(path);
    if !p.is_dir() {
        return None;
    }
    gfs2fuse::runstate::control_socket_of(p)
}

/// The mount's source (the device it was mounted from), from mountinfo.
pub fn source_of(path: &OsStr) -> Option<String> {
    let canon = Path::new(path).canonicalize().ok()?;
    let want = gfs2fuse::dev::mountinfo::escape(canon.to_str()?);
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        (f.get(4) == Some(&want.as_str()))
            .then(|| f.get(sep + 2).map(|s| s.replace("\\040", " ")))
            .flatten()
    })
}

pub fn info(sock: &Path) -> Result<Info, String> {
    let lines = control::request(sock, "info\n")?;
    let mut i = Info {
        bsize: 0,
        device_bytes: 0,
        journals: 0,
        rindex: Vec::new(),
    };
    for l in &lines {
        let mut w = l.splitn(2, ' ');
        match (w.next(), w.next()) {
            (Some("bsize"), Some(v)) => i.bsize = v.parse().map_err(|_| bad(l))?,
            (Some("device"), Some(v)) => i.device_bytes = v.parse().map_err(|_| bad(l))?,
            (Some("journals"), Some(v)) => i.journals = v.parse().map_err(|_| bad(l))?,
            (Some("rgrp"), Some(_)) => i.rindex.push(control::parse_rgrp(l).ok_or_else(|| bad(l))?),
            (Some("ok"), _) => {}
            _ => return Err(bad(l)),
        }
    }
    if !(512..=65536).contains(&i.bsize) || i.rindex.is_empty() {
        return Err("the daemon's answer lacks the block size or the rindex".into());
    }
    Ok(i)
}

fn bad(l: &str) -> String {
    format!("unexpected answer from the daemon: {l:?}")
}

/// Ask the daemon to add `new`; returns the blocks gained.
pub fn grow(sock: &Path, new: &[Rindex]) -> Result<u64, String> {
    let mut req = String::from("grow\n");
    for r in new {
        req.push_str(&control::format_rgrp(r));
        req.push('\n');
    }
    req.push_str("end\n");
    let lines = control::request(sock, &req)?;
    let last = lines.last().map(String::as_str).unwrap_or("");
    last.strip_prefix("ok ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad(last))
}

/// Ask the daemon to add one journal; returns its jid.
pub fn jadd(sock: &Path, spec: &JournalSpec) -> Result<u32, String> {
    let lines = control::request(
        sock,
        &format!(
            "jadd {} {} {}\n",
            spec.journal_bytes, spec.quota_change_bytes, spec.first_sequence
        ),
    )?;
    let last = lines.last().map(String::as_str).unwrap_or("");
    last.strip_prefix("ok ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad(last))
}

/// `statfs(2)` of the mount: (block size, blocks, free blocks), as
/// gfs2-utils' gfs2_jadd reads them.
pub fn statfs(path: &OsStr) -> Result<(u32, u64, u64), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statvfs we own.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok((st.f_bsize as u32, st.f_blocks, st.f_bfree))
}

/// Whether `path` is the mount point of the kernel's GFS2 (gfs2-utils'
/// tools work there, through the kernel's metafs).
pub fn kernel_mount(path: &OsStr) -> bool {
    let Ok(canon) = Path::new(path).canonicalize() else {
        return false;
    };
    let Some(want) = canon.to_str().map(gfs2fuse::dev::mountinfo::escape) else {
        return false;
    };
    gfs2fuse::dev::mountinfo::mounts()
        .into_iter()
        .rev()
        .find(|m| m.point == want)
        .is_some_and(|m| m.fstype == "gfs2")
}

/// Hand the whole command line to gfs2-utils' `tool` (from /usr/sbin or
/// /sbin, never ourselves): installed under the same name before it in
/// PATH, we must not take away what it does on kernel mounts. Returns only
/// if there is none to run.
pub fn delegate_to_gfs2_utils(tool: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map(|m| (m.dev(), m.ino()))
        .ok();
    for dir in ["/usr/sbin", "/sbin"] {
        let p = Path::new(dir).join(tool);
        let Ok(md) = std::fs::metadata(&p) else {
            continue;
        };
        if Some((md.dev(), md.ino())) == me {
            continue;
        }
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_else(|| tool.into());
        let e = std::process::Command::new(&p).arg0(argv0).args(args).exec();
        return format!("{}: {e}", p.display());
    }
    format!("a kernel GFS2 mount needs gfs2-utils' {tool} (not installed)")
}
