/*
 * depth.c -- the effective-queue-depth counters (lsio_stats.inflight_*, completed, cqes)
 * on real reads.
 *
 * 4,096 random 4 KiB reads of a 16 MiB file (O_DIRECT where the file system takes it,
 * else buffered) in batches of 512, at depth 16, on every variant.  Asserts, after
 * everything was reaped and the files closed: the histogram's sum equals `completed`,
 * which equals ops_submitted (every op finished) and counts at least every read;
 * inflight_max <= depth and nothing is counted in a bucket above depth's; io_uring
 * (whose refill issues up to depth reads at once) reached depth; the time-weighted mean
 * in flight between two stats calls lies in (0, depth]; io_uring's syscall counters
 * agree (every CQE processed counted, at most one wait per call).
 */
#include "helpers.h"

#include <fcntl.h>
#include <unistd.h>

#define SIZE (16u << 20)
#define NREADS 4096
#define BATCH 512
#define DEPTH 16

static char path[256];

static int bucket(uint64_t v) {
    int b = 0;
    while (v > 1) {
        v >>= 1;
        b++;
    }
    return b < LSIO_HIST_BUCKETS ? b : LSIO_HIST_BUCKETS - 1;
}

static int run(const t_variant *v, uint32_t flags) {
    int skip;
    lsio_engine *e = t_engine(v, 64u << 20, DEPTH, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    char ctx[64];
    snprintf(ctx, sizeof ctx, "%s%s", v->name, flags ? " O_DIRECT" : "");
    t_ctx = ctx;
    lsio_stats st0, st;
    lsio_engine_stats(e, &st0);
    T_CHECK(st0.completed == 0 && st0.inflight_max == 0 && st0.inflight_ns == 0,
            "a new engine has counted something");
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    lsio_completion out[BATCH];
    uint64_t ids[BATCH];
    for (int done = 0; done < NREADS; done += BATCH) {
        t_batch b;
        tb_init(&b);
        tb_file(&b, path, LSIO_OP_READ, flags, 1);
        for (int k = 0; k < BATCH; k++) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            tb_range(&b, (int64_t)(rng % (SIZE / 4096)) * 4096, 4096, (uint64_t)(done + k), NULL);
        }
        T_CHECK(tb_submit(e, &b) == 0, "submit");
        tb_free(&b);
        int got = 0;
        while (got < BATCH) {
            int n = t_reap(e, out, BATCH, 1, 20000);
            T_CHECK(n > 0, "reap returned %d after %d of %d", n, got, BATCH);
            int nid = 0;
            for (int k = 0; k < n; k++) {
                T_CHECK(out[k].error == 0 && out[k].length == 4096, "tag %llu: error %d length %lld",
                        (unsigned long long)out[k].tag, out[k].error, (long long)out[k].length);
                if (out[k].buf_id) ids[nid++] = out[k].buf_id;
            }
            T_CHECK(lsio_release_many(e, ids, (uint64_t)nid) == 0, "release_many");
            got += n;
        }
    }
    if (t_check_idle(e)) return T_EXIT_FAIL;
    lsio_engine_stats(e, &st);
    uint64_t sum = 0;
    for (int i = 0; i < LSIO_HIST_BUCKETS; i++) {
        sum += st.inflight_hist[i];
        T_CHECK(i <= bucket(DEPTH) || st.inflight_hist[i] == 0, "%llu ops counted in bucket %d, "
                "above depth %d", (unsigned long long)st.inflight_hist[i], i, DEPTH);
    }
    T_CHECK(sum == st.completed, "histogram sum %llu != completed %llu", (unsigned long long)sum,
            (unsigned long long)st.completed);
    T_CHECK(st.completed == st.ops_submitted, "completed %llu != ops_submitted %llu (idle)",
            (unsigned long long)st.completed, (unsigned long long)st.ops_submitted);
    T_CHECK(st.completed >= NREADS, "completed %llu < %d reads", (unsigned long long)st.completed,
            NREADS);
    T_CHECK(st.inflight_max >= 1 && st.inflight_max <= DEPTH, "inflight_max %llu (depth %d)",
            (unsigned long long)st.inflight_max, DEPTH);
    if (v->backend == LSIO_BACKEND_URING)
        T_CHECK(st.inflight_max == DEPTH && st.inflight_hist[bucket(DEPTH)] > 0,
                "io_uring never had depth %d in flight: max %llu", DEPTH,
                (unsigned long long)st.inflight_max);
    T_CHECK(st.clock_ns > st0.clock_ns, "clock_ns did not advance");
    double mean = (double)(st.inflight_ns - st0.inflight_ns) / (double)(st.clock_ns - st0.clock_ns);
    T_CHECK(mean > 0 && mean <= DEPTH, "mean in flight %.3f (depth %d)", mean, DEPTH);
    if (v->backend == LSIO_BACKEND_URING) {
        /* every kernel op's CQE was processed, plus the wake-up reads' */
        T_CHECK(st.cqes >= st.completed, "cqes %llu < completed %llu", (unsigned long long)st.cqes,
                (unsigned long long)st.completed);
        T_CHECK(st.wait_calls <= st.submit_calls && st.submit_calls > 0,
                "wait_calls %llu, submit_calls %llu", (unsigned long long)st.wait_calls,
                (unsigned long long)st.submit_calls);
    } else {
        T_CHECK(st.cqes == 0 && st.submit_calls == 0 && st.enter_ns == 0, "pread counted io_uring calls");
    }
    fprintf(stderr, "[%s] %llu ops, max %llu in flight, mean %.1f, %llu calls, %llu CQEs, %llu waits\n",
            t_ctx, (unsigned long long)st.completed, (unsigned long long)st.inflight_max, mean,
            (unsigned long long)st.submit_calls, (unsigned long long)st.cqes,
            (unsigned long long)st.wait_calls);
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

int main(void) {
    t_path(path, sizeof path, "data");
    uint8_t *content = t_make_file(path, SIZE, 7);
    if (!content) return T_EXIT_FAIL;
    free(content);
    /* O_DIRECT only where this file system takes it (tmpfs does not) */
    int fd = open(path, O_RDONLY | O_DIRECT);
    uint32_t flags = fd >= 0 ? LSIO_F_DIRECT : 0;
    if (fd >= 0) close(fd);
    int skipped = 0;
    for (int i = 0; i < t_nvariants_all; i++) T_RUN(run(&t_variants_all[i], flags), skipped);
    return skipped == t_nvariants_all ? T_EXIT_SKIP : T_EXIT_PASS;
}
