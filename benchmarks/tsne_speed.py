"""Speed of the t-SNE behind ``slade tsne`` (openTSNE) against scikit-learn's ``TSNE``.

Clustered random embeddings (fixed seed): ``--classes`` Gaussian centres in ``--d`` dimensions,
``n / classes`` points per class (centre + ``--sigma`` * noise), L2-normalised as embeddings are.
Both libraries run the same schedule: perplexity 30, PCA initialisation, automatic learning rate,
250 early-exaggeration iterations + 500 more (openTSNE's defaults; scikit-learn's ``max_iter``
set to 750 to match).

* openTSNE: ``slade.analysis.tsne.tsne_2d``, which uses FFT-interpolated gradients (FIt-SNE) from
  10,000 points up and Barnes-Hut below, on every core (``n_jobs=-1``).
* scikit-learn: ``TSNE(method="barnes_hut", n_jobs=-1)``, in a child process killed after
  ``--sklearn-timeout`` seconds.

Each is timed on ``--n`` points and on the first ``--subset`` points. The quality check is the
fraction of points whose nearest neighbour on the 2-d map belongs to their own cluster.

    .venv/bin/python benchmarks/tsne_speed.py --n 20000 --subset 5000 --sklearn-timeout 300
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

import numpy as np


def make_data(n: int, d: int, classes: int, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes)
    centres = rng.standard_normal((classes, d)).astype(np.float32)
    x = centres[labels] + sigma * rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.machine())


def neighbour_agreement(coords: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of points whose nearest other point on the map has their label."""
    import faiss

    _, idx = faiss.knn(np.ascontiguousarray(coords, dtype=np.float32),
                       np.ascontiguousarray(coords, dtype=np.float32), 2)
    return float((labels[idx[:, 1]] == labels).mean())


def run_opentsne(x: np.ndarray) -> np.ndarray:
    from slade.analysis.tsne import tsne_2d

    return tsne_2d(x, perplexity=30.0, seed=0, n_jobs=-1)


def run_sklearn(x: np.ndarray) -> np.ndarray:
    from sklearn.manifold import TSNE

    return TSNE(perplexity=30.0, init="pca", learning_rate="auto", max_iter=750, method="barnes_hut",
                n_jobs=-1, random_state=0).fit_transform(x)


def _child(x: np.ndarray, queue: mp.Queue) -> None:
    started = time.perf_counter()
    coords = run_sklearn(x)
    queue.put((time.perf_counter() - started, coords))


def time_sklearn(x: np.ndarray, timeout: float) -> tuple[float | None, np.ndarray | None]:
    """``(seconds, coords)``, or ``(None, None)`` when it ran past ``timeout`` and was killed."""
    queue: mp.Queue = mp.get_context("fork").Queue()
    child = mp.get_context("fork").Process(target=_child, args=(x, queue))
    child.start()
    try:
        return queue.get(timeout=timeout)
    except Exception:  # queue.Empty: still running
        return None, None
    finally:
        child.kill()
        child.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--subset", type=int, default=5_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--sklearn-timeout", type=float, default=300.0)
    args = parser.parse_args()

    import openTSNE
    import sklearn

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPU cores; "
          f"load average {os.getloadavg()[0]:.1f} at start; openTSNE {openTSNE.__version__}, "
          f"scikit-learn {sklearn.__version__}, numpy {np.__version__}")
    x, labels = make_data(args.n, args.d, args.classes, args.sigma, seed=0)
    print(f"data: n={args.n} d={args.d} classes={args.classes} sigma={args.sigma} seed=0, L2-normalised")
    print(f"\n{'method':<44}{'points':>8}{'seconds':>10}{'1-NN same cluster':>20}")
    for n in (args.n, args.subset):
        started = time.perf_counter()
        coords = run_opentsne(x[:n])
        seconds = time.perf_counter() - started
        method = "openTSNE (FFT)" if n >= 10_000 else "openTSNE (Barnes-Hut)"
        print(f"{method:<44}{n:>8}{seconds:>10.1f}{neighbour_agreement(coords, labels[:n]):>20.3f}",
              flush=True)
    for n in (args.subset, args.n):
        seconds, coords = time_sklearn(x[:n], args.sklearn_timeout)
        if seconds is None:
            limit = f"> {args.sklearn_timeout:g}"
            print(f"{'scikit-learn TSNE (Barnes-Hut)':<44}{n:>8}{limit:>10}{'(killed)':>20}", flush=True)
        else:
            print(f"{'scikit-learn TSNE (Barnes-Hut)':<44}{n:>8}{seconds:>10.1f}"
                  f"{neighbour_agreement(coords, labels[:n]):>20.3f}", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
