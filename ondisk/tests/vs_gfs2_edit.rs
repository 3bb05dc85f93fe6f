//! Oracle test: images made by gfs2-utils' `mkfs.gfs2`, read byte for byte
//! and decoded with gfs2-ondisk, must agree with every field `gfs2_edit -p`
//! prints about them: the superblock, the rindex, every resource group, the
//! master, root, jindex and per_node directories (dinode fields and every
//! directory entry), and every block of journal0 (log headers with their
//! checksums). Runs over a matrix of block sizes, journal counts and sizes,
//! lock protocols and the older 1801 format.

use gfs2_ondisk::consts::{dt, format, lh, metatype};
use gfs2_ondisk::{
    hash, layout, Dinode, DirentIter, Inum, Leaf, LogHeader, MetaHeader, Rgrp, Rindex, Superblock,
};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

// ---------------------------------------------------------------- tools

/// Find a gfs2-utils program in PATH or the sbin directories (which a
/// non-root PATH often lacks); fail loudly when it is not installed.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for d in ["/usr/sbin", "/sbin", "/usr/local/sbin"] {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found in PATH or /usr/sbin: install gfs2-utils (apt-get install gfs2-utils)")
        })
}

/// One mkfs.gfs2 invocation of the matrix.
#[derive(Debug, Clone)]
struct Case {
    bsize: u32,
    journals: u32,
    journal_mb: u64,
    /// `None` for lock_nolock, else the lock table for lock_dlm.
    table: Option<&'static str>,
    format1801: bool,
    size_mb: u64,
}

impl Case {
    fn lockproto(&self) -> &'static str {
        if self.table.is_some() {
            "lock_dlm"
        } else {
            "lock_nolock"
        }
    }
}

fn matrix() -> Vec<Case> {
    let sizes = [200u64, 700, 1500, 3000];
    let mut out = Vec::new();
    let mut i = 0;
    for bsize in [512u32, 1024, 2048, 4096] {
        for journals in [1u32, 3] {
            for journal_mb in [8u64, 32] {
                for table in [None, Some("clus:fsname")] {
                    out.push(Case {
                        bsize,
                        journals,
                        journal_mb,
                        table,
                        format1801: false,
                        size_mb: sizes[i % sizes.len()],
                    });
                    i += 1;
                }
            }
        }
    }
    out.push(Case {
        bsize: 4096,
        journals: 1,
        journal_mb: 8,
        table: None,
        format1801: true,
        size_mb: 300,
    });
    out
}

/// A sparse image file in the temp dir, removed when dropped.
struct TempImage(PathBuf);

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn make_image(mkfs: &Path, case: &Case, idx: usize) -> TempImage {
    let path = std::env::temp_dir().join(format!(
        "gfs2-ondisk-vs-gfs2_edit-{}-{}.img",
        std::process::id(),
        idx
    ));
    let img = TempImage(path);
    let f = File::create(&img.0).expect("create image file");
    f.set_len(case.size_mb << 20).expect("size image file");
    drop(f);
    let mut cmd = Command::new(mkfs);
    cmd.args(["-O", "-q", "-b"])
        .arg(case.bsize.to_string())
        .arg("-j")
        .arg(case.journals.to_string())
        .arg("-J")
        .arg(case.journal_mb.to_string())
        .arg("-p")
        .arg(case.lockproto());
    if let Some(t) = case.table {
        cmd.arg("-t").arg(t);
    }
    if case.format1801 {
        cmd.args(["-o", "format=1801"]);
    }
    cmd.arg(&img.0);
    let out = cmd.output().expect("run mkfs.gfs2");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

fn gfs2_edit(edit: &Path, what: &[&str], img: &Path) -> String {
    // gfs2_edit insists on a device path containing '/'; temp_dir() is absolute.
    let out = Command::new(edit)
        .arg("-p")
        .args(what)
        .arg(img)
        .output()
        .expect("run gfs2_edit");
    assert!(
        out.status.success(),
        "gfs2_edit -p {what:?} {} failed: {}",
        img.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------- reading the image

struct Image {
    file: File,
    bsize: u32,
    blocks: u64,
}

impl Image {
    fn block(&self, n: u64) -> Vec<u8> {
        assert!(
            n < self.blocks,
            "block {n} beyond the image ({} blocks)",
            self.blocks
        );
        let mut b = vec![0u8; self.bsize as usize];
        self.file
            .read_exact_at(&mut b, n * u64::from(self.bsize))
            .expect("read block");
        b
    }

    fn dinode(&self, addr: u64) -> (Dinode, Vec<u8>) {
        let b = self.block(addr);
        let di = Dinode::parse(&b).expect("dinode parses");
        di.header
            .check("gfs2_dinode", metatype::DI)
            .expect("dinode header");
        assert_eq!(di.header.format, format::DI);
        assert_eq!(
            di.num.addr, addr,
            "di_num.no_addr is the block's own address"
        );
        (di, b)
    }

    /// Addresses of a file's data blocks in logical order (0 for holes),
    /// as many as its size needs, by walking its metadata tree.
    fn data_blocks(&self, di: &Dinode, dblock: &[u8]) -> Vec<u64> {
        let payload = self.payload(di);
        let want = di.size.div_ceil(payload) as usize;
        let mut out = Vec::with_capacity(want);
        if di.height == 0 {
            return out;
        }
        self.collect(&dblock[Dinode::SIZE..], di.height, want, &mut out);
        assert_eq!(out.len(), want, "metadata tree maps the whole file");
        out
    }

    fn collect(&self, ptrs: &[u8], height: u16, want: usize, out: &mut Vec<u64>) {
        for c in ptrs.chunks_exact(8) {
            if out.len() >= want {
                return;
            }
            let p = u64::from_be_bytes(c.try_into().expect("8 bytes"));
            if height == 1 {
                out.push(p);
            } else if p == 0 {
                let span = layout::inptrs(self.bsize).pow(u32::from(height) - 1) as usize;
                let n = span.min(want - out.len());
                out.resize(out.len() + n, 0);
            } else {
                let b = self.block(p);
                MetaHeader::parse(&b)
                    .expect("indirect header")
                    .check("indirect block", metatype::IN)
                    .expect("indirect block type");
                self.collect(&b[MetaHeader::SIZE..], height - 1, want, out);
            }
        }
    }

    /// Bytes of file data a data block holds: directory blocks (the hash
    /// table) start with a meta header; other files' blocks, journaled data
    /// included, hold raw data.
    fn payload(&self, di: &Dinode) -> u64 {
        if di.is_dir() {
            u64::from(self.bsize) - MetaHeader::SIZE as u64
        } else {
            u64::from(self.bsize)
        }
    }

    /// The whole content of a file.
    fn read_file(&self, di: &Dinode, dblock: &[u8]) -> Vec<u8> {
        let size = usize::try_from(di.size).expect("size fits");
        if di.height == 0 {
            return dblock[Dinode::SIZE..Dinode::SIZE + size].to_vec();
        }
        let skip = u64::from(self.bsize) - self.payload(di);
        let mut out = Vec::with_capacity(size);
        for p in self.data_blocks(di, dblock) {
            if p == 0 {
                out.resize(out.len() + self.bsize as usize - skip as usize, 0);
            } else {
                let b = self.block(p);
                if skip != 0 {
                    MetaHeader::parse(&b)
                        .expect("jdata header")
                        .check("jdata block", metatype::JD)
                        .expect("jdata type");
                }
                out.extend_from_slice(&b[skip as usize..]);
            }
        }
        out.truncate(size);
        out
    }

    /// The leaf blocks of an exhash directory in hash table order, each once.
    fn hash_table(&self, di: &Dinode, dblock: &[u8]) -> Vec<u64> {
        let table = self.read_file(di, dblock);
        let n = layout::dir_hash_ptrs(di.depth).expect("sane depth") as usize;
        assert_eq!(table.len(), n * 8, "hash table size is 8 << di_depth");
        let mut leaves: Vec<u64> = Vec::new();
        for c in table.chunks_exact(8) {
            let p = u64::from_be_bytes(c.try_into().expect("8 bytes"));
            if leaves.last() != Some(&p) {
                leaves.push(p);
            }
        }
        leaves
    }

    /// All used entries of a directory, with their leaf blocks checked.
    fn dir_entries(&self, di: &Dinode, dblock: &[u8]) -> Vec<(Inum, u32, u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut take = |block: &[u8], start: usize| {
            for r in DirentIter::new(block, start) {
                let r = r.expect("dirent chain is valid");
                if !r.dirent.is_unused() {
                    assert_eq!(hash::dirent_hash(r.name), r.dirent.hash);
                    out.push((
                        r.dirent.inum,
                        r.dirent.hash,
                        r.dirent.de_type,
                        r.name.to_vec(),
                    ));
                }
            }
        };
        if !di.is_exhash() {
            take(dblock, Dinode::SIZE);
        } else {
            let mut seen = std::collections::HashSet::new();
            for leaf in self.hash_table(di, dblock) {
                let mut next = leaf;
                while next != 0 && seen.insert(next) {
                    let b = self.block(next);
                    let lf = Leaf::parse(&b).expect("leaf parses");
                    lf.header
                        .check("gfs2_leaf", metatype::LF)
                        .expect("leaf type");
                    next = lf.next;
                    take(&b, Leaf::SIZE);
                }
            }
        }
        assert_eq!(out.len() as u64, u64::from(di.entries), "di_entries");
        out
    }

    /// Look a name up the way the kernel does: by its hash for exhash
    /// directories, by scanning the dinode block otherwise.
    fn lookup(&self, dir: u64, name: &str) -> Inum {
        let (di, b) = self.dinode(dir);
        assert!(di.is_dir());
        let h = hash::dirent_hash(name.as_bytes());
        let blocks = if di.is_exhash() {
            let table = self.read_file(&di, &b);
            let idx = if di.depth == 0 {
                0
            } else {
                (h >> (32 - u32::from(di.depth))) as usize
            };
            let p = u64::from_be_bytes(table[idx * 8..idx * 8 + 8].try_into().expect("8 bytes"));
            let mut v = Vec::new();
            let mut next = p;
            while next != 0 && v.len() < 100 {
                let lb = self.block(next);
                next = Leaf::parse(&lb).expect("leaf").next;
                v.push((lb, Leaf::SIZE));
            }
            v
        } else {
            vec![(b, Dinode::SIZE)]
        };
        for (blk, start) in &blocks {
            for r in DirentIter::new(blk, *start) {
                let r = r.expect("valid dirent");
                if !r.dirent.is_unused() && r.name == name.as_bytes() {
                    assert_eq!(r.dirent.hash, h);
                    return r.dirent.inum;
                }
            }
        }
        panic!("{name} not found in directory {dir}");
    }
}

// ---------------------------------------------------------------- gfs2_edit's field lines

#[derive(Debug, Clone, PartialEq)]
enum V {
    N(u64),
    S(String),
}

type Fields = Vec<(&'static str, V)>;

fn mh_fields(f: &mut Fields, h: &MetaHeader) {
    f.push(("mh_magic", V::N(h.magic.into())));
    f.push(("mh_type", V::N(h.mh_type.into())));
    f.push(("mh_format", V::N(h.format.into())));
}

fn inum_fields(f: &mut Fields, i: &Inum) {
    f.push(("no_formal_ino", V::N(i.formal_ino)));
    f.push(("no_addr", V::N(i.addr)));
}

fn uuid_text(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

fn sb_fields(sb: &Superblock) -> Fields {
    let mut f = Fields::new();
    mh_fields(&mut f, &sb.header);
    f.push(("sb_fs_format", V::N(sb.fs_format.into())));
    f.push(("sb_multihost_format", V::N(sb.multihost_format.into())));
    f.push(("sb_bsize", V::N(sb.bsize.into())));
    f.push(("sb_bsize_shift", V::N(sb.bsize_shift.into())));
    inum_fields(&mut f, &sb.master_dir);
    inum_fields(&mut f, &sb.root_dir);
    f.push(("sb_lockproto", V::S(sb.lockproto_str())));
    f.push(("sb_locktable", V::S(sb.locktable_str())));
    f.push(("uuid", V::S(uuid_text(&sb.uuid))));
    f
}

fn dinode_fields(di: &Dinode) -> Fields {
    let mut f = Fields::new();
    mh_fields(&mut f, &di.header);
    inum_fields(&mut f, &di.num);
    f.push(("di_mode", V::N(di.mode.into())));
    f.push(("di_uid", V::N(di.uid.into())));
    f.push(("di_gid", V::N(di.gid.into())));
    f.push(("di_nlink", V::N(di.nlink.into())));
    f.push(("di_size", V::N(di.size)));
    f.push(("di_blocks", V::N(di.blocks)));
    f.push(("di_atime", V::N(di.atime)));
    f.push(("di_mtime", V::N(di.mtime)));
    f.push(("di_ctime", V::N(di.ctime)));
    f.push(("di_major", V::N(di.major.into())));
    f.push(("di_minor", V::N(di.minor.into())));
    f.push(("di_goal_meta", V::N(di.goal_meta)));
    f.push(("di_goal_data", V::N(di.goal_data)));
    f.push(("di_flags", V::N(di.flags.into())));
    f.push(("di_payload_format", V::N(di.payload_format.into())));
    f.push(("di_height", V::N(di.height.into())));
    f.push(("di_depth", V::N(di.depth.into())));
    f.push(("di_entries", V::N(di.entries.into())));
    f.push(("di_eattr", V::N(di.eattr)));
    f
}

fn rindex_fields(f: &mut Fields, ri: &Rindex) {
    f.push(("ri_addr", V::N(ri.addr)));
    f.push(("ri_length", V::N(ri.length.into())));
    f.push(("ri_data0", V::N(ri.data0)));
    f.push(("ri_data", V::N(ri.data.into())));
    f.push(("ri_bitbytes", V::N(ri.bitbytes.into())));
}

fn rgrp_fields(rg: &Rgrp) -> Fields {
    let mut f = Fields::new();
    mh_fields(&mut f, &rg.header);
    f.push(("rg_flags", V::N(rg.flags.into())));
    f.push(("rg_free", V::N(rg.free.into())));
    f.push(("rg_dinodes", V::N(rg.dinodes.into())));
    f.push(("rg_skip", V::N(rg.skip.into())));
    f.push(("rg_igeneration", V::N(rg.igeneration)));
    f.push(("rg_data0", V::N(rg.data0)));
    f.push(("rg_data", V::N(rg.data.into())));
    f.push(("rg_bitbytes", V::N(rg.bitbytes.into())));
    f.push(("rg_crc", V::N(rg.crc.into())));
    f
}

/// The `  name   value` lines gfs2_edit prints: the label is padded to 24
/// columns, the value follows.
fn field_lines(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter(|l| {
            l.starts_with("  ")
                && l.as_bytes()
                    .get(2)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        })
        .map(|l| {
            let name = l[2..].split_whitespace().next().unwrap_or("").to_string();
            let value = l.get(24..).unwrap_or("").to_string();
            (name, value)
        })
        .collect()
}

fn parse_num(s: &str, radix: u32) -> u64 {
    let t = s.trim();
    let t = if radix == 16 {
        t.trim_start_matches("0x")
    } else {
        t
    };
    u64::from_str_radix(t, radix).unwrap_or_else(|e| panic!("number {s:?}: {e}"))
}

/// Compare gfs2_edit's field lines with ours, in order, every one.
fn compare_fields(ctx: &str, out: &str, want: &Fields) {
    let got = field_lines(out);
    assert_eq!(
        got.len(),
        want.len(),
        "{ctx}: gfs2_edit printed {} fields, we expect {}:\n{out}",
        got.len(),
        want.len()
    );
    for ((gname, graw), (wname, wv)) in got.iter().zip(want) {
        assert_eq!(gname, wname, "{ctx}: field order");
        match wv {
            V::S(s) => assert_eq!(graw.trim_end(), s, "{ctx}: {wname}"),
            V::N(n) => {
                let g = graw.trim();
                let v = if let Some(h) = g.strip_suffix("(hex)") {
                    parse_num(h, 16)
                } else if let Some(o) = g.strip_suffix("(decimal)") {
                    // di_mode: printed with "0%o" but labelled "(decimal)".
                    assert!(o.starts_with('0'), "{ctx}: {wname} {g:?} is octal");
                    parse_num(o, 8)
                } else {
                    let mut it = g.split_whitespace();
                    let (d, h) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
                    assert!(h.starts_with("0x"), "{ctx}: {wname} line {g:?}");
                    let (d, h) = (parse_num(d, 10), parse_num(h, 16));
                    assert_eq!(d, h, "{ctx}: {wname} decimal and hex disagree");
                    d
                };
                assert_eq!(v, *n, "{ctx}: {wname}");
            }
        }
    }
}

/// `Block #N    (0xN) of TOTAL (0xTOTAL) (kind)`: the block gfs2_edit shows.
fn shown_block(ctx: &str, out: &str, img: &Image) -> u64 {
    let l = out
        .lines()
        .find(|l| l.starts_with("Block #"))
        .unwrap_or_else(|| panic!("{ctx}: no 'Block #' line:\n{out}"));
    let mut it = l["Block #".len()..].split_whitespace();
    let n = parse_num(it.next().unwrap_or(""), 10);
    let of = l.split(" of ").nth(1).unwrap_or("");
    let total = parse_num(of.split_whitespace().next().unwrap_or(""), 10);
    assert_eq!(total, img.blocks, "{ctx}: block count");
    n
}

// ---------------------------------------------------------------- directory listings

/// One directory entry line: `   3/3 [5EFC1D83] 4/16590 (0x4/0x40ce) +0: Dir     jindex`.
#[derive(Debug)]
struct EditDirent {
    hash: u32,
    formal: u64,
    addr: u64,
    rahead: u16,
    kind: String,
    name: String,
}

fn parse_dirent_line(l: &str) -> Option<EditDirent> {
    let t = l.strip_prefix("   ")?;
    if !t.as_bytes().first()?.is_ascii_digit() {
        return None;
    }
    let hash_s = t.split('[').nth(1)?.split(']').next()?;
    let after = t.split("] ").nth(1)?;
    let mut it = after.split_whitespace();
    let fa = it.next()?;
    let hex = it.next()?.trim_matches(|c| c == '(' || c == ')');
    let (f, a) = fa.split_once('/')?;
    let (fh, ah) = hex.split_once('/')?;
    let (formal, addr) = (f.parse().ok()?, a.parse().ok()?);
    assert_eq!(formal, parse_num(fh, 16), "dirent line {l:?}");
    assert_eq!(addr, parse_num(ah, 16), "dirent line {l:?}");
    let plus = after.split_once(" +")?.1;
    let (ra, rest) = plus.split_once(": ")?;
    // The type is padded to 7 columns, then one space and the name.
    let kind = rest.get(..7)?.trim_end().to_string();
    let name = rest.get(8..)?.to_string();
    Some(EditDirent {
        hash: u32::from_str_radix(hash_s, 16).ok()?,
        formal,
        addr,
        rahead: ra.parse().ok()?,
        kind,
        name,
    })
}

fn dt_name(t: u16) -> String {
    match t {
        dt::UNKNOWN => "Unknown".into(),
        dt::REG => "File".into(),
        dt::DIR => "Dir".into(),
        dt::LNK => "Symlink".into(),
        dt::BLK => "BlkDev".into(),
        dt::CHR => "ChrDev".into(),
        dt::FIFO => "Fifo".into(),
        dt::SOCK => "Socket".into(),
        other => format!("{other:04x}"),
    }
}

fn number_after(l: &str, key: &str) -> u64 {
    let s = l
        .split(key)
        .nth(1)
        .unwrap_or_else(|| panic!("no {key} in {l:?}"))
        .trim_start();
    let tok: String = s
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    match tok.strip_prefix("0x") {
        Some(h) => parse_num(h, 16),
        None => parse_num(&tok, 10),
    }
}

/// Check every directory block gfs2_edit lists for the directory `dir`
/// (the output of `gfs2_edit -p <dir>`), entry by entry, against our
/// DirentIter over the same block. Returns how many entries it listed.
fn check_dir_listing(ctx: &str, out: &str, img: &Image, dir: u64) -> usize {
    let (di, dblock) = img.dinode(dir);
    assert!(di.is_dir(), "{ctx}: a directory");
    let ours_all = img.dir_entries(&di, &dblock);
    let table = if di.is_exhash() {
        img.hash_table(&di, &dblock)
    } else {
        Vec::new()
    };

    // Sections: (block, leaf line, entries).
    let mut sections: Vec<(u64, String, Vec<EditDirent>)> = Vec::new();
    let mut pending_leaf = None;
    for l in out.lines() {
        let t = l.trim_start();
        if t.as_bytes().first().is_some_and(|c| c.is_ascii_digit()) && t.contains(" => ") {
            let a = t.split(" => ").nth(1).unwrap_or("");
            pending_leaf = Some(parse_num(a.split_whitespace().next().unwrap_or(""), 16));
        } else if l.starts_with("Directory block:") {
            let blk = if di.is_exhash() {
                pending_leaf
                    .take()
                    .expect("leaf address before its listing")
            } else {
                dir
            };
            sections.push((blk, l.to_string(), Vec::new()));
        } else if let Some(d) = parse_dirent_line(l) {
            sections
                .last_mut()
                .unwrap_or_else(|| panic!("{ctx}: dirent line outside a block: {l}"))
                .2
                .push(d);
        } else if l.starts_with("   ") && t.as_bytes().first().is_some_and(|c| c.is_ascii_digit()) {
            panic!("{ctx}: unparsed dirent-like line {l:?}");
        }
    }
    assert!(!sections.is_empty(), "{ctx}: no directory listing:\n{out}");
    if !di.is_exhash() {
        assert_eq!(sections.len(), 1, "{ctx}: stuffed directory has one block");
    }

    let mut listed = 0;
    let mut last_table_pos = 0;
    for (blk, leaf_line, edit) in &sections {
        let b = img.block(*blk);
        let start = if di.is_exhash() {
            let lf = Leaf::parse(&b).expect("leaf");
            lf.header
                .check("gfs2_leaf", metatype::LF)
                .expect("leaf type");
            // gfs2_edit prints lf_dirent_format and lf_next without converting
            // them from big-endian.
            assert_eq!(
                number_after(leaf_line, "lf_depth:"),
                lf.depth.into(),
                "{ctx}"
            );
            assert_eq!(
                number_after(leaf_line, "lf_entries:"),
                lf.entries.into(),
                "{ctx}"
            );
            assert_eq!(number_after(leaf_line, "lf_inode:"), lf.inode, "{ctx}");
            assert_eq!(number_after(leaf_line, "lf_dist:"), lf.dist.into(), "{ctx}");
            assert_eq!(number_after(leaf_line, "lf_nsec:"), lf.nsec.into(), "{ctx}");
            assert_eq!(number_after(leaf_line, "lf_sec:"), lf.sec, "{ctx}");
            assert_eq!(
                number_after(leaf_line, "fmt:"),
                u64::from(lf.dirent_format.swap_bytes()),
                "{ctx}"
            );
            assert_eq!(
                number_after(leaf_line, "next="),
                lf.next.swap_bytes(),
                "{ctx}"
            );
            assert_eq!(lf.inode, dir, "{ctx}: lf_inode");
            // Listed leaves are leaves of our hash table, in table order.
            let pos = table[last_table_pos..]
                .iter()
                .position(|p| p == blk)
                .unwrap_or_else(|| panic!("{ctx}: leaf {blk} not in our hash table {table:?}"));
            last_table_pos += pos + 1;
            Leaf::SIZE
        } else {
            Dinode::SIZE
        };
        // gfs2_edit lists the used records of the block (unused ones, such
        // as a leaf's first record after a split, are skipped).
        let ours: Vec<_> = DirentIter::new(&b, start)
            .map(|r| r.expect("valid dirent chain"))
            .filter(|r| !r.dirent.is_unused())
            .collect();
        let count = leaf_line
            .rsplit_once('(')
            .map(|(_, c)| parse_num(c.split_whitespace().next().unwrap_or(""), 10))
            .unwrap_or_else(|| panic!("{ctx}: no dirent count in {leaf_line:?}"))
            as usize;
        assert_eq!(count, edit.len(), "{ctx}: '(N dirents)' vs lines");
        assert_eq!(
            ours.len(),
            edit.len(),
            "{ctx}: block {blk}: ours {:?} vs gfs2_edit {edit:?}",
            ours.iter()
                .map(|r| String::from_utf8_lossy(r.name).into_owned())
                .collect::<Vec<_>>()
        );
        for (o, e) in ours.iter().zip(edit) {
            let name = String::from_utf8_lossy(o.name);
            assert_eq!(e.name, name, "{ctx}: name");
            assert_eq!(e.hash, o.dirent.hash, "{ctx}: {name} de_hash");
            assert_eq!(
                hash::dirent_hash(o.name),
                o.dirent.hash,
                "{ctx}: {name} hash"
            );
            assert_eq!(
                e.formal, o.dirent.inum.formal_ino,
                "{ctx}: {name} formal ino"
            );
            assert_eq!(e.addr, o.dirent.inum.addr, "{ctx}: {name} addr");
            assert_eq!(e.rahead, o.dirent.rahead, "{ctx}: {name} rahead");
            assert_eq!(e.kind, dt_name(o.dirent.de_type), "{ctx}: {name} type");
            assert!(
                ours_all
                    .iter()
                    .any(|(i, h, _, n)| *i == o.dirent.inum && *h == o.dirent.hash && n == o.name),
                "{ctx}: {name} found by a full directory walk"
            );
        }
        listed += edit.len();
    }
    listed
}

// ---------------------------------------------------------------- the journal

fn lh_flag_names(flags: u32) -> String {
    let syms = [
        (lh::UNMOUNT, "UNMOUNT"),
        (lh::FLUSH_NORMAL, "NORMAL"),
        (lh::FLUSH_SYNC, "SYNC"),
        (lh::FLUSH_SHUTDOWN, "SHUTDOWN"),
        (lh::FLUSH_FREEZE, "FREEZE"),
        (lh::RECOVERY, "RECOVERY"),
        (lh::USERSPACE, "USERSPACE"),
    ];
    syms.iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("/")
}

/// `-p journal0`: every block is a log header; addresses from our own walk
/// of the journal's metadata tree; fields and both checksums match.
fn check_journal(ctx: &str, out: &str, img: &Image, jaddr: u64, case: &Case) -> usize {
    let (di, dblock) = img.dinode(jaddr);
    assert_eq!(di.size, case.journal_mb << 20, "{ctx}: journal size");
    let blocks = img.data_blocks(&di, &dblock);
    assert_eq!(blocks.len() as u64, di.size / u64::from(img.bsize));
    let mut seen = vec![false; blocks.len()];
    let mut n = 0;
    for l in out.lines() {
        if !l.starts_with("0x") {
            continue;
        }
        let (head, rest) = l
            .split_once("): ")
            .unwrap_or_else(|| panic!("{ctx}: journal line {l:?}"));
        let addr = parse_num(head.split_whitespace().next().unwrap_or(""), 16);
        let jrel = parse_num(head.split("(j+").nth(1).unwrap_or("").trim(), 16) as usize;
        let body = rest
            .strip_prefix("Log header: ")
            .unwrap_or_else(|| panic!("{ctx}: fresh journal shows only log headers: {l:?}"));
        assert!(jrel < blocks.len(), "{ctx}: {l}");
        assert_eq!(addr, blocks[jrel], "{ctx}: address of journal block {jrel}");
        assert!(!seen[jrel], "{ctx}: journal block {jrel} twice");
        seen[jrel] = true;

        let b = img.block(addr);
        let lh = LogHeader::parse(&b).expect("log header parses");
        lh.header
            .check("gfs2_log_header", metatype::LH)
            .expect("log header type");
        assert_eq!(lh.header.format, format::LH, "{ctx}");
        assert_eq!(number_after(body, "Seq:"), lh.sequence, "{ctx}: {l}");
        assert_eq!(number_after(body, "tail:"), lh.tail.into(), "{ctx}: {l}");
        assert_eq!(number_after(body, "blk:"), lh.blkno.into(), "{ctx}: {l}");
        assert_eq!(
            lh.blkno as usize, jrel,
            "{ctx}: lh_blkno is the block's place"
        );
        let flags = body
            .rsplit_once('[')
            .and_then(|(_, f)| f.strip_suffix(']'))
            .unwrap_or_else(|| panic!("{ctx}: flags in {l:?}"));
        assert_eq!(flags, lh_flag_names(lh.flags), "{ctx}: {l}");
        assert_eq!(
            lh.hash,
            hash::log_header_hash(&b).expect("hash"),
            "{ctx}: lh_hash {l}"
        );
        assert_eq!(
            lh.crc,
            hash::log_header_crc(&b).expect("crc"),
            "{ctx}: lh_crc {l}"
        );
        n += 1;
    }
    assert_eq!(
        n,
        blocks.len(),
        "{ctx}: gfs2_edit shows every journal block"
    );
    n
}

// ---------------------------------------------------------------- one image

#[derive(Default, Debug)]
struct Counts {
    fields: usize,
    dirents: usize,
    log_headers: usize,
    rgrps: usize,
}

fn check_case(mkfs: &Path, edit: &Path, case: &Case, idx: usize) -> Counts {
    let ctx0 = format!("{case:?}");
    let tmp = make_image(mkfs, case, idx);
    let file = File::open(&tmp.0).expect("open image");
    let len = file.metadata().expect("stat image").len();
    let mut c = Counts::default();

    // Superblock.
    let sb_addr = layout::sb_addr(case.bsize);
    let mut raw = vec![0u8; Superblock::SIZE];
    file.read_exact_at(&mut raw, sb_addr * u64::from(case.bsize))
        .expect("read superblock");
    let sb = Superblock::parse(&raw).expect("superblock parses");
    sb.validate().expect("superblock is valid");
    assert_eq!(sb.to_bytes(), raw, "{ctx0}: superblock round trip");
    assert_eq!(sb.bsize, case.bsize);
    assert_eq!(1u32 << sb.bsize_shift, case.bsize);
    let want_fmt = if case.format1801 {
        format::FS_1801
    } else {
        format::FS
    };
    assert_eq!(sb.fs_format, want_fmt, "{ctx0}");
    assert_eq!(sb.lockproto_str(), case.lockproto());
    assert_eq!(sb.locktable_str(), case.table.unwrap_or(""));
    let img = Image {
        file,
        bsize: sb.bsize,
        blocks: len / u64::from(sb.bsize),
    };

    let ctx = format!("{ctx0} -p sb");
    let out = gfs2_edit(edit, &["sb"], &tmp.0);
    assert_eq!(shown_block(&ctx, &out, &img), sb_addr, "{ctx}");
    let want = sb_fields(&sb);
    compare_fields(&ctx, &out, &want);
    c.fields += want.len();
    // The superblock's two pseudo entries.
    let pseudo: Vec<_> = out.lines().filter_map(parse_dirent_line).collect();
    assert_eq!(pseudo.len(), 2, "{ctx}");
    for (e, (inum, name)) in pseudo
        .iter()
        .zip([(sb.root_dir, "root"), (sb.master_dir, "master")])
    {
        assert_eq!(
            (e.formal, e.addr),
            (inum.formal_ino, inum.addr),
            "{ctx}: {name}"
        );
        assert_eq!(
            (e.hash, e.kind.as_str(), e.name.as_str()),
            (0, "Dir", name),
            "{ctx}"
        );
    }

    // Master directory and the system files in it.
    let master = sb.master_dir.addr;
    let ctx = format!("{ctx0} -p master");
    let out = gfs2_edit(edit, &["master"], &tmp.0);
    assert_eq!(shown_block(&ctx, &out, &img), master, "{ctx}");
    let (mdi, _) = img.dinode(master);
    assert_eq!(mdi.num, sb.master_dir);
    let want = dinode_fields(&mdi);
    compare_fields(&ctx, &out, &want);
    c.fields += want.len();
    c.dirents += check_dir_listing(&ctx, &out, &img, master);

    // Root directory.
    let ctx = format!("{ctx0} -p root");
    let out = gfs2_edit(edit, &["root"], &tmp.0);
    assert_eq!(shown_block(&ctx, &out, &img), sb.root_dir.addr, "{ctx}");
    let (rdi, _) = img.dinode(sb.root_dir.addr);
    assert_eq!(rdi.num, sb.root_dir);
    let want = dinode_fields(&rdi);
    compare_fields(&ctx, &out, &want);
    c.fields += want.len();
    c.dirents += check_dir_listing(&ctx, &out, &img, sb.root_dir.addr);

    // jindex and per_node.
    let jindex = img.lookup(master, "jindex");
    let per_node = img.lookup(master, "per_node");
    for (what, inum) in [("jindex", jindex), ("per_node", per_node)] {
        let ctx = format!("{ctx0} -p {what}");
        let out = gfs2_edit(edit, &[what], &tmp.0);
        assert_eq!(shown_block(&ctx, &out, &img), inum.addr, "{ctx}");
        let (di, _) = img.dinode(inum.addr);
        assert_eq!(di.num, inum, "{ctx}");
        let want = dinode_fields(&di);
        compare_fields(&ctx, &out, &want);
        c.fields += want.len();
        c.dirents += check_dir_listing(&ctx, &out, &img, inum.addr);
    }
    let (jdi, jblk) = img.dinode(jindex.addr);
    let journals: Vec<_> = img
        .dir_entries(&jdi, &jblk)
        .into_iter()
        .filter(|(_, _, _, n)| n.starts_with(b"journal"))
        .collect();
    assert_eq!(
        journals.len() as u32,
        case.journals,
        "{ctx0}: journals in jindex"
    );
    for j in 0..case.journals {
        img.lookup(jindex.addr, &format!("journal{j}"));
    }
    let (pdi, pblk) = img.dinode(per_node.addr);
    assert_eq!(
        img.dir_entries(&pdi, &pblk).len() as u32,
        2 + 3 * case.journals,
        "{ctx0}: per_node has ., .. and three files per journal"
    );

    // rindex.
    let rindex = img.lookup(master, "rindex");
    let ctx = format!("{ctx0} -p rindex");
    let out = gfs2_edit(edit, &["rindex"], &tmp.0);
    assert_eq!(shown_block(&ctx, &out, &img), rindex.addr, "{ctx}");
    let (ridi, riblk) = img.dinode(rindex.addr);
    let data = img.read_file(&ridi, &riblk);
    assert_eq!(data.len() % Rindex::SIZE, 0, "{ctx}: rindex size");
    let ris: Vec<Rindex> = data
        .chunks_exact(Rindex::SIZE)
        .map(|c| {
            let ri = Rindex::parse(c).expect("rindex entry");
            assert_eq!(ri.to_bytes(), c, "rindex round trip");
            ri
        })
        .collect();
    let mut want = dinode_fields(&ridi);
    for ri in &ris {
        rindex_fields(&mut want, ri);
    }
    compare_fields(&ctx, &out, &want);
    c.fields += want.len();
    let found = out
        .lines()
        .find_map(|l| l.strip_prefix("RG index entries found: "))
        .unwrap_or_else(|| panic!("{ctx}: no RG count"));
    assert_eq!(
        parse_num(found.trim_end_matches('.'), 10),
        ris.len() as u64,
        "{ctx}"
    );

    // Every resource group.
    let mut free = 0u64;
    for (n, ri) in ris.iter().enumerate() {
        let ctx = format!("{ctx0} -p rg {n}");
        let out = gfs2_edit(edit, &["rg", &n.to_string()], &tmp.0);
        let at = out
            .lines()
            .find_map(|l| l.strip_prefix(&format!("RG #{n} located at: ")))
            .unwrap_or_else(|| panic!("{ctx}: no location:\n{out}"));
        assert_eq!(
            parse_num(at.split_whitespace().next().unwrap_or(""), 10),
            ri.addr
        );
        let b = img.block(ri.addr);
        let rg = Rgrp::parse(&b).expect("rgrp parses");
        rg.header
            .check("gfs2_rgrp", metatype::RG)
            .expect("rgrp type");
        assert_eq!(rg.to_bytes(), &b[..Rgrp::SIZE], "{ctx}: round trip");
        assert_eq!(rg.crc, hash::rgrp_crc(&b).expect("crc"), "{ctx}: rg_crc");
        assert_eq!(
            (rg.data0, rg.data, rg.bitbytes),
            (ri.data0, ri.data, ri.bitbytes),
            "{ctx}: rgrp agrees with its rindex entry"
        );
        let want = rgrp_fields(&rg);
        compare_fields(&ctx, &out, &want);
        c.fields += want.len();
        free += u64::from(rg.free);
        c.rgrps += 1;
    }
    assert!(free > 0, "{ctx0}: free blocks");

    // journal0.
    let j0 = img.lookup(jindex.addr, "journal0");
    let ctx = format!("{ctx0} -p journal0");
    let out = gfs2_edit(edit, &["journal0"], &tmp.0);
    c.log_headers += check_journal(&ctx, &out, &img, j0.addr, case);
    c
}

#[test]
fn ondisk_agrees_with_gfs2_edit() {
    let mkfs = tool("mkfs.gfs2");
    let edit = tool("gfs2_edit");
    let cases = matrix();
    let t0 = Instant::now();
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let totals: Vec<Counts> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut t = Counts::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(case) = cases.get(i) else { break };
                        let c = check_case(&mkfs, &edit, case, i);
                        t.fields += c.fields;
                        t.dirents += c.dirents;
                        t.log_headers += c.log_headers;
                        t.rgrps += c.rgrps;
                    }
                    t
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    });
    let mut sum = Counts::default();
    for t in totals {
        sum.fields += t.fields;
        sum.dirents += t.dirents;
        sum.log_headers += t.log_headers;
        sum.rgrps += t.rgrps;
    }
    eprintln!(
        "{} images: {} fields, {} dirents, {} log headers, {} rgrps agree with gfs2_edit in {:.1?}",
        cases.len(),
        sum.fields,
        sum.dirents,
        sum.log_headers,
        sum.rgrps,
        t0.elapsed()
    );
    assert!(sum.log_headers > 0 && sum.dirents > 0 && sum.rgrps >= cases.len());
}
