/*
 * many-ranges.c -- 120,000 ranges in ONE lsio_submit over four files, with a 1 MiB pool.
 *
 * Ranges are random: mostly small (0..4 KiB), some up to 64 KiB, in all four forms
 * (start:end, offset to the end near EOF, last n bytes, last n with a length).  The pool
 * is far smaller than the data (and than depth x the largest range), so back-pressure must
 * kick in: stats.starved > 0 (with the engine's ring thread, which reads while the test is
 * busy, the test first waits for the pool to run dry).  The test releases every buffer
 * right after checking it.
 * Asserts: every tag completes exactly once, without error, with the exact bytes;
 * pool_peak <= pool_bytes at every reap; at the end buffers_out == 0, pool_in_use == 0,
 * nothing pending.  Runs on io_uring (also with the ring thread) and on pread.
 */
#include "helpers.h"

#include <unistd.h>

#define NFILES 4
#define NRANGES 120000
#define POOL (1u << 20)

static const uint64_t sizes[NFILES] = {3 << 20, (1 << 20) + 123, 777777, 65536};
static uint8_t *content[NFILES];
static char paths[NFILES][256];

typedef struct {
    int64_t off, len;
    uint8_t file, seen;
} expect;

static uint64_t rng = 0x853c49e6748fea9bull;
static uint64_t xrand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int run(const t_variant *v, t_batch *b, expect *x) {
    int skip;
    lsio_engine *e = t_engine(v, POOL, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    lsio_stats st0;
    for (uint64_t i = 0; i < NRANGES; i++) x[i].seen = 0;
    int64_t t0 = t_now_ms();
    T_CHECK(tb_submit(e, b) == 0, "submit");
    if (v->ring_thread) {
        /* The engine's own thread reads while this one is away: stay away (reap
         * nothing) until the completions it queued have filled the pool, so that
         * back-pressure is tested whatever the machine's speed (a fast reader kept the
         * pool from running dry once).  At most 10 s. */
        for (int i = 0; i < 10000; i++) {
            lsio_engine_stats(e, &st0);
            if (st0.starved > 0) break;
            usleep(1000);
        }
    }
    enum { MAXC = 1024 };
    lsio_completion *out = malloc(MAXC * sizeof *out);
    uint64_t *ids = malloc(MAXC * sizeof *ids);
    uint64_t got = 0, bytes = 0, nonempty = 0;
    lsio_stats st;
    while (got < NRANGES) {
        int n = t_reap(e, out, MAXC, 1, 20000);
        T_CHECK(n > 0, "reap returned %d after %llu of %d completions", n,
                (unsigned long long)got, NRANGES);
        int nid = 0;
        for (int k = 0; k < n; k++) {
            lsio_completion *c = &out[k];
            T_CHECK(c->tag < NRANGES, "tag %llu", (unsigned long long)c->tag);
            expect *q = &x[c->tag];
            T_CHECK(!q->seen, "tag %llu twice", (unsigned long long)c->tag);
            q->seen = 1;
            T_CHECK(c->error == 0 && c->flags == 0, "tag %llu: error %d (%s)",
                    (unsigned long long)c->tag, c->error, lsio_strerror(c->error));
            T_CHECK(c->offset == q->off && c->length == q->len,
                    "tag %llu: [%lld,+%lld) expected [%lld,+%lld)", (unsigned long long)c->tag,
                    (long long)c->offset, (long long)c->length, (long long)q->off,
                    (long long)q->len);
            if (q->len)
                T_CHECK(memcmp(c->data, content[q->file] + q->off, (size_t)q->len) == 0,
                        "tag %llu: bytes differ", (unsigned long long)c->tag);
            if (c->buf_id) ids[nid++] = c->buf_id;
            bytes += (uint64_t)q->len;
            nonempty += q->len > 0;
        }
        got += (uint64_t)n;
        lsio_engine_stats(e, &st);
        T_CHECK(st.pool_peak <= st.pool_bytes && st.pool_in_use <= st.pool_bytes,
                "pool over its bound: peak %llu in_use %llu bound %llu",
                (unsigned long long)st.pool_peak, (unsigned long long)st.pool_in_use,
                (unsigned long long)st.pool_bytes);
        T_CHECK(st.buffers_out >= (uint64_t)nid, "buffers_out %llu < %d just reaped",
                (unsigned long long)st.buffers_out, nid);
        T_CHECK(lsio_release_many(e, ids, (uint64_t)nid) == 0, "release_many");
    }
    if (t_check_idle(e)) return T_EXIT_FAIL;
    lsio_engine_stats(e, &st);
    T_CHECK(st.pool_bytes == POOL, "pool_bytes %llu", (unsigned long long)st.pool_bytes);
    T_CHECK(st.starved > 0, "the 1 MiB pool never ran dry: no back-pressure tested");
    T_CHECK(st.pool_peak > POOL / 2, "pool_peak %llu: the pool was hardly used",
            (unsigned long long)st.pool_peak);
    T_CHECK(st.ops_submitted >= nonempty, "ops_submitted %llu < %llu non-empty ranges",
            (unsigned long long)st.ops_submitted, (unsigned long long)nonempty);
    fprintf(stderr, "[%s] %d ranges, %.1f MiB in %lld ms; peak %llu KiB, starved %llu times, "
            "%llu ops, %llu submit calls\n", t_ctx, NRANGES, bytes / 1048576.0,
            (long long)(t_now_ms() - t0), (unsigned long long)st.pool_peak >> 10,
            (unsigned long long)st.starved, (unsigned long long)st.ops_submitted,
            (unsigned long long)st.submit_calls);
    free(out);
    free(ids);
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

int main(void) {
    for (int i = 0; i < NFILES; i++) {
        t_path(paths[i], sizeof paths[i], "data-%d", i);
        content[i] = t_make_file(paths[i], sizes[i], (uint32_t)(100 + i));
        if (!content[i]) return T_EXIT_FAIL;
    }
    /* one batch, files in turn: 30,000 ranges each */
    t_batch b;
    tb_init(&b);
    expect *x = calloc(NRANGES, sizeof *x);
    uint64_t tag = 0;
    for (int i = 0; i < NFILES; i++) {
        int64_t size = (int64_t)sizes[i];
        tb_file(&b, paths[i], LSIO_OP_READ, 0, (uint64_t)i);
        for (int k = 0; k < NRANGES / NFILES; k++, tag++) {
            int64_t len = (int64_t)(xrand() % 100 < 95 ? xrand() % 4097 : xrand() % 65537);
            if (len > size) len = size;
            int64_t off = (int64_t)(xrand() % (uint64_t)(size - len + 1));
            int form = (int)(xrand() % 10);
            x[tag].file = (uint8_t)i;
            x[tag].off = off;
            x[tag].len = len;
            if (form == 0) { /* offset to the end: only near EOF, to keep sizes small */
                x[tag].off = off = size - len;
                tb_range(&b, off, -1, tag, NULL);
            } else if (form == 1 && len > 0) { /* last n bytes (-0 would mean offset 0) */
                x[tag].off = size - len;
                tb_range(&b, -len, -1, tag, NULL);
            } else if (form == 2 && off < size) { /* a slice of the tail */
                tb_range(&b, off - size, len, tag, NULL);
            } else {
                tb_range(&b, off, len, tag, NULL);
            }
        }
    }
    int skipped = 0, nv = 0;
    char ctx[64];
    for (int v = 0; v < t_nvariants_sched; v++, nv++) {
        snprintf(ctx, sizeof ctx, "%s", t_variants_sched[v].name);
        t_ctx = ctx;
        T_RUN(run(&t_variants_sched[v], &b, x), skipped);
    }
    tb_free(&b);
    free(x);
    for (int i = 0; i < NFILES; i++) free(content[i]);
    return skipped == nv ? T_EXIT_SKIP : T_EXIT_PASS;
}
