//! Our mkfs.gfs2 against the oracle. For every option set, our binary and
//! gfs2-utils' each format a sparse image of the same size; gfs2-utils'
//! `fsck.gfs2 -n` must find ours clean (exit 0), and `gfs2_edit` must show
//! the same resource groups, the same superblock (but the UUID) and the same
//! system directories (names, formal inode numbers, types) on both.

use std::path::{Path, PathBuf};
use std::process::Command;

const OURS: &str = env!("CARGO_BIN_EXE_mkfs-gfs2");

fn tool(name: &str) -> &str {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{name} not found: install gfs2-utils (scripts/test.sh does)"
    );
    name
}

struct Img(PathBuf);
impl Img {
    fn new(dir: &Path, name: &str, size: u64) -> Img {
        let p = dir.join(name);
        let f = std::fs::File::create(&p).expect("create image");
        f.set_len(size).expect("size image");
        Img(p)
    }
}
impl Drop for Img {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(bin: &str, args: &[&str], img: &Path) -> (i32, String) {
    let out = Command::new(bin)
        .args(args)
        .arg(img)
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn edit(img: &Path, what: &str) -> String {
    let out = Command::new(tool("gfs2_edit"))
        .args(["-p", what])
        .arg(img)
        .output()
        .expect("gfs2_edit");
    assert!(out.status.success(), "gfs2_edit -p {what} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `ri_*` lines of `gfs2_edit -p rindex` (the rindex dinode's own fields,
/// with timestamps, are left out).
fn rindex_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("ri_") || l.starts_with("RG #"))
        .map(str::to_owned)
        .collect()
}

/// Superblock fields but the UUID.
fn sb_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("The superblock has"))
        .filter(|l| !l.is_empty() && !l.starts_with("uuid") && !l.starts_with("Block #"))
        .map(str::to_owned)
        .collect()
}

/// Directory listing lines (`n/n [HASH] formal/addr ... type name`) reduced
/// to hash, formal inode number, type and name, sorted by name.
fn dir_entries(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.contains("] ") && l.contains(": "))
        .filter_map(|l| {
            let hash = l.split('[').nth(1)?.split(']').next()?;
            let rest = l.split("] ").nth(1)?;
            let formal = rest.split('/').next()?.trim();
            let tail = rest.split(": ").nth(1)?;
            let mut t = tail.split_whitespace();
            let ty = t.next()?;
            let name = t.next()?;
            Some(format!("{name} {ty} {formal} {hash}"))
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

struct Case {
    size: u64,
    args: &'static [&'static str],
}

fn check(dir: &Path, n: usize, c: &Case) {
    let ours = Img::new(dir, &format!("ours{n}"), c.size);
    let theirs = Img::new(dir, &format!("theirs{n}"), c.size);
    let mut args = vec!["-O", "-q"];
    args.extend_from_slice(c.args);
    let (code, text) = run(OURS, &args, &ours.0);
    assert_eq!(code, 0, "case {n} {:?}: our mkfs failed:\n{text}", c.args);
    let (code, text) = run(tool("mkfs.gfs2"), &args, &theirs.0);
    assert_eq!(code, 0, "case {n}: gfs2-utils mkfs failed:\n{text}");

    let (code, text) = run(tool("fsck.gfs2"), &["-n"], &ours.0);
    assert_eq!(
        code, 0,
        "case {n} {:?}: fsck.gfs2 -n on our image:\n{text}",
        c.args
    );

    let (a, b) = (edit(&ours.0, "rindex"), edit(&theirs.0, "rindex"));
    assert!(!rindex_lines(&b).is_empty());
    assert_eq!(rindex_lines(&a), rindex_lines(&b), "case {n}: rindex");
    let (a, b) = (edit(&ours.0, "sb"), edit(&theirs.0, "sb"));
    let (sa, sb) = (sb_lines(&a), sb_lines(&b));
    // Formal numbers always match; addresses match while no system
    // directory needed a hash table (we allocate its leaves last).
    let strip_addr = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|l| !l.starts_with("no_addr"))
            .cloned()
            .collect()
    };
    assert!(
        sb.len() >= 12,
        "case {n}: superblock fields not parsed:\n{b}"
    );
    assert_eq!(strip_addr(&sa), strip_addr(&sb), "case {n}: superblock");
    for d in ["master", "jindex", "per_node", "root"] {
        let (a, b) = (edit(&ours.0, d), edit(&theirs.0, d));
        let (ea, eb) = (dir_entries(&a), dir_entries(&b));
        assert!(eb.len() >= 2, "case {n}: no entries parsed for {d}:\n{b}");
        assert_eq!(ea, eb, "case {n}: {d} entries");
    }
}

const M: u64 = 1 << 20;
const G: u64 = 1 << 30;
const T: u64 = 1 << 40;

#[test]
fn our_images_are_fsck_clean_and_match_gfs2_utils() {
    let cases = [
        // Block sizes 512..4096; smallest devices each size accepts.
        Case {
            size: 100 * M,
            args: &[
                "-b",
                "512",
                "-p",
                "lock_nolock",
                "-j",
                "1",
                "-J",
                "8",
                "-r",
                "32",
            ],
        },
        Case {
            size: 64 * M,
            args: &[
                "-b",
                "4096",
                "-p",
                "lock_nolock",
                "-j",
                "1",
                "-J",
                "8",
                "-r",
                "32",
            ],
        },
        Case {
            size: 2 * G,
            args: &[
                "-b",
                "512",
                "-p",
                "lock_nolock",
                "-j",
                "8",
                "-J",
                "8",
                "-r",
                "64",
            ],
        },
        Case {
            size: G,
            args: &[
                "-b",
                "1024",
                "-p",
                "lock_dlm",
                "-t",
                "alpha:fs0",
                "-j",
                "3",
                "-J",
                "16",
            ],
        },
        Case {
            size: 3 * G,
            args: &["-b", "2048", "-p", "lock_nolock", "-j", "5", "-r", "128"],
        },
        Case {
            size: 4 * G,
            args: &[
                "-b",
                "4096",
                "-p",
                "lock_nolock",
                "-j",
                "2",
                "-o",
                "format=1801",
            ],
        },
        Case {
            size: 20 * G,
            args: &[
                "-b",
                "4096",
                "-p",
                "lock_nolock",
                "-j",
                "1",
                "-J",
                "1024",
                "-r",
                "2048",
            ],
        },
        Case {
            size: 6 * G,
            args: &[
                "-b",
                "4096",
                "-p",
                "lock_dlm",
                "-t",
                "cluster_name:fsname_long_1",
                "-j",
                "8",
                "-J",
                "32",
                "-c",
                "64",
            ],
        },
        Case {
            size: T,
            args: &["-p", "lock_nolock", "-j", "4", "-r", "512"],
        },
        Case {
            // ext4 caps files just below 16 TiB; this is the largest it allows.
            size: 16 * T - M,
            args: &["-p", "lock_nolock", "-j", "2", "-J", "8", "-r", "2048"],
        },
        Case {
            size: 2 * G,
            args: &[
                "-b",
                "1024",
                "-p",
                "lock_nolock",
                "-j",
                "2",
                "-o",
                "align=0",
            ],
        },
    ];
    let dir = std::env::temp_dir().join(format!("gfs2-mkfs-build-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (n, c) in cases.iter().enumerate() {
        check(&dir, n, c);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn declining_confirmation_writes_nothing() {
    let dir = std::env::temp_dir().join(format!("gfs2-mkfs-confirm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let img = Img::new(&dir, "img", 256 * M);
    let out = Command::new(OURS)
        .args(["-p", "lock_nolock", "-j", "1"])
        .arg(&img.0)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            if let Some(mut i) = ch.stdin.take() {
                i.write_all(b"n\n")?;
            }
            ch.wait_with_output()
        })
        .expect("run mkfs");
    assert_eq!(out.status.code(), Some(255));
    let data = std::fs::read(&img.0).expect("read image");
    assert!(data.iter().all(|b| *b == 0), "declined mkfs wrote data");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn progress_on_stderr_summary_on_stdout_quiet_silences_both() {
    let dir = std::env::temp_dir().join(format!("gfs2-mkfs-progress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let img = Img::new(&dir, "img", 2 * G);
    let theirs = Img::new(&dir, "theirs", 2 * G);
    let args = ["-O", "-p", "lock_nolock", "-j", "3"];
    let ours = Command::new(OURS)
        .args(args)
        .arg(&img.0)
        .output()
        .expect("run our mkfs");
    assert!(ours.status.success());
    let err = String::from_utf8_lossy(&ours.stderr);
    for label in [
        "Adding journals: ",
        "Building resource groups: ",
        "Creating quota file: ",
        "Writing superblock and syncing: ",
    ] {
        assert!(
            err.contains(&format!("{label}Done")),
            "progress line {label:?} missing from stderr: {err}"
        );
    }
    let gu = Command::new(tool("mkfs.gfs2"))
        .args(args)
        .arg(&theirs.0)
        .output()
        .expect("run gfs2-utils mkfs");
    // The summary equals gfs2-utils' (device path and UUID aside).
    let summary = |o: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(o)
            .lines()
            .skip_while(|l| !l.starts_with("Block size:"))
            .filter(|l| !l.starts_with("UUID:"))
            .map(str::to_owned)
            .collect()
    };
    let (a, b) = (summary(&ours.stdout), summary(&gu.stdout));
    assert!(b.len() >= 8, "gfs2-utils summary not found");
    assert_eq!(a, b, "closing summary");
    let quiet = Command::new(OURS)
        .args(["-O", "-q", "-p", "lock_nolock", "-j", "1"])
        .arg(&img.0)
        .output()
        .expect("run our mkfs -q");
    assert!(quiet.status.success());
    assert!(quiet.stderr.is_empty(), "-q printed progress");
    let out = String::from_utf8_lossy(&quiet.stdout);
    assert!(
        out.lines().all(|l| l.starts_with("This will destroy")),
        "-q printed more than the destruction notice: {out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
