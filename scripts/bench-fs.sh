#!/usr/bin/env bash
# Filesystem benchmark: the same workloads through our gfs2-fuse mount, through fuse2fs on an
# ext4 image of the same size, through a passthrough FUSE daemon on gfs2-fuse's own fuser
# settings (examples/fuse_passthrough.rs: the cost of FUSE itself) and on a plain directory, in
# one run; prints times (the best of ROUNDS rounds, the sides taken in alternating order) and the
# ratios fuse2fs/ours (above 1.00: ours is faster) and passthrough/ours (ours as a fraction of the
# FUSE anchor: 1.00 = as fast as FUSE allows).
#   [ROUNDS=3] [OPS="randread randwrite ..."] [BASE_BIN=path/to/gfs2-fuse] scripts/bench-fs.sh [WORKDIR] [SIZE_MB_FOR_SEQUENTIAL]
# BASE_BIN adds a fifth side: another gfs2-fuse build (e.g. main's release binary) on an image of
# its own, timed in the same rounds, with the ratio base/ours (above 1.00: this build is faster).
# GFS2_OPTS and BASE_OPTS are mount options for the two (e.g. GFS2_OPTS=io_uring=on with
# BASE_BIN the same binary: FUSE over io_uring against /dev/fuse, after
# `echo Y > /sys/module/fuse/parameters/enable_uring`).
# OPS picks workloads (default all, in the order below; stat and unlink need create, the reads
# need seqwrite); without list or relist the 100,000-entry directory is not made.
# Workloads: untar of /usr/include with fsync, sequential write with fsync at the end, sequential
# read (cold FUSE cache), random 4 KiB writes and reads, create + unlink of 10,000 files, stat of
# 10,000 files, listing a 100,000-entry directory (first after mounting, and again on the live
# mount). Needs root (FUSE mounts, dropping caches) and the packages fuse3, fuse2fs, e2fsprogs.
# The machine's load average is printed before and after: figures from a loaded machine are
# noisy, the ratios (same round, sides alternating) much less so.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/bench-fs.XXXXXX)}
seq_mb=${2:-1024}
rounds=${ROUNDS:-3}
: "${CARGO_TARGET_DIR:=$root/target}"
cargo build --release -q -p gfs2-fuse -p gfs2-mkfs --manifest-path "$root/Cargo.toml"
cargo build --release -q --example fuse_passthrough --example fuse_floor --manifest-path "$root/Cargo.toml"
bin=$CARGO_TARGET_DIR/release
for t in fuse2fs mkfs.ext4 fusermount3 python3 cc; do
    command -v $t >/dev/null || { echo "bench-fs: $t not installed" >&2; exit 1; }
done
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
size_mb=$((seq_mb * 3 + 2048))
sides="gfs2 ext4 pass plain"
base_bin=${BASE_BIN:-}
if [ -n "$base_bin" ]; then
    [ -x "$base_bin" ] || { echo "bench-fs: BASE_BIN $base_bin is not an executable" >&2; exit 1; }
    sides="gfs2 base ext4 pass plain"
fi
mkdir -p "$work"/{gfs2,base,ext4,pass,passback,plain}
pass_pid=
cleanup() {
    fusermount3 -u "$work/gfs2" 2>/dev/null || true
    fusermount3 -u "$work/base" 2>/dev/null || true
    fusermount3 -u "$work/ext4" 2>/dev/null || true
    fusermount3 -u "$work/pass" 2>/dev/null || true
    [ -n "$pass_pid" ] && wait "$pass_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
truncate -s ${size_mb}M "$work/gfs2.img" "$work/ext4.img"
"$bin/mkfs-gfs2" -O -q -p lock_nolock -j 1 "$work/gfs2.img" >/dev/null
if [ -n "$base_bin" ]; then cp --sparse=always "$work/gfs2.img" "$work/base.img"; fi
mkfs.ext4 -q -F "$work/ext4.img"

mount_all() {
    "$bin/gfs2-fuse" mount "$work/gfs2.img" "$work/gfs2" ${GFS2_OPTS:+-o "$GFS2_OPTS"}
    if [ -n "$base_bin" ]; then "$base_bin" mount "$work/base.img" "$work/base" ${BASE_OPTS:+-o "$BASE_OPTS"}; fi
    fuse2fs "$work/ext4.img" "$work/ext4" -o fakeroot >/dev/null 2>&1
    "$bin/examples/fuse_passthrough" "$work/passback" "$work/pass" &
    pass_pid=$!
    local i
    for i in $(seq 100); do mountpoint -q "$work/pass" && break; sleep 0.05; done
    mountpoint -q "$work/pass" || { echo "bench-fs: passthrough did not mount" >&2; exit 1; }
}
umount_all() {
    fusermount3 -u "$work/gfs2"; fusermount3 -u "$work/ext4"; fusermount3 -u "$work/pass"
    if [ -n "$base_bin" ]; then fusermount3 -u "$work/base"; fi
    wait "$pass_pid" || true
    pass_pid=
    sleep 0.5
}
drop() { sync; [ -w /proc/sys/vm/drop_caches ] && echo 3 > /proc/sys/vm/drop_caches || true; }
# Before a read workload: remount (the FUSE mounts forget their page cache), then read both
# images and the plain directories' files once so that every side's storage is equally warm:
# what is timed is the filesystem, not this machine's disk.
fresh() {
    umount_all; drop
    cat "$work/gfs2.img" "$work/ext4.img" > /dev/null
    if [ -n "$base_bin" ]; then cat "$work/base.img" > /dev/null; fi
    find "$work/passback" "$work/plain" -size +1M -type f -exec cat {} + > /dev/null
    find "$work/passback" "$work/plain" > /dev/null
    mount_all
}

# The workloads, in Python for precise timing and identical syscalls on every side.
cat > "$work/w.py" <<'PY'
import os, sys, time, random
op, d, mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = time.perf_counter()
B = 1 << 20
if op == "seqwrite":
    buf = os.urandom(B)
    fd = os.open(f"{d}/big", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for _ in range(mb):
        os.write(fd, buf)
    os.fsync(fd); os.close(fd)
elif op == "seqread":
    fd = os.open(f"{d}/big", os.O_RDONLY)
    while os.read(fd, B):
        pass
    os.close(fd)
elif op == "randwrite":
    fd = os.open(f"{d}/big", os.O_WRONLY)
    r = random.Random(1); buf = os.urandom(4096); n = mb * 256
    for _ in range(4000):
        os.pwrite(fd, buf, r.randrange(n) * 4096)
    os.fsync(fd); os.close(fd)
elif op == "randread":
    fd = os.open(f"{d}/big", os.O_RDONLY)
    r = random.Random(2); n = mb * 256
    for _ in range(4000):
        os.pread(fd, 4096, r.randrange(n) * 4096)
    os.close(fd)
elif op == "create":
    os.mkdir(f"{d}/c")
    for i in range(10000):
        os.close(os.open(f"{d}/c/f{i}", os.O_WRONLY | os.O_CREAT, 0o644))
elif op == "stat":
    for i in range(10000):
        os.stat(f"{d}/c/f{i}")
elif op == "unlink":
    for i in range(10000):
        os.unlink(f"{d}/c/f{i}")
    os.rmdir(f"{d}/c")
elif op == "mkbig":
    os.mkdir(f"{d}/l")
    for i in range(100000):
        os.close(os.open(f"{d}/l/entry_{i}", os.O_WRONLY | os.O_CREAT, 0o644))
elif op == "untar":
    import subprocess
    os.mkdir(f"{d}/src")
    subprocess.run(["tar", "-xf", sys.argv[4], "-C", f"{d}/src"], check=True)
    fd = os.open(f"{d}/src", os.O_RDONLY); os.fsync(fd); os.close(fd)
print(f"{time.perf_counter() - t:.3f}")
PY

# Listing is timed by a compiled getdents64 loop with glibc's 32 KiB buffer: in Python the
# interpreter's per-entry cost would hide the filesystems' difference.
cc -O2 -o "$work/lister" "$root/scripts/lister.c"

declare -A T
# Keep the smaller of the stored and the new time of (op, side).
keep() { # op side t
    if [ -z "${T[$1,$2]:-}" ] || awk -v a="$3" -v b="${T[$1,$2]}" 'BEGIN { exit !(a < b) }'; then
        T[$1,$2]=$3
    fi
}
order() { # round: the sides, reversed every other round
    if [ $(($1 % 2)) = 1 ]; then echo $sides; else echo $sides | tr ' ' '\n' | tac | tr '\n' ' '; fi
}
run() { # op round
    local op=$1 side t
    case $op in seqread|randread|stat|list) fresh;; esac
    for side in $(order "$2"); do
        case $op in
            list|relist) t=$("$work/lister" "$work/$side/l" 100002) ;;
            *) t=$(python3 "$work/w.py" "$op" "$work/$side" "$seq_mb" "$work/src.tar") ;;
        esac
        keep "$op" "$side" "$t"
        # The next round unpacks into an empty place again (untimed).
        if [ "$op" = untar ]; then rm -rf "$work/$side/src"; fi
    done
}
# A real source tree to unpack: the system's C headers.
tar -cf "$work/src.tar" -C /usr include 2>/dev/null
ops=${OPS:-untar seqwrite seqread randread randwrite create stat unlink list relist}
mount_all
case " $ops " in *" list "*|*" relist "*)
    for side in $sides; do python3 "$work/w.py" mkbig "$work/$side" 0 > /dev/null; done ;;
esac
for r in $(seq "$rounds"); do
    for op in $ops; do run "$op" "$r"; done
done
umount_all

# The floor: a FUSE daemon with no disk at all serving 100,000 names from memory
# (examples/fuse_floor.rs), with the kernel's directory cache (as ours) and without (as fuse2fs).
mkdir -p "$work/floor"
floor() { # [--cache-dir]: "first again" in seconds
    "$CARGO_TARGET_DIR/release/examples/fuse_floor" "$work/floor" 100000 "$@" &
    local pid=$! i
    for i in $(seq 100); do mountpoint -q "$work/floor" && break; sleep 0.05; done
    local a b
    a=$("$work/lister" "$work/floor/l" 100000); b=$("$work/lister" "$work/floor/l" 100000)
    fusermount3 -u "$work/floor"; wait $pid || true
    echo "$a $b"
}
best3() { # best3 [--cache-dir]: the best "first again" of three mounts
    local r1=() r2=() a b i
    for i in 1 2 3; do read -r a b < <(floor "$@"); r1+=("$a"); r2+=("$b"); done
    echo "$(printf '%s\n' "${r1[@]}" | sort -g | head -1) $(printf '%s\n' "${r2[@]}" | sort -g | head -1)"
}
fl_c1=- fl_c2=- fl_n1=- fl_n2=-
case " $ops " in *" list "*|*" relist "*)
    read -r fl_c1 fl_c2 < <(best3 --cache-dir)
    read -r fl_n1 fl_n2 < <(best3) ;;
esac

ratio() { echo "$1 $2" | awk '{ if ($2 > 0) printf "%.2f", $1 / $2; else print "n/a" }'; }
printf '%-10s %10s %10s %11s %10s %13s %10s' workload gfs2-fuse fuse2fs passthrough plain fuse2fs/ours pass/ours
if [ -n "$base_bin" ]; then printf ' %10s %10s' base base/ours; fi
echo
for op in $ops; do
    g=${T[$op,gfs2]}; e=${T[$op,ext4]}; p=${T[$op,pass]}; d=${T[$op,plain]}
    printf '%-10s %9ss %9ss %10ss %9ss %13s %10s' "$op" "$g" "$e" "$p" "$d" "$(ratio "$e" "$g")" "$(ratio "$p" "$g")"
    if [ -n "$base_bin" ]; then b=${T[$op,base]}; printf ' %9ss %10s' "$b" "$(ratio "$b" "$g")"; fi
    echo
done
echo "(untar: /usr/include, $(tar -tf "$work/src.tar" | wc -l) entries; sequential size ${seq_mb} MiB; random I/O: 4000 x 4 KiB; metadata: 10,000 files; list: 100,000 entries;"
echo " best of $rounds rounds, sides in alternating order; reads and the first list start from freshly mounted filesystems on page-cache-warm storage;"
echo " relist: the same listing again on the live mount; list and relist by a getdents64 loop;"
echo " pass/ours: the passthrough FUSE daemon's time over ours, 1.00 = ours as fast as FUSE allows)"
echo "floor, a diskless FUSE daemon listing 100,000 names: with the kernel's directory cache first ${fl_c1}s, again ${fl_c2}s;"
echo " without it first ${fl_n1}s, again ${fl_n2}s"
echo "load average: before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"
