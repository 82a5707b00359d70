# The C API of the kernels (src_c/fastbn.h) as Cython sees it, for the two parts of
# the compiled module: the thin wrappers (_kernels.pyx) and the compiled front end
# (_front.pxi, included by it).
#
# Each kernel has a float32 and a float64 version (fbn_<op>_f32, fbn_<op>_f64).
# Callers do not choose between them themselves: the run_<op> functions below take
# the data as untyped pointers plus one dtype code, f32 (true for float32 data,
# false for float64), and make the one choice for all callers.
from libc.stdint cimport int64_t, uint8_t


cdef extern from "fastbn.h" nogil:
    void *fbn_outmem_alloc(size_t bytes)
    void fbn_outmem_free(void *p, size_t bytes)
    int64_t fbn_outmem_limit(int64_t max_bytes)
    int64_t fbn_outmem_held()

    ctypedef struct fbn_shape:
        int64_t outer, channels, inner
        int64_t row_stride
    ctypedef struct fbn_float16:
        unsigned short bits
    ctypedef struct fbn_bfloat16:
        unsigned short bits

    ctypedef struct fbn_epilogue:
        int act
        double slope
        const void *residual
        void *dresidual
        int params_f32

    int fbn_batch_stats_f32(const float *x, fbn_shape s, double *mean_hi, double *mean_lo,
                            double *m2, int nthreads)
    int fbn_batch_stats_f64(const double *x, fbn_shape s, double *mean_hi, double *mean_lo,
                            double *m2, int nthreads)
    int fbn_forward_train_f32(const float *x, float *y, fbn_shape s, const double *gamma,
                              const double *beta, double eps, int relu, double *mean_hi,
                              double *mean_lo, double *var, double *invstd, int nthreads)
    int fbn_forward_train_f64(const double *x, double *y, fbn_shape s, const double *gamma,
                              const double *beta, double eps, int relu, double *mean_hi,
                              double *mean_lo, double *var, double *invstd, int nthreads)
    int fbn_forward_infer_f32(const float *x, float *y, fbn_shape s, const double *mean,
                              const double *var, const double *gamma, const double *beta,
                              double eps, int relu, double *invstd, int nthreads)
    int fbn_forward_infer_f64(const double *x, double *y, fbn_shape s, const double *mean,
                              const double *var, const double *gamma, const double *beta,
                              double eps, int relu, double *invstd, int nthreads)
    int fbn_affine_f32(const float *x, float *y, fbn_shape s, const double *shift,
                       const double *scale, const double *bias, int relu, int nthreads)
    int fbn_affine_f64(const double *x, double *y, fbn_shape s, const double *shift,
                       const double *scale, const double *bias, int relu, int nthreads)
    int fbn_backward_reduce_f32(const float *dy, const float *x, fbn_shape s,
                                const double *shift, const double *scale, const double *bias,
                                int relu, double *sum_dy, double *sum_dy_xs, int nthreads)
    int fbn_backward_reduce_f64(const double *dy, const double *x, fbn_shape s,
                                const double *shift, const double *scale, const double *bias,
                                int relu, double *sum_dy, double *sum_dy_xs, int nthreads)
    int fbn_backward_elemt_f32(const float *dy, const float *x, float *dx, fbn_shape s,
                               const double *shift, const double *invstd, const double *k_dy,
                               const double *k_x, const double *mean_dy,
                               const double *scale, const double *bias, int relu, int nthreads)
    int fbn_backward_elemt_f64(const double *dy, const double *x, double *dx, fbn_shape s,
                               const double *shift, const double *invstd, const double *k_dy,
                               const double *k_x, const double *mean_dy,
                               const double *scale, const double *bias, int relu, int nthreads)
    int fbn_backward_f32(const float *dy, const float *x, float *dx, fbn_shape s,
                         const double *mean_hi, const double *mean_lo, const double *invstd,
                         const double *gamma, const double *beta, int relu, int training,
                         double *sum_dy, double *sum_dy_xhat, int nthreads)
    int fbn_backward_f64(const double *dy, const double *x, double *dx, fbn_shape s,
                         const double *mean_hi, const double *mean_lo, const double *invstd,
                         const double *gamma, const double *beta, int relu, int training,
                         double *sum_dy, double *sum_dy_xhat, int nthreads)
    int fbn_forward_train_ex_f32(const float *x, float *y, fbn_shape s, const double *gamma,
                                 const double *beta, double eps, const fbn_epilogue *e,
                                 double *mean_hi, double *mean_lo, double *var, double *invstd,
                                 int nthreads)
    int fbn_forward_train_ex_f64(const double *x, double *y, fbn_shape s, const double *gamma,
                                 const double *beta, double eps, const fbn_epilogue *e,
                                 double *mean_hi, double *mean_lo, double *var, double *invstd,
                                 int nthreads)
    int fbn_forward_infer_ex_f32(const float *x, float *y, fbn_shape s, const double *mean,
                                 const double *var, const double *gamma, const double *beta,
                                 double eps, const fbn_epilogue *e, double *invstd, int nthreads)
    int fbn_forward_infer_ex_f64(const double *x, double *y, fbn_shape s, const double *mean,
                                 const double *var, const double *gamma, const double *beta,
                                 double eps, const fbn_epilogue *e, double *invstd, int nthreads)
    int fbn_affine_ex_f32(const float *x, float *y, fbn_shape s, const double *shift,
                          const double *scale, const double *bias, const fbn_epilogue *e,
                          int nthreads)
    int fbn_affine_ex_f64(const double *x, double *y, fbn_shape s, const double *shift,
                          const double *scale, const double *bias, const fbn_epilogue *e,
                          int nthreads)
    int fbn_backward_ex_f32(const float *dy, const float *x, float *dx, fbn_shape s,
                            const double *mean_hi, const double *mean_lo, const double *invstd,
                            const double *gamma, const double *beta, const fbn_epilogue *e,
                            int training, double *sum_dy, double *sum_dy_xhat, int nthreads)
    int fbn_backward_ex_f64(const double *dy, const double *x, double *dx, fbn_shape s,
                            const double *mean_hi, const double *mean_lo, const double *invstd,
                            const double *gamma, const double *beta, const fbn_epilogue *e,
                            int training, double *sum_dy, double *sum_dy_xhat, int nthreads)
    int fbn_forward_train_ex_f16(const fbn_float16 *x, fbn_float16 *y, fbn_shape s,
                                 const double *gamma, const double *beta, double eps,
                                 const fbn_epilogue *e, double *mean_hi, double *mean_lo,
                                 double *var, double *invstd, int nthreads)
    int fbn_forward_infer_ex_f16(const fbn_float16 *x, fbn_float16 *y, fbn_shape s,
                                 const double *mean, const double *var, const double *gamma,
                                 const double *beta, double eps, const fbn_epilogue *e,
                                 double *invstd, int nthreads)
    int fbn_affine_ex_f16(const fbn_float16 *x, fbn_float16 *y, fbn_shape s, const double *shift,
                          const double *scale, const double *bias, const fbn_epilogue *e,
                          int nthreads)
    int fbn_backward_ex_f16(const fbn_float16 *dy, const fbn_float16 *x, fbn_float16 *dx,
                            fbn_shape s, const double *mean_hi, const double *mean_lo,
                            const double *invstd, const double *gamma, const double *beta,
                            const fbn_epilogue *e, int training, double *sum_dy,
                            double *sum_dy_xhat, int nthreads)
    int fbn_forward_train_ex_bf16(const fbn_bfloat16 *x, fbn_bfloat16 *y, fbn_shape s,
                                 const double *gamma, const double *beta, double eps,
                                 const fbn_epilogue *e, double *mean_hi, double *mean_lo,
                                 double *var, double *invstd, int nthreads)
    int fbn_forward_infer_ex_bf16(const fbn_bfloat16 *x, fbn_bfloat16 *y, fbn_shape s,
                                 const double *mean, const double *var, const double *gamma,
                                 const double *beta, double eps, const fbn_epilogue *e,
                                 double *invstd, int nthreads)
    int fbn_affine_ex_bf16(const fbn_bfloat16 *x, fbn_bfloat16 *y, fbn_shape s, const double *shift,
                          const double *scale, const double *bias, const fbn_epilogue *e,
                          int nthreads)
    int fbn_backward_ex_bf16(const fbn_bfloat16 *dy, const fbn_bfloat16 *x, fbn_bfloat16 *dx,
                            fbn_shape s, const double *mean_hi, const double *mean_lo,
                            const double *invstd, const double *gamma, const double *beta,
                            const fbn_epilogue *e, int training, double *sum_dy,
                            double *sum_dy_xhat, int nthreads)
    void fbn_ema_f32(float *running, const double *batch, const double *batch_lo,
                     int64_t channels, double momentum, double factor)
    void fbn_ema_f64(double *running, const double *batch, const double *batch_lo,
                     int64_t channels, double momentum, double factor)
    int fbn_saved_stats_ok(int64_t channels, const double *mean_hi, const double *mean_lo,
                           const double *invstd)
    void fbn_widen_f16(const fbn_float16 *src, double *dst, int64_t n)
    void fbn_widen_bf16(const fbn_bfloat16 *src, double *dst, int64_t n)
    int fbn_batch_stats_f16(const fbn_float16 *x, fbn_shape s, double *mean_hi, double *mean_lo,
                            double *m2, int nthreads)
    int fbn_forward_train_f16(const fbn_float16 *x, fbn_float16 *y, fbn_shape s, const double *gamma,
                              const double *beta, double eps, int relu, double *mean_hi,
                              double *mean_lo, double *var, double *invstd, int nthreads)
    int fbn_forward_infer_f16(const fbn_float16 *x, fbn_float16 *y, fbn_shape s, const double *mean,
                              const double *var, const double *gamma, const double *beta,
                              double eps, int relu, double *invstd, int nthreads)
    int fbn_affine_f16(const fbn_float16 *x, fbn_float16 *y, fbn_shape s, const double *shift,
                       const double *scale, const double *bias, int relu, int nthreads)
    int fbn_backward_reduce_f16(const fbn_float16 *dy, const fbn_float16 *x, fbn_shape s,
                                const double *shift, const double *scale, const double *bias,
                                int relu, double *sum_dy, double *sum_dy_xs, int nthreads)
    int fbn_backward_elemt_f16(const fbn_float16 *dy, const fbn_float16 *x, fbn_float16 *dx, fbn_shape s,
                               const double *shift, const double *invstd, const double *k_dy,
                               const double *k_x, const double *mean_dy,
                               const double *scale, const double *bias, int relu, int nthreads)
    int fbn_backward_f16(const fbn_float16 *dy, const fbn_float16 *x, fbn_float16 *dx, fbn_shape s,
                         const double *mean_hi, const double *mean_lo, const double *invstd,
                         const double *gamma, const double *beta, int relu, int training,
                         double *sum_dy, double *sum_dy_xhat, int nthreads)
    int fbn_batch_stats_bf16(const fbn_bfloat16 *x, fbn_shape s, double *mean_hi, double *mean_lo,
                            double *m2, int nthreads)
    int fbn_forward_train_bf16(const fbn_bfloat16 *x, fbn_bfloat16 *y, fbn_shape s, const double *gamma,
                              const double *beta, double eps, int relu, double *mean_hi,
                              double *mean_lo, double *var, double *invstd, int nthreads)
    int fbn_forward_infer_bf16(const fbn_bfloat16 *x, fbn_bfloat16 *y, fbn_shape s, const double *mean,
                              const double *var, const double *gamma, const double *beta,
                              double eps, int relu, double *invstd, int nthreads)
    int fbn_affine_bf16(const fbn_bfloat16 *x, fbn_bfloat16 *y, fbn_shape s, const double *shift,
                       const double *scale, const double *bias, int relu, int nthreads)
    int fbn_backward_reduce_bf16(const fbn_bfloat16 *dy, const fbn_bfloat16 *x, fbn_shape s,
                                const double *shift, const double *scale, const double *bias,
                                int relu, double *sum_dy, double *sum_dy_xs, int nthreads)
    int fbn_backward_elemt_bf16(const fbn_bfloat16 *dy, const fbn_bfloat16 *x, fbn_bfloat16 *dx, fbn_shape s,
                               const double *shift, const double *invstd, const double *k_dy,
                               const double *k_x, const double *mean_dy,
                               const double *scale, const double *bias, int relu, int nthreads)
    int fbn_backward_bf16(const fbn_bfloat16 *dy, const fbn_bfloat16 *x, fbn_bfloat16 *dx, fbn_shape s,
                         const double *mean_hi, const double *mean_lo, const double *invstd,
                         const double *gamma, const double *beta, int relu, int training,
                         double *sum_dy, double *sum_dy_xhat, int nthreads)
    void fbn_coefficients(int64_t channels, const double *mean_hi, const double *mean_lo,
                          const double *invstd, const double *gamma, const double *beta,
                          double *shift, double *scale, double *bias)
    int fbn_openmp_enabled()
    const char *fbn_pool_kind()
    int fbn_max_threads()
    const char *fbn_simd_paths()
    const char *fbn_compiler()
    int fbn_half_conversions()


cdef extern from "plan.h" nogil:
    ctypedef struct fbn_caches:
        int64_t l1d, l2, l3
    fbn_caches fbn_cache_sizes()
    void fbn_set_cache_sizes(int64_t l1d, int64_t l2, int64_t l3)
    int fbn_stream_width()
    void fbn_stream_copy(void *dst, const void *src, int64_t n)
    int fbn_resident(const void *p, int64_t bytes)


cdef extern from "fastbn.h" nogil:  # mask= (issue 20)
    int fbn_forward_masked_f32(const float *x, float *y, fbn_shape s, const uint8_t *mask,
                              const double *gamma, const double *beta, double eps, int relu,
                              double *mean_hi, double *mean_lo, double *var, double *invstd,
                              int64_t *count, int nthreads)
    int fbn_backward_masked_f32(const float *dy, const float *x, float *dx, fbn_shape s,
                               const uint8_t *mask, int64_t count, const double *mean_hi,
                               const double *mean_lo, const double *invstd,
                               const double *gamma, const double *beta, int relu,
                               double *sum_dy, double *sum_dy_xhat, int nthreads)
    int fbn_forward_masked_f64(const double *x, double *y, fbn_shape s, const uint8_t *mask,
                              const double *gamma, const double *beta, double eps, int relu,
                              double *mean_hi, double *mean_lo, double *var, double *invstd,
                              int64_t *count, int nthreads)
    int fbn_backward_masked_f64(const double *dy, const double *x, double *dx, fbn_shape s,
                               const uint8_t *mask, int64_t count, const double *mean_hi,
                               const double *mean_lo, const double *invstd,
                               const double *gamma, const double *beta, int relu,
                               double *sum_dy, double *sum_dy_xhat, int nthreads)
    int fbn_forward_masked_f16(const fbn_float16 *x, fbn_float16 *y, fbn_shape s, const uint8_t *mask,
                              const double *gamma, const double *beta, double eps, int relu,
                              double *mean_hi, double *mean_lo, double *var, double *invstd,
                              int64_t *count, int nthreads)
    int fbn_backward_masked_f16(const fbn_float16 *dy, const fbn_float16 *x, fbn_float16 *dx, fbn_shape s,
                               const uint8_t *mask, int64_t count, const double *mean_hi,
                               const double *mean_lo, const double *invstd,
                               const double *gamma, const double *beta, int relu,
                               double *sum_dy, double *sum_dy_xhat, int nthreads)
    int fbn_forward_masked_bf16(const fbn_bfloat16 *x, fbn_bfloat16 *y, fbn_shape s, const uint8_t *mask,
                              const double *gamma, const double *beta, double eps, int relu,
                              double *mean_hi, double *mean_lo, double *var, double *invstd,
                              int64_t *count, int nthreads)
    int fbn_backward_masked_bf16(const fbn_bfloat16 *dy, const fbn_bfloat16 *x, fbn_bfloat16 *dx, fbn_shape s,
                               const uint8_t *mask, int64_t count, const double *mean_hi,
                               const double *mean_lo, const double *invstd,
                               const double *gamma, const double *beta, int relu,
                               double *sum_dy, double *sum_dy_xhat, int nthreads)


cdef extern from "parallel.h" nogil:
    int fbn_pool_set_backoff(int on)
    int64_t fbn_pool_wake_values()


cdef extern from "tuning.h":
    const int64_t FBN_MIN_PARALLEL  # below this many values the kernels use one thread


# ---- the dtype dispatch: f32 true (DT_F32) for float32 data, false (DT_F64) for
# float64; DT_F16 and DT_BF16 for half-precision data (the data as uint16 bits) ----

cdef enum:
    DT_F64 = 0
    DT_F32 = 1
    DT_F16 = 2
    DT_BF16 = 3


cdef inline int run_batch_stats(int dt, const void *x, fbn_shape s, double *mean_hi,
                                double *mean_lo, double *m2, int nthreads) noexcept nogil:
    if dt == DT_F16:
        return fbn_batch_stats_f16(<const fbn_float16 *>x, s, mean_hi, mean_lo, m2, nthreads)
    if dt == DT_BF16:
        return fbn_batch_stats_bf16(<const fbn_bfloat16 *>x, s, mean_hi, mean_lo, m2, nthreads)
    if dt:
        return fbn_batch_stats_f32(<const float *>x, s, mean_hi, mean_lo, m2, nthreads)
    return fbn_batch_stats_f64(<const double *>x, s, mean_hi, mean_lo, m2, nthreads)


cdef inline int run_forward_train(int dt, const void *x, void *y, fbn_shape s,
                                  const double *gamma, const double *beta, double eps, int relu,
                                  double *mean_hi, double *mean_lo, double *var, double *invstd,
                                  int nthreads) noexcept nogil:
    if dt == DT_F16:
        return fbn_forward_train_f16(<const fbn_float16 *>x, <fbn_float16 *>y, s, gamma, beta, eps, relu,
                                     mean_hi, mean_lo, var, invstd, nthreads)
    if dt == DT_BF16:
        return fbn_forward_train_bf16(<const fbn_bfloat16 *>x, <fbn_bfloat16 *>y, s, gamma, beta, eps, relu,
                                     mean_hi, mean_lo, var, invstd, nthreads)
    if dt:
        return fbn_forward_train_f32(<const float *>x, <float *>y, s, gamma, beta, eps, relu,
                                     mean_hi, mean_lo, var, invstd, nthreads)
    return fbn_forward_train_f64(<const double *>x, <double *>y, s, gamma, beta, eps, relu,
                                 mean_hi, mean_lo, var, invstd, nthreads)


cdef inline int run_forward_infer(int dt, const void *x, void *y, fbn_shape s,
                                  const double *mean, const double *var, const double *gamma,
                                  const double *beta, double eps, int relu, double *invstd,
                                  int nthreads) noexcept nogil:
    if dt == DT_F16:
        return fbn_forward_infer_f16(<const fbn_float16 *>x, <fbn_float16 *>y, s, mean, var, gamma, beta,
                                     eps, relu, invstd, nthreads)
    if dt == DT_BF16:
        return fbn_forward_infer_bf16(<const fbn_bfloat16 *>x, <fbn_bfloat16 *>y, s, mean, var, gamma, beta,
                                     eps, relu, invstd, nthreads)
    if dt:
        return fbn_forward_infer_f32(<const float *>x, <float *>y, s, mean, var, gamma, beta,
                                     eps, relu, invstd, nthreads)
    return fbn_forward_infer_f64(<const double *>x, <double *>y, s, mean, var, gamma, beta,
                                 eps, relu, invstd, nthreads)


cdef inline int run_affine(int dt, const void *x, void *y, fbn_shape s, const double *shift,
                           const double *scale, const double *bias, int relu,
                           int nthreads) noexcept nogil:
    if dt == DT_F16:
        return fbn_affine_f16(<const fbn_float16 *>x, <fbn_float16 *>y, s, shift, scale, bias, relu,
                              nthreads)
    if dt == DT_BF16:
        return fbn_affine_bf16(<const fbn_bfloat16 *>x, <fbn_bfloat16 *>y, s, shift, scale, bias, relu,
                              nthreads)
    if dt:
        return fbn_affine_f32(<const float *>x, <float *>y, s, shift, scale, bias, relu,
                              nthreads)
    return fbn_affine_f64(<const double *>x, <double *>y, s, shift, scale, bias, relu, nthreads)


cdef inline int run_backward_reduce(int dt, const void *dy, const void *x, fbn_shape s,
                                    const double *shift, const double *scale,
                                    const double *bias, int relu, double *sum_dy,
                                    double *sum_dy_xs, int nthreads) noexcept nogil:
    if dt == DT_F16:
        return fbn_backward_reduce_f16(<const fbn_float16 *>dy, <const fbn_float16 *>x, s, shift, scale,
                                       bias, relu, sum_dy, sum_dy_xs, nthreads)
    if dt == DT_BF16:
        return fbn_backward_reduce_bf16(<const fbn_bfloat16 *>dy, <const fbn_bfloat16 *>x, s, shift, scale,
                                       bias, relu, sum_dy, sum_dy_xs, nthreads)
    if dt:
        return fbn_backward_reduce_f32(<const float *>dy, <const float *>x, s, shift, scale,
                                       bias, relu, sum_dy, sum_dy_xs, nthreads)
    return fbn_backward_reduce_f64(<const double *>dy, <const double *>x, s, shift, scale, bias,
                                   relu, sum_dy, sum_dy_xs, nthreads)


cdef inline int run_backward_elemt(int dt, const void *dy, const void *x, void *dx,
                                   fbn_shape s, const double *shift, const double *invstd,
                                   const double *k_dy, const double *k_x,
                                   const double *mean_dy, const double *scale,
                                   const double *bias, int relu, int nthreads) noexcept nogil:
    if dt == DT_F16:
        return fbn_backward_elemt_f16(<const fbn_float16 *>dy, <const fbn_float16 *>x, <fbn_float16 *>dx, s,
                                      shift, invstd, k_dy, k_x, mean_dy, scale, bias, relu,
                                      nthreads)
    if dt == DT_BF16:
        return fbn_backward_elemt_bf16(<const fbn_bfloat16 *>dy, <const fbn_bfloat16 *>x, <fbn_bfloat16 *>dx, s,
                                      shift, invstd, k_dy, k_x, mean_dy, scale, bias, relu,
                                      nthreads)
    if dt:
        return fbn_backward_elemt_f32(<const float *>dy, <const float *>x, <float *>dx, s,
                                      shift, invstd, k_dy, k_x, mean_dy, scale, bias, relu,
                                      nthreads)
    return fbn_backward_elemt_f64(<const double *>dy, <const double *>x, <double *>dx, s, shift,
                                  invstd, k_dy, k_x, mean_dy, scale, bias, relu, nthreads)


cdef inline int run_backward(int dt, const void *dy, const void *x, void *dx, fbn_shape s,
                             const double *mean_hi, const double *mean_lo, const double *invstd,
                             const double *gamma, const double *beta, int relu, int training,
                             double *sum_dy, double *sum_dy_xhat, int nthreads) noexcept nogil:
    if dt == DT_F16:
        return fbn_backward_f16(<const fbn_float16 *>dy, <const fbn_float16 *>x, <fbn_float16 *>dx, s, mean_hi,
                                mean_lo, invstd, gamma, beta, relu, training, sum_dy,
                                sum_dy_xhat, nthreads)
    if dt == DT_BF16:
        return fbn_backward_bf16(<const fbn_bfloat16 *>dy, <const fbn_bfloat16 *>x, <fbn_bfloat16 *>dx, s, mean_hi,
                                mean_lo, invstd, gamma, beta, relu, training, sum_dy,
                                sum_dy_xhat, nthreads)
    if dt:
        return fbn_backward_f32(<const float *>dy, <const float *>x, <float *>dx, s, mean_hi,
                                mean_lo, invstd, gamma, beta, relu, training, sum_dy,
                                sum_dy_xhat, nthreads)
    return fbn_backward_f64(<const double *>dy, <const double *>x, <double *>dx, s, mean_hi,
                            mean_lo, invstd, gamma, beta, relu, training, sum_dy, sum_dy_xhat,
                            nthreads)


cdef inline void run_ema(bint f32, void *running, const double *batch, const double *batch_lo,
                         int64_t channels, double momentum, double factor) noexcept nogil:
    if f32:
        fbn_ema_f32(<float *>running, batch, batch_lo, channels, momentum, factor)
    else:
        fbn_ema_f64(<double *>running, batch, batch_lo, channels, momentum, factor)


cdef inline int run_forward_masked(int dt, const void *x, void *y, fbn_shape s,
                                   const uint8_t *mask, const double *gamma,
                                   const double *beta, double eps, int relu, double *mean_hi,
                                   double *mean_lo, double *var, double *invstd,
                                   int64_t *count, int nthreads) noexcept nogil:
    if dt == DT_F16:
        return fbn_forward_masked_f16(<const fbn_float16 *>x, <fbn_float16 *>y, s, mask, gamma,
                                      beta, eps, relu, mean_hi, mean_lo, var, invstd, count,
                                      nthreads)
    if dt == DT_BF16:
        return fbn_forward_masked_bf16(<const fbn_bfloat16 *>x, <fbn_bfloat16 *>y, s, mask,
                                       gamma, beta, eps, relu, mean_hi, mean_lo, var, invstd,
                                       count, nthreads)
    if dt:
        return fbn_forward_masked_f32(<const float *>x, <float *>y, s, mask, gamma, beta, eps,
                                      relu, mean_hi, mean_lo, var, invstd, count, nthreads)
    return fbn_forward_masked_f64(<const double *>x, <double *>y, s, mask, gamma, beta, eps,
                                  relu, mean_hi, mean_lo, var, invstd, count, nthreads)


cdef inline int run_backward_masked(int dt, const void *dy, const void *x, void *dx,
                                    fbn_shape s, const uint8_t *mask, int64_t count,
                                    const double *mean_hi, const double *mean_lo,
                                    const double *invstd, const double *gamma,
                                    const double *beta, int relu, double *sum_dy,
                                    double *sum_dy_xhat, int nthreads) noexcept nogil:
    if dt == DT_F16:
        return fbn_backward_masked_f16(<const fbn_float16 *>dy, <const fbn_float16 *>x,
                                       <fbn_float16 *>dx, s, mask, count, mean_hi, mean_lo,
                                       invstd, gamma, beta, relu, sum_dy, sum_dy_xhat, nthreads)
    if dt == DT_BF16:
        return fbn_backward_masked_bf16(<const fbn_bfloat16 *>dy, <const fbn_bfloat16 *>x,
                                        <fbn_bfloat16 *>dx, s, mask, count, mean_hi, mean_lo,
                                        invstd, gamma, beta, relu, sum_dy, sum_dy_xhat,
                                        nthreads)
    if dt:
        return fbn_backward_masked_f32(<const float *>dy, <const float *>x, <float *>dx, s,
                                       mask, count, mean_hi, mean_lo, invstd, gamma, beta,
                                       relu, sum_dy, sum_dy_xhat, nthreads)
    return fbn_backward_masked_f64(<const double *>dy, <const double *>x, <double *>dx, s, mask,
                                   count, mean_hi, mean_lo, invstd, gamma, beta, relu, sum_dy,
                                   sum_dy_xhat, nthreads)


# the kernels with an epilogue (issue 20: leaky ReLU, residual), dispatched on dt as
# run_<op> above

cdef inline int run_forward_train_ex(int dt, const void *x, void *y, fbn_shape s,
                                     const double *gamma, const double *beta, double eps,
                                     const fbn_epilogue *e, double *mean_hi, double *mean_lo,
                                     double *var, double *invstd, int nthreads) noexcept nogil:
    if dt == DT_F16:
        return fbn_forward_train_ex_f16(<const fbn_float16 *>x, <fbn_float16 *>y, s, gamma, beta,
                                        eps, e, mean_hi, mean_lo, var, invstd, nthreads)
    if dt == DT_BF16:
        return fbn_forward_train_ex_bf16(<const fbn_bfloat16 *>x, <fbn_bfloat16 *>y, s, gamma,
                                         beta, eps, e, mean_hi, mean_lo, var, invstd, nthreads)
    if dt:
        return fbn_forward_train_ex_f32(<const float *>x, <float *>y, s, gamma, beta, eps, e,
                                        mean_hi, mean_lo, var, invstd, nthreads)
    return fbn_forward_train_ex_f64(<const double *>x, <double *>y, s, gamma, beta, eps, e,
                                    mean_hi, mean_lo, var, invstd, nthreads)


cdef inline int run_forward_infer_ex(int dt, const void *x, void *y, fbn_shape s,
                                     const double *mean, const double *var, const double *gamma,
                                     const double *beta, double eps, const fbn_epilogue *e,
                                     double *invstd, int nthreads) noexcept nogil:
    if dt == DT_F16:
        return fbn_forward_infer_ex_f16(<const fbn_float16 *>x, <fbn_float16 *>y, s, mean, var,
                                        gamma, beta, eps, e, invstd, nthreads)
    if dt == DT_BF16:
        return fbn_forward_infer_ex_bf16(<const fbn_bfloat16 *>x, <fbn_bfloat16 *>y, s, mean, var,
                                         gamma, beta, eps, e, invstd, nthreads)
    if dt:
        return fbn_forward_infer_ex_f32(<const float *>x, <float *>y, s, mean, var, gamma, beta,
                                        eps, e, invstd, nthreads)
    return fbn_forward_infer_ex_f64(<const double *>x, <double *>y, s, mean, var, gamma, beta,
                                    eps, e, invstd, nthreads)


cdef inline int run_affine_ex(int dt, const void *x, void *y, fbn_shape s,
                              const double *shift, const double *scale, const double *bias,
                              const fbn_epilogue *e, int nthreads) noexcept nogil:
    if dt == DT_F16:
        return fbn_affine_ex_f16(<const fbn_float16 *>x, <fbn_float16 *>y, s, shift, scale, bias,
                                 e, nthreads)
    if dt == DT_BF16:
        return fbn_affine_ex_bf16(<const fbn_bfloat16 *>x, <fbn_bfloat16 *>y, s, shift, scale,
                                  bias, e, nthreads)
    if dt:
        return fbn_affine_ex_f32(<const float *>x, <float *>y, s, shift, scale, bias, e,
                                 nthreads)
    return fbn_affine_ex_f64(<const double *>x, <double *>y, s, shift, scale, bias, e, nthreads)


cdef inline int run_backward_ex(int dt, const void *dy, const void *x, void *dx, fbn_shape s,
                                const double *mean_hi, const double *mean_lo,
                                const double *invstd, const double *gamma, const double *beta,
                                const fbn_epilogue *e, int training, double *sum_dy,
                                double *sum_dy_xhat, int nthreads) noexcept nogil:
    if dt == DT_F16:
        return fbn_backward_ex_f16(<const fbn_float16 *>dy, <const fbn_float16 *>x,
                                   <fbn_float16 *>dx, s, mean_hi, mean_lo, invstd, gamma, beta,
                                   e, training, sum_dy, sum_dy_xhat, nthreads)
    if dt == DT_BF16:
        return fbn_backward_ex_bf16(<const fbn_bfloat16 *>dy, <const fbn_bfloat16 *>x,
                                    <fbn_bfloat16 *>dx, s, mean_hi, mean_lo, invstd, gamma, beta,
                                    e, training, sum_dy, sum_dy_xhat, nthreads)
    if dt:
        return fbn_backward_ex_f32(<const float *>dy, <const float *>x, <float *>dx, s,
                                   mean_hi, mean_lo, invstd, gamma, beta, e, training, sum_dy,
                                   sum_dy_xhat, nthreads)
    return fbn_backward_ex_f64(<const double *>dy, <const double *>x, <double *>dx, s, mean_hi,
                               mean_lo, invstd, gamma, beta, e, training, sum_dy, sum_dy_xhat,
                               nthreads)
