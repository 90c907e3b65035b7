/*
 * decode.h -- the chunk decoder's API (decode.c): a batch of stored chunks decoded
 * straight from pool buffers into an array, without the GIL.
 *
 * Holds the decoder's declarations only; its ownership rules are at the top of decode.c.
 * Part of the public API: lsio.h includes it at its end, and cffi's cdef is both headers
 * (lsio_ray/_build.py), so the same rule holds here: plain C declarations, no macros with
 * expressions, no includes but these two.
 */
#ifndef LSIO_DECODE_H
#define LSIO_DECODE_H

#include <stdint.h>

#include "lsio.h" /* lsio_engine */

/* ---- chunk decoding (decode.c) --------------------------------------------------------
 * Decode a batch of stored chunks straight from pool buffers into an array, without the
 * GIL, releasing each buffer when its last chunk is decoded.  Ownership rules are at the
 * top of decode.c: every job's buffer is released by lsio_decode_batch, even on error. */
#define LSIO_DEC_MAXDIM 8     /* jobs carry up to this many dimensions */

#define LSIO_CODEC_RAW 0      /* stored bytes are the chunk */
#define LSIO_CODEC_ZSTD 1     /* one or more zstd frames */
#define LSIO_CODEC_BLOSC 2    /* a c-blosc 1.x buffer */

#define LSIO_DEC_OK 0
#define LSIO_DEC_E_SIZE -1    /* decodes to a size other than spec.nbytes (detail: it) */
#define LSIO_DEC_E_CODEC -2   /* the codec refused the bytes (detail: its error code) */
#define LSIO_DEC_E_NOMEM -3   /* no memory for a context or scratch buffer */
#define LSIO_DEC_E_ARG -4     /* invalid spec (ndim, itemsize, codec) */
#define LSIO_DEC_E_SKIPPED -5 /* not decoded: an earlier job of the batch failed */
#define LSIO_DEC_E_BOUNDS -6  /* the job's box reaches outside the decoded chunk
                                 (spec.nbytes) or its destination (job.dst_lo/dst_len);
                                 detail: 1 source side, 2 destination side, 3 bad shape */

typedef struct lsio_decode_spec {
    int32_t codec;              /* LSIO_CODEC_* */
    int32_t ndim;               /* 0 .. LSIO_DEC_MAXDIM */
    uint64_t nbytes;            /* decoded size of one chunk */
    uint64_t itemsize;          /* bytes per element */
    int64_t chunk_strides[8];   /* byte strides of a decoded chunk (C or F order) */
    int64_t dst_strides[8];     /* byte strides of the destination array */
} lsio_decode_spec;

typedef struct lsio_decode_job {
    uint64_t src;         /* address of the stored bytes (in a pool buffer) */
    uint64_t src_len;
    uint64_t dst;         /* address of the box's first element in the destination */
    uint64_t dst_lo;      /* the destination array's lowest byte address and its extent */
    uint64_t dst_len;     /* in bytes: the box must lie in [dst_lo, dst_lo + dst_len) */
    int64_t src_off;      /* byte offset of the box's first element in the decoded chunk */
    int64_t shape[8];     /* the box's shape (ndim entries used) */
    uint64_t buf_id;      /* pool buffer to release when done (0: none) */
    uint64_t refcnt;      /* address of an int32 count of jobs sharing buf_id, or 0 */
    int64_t tag;          /* the caller's, e.g. the chunk's index (for error messages) */
    int32_t direct;       /* 1: whole chunk, C-contiguous destination: decode into dst */
    int32_t status;       /* out: LSIO_DEC_OK or LSIO_DEC_E_* */
    int64_t detail;       /* out: see the status codes */
} lsio_decode_job;

/* Decode jobs[0..n) in order; returns how many failed (after the first failure the rest
 * are skipped, LSIO_DEC_E_SKIPPED, but their buffers are still released).  Before any
 * byte is copied, each job's box is checked against the decoded chunk's size (source)
 * and its destination's extent (LSIO_DEC_E_BOUNDS): nothing is read or written outside.  e may be NULL
 * when no job names a pool buffer (every buf_id 0: bytes the caller owns). */
int64_t lsio_decode_batch(lsio_engine *e, const lsio_decode_spec *spec,
                          lsio_decode_job *jobs, uint64_t n);
/* End jobs without decoding them (status LSIO_DEC_E_SKIPPED): their buffers are released
 * on the same rules (e.g. for a task that failed while its jobs were queued). */
void lsio_decode_end(lsio_engine *e, lsio_decode_job *jobs, uint64_t n);
const char *lsio_decode_strerror(int32_t codec, int32_t status, int64_t detail);
/* 1 if the linked c-blosc decompresses blosc's inner compressor cname ("zstd", "lz4"...). */
int lsio_blosc_supports(const char *cname);
/* Free the calling thread's decoder context and scratch now (else at thread exit). */
void lsio_decode_thread_free(void);

/* ---- box planning (decode.c) ----------------------------------------------------------
 * The chunks (of shape chunks[0..ndim)) that the box [lo, hi) touches, one row per chunk
 * in C order of the chunk grid: n rows, n the product over the axes of the chunks the box
 * spans (the caller computes it: it sizes the outputs).  sel holds five n x ndim int64
 * arrays one after the other: the chunks' grid coordinates, src_lo and src_hi (the part
 * of each chunk the box wants, chunk coordinates) and dst_lo and dst_hi (where that part
 * goes, box coordinates); full[i] is 1 when chunk i lies wholly inside the box.
 * jobs may be NULL; else (ndim <= LSIO_DEC_MAXDIM) each of its n jobs gets dst
 * (dst_origin + dst_lo . dst_strides), src_off (src_lo . chunk_strides), shape (src_hi -
 * src_lo; the unused entries 0), tag (i) and direct (full[i] && direct); its other
 * fields are not touched.  Returns n, or -1 (nothing written) when an argument is invalid:
 * ndim < 1, a chunk size < 1, lo < 0 or hi <= lo on an axis, n not the box's count of
 * chunks, or jobs with ndim > LSIO_DEC_MAXDIM. */
int64_t lsio_plan_box(int32_t ndim, const int64_t *lo, const int64_t *hi, const int64_t *chunks,
                      uint64_t n, int64_t *sel, uint8_t *full, lsio_decode_job *jobs,
                      const int64_t *dst_strides, const int64_t *chunk_strides,
                      uint64_t dst_origin, int32_t direct);

#endif
