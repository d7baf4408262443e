"""Every performance figure of the scale issue, each beside its anchor measured in the same run.

Runs, one after the other (never side by side: this machine has 2 cores):

1. evaluation: ``evaluation_speed.py`` — ``evaluate_embeddings`` vs pytorch-metric-learning's
   AccuracyCalculator and a bare faiss flat search, same embeddings;
2. k-means: ``kmeans_scale.py`` — slade's faiss k-means vs scikit-learn's MiniBatchKMeans;
3. student step: ``student_step.py`` — SLADE's student step vs a naive pseudo-label student's step.

``--quick`` uses sizes that finish in a few minutes; the defaults are the issue's sizes
(200,000 embeddings for evaluation, 1,000,000 x 128 into 10,000 clusters for k-means), which take
about an hour here. Each script prints its own ratios; this runner prints them together at the end.

    .venv/bin/python benchmarks/run.py --quick
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RATIO = re.compile(r"\d\.\d+x")  # the lines of a script's output that state a ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = {
        "evaluation": ["evaluation_speed.py", "--n", "20000" if args.quick else "200000"],
        "k-means": ["kmeans_scale.py"] + (["--n", "100000", "--k", "1000", "--centres", "1000"]
                                          if args.quick else []),
        "student step": ["student_step.py"] + (["--rounds", "5"] if args.quick else []),
    }
    summary = []
    for name, (script, *script_args) in runs.items():
        print(f"== {name}: {script} {' '.join(script_args)}", flush=True)
        t = time.perf_counter()
        done = subprocess.run([sys.executable, str(HERE / script), *script_args],
                              capture_output=True, text=True)
        print(done.stdout + done.stderr[-2000:] if done.returncode else done.stdout, flush=True)
        ratios = [line.strip() for line in done.stdout.splitlines() if RATIO.search(line)]
        outcome = "; ".join(ratios) if not done.returncode else f"FAILED (exit {done.returncode})"
        summary.append(f"{name} ({time.perf_counter() - t:.0f} s): {outcome}")
    print("== summary")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
