//! The pNFS operations (RFC 8881 section 18.40-18.44) with the block
//! layout's bodies (RFC 5663): GETDEVICEINFO (one simple volume found by
//! the superblock UUID; for the SCSI layout, RFC 8154, one base volume
//! named by the LUN's designator with the client's reservation key),
//! LAYOUTGET (`pnfs_block_layout4` extents, which the SCSI layout shares),
//! LAYOUTCOMMIT (`pnfs_block_layoutupdate4`, parsed, its storage offsets
//! ignored: only the layout service's own records count) and LAYOUTRETURN;
//! and the CB_LAYOUTRECALL the server sends on the backchannel.
//!
//! Layout decisions belong to the layout service
//! ([`crate::pnfs::LayoutBackend`]); without one, LAYOUTGET answers
//! `NFS4ERR_LAYOUTUNAVAILABLE` and clients do their I/O through us.

use super::compound::{fs_status, xdr, Ctx, OpResult};
use super::proto::*;
use super::state::Stateid;
use super::xdr::{Dec, Enc, XResult, XdrError};
use crate::pnfs::scsi::ScsiVolume;
use crate::pnfs::{Commit, DeviceInfo, Extent, ExtentState, IoMode, Layout, LayoutError};

/// The id of the one device (volume) every layout refers to.
pub const DEVICE_ID: [u8; 16] = *b"gfs2-fuse-vol-01";

/// A `pnfs_block_sig_component4`: offset and bytes.
pub type SigComponent = (i64, Vec<u8>);

/// `pnfs_block_deviceaddr4` of a simple volume.
pub fn encode_deviceaddr(dev: &DeviceInfo) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(1) // one volume, the top-level one
        .u32(PNFS_BLOCK_VOLUME_SIMPLE)
        .u32(1) // one signature component
        .i64(dev.sig_offset as i64)
        .opaque(&dev.signature);
    e.buf
}

/// `pnfs_scsi_deviceaddr4` of one base volume: the LUN's designator and
/// the reservation key the client registers (RFC 8154 section 2.3.1).
pub fn encode_scsi_deviceaddr(v: &ScsiVolume, pr_key: u64) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(1)
        .u32(PNFS_SCSI_VOLUME_BASE)
        .u32(v.code_set)
        .u32(v.designator_type)
        .opaque(&v.designator)
        .u64(pr_key);
    e.buf
}

/// Decode a `pnfs_scsi_deviceaddr4` holding base volumes: (volume, key).
pub fn decode_scsi_deviceaddr(b: &[u8]) -> XResult<Vec<(ScsiVolume, u64)>> {
    let mut d = Dec::new(b);
    let n = d.count(16, 8)?;
    let mut vols = Vec::new();
    for _ in 0..n {
        if d.u32()? != PNFS_SCSI_VOLUME_BASE {
            return Err(XdrError::Bad);
        }
        let code_set = d.u32()?;
        let designator_type = d.u32()?;
        let designator = d.opaque(256)?.to_vec();
        let key = d.u64()?;
        vols.push((
            ScsiVolume {
                code_set,
                designator_type,
                designator,
            },
            key,
        ));
    }
    if d.remaining() != 0 {
        return Err(XdrError::Bad);
    }
    Ok(vols)
}

/// Decode a `pnfs_block_deviceaddr4` holding simple volumes: their
/// signature components (offset, bytes).
pub fn decode_deviceaddr(b: &[u8]) -> XResult<Vec<Vec<SigComponent>>> {
    let mut d = Dec::new(b);
    let n = d.count(16, 8)?;
    let mut vols = Vec::new();
    for _ in 0..n {
        if d.u32()? != PNFS_BLOCK_VOLUME_SIMPLE {
            return Err(XdrError::Bad);
        }
        let k = d.count(16, 12)?;
        let mut sigs = Vec::new();
        for _ in 0..k {
            let off = d.i64()?;
            sigs.push((off, d.opaque(256)?.to_vec()));
        }
        vols.push(sigs);
    }
    if d.remaining() != 0 {
        return Err(XdrError::Bad);
    }
    Ok(vols)
}

fn state_code(s: ExtentState) -> u32 {
    s as u32
}

fn state_of(v: u32) -> XResult<ExtentState> {
    Ok(match v {
        0 => ExtentState::ReadWriteData,
        1 => ExtentState::ReadData,
        2 => ExtentState::InvalidData,
        3 => ExtentState::NoneData,
        _ => return Err(XdrError::Bad),
    })
}

fn put_extents(e: &mut Enc, xs: &[Extent]) {
    e.u32(xs.len() as u32);
    for x in xs {
        e.fixed(&DEVICE_ID)
            .u64(x.file_offset)
            .u64(x.length)
            .u64(x.storage_offset)
            .u32(state_code(x.state));
    }
}

fn get_extents(d: &mut Dec<'_>) -> XResult<Vec<Extent>> {
    let n = d.count(1 << 16, 44)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let _vol: [u8; 16] = d.array()?;
        v.push(Extent {
            file_offset: d.u64()?,
            length: d.u64()?,
            storage_offset: d.u64()?,
            state: state_of(d.u32()?)?,
        });
    }
    Ok(v)
}

/// `pnfs_block_layout4`.
pub fn encode_block_layout(xs: &[Extent]) -> Vec<u8> {
    let mut e = Enc::new();
    put_extents(&mut e, xs);
    e.buf
}

/// Decode a `pnfs_block_layout4` (the extents with their volume id dropped).
pub fn decode_block_layout(b: &[u8]) -> XResult<Vec<Extent>> {
    let mut d = Dec::new(b);
    let v = get_extents(&mut d)?;
    if d.remaining() != 0 {
        return Err(XdrError::Bad);
    }
    Ok(v)
}

/// `pnfs_block_layoutupdate4` as the client sends it (same shape).
pub fn decode_layoutupdate(b: &[u8]) -> XResult<Vec<Extent>> {
    decode_block_layout(b)
}

/// `pnfs_scsi_layoutupdate4` (RFC 8154 section 2.3.5): the byte ranges
/// the client wrote, `(offset, length)`, with no extents or storage
/// offsets (unlike the block layout's update).
pub fn decode_scsi_layoutupdate(b: &[u8]) -> XResult<Vec<(u64, u64)>> {
    let mut d = Dec::new(b);
    let n = d.count(1 << 16, 16)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push((d.u64()?, d.u64()?));
    }
    if d.remaining() != 0 {
        return Err(XdrError::Bad);
    }
    Ok(v)
}

/// `layout4` of a granted layout of type `ltype` (block or SCSI: the
/// same extents).
fn put_layout(e: &mut Enc, l: &Layout, ltype: u32) {
    e.u32(1)
        .u64(l.offset)
        .u64(l.length)
        .u32(l.iomode as u32)
        .u32(ltype)
        .opaque(&encode_block_layout(&l.extents));
}

/// Is `ltype` one this server hands out (the SCSI layout only while it
/// holds the LUN's reservation)?
fn offered(dev_scsi: bool, ltype: u32) -> bool {
    ltype == LAYOUT4_BLOCK_VOLUME || (ltype == LAYOUT4_SCSI && dev_scsi)
}

fn layout_status(e: &LayoutError) -> u32 {
    match e {
        LayoutError::Unavailable => st::LAYOUTUNAVAILABLE,
        LayoutError::TryLater => st::LAYOUTTRYLATER,
        LayoutError::BadRange => st::INVAL,
        LayoutError::Fs(f) => fs_status(f),
    }
}

/// `NOTIFY_DEVICEID4_CHANGE` and `NOTIFY_DEVICEID4_DELETE` (RFC 8881
/// section 20.12), as bits of a `bitmap4`.
const NOTIFY_DEVICEID4_CHANGE_DELETE: u32 = (1 << 1) | (1 << 2);

/// The device-id notifications GETDEVICEINFO grants: those asked for among
/// CHANGE and DELETE. The one device (the shared disk, found by the
/// superblock UUID) never changes or goes away while the server runs, so
/// the promise to notify costs nothing. Granting it matters: a Linux client
/// that is not promised both caches nothing (`NFS_DEVICEID_NOCACHE`) and
/// asks GETDEVICEINFO again, with a `blkmapd` upcall, after every layout
/// return; that upcall's wait in the 6.1 client can miss its wake-up and
/// leave the reading task in D state for good (seen as a read that never
/// finishes after a layout was returned and fetched again). Linux nfsd
/// grants both for its block layout.
fn granted_notifications(asked: &[u32]) -> Vec<u32> {
    match asked.first() {
        Some(w) if w & NOTIFY_DEVICEID4_CHANGE_DELETE != 0 => {
            vec![w & NOTIFY_DEVICEID4_CHANGE_DELETE]
        }
        _ => Vec::new(),
    }
}

/// GETDEVICEINFO.
pub fn getdeviceinfo(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let id: [u8; 16] = d.array().map_err(xdr)?;
    let ltype = d.u32().map_err(xdr)?;
    let maxcount = d.u32().map_err(xdr)?;
    let notify = d.u32s(8).map_err(xdr)?;
    let client = ctx.client()?;
    let Some(b) = ctx.srv.backend() else {
        return Err(st::UNKNOWN_LAYOUTTYPE);
    };
    let info = b.device_info();
    let addr = match (ltype, &info.scsi) {
        (LAYOUT4_BLOCK_VOLUME, _) => encode_deviceaddr(&info),
        (LAYOUT4_SCSI, Some(v)) => encode_scsi_deviceaddr(v, crate::pnfs::scsi::client_key(client)),
        _ => return Err(st::UNKNOWN_LAYOUTTYPE),
    };
    if id != DEVICE_ID {
        return Err(st::NOENT);
    }
    let mut body = Enc::new();
    body.u32(ltype)
        .opaque(&addr)
        .u32s(&granted_notifications(&notify));
    if maxcount != 0 && body.len() > maxcount as usize {
        e.u32(body.len() as u32);
        return Err(st::TOOSMALL);
    }
    e.buf.extend_from_slice(&body.buf);
    Ok(())
}

/// LAYOUTGET.
pub fn layoutget(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let _signal = d.bool().map_err(xdr)?;
    let ltype = d.u32().map_err(xdr)?;
    let iomode = d.u32().map_err(xdr)?;
    let offset = d.u64().map_err(xdr)?;
    let length = d.u64().map_err(xdr)?;
    let minlength = d.u64().map_err(xdr)?;
    let sid = ctx.stateid(Stateid::decode(d).map_err(xdr)?);
    let maxcount = d.u32().map_err(xdr)?;
    let client = ctx.client()?;
    let Some(b) = ctx.srv.backend() else {
        return Err(st::LAYOUTUNAVAILABLE);
    };
    if !offered(b.device_info().scsi.is_some(), ltype) {
        return Err(st::UNKNOWN_LAYOUTTYPE);
    }
    let iomode = match iomode {
        1 => IoMode::Read,
        2 => IoMode::ReadWrite,
        _ => return Err(st::BADIOMODE),
    };
    if length == 0 || (length != u64::MAX && offset.checked_add(length).is_none()) {
        return Err(st::INVAL);
    }
    let a = ctx.cur_attr()?;
    if a.mode & 0o170000 != 0o100000 {
        return Err(st::LAYOUTUNAVAILABLE);
    }
    ctx.srv.states().check_layout_arg(client, &sid, a.ino)?;
    if iomode == IoMode::ReadWrite {
        ctx.writable()?;
    }
    let l = match b.layout_get(client, a.ino, offset, length, minlength, iomode) {
        Ok(l) => l,
        Err(err) => {
            let s = layout_status(&err);
            if s == st::LAYOUTTRYLATER {
                e.bool(false);
            }
            tracing::debug!(client, ino = a.ino, "LAYOUTGET refused: {err}");
            return Err(s);
        }
    };
    let mut body = Enc::new();
    put_layout(&mut body, &l, ltype);
    if maxcount != 0 && body.len() + 24 > maxcount as usize {
        // The client cannot take it: give it back at once.
        let _ = b.layout_return(client, Some(a.ino), l.offset, l.length);
        return Err(st::TOOSMALL);
    }
    ctx.srv.layout_granted(a.ino, a.generation);
    ctx.srv.note_layout_type(client, ltype);
    let s = ctx.srv.states().layout_get(client, a.ino);
    ctx.cur_stateid = Some(s);
    tracing::debug!(
        client,
        ino = a.ino,
        extents = l.extents.len(),
        ?iomode,
        "LAYOUTGET"
    );
    tracing::trace!(offset = l.offset, length = l.length, extents = ?l.extents, "LAYOUTGET extents");
    e.bool(false);
    s.encode(e);
    e.buf.extend_from_slice(&body.buf);
    Ok(())
}

/// LAYOUTCOMMIT.
pub fn layoutcommit(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let offset = d.u64().map_err(xdr)?;
    let length = d.u64().map_err(xdr)?;
    let _reclaim = d.bool().map_err(xdr)?;
    let sid = ctx.stateid(Stateid::decode(d).map_err(xdr)?);
    let last_write = if d.bool().map_err(xdr)? {
        Some(d.u64().map_err(xdr)?)
    } else {
        None
    };
    let mtime = if d.bool().map_err(xdr)? {
        let s = d.i64().map_err(xdr)?;
        Some((s, d.u32().map_err(xdr)?))
    } else {
        None
    };
    let utype = d.u32().map_err(xdr)?;
    let ubody = d.opaque(1 << 20).map_err(xdr)?;
    let client = ctx.client()?;
    let Some(b) = ctx.srv.backend() else {
        return Err(st::BADLAYOUT);
    };
    if !offered(b.device_info().scsi.is_some(), utype) {
        return Err(st::UNKNOWN_LAYOUTTYPE);
    }
    // Parsed to refuse garbage; the offsets in it are not trusted.
    let reported = if utype == LAYOUT4_SCSI {
        decode_scsi_layoutupdate(ubody).map(|r| r.len())
    } else {
        decode_layoutupdate(ubody).map(|x| x.len())
    }
    .map_err(|_| st::BADLAYOUT)?;
    let a = ctx.cur_attr()?;
    ctx.srv.states().check_layout_arg(client, &sid, a.ino)?;
    ctx.writable()?;
    let c = Commit {
        offset,
        length,
        last_write,
        mtime,
    };
    let after = b
        .layout_commit(client, a.ino, c)
        .map_err(|err| layout_status(&err))?;
    tracing::debug!(
        client,
        ino = a.ino,
        extents = reported,
        size = after.size,
        "LAYOUTCOMMIT"
    );
    e.bool(true).u64(after.size);
    Ok(())
}

/// LAYOUTRETURN.
pub fn layoutreturn(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let _reclaim = d.bool().map_err(xdr)?;
    let ltype = d.u32().map_err(xdr)?;
    let _iomode = d.u32().map_err(xdr)?;
    let rtype = d.u32().map_err(xdr)?;
    let file = match rtype {
        LAYOUTRETURN4_FILE => {
            let offset = d.u64().map_err(xdr)?;
            let length = d.u64().map_err(xdr)?;
            let sid = ctx.stateid(Stateid::decode(d).map_err(xdr)?);
            let _body = d.opaque(1 << 16).map_err(xdr)?;
            Some((offset, length, sid))
        }
        LAYOUTRETURN4_FSID | LAYOUTRETURN4_ALL => None,
        _ => return Err(st::INVAL),
    };
    let client = ctx.client()?;
    let backend = ctx.srv.backend();
    if !offered(
        backend.is_some_and(|b| b.device_info().scsi.is_some()),
        ltype,
    ) {
        return Err(st::UNKNOWN_LAYOUTTYPE);
    }
    match file {
        Some((offset, length, sid)) => {
            let a = ctx.cur_attr()?;
            let mut states = ctx.srv.states();
            if states.layout_of(client, a.ino).is_none() {
                // Nothing held: a return after a revocation, or a repeat.
                drop(states);
                e.bool(false);
                return Ok(());
            }
            states.check_layout_arg(client, &sid, a.ino)?;
            let whole = offset == 0 && length == u64::MAX;
            let s = states.layout_return(client, a.ino, !whole);
            drop(states);
            if let Some(b) = backend {
                b.layout_return(client, Some(a.ino), offset, length)
                    .map_err(|err| layout_status(&err))?;
            }
            match s {
                Some(s) => {
                    e.bool(true);
                    s.encode(e);
                }
                None => {
                    e.bool(false);
                }
            }
        }
        None => {
            ctx.srv.states().drop_layouts(client);
            if let Some(b) = backend {
                b.layout_return(client, None, 0, u64::MAX)
                    .map_err(|err| layout_status(&err))?;
            }
            e.bool(false);
        }
    }
    Ok(())
}

/// The arguments of a CB_COMPOUND with CB_SEQUENCE and CB_LAYOUTRECALL of
/// a file's range.
#[allow(clippy::too_many_arguments)]
pub fn encode_cb_layoutrecall(
    sessionid: &[u8; 16],
    seq: u32,
    fh: &[u8],
    ltype: u32,
    offset: u64,
    length: u64,
    iomode: IoMode,
    stateid: &Stateid,
) -> Vec<u8> {
    let mut e = Enc::new();
    e.opaque(b"").u32(1).u32(0).u32(2);
    e.u32(cbop::CB_SEQUENCE)
        .fixed(sessionid)
        .u32(seq)
        .u32(0)
        .u32(0)
        .bool(false)
        .u32(0);
    e.u32(cbop::CB_LAYOUTRECALL)
        .u32(ltype)
        .u32(iomode as u32)
        .bool(false)
        .u32(LAYOUTRECALL4_FILE)
        .opaque(fh)
        .u64(offset)
        .u64(length);
    stateid.encode(&mut e);
    e.buf
}

/// The status of a CB_COMPOUND reply and of its CB_LAYOUTRECALL (if it
/// got that far).
pub fn decode_cb_reply(b: &[u8]) -> XResult<(u32, Option<u32>)> {
    let mut d = Dec::new(b);
    let status = d.u32()?;
    d.opaque(1024)?;
    let n = d.count(16, 8)?;
    let mut recall = None;
    for _ in 0..n {
        let op = d.u32()?;
        let s = d.u32()?;
        if op == cbop::CB_SEQUENCE && s == st::OK {
            d.fixed(16)?;
            for _ in 0..4 {
                d.u32()?;
            }
        } else if op == cbop::CB_LAYOUTRECALL {
            recall = Some(s);
        }
        if s != st::OK {
            break;
        }
    }
    Ok((status, recall))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(fo: u64, len: u64, so: u64, state: ExtentState) -> Extent {
        Extent {
            file_offset: fo,
            length: len,
            storage_offset: so,
            state,
        }
    }

    #[test]
    fn deviceaddr_is_rfc5663_simple_volume() {
        let dev = DeviceInfo {
            sig_offset: 65792,
            signature: (1..=16).collect(),
            size: 1 << 30,
            block_size: 4096,
            scsi: None,
        };
        let b = encode_deviceaddr(&dev);
        // volumes<1>, SIMPLE, sigs<1>, offset (hyper), contents<16>.
        assert_eq!(b.len(), 4 + 4 + 4 + 8 + 4 + 16);
        assert_eq!(&b[12..20], &65792u64.to_be_bytes());
        assert_eq!(
            decode_deviceaddr(&b),
            Ok(vec![vec![(65792, dev.signature.clone())]])
        );
    }

    #[test]
    fn scsi_deviceaddr_is_rfc8154_base_volume() {
        // The designator tgt gives its first LUN (NAA 6, 16 bytes).
        let v = ScsiVolume {
            code_set: 1,
            designator_type: 3,
            designator: vec![0x60, 0, 0, 0, 0, 0, 0, 0, 0x0e, 0, 0, 0, 0, 1, 0, 1],
        };
        let b = encode_scsi_deviceaddr(&v, 0x6000_0000_0000_0007);
        // volumes<1>, BASE (4), code set, designator type, designator<16>,
        // key: the layout of the Linux client's nfs4_block_decode_volume.
        assert_eq!(b.len(), 4 + 4 + 4 + 4 + 4 + 16 + 8);
        assert_eq!(
            &b[..20],
            &[0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 16]
        );
        assert_eq!(&b[36..], &0x6000_0000_0000_0007u64.to_be_bytes());
        assert_eq!(
            decode_scsi_deviceaddr(&b),
            Ok(vec![(v.clone(), 0x6000_0000_0000_0007)])
        );
        // A designator with a length past the body, a wrong volume type.
        let mut bad = b.clone();
        bad[19] = 40;
        assert!(decode_scsi_deviceaddr(&bad).is_err());
        let mut bad = b;
        bad[7] = 0;
        assert!(decode_scsi_deviceaddr(&bad).is_err());
    }

    #[test]
    fn scsi_layoutupdate() {
        // Two ranges as the Linux client encodes them (count, then offset
        // and length of each, in bytes).
        let mut e = Enc::new();
        e.u32(2).u64(0).u64(1 << 20).u64(4 << 20).u64(8192);
        assert_eq!(
            decode_scsi_layoutupdate(&e.buf),
            Ok(vec![(0, 1 << 20), (4 << 20, 8192)])
        );
        assert!(decode_scsi_layoutupdate(&e.buf[..30]).is_err());
        let mut lying = Enc::new();
        lying.u32(1000).u64(0).u64(1);
        assert!(decode_scsi_layoutupdate(&lying.buf).is_err());
        // A block-layout update is not a SCSI one.
        let blk = encode_block_layout(&[ext(0, 4096, 8192, ExtentState::ReadWriteData)]);
        assert!(decode_scsi_layoutupdate(&blk).is_err());
    }

    #[test]
    fn block_layout_round_trip() {
        let xs = vec![
            ext(0, 8192, 1 << 20, ExtentState::ReadWriteData),
            ext(8192, 4096, 0, ExtentState::NoneData),
            ext(12288, 4096, 3 << 20, ExtentState::InvalidData),
            ext(16384, 4096, 5 << 20, ExtentState::ReadData),
        ];
        let b = encode_block_layout(&xs);
        assert_eq!(b.len(), 4 + 4 * 44);
        assert_eq!(decode_block_layout(&b), Ok(xs.clone()));
        // A bad extent state, a short buffer, trailing bytes.
        let mut bad = b.clone();
        let last = bad.len() - 1;
        bad[last] = 9;
        assert_eq!(decode_block_layout(&bad), Err(XdrError::Bad));
        assert!(decode_block_layout(&b[..b.len() - 1]).is_err());
        let mut long = b;
        long.extend_from_slice(&[0; 4]);
        assert!(decode_block_layout(&long).is_err());
    }

    #[test]
    fn device_notifications_granted() {
        // The Linux client asks for CHANGE and DELETE (bits 1 and 2).
        assert_eq!(granted_notifications(&[0b110]), vec![0b110]);
        assert_eq!(granted_notifications(&[0b111]), vec![0b110]);
        assert_eq!(granted_notifications(&[0b100, 7]), vec![0b100]);
        assert!(granted_notifications(&[]).is_empty());
        assert!(granted_notifications(&[1]).is_empty());
    }

    #[test]
    fn layout4_in_a_layoutget_reply() {
        let l = Layout {
            ino: 7,
            iomode: IoMode::ReadWrite,
            offset: 0,
            length: u64::MAX,
            extents: vec![ext(0, 4096, 8192, ExtentState::InvalidData)],
        };
        let mut e = Enc::new();
        put_layout(&mut e, &l, LAYOUT4_BLOCK_VOLUME);
        let mut d = Dec::new(&e.buf);
        assert_eq!(d.u32(), Ok(1));
        assert_eq!(d.u64(), Ok(0));
        assert_eq!(d.u64(), Ok(u64::MAX));
        assert_eq!(d.u32(), Ok(2));
        assert_eq!(d.u32(), Ok(LAYOUT4_BLOCK_VOLUME));
        let body = d.opaque(1000).unwrap();
        assert_eq!(decode_block_layout(body), Ok(l.extents));
        assert_eq!(d.remaining(), 0);
    }

    #[test]
    fn cb_layoutrecall_encoding() {
        let sid = Stateid {
            seq: 3,
            other: [7; 12],
        };
        let b = encode_cb_layoutrecall(
            &[9; 16],
            5,
            &[1; 20],
            LAYOUT4_SCSI,
            0,
            u64::MAX,
            IoMode::Read,
            &sid,
        );
        let mut d = Dec::new(&b);
        assert_eq!(d.opaque(10), Ok(&b""[..]));
        assert_eq!((d.u32(), d.u32(), d.u32()), (Ok(1), Ok(0), Ok(2)));
        assert_eq!(d.u32(), Ok(cbop::CB_SEQUENCE));
        assert_eq!(d.fixed(16), Ok(&[9u8; 16][..]));
        assert_eq!((d.u32(), d.u32(), d.u32()), (Ok(5), Ok(0), Ok(0)));
        assert_eq!((d.bool(), d.u32()), (Ok(false), Ok(0)));
        assert_eq!(d.u32(), Ok(cbop::CB_LAYOUTRECALL));
        assert_eq!((d.u32(), d.u32(), d.bool()), (Ok(5), Ok(1), Ok(false)));
        assert_eq!(d.u32(), Ok(LAYOUTRECALL4_FILE));
        assert_eq!(d.opaque(128), Ok(&[1u8; 20][..]));
        assert_eq!((d.u64(), d.u64()), (Ok(0), Ok(u64::MAX)));
        assert_eq!(Stateid::decode(&mut d), Ok(sid));
        assert_eq!(d.remaining(), 0);
        // A client's reply: OK to both.
        let mut r = Enc::new();
        r.u32(0).opaque(b"").u32(2);
        r.u32(cbop::CB_SEQUENCE)
            .u32(0)
            .fixed(&[9; 16])
            .u32(5)
            .u32(0)
            .u32(0)
            .u32(0);
        r.u32(cbop::CB_LAYOUTRECALL).u32(0);
        assert_eq!(decode_cb_reply(&r.buf), Ok((0, Some(0))));
        let mut r = Enc::new();
        r.u32(st::NOMATCHING_LAYOUT).opaque(b"").u32(2);
        r.u32(cbop::CB_SEQUENCE)
            .u32(0)
            .fixed(&[9; 16])
            .u32(5)
            .u32(0)
            .u32(0)
            .u32(0);
        r.u32(cbop::CB_LAYOUTRECALL).u32(st::NOMATCHING_LAYOUT);
        assert_eq!(
            decode_cb_reply(&r.buf),
            Ok((st::NOMATCHING_LAYOUT, Some(st::NOMATCHING_LAYOUT)))
        );
    }
}
