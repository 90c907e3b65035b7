/*
 * tmpnames.c -- WRITE_FILE temp names cannot be pre-planted.
 *
 * The temp file of a WRITE_FILE is "<path>.lsio-tmp.<pid>.<16 hex digits>" with 64 bits from
 * getrandom(2), created with O_CREAT | O_EXCL (which refuses an existing name, symlinks
 * included), and a name that exists already is replaced by a fresh random one, a bounded
 * number of times (LSIO's TMP_TRIES, 16).  This program defines getrandom() itself, so
 * the engine (linked into it) draws the values it scripts:
 *
 *  - the names the old scheme used ("<path>.lsio-tmp.<pid>.<n>") are planted as symlinks
 *    to a victim file: writes succeed, the victim is untouched;
 *  - the first 5 random names are planted as symlinks to the victim: the write retries,
 *    succeeds with the 6th name, the symlinks and the victim are untouched;
 *  - all 16 names a write may try are planted: ONE FILE_ERROR with -EEXIST, the target
 *    is not created, nothing is left behind and nothing leaks;
 *  - getrandom failing (ENOSYS, an old kernel) still gives working, distinct names.
 * On io_uring (fixed files and not) and pread.
 */
#include "helpers.h"

#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define TRIES 16

/* ---- the scripted getrandom: the engine's calls land here */
static uint64_t script[64];
static int script_len, script_pos, fail_getrandom, script_calls;

ssize_t getrandom(void *buf, size_t len, unsigned int flags) {
    (void)flags;
    __atomic_add_fetch(&script_calls, 1, __ATOMIC_SEQ_CST);
    if (fail_getrandom) {
        errno = ENOSYS;
        return -1;
    }
    unsigned char *p = buf;
    for (size_t i = 0; i < len; i += 8) {
        int k = __atomic_fetch_add(&script_pos, 1, __ATOMIC_SEQ_CST);
        uint64_t v = k < script_len ? script[k] : 0x1234567800000000ull + (uint64_t)k;
        size_t n = len - i < 8 ? len - i : 8;
        memcpy(p + i, &v, n);
    }
    return (ssize_t)len;
}

static void tmp_name(char *out, size_t n, const char *path, uint64_t v) {
    snprintf(out, n, "%s.lsio-tmp.%d.%016llx", path, (int)getpid(), (unsigned long long)v);
}

static char victim[300];
static const char victim_data[] = "the victim's bytes";

static int victim_intact(void) {
    uint64_t n = 0;
    uint8_t *got = t_read_file(victim, &n);
    int ok = got && n == sizeof victim_data && memcmp(got, victim_data, n) == 0;
    free(got);
    T_CHECK(ok, "the planted symlinks' target was written to");
    return T_EXIT_PASS;
}

/* Write `data` to `path`; returns the completion's error (or a positive test failure). */
static int put(lsio_engine *e, const char *path, const void *data, int64_t len, int *error) {
    t_batch b;
    tb_init(&b);
    tb_file(&b, path, LSIO_OP_WRITE_FILE, 0, 5);
    tb_range(&b, 0, len, 1, data);
    T_CHECK(tb_submit(e, &b) == 0, "submit");
    lsio_completion c;
    int k = t_reap(e, &c, 1, 1, 20000);
    tb_free(&b);
    T_CHECK(k == 1, "reap: %d", k);
    T_CHECK(c.tag == 1 && c.buf_id == 0, "completion tag %llu", (unsigned long long)c.tag);
    *error = c.error;
    if (c.error) T_CHECK(c.flags == LSIO_C_FILE_ERROR, "error without FILE_ERROR");
    return t_check_idle(e);
}

static int run(const t_variant *v) {
    char dir[300], target[400], name[500];
    snprintf(dir, sizeof dir, "%s/%s", t_tmpdir(), v->name);
    T_CHECK(mkdir(dir, 0755) == 0, "mkdir");
    snprintf(target, sizeof target, "%s/key", dir);
    int fds0 = t_count_fds(), skip, err = 0;
    lsio_engine *e = t_engine(v, 1 << 20, 0, &skip);
    if (!e) return skip ? T_EXIT_SKIP : T_EXIT_FAIL;
    static const char data[] = "new contents";

    /* 1: the old, predictable names */
    int planted = 0;
    for (int n = 1; n <= 64; n++, planted++) {
        snprintf(name, sizeof name, "%s.lsio-tmp.%d.%d", target, (int)getpid(), n);
        T_CHECK(symlink(victim, name) == 0, "plant %s", name);
    }
    script_len = script_pos = 0;
    for (int i = 0; i < 8; i++) {
        if (put(e, target, data, sizeof data, &err)) return T_EXIT_FAIL;
        T_CHECK(err == 0, "put %d over planted old-scheme names: %s", i, lsio_strerror(err));
    }
    T_CHECK(t_count_entries(dir, ".lsio-tmp.") == planted, "temp files left");

    /* 2: the first 5 random names are taken */
    script_pos = 0;
    script_len = 6;
    for (int i = 0; i < script_len; i++) script[i] = 0xa5a5a5a500000000ull + (uint64_t)i * 7919;
    for (int i = 0; i < 5; i++, planted++) {
        tmp_name(name, sizeof name, target, script[i]);
        T_CHECK(symlink(victim, name) == 0, "plant %s", name);
    }
    unlink(target);
    if (put(e, target, data, sizeof data, &err)) return T_EXIT_FAIL;
    T_CHECK(err == 0, "put with 5 names taken: %s", lsio_strerror(err));
    T_CHECK(script_pos == 6, "%d names drawn, expected 6", script_pos);
    uint64_t n = 0;
    uint8_t *got = t_read_file(target, &n);
    T_CHECK(got && n == sizeof data && memcmp(got, data, n) == 0, "target content");
    free(got);
    struct stat st;
    T_CHECK(lstat(target, &st) == 0 && S_ISREG(st.st_mode), "target is not a regular file");
    for (int i = 0; i < 5; i++) {
        tmp_name(name, sizeof name, target, script[i]);
        T_CHECK(lstat(name, &st) == 0 && S_ISLNK(st.st_mode), "planted symlink %d gone", i);
    }
    if (victim_intact()) return T_EXIT_FAIL;
    T_CHECK(t_count_entries(dir, ".lsio-tmp.") == planted, "temp files left");

    /* 3: every name a write may try is taken: a clean -EEXIST */
    script_pos = 0;
    script_len = TRIES + 4;
    for (int i = 0; i < script_len; i++) script[i] = 0x5a5a5a5a00000000ull + (uint64_t)i * 104729;
    for (int i = 0; i < TRIES; i++, planted++) {
        tmp_name(name, sizeof name, target, script[i]);
        T_CHECK(symlink(victim, name) == 0, "plant %s", name);
    }
    char fresh[450];
    snprintf(fresh, sizeof fresh, "%s/fresh", dir);
    int planted_fresh = 0;
    for (int i = 0; i < TRIES; i++, planted_fresh++) {
        tmp_name(name, sizeof name, fresh, script[i]);
        T_CHECK(symlink(victim, name) == 0, "plant %s", name);
    }
    if (put(e, fresh, data, sizeof data, &err)) return T_EXIT_FAIL;
    T_CHECK(err == -EEXIST, "put with every name taken: %d (%s)", err, lsio_strerror(err));
    T_CHECK(script_pos == TRIES, "%d names drawn, expected %d", script_pos, TRIES);
    T_CHECK(!t_path_exists(fresh), "the target was created");
    T_CHECK(t_count_entries(dir, ".lsio-tmp.") == planted + planted_fresh, "temp files left");
    if (victim_intact()) return T_EXIT_FAIL;

    /* 4: no getrandom: names still work and differ */
    fail_getrandom = 1;
    for (int i = 0; i < 4; i++) {
        if (put(e, target, data, sizeof data, &err)) return T_EXIT_FAIL;
        T_CHECK(err == 0, "put without getrandom: %s", lsio_strerror(err));
    }
    fail_getrandom = 0;
    T_CHECK(t_count_entries(dir, ".lsio-tmp.") == planted + planted_fresh, "temp files left");
    if (victim_intact()) return T_EXIT_FAIL;
    lsio_engine_free(e);
    T_CHECK(t_count_fds() == fds0, "descriptors leaked: %d -> %d", fds0, t_count_fds());
    return T_EXIT_PASS;
}

int main(void) {
    t_path(victim, sizeof victim, "victim");
    if (t_write_file(victim, victim_data, sizeof victim_data)) return T_EXIT_FAIL;
    int skipped = 0;
    for (int i = 0; i < t_nvariants_all; i++) {
        t_ctx = t_variants_all[i].name;
        T_RUN(run(&t_variants_all[i]), skipped);
    }
    if (!script_calls) {
        fprintf(stderr, "the engine never called getrandom\n");
        return T_EXIT_FAIL;
    }
    return skipped == t_nvariants_all ? T_EXIT_SKIP : T_EXIT_PASS;
}
