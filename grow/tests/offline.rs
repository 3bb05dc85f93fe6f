//! Our gfs2_grow and gfs2_jadd on unmounted images (which gfs2-utils'
//! tools cannot do), checked by gfs2-utils: `fsck.gfs2 -n` clean,
//! `gfs2_edit -p` listings of the jindex and per_node directories, the new
//! journals' sizes. Files written before the change must read back the same
//! (through our library). The command-line errors are compared with
//! gfs2-utils' own binaries, which reach those paths without a mount. The
//! crash tests kill the tools at chosen device writes (SIGKILL, see
//! `gfs2_grow::killpoint`) and require a filesystem that fsck accepts or
//! repairs with every earlier file intact.

mod common;

use common::{after_crash, assert_clean, mount, points, s, seed};
use gfs2_oracle::{edit_field, mkfs, Scratch};
use std::path::Path;
use std::process::Command;

const GROW: &str = env!("CARGO_BIN_EXE_gfs2_grow");
const JADD: &str = env!("CARGO_BIN_EXE_gfs2_jadd");

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_env(bin: &str, args: &[&str], env: &[(&str, String)]) -> Out {
    let mut c = Command::new(bin);
    c.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().expect("run tool");
    Out {
        code: o.status.code().unwrap_or(-9),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn run(bin: &str, args: &[&str]) -> Out {
    run_env(bin, args, &[])
}

fn extend(img: &Path, mb: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(img)
        .expect("open image");
    f.set_len(mb << 20).expect("extend image");
}

const FILES: [(&str, usize); 4] = [("a", 100), ("b", 5000), ("c", 300_000), ("d", 1)];

/// Write the test files through our library.
fn write_files(img: &Path) {
    let fs = mount(img, None);
    let root = fs.root();
    for (i, (name, len)) in FILES.iter().enumerate() {
        let a = fs
            .mknod(root, name.as_bytes(), 0o100644, 0, 0, 0, 0, None)
            .expect("create");
        fs.write(a.ino, 0, &common::content(i as u64, *len))
            .expect("write");
    }
    fs.unmount().expect("unmount");
}

/// Every test file must read back as written.
fn check_files(img: &Path, what: &str) {
    let fs = mount(img, None);
    for (i, (name, len)) in FILES.iter().enumerate() {
        let a = fs
            .lookup(fs.root(), name.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: file {name} lost: {e}"));
        let got = fs.read(a.ino, 0, len + 10).expect("read");
        assert!(
            got == common::content(i as u64, *len),
            "{what}: file {name} changed"
        );
    }
    fs.unmount().expect("unmount");
}

/// The statfs totals our library reports must equal the rindex's data.
fn check_statfs(img: &Path, what: &str) -> u64 {
    let fs = mount(img, None);
    let total: u64 = fs.rindex().iter().map(|r| u64::from(r.data)).sum();
    let st = fs.statfs().expect("statfs");
    fs.unmount().expect("unmount");
    assert_eq!(st.blocks, total, "{what}: statfs total vs rindex");
    total
}

fn rgrp_count(img: &Path) -> usize {
    let fs = mount(img, None);
    let n = fs.rindex().len();
    fs.unmount().expect("unmount");
    n
}

#[test]
fn grow_matrix() {
    let t = Scratch::new("grow-matrix").expect("scratch");
    for bsize in [1024u32, 4096] {
        for (from, to) in [(100u64, 180u64), (100, 700), (64, 2600)] {
            let what = format!("bsize {bsize}, {from} -> {to} MB");
            let img = t.join(&format!("g-{bsize}-{to}.img"));
            mkfs(
                &img,
                from,
                &["-p", "lock_nolock", "-j", "1", "-b", &bsize.to_string()],
            )
            .expect("mkfs");
            write_files(&img);
            let before = check_statfs(&img, &what);
            let old_rgrps = rgrp_count(&img);
            extend(&img, to);
            let o = run(GROW, &[s(&img)]);
            assert_eq!(o.code, 0, "{what}: {}{}", o.stdout, o.stderr);
            let lines: Vec<&str> = o.stdout.lines().collect();
            assert_eq!(lines.first(), Some(&"Mount point: (not mounted)"), "{what}");
            assert_eq!(lines.last(), Some(&"gfs2_grow complete."), "{what}");
            let length = format!("Length: {} blocks", (to << 20) / u64::from(bsize));
            assert!(lines.contains(&length.as_str()), "{what}: {}", o.stdout);
            assert_clean(&img, &what);
            check_files(&img, &what);
            let after = check_statfs(&img, &what);
            assert!(after > before, "{what}: statfs total did not grow");
            assert!(rgrp_count(&img) > old_rgrps, "{what}: no new rgrps");
            // New space covers the device but for less than an rgrp's minimum.
            let fs = mount(&img, None);
            let end = fs.rindex().last().map(|r| r.data0 + u64::from(r.data));
            fs.unmount().expect("unmount");
            let dev_blocks = (to << 20) / u64::from(bsize);
            let min_rg = (32u64 << 20) / u64::from(bsize);
            assert!(
                end.is_some_and(|e| e <= dev_blocks && dev_blocks - e < min_rg),
                "{what}: rgrps end at {end:?} of {dev_blocks}"
            );
            // Growing again without more room: gfs2-utils' refusal.
            let o = run(GROW, &[s(&img)]);
            assert_eq!(o.code, 255, "{what}: second grow");
            assert_eq!(
                o.stderr,
                format!(
                    "The calculated resource group size is too small.\n{} has not grown.\n",
                    s(&img)
                )
            );
            assert_clean(&img, &what);
            std::fs::remove_file(&img).expect("remove image");
        }
    }
}

#[test]
fn grow_test_mode_changes_nothing() {
    let t = Scratch::new("grow-T").expect("scratch");
    let img = t.join("t.img");
    mkfs(&img, 100, &["-p", "lock_nolock", "-j", "1"]).expect("mkfs");
    write_files(&img);
    extend(&img, 400);
    let before = std::fs::read(&img).expect("read image");
    let o = run(GROW, &["-T", s(&img)]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(o
        .stdout
        .starts_with("(Test mode - file system will not be changed)\n"));
    assert!(o.stdout.contains("The file system will grow by 300MB."));
    assert!(
        std::fs::read(&img).expect("read image") == before,
        "-T changed the image"
    );
    // -q silences the notices; -v adds the entry count.
    let o = run(GROW, &["-T", "-q", s(&img)]);
    assert_eq!(o.stdout, "(Test mode - file system will not be changed)\n");
    let o = run(GROW, &["-Tv", s(&img)]);
    assert!(o.stdout.contains(" new rindex entries.\n"), "{}", o.stdout);
    assert!(
        std::fs::read(&img).expect("read image") == before,
        "-T changed the image"
    );
}

/// The names in a system directory, from gfs2_edit's listing.
fn dir_names(img: &Path, dir: &str) -> Vec<String> {
    let addr = "master".to_string();
    let out = Command::new("gfs2_edit")
        .args(["-p", &addr])
        .arg(img)
        .output()
        .expect("gfs2_edit");
    let dir_addr = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            (t.len() >= 7 && t[1].starts_with('[') && t[t.len() - 1] == dir)
                .then(|| t[2].split('/').nth(1).map(str::to_string))
                .flatten()
        })
        .unwrap_or_else(|| panic!("no {dir} in the master directory"));
    let out = Command::new("gfs2_edit")
        .args(["-p", &dir_addr])
        .arg(img)
        .output()
        .expect("gfs2_edit");
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            (t.len() >= 7 && t[1].starts_with('['))
                .then(|| format!("{}:{}", t[t.len() - 2], t[t.len() - 1]))
        })
        .filter(|n| !n.ends_with(":.") && !n.ends_with(":.."))
        .collect();
    names.sort();
    names
}

fn expected_names(journals: u32) -> (Vec<String>, Vec<String>) {
    let mut j: Vec<String> = (0..journals).map(|i| format!("File:journal{i}")).collect();
    let mut p: Vec<String> = (0..journals)
        .flat_map(|i| {
            [
                format!("File:inum_range{i}"),
                format!("File:quota_change{i}"),
                format!("File:statfs_change{i}"),
            ]
        })
        .collect();
    j.sort();
    p.sort();
    (j, p)
}

/// `di_size` of a system file, found by path from the master directory.
fn sys_size(img: &Path, fs_path: &str) -> u64 {
    let fs = mount(img, None);
    let master = fs.superblock().master_dir.addr;
    let mut ino = master;
    for c in fs_path.split('/') {
        ino = fs.lookup(ino, c.as_bytes()).expect("lookup").ino;
    }
    let size = fs.getattr(ino).expect("getattr").size;
    fs.unmount().expect("unmount");
    // And gfs2-utils agrees on it.
    let f = edit_field(img, &ino.to_string(), "di_size").expect("di_size");
    assert_eq!(f, size.to_string(), "gfs2_edit di_size of {fs_path}");
    size
}

#[test]
fn jadd_matrix() {
    let t = Scratch::new("jadd-matrix").expect("scratch");
    for bsize in [1024u32, 4096] {
        for (n, jmb, cmb) in [(1u32, 32u64, 1u64), (2, 48, 2)] {
            let what = format!("bsize {bsize}, -j {n} -J {jmb} -c {cmb}");
            let img = t.join(&format!("j-{bsize}-{n}.img"));
            mkfs(
                &img,
                400,
                &["-p", "lock_nolock", "-j", "1", "-b", &bsize.to_string()],
            )
            .expect("mkfs");
            write_files(&img);
            let o = run(
                JADD,
                &[
                    "-j",
                    &n.to_string(),
                    "-J",
                    &jmb.to_string(),
                    "-c",
                    &cmb.to_string(),
                    s(&img),
                ],
            );
            assert_eq!(o.code, 0, "{what}: {}{}", o.stdout, o.stderr);
            assert_eq!(
                o.stdout,
                format!(
                    "Filesystem: {}\nOld journals: 1\nNew journals: {}\n",
                    s(&img),
                    1 + n
                ),
                "{what}"
            );
            assert_clean(&img, &what);
            let (j, p) = expected_names(1 + n);
            assert_eq!(dir_names(&img, "jindex"), j, "{what}: jindex");
            assert_eq!(dir_names(&img, "per_node"), p, "{what}: per_node");
            for i in 1..=n {
                assert_eq!(sys_size(&img, &format!("jindex/journal{i}")), jmb << 20);
                assert_eq!(
                    sys_size(&img, &format!("per_node/quota_change{i}")),
                    cmb << 20
                );
                assert_eq!(sys_size(&img, &format!("per_node/statfs_change{i}")), 24);
                assert_eq!(sys_size(&img, &format!("per_node/inum_range{i}")), 16);
            }
            check_files(&img, &what);
            // A node on the new journal writes, unmounts cleanly.
            let fs = mount(&img, Some(n));
            let a = fs
                .mknod(fs.root(), b"on-new-journal", 0o100644, 0, 0, 0, 0, None)
                .expect("create on the new journal");
            fs.write(a.ino, 0, &common::content(99, 70_000))
                .expect("write");
            fs.unmount().expect("unmount");
            assert_clean(&img, &format!("{what}, after a mount on journal {n}"));
            check_files(&img, &what);
            std::fs::remove_file(&img).expect("remove image");
        }
    }
}

#[test]
fn jadd_refuses_what_does_not_fit() {
    let t = Scratch::new("jadd-full").expect("scratch");
    let img = t.join("small.img");
    mkfs(&img, 64, &["-p", "lock_nolock", "-j", "1"]).expect("mkfs");
    let before = std::fs::read(&img).expect("read");
    let o = run(JADD, &["-J", "1024", s(&img)]);
    assert_eq!(o.code, 255);
    assert!(
        o.stdout.starts_with(
            "\nInsufficient space on the device to add 1 1024MB journals (1MB QC size)\n\n"
        ),
        "{}",
        o.stdout
    );
    assert_eq!(
        o.stderr,
        "Failed to add journals: No space left on device\n"
    );
    // The tool's own mount leaves its journal as it found it (clean), so
    // gfs2-utils finds nothing to say.
    assert_clean(&img, "refused jadd");
    let after = std::fs::read(&img).expect("read");
    assert_eq!(after.len(), before.len());
}

/// Command-line errors that gfs2-utils' binaries reach without a mount:
/// the same stdout, stderr and status (program paths normalised).
#[test]
fn cli_errors_match_gfs2_utils() {
    let t = Scratch::new("cli").expect("scratch");
    let not_gfs2 = t.join("zero.img");
    std::fs::write(&not_gfs2, vec![0u8; 1 << 20]).expect("write");
    let ng = s(&not_gfs2).to_string();
    let grow_cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["-h"],
        vec!["-V"],
        vec!["-x"],
        vec!["-?"],
        vec!["-T"],
        vec!["-T", "-x"],
        vec!["-q", "-D"],
        vec!["/nonexistent/x"],
        vec![&ng],
        vec!["-T", &ng],
        vec!["-q", &ng],
    ];
    let jadd_cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["-h"],
        vec!["-V"],
        vec!["-x"],
        vec!["-J"],
        vec!["-u", "3", "x"],
        vec!["-j", "0", "x"],
        vec!["-J", "10", "x"],
        vec!["-J", "2000", "x"],
        vec!["-J", "abc", "x"],
        vec!["-c", "0", "x"],
        vec!["-c", "65", "x"],
        vec!["a", "b"],
        vec!["-D", "-J", "40", "-c", "3", "x", "-q"],
        vec!["/nonexistent/x"],
        vec![&ng],
        vec!["-D", &ng],
    ];
    for (ours, theirs, cases) in [
        (GROW, "/usr/sbin/gfs2_grow", &grow_cases),
        (JADD, "/usr/sbin/gfs2_jadd", &jadd_cases),
    ] {
        assert!(
            Path::new(theirs).exists(),
            "{theirs} missing: install gfs2-utils"
        );
        for args in cases.iter() {
            let norm = |o: Out, bin: &str| {
                let f = |x: String| x.replace(bin, "PROG");
                (o.code, f(o.stdout), f(o.stderr))
            };
            let a = norm(run(ours, args), ours);
            let b = norm(run(theirs, args), theirs);
            assert_eq!(a, b, "{theirs} {args:?}");
        }
    }
}

/// Kill a tool at 10 device writes (or every one, when fewer) spread over its run (picked by `seed`),
/// and after each: fsck.gfs2 -n accepts the image unless the journal is
/// dirty; with the journal replayed by a mount it is clean, and
/// fsck.gfs2 -y repairs it (then -n is clean); every earlier file reads
/// back; running the tool again finishes the job cleanly.
fn kill_points(bin: &str, args: &[&str], prepare: &dyn Fn(&Path), done: &dyn Fn(&Path), seed: u64) {
    let t = Scratch::new("kill").expect("scratch");
    let base = t.join("base.img");
    prepare(&base);
    let img = t.join("img.img");
    std::fs::copy(&base, &img).expect("copy");
    let mut a: Vec<&str> = args.to_vec();
    a.push(s(&img));
    let o = run_env(bin, &a, &[(gfs2_grow::killpoint::COUNT, "1".into())]);
    assert_eq!(o.code, 0, "{bin} {a:?}: {}{}", o.stdout, o.stderr);
    let total: u64 = o
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("device writes: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("write count");
    assert!(total >= 3, "only {total} writes");
    // 10 points: the first writes, the last ones, and some in between.
    for n in points(total, 10, seed) {
        std::fs::copy(&base, &img).expect("copy");
        let o = run_env(
            bin,
            &a,
            &[(gfs2_grow::killpoint::KILL_AFTER, n.to_string())],
        );
        let what = format!("{bin} killed at write {n} of {total} (seed {seed})");
        assert!(o.code == -9 || n == total, "{what}: exit {}", o.code);
        after_crash(&img, t.path(), &what, &check_files);
        // Finish the job.
        let o = run(bin, &a);
        assert!(
            o.code == 0 || (bin == GROW && o.code == 255),
            "{what}: rerun: {}{}",
            o.stdout,
            o.stderr
        );
        assert_clean(&img, &format!("{what}, rerun"));
        done(&img);
        check_files(&img, &what);
    }
}

#[test]
fn kill9_grow() {
    let seed = seed();
    eprintln!("seed {seed} (GFS2_TEST_SEED)");
    let prepare = |img: &Path| {
        mkfs(img, 64, &["-p", "lock_nolock", "-j", "1"]).expect("mkfs");
        write_files(img);
        extend(img, 160);
    };
    let done = |img: &Path| {
        let fs = mount(img, None);
        let end = fs.rindex().last().map(|r| r.data0 + u64::from(r.data));
        fs.unmount().expect("unmount");
        assert!(
            end.is_some_and(|e| e > (128 << 20) / 4096),
            "grow not finished: {end:?}"
        );
        check_statfs(img, "after the rerun");
    };
    kill_points(GROW, &[], &prepare, &done, seed);
}

#[test]
fn kill9_jadd() {
    let seed = seed();
    eprintln!("seed {seed} (GFS2_TEST_SEED)");
    let prepare = |img: &Path| {
        mkfs(img, 128, &["-p", "lock_nolock", "-j", "1"]).expect("mkfs");
        write_files(img);
    };
    let done = |img: &Path| {
        let fs = mount(img, None);
        let n = fs.journal_count().expect("journals");
        fs.unmount().expect("unmount");
        // The killed run may or may not have finished journal 1 before the
        // rerun added one more.
        assert!((2..=3).contains(&n), "{n} journals");
        let (j, _) = expected_names(n);
        assert_eq!(dir_names(img, "jindex"), j);
        let fs = mount(img, Some(n - 1));
        fs.unmount().expect("unmount on the newest journal");
    };
    kill_points(JADD, &["-J", "32"], &prepare, &done, seed);
}
