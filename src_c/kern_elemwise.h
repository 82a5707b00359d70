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

/* dy - mean_dy comes first: a constant dy over a constant channel gives dx == 0. */
FBN_INLINE TC FBN_SYM(dx1)(TC dy, TC x, TC shift, TC scale, TC bias, int relu, TC k_dy,
                           TC k_x, TC mean_dy, TC k_0, TC invstd, int eval) {
    TC g = FBN_SYM(masked)(dy, x, shift, scale, bias, relu);
    TC xterm = k_x * ((x - shift) * invstd);
    return k_dy * (g - mean_dy) + (eval ? (TC)0 : xterm) + k_0; /* eval: no NaN from inf x */
}

/* One channel's typed coefficients, for a run of that channel. */
typedef struct {
    TC shift, scale, bias, k_dy, k_x, mean_dy, k_0, invstd;
    int relu, eval;
} FBN_SYM(chan);

/* Channel c's coefficients of op (only those op reads are loaded). */
FBN_INLINE FBN_SYM(chan) FBN_SYM(chan_of)(const int op, const FBN_SYM(tcoefs) *k, int64_t c) {
    FBN_SYM(chan) h = {.relu = k->relu, .eval = k->eval};
    if (op == FBN_OP_COPY) return h;
    h.shift = k->shift[c];
    h.scale = k->scale[c];
    h.bias = k->bias[c];
    if (op == FBN_OP_DX) {
        h.k_dy = k->k_dy[c];
        h.k_x = k->k_x[c];
        h.mean_dy = k->mean_dy[c];
        h.k_0 = k->k_0[c];
        h.invstd = k->invstd[c];
    }
    return h;
}

/* Output value i of op from x (FBN_OP_COPY: the source) and dy (FBN_OP_DX only), as
 * stored (T: rounded once; a copy is the value itself). */
FBN_INLINE T FBN_SYM(value_at)(const int op, const T *restrict x, const T *restrict dy,
                               int64_t i, const FBN_SYM(chan) *h) {
    if (op == FBN_OP_AFFINE)
        return FBN_ST(FBN_SYM(affine1)(FBN_LD(x[i]), h->shift, h->scale, h->bias, h->relu));
    if (op == FBN_OP_DX)
        return FBN_ST(FBN_SYM(dx1)(FBN_LD(dy[i]), FBN_LD(x[i]), h->shift, h->scale, h->bias,
                                   h->relu, h->k_dy, h->k_x, h->mean_dy, h->k_0, h->invstd,
                                   h->eval));
    return x[i];
}

#ifdef FBN_NARROW
/* 16-bit data: out[i] = op's value i for i in [0, m), m <= FBN_HBLOCK, of one
 * channel: x (and dy) widened a block at a time (FBN_LD_N: the dispatched ISA's
 * vector conversions), fbn_value_at_<sfx>'s arithmetic in a float loop the
 * compiler vectorises as for float32, and out narrowed from a block (FBN_ST_N):
 * bitwise fbn_value_at_<sfx>'s values. out may be x or dy (read first). */
FBN_INLINE void FBN_SYM(block_values)(const int op, const T *x, const T *dy, T *out, int64_t m,
                                      const FBN_SYM(chan) *h) {
    TC xb[FBN_HBLOCK], db[FBN_HBLOCK], ob[FBN_HBLOCK];
    if (op == FBN_OP_COPY) {
        memmove(out, x, (size_t)m * sizeof(T));
        return;
    }
    const TC shift = h->shift, scale = h->scale, bias = h->bias;
    const int relu = h->relu;
    FBN_LD_N(x, xb, m);
    if (op == FBN_OP_AFFINE) {
        for (int64_t i = 0; i < m; i++) ob[i] = FBN_SYM(affine1)(xb[i], shift, scale, bias, relu);
    } else {
        const TC k_dy = h->k_dy, k_x = h->k_x, mean_dy = h->mean_dy, k_0 = h->k_0;
        const TC invstd = h->invstd;
        const int eval = h->eval;
        FBN_LD_N(dy, db, m);
        for (int64_t i = 0; i < m; i++)
            ob[i] = FBN_SYM(dx1)(db[i], xb[i], shift, scale, bias, relu, k_dy, k_x, mean_dy,
                                 k_0, invstd, eval);
    }
    FBN_ST_N(ob, out, m);
}
#endif

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
    /* 16-bit data: blocks of 16-byte vectors (8 values) computed into a local
     * buffer (fbn_block_values_<sfx>), then streamed as 16-byte stores. Every
     * whole vector goes non-temporally, as the wider types' do: a plain store into
     * a line otherwise streamed (a run's end) costs a read of that line. */
    for (; i < m && ((uintptr_t)(out + i) & 15); i++) out[i] = FBN_SYM(value_at)(op, x, dy, i, h);
    for (; i + 8 <= m;) {
        T line[FBN_HBLOCK];
        const int64_t n = m - i < FBN_HBLOCK ? (m - i) / 8 * 8 : FBN_HBLOCK;
        for (int64_t j = 0; j < n; j += 32) {
            if (op == FBN_OP_DX) fbn_prefetch_stream(dy + i + j);
            if (op != FBN_OP_COPY) fbn_prefetch_stream(x + i + j);
        }
        if (op == FBN_OP_COPY) { /* from an L1 buffer: streamed from it directly */
            for (int64_t j = 0; j < n; j += 8) fbn_stream16(out + i + j, x + i + j);
        } else {
            FBN_SYM(block_values)(op, x + i, op == FBN_OP_DX ? dy + i : NULL, line, n, h);
            for (int64_t j = 0; j < n; j += 8) fbn_stream16(out + i + j, line + j);
        }
        i += n;
    }
#elif FBN_CAN_STREAM
    /* op's coefficients, splat: shift, scale, bias, k_dy, k_x, mean_dy, k_0, invstd */
    const FBN_SYM(vec) v[8] = {FBN_SYM(vsplat)(h->shift),  FBN_SYM(vsplat)(h->scale),
                               FBN_SYM(vsplat)(h->bias),   FBN_SYM(vsplat)(h->k_dy),
                               FBN_SYM(vsplat)(h->k_x), FBN_SYM(vsplat)(h->mean_dy),
                               FBN_SYM(vsplat)(h->k_0),    FBN_SYM(vsplat)(h->invstd)};
    for (; i < m && ((uintptr_t)(out + i) & 15); i++) out[i] = FBN_SYM(value_at)(op, x, dy, i, h);
    for (; i + 4 * FBN_VLEN <= m; i += 4 * FBN_VLEN) {
        if (op == FBN_OP_DX) fbn_prefetch_stream(dy + i);
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
    const T *xr = x + o, *dr = op == FBN_OP_DX ? dy + o : NULL;
    T *outr = out + o;
    const FBN_SYM(chan) h = FBN_SYM(chan_of)(op, k, c);
    if (stream)
        FBN_SYM(stream_values)(op, outr, m, xr, dr, &h);
    else
#ifdef FBN_NARROW
        for (int64_t i = 0; i < m; i += FBN_HBLOCK)
            FBN_SYM(block_values)(op, xr + i, dr ? dr + i : NULL, outr + i,
                                  m - i < FBN_HBLOCK ? m - i : FBN_HBLOCK, &h);
#else
        for (int64_t i = 0; i < m; i++) outr[i] = FBN_SYM(value_at)(op, xr, dr, i, &h);
#endif
}

/* Columns shape: y of g rows (g a constant) of m values, a row ld (out: ldo)
 * apart, channels from ch: each channel's coefficients loaded once. */
FBN_INLINE void FBN_SYM(affine_rows)(const T *xr, int64_t ld, T *out, int64_t ldo, int64_t m,
                                     const FBN_SYM(tcoefs) *k, int64_t ch, const int g) {
    const TC *shift = k->shift + ch, *scale = k->scale + ch, *bias = k->bias + ch;
    const int relu = k->relu;
#ifdef FBN_NARROW
    /* 16-bit data: blocks of FBN_HBLOCK channels of the g rows widened into a float
     * buffer (all rows' loads first, as the wider types' loop has them in flight
     * together), computed row by row and narrowed (FBN_LD_N, FBN_ST_N: vector
     * conversions) */
    for (int64_t c0 = 0; c0 < m; c0 += FBN_HBLOCK) {
        TC xb[FBN_GROUP * FBN_HBLOCK], ob[FBN_HBLOCK];
        const int64_t n = m - c0 < FBN_HBLOCK ? m - c0 : FBN_HBLOCK;
        for (int i = 0; i < g; i++) FBN_LD_N(xr + i * ld + c0, xb + i * FBN_HBLOCK, n);
        for (int i = 0; i < g; i++) {
            const TC *xi = xb + i * FBN_HBLOCK;
            for (int64_t c = 0; c < n; c++)
                ob[c] = FBN_SYM(affine1)(xi[c], shift[c0 + c], scale[c0 + c], bias[c0 + c], relu);
            FBN_ST_N(ob, out + i * ldo + c0, n);
        }
    }
#else
    FBN_IVDEP /* out may be xr (in place) */
    for (int64_t c = 0; c < m; c++)
        for (int i = 0; i < g; i++)
            out[i * ldo + c] = FBN_ST(
                FBN_SYM(affine1)(FBN_LD(xr[i * ld + c]), shift[c], scale[c], bias[c], relu));
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
#ifdef FBN_NARROW
    /* 16-bit data: in blocks, all rows' loads first (see fbn_affine_rows_<sfx>) */
    for (int64_t b = 0; b < m; b += FBN_HBLOCK) {
        TC db[FBN_GROUP * FBN_HBLOCK], xb[FBN_GROUP * FBN_HBLOCK], ob[FBN_HBLOCK];
        const int64_t n = m - b < FBN_HBLOCK ? m - b : FBN_HBLOCK;
        for (int i = 0; i < g; i++) {
            FBN_LD_N(dr + i * ld + b, db + i * FBN_HBLOCK, n);
            FBN_LD_N(xr + i * ld + b, xb + i * FBN_HBLOCK, n);
        }
        for (int i = 0; i < g; i++) {
            const TC *di = db + i * FBN_HBLOCK, *xi = xb + i * FBN_HBLOCK;
            for (int64_t c = 0; c < n; c++)
                ob[c] = FBN_SYM(dx1)(di[c], xi[c], shift[b + c], scale[b + c], bias[b + c], relu,
                                     k_dy[b + c], k_x[b + c], mdy[b + c], k_0[b + c], inv[b + c],
                                     eval);
            FBN_ST_N(ob, out + i * ldo + b, n);
        }
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
                out[i * ldo + c] = FBN_ST(FBN_SYM(dx1)(d[i], v[i], shift[c], scale[c], bias[c],
                                                       relu, k_dy[c], k_x[c], mdy[c], k_0[c],
                                                       inv[c], eval));
        }
    } else { /* (this order was slower there, e.g. NHWC's 64 channels) */
        FBN_IVDEP
        for (int64_t c = 0; c < m; c++)
            for (int i = 0; i < g; i++)
                out[i * ldo + c] = FBN_ST(
                    FBN_SYM(dx1)(FBN_LD(dr[i * ld + c]), FBN_LD(xr[i * ld + c]), shift[c],
                                 scale[c], bias[c], relu, k_dy[c], k_x[c], mdy[c], k_0[c],
                                 inv[c], eval));
    }
}

/* Columns shape: op's g rows (g a constant) of m values from offset o, a row ld
 * apart, written ldo apart from out, channels from ch. */
FBN_INLINE void FBN_SYM(span_rows)(const int op, const T *x, const T *dy, int64_t o, int64_t ld,
                                   T *out, int64_t ldo, int64_t m, const FBN_SYM(tcoefs) *k,
                                   int64_t ch, const int g) {
    if (op == FBN_OP_AFFINE)
        FBN_SYM(affine_rows)(x + o, ld, out, ldo, m, k, ch, g);
    else if (k->relu)
        FBN_SYM(dx_rows_as)(dy + o, x + o, ld, out, ldo, m, k, ch, g, 1);
    else
        FBN_SYM(dx_rows_as)(dy + o, x + o, ld, out, ldo, m, k, ch, g, 0);
}
