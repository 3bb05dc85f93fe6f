//! Command-line behaviour against the oracle: every invalid invocation must exit with the same
//! status as gfs2-utils' mkfs.gfs2 (255) and print a non-empty message on stderr; -h, -V and
//! `-o help` exit 0 like theirs. Nothing is written: every case fails before the device is touched.

use std::process::Command;

const OURS: &str = env!("CARGO_BIN_EXE_mkfs-gfs2");

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin} (gfs2-utils must be installed): {e}"));
    (
        out.status.code().expect("killed by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exit_codes_match_gfs2_utils() {
    let dir = std::env::temp_dir().join(format!("mkfs-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("dev");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let small = dir.join("small");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let d = img.to_str().unwrap();
    let s = small.to_str().unwrap();
    let long_cluster = format!("{}:fs", "c".repeat(33));
    let long_fs = format!("c:{}", "f".repeat(31));
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["-p", "lock_foo", d],
        vec!["-p", "lock_dlm", d],
        vec!["-p", "lock_dlm", "-t", "", d],
        vec!["-p", "lock_dlm", "-t", "nocolon", d],
        vec!["-p", "lock_dlm", "-t", ":fs", d],
        vec!["-p", "lock_dlm", "-t", "c:", d],
        vec!["-p", "lock_dlm", "-t", "a:b:c", d],
        vec!["-p", "lock_dlm", "-t", "a b:c", d],
        vec!["-p", "lock_dlm", "-t", &long_cluster, d],
        vec!["-p", "lock_dlm", "-t", &long_fs, d],
        vec!["-O", "-p", "lock_nolock", "-r", "31", d],
        vec!["-O", "-p", "lock_nolock", "-r", "2049", d],
        vec!["-O", "-p", "lock_nolock", "-r", "-5", d],
        vec!["-O", "-p", "lock_nolock", "-J", "7", d],
        vec!["-O", "-p", "lock_nolock", "-J1025", d],
        vec!["-O", "-p", "lock_nolock", "-c", "0", d],
        vec!["-O", "-p", "lock_nolock", "-c", "65", d],
        vec!["-O", "-p", "lock_nolock", "-j", "0", d],
        vec!["-O", "-p", "lock_nolock", "-j", "-2", d],
        vec!["-O", "-p", "lock_nolock", "-o", "format=1800", d],
        vec!["-O", "-p", "lock_nolock", "-o", "format=1803", d],
        vec!["-O", "-p", "lock_nolock", "-o", "format=", d],
        vec!["-O", "-p", "lock_nolock", "-o", "bogus=1", d],
        vec!["-O", "-p", "lock_nolock", "-o", "align=2", d],
        vec!["-O", "-p", "lock_nolock", "-o", "sunit=4096", d],
        vec!["-O", "-p", "lock_nolock", "-o", "sunit=4096,swidth=6144", d],
        vec!["-O", "-p", "lock_nolock", "-o", "sunit=1000,swidth=4000", d],
        vec!["-O", "-p", "lock_nolock", "-o", "test_topology=0:512", d],
        vec!["-O", "-p", "lock_nolock", "-b", "3000", d],
        vec!["-O", "-p", "lock_nolock", "-b", "8192", d],
        vec!["-O", "-p", "lock_nolock", "-b", "256", d],
        vec!["-O", "-p", "lock_nolock", d, "99999999"],
        vec!["-O", "-p", "lock_nolock", d, "100", "200"],
        vec!["-O", "-p", "lock_nolock", "-J", "512", "-j", "4", d],
        vec!["-O", "-p", "lock_nolock", s],
        vec!["-O", "-Z", d],
        vec!["-O", "-p"],
        // Without -O the answer is read from stdin; end of input declines.
        vec!["-p", "lock_nolock", d],
    ];
    for args in &cases {
        let (theirs, _, _) = run("mkfs.gfs2", args);
        let (ours, _, err) = run(OURS, args);
        assert_eq!(
            ours, theirs,
            "exit status for {args:?}: ours {ours}, gfs2-utils {theirs}"
        );
        assert_eq!(ours, 255, "{args:?}");
        assert!(
            !err.trim().is_empty() || args.len() == 3,
            "no message for {args:?}"
        );
    }
    for args in [&["-h"][..], &["-V"], &["-o", "help"]] {
        let (theirs, tout, _) = run("mkfs.gfs2", args);
        let (ours, out, _) = run(OURS, args);
        assert_eq!((ours, theirs), (0, 0), "{args:?}");
        assert!(!out.is_empty() && !tout.is_empty());
    }
    let (_, ours_h, _) = run(OURS, &["-h"]);
    let (_, theirs_h, _) = run("mkfs.gfs2", &["-h"]);
    // Same option lines (the program name in the Usage line differs).
    let opts = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with(" -"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(opts(&ours_h), opts(&theirs_h));
    std::fs::remove_dir_all(&dir).unwrap();
}
