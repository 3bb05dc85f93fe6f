//! The Linux kernel's GFS2 in a qemu VM, to make and read images for the
//! cross-check tests. Interim: the project's oracle crate (`tests/oracle`) is
//! meant to provide this; until it does, this small harness downloads the
//! Debian kernel package once (cached under the target directory), builds an
//! initramfs with busybox and the GFS2 modules, and runs a shell workload.
#![allow(dead_code)]

use super::tool;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kvm-kernel")
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The extracted Debian kernel package (vmlinuz and modules), fetched once.
pub fn kernel_root() -> PathBuf {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join("lock")).unwrap();
    // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let root = dir.join("root");
    if dir.join("ok").exists() {
        return root;
    }
    let find = || {
        let deps = run(
            Command::new("apt-cache").args(["depends", "linux-image-amd64"]),
            "apt-cache depends linux-image-amd64",
        );
        deps.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .map(str::to_string)
    };
    let pkg = find().or_else(|| {
        run(
            Command::new("apt-get").args(["update", "-qq"]),
            "apt-get update",
        );
        find()
    });
    let pkg = pkg.expect("no linux-image package known to apt (Debian kernel needed for the VM)");
    let _ = std::fs::remove_dir_all(&root);
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "deb") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    run(
        Command::new("apt-get")
            .args(["download", &pkg])
            .current_dir(&dir),
        &format!("apt-get download {pkg}"),
    );
    let deb = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("downloaded kernel package");
    run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root),
        "dpkg-deb -x",
    );
    let _ = std::fs::remove_file(&deb);
    std::fs::write(dir.join("ok"), pkg).unwrap();
    root
}

fn vmlinuz(root: &Path) -> PathBuf {
    std::fs::read_dir(root.join("boot"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz")
        })
        .expect("vmlinuz in the kernel package")
}

/// Run `workload` (a busybox sh script, with /manifest.sh available) in a
/// VM with `disks` as /dev/vda, /dev/vdb, ...; returns the console output.
/// The workload ends normally (then the VM powers off) or crashes the VM on
/// purpose (`echo b > /proc/sysrq-trigger`).
pub fn run_vm(workload: &str, disks: &[&Path]) -> String {
    let root = kernel_root();
    let tmp = std::env::temp_dir().join(format!(
        "kvm-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&tmp).unwrap();
    let w = tmp.join("workload.sh");
    std::fs::write(&w, workload).unwrap();
    let initrd = tmp.join("initrd.gz");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kvm/initramfs.sh");
    run(
        Command::new("bash")
            .arg(&script)
            .arg(&root)
            .arg(&w)
            .arg(&initrd),
        "building the initramfs",
    );
    let mut cmd = Command::new(tool("qemu-system-x86_64"));
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "1"])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(vmlinuz(&root))
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"]);
    for d in disks {
        cmd.arg("-drive").arg(format!(
            "file={},format=raw,if=virtio,cache=unsafe",
            d.display()
        ));
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(600)) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            // SAFETY: killing the qemu we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("VM did not finish in 600 s");
        }
    };
    let _ = std::fs::remove_dir_all(&tmp);
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

/// The manifest lines (`M ...`) printed by the VM between two markers.
pub fn section(console: &str, tag: &str) -> Vec<String> {
    let begin = format!("BEGIN-{tag}");
    let end = format!("END-{tag}");
    let mut on = false;
    let mut out = Vec::new();
    for l in console.lines() {
        if l.contains(&begin) {
            on = true;
        } else if l.contains(&end) {
            on = false;
        } else if on && l.starts_with("M ") {
            out.push(l.to_string());
        }
    }
    out
}

/// The manifest of a mounted directory, made on the host with the same script.
pub fn host_manifest(dir: &Path) -> Vec<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kvm/manifest.sh");
    let out = run(
        Command::new("bash")
            .arg(&script)
            .current_dir(dir)
            .env("TZ", "UTC")
            .env("LC_ALL", "C"),
        "manifest on the host",
    );
    out.lines().map(str::to_string).collect()
}
