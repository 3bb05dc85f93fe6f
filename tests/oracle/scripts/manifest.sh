# Print a manifest line per path under the current directory:
# M path|type|perm|uid|gid|size|nlink|mtime(ns)|sha256[:32]/target/rdev|xattrs
# Sourced by busybox sh in the VM and run by bash on the host (same tools).
# Batched (one stat, sha256sum and getfattr run for the whole tree) because
# every process costs ~25 ms in the TCG VM. Path names must not contain
# newlines or '|'.
_m=$(mktemp -d)
find . | LC_ALL=C sort > "$_m/paths"
tr '\n' '\0' < "$_m/paths" | xargs -0 stat -c 'S%n|%F|%a|%u|%g|%s|%h|%y' > "$_m/stat"
grep -e '^S.*|regular file|' -e '^S.*|regular empty file|' "$_m/stat" | cut -d'|' -f1 | cut -c2- \
  | tr '\n' '\0' | xargs -0 -r sha256sum | sed 's/^\([0-9a-f]\{32\}\)[0-9a-f]* [ *]\(.*\)$/H\2|\1/' > "$_m/sum"
grep '^S.*|symbolic link|' "$_m/stat" | cut -d'|' -f1 | cut -c2- | while read -r p; do
  echo "L$p|$(readlink "$p")"
done > "$_m/link"
grep -e '^S.*|character special file|' -e '^S.*|block special file|' "$_m/stat" | cut -d'|' -f1 \
  | cut -c2- | while read -r p; do
  echo "D$p|$(ls -ln "$p" | awk '{print $5 $6}')"
done > "$_m/dev"
tr '\n' '\0' < "$_m/paths" | xargs -0 getfattr -h -d -m - -e hex 2>/dev/null \
  | awk '/^# file: /{f=substr($0,9); if (f != "." && substr(f,1,2) != "./") f="./" f; next} /./{print "X" f "\t" $0}' | LC_ALL=C sort > "$_m/xattr"
cat "$_m/sum" "$_m/link" "$_m/dev" "$_m/xattr" "$_m/stat" | awk '
  /^[HLD]/ { s=substr($0,2); i=index(s,"|"); h[substr(s,1,i-1)]=substr(s,i+1); next }
  /^X/ { i=index($0,"\t"); p=substr($0,2,i-2); x[p]=x[p] substr($0,i+1) " "; next }
  /^S/ { s=substr($0,2); i=index(s,"|"); p=substr(s,1,i-1);
         v=(p in h) ? h[p] : "-"; xs=(p in x) ? " " x[p] : "";
         print "M " s "|" v "|" xs }'
rm -rf "$_m"
