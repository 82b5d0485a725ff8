"""Encoder recovery: least-squares re-fit of the attention output and FFN down projections after cuts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import distillprune as dp
from distillprune.core.batch import call
from distillprune.data.config import DataConfig

transformers = pytest.importorskip("transformers")

from distillprune.prune.recovery import RecoveryConfig  # noqa: E402
from distillprune.transformers import load_encoder  # noqa: E402
from distillprune.transformers.hub_code import part  # noqa: E402
from distillprune.transformers.recover import recover_encoder  # noqa: E402
from distillprune.transformers.surgery import apply_heads, apply_neurons, layers  # noqa: E402
from distillprune.transformers.testing import tiny_bert_folder, tiny_sentiment  # noqa: E402

HEAD = 8  # tiny BERT: hidden 32, 4 heads


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_recover")
    return {"emb": tiny_bert_folder(root / "emb", layers=2), "data": tiny_sentiment(root / "data", 48, 16)}


@pytest.fixture(scope="module")
def data(folders) -> dp.DataBundle:
    text = {"tokenizer": str(folders["emb"]), "max_length": 16}
    return dp.load_data(DataConfig(source="text", path=str(folders["data"]), batch_size=16, text=text))


def encoder(folders) -> torch.nn.Module:
    return load_encoder(str(folders["emb"]), "embedding").eval()


def batches(data) -> list:
    x = data.inputs("train")
    return [x[i : i + 16] for i in range(0, 48, 16)]


def cut(model) -> None:
    for li in range(len(layers(model))):
        apply_heads(model, li, [0, 1])
        apply_neurons(model, li, list(range(0, 64, 2)))


@torch.no_grad()
def output_error(student, teacher, xs) -> float:
    return sum(float((call(student, x) - call(teacher, x)).pow(2).mean()) for x in xs)


def test_recovery_never_increases_the_calibration_error(folders, data):
    teacher = encoder(folders)
    student = copy.deepcopy(teacher)
    cut(student)
    xs = batches(data)
    before = output_error(student, teacher, xs)
    report = recover_encoder(student, teacher, xs, RecoveryConfig())
    assert [(r.layer, r.part) for r in report.refits] == [
        (0, "attention_output"),
        (0, "ffn_output"),
        (1, "attention_output"),
        (1, "ffn_output"),
    ]
    assert report.tokens > 48  # real tokens of the 48 sentences, padding left out
    for r in report.refits:
        assert r.status in ("refit", "kept") and r.error_after <= r.error_before, r
    assert any(r.status == "refit" and r.error_after < 0.9 * r.error_before for r in report.refits)
    assert output_error(student, teacher, xs) < before
    # the first solve saw inputs no later solve changes: its reported error is the projection's error now
    first = report.refits[0]
    s_proj, t_proj = part(layers(student)[0], 3), part(layers(teacher)[0], 3)
    got, want = [], []
    s_proj.register_forward_hook(lambda m, i, o: got.append(o))
    t_proj.register_forward_hook(lambda m, i, o: want.append(o))
    sq, n = 0.0, 0
    with torch.no_grad():
        for x in xs:
            call(student, x)
            call(teacher, x)
            real = x.tensors["attention_mask"].bool()
            sq += float((got[-1] - want[-1])[real].double().pow(2).sum())
            n += int(real.sum())
    assert sq / n == pytest.approx(first.error_after, rel=1e-3)


@torch.no_grad()
def duplicated(folders) -> torch.nn.Module:
    """Heads 2, 3 copies of heads 0, 1 and FFN neurons 32..63 copies of 0..31 (weights and biases), so every
    cut input is a linear combination of kept ones."""
    model = encoder(folders)
    for layer in layers(model):
        for i in range(3):  # query, key, value
            lin = part(layer, i)
            lin.weight[2 * HEAD :] = lin.weight[: 2 * HEAD]
            lin.bias[2 * HEAD :] = lin.bias[: 2 * HEAD]
        up = part(layer, 4)
        up.weight[32:] = up.weight[:32]
        up.bias[32:] = up.bias[:32]
    return model


def test_a_cut_of_duplicated_inputs_reconstructs_to_float_precision(folders, data):
    teacher = duplicated(folders)
    student = copy.deepcopy(teacher)
    for li in range(len(layers(student))):
        apply_heads(student, li, [0, 1])
        apply_neurons(student, li, list(range(32)))
    xs = batches(data)
    cut_error = output_error(student, teacher, xs)
    report = recover_encoder(student, teacher, xs, RecoveryConfig(damp=1e-12))
    assert all(r.status == "refit" and r.error_after < 1e-9 for r in report.refits), report.refits
    after = output_error(student, teacher, xs)
    assert cut_error > 1e-6 and after < 1e-6 * cut_error, (cut_error, after)


def test_session_reports_recovery_and_it_can_be_switched_off(folders, data):
    def run(enabled: bool):
        m = encoder(folders)
        recovery = {"method": "lstsq"} if enabled else None
        cfg = {"heads": {"ratio": 0.5}, "ffn": {"ratio": 0.5, "round_to": 8}, "recovery": recovery}
        return m, dp.prune_(m, cfg, data, context=dp.Context(loader=dp.LoaderOptions(16)))

    teacher = encoder(folders)
    on, rep_on = run(True)
    off, rep_off = run(False)
    assert rep_off.recovery == [] and len(rep_on.recovery) == 1
    assert {r.part for r in rep_on.recovery[0].refits if r.status == "refit"} == {"attention_output", "ffn_output"}
    assert rep_on.heads_after == rep_off.heads_after and rep_on.ffn_after == rep_off.ffn_after
    xs = batches(data)
    assert output_error(on, teacher, xs) < output_error(off, teacher, xs)
    with pytest.raises(dp.DistillpruneError, match="damp"):
        dp.prune_(encoder(folders), {"heads": {"ratio": 0.5}, "recovery": {"damp": -1}}, data=data)
    with pytest.raises(dp.DistillpruneError, match="least squares"):  # data-free compensation is a CNN's
        dp.prune_(encoder(folders), {"heads": {"ratio": 0.5}, "recovery": {"method": "bias"}}, data=data)
