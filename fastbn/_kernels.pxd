# The C API of the kernels (src_c/fastbn.h) as Cython sees it, for the two parts of
# the compiled module: the thin wrappers (_kernels.pyx) and the compiled front end
# (_front.pxi, included by it).
#
# Each kernel has a float32 and a float64 version (fbn_<op>_f32, fbn_<op>_f64).
# Callers do not choose between them themselves: the run_<op> functions below take
# the data as untyped pointers plus one dtype code, f32 (true for float32 data,
# false for float64), and make the one choice for all callers.
from libc.stdint cimport int64_t


cdef extern from "fastbn.h" nogil:
    ctypedef struct fbn_shape:
        int64_t outer, channels, inner

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
    void fbn_ema_f32(float *running, const double *batch, const double *batch_lo,
                     int64_t channels, double momentum, double factor)
    void fbn_ema_f64(double *running, const double *batch, const double *batch_lo,
                     int64_t channels, double momentum, double factor)
    void fbn_coefficients(int64_t channels, const double *mean_hi, const double *mean_lo,
                          const double *invstd, const double *gamma, const double *beta,
                          double *shift, double *scale, double *bias)
    int fbn_openmp_enabled()
    const char *fbn_pool_kind()
    int fbn_max_threads()
    const char *fbn_simd_paths()
    const char *fbn_compiler()


cdef extern from "parallel.h" nogil:
    int fbn_pool_set_backoff(int on)


cdef extern from "tuning.h":
    const int64_t FBN_MIN_PARALLEL  # below this many values the kernels use one thread


# ---- the dtype dispatch: f32 true for float32 data, false for float64 ----

cdef inline int run_batch_stats(bint f32, const void *x, fbn_shape s, double *mean_hi,
                                double *mean_lo, double *m2, int nthreads) noexcept nogil:
    if f32:
        return fbn_batch_stats_f32(<const float *>x, s, mean_hi, mean_lo, m2, nthreads)
    return fbn_batch_stats_f64(<const double *>x, s, mean_hi, mean_lo, m2, nthreads)


cdef inline int run_forward_train(bint f32, const void *x, void *y, fbn_shape s,
                                  const double *gamma, const double *beta, double eps, int relu,
                                  double *mean_hi, double *mean_lo, double *var, double *invstd,
                                  int nthreads) noexcept nogil:
    if f32:
        return fbn_forward_train_f32(<const float *>x, <float *>y, s, gamma, beta, eps, relu,
                                     mean_hi, mean_lo, var, invstd, nthreads)
    return fbn_forward_train_f64(<const double *>x, <double *>y, s, gamma, beta, eps, relu,
                                 mean_hi, mean_lo, var, invstd, nthreads)


cdef inline int run_forward_infer(bint f32, const void *x, void *y, fbn_shape s,
                                  const double *mean, const double *var, const double *gamma,
                                  const double *beta, double eps, int relu, double *invstd,
                                  int nthreads) noexcept nogil:
    if f32:
        return fbn_forward_infer_f32(<const float *>x, <float *>y, s, mean, var, gamma, beta,
                                     eps, relu, invstd, nthreads)
    return fbn_forward_infer_f64(<const double *>x, <double *>y, s, mean, var, gamma, beta,
                                 eps, relu, invstd, nthreads)


cdef inline int run_affine(bint f32, const void *x, void *y, fbn_shape s, const double *shift,
                           const double *scale, const double *bias, int relu,
                           int nthreads) noexcept nogil:
    if f32:
        return fbn_affine_f32(<const float *>x, <float *>y, s, shift, scale, bias, relu,
                              nthreads)
    return fbn_affine_f64(<const double *>x, <double *>y, s, shift, scale, bias, relu, nthreads)


cdef inline int run_backward_reduce(bint f32, const void *dy, const void *x, fbn_shape s,
                                    const double *shift, const double *scale,
                                    const double *bias, int relu, double *sum_dy,
                                    double *sum_dy_xs, int nthreads) noexcept nogil:
    if f32:
        return fbn_backward_reduce_f32(<const float *>dy, <const float *>x, s, shift, scale,
                                       bias, relu, sum_dy, sum_dy_xs, nthreads)
    return fbn_backward_reduce_f64(<const double *>dy, <const double *>x, s, shift, scale, bias,
                                   relu, sum_dy, sum_dy_xs, nthreads)


cdef inline int run_backward_elemt(bint f32, const void *dy, const void *x, void *dx,
                                   fbn_shape s, const double *shift, const double *invstd,
                                   const double *k_dy, const double *k_x,
                                   const double *mean_dy, const double *scale,
                                   const double *bias, int relu, int nthreads) noexcept nogil:
    if f32:
        return fbn_backward_elemt_f32(<const float *>dy, <const float *>x, <float *>dx, s,
                                      shift, invstd, k_dy, k_x, mean_dy, scale, bias, relu,
                                      nthreads)
    return fbn_backward_elemt_f64(<const double *>dy, <const double *>x, <double *>dx, s, shift,
                                  invstd, k_dy, k_x, mean_dy, scale, bias, relu, nthreads)


cdef inline int run_backward(bint f32, const void *dy, const void *x, void *dx, fbn_shape s,
                             const double *mean_hi, const double *mean_lo, const double *invstd,
                             const double *gamma, const double *beta, int relu, int training,
                             double *sum_dy, double *sum_dy_xhat, int nthreads) noexcept nogil:
    if f32:
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


# the kernels with an epilogue (issue 20: leaky ReLU, residual)

cdef inline int run_forward_train_ex(bint f32, const void *x, void *y, fbn_shape s,
                                     const double *gamma, const double *beta, double eps,
                                     const fbn_epilogue *e, double *mean_hi, double *mean_lo,
                                     double *var, double *invstd, int nthreads) noexcept nogil:
    if f32:
        return fbn_forward_train_ex_f32(<const float *>x, <float *>y, s, gamma, beta, eps, e,
                                        mean_hi, mean_lo, var, invstd, nthreads)
    return fbn_forward_train_ex_f64(<const double *>x, <double *>y, s, gamma, beta, eps, e,
                                    mean_hi, mean_lo, var, invstd, nthreads)


cdef inline int run_forward_infer_ex(bint f32, const void *x, void *y, fbn_shape s,
                                     const double *mean, const double *var, const double *gamma,
                                     const double *beta, double eps, const fbn_epilogue *e,
                                     double *invstd, int nthreads) noexcept nogil:
    if f32:
        return fbn_forward_infer_ex_f32(<const float *>x, <float *>y, s, mean, var, gamma, beta,
                                        eps, e, invstd, nthreads)
    return fbn_forward_infer_ex_f64(<const double *>x, <double *>y, s, mean, var, gamma, beta,
                                    eps, e, invstd, nthreads)


cdef inline int run_affine_ex(bint f32, const void *x, void *y, fbn_shape s,
                              const double *shift, const double *scale, const double *bias,
                              const fbn_epilogue *e, int nthreads) noexcept nogil:
    if f32:
        return fbn_affine_ex_f32(<const float *>x, <float *>y, s, shift, scale, bias, e,
                                 nthreads)
    return fbn_affine_ex_f64(<const double *>x, <double *>y, s, shift, scale, bias, e, nthreads)


cdef inline int run_backward_ex(bint f32, const void *dy, const void *x, void *dx, fbn_shape s,
                                const double *mean_hi, const double *mean_lo,
                                const double *invstd, const double *gamma, const double *beta,
                                const fbn_epilogue *e, int training, double *sum_dy,
                                double *sum_dy_xhat, int nthreads) noexcept nogil:
    if f32:
        return fbn_backward_ex_f32(<const float *>dy, <const float *>x, <float *>dx, s,
                                   mean_hi, mean_lo, invstd, gamma, beta, e, training, sum_dy,
                                   sum_dy_xhat, nthreads)
    return fbn_backward_ex_f64(<const double *>dy, <const double *>x, <double *>dx, s, mean_hi,
                               mean_lo, invstd, gamma, beta, e, training, sum_dy, sum_dy_xhat,
                               nthreads)
