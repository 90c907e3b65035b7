/*
 * special.c -- files that are not regular: refused at once, never read, never hanging.
 *
 *  - A FIFO read -- whole file, explicit range, last n bytes, O_DIRECT; nobody at the
 *    other end, or a writer holding it open without writing -- gives ONE FILE_ERROR with
 *    LSIO_E_NOT_REGULAR within 2 s (it used to block in open() or read() for ever), on
 *    every variant; the engine then reads a regular file normally.
 *  - /dev/zero (whole: it used to read as empty; a range: as zeros) and /dev/urandom: the
 *    same.
 *  - /proc/self/status (size 0 for statx, but data): a whole-file read fails alone with
 *    LSIO_E_UNSIZED (it used to complete with 0 bytes); an explicit range reads it.  A
 *    really empty regular file still reads whole as 0 bytes, without a buffer.
 *  - WRITE_RANGES into a FIFO (a reader holding it, or none) fails at once
 *    (LSIO_E_NOT_REGULAR, or -ENXIO when the pread backend's non-blocking open finds no
 *    reader); into /dev/null it succeeds (devices may be written).
 *  - io_uring's one gap, made on purpose: a regular file swapped for a FIFO (with a
 *    silent writer) between the statx and the open.  The read then waits in the kernel;
 *    lsio_cancel_group ends it (the file retires within 3 s) and so does
 *    lsio_engine_free (returns within 3 s, no descriptor left) -- both used to wait for
 *    ever.  lsio_group_pending counts the cancelled op until it is really over.
 */
#include "helpers.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

static char fifo[256], regular[256], empty[256];
static uint8_t *regular_data;
#define REGULAR_SIZE 20000

/* Submit b and reap until nothing is pending (at most `ms`); fills all[]. */
static int run_batch(lsio_engine *e, const t_batch *b, lsio_completion *all, int cap, int ms) {
    T_CHECK(tb_submit(e, b) == 0, "submit");
    int64_t t0 = t_now_ms();
    int n = 0;
    for (;;) {
        lsio_completion out[16];
        int k = t_reap(e, out, 16, 1, 200);
        T_CHECK(k >= 0, "reap");
        for (int i = 0; i < k; i++) {
            T_CHECK(n < cap, "too many completions");
            all[n++] = out[i];
        }
        lsio_stats st;
        lsio_engine_stats(e, &st);
        if (k == 0 && st.files_pending == 0 && st.completions_ready == 0) break;
        T_CHECK(t_now_ms() - t0 < ms, "still %llu files pending after %d ms (hung)",
                (unsigned long long)st.files_pending, ms);
    }
    return n;
}

static int expect_file_error(lsio_engine *e, const char *path, int64_t off, int64_t len,
                             uint32_t flags, int want, int also_ok) {
    t_batch b;
    tb_init(&b);
    tb_file(&b, path, LSIO_OP_READ, flags, 1);
    tb_range(&b, off, len, 10, NULL);
    tb_range(&b, 0, 1, 11, NULL);
    lsio_completion all[8];
    int n = run_batch(e, &b, all, 8, 2000);
    tb_free(&b);
    T_CHECK(n == 1, "%s [%lld,+%lld): %d completions, expected ONE file error", path,
            (long long)off, (long long)len, n);
    T_CHECK(all[0].flags == LSIO_C_FILE_ERROR && (all[0].error == want || all[0].error == also_ok) &&
                all[0].tag == 10 && all[0].buf_id == 0,
            "%s: flags %u error %d (%s) tag %llu", path, all[0].flags, all[0].error,
            lsio_strerror(all[0].error), (unsigned long long)all[0].tag);
    return T_EXIT_PASS;
}

static int read_regular_ok(lsio_engine *e) {
    t_batch b;
    tb_init(&b);
    tb_file(&b, regular, LSIO_OP_READ, 0, 3);
    tb_range(&b, 0, -1, 1, NULL);
    tb_range(&b, 100, 50, 2, NULL);
    lsio_completion all[4];
    int n = run_batch(e, &b, all, 4, 10000);
    tb_free(&b);
    T_CHECK(n == 2, "%d completions", n);
    for (int i = 0; i < 2; i++) {
        lsio_completion *c = &all[i];
        int64_t off = c->tag == 1 ? 0 : 100, len = c->tag == 1 ? REGULAR_SIZE : 50;
        T_CHECK(c->error == 0 && c->length == len && memcmp(c->data, regular_data + off, (size_t)len) == 0,
                "regular read tag %llu: error %d length %lld", (unsigned long long)c->tag,
                c->error, (long long)c->length);
        T_CHECK(lsio_release(e, c->buf_id) == 0, "release");
    }
    return t_check_idle(e);
}

static int test_reads(const t_variant *v) {
    int skip, fds0 = t_count_fds();
    lsio_engine *e = t_engine(v, 1 << 20, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    for (int held = 0; held < 2; held++) {
        int wfd = -1;
        if (held) T_CHECK((wfd = open(fifo, O_RDWR | O_NONBLOCK)) >= 0, "writer");
        if (expect_file_error(e, fifo, 0, -1, 0, LSIO_E_NOT_REGULAR, 0)) return T_EXIT_FAIL;
        if (expect_file_error(e, fifo, 0, 100, 0, LSIO_E_NOT_REGULAR, 0)) return T_EXIT_FAIL;
        if (expect_file_error(e, fifo, 50, 100, 0, LSIO_E_NOT_REGULAR, 0)) return T_EXIT_FAIL;
        if (expect_file_error(e, fifo, -10, -1, 0, LSIO_E_NOT_REGULAR, 0)) return T_EXIT_FAIL;
        /* O_DIRECT: a FIFO cannot be opened so (-EINVAL) -- either way, refused at once */
        if (expect_file_error(e, fifo, 0, 4096, LSIO_F_DIRECT, LSIO_E_NOT_REGULAR, -EINVAL))
            return T_EXIT_FAIL;
        if (wfd >= 0) close(wfd);
        if (t_check_idle(e) || read_regular_ok(e)) return T_EXIT_FAIL;
    }
    if (expect_file_error(e, "/dev/zero", 0, -1, 0, LSIO_E_NOT_REGULAR, 0)) return T_EXIT_FAIL;
    if (expect_file_error(e, "/dev/zero", 0, 4096, 0, LSIO_E_NOT_REGULAR, 0)) return T_EXIT_FAIL;
    if (expect_file_error(e, "/dev/urandom", 0, 16, 0, LSIO_E_NOT_REGULAR, 0)) return T_EXIT_FAIL;

    /* /proc: whole refused (a range error), a range read; an empty file reads empty */
    t_batch b;
    tb_init(&b);
    tb_file(&b, "/proc/self/status", LSIO_OP_READ, 0, 4);
    tb_range(&b, 0, -1, 1, NULL);
    tb_file(&b, "/proc/self/status", LSIO_OP_READ, 0, 4); /* explicit: the size is not used */
    tb_range(&b, 0, 5, 2, NULL);
    tb_file(&b, empty, LSIO_OP_READ, 0, 5);
    tb_range(&b, 0, -1, 3, NULL);
    lsio_completion all[8];
    int n = run_batch(e, &b, all, 8, 5000);
    tb_free(&b);
    T_CHECK(n == 3, "%d completions", n);
    for (int i = 0; i < n; i++) {
        lsio_completion *c = &all[i];
        if (c->tag == 1)
            T_CHECK(c->error == LSIO_E_UNSIZED && c->flags == 0 && c->buf_id == 0,
                    "/proc/self/status whole: error %d (%s) length %lld", c->error,
                    lsio_strerror(c->error), (long long)c->length);
        else if (c->tag == 2)
            T_CHECK(c->error == 0 && c->length == 5 && memcmp(c->data, "Name:", 5) == 0,
                    "/proc/self/status [0,5): error %d", c->error);
        else
            T_CHECK(c->error == 0 && c->length == 0 && c->buf_id == 0,
                    "empty file: error %d length %lld buf %llu", c->error, (long long)c->length,
                    (unsigned long long)c->buf_id);
        if (c->buf_id) T_CHECK(lsio_release(e, c->buf_id) == 0, "release");
    }
    if (t_check_idle(e)) return T_EXIT_FAIL;

    /* writes: no FIFO, devices yes */
    for (int held = 0; held < 2; held++) {
        int rfd = -1;
        if (held) T_CHECK((rfd = open(fifo, O_RDONLY | O_NONBLOCK)) >= 0, "reader");
        tb_init(&b);
        tb_file(&b, fifo, LSIO_OP_WRITE_RANGES, 0, 6);
        tb_range(&b, 0, 3, 1, "abc");
        n = run_batch(e, &b, all, 8, 2000);
        tb_free(&b);
        T_CHECK(n == 1 && all[0].flags == LSIO_C_FILE_ERROR &&
                    (all[0].error == LSIO_E_NOT_REGULAR || (!held && all[0].error == -ENXIO)),
                "write into a FIFO (reader %d): %d completions, error %d (%s)", held, n,
                all[0].error, lsio_strerror(all[0].error));
        if (rfd >= 0) {
            char c;
            T_CHECK(read(rfd, &c, 1) <= 0, "the FIFO was written to"); /* 0: no writer */
            close(rfd);
        }
    }
    tb_init(&b);
    tb_file(&b, "/dev/null", LSIO_OP_WRITE_RANGES, 0, 7);
    tb_range(&b, 0, 3, 1, "abc");
    n = run_batch(e, &b, all, 8, 2000);
    tb_free(&b);
    T_CHECK(n == 1 && all[0].error == 0 && all[0].length == 3, "write into /dev/null: error %d",
            all[0].error);
    if (t_check_idle(e)) return T_EXIT_FAIL;
    lsio_engine_free(e);
    T_CHECK(t_count_fds() == fds0, "descriptors leaked: %d -> %d", fds0, t_count_fds());
    return T_EXIT_PASS;
}

/* ---- io_uring: a FIFO swapped in between the statx and the open */

static int park_read(lsio_engine *e, const char *path, int *wfd) {
    unlink(path);
    T_CHECK(t_write_file(path, "regular", 7) == 0, "write");
    t_batch b;
    tb_init(&b);
    tb_file(&b, path, LSIO_OP_READ, 0, 9);
    tb_range(&b, 0, 5, 1, NULL);
    lsio_stats st0, st;
    lsio_engine_stats(e, &st0);
    T_CHECK(tb_submit(e, &b) == 0, "submit");
    tb_free(&b);
    lsio_completion c;
    T_CHECK(t_reap(e, &c, 1, 0, 0) == 0, "reap"); /* submits the statx */
    usleep(200 * 1000);                            /* ... which io-wq runs meanwhile */
    T_CHECK(unlink(path) == 0 && mkfifo(path, 0644) == 0, "swap");
    T_CHECK((*wfd = open(path, O_RDWR | O_NONBLOCK)) >= 0, "writer");
    for (int i = 0; i < 50; i++) { /* the statx lands (regular), then the open and read go */
        T_CHECK(t_reap(e, &c, 1, 0, 0) == 0, "a completion already");
        lsio_engine_stats(e, &st);
        if (st.ops_submitted - st0.ops_submitted >= 3) break;
        usleep(10 * 1000);
    }
    T_CHECK(st.ops_submitted - st0.ops_submitted >= 3, "the read was never issued");
    /* the read now waits in the kernel for the FIFO's silent writer */
    T_CHECK(t_reap(e, &c, 1, 1, 300) == 0, "the swapped-in FIFO was read: error %d", c.error);
    lsio_engine_stats(e, &st);
    T_CHECK(st.files_pending == 1 && st.inflight >= 1, "no read waiting (%llu in flight)",
            (unsigned long long)st.inflight);
    return T_EXIT_PASS;
}

static int test_swapped_fifo(const t_variant *v) {
    char path[256];
    t_path(path, sizeof path, "swapped-%s", v->name);
    int skip, wfd = -1, fds0 = t_count_fds();
    lsio_engine *e = t_engine(v, 1 << 20, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    /* cancel_group ends it */
    if (park_read(e, path, &wfd)) return T_EXIT_FAIL;
    T_CHECK(lsio_group_pending(e, 9) == 1 && lsio_group_pending(e, 8) == 0, "group_pending");
    T_CHECK(lsio_cancel_group(e, 9) == 1, "cancel");
    T_CHECK(lsio_group_pending(e, 9) == 1, "a cancelled op in flight is still pending");
    int64_t t0 = t_now_ms();
    for (;;) {
        lsio_completion c;
        T_CHECK(t_reap(e, &c, 1, 1, 100) == 0, "a completion for a cancelled group");
        lsio_stats st;
        lsio_engine_stats(e, &st);
        if (lsio_group_pending(e, 9) == 0) {
            T_CHECK(st.files_pending == 0 && st.inflight == 0, "group 9 done, engine busy");
            break;
        }
        T_CHECK(t_now_ms() - t0 < 3000, "the cancelled read still waits after 3 s");
    }
    if (t_check_idle(e)) return T_EXIT_FAIL;
    close(wfd);
    /* and so does lsio_engine_free */
    if (park_read(e, path, &wfd)) return T_EXIT_FAIL;
    t0 = t_now_ms();
    lsio_engine_free(e);
    T_CHECK(t_now_ms() - t0 < 3000, "lsio_engine_free took %lld ms", (long long)(t_now_ms() - t0));
    close(wfd);
    T_CHECK(t_count_fds() == fds0, "descriptors leaked: %d -> %d", fds0, t_count_fds());
    return T_EXIT_PASS;
}

int main(void) {
    t_path(fifo, sizeof fifo, "fifo");
    t_path(regular, sizeof regular, "regular");
    t_path(empty, sizeof empty, "empty");
    regular_data = t_make_file(regular, REGULAR_SIZE, 3);
    if (!regular_data || mkfifo(fifo, 0644) || t_write_file(empty, "", 0)) return T_EXIT_FAIL;
    int skipped = 0, runs = 0;
    char ctx[128];
    for (int i = 0; i < t_nvariants_all; i++, runs++) {
        snprintf(ctx, sizeof ctx, "%s special reads", t_variants_all[i].name), t_ctx = ctx;
        T_RUN(test_reads(&t_variants_all[i]), skipped);
    }
    /* the race needs the caller to drive the ring (no ring thread) */
    static const t_variant swap[] = {
        {"uring", LSIO_BACKEND_URING, -1, -1, -1, 0},
        {"uring-nofixed", LSIO_BACKEND_URING, 0, 0, -1, 0},
    };
    for (int i = 0; i < 2; i++, runs++) {
        snprintf(ctx, sizeof ctx, "%s swapped fifo", swap[i].name), t_ctx = ctx;
        T_RUN(test_swapped_fifo(&swap[i]), skipped);
    }
    free(regular_data);
    return skipped == runs ? T_EXIT_SKIP : T_EXIT_PASS;
}
