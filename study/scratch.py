"""Hand runs: a notebook run in JupyterLab (or by ``make lab``) works in the scratch run folder build/scratch/.

The workflow runs every notebook in a run folder laid out like the repository; a notebook opened by hand in the
repository's notebooks/ or report/ gets the same layout in build/scratch/ (:func:`run_dirs`, :func:`scratch_run`),
beside the last ``make report``'s models and a copy of figures/. Only ``make report`` publishes.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from study.workflow import DEFAULT_DATASET, ROOT, run_folder, subfolder

SCRATCH_DIR = "build/scratch"  # a hand run's run folder (git-ignored, as all of build/); build/<dataset>/scratch
# for another data set than MNIST


def scratch_folder(dataset: str = DEFAULT_DATASET) -> str:
    """A data set's scratch run folder: build/scratch for MNIST, build/<dataset>/scratch for another."""
    return f"build/{subfolder(dataset)}scratch"


def is_repository(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a checkout of this project (it holds the Snakefile and notebooks/), not a run folder."""
    return (Path(folder) / "Snakefile").is_file() and (Path(folder) / "notebooks").is_dir()


def _newer(src: Path, dst: Path) -> bool:
    """dst is missing, or a plain file older than src (a link made here always stays: it follows its target)."""
    if not os.path.lexists(dst):
        return True
    return not dst.is_symlink() and dst.is_file() and src.stat().st_mtime > dst.stat().st_mtime


def _link(src: Path, dst: Path) -> None:
    """A relative symbolic link dst -> src, replacing an older plain file (renamed over it: never half-made)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")  # two kernels starting at once make two
    if os.path.lexists(tmp):
        tmp.unlink()
    tmp.symlink_to(os.path.relpath(src, dst.parent))
    os.replace(tmp, dst)


def _copy(src: Path, dst: Path) -> None:
    """src copied to dst with its modification time (so that a later publish counts as newer), atomically."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def scratch_run(root: str | os.PathLike = ROOT, notebooks: list[str | os.PathLike] = (),
                dataset: str = DEFAULT_DATASET) -> Path:
    """Prepare the scratch run folder ``root/build/scratch`` and return it. It is laid out like the workflow's run
    folders, so that a notebook finds there what it finds in ``build/run``. Another data set than MNIST has its
    own, ``build/<dataset>/scratch``, made the same way from ``build/<dataset>/run`` and ``figures/<dataset>/``:

    - ``data`` -> the repository's ``data/``;
    - ``artifacts/``: a link to each model (and the stage cache) that the last ``make report`` left in
      ``build/run/artifacts/``. A hand run that trains saves its model here in place of the link (checkpoints are
      written to a new file and renamed, never through the link): the run's models stay as they are;
    - ``figures/``: a copy of the published ``figures/`` (metrics.json, the figures, the seed study and the
      robustness results), which a hand run reads and then overwrites;
    - ``report/``: a copy of each executed notebook in ``notebooks`` (``make lab`` opens the narrative's).

    A link or a copy is made where it is missing or older than what it comes from: the folder follows each new
    ``make report`` and keeps, until then, what a hand run wrote. Delete it to start again from the report."""
    root = Path(root).absolute()
    scratch, run = root / scratch_folder(dataset), root / run_folder(dataset)
    for sub in ("artifacts", "figures", "report"):
        (scratch / sub).mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(scratch / "data"):
        _link(root / "data", scratch / "data")
    if (run / "artifacts").is_dir():
        for src in sorted((run / "artifacts").iterdir()):
            if not src.name.startswith(".") and _newer(src, scratch / "artifacts" / src.name):
                _link(src, scratch / "artifacts" / src.name)
    published = root / "figures" / subfolder(dataset)
    for src in sorted(published.rglob("*")) if published.is_dir() else []:
        dst = scratch / "figures" / src.relative_to(published)
        if src.is_file() and not src.name.startswith(".") and _newer(src, dst):
            dst.parent.mkdir(parents=True, exist_ok=True)
            _copy(src, dst)
    for notebook in map(Path, notebooks):
        src = notebook if notebook.is_absolute() else root / notebook
        if _newer(src, scratch / "report" / src.name):
            _copy(src, scratch / "report" / src.name)
    return scratch


def run_dirs(*dirs: str, dataset: str = DEFAULT_DATASET) -> tuple[str, ...]:
    """The folders a notebook works in, from the relative defaults of its parameters cell (``"../artifacts"``...).

    The workflow runs every notebook in a run folder laid out like the repository (``build/run/report/`` beside
    ``build/run/artifacts/``...), where those defaults are right: there, and anywhere but the repository, they
    come back unchanged. A notebook run by hand in the repository's ``notebooks/`` or ``report/`` (JupyterLab
    starts its kernel in the notebook's folder) would look for models in ``artifacts/``, where there are none
    (``make report`` keeps them in ``build/run/artifacts/``), and write into the published ``figures/``. There
    each folder of the repository is taken in the scratch run folder instead (``../figures`` ->
    ``../build/scratch/figures``), which :func:`scratch_run` prepares. Paths come back relative to the notebook's
    folder, as they came in. ``make report`` publishes; a hand run never does.

    ``dataset`` (the notebook's parameter) picks the data set's scratch folder. A notebook of another data set's
    published report (``report/fashion_mnist/``) works in that data set's scratch folder whatever its parameters
    cell says (papermill injects the data set after that cell)."""
    here = Path.cwd()
    base = here.parent  # the folder whose layout the defaults assume: the repository, or report/ of another data set
    if is_repository(base):
        repo = base
    elif base.name == "report" and is_repository(base.parent):
        repo, dataset = base.parent, here.name  # report/<dataset>/: that data set's scratch, whatever the parameter
    else:
        return dirs
    scratch = scratch_run(repo, dataset=dataset)
    out = []
    for d in dirs:
        path = Path(os.path.normpath(here / d))
        if path.is_relative_to(base) and not path.is_relative_to(repo / "build"):
            path = scratch / path.relative_to(base)
        out.append(os.path.relpath(path, here) if not Path(d).is_absolute() else str(path))
    return tuple(out)
