//! iSCSI initiator: `iscsi://[user[%secret]@]host[:port]/TARGET-IQN/LUN[?timeout=SECS]`.
//!
//! The URL is libiscsi's: CHAP user and secret before the host (the secret
//! may come from [`PASSWORD_ENV`] instead, keeping it out of the command
//! line and the mount table), `target_user=`/`target_password=` for mutual
//! CHAP. tgt puts its controller on LUN 0, the first disk on LUN 1.
//!
//! The protocol is libiscsi's (Debian's `libiscsi7`, loaded at run time by
//! the `ffi` submodule; `url` parses the device URL, `conn` is a session's
//! connection and its I/O thread): login with or without CHAP (also mutual CHAP), READ(16),
//! WRITE(16), SYNCHRONIZE CACHE(16) (falling back to (10) when the target
//! lacks it), READ CAPACITY(16), MODE SENSE(6) for write protection and
//! INQUIRY for the Block Limits page. A library rather than a hand-written
//! initiator: libiscsi is kept in Debian and already gets the login
//! negotiation, CHAP and the command encodings right against many targets;
//! loading it at run time keeps it optional for users without iSCSI.
//!
//! A device keeps a small pool of sessions to the LUN (one at first, more
//! logged in in the background while callers outnumber them, up to
//! [`MAX_SESSIONS`]; each its own ISID, TCP connection and libiscsi
//! context); a caller with a small request takes a session nobody else
//! uses if there is one, else shares the least used (large requests share
//! the first session, whose one reader sleeps less often than one reader
//! per connection would). Each session's context and every request
//! not yet answered live in one mutex-protected core, driven with
//! libiscsi's non-blocking API (`iscsi_which_events`/`iscsi_service` and
//! task callbacks), so any number of commands are in flight on a session
//! and libiscsi is never entered by two threads at once. A caller locks the
//! core, queues its commands and writes them to the socket itself; if it
//! is the only caller waiting on the session it then polls the socket and
//! reads its answers itself (one sleep per request, no hand-off between
//! threads), otherwise it parks and whoever reads the answers unparks it.
//! One I/O thread per session sleeps in poll(2) with the core unlocked: it
//! reads the answers when no caller does, writes what a full socket did
//! not take, and does the login, reconnection and deadlines below; it
//! interrupts a polling caller (an eventfd) when the connection goes or a
//! deadline passes. Requests larger than the target's maximum transfer (at
//! most [`MAX_CHUNK`]) are split, and the pieces issued together on one
//! session.
//!
//! Data moves straight between the caller's buffer and the socket. A
//! request is answered only when libiscsi no longer refers to its buffer:
//! after its completion callback, or after the context was destroyed.
//!
//! libiscsi's own automatic reconnection (`iscsi_reconnect`) is switched
//! off: it swaps contexts in place, resends the queued commands itself and
//! retries forever with no per-command deadline, which leaves no way to fail
//! a request after a timeout. Instead, on a lost connection (socket error, a
//! task cancelled, or commands waiting while neither they nor a NOP-Out sent
//! after a quarter of the timeout are answered within half of it) the
//! context is destroyed and a new one logs in with the same ISID (so the
//! target reinstates the session and drops the old one's commands), with
//! backoff (100 ms doubling to 2 s); every request not yet answered is then
//! sent again, in its original order. Resending is safe: a write done twice
//! leaves the same bytes, and a caller never relies on the order of two
//! overlapping writes it has outstanding at once. A request that is not
//! answered within the timeout (default 30 s, [`TIMEOUT_ENV`], or
//! `?timeout=`) fails with EIO; if it was on the wire, the connection is
//! dropped first. A write returns `Ok` only once the target reported GOOD
//! status for it. Only the first login fails at once (wrong secret, unknown
//! target or LUN, nothing listening), with the reason in the error.
//!
//! Every completion's SCSI status is checked: CHECK CONDITION fails the
//! request with the sense key and additional sense code in the message (EIO,
//! or EROFS for DATA PROTECT), except UNIT ATTENTION, which is retried (up to
//! ten times), and NOT READY (becoming ready), BUSY, TASK SET FULL and TASK
//! ABORTED, which are retried until the timeout.
//!
//! Byte ranges not aligned to the logical block size are read whole-block
//! and written by read-modify-write; every write holds a lock on the logical
//! blocks it covers, so a read-modify-write never interleaves with another
//! write to the same blocks.

mod conn;
mod ffi;
mod url;

use super::spec::invalid;
use super::BlockDevice;
use std::collections::BTreeMap;
use std::ffi::{c_int, c_void, CString};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use conn::{deliver, io_thread, ConnState, Core};
pub use url::{
    parse_spec, timeout_from_env, IscsiConfig, Secret, DEFAULT_PORT, DEFAULT_TIMEOUT,
    INITIATOR_PREFIX, MAX_CHUNK, PASSWORD_ENV, TIMEOUT_ENV,
};

/// Log in to the LUN described by `cfg`.
pub fn open(cfg: IscsiConfig) -> io::Result<Arc<dyn BlockDevice>> {
    Ok(Arc::new(IscsiDevice::connect(cfg)?))
}

pub use super::{errno_of, DevError as IscsiError};

fn iscsi_err(errno: i32, msg: String) -> io::Error {
    super::dev_err(errno, msg)
}

/// What the target said about the LUN when we logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LunInfo {
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Number of logical blocks.
    pub blocks: u64,
    /// Write-protected (MODE SENSE WP bit).
    pub write_protected: bool,
    /// Largest transfer of one command, in blocks (0: no limit given).
    pub max_transfer_blocks: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read {
        lba: u64,
        blocks: u32,
    },
    Write {
        lba: u64,
        blocks: u32,
    },
    Sync,
    ReadCapacity16,
    ModeSense6,
    InquiryVpd(u8),
    /// A 10-byte CDB built by [`super::scsi`] (persistent reservations),
    /// with data out of the caller's buffer (`out`) or into it.
    Cdb {
        cdb: [u8; 10],
        out: bool,
    },
}

impl Op {
    fn name(&self, sync10: bool) -> &'static str {
        match self {
            Op::Read { .. } => "READ(16)",
            Op::Write { .. } => "WRITE(16)",
            Op::Sync if sync10 => "SYNCHRONIZE CACHE(10)",
            Op::Sync => "SYNCHRONIZE CACHE(16)",
            Op::ReadCapacity16 => "READ CAPACITY(16)",
            Op::ModeSense6 => "MODE SENSE(6)",
            Op::InquiryVpd(_) => "INQUIRY",
            Op::Cdb { cdb, .. } if cdb[0] == 0x5e => "PERSISTENT RESERVE IN",
            Op::Cdb { cdb, .. } if cdb[0] == 0x5f => "PERSISTENT RESERVE OUT",
            Op::Cdb { .. } => "SCSI command",
        }
    }

    fn describe(&self, sync10: bool) -> String {
        match self {
            Op::Read { lba, blocks } | Op::Write { lba, blocks } => {
                format!("{} of {blocks} blocks at LBA {lba}", self.name(sync10))
            }
            Op::InquiryVpd(p) => format!("INQUIRY page {p:#04x}"),
            Op::Cdb { cdb, .. } => format!("{} (service action {})", self.name(sync10), cdb[1]),
            _ => self.name(sync10).to_string(),
        }
    }
}

/// The caller's side of a batch of requests: every piece is answered
/// exactly once, and the caller sleeps (parked) until the last answer.
struct Batch {
    results: Mutex<Vec<Option<io::Result<usize>>>>,
    /// Pieces not answered yet.
    left: AtomicUsize,
    /// The caller, unparked by the last answer.
    waiter: std::thread::Thread,
}

impl Batch {
    fn answer(&self, idx: usize, r: io::Result<usize>) {
        if let Some(slot) = lock(&self.results).get_mut(idx) {
            *slot = Some(r);
        }
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waiter.unpark();
        }
    }
}

/// An answer decided while the core was locked, delivered after unlocking
/// (so that the woken caller does not run into the lock).
type Answer = (Arc<Batch>, usize, io::Result<usize>);

/// One command on its way to the target.
struct Req {
    op: Op,
    /// The caller's buffer (data in or out) and its length; valid until the
    /// request is answered, and never touched by two requests at once.
    buf: usize,
    len: usize,
    deadline: Instant,
    batch: Arc<Batch>,
    /// Index of this piece in its caller's batch.
    idx: usize,
    /// Unit attentions seen so far.
    uas: u32,
    /// Not to be (re)sent before this time (BUSY and the like).
    not_before: Option<Instant>,
    /// On the wire on the current connection.
    in_flight: bool,
    /// Sent at least once on an earlier connection.
    sent: bool,
}

struct Shared {
    cfg: IscsiConfig,
    uri: String,
    /// Wakes the I/O thread.
    wake: OwnedFd,
    /// Wakes a caller that polls the socket for its own answers.
    kick: OwnedFd,
    connected: AtomicBool,
    reconnects: AtomicU64,
    resent: AtomicU64,
    /// Most commands handed to libiscsi at once.
    peak: AtomicU64,
    last_error: Mutex<String>,
}

impl Shared {
    fn wake(&self) {
        signal(&self.wake);
    }

    fn kick(&self) {
        signal(&self.kick);
    }
}

fn signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes from a local to our eventfd.
    unsafe {
        libc::write(
            fd.as_raw_fd(),
            (&one as *const u64).cast(),
            std::mem::size_of::<u64>(),
        );
    }
}

fn drain(fd: &OwnedFd) {
    let mut buf = 0u64;
    // SAFETY: reading 8 bytes into a local from our non-blocking eventfd.
    unsafe { libc::read(fd.as_raw_fd(), (&mut buf as *mut u64).cast(), 8) };
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd creation; the descriptor is owned at once.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Most sessions one device opens to its LUN.
pub const MAX_SESSIONS: usize = 8;
/// Requests of this many bytes or more all go to the first session: their
/// data arrives in many segments, and one reader for all of them (on one
/// connection) sleeps less often than one reader per connection.
const BIG_REQUEST: usize = 128 << 10;

/// One session (one TCP connection, one libiscsi context) and its I/O thread.
struct Session {
    shared: Arc<Shared>,
    core: Arc<Mutex<Core>>,
    io: Option<JoinHandle<()>>,
}

/// The device's sessions, and how many callers use each.
struct Pool {
    sessions: Vec<Arc<Session>>,
    users: Vec<usize>,
    /// A session is being added.
    growing: bool,
    closed: bool,
}

/// A block device on an iSCSI LUN.
///
/// Callers share a small pool of sessions to the LUN (each with its own
/// ISID, so the target keeps them apart): a caller with a small request
/// takes a session nobody uses if there is one, and then reads its own
/// answers from that session's socket; when every session is in use, one
/// more logs in in the background (up to [`MAX_SESSIONS`]) and meanwhile
/// callers share the least used one. Large requests share the first
/// session. A flush (SYNCHRONIZE CACHE) applies to the whole LUN,
/// whichever session carries it.
pub struct IscsiDevice {
    cfg: IscsiConfig,
    uri: String,
    pool: Arc<Mutex<Pool>>,
    info: LunInfo,
    /// Bytes per command (a multiple of the block size).
    chunk: usize,
    read_only: bool,
    locks: super::rangelock::RangeLocks,
    /// What this process's devices on the same LUN share (the
    /// persistent reservation key).
    lun: Arc<LunShared>,
}

/// What every device of this process on one LUN shares: the persistent
/// reservation key registered on all their sessions (each session is an
/// I_T nexus of its own, and every node of a daemon opens the device
/// itself, yet all of them write for the one registered server), and their
/// pools. `key` is held while sessions are registered or added.
struct LunShared {
    key: Mutex<Option<u64>>,
    pools: Mutex<Vec<std::sync::Weak<Mutex<Pool>>>>,
}

/// The shared state of LUN `id` (portal, target, LUN) in this process.
fn lun_shared(id: String) -> Arc<LunShared> {
    static LUNS: std::sync::OnceLock<
        Mutex<std::collections::HashMap<String, std::sync::Weak<LunShared>>>,
    > = std::sync::OnceLock::new();
    let mut m = lock(LUNS.get_or_init(Default::default));
    m.retain(|_, w| w.strong_count() > 0);
    if let Some(s) = m.get(&id).and_then(std::sync::Weak::upgrade) {
        return s;
    }
    let s = Arc::new(LunShared {
        key: Mutex::new(None),
        pools: Mutex::new(Vec::new()),
    });
    m.insert(id, Arc::downgrade(&s));
    s
}

/// Spawn the I/O thread with every signal blocked, so that process-directed
/// signals (SIGTERM, SIGINT...) reach the threads of the program that wait
/// for them, never a helper that would take the default action.
fn spawn_quiet<F: FnOnce() + Send + 'static>(name: &str, f: F) -> io::Result<JoinHandle<()>> {
    // SAFETY: plain signal-mask manipulation of the calling thread on local
    // sigset_t values; the old mask is restored right after the spawn.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let r = std::thread::Builder::new().name(name.into()).spawn(f);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

fn be64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

impl Session {
    /// Log in (failing at once if the first login fails) and start the I/O
    /// thread.
    fn connect(cfg: IscsiConfig) -> io::Result<Session> {
        let uri = cfg.uri();
        let lib = ffi::lib().map_err(|e| iscsi_err(libc::ENOSYS, format!("{uri}: {e}")))?;
        let wake = eventfd()?;
        let kick = eventfd()?;
        let shared = Arc::new(Shared {
            uri: uri.clone(),
            cfg,
            wake,
            kick,
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
        });
        let (first_tx, first_rx) = mpsc::channel();
        let core = Arc::new(Mutex::new(Core::new(lib, shared.clone(), first_tx)));
        let (s2, c2) = (shared.clone(), core.clone());
        let io = spawn_quiet("iscsi-io", move || io_thread(s2, c2))?;
        let session = Session {
            shared,
            core,
            io: Some(io),
        };
        match first_rx.recv() {
            Ok(Ok(())) => Ok(session),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(iscsi_err(libc::EIO, format!("{uri}: I/O thread died"))),
        }
    }

    /// Ask the I/O thread to fail what waits, log out and end.
    fn close(&self) {
        lock(&self.core).closing = true;
        self.shared.wake();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
        if let Some(h) = self.io.take() {
            let _ = h.join();
        }
    }
}

impl IscsiDevice {
    /// Log in (failing at once if the first login fails), read the LUN's
    /// capacity and write protection, and start the I/O thread.
    pub fn connect(cfg: IscsiConfig) -> io::Result<IscsiDevice> {
        let uri = cfg.uri();
        let read_only = cfg.read_only;
        let first = Session::connect(cfg.clone())?;
        let lun = lun_shared(format!("{}/{}/{}", cfg.portal(), cfg.target, cfg.lun));
        let key = lock(&lun.key);
        if let Some(k) = *key {
            // Another device of ours registered the LUN: so does this one,
            // before its first command.
            first.register(k)?;
        }
        let mut dev = IscsiDevice {
            cfg,
            uri: uri.clone(),
            pool: Arc::new(Mutex::new(Pool {
                sessions: vec![Arc::new(first)],
                users: vec![0],
                growing: false,
                closed: false,
            })),
            info: LunInfo {
                block_size: 512,
                blocks: 0,
                write_protected: false,
                max_transfer_blocks: 0,
            },
            chunk: MAX_CHUNK,
            read_only,
            locks: super::rangelock::RangeLocks::default(),
            lun: lun.clone(),
        };
        {
            let mut pools = lock(&lun.pools);
            pools.retain(|w| w.strong_count() > 0);
            pools.push(Arc::downgrade(&dev.pool));
        }
        drop(key);
        dev.info = dev.probe()?;
        if !read_only && dev.info.write_protected {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let bs = dev.info.block_size as usize;
        let mut chunk = MAX_CHUNK / bs * bs;
        if dev.info.max_transfer_blocks > 0 {
            chunk = chunk.min(dev.info.max_transfer_blocks as usize * bs);
        }
        dev.chunk = chunk.max(bs);
        tracing::info!(
            "{uri}: {} blocks of {} bytes{}, {} bytes per command",
            dev.info.blocks,
            dev.info.block_size,
            if dev.info.write_protected {
                ", write-protected"
            } else {
                ""
            },
            dev.chunk
        );
        Ok(dev)
    }

    fn probe(&self) -> io::Result<LunInfo> {
        let uri = &self.uri;
        let mut cap = [0u8; 32];
        let n = self.run_one(Op::ReadCapacity16, cap.as_mut_ptr(), cap.len())?;
        if n < 12 {
            return Err(iscsi_err(
                libc::EIO,
                format!("{uri}: READ CAPACITY(16) returned {n} bytes"),
            ));
        }
        let last = be64(&cap, 0);
        let block_size = be32(&cap, 8);
        if !(512..=1 << 16).contains(&block_size) || !block_size.is_power_of_two() {
            return Err(iscsi_err(
                libc::EIO,
                format!("{uri}: unsupported logical block size {block_size}"),
            ));
        }
        let blocks = last.checked_add(1).ok_or_else(|| {
            iscsi_err(libc::EIO, format!("{uri}: READ CAPACITY(16): bad last LBA"))
        })?;
        if blocks.checked_mul(u64::from(block_size)).is_none() {
            return Err(iscsi_err(libc::EIO, format!("{uri}: LUN too large")));
        }
        let mut ms = [0u8; 255];
        let write_protected = match self.run_one(Op::ModeSense6, ms.as_mut_ptr(), ms.len()) {
            Ok(n) if n >= 4 => ms[2] & 0x80 != 0,
            Ok(_) => false,
            Err(e) => {
                tracing::debug!("{uri}: MODE SENSE(6): {e}");
                false
            }
        };
        // Block Limits: maximum transfer length at bytes 8..12.
        let mut vpd = [0u8; 64];
        let max_transfer_blocks = match self.run_one(Op::InquiryVpd(0xb0), vpd.as_mut_ptr(), 64) {
            Ok(n) if n >= 12 && vpd[1] == 0xb0 => be32(&vpd, 8),
            _ => 0,
        };
        Ok(LunInfo {
            block_size,
            blocks,
            write_protected,
            max_transfer_blocks,
        })
    }

    /// What the target said about the LUN at login.
    pub fn info(&self) -> LunInfo {
        self.info
    }

    /// The configuration in use.
    pub fn config(&self) -> &IscsiConfig {
        &self.cfg
    }

    /// How many times a session was re-established, and how many commands
    /// were sent again because of that (all sessions together).
    pub fn reconnections(&self) -> (u64, u64) {
        let p = lock(&self.pool);
        p.sessions.iter().fold((0, 0), |(r, s), x| {
            (
                r + x.shared.reconnects.load(Ordering::Relaxed),
                s + x.shared.resent.load(Ordering::Relaxed),
            )
        })
    }

    /// The most commands that were outstanding on one session at once.
    pub fn peak_in_flight(&self) -> u64 {
        let p = lock(&self.pool);
        p.sessions
            .iter()
            .map(|x| x.shared.peak.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// Is a session currently logged in?
    pub fn is_connected(&self) -> bool {
        let p = lock(&self.pool);
        p.sessions
            .iter()
            .any(|x| x.shared.connected.load(Ordering::Relaxed))
    }

    /// How many sessions the device has open.
    pub fn sessions(&self) -> usize {
        lock(&self.pool).sessions.len()
    }

    /// Hand requests to a session (one nobody else uses, if any) and wait
    /// for their answers.
    fn run(&self, pieces: &[(Op, *mut u8, usize)]) -> Vec<io::Result<usize>> {
        let big = pieces.iter().map(|p| p.2).sum::<usize>() >= BIG_REQUEST;
        let (session, i) = {
            let mut p = lock(&self.pool);
            let i = if big {
                0
            } else {
                (0..p.users.len()).min_by_key(|&i| p.users[i]).unwrap_or(0)
            };
            let Some(session) = p.sessions.get(i).cloned() else {
                let e = || iscsi_err(libc::EIO, format!("{}: device closed", self.uri));
                return pieces.iter().map(|_| Err(e())).collect();
            };
            p.users[i] += 1;
            if !big && p.users[i] > 1 && p.sessions.len() < MAX_SESSIONS && !p.growing && !p.closed
            {
                p.growing = true;
                self.grow();
            }
            (session, i)
        };
        let r = session.run(pieces);
        lock(&self.pool).users[i] -= 1;
        r
    }

    /// Log in one more session in the background; callers share the ones
    /// there are meanwhile, and keep doing so if it fails.
    fn grow(&self) {
        let (cfg, pool, shared) = (self.cfg.clone(), self.pool.clone(), self.lun.clone());
        let r = spawn_quiet("iscsi-grow", move || {
            let s = Session::connect(cfg);
            // A new session is a new I_T nexus: it carries the device's
            // reservation key before anyone's commands (a session that
            // cannot register is not used).
            let key = lock(&shared.key);
            let s = match (s, *key) {
                (Ok(s), Some(k)) => s.register(k).map(|()| s),
                (s, _) => s,
            };
            let mut p = lock(&pool);
            p.growing = false;
            match s {
                Ok(s) if !p.closed => {
                    p.sessions.push(Arc::new(s));
                    p.users.push(0);
                }
                Ok(s) => {
                    drop(p);
                    drop(s);
                }
                Err(e) => {
                    // Do not try again at once.
                    p.growing = true;
                    drop(p);
                    tracing::debug!("another session: {e}");
                    std::thread::sleep(Duration::from_secs(5));
                    lock(&pool).growing = false;
                }
            }
        });
        if r.is_err() {
            lock(&self.pool).growing = false;
        }
    }
}

impl Session {
    /// Register `key` (0: unregister) for this session's I_T nexus.
    fn register(&self, key: u64) -> io::Result<()> {
        let mut params = super::scsi::pr_out_params(0, key);
        let cdb = super::scsi::pr_out_cdb(super::scsi::PrOut::RegisterAndIgnoreExistingKey, None);
        self.run(&[(
            Op::Cdb { cdb, out: true },
            params.as_mut_ptr(),
            params.len(),
        )])
        .pop()
        .unwrap_or_else(|| Err(iscsi_err(libc::EIO, "no answer".into())))
        .map(|_| ())
    }

    /// Hand requests `(op, buffer, length)` to the target and wait for all
    /// their answers. When the session is up the calling thread puts them on
    /// the wire itself (no hand-off to the I/O thread); the I/O thread reads
    /// the answers and unparks the caller.
    fn run(&self, pieces: &[(Op, *mut u8, usize)]) -> Vec<io::Result<usize>> {
        let n = pieces.len();
        let batch = Arc::new(Batch {
            results: Mutex::new((0..n).map(|_| None).collect()),
            left: AtomicUsize::new(n),
            waiter: std::thread::current(),
        });
        let deadline = Instant::now() + self.shared.cfg.timeout;
        {
            let mut c = lock(&self.core);
            if c.closing {
                let e = || iscsi_err(libc::EIO, format!("{}: device closed", self.shared.uri));
                return (0..n).map(|_| Err(e())).collect();
            }
            for (idx, &(op, buf, len)) in pieces.iter().enumerate() {
                let id = c.next_id;
                c.next_id += 1;
                c.reqs.insert(
                    id,
                    Req {
                        op,
                        buf: buf as usize,
                        len,
                        deadline,
                        batch: batch.clone(),
                        idx,
                        uas: 0,
                        not_before: None,
                        in_flight: false,
                        sent: false,
                    },
                );
            }
            c.active += 1;
            if matches!(c.state, ConnState::Up { .. }) {
                c.send_waiting(Instant::now());
            } else {
                // The I/O thread sends them once logged in.
                self.shared.wake();
            }
            self.wait(c, &batch);
        }
        let mut results = lock(&batch.results);
        results
            .iter_mut()
            .map(|r| {
                r.take().unwrap_or_else(|| {
                    Err(iscsi_err(
                        libc::EIO,
                        format!("{}: request lost", self.shared.uri),
                    ))
                })
            })
            .collect()
    }

    /// Wait until every piece of `batch` is answered (exactly once: by a
    /// completion, a failure, the timeout, or the I/O thread's exit). A
    /// caller that is the only one waiting on a live session polls the
    /// socket and reads the answers itself, which spares two thread
    /// switches per request; otherwise it parks and whoever reads the
    /// answers (the I/O thread, or the caller that polls) unparks it.
    fn wait<'a>(&'a self, mut c: MutexGuard<'a, Core>, batch: &Batch) {
        let mut servicer = false;
        loop {
            if !c.answers.is_empty() {
                let answers = std::mem::take(&mut c.answers);
                drop(c);
                deliver(answers);
                c = lock(&self.core);
            }
            if batch.left.load(Ordering::Acquire) == 0 {
                break;
            }
            let ctx = match c.state {
                ConnState::Up { ctx } if !c.closing => Some(ctx),
                _ => None,
            };
            if !servicer && ctx.is_some() && c.active == 1 && !c.self_servicer {
                servicer = true;
                c.self_servicer = true;
            }
            if servicer && ctx.is_none() {
                // The session went down: the I/O thread takes over.
                servicer = false;
                c.self_servicer = false;
                self.shared.wake();
            }
            let answers = std::mem::take(&mut c.answers);
            match ctx {
                Some(ctx) if servicer => {
                    let generation = c.generation;
                    // SAFETY: ctx is a live context.
                    let fd = unsafe { (c.lib.iscsi_get_fd)(ctx) };
                    drop(c);
                    deliver(answers);
                    let mut fds = [
                        libc::pollfd {
                            fd,
                            events: libc::POLLIN,
                            revents: 0,
                        },
                        libc::pollfd {
                            fd: self.shared.kick.as_raw_fd(),
                            events: libc::POLLIN,
                            revents: 0,
                        },
                    ];
                    // SAFETY: polling two pollfd structs we own. The socket
                    // may be closed meanwhile (the generation tells). No
                    // timeout: whatever answers this caller otherwise (the
                    // deadline, a lost connection, closing) kicks it.
                    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                    if n > 0 && fds[1].revents != 0 {
                        drain(&self.shared.kick);
                    }
                    c = lock(&self.core);
                    let revents = c_int::from(fds[0].revents);
                    if n > 0 && revents != 0 && c.generation == generation {
                        c.service(ctx, revents);
                        c.write_out();
                    }
                }
                _ => {
                    drop(c);
                    deliver(answers);
                    std::thread::park();
                    c = lock(&self.core);
                }
            }
        }
        c.active -= 1;
        if servicer {
            c.self_servicer = false;
            if c.active > 0 {
                // Others wait: the I/O thread reads for them now.
                self.shared.wake();
            }
        }
        let answers = std::mem::take(&mut c.answers);
        drop(c);
        deliver(answers);
    }
}

impl IscsiDevice {
    fn run_one(&self, op: Op, buf: *mut u8, len: usize) -> io::Result<usize> {
        self.run(&[(op, buf, len)])
            .pop()
            .unwrap_or_else(|| Err(iscsi_err(libc::EIO, "no answer".into())))
    }

    fn check_range(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: {len} bytes at {offset} beyond the end ({} bytes)",
                    self.uri,
                    self.size()
                ),
            )),
        }
    }

    /// Read or write whole blocks starting at block `lba` into/from `buf`.
    fn blocks_io(&self, write: bool, lba: u64, buf: *mut u8, len: usize) -> io::Result<()> {
        let bs = self.info.block_size as usize;
        let mut pieces = Vec::with_capacity(len.div_ceil(self.chunk));
        let mut done = 0usize;
        while done < len {
            let n = self.chunk.min(len - done);
            let l = lba + (done / bs) as u64;
            let blocks = (n / bs) as u32;
            let op = if write {
                Op::Write { lba: l, blocks }
            } else {
                Op::Read { lba: l, blocks }
            };
            // SAFETY: done < len, so the pointer stays inside the buffer.
            pieces.push((op, unsafe { buf.add(done) }, n));
            done += n;
        }
        for r in self.run(&pieces) {
            r?;
        }
        Ok(())
    }
}

impl BlockDevice for IscsiDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_range(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let bs = u64::from(self.info.block_size);
        if (offset | buf.len() as u64) & (bs - 1) == 0 {
            return self.blocks_io(false, offset / bs, buf.as_mut_ptr(), buf.len());
        }
        let start = offset / bs * bs;
        let end = (offset + buf.len() as u64).div_ceil(bs) * bs;
        let mut tmp = vec![0u8; (end - start) as usize];
        self.blocks_io(false, start / bs, tmp.as_mut_ptr(), tmp.len())?;
        let o = (offset - start) as usize;
        buf.copy_from_slice(&tmp[o..o + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.check_range(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let bs = u64::from(self.info.block_size);
        let end = offset + buf.len() as u64;
        let start_b = offset / bs;
        let end_b = end.div_ceil(bs);
        let _guard = self.locks.lock(start_b, end_b, true);
        if (offset | buf.len() as u64) & (bs - 1) == 0 {
            // The buffer is only read (data out), never written through.
            return self.blocks_io(true, start_b, buf.as_ptr().cast_mut(), buf.len());
        }
        // Read-modify-write of the partial blocks at either end.
        let bsz = bs as usize;
        let mut tmp = vec![0u8; ((end_b - start_b) * bs) as usize];
        if offset & (bs - 1) != 0 {
            self.blocks_io(false, start_b, tmp.as_mut_ptr(), bsz)?;
        }
        if end & (bs - 1) != 0 && (end_b - 1 > start_b || offset & (bs - 1) == 0) {
            let at = tmp.len() - bsz;
            // SAFETY: `at` is the start of the last block of tmp.
            self.blocks_io(false, end_b - 1, unsafe { tmp.as_mut_ptr().add(at) }, bsz)?;
        }
        let o = (offset - start_b * bs) as usize;
        tmp[o..o + buf.len()].copy_from_slice(buf);
        self.blocks_io(true, start_b, tmp.as_mut_ptr(), tmp.len())
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            // Nothing written through this device; a write-protected LUN
            // may refuse SYNCHRONIZE CACHE.
            return Ok(());
        }
        self.run_one(Op::Sync, std::ptr::null_mut(), 0).map(|_| ())
    }

    fn size(&self) -> u64 {
        self.info.blocks * u64::from(self.info.block_size)
    }

    fn describe(&self) -> String {
        self.uri.clone()
    }

    fn scsi(&self) -> Option<&dyn super::scsi::ScsiLun> {
        Some(self)
    }
}

impl super::scsi::ScsiLun for IscsiDevice {
    fn inquiry_vpd(&self, page: u8, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len().min(u16::MAX as usize);
        self.run_one(Op::InquiryVpd(page), buf.as_mut_ptr(), len)
    }

    fn pr_in(&self, sa: super::scsi::PrIn, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len().min(u16::MAX as usize);
        let cdb = super::scsi::pr_in_cdb(sa, len as u16);
        self.run_one(Op::Cdb { cdb, out: false }, buf.as_mut_ptr(), len)
    }

    fn pr_out(
        &self,
        sa: super::scsi::PrOut,
        ty: Option<super::scsi::PrType>,
        key: u64,
        sa_key: u64,
    ) -> io::Result<()> {
        use super::scsi::PrOut;
        if matches!(sa, PrOut::Register | PrOut::RegisterAndIgnoreExistingKey) {
            // One registration per session (I_T nexus) of every device of
            // ours on the LUN; sessions and devices opened later register
            // too (see `grow` and `connect`).
            let mut held = lock(&self.lun.key);
            let pools: Vec<_> = lock(&self.lun.pools)
                .iter()
                .filter_map(std::sync::Weak::upgrade)
                .collect();
            for p in pools {
                let sessions = lock(&p).sessions.clone();
                for s in &sessions {
                    s.register(sa_key)?;
                }
            }
            *held = (sa_key != 0).then_some(sa_key);
            return Ok(());
        }
        let mut params = super::scsi::pr_out_params(key, sa_key);
        let cdb = super::scsi::pr_out_cdb(sa, ty);
        self.run_one(
            Op::Cdb { cdb, out: true },
            params.as_mut_ptr(),
            params.len(),
        )
        .map(|_| ())
    }
}

impl Drop for IscsiDevice {
    fn drop(&mut self) {
        let sessions = {
            let mut p = lock(&self.pool);
            p.closed = true;
            p.users.clear();
            std::mem::take(&mut p.sessions)
        };
        // All of them log out at once, then each I/O thread is joined.
        for s in &sessions {
            s.close();
        }
        drop(sessions);
    }
}
