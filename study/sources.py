"""Which source files a piece of the project runs, derived from its imports: no list of file names is kept by hand.

The stage cache keys its results on the source a cached function can reach (:func:`code_digest`), and the workflow
re-runs a job when the source its command reaches changes (the Snakefile's code inputs are :func:`code_files`). Both
follow the imports: a module put in a new file, imported by an attack, is part of every key and every job that
reaches the attack, with nothing to edit.

- :func:`reached_modules` walks ``import`` statements (anywhere in a file, so imports inside functions count) from
  one or more modules, through every module of this project's packages (:data:`PACKAGES`); other packages (torch,
  numpy) are versioned by their installs and are not followed.
- A package's ``__init__.py`` is part of what importing any of its modules runs, so it is included; its own
  imports are followed only where the package itself is imported (``import advlib``, ``from advlib import fgsm``):
  an ``__init__`` only re-exports (``tests/study/test_sources.py`` checks that it holds nothing else).
- A *figure module* is one that imports matplotlib at its top level (:func:`draws`). A stage notebook depends on the
  figure code it reaches function by function (:func:`figure_digest`) instead of file by file, so editing one
  figure re-runs only the stages that draw it.
"""
from __future__ import annotations

import ast
import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("advlib", "study")  # this project's packages: the only source that can change under a run
_NAME = re.compile(r"[A-Za-z_]\w*")


def module_file(name: str, root: str | os.PathLike = ROOT) -> Path | None:
    """The file of module ``name`` (``advlib.attacks`` -> advlib/attacks.py, a package -> its __init__.py) under
    root, or None when it is not a module of :data:`PACKAGES`."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = Path(root).joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def _imports(path: Path, mtime_ns: int) -> tuple[tuple[str, str], ...]:
    """(module, name) for each ``from module import name`` in the file, (module, "") for each ``import module``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.module, alias.name) for alias in node.names]
    return tuple(found)


def imports_of(path: str | os.PathLike, root: str | os.PathLike = ROOT) -> list[str]:
    """The modules one Python file imports: ``from advlib import attacks`` imports advlib.attacks, ``from advlib
    import fgsm`` imports advlib (a name its __init__ re-exports). Memoized on the file's modification time."""
    path = Path(path)
    out = []
    for module, name in _imports(path, path.stat().st_mtime_ns):
        out.append(f"{module}.{name}" if name and module_file(f"{module}.{name}", root) else module)
    return out


def _parents(name: str) -> list[str]:
    """``a.b.c`` -> [``a``, ``a.b``]: the packages whose __init__ importing ``a.b.c`` runs."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def reached_modules(*modules: str, root: str | os.PathLike = ROOT) -> dict[str, Path]:
    """{module: file} of every project module that importing ``modules`` can run, sorted by name.

    A module imported explicitly is followed into its own imports; the packages above it are included (their
    __init__ runs) but followed only when imported explicitly themselves."""
    todo = list(modules)
    seen: dict[str, Path] = {}
    followed: set[str] = set()
    while todo:
        name = todo.pop()
        path = module_file(name, root)
        if path is None or name in followed:
            continue
        followed.add(name)
        for parent in _parents(name):
            if parent not in seen and (p := module_file(parent, root)) is not None:
                seen[parent] = p
        seen[name] = path
        todo += imports_of(path, root)
    return dict(sorted(seen.items()))


def constant(module: str, name: str, root: str | os.PathLike = ROOT):
    """The literal value of a module's top-level ``NAME = <literal>``, read from its source without importing it
    (the Snakefile reads advlib.autoattack.AA_BATCH so, without importing torch)."""
    for node in ast.parse(module_file(module, root).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(f"{module} assigns no literal {name}")


def dict_keys(module: str, name: str, root: str | os.PathLike = ROOT) -> list:
    """The literal keys of a module's top-level ``NAME = {key: ..., ...}``, read without importing it (the workflow
    reads the data sets advlib.data knows so, without importing torch)."""
    for node in ast.parse(module_file(module, root).read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)):
            return [ast.literal_eval(k) for k in node.value.keys]
    raise KeyError(f"{module} assigns no dict {name}")


def with_resources(paths) -> list[Path]:
    """The files, each with its resources: the files beside it named like it (advlib/explorer.css and .js beside
    advlib/explorer.py), which it reads at run time."""
    out = []
    for path in paths:
        out.append(path)
        out += sorted(p for p in path.parent.glob(f"{path.stem}.*") if p.suffix not in (".py", ".pyc") and p.is_file())
    return out


def draws(path: str | os.PathLike) -> bool:
    """Whether a module imports matplotlib at its top level: a figure module."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    names = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module]
    return any(n == "matplotlib" or n.startswith("matplotlib.") for n in names)


def _relative(path: Path, root: str | os.PathLike) -> str:
    return path.relative_to(root).as_posix()


def code_files(*modules: str, root: str | os.PathLike = ROOT) -> list[str]:
    """The files (relative to root, sorted) that running ``python -m <module>`` can import: a job's code inputs."""
    return sorted(_relative(p, root) for p in with_resources(reached_modules(*modules, root=root).values()))


def _digest(files: list[Path], root: str | os.PathLike) -> str:
    h = hashlib.sha256()
    for path in sorted(set(files)):
        h.update(str(path.relative_to(root) if path.is_relative_to(root) else path.name).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def code_digest(*modules: str, root: str | os.PathLike = ROOT) -> str:
    """SHA-256 of the names and source of every file :func:`code_files` lists."""
    return _digest(with_resources(reached_modules(*modules, root=root).values()), root)


def file_digest(path: str | os.PathLike, root: str | os.PathLike = ROOT) -> str:
    """SHA-256 of a Python file and of every project module it can import: what a function defined in that file
    can reach (the stage cache's code key; the file may lie outside the packages, a test's for example)."""
    path = Path(path).resolve()
    return _digest(with_resources([path, *reached_modules(*imports_of(path, root), root=root).values()]),
                   Path(root).resolve())


# ---------------------------------------------------------------------------------------------------------------
# A stage notebook: its code files, and the part of the figure modules it reaches


def notebook_sources(notebook: str | os.PathLike) -> list[str]:
    """A notebook's code cells, as source strings (:func:`study.workflow.code_cells`: plain JSON, no nbformat)."""
    from study.workflow import code_cells

    return [c["source"] for c in code_cells(notebook)]


def notebook_imports(notebook: str | os.PathLike, root: str | os.PathLike = ROOT) -> list[str]:
    """The project modules a notebook's code cells import, as :func:`imports_of` reads them (IPython magics and
    shell lines are skipped)."""
    found = set()
    for source in notebook_sources(notebook):
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found |= {f"{node.module}.{a.name}" if module_file(f"{node.module}.{a.name}", root) else node.module
                          for a in node.names}
    return sorted(m for m in found if m.split(".")[0] in PACKAGES)


def notebook_code(notebook: str | os.PathLike, root: str | os.PathLike = ROOT) -> tuple[list[str], list[str]]:
    """(code files, figure files) a stage notebook reaches through its imports, relative to root. A job depends on
    the code files whole, and on the figure files through :func:`figure_digest`."""
    reached = reached_modules(*notebook_imports(notebook, root), root=root).values()
    figures = sorted(_relative(p, root) for p in reached if draws(p))
    return sorted(_relative(p, root) for p in with_resources(reached) if _relative(p, root) not in figures), figures


def _definitions(source: str) -> tuple[list[str], dict[str, str]]:
    """A module's top-level statements that define no function or class (imports, constants, style), as source,
    and {name: source} of its functions and classes (decorators included)."""
    lines = source.splitlines(keepends=True)
    other, defs = [], {}
    for node in ast.parse(source).body:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        text = "".join(lines[start - 1:node.end_lineno])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[node.name] = text
        else:
            other.append(text)
    return other, defs


def figure_digest(notebook: str | os.PathLike, root: str | os.PathLike = ROOT) -> str:
    """SHA-256 of the part of the figure modules that a stage notebook can reach.

    That part is every top-level statement of those modules that is not a function (imports, colours, the shared
    style), and every function or class named in the notebook's code or in a code module it reaches (the explorer
    draws too), with the functions those name in turn. Names are matched as words, so a mention in a comment counts
    too: the digest may change when nothing the notebook runs did, never the other way round. The workflow re-runs
    a notebook when this digest changes: editing one figure's function re-runs only the stages that draw it (and
    the narrative that shows them), while a change to the shared style re-runs every stage that draws.
    """
    code, figures = notebook_code(notebook, root)
    other, defs = [], {}  # defs: {name: [its definitions]}, one per figure module defining it
    for name in figures:
        o, d = _definitions((Path(root) / name).read_text(encoding="utf-8"))
        other += [f"{name}\0{text}" for text in o]
        for fn, text in d.items():
            defs.setdefault(fn, []).append(f"{name}\0{text}")
    used = "\n".join(notebook_sources(notebook) + [(Path(root) / f).read_text(encoding="utf-8") for f in code
                                                 if f.endswith(".py")])
    todo, reached = set(_NAME.findall(used)) & defs.keys(), set()
    while todo:
        fn = todo.pop()
        reached.add(fn)
        todo |= (set(_NAME.findall("".join(defs[fn]))) & defs.keys()) - reached
    h = hashlib.sha256()
    for text in other + [text for fn in sorted(reached) for text in defs[fn]]:
        h.update(text.encode())
    return h.hexdigest()
