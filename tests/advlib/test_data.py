"""advlib.data: the files are the originals, the tensors are what torchvision's pipeline makes, damage is refused.

Fashion-MNIST's checks and loading run on small IDX files made here, pinned in place of the real ones. Fetching the
files (advlib.download) is tested in tests/advlib/test_download.py."""
from __future__ import annotations

import dataclasses
import hashlib
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import advlib.data as data_mod
from advlib.data import (MNIST, MNIST_MD5, DataError, SplitNotLoaded, batches, is_verified, load_dataset, load_mnist,
                         raw_dir, verify_raw)

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
    assert full.train_u8.shape == (60000, 1, 32, 32) and full.train_u8.dtype == torch.uint8
    assert full.train_u8.min().item() == 0 and full.train_u8.max().item() == 255
    assert full.test_x.shape == (10000, 1, 32, 32)
    assert full.train_y.shape == (60000,) and full.test_y.shape == (10000,)
    for x in (full.train_x, full.test_x):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 32, 32)
        assert x.min().item() == -1.0 and x.max().item() == 1.0
    for y in (full.train_y, full.test_y):
        assert y.dtype == torch.int64
        assert set(y.unique().tolist()) == set(range(10))
    # the class counts are MNIST's (a wrong train/valid concatenation or label file would change them)
    assert torch.bincount(full.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(full.train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_train_subset_is_a_prefix(data_root, full):
    sub = load_mnist(data_root, fetch=False, train_subset=100)
    assert torch.equal(sub.train_u8, full.train_u8[:100]) and torch.equal(sub.train_y, full.train_y[:100])
    assert torch.equal(sub.test_x, full.test_x)


def test_train_x_is_a_fresh_float_copy_of_train_u8(full):
    sub = MNIST(full.train_u8[:50], full.train_y[:50], None, None)
    first = sub.train_x
    # ToTensor's and Normalize's arithmetic written out: p / 255, then (v - 0.5) / 0.5
    assert torch.equal(first, (sub.train_u8.to(torch.float32) / 255 - 0.5) / 0.5)
    first.zero_()  # a copy: changing it changes neither the pixels nor the next access
    assert torch.equal(sub.train_x, (sub.train_u8.to(torch.float32) / 255 - 0.5) / 0.5)


@pytest.mark.parametrize("splits", [("test",), ("train",), ("train", "test"), ("test", "train"), "test"])
def test_load_only_the_splits_asked_for(data_root, full, monkeypatch, splits):
    read = []
    real = data_mod._cached_split
    monkeypatch.setattr(data_mod, "_cached_split",
                        lambda root, split, *rest: read.append(split) or real(root, split, *rest))
    got = load_mnist(data_root, fetch=False, splits=splits)
    wanted = {splits} if isinstance(splits, str) else set(splits)
    assert set(read) == wanted  # the other split's cache is not even read
    if "train" in wanted:
        assert torch.equal(got.train_u8, full.train_u8) and torch.equal(got.train_y, full.train_y)
    else:
        assert got.train_u8 is None and got.train_y is None
        with pytest.raises(SplitNotLoaded, match=r"load_dataset\(dataset, root, splits="):
            got.train_x
        with pytest.raises(SplitNotLoaded, match="splits="):
            got.split_validation()
    if "test" in wanted:
        assert torch.equal(got.test_x, full.test_x) and torch.equal(got.test_y, full.test_y)
    else:
        assert got.test_x is None and got.test_y is None


@pytest.mark.parametrize("kwargs, match", [
    ({"splits": ("valid",)}, r"splits must be a non-empty subset of \('train', 'test'\)"),
    ({"splits": ("train", "tset")}, r"\('train', 'test'\)"),
    ({"splits": ()}, "non-empty"),
    ({"splits": ("test",), "train_subset": 10}, "needs the training split"),
    ({"train_subset": 0}, "train_subset"),
])
def test_load_rejects_bad_arguments(data_root, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_mnist(data_root, fetch=False, **kwargs)


def test_split_validation_is_the_classic_50k_10k_split(full):
    rest, val_x, val_y = full.split_validation()
    assert rest.train_u8.shape == (50000, 1, 32, 32) and rest.train_y.shape == (50000,)
    assert torch.equal(rest.train_u8, full.train_u8[:50000]) and torch.equal(rest.train_y, full.train_y[:50000])
    assert val_x.dtype == torch.float32 and val_x.shape == (10000, 1, 32, 32)
    assert torch.equal(val_x, (full.train_u8[50000:].to(torch.float32) / 255 - 0.5) / 0.5)
    assert torch.equal(val_y, full.train_y[50000:])
    assert rest.test_x is full.test_x and rest.test_y is full.test_y  # the test split is not touched
    small, vx, vy = full.split_validation(512)
    assert len(small.train_u8) == 60000 - 512 and torch.equal(vy, full.train_y[-512:])


@pytest.mark.parametrize("n_val", [0, -1, 60000, 1.5])
def test_split_validation_rejects_bad_sizes(full, n_val):
    with pytest.raises(ValueError, match="n_val"):
        full.split_validation(n_val)


@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_tensors_equal_torchvision_pipeline(data_root, full, train):
    """The cached tensors are exactly what the original report's torchvision pipeline produces."""
    import torchvision
    from torchvision import transforms

    ds = torchvision.datasets.MNIST(str(data_root), train=train, download=False, transform=transforms.Compose(
        [transforms.Resize(32), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]))
    x_all, y_all = (full.train_x, full.train_y) if train else (full.test_x, full.test_y)  # train_x: normalize(u8)
    n = len(ds)
    gen = torch.Generator().manual_seed(7)
    idx = sorted(set(torch.randint(0, n, (250,), generator=gen).tolist()) | {0, 1, n - 1})
    for i in idx:
        img, label = ds[i]
        assert torch.equal(img.unsqueeze(0), x_all[i : i + 1]), f"image {i} differs from torchvision's"
        assert label == y_all[i].item()


# ---------------------------------------------------------------------------------------------------------------
# The tensor cache is verified on load (a copy in tmp_path; data/ is never written)


@pytest.fixture
def cache_copy(raw_copy, data_root) -> Path:
    """raw_copy plus a copy of data/'s tensor cache (both splits), as a data root in tmp_path."""
    load_mnist(data_root, fetch=False)  # make sure data/'s cache exists and is current
    import shutil

    shutil.copytree(data_root / "MNIST" / "cache", raw_copy / "MNIST" / "cache")
    return raw_copy


def _cache_file(root: Path, split: str) -> Path:
    (path,) = (root / "MNIST" / "cache").glob(f"{split}-*.pt")
    return path


def _edit_test_image(blob):
    blob["images"][0] = 255  # the first test image becomes white


def _edit_train_label(blob):
    blob["labels"][7] = (blob["labels"][7] + 1) % 10  # one label changed


@pytest.mark.parametrize("split, edit", [("test", _edit_test_image), ("train", _edit_train_label)])
def test_edited_cache_is_detected_and_rebuilt(cache_copy, full, split, edit):
    path = _cache_file(cache_copy, split)
    blob = torch.load(path, weights_only=True)
    edit(blob)  # everything else, its stamps and stored digest included, stays as written
    torch.save(blob, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = load_mnist(cache_copy, fetch=False)
    # the true data, not the edited cache
    assert torch.equal(got.test_x, full.test_x) and torch.equal(got.test_y, full.test_y)
    assert torch.equal(got.train_y, full.train_y) and torch.equal(got.train_u8, full.train_u8)
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and "rebuilding" in said[0] and path.name in said[0], said  # said once, naming the file
    rebuilt = torch.load(path, weights_only=True)  # the cache is rewritten with the true tensors
    if split == "test":
        assert torch.equal(data_mod.normalize(rebuilt["images"]), full.test_x)
        assert torch.equal(rebuilt["labels"], full.test_y)
    else:
        assert torch.equal(rebuilt["images"], full.train_u8) and torch.equal(rebuilt["labels"], full.train_y)


def test_intact_cache_is_used_as_it_is(cache_copy, full):
    before = {split: _cache_file(cache_copy, split).stat().st_mtime_ns for split in ("train", "test")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the control: no warning, no rebuild
        got = load_mnist(cache_copy, fetch=False)
    assert {split: _cache_file(cache_copy, split).stat().st_mtime_ns for split in ("train", "test")} == before
    assert torch.equal(got.test_x, full.test_x) and torch.equal(got.train_u8, full.train_u8)


@pytest.mark.parametrize("damage", [b"", b"not a torch file"])
def test_unreadable_cache_is_rebuilt(cache_copy, full, damage):
    path = _cache_file(cache_copy, "test")
    path.write_bytes(damage)
    with pytest.warns(UserWarning, match="rebuilding"):
        got = load_mnist(cache_copy, fetch=False, splits=("test",))
    assert torch.equal(got.test_x, full.test_x)


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
        assert "python -m advlib.download --root" in message  # says how to fix it


def test_corrupted_byte_is_refused(raw_copy):
    path = raw_dir(raw_copy) / "t10k-images-idx3-ubyte"
    payload = bytearray(path.read_bytes())
    payload[len(payload) // 2] ^= 0x01  # one bit, same length
    _replace(path, bytes(payload))
    with pytest.raises(DataError, match="python -m advlib.download --root"):
        load_mnist(raw_copy, fetch=False)
    assert not (raw_copy / "MNIST" / "cache").exists()  # nothing was built from the bad file


@pytest.mark.parametrize("name", sorted(MNIST_MD5))
def test_missing_file_is_refused_with_fix(raw_copy, name):
    (raw_dir(raw_copy) / name).unlink()
    with pytest.raises(DataError) as info:
        load_mnist(raw_copy, fetch=False)
    message = str(info.value)
    assert "missing" in message and name in message
    assert "python -m advlib.download --root" in message


def test_empty_root_is_refused(tmp_path):
    with pytest.raises(DataError, match="missing"):
        verify_raw(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Fashion-MNIST, on small IDX files written here and pinned in place of the real ones (data/ is never read)

FASHION_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")
SMALL_TRAIN_Y = [0, 1, 2, 3, 4, 5]
SMALL_TEST_Y = [9, 0, 1, 2]


def small_fashion_files() -> dict[str, bytes]:
    """Four small IDX files (6 training and 4 test images of 28x28 uint8), with the real headers' layout."""
    rng = np.random.default_rng(0)

    def images(n):
        return struct.pack(">IIII", 0x00000803, n, 28, 28) + rng.integers(0, 256, (n, 28, 28), dtype=np.uint8).tobytes()

    def labels(ys):
        return struct.pack(">II", 0x00000801, len(ys)) + bytes(ys)

    return dict(zip(FASHION_NAMES, (images(len(SMALL_TRAIN_Y)), labels(SMALL_TRAIN_Y), images(len(SMALL_TEST_Y)),
                                    labels(SMALL_TEST_Y))))


def pin_small_fashion(monkeypatch, files: dict[str, bytes]) -> None:
    """Make ``files`` the pinned Fashion-MNIST files: their size and SHA-256, as the real entry pins the real ones."""
    real = data_mod.DATASETS["fashion_mnist"]
    assert list(real.files) == list(files) and {v[1] for v in real.files.values()} == {"sha256"}
    pinned = {name: (len(b), "sha256", hashlib.sha256(b).hexdigest()) for name, b in files.items()}
    monkeypatch.setitem(data_mod.DATASETS, "fashion_mnist", dataclasses.replace(real, files=pinned))


@pytest.fixture
def small_fashion(tmp_path, monkeypatch) -> Path:
    """A data root in tmp_path whose FashionMNIST/raw holds the small files, pinned (size + SHA-256)."""
    files = small_fashion_files()
    pin_small_fashion(monkeypatch, files)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name, payload in files.items():
        (raw / name).write_bytes(payload)
    return tmp_path


def _tree(root: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under root (what a check must not change)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_fashion_small_files_are_accepted(small_fashion):
    """The control for the refusals below: the pinned small files verify, and verifying writes nothing."""
    before = _tree(small_fashion)
    verify_raw(small_fashion, "fashion_mnist")
    assert is_verified(small_fashion, "fashion_mnist") and not is_verified(small_fashion, "mnist")
    assert raw_dir(small_fashion, "fashion_mnist") == small_fashion / "FashionMNIST" / "raw"
    assert _tree(small_fashion) == before


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_fashion_truncated_file_is_refused_by_size_before_hashing(small_fashion, monkeypatch, name):
    """A truncated file is refused on its size (both sizes and the fix, with --dataset fashion_mnist, in the
    message), without hashing it (the real training images are 47 MB)."""
    path = raw_dir(small_fashion, "fashion_mnist") / name
    full_size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: full_size // 2])
    before = _tree(small_fashion)
    hashed = []
    real_hash = data_mod.hash_file
    monkeypatch.setattr(data_mod, "hash_file", lambda p, alg: hashed.append(Path(p).name) or real_hash(p, alg))
    with pytest.raises(DataError) as info:
        verify_raw(small_fashion, "fashion_mnist")
    message = str(info.value)
    assert "Fashion-MNIST" in message and name in message
    assert f"has {full_size // 2:,} bytes, expected {full_size:,}" in message
    assert f"python -m advlib.download --root {small_fashion} --dataset fashion_mnist" in message
    assert name not in hashed
    assert _tree(small_fashion) == before  # nothing written, nothing removed


def test_fashion_tampered_file_of_the_right_size_is_refused_by_sha256(small_fashion):
    """One changed byte, same size: refused on its SHA-256, with the fix in the message."""
    path = raw_dir(small_fashion, "fashion_mnist") / "t10k-images-idx3-ubyte"
    payload = bytearray(path.read_bytes())
    payload[16 + 28 * 14] ^= 0x01
    path.write_bytes(bytes(payload))
    before = _tree(small_fashion)
    for call in (lambda: verify_raw(small_fashion, "fashion_mnist"),
                 lambda: load_dataset("fashion_mnist", small_fashion, fetch=False)):
        with pytest.raises(DataError) as info:
            call()
        message = str(info.value)
        assert "t10k-images-idx3-ubyte" in message and "has sha256 " in message
        assert "--dataset fashion_mnist" in message
    assert _tree(small_fashion) == before  # no cache was built from the bad file


@pytest.mark.parametrize("name", FASHION_NAMES)
def test_fashion_missing_file_is_refused(small_fashion, name):
    """A missing file is named, with the command that fetches it."""
    (raw_dir(small_fashion, "fashion_mnist") / name).unlink()
    before = _tree(small_fashion)
    with pytest.raises(DataError) as info:
        verify_raw(small_fashion, "fashion_mnist")
    message = str(info.value)
    assert "Fashion-MNIST file missing" in message and name in message
    assert "--dataset fashion_mnist" in message
    assert _tree(small_fashion) == before


def test_load_dataset_fashion_small_files(small_fashion):
    """load_dataset("fashion_mnist") on the small files: shapes, labels, class names, the cache under
    FashionMNIST/cache, and the pixels torchvision's FashionMNIST pipeline gives."""
    import torchvision
    from torchvision import transforms

    got = load_dataset("fashion_mnist", small_fashion, fetch=False)
    assert got.dataset == "fashion_mnist" and "Fashion-MNIST" in repr(got)
    assert got.classes[0] == "T-shirt/top" and got.classes[9] == "Ankle boot" and len(got.classes) == 10
    assert got.train_u8.shape == (6, 1, 32, 32) and got.train_u8.dtype == torch.uint8
    assert got.test_x.shape == (4, 1, 32, 32) and got.test_x.dtype == torch.float32
    assert got.test_x.min().item() >= -1.0 and got.test_x.max().item() <= 1.0
    assert got.train_y.tolist() == SMALL_TRAIN_Y and got.test_y.tolist() == SMALL_TEST_Y
    assert got.train_y.dtype == torch.int64
    cache = small_fashion / "FashionMNIST" / "cache"
    assert sorted(p.name for p in cache.iterdir()) == ["test-32px-v1.pt", "train-32px-v1.pt"]
    assert not (small_fashion / "MNIST").exists()
    pipeline = transforms.Compose([transforms.Resize(32), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    ds = torchvision.datasets.FashionMNIST(str(small_fashion), train=False, download=False, transform=pipeline)
    for i in range(len(ds)):
        img, label = ds[i]
        assert torch.equal(img.unsqueeze(0), got.test_x[i : i + 1]) and label == got.test_y[i].item()
    # the second load reads the cache (no warning, not rewritten) and gives the same tensors
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_dataset("fashion_mnist", small_fashion, fetch=False, splits=("train",), train_subset=2)
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps
    assert torch.equal(again.train_u8, got.train_u8[:2]) and again.test_x is None


@pytest.mark.parametrize("call", [lambda root: load_dataset("kmnist", root, fetch=False),
                                  lambda root: load_dataset("kmnist", root),
                                  lambda root: verify_raw(root, "FashionMNIST"),
                                  lambda root: data_mod.class_names("fashion")],
                         ids=["load", "load-fetch", "verify", "class_names"])
def test_unknown_dataset_is_refused_naming_the_known_ones(tmp_path, call):
    """An unknown data set name is a ValueError that lists the known names, before anything is fetched or written."""
    with pytest.raises(ValueError, match=r"unknown dataset '\w+': use one of 'mnist', 'fashion_mnist'"):
        call(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_real_fashion_mnist_test_split(data_root):
    """The real Fashion-MNIST test split (data/, where verified): 10,000 images, each class 1,000 times."""
    if not is_verified(data_root, "fashion_mnist"):
        pytest.skip(f"no verified Fashion-MNIST in {data_root} (python -m advlib.download --root data "
                    "--dataset fashion_mnist)")
    got = load_dataset("fashion_mnist", data_root, fetch=False, splits=("test",))
    assert got.test_x.shape == (10000, 1, 32, 32) and got.test_y.shape == (10000,)
    assert got.test_x.min().item() == -1.0 and got.test_x.max().item() == 1.0
    assert torch.bincount(got.test_y, minlength=10).tolist() == [1000] * 10
    assert got.train_u8 is None and got.classes[0] == "T-shirt/top"


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


def test_batches_normalize_uint8_per_batch():
    gen = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8, generator=gen)
    y = torch.arange(50) % 10
    floats = (u8.to(torch.float32) / 255 - 0.5) / 0.5  # the oracle: ToTensor then Normalize(0.5, 0.5)
    for shuffle in (False, True):
        a = list(batches(u8, y, 16, shuffle=shuffle, generator=torch.Generator().manual_seed(3)))
        b = list(batches(floats, y, 16, shuffle=shuffle, generator=torch.Generator().manual_seed(3)))
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert xa.dtype == torch.float32 and torch.equal(xa, xb) and torch.equal(ya, yb)
    # float input passes through unchanged (no copy in order)
    first, _ = next(batches(floats, y, 16))
    assert first.data_ptr() == floats.data_ptr()
