"""The tiny-BERT recipe end to end in CI: train a classifier head -> prune heads / FFN / a layer while
distilling -> KD fine-tune -> dynamic int8 -> ONNX (+ the save_pretrained folder, reloaded by transformers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import distillprune as dp
from distillprune.core.batch import call
from distillprune.recipes import load_recipe

transformers = pytest.importorskip("transformers")
from distillprune.transformers.testing import tiny_bert_folder, tiny_sentiment  # noqa: E402

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny_bert.yaml"


@pytest.mark.slow
def test_tiny_bert_recipe_runs(tmp_path: Path):
    model = tiny_bert_folder(tmp_path / "model", layers=3, num_labels=2)
    data = tiny_sentiment(tmp_path / "data")
    recipe = load_recipe(RECIPE, [f"model.path={model}", f"data.path={data}"])
    assert recipe.data.text.tokenizer == str(model)  # the model folder's tokenizer by default
    report = dp.compress(recipe, tmp_path / "run", quiet=True)
    rows = {s.type: s for s in report.stages}
    assert rows["train"].accuracy >= 90  # the classifier head learnt the task
    pruned = rows["prune_transformer"]
    assert pruned.params < 0.6 * rows["train"].params and pruned.macs < 0.5 * rows["train"].macs
    assert pruned.details.dropped_layers and sum(pruned.details.heads_after) == 4
    assert rows["finetune"].accuracy >= 80
    q = rows["quantize"]
    assert q.artefact == "model.int8-dynamic.onnx" and "Gather" in q.details.details["op_types"]
    assert q.onnx_bytes < rows["finetune"].onnx_bytes and q.accuracy >= 75
    exp = rows["export"].details
    assert exp.max_abs_diff < 1e-3 and exp.hf_folder == "hf"
    assert report.environment["ort_seq_lengths"] == {"bs1": 16, "bs32": 16}
    # the shipped Hugging Face folder reloads with transformers alone (per-layer heads through its layout code)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(tmp_path / "run" / "hf"), trust_remote_code=True
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "run" / "hf"))
    enc = tok(["good movie", "awful plot"], padding=True, return_tensors="pt")
    final, _, _ = dp.load_checkpoint(tmp_path / "run" / "stages" / "03_finetune")
    with torch.no_grad():
        ours = call(final, dp.core.batch.NamedInputs(dict(enc)))
        assert torch.allclose(hf(**enc).logits, ours, atol=1e-5)
