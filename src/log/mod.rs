//! The journal. For now: recovery (`recovery`), shared by mount and fsck.
//! Transactions and log flushes come with the write path.

pub mod recovery;
