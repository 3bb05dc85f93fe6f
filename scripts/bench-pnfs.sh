#!/usr/bin/env bash
# pNFS benchmark: a Linux NFSv4.1 client's sequential write and read of one file in a qemu TCG
# VM (tests/oracle's NFS client VM), through block layouts (the client moves the data on the
# shared disk itself) versus through the metadata server (no layout driver in the client: all
# data in NFS WRITE/READ), against
#   (a) the kernel nfsd exporting XFS with the block layout (export option pnfs), inside the
#       same VM (client and server on 127.0.0.1, the XFS on the VM's first disk), and
#   (b) gfs2-fuse's NFSv4.1 server on the host (`gfs2-fuse mount IMG MNT -o nfsd=...`), the
#       image attached to the VM as its second disk, reached over qemu's user-mode network.
# Prints MB/s (10^6 bytes/s) and the ratios layouts / MDS.
#
#   scripts/bench-pnfs.sh [--size MiB] [--gfs2-fuse PATH] [--keep]
#
# --size: the file size (default 1024 MiB). --gfs2-fuse: the binary for (b) (default: built
# with cargo in release mode); (b) is skipped, saying so, when its `gfs2-fuse mount --help`
# lists no nfsd= option. Images go in a fresh directory under $BENCH_TMP (default /tmp;
# removed at the end unless --keep). Each side's mountstats op counts are printed as well, so
# a row that was not what it claims (a "layouts" row with READ/WRITE through the server, an
# "MDS" row with LAYOUTGET) shows it. Write timings include the final fsync (conv=fsync: the
# LAYOUTCOMMIT or COMMIT); reads start with the client's caches dropped.
# Needs root (FUSE mount for (b)), python3, and the oracle's packages (qemu, busybox-static,
# nfs-common, nfs-kernel-server, xfsprogs, tcpdump, corosync, dlm-controld: scripts/test.sh
# installs them). Exit status: 0 done, 1 a step failed, 2 bad usage.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
size=1024
fuse_bin=
keep=
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while (($#)); do
    case $1 in
        --size) size=${2:?}; shift 2 ;;
        --gfs2-fuse) fuse_bin=${2:?}; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) usage ;;
        *) echo "bench-pnfs: unknown argument $1" >&2; usage ;;
    esac
done
[[ $size =~ ^[1-9][0-9]*$ ]] || { echo "bench-pnfs: --size wants MiB (a positive integer)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "bench-pnfs: python3 not installed" >&2; exit 1; }
: "${CARGO_TARGET_DIR:=$root/target}"
export CARGO_TARGET_DIR
cargo build -q -p gfs2-oracle --bin gfs2-oracle-vm --manifest-path "$root/Cargo.toml"
oracle=$CARGO_TARGET_DIR/debug/gfs2-oracle-vm
if [[ -z $fuse_bin ]]; then
    cargo build --release -q -p gfs2-fuse --manifest-path "$root/Cargo.toml"
    fuse_bin=$CARGO_TARGET_DIR/release/gfs2-fuse
fi
[[ -x $fuse_bin ]] || { echo "bench-pnfs: $fuse_bin is not an executable" >&2; exit 2; }
ours=1
if ! "$fuse_bin" mount --help 2>&1 | grep -q 'nfsd='; then
    ours=
    echo "bench-pnfs: $fuse_bin mount --help lists no nfsd= option: skipping (b), our server" >&2
fi

work=$(mktemp -d "${BENCH_TMP:-/tmp}/bench-pnfs.XXXXXX")
mnt=$work/fuse
fuse_pid=
cleanup() {
    if [[ -n $fuse_pid ]]; then
        if mountpoint -q "$mnt"; then umount "$mnt" 2>/dev/null || umount -l "$mnt" || true; fi
        kill "$fuse_pid" 2>/dev/null || true
        wait "$fuse_pid" 2>/dev/null || true
    fi
    [[ -n $keep ]] && echo "bench-pnfs: kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$mnt"
# Room for one file per mode plus the filesystems' own metadata and journals.
disk_mb=$((2 * size + 768))
truncate -s "${disk_mb}M" "$work/xfs.img" "$work/gfs2.img"

port=
if [[ -n $ours ]]; then
    mkfs.gfs2 -O -p lock_nolock -j 1 "$work/gfs2.img" >/dev/null
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$fuse_bin" mount "$work/gfs2.img" "$mnt" -f -o "nfsd=127.0.0.1:$port" > "$work/fuse.log" 2>&1 &
    fuse_pid=$!
    for _ in $(seq 300); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null && break
        kill -0 "$fuse_pid" 2>/dev/null || { cat "$work/fuse.log" >&2; echo "bench-pnfs: gfs2-fuse exited" >&2; exit 1; }
        sleep 0.1
    done
fi

# The VM side: one function per measurement, one script per step.
cat > "$work/lib.sh" <<EOF
SIZE=$size
EOF
cat >> "$work/lib.sh" <<'EOF'
now() { cut -d' ' -f1 /proc/uptime; }
# bench SERVER PORT NAME: mount, write SIZE MiB (fsync'd), drop caches, read it back, print
# "BENCH NAME write_s read_s LAYOUTGET GETDEVICEINFO LAYOUTCOMMIT WRITE READ", unmount.
bench() {
    nfs_mount "$1" "$2" / /mnt/nfs || return 1
    local t0 t1 t2 t3 ops
    t0=$(now)
    dd if=/dev/zero of=/mnt/nfs/bench.$3 bs=1M count=$SIZE conv=fsync 2>/dev/null || return 1
    t1=$(now)
    echo 3 > /proc/sys/vm/drop_caches
    t2=$(now)
    dd if=/mnt/nfs/bench.$3 of=/dev/null bs=1M 2>/dev/null || return 1
    t3=$(now)
    nfs_ops /mnt/nfs > /tmp/ops.$3
    rm -f /mnt/nfs/bench.$3
    umount /mnt/nfs || return 1
    ops=/tmp/ops.$3
    op() { awk -v o="$1" '$1 == o {print $2}' "$ops"; }
    echo "BENCH $3 $(awk -v a=$t0 -v b=$t1 'BEGIN{print b-a}') $(awk -v a=$t2 -v b=$t3 'BEGIN{print b-a}')" \
         "$(op LAYOUTGET) $(op GETDEVICEINFO) $(op LAYOUTCOMMIT) $(op WRITE) $(op READ)"
}
EOF
steps=("$work/s-setup.sh" "$work/s-a-layout.sh" "$work/s-a-mds.sh")
{ cat "$work/lib.sh"; echo 'nfs_kernel_server /dev/vda && nfs_blkmapd'; } > "$work/s-setup.sh"
{ cat "$work/lib.sh"; echo 'bench 127.0.0.1 2049 nfsd-layouts'; } > "$work/s-a-layout.sh"
# Without the block layout driver the client asks for no layouts: I/O through the MDS.
{ cat "$work/lib.sh"; echo 'rmmod blocklayoutdriver && bench 127.0.0.1 2049 nfsd-mds'; } > "$work/s-a-mds.sh"
if [[ -n $ours ]]; then
    { cat "$work/lib.sh"; echo "bench 10.0.2.2 $port ours-mds"; } > "$work/s-b-mds.sh"
    { cat "$work/lib.sh"; echo "insmod /mods/blocklayoutdriver.ko && bench 10.0.2.2 $port ours-layouts"; } > "$work/s-b-layout.sh"
    steps+=("$work/s-b-mds.sh" "$work/s-b-layout.sh")
fi
echo "bench-pnfs: $size MiB per file; VM under TCG; this takes minutes" >&2
"$oracle" nfs --memory 1536 --disk "$work/xfs.img" --disk "$work/gfs2.img" "${steps[@]}" \
    | tee "$work/out.txt" | grep '^BENCH' || { echo "bench-pnfs: the VM run failed" >&2; exit 1; }

# Our side must have left a consistent filesystem: unmount, then gfs2-utils' fsck.
fsck_rc=0
if [[ -n $ours ]]; then
    "$fuse_bin" umount "$mnt" || umount "$mnt"
    wait "$fuse_pid" || true
    fuse_pid=
    fsck.gfs2 -n "$work/gfs2.img" > "$work/fsck.txt" 2>&1 || fsck_rc=$?
fi

python3 - "$size" "$work/out.txt" "${ours:+ours}" <<'PY'
import sys
size, out, ours = int(sys.argv[1]), sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""
rows = {}
for l in open(out):
    w = l.split()
    if w and w[0] == "BENCH":
        rows[w[1]] = w[2:]
mb = size * 1048576 / 1e6
def rate(s):
    s = float(s)
    return mb / s if s > 0 else float("inf")
print(f"\n{size} MiB sequential, client in a TCG VM; MB/s (10^6 B/s)")
print(f"{'side':<14} {'write':>9} {'read':>9}   LAYOUTGET GETDEVINFO LAYOUTCOMMIT WRITE READ")
for name, r in rows.items():
    print(f"{name:<14} {rate(r[0]):9.1f} {rate(r[1]):9.1f}   " + " ".join(f"{x:>9}" for x in r[2:]))
print()
for name, r in rows.items():
    lg, wr, rd = (int(x) if x.isdigit() else 0 for x in (r[2], r[5], r[6]))
    if name.endswith("-layouts") and (lg == 0 or wr or rd):
        print(f"NOTE: {name}: LAYOUTGET {lg}, WRITE {wr}, READ {rd}: data went through the MDS, "
              "so its ratio is no layout figure")
    if name.endswith("-mds") and lg:
        print(f"NOTE: {name}: {lg} LAYOUTGETs on a row meant to be without layouts")
for srv in ["nfsd"] + (["ours"] if ours else []):
    l, m = rows.get(f"{srv}-layouts"), rows.get(f"{srv}-mds")
    if l and m:
        print(f"{srv}: layouts / MDS  write {rate(l[0]) / rate(m[0]):.2f}x  read {rate(l[1]) / rate(m[1]):.2f}x")
if ours and "ours-layouts" in rows and "nfsd-layouts" in rows:
    l, k = rows["ours-layouts"], rows["nfsd-layouts"]
    print(f"ours / kernel nfsd, layouts: write {rate(l[0]) / rate(k[0]):.2f}x  read {rate(l[1]) / rate(k[1]):.2f}x")
if ours and "ours-mds" in rows and "nfsd-mds" in rows:
    l, k = rows["ours-mds"], rows["nfsd-mds"]
    print(f"ours / kernel nfsd, MDS:     write {rate(l[0]) / rate(k[0]):.2f}x  read {rate(l[1]) / rate(k[1]):.2f}x")
PY
if [[ -n $ours ]]; then
    if ((fsck_rc)); then
        echo "bench-pnfs: fsck.gfs2 -n on our image exited $fsck_rc:" >&2
        cat "$work/fsck.txt" >&2
        exit 1
    fi
    echo "fsck.gfs2 -n on our image: clean"
fi
