# Tree populator for the reference corpus (busybox sh, run by the kernel in
# the oracle VM with the current directory at the root of a fresh GFS2).
# usage: populate BLOCKSIZE   (with /chain.names: names whose hashes
# collide in their top 17 bits, one a line)

# pattern N WORD: N bytes of compressible text.
pattern() { yes "$2" | head -c "$1"; }

# text N WORD: N bytes of WORD repeated, no newlines.
text() { yes "$2" | tr -d '\n' | head -c "$1"; }

# write_at FILE OFFSET N WORD: N bytes of text at byte OFFSET (no truncation).
write_at() { pattern "$3" "$4" | dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null; }

populate() {
    bs=$1
    # Pointers in a dinode and in an indirect block; largest size of each
    # metadata height.
    p1=$(( (bs - 232) / 8 )); pi=$(( (bs - 24) / 8 ))
    h1=$(( p1 * bs )); h2=$(( h1 * pi )); h3=$(( h2 * pi ))
    mkdir types links sparse height hash chain xattr acl modes

    # Every file type.
    echo hello > types/regular
    : > types/empty
    pattern 100 stuffed > types/stuffed
    pattern $((bs * 3 + 17)) unstuffed > types/unstuffed
    mkdir types/dir
    ln -s regular types/symlink
    mknod types/chr c 1 3
    mknod types/blk b 8 17
    mkfifo types/fifo
    # A unix socket: busybox syslogd binds /dev/log; give it this directory
    # as /dev in a private mount namespace.
    # (syslogd also wants /dev/null there.)
    unshare -m sh -c "mount --bind $PWD/types /dev && mknod /dev/null c 1 3 &&
        (syslogd -n -O /tmp/syslog & p=\$!; sleep 1; kill -9 \$p)"
    rm types/null
    mv types/log types/socket

    # Symlinks: short, dangling, absolute, and the longest one the block
    # size allows (symlinks are always stuffed: bs - 232 - 1 bytes).
    long=$(text $((bs - 233)) abcdefghijklmno/)
    ln -s "$long" links/longest
    ln -s "$(text 200 dir/)" links/long200
    ln -s /nonexistent/target links/dangling
    ln -s ../types/regular links/relative
    ln -s /mnt/types/stuffed links/absolute
    # Hard links, within and across directories.
    ln types/regular links/hard1
    ln types/regular links/hard2
    ln types/unstuffed hash/hard_in_hash
    ln types/chr links/hard_chr

    # Sparse files.
    truncate -s 5000000 sparse/allhole
    write_at sparse/ends 0 100 head
    write_at sparse/ends 3000000 100 tail
    write_at sparse/middle 777777 5000 middle
    truncate -s 2000000 sparse/middle
    write_at sparse/blocks $((bs * 10)) $((bs * 2)) b
    write_at sparse/blocks $((bs * 100 + 5)) 7 c

    # Metadata heights: just over the largest size of heights 1 and 2
    # (dense) and of height 2 and 3 (sparse: one block at the end).
    pattern $((h1 + bs)) dense2 > height/dense2
    write_at height/sparse2 0 1000 start
    write_at height/sparse2 $h1 $bs end
    if [ "$bs" -le 1024 ]; then
        # (At 4096-byte blocks height 3 starts at 1 GB: too slow to hash.)
        write_at height/sparse3 0 1000 start
        write_at height/sparse3 $h2 $bs end
        pattern $((h2 + 3 * bs)) dense3 > height/dense3
    fi
    if [ "$bs" -le 512 ]; then
        write_at height/sparse4 $h3 $bs end4
    fi

    # Exhash directory with leaf splits, and a few deleted entries.
    for i in $(seq 1 400); do echo "$i" > hash/entry_with_a_longish_name_$i; done
    rm hash/entry_with_a_longish_name_7 hash/entry_with_a_longish_name_100 \
       hash/entry_with_a_longish_name_333

    # Chained leaves (lf_next): names whose hashes share the top 17 bits
    # stay in one leaf even at the maximum depth (17), so once that leaf is
    # full the kernel chains new leaves to it.
    while read -r n; do : > "chain/$n"; done < /chain.names

    # Extended attributes of every size class.
    echo x > xattr/inline
    setfattr -n user.small -v hello xattr/inline
    setfattr -n trusted.t1 -v tval xattr/inline
    setfattr -n security.s1 -v sval xattr/inline
    setfattr -n user.empty xattr/inline
    echo x > xattr/unstuffed
    setfattr -n user.big -v "$(text 6000 ab)" xattr/unstuffed
    setfattr -n user.bigger -v "$(text 20000 cd)" xattr/unstuffed
    setfattr -n user.small -v s xattr/unstuffed
    echo x > xattr/indirect
    for i in $(seq 1 150); do
        setfattr -n user.attribute_number_$i -v value_number_$i xattr/indirect
    done
    setfattr -n user.big -v "$(text 9000 ef)" xattr/indirect
    setfattr -x user.attribute_number_77 xattr/indirect
    mkdir xattr/dir
    setfattr -n user.on_dir -v d xattr/dir
    setfattr -n user.on_link -v l links/relative 2>/dev/null || true

    # POSIX ACLs: access and default, inherited by new entries.
    mkdir acl/dir
    setfacl -m u:1000:rwx,g:100:r-x,m::rwx acl/dir
    setfacl -d -m u:1000:rw-,g::r-- acl/dir
    echo inherited > acl/dir/file
    mkdir acl/dir/subdir
    echo secret > acl/secret
    chmod 600 acl/secret
    setfacl -m u:1000:r acl/secret

    # Modes, owners, timestamps.
    echo s > modes/suid; chown 1000:100 modes/suid; chmod 4751 modes/suid
    echo g > modes/sgid; chmod 2755 modes/sgid
    mkdir modes/sticky; chmod 1777 modes/sticky
    echo n > modes/none; chmod 000 modes/none
    echo o > modes/owned; chown 65534:65534 modes/owned
    echo old > modes/old; touch -d "2001-02-03 04:05:06" modes/old
    touch -d "1970-01-01 00:00:00" modes/epoch_file 2>/dev/null || : > modes/epoch_file
    sync
}

# crashload: fsync-heavy writes that never end (the harness kills the VM):
# every keep/fN is written once and fsync'd ("FSYNCED path sha256" printed
# after fsync returned); keep/log is appended to and fsync'd again (its last
# FSYNCED line holds); noise/ is churned without fsync.
crashload() {
    mkdir keep noise
    i=0
    while :; do
        i=$((i + 1))
        pattern $(( (i * 997) % 30000 + 1 )) "file $i" > keep/f$i
        fsync_file keep/f$i
        echo "$i" > noise/n$i
        [ $((i % 4)) -ne 0 ] || rm -f noise/n$((i - 2))
        [ $((i % 7)) -ne 0 ] || mv noise/n$((i - 1)) noise/renamed$i 2>/dev/null || true
        if [ $((i % 10)) -eq 0 ]; then
            pattern 700 "append $i" >> keep/log
            fsync_file keep/log
            setfattr -n user.i -v "$i" keep/f$i
            fsync_file keep/f$i
        fi
    done
}
