//! fsck-gfs2 against gfs2-utils' fsck.gfs2 (3.5, the oracle): clean images
//! from both mkfs programs, corruption scenarios written at test time, and a
//! time-bounded random-corruption loop.

use gfs2_fsck::testimg::{self, Image};
use gfs2_ondisk::{
    consts::metatype, dirent_size, layout, Dinode, Dirent, DirentIter, Inum, Leaf, LogDescriptor,
    MetaHeader, Rgrp, MAGIC,
};
use gfs2fuse::dev::file::{FileDevice, OpenFlags};
use gfs2fuse::log::recovery::{self, JournalExtent};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const ORACLE_FSCK: &str = "/usr/sbin/fsck.gfs2";
const ORACLE_MKFS: &str = "/usr/sbin/mkfs.gfs2";

fn ours() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fsck-gfs2"))
}

fn need(tool: &str) -> PathBuf {
    let p = PathBuf::from(tool);
    assert!(
        p.exists(),
        "{tool} is missing: install gfs2-utils 3.5 (the oracle)"
    );
    p
}

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);
fn tmp(tag: &str) -> Tmp {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir();
    Tmp(dir.join(format!("fsck-vs-{}-{tag}-{n}.img", std::process::id())))
}

/// Run with a time limit; None if it had to be killed.
fn run_limited(cmd: &mut Command, limit: Duration) -> Option<std::process::ExitStatus> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    // Drain stderr in a thread so a chatty child cannot block.
    let mut err = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            let _ = reader.join();
            return Some(st);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn code(st: std::process::ExitStatus) -> i32 {
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

fn ours_rc(args: &[&str], img: &Path) -> (i32, String) {
    let out = Command::new(ours())
        .args(args)
        .arg(img)
        .output()
        .expect("run fsck-gfs2");
    (
        code(out.status),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn oracle_rc(img: &Path) -> (i32, String) {
    let out = Command::new(need(ORACLE_FSCK))
        .arg("-n")
        .arg(img)
        .output()
        .expect("run fsck.gfs2");
    (
        code(out.status),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn mkfs_utils(img: &Path, size_mb: u64, bsize: u32, journals: u32) {
    mkfs_utils_j(img, size_mb, bsize, journals, 16)
}

fn mkfs_utils_j(img: &Path, size_mb: u64, bsize: u32, journals: u32, jsize_mb: u32) {
    let f = std::fs::File::create(img).expect("create image");
    f.set_len(size_mb << 20).expect("size image");
    let st = Command::new(need(ORACLE_MKFS))
        .args(["-O", "-p", "lock_nolock", "-r", "32"])
        .args(["-J", &jsize_mb.to_string()])
        .args(["-b", &bsize.to_string(), "-j", &journals.to_string()])
        .arg(img)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mkfs.gfs2");
    assert!(st.success(), "mkfs.gfs2 failed");
}

fn our_mkfs_bin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Beside this test's own binary (target/<profile>/deps/..), wherever
    // CARGO_TARGET_DIR put it.
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps")
        .join("mkfs-gfs2");
    if !bin.exists() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "gfs2-mkfs"])
            .current_dir(&root)
            .status()
            .expect("cargo build mkfs");
        assert!(st.success(), "building gfs2-mkfs failed");
    }
    bin
}

fn mkfs_ours(img: &Path, size_mb: u64, bsize: u32, journals: u32) {
    let f = std::fs::File::create(img).expect("create image");
    f.set_len(size_mb << 20).expect("size image");
    let st = Command::new(our_mkfs_bin())
        .args(["-O", "-p", "lock_nolock", "-J", "16"])
        .args(["-b", &bsize.to_string(), "-j", &journals.to_string()])
        .arg(img)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mkfs-gfs2");
    assert!(st.success(), "our mkfs failed");
}

// ---- reading and writing images ----------------------------------------

struct Fs {
    path: PathBuf,
    bs: u32,
    root: u64,
    master: u64,
}

fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl Fs {
    fn open(path: &Path) -> Fs {
        let img = Image::open(path).expect("open image");
        Fs {
            path: path.to_path_buf(),
            bs: img.bsize,
            root: img.sb.root_dir.addr,
            master: img.sb.master_dir.addr,
        }
    }
    fn file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .expect("open")
    }
    fn read(&self, blk: u64) -> Vec<u8> {
        let mut b = vec![0u8; self.bs as usize];
        self.file()
            .read_exact_at(&mut b, blk * u64::from(self.bs))
            .expect("read");
        b
    }
    fn poke(&self, blk: u64, off: usize, data: &[u8]) {
        self.file()
            .write_all_at(data, blk * u64::from(self.bs) + off as u64)
            .expect("write");
    }
    fn dinode(&self, addr: u64) -> Dinode {
        Dinode::parse(&self.read(addr)).expect("dinode")
    }
    /// Data block addresses of a file, in order (holes skipped).
    fn data_blocks(&self, addr: u64) -> Vec<u64> {
        let di = self.dinode(addr);
        let mut level = vec![(addr, Dinode::SIZE)];
        let mut out = Vec::new();
        for h in (1..=di.height).rev() {
            let mut next = Vec::new();
            for (blk, start) in level {
                let b = self.read(blk);
                for o in (start..b.len()).step_by(8) {
                    let p = be64(&b, o);
                    if p != 0 {
                        if h == 1 {
                            out.push(p);
                        } else {
                            next.push((p, MetaHeader::SIZE));
                        }
                    }
                }
            }
            level = next;
        }
        out
    }
    /// Hash table of an exhash directory.
    fn table(&self, dir: u64) -> (Vec<u64>, Vec<(u64, usize)>) {
        let di = self.dinode(dir);
        assert!(di.is_exhash());
        let n = 1usize << di.depth;
        let mut t = Vec::new();
        let mut locs = Vec::new();
        if di.height == 0 {
            for i in 0..n {
                let o = Dinode::SIZE + 8 * i;
                t.push(be64(&self.read(dir), o));
                locs.push((dir, o));
            }
        } else {
            for blk in self.data_blocks(dir) {
                let b = self.read(blk);
                for o in (MetaHeader::SIZE..b.len()).step_by(8) {
                    if t.len() < n {
                        t.push(be64(&b, o));
                        locs.push((blk, o));
                    }
                }
            }
        }
        (t, locs)
    }
    /// Entries: (name, inum, block, record offset).
    fn entries(&self, dir: u64) -> Vec<(String, Inum, u64, usize)> {
        let di = self.dinode(dir);
        let mut blocks = Vec::new();
        if di.is_exhash() {
            let (t, _) = self.table(dir);
            let mut seen = std::collections::HashSet::new();
            for p in t {
                if seen.insert(p) {
                    blocks.push((p, Leaf::SIZE));
                }
            }
        } else {
            blocks.push((dir, Dinode::SIZE));
        }
        let mut out = Vec::new();
        for (blk, start) in blocks {
            let b = self.read(blk);
            for d in DirentIter::new(&b, start).flatten() {
                if !d.dirent.is_unused() {
                    out.push((
                        String::from_utf8_lossy(d.name).into_owned(),
                        d.dirent.inum,
                        blk,
                        d.offset,
                    ));
                }
            }
        }
        out
    }
    /// Remove an entry as the kernel does: the previous record absorbs it,
    /// or a first record just loses its inode address.
    fn del_entry(&self, dir: u64, name: &str) {
        let e = self
            .entries(dir)
            .into_iter()
            .find(|e| e.0 == name)
            .expect("entry");
        let (blk, off) = (e.2, e.3);
        let b = self.read(blk);
        let start = if blk == dir { Dinode::SIZE } else { Leaf::SIZE };
        let mut prev = None;
        for d in DirentIter::new(&b, start).flatten() {
            if d.offset == off {
                break;
            }
            prev = Some(d);
        }
        let cur = Dirent::parse(&b[off..]).expect("dirent");
        match prev {
            Some(p) => {
                let n = p.dirent.rec_len + cur.rec_len;
                self.poke(blk, p.offset + 20, &n.to_be_bytes());
            }
            None => self.poke(blk, off, &[0u8; 16]),
        }
        if start == Leaf::SIZE {
            let lf = Leaf::parse(&b).expect("leaf");
            self.poke(blk, 26, &(lf.entries - 1).to_be_bytes());
        }
    }

    fn lookup(&self, dir: u64, name: &str) -> u64 {
        self.entries(dir)
            .into_iter()
            .find(|e| e.0 == name)
            .unwrap_or_else(|| panic!("no {name} in {dir}"))
            .1
            .addr
    }
    fn rgrps(&self) -> Vec<gfs2_ondisk::Rindex> {
        Image::open(&self.path)
            .expect("image")
            .rgs
            .iter()
            .map(|r| r.ri)
            .collect()
    }
    /// Set the bitmap state of `blk` directly (rgrp header counts untouched).
    fn set_state(&self, blk: u64, st: u8) {
        let rg = self
            .rgrps()
            .into_iter()
            .find(|r| blk >= r.data0 && blk < r.data0 + u64::from(r.data))
            .expect("block in an rgrp");
        let (k, off, shift) = layout::bitmap_position(self.bs, blk - rg.data0).expect("position");
        let b = self.read(rg.addr + u64::from(k));
        let v = (b[off] & !(3 << shift)) | (st << shift);
        self.poke(rg.addr + u64::from(k), off, &[v]);
    }
    fn state(&self, blk: u64) -> u8 {
        let rg = self
            .rgrps()
            .into_iter()
            .find(|r| blk >= r.data0 && blk < r.data0 + u64::from(r.data))
            .expect("block in an rgrp");
        let (k, off, shift) = layout::bitmap_position(self.bs, blk - rg.data0).expect("position");
        (self.read(rg.addr + u64::from(k))[off] >> shift) & 3
    }
}

/// A base image made once: gfs2-utils mkfs, then populated.
fn base_image(tag: &str, bsize: u32) -> Tmp {
    let t = tmp(tag);
    mkfs_utils(&t.0, 160, bsize, 2);
    // (mkfs_utils uses -r 32: several rgrps besides the journals' own.)
    testimg::populate(&t.0, 3, 150, 200_000).expect("populate");
    t
}

fn assert_clean_both(img: &Path, what: &str) {
    let (rc, out) = ours_rc(&["-n"], img);
    assert_eq!(rc, 0, "{what}: ours -n should be clean:\n{out}");
    assert!(
        !out.contains("not fixed"),
        "{what}: ours reported something:\n{out}"
    );
    let (rc, out) = oracle_rc(img);
    assert_eq!(rc, 0, "{what}: gfs2-utils -n should be clean:\n{out}");
}

#[test]
fn cli_exit_codes() {
    let t = tmp("cli");
    mkfs_utils(&t.0, 64, 4096, 1);
    for args in [
        &["-n", "-y"][..],
        &["-y", "-n"],
        &["-p", "-n"],
        &["-y", "-a"],
        &["-x"],
    ] {
        let (rc, _) = ours_rc(args, &t.0);
        assert_eq!(rc, 16, "{args:?}");
    }
    let out = Command::new(ours()).output().expect("run");
    assert_eq!(out.status.code(), Some(16), "no device");
    let out = Command::new(ours()).arg("-h").output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    let out = Command::new(ours()).arg("-V").output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    let (rc, _) = ours_rc(&["-n"], Path::new("/nonexistent/device"));
    assert_eq!(rc, 8);
    let (rc, out) = ours_rc(&["-q", "-n"], &t.0);
    assert_eq!(rc, 0);
    assert!(out.is_empty(), "-q printed: {out}");
    let (rc, out) = ours_rc(&["-v", "-n"], &t.0);
    assert_eq!(rc, 0);
    assert!(out.contains("resource groups"), "-v: {out}");
}

#[test]
fn clean_images_from_both_mkfs() {
    for (bsize, journals) in [(512, 1), (1024, 2), (2048, 3), (4096, 1), (4096, 4)] {
        for ours_mkfs in [false, true] {
            let t = tmp("clean");
            if ours_mkfs {
                mkfs_ours(&t.0, 200, bsize, journals);
            } else {
                mkfs_utils(&t.0, 200, bsize, journals);
            }
            assert_clean_both(
                &t.0,
                &format!("mkfs ours={ours_mkfs} -b {bsize} -j {journals}"),
            );
        }
    }
    for bsize in [512, 1024, 4096] {
        let t = base_image("pop", bsize);
        assert_clean_both(&t.0, &format!("populated -b {bsize}"));
    }
}

/// A corruption scenario: both -n say 4, our -y says 1, then both -n say 0.
/// What gfs2-utils' -n must say about the corrupted image.
enum Oracle {
    /// One of these exit statuses.
    Exit(&'static [i32]),
    /// Any failure (it crashes on an invalid block size).
    Fails,
    /// Not asked before the repair, for the reason given (gfs2-utils 3.5
    /// does not finish on it); after the repair it must still say 0.
    NotAsked(&'static str),
    /// A dirty journal: 3.5 prints "is dirty ... not replaying due to the
    /// -n option" but exits 0, so the message is what is checked.
    Dirty,
}

fn scenario(base: &Path, name: &str, oracle: Oracle, corrupt: impl Fn(&Fs)) {
    let t = tmp("scn");
    sparse_copy(base, &t.0);
    corrupt(&Fs::open(&t.0));
    let (rc, out) = ours_rc(&["-n"], &t.0);
    assert_eq!(rc, 4, "{name}: ours -n:\n{out}");
    let (rc, out) = match oracle {
        Oracle::NotAsked(_) => (0, String::new()),
        _ => oracle_rc(&t.0),
    };
    match oracle {
        Oracle::NotAsked(why) => eprintln!("{name}: gfs2-utils -n not asked: {why}"),
        Oracle::Exit(ok) => {
            assert!(ok.contains(&rc), "{name}: gfs2-utils -n exit {rc}:\n{out}")
        }
        Oracle::Fails => assert_ne!(rc, 0, "{name}: gfs2-utils -n accepted it:\n{out}"),
        Oracle::Dirty => assert!(
            out.contains("(\"journal0\") is dirty"),
            "{name}: gfs2-utils -n exit {rc}:\n{out}"
        ),
    }
    let (rc, out) = ours_rc(&["-y"], &t.0);
    assert_eq!(rc, 1, "{name}: ours -y:\n{out}");
    let (rc, out2) = ours_rc(&["-n"], &t.0);
    assert_eq!(
        rc, 0,
        "{name}: ours -n after -y:\n{out2}\n(first -y said:\n{out})"
    );
    let (rc, out2) = oracle_rc(&t.0);
    assert_eq!(
        rc, 0,
        "{name}: gfs2-utils -n after our -y:\n{out2}\n(our -y said:\n{out})"
    );
}

/// Copy an image keeping its holes (some are 64 GiB sparse files).
fn sparse_copy(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success(), "cp --sparse=always failed");
}

/// Destroy rindex entry `n` (96 zero bytes; the rindex must be stuffed).
fn zero_rindex_entry(fs: &Fs, n: usize) {
    let ri = fs.lookup(fs.master, "rindex");
    assert_eq!(fs.dinode(ri).height, 0, "stuffed rindex");
    fs.poke(ri, Dinode::SIZE + 96 * n, &[0u8; 96]);
}

fn sb_bsize_poke(fs: &Fs, v: u32) {
    fs.file()
        .write_all_at(&v.to_be_bytes(), 65536 + 36)
        .expect("poke");
}

#[test]
fn corruption_scenarios() {
    let base = base_image("base", 4096);
    let b = &base.0;
    // Bad block size: gfs2-utils 3.5 crashes on these, so only ours is
    // asked before the repair; after it both must find the fs clean.
    for v in [0u32, 1, 513, 4095, 4097] {
        scenario(b, &format!("block size {v}"), Oracle::Fails, |fs| {
            sb_bsize_poke(fs, v)
        });
    }
    // gfs2-utils -n cannot rebuild an rgrp read-only: it stops with 8
    // ("Resource group recovery impossible").
    scenario(b, "destroyed rgrp header", Oracle::Exit(&[4, 8]), |fs| {
        let rgs = fs.rgrps();
        let rg = rgs[rgs.len() / 2];
        fs.poke(rg.addr, 0, &vec![0u8; fs.bs as usize]);
    });
    scenario(
        b,
        "bitmap: free block marked used",
        Oracle::Exit(&[4]),
        |fs| {
            let rgs = fs.rgrps();
            let rg = rgs[rgs.len() - 1];
            let blk = rg.data0 + u64::from(rg.data) - 3;
            assert_eq!(fs.state(blk), 0);
            fs.set_state(blk, 1);
        },
    );
    scenario(
        b,
        "bitmap: free block marked inode",
        Oracle::Exit(&[4]),
        |fs| {
            let rgs = fs.rgrps();
            let rg = rgs[rgs.len() - 2];
            let blk = rg.data0 + u64::from(rg.data) / 2;
            assert_eq!(fs.state(blk), 0);
            fs.set_state(blk, 3);
        },
    );
    scenario(
        b,
        "bitmap: used block marked free",
        Oracle::Exit(&[4]),
        |fs| {
            let dir = fs.lookup(fs.root, "dir1");
            let f = fs.lookup(dir, "file3");
            let blk = fs.data_blocks(f)[0];
            assert_eq!(fs.state(blk), 1);
            fs.set_state(blk, 0);
        },
    );
    scenario(b, "bitmap: inode marked free", Oracle::Exit(&[4]), |fs| {
        let dir = fs.lookup(fs.root, "dir2");
        let f = fs.lookup(dir, "file7");
        assert_eq!(fs.state(f), 3);
        fs.set_state(f, 0);
    });
    scenario(b, "wrong link count", Oracle::Exit(&[4]), |fs| {
        let dir = fs.lookup(fs.root, "dir0");
        let f = fs.lookup(dir, "file9");
        fs.poke(f, 52, &7u32.to_be_bytes());
    });
    scenario(b, "block claimed by two files", Oracle::Exit(&[4]), |fs| {
        let dir = fs.lookup(fs.root, "dir0");
        let a = fs.lookup(dir, "file3");
        let c = fs.lookup(dir, "file8");
        let da = fs.data_blocks(a)[0];
        assert_eq!(fs.dinode(c).height, 1);
        fs.poke(c, Dinode::SIZE, &da.to_be_bytes());
    });
    scenario(b, "bad directory entry hash", Oracle::Exit(&[4]), |fs| {
        let e = fs
            .entries(fs.root)
            .into_iter()
            .find(|e| e.0 == "dir1")
            .expect("dir1");
        fs.poke(e.2, e.3 + 16, &0x1234_5678u32.to_be_bytes());
    });
    scenario(b, "broken exhash table", Oracle::Exit(&[4]), |fs| {
        let dir = fs.lookup(fs.root, "dir2");
        let (t, locs) = fs.table(dir);
        let other = *t.iter().rev().find(|p| **p != t[0]).expect("two leaves");
        let (blk, off) = locs[0];
        fs.poke(blk, off, &other.to_be_bytes());
    });
    scenario(b, "dirty journal", Oracle::Dirty, make_dirty_journal);
    scenario(b, "orphaned file", Oracle::Exit(&[4]), |fs| {
        let dir = fs.lookup(fs.root, "dir1");
        let f = fs.lookup(dir, "file4");
        // Unlink: drop the entry and the link count it held.
        fs.del_entry(dir, "file4");
        fs.poke(f, 52, &0u32.to_be_bytes());
        let n = fs.dinode(dir).entries - 1;
        fs.poke(dir, 148, &n.to_be_bytes());
    });
    scenario(b, "directory without '.'", Oracle::Exit(&[4]), |fs| {
        let dir = fs.lookup(fs.root, "dir0");
        fs.del_entry(dir, ".");
        let n = fs.dinode(dir).entries - 1;
        fs.poke(dir, 148, &n.to_be_bytes());
        fs.poke(dir, 52, &(fs.dinode(dir).nlink - 1).to_be_bytes());
    });
    // gfs2-utils -n stops with 8 ("Cannot continue without valid root inode").
    scenario(b, "destroyed root directory", Oracle::Exit(&[4, 8]), |fs| {
        fs.poke(fs.root, 0, &vec![0u8; fs.bs as usize]);
    });
    // gfs2-utils -n cannot rebuild the rindex read-only: it stops with 8.
    scenario(b, "destroyed rindex dinode", Oracle::Exit(&[4, 8]), |fs| {
        let ri = fs.lookup(fs.master, "rindex");
        fs.poke(ri, 0, &vec![0u8; fs.bs as usize]);
    });
    // gfs2-utils -n stops with 8 there ("Failed to check 'jindex'").
    scenario(b, "destroyed jindex dinode", Oracle::Exit(&[4, 8]), |fs| {
        let ji = fs.lookup(fs.master, "jindex");
        fs.poke(ji, 0, &vec![0u8; fs.bs as usize]);
    });
    scenario(b, "orphaned directory", Oracle::Exit(&[4]), |fs| {
        fs.del_entry(fs.root, "dir1");
    });
    // gfs2-utils 3.5 cannot rebuild a destroyed rindex entry on this layout
    // (the journals' rgrps make it "unevenly spaced"): its -n and -y both
    // stop with 8. Ours takes the entry from the rgrp header there.
    scenario(b, "destroyed rindex entry", Oracle::Exit(&[4, 8]), |fs| {
        let n = fs.rgrps().len() / 2;
        zero_rindex_entry(fs, n);
    });
    system_file_scenarios(b);
}

/// Destroyed system dinodes (the block zeroed); each is rebuilt empty
/// where it was, as gfs2-utils' fsck.gfs2 rebuilds them. What gfs2-utils
/// 3.5 itself does with each is noted.
fn system_file_scenarios(b: &Path) {
    let zero = |fs: &Fs, blk: u64| fs.poke(blk, 0, &vec![0u8; fs.bs as usize]);
    // gfs2-utils 3.5: -n stops with 8 ("Cannot continue without valid
    // inum/statfs/quota inode"); its -y crashes (SIGSEGV) on these three.
    for name in ["inum", "statfs", "quota"] {
        scenario(
            b,
            &format!("destroyed {name} dinode"),
            Oracle::Exit(&[4, 8]),
            |fs| zero(fs, fs.lookup(fs.master, name)),
        );
    }
    // gfs2-utils 3.5 finds and rebuilds these (-n 4, -y 1).
    for name in [
        "inum_range1",
        "statfs_change0",
        "quota_change0",
        "quota_change1",
    ] {
        scenario(
            b,
            &format!("destroyed per_node/{name} dinode"),
            Oracle::Exit(&[4]),
            |fs| zero(fs, fs.lookup(fs.lookup(fs.master, "per_node"), name)),
        );
    }
    // A journal's own dinode: gfs2-utils -n says 4 for journal0, 8 for
    // the last journal; its -y builds a new journal either way.
    for name in ["journal0", "journal1"] {
        scenario(
            b,
            &format!("destroyed {name} dinode"),
            Oracle::Exit(&[4, 8]),
            |fs| zero(fs, fs.lookup(fs.lookup(fs.master, "jindex"), name)),
        );
    }
    // gfs2-utils 3.5: -n and -y stop with 8 (it cannot rebuild it).
    scenario(
        b,
        "destroyed master directory",
        Oracle::Exit(&[4, 8]),
        |fs| zero(fs, fs.master),
    );
    scenario(
        b,
        "destroyed per_node directory",
        Oracle::NotAsked("gfs2-utils 3.5 -n and -y loop forever on a destroyed per_node"),
        |fs| zero(fs, fs.lookup(fs.master, "per_node")),
    );
}

/// Destroyed rindex entries with 2 GB rgrps (`mkfs.gfs2 -r 2048` on a
/// 16 GiB sparse image). gfs2-utils' -y rebuilds the entry from the rgrp
/// headers; its -n stops with 8 (it cannot rebuild read-only) after
/// searching the whole device for rgrp headers (about 15 s here).
#[test]
fn rindex_entries_with_2gb_rgrps() {
    let base = tmp("big");
    let f = std::fs::File::create(&base.0).expect("create image");
    f.set_len(16 << 30).expect("size image");
    drop(f);
    let st = Command::new(need(ORACLE_MKFS))
        .args(["-O", "-p", "lock_nolock", "-r", "2048", "-J", "16"])
        .args(["-b", "4096", "-j", "2"])
        .arg(&base.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("mkfs.gfs2");
    assert!(st.success(), "mkfs.gfs2 -r 2048 failed");
    testimg::populate(&base.0, 2, 50, 100_000).expect("populate");
    assert_clean_both(&base.0, "2 GB rgrps");
    let nrg = Fs::open(&base.0).rgrps().len();
    assert!(nrg >= 8, "{nrg} rgrps");
    let n = nrg / 2;
    scenario(
        &base.0,
        &format!("destroyed rindex entry {n} of {nrg} (2 GB rgrps)"),
        Oracle::Exit(&[4, 8]),
        |fs| zero_rindex_entry(fs, n),
    );
}

/// After journal0's head, log a copy of the root dinode (with a new mtime)
/// and a log header without the unmount flag.
fn make_dirty_journal(fs: &Fs) {
    let jindex = fs.lookup(fs.master, "jindex");
    let j0 = fs.lookup(jindex, "journal0");
    let blocks = fs.data_blocks(j0);
    let ex: Vec<JournalExtent> = blocks
        .iter()
        .enumerate()
        .map(|(i, p)| JournalExtent {
            lblock: i as u64,
            phys: *p,
            len: 1,
        })
        .collect();
    let dev = FileDevice::open(&fs.path, OpenFlags::default()).expect("dev");
    let head = recovery::find_head(&dev, fs.bs, &ex).expect("head");
    let n = blocks.len() as u64;
    let k = (head.lblock + 1) % n;
    let k1 = (k + 1) % n;
    let k2 = (k + 2) % n;
    let bs = fs.bs as usize;
    let mut ld = vec![0u8; bs];
    LogDescriptor {
        ld_type: gfs2_ondisk::consts::ld::METADATA,
        length: 2,
        data1: 1,
        ..LogDescriptor::default()
    }
    .write(&mut ld)
    .expect("ld");
    ld[LogDescriptor::SIZE..LogDescriptor::SIZE + 8].copy_from_slice(&fs.root.to_be_bytes());
    let mut copy = fs.read(fs.root);
    copy[80..88].copy_from_slice(&1_800_000_000u64.to_be_bytes());
    // A log header without the unmount flag (not a clean one).
    let mut lh = vec![0u8; bs];
    gfs2_ondisk::LogHeader {
        sequence: head.lh.sequence + 1,
        tail: k as u32,
        blkno: k2 as u32,
        addr: blocks[k2 as usize],
        ..gfs2_ondisk::LogHeader::default()
    }
    .write_block(&mut lh)
    .expect("log header");
    fs.poke(blocks[k as usize], 0, &ld);
    fs.poke(blocks[k1 as usize], 0, &copy);
    fs.poke(blocks[k2 as usize], 0, &lh);
}

#[test]
fn dirty_journal_is_replayed() {
    let base = base_image("jr", 4096);
    let fs = Fs::open(&base.0);
    make_dirty_journal(&fs);
    let (rc, out) = ours_rc(&["-n"], &base.0);
    assert_eq!(rc, 4);
    assert!(out.contains("Journal #1 (\"journal0\") is dirty"), "{out}");
    let (rc, _) = ours_rc(&["-y"], &base.0);
    assert_eq!(rc, 1);
    assert_eq!(
        fs.dinode(fs.root).mtime,
        1_800_000_000,
        "replayed root dinode"
    );
    assert_clean_both(&base.0, "after replay");
}

/// xorshift64*, seeded from the clock (printed for reproduction).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn random_corruption_never_panics_and_converges() {
    // Small, so that each trial's copy is cheap: 64 MiB, one 8 MiB journal.
    let base = tmp("rnd");
    // FSCK_RANDOM_BSIZE picks another block size (default 1024).
    let bsize = std::env::var("FSCK_RANDOM_BSIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    mkfs_utils_j(&base.0, 64, bsize, 1, 8);
    testimg::populate(&base.0, 3, 120, 60_000).expect("populate");
    let fs = Fs::open(&base.0);
    // Metadata blocks: every block starting with the GFS2 magic, except
    // the superblock (a destroyed superblock is out of scope here).
    let size = std::fs::metadata(&base.0).expect("meta").len();
    let nblocks = size / u64::from(fs.bs);
    let sb_blk = 65536 / u64::from(fs.bs);
    let image = std::fs::read(&base.0).expect("read image");
    let (logs, meta): (Vec<u64>, Vec<u64>) = (0..nblocks)
        .filter(|&b| {
            let o = (b * u64::from(fs.bs)) as usize;
            b != sb_blk && image[o..o + 4] == MAGIC.to_be_bytes()
        })
        .partition(|&b| {
            let o = (b * u64::from(fs.bs)) as usize;
            image[o + 4..o + 8] == metatype::LH.to_be_bytes()
        });
    drop(image);
    let seed = std::env::var("FSCK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    eprintln!(
        "random corruption: seed {seed} (FSCK_SEED), {} metadata blocks, {} log headers",
        meta.len(),
        logs.len()
    );
    let mut rng = Rng(seed);
    let t0 = Instant::now();
    let (mut iters, mut fixed, mut gave_up, mut oracle_clean) = (0, 0, 0, 0);
    let limit = Duration::from_secs(15);
    while t0.elapsed() < Duration::from_secs(20) {
        let t = tmp("rnd1");
        std::fs::copy(&base.0, &t.0).expect("copy");
        let f = Fs::open(&t.0);
        let mut what = Vec::new();
        for _ in 0..1 + rng.below(4) {
            // One in ten hits a journal's log header, the rest other metadata.
            let pool = if rng.below(10) == 0 { &logs } else { &meta };
            let blk = pool[rng.below(pool.len() as u64) as usize];
            let hdr = f.read(blk);
            let mh = MetaHeader::parse(&hdr).expect("mh");
            // Mostly small field damage near the start, sometimes anywhere;
            // one time in three a plausible block address (cross links).
            let span = if rng.below(4) == 0 { f.bs as u64 } else { 256 };
            let (off, bytes) = if rng.below(8) == 0 {
                (0, vec![0u8; f.bs as usize]) // the whole block destroyed
            } else if rng.below(3) == 0 {
                let off = (rng.below(span) as usize & !7).min(f.bs as usize - 8);
                let addr = meta[rng.below(meta.len() as u64) as usize] + rng.below(3);
                (off, addr.to_be_bytes().to_vec())
            } else {
                let off = rng.below(span) as usize;
                let len = (1 + rng.below(8) as usize).min(f.bs as usize - off);
                (off, (0..len).map(|_| rng.next() as u8).collect())
            };
            let len = bytes.len();
            f.poke(blk, off, &bytes);
            what.push(format!(
                "block {blk} (type {}) +{off} len {len}",
                mh.mh_type
            ));
        }
        let st = run_limited(Command::new(ours()).arg("-n").arg(&t.0), limit)
            .unwrap_or_else(|| panic!("-n hung; seed {seed}; {what:?}"));
        let rc = code(st);
        assert!(
            matches!(rc, 0 | 4 | 8),
            "-n exit {rc}; seed {seed}; {what:?}"
        );
        let st = run_limited(Command::new(ours()).arg("-y").arg(&t.0), limit)
            .unwrap_or_else(|| panic!("-y hung; seed {seed}; {what:?}"));
        let rc = code(st);
        assert!(
            matches!(rc, 0 | 1 | 4 | 8),
            "-y exit {rc}; seed {seed}; {what:?}"
        );
        if rc <= 1 {
            let (rc2, out) = ours_rc(&["-y"], &t.0);
            assert_eq!(
                rc2, 0,
                "second -y found more; seed {seed}; {what:?}:\n{out}"
            );
            fixed += 1;
            let (orc, oout) = oracle_rc(&t.0);
            if orc == 0 {
                oracle_clean += 1;
            } else if std::env::var("FSCK_SHOW").is_ok() {
                eprintln!("gfs2-utils disagrees ({orc}): {what:?}\n{oout}");
            }
        } else {
            gave_up += 1;
            if std::env::var("FSCK_SHOW").is_ok() {
                let (_, out) = ours_rc(&["-n"], &t.0);
                let left: Vec<&str> = out.lines().filter(|l| l.contains("not fixed")).collect();
                eprintln!("left ({rc}): {what:?}\n{}", left.join("\n"));
            }
        }
        iters += 1;
    }
    eprintln!(
        "random corruption: {iters} images, {fixed} repaired or clean \
         ({oracle_clean} of them clean for gfs2-utils -n too), {gave_up} left with errors"
    );
    assert!(iters >= 5, "only {iters} iterations in 20 s");
}

#[test]
fn refuses_a_mounted_device() {
    // /proc/self/mountinfo always lists the root filesystem's source;
    // asking to check it must be refused with exit 8, before opening it.
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let src = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            let s = f.get(sep + 2)?.to_string();
            s.starts_with('/').then_some(s)
        })
        .find(|s| Path::new(s).exists());
    let Some(src) = src else {
        panic!("no mounted device with a path in /proc/self/mountinfo to test with");
    };
    let (rc, out) = ours_rc(&["-n"], Path::new(&src));
    assert_eq!(rc, 8, "{src}: {out}");
    assert!(out.contains("mounted"), "{out}");
}

#[allow(dead_code)]
fn unused() -> (usize, usize) {
    (
        dirent_size(1),
        Dirent::SIZE + Rgrp::SIZE + metatype::DI as usize,
    )
}

/// Unlinked files: one with data goes to lost+found, an empty one is
/// freed; gfs2-utils' -y (on a copy) must do the same with each.
#[test]
fn orphans_kept_or_freed_as_gfs2_utils() {
    let base = base_image("orph", 4096);
    let fs = Fs::open(&base.0);
    let d1 = fs.lookup(fs.root, "dir1");
    let d2 = fs.lookup(fs.root, "dir2");
    let kept = fs.lookup(d1, "file5");
    let empty = fs.lookup(d2, "file3");
    assert_eq!(fs.dinode(kept).size, 100);
    assert_eq!(fs.dinode(empty).size, 0);
    for (dir, name, f) in [(d1, "file5", kept), (d2, "file3", empty)] {
        fs.del_entry(dir, name);
        fs.poke(f, 52, &0u32.to_be_bytes());
        let n = fs.dinode(dir).entries - 1;
        fs.poke(dir, 148, &n.to_be_bytes());
    }
    let theirs = tmp("orph-utils");
    sparse_copy(&base.0, &theirs.0);
    let st = Command::new(need(ORACLE_FSCK))
        .arg("-y")
        .arg(&theirs.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("fsck.gfs2 -y");
    assert_eq!(st.code(), Some(1), "gfs2-utils -y");
    let (rc, out) = ours_rc(&["-y"], &base.0);
    assert_eq!(rc, 1, "ours -y:\n{out}");
    let utils = Fs::open(&theirs.0);
    for (who, f) in [("ours", &fs), ("gfs2-utils", &utils)] {
        assert_eq!(f.state(kept), 3, "{who}: the file with data is kept");
        assert_eq!(f.state(empty), 0, "{who}: the empty file is freed");
        let lf = f.lookup(f.root, "lost+found");
        assert!(
            f.entries(lf).iter().any(|e| e.1.addr == kept),
            "{who}: the file with data is in lost+found"
        );
        assert_eq!(f.dinode(kept).nlink, 1, "{who}: link count");
    }
    assert_clean_both(&base.0, "orphans after our -y");
}
