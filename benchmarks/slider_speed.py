"""Slider response: EpsExplorer construction, and one slider move (``update(eps)``, the callback the widget's
observer calls) with the widget built, so each move also rebuilds the HTML panel and status line."""
from __future__ import annotations

import random
import time

from advlib.explorer import EpsExplorer

from benchmarks.common import Settings, loadavg, percentile, summarize, time_interleaved


def run(settings: Settings, model, x, y, say=print) -> dict:
    load = [loadavg()]
    say(f"  EpsExplorer construction on {len(x)} images x {settings.slider_builds} ...")
    build, last = time_interleaved({"build": lambda: EpsExplorer(model, x, y, progress=False)}, settings.slider_builds)
    build, explorer = build["build"], last["build"]
    start = time.perf_counter()
    explorer.widget  # noqa: B018 - builds the ipywidgets VBox (slider, status, image) as display() would
    widget_s = time.perf_counter() - start

    # Moves to random grid positions (a drag visits neighbours, a click jumps; both cost the same here).
    rng = random.Random(0)
    targets = [rng.choice(explorer.eps_grid) for _ in range(settings.slider_moves)]
    for eps in targets[:10]:  # warm-up
        explorer.update(eps)
    say(f"  {len(targets)} slider moves ...")
    moves = []
    for eps in targets:
        start = time.perf_counter()
        explorer.update(eps)
        moves.append(time.perf_counter() - start)
    stats = summarize(moves)
    stats.pop("runs")
    stats["p95"] = percentile(moves, 95)
    load.append(loadavg())
    return {"images": len(x), "grid_points": len(explorer.eps_grid), "n_show": explorer.n_show,
            "construction_seconds": build, "widget_build_seconds": widget_s, "move_seconds": stats,
            "moves": len(moves), "loadavg": load}
