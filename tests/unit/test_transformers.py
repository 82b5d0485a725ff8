"""Hugging Face encoders: named inputs, text data, head/FFN/layer surgery, replay, save_pretrained round trip,
ONNX with dynamic batch and sequence, int8 with embedding tables, pruning while distilling. Tiny random
BERTs built in the test (no download)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import distillprune as dp
from distillprune.core.batch import NamedInputs, call
from distillprune.data.config import DataConfig
from distillprune.errors import DataError, DistillpruneError
from distillprune.measure.metrics import count_params

transformers = pytest.importorskip("transformers")

from distillprune.transformers import load_encoder, surgery  # noqa: E402
from distillprune.transformers.model import spec_of  # noqa: E402
from distillprune.transformers.testing import tiny_bert_folder, tiny_sentiment  # noqa: E402


def test_ci_has_the_hf_extra():
    """CI installs the dev extra, which brings transformers: these tests must run there, not skip."""
    if os.environ.get("CI") == "true":
        import importlib.util

        assert importlib.util.find_spec("transformers") is not None


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {
        "emb": tiny_bert_folder(root / "emb", layers=3),
        "cls": tiny_bert_folder(root / "cls", layers=3, num_labels=2),
        "data": tiny_sentiment(root / "data", 64, 24),
    }


@pytest.fixture(scope="module")
def data(folders) -> dp.DataBundle:
    return dp.load_data(
        DataConfig(
            source="text",
            path=str(folders["data"]),
            batch_size=16,
            text={"tokenizer": str(folders["cls"]), "max_length": 16},
        )
    )


def test_named_inputs_pad_each_batch_to_its_longest_text():
    ids = torch.tensor([[2, 5, 6, 3, 0, 0], [2, 5, 3, 0, 0, 0], [2, 7, 8, 9, 10, 3]])
    x = NamedInputs({"input_ids": ids, "attention_mask": (ids > 0).long()})
    assert x[:2].shape == (2, 4) and x[torch.tensor([1])].shape == (1, 3) and x.shape == (3, 6)
    assert len(x) == 3 and NamedInputs.cat([x[:2], x[2:]]).shape == (3, 6)
    with pytest.raises(ValueError, match="batch size"):
        NamedInputs({"input_ids": ids, "attention_mask": ids[:2]})


def test_text_source_reads_formats_tokenises_and_goes_label_free(tmp_path, folders):
    tok = str(folders["cls"])
    rows = (json.dumps({"text": f"good movie {i}", "label": "pos"}) for i in range(5))
    (tmp_path / "t.jsonl").write_text("\n".join(rows) + "\n" + json.dumps({"text": "bad film", "label": "neg"}) + "\n")
    b = dp.load_data(
        DataConfig(source="text", path=str(tmp_path / "t.jsonl"), test_fraction=0.3, text={"tokenizer": tok})
    )
    assert b.classes == ["neg", "pos"] and len(b.train) + len(b.test) == 6
    assert b.train.x.tensors["input_ids"].dtype == torch.int64 and b.input_shape == b.test.x.shape[1:]
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "jokes").write_text("good movie. bad film!\n%\nthe plot was fine\n%\n", encoding="utf-8")
    (tmp_path / "f" / "jokes.dat").write_bytes(b"\x00\x01")  # fortune's index: never read as text
    f = dp.load_data(
        DataConfig(
            source="text", path=str(tmp_path / "f"), test_fraction=0.3, text={"tokenizer": tok, "sentences": True}
        )
    )
    assert f.train.y is None and f.num_classes == 0 and len(f.train) + len(f.test) == 3
    with pytest.raises(DataError, match="tokenizer"):
        dp.load_data(DataConfig(source="text", path=str(tmp_path / "t.jsonl")))
    with pytest.raises(DataError, match="text column"):
        dp.load_data(DataConfig(source="text", path=str(tmp_path / "t.jsonl"), text={"tokenizer": tok, "column": "x"}))


def test_surgery_replays_from_a_checkpoint_and_round_trips_through_from_pretrained(tmp_path, folders):
    m = load_encoder(str(folders["emb"]), "embedding")
    x = m.example_inputs(3, 7)
    spec = spec_of(m, 0, 7)
    for op in (surgery.HeadsOp(0, [1, 3]), surgery.NeuronsOp(1, list(range(0, 64, 2))), surgery.DropLayersOp([2])):
        op.replay(m, ())
        spec.record(op)
    assert surgery.summary(m) == {"layers": 2, "heads": [2, 4], "ffn": [64, 32]}
    assert m.hf.config.num_hidden_layers == 2 and m.hf.config.distillprune_layout["heads"] == [2, 4]
    y = call(m, x)
    dp.save_checkpoint(tmp_path / "ck", m, spec)
    again, _, _ = dp.load_checkpoint(tmp_path / "ck")  # rebuilt from the stored HF config + replayed ops
    assert torch.allclose(call(again, x), y, atol=1e-6)
    out = m.save_pretrained(tmp_path / "hf", tokenizer=folders["emb"])
    hf = transformers.AutoModel.from_pretrained(str(out), trust_remote_code=True).eval()
    h = hf(**x.tensors).last_hidden_state
    mask = x.tensors["attention_mask"].unsqueeze(-1).float()
    assert torch.allclose(torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1), y, atol=1e-5)
    assert torch.allclose(call(load_encoder(str(out), "embedding"), x), y, atol=1e-6)
    with pytest.raises(DistillpruneError, match="every attention head"):
        surgery.apply_heads(m, 0, [])


def test_onnx_has_dynamic_batch_and_sequence_and_times_at_stated_pairs(folders):
    from distillprune.export.onnx import onnx_bytes, parity
    from distillprune.measure.latency import LatencyConfig, ort_latency

    m = load_encoder(str(folders["cls"]), "sequence-classification", 2)
    blob = onnx_bytes(m, (8,))
    for b, s in ((1, 5), (4, 13)):
        x = m.example_inputs(b, s)
        x.tensors["attention_mask"][0, -2:] = 0
        par = parity(m, blob, x)
        assert par["max_abs_diff"] < 1e-4 and par["top1_agreement"] == 1.0
    lat = ort_latency(
        blob, (8,), LatencyConfig(batch_sizes=[1, 2], seq_lengths=[16, 32], repeats=1, warmup=0, min_window_s=0.001)
    )
    assert set(lat) == {"bs1", "bs2"} and all(v > 0 for v in lat.values())


def test_dynamic_int8_stores_embedding_tables_and_judges_embedders_by_cosine(tmp_path, folders, data):
    m = load_encoder(str(folders["emb"]), "embedding")
    res = dp.quantize(m, {"method": "dynamic"}, data, out=tmp_path / "q.onnx")
    assert "Gather" in res.details["op_types"] and res.cosine is not None and res.cosine > 0.95
    assert res.bytes < res.float_bytes
    with pytest.raises(dp.QuantizationError, match="cosine"):
        dp.quantize(m, {"method": "dynamic", "min_cosine": 1.0}, data, out=tmp_path / "q2.onnx")


def test_prune_heads_ffn_layers_while_distilling(folders, data):
    m = load_encoder(str(folders["cls"]), "sequence-classification", 2)
    spec = spec_of(m, 2, 16)
    params = count_params(m)
    rep = dp.prune_(
        m,
        {
            "heads": {"ratio": 0.5},
            "ffn": {"ratio": 0.5, "round_to": 8},
            "layers": {"drop": 1},
            "steps": 2,
            "epochs_per_step": 1,
            "distill": {
                "losses": [
                    {"name": "kd"},
                    {"name": "hidden", "layers": "auto"},
                    {"name": "minilm", "layers": "auto", "heads": 2},
                ]
            },
        },
        data,
        history=spec,
        context=dp.Context(loader=dp.LoaderOptions(16)),
    )
    assert len(rep.dropped_layers) == 1 and sum(rep.heads_after) == 4 and rep.ffn_after == [32, 32]
    assert rep.training is not None and rep.training.epochs == 2
    assert spec.history[0].op == "drop_layers" and count_params(m) < params / 2
    rebuilt = spec.build()
    rebuilt.load_state_dict(m.state_dict())
    x = data.inputs("test")
    assert torch.allclose(call(rebuilt.eval(), x), call(m.eval(), x), atol=1e-5)


def test_width_pruning_of_an_encoder_is_refused_in_one_line(folders, data):
    m = load_encoder(str(folders["cls"]), "sequence-classification", 2)
    with pytest.raises(DistillpruneError, match="heads / ffn / layers"):
        dp.prune_(m, {"width": {"ratio": 0.5}}, data=data)


def test_fisher_scores_and_layer_choice(folders, data):
    from distillprune.prune.criteria import criterion
    from distillprune.transformers.importance import EncoderGroup

    m = load_encoder(str(folders["emb"]), "embedding")
    batches = [
        x for (x, _), _ in zip(dp.data.TensorLoader(data.train, 16, data.mean, data.std), range(2), strict=False)
    ]
    fisher = criterion("fisher")
    assert fisher.needs_gradients and fisher.family == "encoder"
    fisher.prepare(m, batches)
    heads = [fisher.scores(EncoderGroup(i, "heads")) for i in range(3)]
    ffn = [fisher.scores(EncoderGroup(i, "ffn")) for i in range(3)]
    assert [h.shape[0] for h in heads] == [4, 4, 4] and [f.shape[0] for f in ffn] == [64, 64, 64]
    assert all(bool((h >= 0).all()) and float(h.sum()) > 0 for h in heads)
    # the layers go by the block scorer (KD loss when skipped), through the session
    rep = dp.prune_(m, {"layers": {"drop": 2}}, data, context=dp.Context(loader=dp.LoaderOptions(16)))
    assert len(rep.dropped_layers) == 2 and len(surgery.layers(m)) == 1 and rep.heads_after == [4]


def test_target_plan_meets_a_macs_ratio(folders):
    from distillprune.transformers.config import TransformerTargetConfig as TargetConfig
    from distillprune.transformers.plan import plan_encoder

    m = load_encoder(str(folders["emb"]), "embedding")
    plan = plan_encoder(m, (16,), TargetConfig(macs_ratio=2.0, depth_fractions=[0.0, 0.34]), round_to=8)
    assert plan.macs_ratio >= 2.0 and plan.layers_dropped in (0, 1)
    assert sum(c.chosen for c in plan.candidates) == 1 and plan.achieved == plan.macs_ratio


def test_the_encoder_option_bisects_its_ratio_toward_the_band():
    from distillprune.prune.search import Band, Candidate
    from distillprune.transformers.plan import _Width

    band, c = Band(2.0, 0.1), Candidate("c", 1, 1)
    opt = _Width(torch.nn.Identity(), 1, "ffn", 0.8, band, 64)
    assert opt.first() == 0.8
    assert opt.next(0.8, c, 3.0) == 0.0  # the widest cut overshoots: the layers alone next
    assert opt.next(0.0, c, 1.5) == pytest.approx(0.4)  # too slow: bisect between them
    assert opt.next(0.4, c, 2.5) == pytest.approx(0.2)  # past the band: give width back
    assert opt.next(0.2, c, 1.9) == pytest.approx(0.3)
    assert _Width(torch.nn.Identity(), 1, "ffn", 0.8, band, 64).next(0.8, c, 1.9) is None  # the widest misses
    alone = _Width(torch.nn.Identity(), 1, "ffn", 0.8, band, 64)
    assert alone.next(0.8, c, 3.0) == 0.0 and alone.next(0.0, c, 2.5) is None  # the layers alone overshoot
    no_depth = _Width(torch.nn.Identity(), 0, "ffn", 0.8, band, 64)
    assert no_depth.next(0.8, c, 3.0) == pytest.approx(0.4)  # nothing dropped: never the dense model itself
    steps = [no_depth.next(r, c, 3.0) for r in (0.4, 0.2, 0.1, 0.05, 0.025, 0.0125)]
    assert steps[-2] == pytest.approx(0.0125) and steps[-1] is None  # six bisections at most


def test_distill_defaults_to_adamw_and_the_embedding_loss_for_an_embedder(folders, data):
    import copy

    m = load_encoder(str(folders["emb"]), "embedding")
    teacher = copy.deepcopy(m)
    surgery.drop_layers(m, [0])
    with torch.no_grad():  # a random tiny BERT barely changes when a layer goes: move the student away first
        g = torch.Generator().manual_seed(0)
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    x = data.inputs("test")

    @torch.no_grad()
    def cosine() -> float:
        return float(torch.nn.functional.cosine_similarity(call(m.eval(), x), call(teacher, x)).mean())

    before = cosine()
    opts = {"epochs": 3, "optimizer": {"lr": 1e-3}}
    rep = dp.distill(m, opts, data.without_labels(), teacher=teacher, context=dp.Context(loader=dp.LoaderOptions(16)))
    assert rep.losses == ["embedding"] and cosine() > before


def test_static_int8_calibrates_on_named_batches(tmp_path, folders, data):
    m = load_encoder(str(folders["cls"]), "sequence-classification", 2)
    cfg = {"method": "static", "min_agreement": 0.0, "calibration": {"samples": 32}}
    res = dp.quantize(m, cfg, data, out=tmp_path / "s.onnx")
    assert res.details["calibration_samples"] == 32 and res.details["quantized_nodes"] > 0
    assert res.cosine is not None and res.cosine > 0.9
