#!/usr/bin/env bash
# Throughput of our NBD initiator (examples/nbd_bench.rs) against qemu-img
# and nbdcopy on the same qemu-nbd export, images in /dev/shm so that the
# network path is measured rather than a disk.
#
#   scripts/bench-nbd.sh [SIZE_MB] [THREADS] [REPS]     (defaults 1024, 4, 3)
#
# Every pair is measured REPS times, alternating ours and the reference, and
# the best of each is kept, so that a shared machine does not decide a row.
#
# Sequential: the whole export read (ours / nbdcopy -> null: / qemu-img
# convert -> tmpfs file) and written (from a tmpfs file for the tools).
# Small requests: 4 KiB, 8 in flight (ours: 8 threads), one connection: at
# random offsets against fio's nbd engine (libnbd, iodepth 8), at sequential
# offsets against nbdcopy. Needs qemu-utils (qemu-nbd, qemu-img), libnbd-bin
# (nbdcopy) and fio.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MB=${1:-1024}
THREADS=${2:-4}
REPS=${3:-3}
SECONDS_RAND=${SECONDS_RAND:-5}
for t in qemu-nbd qemu-img nbdcopy fio; do
    command -v "$t" >/dev/null || {
        echo "bench-nbd.sh: $t not found (apt-get install qemu-utils libnbd-bin fio)" >&2
        exit 1
    }
done

cargo build --release --quiet --example nbd_bench
BENCH=target/release/examples/nbd_bench

dir=$(mktemp -d /dev/shm/gfs2-bench-nbd.XXXXXX 2>/dev/null || mktemp -d)
srv=
srv2=
cleanup() {
    [[ -n $srv ]] && kill "$srv" 2>/dev/null && wait "$srv" 2>/dev/null
    [[ -n $srv2 ]] && kill "$srv2" 2>/dev/null && wait "$srv2" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT

img=$dir/export.img
src=$dir/src.img
dst=$dir/dst.img
head -c "${SIZE_MB}M" /dev/urandom >"$src"
cp "$src" "$img"
truncate -s "${SIZE_MB}M" "$dst"

port=
for p in $(shuf -i 20000-60000 -n 50); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        port=$p
        break
    fi
done
[[ -n $port ]] || { echo "bench-nbd.sh: no free port" >&2; exit 1; }
# (stderr to a log: the readiness probes make it complain)
qemu-nbd -f raw -x exp -b 127.0.0.1 -p "$port" -e 8 -t "$img" 2>"$dir/qemu-nbd.log" &
srv=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
URI=nbd://127.0.0.1:$port/exp

now() { date +%s.%N; }
# MB/s of moving SIZE_MB MiB with the command given.
rate() {
    local t0 t1
    t0=$(now)
    "$@" >/dev/null
    t1=$(now)
    echo "$t0 $t1 $SIZE_MB" | awk '{ printf "%.1f", $3 * 1048576 / ($2 - $1) / 1e6 }'
}
ours() { "$BENCH" "$URI" "$@" | sed -n 's/.*MBps=\([0-9.]*\).*/\1/p'; }
ours_iops() { "$BENCH" "$URI" "$@" | sed -n 's/.*iops=\([0-9]*\).*/\1/p'; }
# shellcheck source=scripts/bench-pairs.sh
source scripts/bench-pairs.sh
row() { printf '%-40s %10s %10s %8s\n' "$@"; }

echo "qemu-nbd export of ${SIZE_MB} MiB on $(dirname "$img"), our initiator with $THREADS threads;" \
    "$(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg); best of $REPS"
row "test" "ours" "other" "ratio"

compare "seq read MB/s vs nbdcopy" 'ours seqread --threads "$THREADS"' 'rate nbdcopy "$URI" null:'
compare "seq read MB/s vs qemu-img convert" 'ours seqread --threads "$THREADS"' \
    'rate qemu-img convert -n -f raw -O raw "$URI" "$dst"'

compare "seq write MB/s vs nbdcopy" 'ours seqwrite --threads "$THREADS"' \
    'rate nbdcopy "$src" "$URI"'
compare "seq write MB/s vs qemu-img convert" 'ours seqwrite --threads "$THREADS"' \
    'rate qemu-img convert -n -f raw -O raw "$src" "$URI"'

# Small requests: 4 KiB, 8 outstanding, one connection. Random offsets over
# the whole export: fio's nbd engine. Sequential offsets: nbdcopy, which has
# no random mode. (`qemu-img bench` is no comparator here: its NBD client
# takes ~5 ms per request whatever the depth.)
small=(--request-size=4096 --requests=8 --connections=1 --threads=1)
SMALL_MB=$((SIZE_MB < 256 ? SIZE_MB : 256))
rate_small() {
    local t0 t1
    t0=$(now)
    "$@" >/dev/null
    t1=$(now)
    echo "$t0 $t1 $SMALL_MB" | awk '{ printf "%.0f", $3 * 256 / ($2 - $1) }'
}
head -c "${SMALL_MB}M" "$src" >"$dir/small.img"
# A second export of SMALL_MB MiB for nbdcopy to read whole.
sport=$((port + 1))
qemu-nbd -f raw -x exp -b 127.0.0.1 -p "$sport" -e 8 -t -r "$dir/small.img" 2>>"$dir/qemu-nbd.log" &
srv2=$!
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$sport") 2>/dev/null && break
    sleep 0.1
done
small_uri=nbd://127.0.0.1:$sport/exp
# fio_iops RW: IOPS of fio's nbd engine, 4 KiB at random over the export.
fio_iops() {
    fio --name=bench --ioengine=nbd --uri="$URI" --rw="$1" --bs=4k --iodepth=8 --numjobs=1 \
        --size="${SIZE_MB}m" --runtime="$SECONDS_RAND" --time_based \
        --output-format=json --output="$dir/fio.json" >/dev/null 2>&1
    python3 -c 'import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
print(round(j["read"]["iops"] + j["write"]["iops"]))' "$dir/fio.json"
}
compare "4K random read IOPS vs fio (nbd engine)" 'ours_iops randread --threads 8 --seconds "$SECONDS_RAND"' \
    'fio_iops randread'
compare "4K seq read IOPS vs nbdcopy" 'ours_iops seqread --threads 8 --bs 4096 --mb "$SMALL_MB"' \
    'rate_small nbdcopy "${small[@]}" "$small_uri" null:'
compare "4K random write IOPS vs fio (nbd engine)" 'ours_iops randwrite --threads 8 --seconds "$SECONDS_RAND"' \
    'fio_iops randwrite'
compare "4K seq write IOPS vs nbdcopy" 'ours_iops seqwrite --threads 8 --bs 4096 --mb "$SMALL_MB"' \
    'rate_small nbdcopy "${small[@]}" "$dir/small.img" "$URI"'
