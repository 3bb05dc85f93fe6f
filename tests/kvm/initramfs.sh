#!/bin/bash
# Build an initramfs that loads GFS2 and runs a workload script against
# /dev/vd[a-z] images, for the kernel cross-check tests.
# usage: initramfs.sh KERNEL_ROOT WORKLOAD OUT.cpio.gz
# KERNEL_ROOT is an extracted Debian linux-image package.
set -euo pipefail
KROOT=$1; W=$2; OUT=$3
KV=$(ls "$KROOT/lib/modules" | head -1)
K=$KROOT/lib/modules/$KV/kernel
R=$(mktemp -d)
trap 'rm -rf "$R"' EXIT
mkdir -p "$R"/{bin,proc,sys,dev,mnt,lib/x86_64-linux-gnu,lib64,mods,usr/bin}
cp /bin/busybox "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
# Modules with their dependencies (from each module's modinfo "depends="),
# in load order.
declare -A path seen
while read -r f; do n=$(basename "$f" .ko); path[${n//-/_}]=$f; done < <(find "$K" -name '*.ko')
order=()
add() {
    local n=${1//-/_}
    [[ -n ${seen[$n]:-} ]] && return
    seen[$n]=1
    local f=${path[$n]:-}
    [[ -n $f ]] || { echo "module $n not found" >&2; exit 1; }
    local deps
    deps=$(grep -a -o 'depends=[^[:cntrl:]]*' "$f" | head -1 | sed 's/^depends=//')
    for d in ${deps//,/ }; do add "$d"; done
    order+=("$n")
}
for m in crc32c_generic gfs2 virtio_pci virtio_blk; do add $m; done
for n in "${order[@]}"; do cp "${path[$n]}" "$R/mods/$n.ko"; done
echo "${order[*]}" > "$R/mods/order"
for b in setfattr getfattr setfacl getfacl; do cp "$(command -v $b)" "$R/usr/bin/"; done
for l in $(ldd /usr/bin/setfacl /usr/bin/getfattr | awk '/=>/ {print $3}' | sort -u); do
    cp "$l" "$R/lib/x86_64-linux-gnu/"
done
cp /lib64/ld-linux-x86-64.so.2 "$R/lib64/"
cat > "$R/init" <<'IN'
#!/bin/sh
export PATH=/bin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m.ko; done
i=0; while [ ! -e /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
. /workload.sh
echo KVM-WORKLOAD-DONE
sync
poweroff -f
IN
chmod +x "$R/init"
cp "$W" "$R/workload.sh"
cp "$(dirname "$0")/manifest.sh" "$R/manifest.sh"
(cd "$R" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$OUT"
