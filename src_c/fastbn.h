/* fastbn: the C API of the batch-normalisation kernels.
 *
 * Every layout is first reduced (in Python) to one canonical view: an array of
 * shape (outer, channels, inner). NCHW is (N, C, H*W); NHWC and (N, C) are
 * (N*H*W, C, 1). Element (o, c, i) of an output (y, dx, dresidual) lives at
 * y[(o * channels + c) * inner + i]; of an input (x, dy, residual) at
 * x[o * row_stride + c * inner + i] (fbn_shape): each (channels, inner) block is
 * contiguous, blocks may be further apart (a slice x[:, a:b] or x[::2]).
 *
 * Per-channel vectors are double. Statistics are accumulated in double for both
 * float32 and float64 data. Kernels never allocate anything of the data's size;
 * results do not depend on the thread count (work is split by shape alone, and
 * tiles are merged by index). Threads come from fastbn's own pool (parallel.h),
 * which is safe to use in a forked child.
 *
 * Elementwise kernels use one affine form per channel,
 *     y = (x - shift[c]) * scale[c] + bias[c]           (then max(y, 0) if relu),
 * with shift the high part of the mean (not the layer's beta, which is in bias) so
 * that x - shift is exact-ish even far from the origin (see fbn_coefficients),
 * computed in the data's type.
 */
#ifndef FASTBN_H
#define FASTBN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int64_t outer, channels, inner;
    /* The inputs' (x, dy, residual) distance between consecutive `outer` rows, in
     * values: 0 or channels * inner when contiguous, else more (all inputs share
     * it; outputs are contiguous). A backward with a residual (fbn_epilogue) and
     * the masked kernels take contiguous inputs only. */
    int64_t row_stride;
} fbn_shape;

/* Half-precision data (issue 19): the bits of an IEEE binary16 value (NumPy's
 * float16) and of a bfloat16 value (ml_dtypes.bfloat16). Structs, so that a value
 * is never taken for a number without its conversion (src_c/half.h). Kernels on
 * them compute in float; fbn_<op>_f16 and fbn_<op>_bf16 have the float32 kernels'
 * arguments with these data pointers. */
typedef struct {
    uint16_t bits;
} fbn_float16;
typedef struct {
    uint16_t bits;
} fbn_bfloat16;

/* What follows the affine map (issue 20): the _ex kernels take it; the others are
 * the _ex ones with {.act = relu} (and nothing else). */
typedef struct {
    int act;              /* 0: none, 1: ReLU, 2: leaky ReLU */
    double slope;         /* the leaky ReLU's slope for pre-activations <= 0 */
    const void *residual; /* NULL, or z of x's dtype and layout: y = act(bn(x) + z) */
    void *dresidual;      /* backward with a residual: receives dy through the
                           * activation's mask (= d loss / d z), written by the
                           * reduction, which the dx pass then reads as its dy */
    int params_f32;       /* fbn_forward_train_ex: gamma and beta point to float
                           * values (read a block at a time: no double copy of C) */
} fbn_epilogue;

/* The kernels come in one version per data type, named fbn_<op>_f32 (float data)
 * and fbn_<op>_f64 (double data), defined in src_c/kern_*.h as FBN_SYM(<op>) (see
 * kern_dtype.h). All return 0 on success and -1 when a small O(C) work buffer
 * cannot be allocated; fbn_forward_train returns -2 for an empty channel (m == 0).
 * Sums of dy times x are named by how x is centred: sum_dy_xs (x - shift),
 * sum_dy_xhat ((x - mean) * invstd); see plan.h. */

/* Channel statistics: the mean as a double-double (mean_hi + mean_lo) and the
 * sum of squared deviations m2, over outer * inner values per channel. */
int fbn_batch_stats_f32(const float *x, fbn_shape s, double *mean_hi, double *mean_lo,
                        double *m2, int nthreads);
int fbn_batch_stats_f64(const double *x, fbn_shape s, double *mean_hi, double *mean_lo,
                        double *m2, int nthreads);

/* Training forward, fused: statistics, then normalise/scale/shift (and ReLU).
 * gamma/beta may be NULL. Outputs mean (hi, lo), biased var and invstd. */
int fbn_forward_train_f32(const float *x, float *y, fbn_shape s, const double *gamma,
                          const double *beta, double eps, int relu, double *mean_hi,
                          double *mean_lo, double *var, double *invstd, int nthreads);
int fbn_forward_train_f64(const double *x, double *y, fbn_shape s, const double *gamma,
                          const double *beta, double eps, int relu, double *mean_hi,
                          double *mean_lo, double *var, double *invstd, int nthreads);

/* Inference forward: normalise with given statistics (running mean and biased
 * var), then scale/shift (and ReLU); gamma/beta may be NULL. Outputs invstd. */
int fbn_forward_infer_f32(const float *x, float *y, fbn_shape s, const double *mean,
                          const double *var, const double *gamma, const double *beta,
                          double eps, int relu, double *invstd, int nthreads);
int fbn_forward_infer_f64(const double *x, double *y, fbn_shape s, const double *mean,
                          const double *var, const double *gamma, const double *beta,
                          double eps, int relu, double *invstd, int nthreads);

/* y = (x - shift) * scale + bias, then ReLU if relu. */
int fbn_affine_f32(const float *x, float *y, fbn_shape s, const double *shift,
                   const double *scale, const double *bias, int relu, int nthreads);
int fbn_affine_f64(const double *x, double *y, fbn_shape s, const double *shift,
                   const double *scale, const double *bias, int relu, int nthreads);

/* sum(dy) and sum_dy_xs = sum(dy * (x - shift)); with relu, dy is masked where the
 * forward pre-activation (x - shift) * scale + bias was <= 0 (scale, bias may be
 * NULL: zeros). */
int fbn_backward_reduce_f32(const float *dy, const float *x, fbn_shape s, const double *shift,
                            const double *scale, const double *bias, int relu, double *sum_dy,
                            double *sum_dy_xs, int nthreads);
int fbn_backward_reduce_f64(const double *dy, const double *x, fbn_shape s,
                            const double *shift, const double *scale, const double *bias,
                            int relu, double *sum_dy, double *sum_dy_xs, int nthreads);

/* dx = k_dy * (dy - mean_dy) + k_x * (x - shift) * invstd; with relu, dy is
 * masked as in fbn_backward_reduce (scale and bias may be NULL: zeros). */
int fbn_backward_elemt_f32(const float *dy, const float *x, float *dx, fbn_shape s,
                           const double *shift, const double *invstd, const double *k_dy,
                           const double *k_x, const double *mean_dy, const double *scale,
                           const double *bias, int relu, int nthreads);
int fbn_backward_elemt_f64(const double *dy, const double *x, double *dx, fbn_shape s,
                           const double *shift, const double *invstd, const double *k_dy,
                           const double *k_x, const double *mean_dy, const double *scale,
                           const double *bias, int relu, int nthreads);

/* Backward, fused: reduce, then dx. training = 0 treats the statistics as
 * constants. Outputs sum(dy) and sum_dy_xhat (= dbeta, dgamma). */
int fbn_backward_f32(const float *dy, const float *x, float *dx, fbn_shape s,
                     const double *mean_hi, const double *mean_lo, const double *invstd,
                     const double *gamma, const double *beta, int relu, int training,
                     double *sum_dy, double *sum_dy_xhat, int nthreads);
int fbn_backward_f64(const double *dy, const double *x, double *dx, fbn_shape s,
                     const double *mean_hi, const double *mean_lo, const double *invstd,
                     const double *gamma, const double *beta, int relu, int training,
                     double *sum_dy, double *sum_dy_xhat, int nthreads);

/* The same kernels with an epilogue (e: NULL for none); fbn_forward_train_ex takes
 * var NULL (not wanted). fbn_backward_ex with dx
 * NULL runs the reduction alone (dgamma and dbeta: one read of x and dy, and of
 * the residual, whose gradient it writes). */
int fbn_forward_train_ex_f32(const float *x, float *y, fbn_shape s, const double *gamma,
                             const double *beta, double eps, const fbn_epilogue *e,
                             double *mean_hi, double *mean_lo, double *var, double *invstd,
                             int nthreads);
int fbn_forward_train_ex_f64(const double *x, double *y, fbn_shape s, const double *gamma,
                             const double *beta, double eps, const fbn_epilogue *e,
                             double *mean_hi, double *mean_lo, double *var, double *invstd,
                             int nthreads);
int fbn_forward_infer_ex_f32(const float *x, float *y, fbn_shape s, const double *mean,
                             const double *var, const double *gamma, const double *beta,
                             double eps, const fbn_epilogue *e, double *invstd, int nthreads);
int fbn_forward_infer_ex_f64(const double *x, double *y, fbn_shape s, const double *mean,
                             const double *var, const double *gamma, const double *beta,
                             double eps, const fbn_epilogue *e, double *invstd, int nthreads);
int fbn_affine_ex_f32(const float *x, float *y, fbn_shape s, const double *shift,
                      const double *scale, const double *bias, const fbn_epilogue *e,
                      int nthreads);
int fbn_affine_ex_f64(const double *x, double *y, fbn_shape s, const double *shift,
                      const double *scale, const double *bias, const fbn_epilogue *e,
                      int nthreads);
int fbn_backward_ex_f32(const float *dy, const float *x, float *dx, fbn_shape s,
                        const double *mean_hi, const double *mean_lo, const double *invstd,
                        const double *gamma, const double *beta, const fbn_epilogue *e,
                        int training, double *sum_dy, double *sum_dy_xhat, int nthreads);
int fbn_backward_ex_f64(const double *dy, const double *x, double *dx, fbn_shape s,
                        const double *mean_hi, const double *mean_lo, const double *invstd,
                        const double *gamma, const double *beta, const fbn_epilogue *e,
                        int training, double *sum_dy, double *sum_dy_xhat, int nthreads);

/* Running statistic update: running = (1 - momentum) * running
 * + momentum * factor * batch (factor m / (m - 1) makes a variance unbiased);
 * batch is batch + batch_lo (a double-double mean) unless batch_lo is NULL. */
void fbn_ema_f32(float *running, const double *batch, const double *batch_lo,
                 int64_t channels, double momentum, double factor);
void fbn_ema_f64(double *running, const double *batch, const double *batch_lo,
                 int64_t channels, double momentum, double factor);

/* invstd = 1 / sqrt(var + eps), per channel. */
void fbn_invstd(int64_t channels, const double *var, double eps, double *invstd);
/* fbn_invstd, and scale = gamma * invstd (fbn_coefficients' scale) in the same pass. */
void fbn_invstd_scale(int64_t channels, const double *var, double eps, const double *gamma,
                      double *invstd, double *scale);
/* n 16-bit values widened to double (exact, NaNs quieted): half-precision
 * per-channel vectors (gamma, beta, running statistics), which the kernels take
 * as double. */
void fbn_widen_f16(const fbn_float16 *src, double *dst, int64_t n);
void fbn_widen_bf16(const fbn_bfloat16 *src, double *dst, int64_t n);

/* Whether a forward's saved statistics could come from a forward (1) or not (0):
 * every invstd >= 0 and not +inf (NaN allowed), and mean_lo (unless NULL) at most
 * one unit in the last place of each finite mean_hi. What the backward's fast path
 * checks on every call, as fastbn._checks.invstd_values and residual_values do. */
int fbn_saved_stats_ok(int64_t channels, const double *mean_hi, const double *mean_lo,
                       const double *invstd);

/* Per-channel affine coefficients of normalisation with mean (hi, lo) and invstd:
 * shift = hi, scale = gamma * invstd, bias = beta - lo * scale. */
void fbn_coefficients(int64_t channels, const double *mean_hi, const double *mean_lo,
                      const double *invstd, const double *gamma, const double *beta,
                      double *shift, double *scale, double *bias);

/* Build facts for show_config: whether OpenMP is compiled in, the thread pool's
 * kind ("pthreads", "openmp" or "none") and the largest thread count it uses. */
int fbn_openmp_enabled(void);
const char *fbn_pool_kind(void);
int fbn_max_threads(void);
const char *fbn_simd_paths(void);
const char *fbn_compiler(void);

/* Memory for the outputs fastbn allocates (NumPy's allocator for them, set by the
 * Cython module): malloc and free, but blocks of 1 MiB or more that NumPy frees
 * are kept, up to a limit of bytes, and handed out again to an allocation of the
 * same size: a fresh block's pages fault and are zeroed on first write, which cost
 * a pass over the data. fbn_outmem_limit sets the limit (max_bytes >= 0; 0 frees
 * every kept block) and returns the old one (max_bytes < 0: only returns it; -1
 * where the cache could not be claimed); the default is a sixteenth of the
 * physical memory, at most 1 GiB. fbn_outmem_held: the bytes kept now. */
void *fbn_outmem_alloc(size_t bytes);
void fbn_outmem_free(void *p, size_t bytes);
int64_t fbn_outmem_limit(int64_t max_bytes);
int64_t fbn_outmem_held(void);
/* The instructions that convert float16 / bfloat16 data on this CPU (read at run
 * time): 3 AVX-512F with AVX512_BF16's bfloat16 rounding, 2 AVX-512F, 1 F16C and
 * AVX2, 0 the portable integer forms (half.h). */
int fbn_half_conversions(void);


/* Half-precision data (issue 19): the same kernels on float16 and bfloat16 data
 * (fbn_float16, fbn_bfloat16 above), computed in float, each output rounded once. */
int fbn_batch_stats_f16(const fbn_float16 *x, fbn_shape s, double *mean_hi, double *mean_lo,
                        double *m2, int nthreads);
int fbn_forward_train_f16(const fbn_float16 *x, fbn_float16 *y, fbn_shape s, const double *gamma,
                          const double *beta, double eps, int relu, double *mean_hi,
                          double *mean_lo, double *var, double *invstd, int nthreads);
int fbn_forward_infer_f16(const fbn_float16 *x, fbn_float16 *y, fbn_shape s, const double *mean,
                          const double *var, const double *gamma, const double *beta,
                          double eps, int relu, double *invstd, int nthreads);
int fbn_affine_f16(const fbn_float16 *x, fbn_float16 *y, fbn_shape s, const double *shift,
                   const double *scale, const double *bias, int relu, int nthreads);
int fbn_backward_reduce_f16(const fbn_float16 *dy, const fbn_float16 *x, fbn_shape s, const double *shift,
                            const double *scale, const double *bias, int relu, double *sum_dy,
                            double *sum_dy_xs, int nthreads);
int fbn_backward_elemt_f16(const fbn_float16 *dy, const fbn_float16 *x, fbn_float16 *dx, fbn_shape s,
                           const double *shift, const double *invstd, const double *k_dy,
                           const double *k_x, const double *mean_dy, const double *scale,
                           const double *bias, int relu, int nthreads);
int fbn_backward_f16(const fbn_float16 *dy, const fbn_float16 *x, fbn_float16 *dx, fbn_shape s,
                     const double *mean_hi, const double *mean_lo, const double *invstd,
                     const double *gamma, const double *beta, int relu, int training,
                     double *sum_dy, double *sum_dy_xhat, int nthreads);
int fbn_batch_stats_bf16(const fbn_bfloat16 *x, fbn_shape s, double *mean_hi, double *mean_lo,
                        double *m2, int nthreads);
int fbn_forward_train_bf16(const fbn_bfloat16 *x, fbn_bfloat16 *y, fbn_shape s, const double *gamma,
                          const double *beta, double eps, int relu, double *mean_hi,
                          double *mean_lo, double *var, double *invstd, int nthreads);
int fbn_forward_infer_bf16(const fbn_bfloat16 *x, fbn_bfloat16 *y, fbn_shape s, const double *mean,
                          const double *var, const double *gamma, const double *beta,
                          double eps, int relu, double *invstd, int nthreads);
int fbn_affine_bf16(const fbn_bfloat16 *x, fbn_bfloat16 *y, fbn_shape s, const double *shift,
                   const double *scale, const double *bias, int relu, int nthreads);
int fbn_backward_reduce_bf16(const fbn_bfloat16 *dy, const fbn_bfloat16 *x, fbn_shape s, const double *shift,
                            const double *scale, const double *bias, int relu, double *sum_dy,
                            double *sum_dy_xs, int nthreads);
int fbn_backward_elemt_bf16(const fbn_bfloat16 *dy, const fbn_bfloat16 *x, fbn_bfloat16 *dx, fbn_shape s,
                           const double *shift, const double *invstd, const double *k_dy,
                           const double *k_x, const double *mean_dy, const double *scale,
                           const double *bias, int relu, int nthreads);
int fbn_backward_bf16(const fbn_bfloat16 *dy, const fbn_bfloat16 *x, fbn_bfloat16 *dx, fbn_shape s,
                     const double *mean_hi, const double *mean_lo, const double *invstd,
                     const double *gamma, const double *beta, int relu, int training,
                     double *sum_dy, double *sum_dy_xhat, int nthreads);

/* mask= (issue 20): statistics over the positions mask keeps (one byte, 0 or 1,
 * per flat (outer, inner) position, shared by the channels), y at every position
 * (y NULL: statistics only); count: the kept positions per channel. -2 when none
 * is kept. The backward of such a forward: sums over every position, dx with
 * `count` values per channel where kept and gamma * invstd * dy where dropped (dx
 * NULL: the sums only). Both bitwise equal to the unmasked kernels when the mask
 * keeps everything. */
int fbn_forward_masked_f32(const float *x, float *y, fbn_shape s, const uint8_t *mask,
                          const double *gamma, const double *beta, double eps, int relu,
                          double *mean_hi, double *mean_lo, double *var, double *invstd,
                          int64_t *count, int nthreads);
int fbn_backward_masked_f32(const float *dy, const float *x, float *dx, fbn_shape s,
                           const uint8_t *mask, int64_t count, const double *mean_hi,
                           const double *mean_lo, const double *invstd, const double *gamma,
                           const double *beta, int relu, double *sum_dy, double *sum_dy_xhat,
                           int nthreads);
int fbn_forward_masked_f64(const double *x, double *y, fbn_shape s, const uint8_t *mask,
                          const double *gamma, const double *beta, double eps, int relu,
                          double *mean_hi, double *mean_lo, double *var, double *invstd,
                          int64_t *count, int nthreads);
int fbn_backward_masked_f64(const double *dy, const double *x, double *dx, fbn_shape s,
                           const uint8_t *mask, int64_t count, const double *mean_hi,
                           const double *mean_lo, const double *invstd, const double *gamma,
                           const double *beta, int relu, double *sum_dy, double *sum_dy_xhat,
                           int nthreads);
int fbn_forward_masked_f16(const fbn_float16 *x, fbn_float16 *y, fbn_shape s, const uint8_t *mask,
                          const double *gamma, const double *beta, double eps, int relu,
                          double *mean_hi, double *mean_lo, double *var, double *invstd,
                          int64_t *count, int nthreads);
int fbn_backward_masked_f16(const fbn_float16 *dy, const fbn_float16 *x, fbn_float16 *dx, fbn_shape s,
                           const uint8_t *mask, int64_t count, const double *mean_hi,
                           const double *mean_lo, const double *invstd, const double *gamma,
                           const double *beta, int relu, double *sum_dy, double *sum_dy_xhat,
                           int nthreads);
int fbn_forward_masked_bf16(const fbn_bfloat16 *x, fbn_bfloat16 *y, fbn_shape s, const uint8_t *mask,
                          const double *gamma, const double *beta, double eps, int relu,
                          double *mean_hi, double *mean_lo, double *var, double *invstd,
                          int64_t *count, int nthreads);
int fbn_backward_masked_bf16(const fbn_bfloat16 *dy, const fbn_bfloat16 *x, fbn_bfloat16 *dx, fbn_shape s,
                           const uint8_t *mask, int64_t count, const double *mean_hi,
                           const double *mean_lo, const double *invstd, const double *gamma,
                           const double *beta, int relu, double *sum_dy, double *sum_dy_xhat,
                           int nthreads);
/* The epilogue kernels on half-precision data (the residual and dresidual of the
 * data's type). */
int fbn_forward_train_ex_f16(const fbn_float16 *x, fbn_float16 *y, fbn_shape s,
                             const double *gamma, const double *beta, double eps,
                             const fbn_epilogue *e, double *mean_hi, double *mean_lo,
                             double *var, double *invstd, int nthreads);
int fbn_forward_infer_ex_f16(const fbn_float16 *x, fbn_float16 *y, fbn_shape s,
                             const double *mean, const double *var, const double *gamma,
                             const double *beta, double eps, const fbn_epilogue *e,
                             double *invstd, int nthreads);
int fbn_affine_ex_f16(const fbn_float16 *x, fbn_float16 *y, fbn_shape s, const double *shift,
                      const double *scale, const double *bias, const fbn_epilogue *e,
                      int nthreads);
int fbn_backward_ex_f16(const fbn_float16 *dy, const fbn_float16 *x, fbn_float16 *dx,
                        fbn_shape s, const double *mean_hi, const double *mean_lo,
                        const double *invstd, const double *gamma, const double *beta,
                        const fbn_epilogue *e, int training, double *sum_dy,
                        double *sum_dy_xhat, int nthreads);
int fbn_forward_train_ex_bf16(const fbn_bfloat16 *x, fbn_bfloat16 *y, fbn_shape s,
                             const double *gamma, const double *beta, double eps,
                             const fbn_epilogue *e, double *mean_hi, double *mean_lo,
                             double *var, double *invstd, int nthreads);
int fbn_forward_infer_ex_bf16(const fbn_bfloat16 *x, fbn_bfloat16 *y, fbn_shape s,
                             const double *mean, const double *var, const double *gamma,
                             const double *beta, double eps, const fbn_epilogue *e,
                             double *invstd, int nthreads);
int fbn_affine_ex_bf16(const fbn_bfloat16 *x, fbn_bfloat16 *y, fbn_shape s, const double *shift,
                      const double *scale, const double *bias, const fbn_epilogue *e,
                      int nthreads);
int fbn_backward_ex_bf16(const fbn_bfloat16 *dy, const fbn_bfloat16 *x, fbn_bfloat16 *dx,
                        fbn_shape s, const double *mean_hi, const double *mean_lo,
                        const double *invstd, const double *gamma, const double *beta,
                        const fbn_epilogue *e, int training, double *sum_dy,
                        double *sum_dy_xhat, int nthreads);

#ifdef __cplusplus
}
#endif
#endif
