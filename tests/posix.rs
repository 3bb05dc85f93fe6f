//! POSIX conformance, differentially: about two hundred system-call cases
//! modelled on pjdfstest's groups (open, creat, mkdir, mknod, link, symlink,
//! unlink, rmdir, rename, truncate, chmod, chown, utimensat, permissions as
//! root and as an unprivileged user, sticky directories, name lengths, link
//! counts, and which timestamps each call changes) run in a directory of the
//! host's own filesystem (the Linux kernel's ext4 or tmpfs: the oracle) and
//! in our FUSE mount; every outcome (errno, mode, owner, size, link count,
//! timestamp changes) must be the same. pjdfstest itself is not packaged for
//! Debian, PyPI or crates.io, so this is the equivalent the suite can install.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// The cases: one per line, `U` first to run it as uid/gid 1000. Each case
/// is a shell command run in the test directory; its output and exit status
/// are the observation. `st P` prints the attributes that must agree.
const CASES: &str = r#"
touch f1; st f1
touch f1; echo x > f1; st f1
mkdir d1; st d1
mkdir d1
mkdir d1/sub; st d1
rmdir d1
rmdir d1/sub; st d1
rmdir d1/nonexistent
rmdir f1
mkdir d1/sub
touch d1/sub/x; rmdir d1/sub
rm d1/sub/x; rmdir d1/sub; st d1
unlink d1
unlink nonexistent
ln f1 l1; st f1; st l1
ln f1 l1
ln d1 dl
ln nonexistent l2
ln -s f1 s1; st s1; readlink s1
ln -s f1 s1
ln -s /a/path/that/does/not/exist s2; readlink s2
ln -s $(printf 'a%.0s' $(seq 1 255)) s3; readlink s3 | wc -c
touch $(printf 'n%.0s' $(seq 1 255)); ls | grep -c nnnnnnnnnn
touch $(printf 'n%.0s' $(seq 1 256))
mkdir $(printf 'm%.0s' $(seq 1 256))
echo hello > t1; truncate -s 3 t1; cat t1; st t1
truncate -s 100000 t1; st t1; od -An -c t1 | head -2
truncate -s 0 t1; st t1
truncate -s 10 d1
chmod 600 f1; st f1
chmod 4755 f1; st f1
echo more >> f1; st f1
chmod 2755 d1; st d1
mkdir d1/inherit; st d1/inherit
touch d1/gfile; st d1/gfile
chown 1000:1000 f1; st f1
chown 1000:100 d1; st d1
chmod 1777 d1; st d1
mv f1 f2; st f2
mv f2 d1/f3; st d1/f3; ls d1
mv d1/f3 f1; st f1
mkdir r1 r2; touch r2/x; mv r1 r2
mkdir r3; mv r3 r2; ls r2
mkdir r4; mv r4 r4/sub
touch r5; mkdir r6; mv r5 r6; ls r6
touch r7; mkdir r8; mv r8 r7
mv nonexistent r9
mkdir -p q1/q2/q3; mv q1 q1/q2/q3/q4
touch e1 e2; mv e1 e2; ls e1 e2
mkfifo ff; st ff
mknod cd c 1 3; st cd
mknod bd b 8 1; st bd
echo a > ap; echo b >> ap; cat ap
dd if=/dev/zero of=z bs=1k count=10 2>/dev/null; dd if=/dev/zero of=z bs=1k count=1 seek=2 conv=notrunc 2>/dev/null; st z
touch -d '2001-02-03 04:05:06' tm; stat -c '%y' tm
touch -m -d '2001-02-03 04:05:06' tm; stat -c '%Y' tm
mkdir nl; mkdir nl/a nl/b nl/c; st nl; rmdir nl/b; st nl
mkdir mvd; mkdir mvd/x mvd/y; mv mvd/x mvd/y/; st mvd; st mvd/y
touch hl; ln hl hl2; ln hl hl3; rm hl2; st hl
U touch u1; st u1
U mkdir ud; st ud
U touch f1
U rm f1
U chmod 777 f1
U chown 1000 f1
U mkdir d1/uu
U touch d1/ownedbyu; st d1/ownedbyu
U rm d1/gfile
U mv d1/gfile d1/gfile2
U touch noperm_dir_test
U cat ap
U sh -c 'echo x >> ap'
chmod 6777 ap; U sh -c 'echo y >> ap'; st ap
T creat f_new
T mkdir d_new
T unlink hl3
T link ap ap_link
T rename ap ap2
T chmod ap2
T truncate ap2
T write ap2
T symlink sym_new
T rmdir mvd/y/x
T utimes ap2
T chown ap2
"#;

/// Time checks (`T op target`): which of the target's and its directory's
/// mtime/ctime change, in Python for nanosecond stat fields.
const TIMES_PY: &str = r#"
import os, sys, time
op, t = sys.argv[1], sys.argv[2]
parent = os.path.dirname(t) or "."
def snap(p):
    try:
        s = os.lstat(p); return (s.st_mtime_ns, s.st_ctime_ns)
    except FileNotFoundError:
        return None
ref = {"ap": "ap", "ap2": "ap2"}
target = t if op not in ("link", "rename") else t
before_t, before_p = snap(t), snap(parent)
time.sleep(0.05)
if op == "creat": os.close(os.open(t, os.O_CREAT | os.O_WRONLY, 0o644))
elif op == "mkdir": os.mkdir(t)
elif op == "unlink": os.unlink(t)
elif op == "link": os.link(t, t + "_link")
elif op == "rename": os.rename(t, t + "2")
elif op == "chmod": os.chmod(t, 0o640)
elif op == "truncate": os.truncate(t, 1)
elif op == "write":
    with open(t, "ab") as f: f.write(b"more")
elif op == "symlink": os.symlink("target", t)
elif op == "rmdir": os.rmdir(t)
elif op == "utimes": os.utime(t, None)
elif op == "chown": os.chown(t, 1000, 1000)
after_t = snap(t if op != "rename" else t + "2")
after_p = snap(parent)
def ch(a, b, i):
    if a is None or b is None: return "-"
    return "changed" if a[i] != b[i] else "same"
print(op, "target m/c:", ch(before_t, after_t, 0), ch(before_t, after_t, 1),
      "dir m/c:", ch(before_p, after_p, 0), ch(before_p, after_p, 1))
"#;

fn run_case(dir: &Path, case: &str, py: &Path) -> String {
    let (user, rest) = match case.strip_prefix("U ") {
        Some(r) => (true, r),
        None => (false, case),
    };
    let script = if let Some(t) = rest.strip_prefix("T ") {
        let mut it = t.split_whitespace();
        let op = it.next().unwrap_or("");
        let target = it.next().unwrap_or("");
        format!("python3 {} {op} {target}", py.display())
    } else {
        format!(
            "st() {{ stat -c '%n %F %a %u %g %h' \"$1\"; [ -d \"$1\" ] || stat -c 'size %s' \"$1\"; }}; {rest}"
        )
    };
    let mut cmd = if user {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            "1000",
            "--regid",
            "1000",
            "--clear-groups",
            "sh",
            "-c",
        ]);
        c.arg(&script);
        c
    } else {
        let mut c = Command::new("sh");
        c.arg("-c").arg(&script);
        c
    };
    let out = cmd.current_dir(dir).output().expect("sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Error messages name the tool and the path, not the filesystem.
    format!(
        "{case} => rc={} {}",
        out.status.code().unwrap_or(-1),
        text.trim()
    )
}

fn run_all(dir: &Path, py: &Path) -> Vec<String> {
    CASES
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|c| run_case(dir, c, py))
        .collect()
}

#[test]
fn posix_behaviour_matches_the_kernels_own_filesystem() {
    for t in ["setpriv", "python3", "mkfifo", "mknod"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .status()
                .is_ok_and(|s| s.success()),
            "{t} is needed"
        );
    }
    let py = std::env::temp_dir().join(format!("posix-times-{}.py", std::process::id()));
    std::fs::write(&py, TIMES_PY).expect("write helper");
    // The oracle: a fresh directory on the host's filesystem.
    let reference = std::env::temp_dir().join(format!("posix-ref-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&reference);
    std::fs::create_dir_all(&reference).expect("reference dir");
    std::fs::set_permissions(
        &reference,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let want = run_all(&reference, &py);
    let _ = std::fs::remove_dir_all(&reference);

    let img = mkfs(4096, 1, 256, "posix");
    let mnt = mountpoint("posix");
    let out = Command::new(gfs2_fuse())
        .arg("mount")
        .arg(&img.0)
        .arg(&mnt.0)
        .args(["-o", "allow_other"])
        .output()
        .expect("gfs2-fuse");
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = MountGuard(mnt.0.clone());
    std::fs::set_permissions(&mnt.0, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod root");
    let got = run_all(&mnt.0, &py);
    drop(g);
    let _ = std::fs::remove_file(&py);
    let mut diffs = Vec::new();
    for (w, g) in want.iter().zip(&got) {
        if w != g {
            diffs.push(format!("kernel: {w}\nours:   {g}"));
        }
    }
    assert_eq!(want.len(), got.len());
    let passed = want.len() - diffs.len();
    if std::env::var_os("POSIX_SHOW").is_some() {
        for g in &got {
            println!("{g}");
        }
    }
    println!(
        "posix: {passed}/{} cases agree with the kernel's filesystem",
        want.len()
    );
    assert!(
        diffs.is_empty(),
        "{} of {} cases differ:\n{}",
        diffs.len(),
        want.len(),
        diffs.join("\n")
    );
}

/// Default-ACL inheritance and the umask, compared with the host kernel's
/// filesystem: a mount with `acl`, a directory with a default ACL, files and
/// directories created in it and outside it.
#[test]
fn acl_inheritance_matches_the_kernels_own_filesystem() {
    const SCRIPT: &str = "umask 022; mkdir d && setfacl -d -m u:1000:rwx,g::r-x,o::--- d && \
        touch d/f && mkdir d/sub && touch d/sub/g && mknod d/fifo p && touch plain && mkdir pd && \
        setfacl -m u:1000:r plain && chmod 640 plain && \
        getfacl -p d/f d/sub d/sub/g d/fifo plain pd; ls -ld d/f d/sub plain pd | cut -c1-10";
    let run = |dir: &Path| -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .current_dir(dir)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "acl script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let reference = std::env::temp_dir().join(format!("posix-acl-ref-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&reference);
    std::fs::create_dir_all(&reference).expect("reference dir");
    let want = run(&reference);
    let _ = std::fs::remove_dir_all(&reference);
    let img = mkfs(4096, 1, 256, "posixacl");
    let mnt = mountpoint("posixacl");
    let out = Command::new(gfs2_fuse())
        .arg("mount")
        .arg(&img.0)
        .arg(&mnt.0)
        .args(["-o", "acl"])
        .output()
        .expect("gfs2-fuse");
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = MountGuard(mnt.0.clone());
    let got = run(&mnt.0);
    drop(g);
    assert!(
        want.contains("default:user:"),
        "reference lacks ACLs:\n{want}"
    );
    assert_eq!(got, want, "ACLs differ from the kernel's filesystem");
}
