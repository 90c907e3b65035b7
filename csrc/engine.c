/*
 * engine.c -- the lsio engine: one state machine per file op, two executors.
 *
 * Design (read this before the code):
 *
 *  - lsio_submit copies a batch (files, ranges, paths) into one `batch` allocation and
 *    appends its files to the FIFO `queue`.  A batch is freed when all its files are done.
 *  - `next_step` is the whole scheduler: it walks the active files (in FIFO order) and
 *    then the queue, and returns the next operation that may start now -- an open, a
 *    statx, a read of (the rest of) a range, a write, an fsync, a close, a rename --
 *    honouring three bounds: ops in flight <= depth, open files <= max_open, and pool
 *    buffers (a read whose buffer cannot be had stops ALL issuing until a release:
 *    that is the back-pressure the caller controls by holding buffers).
 *  - `step_done` takes the result of one operation (bytes or -errno) and advances the
 *    file: resubmits short reads/writes, reports EOF for one range, emits completions,
 *    closes, renames, and retires the file.
 *  - Executors: the io_uring backend turns steps into SQEs (user_data = the step) and is
 *    driven by the one thread inside lsio_reap; the pread backend runs `threads` workers
 *    that take a step, drop the lock, make the syscall, and take the lock again.
 *
 * Locking: `mu` guards every field below except the ring, which only the thread holding
 * `reap_mu` touches.  Nothing blocks while holding `mu`.
 *
 * Buffer ownership: a read's pool block is taken in next_step (before the kernel sees
 * it) and belongs to the kernel until its CQE is processed.  On success it passes to
 * the caller inside the completion; on error or cancellation step_done frees it.  A
 * caller's block comes back through lsio_release.  lsio_engine_free cancels every file
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
#define _GNU_SOURCE
#include "lsio.h"
#include "pool.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_IO_BYTES ((int64_t)1 << 30) /* one SQE / syscall moves at most 1 GiB */
#define PROBE_BYTES 4096                 /* read by a whole-file read of a file of size 0 */
#define EAGAIN_TRIES 3                   /* -EAGAIN answers a transfer is retried for */
#define UD_CANCEL 8 /* user_data of IORING_OP_ASYNC_CANCEL requests (kind S_WAKE, no object) */
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
    /* io_uring */
    struct io_uring ring;
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

/* Temp names: "<path>.lsio-tmp.<pid>.<16 hex digits>", 64 bits from getrandom, created with
 * O_CREAT | O_EXCL, which refuses any existing name (symlinks included, never followed).
 * A name that exists already (EEXIST) is replaced by a fresh one, TMP_TRIES times in
 * all, then the write fails with -EEXIST.  (The old "<path>.lsio-tmp.<pid>.<n>" could be
 * guessed and pre-planted to make every put fail.)  Without getrandom (ENOSYS before
 * Linux 3.17, or no entropy yet with GRND_NONBLOCK) the bits come from the clock, the
 * pid and a counter, mixed: still distinct names, and the retries still apply.  Other
 * code finds stray temp files by the ".lsio-tmp." marker and tells a live writer's from a
 * dead one's by the pid after it (lsio_ray/paths.py): keep both. */
#define TMP_TRIES 16
#define TMP_SUFFIX_MAX 48 /* ".lsio-tmp." + pid + "." + 16 hex digits + NUL, rounded up */

static uint64_t mix64(uint64_t x) { /* splitmix64's finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Called with mu held (tmp_counter). */
static void tmp_name(lsio_engine *e, file_op *f) {
    uint64_t v;
    if (getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t)sizeof v) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        v = mix64(((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
                  mix64(((uint64_t)getpid() << 32) ^ ++e->tmp_counter));
    }
    snprintf(f->tmp_path, strlen(f->path) + TMP_SUFFIX_MAX, "%s.lsio-tmp.%d.%016llx", f->path,
             (int)getpid(), (unsigned long long)v);
}

static void *step_ptr(int kind, void *obj) { return (void *)((uintptr_t)obj | (uintptr_t)kind); }

/* ------------------------------------------------------------------ completions */

static int cq_push(lsio_engine *e, const lsio_completion *c) {
    cq_vec *q = &e->cq;
    if (q->len == q->cap) {
        uint64_t ncap = q->cap ? q->cap * 2 : 1024;
        lsio_completion *nv = malloc(ncap * sizeof *nv);
        if (!nv) return -ENOMEM;
        for (uint64_t i = 0; i < q->len; i++) nv[i] = q->v[(q->head + i) % q->cap];
        free(q->v);
        q->v = nv;
        q->cap = ncap;
        q->head = 0;
    }
    q->v[(q->head + q->len) % q->cap] = *c;
    q->len++;
    return 0;
}

static void emit(lsio_engine *e, range_st *r, int err, uint32_t flags) {
    file_op *f = r->f;
    lsio_completion c;
    memset(&c, 0, sizeof c);
    c.tag = r->tag;
    c.group = f->group;
    c.offset = r->off;
    c.file_size = f->size;
    c.error = err;
    c.flags = flags;
    if (!err && f->kind == LSIO_OP_READ) {
        c.length = r->len;
        if (r->buf_id) {
            c.buf_id = r->buf_id;
            c.data = r->buf + (r->off - r->aoff);
            r->buf_id = 0; /* ownership passes to the caller */
            r->buf = NULL;
            e->buffers_out++;
        }
    } else if (!err) {
        c.length = r->len;
    } else {
        c.offset = r->off >= 0 ? r->off : r->offset;
        c.length = r->len >= 0 ? r->len : r->length;
    }
    while (cq_push(e, &c) != 0) {
        /* Out of memory for a completion record: nothing sane to do but wait. */
        pthread_mutex_unlock(&e->mu);
        usleep(1000);
        pthread_mutex_lock(&e->mu);
    }
    pthread_cond_broadcast(&e->cq_cond);
}

static void range_free_buf(lsio_engine *e, range_st *r) {
    if (r->buf_id) {
        pool_free(&e->pool, r->buf_id);
        r->buf_id = 0;
        r->buf = NULL;
    }
}

static void range_finish(lsio_engine *e, range_st *r) {
    if (r->finished) return;
    r->finished = 1;
    r->f->nfinished++;
    e->ranges_pending--;
}

/* A file-level failure: one completion stands for every unfinished range. */
static void file_fail(lsio_engine *e, file_op *f, int err) {
    if (f->error) return;
    f->error = err;
    range_st *first = NULL;
    for (uint32_t i = 0; i < f->nranges; i++) {
        range_st *r = &f->ranges[i];
        if (r->finished) continue;
        if (!first) first = r;
        if (!r->inflight) range_free_buf(e, r);
    }
    /* A read's error goes out now.  A write's waits until the file is in its final state
     * (closed, temp file unlinked): the caller must never see the error and then a
     * leftover temp file. */
    if (first && !f->canceled) {
        if (f->kind == LSIO_OP_READ) emit(e, first, err, LSIO_C_FILE_ERROR);
        else f->err_range = first;
    }
    for (uint32_t i = 0; i < f->nranges; i++) range_finish(e, &f->ranges[i]);
    f->next_range = f->nranges;
}

/* ------------------------------------------------------------------ lists */

static void list_append(file_op **h, file_op **t, file_op *f) {
    f->next = NULL;
    f->prev = *t;
    if (*t) (*t)->next = f;
    else *h = f;
    *t = f;
}

static void list_unlink(file_op **h, file_op **t, file_op *f) {
    if (f->prev) f->prev->next = f->next;
    else *h = f->next;
    if (f->next) f->next->prev = f->prev;
    else *t = f->prev;
    f->next = f->prev = NULL;
}

static void ready_pop(lsio_engine *e);

/* Called only from file_step on the head of the ready list. */
static void file_retire(lsio_engine *e, file_op *f) {
    if (e->r_head == f) ready_pop(e);
    free(f->tmp_path);
    f->tmp_path = NULL;
    f->state = F_DONE;
    list_unlink(&e->a_head, &e->a_tail, f);
    e->files_pending--;
    pthread_cond_broadcast(&e->cq_cond); /* lsio_reap / lsio_engine_free may wait for this */
    batch *b = f->batch;
    if (--b->nfiles_left == 0) {
        free(b->files);
        free(b->ranges);
        free(b->paths);
        free(b);
    }
}

/* ------------------------------------------------------------------ scheduling */

typedef struct step {
    int kind;
    file_op *f;
    range_st *r;
    int link_read; /* S_OPEN only: a linked read of r follows (io_uring) */
} step;

/* Does file f need a statx before its reads?  For its size (a range relative to the end,
 * or to the end) -- or, with O_DIRECT, for the alignment, until the engine has learned it
 * from a first direct file (see dio_align). */
static int needs_size(const lsio_engine *e, const file_op *f) {
    if ((f->flags & LSIO_F_DIRECT) && !e->dio_align) return 1;
    for (uint32_t i = 0; i < f->nranges; i++)
        if (f->ranges[i].offset < 0 || f->ranges[i].length < 0) return 1;
    return 0;
}

/* Resolve a read range against the file size (when known) and alignment.
 * Returns 0, or an error to report for this range alone. */
static int range_resolve(file_op *f, range_st *r) {
    int64_t off = r->offset, len = r->length;
    if (off < 0) {
        if (f->size < 0) return -EINVAL;
        off = f->size + off;
        if (off < 0) return LSIO_E_PAST_EOF;
    }
    if (len < 0) {
        if (f->size < 0) return -EINVAL;
        len = f->size - off;
        if (len < 0) return LSIO_E_PAST_EOF;
    }
    /* off + len is computed below and later: for a range whose end does not fit in int64
     * that was signed overflow (UB; a wrapped sum can slip past the EOF check).  Such an
     * end is past any EOF (reads); the kernel refuses such writes (-EINVAL, as pwrite). */
    if (len > INT64_MAX - off) return f->kind == LSIO_OP_READ ? LSIO_E_PAST_EOF : -EINVAL;
    r->off = off;
    r->len = len;
    if (f->kind == LSIO_OP_READ && f->size >= 0 && off + len > f->size) return LSIO_E_PAST_EOF;
    /* to the end of a file statx calls empty: read a block to see (see probe_done) */
    r->probe = f->kind == LSIO_OP_READ && r->length < 0 && f->size == 0;
    if (f->kind == LSIO_OP_READ && (f->flags & LSIO_F_DIRECT)) {
        int64_t a = f->off_align > f->mem_align ? f->off_align : f->mem_align;
        if (a <= 0) a = DEFAULT_ALIGN;
        r->aoff = off / a * a;
        if (off + len > INT64_MAX - a) return LSIO_E_PAST_EOF; /* no aligned end fits */
        int64_t end = (off + len + a - 1) / a * a;
        r->alen = end - r->aoff;
        if (r->alen == 0) r->alen = a; /* empty range: still one aligned block, for simplicity */
    } else {
        r->aoff = off;
        r->alen = len;
    }
    if (r->probe && r->alen < PROBE_BYTES) r->alen = PROBE_BYTES;
    return 0;
}

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
static int stx_verdict(const file_op *f) {
    mode_t t = f->stx.stx_mode & S_IFMT;
    if (!(f->stx.stx_mask & STATX_TYPE)) return LSIO_E_NOT_REGULAR; /* no type, no trust */
    if (t == S_IFREG) return 0;
    if (t == S_IFDIR) return -EISDIR;
    if (f->kind == LSIO_OP_WRITE_RANGES && (t == S_IFCHR || t == S_IFBLK)) return 0;
    return LSIO_E_NOT_REGULAR;
}

#define MAX_DIO_ALIGN ((uint32_t)1 << 20) /* larger O_DIRECT alignments are refused */

/* A checked file's statx (f->stx): its size, when needed, and its O_DIRECT alignment. */
static void file_fail(lsio_engine *e, file_op *f, int err);
static void stx_apply(lsio_engine *e, file_op *f) {
    if (f->kind != LSIO_OP_READ) return;
    if (f->want_size) {
        if (f->stx.stx_size > (uint64_t)INT64_MAX) {
            file_fail(e, f, -EFBIG);
            return;
        }
        f->size = (int64_t)f->stx.stx_size;
    }
    if (!(f->flags & LSIO_F_DIRECT)) return;
    f->mem_align = f->off_align = 0;
    if (f->stx.stx_mask & STATX_DIOALIGN) {
        /* glibc 2.36's struct statx predates the fields: read them at the kernel's
         * offsets (stx_dio_mem_align at 0x98, stx_dio_offset_align at 0x9c) */
        uint32_t v[2];
        _Static_assert(sizeof(struct statx) >= 0x98 + sizeof v, "struct statx too small");
        memcpy(v, (const char *)&f->stx + 0x98, sizeof v);
        f->mem_align = v[0];
        f->off_align = v[1];
        if (f->off_align == 0) { /* the file system does not do O_DIRECT */
            file_fail(e, f, -EINVAL);
            return;
        }
    }
    /* The alignment sizes the buffer and the aligned range (range_resolve): only powers
     * of two up to MAX_DIO_ALIGN, whatever a file system reports. */
    uint32_t a = f->off_align > f->mem_align ? f->off_align : f->mem_align;
    if (a > MAX_DIO_ALIGN || (a & (a - 1))) {
        file_fail(e, f, -EINVAL);
        return;
    }
    if (a > e->dio_align) e->dio_align = a;
}

static int alloc_slot(lsio_engine *e) {
    if (!e->nslot_free) return -1;
    return e->slot_free[--e->nslot_free];
}

static void free_slot(lsio_engine *e, int slot) { e->slot_free[e->nslot_free++] = slot; }

/* Try to give range r a buffer. Returns 1 (ready), 0 (pool empty: stall), or an error. */
static int range_get_buffer(lsio_engine *e, range_st *r) {
    uint64_t need = (uint64_t)(r->alen ? r->alen : 1);
    /* the kernel writes up to alen bytes into it: a buffer kept from before must hold them */
    if (r->buf_id && pool_block_bytes(&e->pool, r->buf_id) >= need) return 1;
    range_free_buf(e, r);
    int o = pool_order_for(&e->pool, need);
    if (o < 0) return LSIO_E_TOO_BIG;
    uint64_t id = pool_alloc(&e->pool, o);
    if (!id) {
        if (!e->starved) e->starved_count++;
        e->starved = 1;
        e->starved_in_use = e->pool.in_use;
        return 0;
    }
    r->buf_id = id;
    r->buf = pool_ptr(&e->pool, id);
    return 1;
}

static void ready_push(lsio_engine *e, file_op *f) {
    if (f->in_ready || f->state == F_DONE) return;
    f->in_ready = 1;
    f->rnext = NULL;
    if (e->r_tail) e->r_tail->rnext = f;
    else e->r_head = f;
    e->r_tail = f;
}

static void ready_pop(lsio_engine *e) {
    file_op *f = e->r_head;
    e->r_head = f->rnext;
    if (!e->r_head) e->r_tail = NULL;
    f->rnext = NULL;
    f->in_ready = 0;
}

#define STALL 2
#define RETIRED 3

static void fill_read_step(step *s, file_op *f, range_st *r) {
    s->kind = f->kind == LSIO_OP_READ ? S_READ : S_WRITE;
    s->f = f;
    s->r = r;
    s->link_read = 0;
}

/* Is every range issued and done, with nothing in flight? */
static int ranges_complete(const file_op *f) {
    return f->next_range >= f->nranges && f->nretry == 0 && f->inflight == 0;
}

/* The next step of file f, if any: 1 (filled *s), 0 (nothing now), STALL (pool empty). */
static int file_step(lsio_engine *e, file_op *f, step *s) {
    memset(s, 0, sizeof *s);
    s->f = f;
    if (f->state == F_QUEUED) {
        if (f->canceled) {
            for (uint32_t i = 0; i < f->nranges; i++) range_finish(e, &f->ranges[i]);
            f->next_range = f->nranges;
            f->state = F_FINISHING;
        } else {
            f->state = F_OPENING;
            f->want_size = (f->kind == LSIO_OP_READ) && needs_size(e, f);
            /* The regular-file check (see stx_verdict): io_uring opens into direct
             * descriptors, which no statx can look at, so the path is checked BEFORE it
             * is opened; the pread backend checks the descriptor it opened (race-free).
             * A WRITE_FILE's statx looks at the file it will replace (keep_mode). */
            f->need_statx = e->backend == LSIO_BACKEND_URING || f->kind == LSIO_OP_WRITE_FILE;
            if ((f->flags & LSIO_F_DIRECT) && !f->want_size) f->mem_align = f->off_align = e->dio_align;
            if (f->need_statx) {
                f->statx_pending = 1;
                s->kind = S_STATX; /* the open waits for it */
                return 1;
            }
        }
    }
    if (f->state == F_OPENING) {
        if (f->statx_pending) return 0;
        if (!f->open_pending && f->fd < 0 && !f->error && !f->canceled) {
            if (f->fixed) {
                int slot = alloc_slot(e);
                if (slot < 0) return 0; /* cannot happen: open_files <= max_open */
                f->fd = slot;
            }
            f->open_pending = 1;
            s->kind = S_OPEN;
            /* Chain the first read behind the open: its data comes back one round trip
             * after the submit instead of two.  (The statx, when one was needed, has
             * landed: the size is known and the file was found regular.) */
            range_st *r = f->nranges > 0 ? &f->ranges[0] : NULL;
            if (f->fixed && (e->features & LSIO_FEAT_LINKED_OPEN) && f->kind == LSIO_OP_READ &&
                r && !r->finished && range_resolve(f, r) == 0 && range_get_buffer(e, r) == 1) {
                s->r = r;
                s->link_read = 1;
                r->issued = 1;
                f->next_range = 1;
                f->chained = 1;
            }
            return 1;
        }
        if (f->open_pending) return 0;
        if (!f->error) f->state = F_OPEN;
        else f->state = F_FINISHING;
    }
    if (f->state == F_OPEN) {
        if (f->error || f->canceled) {
            for (uint32_t i = f->next_range; i < f->nranges; i++) {
                range_free_buf(e, &f->ranges[i]);
                range_finish(e, &f->ranges[i]);
            }
            f->next_range = f->nranges;
        }
        /* Resume short transfers first (they already hold their buffer). */
        if (f->nretry) {
            for (uint32_t i = 0; i < f->next_range; i++) {
                range_st *r = &f->ranges[i];
                if (r->retry && !r->inflight) {
                    r->retry = 0;
                    f->nretry--;
                    if (f->error || f->canceled) {
                        range_free_buf(e, r);
                        range_finish(e, r);
                        continue;
                    }
                    if (f->kind == LSIO_OP_READ && !r->buf_id) {
                        int got = range_get_buffer(e, r);
                        if (got == 0) {
                            r->retry = 1;
                            f->nretry++;
                            return STALL;
                        }
                        if (got < 0) { /* e.g. the whole file is larger than the pool */
                            emit(e, r, got, 0);
                            range_finish(e, r);
                            continue;
                        }
                    }
                    fill_read_step(s, f, r);
                    return 1;
                }
            }
        }
        while (f->next_range < f->nranges) {
            range_st *r = &f->ranges[f->next_range];
            if (r->finished) {
                f->next_range++;
                continue;
            }
            int err = range_resolve(f, r);
            if (!err && f->kind == LSIO_OP_READ && r->alen > 0) {
                int got = range_get_buffer(e, r);
                if (got == 0) return STALL;
                if (got < 0) err = got;
            }
            f->next_range++;
            if (err) {
                if (f->kind == LSIO_OP_WRITE_FILE) {
                    file_fail(e, f, err);
                    continue;
                }
                if (!f->canceled) emit(e, r, err, 0);
                range_finish(e, r);
                continue;
            }
            r->issued = 1;
            if (r->alen == 0) {
                /* empty range: nothing to transfer (write completions come at the end) */
                if (f->kind == LSIO_OP_READ) {
                    emit(e, r, 0, 0);
                    range_finish(e, r);
                }
                continue;
            }
            fill_read_step(s, f, r);
            return 1;
        }
        if (!ranges_complete(f)) return 0;
        f->state = F_FINISHING;
    }
    if (f->state == F_FINISHING) {
        if (f->inflight) return 0;
        int ok = !f->error && !f->canceled;
        if (f->fd >= 0 && !f->closed) {
            if (ok && f->keep_mode && !f->mode_fixed) { /* before the fsync, which covers it */
                s->kind = S_FIXUP;
                return 1;
            }
            if (ok && (f->flags & LSIO_F_FSYNC) && f->kind != LSIO_OP_READ && !f->fsynced) {
                s->kind = S_FSYNC;
                return 1;
            }
            s->kind = S_CLOSE;
            return 1;
        }
        if (f->kind == LSIO_OP_WRITE_FILE && f->tmp_created) {
            /* Decided here, under mu, and remembered: a cancel may arrive while the
             * S_FINAL is in flight, and step_done must know which one ran. */
            if (ok && !f->renamed) {
                f->final_rename = 1;
                s->kind = S_FINAL;
                return 1;
            }
            if (!ok && !f->unlinked) {
                f->final_rename = 0;
                s->kind = S_FINAL;
                return 1;
            }
        }
        if (f->kind != LSIO_OP_READ && ok) {
            for (uint32_t i = 0; i < f->nranges; i++) {
                range_st *r = &f->ranges[i];
                if (!r->finished) {
                    emit(e, r, 0, 0);
                    range_finish(e, r);
                }
            }
        }
        if (f->err_range && !f->canceled) emit(e, f->err_range, f->error, LSIO_C_FILE_ERROR);
        for (uint32_t i = 0; i < f->nranges; i++) range_finish(e, &f->ranges[i]);
        if (f->fixed && f->fd >= 0) free_slot(e, f->fd);
        f->fd = -1;
        e->open_files--;
        file_retire(e, f);
        return RETIRED;
    }
    return 0;
}

/* The scheduler: the next step to start, or 0.  Called with mu held. */
static int next_step(lsio_engine *e, step *s) {
    e->starved = 0;
    if (e->inflight >= e->cfg.depth) return 0;
    for (;;) {
        while (e->r_head) {
            file_op *f = e->r_head;
            int rc = file_step(e, f, s);
            if (rc == 1) return 1;
            if (rc == STALL) return 0;
            if (rc != RETIRED) ready_pop(e);
        }
        if (!e->q_head || e->open_files >= e->cfg.max_open) return 0;
        file_op *f = e->q_head;
        list_unlink(&e->q_head, &e->q_tail, f);
        list_append(&e->a_head, &e->a_tail, f);
        e->open_files++;
        ready_push(e, f);
    }
}

/* ------------------------------------------------------------------ completion of a step */

static uint32_t file_align(const file_op *f) {
    uint32_t a = f->off_align > f->mem_align ? f->off_align : f->mem_align;
    return a ? a : DEFAULT_ALIGN;
}

/* The size of a file whose read just hit EOF at `pos` after `done` bytes of the range. */
static void learn_size_at_eof(file_op *f, int64_t pos, int64_t done) {
    if (f->size >= 0) return;
    if (done > 0) {
        f->size = pos;
        return;
    }
    struct stat st; /* rare error path: ask synchronously */
    if (stat(f->path, &st) == 0) f->size = st.st_size;
}

/* The block read by a whole-file read of a file of size 0 (r->probe) has landed. */
static void probe_done(lsio_engine *e, range_st *r, int64_t res) {
    range_free_buf(e, r); /* nothing to hand out either way */
    r->probe = 0;
    emit(e, r, res > 0 ? LSIO_E_UNSIZED : 0, 0);
    range_finish(e, r);
}

static void step_start(lsio_engine *e, const step *s) {
    e->inflight++;
    s->f->inflight++;
    e->ops_submitted++;
    if (s->r) {
        s->r->inflight = 1;
        if (s->kind == S_OPEN) { /* the linked read is a second op */
            e->inflight++;
            s->f->inflight++;
            e->ops_submitted++;
        }
    }
}

/* Bytes the next transfer of r moves: what is left of it, at most MAX_IO_BYTES. */
static int64_t io_len(const range_st *r, int is_read) {
    int64_t left = (is_read ? r->alen : r->len) - r->done;
    return left > MAX_IO_BYTES ? MAX_IO_BYTES : left;
}

static void step_done(lsio_engine *e, int kind, file_op *f, range_st *r, int64_t res) {
    e->inflight--;
    f->inflight--;
    switch (kind) {
    case S_STATX:
        f->statx_pending = 0;
        if (f->kind == LSIO_OP_WRITE_FILE) {
            /* the file to replace: none (or not to be looked at) is no error here -- the
             * open of the temp file reports a missing directory or a permission */
            if (res == 0 && (f->stx.stx_mask & (STATX_TYPE | STATX_MODE | STATX_UID | STATX_GID)) ==
                                (STATX_TYPE | STATX_MODE | STATX_UID | STATX_GID) &&
                S_ISREG(f->stx.stx_mode)) {
                f->keep_mode = 1;
                f->tmode = f->stx.stx_mode & 0777;
                f->tuid = f->stx.stx_uid;
                f->tgid = f->stx.stx_gid;
            }
            break;
        }
        if (res == -ENOENT && f->kind == LSIO_OP_WRITE_RANGES && (f->flags & LSIO_F_CREATE))
            break; /* the open creates it */
        if (res < 0) file_fail(e, f, (int)res);
        else if ((res = stx_verdict(f)) != 0) file_fail(e, f, (int)res);
        else stx_apply(e, f);
        break;
    case S_OPEN:
        f->open_pending = 0;
        if (res < 0) {
            if (f->fixed) free_slot(e, f->fd);
            f->fd = -1;
            if (res == -EEXIST && f->kind == LSIO_OP_WRITE_FILE && !f->canceled &&
                ++f->tmp_tries < TMP_TRIES) {
                tmp_name(e, f); /* the name was taken: file_step opens the next one */
                break;
            }
            file_fail(e, f, (int)res);
        } else {
            if (!f->fixed) f->fd = (int)res;
            if (f->kind == LSIO_OP_WRITE_FILE) {
                f->tmp_created = 1;
                if (e->backend == LSIO_BACKEND_PREAD) f->mode_fixed = 1; /* in run_sync */
                if (f->fixup_err) file_fail(e, f, f->fixup_err); /* the temp file goes */
            }
            /* pread: run_sync checked the descriptor it opened (f->stx) */
            else if (!f->need_statx) stx_apply(e, f);
        }
        break;
    case S_READ:
    case S_WRITE: {
        r->inflight = 0;
        if (res == -ECANCELED && f->chained && (f->open_pending || f->error)) {
            /* a linked read cancelled by its failed open: the open reports the cause */
            if (f->error) {
                range_free_buf(e, r);
                range_finish(e, r);
            } else {
                r->retry = 1;
                f->nretry++;
            }
            break;
        }
        if (f->error || f->canceled) {
            range_free_buf(e, r);
            range_finish(e, r);
            break;
        }
        if (res == -EINTR || (res == -EAGAIN && ++r->eagain <= EAGAIN_TRIES)) {
            r->retry = 1; /* -EAGAIN: io_uring reissues it in io-wq (IOSQE_ASYNC) */
            f->nretry++;
            break;
        }
        /* Sizes are checked before they are used: a transfer never moves more than it
         * asked for (io_len), and `done` may only count what landed in the buffer (or
         * left the caller's data).  A count larger than asked is refused, -EIO. */
        if (res > io_len(r, kind == S_READ)) res = -EIO;
        if (res < 0 || (kind == S_WRITE && res == 0)) {
            int err = res < 0 ? (int)res : -EIO;
            range_free_buf(e, r);
            if (f->kind == LSIO_OP_WRITE_FILE) {
                file_fail(e, f, err);
            } else {
                emit(e, r, err, 0);
                range_finish(e, r);
            }
            break;
        }
        r->done += res;
        if (kind == S_READ && r->probe) {
            probe_done(e, r, res);
            break;
        }
        if (kind == S_READ) {
            int64_t pos = r->aoff + r->done;
            if (pos >= r->off + r->len) {
                emit(e, r, 0, 0);
                range_finish(e, r);
            } else if (res == 0 || ((f->flags & LSIO_F_DIRECT) && pos % file_align(f))) {
                learn_size_at_eof(f, pos, r->done);
                range_free_buf(e, r);
                emit(e, r, LSIO_E_PAST_EOF, 0);
                range_finish(e, r);
            } else {
                r->retry = 1; /* short read: resume the tail */
                f->nretry++;
            }
        } else {
            if (r->done < r->len) {
                r->retry = 1;
                f->nretry++;
            }
            /* completions of writes are emitted when the file is finished */
        }
        break;
    }
    case S_FSYNC:
        f->fsynced = 1;
        if (res < 0) file_fail(e, f, (int)res);
        break;
    case S_CLOSE:
        f->closed = 1;
        if (f->fixed && f->fd >= 0) free_slot(e, f->fd);
        f->fd = -1;
        if (res < 0 && f->kind != LSIO_OP_READ) file_fail(e, f, (int)res);
        break;
    case S_FIXUP:
        f->mode_fixed = 1;
        if (res < 0) file_fail(e, f, (int)res);
        break;
    case S_FINAL:
        /* Judge by what was issued, not by the flags now: a rename cancelled while in
         * flight used to count as an unlink, so when it failed the temp file stayed. */
        if (f->final_rename) {
            f->renamed = 1;
            if (res < 0) file_fail(e, f, (int)res); /* the temp file is unlinked next */
            else f->unlinked = 1;                   /* no temp file left to unlink */
        } else {
            f->unlinked = 1;
        }
        break;
    }
    ready_push(e, f);
}

#define STX_MASK (STATX_TYPE | STATX_MODE | STATX_UID | STATX_GID | STATX_SIZE | STATX_DIOALIGN)

/* a WRITE_FILE looks at the name it replaces, not through a symlink (keep_mode) */
static int stx_flags(const file_op *f) {
    return f->kind == LSIO_OP_WRITE_FILE ? AT_SYMLINK_NOFOLLOW : 0;
}

static int open_flags(const file_op *f) {
    /* direct descriptors refuse O_CLOEXEC (-EINVAL): they are no fds to inherit */
    int fl = f->fixed ? 0 : O_CLOEXEC;
    /* O_NONBLOCK: opening a FIFO must not wait for its other end (see stx_verdict).  It
     * changes nothing for the regular files that pass the checks (their reads ignore it;
     * an -EAGAIN some kernels still give is retried in io-wq, see EAGAIN_TRIES).  A
     * WRITE_FILE creates a fresh temp file (O_EXCL): always regular. */
    if (f->kind == LSIO_OP_READ) fl |= O_RDONLY | O_NONBLOCK | O_NOCTTY;
    else if (f->kind == LSIO_OP_WRITE_FILE) fl |= O_WRONLY | O_CREAT | O_EXCL;
    else fl |= O_WRONLY | O_NONBLOCK | O_NOCTTY | ((f->flags & LSIO_F_CREATE) ? O_CREAT : 0);
    if (f->flags & LSIO_F_DIRECT) fl |= O_DIRECT;
    return fl;
}


/* ---- keeping the mode of a replaced file
 *
 * A WRITE_FILE over an existing regular file keeps its permission bits (0777: a new
 * content does not inherit setuid, setgid or sticky) and, when the engine runs as root,
 * its owner and group.  The statx before the open (AT_SYMLINK_NOFOLLOW: a symlink is
 * replaced, not written through, so it has no mode to keep) reads them; the temp file
 * is created with those bits -- less what the umask takes, so it is never more open
 * than the file it replaces, not even while being written -- and then given them
 * exactly (fchmod; fchown when root, best effort: a file system may refuse it, and the
 * data is written anyway).  The pread backend does it on the descriptor it created.
 * io_uring has no chmod: the thread driving the ring does it synchronously (S_FIXUP),
 * on the temp path opened O_NOFOLLOW and checked to be the temp file it created
 * (a regular file of ours with one link), so a name swapped in by someone who can write
 * into the directory is never chmod'ed or chown'ed: the write fails with -ESTALE. */
static int keep_mode(const file_op *f, int fd, int verify) {
    struct stat st;
    if (fstat(fd, &st) < 0) return -errno;
    if (verify && (!S_ISREG(st.st_mode) || st.st_nlink != 1 || st.st_uid != geteuid()))
        return -ESTALE; /* not the temp file this engine created */
    if (geteuid() == 0 && (st.st_uid != f->tuid || st.st_gid != f->tgid)) {
        if (fchown(fd, f->tuid, f->tgid) == 0) st.st_mode &= ~(mode_t)(S_ISUID | S_ISGID);
    }
    if ((st.st_mode & 07777) != f->tmode && fchmod(fd, f->tmode) < 0) return -errno;
    return 0;
}

static mode_t create_mode(const file_op *f) { return f->keep_mode ? f->tmode : 0644; }

/* ------------------------------------------------------------------ pread executor */

static int64_t run_sync(lsio_engine *e, const step *s) {
    file_op *f = s->f;
    range_st *r = s->r;
    int64_t res;
    (void)e;
    switch (s->kind) {
    case S_STATX:
        res = statx(AT_FDCWD, f->path, stx_flags(f), STX_MASK, &f->stx);
        return res < 0 ? -errno : 0;
    case S_OPEN: {
        if (f->kind == LSIO_OP_WRITE_FILE) {
            res = open(f->tmp_path, open_flags(f), create_mode(f));
            if (res < 0) return -errno;
            f->fixup_err = f->keep_mode ? keep_mode(f, (int)res, 0) : 0;
            return res;
        }
        int fd = open(f->path, open_flags(f), 0644);
        if (fd < 0) return -errno;
        /* the descriptor itself is checked: nothing can be swapped in meanwhile */
        int err = statx(fd, "", AT_EMPTY_PATH, STX_MASK, &f->stx) < 0 ? -errno : stx_verdict(f);
        if (err) close(fd);
        return err ? err : fd;
    }
    case S_READ:
        res = pread(f->fd, r->buf + r->done, (size_t)io_len(r, 1), r->aoff + r->done);
        return res < 0 ? -errno : res;
    case S_WRITE:
        res = pwrite(f->fd, r->data + r->done, (size_t)io_len(r, 0), r->off + r->done);
        return res < 0 ? -errno : res;
    case S_FSYNC:
        return fsync(f->fd) < 0 ? -errno : 0;
    case S_CLOSE:
        return close(f->fd) < 0 ? -errno : 0;
    case S_FINAL:
        if (f->final_rename) res = rename(f->tmp_path, f->path);
        else res = unlink(f->tmp_path);
        return res < 0 ? -errno : 0;
    case S_FIXUP: {
        int fd = open(f->tmp_path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0) return -errno;
        int err = keep_mode(f, fd, 1);
        close(fd);
        return err;
    }
    }
    return -EINVAL;
}

/* A pread worker takes up to `share` steps per lock (share = depth / threads, at most
 * WORKER_BATCH), runs their syscalls unlocked, and completes them under one lock: two
 * lock round trips per batch instead of per op (3.0 -> see BENCHMARKS.md for the CPU
 * cost per cached 4 KiB read).  When it took a full batch there may be more: it wakes one
 * more worker, so latency-bound (cold) IO still spreads over every thread. */
#define WORKER_BATCH 16

static void *worker_main(void *arg) {
    lsio_engine *e = arg;
    uint32_t share = e->cfg.depth / e->cfg.threads;
    if (share < 1) share = 1;
    if (share > WORKER_BATCH) share = WORKER_BATCH;
    step s[WORKER_BATCH];
    int64_t res[WORKER_BATCH];
    pthread_mutex_lock(&e->mu);
    while (!e->shutting_down) {
        uint32_t n = 0;
        while (n < share && next_step(e, &s[n])) {
            step_start(e, &s[n]);
            n++;
        }
        if (n == 0) {
            pthread_cond_wait(&e->work_cond, &e->mu);
            continue;
        }
        if (n == share) pthread_cond_signal(&e->work_cond);
        pthread_mutex_unlock(&e->mu);
        for (uint32_t i = 0; i < n; i++) res[i] = run_sync(e, &s[i]);
        pthread_mutex_lock(&e->mu);
        for (uint32_t i = 0; i < n; i++) step_done(e, s[i].kind, s[i].f, s[i].r, res[i]);
        pthread_cond_signal(&e->work_cond); /* completions may have unblocked new steps */
        pthread_cond_broadcast(&e->cq_cond);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* ------------------------------------------------------------------ io_uring executor */

static void uring_arm_wake(lsio_engine *e) {
    if (e->wake_armed) return;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
    if (!sqe) return;
    io_uring_prep_read(sqe, e->efd, &e->efd_buf, sizeof e->efd_buf, 0);
    io_uring_sqe_set_data64(sqe, S_WAKE);
    e->wake_armed = 1;
}

static void uring_prep_rw(lsio_engine *e, struct io_uring_sqe *sqe, file_op *f, range_st *r, int is_read) {
    int64_t len = io_len(r, is_read);
    if (is_read) {
        char *p = r->buf + r->done;
        if ((e->features & LSIO_FEAT_REG_BUFFERS) && pool_block_bytes(&e->pool, r->buf_id) <= MAX_IO_BYTES) {
            int idx = (int)((r->buf - e->pool.arena) / MAX_IO_BYTES);
            io_uring_prep_read_fixed(sqe, f->fd, p, (unsigned)len, (uint64_t)(r->aoff + r->done), idx);
        } else {
            io_uring_prep_read(sqe, f->fd, p, (unsigned)len, (uint64_t)(r->aoff + r->done));
        }
    } else {
        io_uring_prep_write(sqe, f->fd, r->data + r->done, (unsigned)len, (uint64_t)(r->off + r->done));
    }
    if (f->fixed) sqe->flags |= IOSQE_FIXED_FILE;
    if (r->eagain) sqe->flags |= IOSQE_ASYNC; /* blocking in io-wq: no -EAGAIN there */
    io_uring_sqe_set_data(sqe, step_ptr(is_read ? S_READ : S_WRITE, r));
}

static void uring_prep(lsio_engine *e, const step *s) {
    file_op *f = s->f;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
    switch (s->kind) {
    case S_STATX:
        io_uring_prep_statx(sqe, AT_FDCWD, f->path, stx_flags(f), STX_MASK, &f->stx);
        io_uring_sqe_set_data(sqe, step_ptr(S_STATX, f));
        break;
    case S_OPEN: {
        const char *p = f->kind == LSIO_OP_WRITE_FILE ? f->tmp_path : f->path;
        if (f->fixed)
            io_uring_prep_openat_direct(sqe, AT_FDCWD, p, open_flags(f), create_mode(f), (unsigned)f->fd);
        else io_uring_prep_openat(sqe, AT_FDCWD, p, open_flags(f), create_mode(f));
        io_uring_sqe_set_data(sqe, step_ptr(S_OPEN, f));
        if (s->link_read) {
            sqe->flags |= IOSQE_IO_LINK;
            uring_prep_rw(e, io_uring_get_sqe(&e->ring), f, s->r, 1);
        }
        break;
    }
    case S_READ:
    case S_WRITE:
        uring_prep_rw(e, sqe, f, s->r, s->kind == S_READ);
        break;
    case S_FSYNC:
        io_uring_prep_fsync(sqe, f->fd, 0);
        if (f->fixed) sqe->flags |= IOSQE_FIXED_FILE;
        io_uring_sqe_set_data(sqe, step_ptr(S_FSYNC, f));
        break;
    case S_CLOSE:
        if (f->fixed) io_uring_prep_close_direct(sqe, (unsigned)f->fd);
        else io_uring_prep_close(sqe, f->fd);
        io_uring_sqe_set_data(sqe, step_ptr(S_CLOSE, f));
        break;
    case S_FINAL:
        if (f->final_rename) io_uring_prep_renameat(sqe, AT_FDCWD, f->tmp_path, AT_FDCWD, f->path, 0);
        else io_uring_prep_unlinkat(sqe, AT_FDCWD, f->tmp_path, 0);
        io_uring_sqe_set_data(sqe, step_ptr(S_FINAL, f));
        break;
    }
}

/* Cancel, in the kernel, the transfers still in flight for cancelled files: a read the
 * kernel parked waiting for data (poll-armed; see stx_verdict for how a FIFO could get
 * there) would otherwise hold lsio_engine_free for ever.  Only reads and writes are
 * cancelled: an open, close, rename or unlink always runs to its end, so no descriptor
 * or temp file is lost.  A cancelled transfer completes with -ECANCELED (or its own
 * result when it was done already) and step_done drops it as for any cancelled file.
 * Called with mu held by the thread driving the ring. */
static void uring_kcancel(lsio_engine *e) {
    e->kcancel = 0;
    for (file_op *f = e->a_head; f; f = f->next) {
        if (!f->canceled || !f->inflight) continue;
        int kind = f->kind == LSIO_OP_READ ? S_READ : S_WRITE;
        for (uint32_t i = 0; i < f->nranges; i++) {
            range_st *r = &f->ranges[i];
            if (!r->inflight || r->kcancel_sent) continue;
            struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);
            if (!sqe) { /* the SQ is full: the rest on the next round */
                e->kcancel = 1;
                return;
            }
            io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)step_ptr(kind, r), 0);
            io_uring_sqe_set_data64(sqe, UD_CANCEL);
            r->kcancel_sent = 1;
            e->kcancels_inflight++;
        }
    }
}

/* Process every CQE that is there. Called with mu held. Returns how many. */
static unsigned uring_process(lsio_engine *e) {
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&e->ring, head, cqe) {
        n++;
        uint64_t ud = cqe->user_data;
        if (ud == LIBURING_UDATA_TIMEOUT) continue;
        int kind = (int)(ud & 7);
        void *obj = (void *)(uintptr_t)(ud & ~(uint64_t)7);
        if (kind == S_WAKE) {
            if (ud == UD_CANCEL) e->kcancels_inflight--;
            else e->wake_armed = 0;
            continue;
        }
        if (kind == S_READ || kind == S_WRITE) {
            range_st *r = obj;
            step_done(e, kind, r->f, r, cqe->res);
        } else {
            step_done(e, kind, obj, NULL, cqe->res);
        }
    }
    io_uring_cq_advance(&e->ring, n);
    return n;
}

#define STARVED_POLL_MS 2 /* a starved ring looks at the pool again at least this often */

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Drive the ring until at least min_complete completions are ready, nothing is pending,
 * or the deadline passes.  Called with mu and reap_mu held; drops mu while waiting. */
static void uring_drive(lsio_engine *e, uint32_t min_complete, int timeout_ms, int forever) {
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        step s;
        if (e->kcancel) uring_kcancel(e);
        while (io_uring_sq_space_left(&e->ring) >= 3 && next_step(e, &s)) {
            step_start(e, &s);
            if (s.kind == S_FIXUP) { /* no such io_uring op: a syscall or two, unlocked */
                pthread_mutex_unlock(&e->mu);
                int64_t res = run_sync(e, &s);
                pthread_mutex_lock(&e->mu);
                step_done(e, s.kind, s.f, s.r, res);
                continue;
            }
            uring_prep(e, &s);
        }
        uring_arm_wake(e);
        /* wake_req: lsio_wake asked the reaper to return.  (The eventfd alone only
         * breaks the kernel wait; without this the loop went back to sleep.) */
        int done = forever ? e->shutting_down
                           : (e->cq.len >= min_complete || e->files_pending == 0 || e->wake_req ||
                              (deadline >= 0 && now_ms() >= deadline));
        int starved = e->starved;
        pthread_mutex_unlock(&e->mu);
        int rc;
        if (done) {
            rc = io_uring_submit(&e->ring);
        } else {
            struct io_uring_cqe *cqe;
            struct __kernel_timespec ts, *tsp = NULL;
            if (deadline >= 0 || starved) {
                int64_t left = deadline >= 0 ? deadline - now_ms() : STARVED_POLL_MS;
                if (left < 0) left = 0;
                /* starved: releases wake this wait only in bulk (refilled) */
                if (starved && left > STARVED_POLL_MS) left = STARVED_POLL_MS;
                ts.tv_sec = left / 1000;
                ts.tv_nsec = (left % 1000) * 1000000;
                tsp = &ts;
            }
            rc = io_uring_submit_and_wait_timeout(&e->ring, &cqe, 1, tsp, NULL);
        }
        pthread_mutex_lock(&e->mu);
        e->submit_calls++;
        (void)rc; /* -ETIME / -EINTR: loop and look again */
        if (uring_process(e)) pthread_cond_broadcast(&e->cq_cond);
        if (done) return;
    }
}

/* cfg.ring_thread: this thread owns the ring (reap_mu) for the engine's whole life.
 * The eventfd read armed in uring_drive wakes it for submits, releases and shutdown. */
static void *ring_thread_main(void *arg) {
    lsio_engine *e = arg;
    pthread_mutex_lock(&e->reap_mu);
    pthread_mutex_lock(&e->mu);
    uring_drive(e, 0, -1, 1);
    pthread_mutex_unlock(&e->mu);
    pthread_mutex_unlock(&e->reap_mu);
    return NULL;
}

/* ------------------------------------------------------------------ public API */

void lsio_config_default(lsio_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->backend = LSIO_BACKEND_AUTO;
    cfg->depth = 64;
    cfg->threads = 4;
    cfg->max_open = 1024;
    cfg->pool_bytes = (uint64_t)256 << 20;
    cfg->register_buffers = -1;
    cfg->fixed_files = -1;
    cfg->link_open = -1;
    cfg->ring_thread = 0;
}

static int uring_setup(lsio_engine *e) {
    unsigned entries = e->cfg.depth * 2 + 4;
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL;
    int rc = io_uring_queue_init_params(entries, &e->ring, &p);
    if (rc == -EINVAL) {
        memset(&p, 0, sizeof p);
        rc = io_uring_queue_init_params(entries, &e->ring, &p);
    }
    if (rc < 0) return rc;
    e->ring_ok = 1;
    struct io_uring_probe *pr = io_uring_get_probe_ring(&e->ring);
    if (!pr) return -ENOSYS;
    int need[] = {IORING_OP_READ, IORING_OP_WRITE, IORING_OP_OPENAT, IORING_OP_CLOSE, IORING_OP_FSYNC};
    for (unsigned i = 0; i < sizeof need / sizeof need[0]; i++)
        if (!io_uring_opcode_supported(pr, need[i])) {
            io_uring_free_probe(pr);
            return -ENOSYS;
        }
    int has_statx = io_uring_opcode_supported(pr, IORING_OP_STATX);
    int has_rename = io_uring_opcode_supported(pr, IORING_OP_RENAMEAT) &&
                     io_uring_opcode_supported(pr, IORING_OP_UNLINKAT);
    io_uring_free_probe(pr);
    if (!has_statx || !has_rename) return -ENOSYS; /* pre-5.11 kernel: use pread */
    e->features |= LSIO_FEAT_STATX | LSIO_FEAT_RENAME;
    if (e->cfg.fixed_files != 0 && io_uring_register_files_sparse(&e->ring, e->cfg.max_open) == 0) {
        e->features |= LSIO_FEAT_FIXED_FILES;
        if (e->cfg.link_open != 0) e->features |= LSIO_FEAT_LINKED_OPEN;
    }
    if (e->cfg.register_buffers == 1) {
        uint64_t n = (e->pool.bytes + MAX_IO_BYTES - 1) / MAX_IO_BYTES;
        struct iovec *iov = calloc(n, sizeof *iov);
        if (!iov) return -ENOMEM;
        for (uint64_t i = 0; i < n; i++) {
            iov[i].iov_base = e->pool.arena + i * MAX_IO_BYTES;
            uint64_t left = e->pool.bytes - i * MAX_IO_BYTES;
            iov[i].iov_len = left < (uint64_t)MAX_IO_BYTES ? left : (uint64_t)MAX_IO_BYTES;
        }
        if (io_uring_register_buffers(&e->ring, iov, (unsigned)n) == 0)
            e->features |= LSIO_FEAT_REG_BUFFERS;
        free(iov);
    }
    e->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (e->efd < 0) return -errno;
    return 0;
}

static void engine_destroy(lsio_engine *e) {
    pool_destroy(&e->pool);
    free(e->cq.v);
    free(e->slot_free);
    free(e->workers);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->reap_mu);
    pthread_cond_destroy(&e->work_cond);
    pthread_cond_destroy(&e->cq_cond);
    free(e);
}

static int switch_ok(int32_t v) { return v >= -1 && v <= 1; }

/* Every size is checked before anything is allocated from it: the slot table is
 * 4 bytes x max_open, the pool's block tables 14 bytes per 4 KiB of pool_bytes, one
 * thread per `threads`, and the ring 2 x depth entries.  (A max_open of 10^9 used to
 * allocate and touch 3.8 GiB.)  Returns 0 or -EINVAL. */
static int config_check(const lsio_config *cfg) {
    if (cfg->backend < LSIO_BACKEND_AUTO || cfg->backend > LSIO_BACKEND_PREAD) return -EINVAL;
    if (cfg->depth > LSIO_MAX_DEPTH || cfg->threads > LSIO_MAX_THREADS ||
        cfg->max_open > LSIO_MAX_OPEN_FILES || cfg->pool_bytes > (uint64_t)LSIO_MAX_POOL_BYTES)
        return -EINVAL;
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
    if (pages > 0 && psize > 0 && cfg->pool_bytes > (uint64_t)pages * (uint64_t)psize)
        return -EINVAL; /* a bound the machine cannot hold is no bound */
    if (!switch_ok(cfg->register_buffers) || !switch_ok(cfg->fixed_files) ||
        !switch_ok(cfg->link_open) || cfg->ring_thread < 0 || cfg->ring_thread > 1)
        return -EINVAL;
    return 0;
}

lsio_engine *lsio_engine_new(const lsio_config *cfg_in, int *err) {
    lsio_config cfg;
    if (cfg_in) cfg = *cfg_in;
    else lsio_config_default(&cfg);
    if (cfg.depth == 0) cfg.depth = 64;
    if (cfg.threads == 0) cfg.threads = 4;
    if (cfg.max_open == 0) cfg.max_open = 1024;
    if (cfg.pool_bytes < 4096) cfg.pool_bytes = 4096;
    *err = config_check(&cfg);
    if (*err) return NULL;
    lsio_engine *e = calloc(1, sizeof *e);
    if (!e) {
        *err = -ENOMEM;
        return NULL;
    }
    e->cfg = cfg;
    e->efd = -1;
    pthread_mutex_init(&e->mu, NULL);
    pthread_mutex_init(&e->reap_mu, NULL);
    pthread_cond_init(&e->work_cond, NULL);
    pthread_cond_init(&e->cq_cond, NULL);
    int rc = pool_init(&e->pool, cfg.pool_bytes);
    if (rc < 0) goto fail;
    e->cfg.pool_bytes = e->pool.bytes;
    e->slot_free = malloc(cfg.max_open * sizeof(int32_t));
    if (!e->slot_free) {
        rc = -ENOMEM;
        goto fail;
    }
    for (uint32_t i = 0; i < cfg.max_open; i++) e->slot_free[i] = (int32_t)(cfg.max_open - 1 - i);
    e->nslot_free = cfg.max_open;
    if (cfg.backend != LSIO_BACKEND_PREAD) {
        rc = uring_setup(e);
        if (rc == 0) {
            e->backend = LSIO_BACKEND_URING;
            if (cfg.ring_thread == 1) {
                rc = -pthread_create(&e->ring_tid, NULL, ring_thread_main, e);
                if (rc) goto fail_ring;
                e->ring_thread_running = 1;
            }
        } else {
        fail_ring:
            e->backend = 0;
            if (e->ring_ok) io_uring_queue_exit(&e->ring);
            e->ring_ok = 0;
            if (e->efd >= 0) close(e->efd);
            e->efd = -1;
            e->features = 0;
            if (cfg.backend == LSIO_BACKEND_URING) goto fail;
        }
    }
    if (!e->backend) {
        e->backend = LSIO_BACKEND_PREAD;
        e->workers = calloc(cfg.threads, sizeof(pthread_t));
        if (!e->workers) {
            rc = -ENOMEM;
            goto fail;
        }
        for (uint32_t i = 0; i < cfg.threads; i++) {
            rc = -pthread_create(&e->workers[i], NULL, worker_main, e);
            if (rc) {
                pthread_mutex_lock(&e->mu);
                e->shutting_down = 1;
                pthread_cond_broadcast(&e->work_cond);
                pthread_mutex_unlock(&e->mu);
                for (uint32_t j = 0; j < i; j++) pthread_join(e->workers[j], NULL);
                goto fail;
            }
            e->nworkers++;
        }
    }
    return e;
fail:
    *err = rc;
    engine_destroy(e);
    return NULL;
}

int lsio_engine_backend(const lsio_engine *e) { return e->backend; }
uint32_t lsio_engine_features(const lsio_engine *e) { return e->features; }

void lsio_engine_stats(lsio_engine *e, lsio_stats *o) {
    pthread_mutex_lock(&e->mu);
    memset(o, 0, sizeof *o);
    o->pool_bytes = e->pool.bytes;
    o->pool_in_use = e->pool.in_use;
    o->pool_peak = e->pool.peak;
    o->buffers_out = e->buffers_out;
    o->ops_submitted = e->ops_submitted;
    o->submit_calls = e->submit_calls;
    o->files_pending = e->files_pending;
    o->ranges_pending = e->ranges_pending;
    o->completions_ready = e->cq.len;
    o->starved = e->starved_count;
    o->open_files = e->open_files;
    o->inflight = e->inflight;
    pthread_mutex_unlock(&e->mu);
}

static void wake_all(lsio_engine *e) {
    if (e->backend == LSIO_BACKEND_URING) {
        uint64_t one = 1;
        ssize_t w = write(e->efd, &one, sizeof one);
        (void)w; /* EAGAIN: a wake-up is pending already */
    } else {
        pthread_cond_broadcast(&e->work_cond);
        pthread_cond_broadcast(&e->cq_cond);
    }
}

void lsio_wake(lsio_engine *e) {
    pthread_mutex_lock(&e->mu);
    e->wake_req = 1; /* consumed by the reap it wakes, or by the next one */
    wake_all(e);
    pthread_mutex_unlock(&e->mu);
}

int lsio_submit(lsio_engine *e, const lsio_file *files, uint32_t nfiles,
                const lsio_range *ranges, uint64_t nranges, const char *paths, uint64_t paths_len) {
    uint64_t total = 0;
    for (uint32_t i = 0; i < nfiles; i++) {
        const lsio_file *f = &files[i];
        if (f->kind > LSIO_OP_WRITE_RANGES || f->path_off >= paths_len) return -EINVAL;
        if (!memchr(paths + f->path_off, 0, paths_len - f->path_off)) return -EINVAL;
        if (paths[f->path_off] == 0) return -ENOENT;
        for (uint64_t j = total; j < total + f->nranges && j < nranges; j++) {
            const lsio_range *r = &ranges[j];
            if (f->kind != LSIO_OP_READ && (r->offset < 0 || r->length < 0 || (r->length && !r->data)))
                return -EINVAL;
            if (r->length < -1) return -EINVAL;
        }
        total += f->nranges;
    }
    if (total != nranges) return -EINVAL;
    if (nfiles == 0) return 0;
    batch *b = calloc(1, sizeof *b);
    if (!b) return -ENOMEM;
    b->files = calloc(nfiles, sizeof(file_op));
    b->ranges = calloc(nranges ? nranges : 1, sizeof(range_st));
    b->paths = malloc(paths_len);
    if (!b->files || !b->ranges || !b->paths) {
        free(b->files);
        free(b->ranges);
        free(b->paths);
        free(b);
        return -ENOMEM;
    }
    memcpy(b->paths, paths, paths_len);
    b->nfiles_left = nfiles;
    pthread_mutex_lock(&e->mu);
    uint64_t k = 0;
    for (uint32_t i = 0; i < nfiles; i++) {
        file_op *f = &b->files[i];
        f->group = files[i].group;
        f->path = b->paths + files[i].path_off;
        f->kind = files[i].kind;
        f->flags = files[i].flags;
        f->nranges = files[i].nranges;
        f->ranges = &b->ranges[k];
        f->batch = b;
        f->fd = -1;
        f->size = -1;
        f->fixed = (e->features & LSIO_FEAT_FIXED_FILES) != 0;
        if (f->kind == LSIO_OP_WRITE_FILE) {
            f->tmp_path = malloc(strlen(f->path) + TMP_SUFFIX_MAX);
            if (f->tmp_path) tmp_name(e, f);
        }
        for (uint32_t j = 0; j < f->nranges; j++, k++) {
            range_st *r = &b->ranges[k];
            r->offset = ranges[k].offset;
            r->length = ranges[k].length;
            r->tag = ranges[k].tag;
            r->data = ranges[k].data;
            r->f = f;
            r->off = r->len = -1;
        }
        e->files_pending++;
        e->ranges_pending += f->nranges;
        if (f->kind == LSIO_OP_WRITE_FILE && !f->tmp_path) {
            /* no memory for the temp name: fail the file, it retires on its own */
            f->state = F_FINISHING;
            file_fail(e, f, -ENOMEM);
        }
        list_append(&e->q_head, &e->q_tail, f);
    }
    wake_all(e);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

static uint32_t copy_out(lsio_engine *e, lsio_completion *out, uint32_t max) {
    uint32_t n = 0;
    cq_vec *q = &e->cq;
    while (n < max && q->len) {
        out[n++] = q->v[q->head];
        q->head = (q->head + 1) % q->cap;
        q->len--;
    }
    return n;
}

int lsio_reap(lsio_engine *e, lsio_completion *out, uint32_t max, uint32_t min_complete, int timeout_ms) {
    if (max > INT_MAX) max = INT_MAX; /* the count returned is an int */
    if (min_complete > max) min_complete = max;
    int own_ring = e->backend == LSIO_BACKEND_URING && !e->ring_thread_running;
    /* One reaper at a time (-EBUSY for the others), and lsio_engine_free waits for it on
     * reap_mu: pread reapers take it too.  (Only a ring thread keeps it for good.) */
    int exclusive = own_ring || e->backend == LSIO_BACKEND_PREAD;
    if (exclusive && pthread_mutex_trylock(&e->reap_mu) != 0) return -EBUSY;
    pthread_mutex_lock(&e->mu);
    if (own_ring) {
        uring_drive(e, min_complete ? min_complete : 0, min_complete ? timeout_ms : 0, 0);
    } else {
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        if (timeout_ms > 0) {
            dl.tv_sec += timeout_ms / 1000;
            dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
            if (dl.tv_nsec >= 1000000000) {
                dl.tv_sec++;
                dl.tv_nsec -= 1000000000;
            }
        }
        while (e->cq.len < min_complete && e->files_pending > 0 && !e->wake_req) {
            if (timeout_ms < 0) pthread_cond_wait(&e->cq_cond, &e->mu);
            else if (timeout_ms == 0 || pthread_cond_timedwait(&e->cq_cond, &e->mu, &dl) == ETIMEDOUT) break;
        }
    }
    e->wake_req = 0;
    uint32_t n = copy_out(e, out, max);
    pthread_mutex_unlock(&e->mu);
    if (exclusive) pthread_mutex_unlock(&e->reap_mu);
    return (int)n;
}

/* Release one block; called with mu held.  Returns 0 or -EINVAL. */
static int release_locked(lsio_engine *e, uint64_t id) {
    int rc = pool_free(&e->pool, id);
    if (rc == 0) e->buffers_out--;
    return rc;
}

/* io_uring, issuing stalled on an empty pool: wake the thread driving the ring (a
 * reaper or the ring thread) once a sixteenth of the pool has come back since it
 * stalled -- or all of it, when less was out -- not at every release.  Waking it at
 * every release made it sleep and wake ~1,500 times per time series of 2,048 chunks,
 * each time preempting a decoding thread for one or two reads; now ~100, and the zarr
 * loader's IO thread uses 54-59 ms of CPU per series instead of 75-82 (BENCHMARKS.md,
 * issue 3).  A ring waiting while starved wakes by itself every STARVED_POLL_MS
 * (uring_drive), so a skipped wake costs at most that, and the last release always
 * wakes.  The pread workers are still woken at every release. */
static int refilled(const lsio_engine *e) {
    uint64_t want = e->pool.bytes / 16;
    if (want > e->starved_in_use) want = e->starved_in_use;
    return e->pool.in_use + want <= e->starved_in_use;
}

static void after_release(lsio_engine *e) {
    int last = e->freed && e->buffers_out == 0;
    if (!e->freed && e->starved && (e->backend != LSIO_BACKEND_URING || refilled(e))) wake_all(e);
    pthread_mutex_unlock(&e->mu);
    if (last) engine_destroy(e);
}

int lsio_release(lsio_engine *e, uint64_t buf_id) {
    pthread_mutex_lock(&e->mu);
    int rc = release_locked(e, buf_id);
    after_release(e);
    return rc;
}

int lsio_release_many(lsio_engine *e, const uint64_t *ids, uint64_t n) {
    int rc = 0;
    pthread_mutex_lock(&e->mu);
    for (uint64_t i = 0; i < n; i++)
        if (ids[i] && release_locked(e, ids[i]) < 0) rc = -EINVAL;
    after_release(e);
    return rc;
}

static int64_t cancel_file(lsio_engine *e, file_op *f) {
    if (f->canceled) return 0;
    f->canceled = 1;
    if (e->backend == LSIO_BACKEND_URING && f->inflight) e->kcancel = 1;
    int64_t n = 0;
    for (uint32_t i = 0; i < f->nranges; i++) n += !f->ranges[i].finished;
    if (f->state != F_QUEUED) ready_push(e, f);
    return n;
}

int64_t lsio_cancel_group(lsio_engine *e, uint64_t group) {
    int64_t n = 0;
    pthread_mutex_lock(&e->mu);
    for (file_op *f = e->q_head; f; f = f->next)
        if (f->group == group) n += cancel_file(e, f);
    for (file_op *f = e->a_head; f; f = f->next)
        if (f->group == group) n += cancel_file(e, f);
    /* completions of the group not yet reaped: give their buffers back now */
    cq_vec *q = &e->cq;
    uint64_t kept = 0;
    for (uint64_t i = 0; i < q->len; i++) {
        lsio_completion c = q->v[(q->head + i) % q->cap];
        if (c.group == group) {
            if (c.buf_id) release_locked(e, c.buf_id);
            continue;
        }
        q->v[(q->head + kept) % q->cap] = c;
        kept++;
    }
    q->len = kept;
    wake_all(e);
    pthread_mutex_unlock(&e->mu);
    return n;
}

int64_t lsio_group_pending(lsio_engine *e, uint64_t group) {
    int64_t n = 0;
    pthread_mutex_lock(&e->mu);
    for (file_op *f = e->q_head; f; f = f->next) n += f->group == group;
    for (file_op *f = e->a_head; f; f = f->next) n += f->group == group;
    pthread_mutex_unlock(&e->mu);
    return n;
}

void lsio_engine_free(lsio_engine *e) {
    if (!e) return;
    if (e->ring_thread_running) {
        /* let the ring thread drain the cancelled work, then stop it and take the ring */
        pthread_mutex_lock(&e->mu);
        for (file_op *f = e->q_head; f; f = f->next) cancel_file(e, f);
        for (file_op *f = e->a_head; f; f = f->next) cancel_file(e, f);
        wake_all(e);
        while (e->files_pending > 0 || e->inflight > 0 || e->kcancels_inflight > 0)
            pthread_cond_wait(&e->cq_cond, &e->mu);
        e->shutting_down = 1;
        wake_all(e);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->ring_tid, NULL);
        e->ring_thread_running = 0;
        e->shutting_down = 0;
    }
    pthread_mutex_lock(&e->reap_mu);
    pthread_mutex_lock(&e->mu);
    e->wake_req = 0; /* a pending lsio_wake must not turn the drain below into a spin */
    for (file_op *f = e->q_head; f; f = f->next) cancel_file(e, f);
    for (file_op *f = e->a_head; f; f = f->next) cancel_file(e, f);
    if (e->backend == LSIO_BACKEND_URING) {
        /* Drive until every file is closed (and temp files unlinked) and the kernel
         * holds nothing of ours; then complete the eventfd read so it cannot touch
         * efd_buf after the ring is gone. */
        while (e->files_pending > 0 || e->inflight > 0 || e->kcancels_inflight > 0)
            uring_drive(e, UINT32_MAX, 100, 0);
        while (e->wake_armed) {
            uint64_t one = 1;
            ssize_t w = write(e->efd, &one, sizeof one);
            (void)w;
            pthread_mutex_unlock(&e->mu);
            struct io_uring_cqe *cqe;
            struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 10000000};
            io_uring_submit_and_wait_timeout(&e->ring, &cqe, 1, &ts, NULL);
            pthread_mutex_lock(&e->mu);
            uring_process(e);
        }
        io_uring_queue_exit(&e->ring);
        close(e->efd);
    } else {
        pthread_cond_broadcast(&e->work_cond);
        while (e->files_pending > 0 || e->inflight > 0) pthread_cond_wait(&e->cq_cond, &e->mu);
        e->shutting_down = 1;
        pthread_cond_broadcast(&e->work_cond);
        pthread_mutex_unlock(&e->mu);
        for (uint32_t i = 0; i < e->nworkers; i++) pthread_join(e->workers[i], NULL);
        pthread_mutex_lock(&e->mu);
    }
    /* completions never reaped: their buffers come back to the pool */
    lsio_completion c;
    while (copy_out(e, &c, 1))
        if (c.buf_id) release_locked(e, c.buf_id);
    e->freed = 1;
    int last = e->buffers_out == 0;
    pthread_mutex_unlock(&e->mu);
    pthread_mutex_unlock(&e->reap_mu);
    if (last) engine_destroy(e);
}

const char *lsio_strerror(int err) {
    switch (err) {
    case LSIO_E_PAST_EOF: return "byte range reaches past the end of the file";
    case LSIO_E_TOO_BIG: return "byte range is larger than the whole buffer pool";
    case LSIO_E_CANCELED: return "group cancelled";
    case LSIO_E_NOT_REGULAR: return "not a regular file (a FIFO, socket or device): refused";
    case LSIO_E_UNSIZED:
        return "the file reports size 0 but has data (a /proc or /sys file?): a whole-file read "
               "is refused, read it with an explicit byte range";
    default: return strerror(-err);
    }
}
