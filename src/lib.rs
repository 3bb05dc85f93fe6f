//! gfs2-fuse library.
