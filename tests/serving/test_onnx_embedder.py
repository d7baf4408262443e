"""`slade embed`, `index` and `query` with an exported model.onnx: the same results, without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from slade.cli import app
from slade.errors import CheckpointError


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_embed_with_the_onnx_file_equals_embed_with_the_checkpoint(models, class_tree, tmp_path):
    checkpoint, onnx_file = models["convnet4"]
    for model, out in [(checkpoint, "pt.npy"), (onnx_file, "onnx.npy")]:
        result = invoke("embed", model, class_tree, "--out", tmp_path / out, "--batch-size", 20)
        assert result.exit_code == 0, result.output
    expected, got = np.load(tmp_path / "pt.npy"), np.load(tmp_path / "onnx.npy")
    assert got.shape == (48, 16) and np.abs(got - expected).max() <= 1e-4
    assert (tmp_path / "onnx.txt").read_text() == (tmp_path / "pt.txt").read_text()


def test_index_and_query_with_the_onnx_file(models, class_tree, tmp_path):
    checkpoint, onnx_file = models["convnet4"]
    hits = {}
    for model, name in [(checkpoint, "pt"), (onnx_file, "onnx")]:
        result = invoke("index", model, class_tree, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        query = class_tree / "c03" / "i02.png"
        result = invoke("query", tmp_path / name, query, "-k", 6, "--out", tmp_path / f"{name}.json")
        assert result.exit_code == 0, result.output
        hits[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == [
        "images.json", "index.faiss", "index.json", "model.onnx"]
    assert json.loads((tmp_path / "onnx" / "index.json").read_text())["model"] == "model.onnx"
    assert (tmp_path / "onnx" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    assert [h["image"] for h in hits["onnx"]] == [h["image"] for h in hits["pt"]]
    assert [h["similarity"] for h in hits["onnx"]] == pytest.approx([h["similarity"] for h in hits["pt"]],
                                                                     abs=1e-4)


# Runs `slade embed`, `index` and `query` with an ONNX model in an interpreter where none of slade's
# dependencies outside the `serve` extra can be imported: torch, torchvision and timm first.
NOT_SERVING = ("torch", "torchvision", "timm", "pytorch_metric_learning", "sklearn", "scipy", "matplotlib",
               "openTSNE", "threadpoolctl", "yaml", "safetensors", "onnx", "onnxscript")
SERVING_MACHINE = """
import sys

model, images, out, refused = sys.argv[1:]
REFUSED = set(refused.split(","))


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in REFUSED:
            raise ImportError(f"{name} is not installed on this serving machine")


sys.meta_path.insert(0, Refuse())
from slade.cli import app

app(["embed", model, images, "--out", f"{out}/e.npy"], standalone_mode=False)
app(["index", model, images, "--out", f"{out}/idx"], standalone_mode=False)
app(["query", f"{out}/idx", images, "-k", "2", "--out", f"{out}/hits.json"], standalone_mode=False)
print(sorted({m.partition(".")[0] for m in sys.modules} & REFUSED))
"""


def test_the_serving_path_imports_neither_torch_nor_timm(models, class_tree, tmp_path):
    args = [models["convnet4"][1], class_tree / "c01", tmp_path, ",".join(NOT_SERVING)]
    done = subprocess.run([sys.executable, "-c", SERVING_MACHINE, *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "[]"
    assert np.load(tmp_path / "e.npy").shape == (6, 16)
    assert len(json.loads((tmp_path / "hits.json").read_text())) == 12


def edited(source, path, props=None, drop=(), input_dims=None):
    """A copy of an exported model with its metadata or its input shape changed."""
    proto = onnx.load(source)
    kept = {p.key: p.value for p in proto.metadata_props if p.key not in drop}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {**kept, **(props or {})})
    if input_dims is not None:
        for dim, value in zip(proto.graph.input[0].type.tensor_type.shape.dim, input_dims, strict=True):
            if isinstance(value, int):
                dim.dim_value = value
            else:
                dim.dim_param = value
    onnx.save(proto, path)
    return path


def another_tools_model(path):
    """A valid ONNX model that `slade export` did not write: a ReLU, no slade metadata."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, 224, 224])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3, 224, 224])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), path)
    return path


def test_bad_onnx_models_are_one_line_errors_and_nothing_is_written(models, class_tree, tmp_path):
    source = models["convnet4"][1]
    (tmp_path / "garbage.onnx").write_bytes(b"not a protobuf at all")
    (tmp_path / "truncated.onnx").write_bytes(source.read_bytes()[:20000])
    cases = {
        tmp_path / "missing.onnx": "model file not found",
        tmp_path / "garbage.onnx": "not a readable ONNX model (",
        tmp_path / "truncated.onnx": "not a readable ONNX model (",
        another_tools_model(tmp_path / "other.onnx"): "not a slade export (no 'slade.format' metadata",
        edited(source, tmp_path / "no_size.onnx", drop=["slade.image_size"]):
            "metadata key 'slade.image_size' is missing",
        edited(source, tmp_path / "bad_value.onnx", {"slade.dark_background": "maybe"}):
            "metadata key 'slade.dark_background' = 'maybe' is invalid",
        edited(source, tmp_path / "newer.onnx", {"slade.format_version": "2"}):
            "metadata key 'slade.format_version' is 2; this slade reads up to 1",
        edited(source, tmp_path / "rgb.onnx", {"slade.channels": "3", "slade.mean": "[0.4, 0.4, 0.4]",
                                               "slade.std": "[0.2, 0.2, 0.2]"}):
            "input 'images' is (batch, 1, 28, 28) but the metadata (slade.channels=3, slade.image_size=28) "
            "says (batch, 3, 28, 28)",
        edited(source, tmp_path / "size.onnx", input_dims=["batch", 1, 32, 32]):
            "input 'images' is (batch, 1, 32, 32) but the metadata (slade.channels=1, slade.image_size=28)",
        edited(source, tmp_path / "fixed.onnx", input_dims=[8, 1, 28, 28]):
            "input 'images' has a fixed batch size of 8",
    }
    for model, expected in cases.items():
        for command in (["embed", model, class_tree, "--out", tmp_path / "e.npy"],
                        ["index", model, class_tree, "--out", tmp_path / "idx"]):
            result = invoke(*command)
            assert isinstance(result.exception, CheckpointError), (command, result.output)
            message = str(result.exception)
            assert message.startswith(f"{model}: ") and expected in message and "\n" not in message, message
    assert not (tmp_path / "e.npy").exists() and not (tmp_path / "idx").exists()
    assert not list(tmp_path.glob(".*"))  # no temporary file or folder left behind
