//! One session's connection: the libiscsi context and every request not
//! yet answered (the `Core`, behind a mutex), libiscsi's callbacks, and the
//! I/O thread that logs in (and in again), reads answers and enforces the
//! deadlines (see the parent module's doc).

use super::*;

/// A completion reported by a libiscsi callback.
struct Done {
    id: u64,
    status: c_int,
    sense_key: c_int,
    ascq: c_int,
    residual: usize,
    underflow: bool,
}

thread_local! {
    /// Completions of the current `iscsi_service` (or destroy) call.
    static DONE: std::cell::RefCell<Vec<Done>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Result of the pending login (`iscsi_full_connect_async`).
    static LOGIN: std::cell::Cell<Option<c_int>> = const { std::cell::Cell::new(None) };
    /// A NOP-In answered our NOP-Out.
    static NOP_IN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn lib_or_abort() -> &'static ffi::Lib {
    // Callbacks only run inside libiscsi calls made after the library loaded.
    match ffi::lib() {
        Ok(l) => l,
        Err(_) => std::process::abort(),
    }
}

unsafe extern "C" fn task_cb(
    _ctx: *mut ffi::Context,
    status: c_int,
    data: *mut c_void,
    private: *mut c_void,
) {
    let task = data.cast::<ffi::ScsiTask>();
    let mut d = Done {
        id: private as u64,
        status,
        sense_key: 0,
        ascq: 0,
        residual: 0,
        underflow: false,
    };
    if !task.is_null() {
        // SAFETY: libiscsi hands us the task of this command; we own it now
        // and free it once its fields are read.
        unsafe {
            d.sense_key = (*task).sense.key;
            d.ascq = (*task).sense.ascq;
            d.underflow = (*task).residual_status == ffi::RESIDUAL_UNDERFLOW;
            d.residual = (*task).residual;
            (lib_or_abort().scsi_free_scsi_task)(task);
        }
    }
    DONE.with(|v| v.borrow_mut().push(d));
}

unsafe extern "C" fn login_cb(
    _ctx: *mut ffi::Context,
    status: c_int,
    _data: *mut c_void,
    _private: *mut c_void,
) {
    LOGIN.with(|l| l.set(Some(status)));
}

unsafe extern "C" fn nop_cb(
    _ctx: *mut ffi::Context,
    status: c_int,
    _data: *mut c_void,
    _private: *mut c_void,
) {
    if status == ffi::SCSI_STATUS_GOOD {
        NOP_IN.with(|n| n.set(true));
    }
}

/// Runs when the I/O thread ends, normally or not: later requests must be
/// refused rather than wait for a thread that is gone.
struct ExitGuard(Arc<Mutex<Core>>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let answers = {
            let mut c = lock(&self.0);
            c.shared.connected.store(false, Ordering::Relaxed);
            c.shared.kick();
            c.closing = true;
            let uri = c.shared.uri.clone();
            let mut answers = std::mem::take(&mut c.answers);
            for (_, r) in std::mem::take(&mut c.reqs) {
                let e = iscsi_err(libc::EIO, format!("{uri}: device closed"));
                answers.push((r.batch, r.idx, Err(e)));
            }
            answers
        };
        deliver(answers);
    }
}

/// Set or clear TCP_CORK (clearing it sends what it held back).
fn cork(fd: c_int, on: bool) {
    let v = c_int::from(on);
    // SAFETY: setsockopt on a socket descriptor with a c_int option value;
    // a failure (not a TCP socket) only costs the merging of segments.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&v as *const c_int).cast(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        );
    }
}

/// Hand answers to their callers (with the core unlocked).
pub(super) fn deliver(answers: Vec<Answer>) {
    for (batch, idx, r) in answers {
        batch.answer(idx, r);
    }
}

unsafe extern "C" fn logout_cb(
    _ctx: *mut ffi::Context,
    _status: c_int,
    _data: *mut c_void,
    private: *mut c_void,
) {
    // SAFETY: `private` points to the flag on the stack of `logout`, which
    // waits for this callback or destroys the context first.
    unsafe { *private.cast::<bool>() = true };
}

pub(super) enum ConnState {
    /// No context; the next login attempt at this time.
    Down {
        next: Instant,
    },
    /// Logging in since this time.
    LoggingIn {
        ctx: *mut ffi::Context,
        since: Instant,
    },
    Up {
        ctx: *mut ffi::Context,
    },
}

/// The session: the libiscsi context and every request not yet answered.
/// It lives behind a mutex: callers lock it to put their commands on the
/// wire, the I/O thread to read answers, log in and watch the deadlines;
/// libiscsi is only ever called with the lock held.
pub(super) struct Core {
    pub(super) lib: &'static ffi::Lib,
    pub(super) shared: Arc<Shared>,
    /// Told the outcome of the first login, then dropped.
    first: Option<mpsc::Sender<io::Result<()>>>,
    pub(super) closing: bool,
    pub(super) state: ConnState,
    /// Bumped whenever the context is destroyed, so that the I/O thread
    /// never services a context that went away while it polled.
    pub(super) generation: u64,
    /// The I/O thread polls for POLLOUT (else a caller that leaves data
    /// unwritten must wake it).
    poll_out: bool,
    /// Answers to deliver once the lock is released.
    pub(super) answers: Vec<Answer>,
    /// Callers waiting for answers.
    pub(super) active: usize,
    /// A caller (the only one waiting) polls the socket and reads the
    /// answers itself; the I/O thread leaves POLLIN to it.
    pub(super) self_servicer: bool,
    pub(super) reqs: BTreeMap<u64, Req>,
    pub(super) next_id: u64,
    backoff: Duration,
    /// Last completion or login: for detecting a silent connection.
    progress: Instant,
    /// SYNCHRONIZE CACHE(16) refused: use (10).
    sync10: bool,
    /// A NOP-Out awaits its NOP-In.
    nop_out: bool,
    initiator: CString,
    pub(super) portal: CString,
    isid: u32,
    /// Per-attempt login limit and silence limit.
    login_limit: Duration,
    stall_limit: Duration,
    last_error: String,
}

fn hostname() -> String {
    let mut b = [0u8; 256];
    // SAFETY: gethostname writes at most b.len() bytes into a local buffer.
    let r = unsafe { libc::gethostname(b.as_mut_ptr().cast(), b.len()) };
    let n = b.iter().position(|&c| c == 0).unwrap_or(0);
    let h: String = String::from_utf8_lossy(&b[..n])
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if r != 0 || h.is_empty() {
        "localhost".into()
    } else {
        h
    }
}

// SAFETY: the raw context pointer inside is only used with the Core's mutex
// held, so by one thread at a time; libiscsi keeps no thread affinity.
unsafe impl Send for Core {}

impl Core {
    pub(super) fn new(
        lib: &'static ffi::Lib,
        shared: Arc<Shared>,
        first: mpsc::Sender<io::Result<()>>,
    ) -> Core {
        let t = shared.cfg.timeout;
        let initiator = CString::new(format!("{INITIATOR_PREFIX}{}", hostname()))
            .unwrap_or_else(|_| c"iqn.2024-01.org.gfs2-fuse:host".into());
        let portal = CString::new(shared.cfg.portal()).unwrap_or_default();
        let isid = {
            let mut x = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
            x ^= std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            x ^= Arc::as_ptr(&shared) as u64;
            (x ^ (x >> 29)) as u32 & 0x00ff_ffff
        };
        let initiator = if shared.cfg.initiator_per_session {
            CString::new(format!("{}.s{isid:06x}", initiator.to_string_lossy()))
                .unwrap_or(initiator)
        } else {
            initiator
        };
        Core {
            lib,
            shared,
            first: Some(first),
            closing: false,
            state: ConnState::Down {
                next: Instant::now(),
            },
            generation: 0,
            poll_out: false,
            answers: Vec::new(),
            active: 0,
            self_servicer: false,
            reqs: BTreeMap::new(),
            next_id: 1,
            backoff: Duration::from_millis(100),
            progress: Instant::now(),
            sync10: false,
            nop_out: false,
            initiator,
            portal,
            isid,
            login_limit: (t / 2).clamp(Duration::from_secs(1), Duration::from_secs(10)),
            stall_limit: (t / 2).clamp(Duration::from_secs(1), Duration::from_secs(15)),
            last_error: String::new(),
        }
    }

    fn ctx_error(&self, ctx: *mut ffi::Context) -> String {
        // SAFETY: ctx is a live context; the string is copied at once.
        unsafe { ffi::text((self.lib.iscsi_get_error)(ctx)) }
    }

    fn set_error(&mut self, e: String) {
        tracing::debug!("{}: {e}", self.shared.uri);
        self.last_error = e.clone();
        *lock(&self.shared.last_error) = e;
    }

    /// Create a context and start logging in.
    fn start_login(&mut self) {
        let cfg = &self.shared.cfg;
        let lib = self.lib;
        // SAFETY: libiscsi calls on a context we create and own; strings are
        // NUL-terminated and live across the calls (libiscsi copies them).
        unsafe {
            let ctx = (lib.iscsi_create_context)(self.initiator.as_ptr());
            if ctx.is_null() {
                self.set_error("cannot create a libiscsi context".into());
                self.schedule_retry();
                return;
            }
            let target = CString::new(cfg.target.clone()).unwrap_or_default();
            (lib.iscsi_set_targetname)(ctx, target.as_ptr());
            (lib.iscsi_set_session_type)(ctx, ffi::SESSION_NORMAL);
            (lib.iscsi_set_header_digest)(ctx, ffi::HEADER_DIGEST_NONE_CRC32C);
            (lib.iscsi_set_noautoreconnect)(ctx, 1);
            (lib.iscsi_set_isid_random)(ctx, self.isid, 0);
            if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
                let u = CString::new(u.clone()).unwrap_or_default();
                let p = CString::new(p.0.clone()).unwrap_or_default();
                (lib.iscsi_set_initiator_username_pwd)(ctx, u.as_ptr(), p.as_ptr());
            }
            if let (Some(u), Some(p)) = (&cfg.target_user, &cfg.target_password) {
                let u = CString::new(u.clone()).unwrap_or_default();
                let p = CString::new(p.0.clone()).unwrap_or_default();
                (lib.iscsi_set_target_username_pwd)(ctx, u.as_ptr(), p.as_ptr());
            }
            LOGIN.with(|l| l.set(None));
            let r = (lib.iscsi_full_connect_async)(
                ctx,
                self.portal.as_ptr(),
                cfg.lun as c_int,
                login_cb,
                std::ptr::null_mut(),
            );
            if r != 0 {
                let e = self.ctx_error(ctx);
                (lib.iscsi_destroy_context)(ctx);
                self.login_failed(format!("login: {e}"));
                return;
            }
            self.state = ConnState::LoggingIn {
                ctx,
                since: Instant::now(),
            };
        }
    }

    fn schedule_retry(&mut self) {
        self.state = ConnState::Down {
            next: Instant::now() + self.backoff,
        };
        self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
    }

    /// libiscsi reports a failed TCP connect only as "Can not reconnect
    /// right now": connect once more ourselves for the system's reason.
    fn tcp_reason(&self) -> Option<String> {
        use std::net::{TcpStream, ToSocketAddrs};
        let cfg = &self.shared.cfg;
        let addrs = match (cfg.host.as_str(), cfg.port).to_socket_addrs() {
            Ok(a) => a,
            Err(e) => return Some(format!("cannot resolve {}: {e}", cfg.host)),
        };
        let mut last = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                Ok(_) => return None,
                Err(e) => last = Some(e),
            }
        }
        last.map(|e| format!("connect to {}: {e}", cfg.portal()))
    }

    fn login_failed(&mut self, mut e: String) {
        if e.contains("reconnect") {
            if let Some(why) = self.tcp_reason() {
                e = why;
            }
        }
        self.set_error(e.clone());
        if let Some(first) = self.first.take() {
            let errno = if e.contains("uthentication") {
                libc::EACCES
            } else if e.contains("refused") {
                libc::ECONNREFUSED
            } else if e.contains("ot found") || e.contains("LOGICAL_UNIT_NOT_SUPPORTED") {
                libc::ENOENT
            } else if e.contains("timed out") {
                libc::ETIMEDOUT
            } else {
                libc::EIO
            };
            let _ = first.send(Err(iscsi_err(errno, format!("{}: {e}", self.shared.uri))));
            self.closing = true;
        }
        self.schedule_retry();
    }

    /// Destroy the context (its commands come back cancelled) and put every
    /// request that was on the wire back in line.
    fn drop_connection(&mut self, why: &str) {
        let ctx = match self.state {
            ConnState::Up { ctx } | ConnState::LoggingIn { ctx, .. } => ctx,
            ConnState::Down { .. } => return,
        };
        let was_up = matches!(self.state, ConnState::Up { .. });
        if was_up {
            tracing::warn!("{}: connection lost: {why}", self.shared.uri);
            self.set_error(why.to_string());
        }
        // SAFETY: ctx is ours; destroying it runs the callbacks of its
        // commands (collected in DONE) and frees everything it holds.
        unsafe { (self.lib.iscsi_destroy_context)(ctx) };
        self.shared.connected.store(false, Ordering::Relaxed);
        DONE.with(|v| v.borrow_mut().clear());
        LOGIN.with(|l| l.set(None));
        NOP_IN.with(|n| n.set(false));
        self.nop_out = false;
        for r in self.reqs.values_mut() {
            if r.in_flight {
                r.in_flight = false;
                r.sent = true;
            }
        }
        // After a lost session, try again at once; a failed login
        // reschedules through `login_failed`.
        if was_up {
            self.backoff = Duration::from_millis(100);
        }
        self.state = ConnState::Down {
            next: Instant::now(),
        };
        self.generation += 1;
        // A caller may have dropped it: the I/O thread logs in again; a
        // caller polling the old socket stops.
        self.shared.wake();
        self.shared.kick();
    }

    fn answer(&mut self, id: u64, r: io::Result<usize>) {
        if let Some(req) = self.reqs.remove(&id) {
            self.answers.push((req.batch, req.idx, r));
        }
    }

    fn fail(&mut self, id: u64, errno: i32, why: String) {
        let Some(req) = self.reqs.get(&id) else {
            return;
        };
        let msg = format!(
            "{}: {} ({} bytes): {why}",
            self.shared.uri,
            req.op.describe(self.sync10),
            req.len
        );
        tracing::debug!("{msg}");
        self.answer(id, Err(iscsi_err(errno, msg)));
    }

    /// Put a command on the wire.
    fn submit(&mut self, ctx: *mut ffi::Context, id: u64) -> bool {
        let lib = self.lib;
        let lun = self.shared.cfg.lun as c_int;
        let Some(r) = self.reqs.get(&id) else {
            return true;
        };
        let (op, buf, len) = (r.op, r.buf as *mut u8, r.len);
        let private = id as usize as *mut c_void;
        let bs = if let Op::Read { blocks, .. } | Op::Write { blocks, .. } = op {
            (len / blocks.max(1) as usize) as c_int
        } else {
            0
        };
        // SAFETY: ctx is logged in; `buf` is valid for `len` bytes until the
        // request is answered, which happens only after the callback ran or
        // the context was destroyed.
        let task = unsafe {
            let t = match op {
                Op::Read { lba, .. } => (lib.iscsi_read16_task)(
                    ctx, lun, lba, len as u32, bs, 0, 0, 0, 0, 0, task_cb, private,
                ),
                Op::Write { lba, .. } => (lib.iscsi_write16_task)(
                    ctx, lun, lba, buf, len as u32, bs, 0, 0, 0, 0, 0, task_cb, private,
                ),
                Op::Sync if self.sync10 => {
                    (lib.iscsi_synchronizecache10_task)(ctx, lun, 0, 0, 0, 0, task_cb, private)
                }
                Op::Sync => {
                    (lib.iscsi_synchronizecache16_task)(ctx, lun, 0, 0, 0, 0, task_cb, private)
                }
                Op::ReadCapacity16 => (lib.iscsi_readcapacity16_task)(ctx, lun, task_cb, private),
                Op::ModeSense6 => (lib.iscsi_modesense6_task)(
                    ctx,
                    lun,
                    1,
                    0,
                    0x3f,
                    0,
                    len.min(255) as u8,
                    task_cb,
                    private,
                ),
                Op::InquiryVpd(page) => (lib.iscsi_inquiry_task)(
                    ctx,
                    lun,
                    1,
                    c_int::from(page),
                    len as c_int,
                    task_cb,
                    private,
                ),
                Op::Cdb { mut cdb, out } => {
                    let dir = if out {
                        ffi::SCSI_XFER_WRITE
                    } else {
                        ffi::SCSI_XFER_READ
                    };
                    let t = (lib.scsi_create_task)(10, cdb.as_mut_ptr(), dir, len as c_int);
                    if t.is_null() {
                        return false;
                    }
                    if !out && len > 0 {
                        (lib.scsi_task_add_data_in_buffer)(t, len as c_int, buf);
                    }
                    let mut data = ffi::IscsiData {
                        size: len,
                        data: buf,
                    };
                    let d: *mut ffi::IscsiData = if out { &mut data } else { std::ptr::null_mut() };
                    if (lib.iscsi_scsi_command_async)(ctx, lun, t, task_cb, d, private) != 0 {
                        (lib.scsi_free_scsi_task)(t);
                        return false;
                    }
                    // Data in is already attached above.
                    return self.sent_out(id);
                }
            };
            if !t.is_null() && !matches!(op, Op::Write { .. } | Op::Sync) && len > 0 {
                // Data in straight into the caller's buffer.
                (lib.scsi_task_add_data_in_buffer)(t, len as c_int, buf);
            }
            t
        };
        if task.is_null() {
            return false;
        }
        self.sent_out(id)
    }

    /// Note that request `id` is on the wire.
    fn sent_out(&mut self, id: u64) -> bool {
        if let Some(r) = self.reqs.get_mut(&id) {
            if r.sent {
                self.shared.resent.fetch_add(1, Ordering::Relaxed);
            }
            r.in_flight = true;
        }
        true
    }

    /// Judge a completion: answer, retry or report a lost connection.
    fn complete(&mut self, d: Done) -> bool {
        let Some(r) = self.reqs.get_mut(&d.id) else {
            return true;
        };
        r.in_flight = false;
        self.progress = Instant::now();
        let sense = |lib: &ffi::Lib| {
            // SAFETY: libiscsi returns static strings for any value.
            let (k, a) = unsafe {
                (
                    ffi::text((lib.scsi_sense_key_str)(d.sense_key)),
                    ffi::text((lib.scsi_sense_ascq_str)(d.ascq)),
                )
            };
            format!(
                "CHECK CONDITION, sense key {k} ({:#x}), ASC/ASCQ {:#06x} {a}",
                d.sense_key, d.ascq
            )
        };
        let soon = Some(Instant::now() + Duration::from_millis(10));
        match d.status {
            ffi::SCSI_STATUS_GOOD => {
                let n = if d.underflow {
                    r.len.saturating_sub(d.residual)
                } else {
                    r.len
                };
                if n < r.len && matches!(r.op, Op::Read { .. }) {
                    let why = format!("short read: {n} of {} bytes", r.len);
                    self.fail(d.id, libc::EIO, why);
                } else {
                    self.answer(d.id, Ok(n));
                }
            }
            ffi::SCSI_STATUS_CHECK_CONDITION => match d.sense_key {
                ffi::SENSE_UNIT_ATTENTION if r.uas < 10 => {
                    r.uas += 1;
                    tracing::debug!(
                        "{}: unit attention {:#06x}, retrying",
                        self.shared.uri,
                        d.ascq
                    );
                }
                // LOGICAL UNIT NOT READY, becoming ready / in progress.
                ffi::SENSE_NOT_READY if d.ascq >> 8 == 0x04 => r.not_before = soon,
                ffi::SENSE_ILLEGAL_REQUEST
                    if r.op == Op::Sync
                        && !self.sync10
                        && d.ascq == ffi::ASCQ_INVALID_OPERATION_CODE =>
                {
                    self.sync10 = true;
                }
                ffi::SENSE_DATA_PROTECTION => {
                    let why = sense(self.lib);
                    self.fail(d.id, libc::EROFS, why);
                }
                // A command or field the target does not implement.
                ffi::SENSE_ILLEGAL_REQUEST if matches!(r.op, Op::Cdb { .. }) => {
                    let why = sense(self.lib);
                    self.fail(d.id, libc::EOPNOTSUPP, why);
                }
                _ => {
                    let why = sense(self.lib);
                    self.fail(d.id, libc::EIO, why);
                }
            },
            ffi::SCSI_STATUS_BUSY
            | ffi::SCSI_STATUS_TASK_SET_FULL
            | ffi::SCSI_STATUS_TASK_ABORTED => {
                r.not_before = soon;
            }
            ffi::SCSI_STATUS_RESERVATION_CONFLICT => {
                // Persistent reservation commands report it as the Linux
                // block layer does (EBADE); data transfers as EIO.
                let errno = if matches!(r.op, Op::Cdb { .. }) {
                    libc::EBADE
                } else {
                    libc::EIO
                };
                self.fail(d.id, errno, "RESERVATION CONFLICT".into());
            }
            ffi::SCSI_STATUS_CANCELLED | ffi::SCSI_STATUS_ERROR | ffi::SCSI_STATUS_TIMEOUT => {
                r.sent = true;
                return false;
            }
            s => {
                self.fail(d.id, libc::EIO, format!("unexpected SCSI status {s:#x}"));
            }
        }
        true
    }

    fn logout(&mut self, ctx: *mut ffi::Context) {
        let mut done = false;
        // SAFETY: ctx is logged in and idle; `done` outlives the wait below,
        // and the context is destroyed (by our caller) before it goes away.
        unsafe {
            if (self.lib.iscsi_logout_async)(ctx, logout_cb, (&mut done as *mut bool).cast()) != 0 {
                return;
            }
            let until = Instant::now() + Duration::from_secs(1);
            while !done && Instant::now() < until {
                let ev = (self.lib.iscsi_which_events)(ctx);
                let mut p = libc::pollfd {
                    fd: (self.lib.iscsi_get_fd)(ctx),
                    events: ev as i16,
                    revents: 0,
                };
                if libc::poll(&mut p, 1, 100) < 0
                    || (self.lib.iscsi_service)(ctx, c_int::from(p.revents)) < 0
                {
                    break;
                }
            }
        }
        DONE.with(|v| v.borrow_mut().clear());
    }

    /// Put every request that waits (new, or to be sent again) on the wire,
    /// in order, and write out what the socket takes.
    pub(super) fn send_waiting(&mut self, now: Instant) {
        let ConnState::Up { ctx } = self.state else {
            return;
        };
        if !self.reqs.values().any(|r| r.in_flight) {
            // Silence is measured from the first command after idling.
            self.progress = now;
        }
        let mut next = 0;
        let mut sent = false;
        let mut data_out = false;
        while let Some(id) = self
            .reqs
            .range_mut(next..)
            .find(|(_, r)| !r.in_flight && !matches!(r.not_before, Some(t) if t > now))
            .map(|(id, r)| {
                r.not_before = None;
                data_out |= matches!(r.op, Op::Write { .. });
                *id
            })
        {
            next = id + 1;
            if !self.submit(ctx, id) {
                let e = format!("cannot queue a command: {}", self.ctx_error(ctx));
                self.drop_connection(&e);
                return;
            }
            sent = true;
        }
        if !sent {
            return;
        }
        let n = self.reqs.values().filter(|r| r.in_flight).count() as u64;
        self.shared.peak.fetch_max(n, Ordering::Relaxed);
        // Write them out now rather than after another poll. libiscsi sends
        // a PDU's header and its data in two calls: corked, they leave in
        // one segment, and the target wakes once for them.
        // SAFETY: ctx is a live context.
        let fd = unsafe { (self.lib.iscsi_get_fd)(ctx) };
        let generation = self.generation;
        if data_out {
            cork(fd, true);
        }
        self.service(ctx, c_int::from(libc::POLLOUT));
        if data_out && self.generation == generation {
            cork(fd, false);
        }
        self.write_out();
    }

    /// Write what libiscsi has queued (Data-Out PDUs after an R2T, a
    /// NOP-Out, the rest of a write the socket did not take); what the
    /// socket still does not take, the I/O thread writes when it can.
    pub(super) fn write_out(&mut self) {
        let pollout = c_int::from(libc::POLLOUT);
        let ConnState::Up { ctx } = self.state else {
            return;
        };
        // SAFETY: ctx is a live context.
        if unsafe { (self.lib.iscsi_which_events)(ctx) } & pollout == 0 {
            return;
        }
        self.service(ctx, pollout);
        if let ConnState::Up { ctx } = self.state {
            // SAFETY: ctx is a live context.
            let ev = unsafe { (self.lib.iscsi_which_events)(ctx) };
            if ev & pollout != 0 && !self.poll_out {
                self.shared.wake();
            }
        }
    }

    /// The I/O thread's round: deadlines, login and reconnection, sending
    /// what waits; then what to poll for and how long. None: the device is
    /// closed, every request answered.
    fn tick(&mut self) -> Option<(Option<(c_int, i16)>, c_int)> {
        let now = Instant::now();
        if self.closing {
            self.shared.kick();
            if let ConnState::Up { ctx } = self.state {
                if !self.reqs.values().any(|r| r.in_flight) {
                    self.logout(ctx);
                }
            }
            self.drop_connection("device closed");
            let ids: Vec<u64> = self.reqs.keys().copied().collect();
            for id in ids {
                let why = "device closed".to_string();
                self.fail(id, libc::EIO, why);
            }
            return None;
        }
        // Deadlines.
        let expired: Vec<u64> = self
            .reqs
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        if !expired.is_empty() {
            if expired.iter().any(|id| self.reqs[id].in_flight) {
                self.drop_connection("a command timed out");
            }
            self.shared.kick();
            let t = self.shared.cfg.timeout.as_secs_f64();
            for id in expired {
                let why = if self.last_error.is_empty() {
                    format!("no answer from the target within {t} s")
                } else {
                    format!(
                        "no answer from the target within {t} s (last error: {})",
                        self.last_error
                    )
                };
                self.fail(id, libc::EIO, why);
            }
        }
        // Connection state.
        match self.state {
            ConnState::Down { next } if now >= next => self.start_login(),
            ConnState::LoggingIn { since, .. } if now >= since + self.login_limit => {
                let e = format!(
                    "login timed out after {:.1} s",
                    self.login_limit.as_secs_f64()
                );
                self.drop_connection(&e);
                self.login_failed(e);
            }
            ConnState::Up { ctx } if self.reqs.values().any(|r| r.in_flight) => {
                if now >= self.progress + self.stall_limit {
                    let e = format!("no answer for {:.1} s", self.stall_limit.as_secs_f64());
                    self.drop_connection(&e);
                } else if now >= self.progress + self.stall_limit / 2 && !self.nop_out {
                    // Commands are slow: is the target still there? A
                    // NOP-In back counts as progress.
                    // SAFETY: ctx is logged in; no data, no private pointer.
                    let r = unsafe {
                        (self.lib.iscsi_nop_out_async)(
                            ctx,
                            nop_cb,
                            std::ptr::null_mut(),
                            0,
                            std::ptr::null_mut(),
                        )
                    };
                    self.nop_out = r == 0;
                }
            }
            _ => {}
        }
        // Send what waits (resends after a login, retries after BUSY).
        self.send_waiting(now);
        // What to wait for.
        let sock = match self.state {
            ConnState::Up { ctx } | ConnState::LoggingIn { ctx, .. } => {
                // SAFETY: ctx is a live context.
                let (fd, mut ev) = unsafe {
                    (
                        (self.lib.iscsi_get_fd)(ctx),
                        (self.lib.iscsi_which_events)(ctx),
                    )
                };
                if self.self_servicer {
                    ev &= !c_int::from(libc::POLLIN);
                }
                Some((fd, ev as i16))
            }
            ConnState::Down { .. } => None,
        };
        let mut wait = Duration::from_millis(100);
        if let ConnState::Down { next } = self.state {
            wait = wait.min(next.saturating_duration_since(now));
        }
        if let Some(t) = self.reqs.values().filter_map(|r| r.not_before).min() {
            wait = wait.min(t.saturating_duration_since(now));
        }
        Some((sock, wait.as_millis() as c_int))
    }

    /// The live context, if any.
    fn ctx(&self) -> Option<*mut ffi::Context> {
        match self.state {
            ConnState::Up { ctx } | ConnState::LoggingIn { ctx, .. } => Some(ctx),
            ConnState::Down { .. } => None,
        }
    }

    /// Let libiscsi do its socket work for `revents`, then act on the
    /// completions and the login outcome it reported.
    pub(super) fn service(&mut self, ctx: *mut ffi::Context, revents: c_int) {
        // SAFETY: servicing a live context with the events poll reported.
        let r = unsafe { (self.lib.iscsi_service)(ctx, revents) };
        let login = LOGIN.with(|l| l.take());
        if NOP_IN.with(|n| n.take()) {
            self.nop_out = false;
            self.progress = Instant::now();
        }
        let done: Vec<Done> = DONE.with(|v| std::mem::take(&mut *v.borrow_mut()));
        let mut lost = None;
        for d in done {
            if !self.complete(d) && lost.is_none() {
                lost = Some(format!("command failed: {}", self.ctx_error(ctx)));
            }
        }
        if let ConnState::LoggingIn { .. } = self.state {
            match login {
                Some(ffi::SCSI_STATUS_GOOD) => {
                    self.state = ConnState::Up { ctx };
                    self.shared.connected.store(true, Ordering::Relaxed);
                    self.progress = Instant::now();
                    self.backoff = Duration::from_millis(100);
                    if self.first.take().map(|f| f.send(Ok(()))).is_none() {
                        self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("{}: logged in again", self.shared.uri);
                    }
                    return;
                }
                Some(_) => {
                    let e = format!("login: {}", self.ctx_error(ctx));
                    self.drop_connection(&e);
                    self.login_failed(e);
                    return;
                }
                None if r < 0 => {
                    let e = format!("login: {}", self.ctx_error(ctx));
                    self.drop_connection(&e);
                    self.login_failed(e);
                    return;
                }
                None => {}
            }
        }
        if r < 0 && lost.is_none() {
            lost = Some(self.ctx_error(ctx));
        }
        if let Some(e) = lost {
            self.drop_connection(&e);
        }
    }
}

/// The I/O thread: logs in (and in again), reads the answers, enforces the
/// deadlines. It sleeps in poll(2) on the socket and the wake-up eventfd,
/// with the core unlocked, so that callers can send meanwhile.
pub(super) fn io_thread(shared: Arc<Shared>, core: Arc<Mutex<Core>>) {
    let _exit = ExitGuard(core.clone());
    let mut woken = true;
    // Socket events seen by the last poll, and the context they were for.
    let mut ready: Option<(u64, c_int)> = None;
    loop {
        if woken {
            drain(&shared.wake);
        }
        let mut c = lock(&core);
        if let Some((generation, mut revents)) = ready.take() {
            if c.self_servicer {
                // The caller reads (and sees errors); only write here.
                revents &= c_int::from(libc::POLLOUT);
            }
            match c.ctx() {
                Some(ctx) if c.generation == generation && revents != 0 => c.service(ctx, revents),
                _ => {}
            }
        }
        let plan = c.tick();
        let generation = c.generation;
        c.poll_out = matches!(plan, Some((Some((_, ev)), _)) if ev & libc::POLLOUT != 0);
        let answers = std::mem::take(&mut c.answers);
        drop(c);
        deliver(answers);
        let Some((sock, ms)) = plan else { return };
        let mut fds = [
            libc::pollfd {
                fd: shared.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sock.map_or(-1, |s| s.0),
                events: sock.map_or(0, |s| s.1),
                revents: 0,
            },
        ];
        // SAFETY: polling two pollfd structs we own.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        woken = n < 0 || fds[0].revents != 0;
        if n > 0 && fds[1].revents != 0 {
            ready = Some((generation, c_int::from(fds[1].revents)));
        }
    }
}
