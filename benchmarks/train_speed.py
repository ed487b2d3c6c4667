"""Training throughput: the textbook pipeline against advlib's, same model, batch 64, Adam lr 0.01.

Textbook: ``torchvision.datasets.MNIST(root='data')`` with ``Compose([Resize(32), ToTensor(), Normalize(0.5,
0.5)])`` (PIL resize per image per epoch), a shuffling DataLoader (num_workers 0, and 2 in case it helps), and
the plain eager step: zero_grad, forward, cross-entropy, backward, Adam step, ``loss.item()``.
advlib: ``advlib.train.train`` on the cached uint8 tensors, with torch's default thread count and with one
thread, and ``advlib.parallel.train_data_parallel`` over two single-thread processes.

Every run trains `steps` optimizer steps from a fresh seeded model and times its own steps: the textbook loop
after 3 warm-up steps (so DataLoader workers are already running), advlib its epoch (History.seconds: the loop
and the end-of-epoch evaluation on 64 test images; the data-parallel processes' start-up is recorded apart).
images/s = steps * 64 / seconds.

Then one epoch of the textbook pipeline and of advlib's two pipelines for a few seeds, so speed is not bought with
accuracy. Like with like: at one seed both start from the same weights (torch.manual_seed, then SmallResNet()) and
draw the same order (DataLoader's RandomSampler and advlib.data.batches both take torch.randperm of a generator
seeded alike), BatchNorm's statistics are recomputed on the same training images for every model (after one
epoch the running averages lag the weights: one textbook seed once fell to 42% without it), and every model is
evaluated on the same test tensors. Differences are paired by seed.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from advlib.data import MNIST
from advlib.metrics import accuracy, wilson_interval
from advlib.model import SmallResNet
from advlib.parallel import Exchange, exchanged_numel, train_data_parallel
from study.jobs import BN_CALIBRATION_IMAGES
from advlib.train import TrainConfig, recalibrate_batchnorm, train

from benchmarks.common import Settings, loadavg, per_second, summarize, time_interleaved

BATCH, LR, SEED = 64, 0.01, 0  # the original report's hyperparameters
PARALLEL = "data_parallel_2x1"


def subset(data: MNIST, n_train: int | None, n_test: int | None) -> MNIST:
    return MNIST(data.train_u8[:n_train], data.train_y[:n_train], data.test_x[:n_test], data.test_y[:n_test])


def textbook_dataset(root: str, train: bool = True, limit: int | None = None):
    from torchvision import datasets, transforms as T

    transform = T.Compose([T.Resize(32), T.ToTensor(), T.Normalize(0.5, 0.5)])
    ds = datasets.MNIST(root=root, train=train, download=False, transform=transform)
    return Subset(ds, range(limit)) if limit is not None else ds


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


def textbook_train(ds, steps: int | None, num_workers: int, seed: int = SEED, warmup_steps: int = 0):
    """`steps` textbook steps (None: one epoch) from a fresh seeded model, timed after `warmup_steps` on the same
    iterator (so its workers, if any, are already running). Returns (model, seconds)."""
    torch.manual_seed(seed)
    model = SmallResNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(seed))
    batches = iter(loader)
    textbook_steps(model, optimizer, batches, warmup_steps)
    start = time.perf_counter()
    textbook_steps(model, optimizer, batches, len(loader) - warmup_steps if steps is None else steps)
    seconds = time.perf_counter() - start
    del batches  # shuts the workers down
    return model, seconds


def advlib_train(data: MNIST, seed: int = SEED, threads: int | None = None, parallel: bool = False,
                 waits: list | None = None) -> tuple:
    """advlib.train.train (with `threads` torch threads; None: as it is) or, with parallel, train_data_parallel over
    2 single-thread processes: one epoch over data. Returns (model, History, wall seconds of the call).
    waits: with parallel, gets the mean over the processes of the fraction of its epoch each spent waiting at the
    steps' gradient exchanges for the other (advlib.parallel's lock-step)."""
    config = TrainConfig(epochs=1, batch_size=BATCH, lr=LR, seed=seed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    start = time.perf_counter()
    try:
        if parallel:
            with tempfile.TemporaryDirectory(prefix="advlib-bench-dp-") as tmp:
                model, _, history = train_data_parallel(data, config=config, world_size=2, progress=False,
                                                        state_dir=tmp)
                if waits is not None:
                    states = [torch.load(path, weights_only=True) for path in sorted(Path(tmp).glob("rank*.pt"))]
                    waits.append(statistics.mean(st["exchange_wait_s"] / st["history"]["seconds"][0]
                                                 for st in states))
        else:
            model, _, history = train(data, config=config, progress=False)
    finally:
        torch.set_num_threads(before)
    return model, history, time.perf_counter() - start


def run(settings: Settings, root: str, data: MNIST, say=print):
    """The training section. Returns (section dict, advlib.train's model trained for one epoch on seed 0)."""
    load = [loadavg()]
    steps = settings.train_steps
    ds = textbook_dataset(root)
    startup = []  # the data-parallel processes' start-up (forkserver, imports), outside the timing
    waits = []  # the data-parallel processes' time waiting for each other, as a fraction of their epoch

    def advlib_run(n: int = steps, **how) -> float:
        _, history, wall = advlib_train(subset(data, n * BATCH, BATCH), waits=waits, **how)
        if how.get("parallel"):
            startup.append(wall - history.seconds[0])
        return history.seconds[0]

    runs = {"textbook_num_workers_0": lambda n=steps: textbook_train(ds, n, 0, warmup_steps=3)[1],
            "textbook_num_workers_2": lambda n=steps: textbook_train(ds, n, 2, warmup_steps=3)[1],
            "advlib": advlib_run,
            "advlib_1_thread": lambda n=steps: advlib_run(n, threads=1),
            PARALLEL: lambda n=steps: advlib_run(n, parallel=True)}
    say(f"  {', '.join(runs)}: a short warm-up, then {steps} steps, {settings.train_repeats} interleaved rounds ...")
    for fn in runs.values():
        fn(min(10, steps))
    startup.clear()  # the warm-up's
    waits.clear()
    seconds, _ = time_interleaved(runs, settings.train_repeats, warmup=False, self_timed=True)
    pipelines = {name: {"seconds": s, "images_per_s": per_second(s, steps * BATCH)} for name, s in seconds.items()}
    pipelines[PARALLEL]["startup_seconds"] = summarize(startup)
    pipelines[PARALLEL]["exchange_wait_fraction"] = summarize(waits)
    pipelines[PARALLEL]["exchange_seconds"] = exchange_seconds()
    rate = {name: p["images_per_s"]["median"] for name, p in pipelines.items()}
    textbook_best = max((k for k in rate if k.startswith("textbook")), key=rate.get)
    advlib_best = max((k for k in rate if not k.startswith("textbook")), key=rate.get)
    section = {"batch_size": BATCH, "lr": LR, "optimizer": "Adam", "steps": steps, "images_per_run": steps * BATCH,
               "torch_threads": torch.get_num_threads(), "pipelines": pipelines, "textbook_best": textbook_best,
               "advlib_best": advlib_best, "speedup": rate[advlib_best] / rate[textbook_best],
               "parallel_speedup_vs_1_thread": rate[PARALLEL] / rate["advlib_1_thread"]}
    judged = PARALLEL if advlib_best == PARALLEL else "advlib"  # advlib.train with any thread count
    section["epoch"], model = one_epoch_accuracy(settings, root, data, judged, int(textbook_best.rsplit("_", 1)[1]),
                                                 say)
    load.append(loadavg())
    section["loadavg"] = load
    return section, model


def _exchange_worker(rank: int, exchange: Exchange, rounds: int, out: str) -> None:
    torch.set_num_threads(1)
    flat = torch.ones(exchange.rows.shape[-1])
    for _ in range(10):  # untimed: the two processes start at different moments
        exchange.sum(rank, flat)
    start = time.perf_counter()
    for _ in range(rounds):
        exchange.sum(rank, flat)
    if rank == 0:
        Path(out).write_text(str((time.perf_counter() - start) / rounds))


def exchange_seconds(rounds: int = 1000) -> float:
    """Seconds per gradient exchange of advlib.parallel between 2 processes doing nothing else (the model's
    gradients and BatchNorm statistics, back to back `rounds` times): the lock-step's cost without any waiting."""
    context = torch.multiprocessing.get_context("forkserver")
    exchange = Exchange(2, exchanged_numel(SmallResNet()), context)
    with tempfile.TemporaryDirectory(prefix="advlib-bench-exchange-") as tmp:
        out = str(Path(tmp) / "seconds")
        torch.multiprocessing.start_processes(_exchange_worker, args=(exchange, rounds, out), nprocs=2,
                                              start_method="forkserver")
        return float(Path(out).read_text())


def one_epoch_accuracy(settings: Settings, root: str, data: MNIST, judged: str, num_workers: int, say=print):
    """One epoch of the textbook pipeline, advlib.train and the data-parallel run for seeds 0..epoch_seeds-1; test
    accuracy after recomputing every model's BatchNorm statistics on the same images. The comparison judged is
    `judged`'s ("advlib" or PARALLEL) against the textbook's. Returns (dict, advlib.train's seed-0 model)."""
    limit, test_limit = settings.train_images_for_accuracy, settings.test_images_for_accuracy
    data = subset(data, limit, test_limit)
    ds = textbook_dataset(root, limit=limit)
    calibration = data.train_u8[:BN_CALIBRATION_IMAGES]
    runs = {"textbook": [], "advlib": [], PARALLEL: []}
    seed0_model = None
    for seed in range(settings.epoch_seeds):
        say(f"  one epoch of each ({len(data.train_y):,} images), seed {seed}, for the test accuracy ...")
        model, seconds = textbook_train(ds, None, num_workers, seed)
        runs["textbook"].append((model, seconds))
        model, history, _ = advlib_train(data, seed)
        runs["advlib"].append((model, history.seconds[0]))
        seed0_model = model if seed == 0 else seed0_model
        model, history, _ = advlib_train(data, seed, parallel=True)
        runs[PARALLEL].append((model, history.seconds[0]))
    out = {"train_images": len(data.train_y), "test_images": len(data.test_y),
           "calibration_images": len(calibration), "judged": judged}
    for name, trained in runs.items():
        out[name] = []
        for seed, (model, seconds) in enumerate(trained):
            recalibrate_batchnorm(model, calibration)
            acc = accuracy(model, data.test_x, data.test_y)
            k = round(acc * len(data.test_y) / 100)
            out[name].append({"seed": seed, "seconds": seconds, "test_accuracy": acc,
                              "test_accuracy_ci95": wilson_interval(k, len(data.test_y))})
    accuracies = {name: [r["test_accuracy"] for r in out[name]] for name in runs}
    out.update(accuracy_comparison(accuracies[judged], accuracies["textbook"]))
    return out, seed0_model


def accuracy_comparison(advlib: list[float], textbook: list[float]) -> dict:
    """Test accuracies (%) of the same seeds, paired: the mean difference advlib minus textbook (percentage points)
    and its standard error from the spread of the per-seed differences (None with a single seed)."""
    diffs = [a - t for a, t in zip(advlib, textbook, strict=True)]
    n = len(diffs)
    return {"seeds": n, "advlib_mean": statistics.fmean(advlib), "textbook_mean": statistics.fmean(textbook),
            "accuracy_difference_pp": statistics.fmean(diffs),
            "difference_se_pp": statistics.stdev(diffs) / n**0.5 if n >= 2 else None}
