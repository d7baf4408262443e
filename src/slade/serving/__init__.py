"""Serving a trained embedder: export it (``slade export``), then embed with the export alone.

- :mod:`slade.serving.export` writes ``model.onnx`` or a TorchScript file (needs torch);
- :mod:`slade.serving.onnx_embedder` embeds images with ``model.onnx`` on onnxruntime, importing
  neither torch nor timm;
- :mod:`slade.serving.metadata` is the input description both carry.
"""

from __future__ import annotations

from pathlib import Path


def load_embedder(model: str | Path, device: str = "auto"):
    """The embedder in ``model``: a ``slade export`` ``.onnx`` file (onnxruntime, no torch) or a
    ``model.pt`` written by any stage (:func:`slade.inference.load_embedder`).

    Both give ``.embed(images, batch_size)`` -> ``(n, d)`` float32 unit vectors, ``.embed_pixels``
    for decoded arrays, ``.decoder`` and ``.dim``.
    """
    if is_onnx(model):
        from slade.serving.onnx_embedder import load_onnx_embedder

        return load_onnx_embedder(model, device)
    from slade.inference import load_embedder as load_checkpoint_embedder

    return load_checkpoint_embedder(model, device)


def is_onnx(model: str | Path) -> bool:
    return Path(model).suffix.lower() == ".onnx"
