"""The executed narrative notebook as one self-contained HTML page: every figure embedded, readable offline.

``python -m study.html_report NOTEBOOK OUT`` (or :func:`export_html`) converts an executed notebook with nbconvert's
JupyterLab template and:
- hides the source of cells tagged ``remove-input`` (nbconvert's TagRemovePreprocessor; ``remove-cell`` and
  ``remove-output`` work too) and every In/Out prompt, so the page reads like a report;
- drops the saved ipywidgets state, so that nbconvert shows each widget output's ``text/html`` instead (it renders a
  ``application/vnd.jupyter.widget-view+json`` output only when its widget state is saved, and would then load the
  widget renderer from a CDN): the eps explorer's output carries its kernel-free slider there
  (:func:`advlib.explorer.standalone_html`);
- loads no script, style or font from the network (the template's require.js, MathJax, mermaid and widget CDN
  tags are left out, and the result is checked for any remote resource);
- refuses a notebook that has not been executed, and a page of :data:`MAX_BYTES` or more.
The page is written atomically.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from advlib.io import atomic_write_bytes
from study.workflow import skip_iri_format_checker

MAX_BYTES = 5 * 1024 * 1024  # a page to e-mail or commit, not a data dump
HIDE_INPUT_TAG = "remove-input"

# The lab template without anything it would fetch from a CDN, plus a readable width for the report's text.
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style type="text/css">
main { max-width: 1100px; margin: 0 auto; padding: 12px; }
.jp-RenderedImage img, .jp-RenderedMarkdown img { max-width: 100%; height: auto; }
.jp-RenderedHTMLCommon table { display: block; overflow-x: auto; }
</style>
{%- endblock extra_css -%}
{% block data_png scoped %}
<div class="jp-RenderedImage jp-OutputArea-output {{ extra_class }}">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}"
 alt="{{ (output.metadata.get('image/png', {}).get('alt') or output.metadata.get('alt') or 'Figure') | escape_html }}">
</div>
{%- endblock data_png %}
"""

# A tag or CSS rule that makes the browser fetch something (links the reader may follow are fine).
_REMOTE = re.compile(r"<(?:script|img|link|iframe|source|video|audio)\b[^>]*\b(?:src|href)\s*=\s*[\"']?\s*"
                     r"(?:https?:)?//|@import|url\(\s*[\"']?\s*(?:https?:)?//", re.I)


class NotExecutedError(ValueError):
    """The notebook's code cells have not all run: there is nothing (or only part of the report) to show."""


def check_executed(nb) -> None:
    """Raise NotExecutedError unless every non-empty code cell of the nbformat notebook has run."""
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    not_run = [i for i, c in enumerate(nb.cells) if c in code and c.get("execution_count") is None]
    if not code or not_run:
        raise NotExecutedError(
            f"the notebook has not been executed ({len(not_run)} of {len(code)} code cells never ran, first: cell "
            f"{not_run[0] if not_run else '-'}): export the executed copy that `make report` writes, or run it "
            "first with papermill")


def _title(nb, default: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, re.M)
            if m:
                return m.group(1).strip()
    return default


def render_html(notebook: Path, dataset: str | None = None) -> str:
    """The page's HTML (see the module docstring); raises NotExecutedError for an unexecuted notebook. ``dataset``
    names the page's data set in its title."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb = nbformat.read(notebook, as_version=4)
    check_executed(nb)
    nb.metadata.pop("widgets", None)  # no saved widget state: widget outputs fall back to their text/html
    exporter = HTMLExporter(template_name="lab", exclude_input_prompt=True, exclude_output_prompt=True,
                            embed_images=True, extra_loaders=[jinja2.DictLoader({"advlib_report.html.j2": _TEMPLATE})],
                            template_file="advlib_report.html.j2")
    exporter.register_preprocessor(
        TagRemovePreprocessor(remove_input_tags={HIDE_INPUT_TAG}, remove_cell_tags={"remove-cell", "injected-parameters"},
                              remove_all_outputs_tags={"remove-output"}, enabled=True), enabled=True)
    title = _title(nb, Path(notebook).stem)
    if dataset is not None:
        from advlib.data import dataset_info

        title = f"{title} — {dataset_info(dataset).title}"
    resources = {"metadata": {"name": title, "path": str(Path(notebook).parent)}}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    remote = _REMOTE.search(body)
    if remote:
        raise RuntimeError(f"the page would fetch a remote resource ({remote.group(0)[:120]!r}); it must work "
                           "offline: embed it instead")
    return body


def export_html(notebook: Path, out: Path, dataset: str | None = None) -> Path:
    """Write the executed notebook as a self-contained HTML page at out (atomically); returns out.

    Raises NotExecutedError when the notebook has not been executed, ValueError when the page would reach
    MAX_BYTES."""
    data = render_html(Path(notebook), dataset).encode("utf-8")
    if len(data) >= MAX_BYTES:
        raise ValueError(f"the page would be {len(data) / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB limit: "
                         "save smaller figures (dpi) or fewer outputs in the notebook")
    return atomic_write_bytes(out, data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.html_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", type=Path, help="the executed notebook, e.g. report/06_report.ipynb")
    parser.add_argument("out", type=Path, help="the page to write, e.g. report/index.html")
    parser.add_argument("--dataset", help="the report's data set, named in the page's title")
    args = parser.parse_args(argv)
    skip_iri_format_checker()
    try:
        out = export_html(args.notebook, args.out, args.dataset)
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
