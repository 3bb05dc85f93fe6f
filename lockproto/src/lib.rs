//! Lock modules: the interface between glocks and a lock manager.
//!
//! A GFS2 node protects every cached object with a glock, and a glock is a
//! lock on a named resource `(type, number)` held through a *lock module*.
//! This crate defines that interface and its modules:
//!
//! - [`nolock`]: single node; every request is granted at once and nothing is
//!   ever recalled (the kernel's `lock_nolock`).
//! - [`mem`]: an in-process lock manager with real conflicts and blocking
//!   callbacks, so several filesystem instances in one process behave as the
//!   nodes of a cluster (tests and simulation).
//! - [`dlm`]: the Linux DLM through its userspace device; resource and
//!   lockspace names come from [`names`] so that a FUSE node and a kernel
//!   node lock the same resources.
//!
//! The model follows the DLM: one lock per resource per node, requested and
//! then *converted* between modes; requests may complete synchronously
//! ([`Lockspace::lock`] returns the grant) or later through
//! [`LockCallbacks::granted`]; a node holding a lock that blocks another
//! node's request gets [`LockCallbacks::blocking`] and is expected to convert
//! down or unlock when it can.

pub mod dlm;
pub mod mem;
pub mod names;
pub mod nolock;

use std::sync::Arc;

pub use names::{lockspace_name, resource_name, RESOURCE_NAME_LEN};

/// Size of a lock value block, as in the kernel's `GDLM_LVB_SIZE`.
pub const LVB_SIZE: usize = 32;

/// A lock value block: a few bytes stored with a resource by the lock manager.
pub type Lvb = [u8; LVB_SIZE];

/// Lock types of GFS2 glocks (`LM_TYPE_*` in the kernel's `glock.h`).
pub mod lm_type {
    /// Non-disk locks: mount, live, rename, transaction/freeze.
    pub const NONDISK: u32 = 1;
    /// Inode glock, number = dinode block address.
    pub const INODE: u32 = 2;
    /// Resource-group glock, number = rgrp header block address.
    pub const RGRP: u32 = 3;
    /// Metadata glock (unused by modern GFS2).
    pub const META: u32 = 4;
    /// Inode-open glock: a node holds it shared while the inode is in use.
    pub const IOPEN: u32 = 5;
    /// flock(2) locks.
    pub const FLOCK: u32 = 6;
    /// POSIX byte-range locks (handled by dlm_controld in the kernel).
    pub const PLOCK: u32 = 7;
    /// Quota glock.
    pub const QUOTA: u32 = 8;
    /// Journal glock, number = journal id.
    pub const JOURNAL: u32 = 9;
}

/// The name of a lockable resource: `(type, number)` as the kernel's `lm_lockname`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResName {
    /// One of [`lm_type`].
    pub lk_type: u32,
    /// Block address, journal id, or a fixed number for non-disk locks.
    pub number: u64,
}

impl ResName {
    /// A resource name.
    pub const fn new(lk_type: u32, number: u64) -> Self {
        ResName { lk_type, number }
    }
}

impl std::fmt::Display for ResName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{:x}", self.lk_type, self.number)
    }
}

/// DLM lock modes, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Null: holds the resource (and its LVB) without blocking anyone.
    NL,
    /// Concurrent read.
    CR,
    /// Concurrent write (GFS2's "deferred" state for direct I/O).
    CW,
    /// Protected read (GFS2's "shared").
    PR,
    /// Protected write.
    PW,
    /// Exclusive.
    EX,
}

impl Mode {
    /// The DLM compatibility matrix: can a lock in `self` coexist with one in `other`?
    pub fn compatible(self, other: Mode) -> bool {
        use Mode::*;
        match (self, other) {
            (NL, _) | (_, NL) => true,
            (CR, EX) | (EX, CR) => false,
            (CR, _) | (_, CR) => true,
            (CW, CW) | (PR, PR) => true,
            _ => false,
        }
    }

    /// Whether a holder in this mode writes the LVB back when converting down.
    pub fn writes_lvb(self) -> bool {
        matches!(self, Mode::PW | Mode::EX)
    }
}

/// Options of a lock request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockFlags {
    /// Fail with [`GrantStatus::WouldBlock`] instead of waiting (`LM_FLAG_TRY`,
    /// `DLM_LKF_NOQUEUE`).
    pub try_lock: bool,
    /// Carry the 32-byte LVB with this lock (`DLM_LKF_VALBLK`).
    pub want_lvb: bool,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantStatus {
    /// Granted in the requested mode.
    Granted,
    /// A `try_lock` request that would have had to wait. The lock keeps its
    /// previous mode (or does not exist if it was a new request).
    WouldBlock,
    /// Cancelled by [`Lockspace::cancel`] while waiting.
    Cancelled,
}

/// The completion of a lock or convert request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The resource.
    pub res: ResName,
    /// How the request ended.
    pub status: GrantStatus,
    /// The mode now held (the requested one if granted, else the previous one;
    /// `None` when no lock exists).
    pub mode: Option<Mode>,
    /// The resource's LVB, when the request asked for it and was granted.
    pub lvb: Option<Lvb>,
}

/// Errors of the lock modules.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock table string is not valid for this module.
    #[error("invalid lock table {table:?}: {why}")]
    BadTable {
        /// The table as given.
        table: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A request named a lock this node does not hold, or raced with itself.
    #[error("lock {res}: {why}")]
    BadRequest {
        /// The resource.
        res: ResName,
        /// What is wrong.
        why: &'static str,
    },
    /// The lockspace was left.
    #[error("lockspace has been left")]
    Left,
    /// The lock manager failed.
    #[error("lock manager: {0}")]
    Manager(String),
    /// A previous instance of this node died holding its locks, which the
    /// lock manager keeps (orphans) so that no node reads what its journal
    /// may hold: replay journal `jid`, then [`LockProto::release_orphans`]
    /// and join again.
    #[error("lockspace {lockspace}: a previous daemon of this node died holding its locks (journal {jid})")]
    Orphaned {
        /// The lockspace.
        lockspace: String,
        /// The dead instance's journal.
        jid: u32,
    },
}

/// What a lock module tells the node that joined a lockspace. Called from the
/// module's own threads; implementations must not call back into the
/// lockspace while holding locks the module might need (queue the work).
pub trait LockCallbacks: Send + Sync {
    /// An asynchronous request completed.
    fn granted(&self, grant: Grant);
    /// This node holds `res` in a mode that blocks another node's request for
    /// `wanted`: demote (sync, invalidate, convert down) when possible.
    fn blocking(&self, res: ResName, wanted: Mode);
    /// A node of the lockspace died; the journals `jids` it held need
    /// replaying by a survivor (gfs2's `recover_slot`/`recover_done`).
    fn recover(&self, _jids: &[u32]) {}
}

/// What joining a lockspace tells the mounter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinInfo {
    /// This node is the first to mount: it must recover every dirty journal
    /// before others can proceed ([`Lockspace::first_done`]).
    pub first: bool,
    /// The journal this node must use, when the lock module decides it
    /// (`lock_dlm`: the node's DLM slot minus one, as the kernel's);
    /// `None`: the first free one, or `jid=`.
    pub jid: Option<u32>,
}

/// A lock module: joins lockspaces.
pub trait LockProto: Send + Sync {
    /// Name as given in `lockproto=` ("lock_nolock", "lock_dlm", "lock_mem").
    fn name(&self) -> &'static str;
    /// Join the lockspace named by the lock table (`cluster:fsname`).
    fn join(
        &self,
        table: &str,
        callbacks: Arc<dyn LockCallbacks>,
    ) -> Result<(Arc<dyn Lockspace>, JoinInfo), LockError>;
    /// After [`LockError::Orphaned`] and the replay of its journal: give up
    /// the dead instance's locks and its place in the lockspace.
    fn release_orphans(&self, _table: &str) -> Result<(), LockError> {
        Ok(())
    }
}

/// A joined lockspace: one node's view of the cluster's locks for one filesystem.
pub trait Lockspace: Send + Sync {
    /// Request `res` in `mode`, or convert this node's lock on it to `mode`.
    ///
    /// `lvb_out` is written to the resource's LVB when converting down from
    /// PW or EX (as the DLM does). Returns `Some(grant)` when the request
    /// completed at once, `None` when the completion will come through
    /// [`LockCallbacks::granted`].
    fn lock(
        &self,
        res: ResName,
        mode: Mode,
        flags: LockFlags,
        lvb_out: Option<&Lvb>,
    ) -> Result<Option<Grant>, LockError>;
    /// Release this node's lock on `res`, writing `lvb_out` to the resource
    /// when the lock was held in PW or EX.
    fn unlock(&self, res: ResName, lvb_out: Option<&Lvb>) -> Result<(), LockError>;
    /// Cancel a waiting request; it completes with [`GrantStatus::Cancelled`].
    fn cancel(&self, res: ResName) -> Result<(), LockError>;
    /// The first mounter finished recovery; others may now mount.
    fn first_done(&self) -> Result<(), LockError>;
    /// Leave the lockspace, dropping every lock of this node.
    fn leave(&self) -> Result<(), LockError>;
    /// Whether every request completes on the calling thread at once,
    /// never waiting for another node (lock_nolock): callers may then
    /// convert where they would otherwise hand the work to a thread of
    /// their own.
    fn completes_at_once(&self) -> bool {
        false
    }
    /// This node's id in the lockspace.
    fn node_id(&self) -> u32 {
        0
    }
    /// The filesystem has `count` journals: a node whose slot names no
    /// journal never mounted, so it is never recovered (asking for it
    /// would block every node's recovery for ever).
    fn journals(&self, _count: u32) {}
    /// This survivor replayed (or found clean) journal `jid` of a dead
    /// node: once all of a dead node's journals are done, the locks it
    /// held are released to the others.
    fn recovery_done(&self, _jid: u32) -> Result<(), LockError> {
        Ok(())
    }
}

/// The lock module named by a `lockproto=` option, for the modules that need
/// no outside state. `lock_mem` needs a shared manager and is created
/// directly with [`mem::MemLockManager`].
pub fn by_name(name: &str) -> Option<Arc<dyn LockProto>> {
    match name {
        "lock_nolock" => Some(Arc::new(nolock::NoLock)),
        "lock_dlm" => Some(Arc::new(dlm::Dlm)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compat_matrix_is_the_dlm_one() {
        use Mode::*;
        let all = [NL, CR, CW, PR, PW, EX];
        // Rows from the DLM's __dlm_compat_matrix (NL..EX).
        let expect = [
            [1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 0, 1, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 0, 0, 0, 0, 0],
        ];
        for (i, a) in all.iter().enumerate() {
            for (j, b) in all.iter().enumerate() {
                assert_eq!(a.compatible(*b), expect[i][j] == 1, "{a:?} vs {b:?}");
            }
        }
    }
}
