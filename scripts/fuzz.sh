#!/usr/bin/env bash
# Bounded-time fuzzing, as CI runs it (scripts/test.sh calls this).
#
#   scripts/fuzz.sh [SECONDS]     # seconds per target; default $FUZZ_SECONDS or 20
#
# Builds every target in fuzz/ with cargo-fuzz (installing cargo-fuzz 0.13.2
# if missing), makes the base GFS2 image mount_walk patches (mkfs.gfs2 from
# gfs2-utils), then runs each target for SECONDS. Exits non-zero on the first
# crash, leak or timeout, printing the artifact libFuzzer wrote.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-${FUZZ_SECONDS:-20}}
TARGETS=(ondisk_structs ondisk_dirents ondisk_ea ondisk_log mount_walk savemeta)
# A single input running longer than this counts as a hang (a failure).
PER_INPUT_TIMEOUT=${FUZZ_TIMEOUT:-25}

export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin:/sbin"
# cargo-fuzz needs nightly flags; the stable toolchain accepts them this way.
export RUSTUP_TOOLCHAIN=stable RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz 0.13.2" >&2
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
if ! command -v mkfs.gfs2 >/dev/null; then
    echo "fuzz.sh: mkfs.gfs2 not found: install gfs2-utils" >&2
    exit 1
fi

echo "== cargo fuzz build -O"
(cd fuzz && cargo fuzz build -O)

work=$(mktemp -d "${TMPDIR:-/tmp}/gfs2-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
img="$work/base.img"
truncate -s 64M "$img"
mkfs.gfs2 -O -q -b 1024 -p lock_nolock -j 1 -J 8 "$img" >/dev/null
export GFS2_FUZZ_IMAGE="$img"

declare -A summary
for t in "${TARGETS[@]}"; do
    echo "== fuzz $t for ${SECS}s"
    log="$work/$t.log"
    mkdir -p "fuzz/corpus/$t"
    set +e
    (cd fuzz && cargo fuzz run -O "$t" -- \
        -max_total_time="$SECS" -timeout="$PER_INPUT_TIMEOUT" -print_final_stats=1) \
        >"$log" 2>&1
    rc=$?
    set -e
    if ((rc != 0)); then
        tail -n 60 "$log" >&2
        artifact=$(grep -o 'Test unit written to .*' "$log" | sed 's/^Test unit written to //' | tail -n1 || true)
        echo "fuzz.sh: target $t FAILED (exit $rc)" >&2
        if [[ -n $artifact ]]; then
            echo "fuzz.sh: crash artifact: $artifact" >&2
            echo "fuzz.sh: reproduce: (cd fuzz && cargo fuzz run -O $t ${artifact})" >&2
        fi
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1 || true)
    eps=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n1 || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 || true)
    summary[$t]="${runs:-?} runs, ${eps:-?} exec/s, ${cov:-cov: ?}"
    echo "   $t: ${summary[$t]}"
done

echo "== fuzzing summary (${SECS}s per target)"
for t in "${TARGETS[@]}"; do
    echo "   $t: ${summary[$t]}"
done
