"""The five verbs have one shape -- ``verb(model, cfg, data=None, *, teacher, trainer, history, context, ...)
-> Report`` -- and reach what used to live only in their stages (born-again, mutual learning, cluster
fine-tuning and packing, QAT with the stage's augmentation); their old shapes still work, with a warning."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest
import torch

import distillprune as dp
from distillprune.cluster import load_packed
from distillprune.core.reporting import Details
from distillprune.data import DataConfig, load_data
from distillprune.models import build_model
from distillprune.prune.session import PruneSession
from distillprune.quant import QUANTIZERS, scheme_config
from distillprune.train import trainers as trainers_mod
from distillprune.train.config import RuntimeConfig

VERBS = [dp.prune_, dp.distill, dp.quantize, dp.lowrank_, dp.cluster_]
KW = {"widths": [8, 8, 16], "blocks": [1, 1, 1]}
CTX = dp.Context(RuntimeConfig(progress=False, tensorboard=False, threads=1), dp.LoaderOptions(batch_size=32))


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("digits_cnn", 10, (1, 8, 8), **KW)


@pytest.fixture(scope="module")
def data() -> dp.DataBundle:
    return load_data(DataConfig(source="digits", limit_train=128, limit_test=64))


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: v.__name__)
def test_every_verb_has_the_one_shape(verb):
    params = list(inspect.signature(verb).parameters.values())
    assert [p.name for p in params[:3]] == ["model", "cfg", "data"]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[:3])
    assert params[1].default is None and params[2].default is None  # cfg and data may be left out
    kinds = {p.name: p.kind for p in params}
    for name in ("teacher", "trainer", "history", "context"):
        assert kinds.get(name) is inspect.Parameter.KEYWORD_ONLY, f"{verb.__name__}: {name}"
        assert inspect.signature(verb).parameters[name].default is None
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)
    returned = typing.get_type_hints(verb)["return"]
    assert isinstance(returned, type) and issubclass(returned, Details), f"{verb.__name__} returns {returned}"


def test_prune_entry_points_take_at_most_eight_parameters():
    for fn, skip in ((dp.prune_, 0), (PruneSession.__init__, 1)):  # skip: self
        n = len(inspect.signature(fn).parameters) - skip
        assert n <= 8, f"{fn.__qualname__} takes {n} parameters"


def test_every_scheme_has_its_config_class_and_the_type_dispatches():
    from distillprune.quant.registry import quantizer_for, quantizer_of

    runners = set()
    for name in QUANTIZERS.names():
        cls = QUANTIZERS.get(name)
        assert cls().method == name and type(scheme_config({"method": name})) is cls
        runners.add(quantizer_of(cls()))
    assert len(runners) == len(QUANTIZERS.names())  # one quantizer per scheme, found by the config's type
    with pytest.raises(ValueError, match="already has a quantizer"):
        quantizer_for(dp.StaticConfig)(lambda job: None)
    with pytest.raises(dp.QuantizationError, match="no quantizer runs a QuantConfig"):
        quantizer_of(dp.QuantConfig())
    assert type(scheme_config(dp.QuantConfig(method="dynamic"))) is dp.DynamicConfig
    assert type(scheme_config(None)) is dp.StaticConfig
    qat = dp.QATConfig(qat={"epochs": 2})
    assert scheme_config(qat) is qat and qat.qat.epochs == 2


# ---------------------------------------------------------------- what only the stages reached before
def test_born_again_through_the_verb(data):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = dp.DistillOptions(epochs=1, generations=2, optimizer={"lr": 0.05})
    seen = []
    real = trainers_mod.fit

    def fit(m, *a, **kw):
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return real(m, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainers_mod, "fit", fit)
        rep = dp.distill(model, cfg, data, teacher=tiny(1), context=CTX)
    assert [g["generation"] for g in rep.generations] == [1, 2] and rep.training.epochs == 2
    assert all(torch.equal(seen[0][k], before[k]) for k in before)  # generation 1 starts from the model
    assert not torch.equal(seen[1]["conv1.weight"], seen[0]["conv1.weight"])  # generation 2: a fresh start
    assert not torch.equal(model.state_dict()["conv1.weight"], seen[1]["conv1.weight"])  # ... that trained


def test_born_again_rebuilds_from_the_spec_when_given(data):
    spec = dp.ArchSpec("digits_cnn", 10, [1, 8, 8], KW)
    model = tiny()
    cfg = dp.DistillOptions(epochs=1, generations=2, optimizer={"lr": 0.05})
    seen = []
    real = trainers_mod.fit

    def fit(m, *a, **kw):
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return real(m, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainers_mod, "fit", fit)
        dp.distill(model, cfg, data, history=spec, context=CTX)
    torch.manual_seed(CTX.loader.seed + 2)
    fresh = spec.build().state_dict()
    assert all(torch.equal(seen[1][k], fresh[k]) for k in fresh)  # the zoo's initialisation, seeded


def test_mutual_learning_through_the_verb(data):
    model, peer = tiny(), tiny(1)
    cfg = {"epochs": 1, "distill": {"mode": "mutual", "losses": [{"name": "ce"}, {"name": "kd", "temperature": 1}]}}
    peer_before = {k: v.clone() for k, v in peer.state_dict().items()}
    rep = dp.distill(model, cfg, data, teacher=peer, context=CTX)
    assert rep.mode == "mutual" and rep.peer_top1 is not None and 0 <= rep.peer_top1 <= 100
    assert all(torch.equal(peer.state_dict()[k], v) for k, v in peer_before.items())  # a copy trained


def test_cluster_fine_tunes_packs_and_round_trips_through_the_verb(data, tmp_path: Path):
    model, spec = tiny(), dp.ArchSpec("digits_cnn", 10, [1, 8, 8], KW)
    out = tmp_path / "w.xz"
    rep = dp.cluster_(model, {"k": 8, "epochs": 1, "optimizer": {"lr": 0.01}}, data, history=spec, context=CTX, out=out)
    assert rep.training is not None and rep.training.epochs == 1
    assert rep.sizes["file_bytes"] == out.stat().st_size and rep.ratio > 1
    back = load_packed(out)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    assert all(len(torch.unique(model.state_dict()[name])) <= 8 for name in rep.clustered)
    assert spec.history[-1].op == "cluster"


def test_cluster_fine_tuning_needs_data():
    with pytest.raises(dp.CompressionError, match="pass data"):
        dp.cluster_(tiny(), {"epochs": 1})


def test_lowrank_fine_tunes_through_the_verb(data):
    rep = dp.lowrank_(tiny(), {"rank_by": "ratio", "ratio": 0.5, "round_to": 4, "epochs": 1}, data, context=CTX)
    assert rep.factorized and rep.training is not None and rep.training.epochs == 1


def test_qat_trains_with_the_context_s_augmentation(data, tmp_path: Path):
    calls = []
    real = trainers_mod.fit

    def fit(*a, **kw):
        calls.append(kw)
        return real(*a, **kw)

    ctx = dp.Context(CTX.runtime, dp.LoaderOptions(batch_size=32, crop_padding=1, hflip=True))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainers_mod, "fit", fit)
        res = dp.quantize(
            tiny(), dp.QATConfig(qat={"epochs": 1}, min_agreement=0.0), data, context=ctx, out=tmp_path / "q.onnx"
        )
    assert res.method == "qat" and len(calls) == 1
    lo = calls[0]["context"].loader
    assert lo.crop_padding == 1 and lo.hflip is True and lo.batch_size == 32


def test_a_deprecation_warning_from_distillprune_is_an_error():
    """The library keeps no deprecated shapes: pytest turns a DeprecationWarning raised from distillprune into an
    error (pyproject's filterwarnings), while third-party ones stay ignored."""
    import warnings

    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("an old shape", DeprecationWarning, "api.py", 1, module="distillprune.prune.api")
    warnings.warn_explicit("theirs", DeprecationWarning, "x.py", 1, module="somepackage.x")


# ---------------------------------------------------------------- prune_ resolves its teacher like the others
@pytest.mark.parametrize("mode", ["checkpoint", "ensemble", "mutual peer"])
def test_prune_resolves_its_distill_block_s_teacher(data, tmp_path: Path, mode: str):
    from distillprune.prune import api as prune_api

    stored = tiny(1)
    dp.save_checkpoint(tmp_path / "teacher", stored, dp.ArchSpec("digits_cnn", 10, [1, 8, 8], KW))
    block = {
        "checkpoint": {"teacher": str(tmp_path / "teacher")},
        "ensemble": {"teachers": [str(tmp_path / "teacher"), "auto"]},
        "mutual peer": {"mode": "mutual", "peer": {"name": "digits_cnn", "kwargs": KW}},
    }[mode]
    seen = {}

    class Spy(PruneSession):
        def __init__(self, *args, **kwargs):
            seen.update(teacher=kwargs["teacher"], peer=kwargs["peer"])
            super().__init__(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prune_api, "PruneSession", Spy)
        dp.prune_(tiny(), {"width": {"ratio": 0.5, "round_to": 4}, "distill": block}, data, context=CTX)
    if mode == "checkpoint":
        assert all(torch.equal(seen["teacher"].state_dict()[k], v) for k, v in stored.state_dict().items())
    elif mode == "ensemble":
        assert len(seen["teacher"].members) == 2 and seen["peer"] is None
    else:  # the session's teacher stays the unpruned self (it scores the cuts); the peer trains beside
        assert seen["teacher"] is None and isinstance(seen["peer"], torch.nn.Module)


def test_the_verb_teaches_with_its_distill_block_s_teacher(data, tmp_path: Path):
    from distillprune.distill import api as distill_api

    stored = tiny(1)
    dp.save_checkpoint(tmp_path / "teacher", stored, dp.ArchSpec("digits_cnn", 10, [1, 8, 8], KW))
    seen = []
    real = distill_api.objective_for

    def objective(cfg, ls, teacher):
        seen.append(teacher())
        return real(cfg, ls, teacher)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distill_api, "objective_for", objective)
        dp.distill(tiny(), {"epochs": 1, "distill": {"teacher": str(tmp_path / "teacher")}}, data, context=CTX)
    assert all(torch.equal(seen[0].state_dict()[k], v) for k, v in stored.state_dict().items())
