//! Log flushes and durability: the snapshot of the dirty set a flush
//! writes, group commit of fsyncs, checkpoints, the statfs folds, and the
//! flushes a glock demotion, a freeze and an unmount need.

use super::*;

/// Pinned (logged, not yet in place) blocks beyond which a flush is
/// followed by a checkpoint, bounding memory.
const MAX_PINNED: usize = 16384;

/// Inodes remembered in `Writer::changed` beyond which those a flush made
/// durable are forgotten (an fsync of a forgotten one flushes what is
/// pending, as a plain sync does).
const MAX_CHANGED: usize = 4096;

/// What one log flush writes, taken from the dirty set while the flush
/// lock is held exclusively (no transaction half done).
struct FlushSnapshot {
    /// Transactions joined when it was taken.
    joined: u64,
    blocks: Vec<(u64, crate::buf::Block)>,
    jdata: Vec<(u64, crate::buf::Block)>,
    /// Blocks freed since the last flush (reusable once it is durable).
    freed: Vec<u64>,
    /// This node's statfs changes as of the snapshot.
    local_statfs: Option<[i64; 3]>,
}

impl Fs {
    /// Flush the log now: wait for the transactions under way, keep new
    /// ones out while the snapshot is taken.
    pub(super) fn flush_now(&self, w: &Writer) -> Result<()> {
        let mut log = w.log();
        self.flush_log(w, &mut log).map(|_| ())
    }

    /// A log flush with the log held (not the flush lock): the flush lock
    /// is taken exclusively for the snapshot only, so transactions run on
    /// while the journal is written; `true` if it wrote anything.
    fn flush_log(&self, w: &Writer, ls: &mut LogState) -> Result<bool> {
        let x = w.flush_exclusive();
        let snap = self.flush_snapshot(w, ls);
        drop(x);
        self.flush_write(w, ls, snap)
    }

    /// The log flush proper, with the log and the flush lock (exclusively)
    /// held; `true` if it wrote anything.
    fn flush_locked(&self, w: &Writer, ls: &mut LogState) -> Result<bool> {
        let snap = self.flush_snapshot(w, ls);
        self.flush_write(w, ls, snap)
    }

    /// What the next flush writes (see [`FlushSnapshot`]); the flush lock
    /// is held exclusively and the log is held. Freed blocks are dropped
    /// from the cache now: nothing may log them or write them in place.
    fn flush_snapshot(&self, w: &Writer, _log_held: &LogState) -> FlushSnapshot {
        let cache = self.cache();
        let joined = *w.joined();
        let mut freed: Vec<u64> = w.busy().iter().copied().collect();
        freed.sort_unstable();
        for &b in &freed {
            cache.drop_freed(b);
        }
        let (jdata, blocks): (Vec<_>, Vec<_>) = cache
            .dirty_blocks()
            .into_iter()
            .partition(|(b, _)| cache.is_jdata(*b));
        let local_statfs = (w.local_statfs != 0)
            .then(|| blocks.iter().find(|(b, _)| *b == w.local_statfs))
            .flatten()
            .and_then(|(_, b)| StatfsChange::parse(b.get(DINODE_SIZE..).unwrap_or(&[])).ok())
            .map(|sc| [sc.total, sc.free, sc.dinodes]);
        FlushSnapshot {
            joined,
            blocks,
            jdata,
            freed,
            local_statfs,
        }
    }

    /// Write `snap` to the journal (the log held, the flush lock not
    /// needed: transactions that join meanwhile change other versions of
    /// the blocks, which stay dirty for the next flush); `true` if it
    /// wrote anything.
    fn flush_write(&self, w: &Writer, ls: &mut LogState, snap: FlushSnapshot) -> Result<bool> {
        let cache = self.cache();
        let FlushSnapshot {
            joined,
            blocks,
            jdata,
            freed,
            local_statfs,
        } = snap;
        let mut revokes: Vec<u64> = freed
            .iter()
            .copied()
            .filter(|b| ls.log.is_logged(*b))
            .collect();
        if blocks.is_empty() && jdata.is_empty() && revokes.is_empty() {
            Self::forget_freed(w, &freed);
            Self::made_durable(w, ls, joined);
            return Ok(false);
        }
        if !ls.log.has_room(blocks.len() + jdata.len(), revokes.len()) {
            self.checkpoint_locked(ls)?;
            // Nothing is live in the log any more: no revokes needed.
            revokes.retain(|b| ls.log.is_logged(*b));
        }
        if let Some(l) = local_statfs {
            ls.log.set_local_statfs(l);
        }
        ls.log.flush(&blocks, &jdata, &revokes)?;
        cache.logged(&blocks);
        cache.logged(&jdata);
        Self::forget_freed(w, &freed);
        Self::made_durable(w, ls, joined);
        if ls.log.wants_checkpoint() || cache.pinned_len() > MAX_PINNED {
            self.checkpoint_locked(ls)?;
        }
        Ok(true)
    }

    /// The blocks a flush made free durably may be allocated again.
    fn forget_freed(w: &Writer, freed: &[u64]) {
        if freed.is_empty() {
            return;
        }
        let mut busy = w.busy();
        for b in freed {
            busy.remove(b);
        }
    }

    /// Transactions up to `joined` are durable.
    fn made_durable(w: &Writer, ls: &mut LogState, joined: u64) {
        ls.durable = ls.durable.max(joined);
        let mut c = w.changed();
        if c.len() > MAX_CHANGED {
            let durable = ls.durable;
            c.retain(|_, &mut n| n > durable);
        }
    }

    /// Write every logged block in place and move the log's tail past them.
    fn checkpoint_locked(&self, ls: &mut LogState) -> Result<()> {
        let ail = self.cache().pinned_blocks();
        ls.log.checkpoint(&ail)?;
        self.cache().unpin(&ail);
        Ok(())
    }

    /// Fold this node's statfs changes into the master statfs file and zero
    /// them, in one transaction under the master file's glock (the
    /// kernel's `gfs2_statfs_sync`, run every `statfs_quantum` and at
    /// unmount).
    pub fn statfs_sync(&self) -> Result<()> {
        self.fold_own_statfs(true)
    }

    /// [`Fs::statfs_sync`]; `freeze` as in [`Fs::modify_as`]. The local
    /// changes read are added to the master file and taken off the local
    /// file as the transaction joins, so that changes other transactions
    /// join meanwhile stay in the local file.
    fn fold_own_statfs(&self, freeze: bool) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        let (master, local) = (w.master_statfs, w.local_statfs);
        if local == 0 || master == 0 {
            return Ok(());
        }
        self.modify_as(&[master], freeze, None, |tx, _, _| {
            let l = match self.local_statfs(local) {
                Some(l) => l?,
                None => return Ok(()),
            };
            if l == StatfsChange::default() {
                return Ok(());
            }
            add_to_master(tx, master, &l)?;
            tx.statfs = crate::log::trans::StatfsDelta {
                total: -l.total,
                free: -l.free,
                dinodes: -l.dinodes,
            };
            Ok(())
        })
    }

    /// A dead node's journal was replayed: its local statfs changes (its
    /// `statfs_change` file as the replay left it) go into the master file
    /// like ours, under both files' glocks, which are free again now.
    pub(crate) fn fold_dead_statfs(&self, jid: u32) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        let master = w.master_statfs;
        let local = self.per_node_file(&format!("statfs_change{jid}"));
        if local == 0 || master == 0 || local == w.local_statfs {
            return Ok(());
        }
        self.modify_as(&[master, local], true, None, |tx, _, _| {
            let lb = tx.get(glock(local), local, mt::DI)?;
            let mut l = StatfsChange::parse(&lb[DINODE_SIZE..])?;
            if l == StatfsChange::default() {
                return Ok(());
            }
            add_to_master(tx, master, &l)?;
            l = StatfsChange::default();
            let b = tx.get_mut(glock(local), local, mt::DI)?;
            l.write(&mut b[DINODE_SIZE..])?;
            Ok(())
        })
    }

    /// Make everything done so far durable (syncfs, the commit timer).
    /// Group commit: a caller whose changes a flush that started after
    /// them has made durable returns at once, so syncs that wait for the
    /// log together share one flush.
    pub fn sync(&self) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        let mine = *w.joined();
        self.sync_upto(w, mine)
    }

    /// fsync of inode `ino`: the transactions that changed it are durable
    /// when this returns (its data is written before they join). Only
    /// when one of them is not yet is the log flushed, as the kernel's
    /// `gfs2_fsync` flushes the log for the inode's glock only; an inode
    /// this mount does not remember changing gets a plain [`Fs::sync`].
    pub fn fsync(&self, ino: u64) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        let mine = w.changed().get(&ino).copied();
        match mine {
            Some(n) => self.sync_upto(w, n),
            None => self.sync(),
        }
    }

    /// Make the transactions up to the `mine`th joined durable.
    fn sync_upto(&self, w: &Writer, mine: u64) -> Result<()> {
        let mut log = w.log();
        if log.durable >= mine && mine > 0 {
            return Ok(());
        }
        let wrote = self.flush_log(w, &mut log)?;
        drop(log);
        if wrote {
            // The flush ended with a device flush of its own.
            return Ok(());
        }
        self.device().flush().map_err(|e| FsError::Io {
            what: "flushing the device".into(),
            source: e,
        })
    }

    /// Before an inode or rgrp glock held exclusively goes to another node:
    /// every change in the log and in place, durably, because the other node
    /// reads the blocks where they live, not in our journal.
    pub(crate) fn flush_for_demote(&self) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        let mut log = w.log();
        let _x = w.flush_exclusive();
        // Every transaction joined was flushed (each flush ends with a
        // device flush, and file data is written before its transaction
        // joins): nothing reached the device since (the kernel syncs a
        // glock only when it has dirty data or log work, `GLF_DIRTY`).
        // Without this, an unmount flushed the device once per glock held
        // exclusively.
        let pending = log.durable < *w.joined();
        let wrote = self.flush_locked(w, &mut log)?;
        let pinned = self.cache().pinned_len() > 0;
        // A checkpoint of pinned blocks ends with a device flush too.
        self.checkpoint_locked(&mut log)?;
        if wrote || pinned || !pending {
            return Ok(());
        }
        self.device().flush().map_err(|e| FsError::Io {
            what: "flushing the device".into(),
            source: e,
        })
    }

    /// Flush the log and write everything in place (before a file changes
    /// between ordered and journaled data, as the kernel does).
    pub fn checkpoint(&self) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        let mut log = w.log();
        let _x = w.flush_exclusive();
        self.flush_locked(w, &mut log)?;
        self.checkpoint_locked(&mut log)
    }

    /// Before the freeze lock goes to a node freezing the filesystem: our
    /// statfs changes in the master file, everything in place, and a clean
    /// header in our journal (the kernel checks that its journal is clean
    /// when it thaws), so the frozen disk is complete as it stands.
    pub(crate) fn sync_for_freeze(&self) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        self.fold_own_statfs(false)?;
        let mut log = w.log();
        let _x = w.flush_exclusive();
        self.flush_locked(w, &mut log)?;
        self.checkpoint_locked(&mut log)?;
        log.log.write_freeze()
    }

    /// Flush and leave the journal clean (unmount); the statfs_change
    /// file's glock goes with it.
    pub(crate) fn sync_and_close_log(&self) -> Result<()> {
        let Some(w) = self.writer() else {
            return Ok(());
        };
        self.statfs_sync()?;
        let mut log = w.log();
        let x = w.flush_exclusive();
        self.flush_locked(w, &mut log)?;
        self.checkpoint_locked(&mut log)?;
        log.log.write_unmount()?;
        drop(x);
        drop(log);
        drop(w.statfs_gh.lock().unwrap_or_else(|e| e.into_inner()).take());
        Ok(())
    }
}

/// Add the local statfs changes `l` to the master statfs file's counts in
/// `tx` (both folds: ours and a dead node's).
fn add_to_master(tx: &mut Txn<'_>, master: u64, l: &StatfsChange) -> Result<()> {
    let b = tx.get_mut(glock(master), master, mt::DI)?;
    let mut m = StatfsChange::parse(&b[DINODE_SIZE..])?;
    m.total += l.total;
    m.free += l.free;
    m.dinodes += l.dinodes;
    m.write(&mut b[DINODE_SIZE..])?;
    Ok(())
}
