# Shell functions of the pNFS client VM (busybox sh), sourced by /nfs-init;
# commands get them with `. /lib/nfs.sh` (src/nfs.rs prefixes its scripts
# with it).

# nfs_mount SERVER PORT EXPORT MNT [OPTS]: mount SERVER:EXPORT on MNT with
# NFS 4.1 on PORT, trying once (retry=0: mount.nfs would retry a refused
# connection for 2 minutes), and OPTS appended.
nfs_mount() {
    mkdir -p "$4"
    mount.nfs "$1:$3" "$4" -o "vers=4.1,port=$2,retry=0${5:+,$5}"
}

# nfs_ops MNT: the per-op statistics of the NFS mount on MNT from
# /proc/self/mountstats, one "OP COUNT" a line.
nfs_ops() {
    awk -v m="$1" '
        $1 == "device" { on = ($5 == m) ; ops = 0; next }
        on && /per-op statistics/ { ops = 1; next }
        on && ops && NF >= 2 && $1 ~ /:$/ { sub(":", "", $1); print $1, $2 }
    ' /proc/self/mountstats
}

# nfs_blkmapd: start blkmapd (the block layout's device discovery daemon:
# the kernel asks it, through rpc_pipefs, which local disk carries a
# volume's signature) in the foreground, logging to /tmp/blkmapd.log, and
# wait until it holds the kernel's pipe open (an upcall without a reader
# fails, and the client falls back to I/O through the server).
nfs_blkmapd() {
    local p
    [ -e /tmp/blkmapd.pid ] && return 0
    blkmapd -f > /tmp/blkmapd.log 2>&1 &
    p=$!
    echo $p > /tmp/blkmapd.pid
    cl_wait 20 'blkmapd opening rpc_pipefs/nfs/blocklayout' \
        sh -c "ls -l /proc/$p/fd 2>/dev/null | grep -q blocklayout"
}

# nfs_wwn_links: what udev would do for the SCSI layout: a
# /dev/disk/by-id/wwn-0x<NAA> link to each SCSI disk whose kernel-chosen
# identifier (sysfs wwid, from VPD page 0x83) is an NAA designator; the
# Linux client opens the LUN a GETDEVICEINFO names by that path. Waits up
# to 20 s for at least one such disk (the SCSI scan is asynchronous).
nfs_wwn_links() {
    local d w n=0 i=0
    mkdir -p /dev/disk/by-id
    while [ $i -lt 100 ]; do
        for d in /sys/block/sd*; do
            [ -e "$d/device/wwid" ] || continue
            w=$(cat "$d/device/wwid")
            case $w in
            naa.*) ln -sf "/dev/${d##*/}" "/dev/disk/by-id/wwn-0x${w#naa.}"; n=$((n+1)) ;;
            esac
        done
        [ $n -gt 0 ] && { ls -l /dev/disk/by-id; return 0; }
        sleep 0.2; i=$((i+1))
    done
    echo "NFS-FAIL no SCSI disk with an NAA wwid"; return 1
}

# nfs_lio_target DEV IQN: serve the disk DEV through the kernel's SCSI
# target (LIO, configfs by hand) as LUN 0 of the iSCSI target IQN on
# 10.0.3.15:3260 (the second network card, eth1, which the host reaches
# through a port forward) with open access, and to this VM itself through
# tcm_loop (a local initiator: /dev/sdX), then make the wwn- links. LIO
# implements persistent reservations (APTPL, which the Linux client sets
# when it registers, included; state under /etc/target and /var/target).
# LIO lets only the holder's ISID through among the sessions of the
# holder's initiator name under the Registrants Only types: initiators
# with several sessions use a name per session (gfs2-fuse:
# ?initiator_per_session=1).
nfs_lio_target() {
    local m T=/sys/kernel/config/target dev=$1 iqn=$2 lo=naa.5001405000000a01
    for m in $(cat /mods/lio-order); do
        grep -q "^$m " /proc/modules || nfs_step "insmod $m" insmod /mods/$m.ko || return 1
    done
    grep -q " /sys/kernel/config " /proc/mounts ||
        nfs_step configfs mount -t configfs configfs /sys/kernel/config || return 1
    mkdir -p /etc/target/pr /etc/target/alua /var/target/pr /var/target/alua
    ip link set eth1 up && ip addr add 10.0.3.15/24 dev eth1 || { echo "NFS-FAIL eth1"; return 1; }
    # A unit serial number (as targetcli sets one): LIO derives the LUN's
    # NAA designator (VPD page 0x83) from it, and without it has none.
    mkdir -p $T/core/iblock_0/lun && echo "udev_path=$dev" > $T/core/iblock_0/lun/control &&
        echo 1 > $T/core/iblock_0/lun/enable &&
        echo 5e1f3c2e-8d4b-4c1a-9f6e-2a7b9c0d1e3f > $T/core/iblock_0/lun/wwn/vpd_unit_serial ||
        { echo "NFS-FAIL iblock $dev"; return 1; }
    local t=$T/iscsi/$iqn/tpgt_1
    mkdir -p $t/lun/lun_0 && ln -s $T/core/iblock_0/lun $t/lun/lun_0/lun &&
        mkdir $t/np/10.0.3.15:3260 &&
        echo 1 > $t/attrib/generate_node_acls && echo 1 > $t/attrib/cache_dynamic_acls &&
        echo 0 > $t/attrib/demo_mode_write_protect && echo 0 > $t/attrib/authentication &&
        echo 1 > $t/enable || { echo "NFS-FAIL iSCSI target"; return 1; }
    local l=$T/loopback/$lo/tpgt_1
    mkdir -p $l/lun/lun_0 && echo naa.5001405000000b02 > $l/nexus &&
        ln -s $T/core/iblock_0/lun $l/lun/lun_0/lun || { echo "NFS-FAIL tcm_loop"; return 1; }
    nfs_wwn_links
}

# nfs_gone PID: process PID has exited (a zombie counts: the init that
# inherits orphans reaps them late).
nfs_gone() {
    [ ! -e "/proc/$1/status" ] || grep -q '^State:.*Z' "/proc/$1/status"
}

# nfs_capture IFACE FILE: start tcpdump on IFACE writing FILE (full packets,
# each written as it comes: without --immediate-mode the last second of
# packets stays in the kernel ring when tcpdump is stopped);
# nfs_capture_stop: stop it and wait until the file is complete.
nfs_capture() {
    tcpdump -Z root --immediate-mode -i "$1" -s 0 -w "$2" -U > /tmp/tcpdump.log 2>&1 &
    echo $! > /tmp/tcpdump.pid
    cl_wait 20 'tcpdump listening' grep -q 'listening on' /tmp/tcpdump.log
}
nfs_capture_stop() {
    local p
    p=$(cat /tmp/tcpdump.pid) || return 1
    kill -INT "$p"
    cl_wait 20 'tcpdump exit' nfs_gone "$p"
    rm -f /tmp/tcpdump.pid
}

# nfs_step WHAT COMMAND...: run COMMAND; on failure print "WHAT failed
# (status)" on stderr and fail.
nfs_step() {
    local what=$1 rc
    shift
    "$@" && return 0
    rc=$?
    echo "$what failed ($rc)" >&2
    return $rc
}

# nfs_kernel_server DEV: the kernel nfsd exporting a fresh XFS on DEV at
# /export with the block layout (export option pnfs), NFSv4.1+ only (no
# rpcbind: v4 does not need it), lease and grace times at their minimum
# (10 s) and the grace period ended at once. Clients mount
# 127.0.0.1:/ (fsid=0 makes /export the v4 root).
nfs_kernel_server() {
    local m
    for m in $(cat /mods/nfsd-order); do
        grep -q "^$m " /proc/modules || nfs_step "insmod $m" insmod /mods/$m.ko || return 1
    done
    nfs_step mkfs.xfs mkfs.xfs -q -f "$1" || return 1
    mkdir -p /export
    nfs_step "mount $1" mount -t xfs "$1" /export || return 1
    grep -q " /proc/fs/nfsd " /proc/mounts ||
        nfs_step "mount nfsd" mount -t nfsd nfsd /proc/fs/nfsd || return 1
    echo '/export *(rw,pnfs,fsid=0,no_root_squash,insecure,no_subtree_check,sync)' > /etc/exports
    nfs_step exportfs exportfs -ra || return 1
    echo 10 > /proc/fs/nfsd/nfsv4leasetime
    echo 10 > /proc/fs/nfsd/nfsv4gracetime
    # The kernel has no NFSv2 (-N 2 is an error); mountd still serves
    # nfsd's export upcalls with v3 off.
    nfs_step rpc.mountd rpc.mountd -N 3 || return 1
    nfs_step rpc.nfsd rpc.nfsd -p 2049 -N 3 -N 4.0 -U 4 || return 1
    # No state to reclaim on a fresh server: end the grace period now
    # (OPENs would get NFS4ERR_GRACE for 10 s).
    echo Y > /proc/fs/nfsd/v4_end_grace
}
