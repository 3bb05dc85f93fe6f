//! `gfs2-fuse`: mount a GFS2 filesystem through FUSE.
//!
//! ```text
//! gfs2-fuse mount DEVICE MOUNTPOINT [-o OPTIONS] [-f]
//! gfs2-fuse DEVICE MOUNTPOINT [-o OPTIONS] [-f]     (the form mount.fuse3 uses)
//! mount.fuse.gfs2-fuse DEVICE MOUNTPOINT [-sfnv] [-o OPTIONS]   (mount(8)'s helper)
//! gfs2-fuse mount DEVICE MNT1 MNT2 [MNT3...] -o lockproto=lock_mem [-f]
//! ```
//! Without `-f` the program detaches once the mount is ready; mount errors
//! are reported before that, with a non-zero exit status. With several
//! mount points, each is a node of its own (its own journal, glocks, caches
//! and device handle) and all share one in-process lock manager: the test
//! and demo mode of the cluster code.

use anyhow::{anyhow, bail, Context, Result};
use gfs2fuse::dev::spec;
use gfs2fuse::fs::{Fs, MountOptions};
use gfs2fuse::fuse::{self, FuseOptions};
use gfs2fuse::runstate::RunState;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Default)]
struct Args {
    /// `-s` of a mount helper: unknown options are ignored, not refused.
    sloppy: bool,
    device: PathBuf,
    /// One node per mount point.
    mountpoints: Vec<PathBuf>,
    foreground: bool,
    mount: MountOptions,
    fuse: FuseOptions,
    /// `nfsd=ADDR:PORT`: serve NFSv4.1 (the pNFS metadata server) there too.
    nfsd: Option<String>,
    /// `pnfs=SOCKET`: serve the layout service on this control socket.
    pnfs: Option<PathBuf>,
    /// `pnfs_lease=SECONDS`: the NFS lease bounding recalls.
    pnfs_lease: Option<u64>,
}

const USAGE: &str = concat!(
    "usage: gfs2-fuse mount DEVICE MOUNTPOINT [-o OPTIONS] [-f]\n",
    "       gfs2-fuse DEVICE MOUNTPOINT [-o OPTIONS] [-f]   (the form mount.fuse3 uses)\n",
    "       gfs2-fuse mount DEVICE MNT1 MNT2 [MNT3...] -o lockproto=lock_mem [-f]\n",
    "                 (one cluster node per mount point, all in this process, sharing an\n",
    "                 in-process lock manager: for tests and demos; kill -9 crashes them all)\n",
    "       gfs2-fuse umount MOUNTPOINT   (unmount; returns once the disk is clean)\n",
    "       gfs2-fuse glocks MOUNTPOINT   (this node's glocks, like debugfs glocks)\n",
    "       gfs2-fuse scan [--no-local] [TARGET...]   (list GFS2 filesystems)\n",
    "       gfs2-fuse pnfs layout|device|commit|return|gone|watch SOCKET ...   (pNFS control; --help)\n",
    "       gfs2-fuse savemeta [-z LEVEL] DEVICE FILE   (dump the metadata, gfs2_edit's format)\n",
    "       gfs2-fuse restoremeta FILE DEVICE   (write a metadata dump back)\n",
    "       mount -t fuse.gfs2-fuse DEVICE MOUNTPOINT   (through /sbin/mount.fuse.gfs2-fuse)\n",
    "DEVICE:  an image file or block device, nbd://host[:port]/export,\n",
    "         nbd+unix:///export?socket=PATH, aoe:eSHELF.SLOT@IFACE,\n",
    "         iscsi://[user[%secret]@]host[:port]/IQN/LUN, UUID=uuid or LOCKTABLE=cluster:fs\n",
    "options: lockproto= (lock_nolock, lock_mem, lock_dlm), locktable=, hostdata=jid=N, ro, acl, norecovery, spectator,\n",
    "         commit=SECONDS (log flush interval, default 30), quota=off, allow_other,\n",
    "         max_glocks=N (glocks kept at most, default 65536: the oldest idle ones are given up),\n",
    "         nfsd=ADDR:PORT (also serve the filesystem over NFSv4.1 there, e.g. 0.0.0.0:2049:\n",
    "         the pNFS metadata server; with several mount points, the first node's),\n",
    "         pnfs=SOCKET (pNFS layouts for a metadata server on this Unix socket; not with nfsd=),\n",
    "         pnfs_lease=SECONDS (the lease of pnfs= or nfsd=: recalls unanswered for two are\n",
    "         fenced; default 90),\n",
    "         threads=N (serving threads, default 4), io_uring=on|off (take FUSE requests over\n",
    "         io_uring when the kernel offers it: the fuse module's enable_uring; default off),\n",
    "         default_permissions (always on), and the generic rw, dev, suid, ...\n",
    "unmount: as root the mount is fuseblk and `umount MOUNTPOINT` returns once the disk\n",
    "         is clean; `gfs2-fuse umount MOUNTPOINT` waits for that on every mount."
);

/// The device as /proc/mounts shows it: a secret in the URL
/// (`iscsi://user%secret@host/...`) is left out.
fn redact_secret(dev: &str) -> String {
    let Some((scheme, rest)) = dev.split_once("://") else {
        return dev.to_string();
    };
    let auth_end = rest.find('/').unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split('%').next().unwrap_or("");
            format!("{scheme}://{user}@{}", &rest[at + 1..])
        }
        None => dev.to_string(),
    }
}

fn parse_options(s: &str, a: &mut Args) -> Result<()> {
    for o in s.split(',').filter(|o| !o.is_empty()) {
        let (k, v) = o.split_once('=').map_or((o, None), |(k, v)| (k, Some(v)));
        match (k, v) {
            ("lockproto", Some(v)) => a.mount.lockproto = Some(v.to_string()),
            ("locktable", Some(v)) => a.mount.locktable = Some(v.to_string()),
            ("hostdata", Some(v)) => {
                for part in v.split(':') {
                    if let Some(j) = part.strip_prefix("jid=") {
                        a.mount.jid = Some(j.parse().with_context(|| format!("bad jid {j:?}"))?);
                    }
                }
            }
            ("ro", None) => a.mount.read_only = true,
            ("rw", None) => a.mount.read_only = false,
            ("acl", None) => a.mount.acl = true,
            ("noacl", None) => a.mount.acl = false,
            ("norecovery", None) => a.mount.norecovery = true,
            ("commit", Some(v)) => {
                let secs: u64 = v.parse().with_context(|| format!("bad commit={v:?}"))?;
                if secs == 0 {
                    bail!("commit= must be at least 1 second");
                }
                a.mount.commit_secs = Some(secs);
            }
            ("max_glocks", Some(v)) => {
                let n: usize = v.parse().with_context(|| format!("bad max_glocks={v:?}"))?;
                if n == 0 {
                    bail!("max_glocks= must be at least 1");
                }
                a.mount.max_glocks = Some(n);
            }
            ("spectator", None) => a.mount.spectator = true,
            // The kernel's default: no quota accounting, so quota_change
            // files are left alone, as the kernel leaves them.
            ("quota", Some("off")) | ("noquota", None) => {}
            ("quota", Some(v)) => {
                bail!("quota={v} is not supported: quotas are neither enforced nor accounted (quota=off)")
            }
            ("pnfs", Some(v)) if !v.is_empty() => a.pnfs = Some(PathBuf::from(v)),
            ("pnfs_lease", Some(v)) => {
                let secs: u64 = v.parse().with_context(|| format!("bad pnfs_lease={v:?}"))?;
                if secs == 0 {
                    bail!("pnfs_lease= must be at least 1 second");
                }
                a.pnfs_lease = Some(secs);
            }
            ("allow_other", None) => a.fuse.allow_other = true,
            ("nfsd", Some(v)) => {
                if v.rsplit_once(':')
                    .is_none_or(|(_, p)| p.parse::<u16>().is_err())
                {
                    bail!("nfsd= needs ADDR:PORT, e.g. nfsd=0.0.0.0:2049 (got {v:?})");
                }
                a.nfsd = Some(v.to_string());
            }
            ("threads", Some(v)) => a.fuse.threads = Some(v.parse().context("threads=")?),
            ("io_uring", Some("on") | None) => a.fuse.io_uring = true,
            ("io_uring", Some("off")) => a.fuse.io_uring = false,
            ("io_uring", Some(v)) => bail!("io_uring= takes on or off (got {v:?})"),
            ("nosuid", None) => a.fuse.nosuid = true,
            ("suid", None) => a.fuse.nosuid = false,
            ("nodev", None) => a.fuse.nodev = true,
            ("dev", None) => a.fuse.nodev = false,
            ("noexec", None) => a.fuse.noexec = true,
            ("exec", None) => a.fuse.noexec = false,
            // Generic mount options that mean nothing here.
            (
                "default_permissions"
                | "atime"
                | "noatime"
                | "relatime"
                | "nodiratime"
                | "localflocks"
                | "strictatime"
                | "lazytime"
                | "nolazytime"
                | "async"
                | "silent"
                | "loud"
                | "nobarrier"
                | "barrier",
                None,
            ) => {}
            // mount(8)'s own options (fstab, systemd): for mount(8), not
            // for the filesystem. mount(8) passes some of them on to a
            // helper (`_netdev`, `nofail`, `user`).
            (
                "defaults" | "_netdev" | "auto" | "noauto" | "user" | "nouser" | "users" | "owner"
                | "group" | "nofail",
                None,
            ) => {}
            (k, _) if k.starts_with("x-") || k == "comment" => {}
            _ if a.sloppy => tracing::warn!("ignoring unknown mount option {o:?} (-s)"),
            _ => bail!("unknown mount option {o:?}\n{USAGE}"),
        }
    }
    Ok(())
}

/// `gfs2-fuse scan [--no-local] [TARGET...]`: list GFS2 filesystems.
fn scan_main(args: &[String]) -> ! {
    let local = !args.iter().any(|a| a == "--no-local");
    let targets: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .collect();
    let found = gfs2fuse::scan::scan(&targets, local);
    print!("{}", gfs2fuse::scan::render(&found));
    std::process::exit(if found.is_empty() { 1 } else { 0 });
}

/// How mount(8) runs a helper (`mount.TYPE`): `SPEC DIR [-sfnv] [-N NS]
/// [-o OPTIONS] [-t TYPE]`. `-f` is mount(8)'s fake mode (do nothing),
/// not the daemon's foreground flag; the mount always detaches.
fn helper_args(argv: Vec<String>) -> Result<Args> {
    let mut a = Args::default();
    let mut pos = Vec::new();
    let mut opts = Vec::new();
    let mut fake = false;
    let mut it = argv.into_iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "-o" => opts.push(it.next().ok_or_else(|| anyhow!("-o needs an argument"))?),
            "-t" | "-N" => {
                let v = it.next().ok_or_else(|| anyhow!("{x} needs an argument"))?;
                if x == "-N" {
                    bail!("mount namespaces (-N {v}) are not supported");
                }
            }
            "-h" | "--help" => {
                println!("{HELPER_USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with("-o") => opts.push(s[2..].to_string()),
            s if s.starts_with('-') && s.len() > 1 => {
                for c in s[1..].chars() {
                    match c {
                        's' => a.sloppy = true,
                        'f' => fake = true,
                        'n' | 'v' => {}
                        _ => bail!("unknown flag -{c}\n{HELPER_USAGE}"),
                    }
                }
            }
            _ => pos.push(x),
        }
    }
    for o in &opts {
        parse_options(o, &mut a)?;
    }
    let [dev, mnt] = pos.as_slice() else {
        bail!("{HELPER_USAGE}");
    };
    if fake {
        std::process::exit(0);
    }
    a.device = PathBuf::from(dev);
    a.mountpoints = vec![PathBuf::from(mnt)];
    a.fuse.fsname = redact_secret(dev);
    Ok(a)
}

const HELPER_USAGE: &str = concat!(
    "usage: mount.fuse.gfs2-fuse DEVICE MOUNTPOINT [-sfnv] [-o OPTIONS]\n",
    "The mount(8) helper of gfs2-fuse: `mount -t fuse.gfs2-fuse DEVICE MOUNTPOINT`,\n",
    "an fstab line of type fuse.gfs2-fuse, or (installed as mount.gfs2) `mount -t gfs2`.\n",
    "Options as for gfs2-fuse mount; mount(8)'s own (_netdev, nofail, user, noauto,\n",
    "x-systemd.*, ...) are accepted and left to mount(8). -s ignores unknown options,\n",
    "-f does nothing (mount(8)'s fake mode)."
);

fn parse_args() -> Result<Args> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    // Called as mount.fuse.gfs2-fuse or mount.gfs2 (a symlink to us).
    let arg0 = std::env::args().next().unwrap_or_default();
    let name = std::path::Path::new(&arg0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("mount.") {
        return helper_args(argv);
    }
    if argv.first().map(String::as_str) == Some("scan") {
        scan_main(&argv[1..]);
    }
    if argv.first().map(String::as_str) == Some("umount") {
        gfs2fuse::runstate::umount_main(&argv[1..]);
    }
    if argv.first().map(String::as_str) == Some("pnfs") {
        gfs2fuse::pnfs::control::client::main(&argv[1..]);
    }
    if argv.first().map(String::as_str) == Some("glocks") {
        gfs2fuse::runstate::glocks_main(&argv[1..]);
    }
    if argv.first().map(String::as_str) == Some("savemeta") {
        gfs2fuse::meta::cli::savemeta_main(&argv[1..]);
    }
    if argv.first().map(String::as_str) == Some("restoremeta") {
        gfs2fuse::meta::cli::restoremeta_main(&argv[1..]);
    }
    if argv.first().map(String::as_str) == Some("mount") {
        argv.remove(0);
    }
    let mut pos = Vec::new();
    let mut a = Args::default();
    let mut it = argv.into_iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "-f" => a.foreground = true,
            "-o" => {
                let o = it
                    .next()
                    .ok_or_else(|| anyhow!("-o needs an argument\n{USAGE}"))?;
                parse_options(&o, &mut a)?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with("-o") => parse_options(&s[2..], &mut a)?,
            s if s.starts_with('-') => bail!("unknown flag {s}\n{USAGE}"),
            _ => pos.push(x),
        }
    }
    if pos.len() < 2 {
        bail!("{USAGE}");
    }
    a.device = PathBuf::from(&pos[0]);
    a.mountpoints = pos[1..].iter().map(PathBuf::from).collect();
    a.fuse.fsname = redact_secret(&pos[0]);
    if a.pnfs.is_some() && a.nfsd.is_some() {
        // One layout service per node, and its recalls go to one metadata
        // server: the built-in one (nfsd=) or an outside one (pnfs=).
        bail!(
            "pnfs= and nfsd= both serve the node's layouts: give one (nfsd= is the \
             built-in metadata server, pnfs= the socket for an outside one)\n{USAGE}"
        );
    }
    if a.mountpoints.len() > 1 && a.pnfs.is_some() {
        bail!("pnfs= serves one node: give one mount point\n{USAGE}");
    }
    if a.mountpoints.len() > 1 {
        if a.mount.lockproto.as_deref() != Some("lock_mem") {
            bail!(
                "several mount points make several nodes in this process: they need \
                 -o lockproto=lock_mem (the in-process lock manager)\n{USAGE}"
            );
        }
        if a.mount.jid.is_some() {
            bail!("hostdata=jid= names one node's journal: with several mount points each node takes the first free journal");
        }
        a.fuse.shared_device = true;
    }
    Ok(a)
}

/// A mounted filesystem about to be served.
struct Daemon {
    mounted: fuse::Mounted,
    fs: Arc<Fs>,
    mountpoint: PathBuf,
    /// The pNFS control channel (`pnfs=`), stopped before the unmount.
    pnfs: Option<gfs2fuse::pnfs::control::ControlServer>,
}

/// Resolve the device name (`UUID=`, `LOCKTABLE=`) and the mount points,
/// once for every node.
fn resolve(a: &mut Args) -> Result<()> {
    // DEVICE is a path or a network device (nbd://host[:port]/export,
    // nbd+unix:///export?socket=PATH): see gfs2fuse::dev::spec. UUID= and
    // LOCKTABLE= name a filesystem on a local block device, found afresh.
    if let Some(r) = a.device.to_str().and_then(gfs2fuse::scan::resolve) {
        let found = r?;
        tracing::info!("{} is {found}", a.device.display());
        a.device = PathBuf::from(found);
    }
    // Resolved before mounting: once mounted, looking at the path would ask
    // the mount itself, which is not served yet.
    for m in a.mountpoints.iter_mut() {
        *m = std::fs::canonicalize(&*m).with_context(|| format!("mount point {}", m.display()))?;
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = a.mountpoints.iter().find(|m| !seen.insert(*m)) {
        bail!("mount point {} is given twice", dup.display());
    }
    Ok(())
}

/// Mount every node of `a`: one, or one per mount point on `lock_mem`. A
/// failure unmounts the nodes already mounted.
fn mount_all(a: &mut Args) -> Result<Vec<Daemon>> {
    resolve(a)?;
    let mut mount = a.mount.clone();
    if mount.lockproto.as_deref() == Some("lock_mem") {
        // One manager for the nodes of this process.
        mount.lock_module = Some(gfs2_lockproto::mem::MemLockManager::new().proto());
    }
    let mut out: Vec<Daemon> = Vec::new();
    for (i, mnt) in a.mountpoints.iter().enumerate() {
        match mount_one(&a.device, mnt, &mount, &a.fuse).and_then(|d| start_pnfs(d, a)) {
            Ok(d) => out.push(d),
            Err(e) => {
                for d in out.into_iter().rev() {
                    d.abandon();
                }
                return Err(if a.mountpoints.len() > 1 {
                    e.context(format!("node {i} ({})", mnt.display()))
                } else {
                    e
                });
            }
        }
    }
    if let (Some(addr), Some(first)) = (&a.nfsd, out.first()) {
        // Bound before the parent is told the mount is ready, so that a
        // taken port fails the mount.
        // Layouts from the node's layout service, with the server's lease
        // (`pnfs_lease=`): unanswered recalls are fenced after two.
        let lease = a
            .pnfs_lease
            .map(std::time::Duration::from_secs)
            .unwrap_or(gfs2fuse::pnfs::nfs::server::LEASE);
        let svc = gfs2fuse::pnfs::LayoutService::start(&first.fs, Default::default());
        svc.set_lease(lease);
        // The SCSI layout too when the device is a LUN with persistent
        // reservations (an iscsi:// device); the block layout regardless.
        match svc.enable_scsi() {
            Ok(true) => tracing::info!("pNFS: SCSI layout offered, with reservation fencing"),
            Ok(false) => {}
            Err(e) => tracing::warn!("pNFS: no SCSI layout: {e}"),
        }
        let backend: Arc<dyn gfs2fuse::pnfs::LayoutBackend> = svc;
        if let Err(e) = gfs2fuse::pnfs::nfs::start(first.fs.clone(), Some(backend), addr, lease) {
            for d in out.into_iter().rev() {
                d.abandon();
            }
            return Err(anyhow!("NFS server on {addr}: {e}"));
        }
    }
    Ok(out)
}

fn mount_one(
    device: &std::path::Path,
    mountpoint: &std::path::Path,
    opts: &MountOptions,
    fopts: &FuseOptions,
) -> Result<Daemon> {
    // Open read-write even for `ro`: a dirty journal is replayed anyway when
    // the device allows it, as the kernel does.
    let mut opts = opts.clone();
    let dev = match spec::open_os(device.as_os_str(), false) {
        Ok(d) => d,
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EROFS)) => {
            opts.device_read_only = true;
            spec::open_os(device.as_os_str(), true)?
        }
        Err(e) => return Err(e.into()),
    };
    // The crash tests' hook (kill -9 amid an online grow or jadd); the
    // device itself unless they set its variables.
    let dev = gfs2fuse::dev::killpoint::wrap_daemon(dev);
    let fs = Fs::mount(dev, opts).with_context(|| format!("mounting {}", device.display()))?;
    let mounted = fuse::session(fs.clone(), &device.to_string_lossy(), mountpoint, fopts);
    let mounted = match mounted {
        Ok(m) => m,
        Err(e) => {
            // Nothing was written through the mount; give the device back
            // clean all the same.
            if let Err(u) = fs.unmount() {
                tracing::error!("unmount after the failed FUSE mount: {u}");
            }
            return Err(e).with_context(|| format!("FUSE mount on {}", mountpoint.display()));
        }
    };
    Ok(Daemon {
        mounted,
        fs,
        mountpoint: mountpoint.to_path_buf(),
        pnfs: None,
    })
}

/// `pnfs=SOCKET`: the layout service of the node on its control socket.
fn start_pnfs(mut d: Daemon, a: &Args) -> Result<Daemon> {
    let Some(sock) = &a.pnfs else {
        return Ok(d);
    };
    let mut opts = gfs2fuse::pnfs::LayoutOptions::default();
    if let Some(s) = a.pnfs_lease {
        opts.lease = std::time::Duration::from_secs(s);
    }
    let svc = gfs2fuse::pnfs::LayoutService::start(&d.fs, opts);
    match gfs2fuse::pnfs::control::ControlServer::start(svc, sock) {
        Ok(s) => {
            d.pnfs = Some(s);
            Ok(d)
        }
        Err(e) => {
            d.abandon();
            Err(anyhow!("pNFS control socket {}: {e}", sock.display()))
        }
    }
}

impl Daemon {
    /// Undo a mount that will never be served (another node failed to
    /// mount): the FUSE mount goes, the disk is left clean.
    fn abandon(self) {
        let Daemon {
            mounted,
            fs,
            mountpoint,
            pnfs,
        } = self;
        drop(pnfs);
        let fuseblk = mounted.fuseblk;
        // Closing the session's descriptor first aborts the connection, so
        // a fuseblk umount does not wait for a FUSE_DESTROY reply nobody
        // would send; a plain mount is unmounted by the session itself.
        drop(mounted);
        if fuseblk {
            if let Err(e) = fuse::blkmount::unmount(&mountpoint, true) {
                tracing::error!("unmounting {}: {e}", mountpoint.display());
            }
        }
        if let Err(e) = fs.unmount() {
            tracing::error!("unmount of {}: {e}", mountpoint.display());
        }
    }
}

/// Serve every node until each is unmounted; the exit status: 0 only if
/// every node left the disk clean. Each node's run-state file (see
/// [`gfs2fuse::runstate`]) records its outcome for `gfs2-fuse umount`.
fn serve(ds: Vec<Daemon>) -> i32 {
    let mut unmounts: Vec<Box<dyn FnMut() -> std::io::Result<()> + Send>> = Vec::new();
    let mut dumps: Vec<Box<dyn Fn() + Send>> = Vec::new();
    let mut nodes = Vec::new();
    for d in ds {
        let Daemon {
            mut mounted,
            fs,
            mountpoint,
            pnfs,
        } = d;
        let state = run_state(&mountpoint);
        // gfs2_grow and gfs2_jadd on this mount ask us (see gfs2fuse::control).
        if let Some(st) = &state {
            if let Err(e) = gfs2fuse::control::serve(Arc::downgrade(&fs), st.control_path()) {
                tracing::warn!("no control socket (gfs2_grow, gfs2_jadd): {e}");
            }
        }
        if mounted.fuseblk {
            let mp = mountpoint.clone();
            unmounts.push(Box::new(move || fuse::blkmount::unmount(&mp, true)));
        } else {
            let mut u = mounted.session.unmount_callable();
            unmounts.push(Box::new(move || u.unmount()));
        }
        // SIGUSR1 writes each node's glock dump for `gfs2-fuse glocks`.
        match &state {
            Some(st) => {
                let path = st.glocks_path();
                let weak = Arc::downgrade(&fs);
                dumps.push(Box::new(move || {
                    if let Some(fs) = weak.upgrade() {
                        RunState::write_glocks(&path, &fs.glocks().dump());
                    }
                }));
            }
            None => dumps.push(Box::new(|| {
                tracing::warn!("no run-state file: no glock dump")
            })),
        }
        nodes.push((mounted, fs, state, pnfs));
    }
    unmount_on_signal(
        Box::new(move || {
            // Every node, even when one fails.
            let mut first_err = None;
            for u in unmounts.iter_mut() {
                if let Err(e) = u() {
                    first_err.get_or_insert(e);
                }
            }
            first_err.map_or(Ok(()), Err)
        }),
        Box::new(move || dumps.iter().for_each(|d| d())),
    );
    let threads: Vec<_> = nodes
        .into_iter()
        .map(|(mounted, fs, state, pnfs)| {
            std::thread::Builder::new()
                .name("fuse-node".into())
                .spawn(move || serve_node(mounted, fs, state, pnfs))
        })
        .collect();
    let mut status = 0;
    for t in threads {
        let ok = match t {
            Ok(h) => h.join().unwrap_or(false),
            Err(e) => {
                eprintln!("gfs2-fuse: no thread to serve a node: {e}");
                false
            }
        };
        if !ok {
            status = 1;
        }
    }
    status
}

/// Serve one node until it is unmounted; whether it left the disk clean.
fn serve_node(
    mounted: fuse::Mounted,
    fs: Arc<Fs>,
    state: Option<RunState>,
    pnfs: Option<gfs2fuse::pnfs::control::ControlServer>,
) -> bool {
    let served = mounted.session.run();
    // No layout outlives the mount.
    drop(pnfs);
    // Done already on FUSE_DESTROY (fuseblk) or as the session ended; this
    // returns how it went.
    let mut outcome = fs.unmount().map_err(|e| e.to_string());
    if let Err(e) = served {
        tracing::error!("serving: {e}");
        outcome = outcome.and(Err(format!("serving: {e}")));
    }
    if let Some(st) = state {
        st.finish(&outcome);
    }
    match outcome {
        Ok(()) => true,
        Err(e) => {
            eprintln!("gfs2-fuse: {e}");
            false
        }
    }
}

/// The signals that unmount: blocked in every thread (call this before any
/// thread exists: the commit timer, device reader threads and serving
/// threads inherit the mask) and taken by the watcher of
/// [`unmount_on_signal`].
fn block_unmount_signals() -> libc::sigset_t {
    // SAFETY: plain signal-set manipulation on a local sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// SIGTERM, SIGINT and SIGHUP unmount the filesystem instead of killing the
/// daemon: the serving loop then ends, the disk is left clean, as
/// `umount` would. SIGUSR1 runs `dump` (the glock dump). The signals were
/// blocked by [`block_unmount_signals`]; one watcher thread takes them.
fn unmount_on_signal(
    mut unmount: Box<dyn FnMut() -> std::io::Result<()> + Send>,
    dump: Box<dyn Fn() + Send>,
) {
    let set = block_unmount_signals();
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: waits on the signal set built above.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            if sig == libc::SIGUSR1 {
                dump();
                continue;
            }
            tracing::info!("signal {sig}: unmounting");
            if let Err(e) = unmount() {
                tracing::error!("unmount on signal {sig}: {e}");
                std::process::exit(1);
            }
            return;
        });
    if let Err(e) = spawned {
        tracing::warn!("no signal watcher ({e}); SIGTERM will not unmount cleanly");
    }
}

/// FUSE replies are built in buffers of up to a few hundred KiB, one per
/// request. glibc serves such sizes with fresh mmaps by default, so every
/// directory listing paid a page fault per 4 KiB of reply; from the heap
/// they are reused instead.
fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn main() {
    tune_malloc();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gfs2-fuse: {e:#}");
            std::process::exit(2);
        }
    };
    if args.foreground {
        block_unmount_signals();
        match mount_all(&mut args) {
            Ok(ds) => std::process::exit(serve(ds)),
            Err(e) => {
                eprintln!("gfs2-fuse: {e:#}");
                std::process::exit(1);
            }
        }
    }
    // Detach: the child mounts and tells the parent through a pipe whether
    // the mount is ready; the parent exits with that status. Forking happens
    // before any thread exists.
    let mut fds = [0i32; 2];
    // SAFETY: pipe() fills two descriptors we then own.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        eprintln!("gfs2-fuse: pipe: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    // SAFETY: single-threaded at this point.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        eprintln!("gfs2-fuse: fork: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    if pid > 0 {
        // SAFETY: fds[1] is ours; close the write end, read the status.
        unsafe { libc::close(fds[1]) };
        let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        let mut b = [1u8; 1];
        let ok = r.read_exact(&mut b).is_ok() && b[0] == 0;
        std::process::exit(if ok { 0 } else { 1 });
    }
    // SAFETY: the child owns fds[1]; fds[0] is the parent's.
    unsafe { libc::close(fds[0]) };
    let mut w = unsafe { std::fs::File::from_raw_fd(fds[1]) };
    unsafe { libc::setsid() };
    block_unmount_signals();
    match mount_all(&mut args) {
        Ok(ds) => {
            let _ = w.write_all(&[0]);
            drop(w);
            // Detach from the terminal.
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                use std::os::fd::AsRawFd;
                // SAFETY: dup2 onto the standard descriptors.
                unsafe {
                    libc::dup2(null.as_raw_fd(), 0);
                    libc::dup2(null.as_raw_fd(), 1);
                    libc::dup2(null.as_raw_fd(), 2);
                }
            }
            std::process::exit(serve(ds));
        }
        Err(e) => {
            eprintln!("gfs2-fuse: {e:#}");
            let _ = w.write_all(&[1]);
            std::process::exit(1);
        }
    }
}

/// The run-state file for `gfs2-fuse umount`; a mount without one still
/// works (a plain `umount` of a fuseblk mount needs none).
fn run_state(mountpoint: &std::path::Path) -> Option<RunState> {
    RunState::create(mountpoint)
        .map_err(|e| tracing::warn!("no run-state file for gfs2-fuse umount: {e}"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::redact_secret;

    #[test]
    fn secrets_stay_out_of_the_mount_table() {
        assert_eq!(
            redact_secret("iscsi://alice%s3cret@host:3260/iqn.2000-01.x:y/1"),
            "iscsi://alice@host:3260/iqn.2000-01.x:y/1"
        );
        assert_eq!(redact_secret("nbd://h/exp"), "nbd://h/exp");
        assert_eq!(redact_secret("/dev/sdb"), "/dev/sdb");
        assert_eq!(
            redact_secret("iscsi://h/iqn.x:a@b/1"),
            "iscsi://h/iqn.x:a@b/1"
        );
    }
}
