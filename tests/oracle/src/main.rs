//! Command-line front end of the kernel oracle, for scripts (images/regen.sh).
//!
//! gfs2-oracle-vm run [--kill-after PATTERN COUNT] [--timeout SECS] [--file NAME=PATH]...
//!                    SCENARIO [DISK...]
//!     Boot the kernel VM with SCENARIO (a file) and DISKs (and the host file
//!     PATH at /NAME in the VM for each --file); print the
//!     console on stdout. Exit status: the scenario's, 137 when the VM was
//!     killed on PATTERN, 1 when it ended without reporting.
//! gfs2-oracle-vm nfs [--disk PATH]... [--memory MB] [--timeout SECS] SCRIPT...
//!     Boot the NFS client VM (src/nfs.rs) with the raw images PATH as
//!     /dev/vda, /dev/vdb, ... and run each SCRIPT file in it in turn
//!     (busybox sh with /lib/nfs.sh's functions; the host is 10.0.2.2),
//!     printing its stdout and stderr. Exit status: 0, or the status of the
//!     first script that failed (the later ones are not run).
//! gfs2-oracle-vm names N BITS PREFIX LEN
//!     Print N names of LEN bytes starting with PREFIX whose GFS2 hashes
//!     share their top BITS bits.
//! gfs2-oracle-vm fsck IMAGE
//!     Run fsck.gfs2 -n; print its output; exit with its status.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    match real_main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("gfs2-oracle-vm: {e:#}");
            std::process::exit(2);
        }
    }
}

fn real_main() -> Result<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: gfs2-oracle-vm run [--kill-after PATTERN COUNT] [--timeout SECS] \
                 [--file NAME=PATH]... SCENARIO [DISK...] | nfs [--disk PATH]... [--memory MB] \
                 [--timeout SECS] SCRIPT... | names N BITS PREFIX LEN | fsck IMAGE";
    match args.first().map(String::as_str) {
        Some("run") => {
            let mut i = 1;
            let mut kill = None;
            let mut timeout = 600;
            let mut files = Vec::new();
            while i < args.len() && args[i].starts_with("--") {
                match args[i].as_str() {
                    "--kill-after" if i + 2 < args.len() => {
                        kill = Some((args[i + 1].clone(), args[i + 2].parse::<usize>()?));
                        i += 3;
                    }
                    "--file" if i + 1 < args.len() => {
                        let (name, path) = args[i + 1]
                            .split_once('=')
                            .with_context(|| format!("--file {}: NAME=PATH", args[i + 1]))?;
                        let data = std::fs::read(path).with_context(|| format!("--file {path}"))?;
                        files.push((name.to_string(), data));
                        i += 2;
                    }
                    "--timeout" if i + 1 < args.len() => {
                        timeout = args[i + 1].parse()?;
                        i += 2;
                    }
                    _ => bail!("{usage}"),
                }
            }
            let Some(scen) = args.get(i) else {
                bail!("{usage}");
            };
            let script =
                std::fs::read_to_string(scen).with_context(|| format!("scenario {scen}"))?;
            let disks: Vec<PathBuf> = args[i + 1..].iter().map(PathBuf::from).collect();
            let refs: Vec<&std::path::Path> = disks.iter().map(PathBuf::as_path).collect();
            let mut vm = gfs2_oracle::Vm::new(&script).timeout(Duration::from_secs(timeout));
            for (name, data) in &files {
                vm = vm.file(name, data);
            }
            if let Some((p, n)) = kill {
                vm = vm.kill_after(&p, n);
            }
            let r = vm.boot(&refs)?;
            print!("{}", r.console);
            eprintln!(
                "gfs2-oracle-vm: {:.1} s, exit {:?}{}",
                r.elapsed.as_secs_f64(),
                r.exit,
                if r.killed { ", killed" } else { "" }
            );
            Ok(if r.killed { 137 } else { r.exit.unwrap_or(1) })
        }
        Some("nfs") => {
            let mut i = 1;
            let mut opts = gfs2_oracle::nfs::NfsVmOpts::new();
            let mut timeout = 3600;
            while i + 1 < args.len() && args[i].starts_with("--") {
                match args[i].as_str() {
                    "--disk" => opts = opts.disk(&args[i + 1]),
                    "--memory" => opts = opts.memory_mb(args[i + 1].parse()?),
                    "--timeout" => timeout = args[i + 1].parse()?,
                    _ => bail!("{usage}"),
                }
                i += 2;
            }
            if i >= args.len() {
                bail!("{usage}");
            }
            let scripts: Vec<(String, String)> = args[i..]
                .iter()
                .map(|p| {
                    Ok((
                        p.clone(),
                        std::fs::read_to_string(p).with_context(|| p.clone())?,
                    ))
                })
                .collect::<Result<_>>()?;
            let vm = gfs2_oracle::nfs::NfsClientVm::start(opts)?;
            eprintln!(
                "gfs2-oracle-vm: NFS client VM up in {:.1} s",
                vm.boot_time().as_secs_f64()
            );
            for (name, text) in scripts {
                let o = vm.sh_timeout(&text, Duration::from_secs(timeout))?;
                print!("{}", o.stdout);
                eprint!("{}", o.stderr);
                if !o.success() {
                    eprintln!("gfs2-oracle-vm: {name} exited {}", o.status);
                    return Ok(o.status);
                }
            }
            Ok(0)
        }
        Some("names") if args.len() == 5 => {
            for n in gfs2_oracle::colliding_names(
                args[1].parse()?,
                args[2].parse()?,
                &args[3],
                args[4].parse()?,
            ) {
                println!("{n}");
            }
            Ok(0)
        }
        Some("fsck") if args.len() == 2 => {
            let f = gfs2_oracle::fsck_n(std::path::Path::new(&args[1]))?;
            print!("{}", f.output);
            Ok(f.code)
        }
        _ => bail!("{usage}"),
    }
}
