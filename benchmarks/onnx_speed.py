"""Embedding speed of an exported model.onnx on onnxruntime beside the PyTorch model, same run.

The model is the omniglot configs' network (``convnet4``, width 64, 128-d embeddings, 1 x 28 x 28
input), at random initialisation unless ``--checkpoint`` names a trained ``model.pt``: the speed
does not depend on the weights. It is exported with ``slade export`` (not timed), and both embed
the same ``--n`` 28x28 PNG files (bright strokes on dark, fixed seed), with one thread each
(``torch.set_num_threads(1)``; onnxruntime ``intra_op_num_threads=1``), batch ``--batch-size``:

* **files**: ``embed(paths)``: decoding, preprocessing and the network, as ``slade embed`` does;
* **network**: the network alone on the preprocessed ``(n, 1, 28, 28)`` float32 array.

Each of ``--repeats`` rounds times both, alternating which goes first, after one untimed warm-up
of each; min and median seconds give images/s. The embeddings are checked to agree (max |diff|).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/onnx_speed.py --n 1000 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tsne_speed import cpu_name

from slade.config import DataConfig, ModelConfig
from slade.inference import load_embedder, save_embedder
from slade.models.embedder import create_embedder
from slade.serving.export import export_embedder
from slade.serving.onnx_embedder import load_onnx_embedder, preprocess


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28] - 13.5
    files = []
    for i in range(n):
        a = rng.uniform(0, np.pi)
        ink = np.clip(255 * (1.5 - np.abs(xx * np.sin(a) - yy * np.cos(a))), 0, 255)
        pixels = np.clip(ink + rng.normal(0, 10, (28, 28)), 0, 255).astype(np.uint8)
        files.append(folder / f"{i:05d}.png")
        Image.fromarray(pixels).save(files[-1])
    return files


def timed(run) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    out = run()
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--checkpoint", type=Path,
                        help="a trained model.pt (default: convnet4 at random init)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import onnxruntime

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPU cores ({len(os.sched_getaffinity(0))} usable); "
          f"load average {os.getloadavg()[0]:.1f} at start; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            torch.manual_seed(0)
            config = ModelConfig()  # convnet4, width 64, 128-d: the omniglot configs' network
            model = create_embedder(config, 1)
            checkpoint = save_embedder(folder / "model.pt", model, config, DataConfig())
        started = time.perf_counter()
        export_embedder(checkpoint, folder / "model.onnx")
        print(f"model: {checkpoint if args.checkpoint else 'convnet4 width 64, 128-d, random init'}; "
              f"slade export to ONNX took {time.perf_counter() - started:.1f} s (not in the figures)")
        (folder / "images").mkdir()
        files = [str(f) for f in write_images(folder / "images", args.n)]
        pt = load_embedder(checkpoint, "cpu")
        ox = load_onnx_embedder(folder / "model.onnx", "cpu", threads=1)
        batch = preprocess([pt.decoder.decode(f) for f in files], ox.spec)
        x = torch.from_numpy(batch)

        @torch.no_grad()
        def torch_network() -> np.ndarray:
            return np.concatenate([pt.model(x[i:i + args.batch_size]).numpy()
                                   for i in range(0, len(x), args.batch_size)])

        def onnx_network() -> np.ndarray:
            return np.concatenate([ox.session.run(None, {ox.input_name: batch[i:i + args.batch_size]})[0]
                                   for i in range(0, len(batch), args.batch_size)])

        cases = {
            "files": {"PyTorch": lambda: pt.embed(files, args.batch_size),
                      "onnxruntime": lambda: ox.embed(files, args.batch_size)},
            "network": {"PyTorch": torch_network, "onnxruntime": onnx_network},
        }
        seconds: dict[tuple[str, str], list[float]] = {}
        for what, runs in cases.items():
            outs = {name: run() for name, run in runs.items()}  # warm-up, and the agreement check
            gap = float(np.abs(outs["onnxruntime"] - outs["PyTorch"]).max())
            print(f"{what}: {len(outs['PyTorch'])} embeddings, max |onnxruntime - PyTorch| = {gap:.1e}")
            for r in range(args.repeats):
                for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                    seconds.setdefault((what, name), []).append(timed(runs[name])[0])
        print(f"\n{args.n} images of 28x28, batch {args.batch_size}, 1 thread each, {args.repeats} "
              "interleaved repeats (images/s from the min and the median time)")
        print(f"{'what':<10}{'runtime':<14}{'min s':>8}{'median s':>10}{'img/s (min)':>13}"
              f"{'img/s (med)':>13}")
        for (what, name), times in seconds.items():
            best, median = min(times), statistics.median(times)
            print(f"{what:<10}{name:<14}{best:>8.3f}{median:>10.3f}{args.n / best:>13.0f}"
                  f"{args.n / median:>13.0f}")
        for what in cases:
            pt_s, ox_s = seconds[(what, "PyTorch")], seconds[(what, "onnxruntime")]
            print(f"{what}: onnxruntime / PyTorch images/s = "
                  f"{statistics.median(pt_s) / statistics.median(ox_s):.2f} (medians), "
                  f"{min(pt_s) / min(ox_s):.2f} (mins)")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
