//! The base image the image fuzzers patch: named by `GFS2_FUZZ_IMAGE`
//! (`scripts/fuzz.sh` makes one with gfs2-utils), read once, with the
//! numbers of its metadata blocks (those that start with the GFS2 magic).

use std::sync::{Arc, OnceLock};

pub struct Base {
    pub bytes: Arc<Vec<u8>>,
    pub bsize: usize,
    pub meta: Vec<u64>,
}

pub fn base() -> &'static Base {
    static B: OnceLock<Base> = OnceLock::new();
    B.get_or_init(|| {
        let path = std::env::var("GFS2_FUZZ_IMAGE")
            .expect("set GFS2_FUZZ_IMAGE to a GFS2 image (scripts/fuzz.sh does)");
        let bytes = std::fs::read(&path).expect("read GFS2_FUZZ_IMAGE");
        let bsize = u32::from_be_bytes(bytes[65536 + 36..65536 + 40].try_into().unwrap()) as usize;
        let meta = bytes
            .chunks(bsize)
            .enumerate()
            .filter(|(_, b)| b.len() >= 4 && b[..4] == [0x01, 0x16, 0x19, 0x70])
            .map(|(i, _)| i as u64)
            .collect();
        Base {
            bytes: Arc::new(bytes),
            bsize,
            meta,
        }
    })
}
