//! Growing a filesystem: resource groups beyond the last one join the rindex.
//!
//! `gfs2_grow` (offline through a `lock_nolock` mount of this library, or
//! online in the daemon that has the filesystem mounted) first writes the
//! new resource groups' headers and bitmaps past the end of the filesystem
//! and flushes the device. Nothing refers to those blocks yet: a crash at
//! that point leaves the old filesystem untouched, with some initialised
//! blocks beyond its end (gfs2-utils' `gfs2_grow` killed before it writes
//! the rindex leaves the same).
//!
//! [`Fs::append_rgrps`] then makes them part of the filesystem in **one**
//! transaction: the rindex file grows by their entries and the master statfs
//! file by their space (the kernel's `adjust_fs_space`, which its rindex
//! write path runs in the same transaction). The transaction is logged as a
//! whole, so after a crash the journal replay gives either the old rindex
//! and old totals or the new ones, never one without the other. The glocks
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
    /// Append `new` to the rindex and add its data blocks to the statfs
    /// totals, as one transaction. The new resource groups' blocks must be
    /// written and flushed already; they must follow the last existing one
    /// in ascending, non-overlapping order and lie on the device. Returns
    /// the number of data blocks the filesystem gained.
    pub fn append_rgrps(&self, new: &[Rindex]) -> Result<u64> {
        let w = self.writer().ok_or(FsError::Errno(libc::EROFS))?;
        if new.is_empty() {
            return Ok(0);
        }
        let bs = u64::from(self.superblock().bsize);
        let dev_blocks = self.device().size() / bs;
        let rindex_ino = self.rindex_inode();
        let (master, local) = {
            let wg = w.lock().unwrap_or_else(|e| e.into_inner());
            (wg.master_statfs, wg.local_statfs)
        };
        let dev = self.device().clone();
        let mut inodes = vec![rindex_ino, master];
        if local != 0 {
            inodes.push(local);
        }
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
            let mut l = if local != 0 {
                let b = tx.get(glock(local), local, mt::DI)?;
                StatfsChange::parse(&b[DINODE_SIZE..])?
            } else {
                StatfsChange::default()
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
            if local != 0 {
                l = StatfsChange::default();
                let lb = tx.get_mut(glock(local), local, mt::DI)?;
                l.write(&mut lb[DINODE_SIZE..])?;
            }
            let mut all = old;
            all.extend_from_slice(new);
            Ok((all, gained as u64))
        })?;
        // The allocator may use the new resource groups from now on.
        self.install_rindex(all);
        tracing::info!(
            rgrps = new.len(),
            blocks = gained,
            "resource groups added to the rindex"
        );
        Ok(gained)
    }
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
