"""SyncBatchNorm, sync_forward and sync_backward with the keywords of issue 20, under
mpiexec -n 2 and -n 3 (one rank empty) against one process on the concatenated
batch: the frozen-statistics mode; mask, renorm, several channel axes, leaky ReLU,
residual and need_dx=False (tests/mpi_features.py); keywords that differ across ranks
raise MismatchError on every rank; virtual_batch_size is refused, naming itself.
Finite differences in float64 through the synchronised path on COMM_SELF."""
import numpy as np
import pytest

import fastbn
from test_distributed import launch_script


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"n{n}")
def frozen_run(request, tmp_path_factory):
    return launch_script("mpi_frozen.py", request.param, tmp_path_factory)


def test_frozen_statistics_match_one_process(frozen_run):
    x, dy, base = frozen_run["x"], frozen_run["dy"], frozen_run["base"]
    ranks = frozen_run["results"][0]["ranks"]
    bn = fastbn.BatchNorm(4, activation="relu")
    bn.load_state_dict(base.state_dict())
    bn.freeze_stats()
    y = bn(x)
    dx = bn.backward(dy)
    assert all(r["mode"] == "frozen_stats" for r in ranks)
    # elementwise with the running statistics: each rank's part, bitwise
    assert np.array_equal(np.concatenate([r["y"] for r in ranks]), y)
    assert np.array_equal(np.concatenate([r["dx"] for r in ranks]), dx)
    # the parameter gradients are each rank's: their sum is the one process's
    for name in ("gamma", "beta"):
        total = sum(r["d" + name].astype(np.float64) for r in ranks)
        np.testing.assert_allclose(total, bn.grads[name], rtol=1e-5, atol=1e-5)
    for r in ranks:  # running statistics neither used for an update nor changed
        for k, v in base.state_dict().items():
            assert np.array_equal(r["state"][k], v), k


def test_only_virtual_batch_size_is_refused(frozen_run):
    """Ghost batches are per rank by definition: refused, naming itself; mask, residual
    and renorm are synchronised (frozen mode: normalised locally, no error)."""
    for r in frozen_run["results"][0]["ranks"]:
        message = r["errors"]["virtual_batch_size"]
        assert message.startswith("ValueError") and "virtual_batch_size" in message
        assert "per rank by definition" in message, message
        for name in ("mask", "residual", "renorm"):
            assert r["errors"][name] is None, (name, r["errors"][name])


# ---------------------------------------------------------------- issue 20's keywords, synchronised
from test_distributed import close, identical, requires_mpi  # noqa: E402

SYNCED_CASES = 9


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"n{n}")
def features_run(request, tmp_path_factory):
    return launch_script("mpi_features.py", request.param, tmp_path_factory, timeout=300)


def _union(case, inputs):
    """Single-process fastbn.forward/backward on the union of the batches (both
    need_dx values), with the case's keywords."""
    kw = case["kw"]
    rm, rv = inputs["running_mean"].copy(), inputs["running_var"].copy()
    y, cache = fastbn.forward(inputs["x"], inputs["gamma"], inputs["beta"], running_mean=rm,
                              running_var=rv, **kw)
    grads = fastbn.backward(inputs["dy"], cache)
    no_dx = fastbn.backward(inputs["dy"], cache, need_dx=False)
    return dict(y=y, grads=grads, no_dx=no_dx, running_mean=rm, running_var=rv,
                count=cache.count)


def _rtol(case):
    return 1e-5 if case["dtype"] == np.float32 else 1e-11


def _glue(ranks, key, index=None):
    return np.concatenate([m[key] if index is None else m[key][index] for m in ranks])


def test_keywords_match_one_process(features_run):
    cases = [r for r in features_run["results"] if "kw" in r["case"]]
    assert len(cases) == SYNCED_CASES
    for r in cases:
        case, ranks = r["case"], r["ranks"]
        exp, rtol, what = _union(case, r["inputs"]), _rtol(case), case["name"]
        assert 0 in case["split"] or len(case["split"]) == 2
        close(_glue(ranks, "y"), exp["y"], f"{what}: y", rtol)
        assert len(ranks[0]["grads"]) == len(exp["grads"]), what  # dresidual with residual
        for i, name in enumerate(("dx", "dgamma", "dbeta", "dresidual")[:len(exp["grads"])]):
            if name in ("dx", "dresidual"):
                close(_glue(ranks, "grads", i), exp["grads"][i], f"{what}: {name}", rtol)
                continue
            for rank, m in enumerate(ranks):
                close(m["grads"][i], exp["grads"][i], f"{what}: {name} on rank {rank}", rtol)
                close(m["no_dx"][i], exp["no_dx"][i], f"{what}: need_dx=False {name}", rtol)
            identical([m["grads"][i] for m in ranks], f"{what}: {name}")
        assert all(m["no_dx"][0] is None for m in ranks), what
        if len(exp["grads"]) == 4:
            close(_glue(ranks, "no_dx", 3), exp["no_dx"][3], f"{what}: need_dx=False dres", rtol)
        for key in ("running_mean", "running_var"):
            for rank, m in enumerate(ranks):
                close(m[key], exp[key], f"{what}: {key} on rank {rank}", rtol)
            identical([m[key] for m in ranks], f"{what}: {key}")
        # a masked run's statistics count the kept positions of every rank
        assert all(m["global_count"] == exp["count"] for m in ranks), what


def test_layer_keywords_match_batchnorm(features_run):
    for r in (r for r in features_run["results"] if "kw" in r["case"]):
        case, inputs, ranks = r["case"], r["inputs"], r["ranks"]
        kw, what = case["kw"], case["name"]
        ins = {k: kw[k] for k in ("mask", "residual") if k in kw}
        layer_kw = {k: v for k, v in kw.items() if k in ("axis", "activation",
                                                          "negative_slope", "renorm")}
        ref = fastbn.BatchNorm(inputs["gamma"].size, dtype=np.float64, **layer_kw)
        for step in range(2):
            y = ref(inputs["x"] * (1 + step), **ins)
            back = ref.backward(inputs["dy"])
            got = [m["layer"][step] for m in ranks]
            close(np.concatenate([g["y"] for g in got]), y, f"{what} step {step}: y",
                  _rtol(case))
            for i, b in enumerate(back if isinstance(back, tuple) else (back,)):
                close(np.concatenate([g["back"][i] if isinstance(g["back"], tuple)
                                      else g["back"] for g in got]), b,
                      f"{what} step {step}: backward output {i}", _rtol(case))
            for key in ("gamma", "beta"):
                for g in got:
                    close(g["d" + key], ref.grads[key], f"{what} step {step}: d{key}",
                          _rtol(case))
            for key, value in ref.state_dict().items():
                for g in got:
                    close(np.asarray(g["state"][key]), np.asarray(value),
                          f"{what} step {step}: {key}", _rtol(case))


def test_mismatched_keywords_raise_on_every_rank(features_run):
    cases = [r for r in features_run["results"] if "kw" not in r["case"]]
    words = {"mask_on_rank0": "flags", "renorm_bounds": "rmax", "renorm_on_rank0": "rmax",
             "slope": "negative slope", "activation": "activation",
             "residual_on_rank0": "flags", "channel_axes": "channel axes"}
    assert sorted(r["case"]["name"] for r in cases) == sorted(words)
    for r in cases:
        name = r["case"]["name"]
        for rank, m in enumerate(r["ranks"]):
            assert m["error"] == "MismatchError", (name, rank, m)
            assert words[name] in m["message"], (name, m["message"])
            assert m["untouched"], (name, rank)
    assert features_run["after"] is not None  # the ranks stayed in step


# ---------------------------------------------------------------- one process (COMM_SELF)
@requires_mpi
@pytest.mark.parametrize("kw", [
    dict(mask=True), dict(renorm=(1.3, 0.3)), dict(axis=(1, 2)),
    dict(activation="leaky_relu", negative_slope=0.3),
    dict(residual=True, activation="relu"),
    dict(mask=True, renorm=(1.2, 0.2), residual=True, activation="leaky_relu")],
    ids=lambda kw: "+".join(kw))
def test_sync_backward_finite_differences(kw):
    """float64 central differences of sum(y * w) through sync_forward on COMM_SELF, for
    x, gamma, beta and the residual (the statistics' dependence included; renorm's r and
    d constants, as in one process)."""
    from mpi4py import MPI
    from fastbn.distributed import sync_backward, sync_forward
    rng = np.random.default_rng(5)
    x = rng.normal(0.5, 1.5, (5, 3, 4))
    axis = kw.get("axis", 1)
    C = 12 if isinstance(axis, tuple) else 3
    gamma, beta = rng.uniform(0.5, 2, C), rng.normal(0, 1, C)
    # far from the batch's: renorm's r and d clip (constants, whose derivative is 0)
    rm, rv = np.full(C, -3.0), np.full(C, 0.1)
    kw = dict(kw)
    if kw.get("mask") is True:
        kw["mask"] = rng.random((5, 1, 4)) > 0.3
    if kw.get("residual") is True:
        kw["residual"] = rng.standard_normal(x.shape)
    w = rng.standard_normal(x.shape)

    def loss(x, gamma, beta, residual=None):
        k = dict(kw, residual=residual) if "residual" in kw else kw
        y, _ = sync_forward(x, gamma, beta, comm=MPI.COMM_SELF, running_mean=rm.copy(),
                            running_var=rv.copy(), **k)
        return float((y * w).sum())

    y, cache = sync_forward(x, gamma, beta, comm=MPI.COMM_SELF, running_mean=rm.copy(),
                            running_var=rv.copy(), **kw)
    grads = sync_backward(w, cache, comm=MPI.COMM_SELF)
    args = [x, gamma, beta] + ([kw["residual"]] if "residual" in kw else [])
    h = 1e-6
    for i, a in enumerate(args):
        num = np.empty(a.size)
        for j in range(a.size):
            plus, minus = [v.copy() for v in args], [v.copy() for v in args]
            plus[i].flat[j] += h
            minus[i].flat[j] -= h
            num[j] = (loss(*plus) - loss(*minus)) / (2 * h)
        np.testing.assert_allclose(grads[i].ravel(), num, rtol=1e-5, atol=1e-6,
                                   err_msg=f"argument {i} of {sorted(kw)}")
