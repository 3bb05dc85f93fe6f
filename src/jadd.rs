//! Adding a journal: the files a new node needs (`per_node/inum_rangeN`,
//! `statfs_changeN`, `quota_changeN` and `jindex/journalN`), made by the
//! write path as it makes any file.
//!
//! The order and shape are gfs2-utils' `gfs2_jadd`'s (which makes them
//! through the kernel's metafs): each file is created as `new_inode` in the
//! master directory, given its flags (`GFS2_DIF_SYSTEM` inherited from the
//! master directory as the kernel does, journaled data for the two small
//! per-node files only), filled, made durable, and only then renamed into
//! `per_node` or `jindex` under its final name. A file therefore appears
//! under its name complete or not at all.
//!
//! What a crash (kill -9, power loss) can leave, at each point:
//! - while a file is being made: a `new_inode` in the master directory,
//!   complete or not, named nowhere else. Nothing reads it; the next jadd
//!   removes it first (as gfs2_jadd unlinks a stale one).
//! - between two files of one journal: `per_node` holds some of jid N's
//!   files but `jindex` has no `journalN`. Mounts count journals from the
//!   jindex alone, so N does not exist yet; the next jadd makes N again
//!   and its renames replace the earlier files.
//! - during the journal's log headers: the journal is still `new_inode`,
//!   so a half-written journal is never named `journalN`.
//!
//! Every step is a transaction of the write path, so the journal replay at
//! the next mount (or fsck) completes or drops each one whole.

use crate::error::{FsError, Result};
use crate::format::dif;
use crate::fs::{journal_extents, Fs};
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

/// The scratch name every file is made under before it is renamed into place.
pub const NEW_INODE: &[u8] = b"new_inode";

/// Allocate (and zero) a big file this many bytes per transaction, so that
/// no transaction outgrows the log of the journal that carries it.
const FALLOCATE_CHUNK: u64 = 16 << 20;

const S_IFREG: u32 = 0o100000;

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
        let jid = self.journal_count()?;
        tracing::info!(jid, "adding a journal");

        let ir = self.new_system_file(true)?;
        let mut b = [0u8; InumRange::SIZE];
        InumRange::default().write(&mut b)?;
        self.write(ir, 0, &b)?;
        self.put_in_place(per_node, &format!("inum_range{jid}"))?;

        let sc = self.new_system_file(true)?;
        let mut b = [0u8; StatfsChange::SIZE];
        StatfsChange::default().write(&mut b)?;
        self.write(sc, 0, &b)?;
        self.put_in_place(per_node, &format!("statfs_change{jid}"))?;

        let qc = self.new_system_file(false)?;
        self.fill_quota_change(qc, spec.quota_change_bytes)?;
        self.put_in_place(per_node, &format!("quota_change{jid}"))?;

        let j = self.new_system_file(false)?;
        self.fill_journal(j, spec)?;
        self.put_in_place(jindex, &format!("journal{jid}"))?;
        Ok(jid)
    }

    /// A fresh empty `new_inode` in the master directory (a stale one from
    /// an interrupted jadd is removed first), with the system flag of its
    /// directory and journaled data or not; returns its inode.
    fn new_system_file(&self, jdata: bool) -> Result<u64> {
        let master = self.superblock().master_dir.addr;
        match self.remove(master, NEW_INODE, false) {
            Ok(()) | Err(FsError::Errno(libc::ENOENT)) => {}
            Err(e) => return Err(e),
        }
        let ino = self
            .mknod(master, NEW_INODE, S_IFREG | 0o600, 0, 0, 0, 0, None)?
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

    /// Make `new_inode` durable, then rename it to `name` in `dir`
    /// (replacing what an interrupted jadd may have left there) and make
    /// that durable too.
    fn put_in_place(&self, dir: u64, name: &str) -> Result<()> {
        self.sync()?;
        let master = self.superblock().master_dir.addr;
        self.rename(master, NEW_INODE, dir, name.as_bytes(), 0)?;
        self.sync()
    }

    /// Allocate `bytes` of zeroed blocks to file `ino`, in transactions of
    /// bounded size.
    fn allocate(&self, ino: u64, bytes: u64) -> Result<()> {
        let mut off = 0;
        while off < bytes {
            let len = FALLOCATE_CHUNK.min(bytes - off);
            self.fallocate(ino, off, len, 0)?;
            off += len;
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
