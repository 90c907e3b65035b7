/*
 * decode.c -- lsio_decode_batch: chunks read through the engine, decoded from their pool
 * buffers into an array, on io_uring and pread.
 *
 *  1. zstd, blosc and raw chunks of shape (4, 16, 32) uint32, decoded whole into a
 *     C-contiguous destination (direct) and as an unaligned box into a larger array
 *     (strided copy), element for element against the original; F-order chunk strides.
 *  2. two chunks in one buffer (a coalesced read) with a shared counter: the buffer is
 *     still out after the first job, released by the second; one chunk into two boxes
 *     by consecutive jobs (decoded once); the same with lsio_decode_end (no decoding).
 *  3. errors: a truncated zstd frame, a frame bigger or smaller than the chunk, blosc
 *     garbage, a raw chunk of the wrong size, a bad spec: each fails with its status,
 *     the rest of the batch is skipped, and every buffer is released anyway.
 *  4. two threads decode 400 boxes each concurrently (per-thread contexts), with
 *     counters shared across the threads: every byte right, no buffer left out.
 *  5. bounds: source and destination placed against PROT_NONE guard pages; boxes that
 *     reach past the decoded chunk (the crafted chunk shape [2**57+1, 128, 1] whose
 *     element count wrapped to a 512-byte chunk), past the destination, below it, with
 *     a negative shape or strides whose products overflow fail with LSIO_DEC_E_BOUNDS
 *     before a byte is touched; boxes that exactly fill the guarded pages (forward and
 *     with negative destination strides) decode right.
 *  6. prefix decoding: a (4, 256, 128) uint32 chunk (four 128 KiB zstd blocks) with a
 *     checksum, and a box in its first rows: decoded right; with a byte of its last
 *     block corrupted the box still decodes (only the first block was decoded -- the
 *     path is taken) while a box reaching the last block fails; truncated by a byte, or
 *     with a byte after the frame, it fails even for the first rows; two frames, or a
 *     frame without its content size, are decoded whole and right; two jobs on the same
 *     bytes, one in the first rows and one in the last, decode both right.
 */
#include "helpers.h"

#include <blosc.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zstd.h>

#define C0 4
#define C1 16
#define C2 32
#define NEL (C0 * C1 * C2)
#define NB (NEL * 4)

static uint32_t chunk[NEL];

static uint64_t buffers_out(lsio_engine *e) {
    lsio_stats st;
    lsio_engine_stats(e, &st);
    return st.buffers_out;
}

/* Write data to a file, read it back through the engine: one completion. */
static int read_back(lsio_engine *e, const char *name, const void *data, uint64_t n,
                     lsio_completion *c) {
    char p[256];
    t_path(p, sizeof p, "%s", name);
    T_CHECK(t_write_file(p, data, n) == 0, "write %s", p);
    t_batch b;
    tb_init(&b);
    tb_file(&b, p, LSIO_OP_READ, 0, 1);
    tb_range(&b, 0, -1, 0, NULL);
    T_CHECK(tb_submit(e, &b) == 0, "submit");
    tb_free(&b);
    T_CHECK(t_reap(e, c, 1, 1, 10000) == 1, "reap");
    T_CHECK(c->error == 0 && (uint64_t)c->length == n, "read %s: error %d length %llu", name, c->error,
            (unsigned long long)c->length);
    return T_EXIT_PASS;
}

static void spec_c(lsio_decode_spec *s, int codec, int64_t d1, int64_t d2) {
    memset(s, 0, sizeof *s);
    s->codec = codec;
    s->ndim = 3;
    s->nbytes = NB;
    s->itemsize = 4;
    s->chunk_strides[0] = C1 * C2 * 4;
    s->chunk_strides[1] = C2 * 4;
    s->chunk_strides[2] = 4;
    s->dst_strides[0] = d1 * d2 * 4;
    s->dst_strides[1] = d2 * 4;
    s->dst_strides[2] = 4;
}

static void job(lsio_decode_job *j, const lsio_completion *c, void *dst, int direct) {
    memset(j, 0, sizeof *j);
    j->src = (uint64_t)(uintptr_t)c->data;
    j->src_len = c->length;
    j->dst = (uint64_t)(uintptr_t)dst;
    j->dst_lo = 0; /* these tests check values, not bounds: the whole address space */
    j->dst_len = UINT64_MAX;
    j->buf_id = c->buf_id;
    j->direct = direct;
    j->shape[0] = C0;
    j->shape[1] = C1;
    j->shape[2] = C2;
}

static uint8_t *compress(int codec, uint64_t *n) {
    if (codec == LSIO_CODEC_RAW) {
        uint8_t *p = malloc(NB);
        memcpy(p, chunk, NB);
        *n = NB;
        return p;
    }
    size_t cap = codec == LSIO_CODEC_ZSTD ? ZSTD_compressBound(NB) : NB + BLOSC_MAX_OVERHEAD;
    uint8_t *p = malloc(cap);
    if (codec == LSIO_CODEC_ZSTD)
        *n = ZSTD_compress(p, cap, chunk, NB, 3);
    else
        *n = (uint64_t)blosc_compress_ctx(5, 1, 4, NB, chunk, p, cap, "zstd", 0, 1);
    return p;
}

/* 1 */
static int run_codec(lsio_engine *e, int codec) {
    uint64_t n;
    uint8_t *stored = compress(codec, &n);
    T_CHECK(n > 0 && n <= NB + BLOSC_MAX_OVERHEAD, "compress %d: %llu", codec, (unsigned long long)n);
    lsio_completion c;
    /* whole chunk, straight into a contiguous destination */
    static uint32_t out[NEL];
    memset(out, 0xee, sizeof out);
    if (read_back(e, "chunk", stored, n, &c)) return T_EXIT_FAIL;
    lsio_decode_spec s;
    spec_c(&s, codec, C1, C2);
    lsio_decode_job j;
    job(&j, &c, out, 1);
    T_CHECK(lsio_decode_batch(e, &s, &j, 1) == 0, "direct: %d %s", j.status,
            lsio_decode_strerror(codec, j.status, j.detail));
    T_CHECK(memcmp(out, chunk, NB) == 0, "direct decode differs (codec %d)", codec);
    T_CHECK(buffers_out(e) == 0, "buffer not released");

    /* the box [1:4, 3:16, 5:29] of the chunk into a (5, 20, 40) array at (2, 1, 7) */
    enum { D0 = 5, D1 = 20, D2 = 40 };
    static uint32_t big[D0 * D1 * D2];
    memset(big, 0xee, sizeof big);
    if (read_back(e, "chunk", stored, n, &c)) return T_EXIT_FAIL;
    spec_c(&s, codec, D1, D2);
    job(&j, &c, &big[(2 * D1 + 1) * D2 + 7], 0);
    j.src_off = ((1 * C1 + 3) * C2 + 5) * 4;
    j.shape[0] = 3;
    j.shape[1] = 13;
    j.shape[2] = 24;
    T_CHECK(lsio_decode_batch(e, &s, &j, 1) == 0, "box: %d", j.status);
    for (int a = 0; a < D0; a++)
        for (int b = 0; b < D1; b++)
            for (int k = 0; k < D2; k++) {
                int ca = a - 2 + 1, cb = b - 1 + 3, ck = k - 7 + 5;
                int inside = a >= 2 && ca < 4 && b >= 1 && cb < 16 && k >= 7 && ck < 29;
                uint32_t want = inside ? chunk[(ca * C1 + cb) * C2 + ck] : 0xeeeeeeeeu;
                T_CHECK(big[(a * D1 + b) * D2 + k] == want, "box element (%d,%d,%d)", a, b, k);
            }
    T_CHECK(buffers_out(e) == 0, "buffer not released");

    /* the same stored bytes read as an F-order chunk of shape (32, 16, 4): transposed */
    static uint32_t tr[NEL];
    if (read_back(e, "chunk", stored, n, &c)) return T_EXIT_FAIL;
    memset(&s, 0, sizeof s);
    s.codec = codec;
    s.ndim = 3;
    s.nbytes = NB;
    s.itemsize = 4;
    s.chunk_strides[0] = 4;
    s.chunk_strides[1] = C2 * 4;
    s.chunk_strides[2] = C1 * C2 * 4;
    s.dst_strides[0] = C1 * C0 * 4;
    s.dst_strides[1] = C0 * 4;
    s.dst_strides[2] = 4;
    job(&j, &c, tr, 0);
    j.dst_lo = (uint64_t)(uintptr_t)tr;
    j.dst_len = sizeof tr;
    j.shape[0] = C2;
    j.shape[1] = C1;
    j.shape[2] = C0;
    T_CHECK(lsio_decode_batch(e, &s, &j, 1) == 0, "F order: %d", j.status);
    for (int a = 0; a < C2; a++)
        for (int b = 0; b < C1; b++)
            for (int k = 0; k < C0; k++)
                T_CHECK(tr[(a * C1 + b) * C0 + k] == chunk[(k * C1 + b) * C2 + a], "F element");
    free(stored);
    T_CHECK(buffers_out(e) == 0, "buffer not released");
    return T_EXIT_PASS;
}

/* 2 */
static int run_shared(lsio_engine *e) {
    uint64_t n;
    uint8_t *one = compress(LSIO_CODEC_ZSTD, &n);
    uint8_t *two = malloc(2 * n);
    memcpy(two, one, n);
    memcpy(two + n, one, n);
    lsio_completion c;
    if (read_back(e, "two", two, 2 * n, &c)) return T_EXIT_FAIL;
    static uint32_t out[2][NEL];
    lsio_decode_spec s;
    spec_c(&s, LSIO_CODEC_ZSTD, C1, C2);
    int32_t count = 2;
    lsio_decode_job j[2];
    for (int i = 0; i < 2; i++) {
        job(&j[i], &c, out[i], 1);
        j[i].src += (uint64_t)i * n;
        j[i].src_len = n;
        j[i].refcnt = (uint64_t)(uintptr_t)&count;
    }
    T_CHECK(lsio_decode_batch(e, &s, &j[0], 1) == 0, "first");
    T_CHECK(buffers_out(e) == 1 && count == 1, "released while a job still reads it");
    T_CHECK(lsio_decode_batch(e, &s, &j[1], 1) == 0, "second");
    T_CHECK(buffers_out(e) == 0 && count == 0, "not released after the last job");
    T_CHECK(memcmp(out[0], chunk, NB) == 0 && memcmp(out[1], chunk, NB) == 0, "bytes");

    /* one chunk into two boxes (consecutive jobs, same bytes: decoded once), then the
     * other chunk of the buffer whole */
    if (read_back(e, "two", two, 2 * n, &c)) return T_EXIT_FAIL;
    count = 3;
    static uint32_t halves[2][NEL / 2];
    lsio_decode_job k[3];
    for (int i = 0; i < 3; i++) {
        job(&k[i], &c, i < 2 ? (void *)halves[i] : (void *)out[1], i == 2);
        k[i].src_len = n;
        k[i].refcnt = (uint64_t)(uintptr_t)&count;
    }
    k[0].shape[0] = k[1].shape[0] = C0 / 2;
    k[1].src_off = (int64_t)NB / 2;
    k[2].src += n;
    memset(out[1], 0, NB);
    T_CHECK(lsio_decode_batch(e, &s, k, 3) == 0, "two boxes: %d %d", k[0].status, k[1].status);
    T_CHECK(memcmp(halves[0], chunk, NB / 2) == 0, "first box");
    T_CHECK(memcmp(halves[1], (uint8_t *)chunk + NB / 2, NB / 2) == 0, "second box");
    T_CHECK(memcmp(out[1], chunk, NB) == 0, "the other chunk");
    T_CHECK(buffers_out(e) == 0 && count == 0, "two boxes: not released");

    /* lsio_decode_end: the same, without decoding */
    if (read_back(e, "two", two, 2 * n, &c)) return T_EXIT_FAIL;
    count = 2;
    memset(out, 0, sizeof out);
    for (int i = 0; i < 2; i++) {
        job(&j[i], &c, out[i], 1);
        j[i].refcnt = (uint64_t)(uintptr_t)&count;
    }
    lsio_decode_end(e, &j[0], 1);
    T_CHECK(buffers_out(e) == 1 && count == 1, "end: released while a job still reads it");
    lsio_decode_end(e, &j[1], 1);
    T_CHECK(buffers_out(e) == 0 && count == 0, "end: not released after the last job");
    T_CHECK(j[1].status == LSIO_DEC_E_SKIPPED && out[1][0] == 0, "end: decoded");
    free(one);
    free(two);
    return T_EXIT_PASS;
}

/* 3 */
static int expect_fail(lsio_engine *e, const char *what, int codec, const void *data,
                       uint64_t n, uint64_t nbytes, int32_t status) {
    lsio_completion c[2];
    static uint32_t out[2 * NEL];
    if (read_back(e, "bad", data, n, &c[0])) return T_EXIT_FAIL;
    uint64_t good_n;
    uint8_t *good = compress(codec, &good_n);
    if (read_back(e, "good", good, good_n, &c[1])) return T_EXIT_FAIL;
    free(good);
    lsio_decode_spec s;
    spec_c(&s, codec, C1, C2);
    s.nbytes = nbytes;
    lsio_decode_job j[2];
    job(&j[0], &c[0], out, 1);
    job(&j[1], &c[1], out + NEL, 1);
    T_CHECK(lsio_decode_batch(e, &s, j, 2) == 1, "%s: not one failure", what);
    T_CHECK(j[0].status == status, "%s: status %d (%s), expected %d", what, j[0].status,
            lsio_decode_strerror(codec, j[0].status, j[0].detail), status);
    T_CHECK(strlen(lsio_decode_strerror(codec, j[0].status, j[0].detail)) > 0, "message");
    T_CHECK(j[1].status == LSIO_DEC_E_SKIPPED, "%s: the next job ran", what);
    T_CHECK(buffers_out(e) == 0, "%s: buffers not released after an error", what);
    return T_EXIT_PASS;
}

static int run_errors(lsio_engine *e) {
    uint64_t n;
    uint8_t *z = compress(LSIO_CODEC_ZSTD, &n);
    if (expect_fail(e, "truncated zstd", LSIO_CODEC_ZSTD, z, n - 9, NB, LSIO_DEC_E_CODEC))
        return T_EXIT_FAIL;
    if (expect_fail(e, "zstd too big", LSIO_CODEC_ZSTD, z, n, NB - 4, LSIO_DEC_E_CODEC))
        return T_EXIT_FAIL;
    /* a frame of half the chunk: decodes fine but short */
    size_t cap = ZSTD_compressBound(NB / 2);
    uint8_t *h = malloc(cap);
    size_t hn = ZSTD_compress(h, cap, chunk, NB / 2, 1);
    if (expect_fail(e, "zstd too small", LSIO_CODEC_ZSTD, h, hn, NB, LSIO_DEC_E_SIZE))
        return T_EXIT_FAIL;
    uint8_t garbage[64];
    memset(garbage, 0x5a, sizeof garbage);
    if (expect_fail(e, "zstd garbage", LSIO_CODEC_ZSTD, garbage, sizeof garbage, NB,
                    LSIO_DEC_E_CODEC))
        return T_EXIT_FAIL;
    if (expect_fail(e, "blosc garbage", LSIO_CODEC_BLOSC, garbage, sizeof garbage, NB,
                    LSIO_DEC_E_CODEC))
        return T_EXIT_FAIL;
    if (expect_fail(e, "blosc short", LSIO_CODEC_BLOSC, garbage, 8, NB, LSIO_DEC_E_CODEC))
        return T_EXIT_FAIL;
    uint64_t bn;
    uint8_t *bl = compress(LSIO_CODEC_BLOSC, &bn);
    if (expect_fail(e, "blosc truncated", LSIO_CODEC_BLOSC, bl, bn - 5, NB, LSIO_DEC_E_CODEC))
        return T_EXIT_FAIL;
    if (expect_fail(e, "blosc wrong size", LSIO_CODEC_BLOSC, bl, bn, NB / 2, LSIO_DEC_E_SIZE))
        return T_EXIT_FAIL;
    if (expect_fail(e, "raw wrong size", LSIO_CODEC_RAW, chunk, NB - 4, NB, LSIO_DEC_E_SIZE))
        return T_EXIT_FAIL;
    free(z);
    free(h);
    free(bl);

    /* a bad spec fails every job but still releases every buffer */
    lsio_completion c;
    if (read_back(e, "chunk", chunk, NB, &c)) return T_EXIT_FAIL;
    lsio_decode_spec s;
    spec_c(&s, LSIO_CODEC_RAW, C1, C2);
    s.ndim = LSIO_DEC_MAXDIM + 1;
    lsio_decode_job j;
    static uint32_t out[NEL];
    job(&j, &c, out, 1);
    T_CHECK(lsio_decode_batch(e, &s, &j, 1) == 1 && j.status == LSIO_DEC_E_ARG, "bad ndim");
    T_CHECK(buffers_out(e) == 0, "bad spec: buffer not released");
    return T_EXIT_PASS;
}

/* 4 */
#define TJOBS 400
typedef struct {
    lsio_engine *e;
    const lsio_decode_spec *s;
    lsio_decode_job *jobs;
    int64_t failed;
} worker_arg;

static void *worker(void *p) {
    worker_arg *a = p;
    a->failed = 0;
    for (int i = 0; i < TJOBS / 2; i += 8)
        a->failed += lsio_decode_batch(a->e, a->s, a->jobs + i, 8);
    lsio_decode_thread_free();
    return NULL;
}

static int run_threads(lsio_engine *e) {
    uint64_t n;
    uint8_t *z = compress(LSIO_CODEC_ZSTD, &n);
    /* one file of TJOBS frames read as TJOBS/4 ranges of 4 frames each; the jobs of a
     * range alternate between the two threads so the counters are shared across them */
    uint8_t *all = malloc(n * TJOBS);
    for (int i = 0; i < TJOBS; i++) memcpy(all + (uint64_t)i * n, z, n);
    char p[256];
    t_path(p, sizeof p, "many");
    T_CHECK(t_write_file(p, all, n * TJOBS) == 0, "write");
    t_batch b;
    tb_init(&b);
    tb_file(&b, p, LSIO_OP_READ, 0, 1);
    for (int r = 0; r < TJOBS / 4; r++) tb_range(&b, (int64_t)(r * 4 * n), (int64_t)(4 * n), (uint64_t)r, NULL);
    T_CHECK(tb_submit(e, &b) == 0, "submit");
    tb_free(&b);
    lsio_completion *c = calloc(TJOBS / 4, sizeof *c);
    int got = 0;
    while (got < TJOBS / 4) {
        int k = t_reap(e, c + got, (uint32_t)(TJOBS / 4 - got), 1, 10000);
        T_CHECK(k > 0, "reap");
        got += k;
    }
    uint32_t *out = malloc((size_t)NB * TJOBS);
    static int32_t counts[TJOBS / 4];
    static lsio_decode_job jobs[2][TJOBS / 2];
    lsio_decode_spec s;
    spec_c(&s, LSIO_CODEC_ZSTD, C1, C2);
    for (int r = 0; r < TJOBS / 4; r++) {
        T_CHECK(c[r].error == 0, "read error");
        counts[r] = 4;
        for (int f = 0; f < 4; f++) {
            int t = f & 1, idx = (r * 4 + f) / 2 * 2 + t; /* unique per thread */
            lsio_decode_job *j = &jobs[t][(r * 4 + f) / 2];
            job(j, &c[r], out + (size_t)idx * NEL, 1);
            j->src += (uint64_t)f * n;
            j->src_len = n;
            j->refcnt = (uint64_t)(uintptr_t)&counts[r];
        }
    }
    /* each thread has TJOBS/2 jobs */
    worker_arg a[2];
    pthread_t th[2];
    for (int t = 0; t < 2; t++) {
        a[t] = (worker_arg){e, &s, jobs[t], 0};
        T_CHECK(pthread_create(&th[t], NULL, worker, &a[t]) == 0, "pthread_create");
    }
    for (int t = 0; t < 2; t++) pthread_join(th[t], NULL);
    T_CHECK(a[0].failed == 0 && a[1].failed == 0, "failures: %lld %lld", (long long)a[0].failed,
            (long long)a[1].failed);
    for (int i = 0; i < TJOBS; i++)
        T_CHECK(memcmp(out + (size_t)i * NEL, chunk, NB) == 0, "thread output %d", i);
    for (int r = 0; r < TJOBS / 4; r++) T_CHECK(counts[r] == 0, "counter %d", r);
    T_CHECK(buffers_out(e) == 0, "buffers left out");
    free(out);
    free(c);
    free(all);
    free(z);
    return T_EXIT_PASS;
}

/* 3: bytes the caller owns (no pool buffer): no engine is needed, nothing is released */
static int run_no_engine(void) {
    uint64_t n;
    uint8_t *stored = compress(LSIO_CODEC_ZSTD, &n);
    static uint32_t out[NEL];
    memset(out, 0xee, sizeof out);
    lsio_decode_spec s;
    spec_c(&s, LSIO_CODEC_ZSTD, C1, C2);
    lsio_decode_job j[2];
    memset(j, 0, sizeof j);
    j[0].src = (uint64_t)(uintptr_t)stored;
    j[0].src_len = n;
    j[0].dst = (uint64_t)(uintptr_t)out;
    j[0].dst_lo = (uint64_t)(uintptr_t)out;
    j[0].dst_len = sizeof out;
    j[0].direct = 1;
    j[1] = j[0];
    j[1].src_len = n - 1; /* a truncated frame fails, and only it */
    T_CHECK(lsio_decode_batch(NULL, &s, &j[0], 1) == 0, "no engine: %d", j[0].status);
    T_CHECK(memcmp(out, chunk, NB) == 0, "no engine: decode differs");
    T_CHECK(lsio_decode_batch(NULL, &s, &j[1], 1) == 1 && j[1].status == LSIO_DEC_E_CODEC,
            "no engine, truncated: %d", j[1].status);
    lsio_decode_end(NULL, j, 2);
    free(stored);
    return T_EXIT_PASS;
}

/* 6 */
enum { P0 = 4, P1 = 256, P2 = 128, PEL = P0 * P1 * P2, PNB = PEL * 4 };

static int64_t prefix_box(const uint8_t *src, size_t len, int r0, int r1, uint32_t *out,
                          int32_t *status) {
    lsio_decode_spec s;
    memset(&s, 0, sizeof s);
    s.codec = LSIO_CODEC_ZSTD;
    s.ndim = 3;
    s.nbytes = PNB;
    s.itemsize = 4;
    s.chunk_strides[0] = P1 * P2 * 4;
    s.chunk_strides[1] = P2 * 4;
    s.chunk_strides[2] = 4;
    s.dst_strides[0] = (r1 - r0) * P2 * 4;
    s.dst_strides[1] = P2 * 4;
    s.dst_strides[2] = 4;
    lsio_decode_job j;
    memset(&j, 0, sizeof j);
    j.src = (uint64_t)(uintptr_t)src;
    j.src_len = len;
    j.dst = j.dst_lo = (uint64_t)(uintptr_t)out;
    j.dst_len = (uint64_t)(r1 - r0) * P2 * 4;
    j.src_off = (int64_t)r0 * P2 * 4; /* rows r0..r1 of plane 0 */
    j.shape[0] = 1;
    j.shape[1] = r1 - r0;
    j.shape[2] = P2;
    int64_t failed = lsio_decode_batch(NULL, &s, &j, 1);
    *status = j.status;
    return failed;
}

static int prefix_ok(const uint32_t *big, const uint8_t *src, size_t len, int r0, int r1,
                     const char *what) {
    static uint32_t out[P1 * P2];
    memset(out, 0xee, sizeof out);
    int32_t st;
    T_CHECK(prefix_box(src, len, r0, r1, out, &st) == 0, "%s: status %d", what, st);
    T_CHECK(memcmp(out, big + r0 * P2, (size_t)(r1 - r0) * P2 * 4) == 0, "%s: bytes", what);
    return T_EXIT_PASS;
}

static int prefix_fails(const uint8_t *src, size_t len, int r0, int r1, const char *what) {
    static uint32_t out[P1 * P2];
    int32_t st;
    T_CHECK(prefix_box(src, len, r0, r1, out, &st) == 1 && st == LSIO_DEC_E_CODEC,
            "%s: status %d, expected a codec error", what, st);
    return T_EXIT_PASS;
}

static int run_prefix(void) {
    uint32_t *big = malloc(PNB);
    for (int i = 0; i < PEL; i++) big[i] = (uint32_t)(i / 5) * 2654435761u % 100000u;
    size_t cap = 2 * ZSTD_compressBound(PNB) + 16;
    uint8_t *z = malloc(cap), *bad = malloc(cap);
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, 3);
    ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
    size_t n = ZSTD_compress2(cc, z, cap, big, PNB);
    T_CHECK(!ZSTD_isError(n) && n > 1000, "compress");
    if (prefix_ok(big, z, n, 3, 40, "first rows")) return T_EXIT_FAIL;
    if (prefix_ok(big, z, n, 0, 256, "whole plane")) return T_EXIT_FAIL;
    /* the last block (plane 3): a byte before the 4-byte checksum changed */
    memcpy(bad, z, n);
    bad[n - 40] ^= 0x5a;
    if (prefix_ok(big, bad, n, 3, 40, "corrupt last block, first rows")) return T_EXIT_FAIL;
    {
        static uint32_t out[P1 * P2];
        lsio_decode_spec s;
        memset(&s, 0, sizeof s);
        s.codec = LSIO_CODEC_ZSTD;
        s.ndim = 1;
        s.nbytes = PNB;
        s.itemsize = 4;
        s.chunk_strides[0] = 4;
        s.dst_strides[0] = 4;
        lsio_decode_job j;
        memset(&j, 0, sizeof j);
        j.src = (uint64_t)(uintptr_t)bad;
        j.src_len = n;
        j.dst = j.dst_lo = (uint64_t)(uintptr_t)out;
        j.dst_len = sizeof out;
        j.src_off = PNB - 64; /* the last 16 elements */
        j.shape[0] = 16;
        T_CHECK(lsio_decode_batch(NULL, &s, &j, 1) == 1 &&
                    (j.status == LSIO_DEC_E_CODEC || j.status == LSIO_DEC_E_SIZE),
                "corrupt last block, last elements: status %d", j.status);
    }
    if (prefix_fails(z, n - 1, 3, 40, "truncated, first rows")) return T_EXIT_FAIL;
    memcpy(bad, z, n);
    bad[n] = 0;
    if (prefix_fails(bad, n + 1, 3, 40, "a byte after the frame, first rows")) return T_EXIT_FAIL;
    /* two frames: halves of the chunk */
    size_t h1 = ZSTD_compress(bad, cap, big, PNB / 2, 3);
    size_t h2 = ZSTD_compress(bad + h1, cap - h1, (uint8_t *)big + PNB / 2, PNB / 2, 3);
    T_CHECK(!ZSTD_isError(h1) && !ZSTD_isError(h2), "compress halves");
    if (prefix_ok(big, bad, h1 + h2, 3, 40, "two frames")) return T_EXIT_FAIL;
    /* no content size in the header */
    ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0);
    ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 0);
    ZSTD_inBuffer ib = {big, PNB, 0};
    ZSTD_outBuffer ob = {bad, cap, 0};
    ZSTD_CCtx_reset(cc, ZSTD_reset_session_only);
    ZSTD_CCtx_setPledgedSrcSize(cc, ZSTD_CONTENTSIZE_UNKNOWN);
    T_CHECK(ZSTD_compressStream2(cc, &ob, &ib, ZSTD_e_end) == 0, "stream compress");
    T_CHECK(ZSTD_getFrameContentSize(bad, ob.pos) == ZSTD_CONTENTSIZE_UNKNOWN, "content size");
    if (prefix_ok(big, bad, ob.pos, 3, 40, "no content size")) return T_EXIT_FAIL;
    /* two jobs on the same bytes: one in the first rows, one in the last plane */
    {
        static uint32_t o1[40 * P2], o2[40 * P2];
        lsio_decode_spec s;
        memset(&s, 0, sizeof s);
        s.codec = LSIO_CODEC_ZSTD;
        s.ndim = 3;
        s.nbytes = PNB;
        s.itemsize = 4;
        s.chunk_strides[0] = P1 * P2 * 4;
        s.chunk_strides[1] = P2 * 4;
        s.chunk_strides[2] = 4;
        s.dst_strides[0] = 40 * P2 * 4;
        s.dst_strides[1] = P2 * 4;
        s.dst_strides[2] = 4;
        lsio_decode_job j[2];
        memset(j, 0, sizeof j);
        for (int k = 0; k < 2; k++) {
            uint32_t *o = k ? o2 : o1;
            j[k].src = (uint64_t)(uintptr_t)z;
            j[k].src_len = n;
            j[k].dst = j[k].dst_lo = (uint64_t)(uintptr_t)o;
            j[k].dst_len = sizeof o1;
            j[k].shape[0] = 1;
            j[k].shape[1] = 40;
            j[k].shape[2] = P2;
        }
        j[1].src_off = (int64_t)3 * P1 * P2 * 4; /* plane 3, rows 0..40 */
        T_CHECK(lsio_decode_batch(NULL, &s, j, 2) == 0, "two jobs: %d %d", j[0].status,
                j[1].status);
        T_CHECK(memcmp(o1, big, sizeof o1) == 0, "two jobs: first rows");
        T_CHECK(memcmp(o2, big + 3 * P1 * P2, sizeof o2) == 0, "two jobs: last plane");
    }
    ZSTD_freeCCtx(cc);
    free(z);
    free(bad);
    free(big);
    return T_EXIT_PASS;
}

/* 5 */
/* `pages` read-write pages between two PROT_NONE guard pages; *base is the first RW byte */
static uint8_t *guarded(size_t pages, uint8_t **map) {
    long pg = sysconf(_SC_PAGESIZE);
    uint8_t *m = mmap(NULL, (pages + 2) * (size_t)pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    if (mprotect(m + pg, pages * (size_t)pg, PROT_READ | PROT_WRITE) != 0) return NULL;
    *map = m;
    return m + pg;
}

static int bounds_case(const char *what, int codec, const uint8_t *src, uint64_t src_len,
                       uint8_t *dst_base, uint64_t dst_len, uint64_t nbytes, uint64_t dst,
                       int64_t src_off, const int64_t *shape, const int64_t *cstr,
                       const int64_t *dstr, int direct, int32_t want, int64_t want_detail) {
    lsio_decode_spec s;
    memset(&s, 0, sizeof s);
    s.codec = codec;
    s.ndim = 3;
    s.nbytes = nbytes;
    s.itemsize = 4;
    for (int d = 0; d < 3; d++) {
        s.chunk_strides[d] = cstr[d];
        s.dst_strides[d] = dstr[d];
    }
    lsio_decode_job j;
    memset(&j, 0, sizeof j);
    j.src = (uint64_t)(uintptr_t)src;
    j.src_len = src_len;
    j.dst = dst;
    j.dst_lo = (uint64_t)(uintptr_t)dst_base;
    j.dst_len = dst_len;
    j.src_off = src_off;
    j.direct = direct;
    for (int d = 0; d < 3; d++) j.shape[d] = shape[d];
    int64_t failed = lsio_decode_batch(NULL, &s, &j, 1);
    T_CHECK(j.status == want && failed == (want != LSIO_DEC_OK), "%s: status %d (%s), expected %d",
            what, j.status, lsio_decode_strerror(codec, j.status, j.detail), want);
    if (want == LSIO_DEC_E_BOUNDS)
        T_CHECK(j.detail == want_detail, "%s: detail %lld, expected %lld", what,
                (long long)j.detail, (long long)want_detail);
    return T_EXIT_PASS;
}

static int run_bounds(void) {
    long pg = sysconf(_SC_PAGESIZE);
    uint8_t *smap, *dmap;
    uint8_t *src = guarded(1, &smap), *dst = guarded(1, &dmap);
    T_CHECK(src && dst, "mmap guard pages");
    uint64_t P = (uint64_t)pg, D = (uint64_t)(uintptr_t)dst;
    for (long i = 0; i < pg; i++) src[i] = (uint8_t)(i * 7);
    /* the raw 512-byte chunk at the very end of the guarded source page */
    const uint8_t *c512 = src + pg - 512;
    /* the crafted chunk shape [2**57+1, 128, 1] float32: C strides 512, 4, 4; its
     * element count wrapped, so the spec says 512 bytes; a crop asks rows 0..2 */
    int64_t wrap_str[3] = {512, 4, 4}, crop[3] = {3, 128, 1}, dstr[3] = {512, 4, 4};
    if (bounds_case("wrapped chunk shape, raw", LSIO_CODEC_RAW, c512, 512, dst, P, 512, D, 0,
                    crop, wrap_str, dstr, 0, LSIO_DEC_E_BOUNDS, 1))
        return T_EXIT_FAIL;
    /* the same through zstd: a real 512-byte frame passes the decoded-size check */
    uint8_t frame[600];
    size_t fn = ZSTD_compress(frame, sizeof frame, c512, 512, 1);
    T_CHECK(!ZSTD_isError(fn), "zstd");
    if (bounds_case("wrapped chunk shape, zstd", LSIO_CODEC_ZSTD, frame, fn, dst, P, 512, D, 0,
                    crop, wrap_str, dstr, 0, LSIO_DEC_E_BOUNDS, 1))
        return T_EXIT_FAIL;
    /* the box fits the chunk but not the destination page */
    int64_t one[3] = {1, 128, 1};
    if (bounds_case("past the destination", LSIO_CODEC_RAW, c512, 512, dst, P, 512,
                    D + P - 256, 0, one, wrap_str, dstr, 0, LSIO_DEC_E_BOUNDS, 2))
        return T_EXIT_FAIL;
    if (bounds_case("below the destination", LSIO_CODEC_RAW, c512, 512, dst, P, 512, D - 4, 0,
                    one, wrap_str, dstr, 0, LSIO_DEC_E_BOUNDS, 2))
        return T_EXIT_FAIL;
    if (bounds_case("direct, chunk larger than the destination", LSIO_CODEC_RAW, src, P, dst,
                    P / 2, P, D, 0, one, wrap_str, dstr, 1, LSIO_DEC_E_BOUNDS, 2))
        return T_EXIT_FAIL;
    if (bounds_case("direct, at the destination's end", LSIO_CODEC_RAW, c512, 512, dst, P, 512,
                    D + P - 256, 0, one, wrap_str, dstr, 1, LSIO_DEC_E_BOUNDS, 2))
        return T_EXIT_FAIL;
    if (bounds_case("source offset past the chunk", LSIO_CODEC_RAW, c512, 512, dst, P, 512, D, 4,
                    one, wrap_str, dstr, 0, LSIO_DEC_E_BOUNDS, 1))
        return T_EXIT_FAIL;
    if (bounds_case("negative source offset", LSIO_CODEC_RAW, c512, 512, dst, P, 512, D, -4, one,
                    wrap_str, dstr, 0, LSIO_DEC_E_BOUNDS, 1))
        return T_EXIT_FAIL;
    int64_t neg[3] = {1, -2, 1};
    if (bounds_case("negative shape", LSIO_CODEC_RAW, c512, 512, dst, P, 512, D, 0, neg, wrap_str,
                    dstr, 0, LSIO_DEC_E_BOUNDS, 3))
        return T_EXIT_FAIL;
    int64_t huge_str[3] = {INT64_MAX / 2, 4, 4}, three[3] = {3, 1, 1};
    if (bounds_case("stride product overflows", LSIO_CODEC_RAW, c512, 512, dst, P, 512, D, 0,
                    three, huge_str, dstr, 0, LSIO_DEC_E_BOUNDS, 1))
        return T_EXIT_FAIL;
    int64_t back_str[3] = {-(INT64_MAX / 2), 4, 4}, small_str[3] = {4, 4, 4};
    if (bounds_case("negative stride product overflows", LSIO_CODEC_RAW, c512, 512, dst, P, 512,
                    D + P - 4, 0, three, small_str, back_str, 0, LSIO_DEC_E_BOUNDS, 2))
        return T_EXIT_FAIL;
    /* an empty box fits anywhere and copies nothing */
    int64_t empty[3] = {0, 128, 1};
    if (bounds_case("empty box", LSIO_CODEC_RAW, c512, 512, dst, P, 512, D + P, 0, empty,
                    huge_str, dstr, 0, LSIO_DEC_OK, 0))
        return T_EXIT_FAIL;
    /* exact fits against both guard pages: the last 512 bytes of the page, forward... */
    memset(dst, 0, P);
    if (bounds_case("exact fit", LSIO_CODEC_RAW, c512, 512, dst, P, 512, D + P - 512, 0, one,
                    wrap_str, dstr, 0, LSIO_DEC_OK, 0))
        return T_EXIT_FAIL;
    T_CHECK(memcmp(dst + pg - 512, c512, 512) == 0, "exact fit: bytes");
    /* ... and reversed into the first 512 bytes (destination strides negative) */
    int64_t rev[3] = {512, -4, 4};
    if (bounds_case("exact fit, reversed", LSIO_CODEC_ZSTD, frame, fn, dst, P, 512, D + 508, 0, one,
                    wrap_str, rev, 0, LSIO_DEC_OK, 0))
        return T_EXIT_FAIL;
    for (int i = 0; i < 128; i++)
        T_CHECK(memcmp(dst + 508 - 4 * i, c512 + 4 * i, 4) == 0, "reversed element %d", i);
    if (bounds_case("reversed, one element below", LSIO_CODEC_RAW, c512, 512, dst, P, 512, D + 504,
                    0, one, wrap_str, rev, 0, LSIO_DEC_E_BOUNDS, 2))
        return T_EXIT_FAIL;
    munmap(smap, 3 * (size_t)pg);
    munmap(dmap, 3 * (size_t)pg);
    return T_EXIT_PASS;
}

int main(void) {
    for (int i = 0; i < NEL; i++) chunk[i] = (uint32_t)(i / 7) * 2654435761u % 1000u;
    int skipped = 0;
    t_ctx = "no engine";
    if (run_no_engine() != T_EXIT_PASS) return T_EXIT_FAIL;
    t_ctx = "bounds";
    if (run_bounds() != T_EXIT_PASS) return T_EXIT_FAIL;
    t_ctx = "prefix";
    if (run_prefix() != T_EXIT_PASS) return T_EXIT_FAIL;
    for (int v = 0; v < t_nvariants_basic; v++) {
        t_ctx = t_variants_basic[v].name;
        int skip;
        lsio_engine *e = t_engine(&t_variants_basic[v], 8 << 20, 0, &skip);
        if (!e) {
            if (!skip) return T_EXIT_FAIL;
            skipped++;
            continue;
        }
        T_RUN(run_codec(e, LSIO_CODEC_ZSTD), skipped);
        T_RUN(run_codec(e, LSIO_CODEC_BLOSC), skipped);
        T_RUN(run_codec(e, LSIO_CODEC_RAW), skipped);
        T_RUN(run_shared(e), skipped);
        T_RUN(run_errors(e), skipped);
        T_RUN(run_threads(e), skipped);
        if (t_check_idle(e)) return T_EXIT_FAIL;
        lsio_engine_free(e);
    }
    lsio_decode_thread_free();
    return skipped == t_nvariants_basic ? T_EXIT_SKIP : T_EXIT_PASS;
}
