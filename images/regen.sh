#!/bin/bash
# Regenerate the reference image corpus in images/: gfs2-utils' mkfs.gfs2
# makes each image, the Linux kernel's GFS2 (the oracle VM of tests/oracle)
# fills it (images/populate.sh) and prints its manifest. Crashed-node images
# are made by killing qemu in the middle of an fsync-heavy workload; their
# manifests are the kernel's view after it recovered a copy, and each fsync'd
# file is checked there. Needs qemu-system-x86, busybox-static, cpio,
# gfs2-utils, attr, acl, xz-utils (scripts/test.sh installs them).
# usage: images/regen.sh        (a few minutes; then commit images/)
set -euo pipefail
IMG=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$IMG")
cd "$ROOT"
export PATH=$PATH:/usr/sbin:/sbin
for t in mkfs.gfs2 fsck.gfs2 xz qemu-system-x86_64 busybox cpio; do
    command -v $t >/dev/null || { echo "regen.sh: $t missing" >&2; exit 1; }
done
cargo build --release -q -p gfs2-oracle
VM=$ROOT/target/release/gfs2-oracle-vm
W=$(mktemp -d /tmp/gfs2-corpus.XXXXXX)
trap 'rm -rf "$W"' EXIT

# NAME|SIZE_MB|BLOCK_SIZE|mkfs.gfs2 options
TREES=(
    "tree-b512|48|512|-p lock_nolock -j 1 -J 8"
    "tree-b1024|64|1024|-p lock_dlm -t corpus:b1024 -j 2 -J 8"
    "tree-b4096|64|4096|-p lock_nolock -j 1 -J 8"
)
# NAME|SIZE_MB|BLOCK_SIZE|mkfs.gfs2 options|fsync'd files before the kill
CRASHES=(
    "crash-b1024|40|1024|-p lock_nolock -j 2 -J 8|150"
    "crash-b4096|48|4096|-p lock_nolock -j 1 -J 8|100"
)

mk() { # mk NAME SIZE_MB BLOCK_SIZE OPTIONS
    rm -f "$W/$1.img"
    truncate -s "$2M" "$W/$1.img"
    # shellcheck disable=SC2086
    mkfs.gfs2 -O -q -b "$3" $4 "$W/$1.img" >/dev/null
}
LETTERS=(a b c d e f g h)
dev() { echo "/dev/vd${LETTERS[$1]}"; }
vm_ok() { # vm_ok LOG: the scenario exited 0 with no failure or kernel error
    grep -q '^ORACLE-EXIT 0' "$1" && ! grep -q 'ORACLE-FAIL' "$1" \
        && ! grep -qiE 'withdraw|call trace|kernel bug' "$1" \
        || { grep -v '^M ' "$1" >&2; echo "regen.sh: VM scenario failed" >&2; exit 1; }
}
section() { # section LOG TAG: the manifest lines between BEGIN-TAG and END-TAG
    sed -n "/^BEGIN-$2\$/,/^END-$2\$/p" "$1" | grep '^M '
}

"$VM" names 40 17 chained_leaf_entry 200 > "$W/chain.names"

# 1. Trees: populate every image, then print each manifest (read-only mount).
S=$W/trees.sh
: > "$S"
disks=()
i=0
for t in "${TREES[@]}"; do
    IFS='|' read -r name mb bs opts <<<"$t"
    mk "$name" "$mb" "$bs" "$opts"
    disks+=("$W/$name.img")
    d=$(dev $i)
    { echo "p_$i() { populate $bs; }"
      echo "workload $d $name p_$i"
      echo "manifest $d $name"; } >> "$S"
    i=$((i + 1))
done
echo "== trees: populating ${#TREES[@]} images in the kernel VM"
"$VM" run --file populate.sh="$IMG/populate.sh" --file chain.names="$W/chain.names" \
    <(echo '. /populate.sh'; cat "$S") "${disks[@]}" > "$W/trees.log" || true
vm_ok "$W/trees.log"
KV=$(sed -n 's/.*ORACLE-BOOTED //p' "$W/trees.log" | head -1)
for t in "${TREES[@]}"; do
    IFS='|' read -r name mb bs opts <<<"$t"
    grep -q "^ORACLE-WORKLOAD $name 0" "$W/trees.log" || {
        grep -v '^M ' "$W/trees.log" >&2; echo "regen.sh: populating $name failed" >&2; exit 1; }
    { echo "# $name: manifest by the kernel ($KV, read-only mount); images/regen.sh"
      section "$W/trees.log" "$name"; } > "$IMG/$name.manifest"
    fsck.gfs2 -n "$W/$name.img" > "$W/$name.fsck" 2>&1 || {
        echo "regen.sh: fsck.gfs2 -n $name not clean:" >&2; cat "$W/$name.fsck" >&2; exit 1; }
    echo "$name: $(grep -c '^M ' "$IMG/$name.manifest") entries, fsck.gfs2 -n clean"
done

# 2. Crashed nodes: kill qemu once N files have been fsync'd. The flusher
# writes dirty metadata in place within ~50 ms, so the image on disk mixes
# written-back and journal-only transactions (with the default 30 s it would
# still be the pristine mkfs image plus a journal, which fsck.gfs2 -n finds
# consistent).
WRITEBACK='echo 5 > /proc/sys/vm/dirty_expire_centisecs; echo 5 > /proc/sys/vm/dirty_writeback_centisecs'
for c in "${CRASHES[@]}"; do
    IFS='|' read -r name mb bs opts n <<<"$c"
    mk "$name" "$mb" "$bs" "$opts"
    echo "== $name: fsync-heavy workload, qemu killed after $n fsyncs"
    rc=0
    "$VM" run --kill-after FSYNCED "$n" --file populate.sh="$IMG/populate.sh" \
        <(printf '%s\n' '. /populate.sh' "$WRITEBACK" 'mnt /dev/vda noatime' 'cd /mnt' crashload) \
        "$W/$name.img" > "$W/$name.log" || rc=$?
    [ $rc -eq 137 ] || { echo "regen.sh: $name: VM not killed (status $rc)" >&2; exit 1; }
    { echo "# $name: files fsync'd before qemu was killed (the last line of a path holds)"
      grep '^FSYNCED ' "$W/$name.log"; } > "$IMG/$name.fsynced"
    rc=0
    fsck.gfs2 -n "$W/$name.img" > "$W/$name.fsck" 2>&1 || rc=$?
    [ $rc -eq 4 ] && grep -q 'is dirty' "$W/$name.fsck" || {
        echo "regen.sh: $name: fsck.gfs2 -n exit $rc, wanted 4 with a dirty journal" >&2
        cat "$W/$name.fsck" >&2; exit 1; }
    echo "$name: $(grep -c '^FSYNCED' "$IMG/$name.fsynced") fsync'd, journal dirty"
done

# 3. The kernel recovers copies of the crashed images: every fsync'd file
# has its checksum; the manifest is taken after recovery.
S=$W/recover.sh
: > "$S"
disks=()
i=0
for c in "${CRASHES[@]}"; do
    IFS='|' read -r name mb bs opts n <<<"$c"
    cp --sparse=always "$W/$name.img" "$W/$name.copy"
    disks+=("$W/$name.copy")
    d=$(dev $i)
    echo "mnt $d noatime" >> "$S"
    grep '^FSYNCED ' "$IMG/$name.fsynced" | awk '{s[$2]=$3} END {for (p in s) print p, s[p]}' \
        | while read -r p s; do
        echo "[ \"\$(sha256sum /mnt/$p | cut -c1-64)\" = $s ] || echo \"ORACLE-FAIL $name lost $p\""
    done >> "$S"
    echo "umnt" >> "$S"
    echo "manifest $d $name" >> "$S"
    i=$((i + 1))
done
echo "== recovering the crashed images in the kernel VM"
"$VM" run "$S" "${disks[@]}" > "$W/recover.log" || true
vm_ok "$W/recover.log"
for c in "${CRASHES[@]}"; do
    IFS='|' read -r name mb bs opts n <<<"$c"
    { echo "# $name: manifest by the kernel ($KV) after it recovered the journal; images/regen.sh"
      section "$W/recover.log" "$name"; } > "$IMG/$name.manifest"
    fsck.gfs2 -n "$W/$name.copy" > "$W/$name.fsck2" 2>&1 || {
        echo "regen.sh: $name after kernel recovery not clean:" >&2; cat "$W/$name.fsck2" >&2; exit 1; }
    echo "$name: recovered by the kernel, every fsync'd file intact, fsck.gfs2 -n clean"
done

# 4. Compress.
for t in "${TREES[@]}" "${CRASHES[@]}"; do
    name=${t%%|*}
    xz -9 -T1 -c "$W/$name.img" > "$IMG/$name.img.xz"
done
ls -l "$IMG"
du -ch "$IMG"/*.xz | tail -1
