# The compiled front end of the building blocks batch_stats, normalize, backward_reduce
# and backward_elemt (included by _kernels.pyx after _front.pxi, whose helpers it uses).
#
# As for forward: a call whose arguments are all of the plain, valid kinds (a non-empty
# data array the kernels read where it is, (C,) vectors of a float dtype, a Python int
# axis, an integer count, no out= or one the kernels write where it is) is checked and
# run here without NumPy calls; every other call, and every call that would raise, goes to
# fastbn._core's checked function (set_checked_blocks), which decides and words the
# errors. Both compute the same doubles in the same order and run the same kernels, so
# their results are bitwise equal (tests/test_front_blocks.py). fastbn._core binds them
# as front_<name> (<name> is the thin kernel wrapper) under the public names.
from libc.stdlib cimport malloc, free

cdef dict _checked_blocks = {}


def set_checked_blocks(**functions):
    """fastbn._core's checked batch_stats, normalize, backward_reduce, backward_elemt."""
    _checked_blocks.update(functions)


cdef inline bint plain_data(object x, object axis, int *ax, fbn_shape *s):
    """x a non-empty plain data array of two or more dimensions that the kernels read
    where it is, axis a Python int within its dimensions: ax and s set."""
    if data_code(x) < 0 or type(axis) is not int:
        return False
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(xa)
    if nd < 2 or not -nd <= axis < nd or cnp.PyArray_SIZE(xa) == 0:
        return False
    ax[0] = <int>axis + nd if axis < 0 else <int>axis
    return canonical_view(xa, ax[0], s)


cdef inline bint optional_vector(object v, int64_t C):
    return v is None or plain_vector(v, C)


cdef inline const double *read_optional(object v, int64_t C, double *dst) noexcept:
    """A plain vector's values as double in dst, or NULL for None."""
    if v is None:
        return NULL
    read_vector(<cnp.ndarray>v, C, dst)
    return dst


cdef inline bint read_channel_vectors(object mean, object invstd, object gamma, object beta,
                                      int64_t C, double *w, const double **g,
                                      const double **b):
    """mean, invstd, gamma and beta (plain vectors; gamma and beta may be None: g, b
    NULL) as double in w's first 4 C values; False for an invstd the checked path
    refuses."""
    read_vector(<cnp.ndarray>mean, C, w)
    read_vector(<cnp.ndarray>invstd, C, w + C)
    if not fbn_saved_stats_ok(C, w, NULL, w + C):
        return False
    g[0], b[0] = read_optional(gamma, C, w + 2 * C), read_optional(beta, C, w + 3 * C)
    return True


def front_batch_stats(x, *, axis=1):
    cdef int ax, st
    cdef fbn_shape s
    if not plain_data(x, axis, &ax, &s):
        return _checked_blocks["batch_stats"](x, axis=axis)
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int dt = data_code(xa)
    cdef int64_t C = cnp.PyArray_DIM(xa, ax)
    cdef int nthreads = threads_for(cnp.PyArray_SIZE(xa))
    cdef cnp.ndarray mean = new_vector(C), lo = new_vector(C), m2 = new_vector(C)
    with nogil:
        st = run_batch_stats(dt, cnp.PyArray_DATA(xa), s,
                             <double *>cnp.PyArray_DATA(mean), <double *>cnp.PyArray_DATA(lo),
                             <double *>cnp.PyArray_DATA(m2), nthreads)
    check(st)
    return cnp.PyArray_SIZE(xa) // C, mean, m2


def front_normalize(x, mean, invstd, gamma=None, beta=None, *, axis=1, out=None, activation=None):
    r = plain_normalize(x, mean, invstd, gamma, beta, axis, out, activation)
    if r is None:
        return _checked_blocks["normalize"](x, mean, invstd, gamma, beta, axis=axis, out=out,
                                            activation=activation)
    return r


cdef object plain_normalize(object x, object mean, object invstd, object gamma, object beta,
                            object axis, object out, object activation):
    """normalize's plain call, checked and run: y, or None (the checked path's)."""
    cdef int ax, st
    cdef fbn_shape s
    if not (plain_data(x, axis, &ax, &s) and plain_activation(activation)):
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int dt = data_code(xa)
    cdef int64_t C = cnp.PyArray_DIM(xa, ax)
    if not (plain_vector(mean, C) and plain_vector(invstd, C) and optional_vector(gamma, C)
            and optional_vector(beta, C)
            and (out is None or out_ok(out, xa, (x, mean, invstd, gamma, beta)))):
        return None
    cdef bint relu = activation == "relu"
    cdef int nthreads = threads_for(cnp.PyArray_SIZE(xa))
    cdef double *w = new_work(7 * C)
    cdef double *m = w
    cdef double *inv = w + C
    cdef double *shift = w + 4 * C
    cdef const double *g
    cdef const double *b
    cdef cnp.ndarray y
    try:
        if not read_channel_vectors(mean, invstd, gamma, beta, C, w, &g, &b):
            return None
        y = new_output(xa, out)
        with nogil:
            fbn_coefficients(C, m, NULL, inv, g, b, shift, shift + C, shift + 2 * C)
            st = run_affine(dt, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(y), s, shift,
                            shift + C, shift + 2 * C, relu, nthreads)
    finally:
        free(w)
    check(st)
    return y


def front_backward_reduce(dy, x, mean, invstd, *, axis=1, gamma=None, beta=None, activation=None):
    r = plain_backward_reduce(dy, x, mean, invstd, axis, gamma, beta, activation)
    if r is None:
        return _checked_blocks["backward_reduce"](dy, x, mean, invstd, axis=axis, gamma=gamma,
                                                  beta=beta, activation=activation)
    return r


cdef object plain_backward_reduce(object dy, object x, object mean, object invstd,
                                  object axis, object gamma, object beta, object activation):
    """backward_reduce's plain call: (sum_dy, sum_dy_xhat), or None."""
    cdef int ax, st
    cdef fbn_shape s
    if not (plain_data(x, axis, &ax, &s) and plain_activation(activation)):
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int dt = data_code(xa)
    cdef int64_t c, C = cnp.PyArray_DIM(xa, ax)
    if not (plain_dy(dy, xa, ax, &s) and plain_vector(mean, C) and plain_vector(invstd, C)
            and optional_vector(gamma, C) and optional_vector(beta, C)):
        return None
    cdef bint relu = activation == "relu"
    cdef int nthreads = threads_for(cnp.PyArray_SIZE(xa))
    cdef double *w = new_work(7 * C)
    cdef double *m = w
    cdef double *inv = w + C
    cdef double *shift = w + 4 * C
    cdef const double *g
    cdef const double *b
    cdef cnp.ndarray sum_dy = new_vector(C), sum_dy_xhat = new_vector(C)
    cdef double *sxh = <double *>cnp.PyArray_DATA(sum_dy_xhat)
    try:
        if not read_channel_vectors(mean, invstd, gamma, beta, C, w, &g, &b):
            return None
        with nogil:
            if relu:  # the forward's pre-activation, for the mask
                fbn_coefficients(C, m, NULL, inv, g, b, shift, shift + C, shift + 2 * C)
            st = run_backward_reduce(dt, cnp.PyArray_DATA(<cnp.ndarray>dy),
                                     cnp.PyArray_DATA(xa), s, m, shift + C if relu else NULL,
                                     shift + 2 * C if relu else NULL, relu,
                                     <double *>cnp.PyArray_DATA(sum_dy), sxh, nthreads)
            for c in range(C):
                sxh[c] = inv[c] * sxh[c]
    finally:
        free(w)
    check(st)
    return sum_dy, sum_dy_xhat


def front_backward_elemt(dy, x, mean, invstd, gamma, sum_dy, sum_dy_xhat, count, *, axis=1,
                   out=None, beta=None, activation=None):
    r = plain_backward_elemt(dy, x, mean, invstd, gamma, sum_dy, sum_dy_xhat, count, axis,
                             out, beta, activation)
    if r is None:
        return _checked_blocks["backward_elemt"](dy, x, mean, invstd, gamma, sum_dy,
                                                 sum_dy_xhat, count, axis=axis, out=out,
                                                 beta=beta, activation=activation)
    return r


cdef object plain_backward_elemt(object dy, object x, object mean, object invstd, object gamma,
                                 object sum_dy, object sum_dy_xhat, object count, object axis,
                                 object out, object beta, object activation):
    """backward_elemt's plain call (count a Python or NumPy integer): dx, or None."""
    cdef int ax, st
    cdef fbn_shape s
    if type(count) is not int and isinstance(count, _np.integer):
        count = int(count)
    if not (plain_data(x, axis, &ax, &s) and plain_activation(activation)
            and type(count) is int and 1 <= count <= 2 ** 62):
        return None
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int dt = data_code(xa)
    cdef int64_t c, C = cnp.PyArray_DIM(xa, ax)
    if not (plain_dy(dy, xa, ax, &s) and plain_vector(mean, C) and plain_vector(invstd, C)
            and plain_vector(sum_dy, C) and plain_vector(sum_dy_xhat, C)
            and optional_vector(gamma, C) and optional_vector(beta, C)
            and (out is None or out_ok(out, xa, (x, dy, mean, invstd, gamma, sum_dy,
                                                 sum_dy_xhat, beta)))):
        return None
    cdef bint relu = activation == "relu"
    cdef double n = <double><int64_t>count  # as float(count): rounded to nearest
    cdef int nthreads = threads_for(cnp.PyArray_SIZE(xa))
    cdef double *w = new_work(12 * C)
    cdef double *m = w
    cdef double *inv = w + C
    cdef double *sdy = w + 4 * C
    cdef double *sxh = w + 5 * C
    cdef double *k_dy = w + 6 * C
    cdef double *k_x = w + 7 * C
    cdef double *mean_dy = w + 8 * C
    cdef double *shift = w + 9 * C
    cdef const double *g
    cdef const double *b
    cdef cnp.ndarray dx
    try:
        if not read_channel_vectors(mean, invstd, gamma, beta, C, w, &g, &b):
            return None
        read_vector(<cnp.ndarray>sum_dy, C, sdy)
        read_vector(<cnp.ndarray>sum_dy_xhat, C, sxh)
        dx = new_output(xa, out)
        with nogil:
            # dx = k_dy * (dy - sum_dy / count) + k_x * xhat, as fastbn._core's
            for c in range(C):
                k_dy[c] = inv[c] if g == NULL else inv[c] * g[c]
                k_x[c] = -k_dy[c] * (sxh[c] / n)
                mean_dy[c] = sdy[c] / n
            if relu:
                fbn_coefficients(C, m, NULL, inv, g, b, shift, shift + C, shift + 2 * C)
            st = run_backward_elemt(dt, cnp.PyArray_DATA(<cnp.ndarray>dy),
                                    cnp.PyArray_DATA(xa), cnp.PyArray_DATA(dx), s, m, inv, k_dy,
                                    k_x, mean_dy, shift + C if relu else NULL,
                                    shift + 2 * C if relu else NULL, relu, nthreads)
    finally:
        free(w)
    check(st)
    return dx
