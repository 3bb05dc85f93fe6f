//! The qemu cluster harness against the real thing: two VMs running
//! corosync, dlm_controld and the kernel's DLM and GFS2 on one shared image.
//! One boot is shared by every check (a boot costs seconds under TCG):
//! the DLM's userspace device is there, both nodes mount, each sees the
//! other's fsync'd writes (coherence through the real DLM), both can be
//! driven at once, and after node 1 is killed right after fsyncs, node 2
//! replays its journal, keeps every fsync'd file and keeps working, and
//! gfs2-utils finds the image clean.

use anyhow::{bail, Context, Result};
use gfs2_oracle::cluster::{kernel_problems, Cluster, ClusterOpts};
use gfs2_oracle::{fsck_n, mkfs, tool, Scratch};
use std::time::{Duration, Instant};

/// (file name, sha256) lines printed by a node's `sha256sum`.
fn sums(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (s, p) = (w.next()?, w.next()?);
            Some((p.trim_start_matches("/mnt/").to_string(), s.to_string()))
        })
        .collect()
}

#[test]
fn two_vm_cluster_shares_gfs2_through_the_dlm_and_recovers_a_crashed_node() -> Result<()> {
    let t0 = Instant::now();
    let dir = Scratch::new("cluster-vm")?;
    let img = dir.join("shared.img");
    mkfs(
        &img,
        256,
        &["-p", "lock_dlm", "-t", "gfs2test:fs0", "-j", "2"],
    )?;
    // Extra files: a host binary with its libraries, and data.
    let opts = ClusterOpts::new(2, &img, "gfs2test")
        .binary(&tool("gfs2_edit")?)?
        .file("/etc/harness/hello", b"hello from the host\n");
    let c = Cluster::start(opts)?;
    eprintln!(
        "cluster up in {:.1} s: {:?}",
        c.boot_time().as_secs_f64(),
        c.boot_phases()
    );
    let (n1, n2) = (c.node(1), c.node(2));

    // What a lock module needs: the DLM's control device, dlm and fuse.
    for n in [n1, n2] {
        let out = n.sh_ok(
            "test -c /dev/misc/dlm-control && test -c /dev/fuse && \
             grep -o '^dlm ' /proc/modules && grep -o '^fuse ' /proc/modules && \
             corosync-quorumtool -s | grep -E '^(Quorate|Nodes):'",
        )?;
        assert!(out.contains("dlm") && out.contains("fuse"), "{out}");
        assert!(out.contains("Yes") && out.contains('2'), "{out}");
    }

    // The extra files are there and the binary runs (its libraries too).
    assert_eq!(n2.sh_ok("cat /etc/harness/hello")?, "hello from the host\n");
    let sb = n1.sh_ok("gfs2_edit -p sb /dev/vda")?;
    assert!(
        sb.contains("lock_dlm") && sb.contains("gfs2test:fs0"),
        "{sb}"
    );
    // A command over its time limit is killed in the VM: status 137.
    let t = Instant::now();
    let o = n2.sh_timeout("echo started; sleep 30", Duration::from_secs(1))?;
    assert_eq!((o.status, o.stdout.as_str()), (137, "started\n"));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // Both mount the kernel's gfs2 with lock_dlm: one lockspace, 2 members.
    n1.sh_ok("mount -t gfs2 /dev/vda /mnt")?;
    n2.sh_ok("mount -t gfs2 /dev/vda /mnt")?;
    let ls = n2.sh_ok("dlm_tool ls")?;
    assert!(ls.contains("fs0"), "{ls}");
    // Node 1's journal: the jid in its fsid ("fsid=gfs2test:fs0.J").
    let d1 = n1.sh_ok("dmesg")?;
    let jid1 = d1
        .lines()
        .find_map(|l| l.split("fsid=gfs2test:fs0.").nth(1))
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|j| j.parse::<u32>().ok())
        .context(format!("no fsid in node1's kernel log:\n{d1}"))?;

    // Cross-node coherence, both ways.
    n1.sh_ok("echo 'written on node1' > /mnt/a && sync /mnt/a")?;
    assert_eq!(n2.sh_ok("cat /mnt/a")?, "written on node1\n");
    n2.sh_ok("echo 'written on node2' > /mnt/b && sync /mnt/b")?;
    assert_eq!(n1.sh_ok("cat /mnt/b")?, "written on node2\n");
    n1.sh_ok("echo 'node1 again' >> /mnt/b && sync /mnt/b")?;
    assert_eq!(n2.sh_ok("cat /mnt/b")?, "written on node2\nnode1 again\n");

    // Two nodes driven at once from two threads: node 1 runs a workload in
    // the foreground and one in the background while node 2 answers.
    let (w1, seen2) = std::thread::scope(|s| {
        let w = s.spawn(|| {
            n1.sh_ok(
                "(mkdir /mnt/bg && for i in 1 2 3 4 5; do echo $i > /mnt/bg/$i; done; \
                  sync -f /mnt; touch /tmp/bg.done) > /tmp/bg.log 2>&1 &
                 mkdir /mnt/w && for i in $(seq 1 20); do echo $i > /mnt/w/$i; done && \
                 sync -f /mnt && ls /mnt/w | wc -l",
            )
        });
        let r = s.spawn(|| n2.sh_ok("cat /mnt/a /mnt/b && hostname"));
        // The same node answers another caller meanwhile.
        let q = s.spawn(|| n1.sh_ok("hostname"));
        let q = q
            .join()
            .map_err(|_| anyhow::anyhow!("node1 query thread panicked"));
        assert_eq!(q.and_then(|r| r).ok().as_deref(), Some("node1\n"));
        (w.join(), r.join())
    });
    let w1 = w1.map_err(|_| anyhow::anyhow!("node1 thread panicked"))??;
    let seen2 = seen2.map_err(|_| anyhow::anyhow!("node2 thread panicked"))??;
    assert_eq!(w1.trim(), "20");
    assert!(seen2.ends_with("node2\n"), "{seen2}");
    n1.sh_ok("cl_wait 60 'the background job' test -e /tmp/bg.done")?;
    assert_eq!(n2.sh_ok("cat /mnt/bg/5 && ls /mnt/w | wc -l")?, "5\n20\n");

    // Crash node 1 right after fsyncs; node 2 must replay its journal.
    let done_before = |d: &str| d.matches(&format!("jid={jid1}: Done")).count();
    let before = done_before(&n2.sh_ok("dmesg")?);
    let fsynced = n1.sh_ok(
        "mkdir /mnt/crash && for i in $(seq 1 30); do \
           head -c $((i * 1000)) /dev/urandom > /mnt/crash/f$i && sync /mnt/crash/f$i || exit 1; \
         done && sync /mnt/crash && sha256sum /mnt/crash/f*",
    )?;
    let want = sums(&fsynced);
    assert_eq!(want.len(), 30, "{fsynced}");
    let tk = Instant::now();
    c.kill(1)?;
    eprintln!(
        "node1 killed; the survivor noticed in {:.1} s",
        tk.elapsed().as_secs_f64()
    );
    n2.sh_ok_timeout(
        &format!(
            "recovered() {{ [ $(dmesg | grep -c 'jid={jid1}: Done') -gt {before} ]; }}
             cl_wait 90 'recovery of jid {jid1}' recovered"
        ),
        Duration::from_secs(100),
    )?;
    eprintln!(
        "journal {jid1} recovered {:.1} s after the kill",
        tk.elapsed().as_secs_f64()
    );
    let d2 = n2.sh_ok("dmesg")?;
    let recovery: Vec<&str> = d2
        .lines()
        .filter(|l| l.contains(&format!("jid={jid1}:")))
        .collect();
    eprintln!("node2's recovery of jid {jid1}:\n{}", recovery.join("\n"));
    let trouble = kernel_problems(&d2);
    if !trouble.is_empty() {
        bail!("node2's kernel log has trouble: {trouble:#?}\n{d2}");
    }
    // Every fsync'd file of node 1, with its content.
    let got = sums(&n2.sh_ok("ls /mnt/crash | wc -l >&2; sha256sum /mnt/crash/f*")?);
    assert_eq!(got, want, "node1's fsync'd files as node2 sees them");
    let listing = n2.sh_ok("ls -la /mnt /mnt/crash")?;
    eprintln!("node2 after recovery:\n{listing}");
    // Node 2 still works, alone.
    n2.sh_ok("echo after > /mnt/after && sync /mnt/after && cat /mnt/a /mnt/after")?;
    n2.sh_ok("umount /mnt")?;
    drop(c);

    let f = fsck_n(&img)?;
    assert_eq!(f.code, 0, "fsck.gfs2 -n after the recovery:\n{}", f.output);
    eprintln!("total {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
