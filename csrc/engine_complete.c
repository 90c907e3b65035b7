/*
 * engine_complete.c -- what the end of a step does: the state machine's completing half.
 *
 * Holds lsio__step_done, which takes the result of one operation (bytes or -errno) and
 * advances its file: a statx's verdict (stx_verdict, then stx_apply: size and O_DIRECT
 * alignment), an open (a temp name found taken gets a fresh one), short reads and writes
 * marked for resumption, EOF reported for one range, the results of fsync, close, mode
 * fix-up, rename and unlink; then it puts the file back on the ready list.  And where the
 * results go: the completion queue (cq_push, lsio__emit) and file-level failures
 * (lsio__file_fail).
 *
 * Owns: the completion queue's records (until lsio_reap copies them out), and the pool
 * block of each finished read: on success it passes to the caller inside the completion
 * (lsio__emit), on error or cancellation it is freed here.  Everything here runs with mu
 * held (lsio__emit drops it only to wait for memory).
 */
#define _GNU_SOURCE
#include "engine_internal.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

void lsio__emit(lsio_engine *e, range_st *r, int err, uint32_t flags) {
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

/* A file-level failure: one completion stands for every unfinished range. */
void lsio__file_fail(lsio_engine *e, file_op *f, int err) {
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
        if (f->kind == LSIO_OP_READ) lsio__emit(e, first, err, LSIO_C_FILE_ERROR);
        else f->err_range = first;
    }
    for (uint32_t i = 0; i < f->nranges; i++) range_finish(e, &f->ranges[i]);
    f->next_range = f->nranges;
}

#define MAX_DIO_ALIGN ((uint32_t)1 << 20) /* larger O_DIRECT alignments are refused */

/* A checked file's statx (f->stx): its size, when needed, and its O_DIRECT alignment. */
static void stx_apply(lsio_engine *e, file_op *f) {
    if (f->kind != LSIO_OP_READ) return;
    if (f->want_size) {
        if (f->stx.stx_size > (uint64_t)INT64_MAX) {
            lsio__file_fail(e, f, -EFBIG);
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
            lsio__file_fail(e, f, -EINVAL);
            return;
        }
    }
    /* The alignment sizes the buffer and the aligned range (range_resolve): only powers
     * of two up to MAX_DIO_ALIGN, whatever a file system reports. */
    uint32_t a = f->off_align > f->mem_align ? f->off_align : f->mem_align;
    if (a > MAX_DIO_ALIGN || (a & (a - 1))) {
        lsio__file_fail(e, f, -EINVAL);
        return;
    }
    if (a > e->dio_align) e->dio_align = a;
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
    lsio__emit(e, r, res > 0 ? LSIO_E_UNSIZED : 0, 0);
    range_finish(e, r);
}

void lsio__step_done(lsio_engine *e, int kind, file_op *f, range_st *r, int64_t res) {
    inflight_done(e);
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
        if (res < 0) lsio__file_fail(e, f, (int)res);
        else if ((res = stx_verdict(f)) != 0) lsio__file_fail(e, f, (int)res);
        else stx_apply(e, f);
        break;
    case S_OPEN:
        f->open_pending = 0;
        if (res < 0) {
            if (f->fixed) free_slot(e, f->fd);
            f->fd = -1;
            if (res == -EEXIST && f->kind == LSIO_OP_WRITE_FILE && !f->canceled &&
                ++f->tmp_tries < TMP_TRIES) {
                lsio__tmp_name(e, f); /* the name was taken: file_step opens the next one */
                break;
            }
            lsio__file_fail(e, f, (int)res);
        } else {
            if (!f->fixed) f->fd = (int)res;
            if (f->kind == LSIO_OP_WRITE_FILE) {
                f->tmp_created = 1;
                if (e->backend == LSIO_BACKEND_PREAD) f->mode_fixed = 1; /* in lsio__run_sync */
                if (f->fixup_err) lsio__file_fail(e, f, f->fixup_err); /* the temp file goes */
            }
            /* pread: lsio__run_sync checked the descriptor it opened (f->stx) */
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
                lsio__file_fail(e, f, err);
            } else {
                lsio__emit(e, r, err, 0);
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
                lsio__emit(e, r, 0, 0);
                range_finish(e, r);
            } else if (res == 0 || ((f->flags & LSIO_F_DIRECT) && pos % file_align(f))) {
                learn_size_at_eof(f, pos, r->done);
                range_free_buf(e, r);
                lsio__emit(e, r, LSIO_E_PAST_EOF, 0);
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
        if (res < 0) lsio__file_fail(e, f, (int)res);
        break;
    case S_CLOSE:
        f->closed = 1;
        if (f->fixed && f->fd >= 0) free_slot(e, f->fd);
        f->fd = -1;
        if (res < 0 && f->kind != LSIO_OP_READ) lsio__file_fail(e, f, (int)res);
        break;
    case S_FIXUP:
        f->mode_fixed = 1;
        if (res < 0) lsio__file_fail(e, f, (int)res);
        break;
    case S_FINAL:
        /* Judge by what was issued, not by the flags now: a rename cancelled while in
         * flight used to count as an unlink, so when it failed the temp file stayed. */
        if (f->final_rename) {
            f->renamed = 1;
            if (res < 0) lsio__file_fail(e, f, (int)res); /* the temp file is unlinked next */
            else f->unlinked = 1;                   /* no temp file left to unlink */
        } else {
            f->unlinked = 1;
        }
        break;
    }
    ready_push(e, f);
}
