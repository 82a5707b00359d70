"""Finite-difference checks of backward (dx, dgamma, dbeta) in float64.

The loss is sum(dy * y) with a random, non-uniform dy, so its gradient is
exactly what backward(dy, cache) returns. Central differences with step H have
an error of O(H**2) from truncation plus O(eps * |loss| / H) from rounding;
the tolerance covers both with a wide margin for the small, well-conditioned
draws used here. ReLU draws with a pre-activation near its kink are skipped.
"""
import dataclasses

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from conftest import assert_close, cases, pre_activation

H = 1e-5
FD_RTOL = 1e-6


@st.composite
def gradient_cases(draw):
    case = draw(cases(max_rank=4, max_size=48))
    return dataclasses.replace(case, dtype=np.float64, param_dtype=np.float64,
                               running_dtype=np.float64, out_layout=None)


def central_difference(loss, a):
    """d loss / d a, perturbing `a` in place one element at a time."""
    grad = np.zeros(a.shape)
    for i in np.ndindex(a.shape):
        saved = a[i]
        a[i] = saved + H
        up = loss()
        a[i] = saved - H
        down = loss()
        a[i] = saved
        grad[i] = (up - down) / (2 * H)
    return grad


def well_conditioned(case, x, gamma, beta, running_mean, running_var):
    """Small invstd * |gamma| (so H barely moves the output) and, with ReLU, every
    pre-activation far enough from 0 that no step crosses the kink."""
    z = pre_activation(case, x, gamma, beta, running_mean, running_var)
    axis = case.axis % x.ndim
    others = tuple(d for d in range(x.ndim) if d != axis)
    var = x.var(axis=others) if case.training else running_var
    gain = np.max(np.abs(1.0 if gamma is None else gamma) / np.sqrt(var + case.eps))
    if gain > 20:
        return False
    return case.activation != "relu" or np.min(np.abs(z)) > 1e3 * H * gain


@given(case=gradient_cases())
def test_backward_matches_finite_differences(impl, case):
    x, dy = case.x(), case.dy()
    gamma, beta = case.params()
    running_mean, running_var = case.running_stats()
    assume(well_conditioned(case, x, gamma, beta, running_mean, running_var))
    if case.training:  # the running statistics play no part in a training forward
        running_mean = running_var = None

    def forward():
        return impl.forward(x, gamma, beta, axis=case.axis, eps=case.eps, training=case.training,
                            running_mean=running_mean, running_var=running_var,
                            activation=case.activation)

    def loss():
        return float(np.sum(dy * forward()[0]))

    dx, dgamma, dbeta = impl.backward(dy, forward()[1])
    assert_close(dx, central_difference(loss, x), FD_RTOL, "dx")
    if gamma is None:
        assert dgamma is None
    else:
        assert_close(dgamma, central_difference(loss, gamma), FD_RTOL, "dgamma")
    if beta is None:
        assert dbeta is None
    else:
        assert_close(dbeta, central_difference(loss, beta), FD_RTOL, "dbeta")
