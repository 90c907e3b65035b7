/*
 * engine_sched.c -- the scheduler: which operation starts next.
 *
 * Holds lsio__next_step and the per-file state machine's issuing half (file_step): the
 * FIFO queue of files not started, the active list and the ready list (files that may
 * have a step to issue), the bounds on ops in flight (depth) and open files (max_open),
 * the resolution of each range against the file's size and O_DIRECT alignment, and the
 * reservation of a read's pool buffer -- a read whose buffer cannot be had stops ALL
 * issuing until a release (back-pressure).  lsio__step_start counts a step in flight.
 *
 * Owns: the order of the queues (files start in submission order) and, between
 * reservation and the step's issue, a read's pool block (range_get_buffer; from the issue
 * on it is the kernel's, see engine_internal.h).  It retires finished files and frees
 * their batch (file_retire).  Everything here runs with mu held.
 */
#define _GNU_SOURCE
#include "engine_internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ scheduling */

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
                e->inflight + 2 <= e->cfg.depth && /* two ops: never above depth */
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
                            lsio__emit(e, r, got, 0);
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
                    lsio__file_fail(e, f, err);
                    continue;
                }
                if (!f->canceled) lsio__emit(e, r, err, 0);
                range_finish(e, r);
                continue;
            }
            r->issued = 1;
            if (r->alen == 0) {
                /* empty range: nothing to transfer (write completions come at the end) */
                if (f->kind == LSIO_OP_READ) {
                    lsio__emit(e, r, 0, 0);
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
             * S_FINAL is in flight, and lsio__step_done must know which one ran. */
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
                    lsio__emit(e, r, 0, 0);
                    range_finish(e, r);
                }
            }
        }
        if (f->err_range && !f->canceled) lsio__emit(e, f->err_range, f->error, LSIO_C_FILE_ERROR);
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
int lsio__next_step(lsio_engine *e, step *s) {
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

void lsio__step_start(lsio_engine *e, const step *s) {
    inflight_tick(e);
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
    if (e->inflight > e->inflight_max) e->inflight_max = e->inflight;
}
