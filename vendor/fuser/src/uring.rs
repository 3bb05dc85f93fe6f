//! FUSE over io_uring: requests arrive and replies leave through io_uring
//! commands on `/dev/fuse` instead of `read(2)` and `writev(2)`.
//!
//! (Added to this vendored copy; see `PATCHED.md`.) Since Linux 6.14 the
//! kernel can hand FUSE requests to a daemon through `IORING_OP_URING_CMD`:
//! the daemon registers *ring entries*, each a pair of buffers (a 288-byte
//! header and a payload as large as the biggest request), on one queue per
//! possible CPU. The kernel copies a request into a free entry of the queue of
//! the CPU the caller runs on and completes the command; the daemon writes its
//! reply into the same buffers and submits COMMIT_AND_FETCH, which hands the
//! reply over and re-arms the entry in one system call where the classic path
//! needs two (`writev` the reply, `read` the next request). The kernel offers
//! it (`FUSE_OVER_IO_URING` in INIT) only while the `fuse` module parameter
//! `enable_uring` is set.
//!
//! Facts of the kernel's protocol this follows (fs/fuse/dev_uring.c):
//! - the rings need `IORING_SETUP_SQE128`: the command (`fuse_uring_cmd_req`:
//!   flags, commit id, queue id) lives in the SQE's 80-byte command area;
//!   REGISTER carries the two buffers as an iovec array in `addr`/`len`;
//! - registration is refused before the INIT reply; once every queue has an
//!   entry the kernel routes all requests but FORGET and INTERRUPT (and
//!   notifications, which go the other way) to the rings, so the classic
//!   readers stay;
//! - after INIT with `FUSE_OVER_IO_URING` the kernel holds new requests until
//!   the rings are complete; so the rings are created (and the flag asked for)
//!   only once creating them worked, and a refused REGISTER makes the kernel
//!   fall back to the classic path;
//! - a request's fixed per-operation struct goes to the header's `op_in`, its
//!   other arguments (names, write data) to the payload;
//!   `fuse_in_header.len` still counts them all, which gives the struct's size.
//!
//! Our model: every serving thread owns an io_uring with one entry and serves
//! it synchronously, like a thread blocked in `read(2)`. Several threads per
//! queue (entries of one queue are interchangeable to the kernel) keep a
//! request that waits (for a cluster lock, say) from holding up the others
//! of its CPU. The request is copied out of the entry before it is
//! dispatched, so a reply (which may come from another thread) can be written
//! into the entry while the request's arguments are still borrowed.

use std::io;
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::warn;

use zerocopy::IntoBytes;

use crate::channel::ChannelSender;
use crate::ll::fuse_abi::fuse_out_header;

/// `FUSE_IO_URING_CMD_REGISTER`: hand the kernel an entry's buffers.
const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`: reply, and wait for the next request.
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `fuse_in_header`: len, opcode, unique, nodeid, uid, gid, pid, padding.
const IN_HEADER: usize = 40;
/// `fuse_out_header`: len, error, unique.
const OUT_HEADER: usize = 16;
/// `fuse_uring_req_header`: in_out[128], op_in[128], `fuse_uring_ent_in_out`.
const HEADER_SIZE: usize = 288;
const OP_IN: usize = 128;
/// Offsets inside `fuse_uring_ent_in_out` (at 256): flags, commit_id,
/// payload_sz, padding, reserved.
const ENT_COMMIT_ID: usize = 256 + 8;
const ENT_PAYLOAD_SZ: usize = 256 + 16;
/// Byte offsets in the SQE (`struct io_uring_sqe`) the builder does not set.
const SQE_LEN: usize = 24;

/// A heap buffer aligned for `fuse_in_header` (u64 words).
struct Words(Box<[u64]>);

impl Words {
    fn new(bytes: usize) -> Self {
        Words(vec![0u64; bytes.div_ceil(8)].into_boxed_slice())
    }
    fn ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr().cast()
    }
    fn len(&self) -> usize {
        self.0.len() * 8
    }
}

/// One ring entry's buffers and the hand-over of its reply.
///
/// The kernel reads and writes the buffers only while the entry is
/// submitted; the serving thread submits it only after the reply is in
/// (`handover`), and the reply is written under that lock.
pub(crate) struct Slot {
    header: *mut u8,
    payload: *mut u8,
    payload_len: usize,
    /// Owns the memory `header` and `payload` point into.
    _buffers: (Words, Words),
    handover: Mutex<Handover>,
    wake: Condvar,
}

/// Whether the current request's reply is in, and whether the serving
/// thread sleeps until it is (a reply from the serving thread itself, the
/// usual case, then wakes nobody: no futex call per request).
struct Handover {
    replied: bool,
    waiting: bool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({} byte payload)", self.payload_len)
    }
}

// SAFETY: the raw pointers point into `_buffers`, owned by the slot, and are
// written only under `handover`'s lock or by the serving thread while no
// reply is outstanding (see the type's doc).
unsafe impl Send for Slot {}
unsafe impl Sync for Slot {}

impl Slot {
    fn new(payload_len: usize) -> Self {
        let mut header = Words::new(HEADER_SIZE);
        let mut payload = Words::new(payload_len);
        Slot {
            header: header.ptr(),
            payload: payload.ptr(),
            payload_len: payload.len(),
            _buffers: (header, payload),
            handover: Mutex::new(Handover {
                replied: true,
                waiting: false,
            }),
            wake: Condvar::new(),
        }
    }

    fn read_u32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        // SAFETY: `at + 4 <= HEADER_SIZE` at every caller; no reply is being
        // written while the serving thread reads a request.
        unsafe { std::ptr::copy_nonoverlapping(self.header.add(at), b.as_mut_ptr(), 4) };
        u32::from_ne_bytes(b)
    }

    fn read_u64(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        // SAFETY: as in `read_u32`.
        unsafe { std::ptr::copy_nonoverlapping(self.header.add(at), b.as_mut_ptr(), 8) };
        u64::from_ne_bytes(b)
    }

    /// Write a reply (`data[0]` the `fuse_out_header`, the rest its body)
    /// into the entry and wake the serving thread.
    pub(crate) fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let mut h = self.handover.lock().unwrap_or_else(|e| e.into_inner());
        let result = if h.replied {
            Err(io::Error::other("FUSE ring entry replied to twice"))
        } else {
            self.write_reply(data)
        };
        h.replied = true;
        if h.waiting {
            self.wake.notify_all();
        }
        result
    }

    /// Reply with data `fill` writes straight into the entry's payload (at
    /// most `size` bytes, and no more than the entry holds), or its error.
    pub(crate) fn send_filled(
        &self,
        unique: u64,
        size: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, crate::Errno>,
    ) {
        let mut handover = self.handover.lock().unwrap_or_else(|e| e.into_inner());
        if handover.replied {
            warn!("FUSE ring entry replied to twice");
            return;
        }
        let size = size.min(self.payload_len);
        // SAFETY: the payload holds `payload_len` bytes; while no reply is
        // in and the handover's lock is held nobody else touches it (see the type's
        // doc), so this is the only reference.
        let payload = unsafe { std::slice::from_raw_parts_mut(self.payload, size) };
        let (error, n) = match fill(payload) {
            Ok(n) => (0, n.min(size)),
            Err(e) => (-e.code(), 0),
        };
        self.put_header(unique, error, n);
        handover.replied = true;
        if handover.waiting {
            self.wake.notify_all();
        }
    }

    fn write_reply(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let Some((head, body)) = data.split_first() else {
            return Err(io::Error::other("empty FUSE reply"));
        };
        let body_len: usize = body.iter().map(|b| b.len()).sum();
        let unique = head
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_ne_bytes);
        if head.len() != OUT_HEADER || body_len > self.payload_len {
            // Tell the kernel the request failed rather than leave it waiting.
            self.put_header(unique, -libc::EIO, 0);
            return Err(io::Error::other(format!(
                "FUSE reply of {body_len} bytes does not fit the ring entry ({})",
                self.payload_len
            )));
        }
        let error = i32::from_ne_bytes([head[4], head[5], head[6], head[7]]);
        let mut at = 0;
        for b in body {
            // SAFETY: `at + b.len() <= body_len <= payload_len`, checked above.
            unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), self.payload.add(at), b.len()) };
            at += b.len();
        }
        self.put_header(unique, error, body_len);
        Ok(())
    }

    /// The reply's `fuse_out_header` and the size of its body, already in
    /// the payload.
    fn put_header(&self, unique: u64, error: i32, payload_sz: usize) {
        let out = fuse_out_header {
            len: (OUT_HEADER + payload_sz) as u32,
            error,
            unique,
        };
        let sz = (payload_sz as u32).to_ne_bytes();
        // SAFETY: the header is OUT_HEADER (16) bytes, within `in_out`; the
        // payload size field lies inside the 288-byte header.
        unsafe {
            std::ptr::copy_nonoverlapping(out.as_bytes().as_ptr(), self.header, OUT_HEADER);
            std::ptr::copy_nonoverlapping(sz.as_ptr(), self.header.add(ENT_PAYLOAD_SZ), 4);
        }
    }

    fn arm(&self) {
        self.handover.lock().unwrap_or_else(|e| e.into_inner()).replied = false;
    }

    fn wait_replied(&self) {
        let mut h = self.handover.lock().unwrap_or_else(|e| e.into_inner());
        while !h.replied {
            h.waiting = true;
            h = self.wake.wait(h).unwrap_or_else(|e| e.into_inner());
        }
        h.waiting = false;
    }
}

/// Where a reply to a ring request goes: its entry, plus the classic channel
/// for what only `/dev/fuse` does (backing files of FUSE passthrough).
#[derive(Clone)]
pub(crate) struct RingReply {
    pub(crate) slot: Arc<Slot>,
    pub(crate) ch: ChannelSender,
}

impl std::fmt::Debug for RingReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RingReply")
    }
}

/// One serving thread's ring and entry.
pub(crate) struct RingThread {
    fd: std::os::fd::RawFd,
    pub(crate) qid: u16,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    slot: Arc<Slot>,
    iov: Box<[libc::iovec; 2]>,
    /// The request copied out of the entry, aligned for parsing.
    request: Words,
}

// SAFETY: `iov` holds pointers into the slot's buffers, which the thread owns
// through `slot`; the ring is used by the one thread the value moves to.
unsafe impl Send for RingThread {}

/// The rings of a session, created before the INIT reply asks for them.
pub(crate) struct Rings {
    pub(crate) threads: Vec<RingThread>,
    pub(crate) served: Arc<AtomicU64>,
}

impl std::fmt::Debug for Rings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rings({} threads)", self.threads.len())
    }
}

/// CPUs in a `/sys/devices/system/cpu` list such as `0-3,6`.
fn cpu_list(path: &str) -> io::Result<Vec<usize>> {
    let text = std::fs::read_to_string(path)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {text:?}"));
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: usize = a.parse().map_err(|_| bad())?;
        let b: usize = b.parse().map_err(|_| bad())?;
        if b < a || b > 4095 {
            return Err(bad());
        }
        cpus.extend(a..=b);
    }
    Ok(cpus)
}

impl Rings {
    /// One queue per possible CPU (the kernel's `num_possible_cpus()`), the
    /// online CPUs' queues sharing `threads` serving threads (at least one
    /// each), the queues of CPUs not online (which get requests only once
    /// such a CPU comes up) one thread each.
    pub(crate) fn new(dev: BorrowedFd<'_>, threads: usize, payload: usize) -> io::Result<Rings> {
        let possible = cpu_list("/sys/devices/system/cpu/possible")?;
        let online = cpu_list("/sys/devices/system/cpu/online").unwrap_or_default();
        let nr_queues = possible.len();
        if nr_queues == 0 || possible.iter().enumerate().any(|(i, &c)| i != c) {
            return Err(io::Error::other(format!(
                "possible CPUs not numbered 0..n: {possible:?}"
            )));
        }
        let n_online = online.iter().filter(|&&c| c < nr_queues).count().max(1);
        let per_queue = threads.div_ceil(n_online).max(1);
        let mut serving = Vec::new();
        for qid in 0..nr_queues {
            let n = if online.contains(&qid) { per_queue } else { 1 };
            for _ in 0..n {
                serving.push(RingThread::new(dev, qid as u16, payload)?);
            }
        }
        Ok(Rings {
            threads: serving,
            served: Arc::new(AtomicU64::new(0)),
        })
    }
}

impl RingThread {
    fn new(dev: BorrowedFd<'_>, qid: u16, payload: usize) -> io::Result<RingThread> {
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(2)?;
        let slot = Arc::new(Slot::new(payload));
        let iov = Box::new([
            libc::iovec {
                iov_base: slot.header.cast(),
                iov_len: HEADER_SIZE,
            },
            libc::iovec {
                iov_base: slot.payload.cast(),
                iov_len: slot.payload_len,
            },
        ]);
        Ok(RingThread {
            fd: dev.as_raw_fd(),
            qid,
            ring,
            request: Words::new(IN_HEADER + OP_IN + slot.payload_len),
            slot,
            iov,
        })
    }

    /// Run on the CPU whose queue this thread serves: the kernel puts a
    /// request on the queue of the CPU its caller runs on, so caller and
    /// server then take turns on one CPU instead of waking each other
    /// across CPUs. Where that CPU is not ours to use (a cpuset), the
    /// thread runs wherever the scheduler puts it.
    fn pin(&self) {
        let cpu = usize::from(self.qid);
        if cpu >= libc::CPU_SETSIZE as usize {
            return;
        }
        // SAFETY: a zeroed cpu_set_t is an empty set; `cpu` is below
        // CPU_SETSIZE; the call reads `set` only.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if rc != 0 {
            debug!(
                "FUSE ring queue {}: not pinned: {}",
                self.qid,
                io::Error::last_os_error()
            );
        }
    }

    /// The slot replies to the current request go to.
    pub(crate) fn slot(&self) -> Arc<Slot> {
        self.slot.clone()
    }

    fn command(&self, op: u32, commit_id: u64) -> squeue::Entry128 {
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        // The plain descriptor, not a registered one: a registration that
        // failed after the INIT reply asked for io_uring would leave the
        // kernel waiting for rings that never come; only a REGISTER the
        // kernel refuses makes it fall back to /dev/fuse.
        let mut b = opcode::UringCmd80::new(types::Fd(self.fd), op).cmd(cmd);
        if op == CMD_REGISTER {
            b = b.addr(Some(self.iov.as_ptr() as u64));
        }
        let entry = b.build().user_data(u64::from(op));
        if op != CMD_REGISTER {
            return entry;
        }
        // REGISTER also needs `len` = 2 (the iovec count), which the
        // builder has no setter for.
        // SAFETY: `Entry128` is `repr(C)` over the 128-byte SQE; `len` is
        // the u32 at byte 24 of `struct io_uring_sqe`.
        let mut raw: [u8; 128] = unsafe { std::mem::transmute(entry) };
        raw[SQE_LEN..SQE_LEN + 4].copy_from_slice(&2u32.to_ne_bytes());
        // SAFETY: as above, the same bytes back.
        unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
    }

    fn submit(&mut self, entry: &squeue::Entry128) -> io::Result<()> {
        // SAFETY: the buffers the command points at (iovec, header and
        // payload) live in `self` and `self.slot` for as long as the ring.
        unsafe { self.ring.submission().push(entry) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    /// Serve until the kernel ends the connection. `handle` parses and
    /// dispatches one request (a byte image as `read(2)` from `/dev/fuse`
    /// would give it); its reply goes to [`RingThread::slot`].
    pub(crate) fn serve(
        mut self,
        served: &AtomicU64,
        mut handle: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        self.pin();
        let mut next = self.command(CMD_REGISTER, 0);
        let mut registering = true;
        loop {
            self.submit(&next)?;
            let res = loop {
                match self.ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) => return Err(e),
                }
                if let Some(cqe) = self.ring.completion().next() {
                    break cqe.result();
                }
            };
            match res {
                0 => {}
                r if r == -libc::EINTR || r == -libc::EAGAIN => continue,
                r if [libc::ENOTCONN, libc::ECANCELED, libc::ENODEV, libc::ECONNABORTED]
                    .contains(&-r) =>
                {
                    debug!("FUSE ring queue {}: connection ended", self.qid);
                    return Ok(());
                }
                r => {
                    let e = io::Error::from_raw_os_error(r.saturating_neg());
                    if registering {
                        // The kernel gave up io_uring for this connection
                        // and serves through /dev/fuse.
                        return Err(e);
                    }
                    // A commit the kernel refused leaves the entry with
                    // it; a fresh one takes its place, or this CPU's
                    // queue could end up with none.
                    warn!("FUSE ring queue {}: commit failed: {e}", self.qid);
                    next = self.command(CMD_REGISTER, 0);
                    registering = true;
                    continue;
                }
            }
            registering = false;
            let commit_id = self.slot.read_u64(ENT_COMMIT_ID);
            served.fetch_add(1, Ordering::Relaxed);
            match self.copy_request() {
                Ok(len) => {
                    self.slot.arm();
                    // SAFETY: `copy_request` filled `len` bytes of the buffer.
                    let bytes =
                        unsafe { std::slice::from_raw_parts(self.request.ptr().cast_const(), len) };
                    handle(bytes);
                    self.slot.wait_replied();
                }
                Err(e) => {
                    warn!("FUSE ring queue {}: {e}", self.qid);
                    self.slot.put_header(commit_id, -libc::EIO, 0);
                }
            }
            next = self.command(CMD_COMMIT_AND_FETCH, commit_id);
        }
    }

    /// Put the request in the entry back together as one message:
    /// `fuse_in_header`, the per-operation struct, the payload.
    fn copy_request(&mut self) -> io::Result<usize> {
        let len = self.slot.read_u32(0) as usize;
        let payload_sz = self.slot.read_u32(ENT_PAYLOAD_SZ) as usize;
        let op_len = len
            .checked_sub(IN_HEADER + payload_sz)
            .filter(|&n| n <= OP_IN && n % 8 == 0 && payload_sz <= self.slot.payload_len)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "malformed ring request: len {len}, payload {payload_sz}"
                ))
            })?;
        if len > self.request.len() {
            return Err(io::Error::other("ring request larger than its buffer"));
        }
        let dst = self.request.ptr();
        // SAFETY: the three ranges fit the header (40 + 128 <= 256) and the
        // payload (checked above), and the destination holds `len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.slot.header, dst, IN_HEADER);
            std::ptr::copy_nonoverlapping(self.slot.header.add(128), dst.add(IN_HEADER), op_len);
            std::ptr::copy_nonoverlapping(
                self.slot.payload,
                dst.add(IN_HEADER + op_len),
                payload_sz,
            );
        }
        Ok(len)
    }
}
