//! `gfs2_grow` and `gfs2_jadd`: grow a GFS2 filesystem into a bigger
//! device, and add journals, with gfs2-utils 3.5's command lines and
//! output, on an unmounted device or image (which gfs2-utils cannot do).
//!
//! `cli` parses both command lines (`getopt` is GNU getopt's behaviour),
//! `newrgrps` places and writes the new resource groups, `offline` claims
//! and mounts the device through the library, whose `grow` and `jadd`
//! modules make the changes crash-safe. `killpoint` is the crash tests'
//! hook (kill -9 at the N-th device write).

pub mod cli;
pub mod getopt;
pub mod killpoint;
pub mod newrgrps;
pub mod offline;
