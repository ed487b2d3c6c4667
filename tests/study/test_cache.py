"""study.cache: a result is found again only for exactly the same inputs, and caching changes no number."""
from __future__ import annotations

import copy
import inspect

import pytest
import torch

import advlib.attacks as attacks
from advlib.data import BOUNDS
from advlib.iterative import pgd
from study import cache as cache_module
from study.cache import Cache, model_digest, tensor_digest
from advlib.explorer import EpsExplorer
from advlib.metrics import pgd_accuracy, robust_curves

CALLS = []


def _scaled_sum(model, x, factor, *, progress=False):
    """A module-level function to cache: counts its calls."""
    CALLS.append(1)
    with torch.no_grad():
        return {"sum": float(model(x).sum()) * factor, "shape": list(x.shape), "t": x[:2].clone()}


@pytest.fixture
def calls():
    CALLS.clear()
    return CALLS


def test_same_inputs_are_found_again(tmp_path, untrained_model, test_batch, calls):
    x = test_batch[0][:16]
    cache = Cache(tmp_path)
    first = cache(_scaled_sum, untrained_model, x, 2.0)
    again = cache(_scaled_sum, copy.deepcopy(untrained_model), x.clone(), 2.0, progress=True)  # same content
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)
    assert again["sum"] == first["sum"] and torch.equal(again["t"], first["t"])
    assert [p.suffix for p in tmp_path.iterdir()] == [".pt"]  # one entry, no temporary file left


@pytest.mark.parametrize("change", ["weights", "tensor", "argument", "code", "threads"])
def test_any_changed_input_computes_again(tmp_path, untrained_model, test_batch, calls, monkeypatch, change):
    x = test_batch[0][:16]
    cache = Cache(tmp_path)
    cache(_scaled_sum, untrained_model, x, 2.0)
    model, factor = untrained_model, 2.0
    if change == "weights":
        model = copy.deepcopy(untrained_model)
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] += 1e-6
    elif change == "tensor":
        x = x.clone()
        x[0, 0, 0, 0] = -x[0, 0, 0, 0] + 0.5
    elif change == "argument":
        factor = 2.0000001
    elif change == "code":
        monkeypatch.setattr(cache_module, "code_digest", lambda fn: "another version of advlib")
    elif change == "threads":
        monkeypatch.setattr(torch, "get_num_threads", lambda: 7)
    cache(_scaled_sum, model, x, factor)
    assert len(calls) == 2 and cache.misses == 2


def test_code_digest_covers_what_the_function_reaches(tmp_path, monkeypatch):
    """The key of a PGD number covers the attacks' source, not a figure's or the results tables' (a new module is
    covered too: tests/study/test_sources.py)."""
    from advlib.metrics import pgd_accuracy
    from study import sources

    files = [p.relative_to(sources.ROOT).as_posix()
             for p in sources.reached_modules(*sources.imports_of(inspect.getsourcefile(pgd_accuracy))).values()]
    assert "advlib/attacks.py" in files and "advlib/model.py" in files
    assert not any(f.startswith("study/") or "plot" in f or "viz" in f for f in files), files



def test_digests_follow_content(untrained_model):
    a = torch.arange(6, dtype=torch.float32)
    assert tensor_digest(a) == tensor_digest(a.clone())
    assert tensor_digest(a) != tensor_digest(a.reshape(2, 3))  # same bytes, other shape
    assert tensor_digest(a) != tensor_digest(a.double())
    assert model_digest(untrained_model) == model_digest(copy.deepcopy(untrained_model))


def test_no_folder_computes_every_time(untrained_model, test_batch, calls):
    cache = Cache(None)
    cache(_scaled_sum, untrained_model, test_batch[0][:4], 1.0)
    cache(_scaled_sum, untrained_model, test_batch[0][:4], 1.0)
    assert len(calls) == 2


def test_bad_arguments_and_results_are_named(tmp_path, untrained_model):
    cache = Cache(tmp_path)
    with pytest.raises(TypeError, match="cannot key a cached call on a value of type object"):
        cache(_scaled_sum, untrained_model, object(), 1.0)
    with pytest.raises(TypeError, match=r"the result\['bad'\] is a set"):
        cache(_bad_result)
    assert list(tmp_path.iterdir()) == []  # nothing written


def _bad_result():
    return {"bad": {1, 2}}


def test_robustness_through_the_cache_changes_no_number(tmp_path, trained_model, test_batch):
    x, y = test_batch[0][:64], test_batch[1][:64]
    grid = [0.0, 0.1, 0.3]
    plain = robust_curves(trained_model, x, y, grid, pgd_steps=3, seed=1, bounds=BOUNDS)
    cache = Cache(tmp_path)
    assert robust_curves(trained_model, x, y, grid, pgd_steps=3, seed=1, cache=cache, bounds=BOUNDS) == plain
    assert robust_curves(trained_model, x, y, grid, pgd_steps=3, seed=1, cache=cache, bounds=BOUNDS) == plain
    assert cache.hits == len(grid)
    # one eps computed on its own (a workflow job) is the curve's point
    assert {"eps": 0.3, **pgd_accuracy(trained_model, x, y, 0.3, pgd_steps=3, seed=1, bounds=BOUNDS)} == plain["pgd"][2]


def test_pgd_chunking_changes_no_number(trained_model, test_batch, monkeypatch):
    x, y = test_batch[0][:300], test_batch[1][:300]
    whole = pgd(trained_model, x, y, 0.2, steps=3, seed=5, bounds=BOUNDS)
    monkeypatch.setattr(attacks, "CHUNK", 64)  # 300 images: 5 chunks of 60
    assert torch.equal(pgd(trained_model, x, y, 0.2, steps=3, seed=5, bounds=BOUNDS), whole)


def test_explorer_through_the_cache_is_the_same(tmp_path, trained_model, test_batch):
    x, y = test_batch[0][:40], test_batch[1][:40]
    plain = EpsExplorer(trained_model, x, y, n_show=4, eps_step=0.05, progress=False)
    cache = Cache(tmp_path)
    for _ in range(2):
        cached = EpsExplorer(trained_model, x, y, n_show=4, eps_step=0.05, progress=False, cache=cache)
        assert cached.accuracy_curve == plain.accuracy_curve and cached.clean_preds == plain.clean_preds
        assert torch.equal(cached.direction, plain.direction)
    assert (cache.hits, cache.misses) == (1, 1)
