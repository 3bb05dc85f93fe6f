//! Our tunegfs2 against gfs2-utils' (the oracle), on images made at test
//! time by gfs2-utils' mkfs.gfs2. Each case formats one image, copies it so
//! that both tools start from the same bytes (same UUID too), runs the same
//! arguments through both, and requires the same exit status, stdout and
//! stderr, the same `gfs2_edit -p sb` dump and the same superblock bytes
//! after. A change that succeeds must leave `fsck.gfs2 -n` clean. The first
//! three tests are gfs2-utils' own tests/tune.at scenarios.

use std::path::{Path, PathBuf};
use std::process::Command;

const OURS: &str = env!("CARGO_BIN_EXE_tunegfs2");
const THEIRS: &str = "/usr/sbin/tunegfs2";
const SB_OFFSET: u64 = 65536;

fn need_tool(path: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {path}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "{path} not found: install gfs2-utils 3.5");
}

/// A temporary directory removed at the end of the test.
struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("tunegfs2-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        // gfs2_edit needs a '/' in the device name.
        TempDir(p.canonicalize().expect("absolute temp dir"))
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh filesystem from gfs2-utils' mkfs.gfs2, `mb` MiB, sparse.
fn mkfs(img: &Path, mb: u64, extra: &[&str]) {
    need_tool("mkfs.gfs2");
    let f = std::fs::File::create(img).expect("create image");
    f.set_len(mb << 20).expect("size image");
    drop(f);
    let out = Command::new("mkfs.gfs2")
        .args(["-O", "-p", "lock_nolock", "-j", "1"])
        .args(extra)
        .arg(img)
        .output()
        .expect("run mkfs.gfs2");
    assert!(
        out.status.success(),
        "mkfs.gfs2 {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run a tunegfs2 with `args` then `dev` (if any); the image path and the
/// program path are replaced by fixed names so that both tools compare.
fn run(bin: &str, args: &[&str], dev: Option<&Path>) -> Run {
    let mut c = Command::new(bin);
    c.args(args);
    if let Some(d) = dev {
        c.arg(d);
    }
    let out = c.output().expect("run tunegfs2");
    let norm = |b: &[u8]| {
        let mut s = String::from_utf8_lossy(b).into_owned();
        if let Some(d) = dev {
            s = s.replace(&*d.to_string_lossy(), "IMG");
        }
        s.replace(bin, "tunegfs2")
    };
    Run {
        code: out.status.code().expect("exit status, not a signal"),
        stdout: norm(&out.stdout),
        stderr: norm(&out.stderr),
    }
}

fn edit_sb(img: &Path) -> String {
    need_tool("gfs2_edit");
    let out = Command::new("gfs2_edit")
        .args(["-p", "sb"])
        .arg(img)
        .output()
        .expect("run gfs2_edit");
    assert!(out.status.success(), "gfs2_edit -p sb {}", img.display());
    String::from_utf8_lossy(&out.stdout).replace(&*img.to_string_lossy(), "IMG")
}

fn edit_field(img: &Path, field: &str) -> String {
    let out = Command::new("gfs2_edit")
        .args(["-p", "sb", "field", field])
        .arg(img)
        .output()
        .expect("run gfs2_edit");
    assert!(out.status.success(), "gfs2_edit field {field}");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

fn sb_bytes(img: &Path) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(img).expect("open image");
    let mut b = vec![0u8; 4096];
    f.read_exact_at(&mut b, SB_OFFSET).expect("read superblock");
    b
}

fn fsck_clean(img: &Path) {
    need_tool("fsck.gfs2");
    let out = Command::new("fsck.gfs2")
        .arg("-n")
        .arg(img)
        .output()
        .expect("run fsck.gfs2");
    assert_eq!(
        out.status.code(),
        Some(0),
        "fsck.gfs2 -n {} not clean:\n{}{}",
        img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Both tools on copies of one image; everything must match. Returns our
/// run and our image for further checks.
fn both(t: &TempDir, name: &str, mb: u64, mkargs: &[&str], args: &[&str]) -> (Run, PathBuf) {
    let theirs = t.path(&format!("{name}-theirs.img"));
    let ours = t.path(&format!("{name}-ours.img"));
    mkfs(&theirs, mb, mkargs);
    std::fs::copy(&theirs, &ours).expect("copy image");
    compare_on(&theirs, &ours, args)
}

fn compare_on(theirs: &Path, ours: &Path, args: &[&str]) -> (Run, PathBuf) {
    need_tool(THEIRS);
    let r = run(THEIRS, args, Some(theirs));
    let o = run(OURS, args, Some(ours));
    assert_eq!(o.code, r.code, "exit status for {args:?}: {}", o.stderr);
    assert_eq!(o.stdout, r.stdout, "stdout for {args:?}");
    assert_eq!(o.stderr, r.stderr, "stderr for {args:?}");
    assert_eq!(
        edit_sb(ours),
        edit_sb(theirs),
        "gfs2_edit -p sb after {args:?}"
    );
    assert!(
        sb_bytes(ours) == sb_bytes(theirs),
        "superblock bytes differ after {args:?}"
    );
    if o.code == 0 {
        fsck_clean(ours);
    }
    (o, ours.to_path_buf())
}

// ---- tests/tune.at -------------------------------------------------------

#[test]
fn tune_at_format_version() {
    let t = TempDir::new("format");
    let theirs = t.path("f-theirs.img");
    let ours = t.path("f-ours.img");
    mkfs(&theirs, 128, &["-o", "format=1802"]);
    std::fs::copy(&theirs, &ours).expect("copy image");
    // 65 == EX_DATAERR: not a format, regressing, format 1803 unknown.
    for v in ["0", "1801", "1803"] {
        let (o, _) = compare_on(&theirs, &ours, &["-r", v]);
        assert_eq!(o.code, 65, "-r {v}");
    }
    assert_eq!(edit_field(&ours, "sb_fs_format"), "1802");
    // The normal bump from 1801.
    let (o, img) = both(&t, "bump", 128, &["-o", "format=1801"], &["-r", "1802"]);
    assert_eq!(o.code, 0);
    assert_eq!(edit_field(&img, "sb_fs_format"), "1802");
    fsck_clean(&img);
}

#[test]
fn tune_at_handle_bad_fs() {
    need_tool(THEIRS);
    for dev in ["/dev/null", "/dev/zero"] {
        let r = run(THEIRS, &["-l"], Some(Path::new(dev)));
        let o = run(OURS, &["-l"], Some(Path::new(dev)));
        assert_eq!(o.code, 74, "{dev}");
        assert_eq!(o.code, r.code, "{dev}");
        assert_eq!(
            o.stderr,
            "Device does not contain a GFS or GFS2 file system\n"
        );
        assert_eq!(o.stderr, r.stderr);
        assert_eq!(o.stdout, r.stdout);
    }
    // A plain file of zeros, big enough to hold a superblock, too.
    let t = TempDir::new("badfs");
    let img = t.path("zeros.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(64 << 20))
        .expect("zero image");
    let before = sb_bytes(&img);
    let o = run(OURS, &["-L", "x"], Some(&img));
    assert_eq!(o.code, 74);
    assert_eq!(
        sb_bytes(&img),
        before,
        "nothing written to a non-GFS2 device"
    );
}

#[test]
fn tune_at_expected_output() {
    let t = TempDir::new("expected");
    let uuid = "e90815fc-087b-460c-b8a5-8edc8a2ed691";
    let mk = ["-t", "cluster:fsname", "-o", "align=0"];
    let (o, img) = both(&t, "exp", 256, &mk, &["-U", uuid]);
    assert_eq!(o.code, 0);
    assert_eq!(edit_field(&img, "sb_uuid"), uuid);
    let theirs = t.path("exp-theirs.img");
    let (l, _) = compare_on(&theirs, &img, &["-l"]);
    let want_start = format!(
        "File system volume name: cluster:fsname\nFile system UUID: {uuid}\n\
         File system magic number: 0x1161970\nFile system format version: 1802\n\
         Block size: 4096\nBlock shift: 12\nRoot inode: "
    );
    assert!(l.stdout.starts_with(&want_start), "{}", l.stdout);
    assert!(
        l.stdout
            .ends_with("Lock protocol: lock_nolock\nLock table: cluster:fsname\n"),
        "{}",
        l.stdout
    );
    assert!(l.stdout.contains("\nMaster inode: "));
}

// ---- more cases, same comparison ----------------------------------------

#[test]
fn list_formats() {
    let t = TempDir::new("list");
    for (mb, mk) in [
        (64u64, vec![]),
        (128, vec!["-b", "1024"]),
        (200, vec!["-b", "512"]),
        // No master inode line for format 1801.
        (128, vec!["-o", "format=1801"]),
    ] {
        let (o, _) = both(&t, &format!("l{mb}"), mb, &mk, &["-l"]);
        assert_eq!(o.code, 0, "{mk:?}");
        assert_eq!(
            o.stdout.contains("Master inode"),
            !mk.contains(&"format=1801")
        );
    }
}

#[test]
fn changes_match() {
    let t = TempDir::new("changes");
    let long = "x".repeat(64);
    let long_proto = format!("lock_dlm{}", "y".repeat(60));
    let long_name = format!("locktable=c:{}", "n".repeat(31));
    let long_proto_opt = format!("lockproto={long_proto}");
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (vec!["-L", "foo:bar"], 0),
        (vec!["-L", "short"], 0),
        (vec!["-L", &long], 65),
        (vec!["-U", "E90815FC-087B-460C-B8A5-8EDC8A2ED691"], 0),
        (vec!["-U", "not-a-uuid"], 255),
        (vec!["-o", "lockproto=lock_dlm"], 0),
        (vec!["-o", "lockproto=lock_dlm,locktable=a:b"], 0),
        (vec!["-o", "lockproto=lock_dlm,locktable=ab"], 65),
        (vec!["-o", "lockproto=lock_dlm,locktable=a:b:c"], 65),
        (vec!["-o", "lockproto=lock_dlm", "-o", &long_name], 65),
        (vec!["-o", "locktable=ab,lockproto=lock_dlm"], 0),
        (vec!["-o", "lockproto=lock_foo"], 65),
        (vec!["-o", "lockproto=lock_dlmx"], 0),
        (vec!["-o", &long_proto_opt], 65),
        (vec!["-o", "unknown=1"], 0),
        (vec!["-r", "1802"], 0),
        (vec!["-r", " 1802abc"], 0),
        (vec!["-r", "x"], 65),
        (vec!["-r", "99999999999999999999999"], 65),
        // A later refusal leaves the earlier changes unwritten.
        (
            vec!["-U", "e90815fc-087b-460c-b8a5-8edc8a2ed691", "-r", "1"],
            65,
        ),
        // -l opens read-only: the write fails.
        (vec!["-l", "-L", "a:b"], 74),
        (vec!["-lLa:b"], 74),
        (vec!["-L", "x:y", "-l"], 74),
    ];
    for (i, (args, code)) in cases.iter().enumerate() {
        let (o, _) = both(&t, &format!("c{i}"), 64, &[], args);
        assert_eq!(o.code, *code, "{args:?}: {}", o.stderr);
    }
    // The listing after a change, on the changed image.
    let (_, img) = both(&t, "after", 64, &["-t", "cluster:longname"], &["-L", "ab"]);
    let theirs = t.path("after-theirs.img");
    let (l, _) = compare_on(&theirs, &img, &["-l"]);
    assert!(l.stdout.contains("Lock table: ab\n"));
}

#[test]
fn argument_errors_match() {
    need_tool(THEIRS);
    let t = TempDir::new("args");
    let img = t.path("a.img");
    mkfs(&img, 64, &[]);
    let before = sb_bytes(&img);
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["-h"],
        vec!["-V"],
        vec!["-x"],
        vec!["--list"],
        vec!["-L"],
        vec!["-l", "extra"],
        vec!["-L", "a", "-o", "locktable=b"],
        vec!["-h", "-x"],
        vec!["-x", "-h"],
    ];
    for args in &cases {
        let r = run(THEIRS, args, Some(&img));
        let o = run(OURS, args, Some(&img));
        assert_eq!(o.code, r.code, "exit status for {args:?}");
        assert_eq!(o.stdout, r.stdout, "stdout for {args:?}");
        assert_eq!(o.stderr, r.stderr, "stderr for {args:?}");
    }
    for args in [vec![], vec!["-l"]] {
        let r = run(THEIRS, &args, None);
        let o = run(OURS, &args, None);
        assert_eq!(
            (o.code, &o.stdout, &o.stderr),
            (r.code, &r.stdout, &r.stderr)
        );
        assert_eq!(o.code, 64);
    }
    let missing = t.path("missing.img");
    let r = run(THEIRS, &["-l"], Some(&missing));
    let o = run(OURS, &["-l"], Some(&missing));
    assert_eq!((o.code, &o.stderr), (r.code, &r.stderr));
    assert_eq!(o.code, 74);
    assert_eq!(sb_bytes(&img), before, "argument errors write nothing");
}

/// A device claimed by someone else (a gfs2-fuse node, mkfs, fsck) is not
/// changed: gfs2-utils gets EBUSY from O_EXCL on a mounted device.
#[test]
fn refuses_claimed_device() {
    use gfs2fuse::dev::claim::{Claim, Claimant};
    let t = TempDir::new("claim");
    let img = t.path("c.img");
    mkfs(&img, 64, &[]);
    let before = sb_bytes(&img);
    let claim = Claim::take(&img, Claimant::Tool).expect("claim image");
    let o = run(OURS, &["-L", "x"], Some(&img));
    assert_eq!(o.code, 74, "{}", o.stderr);
    // gfs2-utils' line, then the holder.
    assert!(
        o.stderr.starts_with(
            "Unable to open device IMG: Device or resource busy\nIMG is in use by pid "
        ),
        "{}",
        o.stderr
    );
    assert_eq!(sb_bytes(&img), before);
    // Listing does not need the device to itself.
    assert_eq!(run(OURS, &["-l"], Some(&img)).code, 0);
    drop(claim);
    assert_eq!(run(OURS, &["-L", "x"], Some(&img)).code, 0);
    assert_eq!(edit_field(&img, "sb_locktable"), "x");
}
