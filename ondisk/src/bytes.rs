//! Big-endian field access on slices whose length the caller has checked.
//!
//! The readers take the offset of a field inside a structure whose `SIZE`
//! bytes were verified with [`crate::error::need`]; they still use checked
//! slicing and fall back to zero rather than panic, so a wrong offset in this
//! crate cannot turn into an out-of-bounds read.

pub(crate) fn get<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(s) = off.checked_add(N).and_then(|end| b.get(off..end)) {
        out.copy_from_slice(s);
    }
    out
}

pub(crate) fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes(get(b, off))
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(get(b, off))
}

pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(get(b, off))
}

pub(crate) fn put(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(s) = off.checked_add(v.len()).and_then(|end| b.get_mut(off..end)) {
        s.copy_from_slice(v);
    }
}

pub(crate) fn put16(b: &mut [u8], off: usize, v: u16) {
    put(b, off, &v.to_be_bytes());
}

pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) {
    put(b, off, &v.to_be_bytes());
}

pub(crate) fn put64(b: &mut [u8], off: usize, v: u64) {
    put(b, off, &v.to_be_bytes());
}

/// Declare the `to_bytes` helper every fixed-size structure shares.
macro_rules! fixed_struct {
    ($t:ty) => {
        impl $t {
            /// Encode into a fresh buffer of exactly `SIZE` bytes.
            pub fn to_bytes(&self) -> Vec<u8> {
                let mut v = vec![0u8; Self::SIZE];
                // The buffer has exactly SIZE bytes, so write cannot fail.
                let _ = self.write(&mut v);
                v
            }
        }
    };
}
pub(crate) use fixed_struct;
