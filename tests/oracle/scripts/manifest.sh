# Print a manifest line per path under the current directory:
# M path|type|perm|uid|gid|size|nlink|mtime(ns)|ctime(s)|sha256/target/rdev|xattrs
# Sourced by busybox sh in the VM and by bash on the host (same tools).
find . | LC_ALL=C sort | while read -r p; do
  s=$(stat -c '%F|%a|%u|%g|%s|%h|%y' "$p")
  case "$s" in
    "regular file"*|"regular empty file"*) h=$(sha256sum "$p" | cut -c1-32);;
    "symbolic link"*) h=$(readlink "$p");;
    "character special file"*|"block special file"*) h=$(ls -ln "$p" | awk '{print $5 $6}');;
    *) h=-;;
  esac
  x=$(getfattr -h -d -m - -e hex "$p" 2>/dev/null | grep -v '^#' | LC_ALL=C sort | tr '\n' ' ')
  echo "M $p|$s|$h|$x"
done
