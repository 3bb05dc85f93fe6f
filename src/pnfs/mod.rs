//! The pNFS block-layout exporter: the interface between whoever serves
//! NFSv4.1 (the metadata server in this daemon, or one outside it through
//! the control channel) and the filesystem that owns the blocks.
//!
//! A pNFS client with the block layout (RFC 5663) reads and writes file
//! data straight on the shared disk. The metadata server (MDS) hands it
//! *layouts*: for a byte range of a file, the disk extents that hold it.
//! The filesystem decides what a layout says and when it must be taken
//! back, so this module states the contract both sides keep:
//!
//! - A layout is granted only while this node holds the inode's glock:
//!   shared for a read layout, exclusive for a read-write one. When the
//!   glock must go (another node wants it, or a local access conflicts),
//!   the layouts under it are recalled through [`RecallSink::recall`], new
//!   ones are refused with [`LayoutError::TryLater`], and the glock is
//!   released after the client's LAYOUTRETURN or, past two lease periods,
//!   after [`RecallSink::fence`] has cut the client off.
//! - GFS2 has no unwritten extents. Blocks handed out for writing are
//!   allocated, **zeroed on disk and linked into the file in one journaled
//!   transaction before the layout is granted** (so no reader, here or on
//!   another node, ever sees stale disk contents through them). Until the
//!   client commits them they are reported as [`ExtentState::InvalidData`].
//!   Blocks past the file's size that no commit covered are freed when the
//!   layout is returned or the client goes away, so a client that never
//!   commits leaks nothing; after a crash they are ordinary blocks past
//!   EOF (as `fallocate(KEEP_SIZE)` leaves), which fsck accepts.
//! - LAYOUTCOMMIT updates size, mtime and the mapping in one journaled
//!   transaction. The client's storage offsets are never trusted (the
//!   Linux client sends 0): only what this module recorded at grant time
//!   is used.

pub mod control;
pub mod layout;
pub mod nfs;
pub mod recall;
pub mod scsi;

pub use layout::{LayoutOptions, LayoutService};

use crate::error::FsError;
use crate::fs::Attr;

/// The MDS's name for a client (its NFSv4.1 client id).
pub type ClientId = u64;

/// `layoutiomode4` (RFC 8881).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoMode {
    /// `LAYOUTIOMODE4_READ` (1).
    Read = 1,
    /// `LAYOUTIOMODE4_RW` (2).
    ReadWrite = 2,
}

/// `pnfs_block_extent_state4` (RFC 5663 section 2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtentState {
    /// `PNFS_BLOCK_READWRITE_DATA`: valid data, may be read and written.
    ReadWriteData = 0,
    /// `PNFS_BLOCK_READ_DATA`: valid data, read only.
    ReadData = 1,
    /// `PNFS_BLOCK_INVALID_DATA`: allocated, contents not yet valid for the
    /// file (the client writes before reading and commits it).
    InvalidData = 2,
    /// `PNFS_BLOCK_NONE_DATA`: a hole in a read layout (reads as zeros).
    NoneData = 3,
}

/// `pnfs_block_extent4`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the file.
    pub file_offset: u64,
    /// Length.
    pub length: u64,
    /// Offset on the volume (the whole shared device); 0 for `NoneData`.
    pub storage_offset: u64,
    /// What the client may do with it.
    pub state: ExtentState,
}

/// A granted layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The file.
    pub ino: u64,
    /// Read or read-write.
    pub iomode: IoMode,
    /// Byte range covered (may be larger than asked, never smaller than
    /// the asked minimum).
    pub offset: u64,
    /// Length of the range (`u64::MAX` = to the end of all offsets).
    pub length: u64,
    /// Extents covering `offset..offset+length` in order, with no gaps.
    pub extents: Vec<Extent>,
}

/// The volume a layout's storage offsets refer to: an RFC 5663 simple
/// volume identified by a signature on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Byte offset of the signature on the device (the superblock's UUID,
    /// at 65792 for every block size).
    pub sig_offset: u64,
    /// The signature's bytes (the 16-byte UUID).
    pub signature: Vec<u8>,
    /// Size of the volume in bytes.
    pub size: u64,
    /// The filesystem's block size.
    pub block_size: u32,
    /// The shared disk as a SCSI layout volume (RFC 8154), when it is a
    /// LUN whose reservation the server holds ([`scsi::Fencing`]).
    pub scsi: Option<scsi::ScsiVolume>,
}

/// What a client reports in LAYOUTCOMMIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// The range the client wrote through its layout.
    pub offset: u64,
    /// Its length.
    pub length: u64,
    /// `loca_last_write_offset`: the size becomes at least this plus one.
    pub last_write: Option<u64>,
    /// `loca_time_modify`, if the client sent one (else now).
    pub mtime: Option<(i64, u32)>,
}

/// A recall the MDS must send (CB_LAYOUTRECALL of a file's range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recall {
    /// The client holding the layout.
    pub client: ClientId,
    /// The file.
    pub ino: u64,
    /// Range recalled.
    pub offset: u64,
    /// Its length (`u64::MAX`: to the end).
    pub length: u64,
    /// The iomode recalled.
    pub iomode: IoMode,
}

/// Why a layout operation failed, in the terms the MDS answers with.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// `NFS4ERR_LAYOUTUNAVAILABLE`: no layout for this file (a read layout
    /// of a stuffed file, journaled data, not a regular file...): the
    /// client does I/O through the MDS. (A read-write layout of a stuffed
    /// file unstuffs it, so that new files are written through layouts.)
    #[error("no layout for this file")]
    Unavailable,
    /// `NFS4ERR_LAYOUTTRYLATER`: a recall of this file is in progress.
    #[error("a recall of this file is in progress")]
    TryLater,
    /// `NFS4ERR_BADLAYOUT`/`NFS4ERR_INVAL`: a range or iomode that makes no sense.
    #[error("bad layout range or mode")]
    BadRange,
    /// `NFS4ERR_NOSPC` and the rest: the filesystem's error.
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Where recalls go: the MDS that holds the clients' sessions.
pub trait RecallSink: Send + Sync {
    /// Send CB_LAYOUTRECALL for `r`. Must not block: the answer is the
    /// client's LAYOUTRETURN (or nothing, then [`RecallSink::fence`]).
    fn recall(&self, r: Recall);
    /// The client did not return a recalled layout within two lease
    /// periods: drop its state (the layout service has already cut it off
    /// the disk where it holds a SCSI reservation). Its layouts are then
    /// forgotten by the layout service.
    fn fence(&self, client: ClientId);
}

/// The layout service as an MDS sees it.
pub trait LayoutBackend: Send + Sync {
    /// The volume description (GETDEVICEINFO).
    fn device_info(&self) -> DeviceInfo;
    /// LAYOUTGET for `offset..offset+length` (at least `minlength` bytes
    /// from `offset` must be covered).
    fn layout_get(
        &self,
        client: ClientId,
        ino: u64,
        offset: u64,
        length: u64,
        minlength: u64,
        iomode: IoMode,
    ) -> Result<Layout, LayoutError>;
    /// LAYOUTCOMMIT.
    fn layout_commit(&self, client: ClientId, ino: u64, c: Commit) -> Result<Attr, LayoutError>;
    /// LAYOUTRETURN of a file's range (`ino: None`: every layout of the
    /// client, `LAYOUTRETURN4_FSID`/`ALL`).
    fn layout_return(
        &self,
        client: ClientId,
        ino: Option<u64>,
        offset: u64,
        length: u64,
    ) -> Result<(), LayoutError>;
    /// The client's lease expired or it destroyed its client id: its
    /// layouts go, uncommitted blocks past EOF are freed.
    fn client_gone(&self, client: ClientId);
    /// Where recalls are sent.
    fn set_recall_sink(&self, sink: std::sync::Arc<dyn RecallSink>);
}
