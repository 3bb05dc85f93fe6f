//! DirentIter over arbitrary blocks from an arbitrary start offset (the
//! first two input bytes, big-endian): it must never panic or loop, every
//! record it yields must lie inside the block, records must be contiguous
//! and strictly advancing, and an error must end the walk.
#![no_main]

use gfs2_ondisk::{dirent_size, Dirent, DirentIter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let start = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let block = &data[2..];
    let mut expect = start;
    let mut n = 0usize;
    let mut errored = false;
    for r in DirentIter::new(block, start) {
        assert!(!errored, "nothing after an error");
        n += 1;
        assert!(n <= block.len() / Dirent::SIZE + 1, "more records than fit");
        match r {
            Ok(r) => {
                assert_eq!(r.offset, expect, "records are contiguous");
                let rec = usize::from(r.dirent.rec_len);
                assert!(rec >= Dirent::SIZE && rec & 7 == 0);
                assert!(r.offset + rec <= block.len(), "record inside the block");
                if r.dirent.is_unused() {
                    assert!(r.name.is_empty());
                } else {
                    assert_eq!(r.name.len(), usize::from(r.dirent.name_len));
                    assert!(Dirent::SIZE + r.name.len() <= rec, "name inside the record");
                    assert!(dirent_size(r.name.len()) <= rec + 7);
                    let at = r.offset + Dirent::SIZE;
                    assert_eq!(r.name, &block[at..at + r.name.len()]);
                    let _ = gfs2_ondisk::hash::dirent_hash(r.name);
                }
                assert_eq!(
                    Dirent::parse(&block[r.offset..]).expect("yielded header parses"),
                    r.dirent
                );
                expect = r.offset + rec;
            }
            Err(_) => errored = true,
        }
    }
});
