//! The raw packet socket one caller talks AoE through: bound to one
//! interface, filtered (BPF) to the replies to its own tags, frames out by
//! sendmmsg and in by recvmmsg.

use super::*;

/// A raw packet socket bound to one interface for AoE frames.
pub(super) struct Link {
    sock: OwnedFd,
    ifindex: i32,
    pub(super) mac: [u8; 6],
    pub(super) mtu: usize,
    /// Bits 16-30 of this socket's tags; its filter passes only those.
    id: u32,
    seq: u16,
    /// Receive buffer.
    pub(super) scratch: Vec<u8>,
    /// Replies taken from the socket together, not yet handed out.
    rx: RxBatch,
}

/// How many frames one receive call may take (recvmmsg).
const RX_BATCH: usize = 8;

/// Frames received by one recvmmsg: slot `i` of `cap` bytes in `data`;
/// `frames` lists the slots kept (index, length, source), `next` the first
/// not handed out yet.
struct RxBatch {
    data: Vec<u8>,
    cap: usize,
    frames: Vec<(usize, usize, [u8; 6])>,
    next: usize,
}

fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
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
    pub(super) fn open(iface: &str, id: u32) -> io::Result<Link> {
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
        // A socket filter (classic BPF) passes replies to this socket's
        // tags only: the response flag (bit 3 of the first byte) must be
        // set, which keeps the copies of our own outgoing requests out of
        // the socket (each cost a wake-up and a receive); then the tag
        // (offset 6 of the AoE header), its upper half compared.
        let want = TAG_USER | (id << 16);
        let prog = [
            bpf(0x30, 0, 0, 0),                    // ldb [0]
            bpf(0x45, 0, 4, u32::from(FLAG_RESP)), // jset #R, next, drop
            bpf(0x20, 0, 0, 6),                    // ld [6]
            bpf(0x54, 0, 0, 0xffff_0000),          // and #0xffff0000
            bpf(0x15, 0, 1, want),                 // jeq #want, accept, drop
            bpf(0x06, 0, 0, 0x0004_0000),          // ret: accept
            bpf(0x06, 0, 0, 0),                    // ret: drop
        ];
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: fprog points at the program, alive during the call.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                &fprog as *const libc::sock_fprog as *const libc::c_void,
                std::mem::size_of::<libc::sock_fprog>() as u32,
            )
        };
        if r < 0 {
            return Err(last_os("attaching the AoE socket filter"));
        }
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
        let link = Link {
            sock,
            ifindex,
            mac,
            mtu,
            id,
            // A random start: less chance of meeting another socket's tags.
            seq: (random_id() as u16) % 0xff00,
            scratch: vec![0u8; (mtu + 128).max(9216)],
            rx: RxBatch {
                data: vec![0u8; RX_BATCH * (mtu + 128)],
                cap: mtu + 128,
                frames: Vec::with_capacity(RX_BATCH),
                next: 0,
            },
        };
        // Frames that came before the filter.
        let mut junk = [0u8; 64];
        while link.recv_flags(&mut junk, libc::MSG_DONTWAIT)?.is_some() {}
        Ok(link)
    }

    /// Tag bits shared by every frame of this socket.
    pub(super) fn tag_base(&self) -> u32 {
        TAG_USER | (self.id << 16)
    }

    /// A fresh tag (low halves from 0xff00 up are for config queries).
    pub(super) fn next_tag(&mut self) -> u32 {
        self.seq = if self.seq >= 0xfeff { 0 } else { self.seq + 1 };
        self.tag_base() | u32::from(self.seq)
    }

    /// Send one frame made of `parts` to `dst`.
    pub(super) fn send(&self, dst: &[u8; 6], parts: &[&[u8]]) -> io::Result<()> {
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

    /// Send frames, each made of two parts, to `dst` (sendmmsg).
    pub(super) fn send_many(&self, dst: &[u8; 6], frames: &[[&[u8]; 2]]) -> io::Result<()> {
        let sa = sockaddr(self.ifindex, Some(dst));
        let mut iovs: Vec<[libc::iovec; 2]> = frames
            .iter()
            .map(|parts| {
                parts.map(|p| libc::iovec {
                    iov_base: p.as_ptr() as *mut libc::c_void,
                    iov_len: p.len(),
                })
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain data; all-zero is valid before filling.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = &sa as *const libc::sockaddr_ll as *mut libc::c_void;
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                m.msg_hdr.msg_iov = iov.as_mut_ptr();
                m.msg_hdr.msg_iovlen = if iov[1].iov_len == 0 { 1 } else { 2 };
                m
            })
            .collect();
        let mut done = 0;
        while done < msgs.len() {
            let rest = &mut msgs[done..];
            // SAFETY: every message points at live buffers (`sa`, `iovs` and
            // the frames' parts) for the duration of the call.
            let r = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "sendmmsg sent nothing",
                ));
            }
            done += r as usize;
        }
        Ok(())
    }

    /// Receive one frame without blocking: its length and source MAC.
    /// `None` when nothing is queued.
    pub(super) fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, [u8; 6])>> {
        self.recv_flags(buf, libc::MSG_DONTWAIT)
    }

    /// Receive one frame: one left from the last batch, else look for
    /// some without blocking for up to `poll`, yielding the processor
    /// between looks, then wait up to [`RECV_TICK`]. With `batch` (the
    /// caller awaits several replies), replies that arrived together are
    /// taken in one call; a single reply is cheaper to take alone.
    pub(super) fn recv_polling(
        &mut self,
        buf: &mut [u8],
        poll: Duration,
        batch: bool,
    ) -> io::Result<Option<(usize, [u8; 6])>> {
        if let Some(got) = self.rx_take(buf) {
            return Ok(Some(got));
        }
        let mut look = |link: &mut Link, wait: bool| -> io::Result<Option<(usize, [u8; 6])>> {
            if !batch {
                return link.recv_flags(buf, if wait { 0 } else { libc::MSG_DONTWAIT });
            }
            let flags = if wait {
                libc::MSG_WAITFORONE
            } else {
                libc::MSG_DONTWAIT
            };
            Ok(if link.rx_fill(flags)? {
                link.rx_take(buf)
            } else {
                None
            })
        };
        if let Some(got) = crate::dev::poll_yielding(poll, || look(self, false))? {
            return Ok(Some(got));
        }
        look(self, true)
    }

    /// The next frame of the current batch, copied into `buf`.
    fn rx_take(&mut self, buf: &mut [u8]) -> Option<(usize, [u8; 6])> {
        let rx = &mut self.rx;
        let &(slot, len, mac) = rx.frames.get(rx.next)?;
        rx.next += 1;
        let n = len.min(buf.len()).min(rx.cap);
        let at = slot * rx.cap;
        buf[..n].copy_from_slice(&rx.data[at..at + n]);
        Some((n, mac))
    }

    /// Receive up to [`RX_BATCH`] frames (recvmmsg with `flags`) into a new
    /// batch. False when none came (nothing queued, or the receive tick
    /// passed) or none of them was an incoming frame on our interface.
    fn rx_fill(&mut self, flags: i32) -> io::Result<bool> {
        let rx = &mut self.rx;
        rx.frames.clear();
        rx.next = 0;
        let mut addrs = [sockaddr(0, None); RX_BATCH];
        // (On the stack: this runs for every look while polling.)
        // SAFETY: iovec and mmsghdr are plain data; all-zero is valid
        // before filling.
        let mut iovs: [libc::iovec; RX_BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; RX_BATCH] = unsafe { std::mem::zeroed() };
        let slots = rx.data.chunks_exact_mut(rx.cap);
        for (((iov, m), sa), c) in iovs.iter_mut().zip(&mut msgs).zip(&mut addrs).zip(slots) {
            iov.iov_base = c.as_mut_ptr() as *mut libc::c_void;
            iov.iov_len = c.len();
            m.msg_hdr.msg_name = sa as *mut libc::sockaddr_ll as *mut libc::c_void;
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let r = loop {
            // SAFETY: every message points at a live slot of `rx.data` and
            // a live address in `addrs`, of the sizes given.
            let r = unsafe {
                libc::recvmmsg(
                    self.sock.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    msgs.len() as libc::c_uint,
                    flags,
                    std::ptr::null_mut(),
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(false),
                _ => return Err(e),
            }
        };
        for (i, (m, sa)) in msgs.iter().zip(addrs.iter()).take(r).enumerate() {
            if let Some(mac) = self.source(sa) {
                self.rx.frames.push((i, m.msg_len as usize, mac));
            }
        }
        Ok(!self.rx.frames.is_empty())
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
            if let Some(mac) = self.source(&sa) {
                return Ok(Some((r as usize, mac)));
            }
        }
    }

    /// The sender of a frame received with address `sa`: `None` for a frame
    /// seen on another interface or for a copy of one we sent.
    fn source(&self, sa: &libc::sockaddr_ll) -> Option<[u8; 6]> {
        if sa.sll_ifindex != self.ifindex || sa.sll_pkttype == libc::PACKET_OUTGOING {
            return None;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&sa.sll_addr[..6]);
        Some(mac)
    }

    /// Wait until a frame arrives or `timeout` passes.
    pub(super) fn wait(&self, timeout: Duration) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_as_sysfs_writes_them() {
        assert_eq!(
            parse_mac("02:00:0a:ff:00:01\n"),
            Some([2, 0, 10, 255, 0, 1])
        );
        assert_eq!(parse_mac("02:00"), None);
    }
}
