//! `tunegfs2` entry point, in gfs2-utils' order: parse, open, read the
//! superblock, apply every change (any refusal stops before a write), write
//! the superblock block once, then list.

use std::io::{self, Write};
use std::process::ExitCode;

use gfs2_tune::cli::{self, Action};
use gfs2_tune::tune::{SbEdit, SB_OFFSET, SB_READ};
use gfs2_tune::EX_IOERR;
use gfs2fuse::dev::claim::Claimant;
use gfs2fuse::dev::{spec, BlockDevice};

/// The C library's text for an error, as gfs2-utils prints it with
/// strerror/perror, falling back to our own message for errors that carry
/// no errno (a network device's protocol error, say).
fn strerror(e: &io::Error) -> String {
    match gfs2fuse::dev::errno_of(e) {
        Some(n) => {
            // SAFETY: strerror returns a pointer to a NUL-terminated string
            // that stays valid until the next strerror call on this thread;
            // it is copied at once.
            let p = unsafe { libc::strerror(n) };
            if p.is_null() {
                return e.to_string();
            }
            // SAFETY: non-null and NUL-terminated, see above.
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned()
        }
        None => e.to_string(),
    }
}

/// Open a local path the way gfs2-utils does, for its errno: the device
/// layer's open error names the path itself and keeps no errno, and
/// scripts match gfs2-utils' "Unable to open device X: strerror" line.
/// Network specs (nbd://...) are left to the device layer.
fn probe_local(dev: &std::ffi::OsStr, read_only: bool) -> io::Result<()> {
    match dev.to_str().map(spec::parse) {
        Some(Ok(spec::Spec::Path(_))) | None => std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(dev)
            .map(drop),
        _ => Ok(()),
    }
}

/// One superblock change, as applied to its command-line argument.
type Step = fn(&mut SbEdit, &[u8]) -> Result<(), gfs2_tune::tune::Refusal>;

fn fail(msg: &str, code: u8) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(code)
}

/// Read what gfs2-utils reads: 4096 bytes at the superblock. A device that
/// ends sooner gives what it has, zero-filled, so that an empty or tiny
/// device is reported as holding no filesystem rather than as an I/O error
/// (gfs2-utils' pread returns short there too).
fn read_sb_block(dev: &dyn BlockDevice) -> io::Result<Vec<u8>> {
    let mut block = vec![0u8; SB_READ];
    match dev.read_at(&mut block, SB_OFFSET) {
        Ok(()) => Ok(block),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            let have = dev.size().saturating_sub(SB_OFFSET).min(SB_READ as u64) as usize;
            block.fill(0);
            if have > 0 {
                dev.read_at(&mut block[..have], SB_OFFSET)?;
            }
            Ok(block)
        }
        Err(e) => Err(e),
    }
}

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let o = match cli::parse(&argv) {
        Action::Run(o) => o,
        Action::Exit {
            stdout,
            stderr,
            code,
        } => {
            eprint!("{stderr}");
            print!("{stdout}");
            let _ = io::stdout().flush();
            return ExitCode::from(code);
        }
    };
    let name = o.device.to_string_lossy().into_owned();
    // -l anywhere opens read-only, as gfs2-utils does; a change requested
    // with it then fails at the write, as there.
    if let Err(e) = probe_local(&o.device, o.list) {
        return fail(
            &format!("Unable to open device {name}: {}", strerror(&e)),
            EX_IOERR,
        );
    }
    let dev = match spec::open_os(&o.device, o.list) {
        Ok(d) => d,
        Err(e) => {
            return fail(
                &format!("Unable to open device {name}: {}", strerror(&e)),
                EX_IOERR,
            )
        }
    };
    // gfs2-utils opens O_EXCL for writing so that a mounted filesystem is
    // refused; the claim is ours (a kernel mount, a gfs2-fuse node, mkfs
    // or fsck all hold or check it).
    if !o.list {
        if let Err(e) = dev.claim(Claimant::Tool) {
            // gfs2-utils' line first (scripts match it), then who holds
            // the device, which gfs2-utils cannot say.
            return fail(
                &format!("Unable to open device {name}: {}\n{e}", strerror(&e)),
                EX_IOERR,
            );
        }
    }
    let block = match read_sb_block(&*dev) {
        Ok(b) => b,
        Err(e) => return fail(&format!("read_super: pread: {}", strerror(&e)), EX_IOERR),
    };
    let Some(mut ed) = SbEdit::from_block(block) else {
        return fail(
            "Device does not contain a GFS or GFS2 file system",
            EX_IOERR,
        );
    };
    // gfs2-utils' order, which matters: a lockproto change decides how the
    // lock table is checked.
    let steps: [(&Option<Vec<u8>>, Step); 5] = [
        (&o.uuid, SbEdit::change_uuid),
        (&o.lockproto, SbEdit::change_lockproto),
        (&o.label, SbEdit::change_locktable),
        (&o.locktable, SbEdit::change_locktable),
        (&o.format, SbEdit::change_format),
    ];
    for (arg, step) in steps {
        if let Some(a) = arg {
            if let Err(r) = step(&mut ed, a) {
                if let Some(m) = r.msg {
                    eprintln!("{m}");
                }
                return ExitCode::from(r.code);
            }
        }
    }
    if o.changes() {
        if o.list {
            return fail("write_super: pwrite: Bad file descriptor", EX_IOERR);
        }
        let block = match ed.to_block() {
            Ok(b) => b,
            Err(e) => return fail(&format!("write_super: {e}"), EX_IOERR),
        };
        // Only the superblock's own block: for block sizes under 4096 the
        // rest of what was read belongs to other metadata.
        let bsize = ed.sb.bsize as usize;
        let len = if (512..=SB_READ).contains(&bsize) && bsize.is_power_of_two() {
            bsize
        } else {
            gfs2_ondisk::sb::Superblock::SIZE
        };
        if let Err(e) = dev
            .write_at(&block[..len], SB_OFFSET)
            .and_then(|()| dev.flush())
        {
            return fail(&format!("write_super: pwrite: {}", strerror(&e)), EX_IOERR);
        }
    }
    if o.list {
        let mut out = io::stdout().lock();
        if let Err(e) = out.write_all(&ed.listing()).and_then(|()| out.flush()) {
            return fail(&format!("tunegfs2: writing the listing: {e}"), EX_IOERR);
        }
    }
    dev.release();
    ExitCode::SUCCESS
}
