//! `lock_mem`: an in-process lock manager with the DLM's semantics, so that
//! several filesystem instances in one process behave as cluster nodes.
//!
//! One [`MemLockManager`] stands for the cluster's lock manager; every
//! instance joins it through [`MemLockManager::proto`], which gives a
//! [`LockProto`]. Requests that conflict with granted locks wait in a queue
//! and the holders of the conflicting locks get blocking callbacks; grants and
//! callbacks are delivered on one thread per joined node, never on the
//! requester's thread while the manager is locked, so callbacks may call back
//! into the lockspace.
//!
//! Conversions take priority over new requests, new requests are granted in
//! order (one that cannot be granted holds up those behind it, as in the
//! DLM), and a conversion deadlock (two holders of PR each converting to EX)
//! is resolved as `DLM_LKF_CONVDEADLK` does: the later requester's granted
//! mode is dropped to NL while it waits. A caller converting up from a shared
//! mode must therefore treat its cached state as lost when the conversion
//! has to wait (the glock layer invalidates before an up-conversion that does
//! not complete at once).
//!
//! A node can be killed ([`MemLockManager::kill`]), as a cluster fences a
//! failed member: it is gone at once (no more callbacks, every call fails
//! with [`LockError::Left`], its waiting requests dropped), its journal
//! locks are released so that a survivor can take them, and every other lock
//! it held stays granted to nobody (an *orphan*), so that nothing it may
//! have changed is handed out before its journal is replayed (gfs2's NOEXP
//! rule, which lock_dlm enforces by holding back grants during recovery).
//! The survivors are told which journals to replay
//! ([`LockCallbacks::recover`]); once one of them reports each journal done
//! ([`Lockspace::recovery_done`]), the orphans are released, and the LVBs
//! of those held in PW or EX are invalidated (the next holder reads zeros,
//! as the DLM marks such LVBs not valid).

use crate::{
    Grant, GrantStatus, JoinInfo, LockCallbacks, LockError, LockFlags, LockProto, Lockspace, Lvb,
    Mode, ResName, LVB_SIZE,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

type NodeId = u32;

enum Event {
    Granted(Grant),
    Blocking(ResName, Mode),
    Recover(Vec<u32>),
}

struct Request {
    node: NodeId,
    mode: Mode,
    flags: LockFlags,
}

#[derive(Default)]
struct Resource {
    granted: HashMap<NodeId, Mode>,
    queue: VecDeque<Request>,
    lvb: Option<Lvb>,
    /// Nodes whose granted lock was dropped to NL to break a conversion deadlock.
    demoted: HashSet<NodeId>,
    /// The strongest mode each holder was told is waited for since its
    /// lock was last granted (the DLM's `lkb_highbast`, cleared on every
    /// grant): a holder is called back again when a stronger mode waits,
    /// or when it was granted anew, since the callback it had may have been
    /// spent on the mode it held before.
    highbast: HashMap<NodeId, Mode>,
}

#[derive(Default)]
struct Space {
    members: HashMap<NodeId, mpsc::Sender<Event>>,
    resources: HashMap<ResName, Resource>,
    /// Killed nodes whose orphan locks wait for these journals' recovery.
    dead: HashMap<NodeId, HashSet<u32>>,
    /// Every node ever killed (its later `leave` must not free orphans).
    killed: HashSet<NodeId>,
}

#[derive(Default)]
struct State {
    next_node: NodeId,
    spaces: HashMap<String, Space>,
}

/// The in-process cluster lock manager.
#[derive(Clone, Default)]
pub struct MemLockManager {
    state: Arc<Mutex<State>>,
}

impl MemLockManager {
    /// A manager with no lockspaces.
    pub fn new() -> Self {
        Self::default()
    }

    /// A lock module whose lockspaces live in this manager; give one to each
    /// simulated node.
    pub fn proto(&self) -> Arc<dyn LockProto> {
        Arc::new(MemProto { mgr: self.clone() })
    }

    /// Kill `node` of lockspace `ls`, as the cluster fences a failed node
    /// (see the module doc); returns the journal ids it held, which the
    /// survivors are told to replay.
    pub fn kill(&self, ls: &str, node: u32) -> Vec<u32> {
        let mut st = lock_state(&self.state);
        let Some(space) = st.spaces.get_mut(ls) else {
            return Vec::new();
        };
        if !space.members.contains_key(&node) {
            return Vec::new();
        }
        // Its waiting requests end as cancelled (a process that is gone
        // waits for nothing), then its callback thread ends.
        let waiting: Vec<Grant> = space
            .resources
            .iter()
            .filter(|(_, r)| r.queue.iter().any(|q| q.node == node))
            .map(|(res, r)| Grant {
                res: *res,
                status: GrantStatus::Cancelled,
                mode: r.granted.get(&node).copied(),
                lvb: None,
            })
            .collect();
        for g in waiting {
            send(space, node, Event::Granted(g));
        }
        space.members.remove(&node);
        space.killed.insert(node);
        let mut jids = Vec::new();
        let names: Vec<ResName> = space.resources.keys().copied().collect();
        for res in &names {
            if let Some(r) = space.resources.get_mut(res) {
                r.queue.retain(|q| q.node != node);
                r.demoted.remove(&node);
                let journal = res.lk_type == crate::lm_type::JOURNAL;
                if journal && r.granted.get(&node).is_some_and(|m| *m >= Mode::PW) {
                    r.granted.remove(&node);
                    jids.push(res.number as u32);
                }
            }
        }
        jids.sort_unstable();
        if jids.is_empty() {
            release_orphans(space, node);
        } else {
            space.dead.insert(node, jids.iter().copied().collect());
        }
        for res in names {
            process(space, res);
        }
        if !jids.is_empty() {
            for tx in space.members.values() {
                let _ = tx.send(Event::Recover(jids.clone()));
            }
        }
        // The last node gone: the lockspace goes with it, and whoever
        // joins next is the first mounter, who recovers every journal.
        if space.members.is_empty() {
            st.spaces.remove(ls);
        }
        jids
    }

    /// Locks held by killed nodes whose journals are not yet recovered.
    pub fn orphans(&self, ls: &str) -> usize {
        let st = lock_state(&self.state);
        st.spaces.get(ls).map_or(0, |s| {
            s.resources
                .values()
                .map(|r| r.granted.keys().filter(|n| s.killed.contains(n)).count())
                .sum()
        })
    }

    /// The LVB stored with `res` in lockspace `ls` (zeros when none was
    /// written), for tests and diagnostics.
    pub fn lvb(&self, ls: &str, res: ResName) -> Option<Lvb> {
        let st = lock_state(&self.state);
        st.spaces
            .get(ls)
            .and_then(|s| s.resources.get(&res))
            .and_then(|r| r.lvb)
    }

    /// Number of nodes currently holding or waiting for `res` in lockspace `ls`
    /// (for tests and diagnostics).
    pub fn holders(&self, ls: &str, res: ResName) -> Vec<Mode> {
        let st = lock_state(&self.state);
        st.spaces
            .get(ls)
            .and_then(|s| s.resources.get(&res))
            .map(|r| r.granted.values().copied().collect())
            .unwrap_or_default()
    }
}

fn lock_state(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in a callback thread cannot leave State inconsistent (callbacks
    // run without the lock), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct MemProto {
    mgr: MemLockManager,
}

impl LockProto for MemProto {
    fn name(&self) -> &'static str {
        "lock_mem"
    }
    fn join(
        &self,
        table: &str,
        callbacks: Arc<dyn LockCallbacks>,
    ) -> Result<(Arc<dyn Lockspace>, JoinInfo), LockError> {
        let name = crate::lockspace_name(table)?.to_string();
        let (tx, rx) = mpsc::channel::<Event>();
        let mut st = lock_state(&self.mgr.state);
        st.next_node += 1;
        let node = st.next_node;
        let space = st.spaces.entry(name.clone()).or_default();
        let first = space.members.is_empty();
        space.members.insert(node, tx);
        drop(st);
        std::thread::Builder::new()
            .name(format!("lock_mem-{name}-{node}"))
            .spawn(move || {
                for ev in rx {
                    match ev {
                        Event::Granted(g) => callbacks.granted(g),
                        Event::Blocking(r, m) => callbacks.blocking(r, m),
                        Event::Recover(jids) => callbacks.recover(&jids),
                    }
                }
            })
            .map_err(|e| LockError::Manager(format!("spawning callback thread: {e}")))?;
        Ok((
            Arc::new(MemSpace {
                mgr: self.mgr.clone(),
                name,
                node,
            }),
            JoinInfo { first, jid: None },
        ))
    }
}

struct MemSpace {
    mgr: MemLockManager,
    name: String,
    node: NodeId,
}

impl MemSpace {
    fn with_space<T>(
        &self,
        f: impl FnOnce(&mut Space) -> Result<T, LockError>,
    ) -> Result<T, LockError> {
        let mut st = lock_state(&self.mgr.state);
        let space = st.spaces.get_mut(&self.name).ok_or(LockError::Left)?;
        if !space.members.contains_key(&self.node) {
            return Err(LockError::Left);
        }
        f(space)
    }
}

fn grantable(r: &Resource, node: NodeId, mode: Mode) -> bool {
    r.granted
        .iter()
        .all(|(n, m)| *n == node || mode.compatible(*m))
}

fn send(space: &Space, node: NodeId, ev: Event) {
    match &ev {
        Event::Granted(g) => {
            tracing::trace!(node, res = %g.res, mode = ?g.mode, status = ?g.status, "grant sent")
        }
        Event::Blocking(res, m) => tracing::trace!(node, %res, mode = ?m, "blocking callback sent"),
        Event::Recover(j) => tracing::trace!(node, jids = ?j, "recovery sent"),
    }
    if let Some(tx) = space.members.get(&node) {
        // A node whose callback thread is gone has left; nothing to tell it.
        let _ = tx.send(ev);
    }
}

fn make_grant(r: &mut Resource, res: ResName, node: NodeId, mode: Mode, flags: LockFlags) -> Grant {
    r.granted.insert(node, mode);
    r.demoted.remove(&node);
    r.highbast.remove(&node);
    Grant {
        res,
        status: GrantStatus::Granted,
        mode: Some(mode),
        lvb: flags.want_lvb.then(|| r.lvb.unwrap_or([0; LVB_SIZE])),
    }
}

/// Release every lock dead `node` still holds (its journals are replayed),
/// invalidating the LVBs it could have changed. The caller processes the
/// queues.
fn release_orphans(space: &mut Space, node: NodeId) {
    space.dead.remove(&node);
    for r in space.resources.values_mut() {
        if let Some(m) = r.granted.remove(&node) {
            if m.writes_lvb() {
                r.lvb = None;
            }
        }
    }
}

/// Grant whatever waiting requests can be granted now, then tell holders
/// about the requests they still block.
fn process(space: &mut Space, res: ResName) {
    let Some(r) = space.resources.get_mut(&res) else {
        return;
    };
    let mut events = Vec::new();
    // Conversions first, in queue order.
    let mut i = 0;
    while i < r.queue.len() {
        let q = &r.queue[i];
        if r.granted.contains_key(&q.node) && grantable(r, q.node, q.mode) {
            if let Some(q) = r.queue.remove(i) {
                let g = make_grant(r, res, q.node, q.mode, q.flags);
                events.push((q.node, Event::Granted(g)));
            }
        } else {
            i += 1;
        }
    }
    // New requests strictly in order.
    let mut i = 0;
    while i < r.queue.len() {
        let q = &r.queue[i];
        if r.granted.contains_key(&q.node) {
            i += 1;
            continue;
        }
        if !grantable(r, q.node, q.mode) {
            break;
        }
        if let Some(q) = r.queue.remove(i) {
            let g = make_grant(r, res, q.node, q.mode, q.flags);
            events.push((q.node, Event::Granted(g)));
        }
    }
    // Blocking callbacks for what is still waiting.
    for q in r.queue.iter() {
        for (holder, m) in r.granted.iter() {
            if *holder == q.node || q.mode.compatible(*m) {
                continue;
            }
            if r.highbast.get(holder).is_none_or(|told| *told < q.mode) {
                r.highbast.insert(*holder, q.mode);
                events.push((*holder, Event::Blocking(res, q.mode)));
            }
        }
    }
    if r.granted.is_empty() && r.queue.is_empty() {
        space.resources.remove(&res);
    }
    for (node, ev) in events {
        send(space, node, ev);
    }
}

impl Lockspace for MemSpace {
    fn lock(
        &self,
        res: ResName,
        mode: Mode,
        flags: LockFlags,
        lvb_out: Option<&Lvb>,
    ) -> Result<Option<Grant>, LockError> {
        let node = self.node;
        self.with_space(|space| {
            let r = space.resources.entry(res).or_default();
            tracing::trace!(node, %res, ?mode, try_lock = flags.try_lock, granted = ?r.granted, queued = ?r.queue.iter().map(|q| (q.node, q.mode)).collect::<Vec<_>>(), "lock");
            if r.queue.iter().any(|q| q.node == node) {
                return Err(LockError::BadRequest {
                    res,
                    why: "a request for this lock is already pending",
                });
            }
            let current = r.granted.get(&node).copied();
            if let (Some(cur), Some(v)) = (current, lvb_out) {
                if cur.writes_lvb() && mode < cur {
                    r.lvb = Some(*v);
                }
            }
            let conversion_first = current.is_some();
            let queue_clear =
                conversion_first || r.queue.iter().all(|q| r.granted.contains_key(&q.node));
            if grantable(r, node, mode) && queue_clear {
                let g = make_grant(r, res, node, mode, flags);
                // A down-conversion may unblock others; an up-conversion
                // answered at once, ahead of requests that wait for others,
                // now blocks them too, and its holder must be told so (as
                // the DLM sends a blocking AST to every granted lock that
                // blocks a waiter). The callback may reach the node before
                // it has seen this grant.
                process(space, res);
                return Ok(Some(g));
            }
            if flags.try_lock {
                if current.is_none() && r.queue.is_empty() && r.granted.is_empty() {
                    space.resources.remove(&res);
                }
                return Ok(Some(Grant {
                    res,
                    status: GrantStatus::WouldBlock,
                    mode: current,
                    lvb: None,
                }));
            }
            // Conversion deadlock: another holder waits to convert to a mode our
            // granted lock blocks, while its granted lock blocks us. Drop ours to NL.
            if let Some(cur) = current {
                let deadlock = r.queue.iter().any(|q| {
                    q.node != node
                        && !q.mode.compatible(cur)
                        && r.granted.get(&q.node).is_some_and(|m| !mode.compatible(*m))
                });
                if deadlock {
                    r.granted.insert(node, Mode::NL);
                    r.demoted.insert(node);
                }
            }
            r.queue.push_back(Request {
                node,
                mode,
                flags,
            });
            process(space, res);
            Ok(None)
        })
    }

    fn unlock(&self, res: ResName, lvb_out: Option<&Lvb>) -> Result<(), LockError> {
        let node = self.node;
        self.with_space(|space| {
            let r = space.resources.get_mut(&res).ok_or(LockError::BadRequest {
                res,
                why: "unlock of a lock not held",
            })?;
            if r.queue.iter().any(|q| q.node == node) {
                return Err(LockError::BadRequest {
                    res,
                    why: "unlock while a request is pending (cancel it first)",
                });
            }
            let cur = r.granted.remove(&node).ok_or(LockError::BadRequest {
                res,
                why: "unlock of a lock not held",
            })?;
            if let Some(v) = lvb_out {
                if cur.writes_lvb() {
                    r.lvb = Some(*v);
                }
            }
            process(space, res);
            Ok(())
        })
    }

    fn cancel(&self, res: ResName) -> Result<(), LockError> {
        let node = self.node;
        self.with_space(|space| {
            let Some(r) = space.resources.get_mut(&res) else {
                return Ok(());
            };
            let Some(pos) = r.queue.iter().position(|q| q.node == node) else {
                return Ok(());
            };
            r.queue.remove(pos);
            let g = Grant {
                res,
                status: GrantStatus::Cancelled,
                mode: r.granted.get(&node).copied(),
                lvb: None,
            };
            send(space, node, Event::Granted(g));
            process(space, res);
            Ok(())
        })
    }

    fn first_done(&self) -> Result<(), LockError> {
        Ok(())
    }

    fn node_id(&self) -> u32 {
        self.node
    }

    fn recovery_done(&self, jid: u32) -> Result<(), LockError> {
        self.with_space(|space| {
            let finished: Vec<NodeId> = space
                .dead
                .iter_mut()
                .filter_map(|(n, jids)| (jids.remove(&jid) && jids.is_empty()).then_some(*n))
                .collect();
            for n in &finished {
                release_orphans(space, *n);
            }
            if !finished.is_empty() {
                let names: Vec<ResName> = space.resources.keys().copied().collect();
                for res in names {
                    process(space, res);
                }
            }
            Ok(())
        })
    }

    fn leave(&self) -> Result<(), LockError> {
        let node = self.node;
        let mut st = lock_state(&self.mgr.state);
        let Some(space) = st.spaces.get_mut(&self.name) else {
            return Ok(());
        };
        // A killed node's locks are the survivors' business now.
        if space.killed.contains(&node) {
            return Ok(());
        }
        // Dropping the sender ends the node's callback thread.
        space.members.remove(&node);
        let names: Vec<ResName> = space.resources.keys().copied().collect();
        for res in names {
            if let Some(r) = space.resources.get_mut(&res) {
                r.granted.remove(&node);
                r.queue.retain(|q| q.node != node);
                r.demoted.remove(&node);
            }
            process(space, res);
        }
        if space.members.is_empty() {
            st.spaces.remove(&self.name);
        }
        Ok(())
    }
}

impl Drop for MemSpace {
    fn drop(&mut self) {
        let _ = self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{Receiver, RecvTimeoutError};
    use std::time::Duration;

    #[derive(Debug, PartialEq)]
    enum Seen {
        Granted(Grant),
        Blocking(ResName, Mode),
        Recover(Vec<u32>),
    }

    struct Chan(Mutex<mpsc::Sender<Seen>>);
    impl LockCallbacks for Chan {
        fn granted(&self, g: Grant) {
            let _ = self.0.lock().unwrap().send(Seen::Granted(g));
        }
        fn blocking(&self, r: ResName, m: Mode) {
            let _ = self.0.lock().unwrap().send(Seen::Blocking(r, m));
        }
        fn recover(&self, jids: &[u32]) {
            let _ = self.0.lock().unwrap().send(Seen::Recover(jids.to_vec()));
        }
    }

    fn node(mgr: &MemLockManager) -> (Arc<dyn Lockspace>, JoinInfo, Receiver<Seen>) {
        let (tx, rx) = mpsc::channel();
        let (ls, info) = mgr
            .proto()
            .join("test:fs", Arc::new(Chan(Mutex::new(tx))))
            .unwrap();
        (ls, info, rx)
    }

    fn next(rx: &Receiver<Seen>) -> Seen {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("no callback")
    }

    /// The next callback, which must be a grant.
    fn granted(rx: &Receiver<Seen>) -> Grant {
        match next(rx) {
            Seen::Granted(g) => g,
            other => panic!("{other:?}"),
        }
    }

    fn quiet(rx: &Receiver<Seen>) {
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(100)),
            Err(RecvTimeoutError::Timeout)
        );
    }

    const R: ResName = ResName::new(2, 0x84);
    const LVB: LockFlags = LockFlags {
        try_lock: false,
        want_lvb: true,
    };

    #[test]
    fn first_mounter_and_shared_locks() {
        let mgr = MemLockManager::new();
        let (a, ia, ra) = node(&mgr);
        let (b, ib, rb) = node(&mgr);
        assert!(ia.first);
        assert!(!ib.first);
        let ga = a
            .lock(R, Mode::PR, LockFlags::default(), None)
            .unwrap()
            .unwrap();
        assert_eq!(ga.status, GrantStatus::Granted);
        let gb = b
            .lock(R, Mode::PR, LockFlags::default(), None)
            .unwrap()
            .unwrap();
        assert_eq!(gb.mode, Some(Mode::PR));
        quiet(&ra);
        quiet(&rb);
        assert_eq!(mgr.holders("fs", R).len(), 2);
    }

    #[test]
    fn conflict_blocks_then_grants_after_unlock_with_lvb() {
        let mgr = MemLockManager::new();
        let (a, _, ra) = node(&mgr);
        let (b, _, rb) = node(&mgr);
        a.lock(R, Mode::EX, LVB, None).unwrap().unwrap();
        // B waits; A is told B wants PR.
        assert_eq!(b.lock(R, Mode::PR, LVB, None).unwrap(), None);
        assert_eq!(next(&ra), Seen::Blocking(R, Mode::PR));
        quiet(&rb);
        // A demotes to NL writing the LVB; B gets it.
        let lvb = [7u8; LVB_SIZE];
        let g = a
            .lock(R, Mode::NL, LockFlags::default(), Some(&lvb))
            .unwrap()
            .unwrap();
        assert_eq!(g.mode, Some(Mode::NL));
        match next(&rb) {
            Seen::Granted(g) => {
                assert_eq!(g.status, GrantStatus::Granted);
                assert_eq!(g.mode, Some(Mode::PR));
                assert_eq!(g.lvb, Some(lvb));
            }
            other => panic!("{other:?}"),
        }
        // A upconverts to EX: blocked by B's PR; B gets a callback.
        assert_eq!(a.lock(R, Mode::EX, LVB, None).unwrap(), None);
        assert_eq!(next(&rb), Seen::Blocking(R, Mode::EX));
        b.unlock(R, None).unwrap();
        match next(&ra) {
            Seen::Granted(g) => assert_eq!((g.mode, g.lvb), (Some(Mode::EX), Some(lvb))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_conversion_granted_ahead_of_a_waiter_is_called_back() {
        let mgr = MemLockManager::new();
        let (a, _, ra) = node(&mgr);
        let (b, _, rb) = node(&mgr);
        let (c, _, rc) = node(&mgr);
        a.lock(R, Mode::NL, LockFlags::default(), None).unwrap();
        c.lock(R, Mode::PR, LockFlags::default(), None).unwrap();
        // B waits for C's PR.
        assert_eq!(
            b.lock(R, Mode::EX, LockFlags::default(), None).unwrap(),
            None
        );
        assert_eq!(next(&rc), Seen::Blocking(R, Mode::EX));
        // A converts NL to PR: compatible with C, granted at once, ahead of
        // B; A now blocks B too and must hear of it, or B waits for ever.
        let g = a.lock(R, Mode::PR, LockFlags::default(), None).unwrap();
        assert_eq!(g.map(|g| g.mode), Some(Some(Mode::PR)));
        assert_eq!(next(&ra), Seen::Blocking(R, Mode::EX));
        c.unlock(R, None).unwrap();
        quiet(&rb);
        a.lock(R, Mode::NL, LockFlags::default(), None).unwrap();
        assert_eq!(granted(&rb).mode, Some(Mode::EX));
    }

    #[test]
    fn a_holder_granted_anew_is_called_back_again() {
        let mgr = MemLockManager::new();
        let (a, _, ra) = node(&mgr);
        let (b, _, rb) = node(&mgr);
        let (c, _, rc) = node(&mgr);
        let none = LockFlags::default();
        a.lock(R, Mode::NL, none, None).unwrap();
        b.lock(R, Mode::PR, none, None).unwrap();
        c.lock(R, Mode::PR, none, None).unwrap();
        // A waits for B and C, who are told.
        assert_eq!(a.lock(R, Mode::EX, none, None).unwrap(), None);
        assert_eq!(next(&rb), Seen::Blocking(R, Mode::EX));
        assert_eq!(next(&rc), Seen::Blocking(R, Mode::EX));
        // C, before acting on it, converts to EX itself (queued behind A);
        // B lets go, and C's conversion is granted ahead of A's, which
        // cannot be granted while C holds PR. The callback C had was
        // about its PR: it must be told again that A waits, or A waits for
        // ever.
        assert_eq!(c.lock(R, Mode::EX, none, None).unwrap(), None);
        b.lock(R, Mode::NL, none, None).unwrap();
        assert_eq!(granted(&rc).mode, Some(Mode::EX));
        assert_eq!(next(&rc), Seen::Blocking(R, Mode::EX));
        quiet(&ra);
        c.lock(R, Mode::NL, none, None).unwrap();
        assert_eq!(granted(&ra).mode, Some(Mode::EX));
    }

    #[test]
    fn try_lock_fails_without_queueing_and_cancel_completes() {
        let mgr = MemLockManager::new();
        let (a, _, ra) = node(&mgr);
        let (b, _, rb) = node(&mgr);
        a.lock(R, Mode::EX, LockFlags::default(), None).unwrap();
        let try_flags = LockFlags {
            try_lock: true,
            want_lvb: false,
        };
        let g = b.lock(R, Mode::PR, try_flags, None).unwrap().unwrap();
        assert_eq!(g.status, GrantStatus::WouldBlock);
        assert_eq!(g.mode, None);
        quiet(&ra);
        assert_eq!(
            b.lock(R, Mode::PR, LockFlags::default(), None).unwrap(),
            None
        );
        assert_eq!(next(&ra), Seen::Blocking(R, Mode::PR));
        b.cancel(R).unwrap();
        match next(&rb) {
            Seen::Granted(g) => assert_eq!(g.status, GrantStatus::Cancelled),
            other => panic!("{other:?}"),
        }
        // After the cancel, A can unlock and B's queue is empty.
        a.unlock(R, None).unwrap();
        quiet(&rb);
        assert!(mgr.holders("fs", R).is_empty());
    }

    #[test]
    fn leave_releases_locks() {
        let mgr = MemLockManager::new();
        let (a, _, _ra) = node(&mgr);
        let (b, _, rb) = node(&mgr);
        a.lock(R, Mode::EX, LockFlags::default(), None).unwrap();
        assert_eq!(
            b.lock(R, Mode::EX, LockFlags::default(), None).unwrap(),
            None
        );
        a.leave().unwrap();
        assert_eq!(granted(&rb).mode, Some(Mode::EX));
        assert!(a.lock(R, Mode::PR, LockFlags::default(), None).is_err());
    }

    #[test]
    fn conversion_deadlock_is_broken() {
        let mgr = MemLockManager::new();
        let (a, _, ra) = node(&mgr);
        let (b, _, rb) = node(&mgr);
        a.lock(R, Mode::PR, LockFlags::default(), None).unwrap();
        b.lock(R, Mode::PR, LockFlags::default(), None).unwrap();
        assert_eq!(
            a.lock(R, Mode::EX, LockFlags::default(), None).unwrap(),
            None
        );
        assert_eq!(next(&rb), Seen::Blocking(R, Mode::EX));
        // B's conversion would deadlock: B drops to NL, A gets EX.
        assert_eq!(
            b.lock(R, Mode::EX, LockFlags::default(), None).unwrap(),
            None
        );
        assert_eq!(granted(&ra).mode, Some(Mode::EX));
        assert_eq!(next(&ra), Seen::Blocking(R, Mode::EX));
        a.unlock(R, None).unwrap();
        assert_eq!(granted(&rb).mode, Some(Mode::EX));
    }

    const J1: ResName = ResName::new(crate::lm_type::JOURNAL, 1);

    #[test]
    fn a_dead_nodes_locks_wait_for_its_journal() {
        let mgr = MemLockManager::new();
        let (a, _, ra) = node(&mgr);
        let (b, _, rb) = node(&mgr);
        let (c, _, _rc) = node(&mgr);
        b.lock(J1, Mode::EX, LockFlags::default(), None).unwrap();
        b.lock(R, Mode::EX, LVB, None).unwrap();
        // B changes the LVB while holding EX, converting down to PR.
        b.lock(R, Mode::PR, LVB, Some(&[9; LVB_SIZE])).unwrap();
        b.lock(R, Mode::EX, LVB, None).unwrap();
        let victim = b.node_id();
        assert_eq!(mgr.kill("fs", victim), vec![1]);
        // Gone at once.
        assert!(matches!(
            b.lock(R, Mode::NL, LockFlags::default(), None),
            Err(LockError::Left)
        ));
        // Nothing more reaches it: its callback thread is gone.
        assert!(rb.recv_timeout(Duration::from_millis(100)).is_err());
        // Survivors are told, and may take the journal lock at once.
        assert_eq!(next(&ra), Seen::Recover(vec![1]));
        let g = a
            .lock(
                J1,
                Mode::EX,
                LockFlags {
                    try_lock: true,
                    want_lvb: false,
                },
                None,
            )
            .unwrap()
            .unwrap();
        assert_eq!(g.status, GrantStatus::Granted);
        // Its other lock is an orphan: a try fails, a request waits.
        let g = c
            .lock(
                R,
                Mode::PR,
                LockFlags {
                    try_lock: true,
                    want_lvb: true,
                },
                None,
            )
            .unwrap()
            .unwrap();
        assert_eq!(g.status, GrantStatus::WouldBlock);
        assert_eq!(a.lock(R, Mode::PR, LVB, None).unwrap(), None);
        quiet(&ra);
        assert_eq!(mgr.orphans("fs"), 1);
        // Recovery of another journal changes nothing; of its own, frees it.
        c.recovery_done(5).unwrap();
        quiet(&ra);
        a.recovery_done(1).unwrap();
        match next(&ra) {
            Seen::Granted(g) => {
                assert_eq!(g.mode, Some(Mode::PR));
                // The dead node's LVB is not trusted.
                assert_eq!(g.lvb, Some([0; LVB_SIZE]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(mgr.orphans("fs"), 0);
        // Dropping the dead node's handle frees nothing more.
        drop(b);
        assert_eq!(mgr.holders("fs", R).len(), 1);
    }

    #[test]
    fn a_node_without_journal_frees_its_locks_at_death() {
        let mgr = MemLockManager::new();
        let (a, _, ra) = node(&mgr);
        let (b, _, _rb) = node(&mgr);
        b.lock(R, Mode::EX, LockFlags::default(), None).unwrap();
        assert_eq!(
            a.lock(R, Mode::EX, LockFlags::default(), None).unwrap(),
            None
        );
        assert!(mgr.kill("fs", b.node_id()).is_empty());
        assert!(matches!(next(&ra), Seen::Granted(_)));
    }

    #[test]
    fn new_requests_are_fifo() {
        let mgr = MemLockManager::new();
        let (a, _, _ra) = node(&mgr);
        let (b, _, rb) = node(&mgr);
        let (c, _, rc) = node(&mgr);
        a.lock(R, Mode::PR, LockFlags::default(), None).unwrap();
        assert_eq!(
            b.lock(R, Mode::EX, LockFlags::default(), None).unwrap(),
            None
        );
        // C's PR is compatible with A's but must queue behind B's EX.
        assert_eq!(
            c.lock(R, Mode::PR, LockFlags::default(), None).unwrap(),
            None
        );
        quiet(&rc);
        a.unlock(R, None).unwrap();
        assert!(matches!(next(&rb), Seen::Granted(_)));
        assert_eq!(next(&rb), Seen::Blocking(R, Mode::PR));
        b.unlock(R, None).unwrap();
        assert!(matches!(next(&rc), Seen::Granted(_)));
    }
}
