"""Property-based fuzzing of issue 22's promises, in process and without training (fast):

* a recipe whose numbers are hostile (NaN, infinities, huge, booleans, text, lists nested deep) either fails
  validation with one ``RecipeError`` or validates with every float in it finite;
* a checkpoint folder whose ``model.json`` is mutated (values replaced by hostile ones, nesting 20,000 deep,
  keys dropped) or whose weights are NaN, infinite or damaged either loads a model with finite weights or
  raises ``DistillpruneError`` -- never another exception.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from distillprune.core.checkpoint import load_checkpoint, save_checkpoint
from distillprune.errors import DistillpruneError, RecipeError
from distillprune.models.build import make_model
from distillprune.models.config import ModelConfig
from distillprune.recipes import load_recipe

EXAMPLES = int(os.environ.get("DISTILLPRUNE_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

RECIPE: dict[str, Any] = {
    "name": "fuzz",
    "seed": 0,
    "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
    "data": {"source": "digits", "batch_size": 32, "normalize": {"mean": [0.5], "std": [0.25]}},
    "measure": {"min_window_s": 0.05, "max_spread": 0.25, "batch_sizes": [1, 32]},
    "stages": [
        {"type": "train", "epochs": 1, "label_smoothing": 0.1, "optimizer": {"lr": 0.05}},
        {"type": "prune", "width": {"ratio": 0.5}, "epochs_per_step": 1, "distill": {"teacher_weights": None}},
        {
            "type": "finetune",
            "epochs": 1,
            "distill": {
                "losses": [
                    {"name": "kd", "temperature": 4.0, "alpha": 0.9, "weight": 1.0},
                    {"name": "dkd", "weight": {"start": 0.0, "end": 1.0}},
                ]
            },
        },
    ],
}
# where numbers live in RECIPE (paths), the places a hostile value is put
NUMBER_PATHS = [
    ("seed",),
    ("data", "batch_size"),
    ("data", "normalize", "std", 0),
    ("data", "normalize", "mean", 0),
    ("measure", "min_window_s"),
    ("measure", "max_spread"),
    ("measure", "batch_sizes", 1),
    ("stages", 0, "epochs"),
    ("stages", 0, "label_smoothing"),
    ("stages", 0, "optimizer", "lr"),
    ("stages", 1, "width", "ratio"),
    ("stages", 1, "distill", "teacher_weights"),
    ("stages", 2, "distill", "losses", 0, "temperature"),
    ("stages", 2, "distill", "losses", 0, "alpha"),
    ("stages", 2, "distill", "losses", 0, "weight"),
    ("stages", 2, "distill", "losses", 1, "weight", "end"),
    ("stages", 2, "distill", "losses", 1, "weight", "start"),
]
HOSTILE = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 10**26, -(2**63), 0, -0.0, 5, 1e-320]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(["nan", "inf", ".inf", "1e400", "", "4"]),
    st.lists(st.sampled_from([math.nan, math.inf, 1.0, True]), min_size=1, max_size=3),
    st.integers(1, 60).map(lambda depth: _nested(depth, 1.0)),
    st.sampled_from([{"start": math.nan, "end": 1}, {"start": 0, "end": math.inf}, {"start": 1, "end": True}]),
)


def _nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def _put(tree: Any, path: tuple, value: Any) -> None:
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


def _floats(node: Any) -> list[float]:
    if isinstance(node, float):
        return [node]
    if isinstance(node, dict):
        return [f for v in node.values() for f in _floats(v)]
    if isinstance(node, (list, tuple)):
        return [f for v in node for f in _floats(v)]
    return []


@pytest.mark.slow
@FUZZ
@given(st.lists(st.tuples(st.sampled_from(NUMBER_PATHS), HOSTILE), min_size=1, max_size=3))
def test_a_recipe_validates_with_finite_numbers_or_fails_in_one_line(changes):
    r = copy.deepcopy(RECIPE)
    for path, value in changes:
        try:
            _put(r, path, copy.deepcopy(value))  # a copy: sampled values are shared between examples
        except (KeyError, IndexError, TypeError):  # an earlier change replaced the node the path goes through
            pass
    with tempfile.TemporaryDirectory(prefix="dp-fuzz-num-") as tmp:
        f = Path(tmp) / "r.yaml"
        f.write_text(yaml.safe_dump(r, sort_keys=False))  # .nan / .inf in YAML, as a user would write them
        try:
            recipe = load_recipe(f)
        except RecipeError as e:
            assert "\n" not in str(e).strip(), str(e)
            return
    dumped = recipe.model_dump(mode="python")
    bad = [v for v in _floats(dumped) if not math.isfinite(v)]
    assert not bad, f"validated with non-finite numbers {bad}: {changes}"
    for path, value in changes:  # a boolean never stands for a number
        assert not isinstance(_get(dumped, path), bool), f"{path} took {value!r} as a number"


def _get(tree: Any, path: tuple) -> Any:
    try:
        for p in path:
            tree = tree[p]
    except (KeyError, IndexError, TypeError):
        return None
    return tree


# ------------------------------------------------------------------------------------ checkpoint folders
@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    model, spec = make_model(ModelConfig(name="mlp", kwargs={"hidden": [4]}), 3, (1, 2, 2))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "good", model, spec, recipe={"seed": 0})


JSON_HOSTILE = st.one_of(
    HOSTILE,
    st.none(),
    st.text(max_size=6),
    st.dictionaries(st.text(max_size=4), st.integers(-2, 3), max_size=2),
    st.sampled_from(["zoo", "weights", "hf", "torchvision", "nosuch", "mlp", "resnet20"]),
    st.just("DEEP"),  # replaced by 20,000 levels of nesting in the text
)


def _json_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _json_paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _json_paths(v, (*prefix, i))
    return out


@pytest.mark.slow
@FUZZ
@given(st.data())
def test_a_hostile_checkpoint_loads_finite_or_fails_in_one_line(good_checkpoint, data):
    meta = json.loads((good_checkpoint / "model.json").read_text())
    for _ in range(data.draw(st.integers(0, 3), "mutations")):
        path = data.draw(st.sampled_from(_json_paths(meta)), "path")
        if data.draw(st.booleans(), "delete") and len(path) > 1:
            parent: Any = meta
            for p in path[:-1]:
                parent = parent[p]
            del parent[path[-1]]
        else:
            _put(meta, path, copy.deepcopy(data.draw(JSON_HOSTILE, "value")))
    text = json.dumps(meta, allow_nan=True).replace('"DEEP"', "[" * 20000 + "]" * 20000)
    weights = data.draw(st.sampled_from(["good", "nan", "inf", "truncated", "empty"]), "weights")
    with tempfile.TemporaryDirectory(prefix="dp-fuzz-ckpt-") as tmp:
        folder = Path(tmp) / "c"
        folder.mkdir()
        (folder / "model.json").write_text(text)
        blob = (good_checkpoint / "model.safetensors").read_bytes()
        if weights in ("nan", "inf"):
            model, _, _ = load_checkpoint(good_checkpoint)
            value = math.nan if weights == "nan" else math.inf
            save_file(
                {k: torch.full_like(v, value) for k, v in model.state_dict().items()}, str(folder / "model.safetensors")
            )
        else:
            (folder / "model.safetensors").write_bytes({"good": blob, "truncated": blob[:40], "empty": b""}[weights])
        try:
            model, _, _ = load_checkpoint(folder)
        except DistillpruneError as e:
            assert "\n" not in str(e).strip(), str(e)
            return
    assert weights == "good", "a checkpoint with damaged weights loaded"
    assert all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())
