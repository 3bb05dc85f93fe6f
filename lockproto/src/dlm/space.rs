//! One joined DLM lockspace, through its misc device `dlm_<name>`.
//!
//! The kernel keeps one DLM lock per resource for us, named by the id its
//! first request returned; every later request on that resource is a
//! conversion of it (`DLM_LKF_CONVERT`), as the kernel's lock_dlm converts a
//! glock's lock. The DLM accepts one request in flight per lock, which the
//! glock layer guarantees (a glock has at most one request out).
//!
//! Completions and blocking callbacks are read by one thread per lockspace
//! and routed by the token we gave the request (see [`super::wire`]). A
//! request the glock layer waits for synchronously (try-locks,
//! down-conversions, unlocks: the DLM answers those without waiting for
//! another node) is answered to the requesting thread; the others go to
//! [`LockCallbacks::granted`], as a remote grant does.
//!
//! Conversions ask for `DLM_LKF_CONVDEADLK`: when two nodes holding PR both
//! want EX, the DLM demotes one of them to NL instead of failing its
//! conversion, which is what the glock layer expects of every lock module
//! (a conversion that waits may lose its old mode).

use super::wire::{self, lkf, sbf, Event, LockRequest};
use crate::{
    Grant, GrantStatus, LockCallbacks, LockError, LockFlags, Lvb, Mode, ResName, LVB_SIZE,
};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};

/// Holds lock requests back while a dead node's journal is not replayed
/// (see [`super::control`]).
pub trait Gate: Send + Sync {
    /// Whether requests other than recovery's must wait now.
    fn blocked(&self) -> bool;
    /// Wait until they may go on.
    fn wait_unblocked(&self);
}

/// A request of ours the DLM has not answered yet.
#[derive(Debug)]
struct Pending {
    /// The mode asked for (unlock: NL).
    mode: Mode,
    unlock: bool,
    /// The requesting thread waits for the answer (else it goes to the
    /// callbacks).
    sync: bool,
    /// The answer, for a synchronous request.
    done: Option<Grant>,
}

/// Our lock on one resource.
#[derive(Debug)]
struct LockState {
    token: u64,
    /// The DLM's lock id; 0 until the first request returned it.
    lkid: u32,
    /// The granted mode; `None` before the first grant.
    mode: Option<Mode>,
    want_lvb: bool,
    /// The LVB as of the last grant (what a conversion carries unless it
    /// writes a new one: the kernel copies the request's LVB into the lock
    /// on every conversion with `VALBLK`).
    lvb: Lvb,
    pending: Option<Pending>,
}

#[derive(Default)]
struct Locks {
    by_res: HashMap<ResName, LockState>,
    by_token: HashMap<u64, ResName>,
    next_token: u64,
    /// The lockspace was left, or its device failed.
    closed: Option<String>,
}

/// A lockspace device with its lock table.
pub struct Space {
    name: String,
    /// The lockspace device; closed (`None`) when leaving: the DLM removes a
    /// lockspace only once no descriptor of its device is open.
    dev: std::sync::RwLock<Option<File>>,
    /// Wakes the reader thread out of `poll` when leaving.
    stop: OwnedFd,
    locks: Mutex<Locks>,
    cv: Condvar,
    callbacks: Arc<dyn LockCallbacks>,
    gate: OnceLock<Weak<dyn Gate>>,
    /// Grants that came while requests were held back, delivered on thaw
    /// (the kernel's frozen glocks).
    frozen: Mutex<Vec<Grant>>,
}

fn errno_err(what: &str, e: std::io::Error) -> LockError {
    LockError::Manager(format!("{what}: {e}"))
}

impl Space {
    /// A lockspace over its opened device; [`Space::run_reader`] must then
    /// run on a thread of its own.
    pub fn new(
        name: &str,
        dev: File,
        callbacks: Arc<dyn LockCallbacks>,
    ) -> Result<Arc<Self>, LockError> {
        // SAFETY: eventfd with valid flags; the returned descriptor is owned.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(errno_err("eventfd", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Arc::new(Space {
            name: name.to_string(),
            dev: std::sync::RwLock::new(Some(dev)),
            stop,
            locks: Mutex::new(Locks {
                next_token: 1,
                ..Default::default()
            }),
            cv: Condvar::new(),
            callbacks,
            gate: OnceLock::new(),
            frozen: Mutex::new(Vec::new()),
        }))
    }

    /// Hold requests back through `gate` from now on.
    pub fn set_gate(&self, gate: Weak<dyn Gate>) {
        let _ = self.gate.set(gate);
    }

    fn gate(&self) -> Option<Arc<dyn Gate>> {
        self.gate.get().and_then(Weak::upgrade)
    }

    /// Whether a request for `mode` on `res` from `held` is held back
    /// during recovery: promotions of anything but recovery's own locks.
    fn gated(res: ResName, mode: Mode, held: Option<Mode>) -> bool {
        !super::control::noexp(res) && mode > Mode::NL && held.is_none_or(|h| mode > h)
    }

    /// Recovery is over: deliver the grants held back meanwhile.
    pub fn thaw(&self) {
        let grants = std::mem::take(&mut *self.frozen.lock().unwrap_or_else(|e| e.into_inner()));
        for g in grants {
            tracing::debug!(res = %g.res, "grant thawed");
            self.callbacks.granted(g);
        }
    }

    fn locks(&self) -> MutexGuard<'_, Locks> {
        self.locks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, bytes: &[u8]) -> std::io::Result<usize> {
        let dev = self.dev.read().unwrap_or_else(|e| e.into_inner());
        match dev.as_ref() {
            Some(mut f) => f.write(bytes),
            None => Err(std::io::Error::from_raw_os_error(libc::EBADF)),
        }
    }

    /// Close the device (after [`Space::close`] and once the reader has
    /// stopped).
    pub fn close_device(&self) {
        self.dev.write().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Request `mode` on `res` (a new lock or a conversion). With `sync` the
    /// answer is waited for and returned; else `None` and it comes through
    /// the callbacks.
    pub fn request(
        &self,
        res: ResName,
        mode: Mode,
        flags: LockFlags,
        lvb_out: Option<&Lvb>,
        sync: bool,
    ) -> Result<Option<Grant>, LockError> {
        let name = crate::resource_name(res);
        let held = self.locks().by_res.get(&res).and_then(|s| s.mode);
        let gated = Self::gated(res, mode, held);
        if gated {
            if let Some(g) = self.gate() {
                if g.blocked() {
                    tracing::debug!(%res, ?mode, "request held back until recovery is done");
                    g.wait_unblocked();
                }
            }
        }
        let mut l = self.locks();
        if let Some(why) = &l.closed {
            return Err(LockError::Manager(why.clone()));
        }
        let token = match l.by_res.get(&res) {
            Some(s) => s.token,
            None => {
                let t = l.next_token;
                l.next_token += 1;
                l.by_token.insert(t, res);
                l.by_res.insert(
                    res,
                    LockState {
                        token: t,
                        lkid: 0,
                        mode: None,
                        want_lvb: flags.want_lvb,
                        lvb: [0; LVB_SIZE],
                        pending: None,
                    },
                );
                t
            }
        };
        let s = l.by_res.get_mut(&res).ok_or(LockError::Left)?;
        if s.pending.is_some() {
            return Err(LockError::BadRequest {
                res,
                why: "a request for this lock is already pending",
            });
        }
        s.want_lvb |= flags.want_lvb;
        if let Some(v) = lvb_out {
            s.lvb = *v;
        }
        let convert = s.lkid != 0;
        let mut f = lkf::PERSISTENT;
        if flags.try_lock {
            f |= lkf::NOQUEUE;
            // A try that fails calls nobody back (the kernel's
            // LM_FLAG_TRY), except on an iopen lock, which the kernel asks
            // for with LM_FLAG_TRY_1CB: its holders are called back once,
            // and a kernel node then evicts the inode and deletes it if it
            // was the last user. Without that callback an inode unlinked
            // here while a kernel node merely cached it would stay
            // unlinked, its blocks lost until fsck.
            if res.lk_type == crate::lm_type::IOPEN {
                f |= lkf::NOQUEUEBAST;
            }
        }
        if s.want_lvb {
            f |= lkf::VALBLK;
        }
        if convert {
            f |= lkf::CONVERT;
            // The DLM refuses CONVDEADLK with NOQUEUE (a try cannot
            // deadlock: it does not wait).
            if s.mode.is_some_and(|m| mode > m) && !flags.try_lock {
                f |= lkf::CONVDEADLK;
            }
        }
        let lvb = s.lvb;
        let lkid = s.lkid;
        let want_lvb = s.want_lvb;
        s.pending = Some(Pending {
            mode,
            unlock: false,
            sync,
            done: None,
        });
        drop(l);
        let req = LockRequest {
            mode,
            flags: f,
            lkid,
            token,
            lvb: want_lvb.then_some(&lvb),
            name: &name,
        };
        tracing::trace!(ls = %self.name, %res, ?mode, flags = format_args!("{f:#x}"), lkid, "dlm request");
        match self.send(&wire::lock(&req)) {
            Ok(n) => {
                if !convert {
                    // A new lock's write returns its id (its completion may
                    // have told us already).
                    let mut l = self.locks();
                    if let Some(s) = l.by_res.get_mut(&res) {
                        if s.lkid == 0 {
                            s.lkid = n as u32;
                        }
                    }
                }
            }
            Err(e) => {
                let mut l = self.locks();
                if let Some(s) = l.by_res.get_mut(&res) {
                    s.pending = None;
                    if s.mode.is_none() && s.lkid == 0 {
                        l.by_res.remove(&res);
                        l.by_token.remove(&token);
                    }
                }
                return Err(errno_err(&format!("dlm lock {res}"), e));
            }
        }
        if !sync {
            return Ok(None);
        }
        let g = self.wait_done(res)?;
        if gated && g.status == GrantStatus::Granted {
            if let Some(gate) = self.gate() {
                if gate.blocked() {
                    gate.wait_unblocked();
                }
            }
        }
        Ok(Some(g))
    }

    /// Wait for the answer to this resource's synchronous request.
    fn wait_done(&self, res: ResName) -> Result<Grant, LockError> {
        let mut l = self.locks();
        loop {
            if let Some(why) = &l.closed {
                return Err(LockError::Manager(why.clone()));
            }
            match l.by_res.get_mut(&res) {
                None => {
                    // An unlock completed and removed the lock.
                    return Ok(Grant {
                        res,
                        status: GrantStatus::Granted,
                        mode: None,
                        lvb: None,
                    });
                }
                Some(s) => {
                    if let Some(g) = s.pending.as_mut().and_then(|p| p.done.take()) {
                        s.pending = None;
                        if s.mode.is_none() {
                            // Never granted: the DLM has forgotten it.
                            let t = s.token;
                            l.by_res.remove(&res);
                            l.by_token.remove(&t);
                        }
                        return Ok(g);
                    }
                }
            }
            l = self.cv.wait(l).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Unlock `res`, writing `lvb_out` to the resource (from PW or EX), and
    /// wait for it.
    pub fn unlock(&self, res: ResName, lvb_out: Option<&Lvb>) -> Result<(), LockError> {
        let mut l = self.locks();
        let Some(s) = l.by_res.get_mut(&res) else {
            return Ok(());
        };
        if s.pending.is_some() {
            return Err(LockError::BadRequest {
                res,
                why: "unlock while a request is pending",
            });
        }
        let mut f = 0;
        if let Some(v) = lvb_out {
            if s.want_lvb {
                s.lvb = *v;
                f |= lkf::VALBLK;
            }
        }
        let req_lvb = s.lvb;
        let want_lvb = s.want_lvb;
        let (lkid, token) = (s.lkid, s.token);
        s.pending = Some(Pending {
            mode: Mode::NL,
            unlock: true,
            sync: true,
            done: None,
        });
        drop(l);
        let name = crate::resource_name(res);
        tracing::trace!(ls = %self.name, %res, lkid, "dlm unlock");
        let req = LockRequest {
            mode: Mode::NL,
            flags: f,
            lkid,
            token,
            // The kernel copies these bytes into the lock's LVB whatever
            // the flags: they must be the current ones, never zeros.
            lvb: want_lvb.then_some(&req_lvb),
            name: &name,
        };
        if let Err(e) = self.send(&wire::unlock(&req)) {
            let mut l = self.locks();
            if let Some(s) = l.by_res.get_mut(&res) {
                s.pending = None;
            }
            return Err(errno_err(&format!("dlm unlock {res}"), e));
        }
        self.wait_done(res).map(|_| ())
    }

    /// Cancel the waiting request on `res`; it completes as cancelled.
    pub fn cancel(&self, res: ResName) -> Result<(), LockError> {
        let l = self.locks();
        let Some(s) = l.by_res.get(&res) else {
            return Ok(());
        };
        if s.pending.is_none() || s.lkid == 0 {
            return Ok(());
        }
        let (lkid, token) = (s.lkid, s.token);
        drop(l);
        let name = crate::resource_name(res);
        let req = LockRequest {
            mode: Mode::NL,
            flags: lkf::CANCEL,
            lkid,
            token,
            lvb: None,
            name: &name,
        };
        match self.send(&wire::unlock(&req)) {
            Ok(_) => Ok(()),
            // Granted meanwhile: nothing left to cancel.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            Err(e) => Err(errno_err(&format!("dlm cancel {res}"), e)),
        }
    }

    /// The mode granted on `res`.
    pub fn mode_of(&self, res: ResName) -> Option<Mode> {
        self.locks().by_res.get(&res).and_then(|s| s.mode)
    }

    /// The resources we hold a lock on, with their modes.
    pub fn held(&self) -> Vec<(ResName, Option<Mode>)> {
        self.locks()
            .by_res
            .iter()
            .map(|(r, s)| (*r, s.mode))
            .collect()
    }

    /// Stop the reader and fail every waiter (leaving, or the device broke).
    pub fn close(&self, why: &str) {
        let mut l = self.locks();
        l.closed.get_or_insert_with(|| why.to_string());
        drop(l);
        self.cv.notify_all();
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Read completions and blocking callbacks until [`Space::close`].
    pub fn run_reader(self: &Arc<Self>) {
        let mut buf = [0u8; 512];
        let Some(fd) = self
            .dev
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|f| f.as_raw_fd())
        else {
            return;
        };
        loop {
            let mut fds = [
                libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: polls two descriptors we own, array length 2.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(ls = %self.name, "polling the lockspace device: {e}");
                self.close(&format!("lockspace device: {e}"));
                return;
            }
            if fds[1].revents != 0 || self.locks().closed.is_some() {
                return;
            }
            if fds[0].revents == 0 {
                continue;
            }
            let read = {
                let dev = self.dev.read().unwrap_or_else(|e| e.into_inner());
                match dev.as_ref() {
                    Some(mut f) => f.read(&mut buf),
                    None => return,
                }
            };
            let n = match read {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    tracing::error!(ls = %self.name, "reading the lockspace device: {e}");
                    self.close(&format!("lockspace device: {e}"));
                    return;
                }
            };
            match wire::parse_result(&buf[..n]) {
                Ok(ev) => self.event(ev),
                Err(e) => tracing::error!(ls = %self.name, "lockspace device result: {e}"),
            }
        }
    }

    fn event(&self, ev: Event) {
        match ev {
            Event::Blocking { token, mode } => {
                let res = self.locks().by_token.get(&token).copied();
                match res {
                    Some(res) => {
                        tracing::trace!(ls = %self.name, %res, ?mode, "dlm blocking callback");
                        self.callbacks.blocking(res, mode);
                    }
                    None => tracing::debug!(token, "blocking callback for a lock we gave up"),
                }
            }
            Event::Completion {
                token,
                status,
                lkid,
                flags,
                lvb,
            } => {
                let mut l = self.locks();
                let Some(res) = l.by_token.get(&token).copied() else {
                    tracing::debug!(token, status, "completion for a lock we gave up");
                    return;
                };
                let Some(s) = l.by_res.get_mut(&res) else {
                    return;
                };
                let Some(mut p) = s.pending.take() else {
                    tracing::warn!(%res, status, "completion without a request");
                    return;
                };
                if s.lkid == 0 {
                    s.lkid = lkid;
                }
                tracing::trace!(ls = %self.name, %res, status, flags, mode = ?p.mode, "dlm completion");
                let status_of = match status {
                    0 => {
                        s.mode = Some(p.mode);
                        if let Some(v) = lvb {
                            s.lvb = v;
                        }
                        // The kernel's lock_dlm zeroes an LVB whose last
                        // writer died before writing it back.
                        if flags & sbf::VALNOTVALID != 0 {
                            s.lvb = [0; LVB_SIZE];
                        }
                        Some(GrantStatus::Granted)
                    }
                    s if s == -wire::EUNLOCK => None,
                    s if s == -wire::ECANCEL => Some(GrantStatus::Cancelled),
                    s if s == -libc::EAGAIN || s == -libc::EDEADLK => Some(GrantStatus::WouldBlock),
                    other => {
                        tracing::error!(%res, status = other, "dlm request failed");
                        Some(GrantStatus::WouldBlock)
                    }
                };
                if flags & sbf::DEMOTED != 0 && status != 0 {
                    s.mode = Some(Mode::NL);
                }
                let grant = match status_of {
                    None => {
                        // Unlocked: the lock is gone.
                        let sync = p.sync;
                        l.by_res.remove(&res);
                        l.by_token.remove(&token);
                        drop(l);
                        if sync {
                            self.cv.notify_all();
                        }
                        return;
                    }
                    Some(st) => Grant {
                        res,
                        status: st,
                        mode: s.mode,
                        lvb: (st == GrantStatus::Granted && s.want_lvb).then_some(s.lvb),
                    },
                };
                if s.mode.is_none() && grant.status != GrantStatus::Granted {
                    // A new lock that was not granted does not exist.
                    if !p.sync {
                        l.by_res.remove(&res);
                        l.by_token.remove(&token);
                    } else {
                        p.done = Some(grant);
                        s.pending = Some(p);
                        // Removed once the waiter took its answer.
                        s.lkid = 0;
                        drop(l);
                        self.cv.notify_all();
                        return;
                    }
                    drop(l);
                    self.callbacks.granted(grant);
                    return;
                }
                debug_assert!(!p.unlock);
                if p.sync {
                    p.done = Some(grant);
                    s.pending = Some(p);
                    drop(l);
                    self.cv.notify_all();
                    return;
                }
                drop(l);
                // A grant during recovery may be a dead node's lock: it is
                // held back until its journal is replayed.
                if grant.status == GrantStatus::Granted && Self::gated(res, p.mode, None) {
                    if let Some(g) = self.gate() {
                        if g.blocked() {
                            tracing::debug!(%res, "grant held back until recovery is done");
                            self.frozen
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(grant);
                            // Recovery may have ended meanwhile.
                            if !g.blocked() {
                                self.thaw();
                            }
                            return;
                        }
                    }
                }
                self.callbacks.granted(grant);
            }
        }
    }
}
