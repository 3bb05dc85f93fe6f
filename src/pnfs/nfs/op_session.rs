//! The session operations: EXCHANGE_ID, CREATE_SESSION, SEQUENCE,
//! DESTROY_SESSION, DESTROY_CLIENTID, BIND_CONN_TO_SESSION and
//! RECLAIM_COMPLETE (RFC 8881 section 18). The rules they keep live in
//! [`super::session`]; this module is their wire form.

use super::compound::{xdr, Ctx, OpResult, MAX_OPS};
use super::proto::*;
use super::rpc::MAX_RECORD;
use super::session::{BackChannel, ChannelAttrs, SeqCheck, Session, SessionId, Slots};
use super::xdr::{Dec, Enc, XResult};
use std::sync::{Arc, Mutex};

/// Fore-channel slots offered.
pub const SLOTS: u32 = 64;

/// EXCHANGE_ID.
pub fn exchange_id(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let verifier: [u8; 8] = d.array().map_err(xdr)?;
    let owner = d.opaque(1024).map_err(xdr)?.to_vec();
    let _flags = d.u32().map_err(xdr)?;
    match d.u32().map_err(xdr)? {
        SP4_NONE => {}
        SP4_MACH_CRED => {
            d.u32s(8).map_err(xdr)?;
            d.u32s(8).map_err(xdr)?;
        }
        _ => return Err(st::NOTSUPP),
    }
    let n = d.count(1, 16).map_err(xdr)?;
    for _ in 0..n {
        d.opaque(1024).map_err(xdr)?;
        d.opaque(1024).map_err(xdr)?;
        d.i64().map_err(xdr)?;
        d.u32().map_err(xdr)?;
    }
    let x = ctx.srv.registry().exchange_id(&owner, verifier);
    tracing::info!(
        client = x.id,
        owner = %String::from_utf8_lossy(&owner),
        confirmed = x.confirmed,
        "EXCHANGE_ID"
    );
    let mut flags = EXCHGID4_FLAG_USE_PNFS_MDS;
    if x.confirmed {
        flags |= EXCHGID4_FLAG_CONFIRMED_R;
    }
    e.u64(x.id).u32(x.seq).u32(flags).u32(SP4_NONE);
    e.u64(0).opaque(ctx.srv.server_owner());
    e.opaque(ctx.srv.server_owner());
    e.u32(1)
        .opaque(b"gfs2-fuse")
        .opaque(concat!("gfs2-fuse ", env!("CARGO_PKG_VERSION")).as_bytes())
        .i64(0)
        .u32(0);
    Ok(())
}

fn channel_attrs(d: &mut Dec<'_>) -> XResult<ChannelAttrs> {
    let a = ChannelAttrs {
        headerpad: d.u32()?,
        max_request: d.u32()?,
        max_response: d.u32()?,
        max_response_cached: d.u32()?,
        max_ops: d.u32()?,
        max_requests: d.u32()?,
    };
    d.u32s(1)?;
    Ok(a)
}

fn put_channel_attrs(e: &mut Enc, a: &ChannelAttrs) {
    e.u32(a.headerpad)
        .u32(a.max_request)
        .u32(a.max_response)
        .u32(a.max_response_cached)
        .u32(a.max_ops)
        .u32(a.max_requests)
        .u32(0);
}

/// CREATE_SESSION.
pub fn create_session(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let clientid = d.u64().map_err(xdr)?;
    let seq = d.u32().map_err(xdr)?;
    let flags = d.u32().map_err(xdr)?;
    let fore = channel_attrs(d).map_err(xdr)?;
    let back = channel_attrs(d).map_err(xdr)?;
    let prog = d.u32().map_err(xdr)?;
    let n = d.count(16, 4).map_err(xdr)?;
    for _ in 0..n {
        match d.u32().map_err(xdr)? {
            0 => {}
            1 => {
                d.u32().map_err(xdr)?;
                d.opaque(255).map_err(xdr)?;
                d.u32().map_err(xdr)?;
                d.u32().map_err(xdr)?;
                d.u32s(16).map_err(xdr)?;
            }
            6 => {
                d.u32().map_err(xdr)?;
                d.opaque(1024).map_err(xdr)?;
                d.opaque(1024).map_err(xdr)?;
            }
            _ => return Err(st::INVAL),
        }
    }
    let mut reg = ctx.srv.registry();
    if let Some(cached) = reg.create_session_seq(clientid, seq)? {
        e.buf.extend_from_slice(&cached);
        return Ok(());
    }
    if fore.max_request < 256 || fore.max_response < 256 || fore.max_ops == 0 {
        return Err(st::TOOSMALL);
    }
    let max_rec = MAX_RECORD as u32;
    let fore = ChannelAttrs {
        headerpad: 0,
        max_request: fore.max_request.min(max_rec),
        max_response: fore.max_response.min(max_rec),
        max_response_cached: fore.max_response_cached.min(64 * 1024),
        max_ops: fore.max_ops.min(MAX_OPS),
        max_requests: fore.max_requests.clamp(1, SLOTS),
    };
    let back = ChannelAttrs {
        headerpad: 0,
        max_requests: 1,
        ..back
    };
    let want_back = flags & CREATE_SESSION4_FLAG_CONN_BACK_CHAN != 0;
    let sid = reg.session_id(clientid);
    let s = Arc::new(Session {
        id: sid,
        client: clientid,
        fore,
        slots: Mutex::new(Slots::new(fore.max_requests as usize)),
        back: Mutex::new(BackChannel {
            conn: want_back.then(|| ctx.conn.clone()),
            wanted: want_back,
            prog,
            seq: 0,
        }),
    });
    let mut body = Enc::new();
    body.fixed(&sid).u32(seq).u32(if want_back {
        CREATE_SESSION4_FLAG_CONN_BACK_CHAN
    } else {
        0
    });
    put_channel_attrs(&mut body, &fore);
    put_channel_attrs(&mut body, &back);
    let old = reg.confirm(clientid, s, body.buf.clone());
    drop(reg);
    tracing::info!(
        client = clientid,
        slots = fore.max_requests,
        backchannel = want_back,
        "CREATE_SESSION"
    );
    for o in old {
        ctx.srv.client_gone(o, "the client rebooted");
    }
    e.buf.extend_from_slice(&body.buf);
    Ok(())
}

/// SEQUENCE: returns the session, slot, `sa_cachethis` and what the slot
/// rules decided.
pub fn sequence(
    ctx: &mut Ctx<'_>,
    d: &mut Dec<'_>,
    e: &mut Enc,
    nops: u32,
) -> Result<(Arc<Session>, u32, bool, SeqCheck), u32> {
    let sid: SessionId = d.array().map_err(xdr)?;
    let seq = d.u32().map_err(xdr)?;
    let slot = d.u32().map_err(xdr)?;
    let _highest = d.u32().map_err(xdr)?;
    let cachethis = d.bool().map_err(xdr)?;
    let (s, revoked) = {
        let mut reg = ctx.srv.registry();
        let s = reg.session(&sid).ok_or(st::BADSESSION)?;
        reg.renew(s.client);
        let revoked = reg
            .client_mut(s.client)
            .map(|c| std::mem::take(&mut c.revoked))
            .unwrap_or(false);
        (s, revoked)
    };
    if nops > s.fore.max_ops {
        return Err(st::TOO_MANY_OPS);
    }
    let (check, nslots) = {
        let mut sl = s.slots.lock().unwrap_or_else(|e| e.into_inner());
        (sl.check(slot, seq), sl.len() as u32)
    };
    let mut flags = 0;
    {
        let b = s.back.lock().unwrap_or_else(|e| e.into_inner());
        if b.wanted && b.conn.as_ref().is_none_or(|c| c.is_closed()) {
            flags |= SEQ4_STATUS_CB_PATH_DOWN_SESSION;
        }
    }
    if revoked {
        flags |= SEQ4_STATUS_RECALLABLE_STATE_REVOKED;
    }
    if check == SeqCheck::New {
        e.fixed(&sid)
            .u32(seq)
            .u32(slot)
            .u32(nslots - 1)
            .u32(nslots - 1)
            .u32(flags);
        ctx.session = Some(s.clone());
    }
    Ok((s, slot, cachethis, check))
}

/// DESTROY_SESSION.
pub fn destroy_session(ctx: &mut Ctx<'_>, d: &mut Dec<'_>) -> OpResult {
    let sid: SessionId = d.array().map_err(xdr)?;
    let s = ctx
        .srv
        .registry()
        .destroy_session(&sid)
        .ok_or(st::BADSESSION)?;
    tracing::info!(client = s.client, "DESTROY_SESSION");
    Ok(())
}

/// DESTROY_CLIENTID.
pub fn destroy_clientid(ctx: &mut Ctx<'_>, d: &mut Dec<'_>) -> OpResult {
    let id = d.u64().map_err(xdr)?;
    {
        let reg = ctx.srv.registry();
        if reg.client(id).is_none() {
            return Err(st::STALE_CLIENTID);
        }
        if reg.has_sessions(id) {
            return Err(st::CLIENTID_BUSY);
        }
    }
    ctx.srv.client_gone(id, "DESTROY_CLIENTID");
    Ok(())
}

/// BIND_CONN_TO_SESSION: this connection carries the fore channel, and the
/// backchannel if asked.
pub fn bind_conn(ctx: &mut Ctx<'_>, d: &mut Dec<'_>, e: &mut Enc) -> OpResult {
    let sid: SessionId = d.array().map_err(xdr)?;
    let dir = d.u32().map_err(xdr)?;
    let _rdma = d.bool().map_err(xdr)?;
    let s = ctx.srv.registry().session(&sid).ok_or(st::BADSESSION)?;
    // CDFC4_FORE (1), CDFC4_BACK (2), CDFC4_FORE_OR_BOTH (3),
    // CDFC4_BACK_OR_BOTH (7): "or both" gets both.
    let back = dir & CDFC4_BACK != 0;
    if back {
        let mut b = s.back.lock().unwrap_or_else(|e| e.into_inner());
        b.conn = Some(ctx.conn.clone());
        b.wanted = true;
    }
    let res = match dir {
        CDFC4_FORE => CDFS4_FORE,
        CDFC4_BACK => CDFS4_BACK,
        _ => CDFS4_BOTH,
    };
    tracing::info!(
        client = s.client,
        conn = ctx.conn.id,
        dir,
        "BIND_CONN_TO_SESSION"
    );
    e.fixed(&sid).u32(res).bool(false);
    Ok(())
}

/// RECLAIM_COMPLETE: there is no state to reclaim (no grace period: the
/// server keeps no state across restarts, and every open is re-done).
pub fn reclaim_complete(ctx: &mut Ctx<'_>, d: &mut Dec<'_>) -> OpResult {
    let _one_fs = d.bool().map_err(xdr)?;
    ctx.client()?;
    Ok(())
}
