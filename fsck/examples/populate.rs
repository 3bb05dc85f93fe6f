//! Populate a fresh GFS2 image: `populate IMAGE DIRS FILES BIGSIZE`.
fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 5 {
        eprintln!("usage: populate IMAGE DIRS FILES_PER_DIR BIG_FILE_BYTES");
        std::process::exit(16);
    }
    let num = |s: &str| s.parse::<u64>().unwrap_or(0);
    match gfs2_fsck::testimg::populate(
        std::path::Path::new(&a[1]),
        num(&a[2]) as usize,
        num(&a[3]) as usize,
        num(&a[4]),
    ) {
        Ok(n) => println!("{n} inodes"),
        Err(e) => {
            eprintln!("populate: {e}");
            std::process::exit(1);
        }
    }
}
