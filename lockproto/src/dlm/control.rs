//! Mount and recovery coordination with the other nodes of the lockspace,
//! as the kernel's lock_dlm does it (`control_mount`, `control_first_done`,
//! `gfs2_control_func` in fs/gfs2/lock_dlm.c), so that kernel and FUSE nodes
//! recover each other's journals.
//!
//! Two non-disk locks carry the protocol: the *mounted* lock (number 5),
//! held EX by a first mounter while it recovers every journal and PR by
//! every mounted node afterwards, and the *control* lock (number 4), taken
//! EX briefly to read and update its LVB: a little-endian generation (bytes
//! 0-3: the DLM recovery generation the LVB is up to date with) and a bitmap
//! of journal ids that need recovery (bytes 8-31, bit N of byte N/8 is jid N).
//!
//! The DLM's recovery callbacks that drive it in the kernel come to us from
//! the kernel log ([`super::kmsg`]); the state kept is the kernel's:
//! `start` (generation of the last finished recovery), `block` (equal to
//! `start` while a recovery runs), `mount` (generation at our join), the
//! journal ids submitted for recovery by failed slots and the results of
//! our replays. While a recovery is pending, lock requests other than those
//! recovery itself needs wait (the kernel's `DFL_BLOCK_LOCKS`): nothing a
//! dead node may have changed is read before its journal is replayed.
//!
//! One difference: the kernel tells a failed member from one that left the
//! lockspace cleanly by its connection; the log does not, so we treat every
//! removed member as failed. A clean journal is found clean by its replay,
//! so this costs a look at its head, never data.

use super::kmsg::{Event, Kmsg};
use super::space::Space;
use crate::{
    lm_type, GrantStatus, LockCallbacks, LockError, LockFlags, Lvb, Mode, ResName, LVB_SIZE,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The control lock (`GFS2_CONTROL_LOCK`).
pub const CONTROL: ResName = ResName::new(lm_type::NONDISK, 4);
/// The mounted lock (`GFS2_MOUNTED_LOCK`).
pub const MOUNTED: ResName = ResName::new(lm_type::NONDISK, 5);
/// Offset of the jid bitmap in the control LVB.
const BITMAP: usize = 8;
/// Journal ids the bitmap can name.
const MAX_JIDS: u32 = ((LVB_SIZE - BITMAP) * 8) as u32;
/// How long mount waits for the DLM's first recovery lines.
const JOIN_WAIT: Duration = Duration::from_secs(20);
/// How often a pending journal recovery is looked at again (the kernel
/// retries a journal another node was recovering after a second).
const RETRY: Duration = Duration::from_secs(1);

/// The lock requests recovery itself needs, allowed while others wait
/// (the kernel's `LM_FLAG_NOEXP` users): journals, and the mount, live,
/// freeze, control and mounted locks.
pub fn noexp(res: ResName) -> bool {
    res.lk_type == lm_type::JOURNAL || res.lk_type == lm_type::NONDISK
}

#[derive(Debug, Default)]
struct State {
    start: u32,
    block: u32,
    mount: u32,
    jid: Option<u32>,
    /// The filesystem's journal count, once known.
    journals: Option<u32>,
    in_recovery: bool,
    block_locks: bool,
    mount_done: bool,
    first_mount: bool,
    unmounting: bool,
    /// nodeid -> slot, as of the last slots line.
    slots: HashMap<u32, u32>,
    /// jid -> generation in which its node was found dead.
    submit: BTreeMap<u32, u32>,
    /// jids we replayed (or found clean) since the last look.
    done: BTreeSet<u32>,
    /// When we last asked the node to replay each jid.
    asked: HashMap<u32, Instant>,
    /// The control function should run.
    due: bool,
    /// Jid bits were set at the last run: run again after [`RETRY`].
    retry_at: Option<Instant>,
}

/// The recovery state of one node in one lockspace.
pub struct Control {
    node_id: u32,
    st: Mutex<State>,
    cv: Condvar,
    kmsg: Mutex<Kmsg>,
    /// The kernel log's descriptor, to wait on without holding `kmsg`.
    kmsg_fd: std::os::fd::RawFd,
    space: Arc<Space>,
    callbacks: Arc<dyn LockCallbacks>,
}

fn lvb_gen(lvb: &Lvb) -> u32 {
    u32::from_le_bytes([lvb[0], lvb[1], lvb[2], lvb[3]])
}

fn lvb_bit(lvb: &Lvb, jid: u32) -> bool {
    jid < MAX_JIDS && lvb[BITMAP + jid as usize / 8] & (1 << (jid % 8)) != 0
}

fn set_lvb_bit(lvb: &mut Lvb, jid: u32, on: bool) {
    if jid >= MAX_JIDS {
        return;
    }
    let b = &mut lvb[BITMAP + jid as usize / 8];
    if on {
        *b |= 1 << (jid % 8);
    } else {
        *b &= !(1 << (jid % 8));
    }
}

fn lvb_jids(lvb: &Lvb) -> Vec<u32> {
    (0..MAX_JIDS).filter(|&j| lvb_bit(lvb, j)).collect()
}

impl Control {
    pub fn new(
        node_id: u32,
        kmsg: Kmsg,
        space: Arc<Space>,
        callbacks: Arc<dyn LockCallbacks>,
    ) -> Arc<Self> {
        Arc::new(Control {
            node_id,
            st: Mutex::new(State::default()),
            cv: Condvar::new(),
            kmsg_fd: kmsg.fd(),
            kmsg: Mutex::new(kmsg),
            space,
            callbacks,
        })
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Read the kernel log to its end and apply what it says.
    pub fn poll_log(&self) {
        let events = self.kmsg.lock().unwrap_or_else(|e| e.into_inner()).drain();
        if events.is_empty() {
            return;
        }
        let mut st = self.st();
        for ev in events {
            self.apply(&mut st, ev);
        }
        drop(st);
        self.cv.notify_all();
    }

    fn apply(&self, st: &mut State, ev: Event) {
        match ev {
            Event::RecoverStart => {
                // recover_prep
                st.block = st.start;
                st.in_recovery = true;
                if st.mount_done && !st.first_mount {
                    st.block_locks = true;
                }
            }
            Event::RemoveMember(node) => {
                // recover_slot (see the module doc: every removal counts).
                if let Some(slot) = st.slots.remove(&node) {
                    let ours = st.jid == slot.checked_sub(1);
                    let exists = st.journals.is_none_or(|n| slot <= n);
                    if slot >= 1 && !ours && exists {
                        let jid = slot - 1;
                        tracing::info!(node, jid, gen = st.block, "lockspace member removed");
                        st.submit.insert(jid, st.block);
                    }
                }
            }
            Event::Slots { gen: _, slots } => {
                st.slots = slots.iter().map(|&(s, n)| (n, s)).collect();
                if st.jid.is_none() {
                    if let Some(&(s, _)) = slots.iter().find(|&&(_, n)| n == self.node_id) {
                        st.jid = s.checked_sub(1);
                    }
                }
            }
            Event::RecoverDone { gen } => {
                // recover_done
                st.start = gen;
                if st.mount == 0 {
                    st.mount = gen;
                }
                st.in_recovery = false;
                if !st.unmounting {
                    st.due = true;
                }
            }
        }
    }

    /// Whether lock requests other than recovery's must wait now (the
    /// kernel log is read first, so a failure logged before a grant is
    /// never missed).
    pub fn blocked(&self) -> bool {
        self.poll_log();
        self.st().block_locks
    }

    /// Wait until lock requests may go on.
    pub fn wait_unblocked(&self) {
        let mut st = self.st();
        while st.block_locks && !st.unmounting {
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The journal id the DLM's slot gives us.
    pub fn jid(&self) -> Option<u32> {
        self.st().jid
    }

    /// Wait for the DLM's account of our join (the slots and the end of the
    /// recovery that added us): its lines are logged before the lockspace
    /// creation returns, unless the kernel does not log them.
    pub fn wait_joined(&self) -> Result<u32, LockError> {
        let until = Instant::now() + JOIN_WAIT;
        loop {
            self.poll_log();
            {
                let st = self.st();
                if let (Some(j), true) = (st.jid, st.mount != 0) {
                    return Ok(j);
                }
            }
            if Instant::now() > until {
                return Err(LockError::Manager(format!(
                    "the DLM logged no slot for node {} within {JOIN_WAIT:?}: is the kernel's \
                     DLM logging off (configfs cluster/log_info must be 1)?",
                    self.node_id
                )));
            }
            super::kmsg::wait(self.kmsg_fd, 200);
        }
    }

    fn sync(
        &self,
        res: ResName,
        mode: Mode,
        try_lock: bool,
        lvb: Option<&Lvb>,
    ) -> Result<(GrantStatus, Option<Lvb>), LockError> {
        let flags = LockFlags {
            try_lock,
            want_lvb: res == CONTROL,
        };
        let g = self
            .space
            .request(res, mode, flags, lvb, true)?
            .ok_or_else(|| LockError::Manager(format!("{res}: no answer")))?;
        Ok((g.status, g.lvb))
    }

    /// `control_mount`: whether we are the first mounter. On return the
    /// first mounter holds both locks EX (until [`Control::first_done`]);
    /// any other node has waited until every journal that needed recovery
    /// was recovered and the LVB is up to date with our join.
    pub fn mount(&self) -> Result<bool, LockError> {
        self.st().block_locks = true;
        self.sync(CONTROL, Mode::NL, false, None)?;
        self.sync(MOUNTED, Mode::NL, false, None)?;
        let mut mounted = Mode::NL;
        let mut waits = 0u32;
        loop {
            if mounted != Mode::NL {
                self.sync(MOUNTED, Mode::NL, false, None)?;
                mounted = Mode::NL;
            }
            // Others update the LVB for our join in their recovery work.
            std::thread::sleep(Duration::from_millis(500));
            self.poll_log();
            waits += 1;
            if waits.is_multiple_of(20) {
                tracing::info!(waits, "mount waits for the other nodes' recovery");
            }
            let (st, lvb) = self.sync(CONTROL, Mode::EX, true, None)?;
            if st != GrantStatus::Granted {
                continue;
            }
            let lvb = lvb.unwrap_or([0; LVB_SIZE]);
            let (st, _) = self.sync(MOUNTED, Mode::EX, true, None)?;
            if st == GrantStatus::Granted {
                mounted = Mode::EX;
            } else {
                let (st, _) = self.sync(MOUNTED, Mode::PR, true, None)?;
                if st != GrantStatus::Granted {
                    return Err(LockError::Manager("mounted lock: PR refused".into()));
                }
                mounted = Mode::PR;
            }
            let gen = lvb_gen(&lvb);
            if gen == u32::MAX {
                return Err(LockError::Manager(
                    "the control lock's LVB forbids mounting (generation 0xffffffff)".into(),
                ));
            }
            if mounted == Mode::EX {
                let mut s = self.st();
                s.block_locks = false;
                s.mount_done = true;
                s.first_mount = true;
                tracing::info!(gen, "first mounter");
                return Ok(true);
            }
            self.release_control(None)?;
            if !lvb_jids(&lvb).is_empty() {
                tracing::info!(jids = ?lvb_jids(&lvb), "mount waits for journal recovery");
                continue;
            }
            let mut s = self.st();
            if gen < s.mount || gen != s.start || s.block == s.start || s.in_recovery {
                tracing::debug!(
                    gen,
                    mount = s.mount,
                    start = s.start,
                    block = s.block,
                    "mount waits for the LVB"
                );
                continue;
            }
            s.block_locks = false;
            s.mount_done = true;
            s.submit.clear();
            s.done.clear();
            return Ok(false);
        }
    }

    /// `control_first_done`: the first mounter recovered every journal; let
    /// the others mount.
    pub fn first_done(&self) -> Result<(), LockError> {
        let start = loop {
            self.poll_log();
            let st = self.st();
            if !st.in_recovery && st.block != st.start {
                break st.start;
            }
            drop(st);
            std::thread::sleep(Duration::from_millis(100));
        };
        {
            let mut st = self.st();
            st.first_mount = false;
            st.submit.clear();
            st.done.clear();
        }
        let mut lvb = [0u8; LVB_SIZE];
        lvb[..4].copy_from_slice(&start.to_le_bytes());
        self.sync(MOUNTED, Mode::PR, false, None)?;
        self.release_control(Some(&lvb))
    }

    /// Convert the control lock from EX down to NL, writing `lvb` to the
    /// resource (or, with `None`, the LVB as read: unchanged).
    fn release_control(&self, lvb: Option<&Lvb>) -> Result<(), LockError> {
        self.sync(CONTROL, Mode::NL, false, lvb).map(|_| ())
    }

    /// The filesystem's journal count.
    pub fn set_journals(&self, n: u32) {
        let mut st = self.st();
        st.journals = Some(n);
        st.submit.retain(|j, _| *j < n);
    }

    /// A replay of `jid` finished (or found it clean).
    pub fn recovery_done(&self, jid: u32) {
        let mut st = self.st();
        st.done.insert(jid);
        st.asked.remove(&jid);
        st.due = true;
        drop(st);
        self.cv.notify_all();
    }

    /// `gfs2_control_func`: fold failures and finished replays into the
    /// control LVB, ask for the replays still needed, and let lock requests
    /// go on when none is.
    fn control(&self) -> Result<(), LockError> {
        let (block, start) = {
            let mut st = self.st();
            st.due = false;
            st.retry_at = None;
            if !st.mount_done || st.first_mount || st.unmounting {
                return Ok(());
            }
            if st.block == st.start || st.in_recovery {
                return Ok(());
            }
            (st.block, st.start)
        };
        let (_, lvb) = self.sync(CONTROL, Mode::EX, false, None)?;
        let mut lvb = lvb.unwrap_or([0; LVB_SIZE]);
        let gen = lvb_gen(&lvb);
        let mut write = false;
        {
            let mut st = self.st();
            if st.block != block || st.start != start {
                drop(st);
                self.release_control(None)?;
                return Ok(());
            }
            if gen <= start {
                let done: Vec<u32> = std::mem::take(&mut st.done).into_iter().collect();
                for j in done {
                    if lvb_bit(&lvb, j) {
                        set_lvb_bit(&mut lvb, j, false);
                        write = true;
                    }
                }
            }
            if gen == start {
                st.submit.retain(|_, g| *g >= gen);
            } else if gen < start {
                let failed: Vec<u32> = st
                    .submit
                    .iter()
                    .filter(|(_, g)| **g < start)
                    .map(|(j, _)| *j)
                    .collect();
                for j in failed {
                    st.submit.remove(&j);
                    set_lvb_bit(&mut lvb, j, true);
                }
                write = true;
            }
        }
        if write {
            lvb[..4].copy_from_slice(&start.to_le_bytes());
            self.release_control(Some(&lvb))?;
        } else {
            self.release_control(None)?;
        }
        let jids = lvb_jids(&lvb);
        if !jids.is_empty() {
            let ask: Vec<u32> = {
                let mut st = self.st();
                st.retry_at = Some(Instant::now() + RETRY);
                let now = Instant::now();
                let ask: Vec<u32> = jids
                    .iter()
                    .copied()
                    .filter(|j| {
                        st.asked
                            .get(j)
                            .is_none_or(|t| now.duration_since(*t) > Duration::from_secs(5))
                    })
                    .collect();
                for j in &ask {
                    st.asked.insert(*j, now);
                }
                ask
            };
            if !ask.is_empty() {
                tracing::info!(gen = start, jids = ?ask, "journals to recover");
                self.callbacks.recover(&ask);
            }
            return Ok(());
        }
        let mut st = self.st();
        if st.block == block && st.start == start && st.block_locks {
            st.block_locks = false;
            tracing::info!(gen = start, "recovery done: lock requests go on");
            drop(st);
            self.cv.notify_all();
            self.space.thaw();
        }
        Ok(())
    }

    /// The recovery thread: follows the kernel log and runs the control
    /// work when due, until [`Control::stop`].
    pub fn run(self: &Arc<Self>) {
        loop {
            super::kmsg::wait(self.kmsg_fd, 200);
            self.poll_log();
            let run = {
                let st = self.st();
                if st.unmounting {
                    return;
                }
                st.due || st.retry_at.is_some_and(|t| Instant::now() >= t)
            };
            if run {
                if let Err(e) = self.control() {
                    tracing::error!("recovery control: {e}");
                    let mut st = self.st();
                    st.retry_at = Some(Instant::now() + RETRY);
                }
            }
        }
    }

    /// Stop following recoveries (unmount).
    pub fn stop(&self) {
        self.st().unmounting = true;
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvb_bitmap_is_the_kernels() {
        let mut lvb = [0u8; LVB_SIZE];
        lvb[..4].copy_from_slice(&0x0102_0304u32.to_le_bytes());
        assert_eq!(lvb_gen(&lvb), 0x0102_0304);
        set_lvb_bit(&mut lvb, 0, true);
        set_lvb_bit(&mut lvb, 9, true);
        // test_bit_le: bit N is bit N%8 of byte N/8 after the offset.
        assert_eq!(lvb[8], 1);
        assert_eq!(lvb[9], 2);
        assert_eq!(lvb_jids(&lvb), vec![0, 9]);
        set_lvb_bit(&mut lvb, 0, false);
        assert_eq!(lvb_jids(&lvb), vec![9]);
        set_lvb_bit(&mut lvb, MAX_JIDS, true);
        assert_eq!(lvb_jids(&lvb), vec![9]);
        assert!(noexp(ResName::new(lm_type::JOURNAL, 3)));
        assert!(!noexp(ResName::new(lm_type::INODE, 3)));
    }
}
