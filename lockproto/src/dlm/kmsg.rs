//! What the DLM tells the kernel log about a lockspace's recoveries.
//!
//! A kernel gfs2 node learns its journal id and the failures of other nodes
//! from the DLM's recovery callbacks (`recover_prep`, `recover_slot`,
//! `recover_done`), which the userspace device does not offer. The same
//! facts are printed by the DLM at `KERN_INFO` (while configfs
//! `cluster/log_info` is 1, the default), each line `dlm: <lockspace>: ...`:
//!
//! - `dlm_recover <seq>`: a recovery starts (lock requests are stopped: the
//!   kernel's `recover_prep` has run);
//! - `remove member <nodeid>`: a member left or failed;
//! - `generation <gen> slots <n> <slot>:<nodeid> ...`: the slots after the
//!   change (a gfs2 journal id is a slot minus one); the line is cut at 128
//!   bytes, so a very large cluster may not show every member;
//! - `dlm_recover <seq> generation <gen> done: <ms> ms`: the recovery is
//!   over (`recover_done` with that generation has run).
//!
//! The lines come before the DLM grants a dead node's locks to anyone, so a
//! node that reads the log to its end before acting on a grant sees a
//! failure no later than the kernel's `recover_prep` would have told it.

use crate::LockError;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// One DLM recovery event of a lockspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A recovery started (`recover_prep`).
    RecoverStart,
    /// A member was removed.
    RemoveMember(u32),
    /// The slots as of generation `gen`: `(slot, nodeid)`.
    Slots { gen: u32, slots: Vec<(u32, u32)> },
    /// The recovery of generation `gen` is over (`recover_done`).
    RecoverDone { gen: u32 },
}

/// Parse one kernel log message (without the `/dev/kmsg` record prefix)
/// as an event of lockspace `ls`.
pub fn parse(ls: &str, msg: &str) -> Option<Event> {
    let rest = msg
        .strip_prefix("dlm: ")?
        .strip_prefix(ls)?
        .strip_prefix(": ")?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.as_slice() {
        ["dlm_recover", _seq] => Some(Event::RecoverStart),
        ["dlm_recover", _seq, "generation", gen, "done:", ..] => Some(Event::RecoverDone {
            gen: gen.parse().ok()?,
        }),
        ["remove", "member", id, ..] => Some(Event::RemoveMember(id.parse().ok()?)),
        ["generation", gen, "slots", _n, pairs @ ..] => {
            let gen = gen.parse().ok()?;
            let mut slots = Vec::new();
            for p in pairs {
                // The last pair may have been cut by the 128-byte line.
                let Some((s, n)) = p.split_once(':') else {
                    break;
                };
                match (s.parse(), n.parse()) {
                    (Ok(s), Ok(n)) => slots.push((s, n)),
                    _ => break,
                }
            }
            Some(Event::Slots { gen, slots })
        }
        _ => None,
    }
}

/// The message of one `/dev/kmsg` record: `prio,seq,time,flags;message`,
/// possibly followed by continuation lines (` KEY=value`).
fn record_message(rec: &str) -> Option<&str> {
    let (_, msg) = rec.split_once(';')?;
    Some(msg.split('\n').next().unwrap_or(msg))
}

/// A reader of the kernel log from the moment it was opened.
pub struct Kmsg {
    file: File,
    ls: String,
}

impl Kmsg {
    /// Open `/dev/kmsg` at its end, for lockspace `ls`'s events from now on.
    pub fn open(ls: &str) -> Result<Self, LockError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/kmsg")
            .map_err(|e| {
                LockError::Manager(format!(
                    "/dev/kmsg: {e} (the DLM's recovery events are read from the kernel log)"
                ))
            })?;
        // SAFETY: lseek on a descriptor we own.
        unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
        Ok(Kmsg {
            file,
            ls: ls.to_string(),
        })
    }

    /// Every event logged since the last call (without waiting).
    pub fn drain(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    if let Some(ev) = record_message(&rec).and_then(|m| parse(&self.ls, m)) {
                        tracing::debug!(ls = %self.ls, ?ev, "dlm recovery event");
                        out.push(ev);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // Records overwritten before we read them: go on with the
                // next one (EPIPE). A lost recovery line would leave us
                // waiting; the generation check of the control lock catches
                // a stale view.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                    tracing::warn!("kernel log records lost before they were read");
                }
                Err(e) => {
                    tracing::error!("reading /dev/kmsg: {e}");
                    break;
                }
            }
        }
        out
    }

    /// The descriptor to wait on (see [`wait`]), valid while this reader is.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

/// Wait up to `ms` milliseconds for a new record on [`Kmsg::fd`]; needs no
/// access to the reader, so others may drain it meanwhile.
pub fn wait(fd: std::os::fd::RawFd, ms: i32) {
    {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one descriptor we own.
        unsafe { libc::poll(&mut p, 1, ms) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dlm_lines_parse() {
        let ls = "fs1";
        assert_eq!(
            parse(ls, "dlm: fs1: dlm_recover 3"),
            Some(Event::RecoverStart)
        );
        assert_eq!(
            parse(ls, "dlm: fs1: dlm_recover 3 generation 5 done: 120 ms"),
            Some(Event::RecoverDone { gen: 5 })
        );
        assert_eq!(
            parse(ls, "dlm: fs1: remove member 2"),
            Some(Event::RemoveMember(2))
        );
        assert_eq!(
            parse(ls, "dlm: fs1: generation 4 slots 3 1:1 2:3 3:2"),
            Some(Event::Slots {
                gen: 4,
                slots: vec![(1, 1), (2, 3), (3, 2)]
            })
        );
        // A line cut in the middle of a pair keeps the whole pairs.
        assert_eq!(
            parse(ls, "dlm: fs1: generation 4 slots 3 1:1 2:3 3:"),
            Some(Event::Slots {
                gen: 4,
                slots: vec![(1, 1), (2, 3)]
            })
        );
        // Other lockspaces and other messages are not ours.
        assert_eq!(parse(ls, "dlm: fs10: dlm_recover 3"), None);
        assert_eq!(parse(ls, "dlm: fs1: joining the lockspace group..."), None);
        assert_eq!(parse(ls, "dlm: fs1: generation x slots 1 1:1"), None);
        assert_eq!(
            record_message("6,1234,567,-;dlm: fs1: dlm_recover 3\n SUBSYSTEM=x"),
            Some("dlm: fs1: dlm_recover 3")
        );
    }
}
