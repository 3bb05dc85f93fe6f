#!/bin/sh
# Time our mkfs.gfs2 against gfs2-utils' on the same sparse images and print the ratios.
# Usage: scripts/bench-mkfs.sh [workdir]   (default: a fresh directory under /tmp)
# Sizes: 1 GiB, 1 TiB, 16 TiB less 1 MiB (ext4 refuses files of 16 TiB); -j 1 and -j 8.
# Ratio = ours / gfs2-utils (below 1.00: ours is faster).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/bench-mkfs.XXXXXX)}
: "${CARGO_TARGET_DIR:=$root/target}"
cargo build --release -q -p gfs2-mkfs --manifest-path "$root/Cargo.toml"
ours="$CARGO_TARGET_DIR/release/mkfs-gfs2"
theirs=$(command -v mkfs.gfs2) || { echo "gfs2-utils mkfs.gfs2 not installed" >&2; exit 1; }
img="$work/bench.img"

# Seconds (with fractions) one run takes on a freshly truncated sparse image; "FAIL" on error.
timed() {
    size=$1; shift
    rm -f "$img"; truncate -s "$size" "$img"
    # Both tools end with fsync: start each run with no dirty pages of the
    # previous one still being written back, so one does not pay for the other.
    sync; [ -w /proc/sys/vm/drop_caches ] && echo 3 > /proc/sys/vm/drop_caches
    start=$(date +%s.%N)
    if "$@" -O -q -p lock_nolock "$img" >/dev/null 2>"$work/err"; then
        end=$(date +%s.%N)
        echo "$start $end" | awk '{printf "%.3f", $2 - $1}'
    else
        echo FAIL
    fi
}

best() {
    if [ "$1" = FAIL ] || [ "$2" = FAIL ]; then echo FAIL; else
        echo "$1 $2" | awk '{printf "%.3f", ($1 < $2) ? $1 : $2}'; fi
}

printf '%-6s %-3s %10s %10s %8s\n' size j gfs2-utils ours ratio
for size in 1G 1T $(( (16 << 40) - (1 << 20) )); do
    for j in 1 8; do
        # Best of two runs each, interleaved, to damp disk noise.
        t1=$(timed "$size" "$theirs" -j "$j"); o1=$(timed "$size" "$ours" -j "$j")
        t2=$(timed "$size" "$theirs" -j "$j"); o2=$(timed "$size" "$ours" -j "$j")
        t=$(best "$t1" "$t2"); o=$(best "$o1" "$o2")
        if [ "$o" = FAIL ] || [ "$t" = FAIL ]; then
            r=n/a
        else
            r=$(echo "$o $t" | awk '{printf "%.2f", $1 / $2}')
        fi
        printf '%-6s %-3s %10s %10s %8s\n' "$size" "$j" "$t" "$o" "$r"
    done
done
rm -f "$img" "$work/err"
[ -n "${1:-}" ] || rmdir "$work"
