//! Permission checks for NFS callers. Through FUSE the kernel checks
//! permissions (`default_permissions`) before we see a request; NFS
//! requests come with only the caller's AUTH_SYS ids, so the server checks
//! them itself, with the same POSIX mode-bit rules: owner, then group, then
//! others; root passes read and write checks, and execute where any execute
//! bit is set. POSIX ACLs are not evaluated here (the mode's group bits,
//! which `chmod` keeps in step with the ACL mask, stand for them).

use super::rpc::Cred;
use crate::fs::Attr;

/// Read.
pub const R: u32 = 4;
/// Write.
pub const W: u32 = 2;
/// Execute / search.
pub const X: u32 = 1;

/// Whether `c` may access an inode with attributes `a` for `want` (a mask
/// of [`R`], [`W`], [`X`]).
pub fn allowed(c: &Cred, a: &Attr, want: u32) -> bool {
    let mode = a.mode;
    if c.uid() == 0 {
        let is_dir = mode & 0o170000 == 0o040000;
        return want & X == 0 || is_dir || mode & 0o111 != 0;
    }
    let bits = if c.uid() == a.uid {
        (mode >> 6) & 7
    } else if c.in_group(a.gid) {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    bits & want == want
}

/// Whether `c` owns `a` (or is root): chmod, utimes to a given time.
pub fn owner(c: &Cred, a: &Attr) -> bool {
    c.uid() == 0 || c.uid() == a.uid
}

/// The sticky-directory rule for removing or renaming `victim` out of
/// `dir`: with `S_ISVTX` only the owner of either (or root) may.
pub fn sticky_ok(c: &Cred, dir: &Attr, victim: &Attr) -> bool {
    dir.mode & 0o1000 == 0 || c.uid() == 0 || c.uid() == dir.uid || c.uid() == victim.uid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(mode: u32, uid: u32, gid: u32) -> Attr {
        Attr {
            ino: 5,
            size: 0,
            blocks: 0,
            mode,
            nlink: 1,
            uid,
            gid,
            rdev: 0,
            atime: (0, 0),
            mtime: (0, 0),
            ctime: (0, 0),
            blksize: 4096,
            generation: 1,
        }
    }

    fn user(uid: u32, gid: u32, gids: &[u32]) -> Cred {
        Cred::Sys {
            uid,
            gid,
            gids: gids.to_vec(),
        }
    }

    #[test]
    fn mode_bits() {
        let f = attr(0o100640, 1000, 100);
        assert!(allowed(&user(1000, 1, &[]), &f, R | W));
        assert!(allowed(&user(2000, 100, &[]), &f, R));
        assert!(!allowed(&user(2000, 100, &[]), &f, W));
        assert!(allowed(&user(2000, 5, &[100]), &f, R));
        assert!(!allowed(&user(2000, 5, &[]), &f, R));
        assert!(!allowed(&Cred::None, &f, R));
        // Root: read and write anything, execute only where someone may.
        assert!(allowed(&user(0, 0, &[]), &f, R | W));
        assert!(!allowed(&user(0, 0, &[]), &f, X));
        assert!(allowed(&user(0, 0, &[]), &attr(0o040000, 1, 1), X));
        // The owner's bits count even when group bits would allow more.
        let g = attr(0o100070, 1000, 100);
        assert!(!allowed(&user(1000, 100, &[]), &g, R));
        // Sticky directories.
        let d = attr(0o041777, 0, 0);
        assert!(!sticky_ok(&user(5, 5, &[]), &d, &f));
        assert!(sticky_ok(&user(1000, 5, &[]), &d, &f));
        assert!(sticky_ok(&user(5, 5, &[]), &attr(0o040777, 0, 0), &f));
    }
}
