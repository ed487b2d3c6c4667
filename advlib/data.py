"""MNIST as tensors: the verified raw files, transformed once, cached, served.

The four IDX files under ``<root>/MNIST/raw/`` (torchvision's layout) must match the original MNIST md5 sums: every
load checks them (:func:`verify_raw`) and refuses anything else, with the fix in the message. Fetching them is
:mod:`advlib.download`'s job (``python -m advlib.download --root data``); :func:`load_mnist` calls it when they are
missing, importing it inside the function, so ``import advlib`` never imports it.

Images are then transformed once exactly as the original report did (Resize 32 -> ToTensor -> Normalize(0.5, 0.5)):
the resize (PIL's, uint8 out) is cached as 32x32 uint8 tensors with a SHA-256 of their bytes, checked on every load.
:func:`load_mnist` loads only the splits asked for; training images stay uint8 (:func:`batches` normalizes each
batch to [-1, 1]), test images become float tensors in [-1, 1].
"""
from __future__ import annotations

import hashlib
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from advlib.io import atomic_torch_save

# md5 sums of the original, uncompressed MNIST files (Y. LeCun's distribution).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

IMAGE_SIZE = 32  # the original report resizes 28x28 -> 32x32
MEAN, STD = 0.5, 0.5  # Normalize(0.5, 0.5): pixel p in [0, 1] becomes (p - 0.5) / 0.5 in [-1, 1]
BOUNDS = (-1.0, 1.0)  # the normalized range of load_mnist's images: pass bounds=BOUNDS to advlib's attacks
NUM_CLASSES = 10  # MNIST's digits 0..9 (the attacks read the class count from the model's output instead)
CACHE_VERSION = 1  # bump when the cached transform changes
SPLITS = ("train", "test")
TRAIN_SIZE = 60_000  # MNIST's training images
VALIDATION_SIZE = 10_000  # the classic 50,000 + 10,000 split of those (the validation images come last)

FIX_HINT = "Delete the folder and run `python -m advlib.download --root {root}` again to fetch a verified copy."


class DataError(RuntimeError):
    """The MNIST files are missing, truncated or not the original ones."""


def raw_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "MNIST" / "raw"


def hash_file(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file's bytes (read in 1 MiB chunks) with a hashlib algorithm ("md5", "sha256")."""
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
            raise DataError(f"MNIST file missing: {path}. Run `python -m advlib.download --root {root}` to fetch it.")
        actual = hash_file(path, "md5")
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
        fetch: fetch missing files first (:func:`advlib.download.fetch_mnist`); else a missing file raises DataError.
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
        from advlib.download import fetch_mnist  # here, not at the top: `import advlib` must not import it
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


if __name__ == "__main__":  # the command line moved: say where, rather than silently do nothing
    raise SystemExit("the command line moved: run `python -m advlib.download --root data`")
