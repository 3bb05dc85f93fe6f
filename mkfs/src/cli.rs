//! Command-line parsing and validation, compatible with gfs2-utils 3.5 `mkfs.gfs2`.
//!
//! gfs2-utils parses with `getopt(argc, argv, "-b:c:DhJ:j:KOo:p:qr:t:U:V")`: the leading `-` makes
//! getopt hand back non-option words in order instead of permuting them, short flags combine
//! (`-Oq`), and an option's argument may be glued (`-j3`) or separate (`-j 3`). Numbers are read
//! with `atoi`, so `-j 3x` means 3 and `-j x` means 0. We reproduce those rules because scripts
//! written for the C tool must behave the same with ours; every validation failure exits with 255
//! (the C tool's `exit(-1)`).

use std::fmt;

/// Exit status gfs2-utils uses for every option or validation error (`exit(-1)`).
pub const EXIT_USAGE: i32 = 255;

/// Defaults and limits, as in libgfs2.h.
pub const DEFAULT_BSIZE: u32 = 4096;
pub const DEFAULT_JSIZE: u32 = 128;
pub const MIN_JSIZE: u32 = 8;
pub const MAX_JSIZE: u32 = 1024;
pub const DEFAULT_RGSIZE: u32 = 256;
pub const MIN_RGSIZE: u32 = 32;
pub const MAX_RGSIZE: u32 = 2048;
pub const DEFAULT_QCSIZE: u32 = 1;
pub const FS_FORMAT_MIN: u64 = 1801;
pub const FS_FORMAT_MAX: u64 = 1802;

/// Device topology, either probed or given with `-o test_topology=a:b:c:d:e`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub alignment_offset: u64,
    pub logical_sector_size: u64,
    pub minimum_io_size: u64,
    pub optimal_io_size: u64,
    pub physical_sector_size: u64,
}

/// Everything the command line can say, after getopt but before the checks that need the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub bsize: u32,
    pub got_bsize: bool,
    pub qcsize: u32,
    pub jsize: u32,
    pub got_jsize: bool,
    pub rgsize: u32,
    pub journals: i32,
    pub lockproto: String,
    pub locktable: String,
    pub got_locktable: bool,
    pub uuid: Option<String>,
    pub device: Option<String>,
    pub fssize: Option<u64>,
    pub sunit: Option<u64>,
    pub swidth: Option<u64>,
    pub align: bool,
    pub format: u32,
    pub root_inherit_jdata: bool,
    pub test_topology: Option<Topology>,
    pub discard: bool,
    pub override_confirm: bool,
    pub quiet: bool,
    pub debug: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bsize: DEFAULT_BSIZE,
            got_bsize: false,
            qcsize: DEFAULT_QCSIZE,
            jsize: DEFAULT_JSIZE,
            got_jsize: false,
            rgsize: DEFAULT_RGSIZE,
            journals: 1,
            lockproto: "lock_dlm".into(),
            locktable: String::new(),
            got_locktable: false,
            uuid: None,
            device: None,
            fssize: None,
            sunit: None,
            swidth: None,
            align: true,
            format: FS_FORMAT_MAX as u32,
            root_inherit_jdata: false,
            test_topology: None,
            discard: true,
            override_confirm: false,
            quiet: false,
            debug: false,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make a filesystem.
    Run(Box<Options>),
    /// Print this text on stdout and exit 0 (`-h`, `-V`, `-o help`).
    Print(String),
}

/// A command-line error: the message goes to stderr and the process exits with [`EXIT_USAGE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

fn err<T>(msg: impl Into<String>) -> Result<T, CliError> {
    Err(CliError(msg.into()))
}

/// C `atoi`: skip leading white space, optional sign, then decimal digits; 0 if none. Overflow
/// wraps like the usual glibc behaviour on long-to-int truncation.
pub fn atoi(s: &str) -> i32 {
    atol(s) as i32
}

/// C `atol` (64-bit long).
pub fn atol(s: &str) -> i64 {
    let s = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for b in digits.bytes() {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.wrapping_mul(10).wrapping_add(i64::from(b - b'0'));
    }
    if neg {
        v.wrapping_neg()
    } else {
        v
    }
}

/// `strtoll(s, &end, 0)`: base prefix detection (0x, 0); returns value and rest, or None when no
/// digits were consumed.
fn strtoll0(s: &str) -> Option<(i64, &str)> {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, body) = if (t.starts_with("0x") || t.starts_with("0X"))
        && t.as_bytes().get(2).is_some_and(|c| c.is_ascii_hexdigit())
    {
        (16, &t[2..])
    } else if t.starts_with('0') {
        (8, t)
    } else {
        (10, t)
    };
    let end = body
        .char_indices()
        .find(|(_, c)| !c.is_digit(radix))
        .map_or(body.len(), |(i, _)| i);
    if end == 0 {
        return None;
    }
    let mut v: i64 = 0;
    for c in body[..end].chars() {
        let d = i64::from(c.to_digit(radix).unwrap_or(0));
        v = v.saturating_mul(i64::from(radix)).saturating_add(d);
    }
    Some((if neg { -v } else { v }, &body[end..]))
}

/// gfs2-utils' `cvtnum`: a number with an optional unit suffix (b = blocks, s = sectors, k m g t p e).
pub fn cvtnum(blocksize: u32, s: &str) -> Option<i64> {
    let (i, rest) = strtoll0(s)?;
    let mult: i64 = match rest.to_ascii_lowercase().as_str() {
        "" => 1,
        "b" => i64::from(blocksize),
        "s" => 512,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        "e" => 1 << 60,
        _ => return None,
    };
    i.checked_mul(mult)
}

fn parse_ulong(bsize: u32, key: &str, val: Option<&str>, max: u64) -> Result<u64, CliError> {
    let val = match val {
        Some(v) if !v.is_empty() => v,
        _ => return err(format!("Missing argument to '{key}'")),
    };
    match cvtnum(bsize, val) {
        Some(l) if l >= 0 && (max == 0 || l as u64 <= max) => Ok(l as u64),
        _ => err(format!("Value of '{key}' is invalid")),
    }
}

/// The `-o help` text.
pub fn ext_opts_help() -> String {
    let items = [
        ("help", "Display this help, then exit"),
        (
            "swidth=N",
            "Specify the stripe width of the device, overriding probed values",
        ),
        (
            "sunit=N",
            "Specify the stripe unit of the device, overriding probed values",
        ),
        (
            "align=[0|1]",
            "Disable or enable alignment of resource groups",
        ),
        ("format=N", "Specify the format version number"),
    ];
    let mut s = String::from("Extended options:\n");
    for (k, d) in items {
        s.push_str(&format!("{k:>15}  {d:<22}\n"));
    }
    s
}

/// The `-h` text, laid out like gfs2-utils'.
pub fn usage(prog: &str) -> String {
    let items: [(&str, &str, &str); 15] = [
        ("-b", "<size>", "File system block size, in bytes"),
        ("-c", "<size>", "Size of quota change file, in megabytes"),
        ("-D", "", "Enable debugging code"),
        ("-h", "", "Display this help, then exit"),
        ("-J", "<size>", "Size of journals, in megabytes"),
        ("-j", "<number>", "Number of journals"),
        ("-K", "", "Don't try to discard unused blocks"),
        ("-O", "", "Don't ask for confirmation"),
        (
            "-o",
            "<key>[=<value>][,...]",
            "Specify extended options. See '-o help'.",
        ),
        ("-p", "<name>", "Name of the locking protocol"),
        ("-q", "", "Don't print anything"),
        ("-r", "<size>", "Size of resource groups, in megabytes"),
        ("-t", "<name>", "Name of the lock table"),
        ("-U", "<UUID>", "The UUID of the file system"),
        ("-V", "", "Display program version information, then exit"),
    ];
    let mut s = format!(
        "Usage:\n{prog} [options] <device> [size]\n\nCreate a gfs2 file system on a device. If a \
         size, in blocks, is not specified, the whole device will be used.\n\nOptions:\n"
    );
    for (o, p, d) in items {
        s.push_str(&format!("{o:>3} {p:<22} {d}\n"));
    }
    s
}

/// The `-V` text.
pub fn version() -> String {
    format!("mkfs.gfs2 (gfs2-fuse) {}\n", env!("CARGO_PKG_VERSION"))
}

fn parse_extended(s: &str, o: &mut Options) -> Result<Option<Action>, CliError> {
    for opt in s.split(',') {
        let mut kv = opt.splitn(3, '=');
        let key = kv.next().unwrap_or("");
        let val = kv.next();
        if key.is_empty() {
            return err("Missing argument to '-o' option");
        }
        match key {
            "sunit" => o.sunit = Some(parse_ulong(o.bsize, "sunit", val, 0)?),
            "swidth" => o.swidth = Some(parse_ulong(o.bsize, "swidth", val, 0)?),
            "align" => match val {
                Some("0") => o.align = false,
                Some("1") => o.align = true,
                _ => return err("Option 'align' must be either 1 or 0"),
            },
            "test_topology" => {
                let parts: Vec<&str> = val.unwrap_or("").split(':').collect();
                if parts.len() > 5 {
                    return err("Too many topology values.");
                }
                let mut v = [0u64; 5];
                for (i, p) in parts.iter().enumerate() {
                    v[i] = parse_ulong(o.bsize, "test_topology", Some(p), 0)?;
                }
                if parts.len() < 5 {
                    return err("Too few topology values.");
                }
                o.test_topology = Some(Topology {
                    alignment_offset: v[0],
                    logical_sector_size: v[1],
                    minimum_io_size: v[2],
                    optimal_io_size: v[3],
                    physical_sector_size: v[4],
                })
                .filter(|t| t.logical_sector_size != 0 && t.physical_sector_size != 0);
            }
            "format" => {
                let n = parse_ulong(o.bsize, "format", val, FS_FORMAT_MAX)?;
                if n < FS_FORMAT_MIN {
                    return err(format!("Invalid filesystem format: {}", val.unwrap_or("")));
                }
                o.format = n as u32;
            }
            "root_inherit_jdata" => {
                o.root_inherit_jdata = match val {
                    None => true,
                    Some(v) => parse_ulong(o.bsize, "root_inherit_jdata", Some(v), 1)? == 1,
                }
            }
            "help" => return Ok(Some(Action::Print(ext_opts_help()))),
            _ => {
                return err(format!(
                    "Invalid extended option (specified with -o): '{key}'\n{}",
                    ext_opts_help().trim_end()
                ))
            }
        }
    }
    Ok(None)
}

/// Parse `argv` (including the program name) the way gfs2-utils' getopt loop does.
pub fn parse(argv: &[String]) -> Result<Action, CliError> {
    let prog = argv.first().map_or("mkfs.gfs2", String::as_str);
    let mut o = Options::default();
    let mut got_device = false;
    let mut i = 1;
    let mut only_words = false;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        if only_words || arg == "-" || !arg.starts_with('-') {
            if arg == "gfs2" {
                continue;
            }
            if !got_device {
                o.device = Some(arg.clone());
                got_device = true;
            } else if o.fssize.is_none() && arg.as_bytes().first().is_some_and(u8::is_ascii_digit) {
                o.fssize = Some(atol(arg) as u64);
            } else {
                return err("More than one device specified (try -h for help)");
            }
            continue;
        }
        if arg == "--" {
            only_words = true;
            continue;
        }
        let flags = &arg[1..];
        for (pos, c) in flags.char_indices() {
            let takes_arg = matches!(c, 'b' | 'c' | 'J' | 'j' | 'o' | 'p' | 'r' | 't' | 'U');
            if takes_arg {
                let rest = &flags[pos + c.len_utf8()..];
                let val = if !rest.is_empty() {
                    rest.to_string()
                } else if i < argv.len() {
                    i += 1;
                    argv[i - 1].clone()
                } else {
                    return err(format!(
                        "{prog}: option requires an argument -- '{c}'\nPlease use '-h' for help."
                    ));
                };
                match c {
                    'b' => {
                        o.bsize = atoi(&val) as u32;
                        o.got_bsize = true;
                    }
                    'c' => o.qcsize = atoi(&val) as u32,
                    'J' => {
                        o.jsize = atoi(&val) as u32;
                        o.got_jsize = true;
                    }
                    'j' => o.journals = atoi(&val),
                    'p' => o.lockproto = val,
                    't' => {
                        o.locktable = val;
                        o.got_locktable = true;
                    }
                    'r' => o.rgsize = atoi(&val) as u32,
                    'U' => o.uuid = Some(val),
                    'o' => {
                        if let Some(a) = parse_extended(&val, &mut o)? {
                            return Ok(a);
                        }
                    }
                    _ => {}
                }
                break;
            }
            match c {
                'D' => o.debug = true,
                'h' => return Ok(Action::Print(usage(prog))),
                'K' => o.discard = false,
                'O' => o.override_confirm = true,
                'q' => o.quiet = true,
                'V' => return Ok(Action::Print(version())),
                _ => {
                    return err(format!(
                        "{prog}: invalid option -- '{c}'\nPlease use '-h' for help."
                    ))
                }
            }
        }
    }
    check(&o)?;
    Ok(Action::Run(Box::new(o)))
}

/// Validate a lock protocol and table as gfs2-utils' `test_locking` does.
pub fn check_locking(proto: &str, table: &str, got_table: bool) -> Result<(), CliError> {
    let required = proto == "lock_gulm" || proto == "lock_dlm";
    if proto != "lock_nolock" && !required {
        return err(format!("Invalid lock protocol: {proto}"));
    }
    if !got_table {
        if required {
            return err("No lock table specified.");
        }
        return Ok(());
    }
    if table.is_empty() {
        return err("Lock table is empty.");
    }
    const P: &str = "Invalid lock table:";
    if let Some(c) = table
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == ':'))
    {
        return err(format!("{P} invalid character '{c}'"));
    }
    let Some(colon) = table.find(':') else {
        return err(format!("{P} missing colon"));
    };
    if colon == 0 {
        return err(format!("{P} cluster name is missing"));
    }
    if colon > 32 {
        return err(format!("{P} cluster name is too long"));
    }
    let fs = &table[colon + 1..];
    if fs.contains(':') {
        return err(format!("{P} contains more than one colon"));
    }
    if fs.is_empty() {
        return err(format!("{P} file system name is missing"));
    }
    if fs.len() > 30 {
        return err(format!("{P} file system name is too long"));
    }
    Ok(())
}

/// The checks gfs2-utils makes before opening the device (`opts_check`), in the same order.
pub fn check(o: &Options) -> Result<(), CliError> {
    if o.device.is_none() {
        return err("No device specified. Use -h for help");
    }
    check_locking(&o.lockproto, &o.locktable, o.got_locktable)?;
    if !(MIN_RGSIZE..=MAX_RGSIZE).contains(&o.rgsize) {
        return err(format!(
            "Bad resource group size {} (must be {MIN_RGSIZE}..{MAX_RGSIZE} MB)",
            o.rgsize
        ));
    }
    if o.journals == 0 {
        return err("No journals specified");
    }
    if o.journals < 0 {
        return err(format!(
            "Number of journals cannot be negative: {}",
            o.journals
        ));
    }
    if !(MIN_JSIZE..=MAX_JSIZE).contains(&o.jsize) {
        return err(format!(
            "Bad journal size {} (must be {MIN_JSIZE}..{MAX_JSIZE} MB)",
            o.jsize
        ));
    }
    if o.qcsize == 0 || o.qcsize > 64 {
        return err(format!(
            "Bad quota change size {} (must be 1..64 MB)",
            o.qcsize
        ));
    }
    if o.sunit.is_some() != o.swidth.is_some() {
        return err("Stripe unit and stripe width must be specified together");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Action, CliError> {
        let mut v = vec!["mkfs.gfs2".to_string()];
        v.extend(args.iter().map(|s| s.to_string()));
        parse(&v)
    }

    fn run(args: &[&str]) -> Options {
        match p(args) {
            Ok(Action::Run(o)) => *o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn glued_and_separate_arguments() {
        let o = run(&["-Oqj3", "-J", "16", "-plock_nolock", "/tmp/x", "1000"]);
        assert_eq!(o.journals, 3);
        assert_eq!(o.jsize, 16);
        assert!(o.quiet && o.override_confirm);
        assert_eq!(o.device.as_deref(), Some("/tmp/x"));
        assert_eq!(o.fssize, Some(1000));
    }

    #[test]
    fn atoi_like_c() {
        assert_eq!(atoi("  12abc"), 12);
        assert_eq!(atoi("x"), 0);
        assert_eq!(atoi("-4"), -4);
    }

    #[test]
    fn cvtnum_units() {
        assert_eq!(cvtnum(4096, "2b"), Some(8192));
        assert_eq!(cvtnum(4096, "1k"), Some(1024));
        assert_eq!(cvtnum(4096, "0x10"), Some(16));
        assert_eq!(cvtnum(4096, "1q"), None);
    }

    #[test]
    fn rejects() {
        for a in [
            &["-p", "lock_foo", "/d"][..],
            &["/d"],
            &["-p", "lock_nolock", "-r", "31", "/d"],
            &["-p", "lock_nolock", "-J", "1025", "/d"],
            &["-p", "lock_nolock", "-c", "65", "/d"],
            &["-p", "lock_nolock", "-o", "format=1803", "/d"],
            &["-p", "lock_dlm", "-t", "a:b:c", "/d"],
            &["-p", "lock_nolock", "-j", "0", "/d"],
            &["-p", "lock_nolock", "-o", "bogus", "/d"],
            &["-p", "lock_nolock", "/d", "/e"],
            &["-Z", "/d"],
        ] {
            assert!(p(a).is_err(), "{a:?}");
        }
    }
}
