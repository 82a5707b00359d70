/* Rows-shape reductions (inner > 1): sums over the contiguous runs of one channel.
 * A per-dtype template: see kern_dtype.h for T, TC and FBN_SYM. */

/* dy, zeroed where the forward's ReLU was off (its pre-activation, recomputed
 * exactly as fbn_affine1_<sfx> does, not stored). Selects, not branches: loops
 * vectorise. */
FBN_INLINE TC FBN_SYM(masked)(TC dy, TC x, TC shift, TC scale, TC bias, int relu) {
    TC pre = (x - shift) * scale + bias;
    TC kept = pre > 0 ? dy : (TC)0;
    return relu ? kept : dy;
}

/* fbn_masked_<sfx> for every epilogue (act: 0 none, 1 ReLU, 2 leaky ReLU; res: a
 * residual z added to the pre-activation; both constants): the plain ones are
 * fbn_masked_<sfx> itself. */
FBN_INLINE TC FBN_SYM(masked_x)(TC dy, TC x, TC z, TC shift, TC scale, TC bias, const int act,
                                const int res, TC slope) {
    if (act < 2 && !res) return FBN_SYM(masked)(dy, x, shift, scale, bias, act);
    TC pre = (x - shift) * scale + bias;
    if (res) pre = pre + z;
    if (act == 2) return pre > 0 ? dy : dy * slope;
    TC kept = pre > 0 ? dy : (TC)0;
    return act ? kept : dy;
}

/* Contiguous runs of channel c covering flat (outer, inner) indices [j0, j1):
 * the first may start inside a row, the next ones start a row (C * inner
 * values) later, at the row's start. No division per run: runs can be short.
 *   for (r = run_first(s, c, j0, j1, gap); r.j < j1; run_next(s, j1, &r)) ...
 * gap: fbn_row_gap(s), given by the caller so that contiguous inputs can pass a
 * literal 0 (see fbn_sum_runs_<sfx>): skip then folds away. */
typedef struct {
    int64_t pos, n, j, row; /* the run: offset, length, flat index; its row's start */
    int64_t skip, gap;      /* the inputs' run is at pos + skip (skip = o * gap, see
                             * fbn_row_gap) */
} FBN_SYM(run_it);

FBN_INLINE FBN_SYM(run_it) FBN_SYM(run_first)(const fbn_shape *s, int64_t c, int64_t j0,
                                              int64_t j1, const int64_t gap) {
    const int64_t o = j0 / s->inner, i = j0 - o * s->inner;
    FBN_SYM(run_it) r;
    r.row = (o * s->channels + c) * s->inner;
    r.pos = r.row + i;
    r.j = j0;
    r.n = s->inner - i < j1 - j0 ? s->inner - i : j1 - j0;
    r.gap = gap;
    r.skip = o * gap;
    return r;
}

FBN_INLINE void FBN_SYM(run_next)(const fbn_shape *s, int64_t j1, FBN_SYM(run_it) *r) {
    r->j += r->n;
    r->row += s->channels * s->inner;
    r->pos = r->row;
    r->skip += r->gap;
    r->n = s->inner < j1 - r->j ? s->inner : j1 - r->j;
}

/* Adds value o's two terms to lanes l1[l] and l2[l] (kind a constant):
 *   FBN_SUMS_DEV: e and e^2, e = (x - pivot) - mean;
 *   FBN_SUMS_BWD: dy' and dy' * (x - shift), dy' masked by relu (a constant: the
 *   activation, see fbn_masked_x_<sfx>; with res, the pre-activation adds z and
 *   dy' is stored to dres). x, dy, z and dres as TC (see fbn_lanes_add_<sfx>). */
FBN_INLINE void FBN_SYM(lane_add)(const int kind, double *l1, double *l2, int l, int64_t o,
                                  const TC *restrict x, const TC *restrict dy, double pivot,
                                  double mean, double shift, TC tshift, TC scale, TC bias,
                                  const int relu, const TC *restrict z, TC *restrict dres,
                                  const int res, TC slope) {
    if (kind == FBN_SUMS_DEV) {
        double e = ((double)x[o] - pivot) - mean;
        l1[l] += e;
        l2[l] += e * e;
    } else {
        TC m = FBN_SYM(masked_x)(dy[o], x[o], res ? z[o] : (TC)0, tshift, scale, bias, relu, res,
                                 slope);
        double g = m;
        if (res) dres[o] = m;
        l1[l] += g;
        l2[l] += g * ((double)x[o] - shift);
    }
}

/* Adds the deviations of 8 values xt around pivot (the first pass's mean 0.0) to
 * lanes base..base+7 (base a constant). */
FBN_INLINE void FBN_SYM(dev8)(double *l1, double *l2, const int base, const TC *xt,
                              double pivot) {
    for (int l = 0; l < 8; l++)
        FBN_SYM(lane_add)(FBN_SUMS_DEV, l1, l2, base + l, l, xt, NULL, pivot, 0.0, 0.0, (TC)0,
                          (TC)0, (TC)0, 0, NULL, NULL, 0, (TC)0);
}

/* The deviations (around pivot, mean 0.0) of the last m < 8 values from o (lanes
 * from o % FBN_LANES, a multiple of 8) as a whole group of 8 lanes: the group's
 * other lanes add those of the pivot itself, +0.0, which leaves a lane as it was (a
 * lane is never -0.0: it starts at +0.0, and a sum of doubles is -0.0 only if both
 * terms are), so the sums are bitwise those of one value a lane. (A pivot of NaN
 * or +-inf adds NaN there, as its own value does to its channel's sums anyway.)
 * Stored one value a lane, a lane's double would be reloaded in a vector of 8 by
 * the next run's loop, and such a load waits for the narrower store to complete:
 * small maps' short runs met that wait every run (docs/performance.md). (The
 * backward's sums, padded with dy = 0, took longer than the wait.) */
FBN_INLINE void FBN_SYM(dev_tail)(double *l1, double *l2, int64_t m, int64_t o,
                                  const TC *restrict x, double pivot) {
    TC xt[8];
    for (int k = 0; k < 8; k++) xt[k] = k < m ? x[o + k] : (TC)pivot;
    switch (o % FBN_LANES) {
    case 0:
        FBN_SYM(dev8)(l1, l2, 0, xt, pivot);
        break;
    case 8:
        FBN_SYM(dev8)(l1, l2, 8, xt, pivot);
        break;
    case 16:
        FBN_SYM(dev8)(l1, l2, 16, xt, pivot);
        break;
    default:
        FBN_SYM(dev8)(l1, l2, 24, xt, pivot);
        break;
    }
}

/* Adds n values' terms (x and dy as TC: the data themselves, or a block of 16-bit
 * data widened) to the lanes: value i to lane i % FBN_LANES, but for the last
 * partial lane set's whole groups of 8, to lanes 0..7. A block of a multiple of
 * FBN_LANES values, then the rest, add what one call on all of them adds. */
FBN_INLINE void FBN_SYM(lanes_add)(const int kind, double *l1, double *l2, int64_t n,
                                   const TC *restrict x, const TC *restrict dy, double pivot,
                                   double mean, double shift, TC tshift, TC scale, TC bias,
                                   const int relu, const TC *restrict z, TC *restrict dres,
                                   const int res, TC slope) {
    int64_t i = 0;
    for (; i + FBN_LANES <= n; i += FBN_LANES)
        for (int l = 0; l < FBN_LANES; l++)
            FBN_SYM(lane_add)(kind, l1, l2, l, i + l, x, dy, pivot, mean, shift, tshift, scale,
                              bias, relu, z, dres, res, slope);
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++)
            FBN_SYM(lane_add)(kind, l1, l2, l, i + l, x, dy, pivot, mean, shift, tshift, scale,
                              bias, relu, z, dres, res, slope);
    if (kind == FBN_SUMS_DEV && i < n && mean == 0.0) {
        FBN_SYM(dev_tail)(l1, l2, n - i, i, x, pivot);
        return;
    }
    for (; i < n; i++)
        FBN_SYM(lane_add)(kind, l1, l2, (int)(i % FBN_LANES), i, x, dy, pivot, mean, shift,
                          tshift, scale, bias, relu, z, dres, res, slope);
}

#ifdef FBN_NARROW
/* m <= 16 values of 16-bit data from p as TC into v: 16 by instruction set isa (a
 * constant), fewer one by one (a padded copy costs more). */
FBN_INLINE void FBN_SYM(load16)(const int isa, const T *p, int64_t m, TC *v) {
    if (m == 16)
        FBN_LD_V(isa, p, v);
    else
        for (int64_t i = 0; i < m; i++) v[i] = FBN_LD(p[i]);
}

/* fbn_lanes_add_<sfx> of the deviations (FBN_SUMS_DEV) of n values of 16-bit data,
 * widened 16 at a time in registers by instruction set isa (a constant): the same
 * values to the same lanes in the same order. */
FBN_INLINE void FBN_SYM(lanes_dev_v)(const int isa, double *l1, double *l2, int64_t n,
                                     const T *restrict x, double pivot, double mean) {
    int64_t w = 0;
    for (; w + FBN_LANES <= n; w += FBN_LANES) { /* whole lane sets */
        TC xv[FBN_LANES];
        for (int h = 0; h < FBN_LANES; h += 16) FBN_LD_V(isa, x + w + h, xv + h);
        for (int l = 0; l < FBN_LANES; l++)
            FBN_SYM(lane_add)(FBN_SUMS_DEV, l1, l2, l, l, xv, NULL, pivot, mean, 0.0, (TC)0, (TC)0,
                              (TC)0, 0, NULL, NULL, 0, (TC)0);
    }
    for (; w < n; w += 16) { /* the rest: whole groups of 8 to lanes 0..7, then one by one */
        TC xv[16];
        const int64_t m = n - w < 16 ? n - w : 16;
        FBN_SYM(load16)(isa, x + w, m, xv);
        for (int g = 0; g + 8 <= m; g += 8)
            for (int l = 0; l < 8; l++)
                FBN_SYM(lane_add)(FBN_SUMS_DEV, l1, l2, l, g + l, xv, NULL, pivot, mean, 0.0,
                                  (TC)0, (TC)0, (TC)0, 0, NULL, NULL, 0, (TC)0);
        for (int64_t k = m & ~(int64_t)7; k < m; k++)
            FBN_SYM(lane_add)(FBN_SUMS_DEV, l1, l2, (int)((w + k) % FBN_LANES), k, xv, NULL, pivot,
                              mean, 0.0, (TC)0, (TC)0, (TC)0, 0, NULL, NULL, 0, (TC)0);
    }
}
#endif

/* One run's values, at off in the inputs (at off - skip in dres), into the lanes
 * l1 and l2 (the caller's local arrays: see fbn_sum_runs_<sfx>), which go to the
 * compensated totals a1 and a2 every FBN_PIECE values (*pending: values since the
 * last time). isa, kind and the rest: see fbn_sum_runs_<sfx>. */
FBN_INLINE void FBN_SYM(sum_run)(const int isa, const int kind, double *l1, double *l2,
                                 int64_t *pending, fbn_acc *a1, fbn_acc *a2, int64_t off,
                                 int64_t len, int64_t skip, const T *restrict x,
                                 const T *restrict dy, double pivot, double mean,
                                 double shift, TC tshift, TC scale, TC bias, const int relu,
                                 const T *restrict z, T *restrict dres, const int res,
                                 TC slope) {
    for (int64_t at = 0; at < len;) {
        const int64_t n = FBN_PIECE - *pending < len - at ? FBN_PIECE - *pending : len - at;
        const int64_t b = off + at;
#ifdef FBN_NARROW
        /* 16-bit data: the deviations widened 16 at a time in registers (a short
         * run's call of a block conversion costs more than its values), or a block
         * at a time (FBN_HBLOCK, a multiple of FBN_LANES: see fbn_lanes_add_<sfx>;
         * with res, dy' narrowed back) */
        if (isa && kind == FBN_SUMS_DEV)
            FBN_SYM(lanes_dev_v)(isa, l1, l2, n, x + b, pivot, mean);
        else
            for (int64_t w = 0; w < n; w += FBN_HBLOCK) {
                TC xb[FBN_HBLOCK], db[FBN_HBLOCK], zb[FBN_HBLOCK], eb[FBN_HBLOCK];
                const int64_t wn = n - w < FBN_HBLOCK ? n - w : FBN_HBLOCK;
                FBN_LD_N(x + b + w, xb, wn);
                if (kind == FBN_SUMS_BWD) FBN_LD_N(dy + b + w, db, wn);
                if (res) FBN_LD_N(z + b + w, zb, wn);
                FBN_SYM(lanes_add)(kind, l1, l2, wn, xb, db, pivot, mean, shift, tshift,
                                   scale, bias, relu, zb, eb, res, slope);
                if (res) FBN_ST_N(eb, dres + (b - skip) + w, wn);
            }
#else
        (void)isa;
        FBN_SYM(lanes_add)(kind, l1, l2, n, x + b, kind == FBN_SUMS_BWD ? dy + b : NULL, pivot,
                           mean, shift, tshift, scale, bias, relu, res ? z + b : NULL,
                           res ? dres + (b - skip) : NULL, res, slope);
#endif
        at += n;
        *pending += n;
        if (*pending == FBN_PIECE) {
            memcpy(a1->lane, l1, FBN_LANES * sizeof(double));
            memcpy(a2->lane, l2, FBN_LANES * sizeof(double));
            fbn_acc_flush(a1);
            fbn_acc_flush(a2);
            memset(l1, 0, FBN_LANES * sizeof(double));
            memset(l2, 0, FBN_LANES * sizeof(double));
            *pending = 0;
        }
    }
}

/* Sums of two terms per value (fbn_lane_add_<sfx>, kind a constant) over the runs
 * of channel c with flat (outer, inner) indices in [j0, j1), into a1 and a2
 * (which start empty); dy is read by FBN_SUMS_BWD only. The lanes are local
 * arrays, which the compiler keeps in vector registers within each loop (it does
 * not for lanes reached through a pointer), and they live across the channel's
 * runs, so that short runs (small inner) pay no per-run copies. Each lane goes to
 * a compensated total every FBN_PIECE values. gap: fbn_row_gap(s) (see
 * fbn_sum_runs_any_<sfx>). isa (a constant, 16-bit data): 0 widens blocks into
 * arrays (FBN_LD_N), 1 or 2 (half.h's instruction sets) the deviations' values in
 * registers (FBN_LD_V), the same values to the same lanes in the same order. */
FBN_INLINE void FBN_SYM(sum_runs)(const int isa, const int kind, fbn_acc *a1, fbn_acc *a2,
                                  const fbn_shape *s,
                                  int64_t c, int64_t j0, int64_t j1, const T *restrict x,
                                  const T *restrict dy, double pivot, double mean,
                                  double shift, TC tshift, TC scale, TC bias, const int relu,
                                  const T *restrict z, T *restrict dres, const int res,
                                  TC slope, const int64_t gap) {
    double l1[FBN_LANES] = {0}, l2[FBN_LANES] = {0};
    int64_t pending = 0;
    const int64_t ahead = FBN_RUNS_AHEAD * (s->channels * s->inner + gap);
    const int fetch = s->inner * (int64_t)sizeof(T) <= FBN_SHORT_RUN;
    for (FBN_SYM(run_it) r = FBN_SYM(run_first)(s, c, j0, j1, gap); r.j < j1;
         FBN_SYM(run_next)(s, j1, &r)) {
        const int64_t off = r.pos + r.skip, len = r.n;
        if (fetch) {
            fbn_prefetch(x + off + ahead, len * (int64_t)sizeof(T));
            if (kind == FBN_SUMS_BWD) fbn_prefetch(dy + off + ahead, len * (int64_t)sizeof(T));
            if (res) fbn_prefetch(z + off + ahead, len * (int64_t)sizeof(T));
        }
        FBN_SYM(sum_run)(isa, kind, l1, l2, &pending, a1, a2, off, len, r.skip, x, dy, pivot,
                         mean, shift, tshift, scale, bias, relu, z, dres, res, slope);
    }
    memcpy(a1->lane, l1, sizeof l1);
    memcpy(a2->lane, l2, sizeof l2);
}

/* fbn_sum_runs_<sfx> (isa: see there) of g <= FBN_MAX_RUN_GROUP adjacent channels
 * c0.. at once, row by row: a channel's runs, a row apart, come from memory slower than
 * one stretch of g channels' runs (bench/strided_runs.c). Each channel's lanes
 * wait in its a1[k] and a2[k] between its runs, so its sums are bitwise those of
 * fbn_sum_runs_<sfx>. kind (a constant): FBN_SUMS_DEV, the first pass's (mean
 * 0.0) around pivot[k]; FBN_SUMS_BWD, the plain sums (relu a constant, 0 or 1)
 * with shift[k] and the typed tshift[k], scale[k] and bias[k]. The arrays start
 * at c0; the other kind's are not read. */
FBN_INLINE void FBN_SYM(sum_runs_group)(const int isa, const int kind, fbn_acc *a1,
                                        fbn_acc *a2, int64_t g,
                                        const fbn_shape *s, int64_t c0, int64_t j0, int64_t j1,
                                        const T *restrict x, const T *restrict dy,
                                        const double *pivot, const double *shift,
                                        const TC *tshift, const TC *scale, const TC *bias,
                                        const int relu) {
    int64_t pending[FBN_MAX_RUN_GROUP] = {0};
    const int64_t gap = fbn_row_gap(s);
    const int bwd = kind == FBN_SUMS_BWD;
    for (FBN_SYM(run_it) r = FBN_SYM(run_first)(s, c0, j0, j1, gap); r.j < j1;
         FBN_SYM(run_next)(s, j1, &r)) {
        for (int64_t k = 0; k < g; k++) {
            double l1[FBN_LANES], l2[FBN_LANES];
            memcpy(l1, a1[k].lane, sizeof l1);
            memcpy(l2, a2[k].lane, sizeof l2);
            FBN_SYM(sum_run)(isa, kind, l1, l2, &pending[k], &a1[k], &a2[k],
                             r.pos + r.skip + k * s->inner, r.n, r.skip, x, dy,
                             bwd ? 0.0 : pivot[k], 0.0, bwd ? shift[k] : 0.0,
                             bwd ? tshift[k] : (TC)0, bwd ? scale[k] : (TC)0,
                             bwd ? bias[k] : (TC)0, relu, NULL, NULL, 0, (TC)0);
            memcpy(a1[k].lane, l1, sizeof l1);
            memcpy(a2[k].lane, l2, sizeof l2);
        }
    }
}

/* fbn_sum_runs_<sfx> instantiated twice for the plain sums: with a literal gap of
 * 0 for contiguous inputs (the common case: no per-run skip arithmetic, nor a
 * register held for it beside the lanes), and with the row gap of row-strided
 * ones. The epilogue's (relu 2, res; constants) take the runtime gap alone: one
 * instantiation fewer to build. isa: see fbn_sum_runs_<sfx>. */
FBN_INLINE void FBN_SYM(sum_runs_any)(const int isa, const int kind, fbn_acc *a1, fbn_acc *a2,
                                      const fbn_shape *s, int64_t c, int64_t j0, int64_t j1,
                                      const T *restrict x, const T *restrict dy, double pivot,
                                      double mean, double shift, TC tshift, TC scale, TC bias,
                                      const int relu, const T *restrict z, T *restrict dres,
                                      const int res, TC slope) {
    const int64_t gap = fbn_row_gap(s);
    if (gap == 0 && relu < 2 && !res)
        FBN_SYM(sum_runs)(isa, kind, a1, a2, s, c, j0, j1, x, dy, pivot, mean, shift, tshift,
                          scale, bias, relu, z, dres, res, slope, 0);
    else
        FBN_SYM(sum_runs)(isa, kind, a1, a2, s, c, j0, j1, x, dy, pivot, mean, shift, tshift,
                          scale, bias, relu, z, dres, res, slope, gap);
}

/* The deviations' sums (e = (x - pivot[k]) - mean) of g channels from c: g > 1
 * in the first pass only (mean 0.0), read together (fbn_sum_runs_group_<sfx>).
 * isa: see fbn_sum_runs_<sfx>. The 16-bit register clones (isa != 0, calls not
 * inlined) give a mean of 0.0 a branch of its own, so that x - 0.0 == x folds
 * away as it does where the call is inlined with a literal mean. */
FBN_INLINE void FBN_SYM(dev_v)(const int isa, fbn_acc *a1, fbn_acc *a2, int64_t g,
                               const fbn_shape *s, int64_t c, int64_t j0, int64_t j1,
                               const T *restrict x, const double *pivot, double mean) {
    if (g > 1)
        FBN_SYM(sum_runs_group)(isa, FBN_SUMS_DEV, a1, a2, g, s, c, j0, j1, x, NULL, pivot, NULL,
                                NULL, NULL, NULL, 0);
    else if (isa != 0 && mean == 0.0)
        FBN_SYM(sum_runs_any)(isa, FBN_SUMS_DEV, a1, a2, s, c, j0, j1, x, NULL, pivot[0], 0.0,
                              0.0, (TC)0, (TC)0, (TC)0, 0, NULL, NULL, 0, (TC)0);
    else
        FBN_SYM(sum_runs_any)(isa, FBN_SUMS_DEV, a1, a2, s, c, j0, j1, x, NULL, pivot[0], mean,
                              0.0, (TC)0, (TC)0, (TC)0, 0, NULL, NULL, 0, (TC)0);
}

/* 16-bit data: the deviations' sums compiled for each instruction set with
 * conversions in registers (functions of their own, as in kern_half_y.h: the
 * kernels' target clones do not inline half.h's conversions). The backward's sums
 * stay in blocks: in registers they took 1.05x the time (docs/performance.md).
 * FBN_SUMS_V: whether compiled. */
#if defined(FBN_NARROW) && (defined(FBN_HALF_VEC16) || defined(FBN_HALF_VEC8))
#define FBN_SUMS_V 1
#if defined(FBN_HALF_VEC16)
FBN_HALF_TARGET16 static void FBN_SYM(dev_v16)(fbn_acc *a1, fbn_acc *a2, int64_t g,
                                                const fbn_shape *s, int64_t c, int64_t j0,
                                                int64_t j1, const T *restrict x,
                                                const double *pivot, double mean) {
    FBN_SYM(dev_v)(2, a1, a2, g, s, c, j0, j1, x, pivot, mean);
}
#endif
#if defined(FBN_HALF_VEC8)
FBN_HALF_TARGET8 static void FBN_SYM(dev_v8)(fbn_acc *a1, fbn_acc *a2, int64_t g,
                                              const fbn_shape *s, int64_t c, int64_t j0,
                                              int64_t j1, const T *restrict x,
                                              const double *pivot, double mean) {
    FBN_SYM(dev_v)(1, a1, a2, g, s, c, j0, j1, x, pivot, mean);
}
#endif

/* The deviations' sums of g channels from c (fbn_dev_v_<sfx>) in registers where
 * the CPU has the conversions (returns 1), else 0 (the caller's blocks). Callers
 * take it for runs of FBN_LANES values or more: float16 runs of 16 took 1.4x the
 * blocks' time (docs/performance.md). */
FBN_INLINE int FBN_SYM(dev_regs)(fbn_acc *a1, fbn_acc *a2, int64_t g, const fbn_shape *s,
                                 int64_t c, int64_t j0, int64_t j1, const T *restrict x,
                                 const double *pivot, double mean) {
    const int level = fbn_half_level();
#if defined(FBN_HALF_VEC16)
    if (level == 2) {
        FBN_SYM(dev_v16)(a1, a2, g, s, c, j0, j1, x, pivot, mean);
        return 1;
    }
#endif
#if defined(FBN_HALF_VEC8)
    if (level == 1) {
        FBN_SYM(dev_v8)(a1, a2, g, s, c, j0, j1, x, pivot, mean);
        return 1;
    }
#endif
    (void)level;
    return 0;
}
#endif

/* The sums of e and e^2, e = (x - pivot[k]) - mean, of g adjacent channels from c
 * over flat [j0, j1) (fbn_dev_v_<sfx>), 16-bit data widened in registers where
 * the CPU can. pivot: the channels' (at c). */
FBN_INLINE void FBN_SYM(runs_dev)(fbn_acc *a1, fbn_acc *a2, int64_t g, const fbn_shape *s,
                                  int64_t c, int64_t j0, int64_t j1, const T *restrict x,
                                  const double *pivot, double mean) {
#ifdef FBN_SUMS_V
    if (s->inner >= FBN_LANES && FBN_SYM(dev_regs)(a1, a2, g, s, c, j0, j1, x, pivot, mean))
        return;
#endif
    FBN_SYM(dev_v)(0, a1, a2, g, s, c, j0, j1, x, pivot, mean);
}

/* Channel c's statistics over flat [j0, j1) (relative to its pivot) into part,
 * from its first pass's sums e1 and e2 (of x - pivot): one pass of shifted sums,
 * exact while the pivot is near the mean; when it is far (s1^2 / n >
 * FBN_ONE_PASS * m2, where cancellation would cost digits) a second pass, centred
 * on the first one's mean, replaces it. */
FBN_INLINE void FBN_SYM(runs_stats)(fbn_acc *e1, fbn_acc *e2, const fbn_shape *s, int64_t c,
                                    int64_t j0, int64_t j1, const T *restrict x,
                                    double pivot, fbn_part *part) {
    const double n = (double)(j1 - j0);
    double mean = 0.0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            fbn_acc f = {{0}, {0, 0}};
            *e1 = *e2 = f;
            FBN_SYM(runs_dev)(e1, e2, 1, s, c, j0, j1, x, &pivot, mean);
        }
        double s1 = fbn_acc_value(e1), m2 = fbn_acc_value(e2) - s1 * s1 / n;
        mean += s1 / n;
        part->mean = mean;
        part->m2 = m2;
        if (s1 * s1 / n <= FBN_ONE_PASS * m2) break; /* NaN: a second pass, harmless */
    }
}

/* Channel c's sums of dy' and dy' * (x - shift) over flat [j0, j1) (relu and res:
 * constants, so that the mask costs nothing without ReLU; z and dres: see
 * fbn_lane_add_<sfx>). */
FBN_INLINE void FBN_SYM(runs_bwd)(fbn_acc *a1, fbn_acc *a2, const fbn_shape *s, int64_t c,
                                  int64_t j0, int64_t j1, const T *restrict dy,
                                  const T *restrict x, double shift, TC tshift, TC scale,
                                  TC bias, const int relu, const T *restrict z,
                                  T *restrict dres, const int res, TC slope) {
    FBN_SYM(sum_runs_any)(0, FBN_SUMS_BWD, a1, a2, s, c, j0, j1, x, dy, 0.0, 0.0, shift, tshift,
                          scale, bias, relu, z, dres, res, slope);
}
#undef FBN_SUMS_V
