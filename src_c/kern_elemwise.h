/* The elementwise passes' arithmetic: y (affine) and dx, per value, per run of one
 * channel (rows shape, cached or streamed) and per row group (columns shape). The
 * walk over a tile is kern_walk.h. A per-dtype template: see kern_dtype.h for T,
 * TC and FBN_SYM; op is FBN_OP_AFFINE or FBN_OP_DX (or FBN_OP_COPY), always a
 * compile-time constant. */

FBN_INLINE TC FBN_SYM(affine1)(TC x, TC shift, TC scale, TC bias, int relu) {
    TC v = (x - shift) * scale + bias;
    TC r = v < 0 ? (TC)0 : v; /* NaN stays NaN, as in np.maximum */
    return relu ? r : v;
}

/* y with an epilogue: a residual z added (res), then the activation act (0 none,
 * 1 ReLU, 2 leaky ReLU with slope); act and res constants. */
FBN_INLINE TC FBN_SYM(xaffine1)(TC x, TC z, TC shift, TC scale, TC bias, TC slope,
                                const int act, const int res) {
    TC v = (x - shift) * scale + bias;
    if (res) v = v + z;
    if (act == 2) return v > 0 ? v : v * slope;
    TC r = v < 0 ? (TC)0 : v;
    return act ? r : v;
}

/* dy - mean_dy comes first: a constant dy over a constant channel gives dx == 0.
 * (A leaky ReLU's dx is dx1 with relu 0 of dy through its mask, fbn_xdx1_<sfx>.) */
FBN_INLINE TC FBN_SYM(dx1)(TC dy, TC x, TC shift, TC scale, TC bias, int relu, TC k_dy,
                           TC k_x, TC mean_dy, TC k_0, TC invstd, int eval) {
    TC g = FBN_SYM(masked)(dy, x, shift, scale, bias, relu);
    TC xterm = k_x * ((x - shift) * invstd);
    return k_dy * (g - mean_dy) + (eval ? (TC)0 : xterm) + k_0; /* eval: no NaN from inf x */
}

/* dx with the activation act (a constant: 0 none, 1 ReLU, 2 leaky ReLU). */
FBN_INLINE TC FBN_SYM(xdx1)(TC dy, TC x, TC shift, TC scale, TC bias, const int act, TC k_dy,
                            TC k_x, TC mean_dy, TC k_0, TC invstd, int eval, TC slope) {
    if (act < 2)
        return FBN_SYM(dx1)(dy, x, shift, scale, bias, act, k_dy, k_x, mean_dy, k_0, invstd,
                            eval);
    const TC g = FBN_SYM(masked_x)(dy, x, (TC)0, shift, scale, bias, 2, 0, slope);
    return FBN_SYM(dx1)(g, x, shift, scale, bias, 0, k_dy, k_x, mean_dy, k_0, invstd, eval);
}

/* One channel's typed coefficients, for a run of that channel. */
typedef struct {
    TC shift, scale, bias, k_dy, k_x, mean_dy, k_0, invstd;
    int relu, eval;
    TC slope;
} FBN_SYM(chan);

/* Channel c's coefficients of op (only those op reads are loaded). */
FBN_INLINE FBN_SYM(chan) FBN_SYM(chan_of)(const int op, const FBN_SYM(tcoefs) *k, int64_t c) {
    FBN_SYM(chan) h = {.relu = k->relu, .eval = k->eval,
                       .slope = FBN_IS_EXT(op) ? k->slope : (TC)0};
    if (op == FBN_OP_COPY) return h;
    h.shift = k->shift[c];
    h.scale = k->scale[c];
    h.bias = k->bias[c];
    if (FBN_IS_DX(op)) {
        h.k_dy = k->k_dy[c];
        h.k_x = k->k_x[c];
        h.mean_dy = k->mean_dy[c];
        h.k_0 = k->k_0[c];
        h.invstd = k->invstd[c];
    }
    return h;
}

/* Output value i of op from x (FBN_OP_COPY: the source) and dy (FBN_OP_DX, the XDX
 * ops: dy; the XAFF ops with a residual: z), as stored (T: rounded once; a copy is
 * the value itself). */
FBN_INLINE T FBN_SYM(value_at)(const int op, const T *restrict x, const T *restrict dy,
                               int64_t i, const FBN_SYM(chan) *h) {
    if (op == FBN_OP_AFFINE)
        return FBN_ST(FBN_SYM(affine1)(FBN_LD(x[i]), h->shift, h->scale, h->bias, h->relu));
    if (op == FBN_OP_DX)
        return FBN_ST(FBN_SYM(dx1)(FBN_LD(dy[i]), FBN_LD(x[i]), h->shift, h->scale, h->bias,
                                   h->relu, h->k_dy, h->k_x, h->mean_dy, h->k_0, h->invstd,
                                   h->eval));
    if (op & FBN_OP_XAFF)
        return FBN_ST(FBN_SYM(xaffine1)(FBN_LD(x[i]), FBN_OP_RES(op) ? FBN_LD(dy[i]) : (TC)0,
                                        h->shift, h->scale, h->bias, h->slope, FBN_OP_ACT(op),
                                        FBN_OP_RES(op)));
    if (op & FBN_OP_XDX)
        return FBN_ST(FBN_SYM(xdx1)(FBN_LD(dy[i]), FBN_LD(x[i]), h->shift, h->scale, h->bias,
                                    FBN_OP_ACT(op), h->k_dy, h->k_x, h->mean_dy, h->k_0,
                                    h->invstd, h->eval, h->slope));
    return x[i];
}

#if FBN_CAN_STREAM
/* Output vector i of op (FBN_VLEN values), with channel coefficients splat in v. */
FBN_INLINE FBN_SYM(vec) FBN_SYM(vector_at)(const int op, const T *restrict x,
                                           const T *restrict dy, int64_t i,
                                           const FBN_SYM(vec) *v, const FBN_SYM(chan) *h) {
    if (op == FBN_OP_AFFINE)
        return FBN_SYM(affine_v)(FBN_SYM(vload)(x + i), v[0], v[1], v[2], h->relu);
    if (op == FBN_OP_DX)
        return FBN_SYM(dx_v)(FBN_SYM(vload)(dy + i), FBN_SYM(vload)(x + i), v[0], v[1], v[2],
                             h->relu, v[3], v[4], v[5], v[6], v[7], h->eval);
    if (op & FBN_OP_XAFF)
        return FBN_SYM(xaffine_v)(FBN_SYM(vload)(x + i),
                                  FBN_OP_RES(op) ? FBN_SYM(vload)(dy + i) : v[8], v[0], v[1],
                                  v[2], v[8], FBN_OP_ACT(op), FBN_OP_RES(op));
    if (op & FBN_OP_XDX) { /* a leaky ReLU's: dy through its mask, then dx1 */
        const FBN_SYM(vec) x_ = FBN_SYM(vload)(x + i);
        const FBN_SYM(vec) g =
            FBN_SYM(leaky_masked_v)(FBN_SYM(vload)(dy + i), x_, v[0], v[1], v[2], v[8]);
        return FBN_SYM(dx_v)(g, x_, v[0], v[1], v[2], 0, v[3], v[4], v[5], v[6], v[7], h->eval);
    }
    return FBN_SYM(vload)(x + i);
}
#endif

/* out[i] = op's value i for i in [0, m), streamed: vectors of FBN_VLEN values
 * stored non-temporally from the first 16-byte boundary of out; scalars (plain
 * stores) before it and after the last whole vector. The inputs are prefetched
 * FBN_STREAM_AHEAD bytes ahead once per 64 bytes of output (FBN_OP_COPY reads an
 * L1 buffer: no prefetch). Loads, prefetches and stores interleave, and lines
 * are written whole. */
FBN_INLINE void FBN_SYM(stream_values)(const int op, T *out, int64_t m, const T *restrict x,
                                       const T *restrict dy, const FBN_SYM(chan) *h) {
    int64_t i = 0;
#if FBN_CAN_STREAM && defined(FBN_NARROW)
    /* 16-bit data: a cache line (32 values) at a time, computed into a local line by
     * a loop the compiler vectorises, then streamed as 16-byte stores */
    for (; i < m && ((uintptr_t)(out + i) & 15); i++) out[i] = FBN_SYM(value_at)(op, x, dy, i, h);
    for (; i + 32 <= m; i += 32) {
        T line[32];
        if (FBN_TWO_INPUTS(op)) fbn_prefetch_stream(dy + i);
        if (op != FBN_OP_COPY) fbn_prefetch_stream(x + i);
        for (int j = 0; j < 32; j++) line[j] = FBN_SYM(value_at)(op, x, dy, i + j, h);
        for (int j = 0; j < 32; j += 8) fbn_stream16(out + i + j, line + j);
    }
#elif FBN_CAN_STREAM
    /* op's coefficients, splat: shift, scale, bias, k_dy, k_x, mean_dy, k_0, invstd,
     * and the epilogue ops' slope */
    const FBN_SYM(vec) v[9] = {FBN_SYM(vsplat)(h->shift),  FBN_SYM(vsplat)(h->scale),
                               FBN_SYM(vsplat)(h->bias),   FBN_SYM(vsplat)(h->k_dy),
                               FBN_SYM(vsplat)(h->k_x), FBN_SYM(vsplat)(h->mean_dy),
                               FBN_SYM(vsplat)(h->k_0),    FBN_SYM(vsplat)(h->invstd),
                               FBN_SYM(vsplat)(FBN_IS_EXT(op) ? h->slope : (TC)0)};
    for (; i < m && ((uintptr_t)(out + i) & 15); i++) out[i] = FBN_SYM(value_at)(op, x, dy, i, h);
    for (; i + 4 * FBN_VLEN <= m; i += 4 * FBN_VLEN) {
        if (FBN_TWO_INPUTS(op)) fbn_prefetch_stream(dy + i);
        if (op != FBN_OP_COPY) fbn_prefetch_stream(x + i);
        for (int64_t j = i; j < i + 4 * FBN_VLEN; j += FBN_VLEN)
            FBN_STREAM_V(out + j, FBN_SYM(vector_at)(op, x, dy, j, v, h));
    }
    for (; i + FBN_VLEN <= m; i += FBN_VLEN)
        FBN_STREAM_V(out + i, FBN_SYM(vector_at)(op, x, dy, i, v, h));
#endif
    for (; i < m; i++) out[i] = FBN_SYM(value_at)(op, x, dy, i, h);
}

/* Rows shape: op's m values of channel c from offset o, cached or streamed. */
FBN_INLINE void FBN_SYM(run_values)(const int op, int stream, const T *x, const T *dy, T *out,
                                    int64_t o, int64_t m, const FBN_SYM(tcoefs) *k, int64_t c) {
    const T *xr = x + o, *dr = FBN_TWO_INPUTS(op) ? dy + o : NULL;
    T *outr = out + o;
    const FBN_SYM(chan) h = FBN_SYM(chan_of)(op, k, c);
    if (stream)
        FBN_SYM(stream_values)(op, outr, m, xr, dr, &h);
    else
        for (int64_t i = 0; i < m; i++) outr[i] = FBN_SYM(value_at)(op, xr, dr, i, &h);
}

/* Columns shape: y of g rows (g a constant) of m values, a row ld (out: ldo)
 * apart, channels from ch: each channel's coefficients loaded once. */
FBN_INLINE void FBN_SYM(affine_rows)(const T *xr, int64_t ld, T *out, int64_t ldo, int64_t m,
                                     const FBN_SYM(tcoefs) *k, int64_t ch, const int g) {
    const TC *shift = k->shift + ch, *scale = k->scale + ch, *bias = k->bias + ch;
    const int relu = k->relu;
#ifdef FBN_NARROW
    /* 16-bit data: row by row, so that loads and stores are contiguous vectors (over
     * channels first, GCC vectorised across the g rows, storing 16-bit lanes one by one) */
    for (int i = 0; i < g; i++) {
        const T *xi = xr + i * ld;
        T *oi = out + i * ldo;
        FBN_IVDEP /* out may be xr (in place) */
        for (int64_t c = 0; c < m; c++)
            oi[c] = FBN_ST(FBN_SYM(affine1)(FBN_LD(xi[c]), shift[c], scale[c], bias[c], relu));
    }
#else
    FBN_IVDEP /* out may be xr (in place) */
    for (int64_t c = 0; c < m; c++)
        for (int i = 0; i < g; i++)
            out[i * ldo + c] = FBN_ST(
                FBN_SYM(affine1)(FBN_LD(xr[i * ld + c]), shift[c], scale[c], bias[c], relu));
#endif
}

/* Columns shape: y with an epilogue (op FBN_OP_XAFF + act + 4 * res, a constant;
 * zr: the residual's rows), as fbn_affine_rows_<sfx>. */
FBN_INLINE void FBN_SYM(xaffine_rows)(const int op, const T *xr, const T *zr, int64_t ld, T *out,
                                      int64_t ldo, int64_t m, const FBN_SYM(tcoefs) *k,
                                      int64_t ch, const int g) {
    const TC *shift = k->shift + ch, *scale = k->scale + ch, *bias = k->bias + ch;
    const TC slope = k->slope;
#ifdef FBN_NARROW
    /* 16-bit data: row by row (see fbn_affine_rows_<sfx>) */
    for (int i = 0; i < g; i++) {
        const T *xi = xr + i * ld, *zi = FBN_OP_RES(op) ? zr + i * ld : NULL;
        T *oi = out + i * ldo;
        FBN_IVDEP /* out may be xr (in place) */
        for (int64_t c = 0; c < m; c++)
            oi[c] = FBN_ST(FBN_SYM(xaffine1)(FBN_LD(xi[c]), FBN_OP_RES(op) ? FBN_LD(zi[c]) : (TC)0,
                                             shift[c], scale[c], bias[c], slope, FBN_OP_ACT(op),
                                             FBN_OP_RES(op)));
    }
#else
    FBN_IVDEP /* out may be xr (in place) */
    for (int64_t c = 0; c < m; c++)
        for (int i = 0; i < g; i++)
            out[i * ldo + c] = FBN_ST(FBN_SYM(xaffine1)(
                FBN_LD(xr[i * ld + c]), FBN_OP_RES(op) ? FBN_LD(zr[i * ld + c]) : (TC)0, shift[c],
                scale[c], bias[c], slope, FBN_OP_ACT(op), FBN_OP_RES(op)));
#endif
}

/* Columns shape: dx of g rows (g a constant) of m values, a row ld (out: ldo)
 * apart, channels from ch: each channel's coefficients loaded once. relu is a
 * constant too: without ReLU the mask's arithmetic and loads drop out (this
 * loop is compute-bound when the data is in cache). */
FBN_INLINE void FBN_SYM(dx_rows_as)(const T *dr, const T *xr, int64_t ld, T *out, int64_t ldo,
                                    int64_t m, const FBN_SYM(tcoefs) *k, int64_t ch, const int g,
                                    const int relu) {
    const TC *shift = k->shift + ch, *scale = k->scale + ch, *bias = k->bias + ch;
    const TC *k_dy = k->k_dy + ch, *k_x = k->k_x + ch, *mdy = k->mean_dy + ch;
    const TC *k_0 = k->k_0 + ch, *inv = k->invstd + ch;
    const int eval = k->eval;
    const TC slope = k->slope;
#ifdef FBN_NARROW
    /* 16-bit data: row by row (see fbn_affine_rows_<sfx>) */
    for (int i = 0; i < g; i++) {
        const T *di = dr + i * ld, *xi = xr + i * ld;
        T *oi = out + i * ldo;
        FBN_IVDEP /* out may be dr (in place) */
        for (int64_t c = 0; c < m; c++)
            oi[c] = FBN_ST(FBN_SYM(xdx1)(FBN_LD(di[c]), FBN_LD(xi[c]), shift[c], scale[c],
                                         bias[c], relu, k_dy[c], k_x[c], mdy[c], k_0[c], inv[c],
                                         eval, slope));
    }
    return;
#endif
    if ((ld * (int64_t)sizeof(T)) % 4096 == 0) {
        /* rows a multiple of 4 KB apart (C a power of two): a store to out's row i
         * has the low address bits of the next load from row i + 1, which then
         * waits for it (4K aliasing), so all the group's loads come first */
        FBN_IVDEP /* too many pointers for runtime alias checks; out may be dr */
        for (int64_t c = 0; c < m; c++) {
            TC d[FBN_GROUP], v[FBN_GROUP];
            for (int i = 0; i < g; i++) {
                d[i] = FBN_LD(dr[i * ld + c]);
                v[i] = FBN_LD(xr[i * ld + c]);
            }
            for (int i = 0; i < g; i++)
                out[i * ldo + c] = FBN_ST(FBN_SYM(xdx1)(d[i], v[i], shift[c], scale[c], bias[c],
                                                        relu, k_dy[c], k_x[c], mdy[c], k_0[c],
                                                        inv[c], eval, slope));
        }
    } else { /* (this order was slower there, e.g. NHWC's 64 channels) */
        FBN_IVDEP
        for (int64_t c = 0; c < m; c++)
            for (int i = 0; i < g; i++)
                out[i * ldo + c] = FBN_ST(
                    FBN_SYM(xdx1)(FBN_LD(dr[i * ld + c]), FBN_LD(xr[i * ld + c]), shift[c],
                                  scale[c], bias[c], relu, k_dy[c], k_x[c], mdy[c], k_0[c],
                                  inv[c], eval, slope));
    }
}

/* Columns shape: op's g rows (g a constant) of m values from offset o, a row ld
 * apart, written ldo apart from out, channels from ch. */
FBN_INLINE void FBN_SYM(span_rows)(const int op, const T *x, const T *dy, int64_t o, int64_t ld,
                                   T *out, int64_t ldo, int64_t m, const FBN_SYM(tcoefs) *k,
                                   int64_t ch, const int g) {
    if (op == FBN_OP_AFFINE)
        FBN_SYM(affine_rows)(x + o, ld, out, ldo, m, k, ch, g);
    else if (op & FBN_OP_XAFF)
        FBN_SYM(xaffine_rows)(op, x + o, FBN_OP_RES(op) ? dy + o : NULL, ld, out, ldo, m, k, ch, g);
    else if (op & FBN_OP_XDX)
        FBN_SYM(dx_rows_as)(dy + o, x + o, ld, out, ldo, m, k, ch, g, FBN_OP_ACT(op));
    else if (k->relu)
        FBN_SYM(dx_rows_as)(dy + o, x + o, ld, out, ldo, m, k, ch, g, 1);
    else
        FBN_SYM(dx_rows_as)(dy + o, x + o, ld, out, ldo, m, k, ch, g, 0);
}
