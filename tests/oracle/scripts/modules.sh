# Kernel modules with their dependencies (from each module's modinfo
# "depends="), in load order; sourced by the initramfs builders.
# Needs K (the kernel's module tree). `add NAME` appends NAME after the
# modules it depends on to the array `order`, each module once.
declare -A path seen
while read -r f; do n=$(basename "$f" .ko); path[${n//-/_}]=$f; done < <(find "$K" -name '*.ko')
order=()
add() {
    local n=${1//-/_}
    [[ -n ${seen[$n]:-} ]] && return
    seen[$n]=1
    local f=${path[$n]:-}
    [[ -n $f ]] || { echo "module $n not found" >&2; exit 1; }
    local deps
    deps=$(grep -a -o 'depends=[^[:cntrl:]]*' "$f" | head -1 | sed 's/^depends=//')
    for d in ${deps//,/ }; do add "$d"; done
    order+=("$n")
}
