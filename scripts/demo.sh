#!/usr/bin/env bash
# The main job on an embedded default: make a sparse 1 GiB demo image with our
# mkfs.gfs2 and mount it through FUSE with gfs2-fuse (lock_nolock, one node).
#   scripts/demo.sh [IMAGE] [MOUNTPOINT]
set -euo pipefail
cd "$(dirname "$0")/.."
img=${1:-/tmp/gfs2-demo.img}
mnt=${2:-/tmp/gfs2-demo}
if ! command -v fusermount3 >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -q fuse3 >/dev/null
    else
        echo "demo.sh: fusermount3 not found; install the Debian package fuse3" >&2
        exit 1
    fi
fi
cargo build --release --workspace --quiet
# Where cargo put the binaries (CARGO_TARGET_DIR, a cargo config's target-dir, or target/).
bin=$(cargo metadata --format-version 1 --no-deps |
    grep -o '"target_directory":"[^"]*"' | sed 's/.*:"\(.*\)"/\1/')/release
rm -f "$img"
truncate -s 1G "$img"
"$bin/mkfs-gfs2" -O -p lock_nolock -j 1 "$img"
mkdir -p "$mnt"
"$bin/gfs2-fuse" mount "$img" "$mnt"
echo
echo "GFS2 image $img is mounted at $mnt through FUSE."
if grep -q " $mnt .* fuseblk.gfs2 " /proc/self/mountinfo; then
    echo "Unmount with:  umount $mnt"
    echo "  (a fuseblk mount: umount returns once the journal is clean and the image free)"
else
    echo "Unmount with:  $bin/gfs2-fuse umount $mnt"
    echo "  (a plain FUSE mount, as an unprivileged user gets: fusermount3 -u would return"
    echo "   before the disk is clean; gfs2-fuse umount waits for it)"
fi
