"""Typing: the stubs (fastbn/__init__.pyi, fastbn/_kernels.pyi) match the runtime
(mypy.stubtest), and a small user script type-checks with ``mypy --strict``.

Skipped when mypy is missing (it is in the ``test`` extra). mypy runs in a
subprocess on the fastbn that this process imports (its directory on MYPYPATH).
"""
import os
import pathlib
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import fastbn

pytest.importorskip("mypy")
if os.environ.get("FASTBN_SANITIZED"):  # .ci/sanitize: memory safety, not typing
    pytest.skip("typing is not checked under the sanitizers", allow_module_level=True)

PACKAGE = pathlib.Path(fastbn.__file__).resolve().parent

USER_SCRIPT = '''\
import numpy as np
from numpy.typing import NDArray

import fastbn


def train_step(x: NDArray[np.float32], bn: fastbn.BatchNorm, lr: float) -> float:
    y = bn(x)
    dx = bn.backward(np.ones_like(y))
    for key in bn.params:
        bn.params[key] -= lr * bn.grads[key]
    return float(dx.sum())


x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
gamma, beta = np.ones(4, np.float32), np.zeros(4, np.float32)
rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
y, cache = fastbn.forward(x, gamma, beta, running_mean=rm, running_var=rv, momentum=0.1)
dx, dgamma, dbeta = fastbn.backward(np.ones_like(y), cache)
mean: NDArray[np.float64] = cache.mean
count, m, m2 = fastbn.batch_stats(x, axis=1)
previous: int = fastbn.set_num_threads(fastbn.get_num_threads())
W2, b2 = fastbn.fold_linear(np.eye(4), None, gamma, beta, rm, rv)
bn = fastbn.BatchNorm(4, activation="relu")
loss: float = train_step(x, bn, 0.1)
bn.eval()
backend: str = fastbn.backend
'''


def run_mypy(args, tmp_path):
    # fastbn through MYPYPATH, its own modules' errors silenced as an installed
    # package's would be (--follow-imports=silent for the user script)
    # (stubtest imports it too: PYTHONPATH, so that it is this same copy). An installed
    # fastbn (site-packages, which mypy refuses on MYPYPATH) is found as users find it.
    env = dict(os.environ)
    if PACKAGE.parent.name not in ("site-packages", "dist-packages"):
        env.update(MYPYPATH=str(PACKAGE.parent), PYTHONPATH=str(PACKAGE.parent))
    return subprocess.run([sys.executable, "-m", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_user_script_type_checks_strictly(tmp_path):
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    result = run_mypy(["mypy", "--strict", "--follow-imports=silent", "--no-incremental",
                       "--cache-dir", str(tmp_path / "cache"), str(script)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_user_script_type_errors_are_found(tmp_path):
    """The stubs constrain: a wrong call is an error (not everything is Any)."""
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT + textwrap.dedent('''\
        bad: str = fastbn.get_num_threads()
        fastbn.forward(x, axis="channels")
        bn.train(mode="yes")
    '''))
    result = run_mypy(["mypy", "--strict", "--follow-imports=silent", "--no-incremental",
                       "--cache-dir", str(tmp_path / "cache"), str(script)], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.count("error:") == 3, result.stdout


def test_stubs_match_the_runtime(tmp_path):
    """mypy.stubtest: every name and signature in the stubs exists at run time with the
    same parameters (a keyword added to fastbn.forward must be added to the stub too)."""
    # Only the modules with stubs are compared; the untyped .py modules are not.
    untyped = [m.name for m in pkgutil.iter_modules([str(PACKAGE)])
               if not (PACKAGE / f"{m.name}.pyi").exists()]
    allow = tmp_path / "allow.txt"
    allow.write_text("".join(f"fastbn\\.{name}(\\..*)?\n" for name in untyped)
                     + "fastbn\\._kernels\\.__test__\n")
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n[mypy-fastbn.*]\nignore_errors = True\n")  # their own code
    result = run_mypy(["mypy.stubtest", "fastbn", "--allowlist", str(allow),
                       "--ignore-unused-allowlist",
                       "--mypy-config-file", str(config)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
