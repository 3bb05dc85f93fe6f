//! fsck for GFS2: checks and repairs an unmounted filesystem, with the
//! command line and exit codes of gfs2-utils' `fsck.gfs2`.
//!
//! What is checked (and, with `-y`/`-p`, repaired), in order:
//! - the superblock: magic, block size (a bad one is found again from where
//!   the master and root dinodes and the first rgrp are), shift, formats,
//!   lock protocol and table;
//! - rindex against every rgrp header (fields, `rg_crc`, `rg_skip`; a
//!   destroyed header is rebuilt from rindex and its bitmap from the walk),
//!   every bitmap block, read on two threads;
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
//! - link counts; inodes no directory reaches (moved to lost+found);
//! - every bitmap against what the walk found, rgrp free/dinode counts,
//!   and the statfs file (master plus per-node changes).
//!
//! Repairs are kept in memory and written at the end.

pub mod check;
pub mod cli;
pub mod report;
pub mod testimg;
