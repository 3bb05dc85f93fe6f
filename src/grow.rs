//! Growing a filesystem: resource groups beyond the last one join the rindex.
//!
//! `gfs2_grow` (offline through a `lock_nolock` mount of this library, or
//! online through the daemon that has the filesystem mounted, see
//! [`crate::control`]) plans the new resource groups and hands them to
//! [`Fs::append_rgrps`], which holds the rindex inode's glock exclusively
//! throughout (no other node can grow at the same time, and a plan made
//! from an rindex that changed meanwhile is refused before anything is
//! written). It first writes the new groups' headers and bitmaps past the
//! end of the filesystem and flushes the device. Nothing refers to those
//! blocks yet: a crash at that point leaves the old filesystem untouched,
//! with some initialised blocks beyond its end (gfs2-utils' `gfs2_grow`
//! killed before it writes the rindex leaves the same; gfs2-utils' fsck
//! then adds them to the rindex itself).
//!
//! It then makes them part of the filesystem in **one** transaction: the rindex file grows by their entries and the master statfs
//! file by their space (the kernel's `adjust_fs_space`, which its rindex
//! write path runs in the same transaction). The transaction is logged as a
//! whole, so after a crash the journal replay gives either the old rindex
//! and old totals or the new ones, never one without the other. The log is
//! flushed before it returns, so a grow reported done survives a crash. The glocks
//! are those of the rindex and statfs inodes, held exclusively, as the
//! kernel's metafs write of the rindex holds them; other nodes (ours or the
//! kernel's) drop their cached rindex when they lose the rindex glock and
//! read the grown one afresh.

use crate::error::{FsError, Result};
use crate::format::{mt, Rindex, StatfsChange, DINODE_SIZE};
use crate::fs::Fs;
use crate::inode::write::{dinode, glock};
use crate::ops::write_tx;

impl Fs {
    /// Write the resource groups `new` (headers and empty bitmaps), then
    /// append them to the rindex and add their data blocks to the statfs
    /// totals in one transaction, all under the rindex glock held
    /// exclusively. They must follow the last existing one in ascending,
    /// non-overlapping order and lie on the device (whose size is looked
    /// at again first). Returns the number of data blocks the filesystem
    /// gained.
    pub fn append_rgrps(&self, new: &[Rindex]) -> Result<u64> {
        let w = self.writer().ok_or(FsError::Errno(libc::EROFS))?;
        if new.is_empty() {
            return Ok(0);
        }
        let bs = u64::from(self.superblock().bsize);
        let dev_blocks = self.device().refresh_size().map_err(|source| FsError::Io {
            what: "the device's size".into(),
            source,
        })? / bs;
        let rindex_ino = self.rindex_inode();
        let (master, local) = w.statfs_files();
        let dev = self.device().clone();
        // Our statfs_change file's glock is held for the whole mount: its
        // changes are read as they stand and taken off it as the
        // transaction joins the log (see `Fs::fold_own_statfs`).
        let inodes = [rindex_ino, master];
        let (all, gained) = self.modify(&inodes, |tx, al, _| {
            let di = dinode(tx, rindex_ino)?;
            let old: Vec<Rindex> = al.rindex.to_vec();
            if di.size != old.len() as u64 * Rindex::SIZE as u64 {
                return Err(FsError::corrupt(
                    rindex_ino,
                    format!(
                        "rindex size {} is not {} entries of {} bytes",
                        di.size,
                        old.len(),
                        Rindex::SIZE
                    ),
                ));
            }
            check_new(&old, new, dev_blocks)?;
            // Under the rindex glock, before the rindex names them.
            for (i, r) in new.iter().enumerate() {
                let skip = new.get(i + 1).map_or(0, |n| (n.addr - r.addr) as u32);
                let blocks = rgrp_blocks(bs as u32, r, skip)?;
                dev.write_at(&blocks, r.addr * bs)
                    .map_err(|source| FsError::Io {
                        what: format!("writing the new resource group at {}", r.addr),
                        source,
                    })?;
            }
            dev.flush().map_err(|source| FsError::Io {
                what: "flushing the new resource groups".into(),
                source,
            })?;
            let mut bytes = vec![0u8; new.len() * Rindex::SIZE];
            for (r, b) in new.iter().zip(bytes.chunks_exact_mut(Rindex::SIZE)) {
                r.write(b)?;
            }
            write_tx(tx, al, dev.as_ref(), rindex_ino, Some(di.size), &bytes)?;
            // The kernel's adjust_fs_space: whatever the rindex holds beyond
            // what statfs counts is new free space; our local changes are
            // folded into the master file on the way.
            let fs_total: u64 = old
                .iter()
                .chain(new.iter())
                .map(|r| u64::from(r.data))
                .sum();
            let l = match self.local_statfs(local) {
                Some(l) => l?,
                None => StatfsChange::default(),
            };
            let mb = tx.get_mut(glock(master), master, mt::DI)?;
            let mut m = StatfsChange::parse(&mb[DINODE_SIZE..])?;
            let counted = m.total.saturating_add(l.total);
            let gained = i64::try_from(fs_total)
                .unwrap_or(i64::MAX)
                .saturating_sub(counted)
                .max(0);
            m.total = counted.saturating_add(gained);
            m.free = m.free.saturating_add(l.free).saturating_add(gained);
            m.dinodes = m.dinodes.saturating_add(l.dinodes);
            m.write(&mut mb[DINODE_SIZE..])?;
            // Added to what the rindex's own allocations changed.
            tx.statfs.total -= l.total;
            tx.statfs.free -= l.free;
            tx.statfs.dinodes -= l.dinodes;
            let mut all = old;
            all.extend_from_slice(new);
            Ok((all, gained as u64))
        })?;
        // The allocator may use the new resource groups from now on.
        self.install_rindex(all);
        // Durable before the caller hears of it: `gfs2_grow` reports the
        // filesystem grown (online, the daemon answers ok) only once the
        // transaction is in the log.
        self.sync()?;
        tracing::info!(
            rgrps = new.len(),
            blocks = gained,
            "resource groups added to the rindex"
        );
        Ok(gained)
    }
}

/// The header and bitmap blocks of an empty resource group (`skip`: the
/// distance to the next one, 0 for the last), as gfs2-utils writes them.
pub fn rgrp_blocks(bsize: u32, r: &Rindex, skip: u32) -> Result<Vec<u8>> {
    use gfs2_ondisk::consts::{format, metatype};
    let bs = bsize as usize;
    let mut buf = vec![0u8; bs * r.length as usize];
    gfs2_ondisk::Rgrp {
        free: r.data,
        skip,
        data0: r.data0,
        data: r.data,
        bitbytes: r.bitbytes,
        ..gfs2_ondisk::Rgrp::default()
    }
    .write_with_crc(&mut buf[..bs])?;
    for b in buf.chunks_exact_mut(bs).skip(1) {
        gfs2_ondisk::MetaHeader::new(metatype::RB, format::RB).write(b)?;
    }
    Ok(buf)
}

/// The new entries must be well formed, follow the existing ones in order
/// without overlapping them or each other, and end on the device.
fn check_new(old: &[Rindex], new: &[Rindex], dev_blocks: u64) -> Result<()> {
    let bad = |why: String| FsError::Io {
        what: "the new resource groups".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
    };
    let mut next = old.last().map_or(0, |r| r.data0 + u64::from(r.data));
    for r in new {
        if r.length == 0 || r.data0 != r.addr + u64::from(r.length) {
            return Err(bad(format!(
                "resource group at {} has a bad length or data0",
                r.addr
            )));
        }
        if u64::from(r.bitbytes) * 4 < u64::from(r.data) {
            return Err(bad(format!(
                "resource group at {}: {} bitmap bytes cannot map {} blocks",
                r.addr, r.bitbytes, r.data
            )));
        }
        if r.addr < next {
            return Err(bad(format!(
                "resource group at {} overlaps what precedes it (ends at {next})",
                r.addr
            )));
        }
        next = r.data0 + u64::from(r.data);
        if next > dev_blocks {
            return Err(bad(format!(
                "resource group at {} ends at block {next}, beyond the device ({dev_blocks} blocks)",
                r.addr
            )));
        }
    }
    Ok(())
}
