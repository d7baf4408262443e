"""Speed of ``slade.evaluate_embeddings`` against pytorch-metric-learning's AccuracyCalculator.

Clustered random embeddings (fixed seed): ``--classes`` Gaussian centres in ``--d`` dimensions,
``n / classes`` points per class (centre + ``--sigma`` * noise), shuffled. Every embedding queries
all the others. Three timings, in one process, after a small warm-up of each:

* PML: ``AccuracyCalculator(include=(precision_at_1, r_precision, mean_average_precision_at_r),
  k="max_bin_count")`` on the L2-normalised embeddings (its default k searches all n - 1
  neighbours, an n x n result). Its FaissKNN runs a faiss IndexFlatL2 search for k + 1.
* faiss: the same IndexFlatL2 add + search for k + 1 neighbours alone (the anchor).
* ours: ``evaluate_embeddings(x, labels, nmi=False)`` (raw embeddings, normalised inside).

NMI is left out of all of them (``--nmi`` adds it to PML and ours). The values of PML and ours
are compared (max |difference| of precision@1, r_precision, map@r); ratios are PML's time over
each method's time. ``--ours-only`` (e.g. with ``--n 1000000``) runs only ours and reports
the peak resident memory of the process; ``--max-memory-mb`` bounds the search's working memory
(a window of row blocks keeps a running top k when all of them do not fit); ``--ivf NPROBE``
also runs the approximate ``index="ivf"`` and prints its time and what it loses against ours.

    .venv/bin/python benchmarks/evaluation_speed.py --n 50000
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import time

import faiss
import numpy as np
import torch

from slade.evaluation.retrieval import _plan, evaluate_embeddings

PAIRS = {
    "precision_at_1": "precision@1",
    "r_precision": "r_precision",
    "mean_average_precision_at_r": "map@r",
    "NMI": "nmi",
}


def make_data(n: int, d: int, classes: int, sigma: float, seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes)
    centres = rng.standard_normal((classes, d)).astype(np.float32)
    x = centres[labels] + sigma * rng.standard_normal((n, d), dtype=np.float32)
    return x, labels


def run_pml(x: torch.Tensor, labels: torch.Tensor, nmi: bool) -> dict[str, float]:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    include = ("precision_at_1", "r_precision", "mean_average_precision_at_r") + (
        ("NMI",) if nmi else ()
    )
    calc = AccuracyCalculator(include=include, k="max_bin_count", device=torch.device("cpu"))
    return calc.get_accuracy(x, labels)


def run_faiss(x: np.ndarray, k: int) -> None:
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    index.search(x, k + 1)


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} CPU cores, {ram:.0f} GiB RAM; {torch.get_num_threads()} torch "
        f"threads, {faiss.omp_get_max_threads()} faiss threads; torch {torch.__version__}, "
        f"faiss {faiss.__version__}, numpy {np.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--sigma", type=float, default=1.75, help="noise scale (centres ~ N(0, I))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--nmi", action="store_true", help="include NMI in PML and ours")
    parser.add_argument("--ours-only", action="store_true", help="skip PML and faiss")
    parser.add_argument("--ivf", type=int, metavar="NPROBE",
                        help="also time index='ivf' with this nprobe against ours (exact)")
    parser.add_argument("--max-memory-mb", type=float,
                        help="evaluate_embeddings' bound on its working memory (default: none)")
    args = parser.parse_args()
    logging.getLogger("PML").setLevel(logging.ERROR)

    print(f"machine: {machine()}")
    x, labels = make_data(args.n, args.d, args.classes, args.sigma, args.seed)
    k = int(np.bincount(labels).max()) - 1
    print(f"data: n={args.n} d={args.d} classes={args.classes} sigma={args.sigma} "
          f"seed={args.seed}; k = largest R = {k}; NMI {'included' if args.nmi else 'excluded'}; "
          f"max_memory_mb {args.max_memory_mb}")
    if args.max_memory_mb:
        chunk, window, symmetric = _plan(args.n, k, True, args.chunk_size, args.max_memory_mb)
        blocks = -(-args.n // chunk)
        plan = (f"window {window} of {blocks} row blocks" if window else "all row blocks") \
            if symmetric else "streaming faiss.knn"
        print(f"search plan: chunk {chunk}, {plan}")
    xn = None if args.ours_only else torch.nn.functional.normalize(torch.from_numpy(x), dim=1)

    def ours(x=x, labels=labels):
        return evaluate_embeddings(x, labels, nmi=args.nmi, chunk_size=args.chunk_size,
                                   max_memory_mb=args.max_memory_mb)

    small = slice(0, 2000)  # warm-up: imports, thread pools, allocator
    ours(x[small], labels[small])
    if not args.ours_only:
        run_pml(xn[small], torch.from_numpy(labels[small]), args.nmi)
        run_faiss(xn[small].numpy(), k)

    rows = []
    if not args.ours_only:
        t_pml, pml = timed(run_pml, xn, torch.from_numpy(labels), args.nmi)
        rows.append(("PML AccuracyCalculator", t_pml))
        t_faiss, _ = timed(run_faiss, xn.numpy(), k)
        rows.append(("faiss IndexFlatL2 search (k+1)", t_faiss))
    t_ours, metrics = timed(ours)
    rows.append(("slade evaluate_embeddings", t_ours))
    if args.ivf:
        t_ivf, approx = timed(lambda: evaluate_embeddings(x, labels, nmi=args.nmi, index="ivf",
                                                          nprobe=args.ivf))
        rows.append((f"slade, index=ivf nprobe={args.ivf}", t_ivf))

    print(f"\n{'method':34s} {'seconds':>9s} {'PML / method':>13s}")
    for name, seconds in rows:
        ratio = f"{t_pml / seconds:12.2f}x" if not args.ours_only else "           -"
        print(f"{name:34s} {seconds:9.2f} {ratio}")
    print("\nours: " + ", ".join(f"{key}={value:.6f}" for key, value in metrics.items()))
    if args.ivf:
        print("ivf:  " + ", ".join(f"{key}={value:.6f}" for key, value in approx.items()))
        print(f"ivf / exact time: {t_ivf / t_ours:.2f}x; index_recall {approx['index_recall']:.4f}; "
              "metric loss: " + ", ".join(f"{key} {approx[key] - metrics[key]:+.4f}"
                                         for key in metrics))
    if not args.ours_only:
        diffs = {ours_key: abs(pml[pml_key] - metrics[ours_key])
                 for pml_key, ours_key in PAIRS.items() if pml_key in pml}
        worst = max(diffs.values())
        print("PML:  " + ", ".join(f"{PAIRS[key]}={value:.6f}" for key, value in pml.items()))
        print(f"max |PML - ours| = {worst:.2e} ({'agree' if worst <= 1e-6 else 'DIFFER'} to 1e-6)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
