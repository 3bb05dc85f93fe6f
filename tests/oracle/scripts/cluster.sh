# Shell functions of a cluster node VM (busybox sh), sourced by
# /cluster-init and available to commands as `. /lib/cluster.sh`. The host
# (src/cluster.rs) drives the cluster start with them, one step on every node
# at a time, so that a node failing to join shows up as a command's output.

# cl_param NAME: the value of cluster.NAME= on the kernel command line.
cl_param() {
    sed -n "s/.*cluster\.$1=\([^ ]*\).*/\1/p" /proc/cmdline
}

# cl_wait TIMEOUT_S WHAT COMMAND...: run COMMAND every 0.1 s until it
# succeeds; after TIMEOUT_S seconds print "cl_wait: WHAT timed out" and fail.
cl_wait() {
    local t=$1 what=$2 i=0
    shift 2
    until "$@"; do
        i=$((i+1))
        [ $i -lt $((t*10)) ] || { echo "cl_wait: $what timed out after ${t}s" >&2; return 1; }
        sleep 0.1
    done
}

# cl_configure: write corosync.conf (knet over UDP, a 3 s token: failures
# are noticed quickly even under TCG; two_node for 2 nodes keeps the
# survivor quorate) and dlm.conf (no fencing: the harness's kills are the
# fencing; tcp: no sctp module).
cl_configure() {
    local n name i
    n=$(cl_param nodes); name=$(cl_param name)
    {
        echo "totem {"
        echo "version: 2"
        echo "cluster_name: $name"
        echo "transport: knet"
        echo "crypto_cipher: none"
        echo "crypto_hash: none"
        echo "token: 3000"
        echo "interface {"
        echo "linknumber: 0"
        echo "knet_ping_interval: 200"
        echo "knet_ping_timeout: 1000"
        echo "}"
        echo "}"
        echo "logging {"
        echo "to_stderr: yes"
        echo "to_syslog: no"
        echo "to_logfile: no"
        echo "timestamp: on"
        echo "}"
        echo "quorum {"
        echo "provider: corosync_votequorum"
        [ "$n" = 2 ] && echo "two_node: 1"
        echo "}"
        echo "nodelist {"
        i=1
        while [ $i -le "$n" ]; do
            echo "node {"
            echo "name: node$i"
            echo "nodeid: $i"
            echo "ring0_addr: 10.0.0.$i"
            echo "}"
            i=$((i+1))
        done
        echo "}"
    } > /etc/corosync/corosync.conf
    printf 'enable_fencing=0\nprotocol=tcp\n' > /etc/dlm/dlm.conf
}

# cl_start_corosync: start corosync in the background, logging to the console.
cl_start_corosync() {
    corosync -f > /dev/console 2>&1 &
}

# cl_members: the node ids in this node's corosync membership, one a line.
cl_members() {
    corosync-quorumtool -l 2>/dev/null | awk '$1 ~ /^[0-9]+$/ {print $1}'
}

# cl_quorate_with N: this node is quorate with N members.
cl_quorate_with() {
    [ "$(cl_members | wc -l)" -eq "$1" ] &&
        corosync-quorumtool -s 2>/dev/null | grep -q '^Quorate: *Yes'
}

# cl_start_dlm: start dlm_controld in the background (it configures the
# kernel DLM through configfs from the corosync membership).
cl_start_dlm() {
    dlm_controld --foreground 1 > /dev/console 2>&1 &
}

# cl_dlm_ready: dlm_controld told the kernel DLM who this node is, and the
# userspace DLM device is there.
cl_dlm_ready() {
    [ "$(cat /sys/kernel/config/dlm/cluster/comms/$(cl_param id)/local 2>/dev/null)" = 1 ] &&
        [ -c /dev/misc/dlm-control ]
}

# cl_gone ID: node ID is out of this node's corosync membership.
cl_gone() {
    ! cl_members | grep -qx "$1"
}

# cl_dlm_gone ID: dlm_controld has removed node ID (`dlm_tool status`
# marks it X), no lockspace lists it as a member any more, and no lockspace
# is stopped for recovery (flags 0).
cl_dlm_gone() {
    dlm_tool status 2>/dev/null | grep -q "^node $1 X " || return 1
    ! dlm_tool ls 2>/dev/null | awk '$1 == "members"' | grep -qw "$1" || return 1
    ! dlm_tool ls 2>/dev/null | awk '$1 == "flags" && $2 != "0x00000000"' | grep -q .
}

# cl_cmdloop: serve the host's commands on the virtio-serial port named
# "cmd". A request is one line "C ID TIMEOUT_S BASE64_SCRIPT"; each runs in
# the background (several may run at once) with `sh`, with these functions
# defined, killed after TIMEOUT_S. Its reply is "R ID STATUS", its stdout in
# base64, a "-" line, its stderr in base64, "E ID". Replies go out through one writer (a
# FIFO of finished ids) so that they never interleave.
cl_cmdloop() {
    local p port=
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = cmd ] && port=/dev/${p##*/}
    done
    [ -n "$port" ] || { echo "CLUSTER-FAIL no virtio port named cmd"; return 1; }
    mkdir -p /tmp/cmd
    rm -f /tmp/cmd/done
    mkfifo /tmp/cmd/done
    exec 3<>"$port" 4<>/tmp/cmd/done
    (
        while read -r id <&4; do
            cat "/tmp/cmd/$id.r" >&3
            rm -f "/tmp/cmd/$id".*
        done
    ) &
    echo READY >&3
    local tag id t b64
    while read -r tag id t b64 <&3; do
        [ "$tag" = C ] || continue
        (
            echo "$b64" | base64 -d > "/tmp/cmd/$id.sh"
            cd /
            timeout -s KILL "$t" sh -c '. /lib/cluster.sh; . "$1"' sh "/tmp/cmd/$id.sh" \
                > "/tmp/cmd/$id.o" 2> "/tmp/cmd/$id.e" < /dev/null 3>&- 4>&-
            rc=$?
            { echo "R $id $rc"; base64 "/tmp/cmd/$id.o"; echo -; base64 "/tmp/cmd/$id.e"; echo "E $id"; } > "/tmp/cmd/$id.w"
            mv "/tmp/cmd/$id.w" "/tmp/cmd/$id.r"
            echo "$id" >&4
        ) &
    done
    exec 3>&- 4>&-
}
