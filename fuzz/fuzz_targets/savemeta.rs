//! savemeta and restoremeta on hostile input. The first byte picks the
//! case: even, the rest is a savemeta file (plain, or gzip/bzip2 when it
//! starts like one) restored onto a 4 MiB in-memory device, which must end
//! in an error or a restore that wrote nothing past the device; odd, the
//! rest is a list of patches to the metadata blocks of the base image
//! (`GFS2_FUZZ_IMAGE`, as for `mount_walk`) that savemeta then dumps: an
//! error or a dump, never a panic; hangs show up as libFuzzer timeouts.
#![no_main]

use gfs2fuse::dev::BlockDevice;
use gfs2fuse::meta::{format, restore, save};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[path = "common/base_image.rs"]
mod base_image;
use base_image::base;

/// A device in memory that refuses I/O past its end.
struct Mem(Mutex<Vec<u8>>);

impl BlockDevice for Mem {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let v = self.0.lock().unwrap();
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= v.len() as u64)
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&v[offset as usize..end as usize]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let mut v = self.0.lock().unwrap();
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= v.len() as u64)
            .expect("restore wrote past the end of the device");
        v[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
    fn describe(&self) -> String {
        "fuzz memory device".into()
    }
}

/// The base image with some blocks replaced.
struct Patched {
    base: Arc<Vec<u8>>,
    bsize: usize,
    blocks: HashMap<u64, Vec<u8>>,
}

impl BlockDevice for Patched {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.base.len() as u64)
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self.base[offset as usize..end as usize]);
        let bs = self.bsize as u64;
        for blk in offset / bs..end.div_ceil(bs) {
            if let Some(d) = self.blocks.get(&blk) {
                let bstart = blk * bs;
                let a = bstart.max(offset);
                let b = (bstart + bs).min(end);
                buf[(a - offset) as usize..(b - offset) as usize]
                    .copy_from_slice(&d[(a - bstart) as usize..(b - bstart) as usize]);
            }
        }
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> std::io::Result<()> {
        panic!("savemeta wrote to the device");
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        self.base.len() as u64
    }
    fn describe(&self) -> String {
        "fuzz patched image".into()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let c = format::sniff(rest);
        let Ok(r) = format::Reader::from_reader(Box::new(std::io::Cursor::new(rest.to_vec())), c)
        else {
            return;
        };
        let dev = Mem(Mutex::new(vec![0u8; 4 << 20]));
        let _ = restore::restoremeta(r, &dev, false, &mut |_| {});
        return;
    }
    let b = base();
    if b.meta.is_empty() {
        return;
    }
    let mut blocks: HashMap<u64, Vec<u8>> = HashMap::new();
    // Each 5-byte record: metadata block index (u16), offset in block (u16), value.
    for rec in rest.chunks_exact(5) {
        let blk = b.meta[u16::from_le_bytes([rec[0], rec[1]]) as usize % b.meta.len()];
        let within = u16::from_le_bytes([rec[2], rec[3]]) as usize % b.bsize;
        let start = blk as usize * b.bsize;
        let block = blocks
            .entry(blk)
            .or_insert_with(|| b.bytes[start..start + b.bsize].to_vec());
        block[within] = rec[4];
    }
    let dev = Patched {
        base: b.bytes.clone(),
        bsize: b.bsize,
        blocks,
    };
    let opts = save::SaveOptions {
        level: 0,
        progress: false,
    };
    let _ = save::savemeta(&dev, std::io::sink(), opts, &mut |_| {});
});
