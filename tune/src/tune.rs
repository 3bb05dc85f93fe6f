//! The superblock edits, each with gfs2-utils' checks, messages and exit
//! statuses. They work on the superblock as read from the device and touch
//! only the fields they are about, so the block writes back otherwise
//! byte-identical.

use gfs2_ondisk::consts::{format, LOCKNAME_LEN, MAGIC};
use gfs2_ondisk::sb::Superblock;

use crate::EX_DATAERR;

/// Byte offset of the superblock: `GFS2_SB_ADDR` (128) basic blocks of 512.
pub const SB_OFFSET: u64 = 128 << 9;
/// How much gfs2-utils reads and writes back: `LGFS2_DEFAULT_BSIZE`.
pub const SB_READ: usize = 4096;

/// A refusal: the message for stderr (if any) and the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub msg: Option<String>,
    pub code: u8,
}

fn data_err(msg: String) -> Refusal {
    Refusal {
        msg: Some(msg),
        code: EX_DATAERR,
    }
}

/// A superblock being edited, with the block it came from.
pub struct SbEdit {
    pub block: Vec<u8>,
    pub sb: Superblock,
}

impl SbEdit {
    /// Take the superblock from the start of `block`. `None` unless it has
    /// the GFS2 magic: like gfs2-utils only the magic is checked, so a
    /// filesystem with other damage can still be listed and repaired.
    pub fn from_block(mut block: Vec<u8>) -> Option<SbEdit> {
        if block.len() < Superblock::SIZE {
            block.resize(Superblock::SIZE, 0);
        }
        let mut sb = Superblock::parse(&block).ok()?;
        if sb.header.magic != MAGIC {
            return None;
        }
        // gfs2-utils terminates both names so that printing them cannot run
        // past the field; the terminated field is what it writes back.
        sb.lockproto[LOCKNAME_LEN - 1] = 0;
        sb.locktable[LOCKNAME_LEN - 1] = 0;
        Some(SbEdit { block, sb })
    }

    /// The block with the edited superblock in place.
    pub fn to_block(&self) -> Result<Vec<u8>, String> {
        let mut b = self.block.clone();
        self.sb
            .write(&mut b)
            .map_err(|e| format!("encoding the superblock: {e}"))?;
        Ok(b)
    }

    /// `-U`: libuuid's uuid_parse fails without a message, and gfs2-utils
    /// returns its -1 as the exit status (255).
    pub fn change_uuid(&mut self, s: &[u8]) -> Result<(), Refusal> {
        match parse_uuid(s) {
            Some(u) => {
                self.sb.uuid = u;
                Ok(())
            }
            None => Err(Refusal {
                msg: None,
                code: 255,
            }),
        }
    }

    /// `-o lockproto=`: only names starting with lock_dlm or lock_nolock
    /// (gfs2-utils compares prefixes) and short enough for the field.
    pub fn change_lockproto(&mut self, p: &[u8]) -> Result<(), Refusal> {
        if p.len() >= LOCKNAME_LEN {
            return Err(data_err("Invalid lock protocol: too long".into()));
        }
        if !p.starts_with(b"lock_dlm") && !p.starts_with(b"lock_nolock") {
            return Err(data_err(format!(
                "Invalid lock protocol: {}",
                String::from_utf8_lossy(p)
            )));
        }
        self.sb.lockproto = [0; LOCKNAME_LEN];
        self.sb.lockproto[..p.len()].copy_from_slice(p);
        Ok(())
    }

    /// `-L` and `-o locktable=`: with lock_dlm (as set so far, including a
    /// lockproto change on the same command line) the table must be
    /// `cluster:fsname` with one colon and a name of at most 30 bytes. Like
    /// gfs2-utils' strcpy, the bytes after the new terminator are left as
    /// they were.
    pub fn change_locktable(&mut self, t: &[u8]) -> Result<(), Refusal> {
        let pre = "Invalid lock table:";
        if t.len() >= LOCKNAME_LEN {
            return Err(data_err(format!("{pre} too long")));
        }
        if cstr(&self.sb.lockproto) == b"lock_dlm" {
            let Some(colon) = t.iter().position(|c| *c == b':') else {
                return Err(data_err(format!("{pre} missing colon")));
            };
            let fsname = &t[colon + 1..];
            if fsname.len() > 30 {
                return Err(data_err(format!("{pre} file system name is too long")));
            }
            if fsname.contains(&b':') {
                return Err(data_err(format!("{pre} contains more than one colon")));
            }
        }
        self.sb.locktable[..t.len()].copy_from_slice(t);
        self.sb.locktable[t.len()] = 0;
        Ok(())
    }

    /// `-r`: a known format (1801 or 1802) and never lower than the
    /// current one; going back would hide features the filesystem may use.
    pub fn change_format(&mut self, f: &[u8]) -> Result<(), Refusal> {
        let invalid = || {
            data_err(format!(
                "Invalid format option '{}'",
                String::from_utf8_lossy(f)
            ))
        };
        let n = strtol(f).ok_or_else(invalid)?;
        if !(1801..=1802).contains(&n) {
            return Err(invalid());
        }
        let n = n as u32;
        if n < self.sb.fs_format {
            return Err(data_err(
                "Regressing the filesystem format is not supported".into(),
            ));
        }
        self.sb.fs_format = n;
        Ok(())
    }

    /// `-l`, in gfs2-utils' words and number formats (the block size and
    /// shift are printed as signed ints; the master inode only for 1802).
    pub fn listing(&self) -> Vec<u8> {
        let sb = &self.sb;
        let table = cstr(&sb.locktable);
        let mut out = Vec::new();
        let mut line = |label: &str, v: &[u8]| {
            out.extend_from_slice(label.as_bytes());
            out.extend_from_slice(v);
            out.push(b'\n');
        };
        line("File system volume name: ", table);
        line("File system UUID: ", unparse_uuid(&sb.uuid).as_bytes());
        line(
            "File system magic number: ",
            format!("0x{:X}", sb.header.magic).as_bytes(),
        );
        line(
            "File system format version: ",
            sb.fs_format.to_string().as_bytes(),
        );
        line("Block size: ", (sb.bsize as i32).to_string().as_bytes());
        line(
            "Block shift: ",
            (sb.bsize_shift as i32).to_string().as_bytes(),
        );
        line("Root inode: ", sb.root_dir.addr.to_string().as_bytes());
        if sb.fs_format == format::FS {
            line("Master inode: ", sb.master_dir.addr.to_string().as_bytes());
        }
        line("Lock protocol: ", cstr(&sb.lockproto));
        line("Lock table: ", table);
        out
    }
}

/// A NUL-padded name up to its first NUL.
fn cstr(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    &b[..end]
}

/// strtol(s, &end, 10) as gfs2-utils checks it: leading white space, a
/// sign, at least one digit, trailing garbage ignored; `None` for no digits
/// or a value out of `long`'s range.
fn strtol(s: &[u8]) -> Option<i64> {
    let mut i = 0;
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r') {
        i += 1;
    }
    let neg = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let start = i;
    let mut v: i64 = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        let d = i64::from(s[i] - b'0');
        v = v.checked_mul(10)?.checked_add(if neg { -d } else { d })?;
        i += 1;
    }
    (i > start).then_some(v)
}

/// libuuid's uuid_parse: exactly 36 characters, hyphens at 8, 13, 18 and
/// 23, hex digits (either case) elsewhere.
pub fn parse_uuid(s: &[u8]) -> Option<[u8; 16]> {
    if s.len() != 36 {
        return None;
    }
    let mut hex = Vec::with_capacity(32);
    for (i, c) in s.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if *c != b'-' {
                return None;
            }
        } else {
            hex.push((*c as char).to_digit(16)? as u8);
        }
    }
    let mut out = [0u8; 16];
    for (k, o) in out.iter_mut().enumerate() {
        *o = (hex[2 * k] << 4) | hex[2 * k + 1];
    }
    Some(out)
}

/// uuid_unparse: lower-case 8-4-4-4-12.
pub fn unparse_uuid(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_round_trip() {
        let s = b"e90815fc-087b-460c-b8a5-8edc8a2ed691";
        let u = parse_uuid(s).expect("valid uuid");
        assert_eq!(unparse_uuid(&u).as_bytes(), s);
        assert!(parse_uuid(b"E90815FC-087B-460C-B8A5-8EDC8A2ED691").is_some());
        assert!(parse_uuid(b"e90815fc087b-460c-b8a5-8edc8a2ed6910").is_none());
        assert!(parse_uuid(b"xyz").is_none());
    }

    #[test]
    fn strtol_rules() {
        assert_eq!(strtol(b" 1802abc"), Some(1802));
        assert_eq!(strtol(b"-5"), Some(-5));
        assert_eq!(strtol(b"abc"), None);
        assert_eq!(strtol(b""), None);
        assert_eq!(strtol(b"99999999999999999999"), None);
    }
}
