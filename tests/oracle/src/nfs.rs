//! A Linux NFSv4.1 / pNFS client in a qemu VM, to test NFS servers against
//! (ours on the host, and the kernel's nfsd as the reference).
//!
//! Why a VM: the host kernel has no NFS client (nor server) modules, and a
//! pNFS server is only worth what the real Linux client makes of it: which
//! layouts it asks for, whether it resolves the block volume to its own
//! disk, what it sends in LAYOUTCOMMIT. Everything runs under TCG.
//!
//! * Boot: the oracle's kernel ([`Kernel`]) with the base initramfs, the
//!   cluster layer (its virtio-net and virtio-serial modules and the
//!   command loop of `/lib/cluster.sh`) and a cached NFS layer
//!   (`scripts/nfs-initramfs.sh`: the NFS client with the block layout
//!   driver and device-mapper, nfsd and XFS for the reference server,
//!   mount.nfs, blkmapd, rpc.nfsd, rpc.mountd, exportfs, mkfs.xfs, tcpdump
//!   with their libraries, `/nfs-init`, `/lib/nfs.sh`). `rdinit=/nfs-init`.
//! * Network: qemu's user-mode network (`-netdev user`): the VM is
//!   10.0.2.15 and reaches the host as [`HOST`] (10.0.2.2), so a server
//!   listening on the host's 127.0.0.1 or 0.0.0.0 is reachable without
//!   root. NFSv4.1 callbacks (CB_LAYOUTRECALL) travel on the client's own
//!   connection (the backchannel), so the host never connects to the VM.
//!   Every frame of that link is dumped to a pcap file (qemu's
//!   `filter-dump`) for tshark; traffic inside the VM (the kernel nfsd
//!   reference on 127.0.0.1) is captured with tcpdump there
//!   (`nfs_capture` in `/lib/nfs.sh`, [`NfsClientVm::read_file`]).
//! * Disks: host image files as virtio-blk (`/dev/vda`, ...), `cache=none`
//!   like the cluster's shared disk, with no serial numbers (blkmapd
//!   crashed on a mix of disks with and without one).
//! * Commands: [`NfsClientVm::sh`] runs a busybox `sh` script in the VM
//!   over a virtio-serial port, as [`crate::cluster::Node::sh`] does, with
//!   the functions of `/lib/nfs.sh` defined.
//! * Failures: [`NfsClientVm::set_link`] cuts the VM's network (the client
//!   keeps its state and answers nothing), [`NfsClientVm::set_running`]
//!   freezes it (qemu's monitor, [`NfsClientVm::monitor`]).
//! * Dropping the VM kills qemu and removes its temporary files.

use crate::cluster::{self, CmdOutput, Node, SH_TIMEOUT};
use crate::{gzip, tool, Kernel, Scratch};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The host's address as the VM sees it (qemu's user-mode network).
pub const HOST: &str = "10.0.2.2";

/// Where [`NfsClientVm::mount_nfs`] mounts.
pub const MNT: &str = "/mnt/nfs";

/// How a client VM looks; [`NfsClientVm::start`] boots it.
#[derive(Clone, Debug)]
pub struct NfsVmOpts {
    disks: Vec<PathBuf>,
    iscsi_port: Option<u16>,
    files: cluster::VmFiles,
    pcap: Option<PathBuf>,
    memory_mb: u32,
    boot_timeout: Duration,
}

impl Default for NfsVmOpts {
    fn default() -> Self {
        NfsVmOpts {
            disks: Vec::new(),
            iscsi_port: None,
            files: Vec::new(),
            pcap: None,
            memory_mb: 1024,
            boot_timeout: Duration::from_secs(120),
        }
    }
}

impl NfsVmOpts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Attach the raw image `path` as the next virtio disk (`/dev/vda`
    /// first), `cache=none` where the host filesystem allows O_DIRECT,
    /// shareable with other qemus and with a server on the host.
    pub fn disk(mut self, path: impl Into<PathBuf>) -> Self {
        self.disks.push(path.into());
        self
    }

    /// A second network card (`eth1`, 10.0.3.15, its own user-mode
    /// network, untouched by [`NfsClientVm::set_link`]) with host port
    /// `port` on 127.0.0.1 forwarded to its port 3260: where
    /// `nfs_lio_target` serves an iSCSI LUN to the host.
    pub fn iscsi_port(mut self, port: u16) -> Self {
        self.iscsi_port = Some(port);
        self
    }

    /// Put `data` at the absolute path `vm_path` in the VM (mode 0644;
    /// missing directories are created).
    pub fn file(mut self, vm_path: &str, data: &[u8]) -> Self {
        self.files
            .push((vm_path.to_string(), 0o100644, data.to_vec()));
        self
    }

    /// Put the host executable `host` at `/usr/bin/<its name>` in the VM
    /// with its shared libraries (as [`crate::cluster::ClusterOpts::binary`]).
    pub fn binary(mut self, host: &Path) -> Result<Self> {
        cluster::add_binary(&mut self.files, host)?;
        Ok(self)
    }

    /// Dump the VM's network traffic (its link to the host) to `path`
    /// (pcap) instead of a temporary file.
    pub fn pcap(mut self, path: impl Into<PathBuf>) -> Self {
        self.pcap = Some(path.into());
        self
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

/// `/proc/self/mountstats` per-operation counts of one NFS mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountStats {
    /// Operation name (`READ`, `LAYOUTGET`, ...) to the number of requests
    /// sent (the first number of its line).
    pub ops: BTreeMap<String, u64>,
}

impl MountStats {
    /// How many `op` requests were sent (0 for an op not listed).
    pub fn op(&self, op: &str) -> u64 {
        self.ops.get(op).copied().unwrap_or(0)
    }

    /// Parse the section of `text` (the content of `/proc/self/mountstats`)
    /// for the mount on `mnt`. An error if there is no NFS mount there.
    pub fn parse(text: &str, mnt: &str) -> Result<MountStats> {
        let mut found = false;
        let mut on = false;
        let mut in_ops = false;
        let mut ops = BTreeMap::new();
        for l in text.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.first() == Some(&"device") {
                // device SERVER:/PATH mounted on MNT with fstype nfs4 ...
                on = w.get(4) == Some(&mnt) && w.get(7).is_some_and(|t| t.starts_with("nfs"));
                found |= on;
                in_ops = false;
                continue;
            }
            if !on {
                continue;
            }
            if l.trim() == "per-op statistics" {
                in_ops = true;
                continue;
            }
            if in_ops {
                if let (Some(name), Some(n)) = (w.first(), w.get(1)) {
                    if let (Some(name), Ok(n)) = (name.strip_suffix(':'), n.parse::<u64>()) {
                        ops.insert(name.to_string(), n);
                    }
                }
            }
        }
        if !found {
            bail!("no NFS mount on {mnt} in mountstats:\n{text}");
        }
        Ok(MountStats { ops })
    }
}

/// A running client VM; see the module documentation.
pub struct NfsClientVm {
    node: Node,
    pcap: PathBuf,
    boot_time: Duration,
    /// qemu's human monitor socket; one conversation at a time.
    monitor: Mutex<PathBuf>,
    // Last: removed after qemu is gone.
    _dir: Scratch,
}

impl NfsClientVm {
    /// Boot the VM; returns when it serves commands.
    pub fn start(opts: NfsVmOpts) -> Result<NfsClientVm> {
        let t0 = Instant::now();
        let qemu = tool("qemu-system-x86_64")?;
        let k = Kernel::get()?;
        let dir = Scratch::new("nfs")?;
        let initrd = dir.join("initrd.gz");
        {
            let mut data = std::fs::read(k.base_initrd()?).context("base initrd")?;
            data.extend(std::fs::read(cluster::cluster_layer(k)?).context("cluster layer")?);
            data.extend(std::fs::read(nfs_layer(k)?).context("NFS layer")?);
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
        let pcap = match &opts.pcap {
            Some(p) => p.clone(),
            None => dir.join("net.pcap"),
        };
        let pcap_s = pcap
            .to_str()
            .filter(|s| !s.contains(','))
            .ok_or_else(|| anyhow!("pcap path {} must be UTF-8 without ','", pcap.display()))?
            .to_string();
        let mut cmd = Command::new(&qemu);
        cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1"])
            .args(["-m", &opts.memory_mb.to_string()])
            .args(["-nographic", "-no-reboot", "-nodefaults"])
            .arg("-serial")
            .arg(format!("file:{}", dir.join("console1.log").display()))
            .arg("-kernel")
            .arg(&k.vmlinuz)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg("console=ttyS0 panic=-1 quiet rdinit=/nfs-init")
            .args(["-netdev", "user,id=n0"])
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
            .arg("-object")
            .arg(format!("filter-dump,id=f0,netdev=n0,file={pcap_s}"))
            .args(["-device", "virtio-serial-pci"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=c0,path={},server=on,wait=off",
                dir.join("cmd1.sock").display()
            ))
            .args(["-device", "virtserialport,chardev=c0,name=cmd"])
            .arg("-monitor")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("monitor.sock").display()
            ));
        for (i, d) in opts.disks.iter().enumerate() {
            let d = d
                .canonicalize()
                .with_context(|| format!("disk {}", d.display()))?;
            let s = d
                .to_str()
                .filter(|s| !s.contains(','))
                .ok_or_else(|| anyhow!("disk path {} must be UTF-8 without ','", d.display()))?;
            let cache = if cluster::o_direct_ok(&d) {
                "none"
            } else {
                "writeback"
            };
            cmd.arg("-drive")
                .arg(format!("file={s},format=raw,if=none,id=d{i},cache={cache}"))
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive=d{i},share-rw=on"));
        }
        if let Some(p) = opts.iscsi_port {
            cmd.arg("-netdev")
                .arg(format!(
                    "user,id=n1,net=10.0.3.0/24,hostfwd=tcp:127.0.0.1:{p}-10.0.3.15:3260"
                ))
                .args(["-device", "virtio-net-pci,netdev=n1,romfile="]);
        }
        let node = Node::spawn(1, cmd, &dir)?;
        let vm = NfsClientVm {
            node,
            pcap,
            boot_time: Duration::ZERO,
            monitor: Mutex::new(dir.join("monitor.sock")),
            _dir: dir,
        };
        if let Err(e) = vm.node.wait_ready(t0 + opts.boot_timeout) {
            return Err(e.context(vm.node.console_tail()));
        }
        let mut vm = vm;
        vm.boot_time = t0.elapsed();
        Ok(vm)
    }

    /// How long [`NfsClientVm::start`] took.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Run a command of qemu's human monitor (`info status`, `stop`, ...)
    /// and return what it printed.
    pub fn monitor(&self, command: &str) -> Result<String> {
        use std::io::{Read, Write};
        if command.contains('\n') {
            bail!("monitor command {command:?}: one line please");
        }
        let path = self.monitor.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = std::os::unix::net::UnixStream::connect(&*path)
            .with_context(|| format!("connecting to qemu's monitor {}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let prompt = b"(qemu) ";
        let read_to_prompt = |s: &mut std::os::unix::net::UnixStream| -> Result<Vec<u8>> {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.ends_with(prompt) {
                let n = s.read(&mut buf).context("reading qemu's monitor")?;
                if n == 0 {
                    bail!("qemu's monitor closed");
                }
                got.extend_from_slice(&buf[..n]);
            }
            Ok(got)
        };
        read_to_prompt(&mut s)?;
        s.write_all(format!("{command}\n").as_bytes())?;
        let out = read_to_prompt(&mut s)?;
        // The monitor echoes the command line (with terminal escapes) first.
        let text = String::from_utf8_lossy(&out[..out.len() - prompt.len()]).replace('\r', "");
        Ok(text
            .split_once('\n')
            .map_or(String::new(), |(_, rest)| rest.to_string()))
    }

    /// Connect or cut the VM's network link (qemu `set_link`): a client
    /// cut off keeps its state but answers nothing (recalls time out), as a
    /// client behind a failed network would.
    pub fn set_link(&self, up: bool) -> Result<()> {
        self.monitor(&format!("set_link n0 {}", if up { "on" } else { "off" }))?;
        Ok(())
    }

    /// Freeze the VM (qemu `stop`: no guest code runs, nothing answers)
    /// or let it run again (`cont`).
    pub fn set_running(&self, running: bool) -> Result<()> {
        self.monitor(if running { "cont" } else { "stop" })?;
        Ok(())
    }

    /// The pcap file of the VM's link to the host (complete once the VM is
    /// dropped; qemu writes it as frames pass).
    pub fn pcap_path(&self) -> &Path {
        &self.pcap
    }

    /// The serial console so far (the kernel log, daemons' output).
    pub fn console(&self) -> String {
        self.node.console()
    }

    /// Run `script` with busybox `sh` in the VM, with the functions of
    /// `/lib/nfs.sh` and `/lib/cluster.sh` defined; see
    /// [`crate::cluster::Node::sh`].
    pub fn sh(&self, script: &str) -> Result<CmdOutput> {
        self.sh_timeout(script, SH_TIMEOUT)
    }

    /// [`NfsClientVm::sh`] with a time limit.
    pub fn sh_timeout(&self, script: &str, timeout: Duration) -> Result<CmdOutput> {
        self.node
            .sh_timeout(&format!(". /lib/nfs.sh\n{script}"), timeout)
    }

    /// [`NfsClientVm::sh`] that must exit 0: its stdout, or an error with
    /// both outputs and the console tail.
    pub fn sh_ok(&self, script: &str) -> Result<String> {
        self.sh_ok_timeout(script, SH_TIMEOUT)
    }

    /// [`NfsClientVm::sh_ok`] with a time limit.
    pub fn sh_ok_timeout(&self, script: &str, timeout: Duration) -> Result<String> {
        self.node
            .sh_ok_timeout(&format!(". /lib/nfs.sh\n{script}"), timeout)
    }

    /// Mount the host's NFSv4.1 server on `port` (`10.0.2.2:/`) on [`MNT`],
    /// with `opts` after `vers=4.1,port=PORT` (e.g. `"sync"`; may be empty).
    pub fn mount_nfs(&self, server_port: u16, opts: &str) -> Result<()> {
        self.mount_nfs_at(HOST, server_port, "/", MNT, opts)
    }

    /// Mount `server:export` with NFS 4.1 on `port` on `mnt`, with `opts`.
    pub fn mount_nfs_at(
        &self,
        server: &str,
        port: u16,
        export: &str,
        mnt: &str,
        opts: &str,
    ) -> Result<()> {
        for (what, v) in [("server", server), ("export", export), ("mount point", mnt)] {
            if v.is_empty() || v.contains(['\'', ' ', '\n']) {
                bail!("{what} {v:?}: no quotes, spaces or newlines please");
            }
        }
        if opts.contains(['\'', ' ', '\n']) {
            bail!("mount options {opts:?}: no quotes, spaces or newlines please");
        }
        self.sh_ok_timeout(
            &format!("nfs_mount '{server}' {port} '{export}' '{mnt}' '{opts}'"),
            Duration::from_secs(180),
        )
        .with_context(|| format!("mounting {server}:{export} (port {port}) on {mnt}"))?;
        Ok(())
    }

    /// Unmount `mnt` (writes back what the client still holds: with pNFS,
    /// the last LAYOUTCOMMIT and LAYOUTRETURN).
    pub fn umount(&self, mnt: &str) -> Result<()> {
        self.sh_ok_timeout(&format!("umount '{mnt}'"), Duration::from_secs(180))?;
        Ok(())
    }

    /// The per-op counts of the NFS mount on `mnt`.
    pub fn mountstats(&self, mnt: &str) -> Result<MountStats> {
        MountStats::parse(&self.sh_ok("cat /proc/self/mountstats")?, mnt)
    }

    /// The kernel log.
    pub fn dmesg(&self) -> Result<String> {
        self.sh_ok("dmesg")
    }

    /// Start blkmapd (once): the block layout driver asks it which local
    /// disk carries a GETDEVICEINFO volume's signature. Without it the
    /// client falls back to I/O through the metadata server.
    pub fn start_blkmapd(&self) -> Result<()> {
        self.sh_ok("nfs_blkmapd")?;
        Ok(())
    }

    /// The content of the file `vm_path` in the VM (binary-safe: sent
    /// base64-encoded). For small files (captures, logs).
    pub fn read_file(&self, vm_path: &str) -> Result<Vec<u8>> {
        if vm_path.contains(['\'', '\n']) {
            bail!("path {vm_path:?}: no quotes or newlines please");
        }
        let b64 = self.sh_ok(&format!("base64 '{vm_path}'"))?;
        Ok(cluster::base64_decode(&b64))
    }
}

impl Drop for NfsClientVm {
    fn drop(&mut self) {
        self.node.kill_qemu();
    }
}

/// `tshark -r pcap -Y filter EXTRA...`: the decoded frames matching
/// `filter` (one summary line each, or with `-V` the full decode; `-T fields
/// -e FIELD` for values).
pub fn tshark(pcap: &Path, filter: &str, extra: &[&str]) -> Result<String> {
    let out = Command::new(tool("tshark").context("apt-get install tshark")?)
        .arg("-r")
        .arg(pcap)
        // The client's reserved source port (665-1023) can be one tshark
        // gives to TLS, whose heuristics then take the NFS stream for
        // SSLv2 and the NFS filters see nothing.
        .args(["--disable-protocol", "tls"])
        .args(["-Y", filter])
        .args(extra)
        .output()
        .context("running tshark")?;
    if !out.status.success() {
        bail!(
            "tshark -r {} -Y {filter:?} failed: {}",
            pcap.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The frames of `pcap` that tshark finds malformed or notes at the
/// "error" expert level (`FRAME: message` each): empty for a capture of
/// well-formed NFS/RPC. (Warnings such as "State ID deprecated in CLOSE
/// responses", which the kernel nfsd's replies get, are not errors.)
pub fn tshark_errors(pcap: &Path) -> Result<Vec<String>> {
    // Expert severities: chat 0x200000, note 0x400000, warn 0x600000,
    // error 0x800000.
    let out = tshark(
        pcap,
        "_ws.malformed || _ws.expert.severity >= 0x800000",
        &[
            "-T",
            "fields",
            "-e",
            "frame.number",
            "-e",
            "_ws.expert.message",
        ],
    )?;
    Ok(out
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.replacen('\t', ": ", 1))
        .collect())
}

/// The NFS layer of the initramfs (`scripts/nfs-initramfs.sh`), built once
/// and cached next to the others, keyed by the cluster layer's name (which
/// carries the base's), the NFS scripts and the tools copied in.
fn nfs_layer(k: &Kernel) -> Result<PathBuf> {
    static LAYER: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut g = LAYER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = g.as_ref() {
        return Ok(p.clone());
    }
    let below = cluster::cluster_layer(k)?;
    let tools: Vec<PathBuf> = [
        "mount.nfs",
        "blkmapd",
        "rpc.nfsd",
        "rpc.mountd",
        "exportfs",
        "mkfs.xfs",
        "tcpdump",
    ]
    .iter()
    .map(|t| {
        tool(t).context(
            "the NFS client VM needs nfs-common, nfs-kernel-server, xfsprogs and tcpdump \
             (apt-get install nfs-common nfs-kernel-server xfsprogs tcpdump)",
        )
    })
    .collect::<Result<_>>()?;
    let out = k.cached_archive(
        "nfs",
        below
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default(),
        &["nfs-initramfs.sh", "modules.sh", "nfs-init", "nfs.sh"],
        &tools,
        "building the NFS initramfs layer",
    )?;
    *g = Some(out.clone());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountstats_of_one_mount() {
        let text = "device proc mounted on /proc with fstype proc\n\
device 10.0.2.2:/ mounted on /mnt/nfs with fstype nfs4 statvers=1.1\n\
\topts:\trw,vers=4.1\n\
\tper-op statistics\n\
\t        NULL: 1 1 0 44 24 0 0 0 0\n\
\t        READ: 12 12 0 1920 49536 0 10 11 0\n\
\t   LAYOUTGET: 3 3 0 800 900 0 1 2 0\n\
\tGETDEVICEINFO: 1 1 0 100 200 0 1 1 0\n\
\n\
device 127.0.0.1:/ mounted on /mnt/other with fstype nfs4 statvers=1.1\n\
\tper-op statistics\n\
\t        READ: 99 99 0 0 0 0 0 0 0\n";
        let s = MountStats::parse(text, "/mnt/nfs").expect("parsed");
        assert_eq!(s.op("READ"), 12);
        assert_eq!(s.op("LAYOUTGET"), 3);
        assert_eq!(s.op("GETDEVICEINFO"), 1);
        assert_eq!(s.op("WRITE"), 0);
        assert_eq!(
            MountStats::parse(text, "/mnt/other")
                .expect("parsed")
                .op("READ"),
            99
        );
        assert!(MountStats::parse(text, "/proc").is_err());
        assert!(MountStats::parse(text, "/nowhere").is_err());
    }
}
