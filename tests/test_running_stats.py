"""Running statistics over several training steps, against PyTorch's rule written
out by hand in float64 (not the reference):

    running_mean <- (1 - momentum) * running_mean + momentum * batch_mean
    running_var  <- (1 - momentum) * running_var  + momentum * batch_var * m / (m - 1)

The hand-computed state is rounded to the running statistics' dtype after every
step, as the stored state is."""
import numpy as np
import pytest

from conftest import DTYPES, RTOL, assert_close, channel_values, lay_out, padding_intact, snapshot

MOMENTA = [0.1, 0.0, 1.0, 0.5, 0.01]
# (shapes of the successive batches, axis): the batch size changes between steps,
# and the first configuration includes m == 2.
SEQUENCES = [([(2, 3), (5, 3), (9, 3), (3, 3)], 1),
             ([(4, 3, 5), (2, 3, 1), (6, 3, 2)], 1),
             ([(2, 4, 4, 2), (3, 2, 4, 2), (1, 5, 3, 2)], -1),
             ([(3, 2, 2, 2, 2), (1, 2, 3, 1, 2)], 1)]


def hand_update(running_mean, running_var, x, axis, momentum):
    """One step of the rule above, in float64, from the batch itself."""
    others = tuple(d for d in range(x.ndim) if d != axis % x.ndim)
    xd = x.astype(np.float64)
    m = x.size // x.shape[axis]
    batch_mean = xd.sum(axis=others) / m
    unbiased_var = ((xd - xd.mean(axis=others, keepdims=True)) ** 2).sum(axis=others) / (m - 1)
    new_mean = (1 - momentum) * running_mean.astype(np.float64) + momentum * batch_mean
    new_var = (1 - momentum) * running_var.astype(np.float64) + momentum * unbiased_var
    return new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype)


@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("running_dtype", DTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes, axis", SEQUENCES)
def test_running_stats_follow_the_rule_over_steps(impl, shapes, axis, dtype, running_dtype,
                                                  momentum):
    rng = np.random.default_rng(12)
    C = shapes[0][axis]
    running_mean = rng.standard_normal(C).astype(running_dtype)
    running_var = rng.uniform(0.5, 2, C).astype(running_dtype)
    expected_mean, expected_var = running_mean.copy(), running_var.copy()
    for step, shape in enumerate(shapes):
        x = lay_out(channel_values(rng, shape, axis, dtype), "strided" if step % 2 else "F", rng)
        impl.forward(x, axis=axis, running_mean=running_mean, running_var=running_var,
                     momentum=momentum)
        expected_mean, expected_var = hand_update(expected_mean, expected_var, x, axis, momentum)
        assert_close(running_mean, expected_mean, RTOL[running_mean.dtype], f"mean, step {step}")
        assert_close(running_var, expected_var, RTOL[running_var.dtype], f"var, step {step}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_momentum_zero_keeps_and_one_replaces(impl, dtype):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((7, 4)).astype(dtype)
    running_mean, running_var = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    before = snapshot(running_mean, running_var)
    impl.forward(x, running_mean=running_mean, running_var=running_var, momentum=0.0)
    assert snapshot(running_mean, running_var) == before
    impl.forward(x, running_mean=running_mean, running_var=running_var, momentum=1)
    xd = x.astype(np.float64)
    assert_close(running_mean, xd.mean(axis=0), 1e-14)
    assert_close(running_var, xd.var(axis=0, ddof=1), 1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixed_and_strided_running_stats(impl, dtype):
    """float32 mean with float64 var, and a strided (non-contiguous) running mean:
    updated in place, its neighbours in memory untouched."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((6, 5, 3)).astype(dtype)
    running_mean = lay_out(rng.standard_normal(5).astype(np.float32), "strided", rng)
    running_var = rng.uniform(0.5, 2, 5)
    expected = hand_update(running_mean.copy(), running_var.copy(), x, 1, 0.1)
    impl.forward(x, running_mean=running_mean, running_var=running_var)
    assert padding_intact(running_mean)
    assert_close(running_mean, expected[0], RTOL[np.dtype(np.float32)])
    assert_close(running_var, expected[1], RTOL[np.dtype(np.float64)])


@pytest.mark.parametrize("activation", [None, "relu"])
def test_training_without_running_stats_changes_nothing(impl, activation):
    rng = np.random.default_rng(15)
    x = rng.standard_normal((5, 3, 2))
    gamma, beta = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    before = snapshot(x, gamma, beta)
    y1, _ = impl.forward(x, gamma, beta, activation=activation)
    y2, _ = impl.forward(x, gamma, beta, activation=activation)
    assert snapshot(x, gamma, beta) == before
    assert y1.tobytes() == y2.tobytes()  # no hidden state either


@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_leaves_running_stats_alone(impl, dtype):
    rng = np.random.default_rng(16)
    x = rng.standard_normal((5, 3)).astype(dtype)
    running_mean, running_var = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    before = snapshot(running_mean, running_var)
    impl.forward(x, training=False, running_mean=running_mean, running_var=running_var)
    assert snapshot(running_mean, running_var) == before
    running_mean.flags.writeable = running_var.flags.writeable = False  # fine when only read
    y, _ = impl.forward(x, training=False, running_mean=running_mean, running_var=running_var)
    assert y.dtype == dtype


@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("count", [2, 3, 1000])
@pytest.mark.parametrize("running_dtype", DTYPES)
def test_update_running_stats_directly(impl, running_dtype, count, momentum):
    rng = np.random.default_rng(17)
    mean, var = rng.standard_normal(6), rng.uniform(0.1, 3, 6)
    running_mean = rng.standard_normal(6).astype(running_dtype)
    running_var = rng.uniform(0.5, 2, 6).astype(running_dtype)
    expected_mean = ((1 - momentum) * running_mean.astype(np.float64)
                     + momentum * mean).astype(running_dtype)
    expected_var = ((1 - momentum) * running_var.astype(np.float64)
                    + momentum * var * count / (count - 1)).astype(running_dtype)
    impl.update_running_stats(running_mean, running_var, mean, var, count, momentum=momentum)
    assert_close(running_mean, expected_mean, RTOL[np.dtype(running_dtype)])
    assert_close(running_var, expected_var, RTOL[np.dtype(running_dtype)])
