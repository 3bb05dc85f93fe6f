//! The layout planner against the oracle: for each option set, gfs2-utils' mkfs.gfs2 makes a
//! sparse image, `gfs2_edit -p rindex` lists its resource groups, and our `plan::layout` must
//! produce exactly the same entries, journal size and filesystem size.

use std::path::Path;
use std::process::Command;

use gfs2_mkfs::plan::{self, Align, LayoutParams};

struct Case {
    bsize: u32,
    journals: u32,
    jsize: Option<u32>,
    rgsize: u32,
    size: u64,
    blocks: Option<u64>,
    extra: &'static [&'static str],
    align: Align,
}

fn field(line: &str, name: &str) -> Option<u64> {
    let mut it = line.split_whitespace();
    if it.next()? != name {
        return None;
    }
    it.next()?.parse().ok()
}

/// (addr, length, data0, data, bitbytes) for every RG in `gfs2_edit -p rindex` output.
fn oracle_rindex(img: &Path) -> Vec<(u64, u64, u64, u64, u64)> {
    let out = Command::new("gfs2_edit")
        .args(["-p", "rindex"])
        .arg(img)
        .output()
        .expect("gfs2_edit (gfs2-utils) must be installed");
    assert!(
        out.status.success(),
        "gfs2_edit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = Vec::new();
    let mut cur = [0u64; 5];
    let mut seen = 0;
    for line in text.lines() {
        for (i, n) in ["ri_addr", "ri_length", "ri_data0", "ri_data", "ri_bitbytes"]
            .iter()
            .enumerate()
        {
            if let Some(x) = field(line, n) {
                cur[i] = x;
                seen += 1;
                if i == 4 {
                    assert_eq!(seen, 5, "unexpected rindex output");
                    v.push((cur[0], cur[1], cur[2], cur[3], cur[4]));
                    seen = 0;
                }
            }
        }
    }
    v
}

fn summary_value(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {out}"))
        .trim()
        .to_string()
}

fn check(c: &Case, dir: &Path, n: usize) {
    let img = dir.join(format!("img{n}"));
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(c.size).unwrap();
    drop(f);
    let mut cmd = Command::new("mkfs.gfs2");
    cmd.args(["-O", "-p", "lock_nolock", "-b", &c.bsize.to_string()])
        .args(["-j", &c.journals.to_string(), "-r", &c.rgsize.to_string()])
        .args(c.extra);
    if let Some(j) = c.jsize {
        cmd.args(["-J", &j.to_string()]);
    }
    cmd.arg(&img);
    if let Some(b) = c.blocks {
        cmd.arg(b.to_string());
    }
    let out = cmd
        .output()
        .expect("mkfs.gfs2 (gfs2-utils) must be installed");
    assert!(
        out.status.success(),
        "gfs2-utils mkfs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let jmb: u32 = summary_value(&stdout, "Journal size:")
        .trim_end_matches("MB")
        .parse()
        .unwrap();

    let dev_blocks = c.blocks.unwrap_or(c.size / u64::from(c.bsize));
    let ours_j = plan::journal_size_mb(c.bsize, dev_blocks, c.journals, c.jsize).unwrap();
    assert_eq!(ours_j, jmb, "journal size, case {n}");
    let lay = plan::layout(&LayoutParams {
        bsize: c.bsize,
        dev_blocks,
        journals: c.journals,
        jsize_mb: ours_j,
        rgsize_mb: c.rgsize,
        align: c.align,
    })
    .unwrap();
    let ours: Vec<_> = lay
        .rgrps
        .iter()
        .map(|r| {
            (
                r.addr,
                u64::from(r.length),
                r.data0,
                u64::from(r.data),
                u64::from(r.bitbytes),
            )
        })
        .collect();
    let theirs = oracle_rindex(&img);
    assert_eq!(ours.len(), theirs.len(), "rgrp count, case {n}");
    assert_eq!(ours, theirs, "rindex, case {n}");
    let rgs: usize = summary_value(&stdout, "Resource groups:").parse().unwrap();
    assert_eq!(rgs, ours.len());
    let fs = summary_value(&stdout, "Filesystem size:");
    let blocks: u64 = fs
        .split('(')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(blocks, lay.fs_blocks(), "filesystem size, case {n}");
    // The closing summary, rendered from our plan, equals gfs2-utils' except for the UUID.
    let ours_summary = gfs2_mkfs::report::Summary {
        device: img.to_str().unwrap(),
        bsize: c.bsize,
        dev_bytes: c.size,
        fs_blocks: lay.fs_blocks(),
        journals: c.journals,
        jsize_mb: ours_j,
        rgrps: lay.rgrps.len() as u64,
        lockproto: "lock_nolock",
        locktable: "",
        uuid: "",
    }
    .render();
    let strip = |t: &str| -> Vec<String> {
        t.lines()
            .skip_while(|l| !l.starts_with("Device:"))
            .filter(|l| !l.starts_with("UUID:"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(strip(&ours_summary), strip(&stdout), "summary, case {n}");
    std::fs::remove_file(&img).unwrap();
}

#[test]
fn layout_matches_gfs2_utils() {
    const G: u64 = 1 << 30;
    let none = Align::default();
    let cases = [
        Case {
            bsize: 4096,
            journals: 1,
            jsize: None,
            rgsize: 256,
            size: G,
            blocks: None,
            extra: &[],
            align: none,
        },
        Case {
            bsize: 512,
            journals: 1,
            jsize: None,
            rgsize: 32,
            size: 200 << 20,
            blocks: None,
            extra: &[],
            align: none,
        },
        Case {
            bsize: 1024,
            journals: 3,
            jsize: Some(8),
            rgsize: 64,
            size: G,
            blocks: None,
            extra: &[],
            align: none,
        },
        Case {
            bsize: 2048,
            journals: 8,
            jsize: Some(32),
            rgsize: 128,
            size: 4 * G,
            blocks: None,
            extra: &[],
            align: none,
        },
        Case {
            bsize: 4096,
            journals: 2,
            jsize: Some(1024),
            rgsize: 2048,
            size: 20 * G,
            blocks: None,
            extra: &[],
            align: none,
        },
        Case {
            bsize: 4096,
            journals: 5,
            jsize: None,
            rgsize: 512,
            size: 100 * G,
            blocks: None,
            extra: &[],
            align: none,
        },
        Case {
            bsize: 4096,
            journals: 1,
            jsize: None,
            rgsize: 1024,
            size: 2 * G,
            blocks: Some(300_000),
            extra: &[],
            align: none,
        },
        Case {
            bsize: 1024,
            journals: 4,
            jsize: Some(16),
            rgsize: 256,
            size: 3 * G,
            blocks: None,
            extra: &["-o", "format=1801"],
            align: none,
        },
        Case {
            bsize: 4096,
            journals: 6,
            jsize: Some(64),
            rgsize: 300,
            size: 1 << 40,
            blocks: None,
            extra: &[],
            align: none,
        },
        Case {
            bsize: 4096,
            journals: 7,
            jsize: None,
            rgsize: 2048,
            size: 15 << 40,
            blocks: None,
            extra: &[],
            align: none,
        },
        Case {
            bsize: 4096,
            journals: 2,
            jsize: Some(16),
            rgsize: 100,
            size: 5 * G,
            blocks: None,
            extra: &["-o", "sunit=65536,swidth=262144"],
            align: Align {
                align: 64,
                align_off: 16,
            },
        },
    ];
    let dir = std::env::temp_dir().join(format!("mkfs-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (n, c) in cases.iter().enumerate() {
        check(c, &dir, n);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
