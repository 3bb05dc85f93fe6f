//! `lock_dlm`: the Linux DLM through its userspace device, in the same
//! lockspace and under the same resource names as the kernel's lock_dlm, so
//! FUSE nodes and kernel nodes mount one disk together.
//!
//! - [`wire`]: the device protocol's bytes (`linux/dlm_device.h`).
//! - [`sys`]: the cluster as configfs shows it, and the devices.
//! - [`space`]: one lockspace: requests, conversions, completions and
//!   blocking callbacks.
//! - [`kmsg`] and [`control`]: the recovery callbacks the kernel's gfs2
//!   gets from the DLM, read from the kernel log, and the mount/recovery
//!   protocol on the control and mounted locks built on them.
//!
//! Joining: the lock table's cluster part must name the running cluster
//! (as the kernel checks); the lockspace (the table's fsname) is created or
//! joined through `dlm-control` with no flags and the 32-byte LVB the
//! device always uses, which is the configuration a kernel node's
//! lockspace compares equal to. The journal id is our DLM slot minus one,
//! as the kernel's.
//!
//! A daemon that dies while its node stays up is not a failed node: the DLM
//! would drop a closed device's locks and nobody would replay its journal.
//! Every lock is therefore taken `PERSISTENT`: the dead daemon's locks stay
//! (orphans) and keep everyone away from what it may have left
//! half-written. A restarted daemon finds the lockspace still there
//! (creating it fails) and the journal it used in its record under
//! `/run/gfs2-fuse/dlm`: it replays that journal while the orphans still
//! guard it, then purges them, removes the lockspace and joins afresh
//! ([`LockError::Orphaned`], [`LockProto::release_orphans`]). Rebooting the
//! node does as well: the others then see a failed node and replay it.

pub mod control;
pub mod kmsg;
pub mod space;
pub mod sys;
pub(crate) mod wire;

use crate::{
    Grant, JoinInfo, LockCallbacks, LockError, LockFlags, LockProto, Lockspace, Lvb, Mode, ResName,
};
use control::Control;
use space::{Gate, Space};
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The `lock_dlm` module.
pub struct Dlm;

impl LockProto for Dlm {
    fn name(&self) -> &'static str {
        "lock_dlm"
    }
    fn release_orphans(&self, table: &str) -> Result<(), LockError> {
        release_orphans(crate::lockspace_name(table)?)
    }
    fn join(
        &self,
        table: &str,
        callbacks: Arc<dyn LockCallbacks>,
    ) -> Result<(Arc<dyn Lockspace>, JoinInfo), LockError> {
        let fsname = crate::lockspace_name(table)?;
        let cluster_part = table.split(':').next().unwrap_or_default();
        let cluster = sys::cluster()?;
        if cluster.name != cluster_part {
            return Err(LockError::Manager(format!(
                "lock table {table:?} names cluster {cluster_part:?}, but this node is in \
                 cluster {:?} (change it with tunegfs2 -o locktable= or mount -o locktable=)",
                cluster.name
            )));
        }
        // The log from before the lockspace exists: its join's lines follow.
        let kmsg = kmsg::Kmsg::open(fsname)?;
        let mut ctl = sys::open_misc("dlm-control")?;
        let minor = match ctl.write(&wire::create_lockspace(fsname, wire::LSFL_NEWEXCL)) {
            Ok(m) => m as u32,
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST)
                    && sys::misc_exists(&format!("dlm_{fsname}")) =>
            {
                // Created from userspace: a daemon of ours that died here.
                let rec = sys::jid_record(fsname);
                return match std::fs::read_to_string(&rec)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    Some(jid) => Err(LockError::Orphaned {
                        lockspace: fsname.to_string(),
                        jid,
                    }),
                    None => Err(LockError::Manager(format!(
                        "the DLM lockspace {fsname} was left here by a process that died, and \
                         {} does not say which journal it used: reboot this node (the others \
                         then replay its journal)",
                        rec.display()
                    ))),
                };
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(LockError::Manager(format!(
                    "the DLM lockspace {fsname} exists on this node already: the kernel's \
                     gfs2 has this filesystem mounted here"
                )))
            }
            Err(e) => {
                return Err(LockError::Manager(format!(
                    "creating DLM lockspace {fsname}: {e}"
                )))
            }
        };
        let dev = match sys::open_misc(&format!("dlm_{fsname}")) {
            Ok(d) => d,
            Err(e) => {
                let _ = ctl.write(&wire::remove_lockspace(minor, wire::REMOVE_FORCEFREE));
                return Err(e);
            }
        };
        let space = Space::new(fsname, dev, callbacks.clone())?;
        let reader = {
            let s = space.clone();
            std::thread::Builder::new()
                .name("dlm-reader".into())
                .spawn(move || s.run_reader())
                .map_err(|e| LockError::Manager(format!("spawning the DLM reader: {e}")))?
        };
        let control = Control::new(cluster.node_id, kmsg, space.clone(), callbacks);
        let gate: Arc<dyn Gate> = control.clone();
        space.set_gate(Arc::downgrade(&gate));
        let ls = Arc::new(DlmLockspace {
            space,
            control: control.clone(),
            ctl: Mutex::new(ctl),
            minor,
            node_id: cluster.node_id,
            fsname: fsname.to_string(),
            threads: Mutex::new(vec![reader]),
        });
        let joined = (|| {
            let jid = control.wait_joined()?;
            tracing::info!(
                lockspace = fsname,
                node = cluster.node_id,
                jid,
                "joined the DLM lockspace"
            );
            let first = control.mount()?;
            Ok::<_, LockError>((jid, first))
        })();
        let (jid, first) = match joined {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(lockspace = fsname, "joining: {e}; leaving the lockspace");
                if let Err(l) = ls.leave() {
                    tracing::error!(lockspace = fsname, "leaving: {l}");
                }
                return Err(e);
            }
        };
        let rec = sys::jid_record(fsname);
        let recorded = rec
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&rec, format!("{jid}\n")));
        if let Err(e) = recorded {
            // Without it a crashed daemon cannot be restarted in place (the
            // node must be rebooted instead): worth a warning, not a failure.
            tracing::warn!("{}: {e}", rec.display());
        }
        let watcher = std::thread::Builder::new()
            .name("dlm-recovery".into())
            .spawn(move || control.run())
            .map_err(|e| LockError::Manager(format!("spawning the DLM recovery thread: {e}")))?;
        ls.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(watcher);
        Ok((
            ls,
            JoinInfo {
                first,
                jid: Some(jid),
            },
        ))
    }
}

/// Give up the locks a dead daemon of this node left in lockspace
/// `fsname` (after its journal was replayed) and the lockspace itself, so
/// that a fresh join follows (its slot and generations come from new
/// recovery lines).
fn release_orphans(fsname: &str) -> Result<(), LockError> {
    let dev_name = format!("dlm_{fsname}");
    let minor = sys::misc_minor(&dev_name)?;
    {
        let mut dev = sys::open_misc(&dev_name)?;
        dev.write(&wire::purge(0, 0))
            .map_err(|e| LockError::Manager(format!("purging the orphaned locks: {e}")))?;
    }
    let mut ctl = sys::open_misc("dlm-control")?;
    ctl.write(&wire::remove_lockspace(minor, wire::REMOVE_FORCEFREE))
        .map_err(|e| LockError::Manager(format!("removing the dead daemon's lockspace: {e}")))?;
    let _ = std::fs::remove_file(sys::jid_record(fsname));
    tracing::info!(
        lockspace = fsname,
        "the dead daemon's locks and lockspace are released"
    );
    Ok(())
}

impl Gate for Control {
    fn blocked(&self) -> bool {
        Control::blocked(self)
    }
    fn wait_unblocked(&self) {
        Control::wait_unblocked(self)
    }
}

/// A joined DLM lockspace.
struct DlmLockspace {
    space: Arc<Space>,
    control: Arc<Control>,
    ctl: Mutex<File>,
    minor: u32,
    node_id: u32,
    fsname: String,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Lockspace for DlmLockspace {
    fn lock(
        &self,
        res: ResName,
        mode: Mode,
        flags: LockFlags,
        lvb_out: Option<&Lvb>,
    ) -> Result<Option<Grant>, LockError> {
        // The DLM answers these without waiting for another node; the glock
        // layer wants try-locks answered at once.
        let held = self.space.mode_of(res);
        let sync = flags.try_lock || held.is_some_and(|h| mode <= h);
        self.space.request(res, mode, flags, lvb_out, sync)
    }
    fn unlock(&self, res: ResName, lvb_out: Option<&Lvb>) -> Result<(), LockError> {
        self.space.unlock(res, lvb_out)
    }
    fn cancel(&self, res: ResName) -> Result<(), LockError> {
        self.space.cancel(res)
    }
    fn first_done(&self) -> Result<(), LockError> {
        self.control.first_done()
    }
    fn leave(&self) -> Result<(), LockError> {
        tracing::debug!("leaving the DLM lockspace");
        self.control.stop();
        for (res, _) in self.space.held() {
            if let Err(e) = self.space.unlock(res, None) {
                tracing::warn!(%res, "unlock on leave: {e}");
            }
        }
        self.space.close("the lockspace was left");
        for t in std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner())) {
            let _ = t.join();
        }
        tracing::debug!("DLM threads stopped");
        // The DLM waits for the device's last descriptor before it removes
        // the lockspace.
        self.space.close_device();
        tracing::debug!("locks released, removing the lockspace");
        let removed = self
            .ctl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(&wire::remove_lockspace(self.minor, wire::REMOVE_FORCEFREE));
        if removed.is_ok() {
            let _ = std::fs::remove_file(sys::jid_record(&self.fsname));
        }
        removed
            .map(|_| ())
            .map_err(|e| LockError::Manager(format!("leaving the DLM lockspace: {e}")))
    }
    fn node_id(&self) -> u32 {
        self.node_id
    }
    fn journals(&self, count: u32) {
        self.control.set_journals(count);
    }
    fn recovery_done(&self, jid: u32) -> Result<(), LockError> {
        self.control.recovery_done(jid);
        Ok(())
    }
}
