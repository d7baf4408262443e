"""``slade export``: a trained embedder as an ONNX or TorchScript file for serving.

The graph is the whole :class:`~slade.models.embedder.EmbeddingNet` (backbone, pooling, linear,
L2 normalisation) with a dynamic batch axis; the input pipeline is stored beside it as metadata
(:mod:`slade.serving.metadata`). ONNX uses PyTorch's ``torch.export``-based exporter
(``dynamo=True``, opset 18), the default since PyTorch 2.9: the TorchScript-based one is
deprecated. Before the file is written, the exported graph runs on a batch of another size than
the one it was traced with and must match the PyTorch model within :data:`TOLERANCE`.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from slade.data.transforms import normalization
from slade.engine.checkpoint import load_checkpoint
from slade.errors import CheckpointError, ExportError
from slade.inference import EMBEDDER, load_embedding_net
from slade.io import atomic_write
from slade.models.embedder import EmbeddingNet
from slade.serving.metadata import INPUT_NAME, OUTPUT_NAME, ServingSpec

FORMATS = ("onnx", "torchscript")
OPSET = 18
# Largest |difference| allowed between the exported graph's embeddings and the PyTorch model's.
TOLERANCE = 1e-4
TORCHSCRIPT_METADATA = "slade.json"


def export_embedder(checkpoint: str | Path, out: str | Path, fmt: str = "onnx") -> ServingSpec:
    """Export the embedder saved in ``checkpoint`` (a ``model.pt``) to ``out``.

    ``out`` is written under a temporary name and renamed into place: a failed export leaves
    nothing new there.

    Raises:
        ExportError: unknown format, an ``out`` that cannot be told from a checkpoint, the exporter
            failed, or the exported graph disagrees with the model.
        CheckpointError: ``checkpoint`` is missing, corrupt or not an embedder.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if (out.suffix.lower() == ".onnx") != (fmt == "onnx"):
        raise ExportError(f"--out {out}: an ONNX export is named *.onnx, and only it "
                          "(slade embed, index and query tell the two apart by that)")
    if out.resolve() == checkpoint.resolve():
        raise ExportError(f"--out {out}: is the checkpoint itself; choose another file")
    model, spec = load_for_export(checkpoint)
    example = _random_batch(2, spec, seed=0)
    if fmt == "onnx":
        data = _onnx_bytes(checkpoint, model, example, spec)
    else:
        data = _torchscript_bytes(checkpoint, model, example, spec)
    atomic_write(out, lambda tmp: tmp.write_bytes(data))
    return spec


def load_for_export(checkpoint: Path) -> tuple[EmbeddingNet, ServingSpec]:
    """The network in eval mode and the metadata describing its input."""
    model, spec = load_embedding_net(checkpoint)
    config = load_checkpoint(checkpoint, EMBEDDER)["model"]  # load_embedding_net has checked it
    try:
        channels = int(spec["channels"])
        mean, std = normalization(channels)
        serving = ServingSpec(
            backbone=str(config["backbone"]), embedding_dim=model.embedding_dim, channels=channels,
            image_size=int(spec["image_size"]), resize=int(spec["resize"]),
            dark_background=bool(spec["dark_background"]), mean=tuple(mean), std=tuple(std),
            model=dict(config),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint}: incomplete input description ({exc})") from None
    return model.eval(), serving


def _onnx_bytes(checkpoint: Path, model: EmbeddingNet, example: torch.Tensor, spec: ServingSpec) -> bytes:
    try:
        import onnx
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (torch's exporter needs it; say so before it fails deep inside)
    except ImportError as exc:
        raise ExportError(f"--format onnx needs onnx, onnxscript and onnxruntime ({exc}): "
                          "pip install 'slade[export]'") from None
    try:
        program = torch.onnx.export(
            model, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            external_data=False, verbose=False,
        )
        if program is None:  # only the legacy exporter (dynamo=False) returns None
            raise RuntimeError("the exporter returned no program")
        proto = program.model_proto
    except Exception as exc:  # the exporter raises many kinds, each with a long report
        raise ExportError(f"{checkpoint}: the ONNX exporter failed on {spec.backbone} "
                          f"({_first_line(exc)})") from None
    proto.producer_name = "slade"
    onnx.helper.set_model_props(proto, spec.to_metadata())
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    _check_parity(checkpoint, model, lambda x: session.run(None, {INPUT_NAME: x.numpy()})[0], spec)
    return data


def _torchscript_bytes(checkpoint: Path, model: EmbeddingNet, example: torch.Tensor,
                       spec: ServingSpec) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # TorchScript is deprecated upstream; it is still what libtorch loads
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        try:
            traced = torch.jit.trace(model, example)
        except Exception as exc:
            raise ExportError(f"{checkpoint}: tracing {spec.backbone} failed ({_first_line(exc)})") from None
        _check_parity(checkpoint, model, lambda x: traced(x).numpy(), spec)
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_METADATA: json.dumps(spec.to_metadata())})
    return buffer.getvalue()


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, ServingSpec]:
    """A TorchScript export and its metadata (libtorch reads the same ``slade.json`` extra file)."""
    extra = {TORCHSCRIPT_METADATA: ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        try:
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except (RuntimeError, ValueError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable TorchScript file ({_first_line(exc)})") from None
    try:
        props = json.loads(extra[TORCHSCRIPT_METADATA] or "{}")
    except ValueError:
        props = {}
    return module.eval(), ServingSpec.from_metadata(path, props)


@torch.no_grad()
def _check_parity(checkpoint: Path, model: EmbeddingNet, run, spec: ServingSpec) -> None:
    # Batch 3: not the traced batch of 2, so this also checks that the batch axis is dynamic.
    x = _random_batch(3, spec, seed=1)
    expected = model(x).numpy()
    try:
        got = np.asarray(run(x))
    except Exception as exc:  # the runtime's own error types
        raise ExportError(f"{checkpoint}: the exported graph does not run on a batch of 3 "
                          f"({_first_line(exc)})") from None
    gap = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if not gap <= TOLERANCE:
        raise ExportError(f"{checkpoint}: the exported graph's embeddings differ from the model's "
                          f"by {gap:.2e} (shape {got.shape} vs {expected.shape}; allowed {TOLERANCE:g})")


def _random_batch(n: int, spec: ServingSpec, seed: int) -> torch.Tensor:
    shape = (n, spec.channels, spec.image_size, spec.image_size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
