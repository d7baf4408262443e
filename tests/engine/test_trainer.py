import functools
import json
import logging
import os
import pickle

import pytest
import torch

from slade import run_layout as layout
from slade.config import DataConfig, ModelConfig, TeacherConfig
from slade.data.datasets import ImageDataset
from slade.data.folders import read_class_folders
from slade.data.images import Decoder
from slade.engine.checkpoint import load_checkpoint
from slade.engine.precision import Precision, resolve_precision
from slade.engine.trainer import JsonlLog, fit, warmup_cosine
from slade.errors import CheckpointError, TrainingError
from slade.models.embedder import create_embedder
from slade.stages.teacher import RankingStage

CPU = torch.device("cpu")


def make_stage(class_tree, seed=0, **overrides):
    data = DataConfig(dataset="folders", image_size=28)
    dataset = ImageDataset(read_class_folders(class_tree), Decoder(1, 28, True))
    cfg = TeacherConfig(**{"steps": 6, "batch_size": 8, "m_per_class": 2, "warmup_steps": 2,
                           "checkpoint_every": 3, "log_every": 1, **overrides})
    torch.manual_seed(seed)
    model = create_embedder(ModelConfig(width=8, embedding_dim=16), 1)
    return RankingStage(model, dataset, cfg, data, seed), cfg


def weights(stage):
    return {k: v.clone() for k, v in stage.model.state_dict().items()}


def test_warmup_cosine_schedule():
    f = warmup_cosine(total=10, warmup=2)
    assert [round(f(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    shifted = warmup_cosine(total=12, warmup=2, start=2)
    assert shifted(0) == shifted(1) == 0.0 and shifted(2) == f(0) and shifted(8) == f(6)


def test_training_changes_weights_and_logs_every_step(class_tree, tmp_path):
    stage, cfg = make_stage(class_tree)
    before = weights(stage)
    result = fit(stage, cfg, tmp_path / "run", CPU)
    assert result.steps == 6
    assert any(not torch.equal(before[k], v) for k, v in stage.model.state_dict().items())
    log = [json.loads(line) for line in (tmp_path / "run" / layout.LOG).read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4, 5, 6]
    assert all(e["loss"] >= 0 and e["images_per_s"] > 0 for e in log)


def test_same_seed_gives_identical_weights(class_tree, tmp_path):
    a, cfg = make_stage(class_tree)
    fit(a, cfg, tmp_path / "a", CPU)
    b, _ = make_stage(class_tree)
    fit(b, cfg, tmp_path / "b", CPU)
    for key, value in weights(a).items():
        assert torch.equal(value, b.model.state_dict()[key]), key


def crashing_at_step_4(stage):
    """``stage``, interrupted (KeyboardInterrupt) when it reaches step 4."""
    original = stage.loss_terms

    def crash_at_step_4(batch, step):
        if step == 4:
            raise KeyboardInterrupt
        return original(batch, step)

    stage.loss_terms = crash_at_step_4
    return stage


def test_resume_after_interruption_equals_uninterrupted_run(class_tree, tmp_path):
    reference, cfg = make_stage(class_tree)
    fit(reference, cfg, tmp_path / "reference", CPU)

    interrupted = crashing_at_step_4(make_stage(class_tree)[0])
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, cfg, tmp_path / "run", CPU)
    assert load_checkpoint(tmp_path / "run" / layout.CHECKPOINT)["step"] == 3

    resumed, _ = make_stage(class_tree)  # a fresh process would start from new weights
    result = fit(resumed, cfg, tmp_path / "run", CPU)
    assert result.steps == 3
    for key, value in weights(reference).items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-6), key
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / layout.LOG).read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_with_other_settings_is_refused(class_tree, tmp_path):
    stage, cfg = make_stage(class_tree)
    fit(stage, cfg, tmp_path / "run", CPU, fingerprint={"lr": 1})
    stage, cfg = make_stage(class_tree)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt: was written with other settings \(lr\)"):
        fit(stage, cfg, tmp_path / "run", CPU, fingerprint={"lr": 2})


def test_resume_reads_a_setting_added_since_as_its_value_of_before(class_tree, tmp_path):
    # A checkpoint written before pseudo_labels.method existed was made with k-means labels.
    stage, cfg = make_stage(class_tree)
    with pytest.raises(KeyboardInterrupt):
        fit(crashing_at_step_4(stage), cfg, tmp_path / "run", CPU,
            fingerprint={"pseudo_labels": {"clusters": 3}})
    dbscan = {"pseudo_labels": {"clusters": 3, "method": "dbscan"}}
    with pytest.raises(CheckpointError, match=r"other settings \(pseudo_labels.method\)"):
        fit(make_stage(class_tree)[0], cfg, tmp_path / "run", CPU, fingerprint=dbscan)
    kmeans = {"pseudo_labels": {"clusters": 3, "method": "kmeans"}}
    assert fit(make_stage(class_tree)[0], cfg, tmp_path / "run", CPU, fingerprint=kmeans).steps == 3


def nan_at(stage, failing_step, term="rank_unlabeled", times=1):
    """Make ``term`` NaN at 0-based ``failing_step``, the first ``times`` times that step runs."""
    original, left = stage.loss_terms, [times]

    def loss_terms(batch, step):
        terms = original(batch, step)
        if step == failing_step and left[0]:
            left[0] -= 1
            terms[term] = torch.tensor(float("nan"))
        return terms

    stage.loss_terms = loss_terms


def finite(stage):
    return all(torch.isfinite(v).all() for v in stage.model.state_dict().values() if v.is_floating_point())


def test_non_finite_loss_stops_naming_the_term(class_tree, tmp_path):
    stage, cfg = make_stage(class_tree, nonfinite="stop")
    nan_at(stage, 4)
    with pytest.raises(TrainingError, match=r"teacher step 5: loss term 'rank_unlabeled' is nan; "
                                            r"the last good checkpoint is .*checkpoint.pt"):
        fit(stage, cfg, tmp_path / "run", CPU)
    saved = load_checkpoint(tmp_path / "run" / layout.CHECKPOINT)
    assert saved["step"] == 3
    assert all(torch.isfinite(v).all() for v in saved["modules"]["model"].values() if v.is_floating_point())


def test_non_finite_loss_rolls_back_skips_the_batch_and_finishes(class_tree, tmp_path, caplog):
    stage, cfg = make_stage(class_tree)  # nonfinite: rollback by default
    nan_at(stage, 4)
    result = fit(stage, cfg, tmp_path / "run", CPU)
    assert result.steps == 6 and finite(stage)
    assert "teacher step 5: loss term 'rank_unlabeled' is nan; rolled back to step 3" in caplog.text
    log = [json.loads(x) for x in (tmp_path / "run" / layout.LOG).read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 3, 4, 5, 6]
    assert log[3]["rollback"] == {"failed_step": 5, "fault": "loss term 'rank_unlabeled'", "value": "nan",
                                  "skipped_batch": 4}
    assert load_checkpoint(tmp_path / "run" / layout.CHECKPOINT)["position"] == {
        "step": 6, "batch": 7, "skipped": [4], "rollbacks": 1}


def test_rollback_before_the_first_checkpoint_and_the_rollback_limit(class_tree, tmp_path):
    stage, cfg = make_stage(class_tree, max_rollbacks=2)
    nan_at(stage, 1, term="loss", times=1)  # before the first periodic checkpoint: back to step 0
    assert fit(stage, cfg, tmp_path / "once", CPU).steps == 6 and finite(stage)

    stage, cfg = make_stage(class_tree, max_rollbacks=2)
    nan_at(stage, 4, times=10)  # every batch tried at step 5 fails
    with pytest.raises(TrainingError, match=r"teacher step 5: loss term 'rank_unlabeled' is nan, after 2 "
                                            r"rollback\(s\) \(max_rollbacks=2\)"):
        fit(stage, cfg, tmp_path / "always", CPU)
    assert load_checkpoint(tmp_path / "always" / layout.CHECKPOINT)["position"]["skipped"] == [4, 5]


def test_non_finite_gradient_is_caught_before_the_update(class_tree, tmp_path):
    stage, cfg = make_stage(class_tree, nonfinite="stop")
    original = stage.loss_terms

    def infinite_gradient(batch, step):
        terms = original(batch, step)
        if step == 4:  # sqrt'(0) is infinite: the value stays finite, the gradient does not
            terms["loss"] = terms["loss"] + torch.sqrt(stage.model.head.weight * 0).sum()
        return terms

    stage.loss_terms = infinite_gradient
    with pytest.raises(TrainingError, match=r"teacher step 5: the gradient norm is nan"):
        fit(stage, cfg, tmp_path / "run", CPU)
    assert finite(stage)  # the optimiser never stepped on it


def test_log_line_cut_by_a_kill_is_dropped_on_resume(tmp_path):
    path = tmp_path / layout.LOG
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n{"step": 3, "lo')
    JsonlLog(path, resume_step=2)
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n'


class Exploit:
    def __reduce__(self):
        return (print, ("this code ran while loading",))


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "slade.training-state", "payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused: the file holds objects other than tensors"):
        load_checkpoint(path)
    path.write_bytes(pickle.dumps({"format": "x"}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_corrupt_and_foreign_checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"format": "slade.embedder", "state_dict": {}}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated.pt: corrupt or truncated checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="is a slade.embedder checkpoint, expected slade.training"):
        load_checkpoint(good, "slade.training-state")
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def logged_losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / layout.LOG).read_text().splitlines()]


def test_bf16_on_the_cpu_trains_close_to_fp32_and_says_so(class_tree, tmp_path, caplog):
    fp32, cfg = make_stage(class_tree)
    fit(fp32, cfg, tmp_path / "fp32", CPU, precision=resolve_precision("fp32", CPU))
    bf16, _ = make_stage(class_tree)
    with caplog.at_level(logging.INFO, logger="slade"):
        fit(bf16, cfg, tmp_path / "bf16", CPU, precision=resolve_precision("bf16", CPU))
    assert "teacher: cpu, bf16, compile off" in caplog.messages
    a, b = logged_losses(tmp_path / "fp32"), logged_losses(tmp_path / "bf16")
    assert a != b  # bf16 did run
    # The same batches from the same weights; later steps drift apart as the weights do.
    assert b[:3] == pytest.approx(a[:3], rel=0.02)
    assert all(v.dtype == torch.float32 for v in bf16.model.state_dict().values() if v.is_floating_point())


def test_fp16_gradient_scaler_state_resumes_exactly(class_tree, tmp_path):
    # fp16 is refused on the CPU by train.precision; the engine itself runs it (GradScaler("cpu")).
    fp16 = Precision("fp16", "fp16", channels_last=False)
    reference, cfg = make_stage(class_tree)
    fit(reference, cfg, tmp_path / "reference", CPU, precision=fp16)
    scaler = load_checkpoint(tmp_path / "reference" / layout.CHECKPOINT)["scaler"]
    assert scaler["scale"] < 2.0**16  # the first step overflowed at the initial scale and was skipped

    interrupted = crashing_at_step_4(make_stage(class_tree)[0])
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, cfg, tmp_path / "run", CPU, precision=fp16)
    assert load_checkpoint(tmp_path / "run" / layout.CHECKPOINT)["scaler"]["scale"] == scaler["scale"]
    resumed, _ = make_stage(class_tree)
    fit(resumed, cfg, tmp_path / "run", CPU, precision=fp16)
    assert load_checkpoint(tmp_path / "run" / layout.CHECKPOINT)["scaler"] == scaler
    for key, value in weights(reference).items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-6), key
    assert logged_losses(tmp_path / "run") == logged_losses(tmp_path / "reference")


@pytest.mark.parametrize("backend", [
    "eager",  # dynamo's tracing alone: the wiring, in seconds
    pytest.param("inductor", marks=pytest.mark.skipif(
        not os.environ.get("SLADE_TEST_COMPILE"),
        reason="inductor compiles C++ for minutes on 2 CPU cores (about 140 s cold here); "
               "set SLADE_TEST_COMPILE=1 to run it")),
])
def test_compiled_backbone_trains_like_the_eager_one(class_tree, tmp_path, monkeypatch, backend):
    three_steps = {"steps": 3, "checkpoint_every": 0}
    eager, cfg = make_stage(class_tree, **three_steps)
    fit(eager, cfg, tmp_path / "eager", CPU)
    compiled, _ = make_stage(class_tree, **three_steps)
    keys = list(compiled.model.state_dict())
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    fit(compiled, cfg, tmp_path / "compiled", CPU, compile=True)
    assert compiled.model.backbone._compiled_call_impl is not None
    assert list(compiled.model.state_dict()) == keys  # checkpoints and model.pt are unchanged
    assert logged_losses(tmp_path / "compiled") == pytest.approx(logged_losses(tmp_path / "eager"), abs=1e-4)
