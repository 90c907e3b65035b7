/*
 * decode.c -- decode stored Zarr chunks straight from pool buffers into an array.
 *
 * The Python decode path paid ~75 us of interpreter work per chunk (slices, views, a
 * header check, a numcodecs call) on top of ~260 us of zstd, and held the GIL for it:
 * on two cores that left a quarter of the decoder idle.  lsio_decode_batch takes a
 * batch of chunks (numpy structured array of lsio_decode_job, built with a few vector
 * operations) and, in one call that runs without the GIL, for each one: decodes it
 * (zstd with a reused per-thread context, blosc, or raw bytes), either straight into
 * the destination (a whole chunk whose destination box is C-contiguous) or into a
 * per-thread scratch buffer from which the wanted box is copied with strides, and gives
 * the pool buffer back.  Consecutive jobs with the same stored bytes (one chunk copied
 * into several boxes, as the decode-aware crop sampler does) decode it once.
 *
 * Ownership rules:
 *  - jobs[i].src points into memory the caller owns until the job ends; normally that
 *    is a reaped completion's pool buffer (jobs[i].buf_id).  lsio_decode_batch
 *    releases that buffer (lsio_release) when the last job reading it ends: a job with
 *    refcnt == 0 is the buffer's only reader and releases it itself; jobs sharing a
 *    buffer (several inner chunks of one coalesced read) carry the address of one
 *    int32 counter, preset by the caller to the number of such jobs, and the job that
 *    brings it to zero releases the buffer.  Every job is ended, including those
 *    skipped after an error, so the caller never releases those buffers itself and
 *    must not read src after the call.  The counters may be shared by batches running
 *    on several threads at once (atomic decrement); they must outlive every job that
 *    names them.
 *  - jobs[i].dst (and the box it spans with spec->dst_strides) is the caller's memory
 *    and must stay valid for the call; jobs of concurrent calls must write disjoint
 *    boxes.
 *  - Each thread that calls lsio_decode_batch gets its own ZSTD_DCtx and scratch
 *    buffer, made on first use and freed by a pthread key destructor when the thread
 *    exits (lsio_decode_thread_free frees them earlier).  Nothing is shared between
 *    threads except the engine's pool (whose release is thread-safe) and the counters.
 *  - No job reads or writes outside the memory it was given: before anything is copied,
 *    the job's box (shape, src_off and the chunk strides) must lie inside the decoded
 *    chunk's spec->nbytes, and its destination box (dst and the destination strides, or
 *    nbytes from dst for a direct job) inside [jobs[i].dst_lo, dst_lo + dst_len);
 *    else the job fails with LSIO_DEC_E_BOUNDS.  The extents are computed with
 *    overflow checks, so a crafted shape or stride cannot wrap around them.
 *  - Nothing is written outside a job's box: a chunk whose decoded size differs from
 *    spec->nbytes fails (LSIO_DEC_E_SIZE) -- zstd is given exactly nbytes of room, so a
 *    frame that is too big fails inside zstd and one that is too small is detected from
 *    the size it returns; blosc's header is validated before it is trusted.  A direct
 *    decode that fails may have written part of its (own) box.
 *  - A box that needs only the first part of a zstd chunk (a crop's rows in the upper
 *    chunk of two) is decoded block by block into the scratch buffer up to the block
 *    holding its last byte, and the rest of the frame is left undecoded: for random
 *    crops of (1,256,256) float32 chunks (two 128 KiB blocks) that is ~1/8 of the zstd
 *    work.  Only a single frame that declares its content size, equal to spec->nbytes,
 *    and whose block headers span exactly src_len bytes (ZSTD_findFrameCompressedSize)
 *    takes this path, so a truncated or padded chunk still fails; the blocks after the
 *    box's last byte, and the frame's checksum, are not looked at.  Each block is given
 *    only the scratch room left, so nothing is written past spec->nbytes either way.
 */
#define ZSTD_STATIC_LINKING_ONLY /* the block-by-block API (exported by libzstd >= 1.4) */
#include <blosc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "decode.h"
#include "lsio.h"

typedef struct tls_state {
    ZSTD_DCtx *zstd;
    unsigned char *scratch;
    size_t cap;
} tls_state;

static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;

static void tls_destroy(void *p)
{
    tls_state *t = p;
    if (!t)
        return;
    ZSTD_freeDCtx(t->zstd);
    free(t->scratch);
    free(t);
}

static void tls_init(void)
{
    (void)pthread_key_create(&tls_key, tls_destroy);
}

static tls_state *tls_get(void)
{
    pthread_once(&tls_once, tls_init);
    tls_state *t = pthread_getspecific(tls_key);
    if (t)
        return t;
    t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    if (pthread_setspecific(tls_key, t) != 0) {
        free(t);
        return NULL;
    }
    return t;
}

void lsio_decode_thread_free(void)
{
    pthread_once(&tls_once, tls_init);
    tls_state *t = pthread_getspecific(tls_key);
    if (t) {
        (void)pthread_setspecific(tls_key, NULL);
        tls_destroy(t);
    }
}

static unsigned char *scratch(tls_state *t, size_t n)
{
    if (t->cap < n) {
        unsigned char *p = realloc(t->scratch, n);
        if (!p)
            return NULL;
        t->scratch = p;
        t->cap = n;
    }
    return t->scratch;
}

/* Decode src into out (exactly nbytes of room).  Returns LSIO_DEC_OK or an error
 * status with *detail set. */
static int32_t decode_into(tls_state *t, int32_t codec, const void *src, size_t src_len,
                           void *out, size_t nbytes, int64_t *detail)
{
    switch (codec) {
    case LSIO_CODEC_RAW:
        if (src_len != nbytes) {
            *detail = (int64_t)src_len;
            return LSIO_DEC_E_SIZE;
        }
        memcpy(out, src, nbytes);
        return LSIO_DEC_OK;
    case LSIO_CODEC_ZSTD: {
        if (!t->zstd && !(t->zstd = ZSTD_createDCtx())) {
            *detail = 0;
            return LSIO_DEC_E_NOMEM;
        }
        size_t r = ZSTD_decompressDCtx(t->zstd, out, nbytes, src, src_len);
        if (ZSTD_isError(r)) {
            *detail = (int64_t)ZSTD_getErrorCode(r);
            return LSIO_DEC_E_CODEC;
        }
        if (r != nbytes) {
            *detail = (int64_t)r;
            return LSIO_DEC_E_SIZE;
        }
        return LSIO_DEC_OK;
    }
    case LSIO_CODEC_BLOSC: {
        size_t declared = 0, cbytes = 0, blocksize = 0;
        if (src_len < BLOSC_MIN_HEADER_LENGTH) {
            *detail = 1;
            return LSIO_DEC_E_CODEC;
        }
        blosc_cbuffer_sizes(src, &declared, &cbytes, &blocksize);
        /* bytes after the buffer are ignored, as numcodecs (and so zarr-python) does;
         * a buffer longer than what was read is refused before blosc looks at it */
        if (cbytes > src_len || cbytes < BLOSC_MIN_HEADER_LENGTH ||
            blosc_cbuffer_validate(src, cbytes, &declared) < 0) {
            *detail = 2;
            return LSIO_DEC_E_CODEC;
        }
        if (declared != nbytes) {
            *detail = (int64_t)declared;
            return LSIO_DEC_E_SIZE;
        }
        int r = blosc_decompress_ctx(src, out, nbytes, 1);
        if (r < 0) {
            *detail = 3;
            return LSIO_DEC_E_CODEC;
        }
        if ((size_t)r != nbytes) {
            *detail = r;
            return LSIO_DEC_E_SIZE;
        }
        return LSIO_DEC_OK;
    }
    default:
        *detail = codec;
        return LSIO_DEC_E_ARG;
    }
}

/* Decode the first `need` (<= nbytes) bytes of the single zstd frame src into out
 * (nbytes of room), block by block, and stop after the block that reaches `need`; 1 if
 * it did, 0 if the frame does not qualify (see the rules at the top: then the caller
 * decodes it whole, which reports any error), or an error status (< 0) with *detail. */
static int32_t zstd_prefix(tls_state *t, const unsigned char *src, size_t src_len,
                           unsigned char *out, size_t nbytes, size_t need, int64_t *detail)
{
    unsigned long long declared = ZSTD_getFrameContentSize(src, src_len);
    if (declared != (unsigned long long)nbytes || ZSTD_findFrameCompressedSize(src, src_len)
                                                      != src_len)
        return 0;
    if (!t->zstd && !(t->zstd = ZSTD_createDCtx())) {
        *detail = 0;
        return LSIO_DEC_E_NOMEM;
    }
    size_t r = ZSTD_decompressBegin(t->zstd);
    size_t in = 0, pos = 0;
    while (!ZSTD_isError(r)) {
        size_t want = ZSTD_nextSrcSizeToDecompress(t->zstd);
        if (want == 0 || want > src_len - in)
            return 0; /* the frame ended before `need` (or lies): decode it whole */
        r = ZSTD_decompressContinue(t->zstd, out + pos, nbytes - pos, src + in, want);
        if (ZSTD_isError(r))
            break;
        in += want;
        pos += r;
        if (pos >= need)
            return 1;
    }
    *detail = (int64_t)ZSTD_getErrorCode(r);
    return LSIO_DEC_E_CODEC;
}

/* One past the last byte of the box (offset `off`, `shape`, `strides`, elements of
 * `isz` bytes), for a box check_job accepted; `limit` if it has no element. */
static uint64_t box_end(int64_t off, const int64_t *strides, const int64_t *shape, int ndim,
                        uint64_t isz, uint64_t limit)
{
    int64_t hi = off;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] <= 0)
            return limit;
        if (strides[d] > 0)
            hi += (shape[d] - 1) * strides[d]; /* no overflow: check_job's box_fits */
    }
    return (uint64_t)hi + isz;
}

/* Copy the box `shape` from src (strides ss) to dst (strides ds), elements of size isz. */
static void copy_box(char *dst, const int64_t *ds, const char *src, const int64_t *ss,
                     const int64_t *shape, int ndim, size_t isz)
{
    if (ndim == 0) {
        memcpy(dst, src, isz);
        return;
    }
    if (ndim == 1) {
        int64_t n = shape[0];
        if (ds[0] == (int64_t)isz && ss[0] == (int64_t)isz) {
            memcpy(dst, src, (size_t)n * isz);
            return;
        }
        for (int64_t i = 0; i < n; i++)
            memcpy(dst + i * ds[0], src + i * ss[0], isz);
        return;
    }
    for (int64_t i = 0; i < shape[0]; i++)
        copy_box(dst + i * ds[0], ds + 1, src + i * ss[0], ss + 1, shape + 1, ndim - 1, isz);
}

/* 1 if every element of the box -- `shape` elements of `isz` bytes with byte strides
 * `strides`, the first at byte offset `off` -- lies in [0, limit).  An empty box (a zero
 * in its shape) fits anywhere; a negative extent never does.  Overflow-checked. */
static int box_fits(int64_t off, const int64_t *strides, const int64_t *shape, int ndim,
                    uint64_t isz, uint64_t limit)
{
    int64_t lo = off, hi = off;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return 0;
        if (shape[d] == 0)
            return 1;
    }
    for (int d = 0; d < ndim; d++) {
        int64_t reach;
        if (__builtin_mul_overflow(shape[d] - 1, strides[d], &reach))
            return 0;
        if (reach < 0 ? __builtin_add_overflow(lo, reach, &lo)
                      : __builtin_add_overflow(hi, reach, &hi))
            return 0;
    }
    return lo >= 0 && isz <= limit && (uint64_t)hi <= limit - isz;
}

/* LSIO_DEC_OK if job j stays inside the decoded chunk and the destination, else
 * LSIO_DEC_E_BOUNDS with j->detail saying which side (1 source, 2 destination, 3 shape). */
static int32_t check_job(const lsio_decode_spec *spec, lsio_decode_job *j)
{
    if (j->dst < j->dst_lo || j->dst - j->dst_lo > (uint64_t)INT64_MAX) {
        j->detail = 2;
        return LSIO_DEC_E_BOUNDS;
    }
    int64_t dst_off = (int64_t)(j->dst - j->dst_lo);
    if (j->direct) { /* the whole chunk, nbytes from dst */
        if (spec->nbytes > j->dst_len || (uint64_t)dst_off > j->dst_len - spec->nbytes) {
            j->detail = 2;
            return LSIO_DEC_E_BOUNDS;
        }
        return LSIO_DEC_OK;
    }
    for (int d = 0; d < spec->ndim; d++)
        if (j->shape[d] < 0) {
            j->detail = 3;
            return LSIO_DEC_E_BOUNDS;
        }
    if (!box_fits(j->src_off, spec->chunk_strides, j->shape, spec->ndim, spec->itemsize,
                  spec->nbytes)) {
        j->detail = 1;
        return LSIO_DEC_E_BOUNDS;
    }
    if (!box_fits(dst_off, spec->dst_strides, j->shape, spec->ndim, spec->itemsize,
                  j->dst_len)) {
        j->detail = 2;
        return LSIO_DEC_E_BOUNDS;
    }
    return LSIO_DEC_OK;
}

static void end_job(lsio_engine *e, lsio_decode_job *j)
{
    if (!j->buf_id)
        return;
    if (j->refcnt) {
        int32_t *cnt = (int32_t *)(uintptr_t)j->refcnt;
        if (__atomic_sub_fetch(cnt, 1, __ATOMIC_ACQ_REL) != 0)
            return;
    }
    (void)lsio_release(e, j->buf_id);
}

int64_t lsio_decode_batch(lsio_engine *e, const lsio_decode_spec *spec, lsio_decode_job *jobs,
                          uint64_t n)
{
    int64_t failed = 0;
    /* the chunk now in the scratch buffer: consecutive jobs reading the same stored bytes
     * (one chunk copied into several boxes) decode it once */
    uint64_t held_src = 0, held_len = 0;
    int held = 0;
    int bad_spec = spec->ndim < 0 || spec->ndim > LSIO_DEC_MAXDIM || spec->itemsize == 0;
    tls_state *t = bad_spec ? NULL : tls_get();
    for (uint64_t i = 0; i < n; i++) {
        lsio_decode_job *j = &jobs[i];
        j->detail = 0;
        if (bad_spec || failed) {
            j->status = bad_spec ? LSIO_DEC_E_ARG : LSIO_DEC_E_SKIPPED;
            failed += bad_spec;
            end_job(e, j);
            continue;
        }
        if (!t) {
            j->status = LSIO_DEC_E_NOMEM;
            failed++;
            end_job(e, j);
            continue;
        }
        const void *src = (const void *)(uintptr_t)j->src;
        int32_t st = check_job(spec, j);
        if (st != LSIO_DEC_OK) {
            /* nothing copied */
        } else if (j->direct) {
            st = decode_into(t, spec->codec, src, j->src_len, (void *)(uintptr_t)j->dst,
                             spec->nbytes, &j->detail);
        } else {
            const char *chunk;
            if (spec->codec == LSIO_CODEC_RAW) { /* copy straight from the stored bytes */
                st = j->src_len == spec->nbytes ? LSIO_DEC_OK : LSIO_DEC_E_SIZE;
                j->detail = (int64_t)j->src_len;
                chunk = src;
            } else if (held && held_src == j->src && held_len == j->src_len) {
                st = LSIO_DEC_OK;
                chunk = (const char *)t->scratch;
            } else {
                unsigned char *tmp = scratch(t, spec->nbytes ? spec->nbytes : 1);
                int32_t part = 0;
                if (tmp && spec->codec == LSIO_CODEC_ZSTD) {
                    /* the prefix every job of this chunk (this and the following jobs
                     * with the same stored bytes) needs */
                    uint64_t need = 0;
                    for (uint64_t k = i; k < n && need < spec->nbytes; k++) {
                        const lsio_decode_job *q = &jobs[k];
                        if (q->src != j->src || q->src_len != j->src_len)
                            break;
                        /* a box that does not fit fails its own check_job later */
                        uint64_t end = box_fits(q->src_off, spec->chunk_strides, q->shape,
                                                spec->ndim, spec->itemsize, spec->nbytes)
                                           ? box_end(q->src_off, spec->chunk_strides,
                                                     q->shape, spec->ndim, spec->itemsize,
                                                     spec->nbytes)
                                           : spec->nbytes;
                        need = end > need ? end : need;
                    }
                    if (need + ZSTD_BLOCKSIZE_MAX <= spec->nbytes)
                        part = zstd_prefix(t, src, j->src_len, tmp, spec->nbytes, need,
                                           &j->detail);
                }
                if (part < 0)
                    st = part;
                else if (part == 1)
                    st = LSIO_DEC_OK;
                else
                    st = tmp ? decode_into(t, spec->codec, src, j->src_len, tmp, spec->nbytes,
                                           &j->detail)
                             : LSIO_DEC_E_NOMEM;
                chunk = (const char *)tmp;
                held = st == LSIO_DEC_OK;
                held_src = j->src;
                held_len = j->src_len;
            }
            if (st == LSIO_DEC_OK)
                copy_box((char *)(uintptr_t)j->dst, spec->dst_strides, chunk + j->src_off,
                         spec->chunk_strides, j->shape, spec->ndim, spec->itemsize);
        }
        j->status = st;
        if (st != LSIO_DEC_OK)
            failed++;
        end_job(e, j);
    }
    return failed;
}

int lsio_blosc_supports(const char *cname)
{
    return blosc_compname_to_compcode(cname) >= 0;
}

void lsio_decode_end(lsio_engine *e, lsio_decode_job *jobs, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        jobs[i].status = LSIO_DEC_E_SKIPPED;
        jobs[i].detail = 0;
        end_job(e, &jobs[i]);
    }
}

const char *lsio_decode_strerror(int32_t codec, int32_t status, int64_t detail)
{
    switch (status) {
    case LSIO_DEC_OK:
        return "success";
    case LSIO_DEC_E_SIZE:
        return "the chunk decodes to the wrong number of bytes";
    case LSIO_DEC_E_NOMEM:
        return "out of memory for the decoder";
    case LSIO_DEC_E_ARG:
        return "invalid decode arguments";
    case LSIO_DEC_E_SKIPPED:
        return "skipped after an earlier error in the batch";
    case LSIO_DEC_E_BOUNDS:
        return detail == 1   ? "the box reaches outside the decoded chunk"
               : detail == 2 ? "the box reaches outside the destination array"
                             : "the box has a negative extent";
    case LSIO_DEC_E_CODEC:
        if (codec == LSIO_CODEC_ZSTD)
            return ZSTD_getErrorString((ZSTD_ErrorCode)detail);
        if (codec == LSIO_CODEC_BLOSC)
            return detail == 1   ? "blosc: shorter than the 16-byte header"
                   : detail == 2 ? "blosc: invalid header (sizes do not match the stored bytes)"
                                 : "blosc: decompression failed (corrupt data)";
        return "codec error";
    default:
        return "unknown decode status";
    }
}

/* ------------------------------------------------------------------ box planning */

int64_t lsio_plan_box(int32_t ndim, const int64_t *lo, const int64_t *hi, const int64_t *chunks,
                      uint64_t n, int64_t *sel, uint8_t *full, lsio_decode_job *jobs,
                      const int64_t *dst_strides, const int64_t *chunk_strides,
                      uint64_t dst_origin, int32_t direct)
{
    /* a box of 2**31 dimensions is nonsense; 64 is plenty for the odometer below */
    enum { MAXD = 64 };
    int64_t c0[MAXD], cnt[MAXD], idx[MAXD];
    if (ndim < 1 || ndim > MAXD || !lo || !hi || !chunks || !sel || !full) return -1;
    if (jobs && (ndim > LSIO_DEC_MAXDIM || !dst_strides || !chunk_strides)) return -1;
    uint64_t total = 1;
    for (int d = 0; d < ndim; d++) {
        if (chunks[d] < 1 || lo[d] < 0 || hi[d] <= lo[d]) return -1;
        c0[d] = lo[d] / chunks[d];
        cnt[d] = (hi[d] - 1) / chunks[d] + 1 - c0[d];
        int64_t last_stop; /* the end of the last chunk: must not wrap (a crafted size) */
        if (__builtin_add_overflow((hi[d] - 1) / chunks[d] * chunks[d], chunks[d], &last_stop))
            return -1;
        if (__builtin_mul_overflow(total, (uint64_t)cnt[d], &total)) return -1;
        idx[d] = 0;
    }
    if (total != n) return -1;
    uint64_t nd = n * (uint64_t)ndim; /* fits: n * ndim int64 were allocated by the caller */
    int64_t *coords = sel, *src_lo = sel + nd, *src_hi = sel + 2 * nd;
    int64_t *dst_lo = sel + 3 * nd, *dst_hi = sel + 4 * nd;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t row = i * (uint64_t)ndim;
        int whole = 1;
        int64_t dst_off = 0, src_off = 0;
        for (int d = 0; d < ndim; d++) {
            int64_t c = c0[d] + idx[d];
            int64_t start = c * chunks[d], stop = start + chunks[d];
            int64_t a = start > lo[d] ? start : lo[d];
            int64_t b = stop < hi[d] ? stop : hi[d];
            coords[row + d] = c;
            src_lo[row + d] = a - start;
            src_hi[row + d] = b - start;
            dst_lo[row + d] = a - lo[d];
            dst_hi[row + d] = b - lo[d];
            whole &= start >= lo[d] && stop <= hi[d];
            if (jobs) {
                dst_off += (a - lo[d]) * dst_strides[d];
                src_off += (a - start) * chunk_strides[d];
                jobs[i].shape[d] = b - a;
            }
        }
        full[i] = (uint8_t)whole;
        if (jobs) {
            jobs[i].dst = dst_origin + (uint64_t)dst_off;
            jobs[i].src_off = src_off;
            for (int d = ndim; d < LSIO_DEC_MAXDIM; d++) jobs[i].shape[d] = 0;
            jobs[i].tag = (int64_t)i;
            jobs[i].direct = whole && direct;
        }
        for (int d = ndim - 1; d >= 0; d--) { /* the next chunk, C order */
            if (++idx[d] < cnt[d]) break;
            idx[d] = 0;
        }
    }
    return (int64_t)n;
}
