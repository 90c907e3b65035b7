/*
 * fuzz-decode.c -- a bounded, seeded fuzz of lsio_decode_batch (run under ASan+UBSan).
 *
 * Every case builds a chunk of a random shape (1-4 dimensions, item size 1/2/4/8),
 * encodes it raw, with zstd or with blosc, then mutates the stored bytes (flipped bytes,
 * truncation, extension, random bytes, a forged blosc header, or nothing) and decodes
 * it with a random job: a box inside the chunk or reaching past it, random offsets,
 * positive or negative destination strides, direct or strided, with a destination
 * extent that fits or is too small.  The stored bytes end exactly at a PROT_NONE guard
 * page and the destination sits between two: a read or write outside them faults even
 * without ASan.  Checks per case:
 *  - no crash, no sanitizer report (the runner fails the test on either);
 *  - the status is one of the documented ones, and a box the checks call out of bounds
 *    is refused (LSIO_DEC_E_BOUNDS) and leaves the destination untouched;
 *  - an unmutated chunk with an in-bounds box decodes to exactly the reference bytes,
 *    and no byte of the destination outside the box changes.
 * LSIO_FUZZ_CASES (default 3000) and LSIO_FUZZ_SEED (default 1) set the run.
 */
#include "helpers.h"

#include <blosc.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zstd.h>

#define PAGE_CAP (1u << 20) /* the largest chunk and destination a case makes */

static uint64_t rng_state;
static int n_refused, n_ok, n_compared, n_failed; /* what the run covered */

static uint64_t rnd(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }

typedef struct guarded {
    uint8_t *map, *rw;
    size_t rw_len, map_len;
} guarded;

/* rw_len read-write bytes (a whole number of pages) between two PROT_NONE pages */
static int guard_new(guarded *g, size_t rw_len) {
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    g->rw_len = (rw_len + pg - 1) / pg * pg;
    g->map_len = g->rw_len + 2 * pg;
    g->map = mmap(NULL, g->map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (g->map == MAP_FAILED) return -1;
    g->rw = g->map + pg;
    return mprotect(g->rw, g->rw_len, PROT_READ | PROT_WRITE);
}

static void guard_free(guarded *g) { munmap(g->map, g->map_len); }

static const int32_t statuses[] = {LSIO_DEC_OK, LSIO_DEC_E_SIZE, LSIO_DEC_E_CODEC,
                                   LSIO_DEC_E_NOMEM, LSIO_DEC_E_ARG, LSIO_DEC_E_BOUNDS};

static int known_status(int32_t st) {
    for (size_t i = 0; i < sizeof statuses / sizeof *statuses; i++)
        if (statuses[i] == st) return 1;
    return 0;
}

static int one_case(guarded *src_pg, guarded *dst_pg, uint8_t *plain, uint8_t *enc,
                    uint8_t *shadow, int k) {
    int ndim = 1 + (int)below(4);
    uint64_t isz = 1ull << below(4);
    int64_t cshape[4], cstr[4], box[4], lo[4], dstr[4];
    uint64_t nel = 1;
    for (int d = 0; d < ndim; d++) {
        cshape[d] = 1 + (int64_t)below(d == ndim - 1 ? 40 : 12);
        nel *= (uint64_t)cshape[d];
    }
    uint64_t nbytes = nel * isz;
    if (nbytes > PAGE_CAP / 4) return T_EXIT_PASS; /* too large for this case's pages */
    for (int d = ndim - 1, acc = (int)isz; d >= 0; d--) {
        cstr[d] = acc;
        acc *= (int)cshape[d];
    }
    for (uint64_t i = 0; i < nbytes; i++) plain[i] = (uint8_t)(rnd() & (k & 1 ? 0x3 : 0xff));

    /* encode */
    int codec = (int)below(3);
    size_t n;
    if (codec == LSIO_CODEC_RAW) {
        memcpy(enc, plain, nbytes);
        n = nbytes;
    } else if (codec == LSIO_CODEC_ZSTD) {
        n = ZSTD_compress(enc, PAGE_CAP, plain, nbytes, 1 + (int)below(5));
        T_CHECK(!ZSTD_isError(n), "zstd compress");
    } else {
        int r = blosc_compress_ctx(5, (int)below(3), isz, nbytes, plain, enc, PAGE_CAP,
                                   below(2) ? "zstd" : "lz4", 0, 1);
        T_CHECK(r > 0, "blosc compress");
        n = (size_t)r;
    }

    /* mutate */
    int mutation = (int)below(7);
    switch (mutation) {
    case 0: /* untouched */
        break;
    case 1: /* flip a few bytes */
        for (int i = 0, m = 1 + (int)below(4); i < m; i++) enc[below(n)] ^= (uint8_t)(1 + below(255));
        break;
    case 2: /* truncate */
        n = below(n);
        break;
    case 3: /* extend with garbage */
        for (size_t e = n + 1 + below(64); n < e; n++) enc[n] = (uint8_t)rnd();
        break;
    case 4: /* random bytes */
        n = below(256);
        for (size_t i = 0; i < n; i++) enc[i] = (uint8_t)rnd();
        break;
    case 5: /* a forged header: blosc's sizes, zstd's frame content size */
        if (n >= 16)
            for (int i = 4; i < 16; i++) enc[i] = (uint8_t)rnd();
        break;
    default: /* the decoded size is lied about */
        nbytes = nbytes + (below(2) ? isz : 0) - (below(2) && nbytes > isz ? isz : 0);
        break;
    }
    int pristine = mutation == 0;

    /* the stored bytes end at the guard page */
    uint8_t *src = src_pg->rw + src_pg->rw_len - n;
    memcpy(src, enc, n);

    /* the box: inside the chunk, or not */
    for (int d = 0; d < ndim; d++) {
        lo[d] = (int64_t)below((uint64_t)cshape[d]);
        box[d] = 1 + (int64_t)below((uint64_t)(cshape[d] - lo[d]));
        if (below(8) == 0) box[d] += 1 + (int64_t)below(4);  /* past the end */
        if (below(16) == 0) lo[d] = -(int64_t)(1 + below(3)); /* before the start */
        if (below(64) == 0) box[d] = -(int64_t)below(3);       /* empty or negative */
    }
    int direct = below(4) == 0;
    if (direct)
        for (int d = 0; d < ndim; d++) {
            lo[d] = 0;
            box[d] = cshape[d];
        }
    int64_t src_off = 0;
    for (int d = 0; d < ndim; d++) src_off += lo[d] * cstr[d];

    /* the destination: a C-order array of the box's shape (a little larger), maybe
     * reversed along one axis; its extent may be understated */
    int64_t dshape[4];
    uint64_t dnel = 1;
    for (int d = 0; d < ndim; d++) {
        dshape[d] = (box[d] > 0 ? box[d] : 1) + (int64_t)below(2);
        dnel *= (uint64_t)dshape[d];
    }
    uint64_t dbytes = direct ? nbytes : dnel * isz;
    if (dbytes > dst_pg->rw_len) return T_EXIT_PASS;
    for (int d = ndim - 1, acc = (int)isz; d >= 0; d--) {
        dstr[d] = acc;
        acc *= (int)dshape[d];
    }
    uint8_t *dbase = dst_pg->rw + dst_pg->rw_len - dbytes; /* ends at the guard page */
    uint8_t *dfirst = dbase;
    int rev = direct ? -1 : (int)below((uint64_t)ndim + 1) - 1;
    if (rev >= 0) {
        dfirst += (dshape[rev] - 1) * dstr[rev];
        dstr[rev] = -dstr[rev];
    }
    uint64_t dlen = dbytes;
    int understated = below(8) == 0;
    if (understated) dlen = dlen > isz ? dlen - isz : 0;
    /* the oracle: does every byte the job may touch lie in the chunk and the
     * destination?  (an empty box touches none; a negative one is always refused) */
    int any_negative = 0, any_zero = 0;
    for (int d = 0; d < ndim; d++) {
        any_negative |= box[d] < 0;
        any_zero |= box[d] == 0;
    }
    int refuse;
    if (direct) {
        refuse = nbytes > dlen;
    } else if (any_negative) {
        refuse = 1;
    } else if (any_zero) {
        refuse = 0;
    } else {
        int64_t src_hi = src_off, dst_lo = dfirst - dbase, dst_hi = dst_lo;
        for (int d = 0; d < ndim; d++) {
            src_hi += (box[d] - 1) * cstr[d];
            int64_t reach = (box[d] - 1) * dstr[d];
            if (reach < 0) dst_lo += reach;
            else dst_hi += reach;
        }
        refuse = src_off < 0 || (uint64_t)src_hi + isz > nbytes || dst_lo < 0 ||
                 (uint64_t)dst_hi + isz > dlen;
    }
    memset(dbase, 0xa5, dbytes);
    memcpy(shadow, dbase, dbytes);

    lsio_decode_spec s;
    memset(&s, 0, sizeof s);
    s.codec = codec;
    s.ndim = ndim;
    s.nbytes = nbytes;
    s.itemsize = isz;
    lsio_decode_job j;
    memset(&j, 0, sizeof j);
    for (int d = 0; d < ndim; d++) {
        s.chunk_strides[d] = cstr[d];
        s.dst_strides[d] = dstr[d];
        j.shape[d] = box[d];
    }
    j.src = (uint64_t)(uintptr_t)src;
    j.src_len = n;
    j.dst = (uint64_t)(uintptr_t)dfirst;
    j.dst_lo = (uint64_t)(uintptr_t)dbase;
    j.dst_len = dlen;
    j.src_off = src_off;
    j.direct = direct;
    int64_t failed = lsio_decode_batch(NULL, &s, &j, 1);
    T_CHECK(known_status(j.status), "case %d: unknown status %d", k, j.status);
    T_CHECK(failed == (j.status != LSIO_DEC_OK), "case %d: failed count", k);
    n_refused += j.status == LSIO_DEC_E_BOUNDS;
    n_ok += j.status == LSIO_DEC_OK;
    n_failed += j.status != LSIO_DEC_OK && j.status != LSIO_DEC_E_BOUNDS;
    if (refuse) {
        T_CHECK(j.status == LSIO_DEC_E_BOUNDS, "case %d: box outside not refused: %d", k,
                j.status);
        T_CHECK(memcmp(dbase, shadow, dbytes) == 0, "case %d: refused job wrote", k);
        return T_EXIT_PASS;
    }
    if (!pristine) return T_EXIT_PASS; /* any documented status will do */
    if (any_zero) return T_EXIT_PASS;
    T_CHECK(j.status != LSIO_DEC_E_BOUNDS, "case %d: box inside refused", k);
    T_CHECK(j.status == LSIO_DEC_OK, "case %d: pristine chunk failed: %d (%s)", k, j.status,
            lsio_decode_strerror(codec, j.status, j.detail));
    n_compared++;
    /* compare: every element of the box where the strides put it; the rest untouched */
    if (direct) {
        T_CHECK(memcmp(dbase, plain, nbytes) == 0, "case %d: direct bytes", k);
        return T_EXIT_PASS;
    }
    int64_t idx[4] = {0, 0, 0, 0};
    uint64_t count = 1;
    for (int d = 0; d < ndim; d++) count *= (uint64_t)box[d];
    for (uint64_t e = 0; e < count; e++) {
        int64_t so = src_off, doff = dfirst - dbase;
        for (int d = 0; d < ndim; d++) {
            so += idx[d] * cstr[d];
            doff += idx[d] * dstr[d];
        }
        T_CHECK(memcmp(dbase + doff, plain + so, isz) == 0, "case %d: element %llu", k,
                (unsigned long long)e);
        memcpy(shadow + doff, plain + so, isz);
        for (int d = ndim - 1; d >= 0; d--) {
            if (++idx[d] < box[d]) break;
            idx[d] = 0;
        }
    }
    T_CHECK(memcmp(dbase, shadow, dbytes) == 0, "case %d: bytes outside the box changed", k);
    return T_EXIT_PASS;
}

int main(void) {
    const char *c = getenv("LSIO_FUZZ_CASES"), *sd = getenv("LSIO_FUZZ_SEED");
    int cases = c ? atoi(c) : 3000;
    rng_state = sd ? strtoull(sd, NULL, 10) : 1;
    t_ctx = "fuzz-decode";
    guarded src_pg, dst_pg;
    T_CHECK(guard_new(&src_pg, PAGE_CAP) == 0 && guard_new(&dst_pg, PAGE_CAP) == 0, "mmap");
    uint8_t *plain = malloc(PAGE_CAP), *enc = malloc(PAGE_CAP + 1024), *shadow = malloc(PAGE_CAP);
    T_CHECK(plain && enc && shadow, "malloc");
    for (int k = 0; k < cases; k++)
        if (one_case(&src_pg, &dst_pg, plain, enc, shadow, k) != T_EXIT_PASS) return T_EXIT_FAIL;
    lsio_decode_thread_free();
    free(plain);
    free(enc);
    free(shadow);
    guard_free(&src_pg);
    guard_free(&dst_pg);
    printf("fuzz-decode: %d cases (seed %llu): %d decoded (%d compared with the reference), "
           "%d refused out of bounds, %d failed in the codec or on size\n",
           cases, (unsigned long long)(sd ? strtoull(sd, NULL, 10) : 1), n_ok, n_compared,
           n_refused, n_failed);
    T_CHECK(n_compared > cases / 20 && n_refused > cases / 20 && n_failed > cases / 20,
            "the run did not reach every outcome");
    return T_EXIT_PASS;
}
