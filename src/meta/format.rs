//! The savemeta file format of gfs2-utils' `gfs2_edit`, read and written.
//!
//! A file is a 128-byte header (`struct savemeta_header`: magic
//! `0x01171970`, format 1, the time of the dump, the filesystem's size in
//! bytes) followed by one record per saved block: its address (big-endian
//! u64), the length of its significant prefix (big-endian u16, at most the
//! block size) and that many bytes; the rest of the block is zero. The
//! first record is the superblock. The whole stream is gzip-compressed
//! (gfs2_edit's default, level 9), bzip2-compressed (gfs2_edit restores
//! such files) or plain (`-z0`, where trailing zeros of each block are left
//! out). Files of gfs2_edit's first format have no header: the superblock
//! record is then found by scanning the first bytes, as gfs2_edit does.
//!
//! A savemeta file is untrusted input (it comes from whoever sent it for
//! debugging): every length is checked before it is used, a damaged or
//! truncated stream is an error, never a panic.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use gfs2_ondisk::consts::{metatype, MAGIC as GFS2_MAGIC};
use gfs2_ondisk::sb::Superblock;

/// `SAVEMETA_MAGIC`.
pub const MAGIC: u32 = 0x0117_1970;
/// `SAVEMETA_FORMAT`: the newest format gfs2_edit writes and we read.
pub const FORMAT: u32 = 1;
/// `sizeof(struct savemeta_header)`.
pub const HEADER_SIZE: usize = 128;
/// `sizeof(struct saved_metablock)`: block address and significant length.
pub const RECORD_HEAD: usize = 10;
/// How far into the stream gfs2_edit looks for the superblock record:
/// 256 bytes plus a record head and a metadata header.
const SB_SCAN_END: usize = 256 + RECORD_HEAD + 24;

/// What went wrong with a savemeta file.
#[derive(Debug)]
pub enum MetaError {
    /// Reading or writing the file or the device.
    Io { what: String, source: io::Error },
    /// The file's content is not a valid savemeta stream.
    Corrupt(String),
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaError::Io { what, source } => write!(f, "{what}: {source}"),
            MetaError::Corrupt(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for MetaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MetaError::Io { source, .. } => Some(source),
            MetaError::Corrupt(_) => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, MetaError>;

/// Attach what was being done to an I/O error.
pub fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> MetaError {
    let what = what.into();
    move |source| MetaError::Io { what, source }
}

/// `struct savemeta_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub format: u32,
    /// Seconds since the epoch when the dump was made.
    pub time: u64,
    /// Size of the filesystem in bytes (0: unknown).
    pub fs_bytes: u64,
}

impl Header {
    /// The header of a format-1 file, or `None` when `b` does not start
    /// with the magic number (a file of the first format).
    pub fn parse(b: &[u8]) -> Result<Option<Header>> {
        let Some(h) = b.get(..HEADER_SIZE) else {
            return Ok(None);
        };
        if be32(h, 0) != MAGIC {
            return Ok(None);
        }
        let format = be32(h, 4);
        if format > FORMAT {
            return Err(MetaError::Corrupt(format!(
                "savemeta format {format} is newer than the newest known ({FORMAT})"
            )));
        }
        Ok(Some(Header {
            format,
            time: be64(h, 8),
            fs_bytes: be64(h, 16),
        }))
    }

    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.format.to_be_bytes());
        b[8..16].copy_from_slice(&self.time.to_be_bytes());
        b[16..24].copy_from_slice(&self.fs_bytes.to_be_bytes());
        b
    }
}

fn be16(b: &[u8], o: usize) -> u16 {
    let mut x = [0u8; 2];
    x.copy_from_slice(&b[o..o + 2]);
    u16::from_be_bytes(x)
}

fn be32(b: &[u8], o: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[o..o + 4]);
    u32::from_be_bytes(x)
}

fn be64(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_be_bytes(x)
}

/// How a savemeta stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
        })
    }
}

/// Writes a savemeta stream: the header, then records.
pub struct Writer<W: Write> {
    out: Sink<W>,
    /// gzip level 1-9, or 0 for a plain stream.
    level: u32,
    records: u64,
}

enum Sink<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
}

impl<W: Write> Writer<W> {
    /// Start a stream: gzip at `level` (1-9), plain for 0.
    pub fn new(out: W, level: u32, header: &Header) -> io::Result<Self> {
        if level > 9 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("compression level {level} is not in 0-9"),
            ));
        }
        let out = if level == 0 {
            Sink::Plain(out)
        } else {
            Sink::Gzip(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::new(level),
            ))
        };
        let mut w = Writer {
            out,
            level,
            records: 0,
        };
        w.write_all(&header.to_bytes())?;
        Ok(w)
    }

    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match &mut self.out {
            Sink::Plain(w) => w.write_all(b),
            Sink::Gzip(w) => w.write_all(b),
        }
    }

    /// Save `data`, the first bytes of block `blk` (at most 65535 of
    /// them). A plain stream leaves out trailing zeros, as gfs2_edit's
    /// `-z0` does (compression takes care of them otherwise); a block with
    /// nothing significant left is not saved. Whether a record was written.
    pub fn record(&mut self, blk: u64, data: &[u8]) -> io::Result<bool> {
        let mut len = data.len();
        if self.level == 0 {
            while len > 0 && data[len - 1] == 0 {
                len -= 1;
            }
        }
        if len == 0 {
            return Ok(false);
        }
        let siglen = u16::try_from(len).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("block {blk}: {len} bytes do not fit a savemeta record"),
            )
        })?;
        let mut head = [0u8; RECORD_HEAD];
        head[..8].copy_from_slice(&blk.to_be_bytes());
        head[8..].copy_from_slice(&siglen.to_be_bytes());
        self.write_all(&head)?;
        self.write_all(&data[..len])?;
        self.records += 1;
        Ok(true)
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// End the stream (the gzip trailer) and hand back the output.
    pub fn finish(self) -> io::Result<W> {
        match self.out {
            Sink::Plain(mut w) => {
                w.flush()?;
                Ok(w)
            }
            Sink::Gzip(g) => {
                let mut w = g.finish()?;
                w.flush()?;
                Ok(w)
            }
        }
    }
}

/// One saved block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub blk: u64,
    /// The significant bytes; the rest of the block is zero.
    pub data: Vec<u8>,
}

/// Reads a savemeta stream: the header (if any), the superblock, then the
/// other records one by one.
pub struct Reader {
    input: Box<dyn Read>,
    compression: Compression,
    header: Option<Header>,
    sb_record: Record,
    sb: Superblock,
    /// Bytes read ahead of the records not yet returned.
    pending: Vec<u8>,
    eof: bool,
}

/// Compression from the stream's first bytes (gfs2_edit tries bzip2, then
/// gzip, whose reader passes plain files through).
pub fn sniff(first: &[u8]) -> Compression {
    if first.starts_with(b"BZh") {
        Compression::Bzip2
    } else if first.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else {
        Compression::None
    }
}

/// Read until `buf` is full or the stream ends; how many bytes came.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Reader {
    /// Open a savemeta file.
    pub fn open(path: &Path) -> Result<Reader> {
        let what = format!("savemeta file {}", path.display());
        let mut f = File::open(path).map_err(io_err(what.clone()))?;
        let mut magic = [0u8; 3];
        let n = read_full(&mut f, &mut magic).map_err(io_err(what.clone()))?;
        let compression = sniff(&magic[..n]);
        let f = File::open(path).map_err(io_err(what))?;
        Self::from_reader(Box::new(BufReader::with_capacity(1 << 20, f)), compression)
    }

    /// Read a savemeta stream compressed as `compression`.
    pub fn from_reader(raw: Box<dyn Read>, compression: Compression) -> Result<Reader> {
        let mut input: Box<dyn Read> = match compression {
            Compression::None => raw,
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
            Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(raw)),
        };
        // Enough for the header, the scan window and a whole superblock
        // record.
        let mut first = vec![0u8; HEADER_SIZE + SB_SCAN_END + Superblock::SIZE + RECORD_HEAD];
        let n = read_full(&mut *input, &mut first)
            .map_err(io_err(format!("reading the {compression} stream")))?;
        first.truncate(n);
        let header = Header::parse(&first)?;
        let start = if header.is_some() { HEADER_SIZE } else { 0 };
        // The superblock record: its data begins with the GFS2 magic and
        // the superblock's type.
        let mut at = None;
        let mut p = start;
        while p <= SB_SCAN_END.max(start) && p + RECORD_HEAD + 8 <= first.len() {
            let d = p + RECORD_HEAD;
            if be32(&first, d) == GFS2_MAGIC && be32(&first, d + 4) == metatype::SB {
                at = Some(p);
                break;
            }
            p += 1;
        }
        let Some(p) = at else {
            return Err(MetaError::Corrupt(
                "no superblock found in the savemeta file (not a savemeta file, or damaged)".into(),
            ));
        };
        let blk = be64(&first, p);
        let siglen = usize::from(be16(&first, p + 8));
        let data_end = p + RECORD_HEAD + siglen;
        if siglen > Superblock::SIZE.max(4096) || data_end > first.len() {
            return Err(MetaError::Corrupt(format!(
                "superblock record of {siglen} bytes is cut short or too long"
            )));
        }
        let data = first[p + RECORD_HEAD..data_end].to_vec();
        let mut padded = data.clone();
        padded.resize(padded.len().max(Superblock::SIZE), 0);
        let sb = Superblock::parse(&padded)
            .and_then(|sb| sb.validate().map(|()| sb))
            .map_err(|e| {
                MetaError::Corrupt(format!("invalid superblock in the savemeta file: {e}"))
            })?;
        if siglen > sb.bsize as usize {
            return Err(MetaError::Corrupt(format!(
                "superblock record of {siglen} bytes is longer than a block ({})",
                sb.bsize
            )));
        }
        Ok(Reader {
            input,
            compression,
            header,
            sb_record: Record { blk, data },
            sb,
            pending: first[data_end..].to_vec(),
            eof: false,
        })
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The header, absent in files of the first format.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// The superblock's record, as saved.
    pub fn sb_record(&self) -> &Record {
        &self.sb_record
    }

    /// The saved superblock (validated: its block size can be trusted).
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// Make sure `pending` holds `n` bytes; false if the stream ends
    /// before.
    fn fill(&mut self, n: usize) -> Result<bool> {
        while self.pending.len() < n && !self.eof {
            let old = self.pending.len();
            let want = (n - old).max(1 << 16);
            self.pending.resize(old + want, 0);
            let got = read_full(&mut *self.input, &mut self.pending[old..])
                .map_err(io_err(format!("reading the {} stream", self.compression)));
            let got = match got {
                Ok(g) => g,
                Err(e) => {
                    self.pending.truncate(old);
                    return Err(e);
                }
            };
            self.pending.truncate(old + got);
            if got < want {
                self.eof = true;
            }
        }
        Ok(self.pending.len() >= n)
    }

    /// The next record after the superblock, `None` at the end of the
    /// stream. A record longer than the block size or cut short is an
    /// error.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if !self.fill(RECORD_HEAD)? {
            if self.pending.is_empty() {
                return Ok(None);
            }
            return Err(MetaError::Corrupt(format!(
                "the savemeta file ends inside a record header ({} stray bytes)",
                self.pending.len()
            )));
        }
        let blk = be64(&self.pending, 0);
        let siglen = usize::from(be16(&self.pending, 8));
        if siglen > self.sb.bsize as usize {
            return Err(MetaError::Corrupt(format!(
                "bad record length {siglen} for block {blk} (0x{blk:x}): the block size is {}",
                self.sb.bsize
            )));
        }
        if !self.fill(RECORD_HEAD + siglen)? {
            return Err(MetaError::Corrupt(format!(
                "the savemeta file ends inside the record of block {blk} (0x{blk:x})"
            )));
        }
        let data = self.pending[RECORD_HEAD..RECORD_HEAD + siglen].to_vec();
        self.pending.drain(..RECORD_HEAD + siglen);
        Ok(Some(Record { blk, data }))
    }
}

/// Open `path` for writing a savemeta stream, truncating a regular file
/// (a character device such as `/dev/null` is written as it is). A new
/// file is readable by its owner only, as gfs2_edit makes it: metadata
/// holds file names.
pub fn create_output(path: &Path) -> Result<BufWriter<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        // Truncated below, and only if a regular file (not /dev/null).
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("can't open {}", path.display())))?;
    let meta = f
        .metadata()
        .map_err(io_err(format!("stat {}", path.display())))?;
    if meta.is_file() {
        f.set_len(0)
            .map_err(io_err(format!("can't truncate {}", path.display())))?;
    }
    Ok(BufWriter::with_capacity(1 << 20, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb_block(bsize: u32) -> Vec<u8> {
        let sb = Superblock {
            bsize,
            bsize_shift: bsize.trailing_zeros(),
            ..Superblock::default()
        };
        let mut b = vec![0u8; Superblock::SIZE];
        sb.write(&mut b).expect("sb fits");
        b
    }

    fn stream(level: u32, records: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let h = Header {
            format: FORMAT,
            time: 1,
            fs_bytes: 1 << 30,
        };
        let mut w = Writer::new(Vec::new(), level, &h).expect("writer");
        w.record(16, &sb_block(4096)).expect("sb");
        for (blk, d) in records {
            w.record(*blk, d).expect("record");
        }
        w.finish().expect("finish")
    }

    fn read_all(bytes: Vec<u8>) -> Result<Vec<Record>> {
        let c = sniff(&bytes);
        let mut r = Reader::from_reader(Box::new(io::Cursor::new(bytes)), c)?;
        let mut out = vec![r.sb_record().clone()];
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }

    #[test]
    fn round_trip_plain_and_gzip() {
        let recs = vec![
            (100, vec![1, 2, 3, 0, 0]),
            (7, vec![0; 10]),
            (9, vec![5; 4096]),
        ];
        for level in [0, 1, 9] {
            let got = read_all(stream(level, &recs)).expect("reads back");
            assert_eq!(got[0].blk, 16);
            assert_eq!(got[1].blk, 100);
            if level == 0 {
                // Trailing zeros go, an all-zero block is not saved.
                assert_eq!(got[1].data, vec![1, 2, 3]);
                assert_eq!(got.len(), 3);
                assert_eq!(got[2].blk, 9);
            } else {
                assert_eq!(got[1].data, vec![1, 2, 3, 0, 0]);
                assert_eq!(got.len(), 4);
            }
        }
    }

    #[test]
    fn truncations_and_bit_flips_never_panic() {
        let recs: Vec<(u64, Vec<u8>)> = (0..40)
            .map(|i| (1000 + i, vec![(i as u8) | 1; 300 + i as usize]))
            .collect();
        for level in [0, 6] {
            let good = stream(level, &recs);
            for cut in (0..good.len()).step_by(7) {
                let r = read_all(good[..cut].to_vec());
                if let Ok(v) = r {
                    assert!(v.len() <= 41);
                }
            }
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            for _ in 0..2000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let mut bad = good.clone();
                let pos = (seed % bad.len() as u64) as usize;
                bad[pos] ^= 1 << (seed >> 60 & 7);
                let _ = read_all(bad);
            }
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert!(read_all(vec![]).is_err());
        assert!(read_all(vec![0x55; 5000]).is_err());
        // A record longer than the block size.
        let mut s = stream(0, &[]);
        s.extend_from_slice(&5u64.to_be_bytes());
        s.extend_from_slice(&5000u16.to_be_bytes());
        s.extend_from_slice(&[1; 5000]);
        assert!(read_all(s).is_err());
    }
}
