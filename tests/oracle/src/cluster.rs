//! A real cluster of qemu VMs: corosync, dlm_controld and the kernel DLM on
//! 2-3 nodes that share one raw disk image as `/dev/vda`.
//!
//! Why VMs: the host kernel has no DLM or GFS2, and a lock module talking to
//! the Linux DLM (through `/dev/misc/dlm-control` and `/dev/misc/dlm_<ls>`)
//! can only be tested against the real thing. Everything runs under TCG.
//!
//! * Boot: every VM boots the oracle's kernel ([`Kernel`]) with the base
//!   initramfs, a cached cluster layer (`scripts/cluster-initramfs.sh`:
//!   network and virtio-serial modules, this machine's corosync and
//!   dlm_controld with their libraries, `/cluster-init`, `/lib/cluster.sh`)
//!   and a per-cluster layer with the caller's files ([`ClusterOpts::file`],
//!   [`ClusterOpts::binary`]). `rdinit=/cluster-init` replaces the base's
//!   `/init`; the node id, node count and cluster name come on the kernel
//!   command line, so all VMs share one initrd.
//! * Network: qemu's UDP socket netdev, one local port per VM, all pointed at
//!   a hub (a thread here) that forwards every frame to the other VMs: a
//!   shared Ethernet segment `10.0.0.0/24` (node i is `10.0.0.i`) without
//!   root, bridges or multicast on the host.
//! * Commands: a virtio-serial port per VM (a unix socket on the host) served
//!   by a busybox `sh` loop (`cl_cmdloop`): each request runs in the
//!   background in the VM, so several host threads can drive one node or
//!   many nodes at once; see [`Node::sh`].
//! * Start: once every VM serves commands, the host starts corosync on all
//!   nodes, waits until every node is quorate with all members, then starts
//!   dlm_controld and waits until the kernel DLM knows its local node
//!   (`/sys/kernel/config/dlm/cluster/comms/<id>/local` = 1) and
//!   `/dev/misc/dlm-control` exists.
//! * [`Cluster::kill`] is a crash (SIGKILL of qemu); the survivors' corosync
//!   and DLM notice it. Dropping the [`Cluster`] kills every qemu and the hub
//!   and removes the temporary files. A failing step's error carries the
//!   tails of the VMs' console logs.

use crate::{gzip, run, tool, Kernel, Scratch};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default time limit of a command ([`Node::sh`]).
pub const SH_TIMEOUT: Duration = Duration::from_secs(120);

/// How many console lines errors show per node.
const TAIL_LINES: usize = 60;

/// What a cluster looks like; [`Cluster::start`] boots it.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Number of nodes (1-9; 2 runs corosync with `two_node: 1`).
    pub nodes: usize,
    /// The shared raw disk, `/dev/vda` in every VM.
    pub image: PathBuf,
    /// Corosync's cluster name: the first half of a gfs2 lock table.
    pub cluster_name: String,
    pub memory_mb: u32,
    /// Limit for the VMs to boot and the cluster stack to come up.
    pub boot_timeout: Duration,
    /// Extra files for every VM: (absolute path, mode with type bits, data).
    files: VmFiles,
}

impl ClusterOpts {
    pub fn new(nodes: usize, image: impl Into<PathBuf>, cluster_name: &str) -> Self {
        ClusterOpts {
            nodes,
            image: image.into(),
            cluster_name: cluster_name.to_string(),
            memory_mb: 768,
            boot_timeout: Duration::from_secs(180),
            files: Vec::new(),
        }
    }

    /// Put `data` at the absolute path `vm_path` in every VM (mode 0644;
    /// missing directories are created).
    pub fn file(mut self, vm_path: &str, data: &[u8]) -> Self {
        self.files
            .push((vm_path.to_string(), 0o100644, data.to_vec()));
        self
    }

    /// Copy the host file `host` to `vm_path` in every VM, keeping its
    /// permission bits (read now; symlinks followed).
    pub fn host_file(mut self, host: &Path, vm_path: &str) -> Result<Self> {
        add_host_file(&mut self.files, host, vm_path)?;
        Ok(self)
    }

    /// Put the host executable `host` at `/usr/bin/<its name>` in every VM
    /// (on `PATH` there), with the shared libraries `ldd` lists for it in
    /// `/lib/x86_64-linux-gnu/`, plus `libgcc_s.so.1` (which glibc loads at
    /// run time for unwinding and thread cancellation, invisible to `ldd`).
    pub fn binary(mut self, host: &Path) -> Result<Self> {
        add_binary(&mut self.files, host)?;
        Ok(self)
    }

    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }

    pub fn boot_timeout(mut self, t: Duration) -> Self {
        self.boot_timeout = t;
        self
    }
}

/// Files for a VM's initramfs: (absolute path, mode with type bits, data).
pub(crate) type VmFiles = Vec<(String, u32, Vec<u8>)>;

/// Add the host file `host` at `vm_path`, keeping its permission bits (read
/// now; symlinks followed).
pub(crate) fn add_host_file(files: &mut VmFiles, host: &Path, vm_path: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
    let perm = std::fs::metadata(host)?.permissions().mode() & 0o7777;
    files.push((vm_path.to_string(), 0o100000 | perm, data));
    Ok(())
}

/// Add the host executable `host` at `/usr/bin/<its name>` with the shared
/// libraries `ldd` lists for it in `/lib/x86_64-linux-gnu/` (each once) and
/// `libgcc_s.so.1`.
pub(crate) fn add_binary(files: &mut VmFiles, host: &Path) -> Result<()> {
    let name = host
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("no file name in {}", host.display()))?;
    add_host_file(files, host, &format!("/usr/bin/{name}"))?;
    let ldd = run(Command::new(tool("ldd")?).arg(host), "ldd")?;
    let mut libs: Vec<PathBuf> = ldd
        .lines()
        .filter_map(|l| l.split("=>").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    libs.push(gcc_s()?);
    for lib in libs {
        let base = lib
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("odd library path {}", lib.display()))?
            .to_string();
        let dest = format!("/lib/x86_64-linux-gnu/{base}");
        if files.iter().all(|(p, _, _)| *p != dest) {
            add_host_file(files, &lib, &dest)?;
        }
    }
    Ok(())
}

pub(crate) fn gcc_s() -> Result<PathBuf> {
    [
        "/lib/x86_64-linux-gnu/libgcc_s.so.1",
        "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .ok_or_else(|| anyhow!("libgcc_s.so.1 not found on the host"))
}

/// What a command printed and how it ended.
#[derive(Clone, Debug)]
pub struct CmdOutput {
    /// `sh`'s exit status (137 when the VM-side timeout killed it).
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// A VM of the cluster. Shared between threads: every method takes `&self`.
pub struct Node {
    id: usize,
    console: PathBuf,
    qemu_log: PathBuf,
    /// qemu's pid, valid while `reaped` is false (checked under its lock,
    /// which the node thread holds when it reaps qemu).
    pid: i32,
    reaped: Arc<Mutex<bool>>,
    killed: AtomicBool,
    writer: Mutex<Option<UnixStream>>,
    pending: Arc<Mutex<HashMap<u64, mpsc::Sender<CmdOutput>>>>,
    next: AtomicU64,
    /// One message when the VM's command loop says `READY`; disconnected
    /// when the node thread ends.
    ready: Mutex<mpsc::Receiver<()>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Node {
    /// The node id (1-based, as corosync's `nodeid`).
    pub fn id(&self) -> usize {
        self.id
    }

    /// The node's address on the cluster network.
    pub fn ip(&self) -> String {
        format!("10.0.0.{}", self.id)
    }

    /// Whether qemu is still running (not killed, not exited).
    pub fn alive(&self) -> bool {
        !*self.reaped.lock().unwrap_or_else(|e| e.into_inner())
            && !self.killed.load(Ordering::SeqCst)
    }

    /// The serial console so far: the kernel log from KERN_INFO on
    /// (`gfs2`/`dlm` messages), corosync's and dlm_controld's output.
    pub fn console(&self) -> String {
        let mut s = String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default())
            .replace('\r', "");
        let q = std::fs::read(&self.qemu_log).unwrap_or_default();
        if !q.is_empty() {
            s.push_str("\n[qemu] ");
            s.push_str(&String::from_utf8_lossy(&q));
        }
        s
    }

    /// The last lines of the console, headed with the node's name.
    pub fn console_tail(&self) -> String {
        let c = self.console();
        let lines: Vec<&str> = c.lines().collect();
        let from = lines.len().saturating_sub(TAIL_LINES);
        format!(
            "---- node{} console (last {} lines) ----\n{}\n",
            self.id,
            lines.len() - from,
            lines[from..].join("\n")
        )
    }

    /// Run `script` with busybox `sh` in the VM (cwd `/`, stdin
    /// `/dev/null`, `/lib/cluster.sh`'s functions defined) and return its
    /// output and exit status, whatever the status. Errors only when there is
    /// no answer: the node is dead or the command ran over [`SH_TIMEOUT`].
    /// A script may leave work running (`cmd > /tmp/log 2>&1 &`) and later
    /// scripts poll for it. Other threads may call this at the same time, on
    /// this node or any other.
    pub fn sh(&self, script: &str) -> Result<CmdOutput> {
        self.sh_timeout(script, SH_TIMEOUT)
    }

    /// [`Node::sh`] with a time limit (whole seconds, at least 1): the VM
    /// kills the command's `sh` when it runs over; the host gives up a few
    /// seconds later.
    pub fn sh_timeout(&self, script: &str, timeout: Duration) -> Result<CmdOutput> {
        if !self.alive() {
            bail!("node{} is not running", self.id);
        }
        let secs = timeout.as_secs().max(1);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let line = format!("C {id} {secs} {}\n", base64_encode(script.as_bytes()));
        let sent = match self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            Some(w) => w.write_all(line.as_bytes()).and_then(|_| w.flush()),
            None => Err(std::io::Error::other("channel closed")),
        };
        if let Err(e) = sent {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            bail!(
                "node{}: sending a command: {e}\n{}",
                self.id,
                self.console_tail()
            );
        }
        match rx.recv_timeout(Duration::from_secs(secs + 10)) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => format!("no answer in {secs} s"),
                    mpsc::RecvTimeoutError::Disconnected => {
                        "the VM went away (qemu exited or was killed)".to_string()
                    }
                };
                bail!(
                    "node{}: {why} to:\n{script}\n{}",
                    self.id,
                    self.console_tail()
                )
            }
        }
    }

    /// [`Node::sh`] that must exit 0: its stdout, or an error with both
    /// outputs and the console tail.
    pub fn sh_ok(&self, script: &str) -> Result<String> {
        self.sh_ok_timeout(script, SH_TIMEOUT)
    }

    /// [`Node::sh_ok`] with a time limit.
    pub fn sh_ok_timeout(&self, script: &str, timeout: Duration) -> Result<String> {
        let o = self.sh_timeout(script, timeout)?;
        if !o.success() {
            bail!(
                "node{}: exit {} from:\n{script}\n-- stdout:\n{}-- stderr:\n{}\n{}",
                self.id,
                o.status,
                o.stdout,
                o.stderr,
                self.console_tail()
            );
        }
        Ok(o.stdout)
    }

    /// SIGKILL qemu (if it still runs) and wait for the node thread, which
    /// reaps it.
    pub(crate) fn kill_qemu(&self) {
        self.killed.store(true, Ordering::SeqCst);
        {
            let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
            if !*reaped {
                // SAFETY: `pid` is our unreaped child (checked under the lock
                // the reaper holds), so it names no other process.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
            }
        }
        if let Some(w) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// A running cluster; see the module documentation.
pub struct Cluster {
    nodes: Vec<Node>,
    hub: Hub,
    boot_time: Duration,
    phases: Vec<(&'static str, Duration)>,
    // Last: removed after every qemu is gone.
    _dir: Scratch,
}

impl Cluster {
    /// Boot `opts.nodes` VMs on `opts.image` and bring up corosync and the
    /// DLM on all of them; returns when every node's DLM is ready.
    pub fn start(opts: ClusterOpts) -> Result<Cluster> {
        let t0 = Instant::now();
        if !(1..=9).contains(&opts.nodes) {
            bail!("a cluster of {} nodes: 1 to 9 supported", opts.nodes);
        }
        if opts.cluster_name.is_empty()
            || opts.cluster_name.len() > 32
            || !opts
                .cluster_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            bail!(
                "cluster name {:?}: 1-32 of [A-Za-z0-9_-] please",
                opts.cluster_name
            );
        }
        let image = opts
            .image
            .canonicalize()
            .with_context(|| format!("shared image {}", opts.image.display()))?;
        let image_s = image
            .to_str()
            .filter(|s| !s.contains(','))
            .ok_or_else(|| anyhow!("image path {} must be UTF-8 without ','", image.display()))?
            .to_string();
        let qemu = tool("qemu-system-x86_64")?;
        let k = Kernel::get()?;
        let dir = Scratch::new("cluster")?;
        let initrd = dir.join("initrd.gz");
        {
            let mut data = std::fs::read(k.base_initrd()?).context("base initrd")?;
            data.extend(std::fs::read(cluster_layer(k)?).context("cluster initrd layer")?);
            if !opts.files.is_empty() {
                let entries: Vec<(&str, u32, &[u8])> = opts
                    .files
                    .iter()
                    .map(|(p, m, d)| (p.as_str(), *m, d.as_slice()))
                    .collect();
                data.extend(gzip(&crate::cpio_entries(&entries))?);
            }
            std::fs::write(&initrd, data).with_context(|| format!("{}", initrd.display()))?;
        }
        // cache=none (O_DIRECT), as a shared disk is meant to be run; on a
        // filesystem without O_DIRECT the host page cache is still shared by
        // the qemus, so writeback is as coherent.
        let cache = if o_direct_ok(&image) {
            "none"
        } else {
            "writeback"
        };

        // Ports: reserve one per VM, learn them, free them for qemu.
        let reserve: Vec<UdpSocket> = (0..opts.nodes)
            .map(|_| UdpSocket::bind("127.0.0.1:0"))
            .collect::<std::io::Result<_>>()
            .context("reserving UDP ports")?;
        let ports: Vec<u16> = reserve
            .iter()
            .map(|s| s.local_addr().map(|a| a.port()))
            .collect::<std::io::Result<_>>()?;
        let hub = Hub::start(ports.clone())?;
        drop(reserve);

        let mut nodes = Vec::new();
        let mut boot_err = None;
        for (i, port) in ports.iter().enumerate() {
            let id = i + 1;
            let mut cmd = Command::new(&qemu);
            cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1"])
                .args(["-m", &opts.memory_mb.to_string()])
                .args(["-nographic", "-no-reboot", "-nodefaults"])
                .arg("-serial")
                .arg(format!(
                    "file:{}",
                    dir.join(&format!("console{id}.log")).display()
                ))
                .arg("-kernel")
                .arg(&k.vmlinuz)
                .arg("-initrd")
                .arg(&initrd)
                .arg("-append")
                .arg(format!(
                    "console=ttyS0 panic=-1 quiet rdinit=/cluster-init cluster.id={id} \
                     cluster.nodes={} cluster.name={}",
                    opts.nodes, opts.cluster_name
                ))
                .arg("-drive")
                .arg(format!(
                    "file={image_s},format=raw,if=none,id=d0,cache={cache}"
                ))
                .args(["-device", "virtio-blk-pci,drive=d0,share-rw=on"])
                .arg("-netdev")
                .arg(format!(
                    "socket,id=n0,udp=127.0.0.1:{},localaddr=127.0.0.1:{port}",
                    hub.port
                ))
                .arg("-device")
                .arg(format!(
                    "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:{id:02x},romfile="
                ))
                .args(["-device", "virtio-serial-pci"])
                .arg("-chardev")
                .arg(format!(
                    "socket,id=c0,path={},server=on,wait=off",
                    dir.join(&format!("cmd{id}.sock")).display()
                ))
                .args(["-device", "virtserialport,chardev=c0,name=cmd"]);
            match Node::spawn(id, cmd, &dir) {
                Ok(n) => nodes.push(n),
                Err(e) => {
                    boot_err = Some(e);
                    break;
                }
            }
        }
        let mut cluster = Cluster {
            nodes,
            hub,
            boot_time: Duration::ZERO,
            phases: Vec::new(),
            _dir: dir,
        };
        if let Some(e) = boot_err {
            return Err(e.context(cluster.diagnostics()));
        }
        let deadline = t0 + opts.boot_timeout;
        cluster
            .phases
            .push(("initrd and qemu started", t0.elapsed()));
        if let Err(e) = cluster.bring_up(t0, deadline) {
            return Err(e.context(format!("starting the cluster\n{}", cluster.diagnostics())));
        }
        cluster.boot_time = t0.elapsed();
        Ok(cluster)
    }

    /// Wait for every VM's command loop, then start corosync everywhere, wait
    /// for full quorate membership everywhere, start dlm_controld
    /// everywhere, wait for the kernel DLM everywhere (the DLM needs every
    /// member's corosync before its daemon starts).
    fn bring_up(&mut self, t0: Instant, deadline: Instant) -> Result<()> {
        for n in &self.nodes {
            n.wait_ready(deadline)?;
        }
        self.phases.push(("VMs booted", t0.elapsed()));
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .as_secs()
                .max(5)
        };
        let n = self.nodes.len();
        self.sh_all_ok("cl_start_corosync", SH_TIMEOUT)?;
        self.sh_all_ok(
            &format!(
                "cl_wait {} 'quorate with {n} members' cl_quorate_with {n}",
                left()
            ),
            Duration::from_secs(left() + 5),
        )?;
        self.phases.push(("corosync quorate", t0.elapsed()));
        self.sh_all_ok("cl_start_dlm", SH_TIMEOUT)?;
        self.sh_all_ok(
            &format!(
                "cl_wait {} 'the kernel DLM configured' cl_dlm_ready",
                left()
            ),
            Duration::from_secs(left() + 5),
        )?;
        self.phases.push(("DLM ready", t0.elapsed()));
        Ok(())
    }

    /// Node `id` (1-based). Panics on an id out of range.
    pub fn node(&self, id: usize) -> &Node {
        assert!(
            (1..=self.nodes.len()).contains(&id),
            "node{id} of a {}-node cluster",
            self.nodes.len()
        );
        &self.nodes[id - 1]
    }

    /// All nodes, dead or alive.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// How long [`Cluster::start`] took.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// When each step of [`Cluster::start`] ended, from its beginning.
    pub fn boot_phases(&self) -> &[(&'static str, Duration)] {
        &self.phases
    }

    /// Run `script` on every live node at once ([`Node::sh_ok`]); the
    /// stdouts by node, or the first error.
    pub fn sh_all_ok(&self, script: &str, timeout: Duration) -> Result<Vec<String>> {
        let live: Vec<&Node> = self.nodes.iter().filter(|n| n.alive()).collect();
        std::thread::scope(|s| {
            let hs: Vec<_> = live
                .iter()
                .map(|n| s.spawn(move || n.sh_ok_timeout(script, timeout)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().map_err(|_| anyhow!("command thread panicked"))?)
                .collect()
        })
    }

    /// Crash node `id`: SIGKILL its qemu (its writes stop where they are),
    /// then wait until every other live node noticed: corosync dropped it
    /// from the membership, dlm_controld removed it and no lockspace is
    /// stopped for recovery any more. A filesystem's own recovery (gfs2's
    /// journal replay) follows on its own; a survivor's kernel log shows it
    /// (`node(j).sh("dmesg")`).
    pub fn kill(&self, id: usize) -> Result<()> {
        let n = self.node(id);
        if !n.alive() {
            bail!("node{id} is not running");
        }
        n.kill_qemu();
        self.sh_all_ok(
            &format!(
                "cl_wait 60 'node{id} leaving the membership' cl_gone {id} && \
                 cl_wait 60 'the DLM removing node{id}' cl_dlm_gone {id}"
            ),
            Duration::from_secs(70),
        )
        .with_context(|| format!("after killing node{id}\n{}", self.diagnostics()))?;
        Ok(())
    }

    /// The console tails of every node.
    pub fn diagnostics(&self) -> String {
        self.nodes.iter().map(Node::console_tail).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.kill_qemu();
        }
        self.hub.stop();
    }
}

impl Node {
    /// Start qemu from a thread of this node, which then connects to the
    /// command socket, reads replies until the VM goes away and reaps qemu.
    /// qemu runs with PDEATHSIG = SIGKILL so that it dies with that thread
    /// (and the test process), never outliving a killed test run.
    pub(crate) fn spawn(id: usize, mut cmd: Command, dir: &Scratch) -> Result<Node> {
        let console = dir.join(&format!("console{id}.log"));
        let qemu_log = dir.join(&format!("qemu{id}.log"));
        let sock = dir.join(&format!("cmd{id}.sock"));
        let log = std::fs::File::create(&qemu_log)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs here.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let reaped = Arc::new(Mutex::new(false));
        let pending: Arc<Mutex<HashMap<u64, mpsc::Sender<CmdOutput>>>> = Default::default();
        let (started_tx, started_rx) = mpsc::channel::<Result<(i32, UnixStream)>>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let (reaped, pending) = (reaped.clone(), pending.clone());
            std::thread::Builder::new()
                .name(format!("node{id}"))
                .spawn(move || node_thread(cmd, sock, started_tx, ready_tx, reaped, pending))
                .context("spawning a node thread")?
        };
        let (pid, stream) = match started_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                let _ = thread.join();
                let q = std::fs::read_to_string(&qemu_log).unwrap_or_default();
                return Err(e.context(format!("starting node{id}'s qemu: {q}")));
            }
            Err(_) => bail!("node{id}: its thread did not start qemu"),
        };
        Ok(Node {
            id,
            console,
            qemu_log,
            pid,
            reaped,
            killed: AtomicBool::new(false),
            writer: Mutex::new(Some(stream)),
            pending,
            next: AtomicU64::new(1),
            ready: Mutex::new(ready_rx),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Wait for the VM's command loop to say `READY`.
    pub(crate) fn wait_ready(&self, deadline: Instant) -> Result<()> {
        let rx = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(_) => Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("node{} did not boot in time", self.id)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("node{}'s qemu exited while booting", self.id)
            }
        }
    }
}

/// The node thread: spawn qemu, connect to its command socket (qemu creates
/// it right away), hand both to [`Node::spawn`], then read replies and route
/// them to the waiting callers until EOF, and reap qemu.
fn node_thread(
    mut cmd: Command,
    sock: PathBuf,
    started: mpsc::Sender<Result<(i32, UnixStream)>>,
    ready: mpsc::Sender<()>,
    reaped: Arc<Mutex<bool>>,
    pending: Arc<Mutex<HashMap<u64, mpsc::Sender<CmdOutput>>>>,
) {
    let mut child = match cmd.spawn().context("starting qemu-system-x86_64") {
        Ok(c) => c,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    let reap = |child: &mut std::process::Child| loop {
        let mut r = reaped.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(Some(_)) | Err(_) = child.try_wait() {
            *r = true;
            return;
        }
        drop(r);
        std::thread::sleep(Duration::from_millis(20));
    };
    let t0 = Instant::now();
    let stream = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(e) => {
                let gone = matches!(child.try_wait(), Ok(Some(_)) | Err(_));
                if gone || t0.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                    reap(&mut child);
                    let _ = started.send(Err(anyhow!(
                        "connecting to {}: {e} (qemu {})",
                        sock.display(),
                        if gone { "exited" } else { "did not listen" }
                    )));
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            let _ = child.kill();
            reap(&mut child);
            let _ = started.send(Err(anyhow!("cloning the command socket: {e}")));
            return;
        }
    };
    let _ = started.send(Ok((child.id() as i32, writer)));
    read_replies(stream, &ready, &pending);
    // The VM is gone (or its port closed): nobody will answer.
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let _ = child.kill();
    reap(&mut child);
}

/// Parse the command loop's output (see `cl_cmdloop` in `cluster.sh`):
/// `READY`, then replies `R ID STATUS` / stdout base64 / `-` / stderr
/// base64 / `E ID`. Replies nobody waits for (timed out) are dropped.
fn read_replies(
    stream: UnixStream,
    ready: &mpsc::Sender<()>,
    pending: &Mutex<HashMap<u64, mpsc::Sender<CmdOutput>>>,
) {
    let mut rd = BufReader::new(stream);
    let mut line = String::new();
    // (id, status, stdout base64, stderr base64, in stderr part)
    let mut cur: Option<(u64, i32, String, String, bool)> = None;
    loop {
        line.clear();
        match rd.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let l = line.trim_end();
        let deliver = |id: u64, r: CmdOutput| {
            if let Some(tx) = pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id)
            {
                let _ = tx.send(r);
            }
        };
        if l == "READY" {
            // A loop restarted later says it again, harmlessly.
            let _ = ready.send(());
            continue;
        }
        if let Some(rest) = l.strip_prefix("R ") {
            let mut w = rest.split_whitespace();
            let id = w.next().and_then(|s| s.parse().ok());
            let st = w.next().and_then(|s| s.parse().ok());
            cur = id
                .zip(st)
                .map(|(i, s)| (i, s, String::new(), String::new(), false));
            continue;
        }
        let Some(c) = cur.as_mut() else { continue };
        if l == "-" {
            c.4 = true;
        } else if let Some(rest) = l.strip_prefix("E ") {
            if let Some((id, status, o, e, _)) = cur.take() {
                if rest.trim().parse() == Ok(id) {
                    let text = |b: &str| String::from_utf8_lossy(&base64_decode(b)).into_owned();
                    deliver(
                        id,
                        CmdOutput {
                            status,
                            stdout: text(&o),
                            stderr: text(&e),
                        },
                    );
                }
            }
        } else if c.4 {
            c.3.push_str(l);
        } else {
            c.2.push_str(l);
        }
    }
}

/// Whether `path` can be opened with O_DIRECT (qemu's cache=none).
pub(crate) fn o_direct_ok(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .is_ok()
}

/// The cluster's Ethernet: a UDP socket that forwards every datagram (one
/// Ethernet frame from qemu's socket netdev) from one VM port to all the
/// others. Frames from unknown ports are dropped.
struct Hub {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hub {
    fn start(peers: Vec<u16>) -> Result<Hub> {
        let sock = UdpSocket::bind("127.0.0.1:0").context("binding the hub's UDP socket")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let port = sock.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("cluster-hub".into())
                .spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((n, from)) = sock.recv_from(&mut buf) else {
                            continue;
                        };
                        if !from.ip().is_loopback() || !peers.contains(&from.port()) {
                            continue;
                        }
                        for p in &peers {
                            if *p != from.port() {
                                // A dead VM's port refuses: ignore.
                                let _ = sock.send_to(&buf[..n], ("127.0.0.1", *p));
                            }
                        }
                    }
                })
                .context("spawning the hub thread")?
        };
        Ok(Hub {
            port,
            stop,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The cluster layer of the initramfs (`scripts/cluster-initramfs.sh`),
/// built once and cached next to the base one, keyed by the base (its name
/// carries the kernel and the base scripts), the cluster scripts and the
/// cluster tools copied in (size and mtime: a package upgrade rebuilds it).
pub(crate) fn cluster_layer(k: &Kernel) -> Result<PathBuf> {
    static LAYER: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut g = LAYER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = g.as_ref() {
        return Ok(p.clone());
    }
    let base = k.base_initrd()?;
    let mut tools: Vec<PathBuf> = [
        "corosync",
        "corosync-cfgtool",
        "corosync-quorumtool",
        "corosync-cmapctl",
        "dlm_controld",
        "dlm_tool",
    ]
    .iter()
    .map(|t| {
        tool(t).context("the cluster VMs need corosync and dlm_controld (apt-get install corosync dlm-controld)")
    })
    .collect::<Result<_>>()?;
    tools.push(gcc_s()?);
    let out = k.cached_archive(
        "cluster",
        base.file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default(),
        &[
            "cluster-initramfs.sh",
            "modules.sh",
            "cluster-init",
            "cluster.sh",
        ],
        &tools,
        "building the cluster initramfs layer",
    )?;
    *g = Some(out.clone());
    Ok(out)
}

/// The lines of a kernel log (`dmesg`) that say the kernel or a filesystem
/// went wrong: BUG, Oops, WARNING (with what follows up to its end marker),
/// withdraw, hung tasks. One known-harmless warning of the Debian 6.1 DLM is
/// left out: `memcpy: detected field-spanning write ... of single field
/// "&e->request" at fs/dlm/requestqueue.c` (FORTIFY_SOURCE flagging the
/// DLM's copy into a flexible array; seen during lockspace recovery when a
/// node mounts while others work).
pub fn kernel_problems(dmesg: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut benign = false;
    for l in dmesg.lines() {
        if l.contains("detected field-spanning write") && l.contains("e->request") {
            benign = true;
        }
        if benign {
            if l.contains("---[ end trace") {
                benign = false;
            }
            continue;
        }
        let bad = [
            "BUG:",
            "Oops",
            "WARNING:",
            "withdraw",
            "Call Trace",
            "blocked for more than",
        ]
        .iter()
        .any(|w| l.contains(w));
        if bad {
            out.push(l.to_string());
        }
    }
    out
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, one line (what busybox `base64 -d` reads).
fn base64_encode(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let v = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= c.len() {
                s.push(B64[(v >> shift) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Decode base64 (busybox `base64` output with its line breaks removed);
/// characters outside the alphabet and padding are skipped.
pub(crate) fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in s.bytes() {
        let Some(v) = B64.iter().position(|c| *c == b) else {
            continue;
        };
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_known_dlm_warning_is_no_problem() {
        let log = "[1] dlm: fs0: dlm_recover_directory\n\
                   [2] ------------[ cut here ]------------\n\
                   [3] memcpy: detected field-spanning write (size 112) of single field \"&e->request\" at fs/dlm/requestqueue.c:47 (size 88)\n\
                   [4] WARNING: CPU: 0 PID: 268 at fs/dlm/requestqueue.c:47 dlm_add_requestqueue+0xe7/0xf0 [dlm]\n\
                   [5] Call Trace:\n\
                   [6] ---[ end trace 0000000000000000 ]---\n\
                   [7] gfs2: fsid=c:f.1: recover generation 3 done\n";
        assert!(kernel_problems(log).is_empty());
        let bad = format!("{log}[8] WARNING: CPU: 0 PID: 1 at fs/gfs2/glock.c:1 x\n[9] gfs2: fsid=c:f.1: withdrawing\n");
        assert_eq!(
            kernel_problems(&bad).len(),
            2,
            "{:?}",
            kernel_problems(&bad)
        );
    }

    #[test]
    fn base64_round_trips() {
        for n in 0..300usize {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 + n) as u8).collect();
            let e = base64_encode(&data);
            assert_eq!(e.len() % 4, 0);
            assert_eq!(base64_decode(&e), data, "{n}");
        }
        assert_eq!(base64_encode(b"hello\n"), "aGVsbG8K");
        assert_eq!(base64_decode("aGVs\nbG8K\n"), b"hello\n");
    }
}
