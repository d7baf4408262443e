"""train.precision and train.compile: what they mean on each device, and where they are refused."""

import numpy as np
import pytest
import torch

from slade.config import ModelConfig, load_config
from slade.engine.precision import resolve_precision
from slade.errors import ConfigError
from slade.inference import embed_dataset
from slade.models.embedder import create_embedder
from slade.pipeline import run

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # naming a CUDA device needs no GPU


def test_auto_is_todays_behaviour_bf16_channels_last_on_cuda_and_fp32_on_the_cpu():
    on_cpu, on_cuda = resolve_precision("auto", CPU), resolve_precision("auto", CUDA)
    assert (on_cpu.name, on_cpu.dtype, on_cpu.channels_last, on_cpu.scaled) == ("fp32", None, False, False)
    assert (on_cuda.name, on_cuda.dtype, on_cuda.channels_last) == ("bf16", torch.bfloat16, True)
    assert on_cpu.describe() == "fp32 (auto)" and on_cuda.describe() == "bf16 (auto), channels-last"
    fp16 = resolve_precision("fp16", CUDA)
    assert fp16.scaled and fp16.dtype == torch.float16 and fp16.describe() == "fp16, channels-last"
    assert not resolve_precision("fp32", CPU).scaler(CPU).is_enabled()


def test_fp16_without_cuda_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"^train.precision: fp16 needs CUDA, and the device is cpu; use"):
        resolve_precision("fp16", CPU)


def test_fp16_on_the_cpu_stops_the_run_before_any_work(tmp_path):
    config = load_config(None, ["train.precision=fp16", "device=cpu"])
    with pytest.raises(ConfigError, match="^train.precision: fp16 needs CUDA"):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("train.precision=half",
     r"^--set: train.precision: expected 'auto' \| 'fp32' \| 'bf16' \| 'fp16', got 'half'"),
    ("train.compile=maybe", r"^--set: train.compile: expected bool, got 'maybe'"),
])
def test_bad_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_settings_from_yaml(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  precision: bf16\n  compile: true\n")
    config = load_config(path)
    assert (config.train.precision, config.train.compile) == ("bf16", True)


def test_embedding_follows_the_precision_and_stays_float32():
    torch.manual_seed(0)
    model = create_embedder(ModelConfig(width=8, embedding_dim=16), 1)
    images = [torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8) for _ in range(10)]

    def transform(x):
        return x.float() / 255

    fp32 = embed_dataset(model, images, transform, CPU, precision=resolve_precision("fp32", CPU))
    bf16 = embed_dataset(model, images, transform, CPU, precision=resolve_precision("bf16", CPU))
    assert fp32.dtype == bf16.dtype == np.float32
    assert not np.array_equal(fp32, bf16)
    assert np.all((fp32 * bf16).sum(1) > 0.99)  # unit vectors, nearly the same
