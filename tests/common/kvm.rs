//! The Linux kernel's GFS2 in a qemu VM: a thin wrapper over the
//! `gfs2-oracle` crate (tests/oracle) for the workspace-level tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The extracted Debian kernel package (vmlinuz and modules), fetched once.
pub fn kernel_root() -> PathBuf {
    gfs2_oracle::Kernel::get()
        .expect("kernel for the VM")
        .root
        .clone()
}

/// Run `workload` (a busybox sh script, with /manifest.sh and the functions
/// of tests/oracle/scripts/oracle.sh available) in a VM with `disks` as
/// /dev/vda, /dev/vdb, ...; returns the console output. The workload ends
/// normally (then the VM powers off) or crashes the VM on purpose
/// (`echo b > /proc/sysrq-trigger`).
pub fn run_vm(workload: &str, disks: &[&Path]) -> String {
    gfs2_oracle::Vm::run(workload, disks)
        .expect("kernel VM run")
        .console
}

/// The manifest lines (`M ...`) printed by the VM between two markers.
pub fn section(console: &str, tag: &str) -> Vec<String> {
    gfs2_oracle::section(console, tag)
}

/// The manifest of a mounted directory, made on the host with the same script.
pub fn host_manifest(dir: &Path) -> Vec<String> {
    gfs2_oracle::host_manifest(dir).expect("manifest on the host")
}
