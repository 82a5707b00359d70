/* The two fused passes, training forward and backward, on one skeleton: a
 * reduction (statistics; the backward's sums), the per-channel coefficients it
 * gives, then an elementwise pass (y; dx). When every tile holds whole channels
 * (nsegs == 1), one task per channel block does all three while the block is in
 * cache; otherwise the reduction runs over all tiles and is merged, and the
 * elementwise pass follows over its own tiling. op (always a constant) is
 * FBN_OP_AFFINE for the forward, FBN_OP_DX for the backward. A per-dtype
 * template: see kern_dtype.h for T, TC and FBN_SYM. */

/* The arguments of one fused pass. */
typedef struct {
    const T *x, *dy; /* dy: backward only */
    T *out;          /* y or dx (backward: NULL for the reduction alone) */
    const fbn_plan *p;
    const fbn_coefs *k; /* the double coefficients (of arrays below) */
    const FBN_SYM(tcoefs) *tk;
    const T *z; /* the residual (NULL: none); backward: dy' goes to dres, */
    T *dres;    /* which the dx pass reads as its dy (dy_dx), with the coefficients tkd */
    const T *dy_dx;
    const FBN_SYM(tcoefs) *tkd;
    double *scratch; /* len doubles per thread */
    int64_t len;
    double n; /* values per channel */
    int64_t group; /* nsegs == 1: consecutive channel-block tiles per task */
    int64_t runs;  /* one-channel tiles whose reductions are read together
                    * (fbn_run_group); nsegs == 1: a divisor of group */
    const double *gamma;
    struct {
        const double *pivot, *beta;
        fbn_part *parts;
        double eps;
        double *mean_hi, *mean_lo, *m2, *var, *invstd, *shift, *scale, *bias;
        /* nsegs == 1, FBN_BLOCK_WORK_C channels or more: per-thread work of one
         * block (fbn_fwd_block_tile_<sfx>); else NULL */
        double *blockwork;
        TC *blocktyped;
        int params_f32; /* gamma and beta point to float values */
    } fwd;
    struct {
        double *sums; /* a tile's sum(dy') and sum_dy_xc, 2 per channel */
        int training;
        const double *invstd;
        double *sum_dy, *sum_dy_xc, *sum_dy_xhat, *k_dy, *k_x, *mean_dy;
    } bwd;
} FBN_SYM(pass);

/* The reduction of tile t and of the g - 1 tiles of the same segment of the next
 * channels (fbn_stats_tiles_<sfx>, fbn_bwd_reduce_tiles_<sfx>) into segment seg's
 * parts or sums. */
FBN_INLINE void FBN_SYM(pass_reduce_tiles)(const int op, const FBN_SYM(pass) *j, int64_t t,
                                           int64_t g, int thread, int64_t seg) {
    const int64_t C = j->p->s.channels;
    double *scratch = j->scratch + thread * j->len;
    if (op == FBN_OP_AFFINE)
        FBN_SYM(stats_tiles)(j->x, j->p, t, g, j->fwd.pivot, j->fwd.parts + seg * C, scratch);
    else
        FBN_SYM(bwd_reduce_tiles)(j->dy, j->x, j->p, t, g, j->k, j->tk,
                                  j->bwd.sums + seg * 2 * C, scratch, j->z, j->dres);
}

/* The reduction of channel-block tile t (r: its channels) when it holds whole
 * channels: their statistics (forward) or sums (backward), final (reduced: their
 * parts or sums are in already). */
FBN_INLINE void FBN_SYM(pass_reduce_tile)(const int op, const FBN_SYM(pass) *j, int64_t t,
                                          int thread, const FBN_SYM(tile) *r,
                                          const int reduced) {
    if (!reduced) FBN_SYM(pass_reduce_tiles)(op, j, t, 1, thread, 0);
    if (op == FBN_OP_AFFINE) {
        for (int64_t c = r->c0; c < r->c0 + r->nc; c++)
            FBN_SYM(finish_stats)(c, j->fwd.pivot[c], &j->fwd.parts[c], j->fwd.mean_hi,
                                  j->fwd.mean_lo, j->fwd.m2);
    } else {
        for (int64_t c = r->c0; c < r->c0 + r->nc; c++) {
            j->bwd.sum_dy[c] = j->bwd.sums[2 * c];
            j->bwd.sum_dy_xc[c] = j->bwd.sums[2 * c + 1];
        }
    }
}

/* The reduction over every tile, merged in a fixed order (nsegs > 1). Returns -1
 * when work cannot be allocated. */
static int FBN_SYM(pass_reduce_all)(const int op, const FBN_SYM(pass) *j, int nt) {
    if (op == FBN_OP_AFFINE)
        return FBN_SYM(stats_all)(j->x, j->p, j->fwd.pivot, j->fwd.parts, j->scratch,
                                  j->fwd.mean_hi, j->fwd.mean_lo, j->fwd.m2, nt);
    return FBN_SYM(reduce_all)(j->dy, j->x, j->p, j->k, j->tk, j->bwd.sums, j->bwd.sum_dy,
                               j->bwd.sum_dy_xc, j->z, j->dres, nt);
}

/* The double coefficients of channels [c0, c0 + nc) from their reduction. */
FBN_INLINE void FBN_SYM(pass_coefs)(const int op, const FBN_SYM(pass) *j, int64_t c0,
                                    int64_t nc) {
    const double *gamma = j->gamma ? j->gamma + c0 : NULL;
    if (op == FBN_OP_AFFINE) {
        FBN_SYM(finish_channels)(nc, j->fwd.eps, j->n, j->fwd.m2 + c0, j->fwd.var + c0,
                                 j->fwd.invstd + c0);
        fbn_coefficients(nc, j->fwd.mean_hi + c0, j->fwd.mean_lo + c0, j->fwd.invstd + c0,
                         gamma, j->fwd.beta ? j->fwd.beta + c0 : NULL, j->fwd.shift + c0,
                         j->fwd.scale + c0, j->fwd.bias + c0);
    } else {
        FBN_SYM(bwd_coefficients)(nc, j->n, j->bwd.training, j->bwd.invstd + c0, gamma,
                                  j->bwd.sum_dy + c0, j->bwd.sum_dy_xc + c0,
                                  j->bwd.sum_dy_xhat + c0, j->bwd.k_dy + c0,
                                  j->bwd.k_x + c0, j->bwd.mean_dy + c0);
    }
}

/* The elementwise pass (y; dx) of tile t of plan p. */
FBN_INLINE void FBN_SYM(pass_rewrite)(const int op, const FBN_SYM(pass) *j, const fbn_plan *p,
                                      int64_t t) {
    if (op == FBN_OP_AFFINE)
        FBN_SYM(affine_tile_any)(j->x, j->z, j->out, p, t, j->tk);
    else
        FBN_SYM(bwd_elemt_tile_any)(j->dy_dx, j->x, j->out, p, t, j->tkd);
}

/* Channel-block tile t, whole channels: its reduction and coefficients, then its
 * rewrite while in cache; grouped: the caller reduced it with its group (see
 * fbn_pass_reduce_tile_<sfx>) and rewrites the group afterwards. */
FBN_INLINE void FBN_SYM(fused_tile)(const int op, const FBN_SYM(pass) *j, int64_t t,
                                    int thread, const int grouped) {
    const FBN_SYM(tile) r = FBN_SYM(tile_of)(j->p, t);
    FBN_SYM(pass_reduce_tile)(op, j, t, thread, &r, grouped);
    FBN_SYM(pass_coefs)(op, j, r.c0, r.nc);
    if (op == FBN_OP_DX && !j->out) return; /* sums only */
    FBN_SYM(fill_typed)(j->k, r.c0, r.nc, j->tk);
    if (!grouped) FBN_SYM(pass_rewrite)(op, j, j->p, t);
}

/* The elementwise pass of channels [c0, c0 + g), whole, of plan p (one-channel
 * blocks), c0 a multiple of runs and g <= runs: without epilogues and row gaps
 * the g channels' runs row by row (fbn_runs_group_<sfx>), else channel by
 * channel. */
FBN_INLINE void FBN_SYM(pass_rewrite_group)(const int op, const FBN_SYM(pass) *j,
                                            const fbn_plan *p, int64_t c0, int64_t g,
                                            int64_t runs) {
    fbn_plan w = *p; /* tiles of whole channels */
    w.nsegs = 1;
    w.seg_len = p->per_channel;
    const int plain = !fbn_row_gap(&p->s) &&
                      (op == FBN_OP_AFFINE ? !j->z && j->tk->relu < 2 : j->tkd->relu < 2);
    if (g > 1 && plain) { /* blocks of runs channels: tile c0 / runs is the g */
        w.block = runs;
        w.nblocks = w.ntiles = (p->s.channels + runs - 1) / runs;
        if (op == FBN_OP_AFFINE)
            FBN_SYM(affine_group)(j->x, j->out, &w, c0 / runs, j->tk);
        else
            FBN_SYM(bwd_elemt_group)(j->dy_dx, j->x, j->out, &w, c0 / runs, j->tkd);
        return;
    }
    w.ntiles = p->nblocks;
    for (int64_t c = c0; c < c0 + g; c++) FBN_SYM(pass_rewrite)(op, j, &w, c);
}

/* Task b of a plan whose channels span several tiles that fit in cache together
 * (p->fuse_segs; inner > 1, so blocks are single channels): channels [b * runs,
 * + runs), the last task's fewer. Each segment's tiles are reduced into the
 * segment's slot (the channels read together: see fbn_run_group) and the slots
 * merged as the unfused pass merges them (so the results' bits are the same),
 * then each channel rewritten while in cache. */
FBN_INLINE void FBN_SYM(segs_tile)(const int op, const FBN_SYM(pass) *j, int64_t b,
                                   int thread) {
    const fbn_plan *p = j->p;
    const int64_t c0 = b * j->runs, g = fbn_group_len(p, c0, j->runs);
    for (int64_t k = 0; k < p->nsegs; k++)
        FBN_SYM(pass_reduce_tiles)(op, j, c0 * p->nsegs + k, g, thread, k);
    if (op == FBN_OP_AFFINE) {
        FBN_SYM(merge_parts)(p, j->fwd.parts, j->fwd.pivot, c0, c0 + g, j->fwd.mean_hi,
                             j->fwd.mean_lo, j->fwd.m2);
    } else {
        double comp[2 * FBN_RUN_GROUP];
        FBN_SYM(sum_segments)(p, j->bwd.sums, comp, c0, c0 + g, j->bwd.sum_dy,
                              j->bwd.sum_dy_xc);
    }
    FBN_SYM(pass_coefs)(op, j, c0, g);
    if (op == FBN_OP_DX && !j->out) return; /* sums only */
    FBN_SYM(fill_typed)(j->k, c0, g, j->tk);
    FBN_SYM(pass_rewrite_group)(op, j, p, c0, g, j->runs);
}

static void FBN_SYM(fwd_segs_task)(void *job, int64_t b, int thread) {
    FBN_SYM(segs_tile)(FBN_OP_AFFINE, job, b, thread);
}

static void FBN_SYM(bwd_segs_task)(void *job, int64_t b, int thread) {
    FBN_SYM(segs_tile)(FBN_OP_DX, job, b, thread);
}

/* Per-thread work of a forward whose tiles hold whole channels (nsegs == 1) of
 * many channels (FBN_BLOCK_WORK_C or more), in doubles: pivot, shift, scale, bias,
 * m2, var, gamma, beta (a block's channels each), its parts, then the reduction's
 * scratch; and typed arrays of a block. No O(C) work memory then: (2, 50M) float32
 * (issue 13) needs y and the outputs. Rounded up to 128 bytes (a pair of lines,
 * which the L2 prefetcher fetches together): one-channel blocks need 88 bytes, and
 * two threads' work in one line moves between the cores several times a tile. */
static inline int64_t FBN_SYM(block_doubles)(const fbn_plan *p) {
    const int64_t n = 8 * p->block + p->block * (int64_t)(sizeof(fbn_part) / sizeof(double)) +
                      fbn_scratch_len(p);
    return (n + 15) / 16 * 16;
}

/* A forward tile on its thread's block arrays. They are addressed by channel, as
 * the C-sized ones are, through pointers moved back by c0 (only the tile's
 * channels [c0, c0 + nc) are touched). Compiled per instruction set: its
 * per-channel loops (pivots, parameters widened, the means' double-doubles) are
 * much of a call on few rows of many channels. */
FBN_DISPATCH static void FBN_SYM(fwd_block_tile)(const FBN_SYM(pass) *j, int64_t t, int thread) {
    const FBN_SYM(tile) r = FBN_SYM(tile_of)(j->p, t);
    const int64_t B = j->p->block, c0 = r.c0, inner = j->p->s.inner;
    double *w = j->fwd.blockwork + thread * FBN_SYM(block_doubles)(j->p);
    double *pivot = w - c0, *m2 = w + 4 * B - c0;
    FBN_SYM(pass) l = *j;
    fbn_coefs kl = *j->k;
    double *shift = w + B - c0, *scale = w + 2 * B - c0, *bias = w + 3 * B - c0;
    kl.shift = shift;
    kl.scale = scale;
    kl.bias = bias;
    FBN_SYM(tcoefs) tl = FBN_SYM(typed_arrays)(
        j->fwd.blocktyped + thread * (FBN_SYM(typed_bytes)(B) / (int64_t)sizeof(TC)), B,
        j->tk->relu, FBN_SYM(coef_lines)(j->p, j->x, j->out, c0));
    tl.slope = j->tk->slope;
    tl.shift -= c0;
    tl.scale -= c0;
    tl.bias -= c0;
    for (int64_t c = c0; c < c0 + r.nc; c++) pivot[c] = (double)FBN_LD(j->x[c * inner]);
    if (j->fwd.params_f32) { /* the block's gamma and beta as double */
        const float *g = (const float *)j->gamma, *b = (const float *)j->fwd.beta;
        double *gd = w + 6 * B - c0, *bd = w + 7 * B - c0;
        if (g)
            for (int64_t c = c0; c < c0 + r.nc; c++) gd[c] = g[c];
        if (b)
            for (int64_t c = c0; c < c0 + r.nc; c++) bd[c] = b[c];
        l.gamma = g ? gd : NULL;
        l.fwd.beta = b ? bd : NULL;
    }
    l.k = &kl;
    l.tk = l.tkd = &tl;
    l.scratch = w + 8 * B + B * (int64_t)(sizeof(fbn_part) / sizeof(double));
    l.len = 0;
    l.fwd.pivot = pivot;
    l.fwd.parts = (fbn_part *)(w + 8 * B) - c0;
    l.fwd.m2 = m2;
    if (!j->fwd.var) l.fwd.var = w + 5 * B - c0;
    l.fwd.shift = shift;
    l.fwd.scale = scale;
    l.fwd.bias = bias;
    FBN_SYM(fused_tile)(FBN_OP_AFFINE, &l, t, 0, 0);
}

/* Task g of op: tiles [g * group, (g + 1) * group), the last task's fewer;
 * one-channel tiles `runs` at a time, their reduction read together first
 * (fbn_pass_reduce_tiles_<sfx>), then each rewritten. */
FBN_INLINE void FBN_SYM(fused_task)(const int op, const FBN_SYM(pass) *j, int64_t g,
                                    int thread) {
    const int64_t t1 = (g + 1) * j->group < j->p->nblocks ? (g + 1) * j->group : j->p->nblocks;
    for (int64_t t = g * j->group; t < t1;) {
        if (op == FBN_OP_AFFINE && j->fwd.blockwork) {
            FBN_SYM(fwd_block_tile)(j, t, thread);
            t++;
            continue;
        }
        const int64_t n = j->runs < t1 - t ? j->runs : t1 - t;
        if (n > 1) FBN_SYM(pass_reduce_tiles)(op, j, t, n, thread, 0);
        for (int64_t k = 0; k < n; k++) FBN_SYM(fused_tile)(op, j, t + k, thread, n > 1);
        if (n > 1 && (op == FBN_OP_AFFINE || j->out)) /* t: a multiple of runs */
            FBN_SYM(pass_rewrite_group)(op, j, j->p, t, n, j->runs);
        t += n;
    }
}

static void FBN_SYM(fwd_fused_task)(void *job, int64_t g, int thread) {
    FBN_SYM(fused_task)(FBN_OP_AFFINE, job, g, thread);
}

static void FBN_SYM(bwd_fused_task)(void *job, int64_t g, int thread) {
    FBN_SYM(fused_task)(FBN_OP_DX, job, g, thread);
}

/* The skeleton: fused per channel block, or reduction, coefficients and an
 * elementwise pass over all tiles (tk: the typed arrays j->tk points to). */
static int FBN_SYM(run_pass)(const int op, const FBN_SYM(pass) *j, FBN_SYM(tcoefs) *tk,
                             int nt) {
    const fbn_plan *p = j->p;
    const int reads = op == FBN_OP_DX ? 2 : 1; /* the arrays its reduction reads */
    /* 16-bit data's backward on threads reads one channel at a time (in groups it
     * took up to 1.36x the time: bfloat16 32x64x32x32) */
    const int half_bwd = op == FBN_OP_DX && sizeof(T) == 2;
    const int64_t runs = half_bwd && nt > 1 ? 1 : fbn_run_group(p, sizeof(T), reads, nt, 1);
    /* a forward's per-thread block arrays: no C-sized work to go unfused with */
    const int blockwork = op == FBN_OP_AFFINE && j->fwd.blockwork != NULL;
    /* short runs: unfused (FBN_FUSE_RUN) */
    int fuse = p->s.inner == 1 || p->s.inner * (int64_t)sizeof(T) >= FBN_FUSE_RUN || blockwork;
    /* small arrays on threads keep the two rules below off: one parallel loop
     * instead of two (FBN_UNFUSED_THREADED) */
    const int small = nt > 1 && p->s.outer * p->s.channels * p->s.inner < FBN_UNFUSED_THREADED;
    /* 16-bit data: unfused where the unfused reduction reads channel groups
     * (fbn_run_group); split, the backward took 0.73-0.99x the fused time and the
     * forward 0.81-0.99x (bench/fused_split.py) */
    if (sizeof(T) == 2 && !blockwork && !small && fbn_run_group(p, sizeof(T), reads, nt, 0) > 1)
        fuse = 0;
    /* rows whose data and output stay in L3 (not beyond_l3): the forward, and the
     * float32 backward, unfused, whose second read comes from L3 (bench/fused_split.py;
     * float64's backward ran faster fused with the caches evicted); the columns shape
     * stays fused */
    if (p->s.inner > 1 && !p->beyond_l3 && !blockwork && !small &&
        (op == FBN_OP_AFFINE || sizeof(T) == 4))
        fuse = 0;
    if (p->nsegs == 1 && fuse) { /* tasks of consecutive tiles: see fbn_fuse_group */
        FBN_SYM(pass) g = *j;
        g.group = fbn_fuse_group(p, sizeof(T), reads, nt);
        g.runs = blockwork ? 1 : runs;
        g.group = (g.group + g.runs - 1) / g.runs * g.runs;
        fbn_parallel_for(fbn_group_count(p, g.group), nt,
                         op == FBN_OP_AFFINE ? FBN_SYM(fwd_fused_task) : FBN_SYM(bwd_fused_task),
                         &g);
        return 0;
    }
    if (p->fuse_segs && fuse) {
        FBN_SYM(pass) g = *j;
        g.runs = runs;
        fbn_parallel_for(fbn_group_count(p, g.runs), nt,
                         op == FBN_OP_AFFINE ? FBN_SYM(fwd_segs_task) : FBN_SYM(bwd_segs_task),
                         &g);
        return 0;
    }
    if (FBN_SYM(pass_reduce_all)(op, j, nt)) return -1;
    FBN_SYM(pass_coefs)(op, j, 0, p->s.channels);
    if (op == FBN_OP_DX && !j->out) return 0; /* sums only */
    /* tiles from the last: the data the reduction read last may still be in L3 */
    const int inputs = op == FBN_OP_DX ? (j->tkd->z ? 3 : 2) : (j->z ? 2 : 1);
    fbn_plan e = FBN_SYM(elemwise_plan)(FBN_SYM(spread_shape)(p->s, op == FBN_OP_DX), inputs);
    fbn_plan_output(&e, j->out, sizeof(T));
    FBN_SYM(fill_pass_typed)(j->k, &p->s, tk, op == FBN_OP_DX, e.stream);
    if (op == FBN_OP_AFFINE) {
        FBN_SYM(affine_job) a = {.x = j->x, .z = j->z, .y = j->out, .p = &e, .tk = tk,
                                 .backwards = 1};
        fbn_parallel_for(e.ntiles, nt, FBN_SYM(affine_task), &a);
    } else {
        FBN_SYM(tcoefs) td = *j->tkd; /* its arrays are tk's: so is their period */
        td.period = tk->period;
        td.cycle = tk->cycle;
        FBN_SYM(dx_job) d = {.dy = j->dy_dx, .x = j->x, .dx = j->out, .p = &e,
                             .tk = &td, .backwards = 1};
        fbn_parallel_for(e.ntiles, nt, FBN_SYM(dx_task), &d);
    }
    return 0;
}

int FBN_SYM(forward_train)(const T *x, T *y, fbn_shape s, const double *gamma,
                           const double *beta, double eps, int relu, double *mean_hi,
                           double *mean_lo, double *var, double *invstd, int nthreads) {
    const fbn_epilogue e = {.act = relu};
    return FBN_SYM(forward_train_ex)(x, y, s, gamma, beta, eps, &e, mean_hi, mean_lo, var,
                                     invstd, nthreads);
}

int FBN_SYM(forward_train_ex)(const T *x, T *y, fbn_shape s, const double *gamma,
                              const double *beta, double eps, const fbn_epilogue *e,
                              double *mean_hi, double *mean_lo, double *var, double *invstd,
                              int nthreads) {
    const int64_t C = s.channels;
    const int relu = FBN_EPI_ACT(e);
    fbn_plan p = FBN_SYM(reduce_plan)(s, 1);
    if (p.per_channel == 0 || C == 0) return -2;
    fbn_plan_output(&p, y, sizeof(T));
    const int nt = fbn_threads_for(&p, nthreads);
    const int f32 = e && e->params_f32;
    /* per-thread block arrays (see fbn_fwd_block_tile_<sfx>); not for statistics
     * as columns, which batch_stats takes unfused */
    if (p.nsegs == 1 && C >= FBN_BLOCK_WORK_C && !FBN_SYM(stats_as_columns)(&s)) {
        const int64_t bytes[2] = {nt * FBN_SYM(block_doubles)(&p) * (int64_t)sizeof(double),
                                  nt * FBN_SYM(typed_bytes)(p.block)};
        void *buf[2];
        fbn_work w;
        if (fbn_work_alloc(&w, 2, bytes, buf)) return -1;
        fbn_coefs k = {.relu = relu};
        FBN_SYM(tcoefs) tk =
            FBN_SYM(typed_arrays)(buf[1], p.block, relu, FBN_SYM(coef_lines)(&p, x, y, 0));
        if (e) tk.slope = (TC)e->slope;
        const FBN_SYM(pass) j = {
            .x = x, .out = y, .p = &p, .k = &k, .tk = &tk, .z = FBN_EPI_Z(e), .tkd = &tk,
            .n = (double)p.per_channel, .gamma = gamma,
            .fwd = {.beta = beta, .eps = eps, .mean_hi = mean_hi, .mean_lo = mean_lo,
                    .var = var, .invstd = invstd, .blockwork = buf[0], .blocktyped = buf[1],
                    .params_f32 = f32}};
        const int st = FBN_SYM(run_pass)(FBN_OP_AFFINE, &j, &tk, nt);
        fbn_work_free(&w);
        return st;
    }
    const int64_t len = fbn_scratch_len(&p);
    const int64_t typed_c = FBN_SYM(spread_shape)(s, 0).channels; /* the typed arrays' */
    const int64_t bytes[3] = {(C * (var ? 5 : 6) + (f32 ? 2 * C : 0) + nt * len) *
                                  (int64_t)sizeof(double),
                              p.nsegs * C * (int64_t)sizeof(fbn_part),
                              FBN_SYM(typed_bytes)(typed_c)};
    void *buf[3];
    fbn_work w;
    if (fbn_work_alloc(&w, 3, bytes, buf)) return -1;
    double *work = buf[0];
    double *pivot = work, *shift = work + C, *scale = work + 2 * C, *bias = work + 3 * C;
    double *m2 = work + 4 * C, *more = work + 5 * C;
    if (!var) {
        var = more;
        more += C;
    }
    if (f32) { /* gamma and beta as double */
        const float *g = (const float *)gamma, *b = (const float *)beta;
        for (int64_t c = 0; g && c < C; c++) more[c] = g[c];
        for (int64_t c = 0; b && c < C; c++) more[C + c] = b[c];
        gamma = g ? more : NULL;
        beta = b ? more + C : NULL;
        more += 2 * C;
    }
    fbn_coefs k = {.shift = shift, .scale = scale, .bias = bias, .relu = relu};
    FBN_SYM(tcoefs) tk =
        FBN_SYM(typed_arrays)(buf[2], typed_c, relu, FBN_SYM(coef_lines)(&p, x, y, 0));
    if (e) tk.slope = (TC)e->slope;
    FBN_SYM(pivots)(x, &s, pivot);
    const FBN_SYM(pass) j = {
        .x = x, .out = y, .p = &p, .k = &k, .tk = &tk, .z = FBN_EPI_Z(e), .tkd = &tk,
        .scratch = more, .len = len,
        .n = (double)p.per_channel, .gamma = gamma,
        .fwd = {.pivot = pivot, .beta = beta, .parts = buf[1], .eps = eps, .mean_hi = mean_hi,
                .mean_lo = mean_lo, .m2 = m2, .var = var, .invstd = invstd, .shift = shift,
                .scale = scale, .bias = bias}};
    const int st = FBN_SYM(run_pass)(FBN_OP_AFFINE, &j, &tk, nt);
    fbn_work_free(&w);
    return st;
}

int FBN_SYM(backward)(const T *dy, const T *x, T *dx, fbn_shape s, const double *mean_hi,
                      const double *mean_lo, const double *invstd, const double *gamma,
                      const double *beta, int relu, int training, double *sum_dy,
                      double *sum_dy_xhat, int nthreads) {
    const fbn_epilogue e = {.act = relu};
    return FBN_SYM(backward_ex)(dy, x, dx, s, mean_hi, mean_lo, invstd, gamma, beta, &e,
                                training, sum_dy, sum_dy_xhat, nthreads);
}

int FBN_SYM(backward_ex)(const T *dy, const T *x, T *dx, fbn_shape s, const double *mean_hi,
                         const double *mean_lo, const double *invstd, const double *gamma,
                         const double *beta, const fbn_epilogue *e, int training,
                         double *sum_dy, double *sum_dy_xhat, int nthreads) {
    const int64_t C = s.channels;
    const int relu = FBN_EPI_ACT(e);
    const T *z = FBN_EPI_Z(e);
    T *dres = z ? (T *)e->dresidual : NULL;
    fbn_plan p = FBN_SYM(reduce_plan)(s, 2);
    if (C == 0) return 0;
    fbn_plan_output(&p, dx, sizeof(T));
    const int nt = fbn_threads_for(&p, nthreads);
    const int64_t typed_c = FBN_SYM(spread_shape)(s, 1).channels; /* the typed arrays' */
    const int64_t bytes[3] = {C * 8 * (int64_t)sizeof(double),
                              fbn_reduce_work_len(&p, nt) * (int64_t)sizeof(double),
                              FBN_SYM(typed_bytes)(typed_c)};
    void *buf[3];
    fbn_work w;
    if (fbn_work_alloc(&w, 3, bytes, buf)) return -1;
    double *work = buf[0], *sums = buf[1];
    double *shift = work, *scale = work + C, *bias = work + 2 * C, *sum_dy_xc = work + 3 * C;
    double *k_dy = work + 4 * C, *k_x = work + 5 * C, *mean_dy = work + 6 * C;
    double *lo = work + 7 * C;
    if (mean_lo)
        memcpy(lo, mean_lo, C * sizeof(double));
    else
        memset(lo, 0, C * sizeof(double));
    fbn_coefs k = {.shift = shift, .lo = lo, .scale = scale, .bias = bias, .invstd = invstd,
                   .k_dy = k_dy, .k_x = k_x, .mean_dy = mean_dy, .relu = relu};
    fbn_coefs masks = {.shift = shift, .lo = lo, .scale = scale, .bias = bias, .relu = relu};
    FBN_SYM(tcoefs) tk =
        FBN_SYM(typed_arrays)(buf[2], typed_c, relu, FBN_SYM(coef_lines)(&p, x, dx, 0));
    tk.eval = !training;
    if (e) tk.slope = (TC)e->slope;
    /* with a residual, dx reads dres: dy'; but a leaky ReLU's dy' (dy * slope) of
     * 16-bit data is rounded there, so its dx reads dy and z */
    FBN_SYM(tcoefs) tkd = tk;
#ifdef FBN_NARROW
    const int dy_again = z && relu == 2;
#else
    const int dy_again = 0;
#endif
    if (dy_again)
        tkd.z = z;
    else if (z)
        tkd.relu = 0;
    fbn_coefficients(C, mean_hi, lo, invstd, gamma, beta, shift, scale, bias);
    FBN_SYM(fill_typed)(&masks, 0, C, &tk); /* for the ReLU masks; k_* are filled later */
    int st = 0;
    if (p.per_channel == 0) {
        for (int64_t c = 0; c < C; c++) sum_dy[c] = sum_dy_xhat[c] = 0.0;
    } else {
        const FBN_SYM(pass) j = {
            .x = x, .dy = dy, .out = dx, .p = &p, .k = &k, .tk = &tk, .z = z, .dres = dres,
            .dy_dx = dres && !dy_again ? dres : dy, .tkd = &tkd,
            .scratch = fbn_reduce_scratch(&p, sums), .len = fbn_scratch_len(&p),
            .n = (double)p.per_channel, .gamma = gamma,
            .bwd = {.sums = sums, .training = training, .invstd = invstd, .sum_dy = sum_dy,
                    .sum_dy_xc = sum_dy_xc, .sum_dy_xhat = sum_dy_xhat, .k_dy = k_dy,
                    .k_x = k_x, .mean_dy = mean_dy}};
        st = FBN_SYM(run_pass)(FBN_OP_DX, &j, &tk, nt);
    }
    fbn_work_free(&w);
    return st;
}
