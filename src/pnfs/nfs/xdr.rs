//! XDR (RFC 4506) for the NFSv4.1 server: a decoder over untrusted bytes
//! that never reads past its buffer nor allocates more than the buffer
//! could hold, and an encoder into a growing `Vec`.
//!
//! Every request the server parses comes off the network, so each read is
//! bounds-checked and a length prefix is compared with what is left before
//! anything is allocated: a lying length is an error ([`XdrError`]), never a
//! panic or a huge allocation.

/// A request did not decode: `NFS4ERR_BADXDR` / `GARBAGE_ARGS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XdrError {
    /// The buffer ended inside an item.
    #[error("XDR: short buffer")]
    Short,
    /// A length or discriminant is out of the allowed range.
    #[error("XDR: bad value")]
    Bad,
}

/// Result of decoding.
pub type XResult<T> = Result<T, XdrError>;

/// A cursor over untrusted XDR bytes.
#[derive(Debug, Clone)]
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    /// Decode `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Dec { buf, pos: 0 }
    }

    /// Bytes not yet decoded.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Offset of the next byte.
    pub fn pos(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: usize) -> XResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(XdrError::Short);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// `unsigned int`.
    pub fn u32(&mut self) -> XResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// `int`.
    pub fn i32(&mut self) -> XResult<i32> {
        Ok(self.u32()? as i32)
    }

    /// `unsigned hyper`.
    pub fn u64(&mut self) -> XResult<u64> {
        let hi = self.u32()? as u64;
        let lo = self.u32()? as u64;
        Ok(hi << 32 | lo)
    }

    /// `hyper`.
    pub fn i64(&mut self) -> XResult<i64> {
        Ok(self.u64()? as i64)
    }

    /// `bool`: only 0 and 1 are valid.
    pub fn bool(&mut self) -> XResult<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(XdrError::Bad),
        }
    }

    /// `opaque[n]` (fixed length, padded to 4).
    pub fn fixed(&mut self, n: usize) -> XResult<&'a [u8]> {
        let s = self.take(n)?;
        self.take(pad(n))?;
        Ok(s)
    }

    /// `opaque[N]` into an array.
    pub fn array<const N: usize>(&mut self) -> XResult<[u8; N]> {
        let s = self.fixed(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// `opaque<max>` (variable length, padded to 4).
    pub fn opaque(&mut self, max: usize) -> XResult<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(XdrError::Bad);
        }
        self.fixed(n)
    }

    /// The count of a variable-length array whose items take at least
    /// `min_item` bytes each: refused when the buffer cannot hold that many.
    pub fn count(&mut self, max: usize, min_item: usize) -> XResult<usize> {
        let n = self.u32()? as usize;
        if n > max || n.saturating_mul(min_item.max(1)) > self.remaining() {
            return Err(XdrError::Bad);
        }
        Ok(n)
    }

    /// `unsigned int<max>`.
    pub fn u32s(&mut self, max: usize) -> XResult<Vec<u32>> {
        let n = self.count(max, 4)?;
        (0..n).map(|_| self.u32()).collect()
    }

    /// The rest of the buffer.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
}

/// Padding after `n` bytes of opaque data.
pub fn pad(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// An XDR encoder.
#[derive(Debug, Default, Clone)]
pub struct Enc {
    /// The bytes so far.
    pub buf: Vec<u8>,
}

impl Enc {
    /// An empty encoder.
    pub fn new() -> Self {
        Enc::default()
    }

    /// `unsigned int`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// `int`.
    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.u32(v as u32)
    }

    /// `unsigned hyper`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// `hyper`.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.u64(v as u64)
    }

    /// `bool`.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u32(v as u32)
    }

    /// `opaque[n]`.
    pub fn fixed(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self.buf.extend_from_slice(&[0u8; 3][..pad(b.len())]);
        self
    }

    /// `opaque<>`.
    pub fn opaque(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.fixed(b)
    }

    /// `unsigned int<>`.
    pub fn u32s(&mut self, v: &[u32]) -> &mut Self {
        self.u32(v.len() as u32);
        for &x in v {
            self.u32(x);
        }
        self
    }

    /// Current length.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Nothing encoded yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Overwrite the `u32` at `at` (a length or count written before its items).
    pub fn patch_u32(&mut self, at: usize, v: u32) {
        if let Some(s) = self.buf.get_mut(at..at + 4) {
            s.copy_from_slice(&v.to_be_bytes());
        }
    }

    /// Cut back to `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut e = Enc::new();
        e.u32(7)
            .i32(-3)
            .u64(u64::MAX - 5)
            .i64(-9)
            .bool(true)
            .opaque(b"abcde")
            .fixed(b"xy")
            .u32s(&[1, 2, 3]);
        assert_eq!(e.len() % 4, 0);
        let mut d = Dec::new(&e.buf);
        assert_eq!(d.u32(), Ok(7));
        assert_eq!(d.i32(), Ok(-3));
        assert_eq!(d.u64(), Ok(u64::MAX - 5));
        assert_eq!(d.i64(), Ok(-9));
        assert_eq!(d.bool(), Ok(true));
        assert_eq!(d.opaque(10), Ok(&b"abcde"[..]));
        assert_eq!(d.fixed(2), Ok(&b"xy"[..]));
        assert_eq!(d.u32s(8), Ok(vec![1, 2, 3]));
        assert_eq!(d.remaining(), 0);
        assert_eq!(d.u32(), Err(XdrError::Short));
    }

    #[test]
    fn lying_lengths_are_refused() {
        // An opaque claiming 4 GiB in an 8-byte buffer.
        let b = [0xff, 0xff, 0xff, 0xf0, 1, 2, 3, 4];
        assert_eq!(Dec::new(&b).opaque(usize::MAX), Err(XdrError::Short));
        assert_eq!(Dec::new(&b).opaque(16), Err(XdrError::Bad));
        // An array count larger than the bytes could hold.
        assert_eq!(Dec::new(&b).count(usize::MAX, 4), Err(XdrError::Bad));
        // A bool that is neither 0 nor 1.
        assert_eq!(Dec::new(&[0, 0, 0, 2]).bool(), Err(XdrError::Bad));
        // Padding missing after opaque data.
        assert_eq!(Dec::new(&[0, 0, 0, 1, 9]).opaque(8), Err(XdrError::Short));
    }
}
