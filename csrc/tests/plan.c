/*
 * plan.c -- lsio_plan_box: the chunks a box touches, and their decode jobs, written only
 * where the caller said and only when every argument agrees.
 *
 * Checked against a brute-force walk of the chunk grid (every chunk tested for overlap
 * with the box) for boxes of 1 to 4 dimensions, under ASan: the n rows land in C order
 * with the right parts, the jobs' addresses and offsets follow the strides given, and
 * nothing is written past the n rows (canaries).  Bad arguments -- ndim 0, a chunk size
 * of 0, lo < 0, an empty box, n not the box's count, a chunk size whose last chunk would
 * end past INT64_MAX, jobs for more than LSIO_DEC_MAXDIM dimensions -- return -1 and
 * write nothing.
 */
#include "helpers.h"

#define CANARY 0x5a5a5a5a5a5a5a5aLL

static uint32_t rng = 12345;
static int64_t rnd(int64_t n) { /* 0 .. n-1 */
    rng = rng * 1103515245u + 12345u;
    return (int64_t)((rng >> 8) % (uint32_t)n);
}

static int one_box(int ndim) {
    int64_t lo[4], hi[4], ch[4], dstr[4], cstr[4];
    uint64_t n = 1;
    for (int d = 0; d < ndim; d++) {
        ch[d] = 1 + rnd(7);
        lo[d] = rnd(30);
        hi[d] = lo[d] + 1 + rnd(20);
        n *= (uint64_t)((hi[d] - 1) / ch[d] + 1 - lo[d] / ch[d]);
    }
    int64_t bs = 4, cs = 4; /* C-order strides of the box and of a chunk, itemsize 4 */
    for (int d = ndim - 1; d >= 0; d--) {
        dstr[d] = bs;
        bs *= hi[d] - lo[d];
        cstr[d] = cs;
        cs *= ch[d];
    }
    int64_t *sel = malloc((5 * n * (uint64_t)ndim + 1) * sizeof *sel);
    uint8_t *full = malloc(n + 1);
    lsio_decode_job *jobs = calloc(n + 1, sizeof *jobs);
    T_CHECK(sel && full && jobs, "out of memory");
    sel[5 * n * (uint64_t)ndim] = CANARY;
    full[n] = 0x5a;
    jobs[n].tag = CANARY;
    int64_t got = lsio_plan_box(ndim, lo, hi, ch, n, sel, full, jobs, dstr, cstr, 1000, 1);
    T_CHECK(got == (int64_t)n, "returned %lld for %llu chunks", (long long)got,
            (unsigned long long)n);
    T_CHECK(sel[5 * n * (uint64_t)ndim] == CANARY && full[n] == 0x5a && jobs[n].tag == CANARY,
            "wrote past the %llu rows", (unsigned long long)n);
    /* brute force: every chunk of a grid covering the box, in C order */
    int64_t c[4] = {0}, top[4];
    for (int d = 0; d < ndim; d++) top[d] = (hi[d] - 1) / ch[d] + 1;
    uint64_t row = 0, nd = n * (uint64_t)ndim;
    for (;;) {
        int touches = 1, whole = 1;
        for (int d = 0; d < ndim; d++) {
            int64_t s = c[d] * ch[d], e = s + ch[d];
            touches &= s < hi[d] && e > lo[d];
            whole &= s >= lo[d] && e <= hi[d];
        }
        if (touches) {
            T_CHECK(row < n, "more chunks touch the box than the %llu planned",
                    (unsigned long long)n);
            int64_t dst = 0, soff = 0;
            for (int d = 0; d < ndim; d++) {
                int64_t s = c[d] * ch[d], e = s + ch[d];
                int64_t a = s > lo[d] ? s : lo[d], b = e < hi[d] ? e : hi[d];
                uint64_t k = row * (uint64_t)ndim + (uint64_t)d;
                T_CHECK(sel[k] == c[d], "row %llu axis %d: coordinate %lld, expected %lld",
                        (unsigned long long)row, d, (long long)sel[k], (long long)c[d]);
                T_CHECK(sel[nd + k] == a - s && sel[2 * nd + k] == b - s, "row %llu: src part",
                        (unsigned long long)row);
                T_CHECK(sel[3 * nd + k] == a - lo[d] && sel[4 * nd + k] == b - lo[d],
                        "row %llu: dst part", (unsigned long long)row);
                T_CHECK(jobs[row].shape[d] == b - a, "row %llu: shape", (unsigned long long)row);
                dst += (a - lo[d]) * dstr[d];
                soff += (a - s) * cstr[d];
            }
            for (int d = ndim; d < LSIO_DEC_MAXDIM; d++)
                T_CHECK(jobs[row].shape[d] == 0, "row %llu: unused shape entry %d set",
                        (unsigned long long)row, d);
            T_CHECK(full[row] == whole, "row %llu: full %d, expected %d", (unsigned long long)row,
                    full[row], whole);
            T_CHECK(jobs[row].dst == 1000 + (uint64_t)dst && jobs[row].src_off == soff,
                    "row %llu: dst / src_off", (unsigned long long)row);
            T_CHECK(jobs[row].tag == (int64_t)row && jobs[row].direct == whole,
                    "row %llu: tag / direct", (unsigned long long)row);
            row++;
        }
        int d = ndim - 1;
        while (d >= 0 && ++c[d] == top[d]) c[d--] = 0;
        if (d < 0) break;
    }
    T_CHECK(row == n, "%llu chunks touch the box, %llu planned", (unsigned long long)row,
            (unsigned long long)n);
    /* without jobs: the same selection */
    int64_t *sel2 = malloc(5 * nd * sizeof *sel2);
    T_CHECK(sel2 != NULL, "out of memory");
    T_CHECK(lsio_plan_box(ndim, lo, hi, ch, n, sel2, full, NULL, NULL, NULL, 0, 0) == (int64_t)n,
            "without jobs");
    T_CHECK(memcmp(sel, sel2, 5 * nd * sizeof *sel) == 0, "selection differs without jobs");
    free(sel2);
    free(sel);
    free(full);
    free(jobs);
    return T_EXIT_PASS;
}

static int refused(void) {
    int64_t lo[9] = {0}, hi[9] = {4, 4, 4, 4, 4, 4, 4, 4, 4}, ch[9] = {2, 2, 2, 2, 2, 2, 2, 2, 2};
    int64_t st[9] = {0}, sel[5 * 4 * 2];
    uint8_t full[4];
    lsio_decode_job jobs[4];
    for (int i = 0; i < 5 * 4 * 2; i++) sel[i] = CANARY;
    /* a 2-d box (0,0)..(4,4) in chunks of 2: 4 chunks */
    T_CHECK(lsio_plan_box(2, lo, hi, ch, 4, sel, full, NULL, NULL, NULL, 0, 0) == 4, "valid box");
    for (int i = 0; i < 5 * 4 * 2; i++) sel[i] = CANARY;
    T_CHECK(lsio_plan_box(0, lo, hi, ch, 1, sel, full, NULL, NULL, NULL, 0, 0) == -1, "ndim 0");
    T_CHECK(lsio_plan_box(2, lo, hi, ch, 3, sel, full, NULL, NULL, NULL, 0, 0) == -1, "n wrong");
    T_CHECK(lsio_plan_box(2, lo, hi, ch, 5, sel, full, NULL, NULL, NULL, 0, 0) == -1, "n wrong");
    int64_t z[2] = {0, 0}, neg[2] = {-1, 0}, big[2] = {INT64_MAX - 1, 2};
    T_CHECK(lsio_plan_box(2, lo, hi, z, 4, sel, full, NULL, NULL, NULL, 0, 0) == -1, "chunk 0");
    T_CHECK(lsio_plan_box(2, neg, hi, ch, 4, sel, full, NULL, NULL, NULL, 0, 0) == -1, "lo < 0");
    T_CHECK(lsio_plan_box(2, lo, lo, ch, 0, sel, full, NULL, NULL, NULL, 0, 0) == -1, "empty");
    int64_t hbig[2] = {INT64_MAX, 4};
    T_CHECK(lsio_plan_box(2, lo, hbig, big, 2, sel, full, NULL, NULL, NULL, 0, 0) == -1,
            "a last chunk ending past INT64_MAX");
    T_CHECK(lsio_plan_box(9, lo, hi, ch, 512, sel, full, jobs, st, st, 0, 0) == -1,
            "jobs for 9 dimensions");
    T_CHECK(lsio_plan_box(2, lo, hi, ch, 4, sel, full, jobs, NULL, st, 0, 0) == -1,
            "jobs without strides");
    for (int i = 0; i < 5 * 4 * 2; i++)
        T_CHECK(sel[i] == CANARY, "a refused call wrote sel[%d]", i);
    return T_EXIT_PASS;
}

int main(void) {
    t_ctx = "refused";
    if (refused() != T_EXIT_PASS) return T_EXIT_FAIL;
    for (int i = 0; i < 4000; i++) {
        t_ctx = "random boxes";
        if (one_box(1 + (int)rnd(4)) != T_EXIT_PASS) return T_EXIT_FAIL;
    }
    return T_EXIT_PASS;
}
