"""Provenance of the AutoAttack code we run: is ``pyautoattack`` the official fra31/auto-attack code?

The official AutoAttack (https://github.com/fra31/auto-attack) is not on PyPI; ``pyautoattack`` repackages it
(its top-level driver ``autoattack.py`` was rewritten: keyword-only arguments, ``logging``, a state file). This
module checks the *attack* modules, the code that does the maths, against the official sources, without
importing them (no torch import here).

How the comparison works. Each module's source goes through :func:`normalize_source`, which removes what a
repackaging may legitimately change, and the result is hashed (:func:`source_digest`). ``OFFICIAL`` holds the
digests of the official files at one commit, ``OFFICIAL_COMMIT`` of ``OFFICIAL_REPO``; :func:`check_pyautoattack`
recomputes the digests of the installed files and compares. Run ``python -m study.provenance`` for the table; it
exits 1 when any module differs.

What :func:`normalize_source` removes, precisely (everything else, docstrings included, is kept):

* comments: every ``COMMENT`` token found by :mod:`tokenize`, so a ``#`` inside a string literal is kept;
* import statements: every logical line whose first token is ``import`` or ``from`` (at any indentation, and
  all its physical lines when it is continued with ``\\`` or parentheses), because a repackaging rewrites
  ``from autoattack.x import y`` into ``from .x import y``;
* whitespace: each physical line is stripped and every run of whitespace inside it becomes one space. This
  applies inside string literals too (a docstring re-indented, ``'a  b'`` vs ``'a b'``): whitespace is never
  part of the attack maths. Whitespace *between* tokens is only collapsed, not removed: ``x=1`` and
  ``x = 1`` stay different;
* blank lines, including those left empty by the rules above and blank lines inside multi-line strings.

Physical lines are otherwise kept as they are, in order: re-wrapping a statement over other lines, renaming
anything, or changing any constant (``rho=.75`` -> ``rho=.7``) changes the digest.

Known result: pyautoattack 0.2.0's six attack modules all match the official files at ``OFFICIAL_COMMIT``.

The driver, ``autoattack.py``, is rewritten by pyautoattack, so its digest cannot match; what it decides is the
settings of the attacks. ``OFFICIAL_STANDARD_LINF`` holds those of the official standard version for the Linf norm
at ``OFFICIAL_COMMIT``, and :func:`standard_settings_differences` compares them with an ``AutoAttack`` object.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import operator
import sys
import tokenize
from pathlib import Path

__all__ = ["OFFICIAL", "OFFICIAL_COMMIT", "OFFICIAL_REPO", "OFFICIAL_STANDARD_LINF", "normalize_source",
           "source_digest", "installed_dir", "check_pyautoattack", "standard_settings_differences", "main"]

OFFICIAL_REPO = "fra31/auto-attack"
# The commit every digest below was computed at (master, "Merge pull request #101", 2023-01-09), from the files
# autoattack/<module>.py of a git snapshot of OFFICIAL_REPO. They were checked against the stored public versions
# of these files, each stored at a commit where the file is identical to this commit's: autopgd_base at a3922004,
# fab_base at 716a8da1, fab_pt at cb65c04f, fab_projections at eb833f6a, square at 8c86d6f1, other_utils at
# 40dddf05; all six have the same length, and fab_pt, square and other_utils were hashed in full.
OFFICIAL_COMMIT = "a39220048b3c9f2cca9a4d3a54604793c68eca7e"

# module -> digest and line count of the normalized official file at OFFICIAL_COMMIT.
OFFICIAL: dict[str, dict] = {
    "autopgd_base": {"sha256": "92e1ce9df697d02ec35460566f4cd2d37c076a901aad06ed4495ef07ee97a017", "lines": 530},
    "fab_base": {"sha256": "28edb950af01f199fb3a02a87023f43e2cc55db91559653caa7d3f7f9b40cd3a", "lines": 270},
    "fab_pt": {"sha256": "211f31237fa855c9209158da7a3bb9d7ab10dbbbc3f3a9c4f3ab95041327181e", "lines": 82},
    "fab_projections": {"sha256": "376a50c02300070ec1932aeb87e0c7506a69d8433d63621a43f506c10ee8f028", "lines": 119},
    "square": {"sha256": "d72cd7a8a93ff88e4122850bcdbd2781b188e0ec245b9b4caf5c110992c2d06b", "lines": 481},
    "other_utils": {"sha256": "4852d36cf51d910e6bba54f0e7427a642a19c4029c053837950245e1e6da9364", "lines": 44},
}

# The settings of the official standard version for the Linf norm, from autoattack/autoattack.py at
# OFFICIAL_COMMIT: AutoAttack.__init__ builds the four attacks (the PyTorch branch), then set_version('standard')
# overrides some. Keys are attribute paths on an AutoAttack object; APGD stores its rho as thr_decr and Square its
# resc_schedule as rescale_schedule. The eps of every attack is the eps given to AutoAttack
# (standard_settings_differences adds it). Settings made while attacking (each attack's loss, fab.targeted) are not
# included: they are not part of the version.
OFFICIAL_STANDARD_LINF: dict[str, object] = {
    # set_version('standard'), Linf branch
    "attacks_to_run": ["apgd-ce", "apgd-t", "fab-t", "square"],
    "apgd.n_restarts": 1,
    "apgd_targeted.n_target_classes": 9,
    "fab.n_restarts": 1,
    "apgd_targeted.n_restarts": 1,
    "fab.n_target_classes": 9,
    "square.n_queries": 5000,
    # left False for Linf (set_version sets them only for L1)
    "apgd.use_largereps": False,
    "apgd_targeted.use_largereps": False,
    # AutoAttack.__init__
    "norm": "Linf",
    "version": "standard",
    "apgd.norm": "Linf", "apgd.n_iter": 100, "apgd.eot_iter": 1, "apgd.thr_decr": .75,
    "fab.norm": "Linf", "fab.n_iter": 100,
    "square.norm": "Linf", "square.p_init": .8, "square.n_restarts": 1, "square.rescale_schedule": False,
    "apgd_targeted.norm": "Linf", "apgd_targeted.n_iter": 100, "apgd_targeted.eot_iter": 1,
    "apgd_targeted.thr_decr": .75,
}


def normalize_source(text: str) -> list[str]:
    """The code lines of a Python module with what a repackaging may legitimately change removed.

    Removes comments (``tokenize`` ``COMMENT`` tokens, so a ``#`` inside a string stays), import statements
    (logical lines starting with ``import`` or ``from``, all their physical lines), leading/trailing whitespace
    of each physical line, runs of whitespace inside a line (collapsed to one space, inside strings too) and
    blank lines. Docstrings and all other code are kept, line by line and in order. Raises
    :class:`tokenize.TokenError` or :class:`SyntaxError` for text that does not tokenize as Python.
    """
    physical = io.StringIO(text).readlines()
    comment_col: dict[int, int] = {}  # 1-based row -> column where a comment starts
    import_rows: set[int] = set()
    first = None  # first token of the current logical line
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            comment_col[tok.start[0]] = tok.start[1]
        elif tok.type == tokenize.NEWLINE:
            if first is not None and first.type == tokenize.NAME and first.string in ("import", "from"):
                import_rows.update(range(first.start[0], tok.end[0] + 1))
            first = None
        elif tok.type not in (tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER,
                              tokenize.ENCODING) and first is None:
            first = tok
    lines = []
    for row, line in enumerate(physical, start=1):
        if row in import_rows:
            continue
        if row in comment_col:
            line = line[:comment_col[row]]
        line = " ".join(line.split())
        if line:
            lines.append(line)
    return lines


def source_digest(text: str) -> str:
    """sha256 hex digest of ``"\\n".join(normalize_source(text))`` (UTF-8)."""
    return hashlib.sha256("\n".join(normalize_source(text)).encode("utf-8")).hexdigest()


def installed_dir() -> Path:
    """The folder of the installed ``pyautoattack`` package, found without importing it (it imports torch)."""
    spec = importlib.util.find_spec("pyautoattack")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("pyautoattack is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def check_pyautoattack(package_dir: str | Path | None = None) -> list[dict]:
    """Each attack module of the installed pyautoattack against ``OFFICIAL``, one row per module.

    Rows: ``module, official_sha256, installed_sha256, match, official_lines, installed_lines`` (line counts
    after normalization); ``match`` is True only when the digests are equal.
    """
    folder = Path(package_dir) if package_dir is not None else installed_dir()
    rows = []
    for module, ref in OFFICIAL.items():
        lines = normalize_source((folder / f"{module}.py").read_text(encoding="utf-8"))
        digest = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()
        rows.append({"module": module, "official_sha256": ref["sha256"], "installed_sha256": digest,
                     "match": digest == ref["sha256"], "official_lines": ref["lines"],
                     "installed_lines": len(lines)})
    return rows


def standard_settings_differences(autoattack, eps: float) -> dict[str, tuple]:
    """The settings of ``autoattack`` that differ from the official standard version, ``{}`` when none does.

    ``autoattack`` is a pyautoattack ``AutoAttack`` built with ``norm='Linf', eps=eps, version='standard'``; its
    driver is not the official one (see the module docstring), so its settings are compared one by one with
    ``OFFICIAL_STANDARD_LINF`` and with ``eps`` (``epsilon`` and each attack's ``eps``). Returns
    ``{attribute path: (official value, value on autoattack)}``; a missing attribute raises ``AttributeError``.
    """
    expected = dict(OFFICIAL_STANDARD_LINF, epsilon=eps,
                    **{f"{attack}.eps": eps for attack in ("apgd", "apgd_targeted", "fab", "square")})
    found = {path: operator.attrgetter(path)(autoattack) for path in expected}
    return {path: (expected[path], found[path]) for path in expected if found[path] != expected[path]}


def main() -> int:
    """Print the comparison table; 0 when every module matches, 1 otherwise."""
    rows = check_pyautoattack()
    try:
        version = importlib.metadata.version("pyautoattack")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    print(f"pyautoattack {version} ({installed_dir()}) vs {OFFICIAL_REPO} at {OFFICIAL_COMMIT}, normalized sources")
    print(f"{'module':<16} {'match':<6} {'lines off/inst':<15} {'official sha256':<18} installed sha256")
    for row in rows:
        lines = f"{row['official_lines']}/{row['installed_lines']}"
        print(f"{row['module']:<16} {str(row['match']):<6} {lines:<15} {row['official_sha256'][:16]:<18} "
              f"{row['installed_sha256'][:16]}")
    return 0 if all(row["match"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
