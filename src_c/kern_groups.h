/* Rows-shape reductions of several adjacent channels at once (inner > 1, so
 * reduction tiles are one channel's segment): g channels' runs read row by row
 * (fbn_sum_runs_group_<sfx>, kern_runs.h), each channel's results bitwise those of
 * its tile alone; fbn_run_group (plan.c) sets g. Used by batch_stats, the backward's
 * reduction and the fused passes. A per-dtype template: see kern_dtype.h for T, TC
 * and FBN_SYM. */

/* Statistics of tile t's segment of g adjacent channels (inner > 1, one-channel
 * blocks: tiles t, t + nsegs, ...), each bitwise as fbn_stats_tile_<sfx> gives it:
 * the first pass over the g channels row by row (fbn_runs_dev_<sfx>). part:
 * the segment's. */
FBN_DISPATCH static void FBN_SYM(stats_runs_group)(const T *x, const fbn_plan *p, int64_t t,
                                                   int64_t g, const double *pivot,
                                                   fbn_part *part) {
    const FBN_SYM(tile) r = FBN_SYM(tile_of)(p, t);
    fbn_acc e1[FBN_MAX_RUN_GROUP], e2[FBN_MAX_RUN_GROUP];
    memset(e1, 0, g * sizeof e1[0]);
    memset(e2, 0, g * sizeof e2[0]);
    FBN_SYM(runs_dev)(e1, e2, g, &p->s, r.c0, r.j0, r.j1, x, pivot + r.c0, 0.0);
    for (int64_t k = 0; k < g; k++)
        FBN_SYM(runs_stats)(&e1[k], &e2[k], &p->s, r.c0 + k, r.j0, r.j1, x, pivot[r.c0 + k],
                            &part[r.c0 + k]);
}

/* Statistics of tile t and of the g - 1 tiles of the same segment of the next
 * channels (g > 1 only as fbn_run_group allows: one-channel blocks). part: the
 * segment's. */
static inline void FBN_SYM(stats_tiles)(const T *x, const fbn_plan *p, int64_t t, int64_t g,
                                        const double *pivot, fbn_part *part,
                                        double *scratch) {
    if (g > 1)
        FBN_SYM(stats_runs_group)(x, p, t, g, pivot, part);
    else
        FBN_SYM(stats_tile)(x, p, t, pivot, part, scratch);
}

/* Task u of a reduction over channel groups of `group` channels (fbn_run_group):
 * the segment u % nsegs of channels [u / nsegs * group, + group), as a tile
 * index and a count (the last group's may be short). */
static inline int64_t FBN_SYM(group_tiles)(const fbn_plan *p, int64_t group, int64_t u,
                                           int64_t *g) {
    const int64_t c0 = u / p->nsegs * group;
    *g = fbn_group_len(p, c0, group);
    return c0 * p->nsegs + u % p->nsegs;
}

/* The plain sums (relu 0 or 1, no epilogue) of tile t's segment of g adjacent
 * channels (inner > 1, one-channel blocks: tiles t, t + nsegs, ...), each bitwise
 * as fbn_bwd_reduce_tile_<sfx> gives it, read row by row
 * (fbn_sum_runs_group_<sfx>). sums: the segment's. */
FBN_DISPATCH static void FBN_SYM(bwd_reduce_runs_group)(const T *dy, const T *x,
                                                        const fbn_plan *p, int64_t t, int64_t g,
                                                        const fbn_coefs *k,
                                                        const FBN_SYM(tcoefs) *tk,
                                                        double *sums) {
    const FBN_SYM(tile) r = FBN_SYM(tile_of)(p, t);
    const int64_t c0 = r.c0;
    fbn_acc a1[FBN_MAX_RUN_GROUP], a2[FBN_MAX_RUN_GROUP];
    memset(a1, 0, g * sizeof a1[0]);
    memset(a2, 0, g * sizeof a2[0]);
    if (tk->relu) /* a constant in each call, as in fbn_bwd_reduce_tile_as_<sfx> */
        FBN_SYM(sum_runs_group)(0, FBN_SUMS_BWD, a1, a2, g, &p->s, c0, r.j0, r.j1, x, dy, NULL,
                                k->shift + c0, tk->shift + c0, tk->scale + c0, tk->bias + c0,
                                1);
    else
        FBN_SYM(sum_runs_group)(0, FBN_SUMS_BWD, a1, a2, g, &p->s, c0, r.j0, r.j1, x, dy, NULL,
                                k->shift + c0, tk->shift + c0, tk->scale + c0, tk->bias + c0,
                                0);
    for (int64_t i = 0; i < g; i++)
        FBN_SYM(sums_minus_lo)(c0 + i, fbn_acc_value(&a1[i]), fbn_acc_value(&a2[i]),
                               k->lo[c0 + i], sums);
}

/* The backward's reduction of tile t and the g - 1 tiles of the same segment of
 * the next channels (g > 1 only as fbn_run_group allows: one-channel blocks):
 * the plain sums read together, an epilogue's channel by channel. */
static inline void FBN_SYM(bwd_reduce_tiles)(const T *dy, const T *x, const fbn_plan *p,
                                             int64_t t, int64_t g, const fbn_coefs *k,
                                             const FBN_SYM(tcoefs) *tk, double *sums,
                                             double *scratch, const T *z, T *dres) {
    if (g > 1 && !z && tk->relu < 2) {
        FBN_SYM(bwd_reduce_runs_group)(dy, x, p, t, g, k, tk, sums);
        return;
    }
    for (int64_t i = 0; i < g; i++)
        FBN_SYM(bwd_reduce_tile_any)(dy, x, p, t + i * p->nsegs, k, tk, sums, scratch, z, dres);
}
