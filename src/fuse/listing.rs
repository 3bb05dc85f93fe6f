//! The listing of one open directory handle, filled while it is read.
//!
//! A listing is taken once per `opendir` (at offset 0, so `rewinddir` sees
//! changes) and READDIR calls are served from it: offsets stay stable however
//! many calls a listing takes.
//!
//! Through FUSE a big directory is read in requests of the caller's buffer
//! size (32 KiB from glibc, ~800 names), and the kernel's own work for them
//! (parsing, copying out, filling its directory cache) takes as long as our
//! walk of the leaf blocks. So a big directory is walked on a thread of its
//! own that publishes entries in chunks as it goes: the first request is
//! answered after a few leaves, and the rest of the walk runs on the other
//! core beside the kernel's work instead of before it. Small directories are
//! listed on the requesting thread; a thread would cost more than the walk.

use crate::error::{FsError, Result};
use crate::fs::{DirItem, Fs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Entries per published chunk: about one 32 KiB READDIR reply.
const CHUNK: usize = 1024;
/// Directories that say they hold fewer entries than this are listed on the
/// requesting thread.
const BACKGROUND_FROM: u64 = 4 * CHUNK as u64;

/// Part of a listing: names in one buffer, fixed-size records beside them.
struct Chunk {
    names: Vec<u8>,
    items: Vec<Item>,
}

/// 24 bytes: a listing of 100,000 entries is a few MiB of fresh memory,
/// and touching it is a good part of the walk's cost.
struct Item {
    next: u64,
    ino: u64,
    /// End of the name in `names` (a chunk's names are at most
    /// `CHUNK * 255` bytes).
    name_end: u32,
    dtype: u16,
}

impl Chunk {
    fn new() -> Chunk {
        Chunk {
            names: Vec::with_capacity(CHUNK * 16),
            items: Vec::with_capacity(CHUNK),
        }
    }

    fn push(&mut self, e: &DirItem<'_>) {
        self.names.extend_from_slice(e.name);
        self.items.push(Item {
            next: e.next,
            ino: e.ino,
            name_end: self.names.len() as u32,
            dtype: e.dtype,
        });
    }

    /// The entries after cookie `offset`.
    fn from(&self, offset: u64) -> impl Iterator<Item = DirItem<'_>> {
        let start = self.items.partition_point(|e| e.next <= offset);
        let mut name_at = start
            .checked_sub(1)
            .map_or(0, |i| self.items[i].name_end as usize);
        self.items[start..].iter().map(move |e| {
            let end = e.name_end as usize;
            let name = &self.names[name_at..end];
            name_at = end;
            DirItem {
                name,
                ino: e.ino,
                dtype: e.dtype,
                next: e.next,
            }
        })
    }
}

#[derive(Default)]
struct Progress {
    chunks: Vec<Arc<Chunk>>,
    /// Set when the walk is over: `Err(errno)` if it failed part way.
    end: Option<std::result::Result<(), i32>>,
}

/// A directory's entries as one open handle sees them.
#[derive(Default)]
pub(crate) struct Listing {
    progress: Mutex<Progress>,
    grown: Condvar,
    /// The handle is gone: a walk still running stops.
    cancelled: AtomicBool,
}

impl Listing {
    /// Start listing directory `ino`: on this thread for a small directory,
    /// on a new one for a big one.
    pub(crate) fn start(fs: &Arc<Fs>, ino: u64) -> Result<Arc<Listing>> {
        // The count is disk data: only a hint for choosing the thread.
        let hint = fs.dir_entries(ino)?;
        let l = Arc::new(Listing::default());
        if hint < BACKGROUND_FROM {
            l.fill(fs, ino);
            return Ok(l);
        }
        let (fs2, l2) = (fs.clone(), l.clone());
        let spawned = std::thread::Builder::new()
            .name("gfs2-list".into())
            .spawn(move || l2.fill(&fs2, ino));
        if let Err(e) = spawned {
            tracing::warn!("listing directory {ino} without a thread: {e}");
            l.fill(fs, ino);
        }
        Ok(l)
    }

    /// Stop a walk still running: nobody will read it.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, c: Chunk) {
        self.lock().chunks.push(Arc::new(c));
        self.grown.notify_all();
    }

    /// Walk the directory, publishing its entries a chunk at a time.
    fn fill(&self, fs: &Fs, ino: u64) {
        let mut cur = Chunk::new();
        let r = fs.readdir(ino, 0, |e| {
            if self.cancelled.load(Ordering::Relaxed) {
                return false;
            }
            cur.push(e);
            if cur.items.len() >= CHUNK {
                self.publish(std::mem::replace(&mut cur, Chunk::new()));
            }
            true
        });
        if !cur.items.is_empty() {
            self.publish(cur);
        }
        let end = r.map_err(|e| super::logged_errno(&e));
        self.lock().end = Some(end);
        self.grown.notify_all();
    }

    /// Chunk `i`, waiting for the walk to get there; `None` past the end.
    fn chunk(&self, i: usize) -> Result<Option<Arc<Chunk>>> {
        let mut p = self.lock();
        loop {
            if let Some(c) = p.chunks.get(i) {
                return Ok(Some(c.clone()));
            }
            match p.end {
                Some(Ok(())) => return Ok(None),
                Some(Err(errno)) => return Err(FsError::Errno(errno)),
                None => p = self.grown.wait(p).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// Call `f` with each entry after cookie `offset`, in order, until it
    /// returns false or the listing ends. An error of the walk is returned
    /// once the entries before it have been passed on.
    pub(crate) fn entries(
        &self,
        offset: u64,
        mut f: impl FnMut(&DirItem<'_>) -> bool,
    ) -> Result<()> {
        let mut started = false;
        for i in 0.. {
            let Some(c) = self.chunk(i)? else {
                return Ok(());
            };
            if !started {
                // Chunks wholly at or before the offset were read already.
                match c.items.last() {
                    Some(last) if last.next > offset => started = true,
                    _ => continue,
                }
            }
            for e in c.from(offset) {
                if !f(&e) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
