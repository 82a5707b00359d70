/* float32 / float64, columns shape, streamed rows one by one: y of a row's whole
 * 64-byte lines straight from the registers to memory by non-temporal stores,
 * without the L1 buffer and its copy (as 16-bit data do: kern_half_y.h). A
 * per-dtype template (see kern_dtype.h) for the wide types, included by
 * kern_dtype.h before kern_walk.h, whose fbn_span_direct_<sfx> calls
 * fbn_direct_y_row_<sfx> for the part fbn_direct_part_<sfx> (kern_elemwise.h)
 * gives. GCC emits no non-temporal stores from vectorised loops, so each store
 * width has a function of its own, compiled for its instruction set and chosen by
 * fbn_stream_width() (the CPU's widest, or FASTBN_STREAM_WIDTH). The arithmetic is
 * fbn_affine1_<sfx>'s, lane by lane: the same bits (no contraction:
 * -ffp-contract=off). Measurements: docs/performance.md. */

#if FBN_CAN_STREAM && defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* The helpers compiled for AVX2, which AVX-512F includes: both loops inline them. */
#pragma GCC push_options
#pragma GCC target("avx2")

/* Half a 64-byte line of TC values in a GCC vector, and its compare mask (32
 * bytes: GCC split 64-byte vectors badly for AVX2). */
typedef TC FBN_SYM(vhalf) __attribute__((vector_size(32)));
typedef FBN_VINT FBN_SYM(vmask) __attribute__((vector_size(32)));
#define FBN_DIRECT_HALF (32 / (int)sizeof(T)) /* values of half a line */

/* FBN_DIRECT_HALF values from p. */
FBN_INLINE FBN_SYM(vhalf) FBN_SYM(direct_load)(const TC *p) {
    FBN_SYM(vhalf) v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* y of the half line from channel c (x at xr), relu a constant: v < 0 ? 0 : v
 * keeps NaN and -0.0, as fbn_affine1_<sfx>. */
FBN_INLINE FBN_SYM(vhalf) FBN_SYM(direct_y)(const T *xr, const TC *shift, const TC *scale,
                                            const TC *bias, int64_t c, const int relu) {
    FBN_SYM(vhalf) y = (FBN_SYM(direct_load)(xr + c) - FBN_SYM(direct_load)(shift + c)) *
                           FBN_SYM(direct_load)(scale + c) +
                       FBN_SYM(direct_load)(bias + c);
    if (relu) {
        const FBN_SYM(vhalf) zero = {0};
        y = (FBN_SYM(vhalf))((FBN_SYM(vmask))y & ~(y < zero));
    }
    return y;
}
#pragma GCC pop_options

/* The two loops below differ in their stores only: an intrinsic of one
 * instruction set cannot sit in a function inlined into both. */
#pragma GCC push_options
#pragma GCC target("avx512f")
/* y of m values (whole lines; out aligned to 64 bytes), a 64-byte store a line;
 * relu a constant. */
FBN_INLINE void FBN_SYM(direct_row64_as)(const T *xr, T *out, int64_t m, const TC *shift,
                                         const TC *scale, const TC *bias, const int relu) {
    for (int64_t c = 0; c < m; c += 2 * FBN_DIRECT_HALF) {
        const __m256i lo = (__m256i)FBN_SYM(direct_y)(xr, shift, scale, bias, c, relu);
        const __m256i hi =
            (__m256i)FBN_SYM(direct_y)(xr, shift, scale, bias, c + FBN_DIRECT_HALF, relu);
        _mm512_stream_si512((__m512i *)(out + c),
                            _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1));
    }
}
static void FBN_SYM(direct_row64)(const T *xr, T *out, int64_t m, const TC *shift,
                                  const TC *scale, const TC *bias, int relu) {
    if (relu)
        FBN_SYM(direct_row64_as)(xr, out, m, shift, scale, bias, 1);
    else
        FBN_SYM(direct_row64_as)(xr, out, m, shift, scale, bias, 0);
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2")
/* fbn_direct_row64_as_<sfx> by two 32-byte stores a line. */
FBN_INLINE void FBN_SYM(direct_row32_as)(const T *xr, T *out, int64_t m, const TC *shift,
                                         const TC *scale, const TC *bias, const int relu) {
    for (int64_t c = 0; c < m; c += 2 * FBN_DIRECT_HALF) {
        __m256i *o = (__m256i *)(out + c);
        _mm256_stream_si256(o, (__m256i)FBN_SYM(direct_y)(xr, shift, scale, bias, c, relu));
        _mm256_stream_si256(
            o + 1, (__m256i)FBN_SYM(direct_y)(xr, shift, scale, bias, c + FBN_DIRECT_HALF, relu));
    }
}
static void FBN_SYM(direct_row32)(const T *xr, T *out, int64_t m, const TC *shift,
                                  const TC *scale, const TC *bias, int relu) {
    if (relu)
        FBN_SYM(direct_row32_as)(xr, out, m, shift, scale, bias, 1);
    else
        FBN_SYM(direct_row32_as)(xr, out, m, shift, scale, bias, 0);
}
#pragma GCC pop_options

/* y of m values of one row (whole 64-byte lines of out, channels from ch) by
 * stores of w bytes (fbn_direct_part_<sfx>'s nt: 64 or 32). Returns 0 (nothing
 * written) for a leaky ReLU's slope, which the loops do not take. */
FBN_INLINE int FBN_SYM(direct_y_row)(int w, const T *xr, T *out, int64_t m,
                                     const FBN_SYM(tcoefs) *k, int64_t ch) {
    if (k->relu > 1) return 0;
    if (w == 64)
        FBN_SYM(direct_row64)(xr, out, m, k->shift + ch, k->scale + ch, k->bias + ch, k->relu);
    else
        FBN_SYM(direct_row32)(xr, out, m, k->shift + ch, k->scale + ch, k->bias + ch, k->relu);
    return 1;
}
#else
FBN_INLINE int FBN_SYM(direct_y_row)(int w, const T *xr, T *out, int64_t m,
                                     const FBN_SYM(tcoefs) *k, int64_t ch) {
    (void)w, (void)xr, (void)out, (void)m, (void)k, (void)ch;
    return 0;
}
#endif
