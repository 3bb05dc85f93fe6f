//! iSCSI initiator: `iscsi://host[:port]/TARGET-IQN/LUN`.
//!
//! Not implemented yet: parsing accepts the form, opening reports that the
//! initiator is missing.

use super::spec::invalid;
use super::BlockDevice;
use std::io;
use std::sync::Arc;

/// Where an iSCSI LUN is and how to log in to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiConfig {
    pub host: String,
    pub port: u16,
    pub target: String,
    pub lun: u32,
    pub read_only: bool,
}

/// Parse the part after `iscsi://` (`host[:port]/TARGET-IQN/LUN`).
pub fn parse_spec(spec: &str, rest: &str) -> io::Result<IscsiConfig> {
    let mut parts = rest.splitn(3, '/');
    let authority = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let lun = parts.next().unwrap_or("");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse()
                .map_err(|_| invalid(spec, format!("bad port {p:?}")))?,
        ),
        None => (authority, 3260),
    };
    if host.is_empty() || target.is_empty() {
        return Err(invalid(
            spec,
            "iSCSI devices are written iscsi://host[:port]/IQN/LUN",
        ));
    }
    let lun = lun
        .parse()
        .map_err(|_| invalid(spec, format!("bad LUN {lun:?}")))?;
    Ok(IscsiConfig {
        host: host.to_string(),
        port,
        target: target.to_string(),
        lun,
        read_only: false,
    })
}

/// Log in to the LUN described by `cfg`.
pub fn open(cfg: IscsiConfig) -> io::Result<Arc<dyn BlockDevice>> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "iscsi://{}:{}/{}/{}: the iSCSI initiator is not implemented yet",
            cfg.host, cfg.port, cfg.target, cfg.lun
        ),
    ))
}
