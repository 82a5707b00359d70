/* The kernels: their dtype-independent parts, then one instantiation of the
 * templates per dtype (kern_dtype.h). The tiling is plan.c, the work memory
 * work.c, the thread pool parallel.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compiler.h"
#include "fastbn.h"
#include "half.h"
#include "plan.h"

FBN_DISPATCH void fbn_invstd(int64_t channels, const double *var, double eps, double *invstd) {
    const double *restrict v = var;
    double *restrict is = invstd;
    for (int64_t c = 0; c < channels; c++) is[c] = 1.0 / sqrt(v[c] + eps);
}

FBN_DISPATCH void fbn_coefficients(int64_t channels, const double *mean_hi,
                                   const double *mean_lo, const double *invstd,
                                   const double *gamma, const double *beta, double *shift,
                                   double *scale, double *bias) {
    const double *restrict hi = mean_hi, *restrict lo = mean_lo, *restrict is = invstd;
    const double *restrict g = gamma, *restrict be = beta;
    double *restrict sh = shift, *restrict sc = scale, *restrict bi = bias;
    /* one simple loop per optional input, so that each vectorises (with few rows
     * per channel, this counts) */
    for (int64_t c = 0; c < channels; c++) {
        sh[c] = hi[c];
        sc[c] = is[c];
        bi[c] = 0.0;
    }
    if (g)
        for (int64_t c = 0; c < channels; c++) sc[c] = g[c] * is[c];
    if (be)
        for (int64_t c = 0; c < channels; c++) bi[c] = be[c];
    /* the residual is dropped when 0 or beside an infinite scale (never NaN) */
    if (lo)
        for (int64_t c = 0; c < channels; c++)
            bi[c] = lo[c] != 0.0 && FBN_FINITE(sc[c]) ? bi[c] - lo[c] * sc[c] : bi[c];
}

int fbn_openmp_enabled(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int fbn_max_threads(void) { return fbn_pool_max_threads(); }

const char *fbn_simd_paths(void) { return FBN_SIMD_PATHS; }

const char *fbn_compiler(void) {
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#else
    return "unknown C99 compiler";
#endif
}

/* The instantiations (see kern_dtype.h for the parameters). FBN_STREAM_V: SSE2's
 * non-temporal store (baseline x86-64), used where FBN_CAN_STREAM. */
#define FBN_SFX f32
#define T float
#define TC float
#define FBN_VINT int32_t
#define FBN_STREAM_V(d, v) _mm_stream_ps((d), (__m128)(v))
#include "kern_dtype.h"
#undef FBN_SFX
#undef T
#undef TC
#undef FBN_VINT
#undef FBN_STREAM_V

#define FBN_SFX f64
#define T double
#define TC double
#define FBN_VINT int64_t
#define FBN_STREAM_V(d, v) _mm_stream_pd((d), (__m128d)(v))
#include "kern_dtype.h"
#undef FBN_SFX
#undef T
#undef TC
#undef FBN_VINT
#undef FBN_STREAM_V

/* Half precision (issue 19): data stored as float16 or bfloat16 (the structs of
 * fastbn.h, of their bits), computed in float; each value converted on load and
 * rounded once on store by src_c/half.h (in loops the compiler vectorises with the
 * dispatched instruction set's integer and float operations). Streamed output goes
 * a cache line at a time (fbn_stream_values_<sfx>): no FBN_STREAM_V. */
#define FBN_NARROW 1
#define FBN_SFX f16
#define T fbn_float16
#define TC float
#define FBN_VINT int32_t
#define FBN_LD(v) fbn_f16_to_f32((v).bits)
#define FBN_ST(v) ((fbn_float16){fbn_f32_to_f16(v)})
#include "kern_dtype.h"
#undef FBN_SFX
#undef T
#undef TC
#undef FBN_VINT

#define FBN_SFX bf16
#define T fbn_bfloat16
#define TC float
#define FBN_VINT int32_t
#define FBN_LD(v) fbn_bf16_to_f32((v).bits)
#define FBN_ST(v) ((fbn_bfloat16){fbn_f32_to_bf16(v)})
#include "kern_dtype.h"
#undef FBN_SFX
#undef T
#undef TC
#undef FBN_VINT
#undef FBN_NARROW
