"""Training: the original report's recipe (Adam, lr 0.01, batch 64, 3 epochs, cross-entropy) with a seed,
a progress bar, a per-step history and, optionally, adversarial training.

:func:`train` composes the parts: :func:`train_epoch` (one shuffled pass of Adam steps), :func:`evaluate` (clean
accuracy, after each epoch on the test images: Figure 6) and, for adversarial training, :func:`pgd_check`.

Adversarial training (``TrainConfig.adversarial``):
- "fgsm_rs": FGSM from a uniform random start in the eps-ball with step 1.25 * eps ("Fast is better than free",
  Wong, Rice & Kolter 2020); one extra forward/backward per batch.
- "pgd": PGD from a random start (Madry et al. 2017), ``adv_pgd_steps`` steps of 2.5 * eps / steps; stronger, slower.
It trains on the first five sixths of the training images (MNIST's classic 50,000 of 60,000) and holds out the
rest as validation images: after each epoch, PGD-10 accuracy on ``adv_check_size`` of them catches catastrophic
overfitting (FGSM training whose PGD accuracy collapses while FGSM accuracy stays high), and the epoch with the best
check accuracy is kept. Model selection never sees a test image. ``check_attack="apgd-ce"`` checks with APGD-CE
instead (the official code, ``advlib[autoattack]``), whose adaptive step also sees gradients that fixed-step PGD
finds masked.
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advlib.attacks import check_eps, eval_mode, input_gradient, predict
from advlib.iterative import pgd
from advlib.data import BOUNDS, MNIST, TRAIN_SIZE, VALIDATION_SIZE, SplitNotLoaded, as_float, batches
from advlib.model import ResNetConfig, build_model

ADVERSARIAL_MODES = (None, "fgsm_rs", "pgd")
ATTACK_BN_MODES = ("eval", "train")
LR_SCHEDULES = ("constant", "cyclic")
CHECK_ATTACKS = ("pgd", "apgd-ce")
CYCLIC_PEAK = 0.4  # the cyclic schedule peaks 2/5 of the way through training (Wong et al. 2020)
PROGRESS_EVERY = 50  # steps between progress bar updates (each one is a message to a notebook's front end)
EVAL_CHUNK = 10_000  # images normalized at a time by evaluate (a float chunk of 40 MB)


@dataclass
class TrainConfig:
    epochs: int = 3  # the original report's budget
    batch_size: int = 64
    lr: float = 0.01  # Adam
    seed: int = 0  # fixes initialisation, shuffling and attack noise
    device: str = "cpu"  # "cpu" or "cuda"
    adversarial: str | None = None  # None (standard), "fgsm_rs" or "pgd"
    adv_eps: float = 0.3  # training eps, in the units of the data's bounds (study: normalized, 0.3 = 0.15 px)
    adv_pgd_steps: int = 7  # PGD steps when adversarial == "pgd"
    adv_check_size: int = 512  # held-out validation images (training split) for the per-epoch PGD check
    lr_schedule: str = "constant"  # "constant" (the original report) or "cyclic" (Wong et al. 2020, see step_schedule)
    eps_ramp_epochs: float = 0.0  # adversarial eps grows linearly from 0 over this many epochs (0: full eps at once)
    adv_holdout: int | None = None  # held-out training images (the last ones); None: a sixth (50,000 + 10,000)
    check_attack: str = "pgd"  # the per-epoch check: "pgd" (fixed steps, check_step_sizes) or "apgd-ce" (APGD-CE,
    # the official code, adaptive steps: sees gradients that fixed-step PGD finds masked; needs advlib[autoattack])
    check_steps: int = 10  # steps of the per-epoch check
    check_step_sizes: tuple[float, ...] = ()  # one check restart per entry, step = entry * adv_eps (a large first
    # step sees masked gradients); an image counts only if it survives every restart. (): one PGD run, pgd's step
    attack_bn: str = "eval"  # training attack computed with BatchNorm's running statistics ("eval") or the batch's
    clamp_start: bool = True  # FGSM-RS: clip the random start to the bounds before its gradient (False: Wong et
    # al.'s code, the gradient at the unclipped start)

    def __post_init__(self):
        if self.adversarial not in ADVERSARIAL_MODES:
            raise ValueError(f"adversarial must be one of {ADVERSARIAL_MODES}, got {self.adversarial!r}")
        for name in ("epochs", "batch_size", "adv_pgd_steps", "adv_check_size", "check_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 <= self.eps_ramp_epochs <= self.epochs:
            raise ValueError(f"eps_ramp_epochs must lie in [0, epochs={self.epochs}], got {self.eps_ramp_epochs}")
        check_eps(self.adv_eps, "adv_eps")
        if self.attack_bn not in ATTACK_BN_MODES:
            raise ValueError(f"attack_bn must be one of {ATTACK_BN_MODES}, got {self.attack_bn!r}")
        if self.adv_holdout is not None and (not isinstance(self.adv_holdout, int) or self.adv_holdout < 1):
            raise ValueError(f"adv_holdout must be None (a sixth of the images) or a positive integer, "
                             f"got {self.adv_holdout!r}")
        steps = self.check_step_sizes
        if (not isinstance(steps, (tuple, list)) or not all(isinstance(f, (int, float)) and not isinstance(f, bool)
                                                            and 0 < f < float("inf") for f in steps)):
            raise ValueError(f"check_step_sizes must be a tuple of positive fractions of adv_eps (one check restart "
                             f"each; () for pgd's default step), got {steps!r}")
        self.check_step_sizes = tuple(float(f) for f in steps)
        if self.check_attack not in CHECK_ATTACKS:
            raise ValueError(f"check_attack must be one of {CHECK_ATTACKS}, got {self.check_attack!r}")
        if self.check_attack == "apgd-ce" and self.check_step_sizes:
            raise ValueError("check_step_sizes apply to check_attack='pgd' only (APGD chooses its own steps); "
                             f"use check_step_sizes=() with check_attack='apgd-ce', got {self.check_step_sizes!r}")
        if self.attack_bn == "train" and self.adversarial == "pgd":
            raise ValueError("attack_bn='train' applies to FGSM-RS training only (PGD attacks in eval mode); "
                             f"use attack_bn='eval' with adversarial={self.adversarial!r}")
        resolve_device(self.device)

    def to_dict(self) -> dict:
        return {**asdict(self), "check_step_sizes": list(self.check_step_sizes)}


@dataclass
class History:
    """What happened during training. Rates are percentages; losses are mean cross-entropy. Image ranges such as
    "train[0:50000]" index the training split of the MNIST given to train()."""

    step_loss: list[float] = field(default_factory=list)  # every optimizer step
    epoch_loss: list[float] = field(default_factory=list)  # mean training loss per epoch
    train_accuracy: list[float] = field(default_factory=list)  # on the (possibly adversarial) training batches
    test_accuracy: list[float] = field(default_factory=list)  # clean test accuracy after each epoch (reported only)
    pgd_check_accuracy: list[float] = field(default_factory=list)  # adversarial training only
    seconds: list[float] = field(default_factory=list)  # wall time per epoch
    kept_epoch: int | None = None  # adversarial training: the epoch (1-based) whose weights were kept
    trained_on: str | None = None  # the training images, e.g. "train[0:60000]"
    selection: str | None = None  # adversarial training: the held-out images of the PGD check, "train[50000:50512]"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        """Tolerant of other versions: unknown keys are ignored, missing ones take their defaults."""
        return cls(**{k: list(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()
                      if k in cls.__dataclass_fields__})


def resolve_device(device: str) -> torch.device:
    """"cpu", "cuda" or "cuda:N"; a clear error when CUDA is asked for but not available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_schedule(config: TrainConfig, step: int, total_steps: int) -> tuple[float, float]:
    """(learning rate, adversarial eps in normalized units) for optimizer step ``step`` (0-based) of ``total_steps``.

    lr: config.lr at every step ("constant"), or "cyclic": linear from 0 up to config.lr at 2/5 of the steps, then
    linear down to 0 at the last (Wong et al. 2020's one-cycle schedule, per step).
    eps: config.adv_eps, or during the first config.eps_ramp_epochs epochs a linear ramp from 0 up to it (the
    small model collapses when it meets the full eps at once).
    """
    t = step / max(1, total_steps)
    lr = config.lr
    if config.lr_schedule == "cyclic":
        lr = config.lr * (t / CYCLIC_PEAK if t < CYCLIC_PEAK else (1 - t) / (1 - CYCLIC_PEAK))
    ramp = config.eps_ramp_epochs / config.epochs
    eps = config.adv_eps * (min(1.0, t / ramp) if ramp > 0 else 1.0)
    return lr, eps


def adversarial_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
                      generator: torch.Generator | None, eps: float | None = None,
                      bounds: Sequence[float] = BOUNDS) -> torch.Tensor:
    """The training inputs for one batch under config.adversarial (x itself for standard training).

    x: (B, C, H, W) float in ``bounds`` (default the study's [-1, 1]); generator: draws the random starts, on x's
    device (None: the global RNG); eps: this step's eps in the units of x (default config.adv_eps; see
    step_schedule). Returns (B, C, H, W) in bounds within eps of x, without gradient history."""
    eps = config.adv_eps if eps is None else eps
    if config.adversarial == "fgsm_rs":
        # Wong et al. 2020: uniform start in the eps-ball, one FGSM step of 1.25 eps, projected back.
        delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
        x0 = (x + delta).clamp(*bounds) if config.clamp_start else x + delta
        # "eval": BatchNorm's running statistics, as at test time; "train": the batch's (and the running statistics
        # move with the attack's batch too, as in code that attacks in train mode)
        with eval_mode(model) if config.attack_bn == "eval" else contextlib.nullcontext():
            grad = input_gradient(model, x0, y, check_labels=False)  # MNIST's labels; no device synchronisation
        x_adv = x0 + 1.25 * eps * grad.sign()
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(*bounds).detach()
    if config.adversarial == "pgd":
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=x.device).item())
        return pgd(model, x, y, eps, bounds=bounds, steps=config.adv_pgd_steps, random_start=True, seed=seed)
    return x


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                config: TrainConfig, generator: torch.Generator, attack_generator: torch.Generator | None = None,
                *, progress: bool = False, desc: str = "", replica=None, first_step: int = 0,
                total_steps: int | None = None, bounds: Sequence[float] = BOUNDS) -> tuple[list[float], float, float]:
    """One shuffled pass over (x, y): an optimizer step per batch of config.batch_size (adversarial batches when
    config.adversarial is set). The model is left in train mode.

    Args:
        x: (N, C, H, W) uint8 pixels 0..255 (converted per batch to floats in ``bounds``, see data.batches) or
            float in bounds (default the study's [-1, 1]); y: (N,) int64. Both on the model's device.
        generator: draws the shuffling order (CPU). attack_generator: the random starts of adversarial training,
            on the model's device.
        replica: data-parallel training (advlib.parallel.Replica): each batch is cut to this process's share, its
            loss weighted by the share's fraction, and replica.synchronize sums the gradients over the processes
            (and averages BatchNorm's statistics) before the step;
            the losses and accuracy returned are then this process's parts (summed over the processes: the
            whole batch's).
        first_step, total_steps: where this epoch's steps lie in the whole training, for config's learning-rate
            schedule and eps ramp (step_schedule); total_steps None: this epoch is the whole training.
    Returns:
        (the loss of every step, the epoch's mean loss per image, training accuracy in percent on the batches
        trained on). Losses and counts stay on the device until the end of the epoch: one synchronisation.
    """
    from tqdm.auto import tqdm

    steps = -(-len(x) // config.batch_size)
    losses = torch.empty(steps, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    scheduled = config.lr_schedule != "constant" or config.eps_ramp_epochs > 0
    eps = None
    model.train()
    with tqdm(total=steps, desc=desc, disable=not progress) as bar:
        for i, (xb, yb) in enumerate(batches(x, y, config.batch_size, shuffle=True, generator=generator,
                                             bounds=bounds)):
            weight = 1.0
            if replica is not None:
                xb, yb, weight = replica.share(xb, yb)
            if scheduled:
                lr, eps = step_schedule(config, first_step + i, total_steps or steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
            xb = adversarial_batch(model, xb, yb, config, attack_generator, eps, bounds)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb) * weight
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if replica is not None:
                replica.synchronize(model)
            optimizer.step()
            losses[i] = loss.detach()
            correct += (logits.argmax(1) == yb).sum()
            if (i + 1) % PROGRESS_EVERY == 0 or i + 1 == steps:
                bar.update(i + 1 - bar.n)
    step_loss = losses.tolist()
    sizes = [min(config.batch_size, len(x) - start) for start in range(0, len(x), config.batch_size)]
    epoch_loss = sum(loss * n for loss, n in zip(step_loss, sizes)) / len(x)
    return step_loss, epoch_loss, 100.0 * correct.item() / len(x)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bounds: Sequence[float] = BOUNDS) -> float:
    """Clean accuracy in percent: one eval-mode pass without gradients.

    x: (N, C, H, W) float in ``bounds``, or uint8 pixels converted EVAL_CHUNK images at a time (the whole uint8
    training set is never copied to floats); y: (N,) int64, on the model's device."""
    correct = sum((predict(model, xb)[0] == yb).sum().item() for xb, yb in batches(x, y, EVAL_CHUNK, bounds=bounds))
    return 100.0 * correct / len(y)


def pgd_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
              bounds: Sequence[float] = BOUNDS) -> float:
    """Accuracy in percent on held-out images x (float in ``bounds``) under the check attack at config.adv_eps,
    seeded with config.seed. config.check_attack "pgd": PGD-config.check_steps, one run with pgd's default step
    (2.5 eps / steps), or one restart per entry of config.check_step_sizes (step = entry * eps, seed config.seed +
    restart), an image counting as robust only if it survives every restart. "apgd-ce": APGD-CE with
    config.check_steps steps (:func:`advlib.apgd.apgd_ce`)."""
    if config.check_attack == "apgd-ce":
        from advlib.apgd import apgd_ce

        x_adv = apgd_ce(model, x, y, config.adv_eps, bounds=bounds, steps=config.check_steps, seed=config.seed)
        return 100.0 * (predict(model, x_adv)[0] == y).sum().item() / len(y)
    steps = config.check_step_sizes or (None,)
    robust = torch.ones(len(y), dtype=torch.bool, device=y.device)
    for r, fraction in enumerate(steps):
        step_size = None if fraction is None else fraction * config.adv_eps
        x_adv = pgd(model, x, y, config.adv_eps, bounds=bounds, steps=config.check_steps, step_size=step_size,
                    seed=config.seed + r)
        robust &= predict(model, x_adv)[0] == y
    return 100.0 * robust.sum().item() / len(y)


def train(data: MNIST, model_config=ResNetConfig(), config: TrainConfig = TrainConfig(),
          progress: bool = True, replica=None) -> tuple[nn.Module, torch.optim.Optimizer, History]:
    """Train a fresh model of ``model_config``'s architecture (a ResNetConfig: SmallResNet, the default; a
    SmallCNNConfig: SmallCNN) on data's training split, its images in data.bounds (eps in the same units); clean
    test accuracy after each epoch when data.test_x is loaded (reported only, never used to choose anything).

    Standard training uses every training image. Adversarial training holds out the last config.adv_holdout
    images (default a sixth: MNIST's classic 10,000 validation images of 60,000, see data.MNIST.split_validation)
    and keeps the epoch with the best PGD check accuracy (:func:`pgd_check`) on the first config.adv_check_size of
    them. History.trained_on and History.selection say which images.

    Same seed, same machine and thread count (torch.get_num_threads()) -> identical weights and history.
    replica: one process of data-parallel training (advlib.parallel.train_data_parallel), passed to train_epoch.

    Returns:
        (model in eval mode, its Adam optimizer, History)
    """
    if data.train_u8 is None:
        raise SplitNotLoaded("train() needs the training split: load it with load_mnist(root, splits=(\"train\", "
                             "\"test\"))")
    device = resolve_device(config.device)
    seed_everything(config.seed)
    history = History()
    check = None
    n = len(data.train_y)
    if config.adversarial is not None:
        n_val = max(1, n * VALIDATION_SIZE // TRAIN_SIZE) if config.adv_holdout is None else config.adv_holdout
        if n_val >= n:
            raise ValueError(f"adv_holdout={n_val} leaves no training image of {n}")
        data, val_x, val_y = data.split_validation(n_val)
        k = min(config.adv_check_size, n_val)
        check = (val_x[:k].to(device), val_y[:k].to(device))
        history.selection = f"train[{n - n_val}:{n - n_val + k}]"
    train_x, train_y = data.train_u8.to(device), data.train_y.to(device)  # uint8, normalized per batch
    history.trained_on = f"train[0:{len(train_y)}]"
    test = None if data.test_x is None else (data.test_x.to(device), data.test_y.to(device))

    bounds = data.bounds
    size = getattr(model_config, "image_size", None)  # a SmallCNN's input size is fixed by its first linear layer
    shape = (data.train_u8 if data.train_u8 is not None else data.test_x).shape
    if size is not None and tuple(shape[-2:]) != (size, size):
        raise ValueError(f"{type(model_config).__name__}(image_size={size}) cannot take the data's {shape[-2]}x"
                         f"{shape[-1]} images: load them with load_dataset(..., image_size={size}) or set image_size")
    model = build_model(model_config).to(device)
    if device.type == "cpu" and torch.get_num_threads() == 1:
        # oneDNN's convolutions of these narrow layers run faster on channels_last with one thread (not with more;
        # measured by benchmarks.profile_training). Same maths, another rounding order; undone before returning,
        # so the returned model computes exactly like one loaded from a checkpoint.
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    shuffle_gen = torch.Generator().manual_seed(config.seed)
    attack_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    best_state = None
    steps_per_epoch = -(-len(train_y) // config.batch_size)
    for epoch in range(config.epochs):
        start = time.perf_counter()
        step_loss, epoch_loss, train_acc = train_epoch(model, optimizer, train_x, train_y, config, shuffle_gen,
                                                       attack_gen, progress=progress, replica=replica,
                                                       desc=f"epoch {epoch + 1}/{config.epochs}",
                                                       first_step=epoch * steps_per_epoch,
                                                       total_steps=config.epochs * steps_per_epoch, bounds=bounds)
        history.step_loss += step_loss
        history.epoch_loss.append(epoch_loss)
        history.train_accuracy.append(train_acc)
        if test is not None:
            history.test_accuracy.append(evaluate(model, *test, bounds=bounds))
        if check is not None:
            history.pgd_check_accuracy.append(pgd_check(model, *check, config, bounds))
            if history.pgd_check_accuracy[-1] >= max(history.pgd_check_accuracy):
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                history.kept_epoch = epoch + 1
        history.seconds.append(time.perf_counter() - start)
        if progress:
            print(f"epoch {epoch + 1}: loss {epoch_loss:.4f}, train acc {train_acc:.2f}%"
                  + (f", test acc {history.test_accuracy[-1]:.2f}%" if test is not None else "")
                  + (f", {config.check_attack.upper()}-{config.check_steps} check {history.pgd_check_accuracy[-1]:.2f}%"
                     if check is not None else ""))
    if best_state is not None and history.kept_epoch != config.epochs:
        # Catastrophic overfitting (Wong et al. 2020): robustness to PGD collapsed in a later epoch. Keep the
        # weights of the epoch with the best PGD check accuracy, as their early stopping does. (The optimizer
        # state stays that of the last step.)
        model.load_state_dict(best_state)
        if progress:
            print(f"PGD check accuracy fell after epoch {history.kept_epoch}: keeping that epoch's weights")
    model.to(memory_format=torch.contiguous_format).eval()
    return model, optimizer, history


def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> None:
    """Replace BatchNorm's running statistics by statistics recomputed over x with the current weights ("precise BN").

    x: (N, 1, 32, 32) float in [-1, 1] or uint8 pixels (normalized per batch), typically the training images, on
    the model's device. Each BatchNorm's running mean and variance become the plain average of its per-batch mean
    and (unbiased) variance over the batches of x; with one batch (batch_size >= N) they are exactly x's
    statistics. The weights are untouched; the model is left in eval mode. Useful after very short training (about
    100 Adam steps at lr 0.01), where the running averages (momentum 0.1) lag the fast-moving weights and eval-mode
    accuracy swings between ~15% and ~85% with the seed or the thread count; recomputed statistics give a stable
    result. The tests' small models use it.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            model(as_float(x[start : start + batch_size]))
    for bn in norms:
        bn.momentum = 0.1
    model.eval()
