/*
 * threads.c -- cross-thread wake-ups, on io_uring (driven by lsio_reap, and by the
 * engine's ring thread) and pread.
 *
 *  1. release wakes a starved reaper: a 16 KiB pool (4 buffers), 12 ranges of 4 KiB; the
 *     main thread holds all 4 buffers (the pool is starved: a short reap returns 0), then
 *     blocks in lsio_reap(min 1, timeout 20 s).  A second thread sleeps 300 ms and
 *     releases one buffer.  The reap must return the next completion well before its
 *     timeout (< 5 s), not before the release.  Repeated until all 12 ranges are in.
 *  2. lsio_wake from a second thread makes a reap blocked on a starved pool return 0
 *     early.
 *  3. while one thread is in lsio_reap, a second thread's lsio_reap gets -EBUSY (not
 *     with a ring thread, where reapers only collect), and
 *     lsio_engine_stats / lsio_cancel_group from it do not block.
 *  4. stress: 20,000 reads through a 64 KiB pool, the reaping thread hands every buffer
 *     to two other threads that release them (lsio_release / lsio_release_many): no
 *     lost wake-up or deadlock, every byte right, the engine idle at the end.
 */
#include "helpers.h"

#include <pthread.h>
#include <unistd.h>

#define NR 12
#define RSZ 4096
#define POOL (16 << 10)

static uint8_t *content;
static char path[256];

typedef struct {
    lsio_engine *e;
    uint64_t buf_id;  /* to release; 0: lsio_wake instead */
    int delay_ms;
    int64_t t_action; /* when the release / wake happened */
    int rc;
    int busy_rc;      /* thread 3: its lsio_reap's return */
} helper_arg;

static void *helper(void *p) {
    helper_arg *a = p;
    usleep((useconds_t)a->delay_ms * 1000);
    if (a->buf_id) {
        a->t_action = t_now_ms();
        a->rc = lsio_release(a->e, a->buf_id);
    } else {
        /* the main thread is inside lsio_reap: ours must be refused, the rest must work */
        lsio_completion c;
        a->busy_rc = lsio_reap(a->e, &c, 1, 0, 0);
        lsio_stats st;
        lsio_engine_stats(a->e, &st);
        a->rc = (int)lsio_cancel_group(a->e, 424242); /* no such group: 0 */
        a->t_action = t_now_ms();
        lsio_wake(a->e);
    }
    return NULL;
}

static int run(const t_variant *v) {
    int skip;
    lsio_engine *e = t_engine(v, POOL, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    t_batch b;
    tb_init(&b);
    tb_file(&b, path, LSIO_OP_READ, 0, 1);
    for (int i = 0; i < NR; i++) tb_range(&b, (int64_t)i * RSZ, RSZ, (uint64_t)i, NULL);
    T_CHECK(tb_submit(e, &b) == 0, "submit");
    tb_free(&b);

    lsio_completion out[NR];
    uint64_t held[NR];
    int nheld = 0, got = 0, seen[NR] = {0};
    /* fill the pool */
    while (nheld < POOL / RSZ) {
        int n = t_reap(e, out, NR, 1, 10000);
        T_CHECK(n > 0, "reap: %d", n);
        for (int i = 0; i < n; i++) {
            T_CHECK(out[i].error == 0 && !seen[out[i].tag], "completion");
            seen[out[i].tag] = 1;
            T_CHECK(memcmp(out[i].data, content + out[i].tag * RSZ, RSZ) == 0, "bytes");
            held[nheld++] = out[i].buf_id;
        }
        got += n;
    }
    T_CHECK(nheld == POOL / RSZ, "%d held", nheld);
    T_CHECK(t_reap(e, out, NR, 1, 200) == 0, "the pool should be starved");

    /* 2 + 3 first: lsio_wake (and -EBUSY) while blocked on the starved pool */
    helper_arg w = {.e = e, .buf_id = 0, .delay_ms = 300};
    pthread_t th;
    int64_t t0 = t_now_ms();
    T_CHECK(pthread_create(&th, NULL, helper, &w) == 0, "pthread_create");
    int n = t_reap(e, out, NR, 1, 20000);
    int64_t t1 = t_now_ms();
    pthread_join(th, NULL);
    T_CHECK(n == 0, "woken reap returned %d", n);
    if (!v->ring_thread) /* (with a ring thread, reapers only collect: not exclusive) */
        T_CHECK(w.busy_rc == -EBUSY, "a second reaper got %d, expected -EBUSY", w.busy_rc);
    T_CHECK(w.rc == 0, "cancel of an unknown group from another thread: %d", w.rc);
    T_CHECK(t1 - t0 < 5000, "lsio_wake did not wake the reaper (%lld ms)", (long long)(t1 - t0));
    T_CHECK(t1 >= w.t_action, "reap returned before the wake");

    /* 1: each release from the other thread wakes the blocked reaper with one more read */
    while (got < NR) {
        helper_arg a = {.e = e, .buf_id = held[--nheld], .delay_ms = 300};
        t0 = t_now_ms();
        T_CHECK(pthread_create(&th, NULL, helper, &a) == 0, "pthread_create");
        n = t_reap(e, out, NR, 1, 20000);
        t1 = t_now_ms();
        pthread_join(th, NULL);
        T_CHECK(a.rc == 0, "release from the helper thread: %d", a.rc);
        T_CHECK(n == 1, "reap after a release returned %d", n);
        T_CHECK(t1 - t0 < 5000, "the release did not wake the reaper (%lld ms)",
                (long long)(t1 - t0));
        T_CHECK(t1 >= a.t_action, "a completion came before the release (pool bound broken)");
        T_CHECK(out[0].error == 0 && !seen[out[0].tag], "completion");
        seen[out[0].tag] = 1;
        T_CHECK(memcmp(out[0].data, content + out[0].tag * RSZ, RSZ) == 0, "bytes");
        held[nheld++] = out[0].buf_id;
        got++;
    }
    T_CHECK(lsio_release_many(e, held, (uint64_t)nheld) == 0, "release");
    if (t_check_idle(e)) return T_EXIT_FAIL;
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

/* 4: two threads release what the reaping thread hands them (20,000 reads, 64 KiB
 * pool): no lost wake-up, no deadlock, every byte right, idle at the end. */
#define SNR 20000
typedef struct {
    lsio_engine *e;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t q[SNR];
    uint64_t head, tail;
    int done, bad;
} relq;

static void *releaser(void *p) {
    relq *r = p;
    uint64_t ids[8];
    for (;;) {
        pthread_mutex_lock(&r->mu);
        while (r->head == r->tail && !r->done) pthread_cond_wait(&r->cv, &r->mu);
        int n = 0;
        while (n < 8 && r->head < r->tail) ids[n++] = r->q[r->head++];
        int fin = r->done && r->head == r->tail;
        pthread_mutex_unlock(&r->mu);
        int rc = n == 1 ? lsio_release(r->e, ids[0]) : lsio_release_many(r->e, ids, (uint64_t)n);
        if (n && rc) r->bad = 1;
        if (fin && !n) return NULL;
    }
}

static int run_stress(const t_variant *v) {
    int skip;
    lsio_engine *e = t_engine(v, 64 << 10, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    t_batch b;
    tb_init(&b);
    tb_file(&b, path, LSIO_OP_READ, 0, 1);
    for (int i = 0; i < SNR; i++) {
        int64_t len = 1 + (int64_t)i * 131 % 4096;
        int64_t off = (int64_t)i * 977 % (NR * RSZ - len);
        tb_range(&b, off, len, (uint64_t)i, NULL);
    }
    T_CHECK(tb_submit(e, &b) == 0, "submit");
    relq *r = calloc(1, sizeof *r);
    r->e = e;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    pthread_t th[2];
    for (int i = 0; i < 2; i++) T_CHECK(pthread_create(&th[i], NULL, releaser, r) == 0, "thread");
    int got = 0;
    lsio_completion out[64];
    while (got < SNR) {
        int n = t_reap(e, out, 64, 1, 10000);
        T_CHECK(n > 0, "reap returned %d after %d of %d", n, got, SNR);
        for (int i = 0; i < n; i++) {
            lsio_range *q = &b.ranges[out[i].tag];
            T_CHECK(out[i].error == 0 && out[i].offset == q->offset && out[i].length == q->length,
                    "tag %llu", (unsigned long long)out[i].tag);
            T_CHECK(memcmp(out[i].data, content + q->offset, (size_t)q->length) == 0, "bytes");
        }
        pthread_mutex_lock(&r->mu);
        for (int i = 0; i < n; i++) r->q[r->tail++] = out[i].buf_id;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        got += n;
    }
    pthread_mutex_lock(&r->mu);
    r->done = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    T_CHECK(!r->bad, "a release from a helper thread failed");
    if (t_check_idle(e)) return T_EXIT_FAIL;
    lsio_stats st;
    lsio_engine_stats(e, &st);
    fprintf(stderr, "[%s stress] %d reads, starved %llu times, peak %llu KiB\n", v->name, got,
            (unsigned long long)st.starved, (unsigned long long)st.pool_peak >> 10);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
    tb_free(&b);
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

int main(void) {
    t_path(path, sizeof path, "data");
    content = t_make_file(path, NR * RSZ, 9);
    if (!content) return T_EXIT_FAIL;
    int skipped = 0, nv = 0;
    for (int v = 0; v < t_nvariants_sched; v++, nv++) {
        t_ctx = t_variants_sched[v].name;
        T_RUN(run(&t_variants_sched[v]), skipped);
        T_RUN(run_stress(&t_variants_sched[v]), skipped);
    }
    free(content);
    return skipped == 2 * nv ? T_EXIT_SKIP : T_EXIT_PASS;
}
