"""`slade export`: ONNX and TorchScript files that embed as the PyTorch model does."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from tiny_models import export
from typer.testing import CliRunner

from slade.cli import app
from slade.data.transforms import eval_transform, normalization
from slade.errors import CheckpointError, ExportError, WriteError
from slade.inference import load_embedder
from slade.serving.export import export_embedder, load_for_export, load_torchscript
from slade.serving.metadata import ServingSpec
from slade.serving.onnx_embedder import load_onnx_embedder, preprocess


@pytest.mark.parametrize("name", ["convnet4", "resnet10t"])
def test_onnx_embeddings_of_64_images_match_pytorch(models, images, name):
    checkpoint, onnx_file = models[name]
    expected = load_embedder(checkpoint, "cpu").embed(images)
    got = load_onnx_embedder(onnx_file, "cpu").embed(images)
    assert got.shape == expected.shape == (64, 16 if name == "convnet4" else 32)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.linalg.norm(got, axis=1) == pytest.approx(1, abs=1e-5)
    assert expected.std(axis=0).max() > 0.01  # images embed apart by far more than the tolerance


def test_the_batch_axis_is_dynamic(models, images):
    embedder = load_onnx_embedder(models["convnet4"][1], "cpu")
    batch, *rest = embedder.session.get_inputs()[0].shape
    assert isinstance(batch, str) and rest == [1, 28, 28]
    one_at_a_time = embedder.embed(images, batch_size=1)
    assert np.abs(embedder.embed(images, batch_size=64) - one_at_a_time).max() <= 1e-6
    assert np.abs(embedder.embed(images[:5], batch_size=3) - one_at_a_time[:5]).max() <= 1e-6


def test_the_metadata_holds_the_whole_input_pipeline(models):
    checkpoint, onnx_file = models["convnet4"]
    proto = onnx.load(onnx_file)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["slade.format"] == "slade.exported-embedder" and props["slade.format_version"] == "1"
    spec = ServingSpec.from_metadata(onnx_file, props)
    assert spec == load_for_export(checkpoint)[1]
    assert (spec.backbone, spec.embedding_dim, spec.channels, spec.image_size, spec.resize) == (
        "convnet4", 16, 1, 28, 28)
    assert spec.dark_background is True
    assert spec.mean == pytest.approx((0.449,)) and spec.std == pytest.approx((0.226,))
    assert spec.model == {"backbone": "convnet4", "pretrained": False, "weights": "", "embedding_dim": 16,
                          "width": 8, "pooling": "avg"}
    assert [(o.domain, o.version) for o in proto.opset_import if o.domain == ""] == [("", 18)]
    resnet = models["resnet10t"][1]
    rgb = ServingSpec.from_metadata(resnet, {p.key: p.value for p in onnx.load(resnet).metadata_props})
    assert (rgb.backbone, rgb.channels, rgb.image_size, rgb.dark_background) == ("resnet10t", 3, 32, False)
    assert rgb.mean == pytest.approx((0.485, 0.456, 0.406))
    assert rgb.std == pytest.approx((0.229, 0.224, 0.225))


@pytest.mark.parametrize("name", ["convnet4", "resnet10t"])
def test_torchscript_export_matches_pytorch_and_carries_the_metadata(models, images, tmp_path, name):
    checkpoint, onnx_file = models[name]
    module, spec = load_torchscript(export(checkpoint, tmp_path / "model.ts", "torchscript"))
    assert spec == load_for_export(checkpoint)[1]
    embedder = load_embedder(checkpoint, "cpu")
    pixels = [embedder.decoder.decode(str(f)) for f in images]
    with torch.no_grad():
        batch = torch.from_numpy(preprocess(pixels, spec))
        got = module(batch).numpy()
        one = module(batch[:1]).numpy()
    expected = embedder.embed(images)
    assert np.abs(got - expected).max() <= 1e-4 and np.abs(one - expected[:1]).max() <= 1e-4


def test_the_numpy_preprocessing_is_torchvisions():
    rng = np.random.default_rng(0)
    for channels in (1, 3):
        spec = ServingSpec("x", 8, channels, 28, 28, False, *normalization(channels), {})
        transform = eval_transform(28, channels)
        for h, w in [(28, 28), (28, 41), (37, 28), (29, 30), (20, 25), (28, 19), (60, 60)]:
            array = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
            expected = transform(torch.from_numpy(array).permute(2, 0, 1)).numpy()
            assert np.abs(preprocess([array], spec)[0] - expected).max() <= 1e-6, (h, w)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(result, kind):
    assert result.exit_code != 0 and isinstance(result.exception, kind), result.output
    message = str(result.exception)
    assert "\n" not in message
    return message


def test_refused_exports_name_the_problem_and_write_nothing(models, tmp_path):
    checkpoint, onnx_out = models["convnet4"][0], tmp_path / "m.onnx"
    message = one_line(invoke("export", checkpoint, "--format", "tflite", "--out", onnx_out), ExportError)
    assert message == "--format 'tflite': expected one of onnx, torchscript"
    message = one_line(invoke("export", checkpoint, "--out", tmp_path / "m.bin"), ExportError)
    assert message.startswith(f"--out {tmp_path / 'm.bin'}: an ONNX export is named *.onnx")
    one_line(invoke("export", checkpoint, "--format", "torchscript", "--out", onnx_out), ExportError)
    message = one_line(invoke("export", tmp_path / "missing.pt", "--out", onnx_out), CheckpointError)
    assert message == f"{tmp_path / 'missing.pt'}: checkpoint not found"
    (tmp_path / "corrupt.pt").write_bytes(checkpoint.read_bytes()[:5000])
    message = one_line(invoke("export", tmp_path / "corrupt.pt", "--out", onnx_out), CheckpointError)
    assert message.startswith(f"{tmp_path / 'corrupt.pt'}: corrupt or truncated checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pt"]


def test_a_failed_export_leaves_the_previous_file_and_no_partial_one(models, tmp_path, monkeypatch):
    checkpoint, out = models["convnet4"][0], tmp_path / "model.ts"
    out.write_bytes(b"the previous export")
    monkeypatch.setenv("SLADE_FAIL_AT", "write:model.ts")  # the disk refuses the write
    with pytest.raises(WriteError, match="cannot write .*model.ts: No space left on device"):
        export_embedder(checkpoint, out, "torchscript")
    monkeypatch.delenv("SLADE_FAIL_AT")
    monkeypatch.setattr("slade.serving.export.TOLERANCE", -1.0)  # an exported graph that disagrees
    with pytest.raises(ExportError, match=r"convnet4.pt: the exported graph.s embeddings differ"):
        export_embedder(checkpoint, out, "torchscript")

    def failing_exporter(*args, **kwargs):
        raise RuntimeError("boom\na long report")

    monkeypatch.setattr("torch.onnx.export", failing_exporter)
    with pytest.raises(ExportError, match=r"the ONNX exporter failed on convnet4 \(boom\)$"):
        export_embedder(checkpoint, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ts"]
    assert out.read_bytes() == b"the previous export"
