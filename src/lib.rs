//! gfs2-fuse: a userspace implementation of the GFS2 cluster filesystem.
//!
//! See ARCHITECTURE.md for the layers. This crate holds everything above the
//! on-disk format and the lock modules (`gfs2-lockproto`).

pub mod buf;
pub mod dev;
pub mod error;
pub mod format;
pub mod fs;
pub mod fuse;
pub mod glock;
pub mod inode;
pub mod log;
pub mod ops;
pub mod pnfs;
pub mod rgrp;
pub mod runstate;
pub mod sb;
pub mod scan;
