"""advlib.checkpoint: plain-data checkpoints that rebuild their model, refuse code, and survive a crash mid-save."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import advlib
from advlib.attacks import predict
from advlib.checkpoint import (FORMAT_VERSION, CheckpointError, installed_version, load_checkpoint,
                               save_checkpoint)
from advlib.model import ResNetConfig, SmallResNet
from advlib.train import History


@pytest.fixture
def saved(trained, tmp_path) -> Path:
    path = tmp_path / "model.pt"
    save_checkpoint(path, trained.model, trained.optimizer, trained.history, trained.train_config.to_dict(),
                    metadata={"seed": trained.train_config.seed, "note": "unit test"})
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------------------------------------------
# Round trip


def test_round_trip(trained, saved, test_batch):
    ckpt = load_checkpoint(saved)
    model = ckpt.model
    assert model is not trained.model and not model.training
    assert model.config == trained.model.config
    original = trained.model.state_dict()
    loaded = model.state_dict()
    assert list(loaded) == list(original)
    for k in original:
        assert torch.equal(loaded[k], original[k]), k
    x, _ = test_batch
    p0, c0 = predict(trained.model, x)
    p1, c1 = predict(model, x)
    assert torch.equal(p0, p1) and torch.equal(c0, c1)


def test_round_trip_history_config_metadata(trained, saved):
    ckpt = load_checkpoint(saved)
    assert isinstance(ckpt.history, History)
    assert ckpt.history.to_dict() == trained.history.to_dict()
    assert len(ckpt.history.step_loss) > 0
    assert ckpt.train_config == trained.train_config.to_dict()
    meta = ckpt.metadata
    assert meta["seed"] == trained.train_config.seed and meta["note"] == "unit test"
    assert meta["torch"] == str(torch.__version__)
    assert meta["advlib"] == advlib.__version__
    for key in ("torchvision", "numpy", "python", "saved_at", "git_revision"):
        assert key in meta


def test_recorded_torchvision_version_is_torchvisions_own_without_importing_it():
    """The environment records torchvision.__version__ (build suffix included), read without the 2 s import."""
    code = ("import sys; from advlib.checkpoint import environment_info; v = environment_info()['torchvision']; "
            "print('torchvision' in sys.modules); import torchvision; print(v == torchvision.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_installed_version_of_a_missing_package_is_none():
    assert installed_version("advlib_no_such_package") is None
    assert installed_version("numpy") == __import__("numpy").__version__


def test_round_trip_optimizer_resumes(trained, saved):
    ckpt = load_checkpoint(saved)
    assert ckpt.optimizer_state is not None
    optimizer = torch.optim.Adam(ckpt.model.parameters(), lr=trained.train_config.lr)
    optimizer.load_state_dict(ckpt.optimizer_state)  # loads into a fresh optimizer
    original = trained.optimizer.state_dict()
    assert optimizer.state_dict()["param_groups"] == original["param_groups"]
    for i, state in original["state"].items():
        for key, value in state.items():
            assert torch.equal(optimizer.state_dict()["state"][i][key], value), (i, key)


def test_minimal_checkpoint(tmp_path, untrained_model):
    path = save_checkpoint(tmp_path / "bare.pt", untrained_model)
    ckpt = load_checkpoint(path)
    assert ckpt.optimizer_state is None
    assert ckpt.history.to_dict() == History().to_dict()
    assert ckpt.train_config == {}


def test_rebuilds_from_stored_config(tmp_path):
    cfg = ResNetConfig(stem_channels=4, block_channels=(4, 12), block_strides=(2, 2), num_classes=7)
    torch.manual_seed(0)
    model = SmallResNet(cfg).eval()
    path = save_checkpoint(tmp_path / "odd.pt", model)
    loaded = load_checkpoint(path).model
    assert loaded.config == cfg
    assert len(loaded.blocks) == 2 and loaded.fc.out_features == 7
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_checkpoint_holds_plain_data_only(saved):
    # the file loads with the strict loader by itself, i.e. it pickles no class
    blob = torch.load(saved, weights_only=True)
    assert blob["format_version"] == FORMAT_VERSION
    assert blob["model_config"] == ResNetConfig().to_dict()


# ---------------------------------------------------------------------------------------------------------------
# Refusals


class _Payload:
    """Unpickling this creates a marker file: what a malicious checkpoint would do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_refuses_pickled_code_without_running_it(tmp_path, untrained_model):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": FORMAT_VERSION, "model_config": ResNetConfig().to_dict(),
                "state_dict": untrained_model.state_dict(), "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused without running it"):
        load_checkpoint(path)
    assert not marker.exists()
    # the control: an unrestricted load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_refuses_whole_pickled_model(tmp_path, untrained_model):
    # the original report's format: torch.save(model)
    path = tmp_path / "whole.pt"
    torch.save(untrained_model, path)
    with pytest.raises(CheckpointError, match="pickled objects"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file(saved, tmp_path, keep):
    payload = saved.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(payload[: int(len(payload) * keep)])
    with pytest.raises(CheckpointError, match=str(cut)):
        load_checkpoint(cut)


def _garbage():
    import io
    import random

    rng = random.Random(0)
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(3)}}, buf, _use_new_zipfile_serialization=False)
    legacy = buf.getvalue()  # torch's pre-zip format goes through a different reader
    cases = {"text": b"this is not a checkpoint\n" * 10, "empty": b"", "one byte": b"\x80",
             "zip magic only": b"PK\x03\x04"}
    cases |= {f"legacy cut {i}": legacy[:i] for i in (2, 30, 120, len(legacy) // 2, len(legacy) - 1)}
    cases |= {f"random {i}": bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for i in range(40)}
    return cases


GARBAGE = _garbage()


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_file(tmp_path, name):
    # random bytes make torch.load raise many exception types (IndexError, KeyError, struct.error, ...):
    # every one must come out as CheckpointError
    path = tmp_path / "garbage.pt"
    path.write_bytes(GARBAGE[name])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_missing_file_points_to_training_notebook(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "nope.pt")
    assert "training notebook" in str(info.value) and "01_train" in str(info.value)


def test_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, None, "1"])
def test_incompatible_format_version(saved, tmp_path, version):
    blob = torch.load(saved, weights_only=True)
    if version is None:
        del blob["format_version"]
    else:
        blob["format_version"] = version
    path = tmp_path / "other.pt"
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(path)


def test_not_a_checkpoint_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(CheckpointError, match="not an advlib checkpoint"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_config(saved, tmp_path):
    blob = torch.load(saved, weights_only=True)
    blob["model_config"] = ResNetConfig(num_classes=5).to_dict()
    path = tmp_path / "mismatch.pt"
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(path)


def test_unknown_config_field(saved, tmp_path):
    blob = torch.load(saved, weights_only=True)
    blob["model_config"]["dropout"] = 0.5
    path = tmp_path / "future.pt"
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="dropout"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------------------------
# A crash mid-save


def test_interrupted_save_keeps_previous_checkpoint(trained, saved, monkeypatch, untrained_model):
    before = saved.read_bytes()
    real_save = torch.save
    calls = []

    def crashing_save(obj, f, *args, **kwargs):
        # write the first part of a real checkpoint, then die as a killed process would
        calls.append(str(f))
        real_save(obj, f, *args, **kwargs)
        data = Path(f).read_bytes()
        Path(f).write_bytes(data[: len(data) // 3])
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", crashing_save)  # the torch.save that advlib.io calls
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(saved, untrained_model)
    monkeypatch.undo()

    assert calls and calls[0] != str(saved)  # it wrote to a temporary file, not over the checkpoint
    assert Path(calls[0]).parent == saved.parent
    assert saved.read_bytes() == before  # the previous checkpoint is intact...
    assert leftovers(saved.parent) == []  # ...and no temporary file is left behind
    ckpt = load_checkpoint(saved)
    for k, v in trained.model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[k], v)


def test_interrupted_first_save_leaves_nothing(tmp_path, monkeypatch, untrained_model):
    def failing_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "sub" / "new.pt", untrained_model)
    assert list((tmp_path / "sub").iterdir()) == []


def test_save_overwrites_atomically(saved, untrained_model):
    save_checkpoint(saved, untrained_model)
    loaded = load_checkpoint(saved).model
    for k, v in untrained_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert leftovers(saved.parent) == []


def test_saved_file_has_the_usual_permissions(saved):
    # a temporary file from mkstemp is 0600; the checkpoint must get what open() would give (umask applied)
    mask = os.umask(0)
    os.umask(mask)
    assert saved.stat().st_mode & 0o777 == 0o666 & ~mask


def test_save_does_not_change_the_model(trained, tmp_path):
    model = copy.deepcopy(trained.model).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "m.pt", model)
    assert model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
