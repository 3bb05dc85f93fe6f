//! ATA over Ethernet (AoE version 1) initiator: `aoe:eSHELF.SLOT@IFACE[?timeout=SECS]`.
//!
//! AoE frames are Ethernet frames of type 0x88A2, sent and received through
//! a raw packet socket (`AF_PACKET`, which needs root or `CAP_NET_RAW`) bound
//! to the interface (the `link` submodule). Opening a device:
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
//! sectors per frame as allowed. A request is split into frames; all
//! requests together keep at most a congestion window of frames in flight
//! (at most the target's buffer count, halved when frames are lost, grown
//! again by one per window of replies). There is no receiver thread: each
//! request runs in its caller's thread on a packet socket of its own (from
//! a pool), whose socket filter passes only replies to that socket's tags
//! (bit 31 set, as for userland AoE tools, then 15 bits naming the socket,
//! then a sequence number), so a caller sends its frames (in one sendmmsg),
//! receives its own replies (those that arrived together in one recvmmsg)
//! and wakes nobody else. On a fast target a caller polls for its replies,
//! yielding the processor, for up to twice the round-trip time (at most
//! [`DEFAULT_POLL`], or [`POLL_ENV`]) before it sleeps: a context switch per
//! reply otherwise costs more than the round trip itself.
//!
//! A frame without reply is sent again under a new tag after an adaptive
//! timeout (smoothed round-trip time plus four times its deviation, doubled
//! for each resend, as TCP does; samples only from frames sent once). A
//! reply to any tag a frame was sent under completes it. Read data goes
//! straight into the caller's buffer and write data straight from it. A
//! write returns `Ok` only once the target acknowledged every frame of it.
//! A request that is not complete within the timeout (default 30 s,
//! [`TIMEOUT_ENV`] or `?timeout=SECS`) fails with EIO; the device keeps
//! working and later requests succeed once the target answers again. While
//! frames go unanswered the target is looked for again by broadcast, so a
//! target restarted on another port is found.
//! An AoE error reply or an ATA status with ERR or DF set fails the request
//! with EIO and the target's error in the message (frames of the request
//! not sent yet are not sent).
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
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod link;

use link::Link;

/// How long a request may take, resends included, before it fails with EIO.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable overriding [`DEFAULT_TIMEOUT`], in seconds (fractions allowed).
pub const TIMEOUT_ENV: &str = "GFS2_AOE_TIMEOUT";
/// The AoE ethertype.
pub const ETH_P_AOE: u16 = 0x88A2;
/// The longest a caller polls for a reply before it sleeps (twice the
/// smoothed round-trip time, when that is below 1 ms).
pub const DEFAULT_POLL: Duration = Duration::from_micros(100);
/// Round-trip times above which callers do not poll (a target that far
/// away answers long after any budget worth spending).
const POLL_RTT_LIMIT: f64 = 0.001;
/// Environment variable overriding [`DEFAULT_POLL`], in microseconds (at
/// most 10,000); 0 turns polling off (every wait sleeps in the kernel).
pub const POLL_ENV: &str = "GFS2_AOE_POLL_US";

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
/// How long a caller blocks in receive before looking at its timers.
const RECV_TICK: Duration = Duration::from_millis(2);

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
    super::timeout_from(TIMEOUT_ENV, DEFAULT_TIMEOUT)
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
                timeout = super::parse_secs(v)
                    .ok_or_else(|| invalid(spec, format!("bad timeout {v:?}")))?;
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

/// One ATA command of a request: its registers and where its data is in
/// the caller's buffer.
#[derive(Clone, Copy)]
struct FrameSpec {
    aflags: u8,
    cmd: u8,
    lba: u64,
    nsec: u8,
    /// Byte offset of this frame's data in the request's buffer.
    off: usize,
    /// Bytes of data a reply must carry (reads).
    want: usize,
}

/// A frame in flight.
struct Flying {
    /// Every tag it was sent under (a reply to any of them completes it).
    tags: Vec<u32>,
    sent: Instant,
    deadline: Instant,
    tries: u32,
}

/// What the callers share: where the target is, how fast it answers, how
/// many frames it may hold.
struct Shared {
    target: [u8; 6],
    wmax: usize,
    cwnd: f64,
    inflight: usize,
    /// Callers waiting for a slot with nothing in flight.
    waiting: usize,
    srtt: Option<f64>,
    rttvar: f64,
    last_discovery: Option<Instant>,
}

impl Shared {
    fn rto(&self) -> f64 {
        match self.srtt {
            None => INITIAL_RTO,
            Some(s) => (s + 4.0 * self.rttvar).clamp(MIN_RTO, MAX_RTO),
        }
    }
    fn window(&self) -> usize {
        (self.cwnd as usize).clamp(1, self.wmax)
    }

    /// How long a caller with frames in flight polls its socket (giving
    /// the processor away between looks) before it sleeps in the kernel.
    /// Sleeping costs a context switch per reply, which on a fast target
    /// is most of the round trip: a single-threaded client with the same
    /// frames in flight got 1.5 times our small-request rate. Polling for
    /// up to twice the smoothed round-trip time catches most replies
    /// awake (at most `max`); a target slower than [`POLL_RTT_LIMIT`] is
    /// not polled for at all, as its replies would mostly come after the
    /// budget anyway.
    fn poll_budget(&self, max: Duration) -> Duration {
        match self.srtt {
            Some(s) if s > 0.0 && s <= POLL_RTT_LIMIT => Duration::from_secs_f64(2.0 * s).min(max),
            _ => Duration::ZERO,
        }
    }
}

struct Inner {
    cfg: AoeConfig,
    next_link: AtomicU32,
    /// Sockets not in use by a request.
    links: Mutex<Vec<Link>>,
    shared: Mutex<Shared>,
    /// Signalled when window slots free up.
    slots: Condvar,
    /// Sectors per frame.
    max_sectors: u8,
    lba48: AtomicBool,
    /// 0: FLUSH CACHE EXT, 1: FLUSH CACHE, 2: none (both aborted).
    flush_mode: AtomicU8,
    retransmits: AtomicU64,
    timeouts: AtomicU64,
    /// The longest a caller polls for a reply ([`POLL_ENV`]).
    poll_max: Duration,
}

/// Counters for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AoeStats {
    /// Frames sent again after no reply came in time.
    pub retransmits: u64,
    /// Requests failed because the timeout passed.
    pub timeouts: u64,
    /// Packet sockets opened (one per request running at once).
    pub sockets: u64,
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
    inner: Inner,
    info: AoeInfo,
    ranges: super::rangelock::RangeLocks,
}

/// A random 15-bit number (socket ids, sequence starts).
fn random_id() -> u32 {
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
fn discover(link: &mut Link, cfg: &AoeConfig) -> io::Result<ConfigReply> {
    let deadline = Instant::now() + cfg.timeout;
    let mut buf = std::mem::take(&mut link.scratch);
    let r = discover_with(link, cfg, deadline, &mut buf);
    link.scratch = buf;
    r
}

fn discover_with(
    link: &Link,
    cfg: &AoeConfig,
    deadline: Instant,
    buf: &mut [u8],
) -> io::Result<ConfigReply> {
    let mut attempt = 0u32;
    let mut found: Option<ConfigReply> = None;
    let mut unicast_tries = 0u32;
    loop {
        let tag = link.tag_base() | 0xff00 | (attempt & 0xff);
        let q = config_query(cfg.shelf, cfg.slot, tag);
        let unicast = found.is_some();
        unicast_tries += u32::from(unicast);
        let dst = found.map_or([0xff; 6], |f| f.mac);
        link.send(&dst, &[&q])
            .map_err(|e| io::Error::new(e.kind(), format!("{}: sending: {e}", cfg.name())))?;
        attempt += 1;
        let until = Instant::now() + Duration::from_millis(if attempt < 5 { 100 } else { 500 });
        'wait: loop {
            while let Some((n, src)) = link.recv(buf)? {
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

/// Window slots given to a caller, where and how to send, and how long
/// to poll for the replies.
struct Grant {
    n: usize,
    dst: [u8; 6],
    rto: f64,
    poll: Duration,
}

/// The data a frame carries: its slice of a write's buffer, none for reads.
fn frame_data<'a>(f: &FrameSpec, wdata: Option<&'a [u8]>) -> &'a [u8] {
    match wdata {
        Some(d) => &d[f.off..f.off + usize::from(f.nsec) * SECTOR],
        None => &[],
    }
}

impl Inner {
    fn take_link(&self) -> io::Result<Link> {
        if let Some(l) = lock(&self.links).pop() {
            return Ok(l);
        }
        // A random id: other initiators on this host pick theirs at random too.
        self.next_link.fetch_add(1, Ordering::Relaxed);
        Link::open(&self.cfg.iface, random_id())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.cfg.name())))
    }

    fn put_link(&self, l: Link) {
        lock(&self.links).push(l);
    }

    /// Take up to `want` window slots for a caller with `mine` frames in
    /// flight, with the target's address, the resend timeout and the
    /// polling budget, in one acquisition of the lock. A caller with none
    /// waits for a slot until `end` (`None` when it passes); one with some
    /// takes only free slots (possibly none), and leaves half of the window
    /// to callers waiting.
    fn take_slots(&self, mine: usize, want: usize, end: Instant) -> Option<Grant> {
        let mut sh = lock(&self.shared);
        if mine == 0 {
            while sh.inflight >= sh.window() {
                let now = Instant::now();
                if now >= end {
                    return None;
                }
                sh.waiting += 1;
                sh = self
                    .slots
                    .wait_timeout(sh, end - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                sh.waiting -= 1;
            }
        }
        let mut n = 0;
        while n < want && sh.inflight < sh.window() {
            let fair = n + mine == 0 || sh.waiting == 0 || (mine + n) * 2 < sh.window();
            if !fair {
                break;
            }
            sh.inflight += 1;
            n += 1;
        }
        Some(Grant {
            n,
            dst: sh.target,
            rto: sh.rto(),
            poll: sh.poll_budget(self.poll_max),
        })
    }

    /// Give back `n` slots; `sample` is the round-trip time of a frame
    /// sent once.
    fn release(&self, n: usize, sample: Option<f64>, answered: bool) {
        let mut sh = lock(&self.shared);
        sh.inflight = sh.inflight.saturating_sub(n);
        if answered {
            sh.cwnd = (sh.cwnd + 1.0 / sh.cwnd.max(1.0)).min(sh.wmax as f64);
        }
        if let Some(s) = sample {
            match sh.srtt {
                None => {
                    sh.srtt = Some(s);
                    sh.rttvar = s / 2.0;
                }
                Some(srtt) => {
                    sh.rttvar = 0.75 * sh.rttvar + 0.25 * (srtt - s).abs();
                    sh.srtt = Some(0.875 * srtt + 0.125 * s);
                }
            }
        }
        // (A wake-up is a system call: none when nobody waits for a slot.)
        let waiting = sh.waiting > 0;
        drop(sh);
        if waiting {
            self.slots.notify_all();
        }
    }

    fn header(&self, f: &FrameSpec, tag: u32) -> [u8; AOE_HDR + ATA_HDR] {
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
        hdr
    }

    fn send_frame(
        &self,
        link: &Link,
        f: &FrameSpec,
        tag: u32,
        wdata: Option<&[u8]>,
        dst: &[u8; 6],
    ) {
        let hdr = self.header(f, tag);
        if let Err(e) = link.send(dst, &[&hdr, frame_data(f, wdata)]) {
            // Like a lost frame: the timer resends it.
            tracing::debug!("{}: send: {e}", self.cfg.name());
        }
    }

    /// Send several frames of a request in one system call.
    fn send_frames(
        &self,
        link: &Link,
        fs: &[FrameSpec],
        tags: &[u32],
        wdata: Option<&[u8]>,
        dst: &[u8; 6],
    ) {
        if let [f] = fs {
            return self.send_frame(link, f, tags[0], wdata, dst);
        }
        let hdrs: Vec<[u8; AOE_HDR + ATA_HDR]> = fs
            .iter()
            .zip(tags)
            .map(|(f, &t)| self.header(f, t))
            .collect();
        let frames: Vec<[&[u8]; 2]> = fs
            .iter()
            .zip(&hdrs)
            .map(|(f, h)| [h.as_slice(), frame_data(f, wdata)])
            .collect();
        if let Err(e) = link.send_many(dst, &frames) {
            // Like lost frames: the timers resend them.
            tracing::debug!("{}: send: {e}", self.cfg.name());
        }
    }

    /// Run the frames of one request: data for writes from `wdata`, read
    /// data into `rbuf`.
    fn exec(
        &self,
        what: &dyn Fn() -> String,
        frames: &[FrameSpec],
        wdata: Option<&[u8]>,
        rbuf: Option<&mut [u8]>,
    ) -> io::Result<()> {
        let mut link = self.take_link()?;
        let mut scratch = std::mem::take(&mut link.scratch);
        let r = self.exec_on(&mut link, &mut scratch, what, frames, wdata, rbuf);
        link.scratch = scratch;
        self.put_link(link);
        r
    }

    /// The request's own socket sees only replies to its tags (a socket
    /// filter), so the caller receives its replies itself.
    fn exec_on(
        &self,
        link: &mut Link,
        buf: &mut [u8],
        what: &dyn Fn() -> String,
        frames: &[FrameSpec],
        wdata: Option<&[u8]>,
        mut rbuf: Option<&mut [u8]>,
    ) -> io::Result<()> {
        let start = Instant::now();
        let end = start + self.cfg.timeout;
        let mut poll = Duration::ZERO;
        // Frames in flight: (index in `frames`, state); at most a window.
        let mut flying: Vec<(usize, Flying)> = Vec::new();
        let mut next = 0usize;
        let mut err: Option<io::Error> = None;
        let mut next_timer: Option<Instant> = None;
        loop {
            // Send while the window allows; with nothing in flight, wait
            // for a slot.
            while err.is_none() && next < frames.len() {
                let Some(g) = self.take_slots(flying.len(), frames.len() - next, end) else {
                    return Err(self.timed_out(what, 0));
                };
                if g.n == 0 {
                    break;
                }
                poll = g.poll;
                let tags: Vec<u32> = (0..g.n).map(|_| link.next_tag()).collect();
                let now = Instant::now();
                self.send_frames(link, &frames[next..next + g.n], &tags, wdata, &g.dst);
                let deadline = now + Duration::from_secs_f64(g.rto);
                next_timer = Some(next_timer.map_or(deadline, |t| t.min(deadline)));
                for (k, tag) in tags.into_iter().enumerate() {
                    flying.push((
                        next + k,
                        Flying {
                            tags: vec![tag],
                            sent: now,
                            deadline,
                            tries: 1,
                        },
                    ));
                }
                next += g.n;
            }
            if flying.is_empty() {
                return match err {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
            }
            // One reply, or the receive tick passing.
            let got = match link.recv_polling(buf, poll, flying.len() > 1) {
                Ok(g) => g,
                Err(e) => {
                    // (Interface down, say: like silence, until the timeout.)
                    tracing::debug!("{}: receive: {e}", self.cfg.name());
                    std::thread::sleep(RECV_TICK);
                    None
                }
            };
            if let Some((n, src)) = got {
                let f = &buf[..n];
                match reply_header(f, self.cfg.shelf, self.cfg.slot) {
                    Some((_, _, CMD_CONFIG, _)) => self.config_reply(f, src, &flying),
                    Some((flags, aoe_err, CMD_ATA, tag)) => {
                        let hit = flying.iter().position(|x| x.1.tags.contains(&tag));
                        if let Some(k) = hit {
                            let (i, fl) = flying.swap_remove(k);
                            let sample = (fl.tries == 1).then(|| fl.sent.elapsed().as_secs_f64());
                            self.release(1, sample, true);
                            let spec = &frames[i];
                            let r = self.check_reply(what, f, flags, aoe_err, spec);
                            match r {
                                Err(e) => {
                                    err.get_or_insert(e);
                                }
                                Ok(data) => {
                                    if let (Some(rb), Some(d)) = (rbuf.as_deref_mut(), data) {
                                        rb[spec.off..spec.off + spec.want]
                                            .copy_from_slice(&d[..spec.want]);
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            let now = Instant::now();
            if now >= end {
                return Err(self.timed_out(what, flying.len()));
            }
            if next_timer.is_some_and(|t| t <= now) {
                next_timer = self.resend_due(link, frames, wdata, &mut flying, now);
            }
        }
    }

    /// The request took longer than the timeout: give back its slots.
    fn timed_out(&self, what: &dyn Fn() -> String, mine: usize) -> io::Error {
        if mine > 0 {
            self.release(mine, None, false);
        }
        self.timeouts.fetch_add(1, Ordering::Relaxed);
        let t = self.cfg.timeout.as_secs_f64();
        tracing::warn!("{}: {}: no reply within {t:.1} s", self.cfg.name(), what());
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "{}: {}: the target did not answer within {t:.1} s (EIO)",
                self.cfg.name(),
                what()
            ),
        )
    }

    /// Resend the frames whose timer ran out; returns the next timer.
    fn resend_due(
        &self,
        link: &mut Link,
        frames: &[FrameSpec],
        wdata: Option<&[u8]>,
        flying: &mut [(usize, Flying)],
        now: Instant,
    ) -> Option<Instant> {
        let (dst, rto) = {
            let sh = lock(&self.shared);
            (sh.target, sh.rto())
        };
        let mut resent = false;
        let mut stuck = false;
        let mut next: Option<Instant> = None;
        for (i, fl) in flying.iter_mut() {
            let i = *i;
            if fl.deadline <= now {
                let tag = link.next_tag();
                fl.tries += 1;
                stuck |= fl.tries > REDISCOVER_AFTER;
                let back = (rto * f64::from(1u32 << (fl.tries - 1).min(10))).min(MAX_RTO);
                fl.deadline = now + Duration::from_secs_f64(back);
                fl.tags.push(tag);
                self.send_frame(link, &frames[i], tag, wdata, &dst);
                self.retransmits.fetch_add(1, Ordering::Relaxed);
                resent = true;
            }
            next = Some(next.map_or(fl.deadline, |n| n.min(fl.deadline)));
        }
        let mut sh = lock(&self.shared);
        if resent {
            sh.cwnd = (sh.cwnd / 2.0).max(1.0);
        }
        let again = match sh.last_discovery {
            None => true,
            Some(t) => now.saturating_duration_since(t) >= Duration::from_secs(1),
        };
        if stuck && again {
            // Look for the target again: it may answer from another port.
            sh.last_discovery = Some(now);
            drop(sh);
            let q = config_query(self.cfg.shelf, self.cfg.slot, link.tag_base() | 0xffff);
            let _ = link.send(&[0xff; 6], &[&q]);
        }
        next
    }

    /// A config reply while frames go unanswered: the target answers from
    /// another port now.
    fn config_reply(&self, f: &[u8], src: [u8; 6], flying: &[(usize, Flying)]) {
        let stuck = flying.iter().any(|x| x.1.tries > REDISCOVER_AFTER);
        let Some(c) = parse_config(f, src) else {
            return;
        };
        let mut sh = lock(&self.shared);
        if stuck && c.mac != sh.target {
            tracing::warn!(
                "{}: target now answers from {}",
                self.cfg.name(),
                fmt_mac(&c.mac)
            );
            sh.target = c.mac;
            sh.wmax = usize::from(c.bufcnt).clamp(1, 256);
        }
    }

    /// Check an ATA reply; its data for reads.
    fn check_reply<'a>(
        &self,
        what: &dyn Fn() -> String,
        f: &'a [u8],
        flags: u8,
        aoe_err: u8,
        spec: &FrameSpec,
    ) -> io::Result<Option<&'a [u8]>> {
        let (fcmd, flba) = (spec.cmd, spec.lba);
        if flags & FLAG_ERR != 0 {
            return Err(eio(format!(
                "{}: {}: AoE error {aoe_err} ({}) for ATA command {fcmd:#04x} at sector {flba}",
                self.cfg.name(),
                what(),
                aoe_error_text(aoe_err)
            )));
        }
        if f.len() < AOE_HDR + ATA_HDR {
            return Err(eio(format!(
                "{}: short ATA reply ({} bytes)",
                self.cfg.name(),
                f.len()
            )));
        }
        let a = &f[AOE_HDR..AOE_HDR + ATA_HDR];
        let (aerr, status) = (a[1], a[3]);
        if status & (ST_ERR | ST_DF) != 0 {
            let msg = format!(
                "{}: {}: ATA error for command {fcmd:#04x} at sector {flba}: \
                 status {status:#04x}, error {aerr:#04x}",
                self.cfg.name(),
                what()
            );
            if aerr & ERR_ABRT != 0 && matches!(fcmd, ATA_FLUSH | ATA_FLUSH_EXT) {
                return Err(io::Error::new(io::ErrorKind::Unsupported, msg));
            }
            return Err(eio(msg));
        }
        if spec.want == 0 {
            return Ok(None);
        }
        let d = &f[AOE_HDR + ATA_HDR..];
        if d.len() < spec.want {
            return Err(eio(format!(
                "{}: read reply with {} bytes, {} expected",
                self.cfg.name(),
                d.len(),
                spec.want
            )));
        }
        Ok(Some(d))
    }
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl AoeDevice {
    /// Discover the target and identify it.
    pub fn open(cfg: AoeConfig) -> io::Result<AoeDevice> {
        let name = cfg.name();
        let mut link = Link::open(&cfg.iface, random_id())
            .map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))?;
        let c = discover(&mut link, &cfg)?;
        // Sectors per frame: what the target takes and what fits our MTU.
        let ours = link.mtu.saturating_sub(AOE_HDR + ATA_HDR) / SECTOR;
        let target_sectors = if c.scnt == 0 { 2 } else { c.scnt };
        let spf = ours.min(usize::from(target_sectors)).clamp(1, 255) as u8;
        let wmax = usize::from(c.bufcnt).clamp(1, 256);
        tracing::info!(
            "{name}: target {} (firmware {:#x}), buffer count {}, {} sectors per frame",
            fmt_mac(&c.mac),
            c.firmware,
            c.bufcnt,
            spf
        );
        let (mtu, mac) = (link.mtu, link.mac);
        let inner = Inner {
            cfg,
            next_link: AtomicU32::new(1),
            links: Mutex::new(vec![link]),
            shared: Mutex::new(Shared {
                target: c.mac,
                wmax,
                cwnd: wmax as f64,
                inflight: 0,
                waiting: 0,
                srtt: None,
                rttvar: 0.0,
                last_discovery: None,
            }),
            slots: Condvar::new(),
            max_sectors: spf,
            lba48: AtomicBool::new(true),
            flush_mode: AtomicU8::new(0),
            retransmits: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            poll_max: super::poll_from(POLL_ENV, DEFAULT_POLL),
        };
        let mut dev = AoeDevice {
            inner,
            info: AoeInfo {
                target_mac: c.mac,
                bufcnt: c.bufcnt,
                firmware: c.firmware,
                target_sectors,
                sectors_per_frame: spf,
                mtu,
                initiator_mac: mac,
                lba48: true,
                sectors: 0,
            },
            ranges: super::rangelock::RangeLocks::default(),
        };
        let mut id = [0u8; SECTOR];
        let f = FrameSpec {
            aflags: 0,
            cmd: ATA_IDENTIFY,
            lba: 0,
            nsec: 1,
            off: 0,
            want: SECTOR,
        };
        dev.inner
            .exec(&|| "IDENTIFY DEVICE".into(), &[f], None, Some(&mut id))?;
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

    /// Resends, timeouts and sockets so far.
    pub fn stats(&self) -> AoeStats {
        AoeStats {
            retransmits: self.inner.retransmits.load(Ordering::Relaxed),
            timeouts: self.inner.timeouts.load(Ordering::Relaxed),
            sockets: u64::from(self.inner.next_link.load(Ordering::Relaxed)),
        }
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

    /// The frames covering sectors `[lba, lba + n)`.
    fn frames(&self, lba: u64, n: u64, write: bool) -> Vec<FrameSpec> {
        let (aflags, cmd) = self.rw_cmd(write);
        let spf = u64::from(self.inner.max_sectors);
        let mut v = Vec::with_capacity(n.div_ceil(spf) as usize);
        let mut s = 0;
        while s < n {
            let k = (n - s).min(spf);
            v.push(FrameSpec {
                aflags,
                cmd,
                lba: lba + s,
                nsec: k as u8,
                off: s as usize * SECTOR,
                want: if write { 0 } else { k as usize * SECTOR },
            });
            s += k;
        }
        v
    }

    /// Read whole sectors into `buf` (a multiple of 512 bytes) from `lba`.
    fn read_sectors(&self, lba: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = (buf.len() / SECTOR) as u64;
        let frames = self.frames(lba, n, false);
        let what = || format!("read of {n} sectors at {lba}");
        self.inner.exec(&what, &frames, None, Some(buf))
    }

    /// Write whole sectors from `data` (a multiple of 512 bytes) at `lba`.
    fn write_sectors(&self, lba: u64, data: &[u8]) -> io::Result<()> {
        let n = (data.len() / SECTOR) as u64;
        let frames = self.frames(lba, n, true);
        let what = || format!("write of {n} sectors at {lba}");
        self.inner.exec(&what, &frames, Some(data), None)
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

impl BlockDevice for AoeDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_range(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let sz = SECTOR as u64;
        let s = offset / sz;
        if offset & (sz - 1) == 0 && buf.len() & (SECTOR - 1) == 0 {
            return self.read_sectors(s, buf);
        }
        let e = (offset + buf.len() as u64).div_ceil(sz);
        let mut tmp = vec![0u8; ((e - s) * sz) as usize];
        self.read_sectors(s, &mut tmp)?;
        let skip = (offset - s * sz) as usize;
        buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
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
            return self.write_sectors(s, buf);
        }
        // Read-modify-write of the partial sectors at either end.
        let mut tmp = vec![0u8; ((e - s) * sz) as usize];
        let skip = (offset - s * sz) as usize;
        if skip != 0 {
            self.read_sectors(s, &mut tmp[..SECTOR])?;
        }
        let tail = (offset + buf.len() as u64) & (sz - 1);
        if tail != 0 && (e - 1 != s || skip == 0) {
            let at = tmp.len() - SECTOR;
            self.read_sectors(e - 1, &mut tmp[at..])?;
        }
        tmp[skip..skip + buf.len()].copy_from_slice(buf);
        self.write_sectors(s, &tmp)
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
            let f = FrameSpec {
                aflags,
                cmd,
                lba: 0,
                nsec: 0,
                off: 0,
                want: 0,
            };
            match self.inner.exec(&|| "flush".into(), &[f], None, None) {
                Ok(()) => return Ok(()),
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
    }
}
