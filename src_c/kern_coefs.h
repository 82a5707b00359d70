/* The elementwise passes' coefficients in their compute type TC (typed
 * coefficients), from the double ones (fbn_coefs). A per-dtype template: see
 * kern_dtype.h for T, TC and FBN_SYM. */

/* The typed coefficients: FBN_TYPED arrays in one block (fbn_typed_arrays_<sfx>). */
#define FBN_TYPED 8
typedef struct {
    TC *shift, *scale, *bias, *k_dy, *k_x, *mean_dy, *k_0, *invstd;
    int relu;       /* the activation: 0 none, 1 ReLU, 2 leaky ReLU (slope) */
    int eval;       /* dx of eval mode: the statistics are constants, x enters only a mask */
    int64_t period; /* > 0: each array repeats its C values up to this length */
    int64_t cycle;  /* with period: the values repeat every cycle (a multiple of a vector) */
    TC slope;       /* the plain kernels address the fields before it as they did */
    /* dx of FBN_OP_XDX + 6 (16-bit data): the residual, indexed as x. There dy
     * through a leaky ReLU (dy * slope) is not a half value: dx from dresidual
     * would round it twice. */
    const T *z;
} FBN_SYM(tcoefs);

/* Channels [c0, c0 + n) of the double coefficients k in the compute type. The
 * elementwise passes compute in it: for float32 data that halves the vector work
 * for an error of a few float32 ulps of max|y| (well within the guarantee). The
 * shift and mean_dy are rounded to TC, so their rounding, and the mean's residual
 * lo, are folded into bias and k_0 (in double): x - shift stays exact-ish far
 * from the origin, and the small terms are added last. */
FBN_DISPATCH static void FBN_SYM(fill_affine)(int64_t n, const double *restrict shift,
                                              const double *restrict scale,
                                              const double *restrict bias, TC *restrict t_shift,
                                              TC *restrict t_scale, TC *restrict t_bias) {
    for (int64_t c = 0; c < n; c++) {
        double sh = (double)(TC)shift[c], moved = sh - shift[c];
        t_shift[c] = (TC)sh;
        t_scale[c] = (TC)scale[c];
        /* corrections are skipped when zero or not finite (an infinite mean or gamma
         * then gives the same +-inf as the plain formula, not NaN) */
        int fold = moved != 0.0 && FBN_FINITE(moved) && FBN_FINITE(scale[c]);
        t_bias[c] = (TC)(fold ? bias[c] + moved * scale[c] : bias[c]);
    }
}

/* The loop of fbn_fill_dx_<sfx>, with has_lo a constant (the loads of lo are
 * unconditional where they happen at all: the loop vectorises either way). */
FBN_INLINE void FBN_SYM(fill_dx_as)(int64_t n, const double *restrict shift,
                                    const double *restrict lo, const int has_lo,
                                    const double *restrict k_dy, const double *restrict k_x,
                                    const double *restrict invstd,
                                    const double *restrict mean_dy, TC *restrict t_k_dy,
                                    TC *restrict t_k_x, TC *restrict t_invstd,
                                    TC *restrict t_mean_dy, TC *restrict t_k_0) {
    for (int64_t c = 0; c < n; c++) {
        double moved = (double)(TC)shift[c] - shift[c];
        double dev = moved - (has_lo ? lo[c] : 0.0); /* shift - mean */
        double m_dy = (double)(TC)mean_dy[c], r = m_dy - mean_dy[c];
        t_k_dy[c] = (TC)k_dy[c];
        t_k_x[c] = (TC)k_x[c];
        t_invstd[c] = (TC)invstd[c];
        t_mean_dy[c] = (TC)m_dy;
        t_k_0[c] = (TC)((r != 0.0 && FBN_FINITE(r) ? k_dy[c] * r : 0.0) +
                        (dev != 0.0 && FBN_FINITE(dev) ? k_x[c] * (dev * invstd[c]) : 0.0));
    }
}

/* lo may be NULL (a zero residual). */
FBN_DISPATCH static void FBN_SYM(fill_dx)(int64_t n, const double *restrict shift,
                                          const double *restrict lo, const double *restrict k_dy,
                                          const double *restrict k_x,
                                          const double *restrict invstd,
                                          const double *restrict mean_dy, TC *restrict t_k_dy,
                                          TC *restrict t_k_x, TC *restrict t_invstd,
                                          TC *restrict t_mean_dy, TC *restrict t_k_0) {
    if (lo)
        FBN_SYM(fill_dx_as)(n, shift, lo, 1, k_dy, k_x, invstd, mean_dy, t_k_dy, t_k_x,
                            t_invstd, t_mean_dy, t_k_0);
    else
        FBN_SYM(fill_dx_as)(n, shift, NULL, 0, k_dy, k_x, invstd, mean_dy, t_k_dy, t_k_x,
                            t_invstd, t_mean_dy, t_k_0);
}

/* (Loops over restrict parameters and selects: they vectorise, and with few rows
 * per channel this is much of a call.) The dx arrays only when k has k_dy. */
static void FBN_SYM(fill_typed)(const fbn_coefs *k, int64_t c0, int64_t n,
                                const FBN_SYM(tcoefs) *t) {
    FBN_SYM(fill_affine)(n, k->shift + c0, k->scale + c0, k->bias + c0, t->shift + c0,
                         t->scale + c0, t->bias + c0);
    if (k->k_dy)
        FBN_SYM(fill_dx)(n, k->shift + c0, k->lo ? k->lo + c0 : NULL, k->k_dy + c0,
                         k->k_x + c0, k->invstd + c0, k->mean_dy + c0, t->k_dy + c0,
                         t->k_x + c0, t->invstd + c0, t->mean_dy + c0, t->k_0 + c0);
}

/* Typed coefficient arrays in one block of FBN_TYPED arrays, fbn_typed_len_<sfx>(C)
 * values apart: a whole number of 4 KB pages plus one cache line, so that one
 * channel's coefficients fall in different L1 sets (the arrays' lines would
 * otherwise compete for the ways of one set, beside the data rows: large C). At
 * least FBN_CHUNK values, for fbn_repeat_typed_<sfx>. */
static inline int64_t FBN_SYM(typed_len)(int64_t C) {
    const int64_t page = 4096 / (int64_t)sizeof(TC), n = C < FBN_CHUNK ? FBN_CHUNK : C;
    return (n + page - 1) / page * page + 64 / (int64_t)sizeof(TC);
}

/* (One line more than the arrays: room for fbn_typed_shift_<sfx>.) */
static inline int64_t FBN_SYM(typed_bytes)(int64_t C) {
    return FBN_TYPED * FBN_SYM(typed_len)(C) * (int64_t)sizeof(TC) + 64;
}

/* Values of TC that a block's arrays start past a cache line, so that coefficient
 * c takes the place in its line that value c of `lines` takes in its own: a vector
 * of coefficients is then split across two lines exactly where the data's is,
 * which the column walk avoids (fbn_span_set_<sfx>). With a 64-byte-aligned block
 * they were split for every vector whenever the data were not line-aligned, as
 * NumPy's large arrays are not (16 bytes past a line): docs/performance.md. */
static inline int64_t FBN_SYM(typed_shift)(const T *lines) {
    if (!lines) return 0;
    const int64_t mis = (int64_t)((uintptr_t)lines % 64 / sizeof(T));
    return mis * (int64_t)sizeof(TC) % 64 / (int64_t)sizeof(TC);
}

/* The arrays of a typed block of fbn_typed_bytes_<sfx>(C) bytes, 64-byte aligned;
 * lines: the data value that coefficient 0 goes with (see fbn_coef_lines_<sfx>;
 * NULL: none). */
static FBN_SYM(tcoefs) FBN_SYM(typed_arrays)(TC *block, int64_t C, int relu, const T *lines) {
    const int64_t n = FBN_SYM(typed_len)(C);
    block += FBN_SYM(typed_shift)(lines);
    FBN_SYM(tcoefs) t = {.shift = block,
                         .scale = block + n,
                         .bias = block + 2 * n,
                         .k_dy = block + 3 * n,
                         .k_x = block + 4 * n,
                         .mean_dy = block + 5 * n,
                         .k_0 = block + 6 * n,
                         .invstd = block + 7 * n,
                         .relu = relu,
                         .slope = 0,
                         .eval = 0,
                         .period = 0,
                         .cycle = 0};
    return t;
}

/* Whether kern_direct.h's register loops take op (FBN_OP_AFFINE or FBN_OP_DX) with
 * this activation and mode: not a leaky ReLU's slope (relu 2), nor dx in eval mode,
 * which the buffered loops do. */
static inline int FBN_SYM(direct_takes)(int op, int relu, int eval) {
    return relu <= 1 && !(op == FBN_OP_DX && eval);
}

/* For short rows (inner == 1, small C): repeat each array's C values over a period
 * of several rows, so that elementwise loops over whole-row tiles run long. Only
 * the arrays the pass reads (dx: all, affine: the first 3), by doubling memcpys:
 * a value-by-value copy C apart is a chain of store-to-load forwards. dx with
 * FBN_DX_GROUP_MIN..MAX channels in rows of up to FBN_DX_GROUP_BYTES keeps row
 * groups, which load its 8 arrays once per FBN_GROUP rows (faster there,
 * measured: docs/performance.md), but float32 / float64 rows streamed (stream)
 * take flat spans straight from the registers (kern_direct.h) where they are of
 * at most FBN_DX_FLAT_STREAM_BYTES or the coefficients' cycle fits the registers
 * (FBN_DIRECT_HELD lines; 64-byte stores). */
static void FBN_SYM(repeat_typed)(FBN_SYM(tcoefs) *t, const fbn_shape *s, int dx, int stream) {
    const int64_t C = s->channels;
    /* (inputs with a row gap: periods would span rows that are not contiguous) */
    if (s->inner != 1 || C < 1 || 2 * C > FBN_CHUNK || fbn_row_gap(s)) return;
    /* lcm(C, a 64-byte vector of TC), gcd by Euclid (fbn_held_cycle_<sfx>) */
    const int64_t vec = 64 / (int64_t)sizeof(TC);
    int64_t gcd = C, rem = vec;
    while (rem) {
        const int64_t next = gcd % rem;
        gcd = rem, rem = next;
    }
    const int64_t cycle = C / gcd * vec;
    /* dx's coefficients held in registers (kern_direct.h: 64-byte stores, no leaky
     * ReLU, not eval mode) */
    const int held_dx = sizeof(T) >= 4 && fbn_stream_width() == 64 &&
                        FBN_SYM(direct_takes)(FBN_OP_DX, t->relu, t->eval) &&
                        cycle <= FBN_DIRECT_HELD * vec;
    const int flat_streamed = stream && sizeof(T) >= 4 &&
                              (C * (int64_t)sizeof(T) <= FBN_DX_FLAT_STREAM_BYTES || held_dx);
    if (dx && C >= FBN_DX_GROUP_MIN && C <= FBN_DX_GROUP_MAX &&
        C * (int64_t)sizeof(T) <= FBN_DX_GROUP_BYTES && !flat_streamed)
        return;
    TC *arrays[FBN_TYPED] = {t->shift, t->scale, t->bias,  t->k_dy,
                             t->k_x, t->mean_dy, t->k_0, t->invstd};
    /* no more rows than the array has: a small batch then costs its size, not a
     * period's copies (a (4, 5) inference spent half its kernel time on them) */
    const int64_t rows = FBN_CHUNK / C < s->outer ? FBN_CHUNK / C : s->outer;
    t->period = (rows > 1 ? rows : 1) * C;
    t->cycle = cycle;
    for (int a = 0; a < (dx ? FBN_TYPED : 3); a++)
        for (int64_t n = C; n < t->period; n *= 2)
            memcpy(arrays[a] + n, arrays[a], (n < t->period - n ? n : t->period - n) * sizeof(TC));
}

/* k's cycle (values) where a loop holding the coefficients of one cycle in
 * registers (kern_half_y.h's fbn_y_held_<sfx>, kern_direct.h's
 * fbn_direct_held64_<sfx>) takes m values of one row from ch: the cycle at most
 * `most` values, within the repeated arrays from ch, and at least two of them in
 * m; else 0. */
static inline int64_t FBN_SYM(held_cycle)(const FBN_SYM(tcoefs) *k, int64_t ch, int64_t m,
                                          int64_t most) {
    const int64_t n = k->cycle;
    return n && n <= most && ch + n <= k->period && m >= 2 * n ? n : 0;
}

/* Small maps as the columns shape: an elementwise pass over runs shorter than
 * FBN_SPREAD_RUN bytes walks the (outer, C * inner) rows, each channel's
 * coefficients repeated over its inner positions, where such an array takes at
 * most FBN_SPREAD_BYTES: work per run (a few values) no longer dominates
 * (docs/performance.md). The same values, computed alike: the same bits. But y
 * (dx: 0) of 16-bit runs of whole register steps (16 values, kern_half_y.h), as
 * in 4x4 maps, ran faster run by run (spread: 1.1-1.6x the time). */
static inline int FBN_SYM(spreads)(const fbn_shape *s, int dx) {
    const int whole_steps = sizeof(T) == 2 && s->inner % 16 == 0;
    return s->inner > 1 && s->inner * (int64_t)sizeof(T) < FBN_SPREAD_RUN &&
           s->channels <= FBN_SPREAD_BYTES / (int64_t)sizeof(TC) / s->inner &&
           (dx || !whole_steps);
}

/* The shape an elementwise pass (dx or y) over s walks (s itself unless it spreads). */
static inline fbn_shape FBN_SYM(spread_shape)(fbn_shape s, int dx) {
    return FBN_SYM(spreads)(&s, dx) ? fbn_columns_shape(s) : s;
}

/* Repeats each of the C channels' values of the arrays the pass reads (dx: all,
 * affine: the first 3) over its inner positions, in place: from the last channel
 * down, so that no value is overwritten before it is read. t's arrays must hold
 * the spread shape's C * inner values (fbn_typed_arrays_<sfx> of that many). */
static void FBN_SYM(spread_typed)(FBN_SYM(tcoefs) *t, const fbn_shape *s, int dx) {
    if (!FBN_SYM(spreads)(s, dx)) return;
    const int64_t C = s->channels, inner = s->inner;
    TC *arrays[FBN_TYPED] = {t->shift, t->scale, t->bias,  t->k_dy,
                             t->k_x, t->mean_dy, t->k_0, t->invstd};
    for (int a = 0; a < (dx ? FBN_TYPED : 3); a++)
        for (int64_t c = C - 1; c >= 0; c--) {
            const TC v = arrays[a][c];
            for (int64_t i = 0; i < inner; i++) arrays[a][c * inner + i] = v;
        }
}

/* Typed coefficients of channels [0, C) of k for an elementwise pass over s (the
 * spread shape's arrays filled, then repeated over a period: fbn_repeat_typed_<sfx>;
 * stream: the pass's plan streams its output). */
static void FBN_SYM(fill_pass_typed)(const fbn_coefs *k, const fbn_shape *s,
                                     FBN_SYM(tcoefs) *t, int dx, int stream) {
    const fbn_shape sp = FBN_SYM(spread_shape)(*s, dx);
    FBN_SYM(fill_typed)(k, 0, s->channels, t);
    FBN_SYM(spread_typed)(t, s, dx);
    FBN_SYM(repeat_typed)(t, &sp, dx, stream);
}
