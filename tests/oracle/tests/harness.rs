//! Tests of the oracle itself: the kernel VM boots, mounts gfs2-utils
//! images (lock_nolock and lock_dlm), runs workloads and prints manifests;
//! failures and exit statuses come back; the committed corpus is what its
//! manifests say (the kernel reproduces them), its trees are fsck-clean and
//! its crashed-node images are dirty according to gfs2-utils.

use gfs2_oracle::{corpus, edit_field, edit_lookup, fsck_clean, fsck_n, mkfs, sh, Scratch, Vm};
use std::collections::BTreeSet;
use std::path::Path;

/// sha256("hello\n"), as manifest.sh prints it (first 32 hex digits).
const HELLO: &str = "5891b5b522d5df086d0ff0b110fbd9d2";

#[test]
fn boots_mounts_gfs2_utils_images_runs_workloads_and_reports() {
    let dir = Scratch::new("boot").expect("scratch dir");
    let nolock = dir.join("nolock.img");
    let dlm = dir.join("dlm.img");
    let junk = dir.join("junk.img");
    mkfs(
        &nolock,
        64,
        &["-b", "1024", "-p", "lock_nolock", "-j", "1", "-J", "8"],
    )
    .expect("mkfs");
    mkfs(
        &dlm,
        64,
        &[
            "-b", "4096", "-p", "lock_dlm", "-t", "c:f", "-j", "2", "-J", "8",
        ],
    )
    .expect("mkfs");
    std::fs::write(&junk, vec![0u8; 1 << 20]).expect("junk disk");
    let body = "echo hello > hello\nmkdir d\nln -s hello d/link\nln hello d/hard\n\
                mknod d/c c 1 3\nmkfifo d/p\nsetfattr -n user.k -v v hello\n\
                setfacl -m u:1000:rwx d\ndd if=/dev/zero of=sparse bs=1 count=1 seek=9999999 2>/dev/null";
    let mut s = String::new();
    s += &sh::manifest(&sh::dev(0), "fresh");
    s += &sh::workload(&sh::dev(0), "w0", body);
    s += &sh::manifest(&sh::dev(0), "m0");
    s += &sh::workload(&sh::dev(1), "w1", body);
    s += &sh::manifest(&sh::dev(1), "m1");
    s += &sh::workload(&sh::dev(1), "fails", "echo a > x\nfalse\necho never > y");
    s += "mnt /dev/vdc || echo JUNK-REFUSED\n";
    s += "exit 7\n";
    let r = Vm::run(&s, &[&nolock, &dlm, &junk]).expect("VM run");
    eprintln!("VM run: {:.1} s", r.elapsed.as_secs_f64());
    assert!(r.console.contains("ORACLE-BOOTED"), "{}", r.console);
    assert_eq!(r.exit, Some(7), "scenario exit status\n{}", r.console);
    assert!(r.check().is_err(), "exit 7 must fail check()");
    assert!(r.kernel_errors().is_empty(), "{}", r.console);
    assert_eq!(r.workload_status("w0"), Some(0), "{}", r.console);
    assert_eq!(r.workload_status("w1"), Some(0), "{}", r.console);
    assert_eq!(r.workload_status("fails"), Some(1), "{}", r.console);
    assert!(r.console.contains("JUNK-REFUSED"));
    assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
    assert!(r.failures[0].contains("mount /dev/vdc"), "{:?}", r.failures);
    // A fresh gfs2-utils image is just its root directory.
    let fresh = r.section("fresh");
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert!(fresh[0].starts_with("M .|directory|755|0|0|"), "{fresh:?}");
    for tag in ["m0", "m1"] {
        let m = r.section(tag);
        let find = |p: &str| {
            m.iter()
                .find(|l| l.starts_with(&format!("M {p}|")))
                .unwrap_or_else(|| panic!("{tag}: no {p} in {m:#?}"))
                .clone()
        };
        let hello = find("./hello");
        assert!(hello.contains("|regular file|644|0|0|6|2|"), "{hello}");
        assert!(
            hello.contains(&format!("|{HELLO}| user.k=0x76 ")),
            "{hello}"
        );
        assert_eq!(find("./d/hard"), hello.replace("./hello", "./d/hard"));
        assert!(find("./d/link").contains("|symbolic link|777|0|0|5|1|"));
        assert!(find("./d/link").ends_with("|hello|"));
        // Kernel 6.1 reports device numbers read back from disk as 0,0
        // (the dinode holds 1,3: checked with gfs2_edit below); the manifest
        // here comes from a fresh mount.
        assert!(find("./d/c").contains("|character special file|"));
        assert!(find("./d/p").contains("|fifo|"));
        assert!(find("./d").contains("system.posix_acl_access=0x02000000"));
        assert!(find("./sparse").contains("|regular file|644|0|0|10000000|1|"));
    }
    for img in [&nolock, &dlm] {
        fsck_clean(img).expect("fsck.gfs2 -n clean after the kernel wrote");
        let c = edit_lookup(img, "d/c").expect("gfs2_edit d/c");
        assert_eq!(edit_field(img, &c, "di_major").expect("gfs2_edit"), "1");
        assert_eq!(edit_field(img, &c, "di_minor").expect("gfs2_edit"), "3");
    }
}

#[test]
fn corpus_is_complete_and_trees_are_clean() {
    let names = corpus::list().expect("images/");
    for want in [
        "tree-b512",
        "tree-b1024",
        "tree-b4096",
        "crash-b1024",
        "crash-b4096",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let dir = Scratch::new("corpus").expect("scratch dir");
    for name in names.iter().filter(|n| n.starts_with("tree-")) {
        let m = corpus::manifest(name).expect("manifest");
        assert!(m.len() > 400, "{name}: {} lines", m.len());
        let types: BTreeSet<&str> = m.iter().filter_map(|l| l.split('|').nth(1)).collect();
        for t in [
            "directory",
            "regular file",
            "regular empty file",
            "symbolic link",
            "character special file",
            "block special file",
            "fifo",
            "socket",
        ] {
            assert!(types.contains(t), "{name}: no {t} ({types:?})");
        }
        let has = |p: &str, what: &str| {
            assert!(
                m.iter()
                    .any(|l| l.starts_with(&format!("M {p}|")) && l.contains(what)),
                "{name}: {p} without {what:?}"
            )
        };
        has("./types/regular", "|6|3|");
        has("./acl/dir", "system.posix_acl_default=");
        has("./acl/dir/file", "system.posix_acl_access=");
        has("./xattr/indirect", "user.attribute_number_150=");
        has("./modes/suid", "|4751|1000|100|");
        let chain = m.iter().filter(|l| l.starts_with("M ./chain/")).count();
        assert_eq!(chain, 40, "{name}: chain/ entries");
        let img = corpus::image(name, dir.path()).expect("decompress");
        fsck_clean(&img).expect("corpus tree image clean");
        // On disk, the device nodes hold their numbers (the kernel's
        // manifest shows 0,0: see images/MANIFEST.md).
        let field = |p: &str, f: &str| {
            let a = edit_lookup(&img, p).expect("gfs2_edit lookup");
            edit_field(&img, &a, f).expect("gfs2_edit field")
        };
        for (p, maj, min) in [("types/chr", "1", "3"), ("types/blk", "8", "17")] {
            assert_eq!(field(p, "di_major"), maj, "{name} {p}");
            assert_eq!(field(p, "di_minor"), min, "{name} {p}");
        }
        assert_eq!(field("chain", "di_depth"), "17", "{name}: chain/ depth");
        let flags = field("xattr/indirect", "di_flags");
        assert!(flags.contains("GFS2_DIF_EA_INDIRECT"), "{name}: {flags}");
        std::fs::remove_file(&img).expect("remove");
    }
}

#[test]
fn crash_images_are_dirty_according_to_gfs2_utils() {
    let dir = Scratch::new("dirty").expect("scratch dir");
    let crashes: Vec<String> = corpus::list()
        .expect("images/")
        .into_iter()
        .filter(|n| n.starts_with("crash-"))
        .collect();
    assert!(crashes.len() >= 2, "{crashes:?}");
    for name in &crashes {
        let fs = corpus::fsynced(name).expect("fsynced list");
        assert!(fs.len() >= 100, "{name}: {} fsync'd files", fs.len());
        let img = corpus::image(name, dir.path()).expect("decompress");
        let f = fsck_n(&img).expect("fsck.gfs2 -n");
        assert_eq!(f.code, 4, "{name}: fsck.gfs2 -n exit\n{}", f.output);
        assert!(
            f.output.contains("Journal #1 (\"journal0\") is dirty"),
            "{name}:\n{}",
            f.output
        );
    }
}

/// The kernel's manifest of the committed images equals the committed one:
/// all three trees (read-only mounts) and one crashed image, which the
/// kernel recovers at mount, after which every fsync'd file has its
/// checksum and fsck.gfs2 -n is clean. One VM for all four disks.
#[test]
fn kernel_reproduces_corpus_manifests() {
    let dir = Scratch::new("repro").expect("scratch dir");
    let names = ["tree-b512", "tree-b1024", "tree-b4096", "crash-b4096"];
    let imgs: Vec<_> = names
        .iter()
        .map(|n| corpus::image(n, dir.path()).expect("decompress"))
        .collect();
    let mut s = String::new();
    for (i, n) in names.iter().enumerate() {
        let dev = sh::dev(i);
        let fs = corpus::fsynced(n).expect("fsynced");
        if fs.is_empty() {
            s += &sh::manifest(&dev, n);
            continue;
        }
        // Recovery at a read-write mount, then the checks, then the manifest.
        let mut last = std::collections::BTreeMap::new();
        for (p, sum) in fs {
            last.insert(p, sum);
        }
        s += &format!("mnt {dev} noatime\n");
        for (p, sum) in &last {
            s += &format!(
                "[ \"$(sha256sum /mnt/{p} | cut -c1-64)\" = {sum} ] || echo \"ORACLE-FAIL {n} lost {p}\"\n"
            );
        }
        s += "umnt\n";
        s += &sh::manifest(&dev, n);
    }
    let disks: Vec<&Path> = imgs.iter().map(|p| p.as_path()).collect();
    let r = Vm::run(&s, &disks).expect("VM run");
    eprintln!("VM run: {:.1} s", r.elapsed.as_secs_f64());
    r.check().expect("scenario");
    for n in names {
        let want = corpus::manifest(n).expect("committed manifest");
        let got = r.section(n);
        assert!(want.len() > 100, "{n}: committed manifest too short");
        if got != want {
            let w: BTreeSet<_> = want.iter().collect();
            let g: BTreeSet<_> = got.iter().collect();
            panic!(
                "{n}: kernel manifest differs from images/{n}.manifest\nonly committed: {:#?}\nonly kernel: {:#?}",
                w.difference(&g).take(10).collect::<Vec<_>>(),
                g.difference(&w).take(10).collect::<Vec<_>>()
            );
        }
    }
    fsck_clean(&imgs[3]).expect("crash image clean after kernel recovery");
}

/// The crash path of the harness: qemu killed after the 40th fsync leaves a
/// journal that gfs2-utils reports dirty, and the fsync'd files are listed.
#[test]
fn killed_vm_leaves_a_dirty_journal() {
    let dir = Scratch::new("kill").expect("scratch dir");
    let img = dir.join("crash.img");
    mkfs(
        &img,
        40,
        &["-b", "1024", "-p", "lock_nolock", "-j", "1", "-J", "8"],
    )
    .expect("mkfs");
    let populate = std::fs::read(corpus::dir().join("populate.sh")).expect("images/populate.sh");
    let r = Vm::new(". /populate.sh\nmnt /dev/vda noatime\ncd /mnt\ncrashload\n")
        .file("populate.sh", &populate)
        .kill_after("FSYNCED", 40)
        .boot(&[&img])
        .expect("VM run");
    eprintln!("VM run: {:.1} s", r.elapsed.as_secs_f64());
    assert!(r.killed, "{}", r.console);
    assert_eq!(r.exit, None, "{}", r.console);
    let fs = r.fsynced();
    assert!(fs.len() >= 40, "{} fsync'd\n{}", fs.len(), r.console);
    assert!(fs.iter().all(|(p, _)| p.starts_with("keep/")), "{fs:?}");
    let f = fsck_n(&img).expect("fsck.gfs2 -n");
    assert!(
        f.output.contains("Journal #1 (\"journal0\") is dirty"),
        "exit {}:\n{}",
        f.code,
        f.output
    );
}
