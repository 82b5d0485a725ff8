"""An encoder that came from a sentence-transformers folder goes back as one: its pooling and normalisation run
in the encoder's forward (so pruning, distillation and ONNX see them) and ``save_pretrained`` writes the
pipeline (``modules.json``, the Pooling config, Normalize), so ``SentenceTransformer(out)`` gives the encoder's
embeddings. Tiny random BERTs built in the test (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distillprune.core.batch import NamedInputs, call
from distillprune.errors import DistillpruneError

st = pytest.importorskip("sentence_transformers")
models = pytest.importorskip("sentence_transformers.models")
transformers = pytest.importorskip("transformers")

import distillprune as dp  # noqa: E402
from distillprune.transformers import load_encoder, surgery  # noqa: E402
from distillprune.transformers.model import spec_of  # noqa: E402
from distillprune.transformers.sentence import POOLING, SentencePipeline  # noqa: E402
from distillprune.transformers.testing import tiny_bert_folder  # noqa: E402

TEXTS = ["a fine film", "the plot was thin and the acting worse", "good", "what a long, slow, dull evening it was"]


def st_folder(root: Path, pooling: str, normalize: bool, classic: bool = False) -> Path:
    """A sentence-transformers folder as the library saves one (``classic``: the format of the hub's models,
    module types of ``sentence_transformers.models`` and ``pooling_mode_*`` flags)."""
    bert = tiny_bert_folder(root / "bert", layers=3)
    t = models.Transformer(str(bert), max_seq_length=24)
    modules = [t, models.Pooling(t.get_word_embedding_dimension(), pooling)]
    out = root / "st"
    st.SentenceTransformer(modules=modules + ([models.Normalize()] if normalize else [])).save(str(out))
    if classic:
        mods = json.loads((out / "modules.json").read_text())
        for m in mods:
            m["type"] = "sentence_transformers.models." + m["type"].rsplit(".", 1)[-1]
        (out / "modules.json").write_text(json.dumps(mods))
        flags = {f"pooling_mode_{k}_token{'s' * (k != 'cls')}": k == pooling for k in ("cls", "mean", "max")}
        (out / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **flags}))
        (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 24, "do_lower_case": False}))
    return out


def ours(model: torch.nn.Module, folder: Path) -> np.ndarray:
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    enc = tok(TEXTS, padding=True, truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        return call(model.eval(), NamedInputs(dict(enc))).numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


CASES = [("mean", True, True), ("cls", False, False)]
CASES += [(p, True, False) for p in ("max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")]


@pytest.mark.parametrize(("pooling", "normalize", "classic"), CASES)
def test_the_folder_s_pipeline_runs_in_the_encoder(tmp_path, pooling, normalize, classic):
    src = st_folder(tmp_path, pooling, normalize, classic)
    m = load_encoder(str(src), "embedding")
    assert m.pooling == pooling and m.normalize is normalize
    assert m.sentence.max_seq_length == (24 if classic else None)  # (newer versions keep it in the tokenizer)
    want = st.SentenceTransformer(str(src), device="cpu").encode(TEXTS)
    assert cosine(ours(m, src), want) >= 0.9999
    if not normalize:
        assert np.allclose(np.linalg.norm(want, axis=1), np.linalg.norm(ours(m, src), axis=1), rtol=1e-4)


def test_a_pruned_encoder_goes_back_as_a_sentence_transformers_folder(tmp_path):
    src = st_folder(tmp_path, "cls", True, classic=True)
    m = load_encoder(str(src), "embedding")
    spec = spec_of(m, 0, 24)
    for op in (surgery.HeadsOp(0, [1, 3]), surgery.NeuronsOp(1, list(range(0, 64, 2))), surgery.DropLayersOp([2])):
        op.replay(m, ())
        spec.record(op)
    dp.save_checkpoint(tmp_path / "ck", m, spec)
    again, _, _ = dp.load_checkpoint(tmp_path / "ck")  # the pipeline is in the spec: the checkpoint keeps it
    assert again.pooling == "cls" and again.sentence == m.sentence
    out = again.save_pretrained(tmp_path / "out", tokenizer=src)
    assert json.loads((out / "modules.json").read_text())[1]["type"] == "sentence_transformers.models.Pooling"
    # a layout whose layers differ in heads needs the code it carries (as from_pretrained does)
    got = st.SentenceTransformer(str(out), device="cpu", trust_remote_code=True).encode(TEXTS)
    assert cosine(got, ours(m, src)) >= 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_the_uniform_prune_of_a_pipeline_run_loads_without_remote_code(tmp_path):
    """The export stage of a recipe run (embedding, label-free): its hf/ folder is a sentence-transformers one."""
    import yaml

    from distillprune.cli import main

    src = st_folder(tmp_path, "mean", True)
    (tmp_path / "data.txt").write_text("\n".join(TEXTS * 8) + "\n", encoding="utf-8")
    recipe = {
        "name": "st",
        "model": {"source": "hf", "path": str(src), "task": "embedding"},
        "data": {
            "source": "text",
            "path": str(tmp_path / "data.txt"),
            "test_fraction": 0.25,
            "text": {"max_length": 16},
        },
        "runtime": {"progress": False, "tensorboard": False},
        "measure": {"enabled": False},
        "stages": [{"type": "prune_transformer", "layers": {"drop": 1}, "epochs_per_step": 0}, {"type": "export"}],
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run")]) == 0
    model, _, _ = dp.load_checkpoint(tmp_path / "run" / "stages" / "02_export")
    got = st.SentenceTransformer(str(tmp_path / "run" / "hf"), device="cpu").encode(TEXTS)
    assert cosine(got, ours(model, src)) >= 0.9999


def test_what_the_encoder_cannot_run_is_one_line(tmp_path):
    src = st_folder(tmp_path, "mean", True)
    mods = json.loads((src / "modules.json").read_text())
    (src / "modules.json").write_text(
        json.dumps([*mods, {"idx": 3, "name": "3", "path": "3_Dense", "type": "x.Dense"}])
    )
    with pytest.raises(DistillpruneError, match="Dense is not"):
        load_encoder(str(src), "embedding")
    (src / "modules.json").write_text(json.dumps(mods))
    (src / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "mean_plus_max"}))
    with pytest.raises(DistillpruneError, match="pooling"):
        load_encoder(str(src), "embedding")
    with pytest.raises(DistillpruneError, match="sentence"):
        SentencePipeline.from_dict({"pooling": "mean", "normalize": "yes"})
    with pytest.raises(DistillpruneError, match="sentence"):
        SentencePipeline.from_dict({"pooling": "mean", "code": "import os"})
    assert set(POOLING) >= {"mean", "cls", "max"}
