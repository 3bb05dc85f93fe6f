//! The command lines of `gfs2-fuse savemeta` and `gfs2-fuse restoremeta`,
//! with gfs2_edit's messages on stdout and progress on stderr.
//!
//! Exit codes: 0 done, 1 failed (the reason on stderr), 2 bad usage.

use std::path::Path;

use super::format::{self, Reader};
use super::{restore, save};
use crate::dev::{claim::Claimant, spec};

const SAVE_USAGE: &str = concat!(
    "usage: gfs2-fuse savemeta [-z LEVEL] [-q] DEVICE FILE\n",
    "Save the metadata of the GFS2 filesystem on DEVICE (no user data) to FILE in\n",
    "gfs2_edit's savemeta format: what `gfs2_edit restoremeta` and\n",
    "`gfs2-fuse restoremeta` read.\n",
    "  -z LEVEL  gzip level 1-9 (default 9), 0 for an uncompressed file\n",
    "  -q        no progress lines on stderr\n",
    "DEVICE is an image, a block device or a network disk (see gfs2-fuse --help).\n",
    "Exit: 0 saved, 1 failed, 2 bad usage."
);

const RESTORE_USAGE: &str = concat!(
    "usage: gfs2-fuse restoremeta [-q] FILE DEVICE\n",
    "Write the metadata saved in FILE (gfs2_edit's savemeta format, gzip, bzip2 or\n",
    "uncompressed) onto DEVICE, which must hold the saved filesystem's size (make an\n",
    "image with `truncate -s SIZE IMG` first). Blocks not in FILE are left as they are.\n",
    "  -q        no progress lines on stderr\n",
    "Exit: 0 restored, 1 failed, 2 bad usage."
);

fn usage_exit(usage: &str, msg: Option<&str>) -> ! {
    match msg {
        Some(m) => {
            eprintln!("{m}\n{usage}");
            std::process::exit(2)
        }
        None => {
            println!("{usage}");
            std::process::exit(0)
        }
    }
}

fn fail(cmd: &str, msg: impl std::fmt::Display) -> ! {
    eprintln!("gfs2-fuse {cmd}: {msg}");
    std::process::exit(1)
}

fn info(s: String) {
    println!("{s}");
}

/// `gfs2-fuse savemeta [-z LEVEL] [-q] DEVICE FILE`.
pub fn savemeta_main(args: &[String]) -> ! {
    let mut level = 9u32;
    let mut progress = true;
    let mut pos = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => usage_exit(SAVE_USAGE, None),
            "-q" => progress = false,
            "-z" => {
                let v = it
                    .next()
                    .unwrap_or_else(|| usage_exit(SAVE_USAGE, Some("-z needs a level")));
                level = parse_level(v);
            }
            s if s.starts_with("-z") => level = parse_level(&s[2..]),
            s if s.starts_with('-') && s.len() > 1 => {
                usage_exit(SAVE_USAGE, Some(&format!("unknown flag {s}")))
            }
            _ => pos.push(a.clone()),
        }
    }
    let [device, file] = pos.as_slice() else {
        usage_exit(SAVE_USAGE, Some("savemeta takes a DEVICE and a FILE"));
    };
    let dev =
        spec::open(device, true).unwrap_or_else(|e| fail("savemeta", format!("{device}: {e}")));
    let out = format::create_output(Path::new(file)).unwrap_or_else(|e| fail("savemeta", e));
    let opts = save::SaveOptions { level, progress };
    match save::savemeta(&*dev, out, opts, &mut info) {
        Ok((_, _)) => {
            if level > 0 {
                println!("\nMetadata saved to file {file} (gzipped, level {level}).");
            } else {
                println!("\nMetadata saved to file {file} (uncompressed).");
            }
            std::process::exit(0)
        }
        Err(e) => fail("savemeta", e),
    }
}

fn parse_level(v: &str) -> u32 {
    match v.parse::<u32>() {
        Ok(l) if l <= 9 => l,
        _ => usage_exit(
            SAVE_USAGE,
            Some(&format!("compression level {v:?} is not in 0-9")),
        ),
    }
}

/// `gfs2-fuse restoremeta [-q] FILE DEVICE`.
pub fn restoremeta_main(args: &[String]) -> ! {
    let mut progress = true;
    let mut pos = Vec::new();
    for a in args {
        match a.as_str() {
            "-h" | "--help" => usage_exit(RESTORE_USAGE, None),
            "-q" => progress = false,
            s if s.starts_with('-') && s.len() > 1 => {
                usage_exit(RESTORE_USAGE, Some(&format!("unknown flag {s}")))
            }
            _ => pos.push(a.clone()),
        }
    }
    let [file, device] = pos.as_slice() else {
        usage_exit(RESTORE_USAGE, Some("restoremeta takes a FILE and a DEVICE"));
    };
    let reader = Reader::open(Path::new(file)).unwrap_or_else(|e| fail("restoremeta", e));
    match reader.header() {
        Some(h) => {
            info(format!("Metadata saved at {}", format_time(h.time)));
            info(format!(
                "File system size {:.2}GB",
                h.fs_bytes as f64 / f64::from(1u32 << 30)
            ));
        }
        None => info("No valid file header found. Falling back to old format...".into()),
    }
    let dev =
        spec::open(device, false).unwrap_or_else(|e| fail("restoremeta", format!("{device}: {e}")));
    if let Err(e) = dev.claim(Claimant::Tool) {
        fail("restoremeta", format!("{device}: {e}"));
    }
    match restore::restoremeta(reader, &*dev, progress, &mut info) {
        Ok(_) => {
            dev.release();
            println!("File {file} restore successful.");
            std::process::exit(0)
        }
        Err(e) => {
            dev.release();
            eprintln!("File {file} restore error.");
            fail("restoremeta", e)
        }
    }
}

/// A time as `ctime(3)` writes it, in UTC.
fn format_time(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {} UTC",
        WD[(days % 7) as usize],
        MO[(m - 1) as usize],
        d,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        y
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn ctime_like() {
        assert_eq!(super::format_time(0), "Thu Jan  1 00:00:00 1970 UTC");
        assert_eq!(
            super::format_time(951_782_400),
            "Tue Feb 29 00:00:00 2000 UTC"
        );
    }
}
