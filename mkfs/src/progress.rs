//! Progress lines like gfs2-utils' mkfs (its progress.c, after e2fsprogs): a label, then on a
//! terminal a `[ n/max]` counter redrawn at most once a second, then "Done". gfs2-utils writes
//! these to stdout; we
//! write them to stderr so that stdout carries only the destruction notice and the closing summary
//! (what scripts parse), and progress still shows when stdout is redirected.

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// One progress line; does nothing when quiet.
pub struct Progress {
    max: u64,
    digits: usize,
    quiet: bool,
    tty: bool,
    last: Option<Instant>,
}

impl Progress {
    /// Print `label` and start counting to `max`.
    pub fn start(label: &str, max: u64, quiet: bool) -> Progress {
        let tty = std::io::stderr().is_terminal();
        if !quiet {
            eprint!("{label}");
            let _ = std::io::stderr().flush();
        }
        Progress {
            max,
            digits: max.to_string().len(),
            quiet,
            tty,
            last: None,
        }
    }

    /// Show `value` of `max` (terminals only, at most once a second).
    pub fn update(&mut self, value: u64) {
        if self.quiet || !self.tty {
            return;
        }
        if self.last.is_some_and(|t| t.elapsed().as_secs() < 1) {
            return;
        }
        self.last = Some(Instant::now());
        let w = self.digits;
        let back = "\u{8}".repeat(2 * w + 3);
        eprint!("[{value:>w$}/{:>w$}]{back}", self.max);
        let _ = std::io::stderr().flush();
    }

    /// Erase the counter and print `msg` (usually "Done\n").
    pub fn finish(self, msg: &str) {
        if self.quiet {
            return;
        }
        if self.tty {
            let n = 2 * self.digits + 3;
            eprint!("{}{}", " ".repeat(n), "\u{8}".repeat(n));
        }
        eprint!("{msg}");
        let _ = std::io::stderr().flush();
    }
}
