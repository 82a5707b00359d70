# Types of fastbn's public API (the package itself is untyped Python over a compiled
# module): what users' code is checked against with mypy or pyright. Kept in step with
# the runtime by tests/test_typing.py (mypy.stubtest) and with /work/shared/API.md.
from os import PathLike
from typing import IO, Any, Literal, Optional, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import reference as reference

__version__: str
__all__ = ["forward", "backward", "batch_stats", "merge_stats", "normalize", "backward_reduce",
           "backward_elemt", "update_running_stats", "Cache", "backend", "show_config",
           "get_num_threads", "set_num_threads", "set_output_cache", "reference", "BatchNorm",
           "fold_linear", "fold_batchnorm"]

backend: Literal["c", "numpy"]

_Array = NDArray[Any]
_Activation = Optional[Literal["relu", "leaky_relu"]]
_Axis = Union[int, tuple[int, ...]]
_Path = Union[str, "PathLike[str]"]

class Cache:
    """What ``backward`` needs from a training or eval forward (see ``forward``)."""

    x: _Array
    gamma: Optional[_Array]
    beta: Optional[_Array]
    mean: _Array
    mean_lo: Optional[_Array]
    invstd: _Array
    var: _Array
    count: int
    axis: int
    eps: float
    training: bool
    activation: _Activation
    x_overwritten: bool
    x_written: bool
    def __init__(
        self,
        x: _Array,
        gamma: Optional[_Array],
        beta: Optional[_Array],
        mean: _Array,
        invstd: _Array,
        var: Optional[_Array] = None,
        *,
        axis: int,
        eps: float,
        training: bool,
        activation: _Activation = None,
        mean_lo: Optional[_Array] = None,
        x_overwritten: bool = False,
        copy_params: bool = True,
    ) -> None: ...

def forward(
    x: _Array,
    gamma: Optional[ArrayLike] = None,
    beta: Optional[ArrayLike] = None,
    *,
    axis: _Axis = 1,
    eps: float = 1e-05,
    training: bool = True,
    running_mean: Optional[_Array] = None,
    running_var: Optional[_Array] = None,
    momentum: float = 0.1,
    out: Optional[_Array] = None,
    activation: _Activation = None,
    unbiased_running_var: bool = True,
    mask: Optional[NDArray[np.bool_]] = None,
    renorm: Optional[tuple[float, float]] = None,
    virtual_batch_size: Optional[int] = None,
    residual: Optional[_Array] = None,
    negative_slope: float = 0.01,
) -> tuple[_Array, Cache]: ...
# (dx, dgamma, dbeta), plus dresidual after a forward with residual=; dx None with need_dx=False
def backward(
    dy: _Array, cache: Cache, *, out: Optional[Any] = None, need_dx: bool = True
) -> tuple[Any, ...]: ...
def batch_stats(x: _Array, *, axis: int = 1) -> tuple[_Array, _Array, _Array]: ...
def merge_stats(
    counts: ArrayLike, means: ArrayLike, m2s: ArrayLike
) -> tuple[_Array, _Array, _Array]: ...
def normalize(
    x: _Array,
    mean: ArrayLike,
    invstd: ArrayLike,
    gamma: Optional[ArrayLike] = None,
    beta: Optional[ArrayLike] = None,
    *,
    axis: int = 1,
    out: Optional[_Array] = None,
    activation: _Activation = None,
) -> _Array: ...
def backward_reduce(
    dy: _Array,
    x: _Array,
    mean: ArrayLike,
    invstd: ArrayLike,
    *,
    axis: int = 1,
    gamma: Optional[ArrayLike] = None,
    beta: Optional[ArrayLike] = None,
    activation: _Activation = None,
) -> tuple[_Array, _Array]: ...
def backward_elemt(
    dy: _Array,
    x: _Array,
    mean: ArrayLike,
    invstd: ArrayLike,
    gamma: Optional[ArrayLike],
    sum_dy: ArrayLike,
    sum_dy_xhat: ArrayLike,
    count: Any,
    *,
    axis: int = 1,
    out: Optional[_Array] = None,
    beta: Optional[ArrayLike] = None,
    activation: _Activation = None,
) -> _Array: ...
def update_running_stats(
    running_mean: _Array,
    running_var: _Array,
    mean: ArrayLike,
    var: ArrayLike,
    count: Any,
    *,
    momentum: float = 0.1,
    unbiased_running_var: bool = True,
) -> None: ...
def show_config(file: Optional[IO[str]] = None) -> None: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> int: ...
def set_output_cache(max_bytes: int) -> int: ...

class BatchNorm:
    """Batch normalisation layer for NumPy trainers (see ``fastbn.layers.BatchNorm``)."""

    num_features: int
    axis: _Axis
    eps: float
    momentum: Optional[float]
    affine: bool
    track_running_stats: bool
    dtype: np.dtype[Any]
    activation: _Activation
    negative_slope: float
    renorm: Optional[tuple[float, float]]
    virtual_batch_size: Optional[int]
    stats_frozen: bool
    training: bool
    params: dict[str, _Array]
    grads: dict[str, _Array]
    running_mean: Optional[_Array]
    running_var: Optional[_Array]
    num_batches_tracked: int
    def __init__(
        self,
        num_features: int,
        *,
        axis: _Axis = 1,
        eps: float = 1e-05,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype: DTypeLike = ...,
        activation: _Activation = None,
        unbiased_running_var: bool = True,
        accumulate_grads: bool = False,
        negative_slope: float = 0.01,
        renorm: Optional[tuple[float, float]] = None,
        virtual_batch_size: Optional[int] = None,
        stats_frozen: bool = False,
    ) -> None: ...
    @property
    def gamma(self) -> Optional[_Array]: ...
    @property
    def beta(self) -> Optional[_Array]: ...
    def train(self, mode: bool = True) -> BatchNorm: ...
    def eval(self) -> BatchNorm: ...
    def freeze_stats(self, frozen: bool = True) -> BatchNorm: ...
    @property
    def mode(self) -> Literal["train", "eval", "frozen_stats"]: ...
    def zero_grad(self) -> None: ...
    def reset_running_stats(self) -> None: ...
    def forward(self, x: _Array, training: Optional[bool] = None, *,
                out: Optional[_Array] = None, return_cache: bool = False,
                mask: Optional[NDArray[np.bool_]] = None,
                residual: Optional[_Array] = None) -> Any: ...
    def __call__(self, x: _Array, training: Optional[bool] = None, *,
                 out: Optional[_Array] = None, return_cache: bool = False,
                 mask: Optional[NDArray[np.bool_]] = None,
                 residual: Optional[_Array] = None) -> Any: ...
    # dx; (dx, dresidual) after a forward with residual=; dx None with need_dx=False
    def backward(self, dy: _Array, *, cache: Optional[Cache] = None,
                 out: Optional[_Array] = None, need_dx: bool = True) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def save(self, path: _Path) -> None: ...
    @classmethod
    def load(cls, path: _Path, **kwargs: Any) -> BatchNorm: ...

def fold_linear(
    W: ArrayLike,
    b: Optional[ArrayLike],
    gamma: Optional[ArrayLike],
    beta: Optional[ArrayLike],
    running_mean: ArrayLike,
    running_var: ArrayLike,
    eps: float = 1e-05,
    *,
    axis: int = 0,
) -> tuple[_Array, _Array]: ...
def fold_batchnorm(
    W: ArrayLike, b: Optional[ArrayLike], bn: BatchNorm, *, axis: int = 0
) -> tuple[_Array, _Array]: ...
