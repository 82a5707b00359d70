/* The forward passes but training's (kern_fused.h): inference and the plain
 * affine map, and the elementwise loop they share with it. A per-dtype template:
 * see kern_dtype.h for T, TC and FBN_SYM. */

/* y of one elementwise tile; backwards: tiles from the last (the data a
 * reduction read last may still be in L3). */
typedef struct {
    const T *x, *z; /* z: the residual (NULL: none) */
    T *y;
    const fbn_plan *p;
    const FBN_SYM(tcoefs) *tk;
    int backwards;
} FBN_SYM(affine_job);

static void FBN_SYM(affine_task)(void *job, int64_t t, int thread) {
    const FBN_SYM(affine_job) *j = job;
    (void)thread;
    FBN_SYM(affine_tile_any)(j->x, j->z, j->y, j->p, j->backwards ? j->p->ntiles - 1 - t : t, j->tk);
}

/* The activation code of the typed coefficients (0 none, 1 ReLU, 2 leaky) and the
 * residual of an epilogue (NULL: none). */
#define FBN_EPI_ACT(e) ((e) ? (e)->act : 0)
#define FBN_EPI_Z(e) ((e) ? (const T *)(e)->residual : (const T *)NULL)

/* y from the coefficients k, the typed block's arrays filled here (e: the
 * epilogue, NULL for k->relu alone). */
static void FBN_SYM(affine_all)(const T *x, T *y, fbn_shape s, const fbn_coefs *k, TC *typed,
                                const fbn_epilogue *e, int nthreads) {
    const T *z = FBN_EPI_Z(e);
    const fbn_shape sp = FBN_SYM(spread_shape)(s, 0);
    fbn_plan p = FBN_SYM(elemwise_plan)(sp, z ? 2 : 1);
    fbn_plan_output(&p, y, sizeof(T));
    FBN_SYM(tcoefs) tk = FBN_SYM(typed_arrays)(typed, sp.channels, e ? e->act : k->relu,
                                                FBN_SYM(coef_lines)(&p, x, y, 0));
    if (e) tk.slope = (TC)e->slope;
    FBN_SYM(fill_pass_typed)(k, &s, &tk, 0, p.stream);
    FBN_SYM(affine_job) j = {.x = x, .z = z, .y = y, .p = &p, .tk = &tk, .backwards = 0};
    fbn_parallel_for(p.ntiles, fbn_threads_for(&p, nthreads), FBN_SYM(affine_task), &j);
}

int FBN_SYM(affine_ex)(const T *x, T *y, fbn_shape s, const double *shift,
                       const double *scale, const double *bias, const fbn_epilogue *e,
                       int nthreads) {
    fbn_coefs k = {.shift = shift, .scale = scale, .bias = bias, .relu = FBN_EPI_ACT(e)};
    const int64_t bytes[1] = {FBN_SYM(typed_bytes)(FBN_SYM(spread_shape)(s, 0).channels)};
    void *typed;
    fbn_work w;
    if (fbn_work_alloc(&w, 1, bytes, &typed)) return -1;
    FBN_SYM(affine_all)(x, y, s, &k, typed, e, nthreads);
    fbn_work_free(&w);
    return 0;
}

int FBN_SYM(affine)(const T *x, T *y, fbn_shape s, const double *shift, const double *scale,
                    const double *bias, int relu, int nthreads) {
    const fbn_epilogue e = {.act = relu};
    return FBN_SYM(affine_ex)(x, y, s, shift, scale, bias, &e, nthreads);
}

int FBN_SYM(forward_infer)(const T *x, T *y, fbn_shape s, const double *mean, const double *var,
                           const double *gamma, const double *beta, double eps, int relu,
                           double *invstd, int nthreads) {
    const fbn_epilogue e = {.act = relu};
    return FBN_SYM(forward_infer_ex)(x, y, s, mean, var, gamma, beta, eps, &e, invstd,
                                     nthreads);
}

int FBN_SYM(forward_infer_ex)(const T *x, T *y, fbn_shape s, const double *mean,
                              const double *var, const double *gamma, const double *beta,
                              double eps, const fbn_epilogue *e, double *invstd, int nthreads) {
    const int64_t C = s.channels;
    /* fbn_coefficients' values without its copies (a pass each over C channels, much
     * of a call on few rows): the shift is the mean itself, the bias beta itself (or
     * zeros), the scale gamma * invstd (or invstd), computed with invstd */
    const int64_t nd = (gamma ? C : 0) + (beta ? 0 : C);
    const int64_t bytes[2] = {nd * (int64_t)sizeof(double),
                              FBN_SYM(typed_bytes)(FBN_SYM(spread_shape)(s, 0).channels)};
    void *buf[2];
    fbn_work w;
    if (fbn_work_alloc(&w, 2, bytes, buf)) return -1;
    double *scale = gamma ? (double *)buf[0] : invstd;
    double *zero = (double *)buf[0] + (gamma ? C : 0);
    if (gamma)
        fbn_invstd_scale(C, var, eps, gamma, invstd, scale);
    else
        fbn_invstd(C, var, eps, invstd);
    if (!beta) memset(zero, 0, (size_t)C * sizeof(double));
    fbn_coefs k = {.shift = mean, .scale = scale, .bias = beta ? beta : zero,
                   .relu = FBN_EPI_ACT(e)};
    FBN_SYM(affine_all)(x, y, s, &k, buf[1], e, nthreads);
    fbn_work_free(&w);
    return 0;
}
