# Helpers sourced by the initiator benchmarks (bench-nbd.sh, bench-iscsi.sh).
#
# The machine may be shared: every pair is measured REPS times, alternating
# ours and the reference, and the best of each is kept, so that a burst of
# load elsewhere does not decide a row.

# ratio A B: A / B to two decimals ("-" when B is 0).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
# The largest of the numbers on standard input.
best() { sort -g | tail -1; }
# pair VAR_OURS VAR_OTHER 'ours command' 'other command': run both REPS
# times, alternating, and set the two variables to the best of each.
pair() {
    local a=() b=() i
    for ((i = 0; i < REPS; i++)); do
        a+=("$(eval "$3")")
        b+=("$(eval "$4")")
    done
    printf -v "$1" '%s' "$(printf '%s\n' "${a[@]}" | best)"
    printf -v "$2" '%s' "$(printf '%s\n' "${b[@]}" | best)"
}
# compare LABEL 'ours command' 'other command': measure the pair and print
# its row (the caller's row function) with the ratio.
compare() {
    local _ours _other
    pair _ours _other "$2" "$3"
    row "$1" "$_ours" "$_other" "$(ratio "$_ours" "$_other")"
}
