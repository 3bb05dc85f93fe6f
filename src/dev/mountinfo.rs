//! `/proc/self/mountinfo`, read afresh each time: what is mounted where.
//!
//! Read rather than asking the mount itself (a `stat` of a FUSE mount point
//! waits on its daemon, which may not be serving yet).

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mounted filesystem's device number, `MAJ:MIN`.
    pub dev: String,
    /// Where it is mounted, with mountinfo's escapes (`\040` for a space).
    pub point: String,
    /// Its type (`fuseblk.gfs2`, `ext4`, ...).
    pub fstype: String,
}

/// Every mount of this process's namespace, in mount order (a later entry
/// on the same point hides an earlier one). Empty if mountinfo is
/// unreadable.
pub fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| t.lines().filter_map(parse).collect())
        .unwrap_or_default()
}

/// `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE ...`
fn parse(line: &str) -> Option<Mount> {
    let f: Vec<&str> = line.split(' ').collect();
    let sep = f.iter().position(|x| *x == "-")?;
    Some(Mount {
        dev: f.get(2)?.to_string(),
        point: f.get(4)?.to_string(),
        fstype: f.get(sep + 1)?.to_string(),
    })
}

/// The mount point spelled as mountinfo spells it.
pub fn escape(path: &str) -> String {
    path.replace(' ', "\\040")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let m = parse("45 27 7:0 / /tmp/a\\040b rw,relatime shared:3 - fuseblk.gfs2 /dev/loop0 rw")
            .unwrap();
        assert_eq!(m.dev, "7:0");
        assert_eq!(m.point, escape("/tmp/a b"));
        assert_eq!(m.fstype, "fuseblk.gfs2");
        assert_eq!(parse("45 27 7:0 / /x rw"), None);
    }
}
