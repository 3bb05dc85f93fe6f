//! The GFS2 on-disk format, as `linux/gfs2_ondisk.h` defines it.
//!
//! Pure types and (de)serialisation: no I/O. Every `parse` takes an
//! untrusted byte slice and returns [`FormatError`] instead of panicking or
//! reading past its end; every `write` produces the exact on-disk bytes,
//! including reserved and padding fields, so `parse` followed by `write` gives
//! back the input byte for byte. Semantic checks (magic, type, ranges) are
//! separate from decoding so that fsck can look at damaged structures.
//!
//! Field names follow the C header without their prefix (`sb_bsize` is
//! `Superblock::bsize`); `type` fields keep the prefix (`mh_type`).

mod bytes;
pub mod consts;
pub mod dinode;
pub mod dir;
pub mod ea;
pub mod error;
pub mod hash;
pub mod layout;
pub mod log;
pub mod meta;
pub mod quota;
pub mod rgrp;
pub mod sb;

pub use consts::*;
pub use dinode::Dinode;
pub use dir::{dirent_size, Dirent, DirentIter, Leaf, RawDirent};
pub use ea::{EaHeader, EaIter, RawEa};
pub use error::{FormatError, Result};
pub use log::{LogDescriptor, LogHeader};
pub use meta::{Inum, MetaHeader};
pub use quota::{InodeLvb, InumRange, Quota, QuotaChange, QuotaLvb, StatfsChange};
pub use rgrp::{bitmap_get, bitmap_set, BlockState, Rgrp, RgrpLvb, Rindex};
pub use sb::Superblock;
