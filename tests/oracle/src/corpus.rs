//! The committed reference images (`images/`, made by `images/regen.sh`):
//! `NAME.img.xz` (the image), `NAME.manifest` (the kernel's manifest of it)
//! and, for crashed-node images, `NAME.fsynced` (`FSYNCED path sha256` lines
//! of files fsync'd before the crash).

use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `images/` directory of the workspace.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images")
}

/// Names (without `.img.xz`) of every committed image, sorted.
pub fn list() -> Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir())
        .with_context(|| format!("{}", dir().display()))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".img.xz"))
                .map(str::to_string)
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Decompress `images/NAME.img.xz` into `dest_dir/NAME.img`, keeping it
/// sparse (zero blocks are skipped, not written).
pub fn image(name: &str, dest_dir: &Path) -> Result<PathBuf> {
    let src = dir().join(format!("{name}.img.xz"));
    if !src.exists() {
        bail!("{} missing", src.display());
    }
    let out = dest_dir.join(format!("{name}.img"));
    let mut child = Command::new(crate::tool("xz")?)
        .arg("-dc")
        .arg(&src)
        .stdout(Stdio::piped())
        .spawn()
        .context("xz -dc")?;
    let mut rd = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("xz stdout"))?;
    let mut f = std::fs::File::create(&out).with_context(|| format!("{}", out.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut pos = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let r = rd.read(&mut buf[n..])?;
            if r == 0 {
                break;
            }
            n += r;
        }
        if n == 0 {
            break;
        }
        for chunk in buf[..n].chunks(4096) {
            if chunk.iter().any(|b| *b != 0) {
                f.seek(SeekFrom::Start(pos))?;
                f.write_all(chunk)?;
            }
            pos += chunk.len() as u64;
        }
    }
    f.set_len(pos)?;
    let st = child.wait()?;
    if !st.success() {
        bail!("xz -dc {} failed: {st}", src.display());
    }
    Ok(out)
}

/// The kernel's manifest of image NAME (`M ...` lines of `NAME.manifest`).
pub fn manifest(name: &str) -> Result<Vec<String>> {
    let p = dir().join(format!("{name}.manifest"));
    let t = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
    Ok(t.lines()
        .filter(|l| l.starts_with("M "))
        .map(str::to_string)
        .collect())
}

/// The files fsync'd before a crashed-node image's crash:
/// `(path relative to the mount point, sha256)`; empty when NAME has no
/// `.fsynced` list.
pub fn fsynced(name: &str) -> Result<Vec<(String, String)>> {
    let p = dir().join(format!("{name}.fsynced"));
    if !p.exists() {
        return Ok(Vec::new());
    }
    let t = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
    Ok(crate::fsynced_lines(&t))
}
