//! gfs2-fuse: a userspace implementation of the GFS2 cluster filesystem.
//!
//! See ARCHITECTURE.md for the layers. This crate holds everything above the
//! on-disk format (`gfs2-ondisk`) and the lock modules (`gfs2-lockproto`).

pub mod dev;
