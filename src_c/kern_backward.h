/* The backward's parts: the reduction (sum_dy, sum_dy_xc) and dx as separate
 * kernels, the coefficients between them (the fused backward is kern_fused.h),
 * and the running-statistics update. A per-dtype template: see kern_dtype.h for
 * T, TC and FBN_SYM; the sums' names are explained in plan.h. */

/* Sum the tiles' partial sums (2 per channel) of channels [c0, c1), segment after
 * segment; compensated, in a fixed order. comp: 2 doubles per channel of scratch,
 * from channel c0's. (sum_tiles for every channel, and a fused channel's.) */
FBN_INLINE void FBN_SYM(sum_segments)(const fbn_plan *p, double *sums, double *comp,
                                      int64_t c0, int64_t c1, double *sum_dy,
                                      double *sum_dy_xc) {
    const int64_t C2 = 2 * p->s.channels, a = 2 * c0, n = 2 * (c1 - c0);
    for (int64_t i = 0; i < n; i++) comp[i] = 0.0;
    for (int64_t k = 1; k < p->nsegs; k++) fbn_kadd_arrays(sums + a, comp, sums + k * C2 + a, n);
    for (int64_t c = c0; c < c1; c++) {
        const int64_t i = 2 * (c - c0);
        fbn_ksum u = {sums[2 * c], comp[i]}, v = {sums[2 * c + 1], comp[i + 1]};
        sum_dy[c] = fbn_kval(&u);
        sum_dy_xc[c] = fbn_kval(&v);
    }
}

/* Sum the tiles' partial sums (2 per channel) segment after segment, so memory
 * is read in order; compensated, in a fixed order. comp: 2C doubles of scratch. */
static void FBN_SYM(sum_tiles)(const fbn_plan *p, double *sums, double *comp, double *sum_dy,
                               double *sum_dy_xc) {
    FBN_SYM(sum_segments)(p, sums, comp, 0, p->s.channels, sum_dy, sum_dy_xc);
}

/* One tile's partial sums (into its segment's slot of work) of the backward's
 * reduction. */
typedef struct {
    const T *dy, *x;
    const fbn_plan *p;
    const fbn_coefs *k;
    const FBN_SYM(tcoefs) *tk;
    double *work, *scratch; /* scratch: len doubles per thread */
    int64_t len;
    const T *z; /* the residual (NULL: none), and where dy' goes with it */
    T *dres;
    int64_t group; /* channels per task (fbn_run_group; see fbn_group_tiles_<sfx>) */
} FBN_SYM(reduce_job);

static void FBN_SYM(reduce_task)(void *job, int64_t u, int thread) {
    const FBN_SYM(reduce_job) *j = job;
    int64_t g;
    const int64_t t = FBN_SYM(group_tiles)(j->p, j->group, u, &g);
    FBN_SYM(bwd_reduce_tiles)(j->dy, j->x, j->p, t, g, j->k, j->tk,
                              j->work + u % j->p->nsegs * 2 * j->p->s.channels,
                              j->scratch + thread * j->len, j->z, j->dres);
}

/* dx of one elementwise tile (backwards as in fbn_affine_job_<sfx>). */
typedef struct {
    const T *dy, *x;
    T *dx;
    const fbn_plan *p;
    const FBN_SYM(tcoefs) *tk;
    int backwards;
} FBN_SYM(dx_job);

static void FBN_SYM(dx_task)(void *job, int64_t t, int thread) {
    const FBN_SYM(dx_job) *j = job;
    (void)thread;
    FBN_SYM(bwd_elemt_tile_any)(j->dy, j->x, j->dx, j->p, j->backwards ? j->p->ntiles - 1 - t : t,
                            j->tk);
}

/* Reduce every tile, then sum the tiles in order: sum(dy') and sum_dy_xc.
 * work: fbn_reduce_work_len(p, nt) doubles. */
static void FBN_SYM(reduce_tiled)(const T *dy, const T *x, const fbn_plan *p,
                                  const fbn_coefs *k, const FBN_SYM(tcoefs) *tk, double *work,
                                  double *sum_dy, double *sum_dy_xc, const T *z, T *dres,
                                  int nt) {
    const int64_t C = p->s.channels;
    const int64_t group = fbn_run_group(p, sizeof(T), 2, nt, 0);
    FBN_SYM(reduce_job) j = {.dy = dy, .x = x, .p = p, .k = k, .tk = tk, .work = work,
                             .scratch = fbn_reduce_scratch(p, work), .len = fbn_scratch_len(p),
                             .z = z, .dres = dres, .group = group};
    fbn_parallel_for(fbn_group_count(p, group) * p->nsegs, nt, FBN_SYM(reduce_task), &j);
    FBN_SYM(sum_tiles)(p, work, work + p->nsegs * 2 * C, sum_dy, sum_dy_xc);
}

/* The backward's sums of a small map (fbn_sums_as_columns_<sfx>), as its
 * statistics are taken: the columns of (outer, C * inner), each column with its
 * channel's coefficients, and a channel's inner columns summed (compensated).
 * Returns -1 when its work cannot be allocated. */
static int FBN_SYM(reduce_columns)(const T *dy, const T *x, const fbn_shape *s,
                                   const fbn_coefs *k, const FBN_SYM(tcoefs) *tk,
                                   double *sum_dy, double *sum_dy_xc, const T *z, T *dres,
                                   int nt) {
    const fbn_shape cs = fbn_columns_shape(*s);
    const fbn_plan p = fbn_make_plan(cs, sizeof(T), 2, FBN_REDUCTION);
    const int64_t W = cs.channels, inner = s->inner;
    const int64_t bytes[2] = {(4 * W + fbn_reduce_work_len(&p, nt)) * (int64_t)sizeof(double),
                              3 * W * (int64_t)sizeof(TC)};
    void *buf[2];
    fbn_work w;
    if (fbn_work_alloc(&w, 2, bytes, buf)) return -1;
    double *shift = buf[0], *lo = shift + W, *sd = lo + W, *sx = sd + W, *work = sx + W;
    FBN_SYM(tcoefs) tc = *tk;
    tc.shift = buf[1];
    tc.scale = tc.shift + W;
    tc.bias = tc.scale + W;
    for (int64_t c = 0; c < s->channels; c++)
        for (int64_t i = c * inner; i < (c + 1) * inner; i++) {
            shift[i] = k->shift[c];
            lo[i] = k->lo[c];
            tc.shift[i] = tk->shift[c];
            tc.scale[i] = tk->scale[c];
            tc.bias[i] = tk->bias[c];
        }
    const fbn_coefs kc = {.shift = shift, .lo = lo, .relu = k->relu};
    FBN_SYM(reduce_tiled)(dy, x, &p, &kc, &tc, work, sd, sx, z, dres, nt);
    for (int64_t c = 0; c < s->channels; c++) {
        fbn_ksum a = {0.0, 0.0}, b = {0.0, 0.0};
        for (int64_t i = c * inner; i < (c + 1) * inner; i++) {
            fbn_kadd(&a, sd[i]);
            fbn_kadd(&b, sx[i]);
        }
        sum_dy[c] = fbn_kval(&a);
        sum_dy_xc[c] = fbn_kval(&b);
    }
    fbn_work_free(&w);
    return 0;
}

/* The backward's sums over every tile (work: p's, unused by a small map's
 * columns). Returns -1 when work cannot be allocated. */
static int FBN_SYM(reduce_all)(const T *dy, const T *x, const fbn_plan *p, const fbn_coefs *k,
                               const FBN_SYM(tcoefs) *tk, double *work, double *sum_dy,
                               double *sum_dy_xc, const T *z, T *dres, int nt) {
    if (FBN_SYM(sums_as_columns)(&p->s))
        return FBN_SYM(reduce_columns)(dy, x, &p->s, k, tk, sum_dy, sum_dy_xc, z, dres, nt);
    FBN_SYM(reduce_tiled)(dy, x, p, k, tk, work, sum_dy, sum_dy_xc, z, dres, nt);
    return 0;
}

/* (x - shift) here: lo is zero, so sum_dy_xc is sum_dy_xs. */
int FBN_SYM(backward_reduce)(const T *dy, const T *x, fbn_shape s, const double *shift,
                             const double *scale, const double *bias, int relu, double *sum_dy,
                             double *sum_dy_xs, int nthreads) {
    fbn_plan p = FBN_SYM(reduce_plan)(s, 2);
    const int64_t C = s.channels;
    if (p.per_channel == 0) {
        for (int64_t c = 0; c < C; c++) sum_dy[c] = sum_dy_xs[c] = 0.0;
        return 0;
    }
    const int nt = fbn_threads_for(&p, nthreads);
    const int64_t bytes[3] = {C * (int64_t)sizeof(double),
                              fbn_reduce_work_len(&p, nt) * (int64_t)sizeof(double),
                              FBN_SYM(typed_bytes)(C)};
    void *buf[3];
    fbn_work w;
    if (fbn_work_alloc(&w, 3, bytes, buf)) return -1;
    double *zeros = buf[0]; /* the mean's residual, and an absent scale or bias */
    memset(zeros, 0, bytes[0]);
    fbn_coefs k = {.shift = shift, .lo = zeros, .scale = scale ? scale : zeros,
                   .bias = bias ? bias : zeros, .relu = relu};
    FBN_SYM(tcoefs) tk = FBN_SYM(typed_arrays)(buf[2], C, relu, NULL);
    FBN_SYM(fill_typed)(&k, 0, C, &tk);
    const int st =
        FBN_SYM(reduce_all)(dy, x, &p, &k, &tk, buf[1], sum_dy, sum_dy_xs, NULL, NULL, nt);
    fbn_work_free(&w);
    return st;
}

int FBN_SYM(backward_elemt)(const T *dy, const T *x, T *dx, fbn_shape s, const double *shift,
                            const double *invstd, const double *k_dy, const double *k_x,
                            const double *mean_dy, const double *scale, const double *bias,
                            int relu, int nthreads) {
    const fbn_shape sp = FBN_SYM(spread_shape)(s, 1);
    fbn_plan p = FBN_SYM(elemwise_plan)(sp, 2);
    fbn_plan_output(&p, dx, sizeof(T));
    const int64_t C = s.channels ? s.channels : 1;
    const int64_t bytes[2] = {FBN_SYM(typed_bytes)(sp.channels ? sp.channels : 1),
                              C * (int64_t)sizeof(double)};
    void *buf[2];
    fbn_work w;
    if (fbn_work_alloc(&w, 2, bytes, buf)) return -1;
    double *zeros = buf[1]; /* for an absent scale or bias */
    memset(zeros, 0, bytes[1]);
    fbn_coefs k = {.shift = shift, .scale = scale ? scale : zeros, .bias = bias ? bias : zeros,
                   .invstd = invstd, .k_dy = k_dy, .k_x = k_x, .mean_dy = mean_dy,
                   .relu = relu};
    FBN_SYM(tcoefs) tk =
        FBN_SYM(typed_arrays)(buf[0], sp.channels, relu, FBN_SYM(coef_lines)(&p, x, dx, 0));
    FBN_SYM(fill_pass_typed)(&k, &s, &tk, 1, p.stream);
    FBN_SYM(dx_job) j = {.dy = dy, .x = x, .dx = dx, .p = &p, .tk = &tk, .backwards = 0};
    fbn_parallel_for(p.ntiles, fbn_threads_for(&p, nthreads), FBN_SYM(dx_task), &j);
    fbn_work_free(&w);
    return 0;
}

/* The loop of fbn_bwd_coefficients_<sfx>, with has_gamma a constant (the loads of
 * gamma are unconditional where they happen at all: the loop vectorises). */
FBN_INLINE void FBN_SYM(bwd_coefficients_as)(int64_t nc, double n, int training,
                                              const double *restrict invstd,
                                              const double *restrict gamma, const int has_gamma,
                                              const double *restrict sum_dy,
                                              const double *restrict sum_dy_xc,
                                              double *restrict sum_dy_xhat,
                                              double *restrict k_dy, double *restrict k_x,
                                              double *restrict mean_dy) {
    for (int64_t c = 0; c < nc; c++) {
        const double s2 = invstd[c] * sum_dy_xc[c], a = (has_gamma ? gamma[c] : 1.0) * invstd[c];
        const double m = sum_dy[c] / n;
        sum_dy_xhat[c] = s2;
        k_dy[c] = a;
        k_x[c] = training ? -a * (s2 / n) : 0.0;
        mean_dy[c] = training ? m : 0.0;
    }
}

/* From the reduced sums of nc channels to sum_dy_xhat and the dx coefficients
 * (pointers at the first channel; gamma may be NULL). A loop that vectorises:
 * with few rows per channel its divisions are much of a call. */
FBN_DISPATCH static void FBN_SYM(bwd_coefficients)(int64_t nc, double n, int training,
                                                   const double *restrict invstd,
                                                   const double *restrict gamma,
                                                   const double *restrict sum_dy,
                                                   const double *restrict sum_dy_xc,
                                                   double *restrict sum_dy_xhat,
                                                   double *restrict k_dy,
                                                   double *restrict k_x,
                                                   double *restrict mean_dy) {
    if (gamma)
        FBN_SYM(bwd_coefficients_as)(nc, n, training, invstd, gamma, 1, sum_dy, sum_dy_xc,
                                     sum_dy_xhat, k_dy, k_x, mean_dy);
    else
        FBN_SYM(bwd_coefficients_as)(nc, n, training, invstd, NULL, 0, sum_dy, sum_dy_xc,
                                     sum_dy_xhat, k_dy, k_x, mean_dy);
}

/* Compiled per instruction set (a pass over C channels). */
FBN_DISPATCH void FBN_SYM(ema)(T *running, const double *batch, const double *batch_lo,
                               int64_t channels, double momentum, double factor) {
    for (int64_t c = 0; c < channels; c++) {
        const double b = batch_lo ? batch[c] + batch_lo[c] : batch[c];
        running[c] = FBN_ST((TC)((1.0 - momentum) * (double)FBN_LD(running[c]) + momentum * b * factor));
    }
}
