"""The Python verbs reproduce the recipe's stages weight for weight (``torch.equal``): ``distill`` with
born-again generations, ``quantize`` with QAT, ``cluster_`` with fine-tuning, packing and the round trip
(``prune_``'s twin is in ``test_pinned.py``). A stage is an adapter over its verb: the verb gets the
stage's config, the run's data and the run's context; only the trainer differs (the stage's checkpoints
every epoch and seeds its shuffles with ``seed + stage index``, so the verb is given that seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import distillprune as dp
from distillprune.cluster import load_packed
from distillprune.train.config import RuntimeConfig

SEED = 3
RUNTIME = RuntimeConfig(progress=False, tensorboard=False)


def recipe(stage: dict[str, Any]) -> dp.Recipe:
    return dp.Recipe.model_validate(
        {
            "name": "verb",
            "seed": SEED,
            "model": {"name": "digits_cnn", "kwargs": {"widths": [8, 16, 16], "blocks": [1, 1, 1]}},
            "data": {
                "source": "digits",
                "limit_train": 256,
                "limit_test": 120,
                "batch_size": 64,
                "augment": {"crop_padding": 1},  # the verb must train with the stage's augmentation
            },
            "runtime": RUNTIME.model_dump(),
            "measure": {"enabled": False},
            "stages": [{"type": "train", "epochs": 2}, stage],
        }
    )


def run(stage: dict[str, Any], folder: Path) -> tuple[dp.Recipe, Any, torch.nn.Module, dp.ArchSpec, dp.DataBundle]:
    """The recipe's run, its stage report, and the dense model the stage started from (with its data)."""
    r = recipe(stage)
    report = dp.compress(r, folder, quiet=True)
    model, spec, _ = dp.load_checkpoint(folder / "stages" / "01_train")
    return r, report.stages[1].details, model, spec, dp.load_data(r.data)


def context(r: dp.Recipe, seed: int) -> dp.Context:
    aug = r.data.augment
    return dp.Context(RUNTIME, dp.LoaderOptions(r.data.batch_size, seed, aug.crop_padding, aug.hflip), r.measure)


def trainer(r: dp.Recipe, opts: Any, data: dp.DataBundle) -> Any:
    """The library's trainer, seeded as the run seeds stage 2's training."""
    return dp.fit_trainer(opts, data, context(r, r.seed + 2))


def assert_same_weights(model: torch.nn.Module, folder: Path) -> None:
    stage_model, _, _ = dp.load_checkpoint(folder)
    a, b = model.state_dict(), stage_model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].cpu(), b[k].cpu()), k


def test_distill_verb_with_born_again_generations_reproduces_the_stage(tmp_path: Path):
    stage = {
        "type": "distill",
        "epochs": 1,
        "generations": 2,
        "optimizer": {"lr": 0.05},
        "distill": {"losses": [{"name": "kd", "temperature": 2.0}]},
    }
    r, details, model, spec, data = run(stage, tmp_path / "run")
    st = r.stages[1]
    out = dp.distill(model, st, data, trainer=trainer(r, st, data), history=spec, context=context(r, r.seed))
    assert_same_weights(model, tmp_path / "run" / "stages" / "02_distill")
    assert out.generations == details.generations and len(out.generations) == 2
    assert out.training.final_loss == details.training.final_loss


def test_quantize_verb_with_qat_reproduces_the_stage(tmp_path: Path):
    stage = {
        "type": "quantize",
        "method": "qat",
        "min_agreement": 0.0,
        "qat": {"epochs": 1, "optimizer": {"lr": 0.01}},
    }
    r, details, model, _, data = run(stage, tmp_path / "run")
    st = r.stages[1]
    cfg = dp.QATConfig(qat=st.qat, min_agreement=0.0)  # the scheme's own config class
    out = tmp_path / "verb.onnx"
    res = dp.quantize(model, cfg, data, trainer=trainer(r, st.qat, data), context=context(r, r.seed), out=out)
    assert_same_weights(model, tmp_path / "run" / "stages" / "02_quantize")
    assert out.read_bytes() == (tmp_path / "run" / details.path).read_bytes()
    assert res.agreement == details.agreement and res.details["qat_final_loss"] == details.details["qat_final_loss"]


def test_cluster_verb_with_fine_tuning_and_packing_reproduces_the_stage(tmp_path: Path):
    stage = {"type": "cluster", "k": 8, "epochs": 1, "optimizer": {"lr": 0.01}, "filename": "w.xz"}
    r, details, model, spec, data = run(stage, tmp_path / "run")
    st = r.stages[1]
    out = tmp_path / "verb.xz"
    rep = dp.cluster_(model, st, data, trainer=trainer(r, st, data), history=spec, context=context(r, r.seed), out=out)
    assert_same_weights(model, tmp_path / "run" / "stages" / "02_cluster")
    assert out.read_bytes() == (tmp_path / "run" / "w.xz").read_bytes()  # packed alike
    back = load_packed(out)  # the round trip: the packed file gives the model's weights back
    assert all(torch.equal(back[k], v.cpu()) for k, v in model.state_dict().items())
    assert rep.sizes == details.sizes and rep.clustered == details.clustered and rep.ratio == details.ratio
    assert [op.to_dict() for op in spec.history] == [{"op": "cluster", "k": 8, "layers": len(rep.clustered)}]


def test_prune_verb_with_a_checkpoint_teacher_reproduces_the_stage(tmp_path: Path):
    """The stage calls the verb, and the verb resolves ``distill.teacher`` itself: a checkpoint teacher (a
    network trained from another seed) scores the Taylor cuts and teaches between them, as in the run."""
    other = recipe({"type": "train", "epochs": 1}).model_copy(update={"seed": SEED + 10})
    dp.compress(other, tmp_path / "teacher", quiet=True)
    teacher = tmp_path / "teacher" / "stages" / "02_train"
    stage = {
        "type": "prune",
        "width": {"ratio": 0.5, "round_to": 4, "importance": "taylor"},
        "steps": 2,
        "epochs_per_step": 1,
        "optimizer": {"lr": 0.05},
        "distill": {"teacher": str(teacher), "losses": [{"name": "kd", "temperature": 2.0}]},
    }
    r, details, model, spec, data = run(stage, tmp_path / "run")
    _, run_spec, _ = dp.load_checkpoint(tmp_path / "run" / "stages" / "02_prune")
    st = r.stages[1]
    out = dp.prune_(model, st, data, trainer=trainer(r, st, data), history=spec, context=context(r, r.seed))
    assert_same_weights(model, tmp_path / "run" / "stages" / "02_prune")
    assert [op.to_dict() for op in spec.history] == [op.to_dict() for op in run_spec.history]
    assert out.channels_removed == details.channels_removed and out.training.final_loss == details.training.final_loss
    # and it is the checkpoint that taught: the unpruned self as the teacher cuts other channels
    dense, dense_spec, _ = dp.load_checkpoint(tmp_path / "run" / "stages" / "01_train")
    auto = st.model_copy(update={"distill": st.distill.model_copy(update={"teacher": "auto"})})
    dp.prune_(dense, auto, data, trainer=trainer(r, auto, data), history=dense_spec, context=context(r, r.seed))
    assert [op.to_dict() for op in dense_spec.history] != [op.to_dict() for op in spec.history]
