//! Reaching the filesystem a tool was pointed at.
//!
//! gfs2-utils' `gfs2_grow` and `gfs2_jadd` need the kernel to have the
//! filesystem mounted and work through its metafs. Ours also work on an
//! unmounted device or image: it is claimed as mkfs and fsck claim it
//! ([`BlockDevice::claim`]: a device a `lock_nolock` gfs2-fuse node, a
//! kernel mount or another tool holds is refused, naming the holder) and
//! mounted by this library with `lock_nolock`, so that every change is made
//! by the same write path (allocation, directories, journal) as a node's.
//! The tool's own mount replays a dirty journal first, as any mount does.
//!
//! On shared storage the claim cannot see other hosts: as with fsck, the
//! filesystem must be unmounted on every node first.

use gfs2fuse::dev::claim::Claimant;
use gfs2fuse::dev::{spec, BlockDevice};
use gfs2fuse::fs::{Fs, MountOptions};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

/// What a command-line path turned out to be.
pub enum Target {
    /// A device or image holding GFS2.
    Device(Arc<dyn BlockDevice>),
    /// Something that holds no GFS2 (gfs2-utils: "not a mounted gfs2 file
    /// system").
    NotGfs2,
}

/// Open `path`: `Err` carries gfs2-utils' "Error looking up mount" reason
/// (the strerror text) when the path cannot be reached at all.
pub fn open(path: &OsStr, read_only: bool) -> Result<Target, String> {
    // Network disks (nbd://...) go straight to the device layer.
    let local = matches!(
        path.to_str().map(spec::parse),
        Some(Ok(spec::Spec::Path(_))) | None
    );
    if local {
        let md = std::fs::metadata(Path::new(path)).map_err(|e| strerror(&e))?;
        if md.is_dir() {
            // A directory is a gfs2-fuse mount point (see `online`) or
            // nothing to us.
            return Ok(Target::NotGfs2);
        }
    }
    let dev = spec::open_os(path, read_only).map_err(|e| strerror(&e))?;
    match gfs2fuse::sb::read_sb(dev.as_ref()) {
        Ok(_) => Ok(Target::Device(crate::killpoint::wrap(dev))),
        Err(_) => Ok(Target::NotGfs2),
    }
}

/// The C library's text for an I/O error.
pub fn strerror(e: &std::io::Error) -> String {
    match gfs2fuse::dev::errno_of(e) {
        Some(n) => std::io::Error::from_raw_os_error(n)
            .to_string()
            .split(" (os error")
            .next()
            .unwrap_or_default()
            .to_string(),
        None => e.to_string(),
    }
}

/// Claim `dev` for a change and mount it alone (`lock_nolock`); with
/// `spectator` (a test run) nothing is claimed for writing, no journal is
/// taken or replayed and nothing is written.
pub fn mount(dev: Arc<dyn BlockDevice>, spectator: bool) -> Result<Arc<Fs>, String> {
    if !spectator {
        dev.claim(Claimant::Tool)
            .map_err(|e| format!("the device is in use: {e}"))?;
    }
    let opts = MountOptions {
        lockproto: Some("lock_nolock".into()),
        spectator,
        read_only: spectator,
        device_read_only: spectator,
        ..MountOptions::default()
    };
    Fs::mount(dev, opts).map_err(|e| e.to_string())
}

/// A random 64-bit number (the start of a new journal's sequence numbers).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

/// Log to stderr at the level `RUST_LOG` asks for (warnings by default).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
}
