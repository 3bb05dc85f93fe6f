//! EaIter over an arbitrary extended attribute block: no panic, no loop;
//! every record it yields lies inside the block with its name and inline
//! value or pointers inside the record; the walk stops after the record
//! flagged last or after an error.
#![no_main]

use gfs2_ondisk::{EaHeader, EaIter, MetaHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut expect = MetaHeader::SIZE;
    let mut stop = false;
    let mut n = 0usize;
    for r in EaIter::new(data) {
        assert!(!stop, "nothing after the last record or an error");
        n += 1;
        assert!(
            n <= data.len() / EaHeader::SIZE + 1,
            "more records than fit"
        );
        match r {
            Ok(r) => {
                assert_eq!(r.offset, expect, "records are contiguous");
                let rec = r.header.rec_len as usize;
                assert!(rec >= EaHeader::SIZE && rec & 7 == 0);
                assert!(r.offset + rec <= data.len(), "record inside the block");
                assert_eq!(r.name.len(), usize::from(r.header.name_len));
                let rec_bytes = &data[r.offset..r.offset + rec];
                assert_eq!(
                    r.name,
                    &rec_bytes[EaHeader::SIZE..EaHeader::SIZE + r.name.len()]
                );
                if let Some(v) = r.value {
                    assert_eq!(v.len(), r.header.data_len as usize);
                    let at = r.header.data_offset();
                    assert_eq!(v, &rec_bytes[at..at + v.len()]);
                }
                assert_eq!(r.ptrs.len(), usize::from(r.header.num_ptrs));
                if !r.ptrs.is_empty() {
                    assert!(r.value.is_none());
                    assert!(r.header.ptrs_offset() + 8 * r.ptrs.len() <= rec);
                }
                assert_eq!(EaHeader::parse(rec_bytes).expect("header parses"), r.header);
                expect = r.offset + rec;
                stop = r.header.is_last();
            }
            Err(_) => stop = true,
        }
    }
});
