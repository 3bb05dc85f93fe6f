#!/usr/bin/env bash
# Throughput of our iSCSI initiator (driven by examples/nbd_bench.rs, which
# opens any device spec) against libiscsi's own clients on the same tgtd
# target, backing image in /dev/shm so that the initiators are measured
# rather than a disk:
#
#   scripts/bench-iscsi.sh [SIZE_MB] [SECONDS] [REPS]     (defaults 512, 3, 3)
#
# References: libiscsi's iscsi-perf (libiscsi-bin: READ(16) only, N commands
# in flight, sequential or random) and qemu-img bench (qemu-utils with
# qemu-block-extra: qemu's libiscsi block driver, reads and writes, N in
# flight, sequential offsets). iscsi-dd is not shipped by Debian's
# libiscsi-bin. Ours runs one thread per outstanding request (the
# BlockDevice API is synchronous), so "depth" = threads.
#
# Rows: 1 MiB sequential reads and writes with 4 in flight; 4 KiB random
# reads (vs iscsi-perf -r), 4 KiB sequential reads and writes (vs qemu-img
# bench, the same requests on both sides) with 8 in flight. Needs tgt,
# libiscsi-bin, qemu-utils, qemu-block-extra.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MB=${1:-512}
SECS=${2:-3}
REPS=${3:-3}
for t in tgtd tgtadm iscsi-perf qemu-img; do
    command -v "$t" >/dev/null || {
        echo "bench-iscsi.sh: $t not found (apt-get install tgt libiscsi-bin qemu-utils qemu-block-extra)" >&2
        exit 1
    }
done

cargo build --release --quiet --example nbd_bench
BENCH=target/release/examples/nbd_bench

dir=$(mktemp -d /dev/shm/gfs2-bench-iscsi.XXXXXX 2>/dev/null || mktemp -d)
tgtd_pid=
ctl=
cleanup() {
    if [[ -n $tgtd_pid ]]; then
        kill -9 "$tgtd_pid" 2>/dev/null || true
        wait "$tgtd_pid" 2>/dev/null || true
    fi
    [[ -n $ctl ]] && rm -f "/var/run/tgtd/socket.$ctl" "/var/run/tgtd/socket.$ctl.lock"
    rm -rf "$dir"
}
trap cleanup EXIT

img=$dir/lun.img
head -c "${SIZE_MB}M" /dev/urandom >"$img"

port=
for p in $(shuf -i 20000-60000 -n 50); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        port=$p
        break
    fi
done
[[ -n $port ]] || { echo "bench-iscsi.sh: no free port" >&2; exit 1; }
ctl=$((1 + port % 32000))
iqn=iqn.2026-01.org.gfs2-fuse.bench:lun
tgtd -f -C "$ctl" --iscsi "portal=127.0.0.1:$port" >"$dir/tgtd.log" 2>&1 &
tgtd_pid=$!
adm() { tgtadm -C "$ctl" --lld iscsi "$@"; }
for _ in $(seq 100); do
    adm --op show --mode sys >/dev/null 2>&1 && break
    sleep 0.1
done
adm --op new --mode target --tid 1 -T "$iqn"
adm --op new --mode logicalunit --tid 1 --lun 1 -b "$img"
adm --op bind --mode target --tid 1 -I ALL
URL=iscsi://127.0.0.1:$port/$iqn/1

ours() { "$BENCH" "$URL" "$@"; }
# MB/s (1e6 bytes) and IOPS from nbd_bench's line.
mbps() { sed -n 's/.*MBps=\([0-9.]*\).*/\1/p'; }
iops() { sed -n 's/.*iops=\([0-9]*\).*/\1/p'; }
# iscsi-perf: READ(16) of BLOCKS 512-byte blocks, DEPTH in flight, for SECS.
perf() {
    local blocks=$1 depth=$2
    shift 2
    timeout $((SECS + 30)) iscsi-perf -t "$SECS" -m "$depth" -b "$blocks" "$@" "$URL" 2>&1 |
        tr '\r' '\n' | sed -n 's/^iops average \([0-9]*\) .*/\1/p' | tail -1
}
# qemu-img bench: COUNT requests of SIZE bytes, DEPTH in flight; prints MB/s.
qbench() {
    local count=$1 size=$2 depth=$3
    shift 3
    qemu-img bench -f raw -n -c "$count" -s "$size" -d "$depth" "$@" "$URL" 2>&1 |
        sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p' |
        awk -v c="$count" -v s="$size" '{ printf "%.1f", c * s / $1 / 1e6 }'
}
# shellcheck source=scripts/bench-pairs.sh
source scripts/bench-pairs.sh
row() { printf '%-44s %10s %10s %8s\n' "$@"; }

echo "tgtd LUN of ${SIZE_MB} MiB on $(dirname "$img"), 512-byte blocks; $(nproc) CPUs," \
    "load $(cut -d' ' -f1 /proc/loadavg); best of $REPS"
row "test" "ours" "other" "ratio"

n1m=$SIZE_MB
perf1m() { awk -v i="$(perf 2048 4)" 'BEGIN { printf "%.1f", i * 1048576 / 1e6 }'; }
compare "seq read 1M x4 MB/s vs iscsi-perf" 'ours seqread --threads 4 | mbps' 'perf1m'
compare "seq read 1M x4 MB/s vs qemu-img bench" 'ours seqread --threads 4 | mbps' \
    'qbench "$n1m" 1048576 4'

compare "seq write 1M x4 MB/s vs qemu-img bench -w" 'ours seqwrite --threads 4 | mbps' \
    'qbench "$n1m" 1048576 4 -w'

compare "rand read 4K x8 IOPS vs iscsi-perf -r" 'ours randread --threads 8 --seconds "$SECS" | iops' \
    'perf 8 8 -r'

# qemu-img bench walks sequential offsets: ours does the same, with the
# same number of 4 KiB requests (at most 100000, within the LUN).
n4k=$(((SIZE_MB < 390 ? SIZE_MB : 390) * 256))
q4k() { qbench "$n4k" 4096 8 "$@" | awk '{ printf "%.0f", $1 * 1e6 / 4096 }'; }
seq4k() { ours "$1" --bs 4096 --threads 8 --mb $((n4k / 256)) | iops; }
compare "seq read 4K x8 IOPS vs qemu-img bench" 'seq4k seqread' 'q4k'
compare "seq write 4K x8 IOPS vs qemu-img bench -w" 'seq4k seqwrite' 'q4k -w'
