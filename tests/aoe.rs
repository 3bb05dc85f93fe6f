//! The AoE initiator (`gfs2fuse::dev::aoe`) against real vblade targets.
//!
//! Each test makes its own network namespace and veth pair: vblade serves
//! an image file on the namespace's end, our initiator talks to it from
//! the host's end (needs root, as AF_PACKET sockets and namespaces do).
//! Covered: our mkfs through AoE (fsck.gfs2 clean), a FUSE mount over AoE
//! with a workload checked after unmount through fsck.gfs2 and a mount of
//! the plain image; random concurrent I/O against a model, including
//! read-modify-write of shared sectors; vblade killed and restarted mid
//! workload (no acknowledged write lost); a target gone or frozen longer
//! than the timeout (EIO in about the timeout, recovery after); ATA errors
//! from a read-only target and from I/O past a shrunken target's end; the
//! message when CAP_NET_RAW is missing.

mod common;

use common::*;
use gfs2fuse::dev::aoe::{AoeConfig, AoeDevice};
use gfs2fuse::dev::{spec, BlockDevice};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// vblade, installed with apt-get when missing (as scripts/test.sh does).
fn vblade() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let p = Path::new("/usr/sbin/vblade");
        if !p.exists() {
            let st = Command::new("apt-get")
                .args(["install", "-y", "-qq", "vblade"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status();
            assert!(
                st.is_ok_and(|s| s.success()) && p.exists(),
                "vblade is missing and `apt-get install -y vblade` failed: install the Debian \
                 package vblade (scripts/test.sh does)"
            );
        }
        p.to_path_buf()
    })
    .clone()
}

fn ip() -> PathBuf {
    let p = tool("ip");
    assert!(
        rustix_is_root(),
        "the AoE tests need root (network namespaces, raw packet sockets)"
    );
    p
}

fn rustix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mkfs_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_gfs2-fuse")).with_file_name("mkfs-gfs2");
    assert!(
        p.exists(),
        "{} missing: build the workspace (cargo build --release --workspace)",
        p.display()
    );
    p
}

fn our_mkfs(spec: &str) {
    let out = Command::new(mkfs_bin())
        .args(["-O", "-p", "lock_nolock", "-j", "1", "-b", "4096"])
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

/// A network namespace with one end of a veth pair; the other end stays
/// in the host's namespace. Both are removed on drop.
struct Net {
    ns: String,
    host_if: String,
    target_if: String,
}

impl Net {
    fn new(mtu: u32) -> Net {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let net = Net {
            ns: format!("gfs2aoe-{pid}-{n}"),
            host_if: format!("aoh{pid:x}x{n:x}"),
            target_if: format!("aot{pid:x}x{n:x}"),
        };
        let ip = ip();
        run(Command::new(&ip).args(["netns", "add", &net.ns]));
        run(Command::new(&ip).args([
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &net.target_if,
            "netns",
            &net.ns,
        ]));
        let mtu = mtu.to_string();
        run(Command::new(&ip).args(["link", "set", &net.host_if, "mtu", &mtu, "up"]));
        run(Command::new(&ip).args([
            "-n",
            &net.ns,
            "link",
            "set",
            &net.target_if,
            "mtu",
            &mtu,
            "up",
        ]));
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let ip = tool("ip");
        let _ = Command::new(&ip)
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new(&ip)
            .args(["netns", "del", &self.ns])
            .stderr(Stdio::null())
            .status();
    }
}

/// A vblade process in the namespace, killed on drop.
struct Target {
    ns: String,
    iface: String,
    host_if: String,
    shelf: u16,
    slot: u8,
    img: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Target {
    fn start(net: &Net, shelf: u16, slot: u8, img: &Path, args: &[&str]) -> Target {
        let mut t = Target {
            ns: net.ns.clone(),
            iface: net.target_if.clone(),
            host_if: net.host_if.clone(),
            shelf,
            slot,
            img: img.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
            log: std::env::temp_dir().join(format!("{}.vblade.log", net.ns)),
        };
        t.spawn();
        t
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).unwrap();
        // nsenter, not `ip netns exec`: that one also makes a new mount
        // namespace, whose copy of a FUSE mount made earlier would keep
        // that filesystem alive after our unmount.
        let child = Command::new(tool("nsenter"))
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg(vblade())
            .args(&self.args)
            .arg(self.shelf.to_string())
            .arg(self.slot.to_string())
            .arg(&self.iface)
            .arg(&self.img)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting vblade");
        self.child = Some(child);
        // vblade prints "pid N: eS.L, ..." once its socket is bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(&format!("e{}.{}", self.shelf, self.slot)) {
                return;
            }
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("vblade exited ({st}): {text}");
            }
            assert!(Instant::now() < deadline, "vblade not ready: {text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn spec(&self) -> String {
        format!("aoe:e{}.{}@{}", self.shelf, self.slot, self.host_if)
    }

    fn config(&self, timeout: Duration) -> AoeConfig {
        let spec = self.spec();
        match spec::parse(&spec).unwrap() {
            spec::Spec::Aoe(mut c) => {
                c.timeout = timeout;
                c
            }
            other => panic!("{spec}: {other:?}"),
        }
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: signalling a child we started (vblade itself:
            // nsenter execs it).
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A sparse image of `mb` MiB, removed on drop.
fn image(tag: &str, mb: u64) -> TempPath {
    let p = std::env::temp_dir().join(format!("gfs2aoe-{tag}-{}.img", std::process::id()));
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(mb << 20).unwrap();
    TempPath(p)
}

fn fill(rng: &mut Rng, b: &mut [u8]) {
    for c in b.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    fill(&mut Rng(seed | 1), &mut b);
    b
}

/// Our mkfs through AoE, fsck.gfs2 clean; a FUSE mount over AoE takes a
/// workload (checked through the mount); after unmount the image is
/// fsck-clean and a mount of the plain image file reads the same data.
#[test]
fn mkfs_and_fuse_mount_over_aoe() {
    let img = image("fuse", 256);
    let net = Net::new(9000);
    let tgt = Target::start(&net, 3, 1, &img.0, &[]);
    our_mkfs(&tgt.spec());
    fsck_clean(&img.0, "after our mkfs over AoE");
    let big = payload(7, (6 << 20) + 1234);
    let files: Vec<(String, Vec<u8>)> = (0..60)
        .map(|i| {
            (
                format!("d/sub/f{i}"),
                payload(100 + i, 1 + (i as usize * 997) % 20000),
            )
        })
        .collect();
    with_mount(Path::new(&tgt.spec()), "", "aoe-w", |m| {
        std::fs::create_dir_all(m.join("d/sub")).unwrap();
        std::fs::write(m.join("d/big"), &big).unwrap();
        for (n, d) in &files {
            std::fs::write(m.join(n), d).unwrap();
        }
        std::os::unix::fs::symlink("big", m.join("d/link")).unwrap();
        std::fs::remove_file(m.join("d/sub/f3")).unwrap();
        // Overwrite the middle of the big file, unaligned.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.join("d/big"))
            .unwrap();
        f.write_all_at(b"patched in place", 3_000_001).unwrap();
        f.sync_all().unwrap();
        assert_eq!(std::fs::read(m.join("d/sub/f10")).unwrap(), files[10].1);
    });
    fsck_clean(&img.0, "after the FUSE workload over AoE");
    let mut want = big.clone();
    want[3_000_001..3_000_001 + 16].copy_from_slice(b"patched in place");
    // Over AoE again, then from the plain image: the same bytes.
    for dev in [tgt.spec(), img.0.display().to_string()] {
        with_mount(Path::new(&dev), "", "aoe-r", |m| {
            assert!(
                std::fs::read(m.join("d/big")).unwrap() == want,
                "{dev}: d/big"
            );
            for (i, (n, d)) in files.iter().enumerate() {
                match std::fs::read(m.join(n)) {
                    Ok(got) => assert!(i != 3 && got == *d, "{dev}: {n}"),
                    Err(e) => assert!(i == 3 && e.kind() == ErrorKind::NotFound, "{dev}: {n}: {e}"),
                }
            }
            assert_eq!(
                std::fs::read_link(m.join("d/link")).unwrap(),
                Path::new("big")
            );
        });
    }
    drop(tgt);
    fsck_clean(&img.0, "at the end");
}

/// Four threads do random unaligned reads and writes in their own quarter
/// and check every read against their model, while four more write single
/// interleaved bytes into the same sectors (read-modify-write must not lose
/// any); finally the backing file equals the models. MTU 1500: two sectors
/// per frame, as vblade offers there.
#[test]
fn random_concurrent_io_matches_model() {
    const MB: u64 = 1 << 20;
    let size = 32 * MB;
    let img = image("rio", 32);
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img.0)
            .unwrap();
        let mut rng = Rng(0x1234_5678);
        let mut b = vec![0u8; MB as usize];
        for m in 0..size / MB {
            fill(&mut rng, &mut b);
            f.write_all_at(&b, m * MB).unwrap();
        }
    }
    let net = Net::new(1500);
    let tgt = Target::start(&net, 4, 2, &img.0, &[]);
    let dev = Arc::new(AoeDevice::open(tgt.config(Duration::from_secs(30))).unwrap());
    let info = dev.info().clone();
    assert_eq!(dev.size(), size);
    assert_eq!(info.sectors_per_frame, 2, "{info:?}");
    assert_eq!(info.bufcnt, 16, "{info:?}");
    assert!(info.lba48, "{info:?}");
    // The last 64 KiB are shared by the byte writers.
    let shared = 64 << 10;
    let quarter = (size - shared) / 4;
    let mut threads: Vec<std::thread::JoinHandle<Vec<u8>>> = (0..4u64)
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
                for i in 0..250 {
                    let len = match rng.below(4) {
                        0 => 1 + rng.below(600),
                        1 => 4096 * (1 + rng.below(16)),
                        2 => 1 + rng.below(64 << 10),
                        _ => 1 + rng.below(512 << 10),
                    };
                    let off = rng.below(quarter - len);
                    let (o, l) = (off as usize, len as usize);
                    let mut data = vec![0u8; l];
                    if rng.below(2) == 0 {
                        fill(&mut rng, &mut data);
                        dev.write_at(&data, start + off).unwrap();
                        model[o..o + l].copy_from_slice(&data);
                    } else {
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
    for t in 0..4u64 {
        let dev = dev.clone();
        threads.push(std::thread::spawn(move || {
            let base = size - shared;
            for k in (t..shared).step_by(4).take(3000) {
                dev.write_at(&[(k as u8) ^ 0x5a], base + k).unwrap();
            }
            Vec::new()
        }));
    }
    let mut whole = Vec::with_capacity(size as usize);
    for t in threads {
        whole.extend_from_slice(&t.join().unwrap());
    }
    dev.flush().unwrap();
    let file = std::fs::read(&img.0).unwrap();
    assert!(
        file[..whole.len()] == whole[..],
        "backing file differs from the models"
    );
    let base = (size - shared) as usize;
    for k in 0..12000usize {
        assert_eq!(file[base + k], (k as u8) ^ 0x5a, "shared byte {k} lost");
    }
    // A large unaligned write and read, past the window many times over.
    let big = payload(42, (5 << 20) + 777);
    let off = MB + 123;
    dev.write_at(&big, off).unwrap();
    let mut back = vec![0u8; big.len()];
    dev.read_at(&mut back, off).unwrap();
    assert!(back == big, "5 MiB read-back differs");
    let file = std::fs::read(&img.0).unwrap();
    assert!(file[off as usize..off as usize + big.len()] == big[..]);
    // Bounds are checked before anything is sent.
    let mut two = [0u8; 2];
    assert_eq!(
        dev.read_at(&mut two, size - 1).unwrap_err().kind(),
        ErrorKind::UnexpectedEof
    );
    assert!(dev.write_at(&two, size).is_err());
    dev.read_at(&mut two, size - 2).unwrap();
    assert_eq!(dev.describe(), tgt.spec());
    assert_eq!(dev.stats().timeouts, 0);
}

/// Two writers stream distinct 16 KiB blocks; vblade is killed after 400
/// acknowledgements and restarted 1 s later. Every write still succeeds
/// (frames are resent), and every acknowledged block is in the image.
#[test]
fn target_restart_mid_workload_loses_no_acknowledged_write() {
    const BLK: usize = 16 << 10;
    let img = image("restart", 32);
    let net = Net::new(9000);
    let mut tgt = Target::start(&net, 5, 3, &img.0, &[]);
    let dev = Arc::new(AoeDevice::open(tgt.config(Duration::from_secs(30))).unwrap());
    assert_eq!(dev.info().sectors_per_frame, 17, "{:?}", dev.info());
    let nblocks = (32 << 20) / BLK;
    let acked = Arc::new(AtomicUsize::new(0));
    let block = |i: usize| {
        let mut b = payload(i as u64 + 1, BLK);
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        b
    };
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let dev = dev.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in (t..nblocks).step_by(2) {
                    if let Err(e) = dev.write_at(&block(i), (i * BLK) as u64) {
                        panic!("write of block {i} failed: {e}");
                    }
                    mine.push(i);
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                mine
            })
        })
        .collect();
    while acked.load(Ordering::SeqCst) < 400 {
        std::thread::sleep(Duration::from_millis(1));
    }
    tgt.kill();
    let at_kill = acked.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(1));
    tgt.spawn();
    let mut all = Vec::new();
    for w in writers {
        all.extend(w.join().unwrap());
    }
    assert!(at_kill < nblocks, "the stream ended before the kill");
    assert_eq!(all.len(), nblocks);
    dev.flush().unwrap();
    let st = dev.stats();
    assert!(st.retransmits >= 1, "nothing was resent: {st:?}");
    assert_eq!(st.timeouts, 0);
    eprintln!("killed after {at_kill} acks: {st:?}");
    drop(dev);
    let file = std::fs::read(&img.0).unwrap();
    for i in all {
        assert!(
            file[i * BLK..(i + 1) * BLK] == block(i)[..],
            "acknowledged block {i} is not in the image"
        );
    }
}

fn expect_eio(r: std::io::Result<()>, what: &str, started: Instant, timeout: Duration) {
    let e = r.expect_err(what);
    assert!(
        e.to_string().contains("did not answer"),
        "{what}: unexpected error {e}"
    );
    let took = started.elapsed();
    assert!(
        took >= timeout - Duration::from_millis(100) && took < timeout + Duration::from_secs(2),
        "{what}: EIO after {took:?} (timeout {timeout:?})"
    );
}

/// vblade killed, then frozen (SIGSTOP), each for longer than the 2 s
/// timeout given in the device spec: reads, writes and flushes fail in
/// about the timeout; the device works again once the target is back;
/// dropping it never hangs.
#[test]
fn outage_longer_than_timeout_gives_eio_then_recovers() {
    let timeout = Duration::from_secs(2);
    let img = image("outage", 8);
    let net = Net::new(9000);
    let mut tgt = Target::start(&net, 6, 4, &img.0, &[]);
    let dev = spec::open(&format!("{}?timeout=2", tgt.spec()), false).unwrap();
    let data = vec![0xabu8; 8192];
    dev.write_at(&data, 0).unwrap();
    tgt.kill();
    let t = Instant::now();
    expect_eio(dev.write_at(&data, 4096), "write while down", t, timeout);
    let mut buf = vec![0u8; 4096];
    let t = Instant::now();
    expect_eio(dev.read_at(&mut buf, 0), "read while down", t, timeout);
    let t = Instant::now();
    expect_eio(dev.flush(), "flush while down", t, timeout);
    tgt.spawn();
    dev.write_at(&data, 8192).unwrap();
    dev.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|b| *b == 0xab));
    tgt.signal(libc::SIGSTOP);
    let t = Instant::now();
    expect_eio(dev.read_at(&mut buf, 0), "read while frozen", t, timeout);
    tgt.signal(libc::SIGCONT);
    dev.write_at(&data, 0).unwrap();
    dev.flush().unwrap();
    let t = Instant::now();
    drop(dev);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "drop took {:?}",
        t.elapsed()
    );
    let f = std::fs::read(&img.0).unwrap();
    assert!(f[..16384].iter().all(|b| *b == 0xab));
}

/// A FUSE mount over AoE whose target stops for longer than the timeout:
/// fsync fails with EIO in about the timeout, the daemon stays up, and
/// after the target is back the mount works again; fsck.gfs2 is clean
/// after unmount.
#[test]
fn fuse_mount_gives_eio_while_target_is_gone_then_recovers() {
    use std::io::Write;
    let img = image("feio", 128);
    let net = Net::new(9000);
    let mut tgt = Target::start(&net, 7, 5, &img.0, &[]);
    our_mkfs(&tgt.spec());
    let spec = format!("{}?timeout=2", tgt.spec());
    with_mount(Path::new(&spec), "", "aoe-eio", |m| {
        std::fs::write(m.join("before"), b"before\n").unwrap();
        tgt.kill();
        let t = Instant::now();
        let r = (|| {
            let mut f = std::fs::File::create(m.join("gone"))?;
            f.write_all(&[7u8; 100_000])?;
            f.sync_all()
        })();
        let took = t.elapsed();
        tgt.spawn();
        let e = r.expect_err("fsync succeeded without a target");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(12),
            "EIO after {took:?}"
        );
        let mut f = std::fs::File::create(m.join("after")).unwrap();
        f.write_all(b"after\n").unwrap();
        f.sync_all().unwrap();
        assert_eq!(std::fs::read(m.join("before")).unwrap(), b"before\n");
    });
    drop(tgt);
    fsck_clean(&img.0, "after the outage");
}

/// Errors the target reports are EIO at once, with the ATA status in the
/// message: writes to a read-only vblade, and reads past the end of a
/// target restarted smaller than the device was opened with. Discovery of
/// a target that does not exist fails after the timeout; an unknown
/// interface at once.
#[test]
fn target_errors_give_eio() {
    let img = image("ataerr", 8);
    std::fs::write(&img.0, vec![0x11u8; 8 << 20]).unwrap();
    let net = Net::new(9000);
    let mut tgt = Target::start(&net, 8, 6, &img.0, &["-r"]);
    let dev = AoeDevice::open(tgt.config(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 8192];
    dev.read_at(&mut buf, 4096).unwrap();
    assert!(buf.iter().all(|b| *b == 0x11));
    let t = Instant::now();
    let e = dev.write_at(&[0u8; 4096], 0).unwrap_err();
    assert!(e.to_string().contains("ATA error"), "{e}");
    assert_eq!(e.kind(), ErrorKind::Other, "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Unaligned: the read half of the read-modify-write works, the write fails.
    assert!(dev.write_at(b"x", 1000).is_err());
    dev.flush().unwrap();
    // The same target, restarted to export its first 4 MiB only.
    tgt.kill();
    tgt.args = vec!["-r".into(), "-l".into(), "8192".into()];
    tgt.spawn();
    dev.read_at(&mut buf, 0).unwrap();
    let t = Instant::now();
    let e = dev.read_at(&mut buf, 6 << 20).unwrap_err();
    assert!(e.to_string().contains("ATA error"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The new size is seen by a new open.
    let small = AoeDevice::open(tgt.config(Duration::from_secs(10))).unwrap();
    assert_eq!(small.size(), 4 << 20);
    assert_eq!(dev.stats().timeouts, 0);
    // No such target: discovery gives up after the timeout.
    let t = Instant::now();
    let spec_none = format!("aoe:e99.9@{}?timeout=1", net.host_if);
    let e = spec::open(&spec_none, false).err().expect("found a ghost");
    assert_eq!(e.kind(), ErrorKind::TimedOut, "{e}");
    assert!(e.to_string().contains("no AoE target e99.9"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let e = spec::open("aoe:e1.1@nonexistent0", false).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

/// Without CAP_NET_RAW the raw socket cannot be opened: mkfs-gfs2 and
/// gfs2-fuse say so, whether run as an unprivileged user or as root
/// without capabilities.
#[test]
fn missing_cap_net_raw_is_reported() {
    let img = image("cap", 8);
    let net = Net::new(1500);
    let tgt = Target::start(&net, 9, 7, &img.0, &[]);
    let setpriv = tool("setpriv");
    let mnt = mountpoint("aoe-cap");
    let cases: [(&[&str], Vec<String>); 3] = [
        (
            &["--reuid=65534", "--regid=65534", "--clear-groups"],
            vec![
                mkfs_bin().display().to_string(),
                "-O".into(),
                "-p".into(),
                "lock_nolock".into(),
                tgt.spec(),
            ],
        ),
        (
            &["--inh-caps=-all", "--bounding-set=-all"],
            vec![
                mkfs_bin().display().to_string(),
                "-O".into(),
                "-p".into(),
                "lock_nolock".into(),
                tgt.spec(),
            ],
        ),
        (
            &["--inh-caps=-all", "--bounding-set=-all"],
            vec![
                gfs2_fuse().to_string(),
                "mount".into(),
                tgt.spec(),
                mnt.0.display().to_string(),
            ],
        ),
    ];
    for (privs, cmd) in cases {
        let out = Command::new(&setpriv)
            .args(privs)
            .args(&cmd)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{privs:?} {cmd:?} succeeded");
        assert!(
            err.contains("CAP_NET_RAW") && err.contains("root"),
            "{privs:?} {cmd:?}: {err}"
        );
    }
    assert!(!is_mounted(&mnt.0));
    // With the capability it works.
    let dev = spec::open(&tgt.spec(), false).unwrap();
    assert_eq!(dev.size(), 8 << 20);
}
