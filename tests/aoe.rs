//! The AoE initiator (`gfs2fuse::dev::aoe`) against real vblade targets.
//!
//! Each test makes its own network namespace and veth pair: vblade serves
//! an image file on the namespace's end, our initiator talks to it from
//! the host's end (needs root, as AF_PACKET sockets and namespaces do).
//! Covered: our mkfs through AoE (fsck.gfs2 clean, `gfs2-fuse scan` finds
//! it), a FUSE mount over AoE with a workload checked after unmount through
//! fsck.gfs2 and a mount of the plain image; random concurrent I/O against
//! a model, including read-modify-write of shared sectors, at MTU 1500 and
//! over a link dropping 5% of the frames each way (nftables); two
//! initiators on one target; vblade killed and restarted mid workload (no
//! acknowledged write lost; also under a FUSE mount); a target gone or frozen longer than the
//! timeout (EIO in about the timeout, recovery after), also under a FUSE
//! mount; ATA errors from a read-only target and from I/O past a shrunken
//! target's end; the message when CAP_NET_RAW is missing. The ignored
//! `bench_throughput` is scripts/bench-aoe.sh's.

mod common;

use common::*;
use gfs2fuse::dev::aoe::{AoeConfig, AoeDevice};
use gfs2fuse::dev::{spec, BlockDevice};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

impl Net {
    /// Drop `percent` % of the AoE frames in each direction (nftables
    /// netdev ingress hooks on both ends).
    fn lose(&self, percent: u32) {
        for (netns, dev) in [(None, &self.host_if), (Some(&self.ns), &self.target_if)] {
            let rules = format!(
                "table netdev aoeloss_{dev} {{\n chain in {{\n  type filter hook ingress device \"{dev}\" priority 0;\n  ether type 0x88a2 numgen random mod 100 < {percent} drop\n }}\n}}\n"
            );
            let mut cmd = Command::new(tool("nsenter"));
            if let Some(ns) = netns {
                cmd.arg(format!("--net=/var/run/netns/{ns}"));
            } else {
                cmd.arg("--net=/proc/self/ns/net");
            }
            let mut child = cmd
                .arg(package_tool("nft", "nftables"))
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), rules.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "nft: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let ip = tool("ip");
        if Path::new("/usr/sbin/nft").exists() {
            let _ = Command::new("/usr/sbin/nft")
                .args([
                    "delete",
                    "table",
                    "netdev",
                    &format!("aoeloss_{}", self.host_if),
                ])
                .stderr(Stdio::null())
                .status();
        }
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
            .arg(package_tool("vblade", "vblade"))
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
    // `gfs2-fuse scan` finds it through the initiator.
    let out = Command::new(gfs2_fuse())
        .args(["scan", "--no-local", &tgt.spec()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&tgt.spec()) && text.contains("lock_nolock"),
        "gfs2-fuse scan: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    our_fsck_clean(&tgt.spec(), &[], "over AoE after the FUSE workload");
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
fn random_io(mtu: u32, loss: u32, shelf: u16, ops: usize) {
    const MB: u64 = 1 << 20;
    let size = 32 * MB;
    let img = image(&format!("rio{shelf}"), 32);
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
    let net = Net::new(mtu);
    let tgt = Target::start(&net, shelf, 2, &img.0, &[]);
    let dev = Arc::new(AoeDevice::open(tgt.config(Duration::from_secs(30))).unwrap());
    if loss > 0 {
        net.lose(loss);
    }
    let info = dev.info().clone();
    assert_eq!(dev.size(), size);
    let spf = (mtu as usize - 36) / 512;
    assert_eq!(usize::from(info.sectors_per_frame), spf, "{info:?}");
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
                for i in 0..ops {
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
    let st = dev.stats();
    assert_eq!(st.timeouts, 0);
    if loss > 0 {
        assert!(
            st.retransmits > 0,
            "{loss}% loss and nothing resent: {st:?}"
        );
    }
    eprintln!("MTU {mtu}, {loss}% loss: {st:?}");
}

#[test]
fn random_concurrent_io_matches_model() {
    random_io(1500, 0, 4, 250);
}

/// The same with 5% of the frames dropped each way (MTU 9000, 17 sectors
/// per frame): frames are resent under new tags, nothing times out, and
/// every byte matches.
#[test]
fn random_concurrent_io_over_a_lossy_link() {
    random_io(9000, 5, 10, 120);
}

/// Two initiators in one process on the same target (as two mounts of a
/// shared filesystem would be), each with several threads: every socket
/// sees only replies to its own tags, so all data lands where it belongs;
/// and a 24 MiB write does not hold up small reads beside it on the same
/// initiator (the window is shared fairly).
#[test]
fn two_initiators_share_a_target() {
    const MB: usize = 1 << 20;
    let img = image("two", 64);
    let net = Net::new(9000);
    let tgt = Target::start(&net, 12, 3, &img.0, &[]);
    let a = Arc::new(AoeDevice::open(tgt.config(Duration::from_secs(30))).unwrap());
    let b = Arc::new(AoeDevice::open(tgt.config(Duration::from_secs(30))).unwrap());
    let hs: Vec<_> = (0..6usize)
        .map(|t| {
            let dev = if t & 1 == 0 { a.clone() } else { b.clone() };
            std::thread::spawn(move || {
                let base = (t * 4 * MB) as u64;
                for i in 0..64u64 {
                    let d = payload(t as u64 * 1000 + i, 64 << 10);
                    dev.write_at(&d, base + i * (64 << 10)).unwrap();
                }
                let mut back = vec![0u8; 4 * MB];
                dev.read_at(&mut back, base).unwrap();
                for i in 0..64usize {
                    let want = payload(t as u64 * 1000 + i as u64, 64 << 10);
                    assert!(
                        back[i * (64 << 10)..(i + 1) * (64 << 10)] == want[..],
                        "thread {t}: block {i}"
                    );
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let file = std::fs::read(&img.0).unwrap();
    for t in 0..6usize {
        for i in 0..64usize {
            let at = t * 4 * MB + i * (64 << 10);
            let want = payload(t as u64 * 1000 + i as u64, 64 << 10);
            assert!(
                file[at..at + (64 << 10)] == want[..],
                "image: thread {t} block {i}"
            );
        }
    }
    // Small reads beside one big write.
    let big = payload(5, 24 * MB);
    let w = {
        let a = a.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            a.write_at(&big, 32 * MB as u64).unwrap();
            t.elapsed()
        })
    };
    std::thread::sleep(Duration::from_millis(5));
    let t = Instant::now();
    let mut small = [0u8; 4096];
    for i in 0..20u64 {
        a.read_at(&mut small, i * 4096).unwrap();
    }
    let reads = t.elapsed();
    let write = w.join().unwrap();
    eprintln!("24 MiB write {write:?}, 20 small reads beside it {reads:?}");
    assert!(
        reads < write || reads < Duration::from_millis(100),
        "small reads waited for the big write: {reads:?} vs {write:?}"
    );
    assert_eq!(a.stats().timeouts + b.stats().timeouts, 0);
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
    let block = |i: usize| {
        let mut b = payload(i as u64 + 1, BLK);
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        b
    };
    let at_kill = stream_across_restart(
        &*dev,
        nblocks,
        BLK,
        &block,
        400,
        &mut tgt,
        |t| t.kill(),
        |t| t.spawn(),
    );
    dev.flush().unwrap();
    let st = dev.stats();
    assert!(st.retransmits >= 1, "nothing was resent: {st:?}");
    assert_eq!(st.timeouts, 0);
    eprintln!("killed after {at_kill} acks: {st:?}");
    drop(dev);
    assert_blocks_in_image(&img.0, nblocks, BLK, &block);
}

/// vblade killed and restarted 1 s later under a FUSE mount that is
/// writing and fsyncing files: the application sees no error, and after
/// unmount the image is fsck-clean with every file intact.
#[test]
fn fuse_mount_rides_out_a_target_restart() {
    use std::io::Write;
    let img = image("frestart", 128);
    let net = Net::new(9000);
    let mut tgt = Target::start(&net, 13, 2, &img.0, &[]);
    our_mkfs(&tgt.spec());
    let content = |i: u64| payload(2000 + i, 1 << 20);
    with_mount(Path::new(&tgt.spec()), "", "aoe-restart", |m| {
        for i in 0..16u64 {
            if i == 6 {
                tgt.kill();
                let m = m.to_path_buf();
                // Writes go on (and wait) while the target is away.
                let h = std::thread::spawn(move || {
                    let mut f = std::fs::File::create(m.join("during")).unwrap();
                    f.write_all(b"written while the target was down\n").unwrap();
                    f.sync_all().unwrap();
                });
                std::thread::sleep(Duration::from_secs(1));
                tgt.spawn();
                h.join().unwrap();
            }
            let mut f = std::fs::File::create(m.join(format!("f{i}"))).unwrap();
            f.write_all(&content(i)).unwrap();
            f.sync_all().unwrap();
        }
    });
    drop(tgt);
    fsck_clean(&img.0, "after the restart");
    with_mount(&img.0, "", "aoe-restart2", |m| {
        for i in 0..16u64 {
            assert!(
                std::fs::read(m.join(format!("f{i}"))).unwrap() == content(i),
                "f{i} differs"
            );
        }
        assert_eq!(
            std::fs::read(m.join("during")).unwrap(),
            b"written while the target was down\n"
        );
    });
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
    // Many frames: the first error fails the request at once, the frames
    // not sent yet are not sent.
    let t = Instant::now();
    let e = dev.write_at(&vec![0u8; 1 << 20], 1 << 20).unwrap_err();
    assert!(e.to_string().contains("ATA error"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
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

/// The benchmark's reference client: the least an AoE client can do.
/// One thread, a fixed window of frames, no locks, no copies of data, no
/// resends (a lost frame fails the benchmark).
struct RawAoe {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
    dst: [u8; 6],
    shelf: u16,
    slot: u8,
    /// Upper half of every tag this client sends (bit 31, then its id).
    tag_base: u32,
}

impl RawAoe {
    /// A client whose tags carry `id` in bits 16-30. With `filter`, a socket
    /// filter passes only replies to those tags, so that several clients can
    /// run side by side, each on its own socket.
    fn open(iface: &str, dst: [u8; 6], shelf: u16, slot: u8, id: u16, filter: bool) -> RawAoe {
        let tag_base = 0x8000_0000 | (u32::from(id & 0x7fff) << 16);
        use std::os::fd::{AsRawFd, FromRawFd};
        let name = std::ffi::CString::new(iface).unwrap();
        // SAFETY: plain libc calls on values owned here.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM,
                i32::from(0x88a2u16.to_be()),
            );
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            let mut sa: libc::sockaddr_ll = std::mem::zeroed();
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_protocol = 0x88a2u16.to_be();
            sa.sll_ifindex = ifindex;
            let r = libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 2,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            if filter {
                let f = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
                let prog = [
                    f(0x30, 0, 0, 0),           // ldb [0]
                    f(0x45, 0, 4, 0x08),        // jset #response, next, drop
                    f(0x20, 0, 0, 6),           // ld [6] (the tag)
                    f(0x54, 0, 0, 0xffff_0000), // and #0xffff0000
                    f(0x15, 0, 1, tag_base),    // jeq #tag_base, accept, drop
                    f(0x06, 0, 0, 0x0004_0000), // accept
                    f(0x06, 0, 0, 0),           // drop
                ];
                let fprog = libc::sock_fprog {
                    len: prog.len() as u16,
                    filter: prog.as_ptr() as *mut libc::sock_filter,
                };
                let r = libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ATTACH_FILTER,
                    &fprog as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::sock_fprog>() as u32,
                );
                assert_eq!(r, 0, "filter: {}", std::io::Error::last_os_error());
            }
            RawAoe {
                fd,
                ifindex,
                dst,
                shelf,
                slot,
                tag_base,
            }
        }
    }

    fn send(&self, tag: u32, write: bool, lba: u64, nsec: u8, data: &[u8]) {
        use std::os::fd::AsRawFd;
        let mut h = [0u8; 22];
        h[0] = 0x10;
        h[2..4].copy_from_slice(&self.shelf.to_be_bytes());
        h[4] = self.slot;
        h[6..10].copy_from_slice(&tag.to_be_bytes());
        h[10] = if write { 0x41 } else { 0x40 };
        h[12] = nsec;
        h[13] = if write { 0x34 } else { 0x24 };
        h[14..20].copy_from_slice(&lba.to_le_bytes()[..6]);
        let n = if write { usize::from(nsec) * 512 } else { 0 };
        // SAFETY: iovecs and address point at live buffers during the call.
        unsafe {
            let mut sa: libc::sockaddr_ll = std::mem::zeroed();
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_protocol = 0x88a2u16.to_be();
            sa.sll_ifindex = self.ifindex;
            sa.sll_halen = 6;
            sa.sll_addr[..6].copy_from_slice(&self.dst);
            let mut iov = [
                libc::iovec {
                    iov_base: h.as_ptr() as *mut libc::c_void,
                    iov_len: 22,
                },
                libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: n,
                },
            ];
            let mut m: libc::msghdr = std::mem::zeroed();
            m.msg_name = &sa as *const _ as *mut libc::c_void;
            m.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            m.msg_iov = iov.as_mut_ptr();
            m.msg_iovlen = 2;
            assert!(libc::sendmsg(self.fd.as_raw_fd(), &m, 0) >= 0);
        }
    }

    /// Run `ops` (sector, count) with `window` frames in flight; returns
    /// how many were done.
    fn run(
        &self,
        mut ops: impl Iterator<Item = (u64, u8)>,
        write: bool,
        window: usize,
        until: Option<Instant>,
    ) -> u64 {
        use std::os::fd::AsRawFd;
        let data = vec![0x5au8; 255 * 512];
        let mut buf = vec![0u8; 65536];
        let mut seq = 0u32;
        let mut out = 0usize;
        let mut done = 0u64;
        loop {
            while out < window && (until.is_none() || Some(Instant::now()) < until) {
                let Some((lba, n)) = ops.next() else { break };
                seq = (seq + 1) & 0xffff;
                self.send(self.tag_base | seq, write, lba, n, &data);
                out += 1;
            }
            if out == 0 {
                return done;
            }
            // SAFETY: buf is valid for writes of its length.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            assert!(r >= 0, "reference client: no reply (a frame was lost)");
            let f = &buf[..r as usize];
            let mine = f.len() >= 22
                && u32::from_be_bytes([f[6], f[7], f[8], f[9]]) & 0xffff_0000 == self.tag_base;
            if mine && f[0] & 0x08 != 0 && f[5] == 0 {
                assert_eq!(f[0] & 0x04, 0, "AoE error");
                assert_eq!(f[13] & 0x21, 0, "ATA error");
                out -= 1;
                done += 1;
            }
        }
    }
}

/// Throughput of our initiator against vblade, and of the same patterns on
/// the image file read and written directly (the reference: no userspace
/// AoE client exists in Debian and this kernel has no aoe driver). Run by
/// scripts/bench-aoe.sh; settings from the environment: AOE_BENCH_MTU
/// (9000), AOE_BENCH_MB (image size, 256), AOE_BENCH_SECS (per random
/// test, 3), AOE_BENCH_THREADS (random I/O threads, 4), AOE_BENCH_ROUNDS
/// (each result is the best of so many runs, 3).
#[test]
#[ignore = "benchmark: scripts/bench-aoe.sh"]
fn bench_throughput() {
    use gfs2fuse::dev::file::{FileDevice, OpenFlags};
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mtu = env("AOE_BENCH_MTU", 9000) as u32;
    let mb = env("AOE_BENCH_MB", 256);
    let secs = env("AOE_BENCH_SECS", 3);
    let threads = env("AOE_BENCH_THREADS", 4);
    let rounds = env("AOE_BENCH_ROUNDS", 3);
    let img = image("bench", mb);
    std::fs::write(&img.0, payload(1, (mb << 20) as usize)).unwrap();
    let net = Net::new(mtu);
    let tgt = Target::start(&net, 11, 1, &img.0, &[]);
    // Each run opens its own client, so that no other packet socket on the
    // interface takes copies of its frames.
    let aoe = || -> Arc<dyn BlockDevice> {
        Arc::new(AoeDevice::open(tgt.config(Duration::from_secs(30))).unwrap())
    };
    let file: Arc<dyn BlockDevice> = Arc::new(
        FileDevice::open(
            &img.0,
            OpenFlags {
                read_only: false,
                direct: false,
            },
        )
        .unwrap(),
    );
    let size = mb << 20;
    let seq = |dev: &Arc<dyn BlockDevice>, write: bool| {
        let mut buf = vec![0x5au8; 1 << 20];
        let t = Instant::now();
        for off in (0..size).step_by(1 << 20) {
            if write {
                dev.write_at(&buf, off).unwrap();
            } else {
                dev.read_at(&mut buf, off).unwrap();
            }
        }
        dev.flush().unwrap();
        size as f64 / t.elapsed().as_secs_f64() / 1e6
    };
    let random = |dev: &Arc<dyn BlockDevice>, write: bool| {
        let stop = Instant::now() + Duration::from_secs(secs);
        let t = Instant::now();
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let dev = dev.clone();
                std::thread::spawn(move || {
                    let mut rng = Rng(0x1234 + i);
                    let mut buf = vec![0xa5u8; 4096];
                    let mut n = 0u64;
                    while Instant::now() < stop {
                        let off = rng.below(size / 4096) * 4096;
                        if write {
                            dev.write_at(&buf, off).unwrap();
                        } else {
                            dev.read_at(&mut buf, off).unwrap();
                        }
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let n: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        n as f64 / t.elapsed().as_secs_f64()
    };
    let info = AoeDevice::open(tgt.config(Duration::from_secs(30)))
        .unwrap()
        .info()
        .clone();
    let raw = || RawAoe::open(&net.host_if, info.target_mac, 11, 1, 0, false);
    let spf = info.sectors_per_frame;
    let sectors = size / 512;
    let window = usize::from(info.bufcnt);
    // The reference client streams the device at the target's window, or
    // does 4 KiB frames at random with as many in flight as our threads.
    let raw_seq = |write: bool| {
        let t = Instant::now();
        let ops = (0..sectors)
            .step_by(usize::from(spf))
            .map(|l| (l, (sectors - l).min(u64::from(spf)) as u8));
        raw().run(ops, write, window, None);
        size as f64 / t.elapsed().as_secs_f64() / 1e6
    };
    // 4 KiB takes 8 / spf frames when a frame holds fewer than 8 sectors.
    let per4k = 8u64.div_ceil(u64::from(spf));
    // The frames (sector, count) of 4 KiB requests at random offsets.
    let random_ops = move |seed: u64| {
        let mut rng = Rng(seed);
        std::iter::repeat_with(move || rng.below(sectors / 8) * 8).flat_map(move |l| {
            (0..per4k).map(move |i| {
                let at = i * u64::from(spf);
                (l + at, (8 - at).min(u64::from(spf)) as u8)
            })
        })
    };
    let raw_random = |write: bool| {
        let t = Instant::now();
        let ops = random_ops(0x777);
        let until = Instant::now() + Duration::from_secs(secs);
        let window = (threads * per4k) as usize;
        let n = raw().run(ops, write, window, Some(until));
        n as f64 / per4k as f64 / t.elapsed().as_secs_f64()
    };
    // The same client in as many threads as ours, each with one request
    // (its frames) in flight on a socket of its own: the access pattern of
    // a synchronous block device API, without our locks, timers or copies.
    let raw_random_threads = |write: bool| {
        let t = Instant::now();
        let until = Instant::now() + Duration::from_secs(secs);
        let n: u64 = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..threads)
                .map(|i| {
                    let c = RawAoe::open(&net.host_if, info.target_mac, 11, 1, 1 + i as u16, true);
                    sc.spawn(move || {
                        c.run(random_ops(0x777 + i), write, per4k as usize, Some(until))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        n as f64 / per4k as f64 / t.elapsed().as_secs_f64()
    };
    println!(
        "AoE bench: MTU {mtu}, {spf} sectors per frame, target buffer count {}, {mb} MiB image, \
         random 4 KiB I/O with {threads} in flight, best of {rounds}",
        info.bufcnt
    );
    println!(
        "(raw client: one thread, one socket, a window of frames; \
         raw x{threads}: {threads} threads, each one request in flight on its own socket)"
    );
    println!(
        "{:<26} {:>16} {:>16} {:>7} {:>16} {:>7} {:>16} {:>7}",
        "test", "ours", "raw client", "ratio", "raw x threads", "ratio", "file", "ratio"
    );
    type Run<'a> = &'a dyn Fn(&Arc<dyn BlockDevice>) -> f64;
    type Ref<'a> = Option<&'a dyn Fn() -> f64>;
    type Row<'a> = (&'a str, &'a str, Run<'a>, &'a dyn Fn() -> f64, Ref<'a>);
    let tests: [Row; 4] = [
        (
            "sequential write 1 MiB",
            "MB/s",
            &|d| seq(d, true),
            &|| raw_seq(true),
            None,
        ),
        (
            "sequential read 1 MiB",
            "MB/s",
            &|d| seq(d, false),
            &|| raw_seq(false),
            None,
        ),
        (
            "random read 4 KiB",
            "IOPS",
            &|d| random(d, false),
            &|| raw_random(false),
            Some(&|| raw_random_threads(false)),
        ),
        (
            "random write 4 KiB",
            "IOPS",
            &|d| random(d, true),
            &|| raw_random(true),
            Some(&|| raw_random_threads(true)),
        ),
    ];
    // Best of `rounds`, all taking turns: the host may be busy.
    for (name, unit, ours, reference, threaded) in tests {
        let (mut a, mut r, mut rt, mut f) = (0f64, 0f64, 0f64, 0f64);
        for _ in 0..rounds {
            a = a.max(ours(&aoe()));
            r = r.max(reference());
            if let Some(t) = threaded {
                rt = rt.max(t());
            }
            f = f.max(ours(&file));
        }
        let threaded_cols = if threaded.is_some() {
            format!("{rt:>11.0} {unit} {:>6.1}%", 100.0 * a / rt)
        } else {
            format!("{:>16} {:>7}", "-", "-")
        };
        println!(
            "{name:<26} {a:>11.0} {unit} {r:>11.0} {unit} {:>6.1}% {threaded_cols} {f:>11.0} {unit} {:>6.1}%",
            100.0 * a / r,
            100.0 * a / f
        );
    }
}
