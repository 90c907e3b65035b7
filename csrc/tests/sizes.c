/*
 * sizes.c -- sizes are checked before they are used: a transfer that reports more bytes
 * than it asked for is an error (-EIO), never counted as data.
 *
 * The engine trusts no count it did not ask for.  This program defines pread() and
 * pwrite() itself (the engine, linked into it, calls these) and makes them lie: the
 * syscall moves the bytes asked for but the call returns 4096 more.  Reads (explicit
 * range, whole file, past a short first transfer) and writes (WRITE_FILE, WRITE_RANGES)
 * on the pread backend must then fail that range with -EIO, leave nothing behind (no
 * buffer out, no temp file), and work normally once the lying stops.  Without the check
 * the engine took the extra bytes as delivered: success, with data it never read.
 */
#include "helpers.h"

#include <sys/syscall.h>
#include <unistd.h>

static int lie; /* 1: claim 4096 bytes more than moved; 2: first call short, then lie */
static int calls;

ssize_t pread(int fd, void *buf, size_t n, off_t off) {
    long r = syscall(SYS_pread64, fd, buf, lie == 2 && calls++ == 0 && n > 1 ? n / 2 : n, off);
    if (r < 0) return -1;
    return lie && (lie == 1 || calls > 1) ? r + 4096 : r;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    long r = syscall(SYS_pwrite64, fd, buf, n, off);
    if (r < 0) return -1;
    return lie ? r + 4096 : r;
}

static char path[256], wpath[256];
static uint8_t *content;
#define SIZE 30000

static int one(lsio_engine *e, uint32_t kind, const char *p, int64_t off, int64_t len,
               const void *data, int want) {
    t_batch b;
    tb_init(&b);
    tb_file(&b, p, kind, 0, 1);
    tb_range(&b, off, len, 7, data);
    T_CHECK(tb_submit(e, &b) == 0, "submit");
    tb_free(&b);
    lsio_completion c;
    T_CHECK(t_reap(e, &c, 1, 1, 10000) == 1, "reap");
    T_CHECK(c.error == want, "kind %u [%lld,+%lld) lie %d: error %d (%s), want %d", kind,
            (long long)off, (long long)len, lie, c.error, lsio_strerror(c.error), want);
    if (!want && kind == LSIO_OP_READ) {
        int64_t n = len < 0 ? SIZE - off : len;
        T_CHECK(c.length == n && memcmp(c.data, content + off, (size_t)n) == 0, "data");
    }
    if (c.buf_id) T_CHECK(lsio_release(e, c.buf_id) == 0, "release");
    return t_check_idle(e);
}

int main(void) {
    t_ctx = "pread";
    t_path(path, sizeof path, "file");
    t_path(wpath, sizeof wpath, "written");
    content = t_make_file(path, SIZE, 9);
    if (!content) return T_EXIT_FAIL;
    int skip;
    lsio_engine *e = t_engine(&t_variants_basic[1], 1 << 20, 0, &skip);
    if (!e) return T_EXIT_FAIL;
    for (lie = 1; lie <= 2; lie++) {
        calls = 0;
        if (one(e, LSIO_OP_READ, path, 100, 1000, NULL, -EIO)) return T_EXIT_FAIL;
        calls = 0;
        if (one(e, LSIO_OP_READ, path, 0, -1, NULL, -EIO)) return T_EXIT_FAIL;
    }
    lie = 1;
    if (one(e, LSIO_OP_WRITE_FILE, wpath, 0, 1000, content, -EIO)) return T_EXIT_FAIL;
    T_CHECK(!t_path_exists(wpath) && t_count_entries(t_tmpdir(), ".lsio-tmp.") == 0,
            "a failed write left a file behind");
    if (one(e, LSIO_OP_WRITE_RANGES, path, 10, 100, content + 10, -EIO)) return T_EXIT_FAIL;
    lie = 0;
    if (one(e, LSIO_OP_READ, path, 100, 1000, NULL, 0)) return T_EXIT_FAIL;
    if (one(e, LSIO_OP_READ, path, 0, -1, NULL, 0)) return T_EXIT_FAIL;
    if (one(e, LSIO_OP_WRITE_FILE, wpath, 0, 1000, content, 0)) return T_EXIT_FAIL;
    lsio_engine_free(e);
    free(content);
    return T_EXIT_PASS;
}
