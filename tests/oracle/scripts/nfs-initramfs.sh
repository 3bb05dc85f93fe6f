#!/bin/bash
# Build the NFS layer of the kernel oracle's initramfs: a gzip'd cpio archive
# appended to the base (scripts/initramfs.sh) and cluster
# (scripts/cluster-initramfs.sh: network and virtio-serial modules,
# /lib/cluster.sh's command loop) layers, for the pNFS client VM
# (src/nfs.rs). It adds the Debian kernel's NFS client with the block layout
# driver and device-mapper, the kernel nfsd and XFS (the block-layout
# reference server), this machine's nfs-common/nfs-kernel-server tools
# (mount.nfs, blkmapd, rpc.nfsd, rpc.mountd, exportfs), mkfs.xfs and tcpdump
# with their shared libraries, /nfs-init (booted with rdinit=) and
# /lib/nfs.sh.
# usage: nfs-initramfs.sh KERNEL_ROOT OUT.cpio.gz
set -euo pipefail
KROOT=$1; OUT=$2
HERE=$(cd "$(dirname "$0")" && pwd)
KV=$(ls "$KROOT/lib/modules" | head -1)
K=$KROOT/lib/modules/$KV/kernel
R=$(mktemp -d)
trap 'rm -rf "$R"' EXIT
mkdir -p "$R"/{mods,usr/sbin,lib/x86_64-linux-gnu,etc,var/lib/nfs/v4recovery,run/rpc_pipefs,proc/fs/nfsd}
# Modules with their dependencies, in load order. The client's modules are
# loaded at boot (nfs-order); the server's only when a scenario starts the
# kernel nfsd (nfsd-order), as they cost boot time under TCG.
. "$HERE/modules.sh"
# Modules the lower layers also carry are copied again (the same files); the
# init loads each module once.
for m in nfsv4 blocklayoutdriver dm_mod; do add $m; done
client=("${order[@]}")
order=()
for m in nfsd xfs; do add $m; done
server=("${order[@]}")
# The kernel's SCSI target (LIO: iblock backstore, iSCSI fabric, tcm_loop
# with sd_mod for a local initiator), loaded by nfs_lio_target: a LUN with
# persistent reservations for the SCSI layout.
order=()
seen=()
for m in target_core_iblock iscsi_target_mod tcm_loop sd_mod; do add $m; done
lio=("${order[@]}")
for n in "${client[@]}" "${server[@]}" "${lio[@]}"; do cp "${path[$n]}" "$R/mods/$n.ko"; done
echo "${client[*]}" > "$R/mods/nfs-order"
echo "${server[*]}" > "$R/mods/nfsd-order"
echo "${lio[*]}" > "$R/mods/lio-order"
for b in mount.nfs blkmapd rpc.nfsd rpc.mountd exportfs mkfs.xfs tcpdump; do
    p=$(command -v $b || true)
    [[ -n $p ]] || { echo "$b not found (apt-get install nfs-common nfs-kernel-server xfsprogs tcpdump)" >&2; exit 1; }
    cp "$p" "$R/usr/sbin/"
done
ln -s mount.nfs "$R/usr/sbin/mount.nfs4"
for l in $(ldd "$R"/usr/sbin/* | awk '/=>/ {print $3}' | sort -u); do
    cp -L "$l" "$R/lib/x86_64-linux-gnu/"
done
# libtirpc reads /etc/netconfig; nfs-utils read /etc/nfs.conf (optional).
cp /etc/netconfig "$R/etc/netconfig"
printf '[general]\npipefs-directory=/run/rpc_pipefs\n' > "$R/etc/nfs.conf"
# rpc.nfsd resolves the service name "nfs".
printf 'nfs\t\t2049/tcp\nnfs\t\t2049/udp\n' > "$R/etc/services"
echo 'root:x:0:0:root:/:/bin/sh' > "$R/etc/passwd"
echo 'root:x:0:' > "$R/etc/group"
cp "$HERE/nfs-init" "$R/nfs-init"
chmod +x "$R/nfs-init"
cp "$HERE/nfs.sh" "$R/lib/nfs.sh"
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc --reproducible 2>/dev/null | gzip -1 -n) > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
