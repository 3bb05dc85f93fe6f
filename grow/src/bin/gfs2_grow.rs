//! `gfs2_grow`: extend a GFS2 filesystem over the rest of its device.
//!
//! Exit status as gfs2-utils': 0 when done (also for a path that holds no
//! GFS2, which is reported and skipped), 1 for command-line errors and a
//! path that cannot be reached or changed, 255 when a filesystem could not
//! grow (too little new space, or a failure while growing).

use gfs2_grow::cli::{parse_grow, GrowOptions};
use gfs2_grow::newrgrps;
use gfs2_grow::offline::{self, Target};
use gfs2_grow::online;
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

/// The notices gfs2-utils prints before growing.
fn print_info(o: &GrowOptions, mnt: &str, dev: &str, plan: &newrgrps::GrowPlan, bsize: u32) {
    if o.level >= 5 {
        println!("Mount point: {mnt}");
        println!("Device: {dev}");
        println!("Size: {} blocks", plan.start);
        println!("Length: {} blocks", plan.dev_blocks);
        println!("The file system will grow by {}MB.", plan.growth_mb(bsize));
    }
}

fn too_small(o: &GrowOptions, name: &str) -> Done {
    if o.level >= 3 {
        eprintln!("The calculated resource group size is too small.");
        eprintln!("{name} has not grown.");
    }
    Done::Failed
}

/// A filesystem gfs2-fuse has mounted: the daemon grows it.
fn grow_online(o: &GrowOptions, path: &std::ffi::OsStr, sock: &std::path::Path) -> Done {
    let name = String::from_utf8_lossy(path.as_bytes()).into_owned();
    let info = match online::info(sock) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{name}: {e}");
            return Done::Exit(1);
        }
    };
    let bs = u64::from(info.bsize);
    let dev_blocks = o.device_bytes.unwrap_or(info.device_bytes) / bs;
    let Some(plan) = newrgrps::plan(info.bsize, &info.rindex, dev_blocks) else {
        return too_small(o, &name);
    };
    let source = online::source_of(path).unwrap_or_else(|| "?".into());
    print_info(o, &name, &source, &plan, info.bsize);
    if o.level >= 6 {
        println!("{} new rindex entries.", plan.rgrps.len());
    }
    if o.test {
        return Done::Ok;
    }
    if dev_blocks > info.device_bytes / bs {
        eprintln!("{name}: -D is larger than the device");
        return Done::Exit(1);
    }
    match online::grow(sock, &plan.rindex()) {
        Ok(_) => Done::Ok,
        Err(e) => {
            eprintln!("Error writing new rindex entries; aborted: {e}");
            Done::Failed
        }
    }
}

fn grow_one(o: &GrowOptions, path: &std::ffi::OsStr) -> Done {
    let name = String::from_utf8_lossy(path.as_bytes()).into_owned();
    if let Some(sock) = online::find(path) {
        return grow_online(o, path, &sock);
    }
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
        Err(x) => return x.report(),
    };
    // The kernel's mounts are gfs2-utils' business.
    if o.devices.iter().any(|d| online::kernel_mount(d)) {
        eprintln!("gfs2_grow: {}", online::delegate_to_gfs2_utils("gfs2_grow"));
        return ExitCode::from(1);
    }
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
