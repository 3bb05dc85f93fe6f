//! The filesystem library on images made at test time by gfs2-utils'
//! mkfs.gfs2 (the oracle for the layout), without FUSE.

mod common;

use common::{mkfs, tool, TempPath as TempImage};

use gfs2fuse::dev::file::{FileDevice, OpenFlags};
use gfs2fuse::fs::{Fs, MountOptions};
use gfs2fuse::log::recovery;
use std::process::Command;
use std::sync::Arc;

fn open(img: &TempImage) -> Arc<Fs> {
    let dev = FileDevice::open(&img.0, OpenFlags::default()).unwrap();
    Fs::mount(Arc::new(dev), MountOptions::default()).unwrap()
}

/// `gfs2_edit -p FIELD` output lines as (name, value) pairs.
fn edit(img: &TempImage, what: &str) -> String {
    let out = Command::new(tool("gfs2_edit"))
        .args(["-p", what])
        .arg(&img.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "gfs2_edit -p {what}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn mount_fresh_images_of_every_block_size() {
    for bsize in [512u32, 1024, 2048, 4096] {
        let img = mkfs(bsize, 3, 256, &format!("bs{bsize}"));
        let fs = open(&img);
        assert_eq!(fs.superblock().bsize, bsize);
        assert_eq!(fs.journals().len(), 3);
        // Root: a directory with "." and ".." only.
        let root = fs.getattr(fs.root()).unwrap();
        assert_eq!(root.mode & 0o170000, 0o040000);
        let mut names = Vec::new();
        fs.readdir(fs.root(), 0, |e| {
            names.push(String::from_utf8_lossy(e.name).into_owned());
            true
        })
        .unwrap();
        names.sort();
        assert_eq!(names, [".", ".."]);
        // The rindex agrees with gfs2-utils' view of it.
        let ri = edit(&img, "rindex");
        let n = ri.matches("ri_addr").count();
        assert_eq!(fs.rindex().len(), n, "rgrp count vs gfs2_edit -p rindex");
        for r in fs.rindex().iter() {
            assert!(
                ri.contains(&format!("{}", r.addr)),
                "rgrp {} not in gfs2_edit output",
                r.addr
            );
        }
        // statfs: free blocks below total, every journal clean.
        let st = fs.statfs().unwrap();
        assert!(st.blocks > 0 && st.bfree < st.blocks, "{st:?}");
        for j in fs.journals() {
            let h = recovery::find_head(fs.cache().device().as_ref(), bsize, &j.extents).unwrap();
            assert!(
                h.is_clean(),
                "journal {} of a fresh fs is dirty: {h:?}",
                j.jid
            );
        }
        fs.unmount().unwrap();
    }
}

#[test]
fn master_directory_lists_system_files() {
    let img = mkfs(4096, 2, 128, "master");
    let fs = open(&img);
    let master = fs.superblock().master_dir.addr;
    let mut names = Vec::new();
    fs.readdir(master, 0, |e| {
        names.push(String::from_utf8_lossy(e.name).into_owned());
        true
    })
    .unwrap();
    for want in ["jindex", "per_node", "inum", "statfs", "rindex", "quota"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let per_node = fs.lookup(master, b"per_node").unwrap();
    let mut pn = Vec::new();
    fs.readdir(per_node.ino, 0, |e| {
        pn.push(String::from_utf8_lossy(e.name).into_owned());
        true
    })
    .unwrap();
    for want in ["inum_range0", "statfs_change0", "quota_change1"] {
        assert!(pn.iter().any(|n| n == want), "{want} missing from {pn:?}");
    }
    assert_eq!(
        fs.lookup(master, b"nonexistent").unwrap_err().errno(),
        libc::ENOENT
    );
}

/// Listing order and resumption where names share a hash: in a stuffed
/// directory and in an exhash one of several leaves, names whose full
/// gfs2 hashes are equal (found by brute force) come out next to each other
/// in name order, every created name exactly once, cookies rising; a listing
/// resumed at any entry's cookie returns exactly the rest, and a fresh mount
/// gives the same cookies.
#[test]
fn equal_hashes_list_in_name_order_and_resume_at_every_cookie() {
    use std::collections::BTreeSet;
    let pairs: Vec<Vec<String>> = (1..=4u64).map(equal_hash_pair).collect();
    for p in &pairs {
        assert_eq!(
            gfs2_oracle::gfs2_hash(p[0].as_bytes()),
            gfs2_oracle::gfs2_hash(p[1].as_bytes())
        );
    }
    let img = mkfs(4096, 1, 128, "ties");
    let list = |fs: &Fs, dir: u64, from: u64| {
        let mut v = Vec::new();
        fs.readdir(dir, from, |e| {
            v.push((String::from_utf8_lossy(e.name).into_owned(), e.next));
            true
        })
        .unwrap();
        v
    };
    let mut first = Vec::new();
    {
        let fs = open(&img);
        let root = fs.root();
        for (dname, fillers) in [("small", 3usize), ("big", 700)] {
            let dir = fs
                .mknod(root, dname.as_bytes(), 0o040755, 0, 0, 0, 0, None)
                .unwrap()
                .ino;
            let mut want: BTreeSet<String> = (0..fillers).map(|i| format!("f{i}")).collect();
            // Pairs in reverse name order, so that creation order is not
            // the expected order.
            for p in &pairs {
                want.insert(p[1].clone());
                want.insert(p[0].clone());
            }
            for p in &pairs {
                fs.mknod(dir, p[1].as_bytes(), 0o100644, 0, 0, 0, 0, None)
                    .unwrap();
                fs.mknod(dir, p[0].as_bytes(), 0o100644, 0, 0, 0, 0, None)
                    .unwrap();
            }
            for i in 0..fillers {
                fs.mknod(dir, format!("f{i}").as_bytes(), 0o100644, 0, 0, 0, 0, None)
                    .unwrap();
            }
            let all = list(&fs, dir, 0);
            let got: Vec<&String> = all.iter().map(|(n, _)| n).collect();
            let set: BTreeSet<String> = got
                .iter()
                .filter(|n| **n != "." && **n != "..")
                .map(|n| n.to_string())
                .collect();
            assert_eq!(set, want, "{dname}: the names created");
            assert_eq!(all.len(), want.len() + 2, "{dname}: each name once");
            assert!(
                all.windows(2).all(|w| w[0].1 < w[1].1),
                "{dname}: cookies rise"
            );
            for p in &pairs {
                let at = got.iter().position(|n| **n == p[0]).unwrap();
                assert_eq!(got[at + 1], &p[1], "{dname}: {p:?} adjacent in name order");
            }
            for (i, (_, next)) in all.iter().enumerate() {
                assert_eq!(
                    list(&fs, dir, *next),
                    all[i + 1..],
                    "{dname}: resumed after entry {i}"
                );
            }
            first.push((dir, all));
        }
        fs.unmount().unwrap();
    }
    let fs = open(&img);
    for (dir, all) in &first {
        assert_eq!(&list(&fs, *dir, 0), all, "the same cookies after a remount");
    }
    fs.unmount().unwrap();
}

/// Two names with the same full gfs2 hash, in name order: random 12-letter
/// names from a generator seeded with `seed` until two collide (about
/// 80,000 names by the birthday bound).
fn equal_hash_pair(seed: u64) -> Vec<String> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut seen = std::collections::HashMap::new();
    loop {
        let name: String = (0..12)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (b'a' + (x % 26) as u8) as char
            })
            .collect();
        let h = gfs2_oracle::gfs2_hash(name.as_bytes());
        if let Some(other) = seen.insert(h, name.clone()) {
            if other != name {
                let mut v = vec![other, name];
                v.sort();
                return v;
            }
        }
    }
}
