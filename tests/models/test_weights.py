"""model.weights (a local state dict) and model.pretrained (the hub) without any network."""

import hashlib
import logging
import pickle
import socket

import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from slade.config import Config, ModelConfig, load_config
from slade.errors import CheckpointError, ConfigError
from slade.inference import load_embedding_net, save_embedder
from slade.models.embedder import create_embedder
from slade.models.weights import load_weights
from slade.pipeline import run
from slade.stages.common import RunContext

TIMM = "test_resnet"  # a tiny timm ResNet (370k parameters) with a hub entry: timm/test_resnet.r160_in1k


@pytest.fixture
def no_network(monkeypatch):
    """Every connection and DNS lookup is recorded and refused: the list must stay empty."""
    attempts = []

    def connect(self, address):
        attempts.append(address)
        raise OSError("the tests have no network")

    def getaddrinfo(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror("the tests have no network")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def source_model(seed=1, num_classes=10):
    """A random timm network with its classifier, as a training script saves it."""
    torch.manual_seed(seed)
    return timm.create_model(TIMM, num_classes=num_classes)


def backbone_state(model):
    return model.backbone.state_dict()


def assert_loaded(model, source, skip=()):
    own = backbone_state(model)
    for key, value in source.state_dict().items():
        if not key.startswith("fc.") and key not in skip:
            assert torch.equal(own[key], value), key


@pytest.mark.parametrize("name, wrap", [
    ("w.safetensors", None),
    ("w.pth", None),
    ("w.pt", "state_dict"),  # Lightning, timm's train.py
    ("w.bin", "model"),      # many research repositories, with DataParallel's module. prefix
])
def test_a_saved_timm_state_dict_loads_back_into_the_backbone(tmp_path, caplog, name, wrap):
    source = source_model()
    state = source.state_dict()
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(state, path)
    elif wrap == "model":
        torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="slade"):
        model = create_embedder(ModelConfig(backbone=TIMM, weights=str(path), embedding_dim=16), 3)
    assert_loaded(model, source)
    (line,) = [r for r in caplog.records if r.name == "slade"]  # nothing missing, nothing ignored
    assert line.levelno == logging.INFO
    assert line.getMessage() == (f"model.weights: {path}: {len(state) - 2} tensors loaded into {TIMM}; "
                                 "its classifier head (fc.bias, fc.weight) left out, as expected")


def test_grey_images_get_the_first_convolution_adapted_as_timm_does(tmp_path):
    source = source_model()
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    model = create_embedder(ModelConfig(backbone=TIMM, weights=str(tmp_path / "w.safetensors")), 1)
    first = source.state_dict()["conv1.0.weight"]
    assert torch.allclose(backbone_state(model)["conv1.0.weight"], first.sum(1, keepdim=True))
    assert_loaded(model, source, skip={"conv1.0.weight"})


def test_missing_and_unexpected_tensors_are_reported(tmp_path, caplog):
    state = source_model().state_dict()
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(3)
    save_file(state, tmp_path / "w.safetensors")
    with caplog.at_level(logging.INFO, logger="slade"):
        report = load_weights(timm.create_model(TIMM, num_classes=0, global_pool=""),
                              tmp_path / "w.safetensors", TIMM, 3)
    assert (report.missing, report.unexpected, report.head) == (
        ["layer1.0.conv1.weight"], ["extra.weight"], ["fc.bias", "fc.weight"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    path = tmp_path / "w.safetensors"
    assert warnings == [
        f"model.weights: {path}: not in the file, so left as initialised: 1 of {TIMM}'s tensors "
        "(layer1.0.conv1.weight)",
        f"model.weights: {path}: not {TIMM}'s, so ignored: 1 of the file's tensors (extra.weight)"]


def test_a_slade_convnet_loads_its_own_backbone_weights(tmp_path):
    torch.manual_seed(1)
    source = create_embedder(ModelConfig(width=8), 1)
    torch.save(source.backbone.state_dict(), tmp_path / "convnet.pt")
    model = create_embedder(ModelConfig(width=8, weights=str(tmp_path / "convnet.pt")), 1)
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(backbone_state(model)[key], value), key


def one_line_error(path, in_chans=3, backbone=TIMM):
    with pytest.raises(CheckpointError) as caught:
        create_embedder(ModelConfig(backbone=backbone, weights=str(path)), in_chans)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"model.weights: {path}: "), message
    return message[len(f"model.weights: {path}: "):]


def test_another_architecture_is_refused_in_one_line_naming_the_key_and_both_shapes(tmp_path):
    state = source_model().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(5, 24, 1, 1)  # a wider network
    save_file(state, tmp_path / "wider.safetensors")
    assert one_line_error(tmp_path / "wider.safetensors") == (
        f"layer1.0.conv1.weight is 5x24x1x1 in the file but "
        f"{'x'.join(map(str, source_model().state_dict()['layer1.0.conv1.weight'].shape))} in {TIMM} "
        "(weights of another architecture?)")
    torch.manual_seed(0)
    save_file(timm.create_model("test_efficientnet").state_dict(), tmp_path / "effnet.safetensors")
    assert one_line_error(tmp_path / "effnet.safetensors").endswith("(weights of another architecture?)")
    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "unrelated.pt")
    assert one_line_error(tmp_path / "unrelated.pt") == (
        f"none of its 1 tensors is one of {TIMM}'s (the file's first is 'conv.weight', {TIMM}'s "
        "'conv1.0.weight'): weights of another architecture?")


class RunsCode:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_missing_corrupt_unsafe_and_foreign_files_are_one_line_naming_the_file(tmp_path):
    error = one_line_error
    assert error(tmp_path / "missing.safetensors") == "weights file not found"
    (tmp_path / "garbage.safetensors").write_bytes(b"not safetensors at all" * 4)
    assert error(tmp_path / "garbage.safetensors").startswith("corrupt or truncated safetensors file")
    torch.save(source_model().state_dict(), tmp_path / "cut.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "cut.pt").read_bytes()[:5000])
    assert error(tmp_path / "cut.pt").startswith("corrupt or truncated weights file")
    (tmp_path / "code.pth").write_bytes(pickle.dumps({"state_dict": RunsCode()}))
    assert error(tmp_path / "code.pth").startswith("refused: the file holds objects other than tensors")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no_weights.pt")
    assert error(tmp_path / "no_weights.pt") == "not a state dict ('epoch' holds a int, not a tensor)"
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    assert error(tmp_path / "list.pt") == "not a state dict (it holds a list)"
    (tmp_path / "w.npz").write_bytes(b"")
    assert error(tmp_path / "w.npz") == "unknown weights format '.npz' (.safetensors, .pt, .pth, .bin)"


def test_a_saved_model_never_reads_the_weights_file_again(tmp_path):
    save_file(source_model().state_dict(), tmp_path / "w.safetensors")
    config = Config(model=ModelConfig(backbone=TIMM, weights=str(tmp_path / "w.safetensors")))
    model = create_embedder(config.model, config.data.channels)
    save_embedder(tmp_path / "model.pt", model, config.model, config.data)
    (tmp_path / "w.safetensors").unlink()
    loaded, _ = load_embedding_net(tmp_path / "model.pt", config.model)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_the_stages_fingerprint_holds_the_files_digest_and_a_missing_file_stops_the_run(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(source_model().state_dict(), path)
    config = load_config(None, [f"model.weights={path}", f"model.backbone={TIMM}"])
    ctx = RunContext(config, tmp_path / "run", None, torch.device("cpu"))
    assert ctx.fingerprint("teacher")["weights"] == hashlib.sha256(path.read_bytes()).hexdigest()
    path.unlink()
    with pytest.raises(CheckpointError, match=f"^model.weights: {path}: weights file not found$"):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_weights_and_pretrained_together_are_refused():
    with pytest.raises(ConfigError, match="^model.weights: set either model.weights or model.pretrained"):
        load_config(None, ["model.weights=w.pt", "model.pretrained=true"])


def test_pretrained_without_network_fails_at_once_through_the_hubs_offline_mode(tmp_path, monkeypatch,
                                                                                no_network):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(CheckpointError) as caught:
        create_embedder(ModelConfig(backbone=TIMM, pretrained=True), 3)
    message = str(caught.value)
    assert "\n" not in message
    assert message == (f"model.pretrained: cannot load the pretrained weights of {TIMM} "
                       f"(timm/test_resnet.r160_in1k): not in the hub's cache ({tmp_path / 'empty_cache'}) "
                       "and the hub cannot be reached; give a local copy as model.weights: PATH with "
                       "model.pretrained: false")
    assert no_network == []


def test_cached_pretrained_weights_load_without_network_and_without_offline_mode(tmp_path, monkeypatch,
                                                                                 no_network):
    # The hub's cache layout: models--ORG--NAME/refs/main names the snapshot holding the files.
    source, revision = source_model(num_classes=1000), "0" * 40
    repo = tmp_path / "cache" / "models--timm--test_resnet.r160_in1k"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    save_file(source.state_dict(), repo / "snapshots" / revision / "model.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    model = create_embedder(ModelConfig(backbone=TIMM, pretrained=True), 3)
    assert_loaded(model, source)
    assert no_network == [] and constants.HF_HUB_OFFLINE is False
