//! Block devices: where the filesystem's bytes live.
//!
//! GFS2 is shared storage: several nodes read and write the same device, so a
//! device layer must never serve data from a cache of its own. Everything above
//! it caches only what a glock covers. Implementations: [`file::FileDevice`]
//! (a local image file or block device) and the network initiators
//! ([`nbd::NbdDevice`], [`aoe`], [`iscsi`]); [`spec::open`] opens either from a user's string.

pub mod aoe;
pub mod claim;
pub mod file;
pub mod iscsi;
pub mod killpoint;
pub mod mountinfo;
pub mod nbd;
mod rangelock;
pub mod scsi;
pub mod spec;

use std::io;
use std::time::Duration;

/// An error with the errno it stands for (a network initiator's EIO,
/// EROFS, ...), carried inside `io::Error` so the message survives. See
/// [`errno_of`].
#[derive(Debug)]
pub struct DevError {
    pub errno: i32,
    pub msg: String,
}

impl std::fmt::Display for DevError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for DevError {}

/// An `io::Error` for `errno` with `msg`, of the matching kind.
pub fn dev_err(errno: i32, msg: String) -> io::Error {
    let kind = match errno {
        libc::EACCES | libc::EPERM => io::ErrorKind::PermissionDenied,
        libc::ECONNREFUSED => io::ErrorKind::ConnectionRefused,
        libc::ENOENT => io::ErrorKind::NotFound,
        libc::ETIMEDOUT => io::ErrorKind::TimedOut,
        libc::EINVAL => io::ErrorKind::InvalidInput,
        libc::ENOMEM => io::ErrorKind::OutOfMemory,
        libc::ENOTSUP => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, DevError { errno, msg })
}

/// The errno an error stands for: the OS error, or that of a [`DevError`].
pub fn errno_of(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|i| i.downcast_ref::<DevError>())
            .map(|n| n.errno)
    })
}

/// A number of seconds (fractions allowed) as a request timeout: finite,
/// positive and below a billion, or nothing.
pub fn parse_secs(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
}

/// The timeout in environment variable `var`, or `default`.
pub fn timeout_from(var: &str, default: Duration) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| parse_secs(&v))
        .unwrap_or(default)
}

/// Longest reply-polling budget an environment variable may set.
const MAX_POLL: Duration = Duration::from_millis(10);

/// The polling budget in environment variable `var` (microseconds, at most
/// 10,000; 0 turns polling off), or `default`.
pub fn poll_from(var: &str, default: Duration) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(default, |us| Duration::from_micros(us).min(MAX_POLL))
}

/// Call `look` until it finds something or `budget` has passed, giving the
/// processor away between calls. An initiator's caller does this before it
/// sleeps for a reply: on a fast target, the context switch of sleeping and
/// being woken costs more than the wait itself.
pub fn poll_yielding<T>(
    budget: Duration,
    mut look: impl FnMut() -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    if budget.is_zero() {
        return Ok(None);
    }
    let t0 = std::time::Instant::now();
    loop {
        if let Some(got) = look()? {
            return Ok(Some(got));
        }
        if t0.elapsed() >= budget {
            return Ok(None);
        }
        std::thread::yield_now();
    }
}

/// A device the filesystem is stored on, addressed in bytes.
///
/// Implementations are shared between the threads that serve requests, so all
/// methods take `&self`. A write is only complete when the call returns `Ok`:
/// an error means the data may or may not have reached the medium, and the
/// caller must treat it as lost.
pub trait BlockDevice: Send + Sync {
    /// Fill `buf` from byte offset `offset`. Short devices give `UnexpectedEof`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at byte offset `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make every completed write durable (fdatasync, NBD FLUSH, SYNCHRONIZE CACHE).
    fn flush(&self) -> io::Result<()>;
    /// Size of the device in bytes.
    fn size(&self) -> u64;
    /// Look at the device's size again (a LUN or image grown since it was
    /// opened, before a grow, or when another node grew the filesystem)
    /// and return it; [`BlockDevice::size`] gives it from then on. The
    /// default keeps the size found at open.
    fn refresh_size(&self) -> io::Result<u64> {
        Ok(self.size())
    }
    /// Tell the device a range is unused. Optional; the default does nothing.
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// A human-readable name for messages ("/dev/sdb", "nbd://host/export").
    fn describe(&self) -> String;
    /// Claim the device for this process alone until [`BlockDevice::release`]
    /// or exit: a second claimant is refused with `EBUSY` and a message
    /// naming the holder (see [`claim`]). A local file or block device
    /// implements it; the default claims nothing, as for network disks whose
    /// protocol has no owner lock (NBD) or where the target's own locking
    /// stands in for it.
    fn claim(&self, _who: claim::Claimant) -> io::Result<()> {
        Ok(())
    }
    /// The filesystem is done with the device: drop the claim and end the
    /// connection (NBD says goodbye), so that whatever uses the device next
    /// finds it free. Later requests fail. The default does nothing.
    fn release(&self) {}
    /// The SCSI logical unit behind the device, for commands beyond reads
    /// and writes (its identity, persistent reservations), when it is one
    /// the device can reach (an iSCSI LUN). The default: none.
    fn scsi(&self) -> Option<&dyn scsi::ScsiLun> {
        None
    }
}

/// A shared device is a device: lets `&Arc<dyn BlockDevice>` be passed where
/// `&dyn BlockDevice` is expected.
impl<T: BlockDevice + ?Sized> BlockDevice for std::sync::Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        (**self).flush()
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn refresh_size(&self) -> io::Result<u64> {
        (**self).refresh_size()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).discard(offset, len)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn claim(&self, who: claim::Claimant) -> io::Result<()> {
        (**self).claim(who)
    }
    fn release(&self) {
        (**self).release()
    }
    fn scsi(&self) -> Option<&dyn scsi::ScsiLun> {
        (**self).scsi()
    }
}
