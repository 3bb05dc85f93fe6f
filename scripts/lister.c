/* Used by bench-fs.sh and bench-list.sh: a listing timed by a compiled getdents64 loop
   (in Python the interpreter's per-entry cost would hide the filesystems' difference). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
/* lister DIR N: one getdents64 walk with glibc's 32 KiB buffer; prints seconds. */
int main(int argc, char **argv) {
    static char buf[32768];
    struct timespec a, b;
    long n = 0, r;
    clock_gettime(CLOCK_MONOTONIC, &a);
    int fd = open(argv[1], O_RDONLY | O_DIRECTORY);
    if (fd < 0) { perror(argv[1]); return 1; }
    while ((r = syscall(SYS_getdents64, fd, buf, sizeof buf)) > 0)
        for (long off = 0; off < r; off += *(unsigned short *)(buf + off + 16)) n++;
    if (r < 0) { perror("getdents64"); return 1; }
    close(fd);
    clock_gettime(CLOCK_MONOTONIC, &b);
    if (n != atol(argv[2])) { fprintf(stderr, "%s: %ld entries\n", argv[1], n); return 1; }
    printf("%.4f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
