//! GNU `getopt(3)` as gfs2-utils' tools use it: short options only, an
//! argument glued (`-J64`) or in the next word, flags combined (`-qT`),
//! operands permuted to the end, `--` ending the options. Its two error
//! lines (`invalid option` and `option requires an argument`, prefixed by
//! the full argv[0]) are reproduced because scripts see them on stderr.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

/// One thing `getopt` returns, in command-line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opt {
    /// An option character and its argument (if it takes one).
    Flag(u8, Option<Vec<u8>>),
    /// `?`: the message getopt printed for it.
    Error(String),
}

/// Parse `argv` (with argv[0]) against `optstring`; returns the options in
/// order and the operands.
pub fn getopt(argv: &[OsString], optstring: &str) -> (Vec<Opt>, Vec<OsString>) {
    let prog = argv
        .first()
        .map(|a| String::from_utf8_lossy(a.as_bytes()).into_owned())
        .unwrap_or_default();
    let spec = optstring.as_bytes();
    let takes_arg = |c: u8| -> Option<bool> {
        let i = spec.iter().position(|&s| s == c && c != b':')?;
        Some(spec.get(i + 1) == Some(&b':'))
    };
    let mut opts = Vec::new();
    let mut operands = Vec::new();
    let mut i = 1;
    while i < argv.len() {
        let word = argv[i].as_bytes();
        i += 1;
        if word == b"--" {
            operands.extend(argv[i..].iter().cloned());
            break;
        }
        if word.len() < 2 || word[0] != b'-' {
            operands.push(argv[i - 1].clone());
            continue;
        }
        let mut k = 1;
        while k < word.len() {
            let c = word[k];
            k += 1;
            match takes_arg(c) {
                None => opts.push(Opt::Error(format!(
                    "{prog}: invalid option -- '{}'\n",
                    c as char
                ))),
                Some(false) => opts.push(Opt::Flag(c, None)),
                Some(true) => {
                    if k < word.len() {
                        opts.push(Opt::Flag(c, Some(word[k..].to_vec())));
                    } else if i < argv.len() {
                        opts.push(Opt::Flag(c, Some(argv[i].as_bytes().to_vec())));
                        i += 1;
                    } else {
                        opts.push(Opt::Error(format!(
                            "{prog}: option requires an argument -- '{}'\n",
                            c as char
                        )));
                    }
                    break;
                }
            }
        }
    }
    (opts, operands)
}

/// C's `atoi`: leading blanks, a sign, digits; anything else ends it, no
/// digits give 0, and the value wraps as an `int` does in practice.
pub fn atoi(s: &[u8]) -> i32 {
    let mut it = s
        .iter()
        .skip_while(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
        .peekable();
    let neg = match it.peek() {
        Some(b'-') => {
            it.next();
            true
        }
        Some(b'+') => {
            it.next();
            false
        }
        _ => false,
    };
    let mut v: i64 = 0;
    for c in it {
        if !c.is_ascii_digit() {
            break;
        }
        v = v.wrapping_mul(10).wrapping_add(i64::from(c - b'0'));
    }
    (if neg { v.wrapping_neg() } else { v }) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn permutes_and_glues() {
        let (o, ops) = getopt(&args(&["p", "dev", "-qJ64", "-j", "2"]), "qJ:j:");
        assert_eq!(
            o,
            vec![
                Opt::Flag(b'q', None),
                Opt::Flag(b'J', Some(b"64".to_vec())),
                Opt::Flag(b'j', Some(b"2".to_vec())),
            ]
        );
        assert_eq!(ops, args(&["dev"]));
    }

    #[test]
    fn atoi_like_c() {
        assert_eq!(atoi(b" 12abc"), 12);
        assert_eq!(atoi(b"-5"), -5);
        assert_eq!(atoi(b"x"), 0);
    }
}
