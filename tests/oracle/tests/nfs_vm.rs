//! The pNFS client VM harness against real NFS servers, in one VM boot (a
//! boot costs seconds under TCG):
//!
//! 1. nfs-ganesha on the host (NFSv4.1 only, a high port, exporting a
//!    temporary directory): the VM mounts it over the user-mode network,
//!    writes, lists and reads back files; the host sees the same bytes; the
//!    client's mountstats count the WRITE and READ it sent; the pcap of the
//!    VM's link holds the NFS traffic.
//! 2. The reference for our own server: the kernel nfsd in the VM
//!    exporting XFS on the VM's disk with the block layout (`pnfs` export
//!    option), mounted by the kernel client in the same VM with blkmapd
//!    running: the client uses the block layout (dmesg "pNFS: using block
//!    device", LAYOUTGET/GETDEVICEINFO/LAYOUTCOMMIT in mountstats) and
//!    moves the file's data on the disk, not through nfsd (WRITE and READ
//!    stay 0). Its capture (tcpdump on the VM's loopback) is decoded by
//!    tshark and kept as `target/tmp/nfs-reference/kernel-nfsd-block.pcap`
//!    as the wire reference of a working block-layout exchange.

use anyhow::{bail, Context, Result};
use gfs2_oracle::nfs::{MountStats, NfsClientVm, NfsVmOpts, MNT};
use gfs2_oracle::{tool, Scratch};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// nfs-ganesha serving `dir` with NFSv4.1 on 127.0.0.1:`port`; killed on
/// drop.
struct Ganesha {
    child: Child,
    log: PathBuf,
    port: u16,
}

impl Ganesha {
    fn start(work: &Path, export: &Path) -> Result<Ganesha> {
        let bin = tool("ganesha.nfsd")
            .context("nfs-ganesha is the NFSv4.1 server of this test (apt-get install nfs-ganesha nfs-ganesha-vfs)")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let rec = work.join("recovery");
        std::fs::create_dir_all(&rec)?;
        let conf = work.join("ganesha.conf");
        std::fs::write(
            &conf,
            format!(
                "NFS_CORE_PARAM {{\n NFS_Port = {port};\n Protocols = 4;\n Enable_NLM = false;\n \
                 Enable_RQUOTA = false;\n Bind_addr = 127.0.0.1;\n}}\n\
                 NFSv4 {{\n Minor_Versions = 1, 2;\n Graceless = true;\n RecoveryBackend = fs;\n \
                 RecoveryRoot = {};\n}}\n\
                 EXPORT {{\n Export_Id = 1;\n Path = {};\n Pseudo = /;\n Access_Type = RW;\n \
                 Squash = No_Root_Squash;\n Protocols = 4;\n Transports = TCP;\n SecType = sys;\n \
                 FSAL {{ Name = VFS; }}\n}}\nLOG {{ Default_Log_Level = EVENT; }}\n",
                rec.display(),
                export.display()
            ),
        )?;
        let log = work.join("ganesha.log");
        let child = Command::new(bin)
            .arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-L")
            .arg(&log)
            .arg("-p")
            .arg(work.join("ganesha.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting ganesha.nfsd")?;
        let mut g = Ganesha { child, log, port };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if g.child.try_wait()?.is_some() || t0.elapsed() > Duration::from_secs(30) {
                bail!("ganesha.nfsd did not listen on {port}:\n{}", g.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(g)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ganesha {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_host(p: &Path) -> Result<String> {
    let out = Command::new(tool("sha256sum")?).arg(p).output()?;
    let s = String::from_utf8_lossy(&out.stdout);
    Ok(s.split_whitespace().next().unwrap_or_default().to_string())
}

/// `tshark -r pcap -Y filter` output lines (one per matching frame).
fn tshark(pcap: &Path, filter: &str, extra: &[&str]) -> Result<String> {
    let out = Command::new(tool("tshark").context("apt-get install tshark")?)
        .arg("-r")
        .arg(pcap)
        .args(["-Y", filter])
        .args(extra)
        .output()
        .context("tshark")?;
    if !out.status.success() {
        bail!(
            "tshark -r {} failed: {}",
            pcap.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where the reference capture is kept: `tmp/nfs-reference` in the cargo
/// target directory of this test binary.
fn reference_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let t = exe
        .ancestors()
        .find(|a| a.join("CACHEDIR.TAG").exists())
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    t.join("tmp/nfs-reference")
}

#[test]
fn nfs_client_vm_against_ganesha_and_the_kernel_nfsd_block_layout() -> Result<()> {
    let t0 = Instant::now();
    let dir = Scratch::new("nfs-vm")?;
    let export = dir.join("export");
    std::fs::create_dir_all(&export)?;
    std::fs::write(export.join("from-host"), b"written by the host\n")?;
    let ganesha = Ganesha::start(dir.path(), &export)?;
    // The reference server's disk: a sparse image for XFS, no serial.
    let disk = dir.join("xfs.img");
    std::fs::File::create(&disk)?.set_len(512 << 20)?;
    let pcap = dir.join("link.pcap");
    let vm = NfsClientVm::start(NfsVmOpts::new().disk(&disk).pcap(&pcap))?;
    eprintln!("VM up in {:.1} s", vm.boot_time().as_secs_f64());

    // 1. ganesha on the host.
    let t1 = Instant::now();
    vm.mount_nfs(ganesha.port, "")
        .with_context(|| ganesha.log_text())?;
    let out = vm.sh_ok(&format!(
        "cd {MNT} && cat from-host && mkdir d && \
         dd if=/dev/urandom of=d/data bs=64k count=16 2>/dev/null && sync && \
         ls -1 . d && sha256sum d/data"
    ))?;
    assert!(out.starts_with("written by the host\n"), "{out}");
    assert!(out.contains("from-host") && out.contains("data"), "{out}");
    let vm_sum = out
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    assert_eq!(vm_sum.len(), 64, "{out}");
    assert_eq!(sha256_host(&export.join("d/data"))?, vm_sum);
    assert_eq!(std::fs::metadata(export.join("d/data"))?.len(), 1 << 20);
    // Read back through the server, not the client's cache.
    std::fs::write(export.join("d/host2"), vec![7u8; 300_000])?;
    let out = vm.sh_ok(&format!(
        "echo 3 > /proc/sys/vm/drop_caches; sha256sum {MNT}/d/data {MNT}/d/host2"
    ))?;
    assert!(out.starts_with(&vm_sum), "{out}");
    assert!(
        out.contains(&sha256_host(&export.join("d/host2"))?),
        "{out}"
    );
    let st = vm.mountstats(MNT)?;
    eprintln!("ganesha mountstats: {:?}", st.ops);
    assert!(st.op("WRITE") >= 1, "{st:?}");
    assert!(st.op("READ") >= 1, "{st:?}");
    assert!(
        st.op("EXCHANGE_ID") >= 1 && st.op("CREATE_SESSION") >= 1,
        "{st:?}"
    );
    vm.umount(MNT)?;
    eprintln!("ganesha part: {:.1} s", t1.elapsed().as_secs_f64());

    // 2. The kernel nfsd's XFS block layout, client in the same VM.
    let t2 = Instant::now();
    vm.sh_ok_timeout("nfs_kernel_server /dev/vda", Duration::from_secs(120))?;
    vm.start_blkmapd()?;
    vm.sh_ok("nfs_capture lo /tmp/ref.pcap")?;
    vm.mount_nfs_at("127.0.0.1", 2049, "/", MNT, "")?;
    let t_mounted = t2.elapsed();
    let out = vm.sh_ok_timeout(
        &format!(
            "dd if=/dev/urandom of=/tmp/src bs=64k count=64 2>/dev/null && \
             cp /tmp/src {MNT}/blk && sync && echo 3 > /proc/sys/vm/drop_caches && \
             sha256sum /tmp/src {MNT}/blk"
        ),
        Duration::from_secs(180),
    )?;
    let sums: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(sums.len() == 2 && sums[0] == sums[1], "{out}");
    let st: MountStats = vm.mountstats(MNT)?;
    vm.umount(MNT)?;
    vm.sh_ok("nfs_capture_stop")?;
    let dmesg = vm.dmesg()?;
    eprintln!(
        "kernel nfsd block layout: mounted after {:.1} s, done in {:.1} s; mountstats {:?}",
        t_mounted.as_secs_f64(),
        t2.elapsed().as_secs_f64(),
        st.ops
    );
    assert!(
        dmesg.contains("pNFS: using block device"),
        "no block device in use:\n{dmesg}\n{}",
        vm.sh("cat /tmp/blkmapd.log")?.stdout
    );
    for op in ["LAYOUTGET", "GETDEVICEINFO", "LAYOUTCOMMIT"] {
        assert!(st.op(op) >= 1, "{op}: {st:?}");
    }
    // The data went to the disk directly: nothing through nfsd.
    assert_eq!(st.op("WRITE"), 0, "{st:?}");
    assert_eq!(st.op("READ"), 0, "{st:?}");

    // The wire reference: tshark decodes the exchange.
    let ref_pcap = vm.read_file("/tmp/ref.pcap")?;
    let rdir = reference_dir();
    std::fs::create_dir_all(&rdir)?;
    let kept = rdir.join("kernel-nfsd-block.pcap");
    std::fs::write(&kept, &ref_pcap)?;
    let ops = tshark(&kept, "nfs", &["-T", "fields", "-e", "nfs.opcode"])?;
    for (op, code) in [
        ("LAYOUTGET", "50"),
        ("GETDEVICEINFO", "47"),
        ("LAYOUTCOMMIT", "49"),
    ] {
        assert!(
            ops.lines().any(|l| l.split(',').any(|c| c == code)),
            "{op} ({code}) not in the capture: {ops}"
        );
    }
    eprintln!(
        "reference capture: {} ({} bytes)",
        kept.display(),
        ref_pcap.len()
    );
    drop(vm);

    // The link to the host carried ganesha's NFS (qemu's filter-dump).
    let link = tshark(&pcap, "nfs", &[])?;
    assert!(link.lines().count() >= 10, "link capture: {link}");
    drop(ganesha);
    eprintln!("whole test: {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
