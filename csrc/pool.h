/*
 * pool.h -- the bounded, aligned buffer pool: a buddy allocator over one arena.
 *
 * The arena is one anonymous mapping of `bytes` (a power of two, >= 4 KiB), reserved
 * with MAP_NORESERVE and touched lazily, so an idle pool costs no memory.  Blocks are
 * 4 KiB << order and aligned to their own size *relative to the arena start*; the arena
 * itself is only page-aligned (mmap), so a block's address is aligned to 4 KiB, not to
 * its size.  4 KiB is enough for O_DIRECT on every Linux file system we know.  A block's
 * id is its 4 KiB index + 1 in the low 32 bits, so 0 means "no buffer", and in the high 32
 * bits a generation that changes with every allocation of that block: a stale id (a
 * double release after the block went to another read) is refused with -EINVAL instead
 * of freeing somebody else's buffer.
 *
 * Not thread-safe: the engine calls it under its mutex.
 * Ownership: the pool owns the arena; pool_destroy unmaps it, so the engine calls it
 * only when no block is out (no caller view, no kernel op).
 */
#ifndef LSIO_POOL_H
#define LSIO_POOL_H
#include <stddef.h>
#include <stdint.h>

#define POOL_MIN_SHIFT 12 /* 4 KiB */

typedef struct pool {
    char *arena;
    uint64_t bytes;       /* arena size, power of two */
    uint32_t max_order;   /* bytes == 4 KiB << max_order */
    uint64_t nblocks;     /* bytes / 4 KiB */
    uint64_t in_use;      /* bytes in allocated blocks */
    uint64_t peak;
    uint64_t nalloc;      /* blocks out */
    int32_t *next, *prev; /* free-list links, by block index (-1 = none) */
    int8_t *order;        /* order of the block starting here, or -1 */
    uint8_t *is_free;     /* 1 when the block starting here is on a free list */
    uint32_t *gen;        /* generation of the block starting here (see ids above) */
    int32_t heads[40];    /* free-list head per order */
} pool;

/* Returns 0 or -errno. `bytes` is rounded up to a power of two >= 4 KiB. */
int pool_init(pool *p, uint64_t bytes);
void pool_destroy(pool *p);
/* Order of the smallest block holding n bytes, or -1 if larger than the arena. */
int pool_order_for(const pool *p, uint64_t n);
/* Returns a block id (> 0) or 0 when no block of that order is free now. */
uint64_t pool_alloc(pool *p, int order);
/* Returns 0, or -EINVAL for an id that is not an allocated block. */
int pool_free(pool *p, uint64_t id);
static inline uint64_t pool_index(uint64_t id) { return (id & 0xffffffffu) - 1; }
static inline char *pool_ptr(const pool *p, uint64_t id) {
    return p->arena + (pool_index(id) << POOL_MIN_SHIFT);
}
static inline uint64_t pool_block_bytes(const pool *p, uint64_t id) {
    return (uint64_t)1 << (POOL_MIN_SHIFT + p->order[pool_index(id)]);
}
#endif
