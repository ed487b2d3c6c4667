"""Training throughput: the textbook pipeline against advlib.train.train, same model, batch 64, Adam lr 0.01.

Textbook: ``torchvision.datasets.MNIST(root='data')`` with ``Compose([Resize(32), ToTensor(), Normalize(0.5,
0.5)])`` (PIL resize per image per epoch), a shuffling DataLoader (num_workers 0, and 2 in case it helps), and
the plain eager step: zero_grad, forward, cross-entropy, backward, Adam step, ``loss.item()``.
advlib: the whole ``advlib.train.train`` call on the pre-transformed tensors (model creation and its end-of-epoch
evaluation on 64 images included).

Both run the same number of optimizer steps from a fresh seeded model; images/s = steps * 64 / seconds.
Then each trains one full epoch and reports its test accuracy, so speed is not bought with accuracy.
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


def textbook_loader(ds, num_workers: int, shuffle: bool = True, batch_size: int = BATCH) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(SEED))


def fresh_model() -> tuple[SmallResNet, torch.optim.Optimizer]:
    torch.manual_seed(SEED)
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


def time_textbook(ds, steps: int, repeats: int, num_workers: int, warmup_steps: int = 3) -> dict:
    """Seconds for `steps` steps, timed after warm-up steps on a fresh iterator (workers already started)."""
    seconds = []
    for _ in range(repeats + 1):  # the first run is a warm-up
        model, optimizer = fresh_model()
        batches = iter(textbook_loader(ds, num_workers))
        textbook_steps(model, optimizer, batches, warmup_steps)
        start = time.perf_counter()
        textbook_steps(model, optimizer, batches, steps)
        seconds.append(time.perf_counter() - start)
        del batches  # shuts the workers down
    return summarize(seconds[1:])


def time_advlib(data: MNIST, steps: int, repeats: int) -> dict:
    """Seconds for one advlib.train.train call over steps * 64 images (fresh model each time)."""
    n = steps * BATCH
    subset = MNIST(data.train_x[:n], data.train_y[:n], data.test_x[:BATCH], data.test_y[:BATCH])
    config = TrainConfig(epochs=1, batch_size=BATCH, lr=LR, seed=SEED)
    warm = MNIST(data.train_x[: 5 * BATCH], data.train_y[: 5 * BATCH], data.test_x[:BATCH], data.test_y[:BATCH])
    train(warm, config=config, progress=False)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        train(subset, config=config, progress=False)
        seconds.append(time.perf_counter() - start)
    return summarize(seconds)


def textbook_epoch(root: str, num_workers: int, limit: int | None, test_limit: int | None) -> dict:
    """One epoch of the textbook pipeline from a fresh model, then its test accuracy (textbook evaluation)."""
    ds = textbook_dataset(root, limit=limit)
    model, optimizer = fresh_model()
    start = time.perf_counter()
    loader = textbook_loader(ds, num_workers)
    textbook_steps(model, optimizer, iter(loader), len(loader))
    train_s = time.perf_counter() - start
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in DataLoader(textbook_dataset(root, train=False, limit=test_limit), batch_size=1000):
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return {"train_images": len(ds), "num_workers": num_workers, "seconds": time.perf_counter() - start,
            "train_seconds": train_s, "test_accuracy": 100.0 * correct / total,
            "test_accuracy_ci95": wilson_interval(correct, total)}


def advlib_epoch(data: MNIST, limit: int | None, test_limit: int | None):
    """One epoch of advlib.train.train (its own end-of-epoch test evaluation included). Returns (dict, model)."""
    data = MNIST(data.train_x[:limit], data.train_y[:limit], data.test_x[:test_limit], data.test_y[:test_limit])
    start = time.perf_counter()
    model, _, history = train(data, config=TrainConfig(epochs=1, batch_size=BATCH, lr=LR, seed=SEED), progress=False)
    seconds = time.perf_counter() - start
    acc = history.test_accuracy[-1]
    k = round(acc * len(data.test_y) / 100)
    return ({"train_images": len(data.train_x), "seconds": seconds, "train_seconds": history.seconds[-1],
             "test_accuracy": acc, "test_accuracy_ci95": wilson_interval(k, len(data.test_y))}, model)


def run(settings: Settings, root: str, data: MNIST, say=print):
    """The training section. Returns (section dict, the advlib model trained for one epoch, or None)."""
    load = [loadavg()]
    steps, images = settings.train_steps, settings.train_steps * BATCH
    start = time.perf_counter()
    ds = textbook_dataset(root)
    textbook_setup_s = time.perf_counter() - start
    textbook = {}
    for workers in (0, 2):
        say(f"  textbook pipeline, num_workers={workers}: {steps} steps x {settings.train_repeats} ...")
        seconds = time_textbook(ds, steps, settings.train_repeats, workers)
        textbook[f"num_workers_{workers}"] = {"seconds": seconds, "images_per_s": rate(seconds, images)}
    best = max(textbook, key=lambda k: textbook[k]["images_per_s"]["median"])
    say(f"  advlib.train.train: {steps} steps x {settings.train_repeats} ...")
    seconds = time_advlib(data, steps, settings.train_repeats)
    advlib = {"seconds": seconds, "images_per_s": rate(seconds, images)}
    load.append(loadavg())
    section = {
        "batch_size": BATCH, "lr": LR, "optimizer": "Adam", "steps": steps, "images_per_run": images,
        "textbook": textbook, "textbook_best": best, "textbook_dataset_setup_s": textbook_setup_s,
        "advlib": advlib,
        "speedup_vs_textbook_best": advlib["images_per_s"]["median"] / textbook[best]["images_per_s"]["median"],
        "speedup_vs_textbook_num_workers_0": (advlib["images_per_s"]["median"]
                                              / textbook["num_workers_0"]["images_per_s"]["median"]),
    }
    model = None
    if settings.full_epoch:
        limit = settings.train_images_for_accuracy
        workers = int(best.rsplit("_", 1)[1])
        say(f"  one epoch each ({limit or 60000} images) for the test accuracy ...")
        tb = textbook_epoch(root, workers, limit, settings.test_images_for_accuracy)
        ad, model = advlib_epoch(data, limit, settings.test_images_for_accuracy)
        section["epoch"] = {"textbook": tb, "advlib": ad,
                            "accuracy_difference_pp": ad["test_accuracy"] - tb["test_accuracy"]}
        load.append(loadavg())
    section["loadavg"] = load
    return section, model
