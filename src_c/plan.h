/* How a call cuts its array into tiles (plan.c), and the per-channel structs the
 * kernels pass around. Internal, not part of the public C API.
 * (fastbn/_front.pxi reads FBN_MIN_PARALLEL through this header.) */
#ifndef FASTBN_PLAN_H
#define FASTBN_PLAN_H

#include <stdint.h>

#include "compiler.h"
#include "fastbn.h"
#include "ksum.h"
#include "parallel.h"
#include "tuning.h"
#include "work.h"

/* How the canonical (outer, C, inner) array is cut into tiles. Depends on the
 * shape and element size only, never on the thread count, so results are
 * reproducible. Tiles come in two kinds:
 *  - channel-block tiles (every reduction; elementwise passes with inner == 1):
 *    nblocks blocks of `block` channels, each cut into nsegs segments of seg_len
 *    values per channel (flat index over (outer, inner); the last may be shorter).
 *    Tile t is block t / nsegs, segment t % nsegs (fbn_tile_of_<sfx>).
 *  - row tiles (elementwise passes with inner > 1), when rows > 0: tile t is the
 *    (o, c) rows of flat index o * C + c in [t * rows, (t + 1) * rows), contiguous
 *    memory; block, nblocks, seg_len and nsegs are 0 then. */
typedef struct {
    fbn_shape s;
    int64_t per_channel; /* outer * inner: values per channel */
    int64_t ntiles;      /* tiles of either kind (0 when there are no values) */
    int stream;          /* data too large for L3: write the output non-temporally */
    int beyond_l3;       /* the pass's inputs and output take more than its share of L3
                          * (stream's test, whatever the stores and the output's pages) */
    int64_t block, nblocks, seg_len, nsegs; /* channel-block tiles */
    int64_t rows;                           /* row tiles: rows per tile (0: none) */
    /* reductions with inner > 1 and nsegs > 1: a channel's data fit in the caches
     * detected at run time, so one task reduces its segments (each as a tile of
     * its own, merged as the unfused pass merges them: the same bits) and then
     * rewrites the channel while it is in cache (kern_fused.h) */
    int fuse_segs;
    int64_t l1_half; /* half of L1d in bytes (bounds of the elementwise walks) */
} fbn_plan;

enum { FBN_ELEMWISE = 0, FBN_REDUCTION = 1 };

/* How much further apart the inputs' rows are than a contiguous array's (see
 * fbn_shape.row_stride): input value (o, c, i) is at the output's offset plus
 * o * gap. 0 when contiguous. */
static inline int64_t fbn_row_gap(const fbn_shape *s) {
    return s->row_stride ? s->row_stride - s->channels * s->inner : 0;
}

/* The columns view of s: (outer, C * inner), each of a channel's inner positions a
 * channel of its own, rows as far apart (the same memory). */
static inline fbn_shape fbn_columns_shape(fbn_shape s) {
    s.channels *= s.inner;
    s.inner = 1;
    return s;
}

/* Compile-time constant arguments of the shared kernel bodies (they fold away
 * after inlining): which sums fbn_sum_runs_<sfx> adds, which elementwise pass
 * fbn_elemwise_tile_<sfx> computes (FBN_OP_COPY: a
 * buffer streamed out). */
enum { FBN_SUMS_DEV = 0, FBN_SUMS_BWD = 1 };
enum { FBN_OP_AFFINE = 0, FBN_OP_DX = 1, FBN_OP_COPY = 2 };
/* The epilogues of issue 20 as ops of their own, so that the plain ops' code is
 * unchanged: FBN_OP_XAFF + act + 4 * res (y with activation act, 0 none, 1 ReLU,
 * 2 leaky ReLU, and res: a residual z added before it, read as the second input)
 * and FBN_OP_XDX + 2 + 4 * res (dx with a leaky ReLU's mask; res, 16-bit data
 * only: the mask's pre-activation adds z, read at x's offsets from the typed
 * coefficients' z, as the second input is dy). */
enum { FBN_OP_XAFF = 8, FBN_OP_XDX = 16 };
#define FBN_OP_ACT(op) ((op) & 3)
#define FBN_OP_RES(op) (((op) >> 2) & 1)
#define FBN_IS_AFF(op) ((op) == FBN_OP_AFFINE || ((op) & FBN_OP_XAFF))
#define FBN_IS_DX(op) ((op) == FBN_OP_DX || ((op) & FBN_OP_XDX))
#define FBN_IS_EXT(op) (((op) & (FBN_OP_XAFF | FBN_OP_XDX)) != 0) /* an epilogue op */
/* whether op reads a second input (dy; z) */
#define FBN_TWO_INPUTS(op) (FBN_IS_DX(op) || (((op) & FBN_OP_XAFF) && FBN_OP_RES(op)))

/* This machine's cache sizes in bytes (L1 data and L2 per core, L3), detected at
 * the first call: /sys/devices/system/cpu/cpu0/cache, then sysconf, then
 * fallbacks (32 KB, 512 KB, 8 MB). FASTBN_CACHE_SIZES="l1d,l2,l3" in the
 * environment (bytes, or with a K or M suffix) overrides them, and so does
 * fbn_set_cache_sizes (tests and tuning; zeros detect again). They size only
 * choices that change no result's bits: elementwise tiles, whether a pass's stores
 * are streamed (its data against 3/4 of L3), the L1 bound of the elementwise
 * walks, fuse_segs and the tasks of fused passes (fbn_fuse_group). Reduction
 * tilings stay fixed (FBN_TILE_BYTES, FBN_STREAM_BYTES), so results do not depend
 * on the machine. */
typedef struct {
    int64_t l1d, l2, l3;
} fbn_caches;
fbn_caches fbn_cache_sizes(void);
void fbn_set_cache_sizes(int64_t l1d, int64_t l2, int64_t l3);

/* The plan of a pass that reads `inputs` arrays of elem_size values (and writes
 * one output), kind FBN_REDUCTION or FBN_ELEMWISE. */
fbn_plan fbn_make_plan(fbn_shape s, int64_t elem_size, int inputs, int kind);
/* Whether [p, p + bytes) is in memory (stream.c; 1 where unknown). */
int fbn_resident(const void *p, int64_t bytes);
/* A plan's stores into `out` (of the plan's shape and elem_size values): streamed
 * only if its pages are in memory (see fbn_resident). Changes no tiling, so no
 * result's bits. */
static inline void fbn_plan_output(fbn_plan *p, const void *out, int64_t elem_size) {
    if (p->stream && !fbn_resident(out, p->per_channel * p->s.channels * elem_size))
        p->stream = 0;
}
/* Consecutive channel-block tiles per task of a fused pass over whole channels
 * (nsegs == 1) that reads `inputs` arrays of elem_size values, on nt threads (see
 * plan.c). Changes no result's bits: each tile is reduced and rewritten alone. */
int64_t fbn_fuse_group(const fbn_plan *p, int64_t elem_size, int inputs, int nt);
/* Adjacent channels a rows-shape reduction of plan p (of `inputs` arrays of
 * elem_size values) on nt threads reads together, row by row (1: one at a time):
 * see FBN_RUN_GROUP. reread: a fused pass, which re-reads them from cache; 0: a
 * pass that reads them once. Changes no result's bits. */
int64_t fbn_run_group(const fbn_plan *p, int64_t elem_size, int inputs, int nt, int reread);
/* Groups of `group` channel blocks cover p's blocks in this many (the last group
 * may be short). */
static inline int64_t fbn_group_count(const fbn_plan *p, int64_t group) {
    return (p->nblocks + group - 1) / group;
}
/* The channels of the group of at most `group` from channel c0 (the last fewer). */
static inline int64_t fbn_group_len(const fbn_plan *p, int64_t c0, int64_t group) {
    const int64_t left = p->s.channels - c0;
    return left < group ? left : group;
}
/* The threads a loop over p's tiles uses: 1 below FBN_MIN_PARALLEL values. */
int fbn_threads_for(const fbn_plan *p, int nthreads);

/* Partial statistics of one tile for one channel: the mean and m2 of its values
 * (their count is the tile's, from the plan), relative to the channel's pivot
 * (its first value). */
typedef struct {
    double mean, m2;
} fbn_part;

/* Three sums of dy' (dy, zeroed where a forward ReLU was off) times x, named by
 * how x is centred (here and in every kernel):
 *   sum_dy_xs    sum(dy' * (x - shift))       shift: the mean's high part (hi)
 *   sum_dy_xc    sum(dy' * (x - mean))        mean = hi + lo, a double-double
 *   sum_dy_xhat  sum(dy' * xhat)              xhat = (x - mean) * invstd (= dgamma)
 *
 * Per-channel coefficients of the elementwise passes (arrays of C values; fill
 * them by name, with designated initialisers):
 *   forward   y  = (x - shift) * scale + bias              (then ReLU if relu)
 *   backward  dx = k_dy * (dy' - mean_dy) + k_x * xhat, xhat = ((x - shift) - lo) * invstd
 * lo (NULL: zero) is the mean's residual; shift + lo is the mean, so that x - shift
 * is exact-ish far from the origin. Unused members are NULL. */
typedef struct {
    const double *shift, *lo, *scale, *bias;
    const double *invstd, *k_dy, *k_x, *mean_dy; /* backward only */
    int relu;
} fbn_coefs;

/* Per-thread scratch of the reductions, in doubles. */
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

#endif
