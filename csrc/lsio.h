/*
 * lsio.h -- the C core of lsio_ray: one engine object per process (or per thread),
 * a batch API over io_uring with a pread/pwrite thread fallback.
 *
 * This header and decode.h (the decoder's API, included at the end) are the only ones
 * cffi sees (cdef'd verbatim by lsio_ray/_build.py, preprocessor lines dropped), so they
 * must stay plain C declarations: no macros with expressions, no other includes.
 *
 * Batch shape: the caller hands over an array of FILE ops, each owning a contiguous
 * run of RANGE requests, and later reaps an array of completions.  Nothing is done per
 * chunk on the Python side.
 *
 * Ownership rules (see also engine_internal.h):
 *  - lsio_submit copies files, ranges and paths into engine memory: the caller's arrays
 *    may be freed as soon as it returns.  WRITE data is NOT copied: the memory named by
 *    lsio_range.data must stay valid until that range's completion has been reaped (or
 *    the engine has been freed, which waits for the kernel).
 *  - Every successful READ completion owns one pool buffer (buf_id != 0) -- except that
 *    an empty range (length 0) may come without one (buf_id == 0; it may also have one,
 *    e.g. with O_DIRECT), so callers release the non-zero ids.  The caller must give
 *    each buffer back with lsio_release / lsio_release_many exactly once; until then
 *    the bytes at `data` are the caller's to read.  The engine never frees a buffer the
 *    kernel may still be writing into: lsio_engine_free first cancels every file op
 *    (io_uring: its reads and writes in the kernel too) and waits until no operation is
 *    in flight, and the pool arena is unmapped only when
 *    every buffer has been released (lsio_engine_free may therefore leave the arena
 *    alive; the last release unmaps it).
 *  - Error completions and write completions own no buffer (buf_id == 0).
 *
 * Special files: READ takes regular files only.  A FIFO, socket or device is refused
 * before anything is read from it (LSIO_E_NOT_REGULAR, a directory -EISDIR: one
 * FILE_ERROR), so no read waits for a pipe's writer; WRITE_RANGES refuses FIFOs and
 * sockets but writes into devices.  A whole-file read of a file that reports size 0 but
 * has data (/proc, /sys) fails with LSIO_E_UNSIZED instead of completing empty; explicit
 * byte ranges read such files.  (engine_internal.h, stx_verdict, has the details.)
 */
#ifndef LSIO_H
#define LSIO_H

#include <stdint.h>

/* backends */
#define LSIO_BACKEND_AUTO 0
#define LSIO_BACKEND_URING 1
#define LSIO_BACKEND_PREAD 2

/* file op kinds */
#define LSIO_OP_READ 0        /* read ranges of an existing file */
#define LSIO_OP_WRITE_FILE 1  /* write a whole file atomically: temp, write, [fsync], rename */
#define LSIO_OP_WRITE_RANGES 2 /* write ranges into an existing file */

/* file flags */
#define LSIO_F_DIRECT 1      /* O_DIRECT: aligned superset read, exact bytes handed back */
#define LSIO_F_FSYNC 2       /* writes: fsync before close / rename */
#define LSIO_F_CREATE 4      /* WRITE_RANGES: create the file if missing */

/* completion flags */
#define LSIO_C_FILE_ERROR 1  /* the whole file op failed (open, statx, rename...): one
                                completion stands for all of the op's ranges */

/* engine-specific error codes (negative, outside errno's range) */
#define LSIO_E_PAST_EOF -100001  /* range reaches past the end of the file */
#define LSIO_E_TOO_BIG -100002   /* range larger than the whole buffer pool */
#define LSIO_E_CANCELED -100003  /* group cancelled */
#define LSIO_E_NOT_REGULAR -100004 /* not a regular file: a FIFO, socket or device (reads),
                                      a FIFO or socket (WRITE_RANGES); refused before any
                                      read or write (one FILE_ERROR); directories: -EISDIR */
#define LSIO_E_UNSIZED -100005   /* whole-file read of a file that reports size 0 but has
                                    data (/proc, /sys): refused rather than read as empty */

/* feature bits, probed at start-up */
#define LSIO_FEAT_FIXED_FILES 1   /* direct descriptors: openat_direct/close_direct */
#define LSIO_FEAT_LINKED_OPEN 2   /* open -> read -> close chained with linked SQEs */
#define LSIO_FEAT_REG_BUFFERS 4   /* the pool arena is registered: read_fixed */
#define LSIO_FEAT_STATX 8         /* IORING_OP_STATX */
#define LSIO_FEAT_RENAME 16       /* IORING_OP_RENAMEAT/UNLINKAT */
#define LSIO_FEAT_DIOALIGN 32     /* statx reports STATX_DIOALIGN */

/* configuration bounds: lsio_engine_new refuses larger values with -EINVAL (before it
 * allocates anything); pool_bytes is also refused when larger than physical memory */
#define LSIO_MAX_DEPTH 4096
#define LSIO_MAX_THREADS 1024
#define LSIO_MAX_OPEN_FILES 65536
#define LSIO_MAX_POOL_BYTES 1099511627776 /* 1 TiB */

typedef struct lsio_engine lsio_engine;

typedef struct {
    int32_t backend;          /* LSIO_BACKEND_* */
    uint32_t depth;           /* ring entries / max ops in flight (uring), default 64 */
    uint32_t threads;         /* pread backend worker threads, default 4 */
    uint32_t max_open;        /* direct descriptor slots, default 1024 */
    uint64_t pool_bytes;      /* buffer pool bound (rounded up to a power of two) */
    int32_t register_buffers; /* -1 auto (off), 0 off, 1 on */
    int32_t fixed_files;      /* -1 auto (on if probed), 0 off, 1 on */
    int32_t link_open;        /* -1 auto (on if fixed files), 0 off, 1 on */
    int32_t ring_thread;      /* io_uring: 1 = a C thread of the engine keeps the ring full
                                 and lsio_reap only collects; 0 = the lsio_reap caller drives
                                 the ring (fewest context switches, but IO stops while the
                                 caller is away, e.g. waiting for the Python GIL) */
} lsio_config;

typedef struct {
    uint64_t group;       /* caller's group id (for cancel) */
    uint32_t path_off;    /* offset of the NUL-terminated path in the paths blob */
    uint32_t kind;        /* LSIO_OP_* */
    uint32_t flags;       /* LSIO_F_* */
    uint32_t nranges;     /* ranges owned by this file, consecutive in the ranges array */
} lsio_file;

typedef struct {
    int64_t offset;       /* >= 0: from the start; < 0: from the end (last -offset bytes) */
    int64_t length;       /* >= 0: bytes; -1: to the end of the file */
    uint64_t tag;         /* caller's id, echoed in the completion */
    const void *data;     /* writes: the bytes to write (length bytes); reads: NULL */
} lsio_range;

typedef struct {
    uint64_t tag;         /* the range's tag (for a FILE_ERROR: its first range's tag) */
    uint64_t group;       /* the file's group */
    uint64_t buf_id;      /* pool buffer to release, 0 if none */
    void *data;           /* first byte asked for (inside the pool buffer) */
    int64_t offset;       /* resolved file offset of the range */
    int64_t length;       /* bytes delivered (reads) or written (writes) */
    int64_t file_size;    /* file size when known, else -1 */
    int32_t error;        /* 0, -errno, or LSIO_E_* */
    uint32_t flags;       /* LSIO_C_* */
} lsio_completion;

typedef struct {
    uint64_t pool_bytes;      /* bound */
    uint64_t pool_in_use;     /* bytes held by unreleased buffers + in-flight reads */
    uint64_t pool_peak;       /* high-water mark of pool_in_use */
    uint64_t buffers_out;     /* buffers handed to the caller, not yet released */
    uint64_t ops_submitted;   /* kernel ops (or syscalls) issued */
    uint64_t submit_calls;    /* io_uring_submit calls (or 0) */
    uint64_t files_pending;   /* file ops accepted but not finished */
    uint64_t ranges_pending;  /* ranges without a completion yet */
    uint64_t completions_ready; /* completions waiting to be reaped */
    uint64_t starved;         /* times issuing stopped because the pool was empty */
    uint64_t open_files;      /* file ops holding a descriptor or slot */
    uint64_t inflight;        /* ops in the kernel (or in a worker's syscall) */
    /* How full the engine keeps the device (effective queue depth; compare with fio's
     * "IO depths" and iostat's aqu-sz).  All counts since the engine started. */
    uint64_t inflight_max;    /* most ops in flight at once (never above depth) */
    uint64_t inflight_ns;     /* ops in flight integrated over time (op x ns; wraps after
                                 18 years at depth 32): the mean in flight between two
                                 stats calls is the difference of inflight_ns over that
                                 of clock_ns */
    uint64_t clock_ns;        /* CLOCK_MONOTONIC (ns) when these stats were taken */
    uint64_t completed;       /* ops finished (= the sum of inflight_hist) */
    uint64_t inflight_hist[16]; /* LSIO_HIST_BUCKETS: completed ops by the ops in flight
                                   (itself included) when each one's completion was
                                   processed; [i] counts 2^i .. 2^(i+1) - 1, [15] also more */
    /* io_uring's syscalls (0 on pread): submit_calls is their number */
    uint64_t enter_ns;        /* ns spent in io_uring_enter (submitting, and waiting) */
    uint64_t wait_calls;      /* io_uring_enter calls that waited for a completion */
    uint64_t cqes;            /* CQEs processed (completions per call: cqes / submit_calls) */
} lsio_stats;

/* buckets of lsio_stats.inflight_hist (its size is spelled out there for cffi) */
#define LSIO_HIST_BUCKETS 16

/* Fill cfg with defaults. */
void lsio_config_default(lsio_config *cfg);

/* Create an engine.  Returns NULL and sets *err to -errno on failure.  With
 * LSIO_BACKEND_AUTO, a refused io_uring_setup (ENOSYS, EPERM, ...) selects pread.
 * Zero depth / threads / max_open / pool_bytes take the defaults; values above the
 * LSIO_MAX_* bounds (pool_bytes: or above physical memory), an unknown backend and
 * switches other than -1, 0, 1 are refused with -EINVAL before anything is allocated. */
lsio_engine *lsio_engine_new(const lsio_config *cfg, int *err);

/* Cancel everything, wait for the kernel and the workers, free the engine.  Buffers the
 * caller still holds stay valid; the arena is unmapped at their last release. */
void lsio_engine_free(lsio_engine *e);

/* 1 when this build has the io_uring backend, 0 when it was built without liburing
 * (-DLSIO_NO_URING): then LSIO_BACKEND_AUTO always takes pread and LSIO_BACKEND_URING
 * fails with -ENOSYS. */
int lsio_have_uring(void);

int lsio_engine_backend(const lsio_engine *e);
uint32_t lsio_engine_features(const lsio_engine *e);
void lsio_engine_stats(lsio_engine *e, lsio_stats *out);

/* Queue a batch.  Files are processed in submission order (several at once).
 * Returns 0 or -errno (-EINVAL for malformed input; nothing is queued then). */
int lsio_submit(lsio_engine *e, const lsio_file *files, uint32_t nfiles,
                const lsio_range *ranges, uint64_t nranges,
                const char *paths, uint64_t paths_len);

/* Drive IO and collect completions: waits until at least min_complete are ready (or
 * nothing is pending, or timeout_ms passes; -1 waits forever), then copies up to max
 * into out.  Returns the number copied, or -errno.  Only one thread may reap at a time
 * (others get -EBUSY). */
int lsio_reap(lsio_engine *e, lsio_completion *out, uint32_t max,
              uint32_t min_complete, int timeout_ms);

/* Give a completion's buffer back to the pool.  Thread-safe. Returns 0 or -EINVAL. */
int lsio_release(lsio_engine *e, uint64_t buf_id);
int lsio_release_many(lsio_engine *e, const uint64_t *buf_ids, uint64_t n);

/* Cancel a group: every range of it without a completion yet -- queued or already in
 * flight -- is dropped without a completion (the engine frees the buffers of in-flight
 * reads when the kernel is done with them; io_uring cancels its reads and writes in the
 * kernel, on the next drive of the ring), and the group's completions that are ready
 * but not reaped are discarded, their buffers going back to the pool.  Completions
 * already reaped are untouched: the caller still releases those.  Returns the number of
 * ranges dropped that had no completion yet (discarded ready completions are not
 * counted).  Thread-safe. */
int64_t lsio_cancel_group(lsio_engine *e, uint64_t group);

/* How many file ops of a group the engine still holds: queued, in flight, or finishing
 * (closing, unlinking a temp file), cancelled ones included.  0 means the engine has
 * nothing of the group's left: no kernel op, no descriptor, no temp file, and no
 * pointer to its write data (which the caller may free then).  A cancelled group gets
 * there only while the ring is driven (lsio_reap, or the ring thread).  Thread-safe. */
int64_t lsio_group_pending(lsio_engine *e, uint64_t group);

/* Wake a thread blocked in lsio_reap (it returns what it has, possibly nothing).  If no
 * thread is in lsio_reap, the next call returns at once instead (so a wake-up is never
 * lost).  Thread-safe. */
void lsio_wake(lsio_engine *e);

const char *lsio_strerror(int err);

/* The chunk decoder (decode.c) has its own header, part of this public API: */
#include "decode.h"

#endif
