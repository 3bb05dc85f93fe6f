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
    assert_eq!(a.glocks().held_mode(root), Some(Mode::NL));
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
