"""The targets (issues 4 and 11), judged from the measurements, and the markdown of results.md."""
from __future__ import annotations

# Speed must not be bought with accuracy: after one epoch, advlib's test accuracy may be below the textbook
# pipeline's by less than this, with 95% confidence (the mean paired difference over seeds minus 2 standard errors
# of it), so a real loss of this size fails the target however the seeds fall.
ACCURACY_MARGIN_PP = 1.0
NOISE_SE = 2.0


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


def accuracy_target(epoch: dict | None) -> dict:
    """The one-epoch accuracy target from train_speed.accuracy_comparison's dict (None: not measured)."""
    description = "test accuracy after one epoch, advlib minus textbook, same seeds, BatchNorm recalibrated"
    goal = f"> -{ACCURACY_MARGIN_PP:g} pp at 95% confidence"
    se = _get(epoch, "difference_se_pp")
    if se is None:
        why = "one seed has no spread to judge by (needs 2 or more)" if epoch else ""
        return _target("training_accuracy", description, goal, None, "pp", False, why)
    lower = epoch["accuracy_difference_pp"] - NOISE_SE * se
    return _target("training_accuracy", f"{description}, mean of {epoch['seeds']} seeds", goal,
                   epoch["accuracy_difference_pp"], "pp", lower > -ACCURACY_MARGIN_PP,
                   f"lower end {lower:+.2f} pp (mean - {NOISE_SE:g} standard errors of {se:.2f} pp)")


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
    slider = _get(s, "slider", "move_seconds", "p95")
    t.append(_target("slider_p95", "slider move (EpsExplorer.update), 95th percentile", "< 100 ms",
                     None if slider is None else 1000 * slider, "ms", slider is not None and slider < 0.1))

    tr = s.get("training", {})
    speed, best = tr.get("speedup"), tr.get("advlib_best")
    t.append(_target("training_speedup", f"training images/s vs the textbook pipeline, same run (advlib's best: "
                     f"{best or '?'})", ">= 2x", speed, "x", speed is not None and speed >= 2))
    t.append(accuracy_target(tr.get("epoch")))

    wf = s.get("workflow", {})
    why = wf.get("not_measured", "")
    small = f" (small parameters: {' '.join(wf['config'][1:])})" if len(wf.get("config", [])) > 1 else ""
    scratch = _get(wf, "from_scratch", "seconds")
    t.append(_target("report_from_scratch", f"`make report` after installation, from scratch, 2 cores{small}",
                     "<= 180 s", scratch, "s", scratch is not None and scratch <= 180, why))
    fm = _get(wf, "fashion_mnist_from_scratch", "seconds")
    t.append(_target("fashion_mnist_report_from_scratch", "the Fashion-MNIST report from scratch (`make report "
                     f"CONFIG=\"dataset=fashion_mnist\"`), same run{small}",
                     "<= MNIST's" + ("" if scratch is None else f" ({scratch:.0f} s)"), fm,
                     "s", fm is not None and scratch is not None and fm <= scratch, why))
    reruns = {k: wf.get(f"after_{k}_change") for k in ("plot", "narrative")}
    rerun = None if None in reruns.values() else max(r["seconds"] for r in reruns.values())
    stale = [r["changed"] for r in reruns.values() if r is not None and not r["jobs"]]
    if stale:  # a re-run that re-ran nothing left stale outputs: its speed means nothing
        rerun, why = None, f"not valid: Snakemake re-ran nothing after changing {', '.join(stale)}"
    t.append(_target("rerun_after_change", "re-run after changing only a plot or the narrative (the slower)",
                     "<= 30 s", rerun, "s", rerun is not None and rerun <= 30, why))
    why = wf.get("not_measured", "")
    mt = results.get("make_test", {})
    t.append(_target("make_test", "`make test` wall time, 2 cores", "<= 360 s", mt.get("seconds"), "s",
                     mt.get("seconds") is not None and mt.get("returncode", 0) == 0 and mt["seconds"] <= 360,
                     mt.get("note") or "not measured here: `python -m benchmarks --make-test` runs it, "
                     "or pass --make-test-seconds with a measured figure"))
    mem = _get(wf, "largest_kernel", "peak_rss_mb")
    t.append(_target("report_peak_memory", f"peak memory of any report kernel{small}", "<= 1500 MB", mem, "MB",
                     mem is not None and mem <= 1500, why))
    study = wf.get("seed_study", {})
    ten = study.get("seconds_for_10_seeds")
    t.append(_target("seed_study", "seed study, 10 seeds (training + sweep), 2 cores" +
                     (f", extrapolated from {study['seeds']} seeds" if study.get("extrapolated") else "") + small,
                     "<= 600 s", ten, "s", ten is not None and ten <= 600, why))
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


def cpu_budget(jobs: dict[str, dict], wall_s: float, cores: int = 2) -> str:
    """One sentence on what bounds a workflow run: its jobs' seconds summed by kind (each job runs on one core),
    that sum spread over the cores, and the run's wall time."""
    kinds = {"trainings": 0.0, "PGD-curve jobs": 0.0, "notebooks": 0.0}
    for name, job in jobs.items():
        kind = "trainings" if name.startswith("train ") else "PGD-curve jobs" if name.startswith("PGD") else "notebooks"
        kinds[kind] += job["seconds"]
    total = sum(kinds.values())
    parts = ", ".join(f"{kind} {seconds:.0f}" for kind, seconds in kinds.items())
    return (f"The jobs add up to {total:.0f} CPU-seconds ({parts}): {total / cores:.0f} s on {cores} cores before "
            f"any waiting, against {wall_s:.0f} s of wall time.")


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
        for name, v in tr["pipelines"].items():
            lines.append(f"| {name.replace('_', ' ')} | {_spread(v['images_per_s'], digits=0)} | "
                         f"{_spread(v['seconds'])} |")
        startup = _get(tr, "pipelines", "data_parallel_2x1", "startup_seconds", "median")
        lines += ["", f"Best: {tr['advlib_best']} against {tr['textbook_best']}, {tr['speedup']:.2f}x. Two "
                  f"single-thread processes against one: {tr['parallel_speedup_vs_1_thread']:.2f}x"
                  + (f" (plus {startup:.1f} s to start the processes, not in the rates)." if startup else ".")]
        parallel = tr["pipelines"].get("data_parallel_2x1", {})
        wait, exchange = parallel.get("exchange_wait_fraction"), parallel.get("exchange_seconds")
        if wait and exchange:
            share = exchange * tr["steps"] / parallel["seconds"]["median"]
            # each process's rate while it computes: its half of the images over the time it did not wait
            computing = tr["images_per_run"] / 2 / (parallel["seconds"]["median"] * (1 - wait["median"]))
            single = tr["pipelines"]["advlib_1_thread"]["images_per_s"]["median"]
            lines += ["", f"The two processes step in lock-step: each waited {100 * wait['median']:.0f}% "
                      f"[{100 * wait['min']:.0f}–{100 * wait['max']:.0f}%] of its epoch at the steps' gradient "
                      "exchanges for the other, the slower one at that step. The exchange itself, between two "
                      f"processes doing nothing else, takes {1e3 * exchange:.2f} ms ({100 * share:.1f}% of a run). "
                      f"Between exchanges, each process computed {computing:,.0f} images/s on its half batch, "
                      f"against {single:,.0f} for one single-thread process alone on whole batches (the advlib 1 "
                      "thread row)."]
        ep = tr.get("epoch")
        if ep:
            lines += ["", f"One epoch on {ep['train_images']:,} images, BatchNorm statistics recomputed on "
                      f"{ep['calibration_images']:,} of them for every model, test accuracy on {ep['test_images']:,}:",
                      "", "| pipeline | seed | s | test accuracy % [95% CI] |", "|---|---|---|---|"]
            for name in ("textbook", "advlib", "data_parallel_2x1"):
                for e in ep.get(name, []):
                    ci = e["test_accuracy_ci95"]
                    lines.append(f"| {name.replace('_', ' ')} | {e['seed']} | {e['seconds']:.1f} | "
                                 f"{e['test_accuracy']:.2f} [{ci[0]:.2f}–{ci[1]:.2f}] |")
            se = ep["difference_se_pp"]
            lines += ["", f"Judged: {ep['judged']} minus textbook over {ep['seeds']} seed(s), paired by seed: "
                      f"{ep['accuracy_difference_pp']:+.2f} pp"
                      + (f" (standard error {se:.2f} pp)." if se is not None else " (one seed: not judged).")]

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

    wf = s.get("workflow")
    if wf:
        lines += ["", "## The workflow (Snakemake, 2 cores, in a copy of the repository)", ""]
    if wf and "not_measured" in wf:
        lines.append(f"Not measured: {wf['not_measured']}.")
    elif wf:
        lines += [f"`--config {' '.join(wf['config'])}`.", "", "| run | seconds |", "|---|---|"]
        runs = {"from scratch": wf["from_scratch"]}
        if "fashion_mnist_from_scratch" in wf:
            runs["Fashion-MNIST from scratch (`dataset=fashion_mnist`), next in the same copy"] = wf["fashion_mnist_from_scratch"]
        runs.update({f"after changing {r['changed']}; re-ran {', '.join(r['jobs']) or 'nothing'}": r
                     for k, r in wf.items() if k.startswith("after_")})
        lines += [f"| {name} | {r['seconds']:.1f} |" for name, r in runs.items()]
        st = wf.get("seed_study")
        if st:
            lines.append(f"| seed study, {st['seeds']} seeds | {st['seconds']:.1f}"
                         + (f" (10 seeds: {st['seconds_for_10_seeds']:.0f}, extrapolated)" if st["extrapolated"] else "")
                         + " |")
        lines += ["", "Jobs of the run from scratch (sampled every 0.2 s; a notebook's peak memory is its kernel's):",
                  "", "| job | seconds | peak memory MB |", "|---|---|---|"]
        lines += [f"| {name} | {j['seconds']:.1f} | {j['peak_rss_mb']:.0f} |"
                  for name, j in wf["from_scratch"]["jobs"].items()]
        lines += ["", cpu_budget(wf["from_scratch"]["jobs"], wf["from_scratch"]["seconds"])]
    mt = results.get("make_test")
    if mt:
        lines += ["", f"`make test`: {mt['seconds']:.0f} s" + (f" ({mt['note']})" if mt.get("note") else "")
                  + (f", exit code {mt['returncode']}" if mt.get("returncode") else "") + "."]

    mem = s.get("memory")
    if mem:
        tr_m, sw_m = mem["training"], mem["sweep"]
        lines += ["", "## Peak memory (child processes, VmHWM)", "",
                  f"- training ({tr_m['train_images']:,} images, both splits loaded): {tr_m['self_peak_rss_mb']:.0f} MB",
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
