# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Thin typed wrappers over the C kernels (src_c/fastbn.h).

Arguments arrive validated and canonical from fastbn._core: data as C-contiguous
(outer, C, inner) arrays, per-channel vectors as contiguous float64. Every kernel
call releases the GIL. The C declarations, and the one float32/float64 choice of
kernel (run_<op>), are in _kernels.pxd. The compiled front end of forward and
backward, which checks and dispatches plain calls without NumPy calls, is included
at the end (_front.pxi).
"""
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memcpy
cimport cython
cimport numpy as cnp

cnp.import_array()
import math as _math


ctypedef fused real:
    float
    double
    unsigned short  # half-precision data as their bits (dt: DT_F16 or DT_BF16)


cdef inline int code_of(bint f32, int dt) noexcept nogil:
    """The dtype code of the kernels (_kernels.pxd): dt for half-precision data (given as
    uint16 arrays), else DT_F32 or DT_F64."""
    return (DT_F32 if f32 else DT_F64) if dt < 0 else dt


cdef inline fbn_shape shape_of(const real[:, :, ::1] a) noexcept:
    cdef fbn_shape s
    s.outer, s.channels, s.inner = a.shape[0], a.shape[1], a.shape[2]
    s.row_stride = 0
    return s


cdef inline fbn_shape input_shape(const real[:, :, :] a) except *:
    """The shape of input a (x): its (C, inner) blocks contiguous, its rows (outer)
    row_stride values apart (fbn_shape; 0: contiguous)."""
    cdef fbn_shape s
    s.outer, s.channels, s.inner = a.shape[0], a.shape[1], a.shape[2]
    s.row_stride = row_stride_of(a, s.channels * s.inner, "x")
    return s


cdef inline int64_t row_stride_of(const real[:, :, :] a, int64_t block, str name) except -2:
    """a's fbn_shape.row_stride (0: contiguous); a ValueError naming it unless its
    (C, inner) blocks (of `block` values) are contiguous and its rows apart."""
    cdef Py_ssize_t isz = sizeof(real)
    if ((a.shape[2] > 1 and a.strides[2] != isz)
            or (a.shape[1] > 1 and a.strides[1] != a.shape[2] * isz)):
        raise ValueError(f"{name}: each (C, inner) block must be contiguous")
    if a.shape[0] <= 1 or a.strides[0] == block * isz:
        return 0
    if a.strides[0] % isz or a.strides[0] < block * isz:
        raise ValueError(f"{name}: rows must be apart by a whole number of values, "
                         f"at least a row's")
    return a.strides[0] // isz


cdef inline int same_rows(const real[:, :, :] a, fbn_shape s, str name) except -1:
    """A ValueError naming input a (dy, residual) unless it has x's shape and rows."""
    if a.shape[0] != s.outer or a.shape[1] != s.channels or a.shape[2] != s.inner:
        raise ValueError(f"{name} must have x's shape")
    if row_stride_of(a, s.channels * s.inner, name) != s.row_stride:
        raise ValueError(f"{name}'s rows must be as far apart as x's")
    return 0


cdef inline const double *opt(const double[::1] v) noexcept:
    """NULL for a missing (None) per-channel vector."""
    return NULL if v is None else &v[0]


cdef inline void check(int status) except *:
    if status == -1:
        raise MemoryError("fastbn: could not allocate a per-channel work buffer")
    if status != 0:
        raise ValueError(f"fastbn kernel refused its input (status {status})")


def batch_stats(const real[:, :, :] x not None, double[::1] mean_hi not None, double[::1] mean_lo not None,
                double[::1] m2 not None, int nthreads, int dt=-1):
    cdef int st
    cdef fbn_shape s = input_shape(x)
    with nogil:
        st = run_batch_stats(code_of(real is float, dt), &x[0, 0, 0], s, &mean_hi[0], &mean_lo[0], &m2[0],
                             nthreads)
    check(st)


def forward_train(const real[:, :, :] x not None, real[:, :, ::1] y not None, const double[::1] gamma,
                  const double[::1] beta, double eps, bint relu, double[::1] mean_hi not None,
                  double[::1] mean_lo not None, double[::1] var not None, double[::1] invstd not None, int nthreads, int dt=-1):
    cdef int st
    cdef fbn_shape s = input_shape(x)
    cdef const double *g = opt(gamma)
    cdef const double *b = opt(beta)
    with nogil:
        st = run_forward_train(code_of(real is float, dt), &x[0, 0, 0], &y[0, 0, 0], s, g, b, eps, relu,
                               &mean_hi[0], &mean_lo[0], &var[0], &invstd[0], nthreads)
    check(st)


def forward_infer(const real[:, :, :] x not None, real[:, :, ::1] y not None,
                  const double[::1] mean not None, const double[::1] var not None,
                  const double[::1] gamma, const double[::1] beta, double eps, bint relu,
                  double[::1] invstd not None, int nthreads, int dt=-1):
    cdef int st
    cdef fbn_shape s = input_shape(x)
    cdef const double *g = opt(gamma)
    cdef const double *b = opt(beta)
    with nogil:
        st = run_forward_infer(code_of(real is float, dt), &x[0, 0, 0], &y[0, 0, 0], s, &mean[0], &var[0],
                               g, b, eps, relu, &invstd[0], nthreads)
    check(st)


def affine(const real[:, :, :] x not None, real[:, :, ::1] y not None, const double[::1] shift not None,
           const double[::1] scale not None, const double[::1] bias not None, bint relu, int nthreads, int dt=-1):
    cdef int st
    cdef fbn_shape s = input_shape(x)
    with nogil:
        st = run_affine(code_of(real is float, dt), &x[0, 0, 0], &y[0, 0, 0], s, &shift[0], &scale[0],
                        &bias[0], relu, nthreads)
    check(st)


def backward_reduce(const real[:, :, :] dy not None, const real[:, :, :] x not None, const double[::1] shift not None,
                    const double[::1] scale, const double[::1] bias, bint relu,
                    double[::1] sum_dy not None, double[::1] sum_dy_xs not None, int nthreads, int dt=-1):
    cdef int st
    cdef fbn_shape s = input_shape(x)
    same_rows(dy, s, "dy")
    cdef const double *sc = opt(scale)
    cdef const double *bi = opt(bias)
    with nogil:
        st = run_backward_reduce(code_of(real is float, dt), &dy[0, 0, 0], &x[0, 0, 0], s, &shift[0], sc,
                                 bi, relu, &sum_dy[0], &sum_dy_xs[0], nthreads)
    check(st)


def backward_elemt(const real[:, :, :] dy not None, const real[:, :, :] x not None,
                   real[:, :, ::1] dx not None, const double[::1] shift not None,
                   const double[::1] invstd not None, const double[::1] k_dy not None,
                   const double[::1] k_x not None, const double[::1] mean_dy not None,
                   const double[::1] scale, const double[::1] bias, bint relu, int nthreads, int dt=-1):
    cdef int st
    cdef fbn_shape s = input_shape(x)
    same_rows(dy, s, "dy")
    cdef const double *sc = opt(scale)
    cdef const double *bi = opt(bias)
    with nogil:
        st = run_backward_elemt(code_of(real is float, dt), &dy[0, 0, 0], &x[0, 0, 0], &dx[0, 0, 0], s,
                                &shift[0], &invstd[0], &k_dy[0], &k_x[0], &mean_dy[0], sc,
                                bi, relu, nthreads)
    check(st)


def backward_fused(const real[:, :, :] dy not None, const real[:, :, :] x not None,
                   real[:, :, ::1] dx not None, const double[::1] mean_hi not None,
                   const double[::1] mean_lo not None, const double[::1] invstd not None,
                   const double[::1] gamma, const double[::1] beta, bint relu, bint training,
                   double[::1] sum_dy not None, double[::1] sum_dy_xhat not None, int nthreads, int dt=-1):
    cdef int st
    cdef fbn_shape s = input_shape(x)
    same_rows(dy, s, "dy")
    cdef const double *g = opt(gamma)
    cdef const double *b = opt(beta)
    with nogil:
        st = run_backward(code_of(real is float, dt), &dy[0, 0, 0], &x[0, 0, 0], &dx[0, 0, 0], s,
                          &mean_hi[0], &mean_lo[0], &invstd[0], g, b, relu, training,
                          &sum_dy[0], &sum_dy_xhat[0], nthreads)
    check(st)


# ---- with an epilogue (issue 20): act 0 none, 1 ReLU, 2 leaky ReLU (slope); z, the
# residual added before the activation (None: none); backward's dz receives dy
# through the activation's mask; backward's dx may be None (the sums alone)

cdef inline fbn_epilogue epilogue(int act, double slope, const void *z, void *dz) noexcept:
    cdef fbn_epilogue e
    e.act, e.slope, e.residual, e.dresidual = act, slope, z, dz
    e.params_f32 = 0
    return e


def forward_train_ex(const real[:, :, :] x not None, real[:, :, ::1] y not None,
                     const double[::1] gamma, const double[::1] beta, double eps, int act,
                     double slope, const real[:, :, :] z, double[::1] mean_hi not None,
                     double[::1] mean_lo not None, double[::1] var,
                     double[::1] invstd not None, int nthreads, int dt=-1):
    """var None: not wanted (no running statistics)."""
    cdef int st
    cdef fbn_shape s = input_shape(x)
    if z is not None:
        same_rows(z, s, "z")
    cdef fbn_epilogue e = epilogue(act, slope, NULL if z is None else &z[0, 0, 0], NULL)
    cdef const double *g = opt(gamma)
    cdef const double *b = opt(beta)
    cdef double *v = NULL if var is None else &var[0]
    with nogil:
        st = run_forward_train_ex(code_of(real is float, dt), &x[0, 0, 0], &y[0, 0, 0], s, g, b, eps, &e,
                                  &mean_hi[0], &mean_lo[0], v, &invstd[0], nthreads)
    check(st)


def forward_train_f32_params(const real[:, :, :] x not None, real[:, :, ::1] y not None,
                             const float[::1] gamma, const float[::1] beta, double eps,
                             bint relu, double[::1] mean_hi not None,
                             double[::1] mean_lo not None, double[::1] var,
                             double[::1] invstd not None, int nthreads, int dt=-1):
    """forward_train with float32 gamma and beta (either may be None) read where they
    are, a block at a time (no double copy of C values); var None: not wanted."""
    cdef int st
    cdef fbn_shape s = input_shape(x)
    cdef fbn_epilogue e = epilogue(1 if relu else 0, 0.0, NULL, NULL)
    cdef const double *g = NULL if gamma is None else <const double *>&gamma[0]
    cdef const double *b = NULL if beta is None else <const double *>&beta[0]
    cdef double *v = NULL if var is None else &var[0]
    e.params_f32 = 1
    with nogil:
        st = run_forward_train_ex(code_of(real is float, dt), &x[0, 0, 0], &y[0, 0, 0], s, g, b, eps, &e,
                                  &mean_hi[0], &mean_lo[0], v, &invstd[0], nthreads)
    check(st)


def forward_infer_ex(const real[:, :, :] x not None, real[:, :, ::1] y not None,
                     const double[::1] mean not None, const double[::1] var not None,
                     const double[::1] gamma, const double[::1] beta, double eps, int act,
                     double slope, const real[:, :, :] z, double[::1] invstd not None,
                     int nthreads, int dt=-1):
    cdef int st
    cdef fbn_shape s = input_shape(x)
    if z is not None:
        same_rows(z, s, "z")
    cdef fbn_epilogue e = epilogue(act, slope, NULL if z is None else &z[0, 0, 0], NULL)
    cdef const double *g = opt(gamma)
    cdef const double *b = opt(beta)
    with nogil:
        st = run_forward_infer_ex(code_of(real is float, dt), &x[0, 0, 0], &y[0, 0, 0], s, &mean[0], &var[0],
                                  g, b, eps, &e, &invstd[0], nthreads)
    check(st)


def affine_ex(const real[:, :, :] x not None, real[:, :, ::1] y not None,
              const double[::1] shift not None, const double[::1] scale not None,
              const double[::1] bias not None, int act, double slope, const real[:, :, :] z,
              int nthreads, int dt=-1):
    cdef int st
    cdef fbn_shape s = input_shape(x)
    if z is not None:
        same_rows(z, s, "z")
    cdef fbn_epilogue e = epilogue(act, slope, NULL if z is None else &z[0, 0, 0], NULL)
    with nogil:
        st = run_affine_ex(code_of(real is float, dt), &x[0, 0, 0], &y[0, 0, 0], s, &shift[0], &scale[0],
                           &bias[0], &e, nthreads)
    check(st)


def backward_ex(const real[:, :, :] dy not None, const real[:, :, :] x not None,
                real[:, :, ::1] dx, const double[::1] mean_hi not None,
                const double[::1] mean_lo not None, const double[::1] invstd not None,
                const double[::1] gamma, const double[::1] beta, int act, double slope,
                const real[:, :, :] z, real[:, :, ::1] dz, bint training,
                double[::1] sum_dy not None, double[::1] sum_dy_xhat not None, int nthreads,
                int dt=-1):
    cdef int st
    cdef fbn_shape s = input_shape(x)
    same_rows(dy, s, "dy")
    if z is not None:
        same_rows(z, s, "z")
    if z is not None and s.row_stride:
        raise ValueError("backward_ex: with a residual, inputs must be contiguous")
    cdef fbn_epilogue e = epilogue(act, slope, NULL if z is None else &z[0, 0, 0],
                                   NULL if dz is None else &dz[0, 0, 0])
    cdef const double *g = opt(gamma)
    cdef const double *b = opt(beta)
    cdef void *d = NULL if dx is None else &dx[0, 0, 0]
    if (z is None) != (dz is None):
        raise ValueError("backward_ex: z and dz go together")
    with nogil:
        st = run_backward_ex(code_of(real is float, dt), &dy[0, 0, 0], &x[0, 0, 0], d, s, &mean_hi[0],
                             &mean_lo[0], &invstd[0], g, b, &e, training, &sum_dy[0],
                             &sum_dy_xhat[0], nthreads)
    check(st)


def ema(real[::1] running not None, const double[::1] batch not None, const double[::1] batch_lo,
        double momentum, double factor):
    if real is cython.ushort:
        raise TypeError("ema: running statistics of float32 or float64 only")
    cdef int64_t n = running.shape[0]
    cdef const double *lo = opt(batch_lo)
    with nogil:
        run_ema(real is float, &running[0], &batch[0], lo, n, momentum, factor)


def coefficients(const double[::1] mean not None, const double[::1] invstd not None,
                 const double[::1] gamma, const double[::1] beta, double[::1] shift not None,
                 double[::1] scale not None, double[::1] bias not None):
    """Of a mean without a residual (normalize's, and a ReLU mask's)."""
    cdef const double *g = opt(gamma)
    cdef const double *b = opt(beta)
    with nogil:
        fbn_coefficients(mean.shape[0], &mean[0], NULL, &invstd[0], g, b, &shift[0],
                         &scale[0], &bias[0])


def forward_masked(const real[:, :, ::1] x not None, real[:, :, ::1] y,
                   const uint8_t[:, ::1] mask not None, const double[::1] gamma,
                   const double[::1] beta, double eps, bint relu, double[::1] mean_hi not None,
                   double[::1] mean_lo not None, double[::1] var not None,
                   double[::1] invstd not None, int nthreads, int dt=-1):
    """mask=: statistics of the kept positions (mask: (outer, inner) of 0/1), y at
    every position unless y is None; returns the kept count per channel."""
    cdef int st
    cdef int64_t count = 0
    cdef fbn_shape s = shape_of(x)
    cdef const double *g = opt(gamma)
    cdef const double *b = opt(beta)
    cdef void *yp = NULL if y is None else <void *>&y[0, 0, 0]
    if mask.shape[0] != s.outer or mask.shape[1] != s.inner:
        raise ValueError("forward_masked: mask must have shape (outer, inner)")
    with nogil:
        st = run_forward_masked(code_of(real is float, dt), &x[0, 0, 0], yp, s, &mask[0, 0], g,
                                b, eps, relu, &mean_hi[0], &mean_lo[0], &var[0], &invstd[0],
                                &count, nthreads)
    check(st)
    return count


def backward_masked(const real[:, :, ::1] dy not None, const real[:, :, ::1] x not None,
                    real[:, :, ::1] dx, const uint8_t[:, ::1] mask not None, int64_t count,
                    const double[::1] mean_hi not None, const double[::1] mean_lo,
                    const double[::1] invstd not None, const double[::1] gamma,
                    const double[::1] beta, bint relu, double[::1] sum_dy not None,
                    double[::1] sum_dy_xhat not None, int nthreads, int dt=-1):
    """The backward of forward_masked (dx None: the sums only)."""
    cdef int st
    cdef fbn_shape s = shape_of(x)
    cdef const double *g = opt(gamma)
    cdef const double *b = opt(beta)
    cdef const double *lo = opt(mean_lo)
    cdef void *dxp = NULL if dx is None else <void *>&dx[0, 0, 0]
    if mask.shape[0] != s.outer or mask.shape[1] != s.inner:
        raise ValueError("backward_masked: mask must have shape (outer, inner)")
    with nogil:
        st = run_backward_masked(code_of(real is float, dt), &dy[0, 0, 0], &x[0, 0, 0], dxp, s,
                                 &mask[0, 0], count, &mean_hi[0], lo, &invstd[0], g, b, relu,
                                 &sum_dy[0], &sum_dy_xhat[0], nthreads)
    check(st)


def openmp_enabled():
    return bool(fbn_openmp_enabled())


def pool_kind():
    return fbn_pool_kind().decode()


def max_threads():
    return fbn_max_threads()


def pool_wake_values():
    """Calls of fewer values wake no sleeping worker (-1: not fastbn's pool)."""
    return fbn_pool_wake_values()


def pool_set_backoff(bint on):
    """For tests: whether the pool falls back to one thread after a stalled loop."""
    return bool(fbn_pool_set_backoff(on))


def cache_sizes():
    """(L1d, L2, L3) in bytes as the kernels use them (detected, or overridden by
    FASTBN_CACHE_SIZES or _set_cache_sizes)."""
    cdef fbn_caches c = fbn_cache_sizes()
    return (c.l1d, c.l2, c.l3)


def _set_cache_sizes(int64_t l1d=0, int64_t l2=0, int64_t l3=0):
    """For tests and tuning: the cache sizes the kernels assume (0: detect); only
    choices that change no result's bits follow them."""
    fbn_set_cache_sizes(l1d, l2, l3)
    return cache_sizes()


def stream_width():
    """Bytes per non-temporal store of streamed outputs (64: AVX-512F, 32: AVX2, 16:
    SSE2; FASTBN_STREAM_WIDTH narrows it; 0: plain stores only)."""
    return fbn_stream_width()


def _stream_copy(dst, src):
    """For tests: src's bytes into dst (uint8 arrays, contiguous, of one length) by
    the streamed outputs' copy (fbn_stream_copy)."""
    cdef cnp.ndarray d = dst, s = src
    if cnp.PyArray_TYPE(d) != cnp.NPY_UINT8 or cnp.PyArray_TYPE(s) != cnp.NPY_UINT8 \
            or not cnp.PyArray_IS_C_CONTIGUOUS(d) or not cnp.PyArray_IS_C_CONTIGUOUS(s) \
            or cnp.PyArray_SIZE(d) != cnp.PyArray_SIZE(s):
        raise ValueError("dst and src must be contiguous uint8 arrays of one length")
    fbn_stream_copy(cnp.PyArray_DATA(d), cnp.PyArray_DATA(s), cnp.PyArray_NBYTES(d))


def _resident(a):
    """For tests: whether the kernels take array a's pages as in memory (streamed
    stores) rather than untouched (plain stores)."""
    cdef cnp.ndarray arr = a
    return bool(fbn_resident(cnp.PyArray_DATA(arr), cnp.PyArray_NBYTES(arr)))


def outmem_limit(int64_t max_bytes=-1):
    """The outputs' allocator's limit of kept bytes before the call (src_c/outmem.c); sets
    it when max_bytes >= 0 (0 frees every kept block). -1: the cache is busy."""
    return fbn_outmem_limit(max_bytes)


def outmem_held():
    return fbn_outmem_held()


def empty_output(shape, dtype):
    """np.empty(shape, dtype) (C order), its memory from the outputs' allocator when large
    (_front.pxi): the checked path's outputs."""
    dtype = _np.dtype(dtype)
    if _math.prod(shape) * dtype.itemsize < OUTMEM_MIN:
        return _np.empty(shape, dtype)
    old = set_data_handler(_outmem_capsule)
    try:
        return _np.empty(shape, dtype)
    finally:
        set_data_handler(old)


def simd_paths():
    return fbn_simd_paths().decode()


def half_conversions():
    """The instructions that convert float16 and bfloat16 data on this CPU, read at
    run time: "AVX-512F + AVX512_BF16" (bfloat16 rounded by VCVTNEPS2BF16),
    "AVX-512F", "F16C + AVX2" or "portable" (integer operations)."""
    return {3: "AVX-512F + AVX512_BF16", 2: "AVX-512F",
            1: "F16C + AVX2"}.get(fbn_half_conversions(), "portable")


def compiler():
    return fbn_compiler().decode()


include "_front.pxi"
include "_front_blocks.pxi"
