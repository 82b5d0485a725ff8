"""Distillation modes end to end on tiny digits models: teacher cache (same result as uncached),
mutual learning, born-again generations, multi-teacher ensembles, label-free, schedules, and the
recipe rules that reject impossible combinations before anything trains."""

from __future__ import annotations

import copy

import pytest
import torch

from distillprune.core.checkpoint import ArchSpec, load_checkpoint, save_checkpoint
from distillprune.core.config import validate
from distillprune.data import DataConfig, load_data
from distillprune.data.base import Examples, TensorLoader
from distillprune.distill.config import DistillConfig
from distillprune.distill.distiller import Distiller
from distillprune.distill.ensemble import TeacherEnsemble
from distillprune.distill.losses.kd import soft_kl
from distillprune.distill.modes import reinitialised
from distillprune.distill.mutual import MutualDistiller
from distillprune.distill.schedule import Clock, Ramp
from distillprune.errors import DataError, DistillpruneError, RecipeError
from distillprune.models import build_model
from distillprune.pipeline import execute
from distillprune.pipeline.state import RunState
from distillprune.recipes.schema import Recipe
from distillprune.train import FitSettings, OptimizerConfig, RuntimeConfig, ScheduleConfig, fit
from distillprune.train import trainer as trainer_mod
from distillprune.train.context import Context, LoaderOptions
from distillprune.train.trainer import FitRun

TEACHER_KW = {"widths": [8, 16, 16], "blocks": [1, 1, 1]}
STUDENT_KW = {"widths": [8, 8, 16], "blocks": [1, 1, 1]}
QUIET = RuntimeConfig(progress=False, tensorboard=False, threads=1)


def tiny(kw: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("digits_cnn", 10, (1, 8, 8), **kw)


@pytest.fixture(scope="module")
def data():
    return load_data(DataConfig(source="digits", limit_train=256, limit_test=120))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, data):
    """A tiny teacher trained with labels (about 90% top-1), saved as a checkpoint."""
    model = tiny(TEACHER_KW, 0)
    fit(
        model,
        data,
        FitSettings(8, OptimizerConfig(lr=0.1), ScheduleConfig()),
        _ce(),
        context=Context(QUIET, LoaderOptions(batch_size=32, seed=0)),
    )
    folder = tmp_path_factory.mktemp("teacher")
    save_checkpoint(folder, model, ArchSpec("digits_cnn", 10, [1, 8, 8], TEACHER_KW))
    return folder


def _ce():
    from distillprune.distill.distiller import CrossEntropy

    return CrossEntropy()


def recipe(stage: dict, *, teacher_dir=None, labels: bool = True, **extra) -> Recipe:
    model = {"name": "digits_cnn", "kwargs": TEACHER_KW}
    if teacher_dir is not None:
        model["checkpoint"] = str(teacher_dir)
    return validate(
        Recipe,
        {
            "name": "modes",
            "model": model,
            "data": {
                "source": "digits",
                "limit_train": 256,
                "limit_test": 120,
                "labels": labels,
                "batch_size": 32,
            },
            "runtime": QUIET.model_dump(),
            "measure": {"enabled": False},
            "stages": [stage],
            **extra,
        },
    )


def distill_stage(distill: dict, epochs: int = 1, **extra) -> dict:
    return {
        "type": "distill",
        "epochs": epochs,
        "student": {"name": "digits_cnn", "kwargs": STUDENT_KW},
        "optimizer": {"lr": 0.05},
        "distill": distill,
        **extra,
    }


# ---------------------------------------------------------------- schedules
def test_ramp_values():
    lin = Ramp(start=8, end=2)
    assert [lin.at(p) for p in (0, 0.5, 1)] == [8, 5, 2]
    cos = Ramp(start=0, end=1, schedule="cosine")
    assert cos.at(0.5) == pytest.approx(0.5) and cos.at(0.25) == pytest.approx(0.1464466, rel=1e-5)
    warm = Ramp(start=0, end=1, fraction=0.2)
    assert warm.at(0.1) == pytest.approx(0.5) and warm.at(0.2) == 1 and warm.at(0.9) == 1
    clock = Clock()
    clock.begin_epoch(steps_per_epoch=5, epoch=1, epochs=2)  # a resumed run starts mid-stage
    assert clock.tick() == pytest.approx(5 / 9)


def test_temperature_and_weight_ramp_over_a_stage(data):
    d = Distiller.from_specs(
        tiny(TEACHER_KW, 0),
        [
            {"name": "kd", "temperature": {"start": 8, "end": 2, "schedule": "cosine"}, "alpha": 1.0},
            {"name": "ce", "weight": {"start": 0, "end": 1}},
        ],
    )
    seen = []
    kd_forward, weight_at = d.terms[0].loss.forward, d.terms[1].weight_at

    def spy_weight(p):
        seen.append(("w", weight_at(p)))
        return seen[-1][1]

    def spy_kd(s, t, y):
        seen.append(("T", d.terms[0].loss.temperature))
        return kd_forward(s, t, y)

    d.terms[0].loss.forward, d.terms[1].weight_at = spy_kd, spy_weight
    fit(
        tiny(STUDENT_KW, 1),
        data,
        FitSettings(2, OptimizerConfig(lr=0.05), ScheduleConfig()),
        d,
        context=Context(QUIET, LoaderOptions(batch_size=64)),
    )
    temps = [v for k, v in seen if k == "T"][1:]  # [0] is attach's probe
    weights = [v for k, v in seen if k == "w"]
    steps = 2 * (len(data.train) // 64)
    ramp = Ramp(start=8, end=2, schedule="cosine")
    assert temps == pytest.approx([ramp.at(i / (steps - 1)) for i in range(steps)])  # across both epochs
    assert weights == pytest.approx([i / (steps - 1) for i in range(steps)])
    assert temps[-1] == pytest.approx(2) and weights[-1] == pytest.approx(1)


# ---------------------------------------------------------------- teacher-output cache
def _fit_kd(data, cache: bool, losses=None, epochs=2, **kw):
    teacher, student = tiny(TEACHER_KW, 0), tiny(STUDENT_KW, 1)
    d = Distiller.from_specs(teacher, losses or [{"name": "kd", "temperature": 4.0, "alpha": 0.7}], cache=cache)
    hist = fit(
        student,
        data,
        FitSettings(epochs, OptimizerConfig(lr=0.05), ScheduleConfig()),
        d,
        context=Context(QUIET, LoaderOptions(batch_size=64, seed=3, **kw)),
    )
    return student, hist, d


@pytest.mark.parametrize(
    "losses",
    [
        None,
        [
            {"name": "kd"},
            {"name": "fitnet", "pairs": [["layer3", "layer3"]]},
            {"name": "crd", "tap": "pool", "queue_size": 32},
        ],
    ],
    ids=["kd", "kd+fitnet+crd"],
)
def test_cached_teacher_gives_the_uncached_result(data, losses):
    plain, h1, _ = _fit_kd(data, cache=False, losses=losses)
    cached, h2, d = _fit_kd(data, cache=True, losses=losses)
    for (k, a), b in zip(plain.state_dict().items(), cached.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
    assert [round(h["loss"], 4) for h in h1] == [round(h["loss"], 4) for h in h2]
    assert d.cache.logits.shape == (len(data.train), 10) and d.cache.seconds > 0
    assert set(d.cache.features) == {p for loss in d.losses for _, p in loss.taps}


def test_cache_is_built_once_per_split(data):
    teacher = tiny(TEACHER_KW, 0)
    d = Distiller.from_specs(teacher, [{"name": "kd"}], cache=True)
    student = tiny(STUDENT_KW, 1)
    loader = TensorLoader(data.train, 64, data.mean, data.std, shuffle=True, drop_last=True)
    d.attach(student, loader.prepare(data.train.x[:8]))
    d.begin_epoch(loader, 0, 2)
    first = d.cache.logits
    loader.set_epoch(1)
    d.begin_epoch(loader, 1, 2)
    assert d.cache.logits is first  # not recomputed for the next epoch
    x, _ = next(iter(loader))
    with torch.no_grad():
        torch.testing.assert_close(d.cache.lookup(x, teacher, d._t_taps).logits, teacher(x), rtol=1e-4, atol=1e-5)


def test_cache_out_of_step_with_the_data_fails_loudly(data):
    teacher = tiny(TEACHER_KW, 0)
    d = Distiller.from_specs(teacher, [{"name": "kd"}], cache=True)
    student = tiny(STUDENT_KW, 1)
    loader = TensorLoader(data.train, 64, data.mean, data.std, shuffle=True, drop_last=True)
    d.attach(student, loader.prepare(data.train.x[:8]))
    d.begin_epoch(loader, 0, 1)
    wrong = loader.prepare(data.train.x[:64])  # not the epoch's first batch
    with pytest.raises(DistillpruneError, match="out of step"):
        d(student, wrong, None)


def test_cache_refuses_random_augmentation_before_training(data):
    with pytest.raises(DistillpruneError, match="augmentation"):
        _fit_kd(data, cache=True, crop_padding=1)


def test_cache_speeds_up_training(data):
    """The cached objective runs no teacher forward after the first batch of each epoch."""
    teacher = tiny(TEACHER_KW, 0)
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    d = Distiller.from_specs(teacher, [{"name": "kd"}], cache=True)
    fit(
        tiny(STUDENT_KW, 1),
        data,
        FitSettings(2, OptimizerConfig(lr=0.05), ScheduleConfig()),
        d,
        context=Context(QUIET, LoaderOptions(batch_size=64)),
    )
    chunks = -(-len(data.train) // d.cache.chunk)
    assert len(calls) == 1 + chunks + 2  # probe, the cache build, one check per epoch (8 steps run)


# ---------------------------------------------------------------- mutual learning
def test_mutual_gradients_split_between_the_two_networks():
    student, peer = tiny(STUDENT_KW, 1), tiny(TEACHER_KW, 2)
    d = MutualDistiller.from_specs(peer, [{"name": "kd", "temperature": 1.0, "alpha": 1.0}])
    x = torch.randn(8, 1, 8, 8)
    d.attach(student, x[:4])
    student.train()
    loss, _ = d(student, x, None)
    gs = torch.autograd.grad(loss, list(student.parameters()), retain_graph=True)
    gp = torch.autograd.grad(loss, list(peer.parameters()))
    zs, zp = student(x), peer(x)  # same BN mode, same batch: the same forward again
    own_s = torch.autograd.grad(soft_kl(zs, zp.detach(), 1.0), list(student.parameters()))
    own_p = torch.autograd.grad(soft_kl(zp, zs.detach(), 1.0), list(peer.parameters()))
    for a, b in zip(gs + gp, own_s + own_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert set(map(id, d.trainable())) >= set(map(id, peer.parameters()))
    d.detach()
    assert not peer.training


def test_mutual_resume_reproduces_the_uninterrupted_run(data, tmp_path):
    def run(ckpt, stop_after_epoch1: bool):
        student, peer = tiny(STUDENT_KW, 1), tiny(TEACHER_KW, 2)
        d = MutualDistiller.from_specs(peer, [{"name": "ce"}, {"name": "kd", "temperature": 1.0, "alpha": 1.0}])
        steps = []

        def stop(_m):
            steps.append(1)
            if stop_after_epoch1 and len(steps) == 5:  # first step of epoch 2 (4 steps an epoch)
                raise KeyboardInterrupt

        fit(
            student,
            data,
            FitSettings(2, OptimizerConfig(lr=0.05), ScheduleConfig()),
            d,
            context=Context(QUIET, LoaderOptions(batch_size=64)),
            run=FitRun(ckpt_dir=ckpt, resume=not stop_after_epoch1, on_step=stop),
        )
        return student, peer

    ref_s, ref_p = run(tmp_path / "a", False)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", True)
    res_s, res_p = run(tmp_path / "b", False)
    for a, b in zip(
        list(ref_s.parameters()) + list(ref_p.parameters()),
        list(res_s.parameters()) + list(res_p.parameters()),
        strict=True,
    ):
        torch.testing.assert_close(a, b)


def test_mutual_recipe_trains_both_and_leaves_the_stored_teacher_alone(teacher_dir):
    r = recipe(
        distill_stage({"mode": "mutual", "losses": [{"name": "ce"}, {"name": "kd", "temperature": 1, "alpha": 1}]}),
        teacher_dir=teacher_dir,
    )
    state = execute(r, None, quiet=True)
    stored, _, _ = load_checkpoint(teacher_dir)
    for a, b in zip(state.teacher.state_dict().values(), stored.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)  # the peer was a copy; the pipeline's teacher did not train
    details = state.report.stages[-1].details
    assert details.mode == "mutual" and 0 <= details.peer_top1 <= 100


# ---------------------------------------------------------------- born-again generations
def test_born_again_generations(teacher_dir, monkeypatch):
    from distillprune.distill import api as distill_api

    seen = {"teachers": [], "starts": [], "ends": []}
    real_objective, real_train = distill_api.objective_for, RunState.fit_with

    def objective(cfg, ls, teacher):  # the verb builds each generation's objective from its teacher
        seen["teachers"].append(copy.deepcopy(teacher().state_dict()))
        return real_objective(cfg, ls, teacher)

    def train(state, *a, **kw):
        seen["starts"].append(copy.deepcopy(state.model.state_dict()))
        out = real_train(state, *a, **kw)
        seen["ends"].append(copy.deepcopy(state.model.state_dict()))
        return out

    monkeypatch.setattr(distill_api, "objective_for", objective)
    monkeypatch.setattr(RunState, "fit_with", train)
    state = execute(
        recipe(distill_stage({"losses": [{"name": "kd"}]}, generations=3), teacher_dir=teacher_dir),
        None,
        quiet=True,
    )
    gens = state.report.stages[-1].details.generations
    assert [g["generation"] for g in gens] == [1, 2, 3]
    stored, _, _ = load_checkpoint(teacher_dir)
    for k, v in stored.state_dict().items():  # generation 1: the recipe's teacher (auto: the dense model)
        torch.testing.assert_close(seen["teachers"][0][k], v)
    for g in (1, 2):
        for k, v in seen["ends"][g - 1].items():  # generation g's student teaches generation g + 1 ...
            torch.testing.assert_close(seen["teachers"][g][k], v)
        # ... and generation g + 1's student starts afresh, from the student spec's initialisation
        assert not torch.equal(seen["starts"][g]["conv1.weight"], seen["ends"][g - 1]["conv1.weight"])
        assert seen["starts"][g]["fc.weight"].shape == seen["ends"][g - 1]["fc.weight"].shape


def test_reinitialised_keeps_a_pruned_architecture(data):
    from distillprune.prune import prune_

    model = tiny(TEACHER_KW, 0)
    spec = ArchSpec("digits_cnn", 10, [1, 8, 8], TEACHER_KW)
    prune_(model, {"width": {"ratio": 0.5, "round_to": 4}}, Examples(torch.zeros(1, 1, 8, 8), 10), history=spec)
    fresh = reinitialised(model, 5, spec)
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in model.parameters()]
    assert not torch.equal(fresh.conv1.weight, model.conv1.weight)
    user = reinitialised(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), 5)
    assert user[1].weight.shape == (10, 64)


# ---------------------------------------------------------------- multi-teacher
def test_ensemble_is_the_weighted_mean_of_logits():
    a, b = tiny(TEACHER_KW, 0).eval(), tiny(STUDENT_KW, 1).eval()
    ens = TeacherEnsemble([a, b], [1.0, 3.0])
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ens(x), 0.25 * a(x) + 0.75 * b(x))
    with pytest.raises(ValueError, match="teacher_weights"):
        TeacherEnsemble([a, b], [1.0])
    with pytest.raises(DataError, match="differ"):
        TeacherEnsemble([a, tiny({**STUDENT_KW}, 2).eval(), build_model("mlp", 7, (1, 8, 8))])(x)


def test_multi_teacher_recipe_with_member_feature_tap(teacher_dir, tmp_path):
    other = tmp_path / "other"
    save_checkpoint(other, tiny(STUDENT_KW, 3), ArchSpec("digits_cnn", 10, [1, 8, 8], STUDENT_KW))
    stage = distill_stage(
        {
            "teachers": [str(teacher_dir), str(other)],
            "teacher_weights": [3, 1],
            "losses": [{"name": "kd"}, {"name": "fitnet", "pairs": [["layer3", "members.0.layer3"]]}],
        }
    )
    state = execute(recipe(stage, teacher_dir=teacher_dir), None, quiet=True)
    assert state.report.stages[-1].accuracy is not None


# ---------------------------------------------------------------- label-free
def test_label_free_distillation_learns_without_labels(teacher_dir):
    r = recipe(
        distill_stage({"losses": [{"name": "kd", "temperature": 4}]}, epochs=4),
        teacher_dir=teacher_dir,
        labels=False,
    )
    state = execute(r, None, quiet=True)
    assert state.data.train.y is None
    assert state.report.stages[-1].accuracy > 40  # chance is 10%: it learned from the teacher alone


@pytest.mark.parametrize(
    "stage",
    [
        distill_stage({"losses": [{"name": "ce"}, {"name": "dkd"}]}),
        distill_stage({"losses": [{"name": "ce"}]}),
        {"type": "train", "epochs": 1},
    ],
    ids=["dkd", "ce-only", "train"],
)
def test_label_free_refuses_losses_that_need_labels_before_training(teacher_dir, stage, monkeypatch):
    monkeypatch.setattr(trainer_mod._Loop, "epoch", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(DataError, match="labels"):
        execute(recipe(stage, teacher_dir=teacher_dir, labels=False), None, quiet=True)


# ---------------------------------------------------------------- recipe rules
@pytest.mark.parametrize(
    "distill,needle",
    [
        ({"mdoe": "mutual"}, "did you mean 'mode'"),
        ({"teacher": "x", "teachers": ["auto"]}, "either teacher or teachers"),
        ({"teachers": ["auto", "auto"], "teacher_weights": [1]}, "teacher_weights has 1"),
        ({"teachers": []}, "at least one"),
        ({"peer": {"name": "digits_cnn"}}, "mode: mutual"),
        ({"mode": "mutual", "cache": True}, "cannot be cached"),
        ({"mode": "mutual", "teachers": ["auto"]}, "offline mode"),
        ({"losses": [{"name": "pkt", "tap": "pool", "weight": {"start": 1}}]}, "end"),
        ({"losses": [{"name": "kd", "temperature": {"start": 4, "end": 0}}]}, "temperature must be > 0"),
        ({"losses": [{"name": "kd", "label_smoothing": {"start": 0, "end": 0.1}}]}, "cannot be scheduled"),
        ({"losses": [{"name": "ce", "weight": {"start": 1, "end": -1}}]}, ">= 0"),
        ({"losses": [{"name": "kd", "weight": -1}]}, ">= 0"),
        ({"losses": [{"name": "rkd", "tap": 3}]}, "module path"),
    ],
)
def test_distill_config_rejects_bad_combinations(distill, needle):
    with pytest.raises(RecipeError, match=needle):
        validate(DistillConfig, distill)


def test_generations_need_an_offline_teacher():
    with pytest.raises(RecipeError, match="generations"):
        recipe(distill_stage({"mode": "mutual"}, generations=2))
