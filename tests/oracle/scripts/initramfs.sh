#!/bin/bash
# Build the base initramfs of the kernel oracle: busybox-static, the GFS2 and
# virtio modules (with their dependencies, in load order), the attr/acl tools
# with their libraries, /init, /lib/oracle.sh and /manifest.sh. The scenario
# is not part of it: the harness appends it as a second cpio archive.
# usage: initramfs.sh KERNEL_ROOT OUT.cpio.gz
# KERNEL_ROOT is an extracted Debian linux-image package.
set -euo pipefail
KROOT=$1; OUT=$2
HERE=$(cd "$(dirname "$0")" && pwd)
KV=$(ls "$KROOT/lib/modules" | head -1)
K=$KROOT/lib/modules/$KV/kernel
R=$(mktemp -d)
trap 'rm -rf "$R"' EXIT
mkdir -p "$R"/{bin,proc,sys,dev,mnt,tmp,lib/x86_64-linux-gnu,lib64,mods,usr/bin}
BB=$(command -v busybox) || { echo "busybox not found (apt-get install busybox-static)" >&2; exit 1; }
cp "$BB" "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
# Modules with their dependencies (from each module's modinfo "depends="),
# in load order.
. "$HERE/modules.sh"
for m in crc32c_generic gfs2 fuse virtio_pci virtio_blk; do add $m; done
for n in "${order[@]}"; do cp "${path[$n]}" "$R/mods/$n.ko"; done
echo "${order[*]}" > "$R/mods/order"
for b in setfattr getfattr setfacl getfacl; do
    p=$(command -v $b) || { echo "$b not found (apt-get install attr acl)" >&2; exit 1; }
    cp "$p" "$R/usr/bin/"
done
for l in $(ldd "$R"/usr/bin/* | awk '/=>/ {print $3}' | sort -u); do
    cp "$l" "$R/lib/x86_64-linux-gnu/"
done
cp /lib64/ld-linux-x86-64.so.2 "$R/lib64/"
cp "$HERE/init" "$R/init"
chmod +x "$R/init"
cp "$HERE/oracle.sh" "$R/lib/oracle.sh"
cp "$HERE/manifest.sh" "$R/manifest.sh"
echo "$KV" > "$R/kernel-version"
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --reproducible 2>/dev/null | gzip -1 -n) > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
