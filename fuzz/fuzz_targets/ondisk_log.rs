//! Journal structures, checksums and layout arithmetic on arbitrary
//! input: log header/descriptor parsing, lh_hash/lh_crc/rg_crc over any
//! block, `write_block` producing a block whose checksums verify, and the
//! bitmap/height arithmetic with block sizes and numbers from the input
//! (checked arithmetic: answers are consistent or `None`, never a panic).
#![no_main]

use gfs2_ondisk::{hash, layout, LogDescriptor, LogHeader, Rgrp};
use libfuzzer_sys::fuzz_target;

fn u32_at(d: &[u8], o: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = d.get(o + i).copied().unwrap_or(0);
    }
    u32::from_be_bytes(b)
}

fn u64_at(d: &[u8], o: usize) -> u64 {
    (u64::from(u32_at(d, o)) << 32) | u64::from(u32_at(d, o + 4))
}

fuzz_target!(|data: &[u8]| {
    // Checksums accept any block at least as long as what they cover.
    let h = hash::log_header_hash(data);
    assert_eq!(h.is_ok(), data.len() >= 48);
    let c = hash::log_header_crc(data);
    assert_eq!(c.is_ok(), data.len() >= 52);
    let r = hash::rgrp_crc(data);
    assert_eq!(r.is_ok(), data.len() >= Rgrp::SIZE);
    if let Ok(crc) = r {
        // rg_crc does not depend on the stored crc field.
        let mut m = data[..Rgrp::SIZE].to_vec();
        m[64..68].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(hash::rgrp_crc(&m).ok(), Some(crc));
        if let Ok(rg) = Rgrp::parse(data) {
            let mut out = vec![0u8; Rgrp::SIZE];
            rg.write_with_crc(&mut out).expect("write rgrp");
            assert_eq!(hash::rgrp_crc(&out).ok(), Some(u32_at(&out, 64)));
        }
    }

    if let Ok(lh) = LogHeader::parse(data) {
        assert_eq!(&lh.to_bytes()[..], &data[..LogHeader::SIZE]);
        // write_block fills in checksums that verify.
        let len = (data.len().min(8192) + 7) & !7;
        let mut block = vec![0xffu8; len.max(LogHeader::SIZE)];
        lh.write_block(&mut block).expect("write_block");
        let back = LogHeader::parse(&block).expect("reparse");
        assert_eq!(back.hash, hash::log_header_hash(&block).expect("hash"));
        assert_eq!(back.crc, hash::log_header_crc(&block).expect("crc"));
        assert_eq!(
            (back.sequence, back.blkno, back.flags),
            (lh.sequence, lh.blkno, lh.flags)
        );
    }
    if let Ok(ld) = LogDescriptor::parse(data) {
        assert_eq!(&ld.to_bytes()[..], &data[..LogDescriptor::SIZE]);
    }

    // Layout arithmetic with numbers from the input; block sizes both wild
    // and valid (512..=65536, powers of two).
    let raw_bsize = u32_at(data, 0);
    let valid_bsize = 512u32 << (raw_bsize % 8);
    let index = u64_at(data, 4);
    let size = u64_at(data, 12);
    let height = (u32_at(data, 20) & 0xffff) as u16;
    for bsize in [raw_bsize, valid_bsize] {
        let _ = layout::sb_addr(bsize);
        let _ = layout::diptrs(bsize);
        let _ = layout::inptrs(bsize);
        let _ = layout::stuffed_max(bsize);
        let _ = layout::max_size_for_height(bsize, height);
        let _ = layout::fsb_to_sectors(bsize, index);
        let _ = layout::dir_hash_ptrs(height);
        if let Some(h) = layout::height_for_size(bsize, size) {
            if let Some(max) = layout::max_size_for_height(bsize, h) {
                assert!(max >= size, "height {h} maps size {size}");
            }
            if h > 0 {
                if let Some(below) = layout::max_size_for_height(bsize, h - 1) {
                    assert!(below < size, "height {h} is the smallest for {size}");
                }
            }
        }
        if let Some((blk, off, shift)) = layout::bitmap_position(bsize, index) {
            assert!(off < bsize as usize, "bitmap byte inside the block");
            assert!(shift < 8 && shift & 1 == 0);
            let base = if blk == 0 { Rgrp::SIZE } else { 24 };
            assert!(off >= base);
        }
    }
    // For a valid block size the bitmap positions follow each other.
    let i = index % (1u64 << 40);
    if let (Some(a), Some(b)) = (
        layout::bitmap_position(valid_bsize, i),
        layout::bitmap_position(valid_bsize, i + 1),
    ) {
        let lin = |(blk, off, sh): (u32, usize, u32)| (blk, off * 4 + sh as usize / 2);
        let (ba, la) = lin(a);
        let (bb, lb) = lin(b);
        assert!(bb == ba && lb == la + 1 || bb == ba + 1, "{a:?} then {b:?}");
    }
});
