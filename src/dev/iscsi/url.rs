//! The device URL: `iscsi://[user[%secret]@]host[:port]/TARGET-IQN/LUN[?options]`,
//! its defaults and the environment variables that stand in for parts of it.

use super::*;

/// The IANA port of iSCSI.
pub const DEFAULT_PORT: u16 = 3260;
/// How long a request may wait for its answer, reconnections included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable overriding [`DEFAULT_TIMEOUT`], in seconds (fractions allowed).
pub const TIMEOUT_ENV: &str = "GFS2_ISCSI_TIMEOUT";
/// The CHAP secret when the URL names a user but no secret (as libiscsi's tools).
pub const PASSWORD_ENV: &str = "LIBISCSI_CHAP_PASSWORD";
/// Largest transfer of one SCSI command.
pub const MAX_CHUNK: usize = 1 << 20;
/// Our initiator name (IQN); the host name is appended.
pub const INITIATOR_PREFIX: &str = "iqn.2024-01.org.gfs2-fuse:";

/// A secret that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Where an iSCSI LUN is and how to log in to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiConfig {
    pub host: String,
    pub port: u16,
    pub target: String,
    pub lun: u32,
    pub read_only: bool,
    /// CHAP: our user name and secret (none: no authentication).
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Mutual CHAP: the name and secret the target must answer with.
    pub target_user: Option<String>,
    pub target_password: Option<Secret>,
    /// How long a request may wait (reconnections included) before EIO.
    pub timeout: Duration,
    /// `?initiator_per_session=1`: each session logs in under an initiator
    /// name of its own (ours with `.s` and the session's ISID appended)
    /// rather than one name with several ISIDs. For targets that tie
    /// persistent reservation access to the initiator name: Linux LIO
    /// lets only the holder's ISID through among sessions of the holder's
    /// name under the Registrants Only types, so the other sessions of the
    /// pNFS server's pool would meet RESERVATION CONFLICT. Not for targets
    /// that allow initiators by name (ACLs).
    pub initiator_per_session: bool,
}

impl IscsiConfig {
    /// A configuration without authentication, with the timeout from
    /// [`TIMEOUT_ENV`] or the default.
    pub fn new(host: &str, port: u16, target: &str, lun: u32) -> Self {
        IscsiConfig {
            host: host.to_string(),
            port,
            target: target.to_string(),
            lun,
            read_only: false,
            user: None,
            password: None,
            target_user: None,
            target_password: None,
            timeout: timeout_from_env(),
            initiator_per_session: false,
        }
    }

    /// `host:port`, IPv6 addresses in brackets.
    pub fn portal(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL without credentials, for messages.
    pub fn uri(&self) -> String {
        format!("iscsi://{}/{}/{}", self.portal(), self.target, self.lun)
    }
}

/// [`DEFAULT_TIMEOUT`], or [`TIMEOUT_ENV`] when it holds a positive number of seconds.
pub fn timeout_from_env() -> Duration {
    crate::dev::timeout_from(TIMEOUT_ENV, DEFAULT_TIMEOUT)
}

/// Parse the part after `iscsi://`:
/// `[user[%secret]@]host[:port]/TARGET-IQN/LUN[?timeout=S&target_user=U&target_password=P&initiator_per_session=0|1]`.
pub fn parse_spec(spec: &str, rest: &str) -> io::Result<IscsiConfig> {
    const FORM: &str = "iSCSI devices are written iscsi://[user[%secret]@]host[:port]/IQN/LUN";
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut parts = rest.splitn(3, '/');
    let authority = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let lun = parts.next().unwrap_or("");
    let (creds, hostport) = match authority.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, authority),
    };
    let (host, port) = crate::dev::spec::host_port(spec, hostport, DEFAULT_PORT)?;
    if host.is_empty() || target.is_empty() || target.contains('/') {
        return Err(invalid(spec, FORM));
    }
    let lun: u32 = lun
        .parse()
        .ok()
        .filter(|l| *l < 1 << 14)
        .ok_or_else(|| invalid(spec, format!("bad LUN {lun:?}")))?;
    let mut cfg = IscsiConfig::new(host, port, target, lun);
    if let Some(c) = creds {
        let (user, pw) = match c.split_once('%') {
            Some((u, p)) => (u, Some(p.to_string())),
            None => (c, std::env::var(PASSWORD_ENV).ok()),
        };
        if user.is_empty() {
            return Err(invalid(spec, "empty CHAP user name"));
        }
        let pw = pw.ok_or_else(|| {
            invalid(
                spec,
                format!("CHAP user {user:?} without a secret (write user%secret@ or set {PASSWORD_ENV})"),
            )
        })?;
        cfg.user = Some(user.to_string());
        cfg.password = Some(Secret(pw));
    }
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "timeout" => {
                cfg.timeout = crate::dev::parse_secs(v)
                    .ok_or_else(|| invalid(spec, format!("bad timeout {v:?}")))?;
            }
            "target_user" => cfg.target_user = Some(v.to_string()),
            "target_password" => cfg.target_password = Some(Secret(v.to_string())),
            "initiator_per_session" => {
                cfg.initiator_per_session = match v {
                    "1" => true,
                    "0" => false,
                    _ => {
                        return Err(invalid(
                            spec,
                            format!("initiator_per_session={v:?}: 0 or 1"),
                        ))
                    }
                }
            }
            _ => return Err(invalid(spec, format!("unknown parameter {k:?}"))),
        }
    }
    if cfg.target_user.is_some() != cfg.target_password.is_some() {
        return Err(invalid(
            spec,
            "mutual CHAP needs both target_user and target_password",
        ));
    }
    if cfg.target_user.is_some() && cfg.user.is_none() {
        return Err(invalid(spec, "mutual CHAP needs a user%secret@ as well"));
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        let c = parse_spec("x", "127.0.0.1:3261/iqn.2026-01.x:t/1").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.target.as_str(), c.lun),
            ("127.0.0.1", 3261, "iqn.2026-01.x:t", 1)
        );
        assert_eq!(c.user, None);
        assert_eq!(c.uri(), "iscsi://127.0.0.1:3261/iqn.2026-01.x:t/1");
        let c = parse_spec("x", "h/iqn.a:b/0?initiator_per_session=1").unwrap();
        assert!(c.initiator_per_session);
        assert!(
            !parse_spec("x", "h/iqn.a:b/0")
                .unwrap()
                .initiator_per_session
        );
        assert!(parse_spec("x", "h/iqn.a:b/0?initiator_per_session=yes").is_err());
        let c = parse_spec("x", "u%s3cr%t@[::1]/iqn.a:b/0?timeout=2.5").unwrap();
        assert_eq!(c.host, "::1");
        assert_eq!(c.port, 3260);
        assert_eq!(c.user.as_deref(), Some("u"));
        assert_eq!(c.password, Some(Secret("s3cr%t".into())));
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.uri(), "iscsi://[::1]:3260/iqn.a:b/0");
        assert!(!format!("{c:?}").contains("s3cr"));
        let c = parse_spec("x", "u%p@h/iqn.a:b/3?target_user=t&target_password=tp").unwrap();
        assert_eq!(c.target_user.as_deref(), Some("t"));
        for bad in [
            "/iqn/1",
            "h/iqn",
            "h/iqn/x",
            "h:0/iqn/1",
            "h:99999/iqn/1",
            "h/iqn/1?bogus=1",
            "h/iqn/1?timeout=0",
            "%p@h/iqn/1",
            "h/iqn/1?target_user=t",
            "h/iqn/1?target_user=t&target_password=p",
            "[::1/iqn/1",
        ] {
            assert!(parse_spec("x", bad).is_err(), "{bad}");
        }
    }
}
