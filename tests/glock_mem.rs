//! Two filesystem instances in one process acting as cluster nodes through
//! the in-process lock manager (`lock_mem`): glocks are promoted through the
//! lock module, and a conflicting request on one node demotes the other
//! node's glock, invalidating what it cached under it.

mod common;

use common::*;
use gfs2_lockproto::mem::MemLockManager;
use gfs2_lockproto::{lm_type, Mode, ResName};
use gfs2fuse::fs::{Fs, MountOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn node(dev: &Arc<OverlayDevice>, mgr: &MemLockManager, jid: u32) -> Arc<Fs> {
    let opts = MountOptions {
        lock_module: Some(mgr.proto()),
        locktable: Some("test:fs1".into()),
        jid: Some(jid),
        ..Default::default()
    };
    Fs::mount(dev.clone(), opts).unwrap()
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn exclusive_request_on_one_node_demotes_the_other() {
    let img = mkfs(4096, 2, 128, "mem");
    let dev = Arc::new(OverlayDevice::new(Arc::new(std::fs::read(&img.0).unwrap())));
    let mgr = MemLockManager::new();
    let a = node(&dev, &mgr, 0);
    let b = node(&dev, &mgr, 1);
    let root = ResName::new(lm_type::INODE, a.root());

    // Both read the root: both hold it shared at the lock-manager level
    // after the operation ends (cached, no holder).
    a.getattr(a.root()).unwrap();
    b.getattr(b.root()).unwrap();
    assert_eq!(a.glocks().held_mode(root), Some(Mode::PR));
    assert_eq!(b.glocks().held_mode(root), Some(Mode::PR));
    assert_eq!(mgr.holders("fs1", root).len(), 2);
    let cached_before = a.cache().len();
    assert!(cached_before > 0);

    // B wants the root exclusively: A is called back, invalidates and goes
    // down to NL; only then is B granted.
    let gh = b.glocks().acquire(root, Mode::EX).unwrap();
    // The lock manager granted B only once A had converted to NL.
    let mut modes = mgr.holders("fs1", root);
    modes.sort();
    assert_eq!(modes, vec![Mode::NL, Mode::EX]);
    // A records the mode it was left with just after its conversion
    // returns, which may be after B's grant.
    wait_for("A's record of its NL", || {
        a.glocks().held_mode(root) == Some(Mode::NL)
    });
    assert!(
        a.cache().len() < cached_before,
        "A kept blocks of a demoted glock"
    );

    // A reads again: it must wait for B to release.
    let a2 = a.clone();
    let t = std::thread::spawn(move || a2.getattr(a2.root()).map(|at| at.ino));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !t.is_finished(),
        "A read the root while B held it exclusively"
    );
    drop(gh);
    // B has no holder left: the callback from A's request demotes B to PR
    // (shared is compatible), and A proceeds.
    assert_eq!(t.join().unwrap().unwrap(), a.root());
    wait_for("B demoted to PR", || {
        b.glocks().held_mode(root) == Some(Mode::PR)
    });
    a.unmount().unwrap();
    b.unmount().unwrap();
    assert!(mgr.holders("fs1", root).is_empty());
}

/// Each node takes a journal of its own through the journal locks: without
/// `hostdata=jid=` the first free one, with it exactly that one; a node
/// more than there are journals is refused with a clear error; a journal
/// is free again once its node has unmounted.
#[test]
fn one_journal_per_node() {
    let img = mkfs(4096, 2, 128, "memj");
    let dev = Arc::new(OverlayDevice::new(Arc::new(std::fs::read(&img.0).unwrap())));
    let mgr = MemLockManager::new();
    let mount = |jid: Option<u32>| {
        let opts = MountOptions {
            lock_module: Some(mgr.proto()),
            locktable: Some("test:fsj".into()),
            jid,
            read_only: true,
            ..Default::default()
        };
        Fs::mount(dev.clone(), opts)
    };
    let journal = |jid: u32| ResName::new(lm_type::JOURNAL, u64::from(jid));
    // Modes above NL held on a journal lock (the first mounter keeps NL on
    // the journals it checked for recovery).
    let held = |jid: u32| -> Vec<Mode> {
        let mut m = mgr.holders("fsj", journal(jid));
        m.retain(|&x| x > Mode::NL);
        m
    };
    let a = mount(None).unwrap();
    assert_eq!(held(0), vec![Mode::EX]);
    let e = mount(Some(0)).err().expect("a second node on journal 0");
    assert!(e.to_string().contains("journal 0 is in use"), "{e}");
    let b = mount(None).unwrap();
    assert_eq!(held(1), vec![Mode::EX]);
    let e = mount(None).err().expect("a third node with two journals");
    assert!(e.to_string().contains("all 2 journals are in use"), "{e}");
    let e = mount(Some(7)).err().expect("a journal that does not exist");
    assert!(e.to_string().contains("does not exist"), "{e}");
    a.unmount().unwrap();
    assert!(held(0).is_empty());
    let c = mount(None).unwrap();
    assert_eq!(held(0), vec![Mode::EX]);
    b.unmount().unwrap();
    c.unmount().unwrap();
}

/// A node of lock table `test:TABLE` on `dev`, with the first free journal.
fn cluster_node(dev: &Arc<OverlayDevice>, mgr: &MemLockManager, table: &str) -> Arc<Fs> {
    let opts = MountOptions {
        lock_module: Some(mgr.proto()),
        locktable: Some(format!("test:{table}")),
        ..Default::default()
    };
    Fs::mount(dev.clone(), opts).unwrap()
}

/// gfs2-utils' `fsck.gfs2 -n` of the disk as the nodes left it.
fn fsck_overlay(dev: &OverlayDevice, tag: &str, what: &str) {
    use gfs2fuse::dev::BlockDevice;
    let out = std::env::temp_dir().join(format!("gfs2t-{tag}-out-{}.img", std::process::id()));
    let out = TempPath(out);
    let mut bytes = vec![0u8; dev.size() as usize];
    dev.read_at(&mut bytes, 0).unwrap();
    std::fs::write(&out.0, &bytes).unwrap();
    fsck_clean(&out.0, what);
}

/// The names in directory `dir` as node `fs` lists them.
fn names(fs: &Fs, dir: u64) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    fs.readdir(dir, 0, |e| {
        if e.name != b"." && e.name != b".." {
            out.insert(String::from_utf8_lossy(e.name).into_owned());
        }
        true
    })
    .unwrap();
    out
}

/// Two nodes write one filesystem at once through `lock_mem`: creates in a
/// shared directory and in their own, renames into the other node's
/// directory, unlinks, and interleaved overwrites of one shared file. Every
/// operation takes its glocks before its transaction starts, and each demotion
/// flushes and writes in place before the other node reads: both nodes then
/// list and read the same, and gfs2-utils finds the disk clean.
#[test]
fn two_nodes_write_one_filesystem() {
    const N: usize = 150;
    const BLK: usize = 4096;
    let img = mkfs(4096, 2, 256, "mem2w");
    let dev = Arc::new(OverlayDevice::new(Arc::new(std::fs::read(&img.0).unwrap())));
    let mgr = MemLockManager::new();
    let a = cluster_node(&dev, &mgr, "fs2w");
    let b = cluster_node(&dev, &mgr, "fs2w");
    let root = a.root();
    let dir = libc::S_IFDIR | 0o755;
    let file = libc::S_IFREG | 0o644;
    let shared = a.mknod(root, b"shared", dir, 0, 0, 0, 0, None).unwrap().ino;
    let da = a.mknod(root, b"da", dir, 0, 0, 0, 0, None).unwrap().ino;
    let db = b.mknod(root, b"db", dir, 0, 0, 0, 0, None).unwrap().ino;
    let log = b.mknod(root, b"log", file, 0, 0, 0, 0, None).unwrap().ino;
    let t0 = Instant::now();
    // Both nodes step through the workload together, so their operations on
    // the shared directory and file interleave.
    let step = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        for (k, node, own, other) in [(0usize, &a, da, db), (1, &b, db, da)] {
            let step = &step;
            s.spawn(move || {
                let tag = if k == 0 { "a" } else { "b" };
                for i in 0..N {
                    step.wait();
                    let n = format!("{tag}{i}");
                    let at = node
                        .mknod(shared, n.as_bytes(), file, 0, 0, 0, 0, None)
                        .unwrap();
                    node.write(at.ino, 0, n.as_bytes()).unwrap();
                    node.mknod(own, n.as_bytes(), file, 0, 0, 0, 0, None)
                        .unwrap();
                    // The shared file: this node's blocks are 2i+k.
                    let blk = vec![(i * 2 + k) as u8; BLK];
                    node.write(log, ((i * 2 + k) * BLK) as u64, &blk).unwrap();
                    if i % 3 == 0 {
                        node.remove(shared, n.as_bytes(), false).unwrap();
                    }
                    if i % 5 == 0 {
                        let m = format!("moved-{n}");
                        node.rename(own, n.as_bytes(), other, m.as_bytes(), 0)
                            .unwrap();
                    }
                }
            });
        }
    });
    eprintln!(
        "two nodes: {} operations in {:.2}s",
        2 * N * 5,
        t0.elapsed().as_secs_f64()
    );
    let mut want_shared = std::collections::BTreeSet::new();
    let mut want_da = std::collections::BTreeSet::new();
    let mut want_db = std::collections::BTreeSet::new();
    for i in 0..N {
        for tag in ["a", "b"] {
            let n = format!("{tag}{i}");
            if i % 3 != 0 {
                want_shared.insert(n.clone());
            }
            // A's own directory is da, B's is db; every fifth file moved
            // to the other node's.
            let to_da = (tag == "a") != (i % 5 == 0);
            let name = if i % 5 == 0 { format!("moved-{n}") } else { n };
            if to_da {
                want_da.insert(name);
            } else {
                want_db.insert(name);
            }
        }
    }
    for (what, node) in [("A", &a), ("B", &b)] {
        assert_eq!(names(node, shared), want_shared, "{what}: shared");
        assert_eq!(names(node, da), want_da, "{what}: da");
        assert_eq!(names(node, db), want_db, "{what}: db");
        let data = node.read(log, 0, 2 * N * BLK).unwrap();
        assert_eq!(data.len(), 2 * N * BLK, "{what}: log size");
        for (j, blk) in data.chunks(BLK).enumerate() {
            assert!(blk.iter().all(|&x| x == j as u8), "{what}: log block {j}");
        }
        let f = node.lookup(shared, b"b7").unwrap();
        assert_eq!(node.read(f.ino, 0, 100).unwrap(), b"b7", "{what}: b7");
    }
    a.unmount().unwrap();
    b.unmount().unwrap();
    // The disk as both nodes left it, checked by gfs2-utils.
    fsck_overlay(&dev, "mem2w", "after two nodes wrote");
}

/// An inode unlinked on node A while open on node B stays readable on B;
/// it is freed when B closes it, by B alone, and the disk is clean after.
#[test]
fn unlinked_while_open_elsewhere() {
    let img = mkfs(4096, 2, 128, "memio");
    let dev = Arc::new(OverlayDevice::new(Arc::new(std::fs::read(&img.0).unwrap())));
    let mgr = MemLockManager::new();
    let a = cluster_node(&dev, &mgr, "fsio");
    let b = cluster_node(&dev, &mgr, "fsio");
    let root = a.root();
    let free0 = a.statfs().unwrap().bfree;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let f = a
        .mknod(root, b"f", libc::S_IFREG | 0o644, 0, 0, 0, 0, None)
        .unwrap()
        .ino;
    a.write(f, 0, &data).unwrap();
    b.open_inode(f);
    assert_eq!(b.read(f, 0, data.len()).unwrap(), data);
    a.remove(root, b"f", false).unwrap();
    assert!(a.lookup(root, b"f").is_err());
    assert!(b.lookup(root, b"f").is_err());
    // Still readable where it is open, with its blocks still allocated.
    assert_eq!(b.read(f, 0, data.len()).unwrap(), data, "B lost the data");
    assert!(
        a.statfs().unwrap().bfree < free0 - 70,
        "freed while open on B"
    );
    b.release_inode(f).unwrap();
    // Each node counts the master file plus its own changes (as the
    // kernel): once both have folded theirs in, the blocks are back, once.
    a.statfs_sync().unwrap();
    b.statfs_sync().unwrap();
    assert_eq!(a.statfs().unwrap().bfree, free0, "not freed after B closed");
    assert_eq!(b.statfs().unwrap().bfree, free0, "B's count");
    a.unmount().unwrap();
    b.unmount().unwrap();
    fsck_overlay(&dev, "memio", "after an unlink while open on another node");
}

/// The minimum hold time: an inode glock in use on A when B asks for it is
/// kept for its hold time (200 ms at first) after A's grant before B gets
/// it; an idle one goes at once.
#[test]
fn busy_inode_glock_is_held_for_its_hold_time() {
    let img = mkfs(4096, 2, 128, "memhold");
    let dev = Arc::new(OverlayDevice::new(Arc::new(std::fs::read(&img.0).unwrap())));
    let mgr = MemLockManager::new();
    let a = cluster_node(&dev, &mgr, "fshold");
    let b = cluster_node(&dev, &mgr, "fshold");
    let f = a
        .mknod(a.root(), b"f", libc::S_IFREG | 0o644, 0, 0, 0, 0, None)
        .unwrap()
        .ino;
    let name = ResName::new(lm_type::INODE, f);
    // Idle on A: B gets it at once.
    a.getattr(f).unwrap();
    let t = Instant::now();
    drop(b.glocks().acquire(name, Mode::EX).unwrap());
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "an idle glock was held back {:?}",
        t.elapsed()
    );
    // In use on A: held until 200 ms after A's grant, even though A lets
    // go of it after 50 ms.
    let gh = a.glocks().acquire(name, Mode::EX).unwrap();
    let granted = Instant::now();
    let b2 = b.clone();
    let waiter = std::thread::spawn(move || {
        let h = b2.glocks().acquire(name, Mode::EX).unwrap();
        let at = Instant::now();
        drop(h);
        at
    });
    std::thread::sleep(Duration::from_millis(50));
    drop(gh);
    let got = waiter.join().unwrap();
    let after = got.duration_since(granted);
    assert!(
        after >= Duration::from_millis(170) && after < Duration::from_secs(2),
        "B got the glock {after:?} after A's grant"
    );
    assert!(a.glocks().dump().contains(&format!("n:2/{f:x}")));
    a.unmount().unwrap();
    b.unmount().unwrap();
}

/// Freezing: a node taking the freeze lock exclusively makes the others
/// write everything out and start no transaction until it lets go; reads
/// go on meanwhile.
#[test]
fn freeze_lock_stops_writers_until_thawed() {
    let img = mkfs(4096, 2, 128, "memfrz");
    let dev = Arc::new(OverlayDevice::new(Arc::new(std::fs::read(&img.0).unwrap())));
    let mgr = MemLockManager::new();
    let a = cluster_node(&dev, &mgr, "fsfrz");
    let b = cluster_node(&dev, &mgr, "fsfrz");
    let f = a
        .mknod(a.root(), b"f", libc::S_IFREG | 0o644, 0, 0, 0, 0, None)
        .unwrap()
        .ino;
    a.write(f, 0, b"before the freeze").unwrap();
    let freeze = ResName::new(lm_type::NONDISK, 2);
    let frozen = b.glocks().acquire(freeze, Mode::EX).unwrap();
    // A wrote everything out before letting go: the disk as it is now is
    // complete for gfs2-utils, A's journal replay aside.
    fsck_overlay(&dev, "memfrz", "while frozen");
    // A reads, but its next write waits for the thaw.
    assert_eq!(a.read(f, 0, 64).unwrap(), b"before the freeze");
    let a2 = a.clone();
    let w = std::thread::spawn(move || a2.write(f, 0, b"after  the freeze").unwrap());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!w.is_finished(), "a write went through a frozen filesystem");
    drop(frozen);
    w.join().unwrap();
    assert_eq!(b.read(f, 0, 64).unwrap(), b"after  the freeze");
    a.unmount().unwrap();
    b.unmount().unwrap();
    fsck_overlay(&dev, "memfrz", "after the thaw");
}

/// Glocks nobody holds are given up once a node has more than its bound
/// (`max_glocks=`): node A, bounded to 64, creates, writes and reads 300
/// files; its table stays within the bound (plus what is in use), what
/// it wrote reads back, the lock manager no longer holds A's locks on the
/// reclaimed files, and a file whose glock A gave up shows A the change B
/// made to it afterwards. gfs2-utils finds the disk clean.
#[test]
fn idle_glocks_are_reclaimed_past_the_bound() {
    const N: usize = 300;
    const MAX: usize = 64;
    let img = mkfs(4096, 2, 256, "memrc");
    let dev = Arc::new(OverlayDevice::new(Arc::new(std::fs::read(&img.0).unwrap())));
    let mgr = MemLockManager::new();
    let a = Fs::mount(
        dev.clone(),
        MountOptions {
            lock_module: Some(mgr.proto()),
            locktable: Some("test:fsrc".into()),
            max_glocks: Some(MAX),
            ..Default::default()
        },
    )
    .unwrap();
    let b = cluster_node(&dev, &mgr, "fsrc");
    assert_eq!(a.glocks().max_glocks(), MAX);
    let root = a.root();
    let dir = a
        .mknod(root, b"d", libc::S_IFDIR | 0o755, 0, 0, 0, 0, None)
        .unwrap()
        .ino;
    let mut inos = Vec::new();
    let mut peak = 0;
    for i in 0..N {
        let n = format!("f{i}");
        let at = a
            .mknod(dir, n.as_bytes(), libc::S_IFREG | 0o644, 0, 0, 0, 0, None)
            .unwrap();
        a.write(at.ino, 0, n.as_bytes()).unwrap();
        inos.push(at.ino);
        peak = peak.max(a.glocks().count());
    }
    for (i, &ino) in inos.iter().enumerate() {
        assert_eq!(a.read(ino, 0, 100).unwrap(), format!("f{i}").as_bytes());
    }
    // The worker reclaims behind the operations: wait for it to catch up.
    wait_for("A's glock table back within its bound", || {
        a.glocks().count() <= MAX
    });
    eprintln!(
        "reclaim: {N} files, bound {MAX}, peak {peak} glocks, now {}",
        a.glocks().count()
    );
    // Which idle glocks go depends on when the worker ran (a glock used
    // again meanwhile gets a second chance): take a file whose glock went.
    let gone = inos.iter().position(|&ino| {
        a.glocks()
            .held_mode(ResName::new(lm_type::INODE, ino))
            .is_none()
    });
    let i = gone.expect("no file's glock was reclaimed");
    let g = ResName::new(lm_type::INODE, inos[i]);
    assert!(
        mgr.holders("fsrc", g).is_empty(),
        "A's lock on f{i} kept in the lock manager after reclaim"
    );
    // B changes the file, then A reads it again through a fresh glock.
    let fb = b.lookup(dir, format!("f{i}").as_bytes()).unwrap();
    b.write(fb.ino, 0, b"changed by B").unwrap();
    assert_eq!(a.read(inos[i], 0, 100).unwrap(), b"changed by B");
    assert_eq!(a.getattr(inos[i]).unwrap().size, 12);
    assert_eq!(names(&a, dir).len(), N);
    a.unmount().unwrap();
    b.unmount().unwrap();
    fsck_overlay(&dev, "memrc", "after reclaim of idle glocks");
}
