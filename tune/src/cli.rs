//! Command-line parsing compatible with gfs2-utils' `tunegfs2`.
//!
//! gfs2-utils parses with `getopt(argc, argv, "hL:U:lo:Vr:")`: GNU getopt
//! permutes, so the device may come before the options; flags combine
//! (`-lU x`), an argument may be glued (`-Lfoo`) or separate, and `--` ends
//! the options. `-h` and `-V` act as soon as they are met, so an error in a
//! later word is not reported. Arguments are kept as bytes because a label or
//! path need not be UTF-8.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// What the command line asks for, before the device is touched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub list: bool,
    pub label: Option<Vec<u8>>,
    pub uuid: Option<Vec<u8>>,
    pub lockproto: Option<Vec<u8>>,
    pub locktable: Option<Vec<u8>>,
    pub format: Option<Vec<u8>>,
    pub device: OsString,
}

impl Options {
    /// Whether the superblock is to be rewritten.
    pub fn changes(&self) -> bool {
        self.label.is_some()
            || self.uuid.is_some()
            || self.lockproto.is_some()
            || self.locktable.is_some()
            || self.format.is_some()
    }
}

/// The outcome of parsing: run, or print and exit with a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Run(Options),
    /// Text for stdout, text for stderr, exit status.
    Exit {
        stdout: String,
        stderr: String,
        code: u8,
    },
}

/// The usage line, naming the program by the last component of argv[0]
/// as gfs2-utils does with basename(3).
pub fn usage(argv0: &[u8]) -> String {
    format!(
        "Usage: {} [-hlV] [-L <label>] [-U <UUID>] [-o <mount options>] [-r <version>] <device>\n",
        String::from_utf8_lossy(basename(argv0))
    )
}

fn basename(p: &[u8]) -> &[u8] {
    let trimmed = match p.iter().rposition(|c| *c != b'/') {
        Some(end) => &p[..=end],
        None if p.is_empty() => return b".",
        None => return b"/",
    };
    match trimmed.iter().rposition(|c| *c == b'/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// `-o` as gfs2-utils reads it: `lockproto=` is only looked for first and
/// `locktable=` only after it, each value ends at the next comma, and
/// anything else is silently ignored. Scripts that rely on these quirks
/// (e.g. `locktable=a,lockproto=b` setting only the table) keep working.
fn parse_mount_options(arg: &[u8], o: &mut Options) {
    let mut s = arg;
    for tag in [&b"lockproto="[..], &b"locktable="[..]] {
        if !s.starts_with(tag) {
            continue;
        }
        let val = &s[tag.len()..];
        let (v, rest) = match val.iter().position(|c| *c == b',') {
            Some(i) => (&val[..i], Some(&val[i + 1..])),
            None => (val, None),
        };
        if tag.starts_with(b"lockproto") {
            o.lockproto = Some(v.to_vec());
        } else {
            o.locktable = Some(v.to_vec());
        }
        match rest {
            Some(r) => s = r,
            None => break,
        }
    }
}

fn getopt_error(argv0: &[u8], msg: &str, c: u8) -> Action {
    Action::Exit {
        stdout: usage(argv0),
        stderr: format!(
            "{}: {msg} -- '{}'\nInvalid option: ?\n",
            String::from_utf8_lossy(argv0),
            c as char
        ),
        code: crate::EX_USAGE,
    }
}

/// Parse `argv` (including argv[0]).
pub fn parse(argv: &[OsString]) -> Action {
    let argv0: Vec<u8> = argv
        .first()
        .map(|a| a.as_bytes().to_vec())
        .unwrap_or_else(|| b"tunegfs2".to_vec());
    let mut o = Options::default();
    let mut operands: Vec<&OsString> = Vec::new();
    let mut i = 1;
    while i < argv.len() {
        let word = argv[i].as_bytes();
        i += 1;
        if word == b"--" {
            operands.extend(argv[i..].iter());
            break;
        }
        if word.len() < 2 || word[0] != b'-' {
            operands.push(&argv[i - 1]);
            continue;
        }
        let mut j = 1;
        while j < word.len() {
            let c = word[j];
            j += 1;
            let takes_arg = matches!(c, b'L' | b'U' | b'o' | b'r');
            let optarg = if takes_arg {
                if j < word.len() {
                    let a = word[j..].to_vec();
                    j = word.len();
                    a
                } else if i < argv.len() {
                    i += 1;
                    argv[i - 1].as_bytes().to_vec()
                } else {
                    return getopt_error(&argv0, "option requires an argument", c);
                }
            } else {
                Vec::new()
            };
            match c {
                b'h' => {
                    return Action::Exit {
                        stdout: usage(&argv0),
                        stderr: String::new(),
                        code: 0,
                    }
                }
                b'V' => {
                    // gfs2-utils prints "tunegfs2" VERSION with VERSION
                    // empty in its builds.
                    return Action::Exit {
                        stdout: "tunegfs2\n".into(),
                        stderr: String::new(),
                        code: 0,
                    };
                }
                b'l' => o.list = true,
                b'L' => o.label = Some(optarg),
                b'U' => o.uuid = Some(optarg),
                b'o' => parse_mount_options(&optarg, &mut o),
                b'r' => o.format = Some(optarg),
                _ => return getopt_error(&argv0, "invalid option", c),
            }
        }
    }
    if operands.len() != 1 {
        return Action::Exit {
            stdout: usage(&argv0),
            stderr: "Incorrect number of arguments\n".into(),
            code: crate::EX_USAGE,
        };
    }
    if o.label.is_some() && o.locktable.is_some() {
        return Action::Exit {
            stdout: usage(&argv0),
            stderr: "The -L argument cannot be used with the 'locktable' option\n".into(),
            code: crate::EX_USAGE,
        };
    }
    o.device = OsString::from_vec(operands[0].as_bytes().to_vec());
    Action::Run(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Action {
        let v: Vec<OsString> = std::iter::once("tunegfs2")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        parse(&v)
    }

    #[test]
    fn mount_options_quirks() {
        let Action::Run(o) = p(&["-o", "lockproto=lock_dlm,locktable=a:b,x", "img"]) else {
            panic!("expected run");
        };
        assert_eq!(o.lockproto.as_deref(), Some(&b"lock_dlm"[..]));
        assert_eq!(o.locktable.as_deref(), Some(&b"a:b"[..]));
        // The table first hides a later lockproto, as in gfs2-utils.
        let Action::Run(o) = p(&["-o", "locktable=a:b,lockproto=lock_dlm", "img"]) else {
            panic!("expected run");
        };
        assert_eq!(o.lockproto, None);
        assert_eq!(o.locktable.as_deref(), Some(&b"a:b"[..]));
    }

    #[test]
    fn permutes_and_glues() {
        let Action::Run(o) = p(&["img", "-lLfoo"]) else {
            panic!("expected run");
        };
        assert!(o.list);
        assert_eq!(o.label.as_deref(), Some(&b"foo"[..]));
        assert_eq!(o.device, OsString::from("img"));
    }

    #[test]
    fn errors() {
        assert!(matches!(p(&[]), Action::Exit { code: 64, .. }));
        assert!(matches!(p(&["-x", "img"]), Action::Exit { code: 64, .. }));
        assert!(matches!(p(&["img", "-L"]), Action::Exit { code: 64, .. }));
        assert!(matches!(
            p(&["-L", "a", "-o", "locktable=b", "img"]),
            Action::Exit { code: 64, .. }
        ));
        assert_eq!(basename(b"/usr/sbin/tunegfs2"), b"tunegfs2");
    }
}
