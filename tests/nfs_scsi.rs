//! The pNFS SCSI layout (RFC 8154) end to end, in one VM boot. The LUN
//! is the kernel's own SCSI target (LIO) in the client VM, backed by the
//! image as the VM's virtio disk: the VM reaches it through tcm_loop (its
//! `/dev/sda`), our daemon on the host through its iSCSI initiator over a
//! forwarded port (two `lock_mem` nodes, M0 serves NFS with a 10 s lease).
//! Why not tgt on the host (which `tests/iscsi.rs` uses, and which has
//! persistent reservations): the Linux client registers its key with the
//! APTPL bit set, and tgt 1.0.85 refuses APTPL (INVALID FIELD IN CDB), so
//! no Linux client can use a tgt LUN for the SCSI layout; LIO accepts it
//! and has PREEMPT AND ABORT too.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

fn sha256(p: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// 1. The client mounts with vers=4.1 and picks the SCSI layout: mountstats
///    show LAYOUTGET, GETDEVICEINFO and LAYOUTCOMMIT and no WRITE through
///    the server, its dmesg names the LUN (found by the designator our
///    GETDEVICEINFO gave) and its key; `sg_persist` in the VM sees the
///    server's key holding an Exclusive Access - Registrants Only
///    reservation and the client's key registered; the file it wrote reads
///    back the same through both FUSE nodes.
/// 2. The client's network cut (qemu `set_link`: it keeps running and keeps
///    its disk, unlike a frozen VM, which here would freeze the target too)
///    while it holds a layout: another node's write waits for the recall;
///    the client is fenced (two leases, or its lease runs out first) by
///    preempting its key at the LUN: `sg_persist` no longer lists it, and
///    its own writes to the LUN fail with a reservation conflict while the
///    committed data stays. After unmount fsck.gfs2 -n is clean and the
///    reservation is gone.
/// 3. tshark decodes the NFS capture without malformed packets.
#[test]
fn pnfs_scsi_layout() {
    use gfs2_oracle::nfs::{NfsClientVm, NfsVmOpts, MNT};
    use std::os::unix::fs::FileExt;

    const LEASE: u64 = 10;
    const IQN: &str = "iqn.2026-01.org.gfs2-fuse.test:lio";
    let img = common::mkfs(4096, 2, 256, "pnfs-scsi");
    let iport = common::free_port();
    let pcap = std::env::temp_dir().join(format!("gfs2-pnfs-scsi-{}.pcap", std::process::id()));
    let vm = NfsClientVm::start(
        NfsVmOpts::new()
            .disk(&img.0)
            .iscsi_port(iport)
            .pcap(&pcap)
            .binary(&common::package_tool("sg_persist", "sg3-utils"))
            .unwrap(),
    )
    .expect("client VM");
    eprintln!("VM up in {:.1} s", vm.boot_time().as_secs_f64());
    let links = vm
        .sh_ok(&format!("nfs_lio_target /dev/vda {IQN}"))
        .unwrap_or_else(|e| {
            panic!(
                "LIO: {e:#}\n{}",
                vm.sh("dmesg | tail -20")
                    .map(|o| o.stdout)
                    .unwrap_or_default()
            )
        });
    eprintln!("{links}");
    // A name per session: LIO lets only the reservation holder's session
    // through among sessions that share an initiator name.
    let url = format!("iscsi://127.0.0.1:{iport}/{IQN}/0?initiator_per_session=1");
    let m0 = common::mountpoint("pnfs-scsi0");
    let m1 = common::mountpoint("pnfs-scsi1");
    let port = common::free_port();
    let log = std::env::temp_dir().join(format!("gfs2-pnfs-scsi-{}.log", std::process::id()));
    let child = common::start_nfsd_pair(
        url.as_ref(),
        &m0.0,
        &m1.0,
        port,
        LEASE,
        "gfs2fuse::pnfs=debug,info",
        &log,
    );
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let guards = [
        common::MountGuard(m0.0.clone()),
        common::MountGuard(m1.0.clone()),
    ];
    assert!(
        daemon_log().contains("SCSI layout offered"),
        "{}",
        daemon_log()
    );
    vm.mount_nfs(port, "")
        .unwrap_or_else(|e| panic!("mount: {e:#}\n{}", daemon_log()));
    let sh = |s: &str| {
        vm.sh_ok_timeout(&format!("cd {MNT} && {s}"), Duration::from_secs(120))
            .unwrap_or_else(|e| {
                panic!(
                    "{s}: {e:#}\n--- daemon log tail:\n{}\n--- VM:\n{}",
                    tail(&daemon_log()),
                    vm.sh("dmesg | tail -30")
                        .map(|o| o.stdout + &o.stderr)
                        .unwrap_or_default()
                )
            })
    };

    // 1. Written through the SCSI layout.
    let out = sh(
        "dd if=/dev/urandom of=/tmp/src bs=64k count=32 2>/dev/null && cp /tmp/src scsi && \
         sync && sha256sum /tmp/src",
    );
    let sum = out.split_whitespace().next().unwrap().to_string();
    let st = vm.mountstats(MNT).unwrap();
    eprintln!(
        "mountstats: {:?}",
        st.ops.iter().filter(|(_, n)| **n > 0).collect::<Vec<_>>()
    );
    let dmesg = vm.dmesg().unwrap();
    let using = dmesg
        .lines()
        .find(|l| l.contains("pNFS: using block device"))
        .unwrap_or_else(|| panic!("no pNFS device in dmesg:\n{dmesg}\n{}", tail(&daemon_log())));
    eprintln!("{using}");
    assert!(
        using.contains("sda (reservation key 0x"),
        "not the SCSI layout: {using}"
    );
    for op in ["LAYOUTGET", "GETDEVICEINFO", "LAYOUTCOMMIT"] {
        assert!(
            st.op(op) >= 1,
            "{op}: {st:?}\n{}\n--- VM:\n{}",
            tail(&daemon_log()),
            tail(&dmesg)
        );
    }
    assert_eq!(st.op("WRITE"), 0, "the data went through the MDS: {st:?}");
    assert_eq!(sha256(&m0.0.join("scsi")), sum, "through node 0");
    assert_eq!(sha256(&m1.0.join("scsi")), sum, "through node 1");
    let key = using
        .split("reservation key ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap()
        .to_string();
    // sg_persist (sg3-utils) in the VM asks the LUN itself.
    let keys = vm.sh_ok("sg_persist -n -k /dev/sda").unwrap();
    let resv = vm.sh_ok("sg_persist -n -r /dev/sda").unwrap();
    eprintln!("{keys}\n{resv}");
    assert!(keys.contains("0x100000000000000"), "server key: {keys}");
    assert!(keys.contains(&key), "client key {key}: {keys}");
    assert!(
        resv.contains("Key=0x100000000000000")
            && resv.contains("Exclusive Access, registrants only"),
        "{resv}"
    );

    let mut expect = std::fs::read(m0.0.join("scsi")).unwrap();
    // 2. The client is cut off while it holds a layout (a reader keeps the
    // file open after reading it through one).
    sh("echo 3 > /proc/sys/vm/drop_caches; rm -f /tmp/held; \
        (exec 3<scsi; dd bs=64k count=2 <&3 >/dev/null 2>&1; touch /tmp/held; sleep 300) \
        > /dev/null 2>&1 & echo $! > /tmp/holder; \
        while [ ! -e /tmp/held ]; do sleep 0.2; done");
    vm.set_link(false).unwrap();
    let t = Instant::now();
    {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(m1.0.join("scsi"))
            .unwrap();
        f.write_all_at(b"AFTER THE FENCE", 8192).unwrap();
        f.sync_all().unwrap();
    }
    let took = t.elapsed();
    eprintln!(
        "node 1's write with a cut-off client: {:.2} s",
        took.as_secs_f64()
    );
    let dl = daemon_log();
    assert!(
        dl.contains("client fenced at the LUN: PREEMPT AND ABORT"),
        "no PR fence:\n{}",
        tail(&dl)
    );
    assert!(took >= Duration::from_secs(LEASE / 2), "{took:?}");
    assert!(took < Duration::from_secs(4 * LEASE), "{took:?}");
    // What the client committed, with node 1's write over it.
    expect[8192..8207].copy_from_slice(b"AFTER THE FENCE");
    assert_eq!(std::fs::read(m0.0.join("scsi")).unwrap(), expect);
    assert_eq!(std::fs::read(m1.0.join("scsi")).unwrap(), expect);
    // The client's nexus is told first: UNIT ATTENTION, registrations
    // preempted (SPC), then its keys are gone.
    let ua = vm.sh("sg_persist -n -k /dev/sda").unwrap();
    let ua = ua.stdout + &ua.stderr;
    assert!(ua.contains("Registrations preempted"), "{ua}");
    let keys = vm.sh_ok("sg_persist -n -k /dev/sda").unwrap();
    eprintln!("after the fence: {keys}");
    assert!(!keys.contains(&key), "client key still registered: {keys}");
    assert!(keys.contains("0x100000000000000"), "{keys}");
    // The client's own write to the LUN (its last 4 KiB, past the file's
    // blocks) is refused by the target.
    let w = vm
        .sh("dd if=/dev/zero of=/dev/sda bs=4k count=1 oflag=direct \
             seek=$(( $(cat /sys/block/sda/size) / 8 - 1 )) 2>&1; echo rc=$?; \
             dmesg | grep -i -m3 -E 'reservation conflict|nexus'")
        .unwrap();
    let wout = w.stdout + &w.stderr;
    eprintln!("{wout}");
    assert!(!wout.contains("rc=0"), "the fenced client wrote: {wout}");
    // EBADE ("Invalid exchange"): the block layer's RESERVATION CONFLICT.
    assert!(
        wout.contains("Invalid exchange") || wout.to_lowercase().contains("reservation conflict"),
        "{wout}"
    );
    assert_eq!(sha256(&m0.0.join("scsi")), sha256(&m1.0.join("scsi")));
    vm.set_link(true).unwrap();
    let _ = vm.sh_timeout(
        &format!("kill $(cat /tmp/holder); umount {MNT} || umount -f {MNT} || umount -l {MNT}"),
        Duration::from_secs(60),
    );
    drop(guards);
    common::wait_daemon_gone(&m0.0);
    common::wait_daemon_gone(&m1.0);
    let mut child = child;
    let _ = child.wait();
    // The unmount gave the reservation up.
    let resv = vm.sh_ok("sg_persist -n -r /dev/sda").unwrap();
    assert!(resv.contains("NO reservation held"), "{resv}");
    drop(vm);
    common::fsck_clean(&img.0, "after the SCSI layout client and the fence");

    // 3. tshark decodes every reply.
    let out = Command::new(common::tool("tshark"))
        .arg("-r")
        .arg(&pcap)
        .args(["--disable-protocol", "tls"])
        .args(["-d", &format!("tcp.port=={port},rpc"), "-V", "-Y", "rpc"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for op in ["LAYOUTGET", "GETDEVINFO", "LAYOUTCOMMIT", "CB_LAYOUTRECALL"] {
        assert!(text.contains(&format!("Opcode: {op}")), "{op} not decoded");
    }
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Malformed") || l.contains("Expert Info (Error"))
        .collect();
    assert!(bad.is_empty(), "tshark: {:?}", &bad[..bad.len().min(20)]);
    let scsi = text.lines().filter(|l| l.contains("LAYOUT4_SCSI")).count();
    eprintln!("tshark: {scsi} lines naming LAYOUT4_SCSI");
    assert!(scsi > 0, "tshark saw no SCSI layout");
    eprintln!(
        "tshark: {} RPC replies decoded, none malformed",
        text.matches("Message Type: Reply (1)").count()
    );
    let _ = std::fs::remove_file(&pcap);
    let _ = std::fs::remove_file(&log);
}
