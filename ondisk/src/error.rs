//! Errors from decoding or encoding on-disk structures.

use thiserror::Error;

/// Why a structure could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    /// The buffer is shorter than the structure.
    #[error("{what}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    /// A metadata header does not carry `GFS2_MAGIC`.
    #[error("{what}: bad magic {found:#010x}")]
    BadMagic { what: &'static str, found: u32 },
    /// A metadata header has another type than expected.
    #[error("{what}: metadata type {found}, expected {expected}")]
    BadType {
        what: &'static str,
        found: u32,
        expected: u32,
    },
    /// A field holds a value the format does not allow here.
    #[error("{what}: bad {field} {value}")]
    BadValue {
        what: &'static str,
        field: &'static str,
        value: u64,
    },
}

/// Result of format operations.
pub type Result<T> = std::result::Result<T, FormatError>;

/// Check that `b` holds at least `need` bytes.
pub(crate) fn need(what: &'static str, b: &[u8], need: usize) -> Result<()> {
    if b.len() < need {
        Err(FormatError::Truncated {
            what,
            need,
            have: b.len(),
        })
    } else {
        Ok(())
    }
}
