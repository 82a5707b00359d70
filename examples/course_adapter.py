"""fastbn in a NumPy trainer written in the style of a course assignment.

Course code calls ``batchnorm_forward(x, gamma, beta, bn_param)`` and
``batchnorm_backward(dout, cache)``, with a ``bn_param`` dict holding ``mode``
("train" or "test"), ``eps``, ``momentum`` as the weight of the *old* running value
(0.9) and the running statistics, whose variance is the *biased* batch variance.
The adapter below (the two functions, 15 lines) maps that onto fastbn's arguments:
``momentum = 1 - bn_param["momentum"]`` and ``unbiased_running_var=False``.

Run ``python examples/course_adapter.py``: a two-layer network with batch norm
(affine - batchnorm - relu - affine - softmax) trained by SGD on synthetic data.
"""
import numpy as np

import fastbn


# ---- the adapter -----------------------------------------------------------------------
def batchnorm_forward(x, gamma, beta, bn_param):
    """Course signature; running statistics live in bn_param, updated in place."""
    D = x.shape[1]
    running_mean = bn_param.setdefault("running_mean", np.zeros(D, dtype=x.dtype))
    running_var = bn_param.setdefault("running_var", np.zeros(D, dtype=x.dtype))
    return fastbn.forward(x, gamma, beta, eps=bn_param.get("eps", 1e-5),
                          training=bn_param["mode"] == "train",
                          running_mean=running_mean, running_var=running_var,
                          momentum=1 - bn_param.get("momentum", 0.9),  # old value's weight
                          unbiased_running_var=False)  # course code keeps the biased one


def batchnorm_backward(dout, cache):
    """Returns (dx, dgamma, dbeta)."""
    return fastbn.backward(dout, cache)
# ---- end of the adapter ----------------------------------------------------------------


def init_net(n_in, n_hidden, n_out, rng):
    """Parameters of affine - batchnorm - relu - affine, course style."""
    return {"W1": rng.normal(0, np.sqrt(2 / n_in), (n_in, n_hidden)), "b1": np.zeros(n_hidden),
            "gamma1": np.ones(n_hidden), "beta1": np.zeros(n_hidden),
            "W2": rng.normal(0, np.sqrt(2 / n_hidden), (n_hidden, n_out)), "b2": np.zeros(n_out)}


def loss_and_grads(params, bn_param, X, y=None):
    """Scores (y None) or (softmax loss, grads), as a course's ``loss`` method."""
    h = X @ params["W1"] + params["b1"]
    hn, bn_cache = batchnorm_forward(h, params["gamma1"], params["beta1"], bn_param)
    a = np.maximum(hn, 0)
    scores = a @ params["W2"] + params["b2"]
    if y is None:
        return scores
    shifted = scores - scores.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    N = X.shape[0]
    loss = -np.log(probs[np.arange(N), y]).mean()
    dscores = probs.copy()
    dscores[np.arange(N), y] -= 1
    dscores /= N
    grads = {"W2": a.T @ dscores, "b2": dscores.sum(axis=0)}
    dhn = (dscores @ params["W2"].T) * (hn > 0)
    dh, grads["gamma1"], grads["beta1"] = batchnorm_backward(dhn, bn_cache)
    grads["W1"], grads["b1"] = X.T @ dh, dh.sum(axis=0)
    return loss, grads


def make_data(n, rng, n_in=20, n_classes=3):
    centres = rng.normal(0, 3, (n_classes, n_in))
    y = rng.integers(0, n_classes, n)
    return centres[y] + rng.normal(0, 1, (n, n_in)), y


def train(steps=200, batch=64, lr=0.1, seed=0):
    """SGD on synthetic blobs; returns (final training loss, test accuracy)."""
    rng = np.random.default_rng(seed)
    X, y = make_data(2000, rng)
    params = init_net(X.shape[1], 32, 3, rng)
    bn_param = {"mode": "train", "momentum": 0.9, "eps": 1e-5}
    for _ in range(steps):
        idx = rng.integers(0, 1500, batch)
        loss, grads = loss_and_grads(params, bn_param, X[idx], y[idx])
        for k in params:
            params[k] -= lr * grads[k]
    bn_param["mode"] = "test"
    accuracy = (loss_and_grads(params, bn_param, X[1500:]).argmax(axis=1) == y[1500:]).mean()
    return loss, accuracy


if __name__ == "__main__":
    loss, accuracy = train()
    print(f"final training loss {loss:.4f}, test accuracy {accuracy:.3f}")
