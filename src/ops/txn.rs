//! How a transaction runs: the exclusive glocks of the inodes it changes
//! (more as it finds it needs them, always taken in lock order), the flush
//! lock held shared from its first read to its publication, and joining
//! the log's dirty set; a transaction that meets a glock it lacks, a full
//! log or no space runs again from the start.

use super::*;

impl Fs {
    /// Run `f` as one transaction with the given inodes' glocks held
    /// exclusively, and whatever other glocks it turns out to need.
    ///
    /// Glocks are taken before the flush lock and in lock order (by type,
    /// then number: inodes before resource groups, as the kernel's
    /// `gfs2_glock_nq_m` sorts them), never while holding it: a demotion
    /// of one of our glocks that another node waits for flushes the log,
    /// which needs the flush lock exclusively, so no thread may wait on a
    /// glock while holding it shared. When the transaction reaches a block
    /// whose glock is not held (a resource group to allocate from, a new
    /// inode, the statfs files), it fails with [`FsError::NeedGlock`]; the
    /// transaction is dropped, the flush lock released, the glock taken
    /// (after letting go of every glock sorting after it, so the order
    /// holds) and `f` runs again from the start. Transactions of other
    /// threads run at the same time under glocks of their own.
    pub(crate) fn modify<T>(
        &self,
        inodes: &[u64],
        f: impl FnMut(&mut Txn<'_>, Alloc<'_>, &Opens) -> Result<T>,
    ) -> Result<T> {
        self.modify_as(inodes, true, None, f)
    }

    /// [`Fs::modify`] of the inode whose glock `pin` keeps (the pNFS layout
    /// service): its holder is taken under the pin, so neither the pin nor
    /// a demotion the pin holds back makes the transaction wait.
    pub(crate) fn modify_pinned<T>(
        &self,
        pin: &crate::glock::Pin,
        f: impl FnMut(&mut Txn<'_>, Alloc<'_>, &Opens) -> Result<T>,
    ) -> Result<T> {
        self.modify_as(&[pin.name().number], true, Some(pin), f)
    }

    /// [`Fs::modify`]; `freeze`: hold the freeze lock shared. Every
    /// transaction does, so a node freezing the filesystem (taking it
    /// exclusively) makes us write everything out and start no transaction
    /// until it thaws; the one exception is the statfs fold that the
    /// freeze itself runs while giving the lock up.
    pub(super) fn modify_as<T>(
        &self,
        inodes: &[u64],
        freeze: bool,
        pin: Option<&crate::glock::Pin>,
        mut f: impl FnMut(&mut Txn<'_>, Alloc<'_>, &Opens) -> Result<T>,
    ) -> Result<T> {
        let w = self.writer().ok_or(errno(libc::EROFS))?;
        // Not on the freeze path: that runs on the glock worker thread,
        // which must never wait for a glock.
        if freeze {
            self.refresh_rindex()?;
        }
        let mut want: BTreeMap<ResName, Mode> =
            inodes.iter().map(|&i| (glock(i), Mode::EX)).collect();
        // It sorts before every other glock taken here.
        if freeze {
            want.insert(freeze_glock(), Mode::PR);
        }
        let mut holders: BTreeMap<ResName, Holder> = BTreeMap::new();
        let mut retried = false;
        loop {
            self.take_glocks(&want, &mut holders, pin)?;
            let held: HashMap<ResName, Mode> =
                holders.iter().map(|(n, h)| (*n, h.mode())).collect();
            let rindex = w.rindex();
            let running = w.flush_lock.read().unwrap_or_else(|e| e.into_inner());
            let mut tx = Txn::new(self.cache(), self.glocks(), held);
            let al = Alloc {
                rindex: &rindex,
                busy: &w.busy,
            };
            let r = match f(&mut tx, al, &w.open) {
                Ok(r) => r,
                Err(FsError::NeedGlock(name, mode)) => {
                    let m = want.entry(name).or_insert(mode);
                    *m = (*m).max(mode);
                    continue;
                }
                // Blocks freed since the last flush become usable after it,
                // as in the kernel, which flushes the log when it runs out.
                Err(e) if e.errno() == libc::ENOSPC && !retried && w.has_busy() => {
                    drop(tx);
                    drop(running);
                    self.flush_now(w)?;
                    retried = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if tx.statfs != Default::default() && w.local_statfs == 0 {
                // No statfs_change file: the master file takes the changes
                // in the transaction itself.
                let ino = w.master_statfs;
                let d = tx.statfs;
                let b = match tx.get_mut(glock(ino), ino, mt::DI) {
                    Ok(b) => b,
                    Err(FsError::NeedGlock(name, mode)) => {
                        want.insert(name, mode);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let mut sc = StatfsChange::parse(&b[DINODE_SIZE..])?;
                sc.total += d.total;
                sc.free += d.free;
                sc.dinodes += d.dinodes;
                sc.write(&mut b[DINODE_SIZE..])?;
                tx.statfs = Default::default();
            }
            // Join the log. What is dirty must fit one flush: a transaction
            // that would overflow it waits for a flush and runs again (the
            // kernel reserves log space before a transaction begins).
            let mut joined = w.joined();
            let dirty = self.cache().dirty_len();
            if dirty > 0 && dirty + tx.len() + 1 > w.capacity {
                drop(joined);
                drop(tx);
                drop(running);
                self.flush_now(w)?;
                continue;
            }
            if tx.statfs != Default::default() {
                // As in the kernel, allocation changes go to this node's
                // statfs_change file; statfs_sync folds them into the master.
                self.add_local_statfs(w, tx.statfs)?;
            }
            let taken = tx.take_holders();
            let changed = tx.changed_inodes();
            let freed = tx.publish();
            w.busy().extend(freed);
            *joined += 1;
            if !changed.is_empty() {
                let mut c = w.changed();
                for ino in changed {
                    c.insert(ino, *joined);
                }
            }
            drop(joined);
            drop(running);
            drop(taken);
            if self.cache().dirty_len() > w.capacity / 2 {
                self.flush_now(w)?;
            }
            drop(holders);
            return Ok(r);
        }
    }

    /// Add `d` to this node's statfs_change block (its glock is held for
    /// the whole mount); under `join`, as a transaction joins the log.
    fn add_local_statfs(&self, w: &Writer, d: crate::log::trans::StatfsDelta) -> Result<()> {
        let ino = w.local_statfs;
        let cur = self.cache().read_meta_as(glock(ino), ino, mt::DI)?;
        let mut b = cur.to_vec();
        let rest = b
            .get_mut(DINODE_SIZE..)
            .ok_or_else(|| FsError::corrupt(ino, "short statfs_change file"))?;
        let mut sc = StatfsChange::parse(rest)?;
        sc.total += d.total;
        sc.free += d.free;
        sc.dinodes += d.dinodes;
        sc.write(rest)?;
        self.cache()
            .put_dirty(glock(ino), ino, std::sync::Arc::from(b.into_boxed_slice()));
        Ok(())
    }

    /// This node's local statfs changes as they stand (its statfs_change
    /// file with every joined transaction), `None` when another file holds
    /// them or the mount does not write.
    pub(crate) fn local_statfs(&self, ino: u64) -> Option<Result<StatfsChange>> {
        let w = self.writer()?;
        if w.local_statfs == 0 || w.local_statfs != ino {
            return None;
        }
        let _joined = w.joined();
        Some(
            self.cache()
                .read_meta_as(glock(ino), ino, mt::DI)
                .and_then(|b| Ok(StatfsChange::parse(b.get(DINODE_SIZE..).unwrap_or(&[]))?)),
        )
    }

    /// Hold every glock of `want` in (at least) its mode, in lock order.
    /// `holders` keeps what is held already; a glock missing or held too
    /// weakly that sorts before a held one makes us let go of those after
    /// it first, so that glocks are always taken in ascending order.
    fn take_glocks(
        &self,
        want: &BTreeMap<ResName, Mode>,
        holders: &mut BTreeMap<ResName, Holder>,
        pin: Option<&crate::glock::Pin>,
    ) -> Result<()> {
        let first_missing = want
            .iter()
            .find(|(n, m)| holders.get(n).is_none_or(|h| h.mode() < **m))
            .map(|(n, _)| *n);
        let Some(mut first) = first_missing else {
            return Ok(());
        };
        'again: loop {
            // Everything from the first missing one on is (re)taken in order.
            drop(holders.split_off(&first));
            for (&name, &mode) in want.range(first..) {
                let h = match pin {
                    Some(p) if p.name() == name => self.glocks().acquire_pinned(p, mode)?,
                    _ => match self.glocks().acquire_unless_pinned(name, mode)? {
                        Some(h) => h,
                        None => {
                            // A pNFS layout keeps it: its owner was told.
                            // Wait holding nothing, since letting go may
                            // need a glock we hold (a statfs file's).
                            holders.clear();
                            self.glocks().wait_unpinned(name);
                            match want.keys().next() {
                                Some(f) => first = *f,
                                None => return Ok(()),
                            }
                            continue 'again;
                        }
                    },
                };
                holders.insert(name, h);
            }
            return Ok(());
        }
    }
}
