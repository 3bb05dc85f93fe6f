//! The journal: recovery (`recovery`, shared by mount and fsck), this node's
//! log writer (`writer`) and transactions (`trans`).

pub mod recovery;
pub mod trans;
pub mod writer;
