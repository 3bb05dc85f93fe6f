//! `lock_dlm`: the Linux DLM through its userspace device (the cluster issue).
//!
//! Not implemented yet. This is where it goes: a [`LockProto`] whose `join`
//! creates or opens the lockspace named by [`crate::lockspace_name`] of the
//! lock table, and a [`crate::Lockspace`] that submits requests on resources
//! named by [`crate::resource_name`], mapping [`crate::Mode`] to DLM modes
//! one to one, and routing the DLM's AST/BAST completions to
//! [`crate::LockCallbacks::granted`] / [`crate::LockCallbacks::blocking`].
//! Until then joining fails with a clear error rather than silently running
//! without cluster locking.

use crate::{JoinInfo, LockCallbacks, LockError, LockProto, Lockspace};
use std::sync::Arc;

/// The `lock_dlm` module (placeholder).
pub struct Dlm;

impl LockProto for Dlm {
    fn name(&self) -> &'static str {
        "lock_dlm"
    }
    fn join(
        &self,
        table: &str,
        _callbacks: Arc<dyn LockCallbacks>,
    ) -> Result<(Arc<dyn Lockspace>, JoinInfo), LockError> {
        crate::lockspace_name(table)?;
        Err(LockError::Manager(
            "lock_dlm is not implemented yet; use lockproto=lock_nolock on a single node".into(),
        ))
    }
}
