"""Docstrings of the public functions: one text for both backends.

``fastbn._core`` (the C kernels) and ``fastbn.reference`` (pure NumPy) define the
same public functions. Each module calls ``document(globals())`` at its end, so
``help(fastbn.forward)`` shows the same text whichever backend fastbn chose. The
Examples run as doctests against both backends (tests/test_docstrings.py): keep
their printed results small and rounded, so that both backends print the same.
"""

__all__ = ["FUNCTION_DOCS", "document"]


FORWARD = """Batch normalisation forward pass: normalise x per channel, then scale and shift.

In training mode (the default) each channel is normalised with the mean and
variance of the batch, and the running statistics, when given, are updated in
place. In evaluation mode (``training=False``) the running statistics are used
instead. Returns the output and a `Cache` for `backward`.

Parameters
----------
x : ndarray of float32, float64, float16 or bfloat16, ndim >= 2
    The data, e.g. (N, C), (N, C, L), (N, C, H, W) or channels-last (N, H, W, C).
    It is not converted: other dtypes and non-arrays raise TypeError.
gamma : array_like of shape (C,) or real number, optional
    Per-channel scale. Float arrays (any float dtype) are used as they are;
    lists, Python numbers and integer or bool arrays are converted as NumPy
    arithmetic with x would convert them (``np.asarray([3, 4, 5])`` becomes
    float64, a Python float takes x's dtype, float32 for float16/bfloat16 x;
    a number applies to every channel). None means 1 (no scale).
beta : array_like of shape (C,) or real number, optional
    Per-channel shift, as `gamma`. None means 0 (no shift).
axis : int or tuple of int, default 1
    The channel axis (1 as in PyTorch; -1 for channels-last layouts such as
    NHWC). Statistics are taken over every other axis: ``m = x.size // C``
    values per channel. A tuple makes all its axes channel axes (Flax,
    tf-keras: per-activation statistics after a convolution, ``axis=(1, 2, 3)``
    on (N, C, H, W)): C is the product of their lengths, and per-channel
    arrays have their shape or the flat (C,) shape. Adjacent axes are merged
    into one channel axis as a view (no copy of x); non-adjacent axes are not
    copied either: the axes between them are merged into the channel axis and
    their statistics combined per channel afterwards (Chan et al.), at a cost
    of O(W) memory, W the product of the lengths of the axes from the first
    channel axis to the last.
eps : float, default 1e-5
    Added to the variance inside the square root; must be finite and > 0.
training : bool, default True
    True: normalise with the batch statistics (and update the running
    statistics if given). False: normalise with `running_mean` and
    `running_var`, which are then required.
running_mean, running_var : ndarray of shape (C,), optional
    Running statistics (float arrays, given together; float32 with half-precision
    x, though any float dtype is accepted). In
    training mode they are updated in place, so they must be writable and
    must not share memory; they are never converted or copied.
momentum : float in [0, 1], default 0.1
    Weight of the *new* batch in the running statistics, as in PyTorch:
    ``running = (1 - momentum) * running + momentum * batch``.
    Keras and Flax (0.99) and the classic course code (``bn_param["momentum"]
    = 0.9``) give the weight of the *old* value instead: pass
    ``momentum = 1 - their_momentum`` (0.01 for 0.99, 0.1 for 0.9).
    A momentum > 0.5 with running statistics in training mode emits one
    ``fastbn.MomentumWarning`` per process (silence it with
    ``warnings.filterwarnings("ignore", category=fastbn.MomentumWarning)``).
out : ndarray, optional
    Where to write y: x's shape and dtype, writable. ``out=x`` (in place) is
    allowed, but then `backward` refuses the cache, as x is overwritten.
activation : {None, "relu", "leaky_relu"}, optional
    "relu" applies ``max(y, 0)`` in the same pass, "leaky_relu"
    ``where(y > 0, y, negative_slope * y)``; `backward` recomputes the mask
    from the saved statistics (no stored mask).
unbiased_running_var : bool, default True
    True: the running variance takes the unbiased batch variance
    ``var * m / (m - 1)`` (PyTorch). False: the biased ``var`` (Keras,
    Flax, the classic course code).
mask : ndarray of bool, optional
    Which positions enter the statistics (padded sequences; Keras, Flax):
    broadcastable to x's shape, of size 1 along the channel axes, e.g.
    (N, 1, L) for (N, C, L). Every position is normalised; ``m`` is the
    number of True positions per channel. Kept by reference for `backward`.
renorm : (rmax, dmax), optional
    Batch renormalisation (Ioffe 2017; Keras' ``renorm``), in training mode
    with running statistics: ``y = gamma * (xhat * r + d) + beta`` with
    ``r = clip(sigma_B / sigma_run, 1/rmax, rmax)`` and
    ``d = clip((mean_B - running_mean) / sigma_run, -dmax, dmax)``,
    ``sigma = sqrt(var + eps)``, computed from the running statistics before
    their update; r and d are constants for `backward`. rmax >= 1, dmax >= 0;
    ``(1, 0)`` is plain batch norm. Ignored in evaluation mode.
virtual_batch_size : int, optional
    Ghost batch norm (tf-keras): axis 0 is split into groups of k rows,
    ``[0:k], [k:2k], ...``, each normalised with its own statistics; when N
    is not a multiple of k, the last group holds the N mod k rows left over
    (each group needs more than 1 value per channel). The running statistics
    take the mean of the groups' statistics (each variance made unbiased with
    its own count). k >= N is plain batch norm. Axis 0 must not be a channel
    axis. Ignored in evaluation mode.
residual : ndarray, optional
    x's shape and dtype: ``y = activation(gamma * xhat + beta + residual)``
    (a ResNet block's add; `backward` then also returns ``dresidual``). Kept
    by reference for `backward`; must not share memory with `out`.
negative_slope : float, default 0.01
    The slope of "leaky_relu" for negative inputs (only with that activation).

Returns
-------
y : ndarray
    The normalised data, of x's shape and dtype (`out` if given).
cache : Cache
    What `backward` needs: per-channel ``mean``, ``var`` and ``invstd``
    (float64, shape (C,)), ``count`` (m), and references to x, gamma and beta.
    With the keywords from `mask` on or several channel axes, a
    ``FeatureCache`` (a Cache): its statistics have the channel axes' shape,
    after a leading group axis with `virtual_batch_size`; it also holds the
    renormalisation constants ``r`` and ``d``.

Raises
------
TypeError
    If x is not a float32/float64/float16/bfloat16 ndarray; gamma, beta or
    the running statistics are not float arrays (running statistics must be
    ndarrays); axis is not an integer; eps or momentum is not a real number;
    training or unbiased_running_var is not a bool; out has another dtype than
    x; activation is not a string.
ValueError
    If x has fewer than 2 dimensions; axis is out of bounds; a per-channel
    array does not have shape (C,); eps <= 0, momentum outside [0, 1], or
    either is not finite; only one running statistic is given, or they share
    memory, or they are read-only in training mode; ``training=False`` without
    running statistics; training with at most one value per channel (m <= 1:
    no variance; PyTorch refuses m == 1 too); out has the wrong shape or is
    read-only; activation is unknown.

    For the keywords from `mask` on: TypeError if mask is not a bool
    ndarray, renorm not a pair of real numbers, virtual_batch_size not an
    integer, residual not a float ndarray of x's dtype, negative_slope not a
    real number. ValueError if mask does not broadcast to x or is not of size
    1 along the channel axes; rmax < 1 or dmax < 0, or renorm in training
    without running statistics; virtual_batch_size < 1 or with axis 0 a
    channel axis; a group or the mask leaves at most 1 value per channel in
    training; residual's shape differs from x's or it shares memory with
    out; negative_slope differs from 0.01 without "leaky_relu"; axis is an
    empty tuple or repeats an axis.

See Also
--------
backward : The gradients for this call.
BatchNorm : A layer that holds gamma, beta and the running statistics.
batch_stats, normalize, update_running_stats : The steps of this function.

Notes
-----
With the biased batch variance (divided by m), eps inside the square root::

    xhat = (x - mean) / sqrt(var + eps)
    y = gamma * xhat + beta

The running variance is updated with the *unbiased* batch variance,
``var * m / (m - 1)``, as in PyTorch (Keras, Flax and most hand-written NumPy
code keep the biased one: ``unbiased_running_var=False`` drops the factor)::

    running_mean = (1 - momentum) * running_mean + momentum * mean
    running_var = (1 - momentum) * running_var + momentum * var * m / (m - 1)

Parameters are converted as NumPy arithmetic would convert them; data is not:
x and dy must be float32, float64, float16 or bfloat16 (``ml_dtypes.bfloat16``)
arrays, and `backward` refuses a dy of another dtype than x (with the
``dy.astype(...)`` fix in the message).

Statistics are accumulated in float64, whatever x's dtype. Half-precision data
(float16, bfloat16) are computed in float32 and each output is rounded once to
the data's dtype; parameters made from Python numbers are then float32. Every argument is
checked before anything is written: a call that raises leaves `out` and the
running statistics untouched.

The cache keeps x, gamma and beta by reference (no copy, O(C) memory besides):
do not change them in place between this call and `backward`. Update the
parameters after `backward`, as an optimiser step does.

Examples
--------
>>> import numpy as np
>>> import fastbn
>>> x = np.array([[1.0, 8.0], [2.0, 4.0], [6.0, 3.0]])  # N=3 samples, C=2 channels
>>> gamma, beta = np.array([1.0, 2.0]), np.array([0.5, -1.0])
>>> y, cache = fastbn.forward(x, gamma, beta)
>>> print(np.round(y, 4))
[[-0.4258  1.7775]
 [ 0.0371 -1.9258]
 [ 1.8887 -2.8516]]
>>> print(cache.mean, np.round(cache.var, 4), cache.count)
[3. 5.] [4.6667 4.6667] 3

Running statistics are updated in place (the variance unbiased: 14/2 = 7):

>>> running_mean, running_var = np.zeros(2), np.ones(2)
>>> y, cache = fastbn.forward(x, gamma, beta, running_mean=running_mean,
...                           running_var=running_var, momentum=0.1)
>>> print(np.round(running_mean, 4), np.round(running_var, 4))
[0.3 0.5] [1.6 1.6]

Evaluation mode normalises with them:

>>> y, _ = fastbn.forward(x, gamma, beta, training=False,
...                       running_mean=running_mean, running_var=running_var)
>>> print(np.round(y, 4))
[[ 1.0534 10.8585]
 [ 1.844   4.534 ]
 [ 5.0062  2.9528]]

Code written for Keras' ``momentum=0.99`` passes ``momentum=1 - 0.99``, and
``unbiased_running_var=False`` for Keras' biased running variance (4.6667 here):

>>> running_mean, running_var = np.zeros(2), np.ones(2)
>>> y, cache = fastbn.forward(x, running_mean=running_mean, running_var=running_var,
...                           momentum=1 - 0.99, unbiased_running_var=False)
>>> print(np.round(running_var, 4))
[1.0367 1.0367]

Channels-last data (N, H, W, C) uses ``axis=-1``:

>>> x_nhwc = np.ones((2, 4, 4, 3), dtype=np.float32)
>>> y, cache = fastbn.forward(x_nhwc, axis=-1)
>>> y.shape, y.dtype, cache.count
((2, 4, 4, 3), dtype('float32'), 32)

Per-activation statistics (several channel axes), padded sequences (a mask
of shape (N, 1, L)), ghost batch norm and batch renormalisation:

>>> x = np.arange(24.0).reshape(4, 2, 3) % 5
>>> y, cache = fastbn.forward(x, axis=(1, 2))
>>> cache.mean.shape, cache.count
((2, 3), 4)
>>> keep = np.array([[[True, True, False]]] * 4)  # the last step is padding
>>> y, cache = fastbn.forward(x, mask=keep)
>>> print(cache.mean, cache.count)
[2.    1.875] 8
>>> y, cache = fastbn.forward(x, virtual_batch_size=2)  # rows [0:2] and [2:4]
>>> cache.mean.shape
(2, 2)
>>> running_mean, running_var = np.zeros(2), np.ones(2)
>>> y, cache = fastbn.forward(x, running_mean=running_mean, running_var=running_var,
...                           renorm=(3.0, 5.0))
>>> print(np.round(cache.r, 4), np.round(cache.d, 4))
[1.3202 1.4216] [2.0833 1.75  ]

A residual block's ``relu(bn(x) + z)`` in one call (backward returns dz too):

>>> z = np.ones_like(x)
>>> y, cache = fastbn.forward(x, residual=z, activation="relu")
>>> dx, dgamma, dbeta, dz = fastbn.backward(np.ones_like(x), cache)
"""

BACKWARD = """Batch normalisation backward pass: gradients of the loss for a `forward` call.

Given ``dy``, the gradient of the loss with respect to the forward's output
y, returns the gradients with respect to x, gamma and beta. In training mode
the batch statistics depend on x and are differentiated through; in
evaluation mode they are constants.

Parameters
----------
dy : ndarray
    Gradient with respect to y: the shape and dtype of the forward's x.
cache : Cache
    The cache returned by the `forward` call.
out : ndarray or tuple of 3, optional
    Where to write dx (x's shape and dtype), or a tuple ``(dx, dgamma,
    dbeta)`` whose entries are arrays or None (dgamma and dbeta: shape (C,),
    the dtype of gamma and beta); ``(dx, dgamma, dbeta, dresidual)`` after a
    forward with `residual`.
need_dx : bool, default True
    False: dx is not computed (returned as None; out[0] must be None) and
    dgamma and dbeta take one read of x and dy (a network's first layer;
    PyTorch's grad_input_mask).

Returns
-------
dx : ndarray or None
    Gradient with respect to x, of x's shape and dtype; None with
    ``need_dx=False``.
dgamma : ndarray of shape (C,) or None
    Gradient with respect to gamma, ``sum(dy * xhat)`` over all axes but the
    channel axis, in gamma's dtype (gamma's shape); None if the forward had
    no gamma. With renorm, ``sum(dy * (xhat * r + d))``.
dbeta : ndarray of shape (C,) or None
    Gradient with respect to beta, ``sum(dy)`` likewise; None if the forward
    had no beta.
dresidual : ndarray
    Only after a forward with `residual`: the gradient with respect to it,
    dy through the activation's mask, of x's shape and dtype.

Raises
------
TypeError
    If dy is not a float32/float64/float16/bfloat16 ndarray or its dtype differs
    from x's;
    cache is not a `Cache` (or one of its fields was replaced by a wrong
    type); an out entry has the wrong dtype.
ValueError
    If dy's shape differs from x's; the forward wrote in place over x
    (``out=x``); an out entry has the wrong shape or is read-only, or is given
    for a gradient that does not exist (no gamma or no beta), or out[0] is
    given with ``need_dx=False``; out is a tuple of the wrong length.
    TypeError too if need_dx is not a bool.

See Also
--------
forward : The forward pass that makes the cache.
backward_reduce, backward_elemt : The two steps of this function.

Notes
-----
In training mode, with ``xhat = (x - mean) * invstd`` and sums over the m
values of each channel::

    dx = gamma * invstd * (dy - sum(dy) / m - xhat * sum(dy * xhat) / m)

In evaluation mode ``dx = gamma * invstd * dy``. With ``activation="relu"``,
dy is first set to 0 where the forward's output was not positive (the mask is
recomputed, not stored); with "leaky_relu", multiplied by negative_slope
there. With a mask, the sums run over every position but only the kept
positions (``w = 1``) move the statistics, over their number m::

    dx = gamma * invstd * (dy - w * (sum(dy) + xhat * sum(dy * xhat)) / m)

With renorm, r and d are constants: gamma becomes ``gamma * r`` above. With
virtual_batch_size, each group of rows has its own statistics and sums.

The cache holds x, gamma and beta by reference: if they were changed in place
since the forward, the results are those of the changed values. Call backward
before updating them.

Examples
--------
>>> import numpy as np
>>> import fastbn
>>> x = np.array([[1.0, 8.0], [2.0, 4.0], [6.0, 3.0]])
>>> gamma, beta = np.array([1.0, 2.0]), np.array([0.5, -1.0])
>>> y, cache = fastbn.forward(x, gamma, beta)
>>> dy = np.array([[1.0, -1.0], [0.5, 2.0], [-2.0, 1.0]])
>>> dx, dgamma, dbeta = fastbn.backward(dy, cache)
>>> print(np.round(dx, 4))
[[-0.022  -0.1543]
 [ 0.0276  0.7715]
 [-0.0055 -0.6172]]
>>> print(np.round(dgamma, 4), dbeta)
[-3.9347 -3.2404] [-0.5  2. ]

Without gamma and beta, there are no parameter gradients:

>>> y, cache = fastbn.forward(x)
>>> dx, dgamma, dbeta = fastbn.backward(dy, cache)
>>> dx.shape, dgamma, dbeta
((3, 2), None, None)
"""

BATCH_STATS = """Per-channel count, mean and sum of squared deviations of x.

The statistics a batch norm needs, in a form that merges exactly across
parts of a batch (`merge_stats`): the biased variance is ``m2 / count``.

Parameters
----------
x : ndarray of float32, float64, float16 or bfloat16, ndim >= 2
    The data (not converted).
axis : int, default 1
    The channel axis; statistics are taken over every other axis.

Returns
-------
count : int
    Number of values per channel, ``x.size // C`` (0 for an empty batch).
mean : ndarray of float64, shape (C,)
    Per-channel mean (0 when count is 0).
m2 : ndarray of float64, shape (C,)
    Per-channel sum of squared deviations from the mean, ``sum((x - mean)**2)``.

Raises
------
TypeError
    If x is not a float32/float64/float16/bfloat16 ndarray, or axis is not
    an integer.
ValueError
    If x has fewer than 2 dimensions, or axis is out of bounds.

See Also
--------
merge_stats : Combine the statistics of several parts of a batch.
update_running_stats : Update running averages with them.

Notes
-----
Accumulated in float64 whatever x's dtype, from deviations around a value
of each channel rather than raw sums of squares, so m2 stays accurate when the
data sit far from 0 (docs/numerics.md).

Examples
--------
>>> import numpy as np
>>> import fastbn
>>> x = np.array([[1.0, 8.0], [2.0, 4.0], [6.0, 3.0]])
>>> count, mean, m2 = fastbn.batch_stats(x)
>>> print(count, mean, m2)
3 [3. 5.] [14. 14.]
>>> print(np.round(m2 / count, 4))  # the biased variance
[4.6667 4.6667]
"""

MERGE_STATS = """Merge the (count, mean, m2) statistics of several parts of a batch.

Combines per-part results of `batch_stats`, stacked along a leading axis,
into the statistics of the union of the parts (Chan et al.'s parallel
algorithm). This is how a synchronised batch norm combines the statistics
of several processes.

Parameters
----------
counts : array_like of integers, shape (R,) or (R, C)
    Number of values of each of the R parts (per channel if 2-D). Zero counts
    are allowed: such parts are ignored.
means : array_like of float, shape (R, C)
    Per-part, per-channel means.
m2s : array_like of float, shape (R, C)
    Per-part, per-channel sums of squared deviations.

Returns
-------
count : int, or ndarray of int64 of shape (C,)
    The total count: an int when `counts` is 1-D, per channel when 2-D.
mean : ndarray of float64, shape (C,)
    Mean of the union (0 where the total count is 0).
m2 : ndarray of float64, shape (C,)
    Sum of squared deviations of the union.

Raises
------
TypeError
    If counts is not an array of numbers, or means/m2s are not float arrays.
ValueError
    If means or m2s are not 2-D or differ in shape; counts has a shape other
    than (R,) or (R, C); counts are negative, non-integral or not finite.

See Also
--------
batch_stats : The statistics of one part.

Notes
-----
With ``n = sum(counts)``::

    mean = sum(counts * means) / n
    m2 = sum(m2s + counts * (means - mean)**2)

Examples
--------
>>> import numpy as np
>>> import fastbn
>>> x = np.array([[1.0, 8.0], [2.0, 4.0], [6.0, 3.0]])
>>> parts = [fastbn.batch_stats(x[:1]), fastbn.batch_stats(x[1:])]
>>> counts = [p[0] for p in parts]
>>> means = np.stack([p[1] for p in parts])
>>> m2s = np.stack([p[2] for p in parts])
>>> count, mean, m2 = fastbn.merge_stats(counts, means, m2s)
>>> print(count, mean, m2)
3 [3. 5.] [14. 14.]
"""

NORMALIZE = """Normalise x with given per-channel statistics, then scale and shift.

``y = gamma * (x - mean) * invstd + beta``, optionally followed by a ReLU:
the elementwise part of `forward`, for statistics computed elsewhere (e.g.
merged across processes with `merge_stats`).

Parameters
----------
x : ndarray of float32, float64, float16 or bfloat16, ndim >= 2
    The data (not converted).
mean : ndarray of shape (C,)
    Per-channel mean (a float array).
invstd : ndarray of shape (C,)
    Per-channel ``1 / sqrt(var + eps)``: finite and >= 0 (NaN allowed, for a
    channel whose data held a NaN).
gamma, beta : ndarray of shape (C,), optional
    Per-channel scale and shift; None means 1 and 0.
axis : int, default 1
    The channel axis.
out : ndarray, optional
    Where to write y: x's shape and dtype, writable (``out=x`` allowed).
activation : {None, "relu"}, optional
    "relu" applies ``max(y, 0)`` in the same pass.

Returns
-------
y : ndarray
    Of x's shape and dtype (`out` if given).

Raises
------
TypeError
    If x is not a float32/float64/float16/bfloat16 ndarray; mean or invstd is
    None; a per-channel argument is not a float array; out has another dtype
    than x; activation is not a string.
ValueError
    If x has fewer than 2 dimensions; axis is out of bounds; a per-channel
    array does not have shape (C,); invstd has a negative or infinite value;
    out has the wrong shape or is read-only; activation is unknown.

See Also
--------
forward : Statistics and normalisation in one call.
batch_stats, merge_stats : Where mean and the variance come from.

Examples
--------
>>> import numpy as np
>>> import fastbn
>>> x = np.array([[1.0, 8.0], [2.0, 4.0], [6.0, 3.0]])
>>> count, mean, m2 = fastbn.batch_stats(x)
>>> invstd = 1.0 / np.sqrt(m2 / count + 1e-5)
>>> y = fastbn.normalize(x, mean, invstd, np.array([1.0, 2.0]), np.array([0.5, -1.0]))
>>> print(np.round(y, 4))
[[-0.4258  1.7775]
 [ 0.0371 -1.9258]
 [ 1.8887 -2.8516]]
"""

BACKWARD_REDUCE = """Per-channel sums of the backward pass: ``sum(dy)`` and ``sum(dy * xhat)``.

The reduction step of `backward`, with ``xhat = (x - mean) * invstd``. A
synchronised batch norm sums these over all processes, then calls
`backward_elemt`. They are also the gradients of beta and gamma.

Parameters
----------
dy : ndarray
    Gradient with respect to the forward's output: x's shape and dtype.
x : ndarray of float32, float64, float16 or bfloat16, ndim >= 2
    The forward's input.
mean, invstd : ndarray of shape (C,)
    The statistics the forward normalised with (``cache.mean``,
    ``cache.invstd``).
axis : int, default 1
    The channel axis.
gamma, beta : ndarray of shape (C,), optional
    The forward's parameters; only read with ``activation="relu"``, to
    recompute the ReLU mask.
activation : {None, "relu"}, optional
    The forward's activation: with "relu", dy counts only where the forward's
    output was positive.

Returns
-------
sum_dy : ndarray of float64, shape (C,)
    ``sum(dy)`` over all axes but the channel axis (the gradient of beta).
sum_dy_xhat : ndarray of float64, shape (C,)
    ``sum(dy * xhat)`` likewise (the gradient of gamma).

Raises
------
TypeError
    If x or dy is not a float32/float64/float16/bfloat16 ndarray, or their dtypes
    differ;
    mean or invstd is None; a per-channel argument is not a float array.
ValueError
    If dy's shape differs from x's; axis is out of bounds; a per-channel
    array does not have shape (C,); invstd has a negative or infinite value.

See Also
--------
backward_elemt : The elementwise step that uses these sums.
backward : Both steps in one call.

Examples
--------
>>> import numpy as np
>>> import fastbn
>>> x = np.array([[1.0, 8.0], [2.0, 4.0], [6.0, 3.0]])
>>> y, cache = fastbn.forward(x)
>>> dy = np.array([[1.0, -1.0], [0.5, 2.0], [-2.0, 1.0]])
>>> sum_dy, sum_dy_xhat = fastbn.backward_reduce(dy, x, cache.mean, cache.invstd)
>>> print(sum_dy, np.round(sum_dy_xhat, 4))
[-0.5  2. ] [-3.9347 -3.2404]
"""

BACKWARD_ELEMT = """Elementwise step of the backward pass: dx from the per-channel sums.

``dx = gamma * invstd * (dy - sum_dy / count - xhat * sum_dy_xhat / count)``
with ``xhat = (x - mean) * invstd``: the second step of a training-mode
`backward`, after `backward_reduce` (whose sums a synchronised batch norm
first adds up over all processes; count is then the global count).

Parameters
----------
dy : ndarray
    Gradient with respect to the forward's output: x's shape and dtype.
x : ndarray of float32, float64, float16 or bfloat16, ndim >= 2
    The forward's input.
mean, invstd : ndarray of shape (C,)
    The statistics the forward normalised with.
gamma : ndarray of shape (C,) or None
    The forward's scale (None means 1).
sum_dy, sum_dy_xhat : ndarray of shape (C,)
    The sums from `backward_reduce` (over the whole batch).
count : int or ndarray of shape (C,)
    Number of values per channel in the whole batch (positive).
axis : int, default 1
    The channel axis.
out : ndarray, optional
    Where to write dx: x's shape and dtype, writable.
beta : ndarray of shape (C,), optional
    The forward's shift; only read with ``activation="relu"``.
activation : {None, "relu"}, optional
    The forward's activation: with "relu", dy counts only where the forward's
    output was positive.

Returns
-------
dx : ndarray
    Gradient with respect to x, of x's shape and dtype (`out` if given).

Raises
------
TypeError
    If x or dy is not a float32/float64/float16/bfloat16 ndarray, or their dtypes
    differ; a
    required per-channel argument is None or not a float array; count is not
    an integer or an array of numbers; out has another dtype than x.
ValueError
    If dy's shape differs from x's; axis is out of bounds; a per-channel
    array does not have shape (C,); invstd has a negative or infinite value;
    count is not positive; out has the wrong shape or is read-only.

See Also
--------
backward_reduce : The sums this step needs.
backward : Both steps in one call.

Examples
--------
>>> import numpy as np
>>> import fastbn
>>> x = np.array([[1.0, 8.0], [2.0, 4.0], [6.0, 3.0]])
>>> gamma = np.array([1.0, 2.0])
>>> y, cache = fastbn.forward(x, gamma)
>>> dy = np.array([[1.0, -1.0], [0.5, 2.0], [-2.0, 1.0]])
>>> sums = fastbn.backward_reduce(dy, x, cache.mean, cache.invstd)
>>> dx = fastbn.backward_elemt(dy, x, cache.mean, cache.invstd, gamma, *sums, cache.count)
>>> print(np.round(dx, 4))
[[-0.022  -0.1543]
 [ 0.0276  0.7715]
 [-0.0055 -0.6172]]
>>> np.allclose(dx, fastbn.backward(dy, cache)[0])
True
"""

UPDATE_RUNNING_STATS = """Update running mean and variance in place with a batch's statistics.

Exponential moving averages as in PyTorch, the variance made unbiased
(multiplied by ``count / (count - 1)``) unless ``unbiased_running_var=False``.
This is what `forward` does in training mode when given running statistics.

Parameters
----------
running_mean, running_var : ndarray of shape (C,)
    The running statistics (any float dtype), updated in place: writable,
    not sharing memory.
mean : ndarray of shape (C,)
    The batch mean (a float array).
var : ndarray of shape (C,)
    The *biased* batch variance (``m2 / count`` from `batch_stats`).
count : int
    Number of values per channel in the batch, >= 2 (>= 1 when
    ``unbiased_running_var=False``).
momentum : float in [0, 1], default 0.1
    Weight of the new batch, as in PyTorch. For the Keras/Flax/course-code
    convention (weight of the old value, e.g. 0.9 or 0.99) pass
    ``1 - their_momentum``.
unbiased_running_var : bool, default True
    True: the variance enters as ``var * count / (count - 1)`` (PyTorch);
    False: as ``var`` itself (Keras, Flax, course code).

Returns
-------
None
    The running statistics are updated in place.

Raises
------
TypeError
    If mean is not a 1-D float ndarray; var is missing or not a float array;
    a running statistic is missing or not a float ndarray; count is not an
    integer; momentum is not a real number; unbiased_running_var is not a bool.
ValueError
    If an array does not have shape (C,); the running statistics share memory
    or are read-only; count is not in [2, 2**62]; momentum is outside [0, 1]
    or not finite.

See Also
--------
forward : Does this update in training mode.
batch_stats : Where mean, var (m2 / count) and count come from.

Notes
-----
::

    running_mean = (1 - momentum) * running_mean + momentum * mean
    running_var = (1 - momentum) * running_var + momentum * var * count / (count - 1)

and with ``unbiased_running_var=False`` (Keras' and Flax's update, for their
momentum ``1 - momentum``)::

    running_var = (1 - momentum) * running_var + momentum * var

Examples
--------
>>> import numpy as np
>>> import fastbn
>>> running_mean, running_var = np.zeros(2), np.ones(2)
>>> mean, var = np.array([3.0, 5.0]), np.array([4.0, 2.0])
>>> fastbn.update_running_stats(running_mean, running_var, mean, var, 5, momentum=0.1)
>>> print(running_mean, running_var)
[0.3 0.5] [1.4  1.15]
"""

#: The docstring of each public function of fastbn._core and fastbn.reference.
FUNCTION_DOCS = {
    "forward": FORWARD,
    "backward": BACKWARD,
    "batch_stats": BATCH_STATS,
    "merge_stats": MERGE_STATS,
    "normalize": NORMALIZE,
    "backward_reduce": BACKWARD_REDUCE,
    "backward_elemt": BACKWARD_ELEMT,
    "update_running_stats": UPDATE_RUNNING_STATS,
}


def document(namespace):
    """Give the public functions found in `namespace` (a module's ``globals()``)
    their docstrings from FUNCTION_DOCS.

    A name the module does not define is skipped (tests/test_docstrings.py
    checks that every public function has its text).
    """
    for name, text in FUNCTION_DOCS.items():
        func = namespace.get(name)
        if func is not None:
            func.__doc__ = text
