//! A local image file or block device.

use super::claim::{Claim, Claimant};
use super::BlockDevice;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A regular file or a block device opened with positional I/O.
///
/// A block device is always opened `O_DIRECT`: it may be shared with other
/// nodes (a SAN disk, a VM's shared virtio disk), and this host's page
/// cache would serve blocks another node has rewritten since. Our own
/// buffer cache is the one that glocks keep coherent. Direct I/O needs
/// buffers and offsets aligned to the logical sector size, so such I/O goes
/// through an aligned bounce buffer (a sector that is only partly written
/// is read first).
pub struct FileDevice {
    file: File,
    path: PathBuf,
    /// Found at open, again by `refresh_size`.
    size: std::sync::atomic::AtomicU64,
    claim: std::sync::Mutex<Option<Claim>>,
    /// The sector size of direct I/O; `None` for buffered I/O.
    direct: Option<usize>,
    /// Sector ranges being written: a partial-sector write (read, modify,
    /// write) must not interleave with another write to those sectors.
    ranges: super::rangelock::RangeLocks,
}

/// Memory alignment of direct I/O buffers (enough for any sector size).
const DIRECT_ALIGN: usize = 4096;

/// A zeroed buffer of `len` bytes aligned for direct I/O.
struct Aligned {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> io::Result<Self> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), DIRECT_ALIGN)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(ptr)
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "direct I/O buffer"))?;
        Ok(Aligned { ptr, layout })
    }
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to layout.size() initialised (zeroed) bytes we own.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The logical sector size of a block device (`BLKSSZGET`).
fn sector_size(file: &File) -> usize {
    use std::os::fd::AsRawFd;
    const BLKSSZGET: libc::c_ulong = 0x1268;
    let mut n: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int to the pointer we pass.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET as _, &mut n) };
    if r == 0 && n > 0 && (n as usize).is_power_of_two() && n as usize <= DIRECT_ALIGN {
        n as usize
    } else {
        512
    }
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
        use std::os::unix::fs::FileTypeExt;
        let is_block = std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device());
        let mut opts = OpenOptions::new();
        opts.read(true).write(!flags.read_only);
        if flags.direct || is_block {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let size = device_size(&file)?;
        let direct = (flags.direct || is_block).then(|| sector_size(&file));
        Ok(FileDevice {
            file,
            path: path.to_path_buf(),
            size: size.into(),
            claim: Default::default(),
            direct,
            ranges: Default::default(),
        })
    }
}

impl FileDevice {
    /// Read the sectors spanning `len` bytes at `offset` into an aligned
    /// buffer; returns the offset of its first byte.
    fn read_span(&self, offset: u64, len: usize, sector: usize) -> io::Result<(u64, Aligned)> {
        let s = sector as u64;
        let start = offset - offset % s;
        let end = offset
            .checked_add(len as u64)
            .and_then(|e| e.checked_next_multiple_of(s))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "I/O past 2^64"))?;
        let mut b = Aligned::new((end - start) as usize)?;
        self.file.read_exact_at(b.bytes(), start)?;
        Ok((start, b))
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
        match self.direct {
            None => self.file.read_exact_at(buf, offset),
            Some(sector) => {
                let (start, mut b) = self.read_span(offset, buf.len(), sector)?;
                let skip = (offset - start) as usize;
                buf.copy_from_slice(&b.bytes()[skip..skip + buf.len()]);
                Ok(())
            }
        }
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let Some(sector) = self.direct else {
            return self.file.write_all_at(buf, offset);
        };
        let aligned = offset.is_multiple_of(sector as u64) && buf.len().is_multiple_of(sector);
        let s = sector as u64;
        let end = offset
            .checked_add(buf.len() as u64)
            .and_then(|e| e.checked_next_multiple_of(s))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "I/O past 2^64"))?;
        let _held = self.ranges.lock(offset - offset % s, end, !aligned);
        let (start, mut b) = if aligned {
            (offset, Aligned::new(buf.len())?)
        } else {
            // A sector only partly written: keep the rest of it.
            self.read_span(offset, buf.len(), sector)?
        };
        let skip = (offset - start) as usize;
        b.bytes()[skip..skip + buf.len()].copy_from_slice(buf);
        self.file.write_all_at(b.bytes(), start)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn size(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn refresh_size(&self) -> io::Result<u64> {
        let n = device_size(&self.file)?;
        self.size.store(n, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
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
