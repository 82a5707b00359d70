"""Every error of the contract: the documented exception, a message naming the
offending argument, and no state touched (running statistics, `out` buffers and
every other array bitwise unchanged). Run against fastbn and fastbn.reference."""
import numpy as np
import pytest

import fastbn
from fastbn import reference

C = 3


class State:
    """Fresh arrays for one error case; `snapshot()` covers all of them."""

    def __init__(self):
        rng = np.random.default_rng(21)
        self.x = rng.standard_normal((4, C, 2))
        self.x32 = self.x.astype(np.float32)
        self.gamma, self.beta = rng.uniform(0.5, 2, C), rng.standard_normal(C)
        self.rm, self.rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
        self.rm_ro, self.rv_ro = self.rm.copy(), self.rv.copy()
        self.rm_ro.flags.writeable = self.rv_ro.flags.writeable = False
        self.out = np.full(self.x.shape, -7.0)
        self.out32 = np.full(self.x.shape, -7.0, dtype=np.float32)
        self.out_ro = np.full(self.x.shape, -7.0)
        self.out_ro.flags.writeable = False
        self.out_short = np.full((4, C, 1), -7.0)
        self.dy = rng.standard_normal(self.x.shape)
        self.dgamma, self.dbeta = np.full(C, -7.0), np.full(C, -7.0)
        self.vec_ro = np.full(C, -7.0)
        self.vec_ro.flags.writeable = False
        self.means, self.m2s = rng.standard_normal((2, C)), rng.uniform(1, 2, (2, C))
        self.x_in_place = self.x.copy()
        _, self.cache = reference.forward(self.x, self.gamma, self.beta)
        _, self.cache_plain = reference.forward(self.x)
        _, self.cache_in_place = reference.forward(self.x_in_place, out=self.x_in_place)

    def snapshot(self):
        return {name: (a.shape, a.dtype, a.tobytes()) for name, a in vars(self).items()
                if isinstance(a, np.ndarray)}


def fwd(impl, s, **changes):
    kw = dict(x=s.x, gamma=s.gamma, beta=s.beta, running_mean=s.rm, running_var=s.rv,
              out=s.out)
    kw.update(changes)
    return impl.forward(kw.pop("x"), kw.pop("gamma"), kw.pop("beta"), **kw)


def bwd(impl, s, **changes):
    kw = dict(dy=s.dy, cache=s.cache, out=s.out)
    kw.update(changes)
    return impl.backward(kw.pop("dy"), kw.pop("cache"), **kw)


def elemt(impl, s, **changes):
    kw = dict(dy=s.dy, x=s.x, mean=s.rm, invstd=s.rv, gamma=s.gamma, sum_dy=s.gamma,
              sum_dy_xhat=s.beta, count=8, out=s.out)
    kw.update(changes)
    args = [kw.pop(k) for k in ("dy", "x", "mean", "invstd", "gamma", "sum_dy", "sum_dy_xhat",
                                "count")]
    return impl.backward_elemt(*args, **kw)


def ema(impl, s, **changes):
    kw = dict(running_mean=s.rm, running_var=s.rv, mean=s.gamma, var=s.beta ** 2, count=8,
              momentum=0.1)
    kw.update(changes)
    args = [kw.pop(k) for k in ("running_mean", "running_var", "mean", "var", "count")]
    return impl.update_running_stats(*args, **kw)


def merge(impl, s, **changes):
    kw = dict(counts=np.array([3, 5]), means=s.means, m2s=s.m2s)
    kw.update(changes)
    return impl.merge_stats(kw["counts"], kw["means"], kw["m2s"])


V, T = ValueError, TypeError
# (id, exception, message pattern, call)
CASES = [
    # forward: x
    ("x 1-D", V, r"\bx\b", lambda i, s: fwd(i, s, x=np.ones(C))),
    ("x 0-D", V, r"\bx\b", lambda i, s: fwd(i, s, x=np.array(1.0))),
    ("x list", T, r"\bx\b", lambda i, s: fwd(i, s, x=s.x.tolist())),
    ("x int", T, r"\bx\b", lambda i, s: fwd(i, s, x=s.x.astype(np.int64))),
    ("x complex", T, r"\bx\b", lambda i, s: fwd(i, s, x=s.x.astype(np.complex128))),
    ("x bool", T, r"\bx\b", lambda i, s: fwd(i, s, x=s.x > 0)),
    ("x object", T, r"\bx\b", lambda i, s: fwd(i, s, x=s.x.astype(object))),
    ("x longdouble", T, r"\bx\b", lambda i, s: fwd(i, s, x=s.x.astype(np.longdouble))),
    # forward: parameters
    ("gamma shape", V, r"\bgamma\b", lambda i, s: fwd(i, s, gamma=np.ones(C + 1))),
    ("gamma 2-D", V, r"\bgamma\b", lambda i, s: fwd(i, s, gamma=np.ones((C, 1)))),
    # (integer gamma is converted as NumPy would, API.md; complex has no such meaning)
    ("gamma complex", T, r"\bgamma\b", lambda i, s: fwd(i, s, gamma=np.ones(C, dtype=complex))),
    ("gamma str", T, r"\bgamma\b", lambda i, s: fwd(i, s, gamma="ones")),
    ("beta shape", V, r"\bbeta\b", lambda i, s: fwd(i, s, beta=np.zeros(C - 1))),
    ("beta complex", T, r"\bbeta\b", lambda i, s: fwd(i, s, beta=np.zeros(C, dtype=complex))),
    # forward: running statistics
    ("running_mean shape", V, r"\brunning_mean\b", lambda i, s: fwd(i, s, running_mean=np.zeros(C + 1))),
    ("running_var shape", V, r"\brunning_var\b", lambda i, s: fwd(i, s, running_var=np.ones(1))),
    ("running_mean list", T, r"\brunning_mean\b", lambda i, s: fwd(i, s, running_mean=[0.0] * C)),
    ("running_var int", T, r"\brunning_var\b", lambda i, s: fwd(i, s, running_var=np.ones(C, dtype=int))),
    ("running_mean alone", V, r"\brunning_var\b", lambda i, s: fwd(i, s, running_var=None)),
    ("running_var alone", V, r"\brunning_mean\b", lambda i, s: fwd(i, s, running_mean=None)),
    ("running stats shared", V, r"\brunning_mean\b", lambda i, s: fwd(i, s, running_var=s.rm)),
    ("running_mean read-only", V, r"\brunning_mean\b", lambda i, s: fwd(i, s, running_mean=s.rm_ro)),
    ("running_var read-only", V, r"\brunning_var\b", lambda i, s: fwd(i, s, running_var=s.rv_ro)),
    ("eval without running stats", V, r"\brunning_mean\b",
     lambda i, s: fwd(i, s, training=False, running_mean=None, running_var=None)),
    ("eval with running_mean only", V, r"\brunning_var\b",
     lambda i, s: fwd(i, s, training=False, running_var=None)),
    # forward: batch of one in training
    ("m == 1", V, r"more than 1 value per channel",
     lambda i, s: fwd(i, s, x=s.x[:1, :, :1], out=None)),
    ("m == 1 (N, C)", V, r"more than 1 value per channel",
     lambda i, s: fwd(i, s, x=s.x[:1, :, 0], out=None)),
    ("m == 0", V, r"more than 1 value per channel",
     lambda i, s: fwd(i, s, x=s.x[:0], out=None)),
    # forward: out
    ("out shape", V, r"\bout\b", lambda i, s: fwd(i, s, out=s.out_short)),
    ("out dtype", T, r"\bout\b", lambda i, s: fwd(i, s, out=s.out32)),
    ("out read-only", V, r"\bout\b", lambda i, s: fwd(i, s, out=s.out_ro)),
    ("out list", T, r"\bout\b", lambda i, s: fwd(i, s, out=s.out.tolist())),
    ("out float32 for float64 x", T, r"\bout\b", lambda i, s: fwd(i, s, x=s.x32)),
    # forward: scalars
    ("axis too large", V, r"\baxis\b", lambda i, s: fwd(i, s, axis=3)),
    ("axis too negative", V, r"\baxis\b", lambda i, s: fwd(i, s, axis=-4)),
    ("axis float", T, r"\baxis\b", lambda i, s: fwd(i, s, axis=1.0)),
    ("axis str", T, r"\baxis\b", lambda i, s: fwd(i, s, axis="1")),
    ("axis None", T, r"\baxis\b", lambda i, s: fwd(i, s, axis=None)),
    ("axis bool", T, r"\baxis\b", lambda i, s: fwd(i, s, axis=True)),
    ("eps zero", V, r"\beps\b", lambda i, s: fwd(i, s, eps=0.0)),
    ("eps negative", V, r"\beps\b", lambda i, s: fwd(i, s, eps=-1e-5)),
    ("eps nan", V, r"\beps\b", lambda i, s: fwd(i, s, eps=float("nan"))),
    ("eps inf", V, r"\beps\b", lambda i, s: fwd(i, s, eps=float("inf"))),
    ("eps str", T, r"\beps\b", lambda i, s: fwd(i, s, eps="1e-5")),
    ("eps None", T, r"\beps\b", lambda i, s: fwd(i, s, eps=None)),
    ("eps array", T, r"\beps\b", lambda i, s: fwd(i, s, eps=np.array([1e-5]))),
    ("momentum negative", V, r"\bmomentum\b", lambda i, s: fwd(i, s, momentum=-0.1)),
    ("momentum above 1", V, r"\bmomentum\b", lambda i, s: fwd(i, s, momentum=1.5)),
    ("momentum nan", V, r"\bmomentum\b", lambda i, s: fwd(i, s, momentum=float("nan"))),
    ("momentum str", T, r"\bmomentum\b", lambda i, s: fwd(i, s, momentum="0.1")),
    ("training str", T, r"\btraining\b", lambda i, s: fwd(i, s, training="yes")),
    ("training None", T, r"\btraining\b", lambda i, s: fwd(i, s, training=None)),
    ("activation unknown", V, r"\bactivation\b", lambda i, s: fwd(i, s, activation="tanh")),
    # backward
    ("cache tuple", T, r"\bcache\b", lambda i, s: bwd(i, s, cache=(s.x, s.gamma))),
    ("cache None", T, r"\bcache\b", lambda i, s: bwd(i, s, cache=None)),
    ("dy shape", V, r"\bdy\b", lambda i, s: bwd(i, s, dy=s.dy[:, :, :1])),
    ("dy dtype", T, r"\bdy\b", lambda i, s: bwd(i, s, dy=s.dy.astype(np.float32))),
    ("dy int", T, r"\bdy\b", lambda i, s: bwd(i, s, dy=s.dy.astype(int))),
    ("dy list", T, r"\bdy\b", lambda i, s: bwd(i, s, dy=s.dy.tolist())),
    ("backward out shape", V, r"\bout\b", lambda i, s: bwd(i, s, out=s.out_short)),
    ("backward out dtype", T, r"\bout\b", lambda i, s: bwd(i, s, out=s.out32)),
    ("backward out read-only", V, r"\bout\b", lambda i, s: bwd(i, s, out=s.out_ro)),
    ("backward out list", T, r"\bout\b", lambda i, s: bwd(i, s, out=[s.out])),
    ("backward out pair", V, r"\bout\b", lambda i, s: bwd(i, s, out=(s.out, s.dgamma))),
    ("backward out[0] shape", V, r"out\[0\]",
     lambda i, s: bwd(i, s, out=(s.out_short, s.dgamma, s.dbeta))),
    ("backward out[1] shape", V, r"out\[1\]",
     lambda i, s: bwd(i, s, out=(s.out, s.dgamma[:-1], s.dbeta))),
    ("backward out[1] read-only", V, r"out\[1\]",
     lambda i, s: bwd(i, s, out=(s.out, s.vec_ro, s.dbeta))),
    ("backward out[2] dtype", T, r"out\[2\]",
     lambda i, s: bwd(i, s, out=(s.out, s.dgamma, s.dbeta.astype(np.float32)))),
    ("backward out[1] without gamma", V, r"out\[1\]",
     lambda i, s: bwd(i, s, cache=s.cache_plain, out=(s.out, s.dgamma, None))),
    ("backward out[2] without beta", V, r"out\[2\]",
     lambda i, s: bwd(i, s, cache=s.cache_plain, out=(s.out, None, s.dbeta))),
    ("backward after in-place forward", V, r"in place",
     lambda i, s: bwd(i, s, cache=s.cache_in_place)),
    # batch_stats and normalize
    ("batch_stats x 1-D", V, r"\bx\b", lambda i, s: i.batch_stats(np.ones(4))),
    ("batch_stats x int", T, r"\bx\b", lambda i, s: i.batch_stats(np.ones((4, 2), dtype=int))),
    ("batch_stats axis", V, r"\baxis\b", lambda i, s: i.batch_stats(s.x, axis=5)),
    ("normalize mean shape", V, r"\bmean\b",
     lambda i, s: i.normalize(s.x, s.rm[:-1], s.rv, out=s.out)),
    ("normalize mean None", T, r"\bmean\b", lambda i, s: i.normalize(s.x, None, s.rv, out=s.out)),
    ("backward_reduce invstd None", T, r"\binvstd\b",
     lambda i, s: i.backward_reduce(s.dy, s.x, s.rm, None)),
    ("backward_elemt sum_dy None", T, r"\bsum_dy\b", lambda i, s: elemt(i, s, sum_dy=None)),
    ("normalize invstd int", T, r"\binvstd\b",
     lambda i, s: i.normalize(s.x, s.rm, np.ones(C, dtype=int), out=s.out)),
    ("normalize gamma shape", V, r"\bgamma\b",
     lambda i, s: i.normalize(s.x, s.rm, s.rv, np.ones(C + 1), out=s.out)),
    ("normalize out read-only", V, r"\bout\b",
     lambda i, s: i.normalize(s.x, s.rm, s.rv, out=s.out_ro)),
    ("normalize out dtype", T, r"\bout\b", lambda i, s: i.normalize(s.x, s.rm, s.rv, out=s.out32)),
    ("normalize activation", V, r"\bactivation\b",
     lambda i, s: i.normalize(s.x, s.rm, s.rv, out=s.out, activation="gelu")),
    # backward_reduce and backward_elemt
    ("backward_reduce dy shape", V, r"\bdy\b",
     lambda i, s: i.backward_reduce(s.dy[:2], s.x, s.rm, s.rv)),
    ("backward_reduce dy dtype", T, r"\bdy\b",
     lambda i, s: i.backward_reduce(s.dy.astype(np.float32), s.x, s.rm, s.rv)),
    ("backward_reduce invstd shape", V, r"\binvstd\b",
     lambda i, s: i.backward_reduce(s.dy, s.x, s.rm, np.ones(C + 2))),
    ("backward_reduce activation", V, r"\bactivation\b",
     lambda i, s: i.backward_reduce(s.dy, s.x, s.rm, s.rv, activation="gelu")),
    ("backward_reduce activation type", T, r"\bactivation\b",
     lambda i, s: i.backward_reduce(s.dy, s.x, s.rm, s.rv, activation=1)),
    ("backward_reduce beta shape", V, r"\bbeta\b",
     lambda i, s: i.backward_reduce(s.dy, s.x, s.rm, s.rv, beta=np.ones(C + 1),
                                    activation="relu")),
    ("backward_reduce gamma int", T, r"\bgamma\b",
     lambda i, s: i.backward_reduce(s.dy, s.x, s.rm, s.rv, gamma=np.ones(C, dtype=int))),
    ("backward_elemt activation", V, r"\bactivation\b",
     lambda i, s: elemt(i, s, activation="tanh")),
    ("backward_elemt beta shape", V, r"\bbeta\b",
     lambda i, s: elemt(i, s, beta=np.ones(C - 1), activation="relu")),
    ("backward_elemt count 0", V, r"\bcount\b", lambda i, s: elemt(i, s, count=0)),
    ("backward_elemt count negative", V, r"\bcount\b", lambda i, s: elemt(i, s, count=-2)),
    ("backward_elemt count bool", T, r"\bcount\b", lambda i, s: elemt(i, s, count=True)),
    ("backward_elemt count float", T, r"\bcount\b", lambda i, s: elemt(i, s, count=2.5)),
    ("backward_elemt count shape", V, r"\bcount\b", lambda i, s: elemt(i, s, count=np.ones(C + 1))),
    ("backward_elemt sum_dy shape", V, r"\bsum_dy\b", lambda i, s: elemt(i, s, sum_dy=np.ones(1))),
    ("backward_elemt out read-only", V, r"\bout\b", lambda i, s: elemt(i, s, out=s.out_ro)),
    ("backward_elemt dy dtype", T, r"\bdy\b", lambda i, s: elemt(i, s, dy=s.dy.astype(np.float32))),
    # merge_stats
    ("merge means 1-D", V, r"\bmeans\b", lambda i, s: merge(i, s, means=s.means[0])),
    ("merge means int", T, r"\bmeans\b", lambda i, s: merge(i, s, means=s.means.astype(int))),
    ("merge m2s shape", V, r"\bm2s\b", lambda i, s: merge(i, s, m2s=s.m2s[:, :-1])),
    ("merge counts negative", V, r"\bcounts\b", lambda i, s: merge(i, s, counts=np.array([3, -1]))),
    ("merge counts fractional", V, r"\bcounts\b",
     lambda i, s: merge(i, s, counts=np.array([3.5, 1.0]))),
    ("merge counts shape", V, r"\bcounts\b", lambda i, s: merge(i, s, counts=np.array([1, 2, 3]))),
    ("merge counts str", T, r"\bcounts\b", lambda i, s: merge(i, s, counts="3,5")),
    # update_running_stats
    ("update count 1", V, r"\bcount\b", lambda i, s: ema(i, s, count=1)),
    ("update count float", T, r"\bcount\b", lambda i, s: ema(i, s, count=8.0)),
    ("update momentum", V, r"\bmomentum\b", lambda i, s: ema(i, s, momentum=2.0)),
    ("update running_mean read-only", V, r"\brunning_mean\b", lambda i, s: ema(i, s, running_mean=s.rm_ro)),
    ("update running_var read-only", V, r"\brunning_var\b", lambda i, s: ema(i, s, running_var=s.rv_ro)),
    ("update running_mean shape", V, r"\brunning_mean\b",
     lambda i, s: ema(i, s, running_mean=np.zeros(C + 1))),
    ("update running_var None", T, r"\brunning_var\b", lambda i, s: ema(i, s, running_var=None)),
    ("update var shape", V, r"\bvar\b", lambda i, s: ema(i, s, var=np.ones(C - 1))),
    ("update mean list", T, r"\bmean\b", lambda i, s: ema(i, s, mean=[0.0] * C)),
]


@pytest.mark.parametrize("exception, pattern, call", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_error_raised_and_state_untouched(impl, exception, pattern, call):
    s = State()
    before = s.snapshot()
    with pytest.raises(exception, match=pattern):
        call(impl, s)
    after = s.snapshot()
    changed = [name for name in before if before[name] != after[name]]
    assert not changed, f"arrays modified by a failed call: {changed}"


@pytest.mark.parametrize("call", [c[3] for c in CASES], ids=[c[0] for c in CASES])
def test_both_backends_give_the_same_message(call):
    messages = []
    for impl in (fastbn, reference):
        with pytest.raises(Exception) as info:
            call(impl, State())
        messages.append((type(info.value), str(info.value)))
    assert messages[0] == messages[1]


# ---------------------------------------------------------------- what must NOT raise

def test_read_only_inputs_are_fine(impl):
    """Only what is written must be writable: x, gamma, beta, dy may be read-only."""
    s = State()
    for a in (s.x, s.gamma, s.beta, s.dy):
        a.flags.writeable = False
    w = State()  # the same values, all writable: the results must be the same
    y, cache = impl.forward(s.x, s.gamma, s.beta, running_mean=s.rm, running_var=s.rv)
    dx, dgamma, dbeta = impl.backward(s.dy, cache)
    y_eval, _ = impl.forward(s.x, s.gamma, s.beta, training=False, running_mean=s.rm_ro,
                             running_var=s.rv_ro)
    wy, wcache = impl.forward(w.x, w.gamma, w.beta, running_mean=w.rm, running_var=w.rv)
    wdx, wdgamma, wdbeta = impl.backward(w.dy, wcache)
    wy_eval, _ = impl.forward(w.x, w.gamma, w.beta, training=False, running_mean=w.rm_ro,
                              running_var=w.rv_ro)
    for name, a, b in [("y", y, wy), ("dx", dx, wdx), ("dgamma", dgamma, wdgamma),
                       ("dbeta", dbeta, wdbeta), ("y (eval)", y_eval, wy_eval),
                       ("running_mean", s.rm, w.rm), ("running_var", s.rv, w.rv)]:
        assert a.tobytes() == b.tobytes(), name
    # and they are right: the reference on writable copies
    ey, ecache = reference.forward(w.x, w.gamma, w.beta)
    edx, _, _ = reference.backward(w.dy, ecache)
    assert np.allclose(y, ey, rtol=0, atol=1e-12) and np.allclose(dx, edx, rtol=0, atol=1e-12)
    assert not np.array_equal(s.rm, s.rm_ro)  # the running statistics were updated


def test_lists_are_accepted_for_read_only_vectors(impl):
    s = State()
    y_list, _ = impl.forward(s.x, s.gamma.tolist(), tuple(s.beta))
    y_array, _ = impl.forward(s.x, s.gamma, s.beta)
    assert y_list.tobytes() == y_array.tobytes()


def test_numpy_scalars_are_accepted(impl):
    s = State()
    y, _ = impl.forward(s.x, axis=np.int64(-2), eps=np.float32(1e-3), momentum=np.float64(0.2),
                        training=np.bool_(True), running_mean=s.rm, running_var=s.rv)
    expected, _ = reference.forward(s.x, eps=float(np.float32(1e-3)))
    assert np.allclose(y, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("view", ["x[...]", "x.view()", "shifted"])
def test_backward_refuses_a_cache_whose_x_a_view_overwrote(impl, view):
    """forward(out=<another view of x's memory>) overwrites x as out=x does: backward
    must refuse the cache rather than differentiate at the overwritten values."""
    rng = np.random.default_rng(3)
    buf = rng.standard_normal((7, C, 2))
    x = buf[:-1] if view == "shifted" else buf.copy()
    out = {"x[...]": lambda: x[...], "x.view()": lambda: x.view(),
           "shifted": lambda: buf[1:]}[view]()
    assert out is not x
    y, cache = impl.forward(x, out=out)
    assert y is out
    with pytest.raises(ValueError, match="overwrote"):
        impl.backward(np.ones_like(x), cache)
