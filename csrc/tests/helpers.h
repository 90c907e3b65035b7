/*
 * helpers.h -- shared code for the C core's tests (the programs in csrc/tests/).
 *
 * Style of liburing's test/ directory: every test is a small program that exits with
 * T_EXIT_PASS (0), T_EXIT_FAIL (1) or T_EXIT_SKIP (77); runtests.sh runs them all.
 * Tests use real files in one mkdtemp directory under /tmp (t_tmpdir), removed at exit
 * by the process that made it, and run every backend variant where that makes sense.
 */
#ifndef LSIO_TEST_HELPERS_H
#define LSIO_TEST_HELPERS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../lsio.h"

enum t_status {
    T_EXIT_PASS = 0,
    T_EXIT_FAIL = 1,
    T_EXIT_SKIP = 77,
};

/* The variant being run, for failure messages. */
extern const char *t_ctx;

/* Check a condition; on failure print where and why, and return T_EXIT_FAIL from the
 * enclosing function (which must return int). */
#define T_CHECK(cond, ...)                                                                   \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "%s:%d [%s]: check failed: %s: ", __FILE__, __LINE__,            \
                    t_ctx ? t_ctx : "-", #cond);                                             \
            fprintf(stderr, __VA_ARGS__);                                                    \
            fputc('\n', stderr);                                                             \
            return T_EXIT_FAIL;                                                              \
        }                                                                                    \
    } while (0)

/* Run a sub-test returning T_EXIT_*: propagate a failure, remember a skip. */
#define T_RUN(expr, skipped)                                                                 \
    do {                                                                                     \
        int t_rc_ = (expr);                                                                  \
        if (t_rc_ == T_EXIT_SKIP) (skipped)++;                                               \
        else if (t_rc_ != T_EXIT_PASS) return T_EXIT_FAIL;                                   \
    } while (0)

/* ---- temp files */
/* The test's directory (made on first use, removed with everything in it at exit). */
const char *t_tmpdir(void);
/* out = t_tmpdir() + "/" + formatted name; returns out. */
char *t_path(char *out, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Deterministic contents: n bytes from seed (malloc'd). */
uint8_t *t_pattern(uint64_t n, uint32_t seed);
/* Create/replace path with n bytes of data. Returns 0 or -errno. */
int t_write_file(const char *path, const void *data, uint64_t n);
/* Make a file of n pattern bytes; returns the contents (malloc'd), NULL on error. */
uint8_t *t_make_file(const char *path, uint64_t n, uint32_t seed);
/* Read a whole file (malloc'd, *n set); NULL on error. */
uint8_t *t_read_file(const char *path, uint64_t *n);
/* Entries of dir whose name contains sub (all entries but . and .. when sub is NULL). */
int t_count_entries(const char *dir, const char *sub);
int t_path_exists(const char *path);
/* Open file descriptors of this process (entries of /proc/self/fd, minus the one used). */
int t_count_fds(void);
int64_t t_now_ms(void);
/* Available memory in bytes (MemAvailable, bounded by the cgroup's memory.max). */
uint64_t t_mem_available(void);

/* ---- engines */
typedef struct {
    const char *name;
    int backend;
    int fixed_files;      /* lsio_config fields; -1 = engine default */
    int link_open;
    int register_buffers;
    int ring_thread;      /* 1: the engine's own C thread drives the ring */
} t_variant;

/* uring (defaults: fixed files + linked open), uring without fixed files, without linked
 * open, with registered buffers, with the ring thread; pread. */
extern const t_variant t_variants_all[];
extern const int t_nvariants_all;
/* uring (defaults) and pread. */
extern const t_variant t_variants_basic[];
extern const int t_nvariants_basic;
/* uring (defaults), uring with the ring thread, pread: for the scheduling tests. */
extern const t_variant t_variants_sched[];
extern const int t_nvariants_sched;

/* New engine for variant v (depth 0 = default).  Returns NULL with *skip = 1 when the
 * backend is not available here (io_uring refused), NULL with *skip = 0 on a real error. */
lsio_engine *t_engine(const t_variant *v, uint64_t pool_bytes, uint32_t depth, int *skip);
/* The same with max_open and (pread) threads too (0 = default). */
lsio_engine *t_engine_ex(const t_variant *v, uint64_t pool_bytes, uint32_t depth,
                         uint32_t max_open, uint32_t threads, int *skip);

/* Once every completion was reaped and every buffer released: one more lsio_reap
 * (min 1) must return 0 as soon as the files are closed (nothing pending), and then the
 * stats must show an idle engine (nothing pending, in flight, open or out). */
int t_check_idle(lsio_engine *e);

/* ---- batch builder */
typedef struct {
    lsio_file *files;
    uint32_t nfiles, cap_files;
    lsio_range *ranges;
    uint64_t nranges, cap_ranges;
    char *paths;
    uint64_t paths_len, cap_paths;
} t_batch;

void tb_init(t_batch *b);
void tb_free(t_batch *b);
void tb_reset(t_batch *b);
/* Start a file op (following tb_range calls add to it). */
void tb_file(t_batch *b, const char *path, uint32_t kind, uint32_t flags, uint64_t group);
void tb_range(t_batch *b, int64_t offset, int64_t length, uint64_t tag, const void *data);
int tb_submit(lsio_engine *e, const t_batch *b);

/* lsio_reap that treats a negative return as a test failure (prints it, returns it). */
int t_reap(lsio_engine *e, lsio_completion *out, uint32_t max, uint32_t min, int timeout_ms);

#endif
