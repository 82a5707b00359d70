/* Conversions between float and the 16-bit storage formats of half-precision data
 * (issue 19): IEEE binary16 (NumPy's float16) and bfloat16 (ml_dtypes.bfloat16).
 *
 * Data of these types are stored in 16 bits and computed in float: every value is
 * widened exactly (both formats are subsets of float) and every result narrowed
 * once, rounding to nearest, ties to even.
 *
 * Two forms, bitwise equal on every input (tests/test_half_conversions.py checks
 * them against each other on all 2^16 halves and on 2^32 / 251 floats, every float
 * in the slow run, and against NumPy and ml_dtypes):
 *
 *  - Portable, exact scalar functions fbn_f16_to_f32 / fbn_f32_to_f16 /
 *    fbn_bf16_to_f32 / fbn_f32_to_bf16: integer operations, selects and exact
 *    float additions (no branch, no table), which flush-to-zero and
 *    denormals-are-zero do not change (float16 narrowing of subnormal results
 *    needs the default rounding mode), and which the compiler vectorises with the
 *    SIMD instructions of whatever instruction set a function is compiled for
 *    (SSE2, AVX2, AVX-512: see the kernels' runtime dispatch).
 *  - Vector forms fbn_f16x8_* / fbn_f16x16_* / fbn_bf16x8_* / fbn_bf16x16_*, defined
 *    where the translation unit (or the enclosing #pragma GCC target) enables the
 *    instructions: F16C (VCVTPH2PS / VCVTPS2PH, 8 values) and AVX-512F (16 values)
 *    for binary16; AVX2 and AVX-512F integer operations for bfloat16, and where
 *    the CPU has AVX512_BF16 (with AVX512DQ, BW, VL) its VCVTNEPS2BF16
 *    (fbn_bf16x16_round_bf, fbn_bf16_narrow_bf: fewer instructions than the integer
 *    form): its rounding is the integer form's (add 0x7fff plus the kept lowest
 *    bit, shift) but it flushes float denormals to zero (Intel SDM,
 *    "convert_fp32_to_bfloat16"), whereas bfloat16 has the float's exponent range
 *    and must keep them, so denormals (VFPCLASSPS) are rounded otherwise.
 *  - Block forms fbn_f16_widen / fbn_f16_narrow / fbn_bf16_widen / fbn_bf16_narrow:
 *    n values between 16-bit data and a float buffer, by the widest vector form
 *    the CPU has (AVX-512F, else F16C + AVX2, else the portable loop; chosen per
 *    call from libgcc's CPU model with the kernels' runtime dispatch, by the build's
 *    flags without it). The kernels convert their hot loops' data through these
 *    (FBN_LD_N / FBN_ST_N, kern_dtype.h): GCC 12 does not vectorise F16C
 *    conversions by itself, and its vectorisation of the portable forms inside the
 *    kernels' loops left float16 3-5x slower than float32.
 *  - 16-value forms fbn_f16_widen16 / fbn_f16_narrow16 / fbn_bf16_widen16 /
 *    fbn_bf16_narrow16 by a given instruction set (a constant): the columns
 *    shape's dx loop (src_c/kern_half_dx.h; y: kern_half_y.h) converts
 *    in registers with them, in functions compiled for that instruction set,
 *    without the block forms' float buffers.
 *
 * NaNs stay NaNs of the same sign: narrowing keeps the payload's top bits and sets
 * the quiet bit (as VCVTPS2PH and VCVTNEPS2BF16 do); widening binary16 sets the
 * quiet bit too (as VCVTPH2PS does). Infinities stay infinities; values beyond
 * the largest finite binary16 (65504) round to infinity per IEEE 754 (from
 * 65520 up); binary16 subnormals (below 2^-14) are rounded exactly, as are
 * bfloat16's (float's) subnormals.
 *
 * Self-contained: C99 plus, for the vector forms, <immintrin.h>.
 */
#ifndef FBN_HALF_H
#define FBN_HALF_H

#include <stdint.h>
#include <string.h>

#ifndef FBN_HALF_INLINE
#define FBN_HALF_INLINE static inline
#endif

/* GCC on x86-64 with the kernels' runtime dispatch (see compiler.h): the vector
 * forms are compiled for their instruction sets (#pragma GCC target) whatever the
 * build's, and the block conversions pick one by what the CPU has. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FBN_NO_DISPATCH)
#define FBN_HALF_RUNTIME 1
#else
#define FBN_HALF_RUNTIME 0
#endif

typedef uint16_t fbn_f16;  /* the bits of an IEEE binary16 (float16) value */
typedef uint16_t fbn_bf16; /* the bits of a bfloat16 value */

FBN_HALF_INLINE uint32_t fbn_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

FBN_HALF_INLINE float fbn_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- binary16 ----------------------------------------------------------- */

/* Exact. Normal values: exponent rebiased (15 -> 127), significand moved up 13
 * bits. Subnormals m * 2^-24 (m < 1024): the normal float 2^-14 * (1 + m / 1024)
 * (the same bits, exponent field 113) less 2^-14, an exact subtraction of normal
 * floats (so rounding mode, flush-to-zero and denormals-are-zero do not matter).
 * Infinity and NaN: exponent field 255, NaNs quieted. */
FBN_HALF_INLINE float fbn_f16_to_f32(fbn_f16 h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t mag = h & 0x7fffu;
    const uint32_t shifted = mag << 13;
    const uint32_t normal = shifted + (112u << 23);
    const uint32_t subnormal =
        fbn_f32_bits(fbn_bits_f32(normal + (1u << 23)) - 6.103515625e-05f); /* - 2^-14 */
    const uint32_t special = (shifted + (224u << 23)) | (mag > 0x7c00u ? 0x00400000u : 0u);
    const uint32_t r = mag >= 0x7c00u ? special : mag >= 0x0400u ? normal : subnormal;
    return fbn_bits_f32(sign | r);
}

/* Round to nearest, ties to even. Normal range (|f| >= 2^-14): exponent rebiased
 * (127 -> 15) and 13 bits rounded off with integer operations; a carry out of the
 * significand moves the exponent up, as it should; 65520 and beyond (and
 * infinity) reach 0x7c00 or more: infinity. Subnormal range: |f| + 0.5, whose
 * float addition rounds |f| to a multiple of 2^-24 (0.5's unit in the last place)
 * to nearest even, leaves the result's bits in the low bits (less 0.5's bits); a
 * float subnormal gives 0 whether or not denormals count as zero. This one step
 * relies on the default rounding mode (round to nearest), which NumPy and Python
 * assume too; every other step is exact. */
FBN_HALF_INLINE fbn_f16 fbn_f32_to_f16(float f) {
    const uint32_t u = fbn_f32_bits(f);
    const uint32_t sign = (u >> 16) & 0x8000u;
    const uint32_t x = u & 0x7fffffffu;
    const uint32_t rn = (x - (112u << 23) + 0x0fffu + ((x >> 13) & 1u)) >> 13;
    const uint32_t normal = rn < 0x7c00u ? rn : 0x7c00u;
    const uint32_t subnormal = fbn_f32_bits(fbn_bits_f32(x) + 0.5f) - 0x3f000000u;
    const uint32_t nan = 0x7e00u | ((x >> 13) & 0x3ffu);
    const uint32_t r = x > 0x7f800000u ? nan : x >= 0x38800000u ? normal : subnormal;
    return (fbn_f16)(sign | r);
}

/* ---- bfloat16: the top half of a float ----------------------------------- */

FBN_HALF_INLINE float fbn_bf16_to_f32(fbn_bf16 h) { return fbn_bits_f32((uint32_t)h << 16); }

/* Round to nearest, ties to even: add half a unit of the kept part less one, plus
 * its lowest bit, and truncate. Subnormals need nothing more (the float and
 * bfloat16 exponent fields are the same); the largest finite floats round to
 * infinity (0x7f80), as IEEE 754 overflow does. NaN: quieted, sign and payload top. */
FBN_HALF_INLINE fbn_bf16 fbn_f32_to_bf16(float f) {
    const uint32_t u = fbn_f32_bits(f);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t nan = (u >> 16) | 0x0040u;
    return (fbn_bf16)((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

/* ---- vector forms ----------------------------------------------------------- */

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__) || FBN_HALF_RUNTIME
#include <immintrin.h>
#endif

/* 16 narrowed values (32 bytes, one vector) at p, stored as nt says (a
 * constant: 0 plain; non-temporal for streamed runs, kern_half_y.h: 1 one store,
 * p aligned to 32; 2 two, p aligned to 16). Compiled for AVX2 alone, so that both
 * the F16C and the AVX-512F forms inline it (a callee's target must be a subset
 * of its caller's). */
#if FBN_HALF_RUNTIME
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
#if defined(__AVX2__)
FBN_HALF_INLINE void fbn_store16x16(void *p, __m256i v, const int nt) {
    if (nt == 1) {
        _mm256_stream_si256((__m256i *)p, v);
    } else if (nt == 2) {
        _mm_stream_si128((__m128i *)p, _mm256_castsi256_si128(v));
        _mm_stream_si128((__m128i *)p + 1, _mm256_extracti128_si256(v, 1));
    } else {
        _mm256_storeu_si256((__m256i *)p, v);
    }
}
FBN_HALF_INLINE __m256i fbn_join8x8(__m128i lo, __m128i hi) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}
#endif
#if FBN_HALF_RUNTIME
#pragma GCC pop_options
#endif

#if FBN_HALF_RUNTIME
#pragma GCC push_options
#pragma GCC target("avx2,f16c")
#endif

#if defined(__F16C__)
#define FBN_HAVE_F16C 1
/* 8 binary16 values (16 bytes, unaligned) as floats, and back (rounding to
 * nearest even whatever MXCSR says). */
FBN_HALF_INLINE __m256 fbn_f16x8_load(const fbn_f16 *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
FBN_HALF_INLINE void fbn_f16x8_store(fbn_f16 *p, __m256 v) {
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#endif

#if defined(__AVX2__)
#define FBN_HAVE_BF16X8 1
FBN_HALF_INLINE __m256 fbn_bf16x8_load(const fbn_bf16 *p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
FBN_HALF_INLINE __m128i fbn_bf16x8_round(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
    const __m256i mag = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
    const __m256i isnan = _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x7f800000));
    const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    const __m256i b = _mm256_blendv_epi8(r, nan, isnan); /* 0..0xffff per lane */
    /* pack the 8 lanes' low 16 bits: packus saturates at 0xffff, which the lanes
     * never exceed; it interleaves 128-bit halves, undone by the permute */
    const __m256i packed = _mm256_packus_epi32(b, b);
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08));
}
FBN_HALF_INLINE void fbn_bf16x8_store(fbn_bf16 *p, __m256 v) {
    _mm_storeu_si128((__m128i *)p, fbn_bf16x8_round(v));
}
#endif

/* Blocks of n values (any n; the tail one by one): the kernels' loads and stores
 * of half data convert a block at a time into or out of a float buffer. */
#if defined(__F16C__)
FBN_HALF_INLINE void fbn_f16_widen_f16c(const fbn_f16 *s, float *d, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, fbn_f16x8_load(s + i));
    for (; i < n; i++) d[i] = fbn_f16_to_f32(s[i]);
}
FBN_HALF_INLINE void fbn_f16_narrow_f16c(const float *s, fbn_f16 *d, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) fbn_f16x8_store(d + i, _mm256_loadu_ps(s + i));
    for (; i < n; i++) d[i] = fbn_f32_to_f16(s[i]);
}
#endif
#if defined(__AVX2__)
FBN_HALF_INLINE void fbn_bf16_widen_avx2(const fbn_bf16 *s, float *d, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, fbn_bf16x8_load(s + i));
    for (; i < n; i++) d[i] = fbn_bf16_to_f32(s[i]);
}
FBN_HALF_INLINE void fbn_bf16_narrow_avx2(const float *s, fbn_bf16 *d, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) fbn_bf16x8_store(d + i, _mm256_loadu_ps(s + i));
    for (; i < n; i++) d[i] = fbn_f32_to_bf16(s[i]);
}
#endif

/* 16 values (the register loops' step, kern_half_dx.h) as two 8-value halves;
 * narrowed, joined and stored by fbn_store16x16. */
#if defined(__F16C__) && defined(__AVX2__)
#define FBN_HALF_VEC8 1
FBN_HALF_INLINE void fbn_f16_widen16_f16c(const fbn_f16 *s, float *d) {
    _mm256_storeu_ps(d, fbn_f16x8_load(s));
    _mm256_storeu_ps(d + 8, fbn_f16x8_load(s + 8));
}
FBN_HALF_INLINE void fbn_f16_narrow16_f16c(const float *s, fbn_f16 *d, const int nt) {
    if (nt) {
        const int r = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        fbn_store16x16(d, fbn_join8x8(_mm256_cvtps_ph(_mm256_loadu_ps(s), r),
                                      _mm256_cvtps_ph(_mm256_loadu_ps(s + 8), r)), nt);
        return;
    }
    fbn_f16x8_store(d, _mm256_loadu_ps(s));
    fbn_f16x8_store(d + 8, _mm256_loadu_ps(s + 8));
}
FBN_HALF_INLINE void fbn_bf16_widen16_avx2(const fbn_bf16 *s, float *d) {
    _mm256_storeu_ps(d, fbn_bf16x8_load(s));
    _mm256_storeu_ps(d + 8, fbn_bf16x8_load(s + 8));
}
FBN_HALF_INLINE void fbn_bf16_narrow16_avx2(const float *s, fbn_bf16 *d, const int nt) {
    if (nt) {
        fbn_store16x16(d, fbn_join8x8(fbn_bf16x8_round(_mm256_loadu_ps(s)),
                                      fbn_bf16x8_round(_mm256_loadu_ps(s + 8))), nt);
        return;
    }
    fbn_bf16x8_store(d, _mm256_loadu_ps(s));
    fbn_bf16x8_store(d + 8, _mm256_loadu_ps(s + 8));
}
#endif

#if FBN_HALF_RUNTIME
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f")
#endif

#if defined(__AVX512F__)
#define FBN_HAVE_HALF16 1
FBN_HALF_INLINE __m512 fbn_f16x16_load(const fbn_f16 *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
FBN_HALF_INLINE __m256i fbn_f16x16_round(__m512 v) {
    return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
FBN_HALF_INLINE void fbn_f16x16_store(fbn_f16 *p, __m512 v) {
    _mm256_storeu_si256((__m256i *)p, fbn_f16x16_round(v));
}
FBN_HALF_INLINE __m512 fbn_bf16x16_load(const fbn_bf16 *p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
FBN_HALF_INLINE __m256i fbn_bf16x16_round(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __m512i mag = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
    const __mmask16 isnan = _mm512_cmpgt_epi32_mask(mag, _mm512_set1_epi32(0x7f800000));
    const __m512i nan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(r, isnan, nan));
}
FBN_HALF_INLINE void fbn_bf16x16_store(fbn_bf16 *p, __m512 v) {
    _mm256_storeu_si256((__m256i *)p, fbn_bf16x16_round(v));
}

/* 16 values (the register loops' step, kern_half_dx.h): one __m512; narrowed,
 * stored by fbn_store16x16. */
#define FBN_HALF_VEC16 1
FBN_HALF_INLINE void fbn_f16_widen16_avx512(const fbn_f16 *s, float *d) {
    _mm512_storeu_ps(d, fbn_f16x16_load(s));
}
FBN_HALF_INLINE void fbn_f16_narrow16_avx512(const float *s, fbn_f16 *d, const int nt) {
    fbn_store16x16(d, fbn_f16x16_round(_mm512_loadu_ps(s)), nt);
}
FBN_HALF_INLINE void fbn_bf16_widen16_avx512(const fbn_bf16 *s, float *d) {
    _mm512_storeu_ps(d, fbn_bf16x16_load(s));
}
FBN_HALF_INLINE void fbn_bf16_narrow16_avx512(const float *s, fbn_bf16 *d, const int nt) {
    fbn_store16x16(d, fbn_bf16x16_round(_mm512_loadu_ps(s)), nt);
}

FBN_HALF_INLINE void fbn_f16_widen_avx512(const fbn_f16 *s, float *d, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, fbn_f16x16_load(s + i));
    for (; i < n; i++) d[i] = fbn_f16_to_f32(s[i]);
}
FBN_HALF_INLINE void fbn_f16_narrow_avx512(const float *s, fbn_f16 *d, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) fbn_f16x16_store(d + i, _mm512_loadu_ps(s + i));
    for (; i < n; i++) d[i] = fbn_f32_to_f16(s[i]);
}
FBN_HALF_INLINE void fbn_bf16_widen_avx512(const fbn_bf16 *s, float *d, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(d + i, fbn_bf16x16_load(s + i));
    for (; i < n; i++) d[i] = fbn_bf16_to_f32(s[i]);
}
FBN_HALF_INLINE void fbn_bf16_narrow_avx512(const float *s, fbn_bf16 *d, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) fbn_bf16x16_store(d + i, _mm512_loadu_ps(s + i));
    for (; i < n; i++) d[i] = fbn_f32_to_bf16(s[i]);
}
#endif

#if FBN_HALF_RUNTIME
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16")
#endif

/* (-DFBN_NO_BF16_HW leaves it out: the AVX-512F forms then run on such CPUs too, as
 * tools/half_paths.sh can test) */
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__) && defined(__AVX512BF16__) && !defined(FBN_NO_BF16_HW)
#define FBN_HAVE_BF16_HW 1
/* A denormal v rounds as v + copysign(2^-126, v) (exact: a normal float on the same
 * grid; its bits are v's with the exponent field's lowest bit set) does, less one
 * in the exponent field (0x80); VCVTNEPS2BF16 rounds that sum right. Branchless,
 * so that the loops around it vectorise. */
FBN_HALF_INLINE __m256i fbn_bf16x16_round_bf(__m512 v) {
    const __mmask16 den = _mm512_fpclass_ps_mask(v, 0x20);
    const __m512i u = _mm512_castps_si512(v);
    const __m512i w = _mm512_mask_or_epi32(u, den, u, _mm512_set1_epi32(0x00800000));
    const __m256i r = (__m256i)_mm512_cvtneps_pbh(_mm512_castsi512_ps(w));
    return _mm256_mask_sub_epi16(r, den, r, _mm256_set1_epi16(0x80));
}
FBN_HALF_INLINE void fbn_bf16_narrow16_bf(const float *s, fbn_bf16 *d, const int nt) {
    fbn_store16x16(d, fbn_bf16x16_round_bf(_mm512_loadu_ps(s)), nt);
}
/* Blocks: a vector holding a denormal (rare) by the integer form, the rest by
 * VCVTNEPS2BF16 alone (a branch costs less here than fbn_bf16x16_round_bf's fix). */
FBN_HALF_INLINE void fbn_bf16_narrow_bf(const float *s, fbn_bf16 *d, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(s + i);
        if (_mm512_fpclass_ps_mask(v, 0x20))
            fbn_bf16x16_store(d + i, v);
        else
            _mm256_storeu_si256((__m256i *)(d + i), (__m256i)_mm512_cvtneps_pbh(v));
    }
    for (; i < n; i++) d[i] = fbn_f32_to_bf16(s[i]);
}
#endif

#if FBN_HALF_RUNTIME
#pragma GCC pop_options
#endif

/* ---- blocks: the widest form this CPU has ------------------------------------ */

/* Whether the CPU has AVX512_BF16's rounding (fbn_bf16x16_round_bf) and its
 * build: as fbn_half_level. */
FBN_HALF_INLINE int fbn_bf16_hw(void) {
#if FBN_HALF_RUNTIME && defined(FBN_HAVE_BF16_HW)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bf16");
#elif defined(FBN_HAVE_BF16_HW)
    return 1;
#else
    return 0;
#endif
}

/* 2: AVX-512F, 1: F16C and AVX2, 0: neither. With runtime dispatch, what the CPU
 * has (libgcc's CPU model, filled in when the library loads; the kernels' target
 * clones choose the same way); without it, what the build enables. */
FBN_HALF_INLINE int fbn_half_level(void) {
#if FBN_HALF_RUNTIME
    return __builtin_cpu_supports("avx512f") ? 2
           : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") ? 1 : 0;
#elif defined(__AVX512F__)
    return 2;
#elif defined(__AVX2__) && defined(__F16C__)
    return 1;
#else
    return 0;
#endif
}

/* fbn_half_level(), or 3 where bfloat16 data also round by AVX512_BF16
 * (fbn_bf16_hw): the register loops' instruction set for bfloat16. */
FBN_HALF_INLINE int fbn_half_level_bf16(void) {
    const int level = fbn_half_level();
    return level == 2 && fbn_bf16_hw() ? 3 : level;
}

/* d[i] = s[i] as float, i < n; bitwise the portable conversions' results. */
FBN_HALF_INLINE void fbn_f16_widen(const fbn_f16 *s, float *d, int64_t n) {
#if FBN_HALF_RUNTIME || defined(__AVX512F__)
    if (fbn_half_level() == 2) {
        fbn_f16_widen_avx512(s, d, n);
        return;
    }
#endif
#if FBN_HALF_RUNTIME || (defined(__AVX2__) && defined(__F16C__))
    if (fbn_half_level() == 1) {
        fbn_f16_widen_f16c(s, d, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) d[i] = fbn_f16_to_f32(s[i]);
}

/* d[i] = s[i] rounded to binary16 (nearest, ties to even), i < n. */
FBN_HALF_INLINE void fbn_f16_narrow(const float *s, fbn_f16 *d, int64_t n) {
#if FBN_HALF_RUNTIME || defined(__AVX512F__)
    if (fbn_half_level() == 2) {
        fbn_f16_narrow_avx512(s, d, n);
        return;
    }
#endif
#if FBN_HALF_RUNTIME || (defined(__AVX2__) && defined(__F16C__))
    if (fbn_half_level() == 1) {
        fbn_f16_narrow_f16c(s, d, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) d[i] = fbn_f32_to_f16(s[i]);
}

FBN_HALF_INLINE void fbn_bf16_widen(const fbn_bf16 *s, float *d, int64_t n) {
#if FBN_HALF_RUNTIME || defined(__AVX512F__)
    if (fbn_half_level() == 2) {
        fbn_bf16_widen_avx512(s, d, n);
        return;
    }
#endif
#if FBN_HALF_RUNTIME || (defined(__AVX2__) && defined(__F16C__))
    if (fbn_half_level() == 1) {
        fbn_bf16_widen_avx2(s, d, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) d[i] = fbn_bf16_to_f32(s[i]);
}

FBN_HALF_INLINE void fbn_bf16_narrow(const float *s, fbn_bf16 *d, int64_t n) {
#if defined(FBN_HAVE_BF16_HW)
    if (n >= 16 && fbn_bf16_hw()) { /* (fewer: the checks cost more than they save) */
        fbn_bf16_narrow_bf(s, d, n);
        return;
    }
#endif
#if FBN_HALF_RUNTIME || defined(__AVX512F__)
    if (fbn_half_level() == 2) {
        fbn_bf16_narrow_avx512(s, d, n);
        return;
    }
#endif
#if FBN_HALF_RUNTIME || (defined(__AVX2__) && defined(__F16C__))
    if (fbn_half_level() == 1) {
        fbn_bf16_narrow_avx2(s, d, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) d[i] = fbn_f32_to_bf16(s[i]);
}

/* ---- 16 values by a given instruction set ---------------------------------- */

/* The register loops of the kernels (kern_half_dx.h, kern_half_y.h) are compiled once per
 * instruction set, in functions with these attributes (with runtime dispatch; without it the
 * build's flags hold), where isa is a constant: 3 AVX-512F with AVX512_BF16's
 * rounding (FBN_HAVE_BF16_HW; bfloat16 data only), 2 AVX-512F (FBN_HALF_VEC16), 1
 * F16C and AVX2 (FBN_HALF_VEC8). Their 16-value conversions below then inline into those
 * functions, and, widening into a float array of one __m512 (two __m256) that the
 * loop narrows back from, stay in registers. (target_clones defines no macro per
 * clone, and the kernels' avx2 clone lacks F16C: hence functions of their own.) */
#if FBN_HALF_RUNTIME
#define FBN_HALF_TARGET16BF                                                                \
    __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16")))
#define FBN_HALF_TARGET16 __attribute__((target("avx512f")))
#define FBN_HALF_TARGET8 __attribute__((target("avx2,f16c")))
#else
#define FBN_HALF_TARGET16BF
#define FBN_HALF_TARGET16
#define FBN_HALF_TARGET8
#endif

/* d[i] = s[i] as float, i < 16, by instruction set isa (else the portable forms). */
FBN_HALF_INLINE void fbn_f16_widen16(const int isa, const fbn_f16 *s, float *d) {
    (void)isa; /* unused without the vector forms */
#if defined(FBN_HALF_VEC16)
    if (isa >= 2) {
        fbn_f16_widen16_avx512(s, d);
        return;
    }
#endif
#if defined(FBN_HALF_VEC8)
    if (isa == 1) {
        fbn_f16_widen16_f16c(s, d);
        return;
    }
#endif
    for (int i = 0; i < 16; i++) d[i] = fbn_f16_to_f32(s[i]);
}

/* d[i] = s[i] rounded to binary16, i < 16, by instruction set isa; with nt (a
 * constant) by non-temporal stores (fbn_store16x16; isa 0: plain stores). */
FBN_HALF_INLINE void fbn_f16_narrow16(const int isa, const int nt, const float *s, fbn_f16 *d) {
    (void)isa, (void)nt; /* unused without the vector forms */
#if defined(FBN_HALF_VEC16)
    if (isa >= 2) {
        fbn_f16_narrow16_avx512(s, d, nt);
        return;
    }
#endif
#if defined(FBN_HALF_VEC8)
    if (isa == 1) {
        fbn_f16_narrow16_f16c(s, d, nt);
        return;
    }
#endif
    for (int i = 0; i < 16; i++) d[i] = fbn_f32_to_f16(s[i]);
}

FBN_HALF_INLINE void fbn_bf16_widen16(const int isa, const fbn_bf16 *s, float *d) {
    (void)isa; /* unused without the vector forms */
#if defined(FBN_HALF_VEC16)
    if (isa >= 2) {
        fbn_bf16_widen16_avx512(s, d);
        return;
    }
#endif
#if defined(FBN_HALF_VEC8)
    if (isa == 1) {
        fbn_bf16_widen16_avx2(s, d);
        return;
    }
#endif
    for (int i = 0; i < 16; i++) d[i] = fbn_bf16_to_f32(s[i]);
}

FBN_HALF_INLINE void fbn_bf16_narrow16(const int isa, const int nt, const float *s,
                                        fbn_bf16 *d) {
    (void)isa, (void)nt; /* unused without the vector forms */
#if defined(FBN_HAVE_BF16_HW)
    if (isa == 3) {
        fbn_bf16_narrow16_bf(s, d, nt);
        return;
    }
#endif
#if defined(FBN_HALF_VEC16)
    if (isa >= 2) {
        fbn_bf16_narrow16_avx512(s, d, nt);
        return;
    }
#endif
#if defined(FBN_HALF_VEC8)
    if (isa == 1) {
        fbn_bf16_narrow16_avx2(s, d, nt);
        return;
    }
#endif
    for (int i = 0; i < 16; i++) d[i] = fbn_f32_to_bf16(s[i]);
}

#endif /* FBN_HALF_H */
