"""study.bands: the seed spread of the FGSM sweep against numpy, and where a reference lies in it."""
from __future__ import annotations

import numpy as np
import pytest

from study.bands import compare_with_reference, seed_spread


def _sweep_rows(eps_grid, accuracies):
    return [{"eps": e, "adv_accuracy": {"value": a}} for e, a in zip(eps_grid, accuracies)]


def test_seed_spread_against_numpy():
    eps_grid = [0.0, 0.05, 0.1, 0.3]
    values = np.random.default_rng(0).uniform(0, 100, size=(5, len(eps_grid)))
    spread = seed_spread([_sweep_rows(eps_grid, v) for v in values])
    assert spread["n_seeds"] == 5
    np.testing.assert_array_equal(spread["eps"], eps_grid)
    np.testing.assert_array_equal(spread["per_seed"], values)
    np.testing.assert_allclose(spread["mean"], [np.mean(values[:, j]) for j in range(4)], rtol=1e-12)
    np.testing.assert_allclose(spread["std"], [np.std(values[:, j], ddof=1) for j in range(4)], rtol=1e-12)


def test_seed_spread_one_seed_has_zero_std():
    spread = seed_spread([_sweep_rows([0.0, 0.1], [100.0, 60.0])])
    assert spread["n_seeds"] == 1 and spread["std"].tolist() == [0.0, 0.0]
    assert spread["mean"].tolist() == [100.0, 60.0] and spread["per_seed"].shape == (1, 2)


@pytest.mark.parametrize("sweeps, match", [
    ([], "empty"),
    ([[]], "empty"),
    ([_sweep_rows([0.0, 0.1], [1, 2]), _sweep_rows([0.0, 0.2], [1, 2])], "seed 1 has the eps grid"),
    ([_sweep_rows([0.0, 0.1], [1, 2]), _sweep_rows([0.0], [1])], "seed 1 has the eps grid"),
])
def test_seed_spread_rejects_bad_input(sweeps, match):
    with pytest.raises(ValueError, match=match):
        seed_spread(sweeps)


def test_compare_with_reference_by_hand():
    spread = {"eps": np.array([0.0, 0.05, 0.1]), "mean": np.array([99.0, 90.0, 60.0]),
              "std": np.array([0.0, 2.0, 8.0])}
    rows = compare_with_reference(spread, {0.1: 56.0, "0.05": 95.0, 0.0: 99.5, 0.3: 10.0})  # 0.3: not on the grid
    assert rows == [
        {"eps": 0.0, "original": 99.5, "mean": 99.0, "std": 0.0, "z": None},  # no spread: no z
        {"eps": 0.05, "original": 95.0, "mean": 90.0, "std": 2.0, "z": 2.5},
        {"eps": 0.1, "original": 56.0, "mean": 60.0, "std": 8.0, "z": -0.5},
    ]
    assert compare_with_reference(spread, {0.2: 50.0}) == []


def test_compare_with_reference_on_seed_spread():
    values = np.array([[100.0, 80.0], [100.0, 70.0], [100.0, 66.0]])
    spread = seed_spread([_sweep_rows([0.0, 0.15], v) for v in values])
    (row,) = compare_with_reference(spread, {0.15: 32.86})
    assert row["z"] == pytest.approx((32.86 - values[:, 1].mean()) / values[:, 1].std(ddof=1), rel=1e-12)

