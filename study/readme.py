"""Regenerate the README's results section from figures/metrics.json (and the benchmark table), with a column for
each other data set's published metrics (figures/fashion_mnist/metrics.json).

The README carries generated blocks between markers, e.g.::

    <!-- results:start -->  ... generated ...  <!-- results:end -->

``python -m study.readme`` rewrites them; the report command runs it last, and a test checks that the committed
README matches what the committed metrics produce, so no number in it is typed by hand.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from advlib.io import atomic_write_bytes
from study.results import load_metrics
from study.tables import comparison_table, dataset_of

ROOT = Path(__file__).resolve().parents[1]


def other_datasets(root: str | Path = ROOT) -> list[tuple[str, dict]]:
    """[(title, metrics)] of every data set besides MNIST whose report is published (figures/<name>/metrics.json)."""
    from advlib.data import DATASETS
    from study.workflow import DEFAULT_DATASET

    out = []
    for name, info in DATASETS.items():
        path = Path(root) / "figures" / name / "metrics.json"
        if name != DEFAULT_DATASET and path.is_file():
            out.append((info.title, json.loads(path.read_text())))
    return out


def both_metrics(root: str | Path, dataset: str, run_metrics: dict) -> tuple[dict, list[tuple[str, dict]]]:
    """What the README shows when a run of ``dataset`` publishes: (MNIST's metrics, [(title, metrics)] of the other
    data sets), the run's own metrics in their place, the published ones for the rest."""
    from study.workflow import DEFAULT_DATASET

    others = other_datasets(root)
    if dataset == DEFAULT_DATASET:
        return run_metrics, others
    from advlib.data import dataset_info

    title = dataset_info(dataset).title
    mnist = load_metrics(Path(root) / "figures" / "metrics.json", require=("training", "sweep", "confidence"))
    return mnist, [(t, run_metrics if t == title else m) for t, m in others] + (
        [] if any(t == title for t, _ in others) else [(title, run_metrics)])


def results_block(metrics: dict, others: list[tuple[str, dict]] = ()) -> str:
    """The headline table (shared with the narrative) and a note on units, samples and seeds."""
    sw, ss = metrics["sweep"], metrics.get("seed_study")
    note = ("ε in normalized units (images in [-1, 1]); px = the same ε in [0, 1] pixel units. Each row names its "
            f"images: the FGSM sweep's are the first {sw['n_samples']:,} correctly classified test images, as in the "
            "original report; robust accuracy (the robust model's column, PGD, AutoAttack) is on the first test "
            "images, unfiltered, as AutoAttack and RobustBench count (a clean mistake counts as a failure). "
            f"Brackets: 95% Wilson interval. This run: seed {metrics['training']['parameters']['seed']}.")
    if ss:
        note += (f" The seeds column repeats training and the sweep for {len(ss['seeds'])} seeds (`make seeds`): "
                 "FGSM accuracy varies far more from seed to seed (and from machine to machine) than the Wilson "
                 "interval of one run suggests, so judge a re-run against the seeds column.")
        if "per_seed_recalibrated_test_accuracy" in ss:
            ev, rc = ss["per_seed_test_accuracy"], ss["per_seed_recalibrated_test_accuracy"]
            note += (f" Clean accuracy in eval mode ranges from {min(ev):.2f}% to {max(ev):.2f}% over the seeds; with "
                     f"BatchNorm's statistics recomputed on the first {ss['bn_calibration_images']:,} training images "
                     f"(weights untouched) every seed lands between {min(rc):.2f}% and {max(rc):.2f}%: the low seeds' "
                     "running averages lag their weights, which the recipe (Adam at lr 0.01) moves quickly.")
    rb = metrics.get("robustness")
    if rb:
        from study.tables import checklist_table
        sn = rb["sanity"]["numbers"]["n"]
        note += (" AutoAttack: the standard ensemble (APGD-CE, APGD-T, FAB-T, Square), `make robust`; its sanity "
                 f"checks (Carlini et al. 2019) on the robust model at ε = {rb['sanity']['eps']:g}, on the first "
                 f"{sn:,} test images, unfiltered; each check names its tolerance (1.5 pp at n = 1,000, scaled as "
                 "1/√n):\n\n" + checklist_table(rb["sanity"]["checks"]))
        aa_seconds = sum(p["seconds"] for rows in rb["autoattack"].values() for r in rows for p in r["per_attack"])
        ab = rb.get("ablation") or {}
        took = (f"\n\nThe committed `make robust` took {aa_seconds / 3600:.1f} h of AutoAttack job time (summed over "
                "its parallel jobs)")
        if ab.get("rows"):
            from study.ablation_eval import PUBLISHED
            from study.tables import capacity_summary

            note += "\n\n**At the field's threat model (0.3 px).** " + capacity_summary(ab, PUBLISHED)
            cap_seconds = sum(r["train_seconds"] + r["aa_seconds"] for r in ab["rows"])
            took += (f" and {cap_seconds / 3600:.1f} h for the capacity study's {len(ab['rows'])} runs (training and "
                     f"AutoAttack, {len(ab['configs'])} configurations)")
        note += took + ", on this project's 2-core machine, several jobs sharing it."
        if not rb.get("current_models", True):
            note += "\n\n(The robustness results were computed with other settings than the report's: re-run `make robust`.)"
    other_title, other = others[0] if others else (None, None)  # the table has room for one more data set
    if other:
        note += (f"\n\nThe {other_title} column: the same recipe and attacks on {other_title} (`make report "
                 f"CONFIG=\"dataset={dataset_of(other)}\"`, report in [report/{dataset_of(other)}/]"
                 f"(report/{dataset_of(other)}/index.html)), its standard model: seed mean ± sd where it has a seed "
                 "study, and this run's number in brackets.")
    return comparison_table(metrics, other, other_title) + "\n\n" + note


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


def render(readme_text: str, metrics: dict, bench_md: str | None, others: list[tuple[str, dict]] = ()) -> str:
    text = replace_block(readme_text, "results", results_block(metrics, others))
    if bench_md is not None and "<!-- bench:start -->" in text:
        text = replace_block(text, "bench", bench_block(bench_md))
    return text


def bench_markdown(root: str | Path = ROOT) -> str | None:
    """benchmarks/results.md under root, or None when the benchmarks have not run."""
    bench = Path(root) / "benchmarks" / "results.md"
    return bench.read_text() if bench.is_file() else None


def main(argv: list[str] | None = None) -> int:
    readme = ROOT / "README.md"
    metrics = load_metrics(ROOT / "figures" / "metrics.json", require=("training", "sweep", "confidence"))
    new = render(readme.read_text(), metrics, bench_markdown(), other_datasets())
    atomic_write_bytes(readme, new.encode())
    print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
