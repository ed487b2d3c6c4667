"""End-to-end test of the ε slider (issue 7): a real JupyterLab, a real kernel, a real Chromium.

What it does:

1. builds a small world in a temporary directory (see ``TARGET`` below): either the narrative notebook
   ``notebooks/06_report.ipynb`` on the outputs of the ``small_pipeline`` fixture (tests/conftest.py), or a small
   generated notebook on a checkpoint trained here in seconds; either way the parameters are injected with
   papermill (``prepare_only=True``), so that JupyterLab, not papermill, runs the notebook;
2. starts JupyterLab from this Python environment on 127.0.0.1 (random free port, random token, isolated
   config/runtime/settings/workspace dirs, no news or update checks) and waits for ``/api/status``;
3. drives Debian's Chromium (``/usr/bin/chromium``, never a downloaded browser) with Playwright: opens the
   notebook, runs all cells, waits for the slider, moves it with the keyboard (ArrowRight = one step of 0.005,
   PageUp = 5 steps, Home/End = 0 / max, as noUiSlider in ipywidgets 8 does) and after every move compares the
   displayed ε, accuracy, ASR, predicted labels and captions with values computed here, independently of
   EpsExplorer, with ``advlib.attacks.fgsm`` + ``advlib.attacks.predict``;
4. saves a screenshot of the widget after every move, the browser console log and the server log under
   ``test-artifacts/e2e/`` (git-ignored), and on failure a full-page screenshot; every failure message carries
   the console log, page errors, kernel tracebacks and any JupyterLab dialog.

Skipped, with the reason, when ``/usr/bin/chromium`` (apt package ``chromium``) or playwright is missing.
Run: ``.venv/bin/python -m pytest tests/e2e -m e2e -v`` (add ``-s`` for the timing line). The narrative target pays
for the ``small_pipeline`` fixture unless the same session already ran it; ``ADVLIB_E2E_NOTEBOOK=generated``
runs the browser part alone in about a minute.
"""
from __future__ import annotations

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
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACT_DIR = REPO_ROOT / "test-artifacts" / "e2e"  # git-ignored (/test-artifacts/)
NARRATIVE_NOTEBOOK = REPO_ROOT / "notebooks" / "06_report.ipynb"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"{CHROMIUM} not found: install Debian's Chromium (apt-get install -y chromium) "
                              "to run the browser test; `playwright install` is not used"),
]

# Which notebook the browser runs. The single switch (env ADVLIB_E2E_NOTEBOOK overrides it):
#   "auto"      -> the narrative notebook notebooks/06_report.ipynb when it exists AND the lead's session
#                  fixture `small_pipeline` (tests/conftest.py) is available; otherwise "generated".
#   "narrative" -> the narrative notebook (fails if it or `small_pipeline` is missing).
#   "generated" -> a small notebook written here (checkpoint -> 100 correct images -> EpsExplorer).
# "narrative" costs the `small_pipeline` run (all six stages, shared with the pipeline tests of the same session);
# "generated" needs only a ~100-step training run.
TARGET = os.environ.get("ADVLIB_E2E_NOTEBOOK", "auto")

# The tiny model of the generated world: ~95 Adam steps, seeded, BatchNorm statistics recomputed afterwards. The
# test needs correctly classified images and an accuracy that changes with ε, not a good classifier.
TRAIN_SUBSET, TRAIN_EVAL, TRAIN_BATCH = 1500, 200, 16
GENERATED_POOL, GENERATED_N, N_SHOW = 500, 100, 8  # select N correct images among the first POOL test images

# Key presses and the ε each must land on (slider starts at 0.15, step 0.005, max 0.3).
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
# thread sets up the explorer ~3x faster than two (oversubscription); the oracle uses the same count.
KERNEL_THREADS = 1
SERVER_START_TIMEOUT = 90  # s until /api/status answers
RUN_ALL_TIMEOUT = 240  # s for the notebook to display the slider (kernel start, imports, explorer set-up)
MOVE_TIMEOUT = 30  # s for one slider move to show up
ERROR_TEXTS = ("Error displaying widget", "model not found", "Failed to load model class")


# ---------------------------------------------------------------------------------------------------------------
# The world: checkpoint + notebook in a temporary root dir


@dataclass
class OracleSpec:
    """How the notebook under test built its explorer, so the oracle can rebuild the same image set."""

    checkpoint: Path
    data_root: Path
    n_images: int | None  # None: read "on N images" from the status line
    pool: int | None  # select_correct among the first `pool` test images (None: the whole test set)
    n_show: int | None  # None: count the caption cells


@dataclass
class World:
    root: Path  # JupyterLab's root dir
    notebook: str  # path of the notebook relative to root, e.g. "notebooks/e2e_slider.ipynb"
    spec: OracleSpec
    kind: str  # "generated" or "narrative"


def _generated_notebook():
    import nbformat.v4 as nbf

    return nbf.new_notebook(
        cells=[
            nbf.new_markdown_cell("# ε slider: end-to-end fixture notebook (written by tests/e2e)"),
            nbf.new_code_cell(f'data_dir = "../data"\nartifact_dir = "../artifacts"\n'
                              f"n_pool = {GENERATED_POOL}\nn_images = {GENERATED_N}\nn_show = {N_SHOW}",
                              metadata={"tags": ["parameters"]}),
            nbf.new_code_cell(
                "from pathlib import Path\n"
                "from advlib.checkpoint import load_checkpoint\n"
                "from advlib.data import load_mnist\n"
                "from advlib.explorer import EpsExplorer\n"
                "from advlib.metrics import select_correct\n\n"
                'model = load_checkpoint(Path(artifact_dir) / "model.pt").model\n'
                "mnist = load_mnist(data_dir, fetch=False, train_subset=1)  # only the test split is used\n"
                "pool_x, pool_y = mnist.test_x[:n_pool], mnist.test_y[:n_pool]\n"
                "idx = select_correct(model, pool_x, pool_y, n_images)\n"
                "x, y = pool_x[idx], pool_y[idx]"),
            nbf.new_code_cell(f"explorer = EpsExplorer(model, x, y, n_show=n_show, eps_step={STEP}, "
                              f"initial_eps={INITIAL_EPS}, progress=False)\nexplorer"),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
                  "language_info": {"name": "python"}},
    )


def _prepare_notebook(src: Path, dest: Path, parameters: dict) -> None:
    """Copy src to dest with papermill-injected parameters, unexecuted, without outputs or saved widget state
    (stale outputs of a saved widget would render 'Error displaying widget' before anything runs)."""
    import nbformat
    import papermill

    papermill.execute_notebook(str(src), str(dest), parameters=parameters, prepare_only=True,
                               kernel_name="python3", language="python", progress_bar=False)
    nb = nbformat.read(dest, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, dest)


def _train_tiny_checkpoint(path: Path, data_root: Path) -> None:
    from advlib.checkpoint import save_checkpoint
    from advlib.data import MNIST, load_mnist
    from advlib.train import TrainConfig, recalibrate_batchnorm, train

    m = load_mnist(data_root, fetch=False, train_subset=TRAIN_SUBSET)
    data = MNIST(m.train_u8, m.train_y, m.test_x[:TRAIN_EVAL], m.test_y[:TRAIN_EVAL])
    config = TrainConfig(epochs=1, batch_size=TRAIN_BATCH, seed=0)
    model, optimizer, history = train(data, config=config, progress=False)
    recalibrate_batchnorm(model, m.train_x)
    save_checkpoint(path, model, optimizer, history, config.to_dict(), metadata={"purpose": "tests/e2e"})


def _build_generated_world(root: Path, data_root: Path) -> World:
    import nbformat

    (root / "notebooks").mkdir(parents=True)
    (root / "artifacts").mkdir()
    checkpoint = root / "artifacts" / "model.pt"
    _train_tiny_checkpoint(checkpoint, data_root)
    src = root / "e2e_slider.src.ipynb"
    nbformat.write(_generated_notebook(), src)
    _prepare_notebook(src, root / "notebooks" / "e2e_slider.ipynb",
                      {"data_dir": str(data_root), "artifact_dir": str(root / "artifacts")})
    src.unlink()
    return World(root, "notebooks/e2e_slider.ipynb",
                 OracleSpec(checkpoint, data_root, GENERATED_N, GENERATED_POOL, N_SHOW), "generated")


def _build_narrative_world(root: Path, data_root: Path, pipeline: dict) -> World:
    """notebooks/06_report.ipynb on the outputs of the `small_pipeline` fixture (tests/conftest.py): the
    parameters the pipeline ran with (e.g. its small n_samples) plus its artifact/figure dirs, and the slider's
    start and step pinned to what MOVES assumes."""
    import papermill

    (root / "notebooks").mkdir(parents=True)
    declared = papermill.inspect_notebook(str(NARRATIVE_NOTEBOOK))  # the names in its `parameters` cell
    given = {**pipeline.get("parameters", {}), **{k: v for k, v in pipeline.items() if k != "parameters"},
             "focus_eps": INITIAL_EPS, "slider_step": STEP}
    parameters = {k: str(v) if isinstance(v, Path) else v for k, v in given.items() if k in declared}
    parameters.setdefault("data_dir", str(data_root))
    if "artifact_dir" not in parameters:
        pytest.fail(f"small_pipeline gave no artifact_dir for {NARRATIVE_NOTEBOOK.name}: {sorted(pipeline)}")
    _prepare_notebook(NARRATIVE_NOTEBOOK, root / "notebooks" / NARRATIVE_NOTEBOOK.name, parameters)
    # 06_report builds its explorer from artifact_dir/model.pt and select_correct(model, test_x, test_y,
    # n_samples) over the whole test set; n (n_samples) and n_show are read back from the page.
    checkpoint = Path(parameters["artifact_dir"]) / "model.pt"
    return World(root, f"notebooks/{NARRATIVE_NOTEBOOK.name}",
                 OracleSpec(checkpoint, Path(parameters["data_dir"]), None, None, None), "narrative")


def _small_pipeline(request) -> dict | None:
    try:
        return request.getfixturevalue("small_pipeline")
    except pytest.FixtureLookupError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# JupyterLab


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    token: str
    root: Path
    log: Path

    def api(self, path: str, method: str = "GET", timeout: float = 5) -> dict:
        req = urllib.request.Request(self.url + path, method=method, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else {}

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {self.proc.returncode} before answering:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                self.api("/api/status", timeout=2)
                return
            time.sleep(0.25)
        pytest.fail(f"JupyterLab did not answer {self.url}/api/status within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Shut down kernels and server (POST /api/shutdown), then kill what is left: the server's process group
        and any kernel (kernels get their own session, so killpg alone would miss them)."""
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
                    os.killpg(self.proc.pid, sig)  # the server was started as its own group leader
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    """JupyterLab on 127.0.0.1:<free port> with a token, root dir = an empty temp dir that the world fixture
    fills (started first so that it boots while the checkpoint trains). Always stopped, also on failure."""
    base = tmp_path_factory.mktemp("e2e")
    root = base / "root"
    root.mkdir()
    token = secrets.token_hex(16)
    port = _free_port()
    venv_bin = str(Path(sys.executable).parent)  # the kernelspec runs `python`: make it this environment's
    env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
           "JUPYTER_CONFIG_DIR": str(base / "jupyter-config"), "JUPYTER_RUNTIME_DIR": str(base / "jupyter-runtime"),
           "JUPYTER_DATA_DIR": str(base / "jupyter-data"), "IPYTHONDIR": str(base / "ipython"),
           "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(KERNEL_THREADS), "MKL_NUM_THREADS": str(KERNEL_THREADS)}
    # No "get Jupyter news?" toast over the widget, no update check (both would also ask for the internet).
    settings = base / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--expose-app-in-browser",  # window.jupyterapp: run commands and read cell outputs from the test
           "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False",
           f"--LabApp.workspaces_dir={base / 'workspaces'}", f"--LabApp.user_settings_dir={base / 'settings'}"]
    log = base / "jupyter-server.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = LabServer(proc, f"http://127.0.0.1:{port}", token, root, log)
    try:
        yield server
    finally:
        server.stop()
        ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copyfile(log, ARTIFACT_DIR / "jupyter-server.log")


@pytest.fixture(scope="module")
def world(request, lab_server, data_root) -> World:
    """The checkpoint and the notebook under test, in the server's root dir (see TARGET)."""
    target = TARGET
    if target not in ("auto", "narrative", "generated"):
        pytest.fail(f"ADVLIB_E2E_NOTEBOOK must be auto, narrative or generated, got {target!r}")
    pipeline = None
    if target in ("auto", "narrative") and NARRATIVE_NOTEBOOK.exists():
        pipeline = _small_pipeline(request)
    if target == "narrative" and pipeline is None:
        pytest.fail(f"ADVLIB_E2E_NOTEBOOK=narrative needs {NARRATIVE_NOTEBOOK} and the `small_pipeline` fixture")
    if pipeline is not None:
        return _build_narrative_world(lab_server.root, data_root, pipeline)
    return _build_generated_world(lab_server.root, data_root)


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

        eps = round(eps, 6)
        if eps not in self._cache:
            with _torch_threads(KERNEL_THREADS):
                x_adv = fgsm(self.model, self.x, self.y, eps)
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
            page.on("request", lambda r: None if r.url.startswith((lab_server.url, "data:", "blob:"))
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


def test_slider_moves_update_numbers_in_jupyterlab(lab_server, world, browser_page):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page, log = browser_page
    t0 = time.monotonic()
    lab_server.wait_ready()
    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACT_DIR.glob("*.png"):
        old.unlink()
    s = Session(page, log, lab_server, world.notebook)

    # 1. open the notebook and wait for its kernel
    page.goto(f"{lab_server.url}/lab/tree/{world.notebook}?token={lab_server.token}", wait_until="domcontentloaded")
    try:
        page.wait_for_function(f"() => ({_JS_NOTEBOOK})({json.dumps(world.notebook)}) !== null", timeout=60_000)
        page.wait_for_function(f"() => {{ const nb = ({_JS_NOTEBOOK})({json.dumps(world.notebook)});"
                               "const k = nb.sessionContext.session && nb.sessionContext.session.kernel;"
                               "return k && k.status === 'idle'; }", timeout=60_000)
        opened = True
    except PlaywrightTimeout:
        opened = False
    if not opened:
        s.fail(f"JupyterLab did not open {world.notebook} with an idle kernel within 60 s")

    # 2. run all cells and wait for the slider (or an error)
    page.evaluate(_JS_RUN_ALL, world.notebook)
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

    # 3. the oracle, on the image set the notebook uses
    first = _parse_view(page.evaluate(_JS_VIEW, box_el))
    if first["status"] is None:
        s.fail(f"cannot parse the status line: {page.evaluate(_JS_VIEW, box_el)['status']!r}")
    n_images = world.spec.n_images or int(first["status"][4])
    n_show = world.spec.n_show or len(first["captions"])
    oracle = Oracle(world.spec, n_images, n_show)
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
    print(f"\n[e2e] notebook={world.notebook} ({world.kind}); slider ready after {t_ready:.1f} s; "
          f"{len(MOVES)} moves checked; screenshots in {ARTIFACT_DIR}")
