/* faultfs: a FUSE passthrough of one directory that returns EIO on demand.
 *
 * This kernel has no device-mapper (no `error` or `flakey` target), so the storage
 * campaign's EIO comes from here. Usage: faultfs BACKING CONTROL MOUNTPOINT [fuse options]
 * Every operation is passed to BACKING. On SIGUSR1 the file CONTROL is read for the mode:
 *   ok      pass everything through
 *   write   writes, syncs, fallocate, truncate and creates fail with EIO
 *   all     as `write`, and reads and opens fail with EIO too
 * Metadata (stat, readdir, unlink, rename) always works, as on a disk whose data blocks
 * fail. Every open is direct_io so that no read is answered from the page cache, unless
 * FAULTFS_PAGE_CACHE is set in the environment: then files go through the page cache, which
 * shared mmap needs (SQLite's WAL index), at the price of reads that may not reach the disk.
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

enum mode { MODE_OK, MODE_WRITE, MODE_ALL };

static int backing_fd = -1;
static const char *control_path;
static int page_cache; /* FAULTFS_PAGE_CACHE: files through the page cache (shared mmap) */
static volatile sig_atomic_t mode = MODE_OK;

static const char *relative(const char *path) {
    return path[1] == '\0' ? "." : path + 1;
}

static void read_mode(int signal_number) {
    (void)signal_number;
    char text[16] = {0};
    int fd = open(control_path, O_RDONLY | O_CLOEXEC); /* async-signal-safe */
    if (fd < 0)
        return;
    ssize_t got = read(fd, text, sizeof text - 1);
    close(fd);
    if (got <= 0)
        return;
    if (strncmp(text, "all", 3) == 0)
        mode = MODE_ALL;
    else if (strncmp(text, "write", 5) == 0)
        mode = MODE_WRITE;
    else
        mode = MODE_OK;
}

static int writes_fail(void) { return mode != MODE_OK; }
static int reads_fail(void) { return mode == MODE_ALL; }

static void *fs_init(struct fuse_conn_info *conn, struct fuse_config *config) {
    (void)conn;
    config->use_ino = 1;
    page_cache = getenv("FAULTFS_PAGE_CACHE") != NULL;
    config->direct_io = !page_cache;
    config->entry_timeout = config->attr_timeout = config->negative_timeout = 0;
    return NULL;
}

static int fs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    int r = fi ? fstat((int)fi->fh, st) : fstatat(backing_fd, relative(path), st, AT_SYMLINK_NOFOLLOW);
    return r < 0 ? -errno : 0;
}

static int fs_access(const char *path, int mask) {
    return faccessat(backing_fd, relative(path), mask, 0) < 0 ? -errno : 0;
}

static int fs_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
    (void)offset, (void)fi, (void)flags;
    int fd = openat(backing_fd, relative(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    DIR *dir = fdopendir(fd);
    if (dir == NULL) {
        close(fd);
        return -errno;
    }
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        struct stat st = {.st_ino = entry->d_ino, .st_mode = (mode_t)DTTOIF(entry->d_type)};
        if (fill(buf, entry->d_name, &st, 0, 0))
            break;
    }
    closedir(dir);
    return 0;
}

static int fs_mkdir(const char *path, mode_t m) {
    return mkdirat(backing_fd, relative(path), m) < 0 ? -errno : 0;
}

static int fs_unlink(const char *path) {
    return unlinkat(backing_fd, relative(path), 0) < 0 ? -errno : 0;
}

static int fs_rmdir(const char *path) {
    return unlinkat(backing_fd, relative(path), AT_REMOVEDIR) < 0 ? -errno : 0;
}

static int fs_rename(const char *from, const char *to, unsigned int flags) {
    if (flags)
        return -EINVAL;
    return renameat(backing_fd, relative(from), backing_fd, relative(to)) < 0 ? -errno : 0;
}

static int fs_chmod(const char *path, mode_t m, struct fuse_file_info *fi) {
    int r = fi ? fchmod((int)fi->fh, m) : fchmodat(backing_fd, relative(path), m, 0);
    return r < 0 ? -errno : 0;
}

static int fs_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi) {
    int r = fi ? fchown((int)fi->fh, uid, gid)
               : fchownat(backing_fd, relative(path), uid, gid, AT_SYMLINK_NOFOLLOW);
    return r < 0 ? -errno : 0;
}

static int fs_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
    if (writes_fail())
        return -EIO;
    int r;
    if (fi) {
        r = ftruncate((int)fi->fh, size);
    } else {
        int fd = openat(backing_fd, relative(path), O_WRONLY | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        r = ftruncate(fd, size);
        close(fd);
    }
    return r < 0 ? -errno : 0;
}

static int fs_utimens(const char *path, const struct timespec ts[2], struct fuse_file_info *fi) {
    int r = fi ? futimens((int)fi->fh, ts)
               : utimensat(backing_fd, relative(path), ts, AT_SYMLINK_NOFOLLOW);
    return r < 0 ? -errno : 0;
}

static int fs_open(const char *path, struct fuse_file_info *fi) {
    if (reads_fail())
        return -EIO;
    int fd = openat(backing_fd, relative(path), (fi->flags & ~O_DIRECT) | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    fi->fh = (uint64_t)fd;
    fi->direct_io = !page_cache;
    return 0;
}

static int fs_create(const char *path, mode_t m, struct fuse_file_info *fi) {
    if (writes_fail())
        return -EIO;
    int fd = openat(backing_fd, relative(path), (fi->flags & ~O_DIRECT) | O_CLOEXEC, m);
    if (fd < 0)
        return -errno;
    fi->fh = (uint64_t)fd;
    fi->direct_io = !page_cache;
    return 0;
}

static int fs_read(const char *path, char *buf, size_t size, off_t offset,
                   struct fuse_file_info *fi) {
    (void)path;
    if (reads_fail())
        return -EIO;
    ssize_t got = pread((int)fi->fh, buf, size, offset);
    return got < 0 ? -errno : (int)got;
}

static int fs_write(const char *path, const char *buf, size_t size, off_t offset,
                    struct fuse_file_info *fi) {
    (void)path;
    if (writes_fail())
        return -EIO;
    ssize_t done = pwrite((int)fi->fh, buf, size, offset);
    return done < 0 ? -errno : (int)done;
}

static int fs_statfs(const char *path, struct statvfs *st) {
    (void)path;
    return fstatvfs(backing_fd, st) < 0 ? -errno : 0;
}

static int fs_release(const char *path, struct fuse_file_info *fi) {
    (void)path;
    close((int)fi->fh);
    return 0;
}

static int fs_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)path;
    if (writes_fail())
        return -EIO;
    int r = datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh);
    return r < 0 ? -errno : 0;
}

static int fs_fallocate(const char *path, int m, off_t offset, off_t length,
                        struct fuse_file_info *fi) {
    (void)path;
    if (writes_fail())
        return -EIO;
    return fallocate((int)fi->fh, m, offset, length) < 0 ? -errno : 0;
}

static off_t fs_lseek(const char *path, off_t offset, int whence, struct fuse_file_info *fi) {
    (void)path;
    off_t r = lseek((int)fi->fh, offset, whence);
    return r < 0 ? -errno : r;
}

static const struct fuse_operations operations = {
    .init = fs_init,
    .getattr = fs_getattr,
    .access = fs_access,
    .readdir = fs_readdir,
    .mkdir = fs_mkdir,
    .unlink = fs_unlink,
    .rmdir = fs_rmdir,
    .rename = fs_rename,
    .chmod = fs_chmod,
    .chown = fs_chown,
    .truncate = fs_truncate,
    .utimens = fs_utimens,
    .open = fs_open,
    .create = fs_create,
    .read = fs_read,
    .write = fs_write,
    .statfs = fs_statfs,
    .release = fs_release,
    .fsync = fs_fsync,
    .fallocate = fs_fallocate,
    .lseek = fs_lseek,
};

int main(int argc, char *argv[]) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s BACKING CONTROL MOUNTPOINT [fuse options]\n", argv[0]);
        return 2;
    }
    backing_fd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (backing_fd < 0) {
        perror(argv[1]);
        return 1;
    }
    control_path = argv[2];
    struct sigaction action = {.sa_handler = read_mode, .sa_flags = SA_RESTART};
    sigaction(SIGUSR1, &action, NULL);
    /* fuse_main sees: program MOUNTPOINT [options]; -f stays in the foreground (the caller
       holds its PID), -s answers one request at a time (no locking needed here). */
    char *fuse_argv[argc + 2];
    int fuse_argc = 0;
    fuse_argv[fuse_argc++] = argv[0];
    fuse_argv[fuse_argc++] = "-f";
    fuse_argv[fuse_argc++] = "-s";
    for (int i = 3; i < argc; i++)
        fuse_argv[fuse_argc++] = argv[i];
    return fuse_main(fuse_argc, fuse_argv, &operations, NULL);
}
