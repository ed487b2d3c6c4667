"""Training throughput: the textbook pipeline against advlib.train.train, same model, batch 64, Adam lr 0.01.

Textbook: ``torchvision.datasets.MNIST(root='data')`` with ``Compose([Resize(32), ToTensor(), Normalize(0.5,
0.5)])`` (PIL resize per image per epoch), a shuffling DataLoader (num_workers 0, and 2 in case it helps), and
the plain eager step: zero_grad, forward, cross-entropy, backward, Adam step, ``loss.item()``.
advlib: the whole ``advlib.train.train`` call on the pre-transformed tensors (model creation and its end-of-epoch
evaluation on 64 images included).

Both run the same number of optimizer steps from a fresh seeded model; images/s = steps * 64 / seconds.
Then each trains one full epoch, for a few seeds, and reports its test accuracy, so speed is not bought with
accuracy: the two pipelines shuffle differently, so even at one seed their models differ, and the difference in
accuracy is only meaningful against the seed-to-seed spread.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from advlib.data import MNIST
from advlib.metrics import wilson_interval
from advlib.model import SmallResNet
from advlib.train import TrainConfig, train

from benchmarks.common import Settings, loadavg, rate, summarize

BATCH, LR, SEED = 64, 0.01, 0  # the original report's hyperparameters


def textbook_dataset(root: str, train: bool = True, limit: int | None = None):
    from torchvision import datasets, transforms as T

    transform = T.Compose([T.Resize(32), T.ToTensor(), T.Normalize(0.5, 0.5)])
    ds = datasets.MNIST(root=root, train=train, download=False, transform=transform)
    return Subset(ds, range(limit)) if limit is not None else ds


def textbook_loader(ds, num_workers: int, shuffle: bool = True, batch_size: int = BATCH,
                    seed: int = SEED) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed))


def fresh_model(seed: int = SEED) -> tuple[SmallResNet, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = SmallResNet()
    return model, torch.optim.Adam(model.parameters(), lr=LR)


def textbook_steps(model, optimizer, batches, steps: int) -> float:
    """The plain eager training step, steps times; returns the summed loss (as a tutorial logs it)."""
    model.train()
    running = 0.0
    for _ in range(steps):
        x, y = next(batches)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        running += loss.item()
    return running


def textbook_run(ds, steps: int, num_workers: int, warmup_steps: int = 3) -> float:
    """Seconds for `steps` textbook steps from a fresh model, timed after a few warm-up steps on a fresh
    iterator (so its workers, if any, are already running)."""
    model, optimizer = fresh_model()
    batches = iter(textbook_loader(ds, num_workers))
    textbook_steps(model, optimizer, batches, warmup_steps)
    start = time.perf_counter()
    textbook_steps(model, optimizer, batches, steps)
    seconds = time.perf_counter() - start
    del batches  # shuts the workers down
    return seconds


def advlib_run(data: MNIST, steps: int) -> float:
    """Seconds for one advlib.train.train call over steps * 64 images (fresh model, as every call)."""
    n = steps * BATCH
    subset = MNIST(data.train_x[:n], data.train_y[:n], data.test_x[:BATCH], data.test_y[:BATCH])
    start = time.perf_counter()
    train(subset, config=TrainConfig(epochs=1, batch_size=BATCH, lr=LR, seed=SEED), progress=False)
    return time.perf_counter() - start


def time_interleaved(runs: dict, steps: int, repeats: int, warmup_steps: int = 10) -> dict:
    """runs: {name: run(steps) -> seconds}. A short untimed warm-up of each, then `repeats` rounds that run
    each once in turn, so a change in the machine's load hits every pipeline alike. Unlike
    common.time_interleaved, each run reports its own seconds, so a fresh model, DataLoader workers and warm-up
    steps stay outside the timing. Returns {name: {"seconds", "images_per_s"}}."""
    for run in runs.values():
        run(min(warmup_steps, steps))
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            seconds[name].append(run(steps))
    return {name: {"seconds": summarize(s), "images_per_s": rate(summarize(s), steps * BATCH)}
            for name, s in seconds.items()}


def textbook_epoch(root: str, num_workers: int, limit: int | None, test_limit: int | None, seed: int = SEED) -> dict:
    """One epoch of the textbook pipeline from a fresh model, then its test accuracy (textbook evaluation)."""
    ds = textbook_dataset(root, limit=limit)
    model, optimizer = fresh_model(seed)
    start = time.perf_counter()
    loader = textbook_loader(ds, num_workers, seed=seed)
    textbook_steps(model, optimizer, iter(loader), len(loader))
    train_s = time.perf_counter() - start
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in DataLoader(textbook_dataset(root, train=False, limit=test_limit), batch_size=1000):
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return {"seed": seed, "train_images": len(ds), "num_workers": num_workers, "seconds": time.perf_counter() - start,
            "train_seconds": train_s, "test_accuracy": 100.0 * correct / total,
            "test_accuracy_ci95": wilson_interval(correct, total)}


def advlib_epoch(data: MNIST, limit: int | None, test_limit: int | None, seed: int = SEED):
    """One epoch of advlib.train.train (its own end-of-epoch test evaluation included). Returns (dict, model)."""
    data = MNIST(data.train_x[:limit], data.train_y[:limit], data.test_x[:test_limit], data.test_y[:test_limit])
    start = time.perf_counter()
    model, _, history = train(data, config=TrainConfig(epochs=1, batch_size=BATCH, lr=LR, seed=seed), progress=False)
    seconds = time.perf_counter() - start
    acc = history.test_accuracy[-1]
    k = round(acc * len(data.test_y) / 100)
    return ({"seed": seed, "train_images": len(data.train_x), "seconds": seconds, "train_seconds": history.seconds[-1],
             "test_accuracy": acc, "test_accuracy_ci95": wilson_interval(k, len(data.test_y))}, model)


def run(settings: Settings, root: str, data: MNIST, say=print):
    """The training section. Returns (section dict, the advlib model trained for one epoch, or None)."""
    load = [loadavg()]
    steps, images = settings.train_steps, settings.train_steps * BATCH
    start = time.perf_counter()
    ds = textbook_dataset(root)
    textbook_setup_s = time.perf_counter() - start
    say(f"  textbook pipeline (num_workers 0 and 2) and advlib.train.train: {steps} steps, "
        f"{settings.train_repeats} interleaved rounds ...")
    timed = time_interleaved({"num_workers_0": lambda n: textbook_run(ds, n, 0),
                              "num_workers_2": lambda n: textbook_run(ds, n, 2),
                              "advlib": lambda n: advlib_run(data, n)}, steps, settings.train_repeats)
    advlib = timed.pop("advlib")
    textbook = timed
    best = max(textbook, key=lambda k: textbook[k]["images_per_s"]["median"])
    one_thread = None
    threads = torch.get_num_threads()
    if threads > 1:
        # For information, not for the targets: both pipelines again with one torch thread. Ops on 64 tiny
        # images gain little from a second thread, and spin-waiting threads crawl when another process holds
        # a core, so on a busy machine this row is the one that shows each pipeline's own cost.
        say("  both again with torch.set_num_threads(1) ...")
        torch.set_num_threads(1)
        try:
            one_thread = time_interleaved({"textbook_num_workers_0": lambda n: textbook_run(ds, n, 0),
                                           "advlib": lambda n: advlib_run(data, n)}, steps, settings.train_repeats)
        finally:
            torch.set_num_threads(threads)
        one_thread["speedup"] = (one_thread["advlib"]["images_per_s"]["median"]
                                 / one_thread["textbook_num_workers_0"]["images_per_s"]["median"])
    load.append(loadavg())
    section = {
        "batch_size": BATCH, "lr": LR, "optimizer": "Adam", "steps": steps, "images_per_run": images,
        "textbook": textbook, "textbook_best": best, "textbook_dataset_setup_s": textbook_setup_s,
        "advlib": advlib, "torch_threads": threads, "one_thread": one_thread,
        "speedup_vs_textbook_best": advlib["images_per_s"]["median"] / textbook[best]["images_per_s"]["median"],
        "speedup_vs_textbook_num_workers_0": (advlib["images_per_s"]["median"]
                                              / textbook["num_workers_0"]["images_per_s"]["median"]),
    }
    model = None
    if settings.full_epoch:
        limit = settings.train_images_for_accuracy
        workers = int(best.rsplit("_", 1)[1])
        runs = {"textbook": [], "advlib": []}
        for seed in range(settings.epoch_seeds):
            say(f"  one epoch each ({limit or 60000} images), seed {seed}, for the test accuracy ...")
            runs["textbook"].append(textbook_epoch(root, workers, limit, settings.test_images_for_accuracy, seed))
            ad, seed_model = advlib_epoch(data, limit, settings.test_images_for_accuracy, seed)
            runs["advlib"].append(ad)
            model = model or seed_model  # seed 0's model serves the attack sections
        section["epoch"] = {**runs, **accuracy_comparison([r["test_accuracy"] for r in runs["advlib"]],
                                                          [r["test_accuracy"] for r in runs["textbook"]])}
        load.append(loadavg())
    section["loadavg"] = load
    return section, model


def accuracy_comparison(advlib: list[float], textbook: list[float]) -> dict:
    """Mean test accuracies (%) over seeds, their difference (advlib minus textbook, percentage points) and the
    standard error of that difference from the seed-to-seed spread (None with a single seed)."""
    import statistics

    n = len(advlib)
    se = (statistics.variance(advlib) / n + statistics.variance(textbook) / n) ** 0.5 if n >= 2 else None
    return {"seeds": n, "advlib_mean": statistics.fmean(advlib), "textbook_mean": statistics.fmean(textbook),
            "accuracy_difference_pp": statistics.fmean(advlib) - statistics.fmean(textbook),
            "difference_se_pp": se}
