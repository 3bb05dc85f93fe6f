//! Test oracles: the Linux kernel's GFS2 in a qemu VM, and gfs2-utils.
//!
//! * [`Kernel::get`]: the Debian kernel package (vmlinuz and modules),
//!   downloaded with apt once and extracted into the cache directory (under
//!   the cargo target directory, or `$GFS2_ORACLE_CACHE`), behind a `flock`.
//! * [`Vm`]: boots that kernel under qemu (TCG, never KVM) with images as
//!   virtio disks (`/dev/vda`, `/dev/vdb`, ...) and runs a busybox `sh`
//!   scenario. The base initramfs (busybox, the GFS2/virtio modules, attr and
//!   acl tools, `/init`, the shell functions of `scripts/oracle.sh`) is built
//!   once and cached, keyed by the kernel version and the scripts; each run
//!   appends its scenario as a second gzip'd cpio archive.
//! * [`sh`]: scenario snippets (mount + manifest + unmount, workloads).
//! * Host side: [`fsck_n`], [`fsck_clean`], [`mkfs`], [`host_manifest`].
//! * [`corpus`]: the committed reference images under `images/`.
//! * [`cluster`]: a cluster of qemu VMs with corosync, dlm_controld and the
//!   kernel DLM sharing one disk, for lock modules that need the real DLM.
//! * [`nfs`]: a Linux NFSv4.1/pNFS client in a qemu VM (block layout,
//!   blkmapd, the shared disk attached), and the kernel nfsd exporting XFS
//!   with the block layout as the reference server.

use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod cluster;
pub mod corpus;
pub mod nfs;

/// The directory of this crate's shell scripts (`scripts/`).
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// The manifest script (`scripts/manifest.sh`), shared by the kernel VM and
/// host-side (FUSE) manifests.
pub fn manifest_script() -> PathBuf {
    scripts_dir().join("manifest.sh")
}

/// Where the kernel package and the base initramfs are cached:
/// `$GFS2_ORACLE_CACHE`, else `tmp/kvm-kernel` in the cargo target directory
/// holding the running executable, else the workspace's `target/`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GFS2_ORACLE_CACHE") {
        return PathBuf::from(d);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(t) = exe.ancestors().find(|a| a.join("CACHEDIR.TAG").exists()) {
            return t.join("tmp/kvm-kernel");
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp/kvm-kernel")
}

/// Path of a system tool; an error naming the missing tool otherwise.
pub fn tool(name: &str) -> Result<PathBuf> {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{name} not found: install it (scripts/test.sh installs the test dependencies)")
}

pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An exclusive `flock` on a file, released on drop.
pub(crate) struct Flock(#[allow(dead_code)] std::fs::File);
impl Flock {
    pub(crate) fn take(path: &Path) -> Result<Self> {
        let f = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
        // SAFETY: flock on a descriptor we own; released when the file closes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "flock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Flock(f))
    }
}

/// 64-bit FNV-1a, for cache keys (stable across Rust versions).
pub(crate) fn fnv(h: u64, data: &[u8]) -> u64 {
    data.iter()
        .fold(h, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

/// The extracted Debian kernel package.
#[derive(Debug)]
pub struct Kernel {
    /// Root of the extracted package (`boot/`, `lib/modules/`).
    pub root: PathBuf,
    pub vmlinuz: PathBuf,
    /// The module directory name, e.g. `6.1.0-56-amd64`.
    pub version: String,
}

static KERNEL: Mutex<Option<&'static Kernel>> = Mutex::new(None);

impl Kernel {
    /// The kernel, fetched with `apt-get download` the first time (the
    /// package `linux-image-amd64` depends on) and extracted with
    /// `dpkg-deb -x`; later calls (also from other processes) reuse it.
    pub fn get() -> Result<&'static Kernel> {
        let mut g = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = *g {
            return Ok(k);
        }
        let k: &'static Kernel = Box::leak(Box::new(Self::fetch()?));
        *g = Some(k);
        Ok(k)
    }

    fn fetch() -> Result<Kernel> {
        let dir = cache_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        let _lock = Flock::take(&dir.join("lock"))?;
        let root = dir.join("root");
        if !dir.join("ok").exists() {
            Self::download(&dir, &root)?;
        }
        let version = std::fs::read_dir(root.join("lib/modules"))
            .context("kernel modules directory")?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .ok_or_else(|| anyhow!("no lib/modules/* in the kernel package"))?;
        let vmlinuz = root.join("boot").join(format!("vmlinuz-{version}"));
        if !vmlinuz.exists() {
            bail!("{} missing from the kernel package", vmlinuz.display());
        }
        Ok(Kernel {
            root,
            vmlinuz,
            version,
        })
    }

    fn download(dir: &Path, root: &Path) -> Result<()> {
        let find = || -> Result<Option<String>> {
            let deps = run(
                Command::new("apt-cache").args(["depends", "linux-image-amd64"]),
                "apt-cache depends linux-image-amd64",
            )?;
            Ok(deps
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Depends: "))
                .find(|p| p.starts_with("linux-image-"))
                .map(str::to_string))
        };
        let pkg = match find().ok().flatten() {
            Some(p) => p,
            None => {
                run(
                    Command::new("apt-get").args(["update", "-qq"]),
                    "apt-get update",
                )?;
                find()?.ok_or_else(|| {
                    anyhow!("no linux-image package known to apt (a Debian kernel is needed)")
                })?
            }
        };
        let _ = std::fs::remove_dir_all(root);
        let debs = || -> Result<Vec<PathBuf>> {
            Ok(std::fs::read_dir(dir)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "deb"))
                .collect())
        };
        for d in debs()? {
            let _ = std::fs::remove_file(d);
        }
        run(
            Command::new("apt-get")
                .args(["download", &pkg])
                .current_dir(dir),
            &format!("apt-get download {pkg}"),
        )?;
        let deb = debs()?
            .pop()
            .ok_or_else(|| anyhow!("apt-get download {pkg} left no .deb"))?;
        run(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root),
            "dpkg-deb -x",
        )?;
        let _ = std::fs::remove_file(&deb);
        std::fs::write(dir.join("ok"), pkg)?;
        Ok(())
    }

    /// The base initramfs (gzip'd cpio), built by `scripts/initramfs.sh` once
    /// and cached under a name keyed by the kernel version, the scripts and
    /// the host tools copied in.
    pub fn base_initrd(&self) -> Result<PathBuf> {
        static BASE: Mutex<Option<PathBuf>> = Mutex::new(None);
        let mut g = BASE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = g.as_ref() {
            return Ok(p.clone());
        }
        let tools = ["busybox", "setfattr", "getfattr", "setfacl", "getfacl"]
            .iter()
            .map(|t| tool(t))
            .collect::<Result<Vec<_>>>()?;
        let out = self.cached_archive(
            "base",
            self.version.as_bytes(),
            &[
                "initramfs.sh",
                "modules.sh",
                "init",
                "oracle.sh",
                "manifest.sh",
            ],
            &tools,
            "building the base initramfs",
        )?;
        *g = Some(out.clone());
        Ok(out)
    }
}

impl Kernel {
    /// An initramfs archive built by `scripts/<scripts[0]>` from this
    /// kernel and cached as `<prefix>-<version>-<key>.cpio.gz`, the key
    /// hashing `seed`, the `scripts` it depends on and the size and mtime
    /// of the host `tools` it copies in (a package upgrade rebuilds it).
    /// Older archives of the prefix are stale by construction and removed.
    /// Built under a flock, so concurrent test processes build it once.
    pub(crate) fn cached_archive(
        &self,
        prefix: &str,
        seed: &[u8],
        scripts: &[&str],
        tools: &[PathBuf],
        what: &str,
    ) -> Result<PathBuf> {
        let mut h = fnv(0xcbf2_9ce4_8422_2325, seed);
        for s in scripts {
            let p = scripts_dir().join(s);
            h = fnv(
                h,
                &std::fs::read(&p).with_context(|| format!("{}", p.display()))?,
            );
        }
        for p in tools {
            let md = std::fs::metadata(p)?;
            let mt = md
                .modified()?
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            h = fnv(h, &md.len().to_le_bytes());
            h = fnv(h, &mt.as_secs().to_le_bytes());
        }
        let dir = cache_dir();
        let out = dir.join(format!("{prefix}-{}-{h:016x}.cpio.gz", self.version));
        let _lock = Flock::take(&dir.join(format!("lock-{prefix}")))?;
        if !out.exists() {
            let stale = format!("{prefix}-");
            for e in std::fs::read_dir(&dir)?.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&stale) && n.ends_with(".cpio.gz") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let script = scripts
                .first()
                .ok_or_else(|| anyhow!("{what}: no script"))?;
            run(
                Command::new("bash")
                    .arg(scripts_dir().join(script))
                    .arg(&self.root)
                    .arg(&out),
                what,
            )?;
        }
        Ok(out)
    }
}

/// A newc cpio archive of regular files (mode 0755), with its trailer.
fn cpio_newc(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let entries: Vec<(&str, u32, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), 0o100755, d.as_slice()))
        .collect();
    cpio_entries(&entries)
}

/// A newc cpio archive of `(path, mode, data)` entries (mode with its file
/// type bits), with its trailer. The kernel's initramfs unpacker creates no
/// missing parent directories, so a directory entry (0755) comes before the
/// first entry under each directory; existing directories are kept.
pub(crate) fn cpio_entries(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let entry = |out: &mut Vec<u8>, ino: usize, name: &str, mode: u32, data: &[u8]| {
        let hdr = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        out.extend_from_slice(hdr.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() & 3 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() & 3 != 0 {
            out.push(0);
        }
    };
    let mut dirs = std::collections::BTreeSet::new();
    let mut ino = 0x7000;
    for (name, mode, data) in entries {
        let name = name.trim_start_matches('/');
        let mut at = 0;
        while let Some(i) = name[at..].find('/') {
            let dir = &name[..at + i];
            if dirs.insert(dir.to_string()) {
                entry(&mut out, ino, dir, 0o040755, &[]);
                ino += 1;
            }
            at += i + 1;
        }
        entry(&mut out, ino, name, *mode, data);
        ino += 1;
    }
    entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

pub(crate) fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut c = Command::new(tool("gzip")?)
        .args(["-1", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("gzip")?;
    let mut stdin = c.stdin.take().ok_or_else(|| anyhow!("gzip stdin"))?;
    let data = data.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&data));
    let out = c.wait_with_output()?;
    w.join().map_err(|_| anyhow!("gzip writer"))??;
    if !out.status.success() {
        bail!("gzip failed: {}", out.status);
    }
    Ok(out.stdout)
}

/// A scratch directory removed (with its content) on drop.
pub struct Scratch(pub PathBuf);
impl Scratch {
    pub fn new(tag: &str) -> Result<Self> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "gfs2-oracle-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("{}", p.display()))?;
        Ok(Scratch(p))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A scenario to run in the kernel VM.
#[derive(Clone, Debug)]
pub struct Vm {
    script: String,
    files: Vec<(String, Vec<u8>)>,
    timeout: Duration,
    kill_after: Option<(String, usize)>,
    memory_mb: u32,
}

/// What a VM run printed and how it ended.
#[derive(Clone, Debug)]
pub struct VmResult {
    /// The serial console, `\r` removed.
    pub console: String,
    /// The scenario's exit status (`ORACLE-EXIT n`); `None` when the VM
    /// never got there (killed, crashed on purpose, panicked).
    pub exit: Option<i32>,
    /// Every `ORACLE-FAIL ...` line (failed mount/umount/insmod, ...).
    pub failures: Vec<String>,
    /// The harness killed qemu (kill pattern seen).
    pub killed: bool,
    pub elapsed: Duration,
}

impl Vm {
    /// A scenario: a busybox `sh` script run by `/init` in a subshell with
    /// the functions of `scripts/oracle.sh` defined (`mnt`, `umnt`,
    /// `manifest`, `workload`, `fsync_file`) and `/manifest.sh` present.
    pub fn new(script: &str) -> Self {
        Vm {
            script: script.to_string(),
            files: Vec::new(),
            timeout: Duration::from_secs(600),
            kill_after: None,
            memory_mb: 1024,
        }
    }

    /// Boot a scenario against `disks` (`/dev/vda`, `/dev/vdb`, ...).
    pub fn run(script: &str, disks: &[&Path]) -> Result<VmResult> {
        Vm::new(script).boot(disks)
    }

    /// Put an extra file at `/NAME` in the VM (e.g. data for the scenario).
    pub fn file(mut self, name: &str, data: &[u8]) -> Self {
        self.files
            .push((name.trim_start_matches('/').to_string(), data.to_vec()));
        self
    }

    /// Kill qemu when the run exceeds this (default 600 s); an error then.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Kill qemu (SIGKILL: a crashed node) as soon as `count` console lines
    /// containing `pattern` have been printed.
    pub fn kill_after(mut self, pattern: &str, count: usize) -> Self {
        self.kill_after = Some((pattern.to_string(), count));
        self
    }

    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }

    /// Boot the kernel with the scenario and `disks`, wait for it to power
    /// off (or be killed), and return the console.
    pub fn boot(&self, disks: &[&Path]) -> Result<VmResult> {
        let k = Kernel::get()?;
        let base = k.base_initrd()?;
        let tmp = Scratch::new("vm")?;
        let mut files = vec![("scenario.sh".to_string(), self.script.as_bytes().to_vec())];
        files.extend(self.files.iter().cloned());
        let mut initrd = std::fs::read(&base).with_context(|| format!("{}", base.display()))?;
        initrd.extend_from_slice(&gzip(&cpio_newc(&files))?);
        let initrd_path = tmp.join("initrd.gz");
        std::fs::write(&initrd_path, &initrd)?;
        for d in disks {
            if !d.exists() {
                bail!("disk {} does not exist", d.display());
            }
        }
        let mut cmd = Command::new(tool("qemu-system-x86_64")?);
        cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1"])
            .args(["-m", &self.memory_mb.to_string()])
            .args(["-nographic", "-no-reboot", "-nodefaults"])
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(&k.vmlinuz)
            .arg("-initrd")
            .arg(&initrd_path)
            .args([
                "-append",
                &format!("console=ttyS0 panic=-1 quiet oracle.disks={}", disks.len()),
            ]);
        for d in disks {
            let s = d
                .to_str()
                .ok_or_else(|| anyhow!("non-UTF-8 disk path {}", d.display()))?;
            if s.contains(',') {
                bail!("disk path with a comma: {s}");
            }
            cmd.arg("-drive")
                .arg(format!("file={s},format=raw,if=virtio,cache=unsafe"));
        }
        let start = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("qemu stdout"))?;
        let mut stderr = child.stderr.take().ok_or_else(|| anyhow!("qemu stderr"))?;
        let err_thread = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stderr.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        });
        let child = Arc::new(Mutex::new(child));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let timed_out = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watchdog = {
            let (child, done, timed_out) = (child.clone(), done.clone(), timed_out.clone());
            let deadline = start + self.timeout;
            std::thread::spawn(move || {
                use std::sync::atomic::Ordering::SeqCst;
                while !done.load(SeqCst) {
                    if Instant::now() >= deadline {
                        timed_out.store(true, SeqCst);
                        let _ = child.lock().unwrap_or_else(|e| e.into_inner()).kill();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let mut console = String::new();
        let mut killed = false;
        let mut seen = 0usize;
        let mut rd = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match rd.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let l = String::from_utf8_lossy(&line).replace('\r', "");
            if let Some((pat, n)) = &self.kill_after {
                if !killed && l.contains(pat.as_str()) {
                    seen += 1;
                    if seen >= *n {
                        let _ = child.lock().unwrap_or_else(|e| e.into_inner()).kill();
                        killed = true;
                    }
                }
            }
            console.push_str(&l);
        }
        let status = loop {
            if let Some(s) = child.lock().unwrap_or_else(|e| e.into_inner()).try_wait()? {
                break s;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = watchdog.join();
        let qemu_err = err_thread.join().unwrap_or_default();
        if timed_out.load(std::sync::atomic::Ordering::SeqCst) {
            bail!(
                "VM did not finish in {:?}; console:\n{console}\n{qemu_err}",
                self.timeout
            );
        }
        if !killed && !status.success() {
            bail!("qemu failed ({status}): {qemu_err}\nconsole:\n{console}");
        }
        let exit = console
            .lines()
            .rev()
            .filter_map(|l| l.trim().strip_prefix("ORACLE-EXIT "))
            .find_map(|s| s.trim().parse().ok());
        let failures = console
            .lines()
            .filter(|l| l.contains("ORACLE-FAIL"))
            .map(str::to_string)
            .collect();
        if !console.contains("ORACLE-BOOTED") && !killed {
            bail!("the VM never ran the scenario; console:\n{console}\n{qemu_err}");
        }
        Ok(VmResult {
            console,
            exit,
            failures,
            killed,
            elapsed: start.elapsed(),
        })
    }
}

impl VmResult {
    /// The manifest lines (`M ...`) printed between `BEGIN-tag` and `END-tag`.
    pub fn section(&self, tag: &str) -> Vec<String> {
        section(&self.console, tag)
    }

    /// Every line between `BEGIN-tag` and `END-tag`, verbatim.
    pub fn raw_section(&self, tag: &str) -> Vec<String> {
        let (b, e) = (format!("BEGIN-{tag}"), format!("END-{tag}"));
        self.console
            .lines()
            .skip_while(|l| l.trim() != b)
            .skip(1)
            .take_while(|l| l.trim() != e)
            .map(str::to_string)
            .collect()
    }

    /// The status printed by `workload DEV TAG ...` (`ORACLE-WORKLOAD TAG n`).
    pub fn workload_status(&self, tag: &str) -> Option<i32> {
        let p = format!("ORACLE-WORKLOAD {tag} ");
        self.console
            .lines()
            .rev()
            .filter_map(|l| l.trim().strip_prefix(p.as_str()))
            .find_map(|s| s.trim().parse().ok())
    }

    /// `(path, sha256)` of every `FSYNCED path sum` line (see `fsync_file`).
    pub fn fsynced(&self) -> Vec<(String, String)> {
        fsynced_lines(&self.console)
    }

    /// Kernel messages that mean the filesystem or the kernel went wrong.
    pub fn kernel_errors(&self) -> Vec<String> {
        self.console
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                [
                    "withdraw",
                    "kernel bug",
                    "oops",
                    "call trace",
                    "fatal",
                    "panic",
                ]
                .iter()
                .any(|w| l.contains(w))
            })
            .map(str::to_string)
            .collect()
    }

    /// Ok when the scenario exited 0 with no `ORACLE-FAIL` line and no
    /// kernel error; otherwise an error carrying the console.
    pub fn check(&self) -> Result<&Self> {
        let errs = self.kernel_errors();
        if self.exit != Some(0) || !self.failures.is_empty() || !errs.is_empty() {
            bail!(
                "VM scenario failed: exit {:?}, failures {:?}, kernel errors {:?}\nconsole:\n{}",
                self.exit,
                self.failures,
                errs,
                self.console
            );
        }
        Ok(self)
    }
}

/// The `M ...` lines printed between `BEGIN-tag` and `END-tag` in `console`.
pub fn section(console: &str, tag: &str) -> Vec<String> {
    let (b, e) = (format!("BEGIN-{tag}"), format!("END-{tag}"));
    let mut on = false;
    let mut out = Vec::new();
    for l in console.lines() {
        if l.trim() == b {
            on = true;
        } else if l.trim() == e {
            on = false;
        } else if on && l.starts_with("M ") {
            out.push(l.to_string());
        }
    }
    out
}

/// `(path, sha256)` of every `FSYNCED path sum` line in `text`.
pub fn fsynced_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("FSYNCED "))
        .filter_map(|r| {
            let mut w = r.split_whitespace();
            let (p, s) = (w.next()?, w.next()?);
            (s.len() == 64).then(|| (p.to_string(), s.to_string()))
        })
        .collect()
}

/// Scenario snippets for [`Vm`] (shell text to concatenate).
pub mod sh {
    /// The device name of the `i`th disk: `/dev/vda`, `/dev/vdb`, ...
    pub fn dev(i: usize) -> String {
        assert!(i < 26, "at most 26 disks");
        format!("/dev/vd{}", (b'a' + i as u8) as char)
    }

    /// Mount `dev` read-only (`ro,acl,noatime`), print its manifest between
    /// `BEGIN-tag`/`END-tag`, unmount.
    pub fn manifest(dev: &str, tag: &str) -> String {
        format!("manifest {dev} {tag}\n")
    }

    /// As [`manifest`], with explicit mount options (after lockproto).
    pub fn manifest_with(dev: &str, tag: &str, opts: &str) -> String {
        format!("manifest {dev} {tag} '{opts}'\n")
    }

    /// Mount `dev` (`acl,noatime`), run `body` in /mnt under `set -e`,
    /// print `ORACLE-WORKLOAD tag status`, sync, unmount.
    pub fn workload(dev: &str, tag: &str, body: &str) -> String {
        workload_with(dev, tag, body, "acl,noatime")
    }

    /// As [`workload`], with explicit mount options.
    pub fn workload_with(dev: &str, tag: &str, body: &str, opts: &str) -> String {
        let f: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        format!("wl_{f}() {{\n{body}\n}}\nworkload {dev} {tag} wl_{f} '{opts}'\n")
    }
}

/// What `fsck.gfs2 -n` said.
#[derive(Debug)]
pub struct Fsck {
    pub code: i32,
    pub output: String,
}

/// Run gfs2-utils' `fsck.gfs2 -n` (no changes) on an image.
pub fn fsck_n(img: &Path) -> Result<Fsck> {
    let out = Command::new(tool("fsck.gfs2")?)
        .arg("-n")
        .arg(img)
        .output()
        .context("fsck.gfs2")?;
    Ok(Fsck {
        code: out.status.code().unwrap_or(-1),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// Ok when `fsck.gfs2 -n` finds the image clean (exit 0).
pub fn fsck_clean(img: &Path) -> Result<()> {
    let f = fsck_n(img)?;
    if f.code != 0 {
        bail!(
            "fsck.gfs2 -n {} exited {}:\n{}",
            img.display(),
            f.code,
            f.output
        );
    }
    Ok(())
}

/// Make a `size_mb` sparse image file with gfs2-utils' `mkfs.gfs2 -O` and
/// `args` (e.g. `["-p", "lock_nolock", "-b", "512", "-j", "1"]`).
pub fn mkfs(img: &Path, size_mb: u64, args: &[&str]) -> Result<()> {
    let f = std::fs::File::create(img).with_context(|| format!("{}", img.display()))?;
    f.set_len(size_mb << 20)?;
    drop(f);
    run(
        Command::new(tool("mkfs.gfs2")?)
            .arg("-O")
            .args(args)
            .arg(img),
        "mkfs.gfs2",
    )?;
    Ok(())
}

/// The manifest of a mounted directory, made on the host with the same
/// script as in the VM.
pub fn host_manifest(dir: &Path) -> Result<Vec<String>> {
    let out = run(
        Command::new("bash")
            .arg(manifest_script())
            .current_dir(dir)
            .env("TZ", "UTC")
            .env("LC_ALL", "C"),
        "manifest on the host",
    )?;
    Ok(out.lines().map(str::to_string).collect())
}

fn gfs2_edit(img: &Path, args: &[&str]) -> Result<String> {
    run(
        Command::new(tool("gfs2_edit")?).args(args).arg(img),
        &format!("gfs2_edit {} {}", args.join(" "), img.display()),
    )
}

/// The block of the dinode at `path` (relative to the root, `/`-separated;
/// "" gives "root"), as a `gfs2_edit -p` block argument, found with gfs2-utils' `gfs2_edit -p`
/// listings of the directories on the way (keep those small: gfs2_edit
/// prints every hash-table pointer). `img` must contain a '/'.
pub fn edit_lookup(img: &Path, path: &str) -> Result<String> {
    let mut addr: Option<u64> = None;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        let what = addr.map_or("root".to_string(), |a| a.to_string());
        let out = gfs2_edit(img, &["-p", &what])?;
        // Entry lines: "  n/n [HASH] formal/addr (0x../0x..) +0: Type  name".
        addr = Some(
            out.lines()
                .find_map(|l| {
                    let t: Vec<&str> = l.split_whitespace().collect();
                    (t.len() >= 7 && t[1].starts_with('[') && t[t.len() - 1] == comp)
                        .then(|| t[2].split('/').nth(1).and_then(|a| a.parse().ok()))
                        .flatten()
                })
                .ok_or_else(|| anyhow!("gfs2_edit: no entry {comp:?} on the way to {path:?}"))?,
        );
    }
    Ok(addr.map_or("root".to_string(), |a| a.to_string()))
}

/// One field of a block, as `gfs2_edit -p BLOCK field NAME` prints it
/// (numbers in decimal, di_flags as flag names), trimmed.
pub fn edit_field(img: &Path, block: &str, field: &str) -> Result<String> {
    Ok(gfs2_edit(img, &["-p", block, "field", field])?
        .trim()
        .to_string())
}

/// The standard CRC-32 (zlib's), which is GFS2's directory-entry hash.
pub fn gfs2_hash(name: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in name {
        c ^= *b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// `n` distinct names `prefix` + counter, `len` bytes long, whose GFS2
/// hashes share their top `bits` bits (they land in the same exhash leaf
/// even at the maximum directory depth, 17 bits).
pub fn colliding_names(n: usize, bits: u32, prefix: &str, len: usize) -> Vec<String> {
    let mut buckets: std::collections::HashMap<u32, Vec<String>> = Default::default();
    let mut i = 0u64;
    loop {
        let c = format!("{i:x}");
        let pad = len.saturating_sub(prefix.len() + c.len());
        let name = format!("{prefix}{}{c}", "_".repeat(pad));
        let b = buckets
            .entry(gfs2_hash(name.as_bytes()) >> (32 - bits))
            .or_default();
        b.push(name);
        if b.len() >= n {
            return std::mem::take(b);
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(gfs2_hash(b"123456789"), 0xcbf4_3926);
        // "." and ".." as gfs2-utils/kernel hash them.
        assert_eq!(gfs2_hash(b""), 0);
    }

    #[test]
    fn collisions_share_the_prefix() {
        let v = colliding_names(4, 12, "x", 20);
        assert_eq!(v.len(), 4);
        let h: Vec<u32> = v.iter().map(|n| gfs2_hash(n.as_bytes()) >> 20).collect();
        assert!(h.iter().all(|x| *x == h[0]));
        assert!(v.iter().all(|n| n.len() == 20));
    }

    #[test]
    fn cpio_makes_parent_directories_once() {
        let a = cpio_entries(&[
            ("/usr/bin/x", 0o100755, b"1"),
            ("/usr/bin/y", 0o100644, b"2"),
            ("/usr/lib/z", 0o100644, b"3"),
        ]);
        let text = String::from_utf8_lossy(&a);
        for (name, n) in [
            ("usr\0", 1),
            ("usr/bin\0", 1),
            ("usr/lib\0", 1),
            ("usr/bin/y\0", 1),
        ] {
            assert_eq!(text.matches(name).count(), n, "{name}");
        }
        // The directory entry (mode 040755) precedes its first file.
        let dir = text.find("000041ED").expect("a directory entry");
        assert!(dir < text.find("usr/bin/x").expect("file entry"));
    }

    #[test]
    fn cpio_layout() {
        let a = cpio_newc(&[("s.sh".into(), b"echo\n".to_vec())]);
        assert_eq!(&a[..6], b"070701");
        assert_eq!(a.len() & 3, 0);
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
