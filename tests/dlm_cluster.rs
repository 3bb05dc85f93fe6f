//! `lock_dlm` against the real Linux DLM: qemu VMs running corosync,
//! dlm_controld and the kernel's DLM (the harness of
//! `gfs2_oracle::cluster`), one shared virtio disk made by gfs2-utils'
//! mkfs.gfs2 with `-p lock_dlm`. One boot serves every check, in order:
//!
//! 1. Our daemon on both nodes: writes on one node are seen by the other
//!    right after they return, in both directions (files, appends to one
//!    shared file, directories, renames, xattrs; then random operations on
//!    a few shared files, each checked on the other node against a model),
//!    then both nodes append to one file at once; both nodes list the same tree; both unmount
//!    cleanly and gfs2-utils' `fsck.gfs2 -n` finds the image clean.
//! 2. A mixed cluster: the kernel's gfs2 on node 1 and our daemon on node
//!    2, same disk, same lockspace: the same checks both ways, the kernel
//!    lists what we wrote and the other way round.
//! 3. Then our daemon is killed with its node up: the kernel node waits for
//!    what it wrote until a restarted daemon has replayed its journal;
//!    every fsync'd file intact, fsck clean.
//!
//! Two more boots of 2 VMs check recovery both ways (two-node quorum
//! survives one death, three nodes would not survive two): the VM running
//! our node dies right after fsyncs and the kernel node replays its
//! journal; then, in the other boot, the kernel node's VM dies and our node
//! replays the kernel's journal. Every fsync'd file is intact and the
//! survivor keeps working; fsck is clean at the end.
//!
//! The two tests take turns (one cluster at a time on a small machine).

mod common;

use anyhow::{bail, Context, Result};
use common::Rng;
use gfs2_oracle::cluster::{Cluster, ClusterOpts, Node};
use gfs2_oracle::{fsck_clean, mkfs, Scratch};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const CLUSTER: &str = "gfs2test";
const FSNAME: &str = "dlmfs";
const LONG: Duration = Duration::from_secs(180);

/// One cluster at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Mount our daemon on /mnt of `n` (in the foreground, in the background
/// of the VM's shell, its log in /tmp/fuse.log) and wait for the mount.
fn mount_fuse(n: &Node) -> Result<()> {
    n.sh_ok_timeout(
        "mkdir -p /mnt; NO_COLOR=1 RUST_LOG=debug,gfs2_lockproto=trace,fuser=info gfs2-fuse mount -f /dev/vda /mnt \
         >/tmp/fuse.log 2>&1 &
         pid=$!
         i=0
         while ! grep -q ' /mnt ' /proc/mounts; do
             grep -q '^State:.*Z' /proc/$pid/status 2>/dev/null && { echo 'daemon exited:'; cat /tmp/fuse.log; exit 1; }
             i=$((i+1)); [ $i -lt 600 ] || { echo 'mount timed out:'; cat /tmp/fuse.log; exit 1; }
             sleep 0.1
         done
         echo $pid > /tmp/fuse.pid",
        LONG,
    )
    .with_context(|| format!("mounting gfs2-fuse on node {}", n.id()))?;
    Ok(())
}

/// Unmount our daemon on `n` (a fuseblk umount returns once the journal is
/// clean) and wait for it to exit; its log tail on failure.
fn umount_fuse(n: &Node) -> Result<()> {
    n.sh_ok_timeout(
        "umount /mnt || { tail -50 /tmp/fuse.log; exit 1; }
         pid=$(cat /tmp/fuse.pid)
         i=0
         # Gone, or a zombie (its parent, the VM's command shell, has exited).
         while [ -d /proc/$pid ] && ! grep -q '^State:.*Z' /proc/$pid/status; do
             i=$((i+1)); [ $i -lt 300 ] || { echo 'daemon did not exit'; grep -v 'dlm completion\\|dlm unlock' /tmp/fuse.log | tail -30; \
                 for t in /proc/$pid/task/*; do echo \"thread $(cat $t/comm) $(cat $t/wchan) $(cut -d' ' -f3 $t/stat)\"; cat $t/stack 2>/dev/null | head -8; done; exit 1; }
             sleep 0.1
         done
         grep -i 'error' /tmp/fuse.log | tail -5; true",
        LONG,
    )
    .with_context(|| format!("unmounting gfs2-fuse on node {}", n.id()))?;
    Ok(())
}

/// Run `cmd` on `node` until it succeeds and return its output; after
/// [`LONG`], fail naming `what`, with the node's recent kernel log.
fn wait_for(node: &Node, cmd: &str, what: &str) -> Result<String> {
    let until = Instant::now() + LONG;
    loop {
        let out = node.sh(cmd)?;
        if out.success() {
            return Ok(out.stdout);
        }
        if Instant::now() > until {
            bail!(
                "node {}: no {what} after {LONG:?}:\n{}",
                node.id(),
                node.sh("dmesg | tail -30")?.stdout
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `e` with what every live node of `c` logged (our daemon, the DLM and
/// gfs2 in the kernel) and the consoles.
fn with_logs(c: &Cluster, e: anyhow::Error) -> anyhow::Error {
    let logs: String = c
        .nodes()
        .iter()
        .filter(|n| n.alive())
        .map(|n| {
            let log = n
                .sh("grep -v 'dlm completion\\|dlm unlock\\|dlm request' /tmp/fuse.log | tail -40; \
                     dmesg | grep -E 'dlm|gfs2' | tail -30")
                .map(|o| o.stdout)
                .unwrap_or_default();
            format!("--- node {} ---\n{log}\n", n.id())
        })
        .collect();
    e.context(format!("{logs}\n{}", c.diagnostics()))
}

/// Alternating writes and cross-node checks, `rounds` of them, names
/// prefixed with `p`: the writer's operation returns, then the other node
/// must see it.
fn ping_pong(a: &Node, b: &Node, p: &str, rounds: usize) -> Result<()> {
    for i in 0..rounds {
        let (w, r) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let mut script = format!(
            "cd /mnt && echo {p}round{i}-node{id} > {p}f{i} && echo {p}line{i} >> {p}shared && \
             mkdir {p}d{i} && setfattr -n user.round -v v{i} {p}f{i}",
            id = w.id()
        );
        if i > 0 {
            // Move the previous round's file (written by the other node)
            // into this round's directory.
            script.push_str(&format!(" && mv {p}f{} {p}d{i}/moved", i - 1));
        }
        w.sh_ok(&script)
            .with_context(|| format!("round {i} on node {}", w.id()))?;
        let out = r
            .sh_ok(&format!(
                "cd /mnt && cat {p}f{i} && wc -l < {p}shared && tail -n 1 {p}shared && \
                 getfattr --only-values -n user.round {p}f{i} && echo && ls {p}d{i}"
            ))
            .with_context(|| format!("round {i} seen from node {}", r.id()))?;
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        let want_moved = if i > 0 { "moved" } else { "" };
        let ok = lines.first() == Some(&format!("{p}round{i}-node{}", w.id()).as_str())
            && lines.get(1) == Some(&(i + 1).to_string().as_str())
            && lines.get(2) == Some(&format!("{p}line{i}").as_str())
            && lines.get(3) == Some(&format!("v{i}").as_str())
            && lines.get(4).copied().unwrap_or("") == want_moved;
        if !ok {
            bail!(
                "round {i}: node {} wrote, node {} saw:\n{out}",
                w.id(),
                r.id()
            );
        }
    }
    Ok(())
}

/// Random operations on a few shared files, each issued on a random node
/// and checked on the other one right after it returned, against a model
/// kept here: contents (written, appended), renames over other names,
/// unlinks, xattrs. `ops` operations in directory /mnt/`dir`.
fn model_check(nodes: [&Node; 2], dir: &str, ops: usize, seed: u64) -> Result<()> {
    // name -> (content, xattr)
    let mut model: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    let mut rng = Rng(seed);
    nodes[0].sh_ok(&format!("mkdir /mnt/{dir}"))?;
    let mut log = Vec::new();
    for i in 0..ops {
        let w = rng.below(2) as usize;
        let (on, other) = (nodes[w], nodes[1 - w]);
        let f = format!("f{}", rng.below(4));
        let g = format!("f{}", rng.below(4));
        let val = format!("v{i}n{}", on.id());
        let exists = model.contains_key(&f);
        // Renames, unlinks and xattrs need the file; appends do not.
        let kind = match rng.below(5) {
            2 if !exists || f == g => 1,
            3 | 4 if !exists => 1,
            k => k,
        };
        let cmd = match kind {
            0 => {
                let x = model.get(&f).and_then(|e| e.1.clone());
                model.insert(f.clone(), (format!("{val}\n"), x));
                format!("echo {val} > {f}")
            }
            2 => {
                let e = model.remove(&f).unwrap_or_default();
                model.insert(g.clone(), e);
                format!("mv {f} {g}")
            }
            3 => {
                model.remove(&f);
                format!("rm {f}")
            }
            4 => {
                if let Some(e) = model.get_mut(&f) {
                    e.1 = Some(val.clone());
                }
                format!("setfattr -n user.v -v {val} {f}")
            }
            _ => {
                let e = model.entry(f.clone()).or_insert((String::new(), None));
                e.0.push_str(&format!("{val}\n"));
                format!("echo {val} >> {f}")
            }
        };
        log.push(format!("{i}: node {}: {cmd}", on.id()));
        on.sh_ok(&format!("cd /mnt/{dir} && {cmd}"))
            .with_context(|| format!("op {i} on node {}: {cmd}", on.id()))?;
        let seen = other.sh_ok(&format!(
            "cd /mnt/{dir} && for f in f0 f1 f2 f3; do [ -e $f ] || continue; \
             echo \"$f $(tr '\\n' '|' < $f) x=$(getfattr --only-values -n user.v $f 2>/dev/null)\"; done"
        ))?;
        let want: String = model
            .iter()
            .map(|(n, (c, x))| {
                format!(
                    "{n} {} x={}\n",
                    c.replace('\n', "|"),
                    x.clone().unwrap_or_default()
                )
            })
            .collect();
        if seen != want {
            bail!(
                "after op {i} ({cmd} on node {}), node {} sees:\n{seen}wanted:\n{want}last ops:\n{}",
                on.id(),
                other.id(),
                log[log.len().saturating_sub(10)..].join("\n")
            );
        }
    }
    Ok(())
}

/// Both nodes append `n` lines to one file at once; each sees all 2n.
fn concurrent_appends(a: &Node, b: &Node, file: &str, n: usize) -> Result<()> {
    let script = |id: usize| {
        format!(
            "( i=0; while [ $i -lt {n} ]; do echo node{id}-$i >> /mnt/{file} || exit 1; \
             i=$((i+1)); done; echo done > /tmp/appends.done ) >/tmp/appends.log 2>&1 &"
        )
    };
    a.sh_ok("rm -f /tmp/appends.done")?;
    b.sh_ok("rm -f /tmp/appends.done")?;
    a.sh_ok(&script(a.id()))?;
    b.sh_ok(&script(b.id()))?;
    for node in [a, b] {
        wait_for(node, "test -f /tmp/appends.done", "end of the appends").with_context(|| {
            node.sh("cat /tmp/appends.log")
                .map(|o| o.stdout)
                .unwrap_or_default()
        })?;
    }
    for node in [a, b] {
        let out = node.sh_ok(&format!(
            "grep -c '^node{}-' /mnt/{file}; grep -c '^node{}-' /mnt/{file}; wc -l < /mnt/{file}",
            a.id(),
            b.id()
        ))?;
        let counts: Vec<&str> = out.split_whitespace().collect();
        let want = [n.to_string(), n.to_string(), (2 * n).to_string()];
        if counts != want {
            bail!(
                "node {} sees {counts:?} lines of node {} / node {} / total, not {want:?}",
                node.id(),
                a.id(),
                b.id()
            );
        }
    }
    Ok(())
}

/// A node's view of the tree: every path with its type, size and checksum.
fn manifest(n: &Node) -> Result<String> {
    n.sh_ok_timeout(
        "cd /mnt && find . | sort | while read -r p; do \
           if [ -f \"$p\" ]; then echo \"$p f $(wc -c < \"$p\") $(sha256sum < \"$p\" | cut -c1-16)\"; \
           else echo \"$p d\"; fi; done",
        LONG,
    )
}

fn same_tree(a: &Node, b: &Node) -> Result<()> {
    let (ma, mb) = (manifest(a)?, manifest(b)?);
    if ma != mb {
        bail!(
            "node {} and node {} list different trees:\n--- {}\n{ma}\n--- {}\n{mb}",
            a.id(),
            b.id(),
            a.id(),
            b.id()
        );
    }
    if ma.lines().count() < 10 {
        bail!("suspiciously small tree:\n{ma}");
    }
    Ok(())
}

fn fsck_image(img: &Path) -> Result<()> {
    fsck_clean(img).context("fsck.gfs2 -n after both nodes unmounted")
}

#[test]
fn lock_dlm_nodes_share_a_disk_with_each_other_and_with_the_kernel() -> Result<()> {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let dir = Scratch::new("dlm-cluster")?;
    let img = dir.join("shared.img");
    let table = format!("{CLUSTER}:{FSNAME}");
    mkfs(&img, 256, &["-p", "lock_dlm", "-t", &table, "-j", "2"])?;
    let bin = Path::new(env!("CARGO_BIN_EXE_gfs2-fuse"));
    let c = Cluster::start(ClusterOpts::new(2, &img, CLUSTER).binary(bin)?)?;
    eprintln!("cluster up in {:.1} s", c.boot_time().as_secs_f64());
    let (n1, n2) = (c.node(1), c.node(2));
    let diag = |e| with_logs(&c, e);

    // 1. Two FUSE nodes. First, a lock table naming another cluster is
    // refused with the reason (the kernel checks the same).
    let t = Instant::now();
    (|| -> Result<()> {
        let wrong =
            n1.sh("mkdir -p /mnt; gfs2-fuse mount -o locktable=othercluster:dlmfs /dev/vda /mnt")?;
        if wrong.success()
            || !wrong
                .stderr
                .contains("this node is in cluster \"gfs2test\"")
        {
            bail!("mount with another cluster's name: {wrong:?}");
        }
        // A mount that fails after joining (here: a journal id the DLM slot
        // contradicts) leaves the lockspace, rather than leave its
        // persistent locks (the mount lock among them) to block the others.
        let preset = n1.sh("gfs2-fuse mount -o hostdata=jid=1 /dev/vda /mnt; dlm_tool ls")?;
        if !preset.stderr.contains("jid= cannot be chosen") {
            bail!("mount with jid=1 on the node of slot 1: {preset:?}");
        }
        if preset.stdout.contains(FSNAME) {
            bail!(
                "the failed mount left its lockspace behind:\n{}",
                preset.stdout
            );
        }
        mount_fuse(n1)?;
        mount_fuse(n2)?;
        let jids = [n1, n2]
            .iter()
            .map(|n| n.sh_ok("grep -o 'joined the DLM lockspace.*' /tmp/fuse.log | head -1"))
            .collect::<Result<Vec<_>>>()?;
        eprintln!("fuse nodes joined: {jids:?}");
        ping_pong(n1, n2, "a", 12)?;
        model_check([n1, n2], "model-a", 40, 0x5eed_0001)?;
        concurrent_appends(n1, n2, "both", 50)?;
        same_tree(n1, n2)?;
        umount_fuse(n1)?;
        umount_fuse(n2)?;
        Ok(())
    })()
    .map_err(diag)?;
    fsck_image(&img)?;
    eprintln!("two FUSE nodes: {:.1} s", t.elapsed().as_secs_f64());

    // 2. The kernel on node 1, our daemon on node 2.
    let t = Instant::now();
    (|| -> Result<()> {
        n1.sh_ok_timeout("mount -t gfs2 /dev/vda /mnt", LONG)?;
        mount_fuse(n2)?;
        ping_pong(n1, n2, "k", 12)?;
        model_check([n1, n2], "model-k", 40, 0x5eed_0002)?;
        concurrent_appends(n1, n2, "mixed", 50)?;
        same_tree(n1, n2)?;
        // 3. Our daemon is killed (kill -9) while its node stays up, right
        // after fsyncs. Its locks stay (orphans): the kernel node's read of
        // what it wrote waits, rather than read stale blocks. A restarted
        // daemon replays its journal, lets the locks go and joins again;
        // the kernel's read then completes, every fsync'd file is intact.
        let sums = fsynced_files(n2, "killed", 8)?;
        n2.sh_ok("kill -9 $(cat /tmp/fuse.pid); sleep 1; umount -l /mnt")?;
        n1.sh_ok(
            "rm -f /tmp/blocked.*; (sha256sum /mnt/killed/f0 > /tmp/blocked.out 2>&1; \
             echo $? > /tmp/blocked.rc) >/dev/null 2>&1 &",
        )?;
        std::thread::sleep(Duration::from_secs(3));
        if n1.sh("test -f /tmp/blocked.rc")?.success() {
            bail!(
                "the kernel node read a dead daemon's file before its journal was replayed: {}",
                n1.sh("cat /tmp/blocked.out")?.stdout
            );
        }
        mount_fuse(n2)?;
        let log = n2.sh_ok("grep -E 'died|replayed|released' /tmp/fuse.log")?;
        eprintln!("restarted daemon:\n{log}");
        if !log.contains("journal of the dead daemon replayed") {
            bail!("the restarted daemon did not replay its journal:\n{log}");
        }
        n1.sh_ok_timeout(
            "i=0; while [ ! -f /tmp/blocked.rc ]; do i=$((i+1)); [ $i -lt 600 ] || exit 1; sleep 0.1; done; \
             cat /tmp/blocked.rc /tmp/blocked.out",
            LONG,
        )?;
        for n in [n1, n2] {
            let seen = n.sh_ok("cd /mnt/killed && sha256sum f* | sort")?;
            if seen != sums {
                bail!("node {} after the daemon's restart:\n{seen}\nwanted:\n{sums}", n.id());
            }
        }
        same_tree(n1, n2)?;
        umount_fuse(n2)?;
        n1.sh_ok_timeout("umount /mnt", LONG)?;
        Ok(())
    })()
    .map_err(diag)?;
    fsck_image(&img)?;
    eprintln!(
        "kernel + FUSE node: {:.1} s; whole test {:.1} s",
        t.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Write `n` files of random data under /mnt/`dir` on `node`, each fsync'd
/// (`dd conv=fsync`) before the next; their checksums.
fn fsynced_files(node: &Node, dir: &str, n: usize) -> Result<String> {
    node.sh_ok_timeout(
        &format!(
            "mkdir -p /mnt/{dir} && i=0; while [ $i -lt {n} ]; do \
             dd if=/dev/urandom of=/mnt/{dir}/f$i bs=4096 count=$((i % 7 + 1)) conv=fsync 2>/dev/null \
             || exit 1; i=$((i+1)); done; cd /mnt/{dir} && sha256sum f* | sort"
        ),
        LONG,
    )
}

/// One recovery, on a fresh 2-VM cluster (two-node quorum survives a
/// death): the kernel's gfs2 on node 1, our daemon on node 2, both write in
/// one directory, then the node that is to die writes fsync'd files and
/// its VM is killed. The survivor must replay the dead node's journal, see
/// every fsync'd file intact and keep working; fsck is clean after.
fn recovery_round(kernel_dies: bool) -> Result<()> {
    let t0 = Instant::now();
    let dir = Scratch::new("dlm-recovery")?;
    let img = dir.join("shared.img");
    let table = format!("{CLUSTER}:{FSNAME}");
    mkfs(&img, 256, &["-p", "lock_dlm", "-t", &table, "-j", "2"])?;
    let bin = Path::new(env!("CARGO_BIN_EXE_gfs2-fuse"));
    let c = Cluster::start(ClusterOpts::new(2, &img, CLUSTER).binary(bin)?)?;
    let (kernel, fuse) = (c.node(1), c.node(2));
    let (dying, survivor) = if kernel_dies {
        (kernel, fuse)
    } else {
        (fuse, kernel)
    };
    let diag = |e| with_logs(&c, e);
    let sums = (|| -> Result<String> {
        kernel.sh_ok_timeout("mount -t gfs2 /dev/vda /mnt", LONG)?;
        mount_fuse(fuse)?;
        kernel.sh_ok("mkdir /mnt/shared && echo from-kernel > /mnt/shared/k")?;
        fuse.sh_ok("echo from-fuse > /mnt/shared/f && cat /mnt/shared/k")?;
        fsynced_files(dying, "dying", 12)
    })()
    .map_err(diag)?;
    let t = Instant::now();
    c.kill(dying.id())?;
    (|| -> Result<()> {
        if kernel_dies {
            let log = wait_for(
                fuse,
                "grep -q 'recovery done: lock requests go on' /tmp/fuse.log && cat /tmp/fuse.log",
                "end of our recovery of the kernel's journal",
            )?;
            // It was asked to, and did, replay the dead node's journal (not
            // merely found nothing to do).
            let asked = log.lines().find(|l| l.contains("journals to recover"));
            let replayed = log.lines().find(|l| l.contains("dead node's journal recovered"));
            match (asked, replayed) {
                (Some(a), Some(r)) => eprintln!("ours: {}\nours: {}", a.trim(), r.trim()),
                _ => bail!("our node did not replay the kernel's journal:\n{log}"),
            }
        } else {
            let rec = wait_for(kernel, "dmesg | grep -E 'jid=1: Done'", "recovery of jid 1")?;
            eprintln!("kernel: {}", rec.trim());
        }
        let seen = survivor.sh_ok("cd /mnt/dying && sha256sum f* | sort")?;
        if seen != sums {
            bail!("after the replay of the dead node's journal:\n{seen}\nwanted:\n{sums}");
        }
        survivor.sh_ok(
            "echo still-working > /mnt/shared/last && cat /mnt/shared/k /mnt/shared/f /mnt/shared/last",
        )?;
        if kernel_dies {
            umount_fuse(fuse)?;
        } else {
            kernel.sh_ok_timeout("umount /mnt", LONG)?;
        }
        Ok(())
    })()
    .map_err(diag)?;
    eprintln!(
        "{} died; the survivor replayed its journal and went on in {:.1} s (round {:.1} s)",
        if kernel_dies {
            "the kernel node"
        } else {
            "our node"
        },
        t.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    drop(c);
    fsck_image(&img)
}

#[test]
fn kernel_and_fuse_nodes_replay_each_others_journals() -> Result<()> {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    recovery_round(false)?;
    recovery_round(true)
}

/// Without a cluster (this host runs no DLM) a lock_dlm filesystem is
/// refused with the reason, nothing is written, and lock_nolock still
/// mounts it.
#[test]
fn lock_dlm_without_a_cluster_is_refused_clearly() -> Result<()> {
    let dir = Scratch::new("dlm-none")?;
    let img = dir.join("img");
    mkfs(
        &img,
        64,
        &["-p", "lock_dlm", "-t", "gfs2test:solo", "-j", "1"],
    )?;
    let before = std::fs::read(&img)?;
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gfs2-fuse"))
        .arg("mount")
        .arg(&img)
        .arg(&mnt)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !err.contains("no DLM cluster configured") {
        bail!("lock_dlm mount without a cluster: {:?} {err}", out.status);
    }
    if std::fs::read(&img)? != before {
        bail!("the refused mount wrote to the image");
    }
    fsck_clean(&img)
}
