/* Channel statistics over every tile, merged in a fixed order: fbn_batch_stats_<sfx>,
 * and the reduction of the training forward (kern_fused.h). A per-dtype template: see
 * kern_dtype.h for T, TC and FBN_SYM.
 *
 * The loops here and in kern_forward.h / kern_backward.h run on fbn_parallel_for
 * (parallel.h): each has a job (its arguments) and a task (one tile; `thread`
 * indexes per-thread scratch). */

/* Each channel's first value: the pivot its statistics are taken around. */
static void FBN_SYM(pivots)(const T *x, const fbn_shape *s, double *pivot) {
    for (int64_t c = 0; c < s->channels; c++) pivot[c] = (double)FBN_LD(x[c * s->inner]);
}

/* mean = pivot + part.mean as a double-double (TwoSum), var = m2 / n. */
static void FBN_SYM(finish_stats)(int64_t c, double pivot, const fbn_part *part,
                                  double *mean_hi, double *mean_lo, double *m2) {
    double a = pivot, b = part->mean, hi = a + b, bb = hi - a;
    mean_hi[c] = hi;
    mean_lo[c] = (a - (hi - bb)) + (b - bb);
    m2[c] = part->m2;
}

/* var and invstd of nc channels from their m2 (pointers at the first channel): a
 * loop that vectorises (with few rows per channel, its divisions and square
 * roots are much of a call). */
FBN_DISPATCH static void FBN_SYM(finish_channels)(int64_t nc, double eps, double n,
                                                  const double *restrict m2,
                                                  double *restrict var,
                                                  double *restrict invstd) {
    for (int64_t c = 0; c < nc; c++) var[c] = m2[c] / n;
    fbn_invstd(nc, var, eps, invstd);
}

/* Statistics of one tile into its segment's parts. */
typedef struct {
    const T *x;
    const fbn_plan *p;
    const double *pivot;
    fbn_part *parts;
    double *scratch; /* len doubles per thread */
    int64_t len;
    int64_t group; /* channels per task (fbn_run_group) */
} FBN_SYM(stats_job);

static void FBN_SYM(stats_task)(void *job, int64_t u, int thread) {
    const FBN_SYM(stats_job) *j = job;
    const fbn_plan *p = j->p;
    int64_t g;
    const int64_t t = FBN_SYM(group_tiles)(p, j->group, u, &g);
    FBN_SYM(stats_tiles)(j->x, p, t, g, j->pivot, j->parts + u % p->nsegs * p->s.channels,
                         j->scratch + thread * j->len);
}

/* Chan et al., segment after segment, for the channels of one chunk; every
 * channel has the same counts, so the weights are computed once per segment and
 * the channel loop is plain. */
typedef struct {
    const fbn_plan *p;
    const double *pivot;
    fbn_part *parts;
    double *mean_hi, *mean_lo, *m2;
} FBN_SYM(merge_job);

/* The merge of channels [c0, c1)'s segment parts into parts (segment 0), and
 * their statistics: merge_task's, and a fused channel's (kern_fused.h). */
FBN_INLINE void FBN_SYM(merge_parts)(const fbn_plan *p, fbn_part *parts, const double *pivot,
                                     int64_t c0, int64_t c1, double *mean_hi, double *mean_lo,
                                     double *m2) {
    const int64_t C = p->s.channels;
    for (int64_t k = 1; k < p->nsegs; k++) {
        /* segment k (of channel block 0): na values before it, nb in it */
        const FBN_SYM(tile) r = FBN_SYM(tile_of)(p, k);
        const fbn_part *seg = parts + k * C;
        const double na = (double)r.j0, nb = (double)(r.j1 - r.j0), n = na + nb;
        const double wb = nb / n, wab = na * nb / n;
        for (int64_t c = c0; c < c1; c++) {
            double delta = seg[c].mean - parts[c].mean;
            parts[c].mean += delta * wb;
            parts[c].m2 += seg[c].m2 + delta * delta * wab;
        }
    }
    for (int64_t c = c0; c < c1; c++)
        FBN_SYM(finish_stats)(c, pivot[c], &parts[c], mean_hi, mean_lo, m2);
}

static void FBN_SYM(merge_task)(void *job, int64_t b, int thread) {
    const FBN_SYM(merge_job) *j = job;
    const int64_t C = j->p->s.channels, c0 = b * FBN_MERGE_CHUNK;
    const int64_t c1 = c0 + FBN_MERGE_CHUNK < C ? c0 + FBN_MERGE_CHUNK : C;
    (void)thread;
    FBN_SYM(merge_parts)(j->p, j->parts, j->pivot, c0, c1, j->mean_hi, j->mean_lo, j->m2);
}

/* Statistics of every channel, tile by tile, merged in a fixed order (whichever
 * thread merges a channel). */
static void FBN_SYM(stats_tiled)(const T *x, const fbn_plan *p, const double *pivot,
                                 fbn_part *parts, double *scratch, double *mean_hi,
                                 double *mean_lo, double *m2, int nt) {
    const int64_t C = p->s.channels;
    const int64_t nchunks = (C + FBN_MERGE_CHUNK - 1) / FBN_MERGE_CHUNK;
    const int64_t group = fbn_run_group(p, sizeof(T), 1, nt, 0);
    FBN_SYM(stats_job) sj = {.x = x, .p = p, .pivot = pivot, .parts = parts,
                             .scratch = scratch, .len = fbn_scratch_len(p), .group = group};
    fbn_parallel_for(fbn_group_count(p, group) * p->nsegs, nt, FBN_SYM(stats_task), &sj);
    /* a merge of few parts takes microseconds: waking a thread for it costs more */
    FBN_SYM(merge_job) mj = {.p = p, .pivot = pivot, .parts = parts, .mean_hi = mean_hi,
                             .mean_lo = mean_lo, .m2 = m2};
    fbn_parallel_for(nchunks, C * p->nsegs >= FBN_MIN_PARALLEL ? nt : 1, FBN_SYM(merge_task),
                     &mj);
}

/* Small maps: statistics of maps of at most FBN_STATS_COLS_INNER values are taken
 * as columns (see fbn_stats_columns_<sfx>), and the backward's sums of maps of at
 * most FBN_SUMS_COLS_INNER (fbn_reduce_columns_<sfx>), unless the view is wider
 * than FBN_COLS_WIDTH values (its work is that wide). Shapes only decide: every
 * kernel that takes statistics or sums takes the same path. */
static inline int FBN_SYM(as_columns)(const fbn_shape *s, int64_t most_inner) {
    return s->inner > 1 && s->inner <= most_inner && s->channels * s->inner <= FBN_COLS_WIDTH;
}
static inline int FBN_SYM(stats_as_columns)(const fbn_shape *s) {
    return FBN_SYM(as_columns)(s, FBN_STATS_COLS_INNER);
}
static inline int FBN_SYM(sums_as_columns)(const fbn_shape *s) {
    return FBN_SYM(as_columns)(s, FBN_SUMS_COLS_INNER);
}

/* Chan et al. over each channel's inner columns (n values each, statistics hi +
 * lo and m2): deviations from the first column's mean, so that data far from the
 * origin keep the digits of their spread; the mean as a double-double (TwoSum). */
static void FBN_SYM(fold_columns)(int64_t C, int64_t inner, double n, const double *hi,
                                  const double *lo, const double *m2c, double *mean_hi,
                                  double *mean_lo, double *m2) {
    for (int64_t c = 0; c < C; c++) {
        const double *h = hi + c * inner, *l = lo + c * inner, *q = m2c + c * inner;
        const double r = h[0];
        double d[FBN_STATS_COLS_INNER > 0 ? FBN_STATS_COLS_INNER : 1];
        double dbar = 0.0, within = 0.0, between = 0.0;
        for (int64_t i = 0; i < inner; i++) {
            d[i] = (h[i] - r) + l[i];
            dbar += d[i];
            within += q[i];
        }
        dbar /= (double)inner;
        for (int64_t i = 0; i < inner; i++) between += (d[i] - dbar) * (d[i] - dbar);
        const double s = r + dbar, bb = s - r;
        if (FBN_FINITE(s)) {
            mean_hi[c] = s;
            mean_lo[c] = (r - (s - bb)) + (dbar - bb);
        } else { /* an infinite or NaN column mean (TwoSum's low part would be NaN):
                  * the plain mean of the columns' means */
            double sum = 0.0;
            for (int64_t i = 0; i < inner; i++) sum += h[i];
            mean_hi[c] = sum / (double)inner;
            mean_lo[c] = 0.0;
        }
        m2[c] = within + n * between;
    }
}

/* Statistics of a small map (fbn_stats_as_columns_<sfx>): its runs of a few values
 * a row apart cost several times per value what rows cost, so the array is taken
 * as the columns shape (outer, C * inner), each of a channel's inner positions a
 * column with its own pivot, and each channel's columns folded. Returns -1 when
 * its work cannot be allocated. */
static int FBN_SYM(stats_columns)(const T *x, const fbn_shape *s, double *mean_hi,
                                  double *mean_lo, double *m2, int nt) {
    const fbn_shape cs = fbn_columns_shape(*s);
    const fbn_plan p = fbn_make_plan(cs, sizeof(T), 1, FBN_REDUCTION);
    const int64_t W = cs.channels;
    const int64_t bytes[2] = {(4 * W + nt * fbn_scratch_len(&p)) * (int64_t)sizeof(double),
                              p.nsegs * W * (int64_t)sizeof(fbn_part)};
    void *buf[2];
    fbn_work w;
    if (fbn_work_alloc(&w, 2, bytes, buf)) return -1;
    double *pivot = buf[0], *hi = pivot + W, *lo = hi + W, *m2c = lo + W;
    FBN_SYM(pivots)(x, &cs, pivot);
    FBN_SYM(stats_tiled)(x, &p, pivot, buf[1], m2c + W, hi, lo, m2c, nt);
    FBN_SYM(fold_columns)(s->channels, s->inner, (double)s->outer, hi, lo, m2c, mean_hi,
                          mean_lo, m2);
    fbn_work_free(&w);
    return 0;
}

/* Statistics of every channel (pivot, parts and scratch: for p's tiles, unused by
 * a small map's columns). Returns -1 when work cannot be allocated. */
static int FBN_SYM(stats_all)(const T *x, const fbn_plan *p, const double *pivot,
                              fbn_part *parts, double *scratch, double *mean_hi,
                              double *mean_lo, double *m2, int nt) {
    if (FBN_SYM(stats_as_columns)(&p->s))
        return FBN_SYM(stats_columns)(x, &p->s, mean_hi, mean_lo, m2, nt);
    FBN_SYM(stats_tiled)(x, p, pivot, parts, scratch, mean_hi, mean_lo, m2, nt);
    return 0;
}

/* Tilings: reductions keep per-channel accumulators, so inner == 1 tiles are
 * channel blocks; elementwise passes take whole rows (contiguous memory). The
 * forward's tiling is the batch_stats one, so both give identical statistics. */
static inline fbn_plan FBN_SYM(reduce_plan)(fbn_shape s, int inputs) {
    return fbn_make_plan(s, sizeof(T), inputs, FBN_REDUCTION);
}
static inline fbn_plan FBN_SYM(elemwise_plan)(fbn_shape s, int inputs) {
    return fbn_make_plan(s, sizeof(T), inputs, FBN_ELEMWISE);
}

int FBN_SYM(batch_stats)(const T *x, fbn_shape s, double *mean_hi, double *mean_lo, double *m2,
                         int nthreads) {
    fbn_plan p = FBN_SYM(reduce_plan)(s, 1);
    if (p.per_channel == 0 || s.channels == 0) {
        for (int64_t c = 0; c < s.channels; c++) mean_hi[c] = mean_lo[c] = m2[c] = 0.0;
        return 0;
    }
    const int nt = fbn_threads_for(&p, nthreads);
    if (FBN_SYM(stats_as_columns)(&s))
        return FBN_SYM(stats_columns)(x, &s, mean_hi, mean_lo, m2, nt);
    const int64_t bytes[2] = {(s.channels + nt * fbn_scratch_len(&p)) * (int64_t)sizeof(double),
                              p.nsegs * s.channels * (int64_t)sizeof(fbn_part)};
    void *buf[2];
    fbn_work w;
    if (fbn_work_alloc(&w, 2, bytes, buf)) return -1;
    double *pivot = buf[0];
    FBN_SYM(pivots)(x, &s, pivot);
    FBN_SYM(stats_tiled)(x, &p, pivot, buf[1], pivot + s.channels, mean_hi, mean_lo, m2, nt);
    fbn_work_free(&w);
    return 0;
}
