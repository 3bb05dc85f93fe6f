//! The command lines of `gfs2_grow` and `gfs2_jadd`, as gfs2-utils 3.5
//! parses them: the same options, the same messages on the same streams,
//! the same exit statuses (1 for every command-line error, 0 after `-h`
//! and `-V`). Options act in command-line order as getopt returns them, so
//! `-T` prints its line before a later bad option ends the run.

use crate::getopt::{atoi, getopt, Opt};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

/// gfs2-utils' version line suffix and copyright line.
pub const VERSION: &str = "3.5.0";
pub const COPYRIGHT: &str = "Copyright (C) Red Hat, Inc.  2004-2023  All rights reserved.";

/// Print this and exit with this status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

impl Exit {
    /// Print both parts (stdout first, flushed, as gfs2-utils' tools leave
    /// them) and give the exit status.
    pub fn report(&self) -> std::process::ExitCode {
        use std::io::Write;
        print!("{}", self.stdout);
        let _ = std::io::stdout().flush();
        eprint!("{}", self.stderr);
        std::process::ExitCode::from(self.code)
    }
}

fn options_table(rows: &[(&str, Option<&str>, &str)]) -> String {
    rows.iter()
        .map(|(o, p, d)| format!("{o:>3} {:<15} {d}\n", p.unwrap_or("")))
        .collect()
}

/// `gfs2_grow`'s settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrowOptions {
    /// `-T`: compute and report, write nothing.
    pub test: bool,
    /// gfs2-utils' print level: 5 (notice) by default, `-q` lowers it,
    /// `-v` raises it; notices need 5, details 6.
    pub level: i32,
    /// `-D MB`: take the device to be this big (for trying sizes with -T).
    pub device_bytes: Option<u64>,
    pub devices: Vec<OsString>,
    /// What the options printed already (the `-T` line).
    pub printed: String,
}

pub fn grow_usage() -> String {
    format!(
        "Usage:\n    gfs2_grow [options] <device>\n\nExpands a GFS2 file system after the device containing the file system has been expanded\n\nOptions:\n{}",
        options_table(&[
            ("-h", None, "Display this usage information"),
            ("-q", None, "Quiet, reduce verbosity"),
            ("-T", None, "Do everything except update file system"),
            ("-V", None, "Display version information"),
            ("-v", None, "Increase verbosity"),
        ])
    )
}

pub fn parse_grow(argv: &[OsString]) -> Result<GrowOptions, Exit> {
    let argv0 = argv
        .first()
        .map(|a| String::from_utf8_lossy(a.as_bytes()).into_owned())
        .unwrap_or_else(|| "gfs2_grow".into());
    let (opts, operands) = getopt(argv, "VD:hqTv?");
    let mut o = GrowOptions {
        test: false,
        level: 5,
        device_bytes: None,
        devices: operands,
        printed: String::new(),
    };
    for opt in opts {
        match opt {
            Opt::Flag(b'D', a) => {
                let mb = atoi(a.as_deref().unwrap_or(b"")) as i64 as u64;
                o.device_bytes = Some(mb << 20);
            }
            Opt::Flag(b'V', _) => {
                return Err(Exit {
                    stdout: format!("{}{argv0} {VERSION}\n{COPYRIGHT}\n", o.printed),
                    stderr: String::new(),
                    code: 0,
                })
            }
            Opt::Flag(b'h', _) => {
                return Err(Exit {
                    stdout: format!("{}{}", o.printed, grow_usage()),
                    stderr: String::new(),
                    code: 0,
                })
            }
            Opt::Flag(b'q', _) => o.level -= 1,
            Opt::Flag(b'v', _) => o.level += 1,
            Opt::Flag(b'T', _) => {
                o.printed
                    .push_str("(Test mode - file system will not be changed)\n");
                o.test = true;
            }
            Opt::Flag(_, _) | Opt::Error(_) => {
                let msg = match opt {
                    Opt::Error(m) => m,
                    _ => String::new(),
                };
                return Err(Exit {
                    stdout: o.printed,
                    stderr: format!("{msg}Please use '-h' for help.\n"),
                    code: 1,
                });
            }
        }
    }
    if o.devices.is_empty() {
        return Err(Exit {
            stdout: format!("{}{}", o.printed, grow_usage()),
            stderr: String::new(),
            code: 1,
        });
    }
    Ok(o)
}

/// `gfs2_jadd`'s settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JaddOptions {
    /// `-c`: quota change file size in MB (default 1).
    pub qcsize_mb: u32,
    /// `-J`: journal size in MB (default 128, 32..1024).
    pub jsize_mb: u32,
    /// `-j`: how many journals to add (default 1).
    pub journals: u32,
    pub quiet: bool,
    pub debug: bool,
    pub path: OsString,
    /// What `-D` printed already.
    pub printed: String,
}

pub fn jadd_usage(argv0: &str) -> String {
    format!(
        "Usage:\n{argv0} [options] <device>\n\nAdds journals to a GFS2 file system.\n\nOptions:\n{}",
        options_table(&[
            ("-c", Some("<size>"), "Size of quota change file, in megabytes"),
            ("-D", None, "Enable debugging code"),
            ("-h", None, "Display this help, then exit"),
            ("-J", Some("<size>"), "Size of journals, in megabytes"),
            ("-j", Some("<number>"), "Number of journals"),
            ("-q", None, "Don't print anything"),
            ("-V", None, "Display version information, then exit"),
        ])
    )
}

pub fn parse_jadd(argv: &[OsString]) -> Result<JaddOptions, Exit> {
    let argv0 = argv
        .first()
        .map(|a| String::from_utf8_lossy(a.as_bytes()).into_owned())
        .unwrap_or_else(|| "gfs2_jadd".into());
    let fail = |stderr: String| Exit {
        stdout: String::new(),
        stderr,
        code: 1,
    };
    let (opts, operands) = getopt(argv, "c:DhJ:j:qu:V");
    let mut o = JaddOptions {
        qcsize_mb: 1,
        jsize_mb: 128,
        journals: 1,
        quiet: false,
        debug: false,
        path: OsString::new(),
        printed: String::new(),
    };
    let num = |a: Option<Vec<u8>>| atoi(a.as_deref().unwrap_or(b"")) as u32;
    for opt in opts {
        match opt {
            Opt::Flag(b'c', a) => o.qcsize_mb = num(a),
            Opt::Flag(b'D', _) => o.debug = true,
            Opt::Flag(b'h', _) => {
                return Err(Exit {
                    stdout: jadd_usage(&argv0),
                    stderr: String::new(),
                    code: 0,
                })
            }
            Opt::Flag(b'J', a) => o.jsize_mb = num(a),
            Opt::Flag(b'j', a) => o.journals = num(a),
            Opt::Flag(b'q', _) => o.quiet = true,
            Opt::Flag(b'V', _) => {
                return Err(Exit {
                    stdout: format!("gfs2_jadd {VERSION}\n{COPYRIGHT}\n"),
                    stderr: String::new(),
                    code: 0,
                })
            }
            Opt::Error(m) => return Err(fail(format!("{m}Please use '-h' for help.\n"))),
            Opt::Flag(c, _) => return Err(fail(format!("Invalid option: {}\n", c as char))),
        }
    }
    let mut ops = operands.into_iter();
    match ops.next() {
        Some(p) => o.path = p,
        None => return Err(fail("no path specified (try -h for help)\n".into())),
    }
    if let Some(extra) = ops.next() {
        return Err(fail(format!(
            "Unrecognized argument: {}\n",
            String::from_utf8_lossy(extra.as_bytes())
        )));
    }
    if o.debug {
        // gfs2-utils prints its (unset, so 0) superblock journal count here.
        o.printed = format!(
            "Command line arguments:\n  qcsize = {}\n  jsize = {}\n  journals = 0\n  quiet = {}\n  path = {}\n",
            o.qcsize_mb,
            o.jsize_mb,
            u32::from(o.quiet),
            String::from_utf8_lossy(o.path.as_bytes())
        );
    }
    let verify = if o.journals == 0 {
        Some("no journals specified\n")
    } else if !(32..=1024).contains(&o.jsize_mb) {
        Some("bad journal size\n")
    } else if o.qcsize_mb == 0 || o.qcsize_mb > 64 {
        Some("bad quota change size\n")
    } else {
        None
    };
    if let Some(m) = verify {
        return Err(Exit {
            stdout: o.printed,
            stderr: m.into(),
            code: 1,
        });
    }
    Ok(o)
}
