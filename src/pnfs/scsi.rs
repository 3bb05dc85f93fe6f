//! The SCSI layout's fencing (RFC 8154): persistent reservations on the
//! shared LUN.
//!
//! With the block layout, fencing a client only revokes its state: a client
//! that was frozen and resumes may still have writes on their way to the
//! disk. The SCSI layout closes the disk itself. The metadata server
//! registers a key of its own and holds an *Exclusive Access - Registrants
//! Only* reservation, so only registered initiators may read or write the
//! LUN; each client is told a key of its own in GETDEVICEINFO and registers
//! it before its first I/O (the Linux client does so with REGISTER AND
//! IGNORE EXISTING KEY); fencing a client removes its registration with
//! PREEMPT AND ABORT, after which every command it sends fails with
//! RESERVATION CONFLICT. (Where the target lacks PREEMPT AND ABORT, as tgt
//! does, PREEMPT removes the registration and commands already queued at
//! the target are not aborted; see [`crate::dev::scsi::preempt_abort`].)
//!
//! A client's key is its client id (the server's boot time in the high 32
//! bits, so keys of two server runs differ); the server's key
//! [`SERVER_KEY`] has a high half no boot time takes. Every node of this
//! daemon shares the device and so the registration (the initiator
//! registers every session it opens). At start, registrations of other
//! keys (clients of an earlier run, whose layouts died with it) are
//! preempted and the reservation taken over if another key held it, or an
//! earlier run of the server through another nexus: the
//! metadata server owns the LUN's reservations. Other initiators that must
//! write the LUN (a kernel gfs2 node, another gfs2-fuse process) need a
//! registration of their own after that.

use super::ClientId;
use crate::dev::scsi::{self, PrOut, PrType, Preempted};
use crate::dev::BlockDevice;
use std::io;
use std::sync::Arc;

/// The metadata server's reservation key (high half 0x01000000: no boot
/// time, hence no client key, has it).
pub const SERVER_KEY: u64 = 0x0100_0000_0000_0000;

/// The reservation type (RFC 8154 section 2.4.1).
pub const RESERVATION: PrType = PrType::ExclusiveAccessRegistrantsOnly;

/// The reservation key `client` is told to register.
pub fn client_key(client: ClientId) -> u64 {
    client
}

/// The LUN's name in a SCSI layout volume (`pnfs_scsi_base_volume_info4`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiVolume {
    /// `pnfs_scsi_code_set` (1 binary).
    pub code_set: u32,
    /// `pnfs_scsi_designator_type` (2 EUI-64, 3 NAA).
    pub designator_type: u32,
    /// The designator's bytes from VPD page 0x83.
    pub designator: Vec<u8>,
}

/// The reservation this server holds on the shared LUN.
pub struct Fencing {
    dev: Arc<dyn BlockDevice>,
    volume: ScsiVolume,
}

impl Fencing {
    /// Take the LUN under `dev` for the SCSI layout: read its designator,
    /// register [`SERVER_KEY`], drop other registrations and hold the
    /// reservation. `Ok(None)`: not a SCSI LUN this daemon reaches (the
    /// block layout only).
    pub fn take(dev: &Arc<dyn BlockDevice>) -> io::Result<Option<Fencing>> {
        let Some(lun) = dev.scsi() else {
            return Ok(None);
        };
        let what = dev.describe();
        let ctx = |step: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("{what}: SCSI layout: {step}: {e}"))
        };
        if !scsi::supports(lun, RESERVATION).map_err(|e| ctx("REPORT CAPABILITIES", e))? {
            return Err(io::Error::other(format!(
                "{what}: SCSI layout: the LUN offers no Exclusive Access - Registrants Only reservation"
            )));
        }
        let d = scsi::designator(lun).map_err(|e| ctx("VPD page 0x83", e))?;
        scsi::register(lun, SERVER_KEY).map_err(|e| ctx("REGISTER", e))?;
        let mut stale = scsi::read_keys(lun).map_err(|e| ctx("READ KEYS", e))?;
        stale.retain(|k| *k != SERVER_KEY);
        stale.sort_unstable();
        stale.dedup();
        for k in stale {
            // Takes the reservation over too if `k` held it.
            match lun.pr_out(PrOut::Preempt, Some(RESERVATION), SERVER_KEY, k) {
                Ok(()) => tracing::info!("{what}: stale registration {k:#x} preempted"),
                Err(e) => tracing::warn!("{what}: preempting stale registration {k:#x}: {e}"),
            }
        }
        if let Err(e) = scsi::reserve(lun, SERVER_KEY, RESERVATION) {
            // A server of an earlier run (crashed, or killed) still holds
            // it with our key through a nexus of its own: take it over
            // (PREEMPT of our own key moves the reservation to this nexus
            // and drops the others' registrations of the key), then register
            // every session of ours again.
            let held = scsi::read_reservation(lun).map_err(|e| ctx("READ RESERVATION", e))?;
            if held.map(|r| r.key) != Some(SERVER_KEY) {
                return Err(ctx("RESERVE", e));
            }
            lun.pr_out(PrOut::Preempt, Some(RESERVATION), SERVER_KEY, SERVER_KEY)
                .map_err(|e| ctx("PREEMPT of an earlier run's reservation", e))?;
            scsi::register(lun, SERVER_KEY).map_err(|e| ctx("REGISTER", e))?;
            scsi::reserve(lun, SERVER_KEY, RESERVATION).map_err(|e| ctx("RESERVE", e))?;
            tracing::info!("{what}: the reservation of an earlier run taken over");
        }
        let volume = ScsiVolume {
            code_set: u32::from(d.code_set),
            designator_type: u32::from(d.kind),
            designator: d.bytes,
        };
        tracing::info!(
            "{what}: SCSI layout: reservation held with key {SERVER_KEY:#x}; LUN {}",
            d_name(&volume)
        );
        Ok(Some(Fencing {
            dev: dev.clone(),
            volume,
        }))
    }

    /// The volume clients are told about.
    pub fn volume(&self) -> &ScsiVolume {
        &self.volume
    }

    /// Cut `client` off the LUN. Errors are logged: a client already
    /// without a registration (it never did I/O, or was fenced before)
    /// makes the target refuse the preemption, which is fine.
    pub fn fence(&self, client: ClientId) {
        let Some(lun) = self.dev.scsi() else {
            return;
        };
        let key = client_key(client);
        match scsi::preempt_abort(lun, SERVER_KEY, key, RESERVATION) {
            Ok(Preempted::Aborted) => {
                tracing::warn!(client, "client fenced at the LUN: PREEMPT AND ABORT of key {key:#x}")
            }
            Ok(Preempted::RegistrationsOnly) => tracing::warn!(
                client,
                "client fenced at the LUN: PREEMPT of key {key:#x} (the target has no PREEMPT AND ABORT)"
            ),
            Err(e) if crate::dev::errno_of(&e) == Some(libc::EBADE) => {
                tracing::info!(client, "client has no registration at the LUN: {e}")
            }
            Err(e) => tracing::error!(client, "fencing the client at the LUN failed: {e}"),
        }
    }

    /// Give the reservation and our registration up (unmount).
    pub fn release(&self) {
        let Some(lun) = self.dev.scsi() else {
            return;
        };
        if let Err(e) = lun.pr_out(PrOut::Release, Some(RESERVATION), SERVER_KEY, 0) {
            tracing::warn!("releasing the SCSI reservation: {e}");
        }
        if let Err(e) = scsi::register(lun, 0) {
            tracing::warn!("unregistering the server's key: {e}");
        }
    }
}

fn d_name(v: &ScsiVolume) -> String {
    let hex: String = v.designator.iter().map(|b| format!("{b:02x}")).collect();
    format!("designator type {} 0x{hex}", v.designator_type)
}
