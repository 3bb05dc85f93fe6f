//! Resource and lockspace names as the kernel's lock_dlm makes them, so that a
//! FUSE node and a kernel node contend for the same DLM resources.

use crate::{LockError, ResName};

/// Length of a resource name: 8 hex digits of type and 16 of number,
/// right-aligned and space-padded (`GDLM_STRNAME_BYTES - 1`).
pub const RESOURCE_NAME_LEN: usize = 24;

/// The DLM resource name of a glock: `"%8x%16x"` of type and number, which is
/// what lock_dlm's `gfs2_reverse_hex` into a space-filled buffer produces.
pub fn resource_name(res: ResName) -> [u8; RESOURCE_NAME_LEN] {
    let s = format!("{:8x}{:16x}", res.lk_type, res.number);
    let mut out = [b' '; RESOURCE_NAME_LEN];
    out.copy_from_slice(s.as_bytes());
    out
}

/// Longest file system name in a lock table (`GFS2_FSNAME_LEN - 1`).
pub const FSNAME_MAX: usize = 31;

/// Split a lock table `cluster:fsname` and return the lockspace name (the
/// fsname), as lock_dlm's mount does. Both parts must be non-empty.
pub fn lockspace_name(table: &str) -> Result<&str, LockError> {
    let bad = |why| LockError::BadTable {
        table: table.to_string(),
        why,
    };
    let (cluster, fsname) = table.split_once(':').ok_or(bad("no ':' separator"))?;
    if cluster.is_empty() {
        return Err(bad("empty cluster name"));
    }
    if fsname.is_empty() {
        return Err(bad("empty file system name"));
    }
    if fsname.len() > FSNAME_MAX {
        return Err(bad("file system name longer than 31 bytes"));
    }
    Ok(fsname)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_lock_dlm() {
        // The kernel writes digits from the right into a space-filled buffer
        // and writes a lone '0' for zero.
        assert_eq!(
            &resource_name(ResName::new(2, 0x84)),
            b"       2              84"
        );
        assert_eq!(
            &resource_name(ResName::new(1, 0)),
            b"       1               0"
        );
        assert_eq!(
            &resource_name(ResName::new(0xffff_ffff, u64::MAX)),
            b"ffffffffffffffffffffffff"
        );
        assert_eq!(
            &resource_name(ResName::new(9, 0x1a2b)),
            b"       9            1a2b"
        );
    }

    #[test]
    fn lock_table_split() {
        assert_eq!(lockspace_name("mycluster:myfs").unwrap(), "myfs");
        assert!(lockspace_name("nofsname").is_err());
        assert!(lockspace_name(":fs").is_err());
        assert!(lockspace_name("c:").is_err());
        assert!(lockspace_name(&format!("c:{}", "x".repeat(32))).is_err());
    }
}
