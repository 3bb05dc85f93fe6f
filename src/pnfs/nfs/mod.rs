//! The NFSv4.1 metadata server of the pNFS exporter: the subset of RFC 8881
//! a Linux client needs, over the filesystem library directly, with block
//! layouts (RFC 5663) from a [`crate::pnfs::LayoutBackend`] when one is
//! given. Started by `gfs2-fuse mount ... -o nfsd=ADDR:PORT` beside the
//! FUSE mount, on the same [`crate::fs::Fs`].
//!
//! Layers: `xdr` (bytes) -> `rpc` (records, calls, the backchannel) ->
//! `compound` (one request, op by op) -> `op_*` (the operations) over
//! `session` (client ids, sessions, slots), `state` (stateids), `fh`
//! (handles), `attr` (attributes) and `perm` (permission checks);
//! `server` runs it all.

pub mod attr;
pub mod compound;
pub mod fh;
pub mod op_io;
pub mod op_layout;
pub mod op_namespace;
pub mod op_session;
pub mod perm;
pub mod proto;
pub mod rpc;
pub mod server;
pub mod session;
pub mod state;
pub mod xdr;

pub use server::{start, Handle, Server};
