"""slade: semi-supervised deep metric learning with unlabeled images from another source (SLADE).

Public API::

    slade.load_config(path, overrides)       # typed experiment config from YAML
    slade.run(config, run_dir)               # every stage; returns {stage: metrics}
    slade.load_embedder(checkpoint).embed(images)   # (n, d) float32, L2-normalised; model.pt or .onnx
    slade.evaluate_embeddings(query, labels, gallery=None, gallery_labels=None, ks=(1, 2, 4, 8))
    slade.analyse_run(run_dir)               # t-SNE maps, domain gap, RUN/report.html
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Imported on first use, so that `import slade` (and `slade --help`) does not load torch.
_API = {
    "load_config": "slade.config",
    "Config": "slade.config",
    "run": "slade.pipeline",
    "load_embedder": "slade.serving",  # model.pt (torch) or an exported model.onnx (onnxruntime)
    "Embedder": "slade.inference",
    "evaluate_embeddings": "slade.evaluation.retrieval",
    "analyse_run": "slade.analysis",
    "FeatureBasis": "slade.basis.feature_basis",
    "ConfidentPairMiner": "slade.basis.confident_pairs",
    "k_reciprocal_encoding": "slade.context.neighbourhood",
    "ContextualPairMiner": "slade.context.miner",
}
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'slade' has no attribute {name!r}")
