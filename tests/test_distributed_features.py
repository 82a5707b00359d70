"""SyncBatchNorm and the keywords of issue 20: the frozen-statistics mode under
mpiexec -n 2 and -n 3 (one rank empty) against one process on the concatenated
batch; the keywords not synchronised raise errors naming them, on every rank."""
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


def test_unsynchronised_keywords_name_themselves(frozen_run):
    for r in frozen_run["results"][0]["ranks"]:
        for name, message in r["errors"].items():
            assert message is not None and name in message, (name, message)
        assert r["errors"]["virtual_batch_size"].startswith("ValueError")
        assert r["errors"]["mask"].startswith("TypeError")
