//! Journal recovery: find a journal's head and replay it.
//!
//! Works on a [`BlockDevice`] and the list of a journal's block runs, with no
//! glocks or caches, so that fsck can use it as well as mount. The caller
//! holds whatever locks make that safe (at mount: the journal's glock EX).
//!
//! As the kernel's `recovery.c`: the head is found by a binary search over
//! the valid log headers (`lh_hash`, and `lh_crc` when non-zero, and
//! `lh_blkno` must match), refined by a forward scan; then the log from the
//! head's tail to the head is walked twice, first collecting revokes with
//! their position, then writing every logged metadata and journaled-data
//! block to its place unless a later revoke cancels it; last a clean log
//! header (`UNMOUNT | RECOVERY`) is written after the old head.

use crate::buf::read_block;
use crate::dev::BlockDevice;
use crate::format::{
    be64, log, log_header_crc, log_header_hash, mt, put32, put64, LogDescriptor, LogHeader,
    MetaHeader, LOG_DESC_SIZE, MAGIC, META_HEADER_SIZE,
};
use std::collections::HashMap;

/// A run of journal blocks: logical blocks `lblock..lblock+len` of the
/// journal file are disk blocks `phys..phys+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalExtent {
    /// First logical block.
    pub lblock: u64,
    /// First disk block.
    pub phys: u64,
    /// Number of blocks.
    pub len: u64,
}

/// Recovery errors.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The device failed.
    #[error("{0}")]
    Io(String),
    /// No valid log header in the journal.
    #[error("no valid log header found")]
    NoHeader,
    /// The log is inconsistent.
    #[error("journal block {lblock}: {why}")]
    Corrupt {
        /// Journal-relative block.
        lblock: u64,
        /// What is wrong.
        why: String,
    },
}

type Result<T> = std::result::Result<T, RecoveryError>;

/// A journal as recovery sees it.
pub struct JournalMap<'a> {
    dev: &'a dyn BlockDevice,
    bsize: u32,
    extents: &'a [JournalExtent],
    blocks: u64,
}

impl<'a> JournalMap<'a> {
    /// A journal made of `extents` (in logical order, contiguous from 0).
    pub fn new(dev: &'a dyn BlockDevice, bsize: u32, extents: &'a [JournalExtent]) -> Result<Self> {
        let mut next = 0u64;
        for e in extents {
            if e.lblock != next || e.len == 0 {
                return Err(RecoveryError::Corrupt {
                    lblock: next,
                    why: "journal extents are not contiguous".into(),
                });
            }
            next = next.saturating_add(e.len);
        }
        if next == 0 || next > u32::MAX as u64 {
            return Err(RecoveryError::Corrupt {
                lblock: 0,
                why: format!("journal of {next} blocks"),
            });
        }
        Ok(JournalMap {
            dev,
            bsize,
            extents,
            blocks: next,
        })
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Disk address of journal block `lblock`.
    pub fn phys(&self, lblock: u64) -> Option<u64> {
        let i = self.extents.partition_point(|e| e.lblock + e.len <= lblock);
        let e = self.extents.get(i)?;
        (lblock >= e.lblock && lblock < e.lblock + e.len).then(|| e.phys + (lblock - e.lblock))
    }

    fn read(&self, lblock: u64) -> Result<Vec<u8>> {
        let p = self.phys(lblock).ok_or(RecoveryError::Corrupt {
            lblock,
            why: "beyond the journal".into(),
        })?;
        read_block(self.dev, self.bsize, p).map_err(|e| RecoveryError::Io(e.to_string()))
    }

    fn incr(&self, b: u64) -> u64 {
        if b + 1 >= self.blocks {
            0
        } else {
            b + 1
        }
    }

    /// The log header at `lblock`, if the block is a valid one.
    pub fn log_header(&self, lblock: u64) -> Result<Option<LogHeader>> {
        let b = self.read(lblock)?;
        Ok(valid_log_header(&b, lblock))
    }
}

/// Check a log header block as the kernel's `__get_log_header` does.
pub fn valid_log_header(b: &[u8], lblock: u64) -> Option<LogHeader> {
    let h = MetaHeader::parse(b).ok()?;
    if h.magic != MAGIC || h.mh_type != mt::LH {
        return None;
    }
    let lh = LogHeader::parse(b).ok()?;
    if log_header_hash(b)? != lh.hash {
        return None;
    }
    if lh.crc != 0 && log_header_crc(b)? != lh.crc {
        return None;
    }
    if lh.blkno as u64 != lblock {
        return None;
    }
    Some(lh)
}

/// The head of a journal: its newest log header and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Journal block of the header.
    pub lblock: u64,
    /// The header.
    pub lh: LogHeader,
}

impl Head {
    /// The journal was unmounted cleanly: nothing to replay.
    pub fn is_clean(&self) -> bool {
        self.lh.flags & log::HEAD_UNMOUNT != 0
    }
}

fn find_good(j: &JournalMap<'_>, from: u64) -> Result<(u64, LogHeader)> {
    let mut b = from;
    loop {
        if let Some(lh) = j.log_header(b)? {
            return Ok((b, lh));
        }
        b = j.incr(b);
        if b == from {
            return Err(RecoveryError::NoHeader);
        }
    }
}

/// Find the head of the journal (`gfs2_find_jhead`).
pub fn find_head(dev: &dyn BlockDevice, bsize: u32, extents: &[JournalExtent]) -> Result<Head> {
    let j = JournalMap::new(dev, bsize, extents)?;
    let mut b1 = 0u64;
    let mut b2 = j.blocks() - 1;
    let mut lh1;
    loop {
        let bm0 = (b1 + b2) / 2;
        let (g1, l1) = find_good(&j, b1)?;
        let (gm, lm) = find_good(&j, bm0)?;
        b1 = g1;
        lh1 = l1;
        if b1 == gm || gm == b2 || gm < b1 || gm > b2 {
            break;
        }
        if l1.sequence <= lm.sequence {
            b1 = gm;
        } else {
            b2 = gm;
        }
    }
    // jhead_scan: walk forward while sequences keep increasing.
    let mut head = Head {
        lblock: b1,
        lh: lh1,
    };
    let mut b = b1;
    let mut steps = 0u64;
    loop {
        b = j.incr(b);
        steps += 1;
        if b == head.lblock || steps > j.blocks() {
            break;
        }
        let buf = j.read(b)?;
        let Ok(mh) = MetaHeader::parse(&buf) else {
            break;
        };
        if mh.magic != MAGIC {
            continue;
        }
        if mh.mh_type != mt::LH {
            continue;
        }
        let Some(lh) = valid_log_header(&buf, b) else {
            continue;
        };
        if lh.sequence <= head.lh.sequence {
            break;
        }
        head = Head { lblock: b, lh };
    }
    Ok(head)
}

/// What replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blocks written to their place.
    pub replayed: u64,
    /// Logged blocks skipped because a later revoke cancelled them.
    pub revoked: u64,
    /// Revoke records found.
    pub revokes: u64,
}

/// Addresses written into the clean log header after replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct CleanHeader {
    /// jid of the node doing the recovery (`mh_jid`).
    pub writer_jid: u32,
    /// The journal's dinode.
    pub jinode: u64,
    /// The journal owner's per-node statfs file.
    pub statfs_addr: u64,
    /// The journal owner's quota change file.
    pub quota_addr: u64,
    /// The master statfs file: the head's local statfs changes are added to
    /// it after replay (`recover_local_statfs`), then `statfs_addr` is zeroed.
    pub master_statfs_addr: u64,
}

/// Replay the journal from `head.lh.tail` to `head.lblock` and write a clean
/// header after it.
pub fn recover(
    dev: &dyn BlockDevice,
    bsize: u32,
    extents: &[JournalExtent],
    head: &Head,
    clean: &CleanHeader,
) -> Result<Stats> {
    let j = JournalMap::new(dev, bsize, extents)?;
    let tail = head.lh.tail as u64;
    if tail >= j.blocks() {
        return Err(RecoveryError::Corrupt {
            lblock: head.lblock,
            why: format!("tail {tail} beyond the journal"),
        });
    }
    let mut stats = Stats::default();
    let mut revokes: HashMap<u64, u64> = HashMap::new();
    for pass in 0..2 {
        walk(&j, tail, head.lblock, pass, &mut revokes, &mut stats)?;
    }
    dev.flush().map_err(|e| RecoveryError::Io(e.to_string()))?;
    recover_local_statfs(&j, head, clean)?;
    write_clean_header(&j, head, clean)?;
    Ok(stats)
}

/// Is a logged write of `blkno` at journal position `at` cancelled by a
/// revoke (`gfs2_revoke_check`)? Positions are compared along the log from
/// its tail, which may wrap around the end of the journal.
fn revoked(revokes: &HashMap<u64, u64>, blkno: u64, at: u64, tail: u64) -> bool {
    let Some(&r) = revokes.get(&blkno) else {
        return false;
    };
    let wrap = r < tail;
    let a = tail < at;
    let b = at < r;
    if wrap {
        a || b
    } else {
        a && b
    }
}

fn corrupt(lblock: u64, why: impl Into<String>) -> RecoveryError {
    RecoveryError::Corrupt {
        lblock,
        why: why.into(),
    }
}

fn walk(
    j: &JournalMap<'_>,
    tail: u64,
    head: u64,
    pass: u32,
    revokes: &mut HashMap<u64, u64>,
    stats: &mut Stats,
) -> Result<()> {
    let bsize = j.bsize as usize;
    let mut start = tail;
    let mut guard = 0u64;
    while start != head {
        guard += 1;
        if guard > j.blocks() {
            return Err(corrupt(start, "log walk does not reach the head"));
        }
        let b = j.read(start)?;
        let mh = MetaHeader::parse(&b).map_err(|_| corrupt(start, "short block"))?;
        if mh.magic != MAGIC {
            return Err(corrupt(start, "not a metadata block in the log"));
        }
        if mh.mh_type == mt::LH {
            if valid_log_header(&b, start).is_none() {
                return Err(corrupt(start, "bad log header inside the log"));
            }
            start = j.incr(start);
            continue;
        }
        if mh.mh_type != mt::LD {
            return Err(corrupt(
                start,
                format!("metadata type {} in the log", mh.mh_type),
            ));
        }
        let ld = LogDescriptor::parse(&b).map_err(|_| corrupt(start, "short descriptor"))?;
        if ld.length == 0 || ld.length as u64 > j.blocks() {
            return Err(corrupt(start, format!("descriptor length {}", ld.length)));
        }
        match (ld.ld_type, pass) {
            (log::DESC_REVOKE, 0) => {
                let mut left = ld.data1 as u64;
                let mut blk = start;
                let mut off = LOG_DESC_SIZE;
                let mut first = true;
                while left > 0 {
                    let rb = if first { b.clone() } else { j.read(blk)? };
                    if !first {
                        let h = MetaHeader::parse(&rb);
                        if h.is_err() || h.is_ok_and(|h| h.magic != MAGIC || h.mh_type != mt::LB) {
                            return Err(corrupt(blk, "revoke continuation is not an LB block"));
                        }
                    }
                    while off + 8 <= bsize && left > 0 {
                        let r = be64(&rb, off).ok_or_else(|| corrupt(blk, "short revoke"))?;
                        revokes.insert(r, blk);
                        stats.revokes += 1;
                        left -= 1;
                        off += 8;
                    }
                    first = false;
                    off = META_HEADER_SIZE;
                    blk = j.incr(blk);
                    if left > 0 && blk == start {
                        return Err(corrupt(start, "revoke list wraps the journal"));
                    }
                }
            }
            (log::DESC_METADATA, 1) | (log::DESC_JDATA, 1) => {
                let jdata = ld.ld_type == log::DESC_JDATA;
                let n = ld.data1 as usize;
                let per = if jdata { 16 } else { 8 };
                if LOG_DESC_SIZE + n * per > bsize || n as u64 >= ld.length as u64 {
                    return Err(corrupt(start, format!("descriptor with {n} blocks")));
                }
                let mut at = j.incr(start);
                for i in 0..n {
                    let p = LOG_DESC_SIZE + i * per;
                    let blkno = be64(&b, p).ok_or_else(|| corrupt(start, "short descriptor"))?;
                    let esc = if jdata {
                        be64(&b, p + 8).unwrap_or(0)
                    } else {
                        0
                    };
                    if revoked(revokes, blkno, at, tail) {
                        stats.revoked += 1;
                    } else {
                        let mut data = j.read(at)?;
                        if jdata && esc != 0 {
                            put32(&mut data, 0, MAGIC);
                        }
                        if !jdata {
                            let h = MetaHeader::parse(&data);
                            if h.is_err() || h.is_ok_and(|h| h.magic != MAGIC) {
                                return Err(corrupt(at, "logged metadata without a header"));
                            }
                        }
                        let off = blkno
                            .checked_mul(j.bsize as u64)
                            .filter(|o| o + j.bsize as u64 <= j.dev.size())
                            .ok_or_else(|| {
                                corrupt(at, format!("logged block {blkno} beyond the device"))
                            })?;
                        j.dev
                            .write_at(&data, off)
                            .map_err(|e| RecoveryError::Io(e.to_string()))?;
                        stats.replayed += 1;
                    }
                    at = j.incr(at);
                }
            }
            _ => {}
        }
        for _ in 0..ld.length {
            start = j.incr(start);
            if start == head {
                break;
            }
        }
    }
    Ok(())
}

/// Fold the statfs changes recorded in the head into the master statfs file
/// and zero the journal owner's local changes, as the kernel does after
/// replay. Both files are stuffed dinodes holding a `gfs2_statfs_change`
/// after the dinode header.
fn recover_local_statfs(j: &JournalMap<'_>, head: &Head, clean: &CleanHeader) -> Result<()> {
    let lh = &head.lh;
    if lh.local_total == 0 && lh.local_free == 0 && lh.local_dinodes == 0 {
        return Ok(());
    }
    if clean.master_statfs_addr == 0 || clean.statfs_addr == 0 {
        return Ok(());
    }
    let io = |e: crate::error::FsError| RecoveryError::Io(e.to_string());
    let bs = j.bsize as u64;
    let sc = crate::format::DINODE_SIZE;
    let mut m = read_block(j.dev, j.bsize, clean.master_statfs_addr).map_err(io)?;
    crate::buf::check_header(&m, clean.master_statfs_addr, mt::DI).map_err(io)?;
    for (i, d) in [lh.local_total, lh.local_free, lh.local_dinodes]
        .into_iter()
        .enumerate()
    {
        let v = be64(&m, sc + 8 * i).unwrap_or(0).wrapping_add_signed(d);
        put64(&mut m, sc + 8 * i, v);
    }
    let mut l = read_block(j.dev, j.bsize, clean.statfs_addr).map_err(io)?;
    crate::buf::check_header(&l, clean.statfs_addr, mt::DI).map_err(io)?;
    l[sc..sc + 24].fill(0);
    let w = |addr: u64, b: &[u8]| {
        j.dev
            .write_at(b, addr * bs)
            .map_err(|e| RecoveryError::Io(e.to_string()))
    };
    w(clean.master_statfs_addr, &m)?;
    w(clean.statfs_addr, &l)?;
    j.dev.flush().map_err(|e| RecoveryError::Io(e.to_string()))
}

/// Build a log header block (`gfs2_write_log_header`).
#[allow(clippy::too_many_arguments)]
pub fn build_log_header(
    bsize: u32,
    jid: u32,
    seq: u64,
    tail: u32,
    lblock: u32,
    flags: u32,
    addr: u64,
    clean: &CleanHeader,
    local: [i64; 3],
) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let lh = LogHeader {
        header: MetaHeader {
            jid,
            ..MetaHeader::new(mt::LH, gfs2_ondisk::consts::format::LH)
        },
        sequence: seq,
        flags,
        tail,
        blkno: lblock,
        nsec: now.subsec_nanos(),
        sec: now.as_secs(),
        addr,
        jinode: clean.jinode,
        statfs_addr: clean.statfs_addr,
        quota_addr: clean.quota_addr,
        local_total: local[0],
        local_free: local[1],
        local_dinodes: local[2],
        ..LogHeader::default()
    };
    let mut b = vec![0u8; bsize as usize];
    // Only a block shorter than a log header fails, and bsize >= 512.
    let _ = lh.write_block(&mut b);
    b
}

fn write_clean_header(j: &JournalMap<'_>, head: &Head, clean: &CleanHeader) -> Result<()> {
    let lblock = j.incr(head.lblock);
    let addr = j
        .phys(lblock)
        .ok_or_else(|| corrupt(lblock, "beyond the journal"))?;
    let b = build_log_header(
        j.bsize,
        clean.writer_jid,
        head.lh.sequence.wrapping_add(1),
        lblock as u32,
        lblock as u32,
        log::HEAD_UNMOUNT | log::HEAD_RECOVERY,
        addr,
        clean,
        [0; 3],
    );
    j.dev
        .write_at(&b, addr * j.bsize as u64)
        .and_then(|_| j.dev.flush())
        .map_err(|e| RecoveryError::Io(e.to_string()))
}
