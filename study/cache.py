"""A content-addressed memo for the stages' expensive numbers.

A stage notebook re-runs whenever anything it imports changes, a plot included. Its costly computations (PGD
curves, the full-test-set sweep, the slider's precomputation) go through a :class:`Cache`, so a re-run after a
change to a plot or to the narrative finds their results instead of computing them again; the workflow's PGD jobs
(``python -m study.jobs pgd``) fill the same cache in parallel, before the notebook runs.

A result is found only when it was computed from exactly the same inputs:

- the function (module and name) and every argument but ``progress``: a model by the SHA-256 of its weights and buffers, a tensor
  by its dtype, shape and bytes, anything else by its JSON form;
- the source the function can reach: its own file and every module of advlib and study that file imports, in
  turn (:func:`study.sources.file_digest`, derived from the imports: a new module an attack imports is part of the
  key with no list to edit; changing a plot, the narrative or the workflow keeps the cache, changing an attack
  empties it);
- the torch version and the number of CPU threads (either can change float rounding).

Entries are ``torch.save`` files of plain values (numbers, strings, lists, dicts, tensors), loaded with
``weights_only=True``: a cache file cannot run code. They live in ``<artifact_dir>/cache/`` (git-ignored); deleting
the folder is always safe.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from advlib.io import atomic_torch_save
from study.sources import file_digest

UNKEYED = ("progress",)  # keyword arguments that only show work (a progress bar), never change a result


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's weights and buffers (names, shapes and bytes): which model a result belongs to."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and values (on any device)."""
    h = hashlib.sha256(f"{t.dtype} {tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def code_digest(fn: Callable) -> str:
    """SHA-256 of the source fn can reach: its file and the project modules that imports (see study.sources)."""
    return file_digest(inspect.getsourcefile(fn))


def _describe(value: Any) -> Any:
    """A JSON-able description of an argument that changes whenever its content does."""
    if isinstance(value, nn.Module):
        return {"model": model_digest(value)}
    if isinstance(value, torch.Tensor):
        return {"tensor": tensor_digest(value)}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in sorted(value.items())}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot key a cached call on a value of type {type(value).__name__}: pass models, tensors, numbers, strings "
                    "or lists and dicts of them")


def _check_plain(value: Any, where: str = "the result") -> None:
    """Raise TypeError unless value is made of what ``torch.load(weights_only=True)`` gives back."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_plain(v, f"{where}[{k!r}]")
    elif not (value is None or isinstance(value, (bool, int, float, str, torch.Tensor))):
        raise TypeError(f"{where} is a {type(value).__name__}: a cached function must return numbers, strings, "
                        "tensors, or lists and dicts of them (convert it before returning)")


class Cache:
    """``Cache(folder)(fn, *args, **kwargs)`` is ``fn(*args, **kwargs)``, computed once per distinct input.

    fn must be a module-level function returning plain values (numbers, strings, lists, dicts, tensors). ``folder``
    None turns the cache off (every call computes). ``hits`` and ``misses`` count this object's calls.
    """

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = None if folder is None else Path(folder)
        self.hits = self.misses = 0

    def key(self, fn: Callable, *args, **kwargs) -> str:
        """The entry's name: fn's name and the SHA-256 of everything the result depends on."""
        kwargs = {k: v for k, v in kwargs.items() if k not in UNKEYED}
        described = {"fn": f"{fn.__module__}.{fn.__qualname__}", "args": _describe(list(args)),
                     "kwargs": _describe(kwargs), "code": code_digest(fn), "torch": torch.__version__,
                     "threads": torch.get_num_threads()}
        digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
        return f"{fn.__name__}-{digest[:32]}"

    def __call__(self, fn: Callable, *args, **kwargs) -> Any:
        if self.folder is None:
            self.misses += 1
            return fn(*args, **kwargs)
        path = self.folder / f"{self.key(fn, *args, **kwargs)}.pt"
        if path.is_file():
            self.hits += 1
            return torch.load(path, weights_only=True)
        self.misses += 1
        result = fn(*args, **kwargs)
        _check_plain(result)
        atomic_torch_save(result, path)
        return result

    def __repr__(self) -> str:
        return f"Cache({self.folder}, {self.hits} found, {self.misses} computed)"


def stage_cache(artifact_dir: str | os.PathLike) -> Cache:
    """The cache of the stages working in ``artifact_dir``: ``<artifact_dir>/cache``."""
    return Cache(Path(artifact_dir) / "cache")
