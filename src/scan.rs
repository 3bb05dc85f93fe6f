//! Finding GFS2 filesystems by their superblocks (`gfs2-fuse scan`).
//!
//! Every candidate is read afresh: local block devices listed by the kernel
//! in `/sys/class/block` and whatever targets the user names (image files,
//! `nbd://` exports). Nothing is cached between runs, so a stale device
//! cache can never hide a volume.

use crate::dev::{spec, BlockDevice};
use crate::fs::{Fs, MountOptions};
use std::sync::Arc;

/// One filesystem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub device: String,
    pub uuid: String,
    pub lockproto: String,
    pub locktable: String,
    pub bsize: u32,
    pub size: u64,
    /// Journals in the jindex, when it could be read.
    pub journals: Option<usize>,
}

fn uuid_text(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    let h = h.concat();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Look at one device: `Some` when it holds a GFS2 superblock.
pub fn probe(name: &str, dev: Arc<dyn BlockDevice>) -> Option<Found> {
    let sb = crate::sb::read_sb(dev.as_ref()).ok()?;
    // The jindex, read as a spectator would: no journal, no lock traffic.
    let opts = MountOptions {
        lockproto: Some("lock_nolock".into()),
        spectator: true,
        read_only: true,
        device_read_only: true,
        ..MountOptions::default()
    };
    let journals = Fs::mount(dev.clone(), opts).ok().map(|fs| {
        let n = fs.journals().len();
        let _ = fs.unmount();
        n
    });
    Some(Found {
        device: name.to_string(),
        uuid: uuid_text(&sb.uuid),
        lockproto: sb.lockproto_str(),
        locktable: sb.locktable_str(),
        bsize: sb.bsize,
        size: dev.size(),
        journals,
    })
}

/// The local block devices the kernel knows, as `/dev` paths.
pub fn local_block_devices() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/block")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
        .filter(|p| std::path::Path::new(p).exists())
        .collect();
    v.sort();
    v
}

/// Probe every local block device and every named target.
pub fn scan(targets: &[String], local: bool) -> Vec<Found> {
    let mut names: Vec<String> = if local {
        local_block_devices()
    } else {
        Vec::new()
    };
    names.extend(targets.iter().cloned());
    names
        .iter()
        .filter_map(|n| {
            let dev = spec::open(n, true).ok()?;
            probe(n, dev)
        })
        .collect()
}

/// The device holding the filesystem named by `UUID=...` or
/// `LOCKTABLE=cluster:fs`, among the local block devices; `None` for any
/// other device specification.
pub fn resolve(spec_text: &str) -> Option<std::io::Result<String>> {
    let (key, want) = if let Some(u) = spec_text.strip_prefix("UUID=") {
        ("uuid", u.to_ascii_lowercase())
    } else if let Some(t) = spec_text.strip_prefix("LOCKTABLE=") {
        ("table", t.to_string())
    } else {
        return None;
    };
    let found = scan(&[], true);
    let hit = found.into_iter().find(|f| match key {
        "uuid" => f.uuid == want,
        _ => f.locktable == want,
    });
    Some(hit.map(|f| f.device).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no local block device holds a GFS2 filesystem with {spec_text}"),
        )
    }))
}

/// The table `gfs2-fuse scan` prints.
pub fn render(found: &[Found]) -> String {
    let mut s = format!(
        "{:<24} {:<36} {:<12} {:<24} {:>5} {:>16} {:>8}\n",
        "DEVICE", "UUID", "LOCKPROTO", "LOCKTABLE", "BSIZE", "SIZE", "JOURNALS"
    );
    for f in found {
        s.push_str(&format!(
            "{:<24} {:<36} {:<12} {:<24} {:>5} {:>16} {:>8}\n",
            f.device,
            f.uuid,
            f.lockproto,
            f.locktable,
            f.bsize,
            f.size,
            f.journals.map_or("?".to_string(), |n| n.to_string())
        ));
    }
    s
}
