#!/bin/sh
# Build and install gfs2-fuse, mkfs.gfs2, fsck.gfs2, tunegfs2, gfs2_grow and gfs2_jadd under PREFIX
# (default /usr/local).
# Cargo cannot name a binary "mkfs.gfs2", so the binaries are mkfs-gfs2 and fsck-gfs2 and this
# script adds the drop-in names as symlinks (tunegfs2, gfs2_grow and gfs2_jadd are already their
# own names). Note: PREFIX/sbin
# usually comes before /usr/sbin in PATH, so the installed tools shadow gfs2-utils' ones of the
# same name.
# It also installs the mount(8) helper: mount(8) runs /sbin/mount.TYPE, so
# MOUNT_HELPER_DIR/mount.fuse.gfs2-fuse (default /sbin) becomes a symlink to PREFIX/sbin/gfs2-fuse,
# for `mount -t fuse.gfs2-fuse DEVICE MOUNTPOINT` and fstab lines of that type. With
# MOUNT_GFS2=1 also MOUNT_HELPER_DIR/mount.gfs2, so that `mount -t gfs2` (and fstab lines of type
# gfs2) mount through gfs2-fuse instead of the kernel's GFS2: only on machines that mean it.
# The binaries are taken from wherever cargo builds them (CARGO_TARGET_DIR included).
#   [MOUNT_GFS2=1] [MOUNT_HELPER_DIR=/sbin] scripts/install.sh [PREFIX]
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
prefix=${1:-/usr/local}
cargo build --release --workspace --manifest-path "$root/Cargo.toml"
# Where cargo put them (CARGO_TARGET_DIR, a cargo config's target-dir, or target/).
target=$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" |
    grep -o '"target_directory":"[^"]*"' | sed 's/.*:"\(.*\)"/\1/')
install -d "$prefix/sbin"
for b in gfs2-fuse mkfs-gfs2 fsck-gfs2 tunegfs2 gfs2_grow gfs2_jadd; do
    install -m 755 "$target/release/$b" "$prefix/sbin/$b"
done
ln -sf mkfs-gfs2 "$prefix/sbin/mkfs.gfs2"
ln -sf fsck-gfs2 "$prefix/sbin/fsck.gfs2"
helpers=${MOUNT_HELPER_DIR:-/sbin}
sbin=$(cd "$prefix/sbin" && pwd)
install -d "$helpers"
ln -sfn "$sbin/gfs2-fuse" "$helpers/mount.fuse.gfs2-fuse"
echo "installed the mount helper $helpers/mount.fuse.gfs2-fuse"
if [ "${MOUNT_GFS2:-0}" = 1 ]; then
    ln -sfn "$sbin/gfs2-fuse" "$helpers/mount.gfs2"
    echo "installed $helpers/mount.gfs2: mount -t gfs2 now mounts through gfs2-fuse"
fi
echo "installed gfs2-fuse, mkfs.gfs2 (mkfs-gfs2), fsck.gfs2 (fsck-gfs2), tunegfs2, gfs2_grow, gfs2_jadd in $prefix/sbin"
echo "mount with: gfs2-fuse mount DEVICE MOUNTPOINT, or mount -t fuse.gfs2-fuse DEVICE MOUNTPOINT,"
echo "or an fstab line: DEVICE MOUNTPOINT fuse.gfs2-fuse defaults,_netdev 0 0"
