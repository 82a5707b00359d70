/* The kernels, written once and instantiated per dtype by kernels.c with
 *   T   the element type (float or double),
 *   SFX its suffix (f32 or f64).
 * Two kernel shapes cover every layout: "rows" (inner > 1: each (o, c) is a
 * contiguous run of `inner` values) and "columns" (inner == 1: a row of a
 * channel block is contiguous, and loops run across channels). Reductions
 * accumulate in double; elementwise passes compute in T (see FN(fill_typed)). */

#define FBN_CAT_(a, b) a##_##b
#define FBN_CAT(a, b) FBN_CAT_(a, b)
#define FN(name) FBN_CAT(name, SFX)

/* ---- rows shape: runs of one channel ---------------------------------- */

/* Contiguous runs of channel c covering flat (outer, inner) indices [j0, j1):
 * the first may start inside a row, the next ones start a row (C * inner
 * values) later, at the row's start. No division per run: runs can be short. */
typedef struct {
    int64_t pos, n, j, row; /* the run: offset, length, flat index; its row's start */
} FN(run_it);

FBN_INLINE FN(run_it) FN(run_first)(const fbn_shape *s, int64_t c, int64_t j0, int64_t j1) {
    const int64_t o = j0 / s->inner, i = j0 - o * s->inner;
    FN(run_it) r;
    r.row = (o * s->channels + c) * s->inner;
    r.pos = r.row + i;
    r.j = j0;
    r.n = s->inner - i < j1 - j0 ? s->inner - i : j1 - j0;
    return r;
}

FBN_INLINE void FN(run_next)(const fbn_shape *s, int64_t j1, FN(run_it) *r) {
    r->j += r->n;
    r->row += s->channels * s->inner;
    r->pos = r->row;
    r->n = s->inner < j1 - r->j ? s->inner : j1 - r->j;
}

#define FBN_FOR_RUNS(s, c, j0, j1, off, len)                                              \
    for (FN(run_it) fr_ = FN(run_first)((s), (c), (j0), (j1)); fr_.j < (j1);             \
         FN(run_next)((s), (j1), &fr_))                                                   \
        for (int64_t off = fr_.pos, len = fr_.n, fr_once = 1; fr_once; fr_once = 0)

/* Sums of two values per element over the runs of channel c with flat (outer,
 * inner) indices in [j0, j1), into a1 and a2 (which start empty). BODY(o, l)
 * adds element o's values to lanes l1[l] and l2[l]. The lanes are local arrays,
 * which the compiler keeps in vector registers within each loop (it does not
 * for lanes reached through a pointer), and they live across the channel's
 * runs, so that short runs (small inner) pay no per-run copies. Each lane goes
 * to a compensated total every FBN_PIECE values. */
#define FBN_SAVE_LANES(local, acc) memcpy((acc)->lane, local, sizeof local)
#define FBN_SUM_RUNS(s, c, j0, j1, a1, a2, BODY, PREFETCH)                               \
    do {                                                                                 \
        double l1[FBN_LANES] = {0}, l2[FBN_LANES] = {0};                                 \
        int64_t pending_ = 0;                                                            \
        const int64_t ahead_ = FBN_RUNS_AHEAD * (s)->channels * (s)->inner;              \
        const int fetch_ = (s)->inner * (int64_t)sizeof(T) <= FBN_SHORT_RUN;             \
        FBN_FOR_RUNS(s, c, j0, j1, off_, len_) {                                         \
            if (fetch_) PREFETCH(off_ + ahead_, len_);                                   \
            for (int64_t at_ = 0; at_ < len_;) {                                         \
                const int64_t n_ = FBN_PIECE - pending_ < len_ - at_ ? FBN_PIECE - pending_ \
                                                                     : len_ - at_;       \
                const int64_t b_ = off_ + at_;                                           \
                int64_t i_ = 0;                                                          \
                for (; i_ + FBN_LANES <= n_; i_ += FBN_LANES)                            \
                    for (int l_ = 0; l_ < FBN_LANES; l_++) BODY(b_ + i_ + l_, l_);       \
                for (; i_ + 8 <= n_; i_ += 8)                                            \
                    for (int l_ = 0; l_ < 8; l_++) BODY(b_ + i_ + l_, l_);               \
                for (; i_ < n_; i_++) BODY(b_ + i_, i_ % FBN_LANES);                     \
                at_ += n_;                                                               \
                pending_ += n_;                                                          \
                if (pending_ == FBN_PIECE) {                                             \
                    FBN_SAVE_LANES(l1, a1);                                              \
                    FBN_SAVE_LANES(l2, a2);                                              \
                    fbn_acc_flush(a1);                                                   \
                    fbn_acc_flush(a2);                                                   \
                    memset(l1, 0, sizeof l1);                                            \
                    memset(l2, 0, sizeof l2);                                            \
                    pending_ = 0;                                                        \
                }                                                                        \
            }                                                                            \
        }                                                                                \
        FBN_SAVE_LANES(l1, a1);                                                          \
        FBN_SAVE_LANES(l2, a2);                                                          \
    } while (0)

/* Channel c's sums of e and e^2, e = (x - pivot) - mean, over flat [j0, j1). */
FBN_INLINE void FN(runs_dev)(fbn_acc *a1, fbn_acc *a2, const fbn_shape *s, int64_t c,
                             int64_t j0, int64_t j1, const T *restrict x, double pivot,
                             double mean) {
#define FBN_DEV(o, l)                                  \
    {                                                  \
        double e = ((double)x[o] - pivot) - mean;      \
        l1[l] += e;                                    \
        l2[l] += e * e;                                \
    }
#define FBN_FETCH(o, n) fbn_prefetch(x + (o), (n) * (int64_t)sizeof(T))
    FBN_SUM_RUNS(s, c, j0, j1, a1, a2, FBN_DEV, FBN_FETCH);
#undef FBN_FETCH
#undef FBN_DEV
}

/* dy, zeroed where the forward's ReLU was off (its pre-activation, recomputed
 * exactly as affine1 does, not stored). Selects, not branches: loops vectorise. */
FBN_INLINE T FN(masked)(T dy, T x, T shift, T scale, T bias, int relu) {
    T pre = (x - shift) * scale + bias;
    T kept = pre > 0 ? dy : (T)0;
    return relu ? kept : dy;
}

/* The elementwise coefficients in the data's type (see FN(fill_typed)): FBN_TYPED
 * arrays. */
#define FBN_TYPED 8
typedef struct {
    T *shift, *scale, *bias, *k_dy, *k_x, *mean_dy, *k_0, *invstd;
    int relu;
    int eval; /* dx of eval mode: the statistics are constants, x enters only a mask */
    int64_t period; /* > 0: each array repeats its C values up to this length */
} FN(tcoefs);

/* Channel c's sums of dy' and dy' * (x - shift) over flat [j0, j1) (relu: a
 * constant, so that the mask costs nothing without ReLU). */
FBN_INLINE void FN(runs_bwd)(fbn_acc *a1, fbn_acc *a2, const fbn_shape *s, int64_t c,
                             int64_t j0, int64_t j1, const T *restrict dy, const T *restrict x,
                             double shift, T tshift, T scale, T bias, const int relu) {
#define FBN_BWD(o, l)                                                  \
    {                                                                  \
        double g = FN(masked)(dy[o], x[o], tshift, scale, bias, relu); \
        l1[l] += g;                                                    \
        l2[l] += g * ((double)x[o] - shift);                           \
    }
#define FBN_FETCH(o, n)                                  \
    (fbn_prefetch(x + (o), (n) * (int64_t)sizeof(T)),    \
     fbn_prefetch(dy + (o), (n) * (int64_t)sizeof(T)))
    FBN_SUM_RUNS(s, c, j0, j1, a1, a2, FBN_BWD, FBN_FETCH);
#undef FBN_FETCH
#undef FBN_BWD
}

/* ---- tiles: one channel block times one segment of its values ---------- */

typedef struct {
    int64_t c0, nc, j0, j1; /* channels [c0, c0 + nc), flat values [j0, j1) */
} FN(fbn_tile);

FBN_INLINE FN(fbn_tile) FN(tile_of)(const fbn_plan *p, int64_t t) {
    FN(fbn_tile) r;
    int64_t b = t / p->nsegs, k = t % p->nsegs;
    r.c0 = b * p->block;
    r.nc = p->s.channels - r.c0 < p->block ? p->s.channels - r.c0 : p->block;
    r.j0 = k * p->seg_len;
    r.j1 = r.j0 + p->seg_len < p->per_channel ? r.j0 + p->seg_len : p->per_channel;
    return r;
}

/* The hardware prefetcher follows a row group's loads poorly when they are short
 * runs a whole row apart (a channel block), or, for the statistics, rows of a few
 * cache lines each (small C: the group's lines are visited out of order; measured
 * on float64 NHWC): then reductions fetch the group FBN_AHEAD groups ahead of row o. */
FBN_INLINE int FN(needs_prefetch)(int64_t C, int64_t nc) {
    return nc < C || C * (int64_t)sizeof(T) <= FBN_SHORT_ROW;
}

FBN_INLINE void FN(prefetch_block)(const T *row, int64_t C, int64_t nc, int64_t o, int64_t j1,
                                   int g) {
    const int64_t ahead = FBN_AHEAD * g;
    for (int64_t i = ahead; i < ahead + g && o + i < j1; i++)
        fbn_prefetch(row + i * C, nc * (int64_t)sizeof(T));
}

/* Rows the columns statistics sum in registers before adding them to per-channel
 * sums in memory: twice FBN_GROUP for rows of 2 KB or more, whose per-channel
 * sums (2 * 8 bytes a channel) spill from L1. Statistics of (N, C) float32 of
 * C = 512-4096 then took 0.77-0.92x the time (harness runs, 1 and 2 threads;
 * float64 0.88-0.99x), and of (200704, 64) 1.2-1.3x (so short rows keep
 * FBN_GROUP). The backward's reduction keeps FBN_GROUP: twice that took 1.03-1.09x
 * the time on 5 wide shapes. */
FBN_INLINE int FN(reduce_group)(int64_t C) {
    return C * (int64_t)sizeof(T) >= 2048 ? 2 * FBN_GROUP : FBN_GROUP;
}

/* Adds the sums of e and e^2, e = x - pivot (- mean if centred), over g rows (g
 * and centred constants: the rows' loop unrolls, the channels' loop vectorises)
 * to acc and acc2. */
FBN_INLINE void FN(stats_group)(const T *row, int64_t C, int64_t nc, const int g,
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

/* The end of a statistics pass over nc channels (columns shape): each channel's
 * mean and m2 from its compensated sums, into part unless the channel is done;
 * returns whether a channel needs a second, centred pass. Each channel keeps the
 * result of its own first good pass, so that one channel's data (a NaN, say)
 * never changes another channel's bits. Selects, not branches: the loop
 * vectorises (with few rows per channel, its divisions are much of a call). */
FBN_INLINE int FN(finish_cols)(int64_t nc, double n, int pass, const double *restrict tot,
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

/* Columns shape, channels [c0, c0 + nc), rows [j0, j1). Rows are taken
 * FN(reduce_group) at a time (summed in registers, channels across vector lanes, so a
 * whole-row tile streams through memory in order), into per-channel sums that
 * go to compensated totals every FBN_FLUSH_ROWS rows. Passes as in
 * FN(stats_tile). scratch: FBN_COL_SCRATCH * nc doubles. */
FBN_INLINE void FN(stats_cols)(const T *x, int64_t C, int64_t c0, int64_t nc, int64_t j0,
                               int64_t j1, const double *pivot, fbn_part *part,
                               double *scratch) {
    double n = (double)(j1 - j0);
    const double *pv = pivot + c0;
    double *acc = scratch, *acc2 = acc + nc, *mean = acc2 + nc;
    double *need = mean + nc, *tot = need + nc, *comp = tot + nc, *tot2 = comp + nc;
    double *comp2 = tot2 + nc;
    const int G = FN(reduce_group)(C);
    for (int64_t c = 0; c < nc; c++) mean[c] = 0.0;
    for (int pass = 0; pass < 2; pass++) {
        const int one_flush = fbn_sums_begin(j1 - j0, nc, &acc, &acc2, tot, comp, tot2, comp2);
        for (int64_t o = j0; o < j1;) {
            const int64_t end = o + FBN_FLUSH_ROWS < j1 ? o + FBN_FLUSH_ROWS : j1;
            for (int64_t c = 0; c < nc; c++) acc[c] = acc2[c] = 0.0;
            for (; o < end; o += G) {
                const T *row = x + o * C + c0;
                const int g = end - o < G ? (int)(end - o) : G;
                if (pass == 0 && FN(needs_prefetch)(C, nc))
                    FN(prefetch_block)(row, C, nc, o, j1, G);
#define FBN_STATS_GROUP(r, g, centred) FN(stats_group)(r, C, nc, g, centred, pv, mean, acc, acc2)
                if (g == 2 * FBN_GROUP && pass == 0)
                    FBN_STATS_GROUP(row, 2 * FBN_GROUP, 0);
                else if (g == 2 * FBN_GROUP)
                    FBN_STATS_GROUP(row, 2 * FBN_GROUP, 1);
                else if (g == FBN_GROUP && pass == 0)
                    FBN_STATS_GROUP(row, FBN_GROUP, 0);
                else if (g == FBN_GROUP)
                    FBN_STATS_GROUP(row, FBN_GROUP, 1);
                else
                    for (int i = 0; i < g; i++) FBN_STATS_GROUP(row + i * C, 1, 1);
#undef FBN_STATS_GROUP
            }
            fbn_sums_flush(one_flush, nc, acc, acc2, tot, comp, tot2, comp2);
        }
        if (!FN(finish_cols)(nc, n, pass, tot, comp, tot2, comp2, mean, need, part + c0)) break;
    }
}

/* Statistics of one tile relative to each channel's pivot (its first value):
 * one pass of shifted sums, which is exact while the pivot is near the tile's
 * mean; when it is far (s1^2 / n > FBN_ONE_PASS * m2, where cancellation would
 * cost digits) a second pass, centred on the first one's mean, replaces it. A
 * fused tile's second pass reads it from L2; a whole-row tile's may not. */
FBN_DISPATCH static void FN(stats_tile)(const T *x, const fbn_plan *p, int64_t t,
                                        const double *pivot, fbn_part *part, double *scratch) {
    FN(fbn_tile) r = FN(tile_of)(p, t);
    const fbn_shape *s = &p->s;
    double n = (double)(r.j1 - r.j0);
    if (s->inner > 1) {
        int64_t c = r.c0;
        double mean = 0.0;
        for (int pass = 0; pass < 2; pass++) {
            fbn_acc e1 = {{0}, {0, 0}}, e2 = e1; /* ~0.3 KB each */
            if (pass == 0) /* x - 0.0 == x: folded away */
                FN(runs_dev)(&e1, &e2, s, c, r.j0, r.j1, x, pivot[c], 0.0);
            else
                FN(runs_dev)(&e1, &e2, s, c, r.j0, r.j1, x, pivot[c], mean);
            double s1 = fbn_acc_value(&e1), m2 = fbn_acc_value(&e2) - s1 * s1 / n;
            mean += s1 / n;
            part[c].mean = mean;
            part[c].m2 = m2;
            if (s1 * s1 / n <= FBN_ONE_PASS * m2) break; /* NaN: a second pass, harmless */
        }
        return;
    }
    FN(stats_cols)(x, s->channels, r.c0, r.nc, r.j0, r.j1, pivot, part, scratch);
}

/* ---- streamed elementwise passes --------------------------------------- */

/* An output too large for the caches is stored non-temporally (one write to
 * memory, no read-for-ownership) as it is computed, 16 bytes at a time, with a
 * line of each input prefetched FBN_STREAM_AHEAD bytes ahead: loads, prefetches
 * and stores interleave, and lines are written whole. (Chunks computed into an
 * L1 buffer and then streamed out took 1.4-2.4x the time for NCHW inference,
 * and varied widely from call to call.) The vector forms of the element
 * functions (FN(affine_v), FN(dx_v)) do the scalar ones' IEEE operations in the
 * same order, so results are bitwise those of the cached path (but for a NaN's
 * sign and payload, which C leaves to the order of commutative operations). */
#if FBN_CAN_STREAM
typedef T FN(vec) __attribute__((vector_size(16)));
typedef FBN_VINT FN(ivec) __attribute__((vector_size(16)));
#define FBN_VLEN ((int64_t)(16 / sizeof(T)))

FBN_INLINE FN(vec) FN(vload)(const T *p) {
    FN(vec) v;
    memcpy(&v, p, sizeof v); /* unaligned */
    return v;
}

FBN_INLINE FN(vec) FN(vsplat)(T s) { /* not 0 + s, which turns -0 into +0 */
    FN(vec) v;
    for (int j = 0; j < FBN_VLEN; j++) v[j] = s;
    return v;
}

/* Lanewise mask ? a : b (mask lanes all ones or all zeros, as comparisons give). */
FBN_INLINE FN(vec) FN(vselect)(FN(ivec) mask, FN(vec) a, FN(vec) b) {
    return (FN(vec))(((FN(ivec))a & mask) | ((FN(ivec))b & ~mask));
}

/* out[i] = SCALAR(i) for i in [0, m): vectors VECTOR(i) of FBN_VLEN values,
 * stored non-temporally, from the first 16-byte boundary of out; scalars (plain
 * stores) before it and after the last whole vector. FETCH(i): prefetch the
 * inputs ahead of value i, once per 64 bytes of output. */
#define FBN_STREAM_LOOP(out, m, FETCH, SCALAR, VECTOR)                                   \
    do {                                                                                  \
        int64_t i_ = 0;                                                                   \
        for (; i_ < (m) && ((uintptr_t)((out) + i_) & 15); i_++) (out)[i_] = SCALAR(i_);   \
        for (; i_ + 4 * FBN_VLEN <= (m); i_ += 4 * FBN_VLEN) {                           \
            FETCH(i_);                                                                    \
            for (int64_t j_ = i_; j_ < i_ + 4 * FBN_VLEN; j_ += FBN_VLEN)                 \
                FBN_STREAM_V((out) + j_, VECTOR(j_));                                     \
        }                                                                                 \
        for (; i_ + FBN_VLEN <= (m); i_ += FBN_VLEN) FBN_STREAM_V((out) + i_, VECTOR(i_));  \
        for (; i_ < (m); i_++) (out)[i_] = SCALAR(i_);                                    \
    } while (0)
#else
#define FBN_STREAM_LOOP(out, m, FETCH, SCALAR, VECTOR) \
    for (int64_t i_ = 0; i_ < (m); i_++) (out)[i_] = SCALAR(i_)
#endif
#define FBN_COPY(i) src[i]
#define FBN_VCOPY(i) FN(vload)(src + (i))
#define FBN_NO_FETCH(i) (void)0

/* Columns shape: n values from an L1 buffer, streamed. (Its spans compute
 * FBN_GROUP rows at once, loading each channel's coefficients once; streamed
 * directly, four rows a multiple of 4 KB apart ran 2.4-4.2x slower, and single
 * rows, which load every coefficient for every value, ran dx 1.1-1.2x slower.) */
FBN_INLINE void FN(stream_out)(T *dst, const T *src, int64_t n) {
    FBN_STREAM_LOOP(dst, n, FBN_NO_FETCH, FBN_COPY, FBN_VCOPY);
}
#undef FBN_COPY
#undef FBN_VCOPY
#undef FBN_NO_FETCH
#define FBN_FETCH_AHEAD(p) __builtin_prefetch((const char *)(p) + FBN_STREAM_AHEAD, 0, 0)

FBN_INLINE T FN(affine1)(T x, T shift, T scale, T bias, int relu) {
    T v = (x - shift) * scale + bias;
    T r = v < 0 ? (T)0 : v; /* NaN stays NaN, as in np.maximum */
    return relu ? r : v;
}

/* Columns shape: spans and repeated coefficients are FBN_CHUNK values long (2 KB). */
#define FBN_CHUNK (2048 / (int)sizeof(T))

/* Columns shape: tile r as spans of `rows` rows (a row apart) of m contiguous
 * values from offset off, whose first value is of channel ch. A tile of whole
 * rows with coefficients repeated over `period` values goes `period` values
 * (several rows) per span of one row, so short rows (small C, e.g. NHWC) still
 * make long vector loops. Otherwise spans are FBN_GROUP rows by FBN_SPAN
 * channels: each channel's coefficients are loaded once for the group's rows,
 * however large C. */
#define FBN_SPAN (FBN_CHUNK / FBN_GROUP)
typedef struct {
    int64_t off, ch, m, rows; /* the span; rows == 0 ends the walk */
    int64_t group;            /* its first row (-1: flat) */
    int64_t mis;              /* x's offset from a cache line, in values */
} FN(span_it);

/* Values of T in a cache line: a group's first span ends at a line boundary of
 * x, so that the others (vector loops over channels) load whole lines; NumPy's
 * large arrays start 16 bytes past one, and split loads cost (measured: dx of
 * 512x4096 float32 in L3 ran 1.35x slower from such addresses). */
#define FBN_LINE_VALUES (64 / (int64_t)sizeof(T))

FBN_INLINE void FN(span_set)(const fbn_shape *s, const FN(fbn_tile) *r, FN(span_it) *it) {
    const int64_t left = r->c0 + r->nc - it->ch, rows = r->j1 - it->group;
    it->off = it->group * s->channels + it->ch;
    /* a row of more than one span: the first ends at a line boundary of x */
    const int64_t m = left <= FBN_SPAN || it->ch != r->c0
                          ? FBN_SPAN
                          : FBN_SPAN - (it->mis + it->off) % FBN_LINE_VALUES;
    it->m = left < m ? left : m;
    it->rows = rows < FBN_GROUP ? rows : FBN_GROUP;
}

FBN_INLINE FN(span_it) FN(span_first)(const fbn_shape *s, const FN(fbn_tile) *r,
                                      int64_t period, const T *x) {
    FN(span_it) it = {0, r->c0, 0, 0, r->j0, (int64_t)((uintptr_t)x / sizeof(T)) % FBN_LINE_VALUES};
    if (r->j1 <= r->j0) return it;
    if (period && r->nc == s->channels) {
        const int64_t n = (r->j1 - r->j0) * s->channels;
        it.off = r->j0 * s->channels;
        it.ch = 0;
        it.m = n < period ? n : period;
        it.rows = 1;
        it.group = -1;
        return it;
    }
    FN(span_set)(s, r, &it);
    return it;
}

FBN_INLINE void FN(span_next)(const fbn_shape *s, const FN(fbn_tile) *r, int64_t period,
                              FN(span_it) *it) {
    if (it->group < 0) {
        const int64_t end = r->j1 * s->channels;
        it->off += it->m;
        it->m = end - it->off < period ? end - it->off : period;
        it->rows = it->m > 0;
        return;
    }
    it->ch += it->m; /* the group's next channels, or the next group */
    if (it->ch >= r->c0 + r->nc) {
        it->ch = r->c0;
        it->group += it->rows;
        if (it->group >= r->j1) {
            it->rows = 0;
            return;
        }
    }
    FN(span_set)(s, r, it);
}

#define FBN_FOR_SPANS(s, r, period, x, OFF, CH, M, ROWS)                                 \
    for (FN(span_it) sp = FN(span_first)((s), &(r), (period), (x)); sp.rows > 0;        \
         FN(span_next)((s), &(r), (period), &sp))                                        \
        for (int64_t OFF = sp.off, CH = sp.ch, M = sp.m, ROWS = sp.rows, sp_once = 1;   \
             sp_once; sp_once = 0)

/* Columns shape: y of g rows (g a constant) of m values, a row ld (out: ldo)
 * apart, channels from ch: each channel's coefficients loaded once. */
FBN_INLINE void FN(affine_rows)(const T *xr, int64_t ld, T *out, int64_t ldo, int64_t m,
                                const FN(tcoefs) *k, int64_t ch, const int g) {
    const T *shift = k->shift + ch, *scale = k->scale + ch, *bias = k->bias + ch;
    const int relu = k->relu;
    FBN_IVDEP /* out may be xr (in place) */
    for (int64_t c = 0; c < m; c++)
        for (int i = 0; i < g; i++)
            out[i * ldo + c] = FN(affine1)(xr[i * ld + c], shift[c], scale[c], bias[c], relu);
}

/* Whether a row group's lines of out and of in fall in the same L1 sets: rows a
 * multiple of 4 KB apart put a group's lines of one array in one set, and out at
 * in's offset within a page (NumPy's large arrays all start 16 bytes past one)
 * puts 2 * FBN_GROUP lines there (dx: 3 * FBN_GROUP), as many as the ways of an
 * 8-way L1 or more. Such groups go by pairs of rows: float32 64x1024 to 512x4096
 * at such addresses, affine took 0.75-0.9x and dx 0.76-0.83x the time of 4-row
 * groups (harness runs), and 0.7-1.05x and 0.9-1.03x that of an earlier remedy,
 * the forward's spans through the L1 buffer (interleaved runs, 1 and 2 threads). */
FBN_INLINE int FN(same_sets)(const T *out, const T *in, int64_t C) {
    const uintptr_t d = ((uintptr_t)out - (uintptr_t)in) % 4096;
    return (C * (int64_t)sizeof(T)) % 4096 == 0 && (d < 64 || d > 4096 - 64);
}

/* Columns shape, streamed output: whether spans are single rows, one after
 * another, rather than groups of FBN_GROUP rows, which load each coefficient
 * once for the group but read FBN_GROUP places at once. Single rows where the
 * `arrays` coefficient arrays fit in half of L1 (the forward reads 3, dx 8) and
 * rows are not short (shorter ones repeat their coefficients over a period, see
 * FN(repeat_typed)): float32 (N, C) of 128 MB took 0.66-0.95x the time for
 * C = 300-1024 (inference, forward) and 0.89-0.97x for C = 300-512 (dx), and
 * single rows 1.35-1.6x for C = 2048-4096 (harness runs, 2 threads). */
FBN_INLINE int FN(row_by_row)(int64_t C, int64_t period, int arrays) {
    return !period && 2 * C >= FBN_CHUNK && arrays * C * (int64_t)sizeof(T) <= 16384;
}

/* The walk of an elementwise tile, shared by the forward (y) and the backward
 * (dx), which define
 *   RUN(o, m, c): m values of channel c from offset o (rows shape),
 *   STREAM(o, m, c): the same, streamed (output too large for the caches),
 *   SPAN(o, out, ldo, m, ch, g): g rows (a constant) of m values from offset o,
 *     channels from ch (columns shape), written ldo apart from out: the output
 *     DST, or an L1 buffer streamed out.
 * PAIRS: a row group goes by pairs of rows (see FN(same_sets)); COEF_ARRAYS:
 * the coefficient arrays SPAN reads (see FN(row_by_row)). */
#define FBN_ELEMWISE_WALK(DST, RUN, STREAM, SPAN, PAIRS, COEF_ARRAYS)                      \
    do {                                                                                    \
        const fbn_shape *s_ = &p->s;                                                        \
        const int64_t C_ = s_->channels;                                                    \
        FN(fbn_tile) r_ = FN(tile_of)(p, t);                                                \
        if (p->rows) { /* memory order: whole (o, c) rows */                               \
            const int64_t f0_ = t * p->rows, n_ = s_->outer * C_;                          \
            const int64_t f1_ = f0_ + p->rows < n_ ? f0_ + p->rows : n_;                   \
            for (int64_t f_ = f0_; f_ < f1_; f_++) {                                       \
                if (p->stream)                                                              \
                    STREAM(f_ * s_->inner, s_->inner, f_ % C_);                             \
                else                                                                        \
                    RUN(f_ * s_->inner, s_->inner, f_ % C_);                                \
            }                                                                               \
        } else if (s_->inner > 1) { /* one channel's runs */                               \
            FBN_FOR_RUNS(s_, r_.c0, r_.j0, r_.j1, off_, len_) {                             \
                if (p->stream)                                                              \
                    STREAM(off_, len_, r_.c0);                                              \
                else                                                                        \
                    RUN(off_, len_, r_.c0);                                                 \
            }                                                                               \
        } else {                                                                            \
            T buf_[FBN_CHUNK];                                                              \
            const int pairs_ = !p->stream && (PAIRS);                                       \
            if (p->stream && FN(row_by_row)(C_, k->period, COEF_ARRAYS)) {                   \
                for (int64_t j_ = r_.j0; j_ < r_.j1; j_++)                                  \
                    for (int64_t c_ = r_.c0; c_ < r_.c0 + r_.nc; c_ += FBN_CHUNK) {         \
                        const int64_t o_ = j_ * C_ + c_, left_ = r_.c0 + r_.nc - c_;        \
                        const int64_t m_ = left_ < FBN_CHUNK ? left_ : FBN_CHUNK;           \
                        SPAN(o_, buf_, FBN_CHUNK, m_, c_, 1);                               \
                        FN(stream_out)((DST) + o_, buf_, m_);                               \
                    }                                                                       \
            } else                                                                          \
            FBN_FOR_SPANS(s_, r_, k->period, x, o_, ch_, m_, rows_) {                       \
                T *out_ = p->stream ? buf_ : (DST) + o_;                                    \
                const int64_t ldo_ = p->stream ? FBN_SPAN : C_;                             \
                if (rows_ == FBN_GROUP && !pairs_) {                                        \
                    SPAN(o_, out_, ldo_, m_, ch_, FBN_GROUP);                               \
                } else if (rows_ == FBN_GROUP) {                                            \
                    SPAN(o_, out_, ldo_, m_, ch_, 2);                                       \
                    SPAN(o_ + 2 * C_, out_ + 2 * ldo_, ldo_, m_, ch_, 2);                   \
                } else {                                                                    \
                    for (int64_t i_ = 0; i_ < rows_; i_++)                                  \
                        SPAN(o_ + i_ * C_, out_ + i_ * ldo_, ldo_, m_, ch_, 1);             \
                }                                                                           \
                if (p->stream)                                                              \
                    for (int64_t i_ = 0; i_ < rows_; i_++)                                  \
                        FN(stream_out)((DST) + o_ + i_ * C_, buf_ + i_ * FBN_SPAN, m_);     \
            }                                                                               \
        }                                                                                   \
        if (p->stream) FBN_STREAM_FENCE();                                                  \
    } while (0)

/* Rows shape: m values of channel c. */
FBN_INLINE void FN(affine_run)(const T *xr, T *out, int64_t m, const FN(tcoefs) *k, int64_t c) {
    const T sh = k->shift[c], sc = k->scale[c], bi = k->bias[c];
    const int relu = k->relu;
    for (int64_t i = 0; i < m; i++) out[i] = FN(affine1)(xr[i], sh, sc, bi, relu);
}

#if FBN_CAN_STREAM
FBN_INLINE FN(vec) FN(affine_v)(FN(vec) x, FN(vec) shift, FN(vec) scale, FN(vec) bias,
                                int relu) {
    const FN(vec) zero = {0};
    FN(vec) v = (x - shift) * scale + bias;
    return relu ? FN(vselect)((FN(ivec))(v < zero), zero, v) : v;
}
#endif

/* Rows shape, streamed: m values of channel c. */
FBN_INLINE void FN(affine_stream)(const T *xr, T *out, int64_t m, const FN(tcoefs) *k,
                                  int64_t c) {
    const T sh = k->shift[c], sc = k->scale[c], bi = k->bias[c];
    const int relu = k->relu;
#define FBN_SCALAR(i) FN(affine1)(xr[i], sh, sc, bi, relu)
#if FBN_CAN_STREAM
    const FN(vec) vsh = FN(vsplat)(sh), vsc = FN(vsplat)(sc), vbi = FN(vsplat)(bi);
#define FBN_VECTOR(i) FN(affine_v)(FN(vload)(xr + (i)), vsh, vsc, vbi, relu)
#define FBN_FETCH(i) FBN_FETCH_AHEAD(xr + (i))
#endif
    FBN_STREAM_LOOP(out, m, FBN_FETCH, FBN_SCALAR, FBN_VECTOR);
#undef FBN_FETCH
#undef FBN_VECTOR
#undef FBN_SCALAR
}

FBN_DISPATCH static void FN(affine_tile)(const T *x, T *y, const fbn_plan *p, int64_t t,
                                         const FN(tcoefs) *k) {
#define FBN_RUN(o, m, c) FN(affine_run)(x + (o), y + (o), m, k, c)
#define FBN_SPAN_ROWS(o, out, ldo, m, ch, g) FN(affine_rows)(x + (o), C_, out, ldo, m, k, ch, g)
#define FBN_STREAM_RUN(o, m, c) FN(affine_stream)(x + (o), y + (o), m, k, c)
    FBN_ELEMWISE_WALK(y, FBN_RUN, FBN_STREAM_RUN, FBN_SPAN_ROWS, FN(same_sets)(y, x, C_), 3);
#undef FBN_RUN
#undef FBN_SPAN_ROWS
#undef FBN_STREAM_RUN
}

/* Channel c's sums: sum(dy') and sum(dy' * ((x - shift) - lo)), lo (the mean's
 * residual) applied once to the sums rather than to every value. */
FBN_INLINE void FN(sums_minus_lo)(int64_t c, double s1, double s2, double lo, double *sums) {
    sums[2 * c] = s1;
    sums[2 * c + 1] = lo != 0.0 ? s2 - lo * s1 : s2;
}

/* Adds the sums of dy' and dy' * (x - shift) over g rows to acc and acc2 (g and
 * relu constants: see FN(stats_group)). */
FBN_INLINE void FN(bwd_group)(const T *dr, const T *xr, int64_t C, int64_t nc, const int g,
                              const int relu, const double *sh, const T *tsh, const T *sc,
                              const T *bi, double *restrict acc, double *restrict acc2) {
    for (int64_t c = 0; c < nc; c++) {
        double s1 = 0.0, s2 = 0.0;
        for (int i = 0; i < g; i++) {
            double v = FN(masked)(dr[i * C + c], xr[i * C + c], tsh[c], sc[c], bi[c], relu);
            s1 += v;
            s2 += v * ((double)xr[i * C + c] - sh[c]);
        }
        acc[c] += s1;
        acc2[c] += s2;
    }
}

/* Columns shape, channels [c0, c0 + nc), rows [j0, j1), as FN(stats_cols) does. */
FBN_INLINE void FN(bwd_reduce_cols)(const T *dy, const T *x, int64_t C, int64_t c0, int64_t nc,
                                    int64_t j0, int64_t j1, const fbn_coefs *k,
                                    const FN(tcoefs) *tk, double *sums, double *scratch) {
    const double *sh = k->shift + c0, *lw = k->lo + c0;
    const T *tsh = tk->shift + c0, *sc = tk->scale + c0, *bi = tk->bias + c0;
    const int relu = tk->relu;
    double *acc = scratch, *acc2 = acc + nc;
    double *tot = acc2 + nc, *comp = tot + nc, *tot2 = comp + nc, *comp2 = tot2 + nc;
    const int one_flush = fbn_sums_begin(j1 - j0, nc, &acc, &acc2, tot, comp, tot2, comp2);
    for (int64_t o = j0; o < j1;) {
        const int64_t end = o + FBN_FLUSH_ROWS < j1 ? o + FBN_FLUSH_ROWS : j1;
        for (int64_t c = 0; c < nc; c++) acc[c] = acc2[c] = 0.0;
        for (; o < end; o += FBN_GROUP) {
            const T *dr = dy + o * C + c0, *xr = x + o * C + c0;
            const int g = end - o < FBN_GROUP ? (int)(end - o) : FBN_GROUP;
            if (nc < C) {
                FN(prefetch_block)(dr, C, nc, o, j1, FBN_GROUP);
                FN(prefetch_block)(xr, C, nc, o, j1, FBN_GROUP);
            }
#define FBN_BWD_GROUP(d, x, g, relu) FN(bwd_group)(d, x, C, nc, g, relu, sh, tsh, sc, bi, acc, acc2)
            if (g == FBN_GROUP && relu)
                FBN_BWD_GROUP(dr, xr, FBN_GROUP, 1);
            else if (g == FBN_GROUP)
                FBN_BWD_GROUP(dr, xr, FBN_GROUP, 0);
            else
                for (int i = 0; i < g; i++) FBN_BWD_GROUP(dr + i * C, xr + i * C, 1, relu);
#undef FBN_BWD_GROUP
        }
        fbn_sums_flush(one_flush, nc, acc, acc2, tot, comp, tot2, comp2);
    }
    for (int64_t c = 0; c < nc; c++) {
        fbn_ksum a1 = {tot[c], comp[c]}, a2 = {tot2[c], comp2[c]};
        FN(sums_minus_lo)(c0 + c, fbn_kval(&a1), fbn_kval(&a2), lw[c], sums);
    }
}

/* Per-channel sum(dy) and sum(dy * (x - shift)) of one tile, into sums[2 * c + {0, 1}]. */
FBN_DISPATCH static void FN(bwd_reduce_tile)(const T *dy, const T *x, const fbn_plan *p,
                                             int64_t t, const fbn_coefs *k,
                                             const FN(tcoefs) *tk, double *sums,
                                             double *scratch) {
    FN(fbn_tile) r = FN(tile_of)(p, t);
    const fbn_shape *s = &p->s;
    if (s->inner > 1) {
        int64_t c = r.c0;
        fbn_acc a1 = {{0}, {0, 0}}, a2 = a1;
#define FBN_RUN_BWD(relu)                                                                 \
    FN(runs_bwd)(&a1, &a2, s, c, r.j0, r.j1, dy, x, k->shift[c], tk->shift[c], tk->scale[c], \
                 tk->bias[c], relu)
        if (tk->relu) {
            FBN_RUN_BWD(1);
        } else {
            FBN_RUN_BWD(0);
        }
#undef FBN_RUN_BWD
        FN(sums_minus_lo)(c, fbn_acc_value(&a1), fbn_acc_value(&a2), k->lo[c], sums);
        return;
    }
    FN(bwd_reduce_cols)(dy, x, s->channels, r.c0, r.nc, r.j0, r.j1, k, tk, sums, scratch);
}

/* dy - mean_dy comes first: a constant dy over a constant channel gives dx == 0. */
FBN_INLINE T FN(dx1)(T dy, T x, T shift, T scale, T bias, int relu, T k_dy, T k_x, T mean_dy,
                     T k_0, T invstd, int eval) {
    T g = FN(masked)(dy, x, shift, scale, bias, relu);
    T xterm = k_x * ((x - shift) * invstd);
    return k_dy * (g - mean_dy) + (eval ? (T)0 : xterm) + k_0; /* eval: no NaN from inf x */
}

/* Rows shape: dx of m values of channel c. */
FBN_INLINE void FN(dx_run)(const T *dr, const T *xr, T *out, int64_t m, const FN(tcoefs) *k,
                           int64_t c) {
    const T sh = k->shift[c], sc = k->scale[c], bi = k->bias[c], a = k->k_dy[c], b = k->k_x[c];
    const T m_dy = k->mean_dy[c], z = k->k_0[c], is = k->invstd[c];
    const int relu = k->relu;
    for (int64_t i = 0; i < m; i++)
        out[i] = FN(dx1)(dr[i], xr[i], sh, sc, bi, relu, a, b, m_dy, z, is, k->eval);
}

#if FBN_CAN_STREAM
FBN_INLINE FN(vec) FN(dx_v)(FN(vec) dy, FN(vec) x, FN(vec) shift, FN(vec) scale, FN(vec) bias,
                            int relu, FN(vec) k_dy, FN(vec) k_x, FN(vec) mean_dy, FN(vec) k_0,
                            FN(vec) invstd, int eval) {
    const FN(vec) zero = {0};
    FN(vec) g = dy;
    if (relu) g = FN(vselect)((FN(ivec))((x - shift) * scale + bias > zero), dy, zero);
    FN(vec) xterm = eval ? zero : k_x * ((x - shift) * invstd);
    return k_dy * (g - mean_dy) + xterm + k_0;
}
#endif

/* Rows shape, streamed: dx of m values of channel c. */
FBN_INLINE void FN(dx_stream)(const T *dr, const T *xr, T *out, int64_t m, const FN(tcoefs) *k,
                              int64_t c) {
    const T sh = k->shift[c], sc = k->scale[c], bi = k->bias[c], a = k->k_dy[c], b = k->k_x[c];
    const T m_dy = k->mean_dy[c], z = k->k_0[c], is = k->invstd[c];
    const int relu = k->relu;
#define FBN_SCALAR(i) FN(dx1)(dr[i], xr[i], sh, sc, bi, relu, a, b, m_dy, z, is, k->eval)
#if FBN_CAN_STREAM
    const FN(vec) vsh = FN(vsplat)(sh), vsc = FN(vsplat)(sc), vbi = FN(vsplat)(bi);
    const FN(vec) va = FN(vsplat)(a), vb = FN(vsplat)(b), vmdy = FN(vsplat)(m_dy);
    const FN(vec) vz = FN(vsplat)(z), vis = FN(vsplat)(is);
#define FBN_VECTOR(i) \
    FN(dx_v)(FN(vload)(dr + (i)), FN(vload)(xr + (i)), vsh, vsc, vbi, relu, va, vb, vmdy, vz, vis, \
             k->eval)
#define FBN_FETCH(i) (FBN_FETCH_AHEAD(dr + (i)), FBN_FETCH_AHEAD(xr + (i)))
#endif
    FBN_STREAM_LOOP(out, m, FBN_FETCH, FBN_SCALAR, FBN_VECTOR);
#undef FBN_FETCH
#undef FBN_VECTOR
#undef FBN_SCALAR
}

/* Columns shape: dx of g rows (g a constant) of m values, a row ld (out: ldo)
 * apart, channels from ch: each channel's coefficients loaded once. relu is a
 * constant too: without ReLU the mask's arithmetic and loads drop out (this
 * loop is compute-bound when the data is in cache). */
FBN_INLINE void FN(dx_rows_as)(const T *dr, const T *xr, int64_t ld, T *out, int64_t ldo,
                               int64_t m, const FN(tcoefs) *k, int64_t ch, const int g,
                               const int relu) {
    const T *shift = k->shift + ch, *scale = k->scale + ch, *bias = k->bias + ch;
    const T *k_dy = k->k_dy + ch, *k_x = k->k_x + ch, *mdy = k->mean_dy + ch;
    const T *k_0 = k->k_0 + ch, *inv = k->invstd + ch;
#define FBN_DX(d, v) \
    FN(dx1)(d, v, shift[c], scale[c], bias[c], relu, k_dy[c], k_x[c], mdy[c], k_0[c], inv[c], \
            k->eval)
    if ((ld * (int64_t)sizeof(T)) % 4096 == 0) {
        /* rows a multiple of 4 KB apart (C a power of two): a store to out's row i
         * has the low address bits of the next load from row i + 1, which then
         * waits for it (4K aliasing), so all the group's loads come first */
        FBN_IVDEP /* too many pointers for runtime alias checks; out may be dr */
        for (int64_t c = 0; c < m; c++) {
            T d[FBN_GROUP], v[FBN_GROUP];
            for (int i = 0; i < g; i++) {
                d[i] = dr[i * ld + c];
                v[i] = xr[i * ld + c];
            }
            for (int i = 0; i < g; i++) out[i * ldo + c] = FBN_DX(d[i], v[i]);
        }
    } else { /* (measured slower here, e.g. NHWC's 64 channels) */
        FBN_IVDEP
        for (int64_t c = 0; c < m; c++)
            for (int i = 0; i < g; i++) out[i * ldo + c] = FBN_DX(dr[i * ld + c], xr[i * ld + c]);
    }
#undef FBN_DX
}

FBN_INLINE void FN(dx_rows)(const T *dr, const T *xr, int64_t ld, T *out, int64_t ldo, int64_t m,
                            const FN(tcoefs) *k, int64_t ch, const int g) {
    if (k->relu)
        FN(dx_rows_as)(dr, xr, ld, out, ldo, m, k, ch, g, 1);
    else
        FN(dx_rows_as)(dr, xr, ld, out, ldo, m, k, ch, g, 0);
}

/* dx = k_dy * (dy' - mean_dy) + k_x * (x - shift) * invstd + k_0, in the data's
 * type (see FN(fill_typed)). */
FBN_DISPATCH static void FN(bwd_elemt_tile)(const T *dy, const T *x, T *dx, const fbn_plan *p,
                                            int64_t t, const FN(tcoefs) *k) {
#define FBN_RUN(o, m, c) FN(dx_run)(dy + (o), x + (o), dx + (o), m, k, c)
#define FBN_SPAN_ROWS(o, out, ldo, m, ch, g) \
    FN(dx_rows)(dy + (o), x + (o), C_, out, ldo, m, k, ch, g)
#define FBN_STREAM_RUN(o, m, c) FN(dx_stream)(dy + (o), x + (o), dx + (o), m, k, c)
    FBN_ELEMWISE_WALK(dx, FBN_RUN, FBN_STREAM_RUN, FBN_SPAN_ROWS,
                      FN(same_sets)(dx, x, C_) || FN(same_sets)(dx, dy, C_) ||
                          FN(same_sets)(dy, x, C_),
                      FBN_TYPED);
#undef FBN_RUN
#undef FBN_SPAN_ROWS
#undef FBN_STREAM_RUN
}

/* ---- drivers ------------------------------------------------------------ */

/* Channels [c0, c0 + n) of the double coefficients k in the data's type. The
 * elementwise passes compute in it: for float32 data that halves the vector work
 * for an error of a few float32 ulps of max|y| (well within the guarantee). The
 * shift and mean_dy are rounded to T, so their rounding, and the mean's residual
 * lo, are folded into bias and k_0 (in double): x - shift stays exact-ish far
 * from the origin, and the small terms are added last. */
FBN_DISPATCH static void FN(fill_affine)(int64_t n, const double *restrict shift,
                                         const double *restrict scale,
                                         const double *restrict bias, T *restrict t_shift,
                                         T *restrict t_scale, T *restrict t_bias) {
    for (int64_t c = 0; c < n; c++) {
        double sh = (double)(T)shift[c], moved = sh - shift[c];
        t_shift[c] = (T)sh;
        t_scale[c] = (T)scale[c];
        /* corrections are skipped when zero or not finite (an infinite mean or gamma
         * then gives the same +-inf as the plain formula, not NaN) */
        int fold = moved != 0.0 && FBN_FINITE(moved) && FBN_FINITE(scale[c]);
        t_bias[c] = (T)(fold ? bias[c] + moved * scale[c] : bias[c]);
    }
}

/* lo may be NULL (a zero residual). */
FBN_DISPATCH static void FN(fill_dx)(int64_t n, const double *restrict shift,
                                     const double *restrict lo, const double *restrict k_dy,
                                     const double *restrict k_x, const double *restrict invstd,
                                     const double *restrict mean_dy, T *restrict t_k_dy,
                                     T *restrict t_k_x, T *restrict t_invstd,
                                     T *restrict t_mean_dy, T *restrict t_k_0) {
#define FBN_FILL_DX(LO)                                                                    \
    for (int64_t c = 0; c < n; c++) {                                                      \
        double moved = (double)(T)shift[c] - shift[c];                                     \
        double dev = moved - (LO); /* shift - mean */                                      \
        double m_dy = (double)(T)mean_dy[c], r = m_dy - mean_dy[c];                        \
        t_k_dy[c] = (T)k_dy[c];                                                            \
        t_k_x[c] = (T)k_x[c];                                                              \
        t_invstd[c] = (T)invstd[c];                                                        \
        t_mean_dy[c] = (T)m_dy;                                                            \
        t_k_0[c] = (T)((r != 0.0 && FBN_FINITE(r) ? k_dy[c] * r : 0.0) +                  \
                       (dev != 0.0 && FBN_FINITE(dev) ? k_x[c] * (dev * invstd[c]) : 0.0)); \
    }
    if (lo) /* unswitched by hand: the loads are unconditional */
        FBN_FILL_DX(lo[c])
    else
        FBN_FILL_DX(0.0)
#undef FBN_FILL_DX
}

/* (Loops over restrict parameters and selects: they vectorise, and with few rows
 * per channel this is much of a call.) */
static void FN(fill_typed)(const fbn_coefs *k, int64_t c0, int64_t n, const FN(tcoefs) *t) {
    FN(fill_affine)(n, k->shift + c0, k->scale + c0, k->bias + c0, t->shift + c0,
                    t->scale + c0, t->bias + c0);
    if (k->k_dy)
        FN(fill_dx)(n, k->shift + c0, k->lo ? k->lo + c0 : NULL, k->k_dy + c0, k->k_x + c0,
                    k->invstd + c0, k->mean_dy + c0, t->k_dy + c0, t->k_x + c0,
                    t->invstd + c0, t->mean_dy + c0, t->k_0 + c0);
}

/* Typed coefficient arrays in one block of FBN_TYPED arrays, FBN_TYPED_LEN(C)
 * values apart: a whole number of 4 KB pages plus one cache line, so that one
 * channel's coefficients fall in different L1 sets (the arrays' lines would
 * otherwise compete for the ways of one set, beside the data rows: large C). */
#define FBN_PAGE_VALUES (4096 / (int64_t)sizeof(T))
#define FBN_TYPED_LEN(C)                                                                   \
    ((((C) < FBN_CHUNK ? FBN_CHUNK : (C)) + FBN_PAGE_VALUES - 1) / FBN_PAGE_VALUES *       \
         FBN_PAGE_VALUES + 64 / (int64_t)sizeof(T))
#define FBN_TYPED_BYTES(C) (FBN_TYPED * FBN_TYPED_LEN(C) * (int64_t)sizeof(T))
static FN(tcoefs) FN(typed_arrays)(T *block, int64_t C, int relu) {
    const int64_t n = FBN_TYPED_LEN(C);
    FN(tcoefs) t = {block,         block + n,     block + 2 * n, block + 3 * n, block + 4 * n,
                    block + 5 * n, block + 6 * n, block + 7 * n, relu,          0, 0};
    return t;
}

/* For short rows (inner == 1, small C): repeat each array's C values over a period
 * of several rows, so that elementwise loops over whole-row tiles run long. Only
 * the arrays the pass reads (dx: all, affine: the first 3), by doubling memcpys:
 * a value-by-value copy C apart is a chain of store-to-load forwards (C = 1: 11 us
 * for a 2-value affine). */
static void FN(repeat_typed)(FN(tcoefs) *t, const fbn_shape *s, int dx) {
    const int64_t C = s->channels;
    if (s->inner != 1 || C < 1 || 2 * C > FBN_CHUNK) return;
    /* dx reads 8 coefficient arrays: from 16 to 64 channels, row groups (which
     * load them once per FBN_GROUP rows) ran 15-25% faster than flat spans on
     * NHWC-like arrays in DRAM; with fewer channels their loops are too short,
     * and with more, flat spans ran faster (measured, not derived) */
    if (dx && C >= FBN_DX_GROUP_MIN && C <= FBN_DX_GROUP_MAX) return;
    T *arrays[FBN_TYPED] = {t->shift, t->scale, t->bias, t->k_dy, t->k_x, t->mean_dy, t->k_0,
                            t->invstd};
    t->period = (FBN_CHUNK / C) * C;
    for (int a = 0; a < (dx ? FBN_TYPED : 3); a++)
        for (int64_t n = C; n < t->period; n *= 2)
            memcpy(arrays[a] + n, arrays[a], (n < t->period - n ? n : t->period - n) * sizeof(T));
}

/* Each channel's first value: the pivot its statistics are taken around. */
static void FN(pivots)(const T *x, const fbn_shape *s, double *pivot) {
    for (int64_t c = 0; c < s->channels; c++) pivot[c] = (double)x[c * s->inner];
}

/* mean = pivot + part.mean as a double-double (TwoSum), var = m2 / n. */
static void FN(finish_stats)(int64_t c, double pivot, const fbn_part *part, double *mean_hi,
                             double *mean_lo, double *m2) {
    double a = pivot, b = part->mean, hi = a + b, bb = hi - a;
    mean_hi[c] = hi;
    mean_lo[c] = (a - (hi - bb)) + (b - bb);
    m2[c] = part->m2;
}

/* The loops below run on fbn_parallel_for (parallel.h): each has a job (its
 * arguments) and a task (one tile; `thread` indexes per-thread scratch). */

/* Statistics of one tile into its segment's parts. */
typedef struct {
    const T *x;
    const fbn_plan *p;
    const double *pivot;
    fbn_part *parts;
    double *scratch; /* len doubles per thread */
    int64_t len;
} FN(stats_job);

static void FN(stats_task)(void *job, int64_t t, int thread) {
    const FN(stats_job) *j = job;
    FN(stats_tile)(j->x, j->p, t, j->pivot, j->parts + (t % j->p->nsegs) * j->p->s.channels,
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
} FN(merge_job);

static void FN(merge_task)(void *job, int64_t b, int thread) {
    const FN(merge_job) *j = job;
    const fbn_plan *p = j->p;
    const int64_t C = p->s.channels, c0 = b * FBN_MERGE_CHUNK;
    const int64_t c1 = c0 + FBN_MERGE_CHUNK < C ? c0 + FBN_MERGE_CHUNK : C;
    fbn_part *parts = j->parts;
    (void)thread;
    for (int64_t k = 1; k < p->nsegs; k++) {
        /* segment k (of channel block 0): na values before it, nb in it */
        const FN(fbn_tile) r = FN(tile_of)(p, k);
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
        FN(finish_stats)(c, j->pivot[c], &parts[c], j->mean_hi, j->mean_lo, j->m2);
}

/* Statistics of every channel, tile by tile, merged in a fixed order (whichever
 * thread merges a channel). */
static void FN(stats_all)(const T *x, const fbn_plan *p, double *pivot, fbn_part *parts,
                          double *scratch, double *mean_hi, double *mean_lo, double *m2, int nt) {
    const int64_t C = p->s.channels, ntiles = p->nblocks * p->nsegs;
    const int64_t nchunks = (C + FBN_MERGE_CHUNK - 1) / FBN_MERGE_CHUNK;
    FN(stats_job) sj = {x, p, pivot, parts, scratch, fbn_scratch_len(p)};
    fbn_parallel_for(ntiles, nt, FN(stats_task), &sj);
    /* a merge of few parts takes microseconds: waking a thread for it costs more */
    FN(merge_job) mj = {p, pivot, parts, mean_hi, mean_lo, m2};
    fbn_parallel_for(nchunks, C * p->nsegs >= FBN_MIN_PARALLEL ? nt : 1, FN(merge_task), &mj);
}

/* Tilings: reductions keep per-channel accumulators, so inner == 1 tiles are
 * channel blocks; elementwise passes take whole rows (contiguous memory). The
 * forward's tiling is the batch_stats one, so both give identical statistics. */
#define FN_REDUCE_PLAN(s, ins) fbn_make_plan((s), sizeof(T), (ins), 1)
#define FN_ELEMWISE_PLAN(s, ins) fbn_make_plan((s), sizeof(T), (ins), 0)

int FN(fbn_batch_stats)(const T *x, fbn_shape s, double *mean_hi, double *mean_lo, double *m2,
                        int nthreads) {
    fbn_plan p = FN_REDUCE_PLAN(s, 1);
    if (p.per_channel == 0 || s.channels == 0) {
        for (int64_t c = 0; c < s.channels; c++) mean_hi[c] = mean_lo[c] = m2[c] = 0.0;
        return 0;
    }
    const int nt = fbn_threads_for(&p, nthreads);
    const int64_t bytes[2] = {(s.channels + nt * fbn_scratch_len(&p)) * (int64_t)sizeof(double),
                              p.nsegs * s.channels * (int64_t)sizeof(fbn_part)};
    void *buf[2];
    fbn_work w;
    if (fbn_work_alloc(&w, 2, bytes, buf)) return -1;
    double *pivot = buf[0];
    FN(pivots)(x, &s, pivot);
    FN(stats_all)(x, &p, pivot, buf[1], pivot + s.channels, mean_hi, mean_lo, m2, nt);
    fbn_work_free(&w);
    return 0;
}

/* var and invstd of nc channels from their m2 (pointers at the first channel): a
 * loop that vectorises (with few rows per channel, its divisions and square
 * roots are much of a call). */
FBN_DISPATCH static void FN(finish_channels)(int64_t nc, double eps, double n,
                                             const double *restrict m2, double *restrict var,
                                             double *restrict invstd) {
    for (int64_t c = 0; c < nc; c++) var[c] = m2[c] / n;
    fbn_invstd(nc, var, eps, invstd);
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
    const FN(tcoefs) *tk;
} FN(fwd_fused_job);

static void FN(fwd_fused_task)(void *job, int64_t t, int thread) {
    const FN(fwd_fused_job) *j = job;
    const FN(fbn_tile) r = FN(tile_of)(j->p, t);
    const int64_t c0 = r.c0, nc = r.nc;
    FN(stats_tile)(j->x, j->p, t, j->pivot, j->parts, j->scratch + thread * j->len);
    for (int64_t c = c0; c < c0 + nc; c++)
        FN(finish_stats)(c, j->pivot[c], &j->parts[c], j->mean_hi, j->mean_lo, j->m2);
    FN(finish_channels)(nc, j->eps, j->n, j->m2 + c0, j->var + c0, j->invstd + c0);
    fbn_coefficients(nc, j->mean_hi + c0, j->mean_lo + c0, j->invstd + c0,
                     j->gamma ? j->gamma + c0 : NULL, j->beta ? j->beta + c0 : NULL,
                     j->shift + c0, j->scale + c0, j->bias + c0);
    FN(fill_typed)(j->k, c0, nc, j->tk);
    FN(affine_tile)(j->x, j->y, j->p, t, j->tk);
}

/* y of one elementwise tile; backwards: tiles from the last (the data a
 * statistics pass read last may still be in L3). */
typedef struct {
    const T *x;
    T *y;
    const fbn_plan *p;
    const FN(tcoefs) *tk;
    int backwards;
} FN(affine_job);

static void FN(affine_task)(void *job, int64_t t, int thread) {
    const FN(affine_job) *j = job;
    const int64_t ntiles = j->p->nblocks * j->p->nsegs;
    (void)thread;
    FN(affine_tile)(j->x, j->y, j->p, j->backwards ? ntiles - 1 - t : t, j->tk);
}

int FN(fbn_forward_train)(const T *x, T *y, fbn_shape s, const double *gamma,
                          const double *beta, double eps, int relu, double *mean_hi,
                          double *mean_lo, double *var, double *invstd, int nthreads) {
    const int64_t C = s.channels;
    fbn_plan p = FN_REDUCE_PLAN(s, 1);
    if (p.per_channel == 0 || C == 0) return -2;
    const int nt = fbn_threads_for(&p, nthreads);
    const int64_t len = fbn_scratch_len(&p);
    const int64_t bytes[3] = {(C * 5 + nt * len) * (int64_t)sizeof(double),
                              p.nsegs * C * (int64_t)sizeof(fbn_part), FBN_TYPED_BYTES(C)};
    void *buf[3];
    fbn_work w;
    if (fbn_work_alloc(&w, 3, bytes, buf)) return -1;
    double *work = buf[0];
    fbn_part *parts = buf[1];
    T *typed = buf[2];
    double *pivot = work, *shift = work + C, *scale = work + 2 * C, *bias = work + 3 * C;
    double *m2 = work + 4 * C, *scratch = work + 5 * C, n = (double)p.per_channel;
    fbn_coefs k = {shift, NULL, scale, bias, NULL, NULL, NULL, relu, NULL};
    FN(tcoefs) tk = FN(typed_arrays)(typed, C, relu);
    FN(pivots)(x, &s, pivot);
    if (p.nsegs == 1) {
        /* each tile holds whole channels: reduce it, then normalise it while in cache */
        FN(fwd_fused_job) j = {x,       y,       &p,  pivot, parts,  scratch, len,   eps,
                               n,       gamma,   beta, mean_hi, mean_lo, m2, var, invstd,
                               shift,   scale,   bias, &k,  &tk};
        fbn_parallel_for(p.nblocks, nt, FN(fwd_fused_task), &j);
    } else {
        FN(stats_all)(x, &p, pivot, parts, scratch, mean_hi, mean_lo, m2, nt);
        FN(finish_channels)(C, eps, n, m2, var, invstd);
        fbn_coefficients(C, mean_hi, mean_lo, invstd, gamma, beta, shift, scale, bias);
        FN(fill_typed)(&k, 0, C, &tk);
        FN(repeat_typed)(&tk, &s, 0);
        /* backwards: the data read last by the statistics pass may still be in L3 */
        fbn_plan e = FN_ELEMWISE_PLAN(s, 1);
        FN(affine_job) j = {x, y, &e, &tk, 1};
        fbn_parallel_for(e.nblocks * e.nsegs, nt, FN(affine_task), &j);
    }
    fbn_work_free(&w);
    return 0;
}

/* y from the coefficients k, the typed block's arrays filled here. */
static void FN(affine_all)(const T *x, T *y, fbn_shape s, const fbn_coefs *k, T *typed,
                           int nthreads) {
    fbn_plan p = FN_ELEMWISE_PLAN(s, 1);
    const int64_t ntiles = p.per_channel ? p.nblocks * p.nsegs : 0;
    FN(tcoefs) tk = FN(typed_arrays)(typed, s.channels, k->relu);
    FN(fill_typed)(k, 0, s.channels, &tk);
    FN(repeat_typed)(&tk, &s, 0);
    FN(affine_job) j = {x, y, &p, &tk, 0};
    fbn_parallel_for(ntiles, fbn_threads_for(&p, nthreads), FN(affine_task), &j);
}

int FN(fbn_affine)(const T *x, T *y, fbn_shape s, const double *shift, const double *scale,
                   const double *bias, int relu, int nthreads) {
    fbn_coefs k = {shift, NULL, scale, bias, NULL, NULL, NULL, relu, NULL};
    const int64_t bytes[1] = {FBN_TYPED_BYTES(s.channels)};
    void *typed;
    fbn_work w;
    if (fbn_work_alloc(&w, 1, bytes, &typed)) return -1;
    FN(affine_all)(x, y, s, &k, typed, nthreads);
    fbn_work_free(&w);
    return 0;
}

int FN(fbn_forward_infer)(const T *x, T *y, fbn_shape s, const double *mean, const double *var,
                          const double *gamma, const double *beta, double eps, int relu,
                          double *invstd, int nthreads) {
    const int64_t C = s.channels;
    const int64_t bytes[2] = {3 * C * (int64_t)sizeof(double), FBN_TYPED_BYTES(C)};
    void *buf[2];
    fbn_work w;
    if (fbn_work_alloc(&w, 2, bytes, buf)) return -1;
    double *shift = buf[0], *scale = shift + C, *bias = scale + C;
    fbn_invstd(C, var, eps, invstd);
    fbn_coefficients(C, mean, NULL, invstd, gamma, beta, shift, scale, bias);
    fbn_coefs k = {shift, NULL, scale, bias, NULL, NULL, NULL, relu, NULL};
    FN(affine_all)(x, y, s, &k, buf[1], nthreads);
    fbn_work_free(&w);
    return 0;
}

/* Sum the tiles' partial sums (2 per channel) segment after segment, so memory
 * is read in order; compensated, in a fixed order. comp: 2C doubles of scratch. */
static void FN(sum_tiles)(const fbn_plan *p, double *sums, double *comp, double *sum_dy,
                          double *sum_dy_xc) {
    const int64_t C = p->s.channels, C2 = 2 * C;
    for (int64_t i = 0; i < C2; i++) comp[i] = 0.0;
    for (int64_t k = 1; k < p->nsegs; k++) fbn_kadd_arrays(sums, comp, sums + k * C2, C2);
    for (int64_t c = 0; c < C; c++) {
        fbn_ksum a = {sums[2 * c], comp[2 * c]}, b = {sums[2 * c + 1], comp[2 * c + 1]};
        sum_dy[c] = fbn_kval(&a);
        sum_dy_xc[c] = fbn_kval(&b);
    }
}

/* One tile's partial sums (into its segment's slot of work) of the backward's
 * reduction. */
typedef struct {
    const T *dy, *x;
    const fbn_plan *p;
    const fbn_coefs *k;
    const FN(tcoefs) *tk;
    double *work, *scratch; /* scratch: len doubles per thread */
    int64_t len;
} FN(reduce_job);

static void FN(reduce_task)(void *job, int64_t t, int thread) {
    const FN(reduce_job) *j = job;
    FN(bwd_reduce_tile)(j->dy, j->x, j->p, t, j->k, j->tk,
                        j->work + (t % j->p->nsegs) * 2 * j->p->s.channels,
                        j->scratch + thread * j->len);
}

/* dx of one elementwise tile (backwards as in FN(affine_job)). */
typedef struct {
    const T *dy, *x;
    T *dx;
    const fbn_plan *p;
    const FN(tcoefs) *tk;
    int backwards;
} FN(dx_job);

static void FN(dx_task)(void *job, int64_t t, int thread) {
    const FN(dx_job) *j = job;
    const int64_t ntiles = j->p->nblocks * j->p->nsegs;
    (void)thread;
    FN(bwd_elemt_tile)(j->dy, j->x, j->dx, j->p, j->backwards ? ntiles - 1 - t : t, j->tk);
}

/* Reduce every tile, then sum the tiles in order: sum(dy'), sum(dy' * (x - shift - lo)).
 * work: fbn_reduce_work_len(p, nt) doubles. */
static void FN(reduce_all)(const T *dy, const T *x, const fbn_plan *p, const fbn_coefs *k,
                           const FN(tcoefs) *tk, double *work, double *sum_dy,
                           double *sum_dy_xc, int nt) {
    const int64_t C = p->s.channels;
    FN(reduce_job) j = {dy, x, p, k, tk, work, fbn_reduce_scratch(p, work), fbn_scratch_len(p)};
    fbn_parallel_for(p->nblocks * p->nsegs, nt, FN(reduce_task), &j);
    FN(sum_tiles)(p, work, work + p->nsegs * 2 * C, sum_dy, sum_dy_xc);
}

int FN(fbn_backward_reduce)(const T *dy, const T *x, fbn_shape s, const double *shift,
                            const double *scale, const double *bias, int relu, double *sum_dy,
                            double *sum_dy_xs, int nthreads) {
    fbn_plan p = FN_REDUCE_PLAN(s, 2);
    const int64_t C = s.channels;
    if (p.per_channel == 0) {
        for (int64_t c = 0; c < C; c++) sum_dy[c] = sum_dy_xs[c] = 0.0;
        return 0;
    }
    const int nt = fbn_threads_for(&p, nthreads);
    const int64_t bytes[3] = {C * (int64_t)sizeof(double),
                              fbn_reduce_work_len(&p, nt) * (int64_t)sizeof(double),
                              FBN_TYPED_BYTES(C)};
    void *buf[3];
    fbn_work w;
    if (fbn_work_alloc(&w, 3, bytes, buf)) return -1;
    double *zeros = buf[0]; /* the mean's residual, and an absent scale or bias */
    memset(zeros, 0, bytes[0]);
    fbn_coefs k = {shift, zeros, scale ? scale : zeros, bias ? bias : zeros, NULL, NULL, NULL,
                   relu,  NULL};
    FN(tcoefs) tk = FN(typed_arrays)(buf[2], C, relu);
    FN(fill_typed)(&k, 0, C, &tk);
    FN(reduce_all)(dy, x, &p, &k, &tk, buf[1], sum_dy, sum_dy_xs, nt);
    fbn_work_free(&w);
    return 0;
}

int FN(fbn_backward_elemt)(const T *dy, const T *x, T *dx, fbn_shape s, const double *shift,
                           const double *invstd, const double *k_dy, const double *k_x,
                           const double *mean_dy, const double *scale, const double *bias,
                           int relu, int nthreads) {
    fbn_plan p = FN_ELEMWISE_PLAN(s, 2);
    const int64_t C = s.channels ? s.channels : 1, ntiles = p.per_channel ? p.nblocks * p.nsegs : 0;
    const int64_t bytes[2] = {FBN_TYPED_BYTES(C), C * (int64_t)sizeof(double)};
    void *buf[2];
    fbn_work w;
    if (fbn_work_alloc(&w, 2, bytes, buf)) return -1;
    T *typed = buf[0];
    double *zeros = buf[1]; /* for an absent scale or bias */
    memset(zeros, 0, bytes[1]);
    fbn_coefs k = {shift, NULL, scale ? scale : zeros, bias ? bias : zeros,
                   k_dy,  k_x,  mean_dy,               relu,
                   invstd};
    FN(tcoefs) tk = FN(typed_arrays)(typed, s.channels, relu);
    FN(fill_typed)(&k, 0, s.channels, &tk);
    FN(repeat_typed)(&tk, &s, 1);
    FN(dx_job) j = {dy, x, dx, &p, &tk, 0};
    fbn_parallel_for(ntiles, fbn_threads_for(&p, nthreads), FN(dx_task), &j);
    fbn_work_free(&w);
    return 0;
}

/* From the reduced sums of nc channels to sum(dy * xhat) and the dx coefficients
 * (pointers at the first channel; gamma may be NULL). A loop that vectorises:
 * with few rows per channel its divisions are much of a call. */
FBN_DISPATCH static void FN(bwd_coefficients)(int64_t nc, double n, int training,
                                              const double *restrict invstd,
                                              const double *restrict gamma,
                                              const double *restrict sum_dy,
                                              const double *restrict sum_dy_xc,
                                              double *restrict sum_dy_xhat,
                                              double *restrict k_dy, double *restrict k_x,
                                              double *restrict mean_dy) {
#define FBN_BWD_COEFS(GAMMA)                                                           \
    for (int64_t c = 0; c < nc; c++) {                                                 \
        const double s2 = invstd[c] * sum_dy_xc[c], a = (GAMMA) * invstd[c];           \
        const double m = sum_dy[c] / n;                                                \
        sum_dy_xhat[c] = s2;                                                           \
        k_dy[c] = a;                                                                   \
        k_x[c] = training ? -a * (s2 / n) : 0.0;                                       \
        mean_dy[c] = training ? m : 0.0;                                               \
    }
    if (gamma) /* unswitched by hand: the loads are unconditional */
        FBN_BWD_COEFS(gamma[c])
    else
        FBN_BWD_COEFS(1.0)
#undef FBN_BWD_COEFS
}

/* The fused backward, one channel block per tile: sums, coefficients, dx. */
typedef struct {
    const T *dy, *x;
    T *dx;
    const fbn_plan *p;
    const fbn_coefs *k; /* of the arrays below */
    const FN(tcoefs) *tk;
    double *sums, *scratch; /* scratch: len doubles per thread */
    int64_t len;
    double n;
    int training;
    const double *invstd, *gamma;
    double *sum_dy, *sum_dy_xc, *sum_dy_xhat, *k_dy, *k_x, *mean_dy;
} FN(bwd_fused_job);

static void FN(bwd_fused_task)(void *job, int64_t t, int thread) {
    const FN(bwd_fused_job) *j = job;
    const FN(fbn_tile) r = FN(tile_of)(j->p, t);
    const int64_t c0 = r.c0, nc = r.nc;
    FN(bwd_reduce_tile)(j->dy, j->x, j->p, t, j->k, j->tk, j->sums, j->scratch + thread * j->len);
    for (int64_t c = c0; c < c0 + nc; c++) {
        j->sum_dy[c] = j->sums[2 * c];
        j->sum_dy_xc[c] = j->sums[2 * c + 1];
    }
    FN(bwd_coefficients)(nc, j->n, j->training, j->invstd + c0, j->gamma ? j->gamma + c0 : NULL,
                         j->sum_dy + c0, j->sum_dy_xc + c0, j->sum_dy_xhat + c0, j->k_dy + c0,
                         j->k_x + c0, j->mean_dy + c0);
    FN(fill_typed)(j->k, c0, nc, j->tk);
    FN(bwd_elemt_tile)(j->dy, j->x, j->dx, j->p, t, j->tk);
}

int FN(fbn_backward)(const T *dy, const T *x, T *dx, fbn_shape s, const double *mean_hi,
                     const double *mean_lo, const double *invstd, const double *gamma,
                     const double *beta, int relu, int training, double *sum_dy,
                     double *sum_dy_xhat, int nthreads) {
    const int64_t C = s.channels;
    fbn_plan p = FN_REDUCE_PLAN(s, 2);
    if (C == 0) return 0;
    const int nt = fbn_threads_for(&p, nthreads);
    const int64_t len = fbn_scratch_len(&p);
    const int64_t bytes[3] = {C * 8 * (int64_t)sizeof(double),
                              fbn_reduce_work_len(&p, nt) * (int64_t)sizeof(double),
                              FBN_TYPED_BYTES(C)};
    void *buf[3];
    fbn_work w;
    if (fbn_work_alloc(&w, 3, bytes, buf)) return -1;
    double *work = buf[0], *sums = buf[1];
    T *typed = buf[2];
    double *shift = work, *scale = work + C, *bias = work + 2 * C, *sum_dy_xc = work + 3 * C;
    double *k_dy = work + 4 * C, *k_x = work + 5 * C, *mean_dy = work + 6 * C, *lo = work + 7 * C;
    if (mean_lo)
        memcpy(lo, mean_lo, C * sizeof(double));
    else
        memset(lo, 0, C * sizeof(double));
    fbn_coefs k = {shift, lo, scale, bias, k_dy, k_x, mean_dy, relu, invstd};
    fbn_coefs masks = {shift, lo, scale, bias, NULL, NULL, NULL, relu, NULL};
    FN(tcoefs) tk = FN(typed_arrays)(typed, C, relu);
    tk.eval = !training;
    double n = (double)p.per_channel;
    fbn_coefficients(C, mean_hi, lo, invstd, gamma, beta, shift, scale, bias);
    FN(fill_typed)(&masks, 0, C, &tk); /* for the ReLU masks; k_* are filled below */
    if (p.per_channel == 0) {
        for (int64_t c = 0; c < C; c++) sum_dy[c] = sum_dy_xhat[c] = 0.0;
    } else if (p.nsegs == 1) {
        /* each tile holds whole channels: reduce it, then write dx while in cache */
        FN(bwd_fused_job) j = {dy,       x,     dx,     &p,        &k,          &tk,
                               sums,     fbn_reduce_scratch(&p, sums),       len,
                               n,        training,      invstd,    gamma,       sum_dy,
                               sum_dy_xc, sum_dy_xhat,  k_dy,      k_x,         mean_dy};
        fbn_parallel_for(p.nblocks, nt, FN(bwd_fused_task), &j);
    } else {
        FN(reduce_all)(dy, x, &p, &k, &tk, sums, sum_dy, sum_dy_xc, nt);
        FN(bwd_coefficients)(C, n, training, invstd, gamma, sum_dy, sum_dy_xc, sum_dy_xhat,
                             k_dy, k_x, mean_dy);
        FN(fill_typed)(&k, 0, C, &tk);
        FN(repeat_typed)(&tk, &s, 1);
        fbn_plan e = FN_ELEMWISE_PLAN(s, 2);
        FN(dx_job) j = {dy, x, dx, &e, &tk, 1}; /* backwards, as in the forward */
        fbn_parallel_for(e.nblocks * e.nsegs, nt, FN(dx_task), &j);
    }
    fbn_work_free(&w);
    return 0;
}

int FN(fbn_ema)(T *running, const double *batch, const double *batch_lo, int64_t channels,
                double momentum, double factor) {
    for (int64_t c = 0; c < channels; c++) {
        const double b = batch_lo ? batch[c] + batch_lo[c] : batch[c];
        running[c] = (T)((1.0 - momentum) * (double)running[c] + momentum * b * factor);
    }
    return 0;
}

#undef FN
#undef FBN_TYPED
#undef FBN_TYPED_LEN
#undef FBN_TYPED_BYTES
#undef FBN_PAGE_VALUES
#undef FN_REDUCE_PLAN
#undef FN_ELEMWISE_PLAN
#undef FBN_FOR_RUNS
#undef FBN_SUM_RUNS
#undef FBN_SAVE_LANES
#undef FBN_VLEN
#undef FBN_STREAM_LOOP
#undef FBN_FETCH_AHEAD
#undef FBN_FOR_SPANS
#undef FBN_LINE_VALUES
#undef FBN_ELEMWISE_WALK
#undef FBN_SPAN
#undef FBN_CHUNK
