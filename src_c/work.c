/* The work memory of kernel calls (see work.h). */
#include <stdint.h>
#include <stdlib.h>

#include "parallel.h"
#include "tuning.h"
#include "work.h"

/* The cached work block: claimed by one call at a time (FBN_CLAIM, parallel.h;
 * calls that find it taken allocate their own). */
static long fbn_cache_busy;
static void *fbn_cache_block;
static int64_t fbn_cache_bytes;

/* Under AddressSanitizer every call allocates its own block and a poisoned gap
 * follows each buffer: an overrun of one buffer is still reported, as with a
 * malloc each. */
#if FBN_ASAN /* parallel.h */
#include <sanitizer/asan_interface.h>
#define FBN_GAP 64
#else
#define FBN_GAP 0
#define ASAN_POISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#define ASAN_UNPOISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#endif

static int64_t fbn_round64(int64_t n) { return (n + 63) / 64 * 64; }

int fbn_work_alloc(fbn_work *w, int n, const int64_t *bytes, void **buffers) {
    int64_t total = 64; /* room to align the first buffer */
    for (int i = 0; i < n; i++) total += fbn_round64(bytes[i]) + FBN_GAP;
    w->block = NULL;
    w->cached = 0;
    w->bytes = total;
    if (!FBN_ASAN && total <= FBN_WORK_CACHE && FBN_CLAIM(fbn_cache_busy)) {
        if (fbn_cache_bytes < total) {
            free(fbn_cache_block);
            fbn_cache_block = malloc(total);
            fbn_cache_bytes = fbn_cache_block ? total : 0;
        }
        if (fbn_cache_block) {
            w->block = fbn_cache_block;
            w->cached = 1;
        } else {
            FBN_UNCLAIM(fbn_cache_busy);
        }
    }
    if (!w->block) w->block = malloc(total);
    if (!w->block) return -1;
    char *at = (char *)w->block + (64 - (uintptr_t)w->block % 64) % 64;
    for (int i = 0; i < n; i++) {
        buffers[i] = at;
        ASAN_POISON_MEMORY_REGION(at + bytes[i], fbn_round64(bytes[i]) - bytes[i] + FBN_GAP);
        at += fbn_round64(bytes[i]) + FBN_GAP;
    }
    return 0;
}

void fbn_work_after_fork(void) { fbn_cache_busy = 0; }

void fbn_work_free(fbn_work *w) {
    if (w->cached) {
        FBN_UNCLAIM(fbn_cache_busy);
    } else {
        ASAN_UNPOISON_MEMORY_REGION(w->block, w->bytes);
        free(w->block);
    }
    w->block = NULL;
}
