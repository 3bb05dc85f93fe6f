//! Glocks: every cached object is valid only while its glock is held.
//!
//! A [`Glock`] is this node's lock on one resource `(type, number)`, held
//! through the lock module ([`gfs2_lockproto::Lockspace`]). Local users take
//! *holders* ([`GlockTable::acquire`] returns a [`Holder`]); the lock stays
//! granted at the lock-manager level after the last holder goes (so caches
//! stay valid) until another node's request makes the lock module send a
//! blocking callback. Then, once no holder remains, the glock is *demoted*:
//! `go_sync` writes back what it covers, `go_inval` drops what it covers from
//! the caches, and the lock is converted down. With `lock_nolock` grants are
//! immediate and callbacks never come, but the path is the same.
//!
//! A [`Pin`] keeps a glock in a mode for an owner outside any one
//! operation (the pNFS layout service, whose clients read and write the
//! file's blocks on the disk while it is held): it is not a holder, so the
//! owner's own operations take holders under it ([`GlockTable::acquire_pinned`]),
//! and local readers go on; but a demotion below the pinned mode (another
//! node's request) and a local exclusive request wait until the pin goes,
//! and the pin's owner is told once, through its non-blocking callback,
//! that it must let go. The demotion worker never waits for it: the
//! demotion simply runs when the last pin is dropped. An operation that
//! meets a pin waits for it holding no other glock
//! ([`GlockTable::acquire_unless_pinned`], [`GlockTable::wait_unpinned`]):
//! the owner may need one of them (a statfs file) to let go.
//!
//! Local holders exclude each other as other nodes do, with one exception:
//! an exclusive holder kept for a whole mount whose user changes what the
//! glock covers only in whole, atomically published cache blocks (this
//! node's statfs_change file, held as the kernel's `sd_sc_gh`) is taken
//! *open to local readers* ([`GlockTable::acquire_open_to_readers`]): a
//! shared local request is granted beside it, since the lock module's
//! exclusive grant covers it, instead of waiting for the unmount. The
//! kernel's `may_grant` shares an exclusive holder only with other
//! exclusive holders that agree to it (`LM_FLAG_NODE_SCOPE`, the resource
//! groups) and reads its own statfs changes from memory; a walk of the
//! master directory here reads that file through the glock. Any other
//! exclusive holder still keeps local readers out.

pub mod ops;

use crate::error::{FsError, Result};
use gfs2_lockproto::{Grant, GrantStatus, LockCallbacks, LockFlags, Lockspace, Lvb, Mode, ResName};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The minimum hold time of an inode glock, at first and at most (the
/// kernel's `GL_GLOCK_DFT_HOLD` = `GL_GLOCK_MAX_HOLD`, HZ/5).
const HOLD_MAX: Duration = Duration::from_millis(200);
/// Its floor (`GL_GLOCK_MIN_HOLD`).
const HOLD_MIN: Duration = Duration::from_millis(10);
/// Added when a local request waited long for it (`GL_GLOCK_HOLD_INCR`).
const HOLD_INCR: Duration = Duration::from_millis(50);
/// Taken away each time it delays another node (`GL_GLOCK_HOLD_DECR`).
const HOLD_DECR: Duration = Duration::from_millis(25);
/// How long a request waits for other nodes before this node gives up the
/// idle glocks it keeps for their hold time (see [`GlockTable::expedite`]).
const EXPEDITE_AFTER: Duration = Duration::from_millis(20);
/// How soon a reclaim that left the table over its bound runs again.
const RECLAIM_RETRY: Duration = Duration::from_millis(200);

pub use ops::{GlockOps, NoOps};

/// Told the journal ids of a node that died (see [`GlockTable::on_recover`]).
pub type RecoverFn = Arc<dyn Fn(Vec<u32>) + Send + Sync>;

/// What a glock type does when it is demoted (the kernel's `glops`).
struct GlState {
    /// Mode granted by the lock manager (`None`: no lock exists yet).
    held: Option<Mode>,
    /// Local holders by mode.
    shared: u32,
    exclusive: bool,
    /// The exclusive holder lets shared local holders in beside it (see
    /// [`GlockTable::acquire_open_to_readers`]).
    open_to_readers: bool,
    /// A request to the lock manager (promotion or demotion) is in flight.
    busy: bool,
    /// A blocking callback asked us to go down to this mode.
    demote: Option<Mode>,
    /// Give the lock up (to NL) as soon as its last holder goes instead of
    /// caching it (the kernel's `GL_NOCACHE`): for locks that others only
    /// ever try to take (journals), which never send a blocking callback.
    nocache: bool,
    /// A local request sent to the lock manager for a waiting holder: once
    /// granted, that holder goes first and no demotion may take the grant
    /// away before it has its holder (the kernel grants the holder whose
    /// request promoted the glock before running a pending demote).
    promoting: bool,
    /// Local requests waiting for this glock.
    waiters: u32,
    /// The lock value block of the last grant (types with an LVB).
    lvb: Option<Lvb>,
    /// A remote request that waits for the minimum hold time: becomes
    /// `demote` at its instant (the kernel's `GLF_PENDING_DEMOTE`).
    pending: Option<(Mode, Instant)>,
    /// When the lock manager last granted this glock (`gl_tchange`).
    granted_at: Instant,
    /// How long a busy inode glock is kept after its grant before a remote
    /// request is honoured (`gl_hold_time`).
    hold: Duration,
    /// Pinned (see [`Pin`]).
    pin: Option<PinState>,
    /// Queued on the table's LRU of idle glocks (the kernel's `GLF_LRU`).
    in_lru: bool,
    /// Used again since it was queued there: it gets a second chance.
    lru_ref: bool,
}

/// Told the glock a pin's owner must give up (see [`Pin`]); must not block.
pub type PinNotify = Arc<dyn Fn(ResName) + Send + Sync>;

/// The pins of one glock.
struct PinState {
    /// The strongest mode any of them asked for.
    mode: Mode,
    /// How many [`Pin`]s exist.
    count: u32,
    /// Who is told that they must go.
    notify: PinNotify,
    /// Told already (once per pinned period).
    told: bool,
}

impl GlState {
    /// Take what the lock manager granted (or left us with). A blocking
    /// callback that came while the request was in flight was recorded
    /// against a mode we did not know yet: once the new mode is known, a
    /// demotion it already satisfies is dropped, and one it does not is now
    /// due (the lock manager does not repeat a callback until it grants us
    /// again: dropping it would leave the other node waiting for ever).
    fn apply_grant(&mut self, g: &Grant) {
        if g.status == GrantStatus::Granted {
            self.granted_at = Instant::now();
        }
        self.held = g.mode;
        if g.lvb.is_some() {
            self.lvb = g.lvb;
        }
        self.busy = false;
        if let Some(d) = self.demote {
            if self.held.is_none_or(|h| h <= d) {
                self.demote = None;
            }
        }
    }

    /// No local holder has, or is about to get, this glock: a demotion may
    /// run.
    fn idle(&self) -> bool {
        self.shared == 0 && !self.exclusive && !self.promoting
    }

    /// A shared local request is granted beside the exclusive holder.
    fn reader_beside_exclusive(&self, mode: Mode) -> bool {
        mode < Mode::EX && self.exclusive && self.open_to_readers
    }

    /// Nobody uses or waits for this glock and nothing is under way on
    /// it: it may be given up and forgotten (see [`GlockTable::reclaim`]).
    fn reclaimable(&self) -> bool {
        self.idle()
            && self.waiters == 0
            && !self.busy
            && self.demote.is_none()
            && self.pending.is_none()
            && self.pin.is_none()
    }

    /// The remote request held back for the hold time is served now: it
    /// becomes a demotion (stopping new local holders), joined with any
    /// already asked for.
    fn pending_now(&mut self) {
        if let Some((m, _)) = self.pending.take() {
            self.demote = Some(self.demote.map_or(m, |d| d.min(m)));
        }
    }

    /// A demotion is due and may run now.
    fn demote_due(&self) -> bool {
        self.idle() && !self.busy && self.demote.is_some() && !self.pin_blocks_demote()
    }

    /// A pending demotion would go below the pinned mode.
    fn pin_blocks_demote(&self) -> bool {
        match (&self.pin, self.demote) {
            (Some(p), Some(d)) => d < p.mode,
            _ => false,
        }
    }

    /// The pin's callback, the first time it must be told to go.
    fn pin_tell(&mut self) -> Option<PinNotify> {
        let p = self.pin.as_mut()?;
        if p.told {
            return None;
        }
        p.told = true;
        Some(p.notify.clone())
    }
}

/// One glock.
pub struct Glock {
    name: ResName,
    st: Mutex<GlState>,
    cv: Wakeup,
}

/// A condition variable that wakes only when someone sleeps on it. Every
/// holder's release and every grant announces a change of state; with
/// nobody waiting, which is nearly always, `notify_all` would still cost a
/// futex system call (one per FUSE request, measured on random reads).
/// A sleeper counts itself while holding the state's mutex, before the
/// wait releases it; a notifier changes the state under that mutex first,
/// so it reads the count after any sleeper that could miss the change has
/// counted itself.
struct Wakeup {
    cv: Condvar,
    sleepers: AtomicUsize,
}

impl Wakeup {
    fn new() -> Self {
        Wakeup {
            cv: Condvar::new(),
            sleepers: AtomicUsize::new(0),
        }
    }

    fn wait<'a, T>(&self, g: MutexGuard<'a, T>) -> std::sync::LockResult<MutexGuard<'a, T>> {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let r = self.cv.wait(g);
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        r
    }

    fn wait_timeout<'a, T>(
        &self,
        g: MutexGuard<'a, T>,
        dur: Duration,
    ) -> std::sync::LockResult<(MutexGuard<'a, T>, std::sync::WaitTimeoutResult)> {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let r = self.cv.wait_timeout(g, dur);
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        r
    }

    fn notify_all(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.cv.notify_all();
        }
    }
}

impl Glock {
    /// The resource this glock locks.
    pub fn name(&self) -> ResName {
        self.name
    }

    fn lock_st(&self) -> MutexGuard<'_, GlState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait for a change of state as a local request that is not granted
    /// yet (counted in the glock dump's `w:`).
    fn wait_as_waiter<'a>(&self, mut st: MutexGuard<'a, GlState>) -> MutexGuard<'a, GlState> {
        st.waiters += 1;
        let mut st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        st.waiters -= 1;
        st
    }

    /// [`Glock::wait_as_waiter`] for at most `dur`; `true` if it timed out.
    fn wait_as_waiter_for<'a>(
        &self,
        mut st: MutexGuard<'a, GlState>,
        dur: Duration,
    ) -> (MutexGuard<'a, GlState>, bool) {
        st.waiters += 1;
        let (mut st, r) = self
            .cv
            .wait_timeout(st, dur)
            .unwrap_or_else(|e| e.into_inner());
        st.waiters -= 1;
        (st, r.timed_out())
    }
}

/// How a local request treats a pin (see [`Pin`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Wait for it (telling its owner).
    Wait,
    /// Return `None` instead of waiting (telling its owner).
    UnlessPinned,
    /// The pin's owner: neither the pin nor a demotion it holds back apply.
    Pinned,
}

/// What the demotion worker is asked to do.
enum Work {
    /// Look at a glock, now or at an instant.
    Look(Arc<Glock>, Option<Instant>),
    /// Give up idle glocks until the table is back under its bound.
    Reclaim,
    /// A request of this node waits for other nodes: idle glocks kept for
    /// their hold time go now (see [`GlockTable::expedite`]).
    Expedite,
}

/// How many glocks a table keeps by default (`glocks=`): past it, the
/// oldest idle ones are given up and forgotten.
pub const DEFAULT_MAX_GLOCKS: usize = 65_536;

/// The node's glocks, keyed by resource name.
pub struct GlockTable {
    ls: Arc<dyn Lockspace>,
    glocks: Mutex<HashMap<ResName, Arc<Glock>>>,
    ops: HashMap<u32, Arc<dyn GlockOps>>,
    /// Glocks with a demotion to run, for the demotion worker (the kernel's
    /// glock workqueue). A demotion flushes the log, which waits for the
    /// transactions under way: it never runs on a thread that may be inside
    /// one (an operation
    /// dropping its last holder) nor on the lock module's thread (which
    /// must stay free to deliver grants). `None` once shut down.
    work: Mutex<Option<mpsc::Sender<Work>>>,
    /// Shut down: the lockspace was left.
    closed: std::sync::atomic::AtomicBool,
    /// Who replays a dead node's journals.
    on_recover: Mutex<Option<RecoverFn>>,
    /// Idle glocks, oldest first (the kernel's `lru_list`): each glock is
    /// queued at most once (`GlState::in_lru`); entries whose glock went
    /// are skipped.
    lru: Mutex<std::collections::VecDeque<Weak<Glock>>>,
    /// The bound on the table's size (see [`GlockTable::set_max_glocks`]).
    max: std::sync::atomic::AtomicUsize,
    /// A reclaim is queued for the worker.
    reclaim_queued: std::sync::atomic::AtomicBool,
}

/// Proof that a glock is held in at least `mode` by the current operation.
/// Cached objects covered by the glock may be used while it lives.
pub struct Holder {
    table: Arc<GlockTable>,
    gl: Arc<Glock>,
    mode: Mode,
}

impl Holder {
    /// The glock's resource name.
    pub fn name(&self) -> ResName {
        self.gl.name
    }
    /// The mode held.
    pub fn mode(&self) -> Mode {
        self.mode
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let mut st = self.gl.lock_st();
        if self.mode == Mode::EX {
            st.exclusive = false;
            st.open_to_readers = false;
        } else {
            st.shared = st.shared.saturating_sub(1);
        }
        if st.idle() && st.nocache && st.held.is_some_and(|h| h > Mode::NL) {
            st.demote = Some(Mode::NL);
        }
        if st.idle() {
            self.table.lru_add(&self.gl, &mut st);
        }
        let demote = st.demote_due();
        drop(st);
        self.gl.cv.notify_all();
        if demote {
            self.table.demote_after_release(&self.gl);
        }
    }
}

/// A glock kept in a mode beyond any operation (see the module doc): made
/// by [`GlockTable::pin`], given up when dropped.
pub struct Pin {
    table: Arc<GlockTable>,
    gl: Arc<Glock>,
}

impl Pin {
    /// The glock's resource name.
    pub fn name(&self) -> ResName {
        self.gl.name
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut st = self.gl.lock_st();
        if let Some(p) = st.pin.as_mut() {
            p.count = p.count.saturating_sub(1);
            if p.count == 0 {
                st.pin = None;
            }
        }
        if st.idle() {
            self.table.lru_add(&self.gl, &mut st);
        }
        let demote = st.demote_due();
        drop(st);
        self.gl.cv.notify_all();
        if demote {
            self.table.queue_demote(&self.gl);
        }
    }
}

/// The lock module's view of us: routes grants and blocking callbacks to glocks.
pub struct GlockCallbacks {
    table: OnceLock<Weak<GlockTable>>,
}

impl GlockCallbacks {
    /// Callbacks to pass to [`gfs2_lockproto::LockProto::join`], connected to a
    /// table later with [`GlockTable::new`].
    pub fn new() -> Arc<Self> {
        Arc::new(GlockCallbacks {
            table: OnceLock::new(),
        })
    }
    fn table(&self) -> Option<Arc<GlockTable>> {
        self.table.get().and_then(Weak::upgrade)
    }
}

impl LockCallbacks for GlockCallbacks {
    fn granted(&self, grant: Grant) {
        let Some(t) = self.table() else { return };
        let Some(gl) = t.find(grant.res) else { return };
        let mut st = gl.lock_st();
        st.apply_grant(&grant);
        let due = st.demote_due();
        tracing::trace!(glock = %grant.res, mode = ?grant.mode, demote = ?st.demote, due, "granted");
        drop(st);
        gl.cv.notify_all();
        // A callback that came while the request was in flight.
        if due {
            t.queue_demote(&gl);
        }
    }

    fn recover(&self, jids: &[u32]) {
        let Some(t) = self.table() else { return };
        let hook = t
            .on_recover
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match hook {
            Some(f) => f(jids.to_vec()),
            None => tracing::warn!(?jids, "a node died and nobody here replays its journals"),
        }
    }

    fn blocking(&self, res: ResName, wanted: Mode) {
        let Some(t) = self.table() else { return };
        let Some(gl) = t.find(res) else {
            tracing::trace!(glock = %res, "blocking callback for a glock we do not have");
            return;
        };
        let mut st = gl.lock_st();
        tracing::trace!(glock = %res, ?wanted, held = ?st.held, busy = st.busy, demote = ?st.demote, pending = ?st.pending, idle = st.idle(), "blocking callback");
        let target = if Mode::PR.compatible(wanted) {
            Mode::PR
        } else {
            Mode::NL
        };
        // Nothing to give up, unless a request is in flight: then the
        // callback may be about the mode being granted right now (the
        // grant of a request answered at once can reach us after the
        // callback its grant caused), so it is kept for the grant to settle
        // (see `GlState::apply_grant`).
        if !st.busy && st.held.is_none_or(|h| target >= h) {
            return;
        }
        // An inode glock in use here is kept for its hold time after its
        // grant, so that a node gets work done between two ping-pongs
        // (fairness without thrashing); an idle one goes at once.
        let in_use = !st.idle() || st.waiters > 0;
        let pin_blocks = st.pin.as_ref().is_some_and(|p| target < p.mode);
        if res.lk_type == gfs2_lockproto::lm_type::INODE
            && in_use
            && st.demote.is_none()
            && !pin_blocks
        {
            let at = st.granted_at + st.hold;
            if at > Instant::now() {
                let m = st.pending.map_or(target, |(m, _)| m.min(target));
                tracing::debug!(
                    glock = %res,
                    shared = st.shared,
                    exclusive = st.exclusive,
                    promoting = st.promoting,
                    waiters = st.waiters,
                    "remote request held back for the hold time"
                );
                st.pending = Some((m, at));
                // Each delay makes the next one shorter, down to the floor.
                st.hold = st.hold.saturating_sub(HOLD_DECR).max(HOLD_MIN);
                drop(st);
                t.queue_demote_at(&gl, at);
                return;
            }
        }
        st.demote = Some(st.demote.map_or(target, |d| d.min(target)));
        let demote = st.demote_due();
        let tell = if st.pin_blocks_demote() {
            st.pin_tell()
        } else {
            None
        };
        drop(st);
        if let Some(f) = tell {
            f(res);
        }
        if demote {
            t.queue_demote(&gl);
        }
    }
}

impl GlockTable {
    /// A table over a joined lockspace; `callbacks` must be the object given to
    /// the lock module's `join`. `ops` gives the per-type operations
    /// (types without an entry get [`NoOps`]).
    pub fn new(
        ls: Arc<dyn Lockspace>,
        callbacks: &GlockCallbacks,
        ops: HashMap<u32, Arc<dyn GlockOps>>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel::<Work>();
        let t = Arc::new(GlockTable {
            ls,
            glocks: Mutex::new(HashMap::new()),
            ops,
            work: Mutex::new(Some(tx)),
            closed: Default::default(),
            on_recover: Mutex::new(None),
            lru: Default::default(),
            max: DEFAULT_MAX_GLOCKS.into(),
            reclaim_queued: Default::default(),
        });
        let _ = callbacks.table.set(Arc::downgrade(&t));
        let weak = Arc::downgrade(&t);
        let spawned = std::thread::Builder::new()
            .name("glock-demote".into())
            .spawn(move || {
                // Ends when the table is shut down or dropped (the sender
                // goes with it). Delayed work (a hold time running out)
                // waits in `later`, earliest first.
                let mut later: std::collections::BTreeMap<(Instant, u64), Arc<Glock>> =
                    Default::default();
                let mut seq = 0u64;
                // A reclaim that left the table over its bound (glocks in
                // use then) looks again later: no new glock may come to
                // queue one.
                let mut reclaim_at: Option<Instant> = None;
                loop {
                    let next = later.keys().next().map(|(at, _)| *at);
                    let next = match (next, reclaim_at) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    let msg = match next {
                        Some(at) => {
                            match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                                Ok(m) => Some(m),
                                Err(mpsc::RecvTimeoutError::Timeout) => None,
                                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                            }
                        }
                        None => match rx.recv() {
                            Ok(m) => Some(m),
                            Err(_) => break,
                        },
                    };
                    let Some(t) = weak.upgrade() else { break };
                    if t.closed.load(std::sync::atomic::Ordering::SeqCst) {
                        // Unmounting: shutdown gives up every glock itself;
                        // what was queued before must not convert after it.
                        break;
                    }
                    let due: Vec<Arc<Glock>> = match msg {
                        Some(Work::Look(gl, Some(at))) => {
                            seq += 1;
                            later.insert((at, seq), gl);
                            Vec::new()
                        }
                        Some(Work::Look(gl, None)) => vec![gl],
                        Some(Work::Expedite) => {
                            let mut due = Vec::new();
                            for (k, gl) in std::mem::take(&mut later) {
                                let mut st = gl.lock_st();
                                if st.pending.is_some() && st.idle() && st.waiters == 0 {
                                    st.pending_now();
                                    drop(st);
                                    due.push(gl);
                                } else {
                                    drop(st);
                                    later.insert(k, gl);
                                }
                            }
                            due
                        }
                        Some(Work::Reclaim) => {
                            reclaim_at = t.reclaim().then(|| Instant::now() + RECLAIM_RETRY);
                            Vec::new()
                        }
                        None => {
                            let now = Instant::now();
                            if reclaim_at.is_some_and(|at| at <= now) {
                                reclaim_at = t.reclaim().then(|| now + RECLAIM_RETRY);
                            }
                            let rest = later.split_off(&(now, u64::MAX));
                            std::mem::replace(&mut later, rest).into_values().collect()
                        }
                    };
                    for gl in due {
                        let mut st = gl.lock_st();
                        // A hold time ran out: the remote request now stops
                        // new local holders and is served once they go.
                        if st.pending.is_some_and(|(_, at)| at <= Instant::now()) {
                            st.pending_now();
                        }
                        if st.pin_blocks_demote() {
                            if let Some(f) = st.pin_tell() {
                                drop(st);
                                f(gl.name);
                                continue;
                            }
                        }
                        if st.demote_due() {
                            t.demote(&gl, st);
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            // Demotions then run on the threads that find them due.
            tracing::error!("no glock demotion worker: {e}");
            *t.work.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        t
    }

    /// The last holder of `gl` went and a demotion is due. A glock with
    /// nothing cached under it (no per-type operations: iopen, journal) on a
    /// lock module that answers at once (lock_nolock) is demoted right here:
    /// nothing is written back and nothing waits for another node, so the
    /// rule that keeps demotions off operation threads (a log flush waits
    /// for the transactions under way) does not apply, and the worker is
    /// not woken for each file opened or removed. Every other glock goes to
    /// the worker.
    fn demote_after_release(&self, gl: &Arc<Glock>) {
        if self.ops_for(gl.name).is_some() || !self.ls.completes_at_once() {
            self.queue_demote(gl);
            return;
        }
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let st = gl.lock_st();
        if st.demote_due() {
            self.demote(gl, st);
        }
    }

    /// One of this node's requests has waited [`EXPEDITE_AFTER`] for other
    /// nodes: the idle glocks that others asked for and that are kept only
    /// for their hold time go now. The hold time lets a node get work done
    /// between two ping-pongs, but a node that waits for another lock does
    /// no work: keeping them lets a convoy form through the lock order (a
    /// node in a rename holds the rename lock and waits for a directory
    /// that a node waiting for the rename lock keeps for its hold time:
    /// each step then costs a whole hold time, a few operations a second
    /// for all three nodes of the node-death test). Beyond the kernel,
    /// whose `gl_hold_time` has the same convoy.
    fn expedite(&self) {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if let Some(tx) = &*self.work.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(Work::Expedite);
        }
    }

    /// Have the demotion worker look at `gl` (it demotes if still due).
    fn queue_demote(&self, gl: &Arc<Glock>) {
        self.send_work(gl, None);
    }

    /// Have the demotion worker look at `gl` at `at` (a hold time ends).
    fn queue_demote_at(&self, gl: &Arc<Glock>, at: Instant) {
        self.send_work(gl, Some(at));
    }

    fn send_work(&self, gl: &Arc<Glock>, at: Option<Instant>) {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            // After shutdown every lock is gone with the lockspace; a
            // holder dropped later (the journal's) has nothing to give up.
            return;
        }
        let sent = match &*self.work.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.send(Work::Look(gl.clone(), at)).is_ok(),
            None => false,
        };
        if !sent && at.is_some() {
            // No worker: the hold time is not kept.
            gl.lock_st().pending_now();
        }
        if !sent {
            let st = gl.lock_st();
            if st.demote_due() {
                self.demote(gl, st);
            }
        }
    }

    /// Have `f` told when another node dies, with the journals it held
    /// (the lock module's recovery callback). `f` is called on the lock
    /// module's thread: it must hand the work to a thread of its own.
    pub fn on_recover(&self, f: RecoverFn) {
        *self.on_recover.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    /// The lockspace this table locks in.
    pub fn lockspace(&self) -> &Arc<dyn Lockspace> {
        &self.ls
    }

    fn find(&self, name: ResName) -> Option<Arc<Glock>> {
        self.glocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .cloned()
    }

    fn get(&self, name: ResName) -> Arc<Glock> {
        let mut m = self.glocks.lock().unwrap_or_else(|e| e.into_inner());
        let before = m.len();
        let gl = m
            .entry(name)
            .or_insert_with(|| {
                Arc::new(Glock {
                    name,
                    st: Mutex::new(GlState {
                        held: None,
                        shared: 0,
                        exclusive: false,
                        open_to_readers: false,
                        busy: false,
                        demote: None,
                        nocache: false,
                        promoting: false,
                        waiters: 0,
                        lvb: None,
                        pending: None,
                        granted_at: Instant::now(),
                        hold: HOLD_MAX,
                        pin: None,
                        in_lru: false,
                        lru_ref: false,
                    }),
                    cv: Wakeup::new(),
                })
            })
            .clone();
        let len = m.len();
        drop(m);
        if len > before {
            // New: idle until someone holds it (a look-up that takes no
            // holder must not leave it for ever).
            let mut st = gl.lock_st();
            if st.idle() {
                self.lru_add(&gl, &mut st);
            }
            drop(st);
            if len > self.max_glocks() {
                self.queue_reclaim();
            }
        }
        gl
    }

    /// How many glocks the table keeps at most (beyond those in use).
    pub fn max_glocks(&self) -> usize {
        self.max.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Set the bound on the table's size (`glocks=`; at least 1): once a
    /// new glock takes the table past it, the demotion worker gives up the
    /// oldest idle glocks (see [`GlockTable::reclaim`]).
    pub fn set_max_glocks(&self, max: usize) {
        self.max
            .store(max.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// How many glocks the table holds now.
    pub fn count(&self) -> usize {
        self.glocks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Queue `gl`, whose state `st` is, on the LRU of idle glocks (or mark it
    /// used again if it is queued already).
    fn lru_add(&self, gl: &Arc<Glock>, st: &mut GlState) {
        // The mount's non-disk locks (mount, live, freeze, rename) are a
        // handful, and giving the freeze lock up would flush, checkpoint and
        // write a freeze header: they stay (the kernel holds them for the
        // mount).
        if gl.name.lk_type == gfs2_lockproto::lm_type::NONDISK {
            return;
        }
        if st.in_lru {
            st.lru_ref = true;
            return;
        }
        st.in_lru = true;
        st.lru_ref = false;
        self.lru
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(Arc::downgrade(gl));
    }

    fn queue_reclaim(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.closed.load(SeqCst) || self.reclaim_queued.swap(true, SeqCst) {
            return;
        }
        let sent = match &*self.work.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(tx) => tx.send(Work::Reclaim).is_ok(),
            None => false,
        };
        if !sent {
            // No worker: the table is not bounded (nothing here may run a
            // demotion on a thread that may be inside a transaction).
            self.reclaim_queued.store(false, SeqCst);
        }
    }

    /// Give up idle glocks, oldest first, until the table holds at most
    /// 15/16 of its bound (the kernel's `gfs2_scan_glock_lru`): each is
    /// demoted to NL through [`GlockTable::demote`] (sync, invalidate,
    /// convert), its lock is released, and it is removed from the table if
    /// nobody looked it up meanwhile. Runs on the demotion worker only. A
    /// glock used again since it was queued goes to the back once (second
    /// chance); one in use leaves the LRU until its last holder goes. A
    /// request arriving meanwhile waits (`busy`) and promotes afresh, as
    /// after any demotion. Returns whether the table is still over its
    /// bound (its worker then tries again after [`RECLAIM_RETRY`]).
    fn reclaim(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.reclaim_queued.store(false, SeqCst);
        let max = self.max_glocks();
        let target = max - max / 16;
        let lru_len = || self.lru.lock().unwrap_or_else(|e| e.into_inner()).len();
        // One pass over the LRU at most (second chances included).
        let mut budget = 2 * lru_len() + 1;
        let mut freed = 0usize;
        while budget > 0 && !self.closed.load(SeqCst) && self.count() > target {
            budget -= 1;
            let next = self
                .lru
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            let Some(weak) = next else { break };
            let Some(gl) = weak.upgrade() else { continue };
            let mut st = gl.lock_st();
            st.in_lru = false;
            if !st.reclaimable() {
                // In use: queued again when its last holder goes; idle but
                // with something under way: looked at again later.
                if st.idle() && st.pin.is_none() {
                    self.lru_add(&gl, &mut st);
                }
                continue;
            }
            if st.lru_ref {
                self.lru_add(&gl, &mut st);
                continue;
            }
            if st.held.is_some_and(|h| h > Mode::NL) {
                st.demote = Some(Mode::NL);
                self.demote(&gl, st);
                st = gl.lock_st();
                if !st.reclaimable() || st.held.is_some_and(|h| h > Mode::NL) {
                    // Used meanwhile, or the sync failed (the lock is kept).
                    if st.idle() && st.pin.is_none() {
                        self.lru_add(&gl, &mut st);
                    }
                    continue;
                }
            }
            if st.held.is_some() {
                st.busy = true;
                drop(st);
                let r = self.ls.unlock(gl.name, None);
                st = gl.lock_st();
                st.busy = false;
                match r {
                    Ok(()) => {
                        st.held = None;
                        // Whatever another node asked meanwhile is given.
                        st.demote = None;
                        st.pending = None;
                    }
                    Err(e) => {
                        tracing::warn!(glock = %gl.name, "unlock of an idle glock failed: {e}");
                        drop(st);
                        gl.cv.notify_all();
                        continue;
                    }
                }
            }
            drop(st);
            gl.cv.notify_all();
            let mut m = self.glocks.lock().unwrap_or_else(|e| e.into_inner());
            let mut st = gl.lock_st();
            // Nobody else has it (the table's reference and ours): nobody can
            // find it after this, so nobody waits on it.
            if st.reclaimable()
                && st.held.is_none()
                && Arc::strong_count(&gl) == 2
                && m.get(&gl.name).is_some_and(|g| Arc::ptr_eq(g, &gl))
            {
                m.remove(&gl.name);
                freed += 1;
            } else if st.idle() && st.pin.is_none() {
                self.lru_add(&gl, &mut st);
            }
        }
        let left = self.count();
        tracing::debug!(freed, left, max, "glocks reclaimed");
        left > max
    }

    fn ops_for(&self, name: ResName) -> Option<&Arc<dyn GlockOps>> {
        self.ops.get(&name.lk_type)
    }

    /// Request flags for `name`: its LVB travels with every request of a
    /// type that has one (lock_dlm's `DLM_LKF_VALBLK`).
    fn flags(&self, name: ResName, try_lock: bool) -> LockFlags {
        LockFlags {
            try_lock,
            want_lvb: self.ops_for(name).is_some_and(|o| o.has_lvb(name)),
        }
    }

    /// What the glock type checks on a fresh grant (see
    /// [`GlockOps::go_granted`]).
    fn granted_check(&self, name: ResName, lvb: Option<&Lvb>) -> Result<()> {
        match self.ops_for(name) {
            Some(o) => o.go_granted(name, lvb),
            None => Ok(()),
        }
    }

    /// [`GlockTable::acquire`] of a glock that is given up as soon as its
    /// last holder goes (`GL_NOCACHE`): for iopen glocks, whose holders on
    /// other nodes are only ever asked for with try-locks.
    pub fn acquire_uncached(self: &Arc<Self>, name: ResName, mode: Mode) -> Result<Holder> {
        self.get(name).lock_st().nocache = true;
        self.acquire(name, mode)
    }

    /// Take a holder on `name` in `mode` (PR for reading, EX for changing),
    /// promoting the lock through the lock module when needed. Blocks until
    /// the lock is granted.
    pub fn acquire(self: &Arc<Self>, name: ResName, mode: Mode) -> Result<Holder> {
        self.acquire_inner(name, mode, Want::Wait)
            .and_then(Self::some)
    }

    fn some(h: Option<Holder>) -> Result<Holder> {
        h.ok_or_else(|| {
            FsError::Lock(gfs2_lockproto::LockError::Manager(
                "a waiting request came back empty".into(),
            ))
        })
    }

    /// An exclusive holder of `name` that lets shared local holders in
    /// beside it (see the module doc): for a holder kept for the whole mount
    /// whose user changes what the glock covers only by replacing whole
    /// cached blocks at once, so that a local reader sees either state.
    /// Other local exclusive requests, and other nodes, still wait for it.
    pub fn acquire_open_to_readers(self: &Arc<Self>, name: ResName) -> Result<Holder> {
        let h = self.acquire(name, Mode::EX)?;
        h.gl.lock_st().open_to_readers = true;
        h.gl.cv.notify_all();
        Ok(h)
    }

    /// [`GlockTable::acquire`], except that a pin the request conflicts
    /// with is not waited for: its owner is told and `None` comes back, for
    /// the caller to let go of what it holds and [`GlockTable::wait_unpinned`]
    /// (whoever waits for a pin while holding other glocks may hold one the
    /// pin's owner needs to let go).
    pub fn acquire_unless_pinned(
        self: &Arc<Self>,
        name: ResName,
        mode: Mode,
    ) -> Result<Option<Holder>> {
        self.acquire_inner(name, mode, Want::UnlessPinned)
    }

    /// Wait until `name` has no pin.
    pub fn wait_unpinned(&self, name: ResName) {
        let gl = self.get(name);
        let mut st = gl.lock_st();
        while st.pin.is_some() {
            st = gl.wait_as_waiter(st);
        }
    }

    /// Pin `name` in `mode` (see [`Pin`]): waits like [`GlockTable::acquire`]
    /// for the first pin, then keeps the glock at least in `mode` until every
    /// pin of it is dropped. Further pins of a pinned glock join it (its mode
    /// the strongest asked) and do not wait for a pending demotion; `notify`
    /// replaces the callback.
    pub fn pin(self: &Arc<Self>, name: ResName, mode: Mode, notify: PinNotify) -> Result<Pin> {
        let mode = if mode >= Mode::PW { Mode::EX } else { Mode::PR };
        let gl = self.get(name);
        let how = if gl.lock_st().pin.is_some() {
            Want::Pinned
        } else {
            Want::Wait
        };
        let h = self.acquire_inner(name, mode, how).and_then(Self::some)?;
        let mut st = gl.lock_st();
        match st.pin.as_mut() {
            Some(p) => {
                p.count += 1;
                p.mode = p.mode.max(mode);
                p.notify = notify;
            }
            None => {
                st.pin = Some(PinState {
                    mode,
                    count: 1,
                    notify,
                    told: false,
                })
            }
        }
        drop(st);
        drop(h);
        Ok(Pin {
            table: self.clone(),
            gl,
        })
    }

    /// A holder for the owner of `pin`: it does not wait for the pin nor for
    /// a demotion the pin holds back (only for other local holders).
    pub fn acquire_pinned(self: &Arc<Self>, pin: &Pin, mode: Mode) -> Result<Holder> {
        self.acquire_inner(pin.gl.name, mode, Want::Pinned)
            .and_then(Self::some)
    }

    fn acquire_inner(
        self: &Arc<Self>,
        name: ResName,
        mode: Mode,
        how: Want,
    ) -> Result<Option<Holder>> {
        let pinned = how == Want::Pinned;
        let mode = if mode >= Mode::PW { Mode::EX } else { Mode::PR };
        let gl = self.get(name);
        let asked = Instant::now();
        let mut st = gl.lock_st();
        // The request this thread sent: it may take its holder even when a
        // demote arrived meanwhile, so that progress is guaranteed.
        let mut promoted = false;
        loop {
            let sufficient = st.held.is_some_and(|h| h >= mode);
            let pin_conflict = !pinned && mode == Mode::EX && st.pin.is_some();
            let beside = st.reader_beside_exclusive(mode);
            let local_ok = if mode == Mode::EX {
                st.shared == 0 && !st.exclusive && !pin_conflict
            } else {
                !st.exclusive || beside
            };
            if pin_conflict {
                // A local change to a pinned glock: its owner must let go.
                let tell = st.pin_tell();
                if how == Want::UnlessPinned && !promoted {
                    drop(st);
                    if let Some(f) = tell {
                        f(name);
                    }
                    return Ok(None);
                }
                if let Some(f) = tell {
                    drop(st);
                    f(name);
                    st = gl.lock_st();
                    continue;
                }
            }
            // A demotion waits for the exclusive holder a reader joins
            // anyway (for the whole mount): the reader does not wait for it.
            let demote_waits = st.demote.is_some() && !(pinned && st.pin.is_some()) && !beside;
            if !st.busy && sufficient && local_ok && (!demote_waits || promoted) {
                if promoted {
                    st.promoting = false;
                }
                // Waited long for it: keep it longer next time.
                if asked.elapsed() > Duration::from_secs(1) {
                    st.hold = (st.hold + HOLD_INCR).min(HOLD_MAX);
                }
                if mode == Mode::EX {
                    st.exclusive = true;
                } else {
                    st.shared += 1;
                }
                return Ok(Some(Holder {
                    table: self.clone(),
                    gl: gl.clone(),
                    mode,
                }));
            }
            let idle = st.idle();
            if !st.busy && idle && demote_waits && !st.pin_blocks_demote() {
                // A remote request goes first (fairness); the worker
                // demotes, and we ask again afterwards.
                drop(st);
                self.queue_demote(&gl);
                st = gl.lock_st();
                if !st.busy && st.demote.is_some() {
                    st = gl.wait_as_waiter(st);
                }
                continue;
            }
            if !st.busy && !sufficient && idle && !pin_conflict {
                let was = st.held;
                st.busy = true;
                st.promoting = true;
                drop(st);
                if was.is_some_and(|w| w > Mode::NL) {
                    if let Some(o) = self.ops_for(name) {
                        o.go_before_upconvert(name);
                    }
                }
                let r = self.request(name, mode, was);
                st = gl.lock_st();
                match r {
                    Ok(Some(g)) => st.apply_grant(&g),
                    Ok(None) => {
                        // Waiting for the grant: a conversion that waits may
                        // lose its old mode (conversion deadlock), so what we
                        // cached under it can no longer be trusted.
                        if was.is_some() {
                            drop(st);
                            if let Some(o) = self.ops_for(name) {
                                o.go_inval(name);
                            }
                            st = gl.lock_st();
                        }
                        let mut told = false;
                        while st.busy {
                            if told {
                                st = gl.wait_as_waiter(st);
                                continue;
                            }
                            let (g, timed_out) = gl.wait_as_waiter_for(st, EXPEDITE_AFTER);
                            st = g;
                            if timed_out && st.busy {
                                told = true;
                                drop(st);
                                self.expedite();
                                st = gl.lock_st();
                            }
                        }
                    }
                    Err(e) => {
                        st.busy = false;
                        st.promoting = false;
                        drop(st);
                        gl.cv.notify_all();
                        return Err(FsError::Lock(e));
                    }
                }
                if st.held.is_some_and(|h| h >= mode) {
                    promoted = true;
                    let lvb = st.lvb;
                    drop(st);
                    if let Err(e) = self.granted_check(name, lvb.as_ref()) {
                        st = gl.lock_st();
                        st.promoting = false;
                        let due = st.demote_due();
                        drop(st);
                        gl.cv.notify_all();
                        if due {
                            self.queue_demote(&gl);
                        }
                        return Err(e);
                    }
                    st = gl.lock_st();
                } else {
                    st.promoting = false;
                    drop(st);
                    gl.cv.notify_all();
                    return Err(FsError::Lock(gfs2_lockproto::LockError::Manager(format!(
                        "{name}: granted below the mode asked for"
                    ))));
                }
                gl.cv.notify_all();
                continue;
            }
            st = gl.wait_as_waiter(st);
        }
    }

    /// Ask the lock module for `name` in `mode`, the node holding `was`.
    ///
    /// The lock manager serves conversions before new requests (the DLM's
    /// rule, which lock_mem follows): a node asking for a lock it does not
    /// hold at all would wait as long as other nodes keep passing the lock
    /// between them by conversions, which nodes that cached it do (seconds
    /// under a steady load: a node's first rename into a busy directory
    /// waited while two others did thousands). So a first request that
    /// cannot be granted at once is made a conversion: NL is taken
    /// (compatible with every mode, granted without waiting unless new
    /// requests queue ahead), then converted, which waits in turn behind
    /// the conversions already queued. A request granted at once costs
    /// nothing more; the lock module is left to itself where it answers
    /// at once anyway.
    fn request(
        &self,
        name: ResName,
        mode: Mode,
        was: Option<Mode>,
    ) -> std::result::Result<Option<Grant>, gfs2_lockproto::LockError> {
        let plain = |try_lock| self.ls.lock(name, mode, self.flags(name, try_lock), None);
        // (An iopen try would call the holders back: the kernel's
        // TRY_1CB, which makes kernel nodes try to delete the inode.)
        if was.is_some()
            || mode == Mode::NL
            || name.lk_type == gfs2_lockproto::lm_type::IOPEN
            || self.ls.completes_at_once()
        {
            return plain(false);
        }
        match plain(true)? {
            Some(g) if g.status != GrantStatus::WouldBlock => return Ok(Some(g)),
            _ => {}
        }
        let nl = self.ls.lock(name, Mode::NL, self.flags(name, true), None)?;
        let took_nl = nl.is_some_and(|g| g.status == GrantStatus::Granted);
        tracing::trace!(glock = %name, ?mode, took_nl, "first request has to wait");
        // With NL this is a conversion now; without (new requests queue
        // ahead) an ordinary request, in their order.
        let r = plain(false);
        if r.is_err() && took_nl {
            // Not recorded as held: give the NL back rather than leave it
            // in the lock manager until unmount.
            let _ = self.ls.unlock(name, None);
        }
        r
    }

    /// Take a holder on `name` in `mode` only if that needs no waiting: the
    /// lock is cached in a sufficient mode, or the lock manager grants it at
    /// once (`LM_FLAG_TRY`). `None` when another node holds it in a
    /// conflicting mode (it is not called back), a local holder conflicts,
    /// or a demotion is pending. Never blocks, so it may be called in any
    /// lock order and inside a transaction.
    pub fn try_acquire(self: &Arc<Self>, name: ResName, mode: Mode) -> Result<Option<Holder>> {
        self.try_take(name, mode, false)
    }

    /// [`GlockTable::try_acquire`] for locks whose owner is the question (a
    /// journal): the glock is not cached (see `GlState::nocache`), since
    /// other nodes only ever try to take it and never call it back.
    pub fn try_acquire_nocache(
        self: &Arc<Self>,
        name: ResName,
        mode: Mode,
    ) -> Result<Option<Holder>> {
        self.try_take(name, mode, true)
    }

    fn try_take(
        self: &Arc<Self>,
        name: ResName,
        mode: Mode,
        nocache: bool,
    ) -> Result<Option<Holder>> {
        let mode = if mode >= Mode::PW { Mode::EX } else { Mode::PR };
        let gl = self.get(name);
        let mut st = gl.lock_st();
        st.nocache |= nocache;
        // An uncached glock's demotion is only ever to let go of it: wait
        // for one under way (a down-conversion, granted at once, no other
        // glock involved) and then try from where it left us, rather than
        // failing for nothing. A promotion in flight may wait on another
        // node: never wait for that (the caller may be inside a transaction).
        while st.nocache && st.busy && !st.promoting {
            st = gl.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let demote_blocks = st.demote.is_some() && !st.nocache;
        let pin_blocks = mode == Mode::EX && st.pin.is_some();
        let beside = st.reader_beside_exclusive(mode);
        if st.busy
            || (demote_blocks && !beside)
            || pin_blocks
            || (st.exclusive && !beside)
            || (mode == Mode::EX && st.shared > 0)
        {
            return Ok(None);
        }
        if st.held.is_none_or(|h| h < mode) {
            st.busy = true;
            drop(st);
            let r = self.ls.lock(name, mode, self.flags(name, true), None);
            st = gl.lock_st();
            st.busy = false;
            if let Ok(Some(g)) = &r {
                st.apply_grant(g);
            }
            gl.cv.notify_all();
            match r {
                Ok(Some(g)) if g.status == GrantStatus::Granted => {
                    if self.ops_for(name).is_some_and(|o| o.has_lvb(name)) {
                        // Checked without the state lock; `promoting` keeps
                        // a demotion from taking the grant away meanwhile.
                        let lvb = st.lvb;
                        st.promoting = true;
                        drop(st);
                        let checked = self.granted_check(name, lvb.as_ref());
                        st = gl.lock_st();
                        st.promoting = false;
                        let due = st.demote_due();
                        if checked.is_err() || due {
                            drop(st);
                            gl.cv.notify_all();
                            if due {
                                self.queue_demote(&gl);
                            }
                            return checked.map(|()| None);
                        }
                        if (st.exclusive && !st.reader_beside_exclusive(mode))
                            || (mode == Mode::EX && st.shared > 0)
                        {
                            return Ok(None);
                        }
                    }
                }
                Ok(Some(_)) => {
                    // A callback that came while the request was in flight.
                    let due = st.demote_due();
                    drop(st);
                    if due {
                        self.queue_demote(&gl);
                    }
                    return Ok(None);
                }
                // A try request completes at once by definition.
                Ok(None) => {
                    return Err(FsError::Lock(gfs2_lockproto::LockError::Manager(format!(
                        "try-lock of {name} did not complete at once"
                    ))))
                }
                Err(e) => return Err(FsError::Lock(e)),
            }
        }
        if mode == Mode::EX {
            st.exclusive = true;
        } else {
            st.shared += 1;
        }
        Ok(Some(Holder {
            table: self.clone(),
            gl: gl.clone(),
            mode,
        }))
    }

    /// Demote `gl` (no holders, not busy, demote requested): sync, invalidate,
    /// convert down. Takes the state guard and releases it while working.
    fn demote(&self, gl: &Arc<Glock>, mut st: MutexGuard<'_, GlState>) {
        let Some(target) = st.demote.take() else {
            return;
        };
        let held = st.held;
        if held.is_none_or(|h| h <= target) {
            // The lock went down since the callback came (a conversion that
            // had to wait lost its mode): "demoting" now would be a
            // promotion, which may wait on other nodes, on the one thread
            // that must stay free to run demotions.
            drop(st);
            gl.cv.notify_all();
            return;
        }
        st.busy = true;
        drop(st);
        let name = gl.name;
        tracing::trace!(glock = %name, ?held, ?target, "demote");
        let mut lvb_out = None;
        if let Some(o) = self.ops_for(name) {
            if held == Some(Mode::EX) || (held.is_some_and(|h| h > target) && o.syncs_shared(name))
            {
                if let Err(e) = o.go_sync(name) {
                    // What the glock covers is not on disk: giving it up
                    // would hand other nodes stale blocks. The lock stays
                    // held (others wait, as for a withdrawn kernel node)
                    // until this node recovers or is declared dead.
                    tracing::error!(
                        glock = %name,
                        "sync before demote failed, the lock is kept: {e}"
                    );
                    let mut st = gl.lock_st();
                    st.busy = false;
                    drop(st);
                    gl.cv.notify_all();
                    return;
                }
                if held == Some(Mode::EX) && o.has_lvb(name) {
                    lvb_out = o.lvb_out(name);
                }
            }
            if target < Mode::PR {
                o.go_inval(name);
            }
        }
        let r = self
            .ls
            .lock(name, target, self.flags(name, false), lvb_out.as_ref());
        let mut st = gl.lock_st();
        match r {
            Ok(Some(g)) => st.apply_grant(&g),
            Ok(None) => {
                while st.busy {
                    st = gl.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            }
            Err(e) => {
                tracing::error!(glock = %name, "demote failed: {e}");
                st.busy = false;
            }
        }
        // Another node's callback may have come while we converted (one
        // wanting EX after one wanting PR): it asks for a further demotion.
        let due = st.demote_due();
        drop(st);
        gl.cv.notify_all();
        if due {
            self.queue_demote(gl);
        }
    }

    /// This node's glocks as text, one line each, in the spirit of the
    /// kernel's debugfs `glocks` file:
    /// `G: s:EX n:2/805b f:bDnp d:UN h:1/0 w:2`, that is the state granted
    /// by the lock manager (UN, SH, DF, EX as the kernel names NL, PR, CW,
    /// EX; `-` for no lock), the name (type/number in hex), flags (`b` a
    /// request in flight, `D` a demotion pending, `d` a remote request
    /// waiting for the minimum hold time, `n` not cached, `p` a
    /// granted request whose holder is on its way, `P` pinned by the pNFS
    /// layout service), the demotion's target,
    /// the holders (shared/exclusive) and the local requests waiting.
    pub fn dump(&self) -> String {
        fn state(m: Option<Mode>) -> &'static str {
            match m {
                None => "-",
                Some(Mode::NL) | Some(Mode::CR) => "UN",
                Some(Mode::CW) => "DF",
                Some(Mode::PR) => "SH",
                Some(Mode::PW) | Some(Mode::EX) => "EX",
            }
        }
        let mut all: Vec<Arc<Glock>> = self
            .glocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by_key(|g| g.name);
        let mut out = String::new();
        for gl in all {
            let st = gl.lock_st();
            let flags: String = [
                (st.busy, 'b'),
                (st.demote.is_some(), 'D'),
                (st.pending.is_some(), 'd'),
                (st.nocache, 'n'),
                (st.promoting, 'p'),
                (st.pin.is_some(), 'P'),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, c)| *c)
            .collect();
            out.push_str(&format!(
                "G: s:{} n:{:x}/{:x} f:{} d:{} h:{}/{} w:{}\n",
                state(st.held),
                gl.name.lk_type,
                gl.name.number,
                flags,
                st.demote.map_or("-", |d| state(Some(d))),
                st.shared,
                u32::from(st.exclusive),
                st.waiters,
            ));
        }
        out
    }

    /// Current lock-manager mode of a glock (for tests and diagnostics).
    pub fn held_mode(&self, name: ResName) -> Option<Mode> {
        self.find(name).and_then(|g| g.lock_st().held)
    }

    /// `gl`'s state once a conversion under way on the worker (a demotion,
    /// a reclaim's unlock) has finished, so that it does not reach the lock
    /// module after shutdown's own unlock. Bounded: a request waiting for
    /// another node that does not answer does not hold up the unmount.
    fn settled(gl: &Glock) -> MutexGuard<'_, GlState> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut st = gl.lock_st();
        while st.busy {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(glock = %gl.name, "a conversion still under way at unmount");
                break;
            }
            st = gl
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st
    }

    /// Unmount: sync and drop every glock, then leave the lockspace.
    pub fn shutdown(&self) -> Result<()> {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        *self.work.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let all: Vec<Arc<Glock>> = self
            .glocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, g)| g)
            .collect();
        for gl in all {
            let held = Self::settled(&gl).held;
            let mut lvb_out = None;
            if let Some(o) = self.ops_for(gl.name) {
                if held == Some(Mode::EX) {
                    o.go_sync(gl.name)?;
                    if o.has_lvb(gl.name) {
                        lvb_out = o.lvb_out(gl.name);
                    }
                }
                o.go_inval(gl.name);
            }
            if held.is_some() {
                self.ls.unlock(gl.name, lvb_out.as_ref())?;
            }
        }
        self.ls.leave()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gfs2_lockproto::{lm_type, LockProto};

    fn table() -> Arc<GlockTable> {
        let cb = GlockCallbacks::new();
        let (ls, _) = gfs2_lockproto::nolock::NoLock
            .join("test", cb.clone())
            .expect("nolock join");
        GlockTable::new(ls, &cb, HashMap::new())
    }

    /// A shared request on another thread; its holder comes back on the
    /// channel (kept until the receiver drops it).
    fn reader(t: &Arc<GlockTable>, name: ResName) -> mpsc::Receiver<Result<Holder>> {
        let (tx, rx) = mpsc::channel();
        let t = t.clone();
        std::thread::spawn(move || {
            let _ = tx.send(t.acquire(name, Mode::PR));
        });
        rx
    }

    /// Counts holders per glock in the test and records any sync or
    /// invalidation of a glock that a holder of the test still has.
    #[derive(Default)]
    struct Watch {
        held: Mutex<HashMap<u64, u32>>,
        synced: Mutex<HashMap<u64, u32>>,
        bad: Mutex<Vec<String>>,
    }

    impl Watch {
        fn check(&self, what: &str, name: ResName) {
            let held = self.held.lock().unwrap().get(&name.number).copied();
            if held.unwrap_or(0) > 0 {
                self.bad
                    .lock()
                    .unwrap()
                    .push(format!("{what} of {name} while held"));
            }
        }
    }

    impl GlockOps for Watch {
        fn go_sync(&self, name: ResName) -> Result<()> {
            self.check("sync", name);
            *self.synced.lock().unwrap().entry(name.number).or_default() += 1;
            Ok(())
        }
        fn go_inval(&self, name: ResName) {
            self.check("invalidation", name);
        }
    }

    fn watched_table(max: usize) -> (Arc<GlockTable>, Arc<Watch>) {
        let cb = GlockCallbacks::new();
        let (ls, _) = gfs2_lockproto::nolock::NoLock
            .join("test", cb.clone())
            .expect("nolock join");
        let w = Arc::new(Watch::default());
        let mut ops: HashMap<u32, Arc<dyn GlockOps>> = HashMap::new();
        ops.insert(lm_type::INODE, w.clone());
        let t = GlockTable::new(ls, &cb, ops);
        t.set_max_glocks(max);
        (t, w)
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn idle_glocks_are_reclaimed_and_held_ones_kept() {
        let (t, w) = watched_table(16);
        let kept = ResName::new(lm_type::INODE, 1);
        let gh = t.acquire(kept, Mode::EX).unwrap();
        for n in 100..400u64 {
            drop(
                t.acquire(ResName::new(lm_type::INODE, n), Mode::EX)
                    .unwrap(),
            );
        }
        wait_until("table within its bound", || t.count() <= 16);
        // The held glock stays, in its mode; reclaimed ones were written
        // back (EX) through the demotion path and are gone.
        assert_eq!(t.held_mode(kept), Some(Mode::EX));
        assert_eq!(w.synced.lock().unwrap().get(&1), None);
        assert_eq!(t.held_mode(ResName::new(lm_type::INODE, 100)), None);
        assert_eq!(w.synced.lock().unwrap().get(&100), Some(&1));
        drop(gh);
        // Idle now: it may go like any other once the bound is passed again.
        for n in 400..700u64 {
            drop(
                t.acquire(ResName::new(lm_type::INODE, n), Mode::PR)
                    .unwrap(),
            );
        }
        wait_until("table within its bound again", || t.count() <= 16);
        assert_eq!(t.held_mode(kept), None);
        assert_eq!(w.synced.lock().unwrap().get(&1), Some(&1));
    }

    /// A node whose request waits for another node gives up the idle
    /// glocks it keeps for their hold time: B's request for x is not held
    /// back for A's hold time (200 ms) while A itself waits for B's y.
    #[test]
    fn a_waiting_node_gives_up_what_it_keeps_for_its_hold_time() {
        let mgr = gfs2_lockproto::mem::MemLockManager::new();
        let join = || {
            let cb = GlockCallbacks::new();
            let (ls, _) = mgr.proto().join("test:hold", cb.clone()).unwrap();
            GlockTable::new(ls, &cb, HashMap::new())
        };
        let (a, b) = (join(), join());
        let (x, y) = (
            ResName::new(lm_type::INODE, 1),
            ResName::new(lm_type::INODE, 2),
        );
        let by = b.acquire(y, Mode::EX).unwrap();
        let ax = a.acquire(x, Mode::EX).unwrap();
        // B asks for x while A uses it: held back for A's hold time.
        let bx = {
            let b = b.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                let h = b.acquire(x, Mode::EX).unwrap();
                (t.elapsed(), h)
            })
        };
        wait_until("B's request held back", || a.dump().contains(" f:d "));
        drop(ax);
        // A now waits for y, which B uses.
        let ay = {
            let a = a.clone();
            std::thread::spawn(move || a.acquire(y, Mode::PR).map(|_| ()))
        };
        let (took, _bx) = bx.join().unwrap();
        assert!(!ay.is_finished(), "A was granted y while B held it");
        assert!(
            took < Duration::from_millis(170),
            "B waited {took:?} for x, A's whole hold time"
        );
        drop(by);
        drop(_bx);
        ay.join().unwrap().unwrap();
    }

    /// Glocks in use when the reclaim ran are given up once idle, though no
    /// new glock comes to queue another reclaim.
    #[test]
    fn glocks_in_use_at_reclaim_go_once_idle() {
        let (t, _w) = watched_table(8);
        let held: Vec<Holder> = (1..=40u64)
            .map(|n| {
                t.acquire(ResName::new(lm_type::INODE, n), Mode::PR)
                    .unwrap()
            })
            .collect();
        // The reclaims queued by the new glocks found them all in use.
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(t.count(), 40);
        drop(held);
        wait_until("table within its bound", || t.count() <= 8);
    }

    /// Threads take and drop holders on more glocks than the bound while the
    /// worker reclaims: no glock is synced or invalidated under a holder,
    /// every request is granted, and the table ends within its bound.
    #[test]
    fn reclaim_never_takes_a_glock_from_its_holder() {
        let (t, w) = watched_table(8);
        std::thread::scope(|s| {
            for k in 0..4u64 {
                let (t, w) = (&t, &w);
                s.spawn(move || {
                    for i in 0..3000u64 {
                        let n = (i * 7 + k * 13) % 40;
                        let mode = if i % 3 == 0 { Mode::EX } else { Mode::PR };
                        let h = t.acquire(ResName::new(lm_type::INODE, n), mode).unwrap();
                        *w.held.lock().unwrap().entry(n).or_default() += 1;
                        if i % 50 == 0 {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        *w.held.lock().unwrap().get_mut(&n).unwrap() -= 1;
                        drop(h);
                    }
                });
            }
        });
        wait_until("table within its bound", || t.count() <= 8);
        let bad = w.bad.lock().unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        assert!(
            !w.synced.lock().unwrap().is_empty(),
            "nothing was reclaimed"
        );
    }

    /// On lock_nolock an uncached glock with nothing under it (iopen) goes
    /// down as its last holder leaves, without the worker; one with
    /// per-type operations (an inode's) still goes through the worker,
    /// which writes it back.
    #[test]
    fn uncached_glock_without_ops_goes_down_with_its_last_holder() {
        let (t, w) = watched_table(1000);
        let iopen = ResName::new(lm_type::IOPEN, 0x805d);
        let a = t.acquire_uncached(iopen, Mode::PR).unwrap();
        let b = t.acquire_uncached(iopen, Mode::PR).unwrap();
        drop(a);
        assert_eq!(
            t.held_mode(iopen),
            Some(Mode::PR),
            "went down under a holder"
        );
        drop(b);
        assert_eq!(t.held_mode(iopen), Some(Mode::NL));
        let inode = ResName::new(lm_type::INODE, 0x805d);
        drop(t.acquire_uncached(inode, Mode::EX).unwrap());
        wait_until("the inode glock demoted", || {
            t.held_mode(inode) == Some(Mode::NL)
        });
        assert_eq!(w.synced.lock().unwrap().get(&0x805d), Some(&1));
    }

    #[test]
    fn reader_is_granted_beside_an_exclusive_holder_open_to_readers() {
        let t = table();
        let name = ResName::new(lm_type::INODE, 0x805b);
        let gh = t.acquire_open_to_readers(name).unwrap();
        let r = reader(&t, name)
            .recv_timeout(Duration::from_secs(10))
            .expect("a local reader waited on the exclusive holder open to readers")
            .unwrap();
        assert_eq!(r.mode(), Mode::PR);
        assert!(t.dump().contains("h:1/1"), "{}", t.dump());
        let again = t.try_acquire(name, Mode::PR).unwrap();
        assert!(again.is_some(), "a try-lock reader was refused");
        // Another local writer still waits for the exclusive holder.
        drop((r, again));
        assert!(t.try_acquire(name, Mode::EX).unwrap().is_none());
        drop(gh);
        assert!(t.try_acquire(name, Mode::EX).unwrap().is_some());
    }

    #[test]
    fn reader_waits_for_an_ordinary_exclusive_holder() {
        let t = table();
        let name = ResName::new(lm_type::INODE, 0x805c);
        // Open to readers once: the flag goes with that holder.
        drop(t.acquire_open_to_readers(name).unwrap());
        let gh = t.acquire(name, Mode::EX).unwrap();
        assert!(t.try_acquire(name, Mode::PR).unwrap().is_none());
        let rx = reader(&t, name);
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "a reader was granted beside an ordinary exclusive holder"
        );
        drop(gh);
        let r = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("reader never woke");
        assert_eq!(r.unwrap().mode(), Mode::PR);
    }
}
