"""Training: the original report's recipe (Adam, lr 0.01, batch 64, 3 epochs, cross-entropy, CPU) with a seed,
a progress bar, a per-step history and, optionally, adversarial training.

Adversarial training (``TrainConfig.adversarial``):
- "fgsm_rs": FGSM from a uniform random start in the eps-ball with step 1.25 * eps ("Fast is better than free",
  Wong, Rice & Kolter 2020); one extra forward/backward per batch.
- "pgd": PGD from a random start (Madry et al. 2017), ``adv_pgd_steps`` steps of 2.5 * eps / steps; stronger, slower.
Each epoch then also records PGD-10 accuracy on a small fixed held-out batch, to catch catastrophic overfitting
(FGSM training whose PGD accuracy collapses while FGSM accuracy stays high).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advlib.attacks import check_eps, eval_mode, input_gradient, pgd
from advlib.data import MNIST, batches
from advlib.metrics import accuracy
from advlib.model import ResNetConfig, SmallResNet

ADVERSARIAL_MODES = (None, "fgsm_rs", "pgd")


@dataclass
class TrainConfig:
    epochs: int = 3  # the original report's budget
    batch_size: int = 64
    lr: float = 0.01  # Adam
    seed: int = 0  # fixes initialisation, shuffling and attack noise
    device: str = "cpu"  # "cpu" or "cuda"
    adversarial: str | None = None  # None (standard), "fgsm_rs" or "pgd"
    adv_eps: float = 0.3  # training eps, normalized units (0.15 in [0, 1] pixel units)
    adv_pgd_steps: int = 7  # PGD steps when adversarial == "pgd"
    adv_check_size: int = 512  # held-out test images for the per-epoch PGD check

    def __post_init__(self):
        if self.adversarial not in ADVERSARIAL_MODES:
            raise ValueError(f"adversarial must be one of {ADVERSARIAL_MODES}, got {self.adversarial!r}")
        for name in ("epochs", "batch_size", "adv_pgd_steps", "adv_check_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        check_eps(self.adv_eps, "adv_eps")
        resolve_device(self.device)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class History:
    """What happened during training. Rates are percentages; losses are mean cross-entropy."""

    step_loss: list[float] = field(default_factory=list)  # every optimizer step
    epoch_loss: list[float] = field(default_factory=list)  # mean training loss per epoch
    train_accuracy: list[float] = field(default_factory=list)  # on the (possibly adversarial) training batches
    test_accuracy: list[float] = field(default_factory=list)  # clean test accuracy after each epoch
    pgd_check_accuracy: list[float] = field(default_factory=list)  # adversarial training only
    seconds: list[float] = field(default_factory=list)  # wall time per epoch
    kept_epoch: int | None = None  # adversarial training: the epoch (1-based) whose weights were kept

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
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


def adversarial_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
                      generator: torch.Generator) -> torch.Tensor:
    """The training inputs for one batch under config.adversarial (x itself for standard training)."""
    eps = config.adv_eps
    if config.adversarial == "fgsm_rs":
        # Wong et al. 2020: uniform start in the eps-ball, one FGSM step of 1.25 eps, projected back.
        delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
        x0 = (x + delta).clamp(-1, 1)
        with eval_mode(model):
            grad = input_gradient(model, x0, y)
        x_adv = x0 + 1.25 * eps * grad.sign()
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(-1, 1).detach()
    if config.adversarial == "pgd":
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        return pgd(model, x, y, eps, steps=config.adv_pgd_steps, random_start=True, seed=seed)
    return x


def train(data: MNIST, model_config: ResNetConfig = ResNetConfig(), config: TrainConfig = TrainConfig(),
          progress: bool = True) -> tuple[SmallResNet, torch.optim.Optimizer, History]:
    """Train a fresh SmallResNet on data.train_*, evaluating on data.test_* after each epoch.

    Same seed, same machine and thread count (torch.get_num_threads()) -> identical weights and history.

    Returns:
        (model in eval mode, its Adam optimizer, History)
    """
    from tqdm.auto import tqdm
    import time

    device = resolve_device(config.device)
    seed_everything(config.seed)
    # With one CPU thread, channels_last weights (so channels_last activations) make oneDNN's 8-16-channel
    # convolutions faster: 36 vs 47 ms per batch-64 step measured here; with two threads they are slower (32-40 vs
    # 30 ms), so it is used only for one thread. Same maths, another float rounding order; deterministic. Undone
    # before returning, so the returned model computes exactly like one loaded from a checkpoint.
    model = SmallResNet(model_config).to(device)
    if device.type == "cpu" and torch.get_num_threads() == 1:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    shuffle_gen = torch.Generator().manual_seed(config.seed)
    attack_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    check_x, check_y = test_x[-config.adv_check_size:], test_y[-config.adv_check_size:]
    history = History()
    best_state = None  # adversarial training keeps the epoch with the best PGD check accuracy
    steps_per_epoch = -(-len(train_x) // config.batch_size)
    for epoch in range(config.epochs):
        start = time.perf_counter()
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(batches(train_x, train_y, config.batch_size, shuffle=True, generator=shuffle_gen),
                   total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress)
        for x, y in bar:
            x = adversarial_batch(model, x, y, config, attack_gen)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step_loss = loss.item()
            history.step_loss.append(step_loss)
            loss_sum += step_loss * len(x)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(x)
            if len(history.step_loss) % 50 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.2f}%")
        history.epoch_loss.append(loss_sum / seen)
        history.train_accuracy.append(100.0 * correct / seen)
        history.test_accuracy.append(accuracy(model, test_x, test_y))
        if config.adversarial is not None:
            x_check = pgd(model, check_x, check_y, config.adv_eps, steps=10, seed=config.seed)
            history.pgd_check_accuracy.append(accuracy(model, x_check, check_y))
            if history.pgd_check_accuracy[-1] >= max(history.pgd_check_accuracy):
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                history.kept_epoch = epoch + 1
        history.seconds.append(time.perf_counter() - start)
        if progress:
            extra = f", PGD-10 check {history.pgd_check_accuracy[-1]:.2f}%" if history.pgd_check_accuracy else ""
            print(f"epoch {epoch + 1}: loss {history.epoch_loss[-1]:.4f}, train acc {history.train_accuracy[-1]:.2f}%, "
                  f"test acc {history.test_accuracy[-1]:.2f}%{extra}")
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

    x: (N, 1, 32, 32) in [-1, 1], typically the training images. Each BatchNorm's running mean and variance become
    the plain average of its per-batch mean and (unbiased) variance over the batches of x; with one batch
    (batch_size >= N) they are exactly x's statistics. The weights are untouched; the model is left in
    eval mode. Useful after very short training (about 100 Adam steps at lr 0.01), where the running averages
    (momentum 0.1) lag the fast-moving weights and eval-mode accuracy swings between ~15% and ~85% with the seed
    or the thread count; recomputed statistics give a stable result. The tests' small models use it.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size])
    for bn in norms:
        bn.momentum = 0.1
    model.eval()
