//! Every structure decodes any byte string of its size and encodes it back
//! unchanged; shorter inputs give `Truncated`, never a panic.
#![allow(clippy::field_reassign_with_default)]

use gfs2_ondisk::*;

/// xorshift64*: deterministic random bytes without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

macro_rules! roundtrip {
    ($name:ident, $t:ty, $size:expr) => {
        #[test]
        fn $name() {
            assert_eq!(<$t>::SIZE, $size, "size of {}", stringify!($t));
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ $size as u64);
            for _ in 0..2000 {
                let raw = rng.bytes(<$t>::SIZE);
                let v = <$t>::parse(&raw).expect("full-size input parses");
                assert_eq!(v.to_bytes(), raw, "{} round trip", stringify!($t));
                // Parsing the encoding gives the same value.
                assert_eq!(<$t>::parse(&v.to_bytes()).unwrap(), v);
                // Extra trailing bytes are ignored; write leaves them alone.
                let mut longer = raw.clone();
                longer.extend_from_slice(&[0xAA; 7]);
                assert_eq!(<$t>::parse(&longer).unwrap(), v);
                let mut out = vec![0x55u8; <$t>::SIZE + 7];
                v.write(&mut out).unwrap();
                assert_eq!(&out[..<$t>::SIZE], &raw[..]);
                assert!(out[<$t>::SIZE..].iter().all(|b| *b == 0x55));
            }
            for n in 0..<$t>::SIZE {
                let raw = rng.bytes(n);
                assert!(matches!(
                    <$t>::parse(&raw),
                    Err(FormatError::Truncated { .. })
                ));
                let mut out = vec![0u8; n];
                assert!(<$t>::default().write(&mut out).is_err());
            }
        }
    };
}

roundtrip!(meta_header, MetaHeader, 24);
roundtrip!(inum, Inum, 16);
roundtrip!(superblock, Superblock, 272);
roundtrip!(rindex, Rindex, 96);
roundtrip!(rgrp, Rgrp, 128);
roundtrip!(rgrp_lvb, RgrpLvb, 32);
roundtrip!(dinode, Dinode, 232);
roundtrip!(dirent, Dirent, 40);
roundtrip!(leaf, Leaf, 104);
roundtrip!(ea_header, EaHeader, 16);
roundtrip!(log_header, LogHeader, 120);
roundtrip!(log_descriptor, LogDescriptor, 72);
roundtrip!(inum_range, InumRange, 16);
roundtrip!(statfs_change, StatfsChange, 24);
roundtrip!(quota_change, QuotaChange, 16);
roundtrip!(quota, Quota, 88);
roundtrip!(quota_lvb, QuotaLvb, 32);
roundtrip!(inode_lvb, InodeLvb, 16);

#[test]
fn field_offsets_match_the_c_header() {
    // Spot-check offsets from gfs2_ondisk.h by writing one field at a time.
    let mut sb = Superblock::default();
    sb.bsize = 0x0102_0304;
    sb.root_dir.addr = 0x1122_3344_5566_7788;
    sb.uuid[15] = 0xEE;
    let b = sb.to_bytes();
    assert_eq!(&b[36..40], &[1, 2, 3, 4]);
    assert_eq!(&b[88..96], &0x1122_3344_5566_7788u64.to_be_bytes());
    assert_eq!(b[271], 0xEE);

    let mut di = Dinode::default();
    di.height = 0xABCD;
    di.depth = 0x1234;
    di.eattr = 7;
    di.ctime_nsec = 9;
    let b = di.to_bytes();
    assert_eq!(&b[138..140], &[0xAB, 0xCD]);
    assert_eq!(&b[146..148], &[0x12, 0x34]);
    assert_eq!(&b[168..176], &7u64.to_be_bytes());
    assert_eq!(&b[184..188], &9u32.to_be_bytes());

    let mut lh = LogHeader::default();
    lh.local_dinodes = -1;
    lh.jinode = 0x42;
    let b = lh.to_bytes();
    assert_eq!(&b[112..120], &[0xFF; 8]);
    assert_eq!(&b[72..80], &0x42u64.to_be_bytes());

    let mut rg = Rgrp::default();
    rg.bitbytes = 0x0A0B_0C0D;
    rg.crc = 0xDEAD_BEEF;
    let b = rg.to_bytes();
    assert_eq!(&b[60..64], &[0x0A, 0x0B, 0x0C, 0x0D]);
    assert_eq!(&b[64..68], &0xDEAD_BEEFu32.to_be_bytes());
}

#[test]
fn bitmap_get_set() {
    let mut bm = vec![0u8; 3];
    for i in 0..12 {
        assert_eq!(bitmap_get(&bm, i), Some(BlockState::Free));
    }
    assert_eq!(
        bitmap_set(&mut bm, 5, BlockState::Dinode),
        Some(BlockState::Free)
    );
    assert_eq!(
        bitmap_set(&mut bm, 6, BlockState::Unlinked),
        Some(BlockState::Free)
    );
    assert_eq!(
        bitmap_set(&mut bm, 0, BlockState::Used),
        Some(BlockState::Free)
    );
    assert_eq!(bm, vec![0b01, 0b0010_1100, 0]);
    assert_eq!(bitmap_get(&bm, 5), Some(BlockState::Dinode));
    assert_eq!(bitmap_get(&bm, 12), None);
    assert_eq!(bitmap_set(&mut bm, 12, BlockState::Used), None);
}

#[test]
fn dirent_iter_walks_and_stops_on_corruption() {
    let mut blk = vec![0u8; 512];
    let names: [&[u8]; 3] = [b".", b"..", b"a-longer-name"];
    let mut off = Dinode::SIZE;
    for (i, n) in names.iter().enumerate() {
        let rec = if i == names.len() - 1 {
            512 - off
        } else {
            dirent_size(n.len())
        };
        let d = Dirent {
            inum: Inum {
                formal_ino: 1,
                addr: 100 + i as u64,
            },
            hash: hash::dirent_hash(n),
            rec_len: rec as u16,
            name_len: n.len() as u16,
            de_type: dt::DIR,
            ..Dirent::default()
        };
        d.write(&mut blk[off..]).unwrap();
        blk[off + Dirent::SIZE..off + Dirent::SIZE + n.len()].copy_from_slice(n);
        off += rec;
    }
    let got: Vec<_> = DirentIter::new(&blk, Dinode::SIZE)
        .map(|r| r.unwrap().name.to_vec())
        .collect();
    assert_eq!(got, names.iter().map(|n| n.to_vec()).collect::<Vec<_>>());

    // A record length that overruns the block ends the walk with one error.
    let mut bad = blk.clone();
    bad[Dinode::SIZE + 20..Dinode::SIZE + 22].copy_from_slice(&600u16.to_be_bytes());
    let items: Vec<_> = DirentIter::new(&bad, Dinode::SIZE).collect();
    assert_eq!(items.len(), 1);
    assert!(items[0].is_err());
    // A zero record length cannot loop forever.
    bad[Dinode::SIZE + 20..Dinode::SIZE + 22].copy_from_slice(&0u16.to_be_bytes());
    assert_eq!(DirentIter::new(&bad, Dinode::SIZE).count(), 1);
    // Random blocks never panic and always terminate.
    let mut rng = Rng(7);
    for _ in 0..5000 {
        let b = rng.bytes(256);
        let start = (rng.next() % 300) as usize;
        assert!(DirentIter::new(&b, start).count() <= 256 / 40 + 1);
    }
}

#[test]
fn ea_iter_walks_stuffed_and_pointer_records() {
    let mut blk = vec![0u8; 1024];
    MetaHeader::new(metatype::EA, format::EA)
        .write(&mut blk)
        .unwrap();
    let off = MetaHeader::SIZE;
    let h1 = EaHeader {
        rec_len: EaHeader::stuffed_rec_len(4, 5) as u32,
        data_len: 5,
        name_len: 4,
        ea_type: ea::TYPE_USR,
        ..EaHeader::default()
    };
    h1.write(&mut blk[off..]).unwrap();
    blk[off + 16..off + 20].copy_from_slice(b"test");
    blk[off + h1.data_offset()..off + h1.data_offset() + 5].copy_from_slice(b"hello");
    let off2 = off + h1.rec_len as usize;
    let h2 = EaHeader {
        rec_len: (1024 - off2) as u32,
        data_len: 70000,
        name_len: 3,
        ea_type: ea::TYPE_SYS,
        flags: ea::FLAG_LAST,
        num_ptrs: 2,
        pad: 0,
    };
    h2.write(&mut blk[off2..]).unwrap();
    blk[off2 + 16..off2 + 19].copy_from_slice(b"big");
    let p = off2 + h2.ptrs_offset();
    blk[p..p + 8].copy_from_slice(&77u64.to_be_bytes());
    blk[p + 8..p + 16].copy_from_slice(&78u64.to_be_bytes());
    let recs: Vec<_> = EaIter::new(&blk).map(|r| r.unwrap()).collect();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].name, b"test");
    assert_eq!(recs[0].value, Some(&b"hello"[..]));
    assert_eq!(recs[1].name, b"big");
    assert_eq!(recs[1].ptrs, vec![77, 78]);

    let mut rng = Rng(11);
    for _ in 0..5000 {
        let b = rng.bytes(512);
        assert!(EaIter::new(&b).count() <= 512 / 16 + 1);
    }
}

#[test]
fn log_header_checksums_self_consistent() {
    let lh = LogHeader {
        sequence: 5,
        flags: lh::UNMOUNT | lh::USERSPACE,
        blkno: 3,
        addr: 1000,
        ..LogHeader::default()
    };
    let mut blk = vec![0xFFu8; 4096];
    lh.write_block(&mut blk).unwrap();
    let back = LogHeader::parse(&blk).unwrap();
    assert_eq!(back.hash, hash::log_header_hash(&blk).unwrap());
    assert_eq!(back.crc, hash::log_header_crc(&blk).unwrap());
    assert!(blk[LogHeader::SIZE..].iter().all(|b| *b == 0));
}

#[test]
fn rgrp_crc_written_and_checked() {
    let rg = Rgrp {
        free: 10,
        data0: 20,
        data: 30,
        ..Rgrp::default()
    };
    let mut b = vec![0u8; 128];
    rg.write_with_crc(&mut b).unwrap();
    let back = Rgrp::parse(&b).unwrap();
    assert_eq!(back.crc, hash::rgrp_crc(&b).unwrap());
    assert_ne!(back.crc, 0);
}

#[test]
fn layout_arithmetic() {
    assert_eq!(layout::sb_addr(4096), 16);
    assert_eq!(layout::sb_addr(512), 128);
    assert_eq!(layout::diptrs(4096), 483);
    assert_eq!(layout::inptrs(4096), 509);
    assert_eq!(layout::height_for_size(4096, 0), Some(0));
    assert_eq!(layout::height_for_size(4096, 3864), Some(0));
    assert_eq!(layout::height_for_size(4096, 3865), Some(1));
    assert_eq!(layout::height_for_size(4096, 483 * 4096), Some(1));
    assert_eq!(layout::height_for_size(4096, 483 * 4096 + 1), Some(2));
    assert_eq!(layout::height_for_size(512, u64::MAX), Some(10));
    assert_eq!(layout::height_for_size(240, u64::MAX), None);
    assert_eq!(layout::bitmap_position(4096, 0), Some((0, 128, 0)));
    assert_eq!(layout::bitmap_position(4096, 5), Some((0, 129, 2)));
    let first = layout::rgrp_header_blocks_mapped(4096);
    assert_eq!(layout::bitmap_position(4096, first), Some((1, 24, 0)));
    // Nonsense block sizes give answers or None, never a panic.
    for bs in [0u32, 1, 24, 128, 232, u32::MAX] {
        let _ = layout::bitmap_position(bs, u64::MAX);
        let _ = layout::height_for_size(bs, u64::MAX);
        let _ = layout::sb_addr(bs);
    }
}

#[test]
fn dirent_hash_known_values() {
    // Values read from a directory gfs2-utils' mkfs.gfs2 wrote (the master
    // directory as printed by `gfs2_edit -p master`).
    assert_eq!(hash::dirent_hash(b"."), 0x0ED4_E242);
    assert_eq!(hash::dirent_hash(b".."), 0x9608_161C);
    assert_eq!(hash::dirent_hash(b"jindex"), 0x5EFC_1D83);
    assert_eq!(hash::dirent_hash(b"per_node"), 0x486E_EE32);
    assert_eq!(hash::dirent_hash(b"inum"), 0x4468_11E9);
    assert_eq!(hash::dirent_hash(b"statfs"), 0x1AEF_248E);
    assert_eq!(hash::dirent_hash(b"rindex"), 0xB179_9D75);
    assert_eq!(hash::dirent_hash(b"quota"), 0x6C1C_0FED);
}
