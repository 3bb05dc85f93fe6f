//! Time one full walk of a directory through the library (no FUSE):
//! `cargo run --release --example readdir_time -- IMAGE PATH/IN/FS`.
use gfs2fuse::dev::file::{FileDevice, OpenFlags};
use gfs2fuse::fs::{Fs, MountOptions};
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 3, "usage: readdir_time IMAGE DIR");
    let dev = FileDevice::open(
        std::path::Path::new(&args[1]),
        OpenFlags {
            read_only: true,
            direct: false,
        },
    )?;
    let opts = MountOptions {
        read_only: true,
        device_read_only: true,
        ..Default::default()
    };
    let fs = Fs::mount(Arc::new(dev), opts)?;
    let mut ino = fs.root();
    for part in args[2].split('/').filter(|p| !p.is_empty()) {
        ino = fs.lookup(ino, part.as_bytes())?.ino;
    }
    for round in 0..3 {
        let t = std::time::Instant::now();
        let mut n = 0;
        fs.readdir(ino, 0, |_| {
            n += 1;
            true
        })?;
        println!("round {round}: {n} entries in {:?}", t.elapsed());
    }
    fs.unmount()?;
    Ok(())
}
