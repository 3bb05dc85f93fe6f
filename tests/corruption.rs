//! Random corruption: flip bytes in metadata blocks of gfs2-utils-made
//! images, then mount and walk everything through the library. The
//! filesystem must never panic or hang; a bad superblock must refuse the
//! mount with a message; damage stays local to the inode it hits.

mod common;

use common::*;
use gfs2fuse::dev::BlockDevice;
use gfs2fuse::fs::{Fs, MountOptions};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// A small deterministic PRNG (xorshift64*), so failures reproduce from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Blocks that start with the GFS2 magic: the metadata of the image.
fn metadata_blocks(img: &[u8], bsize: usize) -> Vec<u64> {
    img.chunks(bsize)
        .enumerate()
        .filter(|(_, b)| b.len() >= 4 && b[..4] == [0x01, 0x16, 0x19, 0x70])
        .map(|(i, _)| i as u64)
        .collect()
}

fn image(bsize: u32, tag: &str) -> (Arc<Vec<u8>>, TempPath) {
    let img = mkfs(bsize, 2, 64, tag);
    (Arc::new(std::fs::read(&img.0).unwrap()), img)
}

/// One trial: mount and walk the root and master trees on a damaged copy.
fn trial(base: &Arc<Vec<u8>>, pokes: &[(u64, u8)]) -> Result<(usize, usize), String> {
    let dev = OverlayDevice::new(base.clone());
    for &(off, v) in pokes {
        dev.poke(off, &[v]);
    }
    let dev: Arc<dyn BlockDevice> = Arc::new(dev);
    match Fs::mount(dev, MountOptions::default()) {
        Err(e) => Err(e.to_string()),
        Ok(fs) => {
            let (a, b) = walk(&fs, fs.root(), 10_000);
            let (c, d) = walk(&fs, fs.superblock().master_dir.addr, 10_000);
            let _ = fs.statfs();
            fs.unmount().unwrap();
            Ok((a + c, b + d))
        }
    }
}

/// Run a trial on its own thread with a deadline: a hang fails the test.
fn bounded(base: &Arc<Vec<u8>>, pokes: Vec<(u64, u8)>) -> Result<(usize, usize), String> {
    let (tx, rx) = mpsc::channel();
    let b = base.clone();
    let p = pokes.clone();
    std::thread::spawn(move || {
        let _ = tx.send(trial(&b, &p));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("trial hung: pokes {pokes:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("trial panicked: pokes {pokes:?}"),
    }
}

#[test]
fn random_metadata_byte_flips_never_panic_or_hang() {
    let start = Instant::now();
    let mut trials = 0;
    let mut refused = 0;
    for (bsize, seed) in [(1024u32, 0x1234_5678u64), (4096, 0x9abc_def1)] {
        let (base, _img) = image(bsize, &format!("corrupt{bsize}"));
        let clean = bounded(&base, vec![]).expect("clean image mounts");
        assert_eq!(clean.1, 0, "errors walking the clean image");
        let meta = metadata_blocks(&base, bsize as usize);
        assert!(
            meta.len() > 20,
            "too few metadata blocks found: {}",
            meta.len()
        );
        let mut rng = Rng(seed);
        for _ in 0..1500 {
            let n = 1 + rng.below(8) as usize;
            let pokes = (0..n)
                .map(|_| {
                    let blk = meta[rng.below(meta.len() as u64) as usize];
                    // Bias towards headers and the fields right after them.
                    let within = if rng.below(2) == 0 {
                        rng.below(256)
                    } else {
                        rng.below(bsize as u64)
                    };
                    (blk * bsize as u64 + within, rng.next() as u8)
                })
                .collect();
            if bounded(&base, pokes).is_err() {
                refused += 1;
            }
            trials += 1;
        }
    }
    // Extra images (e.g. kernel-populated ones) named in GFS2_EXTRA_IMAGES.
    for path in std::env::var("GFS2_EXTRA_IMAGES")
        .unwrap_or_default()
        .split(',')
    {
        if path.is_empty() {
            continue;
        }
        let base = Arc::new(std::fs::read(path).unwrap());
        let bsize = u32::from_be_bytes(base[65536 + 36..65536 + 40].try_into().unwrap());
        let clean = bounded(&base, vec![]).expect("clean image mounts");
        assert_eq!(clean.1, 0, "errors walking {path}");
        let meta = metadata_blocks(&base, bsize as usize);
        let mut rng = Rng(0x5eed ^ base.len() as u64);
        for _ in 0..300 {
            let n = 1 + rng.below(8) as usize;
            let pokes = (0..n)
                .map(|_| {
                    let blk = meta[rng.below(meta.len() as u64) as usize];
                    (
                        blk * bsize as u64 + rng.below(bsize as u64),
                        rng.next() as u8,
                    )
                })
                .collect();
            if bounded(&base, pokes).is_err() {
                refused += 1;
            }
            trials += 1;
        }
    }
    eprintln!(
        "{trials} corruption trials ({refused} refused to mount) in {:?}",
        start.elapsed()
    );
}

#[test]
fn damaged_superblock_refuses_the_mount_clearly() {
    let (base, _img) = image(4096, "badsb");
    let sb = 65536u64;
    // Magic, format, block size (0, 1, 513, 4095, 4097: gfs2-utils' fsck
    // crashes on these) and a block size shift that does not match.
    let cases: Vec<(Vec<(u64, u8)>, &str)> = vec![
        (vec![(sb, 0)], "not a GFS2 filesystem"),
        (vec![(sb + 27, 0)], "format"),
        (
            vec![(sb + 36, 0), (sb + 37, 0), (sb + 38, 0), (sb + 39, 0)],
            "block size",
        ),
        (
            vec![(sb + 36, 0), (sb + 37, 0), (sb + 38, 0), (sb + 39, 1)],
            "block size",
        ),
        (
            vec![(sb + 36, 0), (sb + 37, 0), (sb + 38, 2), (sb + 39, 1)],
            "block size",
        ),
        (vec![(sb + 38, 0x0f), (sb + 39, 0xff)], "block size"),
        (vec![(sb + 38, 0x10), (sb + 39, 0x01)], "block size"),
        (vec![(sb + 43, 11)], "shift"),
        (vec![(sb + 48 + 8, 0xff)], "outside the device"),
    ];
    for (pokes, want) in cases {
        let err = bounded(&base, pokes.clone()).expect_err("mount of a damaged superblock");
        assert!(
            err.contains(want),
            "pokes {pokes:?}: {err:?} lacks {want:?}"
        );
    }
}

#[test]
fn damaged_inode_gives_eio_for_that_inode_only() {
    let (base, _img) = image(4096, "badino");
    let dev = OverlayDevice::new(base.clone());
    let fs = Fs::mount(
        Arc::new(OverlayDevice::new(base.clone())),
        MountOptions::default(),
    )
    .unwrap();
    let master = fs.superblock().master_dir.addr;
    let inum = fs.lookup(master, b"inum").unwrap().ino;
    let quota = fs.lookup(master, b"quota").unwrap().ino;
    fs.unmount().unwrap();
    // Break the "inum" dinode's magic.
    dev.poke(inum * 4096, &[0xde]);
    let fs = Fs::mount(Arc::new(dev), MountOptions::default()).unwrap();
    let e = fs.lookup(master, b"inum").unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert!(fs.lookup(master, b"quota").is_ok());
    assert!(fs.getattr(quota).is_ok());
    assert!(fs.getattr(fs.root()).is_ok());
}

/// Writes on a damaged copy: every operation may fail (EIO, ENOENT...) but
/// the daemon's core never panics or hangs, and what it writes stays inside
/// the device.
/// Returns whether the mount worked and the first creation succeeded.
fn write_trial(base: &Arc<Vec<u8>>, pokes: &[(u64, u8)]) -> bool {
    let dev = OverlayDevice::new(base.clone());
    for &(off, v) in pokes {
        dev.poke(off, &[v]);
    }
    let dev: Arc<dyn BlockDevice> = Arc::new(dev);
    let opts = MountOptions {
        lockproto: Some("lock_nolock".into()),
        ..MountOptions::default()
    };
    let Ok(fs) = Fs::mount(dev, opts) else {
        return false;
    };
    let root = fs.root();
    let mut names = Vec::new();
    let _ = fs.readdir(root, 0, |e| {
        if e.name != b"." && e.name != b".." {
            names.push((e.name.to_vec(), e.ino));
        }
        names.len() < 50
    });
    let created = fs
        .mknod(root, b"new_file", 0o100644, 0, 0, 0, 0, None)
        .is_ok();
    if let Ok(a) = fs.lookup(root, b"new_file") {
        let _ = fs.write(a.ino, 0, &[7u8; 10_000]);
        let _ = fs.write(a.ino, 1 << 20, b"far");
        let _ = fs.set_xattr(a.ino, b"user.k", Some(&[1u8; 3000]), 0);
        let _ = fs.setattr(
            a.ino,
            gfs2fuse::ops::SetAttr {
                size: Some(5000),
                ..Default::default()
            },
        );
    }
    let _ = fs.mknod(root, b"new_dir", 0o040755, 0, 0, 0, 0, None);
    for (name, ino) in names.iter().take(8) {
        let _ = fs.write(*ino, 0, b"overwrite");
        let _ = fs.set_xattr(*ino, b"user.x", Some(b"v"), 0);
        let _ = fs.rename(root, name, root, b"renamed", 0);
        let _ = fs.rename(root, b"renamed", root, name, 0);
        let _ = fs.setattr(
            *ino,
            gfs2fuse::ops::SetAttr {
                size: Some(0),
                mode: Some(0o600),
                ..Default::default()
            },
        );
    }
    for (name, _) in names.iter().skip(8).take(8) {
        let _ = fs.remove(root, name, false);
        let _ = fs.remove(root, name, true);
    }
    let _ = fs.sync();
    let _ = fs.unmount();
    created
}

#[test]
fn writes_on_damaged_images_never_panic_or_hang() {
    let start = Instant::now();
    let mut trials = 0;
    let mut written = 0;
    let work = std::env::temp_dir().join(format!("corrupt-write-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    for (name, seed) in [("tree-b1024", 0x77u64), ("tree-b4096", 0x99)] {
        let path = gfs2_oracle::corpus::image(name, &work).expect("corpus image");
        let base = Arc::new(std::fs::read(&path).expect("read image"));
        let _ = std::fs::remove_file(&path);
        let bsize = u32::from_be_bytes(base[65536 + 36..65536 + 40].try_into().expect("4 bytes"));
        let meta = metadata_blocks(&base, bsize as usize);
        assert!(
            write_trial(&base, &[]),
            "{name}: the undamaged image takes writes"
        );
        let mut rng = Rng(seed);
        let deadline = Instant::now() + Duration::from_secs(12);
        while Instant::now() < deadline {
            let n = 1 + rng.below(6) as usize;
            let pokes: Vec<(u64, u8)> = (0..n)
                .map(|_| {
                    let blk = meta[rng.below(meta.len() as u64) as usize];
                    let within = if rng.below(2) == 0 {
                        rng.below(256)
                    } else {
                        rng.below(u64::from(bsize))
                    };
                    (blk * u64::from(bsize) + within, rng.next() as u8)
                })
                .collect();
            let (tx, rx) = mpsc::channel();
            let (b, p) = (base.clone(), pokes.clone());
            std::thread::spawn(move || {
                let _ = tx.send(write_trial(&b, &p));
            });
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(true) => written += 1,
                Ok(false) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("write trial hung: {pokes:?}"),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("write trial panicked: {pokes:?}")
                }
            }
            trials += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    assert!(trials > 20, "only {trials} write trials");
    assert!(
        written * 4 > trials,
        "only {written} of {trials} damaged images took writes: the test would prove little"
    );
    eprintln!(
        "{trials} write trials ({written} mounted and wrote) in {:?}",
        start.elapsed()
    );
}
