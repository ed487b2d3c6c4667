"""Regenerate the README's results section from figures/metrics.json (and the benchmark table).

The README carries generated blocks between markers, e.g.::

    <!-- results:start -->  ... generated ...  <!-- results:end -->

``python -m advlib.readme`` rewrites them; the report command runs it last, and a test checks that the committed
README matches what the committed metrics produce, so no number in it is typed by hand.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from advlib.io import atomic_write_bytes
from advlib.results import ORIGINAL_REPORT, fmt_rate, load_metrics, markdown_table, row_at

ROOT = Path(__file__).resolve().parents[1]


def results_block(metrics: dict) -> str:
    """The headline table: the original report vs this run vs the adversarially trained model."""
    tr, sw, cf = metrics["training"], metrics["sweep"], metrics["confidence"]
    df, ss = metrics.get("defense"), metrics.get("seed_study")
    o = ORIGINAL_REPORT
    headers = (["quantity", "original report", "this run [95% CI]"]
               + ([f"{len(ss['seeds'])} seeds, mean ± sd"] if ss else [])
               + (["robust model (adv. training)"] if df else []))

    def seeds(eps: float | None = None) -> list[str]:
        """The seed-study column: clean test accuracy (eps None) or FGSM accuracy at eps; "—" if not there."""
        if not ss:
            return []
        if eps is None:
            return [f"{ss['test_accuracy_mean']:.2f} ± {ss['test_accuracy_std']:.2f}%"]
        if eps not in ss["eps"]:
            return ["—"]
        i = ss["eps"].index(eps)
        return [f"{ss['adv_accuracy_mean'][i]:.2f} ± {ss['adv_accuracy_std'][i]:.2f}%"]

    def robust(attack: str, eps: float) -> list[str]:
        return [fmt_rate(row_at(df["curves"]["robust"][attack], eps))] if df else []

    blank = ["—"] * (bool(ss) + bool(df))
    rows = [["clean test accuracy (10,000 images)", f"{o['test_accuracy']:.2f}%", f"{tr['test_accuracy']:.2f}%"]
            + seeds() + ([f"{df['clean_test_accuracy']['robust']:.2f}%"] if df else [])]
    for eps, value in o["adv_accuracy"].items():
        r = row_at(sw["rows"], eps)
        rows.append([f"FGSM accuracy, ε = {eps} ({r['eps_pixel']:.3f} px)", f"{value:.2f}%",
                     fmt_rate(r["adv_accuracy"])] + seeds(eps) + robust("fgsm", eps))
    if df:
        e = max(df["parameters"]["eps_grid"])
        rows.append([f"PGD-{df['parameters']['pgd_steps']} accuracy, ε = {e} ({e / 2:.3f} px)", "—",
                     fmt_rate(row_at(df["curves"]["standard"]["pgd"], e))] + (["—"] if ss else []) + robust("pgd", e))
    rows.append([f"mean confidence at ε = {cf['focus_eps']}, clean → FGSM", f"{o['clean_confidence']:.1f}% → "
                 f"{o['adv_confidence']:.1f}%", f"{cf['clean_confidence']:.1f}% → {cf['adv_confidence']:.1f}%"] + blank)
    rows.append([f"confidence as attack detector at ε = {cf['focus_eps']}: ROC AUC / TPR at 5% FPR",
                 "\"cannot threshold\"", f"{cf['detector']['auc']:.3f} / {cf['detector']['tpr_at_5fpr']:.1f}%"]
                + blank)
    note = ("ε in normalized units (images in [-1, 1]); px = the same ε in [0, 1] pixel units. FGSM rows: the first "
            f"{sw['n_samples']:,} correctly classified test images, as in the original report; brackets: 95% Wilson "
            f"interval. Seed {tr['parameters']['seed']}.")
    if ss:
        note += (f" The seeds column repeats training and the sweep for seeds {', '.join(map(str, ss['seeds']))} "
                 "(`make seeds`): FGSM accuracy varies far more from seed to seed than the Wilson interval of one run "
                 "suggests.")
    return markdown_table(headers, rows) + "\n\n" + note


def replace_block(text: str, name: str, content: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(\n<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no <!-- {name}:start --> ... <!-- {name}:end --> block")
    return pattern.sub(lambda m: m.group(1) + content + m.group(2), text)


def bench_block(bench_md: str) -> str:
    """The README's share of benchmarks/results.md: its machine line and its table of targets."""
    machine = next((line for line in bench_md.splitlines() if line.startswith("Machine:")), "")
    match = re.search(r"^## Targets\n(.*?)(?=^## |\Z)", bench_md, re.S | re.M)
    table = match.group(1).strip() if match else "(no targets table in benchmarks/results.md)"
    return f"{table}\n\n{machine}\nEverything measured, with the spreads: [benchmarks/results.md](benchmarks/results.md)."


def render(readme_text: str, metrics: dict, bench_md: str | None) -> str:
    text = replace_block(readme_text, "results", results_block(metrics))
    if bench_md is not None and "<!-- bench:start -->" in text:
        text = replace_block(text, "bench", bench_block(bench_md))
    return text


def main(argv: list[str] | None = None) -> int:
    readme = ROOT / "README.md"
    metrics = load_metrics(ROOT / "figures" / "metrics.json", require=("training", "sweep", "confidence"))
    bench = ROOT / "benchmarks" / "results.md"
    new = render(readme.read_text(), metrics, bench.read_text() if bench.is_file() else None)
    atomic_write_bytes(readme, new.encode())
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
