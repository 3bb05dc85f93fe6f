//! The control channel: a mounted node's layout service on a Unix socket
//! (`-o pnfs=SOCKET`), for a metadata server outside the daemon and for
//! the operator (`gfs2-fuse pnfs ...`).
//!
//! The protocol is text, one request per line (at most 8 KiB, UTF-8), each
//! answered by one line, a `LAYOUT` answer followed by its extent lines.
//! Numbers are decimal; `-` stands for "none"; a length of
//! 18446744073709551615 (`u64::MAX`) means "to the end of the file". FILE,
//! always the last field, is `#INO` (an inode number) or a path relative to
//! the mount's root (it may contain spaces; symbolic links are not
//! followed).
//!
//! ```text
//! DEVICE
//!   OK DEVICE <sig_offset> <signature hex> <volume bytes> <block size>
//! LAYOUTGET <client> <read|rw> <offset> <length> <minlength> <FILE>
//!   OK LAYOUT <ino> <read|rw> <offset> <length> <n>
//!   then n lines: EXTENT <file offset> <length> <storage offset> <rw|read|invalid|none>
//! COMMIT <client> <offset> <length> <last write offset|-> <mtime sec.nsec|-> <FILE>
//!   OK ATTR <ino> <size> <mtime sec> <mtime nsec> <bytes allocated>
//! RETURN <client> <offset> <length> <FILE|*>      (* = every file)
//!   OK
//! GONE <client>                                    (its lease expired)
//!   OK
//! SUBSCRIBE
//!   OK, then for as long as the connection stays open, lines
//!   RECALL <client> <ino> <offset> <length> <read|rw>
//!   FENCE <client>
//!   (this connection is the service's RecallSink; the latest subscriber
//!   replaces an earlier one; answers come as RETURN on another connection)
//! any request may instead be answered
//!   ERR <UNAVAILABLE|TRYLATER|BADRANGE|NOENT|FS|PROTO> <errno> <message>
//! ```
//!
//! The socket is created with mode 0600: whoever can reach it can read and
//! write every file's blocks through layouts.

use super::{
    ClientId, Commit, ExtentState, IoMode, LayoutBackend, LayoutError, LayoutService, Recall,
    RecallSink,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// Longest request line.
const MAX_LINE: usize = 8192;

/// A listening control socket; stops listening and removes the socket
/// when dropped.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    svc: Arc<LayoutService>,
}

impl ControlServer {
    /// Listen on `path` for `svc`. An existing socket at `path` that nobody
    /// listens on any more (a daemon that died) is replaced; anything else
    /// there is an error.
    pub fn start(svc: Arc<LayoutService>, path: &Path) -> std::io::Result<ControlServer> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if let Ok(md) = std::fs::symlink_metadata(path) {
            if !md.file_type().is_socket() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by another server", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, svc2) = (stop.clone(), svc.clone());
        std::thread::Builder::new()
            .name("pnfs-control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        return;
                    }
                    match conn {
                        Ok(c) => {
                            let svc = svc2.clone();
                            let _ = std::thread::Builder::new()
                                .name("pnfs-conn".into())
                                .spawn(move || serve_conn(svc, c));
                        }
                        Err(e) => tracing::warn!("control socket accept: {e}"),
                    }
                }
            })?;
        tracing::info!(socket = %path.display(), "pNFS control channel listening");
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            svc,
        })
    }

    /// The layout service served.
    pub fn service(&self) -> &Arc<LayoutService> {
        &self.svc
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accepting thread so that it sees the flag.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The subscriber of a connection: recalls are queued to a writer thread,
/// so that sending one never blocks on a slow reader.
struct SocketSink {
    tx: Mutex<mpsc::Sender<String>>,
}

impl SocketSink {
    fn send(&self, line: String) {
        let _ = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(line);
    }
}

impl RecallSink for SocketSink {
    fn recall(&self, r: Recall) {
        self.send(format!(
            "RECALL {} {} {} {} {}\n",
            r.client,
            r.ino,
            r.offset,
            r.length,
            iomode_name(r.iomode)
        ));
    }
    fn fence(&self, client: ClientId) {
        self.send(format!("FENCE {client}\n"));
    }
}

fn iomode_name(m: IoMode) -> &'static str {
    match m {
        IoMode::Read => "read",
        IoMode::ReadWrite => "rw",
    }
}

fn state_name(s: ExtentState) -> &'static str {
    match s {
        ExtentState::ReadWriteData => "rw",
        ExtentState::ReadData => "read",
        ExtentState::InvalidData => "invalid",
        ExtentState::NoneData => "none",
    }
}

/// An error answer.
struct Reply(String);

fn err_line(e: &LayoutError) -> String {
    let (name, errno) = match e {
        LayoutError::Unavailable => ("UNAVAILABLE", 0),
        LayoutError::TryLater => ("TRYLATER", libc::EAGAIN),
        LayoutError::BadRange => ("BADRANGE", libc::EINVAL),
        LayoutError::Fs(f) if f.errno() == libc::ENOENT => ("NOENT", libc::ENOENT),
        LayoutError::Fs(f) => ("FS", f.errno()),
    };
    format!("ERR {name} {errno} {}\n", one_line(&e.to_string()))
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn proto(msg: impl std::fmt::Display) -> Reply {
    Reply(format!(
        "ERR PROTO {} {}\n",
        libc::EINVAL,
        one_line(&msg.to_string())
    ))
}

fn serve_conn(svc: Arc<LayoutService>, conn: UnixStream) {
    let Ok(wr) = conn.try_clone() else {
        return;
    };
    let mut out = std::io::BufWriter::new(wr);
    let mut rd = BufReader::new(conn);
    loop {
        let mut line = Vec::new();
        // Bounded: a peer cannot make us buffer more than one line.
        let n = match (&mut rd)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        if line.last() != Some(&b'\n') {
            let _ = out.write_all(proto("request line too long or unterminated").0.as_bytes());
            let _ = out.flush();
            return;
        }
        line.pop();
        let text = match std::str::from_utf8(&line) {
            Ok(t) => t.trim_end_matches('\r'),
            Err(_) => {
                let _ = out.write_all(proto("request is not UTF-8").0.as_bytes());
                let _ = out.flush();
                continue;
            }
        };
        if text == "SUBSCRIBE" {
            let _ = out.write_all(b"OK\n");
            let _ = out.flush();
            subscribe(&svc, out);
            return;
        }
        let reply = match handle(&svc, text) {
            Ok(r) | Err(Reply(r)) => r,
        };
        if out.write_all(reply.as_bytes()).is_err() || out.flush().is_err() {
            return;
        }
    }
}

/// Make this connection the recall sink and write what it is told until
/// the peer goes.
fn subscribe(svc: &Arc<LayoutService>, mut out: std::io::BufWriter<UnixStream>) {
    let (tx, rx) = mpsc::channel::<String>();
    svc.set_recall_sink(Arc::new(SocketSink { tx: Mutex::new(tx) }));
    tracing::info!("a metadata server subscribed to recalls");
    for line in rx {
        if out.write_all(line.as_bytes()).is_err() || out.flush().is_err() {
            tracing::warn!("the recall subscriber went away");
            return;
        }
    }
}

fn num(s: Option<&str>, what: &str) -> Result<u64, Reply> {
    let s = s.ok_or_else(|| proto(format!("missing {what}")))?;
    s.parse().map_err(|_| proto(format!("bad {what} {s:?}")))
}

fn opt_num(s: Option<&str>, what: &str) -> Result<Option<u64>, Reply> {
    match s {
        Some("-") => Ok(None),
        other => num(other, what).map(Some),
    }
}

/// Split `n` fields off the front of `text`; the rest (possibly with
/// spaces) is the last field.
fn fields(text: &str, n: usize) -> (Vec<&str>, Option<&str>) {
    let mut parts = Vec::new();
    let mut rest = text;
    for _ in 0..n {
        match rest.split_once(' ') {
            Some((a, b)) => {
                parts.push(a);
                rest = b;
            }
            None => {
                if !rest.is_empty() {
                    parts.push(rest);
                }
                return (parts, None);
            }
        }
    }
    (parts, (!rest.is_empty()).then_some(rest))
}

/// The inode FILE names.
fn resolve(svc: &LayoutService, file: Option<&str>) -> Result<u64, Reply> {
    let file = file.ok_or_else(|| proto("missing FILE"))?;
    if let Some(n) = file.strip_prefix('#') {
        return n.parse().map_err(|_| proto(format!("bad inode {file:?}")));
    }
    let fs = svc.fs();
    let mut ino = fs.root();
    for part in file.split('/').filter(|p| !p.is_empty() && *p != ".") {
        let a = fs
            .lookup(ino, part.as_bytes())
            .map_err(|e| Reply(err_line(&LayoutError::Fs(e))))?;
        ino = a.ino;
    }
    Ok(ino)
}

fn handle(svc: &LayoutService, text: &str) -> Result<String, Reply> {
    let (cmd, rest) = text.split_once(' ').unwrap_or((text, ""));
    let fail = |e: LayoutError| Reply(err_line(&e));
    match cmd {
        "DEVICE" => {
            let d = svc.device_info();
            let hex: String = d.signature.iter().map(|b| format!("{b:02x}")).collect();
            Ok(format!(
                "OK DEVICE {} {hex} {} {}\n",
                d.sig_offset, d.size, d.block_size
            ))
        }
        "LAYOUTGET" => {
            let (f, file) = fields(rest, 5);
            let client = num(f.first().copied(), "client")?;
            let iomode = match f.get(1).copied() {
                Some("read") => IoMode::Read,
                Some("rw") => IoMode::ReadWrite,
                other => return Err(proto(format!("bad iomode {other:?}"))),
            };
            let offset = num(f.get(2).copied(), "offset")?;
            let length = num(f.get(3).copied(), "length")?;
            let minlength = num(f.get(4).copied(), "minlength")?;
            let ino = resolve(svc, file)?;
            let l = svc
                .layout_get(client, ino, offset, length, minlength, iomode)
                .map_err(fail)?;
            let mut s = format!(
                "OK LAYOUT {} {} {} {} {}\n",
                l.ino,
                iomode_name(l.iomode),
                l.offset,
                l.length,
                l.extents.len()
            );
            for e in &l.extents {
                s.push_str(&format!(
                    "EXTENT {} {} {} {}\n",
                    e.file_offset,
                    e.length,
                    e.storage_offset,
                    state_name(e.state)
                ));
            }
            Ok(s)
        }
        "COMMIT" => {
            let (f, file) = fields(rest, 5);
            let client = num(f.first().copied(), "client")?;
            let offset = num(f.get(1).copied(), "offset")?;
            let length = num(f.get(2).copied(), "length")?;
            let last_write = opt_num(f.get(3).copied(), "last write offset")?;
            let mtime = match f.get(4).copied() {
                Some("-") => None,
                Some(t) => {
                    let (s, ns) = t.split_once('.').unwrap_or((t, "0"));
                    let s: i64 = s.parse().map_err(|_| proto(format!("bad mtime {t:?}")))?;
                    let ns: u32 = ns.parse().map_err(|_| proto(format!("bad mtime {t:?}")))?;
                    if ns > 999_999_999 {
                        return Err(proto(format!("bad mtime {t:?}")));
                    }
                    Some((s, ns))
                }
                None => return Err(proto("missing mtime")),
            };
            let ino = resolve(svc, file)?;
            let a = svc
                .layout_commit(
                    client,
                    ino,
                    Commit {
                        offset,
                        length,
                        last_write,
                        mtime,
                    },
                )
                .map_err(fail)?;
            Ok(format!(
                "OK ATTR {} {} {} {} {}\n",
                a.ino,
                a.size,
                a.mtime.0,
                a.mtime.1,
                a.blocks * 512
            ))
        }
        "RETURN" => {
            let (f, file) = fields(rest, 3);
            let client = num(f.first().copied(), "client")?;
            let offset = num(f.get(1).copied(), "offset")?;
            let length = num(f.get(2).copied(), "length")?;
            let ino = match file {
                Some("*") => None,
                other => Some(resolve(svc, other)?),
            };
            svc.layout_return(client, ino, offset, length)
                .map_err(fail)?;
            Ok("OK\n".into())
        }
        "GONE" => {
            let client = num(rest.split(' ').next().filter(|s| !s.is_empty()), "client")?;
            svc.client_gone(client);
            Ok("OK\n".into())
        }
        _ => Err(proto(format!("unknown request {cmd:?}"))),
    }
}

/// The operator's side: `gfs2-fuse pnfs ...`.
pub mod client {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    use std::path::Path;

    /// Send one request line, read its answer (the `LAYOUT` line and its
    /// extents). `Err` for a transport failure; an `ERR` answer is returned
    /// as it came.
    pub fn request(sock: &Path, line: &str) -> std::io::Result<Vec<String>> {
        let conn = UnixStream::connect(sock)?;
        let mut w = conn.try_clone()?;
        w.write_all(line.as_bytes())?;
        w.write_all(b"\n")?;
        let mut rd = BufReader::new(conn);
        let mut first = String::new();
        if rd.read_line(&mut first)? == 0 {
            return Err(std::io::Error::other("the server closed the connection"));
        }
        let first = first.trim_end().to_string();
        let mut out = vec![first.clone()];
        if let Some(rest) = first.strip_prefix("OK LAYOUT ") {
            let n: usize = rest
                .split(' ')
                .nth(4)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad answer {first:?}")))?;
            for _ in 0..n {
                let mut l = String::new();
                if rd.read_line(&mut l)? == 0 {
                    return Err(std::io::Error::other("answer cut short"));
                }
                out.push(l.trim_end().to_string());
            }
        }
        Ok(out)
    }

    const USAGE: &str = concat!(
        "usage: gfs2-fuse pnfs device SOCKET\n",
        "       gfs2-fuse pnfs layout SOCKET FILE OFFSET LEN [--rw] [--client N] [--keep]\n",
        "       gfs2-fuse pnfs commit SOCKET FILE OFFSET LEN [--client N]\n",
        "       gfs2-fuse pnfs return SOCKET FILE|* [--client N]\n",
        "       gfs2-fuse pnfs gone SOCKET CLIENT\n",
        "       gfs2-fuse pnfs watch SOCKET\n",
        "SOCKET: the control socket of a node mounted with -o pnfs=SOCKET.\n",
        "FILE:   a path relative to the mount's root, or #INODE.\n",
        "layout: prints the extents of OFFSET..OFFSET+LEN (LEN 'max': to the end) as\n",
        "        file range, disk byte range and state; the layout is returned at once\n",
        "        unless --keep (a read-write layout allocates zeroed blocks; returned\n",
        "        uncommitted, those past the end of file are freed again).\n",
        "commit: the client (default 1) wrote OFFSET..OFFSET+LEN through its layout.\n",
        "watch:  subscribe to recalls and print them (replaces the current subscriber).\n",
        "exit status: 0 done, 1 the server refused (ERR ...), 2 bad usage, 3 no server."
    );

    fn usage(msg: &str) -> ! {
        if !msg.is_empty() {
            eprintln!("gfs2-fuse pnfs: {msg}");
        }
        eprintln!("{USAGE}");
        std::process::exit(2);
    }

    fn ask(sock: &str, line: &str) -> Vec<String> {
        match request(Path::new(sock), line) {
            Ok(r) => {
                if let Some(e) = r.first().filter(|l| l.starts_with("ERR ")) {
                    eprintln!("gfs2-fuse pnfs: {}", &e[4..]);
                    std::process::exit(1);
                }
                r
            }
            Err(e) => {
                eprintln!("gfs2-fuse pnfs: {sock}: {e}");
                std::process::exit(3);
            }
        }
    }

    fn len_arg(s: &str) -> String {
        if s == "max" {
            u64::MAX.to_string()
        } else {
            s.to_string()
        }
    }

    /// A layout's answer as the operator reads it.
    pub fn render(lines: &[String]) -> String {
        let mut out = String::new();
        for l in lines {
            let f: Vec<&str> = l.split(' ').collect();
            match f.as_slice() {
                ["OK", "LAYOUT", ino, mode, off, len, n] => {
                    let len = if *len == u64::MAX.to_string() {
                        "max"
                    } else {
                        len
                    };
                    out.push_str(&format!(
                        "inode {ino}: {mode} layout of {off}+{len}, {n} extent(s)\n"
                    ));
                    out.push_str(&format!(
                        "{:>16} {:>16} {:>16} {:>16}  state\n",
                        "file offset", "length", "disk offset", "disk end"
                    ));
                }
                ["EXTENT", off, len, disk, state] => {
                    let (o, l, d) = (
                        off.parse::<u64>().unwrap_or(0),
                        len.parse::<u64>().unwrap_or(0),
                        disk.parse::<u64>().unwrap_or(0),
                    );
                    let (ds, de) = if *state == "none" {
                        ("-".to_string(), "-".to_string())
                    } else {
                        (d.to_string(), d.saturating_add(l).to_string())
                    };
                    let ls = if o.checked_add(l).is_none() || l == u64::MAX - o {
                        "to end".to_string()
                    } else {
                        l.to_string()
                    };
                    out.push_str(&format!("{o:>16} {ls:>16} {ds:>16} {de:>16}  {state}\n"));
                }
                _ => {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// `gfs2-fuse pnfs ARGS...`.
    pub fn main(args: &[String]) -> ! {
        if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
            println!("{USAGE}");
            std::process::exit(if args.is_empty() { 2 } else { 0 });
        }
        let mut pos: Vec<&str> = Vec::new();
        let (mut rw, mut keep, mut client) = (false, false, 1u64);
        let mut it = args[1..].iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--rw" => rw = true,
                "--keep" => keep = true,
                "--client" => {
                    client = it
                        .next()
                        .and_then(|c| c.parse().ok())
                        .unwrap_or_else(|| usage("--client needs a number"))
                }
                s if s.starts_with("--") => usage(&format!("unknown flag {s}")),
                s => pos.push(s),
            }
        }
        match (args[0].as_str(), pos.as_slice()) {
            ("device", [sock]) => {
                let r = ask(sock, "DEVICE");
                let f: Vec<&str> = r[0].split(' ').collect();
                match f.as_slice() {
                    ["OK", "DEVICE", off, sig, size, bs] => println!(
                        "signature {sig} at byte {off}\nvolume {size} bytes\nblock size {bs}"
                    ),
                    _ => println!("{}", r[0]),
                }
            }
            ("layout", [sock, file, off, len]) => {
                let mode = if rw { "rw" } else { "read" };
                let len = len_arg(len);
                let r = ask(
                    sock,
                    &format!("LAYOUTGET {client} {mode} {off} {len} 1 {file}"),
                );
                print!("{}", render(&r));
                if !keep {
                    ask(sock, &format!("RETURN {client} 0 {} {file}", u64::MAX));
                }
            }
            ("commit", [sock, file, off, len]) => {
                let (o, l): (u64, u64) = match (off.parse(), len.parse()) {
                    (Ok(o), Ok(l)) if l > 0 => (o, l),
                    _ => usage("OFFSET and LEN must be numbers, LEN above 0"),
                };
                let last = o
                    .checked_add(l - 1)
                    .unwrap_or_else(|| usage("OFFSET+LEN too large"));
                let r = ask(sock, &format!("COMMIT {client} {o} {l} {last} - {file}"));
                let f: Vec<&str> = r[0].split(' ').collect();
                match f.as_slice() {
                    ["OK", "ATTR", ino, size, ms, mns, bytes] => println!(
                        "inode {ino}: size {size}, mtime {ms}.{mns:0>9}, {bytes} bytes allocated"
                    ),
                    _ => println!("{}", r[0]),
                }
            }
            ("return", [sock, file]) => {
                ask(sock, &format!("RETURN {client} 0 {} {file}", u64::MAX));
            }
            ("gone", [sock, c]) => {
                let c: u64 = c.parse().unwrap_or_else(|_| usage("CLIENT is a number"));
                ask(sock, &format!("GONE {c}"));
            }
            ("watch", [sock]) => {
                let conn = UnixStream::connect(sock).unwrap_or_else(|e| {
                    eprintln!("gfs2-fuse pnfs: {sock}: {e}");
                    std::process::exit(3)
                });
                let mut w = conn.try_clone().unwrap_or_else(|e| {
                    eprintln!("gfs2-fuse pnfs: {e}");
                    std::process::exit(3)
                });
                if w.write_all(b"SUBSCRIBE\n").is_err() {
                    std::process::exit(3);
                }
                for l in BufReader::new(conn).lines() {
                    match l {
                        Ok(l) => {
                            println!("{l}");
                            let _ = std::io::stdout().flush();
                        }
                        Err(_) => break,
                    }
                }
            }
            (cmd, _) => usage(&format!("bad arguments for {cmd:?}")),
        }
        std::process::exit(0);
    }
}
