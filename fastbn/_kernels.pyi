# The compiled module (fastbn/_kernels.pyx): thin entry points into the C kernels.
# Private: fastbn._core calls these with validated, canonical (3-D C-contiguous)
# arrays and float64 per-channel vectors. Checked against the module by
# tests/test_typing.py (mypy.stubtest).
from typing import Any, Optional

from numpy.typing import NDArray

_A = NDArray[Any]
_V = Optional[NDArray[Any]]

# the Cache slots the front end writes in place (checked against fastbn._cache.Cache)
CACHE_SLOTS: tuple[str, ...]

def batch_stats(x: _A, mean_hi: _A, mean_lo: _A, m2: _A, nthreads: int, dt: int = ...) -> Any: ...
def forward_train(
    x: _A, y: _A, gamma: _V, beta: _V, eps: float, relu: int, mean_hi: _A, mean_lo: _A,
    var: _A, invstd: _A, nthreads: int, dt: int = ...,
) -> Any: ...
def forward_infer(
    x: _A, y: _A, mean: _A, var: _A, gamma: _V, beta: _V, eps: float, relu: int,
    invstd: _A, nthreads: int, dt: int = ...,
) -> Any: ...
def affine(
    x: _A, y: _A, shift: _A, scale: _A, bias: _V, relu: int, nthreads: int, dt: int = ...,
) -> Any: ...
def backward_reduce(
    dy: _A, x: _A, shift: _A, scale: _V, bias: _V, relu: int, sum_dy: _A, sum_dy_xs: _A,
    nthreads: int, dt: int = ...,
) -> Any: ...
def forward_masked(
    x: _A, y: _V, mask: _A, gamma: _V, beta: _V, eps: float, relu: int, mean_hi: _A,
    mean_lo: _A, var: _A, invstd: _A, nthreads: int, dt: int = ...,
) -> int: ...
def backward_masked(
    dy: _A, x: _A, dx: _V, mask: _A, count: int, mean_hi: _A, mean_lo: _V, invstd: _A,
    gamma: _V, beta: _V, relu: int, sum_dy: _A, sum_dy_xhat: _A, nthreads: int,
    dt: int = ...,
) -> Any: ...
def backward_elemt(
    dy: _A, x: _A, dx: _A, shift: _A, invstd: _A, k_dy: _A, k_x: _A, mean_dy: _A,
    scale: _V, bias: _V, relu: int, nthreads: int, dt: int = ...,
) -> Any: ...
def backward_fused(
    dy: _A, x: _A, dx: _A, mean_hi: _A, mean_lo: _A, invstd: _A, gamma: _V, beta: _V,
    relu: int, training: int, sum_dy: _V, sum_dy_xhat: _V, nthreads: int, dt: int = ...,
) -> Any: ...
def forward_train_ex(
    x: _A, y: _A, gamma: _V, beta: _V, eps: float, act: int, slope: float, z: _V,
    mean_hi: _A, mean_lo: _A, var: _V, invstd: _A, nthreads: int, dt: int = ...,
) -> Any: ...
def forward_train_f32_params(
    x: _A, y: _A, gamma: _V, beta: _V, eps: float, relu: int, mean_hi: _A, mean_lo: _A,
    var: _V, invstd: _A, nthreads: int, dt: int = ...,
) -> Any: ...
def forward_infer_ex(
    x: _A, y: _A, mean: _A, var: _A, gamma: _V, beta: _V, eps: float, act: int, slope: float,
    z: _V, invstd: _A, nthreads: int, dt: int = ...,
) -> Any: ...
def affine_ex(
    x: _A, y: _A, shift: _A, scale: _A, bias: _A, act: int, slope: float, z: _V, nthreads: int,
    dt: int = ...,
) -> Any: ...
def backward_ex(
    dy: _A, x: _A, dx: _V, mean_hi: _A, mean_lo: _A, invstd: _A, gamma: _V, beta: _V,
    act: int, slope: float, z: _V, dz: _V, training: int, sum_dy: _A, sum_dy_xhat: _A,
    nthreads: int, dt: int = ...,
) -> Any: ...
def ema(running: _A, batch: _A, batch_lo: _V, momentum: float, factor: float) -> Any: ...
def coefficients(
    mean: _A, invstd: _A, gamma: _V, beta: _V, shift: _A, scale: _A, bias: _A
) -> Any: ...
def openmp_enabled() -> bool: ...
def pool_kind() -> str: ...
def max_threads() -> int: ...
def pool_set_backoff(on: bool) -> bool: ...
def cache_sizes() -> tuple[int, int, int]: ...
def _set_cache_sizes(l1d: int = 0, l2: int = 0, l3: int = 0) -> tuple[int, int, int]: ...
def stream_width() -> int: ...
def _resident(a: _A) -> bool: ...
def simd_paths() -> str: ...
def compiler() -> str: ...

# The compiled front end (fastbn/_front.pxi): the public forward/backward of the C backend.
def set_checked_paths(
    forward: Any, backward: Any, cache_class: Any, num_threads: Any, forward_then: Any = None,
) -> None: ...
def forward(
    x: Any, gamma: Any = None, beta: Any = None, *, axis: Any = 1, eps: Any = 1e-5,
    training: Any = True, running_mean: Any = None, running_var: Any = None,
    momentum: Any = 0.1, out: Any = None, activation: Any = None,
    unbiased_running_var: Any = True, mask: Any = None, renorm: Any = None,
    virtual_batch_size: Any = None, residual: Any = None, negative_slope: Any = 0.01,
) -> Any: ...
def backward(dy: Any, cache: Any, *, out: Any = None, need_dx: Any = True) -> Any: ...
def forward_then(
    x: Any, gamma: Any, beta: Any, axis: Any, eps: Any, training: Any, running_mean: Any,
    running_var: Any, momentum: Any, out: Any, activation: Any, then: Any,
    unbiased_running_var: Any = True, features: Any = None,
) -> Any: ...
