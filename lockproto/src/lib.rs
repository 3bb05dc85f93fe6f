//! Lock modules.
