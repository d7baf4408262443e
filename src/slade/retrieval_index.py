"""Retrieval for users: embed a gallery once with a trained model, then query it with new images.

    INDEX_DIR/model.pt       the embedder (a copy of the checkpoint, so the index stands alone), or
    INDEX_DIR/model.onnx     a copy of the ``slade export`` ONNX file it was built with (no torch needed)
    INDEX_DIR/index.faiss    faiss ``IndexFlatIP`` over the L2-normalised embeddings: exact cosine search
    INDEX_DIR/images.json    the gallery images, in index order
    INDEX_DIR/index.json     what built it: checkpoint, image count, dimension, skipped images

The folder is built under a temporary name beside ``INDEX_DIR`` and renamed into place, so an
interrupted build never leaves a half-written index, and rebuilding replaces an index whole.

>>> build_index("runs/demo/student/model.pt", ["photos/"], "gallery_index")
>>> RetrievalIndex.load("gallery_index").search(["query.png"], k=10)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np

from slade.data.folders import IMAGE_EXTENSIONS
from slade.errors import CheckpointError, DataError
from slade.serving import is_onnx, load_embedder

if TYPE_CHECKING:
    from slade.inference import Embedder
    from slade.serving.onnx_embedder import OnnxEmbedder

MODEL = "model.pt"
ONNX_MODEL = "model.onnx"
INDEX = "index.faiss"
IMAGES = "images.json"
MANIFEST = "index.json"
# Images decoded and embedded at a time: bounds memory for any gallery size.
CHUNK = 1024


@dataclass
class Neighbour:
    rank: int
    image: str
    similarity: float


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly, and those found (recursively, sorted) in folders."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    return files


def _embed(embedder: Embedder | OnnxEmbedder, files: list[Path],
           batch_size: int) -> tuple[np.ndarray, list[int], list]:
    """Embeddings of the decodable files, their positions, and ``(file, reason)`` of the others."""
    parts, kept, bad = [], [], []
    for start in range(0, len(files), CHUNK):
        pixels = []
        for i, f in enumerate(files[start:start + CHUNK], start):
            try:
                array = embedder.decoder.decode(str(f))
            except DataError as exc:
                bad.append((str(f), str(exc).removeprefix(f"{f}: ")))
                continue
            pixels.append(array)
            kept.append(i)
        if pixels:
            parts.append(embedder.embed_pixels(pixels, batch_size))
    vectors = np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)
    faiss.normalize_L2(vectors)
    return vectors, kept, bad


def build_index(checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path, batch_size: int = 256,
                skip_bad: bool = False, device: str = "auto") -> dict:
    """Embed the gallery images in ``inputs`` with ``checkpoint`` (a ``model.pt``, or a ``.onnx``
    export run by onnxruntime) and write the index to ``out``.

    Args:
        skip_bad: leave undecodable images out (listed in ``index.json``) instead of refusing.

    Returns:
        the manifest written to ``out/index.json``.

    Raises:
        DataError: no images, an undecodable image (without ``skip_bad``), or ``out`` is a
            non-empty folder that is not an index.
    """
    out = Path(out)
    if out.exists() and not (out / MANIFEST).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not a slade index; choose another --out")
    files = image_files(inputs)
    embedder = load_embedder(checkpoint, device)
    vectors, kept, bad = _embed(embedder, files, batch_size)
    if bad and not skip_bad:
        source, reason = bad[0]
        raise DataError(f"{source}: {reason} — {len(bad)} of {len(files)} gallery images cannot be "
                        "decoded; fix or remove them, or pass --skip-bad to index the others")
    if not kept:
        raise DataError(f"none of the {len(files)} gallery images can be decoded (first: {bad[0][0]})")
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    model = ONNX_MODEL if is_onnx(checkpoint) else MODEL
    manifest = {"format": "slade.retrieval-index", "checkpoint": str(Path(checkpoint).resolve()),
                "model": model, "images": len(kept), "dim": int(vectors.shape[1]),
                "skipped": [{"image": s, "reason": r} for s, r in bad]}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the index is as readable as any folder
    try:
        shutil.copyfile(checkpoint, tmp / model)
        faiss.write_index(index, str(tmp / INDEX))
        (tmp / IMAGES).write_text(json.dumps([str(files[i]) for i in kept], indent=0) + "\n")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _replace_dir(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; an existing ``out`` is moved aside first and removed after."""
    if not out.exists():
        os.replace(new, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old)


class RetrievalIndex:
    """A gallery index written by :func:`build_index`: query images in, nearest gallery images out."""

    def __init__(self, embedder: Embedder | OnnxEmbedder, index: faiss.Index, images: list[str]) -> None:
        self.embedder, self.index, self.images = embedder, index, images

    @classmethod
    def load(cls, directory: str | Path, device: str = "auto") -> RetrievalIndex:
        directory = Path(directory)
        if not (directory / MANIFEST).is_file():
            raise DataError(f"{directory}: not a slade index (no {MANIFEST}); build one with `slade index`")
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
            images = json.loads((directory / IMAGES).read_text())
            index = faiss.read_index(str(directory / INDEX))
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{directory}: unreadable index ({str(exc).splitlines()[0][:160]}); "
                                  "rebuild it with `slade index`") from None
        if index.ntotal != len(images):
            raise CheckpointError(f"{directory}: the index holds {index.ntotal} vectors for {len(images)} "
                                  "images; rebuild it with `slade index`")
        # Indexes from before ONNX serving name no model: theirs is model.pt.
        model = manifest.get("model", MODEL) if isinstance(manifest, dict) else None
        if model not in (MODEL, ONNX_MODEL):
            raise CheckpointError(f"{directory / MANIFEST}: unknown model file {model!r}; "
                                  "rebuild it with `slade index`")
        return cls(load_embedder(directory / model, device), index, images)

    def search(self, queries: Sequence[str | Path], k: int = 10,
               batch_size: int = 256) -> list[list[Neighbour]]:
        """The ``k`` nearest gallery images of each query, most similar first.

        Raises:
            DataError: a query image cannot be decoded.
        """
        if k < 1:
            raise DataError(f"-k: must be at least 1, got {k}")
        files = [Path(q) for q in queries]
        vectors, _, bad = _embed(self.embedder, files, batch_size)
        if bad:
            raise DataError(f"{bad[0][0]}: {bad[0][1]} (query image)")
        similarity, ids = self.index.search(vectors, min(k, self.index.ntotal))
        return [[Neighbour(rank + 1, self.images[j], float(s))
                 for rank, (j, s) in enumerate(zip(row_ids, row_sims, strict=True)) if j >= 0]
                for row_ids, row_sims in zip(ids, similarity, strict=True)]
