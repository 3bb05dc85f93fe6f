//! The filesystem core's error type, converted to errno at the FUSE boundary.

use std::io;

/// Errors of the filesystem core.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The device failed.
    #[error("I/O error on {what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The device's error.
        source: io::Error,
    },
    /// On-disk data is inconsistent. Reported as EIO for the object concerned.
    #[error("corrupt metadata at block {block}: {why}")]
    Corrupt {
        /// The block where the problem was found.
        block: u64,
        /// What is wrong.
        why: String,
    },
    /// The filesystem cannot be mounted (bad superblock, options...).
    #[error("cannot mount: {0}")]
    Mount(String),
    /// The lock manager failed.
    #[error("lock manager: {0}")]
    Lock(#[from] gfs2_lockproto::LockError),
    /// A plain errno result (ENOENT, ENOTDIR, ENODATA, ERANGE...).
    #[error("errno {0}")]
    Errno(i32),
    /// A transaction touched a block whose glock the operation does not hold
    /// in the mode needed. Never leaves [`crate::fs::Fs`]'s transaction
    /// loop: it drops the transaction, takes the glock (in lock order) and
    /// runs the operation again.
    #[error("glock {0} needed in {1:?}")]
    NeedGlock(gfs2_lockproto::ResName, gfs2_lockproto::Mode),
    /// A name the operation looked up before taking its glocks changed
    /// before they were held (another node renamed, removed or created
    /// it): the operation looks its names up again. EAGAIN if it ever
    /// escapes.
    #[error("a name changed while its glocks were taken")]
    Changed,
}

impl FsError {
    /// The errno a VFS caller should see.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Io { .. }
            | FsError::Corrupt { .. }
            | FsError::Lock(_)
            | FsError::NeedGlock(..) => libc::EIO,
            FsError::Mount(_) => libc::EINVAL,
            FsError::Changed => libc::EAGAIN,
            FsError::Errno(e) => *e,
        }
    }

    /// A corruption error.
    pub fn corrupt(block: u64, why: impl Into<String>) -> Self {
        FsError::Corrupt {
            block,
            why: why.into(),
        }
    }
}

impl From<gfs2_ondisk::FormatError> for FsError {
    /// Encoding into a buffer of the wrong size is a bug of ours, decoding a
    /// short structure is damage: both end as EIO for the object.
    fn from(e: gfs2_ondisk::FormatError) -> Self {
        FsError::corrupt(0, e.to_string())
    }
}

/// Result of filesystem operations.
pub type Result<T, E = FsError> = std::result::Result<T, E>;
