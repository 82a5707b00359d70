"""Train a small NumPy MLP on scikit-learn's digits, with and without fastbn.BatchNorm.

    pip install scikit-learn matplotlib
    python examples/train_mlp.py                      # BN vs no BN, same hyperparameters
    python examples/train_mlp.py --search 12          # random search for each, then train
    python examples/train_mlp.py --search 12 --workers 4  # its trials in 4 processes
    python examples/train_mlp.py --no-bn --epochs 50  # the plain network only

The network is 64-128-64-10: Linear -> BatchNorm(+fused ReLU) -> Linear ->
BatchNorm(+fused ReLU) -> Linear -> softmax, trained with mini-batch gradient
descent with momentum (an exponentially weighted average of the gradients,
``v = beta * v + (1 - beta) * g``, ``p -= lr * v``). Without batch norm the hidden
layers are Linear (with bias) -> ReLU. The digits data set ships with
scikit-learn: nothing is downloaded.

``--search N`` tunes the learning rate and momentum of each network on a held-out
validation split by random search on a log scale: the learning rate as
``10 ** uniform(-4, 0)`` and beta as ``1 - 10 ** uniform(-3, -1)`` (beta from 0.9 to
0.999), N coarse trials, then N fine trials in the ranges spanned by the best
coarse trials. The test split is only used for the final figures.

``--workers K`` runs the trials of each search stage in K worker processes at once
(the course notes' "caviar" strategy: many models trained in parallel rather than
one babysat), with the platform's default start method. Each trial uses the same
seeds as in a sequential search, and fastbn's results do not depend on its thread
count, so the search, and everything after it, is the same as with ``--workers 1``.
Every process then runs fastbn on one thread: the K workers already use the cores.
"""
import argparse
import concurrent.futures
import sys
import time

import numpy as np

import fastbn

try:
    BatchNorm = fastbn.BatchNorm
except AttributeError:  # older fastbn without the export
    from fastbn.layers import BatchNorm

LR_RANGE = (-4.0, 0.0)     # log10 of the learning rate
BETA_RANGE = (-3.0, -1.0)  # log10 of (1 - beta)


# ---------------------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------------------
class Linear:
    """y = x @ W + b with W of shape (in, out); He initialisation."""

    def __init__(self, n_in, n_out, rng, *, bias=True, dtype=np.float32):
        self.params = {"W": (rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(dtype)}
        if bias:
            self.params["b"] = np.zeros(n_out, dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.x = None

    def __call__(self, x):
        self.x = x
        y = x @ self.params["W"]
        if "b" in self.params:
            y += self.params["b"]
        return y

    def backward(self, dy):
        self.grads["W"][...] = self.x.T @ dy  # (matmul with out= skips BLAS here)
        if "b" in self.params:
            self.grads["b"][...] = dy.sum(axis=0)
        return dy @ self.params["W"].T

    def train(self, mode=True):
        return self


class ReLU:
    params = grads = {}

    def __call__(self, x):
        self.mask = x > 0
        return x * self.mask

    def backward(self, dy):
        return dy * self.mask

    def train(self, mode=True):
        return self


class MLP:
    def __init__(self, sizes=(64, 128, 64, 10), *, batch_norm=True, seed=0, dtype=np.float32):
        rng = np.random.default_rng(seed)
        self.layers = []
        for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
            # a bias before batch norm is cancelled by the mean subtraction: beta replaces it
            self.layers.append(Linear(n_in, n_out, rng, bias=not batch_norm, dtype=dtype))
            self.layers.append(BatchNorm(n_out, activation="relu", dtype=dtype) if batch_norm
                               else ReLU())
        self.layers.append(Linear(sizes[-2], sizes[-1], rng, dtype=dtype))
        self.dtype = np.dtype(dtype)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dlogits):
        for layer in reversed(self.layers):
            dlogits = layer.backward(dlogits)
        return dlogits

    def train(self, mode=True):
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def parameters(self):
        """(name, parameter, gradient) triples; parameters are updated in place."""
        for i, layer in enumerate(self.layers):
            for key in layer.params:
                yield f"{i}.{key}", layer.params[key], layer.grads[key]


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy and its gradient with respect to the logits (float64 inside)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = -log_p[np.arange(n), labels].mean()
    dlogits = np.exp(log_p)
    dlogits[np.arange(n), labels] -= 1.0
    return loss, (dlogits / n).astype(logits.dtype)


class Momentum:
    """Gradient descent with momentum: v = beta * v + (1 - beta) * g; p -= lr * v."""

    def __init__(self, model, lr, beta):
        self.model, self.lr, self.beta = model, lr, beta
        self.v = {name: np.zeros_like(p) for name, p, _ in model.parameters()}

    def step(self):
        for name, p, g in self.model.parameters():
            v = self.v[name]
            v *= self.beta
            v += (1.0 - self.beta) * g
            p -= self.lr * v


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------
def load_data(seed):
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        sys.exit("this example needs scikit-learn: pip install scikit-learn matplotlib")
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)  # pixel intensities 0..16 -> 0..1
    X_rest, X_test, y_rest, y_test = train_test_split(X, y, test_size=0.2, stratify=y,
                                                      random_state=seed)
    X_train, X_val, y_train, y_val = train_test_split(X_rest, y_rest, test_size=0.2,
                                                      stratify=y_rest, random_state=seed)
    return {"train": (X_train, y_train), "val": (X_val, y_val), "test": (X_test, y_test)}


def evaluate(model, X, y, batch_size=512):
    model.eval()
    losses, correct = 0.0, 0
    for i in range(0, len(X), batch_size):
        logits = model(X[i:i + batch_size])
        loss, _ = softmax_cross_entropy(logits, y[i:i + batch_size])
        losses += loss * len(logits)
        correct += int((logits.argmax(axis=1) == y[i:i + batch_size]).sum())
    model.train()
    return losses / len(X), correct / len(X)


def train(data, *, batch_norm, lr, beta, epochs, batch_size, seed, label=None, every=5):
    """Train one network; returns (model, history of per-epoch figures)."""
    X, y = data["train"]
    model = MLP(batch_norm=batch_norm, seed=seed)
    opt = Momentum(model, lr, beta)
    rng = np.random.default_rng(seed + 1)
    hist = {"train_loss": [], "val_loss": [], "val_acc": []}
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(X))
        total = 0.0
        # drop a last batch of one sample: batch norm needs two values per channel
        stop = len(X) - 1 if len(X) % batch_size == 1 else len(X)
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]
            loss, dlogits = softmax_cross_entropy(model(X[idx]), y[idx])
            model.backward(dlogits)
            opt.step()
            total += loss * len(idx)
        train_loss = total / stop
        val_loss, val_acc = evaluate(model, *data["val"])
        if not np.isfinite(train_loss):  # diverged: no point going on
            hist["train_loss"].append(np.nan)
            hist["val_loss"].append(np.nan)
            hist["val_acc"].append(0.1)
            break
        hist["train_loss"].append(train_loss)
        hist["val_loss"].append(val_loss)
        hist["val_acc"].append(val_acc)
        if label and (epoch % every == 0 or epoch == 1 or epoch == epochs):
            print(f"  [{label}] epoch {epoch:3d}/{epochs}  train loss {train_loss:.4f}  "
                  f"val loss {val_loss:.4f}  val acc {100 * val_acc:5.1f}%", flush=True)
    return model, hist


def _sample(rng, n, lr_range, beta_range):
    return [(10 ** rng.uniform(*lr_range), 1 - 10 ** rng.uniform(*beta_range)) for _ in range(n)]


def _score(hist):
    """Best trials first: highest final validation accuracy, then lowest validation loss."""
    loss = hist["val_loss"][-1]
    return (-hist["val_acc"][-1], loss if np.isfinite(loss) else np.inf)


_WORKER_DATA = None  # the data set, sent once to each worker process


def _init_worker(data):
    """Worker set-up: the data, and one thread each for fastbn and BLAS."""
    global _WORKER_DATA
    _WORKER_DATA = data
    fastbn.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=1, user_api="blas")


def _trial(batch_norm, lr, beta, epochs, batch_size, seed, data=None):
    """One search trial: its score (see _score)."""
    _, hist = train(_WORKER_DATA if data is None else data, batch_norm=batch_norm, lr=lr,
                    beta=beta, epochs=epochs, batch_size=batch_size, seed=seed)
    return _score(hist)


def random_search(data, *, batch_norm, n, epochs, batch_size, seed, pool=None):
    """Coarse-to-fine random search on a log scale over (learning rate, momentum beta).

    With a `pool` (concurrent.futures executor whose workers hold the data), the trials
    of each stage run in it; the result is the same as without."""
    rng = np.random.default_rng(seed + (1000 if batch_norm else 2000))
    name = "BN" if batch_norm else "no BN"
    lr_range, beta_range = LR_RANGE, BETA_RANGE
    trials = []
    for stage in ("coarse", "fine"):
        print(f"  [{name}] {stage} search: lr = 10**U({lr_range[0]:.2f}, {lr_range[1]:.2f}), "
              f"beta = 1 - 10**U({beta_range[0]:.2f}, {beta_range[1]:.2f}), {n} trials, "
              f"{epochs} epochs each", flush=True)
        params = _sample(rng, n, lr_range, beta_range)
        if pool is None:
            scores = [_trial(batch_norm, lr, beta, epochs, batch_size, seed, data)
                      for lr, beta in params]
        else:
            futures = [pool.submit(_trial, batch_norm, lr, beta, epochs, batch_size, seed)
                       for lr, beta in params]
            scores = [f.result() for f in futures]
        stage_trials = sorted((score, lr, beta) for score, (lr, beta) in zip(scores, params))
        for (acc, loss), lr, beta in stage_trials[:3]:
            print(f"    lr {lr:.2e}  beta {beta:.4f}  ->  val acc {-100 * acc:5.1f}%  "
                  f"val loss {loss:.4f}")
        trials += stage_trials
        # fine ranges: the span of the best quarter of the coarse trials, with a margin
        # of a tenth of the coarse range on each side
        top = stage_trials[:max(2, n // 4)]
        lrs = np.log10([t[1] for t in top])
        betas = np.log10([1 - t[2] for t in top])
        m_lr = 0.1 * (LR_RANGE[1] - LR_RANGE[0])
        m_b = 0.1 * (BETA_RANGE[1] - BETA_RANGE[0])
        lr_range = (max(LR_RANGE[0], lrs.min() - m_lr), min(LR_RANGE[1], lrs.max() + m_lr))
        beta_range = (max(BETA_RANGE[0], betas.min() - m_b), min(BETA_RANGE[1], betas.max() + m_b))
    _, lr, beta = min(trials)
    print(f"  [{name}] chosen: lr {lr:.3e}, beta {beta:.4f}", flush=True)
    return lr, beta


def plot(histories, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"BN": dict(color="tab:blue"), "no BN": dict(color="tab:orange")}
    for name, (hist, r) in histories.items():
        epochs = np.arange(1, len(hist["train_loss"]) + 1)
        ax_loss.plot(epochs, hist["train_loss"], label=f"{name}: train (mini-batch mean)",
                     **styles[name])
        ax_loss.plot(epochs, hist["val_loss"], "--", label=f"{name}: validation", **styles[name])
        ax_acc.plot(epochs, 100 * np.asarray(hist["val_acc"]),
                    label=f"{name} (lr {r['lr']:.3g}, beta {r['beta']:.4g}; "
                          f"test {100 * r['test_acc']:.1f}%)", **styles[name])
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", yscale="log", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
    ax_acc.set_ylim(max(0, ax_acc.get_ylim()[0]), 100)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"learning curves saved to {path}")


def main(argv=None):
    try:  # installed with scikit-learn
        from threadpoolctl import threadpool_limits
    except ImportError:
        return _main(argv)
    # The matrices here are tiny (64 x 128): a multithreaded BLAS spends far longer waking
    # and synchronising its threads than computing, and competes with fastbn's threads.
    with threadpool_limits(limits=1, user_api="blas"):
        return _main(argv)


def _main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30, help="epochs of the final training (30)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1, help="learning rate without --search (0.1)")
    p.add_argument("--beta", type=float, default=0.9, help="momentum without --search (0.9)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--search", type=int, default=0, metavar="N",
                   help="random search with N coarse and N fine trials per network (0: none)")
    p.add_argument("--search-epochs", type=int, default=None,
                   help="epochs per search trial (default: half of --epochs)")
    p.add_argument("--workers", type=int, default=1, metavar="K",
                   help="worker processes running the search trials in parallel (1: none)")
    p.add_argument("--no-bn", action="store_true", help="train only the network without batch norm")
    p.add_argument("--plot", default="train_mlp.png", help="where to save the learning curves")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 2 or args.search < 0 or args.workers < 1:
        p.error("--epochs must be >= 1, --batch-size >= 2, --search >= 0 and --workers >= 1")
    t0 = time.perf_counter()
    data = load_data(args.seed)
    if not (args.search and args.workers > 1):
        return _run(args, data, t0)
    # One fastbn thread here too, from the start: a process forked (the default start
    # method on Linux) after fastbn ran on several OpenMP threads may hang in the OpenMP
    # runtime; and the workers already use the cores.
    previous = fastbn.set_num_threads(1)
    try:
        with concurrent.futures.ProcessPoolExecutor(args.workers, initializer=_init_worker,
                                                    initargs=(data,)) as pool:
            return _run(args, data, t0, pool)
    finally:
        fastbn.set_num_threads(previous)


def _run(args, data, t0, pool=None):
    sizes = {k: len(v[1]) for k, v in data.items()}
    print(f"digits: {sizes['train']} train / {sizes['val']} validation / {sizes['test']} test "
          f"images; fastbn backend: {fastbn.backend}")
    variants = [False] if args.no_bn else [True, False]
    histories = {}
    for bn in variants:
        name = "BN" if bn else "no BN"
        if args.search:
            search_epochs = args.search_epochs or max(1, args.epochs // 2)
            lr, beta = random_search(data, batch_norm=bn, n=args.search, epochs=search_epochs,
                                     batch_size=args.batch_size, seed=args.seed, pool=pool)
        else:
            lr, beta = args.lr, args.beta
        print(f"training {name}: lr {lr:.3g}, beta {beta:.4g}, {args.epochs} epochs, "
              f"batch size {args.batch_size}", flush=True)
        model, hist = train(data, batch_norm=bn, lr=lr, beta=beta, epochs=args.epochs,
                            batch_size=args.batch_size, seed=args.seed, label=name,
                            every=max(1, args.epochs // 6))
        test_loss, test_acc = evaluate(model, *data["test"])
        histories[name] = (hist, dict(lr=lr, beta=beta, test_loss=test_loss, test_acc=test_acc))

    print("\nresults (test split):")
    for name, (hist, r) in histories.items():
        print(f"  {name:6s} lr {r['lr']:.3g}  beta {r['beta']:.4g}  test loss {r['test_loss']:.4f}  "
              f"test accuracy {100 * r['test_acc']:.1f}%")
    print(f"total time {time.perf_counter() - t0:.1f} s")
    how = f"random search ({args.search}+{args.search} trials)" if args.search \
        else f"lr {args.lr:g}, beta {args.beta:g}"
    plot(histories, args.plot, f"64-128-64-10 MLP on digits, {how}")
    return histories


if __name__ == "__main__":
    main()
