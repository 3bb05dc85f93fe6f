//! The crash tests' hook in the tools (see [`gfs2fuse::dev::killpoint`]):
//! the tool kills itself (SIGKILL, as `kill -9`) at a chosen device write,
//! so that a grow or jadd stops at every kind of point without racing a
//! timer.
//!
//! `GFS2_TOOLS_KILL_AFTER_WRITES=N` makes the N-th device write (counting
//! from 1) the last: the process kills itself right after it.
//! `GFS2_TOOLS_COUNT_WRITES=1` prints `device writes: N` on stderr at the
//! end instead, so that a test knows how many points there are. Without
//! either variable the device is used as it is. Online, the daemon does
//! the writes: its own variables (`GFS2_FUSE_KILL_AFTER_WRITES`, ...) are
//! set where it is mounted.

use gfs2fuse::dev::{killpoint, BlockDevice};
use std::sync::Arc;

pub const KILL_AFTER: &str = "GFS2_TOOLS_KILL_AFTER_WRITES";
pub const COUNT: &str = "GFS2_TOOLS_COUNT_WRITES";

/// `dev`, counted from the start if the environment asks for it.
pub fn wrap(dev: Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
    killpoint::wrap_tool(dev, KILL_AFTER, COUNT)
}

/// Print the write count if asked to (at the end of a run).
pub fn report() {
    if std::env::var_os(COUNT).is_some() {
        eprintln!("device writes: {}", killpoint::writes());
    }
}
