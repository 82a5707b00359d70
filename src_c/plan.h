/* Internal helpers shared by every dtype instantiation: compensated sums, the
 * tiling plan and the thread count. Not part of the public C API. */
#ifndef FASTBN_PLAN_H
#define FASTBN_PLAN_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "fastbn.h"
#include "parallel.h"

/* Widest channel block of a fused reduction tile when inner == 1 (whole channels
 * of the block fit in a tile); other tiles take whole rows. */
#define FBN_COL_MAX 256
/* Columns shape: rows summed together in registers before per-channel sums
 * (and rows sharing coefficients loaded once in elementwise passes). */
#define FBN_GROUP 4
/* Columns shape, dx with C channels in [MIN, MAX]: row groups, not flat spans
 * of repeated coefficients (see repeat_typed). */
#define FBN_DX_GROUP_MIN 16
#define FBN_DX_GROUP_MAX 64
/* Columns shape: rows summed plainly before a compensated total. */
#define FBN_FLUSH_ROWS 64
/* Channels per work item when partial statistics are merged in parallel. */
#define FBN_MERGE_CHUNK 256
/* Columns shape reductions: scratch doubles per channel (sums, totals, flags). */
#define FBN_COL_SCRATCH 8
/* Independent accumulator lanes: enough vector registers to hide add latency. */
#define FBN_LANES 32 /* fbn_acc_flush assumes 32 */
/* Values summed in plain lanes before they are added to a compensated total:
 * bounds the rounding error of long sums without slowing the inner loop. */
#define FBN_PIECE 4096
/* Bytes of data per tile: a tile is reduced and then rewritten while in L2. */
#define FBN_TILE_BYTES (1024 * 1024)
/* Whole-row reduction tiles (inner == 1) are up to this many tiles long, and
 * there are at least FBN_MIN_TILES of them where rows allow; so are elementwise
 * tiles of arrays of FBN_MIN_PARALLEL values or more, which split anywhere. */
#define FBN_ROW_TILES 4
#define FBN_MIN_TILES 16
/* One pass of shifted sums gives the variance to ~FBN_ONE_PASS * 1e-16 relative:
 * above that, statistics take a second, centred pass. */
#define FBN_ONE_PASS 256.0
/* Outputs of at least this many bytes are written with non-temporal stores
 * (SSE2's, from 16-byte vectors of GCC's vector extensions, which clang has too;
 * other compilers store them as usual), their inputs prefetched FBN_STREAM_AHEAD
 * bytes ahead. */
#define FBN_STREAM_BYTES (16 * 1024 * 1024)
#define FBN_STREAM_AHEAD 4096
#if defined(__SSE2__) && defined(__GNUC__)
#define FBN_CAN_STREAM 1
#define FBN_STREAM_FENCE() _mm_sfence()
#else
#define FBN_CAN_STREAM 0
#define FBN_STREAM_FENCE() ((void)0)
#endif
/* Below this many values a call runs on one thread: start-up would cost more. */
#define FBN_MIN_PARALLEL 65536

/* Helpers of the dispatched tile functions must be inlined into them, so that
 * each target_clones version compiles them for its own instruction set. */
#if defined(__GNUC__)
#define FBN_INLINE static inline __attribute__((always_inline))
#else
#define FBN_INLINE static inline
#endif

/* Row groups a reduction fetches ahead where the hardware prefetcher falls short:
 * channel blocks, and rows of at most FBN_SHORT_ROW bytes (see prefetch_block). */
#define FBN_AHEAD 1
#define FBN_SHORT_ROW 2048
/* Rows shape: reductions over runs of at most FBN_SHORT_RUN bytes (small maps,
 * e.g. 14x14) fetch the run FBN_RUNS_AHEAD rows ahead: the hardware prefetcher
 * does not follow short runs a row apart. */
#define FBN_RUNS_AHEAD 2
#define FBN_SHORT_RUN 4096
static inline void fbn_prefetch(const void *p, int64_t bytes) {
#if defined(__GNUC__)
    const char *q = (const char *)p;
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(q + b);
#else
    (void)p;
    (void)bytes;
#endif
}

/* Before a loop without loop-carried dependences (values may still be read and
 * written at one address in one iteration, as in place): vectorise it without
 * runtime alias checks. */
#if defined(__GNUC__) && !defined(__clang__)
#define FBN_IVDEP _Pragma("GCC ivdep")
#elif defined(__clang__)
#define FBN_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define FBN_IVDEP
#endif

/* isfinite as a comparison, which vectorises: false for NaN and +-inf. */
#define FBN_FINITE(v) (fabs(v) <= DBL_MAX)

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

/* An infinite sum makes the compensation NaN (inf - inf): the sum is the answer then. */
static inline double fbn_kval(const fbn_ksum *k) {
    return FBN_FINITE(k->sum) ? k->sum + k->comp : k->sum;
}

/* fbn_kadd on arrays: sum[i] += v[i], compensated in comp[i]; no branch, so
 * the loop vectorises. */
static inline void fbn_kadd_arrays(double *restrict sum, double *restrict comp,
                                   const double *restrict v, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double s = sum[i], x = v[i], t = s + x;
        int s_big = fabs(s) >= fabs(x);
        double big = s_big ? s : x, small = s_big ? x : s;
        comp[i] += (big - t) + small;
        sum[i] = t;
    }
}

/* Columns-shape reductions: plain sums acc and acc2 over FBN_FLUSH_ROWS rows at a
 * time go to compensated totals (tot, comp) and (tot2, comp2), nc of each.
 * fbn_sums_begin clears the totals; over at most FBN_FLUSH_ROWS rows (a small
 * batch) the plain sums are the totals, with zero compensations (bitwise what
 * their compensated add to zero gives): it then points acc and acc2 at the
 * totals and returns 1, and fbn_sums_flush has nothing to do. */
static inline int fbn_sums_begin(int64_t rows, int64_t nc, double **acc, double **acc2,
                                 double *tot, double *comp, double *tot2, double *comp2) {
    memset(comp, 0, nc * sizeof(double));
    memset(comp2, 0, nc * sizeof(double));
    if (rows <= FBN_FLUSH_ROWS) {
        *acc = tot;
        *acc2 = tot2;
        return 1;
    }
    memset(tot, 0, nc * sizeof(double));
    memset(tot2, 0, nc * sizeof(double));
    return 0;
}

static inline void fbn_sums_flush(int one_flush, int64_t nc, const double *acc,
                                  const double *acc2, double *tot, double *comp, double *tot2,
                                  double *comp2) {
    if (one_flush) return;
    fbn_kadd_arrays(tot, comp, acc, nc);
    fbn_kadd_arrays(tot2, comp2, acc2, nc);
}

/* FBN_LANES plain lanes (vectorisable without reassociation) feeding a
 * compensated total every FBN_PIECE values (counted by the caller: FBN_SUM_RUNS). */
typedef struct {
    double lane[FBN_LANES];
    fbn_ksum total;
} fbn_acc;

static inline void fbn_acc_flush(fbn_acc *a) {
    double *l = a->lane; /* pairwise, in a fixed order; constant trip counts vectorise */
    for (int i = 0; i < 16; i++) l[i] += l[i + 16];
    for (int i = 0; i < 8; i++) l[i] += l[i + 8];
    for (int i = 0; i < 4; i++) l[i] += l[i + 4];
    fbn_kadd(&a->total, (l[0] + l[2]) + (l[1] + l[3]));
    memset(l, 0, sizeof a->lane);
}

static inline double fbn_acc_value(fbn_acc *a) {
    fbn_acc_flush(a);
    return fbn_kval(&a->total);
}

/* Partial statistics of one tile for one channel: the mean and m2 of its values
 * (their count is the tile's, from the plan), relative to the channel's pivot
 * (its first value). */
typedef struct {
    double mean, m2;
} fbn_part;

/* How the canonical array is cut into tiles: nblocks channel blocks of `block`
 * channels, each cut into nsegs runs of seg_len values per channel (flat index
 * over (outer, inner); the last run may be shorter). Depends on the shape and
 * element size only, never on the thread count, so results are reproducible. */
typedef struct {
    fbn_shape s;
    int64_t block, nblocks;
    int64_t per_channel, seg_len, nsegs;
    int stream; /* output too large for the caches: write it non-temporally */
    /* elementwise passes with inner > 1: tile t is the rows (o, c), flat index
     * o * C + c, in [t * rows, (t + 1) * rows): contiguous memory */
    int64_t rows;
} fbn_plan;

/* Per-channel coefficients of the elementwise passes (arrays of C values):
 *   forward   y  = (x - shift) * scale + bias              (then ReLU if relu)
 *   backward  dx = k_dy * (dy' - mean_dy) + k_x * xhat,  xhat = ((x - shift) - lo) * invstd
 * where dy' is dy zeroed where the forward's ReLU was off, and shift + lo is the
 * mean as a double-double (so x - shift is exact-ish far from the origin). */
typedef struct {
    const double *shift, *lo, *scale, *bias;
    const double *k_dy, *k_x, *mean_dy;
    int relu;
    const double *invstd;
} fbn_coefs;

/* Per-thread scratch of the reductions, in doubles; the thread's index. */
static inline int64_t fbn_scratch_len(const fbn_plan *p) {
    return p->s.inner == 1 ? FBN_COL_SCRATCH * p->block : 1;
}

/* Work of a backward reduction, in doubles: each segment's sums (2 per channel),
 * their compensations (2 per channel), then nt threads' scratch. */
static inline int64_t fbn_reduce_work_len(const fbn_plan *p, int nt) {
    return (p->nsegs + 1) * 2 * p->s.channels + nt * fbn_scratch_len(p);
}
static inline double *fbn_reduce_scratch(const fbn_plan *p, double *work) {
    return work + (p->nsegs + 1) * 2 * p->s.channels;
}

/* The work memory of one call: n buffers (bytes[i] each, 64-byte aligned) in
 * one block. Calls reuse one cached block when it is free and large enough to
 * keep: fresh C-sized blocks (from C ~ 4096 up) come from mmap, and their page
 * faults cost small calls more than their arithmetic. */
typedef struct {
    void *block;
    int64_t bytes;
    int cached;
} fbn_work;
int fbn_work_alloc(fbn_work *w, int n, const int64_t *bytes, void **buffers);
void fbn_work_free(fbn_work *w);

fbn_plan fbn_make_plan(fbn_shape s, int64_t elem_size, int inputs, int reduction);
int fbn_threads_for(const fbn_plan *p, int nthreads);

#endif
