/* The kernels' dtype-independent parts. The templates (kern_dtype.h) are
 * instantiated once per dtype in kernels_f32.c, kernels_f64.c, kernels_f16.c and
 * kernels_bf16.c: one translation unit each, so that a build compiles them in
 * parallel. The tiling is plan.c, the work memory work.c, the thread pool parallel.c. */
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

void fbn_widen_f16(const fbn_float16 *src, double *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = fbn_f16_to_f32(src[i].bits);
}

void fbn_widen_bf16(const fbn_bfloat16 *src, double *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = fbn_bf16_to_f32(src[i].bits);
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

int fbn_half_conversions(void) { return fbn_half_level_bf16(); }

const char *fbn_compiler(void) {
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#else
    return "unknown C99 compiler";
#endif
}
