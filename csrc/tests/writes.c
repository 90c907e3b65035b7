/*
 * writes.c -- LSIO_OP_WRITE_FILE and LSIO_OP_WRITE_RANGES on io_uring (with and without
 * fixed files) and pread.
 *
 *  - WRITE_FILE (temp + rename): one completion per range, error 0, length as asked; the
 *    file then has exactly the content (new file; replacing a longer existing file; empty;
 *    8 MiB in one range; ranges given out of order); with and without LSIO_F_FSYNC; no
 *    "*.lsio-tmp.*" file remains in the directory; a replaced file keeps its mode (and,
 *    as root, its owner).
 *  - WRITE_FILE into a directory that does not exist: ONE completion, FILE_ERROR, -ENOENT,
 *    first range's tag; nothing is created anywhere (the parent directory is unchanged).
 *  - WRITE_FILE whose rename fails (the target is a non-empty directory): ONE FILE_ERROR
 *    completion, and the temp file is removed (nothing left behind).
 *  - WRITE_RANGES into an existing file at several offsets (inside, unaligned, and past
 *    EOF, which extends the file): one completion per range; the file is the old content
 *    with the patches applied (zeros in a hole); with LSIO_F_FSYNC too.
 *  - WRITE_RANGES with LSIO_F_CREATE into a new file (with a hole); without it into a
 *    missing file: ONE FILE_ERROR with -ENOENT and no file created.
 *  - The written data can be read back by the same engine in a later batch.
 */
#include "helpers.h"

#include <sys/stat.h>
#include <unistd.h>

static char dir[256];

typedef struct {
    int64_t off, len;
    uint64_t tag;
} wr;

/* Submit b, reap until nothing is pending; fill all[], return the count or -1. */
static int run_batch(lsio_engine *e, const t_batch *b, lsio_completion *all, int cap) {
    if (tb_submit(e, b)) {
        fprintf(stderr, "[%s] submit refused\n", t_ctx);
        return -1;
    }
    int n = 0;
    for (;;) {
        lsio_completion out[16];
        int k = t_reap(e, out, 16, 1, 20000);
        if (k < 0) return -1;
        if (k == 0) break;
        for (int i = 0; i < k; i++) {
            if (n == cap) return -1;
            all[n++] = out[i];
        }
    }
    lsio_stats st;
    lsio_engine_stats(e, &st);
    if (st.ranges_pending || st.files_pending) {
        fprintf(stderr, "[%s] reap timed out\n", t_ctx);
        return -1;
    }
    return n;
}

static int file_equals(const char *path, const uint8_t *want, uint64_t n) {
    uint64_t got_n = 0;
    uint8_t *got = t_read_file(path, &got_n);
    T_CHECK(got, "cannot read %s back", path);
    T_CHECK(got_n == n, "%s: %llu bytes, expected %llu", path, (unsigned long long)got_n,
            (unsigned long long)n);
    T_CHECK(memcmp(got, want, n) == 0, "%s: contents differ", path);
    free(got);
    return T_EXIT_PASS;
}

static int no_tmp_left(void) {
    int n = t_count_entries(dir, ".lsio-tmp.");
    T_CHECK(n == 0, "%d temp files left in %s", n, dir);
    return T_EXIT_PASS;
}

/* All completions successful, one per range, lengths as asked. */
static int check_ok(const lsio_completion *all, int n, const wr *w, int nw, uint64_t group) {
    T_CHECK(n == nw, "%d completions for %d ranges", n, nw);
    int seen[64] = {0};
    for (int i = 0; i < n; i++) {
        const lsio_completion *c = &all[i];
        T_CHECK(c->error == 0 && c->flags == 0, "tag %llu: error %d (%s) flags %u",
                (unsigned long long)c->tag, c->error, lsio_strerror(c->error), c->flags);
        T_CHECK(c->buf_id == 0, "a write completion owns a buffer");
        T_CHECK(c->group == group, "group");
        int k = -1;
        for (int j = 0; j < nw; j++)
            if (w[j].tag == c->tag) k = j;
        T_CHECK(k >= 0 && !seen[k], "tag %llu", (unsigned long long)c->tag);
        seen[k] = 1;
        T_CHECK(c->offset == w[k].off && c->length == w[k].len, "tag %llu: [%lld,+%lld)",
                (unsigned long long)c->tag, (long long)c->offset, (long long)c->length);
    }
    return T_EXIT_PASS;
}

static int test_write_file(lsio_engine *e, uint32_t flags) {
    lsio_completion all[64];
    char p[300];
    /* new files of several shapes */
    static const uint64_t sizes[] = {0, 1, 4096, 100003, 8 << 20};
    for (unsigned s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        uint64_t n = sizes[s];
        uint8_t *data = t_pattern(n, (uint32_t)(s + 40));
        snprintf(p, sizeof p, "%s/wf-%u-%llu", dir, flags, (unsigned long long)n);
        wr w[4];
        int nw;
        if (n < 3) {
            w[0] = (wr){0, (int64_t)n, 7};
            nw = 1;
        } else { /* three pieces, submitted out of order */
            int64_t a = (int64_t)n / 3, c = 2 * (int64_t)n / 3 + 1;
            w[0] = (wr){c, (int64_t)n - c, 10};
            w[1] = (wr){0, a, 11};
            w[2] = (wr){a, c - a, 12};
            nw = 3;
        }
        t_batch b;
        tb_init(&b);
        tb_file(&b, p, LSIO_OP_WRITE_FILE, flags, 5);
        for (int i = 0; i < nw; i++) tb_range(&b, w[i].off, w[i].len, w[i].tag, data + w[i].off);
        int k = run_batch(e, &b, all, 64);
        if (check_ok(all, k, w, nw, 5)) return T_EXIT_FAIL;
        if (file_equals(p, data, n)) return T_EXIT_FAIL;
        if (no_tmp_left()) return T_EXIT_FAIL;
        /* read it back through the engine */
        if (n) {
            tb_reset(&b);
            tb_file(&b, p, LSIO_OP_READ, 0, 6);
            tb_range(&b, 0, -1, 1, NULL);
            k = run_batch(e, &b, all, 64);
            T_CHECK(k == 1 && all[0].error == 0 && all[0].length == (int64_t)n, "read back");
            T_CHECK(memcmp(all[0].data, data, n) == 0, "read back: bytes");
            T_CHECK(lsio_release(e, all[0].buf_id) == 0, "release");
        }
        tb_free(&b);
        free(data);
    }
    /* replace an existing, longer file: exactly the new content, nothing of the old --
     * and its mode (0660 under a 022 umask: the temp file is created 0640, then chmod'ed)
     * and, as root, its owner */
    snprintf(p, sizeof p, "%s/wf-replace-%u", dir, flags);
    uint8_t *old = t_make_file(p, 50000, 1);
    T_CHECK(old, "make file");
    mode_t umask0 = umask(022);
    T_CHECK(chmod(p, 0660) == 0, "chmod");
    int root = geteuid() == 0;
    if (root) T_CHECK(chown(p, 65534, 65534) == 0, "chown");
    uint8_t *data = t_pattern(1000, 2);
    t_batch b;
    tb_init(&b);
    tb_file(&b, p, LSIO_OP_WRITE_FILE, flags, 5);
    tb_range(&b, 0, 1000, 1, data);
    wr w1 = {0, 1000, 1};
    int k = run_batch(e, &b, all, 64);
    if (check_ok(all, k, &w1, 1, 5)) return T_EXIT_FAIL;
    if (file_equals(p, data, 1000)) return T_EXIT_FAIL;
    if (no_tmp_left()) return T_EXIT_FAIL;
    umask(umask0);
    struct stat st;
    T_CHECK(stat(p, &st) == 0 && (st.st_mode & 07777) == 0660, "mode %o after replace, want 660",
            (unsigned)(st.st_mode & 07777));
    if (root) T_CHECK(st.st_uid == 65534 && st.st_gid == 65534, "owner %u:%u after replace",
                      (unsigned)st.st_uid, (unsigned)st.st_gid);
    free(old);
    free(data);
    tb_free(&b);
    return T_EXIT_PASS;
}

static int test_write_file_errors(lsio_engine *e, uint32_t flags) {
    lsio_completion all[64];
    char p[400], missing_dir[300];
    static const char data[] = "0123456789abcdef";
    int before = t_count_entries(dir, NULL);
    /* into a directory that does not exist */
    snprintf(missing_dir, sizeof missing_dir, "%s/no-such-dir", dir);
    snprintf(p, sizeof p, "%s/file", missing_dir);
    t_batch b;
    tb_init(&b);
    tb_file(&b, p, LSIO_OP_WRITE_FILE, flags, 9);
    for (int i = 0; i < 4; i++) tb_range(&b, i * 4, 4, (uint64_t)(100 + i), data + i * 4);
    int k = run_batch(e, &b, all, 64);
    T_CHECK(k == 1, "%d completions for a file in a missing directory, expected 1", k);
    T_CHECK(all[0].flags == LSIO_C_FILE_ERROR && all[0].error == -ENOENT && all[0].tag == 100,
            "flags %u error %d (%s) tag %llu", all[0].flags, all[0].error,
            lsio_strerror(all[0].error), (unsigned long long)all[0].tag);
    T_CHECK(!t_path_exists(missing_dir), "the missing directory was created");
    T_CHECK(t_count_entries(dir, NULL) == before, "something was left in %s", dir);

    /* the rename fails: the target is a non-empty directory -> temp file removed */
    snprintf(p, sizeof p, "%s/target-is-a-dir-%u", dir, flags);
    char sub[500];
    snprintf(sub, sizeof sub, "%s/x", p);
    T_CHECK(mkdir(p, 0755) == 0 && t_write_file(sub, "x", 1) == 0, "setup");
    before = t_count_entries(dir, NULL);
    tb_reset(&b);
    tb_file(&b, p, LSIO_OP_WRITE_FILE, flags, 9);
    tb_range(&b, 0, 8, 200, data);
    tb_range(&b, 8, 8, 201, data + 8);
    k = run_batch(e, &b, all, 64);
    T_CHECK(k == 1, "%d completions for a failed rename, expected 1", k);
    T_CHECK(all[0].flags == LSIO_C_FILE_ERROR && all[0].error == -EISDIR && all[0].tag == 200,
            "rename onto a directory: flags %u error %d (%s)", all[0].flags, all[0].error,
            lsio_strerror(all[0].error));
    if (no_tmp_left()) return T_EXIT_FAIL;
    T_CHECK(t_count_entries(dir, NULL) == before, "entries left behind");
    T_CHECK(t_count_entries(p, NULL) == 1, "the directory changed");
    tb_free(&b);
    return T_EXIT_PASS;
}

static int test_write_ranges(lsio_engine *e, uint32_t flags) {
    lsio_completion all[64];
    char p[300];
    /* into an existing file */
    snprintf(p, sizeof p, "%s/wr-%u", dir, flags);
    const uint64_t n = 100000;
    uint8_t *want = t_make_file(p, n, 3);
    T_CHECK(want, "make file");
    uint8_t *patch = t_pattern(20000, 4);
    wr w[] = {
        {0, 10, 1},            /* the start */
        {4095, 2, 2},          /* across a page boundary */
        {12345, 6789, 3},      /* unaligned, inside */
        {n - 5, 5, 4},         /* the last bytes */
        {n + 1000, 3000, 5},   /* past EOF: extends the file, leaves a hole */
        {50000, 0, 6},         /* empty */
    };
    int nw = sizeof w / sizeof w[0];
    uint64_t new_n = n + 4000;
    want = realloc(want, new_n);
    memset(want + n, 0, new_n - n);
    t_batch b;
    tb_init(&b);
    tb_file(&b, p, LSIO_OP_WRITE_RANGES, flags, 4);
    for (int i = 0; i < nw; i++) {
        const uint8_t *src = patch + i * 1000;
        tb_range(&b, w[i].off, w[i].len, w[i].tag, w[i].len ? src : NULL);
        memcpy(want + w[i].off, src, (size_t)w[i].len);
    }
    int k = run_batch(e, &b, all, 64);
    if (check_ok(all, k, w, nw, 4)) return T_EXIT_FAIL;
    if (file_equals(p, want, new_n)) return T_EXIT_FAIL;
    free(want);

    /* LSIO_F_CREATE: a new file with a hole */
    snprintf(p, sizeof p, "%s/wr-new-%u", dir, flags);
    wr w2[] = {{8192, 100, 1}, {0, 4096, 2}};
    want = calloc(8292, 1);
    tb_reset(&b);
    tb_file(&b, p, LSIO_OP_WRITE_RANGES, flags | LSIO_F_CREATE, 4);
    for (int i = 0; i < 2; i++) {
        tb_range(&b, w2[i].off, w2[i].len, w2[i].tag, patch + 5000 * i);
        memcpy(want + w2[i].off, patch + 5000 * i, (size_t)w2[i].len);
    }
    k = run_batch(e, &b, all, 64);
    if (check_ok(all, k, w2, 2, 4)) return T_EXIT_FAIL;
    if (file_equals(p, want, 8292)) return T_EXIT_FAIL;
    free(want);

    /* a range whose end passes INT64_MAX fails alone (-EINVAL), the others are written */
    snprintf(p, sizeof p, "%s/wr-huge-%u", dir, flags);
    tb_reset(&b);
    tb_file(&b, p, LSIO_OP_WRITE_RANGES, flags | LSIO_F_CREATE, 4);
    tb_range(&b, 0, 10, 80, patch);
    tb_range(&b, INT64_MAX - 5, 10, 81, patch);
    k = run_batch(e, &b, all, 64);
    T_CHECK(k == 2, "%d completions", k);
    for (int i = 0; i < k; i++) {
        if (all[i].tag == 80) T_CHECK(all[i].error == 0, "normal range: %d", all[i].error);
        else T_CHECK(all[i].error == -EINVAL && !(all[i].flags & LSIO_C_FILE_ERROR),
                     "huge range: error %d flags %u", all[i].error, all[i].flags);
    }
    if (file_equals(p, patch, 10)) return T_EXIT_FAIL;

    /* without LSIO_F_CREATE into a missing file */
    snprintf(p, sizeof p, "%s/wr-missing-%u", dir, flags);
    tb_reset(&b);
    tb_file(&b, p, LSIO_OP_WRITE_RANGES, flags, 4);
    tb_range(&b, 0, 10, 70, patch);
    tb_range(&b, 100, 10, 71, patch);
    k = run_batch(e, &b, all, 64);
    T_CHECK(k == 1 && all[0].flags == LSIO_C_FILE_ERROR && all[0].error == -ENOENT &&
            all[0].tag == 70, "missing file: %d completions, error %d", k, k ? all[0].error : 0);
    T_CHECK(!t_path_exists(p), "file created without LSIO_F_CREATE");
    tb_free(&b);
    free(patch);
    return T_EXIT_PASS;
}

static int run(const t_variant *v) {
    int skip;
    lsio_engine *e = t_engine(v, 16 << 20, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    char ctx[128];
    for (uint32_t flags = 0; flags <= LSIO_F_FSYNC; flags += LSIO_F_FSYNC) {
        snprintf(dir, sizeof dir, "%s/%s-%u", t_tmpdir(), v->name, flags);
        T_CHECK(mkdir(dir, 0755) == 0, "mkdir %s", dir);
        snprintf(ctx, sizeof ctx, "%s%s", v->name, flags ? " fsync" : "");
        t_ctx = ctx;
        if (test_write_file(e, flags)) return T_EXIT_FAIL;
        if (test_write_file_errors(e, flags)) return T_EXIT_FAIL;
        if (test_write_ranges(e, flags)) return T_EXIT_FAIL;
        if (t_check_idle(e)) return T_EXIT_FAIL;
    }
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

int main(void) {
    int skipped = 0, nv = 0;
    for (int v = 0; v < t_nvariants_all; v++) {
        if (t_variants_all[v].register_buffers == 1) continue;
        nv++;
        T_RUN(run(&t_variants_all[v]), skipped);
    }
    return skipped == nv ? T_EXIT_SKIP : T_EXIT_PASS;
}
