"""Peak memory (max resident set) of training and of the sweep, each in its own process (benchmarks.child)."""
from __future__ import annotations

from benchmarks.common import Settings, loadavg, run_child


def run(settings: Settings, data_root: str, checkpoint: str, say=print) -> dict:
    load = [loadavg()]
    train_images = settings.train_steps * 64
    say(f"  training ({train_images} images, both splits loaded) in a child process ...")
    train = run_child(["train", "--data-root", data_root, "--images", str(train_images)], timeout=1800)
    say(f"  sweep ({settings.full_sweep_images} images x 7 eps) in a child process ...")
    sweep = run_child(["sweep", "--data-root", data_root, "--checkpoint", checkpoint,
                       "--images", str(settings.full_sweep_images)], timeout=1800)
    load.append(loadavg())
    return {"training": train, "sweep": sweep, "loadavg": load,
            "note": "peak_rss = the child's VmHWM (torch and its libraries included, ~0.3 GB of it)"}
