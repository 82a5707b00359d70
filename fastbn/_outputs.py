"""Memory of the outputs fastbn allocates: FASTBN_OUTPUT_CACHE sets the default limit,
set_output_cache changes it.

Without ``out=``, each call returns new arrays (y, dx, ...). A large array is memory
the operating system maps afresh, and its first write faults and zeroes every page:
about as long as the batch norm pass itself. So NumPy frees fastbn's large outputs
(1 MiB or more) through fastbn's allocator (src_c/outmem.c), which keeps them, up to
a limit of bytes, for the next output of the same size: a training loop's outputs
then reuse the previous step's memory. (NumPy's ``get_handler_name`` of such an array
is ``"fastbn_outputs"``.)
"""
import os

try:
    from . import _kernels
except ImportError:
    _kernels = None

__all__ = ["set_output_cache"]


def _check(n, what):
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{what} must be an int (bytes), got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"{what} must be >= 0, got {n}")
    return n


def _from_environment():
    env = os.environ.get("FASTBN_OUTPUT_CACHE")
    if env is None or env == "":
        return
    try:
        n = int(env)
    except ValueError:
        raise ValueError("FASTBN_OUTPUT_CACHE must be a number of bytes >= 0, "
                         f"got {env!r}") from None
    if n < 0:
        raise ValueError(f"FASTBN_OUTPUT_CACHE must be a number of bytes >= 0, got {env!r}")
    set_output_cache(n)


def set_output_cache(max_bytes):
    """Set how many bytes of freed outputs fastbn keeps for reuse, for the whole process.

    The outputs fastbn allocates (calls without ``out=``) of 1 MiB or more are freed
    into a cache when NumPy releases them, and handed out again to the next output
    of the same size: memory the operating system maps afresh costs a page fault and
    the zeroing of every page on first write, about as long as the batch norm pass
    itself. The cache keeps at most 32 blocks and `max_bytes` bytes, dropping the
    oldest first. The default is ``FASTBN_OUTPUT_CACHE`` if set, else a sixteenth
    of the physical memory, at most 1 GiB. Outputs given with ``out=`` never go
    through it; the NumPy backend has none.

    Parameters
    ----------
    max_bytes : int
        The most bytes kept, >= 0; 0 turns the cache off and frees what it holds.

    Returns
    -------
    int
        The previous limit, to restore it later (0 with the NumPy backend).

    Raises
    ------
    TypeError
        If max_bytes is not an int.
    ValueError
        If max_bytes < 0.

    See Also
    --------
    show_config : Prints the limit and the bytes held now.

    Examples
    --------
    >>> import fastbn
    >>> previous = fastbn.set_output_cache(0)  # free what is kept; keep nothing
    >>> _ = fastbn.set_output_cache(previous)
    """
    max_bytes = _check(max_bytes, "max_bytes")
    if _kernels is None:
        return 0
    previous = _kernels.outmem_limit(max_bytes)
    if previous < 0:
        raise RuntimeError("fastbn: the output cache is held by another thread "
                           "(or was, in the parent of this forked process)")
    return previous


def output_cache_info():
    """(limit, bytes held now), for show_config; (0, 0) with the NumPy backend."""
    if _kernels is None:
        return 0, 0
    return _kernels.outmem_limit(-1), _kernels.outmem_held()


_from_environment()
