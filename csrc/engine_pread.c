/*
 * engine_pread.c -- the pread executor, and the syscalls of every step.
 *
 * Holds lsio__run_sync, which runs one step as plain syscalls (statx, open, pread,
 * pwrite, fsync, close, rename/unlink, the mode fix-up of a temp file), and the pread
 * backend's `threads` workers (lsio__worker_main): each takes steps under mu, drops the
 * lock, makes the syscalls, and takes the lock again to complete them.  The io_uring
 * executor runs its S_FIXUP steps through lsio__run_sync too, and opens files with
 * lsio__open_flags.  Also here: how a replaced file's mode is kept (keep_mode).
 *
 * Owns: the worker threads' loop (they are created and joined by engine.c).  A step's
 * buffer and descriptor stay the scheduler's and the completion code's: the worker only
 * uses them between taking the step and handing its result to lsio__step_done.
 */
#define _GNU_SOURCE
#include "engine_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int lsio__open_flags(const file_op *f) {
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

/* ------------------------------------------------------------------ pread executor */

int64_t lsio__run_sync(lsio_engine *e, const step *s) {
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
            res = open(f->tmp_path, lsio__open_flags(f), create_mode(f));
            if (res < 0) return -errno;
            f->fixup_err = f->keep_mode ? keep_mode(f, (int)res, 0) : 0;
            return res;
        }
        int fd = open(f->path, lsio__open_flags(f), 0644);
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

void *lsio__worker_main(void *arg) {
    lsio_engine *e = arg;
    uint32_t share = e->cfg.depth / e->cfg.threads;
    if (share < 1) share = 1;
    if (share > WORKER_BATCH) share = WORKER_BATCH;
    step s[WORKER_BATCH];
    int64_t res[WORKER_BATCH];
    pthread_mutex_lock(&e->mu);
    while (!e->shutting_down) {
        uint32_t n = 0;
        while (n < share && lsio__next_step(e, &s[n])) {
            lsio__step_start(e, &s[n]);
            n++;
        }
        if (n == 0) {
            pthread_cond_wait(&e->work_cond, &e->mu);
            continue;
        }
        if (n == share) pthread_cond_signal(&e->work_cond);
        pthread_mutex_unlock(&e->mu);
        for (uint32_t i = 0; i < n; i++) res[i] = lsio__run_sync(e, &s[i]);
        pthread_mutex_lock(&e->mu);
        for (uint32_t i = 0; i < n; i++) lsio__step_done(e, s[i].kind, s[i].f, s[i].r, res[i]);
        pthread_cond_signal(&e->work_cond); /* completions may have unblocked new steps */
        pthread_cond_broadcast(&e->cq_cond);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}
