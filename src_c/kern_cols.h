/* The reductions' tiles: statistics and the backward's sums of one tile, in the
 * columns shape (inner == 1: a row of a channel block is contiguous, and loops
 * run across channels) or, through kern_runs.h, the rows shape. A per-dtype
 * template: see kern_dtype.h for T, TC and FBN_SYM. */

/* A channel-block tile of a plan (see fbn_plan): channels [c0, c0 + nc), flat
 * values [j0, j1). */
typedef struct {
    int64_t c0, nc, j0, j1;
} FBN_SYM(tile);

FBN_INLINE FBN_SYM(tile) FBN_SYM(tile_of)(const fbn_plan *p, int64_t t) {
    FBN_SYM(tile) r;
    int64_t b = t / p->nsegs, k = t % p->nsegs;
    r.c0 = b * p->block;
    r.nc = p->s.channels - r.c0 < p->block ? p->s.channels - r.c0 : p->block;
    r.j0 = k * p->seg_len;
    r.j1 = r.j0 + p->seg_len < p->per_channel ? r.j0 + p->seg_len : p->per_channel;
    return r;
}

/* The hardware prefetcher follows a row group's loads poorly when they are short
 * runs a whole row apart (a channel block), or, for the statistics, rows of a few
 * cache lines each (small C: the group's lines are visited out of order): then
 * reductions fetch the group FBN_AHEAD groups ahead of row o. */
FBN_INLINE int FBN_SYM(needs_prefetch)(int64_t C, int64_t nc) {
    return nc < C || C * (int64_t)sizeof(T) <= FBN_SHORT_ROW;
}

FBN_INLINE void FBN_SYM(prefetch_block)(const T *row, int64_t C, int64_t nc, int64_t o,
                                        int64_t j1, int g) {
    const int64_t ahead = FBN_AHEAD * g;
    for (int64_t i = ahead; i < ahead + g && o + i < j1; i++)
        fbn_prefetch(row + i * C, nc * (int64_t)sizeof(T));
}

/* Rows the columns statistics sum in registers before adding them to per-channel
 * sums in memory: twice FBN_GROUP for rows of FBN_WIDE_ROW bytes or more, whose
 * per-channel sums (2 * 8 bytes a channel) spill from L1 (short rows were slower
 * so). The backward's reduction keeps FBN_GROUP (twice was slower there). */
FBN_INLINE int FBN_SYM(reduce_group)(int64_t C) {
    return C * (int64_t)sizeof(T) >= FBN_WIDE_ROW ? 2 * FBN_GROUP : FBN_GROUP;
}

/* Adds the sums of e and e^2, e = x - pivot (- mean if centred), over g rows (g
 * and centred constants: the rows' loop unrolls, the channels' loop vectorises)
 * to acc and acc2. */
FBN_INLINE void FBN_SYM(stats_group_v)(const TC *row, int64_t C, int64_t nc, const int g,
                                       const int centred, const double *pv, const double *mean,
                                       double *restrict acc, double *restrict acc2) {
    for (int64_t c = 0; c < nc; c++) {
        double s1 = 0.0, s2 = 0.0;
        for (int i = 0; i < g; i++) {
            double e = (double)row[i * C + c] - pv[c];
            if (centred) e -= mean[c];
            s1 += e;
            s2 += e * e;
        }
        acc[c] += s1;
        acc2[c] += s2;
    }
}

/* Whether a reduction over rows of nc of C channels takes its groups' rows in
 * order (see FBN_ORDER_ROW; float32 and float64). */
FBN_INLINE int FBN_SYM(rows_in_order)(int64_t C, int64_t nc) {
#ifdef FBN_NARROW
    (void)C, (void)nc;
    return 0;
#else
    return nc == C && nc * (int64_t)sizeof(T) >= FBN_ORDER_ROW && nc <= FBN_ORDER_CHANNELS;
#endif
}

/* fbn_stats_group_v_<sfx>'s sums, the g rows (a constant) one after another: each
 * channel's operations are the same, in the same order (the same bits), the
 * partial sums p1 and p2 between rows in L1 (fbn_fold_row). */
FBN_INLINE void FBN_SYM(stats_rows)(const T *row, int64_t ld, int64_t nc, const int g,
                                    const int centred, const double *pv, const double *mean,
                                    double *restrict acc, double *restrict acc2,
                                    double *restrict p1, double *restrict p2) {
    for (int i = 0; i < g; i++) {
        const T *r = row + i * ld;
        for (int64_t c = 0; c < nc; c++) {
            double e = (double)FBN_LD(r[c]) - pv[c];
            if (centred) e -= mean[c];
            fbn_fold_row(i, g, c, e, e * e, p1, p2, acc, acc2);
        }
    }
}

/* 16-bit data, in registers: fbn_stats_group_v_<sfx> 16 channels at a time, the g
 * rows' 16 values widened by instruction set isa (g, centred, isa constants); each
 * channel's sums as in the blocks' form. Returns the channels done (a multiple of
 * 16). */
#if defined(FBN_NARROW) && (defined(FBN_HALF_VEC16) || defined(FBN_HALF_VEC8))
#define FBN_COLS_V 1
FBN_INLINE int64_t FBN_SYM(stats_group_vec)(const int isa, const T *row, int64_t C, int64_t nc,
                                            const int g, const int centred, const double *pv,
                                            const double *mean, double *restrict acc,
                                            double *restrict acc2) {
    int64_t c = 0;
    for (; c + 16 <= nc; c += 16) {
        TC xv[2 * FBN_GROUP * 16];
        for (int i = 0; i < g; i++) FBN_LD_V(isa, row + i * C + c, xv + i * 16);
        FBN_SYM(stats_group_v)(xv, 16, 16, g, centred, pv + c, mean + c, acc + c, acc2 + c);
    }
    return c;
}

/* fbn_stats_group_vec_<sfx> with g (2 * FBN_GROUP, FBN_GROUP, 1) and centred constants. */
FBN_INLINE int64_t FBN_SYM(stats_group_as)(const int isa, const T *row, int64_t C, int64_t nc,
                                           int g, int centred, const double *pv,
                                           const double *mean, double *restrict acc,
                                           double *restrict acc2) {
    if (g == 2 * FBN_GROUP)
        return centred ? FBN_SYM(stats_group_vec)(isa, row, C, nc, 2 * FBN_GROUP, 1, pv, mean,
                                                  acc, acc2)
                       : FBN_SYM(stats_group_vec)(isa, row, C, nc, 2 * FBN_GROUP, 0, pv, mean,
                                                  acc, acc2);
    if (g == FBN_GROUP)
        return centred ? FBN_SYM(stats_group_vec)(isa, row, C, nc, FBN_GROUP, 1, pv, mean, acc,
                                                  acc2)
                       : FBN_SYM(stats_group_vec)(isa, row, C, nc, FBN_GROUP, 0, pv, mean, acc,
                                                  acc2);
    return FBN_SYM(stats_group_vec)(isa, row, C, nc, 1, 1, pv, mean, acc, acc2);
}
#if defined(FBN_HALF_VEC16)
FBN_HALF_TARGET16 static int64_t FBN_SYM(stats_group_v16)(const T *row, int64_t C, int64_t nc,
                                                          int g, int centred, const double *pv,
                                                          const double *mean, double *acc,
                                                          double *acc2) {
    return FBN_SYM(stats_group_as)(2, row, C, nc, g, centred, pv, mean, acc, acc2);
}
#endif
#if defined(FBN_HALF_VEC8)
FBN_HALF_TARGET8 static int64_t FBN_SYM(stats_group_v8)(const T *row, int64_t C, int64_t nc,
                                                        int g, int centred, const double *pv,
                                                        const double *mean, double *acc,
                                                        double *acc2) {
    return FBN_SYM(stats_group_as)(1, row, C, nc, g, centred, pv, mean, acc, acc2);
}
#endif

/* The channels fbn_stats_group_<sfx> did in registers (0 without the CPU's
 * conversions). */
FBN_INLINE int64_t FBN_SYM(stats_group_regs)(const T *row, int64_t C, int64_t nc, int g,
                                             int centred, const double *pv, const double *mean,
                                             double *acc, double *acc2) {
    const int level = fbn_half_level();
#if defined(FBN_HALF_VEC16)
    if (level == 2) return FBN_SYM(stats_group_v16)(row, C, nc, g, centred, pv, mean, acc, acc2);
#endif
#if defined(FBN_HALF_VEC8)
    if (level == 1) return FBN_SYM(stats_group_v8)(row, C, nc, g, centred, pv, mean, acc, acc2);
#endif
    (void)level;
    return 0;
}
#endif

/* fbn_stats_group_v_<sfx> on the data (16-bit data: 16 channels at a time in
 * registers where the CPU has the conversions, the rest in blocks of FBN_HBLOCK
 * channels of the g rows widened first, each channel's sums as without blocks). */
FBN_INLINE void FBN_SYM(stats_group)(const T *row, int64_t C, int64_t nc, const int g,
                                     const int centred, const double *pv, const double *mean,
                                     double *restrict acc, double *restrict acc2) {
#ifdef FBN_NARROW
    int64_t c0 = 0;
#ifdef FBN_COLS_V
    c0 = FBN_SYM(stats_group_regs)(row, C, nc, g, centred, pv, mean, acc, acc2);
#endif
    for (; c0 < nc; c0 += FBN_HBLOCK) {
        TC xb[2 * FBN_GROUP * FBN_HBLOCK];
        const int64_t n = nc - c0 < FBN_HBLOCK ? nc - c0 : FBN_HBLOCK;
        for (int i = 0; i < g; i++) FBN_LD_N(row + i * C + c0, xb + i * FBN_HBLOCK, n);
        FBN_SYM(stats_group_v)(xb, FBN_HBLOCK, n, g, centred, pv + c0, mean + c0, acc + c0,
                               acc2 + c0);
    }
#else
    FBN_SYM(stats_group_v)(row, C, nc, g, centred, pv, mean, acc, acc2);
#endif
}

/* The end of a statistics pass over nc channels (columns shape): each channel's
 * mean and m2 from its compensated sums, into part unless the channel is done;
 * returns whether a channel needs a second, centred pass. Each channel keeps the
 * result of its own first good pass, so that one channel's data (a NaN, say)
 * never changes another channel's bits. Selects, not branches: the loop
 * vectorises (with few rows per channel, its divisions are much of a call). */
FBN_INLINE int FBN_SYM(finish_cols)(int64_t nc, double n, int pass, const double *restrict tot,
                                    const double *restrict comp, const double *restrict tot2,
                                    const double *restrict comp2, double *restrict mean,
                                    double *restrict need, fbn_part *restrict part) {
    int again = 0;
    for (int64_t c = 0; c < nc; c++) {
        fbn_ksum k1 = {tot[c], comp[c]}, k2 = {tot2[c], comp2[c]};
        const double s1 = fbn_kval(&k1), m2 = fbn_kval(&k2) - s1 * s1 / n;
        const double m = mean[c] + s1 / n;
        const int open = pass == 0 || need[c] != 0.0;
        const double again_c = !(s1 * s1 / n <= FBN_ONE_PASS * m2);
        mean[c] = m;
        need[c] = open ? again_c : need[c];
        again |= open && again_c != 0.0;
        part[c].mean = open ? m : part[c].mean;
        part[c].m2 = open ? m2 : part[c].m2;
    }
    return again;
}

/* Columns shape, channels [c0, c0 + nc), rows [j0, j1) a row ld apart. Rows are taken
 * fbn_reduce_group_<sfx>(C) at a time (summed in registers, channels across
 * vector lanes, so a whole-row tile streams through memory in order), into
 * per-channel sums that go to compensated totals every FBN_FLUSH_ROWS rows.
 * Passes as in fbn_stats_tile_<sfx>. scratch: FBN_COL_SCRATCH * nc doubles. */
FBN_INLINE void FBN_SYM(stats_cols)(const T *x, int64_t C, int64_t ld, int64_t c0, int64_t nc,
                                    int64_t j0, int64_t j1, const double *pivot, fbn_part *part,
                                    double *scratch) {
    double n = (double)(j1 - j0);
    const double *pv = pivot + c0;
    double *acc = scratch, *acc2 = acc + nc, *mean = acc2 + nc;
    double *need = mean + nc, *tot = need + nc, *comp = tot + nc, *tot2 = comp + nc;
    double *comp2 = tot2 + nc, *p1 = comp2 + nc, *p2 = p1 + nc; /* p: in_order's partial sums */
    const int G = FBN_SYM(reduce_group)(C), in_order = FBN_SYM(rows_in_order)(C, nc);
    for (int64_t c = 0; c < nc; c++) mean[c] = 0.0;
    for (int pass = 0; pass < 2; pass++) {
        const int one_flush = fbn_sums_begin(j1 - j0, nc, &acc, &acc2, tot, comp, tot2, comp2);
        for (int64_t o = j0; o < j1;) {
            const int64_t end = o + FBN_FLUSH_ROWS < j1 ? o + FBN_FLUSH_ROWS : j1;
            for (int64_t c = 0; c < nc; c++) acc[c] = acc2[c] = 0.0;
            for (; o < end; o += G) {
                const T *row = x + o * ld + c0;
                const int g = end - o < G ? (int)(end - o) : G;
                if (in_order && g == G) { /* constant g and centred, as below */
                    if (G == FBN_GROUP && pass == 0)
                        FBN_SYM(stats_rows)(row, ld, nc, FBN_GROUP, 0, pv, mean, acc, acc2, p1, p2);
                    else if (G == FBN_GROUP)
                        FBN_SYM(stats_rows)(row, ld, nc, FBN_GROUP, 1, pv, mean, acc, acc2, p1, p2);
                    else if (pass == 0)
                        FBN_SYM(stats_rows)(row, ld, nc, 2 * FBN_GROUP, 0, pv, mean, acc, acc2, p1,
                                            p2);
                    else
                        FBN_SYM(stats_rows)(row, ld, nc, 2 * FBN_GROUP, 1, pv, mean, acc, acc2, p1,
                                            p2);
                    continue;
                }
                if (pass == 0 && FBN_SYM(needs_prefetch)(C, nc))
                    FBN_SYM(prefetch_block)(row, ld, nc, o, j1, G);
                /* constant g and centred: each call unrolls its own loop */
                if (g == 2 * FBN_GROUP && pass == 0)
                    FBN_SYM(stats_group)(row, ld, nc, 2 * FBN_GROUP, 0, pv, mean, acc, acc2);
                else if (g == 2 * FBN_GROUP)
                    FBN_SYM(stats_group)(row, ld, nc, 2 * FBN_GROUP, 1, pv, mean, acc, acc2);
                else if (g == FBN_GROUP && pass == 0)
                    FBN_SYM(stats_group)(row, ld, nc, FBN_GROUP, 0, pv, mean, acc, acc2);
                else if (g == FBN_GROUP)
                    FBN_SYM(stats_group)(row, ld, nc, FBN_GROUP, 1, pv, mean, acc, acc2);
                else
                    for (int i = 0; i < g; i++)
                        FBN_SYM(stats_group)(row + i * ld, ld, nc, 1, 1, pv, mean, acc, acc2);
            }
            fbn_sums_flush(one_flush, nc, acc, acc2, tot, comp, tot2, comp2);
        }
        if (!FBN_SYM(finish_cols)(nc, n, pass, tot, comp, tot2, comp2, mean, need, part + c0))
            break;
    }
}

/* Statistics of one tile relative to each channel's pivot (its first value):
 * one pass of shifted sums, which is exact while the pivot is near the tile's
 * mean; when it is far (s1^2 / n > FBN_ONE_PASS * m2, where cancellation would
 * cost digits) a second pass, centred on the first one's mean, replaces it. A
 * fused tile's second pass reads it from L2; a whole-row tile's may not. */
FBN_DISPATCH static void FBN_SYM(stats_tile)(const T *x, const fbn_plan *p, int64_t t,
                                             const double *pivot, fbn_part *part,
                                             double *scratch) {
    FBN_SYM(tile) r = FBN_SYM(tile_of)(p, t);
    const fbn_shape *s = &p->s;
    if (s->inner > 1) {
        const int64_t c = r.c0;
        fbn_acc e1 = {{0}, {0, 0}}, e2 = e1; /* ~0.3 KB each */
        FBN_SYM(runs_dev)(&e1, &e2, 1, s, c, r.j0, r.j1, x, pivot + c, 0.0); /* x - 0.0: folded */
        FBN_SYM(runs_stats)(&e1, &e2, s, c, r.j0, r.j1, x, pivot[c], &part[c]);
        return;
    }
    FBN_SYM(stats_cols)(x, s->channels, s->channels + fbn_row_gap(s), r.c0, r.nc, r.j0, r.j1,
                        pivot, part, scratch);
}

/* Channel c's backward sums: sum(dy') and sum_dy_xc = sum(dy' * ((x - shift) - lo))
 * into sums[2 * c + {0, 1}], lo (the mean's residual) applied once to the sums
 * rather than to every value. */
FBN_INLINE void FBN_SYM(sums_minus_lo)(int64_t c, double s1, double s2, double lo,
                                       double *sums) {
    sums[2 * c] = s1;
    sums[2 * c + 1] = lo != 0.0 ? s2 - lo * s1 : s2;
}

/* Adds the sums of dy' and dy' * (x - shift) over g rows to acc and acc2 (g and
 * relu constants: see fbn_stats_group_<sfx>). */
FBN_INLINE void FBN_SYM(bwd_group_v)(const TC *dr, const TC *xr, int64_t C, int64_t nc,
                                     const int g, const int relu, const double *sh,
                                     const TC *tsh, const TC *sc, const TC *bi,
                                     double *restrict acc, double *restrict acc2) {
    for (int64_t c = 0; c < nc; c++) {
        double s1 = 0.0, s2 = 0.0;
        for (int i = 0; i < g; i++) {
            double v = FBN_SYM(masked)(dr[i * C + c], xr[i * C + c], tsh[c], sc[c], bi[c], relu);
            s1 += v;
            s2 += v * ((double)xr[i * C + c] - sh[c]);
        }
        acc[c] += s1;
        acc2[c] += s2;
    }
}

/* fbn_bwd_group_v_<sfx>'s sums, the g rows (a constant) one after another, as
 * fbn_stats_rows_<sfx> (the same bits). */
FBN_INLINE void FBN_SYM(bwd_rows)(const T *dr, const T *xr, int64_t ld, int64_t nc, const int g,
                                  const int relu, const double *sh, const TC *tsh, const TC *sc,
                                  const TC *bi, double *restrict acc, double *restrict acc2,
                                  double *restrict p1, double *restrict p2) {
    for (int i = 0; i < g; i++) {
        const T *d = dr + i * ld, *r = xr + i * ld;
        for (int64_t c = 0; c < nc; c++) {
            const TC xv = FBN_LD(r[c]);
            const double v = FBN_SYM(masked)(FBN_LD(d[c]), xv, tsh[c], sc[c], bi[c], relu);
            const double dv = v * ((double)xv - sh[c]);
            fbn_fold_row(i, g, c, v, dv, p1, p2, acc, acc2);
        }
    }
}

/* fbn_bwd_group_v_<sfx> with the epilogue ext (a constant, not 0: see
 * fbn_bwd_reduce_cols_<sfx>): dy' through act = ext & 3, with the residual's rows
 * zr if ext & 4, and then dy' stored to er. A function of its own, so that the
 * plain loop above stays as it was. */
FBN_INLINE void FBN_SYM(bwd_group_xv)(const TC *dr, const TC *xr, int64_t C, int64_t nc,
                                      const int g, const double *sh, const TC *tsh,
                                      const TC *sc, const TC *bi, double *restrict acc,
                                      double *restrict acc2, const TC *restrict zr,
                                      TC *restrict er, const int ext, TC slope) {
    const int res = (ext >> 2) & 1;
    for (int64_t c = 0; c < nc; c++) {
        double s1 = 0.0, s2 = 0.0;
        for (int i = 0; i < g; i++) {
            TC m = FBN_SYM(masked_x)(dr[i * C + c], xr[i * C + c], res ? zr[i * C + c] : (TC)0,
                                     tsh[c], sc[c], bi[c], ext & 3, res, slope);
            double v = m;
            if (res) er[i * C + c] = m;
            s1 += v;
            s2 += v * ((double)xr[i * C + c] - sh[c]);
        }
        acc[c] += s1;
        acc2[c] += s2;
    }
}

/* fbn_bwd_group_v_<sfx> on the data (16-bit data: in blocks, as
 * fbn_stats_group_<sfx>; with a residual, dy' narrowed back to er). */
FBN_INLINE void FBN_SYM(bwd_group)(const T *dr, const T *xr, int64_t C, int64_t nc, const int g,
                                   const int relu, const double *sh, const TC *tsh,
                                   const TC *sc, const TC *bi, double *restrict acc,
                                   double *restrict acc2, const T *restrict zr,
                                   T *restrict er, const int ext, TC slope) {
#ifdef FBN_NARROW
    const int res = (ext >> 2) & 1;
    for (int64_t c0 = 0; c0 < nc; c0 += FBN_HBLOCK) {
        TC db[FBN_GROUP * FBN_HBLOCK], xb[FBN_GROUP * FBN_HBLOCK];
        TC zb[FBN_GROUP * FBN_HBLOCK], eb[FBN_GROUP * FBN_HBLOCK]; /* res only */
        const int64_t n = nc - c0 < FBN_HBLOCK ? nc - c0 : FBN_HBLOCK;
        for (int i = 0; i < g; i++) {
            FBN_LD_N(dr + i * C + c0, db + i * FBN_HBLOCK, n);
            FBN_LD_N(xr + i * C + c0, xb + i * FBN_HBLOCK, n);
            if (res) FBN_LD_N(zr + i * C + c0, zb + i * FBN_HBLOCK, n);
        }
        if (ext)
            FBN_SYM(bwd_group_xv)(db, xb, FBN_HBLOCK, n, g, sh + c0, tsh + c0, sc + c0, bi + c0,
                                  acc + c0, acc2 + c0, zb, eb, ext, slope);
        else
            FBN_SYM(bwd_group_v)(db, xb, FBN_HBLOCK, n, g, relu, sh + c0, tsh + c0, sc + c0,
                                 bi + c0, acc + c0, acc2 + c0);
        if (res)
            for (int i = 0; i < g; i++) FBN_ST_N(eb + i * FBN_HBLOCK, er + i * C + c0, n);
    }
#else
    if (ext)
        FBN_SYM(bwd_group_xv)(dr, xr, C, nc, g, sh, tsh, sc, bi, acc, acc2, zr, er, ext, slope);
    else
        FBN_SYM(bwd_group_v)(dr, xr, C, nc, g, relu, sh, tsh, sc, bi, acc, acc2);
#endif
}

/* Columns shape, channels [c0, c0 + nc), rows [j0, j1) a row ld apart, as
 * fbn_stats_cols_<sfx> does. ext (a constant): 0 for the plain activations
 * (tk->relu), else the epilogue act = ext & 3 with a residual z (and dres, read
 * a row ld apart too: a residual's inputs are contiguous, see fbn_shape) if ext & 4. */
FBN_INLINE void FBN_SYM(bwd_reduce_cols)(const T *dy, const T *x, int64_t C, int64_t ld, int64_t c0,
                                         int64_t nc, int64_t j0, int64_t j1, const fbn_coefs *k,
                                         const FBN_SYM(tcoefs) *tk, double *sums,
                                         double *scratch, const T *z, T *dres, const int ext) {
    const double *sh = k->shift + c0, *lw = k->lo + c0;
    const TC *tsh = tk->shift + c0, *sc = tk->scale + c0, *bi = tk->bias + c0;
    const int relu = tk->relu, res = (ext >> 2) & 1;
    const TC slope = tk->slope;
    double *acc = scratch, *acc2 = acc + nc;
    double *tot = acc2 + nc, *comp = tot + nc, *tot2 = comp + nc, *comp2 = tot2 + nc;
    double *p1 = comp2 + nc, *p2 = p1 + nc; /* in_order's partial sums */
    const int in_order = !ext && FBN_SYM(rows_in_order)(C, nc);
    const int one_flush = fbn_sums_begin(j1 - j0, nc, &acc, &acc2, tot, comp, tot2, comp2);
    for (int64_t o = j0; o < j1;) {
        const int64_t end = o + FBN_FLUSH_ROWS < j1 ? o + FBN_FLUSH_ROWS : j1;
        for (int64_t c = 0; c < nc; c++) acc[c] = acc2[c] = 0.0;
        for (; o < end; o += FBN_GROUP) {
            const T *dr = dy + o * ld + c0, *xr = x + o * ld + c0;
            const T *zr = res ? z + o * ld + c0 : NULL;
            T *er = res ? dres + o * ld + c0 : NULL;
            const int g = end - o < FBN_GROUP ? (int)(end - o) : FBN_GROUP;
            if (in_order && g == FBN_GROUP) { /* constant g and relu, as below */
                if (relu)
                    FBN_SYM(bwd_rows)(dr, xr, ld, nc, FBN_GROUP, 1, sh, tsh, sc, bi, acc, acc2, p1,
                                      p2);
                else
                    FBN_SYM(bwd_rows)(dr, xr, ld, nc, FBN_GROUP, 0, sh, tsh, sc, bi, acc, acc2, p1,
                                      p2);
                continue;
            }
            if (nc < C) {
                FBN_SYM(prefetch_block)(dr, ld, nc, o, j1, FBN_GROUP);
                FBN_SYM(prefetch_block)(xr, ld, nc, o, j1, FBN_GROUP);
                if (res) FBN_SYM(prefetch_block)(zr, ld, nc, o, j1, FBN_GROUP);
            }
            /* constant g and relu: each call unrolls its own loop */
            if (ext && g == FBN_GROUP)
                FBN_SYM(bwd_group)(dr, xr, ld, nc, FBN_GROUP, 0, sh, tsh, sc, bi, acc, acc2, zr,
                                   er, ext, slope);
            else if (ext)
                for (int i = 0; i < g; i++)
                    FBN_SYM(bwd_group)(dr + i * ld, xr + i * ld, ld, nc, 1, 0, sh, tsh, sc, bi,
                                       acc, acc2, res ? zr + i * ld : NULL,
                                       res ? er + i * ld : NULL, ext, slope);
            else if (g == FBN_GROUP && relu)
                FBN_SYM(bwd_group)(dr, xr, ld, nc, FBN_GROUP, 1, sh, tsh, sc, bi, acc, acc2, NULL,
                                   NULL, 0, (TC)0);
            else if (g == FBN_GROUP)
                FBN_SYM(bwd_group)(dr, xr, ld, nc, FBN_GROUP, 0, sh, tsh, sc, bi, acc, acc2, NULL,
                                   NULL, 0, (TC)0);
            else
                for (int i = 0; i < g; i++)
                    FBN_SYM(bwd_group)(dr + i * ld, xr + i * ld, ld, nc, 1, relu, sh, tsh, sc, bi,
                                       acc, acc2, NULL, NULL, 0, (TC)0);
        }
        fbn_sums_flush(one_flush, nc, acc, acc2, tot, comp, tot2, comp2);
    }
    for (int64_t c = 0; c < nc; c++) {
        fbn_ksum a1 = {tot[c], comp[c]}, a2 = {tot2[c], comp2[c]};
        FBN_SYM(sums_minus_lo)(c0 + c, fbn_kval(&a1), fbn_kval(&a2), lw[c], sums);
    }
}

/* The reduction of one tile with epilogue ext (a constant, see
 * fbn_bwd_reduce_cols_<sfx>; 0: plain). */
FBN_INLINE void FBN_SYM(bwd_reduce_tile_as)(const T *dy, const T *x, const fbn_plan *p,
                                            int64_t t, const fbn_coefs *k,
                                            const FBN_SYM(tcoefs) *tk, double *sums,
                                            double *scratch, const T *z, T *dres,
                                            const int ext) {
    FBN_SYM(tile) r = FBN_SYM(tile_of)(p, t);
    const fbn_shape *s = &p->s;
    if (s->inner > 1) {
        int64_t c = r.c0;
        fbn_acc a1 = {{0}, {0, 0}}, a2 = a1;
        if (ext)
            FBN_SYM(runs_bwd)(&a1, &a2, s, c, r.j0, r.j1, dy, x, k->shift[c], tk->shift[c],
                              tk->scale[c], tk->bias[c], ext & 3, z, dres, (ext >> 2) & 1,
                              tk->slope);
        else if (tk->relu) /* a constant in each call: no mask without ReLU */
            FBN_SYM(runs_bwd)(&a1, &a2, s, c, r.j0, r.j1, dy, x, k->shift[c], tk->shift[c],
                              tk->scale[c], tk->bias[c], 1, NULL, NULL, 0, (TC)0);
        else
            FBN_SYM(runs_bwd)(&a1, &a2, s, c, r.j0, r.j1, dy, x, k->shift[c], tk->shift[c],
                              tk->scale[c], tk->bias[c], 0, NULL, NULL, 0, (TC)0);
        FBN_SYM(sums_minus_lo)(c, fbn_acc_value(&a1), fbn_acc_value(&a2), k->lo[c], sums);
        return;
    }
    FBN_SYM(bwd_reduce_cols)(dy, x, s->channels, s->channels + fbn_row_gap(s), r.c0, r.nc, r.j0,
                             r.j1, k, tk, sums, scratch,
                             z, dres, ext);
}

/* Per-channel sum(dy') and sum_dy_xc of one tile, into sums[2 * c + {0, 1}]
 * (plain: relu 0 or 1, no residual; a function of its own, see kern_walk.h's
 * fbn_affine_tile_<sfx>). */
FBN_DISPATCH static void FBN_SYM(bwd_reduce_tile)(const T *dy, const T *x, const fbn_plan *p,
                                                  int64_t t, const fbn_coefs *k,
                                                  const FBN_SYM(tcoefs) *tk, double *sums,
                                                  double *scratch) {
    FBN_SYM(bwd_reduce_tile_as)(dy, x, p, t, k, tk, sums, scratch, NULL, NULL, 0);
}

/* The same with an epilogue: a residual z (dy' also to dres) or a leaky ReLU. */
FBN_DISPATCH static void FBN_SYM(bwd_reduce_tile_x)(const T *dy, const T *x, const fbn_plan *p,
                                                    int64_t t, const fbn_coefs *k,
                                                    const FBN_SYM(tcoefs) *tk, double *sums,
                                                    double *scratch, const T *z, T *dres) {
    if (!z)
        FBN_SYM(bwd_reduce_tile_as)(dy, x, p, t, k, tk, sums, scratch, NULL, NULL, 2);
    else if (tk->relu == 0)
        FBN_SYM(bwd_reduce_tile_as)(dy, x, p, t, k, tk, sums, scratch, z, dres, 4);
    else if (tk->relu == 1)
        FBN_SYM(bwd_reduce_tile_as)(dy, x, p, t, k, tk, sums, scratch, z, dres, 5);
    else
        FBN_SYM(bwd_reduce_tile_as)(dy, x, p, t, k, tk, sums, scratch, z, dres, 6);
}

static inline void FBN_SYM(bwd_reduce_tile_any)(const T *dy, const T *x, const fbn_plan *p,
                                                int64_t t, const fbn_coefs *k,
                                                const FBN_SYM(tcoefs) *tk, double *sums,
                                                double *scratch, const T *z, T *dres) {
    if (!z && tk->relu < 2)
        FBN_SYM(bwd_reduce_tile)(dy, x, p, t, k, tk, sums, scratch);
    else
        FBN_SYM(bwd_reduce_tile_x)(dy, x, p, t, k, tk, sums, scratch, z, dres);
}
#undef FBN_COLS_V
