"""FLOPs of the model (torch.utils.flop_counter, convolutions and matrix products) and the achieved FLOP/s
of training and of the sweep, as a fraction of this machine's measured float32 matrix-multiply rate."""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from advlib.model import SmallResNet

from benchmarks.common import EPS_GRID


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def model_flops(model: SmallResNet, x: torch.Tensor, y: torch.Tensor) -> dict:
    """FLOPs per image: one forward pass, one training step (forward + backward incl. weight gradients), and a
    7-eps sweep as fgsm_sweep does it (one input gradient, then 7 forward passes)."""
    n = len(x)
    with torch.no_grad():
        forward = count_flops(lambda: model(x)) / n
    m = SmallResNet().train()

    def step():
        F.cross_entropy(m(x), y).backward()

    train_step = count_flops(step) / n
    # The input gradient as fgsm_sweep computes it (no weight gradients). FlopCounterMode cannot watch
    # torch.autograd.grad, so the same work is counted through .backward() on a frozen copy.
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    xr = x.clone().requires_grad_(True)
    gradient = count_flops(lambda: F.cross_entropy(frozen(xr), y, reduction="sum").backward()) / n
    return {"forward_per_image": forward, "train_step_per_image": train_step,
            "train_step_over_forward": train_step / forward, "input_gradient_per_image": gradient,
            "sweep_7eps_per_image": gradient + len(EPS_GRID) * forward}


def matmul_rate(n: int, repeats: int = 5) -> dict:
    """float32 torch.mm of two n x n matrices: best and median GFLOP/s over repeats (after a warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    rates.sort()
    return {"n": n, "best_gflops": rates[-1], "median_gflops": rates[len(rates) // 2],
            "threads": torch.get_num_threads()}


def run(model, x, y, train_images_per_s: dict, sweep_evals_per_s: dict, mm_n: int) -> dict:
    """train_images_per_s: {name: images/s}; sweep_evals_per_s: {name: adversarial evaluations/s}, 7 of which
    make one image's sweep. Achieved rates count the FLOPs the work needs (advlib's sweep: one gradient per image),
    so for the per-image loop and the peer they measure useful work, not what those methods execute."""
    flops = model_flops(model, x[:64], y[:64])
    mm = matmul_rate(mm_n)
    peak = mm["best_gflops"]
    achieved = {}
    for name, images in train_images_per_s.items():
        g = flops["train_step_per_image"] * images / 1e9
        achieved[f"training_{name}"] = {"gflops": g, "fraction_of_matmul": g / peak}
    for name, evals in sweep_evals_per_s.items():
        g = flops["sweep_7eps_per_image"] * evals / len(EPS_GRID) / 1e9
        achieved[f"sweep_{name}"] = {"gflops": g, "fraction_of_matmul": g / peak}
    return {"flops": flops, "matmul": mm, "achieved": achieved}
