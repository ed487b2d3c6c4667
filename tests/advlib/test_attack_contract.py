"""The attack contract on any image classifier (issue 26): advlib's exported attacks on three unrelated models,

- torchvision's ResNet-18 with 100 classes on (N, 3, 32, 32) images in [0, 1] (the default bounds),
- a LeNet on (N, 1, 28, 28) images in [0, 1], defined here (with dropout, so its mode matters),
- the project's SmallResNet on (N, 1, 32, 32) images normalized to [-1, 1] (bounds=advlib.BOUNDS),

each result inside the eps-ball and the bounds, with the input's shape, dtype and device, the model run in eval mode
and left in the mode it was found in; FGSM against an independent autograd oracle; and a ValueError naming the
problem for bad input. Untrained, seeded models and 4 images: no MNIST, a few seconds in all.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import advlib
from advlib.model import SmallResNet

N = 4  # images per batch: a power of two, so a mean loss's gradient is the summed loss's times an exact 1/N


class LeNet(nn.Module):
    """LeNet-5 for 28x28 greyscale images (LeCun et al. 1998, with ReLU and max pooling), plus dropout."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass
class Case:
    model: nn.Module
    x: torch.Tensor  # (N, C, H, W) in bounds, with some pixels exactly at low and at high
    y: torch.Tensor  # (N,) labels
    bounds: tuple[float, float]
    eps: float  # in the units of x
    num_classes: int


def _images(shape: tuple[int, ...], bounds: tuple[float, float], seed: int) -> torch.Tensor:
    low, high = bounds
    x = low + (high - low) * torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    x[:, :, 0, :4] = low  # pixels on the bounds: a clamp to the wrong bounds, or none, moves them out
    x[:, :, 1, :4] = high
    return x


def _build(name: str) -> Case:
    torch.manual_seed(0)
    if name == "resnet18-100":
        model = torchvision.models.resnet18(num_classes=100)
        x, bounds, eps, k = _images((N, 3, 32, 32), (0.0, 1.0), 1), (0.0, 1.0), 8 / 255, 100
        y = torch.tensor([99, 57, 10, 3])  # labels beyond MNIST's 0..9
    elif name == "lenet28":
        model = LeNet()
        x, bounds, eps, k = _images((N, 1, 28, 28), (0.0, 1.0), 2), (0.0, 1.0), 0.1, 10
        y = torch.tensor([9, 0, 4, 7])
    else:
        model = SmallResNet()
        x, bounds, eps, k = _images((N, 1, 32, 32), advlib.BOUNDS, 3), advlib.BOUNDS, 0.3, 10
        y = torch.tensor([1, 8, 5, 0])
    return Case(model.eval(), x, y, bounds, eps, k)


MODELS = ("resnet18-100", "lenet28", "smallresnet-bounds(-1,1)")


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    return {name: _build(name) for name in MODELS}


def _exported_attacks() -> list[str]:
    """Every function of advlib.__all__ from the attack modules (advlib.attacks, advlib.iterative) that takes
    bounds: the attacks."""
    return [name for name in advlib.__all__
            if inspect.isfunction(getattr(advlib, name))
            and getattr(advlib, name).__module__ in ("advlib.attacks", "advlib.iterative")
            and "bounds" in inspect.signature(getattr(advlib, name)).parameters]


ATTACKS = _exported_attacks()


def test_the_exported_attacks():
    assert sorted(ATTACKS) == ["bim", "fgsm", "fgsm_sweep", "pgd"]


def _run(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
         bounds: tuple[float, float]) -> list[torch.Tensor]:
    """The adversarial images the attack makes: one, or for the sweep one per eps (the images it classifies, seen
    by a forward hook, checked to be FGSM's own images and to give the sweep's predictions)."""
    if name == "fgsm":
        return [advlib.fgsm(model, x, y, eps, bounds=bounds)]
    if name == "pgd":
        return [advlib.pgd(model, x, y, eps, bounds=bounds, steps=3, seed=0)]
    if name == "bim":
        return [advlib.bim(model, x, y, eps, bounds=bounds, steps=3)]
    assert name == "fgsm_sweep", f"{name} is exported as an attack: give it a case here"
    eps_list = [eps / 2, eps]
    seen = []
    hook = model.register_forward_pre_hook(
        lambda m, inputs: None if torch.is_grad_enabled() else seen.append(inputs[0].detach().clone()))
    try:
        result = advlib.fgsm_sweep(model, x, y, eps_list, bounds=bounds)
    finally:
        hook.remove()
    assert isinstance(result, advlib.SweepResult) and result.eps == eps_list
    assert result.preds.shape == result.confidences.shape == (len(eps_list), len(x))
    assert result.preds.device == x.device and result.confidences.dtype == x.dtype
    assert len(seen) == len(eps_list)  # one forward pass per eps, nothing else without gradients
    modes = [(m, m.training) for m in model.modules()]
    for i, (e, images) in enumerate(zip(eps_list, seen)):
        assert torch.equal(images, advlib.fgsm(model, x, y, e, bounds=bounds)), f"the sweep's images at eps {e}"
        with torch.no_grad():
            logits = model.eval()(images)
        for m, training in modes:
            m.training = training
        assert torch.equal(result.preds[i], logits.argmax(1))
    return seen


@pytest.mark.parametrize("initially_training", [True, False, "mixed"],
                         ids=["train mode", "eval mode", "train mode around a frozen part"])
@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_contract(cases, attack, model_name, initially_training):
    case = cases[model_name]
    model, x, y, (low, high), eps = case.model, case.x, case.y, case.bounds, case.eps
    x_before = x.clone()
    modes = []
    hook = model.register_forward_pre_hook(lambda m, inputs: modes.append(m.training))
    model.train(initially_training is not False)
    if initially_training == "mixed":  # a wrapper in train mode around a part kept in eval mode (a frozen backbone)
        next(model.children()).eval()
    before = [m.training for m in model.modules()]
    try:
        images = _run(attack, model, x, y, eps, case.bounds)
        assert model.training is before[0], "the model's mode was not restored"
        assert [m.training for m in model.modules()] == before, "a submodule's mode was not restored"
    finally:
        hook.remove()
        model.eval()
    assert modes and not any(modes), "the attack ran the model in train mode"
    assert torch.equal(x, x_before), "the attack changed its input"
    for img in images:
        assert img.shape == x.shape and img.dtype == x.dtype and img.device == x.device
        assert not img.requires_grad
        dist = (img - x).abs().max().item()
        assert dist <= eps + 1e-6, f"{attack} left the eps-ball: |x_adv - x|_inf = {dist} > {eps}"
        assert img.min().item() >= low and img.max().item() <= high, (
            f"{attack} left bounds ({low}, {high}): [{img.min().item()}, {img.max().item()}]")
        assert dist > 0, f"{attack} changed nothing"
    if attack in ("fgsm", "fgsm_sweep"):
        # one step of the full eps wherever the bounds allow it
        assert (images[-1] - x).abs().max().item() == pytest.approx(eps, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# The issue's calls, as written


@pytest.mark.parametrize("model_name", ["resnet18-100", "lenet28"])
def test_the_issues_calls_run_as_written(cases, model_name):
    case = cases[model_name]
    model, x, y, eps = case.model, case.x, case.y, case.eps
    eps_list = [0.0, eps / 2, eps]
    x_adv = advlib.fgsm(model, x, y, eps, bounds=(0, 1))
    sweep = advlib.fgsm_sweep(model, x, y, eps_list, bounds=(0, 1))
    x_pgd = advlib.pgd(model, x, y, eps, bounds=(0, 1))
    for img in (x_adv, x_pgd):
        assert img.shape == x.shape and (img - x).abs().max().item() <= eps + 1e-6
        assert 0 <= img.min().item() and img.max().item() <= 1
    assert sweep.preds.shape == (3, N) and int(sweep.preds.max()) < case.num_classes
    assert torch.equal(sweep.preds[0], advlib.predict(model, x)[0])  # eps 0: the clean predictions
    assert torch.equal(sweep.preds[2], advlib.predict(model, x_adv)[0])


def test_fgsm_matches_an_autograd_oracle_on_the_100_class_resnet(cases):
    case = cases["resnet18-100"]
    model, x, y, eps = case.model, case.x, case.y, case.eps
    oracle = copy.deepcopy(model).eval()
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(oracle(xr), y), xr)
    for targeted, step in ((False, eps), (True, -eps)):
        expected = (x + step * grad.sign()).clamp(0, 1)
        model.train()  # the attack must switch to eval mode itself
        try:
            got = advlib.fgsm(model, x, y, eps, bounds=(0, 1), targeted=targeted)
        finally:
            model.eval()
        assert torch.equal(got, expected), f"targeted={targeted}"


def test_no_extra_forward_pass(cases):
    """The label check reuses the logits the attack computes anyway: FGSM one pass, the sweep one plus one per eps,
    PGD one per step."""
    case = cases["lenet28"]
    calls = []
    hook = case.model.register_forward_pre_hook(lambda m, inputs: calls.append(len(inputs[0])))
    try:
        for run, expected in ((lambda: advlib.fgsm(case.model, case.x, case.y, 0.1), 1),
                              (lambda: advlib.fgsm_sweep(case.model, case.x, case.y, [0.0, 0.1, 0.2]), 4),
                              (lambda: advlib.pgd(case.model, case.x, case.y, 0.1, steps=3, seed=0), 3)):
            calls.clear()
            run()
            assert len(calls) == expected
    finally:
        hook.remove()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_dtype_kept(dtype):
    torch.manual_seed(0)
    model = LeNet().to(dtype).eval()
    x = _images((N, 1, 28, 28), (0.0, 1.0), 4).to(dtype)
    y = torch.tensor([1, 2, 3, 4])
    for name in ATTACKS:
        for img in _run(name, model, x, y, 0.1, (0.0, 1.0)):
            assert img.dtype == dtype and (img - x).abs().max().item() <= 0.1 + 1e-6


def test_predict_takes_any_shape_and_range(cases):
    for case in cases.values():
        preds, confs = advlib.predict(case.model, case.x * 3)  # no bounds check: predict classifies anything
        assert preds.shape == confs.shape == (N,) and int(preds.max()) < case.num_classes
        assert ((confs > 0) & (confs <= 1)).all()


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a ValueError that names the problem


def _call(attack: str, model: nn.Module, x, y, eps: float, **kwargs):
    if attack == "fgsm_sweep":
        return advlib.fgsm_sweep(model, x, y, [eps], **kwargs)
    if attack == "pgd":
        return advlib.pgd(model, x, y, eps, steps=2, seed=0, **kwargs)
    return getattr(advlib, attack)(model, x, y, eps, **kwargs)


@pytest.mark.parametrize("attack", ATTACKS)
def test_images_outside_the_bounds(cases, attack):
    case = cases["resnet18-100"]
    with pytest.raises(ValueError, match=r"outside bounds=\(0, 1\).*\[-1, 1\].*bounds=\(low, high\)"):
        _call(attack, case.model, case.x * 2 - 1, case.y, case.eps)  # [-1, 1] images, default bounds
    normalized = cases["smallresnet-bounds(-1,1)"]
    with pytest.raises(ValueError, match=r"outside bounds=\(0, 0.5\)"):
        _call(attack, normalized.model, normalized.x, normalized.y, 0.1, bounds=(0, 0.5))
    _call(attack, case.model, case.x * 2 - 1, case.y, case.eps, bounds=(-1, 1))  # declared: accepted


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("model_name, label, pattern", [
    pytest.param("resnet18-100", 100, r"0\.\.99: the model outputs 100 classes", id="label 100, 100 classes"),
    pytest.param("lenet28", 10, r"0\.\.9: the model outputs 10 classes", id="label 10, 10 classes"),
    pytest.param("lenet28", -1, r"0\.\.9: the model outputs 10 classes", id="label -1"),
])
def test_labels_outside_the_models_classes(cases, attack, model_name, label, pattern):
    case = cases[model_name]
    y = case.y.clone()
    y[2] = label
    with pytest.raises(ValueError, match=pattern + r".*\[" + str(min(label, int(y.min()))) + ", "):
        _call(attack, case.model, case.x, y, case.eps, bounds=case.bounds)


@pytest.mark.parametrize("attack", ATTACKS)
def test_mismatched_lengths(cases, attack):
    case = cases["lenet28"]
    with pytest.raises(ValueError, match=r"x has 4 images but y has 3 labels"):
        _call(attack, case.model, case.x, case.y[:3], case.eps)
    with pytest.raises(ValueError, match=r"x has 3 images but y has 4 labels"):
        _call(attack, case.model, case.x[:3], case.y, case.eps)


BAD_INPUT = {
    "x 3-D": (lambda x, y: (x[0], y), {}, "4-D"),
    "x integer": (lambda x, y: ((x * 255).to(torch.uint8), y), {}, "float tensor"),
    "x NaN": (lambda x, y: (torch.where(x == x.max(), float("nan"), x), y), {}, "NaN"),
    "y float": (lambda x, y: (x, y.float()), {}, "integer"),
    "bounds reversed": (lambda x, y: (x, y), {"bounds": (1, 0)}, "low < high"),
    "bounds equal": (lambda x, y: (x, y), {"bounds": (0, 0)}, "low < high"),
    "bounds infinite": (lambda x, y: (x, y), {"bounds": (0, float("inf"))}, "finite"),
    "bounds NaN": (lambda x, y: (x, y), {"bounds": (float("nan"), 1)}, "finite"),
    "bounds one number": (lambda x, y: (x, y), {"bounds": 1.0}, "two numbers"),
    "bounds three numbers": (lambda x, y: (x, y), {"bounds": (0, 1, 2)}, "two numbers"),
    "bounds strings": (lambda x, y: (x, y), {"bounds": ("0", "1")}, "two numbers"),
}


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("case_name", list(BAD_INPUT))
def test_bad_input(cases, attack, case_name):
    case = cases["lenet28"]
    make, kwargs, pattern = BAD_INPUT[case_name]
    x, y = make(case.x, case.y)
    with pytest.raises(ValueError, match=pattern):
        _call(attack, case.model, x, y, case.eps, **kwargs)
