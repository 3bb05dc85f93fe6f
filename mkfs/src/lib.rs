//! mkfs.gfs2: a drop-in replacement for gfs2-utils' mkfs.gfs2.
//!
//! `cli` parses and validates the command line like gfs2-utils; `plan` computes the on-disk
//! layout (pure functions, reusable by the filesystem); `build` writes the structures;
//! `progress` prints gfs2-utils-style progress lines.

pub mod alloc;
pub mod build;
pub mod cli;
pub mod dirlayout;
pub mod plan;
pub mod progress;
pub mod report;
