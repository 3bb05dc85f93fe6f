//! The layout service: [`LayoutBackend`] over a mounted filesystem.
//!
//! Layouts are the file's metadata tree as [`bmap`] reads it, in the block
//! layout's terms: a run of consecutive disk blocks is one extent, a hole is
//! `NONE_DATA` in a read layout, blocks allocated for a client and not yet
//! covered by its LAYOUTCOMMIT are `INVALID_DATA` in read-write layouts
//! (`READ_DATA` in read layouts, which the Linux client accepts only with
//! `READ_DATA` and `NONE_DATA` extents). Ranges are 4 KiB aligned and never
//! "to the end of all offsets": a read layout ends at the end of file's
//! page (or the asked minimum), since the Linux client checks that the
//! extents end exactly at offset + length. Stuffed files have no
//! blocks to hand out for reading and journaled-data files keep their data
//! in the journal first: both are served through the MDS (`Unavailable`).
//! A read-write layout of a stuffed file unstuffs it first, so that files a
//! client creates (empty, hence stuffed) are written through layouts too.
//!
//! Writing: the holes of the asked range are allocated with the write
//! path's allocator (at most [`LayoutOptions::max_alloc`] bytes per layout:
//! the range granted is then shorter than asked, never shorter than the
//! asked minimum), zeros are written to the new blocks and the device
//! flushed, then the transaction that links them into the file commits and
//! the log is flushed, all before the layout is returned (see the contract
//! in [`crate::pnfs`] for why zeroing and linking rather than linking at
//! commit: no reader, on any node, can see stale disk contents through a
//! block of the file, and nothing but this service's records is needed to
//! undo a grant). The service remembers, per file, the blocks it allocated
//! and which client holds which range; commits and returns use those records
//! only (the client's storage offsets are never read).
//!
//! Each file with layouts has a glock [`Pin`]: shared for read layouts,
//! exclusive once a read-write layout exists. The pin's callback (a remote
//! node's request, or a local change such as a FUSE write) starts a recall
//! on the service's own thread ([`super::recall`]): the glock layer never
//! waits for a client.

use super::recall::{Event, Recaller};
use super::{
    ClientId, Commit, DeviceInfo, Extent, ExtentState, IoMode, Layout, LayoutBackend, LayoutError,
    RecallSink,
};
use crate::error::FsError;
use crate::fs::{Attr, Fs};
use crate::glock::{Pin, PinNotify};
use crate::inode::bmap;
use crate::inode::write::{self, dinode, put_dinode};
use gfs2_lockproto::{lm_type, Mode, ResName};
use std::collections::{BTreeMap, HashMap};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where the volume signature (the superblock's UUID) sits on the device.
pub const SIG_OFFSET: u64 = 65792;

/// Most extents in one layout: a badly fragmented range is granted in
/// pieces (the client asks again for the rest).
const MAX_EXTENTS: usize = 4096;

/// The largest file offset (the kernel's `MAX_LFS_FILESIZE`).
const MAX_OFFSET: u64 = i64::MAX as u64;

/// Layout ranges start and end on 4 KiB boundaries (every GFS2 block size
/// divides it): the Linux client tracks returned ranges in pages and
/// ignores unaligned ones (`bl_return_range`).
const ALIGN: u64 = 4096;

/// Tunables of the service.
#[derive(Debug, Clone, Copy)]
pub struct LayoutOptions {
    /// The NFS lease period: a recalled layout not returned within two of
    /// them gets its client fenced.
    pub lease: Duration,
    /// Most bytes one read-write layout allocates.
    pub max_alloc: u64,
}

impl Default for LayoutOptions {
    fn default() -> Self {
        LayoutOptions {
            lease: Duration::from_secs(90),
            max_alloc: 32 << 20,
        }
    }
}

/// A range of a file a client holds a layout on (bytes, block aligned;
/// `end == u64::MAX`: to the end of all offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    pub client: ClientId,
    pub iomode: IoMode,
    pub start: u64,
    pub end: u64,
}

/// What the service knows about one file with layouts.
#[derive(Default)]
pub(crate) struct FileState {
    /// The inode's glock, kept while any layout exists.
    pub pin: Option<Pin>,
    /// The mode pinned.
    pub pin_mode: Option<Mode>,
    /// When a recall of this file began (new layouts are refused).
    pub recall_since: Option<Instant>,
    /// Who holds what.
    pub grants: Vec<Grant>,
    /// Blocks this service allocated and no commit covered yet: logical
    /// block -> disk block.
    pub uncommitted: BTreeMap<u64, u64>,
}

/// One file's state, locked for a whole operation on that file.
pub(crate) type FileRef = Arc<Mutex<FileState>>;

/// State shared by the service and its recall thread.
pub(crate) struct Inner {
    pub fs: Arc<Fs>,
    pub opts: LayoutOptions,
    /// The lease period in milliseconds (the metadata server's, see
    /// [`LayoutService::set_lease`]).
    pub lease_ms: std::sync::atomic::AtomicU64,
    pub files: Mutex<HashMap<u64, FileRef>>,
    pub sink: Mutex<Option<Arc<dyn RecallSink>>>,
    pub events: Mutex<mpsc::Sender<Event>>,
    /// The SCSI reservation, once [`LayoutService::enable_scsi`] took it.
    pub fencing: Mutex<Option<Arc<super::scsi::Fencing>>>,
}

/// The layout service of one mounted node.
pub struct LayoutService {
    inner: Arc<Inner>,
    _recaller: Recaller,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn errno(e: i32) -> LayoutError {
    LayoutError::Fs(FsError::Errno(e))
}

/// What a layout needs to know of the inode before mapping it.
struct FileInfo {
    regular: bool,
    jdata: bool,
    stuffed: bool,
    size: u64,
}

impl LayoutService {
    /// The layout service of `fs`, started with `opts` if it has none yet
    /// (`opts` are then ignored). There is one per mount: the metadata
    /// server in the daemon and the control channel share it, since each
    /// file's glock pin has one owner to tell about recalls.
    pub fn start(fs: &Arc<Fs>, opts: LayoutOptions) -> Arc<LayoutService> {
        let mut slot = lock(&fs.layouts);
        if let Some(s) = slot.upgrade() {
            return s;
        }
        let s = Self::new(fs.clone(), opts);
        *slot = Arc::downgrade(&s);
        s
    }

    /// The lease period of the metadata server using the service: a
    /// recalled client is fenced after two of them.
    pub fn set_lease(&self, lease: Duration) {
        self.inner.lease_ms.store(
            u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Offer the SCSI layout too (the built-in metadata server does): if
    /// the device is a SCSI LUN with persistent reservations, take the
    /// reservation ([`super::scsi::Fencing::take`]); fenced clients are
    /// then cut off the LUN. `Ok(false)`: not such a LUN, block layout
    /// only. An error: a LUN whose reservation could not be taken.
    pub fn enable_scsi(&self) -> std::io::Result<bool> {
        let mut slot = lock(&self.inner.fencing);
        if slot.is_some() {
            return Ok(true);
        }
        match super::scsi::Fencing::take(self.inner.fs.device())? {
            Some(f) => {
                *slot = Some(Arc::new(f));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Drop every layout of every client (the unmount does, before its
    /// last log flush): uncommitted blocks past the end of files are freed
    /// and every glock pin is let go. Clients are not told: their server
    /// is going away with the mount. A SCSI reservation is given up.
    pub fn release_all(&self) {
        let files: Vec<FileRef> = lock(&self.inner.files).values().cloned().collect();
        let mut clients: Vec<ClientId> = files
            .iter()
            .flat_map(|f| lock(f).grants.iter().map(|g| g.client).collect::<Vec<_>>())
            .collect();
        drop(files);
        clients.sort_unstable();
        clients.dedup();
        for c in clients {
            if let Err(e) = return_layouts(&self.inner, c, None, 0, u64::MAX) {
                tracing::error!(client = c, "dropping layouts at unmount: {e}");
            }
        }
        let files: Vec<FileRef> = lock(&self.inner.files).drain().map(|(_, f)| f).collect();
        for f in files {
            let mut st = lock(&f);
            st.pin = None;
            st.pin_mode = None;
        }
        if let Some(f) = lock(&self.inner.fencing).take() {
            f.release();
        }
    }

    /// A service over `fs` of its own; [`LayoutService::start`] is what a
    /// daemon uses (tests may run several, each with its own pins).
    fn new(fs: Arc<Fs>, opts: LayoutOptions) -> Arc<LayoutService> {
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            fs,
            opts,
            lease_ms: std::sync::atomic::AtomicU64::new(
                u64::try_from(opts.lease.as_millis()).unwrap_or(u64::MAX),
            ),
            files: Mutex::new(HashMap::new()),
            sink: Mutex::new(None),
            events: Mutex::new(tx),
            fencing: Mutex::new(None),
        });
        let recaller = Recaller::start(&inner, rx);
        Arc::new(LayoutService {
            inner,
            _recaller: recaller,
        })
    }

    /// The filesystem served.
    pub fn fs(&self) -> &Arc<Fs> {
        &self.inner.fs
    }

    /// Clients holding layouts on `ino` (for diagnostics and tests).
    pub fn holders(&self, ino: u64) -> Vec<(ClientId, IoMode, u64, u64)> {
        let Some(f) = self.inner.file_if(ino) else {
            return Vec::new();
        };
        let st = lock(&f);
        st.grants
            .iter()
            .map(|g| (g.client, g.iomode, g.start, g.end))
            .collect()
    }

    /// Is a recall of `ino` under way?
    pub fn recalling(&self, ino: u64) -> bool {
        self.inner
            .file_if(ino)
            .is_some_and(|f| lock(&f).recall_since.is_some())
    }
}

impl Inner {
    /// Cut `client` off the disk if the service holds a SCSI reservation
    /// (before its layouts' blocks can be freed or handed to anyone else).
    pub(crate) fn fence_disk(&self, client: ClientId) {
        let f = lock(&self.fencing).clone();
        if let Some(f) = f {
            f.fence(client);
        }
    }

    /// Does `client` hold any layout?
    fn holds_layouts(&self, client: ClientId) -> bool {
        let files: Vec<FileRef> = lock(&self.files).values().cloned().collect();
        files
            .iter()
            .any(|f| lock(f).grants.iter().any(|g| g.client == client))
    }

    pub(crate) fn file_if(&self, ino: u64) -> Option<FileRef> {
        lock(&self.files).get(&ino).cloned()
    }

    fn file(&self, ino: u64) -> FileRef {
        lock(&self.files).entry(ino).or_default().clone()
    }

    /// Forget `ino`'s entry if nothing is left in it and nobody else has
    /// it (entries are handed out under the map's lock, so a count of one
    /// there means no thread is about to use it; the caller drops its own
    /// reference first).
    fn forget_if_idle(&self, ino: u64) {
        let mut files = lock(&self.files);
        let idle = files.get(&ino).is_some_and(|f| {
            Arc::strong_count(f) == 1
                && f.try_lock().is_ok_and(|st| {
                    st.grants.is_empty() && st.pin.is_none() && st.uncommitted.is_empty()
                })
        });
        if idle {
            files.remove(&ino);
        }
    }

    fn bsize(&self) -> u64 {
        u64::from(self.fs.superblock().bsize)
    }

    fn notify(&self) -> PinNotify {
        let tx = lock(&self.events).clone();
        let tx = Mutex::new(tx);
        Arc::new(move |name: ResName| {
            // Never blocks: the recall thread does the work.
            let _ = lock(&tx).send(Event::Recall(name.number));
        })
    }

    /// Keep `ino`'s glock at least in `mode` for the file's layouts.
    fn ensure_pin(&self, ino: u64, st: &mut FileState, mode: Mode) -> Result<(), LayoutError> {
        if st.pin_mode.is_some_and(|m| m >= mode) {
            return Ok(());
        }
        let name = ResName::new(lm_type::INODE, ino);
        let pin = self.fs.glocks().pin(name, mode, self.notify())?;
        // The new pin joined the old one (same glock): the old may go.
        st.pin = Some(pin);
        st.pin_mode = Some(mode);
        Ok(())
    }

    fn info(&self, pin: &Pin) -> Result<FileInfo, LayoutError> {
        Ok(self.fs.with_inode_pinned(pin, |_, ip| {
            Ok(FileInfo {
                regular: ip.is_reg(),
                jdata: ip.di.flags & crate::format::dif::JDATA != 0,
                stuffed: ip.is_stuffed(),
                size: ip.di.size,
            })
        })?)
    }

    /// The extents of logical blocks `first..last` as the metadata tree
    /// maps them (`last == None`: to the end of all offsets, past the
    /// file's last block as one hole), stopping after [`MAX_EXTENTS`] once
    /// block `min_last` is covered. Returns the extents and the end of what
    /// they cover in bytes.
    fn map(
        &self,
        pin: &Pin,
        st: &FileState,
        first: u64,
        last: Option<u64>,
        min_last: u64,
        rw: bool,
    ) -> Result<(Vec<Extent>, u64), LayoutError> {
        let bs = self.bsize();
        self.fs
            .with_inode_pinned(pin, |m, ip| {
                let mut out: Vec<Extent> = Vec::new();
                // Blocks past the last one the tree could map are a hole.
                let tree_end = ip.di.size.div_ceil(bs).max(st.uncommitted_end());
                let stop = last.unwrap_or(u64::MAX / bs);
                let mapped_to = if rw { stop } else { stop.min(tree_end) };
                let mut lb = first;
                while lb < mapped_to {
                    if out.len() >= MAX_EXTENTS && lb >= min_last {
                        return Ok((out, lb * bs));
                    }
                    if out.len() >= MAX_EXTENTS * 16 {
                        return Err(FsError::Errno(libc::EFBIG));
                    }
                    let ext = if ip.is_stuffed() {
                        bmap::Extent {
                            phys: None,
                            len: mapped_to - lb,
                        }
                    } else {
                        bmap::map_extent(m, ip, lb, mapped_to - lb)?
                    };
                    let len = ext.len.min(mapped_to - lb).max(1);
                    match ext.phys {
                        None => push(&mut out, lb * bs, len * bs, 0, ExtentState::NoneData),
                        Some(p) => {
                            // A pointer from the disk: the run must lie on
                            // the device before any offset is computed.
                            let dev_blocks = m.cache.device().size() / bs;
                            if p.checked_add(len).is_none_or(|e| e > dev_blocks) {
                                return Err(FsError::corrupt(
                                    ip.ino,
                                    format!("data block {p} (+{len}) beyond the device"),
                                ));
                            }
                            // Split around the blocks no commit covered yet.
                            let mut at = lb;
                            let end = lb + len;
                            while at < end {
                                let next_unc =
                                    st.uncommitted.range(at..end).next().map(|(l, _)| *l);
                                let (n, state) = match next_unc {
                                    Some(u) if u == at => {
                                        let mut n = 1;
                                        while at + n < end && st.uncommitted.contains_key(&(at + n))
                                        {
                                            n += 1;
                                        }
                                        // A read layout may hold only
                                        // READ_DATA and NONE_DATA (the Linux
                                        // client refuses others): the block
                                        // reads as the MDS would read it.
                                        let state = if rw {
                                            ExtentState::InvalidData
                                        } else {
                                            ExtentState::ReadData
                                        };
                                        (n, state)
                                    }
                                    Some(u) => (u - at, data_state(rw)),
                                    None => (end - at, data_state(rw)),
                                };
                                push(&mut out, at * bs, n * bs, (p + (at - lb)) * bs, state);
                                at += n;
                            }
                        }
                    }
                    lb += len;
                }
                if mapped_to < stop {
                    // Past every mapped block: one hole to the range's end.
                    let from = mapped_to.max(first) * bs;
                    let to = match last {
                        Some(l) => l * bs,
                        None => u64::MAX,
                    };
                    if to > from {
                        push(&mut out, from, to - from, 0, ExtentState::NoneData);
                    }
                    return Ok((out, to));
                }
                Ok((
                    out,
                    match last {
                        Some(l) => l * bs,
                        None => u64::MAX,
                    },
                ))
            })
            .map_err(LayoutError::from)
    }

    /// Allocate (zeroed) the holes of logical blocks `first..last`, at most
    /// `max_alloc` bytes unless more is needed to reach `min_last`; returns
    /// the block the grant ends at and the blocks allocated.
    fn allocate(
        &self,
        pin: &Pin,
        st: &FileState,
        first: u64,
        last: u64,
        min_last: u64,
    ) -> Result<(u64, Vec<(u64, u64)>), LayoutError> {
        let bs = self.bsize();
        let budget = (self.opts.max_alloc / bs).max(1);
        // Plan outside the transaction: which blocks are holes.
        let (plan, _) = self.map(pin, st, first, Some(last), min_last, false)?;
        let mut holes: Vec<(u64, u64)> = Vec::new();
        let mut want = 0u64;
        let mut grant_end = first;
        for e in &plan {
            let (s, n) = (e.file_offset / bs, e.length / bs);
            if e.state != ExtentState::NoneData {
                grant_end = s + n;
                continue;
            }
            let room = if s >= min_last {
                budget.saturating_sub(want)
            } else {
                budget.saturating_sub(want).max(min_last - s)
            };
            let take = n.min(room);
            if take == 0 {
                break;
            }
            holes.push((s, take));
            want += take;
            grant_end = s + take;
            if take < n {
                break;
            }
        }
        if grant_end < min_last {
            return Err(LayoutError::BadRange);
        }
        // The grant ends on an aligned boundary (min_last is one).
        let per = ALIGN.max(bs) / bs;
        let grant_end = (grant_end / per * per).max(min_last);
        holes.retain_mut(|(s, n)| {
            *n = (*n).min(grant_end.saturating_sub(*s));
            *n > 0
        });
        if holes.is_empty() {
            return Ok((grant_end, Vec::new()));
        }
        let dev = self.fs.device().clone();
        let ino = pin.name().number;
        let new = self.fs.modify_pinned(pin, |tx, al, _| {
            let mut new: Vec<(u64, u64)> = Vec::new();
            let di = dinode(tx, ino)?;
            if di.height == 0 {
                write::unstuff(tx, al, ino, dev.as_ref())?;
            }
            write::ensure_height(tx, al, ino, grant_end)?;
            for &(s, n) in &holes {
                for lb in s..s + n {
                    let (phys, fresh) = write::map(tx, al, ino, lb, true)?
                        .ok_or_else(|| FsError::corrupt(ino, "allocation failed"))?;
                    if fresh {
                        new.push((lb, phys));
                    }
                }
            }
            zero_runs(dev.as_ref(), bs, &new, ino)?;
            let mut di = dinode(tx, ino)?;
            let (s, ns) = now();
            di.ctime = s;
            di.ctime_nsec = ns;
            put_dinode(tx, &di)?;
            Ok(new)
        })?;
        // The zeros are on the disk before the log makes them part of the
        // file, and both before the client may write.
        dev.flush().map_err(|e| FsError::Io {
            what: format!("flushing the zeroed blocks of inode {ino}"),
            source: e,
        })?;
        self.fs.sync()?;
        self.fs.notify_inode_changed(ino);
        Ok((grant_end, new))
    }

    /// Drop `client`'s grants on the file within `start..end` (bytes), then
    /// free what no grant covers any more past the end of file, and let the
    /// glock go when no layout is left.
    fn return_range(
        &self,
        ino: u64,
        f: FileRef,
        client: ClientId,
        start: u64,
        end: u64,
    ) -> Result<(), LayoutError> {
        let mut st = lock(&f);
        let mut kept = Vec::new();
        for g in st.grants.drain(..) {
            if g.client != client || g.end <= start || g.start >= end {
                kept.push(g);
                continue;
            }
            if g.start < start {
                kept.push(Grant { end: start, ..g });
            }
            if g.end > end {
                kept.push(Grant { start: end, ..g });
            }
        }
        st.grants = kept;
        let r = self.release_uncovered(ino, &mut st);
        if st.grants.is_empty() {
            if !st.uncommitted.is_empty() {
                // Freeing failed: they stay allocated past the end of
                // file, which fsck accepts (as after a crash).
                tracing::warn!(
                    ino,
                    blocks = st.uncommitted.len(),
                    "uncommitted layout blocks left allocated"
                );
                st.uncommitted.clear();
            }
            // The glock may go (a pin never goes down: the exclusive one
            // of a read-write layout is kept until the last layout).
            st.pin = None;
            st.pin_mode = None;
            st.recall_since = None;
        }
        drop(st);
        drop(f);
        self.forget_if_idle(ino);
        r
    }

    /// Blocks this service allocated that no read-write grant covers any
    /// more: past the end of file they are freed (the client never
    /// committed them), inside it they are the file's (zeros, or what a
    /// client wrote there).
    fn release_uncovered(&self, ino: u64, st: &mut FileState) -> Result<(), LayoutError> {
        let bs = self.bsize();
        let covered = |lb: u64, grants: &[Grant]| {
            grants.iter().any(|g| {
                g.iomode == IoMode::ReadWrite
                    && g.start <= lb.saturating_mul(bs)
                    && lb.saturating_mul(bs) < g.end
            })
        };
        let loose: Vec<(u64, u64)> = st
            .uncommitted
            .iter()
            .filter(|(lb, _)| !covered(**lb, &st.grants))
            .map(|(l, p)| (*l, *p))
            .collect();
        if loose.is_empty() {
            return Ok(());
        }
        let Some(pin) = st.pin.as_ref() else {
            return Err(LayoutError::Fs(FsError::corrupt(
                ino,
                "layout blocks recorded without the inode's glock",
            )));
        };
        let size = self.info(pin)?.size;
        let first_past = size.div_ceil(bs);
        let free: Vec<(u64, u64)> = loose
            .iter()
            .copied()
            .filter(|(l, _)| *l >= first_past)
            .collect();
        if !free.is_empty() {
            // Contiguous logical runs, each freed with the indirect blocks
            // it leaves empty; a block no longer mapped where we put it is
            // left alone (it is not ours any more).
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for (l, _) in &free {
                match runs.last_mut() {
                    Some((s, n)) if *s + *n == *l => *n += 1,
                    _ => runs.push((*l, 1)),
                }
            }
            let expect: HashMap<u64, u64> = free.iter().copied().collect();
            self.fs.modify_pinned(pin, |tx, al, _| {
                for &(s, n) in &runs {
                    for lb in s..s + n {
                        let now = write::map(tx, al, ino, lb, false)?.map(|(p, _)| p);
                        if now != expect.get(&lb).copied() {
                            return Err(FsError::corrupt(
                                ino,
                                format!("layout block {lb} moved under the service"),
                            ));
                        }
                    }
                    write::free_range(tx, al, ino, s, s + n)?;
                }
                let mut di = dinode(tx, ino)?;
                let (s, ns) = now();
                di.ctime = s;
                di.ctime_nsec = ns;
                put_dinode(tx, &di)
            })?;
            self.fs.sync()?;
            self.fs.notify_inode_changed(ino);
            tracing::debug!(ino, blocks = free.len(), "uncommitted layout blocks freed");
        }
        for (l, _) in loose {
            st.uncommitted.remove(&l);
        }
        Ok(())
    }
}

/// Drop `client`'s layouts within bytes `offset..end` of `ino` (`None`:
/// of every file).
pub(crate) fn return_layouts(
    inner: &Inner,
    client: ClientId,
    ino: Option<u64>,
    offset: u64,
    end: u64,
) -> Result<(), LayoutError> {
    let files: Vec<(u64, FileRef)> = match ino {
        Some(i) => inner.file_if(i).map(|f| (i, f)).into_iter().collect(),
        None => lock(&inner.files)
            .iter()
            .map(|(i, f)| (*i, f.clone()))
            .collect(),
    };
    let mut first_err = None;
    for (i, f) in files {
        if let Err(e) = inner.return_range(i, f, client, offset, end) {
            tracing::error!(client, ino = i, "layout return: {e}");
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

impl FileState {
    /// One past the last logical block this service allocated.
    fn uncommitted_end(&self) -> u64 {
        self.uncommitted.keys().next_back().map_or(0, |l| l + 1)
    }
}

/// Record a grant, merged with the same client's grants of the same mode
/// that it overlaps or touches (a client asks again and again as it goes).
fn add_grant(grants: &mut Vec<Grant>, mut g: Grant) {
    grants.retain(|o| {
        let joins =
            o.client == g.client && o.iomode == g.iomode && o.start <= g.end && g.start <= o.end;
        if joins {
            g.start = g.start.min(o.start);
            g.end = g.end.max(o.end);
        }
        !joins
    });
    grants.push(g);
}

fn data_state(rw: bool) -> ExtentState {
    if rw {
        ExtentState::ReadWriteData
    } else {
        ExtentState::ReadData
    }
}

/// Append an extent, merged with the previous one when it continues it.
fn push(out: &mut Vec<Extent>, file_offset: u64, length: u64, storage: u64, state: ExtentState) {
    if let Some(l) = out.last_mut() {
        let cont_storage = state == ExtentState::NoneData
            || l.storage_offset.checked_add(l.length) == Some(storage);
        if l.state == state
            && l.file_offset.checked_add(l.length) == Some(file_offset)
            && cont_storage
        {
            l.length = l.length.saturating_add(length);
            return;
        }
    }
    out.push(Extent {
        file_offset,
        length,
        storage_offset: storage,
        state,
    });
}

/// Write zeros over the new blocks, a run of consecutive disk blocks at a
/// time.
fn zero_runs(
    dev: &dyn crate::dev::BlockDevice,
    bs: u64,
    new: &[(u64, u64)],
    ino: u64,
) -> crate::error::Result<()> {
    let mut phys: Vec<u64> = new.iter().map(|(_, p)| *p).collect();
    phys.sort_unstable();
    let zeros = vec![0u8; (8 << 20).max(bs as usize)];
    let per = zeros.len() as u64 / bs;
    let mut i = 0;
    while i < phys.len() {
        let start = phys[i];
        let mut n = 1;
        while i + (n as usize) < phys.len() && phys[i + n as usize] == start + n && n < per {
            n += 1;
        }
        dev.write_at(&zeros[..(n * bs) as usize], start * bs)
            .map_err(|e| FsError::Io {
                what: format!("zeroing blocks of inode {ino} for a layout"),
                source: e,
            })?;
        i += n as usize;
    }
    Ok(())
}

fn now() -> (u64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

impl LayoutBackend for LayoutService {
    fn device_info(&self) -> DeviceInfo {
        let fs = &self.inner.fs;
        DeviceInfo {
            sig_offset: SIG_OFFSET,
            signature: fs.superblock().uuid.to_vec(),
            size: fs.device().size(),
            block_size: fs.superblock().bsize,
            scsi: lock(&self.inner.fencing)
                .as_ref()
                .map(|f| f.volume().clone()),
        }
    }

    fn layout_get(
        &self,
        client: ClientId,
        ino: u64,
        offset: u64,
        length: u64,
        minlength: u64,
        iomode: IoMode,
    ) -> Result<Layout, LayoutError> {
        let inner = &self.inner;
        let bs = inner.bsize();
        if length == 0 || minlength > length || offset > MAX_OFFSET {
            return Err(LayoutError::BadRange);
        }
        let min_end = offset
            .checked_add(minlength)
            .filter(|e| *e <= MAX_OFFSET.saturating_add(1))
            .ok_or(LayoutError::BadRange)?;
        let asked_end = if length == u64::MAX {
            None
        } else {
            Some(offset.saturating_add(length).min(MAX_OFFSET + 1))
        };
        let al = ALIGN.max(bs);
        let first = offset / al * al / bs;
        let min_last = (min_end.div_ceil(al) * al / bs).max(first + al / bs);
        let asked_end = asked_end.map(|e| e.div_ceil(al).saturating_mul(al));
        let f = inner.file(ino);
        let mut st = lock(&f);
        if st.recall_since.is_some() {
            return Err(LayoutError::TryLater);
        }
        let mode = match iomode {
            IoMode::Read => Mode::PR,
            IoMode::ReadWrite => Mode::EX,
        };
        if iomode == IoMode::ReadWrite && inner.fs.options().read_only {
            return Err(errno(libc::EROFS));
        }
        let r = self.get_locked(&mut st, ino, first, asked_end, min_last, iomode, mode);
        let r = r.map(|(layout, new)| {
            for (lb, p) in new {
                st.uncommitted.insert(lb, p);
            }
            add_grant(
                &mut st.grants,
                Grant {
                    client,
                    iomode,
                    start: layout.offset,
                    end: if layout.length == u64::MAX {
                        u64::MAX
                    } else {
                        layout.offset + layout.length
                    },
                },
            );
            Layout { ino, ..layout }
        });
        if r.is_err() {
            if let Err(e) = inner.release_uncovered(ino, &mut st) {
                tracing::error!(ino, "undoing a failed layout's allocation: {e}");
            }
        }
        if st.grants.is_empty() && st.uncommitted.is_empty() {
            st.pin = None;
            st.pin_mode = None;
        }
        drop(st);
        drop(f);
        inner.forget_if_idle(ino);
        if let Ok(l) = &r {
            tracing::debug!(
                client,
                ino,
                ?iomode,
                offset = l.offset,
                length = l.length,
                extents = l.extents.len(),
                "layout granted"
            );
        }
        r
    }

    fn layout_commit(&self, client: ClientId, ino: u64, c: Commit) -> Result<Attr, LayoutError> {
        let inner = &self.inner;
        let bs = inner.bsize();
        let f = inner.file_if(ino).ok_or(LayoutError::BadRange)?;
        let mut st = lock(&f);
        let rw: Vec<Grant> = st
            .grants
            .iter()
            .filter(|g| g.client == client && g.iomode == IoMode::ReadWrite)
            .copied()
            .collect();
        let c_end = c.offset.saturating_add(c.length);
        if rw.is_empty()
            || !rw
                .iter()
                .any(|g| g.start < c_end.max(c.offset.saturating_add(1)) && c.offset < g.end)
        {
            return Err(LayoutError::BadRange);
        }
        // The size may grow only to the end of a write the client could
        // make through its own layouts.
        let new_size = match c.last_write {
            Some(lw) => {
                if !rw.iter().any(|g| g.start <= lw && lw < g.end) {
                    return Err(LayoutError::BadRange);
                }
                Some(lw + 1)
            }
            None => None,
        };
        let pin = st.pin.as_ref().ok_or(LayoutError::BadRange)?;
        let (now_s, now_ns) = now();
        let mtime = c
            .mtime
            .map(|(s, ns)| (s.max(0) as u64, ns.min(999_999_999)))
            .unwrap_or((now_s, now_ns));
        inner.fs.modify_pinned(pin, |tx, _, _| {
            let mut di = dinode(tx, ino)?;
            if let Some(s) = new_size {
                di.size = di.size.max(s);
            }
            di.mtime = mtime.0;
            di.mtime_nsec = mtime.1;
            di.ctime = now_s;
            di.ctime_nsec = now_ns;
            put_dinode(tx, &di)
        })?;
        // The committed range's blocks are the file's now.
        let lo = c.offset / bs;
        let hi = c_end.div_ceil(bs);
        let done: Vec<u64> = st
            .uncommitted
            .range(lo..hi.max(lo))
            .map(|(l, _)| *l)
            .filter(|l| rw.iter().any(|g| g.start <= l * bs && l * bs < g.end))
            .collect();
        for l in done {
            st.uncommitted.remove(&l);
        }
        inner.fs.sync()?;
        inner.fs.notify_inode_changed(ino);
        let pin = st.pin.as_ref().ok_or(LayoutError::BadRange)?;
        let attr = inner
            .fs
            .with_inode_pinned(pin, |_, ip| Ok(inner.fs.attr_of(ip)))?;
        tracing::debug!(client, ino, size = attr.size, "layout committed");
        Ok(attr)
    }

    fn layout_return(
        &self,
        client: ClientId,
        ino: Option<u64>,
        offset: u64,
        length: u64,
    ) -> Result<(), LayoutError> {
        let end = if length == u64::MAX {
            u64::MAX
        } else {
            offset.saturating_add(length)
        };
        return_layouts(&self.inner, client, ino, offset, end)
    }

    fn client_gone(&self, client: ClientId) {
        // Gone with layouts in hand (its lease ran out): it may come back
        // with writes in flight, so it leaves the disk before its blocks
        // can be reused.
        if self.inner.holds_layouts(client) {
            self.inner.fence_disk(client);
        }
        if let Err(e) = self.layout_return(client, None, 0, u64::MAX) {
            tracing::error!(client, "dropping the layouts of a client that went: {e}");
        }
    }

    fn set_recall_sink(&self, sink: Arc<dyn RecallSink>) {
        *lock(&self.inner.sink) = Some(sink);
    }
}

impl LayoutService {
    #[allow(clippy::too_many_arguments)]
    fn get_locked(
        &self,
        st: &mut FileState,
        ino: u64,
        first: u64,
        asked_end: Option<u64>,
        min_last: u64,
        iomode: IoMode,
        mode: Mode,
    ) -> Result<(Layout, Vec<(u64, u64)>), LayoutError> {
        let inner = &self.inner;
        let bs = inner.bsize();
        inner.ensure_pin(ino, st, mode)?;
        let pin = st.pin.as_ref().ok_or(LayoutError::TryLater)?;
        let info = inner.info(pin)?;
        if !info.regular || info.jdata || (info.stuffed && iomode == IoMode::Read) {
            return Err(LayoutError::Unavailable);
        }
        let start = first * bs;
        match iomode {
            IoMode::Read => {
                // To the end of file at most (past it there is nothing to
                // read), the asked minimum at least; never "to the end of
                // all offsets": the Linux client checks that the extents
                // end where offset + length does, in 64 bits.
                let al = ALIGN.max(bs);
                let eof_last = info.size.div_ceil(al).saturating_mul(al) / bs;
                let last = asked_end
                    .map_or(u64::MAX, |e| e / bs)
                    .min(eof_last.max(min_last))
                    .max(min_last);
                let (extents, end) = inner.map(pin, st, first, Some(last), min_last, false)?;
                let length = end - start;
                Ok((
                    Layout {
                        ino,
                        iomode,
                        offset: start,
                        length,
                        extents,
                    },
                    Vec::new(),
                ))
            }
            IoMode::ReadWrite => {
                // A read-write range is bounded by what may be allocated;
                // a minimum far beyond that is refused rather than
                // allocated in one transaction.
                let hard = (inner.opts.max_alloc / bs).max(1).saturating_mul(8);
                if min_last - first > hard {
                    return Err(LayoutError::BadRange);
                }
                let last = asked_end
                    .map(|e| e.div_ceil(bs))
                    .unwrap_or(u64::MAX / bs)
                    .min((MAX_OFFSET + 1) / bs);
                let last = last.max(min_last);
                let (end_blk, new) = inner.allocate(pin, st, first, last, min_last)?;
                // Recorded at once: should anything below fail, they are
                // freed like any uncommitted block no grant covers.
                for (lb, p) in &new {
                    st.uncommitted.insert(*lb, *p);
                }
                let pin = st.pin.as_ref().ok_or(LayoutError::TryLater)?;
                let (extents, end) = inner.map(pin, st, first, Some(end_blk), min_last, true)?;
                if extents.iter().any(|e| e.state == ExtentState::NoneData) {
                    return Err(LayoutError::Fs(FsError::corrupt(
                        ino,
                        "a hole left in a read-write layout after allocation",
                    )));
                }
                Ok((
                    Layout {
                        ino,
                        iomode,
                        offset: start,
                        length: end - start,
                        extents,
                    },
                    new,
                ))
            }
        }
    }
}
