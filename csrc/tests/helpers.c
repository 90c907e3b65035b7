/* helpers.c -- see helpers.h. */
#include "helpers.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *t_ctx;

/* ------------------------------------------------------------------ temp files */

static char tmpdir[4096];
static pid_t tmpdir_owner;

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    if (type == FTW_DP || type == FTW_D || type == FTW_DNR) return rmdir(path) ? 0 : 0;
    unlink(path);
    return 0;
}

static int open_dir_perms(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    if (type == FTW_D || type == FTW_DNR) chmod(path, 0700);
    return 0;
}

static void rm_tmpdir(void) {
    if (!tmpdir[0] || getpid() != tmpdir_owner) return; /* forked children leave it alone */
    chmod(tmpdir, 0700);
    nftw(tmpdir, open_dir_perms, 16, FTW_PHYS);
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    tmpdir[0] = 0;
}

const char *t_tmpdir(void) {
    if (!tmpdir[0]) {
        /* runtests.sh passes a per-run directory under /tmp that it removes at the end,
         * so that even a test killed by its timeout leaves nothing behind */
        const char *root = getenv("LSIO_TEST_TMPROOT");
        snprintf(tmpdir, sizeof tmpdir - 32, "%s", root && *root ? root : "/tmp");
        strcat(tmpdir, "/lsio-test-XXXXXX");
        if (!mkdtemp(tmpdir)) {
            perror("mkdtemp");
            exit(T_EXIT_FAIL);
        }
        tmpdir_owner = getpid();
        atexit(rm_tmpdir);
    }
    return tmpdir;
}

char *t_path(char *out, size_t n, const char *fmt, ...) {
    int k = snprintf(out, n, "%s/", t_tmpdir());
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out + k, n - (size_t)k, fmt, ap);
    va_end(ap);
    return out;
}

uint8_t *t_pattern(uint64_t n, uint32_t seed) {
    uint8_t *p = malloc(n ? n : 1);
    if (!p) return NULL;
    uint64_t x = 0x9E3779B97F4A7C15ull * (seed + 1);
    for (uint64_t i = 0; i < n; i++) {
        /* xorshift64*: no period that lines up with 4 KiB pages */
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        p[i] = (uint8_t)((x * 0x2545F4914F6CDD1Dull) >> 56);
    }
    return p;
}

int t_write_file(const char *path, const void *data, uint64_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    const char *p = data;
    while (n) {
        ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (w < 0) {
            int err = -errno;
            close(fd);
            return err;
        }
        p += w;
        n -= (uint64_t)w;
    }
    return close(fd) ? -errno : 0;
}

uint8_t *t_make_file(const char *path, uint64_t n, uint32_t seed) {
    uint8_t *p = t_pattern(n, seed);
    if (!p) return NULL;
    int rc = t_write_file(path, p, n);
    if (rc) {
        fprintf(stderr, "write %s: %s\n", path, strerror(-rc));
        free(p);
        return NULL;
    }
    return p;
}

uint8_t *t_read_file(const char *path, uint64_t *n) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct stat st;
    if (fstat(fd, &st)) {
        close(fd);
        return NULL;
    }
    uint8_t *p = malloc(st.st_size ? (size_t)st.st_size : 1);
    uint64_t got = 0;
    while (p && got < (uint64_t)st.st_size) {
        ssize_t r = read(fd, p + got, (size_t)st.st_size - got);
        if (r <= 0) {
            free(p);
            p = NULL;
            break;
        }
        got += (uint64_t)r;
    }
    close(fd);
    if (p) *n = got;
    return p;
}

int t_count_entries(const char *dir, const char *sub) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (!sub || strstr(de->d_name, sub)) n++;
    }
    closedir(d);
    return n;
}

int t_path_exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

int t_count_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

int64_t t_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t read_u64_file(const char *path, int *ok) {
    FILE *f = fopen(path, "re");
    unsigned long long v = 0;
    *ok = f && fscanf(f, "%llu", &v) == 1;
    if (f) fclose(f);
    return v;
}

uint64_t t_mem_available(void) {
    uint64_t avail = 0;
    FILE *f = fopen("/proc/meminfo", "re");
    if (f) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) avail = kb * 1024;
        fclose(f);
    }
    int ok_max, ok_cur;
    uint64_t max = read_u64_file("/sys/fs/cgroup/memory.max", &ok_max); /* "max": not ok */
    uint64_t cur = read_u64_file("/sys/fs/cgroup/memory.current", &ok_cur);
    if (ok_max && ok_cur) {
        uint64_t left = max > cur ? max - cur : 0;
        if (left < avail) avail = left;
    }
    return avail;
}

/* ------------------------------------------------------------------ engines */

const t_variant t_variants_all[] = {
    {"uring", LSIO_BACKEND_URING, -1, -1, -1, 0},
    {"uring-nofixed", LSIO_BACKEND_URING, 0, 0, -1, 0},
    {"uring-nolink", LSIO_BACKEND_URING, 1, 0, -1, 0},
    {"uring-regbuf", LSIO_BACKEND_URING, -1, -1, 1, 0},
    {"uring-ringthread", LSIO_BACKEND_URING, -1, -1, -1, 1},
    {"pread", LSIO_BACKEND_PREAD, -1, -1, -1, 0},
};
const int t_nvariants_all = sizeof t_variants_all / sizeof t_variants_all[0];

const t_variant t_variants_basic[] = {
    {"uring", LSIO_BACKEND_URING, -1, -1, -1, 0},
    {"pread", LSIO_BACKEND_PREAD, -1, -1, -1, 0},
};
const int t_nvariants_basic = sizeof t_variants_basic / sizeof t_variants_basic[0];

const t_variant t_variants_sched[] = {
    {"uring", LSIO_BACKEND_URING, -1, -1, -1, 0},
    {"uring-ringthread", LSIO_BACKEND_URING, -1, -1, -1, 1},
    {"pread", LSIO_BACKEND_PREAD, -1, -1, -1, 0},
};
const int t_nvariants_sched = sizeof t_variants_sched / sizeof t_variants_sched[0];

lsio_engine *t_engine(const t_variant *v, uint64_t pool_bytes, uint32_t depth, int *skip) {
    return t_engine_ex(v, pool_bytes, depth, 0, 0, skip);
}

lsio_engine *t_engine_ex(const t_variant *v, uint64_t pool_bytes, uint32_t depth,
                         uint32_t max_open, uint32_t threads, int *skip) {
    lsio_config cfg;
    lsio_config_default(&cfg);
    cfg.backend = v->backend;
    if (pool_bytes) cfg.pool_bytes = pool_bytes;
    if (depth) cfg.depth = depth;
    if (max_open) cfg.max_open = max_open;
    if (threads) cfg.threads = threads;
    cfg.fixed_files = v->fixed_files;
    cfg.link_open = v->link_open;
    cfg.register_buffers = v->register_buffers;
    cfg.ring_thread = v->ring_thread;
    int err = 0;
    *skip = 0;
    lsio_engine *e = lsio_engine_new(&cfg, &err);
    if (!e) {
        if (v->backend == LSIO_BACKEND_URING && (err == -ENOSYS || err == -EPERM)) {
            fprintf(stderr, "[%s] io_uring not available (%s): skipped\n", v->name,
                    strerror(-err));
            *skip = 1;
        } else {
            fprintf(stderr, "[%s] lsio_engine_new: %s\n", v->name, lsio_strerror(err));
        }
        return NULL;
    }
    if (lsio_engine_backend(e) != v->backend) {
        fprintf(stderr, "[%s] got backend %d\n", v->name, lsio_engine_backend(e));
        lsio_engine_free(e);
        return NULL;
    }
    return e;
}

int t_check_idle(lsio_engine *e) {
    lsio_stats st;
    lsio_completion c;
    /* after the last completion a file may still have its close to do */
    int64_t t0 = t_now_ms();
    int n = lsio_reap(e, &c, 1, 1, 10000);
    T_CHECK(n == 0, "reap after the last completion returned %d (tag %llu error %d)", n,
            (unsigned long long)c.tag, n > 0 ? c.error : 0);
    T_CHECK(t_now_ms() - t0 < 5000, "reap with nothing left to complete waited %lld ms",
            (long long)(t_now_ms() - t0));
    lsio_engine_stats(e, &st);
    T_CHECK(st.buffers_out == 0, "buffers_out %llu", (unsigned long long)st.buffers_out);
    T_CHECK(st.pool_in_use == 0, "pool_in_use %llu", (unsigned long long)st.pool_in_use);
    T_CHECK(st.files_pending == 0, "files_pending %llu", (unsigned long long)st.files_pending);
    T_CHECK(st.ranges_pending == 0, "ranges_pending %llu", (unsigned long long)st.ranges_pending);
    T_CHECK(st.completions_ready == 0, "completions_ready %llu",
            (unsigned long long)st.completions_ready);
    T_CHECK(st.open_files == 0, "open_files %llu", (unsigned long long)st.open_files);
    T_CHECK(st.inflight == 0, "inflight %llu", (unsigned long long)st.inflight);
    T_CHECK(st.pool_peak <= st.pool_bytes, "peak %llu > bound %llu",
            (unsigned long long)st.pool_peak, (unsigned long long)st.pool_bytes);
    return T_EXIT_PASS;
}

/* ------------------------------------------------------------------ batches */

static void *grow(void *p, uint64_t *cap, uint64_t need, size_t elem) {
    if (need <= *cap) return p;
    uint64_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    p = realloc(p, c * elem);
    if (!p) {
        perror("realloc");
        exit(T_EXIT_FAIL);
    }
    *cap = c;
    return p;
}

void tb_init(t_batch *b) { memset(b, 0, sizeof *b); }

void tb_free(t_batch *b) {
    free(b->files);
    free(b->ranges);
    free(b->paths);
    memset(b, 0, sizeof *b);
}

void tb_reset(t_batch *b) { b->nfiles = 0, b->nranges = 0, b->paths_len = 0; }

void tb_file(t_batch *b, const char *path, uint32_t kind, uint32_t flags, uint64_t group) {
    uint64_t cf = b->cap_files;
    b->files = grow(b->files, &cf, b->nfiles + 1, sizeof *b->files);
    b->cap_files = (uint32_t)cf;
    size_t n = strlen(path) + 1;
    b->paths = grow(b->paths, &b->cap_paths, b->paths_len + n, 1);
    lsio_file *f = &b->files[b->nfiles++];
    memset(f, 0, sizeof *f);
    f->group = group;
    f->path_off = (uint32_t)b->paths_len;
    f->kind = kind;
    f->flags = flags;
    memcpy(b->paths + b->paths_len, path, n);
    b->paths_len += n;
}

void tb_range(t_batch *b, int64_t offset, int64_t length, uint64_t tag, const void *data) {
    b->ranges = grow(b->ranges, &b->cap_ranges, b->nranges + 1, sizeof *b->ranges);
    lsio_range *r = &b->ranges[b->nranges++];
    r->offset = offset;
    r->length = length;
    r->tag = tag;
    r->data = data;
    b->files[b->nfiles - 1].nranges++;
}

int tb_submit(lsio_engine *e, const t_batch *b) {
    return lsio_submit(e, b->files, b->nfiles, b->ranges, b->nranges, b->paths, b->paths_len);
}

int t_reap(lsio_engine *e, lsio_completion *out, uint32_t max, uint32_t min, int timeout_ms) {
    int n = lsio_reap(e, out, max, min, timeout_ms);
    if (n < 0) fprintf(stderr, "[%s] lsio_reap: %s\n", t_ctx ? t_ctx : "-", lsio_strerror(n));
    return n;
}
