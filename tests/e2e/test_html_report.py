"""End-to-end test of the kernel-free eps slider (issue 13), as a reader would use it: a page opened from disk in
Debian's Chromium with every network request blocked, the slider moved by keyboard and by mouse drag.

1. builds an :class:`advlib.explorer.EpsExplorer` on the conftest ``trained_model`` and ~200 correctly classified
   test images, writes a page holding ``standalone_html(explorer)`` and opens it as a file: URL; any request that
   is not file: or data: is aborted and fails the test, as does any console error or uncaught page error;
2. after every move reads what the page shows (slider readout, eps in both units, accuracy, ASR, predicted labels
   with confidence, captions, image sources, curve marker) and compares it with ``explorer.state(eps)``, formatted
   as :func:`advlib.explorer.panel_html` formats it for the live widget;
3. saves screenshots at 1280x800 and 390x844 under ``test-artifacts/html_report/`` (git-ignored);
4. corrupts one precomputed accuracy and checks that the comparison catches it (the test can fail);
5. exports a notebook holding the explorer's display output (with saved widget state, as papermill leaves it) with
   :func:`study.html_report.export_html` and checks the page: hidden sources, no prompts, embedded figures, a
   working slider offline; an unexecuted notebook is refused;
6. opens each committed report page the same way (``report/index.html``, MNIST's, and
   ``report/fashion_mnist/index.html``, Fashion-MNIST's; ``make report`` and ``make report
   CONFIG="dataset=fashion_mnist"`` write them; each is skipped while it does not exist), checks its slider against
   its metrics.json, and follows its link to the other data set's page.

Skipped, with the reason, when ``/usr/bin/chromium`` (apt package ``chromium``) or playwright is missing.
Run: ``.venv/bin/python -m pytest tests/e2e/test_html_report.py -m e2e -v``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

from advlib import explorer as E  # noqa: E402
from study import html_report  # noqa: E402
from advlib.metrics import select_correct  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACT_DIR = REPO_ROOT / "test-artifacts" / "html_report"  # git-ignored (/test-artifacts/)
# the committed report pages: {data set: (page, its metrics.json, its link to the other data set's page)}
REPORT_PAGES = {
    "mnist": (REPO_ROOT / "report" / "index.html", REPO_ROOT / "figures" / "metrics.json", "fashion_mnist/index.html"),
    "fashion_mnist": (REPO_ROOT / "report" / "fashion_mnist" / "index.html",
                      REPO_ROOT / "figures" / "fashion_mnist" / "metrics.json", "../index.html"),
}


def report_pages() -> list:
    """REPORT_PAGES as parameters (page, metrics, link), each skipped with the reason while its page is missing."""
    return [pytest.param(page, metrics, link, id=name,
                         marks=pytest.mark.skipif(not page.exists(), reason=f"{page.relative_to(REPO_ROOT)} does not "
                                                  "exist yet (make report" + ("" if name == "mnist" else
                                                  f' CONFIG="dataset={name}"') + " writes it)"))
            for name, (page, metrics, link) in REPORT_PAGES.items()]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"{CHROMIUM} not found: install Debian's Chromium (apt-get install -y chromium) "
                              "to run the browser test; `playwright install` is not used"),
]

N_IMAGES, N_POOL, N_SHOW = 200, 1000, 8  # explorer on the first 200 correct images among the first 1000
INITIAL_EPS, STEP, EPS_MAX = 0.15, 0.005, 0.3
# key presses on the focused slider and the grid index each must land on (start: 0.15 = index 30 of 0..60)
KEY_MOVES = [("ArrowRight", 31), ("ArrowRight", 32), ("ArrowLeft", 31), ("End", 60), ("Home", 0), ("ArrowUp", 1)]
DRAG_TO = [0.25, 0.8, 0.5]  # fractions of the slider's width
VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions",
                 "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def explorer(trained_model, mnist):
    x, y = mnist.test_x[:N_POOL], mnist.test_y[:N_POOL]
    idx = select_correct(trained_model, x, y, N_IMAGES)
    return E.EpsExplorer(trained_model, x[idx], y[idx], n_show=N_SHOW, eps_max=EPS_MAX, eps_step=STEP,
                         initial_eps=INITIAL_EPS, progress=False)


def write_page(path: Path, fragment: str) -> Path:
    path.write_text('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                    '<meta name="viewport" content="width=device-width, initial-scale=1">'
                    f"<title>ε explorer</title></head><body>{fragment}</body></html>", encoding="utf-8")
    return path


class Browser:
    """A headless Debian Chromium page that may load nothing but file: and data: URLs, recording every attempt
    to go elsewhere, every console error and every uncaught error."""

    def __init__(self, pw):
        self.browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        self.problems: list[str] = []
        self.log: list[str] = []

    def open(self, url: str, viewport: tuple[int, int]):
        context = self.browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        context.route("**/*", self._route)
        page = context.new_page()
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.problems.append(f"uncaught error in the page: {e}"))
        page.goto(url, wait_until="load")
        return page

    def _route(self, route):
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            self.problems.append(f"the page requested {url} (blocked: it must work offline)")
            route.abort()

    def _console(self, msg):
        self.log.append(f"console.{msg.type}: {msg.text}")
        if msg.type == "error":
            self.problems.append(f"console error: {msg.text}")

    def check(self, when: str) -> None:
        assert not self.problems, f"{when}:\n" + "\n".join(self.problems)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = Browser(pw)
        try:
            yield b
        finally:
            ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
            (ARTIFACT_DIR / "console.log").write_text("\n".join(b.log) + "\n")
            b.browser.close()


# What the page shows, read from its DOM (root: the explorer's outer div).
_JS_VIEW = """(root) => ({
  index: +root.querySelector('.advlib-explorer-slider input').value,
  sliderVisible: root.querySelector('.advlib-explorer-slider').offsetParent !== null,
  readout: root.querySelector('.advlib-explorer-readout').textContent,
  status: root.querySelector('.advlib-explorer-status').innerText.replace(/\\s+/g, ' ').trim(),
  preds: root.querySelector('.advlib-explorer-preds').innerText.replace(/\\s+/g, ' ').trim(),
  captions: Array.from(root.querySelectorAll('.advlib-explorer-caption')).map(c => ({
    text: c.innerText.replace(/\\s+/g, ' ').trim(), wrong: c.classList.contains('advlib-explorer-wrong')})),
  adversarial: Array.from(root.querySelectorAll('img.advlib-explorer-adv')).map(i => i.getAttribute('src')),
  perturbation: Array.from(root.querySelectorAll('img.advlib-explorer-pert')).map(i => i.getAttribute('src')),
  alts: Array.from(root.querySelectorAll('img')).map(i => i.alt),
  marker: ['cx', 'cy'].map(a => +root.querySelector('.advlib-explorer-marker').getAttribute(a)),
})"""


def expected_view(ex: E.EpsExplorer, eps: float) -> dict:
    """What the page must show at eps: explorer.state(eps), formatted as the live widget formats it."""
    s = ex.state(eps)
    f = E.frame(ex, s)
    return {
        "readout": f"{s['eps']:.3f}",
        "status": (f"ε = {s['eps']:.3f} normalized (= {s['eps_pixel']:.4f} in [0, 1] pixel units) · adversarial "
                   f"accuracy {s['adv_accuracy']:.2f}% · ASR {s['asr']:.2f}% on {s['n']} images"),
        "preds": "predicted: " + " · ".join(f"{p} ({c:.0f}%)" for p, c in zip(s["preds"], s["confidences"])),
        "captions": [{"text": f"true {t} → {p} ({c:.0f}%)", "wrong": p != t}
                     for t, p, c in zip(s["labels"], s["preds"], s["confidences"])],
        "adversarial": f["adversarial"], "perturbation": f["perturbation"], "marker": f["marker"],
    }


def mismatches(view: dict, want: dict) -> list[str]:
    bad = [f"{key}: shown {view[key]!r}, expected {want[key]!r}" for key in ("readout", "status", "preds", "captions")
           if view[key] != want[key]]
    bad += [f"{key} images differ at positions {[k for k, (a, b) in enumerate(zip(view[key], want[key])) if a != b]}"
            for key in ("adversarial", "perturbation") if view[key] != want[key]]
    if view["marker"] != pytest.approx(want["marker"], abs=0.05):
        bad.append(f"curve marker at {view['marker']}, expected {want['marker']}")
    if not all(view["alts"]):
        bad.append("an image has no alt text")
    return bad


def check_position(page, root, ex: E.EpsExplorer, when: str, index: int | None = None) -> int:
    view = page.evaluate(_JS_VIEW, root)
    if index is not None:
        assert view["index"] == index, f"{when}: the slider is at position {view['index']}, expected {index}"
    assert view["sliderVisible"], f"{when}: the slider is hidden (did the script run?)"
    bad = mismatches(view, expected_view(ex, ex.eps_grid[view["index"]]))
    assert not bad, f"{when} (ε = {ex.eps_grid[view['index']]}), the page differs from explorer.state:\n  " + \
        "\n  ".join(bad)
    return view["index"]


def drag_to(page, slider, fraction: float) -> None:
    """Press on the slider's thumb and drag it to `fraction` of the track with the mouse."""
    box = slider.bounding_box()
    value = int(slider.input_value())
    maximum = int(slider.get_attribute("max"))
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * value / maximum, y)
    page.mouse.down()
    for step in range(1, 6):  # a drag is a series of moves
        x0 = box["x"] + box["width"] * value / maximum
        page.mouse.move(x0 + (box["width"] * fraction - (x0 - box["x"])) * step / 5, y)
    page.mouse.up()


@pytest.fixture(scope="module")
def page_file(explorer, tmp_path_factory) -> Path:
    return write_page(tmp_path_factory.mktemp("html_report") / "explorer.html", E.standalone_html(explorer))


def test_standalone_slider_offline_by_keyboard_and_drag(browser, explorer, page_file):
    distinct = {(round(a, 6)) for a in explorer.accuracy_curve}
    assert len(distinct) >= 3, f"the model is too flat for a meaningful test: accuracies {sorted(distinct)}"
    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    page = browser.open(page_file.as_uri(), VIEWPORTS["desktop"])
    root = page.locator(".advlib-explorer").element_handle()
    slider = page.locator(".advlib-explorer-slider input")
    browser.check("after opening the page")
    check_position(page, root, explorer, "on opening", explorer.snap(INITIAL_EPS))
    page.screenshot(path=str(ARTIFACT_DIR / "desktop-1280x800-initial.png"))

    slider.focus()
    for key, index in KEY_MOVES:
        page.keyboard.press(key)
        check_position(page, root, explorer, f"after pressing {key}", index)
    browser.check("after the keyboard moves")

    seen = set()
    for fraction in DRAG_TO:
        drag_to(page, slider, fraction)
        index = check_position(page, root, explorer, f"after dragging to {fraction:.0%} of the track")
        want = fraction * (len(explorer.eps_grid) - 1)
        assert abs(index - want) <= 2, f"dragging to {fraction:.0%} of the track left the slider at {index}"
        seen.add(index)
    assert len(seen) == len(DRAG_TO)
    page.screenshot(path=str(ARTIFACT_DIR / "desktop-1280x800-dragged.png"), full_page=True)
    browser.check("after dragging")

    phone = browser.open(page_file.as_uri(), VIEWPORTS["phone"])
    phone_root = phone.locator(".advlib-explorer").element_handle()
    phone.locator(".advlib-explorer-slider input").focus()
    phone.keyboard.press("PageUp")
    check_position(phone, phone_root, explorer, "on a phone-width screen after PageUp")
    width = phone.evaluate("() => document.documentElement.scrollWidth")
    assert width <= VIEWPORTS["phone"][0], f"the page scrolls sideways on a phone: {width} px wide"
    phone.screenshot(path=str(ARTIFACT_DIR / "phone-390x844.png"), full_page=True)
    browser.check("on the phone-width page")


def test_wrong_precomputed_data_is_caught(browser, explorer, tmp_path, monkeypatch):
    """The comparison fails when one precomputed accuracy is off: the page test cannot pass on wrong data."""
    index = explorer.snap(INITIAL_EPS) + 1
    real = E.standalone_data

    def corrupted(ex):
        data = real(ex)
        data["frames"][index]["adv_accuracy"] += 100.0 / len(ex.x)  # one image more than the truth
        return data

    monkeypatch.setattr(E, "standalone_data", corrupted)
    page = browser.open(write_page(tmp_path / "wrong.html", E.standalone_html(explorer)).as_uri(),
                        VIEWPORTS["desktop"])
    root = page.locator(".advlib-explorer").element_handle()
    page.locator(".advlib-explorer-slider input").focus()
    page.keyboard.press("ArrowRight")
    view = page.evaluate(_JS_VIEW, root)
    assert view["index"] == index
    bad = mismatches(view, expected_view(explorer, explorer.eps_grid[index]))
    assert any(b.startswith("status") for b in bad), bad
    browser.check("on the corrupted page")


def report_notebook(ex: E.EpsExplorer, executed: bool = True):
    """A small narrative notebook as papermill leaves it: a hidden-source figure cell and the explorer's display
    output (the mimebundle the kernel sends), with the widget state nbclient saves."""
    import nbformat.v4 as nbf

    bundle = ex._repr_mimebundle_()
    model_id = bundle["application/vnd.jupyter.widget-view+json"]["model_id"]
    figure = nbf.new_code_cell("show_the_figure_SOURCE_MARKER()", metadata={"tags": [html_report.HIDE_INPUT_TAG]},
                               execution_count=1 if executed else None)
    shown = nbf.new_code_cell("explorer", execution_count=2 if executed else None)
    if executed:
        figure.outputs = [nbf.new_output("display_data", data={"image/png": bundle["image/png"]})]
        shown.outputs = [nbf.new_output("execute_result", data=bundle, execution_count=2)]
    state = {"state": {model_id: {"model_name": "VBoxModel", "state": {}}}, "version_major": 2, "version_minor": 0}
    return nbf.new_notebook(cells=[nbf.new_markdown_cell("# A report\n\nSome text."), figure, shown],
                            metadata={"widgets": {"application/vnd.jupyter.widget-state+json": state}})


def test_exported_notebook_has_a_working_slider_offline(browser, explorer, tmp_path):
    import nbformat

    notebook = tmp_path / "report.ipynb"
    nbformat.write(report_notebook(explorer), notebook)
    out = html_report.export_html(notebook, tmp_path / "site" / "index.html")
    text = out.read_text(encoding="utf-8")
    assert out.stat().st_size < html_report.MAX_BYTES
    assert "SOURCE_MARKER" not in text, "the source of a cell tagged remove-input is in the page"
    assert not re.search(r'class="jp-(In|Out)putPrompt', text), "the page shows In/Out prompts"
    assert "<script src" not in text and "widget-view+json" not in text
    assert text.count("data:image/png;base64,") >= 1 + 3 * N_SHOW  # the figure and the explorer's images
    page = browser.open(out.as_uri(), VIEWPORTS["desktop"])
    root = page.locator(".advlib-explorer").element_handle()
    assert root is not None, "the exported page shows no kernel-free explorer (.advlib-explorer)"
    check_position(page, root, explorer, "on opening the exported page", explorer.snap(INITIAL_EPS))
    page.locator(".advlib-explorer-slider input").focus()
    for key, index in KEY_MOVES[:3]:
        page.keyboard.press(key)
        check_position(page, root, explorer, f"on the exported page after pressing {key}", index)
    page.screenshot(path=str(ARTIFACT_DIR / "exported-notebook-1280x800.png"), full_page=True)
    browser.check("on the exported page")


def test_export_refuses_an_unexecuted_notebook(explorer, tmp_path):
    import nbformat

    notebook = tmp_path / "source.ipynb"
    nbformat.write(report_notebook(explorer, executed=False), notebook)
    with pytest.raises(html_report.NotExecutedError, match="not been executed"):
        html_report.export_html(notebook, tmp_path / "index.html")
    assert not (tmp_path / "index.html").exists()


@pytest.mark.parametrize("report_page, metrics, link", report_pages())
def test_report_page_slider(browser, report_page, metrics, link):
    page = browser.open(report_page.as_uri(), VIEWPORTS["desktop"])
    browser.check("after opening the report page")
    root = page.locator(".advlib-explorer").first.element_handle()
    assert root is not None, "the report page has no ε explorer (.advlib-explorer)"
    data = json.loads(page.evaluate("(r) => r.querySelector('script.advlib-explorer-data').textContent", root))
    curve = {}
    if metrics.exists():
        section = json.loads(metrics.read_text()).get("visual", {}).get("explorer_curve")
        if section:
            curve = dict(zip((round(e, 6) for e in section["eps"]), section["adv_accuracy"]))
    slider = page.locator(".advlib-explorer-slider input").first
    slider.focus()
    for key in ("Home", "PageUp", "End"):
        page.keyboard.press(key)
        view = page.evaluate(_JS_VIEW, root)
        f = data["frames"][view["index"]]
        want = (f"ε = {f['eps']:.3f} normalized (= {f['eps_pixel']:.4f} in [0, 1] pixel units) · adversarial "
                f"accuracy {f['adv_accuracy']:.2f}% · ASR {f['asr']:.2f}% on {data['n']} images")
        assert view["status"] == want, f"after {key}: shown {view['status']!r}, embedded data says {want!r}"
        if round(f["eps"], 6) in curve:  # the same model and images as the visual stage: the same accuracy
            assert f["adv_accuracy"] == pytest.approx(curve[round(f["eps"], 6)], abs=100.0 / data["n"]), \
                f"after {key}: the page's accuracy differs from metrics.json's visual.explorer_curve"
    page.screenshot(path=str(ARTIFACT_DIR / f"report-index-{report_page.parent.name}.png"))
    browser.check("on the report page")


@pytest.mark.parametrize("report_page, metrics, link", report_pages())
def test_report_pages_link_to_each_other(browser, report_page, metrics, link):
    """MNIST's page links to Fashion-MNIST's (fashion_mnist/index.html) and back (../index.html); the link's
    target is committed, and following it offline opens the other page with its slider."""
    page = browser.open(report_page.as_uri(), VIEWPORTS["desktop"])
    anchor = page.locator(f'a[href="{link}"]')
    assert anchor.count() >= 1, f"{report_page.relative_to(REPO_ROOT)} has no link to {link}"
    target = (report_page.parent / link).resolve()
    assert target.is_file(), (f"{report_page.relative_to(REPO_ROOT)} links to {link}, which does not exist: publish "
                              "both data sets' reports (make report; make report CONFIG=\"dataset=fashion_mnist\")")
    with page.expect_navigation(wait_until="load"):
        anchor.first.click()
    assert page.url == target.as_uri(), f"following {link} opened {page.url}"
    assert page.locator(".advlib-explorer").count() >= 1, f"{target.relative_to(REPO_ROOT)} shows no ε explorer"
    browser.check(f"after following {link}")
