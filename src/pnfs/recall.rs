//! Recalls: what happens when the glock under a file's layouts must go.
//!
//! The glock layer tells the layout service through the pin's callback
//! (see [`crate::glock::Pin`]), on whatever thread found out: the lock
//! module's, the demotion worker, a FUSE thread whose write conflicts. That
//! callback only queues an [`Event`]; this module's thread (one per layout
//! service) does the rest, so no glock thread ever waits for a client:
//!
//! 1. the file is marked recalling (new layouts get `TryLater`) and
//!    [`RecallSink::recall`](super::RecallSink::recall) is sent for every
//!    layout of it;
//! 2. each LAYOUTRETURN drops its layouts; the last one drops the pin, and
//!    the glock's demotion (or the local writer) proceeds;
//! 3. a client that has not returned within two lease periods is fenced
//!    ([`RecallSink::fence`](super::RecallSink::fence)) and every layout
//!    it holds is dropped as if it had gone away.
//!
//! What fencing guarantees with the block layout: the metadata side (the
//! client's layouts revoked, its next SEQUENCE told so, the glock let go,
//! what it committed before kept). What it does not: the disk itself is
//! not closed to the client. A client that was only frozen or cut off and
//! comes back may still have writes in flight to the blocks of the layouts
//! it held. Where the service holds a SCSI reservation (the SCSI layout,
//! [`super::scsi`]), the client's key is preempted first, before anything
//! of its layouts is dropped or freed: from then on the LUN refuses its
//! commands (RESERVATION CONFLICT).

use super::layout::Inner;
use super::Recall;
use std::collections::BTreeSet;
use std::sync::{mpsc, Arc, Weak};
use std::time::{Duration, Instant};

/// What the recall thread is told.
pub(crate) enum Event {
    /// The glock of this inode must be given up.
    Recall(u64),
    /// The service is going away.
    Stop,
}

/// The recall thread of a layout service; stopped when dropped.
pub(crate) struct Recaller {
    tx: mpsc::Sender<Event>,
}

impl Drop for Recaller {
    fn drop(&mut self) {
        let _ = self.tx.send(Event::Stop);
    }
}

impl Recaller {
    pub(crate) fn start(inner: &Arc<Inner>, rx: mpsc::Receiver<Event>) -> Recaller {
        let tx = inner
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let weak = Arc::downgrade(inner);
        let spawned = std::thread::Builder::new()
            .name("pnfs-recall".into())
            .spawn(move || run(weak, rx));
        if let Err(e) = spawned {
            tracing::error!("no pNFS recall thread: layouts will never be recalled: {e}");
        }
        Recaller { tx }
    }
}

fn run(weak: Weak<Inner>, rx: mpsc::Receiver<Event>) {
    loop {
        let wait = match weak.upgrade() {
            Some(inner) => next_deadline(&inner)
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1)),
            None => return,
        };
        match rx.recv_timeout(wait) {
            Ok(Event::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Ok(Event::Recall(ino)) => {
                if let Some(inner) = weak.upgrade() {
                    start_recall(&inner, ino);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(inner) = weak.upgrade() {
            fence_overdue(&inner);
        }
    }
}

/// How long a recalled client has to return: two lease periods.
fn bound(inner: &Inner) -> Duration {
    Duration::from_millis(
        inner
            .lease_ms
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_mul(2),
    )
}

fn next_deadline(inner: &Inner) -> Option<Instant> {
    let files: Vec<_> = inner
        .files
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    files
        .iter()
        .filter_map(|f| f.try_lock().ok().and_then(|st| st.recall_since))
        .map(|t| t + bound(inner))
        .min()
}

fn start_recall(inner: &Arc<Inner>, ino: u64) {
    let Some(f) = inner.file_if(ino) else {
        return;
    };
    let mut st = f.lock().unwrap_or_else(|e| e.into_inner());
    if st.recall_since.is_some() {
        return;
    }
    if st.grants.is_empty() {
        // Nothing to recall: let the glock go at once.
        st.pin = None;
        st.pin_mode = None;
        return;
    }
    st.recall_since = Some(Instant::now());
    let recalls: Vec<Recall> = st
        .grants
        .iter()
        .map(|g| Recall {
            client: g.client,
            ino,
            offset: g.start,
            length: if g.end == u64::MAX {
                u64::MAX
            } else {
                g.end - g.start
            },
            iomode: g.iomode,
        })
        .collect();
    drop(st);
    let sink = inner.sink.lock().unwrap_or_else(|e| e.into_inner()).clone();
    tracing::info!(ino, layouts = recalls.len(), "recalling layouts");
    match sink {
        Some(s) => recalls.into_iter().for_each(|r| s.recall(r)),
        None => tracing::warn!(ino, "no metadata server to send recalls to"),
    }
}

/// Fence the clients whose recalled layouts are overdue.
fn fence_overdue(inner: &Arc<Inner>) {
    let now = Instant::now();
    let files: Vec<_> = inner
        .files
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    let mut late: BTreeSet<u64> = BTreeSet::new();
    for f in files {
        let st = f.lock().unwrap_or_else(|e| e.into_inner());
        if st.recall_since.is_some_and(|t| t + bound(inner) <= now) {
            late.extend(st.grants.iter().map(|g| g.client));
        }
    }
    if late.is_empty() {
        return;
    }
    let sink = inner.sink.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for client in late {
        tracing::warn!(
            client,
            "recalled layouts not returned in two lease periods: fencing"
        );
        inner.fence_disk(client);
        if let Some(s) = &sink {
            s.fence(client);
        }
        if let Err(e) = super::layout::return_layouts(inner, client, None, 0, u64::MAX) {
            tracing::error!(client, "dropping a fenced client's layouts: {e}");
        }
    }
}
