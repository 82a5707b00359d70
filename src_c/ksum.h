/* Compensated (Neumaier) sums of the reductions, and the plain-lane accumulators
 * that feed them. Internal, not part of the public C API. */
#ifndef FASTBN_KSUM_H
#define FASTBN_KSUM_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "compiler.h"

/* Neumaier-compensated sum: the answer is sum + comp (fbn_kval). */
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

/* Row i (g and i constants after unrolling) of a row group whose rows are summed
 * one after another (kern_cols.h's rows in order): channel c's values v1 and v2
 * go to its partial sums p1 and p2, which start from 0.0 at the first row, and
 * after the last row to acc and acc2: per channel, the operations and order of
 * summing the group's rows in registers first. */
FBN_INLINE void fbn_fold_row(const int i, const int g, int64_t c, double v1, double v2,
                             double *restrict p1, double *restrict p2, double *restrict acc,
                             double *restrict acc2) {
    const double t1 = (i == 0 ? 0.0 : p1[c]) + v1, t2 = (i == 0 ? 0.0 : p2[c]) + v2;
    if (i == g - 1) {
        acc[c] += t1;
        acc2[c] += t2;
    } else {
        p1[c] = t1;
        p2[c] = t2;
    }
}

/* FBN_LANES plain lanes (vectorisable without reassociation) feeding a
 * compensated total every FBN_PIECE values (counted by the caller: see
 * fbn_sum_runs_<sfx> in kern_runs.h). */
typedef struct {
    double lane[FBN_LANES];
    fbn_ksum total;
} fbn_acc;

/* Always inlined: called per FBN_PIECE values inside the dispatched reductions, it
 * went out of line (a call, and its lanes through memory) once they grew. */
FBN_INLINE void fbn_acc_flush(fbn_acc *a) {
    double *l = a->lane; /* pairwise, in a fixed order; constant trip counts vectorise */
    for (int i = 0; i < 16; i++) l[i] += l[i + 16];
    for (int i = 0; i < 8; i++) l[i] += l[i + 8];
    for (int i = 0; i < 4; i++) l[i] += l[i + 4];
    fbn_kadd(&a->total, (l[0] + l[2]) + (l[1] + l[3]));
    memset(l, 0, sizeof a->lane);
}

FBN_INLINE double fbn_acc_value(fbn_acc *a) {
    fbn_acc_flush(a);
    return fbn_kval(&a->total);
}

#endif
