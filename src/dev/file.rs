//! A local image file or block device.

use super::claim::{Claim, Claimant};
use super::BlockDevice;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A regular file or a block device opened with positional I/O.
pub struct FileDevice {
    file: File,
    path: PathBuf,
    size: u64,
    claim: std::sync::Mutex<Option<Claim>>,
}

/// How to open a [`FileDevice`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenFlags {
    /// Open read-only.
    pub read_only: bool,
    /// Bypass the host page cache (O_DIRECT). Buffers and offsets must then be
    /// aligned to the device's logical block size.
    pub direct: bool,
}

impl FileDevice {
    /// Open `path`. The size of a block device is found by seeking to its end.
    pub fn open(path: &Path, flags: OpenFlags) -> io::Result<Self> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(!flags.read_only);
        if flags.direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let size = device_size(&file)?;
        Ok(FileDevice {
            file,
            path: path.to_path_buf(),
            size,
            claim: Default::default(),
        })
    }
}

fn device_size(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut f = file;
    let end = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(end)
}

impl BlockDevice for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn claim(&self, who: Claimant) -> io::Result<()> {
        let mut c = self.claim.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_none() {
            *c = Some(Claim::take(&self.path, who)?);
        }
        Ok(())
    }
    fn release(&self) {
        // The data was made durable by the caller's flush; the descriptor
        // itself stays open (a later read fails nowhere) but owns nothing.
        *self.claim.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
