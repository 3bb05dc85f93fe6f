#!/usr/bin/env bash
# The first listing of a 100,000-entry directory after mounting, and where its CPU goes: for
# gfs2-fuse, fuse2fs and the diskless FUSE floor (examples/fuse_floor.rs, with the kernel's
# directory cache as ours and without as fuse2fs), best of ROUNDS (5) mounts in alternating
# order: elapsed time, the daemon's CPU (all its threads, perf task-clock) and the lister's own
# CPU (the kernel's parsing, directory-cache filling and copying out happen in its context).
# Then the same listing again on the live mount.
#   [ROUNDS=N] scripts/bench-list.sh [WORKDIR]
# The images are made once and kept in WORKDIR (default /tmp/bench-list), so that iterating is
# quick: the gfs2 one through our own mount, the ext4 one through the kernel's ext4 on a loop
# device (fuse2fs takes minutes to create 100,000 files); delete WORKDIR to remake them.
# Needs root, fuse3, fuse2fs, perf (linux-perf), e2fsprogs, a C compiler.
# Exit status: 0 done, 1 a tool missing or a step failed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/bench-list}
rounds=${ROUNDS:-5}
: "${CARGO_TARGET_DIR:=$root/target}"
for t in fusermount3 fuse2fs perf cc mkfs.ext4 losetup; do
    command -v $t >/dev/null || { echo "bench-list: $t not installed" >&2; exit 1; }
done
cargo build --release -q -p gfs2-fuse -p gfs2-mkfs --example fuse_floor --manifest-path "$root/Cargo.toml"
bin=$CARGO_TARGET_DIR/release
mkdir -p "$work"/{g,e,fl}
cd "$work"
cc -O2 -o lister "$root/scripts/lister.c"
fill() { # DIR: 100,000 empty files entry_0 ...
    python3 -c "
import os, sys
d = sys.argv[1] + '/l'; os.mkdir(d)
for i in range(100000): os.close(os.open(f'{d}/entry_{i}', os.O_WRONLY | os.O_CREAT, 0o644))" "$1"
}
if [ ! -e gfs2.img ]; then
    echo "bench-list: making the gfs2 image" >&2
    truncate -s 1G gfs2.tmp
    "$bin/mkfs-gfs2" -O -q -p lock_nolock -j 1 gfs2.tmp >/dev/null
    "$bin/gfs2-fuse" mount gfs2.tmp g && fill g && fusermount3 -u g
    mv gfs2.tmp gfs2.img
fi
if [ ! -e ext4.img ]; then
    echo "bench-list: making the ext4 image" >&2
    truncate -s 1G ext4.tmp
    mkfs.ext4 -q -F -N 120000 ext4.tmp
    mkdir -p loopmnt
    mount -o loop ext4.tmp loopmnt && fill loopmnt && umount loopmnt
    mv ext4.tmp ext4.img
fi

declare -A E D L R
keep() { # array key value: keep the smaller
    local -n a=$1
    if [ -z "${a[$2]:-}" ] || awk -v x="$3" -v y="${a[$2]}" 'BEGIN { exit !(x < y) }'; then a[$2]=$3; fi
}
one() { # side
    local side=$1 pid d n=100002 fp=
    cat gfs2.img ext4.img > /dev/null
    case $side in
        gfs2) "$bin/gfs2-fuse" mount gfs2.img g; d=g
              pid=$(pgrep -f "$bin/gfs2-fuse mount gfs2.img g" | head -1) ;;
        fuse2fs) fuse2fs ext4.img e -o fakeroot >/dev/null 2>&1; d=e
              pid=$(pgrep -f "fuse2fs ext4.img e" | head -1) ;;
        floor-cache|floor) d=fl; n=100000
              if [ $side = floor-cache ]; then "$bin/examples/fuse_floor" fl 100000 --cache-dir & else "$bin/examples/fuse_floor" fl 100000 & fi
              pid=$!; fp=$pid
              for i in $(seq 100); do mountpoint -q fl && break; sleep 0.05; done ;;
    esac
    perf stat -x, -e task-clock -p "$pid" -o daemon.cpu &
    local ps=$!
    sleep 0.2
    perf stat -x, -e task-clock -o lister.cpu ./lister $d/l $n > first.t
    kill -INT $ps; wait $ps 2>/dev/null || true
    keep E "$side" "$(cat first.t)"
    keep D "$side" "$(grep task-clock daemon.cpu | cut -d, -f1)"
    keep L "$side" "$(grep task-clock lister.cpu | cut -d, -f1)"
    keep R "$side" "$(./lister $d/l $n)"
    fusermount3 -u $d
    if [ -n "$fp" ]; then wait "$fp" || true; fi
    sleep 0.2
}
sides="gfs2 fuse2fs floor-cache floor"
load0=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order=$sides; else order=$(echo $sides | tr ' ' '\n' | tac | tr '\n' ' '); fi
    for s in $order; do one "$s"; done
done
printf '%-12s %10s %12s %12s %10s\n' side first-ms daemon-cpu-ms lister-cpu-ms again-ms
for s in $sides; do
    printf '%-12s %10.1f %12.1f %12.1f %10.1f\n' "$s" "$(echo "${E[$s]} * 1000" | bc -l)" "${D[$s]}" "${L[$s]}" \
        "$(echo "${R[$s]} * 1000" | bc -l)"
done
echo "fuse2fs/ours: first $(echo "${E[fuse2fs]} ${E[gfs2]}" | awk '{ printf "%.2f", $1 / $2 }'), again $(echo "${R[fuse2fs]} ${R[gfs2]}" | awk '{ printf "%.2f", $1 / $2 }')"
echo "(best of $rounds mounts each, alternating; CPU in ms of task-clock; load average before $load0, after $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs)"
