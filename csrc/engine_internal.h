/*
 * engine_internal.h -- the engine's insides, shared by its source files.  Never seen by
 * cffi or by callers: lsio.h is the public header.
 *
 * Holds: the types of the file-op state machine (range_st, file_op, batch, step), the
 * completion queue, struct lsio_engine and the locking rule that guards it, the
 * constants every part uses, the small per-range / per-step helpers the hot paths inline
 * (lists, the ready list, direct slots, a range's buffer, transfer lengths, statx and
 * open arguments, the special-file verdict), and the prototypes of the internal
 * functions (lsio__*, LSIO_INTERNAL: hidden, not exported from the extension).  It owns
 * nothing at run time; the rules below say which part owns what.
 *
 * The engine's files:
 *   engine.c           the public API: lsio_engine_new/free, lsio_submit, lsio_reap,
 *                      release, cancel, stats, wake; the engine's lifetime; temp names
 *   engine_sched.c     the scheduler: queue -> active -> ready lists, file_step and
 *                      lsio__next_step, range resolution, pool reservation
 *   engine_complete.c  a step's result: lsio__step_done, completions (lsio__emit),
 *                      file failures, what a statx found
 *   engine_pread.c     the pread executor: worker threads, and lsio__run_sync (a step
 *                      as plain syscalls, also io_uring's S_FIXUP)
 *   engine_uring.c     the io_uring executor: ring setup, SQEs, CQEs, kernel cancels,
 *                      the ring thread, the ring's teardown.  Built with -DLSIO_NO_URING
 *                      (no liburing at build time: lsio_ray/_build.py) it has no ring and
 *                      lsio__uring_setup answers -ENOSYS, so every engine runs on pread
 *
 * Design (read this before the code):
 *
 *  - lsio_submit copies a batch (files, ranges, paths) into one `batch` allocation and
 *    appends its files to the FIFO `queue`.  A batch is freed when all its files are done.
 *  - `lsio__next_step` is the whole scheduler: it walks the active files (in FIFO order)
 *    and then the queue, and returns the next operation that may start now -- an open, a
 *    statx, a read of (the rest of) a range, a write, an fsync, a close, a rename --
 *    honouring three bounds: ops in flight <= depth, open files <= max_open, and pool
 *    buffers (a read whose buffer cannot be had stops ALL issuing until a release:
 *    that is the back-pressure the caller controls by holding buffers).
 *  - `lsio__step_done` takes the result of one operation (bytes or -errno) and advances
 *    the file: resubmits short reads/writes, reports EOF for one range, emits completions,
 *    closes, renames, and retires the file.
 *  - Executors: the io_uring backend turns steps into SQEs (user_data = the step) and is
 *    driven by the one thread inside lsio_reap; the pread backend runs `threads` workers
 *    that take a step, drop the lock, make the syscall, and take the lock again.
 *
 * Locking: `mu` guards every field below except the ring, which only the thread holding
 * `reap_mu` touches.  Nothing blocks while holding `mu`.
 *
 * Buffer ownership: a read's pool block is taken in lsio__next_step (before the kernel
 * sees it) and belongs to the kernel until its CQE is processed.  On success it passes to
 * the caller inside the completion; on error or cancellation lsio__step_done frees it.
 * A caller's block comes back through lsio_release.  lsio_engine_free cancels every file
 * op -- and, on io_uring, the reads and writes already in the kernel (uring_kcancel:
 * one parked on a pipe would never end by itself) -- then reaps until `inflight == 0`
 * (and every kernel cancel request has completed) before it frees anything, so no
 * block is ever freed while the kernel may still write into it; the arena itself lives
 * until the last caller block is released.  lsio_cancel_group cancels in the kernel the
 * same way.  Opens, closes, renames and unlinks are never cancelled: they end by
 * themselves, and no descriptor or temp file is lost.
 *
 * Special files (FIFOs, devices, /proc): see stx_verdict -- only regular files are
 * read, and they are checked before any read is issued.
 */
#ifndef LSIO_ENGINE_INTERNAL_H
#define LSIO_ENGINE_INTERNAL_H

#ifndef _GNU_SOURCE
#error "define _GNU_SOURCE before any #include (struct statx, O_DIRECT)"
#endif

#include "lsio.h"
#include "pool.h"

#include <errno.h>
#include <fcntl.h>
#ifndef LSIO_NO_URING
#include <liburing.h>
#endif
#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

/* internal functions: shared by the engine's files, not exported from the extension */
#define LSIO_INTERNAL __attribute__((visibility("hidden")))

#define MAX_IO_BYTES ((int64_t)1 << 30) /* one SQE / syscall moves at most 1 GiB */
#define PROBE_BYTES 4096                 /* read by a whole-file read of a file of size 0 */
#define EAGAIN_TRIES 3                   /* -EAGAIN answers a transfer is retried for */
#define DEFAULT_ALIGN 4096

/* user_data = object pointer | kind (objects are 8-aligned); S_WAKE has no object.
 * S_FINAL renames a finished WRITE_FILE's temp file, or unlinks it after a failure.
 * S_FIXUP (io_uring only, never in user_data: run by the thread driving the ring) gives
 * a WRITE_FILE's temp file the mode and owner of the file it replaces (see keep_mode). */
enum step_kind { S_WAKE = 0, S_OPEN, S_STATX, S_READ, S_WRITE, S_FSYNC, S_CLOSE, S_FINAL, S_FIXUP };

enum file_state {
    F_QUEUED = 0, /* not started */
    F_OPENING,    /* open (and statx) in flight */
    F_OPEN,       /* ranges being issued */
    F_FINISHING,  /* fsync / close / rename / unlink in flight or due */
    F_DONE
};

struct file_op;

typedef struct range_st {
    int64_t offset, length; /* as asked */
    uint64_t tag;
    const char *data;       /* writes */
    struct file_op *f;
    int64_t off, len;       /* resolved range */
    int64_t aoff, alen;     /* the IO actually issued (aligned superset for O_DIRECT) */
    int64_t done;           /* bytes of [aoff, aoff+alen) done */
    uint64_t buf_id;
    char *buf;
    uint8_t issued, finished, inflight, retry;
    uint8_t probe;  /* whole-file read of a file statx calls empty: is it really? (probe_done) */
    uint8_t eagain; /* -EAGAIN answers so far (io_uring retries them in io-wq: IOSQE_ASYNC) */
    uint8_t kcancel_sent; /* an IORING_OP_ASYNC_CANCEL for its in-flight op was issued */
} range_st;

typedef struct file_op {
    uint64_t group;
    const char *path;
    uint32_t kind, flags, nranges;
    range_st *ranges;
    struct batch *batch;
    struct file_op *next, *prev; /* queue or active list */
    struct file_op *rnext;       /* ready list (may have a step to issue) */
    int in_ready;
    int tmp_created;
    int final_rename;            /* the S_FINAL issued renames (1) or unlinks (0) the temp */
    int tmp_tries;               /* temp names found taken (EEXIST) so far */
    int keep_mode;               /* WRITE_FILE replaces a regular file: keep its mode/owner */
    int mode_fixed;              /* ... done (S_FIXUP, or in the pread open) */
    int fixup_err;               /* pread: the open's fixup failed (the temp file exists) */
    uint32_t tmode, tuid, tgid;  /* the replaced file's permission bits and owner */
    int state;
    int fd;                      /* fd, or direct slot when `fixed` */
    int fixed;
    int64_t size;                /* -1 unknown */
    uint32_t mem_align, off_align;
    uint32_t next_range;         /* first range not yet issued */
    uint32_t nfinished;          /* ranges with completion emitted or dropped */
    uint32_t inflight;           /* ops in flight */
    uint32_t nretry;             /* ranges waiting to resume a short transfer */
    int need_statx;              /* a path statx runs (and is checked) before the open */
    int want_size;               /* reads: the size is needed (ranges from the end, whole file) */
    int statx_pending, open_pending;
    int error;                   /* file-level error (first one wins) */
    int canceled;
    int fsynced, closed, renamed, unlinked;
    int chained;                 /* open was linked with the first read */
    struct range_st *err_range;  /* writes: the range whose FILE_ERROR is emitted at the end */
    char *tmp_path;
    struct statx stx;
} file_op;

typedef struct batch {
    uint32_t nfiles_left;
    file_op *files;
    range_st *ranges;
    char *paths;
} batch;

typedef struct cq_vec {
    lsio_completion *v;
    uint64_t head, len, cap; /* ring buffer */
} cq_vec;

struct lsio_engine {
    lsio_config cfg;
    int backend;
    uint32_t features;
    pthread_mutex_t mu;
    pthread_mutex_t reap_mu;
    pthread_cond_t work_cond; /* pread workers wait for steps */
    pthread_cond_t cq_cond;   /* pread reaper waits for completions */
    pool pool;
    /* queues */
    file_op *q_head, *q_tail;     /* not started */
    file_op *a_head, *a_tail;     /* active */
    file_op *r_head, *r_tail;     /* active files that may have a step to issue */
    uint64_t files_pending, ranges_pending;
    cq_vec cq;
    uint32_t inflight;
    uint32_t open_files;
    int starved;
    uint64_t starved_in_use;      /* pool bytes in use when issuing last stalled */
    int shutting_down;
    int freed;                    /* lsio_engine_free called; struct lives until buffers_out == 0 */
    uint64_t buffers_out;
    uint64_t ops_submitted, submit_calls, starved_count;
    /* effective queue depth (lsio_stats): see inflight_tick / inflight_done */
    uint64_t inflight_max, inflight_ns, inflight_t, completed;
    uint64_t inflight_hist[LSIO_HIST_BUCKETS];
    uint64_t enter_ns, wait_calls, cqes; /* io_uring_enter: time in it, waits, CQEs seen */
    uint64_t tmp_counter;         /* temp names made without getrandom */
    int kcancel;                  /* io_uring: cancelled files have ops in the kernel to cancel */
    uint32_t kcancels_inflight;   /* IORING_OP_ASYNC_CANCEL requests not completed yet */
    uint32_t dio_align;           /* O_DIRECT alignment learned from statx (0: not yet).  The
                                     largest seen: alignments are powers of two, so it fits
                                     every file system seen so far; a file system needing
                                     more fails its reads with EINVAL, named per range. */
    /* fixed slots */
    int32_t *slot_free;
    uint32_t nslot_free;
    /* io_uring (a build without liburing, LSIO_NO_URING, has no ring: see engine_uring.c) */
#ifndef LSIO_NO_URING
    struct io_uring ring;
#endif
    int ring_ok;
    int efd;
    uint64_t efd_buf;
    int wake_armed;
    int wake_req;                 /* lsio_wake was called: the (next) reap returns at once */
    /* io_uring ring thread (cfg.ring_thread) */
    pthread_t ring_tid;
    int ring_thread_running;
    /* pread */
    pthread_t *workers;
    uint32_t nworkers;
};

/* temp names of WRITE_FILE: see lsio__tmp_name (engine.c) */
#define TMP_TRIES 16
#define TMP_SUFFIX_MAX 48 /* ".lsio-tmp." + pid + "." + 16 hex digits + NUL, rounded up */

typedef struct step {
    int kind;
    file_op *f;
    range_st *r;
    int link_read; /* S_OPEN only: a linked read of r follows (io_uring) */
} step;

#define STX_MASK (STATX_TYPE | STATX_MODE | STATX_UID | STATX_GID | STATX_SIZE | STATX_DIOALIGN)

/* ------------------------------------------------------------------ small shared helpers
 * (static inline: the scheduler, the completion code and the executors each inline them,
 * as they did when the engine was one file) */

_Static_assert(sizeof(((lsio_stats *)0)->inflight_hist) == LSIO_HIST_BUCKETS * sizeof(uint64_t),
               "lsio_stats.inflight_hist must have LSIO_HIST_BUCKETS entries");

static inline uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Bring inflight_ns up to now.  Called with mu held just before e->inflight changes (and
 * by lsio_engine_stats), so inflight_ns integrates the count over time exactly. */
static inline void inflight_tick(lsio_engine *e) {
    uint64_t now = mono_ns();
    if (e->inflight_t && now > e->inflight_t) e->inflight_ns += (uint64_t)e->inflight * (now - e->inflight_t);
    e->inflight_t = now;
}

/* One op's completion is being processed (mu held; e->inflight still counts it): its
 * sample in the histogram, then the count goes down. */
static inline void inflight_done(lsio_engine *e) {
    inflight_tick(e);
    uint32_t v = e->inflight ? e->inflight : 1;
    int b = 31 - __builtin_clz(v);
    e->inflight_hist[b < LSIO_HIST_BUCKETS ? b : LSIO_HIST_BUCKETS - 1]++;
    e->completed++;
    e->inflight--;
}

static inline void range_free_buf(lsio_engine *e, range_st *r) {
    if (r->buf_id) {
        pool_free(&e->pool, r->buf_id);
        r->buf_id = 0;
        r->buf = NULL;
    }
}

static inline void range_finish(lsio_engine *e, range_st *r) {
    if (r->finished) return;
    r->finished = 1;
    r->f->nfinished++;
    e->ranges_pending--;
}

static inline void list_append(file_op **h, file_op **t, file_op *f) {
    f->next = NULL;
    f->prev = *t;
    if (*t) (*t)->next = f;
    else *h = f;
    *t = f;
}

static inline void list_unlink(file_op **h, file_op **t, file_op *f) {
    if (f->prev) f->prev->next = f->next;
    else *h = f->next;
    if (f->next) f->next->prev = f->prev;
    else *t = f->prev;
    f->next = f->prev = NULL;
}

static inline void ready_push(lsio_engine *e, file_op *f) {
    if (f->in_ready || f->state == F_DONE) return;
    f->in_ready = 1;
    f->rnext = NULL;
    if (e->r_tail) e->r_tail->rnext = f;
    else e->r_head = f;
    e->r_tail = f;
}

static inline void ready_pop(lsio_engine *e) {
    file_op *f = e->r_head;
    e->r_head = f->rnext;
    if (!e->r_head) e->r_tail = NULL;
    f->rnext = NULL;
    f->in_ready = 0;
}

static inline int alloc_slot(lsio_engine *e) {
    if (!e->nslot_free) return -1;
    return e->slot_free[--e->nslot_free];
}

static inline void free_slot(lsio_engine *e, int slot) { e->slot_free[e->nslot_free++] = slot; }

/* Bytes the next transfer of r moves: what is left of it, at most MAX_IO_BYTES. */
static inline int64_t io_len(const range_st *r, int is_read) {
    int64_t left = (is_read ? r->alen : r->len) - r->done;
    return left > MAX_IO_BYTES ? MAX_IO_BYTES : left;
}

/* a WRITE_FILE looks at the name it replaces, not through a symlink (keep_mode) */
static inline int stx_flags(const file_op *f) {
    return f->kind == LSIO_OP_WRITE_FILE ? AT_SYMLINK_NOFOLLOW : 0;
}

static inline mode_t create_mode(const file_op *f) { return f->keep_mode ? f->tmode : 0644; }

/* ---- special files
 *
 * Only regular files are read: a FIFO or a socket blocks a read (or its open) until a
 * writer comes -- for ever, and Engine.close() and interpreter exit with it -- and a
 * device may never end (/dev/zero) or have side effects.  So every READ file is checked
 * before anything is read from it: the pread backend opens with O_NONBLOCK (an open of
 * a FIFO returns at once) and checks the descriptor it got (statx AT_EMPTY_PATH, no
 * race); io_uring opens into direct descriptors that no statx can look at, so it checks
 * the path with an IORING_OP_STATX that completes before the open is issued (also
 * O_NONBLOCK).  Refused: directories (-EISDIR) and everything else not regular
 * (LSIO_E_NOT_REGULAR), one FILE_ERROR for the file, before any read.  WRITE_RANGES
 * refuses FIFOs, sockets (and directories) the same way but may write into a device
 * (e.g. /dev/full, a block device).
 * The one gap (io_uring): a regular file swapped for a FIFO between that statx and the
 * open, by someone who can write into its directory, can make that one read wait.  It
 * never blocks the engine: lsio_cancel_group and lsio_engine_free cancel such reads in
 * the kernel (IORING_OP_ASYNC_CANCEL, uring_kcancel).
 * A whole-file read of a regular file whose size is 0 (as statx says) reads one block
 * to find out (r->probe): really empty, it completes with 0 bytes; with data (/proc,
 * /sys files report size 0) it fails with LSIO_E_UNSIZED -- never a silent empty
 * result.  Such files read fine with explicit byte ranges (their size is not used). */
static inline int stx_verdict(const file_op *f) {
    mode_t t = f->stx.stx_mode & S_IFMT;
    if (!(f->stx.stx_mask & STATX_TYPE)) return LSIO_E_NOT_REGULAR; /* no type, no trust */
    if (t == S_IFREG) return 0;
    if (t == S_IFDIR) return -EISDIR;
    if (f->kind == LSIO_OP_WRITE_RANGES && (t == S_IFCHR || t == S_IFBLK)) return 0;
    return LSIO_E_NOT_REGULAR;
}

/* ------------------------------------------------------------------ internal functions */

/* engine_sched.c */
LSIO_INTERNAL int lsio__next_step(lsio_engine *e, step *s);
LSIO_INTERNAL void lsio__step_start(lsio_engine *e, const step *s);

/* engine_complete.c */
LSIO_INTERNAL void lsio__emit(lsio_engine *e, range_st *r, int err, uint32_t flags);
LSIO_INTERNAL void lsio__file_fail(lsio_engine *e, file_op *f, int err);
LSIO_INTERNAL void lsio__step_done(lsio_engine *e, int kind, file_op *f, range_st *r, int64_t res);

/* engine_pread.c */
LSIO_INTERNAL int lsio__open_flags(const file_op *f);
LSIO_INTERNAL int64_t lsio__run_sync(lsio_engine *e, const step *s);
LSIO_INTERNAL void *lsio__worker_main(void *arg);

/* engine_uring.c */
LSIO_INTERNAL int lsio__uring_setup(lsio_engine *e);
LSIO_INTERNAL unsigned lsio__uring_process(lsio_engine *e, unsigned max);
LSIO_INTERNAL void lsio__uring_drive(lsio_engine *e, uint32_t min_complete, int timeout_ms, int forever);
LSIO_INTERNAL void *lsio__ring_thread_main(void *arg);
LSIO_INTERNAL void lsio__uring_teardown(lsio_engine *e);
LSIO_INTERNAL void lsio__uring_drain_free(lsio_engine *e);

/* engine.c */
LSIO_INTERNAL void lsio__tmp_name(lsio_engine *e, file_op *f);

#endif
