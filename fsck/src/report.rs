//! Findings, counters and messages.

use crate::cli::Mode;

/// Counts what was found and what was done about it, and prints messages
/// on stderr according to the verbosity.
pub struct Report {
    pub mode: Mode,
    pub verbosity: i32,
    pub found: u64,
    pub fixed: u64,
    pub left: u64,
}

impl Report {
    pub fn new(mode: Mode, verbosity: i32) -> Self {
        Report {
            mode,
            verbosity,
            found: 0,
            fixed: 0,
            left: 0,
        }
    }

    pub fn repairing(&self) -> bool {
        self.mode != Mode::No
    }

    /// A progress line (hidden by -q).
    pub fn progress(&self, msg: &str) {
        if self.verbosity >= 0 {
            eprintln!("{msg}");
        }
    }

    /// Detail shown with -v.
    pub fn info(&self, msg: &str) {
        if self.verbosity > 0 {
            eprintln!("  {msg}");
        }
    }

    /// A problem. Returns whether to repair it (`fixable` and not -n).
    pub fn problem(&mut self, msg: &str, fixable: bool) -> bool {
        self.found += 1;
        let fix = fixable && self.repairing();
        if fix {
            self.fixed += 1;
        } else {
            self.left += 1;
        }
        if self.verbosity >= 0 {
            let what = if fix {
                "fixed"
            } else if self.repairing() {
                "not fixed"
            } else {
                "not fixed (-n)"
            };
            eprintln!("{msg}: {what}");
        }
        fix
    }

    /// Exit status: 4 if anything was left, 1 if something was fixed, 0.
    pub fn status(&self) -> i32 {
        if self.left > 0 {
            4
        } else if self.fixed > 0 {
            1
        } else {
            0
        }
    }
}
