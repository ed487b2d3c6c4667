"""The batched FGSM sweep of this tree against the same sweep at another git revision, on the same machine, in one
run: a guard that a refactor does not slow the sweep down.

    python -m benchmarks.revision_sweep --rev 8327a6b        # the revision before the library split (issue 26)

Each side runs in its own process (its own advlib, imported from a ``git worktree`` of the revision or from this
tree), on the same weights (the standard model of the last ``make report``, read as a plain state dict) and the same
1,000 test images (normalized to [-1, 1]), at the report's 7 eps. The processes alternate, ``--rounds`` times, so that
load on the machine falls on both sides alike; each process times ``--repeats`` sweeps after one warm-up and reports
their median. Prints the per-round medians of both sides and their ratio; writes nothing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import inspect, json, sys, time
import torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(int(sys.argv[4]))
import advlib.attacks as attacks
from advlib.model import SmallResNet
state = torch.load(sys.argv[2], weights_only=True)
model = SmallResNet()
model.load_state_dict(state)
model.eval()
data = torch.load(sys.argv[3], weights_only=True)
x, y = data["x"], data["y"]
eps = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
kw = {"bounds": (-1.0, 1.0)} if "bounds" in inspect.signature(attacks.fgsm_sweep).parameters else {}
attacks.fgsm_sweep(model, x, y, eps, **kw)  # warm-up
times = []
for _ in range(int(sys.argv[5])):
    t = time.perf_counter()
    preds = attacks.fgsm_sweep(model, x, y, eps, **kw).preds
    times.append(time.perf_counter() - t)
print(json.dumps({"file": attacks.__file__, "median_s": sorted(times)[len(times) // 2], "times": times,
                  "accuracy": (preds == y).float().mean(1).tolist()}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", required=True, help="the git revision to compare with (e.g. a commit before a change)")
    parser.add_argument("--model", default=str(ROOT / "build" / "run" / "artifacts" / "model.pt"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from advlib.checkpoint import load_checkpoint
    from advlib.data import load_mnist

    with tempfile.TemporaryDirectory(prefix="advlib-revision-sweep-") as tmp:
        tmp = Path(tmp)
        worktree = tmp / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            torch.save(load_checkpoint(args.model).model.state_dict(), tmp / "state.pt")
            data = load_mnist(ROOT / "data", splits=("test",))
            torch.save({"x": data.test_x[:1000].contiguous(), "y": data.test_y[:1000].contiguous()}, tmp / "images.pt")
            script = tmp / "child.py"
            script.write_text(CHILD)
            sides = {"before": worktree, "after": ROOT}
            runs = {name: [] for name in sides}
            for r in range(args.rounds):
                for name, tree in sides.items():
                    out = subprocess.run([sys.executable, str(script), str(tree), str(tmp / "state.pt"),
                                          str(tmp / "images.pt"), str(args.threads), str(args.repeats)],
                                         check=True, capture_output=True, text=True, cwd=tmp)
                    runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1}: before {runs['before'][-1]['median_s']:.3f} s, "
                      f"after {runs['after'][-1]['median_s']:.3f} s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, capture_output=True)
    if runs["before"][0]["accuracy"] != runs["after"][0]["accuracy"]:
        print("the two sides' accuracies differ:", runs["before"][0]["accuracy"], runs["after"][0]["accuracy"])
    med = {k: statistics.median(r["median_s"] for r in v) for k, v in runs.items()}
    spread = {k: (min(r["median_s"] for r in v), max(r["median_s"] for r in v)) for k, v in runs.items()}
    print(f"sweep of 1,000 images at 7 eps, {args.threads} thread(s), {args.rounds} alternating rounds of "
          f"{args.repeats}: before ({args.rev}) {med['before']:.3f} s [{spread['before'][0]:.3f}, "
          f"{spread['before'][1]:.3f}], after {med['after']:.3f} s [{spread['after'][0]:.3f}, "
          f"{spread['after'][1]:.3f}]; after / before = {med['after'] / med['before']:.3f}")
    print(f"advlib imported from: {runs['before'][0]['file']} and {runs['after'][0]['file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
