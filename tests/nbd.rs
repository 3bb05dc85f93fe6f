//! The NBD initiator (`gfs2fuse::dev::nbd`) against real servers on
//! loopback: qemu-nbd (qemu-utils) and nbdkit. Our mkfs writes through NBD
//! and gfs2-utils' fsck.gfs2 finds the result clean; the kernel populates
//! those images in a VM and our FUSE mount over NBD reads them identically;
//! files written through a FUSE mount over NBD survive remount and fsck;
//! random concurrent I/O through the BlockDevice API matches the backing
//! file (also with a server that enforces a 4 KiB minimum block size);
//! killing the server mid-stream loses no acknowledged write; an outage
//! longer than the timeout gives EIO, never a hang or a panic.

mod common;

use common::kvm::{host_manifest, run_vm, section};
use common::*;
use gfs2fuse::dev::nbd::{errno_of, NbdAddr, NbdConfig, NbdDevice};
use gfs2fuse::dev::{spec, BlockDevice};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn tmp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("gfs2nbd-{tag}-{}", std::process::id()))
}

/// A sparse image file of `mb` MiB, removed on drop.
fn image(tag: &str, mb: u64) -> TempPath {
    let p = tmp(tag).with_extension("img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(mb << 20).unwrap();
    TempPath(p)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    QemuNbd,
    QemuNbdReadOnly,
    Nbdkit,
    /// nbdkit refusing requests not aligned to 4 KiB.
    NbdkitMin4k,
    /// nbdkit without fixed newstyle: the client must use NBD_OPT_EXPORT_NAME.
    NbdkitOldNewstyle,
    /// nbdkit refusing structured replies: simple replies only.
    NbdkitNoSr,
    /// nbdkit failing every read and write with ENOSPC while the file
    /// IMG.inject exists (with and without structured replies).
    NbdkitInject,
    NbdkitInjectNoSr,
}

#[derive(Clone, Debug)]
enum Listen {
    Tcp(u16),
    Unix(PathBuf),
}

/// A server process on loopback, killed on drop.
struct Server {
    kind: Kind,
    img: PathBuf,
    listen: Listen,
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    fn start(kind: Kind, img: &Path, listen: Listen) -> Server {
        let tag = format!("{kind:?}-{}", free_port());
        let mut s = Server {
            kind,
            img: img.to_path_buf(),
            listen,
            child: None,
            log: tmp(&tag).with_extension("log"),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = match self.kind {
            Kind::QemuNbd | Kind::QemuNbdReadOnly => {
                let mut c = Command::new(package_tool("qemu-nbd", "qemu-utils"));
                c.args(["-f", "raw", "-x", "exp", "-e", "4", "-t"]);
                if self.kind == Kind::QemuNbdReadOnly {
                    c.arg("-r");
                }
                match &self.listen {
                    Listen::Tcp(p) => c.args(["-b", "127.0.0.1", "-p", &p.to_string()]),
                    Listen::Unix(s) => c.arg("-k").arg(s),
                };
                c.arg(&self.img);
                c
            }
            Kind::Nbdkit
            | Kind::NbdkitMin4k
            | Kind::NbdkitOldNewstyle
            | Kind::NbdkitNoSr
            | Kind::NbdkitInject
            | Kind::NbdkitInjectNoSr => {
                let mut c = Command::new(package_tool("nbdkit", "nbdkit"));
                c.args(["-f", "--exit-with-parent"]);
                match &self.listen {
                    Listen::Tcp(p) => c.args(["-i", "127.0.0.1", "-p", &p.to_string()]),
                    Listen::Unix(s) => c.arg("-U").arg(s),
                };
                if self.kind == Kind::NbdkitMin4k {
                    c.arg("--filter=blocksize-policy");
                }
                if self.kind == Kind::NbdkitOldNewstyle {
                    c.arg("--mask-handshake=0");
                }
                if matches!(self.kind, Kind::NbdkitNoSr | Kind::NbdkitInjectNoSr) {
                    c.arg("--no-sr");
                }
                let inject = matches!(self.kind, Kind::NbdkitInject | Kind::NbdkitInjectNoSr);
                if inject {
                    c.arg("--filter=error");
                }
                c.arg("file").arg(format!("file={}", self.img.display()));
                if inject {
                    c.args(["error=ENOSPC", "error-rate=100%"]).arg(format!(
                        "error-file={}",
                        self.img.with_extension("inject").display()
                    ));
                }
                if self.kind == Kind::NbdkitMin4k {
                    c.args([
                        "blocksize-minimum=4096",
                        "blocksize-preferred=4096",
                        "blocksize-maximum=1048576",
                        "blocksize-error-policy=error",
                    ]);
                }
                c
            }
        };
        if let Listen::Unix(s) = &self.listen {
            let _ = std::fs::remove_file(s);
        }
        let log = std::fs::File::create(&self.log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {:?}: {e}", self.kind));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = match &self.listen {
                Listen::Tcp(p) => std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok(),
                Listen::Unix(s) => std::os::unix::net::UnixStream::connect(s).is_ok(),
            };
            if up {
                return;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{:?} exited ({st}): {}",
                    self.kind,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{:?} not listening after 20 s: {}",
                self.kind,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spec(&self) -> String {
        match &self.listen {
            Listen::Tcp(p) => format!("nbd://127.0.0.1:{p}/exp"),
            Listen::Unix(s) => format!("nbd+unix:///exp?socket={}", s.display()),
        }
    }

    fn config(&self, timeout: Duration) -> NbdConfig {
        let addr = match &self.listen {
            Listen::Tcp(p) => NbdAddr::Tcp {
                host: "127.0.0.1".into(),
                port: *p,
            },
            Listen::Unix(s) => NbdAddr::Unix(s.clone()),
        };
        let mut c = NbdConfig::new(addr, "exp");
        c.timeout = timeout;
        c
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: signalling a child we started.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// SIGKILL: no goodbye to the clients.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
        if let Listen::Unix(s) = &self.listen {
            let _ = std::fs::remove_file(s);
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn fsck_clean(img: &Path) {
    let out = Command::new(tool("fsck.gfs2"))
        .arg("-n")
        .arg(img)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "fsck.gfs2 -n {}:\n{}{}",
        img.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn our_mkfs(spec: &str, bsize: u32) {
    let out = Command::new(mkfs_bin())
        .args([
            "-O",
            "-p",
            "lock_nolock",
            "-j",
            "1",
            "-b",
            &bsize.to_string(),
        ])
        .arg(spec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs-gfs2 {spec}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const POPULATE: &str = r#"
mkdir -p d/sub
echo hello > d/hello.txt
dd if=/dev/urandom of=d/rand3m bs=4096 count=768 2>/dev/null
dd if=/dev/urandom of=d/sparse bs=4096 count=2 seek=5000 2>/dev/null
for i in $(seq 1 150); do echo $i > d/sub/some_file_name_$i; done
ln -s hello.txt d/link
setfattr -n user.k -v v d/hello.txt
"#;

/// mkfs through NBD (TCP and Unix socket, both servers), fsck.gfs2 clean;
/// the kernel then fills the images, and our FUSE mount over NBD (the
/// other transport this time) reads exactly what the kernel wrote.
#[test]
fn mkfs_fsck_and_fuse_mount_over_qemu_nbd_and_nbdkit() {
    let a = image("a", 256);
    let b = image("b", 256);
    let sock_a = tmp("a").with_extension("sock");
    let sock_b = tmp("b").with_extension("sock");
    {
        let qa = Server::start(Kind::QemuNbd, &a.0, Listen::Tcp(free_port()));
        our_mkfs(&qa.spec(), 4096);
        let kb = Server::start(Kind::Nbdkit, &b.0, Listen::Unix(sock_b.clone()));
        our_mkfs(&kb.spec(), 1024);
    }
    fsck_clean(&a.0);
    fsck_clean(&b.0);
    // The servers are gone (qemu-nbd locks its image): the kernel writes.
    let mut w = String::new();
    for (dev, tag) in [("/dev/vda", "a"), ("/dev/vdb", "b")] {
        w += &format!(
            "mount -t gfs2 -o noatime {dev} /mnt || echo MOUNTFAIL\ncd /mnt\n{POPULATE}\ncd /\nsync\n\
             echo BEGIN-{tag}\n(cd /mnt && . /manifest.sh)\necho END-{tag}\numount /mnt\n"
        );
    }
    let console = run_vm(&w, &[a.0.as_path(), b.0.as_path()]);
    assert!(!console.contains("MOUNTFAIL"), "kernel mount:\n{console}");
    assert!(
        console.contains("KVM-WORKLOAD-DONE"),
        "workload:\n{console}"
    );
    fsck_clean(&a.0);
    fsck_clean(&b.0);
    let qa = Server::start(Kind::QemuNbd, &a.0, Listen::Unix(sock_a.clone()));
    let kb = Server::start(Kind::Nbdkit, &b.0, Listen::Tcp(free_port()));
    // Our fsck over NBD agrees the kernel's result is clean.
    our_fsck_clean(&qa.spec(), &[], "a over NBD");
    our_fsck_clean(&kb.spec(), &[], "b over NBD");
    for (srv, tag) in [(&qa, "a"), (&kb, "b")] {
        let kernel = section(&console, tag);
        assert!(kernel.len() > 150, "{tag}: kernel manifest: {kernel:?}");
        let mnt = mountpoint(&format!("nbd{tag}"));
        let out = Command::new(env!("CARGO_BIN_EXE_gfs2-fuse"))
            .arg("mount")
            .arg(srv.spec())
            .arg(&mnt.0)
            .output()
            .unwrap();
        let guard = MountGuard(mnt.0.clone());
        assert!(
            out.status.success(),
            "gfs2-fuse mount {}: {}",
            srv.spec(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(is_mounted(&mnt.0));
        assert_eq!(
            std::fs::read(mnt.0.join("d/hello.txt")).unwrap(),
            b"hello\n"
        );
        assert_eq!(
            std::fs::read(mnt.0.join("d/sub/some_file_name_77")).unwrap(),
            b"77\n"
        );
        assert_eq!(
            std::fs::metadata(mnt.0.join("d/rand3m")).unwrap().len(),
            3 << 20
        );
        let ours = host_manifest(&mnt.0);
        let k: std::collections::BTreeSet<_> = kernel.iter().collect();
        let o: std::collections::BTreeSet<_> = ours.iter().collect();
        let only_k: Vec<_> = k.difference(&o).take(10).collect();
        let only_o: Vec<_> = o.difference(&k).take(10).collect();
        assert!(
            only_k.is_empty() && only_o.is_empty(),
            "{tag}: manifests differ\nkernel only: {only_k:#?}\nours only: {only_o:#?}"
        );
        drop(guard);
        assert!(!is_mounted(&mnt.0));
    }
    drop((qa, kb));
    let _ = std::fs::remove_file(&sock_a);
    let _ = std::fs::remove_file(&sock_b);
}

/// A small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Four threads do random reads and writes (unaligned, 1 byte to 3 MiB)
/// in their own quarter of the device and check every read against their
/// model; then one 40 MiB write and read (chunked at 32 MiB) crosses all
/// quarters; finally the backing file equals the models.
fn random_io(kind: Kind) {
    const MB: u64 = 1 << 20;
    let size = 64 * MB;
    let img = image(&format!("rio-{kind:?}"), 64);
    {
        // Random data with holes (every third MiB left sparse), so that
        // structured replies carry both data and hole chunks.
        let mut init = vec![0u8; MB as usize];
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img.0)
            .unwrap();
        let mut rng = Rng(0x1234_5678);
        for m in (0..size / MB).filter(|m| m % 3 != 2) {
            rng.fill(&mut init);
            f.write_all_at(&init, m * MB).unwrap();
        }
    }
    let srv = Server::start(kind, &img.0, Listen::Tcp(free_port()));
    let dev = Arc::new(NbdDevice::connect(srv.config(Duration::from_secs(30))).unwrap());
    assert_eq!(dev.size(), size);
    let structured = matches!(kind, Kind::QemuNbd | Kind::Nbdkit | Kind::NbdkitMin4k);
    assert_eq!(
        dev.info().structured,
        structured,
        "{kind:?}: {:?}",
        dev.info()
    );
    if kind == Kind::NbdkitMin4k {
        assert_eq!(dev.info().min_block, 4096, "{:?}", dev.info());
        assert_eq!(dev.info().max_payload, 1 << 20, "{:?}", dev.info());
    }
    let quarter = size / 4;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let dev = dev.clone();
            let base = img.0.clone();
            std::thread::spawn(move || {
                let start = t * quarter;
                let mut model = vec![0u8; quarter as usize];
                std::fs::File::open(&base)
                    .unwrap()
                    .read_exact_at(&mut model, start)
                    .unwrap();
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
                for i in 0..300 {
                    let len = match rng.below(4) {
                        0 => 1 + rng.below(600),
                        1 => 4096 * (1 + rng.below(16)),
                        2 => 1 + rng.below(256 << 10),
                        _ => 1 + rng.below(3 << 20),
                    };
                    let off = rng.below(quarter - len);
                    let (o, l) = (off as usize, len as usize);
                    if rng.below(2) == 0 {
                        let mut data = vec![0u8; l];
                        rng.fill(&mut data);
                        dev.write_at(&data, start + off).unwrap();
                        model[o..o + l].copy_from_slice(&data);
                    } else {
                        let mut data = vec![0u8; l];
                        dev.read_at(&mut data, start + off).unwrap();
                        assert!(
                            data == model[o..o + l],
                            "thread {t} op {i}: read {len} at {} differs",
                            start + off
                        );
                    }
                }
                model
            })
        })
        .collect();
    let mut whole = Vec::with_capacity(size as usize);
    for t in threads {
        whole.extend_from_slice(&t.join().unwrap());
    }
    dev.flush().unwrap();
    let mut file = std::fs::read(&img.0).unwrap();
    assert!(
        file == whole,
        "{kind:?}: backing file differs from the model"
    );
    // Larger than one 32 MiB request, unaligned at both ends.
    let mut big = vec![0u8; (40 * MB) as usize + 777];
    Rng(42).fill(&mut big);
    let off = 5 * MB + 123;
    dev.write_at(&big, off).unwrap();
    let mut back = vec![0u8; big.len()];
    dev.read_at(&mut back, off).unwrap();
    assert!(back == big, "{kind:?}: 40 MiB read-back differs");
    dev.flush().unwrap();
    file[off as usize..off as usize + big.len()].copy_from_slice(&big);
    assert!(
        std::fs::read(&img.0).unwrap() == file,
        "{kind:?}: backing file after the big write"
    );
    // Bounds and discard.
    let mut one = [0u8; 2];
    let e = dev.read_at(&mut one, size - 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
    assert!(dev.write_at(&one, size).is_err());
    dev.discard(0, MB).unwrap();
    assert_eq!(dev.describe(), srv.spec());
}

#[test]
fn random_concurrent_io_qemu_nbd() {
    random_io(Kind::QemuNbd);
}

#[test]
fn random_concurrent_io_nbdkit() {
    random_io(Kind::Nbdkit);
}

#[test]
fn random_concurrent_io_nbdkit_min_block_4k() {
    random_io(Kind::NbdkitMin4k);
}

#[test]
fn export_name_fallback_without_fixed_newstyle() {
    random_io(Kind::NbdkitOldNewstyle);
}

#[test]
fn simple_replies_only() {
    random_io(Kind::NbdkitNoSr);
}

/// Two writers stream distinct 16 KiB blocks; qemu-nbd is SIGKILLed after
/// 600 acknowledgements and restarted a second later on the same port.
/// Every write must still succeed (in-flight ones are resent), and every
/// acknowledged block must be in the image.
#[test]
fn server_killed_mid_stream_loses_no_acknowledged_write() {
    const BLK: usize = 16 << 10;
    let img = image("kill", 64);
    let mut srv = Server::start(Kind::QemuNbd, &img.0, Listen::Tcp(free_port()));
    let dev = Arc::new(NbdDevice::connect(srv.config(Duration::from_secs(30))).unwrap());
    let nblocks = (64 << 20) / BLK;
    let block = |i: usize| {
        let mut b = vec![0u8; BLK];
        Rng(i as u64 + 1).fill(&mut b);
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        b
    };
    let at_kill = stream_across_restart(
        &*dev,
        nblocks,
        BLK,
        &block,
        600,
        &mut srv,
        |t| t.kill(),
        |t| t.spawn(),
    );
    dev.flush().unwrap();
    assert!(dev.is_connected());
    let (reconnects, resent) = dev.reconnections();
    assert!(reconnects >= 1, "never reconnected");
    assert!(resent >= 1, "nothing was in flight across the restart");
    eprintln!("killed after {at_kill} acks: {reconnects} reconnections, {resent} requests resent");
    drop(dev);
    assert_blocks_in_image(&img.0, nblocks, BLK, &block);
}

fn expect_eio(r: std::io::Result<()>, what: &str, started: Instant, timeout: Duration) {
    let e = r.expect_err(what);
    assert_eq!(errno_of(&e), Some(libc::EIO), "{what}: {e}");
    let took = started.elapsed();
    assert!(
        took >= timeout - Duration::from_millis(200) && took < timeout * 3,
        "{what}: EIO after {took:?} (timeout {timeout:?})"
    );
}

/// The server killed (refused connections) or frozen (SIGSTOP: connection
/// up, no replies) longer than the 3 s timeout: EIO for reads, writes and
/// flushes, in about the timeout; the device recovers once the server is
/// back, and dropping it never hangs.
#[test]
fn outage_longer_than_timeout_gives_eio_then_recovers() {
    let timeout = Duration::from_secs(3);
    let img = image("outage", 16);
    let mut srv = Server::start(Kind::QemuNbd, &img.0, Listen::Tcp(free_port()));
    let dev = NbdDevice::connect(srv.config(timeout)).unwrap();
    let data = vec![0xabu8; 8192];
    dev.write_at(&data, 0).unwrap();
    // Killed.
    srv.kill();
    let t = Instant::now();
    expect_eio(dev.write_at(&data, 4096), "write while down", t, timeout);
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    expect_eio(dev.read_at(&mut buf, 0), "read while down", t, timeout);
    let t = Instant::now();
    expect_eio(dev.flush(), "flush while down", t, timeout);
    // Back: the background reconnection picks it up.
    srv.spawn();
    dev.write_at(&data, 8192).unwrap();
    assert!(dev.reconnections().0 >= 1);
    dev.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|b| *b == 0xab));
    // Frozen: requests go out but nothing comes back.
    srv.signal(libc::SIGSTOP);
    let t = Instant::now();
    expect_eio(dev.read_at(&mut buf, 0), "read while frozen", t, timeout);
    let t = Instant::now();
    expect_eio(dev.write_at(&data, 0), "write while frozen", t, timeout);
    srv.signal(libc::SIGCONT);
    dev.write_at(&data, 0).unwrap();
    dev.flush().unwrap();
    // Gone for good: dropping the device returns promptly.
    srv.kill();
    let t = Instant::now();
    expect_eio(dev.write_at(&data, 0), "write after the end", t, timeout);
    let t = Instant::now();
    drop(dev);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "drop took {:?}",
        t.elapsed()
    );
}

/// Handshake failures and read-only exports come back as clear errors.
#[test]
fn handshake_errors_and_read_only_exports() {
    let img = image("ro", 8);
    // Nothing listening.
    let port = free_port();
    let e = spec::open(&format!("nbd://127.0.0.1:{port}/exp"), false)
        .err()
        .expect("connected to nothing");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    let srv = Server::start(Kind::QemuNbdReadOnly, &img.0, Listen::Tcp(free_port()));
    // Unknown export.
    let wrong = srv.spec().replace("/exp", "/nope");
    let e = spec::open(&wrong, true)
        .err()
        .expect("unknown export accepted");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("nope"), "{e}");
    // Read-only export: a read-write open is refused with EROFS (so that
    // gfs2-fuse falls back to a read-only mount); a read-only open works.
    let e = spec::open(&srv.spec(), false)
        .err()
        .expect("rw open of ro export");
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let dev = spec::open(&srv.spec(), true).unwrap();
    assert_eq!(dev.size(), 8 << 20);
    let mut b = [1u8; 512];
    dev.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [0u8; 512]);
    assert_eq!(
        dev.write_at(&b, 0).unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    // The reader thread blocks every signal: SIGTERM to a gfs2-fuse
    // daemon must reach its signal watcher, not kill the process here.
    let dev = spec::open(&srv.spec(), true).unwrap();
    let mut readers = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let t = t.unwrap().path();
        if std::fs::read_to_string(t.join("comm"))
            .unwrap_or_default()
            .trim()
            != "nbd-reader"
        {
            continue;
        }
        let status = std::fs::read_to_string(t.join("status")).unwrap_or_default();
        let Some(blk) = status.lines().find_map(|l| l.strip_prefix("SigBlk:")) else {
            continue;
        };
        let mask = u64::from_str_radix(blk.trim(), 16).unwrap();
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            assert!(
                mask & (1 << (sig - 1)) != 0,
                "signal {sig} not blocked: {blk}"
            );
        }
        readers += 1;
    }
    assert!(readers >= 1, "no nbd-reader thread found");
    drop(dev);
    // Open and close in a loop: the server hanging up after our DISC must
    // never be taken for a lost connection (reconnecting would hang drop).
    let rw = Server::start(Kind::QemuNbd, &img.0, Listen::Tcp(free_port()));
    for i in 0..40u8 {
        let t = Instant::now();
        let dev = spec::open(&rw.spec(), false).unwrap();
        dev.write_at(&[i; 512], 512 * u64::from(i)).unwrap();
        drop(dev);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "cycle {i}: {:?}",
            t.elapsed()
        );
    }
}

/// gfs2-fuse on a read-only export: the read-write open is refused with
/// EROFS and the binary falls back to a read-only mount, which serves the
/// filesystem our mkfs wrote through NBD.
#[test]
fn fuse_mount_of_read_only_export() {
    let img = image("rofs", 128);
    {
        let s = Server::start(Kind::QemuNbd, &img.0, Listen::Tcp(free_port()));
        our_mkfs(&s.spec(), 4096);
    }
    fsck_clean(&img.0);
    let s = Server::start(Kind::QemuNbdReadOnly, &img.0, Listen::Tcp(free_port()));
    let mnt = mountpoint("rofs");
    let out = Command::new(env!("CARGO_BIN_EXE_gfs2-fuse"))
        .arg("mount")
        .arg(s.spec())
        .arg(&mnt.0)
        .output()
        .unwrap();
    let guard = MountGuard(mnt.0.clone());
    assert!(
        out.status.success(),
        "gfs2-fuse mount {}: {}",
        s.spec(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&mnt.0));
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == mnt.0.to_str())
        .unwrap();
    assert!(line.starts_with(&s.spec()), "{line}");
    assert!(std::fs::metadata(&mnt.0).unwrap().is_dir());
    assert_eq!(std::fs::read_dir(&mnt.0).unwrap().count(), 0);
    drop(guard);
    assert!(!is_mounted(&mnt.0));
    drop(s);
    fsck_clean(&img.0);
}

/// Mount `spec` with a foreground daemon; returns it once the mount is up.
fn mount_foreground(spec: &str, mnt: &Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gfs2-fuse"))
        .arg("mount")
        .arg("-f")
        .arg(spec)
        .arg(mnt)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_mounted(mnt) {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("gfs2-fuse {spec} exited ({st}): {err}");
        }
        assert!(Instant::now() < deadline, "{spec}: never mounted");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Files written through a FUSE mount over NBD (Unix socket, nbdkit) are
/// on the export: fsck.gfs2 finds the image clean after unmount, and a new
/// mount (TCP, qemu-nbd) reads the same bytes.
#[test]
fn fuse_writes_over_nbd_survive_remount_and_fsck() {
    let img = image("fw", 256);
    let sock = tmp("fw").with_extension("sock");
    let mut payload = vec![0u8; (5 << 20) + 1234];
    Rng(7).fill(&mut payload);
    {
        let s = Server::start(Kind::Nbdkit, &img.0, Listen::Unix(sock.clone()));
        our_mkfs(&s.spec(), 4096);
        let mnt = mountpoint("fw1");
        let child = mount_foreground(&s.spec(), &mnt.0);
        let guard = MountGuard(mnt.0.clone());
        std::fs::create_dir(mnt.0.join("d")).unwrap();
        std::fs::write(mnt.0.join("d/small"), b"over nbd\n").unwrap();
        std::fs::write(mnt.0.join("d/big"), &payload).unwrap();
        for i in 0..50 {
            std::fs::write(mnt.0.join(format!("d/f{i}")), format!("{i}\n")).unwrap();
        }
        unmount_and_wait(&mnt.0, child);
        std::mem::forget(guard);
    }
    let _ = std::fs::remove_file(&sock);
    fsck_clean(&img.0);
    let s = Server::start(Kind::QemuNbd, &img.0, Listen::Tcp(free_port()));
    let mnt = mountpoint("fw2");
    let child = mount_foreground(&s.spec(), &mnt.0);
    let guard = MountGuard(mnt.0.clone());
    assert_eq!(std::fs::read(mnt.0.join("d/small")).unwrap(), b"over nbd\n");
    assert!(std::fs::read(mnt.0.join("d/big")).unwrap() == payload);
    assert_eq!(std::fs::read(mnt.0.join("d/f42")).unwrap(), b"42\n");
    assert_eq!(std::fs::read_dir(mnt.0.join("d")).unwrap().count(), 52);
    unmount_and_wait(&mnt.0, child);
    std::mem::forget(guard);
    drop(s);
    fsck_clean(&img.0);
}

/// The server killed and restarted under a FUSE mount that is writing and
/// fsyncing files: the application sees no error, and after unmount the
/// image is fsck-clean with every file intact.
#[test]
fn fuse_mount_rides_out_a_server_restart() {
    use std::io::Write;
    let img = image("fr", 256);
    let mut srv = Server::start(Kind::QemuNbd, &img.0, Listen::Tcp(free_port()));
    our_mkfs(&srv.spec(), 4096);
    let mnt = mountpoint("fr");
    let child = mount_foreground(&srv.spec(), &mnt.0);
    let guard = MountGuard(mnt.0.clone());
    let content = |i: u64| {
        let mut b = vec![0u8; 1 << 20];
        Rng(1000 + i).fill(&mut b);
        b
    };
    for i in 0..24u64 {
        if i == 8 {
            srv.kill();
            let m = mnt.0.clone();
            // Writes go on (and block) while the server is away.
            let h = std::thread::spawn(move || {
                let mut f = std::fs::File::create(m.join("during")).unwrap();
                f.write_all(b"written while the server was down\n").unwrap();
                f.sync_all().unwrap();
            });
            std::thread::sleep(Duration::from_secs(1));
            srv.spawn();
            h.join().unwrap();
        }
        let mut f = std::fs::File::create(mnt.0.join(format!("f{i}"))).unwrap();
        f.write_all(&content(i)).unwrap();
        f.sync_all().unwrap();
    }
    unmount_and_wait(&mnt.0, child);
    std::mem::forget(guard);
    drop(srv);
    fsck_clean(&img.0);
    let srv = Server::start(Kind::Nbdkit, &img.0, Listen::Tcp(free_port()));
    let child = mount_foreground(&srv.spec(), &mnt.0);
    let guard = MountGuard(mnt.0.clone());
    for i in 0..24u64 {
        assert!(
            std::fs::read(mnt.0.join(format!("f{i}"))).unwrap() == content(i),
            "f{i} differs"
        );
    }
    assert_eq!(
        std::fs::read(mnt.0.join("during")).unwrap(),
        b"written while the server was down\n"
    );
    unmount_and_wait(&mnt.0, child);
    std::mem::forget(guard);
}

/// Errors the server reports come back as io::Error with the server's
/// errno, at once (no timeout), for reads and writes; the connection stays
/// usable. With and without structured replies.
fn server_errors(kind: Kind) {
    let img = image(&format!("inj-{kind:?}"), 8);
    let inject = img.0.with_extension("inject");
    let _ = std::fs::remove_file(&inject);
    let srv = Server::start(kind, &img.0, Listen::Tcp(free_port()));
    let dev = NbdDevice::connect(srv.config(Duration::from_secs(30))).unwrap();
    assert_eq!(dev.info().structured, kind == Kind::NbdkitInject);
    let data = vec![7u8; 64 << 10];
    dev.write_at(&data, 4096).unwrap();
    std::fs::write(&inject, b"").unwrap();
    let t = Instant::now();
    let e = dev.write_at(&data, 0).unwrap_err();
    assert_eq!(errno_of(&e), Some(libc::ENOSPC), "{e}");
    assert!(e.to_string().contains("WRITE"), "{e}");
    let mut buf = vec![0u8; 64 << 10];
    let e = dev.read_at(&mut buf, 4096).unwrap_err();
    assert_eq!(errno_of(&e), Some(libc::ENOSPC), "{e}");
    assert!(e.to_string().contains("READ"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    std::fs::remove_file(&inject).unwrap();
    dev.read_at(&mut buf, 4096).unwrap();
    assert!(buf == data);
    assert_eq!(
        dev.reconnections().0,
        0,
        "errors must not drop the connection"
    );
}

#[test]
fn server_errors_structured() {
    server_errors(Kind::NbdkitInject);
}

#[test]
fn server_errors_simple() {
    server_errors(Kind::NbdkitInjectNoSr);
}

/// A FUSE mount over NBD whose server freezes longer than the timeout
/// (`?timeout=2` in the device URI): the application's fsync fails with
/// EIO in about the timeout instead of hanging; once the server thaws the
/// mount works again, and the image is fsck-clean after unmount.
#[test]
fn fuse_mount_gives_eio_on_a_frozen_server_then_recovers() {
    use std::io::Write;
    let img = image("frz", 256);
    let srv = Server::start(Kind::QemuNbd, &img.0, Listen::Tcp(free_port()));
    our_mkfs(&srv.spec(), 4096);
    let mnt = mountpoint("frz");
    let spec = format!("{}?timeout=2", srv.spec());
    let mut child = mount_foreground(&spec, &mnt.0);
    let guard = MountGuard(mnt.0.clone());
    std::fs::write(mnt.0.join("before"), b"before\n").unwrap();
    srv.signal(libc::SIGSTOP);
    let t = Instant::now();
    let r = (|| {
        let mut f = std::fs::File::create(mnt.0.join("frozen"))?;
        f.write_all(&[7u8; 100_000])?;
        f.sync_all()
    })();
    let took = t.elapsed();
    srv.signal(libc::SIGCONT);
    let e = r.expect_err("fsync succeeded on a frozen server");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "EIO after {took:?}"
    );
    let mut f = std::fs::File::create(mnt.0.join("after")).unwrap();
    f.write_all(b"after\n").unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(std::fs::read(mnt.0.join("before")).unwrap(), b"before\n");
    let st = Command::new(tool("fusermount3"))
        .arg("-u")
        .arg(&mnt.0)
        .status()
        .unwrap();
    assert!(st.success());
    let _ = child.wait();
    std::mem::forget(guard);
    drop(srv);
    fsck_clean(&img.0);
}
