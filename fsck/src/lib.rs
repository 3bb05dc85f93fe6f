//! fsck for GFS2, checking and repairing an unmounted filesystem.

pub mod check;
pub mod cli;
pub mod report;
pub mod testimg;
