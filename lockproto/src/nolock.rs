//! `lock_nolock`: a single node owns the filesystem, so every request is
//! granted at once and nothing is ever recalled. The glock code above runs
//! exactly the same path as with a cluster lock manager.

use crate::{
    Grant, GrantStatus, JoinInfo, LockCallbacks, LockError, LockFlags, LockProto, Lockspace, Lvb,
    Mode, ResName,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The `lock_nolock` module.
pub struct NoLock;

impl LockProto for NoLock {
    fn name(&self) -> &'static str {
        "lock_nolock"
    }
    fn join(
        &self,
        _table: &str,
        _callbacks: Arc<dyn LockCallbacks>,
    ) -> Result<(Arc<dyn Lockspace>, JoinInfo), LockError> {
        Ok((
            Arc::new(NoLockSpace {
                lvbs: Mutex::new(HashMap::new()),
            }),
            JoinInfo {
                first: true,
                jid: None,
            },
        ))
    }
}

/// A nolock lockspace: keeps LVBs so that code relying on them sees its own
/// writes, as a single DLM node would.
struct NoLockSpace {
    lvbs: Mutex<HashMap<ResName, Lvb>>,
}

impl Lockspace for NoLockSpace {
    fn completes_at_once(&self) -> bool {
        true
    }
    fn lock(
        &self,
        res: ResName,
        mode: Mode,
        flags: LockFlags,
        lvb_out: Option<&Lvb>,
    ) -> Result<Option<Grant>, LockError> {
        let mut lvbs = self
            .lvbs
            .lock()
            .map_err(|_| LockError::Manager("poisoned".into()))?;
        if let Some(v) = lvb_out {
            lvbs.insert(res, *v);
        }
        let lvb = flags
            .want_lvb
            .then(|| lvbs.get(&res).copied().unwrap_or([0; crate::LVB_SIZE]));
        Ok(Some(Grant {
            res,
            status: GrantStatus::Granted,
            mode: Some(mode),
            lvb,
        }))
    }
    fn unlock(&self, res: ResName, lvb_out: Option<&Lvb>) -> Result<(), LockError> {
        if let Some(v) = lvb_out {
            let mut lvbs = self
                .lvbs
                .lock()
                .map_err(|_| LockError::Manager("poisoned".into()))?;
            lvbs.insert(res, *v);
        }
        Ok(())
    }
    fn cancel(&self, _res: ResName) -> Result<(), LockError> {
        Ok(())
    }
    fn first_done(&self) -> Result<(), LockError> {
        Ok(())
    }
    fn leave(&self) -> Result<(), LockError> {
        Ok(())
    }
}
