/* The memory of the outputs fastbn allocates (see fastbn.h, fbn_outmem_alloc). */
#if defined(__linux__) && !defined(_DEFAULT_SOURCE)
#define _DEFAULT_SOURCE /* madvise, MADV_HUGEPAGE under -std=c99 */
#endif
#include <stdint.h>
#include <stdlib.h>
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "fastbn.h"
#include "parallel.h"

/* Blocks of fewer bytes come from malloc and go back to free: its own heap reuses
 * them without new pages. Larger ones are mapped afresh by malloc, and every page
 * of a fresh mapping faults and is zeroed by the kernel on first write (the time
 * of a whole pass over the data): those are the blocks worth keeping. */
#define FBN_OUTMEM_MIN ((size_t)1 << 20)
#define FBN_OUTMEM_SLOTS 32

/* One claim at a time (FBN_CLAIM, parallel.h): a call that finds it taken, or a
 * child forked while another thread held it, uses malloc and free directly, so
 * nothing ever waits. No atomics known, or AddressSanitizer (which must see each
 * free): no cache (FBN_OUTMEM_CACHE 0). */
#define FBN_OUTMEM_CACHE (FBN_CAN_CLAIM && !FBN_ASAN)

static long outmem_busy;
static struct {
    void *p;
    size_t bytes;
} outmem_slot[FBN_OUTMEM_SLOTS]; /* kept blocks, oldest first */
static int outmem_count;
static size_t outmem_held;
static int64_t outmem_limit = -1; /* -1: not set yet (fbn_outmem_default) */

/* A forked child starts with an empty cache (parallel.c's fork handler calls this):
 * its copies of the kept blocks are its parent's pages, which its first writes
 * would copy one by one (dearer than fresh ones). It frees them, or forgets them if
 * another thread of the parent held the claim at the fork (the list may be half
 * written then). */
void fbn_outmem_after_fork(void) {
    if (outmem_busy == 0)
        for (int i = 0; i < outmem_count; i++) free(outmem_slot[i].p);
    outmem_count = 0;
    outmem_held = 0;
    outmem_busy = 0;
}

/* A sixteenth of the physical memory, at most 1 GiB; 256 MiB where unknown. */
static int64_t fbn_outmem_default(void) {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) {
        const int64_t sixteenth = (int64_t)pages * page / 16;
        return sixteenth < ((int64_t)1 << 30) ? sixteenth : ((int64_t)1 << 30);
    }
#endif
    return (int64_t)256 << 20;
}

/* Drops the oldest kept blocks until `room` more bytes (room <= limit) and one
 * more block fit. Called with the claim held. */
static void fbn_outmem_evict(size_t room, size_t limit) {
    int drop = 0;
    size_t held = outmem_held;
    while (drop < outmem_count &&
           (outmem_count - drop >= FBN_OUTMEM_SLOTS || held + room > limit)) {
        held -= outmem_slot[drop].bytes;
        free(outmem_slot[drop].p);
        drop++;
    }
    for (int i = drop; i < outmem_count; i++) outmem_slot[i - drop] = outmem_slot[i];
    outmem_count -= drop;
    outmem_held = held;
}

void *fbn_outmem_alloc(size_t bytes) {
    if (FBN_OUTMEM_CACHE && bytes >= FBN_OUTMEM_MIN && FBN_CLAIM(outmem_busy)) {
        void *p = NULL;
        for (int i = outmem_count - 1; i >= 0; i--) /* the newest of that size */
            if (outmem_slot[i].bytes == bytes) {
                p = outmem_slot[i].p;
                for (int k = i + 1; k < outmem_count; k++) outmem_slot[k - 1] = outmem_slot[k];
                outmem_count--;
                outmem_held -= bytes;
                break;
            }
        FBN_UNCLAIM(outmem_busy);
        if (p) return p;
    }
    void *p = malloc(bytes ? bytes : 1);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    /* as NumPy's own allocator does for large arrays: fewer page faults */
    if (p && bytes >= ((size_t)4 << 20)) {
        const uintptr_t page = 4096, start = ((uintptr_t)p + page - 1) & ~(page - 1);
        const uintptr_t end = ((uintptr_t)p + bytes) & ~(page - 1);
        if (end > start) madvise((void *)start, end - start, MADV_HUGEPAGE);
    }
#endif
    return p;
}

void fbn_outmem_free(void *p, size_t bytes) {
    if (p == NULL) return;
    if (FBN_OUTMEM_CACHE && bytes >= FBN_OUTMEM_MIN && FBN_CLAIM(outmem_busy)) {
        if (outmem_limit < 0) outmem_limit = fbn_outmem_default();
        const int kept = bytes <= (size_t)outmem_limit; /* else freed, the others kept */
        if (kept) {
            fbn_outmem_evict(bytes, (size_t)outmem_limit);
            outmem_slot[outmem_count].p = p;
            outmem_slot[outmem_count].bytes = bytes;
            outmem_count++;
            outmem_held += bytes;
        }
        FBN_UNCLAIM(outmem_busy);
        if (kept) return;
    }
    free(p);
}

int64_t fbn_outmem_limit(int64_t max_bytes) {
#if FBN_OUTMEM_CACHE
    /* a claim lasts a few loads and stores; one that does not end is a forked
     * child's copy of a claim its parent's other thread held */
    for (long tries = 0; !FBN_CLAIM(outmem_busy); tries++)
        if (tries > 100000000) return -1;
    if (outmem_limit < 0) outmem_limit = fbn_outmem_default();
    const int64_t old = outmem_limit;
    if (max_bytes >= 0) {
        outmem_limit = max_bytes;
        fbn_outmem_evict(0, (size_t)max_bytes);
    }
    FBN_UNCLAIM(outmem_busy);
    return old;
#else
    (void)max_bytes;
    return 0;
#endif
}

int64_t fbn_outmem_held(void) {
#if defined(__GNUC__) || defined(__clang__)
    return (int64_t)__atomic_load_n(&outmem_held, __ATOMIC_RELAXED);
#else
    return (int64_t)outmem_held; /* a figure for show_config */
#endif
}
