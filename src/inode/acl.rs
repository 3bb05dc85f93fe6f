//! POSIX ACL inheritance at create time (the kernel's `posix_acl_create`).
//!
//! ACLs are stored as the `system.posix_acl_access` / `_default`
//! attributes in the kernel's xattr format: a little-endian version word (2)
//! then entries of (tag u16, perm u16, id u32). With FUSE's POSIX ACL
//! support the kernel enforces ACLs but leaves inheritance to the
//! filesystem: a new inode in a directory with a default ACL gets that ACL
//! as its access ACL, masked by the mode it was created with, and a new
//! directory also inherits the default ACL itself.

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const GROUP_OBJ: u16 = 0x04;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// One ACL entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

fn parse(v: &[u8]) -> Option<Vec<Entry>> {
    let ver = u32::from_le_bytes(v.get(..4)?.try_into().ok()?);
    if ver != VERSION || (v.len() - 4) & 7 != 0 {
        return None;
    }
    Some(
        v[4..]
            .chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect(),
    )
}

fn encode(e: &[Entry]) -> Vec<u8> {
    let mut v = VERSION.to_le_bytes().to_vec();
    for x in e {
        v.extend_from_slice(&x.tag.to_le_bytes());
        v.extend_from_slice(&x.perm.to_le_bytes());
        v.extend_from_slice(&x.id.to_le_bytes());
    }
    v
}

/// What a new inode inherits from its directory's default ACL `default`
/// given the requested `mode`: the mode to store, the access ACL to set
/// (`None` when the mode says it all), and whether a directory also takes
/// the default ACL. `None` when the default ACL cannot be parsed.
pub fn inherit(default: &[u8], mode: u32) -> Option<(u32, Option<Vec<u8>>)> {
    let mut acl = parse(default)?;
    let mut mode = mode;
    let has_mask = acl.iter().any(|e| e.tag == MASK);
    for e in acl.iter_mut() {
        match e.tag {
            USER_OBJ => {
                e.perm &= ((mode >> 6) & 7) as u16;
                mode = (mode & !0o700) | (u32::from(e.perm) << 6);
            }
            OTHER => {
                e.perm &= (mode & 7) as u16;
                mode = (mode & !0o007) | u32::from(e.perm);
            }
            // The group class: the mask when there is one, else the owning
            // group's entry.
            MASK => {
                e.perm &= ((mode >> 3) & 7) as u16;
                mode = (mode & !0o070) | (u32::from(e.perm) << 3);
            }
            GROUP_OBJ if !has_mask => {
                e.perm &= ((mode >> 3) & 7) as u16;
                mode = (mode & !0o070) | (u32::from(e.perm) << 3);
            }
            _ => {}
        }
    }
    let minimal = acl
        .iter()
        .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER));
    Some((mode, (!minimal).then(|| encode(&acl))))
}

/// The access ACL after `chmod` to `mode` (the kernel's
/// `posix_acl_chmod`): the owner, group-class (mask, or the owning group
/// without one) and other entries take the mode's bits.
pub fn chmod(access: &[u8], mode: u32) -> Option<Vec<u8>> {
    let mut acl = parse(access)?;
    let has_mask = acl.iter().any(|e| e.tag == MASK);
    for e in acl.iter_mut() {
        match e.tag {
            USER_OBJ => e.perm = ((mode >> 6) & 7) as u16,
            OTHER => e.perm = (mode & 7) as u16,
            MASK => e.perm = ((mode >> 3) & 7) as u16,
            GROUP_OBJ if !has_mask => e.perm = ((mode >> 3) & 7) as u16,
            _ => {}
        }
    }
    Some(encode(&acl))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(e: &[(u16, u16, u32)]) -> Vec<u8> {
        encode(
            &e.iter()
                .map(|&(tag, perm, id)| Entry { tag, perm, id })
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn masks_by_mode_like_posix_acl_create() {
        let d = acl(&[
            (USER_OBJ, 7, 0),
            (2, 6, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 5, 0),
        ]);
        let (mode, a) = inherit(&d, 0o100640).unwrap();
        assert_eq!(mode, 0o100640);
        let e = parse(&a.unwrap()).unwrap();
        assert_eq!(e[3].perm, 4); // mask limited to the group bits (r)
        assert_eq!(e[4].perm, 0); // other: none
        let minimal = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0), (OTHER, 0, 0)]);
        let (mode, a) = inherit(&minimal, 0o40777).unwrap();
        assert_eq!(mode, 0o40750);
        assert!(a.is_none());
        assert!(inherit(b"junk", 0o644).is_none());
    }
}
