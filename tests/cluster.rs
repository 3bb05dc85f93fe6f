//! Several nodes on one disk, seen through their FUSE mounts: one
//! `gfs2-fuse mount IMG M0 M1 [M2] -o lockproto=lock_mem` process, one node
//! per mount point, every operation issued with ordinary syscalls on one
//! node's mount and checked on another's. The oracles: the nodes' own
//! manifests (they must converge), gfs2-utils' `fsck.gfs2 -n`, and the
//! kernel's GFS2 in a VM listing the same tree.
//!
//! No test may hang: every operation runs under a watchdog and a blocked one
//! fails the test (the daemon is then killed and its mounts detached).

mod common;

use common::kvm::{host_manifest, run_vm, section};
use common::*;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The longest any single operation may block before the test calls it a
/// deadlock. Generous: CI runs on two loaded cores.
const BOUND: Duration = Duration::from_secs(60);

/// One daemon serving `n` nodes of one image.
struct Cluster {
    child: Option<Child>,
    mnts: Vec<TempPath>,
    /// Set once the daemon exited as asked; until then a watchdog kills it
    /// after [`WHOLE_TEST`], so that an operation blocked anywhere fails
    /// (ENOTCONN) instead of hanging the suite.
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Mount points of the clusters running now, for [`dump_glocks`].
static LIVE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Print every live node's glock dump (`gfs2-fuse glocks`): what a blocked
/// operation waits for, so that a deadlock seen once in CI can be read.
fn dump_glocks() {
    let mnts = LIVE.lock().map(|v| v.clone()).unwrap_or_default();
    for m in mnts {
        match Command::new(gfs2_fuse()).arg("glocks").arg(&m).output() {
            Ok(o) => eprintln!(
                "--- glocks of {}:\n{}{}",
                m.display(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("--- glocks of {}: {e}", m.display()),
        }
    }
}

/// The longest a whole test may run with its daemon.
const WHOLE_TEST: Duration = Duration::from_secs(900);

impl Cluster {
    fn start(img: &Path, n: usize, tag: &str) -> Cluster {
        let mnts: Vec<TempPath> = (0..n).map(|i| mountpoint(&format!("{tag}{i}"))).collect();
        let child = Command::new(gfs2_fuse())
            .arg("mount")
            .arg(img)
            .args(mnts.iter().map(|m| &m.0))
            .args(["-o", "lockproto=lock_mem", "-f"])
            .stdout(Stdio::null())
            .spawn()
            .expect("gfs2-fuse");
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pid = child.id() as i32;
        let d2 = done.clone();
        let tag2 = tag.to_string();
        std::thread::spawn(move || {
            let t = Instant::now();
            while t.elapsed() < WHOLE_TEST {
                if d2.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            eprintln!("{tag2}: the test ran past {WHOLE_TEST:?}: killing its daemon");
            // SAFETY: a plain kill(2) of our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        if let Ok(mut live) = LIVE.lock() {
            live.extend(mnts.iter().map(|m| m.0.clone()));
        }
        let mut c = Cluster {
            child: Some(child),
            mnts,
            done,
        };
        let t = Instant::now();
        while !c.mnts.iter().all(|m| is_mounted(&m.0)) {
            if let Some(st) = c.child.as_mut().and_then(|ch| ch.try_wait().unwrap()) {
                panic!("{tag}: gfs2-fuse exited with {st} before mounting");
            }
            assert!(t.elapsed() < BOUND, "{tag}: nodes not mounted in time");
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    /// No longer dumped by [`dump_glocks`].
    fn forget(&self) {
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|l| !self.mnts.iter().any(|m| m.0 == *l));
        }
    }

    fn m(&self, node: usize) -> &Path {
        &self.mnts[node].0
    }

    fn path(&self, node: usize, rel: &str) -> PathBuf {
        self.m(node).join(rel)
    }

    /// Unmount every node; the daemon must exit 0 (every node left the
    /// disk clean).
    fn stop(mut self) {
        self.forget();
        for m in &self.mnts {
            let st = Command::new("umount").arg(&m.0).status().unwrap();
            assert!(st.success(), "umount {}", m.0.display());
        }
        let mut child = self.child.take().unwrap();
        let t = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.done.store(true, std::sync::atomic::Ordering::SeqCst);
                assert!(st.success(), "gfs2-fuse exited with {st}");
                return;
            }
            assert!(t.elapsed() < BOUND, "gfs2-fuse still running after unmount");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Only after a failure: do not leave a daemon or a mount behind.
        self.forget();
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            for m in &self.mnts {
                let _ = Command::new("umount").arg("-l").arg(&m.0).status();
            }
        }
    }
}

/// Run `f` on another thread; a result later than [`BOUND`] is a deadlock.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(BOUND) {
        Ok(v) => v,
        Err(_) => {
            dump_glocks();
            panic!("{what}: blocked for more than {BOUND:?} (deadlock?)")
        }
    }
}

/// Run `f` on each of `jobs` at once (one thread each), each bounded.
fn all_at_once<J: Send + 'static>(what: &str, jobs: Vec<J>, f: fn(J)) {
    let (tx, rx) = mpsc::channel();
    let n = jobs.len();
    for j in jobs {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(j)));
            let _ = tx.send(r.map_err(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            }));
        });
    }
    let deadline = Instant::now() + BOUND;
    for _ in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => panic!("{what}: {msg}"),
            Err(_) => {
                dump_glocks();
                panic!("{what}: blocked for more than {BOUND:?} (deadlock?)")
            }
        }
    }
}

fn write_file(p: &Path, data: &[u8]) {
    let p2 = p.to_path_buf();
    let d = data.to_vec();
    bounded(&format!("write {}", p.display()), move || {
        fs::write(&p2, &d).unwrap_or_else(|e| panic!("write {}: {e}", p2.display()))
    });
}

fn read_file(p: &Path) -> Vec<u8> {
    let p2 = p.to_path_buf();
    bounded(&format!("read {}", p.display()), move || {
        fs::read(&p2).unwrap_or_else(|e| panic!("read {}: {e}", p2.display()))
    })
}

fn names(dir: &Path) -> Vec<String> {
    let d = dir.to_path_buf();
    bounded(&format!("readdir {}", dir.display()), move || {
        let mut v: Vec<String> = fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", d.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    })
}

fn exists(p: &Path) -> bool {
    let p2 = p.to_path_buf();
    bounded(&format!("stat {}", p.display()), move || {
        fs::symlink_metadata(&p2).is_ok()
    })
}

fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(p)
        .output()
        .expect("getfattr (attr package)");
    out.status.success().then_some(out.stdout)
}

fn setxattr(p: &Path, name: &str, value: &str) {
    let st = Command::new("setfattr")
        .args(["-n", name, "-v", value])
        .arg(p)
        .status()
        .expect("setfattr (attr package)");
    assert!(st.success(), "setfattr {name} on {}", p.display());
}

/// The workload of the convergence test on `n` nodes; returns the
/// manifest every node agrees on.
fn converge_workload(c: &Cluster, n: usize) -> Vec<String> {
    let p = |node: usize, rel: &str| c.path(node, rel);
    // Shared and disjoint directories, each made on a different node.
    fs::create_dir(p(0, "shared")).unwrap();
    for i in 0..n {
        fs::create_dir(p(i, &format!("n{i}"))).unwrap();
        fs::create_dir(p(i, &format!("n{i}/sub"))).unwrap();
    }
    // Creates: every node in its own directory and in the shared one, at
    // once.
    let jobs: Vec<(PathBuf, usize)> = (0..n).map(|i| (c.m(i).to_path_buf(), i)).collect();
    all_at_once("creates", jobs, |(m, i)| {
        for k in 0..40 {
            let body = format!("node {i} file {k}\n").repeat(k + 1);
            fs::write(m.join(format!("n{i}/f{k}")), &body).unwrap();
            if k < 15 {
                fs::write(m.join(format!("shared/{i}-{k}")), &body).unwrap();
            }
        }
        fs::write(m.join(format!("n{i}/sub/inner")), b"inner").unwrap();
    });
    for i in 0..n {
        let j = (i + 1) % n;
        let k = (i + 2) % n;
        // Each node sees the others' files at once.
        assert_eq!(
            read_file(&p(j, &format!("n{i}/f7"))),
            format!("node {i} file 7\n").repeat(8).into_bytes()
        );
        // Renames across directories of a file another node made.
        bounded("rename", {
            let (a, b) = (
                p(j, &format!("n{i}/f0")),
                p(j, &format!("shared/moved-{i}")),
            );
            move || fs::rename(a, b).unwrap()
        });
        bounded("rename", {
            let (a, b) = (
                p(k, &format!("shared/{i}-1")),
                p(k, &format!("n{j}/from-{i}")),
            );
            move || fs::rename(a, b).unwrap()
        });
        // A directory moved to another parent by another node.
        bounded("rename dir", {
            let (a, b) = (p(j, &format!("n{i}/sub")), p(j, &format!("shared/sub-{i}")));
            move || fs::rename(a, b).unwrap()
        });
        assert!(!exists(&p(i, &format!("n{i}/sub"))));
        assert_eq!(read_file(&p(i, &format!("shared/sub-{i}/inner"))), b"inner");
        // Unlinks of another node's files.
        fs::remove_file(p(k, &format!("n{i}/f1"))).unwrap();
        assert!(!exists(&p(i, &format!("n{i}/f1"))));
        // Hard links (a link lives in one mount), counted on every node.
        fs::hard_link(p(j, &format!("n{i}/f2")), p(j, &format!("n{i}/f2-link"))).unwrap();
        for x in 0..n {
            let md = fs::metadata(p(x, &format!("n{i}/f2"))).unwrap();
            assert_eq!(std::os::unix::fs::MetadataExt::nlink(&md), 2, "node {x}");
        }
        // Extended attributes set on one node, read and removed on others.
        setxattr(
            &p(i, &format!("n{i}/f3")),
            "user.origin",
            &format!("node{i}"),
        );
        assert_eq!(
            getxattr(&p(j, &format!("n{i}/f3")), "user.origin").as_deref(),
            Some(format!("node{i}").as_bytes())
        );
        setxattr(&p(k, &format!("n{i}/f4")), "user.gone", "x");
        let st = Command::new("setfattr")
            .args(["-x", "user.gone"])
            .arg(p(j, &format!("n{i}/f4")))
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(getxattr(&p(k, &format!("n{i}/f4")), "user.gone"), None);
    }
    // Appends to one file from every node at once: no append is lost or
    // overwritten.
    fs::write(p(0, "shared/log"), b"").unwrap();
    let jobs: Vec<(PathBuf, usize)> = (0..n).map(|i| (c.path(i, "shared/log"), i)).collect();
    all_at_once("appends", jobs, |(f, i)| {
        let mut fh = OpenOptions::new().append(true).open(&f).unwrap();
        for k in 0..150 {
            fh.write_all(format!("node {i} line {k:04}\n").as_bytes())
                .unwrap();
        }
    });
    for x in 0..n {
        let text = String::from_utf8(read_file(&p(x, "shared/log"))).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 150 * n, "node {x} sees every appended line");
        lines.sort();
        let mut want: Vec<String> = (0..n)
            .flat_map(|i| (0..150).map(move |k| format!("node {i} line {k:04}")))
            .collect();
        want.sort();
        assert_eq!(lines, want.iter().map(String::as_str).collect::<Vec<_>>());
        // Each node's lines in its own order.
        for i in 0..n {
            let own: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("node {i} ")))
                .collect();
            let mut sorted = own.clone();
            sorted.sort();
            assert_eq!(own, sorted, "node {i}'s appends out of order");
        }
    }
    // Overwrites of one file from every node at once, each in its own
    // blocks, then one block by everybody in turn.
    fs::write(p(0, "shared/ow"), vec![b'.'; 64 << 10]).unwrap();
    let jobs: Vec<(PathBuf, usize)> = (0..n).map(|i| (c.path(i, "shared/ow"), i)).collect();
    all_at_once("overwrites", jobs, |(f, i)| {
        let fh = OpenOptions::new().write(true).open(&f).unwrap();
        for round in 0..20u8 {
            for blk in (i..16).step_by(3) {
                fh.write_all_at(&[b'a' + round % 26; 4096], blk as u64 * 4096)
                    .unwrap();
            }
        }
    });
    for turn in 0..(3 * n) {
        let f = p(turn % n, "shared/ow");
        OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .write_all_at(format!("turn {turn:03}").as_bytes(), 100)
            .unwrap();
        let back = read_file(&p((turn + 1) % n, "shared/ow"));
        assert_eq!(&back[100..108], format!("turn {turn:03}").as_bytes());
    }
    let final_ow = read_file(&p(0, "shared/ow"));
    assert_eq!(final_ow.len(), 64 << 10);
    for blk in 0..16 {
        let b = &final_ow[blk * 4096..(blk + 1) * 4096];
        let skip = if blk == 0 { 100..108 } else { 0..0 };
        let want = if blk % 3 < n { b'a' + 19 } else { b'.' };
        for (o, byte) in b.iter().enumerate() {
            if !skip.contains(&o) {
                assert_eq!(*byte, want, "ow block {blk} byte {o}");
            }
        }
    }
    // Every node lists the same tree.
    let manifests: Vec<Vec<String>> = (0..n).map(|i| host_manifest(c.m(i))).collect();
    for (i, m) in manifests.iter().enumerate().skip(1) {
        compare_manifests(m, &manifests[0], &format!("node {i} vs node 0"));
    }
    manifests[0].clone()
}

/// 2 and 3 nodes, each FUSE-mounted, on one image: creates, renames
/// across directories and nodes, unlinks, hard links, xattrs, appends and
/// overwrites of one file from all nodes; every node's manifest the same;
/// then gfs2-utils finds the image clean and the kernel lists the same tree.
#[test]
fn nodes_converge_and_the_kernel_agrees() {
    let mut kept = Vec::new();
    for n in [2usize, 3] {
        let img = mkfs(4096, 3, 256, &format!("conv{n}"));
        let c = Cluster::start(&img.0, n, &format!("conv{n}-"));
        let manifest = converge_workload(&c, n);
        c.stop();
        fsck_clean(&img.0, &format!("{n} nodes"));
        kept.push((img, manifest));
    }
    let mut w = String::new();
    for i in 0..kept.len() {
        w += &gfs2_oracle::sh::manifest(&gfs2_oracle::sh::dev(i), &format!("k{i}"));
    }
    let disks: Vec<&Path> = kept.iter().map(|(p, _)| p.0.as_path()).collect();
    let console = run_vm(&w, &disks);
    assert!(
        !console.contains("withdraw"),
        "the kernel withdrew:\n{console}"
    );
    for (i, (_, ours)) in kept.iter().enumerate() {
        compare_manifests(
            &without_rdev(&section(&console, &format!("k{i}"))),
            &without_rdev(ours),
            &format!("the kernel's view of the {}-node image", i + 2),
        );
    }
}

/// Two nodes moving two directories into each other, over and over: the
/// rename lock makes one of each crossing pair fail (EINVAL, or ENOENT once
/// the other moved its source), so no directory ever ends up under itself,
/// cut off from the tree.
#[test]
fn crossed_directory_moves_never_make_a_loop() {
    let img = mkfs(4096, 2, 256, "cross");
    let c = Cluster::start(&img.0, 2, "cross-");
    fs::create_dir(c.path(0, "x")).unwrap();
    fs::create_dir(c.path(0, "y")).unwrap();
    fs::write(c.path(0, "x/in-x"), b"x").unwrap();
    fs::write(c.path(0, "y/in-y"), b"y").unwrap();
    let jobs = vec![
        (c.m(0).to_path_buf(), "x", "y"),
        (c.m(1).to_path_buf(), "y", "x"),
    ];
    all_at_once("crossed moves", jobs, |(m, a, b)| {
        let mut moved = 0;
        // 150 rounds, longer if this node has not moved yet (the other
        // one may have won every race so far on a loaded machine).
        let t = Instant::now();
        for i in 0.. {
            if (i >= 150 && moved > 0) || t.elapsed() > Duration::from_secs(40) {
                break;
            }
            // a into b, wherever b is now; then back to the top.
            for (from, to) in [
                (m.join(a), m.join(b).join(a)),
                (m.join(a).join(b).join(a), m.join(b).join(a)),
            ] {
                match fs::rename(&from, &to) {
                    Ok(()) => moved += 1,
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
                    Err(e) => panic!("rename {} -> {}: {e}", from.display(), to.display()),
                }
            }
            for from in [m.join(b).join(a), m.join(a).join(b).join(a)] {
                match fs::rename(&from, m.join(a)) {
                    Ok(()) => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => {}
                    Err(e) => panic!("rename {} back: {e}", from.display()),
                }
            }
        }
        assert!(moved > 0, "{a} never moved");
    });
    // Both directories still reachable from the root on both nodes, each
    // with its file.
    for node in 0..2 {
        let mut found = std::collections::BTreeMap::new();
        let mut stack = vec![c.m(node).to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    found.insert(e.file_name().to_string_lossy().into_owned(), e.path());
                }
            }
        }
        assert_eq!(
            found.keys().cloned().collect::<Vec<_>>(),
            ["in-x", "in-y"],
            "node {node}"
        );
    }
    c.stop();
    fsck_clean(&img.0, "after the crossed moves");
}

/// What the model says a path is.
#[derive(Clone, Debug, PartialEq)]
enum Obj {
    File(Vec<u8>, Option<Vec<u8>>),
    Dir,
}

/// Random operations on a few shared files and directories, each issued
/// on a random node and checked at once on another random node against a
/// model: contents (read-after-write across nodes), sizes, listings and an
/// xattr. Bounded by count and by time.
#[test]
fn coherence_against_a_model() {
    const NODES: usize = 3;
    const OPS: usize = 3000;
    let img = mkfs(4096, 3, 256, "model");
    let c = Cluster::start(&img.0, NODES, "model-");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut model: std::collections::BTreeMap<String, Obj> = Default::default();
    let dirs = ["", "d0", "d1"];
    let files = ["a", "b", "c", "d0/e", "d0/f", "d1/g"];
    fs::create_dir(c.path(0, "d0")).unwrap();
    fs::create_dir(c.path(1, "d1")).unwrap();
    model.insert("d0".into(), Obj::Dir);
    model.insert("d1".into(), Obj::Dir);
    let t = Instant::now();
    let mut done = 0;
    let mut checks = 0;
    // The last operations, for a failure's message.
    let mut history = std::collections::VecDeque::new();
    while done < OPS && t.elapsed() < Duration::from_secs(240) {
        let on = rng.below(NODES as u64) as usize;
        let check = (on + 1 + rng.below(NODES as u64 - 1) as usize) % NODES;
        let f = files[rng.below(files.len() as u64) as usize].to_string();
        let path = c.path(on, &f);
        let what = rng.below(10);
        let desc = format!("op {done} on node {on}, checked on {check}");
        history.push_back(format!("{done}: kind {what} on {f} on node {on}"));
        if history.len() > 30 {
            history.pop_front();
        }
        match (what, model.get(&f).cloned()) {
            // Create or replace with fresh contents.
            (0..=1, _) => {
                let mut body = vec![0u8; rng.below(20_000) as usize];
                fill(&mut rng, &mut body);
                write_file(&path, &body);
                let x = match model.get(&f) {
                    Some(Obj::File(_, x)) => x.clone(),
                    _ => None,
                };
                model.insert(f.clone(), Obj::File(body, x));
            }
            // Write at an offset (maybe past the end).
            (2..=3, Some(Obj::File(mut body, x))) => {
                let off = rng.below(body.len() as u64 + 8192) as usize;
                let mut chunk = vec![0u8; 1 + rng.below(9000) as usize];
                fill(&mut rng, &mut chunk);
                let (p2, c2) = (path.clone(), chunk.clone());
                bounded(&desc, move || {
                    OpenOptions::new()
                        .write(true)
                        .open(&p2)
                        .unwrap()
                        .write_all_at(&c2, off as u64)
                        .unwrap()
                });
                if body.len() < off + chunk.len() {
                    body.resize(off + chunk.len(), 0);
                }
                body[off..off + chunk.len()].copy_from_slice(&chunk);
                model.insert(f.clone(), Obj::File(body, x));
            }
            // Append.
            (4, Some(Obj::File(mut body, x))) => {
                let chunk = format!("appended by node {on} at op {done}\n").into_bytes();
                let (p2, c2) = (path.clone(), chunk.clone());
                bounded(&desc, move || {
                    OpenOptions::new()
                        .append(true)
                        .open(&p2)
                        .unwrap()
                        .write_all(&c2)
                        .unwrap()
                });
                body.extend_from_slice(&chunk);
                model.insert(f.clone(), Obj::File(body, x));
            }
            // Truncate.
            (5, Some(Obj::File(mut body, x))) => {
                let len = rng.below(body.len() as u64 + 5000) as usize;
                let p2 = path.clone();
                bounded(&desc, move || {
                    OpenOptions::new()
                        .write(true)
                        .open(&p2)
                        .unwrap()
                        .set_len(len as u64)
                        .unwrap()
                });
                body.resize(len, 0);
                model.insert(f.clone(), Obj::File(body, x));
            }
            // Unlink.
            (6, Some(Obj::File(..))) => {
                let p2 = path.clone();
                bounded(&desc, move || fs::remove_file(&p2).unwrap());
                model.remove(&f);
            }
            // Rename onto another name (maybe in another directory,
            // replacing what is there).
            (7, Some(Obj::File(body, x))) => {
                let to = files[rng.below(files.len() as u64) as usize].to_string();
                if to != f {
                    let (a, b) = (path.clone(), c.path(on, &to));
                    bounded(&desc, move || fs::rename(&a, &b).unwrap());
                    model.remove(&f);
                    model.insert(to, Obj::File(body, x));
                }
            }
            // An xattr.
            (8, Some(Obj::File(body, _))) => {
                let v = format!("v{done}");
                setxattr(&path, "user.model", &v);
                model.insert(f.clone(), Obj::File(body, Some(v.into_bytes())));
            }
            // Read on the issuing node too.
            (9, Some(Obj::File(body, _))) => {
                assert_eq!(read_file(&path), body, "{desc}: read of {f} on the writer");
            }
            _ => continue,
        }
        done += 1;
        // Check on the other node, right after the operation returned:
        // the file the operation touched, then a whole directory.
        let picked: Vec<(String, Obj)> = model
            .iter()
            .filter(|(n, _)| **n == f || rng.below(8) == 0)
            .map(|(n, o)| (n.clone(), o.clone()))
            .collect();
        for (name, obj) in &picked {
            let p2 = c.path(check, name);
            match obj {
                Obj::File(body, x) => {
                    let got = read_file(&p2);
                    if got != **body {
                        // What a second look shows tells a stale cache
                        // from data never written.
                        std::thread::sleep(Duration::from_secs(1));
                        let again = read_file(&p2);
                        let ino = fs::metadata(&p2).map(|m| m.ino()).unwrap_or(0);
                        panic!(
                            "{desc} (kind {what}): {name} (inode {ino:#x}) on node {check}: {} bytes, model {} (first difference at {:?}); a second later: {} bytes, {}; the last operations:\n{}",
                            got.len(),
                            body.len(),
                            got.iter().zip(body.iter()).position(|(a, b)| a != b),
                            again.len(),
                            if again == **body { "right" } else { "still wrong" },
                            history.iter().cloned().collect::<Vec<_>>().join("\n")
                        );
                    }
                    let len = fs::metadata(&p2).unwrap().len();
                    assert_eq!(len, body.len() as u64, "{desc}: size of {name}");
                    if rng.below(4) == 0 {
                        assert_eq!(
                            getxattr(&p2, "user.model"),
                            x.clone(),
                            "{desc}: xattr of {name}"
                        );
                    }
                }
                Obj::Dir => assert!(fs::metadata(&p2).unwrap().is_dir()),
            }
            checks += 1;
        }
        if !model.contains_key(&f) {
            assert!(
                !exists(&c.path(check, &f)),
                "{desc}: {f} still on node {check}"
            );
        }
        let d = dirs[rng.below(dirs.len() as u64) as usize];
        let want: Vec<String> = model
            .keys()
            .filter(|k| match k.rsplit_once('/') {
                Some((parent, _)) => parent == d,
                None => d.is_empty(),
            })
            .map(|k| k.rsplit('/').next().unwrap_or(k).to_string())
            .collect();
        assert_eq!(names(&c.path(check, d)), want, "{desc}: listing of /{d}");
    }
    eprintln!(
        "{done} operations, {checks} cross-node checks in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(done >= 1000, "only {done} operations in the time allowed");
    c.stop();
    fsck_clean(&img.0, "after the model run");
}

/// An inode unlinked on one node while open on another: the other still
/// reads it; its blocks come back once it is closed, and fsck finds nothing
/// leaked or freed twice.
#[test]
fn unlinked_on_one_node_while_open_on_another() {
    let img = mkfs(4096, 2, 256, "unl");
    let c = Cluster::start(&img.0, 2, "unl-");
    let free = |node: usize| {
        let m = c.m(node).to_path_buf();
        bounded("statvfs", move || {
            let st = nix_statvfs(&m);
            st.0
        })
    };
    let before = free(0);
    let mut body = vec![0u8; 8 << 20];
    fill(&mut Rng(7), &mut body);
    write_file(&c.path(0, "big"), &body);
    assert!(free(0) < before - 1500, "the file's blocks are in use");
    let mut fh = fs::File::open(c.path(1, "big")).unwrap();
    bounded("unlink", {
        let p = c.path(0, "big");
        move || fs::remove_file(p).unwrap()
    });
    assert!(!exists(&c.path(1, "big")));
    let mut back = Vec::new();
    fh.read_to_end(&mut back).unwrap();
    assert!(back == body, "node 1 reads the unlinked file as it was");
    assert!(free(0) < before - 1500, "blocks freed while still open");
    drop(fh);
    // Node 1 closed it last and frees it: its usage (the master file plus
    // its own changes, as the kernel counts) gains the blocks at once,
    // while node 0's allocation of them reaches the master only when node
    // 0 folds its changes in. fsck below (with its statfs check) finds
    // them neither leaked nor freed twice.
    let t = Instant::now();
    while free(1) < before + 1500 {
        assert!(
            t.elapsed() < BOUND,
            "node 1 never freed the file after its last close ({} free, {before} before)",
            free(1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.stop();
    fsck_clean(&img.0, "after the unlinked-while-open run");
}

/// Free blocks of the filesystem at `p` (`statvfs`), and the block size.
fn nix_statvfs(p: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs fills a zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (st.f_bfree, st.f_bsize)
}
