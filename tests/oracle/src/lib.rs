//! Test oracles: the Linux kernel GFS2 in qemu, gfs2-utils.
