"""The study's tables and summaries, in markdown, from the numbers in metrics.json and the result files.

Every table names its images and its ε in both units (normalized, and [0, 1] pixels via
:func:`advlib.attacks.to_pixel_eps`); rates carry their 95% Wilson interval (:func:`fmt_rate`).
"""
from __future__ import annotations

import numpy as np

from advlib.attacks import to_pixel_eps
from study.results import ORIGINAL_REPORT, row_at


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table (cells are str()-ed)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_rate(r: dict, digits: int = 2) -> str:
    """A rate dict as '32.90% [30.0, 35.9]' (value and 95% Wilson interval)."""
    return f"{r['value']:.{digits}f}% [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"


def confusion_summary(cm, k: int = 3) -> dict:
    """The k most frequent off-diagonal confusions and the class that resists best, from a confusion matrix
    (rows: true label, columns: predicted). Ties go to the smaller (true, predicted) pair."""
    cm = np.asarray(cm)
    off = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    per_digit = np.diag(cm) / np.maximum(cm.sum(1), 1)
    best = int(np.argmax(per_digit))
    return {"top": [{"n": n, "true": i, "pred": j} for n, i, j in off[:k]],
            "most_robust_digit": best, "most_robust_accuracy": 100.0 * float(per_digit[best])}


def dataset_sentence(dataset: str, n_train: int, n_test: int) -> str:
    """The narrative's sentence on the data: which data set, how many images of what, and how they were checked."""
    from advlib.data import class_names, dataset_info

    info = dataset_info(dataset)
    what = ("the handwritten digits 0–9" if dataset == "mnist" else
            f"{len(info.classes)} classes ({', '.join(class_names(dataset))})")
    check = ("md5 sums of the original files" if dataset == "mnist" else
             "sizes and SHA-256 sums of the decompressed official files")
    return (f"{info.title}: {n_train:,} training and {n_test:,} test images of {what}, fetched from a verified offline "
            f"source ({check} checked).")


def dataset_of(metrics: dict) -> str:
    """The data set a metrics.json was computed on (recorded by 01_train; before the parameter existed: MNIST)."""
    return metrics["training"]["parameters"].get("dataset", "mnist")


def _other_cells(other: dict | None) -> dict:
    """Another data set's cells for the comparison table's column: per quantity, its seed study's mean ± sd with this
    run's value beside it (this run's alone where it has no seed study)."""
    if other is None:
        return {}
    tr, sw, cf, df, ss = (other["training"], other["sweep"], other["confidence"], other.get("defense"),
                          other.get("seed_study"))

    def both(seed_text: str | None, run_text: str) -> str:
        return f"{seed_text} (this run {run_text})" if seed_text else run_text

    cells = {"clean": both(ss and f"{ss['test_accuracy_mean']:.2f} ± {ss['test_accuracy_std']:.2f}%",
                           f"{tr['test_accuracy']:.2f}%")}
    if ss and "recalibrated_test_accuracy_mean" in ss:
        cells["recalibrated"] = f"{ss['recalibrated_test_accuracy_mean']:.2f} ± {ss['recalibrated_test_accuracy_std']:.2f}%"
    for r in sw["rows"]:
        i = next((i for i, e in enumerate(ss["eps"]) if abs(e - r["eps"]) < 1e-9), None) if ss else None
        seed_text = None if i is None else f"{ss['adv_accuracy_mean'][i]:.2f} ± {ss['adv_accuracy_std'][i]:.2f}%"
        cells[("fgsm", r["eps"])] = both(seed_text, f"{r['adv_accuracy']['value']:.2f}%")
    if df:
        for attack in ("fgsm", "pgd"):
            for r in df["curves"]["standard"][attack]:
                cells[(f"{attack}_first", r["eps"], df["parameters"]["pgd_steps"])] = fmt_rate(r)
    cells["confidence"] = (cf["focus_eps"], f"{cf['clean_confidence']:.1f}% → {cf['adv_confidence']:.1f}%")
    cells["detector"] = (cf["focus_eps"], f"{cf['detector']['auc']:.3f} / {cf['detector']['tpr_at_5fpr']:.1f}%")
    return cells


def comparison_table(metrics: dict, other: dict | None = None, other_title: str | None = None) -> str:
    """The headline table (markdown): the original report (for MNIST, the data set it studied), this run with its
    95% Wilson interval, the seed study's mean ± sd when there is one, and the adversarially trained model. The
    README and the narrative both show this table. eps the sweep grid does not contain are left out.

    other, other_title: another data set's metrics.json and name (the README's Fashion-MNIST column): its standard
    model's numbers on the same rows, seed mean ± sd and this run's, "—" where it has none."""
    tr, sw, cf = metrics["training"], metrics["sweep"], metrics["confidence"]
    df, ss = metrics.get("defense"), metrics.get("seed_study")
    o = ORIGINAL_REPORT if dataset_of(metrics) == "mnist" else None  # the original report studied MNIST only
    oc = _other_cells(other)
    # the seed spread leads: it is what a re-run, on this machine or another, should be judged against
    headers = (["quantity"] + (["original report"] if o else []) + ([f"{len(ss['seeds'])} seeds, mean ± sd"] if ss else [])
               + ["this run [95% CI]"] + (["robust model (adv. training) [95% CI]"] if df else [])
               + ([f"{other_title}: standard model, seeds mean ± sd (this run)"] if other else []))

    def row(label: str, original: str, rest: list[str], other_key=None) -> list[str]:
        cell = oc.get(other_key, "—")
        if isinstance(cell, tuple):  # (its focus eps, text): only where it is this table's focus eps
            cell = cell[1] if abs(cell[0] - cf["focus_eps"]) < 1e-9 else "—"
        return [label] + ([original] if o else []) + rest + ([cell] if other else [])

    def seeds(eps: float | None = None) -> list[str]:
        if not ss:
            return []
        if eps is None:
            return [f"{ss['test_accuracy_mean']:.2f} ± {ss['test_accuracy_std']:.2f}%"]
        i = next((i for i, e in enumerate(ss["eps"]) if abs(e - eps) < 1e-9), None)
        return ["—"] if i is None else [f"{ss['adv_accuracy_mean'][i]:.2f} ± {ss['adv_accuracy_std'][i]:.2f}%"]

    def robust(attack: str, eps: float) -> list[str]:
        if not df:
            return []
        try:
            return [fmt_rate(row_at(df["curves"]["robust"][attack], eps))]
        except KeyError:
            return ["—"]

    n_correct = f"first {sw['n_samples']:,} correctly classified test images"
    n_first = (f"first {df['parameters']['n_samples']:,} test images, unfiltered" if df else "")
    rows = [row(f"clean test accuracy ({tr['n_test']:,} images)" if "n_test" in tr else
                "clean test accuracy (10,000 images)", f"{ORIGINAL_REPORT['test_accuracy']:.2f}%",
                seeds() + [f"{tr['test_accuracy']:.2f}%"] + ([f"{df['clean_test_accuracy']['robust']:.2f}%"] if df else []),
                "clean")]
    if ss and "recalibrated_test_accuracy_mean" in ss:  # a seed study from before it recorded them has no such row
        rows.append(row("the same, BatchNorm statistics recomputed on training images", "—",
                        [f"{ss['recalibrated_test_accuracy_mean']:.2f} ± {ss['recalibrated_test_accuracy_std']:.2f}%",
                         "—"] + (["—"] if df else []), "recalibrated"))
    for eps, value in ORIGINAL_REPORT["adv_accuracy"].items():  # the original report's eps: the headline rows
        try:
            r = row_at(sw["rows"], eps)
        except KeyError:
            continue
        rows.append(row(f"FGSM accuracy, ε = {eps} ({r['eps_pixel']:.3f} px), {n_correct}", f"{value:.2f}%",
                        seeds(eps) + [fmt_rate(r["adv_accuracy"])] + ["—"] * bool(df), ("fgsm", eps)))
    if df:
        e, k = max(df["parameters"]["eps_grid"]), df["parameters"]["pgd_steps"]
        rows.append(row(f"FGSM accuracy, ε = {e} ({to_pixel_eps(e):.3f} px), {n_first}", "—",
                        (["—"] if ss else []) + [fmt_rate(row_at(df["curves"]["standard"]["fgsm"], e))]
                        + robust("fgsm", e), ("fgsm_first", e, k)))
        rows.append(row(f"PGD-{k} accuracy, ε = {e} ({to_pixel_eps(e):.3f} px), {n_first}", "—",
                        (["—"] if ss else []) + [fmt_rate(row_at(df["curves"]["standard"]["pgd"], e))]
                        + robust("pgd", e), ("pgd_first", e, k)))
    seeds_blank, robust_blank = ["—"] * bool(ss), ["—"] * bool(df)
    rows += [row(r[0], r[1], r[2:]) for r in autoattack_rows(metrics, seeds_blank, robust_blank)]
    same_focus = o is not None and cf["focus_eps"] == o["focus_eps"]
    rows.append(row(f"mean confidence at ε = {cf['focus_eps']}, clean → FGSM",
                    f"{o['clean_confidence']:.1f}% → {o['adv_confidence']:.1f}%" if same_focus else "—",
                    seeds_blank + [f"{cf['clean_confidence']:.1f}% → {cf['adv_confidence']:.1f}%"] + robust_blank,
                    "confidence"))
    rows.append(row(f"confidence as attack detector at ε = {cf['focus_eps']}: ROC AUC / TPR at 5% FPR",
                    "\"cannot threshold\"",
                    seeds_blank + [f"{cf['detector']['auc']:.3f} / {cf['detector']['tpr_at_5fpr']:.1f}%"] + robust_blank,
                    "detector"))
    return markdown_table(headers, rows)


def autoattack_rows(metrics: dict, seeds_blank: list[str], robust_blank: list[str]) -> list[list[str]]:
    """The comparison table's AutoAttack rows (headline eps of 08_robustness), and the robust model's seed means."""
    rb, ss = metrics.get("robustness"), metrics.get("seed_study")
    rows = []
    if rb:
        aa = rb["autoattack"]
        for eps in rb["parameters"]["aa_eps"]:
            found = {m: next((r for r in aa.get(m, []) if abs(r["eps"] - eps) < 1e-9), None)
                     for m in ("standard", "robust")}
            cell = {m: "—" if r is None else fmt_rate(r["accuracy"]) for m, r in found.items()}
            n = {r["n"] for r in found.values() if r is not None}
            where = f"first {n.pop():,} test images, unfiltered" if len(n) == 1 else "n differs: see stage 8"
            rows.append([f"AutoAttack accuracy, ε = {eps:g} ({to_pixel_eps(eps):g} px), {where}", "—"] + seeds_blank
                        + [cell["standard"]] + ([cell["robust"]] if robust_blank else []))
    rs = (ss or {}).get("robust")
    if rs and robust_blank:
        rows.append([f"robust model over {len(rs['seeds'])} seeds, ε = {rs['eps']:g}: PGD-{rs['pgd_steps']} "
                     f"(first {rs['n']:,} test images)", "—"] + seeds_blank + ["—"]
                    + [f"{rs['pgd']['mean']:.1f} ± {rs['pgd']['std']:.1f}%"])
        rows.append([f"robust model over {len(rs['seeds'])} seeds, ε = {rs['eps']:g}: APGD-CE → APGD-T "
                     f"(first {rs['aa_samples']:,} test images)", "—"] + seeds_blank + ["—"]
                    + [f"{rs['aa']['mean']:.1f} ± {rs['aa']['std']:.1f}%"])
    return rows


def autoattack_table(aa: dict, curves: dict | None = None, eps: list[float] | None = None) -> str:
    """Markdown: per eps (normalized and px) of ``eps`` (default: every eps of ``aa``), each model's AutoAttack
    accuracy [95% CI], beside its FGSM and PGD accuracy from 05_defense's ``curves`` ({model: {"fgsm", "pgd": rows}})
    when given. One table, one n: every number in it is on the same images, whose count the header states (a
    ValueError names the cells that are not); a grid on fewer images is its own table, never set beside this one."""
    models = [m for m in ("standard", "robust") if m in aa] + sorted(set(aa) - {"standard", "robust"})
    all_eps = sorted({r["eps"] for m in models for r in aa[m]}) if eps is None else sorted(eps)
    cells: dict[tuple, dict] = {}
    for e in all_eps:
        for m in models:
            for attack in ("fgsm", "pgd") if curves is not None else ():
                try:
                    cells[(e, m, attack)] = row_at(curves[m][attack], e)
                except KeyError:
                    pass
            r = next((r for r in aa[m] if abs(r["eps"] - e) < 1e-9), None)
            if r is not None:
                cells[(e, m, "aa")] = r["accuracy"]
    sizes = {c["n"] for (_, _, a), c in cells.items() if a == "aa"}
    if len(sizes) > 1:
        raise ValueError("a table mixes sample sizes " + ", ".join(
            f"{m} AutoAttack at eps {e:g}: n = {c['n']}" for (e, m, a), c in sorted(cells.items()) if a == "aa"))
    note = ""
    other = sorted({c["n"] for (_, _, a), c in cells.items() if a != "aa"} - sizes)
    if other and sizes:  # curves of a run on other images (a small run beside the committed results): left out
        cells = {k: c for k, c in cells.items() if k[2] == "aa" or c["n"] in sizes}
        note = (f" Stage 5's FGSM and PGD curves of this run are on n = {', '.join(f'{k:,}' for k in other)} "
                "images, not these: they are left out.")
    sizes = sizes or {c["n"] for c in cells.values()}
    n = f"n = {sizes.pop():,}" if sizes else "no results"
    headers = ["ε (normalized)", "ε (px)"]
    for m in models:
        headers += ([f"{m}: FGSM", f"{m}: PGD"] if curves is not None else []) + [f"{m}: AutoAttack [95% CI]"]
    rows = []
    for e in all_eps:
        row = [f"{e:g}", f"{to_pixel_eps(e):g}"]
        for m in models:
            for attack in ("fgsm", "pgd", "aa") if curves is not None else ("aa",):
                c = cells.get((e, m, attack))
                row.append("—" if c is None else (fmt_rate(c, 1) if attack == "aa" else f"{c['value']:.1f}%"))
        rows.append(row)
    return f"All on the same {n} images.{note}\n\n" + markdown_table(headers, rows)


def per_attack_table(result: dict) -> str:
    """Markdown: which attack of the ensemble broke how many images first (and what it cost) in one result."""
    rows = [["clean mistakes", "—", str(result["n"] - result["clean"]), "—"]]
    rows += [[r["attack"], f"{r['attacked']:,}", f"{r['broke']:,}", f"{r['seconds']:.0f}"] for r in result["per_attack"]]
    rows.append(["still correct (robust)", "—", f"{result['robust']:,} of {result['n']:,}", "—"])
    return markdown_table(["attack (in order)", "images attacked", "broken first by it",
                           "seconds (wall time of its jobs)"], rows)


def checklist_table(rows: list[dict]) -> str:
    """Markdown of :func:`study.sanity.checklist` rows (each check names its tolerance)."""
    return markdown_table(["check (Carlini et al. 2019)", "numbers", "verdict"],
                          [[r["check"], r["numbers"], "passed" if r["passed"] else "**FAILED**"] for r in rows])


def ablation_rows(runs: list[dict]) -> list[dict]:
    """One row per (configuration, seed) of the 0.3 px capacity study (study.results.load_ablation's "runs"):
    its description, parameters, clean test accuracy and AutoAttack accuracy (rate dicts), the kept epoch, the
    per-epoch curves (clean test accuracy, held-out check accuracy, training loss), training and AutoAttack
    seconds (over all the images it was attacked on), its status ("trained", "overfit", "collapsed" or
    "diverged": study.ablation_eval.status, read from its curves) and, for a run of ablation_whole, "whole":
    AutoAttack over the whole test set (else None)."""
    from study.ablation_eval import describe, status

    out = []
    for r in runs:
        h = r["history"]
        out.append({"name": r["name"], "seed": r["seed"], "label": describe(r["spec"]), "spec": r["spec"],
                    "parameters": r["parameters"], "clean": r["clean"], "autoattack": r["autoattack"]["accuracy"],
                    "eps": r["autoattack"]["eps"], "kept_epoch": h["kept_epoch"], "epochs": len(h["epoch_loss"]),
                    "test_curve": h["test_accuracy"], "check_curve": h["check_accuracy"], "loss_curve": h["epoch_loss"], "train_curve": h["train_accuracy"],
                    "train_seconds": sum(h["seconds"]),
                    "aa_seconds": sum(p["seconds"] for p in (r.get("whole") or r["autoattack"])["per_attack"]),
                    "status": status(h, r["clean"]["value"]),
                    "per_attack": r["autoattack"]["per_attack"], "whole": r.get("whole")})
    return out


def ablation_configs(rows: list[dict]) -> list[dict]:
    """The rows grouped by configuration, in order: seeds, parameters, and over its seeds that neither diverged nor
    collapsed the mean ± sd of clean and AutoAttack accuracy (study.results.mean_sd; None when none is left)."""
    from study.results import mean_sd

    out = {}
    for r in rows:
        out.setdefault(r["name"], []).append(r)
    configs = []
    for name, rs in out.items():
        ok = [r for r in rs if r["status"] not in FAILED]
        configs.append({"name": name, "label": rs[0]["label"], "parameters": rs[0]["parameters"],
                        "seeds": [r["seed"] for r in rs], "failed": [r["seed"] for r in rs if r not in ok],
                        "clean": mean_sd([r["clean"]["value"] for r in ok]) if ok else None,
                        "autoattack": mean_sd([r["autoattack"]["value"] for r in ok]) if ok else None,
                        "train_seconds": mean_sd([r["train_seconds"] for r in rs])})
    return configs


def best_run(rows: list[dict]) -> dict:
    """The run with the highest AutoAttack accuracy."""
    return max(rows, key=lambda r: r["autoattack"]["value"])


def ablation_table(rows: list[dict]) -> str:
    """Markdown: one line per run of the capacity study (diverged runs say so)."""
    def curve(values: list[float]) -> str:
        return " → ".join(f"{v:.0f}" for v in values)

    return markdown_table(
        ["configuration", "seed", "parameters", "clean test accuracy (10,000)", "AutoAttack [95% CI]",
         "held-out check by epoch (%)", "kept epoch", "training (min)", "status"],
        [[f"`{r['name']}`: {r['label']}", r["seed"], f"{r['parameters']:,}", f"{fmt_rate(r['clean'])}",
          fmt_rate(r["autoattack"], 1), curve(r["check_curve"]), f"{r['kept_epoch']} of {r['epochs']}",
          f"{r['train_seconds'] / 60:.1f}", STATUS_WORDS[r["status"]]]
         for r in rows])


STATUS_WORDS = {"trained": "trained", "diverged": "**diverged**", "collapsed": "**collapsed in eval mode**",
                "overfit": "**catastrophic overfitting**"}
FAILED = ("diverged", "collapsed")  # never capacity points
# A kept epoch whose held-out check stands more than this many points above AutoAttack had its gradients masked for
# the check's attack. The check is one attack on other images, so some gap is expected: 7.5 to 18.5 points on the
# runs of Wong et al.'s network that trained (the grid of December 2026), 27 to 91 on the SmallResNet runs that
# Square or APGD broke far below their check.
CHECK_GAP = 20.0


def _fate(row: dict) -> str:
    """What went wrong in a run, in plain words ("" for one that trained)."""
    return "" if row["status"] == "trained" else STATUS_WORDS[row["status"]].strip("*")


def diverged_curves(rows: list[dict]) -> str:
    """Markdown: the per-epoch curves of every run that diverged or overfit catastrophically (clean test accuracy,
    held-out check, training loss, accuracy on its own training batches), or a sentence saying that none did."""
    bad = [r for r in rows if r["status"] != "trained"]
    if not bad:
        return "No run diverged or overfit catastrophically."
    return "\n".join(f"- `{r['name']}` seed {r['seed']} ({r['label']}) {STATUS_WORDS[r['status']]}: clean test accuracy by epoch "
                     + " → ".join(f"{v:.1f}%" for v in r["test_curve"]) + "; held-out check "
                     + " → ".join(f"{v:.1f}%" for v in r["check_curve"]) + "; training loss "
                     + " → ".join(f"{v:.2f}" for v in r["loss_curve"]) + "; accuracy on its own training batches "
                     + " → ".join(f"{v:.0f}%" for v in r["train_curve"]) + "." for r in bad)


def anchor_table(released: dict | None, configs: list[dict], published: list[dict]) -> str:
    """Markdown: the published anchors, Wong et al.'s released model under this harness (first images and the
    whole evaluated set, beside the official driver where it ran), and their recipe retrained here."""
    rows = [[f"{p['label']}", "published (AutoAttack paper, 10,000 images)", f"{p['parameters']:,}",
             f"{p['clean']:.2f}%", f"{p['autoattack']:.2f}%"] for p in published]
    if released:
        first, whole, off = released["first"], released["autoattack"], released.get("official")
        rows.append(["Wong et al.'s released model", f"reproduced here, first {first['n']:,} test images"
                     + (f" (official driver: {off['robust'] / off['n'] * 100:.2f}%, the same verdict on "
                        f"{off['agree']:,} of {off['n']:,} images)" if off else ""),
                     f"{released['model']['parameters']:,}", fmt_rate(released["clean"]), fmt_rate(first["accuracy"])])
        if whole["n"] > first["n"]:
            rows.append(["Wong et al.'s released model", f"reproduced here, first {whole['n']:,} test images",
                         f"{released['model']['parameters']:,}", fmt_rate(released["clean"]),
                         fmt_rate(whole["accuracy"])])
    for c in configs:
        if c["name"] == "cnn" and c["autoattack"]:
            rows.append([f"their recipe retrained here (`cnn`, seeds {', '.join(map(str, c['seeds']))})",
                         "reproduced here, first 1,000 test images", f"{c['parameters']:,}",
                         f"{c['clean']['mean']:.2f} ± {c['clean']['std']:.2f}%",
                         f"{c['autoattack']['mean']:.1f} ± {c['autoattack']['std']:.1f}%"])
    return markdown_table(["model", "result", "parameters", "clean", "AutoAttack at 0.3 px"], rows)


def autoattack_summary(rb: dict, curves: dict, pgd_steps: int) -> str:
    """The narrative's AutoAttack paragraph (markdown) from metrics.json's ``robustness`` section ``rb``: per headline
    eps both models' AutoAttack accuracy beside stage 5's PGD (``curves``), which attack broke how many images
    first, the APGD cross-check, and the sanity checklist."""
    aa, x, checks = rb["autoattack"], rb["apgd_crosscheck"], rb["sanity"]["checks"]

    def at(model: str, eps: float) -> dict:
        return next(r for r in aa[model] if abs(r["eps"] - eps) < 1e-9)

    def pgd_at(model: str, eps: float, n: int) -> str:
        try:
            row = row_at(curves[model]['pgd'], eps)
        except KeyError:
            return "not on stage 5's grid"
        return f"{row['value']:.1f}%" + (f", on {row['n']:,} other images" if row["n"] != n else " on the same images")

    lines = []
    for eps in rb["parameters"]["aa_eps"]:
        r, s = at("robust", eps), at("standard", eps)
        first = ", ".join(f"{p['attack']} {p['broke']}" for p in r["per_attack"] if p["broke"])
        lines.append(f"- **ε = {eps:g} ({to_pixel_eps(eps):g} px)**: the robust model keeps **{fmt_rate(r['accuracy'], 1)}** "
                     f"under AutoAttack on {r['n']:,} images (PGD-{pgd_steps}: {pgd_at('robust', eps, r['n'])}); the "
                     f"standard model {fmt_rate(s['accuracy'], 1)}. Images broken first, by attack: {first or 'none'}.")
    failed = [k["check"] for k in checks if not k["passed"]]
    zero = next((k.get("zero_at") for k in checks if "zero_at" in k), None)
    sn, mp = rb["sanity"]["numbers"], rb["sanity"]["numbers"].get("margin_pgd")
    tol = next((k["tolerance"] for k in checks if k.get("key") == "order"), 0.0)
    gap = sn["pgd"]["value"] - at("robust", rb["sanity"]["eps"])["accuracy"]["value"]
    confirmed = all(k["passed"] for k in checks if k.get("key") == "independent")
    why = (f" PGD-{sn['pgd']['steps']} from one start leaves {gap:.1f} pp more than AutoAttack at "
           f"ε = {rb['sanity']['eps']:g}: on its own it overstates this model's robustness, so the number to report is "
           "AutoAttack's" + (", which the independent attack confirms" if mp and confirmed else "") + "."
           if gap > tol else "")
    return ("The robust model was evaluated again with the field's standard ensemble, AutoAttack (APGD-CE, APGD-T, "
            "FAB-T and the gradient-free Square attack, the official code; stage 8), on the first test images, "
            "unfiltered (a clean mistake counts as a failure, as published numbers count):\n\n" + "\n".join(lines)
            + f"\n\nAPGD-CE from AutoAttack and from torchattacks (a port of the official code, so this checks the "
              f"wrapping and units, not the attack) agree on {x['agree']:,} of {x['n']:,} images "
              f"({fmt_rate(x['autoattack']['accuracy'], 1)} vs {fmt_rate(x['torchattacks']['accuracy'], 1)})."
            + (f" This project's own attack, written independently (margin loss, its own step schedule, "
               f"{mp['restarts']} restarts of {mp['steps']} steps), leaves {fmt_rate(mp, 1)} at "
               f"ε = {rb['sanity']['eps']:g}." if mp else "")
            + " The sanity checks of Carlini et al.: "
            + (f"all {len(checks)} pass" if not failed else f"{len(failed)} of {len(checks)} FAIL ({'; '.join(failed)})")
            + (f"; PGD accuracy reaches ~0 at ε = {zero:g} ({to_pixel_eps(zero):g} px)." if zero is not None else ".")
            + why + "\n\n" + checklist_table(checks))


def _released_on(rel: dict | None, n: int) -> dict | None:
    """Wong et al.'s released model's AutoAttack accuracy (rate dict) on the first ``n`` test images, from its
    parts' counts; None when it was not evaluated or its parts do not cover exactly those images."""
    from advlib.metrics import rate

    covered = [p for p in (rel or {}).get("parts", []) if p["start"] < n]
    if not covered or len(covered) * rel["part_size"] != n:
        return None
    return rate(sum(p["robust"] for p in covered), n)


def capacity_summary(ab: dict, published: list[dict], *, target_robust: float = 80.0,
                     target_clean: float = 98.0, target_minutes: float = 30.0) -> str:
    """The narrative's paragraph on the standard threat model (markdown) from metrics.json's ``ablation`` record:
    the anchor reproduced, the retrained anchor, the best SmallResNet-family run against the target (AutoAttack
    ≥ ``target_robust`` % with ≥ ``target_clean`` % clean, trained in ≤ ``target_minutes`` minutes: the run's own
    recorded training time), and the ablation's contrasts (``ab["contrasts"]``: pairs of configurations that
    differ in one thing)."""
    rel, configs = ab.get("released"), {c["name"]: c for c in ab["configs"]}
    wong = next(p for p in published if p["label"].startswith("Wong"))
    parts = []
    if rel:
        whole, off = rel["autoattack"], rel.get("official")
        parts.append(f"Wong et al.'s released model (the AutoAttack paper's {wong['autoattack']:.2f}%) keeps "
                     f"{fmt_rate(rel['first']['accuracy'], 1)} of the first {rel['first']['n']:,} test images under "
                     "this project's AutoAttack" + (f" (the official driver agrees on {off['agree']:,} of "
                                                   f"{off['n']:,} images)" if off else "")
                     + (f", and {whole['accuracy']['value']:.2f}% of the first {whole['n']:,}" if whole["n"] > rel["first"]["n"] else "")
                     + ".")
    cnn = configs.get("cnn")
    if cnn and cnn["autoattack"]:
        inside = rel and rel["first"]["accuracy"]["ci_low"] <= cnn["autoattack"]["mean"] <= rel["first"]["accuracy"]["ci_high"]
        seeds = [r for r in ab["rows"] if r["name"] == "cnn"]
        parts.append("Their recipe retrained here gives, seed by seed, "
                     + ", ".join(f"{r['autoattack']['value']:.1f}%" + (f" ({_fate(r)})" if _fate(r) else "")
                                 for r in seeds)
                     + f" (seeds {', '.join(str(r['seed']) for r in seeds)}; mean {cnn['autoattack']['mean']:.1f} ± "
                       f"{cnn['autoattack']['std']:.1f}% over the seeds that neither diverged nor collapsed, {cnn['clean']['mean']:.2f}% clean)"
                     + ("" if not rel else ": the mean lies inside the released model's interval on the same images"
                        if inside else ": the mean lies outside the released model's interval on the same images")
                     + (f"; seeds reaching its lower bound: {sum(rel['first']['accuracy']['ci_low'] <= r['autoattack']['value'] for r in seeds)} of "
                        f"{len(seeds)}" if rel else "") + ".")
    resnets = [r for r in ab["rows"] if r["spec"]["arch"] == "resnet" and r["status"] not in FAILED]
    if resnets:
        def meets(r: dict) -> bool:
            return (r["autoattack"]["value"] >= target_robust and r["clean"]["value"] >= target_clean
                    and r["train_seconds"] <= 60 * target_minutes)

        # a run that meets the target if there is one, else the most robust
        best = max(resnets, key=lambda r: (meets(r), r["autoattack"]["value"]))
        met = meets(best)
        parts.append(f"The best SmallResNet-family run (`{best['name']}` seed {best['seed']}, {best['parameters']:,} "
                     f"parameters) keeps {fmt_rate(best['autoattack'], 1)} under AutoAttack with "
                     f"{best['clean']['value']:.2f}% clean, trained in {best['train_seconds'] / 60:.1f} min: the "
                     f"target (≥ {target_robust:g}% with ≥ {target_clean:g}% clean, trained in ≤ {target_minutes:g} "
                     "min) is " + ("met." if met else "not met."))
        seeds = [r for r in ab["rows"] if r["name"] == best["name"]]
        if len(seeds) > 1:  # the claim rests on the seed spread, not on one run
            c = configs[best["name"]]
            parts.append("Its configuration, seed by seed: " + ", ".join(
                f"{r['autoattack']['value']:.1f}% ({r['clean']['value']:.2f}% clean, {r['train_seconds'] / 60:.1f} min"
                + (f", {_fate(r)}" if _fate(r) else "") + ")" for r in seeds)
                + (f"; mean {c['autoattack']['mean']:.1f} ± {c['autoattack']['std']:.1f}% over the seeds that neither "
                   f"diverged nor collapsed" if c["autoattack"] else "")
                + f"; {sum(meets(r) for r in seeds)} of {len(seeds)} seeds meet the target.")
        r1 = _released_on(rel, best["autoattack"]["n"])  # the same images: the first n, unfiltered
        if r1:
            whole = rel["autoattack"]

            def above(r: dict) -> bool:  # the Wilson intervals apart, the run's above
                return r["autoattack"]["ci_low"] > r1["ci_high"]

            where = ("lies above" if above(best) else "lies below" if best["autoattack"]["ci_high"] < r1["ci_low"]
                     else "overlaps")
            parts.append(f"On the same {rel['first']['n']:,} images Wong et al.'s released model "
                         f"({rel['model']['parameters']:,} parameters) keeps {fmt_rate(r1, 1)}: this run's interval "
                         f"{where} the released model's"
                         + (f" ({sum(above(r) for r in seeds)} of {len(seeds)} seeds of its configuration lie above it)"
                            if len(seeds) > 1 else "")
                         + "." + (f" The published {wong['autoattack']:.2f}% counts the whole test set, on which the "
                                  f"released model keeps {whole['accuracy']['value']:.2f}% here (first {whole['n']:,} "
                                  "images)." if whole["n"] > rel["first"]["n"] else ""))
    for r in ab["rows"]:
        if r.get("whole"):
            w = r["whole"]
            same = _released_on(rel, w["n"])
            everything = w["n"] >= r["clean"]["n"]  # the whole test set, where the published figure is measured
            reached = w["accuracy"]["value"] > wong["autoattack"] and r["parameters"] < wong["parameters"]
            parts.append(
                f"On the first {w['n']:,} test images `{r['name']}` seed {r['seed']} ({r['parameters']:,} parameters) "
                f"keeps {fmt_rate(w['accuracy'], 2)} under AutoAttack"
                + (f", Wong et al.'s released model {fmt_rate(same, 2)} on the same images ("
                   + ("the two intervals lie apart" if w["accuracy"]["ci_low"] > same["ci_high"]
                      or w["accuracy"]["ci_high"] < same["ci_low"] else "the two intervals overlap") + ")"
                   if same else "")
                + f". The moonshot (above the published {wong['autoattack']:.2f}% with fewer than "
                  f"{wong['parameters']:,} parameters), judged on all {r['clean']['n']:,} test images as the "
                  "published figure is, " + (("is reached." if reached else "is not reached.") if everything else
                                             "is not measured yet (`make robust` attacks the rest)."))
    for run_id, rows in (ab.get("checks") or {}).items():
        failed = [r["key"] for r in rows if not r["passed"]]
        parts.append(f"Carlini et al.'s checks on `{run_id}`: " + (f"all {len(rows)} pass." if not failed else
                     f"{len(failed)} of {len(rows)} fail ({', '.join(failed)}): its AutoAttack number is an upper "
                     "bound only."))
    diverged = [f"`{r['name']}` seed {r['seed']}" for r in ab["rows"] if r["status"] == "diverged"]
    if diverged:
        parts.append(f"Diverged (reported with their curves, not as capacity points): {', '.join(diverged)}.")
    collapsed = [f"`{r['name']}` seed {r['seed']} ({r['clean']['value']:.1f}% clean)" for r in ab["rows"]
                 if r["status"] == "collapsed"]
    if collapsed:
        parts.append("Collapsed in eval mode although they fit their own training batches (BatchNorm's running "
                     f"statistics; not capacity points either): {', '.join(collapsed)}.")
    overfit = [f"`{r['name']}` seed {r['seed']}" for r in ab["rows"] if r["status"] == "overfit"]
    if overfit:
        from study.ablation_eval import OVERFIT_GAP

        parts.append("Caught in catastrophic overfitting that early stopping could not undo (they fit their own FGSM "
                     f"batches more than {OVERFIT_GAP:g} points better than any epoch's held-out PGD check: no robust "
                     f"epoch to keep): {', '.join(overfit)}.")
    fooled = [r for r in ab["rows"] if r["status"] not in FAILED and r["kept_epoch"]
              and r["check_curve"][r["kept_epoch"] - 1] - r["autoattack"]["value"] > CHECK_GAP]
    if fooled:
        parts.append(f"The early-stopping check stood more than {CHECK_GAP:g} points above AutoAttack (gradients "
                     "masked for the check's attack, not for AutoAttack's): " + ", ".join(
                         f"`{r['name']}` seed {r['seed']} (check {r['check_curve'][r['kept_epoch'] - 1]:.1f}%, "
                         f"AutoAttack {r['autoattack']['value']:.1f}%)" for r in fooled) + ".")
    lines = []
    for what, a, b in ab.get("contrasts", []):
        ca, cb = configs.get(a), configs.get(b)
        if ca and cb:
            def aa(c: dict) -> str:
                n, k = len(c["seeds"]), len(c["failed"])
                if c["autoattack"] is None:
                    return "diverged or collapsed" + (f" on all {n} seeds" if n > 1 else "")
                m = c["autoattack"]
                value = f"{m['mean']:.1f}%" if n - k == 1 else f"{m['mean']:.1f} ± {m['std']:.1f}%"
                if n == 1:
                    return value
                return (f"{value} ({n - k} seed{'s' if n - k > 1 else ''}"
                        + (f"; {k} of {n} diverged or collapsed" if k else "") + ")")
            lines.append(f"- {what}: `{a}` {aa(ca)} → `{b}` {aa(cb)}")
    measured = {}  # every seed at its measured AutoAttack accuracy, a diverged one too: nothing left out
    for r in ab["rows"]:
        measured.setdefault(r["name"], []).append(r["autoattack"]["value"])
    moves = [(float(np.mean(measured[b])) - float(np.mean(measured[a])), what, a, b)
             for what, a, b in ab.get("contrasts", []) if a in measured and b in measured]
    if moves:
        gain, what, a, b = max(moves)
        parts.append(f"Of the single changes, the largest gain in AutoAttack comes from {what}: `{a}` → `{b}`, "
                     f"{np.mean(measured[a]):.1f}% → {np.mean(measured[b]):.1f}% averaged over every seed, a diverged or "
                     f"collapsed one at its measured value ({gain:+.1f} pp)." if gain > 0 else
                     "No single change raised AutoAttack averaged over every seed.")
    return " ".join(parts) + ("\n\nOne change at a time (AutoAttack accuracy at 0.3 px, first 1,000 test images; "
                              "mean ± sd over the seeds that neither diverged nor collapsed, where there are several):\n\n" + "\n".join(lines) if lines else "")
