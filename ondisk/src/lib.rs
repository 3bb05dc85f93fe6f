//! GFS2 on-disk format.
