//! The numbers of NFSv4.1 (RFC 8881) and of its block layout (RFC 5663)
//! that the server speaks: operation codes, status codes, attribute
//! numbers and flags. Names follow the RFCs' XDR.

#![allow(missing_docs)]

/// The NFS program and version.
pub const NFS_PROGRAM: u32 = 100003;
pub const NFS_V4: u32 = 4;
/// Procedures.
pub const NFSPROC4_NULL: u32 = 0;
pub const NFSPROC4_COMPOUND: u32 = 1;
/// The callback procedure (on the client's `cb_program`, version 1).
pub const CB_COMPOUND: u32 = 1;

/// Operations.
pub mod op {
    pub const ACCESS: u32 = 3;
    pub const CLOSE: u32 = 4;
    pub const COMMIT: u32 = 5;
    pub const CREATE: u32 = 6;
    pub const DELEGRETURN: u32 = 8;
    pub const GETATTR: u32 = 9;
    pub const GETFH: u32 = 10;
    pub const LINK: u32 = 11;
    pub const LOOKUP: u32 = 15;
    pub const LOOKUPP: u32 = 16;
    pub const NVERIFY: u32 = 17;
    pub const OPEN: u32 = 18;
    pub const OPEN_DOWNGRADE: u32 = 21;
    pub const PUTFH: u32 = 22;
    pub const PUTPUBFH: u32 = 23;
    pub const PUTROOTFH: u32 = 24;
    pub const READ: u32 = 25;
    pub const READDIR: u32 = 26;
    pub const READLINK: u32 = 27;
    pub const REMOVE: u32 = 28;
    pub const RENAME: u32 = 29;
    pub const RESTOREFH: u32 = 31;
    pub const SAVEFH: u32 = 32;
    pub const SECINFO: u32 = 33;
    pub const SETATTR: u32 = 34;
    pub const VERIFY: u32 = 37;
    pub const WRITE: u32 = 38;
    pub const BIND_CONN_TO_SESSION: u32 = 41;
    pub const EXCHANGE_ID: u32 = 42;
    pub const CREATE_SESSION: u32 = 43;
    pub const DESTROY_SESSION: u32 = 44;
    pub const FREE_STATEID: u32 = 45;
    pub const GETDEVICEINFO: u32 = 47;
    pub const LAYOUTCOMMIT: u32 = 49;
    pub const LAYOUTGET: u32 = 50;
    pub const LAYOUTRETURN: u32 = 51;
    pub const SECINFO_NO_NAME: u32 = 52;
    pub const SEQUENCE: u32 = 53;
    pub const TEST_STATEID: u32 = 55;
    pub const DESTROY_CLIENTID: u32 = 57;
    pub const RECLAIM_COMPLETE: u32 = 58;
    /// The highest operation of minor version 1.
    pub const LAST_V41: u32 = 58;
    pub const ILLEGAL: u32 = 10044;
}

/// Callback operations.
pub mod cbop {
    pub const CB_LAYOUTRECALL: u32 = 5;
    pub const CB_SEQUENCE: u32 = 11;
}

/// `nfsstat4`.
pub mod st {
    pub const OK: u32 = 0;
    pub const PERM: u32 = 1;
    pub const NOENT: u32 = 2;
    pub const IO: u32 = 5;
    pub const NXIO: u32 = 6;
    pub const ACCESS: u32 = 13;
    pub const EXIST: u32 = 17;
    pub const XDEV: u32 = 18;
    pub const NOTDIR: u32 = 20;
    pub const ISDIR: u32 = 21;
    pub const INVAL: u32 = 22;
    pub const FBIG: u32 = 27;
    pub const NOSPC: u32 = 28;
    pub const ROFS: u32 = 30;
    pub const MLINK: u32 = 31;
    pub const NAMETOOLONG: u32 = 63;
    pub const NOTEMPTY: u32 = 66;
    pub const DQUOT: u32 = 69;
    pub const STALE: u32 = 70;
    pub const BADHANDLE: u32 = 10001;
    pub const BAD_COOKIE: u32 = 10003;
    pub const NOTSUPP: u32 = 10004;
    pub const TOOSMALL: u32 = 10005;
    pub const SERVERFAULT: u32 = 10006;
    pub const BADTYPE: u32 = 10007;
    pub const DELAY: u32 = 10008;
    pub const SAME: u32 = 10009;
    pub const DENIED: u32 = 10010;
    pub const EXPIRED: u32 = 10011;
    pub const GRACE: u32 = 10013;
    pub const SHARE_DENIED: u32 = 10015;
    pub const WRONGSEC: u32 = 10016;
    pub const CLID_INUSE: u32 = 10017;
    pub const RESOURCE: u32 = 10018;
    pub const NOFILEHANDLE: u32 = 10020;
    pub const MINOR_VERS_MISMATCH: u32 = 10021;
    pub const STALE_CLIENTID: u32 = 10022;
    pub const STALE_STATEID: u32 = 10023;
    pub const OLD_STATEID: u32 = 10024;
    pub const BAD_STATEID: u32 = 10025;
    pub const BAD_SEQID: u32 = 10026;
    pub const NOT_SAME: u32 = 10027;
    pub const SYMLINK: u32 = 10029;
    pub const RESTOREFH: u32 = 10030;
    pub const ATTRNOTSUPP: u32 = 10032;
    pub const NO_GRACE: u32 = 10033;
    pub const BADXDR: u32 = 10036;
    pub const OPENMODE: u32 = 10038;
    pub const BADOWNER: u32 = 10039;
    pub const BADCHAR: u32 = 10040;
    pub const BADNAME: u32 = 10041;
    pub const OP_ILLEGAL: u32 = 10044;
    pub const ADMIN_REVOKED: u32 = 10047;
    pub const BADIOMODE: u32 = 10049;
    pub const BADLAYOUT: u32 = 10050;
    pub const BADSESSION: u32 = 10052;
    pub const BADSLOT: u32 = 10053;
    pub const COMPLETE_ALREADY: u32 = 10054;
    pub const CONN_NOT_BOUND_TO_SESSION: u32 = 10055;
    pub const LAYOUTTRYLATER: u32 = 10058;
    pub const LAYOUTUNAVAILABLE: u32 = 10059;
    pub const NOMATCHING_LAYOUT: u32 = 10060;
    pub const UNKNOWN_LAYOUTTYPE: u32 = 10062;
    pub const SEQ_MISORDERED: u32 = 10063;
    pub const SEQUENCE_POS: u32 = 10064;
    pub const REQ_TOO_BIG: u32 = 10065;
    pub const REP_TOO_BIG: u32 = 10066;
    pub const REP_TOO_BIG_TO_CACHE: u32 = 10067;
    pub const RETRY_UNCACHED_REP: u32 = 10068;
    pub const TOO_MANY_OPS: u32 = 10070;
    pub const OP_NOT_IN_SESSION: u32 = 10071;
    pub const CLIENTID_BUSY: u32 = 10074;
    pub const SEQ_FALSE_RETRY: u32 = 10076;
    pub const BAD_HIGH_SLOT: u32 = 10077;
    pub const DEADSESSION: u32 = 10078;
    pub const NOT_ONLY_OP: u32 = 10081;
    pub const WRONG_CRED: u32 = 10082;
    pub const WRONG_TYPE: u32 = 10083;
}

/// Attribute numbers (`FATTR4_*`).
pub mod fattr {
    pub const SUPPORTED_ATTRS: u32 = 0;
    pub const TYPE: u32 = 1;
    pub const FH_EXPIRE_TYPE: u32 = 2;
    pub const CHANGE: u32 = 3;
    pub const SIZE: u32 = 4;
    pub const LINK_SUPPORT: u32 = 5;
    pub const SYMLINK_SUPPORT: u32 = 6;
    pub const NAMED_ATTR: u32 = 7;
    pub const FSID: u32 = 8;
    pub const UNIQUE_HANDLES: u32 = 9;
    pub const LEASE_TIME: u32 = 10;
    pub const RDATTR_ERROR: u32 = 11;
    pub const ACLSUPPORT: u32 = 13;
    pub const CANSETTIME: u32 = 15;
    pub const CASE_INSENSITIVE: u32 = 16;
    pub const CASE_PRESERVING: u32 = 17;
    pub const CHOWN_RESTRICTED: u32 = 18;
    pub const FILEHANDLE: u32 = 19;
    pub const FILEID: u32 = 20;
    pub const FILES_AVAIL: u32 = 21;
    pub const FILES_FREE: u32 = 22;
    pub const FILES_TOTAL: u32 = 23;
    pub const HOMOGENEOUS: u32 = 26;
    pub const MAXFILESIZE: u32 = 27;
    pub const MAXLINK: u32 = 28;
    pub const MAXNAME: u32 = 29;
    pub const MAXREAD: u32 = 30;
    pub const MAXWRITE: u32 = 31;
    pub const MODE: u32 = 33;
    pub const NO_TRUNC: u32 = 34;
    pub const NUMLINKS: u32 = 35;
    pub const OWNER: u32 = 36;
    pub const OWNER_GROUP: u32 = 37;
    pub const RAWDEV: u32 = 41;
    pub const SPACE_AVAIL: u32 = 42;
    pub const SPACE_FREE: u32 = 43;
    pub const SPACE_TOTAL: u32 = 44;
    pub const SPACE_USED: u32 = 45;
    pub const TIME_ACCESS: u32 = 47;
    pub const TIME_ACCESS_SET: u32 = 48;
    pub const TIME_DELTA: u32 = 51;
    pub const TIME_METADATA: u32 = 52;
    pub const TIME_MODIFY: u32 = 53;
    pub const TIME_MODIFY_SET: u32 = 54;
    pub const MOUNTED_ON_FILEID: u32 = 55;
    pub const FS_LAYOUT_TYPES: u32 = 62;
    pub const LAYOUT_BLKSIZE: u32 = 65;
    pub const SUPPATTR_EXCLCREAT: u32 = 75;
}

/// `nfs_ftype4`.
pub mod ftype {
    pub const REG: u32 = 1;
    pub const DIR: u32 = 2;
    pub const BLK: u32 = 3;
    pub const CHR: u32 = 4;
    pub const LNK: u32 = 5;
    pub const SOCK: u32 = 6;
    pub const FIFO: u32 = 7;
}

/// `ACCESS4_*`.
pub mod access {
    pub const READ: u32 = 0x01;
    pub const LOOKUP: u32 = 0x02;
    pub const MODIFY: u32 = 0x04;
    pub const EXTEND: u32 = 0x08;
    pub const DELETE: u32 = 0x10;
    pub const EXECUTE: u32 = 0x20;
}

/// EXCHANGE_ID flags.
pub const EXCHGID4_FLAG_USE_PNFS_MDS: u32 = 0x0002_0000;
pub const EXCHGID4_FLAG_MASK_PNFS: u32 = 0x0007_0000;
pub const EXCHGID4_FLAG_CONFIRMED_R: u32 = 0x8000_0000;
pub const EXCHGID4_FLAG_UPD_CONFIRMED_REC_A: u32 = 0x4000_0000;
/// `state_protect_how4`.
pub const SP4_NONE: u32 = 0;
pub const SP4_MACH_CRED: u32 = 1;
/// CREATE_SESSION flags.
pub const CREATE_SESSION4_FLAG_PERSIST: u32 = 0x1;
pub const CREATE_SESSION4_FLAG_CONN_BACK_CHAN: u32 = 0x2;
/// SEQUENCE status flags.
pub const SEQ4_STATUS_CB_PATH_DOWN: u32 = 0x1;
pub const SEQ4_STATUS_RECALLABLE_STATE_REVOKED: u32 = 0x40;
pub const SEQ4_STATUS_CB_PATH_DOWN_SESSION: u32 = 0x200;
/// `channel_dir_from_client4` / `channel_dir_from_server4`.
pub const CDFC4_FORE: u32 = 0x1;
pub const CDFC4_BACK: u32 = 0x2;
pub const CDFS4_FORE: u32 = 0x1;
pub const CDFS4_BACK: u32 = 0x2;
pub const CDFS4_BOTH: u32 = 0x3;

/// OPEN.
pub const OPEN4_SHARE_ACCESS_READ: u32 = 1;
pub const OPEN4_SHARE_ACCESS_WRITE: u32 = 2;
pub const OPEN4_SHARE_ACCESS_BOTH: u32 = 3;
pub const OPEN4_NOCREATE: u32 = 0;
pub const OPEN4_CREATE: u32 = 1;
pub const UNCHECKED4: u32 = 0;
pub const GUARDED4: u32 = 1;
pub const EXCLUSIVE4: u32 = 2;
pub const EXCLUSIVE4_1: u32 = 3;
pub const CLAIM_NULL: u32 = 0;
pub const CLAIM_FH: u32 = 4;
pub const OPEN4_RESULT_LOCKTYPE_POSIX: u32 = 0x4;
pub const OPEN_DELEGATE_NONE: u32 = 0;
/// `stable_how4`.
pub const UNSTABLE4: u32 = 0;
pub const FILE_SYNC4: u32 = 2;
/// `time_how4`.
pub const SET_TO_CLIENT_TIME4: u32 = 1;

/// Layouts.
pub const LAYOUT4_BLOCK_VOLUME: u32 = 3;
/// The SCSI layout (RFC 8154).
pub const LAYOUT4_SCSI: u32 = 5;
/// `pnfs_scsi_volume_type4` of a LUN (RFC 8154 section 2.3.1).
pub const PNFS_SCSI_VOLUME_BASE: u32 = 4;
pub const LAYOUTRETURN4_FILE: u32 = 1;
pub const LAYOUTRETURN4_FSID: u32 = 2;
pub const LAYOUTRETURN4_ALL: u32 = 3;
pub const LAYOUTRECALL4_FILE: u32 = 1;
/// `pnfs_block_volume_type4`.
pub const PNFS_BLOCK_VOLUME_SIMPLE: u32 = 0;
