//! The byte layout of the DLM's userspace device protocol (`linux/dlm_device.h`),
//! as a 64-bit process speaks it. No I/O here: requests are built into byte
//! vectors and completions parsed from what `read(2)` returned, so the layout
//! is checked against the C header by a test.
//!
//! Every request is a `struct dlm_write_request`: a version triple, a command
//! byte, `is64bit` (which tells the kernel the pointer-sized fields are 8
//! bytes wide; without it a 64-bit kernel with compat support reads the
//! 32-bit layout), then the command's parameters. The kernel never
//! dereferences the "user pointers" of a lock request (`castparam`,
//! `castaddr`, `bastparam`, `bastaddr`, `lksb`): it hands them back in each
//! completion, which is how libdlm finds its callback. We put a token of our
//! own there instead, to find the lock a completion belongs to without a
//! lock id (the completion of a new lock can be read before the `write(2)`
//! that returned its id has returned in the requesting thread).
//!
//! What comes back (`struct dlm_lock_result`) is a completion (the request's
//! status in the lock status block) or a blocking callback (`bast_mode`
//! non-zero, the mode another node wants; the kernel then also reports the
//! blocking callback's address, which we set apart from the completion's).

use crate::{Lvb, Mode, LVB_SIZE};

/// `DLM_DEVICE_VERSION_*`: the kernel refuses another major version or a
/// newer minor one.
const VERSION: [u32; 3] = [6, 0, 2];

/// Commands (`DLM_USER_*`).
const CMD_LOCK: u8 = 1;
const CMD_UNLOCK: u8 = 2;
const CMD_CREATE_LOCKSPACE: u8 = 4;
const CMD_REMOVE_LOCKSPACE: u8 = 5;
const CMD_PURGE: u8 = 6;

/// Request flags (`DLM_LKF_*`).
pub mod lkf {
    /// Fail at once (`-EAGAIN`) instead of waiting.
    pub const NOQUEUE: u32 = 0x1;
    /// With unlock: cancel a waiting request instead.
    pub const CANCEL: u32 = 0x2;
    /// Convert the existing lock named by its id.
    pub const CONVERT: u32 = 0x4;
    /// Carry the lock value block.
    pub const VALBLK: u32 = 0x8;
    /// Keep the lock (an orphan) when the device is closed, instead of
    /// unlocking it. The DLM takes a request's flags anew each time, so
    /// every request of the lock repeats it (not unlock, which refuses it).
    pub const PERSISTENT: u32 = 0x80;
    /// On conversion deadlock, demote our granted mode to NL instead of
    /// failing the conversion (`DLM_SBF_DEMOTED` in the completion).
    pub const CONVDEADLK: u32 = 0x40;
    /// With NOQUEUE: call the holders back even though the request fails.
    pub const NOQUEUEBAST: u32 = 0x800;
}

/// Completion flags (`DLM_SBF_*`).
pub mod sbf {
    /// The granted mode was demoted to NL to break a conversion deadlock.
    pub const DEMOTED: u8 = 0x1;
    /// The LVB is not valid (its last writer died).
    pub const VALNOTVALID: u8 = 0x2;
}

/// Lockspace flags: refuse to join a lockspace that exists on this node
/// already (a kernel mount's, or a dead daemon's: see [`super`]).
pub const LSFL_NEWEXCL: u32 = 0x8;
/// Remove a lockspace even though locks remain (others' locks mastered
/// here count too).
pub const REMOVE_FORCEFREE: u32 = 2;

/// Statuses of a completion besides 0 (granted) and `-EAGAIN` (a NOQUEUE
/// request that would have waited).
pub const ECANCEL: i32 = 0x10001;
/// An unlock completed.
pub const EUNLOCK: i32 = 0x10002;

/// Size of the fixed part of a lock request (`struct dlm_write_request`
/// with `struct dlm_lock_params`, before the name).
pub const LOCK_REQUEST_LEN: usize = 120;
/// Size of the fixed part of a lockspace request.
pub const LSPACE_REQUEST_LEN: usize = 24;
/// Size of `struct dlm_lock_result`; the LVB, when present, follows.
pub const RESULT_LEN: usize = 72;
/// Longest resource name (`DLM_RESNAME_MAXLEN`).
pub const RESNAME_MAX: usize = 64;
/// Longest lockspace name (`DLM_LOCKSPACE_LEN`).
pub const LOCKSPACE_NAME_MAX: usize = 64;

/// Our markers in the completion address fields: a completion and a
/// blocking callback are told apart by which one the kernel hands back.
const CAST_ADDR: u64 = 1;
const BAST_ADDR: u64 = 2;

/// DLM mode numbers (`DLM_LOCK_*`).
pub fn mode_number(m: Mode) -> u8 {
    match m {
        Mode::NL => 0,
        Mode::CR => 1,
        Mode::CW => 2,
        Mode::PR => 3,
        Mode::PW => 4,
        Mode::EX => 5,
    }
}

/// The mode of a DLM mode number.
pub fn mode_of(n: u8) -> Option<Mode> {
    Some(match n {
        0 => Mode::NL,
        1 => Mode::CR,
        2 => Mode::CW,
        3 => Mode::PR,
        4 => Mode::PW,
        5 => Mode::EX,
        _ => return None,
    })
}

fn header(cmd: u8, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    for (i, v) in VERSION.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    b[12] = cmd;
    b[13] = 1; // is64bit
    b
}

/// A lock, convert, unlock or cancel request.
#[derive(Debug, Clone, Copy)]
pub struct LockRequest<'a> {
    /// The mode wanted (ignored by unlock).
    pub mode: Mode,
    /// `DLM_LKF_*`.
    pub flags: u32,
    /// The lock's id (conversions, unlock, cancel); 0 for a new lock.
    pub lkid: u32,
    /// Handed back in every completion and blocking callback of this lock.
    pub token: u64,
    /// The LVB the lock carries from now on (with `VALBLK`: written to the
    /// resource when converting down from PW or EX, or on unlock).
    pub lvb: Option<&'a Lvb>,
    /// The resource name (new locks).
    pub name: &'a [u8],
}

impl LockRequest<'_> {
    fn encode(&self, cmd: u8) -> Vec<u8> {
        let mut b = header(cmd, LOCK_REQUEST_LEN + self.name.len());
        let p = 16;
        b[p] = mode_number(self.mode);
        // The name length is a byte; callers keep names short (checked by
        // `lock`/`unlock`).
        b[p + 1] = self.name.len().min(RESNAME_MAX) as u8;
        b[p + 4..p + 8].copy_from_slice(&self.flags.to_ne_bytes());
        b[p + 8..p + 12].copy_from_slice(&self.lkid.to_ne_bytes());
        // parent 0, xid 0, timeout 0.
        b[p + 32..p + 40].copy_from_slice(&self.token.to_ne_bytes()); // castparam
        b[p + 40..p + 48].copy_from_slice(&CAST_ADDR.to_ne_bytes()); // castaddr
        b[p + 48..p + 56].copy_from_slice(&self.token.to_ne_bytes()); // bastparam
        b[p + 56..p + 64].copy_from_slice(&BAST_ADDR.to_ne_bytes()); // bastaddr
        b[p + 64..p + 72].copy_from_slice(&self.token.to_ne_bytes()); // lksb
        if let Some(v) = self.lvb {
            b[p + 72..p + 72 + LVB_SIZE].copy_from_slice(v);
        }
        b[LOCK_REQUEST_LEN..].copy_from_slice(&self.name[..self.name.len().min(RESNAME_MAX)]);
        b
    }
}

/// `DLM_USER_LOCK`: a new lock (`lkid` 0) or a conversion (`CONVERT`).
/// The kernel answers a new lock's `write(2)` with the lock's id.
pub fn lock(req: &LockRequest<'_>) -> Vec<u8> {
    req.encode(CMD_LOCK)
}

/// `DLM_USER_UNLOCK`: unlock (completion status [`EUNLOCK`]) or, with
/// `CANCEL`, cancel a waiting request (its completion: [`ECANCEL`]).
pub fn unlock(req: &LockRequest<'_>) -> Vec<u8> {
    req.encode(CMD_UNLOCK)
}

/// `DLM_USER_CREATE_LOCKSPACE` on the control device: creates the
/// lockspace or joins the existing one of that name; `write(2)` returns the
/// misc minor number of its device `dlm_<name>`.
pub fn create_lockspace(name: &str, flags: u32) -> Vec<u8> {
    let n = &name.as_bytes()[..name.len().min(LOCKSPACE_NAME_MAX)];
    // The kernel takes no write shorter than the request structure (the
    // name inside it then, NUL-terminated by the zero padding).
    let mut b = header(CMD_CREATE_LOCKSPACE, LOCK_REQUEST_LEN + n.len());
    b[16..20].copy_from_slice(&flags.to_ne_bytes());
    b[LSPACE_REQUEST_LEN..LSPACE_REQUEST_LEN + n.len()].copy_from_slice(n);
    b
}

/// `DLM_USER_REMOVE_LOCKSPACE` of the lockspace whose device has `minor`.
pub fn remove_lockspace(minor: u32, flags: u32) -> Vec<u8> {
    let mut b = header(CMD_REMOVE_LOCKSPACE, LOCK_REQUEST_LEN);
    b[16..20].copy_from_slice(&flags.to_ne_bytes());
    b[20..24].copy_from_slice(&minor.to_ne_bytes());
    b
}

/// `DLM_USER_PURGE` on a lockspace device: unlock the orphans of node
/// `nodeid` (0: this node) left by process `pid` (0: any).
pub fn purge(nodeid: u32, pid: u32) -> Vec<u8> {
    let mut b = header(CMD_PURGE, LOCK_REQUEST_LEN);
    b[16..20].copy_from_slice(&nodeid.to_ne_bytes());
    b[20..24].copy_from_slice(&pid.to_ne_bytes());
    b
}

/// What one `read(2)` of a lockspace device returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A request of the lock with this token completed.
    Completion {
        token: u64,
        /// 0 granted; `-EAGAIN`, `-EDEADLK`, `-ECANCEL`, `-EUNLOCK`, ...
        status: i32,
        lkid: u32,
        /// `DLM_SBF_*`.
        flags: u8,
        lvb: Option<Lvb>,
    },
    /// The lock with this token blocks another request for `mode`.
    Blocking { token: u64, mode: Mode },
}

/// Why a result could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("short result: {0} bytes")]
    Short(usize),
    #[error("result of device version {0}.{1}")]
    Version(u32, u32),
    #[error("result for an address we never gave ({0:#x})")]
    Address(u64),
    #[error("blocking callback for mode {0}")]
    Mode(u8),
    #[error("LVB offset {0} outside the {1}-byte result")]
    LvbOffset(u32, usize),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}

/// Parse one result. `b` is what `read(2)` returned (bytes from the kernel,
/// still checked: a wrong layout must not index out of bounds).
pub fn parse_result(b: &[u8]) -> Result<Event, WireError> {
    if b.len() < RESULT_LEN {
        return Err(WireError::Short(b.len()));
    }
    let (major, minor) = (u32_at(b, 0), u32_at(b, 4));
    if major != VERSION[0] {
        return Err(WireError::Version(major, minor));
    }
    let addr = u64_at(b, 16);
    let token = u64_at(b, 24);
    match addr {
        BAST_ADDR => {
            let m = b[64];
            let mode = mode_of(m).ok_or(WireError::Mode(m))?;
            Ok(Event::Blocking { token, mode })
        }
        CAST_ADDR => {
            let status = u32_at(b, 40) as i32;
            let lkid = u32_at(b, 44);
            let flags = b[48];
            let off = u32_at(b, 68);
            let lvb = if off == 0 {
                None
            } else {
                let start = off as usize;
                let v = b
                    .get(start..start.saturating_add(LVB_SIZE))
                    .ok_or(WireError::LvbOffset(off, b.len()))?;
                let mut lvb = [0u8; LVB_SIZE];
                lvb.copy_from_slice(v);
                Some(lvb)
            };
            Ok(Event::Completion {
                token,
                status,
                lkid,
                flags,
                lvb,
            })
        }
        other => Err(WireError::Address(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The offsets this module writes and reads, printed by a C program
    /// compiled against the installed `linux/dlm_device.h`: the layout is
    /// the kernel's, not our reading of it.
    #[test]
    fn layout_matches_the_kernel_header() {
        let dir = std::env::temp_dir().join(format!("dlm-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("l.c");
        std::fs::write(
            &src,
            r#"#include <stdio.h>
#include <stddef.h>
#include <linux/dlm_device.h>
#define O(t, f) printf(#t "." #f " %zu\n", offsetof(struct t, f))
int main(void) {
    struct dlm_write_request w;
    size_t i = (char *)&w.i - (char *)&w;
    printf("i %zu\n", i);
    printf("lock.mode %zu\n", i + offsetof(struct dlm_lock_params, mode));
    printf("lock.namelen %zu\n", i + offsetof(struct dlm_lock_params, namelen));
    printf("lock.flags %zu\n", i + offsetof(struct dlm_lock_params, flags));
    printf("lock.lkid %zu\n", i + offsetof(struct dlm_lock_params, lkid));
    printf("lock.castparam %zu\n", i + offsetof(struct dlm_lock_params, castparam));
    printf("lock.castaddr %zu\n", i + offsetof(struct dlm_lock_params, castaddr));
    printf("lock.bastparam %zu\n", i + offsetof(struct dlm_lock_params, bastparam));
    printf("lock.bastaddr %zu\n", i + offsetof(struct dlm_lock_params, bastaddr));
    printf("lock.lksb %zu\n", i + offsetof(struct dlm_lock_params, lksb));
    printf("lock.lvb %zu\n", i + offsetof(struct dlm_lock_params, lvb));
    printf("lock.name %zu\n", i + offsetof(struct dlm_lock_params, name));
    printf("lspace.flags %zu\n", i + offsetof(struct dlm_lspace_params, flags));
    printf("lspace.minor %zu\n", i + offsetof(struct dlm_lspace_params, minor));
    printf("lspace.name %zu\n", i + offsetof(struct dlm_lspace_params, name));
    O(dlm_write_request, cmd);
    O(dlm_write_request, is64bit);
    O(dlm_lock_result, user_astaddr);
    O(dlm_lock_result, user_astparam);
    O(dlm_lock_result, lksb);
    printf("lksb.status %zu\n", offsetof(struct dlm_lock_result, lksb) + offsetof(struct dlm_lksb, sb_status));
    printf("lksb.lkid %zu\n", offsetof(struct dlm_lock_result, lksb) + offsetof(struct dlm_lksb, sb_lkid));
    printf("lksb.flags %zu\n", offsetof(struct dlm_lock_result, lksb) + offsetof(struct dlm_lksb, sb_flags));
    O(dlm_lock_result, bast_mode);
    O(dlm_lock_result, lvb_offset);
    printf("result %zu\n", sizeof(struct dlm_lock_result));
    printf("lvblen %d\n", DLM_USER_LVB_LEN);
    return 0;
}
"#,
        )
        .unwrap();
        let exe = dir.join("l");
        let cc = Command::new("cc")
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .output()
            .expect("cc (the C compiler Rust links with) must be installed");
        assert!(
            cc.status.success(),
            "compiling against linux/dlm_device.h (linux-libc-dev): {}",
            String::from_utf8_lossy(&cc.stderr)
        );
        let out = Command::new(&exe).output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let text = String::from_utf8(out.stdout).unwrap();
        let got: std::collections::HashMap<&str, usize> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k, v.parse().unwrap()))
            .collect();
        let want = [
            ("i", 16),
            ("lock.mode", 16),
            ("lock.namelen", 17),
            ("lock.flags", 20),
            ("lock.lkid", 24),
            ("lock.castparam", 48),
            ("lock.castaddr", 56),
            ("lock.bastparam", 64),
            ("lock.bastaddr", 72),
            ("lock.lksb", 80),
            ("lock.lvb", 88),
            ("lock.name", LOCK_REQUEST_LEN),
            ("lspace.flags", 16),
            ("lspace.minor", 20),
            ("lspace.name", LSPACE_REQUEST_LEN),
            ("dlm_write_request.cmd", 12),
            ("dlm_write_request.is64bit", 13),
            ("dlm_lock_result.user_astaddr", 16),
            ("dlm_lock_result.user_astparam", 24),
            ("dlm_lock_result.lksb", 40),
            ("lksb.status", 40),
            ("lksb.lkid", 44),
            ("lksb.flags", 48),
            ("dlm_lock_result.bast_mode", 64),
            ("dlm_lock_result.lvb_offset", 68),
            ("result", RESULT_LEN),
            ("lvblen", LVB_SIZE),
        ];
        for (k, v) in want {
            assert_eq!(got.get(k), Some(&v), "{k} in:\n{text}");
        }
    }

    #[test]
    fn lock_request_bytes() {
        let lvb = [7u8; LVB_SIZE];
        let name = crate::resource_name(crate::ResName::new(2, 0x84));
        let b = lock(&LockRequest {
            mode: Mode::PR,
            flags: lkf::CONVERT | lkf::VALBLK,
            lkid: 0x1234,
            token: 0xdead_beef,
            lvb: Some(&lvb),
            name: &name,
        });
        assert_eq!(b.len(), LOCK_REQUEST_LEN + 24);
        assert_eq!(u32_at(&b, 0), 6);
        assert_eq!((b[12], b[13]), (CMD_LOCK, 1));
        assert_eq!((b[16], b[17]), (3, 24));
        assert_eq!(u32_at(&b, 20), lkf::CONVERT | lkf::VALBLK);
        assert_eq!(u32_at(&b, 24), 0x1234);
        assert_eq!(u64_at(&b, 48), 0xdead_beef);
        assert_eq!(u64_at(&b, 56), CAST_ADDR);
        assert_eq!(u64_at(&b, 72), BAST_ADDR);
        assert_eq!(&b[88..120], &lvb);
        assert_eq!(&b[120..], &name);
        let c = create_lockspace("fs1", 0);
        assert_eq!(c[12], CMD_CREATE_LOCKSPACE);
        assert_eq!(c.len(), LOCK_REQUEST_LEN + 3);
        assert_eq!(&c[24..28], b"fs1\0");
        assert_eq!(remove_lockspace(7, 2).len(), LOCK_REQUEST_LEN);
    }

    fn result(addr: u64, token: u64, status: i32, bast: u8, lvb: Option<&Lvb>) -> Vec<u8> {
        let mut b = vec![0u8; RESULT_LEN + lvb.map_or(0, |_| LVB_SIZE)];
        b[0..4].copy_from_slice(&6u32.to_ne_bytes());
        b[16..24].copy_from_slice(&addr.to_ne_bytes());
        b[24..32].copy_from_slice(&token.to_ne_bytes());
        b[40..44].copy_from_slice(&status.to_ne_bytes());
        b[44..48].copy_from_slice(&9u32.to_ne_bytes());
        b[64] = bast;
        if let Some(v) = lvb {
            b[68..72].copy_from_slice(&(RESULT_LEN as u32).to_ne_bytes());
            b[RESULT_LEN..].copy_from_slice(v);
        }
        b
    }

    #[test]
    fn results_parse_and_bad_ones_are_errors() {
        let lvb = [3u8; LVB_SIZE];
        assert_eq!(
            parse_result(&result(CAST_ADDR, 5, 0, 0, Some(&lvb))),
            Ok(Event::Completion {
                token: 5,
                status: 0,
                lkid: 9,
                flags: 0,
                lvb: Some(lvb)
            })
        );
        assert_eq!(
            parse_result(&result(BAST_ADDR, 5, 0, 5, None)),
            Ok(Event::Blocking {
                token: 5,
                mode: Mode::EX
            })
        );
        assert!(parse_result(&result(BAST_ADDR, 5, 0, 9, None)).is_err());
        assert!(parse_result(&result(77, 5, 0, 0, None)).is_err());
        assert!(parse_result(&[0u8; 10]).is_err());
        let mut bad = result(CAST_ADDR, 5, 0, 0, None);
        bad[68..72].copy_from_slice(&60u32.to_ne_bytes());
        assert!(parse_result(&bad).is_err());
        bad[68..72].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(parse_result(&bad).is_err());
    }
}
