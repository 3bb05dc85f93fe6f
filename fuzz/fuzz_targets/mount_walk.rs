//! Mount + walk over a damaged image: the fuzzer's bytes are a list of
//! patches applied to the metadata blocks of a base image (named by
//! `GFS2_FUZZ_IMAGE`; `scripts/fuzz.sh` makes one with gfs2-utils). Every
//! mount must either be refused with an error or walk the whole tree
//! without panicking; hangs show up as libFuzzer timeouts.
#![no_main]

use gfs2fuse::dev::BlockDevice;
use gfs2fuse::fs::{Fs, MountOptions};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[path = "common/base_image.rs"]
mod base_image;
use base_image::base;

/// Copy-on-write view of the base image, per 512-byte sector.
struct Overlay {
    base: Arc<Vec<u8>>,
    over: Mutex<HashMap<u64, Vec<u8>>>,
}

impl BlockDevice for Overlay {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.base.len() as u64)
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self.base[offset as usize..end as usize]);
        let over = self.over.lock().unwrap();
        for s in offset / 512..end.div_ceil(512) {
            if let Some(d) = over.get(&s) {
                let ss = s * 512;
                let a = ss.max(offset);
                let b = (ss + 512).min(end);
                buf[(a - offset) as usize..(b - offset) as usize]
                    .copy_from_slice(&d[(a - ss) as usize..(b - ss) as usize]);
            }
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.base.len() as u64)
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        let mut over = self.over.lock().unwrap();
        for s in offset / 512..end.div_ceil(512) {
            let ss = s * 512;
            let sec = over
                .entry(s)
                .or_insert_with(|| self.base[ss as usize..ss as usize + 512].to_vec());
            let a = ss.max(offset);
            let b = (ss + 512).min(end);
            sec[(a - ss) as usize..(b - ss) as usize]
                .copy_from_slice(&buf[(a - offset) as usize..(b - offset) as usize]);
        }
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.base.len() as u64
    }
    fn describe(&self) -> String {
        "fuzz overlay".into()
    }
}

/// Visit every reachable inode once, reading everything the FUSE adapter
/// would read, with a budget so a looping tree cannot run forever.
fn walk(fs: &Fs, root: u64) {
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![root];
    let mut budget = 2000usize;
    while let Some(ino) = todo.pop() {
        if !seen.insert(ino) || budget == 0 {
            continue;
        }
        budget -= 1;
        let Ok(attr) = fs.getattr(ino) else { continue };
        let _ = fs.listxattr(ino).map(|names| {
            for n in names {
                let _ = fs.getxattr(ino, &n);
            }
        });
        let _ = fs.readlink(ino);
        let _ = fs.read(ino, 0, 1 << 16);
        let _ = fs.read(ino, attr.size.saturating_sub(4096), 8192);
        let _ = fs.seek(ino, 0, true);
        let _ = fs.seek(ino, 0, false);
        let mut kids = Vec::new();
        let _ = fs.readdir(ino, 0, |it| {
            kids.push((it.name.to_vec(), it.ino));
            kids.len() < 4096
        });
        for (name, child) in kids {
            if name != b"." && name != b".." {
                let _ = fs.lookup(ino, &name);
                todo.push(child);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let b = base();
    if b.meta.is_empty() {
        return;
    }
    let dev = Overlay {
        base: b.bytes.clone(),
        over: Mutex::new(HashMap::new()),
    };
    // Each 5-byte record: metadata block index (u16), offset in block (u16), value.
    for rec in data.chunks_exact(5) {
        let blk = b.meta[u16::from_le_bytes([rec[0], rec[1]]) as usize % b.meta.len()];
        let within = u16::from_le_bytes([rec[2], rec[3]]) as usize % b.bsize;
        let off = blk * b.bsize as u64 + within as u64;
        let _ = dev.write_at(&[rec[4]], off);
    }
    let dev: Arc<dyn BlockDevice> = Arc::new(dev);
    // Read-only: the walk only reads, and a writable mount would also start
    // the commit timer and the unlinked-inode scan for every input.
    let opts = MountOptions {
        read_only: true,
        ..MountOptions::default()
    };
    if let Ok(fs) = Fs::mount(dev, opts) {
        walk(&fs, fs.root());
        walk(&fs, fs.superblock().master_dir.addr);
        let _ = fs.statfs();
        let _ = fs.unmount();
    }
});
