//! Adding a journal: the files a new node needs (`per_node/inum_rangeN`,
//! `statfs_changeN`, `quota_changeN` and `jindex/journalN`), made by the
//! write path as it makes any file.
//!
//! The files and their content are gfs2-utils' `gfs2_jadd`'s (which makes
//! them through the kernel's metafs): the system flag inherited from the
//! master directory as the kernel does, journaled data for the two small
//! per-node files only, a quota change header in every block of
//! `quota_changeN`, a clean unmount log header in every block of the
//! journal. Unlike gfs2_jadd, which renames each file into place as soon
//! as it is made, the four are made under scratch names in the master
//! directory (`new_inode.<name>`), made durable, and then renamed into
//! `per_node` and `jindex` together, in **one** transaction. gfs2-utils'
//! fsck takes per-node files without their journal for a destroyed
//! journal, so they must appear together or not at all.
//!
//! What a crash (kill -9, power loss) can leave, at each point:
//! - before the renaming transaction is in the log: scratch files in the
//!   master directory, complete or not, that nothing else refers to (fsck
//!   counts their entries as links: the filesystem is consistent). The
//!   next jadd removes them first, as gfs2_jadd removes a stale
//!   `new_inode`.
//! - after it: the journal and its per-node files, complete, in place
//!   (the log replay at the next mount or fsck puts the transaction in
//!   place if the crash came before the checkpoint). The files were
//!   written in place (a checkpoint) before the renaming transaction, so a
//!   crash halfway through that transaction's own checkpoint, which may
//!   leave the jindex entry in place before anything else, still names a
//!   valid journal: mounts read the jindex and the journals' block maps
//!   before they replay the log.
//!
//! Per-node files of a jid that has no journal (left by an interrupted
//! gfs2-utils jadd) are removed before the new ones are made.

use crate::error::{FsError, Result};
use crate::format::dif;
use crate::fs::{journal_extents, Fs};
use crate::inode::dirops;
use crate::inode::write::{dinode, put_dinode};
use gfs2_ondisk::consts::{format, lh, metatype};
use gfs2_ondisk::{InumRange, LogHeader, MetaHeader, StatfsChange};

/// Sizes of what [`Fs::add_journal`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalSpec {
    /// Journal size in bytes (a multiple of the block size).
    pub journal_bytes: u64,
    /// Quota change file size in bytes (a multiple of the block size).
    pub quota_change_bytes: u64,
    /// The first log header's sequence number (gfs2_jadd picks it at
    /// random), taken modulo the journal's block count.
    pub first_sequence: u64,
}

/// The prefix of the scratch names the files are made under (gfs2_jadd
/// uses `new_inode` itself).
pub const NEW_INODE: &str = "new_inode";

/// Fill a big file this many bytes per call, so that no transaction
/// outgrows the log of the journal that carries it (the write path splits
/// it further, into 1 MiB transactions).
const FALLOCATE_CHUNK: u64 = 16 << 20;

const S_IFREG: u32 = 0o100000;

fn now() -> (u64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

impl Fs {
    /// The jindex and per_node directories' inodes.
    pub fn system_dirs(&self) -> Result<(u64, u64)> {
        let master = self.superblock().master_dir.addr;
        Ok((
            self.lookup(master, b"jindex")?.ino,
            self.lookup(master, b"per_node")?.ino,
        ))
    }

    /// How many journals the jindex names (gfs2_jadd counts the entries
    /// whose names start with `journal`).
    pub fn journal_count(&self) -> Result<u32> {
        let (jindex, _) = self.system_dirs()?;
        let mut n = 0u32;
        self.readdir(jindex, 0, |e| {
            if e.name.starts_with(b"journal") {
                n += 1;
            }
            true
        })?;
        Ok(n)
    }

    /// Add one journal and its per-node files; returns its jid (the
    /// number of journals there were).
    pub fn add_journal(&self, spec: &JournalSpec) -> Result<u32> {
        let bs = u64::from(self.superblock().bsize);
        if spec.journal_bytes == 0 || spec.journal_bytes & (bs - 1) != 0 {
            return Err(FsError::Errno(libc::EINVAL));
        }
        if spec.quota_change_bytes == 0 || spec.quota_change_bytes & (bs - 1) != 0 {
            return Err(FsError::Errno(libc::EINVAL));
        }
        let (jindex, per_node) = self.system_dirs()?;
        let master = self.superblock().master_dir.addr;
        let jid = self.journal_count()?;
        tracing::info!(jid, "adding a journal");
        self.remove_leftovers(master, per_node, jid)?;

        let names = [
            format!("inum_range{jid}"),
            format!("statfs_change{jid}"),
            format!("quota_change{jid}"),
            format!("journal{jid}"),
        ];
        let scratch: Vec<String> = names.iter().map(|n| format!("{NEW_INODE}.{n}")).collect();

        let ir = self.new_system_file(&scratch[0], true)?;
        let mut b = [0u8; InumRange::SIZE];
        InumRange::default().write(&mut b)?;
        self.write(ir, 0, &b)?;

        let sc = self.new_system_file(&scratch[1], true)?;
        let mut b = [0u8; StatfsChange::SIZE];
        StatfsChange::default().write(&mut b)?;
        self.write(sc, 0, &b)?;

        let qc = self.new_system_file(&scratch[2], false)?;
        self.fill_quota_change(qc, spec.quota_change_bytes)?;

        let j = self.new_system_file(&scratch[3], false)?;
        self.fill_journal(j, spec)?;

        // Everything durable, and in place, before anything names it: the
        // journal's dinode and indirect blocks must be valid where they
        // lie even if a crash comes halfway through writing the renaming
        // transaction in place (mounts read the jindex and each journal's
        // block map before they replay anything).
        self.sync()?;
        self.checkpoint()?;
        let moves: Vec<(&str, u64, &str)> = vec![
            (&scratch[0], per_node, &names[0]),
            (&scratch[1], per_node, &names[1]),
            (&scratch[2], per_node, &names[2]),
            (&scratch[3], jindex, &names[3]),
        ];
        self.move_into_place(master, &moves)?;
        self.sync()?;
        Ok(jid)
    }

    /// Remove scratch files of an interrupted jadd from the master
    /// directory, and per-node files of `jid` (which has no journal yet).
    fn remove_leftovers(&self, master: u64, per_node: u64, jid: u32) -> Result<()> {
        let mut stale = Vec::new();
        self.readdir(master, 0, |e| {
            if e.name.starts_with(NEW_INODE.as_bytes()) {
                stale.push(e.name.to_vec());
            }
            true
        })?;
        for n in stale {
            tracing::info!(name = %String::from_utf8_lossy(&n), "removing a scratch file of an interrupted jadd");
            self.remove(master, &n, false)?;
        }
        for n in ["inum_range", "statfs_change", "quota_change"] {
            let name = format!("{n}{jid}");
            match self.remove(per_node, name.as_bytes(), false) {
                Ok(()) => tracing::info!(name, "removed a per-node file of a missing journal"),
                Err(FsError::Errno(libc::ENOENT)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A fresh empty file `name` in the master directory, with the system
    /// flag of its directory and journaled data or not; returns its inode.
    fn new_system_file(&self, name: &str, jdata: bool) -> Result<u64> {
        let master = self.superblock().master_dir.addr;
        let ino = self
            .mknod(master, name.as_bytes(), S_IFREG | 0o600, 0, 0, 0, 0, None)?
            .ino;
        self.modify(&[master, ino], |tx, _, _| {
            let system = dinode(tx, master)?.flags & dif::SYSTEM;
            let mut di = dinode(tx, ino)?;
            di.flags = (di.flags & !(dif::JDATA | dif::SYSTEM))
                | system
                | if jdata { dif::JDATA } else { 0 };
            put_dinode(tx, &di)
        })?;
        Ok(ino)
    }

    /// Rename every `(scratch name in master, directory, final name)` in
    /// one transaction: all are in place after it, or none.
    fn move_into_place(&self, master: u64, moves: &[(&str, u64, &str)]) -> Result<()> {
        let dev = self.device().clone();
        let mut inodes = vec![master];
        for (scratch, dir, _) in moves {
            inodes.push(*dir);
            inodes.push(self.lookup(master, scratch.as_bytes())?.ino);
        }
        inodes.sort_unstable();
        inodes.dedup();
        self.modify(&inodes, |tx, al, _| {
            let (s, ns) = now();
            for (scratch, dir, name) in moves {
                if dirops::find(tx, al, *dir, name.as_bytes())?.is_some() {
                    return Err(FsError::Errno(libc::EEXIST));
                }
                let (inum, dt) = dirops::remove(tx, al, master, scratch.as_bytes())?
                    .ok_or(FsError::Errno(libc::ENOENT))?;
                dirops::add(tx, al, *dir, name.as_bytes(), inum, dt, dev.as_ref())?;
                let mut di = dinode(tx, inum.addr)?;
                di.ctime = s;
                di.ctime_nsec = ns;
                put_dinode(tx, &di)?;
            }
            for d in inodes
                .iter()
                .filter(|i| **i == master || moves.iter().any(|m| m.1 == **i))
            {
                let mut di = dinode(tx, *d)?;
                di.mtime = s;
                di.mtime_nsec = ns;
                di.ctime = s;
                di.ctime_nsec = ns;
                put_dinode(tx, &di)?;
            }
            Ok(())
        })
    }

    /// Allocate `bytes` of zeroed blocks to file `ino` by writing zeros, a
    /// bounded piece per transaction (the write path gathers contiguous
    /// blocks into few device writes).
    fn allocate(&self, ino: u64, bytes: u64) -> Result<()> {
        let zeros = vec![0u8; FALLOCATE_CHUNK as usize];
        let mut off = 0;
        while off < bytes {
            let len = FALLOCATE_CHUNK.min(bytes - off) as usize;
            self.write(ino, off, &zeros[..len])?;
            off += len as u64;
        }
        Ok(())
    }

    /// The quota change file: every block a `GFS2_METATYPE_QC` header and
    /// nothing else (no quota changes recorded).
    fn fill_quota_change(&self, ino: u64, bytes: u64) -> Result<()> {
        let bs = self.superblock().bsize as usize;
        let mut block = vec![0u8; bs];
        MetaHeader::new(metatype::QC, format::QC).write(&mut block)?;
        let per_write = (FALLOCATE_CHUNK as usize / bs).max(1);
        let blocks = (bytes / bs as u64) as usize;
        let mut done = 0usize;
        while done < blocks {
            let n = per_write.min(blocks - done);
            let buf = block.repeat(n);
            self.write(ino, (done * bs) as u64, &buf)?;
            done += n;
        }
        Ok(())
    }

    /// The journal: allocated, then a clean unmount log header in every
    /// block (`GFS2_LOG_HEAD_UNMOUNT | GFS2_LOG_HEAD_USERSPACE`, sequence
    /// numbers counting up from a random start and wrapping, each naming
    /// its own block and the journal's dinode), as gfs2_jadd and mkfs
    /// write them, straight to the device and flushed.
    fn fill_journal(&self, ino: u64, spec: &JournalSpec) -> Result<()> {
        self.allocate(ino, spec.journal_bytes)?;
        let bsize = self.superblock().bsize;
        let bs = bsize as usize;
        let blocks = spec.journal_bytes / u64::from(bsize);
        let extents = self.with_inode(ino, journal_extents)?;
        let mapped: u64 = extents.iter().map(|e| e.len).sum();
        if mapped != blocks {
            return Err(FsError::corrupt(
                ino,
                format!("new journal maps {mapped} of its {blocks} blocks"),
            ));
        }
        let mut seq = spec.first_sequence % blocks;
        const RUN: u64 = 1024;
        let dev = self.device();
        for e in &extents {
            let mut i = 0;
            while i < e.len {
                let n = RUN.min(e.len - i);
                let mut buf = vec![0u8; n as usize * bs];
                for (k, b) in buf.chunks_exact_mut(bs).enumerate() {
                    let lblock = e.lblock + i + k as u64;
                    LogHeader {
                        sequence: seq,
                        flags: lh::UNMOUNT | lh::USERSPACE,
                        blkno: u32::try_from(lblock).map_err(|_| FsError::Errno(libc::EFBIG))?,
                        addr: e.phys + i + k as u64,
                        jinode: ino,
                        ..LogHeader::default()
                    }
                    .write_block(b)?;
                    seq += 1;
                    if seq == blocks {
                        seq = 0;
                    }
                }
                dev.write_at(&buf, (e.phys + i) * u64::from(bsize))
                    .map_err(|source| FsError::Io {
                        what: format!("writing the log headers of the new journal (inode {ino})"),
                        source,
                    })?;
                i += n;
            }
        }
        dev.flush().map_err(|source| FsError::Io {
            what: "flushing the new journal".into(),
            source,
        })
    }
}
