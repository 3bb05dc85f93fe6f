//! Acceptance against the Linux kernel's GFS2: images populated by the kernel
//! in a VM read identically through our FUSE mount (types, modes, owners,
//! sizes, link counts, nanosecond timestamps, file checksums, symlink
//! targets, device numbers, xattrs and ACLs), and a crashed node's image is
//! recovered at mount: fsync'd files intact, `fsck.gfs2 -n` clean, and the
//! kernel's view of the recovered image equal to ours.

mod common;

use common::kvm::{host_manifest, run_vm, section};
use common::*;
use std::path::Path;
use std::process::Command;

/// Files of every kind: stuffed and unstuffed files, sparse files with
/// holes at several heights, short and long symlinks, hard links, device
/// nodes, FIFOs, an exhash directory with leaf splits, xattrs of every
/// namespace (inline, unstuffed, many of them: indirect EA blocks), ACLs.
const POPULATE: &str = r#"
mkdir -p d1/sub big many acl
echo hello > d1/hello.txt
i=0; s=x; while [ $i -lt 11 ]; do s=$s$s; i=$((i+1)); done; echo -n $s > d1/two_k
dd if=/dev/urandom of=d1/rand1m bs=4096 count=256 2>/dev/null
dd if=/dev/urandom of=big/sparse bs=4096 count=3 seek=10000 2>/dev/null
dd if=/dev/urandom of=big/sparse_far bs=1 count=100 seek=300000000 2>/dev/null
dd if=/dev/urandom of=big/f9m bs=1048576 count=9 2>/dev/null
truncate -s 5000000 big/allhole
ln -s hello.txt d1/shortlink
l=$(printf 'a%.0s' $(seq 1 200))/$(printf 'b%.0s' $(seq 1 200))
ln -s $l d1/longlink
ln d1/hello.txt d1/hardlink
mknod d1/chr c 1 3; mknod d1/blk b 8 17; mknod d1/fifo p
for i in $(seq 1 NFILES); do echo $i > many/a_fairly_long_file_name_number_$i; done
for i in $(seq 1 30); do touch d1/sub/e$i; done
setfattr -n user.small -v hello d1/hello.txt
setfattr -n user.big -v 0x$(printf 'ab%.0s' $(seq 1 3000)) d1/hello.txt
setfattr -n trusted.t1 -v tval d1/hello.txt
setfattr -n security.s1 -v sval d1/hello.txt
for i in $(seq 1 80); do setfattr -n user.many_attributes_$i -v value_number_$i d1/rand1m; done
setfacl -m u:1000:rwx,g:100:r-x d1/sub
setfacl -d -m u:1000:rw- d1/sub
echo secret > acl/secret; chmod 600 acl/secret; setfacl -m u:1000:r acl/secret
chmod 755 acl
chown 1000:100 d1/hello.txt; chmod 4751 d1/hello.txt
rm many/a_fairly_long_file_name_number_7
"#;

fn populate(nfiles: u32) -> String {
    POPULATE.replace("NFILES", &nfiles.to_string())
}

fn compare(kernel: &[String], ours: &[String], what: &str) {
    assert!(
        kernel.len() > 10,
        "{what}: kernel manifest too short: {kernel:?}"
    );
    let k: std::collections::BTreeSet<_> = kernel.iter().collect();
    let o: std::collections::BTreeSet<_> = ours.iter().collect();
    let only_k: Vec<_> = k.difference(&o).take(10).collect();
    let only_o: Vec<_> = o.difference(&k).take(10).collect();
    assert!(
        only_k.is_empty() && only_o.is_empty(),
        "{what}: manifests differ\nkernel only: {only_k:#?}\nours only: {only_o:#?}"
    );
}

#[test]
fn kernel_made_images_read_identically() {
    let sizes = [
        (4096u32, 600u32, "b4096"),
        (1024, 300, "b1024"),
        (512, 100, "b512"),
    ];
    let imgs: Vec<TempPath> = sizes
        .iter()
        .map(|(bs, _, tag)| mkfs(*bs, 2, 1024, tag))
        .collect();
    let mut w = String::new();
    for (i, (_, n, tag)) in sizes.iter().enumerate() {
        let dev = format!("/dev/vd{}", (b'a' + i as u8) as char);
        w += &format!(
            "mount -t gfs2 -o acl,noatime {dev} /mnt || echo MOUNTFAIL\ncd /mnt\n{}\ncd /\nsync\n\
             echo BEGIN-{tag}\n(cd /mnt && . /manifest.sh)\necho END-{tag}\numount /mnt\n",
            populate(*n)
        );
    }
    let disks: Vec<&Path> = imgs.iter().map(|i| i.0.as_path()).collect();
    let console = run_vm(&w, &disks);
    assert!(
        !console.contains("MOUNTFAIL"),
        "kernel mount failed:\n{console}"
    );
    assert!(
        console.contains("KVM-WORKLOAD-DONE"),
        "workload incomplete:\n{console}"
    );
    for ((_, _, tag), img) in sizes.iter().zip(&imgs) {
        let kernel = section(&console, tag);
        let ours = with_mount(&img.0, "acl,allow_other", tag, host_manifest);
        compare(&kernel, &ours, tag);
        // Our view also passes gfs2-utils' check (we only read it).
        let st = Command::new(tool("fsck.gfs2"))
            .arg("-n")
            .arg(&img.0)
            .output()
            .unwrap();
        assert!(st.status.success(), "fsck.gfs2 -n on {tag}");
    }
    // Random corruption through FUSE: flip bytes in metadata blocks of the
    // kernel-made 1024-byte-block image, mount with the binary and walk the
    // tree with the standard library; the daemon must survive every walk.
    fuse_corruption_trials(&imgs[1].0, 1024, 25);
    // ACLs are enforced with `acl`: user 1000 may read acl/secret (mode 0600,
    // owner root) only through its ACL entry.
    let img = &imgs[0].0;
    let read_as_1000 = |m: &Path| {
        Command::new(tool("setpriv"))
            .args(["--reuid=1000", "--regid=1000", "--clear-groups", "cat"])
            .arg(m.join("acl/secret"))
            .output()
            .unwrap()
    };
    let with_acl = with_mount(img, "acl,allow_other", "acl1", read_as_1000);
    assert!(
        with_acl.status.success(),
        "{}",
        String::from_utf8_lossy(&with_acl.stderr)
    );
    assert_eq!(with_acl.stdout, b"secret\n");
    let without = with_mount(img, "allow_other", "acl2", read_as_1000);
    assert!(
        !without.status.success(),
        "read allowed without the acl option"
    );
    // Stable readdir offsets: telldir/seekdir in the middle of a large
    // exhash directory resumes exactly where it left off.
    with_mount(img, "ro", "seek", |m| check_seekdir(&m.join("many")));
}

fn check_seekdir(dir: &Path) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain libc directory stream use on a path we own.
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(!d.is_null());
        let mut names = Vec::new();
        let mut pos = Vec::new();
        loop {
            let p = libc::telldir(d);
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            pos.push(p);
            names.push(std::ffi::CStr::from_ptr((*e).d_name.as_ptr()).to_owned());
        }
        assert!(names.len() > 500, "{}", names.len());
        for i in [1usize, 100, 455, names.len() - 1] {
            libc::seekdir(d, pos[i]);
            let e = libc::readdir(d);
            assert!(!e.is_null());
            assert_eq!(
                std::ffi::CStr::from_ptr((*e).d_name.as_ptr()),
                names[i].as_c_str()
            );
        }
        libc::closedir(d);
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "duplicate names in readdir");
    }
}

#[test]
fn crashed_node_image_is_recovered_at_mount() {
    let img = mkfs(2048, 2, 512, "crash");
    let w = r#"
mount -t gfs2 -o noatime /dev/vda /mnt || echo MOUNTFAIL
cd /mnt
mkdir keep
for i in $(seq 1 300); do echo "data $i" > keep/f$i; done
dd if=/dev/urandom of=keep/big bs=4096 count=200 2>/dev/null
setfattr -n user.x -v y keep/f1
sync
echo BEGIN-sums
for f in keep/*; do echo "M $(sha256sum $f)"; done
echo END-sums
mkdir lost
for i in $(seq 1 200); do echo "maybe $i" > lost/g$i; done
rm keep/f2 keep/f3
echo 1 > /proc/sys/kernel/sysrq
echo b > /proc/sysrq-trigger
"#;
    let console = run_vm(w, &[img.0.as_path()]);
    assert!(!console.contains("MOUNTFAIL"), "{console}");
    let sums = section(&console, "sums");
    assert!(sums.len() > 300, "{} sums:\n{console}", sums.len());
    // gfs2-utils agrees that the journal is dirty.
    let pre = Command::new(tool("fsck.gfs2"))
        .arg("-n")
        .arg(&img.0)
        .output()
        .unwrap();
    assert!(!pre.status.success(), "crashed image unexpectedly clean");
    // A read-only device cannot be replayed: the mount is refused, as the
    // kernel refuses it ("Can't replay: read-only block device").
    {
        use gfs2fuse::dev::file::{FileDevice, OpenFlags};
        use gfs2fuse::fs::{Fs, MountOptions};
        let ro = FileDevice::open(
            &img.0,
            OpenFlags {
                read_only: true,
                direct: false,
            },
        )
        .unwrap();
        let opts = MountOptions {
            read_only: true,
            device_read_only: true,
            ..Default::default()
        };
        let err = Fs::mount(std::sync::Arc::new(ro), opts)
            .err()
            .expect("mount refused");
        assert!(err.to_string().contains("read-only"), "{err}");
        // norecovery (spectator) mounts without touching the journal.
        let dev = FileDevice::open(&img.0, OpenFlags::default()).unwrap();
        let opts = MountOptions {
            norecovery: true,
            ..Default::default()
        };
        let fs = Fs::mount(std::sync::Arc::new(dev), opts).unwrap();
        fs.unmount().unwrap();
        let still = Command::new(tool("fsck.gfs2"))
            .arg("-n")
            .arg(&img.0)
            .output()
            .unwrap();
        assert!(!still.status.success(), "norecovery replayed the journal");
    }
    let ours = with_mount(&img.0, "rw", "crash", |m| {
        for l in &sums {
            let mut w = l.split_whitespace().skip(1);
            let (sum, name) = (w.next().unwrap(), w.next().unwrap());
            let data = std::fs::read(m.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            let out = Command::new("sha256sum")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(&data)?;
                    c.wait_with_output()
                })
                .unwrap();
            let got = String::from_utf8_lossy(&out.stdout);
            assert!(
                got.starts_with(sum),
                "{name}: checksum after recovery differs"
            );
        }
        host_manifest(m)
    });
    let post = Command::new(tool("fsck.gfs2"))
        .arg("-n")
        .arg(&img.0)
        .output()
        .unwrap();
    assert!(
        post.status.success(),
        "fsck.gfs2 -n after our recovery: {}\n{}",
        post.status,
        String::from_utf8_lossy(&post.stdout)
    );
    let w2 = "mount -t gfs2 -o noatime /dev/vda /mnt || echo MOUNTFAIL\n\
              echo BEGIN-after\n(cd /mnt && . /manifest.sh)\necho END-after\numount /mnt\n";
    let console2 = run_vm(w2, &[img.0.as_path()]);
    assert!(!console2.contains("MOUNTFAIL"), "{console2}");
    compare(&section(&console2, "after"), &ours, "recovered image");
}

fn fuse_corruption_trials(img: &Path, bsize: u64, trials: u64) {
    let base = std::fs::read(img).unwrap();
    let meta: Vec<u64> = base
        .chunks(bsize as usize)
        .enumerate()
        .filter(|(_, b)| b[..4] == [0x01, 0x16, 0x19, 0x70])
        .map(|(i, _)| i as u64)
        .collect();
    let copy =
        TempPath(std::env::temp_dir().join(format!("fusecorrupt-{}.img", std::process::id())));
    let mut seed = 0x1357_9bdf_2468_ace0u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut mounted = 0;
    for t in 0..trials {
        let mut b = base.clone();
        for _ in 0..1 + next() % 6 {
            let blk = meta[(next() % meta.len() as u64) as usize];
            let off = blk * bsize + next() % bsize;
            if !(65536..65536 + 512).contains(&off) {
                b[off as usize] = next() as u8;
            }
        }
        std::fs::write(&copy.0, &b).unwrap();
        let mnt = mountpoint(&format!("fc{t}"));
        let out = Command::new(gfs2_fuse())
            .arg("mount")
            .arg(&copy.0)
            .arg(&mnt.0)
            .args(["-o", "ro"])
            .output()
            .unwrap();
        if !out.status.success() {
            assert!(!is_mounted(&mnt.0));
            continue;
        }
        mounted += 1;
        let guard = MountGuard(mnt.0.clone());
        let mut todo = vec![mnt.0.clone()];
        let mut n = 0;
        while let Some(p) = todo.pop() {
            n += 1;
            let md = std::fs::symlink_metadata(&p);
            let _ = std::fs::read_link(&p);
            list_and_get_xattrs(&p);
            match md.map(|m| m.file_type()) {
                Ok(t) if t.is_dir() => {
                    if let Ok(rd) = std::fs::read_dir(&p) {
                        todo.extend(rd.flatten().map(|e| e.path()));
                    }
                }
                // Only regular files: opening a FIFO would wait for a writer.
                Ok(t) if t.is_file() => {
                    let _ = std::fs::read(&p);
                }
                _ => {}
            }
            if n > 2000 {
                break;
            }
        }
        // The daemon is still serving: the root answers.
        assert!(
            std::fs::symlink_metadata(&mnt.0).is_ok(),
            "daemon died in trial {t}"
        );
        assert!(is_mounted(&mnt.0));
        drop(guard);
    }
    eprintln!("{trials} FUSE corruption trials, {mounted} mounted");
}

/// listxattr + getxattr of every name, through libc (no symlink following).
fn list_and_get_xattrs(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: buffers are sized as passed.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return;
    }
    let mut val = vec![0u8; 65536];
    for name in names[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = std::ffi::CString::new(name).unwrap();
        // SAFETY: as above.
        unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
    }
}
