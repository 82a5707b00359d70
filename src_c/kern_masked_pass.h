/* The masked training passes (kern_masked.h): forward (statistics of the kept
 * positions, then y everywhere) and backward (sums over every position, then
 * dx), on the skeleton of kern_fused.h: when every tile holds whole channels
 * (nsegs == 1) one task per channel block reduces it and rewrites it while it is
 * in cache, so a mask costs no second pass over x; otherwise the reduction runs
 * over all tiles, is merged in a fixed order, and the elementwise pass follows.
 * A per-dtype template: see kern_dtype.h for T, TC and FBN_SYM. */

typedef struct {
    const T *x, *dy; /* dy: backward only */
    T *out;          /* y or dx; NULL: the reduction only */
    const uint8_t *mask;
    const fbn_plan *p;
    const fbn_coefs *k;
    const FBN_SYM(tcoefs) *tk;
    const int64_t *kept; /* kept positions per segment */
    double *scratch;     /* len doubles per thread */
    int64_t len;
    double n; /* kept positions per channel */
    const double *gamma, *beta, *pivot;
    fbn_part *parts;
    double eps;
    int stream; /* dx: its stores non-temporal (an output beyond the caches) */
    double *mean_hi, *mean_lo, *m2, *var, *invstd;
    double *shift, *scale, *bias; /* forward: what k points to, written */
    double *sums, *sum_dy, *sum_dy_xc, *sum_dy_xhat, *k_dy, *k_x, *mean_dy; /* backward */
} FBN_SYM(mpass);

/* Segment after segment as fbn_merge_task_<sfx>, weighted by kept counts; an
 * empty segment is skipped (its part is (0, 0); weights would be 0 / 0). */
static void FBN_SYM(mmerge_task)(void *job, int64_t b, int thread) {
    const FBN_SYM(mpass) *j = job;
    const fbn_plan *p = j->p;
    const int64_t C = p->s.channels, c0 = b * FBN_MERGE_CHUNK;
    const int64_t c1 = c0 + FBN_MERGE_CHUNK < C ? c0 + FBN_MERGE_CHUNK : C;
    fbn_part *parts = j->parts;
    double na = (double)j->kept[0];
    (void)thread;
    for (int64_t k = 1; k < p->nsegs; k++) {
        const fbn_part *seg = parts + k * C;
        const double nb = (double)j->kept[k], n = na + nb;
        if (nb == 0.0) continue;
        const double wb = nb / n, wab = na * nb / n;
        for (int64_t c = c0; c < c1; c++) {
            double delta = seg[c].mean - parts[c].mean;
            parts[c].mean += delta * wb;
            parts[c].m2 += seg[c].m2 + delta * delta * wab;
        }
        na = n;
    }
    for (int64_t c = c0; c < c1; c++)
        FBN_SYM(finish_stats)(c, j->pivot[c], &parts[c], j->mean_hi, j->mean_lo, j->m2);
}

static void FBN_SYM(mstats_task)(void *job, int64_t t, int thread) {
    const FBN_SYM(mpass) *j = job;
    FBN_SYM(mstats_tile)(j->x, j->mask, j->p, t, j->kept, j->pivot,
                         j->parts + (t % j->p->nsegs) * j->p->s.channels,
                         j->scratch + thread * j->len);
}

/* Channels [c0, c0 + nc): var, invstd and the affine coefficients (typed too). */
static void FBN_SYM(mfwd_coefs)(const FBN_SYM(mpass) *j, int64_t c0, int64_t nc) {
    FBN_SYM(finish_channels)(nc, j->eps, j->n, j->m2 + c0, j->var + c0, j->invstd + c0);
    if (!j->out) return;
    fbn_coefficients(nc, j->mean_hi + c0, j->mean_lo + c0, j->invstd + c0,
                     j->gamma ? j->gamma + c0 : NULL, j->beta ? j->beta + c0 : NULL,
                     j->shift + c0, j->scale + c0, j->bias + c0);
    FBN_SYM(fill_typed)(j->k, c0, nc, j->tk);
}

static void FBN_SYM(mfwd_fused_task)(void *job, int64_t t, int thread) {
    const FBN_SYM(mpass) *j = job;
    const FBN_SYM(tile) r = FBN_SYM(tile_of)(j->p, t);
    FBN_SYM(mstats_task)(job, t, thread);
    for (int64_t c = r.c0; c < r.c0 + r.nc; c++)
        FBN_SYM(finish_stats)(c, j->pivot[c], &j->parts[c], j->mean_hi, j->mean_lo, j->m2);
    FBN_SYM(mfwd_coefs)(j, r.c0, r.nc);
    if (j->out) FBN_SYM(affine_tile)(j->x, j->out, j->p, t, j->tk);
}

/* Statistics of the positions mask keeps (outer * inner bytes, 0 or 1); y
 * everywhere unless y is NULL (statistics only). count: the kept positions per
 * channel. Returns -2 when the mask keeps none. */
int FBN_SYM(forward_masked)(const T *x, T *y, fbn_shape s, const uint8_t *mask,
                            const double *gamma, const double *beta, double eps, int relu,
                            double *mean_hi, double *mean_lo, double *var, double *invstd,
                            int64_t *count, int nthreads) {
    const int64_t C = s.channels;
    fbn_plan p = FBN_SYM(reduce_plan)(s, 1);
    if (p.per_channel == 0 || C == 0) return -2;
    fbn_plan_output(&p, y, sizeof(T)); /* y streamed beyond the caches, as unmasked */
    const int nt = fbn_threads_for(&p, nthreads);
    const int64_t len = fbn_scratch_len(&p);
    const int64_t bytes[4] = {(C * 5 + nt * len) * (int64_t)sizeof(double),
                              p.nsegs * C * (int64_t)sizeof(fbn_part),
                              FBN_SYM(typed_bytes)(C), p.nsegs * (int64_t)sizeof(int64_t)};
    void *buf[4];
    fbn_work w;
    if (fbn_work_alloc(&w, 4, bytes, buf)) return -1;
    int64_t *kept = buf[3];
    *count = FBN_SYM(mask_counts)(mask, &p, kept);
    if (*count == 0) {
        fbn_work_free(&w);
        return -2;
    }
    double *work = buf[0];
    double *pivot = work, *m2 = work + 4 * C;
    /* every position of a small map kept: the unmasked kernels, whose statistics are
     * columns (fbn_stats_as_columns_<sfx>) where these masked sums are runs, so that
     * such a mask gives the unmasked bits */
    if (*count == p.per_channel && FBN_SYM(stats_as_columns)(&s)) {
        int st;
        if (y) {
            fbn_work_free(&w);
            return FBN_SYM(forward_train)(x, y, s, gamma, beta, eps, relu, mean_hi, mean_lo,
                                          var, invstd, nt);
        }
        st = FBN_SYM(stats_columns)(x, &s, mean_hi, mean_lo, m2, nt);
        if (st == 0) FBN_SYM(finish_channels)(C, eps, (double)*count, m2, var, invstd);
        fbn_work_free(&w);
        return st;
    }
    const uint8_t *first = memchr(mask, 1, (size_t)p.per_channel);
    fbn_coefs k = {.shift = work + C, .scale = work + 2 * C, .bias = work + 3 * C, .relu = relu};
    FBN_SYM(tcoefs) tk =
        FBN_SYM(typed_arrays)(buf[2], C, relu, FBN_SYM(coef_lines)(&p, x, y, 0));
    FBN_SYM(mpivots)(x, &s, first - mask, pivot);
    const FBN_SYM(mpass) j = {
        .x = x, .out = y, .mask = mask, .p = &p, .k = &k, .tk = &tk, .kept = kept,
        .scratch = work + 5 * C, .len = len, .n = (double)*count, .gamma = gamma, .beta = beta,
        .pivot = pivot, .parts = buf[1], .eps = eps, .mean_hi = mean_hi, .mean_lo = mean_lo,
        .m2 = m2, .var = var, .invstd = invstd, .shift = work + C, .scale = work + 2 * C,
        .bias = work + 3 * C};
    if (p.nsegs == 1) {
        fbn_parallel_for(p.nblocks, nt, FBN_SYM(mfwd_fused_task), (void *)&j);
    } else {
        const int64_t nchunks = (C + FBN_MERGE_CHUNK - 1) / FBN_MERGE_CHUNK;
        fbn_parallel_for(p.ntiles, nt, FBN_SYM(mstats_task), (void *)&j);
        fbn_parallel_for(nchunks, C * p.nsegs >= FBN_MIN_PARALLEL ? nt : 1,
                         FBN_SYM(mmerge_task), (void *)&j);
        FBN_SYM(mfwd_coefs)(&j, 0, C);
        if (y) {
            FBN_SYM(repeat_typed)(&tk, &s, 0, 0);
            fbn_plan e = FBN_SYM(elemwise_plan)(s, 1);
            fbn_plan_output(&e, y, sizeof(T));
            FBN_SYM(affine_job) a = {.x = x, .y = y, .p = &e, .tk = &tk, .backwards = 1};
            fbn_parallel_for(e.ntiles, fbn_threads_for(&e, nthreads), FBN_SYM(affine_task), &a);
        }
    }
    fbn_work_free(&w);
    return 0;
}

/* Channels [c0, c0 + nc): sum_dy_xhat and the dx coefficients (typed too). */
static void FBN_SYM(mbwd_coefs)(const FBN_SYM(mpass) *j, int64_t c0, int64_t nc) {
    FBN_SYM(bwd_coefficients)(nc, j->n, 1, j->invstd + c0, j->gamma ? j->gamma + c0 : NULL,
                              j->sum_dy + c0, j->sum_dy_xc + c0, j->sum_dy_xhat + c0,
                              j->k_dy + c0, j->k_x + c0, j->mean_dy + c0);
    FBN_SYM(fill_typed)(j->k, c0, nc, j->tk);
}

static void FBN_SYM(mbwd_fused_task)(void *job, int64_t t, int thread) {
    const FBN_SYM(mpass) *j = job;
    const FBN_SYM(tile) r = FBN_SYM(tile_of)(j->p, t);
    FBN_SYM(bwd_reduce_tile)(j->dy, j->x, j->p, t, j->k, j->tk, j->sums,
                             j->scratch + thread * j->len);
    for (int64_t c = r.c0; c < r.c0 + r.nc; c++) {
        j->sum_dy[c] = j->sums[2 * c];
        j->sum_dy_xc[c] = j->sums[2 * c + 1];
    }
    FBN_SYM(mbwd_coefs)(j, r.c0, r.nc);
    if (j->out)
        FBN_SYM(mdx_block)(j->stream, j->dy, j->x, j->out, &j->p->s, j->mask, j->tk, r.c0, r.nc,
                           r.j0, r.j1);
}

/* Tiles from the last, as the unmasked dx: the data the reduction read last may
 * still be in L3. */
static void FBN_SYM(mdx_task)(void *job, int64_t t, int thread) {
    const FBN_SYM(mpass) *j = job;
    const FBN_SYM(tile) r = FBN_SYM(tile_of)(j->p, j->p->ntiles - 1 - t);
    (void)thread;
    FBN_SYM(mdx_block)(j->stream, j->dy, j->x, j->out, &j->p->s, j->mask, j->tk, r.c0, r.nc,
                       r.j0, r.j1);
}

/* Backward of a masked training forward: sum(dy') and sum_dy_xhat over every
 * position, dx with count kept positions (dx may be NULL: the sums only). */
int FBN_SYM(backward_masked)(const T *dy, const T *x, T *dx, fbn_shape s, const uint8_t *mask,
                             int64_t count, const double *mean_hi, const double *mean_lo,
                             const double *invstd, const double *gamma, const double *beta,
                             int relu, double *sum_dy, double *sum_dy_xhat, int nthreads) {
    const int64_t C = s.channels;
    fbn_plan p = FBN_SYM(reduce_plan)(s, 2);
    if (C == 0) return 0;
    if (p.per_channel == 0 || count < 1) return -2;
    fbn_plan_output(&p, dx, sizeof(T));
    const int nt = fbn_threads_for(&p, nthreads);
    const int64_t bytes[3] = {C * 8 * (int64_t)sizeof(double),
                              fbn_reduce_work_len(&p, nt) * (int64_t)sizeof(double),
                              FBN_SYM(typed_bytes)(C)};
    void *buf[3];
    fbn_work w;
    if (fbn_work_alloc(&w, 3, bytes, buf)) return -1;
    double *work = buf[0], *sums = buf[1], *lo = work + 7 * C;
    if (mean_lo)
        memcpy(lo, mean_lo, C * sizeof(double));
    else
        memset(lo, 0, C * sizeof(double));
    fbn_coefs k = {.shift = work, .lo = lo, .scale = work + C, .bias = work + 2 * C,
                   .invstd = invstd, .k_dy = work + 4 * C, .k_x = work + 5 * C,
                   .mean_dy = work + 6 * C, .relu = relu};
    fbn_coefs masks = {.shift = k.shift, .lo = lo, .scale = k.scale, .bias = k.bias,
                       .relu = relu};
    FBN_SYM(tcoefs) tk =
        FBN_SYM(typed_arrays)(buf[2], C, relu, FBN_SYM(coef_lines)(&p, x, dx, 0));
    fbn_coefficients(C, mean_hi, lo, invstd, gamma, beta, work, work + C, work + 2 * C);
    FBN_SYM(fill_typed)(&masks, 0, C, &tk); /* the ReLU masks of the reduction */
    FBN_SYM(mpass) j = {
        .x = x, .dy = dy, .out = dx, .mask = mask, .p = &p, .k = &k, .tk = &tk,
        .scratch = fbn_reduce_scratch(&p, sums), .len = fbn_scratch_len(&p),
        .n = (double)count, .gamma = gamma, .invstd = (double *)invstd, .sums = sums,
        .sum_dy = sum_dy, .sum_dy_xc = work + 3 * C, .sum_dy_xhat = sum_dy_xhat,
        .k_dy = work + 4 * C, .k_x = work + 5 * C, .mean_dy = work + 6 * C,
        .stream = p.stream};
    /* a small map's sums are columns (fbn_reduce_all_<sfx>): as unmasked */
    if (p.nsegs == 1 && !FBN_SYM(sums_as_columns)(&s)) {
        fbn_parallel_for(p.nblocks, nt, FBN_SYM(mbwd_fused_task), (void *)&j);
    } else {
        /* dx over the reduction's tiles, streamed as the unmasked elementwise pass */
        fbn_plan e = FBN_SYM(elemwise_plan)(s, 2);
        fbn_plan_output(&e, dx, sizeof(T));
        j.stream = e.stream;
        if (FBN_SYM(reduce_all)(dy, x, &p, &k, &tk, sums, sum_dy, j.sum_dy_xc, NULL, NULL,
                                nt)) {
            fbn_work_free(&w);
            return -1;
        }
        FBN_SYM(mbwd_coefs)(&j, 0, C);
        if (dx) fbn_parallel_for(p.ntiles, nt, FBN_SYM(mdx_task), (void *)&j);
    }
    fbn_work_free(&w);
    return 0;
}
