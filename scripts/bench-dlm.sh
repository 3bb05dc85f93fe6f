#!/usr/bin/env bash
# lock_dlm on the real Linux DLM, ours against the kernel's, in the same 2-VM corosync + DLM
# cluster (qemu TCG; examples/dlm_bench.rs): glock round trips through our library (cached, a
# DLM request each, one glock bounced between the nodes) and one file ping-ponged between the
# two nodes, with gfs2-fuse on both and then with the kernel's gfs2 on both; prints the ratio.
#   scripts/bench-dlm.sh [SECONDS]   (default 10 per figure: about 3 minutes)
# Needs root, qemu-system-x86, gfs2-utils, corosync and dlm-controld (scripts/test.sh installs
# them); the kernel is fetched and cached like the tests' (see tests/oracle).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-10}
: "${CARGO_TARGET_DIR:=$root/target}"
export CARGO_TARGET_DIR
cargo build --release -q -p gfs2-fuse --manifest-path "$root/Cargo.toml"
cargo build --release -q --example dlm_bench --manifest-path "$root/Cargo.toml"
exec "$CARGO_TARGET_DIR/release/examples/dlm_bench" "$secs"
