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

#[cfg(test)]
mod fuzz {
    //! Bounded never-panic runs of every decoder over random and truncated
    //! or bit-flipped valid input.
    use super::xdr::{Dec, Enc};
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn all_decoders(b: &[u8]) {
        let _ = rpc::parse_msg(b);
        let _ = attr::decode_set(&mut Dec::new(b));
        let _ = op_layout::decode_block_layout(b);
        let _ = op_layout::decode_deviceaddr(b);
        let _ = op_layout::decode_cb_reply(b);
        let _ = op_namespace::component(&mut Dec::new(b));
        let _ = state::Stateid::decode(&mut Dec::new(b));
        let _ = fh::Fh::decode(b);
        let _ = rpc::read_record(&mut &b[..], 1 << 16);
        let mut d = Dec::new(b);
        let _ = d.u32s(1 << 20);
        let _ = d.count(usize::MAX, 0);
        let _ = d.opaque(usize::MAX);
    }

    fn samples() -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        let mut cred = Enc::new();
        cred.u32(1).opaque(b"m").u32(0).u32(0).u32s(&[1, 2]);
        let mut call = Enc::new();
        call.u32(1).u32(0).u32(2).u32(100003).u32(4).u32(1);
        call.u32(1).opaque(&cred.buf).u32(0).u32(0);
        call.opaque(b"tag")
            .u32(1)
            .u32(2)
            .u32(proto::op::PUTROOTFH)
            .u32(9)
            .u32s(&[0x10_0000, 2]);
        v.push(call.buf);
        let x = crate::pnfs::Extent {
            file_offset: 0,
            length: 4096,
            storage_offset: 8192,
            state: crate::pnfs::ExtentState::ReadWriteData,
        };
        v.push(op_layout::encode_block_layout(&[x, x]));
        v.push(op_layout::encode_deviceaddr(&crate::pnfs::DeviceInfo {
            sig_offset: 65792,
            signature: vec![7; 16],
            size: 1 << 30,
            block_size: 4096,
            scsi: None,
        }));
        let mut m = Vec::new();
        attr::set(&mut m, proto::fattr::SIZE);
        attr::set(&mut m, proto::fattr::OWNER);
        let mut vals = Enc::new();
        vals.u64(1).opaque(b"12");
        let mut fa = Enc::new();
        fa.u32s(&m).opaque(&vals.buf);
        v.push(fa.buf);
        v
    }

    #[test]
    fn decoders_never_panic() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let n = (r.next() % 200) as usize;
            all_decoders(&r.bytes(n));
        }
        for s in samples() {
            for cut in 0..=s.len() {
                all_decoders(&s[..cut]);
            }
            for _ in 0..3_000 {
                let mut m = s.clone();
                for _ in 0..1 + r.next() % 4 {
                    let i = (r.next() as usize) % m.len();
                    m[i] ^= 1 << (r.next() % 8);
                }
                all_decoders(&m);
            }
        }
    }
}
