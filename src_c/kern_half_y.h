/* 16-bit data (FBN_NARROW: float16, bfloat16): y, in registers where that pays
 * (issue 19). A per-dtype template (see kern_dtype.h), included by kern_elemwise.h
 * after kern_half_dx.h: fbn_affine_rows_<sfx> (columns shape, inner == 1) calls
 * fbn_half_y_rows_<sfx>, fbn_half_values_<sfx> (rows shape: one channel's run)
 * fbn_half_run_y_<sfx>.
 *
 * The buffered form (fbn_y_blocks_<sfx>; fbn_block_values_<sfx> for runs) widens
 * blocks of FBN_HBLOCK values into a float array, computes them in a second loop
 * and narrows them in a third. The register form widens each step of FBN_VW values
 * into a float array of one vector register, computes it with the buffered loop's
 * function (fbn_affine1_<sfx>: the same operations and rounding) and narrows it,
 * as kern_half_dx.h does dx (see there: isa, FBN_LD_V / FBN_ST_V, the target
 * functions, the dispatch by fbn_half_level). Which form runs is a fact read at
 * run time, the CPU's conversion instructions: the register form from
 * fbn_half_level() == FBN_HALF_REGS up (kernels_f16.c: 1, F16C; kernels_bf16.c:
 * 2, AVX-512F, whose bfloat16 rounding in registers costs less than the buffers;
 * with AVX2's it cost more on cache-resident data; and a third form, isa 3, with
 * AVX512_BF16's rounding), the rows shape's dx likewise (fbn_half_values_<sfx>,
 * kern_elemwise.h, which also says which cached runs). Measurements:
 * docs/performance.md. */

#define FBN_VW 16 /* channels per step */

/* y of g rows (g a constant) of m channels from ch, a row ld (out: ldo) apart,
 * buffered: blocks of FBN_HBLOCK channels of the g rows widened into a float array
 * (all rows' loads first, as the wider types' loop has them in flight together),
 * computed row by row and narrowed (FBN_LD_N, FBN_ST_N: vector conversions). out
 * may be xr (read first). */
FBN_INLINE void FBN_SYM(y_blocks)(const T *xr, int64_t ld, T *out, int64_t ldo, int64_t m,
                                  const FBN_SYM(tcoefs) *k, int64_t ch, const int g) {
    const TC *shift = k->shift + ch, *scale = k->scale + ch, *bias = k->bias + ch;
    const int relu = k->relu;
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
}

#if defined(FBN_HALF_VEC8) && FBN_HALF_REGS <= 1
#define FBN_Y_VEC8 1 /* the F16C / AVX2 register forms compiled */
#endif
#if defined(FBN_HALF_VEC16) && FBN_HALF_REGS <= 2
#define FBN_Y_VEC16 1 /* the AVX-512F register forms compiled */
#endif
#if defined(FBN_Y_VEC8) || defined(FBN_Y_VEC16)
#define FBN_Y_VEC 1

/* The remainder of a span (fewer than FBN_VW channels; g a variable: one function
 * per dtype), buffered. */
static void FBN_SYM(y_rest)(int g, const T *xr, int64_t ld, T *out, int64_t ldo, int64_t m,
                            const FBN_SYM(tcoefs) *k, int64_t ch) {
    FBN_SYM(y_blocks)(xr, ld, out, ldo, m, k, ch, g);
}

/* y of g rows as fbn_y_blocks_<sfx>, FBN_VW channels at a time in registers, all g
 * rows' loads of a step first; isa, g, relu (k's, as a truth value) and nt
 * constants: with relu a variable, every step paid the ReLU's select. nt:
 * streamed, as fbn_run_y_vec_<sfx>'s (g 1, m a multiple of FBN_VW). */
FBN_INLINE void FBN_SYM(y_vec)(const int isa, const int g, const int relu, const int nt,
                               const T *xr, int64_t ld, T *out, int64_t ldo, int64_t m,
                               const FBN_SYM(tcoefs) *k, int64_t ch) {
    const TC *shift = k->shift + ch, *scale = k->scale + ch, *bias = k->bias + ch;
    int64_t c = 0;
    for (; c + FBN_VW <= m; c += FBN_VW) {
        /* the step's coefficients in locals: read from k's arrays, they were read
         * again for each row (the stores' vector type may alias anything) */
        TC xv[FBN_GROUP][FBN_VW], sh[FBN_VW], sc[FBN_VW], bi[FBN_VW];
        for (int j = 0; j < FBN_VW; j++)
            sh[j] = shift[c + j], sc[j] = scale[c + j], bi[j] = bias[c + j];
        FBN_UNROLL_ROWS
        for (int i = 0; i < g; i++) FBN_LD_V(isa, xr + i * ld + c, xv[i]);
        FBN_UNROLL_ROWS
        for (int i = 0; i < g; i++) {
            TC ov[FBN_VW];
            for (int j = 0; j < FBN_VW; j++)
                ov[j] = FBN_SYM(affine1)(xv[i][j], sh[j], sc[j], bi[j], relu);
            FBN_ST_V(isa, nt, ov, out + i * ldo + c);
        }
    }
    if (c < m) FBN_SYM(y_rest)(g, xr + c, ld, out + c, ldo, m - c, k, ch + c);
}

/* fbn_y_vec_<sfx> with g (FBN_GROUP, 2, else rows one by one) a constant; isa and
 * relu constants. */
FBN_INLINE void FBN_SYM(y_vec_g)(const int isa, const int relu, int g, const T *xr, int64_t ld,
                                 T *out, int64_t ldo, int64_t m, const FBN_SYM(tcoefs) *k,
                                 int64_t ch) {
    if (g == FBN_GROUP)
        FBN_SYM(y_vec)(isa, FBN_GROUP, relu, 0, xr, ld, out, ldo, m, k, ch);
    else if (g == 2)
        FBN_SYM(y_vec)(isa, 2, relu, 0, xr, ld, out, ldo, m, k, ch);
    else
        for (int i = 0; i < g; i++)
            FBN_SYM(y_vec)(isa, 1, relu, 0, xr + i * ld, ld, out + i * ldo, ldo, m, k, ch);
}

/* The most steps whose coefficients fbn_y_held_<sfx> holds: three arrays of that
 * many vectors in registers (AVX-512F has 32; F16C + AVX2 16, two a step). */
#define FBN_Y_HELD 4

/* y of one row of m values whose coefficients (from ch) repeat every S steps
 * (k->cycle: repeated coefficients, flat spans; S, isa, relu and nt constants,
 * as fbn_y_vec_<sfx>'s): the S steps' coefficient vectors read once and held in
 * registers, so that a step loads x alone where fbn_y_vec_<sfx> loads three
 * coefficient vectors too (those loads took as long as a step's memory traffic:
 * docs/performance.md). The same operations per value: the same bits. Returns
 * the values done, whole cycles (the rest: fbn_y_vec_<sfx>). */
FBN_INLINE int64_t FBN_SYM(y_held)(const int isa, const int S, const int relu, const int nt,
                                   const T *x, T *out, int64_t m, const FBN_SYM(tcoefs) *k,
                                   int64_t ch) {
    TC sh[FBN_Y_HELD][FBN_VW], sc[FBN_Y_HELD][FBN_VW], bi[FBN_Y_HELD][FBN_VW];
    for (int s = 0; s < S; s++)
        for (int j = 0; j < FBN_VW; j++) {
            sh[s][j] = k->shift[ch + s * FBN_VW + j];
            sc[s][j] = k->scale[ch + s * FBN_VW + j];
            bi[s][j] = k->bias[ch + s * FBN_VW + j];
        }
    int64_t c = 0;
    for (; c + S * FBN_VW <= m; c += S * FBN_VW) {
        FBN_UNROLL_ROWS
        for (int s = 0; s < S; s++) {
            TC xv[FBN_VW], ov[FBN_VW];
            FBN_LD_V(isa, x + c + s * FBN_VW, xv);
            for (int j = 0; j < FBN_VW; j++)
                ov[j] = FBN_SYM(affine1)(xv[j], sh[s][j], sc[s][j], bi[s][j], relu);
            FBN_ST_V(isa, nt, ov, out + c + s * FBN_VW);
        }
    }
    return c;
}

/* fbn_y_held_<sfx> with S (1 to FBN_Y_HELD) a constant. */
FBN_INLINE int64_t FBN_SYM(y_held_s)(const int isa, const int relu, const int nt, int64_t S,
                                     const T *x, T *out, int64_t m, const FBN_SYM(tcoefs) *k,
                                     int64_t ch) {
    if (S == 1) return FBN_SYM(y_held)(isa, 1, relu, nt, x, out, m, k, ch);
    if (S == 2) return FBN_SYM(y_held)(isa, 2, relu, nt, x, out, m, k, ch);
    if (S == 3) return FBN_SYM(y_held)(isa, 3, relu, nt, x, out, m, k, ch);
    return FBN_SYM(y_held)(isa, 4, relu, nt, x, out, m, k, ch);
}

/* fbn_y_held_s_<sfx> with nt and k's relu constants. */
FBN_INLINE int64_t FBN_SYM(y_held_as)(const int isa, int nt, int64_t S, const T *x, T *out,
                                      int64_t m, const FBN_SYM(tcoefs) *k, int64_t ch) {
    if (nt == 1 && k->relu) return FBN_SYM(y_held_s)(isa, 1, 1, S, x, out, m, k, ch);
    if (nt == 1) return FBN_SYM(y_held_s)(isa, 0, 1, S, x, out, m, k, ch);
    if (nt && k->relu) return FBN_SYM(y_held_s)(isa, 1, 2, S, x, out, m, k, ch);
    if (nt) return FBN_SYM(y_held_s)(isa, 0, 2, S, x, out, m, k, ch);
    if (k->relu) return FBN_SYM(y_held_s)(isa, 1, 0, S, x, out, m, k, ch);
    return FBN_SYM(y_held_s)(isa, 0, 0, S, x, out, m, k, ch);
}

/* The steps of k's cycle where fbn_y_held_<sfx> takes one row (g 1) of m values
 * from ch with instruction set isa (fbn_held_cycle_<sfx>), else 0. */
FBN_INLINE int64_t FBN_SYM(held_steps)(int isa, int g, int64_t m, const FBN_SYM(tcoefs) *k,
                                       int64_t ch) {
    const int64_t most = isa == 1 ? 1 : FBN_Y_HELD;
    return g == 1 ? FBN_SYM(held_cycle)(k, ch, m, most * FBN_VW) / FBN_VW : 0;
}

/* fbn_y_vec_g_<sfx> with k's relu a constant (as fbn_run_y_relu_<sfx> for runs),
 * or with nt (streamed: one row, see fbn_y_vec_<sfx>) fbn_y_vec_<sfx> with nt a
 * constant too; isa a constant. */
FBN_INLINE void FBN_SYM(y_vec_relu)(const int isa, int nt, int g, const T *xr, int64_t ld,
                                    T *out, int64_t ldo, int64_t m, const FBN_SYM(tcoefs) *k,
                                    int64_t ch) {
    if (nt == 1 && k->relu)
        FBN_SYM(y_vec)(isa, 1, 1, 1, xr, ld, out, ldo, m, k, ch);
    else if (nt == 1)
        FBN_SYM(y_vec)(isa, 1, 0, 1, xr, ld, out, ldo, m, k, ch);
    else if (nt && k->relu)
        FBN_SYM(y_vec)(isa, 1, 1, 2, xr, ld, out, ldo, m, k, ch);
    else if (nt)
        FBN_SYM(y_vec)(isa, 1, 0, 2, xr, ld, out, ldo, m, k, ch);
    else if (k->relu)
        FBN_SYM(y_vec_g)(isa, 1, g, xr, ld, out, ldo, m, k, ch);
    else
        FBN_SYM(y_vec_g)(isa, 0, g, xr, ld, out, ldo, m, k, ch);
}

/* Rows shape: y of one channel's m values (a run, or a chunk of one), FBN_VW at a
 * time in registers; the last step's few values zero-padded to a whole step, its
 * other outputs dropped. isa, relu and nt constants (GCC does not vectorise the
 * loop with relu a variable); nt: streamed, by non-temporal stores (half.h's
 * fbn_store16x16: 1, out aligned to 32 bytes; 2, to 16), its input prefetched
 * FBN_STREAM_AHEAD ahead (as float32's runs: docs/performance.md). out may be x. */
FBN_INLINE void FBN_SYM(run_y_vec)(const int isa, const int nt, const T *x, T *out, int64_t m,
                                   TC shift, TC scale, TC bias, const int relu) {
    int64_t i = 0;
    for (; i + FBN_VW <= m; i += FBN_VW) {
        TC xv[FBN_VW], ov[FBN_VW];
        if (nt) fbn_prefetch_stream(x + i);
        FBN_LD_V(isa, x + i, xv);
        for (int j = 0; j < FBN_VW; j++) ov[j] = FBN_SYM(affine1)(xv[j], shift, scale, bias, relu);
        FBN_ST_V(isa, nt, ov, out + i);
    }
    if (i < m) {
        T xt[FBN_VW], ot[FBN_VW];
        TC xv[FBN_VW], ov[FBN_VW];
        memset(xt, 0, sizeof xt);
        memcpy(xt, x + i, (size_t)(m - i) * sizeof(T));
        FBN_LD_V(isa, xt, xv);
        for (int j = 0; j < FBN_VW; j++) ov[j] = FBN_SYM(affine1)(xv[j], shift, scale, bias, relu);
        FBN_ST_V(isa, 0, ov, ot);
        memcpy(out + i, ot, (size_t)(m - i) * sizeof(T));
    }
}

/* fbn_run_y_vec_<sfx> with relu a constant (nt one already). */
FBN_INLINE void FBN_SYM(run_y_relu)(const int isa, const int nt, const T *x, T *out, int64_t m,
                                    TC shift, TC scale, TC bias, int relu) {
    if (relu)
        FBN_SYM(run_y_vec)(isa, nt, x, out, m, shift, scale, bias, 1);
    else
        FBN_SYM(run_y_vec)(isa, nt, x, out, m, shift, scale, bias, 0);
}

/* fbn_run_y_vec_<sfx> with nt and relu constants. */
FBN_INLINE void FBN_SYM(run_y_as)(const int isa, int nt, const T *x, T *out, int64_t m,
                                  TC shift, TC scale, TC bias, int relu) {
    if (nt == 1)
        FBN_SYM(run_y_relu)(isa, 1, x, out, m, shift, scale, bias, relu);
    else if (nt == 2)
        FBN_SYM(run_y_relu)(isa, 2, x, out, m, shift, scale, bias, relu);
    else
        FBN_SYM(run_y_relu)(isa, 0, x, out, m, shift, scale, bias, relu);
}

/* The loops compiled for each instruction set (static inline: no warning where a
 * build without dispatch leaves one unused). The held forms are not inlined:
 * inlined, they left their callers too large for GCC to inline the conversions. */
#if defined(FBN_Y_VEC16)
FBN_HALF_TARGET16 static inline void FBN_SYM(y_v16)(int nt, int g, const T *xr, int64_t ld,
                                                    T *out, int64_t ldo, int64_t m,
                                                    const FBN_SYM(tcoefs) *k, int64_t ch) {
    FBN_SYM(y_vec_relu)(2, nt, g, xr, ld, out, ldo, m, k, ch);
}
FBN_HALF_TARGET16 static inline void FBN_SYM(run_y_v16)(int nt, const T *x, T *out, int64_t m,
                                                        TC shift, TC scale, TC bias, int relu) {
    FBN_SYM(run_y_as)(2, nt, x, out, m, shift, scale, bias, relu);
}
FBN_HALF_TARGET16 static FBN_NOINLINE int64_t
FBN_SYM(y_held_v16)(int nt, int64_t S, const T *x, T *out, int64_t m, const FBN_SYM(tcoefs) *k,
                    int64_t ch) {
    return FBN_SYM(y_held_as)(2, nt, S, x, out, m, k, ch);
}
#endif
#if defined(FBN_Y_VEC16) && defined(FBN_HALF_VEC16BF)
#define FBN_Y_VEC16BF 1
FBN_HALF_TARGET16BF static inline void FBN_SYM(y_v16b)(int nt, int g, const T *xr, int64_t ld,
                                                       T *out, int64_t ldo, int64_t m,
                                                       const FBN_SYM(tcoefs) *k, int64_t ch) {
    FBN_SYM(y_vec_relu)(3, nt, g, xr, ld, out, ldo, m, k, ch);
}
FBN_HALF_TARGET16BF static inline void FBN_SYM(run_y_v16b)(int nt, const T *x, T *out,
                                                          int64_t m, TC shift, TC scale,
                                                          TC bias, int relu) {
    FBN_SYM(run_y_as)(3, nt, x, out, m, shift, scale, bias, relu);
}
FBN_HALF_TARGET16BF static FBN_NOINLINE int64_t
FBN_SYM(y_held_v16b)(int nt, int64_t S, const T *x, T *out, int64_t m, const FBN_SYM(tcoefs) *k,
                     int64_t ch) {
    return FBN_SYM(y_held_as)(3, nt, S, x, out, m, k, ch);
}
#endif
#if defined(FBN_Y_VEC8)
FBN_HALF_TARGET8 static inline void FBN_SYM(y_v8)(int nt, int g, const T *xr, int64_t ld,
                                                  T *out, int64_t ldo, int64_t m,
                                                  const FBN_SYM(tcoefs) *k, int64_t ch) {
    FBN_SYM(y_vec_relu)(1, nt, g, xr, ld, out, ldo, m, k, ch);
}
FBN_HALF_TARGET8 static inline void FBN_SYM(run_y_v8)(int nt, const T *x, T *out, int64_t m,
                                                      TC shift, TC scale, TC bias, int relu) {
    FBN_SYM(run_y_as)(1, nt, x, out, m, shift, scale, bias, relu);
}
FBN_HALF_TARGET8 static FBN_NOINLINE int64_t
FBN_SYM(y_held_v8)(int nt, int64_t S, const T *x, T *out, int64_t m, const FBN_SYM(tcoefs) *k,
                   int64_t ch) {
    return FBN_SYM(y_held_as)(1, nt, S, x, out, m, k, ch);
}
#endif
#endif /* FBN_Y_VEC */

/* y of g rows (g a constant, see fbn_affine_rows_<sfx>): in registers where the
 * CPU's level is FBN_HALF_REGS or more, else buffered. With nt (streamed: see
 * fbn_y_vec_<sfx>) in registers only: returns 0 (nothing written) where they are
 * not, else 1. */
FBN_INLINE int FBN_SYM(half_y_rows)(int nt, const T *xr, int64_t ld, T *out, int64_t ldo,
                                    int64_t m, const FBN_SYM(tcoefs) *k, int64_t ch,
                                    const int g) {
#ifdef FBN_Y_VEC
    const int level = FBN_SYM(half_isa)();
    const int64_t S = FBN_SYM(held_steps)(level, g, m, k, ch);
    if (S) { /* whole cycles with the coefficients in registers, then the rest */
        int64_t done = 0;
#if defined(FBN_Y_VEC16BF)
        if (level == 3) done = FBN_SYM(y_held_v16b)(nt, S, xr, out, m, k, ch);
#endif
#if defined(FBN_Y_VEC16)
        if (level == 2) done = FBN_SYM(y_held_v16)(nt, S, xr, out, m, k, ch);
#endif
#if defined(FBN_Y_VEC8)
        if (level == 1) done = FBN_SYM(y_held_v8)(nt, S, xr, out, m, k, ch);
#endif
        if (done == m) return 1;
        xr += done, out += done, m -= done, ch += done;
    }
#if defined(FBN_Y_VEC16BF)
    if (level == 3) {
        FBN_SYM(y_v16b)(nt, g, xr, ld, out, ldo, m, k, ch);
        return 1;
    }
#endif
#if defined(FBN_Y_VEC16)
    if (level == 2) {
        FBN_SYM(y_v16)(nt, g, xr, ld, out, ldo, m, k, ch);
        return 1;
    }
#endif
#if defined(FBN_Y_VEC8)
    if (level == 1) {
        FBN_SYM(y_v8)(nt, g, xr, ld, out, ldo, m, k, ch);
        return 1;
    }
#endif
#endif
    if (nt) return 0;
    FBN_SYM(y_blocks)(xr, ld, out, ldo, m, k, ch, g);
    return 1;
}

/* Rows shape: y of one channel's m values in registers where the CPU's level is
 * FBN_HALF_REGS or more (returns 1), else 0 (the caller's buffered loop:
 * fbn_block_values_<sfx>); nt: streamed (see fbn_run_y_vec_<sfx>), m a multiple
 * of FBN_VW (see fbn_run_y_vec_<sfx>). out may be x. */
FBN_INLINE int FBN_SYM(half_run_y)(int nt, const T *x, T *out, int64_t m, TC shift, TC scale,
                                   TC bias, int relu) {
#ifdef FBN_Y_VEC
    const int level = FBN_SYM(half_isa)();
#if defined(FBN_Y_VEC16BF)
    if (level == 3) {
        FBN_SYM(run_y_v16b)(nt, x, out, m, shift, scale, bias, relu);
        return 1;
    }
#endif
#if defined(FBN_Y_VEC16)
    if (level == 2) {
        FBN_SYM(run_y_v16)(nt, x, out, m, shift, scale, bias, relu);
        return 1;
    }
#endif
#if defined(FBN_Y_VEC8)
    if (level == 1) {
        FBN_SYM(run_y_v8)(nt, x, out, m, shift, scale, bias, relu);
        return 1;
    }
#endif
#endif
    (void)nt, (void)x, (void)out, (void)m, (void)shift, (void)scale, (void)bias, (void)relu;
    return 0;
}

#undef FBN_Y_VEC
#undef FBN_Y_VEC8
#undef FBN_Y_VEC16
#undef FBN_Y_VEC16BF
#undef FBN_HALF_VEC16BF
#undef FBN_VW
#undef FBN_Y_HELD
