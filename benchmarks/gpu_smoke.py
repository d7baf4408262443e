"""GPU smoke test: a ResNet-50 teacher and SLADE student at 224x224 on random-content images.

Writes a small class-folder data set of random-content JPEGs (coloured noise with a class-specific
shape), then runs ``slade run`` with ``pretrain.enabled=false``, a ResNet-50 (timm, random init:
no download) at 224x224, bf16 autocast and channels-last (the engine turns both on for CUDA), and
loader workers. Prints the images/s of the teacher step and of the student step (median of the
logged windows after the first), the student/teacher ratio per image, and the GPU's name.

    bash benchmarks/gpu_smoke.sh            # or: python benchmarks/gpu_smoke.py --steps 300
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from slade import run_layout as layout
from slade.config import load_config
from slade.pipeline import run


def write_images(root: Path, classes: int, per_class: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class{c:04d}"
        folder.mkdir(parents=True)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        box = rng.integers(size // 8, size // 2, 4)
        for i in range(per_class):
            noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            image = Image.fromarray(noise)
            x, y = rng.integers(0, size // 2, 2)
            ImageDraw.Draw(image).ellipse([x, y, x + box[0] + size // 4, y + box[1] + size // 4],
                                          fill=colour)
            image.save(folder / f"{i:03d}.jpg", quality=90)


def step_rate(log: Path) -> float:
    rates = [e["images_per_s"] for e in map(json.loads, log.read_text().splitlines())
             if "images_per_s" in e]
    return statistics.median(rates[1:] or rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64, help="labeled (and unlabeled) batch size")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        write_images(tmp / "labeled", 64, 16, args.size + 32, 0)
        write_images(tmp / "test", 16, 8, args.size + 32, 1)
        write_images(tmp / "unlabeled", 64, 16, args.size + 32, 2)
        print(f"data written in {time.perf_counter() - t:.0f} s", flush=True)
        overrides = [
            "data.dataset=folders", f"data.labeled={tmp / 'labeled'}", f"data.test={tmp / 'test'}",
            f"data.unlabeled={tmp / 'unlabeled'}", f"data.image_size={args.size}",
            f"data.resize={args.size + 32}", "data.channels=3", "data.augmentation=photo",
            "data.dark_background=false", f"model.backbone={args.backbone}", "model.embedding_dim=128",
            f"device={args.device}", "pretrain.enabled=false",
            f"teacher.steps={args.steps}", f"teacher.batch_size={args.batch}",
            f"teacher.num_workers={args.workers}", "teacher.log_every=20", "teacher.checkpoint_every=0",
            f"student.steps={args.steps}", f"student.basis_warmup_steps={args.steps // 5}",
            f"student.batch_size={args.batch}", f"student.unlabeled_batch_size={args.batch}",
            f"student.num_workers={args.workers}", "student.log_every=20", "student.checkpoint_every=0",
            "pseudo_labels.clusters=32",
        ]
        config = load_config(None, overrides)
        t = time.perf_counter()
        run(config, tmp / "run")
        seconds = time.perf_counter() - t
        teacher = step_rate(tmp / "run" / layout.TEACHER / layout.LOG)
        student = step_rate(tmp / "run" / layout.STUDENT / layout.LOG)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device: {device}; {args.backbone} at {args.size}x{args.size}, batch {args.batch} "
          f"(+{args.batch} unlabeled for the student), {args.steps} steps each, run {seconds:.0f} s")
    print(f"teacher step: {teacher:.0f} images/s")
    print(f"student step: {student:.0f} images/s (labeled + unlabeled); "
          f"time per image student/teacher = {teacher / student:.2f}x")


if __name__ == "__main__":
    main()
