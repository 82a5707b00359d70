/* 16-bit data (FBN_NARROW: float16, bfloat16), columns shape (inner == 1): dx of a
 * row group with the conversions in registers (issue 19). A per-dtype template
 * (see kern_dtype.h), included by kern_elemwise.h after fbn_block_values_<sfx>;
 * fbn_dx_rows_as_<sfx> calls fbn_half_dx_rows_<sfx>.
 *
 * The buffered form (fbn_dx_blocks_<sfx>) widens blocks of FBN_HBLOCK channels
 * into float arrays, computes them in a second loop and narrows them in a third.
 * Here each step of FBN_VW channels widens them into a float array of one vector
 * register (one __m512 or two __m256: the compiler keeps it in registers),
 * computes them with the buffered loop's function (fbn_xdx1_<sfx>, vectorised by
 * the compiler the same way: the same operations and rounding; NaN signs and
 * payloads may follow another operand order, which tests/half_digests.json does
 * not hold) and narrows them. (N, C) backward, 1 thread, CPU time: 0.78-0.80x of
 * the buffered form's time (bench/results/2026-12-03_h19f_ab_cpu_1thread.txt;
 * this port's A/B: 2026-12-03_h19g_ab.txt). The remainder of a span (fewer than
 * FBN_VW channels) stays buffered. The rows shape's dx (fbn_run_dx_vec_<sfx>)
 * goes in registers where y does (kern_half_y.h, fbn_half_values_<sfx>), but only
 * with AVX-512F and without ReLU (fbn_half_run_dx_<sfx>).
 *
 * The conversions are those of instruction set isa (FBN_LD_V, FBN_ST_V: half.h's
 * fbn_*_widen16 / fbn_*_narrow16), a constant in each function here: the _v16
 * function is compiled for AVX-512F and the _v8 one for F16C + AVX2 (their target
 * attributes, FBN_HALF_TARGET16 / 8). The kernels' target_clones define no macro
 * per clone and their avx2 clone lacks F16C, so every clone calls the one whose
 * instructions the CPU has (fbn_half_level: libgcc's CPU model, which chose the
 * clone too); without either, the buffered form. */

#define FBN_VW 16 /* channels per step */

#if defined(FBN_HALF_BF_HW) && defined(FBN_HAVE_BF16_HW) && defined(FBN_HALF_VEC16)
#define FBN_HALF_VEC16BF 1 /* the loops compiled for isa 3 too (bfloat16) */
#endif

/* The register loops' instruction set on this CPU (see half.h): fbn_half_level(),
 * or 3 where bfloat16 data round by AVX512_BF16. */
FBN_INLINE int FBN_SYM(half_isa)(void) {
#ifdef FBN_HALF_VEC16BF
    return fbn_half_level_bf16();
#else
    return fbn_half_level();
#endif
}

/* dx of g rows (g, relu and res constants: see fbn_dx_rows_as_<sfx>; with res, a
 * leaky ReLU over the residual's rows zr) of m channels from
 * ch, a row ld (out: ldo) apart, buffered: blocks of FBN_HBLOCK channels of the g
 * rows widened into float arrays (all rows' loads first, as the wider types' loop
 * has them in flight together), computed row by row and narrowed (FBN_LD_N,
 * FBN_ST_N: vector conversions). out may be dr (read first). */
FBN_INLINE void FBN_SYM(dx_blocks)(const T *dr, const T *xr, const T *zr, int64_t ld, T *out,
                                   int64_t ldo, int64_t m, const FBN_SYM(tcoefs) *k, int64_t ch,
                                   const int g, const int relu, const int res) {
    const TC *shift = k->shift + ch, *scale = k->scale + ch, *bias = k->bias + ch;
    const TC *k_dy = k->k_dy + ch, *k_x = k->k_x + ch, *mdy = k->mean_dy + ch;
    const TC *k_0 = k->k_0 + ch, *inv = k->invstd + ch;
    const int eval = k->eval;
    const TC slope = k->slope;
    for (int64_t b = 0; b < m; b += FBN_HBLOCK) {
        TC db[FBN_GROUP * FBN_HBLOCK], xb[FBN_GROUP * FBN_HBLOCK], ob[FBN_HBLOCK];
        TC zb[FBN_GROUP * FBN_HBLOCK]; /* res: the residual's */
        const int64_t n = m - b < FBN_HBLOCK ? m - b : FBN_HBLOCK;
        for (int i = 0; i < g; i++) {
            FBN_LD_N(dr + i * ld + b, db + i * FBN_HBLOCK, n);
            FBN_LD_N(xr + i * ld + b, xb + i * FBN_HBLOCK, n);
            if (res) FBN_LD_N(zr + i * ld + b, zb + i * FBN_HBLOCK, n);
        }
        for (int i = 0; i < g; i++) {
            const TC *di = db + i * FBN_HBLOCK, *xi = xb + i * FBN_HBLOCK;
            const TC *zi = res ? zb + i * FBN_HBLOCK : NULL;
            for (int64_t c = 0; c < n; c++)
                ob[c] = FBN_SYM(xdx1)(di[c], xi[c], res ? zi[c] : (TC)0, shift[b + c],
                                      scale[b + c], bias[b + c], relu, res, k_dy[b + c],
                                      k_x[b + c], mdy[b + c], k_0[b + c], inv[b + c], eval,
                                      slope);
            FBN_ST_N(ob, out + i * ldo + b, n);
        }
    }
}

#if defined(FBN_HALF_VEC16) || defined(FBN_HALF_VEC8) /* the vector forms of half.h */

/* The remainder of a span (fewer than FBN_VW channels; g, relu and res variables:
 * one function per dtype), buffered. */
static void FBN_SYM(dx_rest)(int relu, int res, int g, const T *dr, const T *xr, const T *zr,
                             int64_t ld, T *out, int64_t ldo, int64_t m,
                             const FBN_SYM(tcoefs) *k, int64_t ch) {
    FBN_SYM(dx_blocks)(dr, xr, zr, ld, out, ldo, m, k, ch, g, relu, res);
}

/* dx of g rows as fbn_dx_blocks_<sfx>, FBN_VW channels at a time in registers, all
 * g rows' loads of a step first (rows a multiple of 4 KB apart: see
 * fbn_dx_rows_as_<sfx>); isa, relu, res, g and nt constants (res: zr as in
 * fbn_dx_blocks_<sfx>; nt: streamed, as kern_half_y.h's fbn_y_vec_<sfx>). */
FBN_INLINE void FBN_SYM(dx_vec)(const int isa, const int relu, const int res, const int g,
                                const int nt, const T *dr, const T *xr, const T *zr,
                                int64_t ld, T *out, int64_t ldo, int64_t m,
                                const FBN_SYM(tcoefs) *k, int64_t ch) {
    const TC *shift = k->shift + ch, *scale = k->scale + ch, *bias = k->bias + ch;
    const TC *k_dy = k->k_dy + ch, *k_x = k->k_x + ch, *mdy = k->mean_dy + ch;
    const TC *k_0 = k->k_0 + ch, *inv = k->invstd + ch;
    const int eval = k->eval;
    const TC slope = k->slope;
    int64_t c = 0;
    for (; c + FBN_VW <= m; c += FBN_VW) {
        TC xv[FBN_GROUP][FBN_VW], dv[FBN_GROUP][FBN_VW], zv[FBN_GROUP][FBN_VW];
        for (int i = 0; i < g; i++) {
            FBN_LD_V(isa, xr + i * ld + c, xv[i]);
            FBN_LD_V(isa, dr + i * ld + c, dv[i]);
            if (res) FBN_LD_V(isa, zr + i * ld + c, zv[i]);
        }
        for (int i = 0; i < g; i++) {
            TC ov[FBN_VW];
            for (int j = 0; j < FBN_VW; j++)
                ov[j] = FBN_SYM(xdx1)(dv[i][j], xv[i][j], res ? zv[i][j] : (TC)0, shift[c + j],
                                      scale[c + j], bias[c + j], relu, res, k_dy[c + j],
                                      k_x[c + j], mdy[c + j], k_0[c + j], inv[c + j], eval,
                                      slope);
            FBN_ST_V(isa, nt, ov, out + i * ldo + c);
        }
    }
    if (c < m)
        FBN_SYM(dx_rest)(relu, res, g, dr + c, xr + c, res ? zr + c : NULL, ld, out + c, ldo,
                         m - c, k, ch + c);
}

/* fbn_dx_vec_<sfx> with g (FBN_GROUP, 2, else rows one by one) as a constant; isa,
 * relu and res constants. */
FBN_INLINE void FBN_SYM(dx_vec_g)(const int isa, const int relu, const int res, int g,
                                  const T *dr, const T *xr, const T *zr, int64_t ld, T *out,
                                  int64_t ldo, int64_t m, const FBN_SYM(tcoefs) *k, int64_t ch) {
    if (g == FBN_GROUP)
        FBN_SYM(dx_vec)(isa, relu, res, FBN_GROUP, 0, dr, xr, zr, ld, out, ldo, m, k, ch);
    else if (g == 2)
        FBN_SYM(dx_vec)(isa, relu, res, 2, 0, dr, xr, zr, ld, out, ldo, m, k, ch);
    else
        for (int i = 0; i < g; i++)
            FBN_SYM(dx_vec)(isa, relu, res, 1, 0, dr + i * ld, xr + i * ld,
                            res ? zr + i * ld : NULL, ld, out + i * ldo, ldo, m, k, ch);
}

/* fbn_dx_vec_g_<sfx> with relu (0, 1, 2 leaky) and res (only with the leaky ReLU:
 * plan.h's FBN_OP_XDX + 6) as constants; with nt (streamed: one row, relu 0 or
 * 1, no res; see fbn_dx_vec_<sfx>) fbn_dx_vec_<sfx> with nt a constant too. */
FBN_INLINE void FBN_SYM(dx_vec_as)(const int isa, int nt, int relu, int res, int g,
                                   const T *dr, const T *xr, const T *zr, int64_t ld, T *out,
                                   int64_t ldo, int64_t m, const FBN_SYM(tcoefs) *k,
                                   int64_t ch) {
    if (nt == 1 && relu)
        FBN_SYM(dx_vec)(isa, 1, 0, 1, 1, dr, xr, NULL, ld, out, ldo, m, k, ch);
    else if (nt == 1)
        FBN_SYM(dx_vec)(isa, 0, 0, 1, 1, dr, xr, NULL, ld, out, ldo, m, k, ch);
    else if (nt && relu)
        FBN_SYM(dx_vec)(isa, 1, 0, 1, 2, dr, xr, NULL, ld, out, ldo, m, k, ch);
    else if (nt)
        FBN_SYM(dx_vec)(isa, 0, 0, 1, 2, dr, xr, NULL, ld, out, ldo, m, k, ch);
    else if (res)
        FBN_SYM(dx_vec_g)(isa, 2, 1, g, dr, xr, zr, ld, out, ldo, m, k, ch);
    else if (relu == 0)
        FBN_SYM(dx_vec_g)(isa, 0, 0, g, dr, xr, NULL, ld, out, ldo, m, k, ch);
    else if (relu == 1)
        FBN_SYM(dx_vec_g)(isa, 1, 0, g, dr, xr, NULL, ld, out, ldo, m, k, ch);
    else
        FBN_SYM(dx_vec_g)(isa, 2, 0, g, dr, xr, NULL, ld, out, ldo, m, k, ch);
}

/* Rows shape: dx of one channel's m values (a run, or a chunk of one; h: its
 * coefficients), FBN_VW at a time in registers, the last step's few values
 * zero-padded to a whole step and its other outputs dropped; isa, eval and nt
 * constants, no ReLU (GCC 12 leaves this loop scalar with the ReLU's mask:
 * docs/performance.md); nt: whole steps streamed, as fbn_run_y_vec_<sfx>'s. out
 * may be dy. */
FBN_INLINE void FBN_SYM(run_dx_vec)(const int isa, const int nt, const T *dy, const T *x, T *out,
                                    int64_t m, const FBN_SYM(chan) *h, const int eval) {
    const TC shift = h->shift, scale = h->scale, bias = h->bias, k_dy = h->k_dy, k_x = h->k_x;
    const TC mean_dy = h->mean_dy, k_0 = h->k_0, invstd = h->invstd;
    for (int64_t i = 0; i < m; i += FBN_VW) {
        const int64_t n = m - i < FBN_VW ? m - i : FBN_VW;
        T dt[FBN_VW], xt[FBN_VW], ot[FBN_VW];
        const T *dv = dy + i, *xv = x + i;
        T *to = out + i;
        if (n < FBN_VW) { /* the last step: through zero-padded copies */
            memset(dt, 0, sizeof dt);
            memset(xt, 0, sizeof xt);
            memcpy(dt, dv, (size_t)n * sizeof(T));
            memcpy(xt, xv, (size_t)n * sizeof(T));
            dv = dt, xv = xt, to = ot;
        }
        TC d[FBN_VW], v[FBN_VW], o[FBN_VW];
        FBN_LD_V(isa, dv, d);
        FBN_LD_V(isa, xv, v);
        for (int j = 0; j < FBN_VW; j++)
            o[j] = FBN_SYM(dx1)(d[j], v[j], shift, scale, bias, 0, k_dy, k_x, mean_dy, k_0,
                                invstd, eval);
        if (nt && n == FBN_VW)
            FBN_ST_V(isa, nt, o, to);
        else
            FBN_ST_V(isa, 0, o, to);
        if (n < FBN_VW) memcpy(out + i, ot, (size_t)n * sizeof(T));
    }
}

/* fbn_run_dx_vec_<sfx> with eval a constant (nt one already). */
FBN_INLINE void FBN_SYM(run_dx_eval)(const int isa, const int nt, const T *dy, const T *x,
                                     T *out, int64_t m, const FBN_SYM(chan) *h) {
    if (h->eval)
        FBN_SYM(run_dx_vec)(isa, nt, dy, x, out, m, h, 1);
    else
        FBN_SYM(run_dx_vec)(isa, nt, dy, x, out, m, h, 0);
}

/* fbn_run_dx_vec_<sfx> with nt and eval constants. */
FBN_INLINE void FBN_SYM(run_dx_as)(const int isa, int nt, const T *dy, const T *x, T *out,
                                   int64_t m, const FBN_SYM(chan) *h) {
    if (nt == 1)
        FBN_SYM(run_dx_eval)(isa, 1, dy, x, out, m, h);
    else if (nt == 2)
        FBN_SYM(run_dx_eval)(isa, 2, dy, x, out, m, h);
    else
        FBN_SYM(run_dx_eval)(isa, 0, dy, x, out, m, h);
}

/* The loops compiled for each instruction set (static inline: no warning where a
 * build without dispatch leaves one unused). */
#if defined(FBN_HALF_VEC16)
FBN_HALF_TARGET16 static inline void FBN_SYM(dx_v16)(int nt, int relu, int res, int g,
                                                     const T *dr, const T *xr, const T *zr,
                                                     int64_t ld, T *out, int64_t ldo, int64_t m,
                                                     const FBN_SYM(tcoefs) *k, int64_t ch) {
    FBN_SYM(dx_vec_as)(2, nt, relu, res, g, dr, xr, zr, ld, out, ldo, m, k, ch);
}
/* noclone: a fused group's walk (fbn_runs_group_<sfx>) made GCC clone it for a
 * constant argument and call the clone from the unfused tiles as well, which then
 * took 4.5x the time at some addresses (float16 128x128x28x28) */
FBN_HALF_TARGET16 FBN_NOCLONE static inline void FBN_SYM(run_dx_v16)(int nt, const T *dy,
                                                                   const T *x, T *out, int64_t m,
                                                                   const FBN_SYM(chan) *h) {
    FBN_SYM(run_dx_as)(2, nt, dy, x, out, m, h);
}
#endif
#if defined(FBN_HALF_VEC16BF)
FBN_HALF_TARGET16BF static inline void FBN_SYM(dx_v16b)(int nt, int relu, int res, int g,
                                                        const T *dr, const T *xr, const T *zr,
                                                        int64_t ld, T *out, int64_t ldo, int64_t m,
                                                        const FBN_SYM(tcoefs) *k, int64_t ch) {
    FBN_SYM(dx_vec_as)(3, nt, relu, res, g, dr, xr, zr, ld, out, ldo, m, k, ch);
}
FBN_HALF_TARGET16BF FBN_NOCLONE static inline void FBN_SYM(run_dx_v16b)(int nt, const T *dy,
                                                                     const T *x, T *out, int64_t m,
                                                                     const FBN_SYM(chan) *h) {
    FBN_SYM(run_dx_as)(3, nt, dy, x, out, m, h);
}
#endif
#if defined(FBN_HALF_VEC8)
FBN_HALF_TARGET8 static inline void FBN_SYM(dx_v8)(int nt, int relu, int res, int g,
                                                   const T *dr, const T *xr, const T *zr,
                                                   int64_t ld, T *out, int64_t ldo, int64_t m,
                                                   const FBN_SYM(tcoefs) *k, int64_t ch) {
    FBN_SYM(dx_vec_as)(1, nt, relu, res, g, dr, xr, zr, ld, out, ldo, m, k, ch);
}
#endif
#endif /* FBN_HALF_VEC16 || FBN_HALF_VEC8 */

/* dx of g rows (g, relu and res constants, see fbn_dx_rows_as_<sfx>; res: zr as in
 * fbn_dx_blocks_<sfx>): in registers where the CPU has the conversions, else
 * buffered. With nt (streamed: see fbn_dx_vec_as_<sfx>) in registers only:
 * returns 0 (nothing written) where they are not, else 1. */
FBN_INLINE int FBN_SYM(half_dx_rows)(int nt, const T *dr, const T *xr, const T *zr, int64_t ld,
                                     T *out, int64_t ldo, int64_t m, const FBN_SYM(tcoefs) *k,
                                     int64_t ch, const int g, const int relu, const int res) {
#if defined(FBN_HALF_VEC16) || defined(FBN_HALF_VEC8)
    const int level = FBN_SYM(half_isa)();
#if defined(FBN_HALF_VEC16BF)
    if (level == 3) {
        FBN_SYM(dx_v16b)(nt, relu, res, g, dr, xr, zr, ld, out, ldo, m, k, ch);
        return 1;
    }
#endif
#if defined(FBN_HALF_VEC16)
    if (level == 2) {
        FBN_SYM(dx_v16)(nt, relu, res, g, dr, xr, zr, ld, out, ldo, m, k, ch);
        return 1;
    }
#endif
#if defined(FBN_HALF_VEC8)
    if (level == 1) {
        FBN_SYM(dx_v8)(nt, relu, res, g, dr, xr, zr, ld, out, ldo, m, k, ch);
        return 1;
    }
#endif
#endif
    if (nt) return 0;
    FBN_SYM(dx_blocks)(dr, xr, zr, ld, out, ldo, m, k, ch, g, relu, res);
    return 1;
}

/* Rows shape: dx of one channel's m values in registers with AVX-512F and no ReLU
 * (returns 1), else 0 (the caller's buffered loop; F16C + AVX2's 8-lane form of
 * this loop was slower than it: docs/performance.md); nt: streamed, as
 * fbn_half_run_y_<sfx>. out may be dy. */
FBN_INLINE int FBN_SYM(half_run_dx)(int nt, const T *dy, const T *x, T *out, int64_t m,
                                    const FBN_SYM(chan) *h) {
#if defined(FBN_HALF_VEC16BF)
    if (!h->relu && FBN_SYM(half_isa)() == 3) {
        FBN_SYM(run_dx_v16b)(nt, dy, x, out, m, h);
        return 1;
    }
#endif
#if defined(FBN_HALF_VEC16)
    if (!h->relu && fbn_half_level() == 2) {
        FBN_SYM(run_dx_v16)(nt, dy, x, out, m, h);
        return 1;
    }
#endif
    (void)nt, (void)dy, (void)x, (void)out, (void)m, (void)h;
    return 0;
}

#undef FBN_VW
