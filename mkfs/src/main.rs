//! `mkfs.gfs2` entry point: parse, check, plan, confirm, write, report — in gfs2-utils' order
//! so that errors surface at the same point and with the same exit status.

use std::io::{BufRead, Write};

use gfs2fuse::dev::spec;
use std::process::ExitCode;

use gfs2_mkfs::build::{self, BuildOptions};
use gfs2_mkfs::cli::{self, Action, EXIT_USAGE};
use gfs2_mkfs::plan::{self, Align, LayoutParams};
use gfs2_mkfs::report::Summary;

fn usage_exit(msg: &str) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(EXIT_USAGE as u8)
}

/// Ask like gfs2-utils: anything starting with y/Y proceeds, n/N or end of input declines,
/// other answers ask again.
fn are_you_sure() -> bool {
    let stdin = std::io::stdin();
    loop {
        print!("Are you sure you want to proceed? [y/n] ");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => {
                println!();
                return false;
            }
            Ok(_) => {}
        }
        match line.trim_start().chars().next() {
            Some('y' | 'Y') => return true,
            Some('n' | 'N') => return false,
            _ => continue,
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let opts = match cli::parse(&argv) {
        Ok(Action::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Action::Run(o)) => o,
        Err(e) => return usage_exit(&e.0),
    };
    let path = opts.device.clone().unwrap_or_default();
    // A path or nbd://host[:port]/export, nbd+unix:///export?socket=PATH.
    let dev = match spec::open(&path, false) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(1);
        }
    };
    // Never format under a running node (or a kernel mount): gfs2-utils
    // opens the device O_EXCL and fails with exit 1 the same way.
    if let Err(e) = dev.claim(gfs2fuse::dev::claim::Claimant::Tool) {
        eprintln!("{path}: {e}");
        return ExitCode::from(1);
    }
    let dev_size = dev.size();
    if dev_size == 0 {
        eprintln!("Device '{path}' is too small");
        return ExitCode::from(1);
    }
    let bsize = opts.bsize;
    if !(512..=4096).contains(&bsize) || !bsize.is_power_of_two() {
        return usage_exit("Block size must be a power of two between 512 and 4096");
    }
    let mut dev_blocks = dev_size / u64::from(bsize);
    if let Some(fs) = opts.fssize {
        if fs > dev_blocks {
            return usage_exit(&format!(
                "Specified size is bigger than the device. Device size: {:.2} GB ({} blocks)",
                dev_size as f64 / f64::from(1u32 << 30),
                dev_blocks
            ));
        }
        dev_blocks = fs;
    }
    let journals = opts.journals as u32;
    let jsize_mb = match plan::journal_size_mb(
        bsize,
        dev_blocks,
        journals,
        opts.got_jsize.then_some(opts.jsize),
    ) {
        Ok(j) => j,
        Err(e) => return usage_exit(&e.to_string()),
    };
    let topo = opts
        .test_topology
        .as_ref()
        .map(|t| (t.minimum_io_size, t.optimal_io_size, t.physical_sector_size));
    let stripe = opts.sunit.zip(opts.swidth);
    let align = match Align::choose(bsize, opts.align, stripe, topo) {
        Ok(a) => a,
        Err(e) => return usage_exit(&e.to_string()),
    };
    let params = LayoutParams {
        bsize,
        dev_blocks,
        journals,
        jsize_mb,
        rgsize_mb: opts.rgsize,
        align,
    };
    let uuid = match opts.uuid.as_deref().map(uuid::Uuid::parse_str) {
        None => *uuid::Uuid::new_v4().as_bytes(),
        Some(Ok(u)) => *u.as_bytes(),
        Some(Err(_)) => return usage_exit("Invalid UUID specified."),
    };
    println!("This will destroy any data on {path}");
    if !opts.override_confirm && !are_you_sure() {
        return ExitCode::from(EXIT_USAGE as u8);
    }
    let layout = match plan::layout(&params) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("Failed to create journals: {e}");
            return ExitCode::from(1);
        }
    };
    let build_opts = BuildOptions {
        bsize,
        jsize_mb,
        qcsize_mb: opts.qcsize,
        lockproto: opts.lockproto.clone(),
        locktable: opts.locktable.clone(),
        uuid,
        format: opts.format,
        root_inherit_jdata: opts.root_inherit_jdata,
        quiet: opts.quiet,
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        seq_seed: None,
    };
    if let Err(e) = build::build(&dev, &layout, &build_opts) {
        eprintln!("{e:#}");
        return ExitCode::from(1);
    }
    if !opts.quiet {
        let summary = Summary {
            device: &path,
            bsize,
            dev_bytes: dev_size,
            fs_blocks: layout.fs_blocks(),
            journals,
            jsize_mb,
            rgrps: layout.rgrps.len() as u64,
            lockproto: &opts.lockproto,
            locktable: &opts.locktable,
            uuid: &uuid::Uuid::from_bytes(uuid).hyphenated().to_string(),
        };
        print!("{}", summary.render());
    }
    ExitCode::SUCCESS
}
