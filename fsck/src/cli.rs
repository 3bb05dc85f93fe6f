//! Command line, as gfs2-utils' `fsck.gfs2` parses it (getopt "afhnpqvyV").

/// What to do about the problems found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `-n`: open read-only, answer no to every question.
    No,
    /// `-y`: fix everything.
    Yes,
    /// `-p`/`-a`: fix automatically (treated as `-y`).
    Preen,
}

/// Parsed options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    pub force: bool,
    /// -v adds one, -q takes one away; 0 is the default.
    pub verbosity: i32,
    pub device: String,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run(Options),
    Help,
    Version,
}

/// A usage error: message for stderr, exit status 16.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

pub fn usage(prog: &str) -> String {
    format!("Usage: {prog} [-afhnpqvVy] <device> \n")
}

pub fn version() -> String {
    format!("fsck.gfs2 (gfs2-fuse) {}\n", env!("CARGO_PKG_VERSION"))
}

const CONFLICT: &str = "Options -p/-a, -y and -n may not be used together";

/// Parse `argv` (without the program name) the way getopt does: option
/// clusters (`-fy`), options before the device, `--` ends options.
pub fn parse(args: &[String]) -> Result<Action, UsageError> {
    let mut mode: Option<Mode> = None;
    let mut force = false;
    let mut verbosity = 0;
    let mut device = None;
    let mut only_operands = false;
    for a in args {
        if only_operands || !a.starts_with('-') || a == "-" {
            if device.is_none() {
                device = Some(a.clone());
            }
            continue;
        }
        if a == "--" {
            only_operands = true;
            continue;
        }
        for c in a.chars().skip(1) {
            match c {
                'a' | 'p' => {
                    if matches!(mode, Some(Mode::Yes) | Some(Mode::No)) {
                        return Err(UsageError(CONFLICT.into()));
                    }
                    mode = Some(Mode::Preen);
                }
                'n' => {
                    if matches!(mode, Some(Mode::Yes) | Some(Mode::Preen)) {
                        return Err(UsageError(CONFLICT.into()));
                    }
                    mode = Some(Mode::No);
                }
                'y' => {
                    if matches!(mode, Some(Mode::No) | Some(Mode::Preen)) {
                        return Err(UsageError(CONFLICT.into()));
                    }
                    mode = Some(Mode::Yes);
                }
                'f' => force = true,
                'h' => return Ok(Action::Help),
                'V' => return Ok(Action::Version),
                'q' => verbosity -= 1,
                'v' => verbosity += 1,
                _ => {
                    return Err(UsageError(format!(
                        "invalid option -- '{c}'\nPlease use '-h' for help."
                    )))
                }
            }
        }
    }
    let Some(device) = device else {
        return Err(UsageError(
            "No device specified (Please use '-h' for help)".into(),
        ));
    };
    Ok(Action::Run(Options {
        mode: mode.unwrap_or(Mode::No),
        force,
        verbosity,
        device,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Action, UsageError> {
        parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn conflicts_and_clusters() {
        assert!(p(&["-n", "-y", "d"]).is_err());
        assert!(p(&["-y", "-p", "d"]).is_err());
        assert!(p(&["-pn", "d"]).is_err());
        assert!(p(&["-n"]).is_err());
        match p(&["-fvy", "d"]) {
            Ok(Action::Run(o)) => {
                assert_eq!(o.mode, Mode::Yes);
                assert!(o.force);
                assert_eq!(o.verbosity, 1);
                assert_eq!(o.device, "d");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p(&["-h"]), Ok(Action::Help));
        assert_eq!(p(&["-V", "d"]), Ok(Action::Version));
    }
}
