/* The work memory of one kernel call (work.c). Internal, not part of the public
 * C API. */
#ifndef FASTBN_WORK_H
#define FASTBN_WORK_H

#include <stdint.h>

/* n buffers (bytes[i] each, 64-byte aligned) in one block. Calls reuse one cached
 * block when it is free and at most FBN_WORK_CACHE bytes: fresh C-sized blocks
 * (from C ~ 4096 up) come from mmap, and their page faults cost small calls more
 * than their arithmetic. */
typedef struct {
    void *block;
    int64_t bytes;
    int cached;
} fbn_work;

/* Returns 0, or -1 when the block cannot be allocated. */
int fbn_work_alloc(fbn_work *w, int n, const int64_t *bytes, void **buffers);
void fbn_work_free(fbn_work *w);
/* fbn_work_after_fork is declared in parallel.h (the pool calls it). */

#endif
