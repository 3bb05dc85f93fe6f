//! Locks on ranges of a device's sectors or blocks, for initiators that
//! must read, modify and write whole sectors: a partial write must not
//! interleave with another write to the same sectors.

use std::sync::{Condvar, Mutex, MutexGuard};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Locks on sector ranges: shared for whole-sector writes, exclusive for
/// read-modify-write.
#[derive(Default)]
pub struct RangeLocks {
    held: Mutex<Vec<(u64, u64, bool)>>,
    cv: Condvar,
}

pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    entry: (u64, u64, bool),
}

impl RangeLocks {
    /// Lock `start..end`, shared or exclusive, waiting for overlapping
    /// holders that conflict.
    pub fn lock(&self, start: u64, end: u64, exclusive: bool) -> RangeGuard<'_> {
        let mut h = lock(&self.held);
        while h
            .iter()
            .any(|&(s, e, x)| s < end && start < e && (x || exclusive))
        {
            h = self.cv.wait(h).unwrap_or_else(|p| p.into_inner());
        }
        let entry = (start, end, exclusive);
        h.push(entry);
        RangeGuard { locks: self, entry }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut h = lock(&self.locks.held);
        if let Some(i) = h.iter().position(|e| *e == self.entry) {
            h.swap_remove(i);
        }
        drop(h);
        self.locks.cv.notify_all();
    }
}
