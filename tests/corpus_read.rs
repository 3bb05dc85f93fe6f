//! The reference corpus (`images/`, written by the Linux kernel) read
//! through our FUSE mount: for every tree image the manifest (types, modes,
//! owners, sizes, link counts, nanosecond mtimes, file checksums, symlink
//! targets, xattrs and ACLs) equals the kernel's committed one; for every
//! crashed-node image our mount replays the dirty journal, every fsync'd
//! file has its checksum, the tree equals the kernel's own recovery of the
//! same image, and gfs2-utils' `fsck.gfs2 -n` is clean afterwards.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

fn committed(name: &str, ext: &str) -> String {
    let p = gfs2_oracle::corpus::dir().join(format!("{name}.{ext}"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn manifest_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("M "))
        .map(str::to_owned)
        .collect()
}

fn host_manifest(dir: &Path) -> Vec<String> {
    gfs2_oracle::host_manifest(dir).expect("manifest of our mount")
}

fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn kernel_written_trees_read_identically() {
    let names = gfs2_oracle::corpus::list().expect("corpus list");
    let trees: Vec<&String> = names.iter().filter(|n| n.starts_with("tree-")).collect();
    assert!(
        trees.len() >= 3,
        "corpus has too few tree images: {names:?}"
    );
    let work = std::env::temp_dir().join(format!("corpus-read-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    for name in trees {
        let img = gfs2_oracle::corpus::image(name, &work).expect("decompress image");
        let kernel = manifest_lines(&committed(name, "manifest"));
        let ours = with_mount(
            &img,
            "ro,acl,allow_other,lockproto=lock_nolock",
            name,
            |m| {
                // Device numbers straight from the dinodes.
                let types = m.join("types");
                if types.exists() {
                    let ls = Command::new("ls")
                        .arg("-ln")
                        .arg(&types)
                        .output()
                        .expect("ls");
                    let ls = String::from_utf8_lossy(&ls.stdout).to_string();
                    assert!(ls.contains("1,  3"), "{name}: types/chr is not 1,3:\n{ls}");
                    assert!(ls.contains("8, 17"), "{name}: types/blk is not 8,17:\n{ls}");
                }
                host_manifest(m)
            },
        );
        compare_manifests(&without_rdev(&kernel), &without_rdev(&ours), name);
        let _ = std::fs::remove_file(&img);
    }
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn crashed_nodes_recover_like_the_kernel() {
    let names = gfs2_oracle::corpus::list().expect("corpus list");
    let crashes: Vec<&String> = names.iter().filter(|n| n.starts_with("crash-")).collect();
    assert!(
        crashes.len() >= 2,
        "corpus has too few crash images: {names:?}"
    );
    let work = std::env::temp_dir().join(format!("corpus-crash-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    for name in crashes {
        let img = gfs2_oracle::corpus::image(name, &work).expect("decompress image");
        let dirty = gfs2_oracle::fsck_n(&img).expect("fsck.gfs2 -n");
        assert_ne!(
            dirty.code, 0,
            "{name}: the committed crash image is not dirty"
        );
        let mut fsynced = std::collections::BTreeMap::new();
        for l in committed(name, "fsynced").lines() {
            let mut it = l.split_whitespace();
            if it.next() == Some("FSYNCED") {
                if let (Some(p), Some(h)) = (it.next(), it.next()) {
                    fsynced.insert(p.to_string(), h.to_string());
                }
            }
        }
        assert!(fsynced.len() > 10, "{name}: fsync list too short");
        let ours = with_mount(&img, "acl,allow_other,lockproto=lock_nolock", name, |m| {
            for (p, h) in &fsynced {
                assert_eq!(
                    &sha256(&m.join(p)),
                    h,
                    "{name}: fsync'd {p} after our recovery"
                );
            }
            host_manifest(m)
        });
        let kernel = manifest_lines(&committed(name, "manifest"));
        compare_manifests(&kernel, &ours, &format!("{name} after recovery"));
        gfs2_oracle::fsck_clean(&img).unwrap_or_else(|e| panic!("{name}: {e}"));
        let _ = std::fs::remove_file(&img);
    }
    let _ = std::fs::remove_dir_all(&work);
}
