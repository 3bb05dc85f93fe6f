//! `gfs2_jadd`: add journals (and their per-node files) to a GFS2
//! filesystem.
//!
//! Exit status as gfs2-utils': 0 when done, 1 for command-line errors, 255
//! when the journals could not be added (no GFS2 at the path, the device in
//! use, too little space, a failure while adding).

use gfs2_grow::cli::{parse_jadd, JaddOptions};
use gfs2_grow::offline::{self, Target};
use gfs2_grow::online;
use gfs2_mkfs::plan::space_for_data;
use gfs2fuse::jadd::JournalSpec;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

fn fail(msg: &str) -> ExitCode {
    let _ = std::io::stdout().flush();
    eprintln!("{msg}");
    ExitCode::from(255)
}

fn main() -> ExitCode {
    offline::init_logging();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let o = match parse_jadd(&argv) {
        Ok(o) => o,
        Err(x) => return x.report(),
    };
    // The kernel's mounts are gfs2-utils' business.
    if online::kernel_mount(&o.path) {
        return fail(&format!(
            "gfs2_jadd: {}",
            online::delegate_to_gfs2_utils("gfs2_jadd")
        ));
    }
    print!("{}", o.printed);
    let name = String::from_utf8_lossy(o.path.as_bytes()).into_owned();
    if let Some(sock) = online::find(&o.path) {
        return jadd_online(&o, &name, &sock);
    }
    let dev = match offline::open(&o.path, false) {
        Ok(Target::Device(d)) => d,
        Ok(Target::NotGfs2) => return fail(&format!("{name}: not a mounted gfs2 file system")),
        Err(e) => return fail(&format!("Error looking up mount '{name}': {e}")),
    };
    let fs = match offline::mount(dev, false) {
        Ok(f) => f,
        Err(e) => return fail(&format!("{name}: {e}")),
    };
    let run = || -> Result<u32, String> {
        let st = fs.statfs().map_err(|e| e.to_string())?;
        let bsize = st.bsize;
        let orig = fs.journal_count().map_err(|e| e.to_string())?;
        if orig == 0 {
            return Err(
                "No journals found. Did you run mkfs.gfs2 correctly?\n: Invalid argument".into(),
            );
        }
        check_fit(&o, bsize, st.bfree)?;
        for _ in 0..o.journals {
            fs.add_journal(&spec(&o)).map_err(|e| e.to_string())?;
        }
        Ok(orig)
    };
    let r = run();
    let u = fs.unmount();
    gfs2_grow::killpoint::report();
    let orig = match r {
        Ok(n) => n,
        Err(e) => return fail(&e),
    };
    if let Err(e) = u {
        return fail(&format!("{name}: {e}"));
    }
    results(&o, &name, orig)
}

/// The journal gfs2-utils would make for these options.
fn spec(o: &JaddOptions) -> JournalSpec {
    JournalSpec {
        journal_bytes: u64::from(o.jsize_mb) << 20,
        quota_change_bytes: u64::from(o.qcsize_mb) << 20,
        first_sequence: offline::random_u64(),
    }
}

/// gfs2-utils' check that the journals fit in the free space.
fn check_fit(o: &JaddOptions, bsize: u32, avail: u64) -> Result<(), String> {
    let qc_bytes = u64::from(o.qcsize_mb) << 20;
    let j_bytes = u64::from(o.jsize_mb) << 20;
    let per_j = 2 + space_for_data(bsize, qc_bytes) + space_for_data(bsize, j_bytes);
    let total = u64::from(o.journals) * per_j;
    if total > avail {
        print!(
            "\nInsufficient space on the device to add {} {}MB journals ({}MB QC size)\n\n",
            o.journals, o.jsize_mb, o.qcsize_mb
        );
        println!("Required space  : {total:>10} blks ({per_j} blks per journal)");
        print!("Available space : {avail:>10} blks\n\n");
        return Err("Failed to add journals: No space left on device".into());
    }
    Ok(())
}

/// A filesystem gfs2-fuse has mounted: the daemon adds the journals.
fn jadd_online(o: &JaddOptions, name: &str, sock: &std::path::Path) -> ExitCode {
    let run = || -> Result<u32, String> {
        let (bsize, _, bfree) = online::statfs(&o.path)?;
        let info = online::info(sock)?;
        check_fit(o, bsize, bfree)?;
        for _ in 0..o.journals {
            online::jadd(sock, &spec(o))?;
        }
        Ok(info.journals)
    };
    match run() {
        Ok(orig) => results(o, name, orig),
        Err(e) => fail(&e),
    }
}

/// gfs2-utils' closing lines.
fn results(o: &JaddOptions, name: &str, orig: u32) -> ExitCode {
    if o.debug {
        println!();
    } else if o.quiet {
        return ExitCode::SUCCESS;
    }
    println!("Filesystem: {name}");
    println!("Old journals: {orig}");
    println!("New journals: {}", orig + o.journals);
    ExitCode::SUCCESS
}
