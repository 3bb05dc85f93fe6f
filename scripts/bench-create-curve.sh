#!/usr/bin/env bash
# The create curve: FILES (default 1,000,000) empty files created in one directory through a
# gfs2-fuse mount, timing each 1,000 creates; prints the time per 1,000 creates when the
# directory reaches 1k, 2k, 5k, 10k, ... FILES entries, and the ratio of the last to the first
# (the issue's target: the 1,000,000th create costs no more than 2x the 1,000th), and beside it
# the average per 1,000 since the previous count, which includes what a window of 1,000 can miss
# (log flushes, checkpoints). Each count is also printed to stderr as it is reached.
#   [SIDES="gfs2 ext4"] [FILES=N] [GFS2_OPTS=mount,options] scripts/bench-create-curve.sh [WORKDIR]
# SIDES adds fuse2fs on an ext4 image of the same size (slower: minutes more at 1M) and "plain"
# (a directory on this machine's filesystem); they run one after the other on the same load.
# Creates are made by a compiled open(O_CREAT)+close loop so that only the filesystem is timed.
# Needs root (fuseblk mount) and fuse3 (fuse2fs, e2fsprogs for the ext4 side), a C compiler.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/bench-create.XXXXXX)}
files=${FILES:-1000000}
sides=${SIDES:-gfs2}
: "${CARGO_TARGET_DIR:=$root/target}"
cargo build --release -q -p gfs2-fuse -p gfs2-mkfs --manifest-path "$root/Cargo.toml"
bin=$CARGO_TARGET_DIR/release
for t in fusermount3 cc; do
    command -v $t >/dev/null || { echo "bench-create-curve: $t not installed" >&2; exit 1; }
done
[ "$files" -ge 1000 ] || { echo "bench-create-curve: FILES must be at least 1000" >&2; exit 2; }
mkdir -p "$work"/{gfs2,ext4,plain}
cleanup() {
    fusermount3 -u "$work/gfs2" 2>/dev/null || true
    fusermount3 -u "$work/ext4" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
# One 4 KiB dinode per file, plus the directory's leaves: 3x the files' blocks is ample.
size_mb=$(( files * 12 / 1024 + 1024 ))

cat > "$work/creates.c" <<'C'
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
/* creates DIR N: prints "COUNT SECONDS_FOR_THE_LAST_1000 SECONDS_SINCE_START" at 1k, 2k, 5k,
   10k, ... and at N. */
int main(int argc, char **argv) {
    long n = atol(argv[2]), next = 1000, step = 0;
    static const int mult[3] = {2, 5, 10};
    long base = 1000;
    char path[4096];
    double start = now(), t0 = start;
    for (long i = 1; i <= n; i++) {
        if (i % 1000 == 1) t0 = now();
        snprintf(path, sizeof path, "%s/f%ld", argv[1], i);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0) { perror(path); return 1; }
        close(fd);
        if (i == next || i == n) {
            double t = now();
            printf("%ld %.4f %.4f\n", i, t - t0, t - start);
            fflush(stdout);
            while (next <= i) {
                next = base * mult[step];
                if (++step == 3) { step = 0; base *= 10; }
            }
        }
    }
    return 0;
}
C
cc -O2 -o "$work/creates" "$work/creates.c"

declare -A T A
counts=()
for side in $sides; do
    case $side in
        gfs2)
            truncate -s ${size_mb}M "$work/gfs2.img"
            "$bin/mkfs-gfs2" -O -q -p lock_nolock -j 1 "$work/gfs2.img" >/dev/null
            "$bin/gfs2-fuse" mount "$work/gfs2.img" "$work/gfs2" ${GFS2_OPTS:+-o "$GFS2_OPTS"} ;;
        ext4)
            command -v fuse2fs >/dev/null || { echo "bench-create-curve: fuse2fs not installed" >&2; exit 1; }
            truncate -s ${size_mb}M "$work/ext4.img"
            mkfs.ext4 -q -F -N $((files + 10000)) "$work/ext4.img"
            fuse2fs "$work/ext4.img" "$work/ext4" -o fakeroot >/dev/null 2>&1 ;;
        plain) ;;
        *) echo "bench-create-curve: unknown side $side (gfs2, ext4, plain)" >&2; exit 2 ;;
    esac
    mkdir "$work/$side/d"
    echo "$side: creating $files files ($(cut -d' ' -f1-3 /proc/loadavg) load)" >&2
    counts=()
    prev_c=0 prev_t=0
    while read -r c t total; do
        T[$c,$side]=$t
        A[$c,$side]=$(echo "$total $prev_t $c $prev_c" | awk '{ printf "%.4f", ($1 - $2) * 1000 / ($3 - $4) }')
        prev_c=$c prev_t=$total
        counts+=("$c")
        echo "  $side $c: ${t}s for the last 1,000, ${total}s in all" >&2
    done < <("$work/creates" "$work/$side/d" "$files")
    case $side in gfs2|ext4) fusermount3 -u "$work/$side" ;; esac
done

printf '%-10s' files; for side in $sides; do printf ' %16s %16s' "$side ms/1000" "avg since prev"; done; echo
for c in "${counts[@]}"; do
    printf '%-10s' "$c"
    for side in $sides; do
        printf ' %16.1f %16.1f' "$(echo "${T[$c,$side]}" | awk '{ print $1 * 1000 }')" \
            "$(echo "${A[$c,$side]}" | awk '{ print $1 * 1000 }')"
    done
    echo
done
first=${counts[0]}; last=${counts[${#counts[@]}-1]}
printf '%-10s' last/first
for side in $sides; do
    printf ' %16s %16s' "$(echo "${T[$last,$side]} ${T[$first,$side]}" | awk '{ printf "%.2f", $1 / $2 }')" \
        "$(echo "${A[$last,$side]} ${A[$first,$side]}" | awk '{ printf "%.2f", $1 / $2 }')"
done
echo
echo "(time of the 1,000 creates ending at each count, and the average per 1,000 since the previous count, one directory; load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs)"
