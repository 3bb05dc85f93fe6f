//! `gfs2_grow` and `gfs2_jadd`: grow a GFS2 filesystem into a bigger
//! device, and add journals, with gfs2-utils 3.5's command lines and
//! output, on a filesystem gfs2-fuse has mounted (given its mount point)
//! or on an unmounted device or image (which gfs2-utils cannot do).
//!
//! `cli` parses both command lines (`getopt` is GNU getopt's behaviour),
//! `newrgrps` places the new resource groups, `offline` claims and mounts
//! an unmounted device through the library, `online` asks the gfs2-fuse
//! daemon of a mounted one; either way the library's `grow` and `jadd`
//! modules make the changes, crash-safe. `killpoint` is the crash tests'
//! hook (kill -9 at the N-th device write).

pub mod cli;
pub mod getopt;
pub mod killpoint;
pub mod newrgrps;
pub mod offline;
pub mod online;
