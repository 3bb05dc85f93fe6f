//! `tunegfs2`: view and change a GFS2 superblock's label, UUID, lock
//! protocol, lock table and format version, compatible with gfs2-utils 3.5.
//!
//! Only the superblock block is ever rewritten, and every change is checked
//! before anything is written, so a refused change leaves the device as it
//! was (gfs2-utils behaves the same way).

pub mod cli;
pub mod tune;

/// sysexits.h codes, the exit statuses gfs2-utils' tunegfs2 uses.
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_IOERR: u8 = 74;
