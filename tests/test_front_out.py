"""out= on the compiled front end of forward/backward (fastbn/_front.pxi, out_ok).

A plain out= (a writeable, C-contiguous, aligned ndarray of the right dtype and shape,
overlapping nothing the call reads or writes) is written by the front end itself; every
other out= goes to the checked path. Either way the results, the caches and the errors
must be the checked path's, bit for bit, and the outputs returned must be the arrays
given.
"""
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastbn
from fastbn import _checks, _core

from conftest import assert_bitwise_equal
from test_front import (_assert_same_cache, calls_case, case_arguments,  # noqa: F401
                        checked_calls, spy)

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="the compiled backend's front end")

# which of backward's outputs are given: out=dx, or the tuple with None where not given
GRAD_OUTS = ["dx", "all", "dx-only", "grads-only", "none"]


def _grad_outs(kind, x, gamma, beta):
    """Fresh NaN-filled outputs of backward (a kernel that skips a value shows it)."""
    def like(a, given):
        return None if a is None or not given else np.full(a.shape, np.nan, a.dtype)
    if kind == "dx":
        return like(x, True)
    dx_given = kind in ("all", "dx-only")
    grads_given = kind in ("all", "grads-only")
    return like(x, dx_given), like(gamma, grads_given), like(beta, grads_given)


def _assert_returns_outs(result, out):
    """Each output given is the array returned in its place."""
    outs = (out, None, None) if not isinstance(out, tuple) else out
    for got, given_, name in zip(result, outs, ("dx", "dgamma", "dbeta")):
        assert given_ is None or got is given_, name


@given(case=calls_case, grad_outs=st.sampled_from(GRAD_OUTS))
def test_plain_out_matches_checked_path(case, grad_outs):
    with warnings.catch_warnings():  # as test_front: no momentum warning to hand over
        warnings.simplefilter("ignore")
        _checks.warn_momentum(1.0)
    with spy() as checked_calls:
        _plain_out_matches_checked_path(case, grad_outs, checked_calls)


def _plain_out_matches_checked_path(case, grad_outs, checked_calls):
    args = case_arguments(case)
    if args is None:
        return
    x, dy, axis, gamma, beta, (rm, rv), (rm2, rv2), kw = args
    shape, dtype = case["shape"], case["dtype"]
    # strides the kernels cannot read where they are: the checked path's (a copy)
    copied = not x.flags.c_contiguous and not np.shares_memory(_checks.canonical(x, axis), x)

    out1, out2 = np.full(shape, np.nan, dtype), np.full(shape, np.nan, dtype)
    y1, c1 = fastbn.forward(x, gamma, beta, running_mean=rm, running_var=rv, out=out1, **kw)
    assert checked_calls == (["forward"] if copied else []), "a plain out= left the front end"
    y2, c2 = _core._checked_forward(x, gamma, beta, running_mean=rm2, running_var=rv2,
                                    out=out2, **kw)
    assert y1 is out1 and y2 is out2
    assert_bitwise_equal(y1, y2, "y")
    _assert_same_cache(c1, c2)
    assert c1.x_overwritten is False
    if rm is not None:
        assert_bitwise_equal(rm, rm2, "running_mean")
        assert_bitwise_equal(rv, rv2, "running_var")

    del checked_calls[:]
    g1, g2 = (_grad_outs(grad_outs, x, gamma, beta) for _ in range(2))
    r1 = fastbn.backward(dy, c1, out=g1)
    assert checked_calls == (["backward"] if copied else []), \
        "a plain backward out= left the front end"
    r2 = _core._checked_backward(dy, c2, out=g2)
    _assert_returns_outs(r1, g1)
    _assert_returns_outs(r2, g2)
    for a, b, name in zip(r1, r2, ("dx", "dgamma", "dbeta")):
        assert (a is None) == (b is None), name
        if a is not None:
            assert_bitwise_equal(a, b, name)
    _assert_same_cache(c1, c2)  # x_written among them: False, nothing written over x
    assert c1.x_written is False


def _x_and_params(dtype=np.float32):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 4)).astype(dtype) + 2
    return x, rng.uniform(0.5, 2, 3).astype(dtype), rng.normal(0, 1, 3).astype(dtype)


def _in_buffer_of(a, shape, dtype, offset):
    """An array of `shape` in contiguous a's buffer, `offset` values of `dtype` past its
    start, holding what was there (a view overlapping a)."""
    flat = a.reshape(-1).view(np.uint8)[offset * np.dtype(dtype).itemsize:]
    return flat[:int(np.prod(shape)) * np.dtype(dtype).itemsize].view(dtype).reshape(shape)


def _out_over_x(s):  # out 5 values past x's start, in one buffer
    x = s["x"]
    buf = np.zeros(x.size + 5, x.dtype)
    buf[:x.size] = x.reshape(-1)
    s["x"], s["out"] = buf[:x.size].reshape(x.shape), buf[5:].reshape(x.shape)


def _out_over_row_strided_x(s):  # x: channels 0-2 of 6; out contiguous from channel 3 on
    base = np.repeat(s["x"], 2, axis=1)
    s["x"], s["out"] = base[:, :3], base.reshape(-1)[12:12 + s["x"].size].reshape(s["x"].shape)


def _out_over_beta(s):
    b = s["out"].reshape(-1)[-3:]
    b[...] = s["beta"]
    s["beta"] = b


class _Sub(np.ndarray):
    pass


def _swapped(x):
    return np.empty(x.shape, x.dtype.newbyteorder())


def _misaligned(x):
    return np.empty(x.nbytes + 1, np.uint8)[1:].view(x.dtype).reshape(x.shape)


def _read_only(x):
    out = np.empty_like(x)
    out.flags.writeable = False
    return out


def _train_running(s):
    s["kw"] = dict(running_mean=np.zeros(3, s["x"].dtype), running_var=np.ones(3, s["x"].dtype))


def _out_over_running_mean(s):  # training writes both: refused
    buf = np.zeros(s["x"].size + 3, s["x"].dtype)
    s["out"] = buf[3:].reshape(s["x"].shape)
    s["kw"] = dict(running_mean=buf[1:4], running_var=np.ones(3, s["x"].dtype))


def _out_over_running_var_eval(s):  # eval reads it before out is written
    out = np.empty_like(s["x"])
    rv = out.reshape(-1)[5:8]
    rv[...] = [0.5, 1.0, 2.0]
    s["out"], s["kw"] = out, dict(training=False, running_mean=np.zeros(3, s["x"].dtype),
                                  running_var=rv)


def _out_over_gamma(s):  # gamma is read as it was before out is written
    out = np.empty_like(s["x"])
    g = out.reshape(-1)[7:10]
    g[...] = s["gamma"]
    s["out"], s["gamma"] = out, g


# (id, how out= is made from the fresh state s: x, gamma, beta, out, kw)
FORWARD_HANDED_OVER = [
    ("in-place", lambda s: s.update(out=s["x"])),
    ("over-x", _out_over_x),
    ("over-row-strided-x", _out_over_row_strided_x),
    ("fortran", lambda s: s.update(out=np.asfortranarray(np.empty_like(s["x"])))),
    ("strided", lambda s: s.update(out=np.empty((6, 3, 8), s["x"].dtype)[:, :, ::2])),
    ("misaligned", lambda s: s.update(out=_misaligned(s["x"]))),
    ("subclass", lambda s: s.update(out=np.empty_like(s["x"]).view(_Sub))),
    ("masked", lambda s: s.update(out=np.ma.masked_array(np.empty_like(s["x"])))),
    ("byte-swapped", lambda s: s.update(out=_swapped(s["x"]))),
    ("wrong-dtype", lambda s: s.update(out=np.empty_like(
        s["x"], np.float32 if s["x"].dtype == np.float64 else np.float64))),
    ("wrong-shape", lambda s: s.update(out=np.empty((6, 3, 5), s["x"].dtype))),
    ("reshaped", lambda s: s.update(out=np.empty((6, 12), s["x"].dtype))),
    ("read-only", lambda s: s.update(out=_read_only(s["x"]))),
    ("list", lambda s: s.update(out=s["x"].tolist())),
    ("over-running-mean", _out_over_running_mean),
    ("over-running-var-eval", _out_over_running_var_eval),
    ("over-gamma", _out_over_gamma),
    ("over-beta", _out_over_beta),
]


def _forward_state(dtype, with_out=True):
    x, g, b = _x_and_params(dtype)
    return dict(x=x, gamma=g, beta=b, out=np.empty_like(x) if with_out else None, kw={})


def _run_forward(fn, s):
    """(y, cache) of fn on the state, or the error raised; and the state's arrays after."""
    try:
        result = fn(s["x"], s["gamma"], s["beta"], out=s["out"], **s["kw"])
    except (TypeError, ValueError) as e:
        result = e
    return result, [s["x"], *s["kw"].values()]


def _assert_same_outcome(a, b):
    """The same error (type and words), or the same arrays bit for bit (None alike)."""
    if isinstance(a, Exception) or isinstance(b, Exception):
        assert type(a) is type(b) and str(a) == str(b), (a, b)
        return
    for u, v in zip(a, b):
        assert (u is None) == (v is None)
        if u is not None:
            assert_bitwise_equal(np.asarray(u), np.asarray(v))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", [c[1] for c in FORWARD_HANDED_OVER],
                         ids=[c[0] for c in FORWARD_HANDED_OVER])
def test_forward_hands_over_other_outs(make, dtype, checked_calls):
    """The checked path's result or error, and its cache (x_overwritten) and state."""
    states = []
    for _ in range(2):
        s = _forward_state(dtype)
        _train_running(s)
        make(s)
        states.append(s)
    got, after = _run_forward(fastbn.forward, states[0])
    assert checked_calls == ["forward"]
    want, after2 = _run_forward(_core._checked_forward, states[1])
    _assert_same_outcome(after, after2)
    if isinstance(got, Exception) or isinstance(want, Exception):
        _assert_same_outcome(got, want)
        return
    _assert_same_outcome(got[:1], want[:1])
    assert got[0] is states[0]["out"]
    _assert_same_cache(got[1], want[1], same_x=False)


def test_forward_plain_out_stays_in_the_front_end(checked_calls):
    for training, kw in ((True, {}), (True, "running"), (False, "running")):
        s = _forward_state(np.float32)
        if kw:
            _train_running(s)
        y, cache = fastbn.forward(s["x"], s["gamma"], s["beta"], out=s["out"],
                                  training=training, **s["kw"])
        assert y is s["out"] and cache.x_overwritten is False
        fastbn.backward(np.ones_like(s["x"]), cache, out=np.empty_like(s["x"]))
    assert checked_calls == []


def test_disjoint_views_of_one_buffer_stay_in_the_front_end(checked_calls):
    """Outputs sharing a buffer with the inputs but none of their bytes are plain."""
    x0, g, b = _x_and_params(np.float64)
    n = x0.size
    results = []
    for fn, bfn in ((fastbn.forward, fastbn.backward),
                    (_core._checked_forward, _core._checked_backward)):
        buf = np.full(3 * n + 6, np.nan)
        x, y_out, dy = (buf[i * n:(i + 1) * n].reshape(x0.shape) for i in range(3))
        x[...], dy[...] = x0, x0[::-1]
        y, cache = fn(x, g, b, out=y_out)
        assert y is y_out
        # dx over y, dgamma and dbeta after dy: the forward's output is not read
        outs = (y_out, buf[3 * n:3 * n + 3], buf[3 * n + 3:])
        grads = bfn(dy, cache, out=outs)
        assert all(r is o for r, o in zip(grads, outs)) and cache.x_written is False
        results.append((buf.copy(), cache))
        if fn is fastbn.forward:
            assert checked_calls == []
    assert_bitwise_equal(results[0][0], results[1][0], "all outputs")
    _assert_same_cache(results[0][1], results[1][1], same_x=False)


def _backward_state(dtype, gamma=True):
    x, g, b = _x_and_params(dtype)
    dy = np.random.default_rng(6).standard_normal(x.shape).astype(dtype)
    _, cache = fastbn.forward(x, g if gamma else None, b if gamma else None)
    return dict(x=x, dy=dy, cache=cache)


def _in_x(s, shape, dtype):
    return _in_buffer_of(s["x"], shape, dtype, 3)


def _outs(s, dx=True, dg=True, db=True):
    """A fresh (dx, dgamma, dbeta) out= tuple, None where not wanted."""
    c = s["cache"]
    return (np.empty_like(s["x"]) if dx else None, np.empty_like(c.gamma) if dg else None,
            np.empty_like(c.beta) if db else None)


def _replace(t, i, v):
    return t[:i] + (v,) + t[i + 1:]


# (id, out= made from the fresh state s: x, dy, cache; False: a forward without gamma, beta)
BACKWARD_HANDED_OVER = [
    ("over-dy", lambda s: s["dy"], True),
    ("over-dy-tuple", lambda s: (s["dy"], None, None), True),
    ("over-x", lambda s: s["x"], True),  # then x_written
    ("dgamma-over-x", lambda s: _replace(_outs(s), 1, _in_x(s, (3,), s["x"].dtype)), True),
    ("dbeta-over-dy", lambda s: (None, None, s["dy"].reshape(-1)[:3]), True),
    ("dgamma-over-dbeta", lambda s: (None,) + (lambda v: (v, v))(np.empty(3, s["x"].dtype)),
     True),
    ("dx-over-dbeta", lambda s: (lambda o: _replace(o, 2, o[0].reshape(-1)[4:7]))(_outs(s)),
     True),
    ("dgamma-over-cache-gamma", lambda s: (None, s["cache"].gamma, None), True),
    ("dgamma-over-cache-invstd", lambda s: _replace(_outs(s), 1, s["cache"].invstd), True),
    ("fortran-dx", lambda s: _replace(_outs(s), 0, np.asfortranarray(np.empty_like(s["x"]))),
     True),
    ("strided-dgamma", lambda s: _replace(_outs(s), 1, np.empty(6, s["x"].dtype)[::2]), True),
    ("misaligned-dx", lambda s: _misaligned(s["x"]), True),
    ("subclass-dx", lambda s: np.empty_like(s["x"]).view(_Sub), True),
    ("read-only-dx", lambda s: _read_only(s["x"]), True),
    ("read-only-dbeta", lambda s: _replace(_outs(s), 2, _read_only(s["cache"].beta)), True),
    ("dgamma-of-another-dtype", lambda s: _replace(_outs(s), 1, np.empty(3, np.float16)), True),
    ("dgamma-without-gamma", lambda s: (None, np.empty(3, s["x"].dtype), None), False),
    ("dbeta-without-beta", lambda s: (None, None, np.empty(3, s["x"].dtype)), False),
    ("pair", lambda s: _outs(s)[:2], True),
    ("list", lambda s: list(_outs(s)), True),
    ("list-dx", lambda s: s["x"].tolist(), True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make, gamma", [c[1:] for c in BACKWARD_HANDED_OVER],
                         ids=[c[0] for c in BACKWARD_HANDED_OVER])
def test_backward_hands_over_other_outs(make, gamma, dtype, checked_calls):
    """The checked path's gradients or error, its x_written, and the same arrays after."""
    outcomes = []
    for fn in (fastbn.backward, _core._checked_backward):
        s = _backward_state(dtype, gamma)
        out = make(s)
        try:
            result = fn(s["dy"], s["cache"], out=out)
            if isinstance(out, tuple):
                for got, given_ in zip(result, out):
                    assert given_ is None or got is given_
            elif out is not None and isinstance(out, np.ndarray):
                assert result[0] is out
        except (TypeError, ValueError) as e:
            result = e
        outcomes.append((result, [s["x"], s["dy"], s["cache"].mean, s["cache"].invstd],
                         s["cache"].x_written))
    assert checked_calls == ["backward"]
    (got, after, written), (want, after2, written2) = outcomes
    _assert_same_outcome(got, want)
    _assert_same_outcome(after, after2)
    assert written is written2


def test_backward_second_call_after_out_over_x_raises():
    s = _backward_state(np.float32)
    fastbn.backward(s["dy"], s["cache"], out=(None, _in_x(s, (3,), np.float32), None))
    assert s["cache"].x_written
    with pytest.raises(ValueError, match="an earlier backward on this cache wrote"):
        fastbn.backward(s["dy"], s["cache"], out=_outs(s))
