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
rm -f "$img"
truncate -s 1G "$img"
target/release/mkfs-gfs2 -O -p lock_nolock -j 1 "$img"
mkdir -p "$mnt"
target/release/gfs2-fuse mount "$img" "$mnt"
echo
echo "GFS2 image $img is mounted at $mnt through FUSE."
echo "Unmount with:  fusermount3 -u $mnt"
