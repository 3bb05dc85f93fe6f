//! The system-structure repairs gfs2-utils' fsck.gfs2 cannot make, each a
//! corruption scenario on a populated gfs2-utils image: a destroyed master
//! directory together with the rindex, the jindex or the per_node it names
//! (its other files found by scanning, those lost made anew: the jindex
//! from the journals found, the rindex from the rgrp headers, per_node from
//! its files), a destroyed per_node directory together with
//! one of its files, and a rindex that lost entries (and blocks) and must
//! grow a metadata tree, or get a new one, to hold them again.
//!
//! Each is repaired by ours (`-y`), then must be clean for ours and for
//! gfs2-utils' `fsck.gfs2 -n`, with the structures gfs2-utils' `gfs2_edit
//! -p` prints equal to the uncorrupted image's; then the kernel's GFS2, in
//! one VM boot for all of them, lists every file exactly as on the
//! uncorrupted image, writes, deletes and unmounts, and gfs2-utils finds
//! the result clean again.

use gfs2_fsck::testimg;
use gfs2_ondisk::{layout, Dinode};
use gfs2_oracle::{fsck_n, mkfs, sh, tool, Scratch, Vm};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn ours(args: &[&str], img: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fsck-gfs2"))
        .args(args)
        .arg(img)
        .output()
        .expect("run fsck-gfs2");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `gfs2_edit -p ARGS IMG` (gfs2-utils), its standard output.
fn edit(img: &Path, args: &[&str]) -> String {
    let out = Command::new(tool("gfs2_edit").expect("gfs2_edit (gfs2-utils)"))
        .arg("-p")
        .args(args)
        .arg(img)
        .output()
        .expect("run gfs2_edit");
    assert!(
        out.status.success(),
        "gfs2_edit -p {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The entries gfs2-utils lists for a system directory (`master`,
/// `jindex`, `per_node`): (name, block), '.' and '..' left out.
fn sys_dir(img: &Path, dir: &str) -> Vec<(String, u64)> {
    // "  n/n [HASH] formal/addr (0x../0x..) +0: Type  name"
    edit(img, &[dir])
        .lines()
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            if t.len() < 7 || !t[1].starts_with('[') {
                return None;
            }
            let name = t[t.len() - 1].to_string();
            let addr = t[2].split('/').nth(1)?.parse().ok()?;
            (name != "." && name != "..").then_some((name, addr))
        })
        .collect()
}

fn sys_file(img: &Path, dir: &str, name: &str) -> u64 {
    sys_dir(img, dir)
        .into_iter()
        .find(|e| e.0 == name)
        .unwrap_or_else(|| panic!("gfs2_edit lists no {name} in {dir}"))
        .1
}

/// The rindex entries as gfs2_edit prints them (the `ri_*` field lines).
fn rindex_fields(img: &Path) -> Vec<String> {
    edit(img, &["rindex"])
        .lines()
        .filter(|l| l.trim_start().starts_with("ri_") || l.starts_with("RG #"))
        .map(str::to_string)
        .collect()
}

/// A numeric field of a block (`sb` or a number), as gfs2_edit prints it.
fn field(img: &Path, blk: &str, name: &str) -> u64 {
    let out = edit(img, &[blk, "field", name]);
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("gfs2_edit field {name} of {blk}: {out:?}"))
}

fn bsize(img: &Path) -> u32 {
    field(img, "sb", "sb_bsize") as u32
}

fn zero_block(img: &Path, blk: u64) {
    let bs = u64::from(bsize(img));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(img)
        .expect("open image");
    f.write_all_at(&vec![0u8; bs as usize], blk * bs)
        .expect("zero block");
}

/// Cut the rindex down to its first `keep` entries, stuffed in its dinode
/// (its data blocks dropped, as a rindex rewritten short and then left
/// would be): the rgrps after them are known only from their headers.
fn truncate_rindex(img: &Path, keep: usize) {
    let bs = bsize(img) as usize;
    let ri = sys_file(img, "master", "rindex");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .expect("open image");
    let mut b = vec![0u8; bs];
    f.read_exact_at(&mut b, ri * bs as u64).expect("read");
    let mut di = Dinode::parse(&b).expect("rindex dinode");
    assert_eq!(di.height, 1, "the rindex starts with a tree");
    let first = u64::from_be_bytes(b[Dinode::SIZE..Dinode::SIZE + 8].try_into().expect("8"));
    let mut d = vec![0u8; bs];
    f.read_exact_at(&mut d, first * bs as u64).expect("read");
    let n = 96 * keep;
    b[Dinode::SIZE..].fill(0);
    b[Dinode::SIZE..Dinode::SIZE + n].copy_from_slice(&d[..n]);
    di.height = 0;
    di.size = n as u64;
    di.blocks = 1;
    di.write(&mut b).expect("dinode");
    f.write_all_at(&b, ri * bs as u64).expect("write");
}

/// Lose the rindex's second data block (its pointer cleared) and the
/// entries it held: the rindex says 10 entries, in one block.
fn drop_rindex_block(img: &Path) {
    let bs = bsize(img) as usize;
    let ri = sys_file(img, "master", "rindex");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .expect("open image");
    let mut b = vec![0u8; bs];
    f.read_exact_at(&mut b, ri * bs as u64).expect("read");
    let mut di = Dinode::parse(&b).expect("rindex dinode");
    assert_eq!((di.height, di.blocks), (1, 3), "rindex of two data blocks");
    b[Dinode::SIZE + 8..Dinode::SIZE + 16].fill(0);
    di.size = 96 * 10;
    di.blocks = 2;
    di.write(&mut b).expect("dinode");
    f.write_all_at(&b, ri * bs as u64).expect("write");
}

fn copy(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success(), "cp failed");
}

/// A corrupted copy of `base`, checked and repaired: ours -n finds it (4),
/// gfs2-utils -n does (`utils_before`: its exit status, or None where it
/// never finishes on this corruption), ours -y repairs it (1), and both
/// find it clean after.
fn repair(
    dir: &Scratch,
    base: &Path,
    name: &str,
    utils_before: Option<&[i32]>,
    corrupt: impl Fn(&Path),
) -> PathBuf {
    let img = dir.join(&format!("{name}.img"));
    copy(base, &img);
    corrupt(&img);
    let (rc, out) = ours(&["-n"], &img);
    assert_eq!(rc, 4, "{name}: ours -n before the repair:\n{out}");
    match utils_before {
        Some(ok) => {
            let f = fsck_n(&img).expect("fsck.gfs2 -n");
            assert!(
                ok.contains(&f.code),
                "{name}: gfs2-utils -n before the repair exited {}:\n{}",
                f.code,
                f.output
            );
        }
        None => eprintln!("{name}: gfs2-utils -n not asked (it never finishes on this)"),
    }
    let (rc, said) = ours(&["-y"], &img);
    assert_eq!(rc, 1, "{name}: ours -y:\n{said}");
    eprintln!("{name}: ours -y:\n{said}");
    let (rc, out) = ours(&["-n"], &img);
    assert_eq!(
        rc, 0,
        "{name}: ours -n after -y:\n{out}\n(-y said:\n{said})"
    );
    let f = fsck_n(&img).expect("fsck.gfs2 -n");
    assert_eq!(
        f.code, 0,
        "{name}: gfs2-utils -n after our -y:\n{}\n(-y said:\n{said})",
        f.output
    );
    img
}

#[test]
fn system_directories_and_rindex_rebuilt_then_kernel_mounts() {
    let dir = Scratch::new("fsck-sysrepair").expect("scratch dir");
    // 4 KiB blocks, two journals, several rgrps, files in two directories.
    let base4k = dir.join("base4k.img");
    mkfs(
        &base4k,
        160,
        &[
            "-p",
            "lock_nolock",
            "-b",
            "4096",
            "-j",
            "2",
            "-J",
            "16",
            "-r",
            "32",
        ],
    )
    .expect("mkfs.gfs2");
    testimg::populate(&base4k, 2, 20, 100_000).expect("populate");
    // 1 KiB blocks: eleven rgrps, a rindex of two blocks under one level.
    let base1k = dir.join("base1k.img");
    mkfs(
        &base1k,
        300,
        &[
            "-p",
            "lock_nolock",
            "-b",
            "1024",
            "-j",
            "2",
            "-J",
            "8",
            "-r",
            "32",
        ],
    )
    .expect("mkfs.gfs2");
    testimg::populate(&base1k, 2, 20, 50_000).expect("populate");
    for b in [&base4k, &base1k] {
        let f = fsck_n(b).expect("fsck.gfs2 -n");
        assert_eq!(f.code, 0, "base image: {}", f.output);
    }
    let master4k = sys_dir(&base4k, "master");
    let jindex4k = sys_dir(&base4k, "jindex");
    let per_node4k = sys_dir(&base4k, "per_node");
    let rindex4k = rindex_fields(&base4k);
    let rindex1k = rindex_fields(&base1k);
    let master_blk = field(&base4k, "sb", "sb_master_dir.no_addr");

    // (a) The master directory with the rindex, then with the jindex:
    // gfs2-utils stops with 8 on both.
    let a_ri = repair(&dir, &base4k, "master+rindex", Some(&[8]), |img| {
        let ri = sys_file(img, "master", "rindex");
        zero_block(img, master_blk);
        zero_block(img, ri);
    });
    assert_eq!(rindex_fields(&a_ri), rindex4k, "rebuilt rindex");
    let a_ji = repair(&dir, &base4k, "master+jindex", Some(&[8]), |img| {
        let ji = sys_file(img, "master", "jindex");
        zero_block(img, master_blk);
        zero_block(img, ji);
    });
    assert_eq!(sys_dir(&a_ji, "jindex"), jindex4k, "rebuilt jindex");
    // And with per_node, whose statfs_change files look like the master's
    // statfs (24 bytes each): every one must stay where it belongs.
    let a_pn = repair(&dir, &base4k, "master+per_node", Some(&[8]), |img| {
        let pn = sys_file(img, "master", "per_node");
        zero_block(img, master_blk);
        zero_block(img, pn);
    });
    assert_eq!(sys_dir(&a_pn, "per_node"), per_node4k, "rebuilt per_node");
    for (img, made) in [(&a_ri, "rindex"), (&a_ji, "jindex"), (&a_pn, "per_node")] {
        let m = sys_dir(img, "master");
        let mut names: Vec<&str> = m.iter().map(|e| e.0.as_str()).collect();
        names.sort_unstable();
        let mut want: Vec<&str> = master4k.iter().map(|e| e.0.as_str()).collect();
        want.sort_unstable();
        assert_eq!(names, want, "rebuilt master directory");
        // The files found keep their dinodes; the one made anew is new.
        for (n, a) in &m {
            let old = master4k.iter().find(|e| e.0 == *n).map(|e| e.1);
            if n == made {
                assert_ne!(Some(*a), old, "{made} made anew");
            } else {
                assert_eq!(Some(*a), old, "{n} found by scanning");
            }
        }
    }

    // (b) per_node with one of its files: gfs2-utils loops forever on a
    // destroyed per_node, so it is not asked before the repair.
    let b_pn = repair(&dir, &base4k, "per_node+statfs_change0", None, |img| {
        let sc = sys_file(img, "per_node", "statfs_change0");
        zero_block(img, sys_file(img, "master", "per_node"));
        zero_block(img, sc);
    });
    let pn = sys_dir(&b_pn, "per_node");
    for (n, a) in &per_node4k {
        let now = pn.iter().find(|e| e.0 == *n).map(|e| e.1);
        if n == "statfs_change0" {
            assert!(now.is_some_and(|x| x != *a), "{n} made anew: {pn:?}");
        } else {
            assert_eq!(now, Some(*a), "{n} found again: {pn:?}");
        }
    }
    assert_eq!(pn.len(), per_node4k.len(), "{pn:?}");

    // (c) A rindex that lost all but 4 of its 11 entries and its blocks:
    // rewritten whole, it needs a metadata tree again.
    let bs1k = bsize(&base1k);
    assert!(
        rindex1k.iter().filter(|l| l.starts_with("RG #")).count() as u64 * 96
            > layout::stuffed_max(bs1k),
        "the 1 KiB image's rindex must not fit in its dinode"
    );
    let c_ri = repair(&dir, &base1k, "rindex-grows", Some(&[4]), |img| {
        truncate_rindex(img, 4)
    });
    assert_eq!(rindex_fields(&c_ri), rindex1k, "rewritten rindex");
    let ri = sys_file(&c_ri, "master", "rindex");
    assert_eq!(
        field(&c_ri, &ri.to_string(), "di_height"),
        1,
        "the rindex's tree again"
    );
    // Its second block lost: the tree is written anew (the first block
    // given back), with two data blocks again.
    let c_blk = repair(
        &dir,
        &base1k,
        "rindex-lost-block",
        Some(&[4]),
        drop_rindex_block,
    );
    assert_eq!(rindex_fields(&c_blk), rindex1k, "rewritten rindex");
    let ri = sys_file(&c_blk, "master", "rindex").to_string();
    assert_eq!(field(&c_blk, &ri, "di_blocks"), 3, "dinode and two blocks");

    // The kernel: every file as on the uncorrupted image, then a workload
    // that allocates (rindex, rgrps), frees and updates statfs_change.
    let disks = [&base4k, &a_ri, &a_ji, &b_pn, &base1k, &c_ri, &a_pn, &c_blk];
    let repaired = [
        (1, "a_ri"),
        (2, "a_ji"),
        (3, "b_pn"),
        (5, "c_ri"),
        (6, "a_pn"),
        (7, "c_blk"),
    ];
    let mut s = String::new();
    s += &sh::manifest(&sh::dev(0), "base4k");
    s += &sh::manifest(&sh::dev(4), "base1k");
    for (i, tag) in repaired {
        s += &sh::manifest(&sh::dev(i), tag);
    }
    for (i, tag) in repaired {
        s += &sh::workload(
            &sh::dev(i),
            &format!("w_{tag}"),
            "dd if=/dev/urandom of=new bs=64k count=32 2>/dev/null\n\
             mkdir newdir\necho hello > newdir/f\n\
             rm dir0/file1\ndf . > /dev/null",
        );
    }
    let r = Vm::new(&s)
        .timeout(Duration::from_secs(300))
        .boot(&disks.iter().map(|p| p.as_path()).collect::<Vec<_>>())
        .expect("VM run");
    eprintln!("VM run: {:.1} s", r.elapsed.as_secs_f64());
    r.check()
        .expect("kernel mounts and uses every repaired image");
    let (m4, m1) = (r.section("base4k"), r.section("base1k"));
    assert!(m4.len() > 40 && m1.len() > 40, "{m4:?}\n{m1:?}");
    for (i, tag) in repaired {
        let want = if i == 5 || i == 7 { &m1 } else { &m4 };
        assert_eq!(&r.section(tag), want, "{tag}: files as before");
        assert_eq!(r.workload_status(&format!("w_{tag}")), Some(0), "{tag}");
    }
    for img in [&a_ri, &a_ji, &b_pn, &c_ri, &a_pn, &c_blk] {
        let f = fsck_n(img).expect("fsck.gfs2 -n");
        assert_eq!(
            f.code,
            0,
            "{}: after the kernel: {}",
            img.display(),
            f.output
        );
        let (rc, out) = ours(&["-n"], img);
        assert_eq!(rc, 0, "{}: ours after the kernel:\n{out}", img.display());
    }
}
