/*
 * cancel.c -- lsio_cancel_group and lsio_engine_free with work queued and in flight.
 *
 *  1. starved: a 64 KiB pool, group 1 (1000 x 4 KiB) then group 2 (50 x 4 KiB); the
 *     caller holds all 16 buffers, so everything else is queued.  lsio_cancel_group(1)
 *     returns exactly the number of group 1's ranges not yet reaped; again: 0; an unknown
 *     group: 0.  After the held buffers are released, the rest of group 2's 50
 *     completions arrive (right bytes), none of group 1.
 *     The engine is idle and usable (group 1's id works again in a new batch).
 *  2. in flight: group 1 = 3 files x 4000 ranges (O_DIRECT when the file system has it,
 *     so that io_uring reads really are in flight), reaped once, then cancelled.  No
 *     completion of group 1 comes afterwards; the return value counts every range not
 *     yet reaped (io_uring driven by lsio_reap: exactly; pread workers or the ring thread
 *     may have finished more meanwhile, whose completions are discarded with their
 *     buffers).  In-flight reads are dropped too.
 *     A WRITE_FILE group cancelled just after it started leaves no temp file and no
 *     target.  The engine ends idle (no buffer out, pool empty) and reads correctly.
 *  3. lsio_engine_free with reads in flight, a write in progress, and buffers held by the
 *     caller: every descriptor the engine opened is closed by the time it returns
 *     (/proc/self/fd before vs after), no temp file remains, the held buffers' bytes are
 *     still readable and right, and releasing them afterwards (lsio_release and
 *     lsio_release_many, plus a bad id -> -EINVAL) is valid; the last release frees the
 *     engine -- ASan/LSan check that nothing is used after free or leaked.
 *  4. cancel while a WRITE_FILE's failing rename is in flight: no temp file is left.
 * All on io_uring (driven by lsio_reap, and by the engine's ring thread) and pread.
 */
#include "helpers.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define RSZ 4096
static char path_a[256], path_b[256], big[3][256];
static uint8_t *ca, *cb, *cbig[3];
#define BIG_SIZE (8 << 20)
static int have_direct;

static int check_read(const lsio_completion *c, const uint8_t *content) {
    T_CHECK(c->error == 0 && c->flags == 0, "tag %llu group %llu: error %d (%s)",
            (unsigned long long)c->tag, (unsigned long long)c->group, c->error,
            lsio_strerror(c->error));
    if (c->length)
        T_CHECK(c->buf_id && memcmp(c->data, content + c->offset, (size_t)c->length) == 0,
                "tag %llu: bytes", (unsigned long long)c->tag);
    return T_EXIT_PASS;
}

/* ------------------------------------------------------------------ 1: starved */

static int test_starved(const t_variant *v) {
    int skip;
    lsio_engine *e = t_engine(v, 64 << 10, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    t_batch b;
    tb_init(&b);
    tb_file(&b, path_a, LSIO_OP_READ, 0, 1);
    for (int i = 0; i < 1000; i++) tb_range(&b, (int64_t)(i % 200) * RSZ, RSZ, (uint64_t)i, NULL);
    tb_file(&b, path_b, LSIO_OP_READ, 0, 2);
    for (int i = 0; i < 50; i++) tb_range(&b, (int64_t)i * RSZ, RSZ, (uint64_t)(5000 + i), NULL);
    T_CHECK(tb_submit(e, &b) == 0, "submit");
    lsio_completion out[2048];
    uint64_t held[64];
    int nheld = 0, got1 = 0, got2 = 0;
    for (;;) {
        int n = t_reap(e, out, 2048, 1, 300);
        T_CHECK(n >= 0, "reap");
        if (n == 0) break;
        for (int i = 0; i < n; i++) {
            /* (group 2's file starts while group 1's open is in flight) */
            if (check_read(&out[i], out[i].group == 1 ? ca : cb)) return T_EXIT_FAIL;
            held[nheld++] = out[i].buf_id;
            got1 += out[i].group == 1;
            got2 += out[i].group == 2;
        }
    }
    T_CHECK(nheld == 16, "%d buffers held", nheld);
    /* stalled: nothing in flight, nothing ready, so the count is exact */
    int64_t n = lsio_cancel_group(e, 1);
    T_CHECK(n == 1000 - got1, "cancel returned %lld, expected %d", (long long)n, 1000 - got1);
    T_CHECK(lsio_cancel_group(e, 1) == 0, "second cancel of the same group");
    T_CHECK(lsio_cancel_group(e, 12345) == 0, "cancel of an unknown group");
    T_CHECK(lsio_release_many(e, held, (uint64_t)nheld) == 0, "release");
    for (;;) {
        int k = t_reap(e, out, 2048, 1, 10000);
        T_CHECK(k >= 0, "reap");
        if (k == 0) break;
        for (int i = 0; i < k; i++) {
            T_CHECK(out[i].group == 2, "completion of cancelled group %llu (tag %llu)",
                    (unsigned long long)out[i].group, (unsigned long long)out[i].tag);
            if (check_read(&out[i], cb)) return T_EXIT_FAIL;
            T_CHECK(lsio_release(e, out[i].buf_id) == 0, "release");
        }
        got2 += k;
    }
    T_CHECK(got2 == 50, "group 2: %d completions", got2);
    T_CHECK(got1 < 16 + 1, "group 1: %d completions", got1);
    if (t_check_idle(e)) return T_EXIT_FAIL;
    /* still usable, and the cancelled group's id is not poisoned */
    tb_reset(&b);
    tb_file(&b, path_a, LSIO_OP_READ, 0, 1);
    for (int i = 0; i < 10; i++) tb_range(&b, i * 1000, 1000, (uint64_t)i, NULL);
    T_CHECK(tb_submit(e, &b) == 0, "submit");
    int got = 0;
    while (got < 10) {
        int k = t_reap(e, out, 2048, 1, 10000);
        T_CHECK(k > 0, "reap after cancel: %d", k);
        for (int i = 0; i < k; i++) {
            if (check_read(&out[i], ca)) return T_EXIT_FAIL;
            T_CHECK(lsio_release(e, out[i].buf_id) == 0, "release");
        }
        got += k;
    }
    if (t_check_idle(e)) return T_EXIT_FAIL;
    tb_free(&b);
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

/* ------------------------------------------------------------------ 2: in flight */

static int test_inflight(const t_variant *v, uint32_t rflags) {
    int skip;
    lsio_engine *e = t_engine(v, 8 << 20, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    enum { PER = 4000, TOTAL = 3 * PER };
    t_batch b;
    tb_init(&b);
    uint64_t x = 12345;
    for (int f = 0; f < 3; f++) {
        tb_file(&b, big[f], LSIO_OP_READ, rflags, 1);
        for (int i = 0; i < PER; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            int64_t len = 512 + (int64_t)(x >> 33) % 60000;
            int64_t off = (int64_t)((x >> 20) % (uint64_t)(BIG_SIZE - len));
            tb_range(&b, off, len, (uint64_t)(f * PER + i), NULL);
        }
    }
    T_CHECK(tb_submit(e, &b) == 0, "submit");
    lsio_completion *out = malloc(4096 * sizeof *out);
    int k = t_reap(e, out, 4096, 1, 10000);
    T_CHECK(k > 0, "first reap: %d", k);
    for (int i = 0; i < k; i++) {
        if (check_read(&out[i], cbig[out[i].tag / PER])) return T_EXIT_FAIL;
        T_CHECK(lsio_release(e, out[i].buf_id) == 0, "release");
    }
    lsio_stats st;
    lsio_engine_stats(e, &st);
    int64_t n = lsio_cancel_group(e, 1);
    fprintf(stderr, "[%s] cancel after %d completions: %llu in flight, %llu ready, "
            "%lld dropped\n", t_ctx, k, (unsigned long long)st.inflight,
            (unsigned long long)st.completions_ready, (long long)n);
    if (v->backend == LSIO_BACKEND_URING && !v->ring_thread) {
        /* nothing moves between reaps: every range not reaped is counted */
        T_CHECK(st.completions_ready == 0, "completions left after a reap of 4096");
        T_CHECK(n == TOTAL - k, "cancel returned %lld, expected %d", (long long)n, TOTAL - k);
    } else {
        T_CHECK(n > 0 && n <= TOTAL - k, "cancel returned %lld (%d not reaped)", (long long)n,
                TOTAL - k);
    }
    /* a write group, cancelled right after it started */
    char wpath[300];
    snprintf(wpath, sizeof wpath, "%s/cancelled-write", t_tmpdir());
    t_batch w;
    tb_init(&w);
    tb_file(&w, wpath, LSIO_OP_WRITE_FILE, 0, 3);
    for (int i = 0; i < 32; i++)
        tb_range(&w, (int64_t)i * (256 << 10), 256 << 10, (uint64_t)i, cbig[0] + i * (256 << 10));
    T_CHECK(tb_submit(e, &w) == 0, "submit write");
    /* the write may already be landing (pread workers, the ring thread, or a loaded
     * machine): its completions may come, never one of the cancelled group 1 */
    k = t_reap(e, out, 4096, 0, 0);
    for (int i = 0; i < k; i++)
        T_CHECK(out[i].group == 3, "completion of cancelled group %llu (tag %llu, error %d)",
                (unsigned long long)out[i].group, (unsigned long long)out[i].tag, out[i].error);
    int64_t nw = lsio_cancel_group(e, 3);
    T_CHECK(nw >= 0 && nw <= 32 - k, "write cancel returned %lld after %d completions",
            (long long)nw, k);
    /* drain: nothing of groups 1 and 3 may come after their cancels */
    for (;;) {
        k = t_reap(e, out, 4096, 1, 10000);
        T_CHECK(k >= 0, "reap");
        if (k == 0) break;
        T_CHECK(0, "completion of cancelled group %llu (tag %llu, error %d)",
                (unsigned long long)out[0].group, (unsigned long long)out[0].tag, out[0].error);
    }
    int tmp = t_count_entries(t_tmpdir(), ".lsio-tmp.");
    T_CHECK(tmp == 0, "%d temp files after a cancelled WRITE_FILE", tmp);
    /* the target: absent, or (the cancel came after its rename) whole -- never partial */
    if (t_path_exists(wpath)) {
        struct stat sb;
        T_CHECK(stat(wpath, &sb) == 0 && sb.st_size == 32 * (256 << 10),
                "a cancelled WRITE_FILE left a partial target (%lld bytes)", (long long)sb.st_size);
        uint8_t *got = malloc((size_t)sb.st_size);
        int fd = open(wpath, O_RDONLY);
        T_CHECK(fd >= 0 && pread(fd, got, (size_t)sb.st_size, 0) == sb.st_size, "read target");
        close(fd);
        T_CHECK(memcmp(got, cbig[0], (size_t)sb.st_size) == 0, "cancelled write: wrong bytes");
        free(got);
        unlink(wpath);
    }
    if (t_check_idle(e)) return T_EXIT_FAIL;
    /* still reads fine */
    tb_reset(&b);
    tb_file(&b, big[1], LSIO_OP_READ, rflags, 1);
    tb_range(&b, 12345, 100000, 1, NULL);
    T_CHECK(tb_submit(e, &b) == 0, "submit");
    k = t_reap(e, out, 4096, 1, 10000);
    T_CHECK(k == 1 && check_read(&out[0], cbig[1]) == 0, "read after cancel");
    T_CHECK(lsio_release(e, out[0].buf_id) == 0, "release");
    if (t_check_idle(e)) return T_EXIT_FAIL;
    free(out);
    tb_free(&b);
    tb_free(&w);
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

/* ------------------------------------------------------------------ 3: engine free */

static int test_free(const t_variant *v, uint32_t rflags, int hold) {
    int fds0 = t_count_fds();
    int skip;
    lsio_engine *e = t_engine(v, 4 << 20, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    t_batch b;
    tb_init(&b);
    for (int f = 0; f < 3; f++) {
        tb_file(&b, big[f], LSIO_OP_READ, rflags, 1);
        for (int i = 0; i < 3000; i++)
            tb_range(&b, (int64_t)i * 2000, 2000 + i % 3, (uint64_t)(f * 3000 + i), NULL);
    }
    char wpath[300];
    snprintf(wpath, sizeof wpath, "%s/written-at-free", t_tmpdir());
    tb_file(&b, wpath, LSIO_OP_WRITE_FILE, LSIO_F_FSYNC, 2);
    for (int i = 0; i < 8; i++)
        tb_range(&b, (int64_t)i * (1 << 20), 1 << 20, (uint64_t)i, cbig[2] + i * (1 << 20));
    T_CHECK(tb_submit(e, &b) == 0, "submit");
    lsio_completion out[256];
    int k = 0;
    if (hold) {
        k = t_reap(e, out, 256, 1, 10000);
        T_CHECK(k > 0, "reap: %d", k);
        for (int i = 0; i < k; i++)
            if (check_read(&out[i], cbig[out[i].tag / 3000])) return T_EXIT_FAIL;
    }
    lsio_stats st;
    lsio_engine_stats(e, &st);
    fprintf(stderr, "[%s] free with %llu files pending, %llu in flight, %d buffers held\n",
            t_ctx, (unsigned long long)st.files_pending, (unsigned long long)st.inflight, k);
    lsio_engine_free(e);
    /* everything the engine opened is closed now, buffers or not */
    int fds1 = t_count_fds();
    T_CHECK(fds1 == fds0, "%d descriptors before the engine, %d after lsio_engine_free", fds0, fds1);
    int tmp = t_count_entries(t_tmpdir(), ".lsio-tmp.");
    T_CHECK(tmp == 0, "%d temp files after lsio_engine_free", tmp);
    if (t_path_exists(wpath)) { /* the write got all the way through: then it is whole */
        uint64_t n = 0;
        uint8_t *got = t_read_file(wpath, &n);
        T_CHECK(got && n == 8 << 20 && memcmp(got, cbig[2], n) == 0, "partial file written");
        free(got);
        unlink(wpath);
    }
    /* the caller's buffers are still the caller's */
    for (int i = 0; i < k; i++)
        if (check_read(&out[i], cbig[out[i].tag / 3000])) return T_EXIT_FAIL;
    if (k) {
        T_CHECK(lsio_release(e, 999999999) == -EINVAL, "bad id after free");
        int half = k / 2;
        for (int i = 0; i < half; i++)
            T_CHECK(lsio_release(e, out[i].buf_id) == 0, "release after free");
        /* the rest, in one call: the last release frees the engine */
        uint64_t ids[256];
        for (int i = half; i < k; i++) ids[i - half] = out[i].buf_id;
        T_CHECK(lsio_release_many(e, ids, (uint64_t)(k - half)) == 0, "release_many after free");
    }
    tb_free(&b);
    T_CHECK(t_count_fds() == fds0, "descriptors after the last release");
    return T_EXIT_PASS;
}

/* 4: cancel while a WRITE_FILE's rename is in flight and the rename fails (the target is
 * a non-empty directory): the temp file must still be removed.  io_uring: drive with
 * non-blocking reaps until the rename has been issued, then cancel.  pread: cancel after
 * varying delays. */
static int test_cancel_rename(const t_variant *v) {
    char target[300], inside[400];
    snprintf(target, sizeof target, "%s/rename-target-dir", t_tmpdir());
    snprintf(inside, sizeof inside, "%s/x", target);
    if (!t_path_exists(target)) T_CHECK(mkdir(target, 0755) == 0 && t_write_file(inside, "x", 1) == 0, "setup");
    int skip;
    lsio_engine *e = t_engine(v, 1 << 20, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    lsio_completion out[8];
    int rounds = v->backend == LSIO_BACKEND_URING ? 300 : 80;
    for (int round = 0; round < rounds; round++) {
        t_batch b;
        tb_init(&b);
        tb_file(&b, target, LSIO_OP_WRITE_FILE, 0, 77);
        tb_range(&b, 0, 4096, 1, cbig[0]);
        lsio_stats st0, st;
        lsio_engine_stats(e, &st0);
        T_CHECK(tb_submit(e, &b) == 0, "submit");
        if (v->backend == LSIO_BACKEND_URING) {
            /* statx (of the target), open, write, close, rename: stop as soon as the
             * rename is issued */
            for (int i = 0; i < 100000; i++) {
                lsio_engine_stats(e, &st);
                if (st.ops_submitted - st0.ops_submitted >= 5 || st.files_pending == 0) break;
                int n = t_reap(e, out, 8, 0, 0);
                T_CHECK(n >= 0, "reap");
                for (int k = 0; k < n; k++)
                    T_CHECK(out[k].flags == LSIO_C_FILE_ERROR && out[k].error == -EISDIR,
                            "error %d", out[k].error);
            }
        } else {
            usleep((useconds_t)(round % 40 * 25));
        }
        lsio_cancel_group(e, 77);
        for (;;) {
            int n = t_reap(e, out, 8, 1, 10000);
            T_CHECK(n >= 0, "reap");
            if (n == 0) break;
            for (int k = 0; k < n; k++)
                T_CHECK(out[k].flags == LSIO_C_FILE_ERROR && out[k].error == -EISDIR,
                        "error %d", out[k].error);
        }
        int tmp = t_count_entries(t_tmpdir(), ".lsio-tmp.");
        T_CHECK(tmp == 0, "round %d: %d temp files left after a cancelled, failed rename",
                round, tmp);
        T_CHECK(t_count_entries(target, NULL) == 1, "the target directory changed");
        if (t_check_idle(e)) return T_EXIT_FAIL;
        tb_free(&b);
    }
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

static int direct_supported(void) {
    int fd = open(big[0], O_RDONLY | O_DIRECT);
    if (fd < 0) return 0;
    void *buf = NULL;
    int ok = posix_memalign(&buf, 4096, 4096) == 0 && pread(fd, buf, 4096, 0) == 4096;
    free(buf);
    close(fd);
    return ok;
}

int main(void) {
    t_path(path_a, sizeof path_a, "a");
    t_path(path_b, sizeof path_b, "b");
    ca = t_make_file(path_a, 200 * RSZ, 1);
    cb = t_make_file(path_b, 50 * RSZ, 2);
    for (int i = 0; i < 3; i++) {
        t_path(big[i], sizeof big[i], "big-%d", i);
        cbig[i] = t_make_file(big[i], BIG_SIZE, (uint32_t)(10 + i));
        if (!cbig[i]) return T_EXIT_FAIL;
    }
    if (!ca || !cb) return T_EXIT_FAIL;
    have_direct = direct_supported();
    int skipped = 0, nv = 0;
    char ctx[128];
    for (int i = 0; i < t_nvariants_sched; i++, nv++) {
        const t_variant *v = &t_variants_sched[i];
        snprintf(ctx, sizeof ctx, "%s starved", v->name), t_ctx = ctx;
        T_RUN(test_starved(v), skipped);
        snprintf(ctx, sizeof ctx, "%s cancel during rename", v->name), t_ctx = ctx;
        T_RUN(test_cancel_rename(v), skipped);
        for (int d = 0; d <= have_direct; d++) {
            uint32_t fl = d ? LSIO_F_DIRECT : 0;
            snprintf(ctx, sizeof ctx, "%s in-flight%s", v->name, d ? " O_DIRECT" : ""), t_ctx = ctx;
            T_RUN(test_inflight(v, fl), skipped);
            for (int hold = 0; hold < 2; hold++) {
                snprintf(ctx, sizeof ctx, "%s free%s%s", v->name, d ? " O_DIRECT" : "",
                         hold ? " holding buffers" : ""), t_ctx = ctx;
                T_RUN(test_free(v, fl, hold), skipped);
            }
        }
    }
    free(ca);
    free(cb);
    for (int i = 0; i < 3; i++) free(cbig[i]);
    return skipped == nv * (2 + 3 * (1 + have_direct)) ? T_EXIT_SKIP : T_EXIT_PASS;
}
