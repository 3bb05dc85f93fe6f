//! Device specifications: what a user writes where a device is expected.
//!
//! ```text
//! /dev/sdb, ./image.img, file:///path      a local file or block device
//! nbd://host[:port]/export[?timeout=SECS]  NBD over TCP (port 10809 by default)
//! nbd+unix:///export?socket=/path          NBD over a Unix-domain socket
//! aoe:eSHELF.SLOT@IFACE[?timeout=SECS]      ATA over Ethernet (see [`super::aoe`])
//! iscsi://[user[%secret]@]host[:port]/IQN/LUN[?timeout=SECS]
//!                                           iSCSI (see [`super::iscsi`])
//! ```
//! IPv6 hosts are written in brackets (`nbd://[::1]:10809/exp`). An empty
//! export name selects the server's default export. `timeout` overrides
//! how long a request may wait before failing with EIO (default 30 s, or
//! `GFS2_NBD_TIMEOUT`, `GFS2_AOE_TIMEOUT`, `GFS2_ISCSI_TIMEOUT`).

use super::file::{FileDevice, OpenFlags};
use super::nbd::{NbdAddr, NbdConfig, NbdDevice, DEFAULT_PORT};
use super::{aoe, iscsi, BlockDevice};
use std::ffi::OsStr;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// A parsed device specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    Path(PathBuf),
    Nbd(NbdConfig),
    Aoe(aoe::AoeConfig),
    Iscsi(iscsi::IscsiConfig),
}

pub(super) fn invalid(spec: &str, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("device {spec:?}: {why}"),
    )
}

fn unsupported(spec: &str, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("device {spec:?}: {why}"),
    )
}

/// The URI scheme of `spec`, if it has the `scheme://` form.
fn scheme(spec: &str) -> Option<(&str, &str)> {
    let (s, rest) = spec.split_once("://")?;
    let mut c = s.chars();
    let ok = c.next().is_some_and(|c| c.is_ascii_alphabetic())
        && c.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    ok.then_some((s, rest))
}

fn percent_decode(spec: &str, s: &str) -> io::Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid(spec, "bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid(spec, "export name is not UTF-8"))
}

/// Parse a specification without opening anything.
pub fn parse(spec: &str) -> io::Result<Spec> {
    let Some((sch, rest)) = scheme(spec) else {
        if let Some(rest) = spec
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("aoe:"))
            .map(|_| &spec[4..])
        {
            return aoe::parse_spec(spec, rest).map(Spec::Aoe);
        }
        if spec.is_empty() {
            return Err(invalid(spec, "empty device name"));
        }
        return Ok(Spec::Path(PathBuf::from(spec)));
    };
    match sch.to_ascii_lowercase().as_str() {
        "file" => {
            if !rest.starts_with('/') {
                return Err(invalid(spec, "file:// needs an absolute path"));
            }
            Ok(Spec::Path(PathBuf::from(percent_decode(spec, rest)?)))
        }
        "nbd" | "nbd+tcp" | "nbd+unix" => parse_nbd(spec, sch, rest).map(Spec::Nbd),
        "nbds" | "nbds+tcp" | "nbds+unix" => Err(unsupported(spec, "NBD over TLS is not supported")),
        "iscsi" => iscsi::parse_spec(spec, rest).map(Spec::Iscsi),
        "aoe" => Err(invalid(spec, "AoE devices are written aoe:eSHELF.SLOT@IFACE")),
        _ => Err(invalid(
            spec,
            format!("unknown scheme {sch}:// (use a path, nbd://host[:port]/export or nbd+unix:///export?socket=PATH)"),
        )),
    }
}

fn parse_nbd(spec: &str, sch: &str, rest: &str) -> io::Result<NbdConfig> {
    let unix = sch.eq_ignore_ascii_case("nbd+unix");
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let export = percent_decode(spec, path)?;
    let mut socket = None;
    let mut timeout = None;
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "socket" => socket = Some(PathBuf::from(percent_decode(spec, v)?)),
            "timeout" => {
                timeout = Some(
                    super::parse_secs(v)
                        .ok_or_else(|| invalid(spec, format!("bad timeout {v:?}")))?,
                );
            }
            _ => return Err(invalid(spec, format!("unknown parameter {k:?}"))),
        }
    }
    let addr = if unix {
        if !authority.is_empty() {
            return Err(invalid(
                spec,
                "nbd+unix:// takes no host (nbd+unix:///export?socket=PATH)",
            ));
        }
        NbdAddr::Unix(socket.ok_or_else(|| invalid(spec, "nbd+unix:// needs ?socket=PATH"))?)
    } else {
        if socket.is_some() {
            return Err(invalid(spec, "socket= is only for nbd+unix://"));
        }
        let (host, port) = host_port(spec, authority, DEFAULT_PORT)?;
        NbdAddr::Tcp {
            host: host.to_string(),
            port,
        }
    };
    let mut cfg = NbdConfig::new(addr, &export);
    if let Some(t) = timeout {
        cfg.timeout = t;
    }
    Ok(cfg)
}

/// `host[:port]` or `[v6-address][:port]`, with `default` for a missing
/// port; an empty host or port 0 is refused.
pub(super) fn host_port<'a>(
    spec: &str,
    authority: &'a str,
    default: u16,
) -> io::Result<(&'a str, u16)> {
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| invalid(spec, "unclosed [ in host"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| invalid(spec, "junk after ]"))?,
            ),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(invalid(spec, "no host"));
    }
    let port = match port {
        None => default,
        Some(p) => p
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(spec, format!("bad port {p:?}")))?,
    };
    Ok((host, port))
}

/// Open a device from its specification.
pub fn open(spec: &str, read_only: bool) -> io::Result<Arc<dyn BlockDevice>> {
    match parse(spec)? {
        Spec::Path(p) => Ok(Arc::new(FileDevice::open(
            &p,
            OpenFlags {
                read_only,
                direct: false,
            },
        )?)),
        Spec::Nbd(mut cfg) => {
            cfg.read_only = read_only;
            Ok(Arc::new(NbdDevice::connect(cfg)?))
        }
        Spec::Aoe(mut cfg) => {
            cfg.read_only = read_only;
            aoe::open(cfg)
        }
        Spec::Iscsi(mut cfg) => {
            cfg.read_only = read_only;
            iscsi::open(cfg)
        }
    }
}

/// [`open`] for command-line arguments: a name that is not UTF-8 is a path.
pub fn open_os(spec: &OsStr, read_only: bool) -> io::Result<Arc<dyn BlockDevice>> {
    match spec.to_str() {
        Some(s) => open(s, read_only),
        None => Ok(Arc::new(FileDevice::open(
            std::path::Path::new(spec),
            OpenFlags {
                read_only,
                direct: false,
            },
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn nbd(s: &str) -> NbdConfig {
        match parse(s).unwrap() {
            Spec::Nbd(c) => c,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn paths() {
        assert_eq!(parse("/dev/sdb").unwrap(), Spec::Path("/dev/sdb".into()));
        assert_eq!(parse("img:1").unwrap(), Spec::Path("img:1".into()));
        assert_eq!(
            parse("file:///tmp/a%20b").unwrap(),
            Spec::Path("/tmp/a b".into())
        );
        assert!(parse("").is_err());
    }

    #[test]
    fn nbd_tcp() {
        let c = nbd("nbd://host/exp");
        assert_eq!(
            c.addr,
            NbdAddr::Tcp {
                host: "host".into(),
                port: 10809
            }
        );
        assert_eq!(c.export, "exp");
        let c = nbd("nbd://127.0.0.1:1234/a%2Fb?timeout=2.5");
        assert_eq!(
            c.addr,
            NbdAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 1234
            }
        );
        assert_eq!(c.export, "a/b");
        assert_eq!(c.timeout, Duration::from_millis(2500));
        let c = nbd("nbd://[::1]:99");
        assert_eq!(
            c.addr,
            NbdAddr::Tcp {
                host: "::1".into(),
                port: 99
            }
        );
        assert_eq!(c.export, "");
        assert_eq!(c.uri(), "nbd://[::1]:99/");
        for bad in [
            "nbd:///exp",
            "nbd://h:0/e",
            "nbd://h:x/e",
            "nbd://h/e?socket=/s",
            "nbd://h/e?bogus=1",
            "nbd://h/e?timeout=-1",
            "nbd://[::1/e",
        ] {
            assert_eq!(
                parse(bad).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad}"
            );
        }
    }

    #[test]
    fn nbd_unix() {
        let c = nbd("nbd+unix:///exp?socket=/run/nbd.sock");
        assert_eq!(c.addr, NbdAddr::Unix("/run/nbd.sock".into()));
        assert_eq!(c.export, "exp");
        assert_eq!(c.uri(), "nbd+unix:///exp?socket=/run/nbd.sock");
        assert!(parse("nbd+unix:///exp").is_err());
        assert!(parse("nbd+unix://host/exp?socket=/s").is_err());
    }

    #[test]
    fn unsupported_schemes() {
        let e = parse("nbds://h/e").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(e.to_string().contains("not supported"), "{e}");
        let e = parse("http://x/y").unwrap_err();
        assert!(e.to_string().contains("unknown scheme"), "{e}");
    }
}
