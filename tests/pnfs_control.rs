//! The pNFS control channel of a real FUSE mount (`-o pnfs=SOCKET`): the
//! operator's `gfs2-fuse pnfs` commands and the socket protocol, checked
//! against the image file itself (the disk a pNFS client writes), the
//! mount's own view through syscalls, and gfs2-utils' `fsck.gfs2 -n`.

mod common;

use common::*;
use gfs2fuse::pnfs::control::client::request;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn pnfs(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(gfs2_fuse())
        .arg("pnfs")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `EXTENT` lines as (file offset, length, disk offset, state).
fn extents(lines: &[String]) -> Vec<(u64, u64, u64, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            match f.as_slice() {
                ["EXTENT", o, n, d, s] => Some((
                    o.parse().unwrap(),
                    n.parse().unwrap(),
                    d.parse().unwrap(),
                    s.to_string(),
                )),
                _ => None,
            }
        })
        .collect()
}

fn ask(sock: &Path, line: &str) -> Vec<String> {
    request(sock, line).unwrap()
}

#[test]
fn control_socket_of_a_mount() {
    let img = mkfs(4096, 1, 256, "pnfs-ctl");
    let sock = std::env::temp_dir().join(format!("gfs2-pnfs-{}.sock", std::process::id()));
    let _sock_guard = TempPath(sock.clone());
    let opts = format!("pnfs={},pnfs_lease=1", sock.display());
    let image = img.0.clone();
    let kept = with_mount(&img.0, &opts, "pnfs-ctl", |mnt| {
        // Usage and a server that is not there.
        let (code, out, _) = pnfs(&["--help"]);
        assert_eq!(code, 0);
        assert!(out.contains("gfs2-fuse pnfs layout SOCKET FILE OFFSET LEN"));
        let (code, _, _) = pnfs(&["device", "/nonexistent/sock"]);
        assert_eq!(code, 3);
        let (code, _, _) = pnfs(&["layout"]);
        assert_eq!(code, 2);

        // The volume signature is the superblock's UUID, where the image has it.
        let (code, out, err) = pnfs(&["device", sock.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let disk = std::fs::File::open(&image).unwrap();
        let mut uuid = [0u8; 16];
        disk.read_exact_at(&mut uuid, 65792).unwrap();
        let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
        assert!(uuid.iter().any(|b| *b != 0));
        assert!(
            out.contains(&format!("signature {hex} at byte 65792")),
            "{out}"
        );
        assert!(out.contains("block size 4096"), "{out}");

        // A sparse file written through the mount: its read layout points
        // at its bytes in the image.
        let path = mnt.join("sparse file");
        let a = {
            let mut r = Rng(7);
            let mut v = vec![0u8; 3 * 4096];
            fill(&mut r, &mut v);
            v
        };
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.write_all_at(&a, 0).unwrap();
        f.write_all_at(&a, 2 << 20).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let r = ask(
            &sock,
            "LAYOUTGET 1 read 0 18446744073709551615 1 sparse file",
        );
        assert!(r[0].starts_with("OK LAYOUT "), "{r:?}");
        let ex = extents(&r);
        let data: Vec<_> = ex.iter().filter(|e| e.3 == "read").collect();
        assert_eq!(data.iter().map(|e| e.1).sum::<u64>(), 6 * 4096, "{r:?}");
        for (off, len, at, _) in &data {
            let mut b = vec![0u8; *len as usize];
            disk.read_exact_at(&mut b, *at).unwrap();
            let want = if *off < (1 << 20) {
                &a[*off as usize..(*off + *len) as usize]
            } else {
                let o = (*off - (2 << 20)) as usize;
                &a[o..o + *len as usize]
            };
            assert!(b == want, "image at {at} differs from the file at {off}");
        }
        assert_eq!(ask(&sock, "RETURN 1 0 18446744073709551615 *"), ["OK"]);
        // The operator's view of the same layout.
        let (code, out, err) = pnfs(&["layout", sock.to_str().unwrap(), "sparse file", "0", "max"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("read layout of 0+max"), "{out}");
        assert!(out.contains(&format!("{:>16}", data[0].2)), "{out}");
        // Errors: a file that does not exist, a stuffed one.
        let (code, _, err) = pnfs(&["layout", sock.to_str().unwrap(), "nope", "0", "4096"]);
        assert_eq!(code, 1);
        assert!(err.contains("NOENT"), "{err}");
        std::fs::write(mnt.join("tiny"), b"hello").unwrap();
        let r = ask(&sock, "LAYOUTGET 1 read 0 4096 1 tiny");
        assert!(r[0].starts_with("ERR UNAVAILABLE"), "{r:?}");
        let r = ask(&sock, "LAYOUTGET x read 0 4096 1 tiny");
        assert!(r[0].starts_with("ERR PROTO"), "{r:?}");
        for bad in [
            "LAYOUTGET 1 write 0 4096 1 tiny",
            "LAYOUTGET 1 read 0",
            "COMMIT 1 0 10 9 1.2000000000 tiny",
            "RETURN",
            "FROB",
            "",
        ] {
            let r = ask(&sock, bad);
            assert!(r[0].starts_with("ERR PROTO"), "{bad:?}: {r:?}");
        }
        // Not UTF-8, then a line past 8 KiB: answered, the latter ends the
        // connection; the server goes on serving others.
        {
            let c = UnixStream::connect(&sock).unwrap();
            let mut rd = BufReader::new(c.try_clone().unwrap());
            (&c).write_all(b"DEVICE \xff\xfe\n").unwrap();
            let mut l = String::new();
            rd.read_line(&mut l).unwrap();
            assert!(l.starts_with("ERR PROTO"), "{l:?}");
            (&c).write_all(&vec![b'A'; 20_000]).unwrap();
            (&c).write_all(b"\n").unwrap_or(());
            l.clear();
            rd.read_line(&mut l).unwrap();
            assert!(l.starts_with("ERR PROTO"), "{l:?}");
            l.clear();
            assert_eq!(rd.read_line(&mut l).unwrap_or(0), 0, "{l:?}");
        }
        assert!(ask(&sock, "DEVICE")[0].starts_with("OK DEVICE"));

        // A client writes a new file through a read-write layout: the blocks
        // at the granted disk offsets become the file once committed.
        std::fs::write(mnt.join("new"), b"").unwrap();
        let r = ask(&sock, "LAYOUTGET 9 rw 0 262144 262144 new");
        assert!(r[0].starts_with("OK LAYOUT "), "{r:?}");
        let ex = extents(&r);
        assert!(ex.iter().all(|e| e.3 == "invalid"), "{r:?}");
        assert_eq!(ex.iter().map(|e| e.1).sum::<u64>(), 262144);
        let body = {
            let mut r = Rng(9);
            let mut v = vec![0u8; 200_000];
            fill(&mut r, &mut v);
            v
        };
        let dev = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        let mut done = 0usize;
        for (off, len, at, _) in &ex {
            if done >= body.len() {
                break;
            }
            assert_eq!(*off as usize, done);
            let n = (*len as usize).min(body.len() - done);
            dev.write_all_at(&body[done..done + n], *at).unwrap();
            done += n;
        }
        dev.sync_all().unwrap();
        let r = ask(&sock, "COMMIT 9 0 200000 199999 1700000000.25 new");
        assert!(r[0].starts_with("OK ATTR "), "{r:?}");
        let md = std::fs::metadata(mnt.join("new")).unwrap();
        assert_eq!(md.len(), 200_000);
        use std::os::unix::fs::MetadataExt;
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_700_000_000, 25));
        assert_eq!(std::fs::read(mnt.join("new")).unwrap(), body);

        // A recall through the socket: a write on the mount to a file with
        // a layout waits until the subscriber's client returns it.
        let sub = UnixStream::connect(&sock).unwrap();
        (&sub).write_all(b"SUBSCRIBE\n").unwrap();
        let mut lines = BufReader::new(sub.try_clone().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "OK");
        let t0 = Instant::now();
        let p2 = mnt.join("new");
        let w = std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).open(p2).unwrap();
            f.write_all_at(b"local", 0).unwrap();
        });
        let recall = lines.next().unwrap().unwrap();
        let f: Vec<&str> = recall.split(' ').collect();
        assert_eq!(f[0], "RECALL", "{recall}");
        assert_eq!(f[1], "9");
        assert_eq!(f[5], "rw");
        std::thread::sleep(Duration::from_millis(200));
        assert!(!w.is_finished(), "the mount wrote under a layout");
        let r = ask(&sock, "LAYOUTGET 10 read 0 4096 1 new");
        assert!(r[0].starts_with("ERR TRYLATER"), "{r:?}");
        assert_eq!(
            ask(&sock, &format!("RETURN 9 0 18446744073709551615 #{}", f[2])),
            ["OK"]
        );
        w.join().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2));
        let got = std::fs::read(mnt.join("new")).unwrap();
        assert_eq!(&got[..5], b"local");
        assert_eq!(&got[5..], &body[5..]);

        // A client that never answers is fenced after two leases (1 s).
        let _ = ask(&sock, "LAYOUTGET 11 rw 1048576 65536 65536 new");
        let p3 = mnt.join("new");
        let t0 = Instant::now();
        let w = std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new().write(true).open(p3).unwrap();
            f.write_all_at(b"again", 0).unwrap();
        });
        let recall = lines.next().unwrap().unwrap();
        assert!(recall.starts_with("RECALL 11 "), "{recall}");
        assert_eq!(lines.next().unwrap().unwrap(), "FENCE 11");
        w.join().unwrap();
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(1900),
            "fenced after {waited:?}"
        );
        assert_eq!(std::fs::metadata(mnt.join("new")).unwrap().len(), 200_000);

        // A layout still out when the mount goes: its blocks are freed.
        let md = std::fs::metadata(mnt.join("new")).unwrap();
        let r = ask(&sock, "LAYOUTGET 12 rw 1048576 65536 65536 new");
        assert!(r[0].starts_with("OK LAYOUT "), "{r:?}");
        let md2 = std::fs::metadata(mnt.join("new")).unwrap();
        assert_eq!(md2.blocks(), md.blocks() + 65536 / 512);
        (md.ino(), md.blocks())
    });
    fsck_clean(&img.0, "after the control channel's layouts");
    // gfs2-utils' count of the file's blocks, after the unmount.
    let (ino, blocks) = kept;
    let out = Command::new(tool("gfs2_edit"))
        .args(["-p", &ino.to_string(), "field", "di_blocks"])
        .arg(&img.0)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let di_blocks: u64 = text.trim().parse().unwrap_or_else(|_| panic!("{text:?}"));
    assert_eq!(di_blocks * 8, blocks, "blocks of the file after unmount");
}
