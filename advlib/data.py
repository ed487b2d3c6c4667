"""MNIST and Fashion-MNIST as tensors: the verified raw files, transformed once, cached, served.

Both data sets have the same shape (60,000 + 10,000 grey 28x28 images, 10 classes) and the same four IDX files,
under ``<root>/<folder>/raw/`` (torchvision's layout: ``MNIST/raw``, ``FashionMNIST/raw``). :data:`DATASETS` pins
each file's content (MNIST: the original md5 sums; Fashion-MNIST: size and SHA-256 of the decompressed files, which
every official copy shares, whatever its gzip header): every load checks them (:func:`verify_raw`) and refuses
anything else, with the fix in the message. Fetching them is :mod:`advlib.download`'s job (``python -m
advlib.download --root data --dataset mnist fashion_mnist``); :func:`load_dataset` calls it when they are missing,
importing it inside the function, so ``import advlib`` never imports it.

By default images are transformed once exactly as the original report did (Resize 32 -> ToTensor -> Normalize(0.5,
0.5)): the resize (PIL's, uint8 out) is cached as 32x32 uint8 tensors with a SHA-256 of their bytes, checked on
every load. ``load_dataset(..., image_size=28, bounds=(0, 1))`` serves the raw 28x28 pixels in [0, 1] instead (the
field's format: ToTensor alone). :func:`load_dataset` loads only the splits asked for; training images stay uint8
(:func:`batches` converts each batch to the data's bounds), test images become float tensors in those bounds.
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
# Size and SHA-256 of the decompressed Fashion-MNIST files (Zalando Research's release). Debian re-gzipped them
# (another gzip header, so other .gz md5 sums than torchvision's), the content is the same: check the content.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": (47_040_016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (60_008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (7_840_016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (10_008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}


@dataclass(frozen=True)
class Dataset:
    """One MNIST-shaped data set: where its files live and what they must be.

    name: the key in :data:`DATASETS` (a workflow's ``dataset`` parameter); title: how text names it; folder: its
    folder under the data root (torchvision's); files: {IDX file: (size in bytes or None, algorithm, hex digest)};
    classes: the 10 class names, label k -> classes[k]."""

    name: str
    title: str
    folder: str
    files: dict
    classes: tuple[str, ...]


DATASETS = {
    "mnist": Dataset("mnist", "MNIST", "MNIST", {k: (None, "md5", v) for k, v in MNIST_MD5.items()},
                     tuple(str(d) for d in range(10))),
    "fashion_mnist": Dataset("fashion_mnist", "Fashion-MNIST", "FashionMNIST",
                             {k: (size, "sha256", h) for k, (size, h) in FASHION_MNIST_SHA256.items()},
                             ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                              "Bag", "Ankle boot")),
}


def dataset_info(dataset: str) -> Dataset:
    """The :class:`Dataset` named ``dataset``. Raises ValueError naming the known ones."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: use one of {', '.join(map(repr, DATASETS))}")
    return DATASETS[dataset]


def class_names(dataset: str = "mnist") -> tuple[str, ...]:
    """The 10 class names of a data set, label k -> names[k] ("0".."9" for MNIST)."""
    return dataset_info(dataset).classes

IMAGE_SIZE = 32  # the original report resizes 28x28 -> 32x32
RAW_SIZE = 28  # the files' own size (load_dataset(..., image_size=28): no resize, as most of the field uses MNIST)
MEAN, STD = 0.5, 0.5  # Normalize(0.5, 0.5): pixel p in [0, 1] becomes (p - 0.5) / 0.5 in [-1, 1]
BOUNDS = (-1.0, 1.0)  # the normalized range of load_mnist's images: pass bounds=BOUNDS to advlib's attacks
NUM_CLASSES = 10  # both data sets' classes (the attacks read the class count from the model's output instead)
CACHE_VERSION = 1  # bump when the cached transform changes
SPLITS = ("train", "test")
TRAIN_SIZE = 60_000  # MNIST's training images
VALIDATION_SIZE = 10_000  # the classic 50,000 + 10,000 split of those (the validation images come last)

FIX_HINT = ("Delete the folder and run `python -m advlib.download --root {root} --dataset {dataset}` again to fetch "
            "a verified copy.")


class DataError(RuntimeError):
    """The data set's files are missing, truncated or not the original ones."""


def raw_dir(root: str | os.PathLike, dataset: str = "mnist") -> Path:
    return Path(root) / dataset_info(dataset).folder / "raw"


def hash_file(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file's bytes (read in 1 MiB chunks) with a hashlib algorithm ("md5", "sha256")."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_raw(root: str | os.PathLike, dataset: str = "mnist") -> None:
    """Check the four IDX files under ``<root>/<folder>/raw`` against the pinned sizes and digests (:data:`DATASETS`).

    Raises:
        DataError: a file is missing, truncated or differs, with the fix in the message.
    """
    info = dataset_info(dataset)
    folder = raw_dir(root, dataset)
    for name, (size, algorithm, expected) in info.files.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"{info.title} file missing: {path}. Run `python -m advlib.download --root {root} "
                            f"--dataset {dataset}` to fetch it.")
        if size is not None and path.stat().st_size != size:
            raise DataError(f"{info.title} file {path} has {path.stat().st_size:,} bytes, expected {size:,} "
                            "(truncated or not the original file). " + FIX_HINT.format(root=root, dataset=dataset))
        actual = hash_file(path, algorithm)
        if actual != expected:
            raise DataError(
                f"{info.title} file {path} has {algorithm} {actual}, expected {expected} (truncated or not the "
                "original file). " + FIX_HINT.format(root=root, dataset=dataset)
            )


def is_verified(root: str | os.PathLike, dataset: str = "mnist") -> bool:
    try:
        verify_raw(root, dataset)
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


def to_bounds(images_u8: torch.Tensor, bounds: Sequence[float] = BOUNDS) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in ``bounds`` = (low, high): low + (high - low) * pixel / 255. The study's
    (-1, 1) is :func:`normalize` (the original report's arithmetic); (0, 1) is ToTensor's pixel / 255 exactly."""
    low, high = float(bounds[0]), float(bounds[1])
    if (low, high) == BOUNDS:
        return normalize(images_u8)
    if images_u8.dtype != torch.uint8:
        raise ValueError(f"to_bounds expects uint8 pixels 0..255, got {images_u8.dtype}")
    x = images_u8.to(torch.float32).div_(255)
    return x if (low, high) == (0.0, 1.0) else x.mul_(high - low).add_(low)


def as_float(x: torch.Tensor, bounds: Sequence[float] = BOUNDS) -> torch.Tensor:
    """Images as float32 in ``bounds`` (default [-1, 1]): uint8 pixels are converted (a new tensor,
    :func:`to_bounds`), float images returned as they are."""
    return to_bounds(x, bounds) if x.dtype == torch.uint8 else x


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


def _cached_split(root: str | os.PathLike, split: str, dataset: str = "mnist",
                  image_size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, S, S) uint8 images (S = image_size) and (N,) int64 labels of one split: the verified raw files as
    they are for S = 28, else resized once and cached.

    The cache stores a SHA-256 of its tensors; one that does not match (edited, damaged, or from an older
    version) is rebuilt from the verified raw files, with a warning saying so."""
    info = dataset_info(dataset)
    prefix = "train" if split == "train" else "t10k"
    labels_path = raw_dir(root, dataset) / f"{prefix}-labels-idx1-ubyte"
    if image_size == RAW_SIZE:  # the verified files themselves: nothing to cache
        images = torch.from_numpy(read_idx(raw_dir(root, dataset) / f"{prefix}-images-idx3-ubyte").copy())
        return images.unsqueeze(1), torch.from_numpy(read_idx(labels_path).astype(np.int64))
    cache = Path(root) / info.folder / "cache" / f"{split}-{image_size}px-v{CACHE_VERSION}.pt"
    stamp = info.files[f"{prefix}-images-idx3-ubyte"][2]  # the digest of the raw images it was made from
    if cache.is_file():
        cached = _read_cache(cache, stamp)
        if not isinstance(cached, str):
            return cached
        warnings.warn(f"{info.title} cache {cache} is {cached}: rebuilding it from the verified raw files",
                      stacklevel=3)
    images = resize_uint8(read_idx(raw_dir(root, dataset) / f"{prefix}-images-idx3-ubyte"), image_size)
    labels = torch.from_numpy(read_idx(labels_path).astype(np.int64))
    atomic_torch_save({"images": images, "labels": labels, "source_md5": stamp,
                       "sha256": _tensor_digest(images, labels)}, cache)
    return images, labels


def check_range(bounds: Sequence[float]) -> tuple[float, float]:
    """(low, high) as floats, low < high; a clear error otherwise."""
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (low, high) such as (-1, 1) or (0, 1), got {bounds!r}") from None
    if not low < high:
        raise ValueError(f"bounds must satisfy low < high, got {bounds!r}")
    return low, high


class SplitNotLoaded(RuntimeError):
    """A split was asked for that load_dataset(..., splits=...) did not load."""


@dataclass
class MNIST:
    """An MNIST-shaped data set as tensors (MNIST or Fashion-MNIST: ``dataset``); a split not loaded is None.

    train_u8: (N, 1, S, S) uint8 pixels 0..255 (a quarter of the float size; see train_x); S = 32 (the original
    report's resize, the default) or 28 (the raw files).
    train_y, test_y: (N,) / (M,) int64 labels in 0..9 (``classes`` names them).
    test_x: (M, 1, S, S) float32 in ``bounds``: [-1, 1] by default (the original report's normalization), or
    (0, 1) pixels.
    """

    train_u8: torch.Tensor | None
    train_y: torch.Tensor | None
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    dataset: str = "mnist"
    bounds: tuple[float, float] = BOUNDS

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, label k -> classes[k]."""
        return class_names(self.dataset)

    @property
    def train_x(self) -> torch.Tensor:
        """train_u8 as float32 in ``bounds`` (normalized for the default [-1, 1]). A new float copy on every access
        (245 MB for all 60,000 32x32 images): keep the result rather than reading it twice, and train with
        batches(train_u8, ...), which never makes it."""
        return to_bounds(self._train_u8(), self.bounds)

    def _train_u8(self) -> torch.Tensor:
        if self.train_u8 is None:
            raise SplitNotLoaded("the training split was not loaded: use load_dataset(dataset, root, splits=(\"train\", "
                                 "\"test\")) or splits=(\"train\",)")
        return self.train_u8

    def split_validation(self, n_val: int = VALIDATION_SIZE) -> tuple["MNIST", torch.Tensor, torch.Tensor]:
        """Hold out the last n_val training images for validation (model selection), never a test image.

        MNIST's classic 50,000 + 10,000 split: the offline source ships the validation images last, so with all
        60,000 images and the default n_val this is exactly that split.

        Returns:
            (this MNIST with only the first N - n_val training images, val_x (n_val, 1, S, S) float32 in
            ``bounds``, val_y (n_val,) int64)
        Raises:
            SplitNotLoaded: the training split was not loaded. ValueError: n_val is not in 1..N-1.
        """
        u8 = self._train_u8()
        if not isinstance(n_val, int) or not 0 < n_val < len(u8):
            raise ValueError(f"n_val must be an integer in 1..{len(u8) - 1} (there are {len(u8)} training images), "
                             f"got {n_val!r}")
        cut = len(u8) - n_val
        return (MNIST(u8[:cut], self.train_y[:cut], self.test_x, self.test_y, self.dataset, self.bounds),
                to_bounds(u8[cut:], self.bounds), self.train_y[cut:])

    def __repr__(self) -> str:
        train = "not loaded" if self.train_u8 is None else f"{tuple(self.train_u8.shape)} uint8"
        test = ("not loaded" if self.test_x is None
                else f"{tuple(self.test_x.shape)} float in [{self.bounds[0]:g}, {self.bounds[1]:g}]")
        return f"{dataset_info(self.dataset).title}(train={train}, test={test})"


def load_mnist(root: str | os.PathLike = "data", **kwargs) -> MNIST:
    """Verified MNIST: ``load_dataset("mnist", root, ...)`` (same keyword arguments)."""
    return load_dataset("mnist", root, **kwargs)


def load_dataset(dataset: str = "mnist", root: str | os.PathLike = "data", *, splits: Sequence[str] = SPLITS,
                 fetch: bool = True, train_subset: int | None = None, image_size: int = IMAGE_SIZE,
                 bounds: Sequence[float] = BOUNDS) -> MNIST:
    """A verified data set of :data:`DATASETS` ("mnist", "fashion_mnist"), transformed as in the original report:
    training images as uint8, test images as floats in [-1, 1].

    The Resize runs once per image and is cached (with a SHA-256 of the tensors, checked on every load) under
    ``<root>/<folder>/cache``; later loads take about a second.

    Args:
        dataset: "mnist" or "fashion_mnist".
        root: data directory.
        splits: the splits to load, any non-empty subset of ("train", "test"); the others are None.
        fetch: fetch missing files first (:func:`advlib.download.fetch_dataset`); else a missing file raises
            DataError.
        train_subset: keep only the first n training images (for quick runs and tests).
        image_size: 32 (the original report's resize, cached) or 28 (the raw files, as most of the field; another
            size is resized and cached like 32).
        bounds: the test images' float range, (-1, 1) (the original report's normalization) or (0, 1) (pixels, as
            most of the field); training images stay uint8 and :func:`batches` converts them to the same range.
    Raises:
        ValueError: an unknown data set or split, or a bad train_subset. DataError: missing or damaged raw files.
    """
    dataset_info(dataset)
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    if not splits or any(s not in SPLITS for s in splits):
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {splits!r}")
    if train_subset is not None and (not isinstance(train_subset, int) or train_subset < 1):
        raise ValueError(f"train_subset must be None (all images) or a positive integer, got {train_subset!r}")
    if train_subset is not None and "train" not in splits:
        raise ValueError(f"train_subset={train_subset} needs the training split: add \"train\" to splits={splits!r}")
    if not isinstance(image_size, int) or image_size < 4:
        raise ValueError(f"image_size must be an integer >= 4 (28: the raw files, 32: the original report's resize), "
                         f"got {image_size!r}")
    bounds = check_range(bounds)
    if fetch:
        from advlib.download import fetch_dataset  # here, not at the top: `import advlib` must not import it
        fetch_dataset(root, dataset, verbose=False)
    verify_raw(root, dataset)
    train_u8 = train_y = test_x = test_y = None
    if "train" in splits:
        train_u8, train_y = _cached_split(root, "train", dataset, image_size)
        if train_subset is not None:
            train_u8, train_y = train_u8[:train_subset], train_y[:train_subset]
    if "test" in splits:
        test_u8, test_y = _cached_split(root, "test", dataset, image_size)
        test_x = to_bounds(test_u8, bounds)
    return MNIST(train_u8, train_y, test_x, test_y, dataset, bounds)


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None,
            bounds: Sequence[float] = BOUNDS) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) mini-batches; a fresh random order each call when shuffle (training), in order otherwise.

    x: (N, ...) uint8 pixels 0..255, converted per batch to float32 in ``bounds`` (default [-1, 1]; so a whole
    float copy of the set never exists), or float, yielded as it is. The order is drawn on the generator's device (CPU by default).
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
        yield as_float(xb, bounds), yb


if __name__ == "__main__":  # the command line moved: say where, rather than silently do nothing
    raise SystemExit("the command line moved: run `python -m advlib.download --root data`")
