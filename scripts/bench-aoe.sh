#!/usr/bin/env bash
# Throughput of our AoE initiator (gfs2fuse::dev::aoe) against one vblade
# target, in one run, next to two references on the same target and image:
#
#  - "raw client": a minimal AoE client (in tests/aoe.rs: one thread, a fixed
#    window of frames, no locks, no copies, no resends), the most a userspace
#    client can get out of vblade. There is no userspace AoE initiator in
#    Debian (aoetools drives the kernel's aoe driver), and this kernel has no
#    aoe driver (CONFIG_ATA_OVER_ETH is not set), so this is the reference
#    client;
#  - "file": the same patterns on the image file directly (page cache), the
#    ceiling of the storage behind vblade, not of any AoE path.
#
#   scripts/bench-aoe.sh [SIZE_MB] [THREADS]      (defaults 256, 4)
#
# For MTU 1500 (2 sectors per frame) and 9000 (17): sequential 1 MiB writes
# and reads over the whole image, then 4 KiB random reads and writes for
# SECONDS_RAND seconds (ours: THREADS threads, one request each; the raw
# client: THREADS frames in flight). Needs root (namespaces, packet sockets),
# vblade and iproute2. The image lives in /dev/shm when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MB=${1:-256}
THREADS=${2:-4}
SECONDS_RAND=${SECONDS_RAND:-2}
ROUNDS=${ROUNDS:-5}
MTUS=${MTUS:-"1500 9000"}

if [[ $(id -u) -ne 0 ]]; then
    echo "bench-aoe.sh: needs root (network namespaces, raw packet sockets)" >&2
    exit 1
fi
for t in vblade ip nsenter; do
    command -v "$t" >/dev/null || {
        echo "bench-aoe.sh: $t not found (apt-get install vblade iproute2 util-linux)" >&2
        exit 1
    }
done
if [[ -e /sys/module/aoe ]]; then
    echo "note: the kernel aoe driver is loaded, but this script does not use it" >&2
else
    echo "reference: no kernel aoe driver here (/sys/module/aoe missing), no userspace AoE client in Debian;"
    echo "           comparing with a minimal raw AoE client and with the plain image file"
fi
[[ -d /dev/shm ]] && export TMPDIR=/dev/shm

cargo build --release --quiet --workspace
cargo test --release --quiet --test aoe --no-run 2>/dev/null
echo "host: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
for mtu in $MTUS; do
    echo
    AOE_BENCH_MTU=$mtu AOE_BENCH_MB=$SIZE_MB AOE_BENCH_THREADS=$THREADS \
        AOE_BENCH_SECS=$SECONDS_RAND AOE_BENCH_ROUNDS=$ROUNDS \
        cargo test --release --quiet --test aoe bench_throughput -- --ignored --exact \
        --nocapture 2>&1 | grep -E '^(AoE bench|\(raw|test  |sequential|random)|panicked|failed'
done
