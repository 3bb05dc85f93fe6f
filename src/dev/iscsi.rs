//! iSCSI initiator: `iscsi://[user[%secret]@]host[:port]/TARGET-IQN/LUN[?timeout=SECS]`.
//!
//! The URL is libiscsi's: CHAP user and secret before the host (the secret
//! may come from [`PASSWORD_ENV`] instead, keeping it out of the command
//! line and the mount table), `target_user=`/`target_password=` for mutual
//! CHAP. tgt puts its controller on LUN 0, the first disk on LUN 1.
//!
//! The protocol is libiscsi's (Debian's `libiscsi7`, loaded at run time by
//! the `ffi` submodule): login with or without CHAP (also mutual CHAP), READ(16),
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

mod ffi;

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

/// The IANA port of iSCSI.
pub const DEFAULT_PORT: u16 = 3260;
/// How long a request may wait for its answer, reconnections included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable overriding [`DEFAULT_TIMEOUT`], in seconds (fractions allowed).
pub const TIMEOUT_ENV: &str = "GFS2_ISCSI_TIMEOUT";
/// The CHAP secret when the URL names a user but no secret (as libiscsi's tools).
pub const PASSWORD_ENV: &str = "LIBISCSI_CHAP_PASSWORD";
/// Largest transfer of one SCSI command.
pub const MAX_CHUNK: usize = 1 << 20;
/// Our initiator name (IQN); the host name is appended.
pub const INITIATOR_PREFIX: &str = "iqn.2024-01.org.gfs2-fuse:";

/// A secret that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Where an iSCSI LUN is and how to log in to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiConfig {
    pub host: String,
    pub port: u16,
    pub target: String,
    pub lun: u32,
    pub read_only: bool,
    /// CHAP: our user name and secret (none: no authentication).
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Mutual CHAP: the name and secret the target must answer with.
    pub target_user: Option<String>,
    pub target_password: Option<Secret>,
    /// How long a request may wait (reconnections included) before EIO.
    pub timeout: Duration,
    /// `?initiator_per_session=1`: each session logs in under an initiator
    /// name of its own (ours with `.s` and the session's ISID appended)
    /// rather than one name with several ISIDs. For targets that tie
    /// persistent reservation access to the initiator name: Linux LIO
    /// lets only the holder's ISID through among sessions of the holder's
    /// name under the Registrants Only types, so the other sessions of the
    /// pNFS server's pool would meet RESERVATION CONFLICT. Not for targets
    /// that allow initiators by name (ACLs).
    pub initiator_per_session: bool,
}

impl IscsiConfig {
    /// A configuration without authentication, with the timeout from
    /// [`TIMEOUT_ENV`] or the default.
    pub fn new(host: &str, port: u16, target: &str, lun: u32) -> Self {
        IscsiConfig {
            host: host.to_string(),
            port,
            target: target.to_string(),
            lun,
            read_only: false,
            user: None,
            password: None,
            target_user: None,
            target_password: None,
            timeout: timeout_from_env(),
            initiator_per_session: false,
        }
    }

    /// `host:port`, IPv6 addresses in brackets.
    pub fn portal(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL without credentials, for messages.
    pub fn uri(&self) -> String {
        format!("iscsi://{}/{}/{}", self.portal(), self.target, self.lun)
    }
}

/// [`DEFAULT_TIMEOUT`], or [`TIMEOUT_ENV`] when it holds a positive number of seconds.
pub fn timeout_from_env() -> Duration {
    super::timeout_from(TIMEOUT_ENV, DEFAULT_TIMEOUT)
}

/// Parse the part after `iscsi://`:
/// `[user[%secret]@]host[:port]/TARGET-IQN/LUN[?timeout=S&target_user=U&target_password=P&initiator_per_session=0|1]`.
pub fn parse_spec(spec: &str, rest: &str) -> io::Result<IscsiConfig> {
    const FORM: &str = "iSCSI devices are written iscsi://[user[%secret]@]host[:port]/IQN/LUN";
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut parts = rest.splitn(3, '/');
    let authority = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let lun = parts.next().unwrap_or("");
    let (creds, hostport) = match authority.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, authority),
    };
    let (host, port) = super::spec::host_port(spec, hostport, DEFAULT_PORT)?;
    if host.is_empty() || target.is_empty() || target.contains('/') {
        return Err(invalid(spec, FORM));
    }
    let lun: u32 = lun
        .parse()
        .ok()
        .filter(|l| *l < 1 << 14)
        .ok_or_else(|| invalid(spec, format!("bad LUN {lun:?}")))?;
    let mut cfg = IscsiConfig::new(host, port, target, lun);
    if let Some(c) = creds {
        let (user, pw) = match c.split_once('%') {
            Some((u, p)) => (u, Some(p.to_string())),
            None => (c, std::env::var(PASSWORD_ENV).ok()),
        };
        if user.is_empty() {
            return Err(invalid(spec, "empty CHAP user name"));
        }
        let pw = pw.ok_or_else(|| {
            invalid(
                spec,
                format!("CHAP user {user:?} without a secret (write user%secret@ or set {PASSWORD_ENV})"),
            )
        })?;
        cfg.user = Some(user.to_string());
        cfg.password = Some(Secret(pw));
    }
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "timeout" => {
                cfg.timeout = super::parse_secs(v)
                    .ok_or_else(|| invalid(spec, format!("bad timeout {v:?}")))?;
            }
            "target_user" => cfg.target_user = Some(v.to_string()),
            "target_password" => cfg.target_password = Some(Secret(v.to_string())),
            "initiator_per_session" => {
                cfg.initiator_per_session = match v {
                    "1" => true,
                    "0" => false,
                    _ => {
                        return Err(invalid(
                            spec,
                            format!("initiator_per_session={v:?}: 0 or 1"),
                        ))
                    }
                }
            }
            _ => return Err(invalid(spec, format!("unknown parameter {k:?}"))),
        }
    }
    if cfg.target_user.is_some() != cfg.target_password.is_some() {
        return Err(invalid(
            spec,
            "mutual CHAP needs both target_user and target_password",
        ));
    }
    if cfg.target_user.is_some() && cfg.user.is_none() {
        return Err(invalid(spec, "mutual CHAP needs a user%secret@ as well"));
    }
    Ok(cfg)
}

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

// ---------------------------------------------------------------------------
// The I/O thread.

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
fn deliver(answers: Vec<Answer>) {
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

enum ConnState {
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
struct Core {
    lib: &'static ffi::Lib,
    shared: Arc<Shared>,
    /// Told the outcome of the first login, then dropped.
    first: Option<mpsc::Sender<io::Result<()>>>,
    closing: bool,
    state: ConnState,
    /// Bumped whenever the context is destroyed, so that the I/O thread
    /// never services a context that went away while it polled.
    generation: u64,
    /// The I/O thread polls for POLLOUT (else a caller that leaves data
    /// unwritten must wake it).
    poll_out: bool,
    /// Answers to deliver once the lock is released.
    answers: Vec<Answer>,
    /// Callers waiting for answers.
    active: usize,
    /// A caller (the only one waiting) polls the socket and reads the
    /// answers itself; the I/O thread leaves POLLIN to it.
    self_servicer: bool,
    reqs: BTreeMap<u64, Req>,
    next_id: u64,
    backoff: Duration,
    /// Last completion or login: for detecting a silent connection.
    progress: Instant,
    /// SYNCHRONIZE CACHE(16) refused: use (10).
    sync10: bool,
    /// A NOP-Out awaits its NOP-In.
    nop_out: bool,
    initiator: CString,
    portal: CString,
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
    fn new(
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
    fn send_waiting(&mut self, now: Instant) {
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
    fn write_out(&mut self) {
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
    fn service(&mut self, ctx: *mut ffi::Context, revents: c_int) {
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
fn io_thread(shared: Arc<Shared>, core: Arc<Mutex<Core>>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        let c = parse_spec("x", "127.0.0.1:3261/iqn.2026-01.x:t/1").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.target.as_str(), c.lun),
            ("127.0.0.1", 3261, "iqn.2026-01.x:t", 1)
        );
        assert_eq!(c.user, None);
        assert_eq!(c.uri(), "iscsi://127.0.0.1:3261/iqn.2026-01.x:t/1");
        let c = parse_spec("x", "h/iqn.a:b/0?initiator_per_session=1").unwrap();
        assert!(c.initiator_per_session);
        assert!(
            !parse_spec("x", "h/iqn.a:b/0")
                .unwrap()
                .initiator_per_session
        );
        assert!(parse_spec("x", "h/iqn.a:b/0?initiator_per_session=yes").is_err());
        let c = parse_spec("x", "u%s3cr%t@[::1]/iqn.a:b/0?timeout=2.5").unwrap();
        assert_eq!(c.host, "::1");
        assert_eq!(c.port, 3260);
        assert_eq!(c.user.as_deref(), Some("u"));
        assert_eq!(c.password, Some(Secret("s3cr%t".into())));
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.uri(), "iscsi://[::1]:3260/iqn.a:b/0");
        assert!(!format!("{c:?}").contains("s3cr"));
        let c = parse_spec("x", "u%p@h/iqn.a:b/3?target_user=t&target_password=tp").unwrap();
        assert_eq!(c.target_user.as_deref(), Some("t"));
        for bad in [
            "/iqn/1",
            "h/iqn",
            "h/iqn/x",
            "h:0/iqn/1",
            "h:99999/iqn/1",
            "h/iqn/1?bogus=1",
            "h/iqn/1?timeout=0",
            "%p@h/iqn/1",
            "h/iqn/1?target_user=t",
            "h/iqn/1?target_user=t&target_password=p",
            "[::1/iqn/1",
        ] {
            assert!(parse_spec("x", bad).is_err(), "{bad}");
        }
    }
}
