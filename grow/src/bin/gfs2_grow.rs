//! `gfs2_grow`: extend a GFS2 filesystem over the rest of its device.
//!
//! Exit status as gfs2-utils': 0 when done (also for a path that holds no
//! GFS2, which is reported and skipped), 1 for command-line errors and a
//! path that cannot be reached or changed, 255 when a filesystem could not
//! grow (too little new space, or a failure while growing).

use gfs2_grow::cli::{parse_grow, GrowOptions};
use gfs2_grow::newrgrps;
use gfs2_grow::offline::{self, Target};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

/// Outcome of one device.
enum Done {
    Ok,
    /// gfs2-utils' `error = -1`: reported, later devices still run.
    Failed,
    /// gfs2-utils' `exit(EXIT_FAILURE)`.
    Exit(u8),
}

fn grow_one(o: &GrowOptions, path: &std::ffi::OsStr) -> Done {
    let name = String::from_utf8_lossy(path.as_bytes()).into_owned();
    let dev = match offline::open(path, o.test) {
        Ok(Target::Device(d)) => d,
        Ok(Target::NotGfs2) => {
            eprintln!("{name}: not a mounted gfs2 file system");
            return Done::Ok;
        }
        Err(e) => {
            eprintln!("Error looking up mount '{name}': {e}");
            return Done::Exit(1);
        }
    };
    let fs = match offline::mount(dev.clone(), o.test) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{name}: {e}");
            return Done::Exit(1);
        }
    };
    let bsize = fs.superblock().bsize;
    let real_blocks = dev.size() / u64::from(bsize);
    let dev_blocks = match o.device_bytes {
        Some(b) => {
            let want = b / u64::from(bsize);
            if want > real_blocks && !o.test {
                eprintln!(
                    "{name}: -D {}MB is larger than the device ({}MB)",
                    b >> 20,
                    (real_blocks * u64::from(bsize)) >> 20
                );
                let _ = fs.unmount();
                return Done::Exit(1);
            }
            want
        }
        None => real_blocks,
    };
    let Some(plan) = newrgrps::plan(bsize, &fs.rindex(), dev_blocks) else {
        if o.level >= 3 {
            eprintln!("The calculated resource group size is too small.");
            eprintln!("{name} has not grown.");
        }
        let _ = fs.unmount();
        return Done::Failed;
    };
    if o.level >= 5 {
        println!("Mount point: (not mounted)");
        println!("Device: {name}");
        println!("Size: {} blocks", plan.start);
        println!("Length: {} blocks", plan.dev_blocks);
        println!("The file system will grow by {}MB.", plan.growth_mb(bsize));
    }
    let mut result = Done::Ok;
    if !o.test {
        if let Err(e) = newrgrps::write(dev.as_ref(), bsize, &plan) {
            eprintln!("Failed to write resource group: {}", offline::strerror(&e));
            let _ = fs.unmount();
            return Done::Failed;
        }
    }
    if o.level >= 6 {
        println!("{} new rindex entries.", plan.rgrps.len());
    }
    if !o.test {
        if let Err(e) = fs.append_rgrps(&plan.rindex()) {
            eprintln!("Error writing new rindex entries; aborted: {e}");
            result = Done::Failed;
        }
    }
    if let Err(e) = fs.unmount() {
        eprintln!("{name}: {e}");
        return Done::Failed;
    }
    result
}

fn main() -> ExitCode {
    offline::init_logging();
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let o = match parse_grow(&argv) {
        Ok(o) => o,
        Err(x) => {
            print!("{}", x.stdout);
            let _ = std::io::stdout().flush();
            eprint!("{}", x.stderr);
            return ExitCode::from(x.code);
        }
    };
    print!("{}", o.printed);
    let mut code = 0u8;
    for d in &o.devices {
        let _ = std::io::stdout().flush();
        match grow_one(&o, d) {
            Done::Ok => {}
            Done::Failed => code = 255,
            Done::Exit(c) => {
                let _ = std::io::stdout().flush();
                return ExitCode::from(c);
            }
        }
    }
    if o.level >= 5 {
        println!("gfs2_grow complete.");
    }
    gfs2_grow::killpoint::report();
    ExitCode::from(code)
}
