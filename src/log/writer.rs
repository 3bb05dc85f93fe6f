//! Writing this node's journal: log flushes and the clean-unmount header.
//!
//! A flush writes, in order: the data blocks are already on the device
//! (ordered mode: the device is flushed first), then log descriptors each
//! followed by copies of the metadata blocks they list, then a log header
//! with the kernel's two checksums, a device flush, the metadata in place,
//! and another device flush. Because every flush checkpoints completely, the
//! next header's tail is its own transaction: recovery (ours or the
//! kernel's) replays at most the last flush, which is idempotent, so freed
//! blocks need no revoke records.

use super::recovery::{self, build_log_header, CleanHeader, JournalExtent, JournalMap};
use crate::buf::Block;
use crate::dev::BlockDevice;
use crate::error::{FsError, Result};
use crate::format::{log, LogDescriptor, MetaHeader};
use gfs2_ondisk::consts::{format, lh, metatype};
use std::sync::Arc;

/// This node's journal, positioned after its head.
pub struct LogWriter {
    dev: Arc<dyn BlockDevice>,
    bsize: u32,
    extents: Vec<JournalExtent>,
    blocks: u64,
    /// Next journal block to write.
    next: u64,
    /// Sequence number of the last header written.
    seq: u64,
    hdr: CleanHeader,
    /// Nothing written since the last clean header.
    clean: bool,
}

fn io(what: &str, e: std::io::Error) -> FsError {
    FsError::Io {
        what: what.to_string(),
        source: e,
    }
}

impl LogWriter {
    /// Open journal `extents` for writing after its current head.
    pub fn open(
        dev: Arc<dyn BlockDevice>,
        bsize: u32,
        extents: Vec<JournalExtent>,
        hdr: CleanHeader,
    ) -> Result<Self> {
        let head = recovery::find_head(dev.as_ref(), bsize, &extents)
            .map_err(|e| FsError::Mount(format!("journal {}: {e}", hdr.writer_jid)))?;
        if !head.is_clean() {
            return Err(FsError::Mount(format!(
                "journal {} is dirty and was not replayed; mount read-only or let recovery run",
                hdr.writer_jid
            )));
        }
        let blocks = JournalMap::new(dev.as_ref(), bsize, &extents)
            .map_err(|e| FsError::Mount(format!("journal {}: {e}", hdr.writer_jid)))?
            .blocks();
        Ok(LogWriter {
            dev,
            bsize,
            extents,
            blocks,
            next: (head.lblock + 1) % blocks,
            seq: head.lh.sequence,
            hdr,
            clean: head.is_clean(),
        })
    }

    /// Journal blocks a flush of `n` metadata blocks needs.
    pub fn blocks_needed(&self, n: usize) -> u64 {
        let per = self.per_descriptor();
        let descs = n.div_ceil(per) as u64;
        descs + n as u64 + 1
    }

    /// How many metadata blocks one flush may carry.
    pub fn capacity(&self) -> usize {
        // Keep a margin: a flush never laps the journal.
        let usable = self.blocks.saturating_sub(2) / 2;
        let per = self.per_descriptor() as u64;
        (usable * per / (per + 1)).saturating_sub(1) as usize
    }

    fn per_descriptor(&self) -> usize {
        (self.bsize as usize - LogDescriptor::SIZE) / 8
    }

    fn phys(&self, lblock: u64) -> Result<u64> {
        let i = self.extents.partition_point(|e| e.lblock + e.len <= lblock);
        self.extents
            .get(i)
            .filter(|e| lblock >= e.lblock && lblock < e.lblock + e.len)
            .map(|e| e.phys + (lblock - e.lblock))
            .ok_or_else(|| FsError::corrupt(lblock, "journal block beyond the journal"))
    }

    fn write_blocks(&self, writes: &[(u64, &[u8])], what: &str) -> Result<()> {
        let bs = self.bsize as u64;
        let mut i = 0;
        while i < writes.len() {
            let mut j = i + 1;
            while j < writes.len() && writes[j].0 == writes[j - 1].0 + 1 {
                j += 1;
            }
            let mut buf = Vec::with_capacity((j - i) * self.bsize as usize);
            for w in &writes[i..j] {
                buf.extend_from_slice(w.1);
            }
            self.dev
                .write_at(&buf, writes[i].0 * bs)
                .map_err(|e| io(what, e))?;
            i = j;
        }
        Ok(())
    }

    /// Write `blocks` (sorted by address) through the journal and in place.
    pub fn flush(&mut self, blocks: &[(u64, Block)]) -> Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        if blocks.len() > self.capacity() {
            return Err(FsError::Errno(libc::EFBIG));
        }
        // Ordered data: file data written so far reaches the disk before
        // the metadata that points at it.
        self.dev.flush().map_err(|e| io("flushing data", e))?;
        let bs = self.bsize as usize;
        let start = self.next;
        let mut at = start;
        let mut jblocks: Vec<(u64, Vec<u8>)> = Vec::new();
        for chunk in blocks.chunks(self.per_descriptor()) {
            let mut d = vec![0u8; bs];
            let ld = LogDescriptor {
                header: MetaHeader {
                    jid: self.hdr.writer_jid,
                    ..MetaHeader::new(metatype::LD, format::LD)
                },
                ld_type: log::DESC_METADATA,
                length: chunk.len() as u32 + 1,
                data1: chunk.len() as u32,
                ..LogDescriptor::default()
            };
            ld.write(&mut d)?;
            for (i, (blkno, _)) in chunk.iter().enumerate() {
                let off = LogDescriptor::SIZE + 8 * i;
                d[off..off + 8].copy_from_slice(&blkno.to_be_bytes());
            }
            jblocks.push((self.phys(at)?, d));
            at = (at + 1) % self.blocks;
            for (_, data) in chunk {
                jblocks.push((self.phys(at)?, data.to_vec()));
                at = (at + 1) % self.blocks;
            }
        }
        let hdr_lblock = at;
        let addr = self.phys(hdr_lblock)?;
        let seq = self.seq + 1;
        let h = build_log_header(
            self.bsize,
            self.hdr.writer_jid,
            seq,
            start as u32,
            hdr_lblock as u32,
            lh::FLUSH_NORMAL,
            addr,
            &self.hdr,
        );
        jblocks.push((addr, h));
        let mut sorted: Vec<(u64, &[u8])> =
            jblocks.iter().map(|(a, b)| (*a, b.as_slice())).collect();
        sorted.sort_by_key(|(a, _)| *a);
        self.write_blocks(&sorted, "writing the journal")?;
        self.dev
            .flush()
            .map_err(|e| io("flushing the journal", e))?;
        self.seq = seq;
        self.next = (hdr_lblock + 1) % self.blocks;
        self.clean = false;
        let inplace: Vec<(u64, &[u8])> = blocks.iter().map(|(a, b)| (*a, &b[..])).collect();
        self.write_blocks(&inplace, "writing metadata in place")?;
        self.dev.flush().map_err(|e| io("flushing metadata", e))?;
        Ok(())
    }

    /// Write an unmount header: the journal is clean.
    pub fn write_unmount(&mut self) -> Result<()> {
        if self.clean {
            return Ok(());
        }
        let lblock = self.next;
        let addr = self.phys(lblock)?;
        let seq = self.seq + 1;
        let h = build_log_header(
            self.bsize,
            self.hdr.writer_jid,
            seq,
            lblock as u32,
            lblock as u32,
            log::HEAD_UNMOUNT | lh::FLUSH_SHUTDOWN,
            addr,
            &self.hdr,
        );
        self.dev
            .write_at(&h, addr * self.bsize as u64)
            .map_err(|e| io("writing the unmount header", e))?;
        self.dev.flush().map_err(|e| io("flushing", e))?;
        self.seq = seq;
        self.next = (lblock + 1) % self.blocks;
        self.clean = true;
        Ok(())
    }
}
