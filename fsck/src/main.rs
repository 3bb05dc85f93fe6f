use gfs2_fsck::check::{check_not_mounted, Fsck};
use gfs2_fsck::cli::{self, Action, Mode};
use gfs2fuse::dev::claim::{Claim, Claimant};
use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let prog = args
        .first()
        .map(|p| {
            Path::new(p)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_else(|| "fsck.gfs2".into());
    let o = match cli::parse(args.get(1..).unwrap_or(&[])) {
        Ok(Action::Run(o)) => o,
        Ok(Action::Help) => {
            print!("{}", cli::usage(&prog));
            std::process::exit(0);
        }
        Ok(Action::Version) => {
            print!("{}", cli::version());
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("{}", e.0);
            std::process::exit(16);
        }
    };
    let read_only = o.mode == Mode::No;
    if let Err(e) = check_not_mounted(Path::new(&o.device), read_only) {
        eprintln!("{e}: not checking a mounted filesystem");
        std::process::exit(8);
    }
    // A repairing check owns the device for its whole run, as a
    // lock_nolock node does: neither writes under the other. gfs2-utils
    // refuses a busy device with exit 16 too.
    let _claim = match gfs2fuse::dev::spec::parse(&o.device) {
        Ok(gfs2fuse::dev::spec::Spec::Path(p)) if !read_only => {
            match Claim::take(&p, Claimant::Tool) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("Device {} is busy: {e}", o.device);
                    std::process::exit(16);
                }
            }
        }
        _ => None,
    };
    let t0 = Instant::now();
    let mut f = match Fsck::open(&o) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fsck.gfs2: cannot open {}: {}", o.device, e.0);
            std::process::exit(8);
        }
    };
    let res = f.run();
    if let Err(e) = res {
        // Repairs made so far stay unwritten: half of them could leave the
        // filesystem less consistent than it was.
        eprintln!("fsck.gfs2: {}", e.0);
        std::process::exit(8);
    }
    let r = &f.r;
    if o.verbosity >= 0 {
        eprintln!(
            "fsck.gfs2 complete in {:.3}s: {} problems found, {} fixed, {} left",
            t0.elapsed().as_secs_f64(),
            r.found,
            r.fixed,
            r.left
        );
    }
    std::process::exit(r.status());
}
