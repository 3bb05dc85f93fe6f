//! The daemon's control socket: `gfs2_grow` and `gfs2_jadd` run against a
//! filesystem that gfs2-fuse has mounted ask the daemon to make the change,
//! since only the mounted node may write the disk (its claim refuses the
//! tools) and only it holds the glocks that keep other nodes coherent.
//!
//! The socket is a Unix stream socket beside the run-state file:
//! `/run/gfs2-fuse/MAJ:MIN.ctl` (root; see [`crate::runstate`]), found by
//! the tools from the mount point through mountinfo's device number. Only
//! root or the daemon's own user may use it (checked with `SO_PEERCRED`).
//! One request per connection, text lines, answered by lines ending with
//! `ok ...` or `err MESSAGE`:
//! - `info` -> `bsize B`, `device BYTES` (looked at again: the device may
//!   have grown), `journals N`, one `rgrp ADDR LENGTH DATA0 DATA BITBYTES`
//!   per resource group, `ok`.
//! - `grow`, then `rgrp ...` lines of the new resource groups, then `end`
//!   -> `ok GAINED_BLOCKS` ([`Fs::append_rgrps`]: the rindex glock held
//!   exclusively, so a plan made from an rindex another node changed
//!   meanwhile is refused).
//! - `jadd JOURNAL_BYTES QUOTA_CHANGE_BYTES FIRST_SEQUENCE` -> `ok JID`
//!   ([`Fs::add_journal`]).
//!
//! An `ok` answer means the change is durable (in the log at least): a
//! daemon killed after it comes back with the change made. A daemon killed
//! before it comes back with the change made or not, never half made (see
//! [`crate::grow`] and [`crate::jadd`]); the crash tests kill it amid the
//! change through [`killpoint`].
//!
//! Requests are bounded (line length, number of lines) and parsed strictly.

use crate::dev::killpoint;
use crate::format::Rindex;
use crate::fs::Fs;
use crate::jadd::JournalSpec;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

/// Longest request line accepted.
const MAX_LINE: usize = 256;
/// Most resource groups one grow request may add.
const MAX_RGRPS: usize = 1 << 20;

/// The control socket's path for the run-state file `state`.
pub fn socket_path(state: &Path) -> PathBuf {
    state.with_extension("ctl")
}

/// Listen on `path` for requests to `fs` on a thread of its own, for as
/// long as the process lives (the socket file is replaced if stale).
pub fn serve(fs: Weak<Fs>, path: PathBuf) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("gfs2-control".into())
        .spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                let Some(fs) = fs.upgrade() else { break };
                if let Err(e) = handle(&fs, c) {
                    tracing::warn!("control request: {e}");
                }
            }
        })?;
    Ok(())
}

/// Whether the peer is root or our own user.
fn peer_allowed(c: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
    let r = unsafe {
        libc::getsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid cannot fail.
    r == 0 && (cred.uid == 0 || cred.uid == unsafe { libc::geteuid() })
}

fn read_line<R: BufRead>(r: &mut R) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = std::io::Read::take(&mut *r, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "request line too long or cut short",
        ));
    }
    buf.pop();
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "request not UTF-8"))
}

/// `rgrp ADDR LENGTH DATA0 DATA BITBYTES` (both directions).
pub fn format_rgrp(r: &Rindex) -> String {
    format!(
        "rgrp {} {} {} {} {}",
        r.addr, r.length, r.data0, r.data, r.bitbytes
    )
}

/// Parse a `rgrp` line.
pub fn parse_rgrp(line: &str) -> Option<Rindex> {
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() != 6 || f[0] != "rgrp" {
        return None;
    }
    Some(Rindex {
        addr: f[1].parse().ok()?,
        length: f[2].parse().ok()?,
        data0: f[3].parse().ok()?,
        data: f[4].parse().ok()?,
        bitbytes: f[5].parse().ok()?,
        ..Rindex::default()
    })
}

fn handle(fs: &Arc<Fs>, c: UnixStream) -> std::io::Result<()> {
    let mut w = c.try_clone()?;
    if !peer_allowed(&c) {
        return writeln!(w, "err permission denied");
    }
    let mut r = BufReader::new(c);
    let Some(req) = read_line(&mut r)? else {
        return Ok(());
    };
    let words: Vec<&str> = req.split(' ').collect();
    let answer = match words.as_slice() {
        ["info"] => info(fs),
        ["grow"] => {
            let mut new = Vec::new();
            loop {
                let Some(l) = read_line(&mut r)? else {
                    return writeln!(w, "err request cut short");
                };
                if l == "end" {
                    break;
                }
                match parse_rgrp(&l) {
                    Some(ri) if new.len() < MAX_RGRPS => new.push(ri),
                    _ => return writeln!(w, "err bad resource group line"),
                }
            }
            tracing::info!(rgrps = new.len(), "control: grow");
            killpoint::during_request(|| fs.append_rgrps(&new))
                .map(|g| format!("ok {g}"))
                .map_err(|e| e.to_string())
        }
        ["jadd", j, q, seq] => match (j.parse(), q.parse(), seq.parse()) {
            (Ok(journal_bytes), Ok(quota_change_bytes), Ok(first_sequence)) => {
                tracing::info!(journal_bytes, "control: jadd");
                killpoint::during_request(|| {
                    fs.add_journal(&JournalSpec {
                        journal_bytes,
                        quota_change_bytes,
                        first_sequence,
                    })
                })
                .map(|jid| format!("ok {jid}"))
                .map_err(|e| e.to_string())
            }
            _ => Err("bad jadd request".into()),
        },
        _ => Err(format!("unknown request {req:?}")),
    };
    match answer {
        Ok(a) => writeln!(w, "{a}"),
        Err(e) => writeln!(w, "err {}", e.replace('\n', " ")),
    }
}

fn info(fs: &Arc<Fs>) -> Result<String, String> {
    let size = fs.device().refresh_size().map_err(|e| e.to_string())?;
    let journals = fs.journal_count().map_err(|e| e.to_string())?;
    let mut out = format!(
        "bsize {}\ndevice {size}\njournals {journals}\n",
        fs.superblock().bsize
    );
    for r in fs.rindex().iter() {
        out.push_str(&format_rgrp(r));
        out.push('\n');
    }
    out.push_str("ok");
    Ok(out)
}

/// A client's view: send `request` (lines) to the socket at `path`, return
/// the answer's lines up to and including the final `ok ...`, or the
/// `err` message.
pub fn request(path: &Path, request: &str) -> Result<Vec<String>, String> {
    let mut c = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
    c.write_all(request.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines = Vec::new();
    for l in BufReader::new(c).lines() {
        let l = l.map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(e) = l.strip_prefix("err ") {
            return Err(e.to_string());
        }
        let done = l == "ok" || l.starts_with("ok ");
        lines.push(l);
        if done {
            return Ok(lines);
        }
    }
    Err("the daemon closed the connection without an answer".into())
}
