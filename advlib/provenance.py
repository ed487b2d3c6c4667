"""Provenance of the AutoAttack code we run: is ``pyautoattack`` the official fra31/auto-attack code?

The official AutoAttack (https://github.com/fra31/auto-attack) is not on PyPI; ``pyautoattack`` repackages it
(its top-level driver ``autoattack.py`` was rewritten: keyword-only arguments, ``logging``, a state file). This
module checks the *attack* modules, the code that does the maths, against the official sources, without
importing them (no torch import here).

How the comparison works. Each module's source goes through :func:`normalize_source`, which removes what a
repackaging may legitimately change, and the result is hashed (:func:`source_digest`). ``OFFICIAL`` holds the
digests of the official files, computed once from the files fetched from the official repository (see
``OFFICIAL_REPO``, ``OFFICIAL_COMMIT`` and each entry's ``commit``); :func:`check_pyautoattack` recomputes the
digests of the installed files and compares. Run ``python -m advlib.provenance`` for the table; it exits 1 when
any module differs.

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

Known results (see ``KNOWN_DIFFERENCES``): four attack modules match the official files; ``square`` matches
the newest official ``square.py`` that could be fetched (commit aaba775a) except for six added lines, the fix for the
official issue #95 (non-square images); ``fab_pt`` could only be compared with an older official version (the
refactored official ``FABAttack_PT(FABAttack)`` file could not be fetched), so it does not match as a whole, while
its two gradient methods match the official ones line for line (``OFFICIAL['fab_pt']['methods']``).
"""
from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import io
import sys
import textwrap
import tokenize
from pathlib import Path

__all__ = ["OFFICIAL", "OFFICIAL_COMMIT", "OFFICIAL_REPO", "KNOWN_DIFFERENCES", "normalize_source",
           "source_digest", "method_digests", "installed_dir", "check_pyautoattack", "main"]

OFFICIAL_REPO = "fra31/auto-attack"
# The newest official commit a module was fetched at (autopgd_base.py), also the commit third parties pin as
# "the official standard AutoAttack". The files were fetched from a stored copy of GitHub that serves each file at
# the commit of its stored version, not every file at one commit; each OFFICIAL entry names the commit of its file.
OFFICIAL_COMMIT = "a39220048b3c9f2cca9a4d3a54604793c68eca7e"

# module -> digest and line count of the normalized official file, and the official commit it was fetched at.
OFFICIAL: dict[str, dict] = {
    "autopgd_base": {
        "sha256": "92e1ce9df697d02ec35460566f4cd2d37c076a901aad06ed4495ef07ee97a017", "lines": 530,
        "commit": "a39220048b3c9f2cca9a4d3a54604793c68eca7e"},
    "fab_base": {
        "sha256": "28edb950af01f199fb3a02a87023f43e2cc55db91559653caa7d3f7f9b40cd3a", "lines": 270,
        "commit": "716a8da1db23088d38034cbbf8de189f1589fdc2"},
    "fab_pt": {
        "sha256": "3a51a1e420455203862713d328772c52d7e4f24176ab39b5a4293b1046cf4746", "lines": 454,
        "commit": "42189aab794672131f7f7584f15710e41f5c540d",
        # the gradient methods, the only maths left in fab_pt after the official refactor moved the attack loop
        # into fab_base (FABAttack -> FABAttack_PT(FABAttack)); digests by method_digests()
        "methods": {
            "get_diff_logits_grads_batch":
                "4219c5e8c7af2f5b9d6f571d0f68400a520a240789fd6523c2f92e4c84251ba7",
            "get_diff_logits_grads_batch_targeted":
                "05cbe9108937fa0d41269a70e7ce68d8d2d162ced7de86d4fe9bf7dc1b09757d"}},
    "fab_projections": {
        "sha256": "376a50c02300070ec1932aeb87e0c7506a69d8433d63621a43f506c10ee8f028", "lines": 119,
        "commit": "eb833f6aff36fc6aebce9cc334ecd8a86ee0c2cf"},
    "square": {
        "sha256": "b47a2b9967ecd62c15cf0844f993c7e1d16e3f8e3c9155f26dc0ba6eed06f474", "lines": 475,
        "commit": "aaba775aedf24c86099ca0340d62275878a101ae"},
    "other_utils": {
        "sha256": "4852d36cf51d910e6bba54f0e7427a642a19c4029c053837950245e1e6da9364", "lines": 44,
        "commit": "40dddf05b3bb62dd723eed9bd4cab7395b79de31"},
}


# Why a module may not match, as found by diffing the normalized lines (difflib). "added" lists the normalized
# lines pyautoattack 0.2.0 has and the official file fetched has not; removing exactly those gives the official
# digest (tests/test_provenance.py checks this).
KNOWN_DIFFERENCES: dict[str, dict] = {
    "square": {
        "why": "pyautoattack has the fix for fra31/auto-attack issue #95 (Square Attack on non-square images): "
               "the square side s is clamped to the image size, plus a verbose warning. The official square.py "
               "fetched (aaba775a) predates it. With the default p_init=.8 the clamp binds on square images only "
               "for sides 1, 2 and 4 (L2/L1), so on square images of side >= 5 (MNIST, CIFAR, ImageNet) the "
               "attack, random draws included, is unchanged.",
        "added": ("if self.verbose and h != w:",
                  "print('square attack may not work properly for non-square image.')",
                  "print('for details please refer to https://github.com/fra31/auto-attack/issues/95')",
                  "s = min(s, min(h, w))", "s = min(s, min(h, w))", "s = min(s, min(h, w))"),
    },
    "fab_pt": {
        "why": "only an older official fab_pt.py (42189aab: a standalone FABAttack holding the whole attack loop) "
               "was available; pyautoattack has the later official layout, FABAttack_PT(FABAttack) with the loop "
               "in fab_base.py (which matches the official file). The gradient methods match line for line; the "
               "rest is the constructor forwarding to FABAttack, _predict_fn and _get_predicted_label.",
        "added": None,  # not a line-level addition: a refactor
    },
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


def method_digests(text: str) -> dict[str, str]:
    """``{function name: source_digest of its source}`` for every ``def`` in a module (methods included).

    Keyed by the bare name, so a method moved to a renamed class compares equal; the first ``def`` of a name
    wins. Decorators are not part of the source hashed.
    """
    lines = text.splitlines(keepends=True)
    out: dict[str, str] = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in out:
            source = textwrap.dedent("".join(lines[node.lineno - 1:node.end_lineno]))
            out[node.name] = source_digest(source)
    return out


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


def main() -> int:
    """Print the comparison table; 0 when every module matches, 1 otherwise."""
    rows = check_pyautoattack()
    try:
        version = importlib.metadata.version("pyautoattack")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    print(f"pyautoattack {version} ({installed_dir()}) vs {OFFICIAL_REPO}, normalized sources")
    print(f"{'module':<16} {'match':<6} {'lines off/inst':<15} {'official sha256':<18} {'installed sha256':<18}"
          " official commit")
    for row in rows:
        lines = f"{row['official_lines']}/{row['installed_lines']}"
        print(f"{row['module']:<16} {str(row['match']):<6} {lines:<15} {row['official_sha256'][:16]:<18} "
              f"{row['installed_sha256'][:16]:<18} {OFFICIAL[row['module']]['commit'][:12]}")
    for row in rows:
        if not row["match"] and row["module"] in KNOWN_DIFFERENCES:
            print(f"\n{row['module']}: {KNOWN_DIFFERENCES[row['module']]['why']}")
    return 0 if all(row["match"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
