//! A node dies mid-workload; the survivors replay its journal and go on.
//!
//! Three nodes share one disk through `lock_mem`. One of them has a device
//! that dies after a random number of writes: from then on every read and
//! write of that node fails (its writes stop at once, as a fenced node's),
//! and the test kills it in the lock manager, which releases its journal
//! lock, keeps its other locks blocked (NOEXP) and tells the survivors. A
//! survivor replays the journal; the dead node's locks are then released.
//! Checked: every file the dead node had fsync'd is intact on the survivors,
//! the survivors keep working, a node mounting afterwards takes the dead
//! node's journal, and gfs2-utils finds the disk clean.

mod common;

use common::*;
use gfs2_lockproto::mem::MemLockManager;
use gfs2fuse::dev::BlockDevice;
use gfs2fuse::fs::{Fs, MountOptions};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A node's view of the shared disk that dies after `countdown` writes.
struct Mortal {
    disk: Arc<OverlayDevice>,
    countdown: AtomicI64,
    dead: AtomicBool,
}

impl Mortal {
    fn check(&self) -> io::Result<()> {
        if self.dead.load(Ordering::SeqCst) {
            Err(io::Error::from_raw_os_error(libc::EIO))
        } else {
            Ok(())
        }
    }
}

impl BlockDevice for Mortal {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check()?;
        self.disk.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check()?;
        if self.countdown.fetch_sub(1, Ordering::SeqCst) <= 0 {
            self.dead.store(true, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.disk.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.check()
    }
    fn size(&self) -> u64 {
        self.disk.size()
    }
    fn describe(&self) -> String {
        "mortal".into()
    }
}

const TABLE: &str = "test:death";
const LS: &str = "death";

fn node(dev: Arc<dyn BlockDevice>, mgr: &MemLockManager) -> Arc<Fs> {
    let opts = MountOptions {
        lock_module: Some(mgr.proto()),
        locktable: Some(TABLE.into()),
        commit_secs: Some(1),
        ..Default::default()
    };
    Fs::mount(dev, opts).expect("mount")
}

/// What a node's workload does besides writing and fsyncing files.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Small files, renames and unlinks.
    Mixed,
    /// Big files: most of the node's writes are allocations.
    Allocating,
    /// Mostly renames between directories.
    Renaming,
}

/// The files a node fsync'd: (directory, name, contents). Never renamed or
/// removed afterwards.
type Synced = Arc<Mutex<Vec<(u64, String, Vec<u8>)>>>;

/// One node's part of a round.
struct Job {
    tag: String,
    kind: Kind,
    /// Its own directory and the one all nodes share.
    own: u64,
    shared: u64,
    seed: u64,
    /// A survivor's pace: the victim's fsync'd files and its device. Until
    /// the victim dies, a survivor stays at most [`LEAD`] fsync'd files
    /// ahead of it, so that the death comes at a random point of a shared
    /// workload: a victim slowed down by the others (waiting for their
    /// glocks) would otherwise let them fill the disk first.
    pace: Option<(Synced, Arc<Mortal>)>,
}

/// How far a survivor may run ahead of the victim (fsync'd files).
const LEAD: usize = 200;

/// Run `job` on `fs` until `stop` or an error (the dead node's device
/// failing); returns operations done.
fn workload(
    fs: &Fs,
    job: Job,
    synced: &Synced,
    stop: &AtomicBool,
) -> std::result::Result<usize, String> {
    let Job {
        tag,
        kind,
        own,
        shared,
        seed,
        pace,
    } = job;
    let file = libc::S_IFREG | 0o644;
    let mut rng = Rng(seed);
    let mut done = 0;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if let Some((victim, dev)) = &pace {
            let mine = synced.lock().unwrap().len();
            while !stop.load(Ordering::SeqCst)
                && !dev.dead.load(Ordering::SeqCst)
                && mine > victim.lock().unwrap().len() + LEAD
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        i += 1;
        let e = |x: gfs2fuse::error::FsError| format!("{tag} op {i}: {x}");
        // A file written and fsync'd: it must survive whatever follows.
        let name = format!("{tag}-s{i}");
        let size = match kind {
            Kind::Allocating => 32 * 1024 + rng.below(160 * 1024) as usize,
            _ => 1 + rng.below(9000) as usize,
        };
        let mut body = vec![0u8; size];
        fill(&mut rng, &mut body);
        let a = fs
            .mknod(own, name.as_bytes(), file, 0, 0, 0, 0, None)
            .map_err(e)?;
        fs.write(a.ino, 0, &body).map_err(e)?;
        fs.sync().map_err(e)?;
        synced.lock().unwrap().push((own, name, body));
        done += 1;
        // Other work, never touching the synced files.
        let scratch = format!("{tag}-t{i}");
        let t = fs
            .mknod(shared, scratch.as_bytes(), file, 0, 0, 0, 0, None)
            .map_err(e)?;
        fs.write(t.ino, 0, scratch.as_bytes()).map_err(e)?;
        let moves = match kind {
            Kind::Renaming => 6,
            _ => 1,
        };
        let mut at = (shared, scratch.clone());
        for m in 0..moves {
            let to = if at.0 == shared { own } else { shared };
            let new = format!("{scratch}-m{m}");
            fs.rename(at.0, at.1.as_bytes(), to, new.as_bytes(), 0)
                .map_err(e)?;
            at = (to, new);
            done += 1;
        }
        if i.is_multiple_of(2) {
            fs.remove(at.0, at.1.as_bytes(), false).map_err(e)?;
            done += 1;
        }
        done += 2;
    }
    Ok(done)
}

/// One round: three nodes, node 1 dies after `countdown` writes.
fn round(base: &Arc<Vec<u8>>, kind: Kind, countdown: i64, seed: u64, tag: &str) {
    let disk = Arc::new(OverlayDevice::new(base.clone()));
    let mgr = MemLockManager::new();
    let devs: Vec<Arc<Mortal>> = (0..3)
        .map(|_| {
            Arc::new(Mortal {
                disk: disk.clone(),
                countdown: AtomicI64::new(i64::MAX),
                dead: AtomicBool::new(false),
            })
        })
        .collect();
    let nodes: Vec<Arc<Fs>> = devs.iter().map(|d| node(d.clone(), &mgr)).collect();
    let root = nodes[0].root();
    let dir = libc::S_IFDIR | 0o755;
    let shared = nodes[0]
        .mknod(root, b"shared", dir, 0, 0, 0, 0, None)
        .unwrap()
        .ino;
    let own: Vec<u64> = (0..3)
        .map(|k| {
            nodes[k]
                .mknod(root, format!("n{k}").as_bytes(), dir, 0, 0, 0, 0, None)
                .unwrap()
                .ino
        })
        .collect();
    let victim_id = nodes[1].glocks().lockspace().node_id();
    devs[1].countdown.store(countdown, Ordering::SeqCst);
    let synced: Vec<Synced> = (0..3).map(|_| Synced::default()).collect();
    let synced_all = synced.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    // Plain threads, not a scope: a check that fails while a workload is
    // blocked must fail the test with the nodes' glocks printed, not wait
    // for ever in the scope's join (the threads end with the process).
    let stall = |why: String| -> ! {
        for (k, n) in nodes.iter().enumerate() {
            let busy: Vec<String> = n
                .glocks()
                .dump()
                .lines()
                .filter(|l| !l.ends_with("h:0/0 w:0") || l.contains('D') || l.contains('b'))
                .map(str::to_string)
                .collect();
            eprintln!("{tag}: node {k}'s busy glocks:\n{}", busy.join("\n"));
        }
        eprintln!("{tag}: lock manager: {} orphan locks", mgr.orphans(LS));
        // Whatever blocks the others fails the test, not hangs it.
        stop.store(true, Ordering::SeqCst);
        for d in &devs {
            d.dead.store(true, Ordering::SeqCst);
        }
        panic!("{tag}: {why}");
    };
    let hs: Vec<_> = (0..3)
        .map(|k| {
            let (fs, synced, stop) = (nodes[k].clone(), synced[k].clone(), stop.clone());
            let (o, sh) = (own[k], shared);
            let pace = (k != 1).then(|| (synced_all[1].clone(), devs[1].clone()));
            std::thread::spawn(move || {
                let job = Job {
                    tag: format!("{k}"),
                    kind,
                    own: o,
                    shared: sh,
                    seed: seed + k as u64,
                    pace,
                };
                let r = workload(&fs, job, &synced, &stop);
                if let Err(e) = &r {
                    eprintln!("node {k}'s workload ended: {e}");
                }
                r
            })
        })
        .collect();
    // The victim's device dies on its own; it is killed in the lock
    // manager at once.
    while !devs[1].dead.load(Ordering::SeqCst) {
        if t0.elapsed() > Duration::from_secs(60) || hs.iter().any(|h| h.is_finished()) {
            stall("a workload ended or stalled before the victim's death".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let jids = mgr.kill(LS, victim_id);
    assert_eq!(jids, vec![1], "{tag}: the victim held journal 1");
    let orphaned = mgr.orphans(LS);
    // The survivors keep working for a while after the death.
    let died = Instant::now();
    let death_at = t0.elapsed().as_secs_f64();
    let before: Vec<usize> = (0..3).map(|k| synced[k].lock().unwrap().len()).collect();
    let progressed = |k: usize| synced[k].lock().unwrap().len() > before[k] + 2;
    while !(progressed(0) && progressed(2)) && died.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    // A survivor replayed the journal and said so: the dead node's
    // locks are free.
    while mgr.orphans(LS) > 0 && died.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if mgr.orphans(LS) > 0 {
        stall("the dead node's locks still held 30 s after its death (no recovery?)".into());
    }
    for k in [0, 2] {
        if !progressed(k) {
            stall(format!(
                "survivor {k} made no progress in 30 s after the death"
            ));
        }
    }
    let recovered_at = t0.elapsed().as_secs_f64();
    let mut results = Vec::new();
    for h in hs {
        // A survivor stuck on the dead node's locks would hang here:
        // bound it.
        let t = Instant::now();
        while !h.is_finished() {
            if t.elapsed() > Duration::from_secs(60) {
                stall("a workload is blocked (deadlock?)".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        results.push(h.join().unwrap());
    }
    assert!(
        results[1].is_err(),
        "{tag}: the victim's workload went on after its device died"
    );
    for k in [0, 2] {
        if let Err(e) = &results[k] {
            panic!("{tag}: survivor {k} failed: {e}");
        }
    }
    // Every file any node fsync'd, read on a survivor.
    for k in 0..3 {
        let reader = &nodes[if k == 0 { 2 } else { 0 }];
        for (dir, name, body) in synced[k].lock().unwrap().iter() {
            let a = reader
                .lookup(*dir, name.as_bytes())
                .unwrap_or_else(|e| panic!("{tag}: node {k}'s fsync'd {name} lost: {e}"));
            let got = reader.read(a.ino, 0, body.len() + 1).unwrap();
            assert!(got == *body, "{tag}: node {k}'s fsync'd {name} differs");
        }
    }
    let stopped_at = t0.elapsed().as_secs_f64();
    // A node coming back takes the dead node's journal again, once the
    // survivor that replayed it has let its lock go (it keeps it until the
    // dead node's statfs changes are folded).
    let jlock = gfs2_lockproto::ResName::new(gfs2_lockproto::lm_type::JOURNAL, 1);
    let t = Instant::now();
    while mgr
        .holders(LS, jlock)
        .iter()
        .any(|m| *m >= gfs2_lockproto::Mode::PW)
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{tag}: the dead node's journal still locked 30 s after its recovery"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let back = node(
        Arc::new(Mortal {
            disk: disk.clone(),
            countdown: AtomicI64::new(i64::MAX),
            dead: AtomicBool::new(false),
        }),
        &mgr,
    );
    let f = back
        .mknod(own[1], b"back", libc::S_IFREG | 0o644, 0, 0, 0, 0, None)
        .unwrap();
    back.write(f.ino, 0, b"back again").unwrap();
    assert_eq!(
        nodes[0]
            .read(nodes[0].lookup(own[1], b"back").unwrap().ino, 0, 64)
            .unwrap(),
        b"back again"
    );
    back.unmount().unwrap();
    nodes[0].unmount().unwrap();
    nodes[2].unmount().unwrap();
    // The dead node cannot write anything any more; its unmount fails.
    assert!(nodes[1].unmount().is_err());
    let out = TempPath(
        std::env::temp_dir().join(format!("gfs2t-death-{tag}-{}.img", std::process::id())),
    );
    let mut bytes = vec![0u8; disk.size() as usize];
    disk.read_at(&mut bytes, 0).unwrap();
    std::fs::write(&out.0, &bytes).unwrap();
    fsck_clean(&out.0, &format!("{tag}: after the death"));
    eprintln!(
        "{tag}: {kind:?}, death after {countdown} writes holding {orphaned} locks, survivors did {:?} ops, {:.1} s (death at {death_at:.1}, recovered at {recovered_at:.1}, workloads stopped at {stopped_at:.1})",
        results.iter().map(|r| r.as_ref().ok()).collect::<Vec<_>>(),
        t0.elapsed().as_secs_f64()
    );
}

/// Rounds of each kind, with the death at a random point; bounded by time.
#[test]
fn survivors_replay_a_dead_nodes_journal() {
    let img = mkfs(4096, 4, 512, "death");
    let base = Arc::new(std::fs::read(&img.0).unwrap());
    let mut rng = Rng(0xdead_beef);
    let t = Instant::now();
    let mut rounds = 0;
    for r in 0.. {
        let kind = [Kind::Mixed, Kind::Allocating, Kind::Renaming][r % 3];
        let countdown = 40 + rng.below(400) as i64;
        round(&base, kind, countdown, rng.next(), &format!("r{r}"));
        rounds += 1;
        if rounds >= 9 || (rounds >= 3 && t.elapsed() > Duration::from_secs(120)) {
            break;
        }
    }
    eprintln!("{rounds} rounds in {:.1} s", t.elapsed().as_secs_f64());
}
