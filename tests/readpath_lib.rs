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
