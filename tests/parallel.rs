//! Several threads writing through one mount at once: transactions of one
//! node run in parallel (each under the glocks of what it changes, meeting
//! only at the log), so this is where they could lose or mix up each
//! other's changes. Each thread creates, writes, fsyncs, renames into and
//! out of a shared directory, unlinks and appends to one shared file;
//! then every file must hold what its thread wrote, on the live mount and
//! after a remount, and gfs2-utils' `fsck.gfs2 -n` must find the image
//! clean (bitmaps, rgrp and statfs counts, directories).

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const THREADS: u64 = 6;
const ROUNDS: u64 = 40;

/// What one thread leaves behind: path (relative to the mount) -> content.
type Files = BTreeMap<String, Vec<u8>>;

fn worker(mnt: &Path, t: u64) -> (Files, Vec<String>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let own = format!("t{t}");
    std::fs::create_dir(mnt.join(&own)).expect("mkdir");
    let mut files = Files::new();
    let mut lines = Vec::new();
    for i in 0..ROUNDS {
        // A file of its own, written in two pieces (the second allocates
        // past the first), fsync'd every other time.
        let name = format!("{own}/f{i}");
        let size = rng.below(300_000) as usize;
        let mut body = vec![0u8; size];
        fill(&mut rng, &mut body);
        let split = rng.below(size as u64 + 1) as usize;
        let mut f = std::fs::File::create(mnt.join(&name)).expect("create");
        f.write_all(&body[..split]).expect("write");
        f.write_all(&body[split..]).expect("write");
        if i % 2 == 0 {
            f.sync_all().expect("fsync");
        }
        drop(f);
        files.insert(name.clone(), body);
        // Moved into the shared directory (every thread's parent there)
        // and, half the time, back under a new name.
        if i % 3 == 0 {
            let shared = format!("shared/t{t}-f{i}");
            std::fs::rename(mnt.join(&name), mnt.join(&shared)).expect("rename");
            let body = files.remove(&name).expect("known");
            if rng.below(2) == 0 {
                let back = format!("{own}/back{i}");
                std::fs::rename(mnt.join(&shared), mnt.join(&back)).expect("rename back");
                files.insert(back, body);
            } else {
                files.insert(shared, body);
            }
        }
        // Some go again (their blocks freed while others allocate).
        if i % 4 == 1 {
            let victim = files
                .keys()
                .filter(|k| k.starts_with(&own))
                .nth(rng.below(3) as usize)
                .cloned();
            if let Some(v) = victim {
                std::fs::remove_file(mnt.join(&v)).expect("unlink");
                files.remove(&v);
            }
        }
        // One line appended to the file every thread appends to.
        let line = format!("thread {t} round {i}\n");
        let mut a = std::fs::OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_SYNC)
            .open(mnt.join("shared/log"))
            .expect("open log");
        a.write_all(line.as_bytes()).expect("append");
        lines.push(line);
        // A directory made and removed.
        let d = mnt.join(format!("{own}/d{i}"));
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::remove_dir(&d).expect("rmdir");
    }
    (files, lines)
}

fn check(mnt: &Path, files: &Files, lines: &[String], what: &str) {
    for (name, body) in files {
        let got = std::fs::read(mnt.join(name)).unwrap_or_else(|e| panic!("{what}: {name}: {e}"));
        assert!(
            got == *body,
            "{what}: {name} holds {} bytes, not the {} written",
            got.len(),
            body.len()
        );
    }
    // Nothing else is left in the directories.
    let mut listed = Vec::new();
    for d in (0..THREADS)
        .map(|t| format!("t{t}"))
        .chain(["shared".into()])
    {
        for e in std::fs::read_dir(mnt.join(&d)).expect("readdir") {
            let n = e.expect("entry").file_name().to_string_lossy().into_owned();
            if d == "shared" && n == "log" {
                continue;
            }
            listed.push(format!("{d}/{n}"));
        }
    }
    listed.sort();
    let want: Vec<&String> = files.keys().collect();
    assert_eq!(listed.iter().collect::<Vec<_>>(), want, "{what}: listing");
    // Every appended line once (in some order).
    let log = std::fs::read_to_string(mnt.join("shared/log")).expect("log");
    let mut got: Vec<&str> = log.split_inclusive('\n').collect();
    let mut want: Vec<&str> = lines.iter().map(String::as_str).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "{what}: the shared log");
}

#[test]
fn parallel_writers_keep_every_change() {
    let img = mkfs(4096, 1, 512, "parallel");
    let (files, lines) = with_mount(&img.0, "", "parallel", |mnt| {
        std::fs::create_dir(mnt.join("shared")).expect("mkdir shared");
        std::fs::File::create(mnt.join("shared/log")).expect("log");
        let results: Vec<(Files, Vec<String>)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..THREADS)
                .map(|t| s.spawn(move || worker(mnt, t)))
                .collect();
            hs.into_iter().map(|h| h.join().expect("worker")).collect()
        });
        let mut files = Files::new();
        let mut lines = Vec::new();
        for (f, l) in results {
            files.extend(f);
            lines.extend(l);
        }
        check(mnt, &files, &lines, "live mount");
        (files, lines)
    });
    fsck_clean(&img.0, "after parallel writers");
    with_mount(&img.0, "", "parallel-again", |mnt| {
        check(mnt, &files, &lines, "after a remount")
    });
    fsck_clean(&img.0, "after the remount");
}
