//! The NFSv4.1 server's process side: the listener, one reader thread per
//! connection, a pool of workers that run COMPOUNDs (so a slow WRITE does
//! not hold up the other slots of a session; it grows when every worker is
//! busy, so requests waiting on a glock never starve the LAYOUTRETURN that
//! would free it), the lease reaper, and
//! the callback thread that sends CB_LAYOUTRECALL for the layout service
//! ([`crate::pnfs::RecallSink`]).

use super::attr::{self, FsInfo};
use super::compound::{self, OpResult};
use super::fh::{Fh, FhError};
use super::op_layout;
use super::proto::{st, NFSPROC4_COMPOUND, NFSPROC4_NULL, NFS_PROGRAM, NFS_V4};
use super::rpc::{self, Conn, Msg, MAX_RECORD};
use super::session::Registry;
use super::state::StateTable;
use super::xdr::Enc;
use crate::fs::{Attr, Fs};
use crate::pnfs::{ClientId, LayoutBackend, Recall, RecallSink};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

/// Largest READ and WRITE (and READDIR reply).
pub const MAX_IO: u64 = 1 << 20;
/// The lease clients renew by SEQUENCE, unless the daemon is told another
/// (`pnfs_lease=`).
pub const LEASE: Duration = Duration::from_secs(90);
/// Threads running COMPOUNDs.
const WORKERS: usize = 8;

/// The metadata server over one mounted filesystem.
pub struct Server {
    /// The filesystem.
    pub fs: Arc<Fs>,
    backend: Option<Arc<dyn LayoutBackend>>,
    reg: Mutex<Registry>,
    states: Mutex<StateTable>,
    info: FsInfo,
    verifier: [u8; 8],
    owner: Vec<u8>,
    /// Verifiers of exclusive creates, by inode (a retransmitted create
    /// finds its file by them).
    excl: Mutex<HashMap<u64, [u8; 8]>>,
    next_conn: AtomicU64,
    /// The generation of every file a layout was granted on, by inode: a
    /// recall names the file by its handle, and reading the inode then
    /// would need the glock the recall is about to give back (another
    /// node wants it: the read would wait for the return, the return for
    /// the recall). An inode with layouts out stays allocated, so its
    /// generation cannot change meanwhile.
    generations: Mutex<HashMap<u64, u64>>,
    /// The lease clients are given (and expired by).
    lease: Duration,
    /// The layout type each client was last granted (recalls name it).
    layout_types: Mutex<HashMap<ClientId, u32>>,
}

/// The [`RecallSink`] the layout service calls.
struct Sink(Weak<Server>, Mutex<mpsc::Sender<Recall>>);

impl RecallSink for Sink {
    fn recall(&self, r: Recall) {
        let _ = self.1.lock().unwrap_or_else(|e| e.into_inner()).send(r);
    }
    fn fence(&self, client: ClientId) {
        if let Some(s) = self.0.upgrade() {
            s.fence(client);
        }
    }
}

impl Server {
    /// A server for `fs`, with layouts from `backend` when there is one,
    /// giving clients `lease`.
    pub fn new(
        fs: Arc<Fs>,
        backend: Option<Arc<dyn LayoutBackend>>,
        lease: Duration,
    ) -> Arc<Server> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let boot = now.as_secs() as u32;
        let uuid = fs.superblock().uuid;
        let mut major = [0u8; 8];
        major.copy_from_slice(&uuid[..8]);
        let mut minor = [0u8; 8];
        minor.copy_from_slice(&uuid[8..16]);
        let info = FsInfo {
            fsid: (u64::from_be_bytes(major), u64::from_be_bytes(minor)),
            lease_secs: lease.as_secs().clamp(1, u32::MAX as u64) as u32,
            max_io: MAX_IO,
            layouts: backend.is_some(),
            scsi: backend
                .as_ref()
                .is_some_and(|b| b.device_info().scsi.is_some()),
            blksize: fs.superblock().bsize,
        };
        let mut verifier = [0u8; 8];
        verifier.copy_from_slice(&(now.as_nanos() as u64).to_be_bytes());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let owner = format!("gfs2-fuse:{host}:{}", hex(&uuid)).into_bytes();
        let (tx, rx) = mpsc::channel();
        let srv = Arc::new(Server {
            fs,
            backend,
            reg: Mutex::new(Registry::new(boot)),
            states: Mutex::new(StateTable::new(boot)),
            info,
            verifier,
            owner,
            excl: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            generations: Mutex::new(HashMap::new()),
            lease,
            layout_types: Mutex::new(HashMap::new()),
        });
        if let Some(b) = &srv.backend {
            b.set_recall_sink(Arc::new(Sink(Arc::downgrade(&srv), Mutex::new(tx))));
        }
        let weak = Arc::downgrade(&srv);
        std::thread::Builder::new()
            .name("nfs-callback".into())
            .spawn(move || recall_loop(weak, rx))
            .ok();
        let weak = Arc::downgrade(&srv);
        std::thread::Builder::new()
            .name("nfs-lease".into())
            .spawn(move || lease_loop(weak))
            .ok();
        srv
    }

    /// The client and session registry.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.reg.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stateid table.
    pub fn states(&self) -> MutexGuard<'_, StateTable> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A layout of `ino` (of this generation) was granted.
    pub fn layout_granted(&self, ino: u64, generation: u64) {
        self.generations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ino, generation);
    }

    /// `client` was granted a layout of type `ltype`.
    pub fn note_layout_type(&self, client: ClientId, ltype: u32) {
        self.layout_types
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client, ltype);
    }

    /// The layout service, if any.
    pub fn backend(&self) -> Option<&Arc<dyn LayoutBackend>> {
        self.backend.as_ref()
    }

    /// Largest READ/WRITE.
    pub fn max_io(&self) -> u64 {
        self.info.max_io
    }

    /// `eir_server_owner`'s major id and the server scope.
    pub fn server_owner(&self) -> &[u8] {
        &self.owner
    }

    /// The write verifier (changes at every start).
    pub fn write_verifier(&self) -> [u8; 8] {
        self.verifier
    }

    /// The verifier an exclusive create left on `ino`.
    pub fn exclusive_verifier(&self, ino: u64) -> Option<[u8; 8]> {
        self.excl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .copied()
    }

    /// Remember an exclusive create's verifier.
    pub fn set_exclusive_verifier(&self, ino: u64, v: [u8; 8]) {
        let mut m = self.excl.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() > 65536 {
            m.clear();
        }
        m.insert(ino, v);
    }

    /// Check a handle: its inode must be the one it was made for, and
    /// linked, or held open by a client.
    pub fn check_fh(&self, fh: &Fh) -> Result<Attr, u32> {
        match fh.check(&self.fs) {
            Ok(a) if a.nlink > 0 || self.states().is_open(a.ino) => Ok(a),
            Ok(_) | Err(FhError::Stale) => Err(st::STALE),
            Err(FhError::Bad) => Err(st::BADHANDLE),
        }
    }

    /// `fattr4` of `a` for `mask`.
    pub fn encode_attrs(&self, e: &mut Enc, mask: &[u32], a: &Attr) -> OpResult {
        let sf = if attr::needs_statfs(mask) {
            Some(self.fs.statfs().map_err(|e| compound::fs_status(&e))?)
        } else {
            None
        };
        let fh = Fh {
            ino: a.ino,
            generation: a.generation,
        }
        .encode();
        attr::encode(e, mask, a, &fh, &self.info, sf.as_ref());
        Ok(())
    }

    /// A client is gone (expired, destroyed, rebooted): its opens are
    /// closed, its layouts returned to the layout service.
    pub fn client_gone(&self, id: ClientId, why: &str) {
        self.registry().remove_client(id);
        self.layout_types
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let inos = self.states().client_gone(id);
        tracing::info!(client = id, opens = inos.len(), "client gone: {why}");
        // Layouts first (a client gone with layouts in hand is cut off the
        // disk there, and their glocks let go): releasing an open may need
        // a glock that a layout's pin holds back.
        if let Some(b) = &self.backend {
            b.client_gone(id);
        }
        for ino in inos {
            if let Err(e) = self.fs.release_inode(ino) {
                tracing::warn!(ino, "releasing an open of a departed client: {e}");
            }
        }
    }

    /// The layout service fenced `client`: its layout state is revoked; the
    /// next SEQUENCE tells it so.
    pub fn fence(&self, client: ClientId) {
        let inos = self.states().drop_layouts(client);
        if let Some(c) = self.registry().client_mut(client) {
            c.revoked = true;
        }
        tracing::warn!(
            client,
            files = inos.len(),
            "client fenced: its layouts are revoked"
        );
    }

    /// Answer one record from `conn`; `None` when there is nothing to send.
    pub fn handle_record(&self, conn: &Arc<Conn>, rec: &[u8]) -> Option<Vec<u8>> {
        let (h, mut args) = match rpc::parse_msg(rec) {
            Ok(Msg::Reply(xid, r)) => {
                conn.deliver(xid, r);
                return None;
            }
            Ok(Msg::Call(h, args)) => (h, args),
            Err((Some(xid), e)) => {
                tracing::debug!(conn = conn.id, "undecodable RPC call: {e}");
                return Some(rpc::accepted(xid, rpc::GARBAGE_ARGS).buf);
            }
            Err((None, _)) => return None,
        };
        if h.prog != NFS_PROGRAM {
            return Some(rpc::accepted(h.xid, rpc::PROG_UNAVAIL).buf);
        }
        if h.vers != NFS_V4 {
            return Some(rpc::prog_mismatch(h.xid, NFS_V4, NFS_V4).buf);
        }
        let cred = match h.cred {
            Ok(c) => c,
            Err(flavor) => {
                tracing::debug!(flavor, "RPC flavour refused");
                return Some(rpc::auth_error(h.xid, rpc::AUTH_TOOWEAK).buf);
            }
        };
        match h.proc_ {
            NFSPROC4_NULL => Some(rpc::accepted(h.xid, rpc::SUCCESS).buf),
            NFSPROC4_COMPOUND => {
                let res = compound::compound(self, conn, cred, &mut args);
                let mut e = rpc::accepted(h.xid, rpc::SUCCESS);
                e.buf.extend_from_slice(&res);
                Some(e.buf)
            }
            _ => Some(rpc::accepted(h.xid, rpc::PROC_UNAVAIL).buf),
        }
    }

    fn recall(&self, r: Recall) {
        let sid = self.states().layout_recall(r.client, r.ino);
        let Some(sid) = sid else {
            // The client holds no layout of the file (any more): done.
            if let Some(b) = &self.backend {
                let _ = b.layout_return(r.client, Some(r.ino), r.offset, r.length);
            }
            return;
        };
        let generation = self
            .generations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&r.ino)
            .copied();
        let fh = match generation {
            Some(generation) => Fh {
                ino: r.ino,
                generation,
            }
            .encode(),
            None => match Fh::of(&self.fs, r.ino) {
                Ok(f) => f.encode(),
                Err(e) => {
                    tracing::warn!(ino = r.ino, "recall of an inode that cannot be read: {e}");
                    return;
                }
            },
        };
        let sessions = self.registry().sessions_of(r.client);
        for s in sessions {
            let (conn, prog, seq) = {
                let mut b = s.back.lock().unwrap_or_else(|e| e.into_inner());
                let Some(c) = b.conn.clone().filter(|c| !c.is_closed()) else {
                    continue;
                };
                b.seq = b.seq.wrapping_add(1);
                (c, b.prog, b.seq)
            };
            let ltype = self
                .layout_types
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&r.client)
                .copied()
                .unwrap_or(super::proto::LAYOUT4_BLOCK_VOLUME);
            let args = op_layout::encode_cb_layoutrecall(
                &s.id, seq, &fh, ltype, r.offset, r.length, r.iomode, &sid,
            );
            match conn.call(
                prog,
                1,
                super::proto::CB_COMPOUND,
                &args,
                Duration::from_secs(15),
            ) {
                Ok(rep) => match op_layout::decode_cb_reply(&rep) {
                    Ok((_, Some(st::NOMATCHING_LAYOUT))) => {
                        tracing::info!(
                            client = r.client,
                            ino = r.ino,
                            "recall: client holds no layout"
                        );
                        self.states().layout_return(r.client, r.ino, false);
                        if let Some(b) = &self.backend {
                            let _ = b.layout_return(r.client, Some(r.ino), r.offset, r.length);
                        }
                        return;
                    }
                    Ok((status, recall)) => {
                        tracing::info!(
                            client = r.client,
                            ino = r.ino,
                            status,
                            ?recall,
                            "CB_LAYOUTRECALL answered"
                        );
                        return;
                    }
                    Err(e) => tracing::warn!("CB_COMPOUND reply undecodable: {e}"),
                },
                Err(e) => tracing::warn!(client = r.client, "CB_LAYOUTRECALL not answered: {e}"),
            }
        }
        tracing::warn!(
            client = r.client,
            ino = r.ino,
            "no backchannel took the recall: the layout service fences the client when its bound passes"
        );
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn recall_loop(srv: Weak<Server>, rx: mpsc::Receiver<Recall>) {
    while let Ok(r) = rx.recv() {
        let Some(s) = srv.upgrade() else { return };
        s.recall(r);
    }
}

fn lease_loop(srv: Weak<Server>) {
    loop {
        let tick = match srv.upgrade() {
            Some(s) => (s.lease / 4).clamp(Duration::from_millis(250), Duration::from_secs(5)),
            None => return,
        };
        std::thread::sleep(tick);
        let Some(s) = srv.upgrade() else { return };
        // A lease and a half: a client renewing at the lease's end is late
        // by a round trip at most.
        let dead = s.registry().expire(s.lease + s.lease / 2);
        for id in dead {
            s.client_gone(id, "lease expired");
        }
    }
}

type Job = (Arc<Conn>, Vec<u8>);

/// A running server (its threads live as long as the process).
pub struct Handle {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The server.
    pub server: Arc<Server>,
}

/// Serve NFSv4.1 for `fs` on `addr` (`HOST:PORT`).
pub fn start(
    fs: Arc<Fs>,
    backend: Option<Arc<dyn LayoutBackend>>,
    addr: &str,
    lease: Duration,
) -> io::Result<Handle> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let srv = Server::new(fs, backend, lease);
    let pool = Pool::new(srv.clone());
    for _ in 0..WORKERS {
        pool.spawn_worker()?;
    }
    let s2 = srv.clone();
    std::thread::Builder::new()
        .name("nfs-listen".into())
        .spawn(move || {
            for c in listener.incoming() {
                match c {
                    Ok(stream) => {
                        let id = s2.next_conn.fetch_add(1, Ordering::Relaxed);
                        let pool = pool.clone();
                        if let Err(e) = std::thread::Builder::new()
                            .name(format!("nfs-conn-{id}"))
                            .spawn(move || connection(id, stream, pool))
                        {
                            tracing::error!("NFS connection thread: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("NFS accept: {e}"),
                }
            }
        })?;
    tracing::info!(%local, layouts = srv.backend.is_some(), "NFSv4.1 server listening");
    Ok(Handle {
        addr: local,
        server: srv,
    })
}

/// Most worker threads: past [`WORKERS`] a worker is added whenever none
/// is idle, so that requests blocked on a glock (held by a layout being
/// recalled) never keep the LAYOUTRETURN that frees it from running.
const MAX_WORKERS: usize = 128;

/// The workers running COMPOUNDs, fed by the connections' readers.
#[derive(Clone)]
struct Pool {
    srv: Arc<Server>,
    tx: mpsc::Sender<Job>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    idle: Arc<AtomicU64>,
    total: Arc<AtomicU64>,
}

impl Pool {
    fn new(srv: Arc<Server>) -> Pool {
        // Unbounded on purpose: a connection's reader must never wait for
        // a worker, since it also delivers the replies to our callbacks.
        let (tx, rx) = mpsc::channel::<Job>();
        Pool {
            srv,
            tx,
            rx: Arc::new(Mutex::new(rx)),
            idle: Arc::new(AtomicU64::new(0)),
            total: Arc::new(AtomicU64::new(0)),
        }
    }

    fn spawn_worker(&self) -> io::Result<()> {
        let n = self.total.fetch_add(1, Ordering::SeqCst);
        let p = self.clone();
        let r = std::thread::Builder::new()
            .name(format!("nfs-worker-{n}"))
            .spawn(move || loop {
                p.idle.fetch_add(1, Ordering::SeqCst);
                let job = p.rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                p.idle.fetch_sub(1, Ordering::SeqCst);
                let Ok((conn, rec)) = job else { return };
                if let Some(reply) = p.srv.handle_record(&conn, &rec) {
                    if let Err(e) = conn.send(&reply) {
                        tracing::debug!(conn = conn.id, "reply not sent: {e}");
                    }
                }
            });
        if r.is_err() {
            self.total.fetch_sub(1, Ordering::SeqCst);
        }
        r.map(|_| ())
    }

    /// Queue a request, adding a worker if every one is busy.
    fn submit(&self, job: Job) -> bool {
        if self.idle.load(Ordering::SeqCst) == 0
            && (self.total.load(Ordering::SeqCst) as usize) < MAX_WORKERS
        {
            if let Err(e) = self.spawn_worker() {
                tracing::warn!("no extra NFS worker: {e}");
            }
        }
        self.tx.send(job).is_ok()
    }
}

fn connection(id: u64, stream: TcpStream, jobs: Pool) {
    let peer = stream.peer_addr().ok();
    tracing::info!(conn = id, ?peer, "NFS connection");
    let _ = stream.set_nodelay(true);
    let writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("NFS connection: {e}");
            return;
        }
    };
    let conn = Arc::new(Conn::new(id, writer));
    let mut r = io::BufReader::with_capacity(256 * 1024, stream);
    loop {
        match rpc::read_record(&mut r, MAX_RECORD) {
            Ok(Some(rec)) => {
                // Replies to our callbacks are routed here at once: a
                // worker may be waiting for one.
                if matches!(rpc::parse_msg(&rec), Ok(Msg::Reply(..))) {
                    if let Ok(Msg::Reply(xid, res)) = rpc::parse_msg(&rec) {
                        conn.deliver(xid, res);
                    }
                    continue;
                }
                if !jobs.submit((conn.clone(), rec)) {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::info!(conn = id, "NFS connection dropped: {e}");
                break;
            }
        }
    }
    conn.close();
    tracing::info!(conn = id, "NFS connection closed");
}
