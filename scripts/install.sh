#!/bin/sh
# Build and install gfs2-fuse, mkfs.gfs2, fsck.gfs2, tunegfs2, gfs2_grow and gfs2_jadd under PREFIX
# (default /usr/local).
# Cargo cannot name a binary "mkfs.gfs2", so the binaries are mkfs-gfs2 and fsck-gfs2 and this
# script adds the drop-in names as symlinks (tunegfs2, gfs2_grow and gfs2_jadd are already their
# own names). Note: PREFIX/sbin
# usually comes before /usr/sbin in PATH, so the installed tools shadow gfs2-utils' ones of the
# same name.
#   scripts/install.sh [PREFIX]
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
prefix=${1:-/usr/local}
cargo build --release --workspace --manifest-path "$root/Cargo.toml"
install -d "$prefix/sbin"
for b in gfs2-fuse mkfs-gfs2 fsck-gfs2 tunegfs2 gfs2_grow gfs2_jadd; do
    install -m 755 "${CARGO_TARGET_DIR:-$root/target}/release/$b" "$prefix/sbin/$b"
done
ln -sf mkfs-gfs2 "$prefix/sbin/mkfs.gfs2"
ln -sf fsck-gfs2 "$prefix/sbin/fsck.gfs2"
echo "installed gfs2-fuse, mkfs.gfs2 (mkfs-gfs2), fsck.gfs2 (fsck-gfs2), tunegfs2, gfs2_grow, gfs2_jadd in $prefix/sbin"
echo "mount with: gfs2-fuse mount DEVICE MOUNTPOINT, or mount -t fuse.gfs2-fuse DEVICE MOUNTPOINT"
