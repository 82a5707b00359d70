/* The forward passes: training (statistics, then y; fused per channel block when
 * a tile holds whole channels), inference and the plain affine map. A per-dtype
 * template: see kern_dtype.h for T, TC and FBN_SYM. */

/* y of one elementwise tile; backwards: tiles from the last (the data a
 * reduction read last may still be in L3). */
typedef struct {
    const T *x;
    T *y;
    const fbn_plan *p;
    const FBN_SYM(tcoefs) *tk;
    int backwards;
} FBN_SYM(affine_job);

static void FBN_SYM(affine_task)(void *job, int64_t t, int thread) {
    const FBN_SYM(affine_job) *j = job;
    (void)thread;
    FBN_SYM(affine_tile)(j->x, j->y, j->p, j->backwards ? j->p->ntiles - 1 - t : t, j->tk);
}

/* The fused forward, one channel block per tile: statistics, coefficients, y. */
typedef struct {
    const T *x;
    T *y;
    const fbn_plan *p;
    const double *pivot;
    fbn_part *parts;
    double *scratch; /* len doubles per thread */
    int64_t len;
    double eps, n;
    const double *gamma, *beta;
    double *mean_hi, *mean_lo, *m2, *var, *invstd, *shift, *scale, *bias;
    const fbn_coefs *k; /* of shift, scale and bias */
    const FBN_SYM(tcoefs) *tk;
} FBN_SYM(fwd_fused_job);

static void FBN_SYM(fwd_fused_task)(void *job, int64_t t, int thread) {
    const FBN_SYM(fwd_fused_job) *j = job;
    const FBN_SYM(tile) r = FBN_SYM(tile_of)(j->p, t);
    const int64_t c0 = r.c0, nc = r.nc;
    FBN_SYM(stats_tile)(j->x, j->p, t, j->pivot, j->parts, j->scratch + thread * j->len);
    for (int64_t c = c0; c < c0 + nc; c++)
        FBN_SYM(finish_stats)(c, j->pivot[c], &j->parts[c], j->mean_hi, j->mean_lo, j->m2);
    FBN_SYM(finish_channels)(nc, j->eps, j->n, j->m2 + c0, j->var + c0, j->invstd + c0);
    fbn_coefficients(nc, j->mean_hi + c0, j->mean_lo + c0, j->invstd + c0,
                     j->gamma ? j->gamma + c0 : NULL, j->beta ? j->beta + c0 : NULL,
                     j->shift + c0, j->scale + c0, j->bias + c0);
    FBN_SYM(fill_typed)(j->k, c0, nc, j->tk);
    FBN_SYM(affine_tile)(j->x, j->y, j->p, t, j->tk);
}

int FBN_SYM(forward_train)(const T *x, T *y, fbn_shape s, const double *gamma,
                           const double *beta, double eps, int relu, double *mean_hi,
                           double *mean_lo, double *var, double *invstd, int nthreads) {
    const int64_t C = s.channels;
    fbn_plan p = FBN_SYM(reduce_plan)(s, 1);
    if (p.per_channel == 0 || C == 0) return -2;
    const int nt = fbn_threads_for(&p, nthreads);
    const int64_t len = fbn_scratch_len(&p);
    const int64_t bytes[3] = {(C * 5 + nt * len) * (int64_t)sizeof(double),
                              p.nsegs * C * (int64_t)sizeof(fbn_part),
                              FBN_SYM(typed_bytes)(C)};
    void *buf[3];
    fbn_work w;
    if (fbn_work_alloc(&w, 3, bytes, buf)) return -1;
    double *work = buf[0];
    fbn_part *parts = buf[1];
    double *pivot = work, *shift = work + C, *scale = work + 2 * C, *bias = work + 3 * C;
    double *m2 = work + 4 * C, *scratch = work + 5 * C, n = (double)p.per_channel;
    fbn_coefs k = {.shift = shift, .scale = scale, .bias = bias, .relu = relu};
    FBN_SYM(tcoefs) tk = FBN_SYM(typed_arrays)(buf[2], C, relu);
    FBN_SYM(pivots)(x, &s, pivot);
    if (p.nsegs == 1) {
        /* each tile holds whole channels: reduce it, then normalise it while in cache */
        FBN_SYM(fwd_fused_job) j = {.x = x, .y = y, .p = &p, .pivot = pivot, .parts = parts,
                                    .scratch = scratch, .len = len, .eps = eps, .n = n,
                                    .gamma = gamma, .beta = beta, .mean_hi = mean_hi,
                                    .mean_lo = mean_lo, .m2 = m2, .var = var, .invstd = invstd,
                                    .shift = shift, .scale = scale, .bias = bias, .k = &k,
                                    .tk = &tk};
        fbn_parallel_for(p.nblocks, nt, FBN_SYM(fwd_fused_task), &j);
    } else {
        FBN_SYM(stats_all)(x, &p, pivot, parts, scratch, mean_hi, mean_lo, m2, nt);
        FBN_SYM(finish_channels)(C, eps, n, m2, var, invstd);
        fbn_coefficients(C, mean_hi, mean_lo, invstd, gamma, beta, shift, scale, bias);
        FBN_SYM(fill_typed)(&k, 0, C, &tk);
        FBN_SYM(repeat_typed)(&tk, &s, 0);
        /* backwards: the data read last by the statistics pass may still be in L3 */
        fbn_plan e = FBN_SYM(elemwise_plan)(s, 1);
        FBN_SYM(affine_job) j = {.x = x, .y = y, .p = &e, .tk = &tk, .backwards = 1};
        fbn_parallel_for(e.ntiles, nt, FBN_SYM(affine_task), &j);
    }
    fbn_work_free(&w);
    return 0;
}

/* y from the coefficients k, the typed block's arrays filled here. */
static void FBN_SYM(affine_all)(const T *x, T *y, fbn_shape s, const fbn_coefs *k, TC *typed,
                                int nthreads) {
    fbn_plan p = FBN_SYM(elemwise_plan)(s, 1);
    FBN_SYM(tcoefs) tk = FBN_SYM(typed_arrays)(typed, s.channels, k->relu);
    FBN_SYM(fill_typed)(k, 0, s.channels, &tk);
    FBN_SYM(repeat_typed)(&tk, &s, 0);
    FBN_SYM(affine_job) j = {.x = x, .y = y, .p = &p, .tk = &tk, .backwards = 0};
    fbn_parallel_for(p.ntiles, fbn_threads_for(&p, nthreads), FBN_SYM(affine_task), &j);
}

int FBN_SYM(affine)(const T *x, T *y, fbn_shape s, const double *shift, const double *scale,
                    const double *bias, int relu, int nthreads) {
    fbn_coefs k = {.shift = shift, .scale = scale, .bias = bias, .relu = relu};
    const int64_t bytes[1] = {FBN_SYM(typed_bytes)(s.channels)};
    void *typed;
    fbn_work w;
    if (fbn_work_alloc(&w, 1, bytes, &typed)) return -1;
    FBN_SYM(affine_all)(x, y, s, &k, typed, nthreads);
    fbn_work_free(&w);
    return 0;
}

int FBN_SYM(forward_infer)(const T *x, T *y, fbn_shape s, const double *mean, const double *var,
                           const double *gamma, const double *beta, double eps, int relu,
                           double *invstd, int nthreads) {
    const int64_t C = s.channels;
    const int64_t bytes[2] = {3 * C * (int64_t)sizeof(double), FBN_SYM(typed_bytes)(C)};
    void *buf[2];
    fbn_work w;
    if (fbn_work_alloc(&w, 2, bytes, buf)) return -1;
    double *shift = buf[0], *scale = shift + C, *bias = scale + C;
    fbn_invstd(C, var, eps, invstd);
    fbn_coefficients(C, mean, NULL, invstd, gamma, beta, shift, scale, bias);
    fbn_coefs k = {.shift = shift, .scale = scale, .bias = bias, .relu = relu};
    FBN_SYM(affine_all)(x, y, s, &k, buf[1], nthreads);
    fbn_work_free(&w);
    return 0;
}
