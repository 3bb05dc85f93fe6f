//! `lock_dlm` on the real DLM, ours against the kernel's, in the same VMs
//! (a 2-VM corosync + DLM cluster of `gfs2_oracle::cluster`, TCG).
//! `scripts/bench-dlm.sh` builds and runs it.
//!
//! `dlm_bench [SECONDS]` on the host boots the cluster, copies itself into
//! the VMs and prints:
//! 1. Glock round trips through our library on `lock_dlm` (no FUSE), node 1
//!    alone: a cached glock (no DLM request) and a fresh resource each time
//!    (a DLM request, its grant read back from the device, and later its
//!    release).
//! 2. One file ping-ponged between the two nodes: each node waits until the
//!    file says it is its turn, then writes the turn over to the other; turns
//!    per second of both together, first with our daemon on both nodes,
//!    then with the kernel's gfs2 on both, on the same image and VMs.
//!
//! The kernel offers no userspace knob that turns one DLM request per call
//! (its glocks stay cached, as ours do), so the kernel's figure for lock
//! bouncing is the ping-pong itself: each turn moves the file's inode glock
//! to the other node. Taking one glock from both nodes at once would count
//! mostly cached takes between two bounces, so it is not reported.
//!
//! Inside a VM the same binary runs `dlm_bench glocks DEVICE SECONDS` and
//! `dlm_bench pingpong FILE ME SECONDS START` (START: a Unix time at which
//! to begin, so both nodes start together).
use gfs2_lockproto::{lm_type, Mode, ResName};
use gfs2fuse::dev::spec;
use gfs2fuse::fs::{Fs, MountOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BASE: u64 = 1000;
const FRESH_BASE: u64 = 1 << 32;

fn die(msg: String) -> ! {
    eprintln!("dlm_bench: {msg}");
    std::process::exit(1)
}

fn rate(secs: Duration, mut f: impl FnMut(u64)) -> f64 {
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < secs {
        f(n);
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn mount(dev: &str) -> Arc<Fs> {
    let d = spec::open(dev, false).unwrap_or_else(|e| die(format!("{dev}: {e}")));
    Fs::mount(d, MountOptions::default()).unwrap_or_else(|e| die(format!("mount {dev}: {e}")))
}

/// Sleep until Unix time `start`.
fn wait_until(start: f64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    if start > now {
        std::thread::sleep(Duration::from_secs_f64(start - now));
    }
}

/// In a VM: the single-node glock figures.
fn glocks(dev: &str, secs: Duration) {
    let fs = mount(dev);
    let g = fs.glocks();
    let name = ResName::new(lm_type::NONDISK, BASE);
    let err = |e| die(format!("glock: {e}"));
    let local = rate(secs, |_| {
        drop(g.acquire(name, Mode::EX).unwrap_or_else(err))
    });
    let fresh = rate(secs, |i| {
        let n = ResName::new(lm_type::NONDISK, FRESH_BASE + i);
        drop(g.acquire(n, Mode::EX).unwrap_or_else(err));
    });
    fs.unmount()
        .unwrap_or_else(|e| die(format!("unmount: {e}")));
    println!("local {local:.0}");
    println!("fresh {fresh:.0}");
}

/// In a VM: play `me` (0 or 1) of the file ping-pong on `file`; prints this
/// node's turns.
fn pingpong(file: &str, me: u32, secs: Duration, start: f64) {
    wait_until(start);
    let t = Instant::now();
    let mut turns = 0u64;
    let mine = format!("{me} ");
    while t.elapsed() < secs {
        let s = std::fs::read_to_string(file).unwrap_or_default();
        if let Some(n) = s
            .strip_prefix(&mine)
            .and_then(|n| n.trim().parse::<u64>().ok())
        {
            std::fs::write(file, format!("{} {}\n", 1 - me, n + 1))
                .unwrap_or_else(|e| die(format!("{file}: {e}")));
            turns += 1;
        }
    }
    println!("turns {turns}");
}

fn figure(out: &str, key: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .unwrap_or_else(|| die(format!("no {key} in:\n{out}")))
}

fn host(secs: u64) -> anyhow::Result<()> {
    use gfs2_oracle::cluster::{Cluster, ClusterOpts};
    let dir = gfs2_oracle::Scratch::new("dlm-bench")?;
    let img = dir.join("shared.img");
    gfs2_oracle::mkfs(
        &img,
        256,
        &["-p", "lock_dlm", "-t", "gfs2test:bench", "-j", "2"],
    )?;
    let me = std::env::current_exe()?;
    let fuse = me
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("gfs2-fuse"))
        .filter(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("gfs2-fuse binary not built next to {}", me.display()))?;
    let c = Cluster::start(
        ClusterOpts::new(2, &img, "gfs2test")
            .binary(&me)?
            .binary(&fuse)?,
    )?;
    let (n1, n2) = (c.node(1), c.node(2));
    let long = Duration::from_secs(secs * 4 + 120);
    let start_in = |s: u64| {
        let now: f64 = n1
            .sh_ok("date +%s")
            .ok()
            .and_then(|o| o.trim().parse().ok())
            .unwrap_or(0.0);
        now + s as f64
    };

    // 1. Glocks through the library.
    let out = n1.sh_ok_timeout(&format!("dlm_bench glocks /dev/vda {secs}"), long)?;
    let (local, fresh) = (figure(&out, "local"), figure(&out, "fresh"));

    // 2. The file ping-pong, ours then the kernel's.
    let mut pp = Vec::new();
    for (what, mount, umount) in [
        (
            "gfs2-fuse",
            "mkdir -p /mnt; gfs2-fuse mount /dev/vda /mnt",
            "umount /mnt",
        ),
        (
            "kernel",
            "mkdir -p /mnt; mount -t gfs2 /dev/vda /mnt",
            "umount /mnt",
        ),
    ] {
        n1.sh_ok_timeout(mount, long)?;
        n2.sh_ok_timeout(mount, long)?;
        n1.sh_ok("echo '0 0' > /mnt/pp")?;
        let start = start_in(8);
        let run = |n: &gfs2_oracle::cluster::Node, me: u32| {
            n.sh_ok_timeout(
                &format!("dlm_bench pingpong /mnt/pp {me} {secs} {start}"),
                long,
            )
        };
        let outs = std::thread::scope(|s| {
            let a = s.spawn(|| run(n1, 0));
            let b = s.spawn(|| run(n2, 1));
            (a.join(), b.join())
        });
        let (a, b) = match outs {
            (Ok(a), Ok(b)) => (a?, b?),
            _ => anyhow::bail!("a ping-pong thread panicked"),
        };
        let turns = figure(&a, "turns") + figure(&b, "turns");
        pp.push((
            what,
            turns / secs as f64,
            figure(&a, "turns"),
            figure(&b, "turns"),
        ));
        n1.sh_ok_timeout(umount, long)?;
        n2.sh_ok_timeout(umount, long)?;
        // Wait for our daemons to leave the lockspace.
        for n in [n1, n2] {
            n.sh_ok_timeout(
                "i=0; while dlm_tool ls 2>/dev/null | grep -q bench; do i=$((i+1)); \
                 [ $i -lt 300 ] || exit 1; sleep 0.1; done",
                long,
            )?;
        }
    }
    drop(c);
    gfs2_oracle::fsck_clean(&img)?;

    println!("2-VM cluster (qemu TCG, corosync + dlm_controld, kernel DLM), {secs} s per figure");
    println!();
    println!("1. glock acquire + release through our library on lock_dlm (per second)");
    println!("   cached glock, one node:                 {local:>10.0}");
    println!("   fresh resource (a DLM request), one node:{fresh:>10.0}");
    println!();
    println!("2. one file ping-ponged between the two nodes (turns per second, both nodes)");
    for (what, r, a, b) in &pp {
        println!("   {what:<10} {r:>8.1}   (node 1 / node 2 turns: {a:.0} / {b:.0})");
    }
    if let [(_, ours, ..), (_, kernel, ..)] = pp.as_slice() {
        if *kernel > 0.0 {
            println!("   gfs2-fuse / kernel: {:.2}", ours / kernel);
        }
    }
    println!("   fsck.gfs2 -n after both runs: clean");
    Ok(())
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let secs = |s: Option<&String>| -> Duration {
        match s.map(|s| s.parse::<f64>()) {
            Some(Ok(v)) if v > 0.0 && v.is_finite() => Duration::from_secs_f64(v),
            _ => die("SECONDS must be a positive number".into()),
        }
    };
    let start = |s: Option<&String>| -> f64 {
        s.and_then(|s| s.parse().ok())
            .unwrap_or_else(|| die("START must be a Unix time".into()))
    };
    match a.get(1).map(String::as_str) {
        Some("glocks") if a.len() == 4 => glocks(&a[2], secs(a.get(3))),
        Some("pingpong") if a.len() == 6 => {
            let me = match a[3].as_str() {
                "0" => 0,
                "1" => 1,
                _ => die("ME must be 0 or 1".into()),
            };
            pingpong(&a[2], me, secs(a.get(4)), start(a.get(5)))
        }
        None => host(10).unwrap_or_else(|e| die(format!("{e:#}"))),
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n > 0 => host(n).unwrap_or_else(|e| die(format!("{e:#}"))),
            _ => die(
                "usage: dlm_bench [SECONDS]  (on the host; needs root, qemu, gfs2-utils, \
                 corosync, dlm-controld)"
                    .into(),
            ),
        },
    }
}
