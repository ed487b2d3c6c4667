"""advlib.autoattack.autoattack against AutoAttack's official driver on more than one batch of 250 images, and the guard
that refuses an attack's image outside the eps-ball or outside [0, 1].

tests/study/test_sanity.py compares autoattack with the official driver on 16 images: one batch, so how the
survivors of an attack are regrouped into batches of AA_BATCH = 250 for the next one (which decides each image's
random start, so the result) is never exercised there. Here both run on AA_IMAGES = 400 test images, more than 250
of them classified correctly, so APGD-CE runs on two batches and APGD-T on one batch regrouped from the survivors
of both. The model is a tiny convolutional network trained for a few seconds inside the module (not the
shared SmallResNet): FAB-T and Square, which cost per surviving image and per query, stay cheap on it.

Each batch that either driver hands to an attack is recorded (a call-through spy on the four attack classes'
``perturb``, which both drivers call), so the comparison covers the batches themselves, not only the outcome.

Cost (measured on a 2-core machine shared with other jobs): ~3 s training, then the full standard AutoAttack
twice, the official driver's and ours, ~15-35 s each depending on the load (mostly FAB-T's and Square's fixed
number of iterations on the ~15 survivors of APGD-CE and APGD-T); where the first eps tried does not exercise the
hand-over (handover_official), each further eps costs one more official run. The guard tests replace the attacks
with fakes: about a second together.
"""
from __future__ import annotations

import logging
import re
from typing import Callable

import pytest
import torch
from torch import nn

from advlib import autoattack as aa_mod
from advlib.attacks import predict, to_pixel_eps
from advlib.data import BOUNDS
from advlib.model import fold_batchnorm
from advlib.autoattack import AA_BATCH
from advlib.autoattack import AA_ATTACKS
from conftest import LogRecords, assert_per_attack_matches_the_log

# the official driver on 400 images takes about a minute: in `make test`, out of the library's fast lane
pytestmark = pytest.mark.slow

AA_IMAGES = 400  # the first 400 test images; ~350 are classified correctly, so APGD-CE runs on two batches
# tried in order, the first where the hand-over is exercised is used (normalized units: 0.1, 0.075, 0.125 px); at
# 0.2, ~20 images survive APGD-CE, of which APGD-T breaks a few: FAB-T and Square run on the ~15 left
EPS_CANDIDATES = (0.2, 0.15, 0.25)


# ---------------------------------------------------------------------------------------------------------------
# The tiny model


def tiny_model(mnist) -> nn.Module:
    """Conv5x5(1->4, stride 4) -> ReLU -> Linear(256->10), one epoch of SGD on the fixture's 6,000 training
    images (seeded: deterministic on one machine), eval mode: ~87% clean test accuracy.

    Nonlinear on purpose: on a linear model every APGD start ends at the same optimum, so the random starts, which
    the batching decides, would matter less."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 5, stride=4, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    x, y = mnist.train_x, mnist.train_y
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for idx in torch.randperm(len(x), generator=gen).split(64):
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tiny(mnist) -> nn.Module:
    return tiny_model(mnist)


def test_tiny_model_is_attacked_as_it_is(tiny, mnist):
    """autoattack() attacks _fast(model), which folds the BatchNorms of a SmallResNet: the tiny model has none and
    must reach the attacks unchanged (in eval mode), or the official driver, which is given the same module,
    would attack another function."""
    assert aa_mod._fast(tiny) is tiny and fold_batchnorm(tiny) is tiny
    assert not tiny.training
    x, y = mnist.test_x[:AA_IMAGES], mnist.test_y[:AA_IMAGES]
    clean = int((predict(tiny, x)[0] == y).sum())
    assert AA_BATCH + 50 <= clean < AA_IMAGES, clean  # two batches for APGD-CE, and some clean mistakes


# ---------------------------------------------------------------------------------------------------------------
# A spy on the batches each attack is run on


# the attack's settings at the call, as each driver sets them before the batch (None where an attack has none)
SETTINGS = ("seed", "eps", "norm", "loss", "targeted", "n_restarts", "n_iter", "n_queries", "n_target_classes",
            "p_init", "rho")


class BatchSpy:
    """Records, for every call of an AutoAttack attack's ``perturb`` (one batch), the attack's name, the indices
    of the batch's images among the images given and the attack's SETTINGS (its seed above all: the random
    starts come from it), then calls the attack unchanged.

    Images are recognised by their bytes: both drivers pass rows copied from the same ``(x + 1) / 2``."""

    def __init__(self, x01: torch.Tensor):
        self.index = {self._key(row): i for i, row in enumerate(x01)}
        assert len(self.index) == len(x01), "two identical images: batches could not be told apart"
        self.calls: list[tuple[str, list[int], dict]] | None = None

    @staticmethod
    def _key(row: torch.Tensor) -> bytes:
        return row.detach().cpu().contiguous().numpy().tobytes()

    @staticmethod
    def _name(attack) -> str:
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
        from pyautoattack.fab_base import FABAttack

        if isinstance(attack, APGDAttack_targeted):
            return "apgd-t"
        if isinstance(attack, APGDAttack):
            return f"apgd-{attack.loss}"
        if isinstance(attack, FABAttack):
            return "fab-t" if attack.targeted else "fab"
        return "square"

    def wrap(self, perturb: Callable) -> Callable:
        def spied(attack, x, *args, **kwargs):
            if self.calls is not None:
                self.calls.append((self._name(attack), [self.index.get(self._key(row), -1) for row in x],
                                   {k: getattr(attack, k, None) for k in SETTINGS}))
            return perturb(attack, x, *args, **kwargs)

        return spied

    def install(self, mp: pytest.MonkeyPatch) -> None:
        from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
        from pyautoattack.fab_base import FABAttack
        from pyautoattack.square import SquareAttack

        for cls in (APGDAttack, APGDAttack_targeted, FABAttack, SquareAttack):
            mp.setattr(cls, "perturb", self.wrap(cls.__dict__["perturb"]))  # the class's own, never a wrapper

    def record(self, run: Callable):
        """(run(), the batches it attacked: [(attack, indices, settings)] in call order)."""
        self.calls = []
        try:
            return run(), self.calls
        finally:
            self.calls = None


def batches_of(calls, attack: str) -> list[list[int]]:
    return [idx for name, idx, _ in calls if name == attack]


# ---------------------------------------------------------------------------------------------------------------
# Ours and the official driver on 400 images


def official_run(model, x01: torch.Tensor, y: torch.Tensor, eps: float, spy: BatchSpy) -> dict:
    """The official driver (pyautoattack's run_standard_evaluation, its batch size 250) on (x01 in [0, 1], y) at
    eps (normalized units), seed 0: its robust flags, the robust accuracy after each attack and the size of each
    batch as its log gives them, and the batches each attack ran on (BatchSpy)."""
    from pyautoattack import AutoAttack

    logger = logging.getLogger("auto-attack")
    handler, level = LogRecords(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        official = AutoAttack(aa_mod.PixelInput(aa_mod._fast(model), BOUNDS), eps=to_pixel_eps(eps), seed=0,
                              version="standard")
        (x_adv, y_adv), calls = spy.record(lambda: official.run_standard_evaluation(x01, y))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    after, logged_batches = {}, []
    for msg in handler.messages:
        m = re.match(r"robust accuracy after ([A-Z-]+): ([0-9.]+)%", msg)
        if m:
            after[m.group(1).lower()] = float(m.group(2))
        m = re.match(r"([a-z-]+) - \d+/\d+ - (\d+) out of (\d+) successfully perturbed", msg)
        if m:
            logged_batches.append((m.group(1), int(m.group(3))))
    return {"flags": (y_adv == y).tolist(), "after": after, "calls": calls, "logged_batches": logged_batches}


def handover_official(model, x01, y, clean_idx: list[int], spy: BatchSpy) -> tuple[float, dict]:
    """(eps, official_run's result) at the first eps of EPS_CANDIDATES where the official driver's hand-over
    between batches and attacks is exercised: APGD-T attacks survivors of both of APGD-CE's batches (regrouped
    into one batch) and breaks at least one of them, and some image survives every attack.

    Which eps qualifies depends on the trained model, so on the machine's float rounding: it is searched for, not
    fixed, on the reference alone (the code under test plays no part in the choice). The candidates are ordered so
    that the first usually qualifies; each further one costs a full run of the official driver."""
    boundary = clean_idx[AA_BATCH]  # the first image of APGD-CE's second batch
    tried = []
    for eps in EPS_CANDIDATES:
        official = official_run(model, x01, y, eps, spy)
        t_batches = batches_of(official["calls"], "apgd-t")
        mixed = len(t_batches) == 1 and min(t_batches[0]) < boundary <= max(t_batches[0])
        after_ce, after_t = (official["after"].get(a) for a in AA_ATTACKS[:2])
        tried.append((eps, after_ce, after_t, sum(official["flags"])))
        if mixed and after_t is not None and after_t < after_ce and any(official["flags"]):
            return eps, official
    raise AssertionError(f"no eps of {EPS_CANDIDATES} exercises the official driver's hand-over on the tiny model "
                         f"((eps, % after APGD-CE, % after APGD-T, robust at the end): {tried}): the model is unlike "
                         "any this test was written for")


@pytest.fixture(scope="module")
def aa_large(tiny, mnist):
    """The official driver (handover_official's eps) and advlib.autoattack.autoattack on the same AA_IMAGES images, same
    eps, same seed; the batches each attacked (BatchSpy) and the official driver's log are kept."""
    x, y = mnist.test_x[:AA_IMAGES], mnist.test_y[:AA_IMAGES]
    x01 = (x + 1) / 2
    clean_idx = (predict(tiny, x)[0] == y).nonzero().flatten().tolist()
    spy = BatchSpy(x01)
    with pytest.MonkeyPatch.context() as mp:
        spy.install(mp)
        eps, official = handover_official(tiny, x01, y, clean_idx, spy)
        ours, our_calls = spy.record(lambda: aa_mod.autoattack(tiny, x, y, eps, bounds=BOUNDS, seed=0, progress=False))
    return {"eps": eps, "x": x, "y": y, "clean_idx": clean_idx, "ours": ours, "our_calls": our_calls,
            "official_flags": official["flags"], "official_after": official["after"],
            "official_calls": official["calls"], "official_logged_batches": official["logged_batches"]}


def test_flags_match_the_official_driver_over_several_batches(aa_large):
    """Image for image, on more than one batch of 250: the comparison means something only if the first attack's
    images span two batches and both outcomes occur."""
    ours = aa_large["ours"]
    assert ours["robust_flags"] == aa_large["official_flags"]
    assert ours["n"] == AA_IMAGES and 0 < ours["robust"] < ours["clean"]
    assert ours["per_attack"][0]["attacked"] == ours["clean"] == len(aa_large["clean_idx"]) > AA_BATCH


def test_per_attack_accuracy_matches_the_official_log(aa_large):
    """The robust accuracy after each attack, as the official driver logs it (two decimals of a percent: exact
    for 400 images), equals ours; APGD-T breaks an image APGD-CE left (handover_official saw to that)."""
    ours = aa_large["ours"]
    assert_per_attack_matches_the_log(ours, aa_large["official_after"])
    assert ours["per_attack"][1]["broke"] > 0, ours["per_attack"]


def first_difference(ours: list, official: list) -> str:
    for i, (a, b) in enumerate(zip(ours, official)):
        if a != b:
            return f"batch {i}: ours {a[0]} on {len(a[1])} images {a[1][:12]}..., settings {a[2]}; official {b[0]} " \
                   f"on {len(b[1])} images {b[1][:12]}..., settings {b[2]}"
    return f"ours ran {len(ours)} batches, the official driver {len(official)}"


def test_survivors_are_regrouped_in_the_official_batches(aa_large):
    """Every attack runs on the same batches of the same images, in the same order and with the same settings
    (seed included), as in the official driver: APGD-CE on the correctly classified images in two batches (250,
    then the rest), and each later attack on the survivors regrouped from the start in batches of 250, here
    APGD-T's one batch holding survivors of both of APGD-CE's. The random starts are drawn per batch from the
    seed, so this is what makes the flags agree, and it is checked even where the outcome would not show a
    difference (an attack that breaks nothing here, as Square on this model, still has its batches and seed
    compared)."""
    ours_calls, official_calls = aa_large["our_calls"], aa_large["official_calls"]
    clean_idx = aa_large["clean_idx"]
    assert ours_calls == official_calls, first_difference(ours_calls, official_calls)
    assert [name for name, _, _ in ours_calls] == sorted((c[0] for c in ours_calls), key=AA_ATTACKS.index)
    assert {settings["seed"] for _, _, settings in ours_calls} == {0}
    # the spy saw what the official driver says it attacked
    assert [(name, len(idx)) for name, idx, _ in official_calls] == aa_large["official_logged_batches"]
    assert batches_of(ours_calls, "apgd-ce") == [clean_idx[:AA_BATCH], clean_idx[AA_BATCH:]]
    (t_batch,) = batches_of(ours_calls, "apgd-t")
    assert min(t_batch) < clean_idx[AA_BATCH] <= max(t_batch)
    for row in aa_large["ours"]["per_attack"]:
        assert sum(len(idx) for idx in batches_of(ours_calls, row["attack"])) == row["attacked"], row


# ---------------------------------------------------------------------------------------------------------------
# The guard: an attack's image outside the threat model never counts as broken

GUARD_EPS = 0.1  # normalized units: 0.05 px
GUARD_IMAGES = 8


def faked(kind: str, x01: torch.Tensor, eps_px: float) -> torch.Tensor:
    """An "adversarial" image for x01 (N, 1, 32, 32) in [0, 1] that breaks the threat model in one way only.

    outside the ball: every pixel moved by 2 eps toward the middle (stays in [0, 1]); below 0 / above 1: moved by
    eps / 2 (inside the ball), so the black background goes negative / the white strokes exceed 1; on the
    boundary: every pixel moved by exactly eps toward the middle, which is allowed."""
    toward_middle = torch.where(x01 < 0.5, 1.0, -1.0)
    if kind == "outside the eps-ball":
        return x01 + 2 * eps_px * toward_middle
    if kind == "below 0":
        return x01 - eps_px / 2
    if kind == "above 1":
        return x01 + eps_px / 2
    if kind == "on the boundary":
        return x01 + eps_px * toward_middle
    raise ValueError(kind)


VIOLATIONS = ("outside the eps-ball", "below 0", "above 1")


@pytest.fixture(scope="module")
def guard_batch(tiny, mnist):
    x, y = mnist.test_x[:GUARD_IMAGES], mnist.test_y[:GUARD_IMAGES]
    x01, eps_px = (x + 1) / 2, to_pixel_eps(GUARD_EPS)
    assert (predict(tiny, x)[0] == y).sum() >= 2  # some images reach the attacks
    # each fake breaks the threat model as it says, and only so
    for kind in VIOLATIONS + ("on the boundary",):
        adv = faked(kind, x01, eps_px)
        dist, lo, hi = float((adv - x01).abs().amax()), float(adv.min()), float(adv.max())
        assert (dist > eps_px + 1e-3) == (kind == "outside the eps-ball"), (kind, dist)
        assert (lo < 0) == (kind == "below 0") and (hi > 1) == (kind == "above 1"), (kind, lo, hi)
    return x, y


def fake_perturb(bad_attack: str, kind: str):
    """advlib.autoattack._perturb's stand-in: bad_attack returns faked(kind, ...), every other attack the image itself
    (breaks nothing, so every correctly classified image reaches bad_attack)."""
    eps_px = to_pixel_eps(GUARD_EPS)

    def perturb(aa, attack, x01, y):
        assert attack in AA_ATTACKS
        return faked(kind, x01, eps_px) if attack == bad_attack else x01.clone()

    return perturb


@pytest.mark.parametrize("attack", AA_ATTACKS)
@pytest.mark.parametrize("kind", VIOLATIONS)
def test_autoattack_refuses_an_image_outside_the_threat_model(tiny, guard_batch, monkeypatch, kind, attack):
    """Whichever attack returns it, an image beyond eps or outside [0, 1] raises, naming the attack, instead of
    counting as broken."""
    monkeypatch.setattr(aa_mod, "_perturb", fake_perturb(attack, kind))
    with pytest.raises(RuntimeError, match=rf"^{re.escape(attack)} returned images outside the eps-ball"):
        aa_mod.autoattack(tiny, *guard_batch, GUARD_EPS, bounds=BOUNDS, seed=0, progress=False)


def test_autoattack_accepts_images_on_the_boundary(tiny, guard_batch, monkeypatch):
    """Exactly eps away (the black background moved to exactly eps) is inside the threat model: every attack's
    result is accepted and counted."""
    x, y = guard_batch
    x01, eps_px = (x + 1) / 2, to_pixel_eps(GUARD_EPS)
    adv = faked("on the boundary", x01, eps_px)
    dist = (adv - x01).abs().amax()
    assert dist >= torch.tensor(eps_px, dtype=dist.dtype) and float(dist) <= eps_px + 1e-7
    seen = []

    def perturb(aa, attack, x01, y):
        seen.append(attack)
        return faked("on the boundary", x01, eps_px)

    monkeypatch.setattr(aa_mod, "_perturb", perturb)
    got = aa_mod.autoattack(tiny, x, y, GUARD_EPS, bounds=BOUNDS, seed=0, progress=False)
    fooled = predict(tiny, adv * 2 - 1)[0] != y
    clean_ok = predict(tiny, x)[0] == y
    assert got["robust_flags"] == (clean_ok & ~fooled).tolist()  # the boundary images counted
    assert seen[0] == "apgd-ce" and set(seen) <= set(AA_ATTACKS)


@pytest.mark.parametrize("kind", VIOLATIONS)
def test_apgd_crosscheck_refuses_autoattacks_image_outside_the_threat_model(tiny, guard_batch, monkeypatch, kind):
    monkeypatch.setattr(aa_mod, "_perturb", fake_perturb("apgd-ce", kind))
    with pytest.raises(RuntimeError, match=r"^autoattack's APGD-CE returned images outside the eps-ball"):
        aa_mod.apgd_crosscheck(tiny, *guard_batch, GUARD_EPS, bounds=BOUNDS, seed=0)


def _fake_torchattacks(monkeypatch, kind: str) -> None:
    """torchattacks.APGD's forward (what its __call__ runs) returning faked(kind, ...); AutoAttack's side returns
    the images themselves, so the torchattacks side is reached without running either APGD."""
    import torchattacks

    eps_px = to_pixel_eps(GUARD_EPS)
    monkeypatch.setattr(aa_mod, "_perturb", lambda aa, attack, x01, y: x01.clone())
    monkeypatch.setattr(torchattacks.APGD, "forward", lambda self, images, labels: faked(kind, images, eps_px))


@pytest.mark.parametrize("kind", VIOLATIONS)
def test_apgd_crosscheck_refuses_torchattacks_image_outside_the_threat_model(tiny, guard_batch, monkeypatch, kind):
    _fake_torchattacks(monkeypatch, kind)
    with pytest.raises(RuntimeError, match=r"^torchattacks's APGD-CE returned images outside the eps-ball"):
        aa_mod.apgd_crosscheck(tiny, *guard_batch, GUARD_EPS, bounds=BOUNDS, seed=0)


def test_apgd_crosscheck_accepts_images_on_the_boundary(tiny, guard_batch, monkeypatch):
    """Both implementations returning images exactly eps away: accepted, and counted alike."""
    x, y = guard_batch
    eps_px = to_pixel_eps(GUARD_EPS)
    _fake_torchattacks(monkeypatch, "on the boundary")
    monkeypatch.setattr(aa_mod, "_perturb", lambda aa, attack, x01, y: faked("on the boundary", x01, eps_px))
    got = aa_mod.apgd_crosscheck(tiny, x, y, GUARD_EPS, bounds=BOUNDS, seed=0)
    robust = predict(tiny, x)[0] == y
    robust &= predict(tiny, faked("on the boundary", (x + 1) / 2, eps_px) * 2 - 1)[0] == y
    assert got["autoattack"]["accuracy"]["k"] == got["torchattacks"]["accuracy"]["k"] == int(robust.sum())
    assert got["agree"] == len(y)
