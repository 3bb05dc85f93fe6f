//! Magic numbers, metadata types, format numbers and flags.

/// `GFS2_MAGIC`: first word of every metadata block.
pub const MAGIC: u32 = 0x0116_1970;
/// `GFS2_BASIC_BLOCK`: the unit of `GFS2_SB_ADDR`.
pub const BASIC_BLOCK: u32 = 512;
/// `GFS2_BASIC_BLOCK_SHIFT`.
pub const BASIC_BLOCK_SHIFT: u32 = 9;
/// `GFS2_SB_ADDR`: superblock address in basic (512-byte) blocks.
pub const SB_ADDR: u64 = 128;
/// `GFS2_LOCKNAME_LEN`: size of the lock protocol and table fields.
pub const LOCKNAME_LEN: usize = 64;
/// `GFS2_FNAMESIZE`: longest file name.
pub const FNAMESIZE: usize = 255;
/// `GFS2_MAX_META_HEIGHT`.
pub const MAX_META_HEIGHT: u16 = 10;
/// `GFS2_DIR_MAX_DEPTH`.
pub const DIR_MAX_DEPTH: u16 = 17;
/// `GFS2_INUM_QUANTUM`.
pub const INUM_QUANTUM: u64 = 1_048_576;
/// `GFS2_HAS_UUID`.
pub const HAS_UUID: u32 = 1;

/// Special lock numbers (`GFS2_*_LOCK`).
pub mod lock {
    pub const MOUNT: u64 = 0;
    pub const LIVE: u64 = 1;
    pub const FREEZE: u64 = 2;
    pub const RENAME: u64 = 3;
    pub const CONTROL: u64 = 4;
    pub const MOUNTED: u64 = 5;
    /// `GFS2_SB_LOCK`.
    pub const SB: u64 = 0;
}

/// Format numbers (`GFS2_FORMAT_*`).
pub mod format {
    pub const NONE: u32 = 0;
    pub const SB: u32 = 100;
    pub const RG: u32 = 200;
    pub const RB: u32 = 300;
    pub const DI: u32 = 400;
    pub const IN: u32 = 500;
    pub const LF: u32 = 600;
    pub const JD: u32 = 700;
    pub const LH: u32 = 800;
    pub const LD: u32 = 900;
    pub const LB: u32 = 1000;
    pub const EA: u32 = 1600;
    pub const ED: u32 = 1700;
    pub const QC: u32 = 1400;
    pub const RI: u32 = 1100;
    pub const DE: u32 = 1200;
    pub const QU: u32 = 1500;
    /// Current filesystem format (`GFS2_FORMAT_FS`).
    pub const FS: u32 = 1802;
    /// The older format gfs2-utils can still write (`-o format=1801`).
    pub const FS_1801: u32 = 1801;
    pub const MULTI: u32 = 1900;
}

/// Metadata block types (`GFS2_METATYPE_*`).
pub mod metatype {
    pub const NONE: u32 = 0;
    pub const SB: u32 = 1;
    pub const RG: u32 = 2;
    pub const RB: u32 = 3;
    pub const DI: u32 = 4;
    pub const IN: u32 = 5;
    pub const LF: u32 = 6;
    pub const JD: u32 = 7;
    pub const LH: u32 = 8;
    pub const LD: u32 = 9;
    pub const EA: u32 = 10;
    pub const ED: u32 = 11;
    pub const LB: u32 = 12;
    pub const QC: u32 = 14;
}

/// Resource group flags (`GFS2_RGF_*`).
pub mod rgf {
    pub const JOURNAL: u32 = 0x01;
    pub const METAONLY: u32 = 0x02;
    pub const DATAONLY: u32 = 0x04;
    pub const NOALLOC: u32 = 0x08;
    pub const TRIMMED: u32 = 0x10;
}

/// Dinode flags (`GFS2_DIF_*`).
pub mod dif {
    pub const JDATA: u32 = 0x0000_0001;
    pub const EXHASH: u32 = 0x0000_0002;
    pub const UNUSED: u32 = 0x0000_0004;
    pub const EA_INDIRECT: u32 = 0x0000_0008;
    pub const DIRECTIO: u32 = 0x0000_0010;
    pub const IMMUTABLE: u32 = 0x0000_0020;
    pub const APPENDONLY: u32 = 0x0000_0040;
    pub const NOATIME: u32 = 0x0000_0080;
    pub const SYNC: u32 = 0x0000_0100;
    pub const SYSTEM: u32 = 0x0000_0200;
    pub const TOPDIR: u32 = 0x0000_0400;
    pub const TRUNC_IN_PROG: u32 = 0x2000_0000;
    pub const INHERIT_DIRECTIO: u32 = 0x4000_0000;
    pub const INHERIT_JDATA: u32 = 0x8000_0000;
}

/// Log header flags (`GFS2_LOG_HEAD_*`) and flush causes (`GFS2_LFC_*`).
pub mod lh {
    pub const UNMOUNT: u32 = 0x0000_0001;
    pub const FLUSH_NORMAL: u32 = 0x0000_0002;
    pub const FLUSH_SYNC: u32 = 0x0000_0004;
    pub const FLUSH_SHUTDOWN: u32 = 0x0000_0008;
    pub const FLUSH_FREEZE: u32 = 0x0000_0010;
    pub const RECOVERY: u32 = 0x0000_0020;
    pub const USERSPACE: u32 = 0x8000_0000;
    pub const LFC_SHUTDOWN: u32 = 0x0000_0100;
    pub const LFC_JDATA_WPAGES: u32 = 0x0000_0200;
    pub const LFC_SET_FLAGS: u32 = 0x0000_0400;
    pub const LFC_AIL_EMPTY_GL: u32 = 0x0000_0800;
    pub const LFC_AIL_FLUSH: u32 = 0x0000_1000;
    pub const LFC_RGRP_GO_SYNC: u32 = 0x0000_2000;
    pub const LFC_INODE_GO_SYNC: u32 = 0x0000_4000;
    pub const LFC_INODE_GO_INVAL: u32 = 0x0000_8000;
    pub const LFC_FREEZE_GO_SYNC: u32 = 0x0001_0000;
    pub const LFC_KILL_SB: u32 = 0x0002_0000;
    pub const LFC_DO_SYNC: u32 = 0x0004_0000;
    pub const LFC_INPLACE_RESERVE: u32 = 0x0008_0000;
    pub const LFC_WRITE_INODE: u32 = 0x0010_0000;
    pub const LFC_MAKE_FS_RO: u32 = 0x0020_0000;
    pub const LFC_SYNC_FS: u32 = 0x0040_0000;
    pub const LFC_EVICT_INODE: u32 = 0x0080_0000;
    pub const LFC_TRANS_END: u32 = 0x0100_0000;
    pub const LFC_LOGD_JFLUSH_REQD: u32 = 0x0200_0000;
    pub const LFC_LOGD_AIL_FLUSH_REQD: u32 = 0x0400_0000;
}

/// Log descriptor types (`GFS2_LOG_DESC_*`).
pub mod ld {
    pub const METADATA: u32 = 300;
    pub const REVOKE: u32 = 301;
    pub const JDATA: u32 = 302;
}

/// Quota change flags (`GFS2_QCF_*`).
pub mod qcf {
    pub const USER: u32 = 0x1;
}

/// Directory entry types stored in `de_type` (the `DT_*` values).
pub mod dt {
    pub const UNKNOWN: u16 = 0;
    pub const FIFO: u16 = 1;
    pub const CHR: u16 = 2;
    pub const DIR: u16 = 4;
    pub const BLK: u16 = 6;
    pub const REG: u16 = 8;
    pub const LNK: u16 = 10;
    pub const SOCK: u16 = 12;
}

/// `DT2IF`: the `S_IFMT` bits for a directory entry type.
pub fn dt_to_ifmt(dt: u16) -> u32 {
    (u32::from(dt) << 12) & 0o170000
}

/// `IF2DT`: the directory entry type for a mode.
pub fn ifmt_to_dt(mode: u32) -> u16 {
    ((mode & 0o170000) >> 12) as u16
}
