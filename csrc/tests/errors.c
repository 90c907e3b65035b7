/*
 * errors.c -- how failures are reported, on every backend variant.
 *
 *  - A missing file gives exactly ONE completion: flags LSIO_C_FILE_ERROR, error -ENOENT,
 *    the tag of its first range, no buffer -- whatever its number of ranges (1, 5, 1000),
 *    with explicit ranges (open fails; with io_uring linked open, the linked read is
 *    cancelled too), with ranges that need the size (statx fails) and with O_DIRECT.
 *    Files next to it in the same batch are unaffected.
 *  - Ranges past EOF fail with LSIO_E_PAST_EOF for that range alone and report
 *    file_size, while the file's other ranges succeed -- both when the engine knows the
 *    size up front (statx) and when it finds EOF by reading (a range straddling EOF, one
 *    entirely past it, first range of a linked open), and with O_DIRECT.
 *  - Permission denied.  Tests run as root, and root reads a chmod 000 file, so:
 *      (a) a path under a regular file ("file/sub") fails to open: ONE FILE_ERROR with
 *          -ENOTDIR;
 *      (b) a directory is not a regular file: refused before any read, ONE FILE_ERROR
 *          with -EISDIR (see special.c for FIFOs, devices and /proc files);
 *      (c) real EACCES: a forked child drops to uid/gid 65534 (when run as root) and reads
 *          a chmod 000 file (ONE FILE_ERROR, -EACCES) and writes a file into a 0555
 *          directory (ONE FILE_ERROR, -EACCES, nothing created).
 *  - A range larger than the whole pool fails alone with LSIO_E_TOO_BIG.
 *  - Ranges at the int64 edges (offset or end near INT64_MAX/MIN): each fails alone
 *    (PAST_EOF, TOO_BIG or -EINVAL), without arithmetic overflow (UBSan).
 *  - Malformed batches are refused with -EINVAL (or -ENOENT for an empty path) and queue
 *    nothing; bad configurations are refused by lsio_engine_new without leaks.
 */
#include "helpers.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char good_path[256], small_path[256], missing_path[256], notdir_path[256], dir_path[256];
static uint8_t *good, *small;
#define GOOD_SIZE 50000
#define SMALL_SIZE 10000

/* Reap everything until nothing is pending; returns the count (or -1). Releases buffers
 * after checking good ranges against `want` when set. */
static int reap_all(lsio_engine *e, lsio_completion *all, int cap) {
    int n = 0;
    for (;;) {
        lsio_completion out[32];
        int k = t_reap(e, out, 32, 1, 10000);
        if (k < 0) return -1;
        if (k == 0) {
            lsio_stats st;
            lsio_engine_stats(e, &st);
            if (st.ranges_pending == 0 && st.completions_ready == 0) return n;
            fprintf(stderr, "[%s] reap timed out with %llu ranges pending\n", t_ctx,
                    (unsigned long long)st.ranges_pending);
            return -1;
        }
        for (int i = 0; i < k; i++) {
            if (n >= cap) {
                fprintf(stderr, "[%s] more than %d completions\n", t_ctx, cap);
                return -1;
            }
            all[n++] = out[i];
        }
    }
}

static int release_all(lsio_engine *e, lsio_completion *all, int n) {
    for (int i = 0; i < n; i++)
        if (all[i].buf_id) T_CHECK(lsio_release(e, all[i].buf_id) == 0, "release");
    return T_EXIT_PASS;
}

/* ------------------------------------------------------------------ missing file */

static int test_missing(const t_variant *v) {
    static const uint32_t nr[] = {1, 5, 1000};
    int skip;
    lsio_engine *e = t_engine(v, 1 << 20, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    lsio_completion *all = calloc(4096, sizeof *all);
    for (int mode = 0; mode < 3; mode++) {       /* explicit, needs size, O_DIRECT */
        for (int k = 0; k < 3; k++) {
            t_batch b;
            tb_init(&b);
            /* a good file before and after the missing one, same batch */
            tb_file(&b, good_path, LSIO_OP_READ, 0, 7);
            tb_range(&b, 10, 100, 1, NULL);
            tb_file(&b, missing_path, LSIO_OP_READ, mode == 2 ? LSIO_F_DIRECT : 0, 8);
            for (uint32_t j = 0; j < nr[k]; j++) {
                if (mode == 1 && j == nr[k] / 2) tb_range(&b, -10, -1, 1000 + j, NULL);
                else tb_range(&b, j * 10, 10, 1000 + j, NULL);
            }
            tb_file(&b, good_path, LSIO_OP_READ, 0, 7);
            tb_range(&b, 0, -1, 2, NULL);
            T_CHECK(tb_submit(e, &b) == 0, "submit");
            int n = reap_all(e, all, 4096);
            T_CHECK(n == 3, "mode %d, %u ranges: %d completions, expected 3", mode, nr[k], n);
            int nerr = 0, ngood = 0;
            for (int i = 0; i < n; i++) {
                lsio_completion *c = &all[i];
                if (c->group == 8) {
                    nerr++;
                    T_CHECK(c->flags == LSIO_C_FILE_ERROR, "flags %u", c->flags);
                    T_CHECK(c->error == -ENOENT, "error %d (%s)", c->error, lsio_strerror(c->error));
                    T_CHECK(c->tag == 1000, "tag %llu: not the first range's", (unsigned long long)c->tag);
                    T_CHECK(c->buf_id == 0 && c->data == NULL, "a file error owns a buffer");
                } else {
                    ngood++;
                    T_CHECK(c->error == 0 && c->flags == 0, "good file: error %d", c->error);
                    T_CHECK(c->tag == 1 || c->tag == 2, "tag");
                    int64_t off = c->tag == 1 ? 10 : 0, len = c->tag == 1 ? 100 : GOOD_SIZE;
                    T_CHECK(c->offset == off && c->length == len, "good range");
                    T_CHECK(memcmp(c->data, good + off, (size_t)len) == 0, "good bytes");
                }
            }
            T_CHECK(nerr == 1 && ngood == 2, "%d file errors, %d good", nerr, ngood);
            if (release_all(e, all, n)) return T_EXIT_FAIL;
            if (t_check_idle(e)) return T_EXIT_FAIL;
            tb_free(&b);
        }
    }
    free(all);
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

/* ------------------------------------------------------------------ past EOF */

typedef struct {
    int64_t offset, length;
    int past; /* expect LSIO_E_PAST_EOF */
} rq;

static int test_past_eof(const t_variant *v) {
    /* explicit ranges only: the engine learns EOF by reading */
    static const rq explicit_ranges[] = {
        {9000, 2000, 1},          /* straddles EOF: first range (linked with the open) */
        {0, 100, 0},
        {20000, 10, 1},           /* entirely past EOF */
        {5000, 5000, 0},          /* exactly to EOF */
        {10000, 1, 1},            /* one byte at EOF */
        {10000, 0, 0},            /* empty at EOF: fine */
        {9999, 1, 0},             /* the last byte */
        {4096, 8192, 1},          /* aligned, past EOF */
    };
    /* with a size-dependent range: the size is known before any read */
    static const rq sized_ranges[] = {
        {0, -1, 0},
        {9000, 2000, 1},
        {-20000, -1, 1},          /* more than the whole file from the end */
        {-20000, 10, 1},
        {20000, -1, 1},           /* offset past EOF to the end */
        {-100, 50, 0},
        {10001, 0, 1},            /* empty, but past EOF */
        {3, 9997, 0},
    };
    int skip;
    lsio_engine *e = t_engine(v, 1 << 20, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    lsio_completion all[64];
    for (int mode = 0; mode < 3; mode++) { /* explicit; sized; sized + O_DIRECT */
        const rq *r = mode == 0 ? explicit_ranges : sized_ranges;
        int nr = 8;
        t_batch b;
        tb_init(&b);
        tb_file(&b, small_path, LSIO_OP_READ, mode == 2 ? LSIO_F_DIRECT : 0, 3);
        for (int i = 0; i < nr; i++) tb_range(&b, r[i].offset, r[i].length, (uint64_t)i, NULL);
        T_CHECK(tb_submit(e, &b) == 0, "submit");
        int n = reap_all(e, all, 64);
        T_CHECK(n == nr, "mode %d: %d completions for %d ranges", mode, n, nr);
        int seen[8] = {0};
        for (int i = 0; i < n; i++) {
            lsio_completion *c = &all[i];
            T_CHECK(c->tag < (uint64_t)nr && !seen[c->tag], "tag %llu", (unsigned long long)c->tag);
            seen[c->tag] = 1;
            const rq *q = &r[c->tag];
            T_CHECK(c->flags == 0, "mode %d range %llu: flags %u", mode,
                    (unsigned long long)c->tag, c->flags);
            if (q->past) {
                T_CHECK(c->error == LSIO_E_PAST_EOF, "mode %d range [%lld,%lld): error %d (%s)",
                        mode, (long long)q->offset, (long long)q->length, c->error,
                        lsio_strerror(c->error));
                T_CHECK(c->file_size == SMALL_SIZE, "mode %d range %llu: file_size %lld", mode,
                        (unsigned long long)c->tag, (long long)c->file_size);
                T_CHECK(c->buf_id == 0 && c->data == NULL, "an error owns a buffer");
            } else {
                int64_t off = q->offset < 0 ? SMALL_SIZE + q->offset : q->offset;
                int64_t len = q->length < 0 ? SMALL_SIZE - off : q->length;
                T_CHECK(c->error == 0, "mode %d range [%lld,%lld): error %d (%s)", mode,
                        (long long)q->offset, (long long)q->length, c->error,
                        lsio_strerror(c->error));
                T_CHECK(c->offset == off && c->length == len, "resolved range");
                if (len) T_CHECK(c->buf_id && memcmp(c->data, small + off, (size_t)len) == 0,
                                 "bytes of [%lld,+%lld)", (long long)off, (long long)len);
            }
        }
        if (release_all(e, all, n)) return T_EXIT_FAIL;
        if (t_check_idle(e)) return T_EXIT_FAIL;
        tb_free(&b);
    }
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

/* ------------------------------------------------------------------ ENOTDIR, EISDIR */

static int test_notdir_isdir(const t_variant *v) {
    int skip;
    lsio_engine *e = t_engine(v, 1 << 20, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    lsio_completion all[64];
    for (int sized = 0; sized < 2; sized++) {
        t_batch b;
        tb_init(&b);
        /* (a) a path under a regular file: the open fails */
        tb_file(&b, notdir_path, LSIO_OP_READ, 0, 1);
        tb_range(&b, sized ? 0 : 10, sized ? -1 : 10, 100, NULL);
        tb_range(&b, 20, 10, 101, NULL);
        tb_range(&b, 30, 10, 102, NULL);
        /* (b) a directory: refused as a whole before any read (not a regular file) */
        tb_file(&b, dir_path, LSIO_OP_READ, 0, 2);
        tb_range(&b, sized ? 0 : 10, sized ? -1 : 10, 200, NULL);
        tb_range(&b, 0, 1, 201, NULL);
        tb_range(&b, 0, 1, 202, NULL);
        T_CHECK(tb_submit(e, &b) == 0, "submit");
        int n = reap_all(e, all, 64);
        T_CHECK(n == 2, "%d completions (expected 1 for ENOTDIR + 1 for EISDIR)", n);
        for (int i = 0; i < n; i++) {
            lsio_completion *c = &all[i];
            T_CHECK(c->buf_id == 0, "an error owns a buffer");
            if (c->group == 1) {
                T_CHECK(c->flags == LSIO_C_FILE_ERROR && c->error == -ENOTDIR && c->tag == 100,
                        "ENOTDIR: flags %u error %d (%s) tag %llu", c->flags, c->error,
                        lsio_strerror(c->error), (unsigned long long)c->tag);
            } else {
                T_CHECK(c->flags == LSIO_C_FILE_ERROR && c->error == -EISDIR && c->tag == 200,
                        "EISDIR: flags %u error %d (%s) tag %llu", c->flags, c->error,
                        lsio_strerror(c->error), (unsigned long long)c->tag);
            }
        }
        if (t_check_idle(e)) return T_EXIT_FAIL;
        tb_free(&b);
    }
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

/* ------------------------------------------------------------------ EACCES */

static int eacces_checks(const t_variant *v, const char *noread, const char *rodir_file,
                         const char *rodir) {
    /* the EACCES must come from the file's mode and the directory's, not the path */
    T_CHECK(access(t_tmpdir(), X_OK) == 0, "%s is not searchable: %s", t_tmpdir(), strerror(errno));
    int skip;
    lsio_engine *e = t_engine(v, 1 << 20, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    lsio_completion all[64];
    static const char data[] = "data";
    t_batch b;
    tb_init(&b);
    tb_file(&b, noread, LSIO_OP_READ, 0, 1);
    for (int i = 0; i < 10; i++) tb_range(&b, i, 1, (uint64_t)i, NULL);
    tb_file(&b, rodir_file, LSIO_OP_WRITE_FILE, 0, 2);
    tb_range(&b, 0, 4, 20, data);
    tb_range(&b, 4, 4, 21, data);
    T_CHECK(tb_submit(e, &b) == 0, "submit");
    int n = reap_all(e, all, 64);
    T_CHECK(n == 2, "%d completions, expected one per file", n);
    for (int i = 0; i < n; i++) {
        lsio_completion *c = &all[i];
        T_CHECK(c->flags == LSIO_C_FILE_ERROR && c->error == -EACCES,
                "group %llu: flags %u error %d (%s)", (unsigned long long)c->group, c->flags,
                c->error, lsio_strerror(c->error));
        T_CHECK(c->tag == (c->group == 1 ? 0u : 20u), "tag %llu", (unsigned long long)c->tag);
    }
    T_CHECK(!t_path_exists(rodir_file), "file written into a read-only directory");
    T_CHECK(t_count_entries(rodir, NULL) == 0, "entries left in the read-only directory");
    if (t_check_idle(e)) return T_EXIT_FAIL;
    tb_free(&b);
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

static int test_eacces(const t_variant *v) {
    char noread[256], rodir[256], rodir_file[256];
    t_path(noread, sizeof noread, "eacces-noread");
    t_path(rodir, sizeof rodir, "eacces-rodir");
    t_path(rodir_file, sizeof rodir_file, "eacces-rodir/new");
    if (!t_path_exists(noread)) {
        T_CHECK(t_write_file(noread, "0123456789", 10) == 0, "write");
        T_CHECK(chmod(noread, 0) == 0, "chmod");
        T_CHECK(mkdir(rodir, 0555) == 0, "mkdir");
        T_CHECK(chmod(t_tmpdir(), 0755) == 0, "chmod tmpdir"); /* let uid 65534 in */
    }
    if (geteuid() != 0) return eacces_checks(v, noread, rodir_file, rodir);
    fflush(NULL);
    pid_t pid = fork();
    T_CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        /* root bypasses permission bits: become nobody for real EACCES */
        if (setgroups(0, NULL) || setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534)) {
            perror("drop privileges");
            _exit(T_EXIT_FAIL);
        }
        prctl(PR_SET_DUMPABLE, 1); /* LeakSanitizer needs it after the uid change */
        exit(eacces_checks(v, noread, rodir_file, rodir));
    }
    int status;
    T_CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
    T_CHECK(WIFEXITED(status), "child died (status %#x)", status);
    int rc = WEXITSTATUS(status);
    T_CHECK(rc == T_EXIT_PASS || rc == T_EXIT_SKIP, "unprivileged child failed (%d)", rc);
    return rc;
}

/* ------------------------------------------------------------------ too big, bad input */

static int test_too_big(const t_variant *v) {
    int skip;
    lsio_engine *e = t_engine(v, 16 << 10, 0, &skip); /* 16 KiB pool */
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    lsio_completion all[16];
    t_batch b;
    tb_init(&b);
    tb_file(&b, good_path, LSIO_OP_READ, 0, 1);
    tb_range(&b, 0, 16 << 10, 0, NULL);        /* exactly the pool: fine */
    tb_range(&b, 0, (16 << 10) + 1, 1, NULL);  /* one byte more: too big */
    tb_range(&b, 100, 10, 2, NULL);
    tb_range(&b, 0, -1, 3, NULL);              /* the whole 50000 B file: too big */
    T_CHECK(tb_submit(e, &b) == 0, "submit");
    int got = 0;
    while (got < 4) { /* release as we go: range 0 takes the whole pool */
        int n = t_reap(e, all, 16, 1, 10000);
        T_CHECK(n > 0, "reap returned %d after %d completions", n, got);
        for (int i = 0; i < n; i++, got++) {
            lsio_completion *c = &all[i];
            if (c->tag == 1 || c->tag == 3) {
                T_CHECK(c->error == LSIO_E_TOO_BIG && c->flags == 0 && !c->buf_id,
                        "tag %llu: error %d (%s)", (unsigned long long)c->tag, c->error,
                        lsio_strerror(c->error));
            } else {
                T_CHECK(c->error == 0, "tag %llu: error %d", (unsigned long long)c->tag, c->error);
                T_CHECK(memcmp(c->data, good + c->offset, (size_t)c->length) == 0, "bytes");
            }
        }
        if (release_all(e, all, n)) return T_EXIT_FAIL;
    }
    if (t_check_idle(e)) return T_EXIT_FAIL;
    tb_free(&b);
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

/* Ranges at the edges of int64: no arithmetic overflow (UBSan would abort), each fails
 * alone with a sensible error, and the file's normal range still succeeds. */
static int test_huge(const t_variant *v) {
    int skip;
    lsio_engine *e = t_engine(v, 1 << 20, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    static const int64_t q[][2] = {
        {1, INT64_MAX}, {INT64_MAX, 1}, {INT64_MAX, 0}, {INT64_MAX, -1}, {INT64_MIN, -1},
        {INT64_MIN, 5}, {-INT64_MAX, 1}, {INT64_MAX - 4096, 8192}, {100, 10},
    };
    int nq = sizeof q / sizeof q[0];
    lsio_completion out[32];
    for (int mode = 0; mode < 3; mode++) { /* explicit only (where valid), sized, direct */
        t_batch b;
        tb_init(&b);
        tb_file(&b, small_path, LSIO_OP_READ, mode == 2 ? LSIO_F_DIRECT : 0, 1);
        int n = 0;
        for (int i = 0; i < nq; i++) {
            if (mode == 0 && (q[i][0] < 0 || q[i][1] < 0)) continue;
            tb_range(&b, q[i][0], q[i][1], (uint64_t)i, NULL);
            n++;
        }
        if (mode) tb_range(&b, 0, -1, 99, NULL), n++;
        T_CHECK(tb_submit(e, &b) == 0, "submit");
        int got = 0;
        while (got < n) {
            int k = t_reap(e, out, 32, 1, 10000);
            T_CHECK(k > 0, "mode %d: reap returned %d after %d of %d", mode, k, got, n);
            for (int i = 0; i < k; i++, got++) {
                lsio_completion *c = &out[i];
                if (c->tag == 8 || c->tag == 99) {
                    T_CHECK(c->error == 0, "mode %d: the normal range failed: %d", mode, c->error);
                    T_CHECK(memcmp(c->data, small + c->offset, (size_t)c->length) == 0, "bytes");
                } else if (c->tag == 2 && mode == 0) {
                    /* empty range far past EOF, size unknown: nothing to read */
                    T_CHECK(c->error == 0 || c->error == LSIO_E_PAST_EOF, "error %d", c->error);
                } else {
                    T_CHECK(c->error == LSIO_E_PAST_EOF || c->error == LSIO_E_TOO_BIG ||
                                c->error == -EINVAL,
                            "mode %d range [%lld,%lld): error %d (%s)", mode,
                            (long long)q[c->tag][0], (long long)q[c->tag][1], c->error,
                            lsio_strerror(c->error));
                    T_CHECK(!(c->flags & LSIO_C_FILE_ERROR), "a range error became a file error");
                }
                if (c->buf_id) T_CHECK(lsio_release(e, c->buf_id) == 0, "release");
            }
        }
        if (t_check_idle(e)) return T_EXIT_FAIL;
        tb_free(&b);
    }
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

static int test_bad_input(const t_variant *v) {
    int skip;
    lsio_engine *e = t_engine(v, 1 << 20, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    lsio_file f = {.group = 1, .path_off = 0, .kind = LSIO_OP_READ, .flags = 0, .nranges = 1};
    lsio_range r = {.offset = 0, .length = 10, .tag = 1, .data = NULL};
    char p[300];
    size_t plen = strlen(good_path) + 1;
    memcpy(p, good_path, plen);
    T_CHECK(lsio_submit(e, &f, 1, &r, 2, p, plen) == -EINVAL, "nranges mismatch");
    T_CHECK(lsio_submit(e, &f, 1, &r, 0, p, plen) == -EINVAL, "too few ranges");
    f.path_off = (uint32_t)plen;
    T_CHECK(lsio_submit(e, &f, 1, &r, 1, p, plen) == -EINVAL, "path_off past the blob");
    f.path_off = 0;
    T_CHECK(lsio_submit(e, &f, 1, &r, 1, p, plen - 1) == -EINVAL, "unterminated path");
    T_CHECK(lsio_submit(e, &f, 1, &r, 1, "", 1) == -ENOENT, "empty path");
    f.kind = 3;
    T_CHECK(lsio_submit(e, &f, 1, &r, 1, p, plen) == -EINVAL, "bad kind");
    f.kind = LSIO_OP_READ;
    r.length = -2;
    T_CHECK(lsio_submit(e, &f, 1, &r, 1, p, plen) == -EINVAL, "length -2");
    f.kind = LSIO_OP_WRITE_RANGES;
    r.length = 10;
    T_CHECK(lsio_submit(e, &f, 1, &r, 1, p, plen) == -EINVAL, "write without data");
    r.data = "0123456789";
    r.offset = -1;
    T_CHECK(lsio_submit(e, &f, 1, &r, 1, p, plen) == -EINVAL, "write at a negative offset");
    r.offset = 0;
    r.length = -1;
    T_CHECK(lsio_submit(e, &f, 1, &r, 1, p, plen) == -EINVAL, "write of length -1");
    T_CHECK(lsio_submit(e, NULL, 0, NULL, 0, NULL, 0) == 0, "empty batch");
    lsio_stats st;
    lsio_engine_stats(e, &st);
    T_CHECK(st.files_pending == 0 && st.ranges_pending == 0, "a refused batch was queued");
    lsio_completion c;
    T_CHECK(t_reap(e, &c, 1, 1, 100) == 0, "completion for a refused batch");
    if (t_check_idle(e)) return T_EXIT_FAIL;
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

/* lsio_engine_new refuses bad configurations without leaking memory or descriptors. */
static int test_bad_config(void) {
    t_ctx = "bad config";
    int fds0 = t_count_fds(), err = 0;
    lsio_config cfg;
    lsio_config_default(&cfg);
    cfg.backend = 7;
    T_CHECK(lsio_engine_new(&cfg, &err) == NULL && err == -EINVAL, "backend 7: err %d", err);
    for (int b = LSIO_BACKEND_AUTO; b <= LSIO_BACKEND_PREAD; b++) {
        lsio_config_default(&cfg);
        cfg.backend = b;
        cfg.pool_bytes = (uint64_t)1 << 62; /* more 4 KiB blocks than the pool can index */
        err = 0;
        T_CHECK(lsio_engine_new(&cfg, &err) == NULL && err < 0, "backend %d, 4 EiB pool: err %d",
                b, err);
    }
    /* absurd sizes are refused up front: no 4 GiB slot table for max_open = 10^9, no
     * 10^9 threads, no pool larger than the machine (checked by the time and the memory
     * it takes: a refusal must not allocate first) */
    struct {
        const char *what;
        uint32_t depth, threads, max_open;
        uint64_t pool;
        int32_t reg, fixed, link, ring;
    } bad[] = {
        {"depth 10^9", 1000000000u, 0, 0, 0, -1, -1, -1, 0},
        {"depth max+1", LSIO_MAX_DEPTH + 1, 0, 0, 0, -1, -1, -1, 0},
        {"threads 10^9", 0, 1000000000u, 0, 0, -1, -1, -1, 0},
        {"threads max+1", 0, LSIO_MAX_THREADS + 1, 0, 0, -1, -1, -1, 0},
        {"max_open 10^9", 0, 0, 1000000000u, 0, -1, -1, -1, 0},
        {"max_open max+1", 0, 0, LSIO_MAX_OPEN_FILES + 1, 0, -1, -1, -1, 0},
        {"pool 1 PiB", 0, 0, 0, (uint64_t)1 << 50, -1, -1, -1, 0},
        {"pool max+1", 0, 0, 0, (uint64_t)LSIO_MAX_POOL_BYTES + 1, -1, -1, -1, 0},
        {"pool > RAM", 0, 0, 0, 0, -1, -1, -1, 0}, /* set below */
        {"register_buffers 2", 0, 0, 0, 0, 2, -1, -1, 0},
        {"fixed_files -2", 0, 0, 0, 0, -1, -2, -1, 0},
        {"link_open 9", 0, 0, 0, 0, -1, -1, 9, 0},
        {"ring_thread 3", 0, 0, 0, 0, -1, -1, -1, 3},
    };
    uint64_t ram = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    bad[8].pool = ram + ((uint64_t)1 << 30);
    for (int b = LSIO_BACKEND_AUTO; b <= LSIO_BACKEND_PREAD; b++) {
        for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            if (bad[i].pool > (uint64_t)LSIO_MAX_POOL_BYTES && i == 8) continue; /* > 1 TiB RAM */
            lsio_config_default(&cfg);
            cfg.backend = b;
            if (bad[i].depth) cfg.depth = bad[i].depth;
            if (bad[i].threads) cfg.threads = bad[i].threads;
            if (bad[i].max_open) cfg.max_open = bad[i].max_open;
            if (bad[i].pool) cfg.pool_bytes = bad[i].pool;
            cfg.register_buffers = bad[i].reg;
            cfg.fixed_files = bad[i].fixed;
            cfg.link_open = bad[i].link;
            cfg.ring_thread = bad[i].ring;
            struct rusage ru0, ru1;
            getrusage(RUSAGE_SELF, &ru0);
            int64_t t0 = t_now_ms();
            err = 0;
            lsio_engine *bad_e = lsio_engine_new(&cfg, &err);
            int64_t ms = t_now_ms() - t0;
            getrusage(RUSAGE_SELF, &ru1);
            if (bad_e) lsio_engine_free(bad_e);
            T_CHECK(!bad_e && err == -EINVAL, "backend %d, %s: accepted (err %d)", b, bad[i].what, err);
            T_CHECK(ms < 1000, "backend %d, %s: refused after %lld ms", b, bad[i].what, (long long)ms);
            T_CHECK(ru1.ru_maxrss - ru0.ru_maxrss < 64 * 1024, "backend %d, %s: max RSS +%ld KiB",
                    b, bad[i].what, ru1.ru_maxrss - ru0.ru_maxrss);
        }
    }
    /* the bounds themselves are accepted (pread: no ring of that size to set up) */
    lsio_config_default(&cfg);
    cfg.backend = LSIO_BACKEND_PREAD;
    cfg.depth = LSIO_MAX_DEPTH;
    cfg.max_open = LSIO_MAX_OPEN_FILES;
    cfg.threads = 8;
    lsio_engine *edge = lsio_engine_new(&cfg, &err);
    T_CHECK(edge && err == 0, "depth %d, max_open %d refused: %d", LSIO_MAX_DEPTH,
            LSIO_MAX_OPEN_FILES, err);
    lsio_engine_free(edge);
    /* defaults (cfg NULL) and zeros are fixed up */
    lsio_engine *e = lsio_engine_new(NULL, &err);
    T_CHECK(e && err == 0, "default engine: %d", err);
    lsio_engine_free(e);
    memset(&cfg, 0, sizeof cfg);
    cfg.backend = LSIO_BACKEND_PREAD;
    e = lsio_engine_new(&cfg, &err);
    T_CHECK(e && err == 0, "all-zero config: %d", err);
    lsio_stats st;
    lsio_engine_stats(e, &st);
    T_CHECK(st.pool_bytes == 4096, "pool_bytes %llu for 0", (unsigned long long)st.pool_bytes);
    lsio_engine_free(e);
    lsio_engine_free(NULL);
    T_CHECK(t_count_fds() == fds0, "descriptors leaked: %d -> %d", fds0, t_count_fds());
    return T_EXIT_PASS;
}

int main(void) {
    t_path(good_path, sizeof good_path, "good");
    t_path(small_path, sizeof small_path, "small");
    t_path(missing_path, sizeof missing_path, "no-such-file");
    t_path(notdir_path, sizeof notdir_path, "good/sub");
    t_path(dir_path, sizeof dir_path, "a-directory");
    good = t_make_file(good_path, GOOD_SIZE, 1);
    small = t_make_file(small_path, SMALL_SIZE, 2);
    if (!good || !small || mkdir(dir_path, 0755)) return T_EXIT_FAIL;
    int skipped = 0;
    char ctx[128];
    if (test_bad_config()) return T_EXIT_FAIL;
    for (int i = 0; i < t_nvariants_all; i++) {
        const t_variant *v = &t_variants_all[i];
        snprintf(ctx, sizeof ctx, "%s missing", v->name), t_ctx = ctx;
        T_RUN(test_missing(v), skipped);
        snprintf(ctx, sizeof ctx, "%s past-eof", v->name), t_ctx = ctx;
        T_RUN(test_past_eof(v), skipped);
        snprintf(ctx, sizeof ctx, "%s notdir/isdir", v->name), t_ctx = ctx;
        T_RUN(test_notdir_isdir(v), skipped);
        snprintf(ctx, sizeof ctx, "%s eacces", v->name), t_ctx = ctx;
        T_RUN(test_eacces(v), skipped);
        snprintf(ctx, sizeof ctx, "%s too-big", v->name), t_ctx = ctx;
        T_RUN(test_too_big(v), skipped);
        snprintf(ctx, sizeof ctx, "%s huge ranges", v->name), t_ctx = ctx;
        T_RUN(test_huge(v), skipped);
        snprintf(ctx, sizeof ctx, "%s bad-input", v->name), t_ctx = ctx;
        T_RUN(test_bad_input(v), skipped);
    }
    free(good);
    free(small);
    return skipped == 7 * t_nvariants_all ? T_EXIT_SKIP : T_EXIT_PASS;
}
