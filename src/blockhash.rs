//! A hasher for the hot tables keyed by block numbers and lock names.
//!
//! The metadata cache is looked up several times per FUSE request (the
//! dinode, each indirect block on the way to the data), always by a `u64`
//! block number, under one mutex. The standard SipHash costs more than the
//! rest of such a lookup and lengthens the time every serving thread waits
//! for that mutex; a multiply-and-rotate of the number does the job in a
//! couple of instructions. Block numbers come from the disk, so a crafted
//! image could aim at collisions: the multiplier is mixed with a secret
//! drawn once per process from the standard library's random keys, so the
//! colliding numbers cannot be chosen in advance.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// Builds [`BlockHasher`]s sharing this process's secret.
#[derive(Clone, Copy, Debug)]
pub struct BlockHash {
    seed: u64,
}

impl Default for BlockHash {
    fn default() -> Self {
        static SEED: OnceLock<u64> = OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            // RandomState's keys are random per process; hash nothing to get
            // a value derived from them.
            std::collections::hash_map::RandomState::new().hash_one(0u64)
        });
        BlockHash { seed }
    }
}

impl BuildHasher for BlockHash {
    type Hasher = BlockHasher;
    fn build_hasher(&self) -> BlockHasher {
        BlockHasher { h: self.seed }
    }
}

/// Multiply-rotate hashing of integers (and, rarely used here, bytes).
#[derive(Clone, Copy, Debug)]
pub struct BlockHasher {
    h: u64,
}

/// An odd constant with well-spread bits (2^64 / the golden ratio).
const K: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for BlockHasher {
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.h = (self.h.rotate_left(5) ^ n).wrapping_mul(K);
    }
    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn finish(&self) -> u64 {
        // The high bits are the best mixed; hashbrown takes its control
        // byte from the top and its index from the bottom.
        self.h ^ (self.h >> 29)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn neighbouring_blocks_spread_over_buckets() {
        // Consecutive block numbers (a file's indirect blocks, a run of
        // dinodes) must not pile into few buckets: look at the low 10 bits.
        let b = BlockHash::default();
        let buckets: HashSet<u64> = (1_000_000u64..1_004_096)
            .map(|n| b.hash_one(n) & 1023)
            .collect();
        assert!(
            buckets.len() > 900,
            "{} of 1024 buckets used",
            buckets.len()
        );
        let strided: HashSet<u64> = (0u64..4096).map(|n| b.hash_one(n << 16) & 1023).collect();
        assert!(
            strided.len() > 900,
            "{} of 1024 buckets used",
            strided.len()
        );
    }
}
