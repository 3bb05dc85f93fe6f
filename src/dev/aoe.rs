//! ATA over Ethernet (AoE version 1) initiator: `aoe:eSHELF.SLOT@IFACE`.
//!
//! Not implemented yet: parsing accepts the form, opening reports that the
//! initiator is missing.

use super::spec::invalid;
use super::BlockDevice;
use std::io;
use std::sync::Arc;

/// Where an AoE target is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AoeConfig {
    pub shelf: u16,
    pub slot: u8,
    pub iface: String,
    pub read_only: bool,
}

/// Parse the part after `aoe:` (`eSHELF.SLOT@IFACE`).
pub fn parse_spec(spec: &str, rest: &str) -> io::Result<AoeConfig> {
    let (target, iface) = rest
        .split_once('@')
        .ok_or_else(|| invalid(spec, "AoE devices are written aoe:eSHELF.SLOT@IFACE"))?;
    let (shelf, slot) = target
        .strip_prefix('e')
        .and_then(|t| t.split_once('.'))
        .ok_or_else(|| invalid(spec, "AoE target must be eSHELF.SLOT"))?;
    let shelf = shelf
        .parse()
        .map_err(|_| invalid(spec, format!("bad AoE shelf {shelf:?}")))?;
    let slot = slot
        .parse()
        .map_err(|_| invalid(spec, format!("bad AoE slot {slot:?}")))?;
    if iface.is_empty() {
        return Err(invalid(spec, "no network interface after @"));
    }
    Ok(AoeConfig {
        shelf,
        slot,
        iface: iface.to_string(),
        read_only: false,
    })
}

/// Open the target described by `cfg`.
pub fn open(cfg: AoeConfig) -> io::Result<Arc<dyn BlockDevice>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "aoe:e{}.{}@{}: the AoE initiator is not implemented yet",
            cfg.shelf, cfg.slot, cfg.iface
        ),
    ))
}
