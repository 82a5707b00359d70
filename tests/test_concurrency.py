"""Thread safety and determinism of the compiled kernels.

- Many Python threads calling fastbn at once (the kernels release the GIL and may
  start OpenMP teams of their own) get bitwise the results of serial calls.
- Repeated calls give bitwise identical results.
- Results do not depend on the thread count: fastbn.set_num_threads(1) vs 2 here, and
  odd counts (3, 7) in a subprocess whose OpenMP limit allows them.
Inputs are large (> 65536 elements, several tiles per channel for some) so that the
kernels actually split the work.
"""
import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastbn

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="tests the compiled kernels")

# (shape, axis, dtype, layout): NCHW, NHWC, (N, C), wide and long channels, float32/64,
# contiguous and strided. Each has > 65536 elements (the kernels' threading threshold).
CONFIGS = [
    ((5, 16, 32, 32), 1, np.float32, "C"),
    ((5, 32, 32, 16), -1, np.float32, "C"),
    ((9000, 8), 1, np.float64, "C"),
    ((2, 3, 256, 512), 1, np.float32, "C"),      # 3 channels of 262144: several tiles each
    ((2, 600, 60), 1, np.float64, "C"),          # many short channels
    ((512, 300), 1, np.float32, "C"),            # wider than one channel block (256)
    ((40000, 3), 1, np.float64, "C"),            # long channels across rows: several tiles
    ((5, 16, 32, 32), 1, np.float64, "strided"),
    ((5, 32, 32, 16), -1, np.float32, "F"),
]


def make_inputs(config, seed):
    shape, axis, dtype, layout = config
    rng = np.random.default_rng(seed)
    C = shape[axis]
    bshape = [1] * len(shape)
    bshape[axis] = C
    x = (rng.normal(0, 3, C).reshape(bshape) + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    if layout == "strided":
        big = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)
        big[..., ::2] = x
        x = big[..., ::2]
    elif layout == "F":
        x, dy = np.asfortranarray(x), np.asfortranarray(dy)
    gamma = rng.uniform(0.5, 2.0, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    return x, dy, gamma, beta


def run_op(op, config, seed):
    """One public call (or a forward+backward pair); returns every output as arrays."""
    x, dy, gamma, beta = make_inputs(config, seed)
    axis = config[1]
    C = x.shape[axis]
    if op == "forward_backward":
        rm, rv = np.zeros(C, x.dtype), np.ones(C, x.dtype)
        y, cache = fastbn.forward(x, gamma, beta, axis=axis, running_mean=rm, running_var=rv)
        dx, dgamma, dbeta = fastbn.backward(dy, cache)
        return [y, cache.mean, cache.mean_lo, cache.invstd, rm, rv, dx, dgamma, dbeta]
    if op == "forward_relu_backward":
        y, cache = fastbn.forward(x, gamma, beta, axis=axis, activation="relu")
        dx, dgamma, dbeta = fastbn.backward(dy, cache, out=np.empty_like(x))
        return [y, dx, dgamma, dbeta]
    if op == "eval":
        rm, rv = gamma.astype(np.float64) - 1, beta.astype(np.float64) ** 2 + 0.5
        y, cache = fastbn.forward(x, gamma, beta, axis=axis, training=False,
                                  running_mean=rm, running_var=rv)
        dx, dgamma, dbeta = fastbn.backward(dy, cache)
        return [y, dx, dgamma, dbeta]
    if op == "building_blocks":
        count, mean, m2 = fastbn.batch_stats(x, axis=axis)
        invstd = 1.0 / np.sqrt(m2 / count + 1e-5)
        y = fastbn.normalize(x, mean, invstd, gamma, beta, axis=axis)
        sum_dy, sum_dy_xhat = fastbn.backward_reduce(dy, x, mean, invstd, axis=axis)
        dx = fastbn.backward_elemt(dy, x, mean, invstd, gamma, sum_dy, sum_dy_xhat, count,
                                   axis=axis)
        rm, rv = np.zeros(C), np.ones(C)
        fastbn.update_running_stats(rm, rv, mean, m2 / count, count, momentum=0.3)
        return [mean, m2, y, sum_dy, sum_dy_xhat, dx, rm, rv]
    raise ValueError(op)


OPS = ["forward_backward", "forward_relu_backward", "eval", "building_blocks"]
TASKS = [(op, i, 1000 + 10 * i + j) for i in range(len(CONFIGS)) for j, op in enumerate(OPS)]


def task_result(task):
    op, i, seed = task
    return [np.ascontiguousarray(a).tobytes() + repr((a.shape, a.dtype.str)).encode()
            for a in run_op(op, CONFIGS[i], seed)]


@pytest.fixture(scope="module")
def serial_results():
    return {task: task_result(task) for task in TASKS}


def assert_same(got, expected, task):
    assert len(got) == len(expected), task
    for k, (a, b) in enumerate(zip(got, expected)):
        assert a == b, f"{task}: output {k} differs from the serial call"


def test_repeated_calls_are_bitwise_identical(serial_results):
    for task in TASKS[::3]:
        assert_same(task_result(task), serial_results[task], task)


def test_many_python_threads_match_serial_calls(serial_results):
    """8 threads, every op and shape at once, in a shuffled order, twice over."""
    order = TASKS * 2
    np.random.default_rng(0).shuffle(order)
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(task_result, order))
    for task, got in zip(order, results):
        assert_same(got, serial_results[task], task)


def test_threads_sharing_inputs_and_updating_their_own_state():
    """Threads reading the same x concurrently, each with its own running statistics."""
    x, dy, gamma, beta = make_inputs(CONFIGS[0], 7)
    C = x.shape[1]

    def step(_):
        rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
        y, cache = fastbn.forward(x, gamma, beta, running_mean=rm, running_var=rv)
        dx, dgamma, dbeta = fastbn.backward(dy, cache)
        return [a.tobytes() for a in (y, rm, rv, dx, dgamma, dbeta)]

    expected = step(None)
    before = x.tobytes()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for got in pool.map(step, range(24)):
            assert got == expected
    assert x.tobytes() == before


def test_thread_count_does_not_change_results(serial_results):
    previous = fastbn.get_num_threads()
    try:
        for n in (1, 2):
            fastbn.set_num_threads(n)
            for task in TASKS:
                assert_same(task_result(task), serial_results[task], (task, f"threads={n}"))
    finally:
        fastbn.set_num_threads(previous)
    assert fastbn.get_num_threads() == previous


def test_set_num_threads_returns_previous_and_restores():
    previous = fastbn.get_num_threads()
    try:
        fastbn.set_num_threads(1)
        assert fastbn.get_num_threads() == 1
    finally:
        fastbn.set_num_threads(previous)
    assert fastbn.get_num_threads() == previous


DIGEST_SCRIPT = textwrap.dedent("""
    import hashlib, json, sys
    sys.path[:0] = json.loads(sys.argv[1])
    import fastbn, test_concurrency as t
    out = {}
    for n in json.loads(sys.argv[2]):
        fastbn.set_num_threads(n)
        h = hashlib.sha256()
        for task in t.TASKS:
            for b in t.task_result(task):
                h.update(b)
        out[str(n)] = [fastbn.get_num_threads(), h.hexdigest()]
    print(json.dumps(out))
""")


def test_odd_thread_counts_in_a_subprocess(serial_results):
    """OMP_NUM_THREADS=7 lets fastbn use 3 and 7 threads even on a 2-core machine."""
    env = dict(os.environ, OMP_NUM_THREADS="7", FASTBN_NUM_THREADS="7")
    env.pop("OMP_THREAD_LIMIT", None)
    paths = [os.path.dirname(os.path.abspath(__file__))] + sys.path
    proc = subprocess.run([sys.executable, "-c", DIGEST_SCRIPT, json.dumps(paths), "[1, 3, 7]"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    digests = json.loads(proc.stdout.strip().splitlines()[-1])
    h = hashlib.sha256()
    for task in TASKS:
        for b in serial_results[task]:
            h.update(b)
    for n, (used, digest) in digests.items():
        if n != "1":
            assert used == int(n), f"asked for {n} threads, fastbn used {used}"
        assert digest == h.hexdigest(), f"results with {n} threads differ from this process's"
