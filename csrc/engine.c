/*
 * engine.c -- the lsio engine's public API (lsio.h): one state machine per file op, two
 * executors.
 *
 * Holds lsio_config_default, lsio_engine_new (configuration checks, pool, direct slots,
 * picking the backend and starting its threads), lsio_submit (a batch copied into engine
 * memory and queued), lsio_reap, lsio_release / lsio_release_many, lsio_cancel_group,
 * lsio_group_pending, lsio_wake, lsio_engine_stats, lsio_engine_free and lsio_strerror;
 * and the temp names of WRITE_FILE (lsio__tmp_name).  The design, the locking and the
 * buffer ownership rules are at the top of engine_internal.h; the scheduler is in
 * engine_sched.c, a step's result in engine_complete.c, the executors in engine_pread.c
 * and engine_uring.c.
 *
 * Owns: the engine's lifetime (it lives until lsio_engine_free AND the last caller
 * buffer's release: engine_destroy), each batch's allocation (freed by the scheduler when
 * its last file retires), the completions handed out (copy_out) and the caller's buffers
 * coming back (lsio_release), and cancellation (cancel_file).
 */
#define _GNU_SOURCE
#include "engine_internal.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* Temp names: "<path>.lsio-tmp.<pid>.<16 hex digits>", 64 bits from getrandom, created with
 * O_CREAT | O_EXCL, which refuses any existing name (symlinks included, never followed).
 * A name that exists already (EEXIST) is replaced by a fresh one, TMP_TRIES times in
 * all, then the write fails with -EEXIST.  (The old "<path>.lsio-tmp.<pid>.<n>" could be
 * guessed and pre-planted to make every put fail.)  Without getrandom (ENOSYS before
 * Linux 3.17, or no entropy yet with GRND_NONBLOCK) the bits come from the clock, the
 * pid and a counter, mixed: still distinct names, and the retries still apply.  Other
 * code finds stray temp files by the ".lsio-tmp." marker and tells a live writer's from a
 * dead one's by the pid after it (lsio_ray/paths.py): keep both. */

static uint64_t mix64(uint64_t x) { /* splitmix64's finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Called with mu held (tmp_counter). */
void lsio__tmp_name(lsio_engine *e, file_op *f) {
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
        rc = lsio__uring_setup(e);
        if (rc == 0) {
            e->backend = LSIO_BACKEND_URING;
            if (cfg.ring_thread == 1) {
                rc = -pthread_create(&e->ring_tid, NULL, lsio__ring_thread_main, e);
                if (rc) goto fail_ring;
                e->ring_thread_running = 1;
            }
        } else {
        fail_ring:
            e->backend = 0;
            lsio__uring_teardown(e);
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
            rc = -pthread_create(&e->workers[i], NULL, lsio__worker_main, e);
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
    inflight_tick(e);
    o->inflight_max = e->inflight_max;
    o->inflight_ns = e->inflight_ns;
    o->clock_ns = e->inflight_t;
    o->completed = e->completed;
    memcpy(o->inflight_hist, e->inflight_hist, sizeof o->inflight_hist); /* same size: asserted */
    o->enter_ns = e->enter_ns;
    o->wait_calls = e->wait_calls;
    o->cqes = e->cqes;
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
            if (f->tmp_path) lsio__tmp_name(e, f);
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
            lsio__file_fail(e, f, -ENOMEM);
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
        lsio__uring_drive(e, min_complete ? min_complete : 0, min_complete ? timeout_ms : 0, 0);
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
 * loader's IO thread uses 54-59 ms of CPU per series instead of 75-82
 * (scripts/ab-loop.py series, benchmarks/results/zarr-reads.md).  A ring waiting while starved wakes by itself every STARVED_POLL_MS
 * (lsio__uring_drive), so a skipped wake costs at most that, and the last release always
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
        lsio__uring_drain_free(e);
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
