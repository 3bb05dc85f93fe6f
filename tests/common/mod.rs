//! Helpers shared by the workspace-level tests: gfs2-utils images made at
//! test time and FUSE mounts that are always unmounted.
#![allow(dead_code)]

pub mod tgt;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Path of a system tool; fails loudly when it is missing.
pub fn tool(name: &str) -> PathBuf {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install it (scripts/test.sh installs gfs2-utils and fuse3)");
}

/// A file or directory removed on drop.
pub struct TempPath(pub PathBuf);
impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A fresh image made by gfs2-utils' mkfs.gfs2.
pub fn mkfs(bsize: u32, journals: u32, size_mb: u64, tag: &str) -> TempPath {
    let p = std::env::temp_dir().join(format!("gfs2t-{tag}-{}.img", std::process::id()));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(size_mb << 20).unwrap();
    drop(f);
    let out = Command::new(tool("mkfs.gfs2"))
        .args(["-O", "-p", "lock_nolock", "-b", &bsize.to_string()])
        .args(["-j", &journals.to_string()])
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.gfs2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    TempPath(p)
}

/// A temporary directory to mount on.
pub fn mountpoint(tag: &str) -> TempPath {
    let p = std::env::temp_dir().join(format!("gfs2m-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    TempPath(p)
}

/// Unmounts a FUSE mount on drop (`fusermount3 -u`, then lazily if busy).
pub struct MountGuard(pub PathBuf);
impl Drop for MountGuard {
    fn drop(&mut self) {
        let st = Command::new(tool("fusermount3"))
            .arg("-u")
            .arg(&self.0)
            .status();
        if !st.is_ok_and(|s| s.success()) {
            let _ = Command::new(tool("fusermount3"))
                .arg("-uz")
                .arg(&self.0)
                .status();
        }
    }
}

/// The `fuse` module's `enable_uring` (whether the kernel offers FUSE over
/// io_uring), set for the guard's lifetime and put back after. Mounts that
/// do not ask for io_uring (`-o io_uring=on`) are not affected by it.
pub struct FuseUring(String);
impl FuseUring {
    const PARAM: &'static str = "/sys/module/fuse/parameters/enable_uring";
    pub fn set(on: bool) -> Self {
        let old = std::fs::read_to_string(Self::PARAM).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: this kernel has no FUSE over io_uring (Linux 6.14+, CONFIG_FUSE_IO_URING)",
                Self::PARAM
            )
        });
        std::fs::write(Self::PARAM, if on { "Y" } else { "N" }).expect("set enable_uring (root)");
        FuseUring(old.trim().to_string())
    }
}
impl Drop for FuseUring {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PARAM, &self.0);
    }
}

/// Is `p` a mount point listed in /proc/mounts?
pub fn is_mounted(p: &Path) -> bool {
    let m = std::fs::read_to_string("/proc/mounts").unwrap();
    m.lines()
        .any(|l| l.split(' ').nth(1) == Some(p.to_str().unwrap()))
}

/// An in-memory copy-on-write view of an image: reads come from the base
/// bytes unless a block was written. Lets corruption trials and recovery run
/// without copying images.
pub struct OverlayDevice {
    pub base: std::sync::Arc<Vec<u8>>,
    pub over: std::sync::Mutex<std::collections::HashMap<u64, Vec<u8>>>,
}

const OVL: u64 = 512;

impl OverlayDevice {
    pub fn new(base: std::sync::Arc<Vec<u8>>) -> Self {
        OverlayDevice {
            base,
            over: Default::default(),
        }
    }
    /// Overwrite bytes (through the overlay).
    pub fn poke(&self, offset: u64, data: &[u8]) {
        use gfs2fuse::dev::BlockDevice;
        let mut buf = vec![0u8; data.len()];
        self.read_at(&mut buf, offset).unwrap();
        buf.copy_from_slice(data);
        self.write_at(&buf, offset).unwrap();
    }
}

impl gfs2fuse::dev::BlockDevice for OverlayDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.base.len() as u64 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&self.base[offset as usize..end as usize]);
        let over = self.over.lock().unwrap();
        if !over.is_empty() {
            for b in offset / OVL..end.div_ceil(OVL) {
                if let Some(d) = over.get(&b) {
                    let bs = b * OVL;
                    let s = bs.max(offset);
                    let e = (bs + OVL).min(end);
                    buf[(s - offset) as usize..(e - offset) as usize]
                        .copy_from_slice(&d[(s - bs) as usize..(e - bs) as usize]);
                }
            }
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.base.len() as u64 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        for b in offset / OVL..end.div_ceil(OVL) {
            let bs = b * OVL;
            let mut cur = vec![0u8; OVL as usize];
            self.read_at(&mut cur, bs)?;
            let s = bs.max(offset);
            let e = (bs + OVL).min(end);
            cur[(s - bs) as usize..(e - bs) as usize]
                .copy_from_slice(&buf[(s - offset) as usize..(e - offset) as usize]);
            self.over.lock().unwrap().insert(b, cur);
        }
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.base.len() as u64
    }
    fn describe(&self) -> String {
        "overlay".into()
    }
}

/// Visit every inode reachable from `start` through the library API,
/// reading everything (attributes, data, links, xattrs); errors are
/// returned per inode and counted, never fatal. Bounded by `max_inodes`.
pub fn walk(fs: &gfs2fuse::fs::Fs, start: u64, max_inodes: usize) -> (usize, usize) {
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![start];
    let (mut ok, mut errs) = (0usize, 0usize);
    while let Some(ino) = todo.pop() {
        if !seen.insert(ino) || seen.len() > max_inodes {
            continue;
        }
        let Ok(a) = fs.getattr(ino) else {
            errs += 1;
            continue;
        };
        ok += 1;
        let _ = fs.listxattr(ino).map(|names| {
            for n in names {
                let _ = fs.getxattr(ino, &n);
            }
        });
        match a.mode & 0o170000 {
            0o040000 => {
                let mut kids = Vec::new();
                let r = fs.readdir(ino, 0, |e| {
                    if e.name != b"." && e.name != b".." {
                        kids.push((e.ino, e.name.to_vec()));
                    }
                    kids.len() < 100_000
                });
                if r.is_err() {
                    errs += 1;
                }
                for (k, name) in kids {
                    let _ = fs.lookup(ino, &name);
                    todo.push(k);
                }
            }
            0o100000 => {
                let mut off = 0u64;
                while off < a.size.min(64 << 20) {
                    match fs.read(ino, off, 1 << 20) {
                        Ok(d) if !d.is_empty() => off += d.len() as u64,
                        Ok(_) => break,
                        Err(_) => {
                            errs += 1;
                            break;
                        }
                    }
                }
                let _ = fs.seek(ino, 0, true);
                let _ = fs.seek(ino, 0, false);
            }
            0o120000 => {
                let _ = fs.readlink(ino);
            }
            _ => {}
        }
    }
    (ok, errs)
}
pub mod kvm;

/// Wait until no `gfs2-fuse` process serving `mnt` is left: the daemon
/// finishes its unmount (log flush, clean journal header) after the kernel
/// has already detached the mount.
pub fn wait_daemon_gone(mnt: &Path) {
    let want = mnt.to_string_lossy().into_owned();
    for _ in 0..800 {
        let busy = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                    let s = String::from_utf8_lossy(&c);
                    s.contains("gfs2-fuse") && s.contains(want.as_str())
                })
            });
        if !busy {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("gfs2-fuse still serving {want} 20 s after unmount");
}

/// Our FUSE daemon (built by cargo for the root package's tests).
pub fn gfs2_fuse() -> &'static str {
    env!("CARGO_BIN_EXE_gfs2-fuse")
}

/// xorshift64: reproducible pseudo-random numbers without a dependency.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// gfs2-utils' `fsck.gfs2 -n` must exit 0 and report nothing.
pub fn fsck_clean(img: &Path, what: &str) {
    let out = Command::new(tool("fsck.gfs2"))
        .arg("-n")
        .arg(img)
        .output()
        .expect("fsck.gfs2");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: fsck.gfs2 -n:\n{text}");
    for bad in ["rror", "ncorrect", "wrong", "fix", "bad", "Bad", "?"] {
        assert!(
            !text.contains(bad),
            "{what}: fsck.gfs2 -n reported:\n{text}"
        );
    }
}

/// Manifest lines with device numbers blanked: the 6.1 kernel reports 0,0
/// for device nodes it reads back from disk (see images/MANIFEST.md), so
/// those numbers are compared elsewhere (our own remount, gfs2_edit).
pub fn without_rdev(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            if l.contains("|character special file|") || l.contains("|block special file|") {
                let mut f: Vec<&str> = l.split('|').collect();
                if f.len() > 8 {
                    f[8] = "dev";
                }
                f.join("|")
            } else {
                l.clone()
            }
        })
        .collect()
}

/// Two manifests must list the same lines.
pub fn compare_manifests(a: &[String], b: &[String], what: &str) {
    assert!(a.len() > 20, "{what}: manifest too short: {a:?}");
    let x: std::collections::BTreeSet<_> = a.iter().collect();
    let y: std::collections::BTreeSet<_> = b.iter().collect();
    let only_a: Vec<_> = x.difference(&y).take(10).collect();
    let only_b: Vec<_> = y.difference(&x).take(10).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "{what}: manifests differ\nfirst only: {only_a:#?}\nsecond only: {only_b:#?}"
    );
}

/// Mount `img` with our daemon (detached) at a fresh mount point.
pub fn mount_ours(img: &Path, opts: &str, tag: &str) -> (TempPath, MountGuard) {
    let mnt = mountpoint(tag);
    let mut cmd = Command::new(gfs2_fuse());
    cmd.arg("mount").arg(img).arg(&mnt.0);
    if !opts.is_empty() {
        cmd.args(["-o", opts]);
    }
    let out = cmd.output().expect("gfs2-fuse");
    assert!(
        out.status.success(),
        "{tag}: mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = MountGuard(mnt.0.clone());
    (mnt, g)
}

/// Mount `img` with our daemon, run `f` on the mount point, unmount (also
/// on panic) and wait until the daemon has finished its unmount.
pub fn with_mount<T>(img: &Path, opts: &str, tag: &str, f: impl FnOnce(&Path) -> T) -> T {
    let (mnt, g) = mount_ours(img, opts, tag);
    let r = f(&mnt.0);
    drop(g);
    wait_daemon_gone(&mnt.0);
    r
}

/// Our mkfs binary, built beside gfs2-fuse.
pub fn mkfs_bin() -> PathBuf {
    let p = Path::new(gfs2_fuse()).with_file_name("mkfs-gfs2");
    assert!(
        p.exists(),
        "{} missing: build the workspace (cargo build --release --workspace)",
        p.display()
    );
    p
}

/// A TCP port nobody listens on right now (for a test's own server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// `fusermount3 -u` a mount whose daemon is `child`, and wait for the
/// daemon to exit successfully.
pub fn unmount_and_wait(mnt: &Path, mut child: std::process::Child) {
    let st = Command::new(tool("fusermount3"))
        .arg("-u")
        .arg(mnt)
        .status()
        .unwrap();
    assert!(st.success(), "fusermount3 -u {}", mnt.display());
    let st = child.wait().unwrap();
    assert!(st.success(), "gfs2-fuse exited with {st}");
}

/// Fill `b` with the generator's bytes.
pub fn fill(rng: &mut Rng, b: &mut [u8]) {
    for c in b.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// Our fsck binary, built beside gfs2-fuse.
pub fn fsck_bin() -> PathBuf {
    let p = Path::new(gfs2_fuse()).with_file_name("fsck-gfs2");
    assert!(
        p.exists(),
        "{} missing: build the workspace (cargo build --release --workspace)",
        p.display()
    );
    p
}

/// Our `fsck.gfs2 -n` over a device specification (a path or a network
/// disk) exits 0: nothing found.
pub fn our_fsck_clean(spec: &str, envs: &[(&str, &str)], what: &str) {
    let out = Command::new(fsck_bin())
        .envs(envs.iter().copied())
        .arg("-n")
        .arg(spec)
        .output()
        .expect("fsck-gfs2");
    assert!(
        out.status.success(),
        "{what}: our fsck.gfs2 -n {spec} exited {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Program `name` from Debian package `package`: installed with apt-get when
/// missing (as scripts/test.sh does); fails loudly when that is impossible.
pub fn package_tool(name: &str, package: &str) -> PathBuf {
    let find = || {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
    };
    if let Some(p) = find() {
        return p;
    }
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(std::process::Stdio::null())
        .status();
    find().unwrap_or_else(|| {
        panic!(
            "{name} is missing and `apt-get install -y {package}` failed: install the Debian \
             package {package} (scripts/test.sh does)"
        )
    })
}

/// The initiators' restart test: two writer threads write blocks
/// `0..nblocks` of `blk` bytes (`block(i)`) through `dev`, and every write
/// must succeed; after `kill_after` acknowledgements `kill` stops
/// `target`, and a second later `restart` brings it back. Returns the
/// acknowledgements counted at the kill, having checked that the stream was
/// still going then.
#[allow(clippy::too_many_arguments)]
pub fn stream_across_restart<T>(
    dev: &dyn gfs2fuse::dev::BlockDevice,
    nblocks: usize,
    blk: usize,
    block: &(dyn Fn(usize) -> Vec<u8> + Sync),
    kill_after: usize,
    target: &mut T,
    kill: impl FnOnce(&mut T),
    restart: impl FnOnce(&mut T),
) -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let acked = AtomicUsize::new(0);
    let at_kill = std::thread::scope(|s| {
        for t in 0..2 {
            let acked = &acked;
            s.spawn(move || {
                for i in (t..nblocks).step_by(2) {
                    if let Err(e) = dev.write_at(&block(i), (i * blk) as u64) {
                        panic!("write of block {i} failed: {e}");
                    }
                    acked.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        while acked.load(Ordering::SeqCst) < kill_after {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        kill(target);
        let at_kill = acked.load(Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_secs(1));
        restart(target);
        at_kill
    });
    assert!(
        at_kill < nblocks,
        "the stream ended before the kill ({at_kill} of {nblocks})"
    );
    assert_eq!(acked.load(Ordering::SeqCst), nblocks);
    at_kill
}

/// Every block `0..nblocks` of `blk` bytes that [`stream_across_restart`]
/// wrote is in the image file `img`.
pub fn assert_blocks_in_image(
    img: &Path,
    nblocks: usize,
    blk: usize,
    block: &dyn Fn(usize) -> Vec<u8>,
) {
    let file = std::fs::read(img).unwrap();
    for i in 0..nblocks {
        assert!(
            file[i * blk..(i + 1) * blk] == block(i)[..],
            "acknowledged block {i} is not in the image"
        );
    }
}

/// A `gfs2-fuse` daemon serving `source` on two `lock_mem` nodes at `m0`
/// and `m1`, with its NFSv4.1 server on 127.0.0.1:`port` (pNFS lease
/// `lease` seconds) and its stderr in `log` under `RUST_LOG=rust_log`;
/// returned once both mounts and the port answer (a daemon not up within
/// 30 s fails the test with its log).
pub fn start_nfsd_pair(
    source: &std::ffi::OsStr,
    m0: &Path,
    m1: &Path,
    port: u16,
    lease: u64,
    rust_log: &str,
    log: &Path,
) -> std::process::Child {
    let child = Command::new(gfs2_fuse())
        .arg("mount")
        .arg(source)
        .arg(m0)
        .arg(m1)
        .args([
            "-f",
            "-o",
            &format!("lockproto=lock_mem,nfsd=127.0.0.1:{port},pnfs_lease={lease}"),
        ])
        .env("RUST_LOG", rust_log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !is_mounted(m0)
        || !is_mounted(m1)
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "daemon not up:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

/// `setxattr(2)` of a binary value; fails the test on error.
pub fn xattr_set(p: &Path, name: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of value.len() bytes.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

/// `getxattr(2)`: the value, `None` for ENODATA; fails the test on other errors.
pub fn xattr_get(p: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of buf.len() bytes.
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENODATA),
            "getxattr {name}: {e}"
        );
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}
