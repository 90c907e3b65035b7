/*
 * buddy.c -- unit test of the buffer pool (pool.c), no engine involved.
 *
 * Asserts: sizes round up to a power of two; pool_order_for; blocks are inside the arena,
 * aligned to their size relative to it and to 4 KiB in memory; allocations never overlap; every free pattern (LIFO, FIFO,
 * random, interleaved sizes) merges back to ONE free block of the top order; exhaustion
 * returns 0 (and a larger order fails while a smaller one still fits); bad ids (0, past
 * the end, the inside of a block, a free block, a double free) give -EINVAL and change
 * nothing; in_use / peak / nalloc accounting.
 */
#include "helpers.h"
#include "../pool.h"

#include <stdint.h>

/* Exactly one free block, of the top order, at index 0. */
static int check_whole(const pool *p) {
    T_CHECK(p->in_use == 0, "in_use %llu", (unsigned long long)p->in_use);
    T_CHECK(p->nalloc == 0, "nalloc %llu", (unsigned long long)p->nalloc);
    T_CHECK(p->heads[p->max_order] == 0, "top free list head %d", p->heads[p->max_order]);
    T_CHECK(p->next[0] == -1, "more than one top block");
    for (uint32_t o = 0; o < p->max_order; o++)
        T_CHECK(p->heads[o] == -1, "order %u still has a free block (%d)", o, p->heads[o]);
    uint64_t nfree = 0;
    for (uint64_t i = 0; i < p->nblocks; i++) nfree += p->is_free[i];
    T_CHECK(nfree == 1, "%llu blocks marked free", (unsigned long long)nfree);
    return T_EXIT_PASS;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t xrand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Allocate blocks of random orders until exhaustion, checking placement; returns count. */
static int fill_random(pool *p, uint64_t *ids, uint64_t *n, int max_order) {
    uint8_t *owner = calloc(p->nblocks, 1); /* 4 KiB pages in use */
    T_CHECK(owner, "calloc");
    *n = 0;
    uint64_t expect_in_use = 0;
    int fails = 0;
    while (fails < 64) {
        int o = (int)(xrand() % (uint64_t)(max_order + 1));
        uint64_t id = pool_alloc(p, o);
        if (!id) {
            fails++;
            continue;
        }
        uint64_t idx = pool_index(id), pages = (uint64_t)1 << o;
        T_CHECK(idx + pages <= p->nblocks, "block %llu order %d past the arena",
                (unsigned long long)idx, o);
        T_CHECK((idx & (pages - 1)) == 0, "block %llu not aligned to order %d",
                (unsigned long long)idx, o);
        /* aligned to its size within the arena; in memory only to 4 KiB (pool.h) */
        T_CHECK((uint64_t)(pool_ptr(p, id) - p->arena) % (pages << POOL_MIN_SHIFT) == 0,
                "block not aligned to its size within the arena");
        T_CHECK(((uintptr_t)pool_ptr(p, id) & 4095) == 0, "pointer not 4 KiB aligned");
        T_CHECK(pool_block_bytes(p, id) == pages << POOL_MIN_SHIFT, "block bytes");
        for (uint64_t k = 0; k < pages; k++) {
            T_CHECK(!owner[idx + k], "page %llu handed out twice", (unsigned long long)(idx + k));
            owner[idx + k] = 1;
        }
        /* the memory is usable (lazily mapped arena) */
        memset(pool_ptr(p, id), 0xA5, (size_t)(pages << POOL_MIN_SHIFT));
        expect_in_use += pages << POOL_MIN_SHIFT;
        T_CHECK(p->in_use == expect_in_use, "in_use %llu, expected %llu",
                (unsigned long long)p->in_use, (unsigned long long)expect_in_use);
        ids[(*n)++] = id;
    }
    /* full for order 0 now? fill the last pages with single blocks */
    uint64_t id;
    while ((id = pool_alloc(p, 0))) {
        T_CHECK(!owner[pool_index(id)], "page handed out twice");
        owner[pool_index(id)] = 1;
        expect_in_use += (uint64_t)1 << POOL_MIN_SHIFT;
        ids[(*n)++] = id;
    }
    T_CHECK(p->in_use == p->bytes, "exhausted pool: in_use %llu != %llu",
            (unsigned long long)p->in_use, (unsigned long long)p->bytes);
    T_CHECK(p->peak == p->bytes, "peak %llu", (unsigned long long)p->peak);
    T_CHECK(p->nalloc == *n, "nalloc %llu != %llu", (unsigned long long)p->nalloc,
            (unsigned long long)*n);
    for (int o = 0; o <= (int)p->max_order; o++)
        T_CHECK(pool_alloc(p, o) == 0, "alloc of order %d succeeded in a full pool", o);
    free(owner);
    return T_EXIT_PASS;
}

static int test_basic(void) {
    pool p;
    t_ctx = "basic";
    /* rounding: 5000 -> 8 KiB; 0 and 1 -> 4 KiB */
    T_CHECK(pool_init(&p, 5000) == 0, "init");
    T_CHECK(p.bytes == 8192 && p.max_order == 1 && p.nblocks == 2, "5000 B -> %llu B",
            (unsigned long long)p.bytes);
    pool_destroy(&p);
    T_CHECK(pool_init(&p, 1) == 0 && p.bytes == 4096 && p.max_order == 0, "1 B -> 4 KiB");
    T_CHECK(pool_order_for(&p, 4096) == 0, "order_for");
    T_CHECK(pool_order_for(&p, 4097) == -1, "order_for larger than the arena");
    uint64_t a = pool_alloc(&p, 0);
    T_CHECK(pool_index(a) == 0, "only block id %llu", (unsigned long long)a);
    T_CHECK(pool_alloc(&p, 0) == 0, "second alloc in a one-block pool");
    T_CHECK(pool_alloc(&p, 1) == 0, "order above max");
    T_CHECK(pool_free(&p, a) == 0, "free");
    T_CHECK(pool_free(&p, a) == -EINVAL, "double free");
    if (check_whole(&p)) return T_EXIT_FAIL;
    pool_destroy(&p);

    /* 1 MiB: 256 pages, orders 0..8 */
    T_CHECK(pool_init(&p, 1 << 20) == 0, "init 1 MiB");
    T_CHECK(p.max_order == 8 && p.nblocks == 256, "geometry");
    T_CHECK(pool_order_for(&p, 0) == 0 && pool_order_for(&p, 1) == 0, "order_for small");
    T_CHECK(pool_order_for(&p, 4096) == 0 && pool_order_for(&p, 4097) == 1, "order_for 4K");
    T_CHECK(pool_order_for(&p, 1 << 20) == 8 && pool_order_for(&p, (1 << 20) + 1) == -1,
            "order_for top");
    if (check_whole(&p)) return T_EXIT_FAIL;

    /* the whole arena, then nothing */
    uint64_t top = pool_alloc(&p, 8);
    T_CHECK(pool_index(top) == 0, "top block id %llu", (unsigned long long)top);
    T_CHECK(pool_alloc(&p, 0) == 0, "exhaustion must return 0");
    T_CHECK(p.in_use == p.bytes && p.peak == p.bytes, "accounting");
    T_CHECK(pool_free(&p, top) == 0, "free top");
    if (check_whole(&p)) return T_EXIT_FAIL;

    /* splitting keeps the lower half: 1 order-0 block splits 8 times */
    uint64_t x = pool_alloc(&p, 0);
    T_CHECK(pool_index(x) == 0, "first order-0 id %llu", (unsigned long long)x);
    for (uint32_t o = 0; o < 8; o++)
        T_CHECK(p.heads[o] == (int32_t)(1u << o), "order %u free block at %d", o, p.heads[o]);
    /* bad ids */
    T_CHECK(pool_free(&p, 0) == -EINVAL, "id 0");
    T_CHECK(pool_free(&p, 257) == -EINVAL, "id past the end");
    T_CHECK(pool_free(&p, UINT64_MAX) == -EINVAL, "id UINT64_MAX");
    T_CHECK(pool_free(&p, 2) == -EINVAL, "a free block's id");
    T_CHECK(pool_free(&p, 3) == -EINVAL, "id of the inside of a free block");
    uint64_t big = pool_alloc(&p, 4); /* 16 pages at index 16 */
    T_CHECK(pool_index(big) == 16, "order-4 id %llu", (unsigned long long)big);
    T_CHECK(pool_free(&p, big + 1) == -EINVAL, "id of the inside of an allocated block");
    T_CHECK(pool_free(&p, big + 15) == -EINVAL, "last page of an allocated block");
    T_CHECK(p.in_use == (17u << 12) && p.nalloc == 2, "bad frees changed accounting: %llu",
            (unsigned long long)p.in_use);
    T_CHECK(pool_free(&p, big) == 0 && pool_free(&p, x) == 0, "frees");
    T_CHECK(pool_free(&p, big) == -EINVAL, "double free after merge");
    T_CHECK(pool_free(&p, x) == -EINVAL, "double free of the merged head");
    /* a stale id: the block went to another allocation in between (generation check) */
    uint64_t y = pool_alloc(&p, 0);
    T_CHECK(pool_index(y) == pool_index(x) && y != x, "reallocated block keeps its id");
    T_CHECK(pool_free(&p, x) == -EINVAL, "stale id of a reallocated block accepted");
    T_CHECK(p.nalloc == 1, "stale free changed accounting");
    T_CHECK(pool_free(&p, y) == 0, "free of the current id");
    if (check_whole(&p)) return T_EXIT_FAIL;
    T_CHECK(p.peak == p.bytes, "peak is a high-water mark (%llu)", (unsigned long long)p.peak);
    pool_destroy(&p);
    return T_EXIT_PASS;
}

/* Two-page pattern: all order-0 allocations, free every other one: nothing merges, an
 * order-1 allocation fails although half the pool is free; free the rest: one block. */
static int test_fragmentation(void) {
    pool p;
    t_ctx = "fragmentation";
    T_CHECK(pool_init(&p, 64 << 10) == 0, "init");
    uint64_t ids[16];
    for (int i = 0; i < 16; i++) {
        ids[i] = pool_alloc(&p, 0);
        T_CHECK(pool_index(ids[i]) == (uint64_t)i, "ids in address order (%llu)",
                (unsigned long long)ids[i]);
    }
    T_CHECK(pool_alloc(&p, 0) == 0, "17th 4 KiB block of a 64 KiB pool");
    for (int i = 0; i < 16; i += 2) T_CHECK(pool_free(&p, ids[i]) == 0, "free");
    T_CHECK(p.in_use == 32 << 10, "in_use %llu", (unsigned long long)p.in_use);
    T_CHECK(pool_alloc(&p, 1) == 0, "an 8 KiB block out of 4 KiB holes");
    uint64_t again = pool_alloc(&p, 0);
    T_CHECK(again && (again - 1) % 2 == 0, "hole reused (%llu)", (unsigned long long)again);
    T_CHECK(pool_free(&p, again) == 0, "free");
    for (int i = 1; i < 16; i += 2) T_CHECK(pool_free(&p, ids[i]) == 0, "free");
    if (check_whole(&p)) return T_EXIT_FAIL;
    T_CHECK(p.peak == 64 << 10, "peak");
    pool_destroy(&p);
    return T_EXIT_PASS;
}

static int free_in_order(pool *p, uint64_t *ids, uint64_t n, int how) {
    if (how == 1) { /* reverse */
        for (uint64_t i = 0; i < n / 2; i++) {
            uint64_t t = ids[i];
            ids[i] = ids[n - 1 - i];
            ids[n - 1 - i] = t;
        }
    } else if (how == 2) { /* shuffle */
        for (uint64_t i = n; i > 1; i--) {
            uint64_t j = xrand() % i, t = ids[i - 1];
            ids[i - 1] = ids[j];
            ids[j] = t;
        }
    }
    uint64_t in_use = p->in_use;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t sz = pool_block_bytes(p, ids[i]);
        T_CHECK(pool_free(p, ids[i]) == 0, "free %llu", (unsigned long long)ids[i]);
        in_use -= sz;
        T_CHECK(p->in_use == in_use, "in_use after free");
        T_CHECK(p->nalloc == n - i - 1, "nalloc after free");
        T_CHECK(pool_free(p, ids[i]) == -EINVAL, "double free of %llu", (unsigned long long)ids[i]);
    }
    return check_whole(p);
}

static int test_random(void) {
    static const char *names[] = {"fifo", "lifo", "random"};
    pool p;
    for (int round = 0; round < 30; round++) {
        int how = round % 3;
        t_ctx = names[how];
        uint64_t bytes = (uint64_t)1 << (12 + 4 + round % 7); /* 64 KiB .. 4 MiB */
        T_CHECK(pool_init(&p, bytes) == 0, "init");
        uint64_t *ids = malloc(p.nblocks * sizeof *ids), n;
        T_CHECK(ids, "malloc");
        if (fill_random(&p, ids, &n, (int)(p.max_order < 5 ? p.max_order : 5))) return T_EXIT_FAIL;
        if (free_in_order(&p, ids, n, how)) return T_EXIT_FAIL;
        T_CHECK(p.peak == p.bytes, "peak %llu", (unsigned long long)p.peak);
        /* and once more after the merge: the whole arena is one block again */
        uint64_t top = pool_alloc(&p, (int)p.max_order);
        T_CHECK(pool_index(top) == 0, "top block after merge (%llu)", (unsigned long long)top);
        T_CHECK(pool_free(&p, top) == 0, "free top");
        free(ids);
        pool_destroy(&p);
    }
    /* interleaved alloc/free churn with a live set, checking accounting all along */
    t_ctx = "churn";
    T_CHECK(pool_init(&p, 1 << 20) == 0, "init");
    uint64_t live[256], nlive = 0, bytes_live = 0;
    for (int step = 0; step < 200000; step++) {
        if (nlive && (xrand() % 2 || nlive == 256)) {
            uint64_t k = xrand() % nlive, id = live[k];
            bytes_live -= pool_block_bytes(&p, id);
            T_CHECK(pool_free(&p, id) == 0, "free");
            live[k] = live[--nlive];
        } else {
            int o = (int)(xrand() % 4);
            uint64_t id = pool_alloc(&p, o);
            if (!id) continue; /* fragmented: fine, try again later */
            live[nlive++] = id;
            bytes_live += pool_block_bytes(&p, id);
        }
        T_CHECK(p.in_use == bytes_live, "in_use %llu != %llu", (unsigned long long)p.in_use,
                (unsigned long long)bytes_live);
        T_CHECK(p.in_use <= p.peak && p.peak <= p.bytes, "peak");
    }
    while (nlive) T_CHECK(pool_free(&p, live[--nlive]) == 0, "free");
    if (check_whole(&p)) return T_EXIT_FAIL;
    pool_destroy(&p);
    return T_EXIT_PASS;
}

static int test_limits(void) {
    pool p;
    t_ctx = "limits";
    /* 2^51 B would need 2^39 pages: refused without touching memory */
    T_CHECK(pool_init(&p, (uint64_t)1 << 51) == -EINVAL, "huge pool accepted");
    T_CHECK(p.arena == NULL, "arena left behind");
    pool_destroy(&p); /* harmless on a failed init */
    return T_EXIT_PASS;
}

int main(void) {
    if (test_basic()) return T_EXIT_FAIL;
    if (test_fragmentation()) return T_EXIT_FAIL;
    if (test_random()) return T_EXIT_FAIL;
    if (test_limits()) return T_EXIT_FAIL;
    return T_EXIT_PASS;
}
