/* Internal helpers shared by every dtype instantiation: compensated sums, the
 * tiling plan and the thread count. Not part of the public C API. */
#ifndef FASTBN_PLAN_H
#define FASTBN_PLAN_H

#include <math.h>
#include <stdint.h>

#include "fastbn.h"

/* Channels processed together when inner == 1 (a row of a block is contiguous). */
#define FBN_COL_BLOCK 64
/* Values summed in plain lanes before they are added to a compensated total:
 * bounds the rounding error of long sums without slowing the inner loop. */
#define FBN_PIECE 1024
/* Bytes of data per tile: a tile is reduced and then rewritten while in L2. */
#define FBN_TILE_BYTES (768 * 1024)
/* Below this many values a call runs on one thread: start-up would cost more. */
#define FBN_MIN_PARALLEL 65536

/* Neumaier-compensated sum. */
typedef struct {
    double sum, comp;
} fbn_ksum;

static inline void fbn_kadd(fbn_ksum *k, double v) {
    double t = k->sum + v;
    if (fabs(k->sum) >= fabs(v))
        k->comp += (k->sum - t) + v;
    else
        k->comp += (v - t) + k->sum;
    k->sum = t;
}

static inline double fbn_kval(const fbn_ksum *k) { return k->sum + k->comp; }

/* Eight plain lanes (vectorisable without reassociation) feeding a compensated
 * total every FBN_PIECE values. */
typedef struct {
    double lane[8];
    int64_t pending;
    fbn_ksum total;
} fbn_acc;

static inline void fbn_acc_flush(fbn_acc *a) {
    double l = ((a->lane[0] + a->lane[1]) + (a->lane[2] + a->lane[3])) +
               ((a->lane[4] + a->lane[5]) + (a->lane[6] + a->lane[7]));
    fbn_kadd(&a->total, l);
    for (int i = 0; i < 8; i++) a->lane[i] = 0.0;
    a->pending = 0;
}

static inline double fbn_acc_value(fbn_acc *a) {
    fbn_acc_flush(a);
    return fbn_kval(&a->total);
}

/* Partial statistics of one tile for one channel: n values, their mean and m2,
 * all relative to the channel's pivot (its first value). */
typedef struct {
    double n, mean, m2;
} fbn_part;

/* Chan et al.: fold b into a. */
static inline void fbn_merge(fbn_part *a, const fbn_part *b) {
    double n = a->n + b->n;
    if (b->n == 0) return;
    if (a->n == 0) { *a = *b; return; }
    double delta = b->mean - a->mean;
    a->mean += delta * (b->n / n);
    a->m2 += b->m2 + delta * delta * (a->n * b->n / n);
    a->n = n;
}

/* How the canonical array is cut into tiles: nblocks channel blocks of `block`
 * channels, each cut into nsegs runs of seg_len values per channel (flat index
 * over (outer, inner); the last run may be shorter). Depends on the shape and
 * element size only, never on the thread count, so results are reproducible. */
typedef struct {
    fbn_shape s;
    int64_t block, nblocks;
    int64_t per_channel, seg_len, nsegs;
} fbn_plan;

fbn_plan fbn_make_plan(fbn_shape s, int64_t bytes_per_value);
int fbn_threads_for(const fbn_plan *p, int nthreads);

#endif
