//! One COMPOUND request (RFC 8881 sections 2.10.6 and 15.2): the ops run in
//! order against a current (and a saved) file handle until one fails; the
//! first op must be SEQUENCE, except for the few that create or destroy
//! the session machinery itself, which must then come alone. The whole
//! reply is what a slot caches for a retransmission.

use super::fh::Fh;
use super::proto::{op, st};
use super::rpc::{Conn, Cred};
use super::server::Server;
use super::session::{SeqCheck, Session};
use super::state::Stateid;
use super::xdr::{Dec, Enc, XdrError};
use super::{op_io, op_layout, op_namespace, op_session};
use crate::error::FsError;
use crate::fs::Attr;
use crate::pnfs::ClientId;
use std::sync::Arc;

/// Most operations in one COMPOUND.
pub const MAX_OPS: u32 = 64;
/// Replies up to this size are cached even when the client did not ask.
const CACHE_ALWAYS: usize = 8192;

/// The state of one COMPOUND as its ops run.
pub struct Ctx<'a> {
    /// The server.
    pub srv: &'a Server,
    /// The connection it came on.
    pub conn: &'a Arc<Conn>,
    /// The caller.
    pub cred: Cred,
    /// Current file handle.
    pub cur: Option<Fh>,
    /// Saved file handle.
    pub saved: Option<Fh>,
    /// The session (after SEQUENCE).
    pub session: Option<Arc<Session>>,
    /// The current stateid (RFC 8881 section 16.2.3.1.2).
    pub cur_stateid: Option<Stateid>,
}

/// An op's outcome: its status (the body is in the op's encoder).
pub type OpResult = Result<(), u32>;

/// The status for a filesystem error.
pub fn fs_status(e: &FsError) -> u32 {
    match e.errno() {
        libc::EPERM => st::PERM,
        libc::ENOENT => st::NOENT,
        libc::ENXIO => st::NXIO,
        libc::EACCES => st::ACCESS,
        libc::EEXIST => st::EXIST,
        libc::EXDEV => st::XDEV,
        libc::ENOTDIR => st::NOTDIR,
        libc::EISDIR => st::ISDIR,
        libc::EINVAL => st::INVAL,
        libc::EFBIG => st::FBIG,
        libc::ENOSPC => st::NOSPC,
        libc::EROFS => st::ROFS,
        libc::EMLINK => st::MLINK,
        libc::ENAMETOOLONG => st::NAMETOOLONG,
        libc::ENOTEMPTY => st::NOTEMPTY,
        libc::EDQUOT => st::DQUOT,
        libc::ESTALE => st::STALE,
        libc::EAGAIN => st::DELAY,
        libc::EOPNOTSUPP => st::NOTSUPP,
        libc::ELOOP => st::SYMLINK,
        _ => {
            tracing::warn!("filesystem error answered NFS4ERR_IO: {e}");
            st::IO
        }
    }
}

/// Decoding failed inside an op's arguments.
pub fn xdr(_: XdrError) -> u32 {
    st::BADXDR
}

impl Ctx<'_> {
    /// The client of the session.
    pub fn client(&self) -> Result<ClientId, u32> {
        self.session
            .as_ref()
            .map(|s| s.client)
            .ok_or(st::OP_NOT_IN_SESSION)
    }

    /// The current file handle.
    pub fn cur(&self) -> Result<Fh, u32> {
        self.cur.ok_or(st::NOFILEHANDLE)
    }

    /// The current file handle's inode, checked live, with its attributes.
    pub fn cur_attr(&self) -> Result<Attr, u32> {
        let fh = self.cur()?;
        self.srv.check_fh(&fh)
    }

    /// The current directory: `NOTDIR` (or `SYMLINK`) for anything else.
    pub fn cur_dir(&self) -> Result<Attr, u32> {
        let a = self.cur_attr()?;
        match a.mode & 0o170000 {
            0o040000 => Ok(a),
            0o120000 => Err(st::SYMLINK),
            _ => Err(st::NOTDIR),
        }
    }

    /// A stateid argument, with the current stateid substituted.
    pub fn stateid(&self, s: Stateid) -> Stateid {
        if s == Stateid::CURRENT {
            self.cur_stateid.unwrap_or(Stateid::INVALID)
        } else {
            s
        }
    }

    /// Refuse writes on a read-only mount.
    pub fn writable(&self) -> OpResult {
        let o = self.srv.fs.options();
        if o.read_only || o.device_read_only {
            Err(st::ROFS)
        } else {
            Ok(())
        }
    }
}

/// Ops that may come without SEQUENCE (alone).
fn sessionless(opcode: u32) -> bool {
    matches!(
        opcode,
        op::EXCHANGE_ID
            | op::CREATE_SESSION
            | op::DESTROY_SESSION
            | op::DESTROY_CLIENTID
            | op::BIND_CONN_TO_SESSION
    )
}

fn run_op(ctx: &mut Ctx<'_>, opcode: u32, d: &mut Dec<'_>, body: &mut Enc) -> OpResult {
    match opcode {
        op::EXCHANGE_ID => op_session::exchange_id(ctx, d, body),
        op::CREATE_SESSION => op_session::create_session(ctx, d, body),
        op::DESTROY_SESSION => op_session::destroy_session(ctx, d),
        op::DESTROY_CLIENTID => op_session::destroy_clientid(ctx, d),
        op::BIND_CONN_TO_SESSION => op_session::bind_conn(ctx, d, body),
        op::RECLAIM_COMPLETE => op_session::reclaim_complete(ctx, d),
        op::SECINFO_NO_NAME => op_namespace::secinfo_no_name(ctx, d, body),
        op::SECINFO => op_namespace::secinfo(ctx, d, body),
        op::PUTROOTFH | op::PUTPUBFH => op_namespace::putrootfh(ctx),
        op::PUTFH => op_namespace::putfh(ctx, d),
        op::GETFH => op_namespace::getfh(ctx, body),
        op::SAVEFH => {
            ctx.saved = Some(ctx.cur()?);
            Ok(())
        }
        op::RESTOREFH => {
            ctx.cur = Some(ctx.saved.ok_or(st::RESTOREFH)?);
            Ok(())
        }
        op::LOOKUP => op_namespace::lookup(ctx, d),
        op::LOOKUPP => op_namespace::lookupp(ctx),
        op::GETATTR => op_namespace::getattr(ctx, d, body),
        op::VERIFY => op_namespace::verify(ctx, d, true),
        op::NVERIFY => op_namespace::verify(ctx, d, false),
        op::ACCESS => op_namespace::access(ctx, d, body),
        op::READDIR => op_namespace::readdir(ctx, d, body),
        op::READLINK => op_namespace::readlink(ctx, body),
        op::CREATE => op_namespace::create(ctx, d, body),
        op::REMOVE => op_namespace::remove(ctx, d, body),
        op::RENAME => op_namespace::rename(ctx, d, body),
        op::LINK => op_namespace::link(ctx, d, body),
        op::SETATTR => op_namespace::setattr(ctx, d, body),
        op::OPEN => op_io::open(ctx, d, body),
        op::OPEN_DOWNGRADE => op_io::open_downgrade(ctx, d, body),
        op::CLOSE => op_io::close(ctx, d, body),
        op::READ => op_io::read(ctx, d, body),
        op::WRITE => op_io::write(ctx, d, body),
        op::COMMIT => op_io::commit(ctx, d, body),
        op::TEST_STATEID => op_io::test_stateid(ctx, d, body),
        op::FREE_STATEID => op_io::free_stateid(ctx, d),
        op::DELEGRETURN => {
            Stateid::decode(d).map_err(xdr)?;
            Err(st::BAD_STATEID)
        }
        op::GETDEVICEINFO => op_layout::getdeviceinfo(ctx, d, body),
        op::LAYOUTGET => op_layout::layoutget(ctx, d, body),
        op::LAYOUTCOMMIT => op_layout::layoutcommit(ctx, d, body),
        op::LAYOUTRETURN => op_layout::layoutreturn(ctx, d, body),
        n if (3..=op::LAST_V41).contains(&n) => Err(st::NOTSUPP),
        _ => Err(st::OP_ILLEGAL),
    }
}

fn reply(status: u32, tag: &[u8], results: &Enc, n: u32) -> Vec<u8> {
    let mut e = Enc::new();
    e.u32(status).opaque(tag).u32(n);
    e.buf.extend_from_slice(&results.buf);
    e.buf
}

/// Run a COMPOUND; returns the `COMPOUND4res` bytes.
pub fn compound(srv: &Server, conn: &Arc<Conn>, cred: Cred, args: &mut Dec<'_>) -> Vec<u8> {
    let Ok(tag) = args.opaque(1024).map(|t| t.to_vec()) else {
        return reply(st::BADXDR, &[], &Enc::new(), 0);
    };
    let (Ok(minor), Ok(nops)) = (args.u32(), args.u32()) else {
        return reply(st::BADXDR, &tag, &Enc::new(), 0);
    };
    if minor != 1 {
        return reply(st::MINOR_VERS_MISMATCH, &tag, &Enc::new(), 0);
    }
    let mut ctx = Ctx {
        srv,
        conn,
        cred,
        cur: None,
        saved: None,
        session: None,
        cur_stateid: None,
    };
    let mut results = Enc::new();
    let mut status = st::OK;
    let mut done = 0u32;
    // The slot whose reply this is: (session, slot, cache it).
    let mut slot: Option<(Arc<Session>, u32, bool)> = None;
    let mut opcodes: Vec<u32> = Vec::new();
    for i in 0..nops {
        let Ok(opcode) = args.u32() else {
            status = st::BADXDR;
            results.u32(op::ILLEGAL).u32(status);
            done += 1;
            break;
        };
        opcodes.push(opcode);
        let mut body = Enc::new();
        let r = if i >= MAX_OPS {
            Err(st::TOO_MANY_OPS)
        } else if i == 0 && opcode == op::SEQUENCE {
            match op_session::sequence(&mut ctx, args, &mut body, nops) {
                Ok((s, sl, cachethis, SeqCheck::New)) => {
                    slot = Some((s, sl, cachethis));
                    Ok(())
                }
                Ok((_, _, _, SeqCheck::Replay(r))) => {
                    tracing::debug!("SEQUENCE: retransmission answered from the slot's cache");
                    return r.as_ref().clone();
                }
                Ok((_, _, _, SeqCheck::Refused(s))) | Err(s) => Err(s),
            }
        } else if opcode == op::SEQUENCE {
            Err(st::SEQUENCE_POS)
        } else if i == 0 && !sessionless(opcode) {
            Err(st::OP_NOT_IN_SESSION)
        } else if i == 0 && nops > 1 && sessionless(opcode) {
            Err(st::NOT_ONLY_OP)
        } else {
            run_op(&mut ctx, opcode, args, &mut body)
        };
        let opcode = if (3..=op::LAST_V41).contains(&opcode) {
            opcode
        } else {
            op::ILLEGAL
        };
        results.u32(opcode);
        done += 1;
        match r {
            Ok(()) => {
                results.u32(st::OK);
                results.buf.extend_from_slice(&body.buf);
            }
            Err(s) => {
                status = s;
                results.u32(s);
                // Some errors carry a body (SETATTR's attrsset, LAYOUTGET's
                // will_signal, GETDEVICEINFO's mincount): the op wrote it.
                results.buf.extend_from_slice(&body.buf);
                tracing::debug!(opcode, status = s, "NFS op failed");
                break;
            }
        }
    }
    let out = reply(status, &tag, &results, done);
    tracing::trace!(ops = ?opcodes, status, bytes = out.len(), "COMPOUND");
    if let Some((s, sl, cachethis)) = slot {
        let keep = cachethis || out.len() <= CACHE_ALWAYS;
        s.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finish(sl, keep.then(|| Arc::new(out.clone())));
    }
    out
}
