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
    let h = gfs2fuse::pnfs::nfs::start(
        fs.clone(),
        None,
        "127.0.0.1:0",
        gfs2fuse::pnfs::nfs::server::LEASE,
    )
    .unwrap();
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

/// The Linux kernel's NFSv4.1 client (in a qemu VM, `gfs2_oracle::nfs`)
/// against our daemon started with `-o nfsd=`: every operation through
/// shell commands in the VM, each checked through the daemon's own FUSE
/// mount on the host; `fsck.gfs2 -n` clean after unmounting; tshark decodes
/// every RPC of the capture without a malformed packet or an error.
#[test]
fn linux_client() {
    use gfs2_oracle::nfs::{NfsClientVm, NfsVmOpts, MNT};
    use std::path::Path;
    use std::process::{Command, Stdio};

    let img = mkfs(4096, 2, 256, "nfs-vm");
    let mnt = common::mountpoint("nfs-vm");
    let port = common::free_port();
    let log = std::env::temp_dir().join(format!("gfs2-nfsd-{}.log", std::process::id()));
    let child = Command::new(common::gfs2_fuse())
        .arg("mount")
        .arg(&img.0)
        .arg(&mnt.0)
        .args(["-f", "-o", &format!("nfsd=127.0.0.1:{port}")])
        .env("RUST_LOG", "gfs2fuse::pnfs=debug,info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let t0 = std::time::Instant::now();
    while !common::is_mounted(&mnt.0) || TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "daemon not up:\n{}",
            daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let guard = common::MountGuard(mnt.0.clone());
    let host = |p: &str| mnt.0.join(p);
    // Something the host wrote before the client came.
    std::fs::write(host("from-host"), b"written through FUSE\n").unwrap();

    let pcap = std::env::temp_dir().join(format!("gfs2-nfs-{}.pcap", std::process::id()));
    let vm = NfsClientVm::start(NfsVmOpts::new().pcap(&pcap)).expect("client VM");
    eprintln!("VM up in {:.1} s", vm.boot_time().as_secs_f64());
    // actimeo=1: attributes the host changes are looked at again within 1 s.
    vm.mount_nfs(port, "actimeo=1")
        .unwrap_or_else(|e| panic!("mount: {e:#}\n{}", daemon_log()));
    let sh = |s: &str| {
        vm.sh_ok_timeout(&format!("cd {MNT} && {s}"), Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{s}: {e:#}\n--- daemon log tail:\n{}", tail(&daemon_log())))
    };
    // Read what the host wrote; create, write, read back.
    assert_eq!(sh("cat from-host"), "written through FUSE\n");
    sh("echo hello > f1 && dd if=/dev/urandom of=big bs=64k count=40 2>/dev/null && sync");
    let vm_sum = sh("sha256sum big");
    let vm_sum = vm_sum.split_whitespace().next().unwrap().to_string();
    assert_eq!(std::fs::read(host("f1")).unwrap(), b"hello\n");
    assert_eq!(
        sha256(&host("big")),
        vm_sum,
        "the client's data seen through FUSE"
    );
    assert_eq!(std::fs::metadata(host("big")).unwrap().len(), 40 * 65536);
    // A file the host writes now is read by the client through the server.
    std::fs::write(host("late"), vec![0x5au8; 300_000]).unwrap();
    let out = sh("echo 3 > /proc/sys/vm/drop_caches; sha256sum late big; stat -c %s late");
    assert!(out.contains(&sha256(&host("late"))), "{out}");
    assert!(out.contains(&vm_sum), "{out}");
    assert!(out.ends_with("300000\n"), "{out}");
    // A directory of a few hundred entries, listed on both sides.
    sh("mkdir d && i=0; while [ $i -lt 300 ]; do echo $i > d/entry-$i; i=$((i+1)); done; sync");
    let listed = sh("ls d | wc -l");
    assert_eq!(listed.trim(), "300");
    assert_eq!(std::fs::read_dir(host("d")).unwrap().count(), 300);
    assert_eq!(std::fs::read(host("d/entry-123")).unwrap(), b"123\n");
    // rename, remove, mkdir/rmdir, symlink, hard link, chmod, truncate.
    sh(
        "mv f1 f2 && mv d/entry-0 moved && rm d/entry-1 d/entry-2 && mkdir e e/sub && rmdir e/sub \
        && ln -s f2 sl && ln f2 hard && chmod 640 f2 && truncate -s 1000 big \
        && dd if=/dev/zero of=big bs=1 count=0 seek=5000 2>/dev/null && sync",
    );
    assert!(!host("f1").exists());
    assert_eq!(std::fs::read(host("f2")).unwrap(), b"hello\n");
    assert_eq!(std::fs::read(host("moved")).unwrap(), b"0\n");
    assert_eq!(std::fs::read_dir(host("d")).unwrap().count(), 297);
    assert!(host("e").is_dir() && !host("e/sub").exists());
    assert_eq!(std::fs::read_link(host("sl")).unwrap(), Path::new("f2"));
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(host("f2")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.nlink()), (0o640, 2));
    assert_eq!(m.ino(), std::fs::metadata(host("hard")).unwrap().ino());
    let big = std::fs::read(host("big")).unwrap();
    assert_eq!(big.len(), 5000);
    assert!(
        big[1000..].iter().all(|&b| b == 0),
        "the truncated tail reads as zeros"
    );
    // What the client sees of those, through stat, readlink and ls.
    // (caches dropped: the client knows the link's target since it made it)
    let out = sh("echo 3 > /proc/sys/vm/drop_caches; stat -c '%a %h %s' f2 big && readlink sl && cat sl && ls e");
    assert_eq!(out, "640 2 6\n644 1 5000\nf2\nhello\n");
    // The host changes things; the client sees them (attributes revalidated).
    std::fs::remove_file(host("hard")).unwrap();
    std::fs::create_dir(host("hostdir")).unwrap();
    let out = sh("sleep 2; stat -c %h f2; ls -d hostdir; ls hard 2>&1 || true");
    assert!(out.starts_with("1\nhostdir\n"), "{out}");
    // Errors come back as errno: removing a non-empty directory, a missing
    // file, a name that exists.
    let out = sh("rmdir d 2>&1; rm nothere 2>&1; mkdir e 2>&1; true");
    assert!(out.contains("Directory not empty"), "{out}");
    assert!(out.contains("No such file"), "{out}");
    assert!(out.contains("File exists"), "{out}");
    // Permissions as an unprivileged user: the server checks them.
    // (busybox su of a user added to the VM's passwd: no setuid tool there.)
    let out = sh("chmod 600 f2 && mkdir -m 777 open && \
        echo 'nfsu:x:1000:1000::/tmp:/bin/sh' >> /etc/passwd && \
        chmod a+rx / /bin /bin/busybox /mnt && \
        su nfsu -c 'id -u; cat f2 2>&1; echo x > open/u1 && stat -c %u:%g open/u1; echo y > f2 2>&1' 2>&1; true");
    assert!(out.starts_with("1000\n"), "not run as uid 1000: {out}");
    assert!(out.contains("Permission denied"), "{out}");
    assert!(out.contains("1000:1000"), "{out}");
    assert_eq!(std::fs::metadata(host("open/u1")).unwrap().uid(), 1000);
    // Set-user-ID goes when an unprivileged user writes (the client leaves
    // it to the server, as to the kernel's nfsd), and on chown; root's own
    // write keeps it.
    let out = sh(
        "echo a > suid && chmod 4777 suid && echo b >> suid && stat -c %a suid && \
        su nfsu -c 'echo c >> suid' && stat -c %a suid && \
        chmod 6755 suid && chown 1000:1000 suid && stat -c %a suid",
    );
    assert_eq!(out, "4777\n777\n755\n", "set-id bits over NFS");
    let st = vm.mountstats(MNT).unwrap();
    eprintln!("mountstats: {:?}", st.ops);
    for op in [
        "OPEN", "CLOSE", "WRITE", "READ", "READDIR", "REMOVE", "RENAME", "LINK", "SETATTR",
        "CREATE", "LOOKUP", "GETATTR", "ACCESS", "READLINK", "SYMLINK",
    ] {
        assert!(st.op(op) >= 1, "{op} never sent: {st:?}");
    }
    vm.umount(MNT).unwrap();
    drop(vm);
    drop(guard);
    common::wait_daemon_gone(&mnt.0);
    let mut child = child;
    let _ = child.wait();
    common::fsck_clean(&img.0, "after the NFS client's workload");

    // tshark decodes the whole exchange.
    let out = Command::new(common::tool("tshark"))
        .arg("-r")
        .arg(&pcap)
        // TLS off: a client port tshark gives to TLS would hide the stream.
        .args(["--disable-protocol", "tls"])
        .args(["-d", &format!("tcp.port=={port},rpc"), "-V", "-Y", "rpc"])
        .output()
        .expect("tshark (apt-get install tshark)");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let replies = text.matches("Message Type: Reply (1)").count();
    assert!(replies > 100, "tshark saw {replies} RPC replies");
    for op in [
        "EXCHANGE_ID",
        "CREATE_SESSION",
        "SEQUENCE",
        "READDIR",
        "OPEN",
        "WRITE",
    ] {
        assert!(text.contains(&format!("Opcode: {op}")), "{op} not decoded");
    }
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Malformed") || l.contains("Expert Info (Error"))
        .collect();
    assert!(
        bad.is_empty(),
        "tshark found problems ({} lines): {:?}",
        bad.len(),
        &bad[..bad.len().min(20)]
    );
    eprintln!("tshark: {replies} RPC replies decoded, none malformed");
    let _ = std::fs::remove_file(&pcap);
    let _ = std::fs::remove_file(&log);
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn sha256(p: &std::path::Path) -> String {
    let out = std::process::Command::new(common::tool("sha256sum"))
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The block layout, end to end (issue 16's acceptance), in one VM boot:
/// the client VM has the filesystem's disk too, so with blkmapd it writes
/// and reads file data on the disk itself. The daemon runs two `lock_mem`
/// nodes (M0 serves NFS, M1 is "another node") with a 10 s lease.
/// 1. The client's files, written through layouts, read back right through
///    both nodes, in the client, and at the end by the kernel's gfs2 in the
///    VM; `fsck.gfs2 -n` clean.
/// 2. A write through M1 while the client holds a layout: recalled,
///    returned, done; both views agree.
/// 3. The client frozen (qemu `stop`) while holding a layout: M1's write
///    waits for the recall, then the client is fenced (two leases, or its
///    lease runs out first) and the write proceeds; what it had committed
///    is intact. What fencing does not do with the block layout: a client
///    that resumes may still have I/O in flight to the disk; nothing stops
///    it at the disk without SCSI persistent reservations (the SCSI
///    layout's PR preempt, not built). The frozen client here holds a
///    read layout only (nothing of its own in flight), and is resumed after
///    the checks; the kernel's gfs2 and fsck look at the disk after that.
/// 4. tshark decodes every reply in the capture, layout bodies included.
#[test]
fn pnfs_block_layout() {
    use gfs2_oracle::nfs::{NfsClientVm, NfsVmOpts, MNT};
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    const LEASE: u64 = 10;
    let img = mkfs(4096, 2, 256, "pnfs-blk");
    let m0 = common::mountpoint("pnfs-blk0");
    let m1 = common::mountpoint("pnfs-blk1");
    let port = common::free_port();
    let log = std::env::temp_dir().join(format!("gfs2-pnfs-{}.log", std::process::id()));
    let child = common::start_nfsd_pair(
        img.0.as_ref(),
        &m0.0,
        &m1.0,
        port,
        LEASE,
        "gfs2fuse::pnfs=trace,info",
        &log,
    );
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let guards = [
        common::MountGuard(m0.0.clone()),
        common::MountGuard(m1.0.clone()),
    ];
    let on0 = |p: &str| m0.0.join(p);
    let on1 = |p: &str| m1.0.join(p);
    let pcap = std::env::temp_dir().join(format!("gfs2-pnfs-{}.pcap", std::process::id()));
    let vm = NfsClientVm::start(NfsVmOpts::new().disk(&img.0).pcap(&pcap)).expect("client VM");
    eprintln!("VM up in {:.1} s", vm.boot_time().as_secs_f64());
    vm.start_blkmapd().unwrap();
    vm.mount_nfs(port, "")
        .unwrap_or_else(|e| panic!("mount: {e:#}\n{}", daemon_log()));
    let sh = |s: &str| {
        vm.sh_ok_timeout(&format!("cd {MNT} && {s}"), Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("{s}: {e:#}\n--- daemon log tail:\n{}\n--- VM:\n{}", tail(&daemon_log()), vm.sh("cat /tmp/blkmapd.log; ps; dmesg | tail -30; for p in /proc/[0-9]*; do grep -q -E 'sha256|dd|cat' $p/comm 2>/dev/null && cat $p/stack $p/wchan; done").map(|o| o.stdout + &o.stderr).unwrap_or_default()))
    };
    let granted = || daemon_log().matches("layout granted").count();
    // Recalls answered: by a return, or NOMATCHING_LAYOUT (the Linux client
    // forgets a layout with no I/O in flight rather than return it; RFC
    // 8881 12.5.5.1: the layout is then gone as if returned).
    let answered = || {
        let l = daemon_log();
        l.matches("CB_LAYOUTRECALL answered").count()
            + l.matches("recall: client holds no layout").count()
    };
    // A reader in the VM that reads the file's start through a layout
    // (caches dropped first) and keeps it open.
    const HOLD: &str = "echo 3 > /proc/sys/vm/drop_caches; rm -f /tmp/held; \
        (exec 3<blk; dd bs=64k count=2 <&3 >/dev/null 2>&1; touch /tmp/held; sleep 300) \
        > /dev/null 2>&1 & echo $! > /tmp/holder; \
        while [ ! -e /tmp/held ]; do sleep 0.2; done";

    // 1. Written through layouts, read back everywhere.
    let out = sh(
        "dd if=/dev/urandom of=/tmp/src bs=64k count=64 2>/dev/null && cp /tmp/src blk && \
        dd if=/dev/urandom of=/tmp/c bs=64k count=16 2>/dev/null && cp /tmp/c committed && \
        sync && sha256sum /tmp/src /tmp/c",
    );
    let sums: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let (sum, csum) = (sums[0].to_string(), sums[1].to_string());
    let st = vm.mountstats(MNT).unwrap();
    eprintln!(
        "mountstats: {:?}",
        st.ops.iter().filter(|(_, n)| **n > 0).collect::<Vec<_>>()
    );
    let dmesg = vm.dmesg().unwrap();
    assert!(dmesg.contains("pNFS: using block device vda"), "{dmesg}");
    for op in ["LAYOUTGET", "GETDEVICEINFO", "LAYOUTCOMMIT"] {
        assert!(st.op(op) >= 1, "{op}: {st:?}\n{}", tail(&daemon_log()));
    }
    assert_eq!(st.op("WRITE"), 0, "the data went through the MDS: {st:?}");
    assert_eq!(sha256(&on0("blk")), sum, "the client's data through node 0");
    assert_eq!(sha256(&on1("blk")), sum, "the client's data through node 1");
    assert_eq!(sha256(&on1("committed")), csum);
    let out = sh("echo 3 > /proc/sys/vm/drop_caches; sha256sum blk");
    assert!(out.starts_with(&sum), "{out}");

    // 2. Another node writes while the client holds a layout: the client
    // reads through one (caches dropped, file kept open) first.
    let before = granted();
    sh(HOLD);
    assert!(granted() > before, "the holder got no layout");
    let answers = answered();
    let t = std::time::Instant::now();
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(on1("blk"))
            .unwrap();
        f.write_all_at(b"NODE1 WROTE THIS", 4096).unwrap();
        f.sync_all().unwrap();
    }
    let took = t.elapsed();
    eprintln!(
        "node 1's write with a layout out: {:.2} s",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(LEASE),
        "the recall was not answered in time ({took:?})"
    );
    let dl = daemon_log();
    assert!(answered() > answers, "no recall answered:\n{}", tail(&dl));
    assert!(!dl.contains("client fenced"), "fenced:\n{}", tail(&dl));
    let out =
        sh("echo 3 > /proc/sys/vm/drop_caches; dd if=blk bs=1 skip=4096 count=16 2>/dev/null");
    assert_eq!(out, "NODE1 WROTE THIS");
    let mut expect = std::fs::read(on1("blk")).unwrap();
    assert_eq!(&expect[4096..4112], b"NODE1 WROTE THIS");
    assert_eq!(
        std::fs::read(on0("blk")).unwrap(),
        expect,
        "node 0 and node 1 differ"
    );
    let st2 = vm.mountstats(MNT).unwrap();
    eprintln!(
        "after the recall: {:?}",
        st2.ops.iter().filter(|(_, n)| **n > 0).collect::<Vec<_>>()
    );
    // The client keeps the device it was told about: one GETDEVICEINFO for
    // all the layouts it fetched (a client that re-asks after each return
    // goes through blkmapd each time, where the 6.1 client can hang).
    assert!(st2.op("LAYOUTGET") >= 4, "{st2:?}");
    assert_eq!(st2.op("GETDEVICEINFO"), 1, "{st2:?}");
    sh("kill $(cat /tmp/holder); sleep 1");

    // 3. The client stops answering while it holds a layout.
    let before = granted();
    sh(HOLD);
    assert!(granted() > before, "the holder got no layout");
    vm.set_running(false).unwrap();
    let t = std::time::Instant::now();
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(on1("blk"))
            .unwrap();
        f.write_all_at(b"AFTER THE FENCE", 8192).unwrap();
        f.sync_all().unwrap();
    }
    let took = t.elapsed();
    eprintln!(
        "node 1's write with a frozen client: {:.2} s",
        took.as_secs_f64()
    );
    let dl = daemon_log();
    assert!(
        dl.contains("client fenced") || dl.contains("client gone: lease expired"),
        "the frozen client was neither fenced nor expired:\n{}",
        tail(&dl)
    );
    // It waited for the client (the recall), and not for ever.
    assert!(took >= Duration::from_secs(LEASE / 2), "{took:?}");
    assert!(took < Duration::from_secs(4 * LEASE), "{took:?}");
    expect[8192..8207].copy_from_slice(b"AFTER THE FENCE");
    assert_eq!(std::fs::read(on0("blk")).unwrap(), expect);
    assert_eq!(std::fs::read(on1("blk")).unwrap(), expect);
    assert_eq!(sha256(&on0("committed")), csum, "committed data lost");
    let fuse_sums = (sha256(&on0("blk")), csum.clone());

    // Back to the client: it finds its state gone, and lets go.
    vm.set_running(true).unwrap();
    let _ = vm.sh_timeout(
        &format!("kill $(cat /tmp/holder); umount {MNT} || umount -f {MNT} || umount -l {MNT}"),
        Duration::from_secs(120),
    );
    drop(guards);
    common::wait_daemon_gone(&m0.0);
    common::wait_daemon_gone(&m1.0);
    let mut child = child;
    let _ = child.wait();

    // The kernel's gfs2 reads the same files from the disk.
    let out = vm
        .sh_ok_timeout(
            "echo 3 > /proc/sys/vm/drop_caches; mkdir -p /mnt/g && \
             mount -t gfs2 -o lockproto=lock_nolock /dev/vda /mnt/g && \
             sha256sum /mnt/g/blk /mnt/g/committed && umount /mnt/g",
            Duration::from_secs(120),
        )
        .unwrap_or_else(|e| panic!("kernel gfs2: {e:#}"));
    let ksums: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        ksums,
        [fuse_sums.0.as_str(), fuse_sums.1.as_str()],
        "the kernel's gfs2 reads other data"
    );
    drop(vm);
    common::fsck_clean(&img.0, "after the pNFS client, the recall and the fence");

    // 4. tshark decodes every reply, the block layout's included.
    let out = Command::new(common::tool("tshark"))
        .arg("-r")
        .arg(&pcap)
        // TLS off: a client port tshark gives to TLS would hide the stream.
        .args(["--disable-protocol", "tls"])
        .args(["-d", &format!("tcp.port=={port},rpc"), "-V", "-Y", "rpc"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for op in [
        "LAYOUTGET",
        "GETDEVINFO", // tshark's name for GETDEVICEINFO
        "LAYOUTCOMMIT",
        "LAYOUTRETURN",
        "CB_LAYOUTRECALL",
    ] {
        assert!(text.contains(&format!("Opcode: {op}")), "{op} not decoded");
    }
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Malformed") || l.contains("Expert Info (Error"))
        .collect();
    assert!(bad.is_empty(), "tshark: {:?}", &bad[..bad.len().min(20)]);
    let replies = text.matches("Message Type: Reply (1)").count();
    eprintln!("tshark: {replies} RPC replies decoded, none malformed");
    let _ = std::fs::remove_file(&pcap);
    let _ = std::fs::remove_file(&log);
}

/// `nfsd=` and `pnfs=` together are refused before anything is mounted:
/// one layout service per node, its recalls going to one metadata server.
#[test]
fn nfsd_with_pnfs_refused() {
    let img = mkfs(4096, 1, 64, "nfsd-pnfs");
    let mnt = common::mountpoint("nfsd-pnfs");
    let sock = std::env::temp_dir().join(format!("gfs2-nfsd-pnfs-{}.sock", std::process::id()));
    let out = std::process::Command::new(common::gfs2_fuse())
        .arg("mount")
        .arg(&img.0)
        .arg(&mnt.0)
        .arg("-o")
        .arg(format!("nfsd=127.0.0.1:0,pnfs={}", sock.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("pnfs= and nfsd="), "{err}");
    assert!(!common::is_mounted(&mnt.0));
    assert!(!sock.exists());
}
