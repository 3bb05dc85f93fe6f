//! ONC RPC (RFC 5531) over TCP for the NFSv4.1 server: record marking,
//! call and reply headers, AUTH_SYS and AUTH_NONE credentials, and the
//! client side of the backchannel.
//!
//! NFSv4.1 runs its callbacks (CB_COMPOUND) over the connection the client
//! opened (the session's backchannel), so one connection carries calls both
//! ways: the reader of a connection hands the client's calls to the server
//! and the replies to our own calls to whoever waits for them
//! ([`Conn::call`]).

use super::xdr::{Dec, Enc, XResult, XdrError};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

/// `msg_type`.
const CALL: u32 = 0;
const REPLY: u32 = 1;
/// `auth_flavor`.
pub const AUTH_NONE: u32 = 0;
/// `AUTH_SYS` (`AUTH_UNIX`).
pub const AUTH_SYS: u32 = 1;
/// `accept_stat`.
pub const SUCCESS: u32 = 0;
/// The program is not served.
pub const PROG_UNAVAIL: u32 = 1;
/// The version is not served.
pub const PROG_MISMATCH: u32 = 2;
/// The procedure is not served.
pub const PROC_UNAVAIL: u32 = 3;
/// The arguments did not decode.
pub const GARBAGE_ARGS: u32 = 4;
/// `auth_stat` AUTH_TOOWEAK.
pub const AUTH_TOOWEAK: u32 = 5;

/// Largest record accepted (a WRITE of 1 MiB plus headers).
pub const MAX_RECORD: usize = (1 << 20) + 64 * 1024;

/// Who is calling: the credential of an RPC call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cred {
    /// AUTH_NONE: treated as the anonymous user.
    None,
    /// AUTH_SYS: the client's word for the caller.
    Sys {
        /// Effective uid.
        uid: u32,
        /// Effective gid.
        gid: u32,
        /// Supplementary groups (at most 16).
        gids: Vec<u32>,
    },
}

/// The anonymous uid/gid (`nobody`), for AUTH_NONE.
pub const NOBODY: u32 = 65534;

impl Cred {
    /// uid the filesystem sees.
    pub fn uid(&self) -> u32 {
        match self {
            Cred::None => NOBODY,
            Cred::Sys { uid, .. } => *uid,
        }
    }
    /// Primary gid.
    pub fn gid(&self) -> u32 {
        match self {
            Cred::None => NOBODY,
            Cred::Sys { gid, .. } => *gid,
        }
    }
    /// Whether `g` is one of the caller's groups.
    pub fn in_group(&self, g: u32) -> bool {
        match self {
            Cred::None => g == NOBODY,
            Cred::Sys { gid, gids, .. } => *gid == g || gids.contains(&g),
        }
    }
}

/// The header of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallHeader {
    /// Transaction id.
    pub xid: u32,
    /// Program.
    pub prog: u32,
    /// Version.
    pub vers: u32,
    /// Procedure.
    pub proc_: u32,
    /// Credential; `Err(flavor)` for one we do not take.
    pub cred: Result<Cred, u32>,
}

/// A message read off a connection.
#[derive(Debug)]
pub enum Msg<'a> {
    /// A call, with its arguments still to decode.
    Call(CallHeader, Dec<'a>),
    /// A reply to one of our calls: `Ok(results)` when accepted with
    /// SUCCESS, `Err(())` otherwise.
    Reply(u32, Result<&'a [u8], ()>),
}

fn opaque_auth(d: &mut Dec<'_>) -> XResult<(u32, Vec<u8>)> {
    let flavor = d.u32()?;
    let body = d.opaque(400)?;
    Ok((flavor, body.to_vec()))
}

fn parse_cred(flavor: u32, body: &[u8]) -> XResult<Result<Cred, u32>> {
    match flavor {
        AUTH_NONE => Ok(Ok(Cred::None)),
        AUTH_SYS => {
            let mut d = Dec::new(body);
            let _stamp = d.u32()?;
            let _machine = d.opaque(255)?;
            let uid = d.u32()?;
            let gid = d.u32()?;
            let gids = d.u32s(16)?;
            Ok(Ok(Cred::Sys { uid, gid, gids }))
        }
        f => Ok(Err(f)),
    }
}

/// Parse one record. `Err` carries the xid when it was readable, so that a
/// garbled call can still be answered.
pub fn parse_msg(buf: &[u8]) -> Result<Msg<'_>, (Option<u32>, XdrError)> {
    let mut d = Dec::new(buf);
    let xid = d.u32().map_err(|e| (None, e))?;
    let inner = |d: &mut Dec<'_>| -> XResult<Option<CallHeader>> {
        match d.u32()? {
            CALL => {
                if d.u32()? != 2 {
                    return Err(XdrError::Bad);
                }
                let prog = d.u32()?;
                let vers = d.u32()?;
                let proc_ = d.u32()?;
                let (flavor, body) = opaque_auth(d)?;
                let _verf = opaque_auth(d)?;
                let cred = parse_cred(flavor, &body)?;
                Ok(Some(CallHeader {
                    xid,
                    prog,
                    vers,
                    proc_,
                    cred,
                }))
            }
            REPLY => Ok(None),
            _ => Err(XdrError::Bad),
        }
    };
    match inner(&mut d).map_err(|e| (Some(xid), e))? {
        Some(h) => Ok(Msg::Call(h, d)),
        None => {
            let ok = (|| -> XResult<bool> {
                if d.u32()? != 0 {
                    return Ok(false); // MSG_DENIED
                }
                opaque_auth(&mut d)?;
                Ok(d.u32()? == SUCCESS)
            })()
            .map_err(|e| (Some(xid), e))?;
            Ok(Msg::Reply(xid, if ok { Ok(d.rest()) } else { Err(()) }))
        }
    }
}

/// The start of an accepted reply with `accept_stat` `stat`.
pub fn accepted(xid: u32, stat: u32) -> Enc {
    let mut e = Enc::new();
    e.u32(xid).u32(REPLY).u32(0).u32(AUTH_NONE).u32(0).u32(stat);
    e
}

/// A PROG_MISMATCH reply.
pub fn prog_mismatch(xid: u32, low: u32, high: u32) -> Enc {
    let mut e = accepted(xid, PROG_MISMATCH);
    e.u32(low).u32(high);
    e
}

/// A denied reply: `AUTH_ERROR` with `stat`.
pub fn auth_error(xid: u32, stat: u32) -> Enc {
    let mut e = Enc::new();
    e.u32(xid).u32(REPLY).u32(1).u32(1).u32(stat);
    e
}

/// A denied reply: RPC_MISMATCH (we speak version 2 only).
pub fn rpc_mismatch(xid: u32) -> Enc {
    let mut e = Enc::new();
    e.u32(xid).u32(REPLY).u32(1).u32(0).u32(2).u32(2);
    e
}

/// Read one record (all its fragments). `Ok(None)` at a clean end of the
/// stream; a record longer than `max` is an error (the connection is
/// dropped: nothing sane can follow).
pub fn read_record(r: &mut impl Read, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let mut h = [0u8; 4];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && out.is_empty() => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
        let h = u32::from_be_bytes(h);
        let last = h & 0x8000_0000 != 0;
        let len = (h & 0x7fff_ffff) as usize;
        if out.len() + len > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("RPC record longer than {max} bytes"),
            ));
        }
        let start = out.len();
        out.resize(start + len, 0);
        r.read_exact(&mut out[start..])?;
        if last {
            return Ok(Some(out));
        }
    }
}

/// One record in one fragment.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 4);
    v.extend_from_slice(&(0x8000_0000u32 | body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// The results of one of our calls, or its rejection.
type CallResult = Result<Vec<u8>, ()>;

/// A client's TCP connection: replies and our callbacks are written to it
/// under one lock (each record whole); replies to our callbacks are routed
/// by xid.
pub struct Conn {
    /// A number naming the connection in logs and session bindings.
    pub id: u64,
    writer: Mutex<TcpStream>,
    pending: Mutex<HashMap<u32, mpsc::Sender<CallResult>>>,
    next_xid: AtomicU32,
    closed: AtomicBool,
}

impl Conn {
    /// Wrap the writing half of a connection.
    pub fn new(id: u64, writer: TcpStream) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Conn {
            id,
            writer: Mutex::new(writer),
            pending: Mutex::new(HashMap::new()),
            next_xid: AtomicU32::new(seed),
            closed: AtomicBool::new(false),
        }
    }

    /// Send one record.
    pub fn send(&self, body: &[u8]) -> io::Result<()> {
        if self.is_closed() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection closed",
            ));
        }
        let rec = frame(body);
        let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(&rec)
    }

    /// The reader saw the end of the connection: fail every waiting call.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let _ = w.shutdown(std::net::Shutdown::Both);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// A reply to one of our calls arrived: hand it to its caller.
    pub fn deliver(&self, xid: u32, r: Result<&[u8], ()>) {
        let tx = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&xid);
        match tx {
            Some(tx) => {
                let _ = tx.send(r.map(|b| b.to_vec()));
            }
            None => tracing::debug!(conn = self.id, xid, "reply to no call of ours"),
        }
    }

    /// Call `prog`/`vers`/`proc_` with AUTH_SYS root credentials and wait
    /// up to `timeout` for the results.
    pub fn call(
        &self,
        prog: u32,
        vers: u32,
        proc_: u32,
        args: &[u8],
        timeout: Duration,
    ) -> io::Result<Vec<u8>> {
        let xid = self.next_xid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(xid, tx);
        let mut cred = Enc::new();
        cred.u32(0).opaque(b"gfs2-fuse").u32(0).u32(0).u32(0);
        let mut e = Enc::new();
        e.u32(xid)
            .u32(CALL)
            .u32(2)
            .u32(prog)
            .u32(vers)
            .u32(proc_)
            .u32(AUTH_SYS)
            .opaque(&cred.buf)
            .u32(AUTH_NONE)
            .u32(0);
        e.buf.extend_from_slice(args);
        let r = self
            .send(&e.buf)
            .and_then(|_| match rx.recv_timeout(timeout) {
                Ok(Ok(b)) => Ok(b),
                Ok(Err(())) => Err(io::Error::other("callback rejected")),
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no callback reply")),
            });
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&xid);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_bytes(cred_flavor: u32, cred: &[u8]) -> Vec<u8> {
        let mut e = Enc::new();
        e.u32(77).u32(CALL).u32(2).u32(100003).u32(4).u32(1);
        e.u32(cred_flavor).opaque(cred).u32(0).u32(0).u32(0xdead);
        e.buf
    }

    #[test]
    fn auth_sys_call_parses() {
        let mut c = Enc::new();
        c.u32(5).opaque(b"vm").u32(1000).u32(100).u32s(&[4, 24]);
        let b = call_bytes(AUTH_SYS, &c.buf);
        let Ok(Msg::Call(h, mut args)) = parse_msg(&b) else {
            panic!("not a call")
        };
        assert_eq!((h.xid, h.prog, h.vers, h.proc_), (77, 100003, 4, 1));
        let cred = h.cred.expect("AUTH_SYS taken");
        assert_eq!(cred.uid(), 1000);
        assert!(cred.in_group(24) && cred.in_group(100) && !cred.in_group(5));
        assert_eq!(args.u32(), Ok(0xdead));
    }

    #[test]
    fn unknown_flavor_and_garbage() {
        let b = call_bytes(6, b"gss");
        let Ok(Msg::Call(h, _)) = parse_msg(&b) else {
            panic!("not a call")
        };
        assert_eq!(h.cred, Err(6));
        // Truncated anywhere: an error with the xid once it is readable.
        for n in 0..b.len() - 4 {
            match parse_msg(&b[..n]) {
                Err((xid, _)) => assert_eq!(xid.is_some(), n >= 4),
                Ok(_) => panic!("truncated call at {n} parsed"),
            }
        }
    }

    #[test]
    fn records_in_fragments() {
        let mut s = Vec::new();
        s.extend_from_slice(&3u32.to_be_bytes());
        s.extend_from_slice(b"abc");
        s.extend_from_slice(&(0x8000_0002u32).to_be_bytes());
        s.extend_from_slice(b"de");
        s.extend_from_slice(&frame(b"xyz"));
        let mut r = &s[..];
        assert_eq!(read_record(&mut r, 100).unwrap(), Some(b"abcde".to_vec()));
        assert_eq!(read_record(&mut r, 100).unwrap(), Some(b"xyz".to_vec()));
        assert_eq!(read_record(&mut r, 100).unwrap(), None);
        // Too long: refused before reading the body.
        let big = (0x8000_0000u32 | 1000).to_be_bytes();
        assert!(read_record(&mut &big[..], 100).is_err());
    }
}
