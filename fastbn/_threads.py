"""Thread count: FASTBN_NUM_THREADS sets the default, set_num_threads changes it.

The kernels' threads come from fastbn's own pool (src_c/parallel.c): POSIX threads
in a normal build, which OpenMP limits (OMP_NUM_THREADS, threadpoolctl) do not
touch; a build with the OpenMP fallback (MSVC) is capped by OpenMP's limit, as
OpenMP caps its own teams.
"""
import os

try:
    from . import _kernels
except ImportError:
    _kernels = None


def _default_threads():
    env = os.environ.get("FASTBN_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"FASTBN_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n >= 1:
            return n
        raise ValueError(f"FASTBN_NUM_THREADS must be a positive integer, got {env!r}")
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_num_threads = _default_threads()


def set_num_threads(n):
    """Set how many threads the kernels may use, for the whole process.

    The default is ``FASTBN_NUM_THREADS`` if set, else the number of CPUs this
    process may run on. OpenMP limits (``OMP_NUM_THREADS``, threadpoolctl) do not
    apply to fastbn's own thread pool (they cap only a build with the OpenMP
    fallback); the NumPy backend ignores the setting. Results are bitwise
    identical whatever the number of threads.

    A call may use fewer: below 65536 values one thread, and below 2**19 values
    (``FASTBN_WAKE_VALUES``) one thread while the pool's workers sleep, as after a
    pause between calls, where waking them costs more than the call; such calls
    back to back wake them (``show_config()`` states the rule).

    Parameters
    ----------
    n : int
        Number of threads, >= 1.

    Returns
    -------
    int
        The previous setting, to restore it later.

    Raises
    ------
    TypeError
        If n is not an int.
    ValueError
        If n < 1.

    See Also
    --------
    get_num_threads

    Examples
    --------
    >>> import fastbn
    >>> previous = fastbn.set_num_threads(1)
    >>> fastbn.get_num_threads()
    1
    >>> _ = fastbn.set_num_threads(previous)
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be a positive integer, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    previous, _num_threads = _num_threads, n
    return previous


def get_num_threads():
    """Threads the next call may use: the fastbn setting, capped by what the pool can run.

    Returns
    -------
    int
        At least 1; 1 when the extension was built without threads.

    See Also
    --------
    set_num_threads

    Examples
    --------
    >>> import fastbn
    >>> fastbn.get_num_threads() >= 1
    True
    """
    if _kernels is None:
        return _num_threads
    return max(1, min(_num_threads, _kernels.max_threads()))


def build_info():
    if _kernels is None:
        return {"openmp": False, "pool": "none", "max_threads": 1,
                "simd": "none (NumPy backend)", "compiler": "n/a",
                "half": "n/a (NumPy backend)", "caches": "n/a (NumPy backend)",
                "wake": "n/a (NumPy backend)"}
    l1d, l2, l3 = _kernels.cache_sizes()
    width = _kernels.stream_width()
    caches = (f"L1d {_size(l1d)}, L2 {_size(l2)}, L3 {_size(l3)} (read at "
              "run time: tiles and the streaming threshold follow them); streamed stores "
              + (f"of {width} bytes" if width else "off"))
    return {"openmp": _kernels.openmp_enabled(), "pool": _kernels.pool_kind(),
            "max_threads": _kernels.max_threads(), "simd": _kernels.simd_paths(),
            "compiler": _kernels.compiler(), "half": _kernels.half_conversions(),
            "caches": caches, "wake": _wake(_kernels.pool_wake_values())}


def _wake(values):
    """The pool's wake-up rule (fbn_pool_threads) in words."""
    if values < 0:
        return "n/a (not fastbn's pool)"
    if values == 0:
        return "every threaded call wakes sleeping workers (FASTBN_WAKE_VALUES=0)"
    return (f"calls under {values} values run alone while the workers sleep, unless they "
            "come back to back (FASTBN_WAKE_VALUES)")


def _size(n):
    """n bytes as 48 KB, 1 MB, 1.25 MB (cache sizes)."""
    return f"{n / 2**20:g} MB" if n >= 2**20 else f"{n / 2**10:g} KB"
