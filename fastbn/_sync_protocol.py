"""fastbn.distributed's message protocol: the float64 header that says what each
rank's message is, its merge, and the errors worded from it (see fastbn.distributed)."""
import numpy as np

__all__ = ["HEADER", "PeerError", "MismatchError"]


class PeerError(RuntimeError):
    """Raised on the ranks whose own arguments were valid when another rank's were not."""


class MismatchError(ValueError):
    """Raised on every rank when the ranks' synchronised calls disagree.

    They disagree when they are out of step (a forward beside a backward, a backward of
    another forward) or differ in C, eps, momentum, axis, mode, activation, ...; the
    message names what differs and each rank's value. A ValueError.
    """


# ------------------------------------------------------------------ the message header
# Slots of the float64 header that starts every row; the names double as the words of
# the error messages. All but the last two ("status" and "count", this rank's own) must
# be the same on every rank.
HEADER = ("magic", "operation", "call", "forward call", "channels", "ndim", "axis",
          "channel axes", "eps", "momentum", "flags", "activation", "negative slope", "rmax",
          "dmax", "status", "count")
_SLOT = {name: i for i, name in enumerate(HEADER)}
_AGREE = len(HEADER) - 2
_MAGIC = float(0x46424E32)  # "FBN2" (FBN1: 13 slots): not a fastbn message, or another layout, if absent
_OPS = {1.0: "sync_forward", 2.0: "sync_backward"}
_FORWARD, _BACKWARD = 1.0, 2.0
_FAILED = 1.0                    # status of a rank whose arguments were invalid
_FLAGS = ("updates running statistics", "has gamma", "has beta", "training mode",
          "biased running variance", "mask", "residual")  # bits 0..6
_ACTIVATIONS = (None, "relu", "leaky_relu")  # code = index


def _header(op, call, *, failed=False, forward_call=-1, channels=-1, ndim=-1, axis=-1,
            eps=0.0, momentum=0.0, flags=0, activation=None, count=0, negative_slope=0.0,
            renorm=None):
    """The header of this rank's row: its values in the order of HEADER. `axis`: an int
    or a tuple of channel axes ("axis" holds the first, "channel axes" their bit mask);
    `negative_slope` only with the leaky ReLU; `renorm`: (rmax, dmax) or None (zeros)."""
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    rmax, dmax = (0.0, 0.0) if renorm is None else renorm
    return [_MAGIC, op, call, forward_call, channels, ndim, axes[0],
            sum(1 << a for a in axes if a >= 0), eps, momentum, flags,
            _ACTIVATIONS.index(activation), negative_slope, rmax, dmax,
            _FAILED if failed else 0.0, count]


def _flags(updates, gamma, beta, training, biased=False, mask=False, residual=False):
    """The "flags" slot: bit i set when _FLAGS[i] holds."""
    return (updates | (gamma is not None) << 1 | (beta is not None) << 2 | training << 3
            | biased << 4 | mask << 5 | residual << 6)


def _show(name, value):
    """A header value as the error messages show it."""
    if name == "operation":
        return _OPS.get(value, repr(value))
    if name == "flags":
        return "[" + ", ".join(f for i, f in enumerate(_FLAGS) if int(value) >> i & 1) + "]"
    if name == "activation":
        return repr(_ACTIVATIONS[int(value)]) if 0 <= value < len(_ACTIVATIONS) else repr(value)
    if name == "channel axes":
        return str(tuple(a for a in range(64) if int(value) >> a & 1))
    if name in ("eps", "momentum", "negative slope", "rmax", "dmax"):
        return repr(float(value))
    return str(int(value))


def _check_headers(headers, comm, error, what):
    """Raise, identically on every rank, unless every rank sent a valid, agreeing header.
    `error`: this rank's own failure (raised here, after the collective)."""
    if error is not None:
        raise error
    agree = headers[:, :_AGREE]
    differs = agree != agree[0]
    if not differs.any() and agree[0, 0] == _MAGIC and not headers[:, _SLOT["status"]].any():
        return  # the usual case, in a few vector operations; what follows words the errors
    me = comm.Get_rank()
    col = {name: headers[:, i] for i, name in enumerate(HEADER)}
    alien = np.flatnonzero(col["magic"] != _MAGIC).tolist()
    if alien:
        raise MismatchError(f"{what} (rank {me}): rank(s) {alien} sent a row that is not a "
                            f"fastbn.distributed message (another collective on the same "
                            f"communicator, or another fastbn version)")
    failed = np.flatnonzero(col["status"] == _FAILED).tolist()
    if failed:
        raise PeerError(f"{what}: the arguments were invalid on rank(s) {failed} of the "
                        f"communicator (this is rank {me}); see the error there")
    if (col["operation"] != col["operation"][0]).any():
        doing = ", ".join(f"rank {r} in {_show('operation', op)} ({int(c)} channels)"
                          for r, (op, c) in enumerate(zip(col["operation"], col["channels"])))
        raise MismatchError(f"{what} (rank {me}): the ranks are out of step: {doing}; every "
                            f"rank must make the same sequence of synchronised calls")
    differ = [f"{name}: [" + ", ".join(_show(name, v) for v in col[name]) + "]"
              for i, name in enumerate(HEADER[:_AGREE]) if differs[:, i].any()]
    if differ:
        raise MismatchError(f"{what} (rank {me}): the ranks disagree on " + "; ".join(differ)
                            + " (values by rank)")


# ------------------------------------------------------------------ merging two messages
def _two_sum(a, b):
    """(s, e) with s = fl(a + b) and s + e = a + b exactly (Knuth)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _merge_moments(n_a, a, n_b, b):
    """Chan et al.'s merge of two parts' [mean_hi, mean_lo, m2] (each C values), counts
    n_a and n_b, the mean in double-double arithmetic: returns the merged vector."""
    if n_b == 0:
        return a
    if n_a == 0:
        return b
    C = a.size // 3
    h_a, l_a, m_a = a[:C], a[C:2 * C], a[2 * C:]
    h_b, l_b, m_b = b[:C], b[C:2 * C], b[2 * C:]
    n = n_a + n_b
    dh, de = _two_sum(h_b, -h_a)
    delta = dh + (de + (l_b - l_a))           # mean_b - mean_a, to a rounding of its own size
    hi, e = _two_sum(h_a, delta * (n_b / n))  # mean_a + delta * n_b / n, in double-double
    hi, lo = _two_sum(hi, e + l_a)
    m2 = (m_a + m_b) + (delta * delta) * (n_a * (n_b / n))
    return np.concatenate([hi, lo, m2])


def _add(n_a, a, n_b, b):
    return a + b


def _merge(low, high, combine):
    """Merge two messages, `low` from the lower ranks: the header's agreed slots are
    low's, its status is set if either part failed or the two disagree (on the agreed
    slots, or in length), its count is the sum; the payloads are combined if all is well."""
    H = len(HEADER)
    if low.size < H or high.size < H:  # not fastbn's (cannot happen on the private comm)
        bad = np.zeros(H)
        bad[_SLOT["status"]] = _FAILED
        return bad
    out_header = low[:H].copy()
    out_header[_SLOT["count"]] = low[_SLOT["count"]] + high[_SLOT["count"]]
    if (low[_SLOT["status"]] or high[_SLOT["status"]] or low.size != high.size
            or not np.array_equal(low[:_AGREE], high[:_AGREE])):
        out_header[_SLOT["status"]] = _FAILED
        return out_header  # the payloads are not used any more
    payload = combine(low[_SLOT["count"]], low[H:], high[_SLOT["count"]], high[H:])
    return np.concatenate([out_header, payload])

