# Shell functions for kernel oracle scenarios (busybox sh); sourced by /init
# before /scenario.sh runs. Failures print "ORACLE-FAIL ..." lines, which the
# harness collects.

# mnt DEV [OPTS]: mount the GFS2 on DEV at /mnt with lock_nolock (also for
# lock_dlm images) and OPTS.
mnt() {
    mount -t gfs2 -o "lockproto=lock_nolock${2:+,$2}" "$1" /mnt || {
        echo "ORACLE-FAIL mount $1 $2"; return 1; }
}

# umnt: unmount /mnt.
umnt() {
    cd /
    umount /mnt || { echo "ORACLE-FAIL umount"; return 1; }
}

# manifest DEV TAG [OPTS]: mount DEV (default options ro,acl,noatime), print
# its manifest between BEGIN-TAG and END-TAG, unmount.
manifest() {
    mnt "$1" "${3-ro,acl,noatime}" || return 1
    echo "BEGIN-$2"
    (cd /mnt && . /manifest.sh)
    echo "END-$2"
    umnt
}

# workload DEV TAG FUNCTION [OPTS]: mount DEV (default options acl,noatime),
# run FUNCTION in /mnt (in a subshell with set -e), print
# "ORACLE-WORKLOAD TAG STATUS", sync and unmount.
workload() {
    mnt "$1" "${4-acl,noatime}" || return 1
    (cd /mnt || exit 1; set -e; "$3")
    echo "ORACLE-WORKLOAD $2 $?"
    sync
    umnt
}

# fsync_file PATH: fsync PATH, then print "FSYNCED PATH SHA256" (only after
# the fsync returned).
fsync_file() {
    sync "$1" && echo "FSYNCED $1 $(sha256sum "$1" | cut -d' ' -f1)"
}
