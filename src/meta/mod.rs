//! Metadata dumps in gfs2-utils' savemeta format: `gfs2-fuse savemeta` and
//! `gfs2-fuse restoremeta`.
//!
//! An administrator sends a dump of a broken filesystem's metadata (no
//! user data) to whoever debugs it; the dump must open with either tool,
//! so the file format (`format`) is gfs2_edit's and the choice of blocks
//! (`save`, with what it reads up front in `rindex`) follows gfs2_edit's
//! block for block. `restore` writes a dump back onto a device. `cli` is
//! the command line of both subcommands.

pub mod cli;
pub mod format;
pub mod restore;
pub mod rindex;
pub mod save;
