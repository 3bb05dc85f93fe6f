#!/bin/bash
# Build the cluster layer of the kernel oracle's initramfs: a second gzip'd
# cpio archive appended to the base one (scripts/initramfs.sh) for the VMs of
# a qemu cluster (src/cluster.rs). It adds what a cluster node needs on top of
# the base: the network and virtio-serial modules, this machine's corosync and
# dlm_controld with their tools and shared libraries, /cluster-init (booted
# with rdinit=) and /lib/cluster.sh.
# usage: cluster-initramfs.sh KERNEL_ROOT OUT.cpio.gz
set -euo pipefail
KROOT=$1; OUT=$2
HERE=$(cd "$(dirname "$0")" && pwd)
KV=$(ls "$KROOT/lib/modules" | head -1)
K=$KROOT/lib/modules/$KV/kernel
R=$(mktemp -d)
trap 'rm -rf "$R"' EXIT
mkdir -p "$R"/{mods,usr/sbin,lib/x86_64-linux-gnu,etc/corosync,etc/dlm,var/lib/corosync,var/log/cluster,var/run,run}
# Modules with their dependencies, in load order (the init skips those the
# base already loaded). The base has dlm (gfs2 depends on it) and fuse.
. "$HERE/modules.sh"
for m in dlm gfs2 fuse virtio_net virtio_console; do add $m; done
for n in "${order[@]}"; do cp "${path[$n]}" "$R/mods/$n.ko"; done
echo "${order[*]}" > "$R/mods/cluster-order"
# The cluster stack, from this machine's Debian packages (corosync,
# dlm-controld). ldd misses libgcc_s, which glibc dlopens for pthread_cancel.
for b in corosync corosync-cfgtool corosync-quorumtool corosync-cmapctl dlm_controld dlm_tool; do
    p=$(command -v $b || true)
    [[ -n $p ]] || { echo "$b not found (apt-get install corosync dlm-controld)" >&2; exit 1; }
    cp "$p" "$R/usr/sbin/"
done
for l in $(ldd "$R"/usr/sbin/* | awk '/=>/ {print $3}' | sort -u); do
    cp -L "$l" "$R/lib/x86_64-linux-gnu/"
done
gcc_s=$(ls /lib/x86_64-linux-gnu/libgcc_s.so.1 /usr/lib/x86_64-linux-gnu/libgcc_s.so.1 2>/dev/null | head -1)
[[ -n $gcc_s ]] || { echo "libgcc_s.so.1 not found" >&2; exit 1; }
cp -L "$gcc_s" "$R/lib/x86_64-linux-gnu/"
cp "$HERE/cluster-init" "$R/cluster-init"
chmod +x "$R/cluster-init"
cp "$HERE/cluster.sh" "$R/lib/cluster.sh"
# The DLM's misc devices where libdlm looks for them: /dev/misc/.
echo 'dlm.* 0:0 0660 =misc/' > "$R/etc/mdev.conf"
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --reproducible 2>/dev/null | gzip -1 -n) > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
