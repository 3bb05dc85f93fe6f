//! ATA over Ethernet (AoE version 1) initiator: `aoe:eSHELF.SLOT@IFACE[?timeout=SECS]`.
//!
//! AoE frames are Ethernet frames of type 0x88A2, sent and received through
//! a raw packet socket (`AF_PACKET`, which needs root or `CAP_NET_RAW`) bound
//! to the interface. Opening a device:
//!
//! 1. discovery: a config query (AoE command 1) for the shelf and slot is
//!    broadcast on the interface, then sent again to the MAC address that
//!    answered; its reply gives the target's buffer count (how many
//!    requests it can hold, our window) and the largest number of sectors
//!    one ATA command may carry (limited further by our interface's MTU);
//! 2. capacity: ATA IDENTIFY DEVICE (the LBA48 sector count, words 100-103;
//!    targets without LBA48 are addressed with LBA28 commands).
//!
//! Reads and writes are ATA READ/WRITE SECTORS EXT (0x24/0x34) with as many
//! sectors per frame as allowed. A request is split into frames, up to a
//! congestion window (at most the buffer count) of them in flight at once;
//! one thread receives replies and matches them to frames by their tag
//! (bit 31 set, as for userland AoE tools, then a random session number
//! and a sequence number). A frame without reply is sent again under a new
//! tag after an adaptive timeout (smoothed round-trip time plus four times
//! its deviation, doubled for each resend, as TCP does; samples only from
//! frames sent once), and the window is halved. A reply to any tag a frame
//! was sent under completes it. A write returns `Ok` only once the target
//! acknowledged every frame of it. A request that is not complete within the
//! timeout (default 30 s, [`TIMEOUT_ENV`] or `?timeout=SECS`) fails with
//! EIO; the device keeps working and later requests succeed once the
//! target answers again. While frames go unanswered the target is looked
//! for again by broadcast, so a target restarted on another port is found.
//! An AoE error reply or an ATA status with ERR or DF set fails the request
//! with EIO and the target's error in the message.
//!
//! Flush is ATA FLUSH CACHE EXT (0xEA); a target that aborts it is asked
//! FLUSH CACHE (0xE7), and one that aborts both has no cache to flush.
//!
//! Byte ranges that do not cover whole 512-byte sectors are written by
//! read-modify-write of the partial sectors at the ends, holding an
//! exclusive lock on the range's sectors; whole-sector writes hold a shared
//! lock on theirs, so neither can undo the other.
//!
//! Resending a write is safe on one link to one target: frames reach the
//! target in order, so a duplicate of a write is always handled before any
//! later write the caller issued after the first one was acknowledged.

use super::spec::invalid;
use super::BlockDevice;
use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a request may take, resends included, before it fails with EIO.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable overriding [`DEFAULT_TIMEOUT`], in seconds (fractions allowed).
pub const TIMEOUT_ENV: &str = "GFS2_AOE_TIMEOUT";
/// The AoE ethertype.
pub const ETH_P_AOE: u16 = 0x88A2;

const SECTOR: usize = 512;
/// Common AoE header (after the Ethernet header): ver/flags, error,
/// major (shelf), minor (slot), command, tag.
const AOE_HDR: usize = 10;
/// ATA argument header: aflags, err/feature, sector count, cmd/status,
/// lba0..lba5, two reserved bytes.
const ATA_HDR: usize = 12;
/// Config argument header: buffer count, firmware version, sector count,
/// AoE version and config command, config string length.
const CFG_HDR: usize = 8;

const VERSION: u8 = 1;
const FLAG_RESP: u8 = 1 << 3;
const FLAG_ERR: u8 = 1 << 2;
const CMD_ATA: u8 = 0;
const CMD_CONFIG: u8 = 1;
const CCMD_READ: u8 = 0;

const AFLAG_EXT: u8 = 1 << 6;
const AFLAG_WRITE: u8 = 1 << 0;

const ATA_READ: u8 = 0x20;
const ATA_READ_EXT: u8 = 0x24;
const ATA_WRITE: u8 = 0x30;
const ATA_WRITE_EXT: u8 = 0x34;
const ATA_FLUSH: u8 = 0xE7;
const ATA_FLUSH_EXT: u8 = 0xEA;
const ATA_IDENTIFY: u8 = 0xEC;

const ST_ERR: u8 = 1 << 0;
const ST_DF: u8 = 1 << 5;
const ERR_ABRT: u8 = 1 << 2;

const TAG_USER: u32 = 1 << 31;
/// How long the receiver blocks before looking whether the device closes.
const RECV_TICK: Duration = Duration::from_millis(100);

const MIN_RTO: f64 = 0.005;
const MAX_RTO: f64 = 0.5;
const INITIAL_RTO: f64 = 0.1;
/// Resends of one frame after which the target is looked for again.
const REDISCOVER_AFTER: u32 = 3;

/// Where an AoE target is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AoeConfig {
    pub shelf: u16,
    pub slot: u8,
    pub iface: String,
    pub read_only: bool,
    /// How long discovery or a request may take before failing with EIO.
    pub timeout: Duration,
}

/// [`DEFAULT_TIMEOUT`], or [`TIMEOUT_ENV`] when it holds a positive number of seconds.
pub fn timeout_from_env() -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_TIMEOUT)
}

impl AoeConfig {
    /// The spec form, `aoe:eSHELF.SLOT@IFACE`.
    pub fn name(&self) -> String {
        format!("aoe:e{}.{}@{}", self.shelf, self.slot, self.iface)
    }
}

/// Parse the part after `aoe:` (`eSHELF.SLOT@IFACE[?timeout=SECS]`).
pub fn parse_spec(spec: &str, rest: &str) -> io::Result<AoeConfig> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (target, iface) = rest
        .split_once('@')
        .ok_or_else(|| invalid(spec, "AoE devices are written aoe:eSHELF.SLOT@IFACE"))?;
    let (shelf, slot) = target
        .strip_prefix('e')
        .and_then(|t| t.split_once('.'))
        .ok_or_else(|| invalid(spec, "AoE target must be eSHELF.SLOT"))?;
    let shelf: u16 = shelf
        .parse()
        .ok()
        .filter(|s| *s != u16::MAX)
        .ok_or_else(|| invalid(spec, format!("bad AoE shelf {shelf:?} (0-65534)")))?;
    let slot: u8 = slot
        .parse()
        .ok()
        .filter(|s| *s != u8::MAX)
        .ok_or_else(|| invalid(spec, format!("bad AoE slot {slot:?} (0-254)")))?;
    if iface.is_empty() {
        return Err(invalid(spec, "no network interface after @"));
    }
    if iface.len() > 15 || iface.contains(['/', '\0']) {
        return Err(invalid(spec, format!("bad interface name {iface:?}")));
    }
    let mut timeout = timeout_from_env();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "timeout" => {
                let s: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s < 1e9)
                    .ok_or_else(|| invalid(spec, format!("bad timeout {v:?}")))?;
                timeout = Duration::from_secs_f64(s);
            }
            _ => return Err(invalid(spec, format!("unknown parameter {k:?}"))),
        }
    }
    Ok(AoeConfig {
        shelf,
        slot,
        iface: iface.to_string(),
        read_only: false,
        timeout,
    })
}

/// Open the target described by `cfg`.
pub fn open(cfg: AoeConfig) -> io::Result<Arc<dyn BlockDevice>> {
    Ok(Arc::new(AoeDevice::open(cfg)?))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn eio(msg: String) -> io::Error {
    io::Error::other(msg)
}

fn last_os(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A raw packet socket bound to one interface for AoE frames.
struct Link {
    sock: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
    mtu: usize,
}

fn sockaddr(ifindex: i32, dst: Option<&[u8; 6]>) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = ETH_P_AOE.to_be();
    sa.sll_ifindex = ifindex;
    if let Some(d) = dst {
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(d);
    }
    sa
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut m = [0u8; 6];
    let mut it = s.trim().split(':');
    for b in m.iter_mut() {
        *b = u8::from_str_radix(it.next()?, 16).ok()?;
    }
    it.next().is_none().then_some(m)
}

impl Link {
    fn open(iface: &str) -> io::Result<Link> {
        let name = CString::new(iface)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"))?;
        // SAFETY: plain socket creation; the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_AOE.to_be()),
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "AoE needs a raw packet socket (AF_PACKET, ethertype 0x88A2) on {iface}, \
                         which requires root or the CAP_NET_RAW capability ({e}); run as root or \
                         grant it, e.g. setcap cap_net_raw+ep on the binary"
                    ),
                ));
            }
            return Err(io::Error::new(
                e.kind(),
                format!("AoE packet socket on {iface}: {e}"),
            ));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: name is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no network interface {iface:?}"),
            ));
        }
        let sys = format!("/sys/class/net/{iface}");
        let mac = std::fs::read_to_string(format!("{sys}/address"))
            .ok()
            .and_then(|s| parse_mac(&s))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{iface} has no Ethernet address"),
                )
            })?;
        let mtu = std::fs::read_to_string(format!("{sys}/mtu"))
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(1500);
        let sa = sockaddr(ifindex, None);
        // SAFETY: sa is a valid sockaddr_ll of the size given.
        let r = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                &sa as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            return Err(last_os(&format!("binding the AoE socket to {iface}")));
        }
        for (opt, force) in [
            (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE),
            (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE),
        ] {
            let n: libc::c_int = 8 << 20;
            // SAFETY: setsockopt with a valid int option value.
            unsafe {
                let p = &n as *const libc::c_int as *const libc::c_void;
                let l = std::mem::size_of::<libc::c_int>() as u32;
                if libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, force, p, l) < 0 {
                    libc::setsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, opt, p, l);
                }
            }
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: RECV_TICK.as_micros() as libc::suseconds_t,
        };
        // SAFETY: setsockopt with a valid timeval.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(Link {
            sock,
            ifindex,
            mac,
            mtu,
        })
    }

    /// Send one frame made of `parts` to `dst`.
    fn send(&self, dst: &[u8; 6], parts: &[&[u8]]) -> io::Result<()> {
        let sa = sockaddr(self.ifindex, Some(dst));
        let mut iov: Vec<libc::iovec> = parts
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: msghdr is plain data; all-zero is valid before filling.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = &sa as *const libc::sockaddr_ll as *mut libc::c_void;
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        loop {
            // SAFETY: msg points at live buffers for the duration of the call.
            let r = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &msg, 0) };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receive one frame without blocking: its length and source MAC.
    /// `None` when nothing is queued.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, [u8; 6])>> {
        self.recv_flags(buf, libc::MSG_DONTWAIT)
    }

    /// Receive one frame, waiting up to [`RECV_TICK`] for it.
    fn recv_wait(&self, buf: &mut [u8]) -> io::Result<Option<(usize, [u8; 6])>> {
        self.recv_flags(buf, 0)
    }

    fn recv_flags(&self, buf: &mut [u8], flags: i32) -> io::Result<Option<(usize, [u8; 6])>> {
        loop {
            let mut sa = sockaddr(0, None);
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and sa are valid for writes of the sizes given.
            let r = unsafe {
                libc::recvfrom(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    flags,
                    &mut sa as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(None),
                    _ => return Err(e),
                }
            }
            if sa.sll_ifindex != self.ifindex || sa.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&sa.sll_addr[..6]);
            return Ok(Some((r as usize, mac)));
        }
    }

    /// Wait until a frame arrives or `timeout` passes.
    fn wait(&self, timeout: Duration) {
        let mut fd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_micros().div_ceil(1000).min(60_000) as i32;
        // SAFETY: fd is one valid pollfd.
        unsafe { libc::poll(&mut fd, 1, ms) };
    }
}

fn aoe_header(h: &mut [u8], shelf: u16, slot: u8, cmd: u8, tag: u32) {
    h[0] = VERSION << 4;
    h[1] = 0;
    h[2..4].copy_from_slice(&shelf.to_be_bytes());
    h[4] = slot;
    h[5] = cmd;
    h[6..10].copy_from_slice(&tag.to_be_bytes());
}

/// A config query (read) frame.
fn config_query(shelf: u16, slot: u8, tag: u32) -> [u8; AOE_HDR + CFG_HDR] {
    let mut f = [0u8; AOE_HDR + CFG_HDR];
    aoe_header(&mut f, shelf, slot, CMD_CONFIG, tag);
    f[AOE_HDR + 5] = (VERSION << 4) | CCMD_READ;
    f
}

/// What a config reply says.
#[derive(Debug, Clone, Copy)]
struct ConfigReply {
    mac: [u8; 6],
    bufcnt: u16,
    firmware: u16,
    scnt: u8,
}

/// Is `f` a reply from our shelf and slot? Returns (flags, error, command, tag).
fn reply_header(f: &[u8], shelf: u16, slot: u8) -> Option<(u8, u8, u8, u32)> {
    if f.len() < AOE_HDR || f[0] >> 4 != VERSION || f[0] & FLAG_RESP == 0 {
        return None;
    }
    if u16::from_be_bytes([f[2], f[3]]) != shelf || f[4] != slot {
        return None;
    }
    Some((
        f[0] & 0xf,
        f[1],
        f[5],
        u32::from_be_bytes([f[6], f[7], f[8], f[9]]),
    ))
}

fn parse_config(f: &[u8], mac: [u8; 6]) -> Option<ConfigReply> {
    if f.len() < AOE_HDR + CFG_HDR || f[0] & FLAG_ERR != 0 {
        return None;
    }
    let c = &f[AOE_HDR..];
    Some(ConfigReply {
        mac,
        bufcnt: u16::from_be_bytes([c[0], c[1]]),
        firmware: u16::from_be_bytes([c[2], c[3]]),
        scnt: c[4],
    })
}

fn aoe_error_text(e: u8) -> &'static str {
    match e {
        1 => "unrecognized command code",
        2 => "bad argument parameter",
        3 => "device unavailable",
        4 => "config string present",
        5 => "unsupported version",
        6 => "target is reserved",
        _ => "unknown error",
    }
}

/// Completion of one request, waited on by its caller.
#[derive(Default)]
struct Done {
    result: Mutex<Option<io::Result<Vec<u8>>>>,
    cv: Condvar,
}

impl Done {
    fn set(&self, r: io::Result<Vec<u8>>) {
        *lock(&self.result) = Some(r);
        self.cv.notify_all();
    }
}

/// One ATA command of a request.
struct Frame {
    req: u64,
    aflags: u8,
    cmd: u8,
    lba: u64,
    nsec: u8,
    /// Write data: the request's buffer and where this frame's part starts.
    data: Option<(Arc<Vec<u8>>, usize)>,
    /// Read data goes to this offset of the request's buffer.
    dst: usize,
    /// Bytes of data a reply must carry.
    want: usize,
    /// Every tag the frame was sent under.
    tags: Vec<u32>,
    sent: Option<Instant>,
    deadline: Instant,
    tries: u32,
}

struct Req {
    frames: Vec<u64>,
    frames_left: usize,
    buf: Vec<u8>,
    err: Option<io::Error>,
    start: Instant,
    done: Arc<Done>,
    what: String,
}

/// A frame to put on the wire (built under the lock, sent outside it).
struct Out {
    dst: [u8; 6],
    hdr: [u8; AOE_HDR + ATA_HDR],
    hlen: usize,
    data: Option<(Arc<Vec<u8>>, usize, usize)>,
}

struct State {
    reqs: HashMap<u64, Req>,
    next_req: u64,
    frames: HashMap<u64, Frame>,
    next_frame: u64,
    /// Tag -> frame.
    tags: HashMap<u32, u64>,
    queue: VecDeque<u64>,
    /// Frames sent and not answered yet.
    flying: Vec<u64>,
    /// No timer runs out before this.
    next_check: Option<Instant>,
    cwnd: f64,
    wmax: usize,
    srtt: Option<f64>,
    rttvar: f64,
    seq: u16,
    target: [u8; 6],
    last_discovery: Option<Instant>,
    closing: bool,
}

struct Inner {
    link: Link,
    cfg: AoeConfig,
    session: u32,
    state: Mutex<State>,
    /// Sectors per frame.
    max_sectors: u8,
    lba48: AtomicBool,
    /// 0: FLUSH CACHE EXT, 1: FLUSH CACHE, 2: none (both aborted).
    flush_mode: AtomicU8,
    retransmits: AtomicU64,
    timeouts: AtomicU64,
    /// The retransmission timeout in microseconds, for waiting callers.
    rto_us: AtomicU64,
    closing: AtomicBool,
}

/// Counters for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AoeStats {
    /// Frames sent again after no reply came in time.
    pub retransmits: u64,
    /// Requests failed because the timeout passed.
    pub timeouts: u64,
}

/// What discovery found.
#[derive(Debug, Clone)]
pub struct AoeInfo {
    pub target_mac: [u8; 6],
    pub bufcnt: u16,
    pub firmware: u16,
    /// Sectors per frame the target allows.
    pub target_sectors: u8,
    /// Sectors per frame used (target and our MTU).
    pub sectors_per_frame: u8,
    pub mtu: usize,
    /// Our interface's address.
    pub initiator_mac: [u8; 6],
    pub lba48: bool,
    pub sectors: u64,
}

/// An AoE target as a block device.
pub struct AoeDevice {
    inner: Arc<Inner>,
    info: AoeInfo,
    ranges: RangeLocks,
    engine: Option<JoinHandle<()>>,
}

/// Spawn a thread with every signal blocked (the daemon takes its signals
/// in one watcher thread).
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

fn session_id() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = t ^ (u64::from(std::process::id()) << 20);
    static N: AtomicU64 = AtomicU64::new(0);
    x ^= N.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x as u32) & 0x7fff
}

/// Discovery: broadcast config queries until the target answers, then
/// one to the MAC address that answered.
fn discover(link: &Link, cfg: &AoeConfig, session: u32) -> io::Result<ConfigReply> {
    let deadline = Instant::now() + cfg.timeout;
    let mut buf = vec![0u8; 65536];
    let mut attempt = 0u32;
    let mut found: Option<ConfigReply> = None;
    let mut unicast_tries = 0u32;
    loop {
        let tag = TAG_USER | (session << 16) | 0xff00 | (attempt & 0xff);
        let q = config_query(cfg.shelf, cfg.slot, tag);
        let unicast = found.is_some();
        unicast_tries += u32::from(unicast);
        let dst = found.map_or([0xff; 6], |f| f.mac);
        link.send(&dst, &[&q])
            .map_err(|e| io::Error::new(e.kind(), format!("{}: sending: {e}", cfg.name())))?;
        attempt += 1;
        let until = Instant::now() + Duration::from_millis(if attempt < 5 { 100 } else { 500 });
        'wait: loop {
            while let Some((n, src)) = link.recv(&mut buf)? {
                let f = &buf[..n];
                let Some((_, _, CMD_CONFIG, _)) = reply_header(f, cfg.shelf, cfg.slot) else {
                    continue;
                };
                let Some(c) = parse_config(f, src) else {
                    continue;
                };
                match found {
                    None => {
                        found = Some(c);
                        break 'wait;
                    }
                    Some(prev) if unicast && prev.mac == src => return Ok(c),
                    Some(_) => {}
                }
            }
            let now = Instant::now();
            if now >= until.min(deadline) {
                break;
            }
            link.wait(until.min(deadline) - now);
        }
        if Instant::now() >= deadline || unicast_tries >= 3 {
            // A target that answered broadcasts only is still a target.
            return found.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{}: no AoE target e{}.{} answered on {} within {:.1} s",
                        cfg.name(),
                        cfg.shelf,
                        cfg.slot,
                        cfg.iface,
                        cfg.timeout.as_secs_f64()
                    ),
                )
            });
        }
    }
}

impl Inner {
    fn rto(st: &State) -> f64 {
        match st.srtt {
            None => INITIAL_RTO,
            Some(s) => (s + 4.0 * st.rttvar).clamp(MIN_RTO, MAX_RTO),
        }
    }

    fn window(st: &State) -> usize {
        (st.cwnd as usize).clamp(1, st.wmax)
    }

    fn next_tag(&self, st: &mut State) -> u32 {
        loop {
            st.seq = st.seq.wrapping_add(1);
            let t = TAG_USER | (self.session << 16) | u32::from(st.seq);
            if !st.tags.contains_key(&t) {
                return t;
            }
        }
    }

    fn build(&self, st: &State, f: &Frame, tag: u32) -> Out {
        let mut hdr = [0u8; AOE_HDR + ATA_HDR];
        aoe_header(&mut hdr, self.cfg.shelf, self.cfg.slot, CMD_ATA, tag);
        let a = &mut hdr[AOE_HDR..];
        a[0] = f.aflags;
        a[2] = f.nsec;
        a[3] = f.cmd;
        let lba = f.lba.to_le_bytes();
        a[4..10].copy_from_slice(&lba[..6]);
        if f.aflags & AFLAG_EXT == 0 && matches!(f.cmd, ATA_READ | ATA_WRITE) {
            // LBA28: device register bits (LBA mode) above bit 27.
            a[7] = (a[7] & 0x0f) | 0xe0;
            a[8] = 0;
            a[9] = 0;
        }
        let data = f
            .data
            .as_ref()
            .map(|(d, off)| (d.clone(), *off, usize::from(f.nsec) * SECTOR));
        Out {
            dst: st.target,
            hdr,
            hlen: AOE_HDR + ATA_HDR,
            data,
        }
    }

    /// Move queued frames into flight while the window allows.
    fn pump(&self, st: &mut State, out: &mut Vec<Out>) {
        let now = Instant::now();
        while st.flying.len() < Self::window(st) {
            let Some(id) = st.queue.pop_front() else {
                break;
            };
            let tag = self.next_tag(st);
            let rto = Self::rto(st);
            let Some(f) = st.frames.get_mut(&id) else {
                continue; // its request already ended
            };
            f.tags.push(tag);
            f.sent = Some(now);
            f.tries = 1;
            let deadline = now + Duration::from_secs_f64(rto);
            f.deadline = deadline;
            st.tags.insert(tag, id);
            st.flying.push(id);
            st.next_check = Some(st.next_check.map_or(deadline, |n| n.min(deadline)));
            let f = &st.frames[&id];
            out.push(self.build(st, f, tag));
        }
    }

    fn send_all(&self, out: Vec<Out>) {
        for o in out {
            let r = match &o.data {
                Some((d, off, len)) => self
                    .link
                    .send(&o.dst, &[&o.hdr[..o.hlen], &d[*off..off + len]]),
                None => self.link.send(&o.dst, &[&o.hdr[..o.hlen]]),
            };
            if let Err(e) = r {
                // Like a lost frame: the timer resends it.
                tracing::debug!("{}: send: {e}", self.cfg.name());
            }
        }
    }

    /// Drop a frame: forget its tags, free its window slot.
    fn drop_frame(st: &mut State, id: u64) {
        if let Some(f) = st.frames.remove(&id) {
            for t in &f.tags {
                st.tags.remove(t);
            }
            if f.sent.is_some() {
                if let Some(i) = st.flying.iter().position(|x| *x == id) {
                    st.flying.swap_remove(i);
                }
            }
        }
    }

    /// End a request: drop its remaining frames, wake its caller.
    fn finish(st: &mut State, rid: u64, err: Option<io::Error>) {
        let Some(mut r) = st.reqs.remove(&rid) else {
            return;
        };
        for id in std::mem::take(&mut r.frames) {
            Self::drop_frame(st, id);
        }
        let err = err.or(r.err.take());
        r.done.set(match err {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut r.buf)),
        });
    }

    /// Queue a request of frames; returns its completion.
    fn submit(&self, what: String, frames: Vec<Frame>, buf_len: usize) -> io::Result<Arc<Done>> {
        let done = Arc::new(Done::default());
        let mut out = Vec::new();
        {
            let mut st = lock(&self.state);
            if st.closing {
                return Err(eio(format!("{}: device closed", self.cfg.name())));
            }
            let rid = st.next_req;
            st.next_req += 1;
            let first = st.next_frame;
            let n = frames.len() as u64;
            let start = Instant::now();
            let end = start + self.cfg.timeout;
            st.next_check = Some(st.next_check.map_or(end, |c| c.min(end)));
            st.reqs.insert(
                rid,
                Req {
                    frames: (first..first + n).collect(),
                    frames_left: frames.len(),
                    buf: vec![0u8; buf_len],
                    err: None,
                    start,
                    done: done.clone(),
                    what,
                },
            );
            for mut f in frames {
                f.req = rid;
                let id = st.next_frame;
                st.next_frame += 1;
                st.frames.insert(id, f);
                st.queue.push_back(id);
            }
            self.pump(&mut st, &mut out);
        }
        self.send_all(out);
        Ok(done)
    }

    /// Wait for a request to complete. Waiting callers run the timers:
    /// whoever waits longer than a retransmission timeout resends what is
    /// due and fails what is past the timeout, so the receiver never needs
    /// waking for timers.
    fn wait(&self, done: &Done) -> io::Result<Vec<u8>> {
        // The margin only guards against timers that stopped running.
        let limit = Instant::now() + self.cfg.timeout + Duration::from_secs(10);
        let mut g = lock(&done.result);
        loop {
            if let Some(r) = g.take() {
                return r;
            }
            let now = Instant::now();
            if now >= limit {
                return Err(eio(format!("{}: no completion", self.cfg.name())));
            }
            let tick = Duration::from_micros(self.rto_us.load(Ordering::Relaxed))
                .clamp(Duration::from_millis(1), Duration::from_secs_f64(MAX_RTO));
            let (g2, t) = done
                .cv
                .wait_timeout(g, tick.min(limit - now))
                .unwrap_or_else(|p| p.into_inner());
            g = g2;
            if t.timed_out() && g.is_none() {
                drop(g);
                let mut out = Vec::new();
                {
                    let mut st = lock(&self.state);
                    if st.closing {
                        return Err(eio(format!("{}: device closed", self.cfg.name())));
                    }
                    self.on_timer(&mut st, &mut out);
                }
                self.send_all(out);
                g = lock(&done.result);
            }
        }
    }

    /// Handle one received frame.
    fn on_frame(&self, st: &mut State, f: &[u8], src: [u8; 6], out: &mut Vec<Out>) {
        let Some((flags, err, cmd, tag)) = reply_header(f, self.cfg.shelf, self.cfg.slot) else {
            return;
        };
        if cmd == CMD_CONFIG {
            if let Some(c) = parse_config(f, src) {
                // Another port answers for our shelf and slot while frames
                // go unanswered: the target moved.
                let stuck = st.flying.iter().any(|id| {
                    st.frames
                        .get(id)
                        .is_some_and(|f| f.tries > REDISCOVER_AFTER)
                });
                if c.mac != st.target && stuck {
                    tracing::warn!(
                        "{}: target now answers from {}",
                        self.cfg.name(),
                        fmt_mac(&c.mac)
                    );
                    st.target = c.mac;
                    st.wmax = usize::from(c.bufcnt).clamp(1, 256);
                }
            }
            return;
        }
        if cmd != CMD_ATA {
            return;
        }
        let Some(&id) = st.tags.get(&tag) else {
            return; // a late duplicate, or not ours
        };
        let now = Instant::now();
        let Some(fr) = st.frames.get(&id) else {
            return;
        };
        let (rid, tries, sent, want, dst, fcmd, flba) =
            (fr.req, fr.tries, fr.sent, fr.want, fr.dst, fr.cmd, fr.lba);
        Self::drop_frame(st, id);
        if tries == 1 {
            if let Some(s) = sent {
                let sample = now.saturating_duration_since(s).as_secs_f64();
                match st.srtt {
                    None => {
                        st.srtt = Some(sample);
                        st.rttvar = sample / 2.0;
                    }
                    Some(srtt) => {
                        st.rttvar = 0.75 * st.rttvar + 0.25 * (srtt - sample).abs();
                        st.srtt = Some(0.875 * srtt + 0.125 * sample);
                    }
                }
                self.rto_us
                    .store((Self::rto(st) * 1e6) as u64, Ordering::Relaxed);
            }
        }
        st.cwnd = (st.cwnd + 1.0 / st.cwnd.max(1.0)).min(st.wmax as f64);
        let Some(r) = st.reqs.get_mut(&rid) else {
            self.pump(st, out);
            return;
        };
        r.frames_left = r.frames_left.saturating_sub(1);
        let mut failed = None;
        let name = &self.cfg;
        if flags & FLAG_ERR != 0 {
            failed = Some(eio(format!(
                "{}: {}: AoE error {err} ({}) for ATA command {fcmd:#04x} at sector {flba}",
                name.name(),
                r.what,
                aoe_error_text(err)
            )));
        } else if f.len() < AOE_HDR + ATA_HDR {
            failed = Some(eio(format!(
                "{}: short ATA reply ({} bytes)",
                name.name(),
                f.len()
            )));
        } else {
            let a = &f[AOE_HDR..AOE_HDR + ATA_HDR];
            let (aerr, status) = (a[1], a[3]);
            if status & (ST_ERR | ST_DF) != 0 {
                let mut e = eio(format!(
                    "{}: {}: ATA error for command {fcmd:#04x} at sector {flba}: \
                     status {status:#04x}, error {aerr:#04x}",
                    name.name(),
                    r.what
                ));
                if aerr & ERR_ABRT != 0 && matches!(fcmd, ATA_FLUSH | ATA_FLUSH_EXT) {
                    e = io::Error::new(io::ErrorKind::Unsupported, e.to_string());
                }
                failed = Some(e);
            } else if want > 0 {
                let d = &f[AOE_HDR + ATA_HDR..];
                if d.len() < want {
                    failed = Some(eio(format!(
                        "{}: read reply with {} bytes, {want} expected",
                        name.name(),
                        d.len()
                    )));
                } else if let Some(slot) = r.buf.get_mut(dst..dst + want) {
                    slot.copy_from_slice(&d[..want]);
                }
            }
        }
        if let Some(e) = failed {
            r.err.get_or_insert(e);
            // Frames of the request not sent yet are not sent at all (the
            // queue skips frames that are gone); those in flight are
            // waited for, so the target is not sent more than its window.
            let unsent: Vec<u64> = r
                .frames
                .iter()
                .copied()
                .filter(|id| st.frames.get(id).is_some_and(|f| f.sent.is_none()))
                .collect();
            r.frames_left = r.frames_left.saturating_sub(unsent.len());
            for id in unsent {
                st.frames.remove(&id);
            }
        }
        if r.frames_left == 0 {
            Self::finish(st, rid, None);
        }
        self.pump(st, out);
    }

    /// Resend frames whose timer ran out, fail requests past the timeout.
    fn on_timer(&self, st: &mut State, out: &mut Vec<Out>) {
        let now = Instant::now();
        match st.next_check {
            Some(c) if c <= now => {}
            _ => return,
        }
        let timeout = self.cfg.timeout;
        let expired: Vec<u64> = st
            .reqs
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.start) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for rid in expired {
            let what = st
                .reqs
                .get(&rid)
                .map(|r| r.what.clone())
                .unwrap_or_default();
            self.timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "{}: {what}: no reply within {:.1} s",
                self.cfg.name(),
                timeout.as_secs_f64()
            );
            let e = io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{}: {what}: the target did not answer within {:.1} s (EIO)",
                    self.cfg.name(),
                    timeout.as_secs_f64()
                ),
            );
            Self::finish(st, rid, Some(e));
        }
        let rto = Self::rto(st);
        let due: Vec<u64> = st
            .flying
            .iter()
            .copied()
            .filter(|id| st.frames.get(id).is_some_and(|f| f.deadline <= now))
            .collect();
        if !due.is_empty() {
            st.cwnd = (st.cwnd / 2.0).max(1.0);
        }
        let mut stuck = false;
        for id in due {
            let tag = self.next_tag(st);
            let Some(f) = st.frames.get_mut(&id) else {
                continue;
            };
            f.tries += 1;
            stuck |= f.tries > REDISCOVER_AFTER;
            let back = (rto * f64::from(1u32 << (f.tries - 1).min(10))).min(MAX_RTO);
            f.deadline = now + Duration::from_secs_f64(back);
            f.tags.push(tag);
            st.tags.insert(tag, id);
            self.retransmits.fetch_add(1, Ordering::Relaxed);
            let f = &st.frames[&id];
            out.push(self.build(st, f, tag));
        }
        if stuck
            && match st.last_discovery {
                None => true,
                Some(t) => now.saturating_duration_since(t) >= Duration::from_secs(1),
            }
        {
            st.last_discovery = Some(now);
            let tag = TAG_USER | (self.session << 16) | 0xffff;
            let q = config_query(self.cfg.shelf, self.cfg.slot, tag);
            let mut hdr = [0u8; AOE_HDR + ATA_HDR];
            hdr[..q.len()].copy_from_slice(&q);
            out.push(Out {
                dst: [0xff; 6],
                hdr,
                hlen: q.len(),
                data: None,
            });
        }
        self.pump(st, out);
        let mut next: Option<Instant> = None;
        for f in st.flying.iter().filter_map(|id| st.frames.get(id)) {
            next = Some(next.map_or(f.deadline, |n| n.min(f.deadline)));
        }
        for r in st.reqs.values() {
            let t = r.start + timeout;
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        st.next_check = next;
    }

    /// The receiver thread: one frame at a time (the lock is not held
    /// while receiving), new frames sent as soon as the window opens.
    fn run(self: Arc<Self>) {
        let mut buf = vec![0u8; 65536];
        let mut out = Vec::new();
        loop {
            let got = match self.link.recv_wait(&mut buf) {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!("{}: receive: {e}", self.cfg.name());
                    std::thread::sleep(Duration::from_millis(10));
                    None
                }
            };
            let Some((n, src)) = got else {
                if self.closing.load(Ordering::Acquire) {
                    // Nobody waits any more: the device is being dropped.
                    return;
                }
                continue;
            };
            let mut st = lock(&self.state);
            self.on_frame(&mut st, &buf[..n], src, &mut out);
            drop(st);
            self.send_all(std::mem::take(&mut out));
        }
    }
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl AoeDevice {
    /// Discover the target, identify it and start the receiver.
    pub fn open(cfg: AoeConfig) -> io::Result<AoeDevice> {
        let name = cfg.name();
        let link =
            Link::open(&cfg.iface).map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))?;
        let session = session_id();
        let c = discover(&link, &cfg, session)?;
        // Sectors per frame: what the target takes and what fits our MTU.
        let ours = link.mtu.saturating_sub(AOE_HDR + ATA_HDR) / SECTOR;
        let target_sectors = if c.scnt == 0 { 2 } else { c.scnt };
        let spf = (ours.min(usize::from(target_sectors))).clamp(1, 255) as u8;
        let wmax = usize::from(c.bufcnt).clamp(1, 256);
        tracing::info!(
            "{name}: target {} (firmware {:#x}), buffer count {}, {} sectors per frame",
            fmt_mac(&c.mac),
            c.firmware,
            c.bufcnt,
            spf
        );
        let inner = Arc::new(Inner {
            link,
            cfg,
            session,
            state: Mutex::new(State {
                reqs: HashMap::new(),
                next_req: 0,
                frames: HashMap::new(),
                next_frame: 0,
                tags: HashMap::new(),
                queue: VecDeque::new(),
                flying: Vec::new(),
                next_check: None,
                cwnd: wmax as f64,
                wmax,
                srtt: None,
                rttvar: 0.0,
                seq: 0,
                target: c.mac,
                last_discovery: None,
                closing: false,
            }),
            max_sectors: spf,
            lba48: AtomicBool::new(true),
            flush_mode: AtomicU8::new(0),
            retransmits: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            rto_us: AtomicU64::new((INITIAL_RTO * 1e6) as u64),
            closing: AtomicBool::new(false),
        });
        let me = inner.clone();
        let engine = spawn_quiet("aoe-rx", move || me.run())?;
        let mut dev = AoeDevice {
            inner,
            info: AoeInfo {
                target_mac: c.mac,
                bufcnt: c.bufcnt,
                firmware: c.firmware,
                target_sectors,
                sectors_per_frame: spf,
                mtu: 0,
                initiator_mac: [0; 6],
                lba48: true,
                sectors: 0,
            },
            ranges: RangeLocks::default(),
            engine: Some(engine),
        };
        dev.info.mtu = dev.inner.link.mtu;
        dev.info.initiator_mac = dev.inner.link.mac;
        let id = dev.identify()?;
        let w = |i: usize| u64::from(u16::from_le_bytes([id[2 * i], id[2 * i + 1]]));
        let lba48 = w(83) & (1 << 10) != 0;
        let sectors = if lba48 {
            w(100) | w(101) << 16 | w(102) << 32 | w(103) << 48
        } else {
            w(60) | w(61) << 16
        };
        if sectors == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name}: IDENTIFY DEVICE reports no sectors"),
            ));
        }
        dev.inner.lba48.store(lba48, Ordering::Relaxed);
        dev.info.lba48 = lba48;
        dev.info.sectors = sectors;
        Ok(dev)
    }

    /// What discovery and IDENTIFY found.
    pub fn info(&self) -> &AoeInfo {
        &self.info
    }

    /// Resends and timeouts so far.
    pub fn stats(&self) -> AoeStats {
        AoeStats {
            retransmits: self.inner.retransmits.load(Ordering::Relaxed),
            timeouts: self.inner.timeouts.load(Ordering::Relaxed),
        }
    }

    fn frame(aflags: u8, cmd: u8, lba: u64, nsec: u8) -> Frame {
        Frame {
            req: 0,
            aflags,
            cmd,
            lba,
            nsec,
            data: None,
            dst: 0,
            want: 0,
            tags: Vec::new(),
            sent: None,
            deadline: Instant::now(),
            tries: 0,
        }
    }

    fn identify(&self) -> io::Result<Vec<u8>> {
        let mut f = Self::frame(0, ATA_IDENTIFY, 0, 1);
        f.want = SECTOR;
        let done = self
            .inner
            .submit("IDENTIFY DEVICE".into(), vec![f], SECTOR)?;
        self.inner.wait(&done)
    }

    fn rw_cmd(&self, write: bool) -> (u8, u8) {
        let ext = self.inner.lba48.load(Ordering::Relaxed);
        match (write, ext) {
            (false, true) => (AFLAG_EXT, ATA_READ_EXT),
            (false, false) => (0, ATA_READ),
            (true, true) => (AFLAG_EXT | AFLAG_WRITE, ATA_WRITE_EXT),
            (true, false) => (AFLAG_WRITE, ATA_WRITE),
        }
    }

    /// Read whole sectors `[lba, lba + n)`.
    fn read_sectors(&self, lba: u64, n: u64) -> io::Result<Vec<u8>> {
        let (aflags, cmd) = self.rw_cmd(false);
        let spf = u64::from(self.inner.max_sectors);
        let mut frames = Vec::with_capacity(n.div_ceil(spf) as usize);
        let mut s = 0;
        while s < n {
            let k = (n - s).min(spf);
            let mut f = Self::frame(aflags, cmd, lba + s, k as u8);
            f.dst = s as usize * SECTOR;
            f.want = k as usize * SECTOR;
            frames.push(f);
            s += k;
        }
        let what = format!("read of {n} sectors at {lba}");
        let done = self.inner.submit(what, frames, n as usize * SECTOR)?;
        self.inner.wait(&done)
    }

    /// Write whole sectors from `data` at `lba`.
    fn write_sectors(&self, lba: u64, data: Vec<u8>) -> io::Result<()> {
        let (aflags, cmd) = self.rw_cmd(true);
        let n = (data.len() / SECTOR) as u64;
        let data = Arc::new(data);
        let spf = u64::from(self.inner.max_sectors);
        let mut frames = Vec::with_capacity(n.div_ceil(spf) as usize);
        let mut s = 0;
        while s < n {
            let k = (n - s).min(spf);
            let mut f = Self::frame(aflags, cmd, lba + s, k as u8);
            f.data = Some((data.clone(), s as usize * SECTOR));
            frames.push(f);
            s += k;
        }
        let what = format!("write of {n} sectors at {lba}");
        let done = self.inner.submit(what, frames, 0)?;
        self.inner.wait(&done).map(|_| ())
    }

    fn check_range(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: {len} bytes at {offset} go past the end ({} bytes)",
                    self.inner.cfg.name(),
                    self.size()
                ),
            )),
        }
    }
}

impl Drop for AoeDevice {
    fn drop(&mut self) {
        lock(&self.inner.state).closing = true;
        self.inner.closing.store(true, Ordering::Release);
        if let Some(e) = self.engine.take() {
            let _ = e.join();
        }
    }
}

/// Locks on sector ranges: shared for whole-sector writes, exclusive for
/// read-modify-write.
#[derive(Default)]
struct RangeLocks {
    held: Mutex<Vec<(u64, u64, bool)>>,
    cv: Condvar,
}

struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    entry: (u64, u64, bool),
}

impl RangeLocks {
    fn lock(&self, start: u64, end: u64, exclusive: bool) -> RangeGuard<'_> {
        let mut h = lock(&self.held);
        while h
            .iter()
            .any(|&(s, e, x)| s < end && start < e && (x || exclusive))
        {
            h = self.cv.wait(h).unwrap_or_else(|p| p.into_inner());
        }
        let entry = (start, end, exclusive);
        h.push(entry);
        RangeGuard { locks: self, entry }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut h = lock(&self.locks.held);
        if let Some(i) = h.iter().position(|e| *e == self.entry) {
            h.swap_remove(i);
        }
        drop(h);
        self.locks.cv.notify_all();
    }
}

impl BlockDevice for AoeDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_range(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let s = offset / SECTOR as u64;
        let e = (offset + buf.len() as u64).div_ceil(SECTOR as u64);
        let d = self.read_sectors(s, e - s)?;
        let skip = (offset - s * SECTOR as u64) as usize;
        buf.copy_from_slice(&d[skip..skip + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.inner.cfg.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.check_range(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let sz = SECTOR as u64;
        let s = offset / sz;
        let e = (offset + buf.len() as u64).div_ceil(sz);
        let aligned = offset & (sz - 1) == 0 && buf.len() & (SECTOR - 1) == 0;
        let _g = self.ranges.lock(s, e, !aligned);
        if aligned {
            return self.write_sectors(s, buf.to_vec());
        }
        // Read-modify-write of the partial sectors at either end.
        let mut tmp = vec![0u8; ((e - s) * sz) as usize];
        let skip = (offset - s * sz) as usize;
        if skip != 0 {
            let d = self.read_sectors(s, 1)?;
            tmp[..SECTOR].copy_from_slice(&d);
        }
        let tail = (offset + buf.len() as u64) % sz;
        if tail != 0 && (e - 1 != s || skip == 0) {
            let d = self.read_sectors(e - 1, 1)?;
            let at = tmp.len() - SECTOR;
            tmp[at..].copy_from_slice(&d);
        }
        tmp[skip..skip + buf.len()].copy_from_slice(buf);
        self.write_sectors(s, tmp)
    }

    fn flush(&self) -> io::Result<()> {
        if self.inner.cfg.read_only {
            return Ok(());
        }
        loop {
            let (aflags, cmd) = match self.inner.flush_mode.load(Ordering::Relaxed) {
                0 => (AFLAG_EXT, ATA_FLUSH_EXT),
                1 => (0, ATA_FLUSH),
                _ => return Ok(()),
            };
            let f = Self::frame(aflags, cmd, 0, 0);
            let done = self.inner.submit("flush".into(), vec![f], 0)?;
            match self.inner.wait(&done) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    tracing::info!("{}: target aborts {cmd:#04x}", self.inner.cfg.name());
                    self.inner
                        .flush_mode
                        .fetch_max(if cmd == ATA_FLUSH_EXT { 1 } else { 2 }, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn size(&self) -> u64 {
        self.info.sectors * SECTOR as u64
    }

    fn describe(&self) -> String {
        self.inner.cfg.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let c = parse_spec("aoe:e7.3@veth0?timeout=2.5", "e7.3@veth0?timeout=2.5").unwrap();
        assert_eq!((c.shelf, c.slot, c.iface.as_str()), (7, 3, "veth0"));
        assert_eq!(c.timeout, Duration::from_millis(2500));
        for bad in [
            "e1.1",
            "e1.1@",
            "1.1@eth0",
            "e65535.1@eth0",
            "e1.255@eth0",
            "e1.1@eth0?timeout=0",
            "e1.1@eth0?x=1",
            "e1.1@a/b",
        ] {
            assert!(parse_spec(bad, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers() {
        let q = config_query(0x0102, 9, 0x8000_0001);
        assert_eq!(q[0], 0x10);
        assert_eq!(&q[2..6], &[1, 2, 9, CMD_CONFIG]);
        assert_eq!(&q[6..10], &[0x80, 0, 0, 1]);
        assert_eq!(q[AOE_HDR + 5], 0x10);
        let mut r = q;
        r[0] |= FLAG_RESP;
        assert_eq!(reply_header(&r, 0x0102, 9).map(|h| h.2), Some(CMD_CONFIG));
        assert!(reply_header(&r, 0x0102, 8).is_none());
        assert!(
            reply_header(&q, 0x0102, 9).is_none(),
            "requests are not replies"
        );
        assert_eq!(
            parse_mac("02:00:0a:ff:00:01\n"),
            Some([2, 0, 10, 255, 0, 1])
        );
        assert_eq!(parse_mac("02:00"), None);
    }
}
