//! An NBD (Network Block Device) initiator.
//!
//! The client speaks the fixed-newstyle handshake and enters transmission
//! with `NBD_OPT_GO`, asking for the server's block-size constraints
//! (`NBD_INFO_BLOCK_SIZE`). Having asked, it must honour the minimum block
//! size: unaligned requests are then done as read-modify-write of the
//! covering aligned range. Old servers that answer `NBD_OPT_GO` with
//! `NBD_REP_ERR_UNSUP` get `NBD_OPT_EXPORT_NAME` instead (all of this in
//! the `handshake` submodule; transmission is here).
//!
//! Structured replies are negotiated when the server offers them (read data
//! then comes as data and hole chunks, and errors carry the server's text);
//! simple replies are understood either way. Several requests are in flight at
//! once on one connection: callers write requests under a writer mutex and a
//! reader thread hands each reply to the caller waiting on its handle. A
//! request larger than 32 MiB (or the server's maximum payload) is split into
//! chunks that are all issued before any is waited for.
//!
//! A lost connection is re-established in the background with exponential
//! backoff (connect and handshake again, checking the export still has the
//! same size) and every request still waiting for its reply is sent again.
//! Resending is safe: a write or trim done twice leaves the same bytes, and
//! a caller never has two overlapping writes outstanding whose order it
//! relies on (a write is complete only once acknowledged). A request that
//! gets no reply within the timeout (default 30 s, [`TIMEOUT_ENV`] or
//! [`NbdConfig::timeout`]) fails with EIO; a write returns `Ok` only after
//! the server acknowledged it. A connection that stays silent past the
//! timeout while requests wait is dropped and re-established. (A caller
//! queued behind a write blocked on a server that stopped reading may wait
//! up to twice the timeout: socket writes time out after the timeout too.)

use super::BlockDevice;
use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod handshake;

use handshake::connect_once;

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;
/// How long a request may wait for its reply, reconnections included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable overriding [`DEFAULT_TIMEOUT`], in seconds (fractions allowed).
pub const TIMEOUT_ENV: &str = "GFS2_NBD_TIMEOUT";
/// How long a caller polls for its reply before it sleeps, when the server
/// answers within 1 ms on average.
pub const DEFAULT_POLL: Duration = Duration::from_micros(30);
/// Environment variable overriding [`DEFAULT_POLL`], in microseconds (at
/// most 10,000); 0 turns polling off.
pub const POLL_ENV: &str = "GFS2_NBD_POLL_US";
/// Mean request latency above which callers do not poll.
const POLL_LATENCY_LIMIT: Duration = Duration::from_millis(1);
/// Largest read or write payload sent in one request.
pub const MAX_CHUNK: u32 = 32 << 20;

// Transmission magics.
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Structured reply chunks.
const REPLY_FLAG_DONE: u16 = 1 << 0;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;

// Transmission flags.
const TFLAG_HAS_FLAGS: u16 = 1 << 0;
const TFLAG_READ_ONLY: u16 = 1 << 1;
const TFLAG_SEND_FLUSH: u16 = 1 << 2;
const TFLAG_SEND_TRIM: u16 = 1 << 5;

// Commands.
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;

// The error values of simple replies are Linux errno numbers.
const NBD_ESHUTDOWN: u32 = 108;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdAddr {
    /// TCP: host name or address (IPv6 without brackets) and port.
    Tcp { host: String, port: u16 },
    /// A Unix-domain socket.
    Unix(PathBuf),
}

/// What to connect to and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdConfig {
    pub addr: NbdAddr,
    /// Export name; empty selects the server's default export.
    pub export: String,
    /// Refuse writes; a read-write open of a read-only export fails with EROFS.
    pub read_only: bool,
    /// How long a request may wait for its reply (reconnections included)
    /// before it fails with EIO.
    pub timeout: Duration,
}

impl NbdConfig {
    /// A configuration with the timeout from [`TIMEOUT_ENV`] or the default.
    pub fn new(addr: NbdAddr, export: &str) -> Self {
        NbdConfig {
            addr,
            export: export.to_string(),
            read_only: false,
            timeout: timeout_from_env(),
        }
    }

    /// The URI form: `nbd://host:port/export` or `nbd+unix:///export?socket=PATH`.
    pub fn uri(&self) -> String {
        match &self.addr {
            NbdAddr::Tcp { host, port } if host.contains(':') => {
                format!("nbd://[{host}]:{port}/{}", self.export)
            }
            NbdAddr::Tcp { host, port } => format!("nbd://{host}:{port}/{}", self.export),
            NbdAddr::Unix(p) => format!("nbd+unix:///{}?socket={}", self.export, p.display()),
        }
    }
}

/// [`DEFAULT_TIMEOUT`], or [`TIMEOUT_ENV`] when it holds a positive number of seconds.
pub fn timeout_from_env() -> Duration {
    super::timeout_from(TIMEOUT_ENV, DEFAULT_TIMEOUT)
}

pub use super::{errno_of, DevError as NbdError};

fn nbd_err(errno: i32, msg: String) -> io::Error {
    super::dev_err(errno, msg)
}

fn proto(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A connected socket of either family.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn connect(addr: &NbdAddr, timeout: Duration) -> io::Result<Stream> {
        match addr {
            NbdAddr::Tcp { host, port } => {
                let mut last = None;
                for sa in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&sa, timeout) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"))
                }))
            }
            NbdAddr::Unix(p) => UnixStream::connect(p)
                .map(Stream::Unix)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
        }
    }
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
            Stream::Unix(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the handshake told about the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub flags: u16,
    /// Minimum block size (1 when the server gave none).
    pub min_block: u32,
    /// Preferred block size.
    pub pref_block: u32,
    /// Maximum payload of a read or write.
    pub max_payload: u32,
    /// Structured replies were negotiated.
    pub structured: bool,
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// The 28-byte transmission request header (no command flags).
fn request_header(cmd: u16, handle: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut h = [0u8; 28];
    h[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&0u16.to_be_bytes());
    h[6..8].copy_from_slice(&cmd.to_be_bytes());
    h[8..16].copy_from_slice(&handle.to_be_bytes());
    h[16..24].copy_from_slice(&offset.to_be_bytes());
    h[24..28].copy_from_slice(&len.to_be_bytes());
    h
}

/// A request on its way to the server.
struct Outgoing {
    cmd: u16,
    handle: u64,
    offset: u64,
    len: u32,
    payload: Option<Arc<[u8]>>,
}

/// Send requests in order, gathering small ones into writes of up to
/// 256 KiB; a big payload goes in writes of its own, not copied.
fn write_batch(s: &mut Stream, batch: &[Outgoing]) -> io::Result<()> {
    const GATHER: usize = 256 << 10;
    let mut buf: Vec<u8> = Vec::new();
    for o in batch {
        let plen = o.payload.as_ref().map_or(0, |p| p.len());
        if plen > 64 << 10 {
            if !buf.is_empty() {
                s.write_all(&buf)?;
                buf.clear();
            }
            s.write_all(&request_header(o.cmd, o.handle, o.offset, o.len))?;
            if let Some(p) = &o.payload {
                s.write_all(p)?;
            }
            continue;
        }
        if !buf.is_empty() && buf.len() + 28 + plen > GATHER {
            s.write_all(&buf)?;
            buf.clear();
        }
        buf.extend_from_slice(&request_header(o.cmd, o.handle, o.offset, o.len));
        if let Some(p) = &o.payload {
            buf.extend_from_slice(p);
        }
    }
    if !buf.is_empty() {
        s.write_all(&buf)?;
    }
    Ok(())
}

fn cmd_name(cmd: u16) -> &'static str {
    match cmd {
        CMD_READ => "READ",
        CMD_WRITE => "WRITE",
        CMD_FLUSH => "FLUSH",
        CMD_TRIM => "TRIM",
        CMD_DISC => "DISC",
        _ => "?",
    }
}

/// A request waiting for its reply.
struct Req {
    cmd: u16,
    offset: u64,
    len: u32,
    payload: Option<Arc<[u8]>>,
    /// Connection generation it was last sent on (0: not sent yet).
    sent_gen: u64,
    /// The caller gave up; a late reply is consumed and dropped.
    abandoned: bool,
    done: Option<io::Result<Vec<u8>>>,
    /// A read's data assembled from structured chunks, the bytes they
    /// covered, and the first error chunk.
    partial: Option<Vec<u8>>,
    covered: u64,
    chunk_err: Option<io::Error>,
    /// The waiting thread's condition variable (used with the state mutex):
    /// a reply wakes its caller only.
    waker: Arc<Waker>,
    /// The caller sleeps on `waker` (else it polls, and needs no wake-up).
    sleeping: bool,
}

struct Waker {
    cv: Condvar,
    /// Completions of this thread's requests so far.
    seq: AtomicU64,
}

thread_local! {
    static WAKER: Arc<Waker> = Arc::new(Waker { cv: Condvar::new(), seq: AtomicU64::new(0) });
}

fn my_waker() -> Arc<Waker> {
    WAKER.with(Arc::clone)
}

/// Hand `res` to the caller waiting for `handle` (waking it if it sleeps),
/// or drop it if the caller gave up; releases the state lock.
fn settle(mut st: MutexGuard<'_, State>, handle: u64, res: io::Result<Vec<u8>>) {
    let Some(r) = st.pending.get_mut(&handle) else {
        return;
    };
    if r.abandoned {
        st.pending.remove(&handle);
        return;
    }
    r.done = Some(res);
    r.waker.seq.fetch_add(1, Ordering::Release);
    let waker = r.sleeping.then(|| r.waker.clone());
    drop(st);
    if let Some(w) = waker {
        w.cv.notify_all();
    }
}

struct State {
    next_handle: u64,
    pending: HashMap<u64, Req>,
    /// Generation of the current (or last) connection.
    gen: u64,
    connected: bool,
    /// A handle on the live socket, to shut it down from any thread.
    ctl: Option<Stream>,
    /// Requests queued for sending, oldest first (see `Inner::pump`).
    outq: Vec<u64>,
}

struct Writer {
    stream: Stream,
    gen: u64,
}

struct Inner {
    cfg: NbdConfig,
    info: ExportInfo,
    chunk: u32,
    state: Mutex<State>,
    /// Wakes the reader's reconnection backoff when closing.
    cond: Condvar,
    writer: Mutex<Option<Writer>>,
    closing: AtomicBool,
    /// Read-modify-write of unaligned requests excludes aligned I/O.
    rmw: RwLock<()>,
    /// Requests sent again after a reconnection (statistics).
    resent: AtomicU64,
    /// The longest a caller polls for its reply ([`POLL_ENV`]).
    poll: Duration,
    /// Smoothed request latency in microseconds (0: none measured yet).
    latency_us: AtomicU64,
}

/// A block device on an NBD export.
pub struct NbdDevice {
    inner: Arc<Inner>,
    reader: Option<JoinHandle<()>>,
}

/// Spawn a helper thread with every signal blocked, so that process-directed
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NbdDevice {
    /// Connect, negotiate and start the reply reader.
    pub fn connect(cfg: NbdConfig) -> io::Result<NbdDevice> {
        let uri = cfg.uri();
        let (stream, info) =
            connect_once(&cfg).map_err(|e| io::Error::new(e.kind(), format!("{uri}: {e}")))?;
        if !cfg.read_only && info.flags & TFLAG_READ_ONLY != 0 {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let limit = MAX_CHUNK.min(info.max_payload);
        let mut chunk = limit / info.pref_block * info.pref_block;
        if chunk == 0 {
            chunk = (limit / info.min_block * info.min_block).max(info.min_block);
        }
        tracing::info!(
            "{uri}: {} bytes, flags {:#x}, block sizes {}/{}/{}, structured replies: {}",
            info.size,
            info.flags,
            info.min_block,
            info.pref_block,
            info.max_payload,
            info.structured
        );
        let read_half = stream.try_clone()?;
        let ctl = stream.try_clone()?;
        let inner = Arc::new(Inner {
            cfg,
            info,
            chunk,
            state: Mutex::new(State {
                next_handle: 1,
                pending: HashMap::new(),
                gen: 1,
                connected: true,
                ctl: Some(ctl),
                outq: Vec::new(),
            }),
            cond: Condvar::new(),
            writer: Mutex::new(Some(Writer { stream, gen: 1 })),
            closing: AtomicBool::new(false),
            rmw: RwLock::new(()),
            resent: AtomicU64::new(0),
            poll: super::poll_from(POLL_ENV, DEFAULT_POLL),
            latency_us: AtomicU64::new(0),
        });
        let i2 = inner.clone();
        let sr = info.structured;
        let reader = spawn_quiet("nbd-reader", move || i2.reader_main(read_half, 1, sr))?;
        Ok(NbdDevice {
            inner,
            reader: Some(reader),
        })
    }

    /// What the server said about the export at the first handshake.
    pub fn info(&self) -> ExportInfo {
        self.inner.info
    }

    /// The configuration in use.
    pub fn config(&self) -> &NbdConfig {
        &self.inner.cfg
    }

    /// How many times the connection was re-established, and how many
    /// requests were sent again because of that.
    pub fn reconnections(&self) -> (u64, u64) {
        let gen = lock(&self.inner.state).gen;
        (gen - 1, self.inner.resent.load(Ordering::Relaxed))
    }

    /// Is a connection currently established?
    pub fn is_connected(&self) -> bool {
        lock(&self.inner.state).connected
    }

    fn check_range(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.inner.info.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: {len} bytes at {offset} beyond the end ({} bytes)",
                    self.inner.cfg.uri(),
                    self.inner.info.size
                ),
            )),
        }
    }

    fn aligned(&self, offset: u64, len: usize) -> bool {
        let m = u64::from(self.inner.info.min_block);
        (offset | len as u64) & (m - 1) == 0
    }

    /// The covering range of `[offset, offset+len)` in minimum blocks.
    fn widen(&self, offset: u64, len: usize) -> (u64, usize) {
        let m = u64::from(self.inner.info.min_block);
        let start = offset & !(m - 1);
        let end = (offset + len as u64 + m - 1) & !(m - 1);
        (start, (end - start) as usize)
    }

    fn read_aligned(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let chunk = self.inner.chunk as usize;
        let mut handles = Vec::with_capacity(buf.len().div_ceil(chunk));
        let mut first_err = None;
        for (i, c) in buf.chunks(chunk).enumerate() {
            let off = offset + (i * chunk) as u64;
            match self.inner.submit(CMD_READ, off, c.len() as u32, None) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    first_err = Some(e);
                    break;
                }
            }
        }
        // Every submitted chunk is waited for, even after an error.
        for ((h, t), c) in handles.into_iter().zip(buf.chunks_mut(chunk)) {
            match self.inner.wait(h, t) {
                Ok(d) if d.len() == c.len() => c.copy_from_slice(&d),
                Ok(_) => {
                    first_err.get_or_insert_with(|| proto("short read reply"));
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn write_aligned(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let chunk = self.inner.chunk as usize;
        let mut handles = Vec::with_capacity(buf.len().div_ceil(chunk));
        let mut first_err = None;
        for (i, c) in buf.chunks(chunk).enumerate() {
            let off = offset + (i * chunk) as u64;
            match self
                .inner
                .submit(CMD_WRITE, off, c.len() as u32, Some(Arc::from(c)))
            {
                Ok(h) => handles.push(h),
                Err(e) => {
                    first_err = Some(e);
                    break;
                }
            }
        }
        for (h, t) in handles {
            if let Err(e) = self.inner.wait(h, t) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn simple(&self, cmd: u16, offset: u64, len: u32) -> io::Result<()> {
        let (h, t) = self.inner.submit(cmd, offset, len, None)?;
        self.inner.wait(h, t).map(|_| ())
    }
}

impl Inner {
    fn uri(&self) -> String {
        self.cfg.uri()
    }

    /// Queue a request and send it if a connection is up (otherwise the
    /// reconnection sends it). Returns its handle and submission time.
    fn submit(
        &self,
        cmd: u16,
        offset: u64,
        len: u32,
        payload: Option<Arc<[u8]>>,
    ) -> io::Result<(u64, Instant)> {
        if self.closing.load(Ordering::Acquire) {
            return Err(nbd_err(libc::EIO, format!("{}: device closed", self.uri())));
        }
        let handle = {
            let mut st = lock(&self.state);
            let h = st.next_handle;
            st.next_handle += 1;
            st.pending.insert(
                h,
                Req {
                    cmd,
                    offset,
                    len,
                    payload,
                    sent_gen: 0,
                    abandoned: false,
                    done: None,
                    partial: None,
                    covered: 0,
                    chunk_err: None,
                    waker: my_waker(),
                    sleeping: false,
                },
            );
            st.outq.push(h);
            h
        };
        // The deadline counts from here: time spent queueing behind other
        // senders is part of the wait.
        let t = Instant::now();
        self.pump();
        Ok((handle, t))
    }

    /// Send the queued requests on the live connection. Whoever holds the
    /// writer sends everything queued, its own and other callers', in as few
    /// writes as it can; a caller that finds the writer busy leaves its
    /// request to the holder and goes on to wait for the reply. (Callers that
    /// slept on the writer's mutex behind each 4 KiB write cost a context
    /// switch per request.) The holder looks at the queue again after
    /// letting the writer go, so nothing queued meanwhile is left behind.
    fn pump(&self) {
        loop {
            let mut w = match self.writer.try_lock() {
                Ok(w) => w,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            loop {
                let batch = self.take_batch(w.as_ref().map(|w| w.gen));
                let Some(w) = w.as_mut() else {
                    // No connection: the reconnection resends what is pending.
                    break;
                };
                if batch.is_empty() {
                    break;
                }
                if let Err(e) = write_batch(&mut w.stream, &batch) {
                    tracing::warn!("{}: sending requests: {e}; reconnecting", self.uri());
                    w.stream.shutdown();
                    break;
                }
            }
            drop(w);
            if lock(&self.state).outq.is_empty() {
                return;
            }
        }
    }

    /// Empty the send queue, marking its live requests as sent on
    /// connection `gen` (none when there is no connection).
    fn take_batch(&self, gen: Option<u64>) -> Vec<Outgoing> {
        let mut st = lock(&self.state);
        let queued = std::mem::take(&mut st.outq);
        let Some(gen) = gen else {
            return Vec::new();
        };
        let mut batch = Vec::with_capacity(queued.len());
        for handle in queued {
            let Some(r) = st.pending.get_mut(&handle) else {
                continue;
            };
            if r.sent_gen == gen || r.abandoned || r.done.is_some() {
                continue;
            }
            r.sent_gen = gen;
            batch.push(Outgoing {
                cmd: r.cmd,
                handle,
                offset: r.offset,
                len: r.len,
                payload: r.payload.clone(),
            });
        }
        batch
    }

    /// Wait for a request's reply; EIO after the timeout.
    fn wait(&self, handle: u64, submitted: Instant) -> io::Result<Vec<u8>> {
        let deadline = submitted + self.cfg.timeout;
        let waker = my_waker();
        let mut polled = false;
        let mut st = lock(&self.state);
        loop {
            let Some(r) = st.pending.get_mut(&handle) else {
                return Err(nbd_err(libc::EIO, format!("{}: request lost", self.uri())));
            };
            if let Some(res) = r.done.take() {
                st.pending.remove(&handle);
                drop(st);
                self.note_latency(submitted.elapsed());
                return res;
            }
            let now = Instant::now();
            let closing = self.closing.load(Ordering::Acquire);
            if now >= deadline || closing {
                let (cmd, offset, len, sent) = (r.cmd, r.offset, r.len, r.sent_gen);
                r.abandoned = true;
                if st.connected && sent == st.gen {
                    // Sent on a connection that stayed silent: drop it so the
                    // reader reconnects; the late reply cannot confuse anyone.
                    if let Some(c) = &st.ctl {
                        c.shutdown();
                    }
                } else {
                    st.pending.remove(&handle);
                }
                let why = if closing {
                    "device closed".to_string()
                } else if st.connected {
                    format!("no reply within {:?}", self.cfg.timeout)
                } else {
                    format!("server unreachable for {:?}", self.cfg.timeout)
                };
                let msg = format!(
                    "{}: {} of {len} bytes at {offset}: {why} (EIO)",
                    self.uri(),
                    cmd_name(cmd)
                );
                tracing::error!("{msg}");
                return Err(nbd_err(libc::EIO, msg));
            }
            // Before sleeping, poll for the reply once, giving the processor
            // away between looks: the hand-off from the reader to a sleeping
            // caller costs a context switch per request, which on a fast
            // server is much of its latency (4 KiB writes with 8 in flight:
            // 29-38k/s sleeping at once, 43-52k/s polling 30 us first).
            if !polled {
                polled = true;
                let budget = self.poll_budget();
                if !budget.is_zero() {
                    let s0 = waker.seq.load(Ordering::Acquire);
                    drop(st);
                    // (Nothing here fails; the result only says whether a
                    // completion came, which the loop looks up anyway.)
                    let _ = super::poll_yielding(budget, || {
                        Ok((waker.seq.load(Ordering::Acquire) != s0).then_some(()))
                    });
                    st = lock(&self.state);
                    continue;
                }
            }
            r.sleeping = true;
            st = waker
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if let Some(r) = st.pending.get_mut(&handle) {
                r.sleeping = false;
            }
        }
    }

    /// How long a waiting caller polls: nothing until a latency is known,
    /// nor for a server slower than [`POLL_LATENCY_LIMIT`], whose replies
    /// come long after any budget worth spending.
    fn poll_budget(&self) -> Duration {
        let lat = self.latency_us.load(Ordering::Relaxed);
        if lat == 0 || lat > POLL_LATENCY_LIMIT.as_micros() as u64 {
            return Duration::ZERO;
        }
        self.poll
    }

    /// Fold one request's latency into the smoothed mean (a race between
    /// callers loses a sample, which is harmless).
    fn note_latency(&self, d: Duration) {
        let us = (d.as_micros() as u64).max(1);
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { (old * 7 + us) / 8 };
        self.latency_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Complete a request that expects no data (a write, flush or trim
    /// that succeeded) under one acquisition of the state lock, the common
    /// case of a write-heavy load. False if `handle` is not such a request
    /// sent on connection `gen`: the general path then deals with it.
    fn complete_dataless(&self, handle: u64, gen: u64) -> bool {
        let mut st = lock(&self.state);
        let Some(r) = st.pending.get_mut(&handle) else {
            return false;
        };
        if r.sent_gen != gen || r.cmd == CMD_READ {
            return false;
        }
        settle(st, handle, Ok(Vec::new()));
        true
    }

    fn complete(&self, handle: u64, res: io::Result<Vec<u8>>) {
        settle(lock(&self.state), handle, res);
    }

    /// Read replies until the connection fails; then reconnect and go on.
    fn reader_main(self: Arc<Self>, first: Stream, first_gen: u64, first_sr: bool) {
        let mut conn = Some((first, first_gen, first_sr));
        loop {
            let (stream, gen, sr) = match conn.take() {
                Some(c) => c,
                None => match self.reconnect() {
                    Some(c) => c,
                    None => return,
                },
            };
            let mut rd = BufReader::with_capacity(256 << 10, stream);
            let err = loop {
                if let Err(e) = self.read_reply(&mut rd, gen, sr) {
                    break e;
                }
            };
            if self.closing.load(Ordering::Acquire) {
                return;
            }
            tracing::warn!("{}: connection lost: {err}; reconnecting", self.uri());
            self.disconnected(gen);
        }
    }

    /// The request a reply is for: (command, offset, length).
    fn lookup(&self, handle: u64, gen: u64) -> io::Result<(u16, u64, u32)> {
        let st = lock(&self.state);
        match st.pending.get(&handle) {
            Some(r) if r.sent_gen == gen => Ok((r.cmd, r.offset, r.len)),
            _ => Err(proto(format!("reply for unknown handle {handle}"))),
        }
    }

    fn server_error(&self, error: u32, cmd: u16, offset: u64, len: u32, text: &str) -> io::Error {
        let errno = if (1..4096).contains(&error) {
            error as i32
        } else {
            libc::EIO
        };
        let text = if text.is_empty() {
            String::new()
        } else {
            format!(" ({text})")
        };
        nbd_err(
            errno,
            format!(
                "{}: {} of {len} bytes at {offset}: server error: {}{text}",
                self.uri(),
                cmd_name(cmd),
                io::Error::from_raw_os_error(errno)
            ),
        )
    }

    fn read_reply(&self, rd: &mut BufReader<Stream>, gen: u64, sr: bool) -> io::Result<()> {
        let mut m = [0u8; 4];
        rd.read_exact(&mut m)?;
        match be_u32(&m) {
            SIMPLE_REPLY_MAGIC => self.simple_reply(rd, gen, sr),
            STRUCTURED_REPLY_MAGIC if sr => self.structured_chunk(rd, gen),
            x => Err(proto(format!("bad reply magic {x:#x}"))),
        }
    }

    fn simple_reply(&self, rd: &mut BufReader<Stream>, gen: u64, sr: bool) -> io::Result<()> {
        let mut h = [0u8; 12];
        rd.read_exact(&mut h)?;
        let error = be_u32(&h);
        let handle = be_u64(&h[4..]);
        if error == 0 && self.complete_dataless(handle, gen) {
            return Ok(());
        }
        let (cmd, offset, len) = self.lookup(handle, gen)?;
        if error == NBD_ESHUTDOWN {
            // The server is going away: this request is retried after reconnecting.
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "server is shutting down (ESHUTDOWN)",
            ));
        }
        let res = if error != 0 {
            Err(self.server_error(error, cmd, offset, len, ""))
        } else if cmd == CMD_READ {
            if sr {
                return Err(proto("simple reply with data to a read"));
            }
            let mut data = vec![0u8; len as usize];
            rd.read_exact(&mut data)?;
            Ok(data)
        } else {
            Ok(Vec::new())
        };
        self.complete(handle, res);
        Ok(())
    }

    /// One structured reply chunk; the request completes with the chunk
    /// flagged DONE.
    fn structured_chunk(&self, rd: &mut BufReader<Stream>, gen: u64) -> io::Result<()> {
        let mut h = [0u8; 16];
        rd.read_exact(&mut h)?;
        let flags = be_u16(&h);
        let typ = be_u16(&h[2..]);
        let handle = be_u64(&h[4..]);
        let length = be_u32(&h[12..]);
        let (cmd, offset, len) = self.lookup(handle, gen)?;
        if u64::from(length) > u64::from(len) + (64 << 10) {
            return Err(proto(format!("reply chunk of {length} bytes")));
        }
        let req_end = offset + u64::from(len);
        match typ {
            REPLY_TYPE_NONE if length == 0 => {}
            REPLY_TYPE_OFFSET_DATA if cmd == CMD_READ && length >= 8 => {
                let mut o = [0u8; 8];
                rd.read_exact(&mut o)?;
                let at = be_u64(&o);
                let n = u64::from(length - 8);
                if at < offset || at > req_end || n > req_end - at {
                    return Err(proto("data chunk outside the request"));
                }
                let mut buf = self.take_partial(handle, len);
                let s = (at - offset) as usize;
                rd.read_exact(&mut buf[s..s + n as usize])?;
                self.put_partial(handle, buf, n);
            }
            REPLY_TYPE_OFFSET_HOLE if cmd == CMD_READ && length == 12 => {
                let mut o = [0u8; 12];
                rd.read_exact(&mut o)?;
                let at = be_u64(&o);
                let n = u64::from(be_u32(&o[8..]));
                if at < offset || at > req_end || n > req_end - at {
                    return Err(proto("hole chunk outside the request"));
                }
                let mut buf = self.take_partial(handle, len);
                let s = (at - offset) as usize;
                buf[s..s + n as usize].fill(0);
                self.put_partial(handle, buf, n);
            }
            t if t & REPLY_TYPE_ERROR_BIT != 0 && length >= 6 => {
                let mut d = vec![0u8; length as usize];
                rd.read_exact(&mut d)?;
                let error = be_u32(&d);
                if error == NBD_ESHUTDOWN {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "server is shutting down (ESHUTDOWN)",
                    ));
                }
                let mlen = (be_u16(&d[4..]) as usize).min(d.len() - 6);
                let text = String::from_utf8_lossy(&d[6..6 + mlen]).into_owned();
                let e = self.server_error(error, cmd, offset, len, &text);
                let mut st = lock(&self.state);
                if let Some(r) = st.pending.get_mut(&handle) {
                    r.chunk_err.get_or_insert(e);
                }
            }
            t if t & REPLY_TYPE_ERROR_BIT != 0 => {
                return Err(proto(format!("error chunk of {length} bytes")))
            }
            REPLY_TYPE_NONE | REPLY_TYPE_OFFSET_DATA | REPLY_TYPE_OFFSET_HOLE => {
                return Err(proto(format!(
                    "reply chunk type {typ} of {length} bytes to {}",
                    cmd_name(cmd)
                )))
            }
            _ => {
                // An informational chunk we do not know: skip it.
                let mut d = vec![0u8; length as usize];
                rd.read_exact(&mut d)?;
            }
        }
        if flags & REPLY_FLAG_DONE != 0 {
            let (partial, covered, err) = {
                let mut st = lock(&self.state);
                match st.pending.get_mut(&handle) {
                    Some(r) => (r.partial.take(), r.covered, r.chunk_err.take()),
                    None => return Ok(()),
                }
            };
            let res = match err {
                Some(e) => Err(e),
                None if cmd != CMD_READ => Ok(Vec::new()),
                None if covered != u64::from(len) => {
                    return Err(proto(format!(
                        "read reply covered {covered} of {len} bytes"
                    )))
                }
                None => Ok(partial.unwrap_or_else(|| vec![0u8; len as usize])),
            };
            self.complete(handle, res);
        }
        Ok(())
    }

    fn take_partial(&self, handle: u64, len: u32) -> Vec<u8> {
        let mut st = lock(&self.state);
        st.pending
            .get_mut(&handle)
            .and_then(|r| r.partial.take())
            .unwrap_or_else(|| vec![0u8; len as usize])
    }

    fn put_partial(&self, handle: u64, buf: Vec<u8>, covered: u64) {
        let mut st = lock(&self.state);
        if let Some(r) = st.pending.get_mut(&handle) {
            r.partial = Some(buf);
            r.covered += covered;
        }
    }

    fn disconnected(&self, gen: u64) {
        // Shut the socket first: a sender blocked on it (say, after a
        // protocol error on a healthy connection) fails at once and
        // releases the writer.
        {
            let st = lock(&self.state);
            if st.gen == gen {
                if let Some(c) = &st.ctl {
                    c.shutdown();
                }
            }
        }
        let mut w = lock(&self.writer);
        if w.as_ref().is_some_and(|w| w.gen == gen) {
            if let Some(w) = w.take() {
                w.stream.shutdown();
            }
        }
        drop(w);
        let mut st = lock(&self.state);
        if st.gen == gen {
            st.connected = false;
            st.ctl = None;
        }
    }

    /// Reconnect with exponential backoff; resend what is pending. `None`
    /// when the device is being closed.
    fn reconnect(self: &Arc<Self>) -> Option<(Stream, u64, bool)> {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0u32;
        loop {
            if self.closing.load(Ordering::Acquire) {
                return None;
            }
            attempt += 1;
            match connect_once(&self.cfg) {
                Ok((s, info)) if info.size == self.info.size => match self.install(s) {
                    Ok(None) => return None,
                    Ok(Some((rd, gen))) => {
                        tracing::warn!("{}: reconnected (attempt {attempt})", self.uri());
                        return Some((rd, gen, info.structured));
                    }
                    Err(e) => tracing::warn!("{}: reconnect: {e}", self.uri()),
                },
                Ok((_, info)) => tracing::error!(
                    "{}: export size changed from {} to {} bytes; not using it",
                    self.uri(),
                    self.info.size,
                    info.size
                ),
                Err(e) if attempt.is_power_of_two() => {
                    tracing::warn!("{}: reconnect attempt {attempt}: {e}", self.uri())
                }
                Err(e) => tracing::debug!("{}: reconnect attempt {attempt}: {e}", self.uri()),
            }
            // Sleep, but wake at once when closing.
            let st = lock(&self.state);
            if self.closing.load(Ordering::Acquire) {
                return None;
            }
            drop(
                self.cond
                    .wait_timeout(st, delay)
                    .unwrap_or_else(|p| p.into_inner()),
            );
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Make `s` the live connection and resend every pending request on it
    /// (from a helper thread, so that this reader can drain replies meanwhile).
    /// `None` when the device is being closed.
    fn install(self: &Arc<Self>, s: Stream) -> io::Result<Option<(Stream, u64)>> {
        let read_half = s.try_clone()?;
        let ctl = s.try_clone()?;
        let mut w = lock(&self.writer);
        let mut st = lock(&self.state);
        // Checked under the state lock, as Drop sets it before taking that
        // lock to shut the live connection down.
        if self.closing.load(Ordering::Acquire) {
            s.shutdown();
            return Ok(None);
        }
        let gen = st.gen + 1;
        st.gen = gen;
        st.connected = true;
        st.ctl = Some(ctl);
        st.pending.retain(|_, r| !r.abandoned);
        let mut resend = Vec::new();
        for (h, r) in st.pending.iter_mut() {
            if r.done.is_none() {
                // Whatever chunks arrived on the old connection are void.
                r.partial = None;
                r.covered = 0;
                r.chunk_err = None;
                resend.push(*h);
            }
        }
        resend.sort_unstable();
        drop(st);
        *w = Some(Writer { stream: s, gen });
        drop(w);
        if !resend.is_empty() {
            self.resent
                .fetch_add(resend.len() as u64, Ordering::Relaxed);
            tracing::info!("{}: resending {} requests", self.uri(), resend.len());
            lock(&self.state).outq.extend(resend);
            let me = self.clone();
            spawn_quiet("nbd-resend", move || me.pump())?;
        }
        self.cond.notify_all();
        Ok(Some((read_half, gen)))
    }
}

impl NbdDevice {
    /// Say goodbye to the server (DISC) and shut the connection down; later
    /// requests fail. Idempotent: the writer is gone after the first call.
    fn disconnect(&self) {
        let inner = &self.inner;
        // Closing first: the server hanging up after DISC must not look like
        // a lost connection to the reader.
        inner.closing.store(true, Ordering::Release);
        {
            let mut w = lock(&inner.writer);
            if let Some(w) = w.as_mut() {
                let disc = Outgoing {
                    cmd: CMD_DISC,
                    handle: 0,
                    offset: 0,
                    len: 0,
                    payload: None,
                };
                let _ = write_batch(&mut w.stream, &[disc]);
            }
        }
        {
            let st = lock(&inner.state);
            if let Some(c) = &st.ctl {
                c.shutdown();
            }
        }
        if let Some(w) = lock(&inner.writer).take() {
            w.stream.shutdown();
        }
        inner.cond.notify_all();
    }
}

impl Drop for NbdDevice {
    fn drop(&mut self) {
        self.disconnect();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl BlockDevice for NbdDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check_range(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        if self.inner.info.min_block == 1 {
            return self.read_aligned(buf, offset);
        }
        let _g = self.inner.rmw.read().unwrap_or_else(|p| p.into_inner());
        if self.aligned(offset, buf.len()) {
            return self.read_aligned(buf, offset);
        }
        let (start, len) = self.widen(offset, buf.len());
        let mut tmp = vec![0u8; len];
        self.read_aligned(&mut tmp, start)?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.inner.cfg.read_only || self.inner.info.flags & TFLAG_READ_ONLY != 0 {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.check_range(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        if self.inner.info.min_block == 1 {
            return self.write_aligned(buf, offset);
        }
        if self.aligned(offset, buf.len()) {
            let _g = self.inner.rmw.read().unwrap_or_else(|p| p.into_inner());
            return self.write_aligned(buf, offset);
        }
        // Read-modify-write of the covering minimum blocks, exclusive of any
        // other I/O so that no concurrent write to those blocks is lost.
        let _g = self.inner.rmw.write().unwrap_or_else(|p| p.into_inner());
        let (start, len) = self.widen(offset, buf.len());
        let mut tmp = vec![0u8; len];
        self.read_aligned(&mut tmp, start)?;
        let skip = (offset - start) as usize;
        tmp[skip..skip + buf.len()].copy_from_slice(buf);
        self.write_aligned(&tmp, start)
    }

    fn flush(&self) -> io::Result<()> {
        if self.inner.info.flags & TFLAG_SEND_FLUSH == 0 {
            return Ok(());
        }
        self.simple(CMD_FLUSH, 0, 0)
    }

    fn size(&self) -> u64 {
        self.inner.info.size
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.inner.info.flags & TFLAG_SEND_TRIM == 0
            || self.inner.cfg.read_only
            || self.inner.info.flags & TFLAG_READ_ONLY != 0
        {
            return Ok(());
        }
        let end = offset.saturating_add(len).min(self.inner.info.size);
        // Only whole preferred blocks: discarding is advisory.
        let m = u64::from(self.inner.info.pref_block);
        let mut start = offset.div_ceil(m) * m;
        let end = end / m * m;
        let step = (1u64 << 30) / m * m;
        while start < end {
            let n = (end - start).min(step);
            match self.simple(CMD_TRIM, start, n as u32) {
                Ok(()) => {}
                Err(e) if matches!(errno_of(&e), Some(libc::ENOTSUP | libc::EINVAL)) => {
                    return Ok(())
                }
                Err(e) => return Err(e),
            }
            start += n;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.inner.cfg.uri()
    }
    fn release(&self) {
        self.disconnect();
    }
}

#[cfg(test)]
mod tests {
    use super::handshake::*;
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn uris() {
        let mut c = NbdConfig::new(
            NbdAddr::Tcp {
                host: "h".into(),
                port: 1,
            },
            "e",
        );
        assert_eq!(c.uri(), "nbd://h:1/e");
        c.addr = NbdAddr::Unix("/s".into());
        assert_eq!(c.uri(), "nbd+unix:///e?socket=/s");
    }

    /// A minimal fixed-newstyle server over memory: no structured replies,
    /// answers the first `shutdowns` writes with ESHUTDOWN and hangs up.
    fn fake_server(size: usize, shutdowns: usize) -> (u16, Arc<Mutex<Vec<u8>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mem = Arc::new(Mutex::new(vec![0u8; size]));
        let left = Arc::new(AtomicUsize::new(shutdowns));
        let m2 = mem.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let (mem, left) = (m2.clone(), left.clone());
                std::thread::spawn(move || serve(&mut s, size as u64, &mem, &left));
            }
        });
        (port, mem)
    }

    fn serve(
        s: &mut TcpStream,
        size: u64,
        mem: &Mutex<Vec<u8>>,
        left: &AtomicUsize,
    ) -> io::Result<()> {
        let reply = |s: &mut TcpStream, opt: u32, t: u32, d: &[u8]| {
            let mut m = OPT_REPLY_MAGIC.to_be_bytes().to_vec();
            m.extend_from_slice(&opt.to_be_bytes());
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&(d.len() as u32).to_be_bytes());
            m.extend_from_slice(d);
            s.write_all(&m)
        };
        let mut hello = NBDMAGIC.to_be_bytes().to_vec();
        hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        s.write_all(&hello)?;
        let mut b4 = [0u8; 4];
        s.read_exact(&mut b4)?;
        loop {
            let mut h = [0u8; 16];
            s.read_exact(&mut h)?;
            let opt = be_u32(&h[8..]);
            let mut d = vec![0u8; be_u32(&h[12..]) as usize];
            s.read_exact(&mut d)?;
            if opt != OPT_GO {
                reply(s, opt, REP_ERR_UNSUP, b"")?;
                continue;
            }
            let mut info = INFO_EXPORT.to_be_bytes().to_vec();
            info.extend_from_slice(&size.to_be_bytes());
            info.extend_from_slice(&(TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH).to_be_bytes());
            reply(s, opt, REP_INFO, &info)?;
            reply(s, opt, REP_ACK, b"")?;
            break;
        }
        loop {
            let mut h = [0u8; 28];
            s.read_exact(&mut h)?;
            let cmd = be_u16(&h[6..]);
            let handle = be_u64(&h[8..]);
            let off = be_u64(&h[16..]) as usize;
            let len = be_u32(&h[24..]) as usize;
            let mut r = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
            match cmd {
                CMD_WRITE => {
                    let mut d = vec![0u8; len];
                    s.read_exact(&mut d)?;
                    if left.load(Ordering::SeqCst) > 0 {
                        left.fetch_sub(1, Ordering::SeqCst);
                        r.extend_from_slice(&NBD_ESHUTDOWN.to_be_bytes());
                        r.extend_from_slice(&handle.to_be_bytes());
                        s.write_all(&r)?;
                        return Ok(());
                    }
                    lock(mem)[off..off + len].copy_from_slice(&d);
                    r.extend_from_slice(&0u32.to_be_bytes());
                    r.extend_from_slice(&handle.to_be_bytes());
                }
                CMD_READ => {
                    r.extend_from_slice(&0u32.to_be_bytes());
                    r.extend_from_slice(&handle.to_be_bytes());
                    r.extend_from_slice(&lock(mem)[off..off + len]);
                }
                CMD_DISC => return Ok(()),
                _ => {
                    r.extend_from_slice(&0u32.to_be_bytes());
                    r.extend_from_slice(&handle.to_be_bytes());
                }
            }
            s.write_all(&r)?;
        }
    }

    fn tcp(port: u16) -> NbdConfig {
        let mut c = NbdConfig::new(
            NbdAddr::Tcp {
                host: "127.0.0.1".into(),
                port,
            },
            "",
        );
        c.timeout = Duration::from_secs(10);
        c
    }

    #[test]
    fn eshutdown_reply_is_retried_on_a_new_connection() {
        let (port, mem) = fake_server(1 << 20, 2);
        let dev = NbdDevice::connect(tcp(port)).unwrap();
        assert!(!dev.info().structured);
        dev.write_at(b"survives two shutdowns", 4096).unwrap();
        assert_eq!(&lock(&mem)[4096..4096 + 22], b"survives two shutdowns");
        assert_eq!(dev.reconnections().0, 2);
        let mut b = [0u8; 8];
        dev.read_at(&mut b, 4096).unwrap();
        assert_eq!(&b, b"survives");
        dev.flush().unwrap();
    }

    #[test]
    fn oldstyle_and_garbage_servers_are_refused() {
        for (first, second, kind) in [
            (NBDMAGIC, OLDSTYLE_MAGIC, io::ErrorKind::Unsupported),
            (0x1234, 0, io::ErrorKind::InvalidData),
        ] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            std::thread::spawn(move || {
                if let Ok((mut s, _)) = l.accept() {
                    let mut m = first.to_be_bytes().to_vec();
                    m.extend_from_slice(&second.to_be_bytes());
                    m.extend_from_slice(&[0u8; 160]);
                    let _ = s.write_all(&m);
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
            let e = NbdDevice::connect(tcp(port)).err().unwrap();
            assert_eq!(e.kind(), kind, "{e}");
        }
    }
}
