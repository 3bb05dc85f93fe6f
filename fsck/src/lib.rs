//! fsck for GFS2: checks and repairs an unmounted filesystem, with the
//! command line and exit codes of gfs2-utils' `fsck.gfs2`.
//!
//! What is checked (and, with `-y`/`-p`, repaired), in order:
//! - the superblock: magic, block size (a bad one is found again from where
//!   the master and root dinodes and the first rgrp are), shift, formats,
//!   lock protocol and table;
//! - rindex against every rgrp header (fields, `rg_crc`, `rg_skip`; a
//!   destroyed header is rebuilt from rindex and its bitmap from the walk),
//!   every bitmap block, read on two threads; wrong rindex entries are
//!   rewritten from the rgrp layout (headers followed from the first, the
//!   device searched for the next header where neither a header nor an
//!   entry tells), and a lost rindex is rebuilt the same way; a rindex
//!   that must grow past the blocks it has gets a new metadata tree;
//! - the system files: a destroyed master directory, jindex or per_node is
//!   rebuilt from the system files found by scanning, and those destroyed
//!   with it (the rindex, the jindex, a per_node file) are made anew; a
//!   destroyed inum, statfs, quota, inum_range, statfs_change, quota_change
//!   or journal dinode is rebuilt empty where it was (a journal as big as
//!   the others, all clean log headers);
//! - journals: each head is found with the mount code's recovery module and
//!   a dirty journal is replayed; a journal whose block map lost blocks gets
//!   new ones;
//! - every inode reachable from the master and root directories: header,
//!   address, formal number, height against size, metadata tree pointers,
//!   blocks claimed twice (file data is copied for the second owner), EA
//!   blocks, `di_blocks`, allocation goals;
//! - directories: entries (hash, lengths, type against the inode's mode,
//!   '.' and '..', targets), exhash tables (size against depth, leaves
//!   covering aligned runs; a broken table is rebuilt from its leaves),
//!   `di_entries`, `lf_entries`;
//! - link counts; inodes no directory reaches (moved to lost+found, but
//!   empty files without EAs freed, as gfs2-utils does);
//! - every bitmap against what the walk found, rgrp free/dinode counts,
//!   and the statfs file (master plus per-node changes).
//!
//! Repairs are kept in memory and written at the end.
//!
//! Memory stays near two bits per filesystem block: the expected state of
//! every block in a 2-bit array, bitmaps read per rgrp when needed, and
//! records only for directories, system files and inodes whose counts are
//! not settled (a plain file is dropped once checked).

pub mod check;
pub mod cli;
pub mod report;
pub mod testimg;
