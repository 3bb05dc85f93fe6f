//! Throughput of the NBD initiator, for scripts/bench-nbd.sh.
//!
//! ```text
//! nbd_bench SPEC seqread|seqwrite|randread|randwrite [--mb N] [--bs BYTES]
//!           [--threads N] [--seconds S]
//! ```
//! Sequential modes move the first N MiB (default: the whole device) in
//! `bs`-byte requests (default 1 MiB), in order, each thread taking the
//! next block as soon as its previous request is done (so T requests stay
//! in flight until the end, as with an asynchronous client of depth T).
//! Random modes issue `bs`-byte requests (default 4096) at random aligned
//! offsets for S seconds (default 5). Prints one line:
//! `MODE bs=.. threads=.. bytes=.. secs=.. MBps=.. iops=..`.

use gfs2fuse::dev::{spec, BlockDevice};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn main() {
    if let Err(e) = run() {
        eprintln!("nbd_bench: {e}");
        std::process::exit(1);
    }
}

fn arg<T: std::str::FromStr>(v: Option<String>, name: &str) -> Result<T, String> {
    v.ok_or_else(|| format!("{name} needs a value"))?
        .parse()
        .map_err(|_| format!("bad value for {name}"))
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: nbd_bench SPEC seqread|seqwrite|randread|randwrite [--mb N] [--bs BYTES] [--threads N] [--seconds S]";
    let spec_s = args.next().ok_or(usage)?;
    let mode = args.next().ok_or(usage)?;
    let random = mode.starts_with("rand");
    let write = mode.ends_with("write");
    if !["seqread", "seqwrite", "randread", "randwrite"].contains(&mode.as_str()) {
        return Err(usage.into());
    }
    let mut mb: Option<u64> = None;
    let mut bs: usize = if random { 4096 } else { 1 << 20 };
    let mut threads: usize = 4;
    let mut seconds: f64 = 5.0;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mb" => mb = Some(arg(args.next(), "--mb")?),
            "--bs" => bs = arg(args.next(), "--bs")?,
            "--threads" => threads = arg(args.next(), "--threads")?,
            "--seconds" => seconds = arg(args.next(), "--seconds")?,
            _ => return Err(usage.into()),
        }
    }
    if bs == 0 || threads == 0 {
        return Err("bs and threads must be positive".into());
    }
    let dev: Arc<dyn BlockDevice> = spec::open(&spec_s, !write).map_err(|e| e.to_string())?;
    let size = mb.map_or(dev.size(), |m| (m << 20).min(dev.size()));
    let blocks = size / bs as u64;
    if blocks == 0 {
        return Err("device smaller than one block".into());
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // The clock starts once every thread is spawned and has its buffer, as
    // the reference clients' clocks start after their set-up.
    let ready = Arc::new(Barrier::new(threads + 1));
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (dev, done, stop) = (dev.clone(), done.clone(), stop.clone());
            let (ready, next) = (ready.clone(), next.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut buf = vec![0u8; bs];
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = (i * 31 + t) as u8;
                }
                ready.wait();
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
                loop {
                    let b = if random {
                        if stop.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x % blocks
                    } else {
                        let b = next.fetch_add(1, Ordering::Relaxed);
                        if b >= blocks {
                            return Ok(());
                        }
                        b
                    };
                    let off = b * bs as u64;
                    if write {
                        dev.write_at(&buf, off)?;
                    } else {
                        dev.read_at(&mut buf, off)?;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    ready.wait();
    let start = Instant::now();
    if random {
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    }
    for h in handles {
        h.join()
            .map_err(|_| "worker panicked".to_string())?
            .map_err(|e| e.to_string())?;
    }
    if write {
        dev.flush().map_err(|e| e.to_string())?;
    }
    let secs = start.elapsed().as_secs_f64();
    let ops = done.load(Ordering::Relaxed);
    let bytes = ops * bs as u64;
    println!(
        "{mode} bs={bs} threads={threads} bytes={bytes} secs={secs:.3} MBps={:.1} iops={:.0}",
        bytes as f64 / secs / 1e6,
        ops as f64 / secs
    );
    Ok(())
}
