/* The kernels' dtype-independent parts. The templates (kern_dtype.h) are
 * instantiated once per dtype in kernels_f32.c, kernels_f64.c, kernels_f16.c and
 * kernels_bf16.c: one translation unit each, so that a build compiles them in
 * parallel. The tiling is plan.c, the work memory work.c, the thread pool parallel.c. */
#include <float.h>
#include <math.h>
#include <stdint.h>
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

FBN_DISPATCH void fbn_invstd_scale(int64_t channels, const double *var, double eps,
                                   const double *gamma, double *invstd, double *scale) {
    const double *restrict v = var, *restrict g = gamma;
    double *restrict is = invstd, *restrict sc = scale;
    for (int64_t c = 0; c < channels; c++) {
        const double i = 1.0 / sqrt(v[c] + eps);
        is[c] = i;
        sc[c] = g[c] * i;
    }
}

/* Branch-free loops with no library call per channel (they vectorise; a backward
 * of few rows runs them over every channel): the unit above a finite |hi| is the
 * next double, its bits one more, less |hi|. */
FBN_DISPATCH int fbn_saved_stats_ok(int64_t channels, const double *mean_hi,
                                    const double *mean_lo, const double *invstd) {
    const double *restrict hi = mean_hi, *restrict lo = mean_lo, *restrict is = invstd;
    int bad = 0;
    for (int64_t c = 0; c < channels; c++) bad |= (is[c] < 0.0) | (is[c] > DBL_MAX);
    if (lo)
        for (int64_t c = 0; c < channels; c++) {
            const double a = fabs(hi[c]);
            uint64_t u;
            double up;
            memcpy(&u, &a, sizeof u);
            u += 1;
            memcpy(&up, &u, sizeof up);
            bad |= (a <= DBL_MAX) & !(fabs(lo[c]) <= up - a);
        }
    return !bad;
}

/* fbn_coefficients with which optional inputs there are as constants (has_g,
 * has_b, has_lo): one loop, reading each input once and writing each output once
 * (one loop per input, as before, wrote scale and bias again: store-bound on wide
 * arrays), which still vectorises. */
FBN_INLINE void fbn_coefficients_as(int64_t channels, const double *restrict hi,
                                    const double *restrict lo, const double *restrict is,
                                    const double *restrict g, const double *restrict be,
                                    double *restrict sh, double *restrict sc,
                                    double *restrict bi, const int has_g, const int has_b,
                                    const int has_lo) {
    for (int64_t c = 0; c < channels; c++) {
        const double s = has_g ? g[c] * is[c] : is[c];
        const double b = has_b ? be[c] : 0.0;
        sh[c] = hi[c];
        sc[c] = s;
        /* the residual is dropped when 0 or beside an infinite scale (never NaN) */
        bi[c] = has_lo && lo[c] != 0.0 && FBN_FINITE(s) ? b - lo[c] * s : b;
    }
}

FBN_DISPATCH void fbn_coefficients(int64_t channels, const double *mean_hi,
                                   const double *mean_lo, const double *invstd,
                                   const double *gamma, const double *beta, double *shift,
                                   double *scale, double *bias) {
    const double *hi = mean_hi, *lo = mean_lo, *is = invstd, *g = gamma, *be = beta;
    const int k = (g != NULL) + 2 * (be != NULL) + 4 * (lo != NULL);
    switch (k) {
    case 0: fbn_coefficients_as(channels, hi, lo, is, g, be, shift, scale, bias, 0, 0, 0); break;
    case 1: fbn_coefficients_as(channels, hi, lo, is, g, be, shift, scale, bias, 1, 0, 0); break;
    case 2: fbn_coefficients_as(channels, hi, lo, is, g, be, shift, scale, bias, 0, 1, 0); break;
    case 3: fbn_coefficients_as(channels, hi, lo, is, g, be, shift, scale, bias, 1, 1, 0); break;
    case 4: fbn_coefficients_as(channels, hi, lo, is, g, be, shift, scale, bias, 0, 0, 1); break;
    case 5: fbn_coefficients_as(channels, hi, lo, is, g, be, shift, scale, bias, 1, 0, 1); break;
    case 6: fbn_coefficients_as(channels, hi, lo, is, g, be, shift, scale, bias, 0, 1, 1); break;
    default: fbn_coefficients_as(channels, hi, lo, is, g, be, shift, scale, bias, 1, 1, 1); break;
    }
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
