/* 16-bit data (FBN_NARROW: float16, bfloat16), columns shape (inner == 1): y of a
 * row group (issue 19). A per-dtype template (see kern_dtype.h), included by
 * kern_elemwise.h after kern_half_dx.h; fbn_affine_rows_<sfx> calls
 * fbn_half_y_rows_<sfx>.
 *
 * The buffered form (fbn_y_blocks_<sfx>) widens blocks of FBN_HBLOCK channels into
 * a float array, computes them in a second loop and narrows them in a third. For
 * float16 (FBN_HALF_Y_REGS, kernels_f16.c) each step of FBN_VW channels is instead
 * widened into a float array of one vector register, computed with the buffered
 * loop's function (fbn_affine1_<sfx>: the same operations and rounding) and
 * narrowed, as kern_half_dx.h does dx (see there: isa, FBN_LD_V / FBN_ST_V, the
 * target functions, the dispatch by fbn_half_level). Inference, 1 thread, CPU
 * time, against the buffered form: float16 (N, C) 8192x4096 0.83x, 512x4096
 * 0.73x, 4096x300 1.01x, NHWC 0.85x; bfloat16 8192x4096 0.87x but 512x4096 1.41x
 * and 4096x300 1.12x (its narrowing in registers is integer rounding; data in
 * cache), so bfloat16 keeps the buffered form
 * (bench/results/2026-12-03_h19g_y_ab.txt on branch h19g_y; this port's A/B:
 * 2026-12-03_h19y_ab.txt). The remainder of a span (fewer than FBN_VW channels)
 * stays buffered. */

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

#if defined(FBN_HALF_Y_REGS) && (defined(FBN_HALF_VEC16) || defined(FBN_HALF_VEC8))
#define FBN_Y_VEC 1 /* this file's register forms compiled (float16 with half.h's vector forms) */

/* The remainder of a span (fewer than FBN_VW channels; g a variable: one function
 * per dtype), buffered. */
static void FBN_SYM(y_rest)(int g, const T *xr, int64_t ld, T *out, int64_t ldo, int64_t m,
                            const FBN_SYM(tcoefs) *k, int64_t ch) {
    FBN_SYM(y_blocks)(xr, ld, out, ldo, m, k, ch, g);
}

/* y of g rows as fbn_y_blocks_<sfx>, FBN_VW channels at a time in registers, all g
 * rows' loads of a step first; isa and g constants (relu a variable, as in the
 * wider types' loop). */
FBN_INLINE void FBN_SYM(y_vec)(const int isa, const int g, const T *xr, int64_t ld, T *out,
                               int64_t ldo, int64_t m, const FBN_SYM(tcoefs) *k, int64_t ch) {
    const TC *shift = k->shift + ch, *scale = k->scale + ch, *bias = k->bias + ch;
    const int relu = k->relu;
    int64_t c = 0;
    for (; c + FBN_VW <= m; c += FBN_VW) {
        TC xv[FBN_GROUP][FBN_VW];
        for (int i = 0; i < g; i++) FBN_LD_V(isa, xr + i * ld + c, xv[i]);
        for (int i = 0; i < g; i++) {
            TC ov[FBN_VW];
            for (int j = 0; j < FBN_VW; j++)
                ov[j] = FBN_SYM(affine1)(xv[i][j], shift[c + j], scale[c + j], bias[c + j], relu);
            FBN_ST_V(isa, ov, out + i * ldo + c);
        }
    }
    if (c < m) FBN_SYM(y_rest)(g, xr + c, ld, out + c, ldo, m - c, k, ch + c);
}

/* fbn_y_vec_<sfx> with g (FBN_GROUP, 2, else rows one by one) a constant; isa a
 * constant. */
FBN_INLINE void FBN_SYM(y_vec_g)(const int isa, int g, const T *xr, int64_t ld, T *out,
                                 int64_t ldo, int64_t m, const FBN_SYM(tcoefs) *k, int64_t ch) {
    if (g == FBN_GROUP)
        FBN_SYM(y_vec)(isa, FBN_GROUP, xr, ld, out, ldo, m, k, ch);
    else if (g == 2)
        FBN_SYM(y_vec)(isa, 2, xr, ld, out, ldo, m, k, ch);
    else
        for (int i = 0; i < g; i++)
            FBN_SYM(y_vec)(isa, 1, xr + i * ld, ld, out + i * ldo, ldo, m, k, ch);
}

/* The loop compiled for each instruction set (static inline: no warning where a
 * build without dispatch leaves one unused). */
#if defined(FBN_HALF_VEC16)
FBN_HALF_TARGET16 static inline void FBN_SYM(y_v16)(int g, const T *xr, int64_t ld, T *out,
                                                    int64_t ldo, int64_t m,
                                                    const FBN_SYM(tcoefs) *k, int64_t ch) {
    FBN_SYM(y_vec_g)(2, g, xr, ld, out, ldo, m, k, ch);
}
#endif
#if defined(FBN_HALF_VEC8)
FBN_HALF_TARGET8 static inline void FBN_SYM(y_v8)(int g, const T *xr, int64_t ld, T *out,
                                                  int64_t ldo, int64_t m,
                                                  const FBN_SYM(tcoefs) *k, int64_t ch) {
    FBN_SYM(y_vec_g)(1, g, xr, ld, out, ldo, m, k, ch);
}
#endif
#endif /* FBN_HALF_Y_REGS && (FBN_HALF_VEC16 || FBN_HALF_VEC8) */

/* y of g rows (g a constant, see fbn_affine_rows_<sfx>): for float16 in registers
 * where the CPU has the conversions, else (and for bfloat16) buffered. */
FBN_INLINE void FBN_SYM(half_y_rows)(const T *xr, int64_t ld, T *out, int64_t ldo, int64_t m,
                                     const FBN_SYM(tcoefs) *k, int64_t ch, const int g) {
#ifdef FBN_Y_VEC
    const int level = fbn_half_level();
#if defined(FBN_HALF_VEC16)
    if (level == 2) {
        FBN_SYM(y_v16)(g, xr, ld, out, ldo, m, k, ch);
        return;
    }
#endif
#if defined(FBN_HALF_VEC8)
    if (level == 1) {
        FBN_SYM(y_v8)(g, xr, ld, out, ldo, m, k, ch);
        return;
    }
#endif
#endif
    FBN_SYM(y_blocks)(xr, ld, out, ldo, m, k, ch, g);
}

#undef FBN_Y_VEC
#undef FBN_VW
