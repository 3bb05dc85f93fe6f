//! The fixed-newstyle handshake, from connecting to transmission:
//! `NBD_OPT_STRUCTURED_REPLY` when offered, then `NBD_OPT_GO` with the
//! block-size information, or `NBD_OPT_EXPORT_NAME` for servers without it.

use super::*;

// Handshake magics.
pub(super) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub(super) const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub(super) const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
pub(super) const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

// Handshake flags (server) and client flags.
pub(super) const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub(super) const FLAG_NO_ZEROES: u16 = 1 << 1;
pub(super) const CFLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
pub(super) const CFLAG_NO_ZEROES: u32 = 1 << 1;

// Options.
pub(super) const OPT_EXPORT_NAME: u32 = 1;
pub(super) const OPT_GO: u32 = 7;
pub(super) const OPT_STRUCTURED_REPLY: u32 = 8;

// Option replies.
pub(super) const REP_ACK: u32 = 1;
pub(super) const REP_INFO: u32 = 3;
pub(super) const REP_ERR: u32 = 1 << 31;
pub(super) const REP_ERR_UNSUP: u32 = REP_ERR + 1;
pub(super) const REP_ERR_POLICY: u32 = REP_ERR + 2;
pub(super) const REP_ERR_INVALID: u32 = REP_ERR + 3;
pub(super) const REP_ERR_TLS_REQD: u32 = REP_ERR + 5;
pub(super) const REP_ERR_UNKNOWN: u32 = REP_ERR + 6;
pub(super) const REP_ERR_SHUTDOWN: u32 = REP_ERR + 7;

// Information types.
pub(super) const INFO_EXPORT: u16 = 0;
pub(super) const INFO_BLOCK_SIZE: u16 = 3;

fn send_option(s: &mut Stream, opt: u32, data: &[u8]) -> io::Result<()> {
    let mut m = Vec::with_capacity(16 + data.len());
    m.extend_from_slice(&IHAVEOPT.to_be_bytes());
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m)
}

/// Fixed-newstyle handshake up to transmission.
fn handshake(s: &mut Stream, export: &str) -> io::Result<ExportInfo> {
    if export.len() > 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "export name longer than 4096 bytes",
        ));
    }
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello[..16])?;
    if be_u64(&hello[0..8]) != NBDMAGIC {
        return Err(proto("not an NBD server (no NBDMAGIC)"));
    }
    match be_u64(&hello[8..16]) {
        IHAVEOPT => {}
        OLDSTYLE_MAGIC => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "server uses oldstyle negotiation, which is not supported",
            ))
        }
        m => return Err(proto(format!("unknown NBD handshake magic {m:#x}"))),
    }
    s.read_exact(&mut hello[16..18])?;
    let hflags = be_u16(&hello[16..18]);
    let fixed = hflags & FLAG_FIXED_NEWSTYLE != 0;
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let mut cflags = 0u32;
    if fixed {
        cflags |= CFLAG_FIXED_NEWSTYLE;
    }
    if no_zeroes {
        cflags |= CFLAG_NO_ZEROES;
    }
    s.write_all(&cflags.to_be_bytes())?;
    let mut structured = false;
    if fixed {
        structured = opt_structured_reply(s)?;
        if let Some(mut info) = opt_go(s, export)? {
            info.structured = structured;
            return Ok(info);
        }
    }
    let mut info = opt_export_name(s, export, no_zeroes)?;
    info.structured = structured;
    Ok(info)
}

/// One option reply: its type and data.
fn read_opt_reply(s: &mut Stream, opt: u32) -> io::Result<(u32, Vec<u8>)> {
    let mut h = [0u8; 20];
    s.read_exact(&mut h)?;
    if be_u64(&h[0..8]) != OPT_REPLY_MAGIC {
        return Err(proto("bad option reply magic"));
    }
    if be_u32(&h[8..12]) != opt {
        return Err(proto("option reply for another option"));
    }
    let rtype = be_u32(&h[12..16]);
    let len = be_u32(&h[16..20]) as usize;
    if len > 64 << 10 {
        return Err(proto(format!("option reply of {len} bytes")));
    }
    let mut data = vec![0u8; len];
    s.read_exact(&mut data)?;
    Ok((rtype, data))
}

/// `NBD_OPT_STRUCTURED_REPLY`: true when the server agreed.
fn opt_structured_reply(s: &mut Stream) -> io::Result<bool> {
    send_option(s, OPT_STRUCTURED_REPLY, &[])?;
    loop {
        match read_opt_reply(s, OPT_STRUCTURED_REPLY)?.0 {
            REP_ACK => return Ok(true),
            e if e & REP_ERR != 0 => return Ok(false),
            _ => {}
        }
    }
}

/// `NBD_OPT_GO` asking for block sizes. `None` when the server does not know the option.
fn opt_go(s: &mut Stream, export: &str) -> io::Result<Option<ExportInfo>> {
    let mut d = Vec::with_capacity(8 + export.len());
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(s, OPT_GO, &d)?;
    let mut size_flags = None;
    let mut sizes = None;
    loop {
        let (rtype, data) = read_opt_reply(s, OPT_GO)?;
        let len = data.len();
        match rtype {
            REP_INFO if len >= 2 => match be_u16(&data) {
                INFO_EXPORT if len >= 12 => {
                    size_flags = Some((be_u64(&data[2..]), be_u16(&data[10..])))
                }
                INFO_BLOCK_SIZE if len >= 14 => {
                    sizes = Some((be_u32(&data[2..]), be_u32(&data[6..]), be_u32(&data[10..])))
                }
                _ => {}
            },
            REP_ACK => {
                let (size, flags) = size_flags
                    .ok_or_else(|| proto("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT"))?;
                let (min, pref, max) = sizes.unwrap_or((1, 4096, u32::MAX));
                return Ok(Some(sane_sizes(size, flags, min, pref, max)));
            }
            REP_ERR_UNSUP => return Ok(None),
            e if e & REP_ERR != 0 => return Err(option_error(e, export, &data)),
            _ => {} // unknown informational reply: ignore
        }
    }
}

fn option_error(e: u32, export: &str, data: &[u8]) -> io::Error {
    let text = String::from_utf8_lossy(data);
    let text = if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    };
    let (kind, what) = match e {
        REP_ERR_UNKNOWN => (io::ErrorKind::NotFound, "no such export"),
        REP_ERR_POLICY => (io::ErrorKind::PermissionDenied, "refused by server policy"),
        REP_ERR_TLS_REQD => (
            io::ErrorKind::Unsupported,
            "server requires TLS (not supported)",
        ),
        REP_ERR_INVALID => (io::ErrorKind::InvalidInput, "invalid request"),
        REP_ERR_SHUTDOWN => (io::ErrorKind::ConnectionAborted, "server shutting down"),
        _ => (io::ErrorKind::Other, "option refused"),
    };
    io::Error::new(
        kind,
        format!("export {export:?}: {what} (NBD reply {:#x}){text}", e),
    )
}

fn opt_export_name(s: &mut Stream, export: &str, no_zeroes: bool) -> io::Result<ExportInfo> {
    send_option(s, OPT_EXPORT_NAME, export.as_bytes())?;
    let mut r = [0u8; 10 + 124];
    let n = if no_zeroes { 10 } else { 134 };
    s.read_exact(&mut r[..n]).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("export {export:?}: server closed the connection (no such export?)"),
            )
        } else {
            e
        }
    })?;
    Ok(sane_sizes(be_u64(&r), be_u16(&r[8..]), 1, 4096, u32::MAX))
}

/// Block sizes as the protocol allows them; anything else falls back to defaults.
fn sane_sizes(size: u64, flags: u16, min: u32, pref: u32, max: u32) -> ExportInfo {
    let min_ok = min.is_power_of_two() && min <= 64 << 10;
    let min = if min_ok {
        min
    } else {
        tracing::warn!("NBD server sent minimum block size {min}: ignored");
        1
    };
    let pref = if pref.is_power_of_two() && pref >= min {
        pref
    } else {
        4096.max(min)
    };
    let max = if max == u32::MAX || (max >= pref && max & (min - 1) == 0) {
        max
    } else {
        u32::MAX
    };
    ExportInfo {
        size,
        flags,
        min_block: min,
        pref_block: pref,
        max_payload: max,
        structured: false,
    }
}

pub(super) fn connect_once(cfg: &NbdConfig) -> io::Result<(Stream, ExportInfo)> {
    let io_timeout = cfg.timeout.min(Duration::from_secs(10));
    let mut s = Stream::connect(&cfg.addr, io_timeout)?;
    s.set_timeouts(Some(io_timeout), Some(io_timeout))?;
    let info = handshake(&mut s, &cfg.export)?;
    if info.flags & TFLAG_HAS_FLAGS == 0 {
        return Err(proto("transmission flags without NBD_FLAG_HAS_FLAGS"));
    }
    // Replies may be far apart on an idle connection; writes must not hang
    // forever on a server that stopped reading.
    s.set_timeouts(None, Some(cfg.timeout))?;
    Ok((s, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_are_sanitised() {
        let i = sane_sizes(1 << 20, 1, 512, 4096, 1 << 20);
        assert_eq!(
            (i.min_block, i.pref_block, i.max_payload),
            (512, 4096, 1 << 20)
        );
        // Not powers of two; maximum below preferred.
        let i = sane_sizes(1 << 20, 1, 3, 100, 3000);
        assert_eq!(
            (i.min_block, i.pref_block, i.max_payload),
            (1, 4096, u32::MAX)
        );
        let i = sane_sizes(1 << 20, 1, 8192, 4096, 12288);
        assert_eq!(
            (i.min_block, i.pref_block, i.max_payload),
            (8192, 8192, u32::MAX)
        );
        let i = sane_sizes(1 << 20, 1, 1 << 17, 1 << 17, u32::MAX);
        assert_eq!(i.min_block, 1, "minimum above 64 KiB is invalid");
    }
}
