"""A crafted pickle, whose loading would run code, is refused as a model and as a checkpoint."""

import pickle

import pytest
import torch
from typer.testing import CliRunner

from slade.cli import app
from slade.config import load_config
from slade.engine.checkpoint import load_checkpoint
from slade.errors import CheckpointError
from slade.inference import load_embedder
from slade.pipeline import run


class WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears if the code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted(path, marker, zip_format):
    payload = {"format": "slade.embedder", "state_dict": {}, "extra": WritesMarker(marker)}
    if zip_format:
        torch.save(payload, path)  # the format torch.save writes
    else:
        path.write_bytes(pickle.dumps(payload))  # a bare pickle with a .pt name
    return path


@pytest.mark.parametrize("zip_format", [True, False])
def test_the_payload_is_live_but_never_runs_in_slade(tmp_path, class_tree, zip_format):
    live_marker = tmp_path / "live"
    with open(crafted(tmp_path / "probe.pt", live_marker, zip_format), "rb") as f:
        if zip_format:
            torch.load(f, weights_only=False)
        else:
            pickle.load(f)
    assert live_marker.exists()  # what an unsafe loader would do

    marker = tmp_path / "marker"
    model = crafted(tmp_path / "model.pt", marker, zip_format)
    with pytest.raises(CheckpointError, match="model.pt: refused: the file holds objects other than tensors"):
        load_embedder(model)
    result = CliRunner().invoke(app, ["embed", str(model), str(class_tree), "--out", str(tmp_path / "e.npy")])
    assert result.exit_code != 0 and isinstance(result.exception, CheckpointError)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(crafted(tmp_path / "checkpoint.pt", marker, zip_format), "slade.training-state")
    assert not marker.exists()


def test_crafted_checkpoint_in_a_run_directory_is_refused(tmp_path):
    marker = tmp_path / "marker"
    out = tmp_path / "run"
    (out / "teacher").mkdir(parents=True)
    crafted(out / "teacher" / "checkpoint.pt", marker, zip_format=True)
    config = load_config(None, [
        "data.glyph_train_classes=12", "data.glyph_test_classes=6", "data.glyph_images_per_class=6",
        "data.glyph_pool_size=160", "model.width=8", "model.embedding_dim=16", "pretrain.enabled=false",
        "analysis.enabled=false", "teacher.steps=2", "teacher.batch_size=16",
    ])
    with pytest.raises(CheckpointError, match=r"teacher/checkpoint.pt: refused: .*; delete it to start the "
                                              r"stage over"):
        run(config, out, until="teacher")
    assert not marker.exists()
