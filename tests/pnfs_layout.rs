//! The pNFS layout service on images made by gfs2-utils' mkfs.gfs2, with
//! files written through the library's write path. The oracle for every
//! extent is the device itself: the bytes at a layout's storage offset must
//! be the file's bytes at its file offset as the filesystem reads them; the
//! oracle for allocation and consistency is gfs2-utils' `fsck.gfs2 -n` and
//! the free block count; recalls are driven by a second node on `lock_mem`.

mod common;

use common::*;
use gfs2_lockproto::mem::MemLockManager;
use gfs2fuse::dev::file::{FileDevice, OpenFlags};
use gfs2fuse::dev::BlockDevice;
use gfs2fuse::fs::{Fs, MountOptions};
use gfs2fuse::pnfs::{
    ClientId, Commit, ExtentState, IoMode, Layout, LayoutBackend, LayoutError, LayoutOptions,
    LayoutService, Recall, RecallSink,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn open(img: &TempPath) -> Arc<Fs> {
    let dev = FileDevice::open(&img.0, OpenFlags::default()).unwrap();
    Fs::mount(Arc::new(dev), MountOptions::default()).unwrap()
}

fn create(fs: &Fs, name: &str) -> u64 {
    fs.mknod(fs.root(), name.as_bytes(), 0o100644, 0, 0, 0, 0, None)
        .unwrap()
        .ino
}

/// A block of recognisable bytes.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut b = vec![0u8; len];
    fill(&mut r, &mut b);
    b
}

/// Every extent of `l` in order, without gaps, from the layout's offset.
fn check_shape(l: &Layout) {
    let mut at = l.offset;
    for e in &l.extents {
        assert_eq!(e.file_offset, at, "gap or overlap in {l:?}");
        assert!(e.length > 0);
        at = at.saturating_add(e.length);
    }
    let end = if l.length == u64::MAX {
        u64::MAX
    } else {
        l.offset + l.length
    };
    assert_eq!(at, end, "extents do not cover the layout: {l:?}");
}

/// The oracle: what the device holds at each data extent's storage offset
/// is what the filesystem reads at its file offset; holes read as zeros.
fn check_against_device(fs: &Fs, l: &Layout) {
    let size = fs.getattr(l.ino).unwrap().size;
    let dev = fs.device();
    for e in &l.extents {
        if e.file_offset >= size {
            continue;
        }
        let n = e.length.min(size - e.file_offset).min(64 << 20) as usize;
        let file = fs.read(l.ino, e.file_offset, n).unwrap();
        assert_eq!(file.len(), n);
        match e.state {
            ExtentState::NoneData => {
                assert!(file.iter().all(|b| *b == 0), "a hole with data: {e:?}");
            }
            _ => {
                let mut disk = vec![0u8; n];
                dev.read_at(&mut disk, e.storage_offset).unwrap();
                assert!(disk == file, "device at {e:?} differs from the file");
            }
        }
    }
}

fn data_blocks(l: &Layout, bs: u64) -> u64 {
    l.extents
        .iter()
        .filter(|e| e.state != ExtentState::NoneData)
        .map(|e| e.length / bs)
        .sum()
}

#[test]
fn read_layouts_are_the_files_blocks() {
    let img = mkfs(4096, 1, 256, "pl-read");
    let fs = open(&img);
    let svc = LayoutService::start(&fs, LayoutOptions::default());
    let bs = 4096u64;

    // Stuffed: nothing to hand out.
    let small = create(&fs, "small");
    fs.write(small, 0, b"stuffed data").unwrap();
    assert!(matches!(
        svc.layout_get(1, small, 0, 4096, 1, IoMode::Read),
        Err(LayoutError::Unavailable)
    ));
    // Journaled data (chattr +j): its data is in the log first.
    let jd = create(&fs, "jdata");
    fs.set_fsflags(jd, 0, 0x0000_4000).unwrap();
    fs.write(jd, 0, &pattern(9, 3 * 4096)).unwrap();
    assert_eq!(fs.fsflags(jd).unwrap() & 0x0000_4000, 0x0000_4000);
    for mode in [IoMode::Read, IoMode::ReadWrite] {
        assert!(matches!(
            svc.layout_get(1, jd, 0, 4096, 1, mode),
            Err(LayoutError::Unavailable)
        ));
    }
    // Not a regular file.
    assert!(matches!(
        svc.layout_get(1, fs.root(), 0, 4096, 1, IoMode::Read),
        Err(LayoutError::Unavailable)
    ));

    // Sparse: data at 0, a hole, 3 blocks at 1 MiB, a partial block at 5 MiB.
    let sparse = create(&fs, "sparse");
    let a = pattern(1, 4096);
    let b = pattern(2, 3 * 4096);
    let c = pattern(3, 1000);
    fs.write(sparse, 0, &a).unwrap();
    fs.write(sparse, 1 << 20, &b).unwrap();
    fs.write(sparse, 5 << 20, &c).unwrap();
    let l = svc
        .layout_get(1, sparse, 0, u64::MAX, 1, IoMode::Read)
        .unwrap();
    check_shape(&l);
    check_against_device(&fs, &l);
    assert_eq!(data_blocks(&l, bs), 5, "{l:?}");
    let states: Vec<ExtentState> = l.extents.iter().map(|e| e.state).collect();
    // data, hole, data (the 3 blocks may be one extent or more), hole, data, hole to the end.
    assert_eq!(states.first(), Some(&ExtentState::ReadData));
    assert_eq!(states.last(), Some(&ExtentState::NoneData));
    assert_eq!(l.extents.last().unwrap().file_offset, (5 << 20) + bs);
    assert_eq!(
        l.extents[1],
        gfs2fuse::pnfs::Extent {
            file_offset: bs,
            length: (1 << 20) - bs,
            storage_offset: 0,
            state: ExtentState::NoneData
        }
    );
    // An unaligned range is rounded out to blocks and covers what was asked.
    let l2 = svc
        .layout_get(1, sparse, (1 << 20) + 100, 5000, 5000, IoMode::Read)
        .unwrap();
    check_shape(&l2);
    assert_eq!(l2.offset, 1 << 20);
    assert_eq!(l2.length, 2 * bs);
    assert_eq!(l2.extents.len(), 1);
    assert_eq!(l2.extents[0].state, ExtentState::ReadData);
    check_against_device(&fs, &l2);

    // Multi-height: a block at 10 GiB needs a tree of height 3 at 4 KiB.
    let far = create(&fs, "far");
    let d = pattern(4, 8192);
    fs.write(far, 10 << 30, &d).unwrap();
    fs.write(far, 0, &a).unwrap();
    let l = svc
        .layout_get(2, far, 0, u64::MAX, 1, IoMode::Read)
        .unwrap();
    check_shape(&l);
    check_against_device(&fs, &l);
    assert_eq!(data_blocks(&l, bs), 3, "{l:?}");
    let at_far: Vec<_> = l
        .extents
        .iter()
        .filter(|e| e.file_offset == 10 << 30)
        .collect();
    assert_eq!(at_far.len(), 1, "{l:?}");
    assert_eq!(at_far[0].length, 8192);

    // Fresh allocation through the write path, in one go: 4 MiB.
    let big = create(&fs, "big");
    let e = pattern(5, 4 << 20);
    fs.write(big, 0, &e).unwrap();
    let l = svc
        .layout_get(3, big, 0, 4 << 20, 4 << 20, IoMode::Read)
        .unwrap();
    check_shape(&l);
    check_against_device(&fs, &l);
    assert_eq!(data_blocks(&l, bs), 1024);
    assert!(l.extents.iter().all(|e| e.state == ExtentState::ReadData));

    // Bad ranges.
    assert!(matches!(
        svc.layout_get(1, big, 0, 0, 0, IoMode::Read),
        Err(LayoutError::BadRange)
    ));
    assert!(matches!(
        svc.layout_get(1, big, 0, 10, 20, IoMode::Read),
        Err(LayoutError::BadRange)
    ));

    // A height-1 file whose block pointers gfs2_edit lists after unmount.
    let h1 = create(&fs, "h1");
    fs.write(h1, 0, &pattern(6, 3 * 4096)).unwrap();
    fs.write(h1, 100 * 4096, &pattern(7, 2 * 4096 + 10))
        .unwrap();
    let lh1 = svc.layout_get(4, h1, 0, u64::MAX, 1, IoMode::Read).unwrap();
    check_shape(&lh1);

    for c in 1..=4 {
        svc.client_gone(c);
    }
    assert!(svc.holders(big).is_empty());
    drop(svc);
    fs.unmount().unwrap();
    fsck_clean(&img.0, "after read layouts");

    // gfs2-utils' view of h1's pointers: "IDX: 0xIDX => 0xBLK / BLK (data offset ...".
    let out = std::process::Command::new(tool("gfs2_edit"))
        .args(["-p", &h1.to_string()])
        .arg(&img.0)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(at height 0 of 1)"), "{text}");
    let mut edit: Vec<(u64, u64)> = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 4 && f[2] == "=>" && f[0].ends_with(':') {
            let idx = u64::from_str_radix(f[1].trim_start_matches("0x"), 16).unwrap();
            let blk = u64::from_str_radix(f[3].trim_start_matches("0x"), 16).unwrap();
            edit.push((idx * bs, blk * bs));
        }
    }
    let mut ours: Vec<(u64, u64)> = Vec::new();
    for e in lh1
        .extents
        .iter()
        .filter(|e| e.state == ExtentState::ReadData)
    {
        for i in 0..e.length / bs {
            ours.push((e.file_offset + i * bs, e.storage_offset + i * bs));
        }
    }
    assert_eq!(edit.len(), 6, "{text}");
    assert_eq!(ours, edit, "layout of h1 against gfs2_edit -p {h1}");
}

#[test]
fn read_layouts_at_every_block_size() {
    for bs in [512u32, 1024, 2048] {
        let img = mkfs(bs, 1, 128, &format!("pl-bs{bs}"));
        let fs = open(&img);
        let svc = LayoutService::start(&fs, LayoutOptions::default());
        let f = create(&fs, "f");
        // Far enough for several levels of indirection at this block size.
        for (i, off) in [0u64, 300_000, 9_000_000, 700_000_000].iter().enumerate() {
            fs.write(f, *off, &pattern(10 + i as u64, 3000)).unwrap();
        }
        let l = svc.layout_get(1, f, 0, u64::MAX, 1, IoMode::Read).unwrap();
        check_shape(&l);
        check_against_device(&fs, &l);
        let expect: u64 = [0u64, 300_000, 9_000_000, 700_000_000]
            .iter()
            .map(|o| (o + 3000).div_ceil(bs as u64) - o / bs as u64)
            .sum();
        assert_eq!(data_blocks(&l, bs as u64), expect, "bs {bs}: {l:?}");
        svc.client_gone(1);
        drop(svc);
        fs.unmount().unwrap();
        fsck_clean(&img.0, &format!("read layouts at {bs}"));
    }
}

/// Write `data` at a layout's storage offsets for file range `at..`, as a
/// pNFS client does.
fn client_write(dev: &dyn BlockDevice, l: &Layout, at: u64, data: &[u8]) {
    let mut done = 0usize;
    for e in &l.extents {
        let (s, end) = (e.file_offset, e.file_offset + e.length);
        let pos = at + done as u64;
        if pos < s || pos >= end || done == data.len() {
            continue;
        }
        assert_ne!(e.state, ExtentState::NoneData, "writing into a hole: {e:?}");
        assert_ne!(e.state, ExtentState::ReadData);
        let n = ((end - pos) as usize).min(data.len() - done);
        dev.write_at(&data[done..done + n], e.storage_offset + (pos - s))
            .unwrap();
        done += n;
    }
    assert_eq!(done, data.len(), "layout {l:?} does not cover the write");
}

#[test]
fn write_layout_then_commit() {
    let img = mkfs(4096, 1, 256, "pl-rw");
    let fs = open(&img);
    let svc = LayoutService::start(&fs, LayoutOptions::default());
    let bs = 4096u64;

    // A new (empty, stuffed) file: the layout allocates exactly the range.
    let f = create(&fs, "new");
    let free0 = fs.statfs().unwrap().bfree;
    let l = svc
        .layout_get(7, f, 0, 1 << 20, 1 << 20, IoMode::ReadWrite)
        .unwrap();
    check_shape(&l);
    assert_eq!((l.offset, l.length), (0, 1 << 20));
    assert!(
        l.extents
            .iter()
            .all(|e| e.state == ExtentState::InvalidData),
        "{l:?}"
    );
    assert_eq!(data_blocks(&l, bs), 256);
    // Zeroed on the disk before the grant.
    for e in &l.extents {
        let mut b = vec![1u8; e.length as usize];
        fs.device().read_at(&mut b, e.storage_offset).unwrap();
        assert!(b.iter().all(|x| *x == 0), "stale data in {e:?}");
    }
    // Not yet part of the file's size; the blocks are allocated.
    assert_eq!(fs.getattr(f).unwrap().size, 0);
    let used = free0 - fs.statfs().unwrap().bfree;
    // 256 data blocks: at 4 KiB the dinode's 483 pointers map them all
    // (height 1, no indirect block).
    assert_eq!(used, 256, "blocks allocated for a 1 MiB layout");

    // The client writes 700,000 bytes at the storage offsets and commits.
    let data = pattern(20, 700_000);
    client_write(fs.device().as_ref(), &l, 0, &data);
    let attr = svc
        .layout_commit(
            7,
            f,
            Commit {
                offset: 0,
                length: 700_000,
                last_write: Some(699_999),
                mtime: Some((1_700_000_000, 5)),
            },
        )
        .unwrap();
    assert_eq!(attr.size, 700_000);
    assert_eq!(attr.mtime, (1_700_000_000, 5));
    assert_eq!(fs.read(f, 0, 1 << 20).unwrap(), data);
    // A commit past what the client was granted is refused.
    assert!(matches!(
        svc.layout_commit(
            7,
            f,
            Commit {
                offset: 0,
                length: 2 << 20,
                last_write: Some((2 << 20) - 1),
                mtime: None
            }
        ),
        Err(LayoutError::BadRange)
    ));
    // Another client has no layout to commit.
    assert!(matches!(
        svc.layout_commit(
            8,
            f,
            Commit {
                offset: 0,
                length: 10,
                last_write: Some(9),
                mtime: None
            }
        ),
        Err(LayoutError::BadRange)
    ));
    // A read layout of the committed file now shows the client's data; the
    // uncommitted tail past the size is still invalid.
    let r = svc.layout_get(9, f, 0, u64::MAX, 1, IoMode::Read).unwrap();
    check_shape(&r);
    check_against_device(&fs, &r);
    // Return: the 81 blocks past EOF that no commit covered are freed.
    svc.layout_return(7, Some(f), 0, u64::MAX).unwrap();
    svc.layout_return(9, Some(f), 0, u64::MAX).unwrap();
    assert!(svc.holders(f).is_empty());
    let used = free0 - fs.statfs().unwrap().bfree;
    assert_eq!(used, 700_000u64.div_ceil(bs), "blocks kept after return");
    assert_eq!(fs.getattr(f).unwrap().blocks * 512 / bs, used + 1);
    drop(svc);
    fs.unmount().unwrap();
    fsck_clean(&img.0, "after commit and return");

    // Remounted: the data is the client's.
    let fs = open(&img);
    let f2 = fs.lookup(fs.root(), b"new").unwrap();
    assert_eq!(f2.size, 700_000);
    assert_eq!(fs.read(f2.ino, 0, 1 << 20).unwrap(), data);
    fs.unmount().unwrap();
}

#[test]
fn uncommitted_layouts_leak_nothing() {
    let img = mkfs(4096, 1, 256, "pl-leak");
    let fs = open(&img);
    let opts = LayoutOptions {
        max_alloc: 2 << 20,
        ..Default::default()
    };
    let svc = LayoutService::start(&fs, opts);
    let f = create(&fs, "f");
    fs.write(f, 0, &pattern(30, 10_000)).unwrap();
    // A big sparse file with data far away: a hole inside, then past EOF.
    fs.write(f, 3 << 30, &pattern(31, 100)).unwrap();
    let before = fs.getattr(f).unwrap();
    let free0 = fs.statfs().unwrap().bfree;

    // Asked for 64 MiB past EOF: granted 2 MiB (the cap), at least minlength.
    let l = svc
        .layout_get(1, f, 4 << 30, 64 << 20, 4096, IoMode::ReadWrite)
        .unwrap();
    check_shape(&l);
    assert_eq!((l.offset, l.length), (4 << 30, 2 << 20));
    // And a hole inside the file, with the data around it.
    let l2 = svc
        .layout_get(2, f, 8192, 1 << 20, 1 << 20, IoMode::ReadWrite)
        .unwrap();
    check_shape(&l2);
    assert_eq!(l2.extents[0].state, ExtentState::ReadWriteData);
    assert!(l2.extents[1..]
        .iter()
        .all(|e| e.state == ExtentState::InvalidData));
    assert!(fs.statfs().unwrap().bfree < free0);
    // A minimum beyond the cap is still honoured.
    let l3 = svc
        .layout_get(3, f, 5 << 30, 8 << 20, 3 << 20, IoMode::ReadWrite)
        .unwrap();
    assert_eq!(l3.length, 3 << 20);
    // The clients write but never commit, then go away.
    client_write(fs.device().as_ref(), &l, 4 << 30, &pattern(32, 50_000));
    for c in [1, 2, 3] {
        svc.client_gone(c);
    }
    let after = fs.getattr(f).unwrap();
    assert_eq!(after.size, before.size);
    // Past EOF everything went back; inside EOF the zeroed blocks stay the
    // file's (they read as the hole did).
    let inside = ((1u64 << 20) - 4096).div_ceil(4096);
    assert_eq!(free0 - fs.statfs().unwrap().bfree, inside);
    assert_eq!(fs.read(f, 8192, 1 << 20).unwrap(), {
        let mut v = pattern(30, 10_000)[8192..].to_vec();
        v.resize(1 << 20, 0);
        v
    });
    drop(svc);
    fs.unmount().unwrap();
    fsck_clean(&img.0, "after uncommitted layouts");
}

#[test]
fn crash_after_grant_is_consistent() {
    let img = mkfs(4096, 1, 256, "pl-crash");
    let fs = open(&img);
    let svc = LayoutService::start(&fs, LayoutOptions::default());
    let f = create(&fs, "f");
    fs.write(f, 0, &pattern(40, 5000)).unwrap();
    let l = svc
        .layout_get(1, f, 1 << 20, 4 << 20, 4 << 20, IoMode::ReadWrite)
        .unwrap();
    client_write(fs.device().as_ref(), &l, 1 << 20, &pattern(41, 4 << 20));
    // The node dies here: the image as it is now, journal and all.
    let crashed = TempPath(img.0.with_extension("crashed"));
    std::fs::copy(&img.0, &crashed.0).unwrap();
    drop(svc);
    fs.unmount().unwrap();
    // Another mount replays the journal; then fsck finds nothing wrong: the
    // blocks are the file's, past its end.
    let fs = open(&crashed);
    let a = fs.lookup(fs.root(), b"f").unwrap();
    assert_eq!(a.size, 5000);
    // The dinode, the 2 old data blocks, the 1024 granted blocks and the 3
    // indirect blocks of the height-2 tree that maps up to block 1280
    // (509 pointers each).
    assert_eq!(a.blocks * 512 / 4096, 1 + 2 + 1024 + 3);
    fs.unmount().unwrap();
    fsck_clean(&crashed.0, "crashed after a grant, replayed");
}

/// A metadata server that records what it is told.
#[derive(Default)]
struct Sink {
    recalls: Mutex<Vec<Recall>>,
    fenced: Mutex<Vec<ClientId>>,
}

impl RecallSink for Sink {
    fn recall(&self, r: Recall) {
        self.recalls.lock().unwrap().push(r);
    }
    fn fence(&self, client: ClientId) {
        self.fenced.lock().unwrap().push(client);
    }
}

fn wait_for(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn mem_node(dev: &Arc<OverlayDevice>, mgr: &MemLockManager, jid: u32) -> Arc<Fs> {
    let opts = MountOptions {
        lock_module: Some(mgr.proto()),
        locktable: Some("test:pnfs".into()),
        jid: Some(jid),
        ..Default::default()
    };
    Fs::mount(dev.clone(), opts).unwrap()
}

#[test]
fn recalls_follow_the_glock() {
    let img = mkfs(4096, 2, 128, "pl-recall");
    let dev = Arc::new(OverlayDevice::new(Arc::new(std::fs::read(&img.0).unwrap())));
    let mgr = MemLockManager::new();
    let a = mem_node(&dev, &mgr, 0);
    let b = mem_node(&dev, &mgr, 1);
    let opts = LayoutOptions {
        lease: Duration::from_millis(400),
        ..Default::default()
    };
    let svc = LayoutService::start(&a, opts);
    let sink = Arc::new(Sink::default());
    svc.set_recall_sink(sink.clone());
    let f = create(&a, "f");

    // 1. Another node writes while a client holds a read-write layout: the
    // client is recalled, the write waits until the layout is returned.
    let l = svc
        .layout_get(1, f, 0, 1 << 20, 1 << 20, IoMode::ReadWrite)
        .unwrap();
    let data = pattern(50, 300_000);
    client_write(dev.as_ref(), &l, 0, &data);
    let b2 = b.clone();
    let w = std::thread::spawn(move || b2.write(f, 400_000, b"from node b").unwrap());
    wait_for("a recall", Duration::from_secs(5), || {
        !sink.recalls.lock().unwrap().is_empty()
    });
    let r = sink.recalls.lock().unwrap()[0];
    assert_eq!((r.client, r.ino, r.iomode), (1, f, IoMode::ReadWrite));
    assert!(svc.recalling(f));
    // New layouts are refused meanwhile.
    assert!(matches!(
        svc.layout_get(2, f, 0, 4096, 1, IoMode::Read),
        Err(LayoutError::TryLater)
    ));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!w.is_finished(), "node B wrote under a layout");
    // The client commits what it wrote, then returns.
    svc.layout_commit(
        1,
        f,
        Commit {
            offset: 0,
            length: 300_000,
            last_write: Some(299_999),
            mtime: None,
        },
    )
    .unwrap();
    svc.layout_return(1, Some(f), 0, u64::MAX).unwrap();
    w.join().unwrap();
    let mut expect = data.clone();
    expect.resize(400_000, 0);
    expect.extend_from_slice(b"from node b");
    assert_eq!(b.read(f, 0, 1 << 20).unwrap(), expect);
    assert!(sink.fenced.lock().unwrap().is_empty());

    // 2. A client that never answers is fenced after two leases; then the
    // other node proceeds, and the committed data is intact.
    sink.recalls.lock().unwrap().clear();
    let l = svc
        .layout_get(3, f, 1 << 20, 1 << 20, 1 << 20, IoMode::ReadWrite)
        .unwrap();
    let more = pattern(51, 8192);
    client_write(dev.as_ref(), &l, 1 << 20, &more);
    svc.layout_commit(
        3,
        f,
        Commit {
            offset: 1 << 20,
            length: 8192,
            last_write: Some((1 << 20) + 8191),
            mtime: None,
        },
    )
    .unwrap();
    let t0 = Instant::now();
    let b2 = b.clone();
    let w = std::thread::spawn(move || b2.write(f, 0, b"B").unwrap());
    wait_for("the fence", Duration::from_secs(10), || {
        sink.fenced.lock().unwrap().contains(&3)
    });
    w.join().unwrap();
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(700),
        "node B went on after {waited:?}, before two leases"
    );
    assert_eq!(sink.recalls.lock().unwrap().len(), 1);
    assert!(svc.holders(f).is_empty());
    let got = b.read(f, 0, 3 << 20).unwrap();
    assert_eq!(got.len(), (1 << 20) + 8192);
    assert_eq!(got[0], b'B');
    assert_eq!(&got[1..300_000], &data[1..]);
    assert_eq!(&got[1 << 20..], &more[..]);

    // 3. A read layout: reads here and on the other node go on without a
    // recall (shared is compatible); a local change recalls it.
    sink.recalls.lock().unwrap().clear();
    a.write(f, 5000, b"x").unwrap();
    let gl = gfs2_lockproto::ResName::new(gfs2_lockproto::lm_type::INODE, f);
    assert_eq!(a.glocks().held_mode(gl), Some(gfs2_lockproto::Mode::EX));
    let _l = svc.layout_get(4, f, 0, 4096, 4096, IoMode::Read).unwrap();
    assert_eq!(a.read(f, 0, 1).unwrap(), b"B");
    // B's read makes A go down to shared, which the read layout allows.
    assert_eq!(b.read(f, 5000, 1).unwrap(), b"x");
    // (A records its new mode just after the lock manager granted B.)
    wait_for("A down to PR", Duration::from_secs(5), || {
        a.glocks().held_mode(gl) == Some(gfs2_lockproto::Mode::PR)
    });
    assert!(sink.recalls.lock().unwrap().is_empty());
    assert!(!svc.recalling(f));
    let a2 = a.clone();
    let w = std::thread::spawn(move || a2.write(f, 1, b"A").unwrap());
    wait_for("a recall by a local write", Duration::from_secs(5), || {
        !sink.recalls.lock().unwrap().is_empty()
    });
    assert!(!w.is_finished());
    svc.layout_return(4, None, 0, u64::MAX).unwrap();
    w.join().unwrap();
    assert_eq!(b.read(f, 0, 2).unwrap(), b"BA");

    // 4. An operation that waits for a pinned file holds nothing else
    // meanwhile: a link of the file into the root directory (the root's
    // glock sorts first) does not keep the root from the other node.
    // (A lease long enough that no fence ends the wait here.)
    svc.set_lease(Duration::from_secs(60));
    sink.recalls.lock().unwrap().clear();
    let _l = svc
        .layout_get(5, f, 0, 4096, 4096, IoMode::ReadWrite)
        .unwrap();
    let a2 = a.clone();
    let root = a.root();
    let w = std::thread::spawn(move || a2.link(f, root, b"f-link").unwrap());
    wait_for("a recall by a local link", Duration::from_secs(5), || {
        !sink.recalls.lock().unwrap().is_empty()
    });
    let other = create(&b, "created-meanwhile");
    assert!(!w.is_finished(), "linked under a layout");
    svc.layout_return(5, Some(f), 0, u64::MAX).unwrap();
    w.join().unwrap();
    assert_eq!(b.lookup(b.root(), b"f-link").unwrap().ino, f);
    assert_eq!(a.lookup(a.root(), b"created-meanwhile").unwrap().ino, other);

    drop(svc);
    a.unmount().unwrap();
    b.unmount().unwrap();
    // The shared disk as both nodes left it.
    let out = TempPath(img.0.with_extension("after"));
    let mut bytes = vec![0u8; dev.size() as usize];
    dev.read_at(&mut bytes, 0).unwrap();
    std::fs::write(&out.0, bytes).unwrap();
    fsck_clean(&out.0, "after recalls on lock_mem");
}

#[test]
fn unmount_frees_what_no_client_committed() {
    let img = mkfs(4096, 1, 256, "pl-umount");
    let fs = open(&img);
    let svc = LayoutService::start(&fs, LayoutOptions::default());
    // One service per mount.
    assert!(Arc::ptr_eq(
        &svc,
        &LayoutService::start(&fs, LayoutOptions::default())
    ));
    let f = create(&fs, "f");
    fs.write(f, 0, &pattern(60, 6000)).unwrap();
    fs.sync().unwrap();
    let free0 = fs.statfs().unwrap().bfree;
    let l = svc
        .layout_get(1, f, 8192, 8 << 20, 8 << 20, IoMode::ReadWrite)
        .unwrap();
    assert_eq!(l.length, 8 << 20);
    assert!(fs.statfs().unwrap().bfree < free0);
    // The daemon unmounts with the layout still out.
    fs.unmount().unwrap();
    assert!(svc.holders(f).is_empty());
    drop(svc);
    fsck_clean(&img.0, "unmounted with a layout out");
    // Every granted block is free again; the layout reached block 2050,
    // past the dinode's 483 pointers, so the tree grew to height 2 and
    // keeps the indirect block that now maps blocks 0 and 1 (a tree never
    // gets lower, in the kernel either, but on truncation to nothing).
    let fs = open(&img);
    assert_eq!(fs.statfs().unwrap().bfree, free0 - 1);
    let a = fs.getattr(f).unwrap();
    assert_eq!((a.size, a.blocks * 512 / 4096), (6000, 1 + 2 + 1));
    assert_eq!(fs.read(f, 0, 10_000).unwrap(), pattern(60, 6000));
    fs.unmount().unwrap();
}

#[test]
fn damaged_pointers_are_errors() {
    let img = mkfs(4096, 1, 64, "pl-bad");
    let dev = Arc::new(OverlayDevice::new(Arc::new(std::fs::read(&img.0).unwrap())));
    let fs = Fs::mount(dev.clone(), MountOptions::default()).unwrap();
    let f = create(&fs, "f");
    fs.write(f, 0, &pattern(70, 3 * 4096)).unwrap();
    fs.unmount().unwrap();
    // The dinode's second pointer (after its 232-byte header) now points
    // far past the end of the 64 MiB device, the third one just at its end.
    dev.poke(f * 4096 + 232 + 8, &(1u64 << 40).to_be_bytes());
    dev.poke(f * 4096 + 232 + 16, &(dev.size() / 4096).to_be_bytes());
    let fs = Fs::mount(dev.clone(), MountOptions::default()).unwrap();
    let svc = LayoutService::start(&fs, LayoutOptions::default());
    for off in [4096u64, 8192] {
        match svc.layout_get(1, f, off, 4096, 4096, IoMode::Read) {
            Err(LayoutError::Fs(e)) => assert!(e.to_string().contains("beyond"), "{e}"),
            other => panic!("a pointer beyond the device gave {other:?}"),
        }
    }
    // The sound first block still maps; nothing is held after the errors.
    let l = svc.layout_get(1, f, 0, 4096, 4096, IoMode::Read).unwrap();
    check_against_device(&fs, &l);
    svc.client_gone(1);
    assert!(svc.holders(f).is_empty());
    fs.unmount().unwrap();
}
