/* pool.c -- buddy allocator; see pool.h for the rules. */
#include "pool.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static void list_push(pool *p, int o, int64_t i) {
    p->next[i] = p->heads[o];
    p->prev[i] = -1;
    if (p->heads[o] >= 0) p->prev[p->heads[o]] = (int32_t)i;
    p->heads[o] = (int32_t)i;
    p->order[i] = (int8_t)o;
    p->is_free[i] = 1;
}

static void list_remove(pool *p, int o, int64_t i) {
    if (p->prev[i] >= 0) p->next[p->prev[i]] = p->next[i];
    else p->heads[o] = p->next[i];
    if (p->next[i] >= 0) p->prev[p->next[i]] = p->prev[i];
    p->is_free[i] = 0;
}

int pool_init(pool *p, uint64_t bytes) {
    memset(p, 0, sizeof *p);
    uint32_t o = 0;
    while (((uint64_t)1 << (POOL_MIN_SHIFT + o)) < bytes) o++;
    if (o >= 39) return -EINVAL;
    p->max_order = o;
    p->bytes = (uint64_t)1 << (POOL_MIN_SHIFT + o);
    p->nblocks = p->bytes >> POOL_MIN_SHIFT;
    if (p->nblocks > INT32_MAX) return -EINVAL;
    void *a = mmap(NULL, p->bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (a == MAP_FAILED) return -errno;
    p->arena = a;
    p->next = malloc(p->nblocks * sizeof(int32_t));
    p->prev = malloc(p->nblocks * sizeof(int32_t));
    p->order = malloc(p->nblocks);
    p->is_free = calloc(p->nblocks, 1);
    p->gen = calloc(p->nblocks, sizeof(uint32_t));
    if (!p->next || !p->prev || !p->order || !p->is_free || !p->gen) {
        pool_destroy(p);
        return -ENOMEM;
    }
    memset(p->order, -1, p->nblocks);
    for (int i = 0; i < 40; i++) p->heads[i] = -1;
    list_push(p, (int)o, 0);
    return 0;
}

void pool_destroy(pool *p) {
    if (p->arena) munmap(p->arena, p->bytes);
    free(p->next);
    free(p->prev);
    free(p->order);
    free(p->is_free);
    free(p->gen);
    memset(p, 0, sizeof *p);
}

int pool_order_for(const pool *p, uint64_t n) {
    int o = 0;
    while (((uint64_t)1 << (POOL_MIN_SHIFT + o)) < n) {
        o++;
        if ((uint32_t)o > p->max_order) return -1;
    }
    return o;
}

uint64_t pool_alloc(pool *p, int order) {
    int o = order;
    while ((uint32_t)o <= p->max_order && p->heads[o] < 0) o++;
    if ((uint32_t)o > p->max_order) return 0;
    int64_t i = p->heads[o];
    list_remove(p, o, i);
    while (o > order) { /* split, keeping the lower half */
        o--;
        list_push(p, o, i + ((int64_t)1 << o));
    }
    p->order[i] = (int8_t)order;
    p->in_use += (uint64_t)1 << (POOL_MIN_SHIFT + order);
    if (p->in_use > p->peak) p->peak = p->in_use;
    p->nalloc++;
    if (++p->gen[i] == 0) p->gen[i] = 1;
    return ((uint64_t)p->gen[i] << 32) | (uint64_t)(i + 1);
}

int pool_free(pool *p, uint64_t id) {
    uint64_t low = id & 0xffffffffu;
    if (low == 0 || low > p->nblocks) return -EINVAL;
    int64_t i = (int64_t)low - 1;
    int o = p->order[i];
    if (o < 0 || p->is_free[i] || (uint32_t)(id >> 32) != p->gen[i]) return -EINVAL;
    if (i & (((int64_t)1 << o) - 1)) return -EINVAL;
    p->in_use -= (uint64_t)1 << (POOL_MIN_SHIFT + o);
    p->nalloc--;
    p->order[i] = -1;
    while ((uint32_t)o < p->max_order) { /* merge with free buddies */
        int64_t b = i ^ ((int64_t)1 << o);
        if (!p->is_free[b] || p->order[b] != o) break;
        list_remove(p, o, b);
        p->order[b] = -1;
        i = i < b ? i : b;
        o++;
    }
    list_push(p, o, i);
    return 0;
}
