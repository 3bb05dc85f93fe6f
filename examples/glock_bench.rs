//! Glock round trips through the library, without FUSE: how many
//! acquire + release pairs a node does per second on the in-process lock
//! manager (`lock_mem`) and on `lock_nolock`. `scripts/bench-cluster.sh`
//! runs it and prints the figures beside its FUSE-level ones.
//!
//! `glock_bench IMAGE [SECONDS]` (an image with at least 2 journals, not
//! mounted elsewhere) prints one `figure ops_per_second` line per figure:
//! - `local_nolock`, `local_mem`: one node takes and drops one glock in a
//!   loop; after the first grant it stays cached, so this is the glock
//!   layer's own cost (no lock-manager request);
//! - `fresh_nolock`, `fresh_mem`: a new resource name every time, so each
//!   acquire is a request to the lock module (granted at once: nobody else
//!   holds it);
//! - `pingpong_mem`: two nodes take the same glock EX strictly in turn, so
//!   every take sends a blocking callback to the other node, waits for its
//!   demotion and is granted from the lock manager's queue.
//!
//! The glocks are non-disk ones (`lm_type::NONDISK`) with numbers the
//! filesystem never uses, so no demotion writes anything back.
use gfs2_lockproto::mem::MemLockManager;
use gfs2_lockproto::{lm_type, Mode, ResName};
use gfs2fuse::dev::spec;
use gfs2fuse::fs::{Fs, MountOptions};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// First number of the resources used here (the filesystem's non-disk
/// glocks are 0 to a few).
const BASE: u64 = 1000;
/// First number of the fresh names of the `fresh_*` figures.
const FRESH_BASE: u64 = 1 << 32;

fn open(img: &str) -> Arc<dyn gfs2fuse::dev::BlockDevice> {
    spec::open(img, false).unwrap_or_else(|e| panic!("opening {img}: {e}"))
}

/// Run `f(i)` for `secs` seconds; calls per second.
fn rate(secs: Duration, mut f: impl FnMut(u64)) -> f64 {
    let t = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..256 {
            f(n);
            n += 1;
        }
        let el = t.elapsed();
        if el >= secs {
            return n as f64 / el.as_secs_f64();
        }
    }
}

/// The single-node figures on `fs`; `fresh_from`: where this run's fresh
/// names start.
fn single(fs: &Arc<Fs>, secs: Duration, fresh_from: u64) -> (f64, f64) {
    let g = fs.glocks();
    let name = ResName::new(lm_type::NONDISK, BASE);
    let local = rate(secs, |_| drop(g.acquire(name, Mode::EX).unwrap()));
    let fresh = rate(secs, |i| {
        let n = ResName::new(lm_type::NONDISK, fresh_from + i);
        drop(g.acquire(n, Mode::EX).unwrap());
    });
    (local, fresh)
}

/// Two nodes take `name` EX in turn for `secs`; takes per second (both
/// nodes together).
fn ping_pong(a: &Arc<Fs>, b: &Arc<Fs>, secs: Duration) -> f64 {
    let name = ResName::new(lm_type::NONDISK, BASE + 1);
    // Whose turn it is, and whether time is up.
    let turn = Arc::new((Mutex::new((0usize, false)), Condvar::new()));
    let start = Instant::now();
    let threads: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(me, fs)| {
            let turn = turn.clone();
            std::thread::spawn(move || {
                let (m, cv) = &*turn;
                let mut n = 0u64;
                loop {
                    let mut st = m.lock().unwrap();
                    while st.0 != me && !st.1 {
                        st = cv.wait(st).unwrap();
                    }
                    if st.1 {
                        return n;
                    }
                    drop(st);
                    drop(fs.glocks().acquire(name, Mode::EX).unwrap());
                    n += 1;
                    let mut st = m.lock().unwrap();
                    st.0 = 1 - me;
                    if start.elapsed() >= secs {
                        st.1 = true;
                    }
                    drop(st);
                    cv.notify_all();
                }
            })
        })
        .collect();
    let n: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(img) = args.get(1) else {
        eprintln!("usage: glock_bench IMAGE [SECONDS]");
        std::process::exit(2);
    };
    let secs = match args.get(2).map(|s| s.parse::<f64>()) {
        None => Duration::from_secs(2),
        Some(Ok(s)) if s > 0.0 && s.is_finite() => Duration::from_secs_f64(s),
        _ => {
            eprintln!("glock_bench: SECONDS must be a positive number");
            std::process::exit(2);
        }
    };

    // lock_nolock first: such a node owns the device alone while mounted.
    let fs = Fs::mount(
        open(img),
        MountOptions {
            lockproto: Some("lock_nolock".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let (local, fresh) = single(&fs, secs, FRESH_BASE);
    fs.unmount().unwrap();
    println!("local_nolock {local:.0}");
    println!("fresh_nolock {fresh:.0}");

    let mgr = MemLockManager::new();
    let node = || {
        Fs::mount(
            open(img),
            MountOptions {
                lock_module: Some(mgr.proto()),
                locktable: Some("bench:fs".into()),
                ..Default::default()
            },
        )
        .unwrap()
    };
    let a = node();
    let b = node();
    let (local, fresh) = single(&a, secs, FRESH_BASE);
    println!("local_mem {local:.0}");
    println!("fresh_mem {fresh:.0}");
    println!("pingpong_mem {:.0}", ping_pong(&a, &b, secs));
    a.unmount().unwrap();
    b.unmount().unwrap();
}
