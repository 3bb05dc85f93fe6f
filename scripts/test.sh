#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs the system packages the tests need
# (gfs2-utils, fuse3, qemu, busybox, ...) when run as root on Debian, then runs
# formatting/lint checks, every crate's tests, and bounded-time fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(gfs2-utils fuse3 libfuse3-dev pkg-config qemu-system-x86 busybox-static cpio attr acl
      e2fsprogs fuse2fs xz-utils mount nbdkit qemu-utils tgt libiscsi-dev libiscsi-bin
      vblade iproute2 nftables corosync dlm-controld
      nfs-common nfs-kernel-server nfs-ganesha nfs-ganesha-vfs xfsprogs tcpdump tshark sg3-utils)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "test.sh: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
        exit 1
    fi
    echo "test.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Some machine images come with qemu-utils from bookworm-backports, which
    # no configured source carries and whose version breaks bookworm's
    # qemu-system: take qemu-utils from bookworm with the rest of qemu.
    extra=()
    if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]]; then
        kept=()
        for p in "${missing[@]}"; do [[ $p == qemu-utils ]] || kept+=("$p"); done
        missing=("${kept[@]}")
        extra=(--allow-downgrades qemu-utils/bookworm)
    fi
    apt-get install -y -qq "${missing[@]}" "${extra[@]}" >/dev/null
    # corosync and dlm-controld are here for the cluster VMs (tests/oracle
    # copies them into the VMs' initramfs), not for this machine: the
    # packages enable and start their services with a one-node default
    # config, so stop and disable what was just installed.
    if [[ " ${missing[*]} " == *" corosync "* || " ${missing[*]} " == *" dlm-controld "* ]] &&
        [[ -d /run/systemd/system ]]; then
        systemctl disable --now dlm corosync >/dev/null 2>&1 || true
    fi
    # Likewise the NFS tools are for the pNFS client VM (tests/oracle/src/nfs.rs)
    # and nfs-ganesha is started by its test on a port of its own.
    if [[ " ${missing[*]} " == *" nfs-"* ]] && [[ -d /run/systemd/system ]]; then
        systemctl disable --now nfs-ganesha nfs-server rpcbind.socket rpcbind \
            >/dev/null 2>&1 || true
    fi
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --release 2>&1
# The vendored fuser is outside the workspace (a [patch] of crates.io): its own unit
# tests (the request parser among them) run from its manifest.
echo "== vendored fuser's tests"
cargo test --release --manifest-path vendor/fuser/Cargo.toml \
    --target-dir "${CARGO_TARGET_DIR:-$PWD/target}" 2>&1
if [[ -x scripts/fuzz.sh ]]; then
    echo "== bounded fuzzing"
    scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
fi
