#!/usr/bin/env bash
# Parallel writers on one node: aggregate throughput of several threads against one thread doing
# the same work, through a gfs2-fuse mount (lock_nolock image).
#   scripts/bench-parallel.sh [ROUNDS] [BIN...]
# Workloads (issue 18's targets):
#   fsync:  4 threads each writing 32 files of 1 MiB, each fsync'd before close, against one thread
#           writing all 128 (target: aggregate >= 1.6x);
#   create: 8 threads each creating 2,500 empty files in a directory of its own, against one thread
#           creating the same 20,000 files in the same 8 directories one after the other
#           (target: >= 1.5x).
# The same workloads run on a plain directory beside the image (the host's own filesystem and
# disk: how far several fsyncing writers can overlap on this machine at all), printed last.
# Each BIN (default: this tree's release build) is a gfs2-fuse binary; with several (say the one
# before a change and the one after), they take turns within each round, on a fresh filesystem
# for every measurement, and the best time of ROUNDS (default 3) is kept. The load average is
# printed: the machine may be shared, so compare figures from one run only.
# Needs root (FUSE mounts), python3 and fuse3.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
shift || true
: "${CARGO_TARGET_DIR:=$root/target}"
cargo build --release -q -p gfs2-fuse -p gfs2-mkfs --manifest-path "$root/Cargo.toml"
mkfs=$CARGO_TARGET_DIR/release/mkfs-gfs2
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=("$CARGO_TARGET_DIR/release/gfs2-fuse")
bins+=(plain)
for t in python3 fusermount3; do
    command -v $t >/dev/null || { echo "bench-parallel: $t not installed" >&2; exit 1; }
done
work=$(mktemp -d "${TMPDIR:-/tmp}/bench-par.XXXXXX")
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() {
    fusermount3 -u "$mnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/w.py" <<'PY'
import os, sys, threading, time
op, d, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
MB = 1 << 20
buf = os.urandom(MB)
def fsync_job(t, files):
    for i in files:
        fd = os.open(f"{d}/t{t}-f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, buf)
        os.fsync(fd)
        os.close(fd)
def create_job(t, dirs):
    for k in dirs:
        for i in range(2500):
            os.close(os.open(f"{d}/d{k}/f{i}", os.O_WRONLY | os.O_CREAT, 0o644))
if op == "fsync":
    total = 128
    jobs = [(fsync_job, (t, range(t, total, threads))) for t in range(threads)]
else:
    for k in range(8):
        os.mkdir(f"{d}/d{k}")
    jobs = [(create_job, (t, range(t, 8, threads))) for t in range(threads)]
ts = [threading.Thread(target=f, args=a) for f, a in jobs]
t0 = time.perf_counter()
for t in ts: t.start()
for t in ts: t.join()
print(f"{time.perf_counter() - t0:.3f}")
PY

# One measurement: fresh filesystem, mount with binary $1, run workload $2 with $3 threads.
measure() {
    local bin=$1 op=$2 n=$3 t
    if [ "$bin" = plain ]; then
        # What this machine's own filesystem and disk allow, as the anchor.
        rm -rf "$work/plain"; mkdir "$work/plain"; sync
        python3 "$work/w.py" "$op" "$work/plain" "$n"
        return
    fi
    rm -f "$work/img"
    truncate -s 4G "$work/img"
    "$mkfs" -O -q -p lock_nolock -j 1 "$work/img" >/dev/null
    "$bin" mount "$work/img" "$mnt"
    t=$(python3 "$work/w.py" "$op" "$mnt" "$n")
    "$bin" umount "$mnt" >/dev/null
    echo "$t"
}

declare -A best
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
    for b in "${!bins[@]}"; do
        for w in "fsync 1" "fsync 4" "create 1" "create 8"; do
            t=$(measure "${bins[$b]}" $w)
            k="$b ${w// /-}"
            echo "round $r  bin $b  ${w/ / threads=}: ${t}s"
            if [ -z "${best[$k]:-}" ] || python3 -c "import sys; sys.exit(0 if $t < ${best[$k]} else 1)"; then
                best[$k]=$t
            fi
        done
    done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
for b in "${!bins[@]}"; do
    echo "== ${bins[$b]} (best of $rounds)"
    python3 - "${best[$b fsync-1]}" "${best[$b fsync-4]}" "${best[$b create-1]}" "${best[$b create-8]}" <<'PY'
import sys
f1, f4, c1, c8 = map(float, sys.argv[1:])
print(f"  fsync  1 thread {f1:7.3f}s ({128 / f1:6.1f} MiB/s)  4 threads {f4:7.3f}s ({128 / f4:6.1f} MiB/s)  aggregate x{f1 / f4:.2f} (target 1.6)")
print(f"  create 1 thread {c1:7.3f}s ({20000 / c1:6.0f}/s)  8 threads {c8:7.3f}s ({20000 / c8:6.0f}/s)  aggregate x{c1 / c8:.2f} (target 1.5)")
PY
done
