"""The contract every registered distillation loss keeps, parametrised over ``LOSSES.names()``: a new
loss is tested here without new test code. What a loss promises is declared on its class
(``zero_when_equal``, ``needs_labels``, ``reads_teacher``, ``schedulable``, ``example``)."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from distillprune.distill.distiller import Distiller
from distillprune.distill.losses import LOSSES, DistillLoss, Outputs
from distillprune.distill.schedule import build_term
from distillprune.errors import DataError, DistillpruneError
from distillprune.models import build_model

NAMES = LOSSES.names()
B, C = 6, 5


def make(name: str) -> DistillLoss:
    cls = LOSSES.get(name)
    return cls(**cls.example)


def outputs(
    loss: DistillLoss,
    seed: int,
    *,
    batch: int = B,
    classes: int = C,
    channels: int = 4,
    side: int = 4,
    teacher: bool = False,
) -> Outputs:
    """Leaf tensors (requires_grad, so a gradient that leaks into the teacher is visible)."""
    g = torch.Generator().manual_seed(seed)
    paths = {t if teacher else s for s, t in loss.taps}
    logits = (torch.randn(batch, classes, generator=g) * 2).requires_grad_()
    feats = {p: torch.randn(batch, channels, side, side, generator=g).requires_grad_() for p in sorted(paths)}
    return Outputs(logits, feats)


def pair(loss: DistillLoss, seed: int = 0, **teacher_kw) -> tuple[Outputs, Outputs]:
    s = outputs(loss, seed, channels=4)
    t = outputs(loss, seed + 100, teacher=True, **{"channels": 6, **teacher_kw})
    return s, t


def labels(seed: int = 0, batch: int = B) -> torch.Tensor:
    return torch.randint(0, C, (batch,), generator=torch.Generator().manual_seed(seed))


def target_options(loss: DistillLoss) -> list[torch.Tensor | None]:
    return [labels()] if loss.needs_labels else [labels(), None]


def leaves(o: Outputs) -> list[torch.Tensor]:
    return [o.logits, *o.features.values()]


@pytest.mark.parametrize("name", NAMES)
def test_declares_its_contract(name):
    cls = LOSSES.get(name)
    for attr in ("zero_when_equal", "needs_labels", "reads_teacher", "width_free"):
        assert isinstance(getattr(cls, attr), bool), (name, attr)
    loss = make(name)
    for option in cls.schedulable:  # a ramp sets the attribute of the option's name every step
        assert isinstance(getattr(loss, option), (int, float)), (name, option)
    doc = sys.modules[cls.__module__].__doc__ or ""
    if cls.reads_teacher:  # a distillation method (not a plain label term): its paper
        assert re.search(r"(19|20)\d\d", doc), f"{name}: the module docstring cites no paper"
    assert "=" in doc, f"{name}: the module docstring gives no formula"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_is_non_negative_and_finite(name, seed):
    loss = make(name)
    s, t = pair(loss, seed)
    loss.setup(s, t)
    for y in target_options(loss):
        value = loss(s, t, y)
        assert value.dim() == 0 and torch.isfinite(value), (name, value)
        assert float(value.detach()) >= -1e-6, (name, float(value.detach()))


@pytest.mark.parametrize("name", [n for n in NAMES if LOSSES.get(n).zero_when_equal])
def test_zero_when_student_equals_teacher(name):
    loss = make(name)
    s = outputs(loss, 0)
    t = Outputs(s.logits.detach().clone(), {tp: s.features[sp].detach().clone() for sp, tp in loss.taps})
    loss.setup(s, t)
    y = labels() if loss.needs_labels else None
    equal = float(loss(s, t, y).detach())
    s2, t2 = outputs(loss, 0), outputs(loss, 7, teacher=True)
    different = float(loss(s2, t2, y).detach())
    assert abs(equal) < 1e-4, (name, equal)
    assert abs(equal) < 1e-2 * different, (name, equal, different)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_student_never_the_teacher(name):
    loss = make(name)
    s, t = pair(loss)
    loss.setup(s, t)
    loss(s, t, labels()).backward()
    assert any(x.grad is not None and x.grad.abs().sum() > 0 for x in leaves(s)), name
    assert all(x.grad is None for x in leaves(t)), f"{name}: gradient reached the teacher's outputs"


@pytest.mark.parametrize("name", [n for n in NAMES if LOSSES.get(n).reads_teacher])
def test_batch_mismatch_is_a_clear_error(name):
    loss = make(name)
    s, t = pair(loss, batch=B + 1)
    with pytest.raises(DistillpruneError, match="batch|differ"):
        loss.setup(s, t)
        loss(s, t, labels())


@pytest.mark.parametrize(
    "name",
    [n for n in NAMES if LOSSES.get(n).reads_teacher and not make(n).taps and not LOSSES.get(n).width_free],
)
def test_class_mismatch_is_a_clear_error(name):
    loss = make(name)
    s, t = pair(loss, classes=C + 2)
    with pytest.raises(DistillpruneError, match="differ"):
        loss.setup(s, t)
        loss(s, t, labels())


@pytest.mark.parametrize("name", NAMES)
def test_label_free_support_is_as_declared(name):
    loss = make(name)
    s, t = pair(loss)
    loss.setup(s, t)
    if loss.needs_labels:
        with pytest.raises(DistillpruneError, match="labels"):
            loss(s, t, None)
    else:
        assert torch.isfinite(loss(s, t, None))


@pytest.mark.parametrize("name", NAMES)
def test_label_free_check_fails_before_training(name):
    d = Distiller.from_specs(torch.nn.Linear(2, 2), [{"name": name, **LOSSES.get(name).example}])
    d.check_labels(True)
    if LOSSES.get(name).needs_labels or not LOSSES.get(name).reads_teacher:
        with pytest.raises(DataError, match="labels"):
            d.check_labels(False)
    else:
        d.check_labels(False)


@pytest.mark.parametrize("name", NAMES)
def test_schedulable_options_ramp(name):
    cls = LOSSES.get(name)
    for option in cls.schedulable:
        start = getattr(cls(**cls.example), option)
        end = start * 0.5 if start else 0.5
        term = build_term({"name": name, **cls.example, option: {"start": start, "end": end}})
        assert term.weight_at(0.0) == 1.0 and getattr(term.loss, option) == pytest.approx(start)
        term.weight_at(1.0)
        assert getattr(term.loss, option) == pytest.approx(end)


def _tiny(widths, seed):
    torch.manual_seed(seed)
    return build_model("digits_cnn", C, (1, 8, 8), widths=widths, blocks=(1, 1, 1))


@pytest.mark.parametrize("name", NAMES)
def test_in_a_distiller_on_real_models(name):
    """Taps on real modules, adapters built by attach, one step: the student and the loss's own
    parameters get gradients, the frozen teacher none."""
    student, teacher = _tiny((8, 8, 16), 1), _tiny((8, 16, 32), 2)
    cls = LOSSES.get(name)
    spec = {
        "name": name,
        **{k: ([["layer3", "layer3"]] if k == "pairs" else v) for k, v in cls.example.items()},
    }
    if "channels" in spec:  # aligned: the student's 16 channels are every other one of the teacher's 32
        spec["channels"] = [["layer3", list(range(0, 32, 2))]]
    d = Distiller.from_specs(teacher, [spec])
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, C, (8,))
    student.train()
    d.attach(student, x[:4])
    loss, logits = d(student, x, y)
    assert logits.shape == (8, C) and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()), name
    assert all(p.grad is None for p in teacher.parameters())
    d.detach()
