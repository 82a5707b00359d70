/* The elementwise passes' arithmetic: y (affine) and dx, per value, per run of one
 * channel (rows shape, cached or streamed) and per row group (columns shape). The
 * walk over a tile is kern_walk.h. A per-dtype template: see kern_dtype.h for T,
 * TC and FBN_SYM; op is FBN_OP_AFFINE or FBN_OP_DX (or FBN_OP_COPY), or an epilogue
 * op (FBN_OP_XAFF, FBN_OP_XDX: plan.h), always a compile-time constant. */

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

/* dx with the activation act (a constant: 0 none, 1 ReLU, 2 leaky ReLU), its
 * pre-activation over the residual z when res (a constant; act 2 only). */
FBN_INLINE TC FBN_SYM(xdx1)(TC dy, TC x, TC z, TC shift, TC scale, TC bias, const int act,
                            const int res, TC k_dy, TC k_x, TC mean_dy, TC k_0, TC invstd,
                            int eval, TC slope) {
    if (act < 2)
        return FBN_SYM(dx1)(dy, x, shift, scale, bias, act, k_dy, k_x, mean_dy, k_0, invstd,
                            eval);
    const TC g = FBN_SYM(masked_x)(dy, x, z, shift, scale, bias, 2, res, slope);
    return FBN_SYM(dx1)(g, x, shift, scale, bias, 0, k_dy, k_x, mean_dy, k_0, invstd, eval);
}

/* One channel's typed coefficients, for a run of that channel. */
typedef struct {
    TC shift, scale, bias, k_dy, k_x, mean_dy, k_0, invstd;
    int relu, eval;
    TC slope;
    const T *x0, *z0; /* FBN_OP_XDX + 6: the residual of x's value x0[i] is z0[i] */
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
        return FBN_ST(FBN_SYM(xdx1)(
            FBN_LD(dy[i]), FBN_LD(x[i]), FBN_OP_RES(op) ? FBN_LD(h->z0[x + i - h->x0]) : (TC)0,
            h->shift, h->scale, h->bias, FBN_OP_ACT(op), FBN_OP_RES(op), h->k_dy, h->k_x,
            h->mean_dy, h->k_0, h->invstd, h->eval, h->slope));
    return x[i];
}

/* Values of one chunk of a streamed run (an L1 buffer; see tuning.h). */
#define FBN_STREAM_CHUNK (FBN_STREAM_CHUNK_BYTES / (int)sizeof(T))

/* The chunk, in values, of a streamed run of m values (fetch: its inputs re-read
 * from the caches, a constant). */
FBN_INLINE int64_t FBN_SYM(stream_chunk)(const int fetch, int64_t m) {
#ifdef FBN_NARROW
    (void)fetch, (void)m;
    return FBN_STREAM_CHUNK;
#else
    const int64_t bytes = fetch ? FBN_STREAM_FETCH_BYTES
                          : m * (int64_t)sizeof(T) >= FBN_STREAM_LONG_RUN ? FBN_STREAM_LONG_BYTES
                                                                          : FBN_STREAM_CHUNK_BYTES;
    return bytes / (int64_t)sizeof(T);
#endif
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
    } else if (op & FBN_OP_XAFF) {
        const TC slope = h->slope;
        if (FBN_OP_RES(op)) FBN_LD_N(dy, db, m);
        for (int64_t i = 0; i < m; i++)
            ob[i] = FBN_SYM(xaffine1)(xb[i], FBN_OP_RES(op) ? db[i] : (TC)0, shift, scale, bias,
                                      slope, FBN_OP_ACT(op), FBN_OP_RES(op));
    } else {
        const TC k_dy = h->k_dy, k_x = h->k_x, mean_dy = h->mean_dy, k_0 = h->k_0;
        const TC invstd = h->invstd, slope = h->slope;
        const int eval = h->eval;
        FBN_LD_N(dy, db, m);
        if (op == FBN_OP_DX) {
            for (int64_t i = 0; i < m; i++)
                ob[i] = FBN_SYM(dx1)(db[i], xb[i], shift, scale, bias, relu, k_dy, k_x, mean_dy,
                                     k_0, invstd, eval);
        } else { /* the XDX ops: their own activation, a constant */
            TC zb[FBN_HBLOCK];
            if (FBN_OP_RES(op)) FBN_LD_N(h->z0 + (x - h->x0), zb, m);
            for (int64_t i = 0; i < m; i++)
                ob[i] = FBN_SYM(xdx1)(db[i], xb[i], FBN_OP_RES(op) ? zb[i] : (TC)0, shift, scale,
                                      bias, FBN_OP_ACT(op), FBN_OP_RES(op), k_dy, k_x, mean_dy,
                                      k_0, invstd, eval, slope);
        }
    }
    FBN_ST_N(ob, out, m);
}

#include "kern_half_dx.h" /* dx in registers */
#include "kern_half_y.h"  /* y in registers where that pays */

/* 16-bit data, rows shape: out[i] = op's value i for i in [0, m) of one channel, a
 * chunk of a streamed run (stream) or a cached run: y and dx in registers where
 * fbn_half_run_y_<sfx> / fbn_half_run_dx_<sfx> take them (the CPU's level; cached
 * runs only from level FBN_HALF_REGS_CACHED and of FBN_HALF_CACHED_RUN values or
 * more, their dx only with FBN_HALF_DX_CACHED), else blocks of FBN_HBLOCK values
 * (fbn_block_values_<sfx>); runs shorter than FBN_HALF_SCALAR_RUN by
 * fbn_value_at_<sfx> itself (but a dx that registers take: they were faster).
 * Bitwise fbn_value_at_<sfx>'s values. */
FBN_INLINE void FBN_SYM(half_values)(const int op, int stream, const T *x, const T *dy, T *out,
                                     int64_t m, const FBN_SYM(chan) *h) {
    const int dx_cached = op == FBN_OP_DX && FBN_HALF_DX_CACHED;
    if (!stream && !dx_cached && m < FBN_HALF_SCALAR_RUN) { /* short runs (kern_dtype.h) */
        for (int64_t i = 0; i < m; i++) out[i] = FBN_SYM(value_at)(op, x, dy, i, h);
        return;
    }
    if (stream || ((op == FBN_OP_AFFINE || dx_cached) && FBN_HALF_REGS_CACHED &&
                   m >= FBN_HALF_CACHED_RUN && FBN_SYM(half_isa)() >= FBN_HALF_REGS_CACHED)) {
        if (op == FBN_OP_AFFINE &&
            FBN_SYM(half_run_y)(0, x, out, m, h->shift, h->scale, h->bias, h->relu))
            return;
        if (op == FBN_OP_DX && FBN_SYM(half_run_dx)(0, dy, x, out, m, h)) return;
    }
    for (int64_t i = 0; i < m; i += FBN_HBLOCK)
        FBN_SYM(block_values)(op, x + i, dy ? dy + i : NULL, out + i,
                              m - i < FBN_HBLOCK ? m - i : FBN_HBLOCK, h);
}
#endif


/* out[i] = op's value i for i in [0, m), streamed: chunks computed into an L1
 * buffer by the loop of the cached path (which the compiler vectorises for the
 * dispatched instruction set: the same values) and written out by
 * fbn_stream_copy, with the widest non-temporal stores the CPU has. The buffer
 * holds each chunk at out's offset within a line, and chunks after the first start
 * on a line of out, so that the copy's loads and stores are aligned alike. With
 * fetch (inputs re-read from the caches: fused passes), the inputs of each chunk
 * are prefetched FBN_STREAM_AHEAD bytes ahead, a line at a time; inputs read from
 * memory are left to the hardware prefetcher, as in the columns shape (software
 * prefetches there made inference up to 1.6x slower: docs/performance.md). */
FBN_INLINE void FBN_SYM(stream_chunks)(const int op, const int fetch, T *out, int64_t m,
                                       const T *restrict x, const T *restrict dy,
                                       const FBN_SYM(chan) *h) {
#if FBN_CAN_STREAM
    T buf[FBN_STREAM_CHUNK] __attribute__((aligned(64)));
    const int64_t chunk = FBN_SYM(stream_chunk)(fetch, m);
    int64_t off = (int64_t)((uintptr_t)out % 64 / sizeof(T)); /* out's place in its line */
    for (int64_t i = 0, n; i < m; i += n, off = 0) {
        n = m - i < chunk - off ? m - i : chunk - off;
        const T *restrict xi = x + i;
        const T *restrict di = FBN_TWO_INPUTS(op) ? dy + i : NULL;
        T *restrict to = buf + off;
        for (int64_t b = 0; fetch && b < n * (int64_t)sizeof(T); b += 64) {
            if (FBN_TWO_INPUTS(op)) fbn_prefetch_stream((const char *)di + b);
            fbn_prefetch_stream((const char *)xi + b);
        }
#ifdef FBN_NARROW /* bitwise fbn_value_at_<sfx>'s values */
        FBN_SYM(half_values)(op, 1, xi, di, to, n, h);
#else
        for (int64_t j = 0; j < n; j++) to[j] = FBN_SYM(value_at)(op, xi, di, j, h);
#endif
        fbn_stream_copy(out + i, to, n * (int64_t)sizeof(T));
    }
#else
    for (int64_t i = 0; i < m; i++) out[i] = FBN_SYM(value_at)(op, x, dy, i, h);
#endif
}

/* A streamed output of m values at out from x (and dy, else NULL): the part of it
 * that goes straight from the register loops' vectors by non-temporal stores,
 * without the L1 buffer and its copy, whose turns at the memory cost
 * (docs/performance.md). 16-bit data: 32 bytes a step (nt: 1, one store, out +
 * head aligned to 32; 2, two); the head values before out's first 16-byte
 * boundary, and those after the last whole step, through the buffer (runs and
 * rows of most shapes have neither). float32 / float64 (kern_direct.h): whole
 * 64-byte lines from out's first line boundary, by stores of nt bytes (64 or 32:
 * fbn_stream_width()). body 0: none, where streams are narrower than 32 bytes
 * (FASTBN_STREAM_WIDTH) or out lies just past an input within a page
 * (FBN_STREAM_ALIAS_BYTES, tuning.h). */
typedef struct {
    int64_t head, body;
    int nt;
} FBN_SYM(direct);

FBN_INLINE FBN_SYM(direct) FBN_SYM(direct_part)(const T *out, int64_t m, const T *x,
                                                const T *dy) {
    FBN_SYM(direct) d = {0, 0, 0};
    const uintptr_t past_x = ((uintptr_t)out - (uintptr_t)x) % 4096; /* see tuning.h */
    const uintptr_t past_dy = dy ? ((uintptr_t)out - (uintptr_t)dy) % 4096 : 0;
    const uintptr_t near = FBN_STREAM_ALIAS_BYTES; /* past - 1 < near: 0 < past <= near */
    if ((uintptr_t)out % sizeof(T) || fbn_stream_width() < 32 || past_x - 1 < near ||
        (dy && past_dy - 1 < near))
        return d;
#ifdef FBN_NARROW
    const int64_t step = 32 / (int64_t)sizeof(T); /* values of a step */
    d.head = (int64_t)((16 - (uintptr_t)out % 16) % 16 / sizeof(T));
    d.body = m > d.head ? (m - d.head) / step * step : 0;
    d.nt = (uintptr_t)(out + d.head) % 32 ? 2 : 1;
#else
    d.head = (int64_t)((64 - (uintptr_t)out % 64) % 64 / sizeof(T));
    d.body = m > d.head ? (m - d.head) / FBN_LINE_VALUES * FBN_LINE_VALUES : 0;
    d.nt = fbn_stream_width();
#endif
    return d;
}

#ifndef FBN_NARROW
#include "kern_direct.h" /* float32 / float64 streamed rows and runs from registers */
#endif

/* Rows shape: op's m values of channel h's run (out: the direct part below) from
 * the register loops' vectors, stores of nt (see fbn_direct_part_<sfx>): 16-bit
 * data by fbn_half_run_y_<sfx> or fbn_half_run_dx_<sfx>, float32 / float64 by
 * fbn_direct_run_<sfx> (fetch: see there). Returns 0 (nothing written) where the
 * CPU has no register form of it. */
FBN_INLINE int FBN_SYM(run_regs)(const int op, int nt, int fetch, const T *x, const T *dy,
                                 T *out, int64_t m, const FBN_SYM(chan) *h) {
#ifdef FBN_NARROW
    (void)fetch;
    return op == FBN_OP_AFFINE
               ? FBN_SYM(half_run_y)(nt, x, out, m, h->shift, h->scale, h->bias, h->relu)
               : FBN_SYM(half_run_dx)(nt, dy, x, out, m, h);
#else
    return FBN_SYM(direct_run)(op, nt, fetch, x, dy, out, m, h);
#endif
}

/* Rows shape: a streamed run's direct part (fbn_direct_part_<sfx>) by
 * fbn_run_regs_<sfx>, the rest by fbn_stream_chunks_<sfx>. Returns 0 (nothing
 * written) where op is another or no part goes direct. fetch: the inputs are
 * re-read from the caches (fused passes), where float32 / float64 dx prefetches
 * them too (fbn_direct_run_<sfx>; y always does, 16-bit y too: docs/performance.md). */
FBN_INLINE int FBN_SYM(stream_regs)(const int op, const int fetch, T *out, int64_t m,
                                    const T *x, const T *dy, const FBN_SYM(chan) *h) {
    if (op != FBN_OP_AFFINE && op != FBN_OP_DX) return 0; /* no register form; op a constant */
    const FBN_SYM(direct) d = FBN_SYM(direct_part)(out, m, x, FBN_TWO_INPUTS(op) ? dy : NULL);
    const int64_t head = d.head, body = d.body, tail = m - d.head - d.body;
    T *ob = out + head;
    if (!body ||
        !FBN_SYM(run_regs)(op, d.nt, fetch, x + head, FBN_TWO_INPUTS(op) ? dy + head : NULL, ob,
                           body, h))
        return 0;
    if (head) FBN_SYM(stream_chunks)(op, fetch, out, head, x, dy, h);
    if (tail)
        FBN_SYM(stream_chunks)(op, fetch, ob + body, tail, x + head + body,
                               FBN_TWO_INPUTS(op) ? dy + head + body : NULL, h);
    return 1;
}

/* fbn_stream_chunks_<sfx>, or fbn_stream_regs_<sfx> where it takes the run. */
FBN_INLINE void FBN_SYM(stream_values)(const int op, const int fetch, T *out, int64_t m,
                                       const T *x, const T *dy, const FBN_SYM(chan) *h) {
#if FBN_CAN_STREAM
    if (FBN_SYM(stream_regs)(op, fetch, out, m, x, dy, h)) return;
#endif
    FBN_SYM(stream_chunks)(op, fetch, out, m, x, dy, h);
}

/* Rows shape: op's m values of channel c from offset o (the inputs': o + skip, see
 * fbn_row_gap), cached or streamed (fetch: see fbn_stream_values_<sfx>). */
FBN_INLINE void FBN_SYM(run_values)(const int op, int stream, const int fetch, const T *x,
                                    const T *dy, T *out, int64_t o, int64_t skip, int64_t m,
                                    const FBN_SYM(tcoefs) *k, int64_t c) {
    const T *xr = x + o + skip, *dr = FBN_TWO_INPUTS(op) ? dy + o + skip : NULL;
    T *outr = out + o;
    FBN_SYM(chan) h = FBN_SYM(chan_of)(op, k, c);
    if (FBN_IS_DX(op) && FBN_OP_RES(op)) {
        h.x0 = xr;
        h.z0 = k->z + o + skip;
    }
    if (stream)
        FBN_SYM(stream_values)(op, fetch, outr, m, xr, dr, &h);
    else
#ifdef FBN_NARROW
        FBN_SYM(half_values)(op, 0, xr, dr, outr, m, &h);
#else
        for (int64_t i = 0; i < m; i++) outr[i] = FBN_SYM(value_at)(op, xr, dr, i, &h);
#endif
}

#ifndef FBN_NARROW
/* fbn_affine_rows_<sfx> into the caches, relu a constant. A channel's
 * coefficients are read once for its g rows, into locals: read in the rows'
 * loop, they were reloaded for every row (a store to out might have changed
 * them, for all GCC knows). */
FBN_INLINE void FBN_SYM(affine_rows_as)(const T *xr, int64_t ld, T *out, int64_t ldo, int64_t m,
                                        const FBN_SYM(tcoefs) *k, int64_t ch, const int g,
                                        const int relu) {
    const TC *shift = k->shift + ch, *scale = k->scale + ch, *bias = k->bias + ch;
    FBN_IVDEP /* out may be xr (in place) */
    for (int64_t c = 0; c < m; c++) {
        const TC sh = shift[c], sc = scale[c], bi = bias[c];
        FBN_UNROLL_ROWS
        for (int i = 0; i < g; i++)
            out[i * ldo + c] = FBN_ST(FBN_SYM(affine1)(FBN_LD(xr[i * ld + c]), sh, sc, bi, relu));
    }
}
#endif

/* Columns shape: y of g rows (g a constant) of m values, a row ld (out: ldo)
 * apart, channels from ch. cached (a constant): out is the output itself, not
 * the L1 buffer of a streamed output. Streamed, the loop of fbn_affine_rows_as_<sfx>
 * took 1.13-1.25x the time of this one, which reloads the coefficients for each
 * row and selects the ReLU's value at run time (8192x4096, docs/performance.md). */
FBN_INLINE void FBN_SYM(affine_rows)(const T *xr, int64_t ld, T *out, int64_t ldo, int64_t m,
                                     const FBN_SYM(tcoefs) *k, int64_t ch, const int g,
                                     const int cached) {
#ifdef FBN_NARROW /* kern_half_y.h */
    (void)cached;
    FBN_SYM(half_y_rows)(0, xr, ld, out, ldo, m, k, ch, g);
#else
    const TC *shift = k->shift + ch, *scale = k->scale + ch, *bias = k->bias + ch;
    const int relu = k->relu;
    if (cached && relu) /* a constant in each loop: without ReLU, no compare and select */
        FBN_SYM(affine_rows_as)(xr, ld, out, ldo, m, k, ch, g, 1);
    else if (cached)
        FBN_SYM(affine_rows_as)(xr, ld, out, ldo, m, k, ch, g, 0);
    else {
        FBN_IVDEP /* out may be xr (in place) */
        for (int64_t c = 0; c < m; c++)
            for (int i = 0; i < g; i++)
                out[i * ldo + c] = FBN_ST(
                    FBN_SYM(affine1)(FBN_LD(xr[i * ld + c]), shift[c], scale[c], bias[c], relu));
    }
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

/* Columns shape, into the caches: dx of g rows (g a constant) of m values, a row
 * ld (out: ldo) apart, channels from ch, each channel's coefficients read once
 * for its g rows, into locals (read in the rows' loop, as fbn_dx_rows_as_<sfx>
 * does, GCC reloads them for every row: a store to out might have changed them).
 * relu and loads_first constants (see fbn_dx_rows_as_<sfx>). Into the L1 buffer
 * of a streamed output, this loop was slower (docs/performance.md). */
#ifndef FBN_NARROW
FBN_INLINE void FBN_SYM(dx_rows_cached)(const T *dr, const T *xr, int64_t ld, T *out,
                                        int64_t ldo, int64_t m, const FBN_SYM(tcoefs) *k,
                                        int64_t ch, const int g, const int relu,
                                        const int loads_first) {
    const TC *shift = k->shift + ch, *scale = k->scale + ch, *bias = k->bias + ch;
    const TC *k_dy = k->k_dy + ch, *k_x = k->k_x + ch, *mdy = k->mean_dy + ch;
    const TC *k_0 = k->k_0 + ch, *inv = k->invstd + ch;
    const int eval = k->eval;
    const TC slope = k->slope;
    FBN_IVDEP /* too many pointers for runtime alias checks; out may be dr */
    for (int64_t c = 0; c < m; c++) {
        const TC sh = shift[c], sc = relu ? scale[c] : (TC)0, bi = relu ? bias[c] : (TC)0;
        const TC kd = k_dy[c], kx = k_x[c], md = mdy[c], k0 = k_0[c], is = inv[c];
        TC d[FBN_GROUP], v[FBN_GROUP];
        for (int i = 0; i < g; i++) {
            d[i] = FBN_LD(dr[i * ld + c]);
            v[i] = FBN_LD(xr[i * ld + c]);
            if (!loads_first)
                out[i * ldo + c] = FBN_ST(FBN_SYM(xdx1)(d[i], v[i], (TC)0, sh, sc, bi, relu, 0,
                                                        kd, kx, md, k0, is, eval, slope));
        }
        if (loads_first)
            for (int i = 0; i < g; i++)
                out[i * ldo + c] = FBN_ST(FBN_SYM(xdx1)(d[i], v[i], (TC)0, sh, sc, bi, relu, 0,
                                                        kd, kx, md, k0, is, eval, slope));
    }
}
#endif

/* Columns shape: dx of g rows (g a constant) of m values, a row ld (out: ldo)
 * apart, channels from ch; cached (a constant, see fbn_affine_rows_<sfx>): out is
 * the output itself, see fbn_dx_rows_cached_<sfx>. relu is a constant too:
 * without ReLU the mask's arithmetic and loads drop out (this loop is
 * compute-bound when the data is in cache). */
FBN_INLINE void FBN_SYM(dx_rows_as)(const T *dr, const T *xr, int64_t ld, T *out, int64_t ldo,
                                    int64_t m, const FBN_SYM(tcoefs) *k, int64_t ch, const int g,
                                    const int relu, const int cached) {
#ifdef FBN_NARROW /* kern_half_dx.h */
    (void)cached;
    FBN_SYM(half_dx_rows)(0, dr, xr, NULL, ld, out, ldo, m, k, ch, g, relu, 0);
#else
    const int loads_first = (ld * (int64_t)sizeof(T)) % 4096 == 0;
    if (cached && loads_first) {
        FBN_SYM(dx_rows_cached)(dr, xr, ld, out, ldo, m, k, ch, g, relu, 1);
        return;
    }
    if (cached) {
        FBN_SYM(dx_rows_cached)(dr, xr, ld, out, ldo, m, k, ch, g, relu, 0);
        return;
    }
    const TC *shift = k->shift + ch, *scale = k->scale + ch, *bias = k->bias + ch;
    const TC *k_dy = k->k_dy + ch, *k_x = k->k_x + ch, *mdy = k->mean_dy + ch;
    const TC *k_0 = k->k_0 + ch, *inv = k->invstd + ch;
    const int eval = k->eval;
    const TC slope = k->slope;
    if (loads_first) {
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
                out[i * ldo + c] = FBN_ST(FBN_SYM(xdx1)(d[i], v[i], (TC)0, shift[c], scale[c],
                                                        bias[c], relu, 0, k_dy[c], k_x[c],
                                                        mdy[c], k_0[c], inv[c], eval, slope));
        }
    } else { /* (this order was slower there, e.g. NHWC's 64 channels) */
        FBN_IVDEP
        for (int64_t c = 0; c < m; c++)
            for (int i = 0; i < g; i++)
                out[i * ldo + c] = FBN_ST(
                    FBN_SYM(xdx1)(FBN_LD(dr[i * ld + c]), FBN_LD(xr[i * ld + c]), (TC)0,
                                  shift[c], scale[c], bias[c], relu, 0, k_dy[c], k_x[c],
                                  mdy[c], k_0[c], inv[c], eval, slope));
    }
#endif
}

/* Columns shape: op's g rows (g a constant) of m values from offset o, a row ld
 * apart, written ldo apart from out, channels from ch (cached: see
 * fbn_affine_rows_<sfx>). */
FBN_INLINE void FBN_SYM(span_rows)(const int op, const T *x, const T *dy, int64_t o, int64_t ld,
                                   T *out, int64_t ldo, int64_t m, const FBN_SYM(tcoefs) *k,
                                   int64_t ch, const int g, const int cached) {
    if (op == FBN_OP_AFFINE)
        FBN_SYM(affine_rows)(x + o, ld, out, ldo, m, k, ch, g, cached);
    else if (op & FBN_OP_XAFF)
        FBN_SYM(xaffine_rows)(op, x + o, FBN_OP_RES(op) ? dy + o : NULL, ld, out, ldo, m, k, ch, g);
#ifdef FBN_NARROW
    else if ((op & FBN_OP_XDX) && FBN_OP_RES(op)) /* kern_half_dx.h */
        FBN_SYM(half_dx_rows)(0, dy + o, x + o, k->z + o, ld, out, ldo, m, k, ch, g, 2, 1);
#endif
    else if (op & FBN_OP_XDX)
        FBN_SYM(dx_rows_as)(dy + o, x + o, ld, out, ldo, m, k, ch, g, FBN_OP_ACT(op), cached);
    else if (k->relu)
        FBN_SYM(dx_rows_as)(dy + o, x + o, ld, out, ldo, m, k, ch, g, 1, cached);
    else
        FBN_SYM(dx_rows_as)(dy + o, x + o, ld, out, ldo, m, k, ch, g, 0, cached);
}
