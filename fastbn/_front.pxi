# The compiled front end of forward and backward (included by _kernels.pyx).
#
# A call whose arguments are all of the common, plainly valid kinds (plain data arrays of
# float32, float64, float16 or bfloat16 with vectors of those dtypes, aligned, C-contiguous
# or row-strided as fastbn._checks.canonical takes them without a copy, no out= or one
# the kernels write where it is (out_ok), Python scalars of the expected types) is
# checked and dispatched here, in one kernel call with its running-statistics update,
# without NumPy calls (but the rounding of half-precision dgamma, dbeta and running
# statistics, by NumPy as the checked path rounds them): a small batch then costs
# about what its arithmetic costs. Every other call, and every call that would raise, goes to the
# checked path in fastbn._core (set by `set_checked_paths`), which decides and words the
# errors; both paths run the same kernels on the same values, so their results are
# bitwise equal.
from libc.stdlib cimport malloc, free, calloc, realloc
from libc.string cimport strncpy
from cpython.pycapsule cimport PyCapsule_New
from libc.float cimport DBL_MAX
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from functools import partial as _partial
import numpy as _np


cdef extern from "Python.h":
    object PyType_GenericAlloc(PyTypeObject *type, Py_ssize_t nitems)  # a new reference

cdef extern from "structmember.h":
    ctypedef struct PyMemberDef:
        Py_ssize_t offset

cdef extern from "Python.h":
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member

cdef object _checked_forward = None
cdef object _checked_backward = None
cdef object _checked_forward_then = None  # fastbn._core._forward_then
cdef object _Cache = None
cdef object _num_threads = None

cdef inline int threads_for(int64_t size) except -1:
    """The thread setting (a Python call) only where the kernels would use it."""
    return 1 if size < FBN_MIN_PARALLEL else _num_threads()
cdef object _checks = None  # fastbn._checks: its one-time momentum warning flag


# A new Cache's slots, in the order new_cache takes their values: written directly at
# the offsets of Cache's member descriptors, as the descriptors themselves write
# them (through setattr, the 14 slots were a sixth of a (4, 5) forward's time)
CACHE_SLOTS = ("x", "gamma", "beta", "_mean", "_mean_lo", "invstd", "_var", "count", "axis",
               "eps", "training", "activation", "x_overwritten", "x_written")
cdef enum:
    N_SLOTS = 14
cdef Py_ssize_t _slot_offset[N_SLOTS]


def set_checked_paths(forward, backward, cache_class, num_threads, forward_then=None):
    """fastbn._core's checked forward/backward, its Cache class and thread count getter
    (and its _forward_then, kept when None)."""
    global _checked_forward, _checked_backward, _Cache, _num_threads, _checks
    global _checked_forward_then
    if forward_then is not None:
        _checked_forward_then = forward_then
    import types
    slots = getattr(cache_class, "__slots__", ())
    if (set(CACHE_SLOTS) != set(slots) or cache_class.__bases__ != (object,)
            or cache_class.__setattr__ is not object.__setattr__):
        raise TypeError("fastbn: the front end needs a Cache of slots only, " + repr(CACHE_SLOTS))
    for i, name in enumerate(CACHE_SLOTS):
        descriptor = cache_class.__dict__[name]
        if type(descriptor) is not types.MemberDescriptorType:
            raise TypeError(f"fastbn: Cache.{name} is not a slot")
        _slot_offset[i] = (<PyMemberDescrObject *>descriptor).d_member.offset
    _checked_forward, _checked_backward = forward, backward
    _Cache, _num_threads = cache_class, num_threads
    import fastbn._checks as _checks


cdef object new_cache(tuple values):
    """A Cache (as Cache.__new__ makes it, no __init__) whose slots hold `values`, in
    CACHE_SLOTS order."""
    cdef object cache = PyType_GenericAlloc(<PyTypeObject *>_Cache, 0)
    cdef PyObject *v
    cdef int i
    for i in range(N_SLOTS):
        v = <PyObject *>values[i]
        Py_INCREF(<object>v)
        (<PyObject **>(<char *><PyObject *>cache + _slot_offset[i]))[0] = v
    return cache


cdef inline cnp.ndarray copy_vector(cnp.ndarray v):
    """A new copy of a plain (C,) vector (one allocation and a memcpy)."""
    cdef cnp.ndarray c = cnp.PyArray_EMPTY(1, cnp.PyArray_DIMS(v), cnp.PyArray_TYPE(v), 0)
    memcpy(cnp.PyArray_DATA(c), cnp.PyArray_DATA(v), cnp.PyArray_NBYTES(v))
    return c


cdef extern from "numpy/ndarraytypes.h":
    cdef enum:
        NPY_USERDEF  # the first type number of user-defined dtypes (ml_dtypes')

cdef int _bf16_type = -1  # ml_dtypes' bfloat16 type number, once an array of it is seen


cdef int bf16_type():
    """ml_dtypes' bfloat16 type number, or -1 before ml_dtypes is imported (no bfloat16
    array exists before; fastbn._checks.bfloat16 does not import it). Looked up once."""
    global _bf16_type
    if _bf16_type < 0:
        bf16 = _checks.bfloat16() if _checks is not None else None
        if bf16 is not None:
            _bf16_type = bf16.num
    return _bf16_type


cdef inline int data_code(object a):
    """The kernels' dtype code (DT_F64, DT_F32, DT_F16, DT_BF16) of a plain ndarray of
    native float64, float32, float16 or bfloat16, aligned (any strides); -1 for
    anything else."""
    if type(a) is not cnp.ndarray:
        return -1
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if not (cnp.PyArray_ISALIGNED(arr) and cnp.PyArray_ISNOTSWAPPED(arr)):
        return -1
    cdef int t = cnp.PyArray_TYPE(arr)
    if t == cnp.NPY_FLOAT:
        return DT_F32
    if t == cnp.NPY_DOUBLE:
        return DT_F64
    if t == cnp.NPY_FLOAT16:
        return DT_F16
    if t >= NPY_USERDEF and t == bf16_type():
        return DT_BF16
    return -1


cdef inline bint plain_typed(object a):
    """A plain ndarray of native float32/float64, aligned (any strides)."""
    cdef int code = data_code(a)
    return code == DT_F32 or code == DT_F64


cdef inline bint plain_vector(object v, int64_t C):
    """A plain (C,) vector of native float32, float64, float16 or bfloat16 (read as
    double: read_vector), contiguous and aligned."""
    return (data_code(v) >= 0 and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>v)
            and cnp.PyArray_NDIM(<cnp.ndarray>v) == 1
            and cnp.PyArray_DIM(<cnp.ndarray>v, 0) == C)


cdef inline bint out_ok(object out, cnp.ndarray like, tuple others):
    """Whether `out` (not None) is written by the kernels where it is, as the checked
    path would: a plain, writeable, C-contiguous, aligned array of like's dtype and shape
    that overlaps none of `others` (arrays the call reads or writes, or None). Any other
    out= (in place, strided, a subclass, an error) is the checked path's."""
    if data_code(out) < 0 or not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>out):
        return False
    cdef cnp.ndarray o = <cnp.ndarray>out
    cdef int d, nd = cnp.PyArray_NDIM(like)
    if (cnp.PyArray_TYPE(o) != cnp.PyArray_TYPE(like) or cnp.PyArray_NDIM(o) != nd
            or not cnp.PyArray_ISWRITEABLE(o)):
        return False
    for d in range(nd):
        if cnp.PyArray_DIM(o, d) != cnp.PyArray_DIM(like, d):
            return False
    for other in others:
        if not apart(o, other):
            return False
    return True


cdef inline void read_vector(cnp.ndarray v, int64_t C, double *dst) noexcept nogil:
    """A plain (C,) vector's values as double (exact; as NumPy widens them)."""
    cdef int64_t c
    cdef const float *f
    cdef int t = cnp.PyArray_TYPE(v)
    if t == cnp.NPY_DOUBLE:
        memcpy(dst, cnp.PyArray_DATA(v), C * sizeof(double))
    elif t == cnp.NPY_FLOAT:
        f = <const float *>cnp.PyArray_DATA(v)
        for c in range(C):
            dst[c] = f[c]
    elif t == cnp.NPY_FLOAT16:
        fbn_widen_f16(<const fbn_float16 *>cnp.PyArray_DATA(v), dst, C)
    else:  # bfloat16 (plain_vector takes no other type)
        fbn_widen_bf16(<const fbn_bfloat16 *>cnp.PyArray_DATA(v), dst, C)


cdef inline bint wide(object v):
    """v (None, or an array plain_vector took) holds float32 or float64, which the
    kernels can read where it is or write directly (write_vector); half-precision
    vectors are read as double (read_vector) and written by NumPy's rounding
    (rounded_vector)."""
    if v is None:
        return True
    cdef int t = cnp.PyArray_TYPE(<cnp.ndarray>v)
    return t == cnp.NPY_FLOAT or t == cnp.NPY_DOUBLE


cdef object rounded_vector(const double *src, int64_t C, cnp.ndarray like, object out):
    """src rounded once to like's dtype by fastbn._checks.store, as the checked path
    stores it: into out, or a new vector."""
    cdef cnp.ndarray v = new_vector(C)
    memcpy(cnp.PyArray_DATA(v), src, C * sizeof(double))
    return _checks.store(v, out, like.dtype)


cdef inline void write_vector(const double *src, int64_t C, cnp.ndarray v) noexcept nogil:
    """src rounded into a plain (C,) vector (once, to nearest, for float32)."""
    cdef int64_t c
    cdef float *f
    if cnp.PyArray_TYPE(v) == cnp.NPY_DOUBLE:
        memcpy(cnp.PyArray_DATA(v), src, C * sizeof(double))
    else:
        f = <float *>cnp.PyArray_DATA(v)
        for c in range(C):
            f[c] = <float>src[c]


cdef inline char *data_end(cnp.ndarray a) noexcept:
    """One past a's last byte, for a of non-negative strides (contiguous, or a
    row-strided x): the bytes a spans, the gaps between its rows included."""
    cdef char *end = <char *>cnp.PyArray_DATA(a)
    cdef int d
    if cnp.PyArray_SIZE(a) == 0:
        return end
    for d in range(cnp.PyArray_NDIM(a)):
        end += (cnp.PyArray_DIM(a, d) - 1) * cnp.PyArray_STRIDE(a, d)
    return end + cnp.PyArray_ITEMSIZE(a)


cdef inline bint apart(cnp.ndarray a, object b):
    """Whether contiguous a does not overlap b (None, a contiguous array or a
    row-strided x: its span, gaps included, counts as overlapped)."""
    if b is None:
        return True
    cdef cnp.ndarray other = <cnp.ndarray>b
    return (data_end(a) <= <char *>cnp.PyArray_DATA(other)
            or data_end(other) <= <char *>cnp.PyArray_DATA(a))


cdef inline bint plain_activation(object activation):
    return activation is None or (type(activation) is str and (activation == "relu"
                                                              or activation == "identity"))


cdef inline void canonical_shape_of(cnp.ndarray x, int axis, fbn_shape *s) noexcept:
    """(outer, C, inner) of x, as fastbn._checks.canonical_shape; row_stride 0."""
    cdef int d, nd = cnp.PyArray_NDIM(x)
    cdef int64_t outer = 1, inner = 1
    for d in range(axis):
        outer *= cnp.PyArray_DIM(x, d)
    for d in range(axis + 1, nd):
        inner *= cnp.PyArray_DIM(x, d)
    s.outer, s.channels, s.inner = outer, cnp.PyArray_DIM(x, axis), inner
    s.row_stride = 0
    if s.channels == 1:
        s.outer, s.inner = 1, outer * inner


@cython.cdivision(True)
cdef inline bint canonical_view(cnp.ndarray x, int axis, fbn_shape *s) noexcept:
    """Whether the kernels read aligned x where it is, as fastbn._checks.canonical
    decides: C-contiguous, or (C, inner) blocks contiguous and rows (outer) one
    positive stride apart, a whole number of values and at least a block (x[:, a:b],
    x[::2], NCHW x[:, c0:c1]); s gets x's shape and row_stride (0: contiguous).
    Anything else (a copy there) is the checked path's."""
    canonical_shape_of(x, axis, s)
    if cnp.PyArray_IS_C_CONTIGUOUS(x):
        return True
    if s.channels == 1:  # (1, 1, size): one contiguous run, which x is not
        return False
    cdef int d
    cdef cnp.npy_intp n = cnp.PyArray_ITEMSIZE(x)
    cdef cnp.npy_intp step = n, row = 0, dim, block
    cdef bint rows = False
    for d in range(cnp.PyArray_NDIM(x) - 1, -1, -1):  # dimensions of one value aside
        dim = cnp.PyArray_DIM(x, d)
        if dim == 1:
            continue
        if d < axis and not rows:  # the innermost row dimension sets the row stride
            rows, row, step = True, cnp.PyArray_STRIDE(x, d), cnp.PyArray_STRIDE(x, d)
        if cnp.PyArray_STRIDE(x, d) != step:  # not a block, or rows of several strides
            return False
        step *= dim
    block = s.channels * s.inner * n
    if rows and (row % n != 0 or row < block):
        return False
    s.row_stride = row // n if rows and row != block else 0
    return True


cdef inline cnp.ndarray new_vector(int64_t C):
    cdef cnp.npy_intp n = C
    return cnp.PyArray_EMPTY(1, &n, cnp.NPY_DOUBLE, 0)


cdef inline bint plain_dy(object dy, cnp.ndarray x, int ax, const fbn_shape *s):
    """dy of x's dtype and shape, read where it is with x's rows."""
    cdef fbn_shape t
    if data_code(dy) < 0:
        return False
    cdef cnp.ndarray d = <cnp.ndarray>dy
    cdef int i, nd = cnp.PyArray_NDIM(x)
    if cnp.PyArray_TYPE(d) != cnp.PyArray_TYPE(x) or cnp.PyArray_NDIM(d) != nd:
        return False
    for i in range(nd):
        if cnp.PyArray_DIM(d, i) != cnp.PyArray_DIM(x, i):
            return False
    return canonical_view(d, ax, &t) and t.row_stride == s.row_stride


cdef inline double *new_work(int64_t n) except NULL:
    """n doubles of per-channel work (and one more: n may be 0), to free()."""
    cdef double *w = <double *>malloc((n + 1) * sizeof(double))
    if w == NULL:
        raise MemoryError("fastbn: could not allocate a per-channel work buffer")
    return w


# NumPy's allocator for the outputs fastbn allocates: src_c/outmem.c's, which keeps the
# large blocks NumPy frees for the next output of the same size (a fresh block's page
# faults cost as much as a pass over the data). The arrays remember it: NumPy frees
# them through it whenever they go.
cdef extern from "numpy/ndarraytypes.h":
    ctypedef struct fbn_np_allocator "PyDataMemAllocator":
        void *ctx
        void *(*malloc)(void *ctx, size_t size) noexcept nogil
        void *(*calloc)(void *ctx, size_t nelem, size_t elsize) noexcept nogil
        void *(*realloc)(void *ctx, void *ptr, size_t new_size) noexcept nogil
        void (*free)(void *ctx, void *ptr, size_t size) noexcept nogil
    ctypedef struct fbn_np_handler "PyDataMem_Handler":
        char name[127]
        uint8_t version
        fbn_np_allocator allocator

cdef extern from "numpy/arrayobject.h":
    # declared here: numpy 2.0's numpy/__init__.pxd (the wheels' oldest build) lacks it
    object set_data_handler "PyDataMem_SetHandler"(object handler)  # the old one

cdef void *_outmem_malloc(void *ctx, size_t size) noexcept nogil:
    return fbn_outmem_alloc(size)

cdef void *_outmem_calloc(void *ctx, size_t nelem, size_t elsize) noexcept nogil:
    return calloc(nelem, elsize)

cdef void *_outmem_realloc(void *ctx, void *ptr, size_t new_size) noexcept nogil:
    return realloc(ptr, new_size)

cdef void _outmem_free(void *ctx, void *ptr, size_t size) noexcept nogil:
    fbn_outmem_free(ptr, size)

cdef fbn_np_handler _outmem_handler
strncpy(_outmem_handler.name, b"fastbn_outputs", 126)
_outmem_handler.version = 1
_outmem_handler.allocator.ctx = NULL
_outmem_handler.allocator.malloc = _outmem_malloc
_outmem_handler.allocator.calloc = _outmem_calloc
_outmem_handler.allocator.realloc = _outmem_realloc
_outmem_handler.allocator.free = _outmem_free
cdef object _outmem_capsule = PyCapsule_New(&_outmem_handler, b"mem_handler", NULL)
cdef enum:
    OUTMEM_MIN = 1 << 20  # src_c/outmem.c's FBN_OUTMEM_MIN: smaller blocks are not kept


cdef cnp.ndarray new_empty(cnp.ndarray x):
    """A new C-contiguous array of x's shape and dtype: small ones with no NumPy call,
    large ones by empty_output (_kernels.pyx), from the outputs' allocator."""
    if cnp.PyArray_NBYTES(x) < OUTMEM_MIN:
        return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x), 0)
    return empty_output((<object>x).shape, x.dtype)


cdef inline cnp.ndarray new_output(cnp.ndarray x, object out):
    """out (checked by the caller), or a new C-contiguous array like x."""
    if out is not None:
        return <cnp.ndarray>out
    return new_empty(x)


cdef inline bint plain_features(object mask, object renorm, object virtual_batch_size,
                                object residual, object negative_slope):
    """Whether none of the keywords beyond the plain forward (fastbn._features) is used:
    those calls are the checked path's."""
    return (mask is None and renorm is None and virtual_batch_size is None
            and residual is None and type(negative_slope) is float
            and <double>negative_slope == 0.01)


def forward(x, gamma=None, beta=None, *, axis=1, eps=1e-5, training=True,
            running_mean=None, running_var=None, momentum=0.1, out=None, activation=None,
            unbiased_running_var=True, mask=None, renorm=None, virtual_batch_size=None,
            residual=None, negative_slope=0.01):
    cdef object r = None
    if plain_features(mask, renorm, virtual_batch_size, residual, negative_slope):
        r = plain_forward(x, gamma, beta, axis, eps, training, running_mean, running_var,
                          momentum, out, activation, unbiased_running_var, None, False)
    if r is None:
        return _checked_forward(x, gamma, beta, axis=axis, eps=eps, training=training,
                                running_mean=running_mean, running_var=running_var,
                                momentum=momentum, out=out, activation=activation,
                                unbiased_running_var=unbiased_running_var, mask=mask,
                                renorm=renorm, virtual_batch_size=virtual_batch_size,
                                residual=residual, negative_slope=negative_slope)
    return r


def forward_then(x, gamma, beta, axis, eps, training, running_mean, running_var, momentum,
                 out, activation, then, unbiased_running_var=True, features=None):
    """fastbn._core._forward_then (the layer's forward), with a plain call checked and
    dispatched here: y, the cache and the new running statistics computed into new
    arrays, then written, with `then(cache)`, by fastbn._checks.commit, in one step an
    interrupt does not split. Any other call is _core._forward_then's."""
    cdef object r = None
    cdef tuple f = None
    if type(features) is tuple and len(<tuple>features) == 5:
        f = <tuple>features
    if features is None or (f is not None and plain_features(f[0], f[1], f[2], f[3], f[4])):
        r = plain_forward(x, gamma, beta, axis, eps, training, running_mean, running_var,
                          momentum, out, activation, unbiased_running_var, then, True)
    if r is None:  # (features None: _forward_then's own default)
        return _checked_forward_then(x, gamma, beta, axis, eps, training, running_mean,
                                     running_var, momentum, out, activation, then,
                                     unbiased_running_var,
                                     *(() if features is None else (features,)))
    return r


cdef object plain_forward(object x, object gamma, object beta, object axis, object eps,
                          object training, object running_mean, object running_var,
                          object momentum, object out, object activation,
                          object unbiased_running_var, object then, bint layer):
    """forward's plain call, checked and run: (y, cache), or None when the call is not
    plain (the checked path's). `layer`: fastbn._core._forward_then's contract (no
    momentum warning; the new running statistics in new arrays, written with
    `then(cache)` by fastbn._checks.commit); else they are updated in place in the
    compiled step (half-precision ones in new arrays, committed)."""
    cdef cnp.ndarray xa, y, mean, lo, invstd, rm, rv, new_rm = None, new_rv = None
    cdef int ax, nd, st = 0
    cdef bint relu, train, running, direct, wide_params, copies = False
    cdef int dt = data_code(x)
    cdef fbn_shape s
    cdef int64_t C, count, nvar
    cdef double e, mom, factor
    cdef double *work
    cdef double *var
    cdef const double *g = NULL
    cdef const double *b = NULL
    cdef int nthreads, gt, bt
    cdef fbn_epilogue epi
    if (dt < 0 or type(axis) is not int or not -64 <= axis < 64
            or type(eps) is not float
            or type(training) is not bool or type(momentum) is not float
            or type(unbiased_running_var) is not bool or not plain_activation(activation)):
        return None
    xa = <cnp.ndarray>x
    nd = cnp.PyArray_NDIM(xa)
    ax = axis + nd if axis < 0 else axis
    e, mom, train = eps, momentum, training
    running = running_mean is not None
    C = cnp.PyArray_DIM(xa, ax) if 0 <= ax < nd else 0
    count = cnp.PyArray_SIZE(xa) // C if C else 0
    if (nd < 2 or C == 0 or not canonical_view(xa, ax, &s)
            or not (0.0 < e <= DBL_MAX) or not (0.0 <= mom <= 1.0)
            # the checked path shows the one-time warning for a momentum > 0.5
            or (running and train and mom > 0.5 and not layer
                and not _checks._momentum_warned)
            or (train and count < 2)
            or (gamma is not None and not plain_vector(gamma, C))
            or (beta is not None and not plain_vector(beta, C))
            or running != (running_var is not None) or (not train and not running)
            or (running and not (plain_vector(running_mean, C) and plain_vector(running_var, C)))
            or (running and train and not (
                cnp.PyArray_ISWRITEABLE(<cnp.ndarray>running_mean)
                and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>running_var)
                and apart(<cnp.ndarray>running_mean, running_var)
                and apart(<cnp.ndarray>running_mean, x) and apart(<cnp.ndarray>running_var, x)
                and apart(<cnp.ndarray>running_mean, gamma)
                and apart(<cnp.ndarray>running_var, gamma)
                and apart(<cnp.ndarray>running_mean, beta)
                and apart(<cnp.ndarray>running_var, beta)))
            # out= apart from every input and running statistic: x_overwritten is False
            or (out is not None and not out_ok(out, xa, (x, gamma, beta, running_mean,
                                                         running_var)))):
        return None
    relu = activation == "relu"
    nthreads = threads_for(cnp.PyArray_SIZE(xa))
    y = new_output(xa, out)
    mean, invstd = new_vector(C), new_vector(C)
    lo = new_vector(C) if train else None
    # training reads gamma and beta where they are when both are float32 (the kernel
    # converts a block at a time) or float64, and wants var only for running
    # statistics: no O(C) double copies at (2, 50M) (issue 13); otherwise gamma, beta
    # and var (the running one in eval) as double, in one block
    gt = cnp.NPY_NOTYPE if gamma is None else cnp.PyArray_TYPE(<cnp.ndarray>gamma)
    bt = cnp.NPY_NOTYPE if beta is None else cnp.PyArray_TYPE(<cnp.ndarray>beta)
    epi.act, epi.slope, epi.residual, epi.dresidual = (1 if relu else 0), 0.0, NULL, NULL
    wide_params = wide(gamma) and wide(beta)  # half-precision ones are read as double
    epi.params_f32 = train and wide_params and gt != cnp.NPY_DOUBLE and bt != cnp.NPY_DOUBLE
    direct = train and wide_params and (epi.params_f32
                                        or (gt != cnp.NPY_FLOAT and bt != cnp.NPY_FLOAT))
    # the block: var (nvar values: none in training without running statistics), then
    # gamma and beta as double unless read where they are
    nvar = C if running or not train else 0
    work = new_work(nvar + (0 if direct else 2 * C))
    var = work if nvar else NULL
    try:
        if direct:
            g = NULL if gamma is None else <const double *>cnp.PyArray_DATA(<cnp.ndarray>gamma)
            b = NULL if beta is None else <const double *>cnp.PyArray_DATA(<cnp.ndarray>beta)
        else:
            if gamma is not None:
                read_vector(<cnp.ndarray>gamma, C, work + nvar)
                g = work + nvar
            if beta is not None:
                read_vector(<cnp.ndarray>beta, C, work + nvar + C)
                b = work + nvar + C
        if train:
            # m / (m - 1): the unbiased variance (PyTorch); 1: the biased one (Keras, Flax)
            factor = <double>count / <double>(count - 1) if unbiased_running_var else 1.0
            if running:
                rm, rv = <cnp.ndarray>running_mean, <cnp.ndarray>running_var
                # the new values in new arrays, which commit writes: the layer's, and
                # half-precision ones (updated in double, then rounded once, as
                # fastbn._core._ema does)
                copies = layer or not (wide(rm) and wide(rv))
                if copies:
                    rm, rv = running_copy(rm, C), running_copy(rv, C)
            with nogil:
                st = run_forward_train_ex(dt, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(y), s, g,
                                          b, e, &epi, <double *>cnp.PyArray_DATA(mean),
                                          <double *>cnp.PyArray_DATA(lo), var,
                                          <double *>cnp.PyArray_DATA(invstd), nthreads)
                if st == 0 and running:  # in the same compiled step: all or nothing
                    run_ema(cnp.PyArray_TYPE(rm) == cnp.NPY_FLOAT, cnp.PyArray_DATA(rm),
                            <double *>cnp.PyArray_DATA(mean), <double *>cnp.PyArray_DATA(lo), C,
                            mom, 1.0)
                    run_ema(cnp.PyArray_TYPE(rv) == cnp.NPY_FLOAT, cnp.PyArray_DATA(rv),
                            var, NULL, C, mom, factor)
            if st == 0 and running and copies:
                new_rm = rm if wide(running_mean) else rm.astype(running_mean.dtype)
                new_rv = rv if wide(running_var) else rv.astype(running_var.dtype)
        else:
            read_vector(<cnp.ndarray>running_mean, C, <double *>cnp.PyArray_DATA(mean))
            read_vector(<cnp.ndarray>running_var, C, var)
            with nogil:
                st = run_forward_infer(dt, cnp.PyArray_DATA(xa), cnp.PyArray_DATA(y), s,
                                       <double *>cnp.PyArray_DATA(mean), var, g, b, e,
                                       relu, <double *>cnp.PyArray_DATA(invstd), nthreads)
    finally:
        free(work)
    check(st)
    # as fastbn._checks.Cache.__init__ fills it
    cache = new_cache((x, None if gamma is None else copy_vector(<cnp.ndarray>gamma),
                       None if beta is None else copy_vector(<cnp.ndarray>beta),
                       mean, lo, invstd, None, count, ax, eps, training,
                       "relu" if relu else None, False, False))
    pairs = [] if new_rm is None else [(running_mean, new_rm), (running_var, new_rv)]
    if pairs or (layer and then is not None):  # as fastbn._core._forward_then commits
        _checks.commit(pairs, None if then is None else _partial(then, cache))
    return y, cache


cdef cnp.ndarray running_copy(cnp.ndarray v, int64_t C):
    """A new copy of running statistic v to update: of v's dtype, or for half
    precision widened to double."""
    if wide(v):
        return copy_vector(v)
    cdef cnp.ndarray d = new_vector(C)
    read_vector(v, C, <double *>cnp.PyArray_DATA(d))
    return d


cdef inline bint plain_stats(object v, int64_t C):
    """A cache statistic the kernels read directly: plain contiguous (C,) float64."""
    return plain_vector(v, C) and cnp.PyArray_TYPE(<cnp.ndarray>v) == cnp.NPY_DOUBLE


cdef inline bint grads_out_ok(object dx_out, object dg_out, object db_out, cnp.ndarray x,
                              object gamma, object beta, tuple reads):
    """Whether backward's outputs given (each None or an array) are all written where
    they are (out_ok): apart from what backward `reads` and from each other, dgamma's
    and dbeta's only where the forward had gamma and beta (else the checked path's error)."""
    return ((db_out is None or (beta is not None and out_ok(db_out, <cnp.ndarray>beta, reads)))
            and (dg_out is None or (gamma is not None
                                    and out_ok(dg_out, <cnp.ndarray>gamma, reads + (db_out,))))
            and (dx_out is None or out_ok(dx_out, x, reads + (dg_out, db_out))))


def backward(dy, cache, *, out=None, need_dx=True):
    cdef cnp.ndarray x, dya, dx, dgamma = None, dbeta = None, mean, invstd, lo = None
    cdef int ax, nd, st = 0
    cdef int64_t C
    cdef fbn_shape s
    cdef bint relu, train
    cdef double *work
    cdef const double *g = NULL
    cdef const double *b = NULL
    cdef double *sum_dy
    cdef double *sum_dy_xhat
    cdef int nthreads, dt
    # out: dx's array, or the tuple (dx, dgamma, dbeta) of arrays or None (check_backward)
    if type(out) is tuple and len(<tuple>out) == 3:
        dx_out, dg_out, db_out = <tuple>out
    else:
        dx_out, dg_out, db_out = out, None, None
    # a FeatureCache (a forward with keywords beyond the plain ones) is not a _Cache
    if type(cache) is not _Cache or data_code(dy) < 0 or need_dx is not True:
        return _checked_backward(dy, cache, out=out, need_dx=need_dx)
    x_obj, ax_obj = cache.x, cache.axis
    gamma, beta, activation = cache.gamma, cache.beta, cache.activation
    dt = data_code(x_obj)
    if (dt < 0 or type(ax_obj) is not int or not 0 <= ax_obj < 64
            or type(cache.training) is not bool
            or cache.x_overwritten is not False or cache.x_written is not False
            or not plain_activation(activation)):
        return _checked_backward(dy, cache, out=out, need_dx=need_dx)
    x, dya, ax = <cnp.ndarray>x_obj, <cnp.ndarray>dy, ax_obj
    nd = cnp.PyArray_NDIM(x)
    # x and dy read where they are when they share one row stride (canonical_inputs)
    ok = 0 <= ax < nd and canonical_view(x, ax, &s) and plain_dy(dya, x, ax, &s)
    C = cnp.PyArray_DIM(x, ax) if ok else 0
    mean_obj, lo_obj, invstd_obj = cache._mean, cache._mean_lo, cache.invstd
    if (not ok or C == 0 or type(cache.count) is not int
            or cache.count != cnp.PyArray_SIZE(x) // C
            or not plain_stats(mean_obj, C) or not plain_stats(invstd_obj, C)
            or not (lo_obj is None or plain_stats(lo_obj, C))
            # as fastbn._checks.invstd_values and residual_values require
            or not fbn_saved_stats_ok(
                C, <const double *>cnp.PyArray_DATA(<cnp.ndarray>mean_obj),
                NULL if lo_obj is None else <const double *>cnp.PyArray_DATA(<cnp.ndarray>lo_obj),
                <const double *>cnp.PyArray_DATA(<cnp.ndarray>invstd_obj))
            or (gamma is not None and not plain_vector(gamma, C))
            or (beta is not None and not plain_vector(beta, C))
            # outputs apart from cache.x: x_written stays False (mark_written)
            or (out is not None and not grads_out_ok(
                dx_out, dg_out, db_out, x, gamma, beta,
                (x, dya, mean_obj, invstd_obj, lo_obj, gamma, beta)))):
        return _checked_backward(dy, cache, out=out, need_dx=need_dx)
    mean, invstd = <cnp.ndarray>mean_obj, <cnp.ndarray>invstd_obj
    if lo_obj is not None:
        lo = <cnp.ndarray>lo_obj
    relu, train = activation == "relu", cache.training
    nthreads = threads_for(cnp.PyArray_SIZE(x))
    dx = new_output(x, dx_out)
    # dgamma and dbeta of float32/float64 written in the compiled step; of half
    # precision after it (rounded_vector)
    if gamma is not None and wide(gamma):
        dgamma = cnp.PyArray_EMPTY(1, cnp.PyArray_DIMS(<cnp.ndarray>gamma),
                                   cnp.PyArray_TYPE(<cnp.ndarray>gamma), 0) \
            if dg_out is None else <cnp.ndarray>dg_out
    if beta is not None and wide(beta):
        dbeta = cnp.PyArray_EMPTY(1, cnp.PyArray_DIMS(<cnp.ndarray>beta),
                                  cnp.PyArray_TYPE(<cnp.ndarray>beta), 0) \
            if db_out is None else <cnp.ndarray>db_out
    work = new_work(4 * C)
    try:
        if gamma is not None:
            read_vector(<cnp.ndarray>gamma, C, work)
            g = work
        if beta is not None:
            read_vector(<cnp.ndarray>beta, C, work + C)
            b = work + C
        sum_dy, sum_dy_xhat = work + 2 * C, work + 3 * C
        with nogil:
            st = run_backward(dt, cnp.PyArray_DATA(dya),
                              cnp.PyArray_DATA(x), cnp.PyArray_DATA(dx), s,
                              <const double *>cnp.PyArray_DATA(mean),
                              NULL if lo is None else <const double *>cnp.PyArray_DATA(lo),
                              <const double *>cnp.PyArray_DATA(invstd), g, b, relu, train,
                              sum_dy, sum_dy_xhat, nthreads)
            if st == 0 and dgamma is not None:
                write_vector(sum_dy_xhat, C, dgamma)
            if st == 0 and dbeta is not None:
                write_vector(sum_dy, C, dbeta)
        if st == 0 and not wide(gamma):
            dgamma = rounded_vector(sum_dy_xhat, C, <cnp.ndarray>gamma, dg_out)
        if st == 0 and not wide(beta):
            dbeta = rounded_vector(sum_dy, C, <cnp.ndarray>beta, db_out)
    finally:
        free(work)
    check(st)
    return dx, dgamma, dbeta
