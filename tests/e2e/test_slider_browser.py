"""End-to-end test of the ε slider, the README's way (issue 7; "Checks that can fail", item 9): a real `make report`,
a real `make lab`, a real kernel, a real Chromium, and no parameter given to the notebook by the test.

What it does, as a newcomer following the README does:

1. ``make report`` with small parameters in a copy of the repository (the session fixture ``repo_copy`` of
   tests/conftest.py, shared with tests/study/test_workflow.py): the models stay in ``build/run/artifacts/``, the executed
   notebooks are published into ``report/``;
2. ``make lab`` there, without arguments. The test's own settings reach JupyterLab as a user's would, through a
   Jupyter config file (isolated ``JUPYTER_CONFIG_DIR``: 127.0.0.1, a free port, a random token, no news or update
   checks, ``window.jupyterapp`` exposed) whose "web browser" only writes down the address ``make lab`` opens;
3. drives Debian's Chromium (``/usr/bin/chromium``, never a downloaded browser) with Playwright to that address, so
   it opens the notebook ``make lab`` opens, exactly as ``make lab`` left it (the test checks it is the published
   ``report/06_report.ipynb``, byte for byte); runs all cells, waits for the slider, moves it with the keyboard
   (ArrowRight = one step of 0.005, PageUp = 5 steps, Home/End = 0 / max, as noUiSlider in ipywidgets 8 does) and
   after every move compares the displayed ε, accuracy, ASR, predicted labels and captions with values computed
   here, independently of EpsExplorer, with ``advlib.attacks.fgsm`` + ``advlib.attacks.predict`` on the model
   ``make report`` trained;
4. saves the notebook from JupyterLab, as its autosave would, and checks that the published ``report/`` and
   ``figures/`` did not change: a hand run works in the scratch run folder ``build/scratch/``;
5. saves a screenshot of the widget after every move, the browser console log and the server log under
   ``test-artifacts/e2e/`` (git-ignored), and on failure a full-page screenshot; every failure message carries
   the console log, page errors, kernel tracebacks and any JupyterLab dialog.

Skipped, with the reason, when ``/usr/bin/chromium`` (apt package ``chromium``) or playwright is missing.
Run: ``.venv/bin/python -m pytest tests/e2e/test_slider_browser.py -v`` (add ``-s`` for the timing line); it pays
for the small ``make report`` of ``repo_copy`` unless the same session already ran it (``make test`` shares it).
"""
from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import tree_digest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACT_DIR = REPO_ROOT / "test-artifacts" / "e2e"  # git-ignored (/test-artifacts/)
PUBLISHED_NARRATIVE = "report/06_report.ipynb"  # what `make lab` shows (a copy of it, in build/scratch/)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"{CHROMIUM} not found: install Debian's Chromium (apt-get install -y chromium) "
                              "to run the browser test; `playwright install` is not used"),
]

# Key presses and the ε each must land on: the slider starts at the narrative's focus_eps (0.15), steps by its
# slider_step (0.005), up to 0.3. The test checks that the published notebook has these values; it sets none.
MOVES = [("ArrowRight", 0.155), ("PageUp", 0.180), ("Home", 0.0), ("End", 0.3), ("ArrowLeft", 0.295)]
INITIAL_EPS, STEP = 0.15, 0.005

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-quic", "--no-first-run", "--disable-default-apps", "--disable-extensions",
    "--disable-dev-shm-usage",
    # Nothing but the local server resolves: Chromium cannot reach the internet even if something asks it to.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
# The kernel's torch threads. With JupyterLab, Chromium and the kernel sharing a small (2-core) machine, one
# thread sets up the explorer ~3x faster than two (oversubscription); the oracle uses the same count, and so did
# `make report`'s jobs, so the kernel finds the explorer's precomputation in the stage cache.
KERNEL_THREADS = 1
SERVER_START_TIMEOUT = 120  # s until /api/status answers (make checks the data first)
RUN_ALL_TIMEOUT = 240  # s for the notebook to display the slider (kernel start, imports, explorer set-up)
MOVE_TIMEOUT = 30  # s for one slider move to show up
ERROR_TEXTS = ("Error displaying widget", "model not found", "Failed to load model class")


# ---------------------------------------------------------------------------------------------------------------
# What the notebook shows: the oracle's inputs


@dataclass
class OracleSpec:
    """How the notebook under test built its explorer, so the oracle can rebuild the same image set."""

    checkpoint: Path
    data_root: Path
    n_images: int | None  # None: read "on N images" from the status line
    pool: int | None  # select_correct among the first `pool` test images (None: the whole test set)
    n_show: int | None  # None: count the caption cells


def _notebook_parameters(path: Path) -> dict:
    """The literal parameters a notebook runs with: its `parameters` cell, then the cell papermill injected when
    `make report` ran it (the run's overrides, e.g. the small n_samples)."""
    import nbformat

    values = {}
    nb = nbformat.read(path, as_version=4)
    for tag in ("parameters", "injected-parameters"):
        for cell in (c for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])):
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                    with contextlib.suppress(ValueError):
                        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


# ---------------------------------------------------------------------------------------------------------------
# JupyterLab, started by `make lab`


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    proc: subprocess.Popen  # `make lab`
    url: str  # http://127.0.0.1:PORT
    token: str
    root: Path  # the repository copy, where make lab runs
    log: Path
    opened: Path  # where the stand-in web browser writes the address make lab opens
    published: dict  # {file: SHA-256} of report/ and figures/ before make lab

    def api(self, path: str, method: str = "GET", timeout: float = 5) -> dict:
        req = urllib.request.Request(self.url + path, method=method, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else {}

    def file_text(self, path: str) -> str:
        """A file as the server holds it (path relative to JupyterLab's root dir)."""
        return self.api(f"/api/contents/{urllib.parse.quote(path)}?type=file&format=text&content=1")["content"]

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT) -> str:
        """Wait for /api/status, then for the address make lab opened in the (stand-in) browser; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"`make lab` exited with code {self.proc.returncode} before JupyterLab answered:\n"
                            f"{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                self.api("/api/status", timeout=2)
                if self.opened.is_file() and self.opened.read_text().strip():
                    return self.opened.read_text().strip()
            time.sleep(0.25)
        pytest.fail(f"`make lab` did not serve {self.url}/api/status and open a browser within {timeout:.0f} s:\n"
                    f"{self.log_tail()}")

    def stop(self) -> None:
        """Shut down kernels and server (POST /api/shutdown), then kill what is left: make's process group (make,
        JupyterLab) and any kernel (kernels get their own session, so killpg alone would miss them)."""
        import psutil

        children = []
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(self.proc.pid).children(recursive=True)
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.api("/api/shutdown", method="POST", timeout=5)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)  # make was started as its own group leader
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()


@pytest.fixture(scope="module")
def lab_server(repo_copy, tmp_path_factory):
    """`make lab`, without arguments, in the repository copy where `make report` (small) has run. Always
    stopped, also on failure."""
    base = tmp_path_factory.mktemp("e2e")
    token = secrets.token_hex(16)
    port = _free_port()
    opened = base / "opened-url"
    # The test's settings, in the place a user keeps theirs: JupyterLab reads the config dir's files.
    config_dir = base / "jupyter-config"
    config_dir.mkdir()
    config = {
        "ServerApp": {"ip": "127.0.0.1", "port": port, "port_retries": 0, "allow_root": True,
                      "terminals_enabled": False,
                      # the "web browser" make lab starts: it writes down the address it is given (%s)
                      "browser": f"/bin/sh -c 'echo \"$0\" > \"{opened}\"' %s"},
        "IdentityProvider": {"token": token},
        "LabApp": {"expose_app_in_browser": True,  # window.jupyterapp: run commands and read outputs from the test
                   "news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
                   "extension_manager": "readonly", "workspaces_dir": str(base / "workspaces"),
                   "user_settings_dir": str(base / "settings")},
    }
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(config, indent=1))
    # No "get Jupyter news?" toast over the widget, no update check (both would also ask for the internet).
    settings = base / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
           "JUPYTER_CONFIG_DIR": str(config_dir), "JUPYTER_RUNTIME_DIR": str(base / "jupyter-runtime"),
           "JUPYTER_DATA_DIR": str(base / "jupyter-data"), "IPYTHONDIR": str(base / "ipython"),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(KERNEL_THREADS), "MKL_NUM_THREADS": str(KERNEL_THREADS)}
    published = tree_digest(repo_copy / "report", repo_copy / "figures")
    log = base / "make-lab.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(["make", "--no-print-directory", "lab"], cwd=repo_copy, env=env,
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = LabServer(proc, f"http://127.0.0.1:{port}", token, repo_copy, log, opened, published)
    try:
        yield server
    finally:
        server.stop()
        ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copyfile(log, ARTIFACT_DIR / "make-lab.log")


# ---------------------------------------------------------------------------------------------------------------
# The oracle: FGSM from scratch in this process


@dataclass
class Expected:
    eps: float
    eps_pixel: float
    accuracy: float  # percent over all n images
    n: int
    labels: list[int]  # of the shown images
    preds: list[int]
    confidences: list[float]  # percent
    near_tie: list[bool]  # top-2 probabilities within 1e-3: the predicted label may differ between two code paths


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Oracle:
    """Expected display at each eps, from the checkpoint and FGSM alone (EpsExplorer is not used). Runs with the
    kernel's thread count, so that both sides do the same arithmetic."""

    def __init__(self, spec: OracleSpec, n_images: int, n_show: int):
        from advlib.checkpoint import load_checkpoint
        from advlib.data import load_mnist
        from advlib.metrics import select_correct

        self.model = load_checkpoint(spec.checkpoint).model
        mnist = load_mnist(spec.data_root, fetch=False, train_subset=1)
        pool_x, pool_y = mnist.test_x, mnist.test_y
        if spec.pool is not None:
            pool_x, pool_y = pool_x[: spec.pool], pool_y[: spec.pool]
        with _torch_threads(KERNEL_THREADS):
            idx = select_correct(self.model, pool_x, pool_y, n_images)
        self.x, self.y, self.n_show = pool_x[idx], pool_y[idx], n_show
        self._cache: dict[float, Expected] = {}

    def __call__(self, eps: float) -> Expected:
        import torch

        from advlib.attacks import fgsm, predict, to_pixel_eps
        from advlib.data import BOUNDS

        eps = round(eps, 6)
        if eps not in self._cache:
            with _torch_threads(KERNEL_THREADS):
                x_adv = fgsm(self.model, self.x, self.y, eps, bounds=BOUNDS)
                preds, _ = predict(self.model, x_adv)  # all images, one batch, as the explorer's sweep
                shown_preds, shown_conf = predict(self.model, x_adv[: self.n_show])  # the shown ones, as state()
                # only to excuse near-ties: EpsExplorer.state() runs model(x), predict() its own fast path
                with torch.no_grad():
                    top2 = torch.softmax(self.model.eval()(x_adv[: self.n_show]), dim=1).topk(2, dim=1).values
            k = int((preds == self.y).sum())
            self._cache[eps] = Expected(eps, to_pixel_eps(eps), 100.0 * k / len(self.y), len(self.y),
                                        self.y[: self.n_show].tolist(), shown_preds.tolist(),
                                        (100.0 * shown_conf).tolist(),
                                        ((top2[:, 0] - top2[:, 1]) < 1e-3).tolist())
        return self._cache[eps]


# ---------------------------------------------------------------------------------------------------------------
# The browser


@dataclass
class BrowserLog:
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(f"[{time.strftime('%H:%M:%S')}] {line}")

    def text(self, last: int = 80) -> str:
        return "\n".join(self.lines[-last:]) or "(empty)"


@pytest.fixture
def browser_page(lab_server):
    """A headless Debian Chromium page with console/pageerror/failed-request collection."""
    from playwright.sync_api import sync_playwright

    log = BrowserLog()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1100})
            page = context.new_page()
            page.on("console", lambda m: log.add(f"console.{m.type}: {m.text}"))
            page.on("pageerror", lambda e: log.add(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: log.add(f"requestfailed: {r.method} {r.url} ({r.failure})"))
            page.on("request", lambda r: None if r.url.startswith((lab_server.url, "data:", "blob:", "file:"))
                    else log.add(f"non-local request (blocked by host rules): {r.url}"))
            yield page, log
        finally:
            ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
            (ARTIFACT_DIR / "console.log").write_text("\n".join(log.lines) + "\n")
            browser.close()


_JS_NOTEBOOK = """(path) => {
  const app = window.jupyterapp;
  if (!app) return null;
  for (const w of app.shell.widgets('main')) if (w.context && w.context.path === path) return w;
  return null;
}"""

# Errors in cell outputs, kernel status and open dialogs, read from JupyterLab's models (not the DOM).
_JS_STATE = """(path) => {
  const find = %s;
  const nb = find(path);
  const dialogs = Array.from(document.querySelectorAll('.jp-Dialog')).map(d => d.innerText.slice(0, 500));
  if (!nb) return {found: false, dialogs};
  const errors = [];
  let executed = 0, codeCells = 0;
  const cells = nb.content.model.cells;
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    codeCells++;
    if (c.executionCount) executed++;
    for (const o of c.outputs.toJSON())
      if (o.output_type === 'error')
        errors.push({cell: i, ename: o.ename, evalue: o.evalue, traceback: (o.traceback || []).join('\\n')});
  }
  const kernel = nb.sessionContext.session && nb.sessionContext.session.kernel;
  return {found: true, errors, executed, codeCells, dialogs, kernel: kernel ? kernel.status : 'none',
          runAll: window.__e2eRunAll || null};
}""" % _JS_NOTEBOOK

_JS_RUN_ALL = """async (path) => {
  const nb = (%s)(path);
  await nb.context.ready;
  await nb.sessionContext.ready;
  window.__e2eRunAll = 'running';
  window.jupyterapp.shell.activateById(nb.id);
  window.jupyterapp.commands.execute('notebook:run-all-cells').then(
    ok => { window.__e2eRunAll = ok === false ? 'stopped (a cell failed)' : 'done'; },
    err => { window.__e2eRunAll = 'rejected: ' + err; });
}""" % _JS_NOTEBOOK

_JS_SAVE = """async (path) => {
  const nb = (%s)(path);
  window.jupyterapp.shell.activateById(nb.id);
  await window.jupyterapp.commands.execute('docmanager:save');
}""" % _JS_NOTEBOOK

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Session:
    """One browser session on the notebook, with failure messages that carry everything needed to debug."""

    def __init__(self, page, log: BrowserLog, server: LabServer, notebook: str):
        self.page, self.log, self.server, self.notebook = page, log, server, notebook

    def state(self) -> dict:
        try:
            return self.page.evaluate(_JS_STATE, self.notebook) or {}
        except Exception as e:  # the page may be gone
            return {"evaluate_error": str(e)}

    def problems(self) -> list[str]:
        """Widget error texts on the page, kernel tracebacks, open dialogs."""
        out = []
        for text in ERROR_TEXTS:
            loc = self.page.locator(".jp-OutputArea-output").get_by_text(text, exact=False)
            if loc.count():
                out.append(f"page shows {text!r}: {loc.first.inner_text()[:300]!r}")
        st = self.state()
        for err in st.get("errors", []):
            tb = _ANSI.sub("", err["traceback"])[-2000:]
            out.append(f"cell {err['cell']} raised {err['ename']}: {err['evalue']}\n{tb}")
        for d in st.get("dialogs", []):
            out.append(f"dialog open: {d!r}")
        return out

    def fail(self, message: str) -> None:
        ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):  # show the first error output, if any, in the screenshot
            errors = self.page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'], "
                                       ".jp-OutputArea-output:has-text('Error displaying widget')")
            if errors.count():
                errors.first.scroll_into_view_if_needed(timeout=2000)
        with contextlib.suppress(Exception):
            self.page.screenshot(path=str(ARTIFACT_DIR / "failure-page.png"), full_page=True)
        st = {k: v for k, v in self.state().items() if k != "errors"}
        problems = "\n".join(self.problems()) or "(none)"
        if problems != "(none)" and problems in message:
            problems = "(listed above)"
        pytest.fail(f"{message}\n\n--- problems on the page ---\n{problems}\n--- notebook state ---\n{st}\n"
                    f"--- browser console ({len(self.log.lines)} messages, last 80) ---\n{self.log.text()}\n"
                    f"--- jupyter server log (tail) ---\n{self.server.log_tail(25)}\n"
                    f"(screenshot: {ARTIFACT_DIR / 'failure-page.png'}, console log: {ARTIFACT_DIR / 'console.log'})",
                    pytrace=False)

    def check_no_problems(self, when: str) -> None:
        problems = self.problems()
        if problems:
            self.fail(f"the notebook or widget reported an error {when}:\n" + "\n".join(problems))


def _parse_view(view: dict) -> dict:
    """Numbers out of the explorer's DOM text (see advlib.explorer.panel_html)."""
    status = " ".join(view["status"].split())
    m = re.search(r"ε = ([\d.]+) normalized \(= ([\d.]+) in \[0, 1\] pixel units\) · adversarial accuracy "
                  r"([\d.]+)% · ASR ([\d.]+)% on (\d+) images", status)
    preds = re.findall(r"(\d+) \((\d+)%\)", view["preds"].removeprefix("predicted:"))
    captions = [re.search(r"true (\d+) → (\d+) \((\d+)%\)", " ".join(c.split())) for c in view["captions"]]
    return {"status": m.groups() if m else None,
            "preds": [(int(p), int(c)) for p, c in preds],
            "captions": [tuple(int(g) for g in c.groups()) if c else None for c in captions],
            "readout": view["readout"].strip()}


def _mismatches(parsed: dict, exp: Expected) -> list[str]:
    bad = []
    want_status = (f"{exp.eps:.3f}", f"{exp.eps_pixel:.4f}", f"{exp.accuracy:.2f}", f"{100 - exp.accuracy:.2f}",
                   str(exp.n))
    if parsed["status"] != want_status:
        bad.append(f"status line (eps, eps_pixel, accuracy %, ASR %, n): shown {parsed['status']}, "
                   f"expected {want_status}")
    if parsed["readout"] != f"{exp.eps:.3f}":
        bad.append(f"slider readout: shown {parsed['readout']!r}, expected {exp.eps:.3f}")
    shown_preds = [p for p, _ in parsed["preds"]]
    if len(shown_preds) != len(exp.preds) or any(
            p != e and not tie for p, e, tie in zip(shown_preds, exp.preds, exp.near_tie)):
        bad.append(f"predicted labels: shown {shown_preds}, expected {exp.preds}")
    # confidences: ±1 point, as rounding to whole percent may tip either way between two processes
    confs = [c for _, c in parsed["preds"]]
    if len(confs) != len(exp.confidences) or any(abs(c - e) > 1.0 for c, e in zip(confs, exp.confidences)):
        bad.append(f"confidences (%): shown {confs}, expected {[round(c, 1) for c in exp.confidences]}")
    caps = [c[:2] if c else None for c in parsed["captions"]]
    want_caps = [(t, c[1] if tie and c else p) for t, p, tie, c in zip(exp.labels, exp.preds, exp.near_tie, caps)]
    if caps != want_caps:
        bad.append(f"captions (true, pred): shown {caps}, expected {want_caps}")
    return bad


_JS_VIEW = """(box) => ({
  status: (box.querySelector('.advlib-explorer-status') || {}).innerText || '',
  preds: (box.querySelector('.advlib-explorer-preds') || {}).innerText || '',
  captions: Array.from(box.querySelectorAll('.advlib-explorer-caption')).map(c => c.innerText),
  readout: (box.querySelector('.widget-readout') || {}).innerText || '',
  images: box.querySelectorAll('.advlib-explorer-grid img').length,
  curve: box.querySelectorAll('svg.advlib-explorer-curve').length,
})"""


# ---------------------------------------------------------------------------------------------------------------
# The test


def test_slider_moves_update_numbers_in_jupyterlab(lab_server, browser_page):
    """After `make report`, `make lab` then Run All, as the README says, makes the slider live on the models
    `make report` trained; saving the notebook leaves the published report as it was."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page, log = browser_page
    t0 = time.monotonic()
    address = lab_server.wait_ready()
    t_lab = time.monotonic() - t0
    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACT_DIR.glob("*.png"):
        old.unlink()
    root = lab_server.root
    published = root / PUBLISHED_NARRATIVE
    params = _notebook_parameters(published)
    assert (params.get("focus_eps"), params.get("slider_step")) == (INITIAL_EPS, STEP), (
        f"the published narrative's slider starts at focus_eps = {params.get('focus_eps')} with slider_step = "
        f"{params.get('slider_step')}; MOVES assume {INITIAL_EPS} and {STEP}")

    # 1. open what make lab opened in its browser, and wait for the notebook's kernel
    page.goto(address, wait_until="domcontentloaded")
    try:
        page.wait_for_url(re.compile(r".*/lab/tree/.+\.ipynb.*"), timeout=60_000)
    except PlaywrightTimeout:
        pytest.fail(f"`make lab` opened {address!r}, which did not lead to a notebook (now at {page.url!r})")
    notebook = urllib.parse.unquote(urllib.parse.urlparse(page.url).path.split("/lab/tree/", 1)[1])
    as_published = published.read_text(encoding="utf-8")
    if lab_server.file_text(notebook) != as_published:
        pytest.fail(f"`make lab` opened {notebook}, which is not {PUBLISHED_NARRATIVE} as `make report` published it")
    s = Session(page, log, lab_server, notebook)
    try:
        page.wait_for_function(f"() => ({_JS_NOTEBOOK})({json.dumps(notebook)}) !== null", timeout=60_000)
        page.wait_for_function(f"() => {{ const nb = ({_JS_NOTEBOOK})({json.dumps(notebook)});"
                               "const k = nb.sessionContext.session && nb.sessionContext.session.kernel;"
                               "return k && k.status === 'idle'; }", timeout=60_000)
        opened = True
    except PlaywrightTimeout:
        opened = False
    if not opened:
        s.fail(f"JupyterLab did not open {notebook} with an idle kernel within 60 s")

    # 2. run all cells and wait for the slider (or an error)
    page.evaluate(_JS_RUN_ALL, notebook)
    box = page.locator(".jp-OutputArea-output .widget-vbox:has(.advlib-explorer-status)").first
    deadline = time.monotonic() + RUN_ALL_TIMEOUT
    done_at = None
    while not (box.count() and box.locator(".noUi-handle").count() and box.locator(".advlib-explorer-grid").count()):
        st = s.state()
        if s.problems() or str(st.get("runAll", "")).startswith(("stopped", "rejected")):
            s.check_no_problems("while running all cells")
            s.fail(f"'Run All Cells' ended ({st.get('runAll')}) without displaying the slider")
        if st.get("runAll") == "done":
            done_at = done_at or time.monotonic()
            if time.monotonic() - done_at > 15:  # every cell ran; the widget manager had 15 s to render
                s.fail("all cells ran but no EpsExplorer widget (.widget-vbox with .advlib-explorer-status, "
                       ".noUi-handle and .advlib-explorer-grid) appeared in an output")
        if time.monotonic() > deadline:
            s.fail(f"the slider did not appear within {RUN_ALL_TIMEOUT} s of 'Run All Cells'")
        page.wait_for_timeout(250)
    box.scroll_into_view_if_needed()
    s.check_no_problems("after running all cells")
    t_ready = time.monotonic() - t0
    handle = box.locator(".widget-hslider .noUi-handle").first
    box_el = box.element_handle()

    # 3. the oracle, on the image set the notebook uses. JupyterLab lays out only the cells near the viewport
    # (content-visibility), and innerText is empty until the scrolled-to output is laid out: wait for the text.
    try:
        page.wait_for_function("(box) => ((box.querySelector('.advlib-explorer-status') || {}).innerText || '')"
                               ".includes('images')", arg=box_el, timeout=MOVE_TIMEOUT * 1000)
    except PlaywrightTimeout:
        pass  # reported below, with what the page shows
    first = _parse_view(page.evaluate(_JS_VIEW, box_el))
    if first["status"] is None:
        text = page.evaluate("(box) => (box.querySelector('.advlib-explorer-status') || {}).textContent", box_el)
        s.fail(f"cannot parse the status line: {page.evaluate(_JS_VIEW, box_el)['status']!r} "
               f"(its textContent: {text!r})")
    # 06_report builds its explorer from the model make report trained and select_correct(model, test_x, test_y,
    # n_samples) over the whole test set; n (n_samples) and n_show are read back from the page
    spec = OracleSpec(root / "build" / "run" / "artifacts" / "model.pt", root / "data", None, None, None)
    n_images = int(first["status"][4])
    n_show = len(first["captions"])
    oracle = Oracle(spec, n_images, n_show)
    expected_all = [oracle(e) for e in [INITIAL_EPS] + [e for _, e in MOVES]]
    distinct = {(e.accuracy, tuple(e.preds)) for e in expected_all}
    assert len(distinct) >= 3, (f"the checkpoint is too flat for a meaningful test: only {len(distinct)} distinct "
                                f"(accuracy, preds) over the tested eps: {expected_all}")

    # 4. initial state, then move the slider with the keyboard and check every state
    def check(step: str, eps: float) -> None:
        exp = oracle(eps)
        want = f"ε = {exp.eps:.3f} normalized"
        try:
            page.wait_for_function(
                "([box, want]) => (box.querySelector('.advlib-explorer-status') || {}).innerText"
                "?.replace(/\\s+/g, ' ').includes(want)", arg=[box_el, want], timeout=MOVE_TIMEOUT * 1000)
            shown = True
        except PlaywrightTimeout:
            shown = False
        if not shown:
            s.check_no_problems(f"after {step}")
            s.fail(f"after {step} the status line did not show {want!r} within {MOVE_TIMEOUT} s; it shows "
                   f"{page.evaluate(_JS_VIEW, box_el)['status']!r}")
        page.wait_for_timeout(300)  # let any later message (there should be none) land before reading
        view = page.evaluate(_JS_VIEW, box_el)
        shot = ARTIFACT_DIR / f"slider-{len(list(ARTIFACT_DIR.glob('slider-*.png'))):02d}-eps{exp.eps:.3f}.png"
        box.screenshot(path=str(shot))
        s.check_no_problems(f"after {step}")
        if view["images"] != 3 * n_show or view["curve"] != 1:
            s.fail(f"after {step}: expected {3 * n_show} images and 1 accuracy curve, got {view['images']} and "
                   f"{view['curve']}")
        bad = _mismatches(_parse_view(view), exp)
        if bad:
            s.fail(f"after {step} (ε = {exp.eps:.3f}) the widget differs from FGSM computed by the test:\n  "
                   + "\n  ".join(bad) + f"\nraw view: {view['status']!r} / {view['preds']!r} / {view['captions']}")

    check("running all cells (initial value)", INITIAL_EPS)
    for key, eps in MOVES:
        handle.press(key)
        check(f"pressing {key} on the slider handle", eps)

    s.check_no_problems("at the end")
    page_errors = [line for line in log.lines if "pageerror" in line]
    if page_errors:
        s.fail("uncaught errors in the page:\n" + "\n".join(page_errors))

    # 5. save, as JupyterLab's autosave would: the notebook make lab opened changes, the published report does not
    page.evaluate(_JS_SAVE, notebook)
    try:
        page.wait_for_function(f"() => ({_JS_NOTEBOOK})({json.dumps(notebook)}).context.model.dirty === false",
                               timeout=30_000)
    except PlaywrightTimeout:
        s.fail(f"JupyterLab did not save {notebook} within 30 s")
    if lab_server.file_text(notebook) == as_published:
        pytest.fail(f"saving did not write {notebook}")
    now = tree_digest(root / "report", root / "figures")
    changed = sorted(os.path.relpath(k, root) for k in set(lab_server.published) | set(now)
                     if lab_server.published.get(k) != now.get(k))
    assert not changed, f"running and saving the notebook `make lab` opened changed the published report: {changed}"
    print(f"\n[e2e] make lab opened {notebook}: JupyterLab up after {t_lab:.1f} s, slider ready after "
          f"{t_ready:.1f} s; {len(MOVES)} moves checked; screenshots in {ARTIFACT_DIR}")
