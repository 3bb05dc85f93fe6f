//! Writing this node's journal: log flushes, checkpoints and the
//! clean-unmount header.
//!
//! As in the kernel, a flush only writes the log: log descriptors each
//! followed by copies of the metadata blocks they list, and revoke records
//! for blocks freed since the last flush that earlier flushes logged; one
//! device flush makes them and the file data written before them durable
//! (ordered mode); then the log header with the kernel's two checksums, and
//! a device flush for it (the kernel's PREFLUSH and FUA of the header). The
//! logged blocks stay pinned in the cache (the "AIL") and are written in
//! place later by a *checkpoint*: when the journal fills up, when too many
//! blocks are pinned, and at unmount. A checkpoint writes the pinned blocks
//! in place, flushes, and records the new tail in a log header of its own,
//! so recovery never replays a block older than the tail.
//!
//! Revokes matter because a logged metadata block may be freed and reused
//! for file data before the checkpoint: without a revoke, replay would write
//! the old metadata over the new data.

use super::recovery::{self, build_log_header, CleanHeader, JournalExtent, JournalMap};
use crate::buf::Block;
use crate::dev::BlockDevice;
use crate::error::{FsError, Result};
use crate::format::{log, LogDescriptor, MetaHeader, MAGIC, META_HEADER_SIZE};
use gfs2_ondisk::consts::{format, lh, metatype};
use std::collections::HashSet;
use std::sync::Arc;

/// This node's journal, positioned after its head.
pub struct LogWriter {
    dev: Arc<dyn BlockDevice>,
    bsize: u32,
    extents: Vec<JournalExtent>,
    blocks: u64,
    /// Next journal block to write.
    next: u64,
    /// Where recovery would start: the first block of the oldest flush
    /// not yet checkpointed (or the last header when there is none).
    tail: u64,
    /// Sequence number of the last header written.
    seq: u64,
    hdr: CleanHeader,
    /// This node's statfs changes not yet folded into the master statfs, as
    /// of the blocks logged so far: every header carries them.
    local: [i64; 3],
    /// Blocks with a copy in the live part of the log (tail to head).
    logged: HashSet<u64>,
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
            tail: head.lblock,
            seq: head.lh.sequence,
            hdr,
            local: [0; 3],
            logged: HashSet::new(),
            clean: head.is_clean(),
        })
    }

    /// Journal blocks a flush of `n` blocks (metadata or journaled data) and
    /// `r` revokes needs, at most.
    pub fn blocks_needed(&self, n: usize, r: usize) -> u64 {
        // Journaled data takes two words per block in its descriptors;
        // count every block at that rate (and one more descriptor for the
        // split between the kinds).
        let per = self.per_descriptor() / 2;
        let descs = n.div_ceil(per) as u64 + 1;
        descs + n as u64 + self.revoke_blocks(r) + 1
    }

    /// Blocks a list of `r` revokes takes: a descriptor, then `LB` blocks.
    fn revoke_blocks(&self, r: usize) -> u64 {
        if r == 0 {
            return 0;
        }
        let first = self.per_descriptor();
        let per_lb = (self.bsize as usize - META_HEADER_SIZE) / 8;
        1 + r.saturating_sub(first).div_ceil(per_lb) as u64
    }

    /// Journal blocks between the tail and the next block to write.
    pub fn used(&self) -> u64 {
        (self.next + self.blocks - self.tail) % self.blocks
    }

    /// Whether a flush of `n` blocks and `r` revokes fits before the tail
    /// (one block is kept for the checkpoint header).
    pub fn has_room(&self, n: usize, r: usize) -> bool {
        self.used() + self.blocks_needed(n, r) + 2 <= self.blocks
    }

    /// Whether the live log is past half the journal: time to checkpoint.
    pub fn wants_checkpoint(&self) -> bool {
        self.used() > self.blocks / 2
    }

    /// Is there a copy of `blkno` in the live log (so freeing it needs a
    /// revoke)?
    pub fn is_logged(&self, blkno: u64) -> bool {
        self.logged.contains(&blkno)
    }

    /// This node's statfs changes not yet in the master statfs
    /// (total, free, dinodes), written into every header from now on.
    pub fn set_local_statfs(&mut self, local: [i64; 3]) {
        self.local = local;
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

    /// Log `blocks` (sorted by address) and `revokes`; the blocks are then
    /// durable in the journal and must stay pinned until [`Self::checkpoint`]
    /// writes them in place. The caller makes room first ([`Self::has_room`]).
    ///
    /// `jdata` are data blocks of journaled-data files: logged with JDATA
    /// descriptors, a block that starts like metadata (the GFS2 magic) is
    /// *escaped*: logged with its magic zeroed and flagged, so replay can
    /// tell it from a descriptor and restores it.
    pub fn flush(
        &mut self,
        blocks: &[(u64, Block)],
        jdata: &[(u64, Block)],
        revokes: &[u64],
    ) -> Result<()> {
        let n = blocks.len() + jdata.len();
        if n == 0 && revokes.is_empty() {
            return Ok(());
        }
        if n > self.capacity() || !self.has_room(n, revokes.len()) {
            return Err(FsError::Errno(libc::EFBIG));
        }
        let bs = self.bsize as usize;
        let start = self.next;
        let mut at = start;
        let mut jblocks: Vec<(u64, Vec<u8>)> = Vec::new();
        let descriptor = |ld_type: u32, length: usize, count: usize| -> Result<Vec<u8>> {
            let mut d = vec![0u8; bs];
            LogDescriptor {
                header: MetaHeader {
                    jid: self.hdr.writer_jid,
                    ..MetaHeader::new(metatype::LD, format::LD)
                },
                ld_type,
                length: length as u32,
                data1: count as u32,
                ..LogDescriptor::default()
            }
            .write(&mut d)?;
            Ok(d)
        };
        for chunk in blocks.chunks(self.per_descriptor()) {
            let mut d = descriptor(log::DESC_METADATA, chunk.len() + 1, chunk.len())?;
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
        for chunk in jdata.chunks(self.per_descriptor() / 2) {
            let mut d = descriptor(log::DESC_JDATA, chunk.len() + 1, chunk.len())?;
            let mut copies = Vec::with_capacity(chunk.len());
            for (i, (blkno, data)) in chunk.iter().enumerate() {
                let off = LogDescriptor::SIZE + 16 * i;
                let escaped = data.get(..4) == Some(&MAGIC.to_be_bytes()[..]);
                d[off..off + 8].copy_from_slice(&blkno.to_be_bytes());
                d[off + 8..off + 16].copy_from_slice(&u64::from(escaped).to_be_bytes());
                let mut copy = data.to_vec();
                if escaped {
                    copy[..4].fill(0);
                }
                copies.push(copy);
            }
            jblocks.push((self.phys(at)?, d));
            at = (at + 1) % self.blocks;
            for copy in copies {
                jblocks.push((self.phys(at)?, copy));
                at = (at + 1) % self.blocks;
            }
        }
        if !revokes.is_empty() {
            let nblocks = self.revoke_blocks(revokes.len()) as usize;
            let mut cur = descriptor(log::DESC_REVOKE, nblocks, revokes.len())?;
            let mut off = LogDescriptor::SIZE;
            for r in revokes {
                if off + 8 > bs {
                    jblocks.push((self.phys(at)?, cur));
                    at = (at + 1) % self.blocks;
                    cur = vec![0u8; bs];
                    MetaHeader {
                        jid: self.hdr.writer_jid,
                        ..MetaHeader::new(metatype::LB, format::LB)
                    }
                    .write(&mut cur)?;
                    off = META_HEADER_SIZE;
                }
                cur[off..off + 8].copy_from_slice(&r.to_be_bytes());
                off += 8;
            }
            jblocks.push((self.phys(at)?, cur));
            at = (at + 1) % self.blocks;
        }
        let hdr_lblock = at;
        let addr = self.phys(hdr_lblock)?;
        let seq = self.seq + 1;
        // With nothing live in the log, replay can start at this flush.
        let tail = if self.logged.is_empty() {
            start
        } else {
            self.tail
        };
        let h = build_log_header(
            self.bsize,
            self.hdr.writer_jid,
            seq,
            tail as u32,
            hdr_lblock as u32,
            lh::FLUSH_NORMAL,
            addr,
            &self.hdr,
            self.local,
        );
        let mut sorted: Vec<(u64, &[u8])> =
            jblocks.iter().map(|(a, b)| (*a, b.as_slice())).collect();
        sorted.sort_by_key(|(a, _)| *a);
        self.write_blocks(&sorted, "writing the journal")?;
        // Ordered data and the log's blocks: the file data written so far
        // and the descriptors and copies reach the disk before the header
        // that makes them part of the log (the kernel's header goes with
        // PREFLUSH), then the header itself durably (its FUA).
        self.dev
            .flush()
            .map_err(|e| io("flushing data and the journal", e))?;
        self.write_blocks(&[(addr, h.as_slice())], "writing the log header")?;
        self.dev
            .flush()
            .map_err(|e| io("flushing the log header", e))?;
        self.seq = seq;
        self.tail = tail;
        self.next = (hdr_lblock + 1) % self.blocks;
        self.clean = false;
        for r in revokes {
            self.logged.remove(r);
        }
        self.logged
            .extend(blocks.iter().chain(jdata).map(|(b, _)| *b));
        Ok(())
    }

    /// Write the pinned blocks `ail` (every block logged since the last
    /// checkpoint, in their latest logged versions) in place, then record
    /// in a new header that the log before it is no longer needed.
    pub fn checkpoint(&mut self, ail: &[(u64, Block)]) -> Result<()> {
        if self.logged.is_empty() && ail.is_empty() {
            return Ok(());
        }
        let inplace: Vec<(u64, &[u8])> = ail.iter().map(|(a, b)| (*a, &b[..])).collect();
        self.write_blocks(&inplace, "writing metadata in place")?;
        self.dev.flush().map_err(|e| io("flushing metadata", e))?;
        let lblock = self.next;
        self.write_header(lblock, lh::FLUSH_NORMAL | lh::LFC_AIL_FLUSH)?;
        self.tail = lblock;
        self.logged.clear();
        Ok(())
    }

    /// Write a header at `lblock` whose tail is itself (nothing before it
    /// needs replay), and flush.
    fn write_header(&mut self, lblock: u64, flags: u32) -> Result<()> {
        let addr = self.phys(lblock)?;
        let seq = self.seq + 1;
        let h = build_log_header(
            self.bsize,
            self.hdr.writer_jid,
            seq,
            lblock as u32,
            lblock as u32,
            flags,
            addr,
            &self.hdr,
            self.local,
        );
        self.dev
            .write_at(&h, addr * self.bsize as u64)
            .map_err(|e| io("writing a log header", e))?;
        self.dev.flush().map_err(|e| io("flushing", e))?;
        self.seq = seq;
        self.next = (lblock + 1) % self.blocks;
        Ok(())
    }

    /// Write an unmount header: the journal is clean. Everything logged
    /// must have been checkpointed first.
    pub fn write_unmount(&mut self) -> Result<()> {
        self.write_clean(lh::FLUSH_SHUTDOWN)
    }

    /// Write a clean header for a freeze (`FLUSH_FREEZE`): as at unmount,
    /// a node thawing after a freeze finds its journal clean, and the log
    /// goes on after it.
    pub fn write_freeze(&mut self) -> Result<()> {
        self.write_clean(lh::FLUSH_FREEZE | lh::LFC_FREEZE_GO_SYNC)
    }

    fn write_clean(&mut self, why: u32) -> Result<()> {
        if self.clean {
            return Ok(());
        }
        if !self.logged.is_empty() {
            return Err(FsError::Io {
                what: "unmount header".into(),
                source: std::io::Error::other("logged blocks not yet written in place"),
            });
        }
        let lblock = self.next;
        self.write_header(lblock, log::HEAD_UNMOUNT | why)?;
        self.tail = lblock;
        self.clean = true;
        Ok(())
    }
}
