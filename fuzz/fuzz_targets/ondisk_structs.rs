//! Every fixed-size gfs2-ondisk structure: parsing arbitrary bytes never
//! panics, and whatever parses encodes back to exactly the bytes it came
//! from. The first input byte picks the structure, the rest is its input.
#![no_main]

use gfs2_ondisk::*;
use libfuzzer_sys::fuzz_target;

macro_rules! check {
    ($t:ty, $data:expr) => {{
        let data: &[u8] = $data;
        match <$t>::parse(data) {
            Ok(v) => {
                assert!(
                    data.len() >= <$t>::SIZE,
                    "{} parsed a short input",
                    stringify!($t)
                );
                assert_eq!(
                    &v.to_bytes()[..],
                    &data[..<$t>::SIZE],
                    "{} round trip",
                    stringify!($t)
                );
                let mut out = vec![0xA5u8; data.len()];
                v.write(&mut out)
                    .expect("write into a buffer of the input's size");
                assert_eq!(&out[..<$t>::SIZE], &data[..<$t>::SIZE]);
                assert!(
                    out[<$t>::SIZE..].iter().all(|b| *b == 0xA5),
                    "write stays in SIZE"
                );
                assert_eq!(<$t>::parse(&out).expect("reparse"), v);
            }
            Err(_) => assert!(
                data.len() < <$t>::SIZE,
                "{} refused a full-size input",
                stringify!($t)
            ),
        }
        // A too-short buffer is refused by write, not written past.
        if let Ok(v) = <$t>::parse(data) {
            let mut short = vec![0u8; <$t>::SIZE - 1];
            assert!(v.write(&mut short).is_err());
        }
    }};
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 20 {
        0 => check!(MetaHeader, rest),
        1 => check!(Inum, rest),
        2 => {
            check!(Superblock, rest);
            if let Ok(sb) = Superblock::parse(rest) {
                let _ = sb.validate();
                let _ = (sb.lockproto_str(), sb.locktable_str());
            }
        }
        3 => check!(Rindex, rest),
        4 => check!(Rgrp, rest),
        5 => check!(RgrpLvb, rest),
        6 => {
            check!(Dinode, rest);
            if let Ok(di) = Dinode::parse(rest) {
                let _ = (di.is_dir(), di.is_exhash());
            }
        }
        7 => check!(Dirent, rest),
        8 => check!(Leaf, rest),
        9 => {
            check!(EaHeader, rest);
            if let Ok(h) = EaHeader::parse(rest) {
                let _ = (h.is_last(), h.data_offset());
            }
        }
        10 => check!(LogHeader, rest),
        11 => check!(LogDescriptor, rest),
        12 => check!(InumRange, rest),
        13 => check!(StatfsChange, rest),
        14 => check!(QuotaChange, rest),
        15 => check!(Quota, rest),
        16 => check!(QuotaLvb, rest),
        17 => check!(InodeLvb, rest),
        18 => {
            // Meta header semantics on arbitrary input.
            if let Ok(h) = MetaHeader::parse(rest) {
                let t = rest.get(MetaHeader::SIZE).copied().unwrap_or(0) as u32 % 20;
                let _ = h.check("fuzz", t);
            }
        }
        _ => {
            // Every structure at once over the same bytes.
            check!(MetaHeader, rest);
            check!(Inum, rest);
            check!(Superblock, rest);
            check!(Rindex, rest);
            check!(Rgrp, rest);
            check!(RgrpLvb, rest);
            check!(Dinode, rest);
            check!(Dirent, rest);
            check!(Leaf, rest);
            check!(EaHeader, rest);
            check!(LogHeader, rest);
            check!(LogDescriptor, rest);
            check!(InumRange, rest);
            check!(StatfsChange, rest);
            check!(QuotaChange, rest);
            check!(Quota, rest);
            check!(QuotaLvb, rest);
            check!(InodeLvb, rest);
        }
    }
});
