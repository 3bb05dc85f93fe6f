#!/bin/sh
# Time our fsck.gfs2 -n against gfs2-utils' on the same populated image and
# print the ratios of elapsed time and peak RSS (from /usr/bin/time -v).
# Usage: scripts/bench-fsck.sh [workdir] [dirs] [files-per-dir]
#   defaults: a fresh directory under /tmp, 80 directories of 2500 files
#   (200,080 inodes: stuffed, one-block, multi-block and big files, exhash
#   directories, hard links) on a 20 GiB sparse image, -b 4096 -j 4.
#   An image already in workdir made with the same counts is reused.
# Each tool runs 5 times, alternating (the page cache can be evicted under
# memory limits): the fastest run of each and the largest peak RSS of
# its runs are reported.
# Ratio = ours / gfs2-utils (below 1.00: ours is faster / smaller).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/bench-fsck.XXXXXX)}
mkdir -p "$work"
dirs=${2:-80}
files=${3:-2500}
: "${CARGO_TARGET_DIR:=$root/target}"
cargo build --release -q -p gfs2-fsck --examples --manifest-path "$root/Cargo.toml"
ours="$CARGO_TARGET_DIR/release/fsck-gfs2"
populate="$CARGO_TARGET_DIR/release/examples/populate"
theirs=$(command -v fsck.gfs2 || echo /usr/sbin/fsck.gfs2)
[ -x "$theirs" ] || { echo "gfs2-utils fsck.gfs2 not installed" >&2; exit 1; }
mkfs=$(command -v mkfs.gfs2 || echo /usr/sbin/mkfs.gfs2)
[ -x /usr/bin/time ] || { echo "/usr/bin/time (GNU time) is needed" >&2; exit 1; }
img="$work/bench.img"

stamp="$work/bench.counts"
if [ ! -f "$img" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$dirs $files" ]; then
    rm -f "$img" "$stamp"; truncate -s 20G "$img"
    "$mkfs" -O -q -p lock_nolock -b 4096 -j 4 "$img" >/dev/null
    "$populate" "$img" "$dirs" "$files" 200000 >"$work/populate.out"
    echo "$dirs $files" >"$stamp"
fi
echo "image: $img, $(cat "$work/populate.out"), $(du -h "$img" | cut -f1) allocated"
"$theirs" -n "$img" >/dev/null 2>&1 || { echo "gfs2-utils does not find the image clean" >&2; exit 1; }
"$ours" -n "$img" 2>/dev/null || { echo "ours does not find the image clean" >&2; exit 1; }

# "seconds maxrss_kib" of one run (page cache warm: both read the same image).
measure() {
    /usr/bin/time -v "$@" -n "$img" >/dev/null 2>"$work/time.out" || true
    awk -F': ' '/Elapsed \(wall clock\)/ {
            n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; t = s }
        /Maximum resident set size/ { r = $2 }
        END { printf "%.3f %d", t, r }' "$work/time.out"
}


printf '%-12s %10s %12s\n' tool seconds maxrss_KiB
theirs_t=999999; ours_t=999999; theirs_r=0; ours_r=0
for run in 1 2 3 4 5; do
    for tool in theirs ours; do
        eval bin=\$$tool
        set -- $(measure "$bin")
        eval bt=\$${tool}_t br=\$${tool}_r
        if [ "$(echo "$bt $1" | awk '{print ($2 < $1)}')" = 1 ]; then
            eval ${tool}_t=$1
        fi
        if [ "$2" -gt "$br" ]; then
            eval ${tool}_r=$2
        fi
    done
done
printf '%-12s %10s %12s\n' theirs "$theirs_t" "$theirs_r"
printf '%-12s %10s %12s\n' ours "$ours_t" "$ours_r"
echo "$ours_t $theirs_t $ours_r $theirs_r" |
    awk '{printf "ratio (ours/gfs2-utils): time %.2f, peak RSS %.2f\n", $1 / $2, $3 / $4}'
