//! What the crash tests of the offline and the online tools share: the
//! kill points, and the oracle run after each kill (gfs2-utils' fsck.gfs2
//! before and after a replay, its `-y` repair and ours).

#![allow(dead_code)] // each test crate uses its own part

use gfs2_oracle::fsck_n;
use gfs2fuse::dev::spec;
use gfs2fuse::fs::{Fs, MountOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub fn assert_clean(img: &Path, what: &str) {
    let f = fsck_n(img).expect("fsck.gfs2 -n");
    assert_eq!(f.code, 0, "{what}: fsck.gfs2 -n not clean:\n{}", f.output);
}

/// A `lock_nolock` mount of `img` through our library (on journal `jid`).
pub fn mount(img: &Path, jid: Option<u32>) -> std::sync::Arc<Fs> {
    // Another test thread forking a tool may hold a copy of the descriptor
    // our previous mount's claim was on, for the instant between its fork
    // and exec: a claim refused then is tried again shortly.
    let mut tries = 0;
    loop {
        let dev = spec::open(s(img), false).expect("open image");
        match Fs::mount(
            dev,
            MountOptions {
                lockproto: Some("lock_nolock".into()),
                jid,
                ..MountOptions::default()
            },
        ) {
            Ok(fs) => return fs,
            Err(e) if tries < 50 && e.to_string().contains("is in use") => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("library mount of {}: {e}", img.display()),
        }
    }
}

/// The test's random seed (`GFS2_TEST_SEED` repeats a run).
pub fn seed() -> u64 {
    std::env::var("GFS2_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// `n` kill points (or every write, when fewer) among writes 1..=`total`:
/// the first two, the last two and others picked by `seed`, ascending.
pub fn points(total: u64, n: usize, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    let mut p: Vec<u64> = vec![1, 2, total - 1, total];
    p.dedup();
    while p.len() < n.min(total as usize) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = 1 + x % total;
        if !p.contains(&k) {
            p.push(k);
        }
    }
    p.sort_unstable();
    p
}

/// After a kill: fsck.gfs2 -n accepts `img` unless its journal is dirty;
/// with the journal replayed by a mount it is clean; fsck.gfs2 -y repairs
/// it (then -n is clean), and so does ours in one pass; `check_files`
/// finds every earlier file intact after each. `img` itself is left as the
/// kill left it (each check works on a copy in `dir`).
pub fn after_crash(img: &Path, dir: &Path, what: &str, check_files: &dyn Fn(&Path, &str)) {
    // As it stands: fsck -n does not replay the journal, so while the
    // killed run's journal is dirty the blocks in place may be a
    // checkpoint's half; anything it finds must come with that.
    let f = fsck_n(img).expect("fsck -n");
    assert!(
        f.code == 0 || f.output.contains("is dirty"),
        "{what}: fsck.gfs2 -n with a clean journal:\n{}",
        f.output
    );
    // ...with the journal replayed as the next mount replays it...
    let replayed = dir.join("replayed.img");
    std::fs::copy(img, &replayed).expect("copy");
    mount(&replayed, None).unmount().expect("unmount");
    assert_clean(&replayed, &format!("{what}, replayed by a mount"));
    check_files(&replayed, &format!("{what}, replayed by a mount"));
    // ...and repaired by gfs2-utils' fsck.gfs2 -y, which replays it too.
    std::fs::copy(img, &replayed).expect("copy");
    let passes = repair(&replayed, what);
    if passes > 1 {
        eprintln!("{what}: fsck.gfs2 -y needed {passes} passes");
    }
    check_files(&replayed, &format!("{what}, repaired by fsck.gfs2 -y"));
    // ...and by ours, in one pass.
    std::fs::copy(img, &replayed).expect("copy");
    our_repair(&replayed, what);
    check_files(&replayed, &format!("{what}, repaired by our fsck -y"));
    std::fs::remove_file(&replayed).expect("remove");
}

/// Our fsck -y, once: it replays the journal before it reads the rindex
/// (which the tool's last transaction may extend), so one pass leaves the
/// image clean for gfs2-utils' fsck.gfs2 -n.
pub fn our_repair(img: &Path, what: &str) {
    use gfs2_fsck::cli::{Mode, Options};
    let o = Options {
        mode: Mode::Yes,
        force: false,
        verbosity: -1,
        device: s(img).to_string(),
    };
    let mut f = gfs2_fsck::check::Fsck::open(&o)
        .unwrap_or_else(|e| panic!("{what}: our fsck -y cannot open: {}", e.0));
    f.run()
        .unwrap_or_else(|e| panic!("{what}: our fsck -y: {}", e.0));
    assert_clean(img, &format!("{what}, after our fsck -y"));
}

/// fsck.gfs2 -y (which replays dirty journals first) until it finds
/// nothing more (at most 3 passes), then -n must be clean; returns the
/// passes it took. gfs2-utils 3.5 reads the system directories before it
/// replays the journal, so a replayed entry in the master directory (the
/// tool's `new_inode`) or a replayed rindex entry looks wrong to its first
/// pass, which "repairs" it (lost+found, rindex from rgrp headers) and
/// leaves the last touches (a link count, the statfs file) to a second.
pub fn repair(img: &Path, what: &str) -> u32 {
    for pass in 1..=3 {
        let y = Command::new("fsck.gfs2")
            .args(["-y"])
            .arg(img)
            .output()
            .expect("fsck.gfs2 -y");
        match y.status.code() {
            Some(0) => {
                assert_clean(img, &format!("{what}, after fsck.gfs2 -y"));
                return pass;
            }
            Some(1) => {}
            c => panic!(
                "{what}: fsck.gfs2 -y exit {c:?}:\n{}",
                String::from_utf8_lossy(&y.stdout)
            ),
        }
    }
    panic!("{what}: fsck.gfs2 -y still finds problems after 3 passes");
}

/// The `gfs2-fuse` binary of this target directory and profile, built
/// (or brought up to date: cargo test builds only this crate's binaries)
/// once per test process.
pub fn daemon() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable");
            let dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target directory");
            let mut c = Command::new(env!("CARGO"));
            c.args(["build", "-q", "-p", "gfs2-fuse", "--bin", "gfs2-fuse"]);
            if dir.ends_with("release") {
                c.arg("--release");
            }
            let st = c
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .status()
                .expect("cargo build gfs2-fuse");
            assert!(st.success(), "building gfs2-fuse failed");
            let bin = dir.join("gfs2-fuse");
            assert!(bin.exists(), "{} missing after the build", bin.display());
            bin
        })
        .clone()
}

/// Deterministic file contents.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
