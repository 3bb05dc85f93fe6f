//! SCSI logical units seen as more than a block device: the LUN's identity
//! (INQUIRY VPD page 0x83, Device Identification) and persistent
//! reservations (PERSISTENT RESERVE IN/OUT, SPC-4 sections 5.13, 6.15, 6.16).
//!
//! The pNFS SCSI layout (RFC 8154) needs both: a client finds the shared
//! disk by the LUN's designator, and the metadata server cuts a client off
//! the disk by preempting its reservation key. A device that can carry such
//! commands (our iSCSI initiator) offers a [`ScsiLun`] through
//! [`super::BlockDevice::scsi`]; this module holds the command encodings and
//! the bounds-checked parsing of the target's answers, so that they are
//! checked once, here, against the standard's layouts.
//!
//! Reservations belong to an I_T nexus (an initiator port and a target
//! port). The iSCSI initiator keeps several sessions (several nexuses) per
//! device, and every node of a daemon opens the device itself, so a
//! registration applies to every session of every device of the process on
//! that LUN, present and future (see [`super::iscsi`]). Targets differ:
//! tgt 1.0.85 has no PREEMPT AND ABORT and refuses APTPL (which the Linux
//! client sets when it registers, so tgt cannot serve the pNFS SCSI layout
//! to Linux clients); Linux LIO has both, but under the Registrants Only
//! types lets only the holder's ISID through among sessions sharing its
//! initiator name (`?initiator_per_session=1` gives each session a name).

use std::io;

/// PERSISTENT RESERVE IN service actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrIn {
    ReadKeys = 0,
    ReadReservation = 1,
    ReportCapabilities = 2,
}

/// PERSISTENT RESERVE OUT service actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrOut {
    Register = 0,
    Reserve = 1,
    Release = 2,
    Clear = 3,
    Preempt = 4,
    PreemptAndAbort = 5,
    RegisterAndIgnoreExistingKey = 6,
}

/// Persistent reservation types (the TYPE field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    /// What the pNFS SCSI layout uses (RFC 8154 section 2.4.1): only
    /// registered initiators may read or write.
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    fn from_code(c: u8) -> Option<PrType> {
        Some(match c {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }
}

/// PERSISTENT RESERVE IN (0x5e) asking for `alloc` bytes.
pub fn pr_in_cdb(sa: PrIn, alloc: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x5e;
    c[1] = sa as u8;
    c[7..9].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// Length of the basic PERSISTENT RESERVE OUT parameter list.
pub const PR_OUT_PARAM_LEN: usize = 24;

/// PERSISTENT RESERVE OUT (0x5f), LU scope, with the basic parameter list.
pub fn pr_out_cdb(sa: PrOut, ty: Option<PrType>) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x5f;
    c[1] = sa as u8;
    // Scope 0 (LU_SCOPE) in the high nibble, the type in the low one.
    c[2] = ty.map_or(0, |t| t as u8);
    c[5..9].copy_from_slice(&(PR_OUT_PARAM_LEN as u32).to_be_bytes());
    c
}

/// The basic PERSISTENT RESERVE OUT parameter list: the caller's
/// registered key and the service action's key (the new key of a
/// registration, the victim of a preemption); no SPEC_I_PT, ALL_TG_PT or
/// APTPL.
pub fn pr_out_params(key: u64, sa_key: u64) -> [u8; PR_OUT_PARAM_LEN] {
    let mut p = [0u8; PR_OUT_PARAM_LEN];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// READ KEYS: the generation and every registered key (one per
/// registered I_T nexus, so a key registered through several appears as
/// many times). `b` is what the target returned; a list longer than what
/// was fetched is an error (ask with a larger buffer).
pub fn parse_read_keys(b: &[u8]) -> io::Result<(u32, Vec<u64>)> {
    let gen = be32(b, 0).ok_or_else(|| bad("READ KEYS: short header"))?;
    let len = be32(b, 4).ok_or_else(|| bad("READ KEYS: short header"))? as usize;
    if !len.is_multiple_of(8) {
        return Err(bad("READ KEYS: key list length not a multiple of 8"));
    }
    let list = b
        .get(8..8usize.saturating_add(len))
        .ok_or_else(|| bad("READ KEYS: key list cut short"))?;
    let keys = list
        .chunks_exact(8)
        .filter_map(|k| k.try_into().ok().map(u64::from_be_bytes))
        .collect();
    Ok((gen, keys))
}

/// A persistent reservation as READ RESERVATION reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The holder's key.
    pub key: u64,
    /// Its type.
    pub ty: PrType,
}

/// READ RESERVATION: the generation and the reservation, if any.
pub fn parse_read_reservation(b: &[u8]) -> io::Result<(u32, Option<Reservation>)> {
    let gen = be32(b, 0).ok_or_else(|| bad("READ RESERVATION: short header"))?;
    let len = be32(b, 4).ok_or_else(|| bad("READ RESERVATION: short header"))?;
    match len {
        0 => Ok((gen, None)),
        0x10 => {
            let key = be64(b, 8).ok_or_else(|| bad("READ RESERVATION: cut short"))?;
            let st = *b
                .get(21)
                .ok_or_else(|| bad("READ RESERVATION: cut short"))?;
            if st >> 4 != 0 {
                return Err(bad("READ RESERVATION: not a logical unit scope"));
            }
            let ty = PrType::from_code(st & 0xf)
                .ok_or_else(|| bad("READ RESERVATION: unknown reservation type"))?;
            Ok((gen, Some(Reservation { key, ty })))
        }
        n => Err(bad(&format!(
            "READ RESERVATION: additional length {n} (0 or 16 expected)"
        ))),
    }
}

/// REPORT CAPABILITIES: does the LUN offer the reservation type `ty`?
/// (Only when the type mask is valid, TMV.)
pub fn capabilities_allow(b: &[u8], ty: PrType) -> io::Result<bool> {
    let len = b
        .get(0..2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or_else(|| bad("REPORT CAPABILITIES: short"))?;
    if len < 8 || b.len() < 8 {
        return Err(bad("REPORT CAPABILITIES: short"));
    }
    if b[3] & 0x80 == 0 {
        // No type mask: the standard then says nothing about which types.
        return Ok(true);
    }
    let mask = u16::from_be_bytes([b[4], b[5]]);
    let bit = match ty {
        PrType::WriteExclusiveAllRegistrants => 0x8000,
        PrType::ExclusiveAccessRegistrantsOnly => 0x4000,
        PrType::WriteExclusiveRegistrantsOnly => 0x2000,
        PrType::ExclusiveAccess => 0x0800,
        PrType::WriteExclusive => 0x0200,
        PrType::ExclusiveAccessAllRegistrants => 0x0001,
    };
    Ok(mask & bit != 0)
}

/// `Code set` of a designation descriptor.
pub const CODE_SET_BINARY: u8 = 1;
/// Designator types (SPC-4 table 459).
pub const DESIGNATOR_EUI64: u8 = 2;
pub const DESIGNATOR_NAA: u8 = 3;

/// One designation descriptor of VPD page 0x83.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Designator {
    /// Code set (1 binary, 2 ASCII, 3 UTF-8).
    pub code_set: u8,
    /// Association (0 the logical unit, 1 the target port, 2 the target).
    pub association: u8,
    /// Designator type (1 T10 vendor, 2 EUI-64, 3 NAA, 8 SCSI name...).
    pub kind: u8,
    /// The designator's bytes.
    pub bytes: Vec<u8>,
}

impl Designator {
    /// The name udev gives the LUN under `/dev/disk/by-id/` for a binary
    /// NAA designator (`wwn-0x` and the bytes in hex), which is where the
    /// Linux pNFS client looks for it.
    pub fn wwn_name(&self) -> String {
        let hex: String = self.bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("wwn-0x{hex}")
    }
}

/// Every designation descriptor of a Device Identification page.
pub fn parse_vpd83(b: &[u8]) -> io::Result<Vec<Designator>> {
    if b.len() < 4 || b[1] != 0x83 {
        return Err(bad("not a Device Identification VPD page"));
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    let body = b
        .get(4..4 + len)
        .ok_or_else(|| bad("Device Identification page cut short"))?;
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let h = body
            .get(at..at + 4)
            .ok_or_else(|| bad("designation descriptor header cut short"))?;
        let n = h[3] as usize;
        let bytes = body
            .get(at + 4..at + 4 + n)
            .ok_or_else(|| bad("designator cut short"))?;
        out.push(Designator {
            code_set: h[0] & 0xf,
            association: (h[1] >> 4) & 0x3,
            kind: h[1] & 0xf,
            bytes: bytes.to_vec(),
        });
        at += 4 + n;
    }
    Ok(out)
}

/// The designator a pNFS SCSI layout names the LUN by: one of the logical
/// unit's binary NAA or EUI-64 designators, the ones the Linux client
/// accepts (NAA of 8 or 16 bytes, EUI-64 of 8, 12 or 16), preferring NAA
/// and the longest (NAA 6, IEEE Registered Extended, is what the kernel's
/// `wwid` and udev's `wwn-` link show when a LUN has one).
pub fn lun_designator(ds: &[Designator]) -> Option<&Designator> {
    let usable = |d: &&Designator| {
        d.association == 0
            && d.code_set == CODE_SET_BINARY
            && match d.kind {
                DESIGNATOR_NAA => matches!(d.bytes.len(), 8 | 16),
                DESIGNATOR_EUI64 => matches!(d.bytes.len(), 8 | 12 | 16),
                _ => false,
            }
    };
    ds.iter()
        .filter(usable)
        .max_by_key(|d| (d.kind == DESIGNATOR_NAA, d.bytes.len()))
}

/// A SCSI logical unit that carries commands beyond reads and writes.
pub trait ScsiLun: Send + Sync {
    /// INQUIRY of VPD page `page` into `buf`; the bytes returned.
    fn inquiry_vpd(&self, page: u8, buf: &mut [u8]) -> io::Result<usize>;
    /// PERSISTENT RESERVE IN into `buf`; the bytes returned.
    fn pr_in(&self, sa: PrIn, buf: &mut [u8]) -> io::Result<usize>;
    /// PERSISTENT RESERVE OUT. A service action or field the target does
    /// not implement (ILLEGAL REQUEST) fails with `EOPNOTSUPP`. A registration (REGISTER, REGISTER AND
    /// IGNORE EXISTING KEY) applies to every I_T nexus the device uses,
    /// now and later. A RESERVATION CONFLICT fails with `EBADE` (as the
    /// Linux block layer reports it).
    fn pr_out(&self, sa: PrOut, ty: Option<PrType>, key: u64, sa_key: u64) -> io::Result<()>;
}

/// The registered keys (READ KEYS).
pub fn read_keys(lun: &dyn ScsiLun) -> io::Result<Vec<u64>> {
    let mut b = vec![0u8; 8 + 8 * 256];
    let n = lun.pr_in(PrIn::ReadKeys, &mut b)?;
    parse_read_keys(&b[..n.min(b.len())]).map(|(_, k)| k)
}

/// The reservation, if any (READ RESERVATION).
pub fn read_reservation(lun: &dyn ScsiLun) -> io::Result<Option<Reservation>> {
    let mut b = [0u8; 24];
    let n = lun.pr_in(PrIn::ReadReservation, &mut b)?;
    parse_read_reservation(&b[..n.min(b.len())]).map(|(_, r)| r)
}

/// Does the LUN support persistent reservations of type `ty`? (REPORT
/// CAPABILITIES; a LUN that rejects the command has none.)
pub fn supports(lun: &dyn ScsiLun, ty: PrType) -> io::Result<bool> {
    let mut b = [0u8; 8];
    let n = lun.pr_in(PrIn::ReportCapabilities, &mut b)?;
    capabilities_allow(&b[..n.min(b.len())], ty)
}

/// The LUN's designator for the pNFS SCSI layout.
pub fn designator(lun: &dyn ScsiLun) -> io::Result<Designator> {
    let mut b = vec![0u8; 1024];
    let n = lun.inquiry_vpd(0x83, &mut b)?;
    let ds = parse_vpd83(&b[..n.min(b.len())])?;
    lun_designator(&ds).cloned().ok_or_else(|| {
        bad("the LUN has no binary NAA or EUI-64 designator of the logical unit (VPD page 0x83)")
    })
}

/// Register `key` for this initiator whatever it had (REGISTER AND IGNORE
/// EXISTING KEY); `key` 0 unregisters.
pub fn register(lun: &dyn ScsiLun, key: u64) -> io::Result<()> {
    lun.pr_out(PrOut::RegisterAndIgnoreExistingKey, None, 0, key)
}

/// Take the reservation `ty` as the holder of `key`.
pub fn reserve(lun: &dyn ScsiLun, key: u64, ty: PrType) -> io::Result<()> {
    lun.pr_out(PrOut::Reserve, Some(ty), key, 0)
}

/// How a preemption went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preempted {
    /// PREEMPT AND ABORT: the victim's registrations are gone and the
    /// commands it had queued at the target were aborted.
    Aborted,
    /// The target does not implement PREEMPT AND ABORT (tgt 1.0.85 leaves
    /// it out) and PREEMPT did: the registrations are gone, so every
    /// command the victim sends from now on meets RESERVATION CONFLICT,
    /// but one already queued at the target may still run.
    RegistrationsOnly,
}

/// Fence `victim`: remove every registration of its key as the holder of
/// `key` (keeping the reservation `ty`), with PREEMPT AND ABORT, or PREEMPT
/// where the target refuses that service action (ILLEGAL REQUEST).
/// A victim with no registration left makes the target answer
/// RESERVATION CONFLICT (`EBADE`).
pub fn preempt_abort(
    lun: &dyn ScsiLun,
    key: u64,
    victim: u64,
    ty: PrType,
) -> io::Result<Preempted> {
    match lun.pr_out(PrOut::PreemptAndAbort, Some(ty), key, victim) {
        Ok(()) => Ok(Preempted::Aborted),
        Err(e) if super::errno_of(&e) == Some(libc::EOPNOTSUPP) => {
            tracing::debug!("PREEMPT AND ABORT refused ({e}): PREEMPT instead");
            lun.pr_out(PrOut::Preempt, Some(ty), key, victim)
                .map(|()| Preempted::RegistrationsOnly)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// VPD page 0x83 as tgt 1.0.85 returned it for LUN 1 of target 1
    /// (captured through our initiator): a T10 vendor id (ASCII, 36 bytes),
    /// an NAA 3 (8 bytes) and an NAA 6 (16 bytes) designator.
    const TGT_VPD83: [u8; 76] = [
        0x00, 0x83, 0x00, 0x48, //
        0x02, 0x01, 0x00, 0x24, b'I', b'E', b'T', b' ', b' ', b' ', b' ', b' ', b'0', b'0', b'0',
        b'1', b'0', b'0', b'0', b'1', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, //
        0x01, 0x03, 0x00, 0x08, 0x30, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, //
        0x01, 0x03, 0x00, 0x10, 0x60, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0e, 0x00, 0x00,
        0x00, 0x00, 0x01, 0x00, 0x01,
    ];

    #[test]
    fn vpd83_designators_and_choice() {
        let ds = parse_vpd83(&TGT_VPD83).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!((ds[0].kind, ds[0].code_set), (1, 2));
        assert_eq!(&ds[0].bytes[..16], b"IET     00010001");
        assert_eq!((ds[1].kind, ds[1].bytes.len()), (DESIGNATOR_NAA, 8));
        assert_eq!((ds[2].kind, ds[2].bytes.len()), (DESIGNATOR_NAA, 16));
        // The longest NAA.
        let d = lun_designator(&ds).unwrap();
        assert_eq!(d, &ds[2]);
        assert_eq!(d.wwn_name(), "wwn-0x60000000000000000e00000000010001");
        // Only the T10 one: nothing the Linux client accepts.
        assert!(lun_designator(&ds[..1]).is_none());
        // A target-port NAA does not name the logical unit.
        let mut port = ds[2].clone();
        port.association = 1;
        assert_eq!(lun_designator(&[port, ds[1].clone()]), Some(&ds[1]));
    }

    #[test]
    fn vpd83_lies_are_errors() {
        assert!(parse_vpd83(&[]).is_err());
        assert!(parse_vpd83(&[0, 0x80, 0, 0]).is_err());
        // Page length past the buffer.
        let mut b = TGT_VPD83;
        b[3] = 0x40;
        assert!(parse_vpd83(&b).is_err());
        // A descriptor length past the page.
        let mut b = TGT_VPD83;
        b[59] = 0x11;
        assert!(parse_vpd83(&b).is_err());
        // A header cut in the middle.
        let mut b = TGT_VPD83.to_vec();
        b[3] = 0x4a;
        b.extend_from_slice(&[1, 3]);
        assert!(parse_vpd83(&b).is_err());
    }

    #[test]
    fn read_keys_and_reservation() {
        let mut b = vec![0, 0, 0, 7, 0, 0, 0, 16];
        b.extend_from_slice(&0x0100_0000_0000_0000u64.to_be_bytes());
        b.extend_from_slice(&42u64.to_be_bytes());
        assert_eq!(
            parse_read_keys(&b).unwrap(),
            (7, vec![0x0100_0000_0000_0000, 42])
        );
        assert!(parse_read_keys(&b[..20]).is_err(), "cut short");
        b[7] = 12;
        assert!(parse_read_keys(&b).is_err(), "not whole keys");
        assert!(parse_read_keys(&[0, 0, 0]).is_err());
        assert_eq!(
            parse_read_keys(&[0, 0, 0, 1, 0, 0, 0, 0]).unwrap(),
            (1, vec![])
        );

        let mut r = vec![0, 0, 0, 9, 0, 0, 0, 16];
        r.extend_from_slice(&5u64.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0, 0, 0x06, 0, 0]);
        assert_eq!(
            parse_read_reservation(&r).unwrap(),
            (
                9,
                Some(Reservation {
                    key: 5,
                    ty: PrType::ExclusiveAccessRegistrantsOnly
                })
            )
        );
        assert!(parse_read_reservation(&r[..20]).is_err());
        let mut bad_ty = r.clone();
        bad_ty[21] = 0x02;
        assert!(parse_read_reservation(&bad_ty).is_err());
        let mut bad_scope = r.clone();
        bad_scope[21] = 0x16;
        assert!(parse_read_reservation(&bad_scope).is_err());
        assert_eq!(
            parse_read_reservation(&[0, 0, 0, 3, 0, 0, 0, 0]).unwrap(),
            (3, None)
        );
        assert!(parse_read_reservation(&[0, 0, 0, 3, 0, 0, 0, 8]).is_err());
    }

    #[test]
    fn command_encodings() {
        assert_eq!(
            pr_in_cdb(PrIn::ReadKeys, 0x1008),
            [0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0x08, 0]
        );
        assert_eq!(
            pr_out_cdb(
                PrOut::PreemptAndAbort,
                Some(PrType::ExclusiveAccessRegistrantsOnly)
            ),
            [0x5f, 5, 6, 0, 0, 0, 0, 0, 24, 0]
        );
        assert_eq!(
            pr_out_cdb(PrOut::RegisterAndIgnoreExistingKey, None),
            [0x5f, 6, 0, 0, 0, 0, 0, 0, 24, 0]
        );
        let p = pr_out_params(0x0102030405060708, 0x1112131415161718);
        assert_eq!(&p[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&p[8..16], &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]);
        assert_eq!(&p[16..], &[0; 8]);
    }

    #[test]
    fn capabilities() {
        // TMV set, EX_AC_RO and WR_EX offered.
        let b = [0, 8, 0, 0x80, 0x42, 0x00, 0, 0];
        assert!(capabilities_allow(&b, PrType::ExclusiveAccessRegistrantsOnly).unwrap());
        assert!(capabilities_allow(&b, PrType::WriteExclusive).unwrap());
        assert!(!capabilities_allow(&b, PrType::ExclusiveAccess).unwrap());
        assert!(capabilities_allow(&[0, 8, 0], PrType::WriteExclusive).is_err());
    }
}
