"""The targets of issue 4, judged from the measurements, and the markdown table of results.md."""
from __future__ import annotations

# "Same final accuracy within noise": with several seeds, |mean difference| <= 2 standard errors of it (from the
# seed-to-seed spread); with one seed (--quick, --smoke) there is no spread to judge by, so a fixed band.
NOISE_SE = 2.0
ACCURACY_TOLERANCE_PP = 1.0


def _get(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _target(tid: str, description: str, goal: str, measured, unit: str, ok, note: str = "") -> dict:
    """met is True/False, or None when the quantity was not measured (note says why)."""
    if measured is None and not note:
        note = "not measured in this run (its section was not run)"
    return {"id": tid, "description": description, "goal": goal, "measured": measured, "unit": unit,
            "met": None if measured is None else bool(ok), "note": note}


def targets(results: dict) -> list[dict]:
    s = results["sections"]
    t = []
    sub = s.get("sweep_subset", {})
    n = sub.get("images", "?")
    loop = _get(sub, "methods", "per_image_loop", "ratio_to_advlib")
    peer = _get(sub, "methods", "torchattacks", "ratio_to_advlib")
    t.append(_target("sweep_vs_per_image_loop", f"sweep on {n} images, advlib vs per-image loop", ">= 25x", loop,
                     "x faster", loop is not None and loop >= 25))
    t.append(_target("sweep_vs_peer", f"sweep on {n} images, advlib vs torchattacks per eps", ">= 3x", peer,
                     "x faster", peer is not None and peer >= 3,
                     "" if peer is not None else _get(sub, "methods", "torchattacks", "not_measured") or ""))
    diffs = []
    for key in ("sweep_subset", "sweep_full"):
        diffs += [sum(v) for v in (_get(s, key, "agreement", "differing_predictions") or {}).values()]
    same = [_get(s, key, "agreement", "identical_accuracies") for key in ("sweep_subset", "sweep_full")]
    same = [v for v in same if v is not None]
    t.append(_target("sweep_identical", "all methods give the same adversarial accuracies", "identical",
                     sum(diffs) if same else None, "differing predictions", same and all(same),
                     "differing predictions are counted over every method pair, eps and image"))
    full = s.get("sweep_full", {})
    secs = _get(full, "methods", "advlib", "seconds", "median")
    evals = full.get("adversarial_evaluations", "?")
    t.append(_target("sweep_full_seconds", f"advlib sweep on {full.get('images', '?')} images ({evals} "
                     "adversarial evaluations)", "< 15 s", secs, "s", secs is not None and secs < 15))
    tr = s.get("training", {})
    speed = tr.get("speedup_vs_textbook_best")
    t.append(_target("training_speedup", "training images/s, advlib vs textbook pipeline (best num_workers)",
                     ">= 2x", speed, "x", speed is not None and speed >= 2))
    diff, se = _get(tr, "epoch", "accuracy_difference_pp"), _get(tr, "epoch", "difference_se_pp")
    seeds = _get(tr, "epoch", "seeds") or 1
    if se is not None:
        t.append(_target("training_accuracy", f"test accuracy after one epoch, advlib minus textbook, mean of {seeds} "
                         "seeds", f"within +-{NOISE_SE:g} standard errors (+-{NOISE_SE * se:.2f} pp)", diff, "pp",
                         abs(diff) <= NOISE_SE * se, f"standard error of the difference {se:.2f} pp"))
    else:
        t.append(_target("training_accuracy", "test accuracy after one epoch, advlib minus textbook, one seed",
                         f"within +-{ACCURACY_TOLERANCE_PP} pp", diff, "pp",
                         diff is not None and abs(diff) <= ACCURACY_TOLERANCE_PP))
    p95 = _get(s, "slider", "move_seconds", "p95")
    t.append(_target("slider_p95", "slider move (EpsExplorer.update), 95th percentile", "< 100 ms",
                     None if p95 is None else 1000 * p95, "ms", p95 is not None and p95 < 0.1))
    e2e = s.get("end_to_end", {})
    why = e2e.get("not_measured", "")
    wall = e2e.get("process_wall_s")
    t.append(_target("end_to_end", "report pipeline, all stages, wall time", "< 180 s", wall, "s",
                     wall is not None and wall < 180, why))
    mem = e2e.get("peak_rss_upper_bound_mb")
    t.append(_target("report_peak_memory", "peak memory of the whole report (papermill + largest kernel)",
                     "< 2048 MB", mem, "MB", mem is not None and mem < 2048, why))
    return t


# ---------------------------------------------------------------------------------------------------------------
# Markdown


def _f(v, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def _spread(stats: dict | None, scale: float = 1.0, digits: int = 2) -> str:
    if not stats:
        return "—"
    return (f"{stats['median'] * scale:,.{digits}f} [{stats['min'] * scale:,.{digits}f}–"
            f"{stats['max'] * scale:,.{digits}f}]")


def markdown(results: dict) -> str:
    m, s = results["machine"], results["sections"]
    lines = [f"# Benchmarks ({results['mode']} run)", "", f"Command: `{results['command'].strip()}`.", "",
             f"Machine: {m['cpu_model']}, {m['usable_cores']} usable cores, torch {m['torch']} with "
             f"{m['torch_num_threads']} thread(s); load average {m['loadavg_at_start']} at the start, "
             f"{results['loadavg_at_end']} at the end (1, 5, 15 min). Run took {results['duration_s']:.0f} s on "
             f"{results['started_at']}. Times: median [min–max] over the repetitions in results.json.", ""]
    if results["mode"] != "full":
        lines += [f"**A --{results['mode']} run: small sizes, the figures below are not the measurement.**", ""]
    lines += ["## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    for t in results["targets"]:
        met = {True: "yes", False: "**NO**", None: "not measured"}[t["met"]]
        measured = f"{_f(t['measured'])} {t['unit']}" if t["met"] is not None else t["note"]
        lines.append(f"| {t['description']} | {t['goal']} | {measured} | {met} |")

    tr = s.get("training")
    if tr:
        lines += ["", f"## Training (batch {tr['batch_size']}, Adam lr {tr['lr']}, {tr['steps']} steps per run, "
                  f"torch threads: {tr['torch_threads']})", "",
                  "| pipeline | images/s | s per run |", "|---|---|---|"]
        for k, v in tr["textbook"].items():
            lines.append(f"| textbook, {k.replace('_', ' ')} | {_spread(v['images_per_s'], digits=0)} | "
                         f"{_spread(v['seconds'])} |")
        lines.append(f"| advlib.train.train | {_spread(tr['advlib']['images_per_s'], digits=0)} | "
                     f"{_spread(tr['advlib']['seconds'])} |")
        one = tr.get("one_thread")
        if one:
            for k, label in (("textbook_num_workers_0", "textbook, num workers 0"), ("advlib", "advlib.train.train")):
                lines.append(f"| {label}, 1 torch thread (information) | "
                             f"{_spread(one[k]['images_per_s'], digits=0)} | {_spread(one[k]['seconds'])} |")
        ep = tr.get("epoch")
        if ep:
            lines += ["", "| one epoch | seed | train images | wall s (incl. test eval) | test accuracy % [95% CI] |",
                      "|---|---|---|---|---|"]
            for k in ("textbook", "advlib"):
                for e in ep[k]:
                    ci = e["test_accuracy_ci95"]
                    lines.append(f"| {k} | {e['seed']} | {e['train_images']:,} | {e['seconds']:.1f} | "
                                 f"{e['test_accuracy']:.2f} [{ci[0]:.2f}–{ci[1]:.2f}] |")
            se = ep["difference_se_pp"]
            lines += ["", f"Mean over {ep['seeds']} seed(s): textbook {ep['textbook_mean']:.2f}%, advlib "
                      f"{ep['advlib_mean']:.2f}%, difference {ep['accuracy_difference_pp']:+.2f} pp"
                      + (f" (standard error {se:.2f} pp from the seed-to-seed spread)." if se is not None else ".")]

    for key, title in (("sweep_subset", "correctly classified test images"), ("sweep_full", "test images")):
        sw = s.get(key)
        if not sw:
            continue
        if key == "sweep_full" and sw["images"] == 10_000:
            title = "test images (the whole test set)"
        lines += ["", f"## FGSM sweep, {sw['images']:,} {title}, {len(sw['eps'])} eps ({sw['eps'][0]}–"
                  f"{sw['eps'][-1]}, normalized units)", "",
                  "| method | seconds | adversarial evaluations/s | slower than advlib |", "|---|---|---|---|"]
        for name, v in sw["methods"].items():
            if "not_measured" in v:
                lines.append(f"| {name} | not measured: {v['not_measured']} | — | — |")
                continue
            secs = _spread(v["seconds"]) if "seconds" in v else f"~{v['estimated_seconds']:,.0f} (estimated)"
            lines.append(f"| {name} | {secs} | {_f(v['adversarial_evaluations_per_s'], 0)} | "
                         f"{_f(v['ratio_to_advlib'], 1)}x |")
        ag = sw["agreement"]
        lines += ["", "| eps | " + " | ".join(f"{name} acc %" for name in ag["adv_accuracy"]) + " |",
                  "|---" * (1 + len(ag["adv_accuracy"])) + "|"]
        for i, eps in enumerate(sw["eps"]):
            lines.append(f"| {eps} | " + " | ".join(f"{acc[i]:.2f}" for acc in ag["adv_accuracy"].values()) + " |")
        diff = {k: sum(v) for k, v in ag["differing_predictions"].items()}
        lines += ["", f"Identical accuracies: {_f(ag['identical_accuracies'])}; predictions differing from "
                  f"advlib's: {diff or 'none compared'}."]

    sl = s.get("slider")
    if sl:
        mv = sl["move_seconds"]
        lines += ["", f"## Slider ({sl['images']:,} images, {sl['grid_points']} eps positions)", "",
                  f"- construction: {_spread(sl['construction_seconds'])} s; widget build "
                  f"{sl['widget_build_seconds'] * 1000:.0f} ms",
                  f"- one move (update with the widget built), {sl['moves']} moves: median {mv['median'] * 1000:.1f} "
                  f"ms, p95 {mv['p95'] * 1000:.1f} ms, max {mv['max'] * 1000:.1f} ms"]

    e2e = s.get("end_to_end")
    if e2e:
        lines += ["", "## End to end (the report's pipeline, in a temporary copy)", ""]
    if e2e and "not_measured" in e2e:
        lines.append(f"Not measured: {e2e['not_measured']}.")
    elif e2e:
        lines += ["| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in e2e["stage_seconds"].items()]
        lines += [f"| all stages (process wall time, imports included) | {e2e['process_wall_s']:.1f} |", "",
                  f"Peak memory: papermill process {e2e['papermill_process_peak_rss_mb']:.0f} MB, largest kernel "
                  f"{e2e['largest_kernel_peak_rss_mb']:.0f} MB (sum {e2e['peak_rss_upper_bound_mb']:.0f} MB, "
                  f"an upper bound); sampled peak of the process tree {e2e['sampled_tree_rss_peak_mb']:.0f} MB."]

    mem = s.get("memory")
    if mem:
        tr_m, sw_m = mem["training"], mem["sweep"]
        lines += ["", "## Peak memory (child processes, VmHWM)", "",
                  f"- training ({tr_m['train_images']:,} images, all data loaded): {tr_m['self_peak_rss_mb']:.0f} MB",
                  f"- sweep ({sw_m['images']:,} images x {sw_m['eps']} eps): {sw_m['self_peak_rss_mb']:.0f} MB"]

    ef = s.get("efficiency")
    if ef:
        fl, mm = ef["flops"], ef["matmul"]
        lines += ["", "## Efficiency", "",
                  f"FLOPs per image: forward {fl['forward_per_image'] / 1e6:.2f} M, training step "
                  f"{fl['train_step_per_image'] / 1e6:.2f} M ({fl['train_step_over_forward']:.2f}x forward), "
                  f"7-eps sweep {fl['sweep_7eps_per_image'] / 1e6:.2f} M. float32 matmul ({mm['n']}x{mm['n']}, "
                  f"{mm['threads']} threads): {mm['best_gflops']:.1f} GFLOP/s best.", "",
                  "| work | achieved GFLOP/s | fraction of matmul rate |", "|---|---|---|"]
        for k, v in ef["achieved"].items():
            lines.append(f"| {k.replace('_', ' ')} | {v['gflops']:.2f} | {100 * v['fraction_of_matmul']:.1f}% |")
    return "\n".join(lines) + "\n"
