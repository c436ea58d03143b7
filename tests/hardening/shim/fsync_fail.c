/*
 * LD_PRELOAD shim for tests/hardening/test_fsync.py: fsync, fdatasync and
 * syncfs fail with EIO while the file named by FSYNC_FAIL_FLAG exists, as a
 * disk that reports a write-back error does. The flag file's content picks
 * which files fail: "all", or "db" for every file but SQLite's "-wal" (so
 * commits succeed and checkpoints fail). Each injected failure appends the
 * file's path to FSYNC_FAIL_LOG, so the test can tell the fault really hit.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int should_fail(int fd) {
    const char *flag = getenv("FSYNC_FAIL_FLAG");
    if (flag == NULL) return 0;
    int saved = errno;
    char mode[16] = {0};
    int f = open(flag, O_RDONLY | O_CLOEXEC);
    if (f < 0) {
        errno = saved;
        return 0;
    }
    ssize_t n = read(f, mode, sizeof mode - 1);
    close(f);
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, path, sizeof path - 1);
    path[len < 0 ? 0 : len] = '\0';
    int fail = 1;
    if (n > 0 && strncmp(mode, "db", 2) == 0) {
        size_t plen = strlen(path);
        fail = !(plen >= 4 && strcmp(path + plen - 4, "-wal") == 0);
    }
    const char *log = getenv("FSYNC_FAIL_LOG");
    if (fail && log != NULL) {
        int l = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (l >= 0) {
            path[len < 0 ? 0 : len] = '\n';
            ssize_t w = write(l, path, (size_t)(len < 0 ? 0 : len) + 1);
            (void)w;
            close(l);
        }
    }
    errno = saved;
    return fail;
}

#define WRAP(name)                                                   \
    int name(int fd) {                                               \
        static int (*real)(int);                                     \
        if (should_fail(fd)) {                                       \
            errno = EIO;                                             \
            return -1;                                               \
        }                                                            \
        if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, #name); \
        return real(fd);                                             \
    }

WRAP(fsync)
WRAP(fdatasync)
WRAP(syncfs)
