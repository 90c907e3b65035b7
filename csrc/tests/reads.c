/*
 * reads.c -- range reads, contents checked byte for byte, on every backend variant,
 * buffered and with LSIO_F_DIRECT.
 *
 * Files of awkward sizes (0, 1, 511, 4095, 4096, 4097, 100000, 1 MiB + 13) are read with:
 * the whole file (0, -1); start:end at aligned and unaligned edges; offset to the end
 * (off, -1); the last n bytes (-n, -1); a slice of the tail (-n, k); empty ranges.
 * Asserts for every completion: error 0, flags 0, resolved offset and length exactly as
 * asked, a buffer when length > 0, the bytes equal the file's, file_size equal to the size
 * when the engine had to learn it (negative offset, length -1, O_DIRECT), and each tag
 * exactly once.  With O_DIRECT the engine reads an aligned superset; the completion must
 * still point at exactly the bytes asked for.  At the end: nothing pending, no buffer out.
 * Also: 300 files in 30 batches queued before the first reap, through max_open = 5 and
 * depth 8 (descriptors or direct slots recycled, never more than 5 open, none left), and
 * each variant really has the features it asks for.
 */
#include "helpers.h"

#include <fcntl.h>
#include <unistd.h>

#define NFILES 8
static const uint64_t sizes[NFILES] = {0, 1, 511, 4095, 4096, 4097, 100000, (1 << 20) + 13};

typedef struct {
    int file;
    int64_t off, len; /* expected resolved range */
    int needs_size;
    int seen;
} expect;

static uint8_t *content[NFILES];
static char paths[NFILES][256];

static expect *exp_tab;
static uint64_t nexp, cap_exp;

static void add(t_batch *b, int file, int64_t offset, int64_t length) {
    int64_t size = (int64_t)sizes[file];
    int64_t off = offset < 0 ? size + offset : offset;
    int64_t len = length < 0 ? size - off : length;
    if (off < 0 || len < 0 || off + len > size) return; /* not a valid read of this file */
    if (nexp == cap_exp) {
        cap_exp = cap_exp ? cap_exp * 2 : 256;
        exp_tab = realloc(exp_tab, cap_exp * sizeof *exp_tab);
    }
    expect *x = &exp_tab[nexp];
    x->file = file;
    x->off = off;
    x->len = len;
    x->needs_size = offset < 0 || length < 0;
    x->seen = 0;
    tb_range(b, offset, length, nexp, NULL);
    nexp++;
}

static void add_ranges(t_batch *b, int i) {
    int64_t n = (int64_t)sizes[i];
    add(b, i, 0, -1);             /* whole file */
    add(b, i, 0, n);              /* whole file, explicit */
    add(b, i, 0, 0);              /* empty */
    add(b, i, n, 0);              /* empty, at EOF */
    add(b, i, n, -1);             /* from EOF to the end: empty */
    add(b, i, 1, n - 2);          /* start:end, unaligned both sides */
    add(b, i, 7, 1);              /* one byte */
    add(b, i, 4096, n - 4096);    /* aligned start to the end */
    add(b, i, 4095, 2);           /* across a page boundary */
    add(b, i, 4096, 4096);        /* exactly one aligned page */
    add(b, i, 513, 3000);         /* inside the first page, odd */
    add(b, i, n / 3, n / 3 + 1);  /* middle */
    add(b, i, n / 2, -1);         /* from an offset to the end */
    add(b, i, 5000, -1);
    add(b, i, -1, -1);            /* last byte */
    add(b, i, -n, -1);            /* last n = whole file */
    add(b, i, -4097, -1);         /* last n bytes, unaligned */
    add(b, i, -100, -1);
    add(b, i, -100, 10);          /* a slice of the tail */
    add(b, i, -(n / 2), 0);       /* empty at a tail offset */
    add(b, i, (int64_t)1 << 19, 65536 + 3); /* unaligned length in a big file */
}

static int direct_supported(void) {
    /* O_DIRECT on the test directory's file system at all? (tmpfs on older kernels: no) */
    char p[256];
    t_path(p, sizeof p, "direct-probe");
    if (t_write_file(p, "x", 1)) return 0;
    int fd = open(p, O_RDONLY | O_DIRECT);
    if (fd < 0) return 0;
    void *buf = NULL;
    int ok = posix_memalign(&buf, 4096, 4096) == 0;
    if (ok) ok = pread(fd, buf, 4096, 0) == 1;
    free(buf);
    close(fd);
    unlink(p);
    return ok;
}

static int run(const t_variant *v, uint32_t flags, uint32_t depth) {
    int skip;
    lsio_engine *e = t_engine(v, 8 << 20, depth, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    t_batch b;
    tb_init(&b);
    nexp = 0;
    for (int i = 0; i < NFILES; i++) {
        tb_file(&b, paths[i], LSIO_OP_READ, flags, 1);
        add_ranges(&b, i);
    }
    T_CHECK(tb_submit(e, &b) == 0, "submit");
    lsio_completion out[64];
    uint64_t got = 0;
    while (got < nexp) {
        int n = t_reap(e, out, 64, 1, 10000);
        T_CHECK(n > 0, "reap returned %d with %llu of %llu completions", n,
                (unsigned long long)got, (unsigned long long)nexp);
        for (int k = 0; k < n; k++) {
            lsio_completion *c = &out[k];
            T_CHECK(c->tag < nexp, "unknown tag %llu", (unsigned long long)c->tag);
            expect *x = &exp_tab[c->tag];
            const char *what = paths[x->file];
            T_CHECK(!x->seen, "tag %llu twice", (unsigned long long)c->tag);
            x->seen = 1;
            T_CHECK(c->error == 0 && c->flags == 0, "%s [%lld,+%lld): error %d (%s) flags %u",
                    what, (long long)x->off, (long long)x->len, c->error,
                    lsio_strerror(c->error), c->flags);
            T_CHECK(c->group == 1, "group %llu", (unsigned long long)c->group);
            T_CHECK(c->offset == x->off && c->length == x->len,
                    "%s: got [%lld,+%lld) expected [%lld,+%lld)", what, (long long)c->offset,
                    (long long)c->length, (long long)x->off, (long long)x->len);
            if (x->needs_size || (flags & LSIO_F_DIRECT))
                T_CHECK(c->file_size == (int64_t)sizes[x->file], "file_size %lld",
                        (long long)c->file_size);
            else
                T_CHECK(c->file_size == -1 || c->file_size == (int64_t)sizes[x->file],
                        "file_size %lld", (long long)c->file_size);
            if (x->len > 0) {
                T_CHECK(c->buf_id != 0 && c->data != NULL, "no buffer for a %lld-byte read",
                        (long long)x->len);
                T_CHECK(memcmp(c->data, content[x->file] + x->off, (size_t)x->len) == 0,
                        "%s [%lld,+%lld): contents differ", what, (long long)x->off,
                        (long long)x->len);
            }
            if (c->buf_id) T_CHECK(lsio_release(e, c->buf_id) == 0, "release");
            got++;
        }
    }
    if (t_check_idle(e)) return T_EXIT_FAIL;
    lsio_stats st;
    lsio_engine_stats(e, &st);
    T_CHECK(st.ops_submitted > 0, "no ops counted");
    lsio_engine_free(e);
    tb_free(&b);
    return T_EXIT_PASS;
}

/* 300 small files in 30 batches submitted before any reap, through max_open = 5 slots
 * and depth 8: descriptors / direct slots are recycled, batches freed as they finish. */
#define NSMALL 300
static int run_many_files(const t_variant *v) {
    int skip;
    lsio_engine *e = t_engine_ex(v, 256 << 10, 8, 5, 2, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    uint32_t feat = lsio_engine_features(e);
    fprintf(stderr, "[%s] features %#x\n", v->name, feat);
    if (v->register_buffers == 1)
        T_CHECK(feat & LSIO_FEAT_REG_BUFFERS, "registered buffers asked for, not enabled");
    if (v->fixed_files == 0) T_CHECK(!(feat & LSIO_FEAT_FIXED_FILES), "fixed files not off");
    if (v->link_open == 0) T_CHECK(!(feat & LSIO_FEAT_LINKED_OPEN), "linked open not off");
    static uint8_t *data[NSMALL];
    static char p[NSMALL][256];
    static uint64_t size[NSMALL];
    if (!data[0])
        for (int i = 0; i < NSMALL; i++) {
            size[i] = 1 + (uint64_t)i * 67 % 20000;
            t_path(p[i], sizeof p[i], "small-%d", i);
            data[i] = t_make_file(p[i], size[i], (uint32_t)(1000 + i));
            T_CHECK(data[i], "make file");
        }
    int fds0 = t_count_fds();
    t_batch b;
    tb_init(&b);
    for (int k = 0; k < NSMALL / 10; k++) {
        tb_reset(&b);
        for (int i = k * 10; i < k * 10 + 10; i++) {
            tb_file(&b, p[i], LSIO_OP_READ, 0, (uint64_t)i);
            tb_range(&b, 0, -1, (uint64_t)i * 3, NULL);
            tb_range(&b, 0, 1, (uint64_t)i * 3 + 1, NULL);
            tb_range(&b, -1, -1, (uint64_t)i * 3 + 2, NULL);
        }
        T_CHECK(tb_submit(e, &b) == 0, "submit");
    }
    tb_free(&b);
    static uint8_t seen[NSMALL * 3];
    memset(seen, 0, sizeof seen);
    int got = 0;
    lsio_completion out[32];
    while (got < NSMALL * 3) {
        int n = t_reap(e, out, 32, 1, 10000);
        T_CHECK(n > 0, "reap returned %d after %d", n, got);
        lsio_stats st;
        lsio_engine_stats(e, &st);
        T_CHECK(st.open_files <= 5, "open_files %llu > max_open", (unsigned long long)st.open_files);
        if (v->backend == LSIO_BACKEND_PREAD || !(lsio_engine_features(e) & LSIO_FEAT_FIXED_FILES))
            T_CHECK(t_count_fds() <= fds0 + 5, "%d descriptors open with max_open 5",
                    t_count_fds() - fds0);
        for (int k = 0; k < n; k++) {
            lsio_completion *c = &out[k];
            int i = (int)(c->tag / 3), which = (int)(c->tag % 3);
            T_CHECK(c->tag < NSMALL * 3 && !seen[c->tag], "tag %llu", (unsigned long long)c->tag);
            seen[c->tag] = 1;
            T_CHECK(c->error == 0 && c->group == (uint64_t)i, "tag %llu: error %d",
                    (unsigned long long)c->tag, c->error);
            int64_t off = which == 2 ? (int64_t)size[i] - 1 : 0;
            int64_t len = which == 0 ? (int64_t)size[i] : 1;
            T_CHECK(c->offset == off && c->length == len, "file %d range %d", i, which);
            T_CHECK(memcmp(c->data, data[i] + off, (size_t)len) == 0, "file %d bytes", i);
            T_CHECK(lsio_release(e, c->buf_id) == 0, "release");
        }
        got += n;
    }
    if (t_check_idle(e)) return T_EXIT_FAIL;
    T_CHECK(t_count_fds() == fds0, "descriptors: %d before, %d after", fds0, t_count_fds());
    lsio_engine_free(e);
    return T_EXIT_PASS;
}

int main(void) {
    for (int i = 0; i < NFILES; i++) {
        t_path(paths[i], sizeof paths[i], "file-%d-%llu", i, (unsigned long long)sizes[i]);
        content[i] = t_make_file(paths[i], sizes[i], (uint32_t)i);
        if (!content[i]) return T_EXIT_FAIL;
    }
    int direct = direct_supported();
    if (!direct) fprintf(stderr, "O_DIRECT not supported in %s: direct reads skipped\n", t_tmpdir());
    int skipped = 0, ran = 0;
    char ctx[128];
    for (int v = 0; v < t_nvariants_all; v++) {
        for (int d = 0; d < 2; d++) {
            if (d && !direct) continue;
            for (int depth_i = 0; depth_i < 2; depth_i++) {
                uint32_t depth = depth_i ? 1 : 0; /* default, and one op at a time */
                snprintf(ctx, sizeof ctx, "%s%s depth=%u", t_variants_all[v].name,
                         d ? " O_DIRECT" : "", depth ? depth : 64);
                t_ctx = ctx;
                int rc = run(&t_variants_all[v], d ? LSIO_F_DIRECT : 0, depth);
                if (rc == T_EXIT_SKIP) skipped++;
                else if (rc != T_EXIT_PASS) return T_EXIT_FAIL;
                else ran++;
            }
        }
    }
    for (int v = 0; v < t_nvariants_all; v++) {
        snprintf(ctx, sizeof ctx, "%s many files", t_variants_all[v].name);
        t_ctx = ctx;
        int rc = run_many_files(&t_variants_all[v]);
        if (rc == T_EXIT_SKIP) skipped++;
        else if (rc != T_EXIT_PASS) return T_EXIT_FAIL;
        else ran++;
    }
    for (int i = 0; i < NFILES; i++) free(content[i]);
    free(exp_tab);
    return ran ? T_EXIT_PASS : T_EXIT_SKIP;
}
