"""study.provenance: the installed pyautoattack against the official fra31/auto-attack at OFFICIAL_COMMIT.

The first group is the one that can fail: a different pyautoattack (another version, a patched copy) changes a
digest of an attack module or a setting of the standard version. The second group checks what normalize_source
ignores and what it does not.
"""
from __future__ import annotations

import hashlib

import pytest

from study.provenance import (OFFICIAL, OFFICIAL_COMMIT, check_pyautoattack, main, normalize_source,
                               source_digest, standard_settings_differences)

EPS = 0.25  # not AutoAttack's default eps (.3), so that eps not reaching an attack shows


# --- (a) the installed pyautoattack against the official code ----------------------------------------------

@pytest.mark.parametrize("module", list(OFFICIAL))
def test_installed_module_matches_official(module):
    row = next(r for r in check_pyautoattack() if r["module"] == module)
    assert row["installed_sha256"] == OFFICIAL[module]["sha256"]
    assert row["match"] and row["installed_lines"] == OFFICIAL[module]["lines"]


def test_check_rows_and_entry_point(capsys):
    rows = check_pyautoattack()
    assert [r["module"] for r in rows] == list(OFFICIAL)
    assert all(set(r) == {"module", "official_sha256", "installed_sha256", "match", "official_lines",
                          "installed_lines"} for r in rows)
    assert all(r["match"] for r in rows)
    assert main() == 0  # every module matches the official file
    out = capsys.readouterr().out
    assert all(m in out for m in OFFICIAL) and OFFICIAL_COMMIT in out


def test_entry_point_exits_1_on_a_mismatch(monkeypatch, capsys):
    """A digest that differs (here a reference one) is reported for its module only, and main() exits 1."""
    monkeypatch.setitem(OFFICIAL["square"], "sha256", "0" * 64)
    assert [r["module"] for r in check_pyautoattack() if not r["match"]] == ["square"]
    assert main() == 1
    assert any(line.split()[:2] == ["square", "False"] for line in capsys.readouterr().out.splitlines())


@pytest.fixture
def standard_autoattack():
    """pyautoattack's AutoAttack, standard version, Linf, on a tiny model (building it runs no attack)."""
    import torch
    from pyautoattack import AutoAttack
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10))
    return AutoAttack(model, norm="Linf", eps=EPS, version="standard", device="cpu")


def test_standard_version_settings_are_official(standard_autoattack):
    """pyautoattack rewrote the driver that sets up the attacks: its standard version must still be the official
    one (attacks, iterations, restarts, target classes, Square queries, eps; see OFFICIAL_STANDARD_LINF)."""
    assert standard_settings_differences(standard_autoattack, EPS) == {}


def test_a_changed_setting_is_reported(standard_autoattack):
    """A setting changed after set_version, or an eps that did not reach an attack, is reported with both values."""
    standard_autoattack.apgd.n_iter = 50
    standard_autoattack.square.eps = 0.3
    assert standard_settings_differences(standard_autoattack, EPS) == {"apgd.n_iter": (100, 50),
                                                                        "square.eps": (EPS, 0.3)}


# --- (b) what normalization ignores, and what it does not ----------------------------------------------------

ORIGINAL = '''\
# Copyright header
import torch
from autoattack.other_utils import L0_norm, \\
    L1_norm

class APGD():
    """AutoPGD.

    :param rho: step-size decay
    """
    def __init__(self, rho=.75, eps=None):  # defaults
        self.rho = rho
        self.tag = 'apgd # not a comment'
'''


def test_whitespace_comments_and_imports_are_ignored():
    variant = '''\
from .other_utils import L0_norm, L1_norm
import torch


class APGD():
        """AutoPGD.

        :param rho:   step-size decay
        """

        def __init__(self,  rho=.75, eps=None):
                # a new comment
                self.rho = rho   \t
                self.tag = 'apgd # not a comment'  # trailing comment
'''
    assert normalize_source(variant) == normalize_source(ORIGINAL)
    assert source_digest(variant) == source_digest(ORIGINAL)


def test_changed_constant_changes_digest():
    assert source_digest(ORIGINAL.replace("rho=.75", "rho=.7")) != source_digest(ORIGINAL)
    assert source_digest(ORIGINAL.replace("self.rho = rho", "self.rho = -rho")) != source_digest(ORIGINAL)


def test_hash_inside_string_is_kept_and_docstrings_are_kept():
    lines = normalize_source(ORIGINAL)
    assert "self.tag = 'apgd # not a comment'" in lines
    assert '"""AutoPGD.' in lines and ":param rho: step-size decay" in lines
    assert not any("Copyright" in line or "defaults" in line or "import" in line for line in lines)
    assert source_digest(ORIGINAL.replace("# not a comment", "# changed")) != source_digest(ORIGINAL)


def test_exact_normalized_form():
    assert normalize_source(ORIGINAL) == [
        "class APGD():",
        '"""AutoPGD.',
        ":param rho: step-size decay",
        '"""',
        "def __init__(self, rho=.75, eps=None):",
        "self.rho = rho",
        "self.tag = 'apgd # not a comment'",
    ]
    assert source_digest(ORIGINAL) == hashlib.sha256("\n".join(normalize_source(ORIGINAL)).encode()).hexdigest()
