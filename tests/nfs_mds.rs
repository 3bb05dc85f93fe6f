//! The NFSv4.1 metadata server (`src/pnfs/nfs/`).
//!
//! `wire_rules`: the server on a fresh gfs2-utils image, spoken to over TCP
//! by a minimal client written here from RFC 8881's XDR: the session rules
//! (a retransmitted REMOVE is answered from the slot's cache and not run
//! twice, misordered and unknown slots refused), stateids, and garbage
//! (random and mutated records) that must neither crash a thread nor stop
//! the server answering.

mod common;

use common::mkfs;
use gfs2fuse::dev::file::{FileDevice, OpenFlags};
use gfs2fuse::fs::{Fs, MountOptions};
use gfs2fuse::pnfs::nfs::xdr::{Dec, Enc};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |i| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        prev(i)
    }));
}

// RFC 8881 numbers, written out here rather than taken from the server.
const OP_ACCESS: u32 = 3;
const OP_CLOSE: u32 = 4;
const OP_GETATTR: u32 = 9;
const OP_GETFH: u32 = 10;
const OP_LOOKUP: u32 = 15;
const OP_OPEN: u32 = 18;
const OP_PUTFH: u32 = 22;
const OP_PUTROOTFH: u32 = 24;
const OP_READ: u32 = 25;
const OP_REMOVE: u32 = 28;
const OP_WRITE: u32 = 38;
const OP_EXCHANGE_ID: u32 = 42;
const OP_CREATE_SESSION: u32 = 43;
const OP_LAYOUTGET: u32 = 50;
const OP_SEQUENCE: u32 = 53;
const OP_RECLAIM_COMPLETE: u32 = 58;
const NFS4ERR_NOENT: u32 = 2;
const NFS4ERR_BADHANDLE: u32 = 10001;
const NFS4ERR_BAD_STATEID: u32 = 10025;
const NFS4ERR_BADXDR: u32 = 10036;
const NFS4ERR_BADSLOT: u32 = 10053;
const NFS4ERR_LAYOUTUNAVAILABLE: u32 = 10059;
const NFS4ERR_SEQ_MISORDERED: u32 = 10063;
const NFS4ERR_OP_NOT_IN_SESSION: u32 = 10071;
const NFS4ERR_MINOR_VERS_MISMATCH: u32 = 10021;

struct Client {
    s: TcpStream,
    xid: u32,
    uid: u32,
}

impl Client {
    fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client { s, xid: 1, uid: 0 }
    }

    fn send_raw(&mut self, body: &[u8]) {
        let mut rec = (0x8000_0000u32 | body.len() as u32).to_be_bytes().to_vec();
        rec.extend_from_slice(body);
        self.s.write_all(&rec).unwrap();
    }

    fn recv_raw(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut h = [0u8; 4];
            self.s.read_exact(&mut h).expect("a reply");
            let h = u32::from_be_bytes(h);
            let mut b = vec![0u8; (h & 0x7fff_ffff) as usize];
            self.s.read_exact(&mut b).unwrap();
            out.extend_from_slice(&b);
            if h & 0x8000_0000 != 0 {
                return out;
            }
        }
    }

    /// An RPC call of NFS v4 procedure `proc_`; returns the results after
    /// an accepted SUCCESS reply header.
    fn call(&mut self, proc_: u32, args: &[u8]) -> Vec<u8> {
        self.xid += 1;
        let mut cred = Enc::new();
        cred.u32(0)
            .opaque(b"test")
            .u32(self.uid)
            .u32(self.uid)
            .u32(0);
        let mut e = Enc::new();
        e.u32(self.xid).u32(0).u32(2).u32(100003).u32(4).u32(proc_);
        e.u32(1).opaque(&cred.buf).u32(0).u32(0);
        e.buf.extend_from_slice(args);
        self.send_raw(&e.buf);
        let r = self.recv_raw();
        let mut d = Dec::new(&r);
        assert_eq!(d.u32().unwrap(), self.xid, "xid");
        assert_eq!(d.u32().unwrap(), 1, "a reply");
        assert_eq!(d.u32().unwrap(), 0, "MSG_ACCEPTED");
        d.u32().unwrap();
        d.opaque(400).unwrap();
        assert_eq!(d.u32().unwrap(), 0, "SUCCESS");
        d.rest().to_vec()
    }

    /// COMPOUND of `n` ops already encoded in `ops`; returns (status, the
    /// results after the op count).
    fn compound(&mut self, n: u32, ops: &[u8]) -> (u32, Vec<u8>) {
        let mut e = Enc::new();
        e.opaque(b"t").u32(1).u32(n);
        e.buf.extend_from_slice(ops);
        let r = self.call(1, &e.buf);
        let mut d = Dec::new(&r);
        let status = d.u32().unwrap();
        assert_eq!(d.opaque(64).unwrap(), b"t", "tag echoed");
        d.u32().unwrap();
        (status, d.rest().to_vec())
    }
}

fn sequence(e: &mut Enc, sid: &[u8], seq: u32, slot: u32) {
    e.u32(OP_SEQUENCE)
        .fixed(sid)
        .u32(seq)
        .u32(slot)
        .u32(slot)
        .bool(true);
}

/// EXCHANGE_ID + CREATE_SESSION; the session id.
fn session(c: &mut Client, owner: &[u8]) -> (u64, Vec<u8>) {
    let mut e = Enc::new();
    e.u32(OP_EXCHANGE_ID)
        .fixed(&[1; 8])
        .opaque(owner)
        .u32(0)
        .u32(0)
        .u32(0);
    let (st, r) = c.compound(1, &e.buf);
    assert_eq!(st, 0, "EXCHANGE_ID");
    let mut d = Dec::new(&r);
    assert_eq!((d.u32().unwrap(), d.u32().unwrap()), (OP_EXCHANGE_ID, 0));
    let clientid = d.u64().unwrap();
    let seq = d.u32().unwrap();
    let flags = d.u32().unwrap();
    assert_ne!(flags & 0x0002_0000, 0, "EXCHGID4_FLAG_USE_PNFS_MDS");
    let mut e = Enc::new();
    e.u32(OP_CREATE_SESSION).u64(clientid).u32(seq).u32(0);
    for _ in 0..2 {
        e.u32(0)
            .u32(1 << 20)
            .u32(1 << 20)
            .u32(4096)
            .u32(16)
            .u32(8)
            .u32(0);
    }
    e.u32(0x4000_0000).u32(1).u32(0);
    let (st, r) = c.compound(1, &e.buf);
    assert_eq!(st, 0, "CREATE_SESSION");
    let mut d = Dec::new(&r);
    d.u32().unwrap();
    d.u32().unwrap();
    (clientid, d.fixed(16).unwrap().to_vec())
}

/// Status of each op in a COMPOUND's results (stops at the first op whose
/// body this test does not parse).
fn first_statuses(r: &[u8], n: usize) -> Vec<(u32, u32)> {
    let mut d = Dec::new(r);
    let mut v = Vec::new();
    for _ in 0..n {
        let (Ok(op), Ok(st)) = (d.u32(), d.u32()) else {
            break;
        };
        v.push((op, st));
        if st != 0 {
            break;
        }
        match op {
            OP_SEQUENCE => {
                d.fixed(16).unwrap();
                for _ in 0..5 {
                    d.u32().unwrap();
                }
            }
            OP_PUTROOTFH | OP_PUTFH => {}
            OP_REMOVE => {
                d.bool().unwrap();
                d.u64().unwrap();
                d.u64().unwrap();
            }
            _ => break,
        }
    }
    v
}

#[test]
fn wire_rules() {
    count_panics();
    let img = mkfs(4096, 1, 128, "nfs-wire");
    let dev = FileDevice::open(&img.0, OpenFlags::default()).unwrap();
    let fs = Fs::mount(Arc::new(dev), MountOptions::default()).unwrap();
    let root = fs.root();
    for n in ["a", "b"] {
        fs.mknod(root, n.as_bytes(), 0o100644, 0, 0, 0, 0, None)
            .unwrap();
    }
    let h = gfs2fuse::pnfs::nfs::start(fs.clone(), None, "127.0.0.1:0").unwrap();
    let port = h.addr.port();
    let mut c = Client::connect(port);
    // NULL.
    assert!(c.call(0, &[]).is_empty());
    // Minor version 0 and 2 are not ours; ops outside a session refused.
    let mut e = Enc::new();
    e.opaque(b"t").u32(0).u32(0);
    assert_eq!(
        Dec::new(&c.call(1, &e.buf)).u32().unwrap(),
        NFS4ERR_MINOR_VERS_MISMATCH
    );
    let mut e = Enc::new();
    e.u32(OP_PUTROOTFH);
    assert_eq!(c.compound(1, &e.buf).0, NFS4ERR_OP_NOT_IN_SESSION);

    let (_clientid, sid) = session(&mut c, b"wire-test");
    let mut e = Enc::new();
    sequence(&mut e, &sid, 1, 0);
    e.u32(OP_RECLAIM_COMPLETE).bool(false);
    assert_eq!(c.compound(2, &e.buf).0, 0, "RECLAIM_COMPLETE");

    // A retransmitted REMOVE: the same reply, run once.
    let mut e = Enc::new();
    sequence(&mut e, &sid, 1, 1);
    e.u32(OP_PUTROOTFH).u32(OP_REMOVE).opaque(b"a");
    let first = c.compound(3, &e.buf);
    assert_eq!(first.0, 0, "REMOVE a");
    assert!(fs.lookup(root, b"a").is_err(), "a removed");
    let again = c.compound(3, &e.buf);
    assert_eq!(again, first, "the retransmission gets the cached reply");
    // The next sequence id runs it anew: now it is gone.
    let mut e = Enc::new();
    sequence(&mut e, &sid, 2, 1);
    e.u32(OP_PUTROOTFH).u32(OP_REMOVE).opaque(b"a");
    let (st, r) = c.compound(3, &e.buf);
    assert_eq!(st, NFS4ERR_NOENT);
    assert_eq!(
        first_statuses(&r, 3).last(),
        Some(&(OP_REMOVE, NFS4ERR_NOENT))
    );
    // Misordered (skipping ahead, or old) and unknown slots.
    for (seq, slot, want) in [
        (4, 1, NFS4ERR_SEQ_MISORDERED),
        (1, 0, 0), // seq 1 on slot 0 is the cached RECLAIM_COMPLETE
        (1, 99, NFS4ERR_BADSLOT),
    ] {
        let mut e = Enc::new();
        sequence(&mut e, &sid, seq, slot);
        if want == 0 {
            e.u32(OP_RECLAIM_COMPLETE).bool(false);
            assert_eq!(c.compound(2, &e.buf).0, 0);
        } else {
            assert_eq!(c.compound(1, &e.buf).0, want, "seq {seq} slot {slot}");
        }
    }

    // OPEN (create), WRITE, READ, CLOSE; then a stale stateid.
    let mut e = Enc::new();
    sequence(&mut e, &sid, 2, 0);
    e.u32(OP_PUTROOTFH);
    e.u32(OP_OPEN)
        .u32(0)
        .u32(3)
        .u32(0)
        .u64(_clientid)
        .opaque(b"owner1");
    e.u32(1).u32(0).u32s(&[]).opaque(&[]); // CREATE, UNCHECKED4, no attrs
    e.u32(0).opaque(b"new"); // CLAIM_NULL
    e.u32(OP_GETFH);
    let (st, r) = c.compound(4, &e.buf);
    assert_eq!(st, 0, "OPEN create");
    let mut d = Dec::new(&r);
    for _ in 0..2 {
        d.u32().unwrap();
    }
    d.fixed(16).unwrap();
    for _ in 0..5 {
        d.u32().unwrap();
    }
    assert_eq!((d.u32().unwrap(), d.u32().unwrap()), (OP_PUTROOTFH, 0));
    assert_eq!((d.u32().unwrap(), d.u32().unwrap()), (OP_OPEN, 0));
    let stateid = d.fixed(16).unwrap().to_vec();
    d.bool().unwrap();
    d.u64().unwrap();
    d.u64().unwrap();
    d.u32().unwrap();
    d.u32s(4).unwrap();
    assert_eq!(d.u32().unwrap(), 0, "no delegation");
    assert_eq!((d.u32().unwrap(), d.u32().unwrap()), (OP_GETFH, 0));
    let fh = d.opaque(128).unwrap().to_vec();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
    let mut e = Enc::new();
    sequence(&mut e, &sid, 3, 0);
    e.u32(OP_PUTFH).opaque(&fh);
    e.u32(OP_WRITE)
        .fixed(&stateid)
        .u64(100)
        .u32(2)
        .opaque(&data);
    e.u32(OP_READ).fixed(&stateid).u64(0).u32(20_000);
    e.u32(OP_LAYOUTGET)
        .bool(false)
        .u32(3)
        .u32(1)
        .u64(0)
        .u64(u64::MAX)
        .u64(0);
    e.fixed(&stateid).u32(4096);
    let (st, r) = c.compound(5, &e.buf);
    assert_eq!(
        st, NFS4ERR_LAYOUTUNAVAILABLE,
        "no layout service: I/O through us"
    );
    let mut d = Dec::new(&r);
    for _ in 0..2 {
        d.u32().unwrap();
    }
    d.fixed(16).unwrap();
    for _ in 0..5 {
        d.u32().unwrap();
    }
    assert_eq!((d.u32().unwrap(), d.u32().unwrap()), (OP_PUTFH, 0));
    assert_eq!((d.u32().unwrap(), d.u32().unwrap()), (OP_WRITE, 0));
    assert_eq!(d.u32().unwrap(), data.len() as u32);
    assert_eq!(d.u32().unwrap(), 2, "FILE_SYNC4");
    d.fixed(8).unwrap();
    assert_eq!((d.u32().unwrap(), d.u32().unwrap()), (OP_READ, 0));
    assert!(d.bool().unwrap(), "eof");
    let got = d.opaque(1 << 20).unwrap();
    assert_eq!(got.len(), 100 + data.len());
    assert!(got[..100].iter().all(|&b| b == 0));
    assert_eq!(&got[100..], &data[..]);
    // The library sees what the client wrote.
    let a = fs.lookup(root, b"new").unwrap();
    assert_eq!(fs.read(a.ino, 100, data.len()).unwrap(), data);
    let mut e = Enc::new();
    sequence(&mut e, &sid, 4, 0);
    e.u32(OP_PUTFH)
        .opaque(&fh)
        .u32(OP_CLOSE)
        .u32(0)
        .fixed(&stateid);
    e.u32(OP_READ).fixed(&stateid).u64(0).u32(10);
    let (st, _) = c.compound(4, &e.buf);
    assert_eq!(st, NFS4ERR_BAD_STATEID, "a closed open's stateid");
    // A handle that is not ours; one of a removed file.
    let mut e = Enc::new();
    sequence(&mut e, &sid, 5, 0);
    e.u32(OP_PUTFH).opaque(b"nonsense");
    assert_eq!(c.compound(2, &e.buf).0, NFS4ERR_BADHANDLE);
    fs.remove(root, b"new", false).unwrap();
    let mut e = Enc::new();
    sequence(&mut e, &sid, 6, 0);
    e.u32(OP_PUTFH).opaque(&fh).u32(OP_GETATTR).u32s(&[2]);
    assert_eq!(c.compound(3, &e.buf).0, 70, "NFS4ERR_STALE");
    // Truncated ops inside a session: BADXDR, and the slot is usable after.
    let mut e = Enc::new();
    sequence(&mut e, &sid, 7, 0);
    e.u32(OP_LOOKUP).u32(1000);
    assert_eq!(c.compound(2, &e.buf).0, NFS4ERR_BADXDR);
    let mut e = Enc::new();
    sequence(&mut e, &sid, 8, 0);
    e.u32(OP_PUTROOTFH).u32(OP_ACCESS).u32(0x3f);
    assert_eq!(c.compound(3, &e.buf).0, 0);

    // Garbage on a connection of its own: random records, and mutations of
    // a valid COMPOUND; the server goes on answering.
    let mut valid = Enc::new();
    valid.u32(77).u32(0).u32(2).u32(100003).u32(4).u32(1);
    valid.u32(0).u32(0).u32(0).u32(0);
    valid.opaque(b"t").u32(1).u32(3);
    sequence(&mut valid, &sid, 9, 2);
    valid.u32(OP_PUTROOTFH).u32(OP_LOOKUP).opaque(b"b");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut g = Client::connect(port);
    for i in 0..3000 {
        let rec = if i % 2 == 0 {
            (0..rnd() % 300).map(|_| rnd() as u8).collect::<Vec<u8>>()
        } else {
            let mut m = valid.buf.clone();
            for _ in 0..1 + rnd() % 3 {
                let at = (rnd() as usize) % m.len();
                m[at] ^= 1 << (rnd() % 8);
            }
            m.truncate(m.len() - (rnd() as usize % 8));
            m
        };
        g.send_raw(&rec);
    }
    // Replies (some records get none) are not awaited: a NULL after them
    // must be answered on a fresh connection, and no thread panicked.
    drop(g);
    let mut c2 = Client::connect(port);
    assert!(c2.call(0, &[]).is_empty());
    let mut e = Enc::new();
    sequence(&mut e, &sid, 9, 0);
    e.u32(OP_PUTROOTFH)
        .u32(OP_LOOKUP)
        .opaque(b"b")
        .u32(OP_GETFH);
    assert_eq!(c.compound(4, &e.buf).0, 0, "the session still works");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a server thread panicked");
    drop(c);
    drop(c2);
    fs.unmount().unwrap();
    common::fsck_clean(&img.0, "after the NFS wire test");
}
