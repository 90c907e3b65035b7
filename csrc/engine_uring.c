/*
 * engine_uring.c -- the io_uring executor.
 *
 * Holds the ring's setup (lsio__uring_setup: feature probe, direct descriptors,
 * registered buffers, the wake-up eventfd), the turning of steps into SQEs (user_data =
 * the step: object pointer | kind), the processing of CQEs into lsio__step_done, the
 * cancelling in the kernel of a cancelled file's transfers (uring_kcancel), the loop that
 * keeps the ring full (lsio__uring_drive) and the optional ring thread.
 *
 * Owns: the ring (torn down by lsio_engine_free through lsio__uring_drain_free), which
 * only the thread holding reap_mu touches -- a reaper, lsio_engine_free, or the ring
 * thread for the engine's whole life -- and the eventfd read armed on it.  A read's pool
 * block belongs to the kernel from its SQE until its CQE is processed here.
 *
 * Built with -DLSIO_NO_URING (lsio_ray/_build.py does so when liburing's headers are
 * missing, or when LSIO_NO_URING=1 is set), this file compiles to the stubs at its end:
 * lsio__uring_setup answers -ENOSYS, so LSIO_BACKEND_AUTO takes pread and
 * LSIO_BACKEND_URING fails to start; lsio_have_uring() tells callers which build this is.
 */
#define _GNU_SOURCE
#include "engine_internal.h"

#include <errno.h>
#include <stdint.h>

/* 1 when the io_uring backend is built in, 0 for a pread-only build (lsio.h) */
int lsio_have_uring(void) {
#ifdef LSIO_NO_URING
    return 0;
#else
    return 1;
#endif
}

#ifndef LSIO_NO_URING
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define UD_CANCEL 8 /* user_data of IORING_OP_ASYNC_CANCEL requests (kind S_WAKE, no object) */

static void *step_ptr(int kind, void *obj) { return (void *)((uintptr_t)obj | (uintptr_t)kind); }

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
            io_uring_prep_openat_direct(sqe, AT_FDCWD, p, lsio__open_flags(f), create_mode(f), (unsigned)f->fd);
        else io_uring_prep_openat(sqe, AT_FDCWD, p, lsio__open_flags(f), create_mode(f));
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
 * result when it was done already) and lsio__step_done drops it as for any cancelled
 * file.  Called with mu held by the thread driving the ring. */
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

/* Process the CQEs that are there, at most `max` of them (0: all). Called with mu held.
 * Returns how many. */
unsigned lsio__uring_process(lsio_engine *e, unsigned max) {
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&e->ring, head, cqe) {
        if (max && n == max) break;
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
            lsio__step_done(e, kind, r->f, r, cqe->res);
        } else {
            lsio__step_done(e, kind, obj, NULL, cqe->res);
        }
    }
    io_uring_cq_advance(&e->ring, n);
    e->cqes += n;
    return n;
}

#define STARVED_POLL_MS 2 /* a starved ring looks at the pool again at least this often */

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Turn every step that may start now into SQEs (and the kernel cancels due).  Called
 * with mu held by the thread driving the ring. */
static void uring_refill(lsio_engine *e) {
    step s;
    if (e->kcancel) uring_kcancel(e);
    while (io_uring_sq_space_left(&e->ring) >= 3 && lsio__next_step(e, &s)) {
        lsio__step_start(e, &s);
        if (s.kind == S_FIXUP) { /* no such io_uring op: a syscall or two, unlocked */
            pthread_mutex_unlock(&e->mu);
            int64_t res = lsio__run_sync(e, &s);
            pthread_mutex_lock(&e->mu);
            lsio__step_done(e, s.kind, s.f, s.r, res);
            continue;
        }
        uring_prep(e, &s);
    }
}

/* One io_uring_enter: submit what is prepared and, unless `wait` is 0, wait for a
 * completion (at most *tsp).  Called with mu held; drops it around the syscall, and
 * counts the call and the time spent in it (lsio_stats.enter_ns). */
static void uring_enter(lsio_engine *e, int wait, struct __kernel_timespec *tsp) {
    pthread_mutex_unlock(&e->mu);
    uint64_t t0 = mono_ns();
    int rc;
    if (wait) {
        struct io_uring_cqe *cqe;
        rc = io_uring_submit_and_wait_timeout(&e->ring, &cqe, 1, tsp, NULL);
    } else {
        rc = io_uring_submit(&e->ring);
    }
    uint64_t t1 = mono_ns();
    (void)rc; /* -ETIME / -EINTR: the caller loops and looks again */
    pthread_mutex_lock(&e->mu);
    e->enter_ns += t1 - t0;
    e->submit_calls++;
    e->wait_calls += wait != 0;
}

/* Drive the ring until at least min_complete completions are ready, nothing is pending,
 * or the deadline passes.  Called with mu and reap_mu held; drops mu while waiting.
 *
 * Every pass refills the ring from what the last one completed and submits the refills
 * in the same io_uring_enter that waits for the next completion, so the ring stays at
 * depth while it is driven.  The caller (lsio_reap) then goes away -- to Python, for a
 * whole batch -- and nothing drives the ring until it comes back: so before returning,
 * the slots of the completions that came with the last call are refilled and submitted
 * too (one more io_uring_enter, without waiting).  Without that the ring ran that much
 * below depth for as long as the caller was away.  (A reap with min_complete 0 only
 * looks: it issues what was due before the call, and what its completions unblock
 * waits for the next call, so a caller can act between a statx and its open.) */
void lsio__uring_drive(lsio_engine *e, uint32_t min_complete, int timeout_ms, int forever) {
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    unsigned refill_every = e->cfg.depth / 8 ? e->cfg.depth / 8 : 1;
    unsigned unseen = 0; /* completions processed since the last broadcast */
    for (;;) {
        uring_refill(e);
        uring_arm_wake(e);
        /* wake_req: lsio_wake asked the reaper to return.  (The eventfd alone only
         * breaks the kernel wait; without this the loop went back to sleep.) */
        int done = forever ? e->shutting_down
                           : (e->cq.len >= min_complete || e->files_pending == 0 || e->wake_req ||
                              (deadline >= 0 && now_ms() >= deadline));
        if (done) {
            uring_enter(e, 0, NULL);
        } else {
            struct __kernel_timespec ts, *tsp = NULL;
            if (deadline >= 0 || e->starved) {
                int64_t left = deadline >= 0 ? deadline - now_ms() : STARVED_POLL_MS;
                if (left < 0) left = 0;
                /* starved: releases wake this wait only in bulk (refilled) */
                if (e->starved && left > STARVED_POLL_MS) left = STARVED_POLL_MS;
                ts.tv_sec = left / 1000;
                ts.tv_nsec = (left % 1000) * 1000000;
                tsp = &ts;
            }
            uring_enter(e, 1, tsp);
        }
        /* Refill after every depth/8 completions, not after all of them: a burst of 31
         * CQEs processed before the first refill leaves the device idle for the whole
         * burst's processing, and the next burst then arrives (and completes) together
         * again -- the ring runs in lock-step.  On a Firecracker virtio disk that cost W1
         * a fifth of fio's rate (4 KiB random O_DIRECT at depth 32: 31 CQEs per
         * io_uring_enter, 0.74-0.81x fio).  Refilling every depth/8 keeps the device fed
         * (every 4 at depth 32: ~0.95x fio at 0.35 cores; every 8: ~0.9x; every 1, as
         * fio does: no faster, 0.48 cores; benchmarks/results/raw-io.md, run 5).  A pass
         * that returns to the caller processes them all, so nothing waits unprocessed
         * while it is away. */
        unsigned n = lsio__uring_process(e, done ? 0 : refill_every);
        /* ...but wake the reapers once a burst is processed (or a depth's worth), not
         * every depth/8: each wake hands a Python reaper a batch, and batches of 4 cost
         * the warm crop stream ~2% more CPU per crop */
        unseen += n;
        if (unseen && (done || unseen >= e->cfg.depth || !io_uring_cq_ready(&e->ring))) {
            pthread_cond_broadcast(&e->cq_cond);
            unseen = 0;
        }
        if (done) {
            /* keep the ring full while the caller is away -- not for a reap that asked for
             * nothing (min_complete 0): that one only looks, as it always did */
            if (n && min_complete && !forever && !e->shutting_down) {
                uring_refill(e);
                if (io_uring_sq_ready(&e->ring)) uring_enter(e, 0, NULL);
            }
            return;
        }
    }
}

/* cfg.ring_thread: this thread owns the ring (reap_mu) for the engine's whole life.  The
 * eventfd read armed in lsio__uring_drive wakes it for submits, releases and shutdown. */
void *lsio__ring_thread_main(void *arg) {
    lsio_engine *e = arg;
    pthread_mutex_lock(&e->reap_mu);
    pthread_mutex_lock(&e->mu);
    lsio__uring_drive(e, 0, -1, 1);
    pthread_mutex_unlock(&e->mu);
    pthread_mutex_unlock(&e->reap_mu);
    return NULL;
}

/* ------------------------------------------------------------------ setup */

int lsio__uring_setup(lsio_engine *e) {
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

/* ------------------------------------------------------------------ teardown */

/* Close the ring and the eventfd, whichever of them exist (a failed setup leaves either). */
void lsio__uring_teardown(lsio_engine *e) {
    if (e->ring_ok) io_uring_queue_exit(&e->ring);
    e->ring_ok = 0;
    if (e->efd >= 0) close(e->efd);
    e->efd = -1;
}

/* lsio_engine_free, holding reap_mu and mu, every file op cancelled: drive until every
 * file is closed (and temp files unlinked) and the kernel holds nothing of ours; then
 * complete the eventfd read so it cannot touch efd_buf after the ring is gone, and tear
 * the ring down. */
void lsio__uring_drain_free(lsio_engine *e) {
    while (e->files_pending > 0 || e->inflight > 0 || e->kcancels_inflight > 0)
        lsio__uring_drive(e, UINT32_MAX, 100, 0);
    while (e->wake_armed) {
        uint64_t one = 1;
        ssize_t w = write(e->efd, &one, sizeof one);
        (void)w;
        pthread_mutex_unlock(&e->mu);
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 10000000};
        io_uring_submit_and_wait_timeout(&e->ring, &cqe, 1, &ts, NULL);
        pthread_mutex_lock(&e->mu);
        lsio__uring_process(e, 0);
    }
    lsio__uring_teardown(e);
}

#else /* LSIO_NO_URING: no ring to set up; nothing below setup is ever reached */

int lsio__uring_setup(lsio_engine *e) {
    (void)e;
    return -ENOSYS;
}

unsigned lsio__uring_process(lsio_engine *e, unsigned max) {
    (void)e, (void)max;
    return 0;
}

void lsio__uring_drive(lsio_engine *e, uint32_t min_complete, int timeout_ms, int forever) {
    (void)e, (void)min_complete, (void)timeout_ms, (void)forever;
}

void *lsio__ring_thread_main(void *arg) { return arg; }

void lsio__uring_teardown(lsio_engine *e) { (void)e; }

void lsio__uring_drain_free(lsio_engine *e) { (void)e; }

#endif
