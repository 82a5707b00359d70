"""fastbn: fused C batch normalisation kernels for NumPy arrays.

The compiled backend (``fastbn.backend == "c"``) is used when the extension
imports; otherwise, or with ``FASTBN_BACKEND=numpy``, the pure-NumPy
``fastbn.reference`` is used, with a warning when the extension is missing.
"""
import os as _os
import warnings as _warnings

from . import reference
from ._cache import Cache
from ._checks import MomentumWarning  # noqa: F401 (fastbn.MomentumWarning, for filters)
from ._threads import get_num_threads, set_num_threads
from ._outputs import set_output_cache
from .fold import fold_batchnorm, fold_linear
from .layers import BatchNorm

__version__ = "0.1.0"
__all__ = ["forward", "backward", "batch_stats", "merge_stats", "normalize", "backward_reduce",
           "backward_elemt", "update_running_stats", "Cache", "backend", "show_config",
           "get_num_threads", "set_num_threads", "set_output_cache", "reference", "BatchNorm",
           "fold_linear", "fold_batchnorm"]


def _load_backend():
    if _os.environ.get("FASTBN_BACKEND", "").lower() == "numpy":
        return reference, "numpy", "FASTBN_BACKEND=numpy"
    import importlib.util
    if importlib.util.find_spec(__name__ + "._kernels") is None:
        reason = "the compiled extension fastbn._kernels is not built"
    else:
        try:
            from . import _core
            return _core, "c", None
        except ImportError as exc:
            reason = f"the compiled extension could not be imported ({exc})"
    _warnings.warn(f"fastbn: {reason}; using the slower NumPy reference "
                   "(build it with `pip install -e .`)", RuntimeWarning, stacklevel=3)
    return reference, "numpy", reason


_impl, backend, _fallback_reason = _load_backend()
forward = _impl.forward
backward = _impl.backward
batch_stats = _impl.batch_stats
merge_stats = _impl.merge_stats
normalize = _impl.normalize
backward_reduce = _impl.backward_reduce
backward_elemt = _impl.backward_elemt
update_running_stats = _impl.update_running_stats


def _available_cpus():
    if hasattr(_os, "sched_getaffinity"):
        return len(_os.sched_getaffinity(0))
    return _os.cpu_count() or 1


def _output_memory():
    from ._outputs import output_cache_info
    if backend != "c":
        return "n/a (NumPy backend)"
    limit, held = output_cache_info()
    mb = 2 ** 20
    return (f"freed outputs of 1 MB or more kept for reuse up to {limit / mb:g} MB "
            f"({held / mb:g} MB held; set_output_cache, FASTBN_OUTPUT_CACHE)" if limit
            else "no freed output kept (set_output_cache(0) or FASTBN_OUTPUT_CACHE=0)")


def show_config(file=None):
    """Print the build's configuration and the run-time facts the kernels tune by.

    The backend, version, OpenMP support, thread pool, threads and SIMD paths; the
    instructions that convert float16 / bfloat16 data, the cache sizes and the width
    of streamed stores, as read on this machine; the output cache's limit and what
    it holds (`set_output_cache`).

    What to attach to a bug report; ``python -m fastbn info`` prints the same.

    Parameters
    ----------
    file : file-like, optional
        Where to print (``sys.stdout`` by default).

    See Also
    --------
    get_num_threads, set_num_threads, set_output_cache

    Examples
    --------
    >>> import fastbn
    >>> fastbn.show_config()  # doctest: +ELLIPSIS
    fastbn ...
      backend: ...
    """
    from ._threads import build_info
    info = build_info()
    lines = [f"fastbn {__version__}",
             f"  backend:       {backend}" + (f" ({_fallback_reason})" if _fallback_reason else ""),
             f"  openmp:        {'on' if info['openmp'] else 'off'}",
             "  thread pool:   " + {"pthreads": "fastbn's own (POSIX threads, fork-safe)",
                                    "openmp": "OpenMP (not fork-safe)",
                                    "none": "none (one thread)"}[info["pool"]],
             "  threads:       " + (f"{get_num_threads()} (of {_available_cpus()} CPUs available)"
                                   if backend == "c" else "n/a (NumPy backend)"),
             f"  wake-up:       {info['wake']}",
             f"  simd:          {info['simd']}",
             f"  half data:     float16 / bfloat16 conversions by {info['half']}",
             f"  caches:        {info['caches']}",
             f"  output memory: {_output_memory()}",
             f"  compiler:      {info['compiler']}"]
    print("\n".join(lines), file=file)
