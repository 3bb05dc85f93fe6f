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
    held: Mutex<Held>,
    cv: Condvar,
}

#[derive(Default)]
struct Held {
    ranges: Vec<(u64, u64, bool)>,
    /// Threads waiting on the condition variable: a release wakes them only
    /// when there are some (a wake-up is a system call on every write).
    waiters: usize,
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
            .ranges
            .iter()
            .any(|&(s, e, x)| s < end && start < e && (x || exclusive))
        {
            h.waiters += 1;
            h = self.cv.wait(h).unwrap_or_else(|p| p.into_inner());
            h.waiters -= 1;
        }
        let entry = (start, end, exclusive);
        h.ranges.push(entry);
        RangeGuard { locks: self, entry }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut h = lock(&self.locks.held);
        if let Some(i) = h.ranges.iter().position(|e| *e == self.entry) {
            h.ranges.swap_remove(i);
        }
        let wake = h.waiters > 0;
        drop(h);
        if wake {
            self.locks.cv.notify_all();
        }
    }
}
