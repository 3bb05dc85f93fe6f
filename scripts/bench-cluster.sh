#!/usr/bin/env bash
# Cluster benchmark: several gfs2-fuse nodes in one process on the in-process lock manager
# (lock_mem), against one node, a lock_nolock mount and a plain directory, in one run; prints
# rates and ratios.
#   scripts/bench-cluster.sh [GLOCK_SECS] [PINGPONG_SECS] [CREATE_SECS]   (default 2 5 5: ~2 min)
# (or GLOCK_SECS= PINGPONG_SECS= CREATE_SECS= in the environment). The images, mounts and the
# plain directory go in a fresh directory under $BENCH_TMP (default /tmp): BENCH_TMP=/dev/shm
# takes the disk's fdatasync latency out of the figures (every log flush syncs the image).
# 1. Glock acquire + release through the library (examples/glock_bench.rs): a cached glock, a
#    fresh resource name each time (a lock-manager request), and two nodes taking one glock EX
#    in turn (every take demotes the other node); lock_mem against lock_nolock.
# 2. One file ping-ponged between two nodes through their FUSE mounts: two threads, thread i
#    writes 4 KiB at offset 0 through mount i and reads it back, strictly in turn (each read
#    must see its own write) or freely (both must make progress); against both threads on one
#    node's mount, on a lock_nolock mount and on a plain directory.
# 3. Creates of empty files in disjoint directories by k = 1, 2, 3 processes, process i on node
#    i's mount; against k processes on one node, on a lock_nolock mount and on a plain directory.
#    The k-node side runs CREATE_REPEAT times (default 3; the median counts) and reports how busy
#    the machine's CPUs were meanwhile: once they are saturated more nodes cannot add creates.
# Needs root (fuseblk mounts) and python3.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
glock_secs=${1:-${GLOCK_SECS:-2}}
pp_secs=${2:-${PINGPONG_SECS:-5}}
cr_secs=${3:-${CREATE_SECS:-5}}
cr_repeat=${CREATE_REPEAT:-3}
: "${CARGO_TARGET_DIR:=$root/target}"
export CARGO_TARGET_DIR
command -v python3 >/dev/null || { echo "bench-cluster: python3 not installed" >&2; exit 1; }
cargo build --release -q -p gfs2-fuse -p gfs2-mkfs --manifest-path "$root/Cargo.toml"
cargo build --release -q --example glock_bench --manifest-path "$root/Cargo.toml"
bin=$CARGO_TARGET_DIR/release
work=$(mktemp -d "${BENCH_TMP:-/tmp}/bench-cluster.XXXXXX")
mkdir -p "$work"/{m1,m2,m3,single,plain}
cleanup() {
    # Every mount, even after a failure; a node that cannot be unmounted cleanly is detached.
    local m
    for m in m1 m2 m3 single; do
        if mountpoint -q "$work/$m"; then
            umount "$work/$m" 2>/dev/null || umount -l "$work/$m" 2>/dev/null || true
        fi
    done
    rm -rf "$work"
}
trap cleanup EXIT
truncate -s 4G "$work/cluster.img" "$work/single.img"
"$bin/mkfs-gfs2" -O -q -p lock_nolock -j 3 "$work/cluster.img" >/dev/null
"$bin/mkfs-gfs2" -O -q -p lock_nolock -j 1 "$work/single.img" >/dev/null

# 1. The library's glock figures, on the cluster image before it is mounted.
declare -A G
while read -r k v; do G[$k]=$v; done < <("$bin/examples/glock_bench" "$work/cluster.img" "$glock_secs")

"$bin/gfs2-fuse" mount "$work/cluster.img" "$work/m1" "$work/m2" "$work/m3" -o lockproto=lock_mem
"$bin/gfs2-fuse" mount "$work/single.img" "$work/single"

# The workloads, in Python for precise timing and the same syscalls on every side.
cat > "$work/w.py" <<'PY'
import os, sys, time, threading, multiprocessing as mp
op, secs, args = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
if op in ("strict", "free"):
    # Two threads on one file, thread i through path i; an op is a 4 KiB pwrite at offset 0
    # and a pread of it. strict: in turn (a condition variable passes the turn), and each
    # read must return what the same thread just wrote; free: each as fast as it can.
    fds = [os.open(p, os.O_RDWR | os.O_CREAT, 0o644) for p in args]
    counts, bad = [0, 0], [0, 0]
    cond, turn, stop = threading.Condition(), [0], [False]
    def worker(i):
        fd, n, b = fds[i], 0, 0
        while True:
            if op == "strict":
                with cond:
                    while turn[0] != i and not stop[0]:
                        cond.wait()
                    if stop[0]:
                        break
            elif stop[0]:
                break
            buf = f"{i}:{n}:".encode().ljust(4096, b".")
            os.pwrite(fd, buf, 0)
            if os.pread(fd, 4096, 0) != buf and op == "strict":
                b += 1
            n += 1
            if op == "strict":
                with cond:
                    turn[0] = 1 - i
                    cond.notify_all()
        counts[i], bad[i] = n, b
    ts = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    t = time.perf_counter()
    for x in ts:
        x.start()
    time.sleep(secs)
    with cond:
        stop[0] = True
        cond.notify_all()
    for x in ts:
        x.join()
    el = time.perf_counter() - t
    for fd in fds:
        os.close(fd)
    print(f"{sum(counts) / el:.0f} {counts[0]} {counts[1]} {sum(bad)}")
elif op == "create":
    # One process per directory (processes, not threads: the interpreter's lock would
    # serialise the plain directory's side); each creates empty files (O_CREAT|O_EXCL, close)
    # in its directory for `secs`; all start together. Prints the aggregate rate, then the
    # count of each process.
    def worker(d, start, q):
        os.makedirs(d, exist_ok=True)
        start.wait()
        end, n = time.perf_counter() + secs, 0
        while time.perf_counter() < end:
            for _ in range(16):
                os.close(os.open(f"{d}/f{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                n += 1
        q.put((d, n))
    start, q = mp.Barrier(len(args) + 1), mp.Queue()
    ps = [mp.Process(target=worker, args=(d, start, q)) for d in args]
    for p in ps:
        p.start()
    start.wait()
    t = time.perf_counter()
    got = dict(q.get() for _ in ps)
    el = time.perf_counter() - t
    for p in ps:
        p.join()
    print(f"{sum(got.values()) / el:.0f} " + " ".join(str(got[d]) for d in args))
PY
w() { python3 "$work/w.py" "$@"; }

# 2. Ping-pong of one file. Sides: two nodes (mount 1 and 2), one node (both threads on mount
# 1, another file: no glock traffic), lock_nolock, plain directory.
declare -A P
for v in strict free; do
    P[$v,two]=$(w $v "$pp_secs" "$work/m1/pp" "$work/m2/pp")
    P[$v,one]=$(w $v "$pp_secs" "$work/m1/pq" "$work/m1/pq")
    P[$v,nolock]=$(w $v "$pp_secs" "$work/single/pp" "$work/single/pp")
    P[$v,plain]=$(w $v "$pp_secs" "$work/plain/pp" "$work/plain/pp")
done

# 3. Creates in disjoint directories, k = 1..3 processes. Sides: process i on node i, all k
# processes on node 1, on lock_nolock, on a plain directory. Fresh directories for every run.
declare -A C
first() { echo "${1%% *}"; }
# The CPU counters of /proc/stat: "busy total" jiffies; the busy share of all CPUs since then.
cpu_busy() { awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat; }
cpu_busy_since() {
    echo "$1 $(cpu_busy)" | awk '{ d = $4 - $2; if (d > 0) printf "%.0f", 100 * ($3 - $1) / d; else print 0 }'
}
# The run with the median aggregate among "rate count..." lines.
median_run() { printf '%s\n' "$@" | sort -n -k1,1 | awk '{ a[NR] = $0 } END { print a[int((NR + 1) / 2)] }'; }
for k in 1 2 3; do
    d_nodes=() d_one=() d_nolock=() d_plain=()
    for i in $(seq 1 $k); do
        d_nodes+=("$work/m$i/n${k}_$i"); d_one+=("$work/m1/o${k}_$i")
        d_nolock+=("$work/single/c${k}_$i"); d_plain+=("$work/plain/c${k}_$i")
    done
    runs=() busy=()
    for r in $(seq 1 "$cr_repeat"); do
        b0=$(cpu_busy)
        runs+=("$(w create "$cr_secs" "${d_nodes[@]/%/_r$r}")")
        busy+=("$(cpu_busy_since "$b0")")
    done
    C[$k,nodes]=$(median_run "${runs[@]}")
    C[$k,busy]=$(median_run "${busy[@]}")
    C[$k,all]=$(for x in "${runs[@]}"; do first "$x"; done | paste -sd/)
    C[$k,one]=$(w create "$cr_secs" "${d_one[@]}")
    C[$k,nolock]=$(w create "$cr_secs" "${d_nolock[@]}")
    C[$k,plain]=$(w create "$cr_secs" "${d_plain[@]}")
done

# Unmount (each returns once its node left the disk clean) before printing: a failure shows.
t0=$(date +%s.%N)
for m in m1 m2 m3 single; do umount "$work/$m"; done
t_umount=$(echo "$t0 $(date +%s.%N)" | awk '{ printf "%.1f", $2 - $1 }')

ratio() { echo "$1 $2" | awk '{ if ($2 > 0) printf "%.2f", $1 / $2; else print "n/a" }'; }

echo "images and plain directory on $(stat -f -c %T "$work") ($work), $(nproc) cores"
echo
echo "1. glock acquire + release, library (examples/glock_bench.rs), ${glock_secs} s each"
printf '%-34s %12s %12s %10s\n' figure lock_mem/s lock_nolock/s mem/nolock
printf '%-34s %12s %12s %10s\n' "a. cached glock, one node" "${G[local_mem]}" "${G[local_nolock]}" "$(ratio "${G[local_mem]}" "${G[local_nolock]}")"
printf '%-34s %12s %12s %10s\n' "b. fresh name: a manager request" "${G[fresh_mem]}" "${G[fresh_nolock]}" "$(ratio "${G[fresh_mem]}" "${G[fresh_nolock]}")"
printf '%-34s %12s %12s %10s\n' "c. ping-pong EX between 2 nodes" "${G[pingpong_mem]}" "-" "-"
echo "   (c: takes/s of both nodes together, each forcing the other node's demotion;"
echo "    one take costs $(ratio "${G[fresh_mem]}" "${G[pingpong_mem]}") uncontended lock_mem requests)"
echo
echo "2. one file, two threads, 4 KiB pwrite + pread at offset 0 (ops/s), ${pp_secs} s each"
printf '%-8s %10s %10s %10s %10s %10s %10s\n' mode "2 nodes" "1 node" lock_nolock plain 2n/1n 2n/plain
for v in strict free; do
    a=$(first "${P[$v,two]}"); b=$(first "${P[$v,one]}")
    c=$(first "${P[$v,nolock]}"); d=$(first "${P[$v,plain]}")
    printf '%-8s %10s %10s %10s %10s %10s %10s\n' $v "$a" "$b" "$c" "$d" "$(ratio "$a" "$b")" "$(ratio "$a" "$d")"
done
for v in strict free; do
    for s in two one nolock plain; do
        read -r _ n0 n1 bad <<<"${P[$v,$s]}"
        case $s in two) what="node 1 / node 2";; *) what="thread 1 / thread 2";; esac
        printf '   %-6s %-7s ops of %s: %s / %s' $v $s "$what" "$n0" "$n1"
        [ "$v" = strict ] && printf ', reads not seeing their own write: %s' "$bad"
        echo
    done
done
read -r _ n0 n1 _ <<<"${P[free,two]}"
if [ "$n0" -gt 0 ] && [ "$n1" -gt 0 ]; then
    echo "   free, 2 nodes: both nodes made progress"
else
    echo "   free, 2 nodes: A NODE MADE NO PROGRESS"
fi
echo
echo "3. creates of empty files in disjoint directories, k processes (creates/s), ${cr_secs} s each"
printf '%-3s %10s %10s %11s %10s %12s %10s %6s   %s\n' k "k nodes" "1 node" lock_nolock plain nodes/nolock nodes/1n "cpu%" "per node (k nodes)"
for k in 1 2 3; do
    a=$(first "${C[$k,nodes]}"); b=$(first "${C[$k,one]}")
    c=$(first "${C[$k,nolock]}"); d=$(first "${C[$k,plain]}")
    printf '%-3s %10s %10s %11s %10s %12s %10s %6s   %s\n' $k "$a" "$b" "$c" "$d" "$(ratio "$a" "$c")" "$(ratio "$a" "$b")" "${C[$k,busy]}" "${C[$k,nodes]#* }"
done
echo "   (k nodes: the median of $cr_repeat runs, each: ${C[1,all]} / ${C[2,all]} / ${C[3,all]} for k = 1 / 2 / 3;"
echo "    cpu%: how busy all $(nproc) CPUs were during the k-node runs, median)"
c1=$(first "${C[1,nodes]}"); c2=$(first "${C[2,nodes]}"); c3=$(first "${C[3,nodes]}")
if [ "$c2" -gt "$c1" ] && [ "$c3" -gt "$c2" ]; then
    echo "   aggregate creates grow from 1 to 2 to 3 nodes: yes ($(ratio "$c2" "$c1")x, $(ratio "$c3" "$c1")x)"
elif [ "$c2" -gt "$c1" ] && [ "${C[2,busy]}" -ge 90 ]; then
    echo "   aggregate creates grow from 1 to 2 nodes ($(ratio "$c2" "$c1")x), not to 3 ($(ratio "$c3" "$c1")x): the CPUs were already ${C[2,busy]}% busy with 2 nodes"
else
    echo "   aggregate creates grow from 1 to 2 to 3 nodes: NO (2 nodes $(ratio "$c2" "$c1")x, 3 nodes $(ratio "$c3" "$c1")x of one node)"
fi
echo "   (1 node: all k processes on node 1 of the same lock_mem mount; this machine has $(nproc) cores)"
echo
echo "unmounting the 3 nodes and the lock_nolock mount (clean disks): ${t_umount} s"
