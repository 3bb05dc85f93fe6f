//! Our offline gfs2_grow and gfs2_jadd against gfs2-utils' own tools run
//! where they can run (on a kernel mount, in a VM) and against the kernel's
//! GFS2 itself, in one VM boot:
//! - the same images, grown or given journals by ours on the host and by
//!   gfs2-utils' `gfs2_grow`/`gfs2_jadd` on a kernel mount in the VM, give
//!   the same `gfs2_grow -T` report (sizes and growth), the same
//!   `gfs2_edit -p rindex` entries and new resource group headers, the
//!   same jindex and per_node names, and the same sizes, flags and modes
//!   of every new system file;
//! - the kernel mounts our grown images and writes more than the old
//!   filesystem could hold, and mounts our jadd'ed image on each new
//!   journal (`hostdata=jid=N`) and writes;
//! - our tools given a kernel mount point hand over to gfs2-utils' (the
//!   kernel's metafs is theirs);
//! - an image grown and given a journal *online* (our tools on the host,
//!   through a gfs2-fuse mount of it, with a file written before) is
//!   mounted by the kernel, which reads that file back, writes more than
//!   the old filesystem could hold, and mounts it on the new journal and
//!   writes;
//! - afterwards `fsck.gfs2 -n` finds every image clean.

mod common;

use gfs2_oracle::{edit_field, fsck_n, mkfs, sh, tool, Scratch, Vm};
use std::path::Path;
use std::process::Command;

const GROW: &str = env!("CARGO_BIN_EXE_gfs2_grow");
const JADD: &str = env!("CARGO_BIN_EXE_gfs2_jadd");

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn extend(img: &Path, mb: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(img)
        .expect("open")
        .set_len(mb << 20)
        .expect("extend");
}

fn ours(bin: &str, args: &[&str]) {
    let o = Command::new(bin).args(args).output().expect("run tool");
    assert!(
        o.status.success(),
        "{bin} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn edit(img: &Path, what: &str) -> String {
    let o = Command::new("gfs2_edit")
        .args(["-p", what])
        .arg(img)
        .output()
        .expect("gfs2_edit");
    assert!(o.status.success(), "gfs2_edit -p {what} {}", img.display());
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The rindex entries (from the first "RG #" line on).
fn rindex(img: &Path) -> String {
    let out = edit(img, "rindex");
    let start = out.find("RG #").expect("rindex entries");
    out[start..].to_string()
}

/// `(name, block)` of every entry of a directory listing.
fn entries(listing: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = listing
        .lines()
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            (t.len() >= 7 && t[1].starts_with('['))
                .then(|| {
                    Some((
                        t[t.len() - 1].to_string(),
                        t[2].split('/').nth(1)?.to_string(),
                    ))
                })
                .flatten()
        })
        .filter(|(n, _)| n != "." && n != "..")
        .collect();
    v.sort();
    v
}

/// For the jindex and per_node directories: every entry's name with its
/// dinode's size, flags and mode, as gfs2-utils prints them.
fn system_files(img: &Path) -> Vec<String> {
    let master = entries(&edit(img, "master"));
    let mut out = Vec::new();
    for dir in ["jindex", "per_node"] {
        let (_, blk) = master
            .iter()
            .find(|(n, _)| n == dir)
            .unwrap_or_else(|| panic!("no {dir}"));
        for (name, b) in entries(&edit(img, blk)) {
            let f = |field: &str| edit_field(img, &b, field).expect("field");
            out.push(format!(
                "{dir}/{name} size {} flags {} mode {}",
                f("di_size"),
                f("di_flags"),
                f("di_mode")
            ));
        }
    }
    out
}

/// The `ri_addr` of every resource group, in rindex order.
fn rgrp_addrs(img: &Path) -> Vec<String> {
    edit(img, "rindex")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ri_addr"))
        .filter_map(|v| v.split_whitespace().next().map(str::to_string))
        .collect()
}

fn assert_clean(img: &Path) {
    let f = fsck_n(img).expect("fsck.gfs2 -n");
    assert_eq!(f.code, 0, "{}: fsck.gfs2 -n:\n{}", img.display(), f.output);
}

#[test]
fn kernel_and_gfs2_utils_agree() {
    let t = Scratch::new("grow-vm").expect("scratch");
    // Grow pairs: (block size, old MB, new MB).
    let grows = [(4096u32, 100u64, 300u64), (1024, 64, 200)];
    let mut disks = Vec::new();
    let mut test_reports = Vec::new();
    let mut kept_images = Vec::new();
    let mut orig_counts = Vec::new();
    for (bs, from, to) in grows {
        let theirs = t.join(&format!("grow-{bs}-theirs.img"));
        let our = t.join(&format!("grow-{bs}-ours.img"));
        mkfs(
            &theirs,
            from,
            &["-p", "lock_nolock", "-j", "1", "-b", &bs.to_string()],
        )
        .expect("mkfs");
        extend(&theirs, to);
        std::fs::copy(&theirs, &our).expect("copy");
        orig_counts.push(rgrp_addrs(&theirs).len());
        // Our test run's report, on the image gfs2-utils will grow.
        let t_out = Command::new(GROW)
            .args(["-T", s(&theirs)])
            .output()
            .expect("gfs2_grow -T");
        test_reports.push(String::from_utf8_lossy(&t_out.stdout).into_owned());
        ours(GROW, &[s(&our)]);
        // Kept as our grow left it: the kernel fills `our` in the VM.
        let kept = t.join(&format!("grow-{bs}-ours-kept.img"));
        std::fs::copy(&our, &kept).expect("copy");
        kept_images.push(kept);
        disks.push(our);
        disks.push(theirs);
    }
    // Jadd pair: two 32 MB journals, 2 MB quota change files.
    let jtheirs = t.join("jadd-theirs.img");
    let jours = t.join("jadd-ours.img");
    mkfs(&jtheirs, 300, &["-p", "lock_nolock", "-j", "1"]).expect("mkfs");
    std::fs::copy(&jtheirs, &jours).expect("copy");
    ours(JADD, &["-j", "2", "-J", "32", "-c", "2", s(&jours)]);
    disks.push(jours.clone());
    disks.push(jtheirs.clone());
    // vdg: our tools on a kernel mount hand over to gfs2-utils'.
    let kmount = t.join("kernel-mount.img");
    std::fs::copy(&jtheirs, &kmount).expect("copy");
    disks.push(kmount.clone());

    // vdh: grown from 100 to 300 MB and given journal 1 online, with a
    // file written through the mount first.
    let online = t.join("online.img");
    let online_sum = grow_online(&t, &online);
    disks.push(online.clone());

    // vda/vdb: 4k ours/theirs, vdc/vdd: 1k ours/theirs, vde/vdf: jadd.
    let mut script = String::new();
    for (i, (_, from, _)) in grows.iter().enumerate() {
        let theirs = sh::dev(2 * i + 1);
        let our = sh::dev(2 * i);
        script.push_str(&format!(
            "mnt {theirs} && {{ echo BEGIN-T{i}; /usr/sbin/gfs2_grow -T /mnt; echo END-T{i}; /usr/sbin/gfs2_grow /mnt; echo \"GFS2-GROW-RC $?\"; umnt; }}\n"
        ));
        // More than the old filesystem could hold (its data blocks are
        // fewer than `from` MB).
        let mb = from + 16;
        script.push_str(&sh::workload(
            &our,
            &format!("fill{i}"),
            &format!(
                "dd if=/dev/zero of=big bs=1M count={mb} 2>&1 | tail -1\nls -l big\ndf -k /mnt"
            ),
        ));
    }
    script.push_str(&format!(
        "mnt {} && {{ /usr/sbin/gfs2_jadd -j 2 -J 32 -c 2 /mnt; echo \"GFS2-JADD-RC $?\"; umnt; }}\n",
        sh::dev(5)
    ));
    script.push_str(&format!(
        "mnt {} && {{ echo BEGIN-DELEGATED; /ours/gfs2_jadd -j 1 -J 32 /mnt; echo \"OURS-JADD-RC $?\"; /ours/gfs2_grow -T /mnt; echo \"OURS-GROW-RC $?\"; echo END-DELEGATED; umnt; }}\n",
        sh::dev(6)
    ));
    for jid in [1, 2] {
        script.push_str(&sh::workload_with(
            &sh::dev(4),
            &format!("jid{jid}"),
            &format!("dd if=/dev/urandom of=on-jid{jid} bs=1k count=300 2>/dev/null\ngrep -q 'jid={jid}' /proc/mounts || dmesg | grep -i 'jid={jid}' | tail -2"),
            &format!("hostdata=jid={jid}"),
        ));
    }
    // The online-grown image: the file written before the change, then
    // more than the old 100 MB; then on the new journal.
    let check = format!("echo '{online_sum}  before' | sha256sum -c -");
    script.push_str(&sh::workload(
        &sh::dev(7),
        "online-fill",
        &format!(
            "{check}\ndd if=/dev/zero of=big bs=1M count=116 2>&1 | tail -1\nls -l big\ndf -k /mnt"
        ),
    ));
    script.push_str(&sh::workload_with(
        &sh::dev(7),
        "online-jid1",
        &format!("{check}\ndd if=/dev/urandom of=on-jid1 bs=1k count=300 2>/dev/null\ngrep -q 'jid=1' /proc/mounts || dmesg | grep -i 'jid=1' | tail -2"),
        "hostdata=jid=1",
    ));
    script.push_str("dmesg | grep -i 'gfs2' | grep -i 'jid\\|journal\\|extended' | tail -20\n");

    let read = |p: &str| std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    let blkid = [
        "/lib/x86_64-linux-gnu/libblkid.so.1",
        "/usr/lib/x86_64-linux-gnu/libblkid.so.1",
    ]
    .iter()
    .find(|p| Path::new(p).exists())
    .expect("libblkid.so.1 (gfs2-utils' gfs2_grow needs it)");
    let libgcc = [
        "/lib/x86_64-linux-gnu/libgcc_s.so.1",
        "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
    ]
    .iter()
    .find(|p| Path::new(p).exists())
    .expect("libgcc_s.so.1 (our binaries need it)");
    let vm = Vm::new(&script)
        .file(
            "usr/sbin/gfs2_grow",
            &read(s(&tool("gfs2_grow").expect("gfs2_grow"))),
        )
        .file(
            "usr/sbin/gfs2_jadd",
            &read(s(&tool("gfs2_jadd").expect("gfs2_jadd"))),
        )
        .file("lib/x86_64-linux-gnu/libblkid.so.1", &read(blkid))
        .file("ours/gfs2_jadd", &read(JADD))
        .file("ours/gfs2_grow", &read(GROW))
        .file("lib/x86_64-linux-gnu/libgcc_s.so.1", &read(libgcc))
        .timeout(std::time::Duration::from_secs(240));
    let refs: Vec<&Path> = disks.iter().map(|d| d.as_path()).collect();
    let r = vm.boot(&refs).expect("boot");
    r.check().expect("VM scenario");
    let c = &r.console;
    assert_eq!(
        c.matches("GFS2-GROW-RC 0").count(),
        2,
        "gfs2-utils' gfs2_grow:\n{c}"
    );
    assert!(c.contains("GFS2-JADD-RC 0"), "gfs2-utils' gfs2_jadd:\n{c}");
    for tag in [
        "fill0",
        "fill1",
        "jid1",
        "jid2",
        "online-fill",
        "online-jid1",
    ] {
        assert_eq!(r.workload_status(tag), Some(0), "workload {tag}:\n{c}");
    }
    for (i, _) in grows.iter().enumerate() {
        // The same report but for the mount point and device names.
        let keep = |l: &&str| !l.starts_with("Mount point:") && !l.starts_with("Device:");
        let theirs_t: Vec<String> = r
            .raw_section(&format!("T{i}"))
            .iter()
            .map(|l| l.trim_end().to_string())
            .filter(|l| !l.starts_with('['))
            .collect();
        let theirs_t: Vec<&str> = theirs_t.iter().map(String::as_str).filter(keep).collect();
        let ours_t: Vec<&str> = test_reports[i].lines().filter(keep).collect();
        assert_eq!(ours_t, theirs_t, "gfs2_grow -T report");
        let (our, theirs) = (&disks[2 * i], &disks[2 * i + 1]);
        assert_eq!(rindex(our), rindex(theirs), "rindex of {}", our.display());
        // Every new resource group's header as gfs2-utils wrote it.
        let new_rgrps: Vec<String> = rgrp_addrs(&kept_images[i])
            .into_iter()
            .skip(orig_counts[i])
            .collect();
        assert!(!new_rgrps.is_empty(), "no new resource groups");
        for a in new_rgrps {
            assert_eq!(
                edit(&kept_images[i], &a),
                edit(theirs, &a).replace(s(theirs), s(&kept_images[i])),
                "resource group header at {a}"
            );
        }
        assert_clean(our);
        assert_clean(theirs);
    }
    assert_eq!(
        system_files(&jours),
        system_files(&jtheirs),
        "jindex/per_node"
    );
    // On the kernel's mount our tools ran gfs2-utils' (which added the
    // journal: the kernel's metafs is theirs, not ours).
    let d = r.raw_section("DELEGATED").join("\n");
    assert!(d.contains("OURS-JADD-RC 0"), "{d}");
    assert!(d.contains("Old journals: 1\nNew journals: 2"), "{d}");
    assert!(d.contains("OURS-GROW-RC "), "{d}");
    assert!(!d.contains("not a mounted gfs2 file system"), "{d}");
    assert!(
        d.contains("(Test mode - file system will not be changed)"),
        "{d}"
    );
    assert_eq!(
        entries(&edit(&kmount, "jindex")).len(),
        2,
        "journals on vdg"
    );
    assert_clean(&kmount);
    assert_clean(&jours);
    assert_clean(&jtheirs);
    assert_clean(&online);
}

/// Make `img` (100 MB, one journal), mount it with gfs2-fuse, write a
/// file, extend the image to 300 MB and run our gfs2_grow and gfs2_jadd
/// (one 32 MB journal) on the mount point, unmount; returns the file's
/// SHA-256.
fn grow_online(t: &Scratch, img: &Path) -> String {
    mkfs(img, 100, &["-p", "lock_nolock", "-j", "1"]).expect("mkfs");
    let mnt = t.join("online-mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let st = Command::new(common::daemon())
        .arg("mount")
        .arg(img)
        .arg(&mnt)
        .status()
        .expect("gfs2-fuse mount");
    assert!(st.success(), "gfs2-fuse mount");
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    std::fs::write(mnt.join("before"), &data).expect("write through the mount");
    extend(img, 300);
    // The daemon's control socket appears once it serves.
    let t0 = std::time::Instant::now();
    while gfs2fuse::runstate::control_socket_of(&mnt).is_none() {
        assert!(t0.elapsed().as_secs() < 20, "no control socket");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let m = s(&mnt);
    let grown = Command::new(GROW).arg(m).output().expect("gfs2_grow");
    let jadd = Command::new(JADD)
        .args(["-J", "32", m])
        .output()
        .expect("gfs2_jadd");
    let st = Command::new(common::daemon())
        .arg("umount")
        .arg(&mnt)
        .status()
        .expect("gfs2-fuse umount");
    for (o, what) in [(&grown, "gfs2_grow"), (&jadd, "gfs2_jadd")] {
        assert!(
            o.status.success(),
            "online {what}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let out = String::from_utf8_lossy(&grown.stdout);
    assert!(out.contains("The file system will grow by 200MB."), "{out}");
    assert!(
        String::from_utf8_lossy(&jadd.stdout).contains("New journals: 2"),
        "{}",
        String::from_utf8_lossy(&jadd.stdout)
    );
    assert!(st.success(), "gfs2-fuse umount: not clean");
    assert_clean(img);
    let sum = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(&data)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_string()
}
