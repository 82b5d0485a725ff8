"""Typed configs (unknown keys with suggestions, one-line errors), registries, --set overrides, loss options."""

from __future__ import annotations

import copy

import pytest
import yaml
from pydantic import ValidationError

from distillprune.core.config import StrictModel, validate
from distillprune.core.registry import Registry, nearest
from distillprune.data.config import DataConfig
from distillprune.distill.config import DistillConfig, LossSpec
from distillprune.errors import DistillpruneError, RecipeError
from distillprune.prune.config import PruneConfig, WidthConfig
from distillprune.recipes import BUILTIN, Recipe, apply_overrides, load_recipe, read_yaml

TRAIN = {"type": "train", "epochs": 1}


# ---------------------------------------------------------------- StrictModel
def test_unknown_key_is_rejected_with_suggestion():
    with pytest.raises(ValidationError) as ei:
        WidthConfig.model_validate({"ratoi": 0.5})
    msg = str(ei.value)
    assert "unknown key 'ratoi'" in msg and "did you mean 'ratio'" in msg
    assert "valid keys: ratio, importance" in msg


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(ValidationError) as ei:
        WidthConfig.model_validate({"ratio": 0.5, "zzzzzz": 1})
    assert "did you mean" not in str(ei.value) and "valid keys" in str(ei.value)


def test_assignment_is_validated():
    cfg = WidthConfig(ratio=0.5)
    with pytest.raises(ValidationError):
        cfg.ratio = 1.5
    assert cfg.ratio == 0.5


def test_strict_model_subclass():
    class Opts(StrictModel):
        alpha: int = 1

    assert Opts.model_validate({"alpha": 3}).alpha == 3
    with pytest.raises(ValidationError, match="did you mean 'alpha'"):
        Opts.model_validate({"alpah": 3})


@pytest.mark.parametrize(
    "raw,where",
    [
        ({"stages": [{"type": "prune", "width": {"ratio": 3}}]}, "stages.0.width.ratio"),
        ({"stages": [TRAIN, {"type": "prune", "width": {"ratoi": 0.5}}]}, "stages.1.width"),
        (
            {
                "stages": [
                    TRAIN,
                    {"type": "finetune", "epochs": 1, "distill": {"losses": [{"name": "kd", "temprature": 3}]}},
                ]
            },
            "stages.1.distill.losses.0",
        ),
        ({"stages": [{"type": "distill", "epochs": 1, "distill": {"teacher": 3}}]}, "stages.0.distill.teacher"),
        ({"data": {"batch_size": 0}, "stages": [TRAIN]}, "data.batch_size"),
        ({"runtime": {"amp": "fp8"}, "stages": [TRAIN]}, "runtime.amp"),
        ({"stages": []}, "stages"),
    ],
)
def test_validate_raises_one_line_recipe_error_with_location(raw, where):
    with pytest.raises(RecipeError) as ei:
        validate(Recipe, raw, where="my.yaml")
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"my.yaml: {where}: "), msg


def test_validate_reports_value_and_extra_errors():
    with pytest.raises(RecipeError) as ei:
        validate(WidthConfig, {"ratio": 3, "max_ratio": 7})
    msg = str(ei.value)
    assert msg.startswith("ratio: ") and "(got 3)" in msg and msg.endswith("[+1 more]")


def test_misspelt_stage_type_suggests():
    with pytest.raises(RecipeError, match=r"stages\.0\.type: unknown stage type 'trian' \(did you mean 'train'\?\)"):
        validate(Recipe, {"stages": [{"type": "trian", "epochs": 1}]})


def test_stage_rules():
    with pytest.raises(RecipeError, match="at least one of width, depth, unstructured"):
        validate(Recipe, {"stages": [{"type": "prune"}]})
    with pytest.raises(RecipeError, match="own prune stage"):
        validate(Recipe, {"stages": [{"type": "prune", "width": {"ratio": 0.5}, "unstructured": {"sparsity": 0.5}}]})
    with pytest.raises(ValidationError):
        PruneConfig.model_validate({})
    # a train stage has no distill option
    with pytest.raises(RecipeError, match="stages.0: unknown key 'distill'"):
        validate(Recipe, {"stages": [{**TRAIN, "distill": {}}]})


def test_registries_in_configs_suggest_the_nearest():
    # unknown registry names in a recipe: an error the user can fix, with the nearest name
    for raw, hint in [
        ({"model": {"name": "resnet21"}, "stages": [TRAIN]}, "resnet"),
        ({"data": {"source": "digitz"}, "stages": [TRAIN]}, "digits"),
        ({"stages": [{"type": "prune", "width": {"ratio": 0.5, "importance": "l3"}}]}, "l"),
        ({"stages": [{"type": "finetune", "epochs": 1, "distill": {"losses": [{"name": "kdd"}]}}]}, "kd"),
    ]:
        with pytest.raises(DistillpruneError, match=f"did you mean '{hint}"):
            validate(Recipe, raw)


def test_builtin_recipe_validates():
    r = load_recipe(BUILTIN / "digits_demo.yaml")
    assert [s.type for s in r.stages] == ["train", "prune", "finetune", "export"]
    assert r.stages[1].width.round_to == 8 and r.stages[1].depth.blocks == 3
    assert r.stages[2].distill.losses[0].spec() == {"name": "kd", "weight": 1.0, "temperature": 4.0, "alpha": 0.9}


# ---------------------------------------------------------------- Registry
def test_registry_refuses_duplicates():
    reg: Registry[int] = Registry("widget")
    reg.register("alpha")(1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(2)
    assert reg.get("alpha") == 1  # not overwritten


def test_registry_unknown_name_lists_nearest_and_all():
    reg: Registry[int] = Registry("widget")
    for i, n in enumerate(["alpha", "beta", "gamma"]):
        reg.register(n)(i)
    with pytest.raises(DistillpruneError) as ei:
        reg.get("alpah")
    msg = str(ei.value)
    assert "unknown widget 'alpah'" in msg and "(did you mean 'alpha'?)" in msg
    assert "expected one of: alpha, beta, gamma" in msg
    with pytest.raises(DistillpruneError) as ei:
        reg.get("zzzzz")
    assert "did you mean" not in str(ei.value)
    assert reg.names() == ["alpha", "beta", "gamma"] and list(reg) == reg.names()
    assert "beta" in reg and "delta" not in reg


def test_registry_decorator_returns_the_object():
    reg: Registry[type] = Registry("thing")

    @reg.register("k")
    class K:
        pass

    assert reg.get("k") is K


def test_declared_names_are_listed_and_checked_before_their_module_is_imported(monkeypatch):
    imported = []
    reg: Registry[int] = Registry("widget")
    reg.declare("some.module", "beta", "alpha")
    reg.register("gamma")(3)

    def import_module(module: str) -> None:  # the module registers alpha only, once (a second import is a no-op)
        if module not in imported:
            reg.register("alpha")(1)
        imported.append(module)

    monkeypatch.setattr("importlib.import_module", import_module)
    assert reg.names() == ["alpha", "beta", "gamma"] and reg.in_order() == ["beta", "alpha", "gamma"]
    assert reg.check("alpha") == "alpha" and "beta" in reg and not reg.loaded("alpha") and reg.loaded("gamma")
    assert imported == []
    assert reg.get("alpha") == 1 and imported == ["some.module"] and reg.loaded("alpha")
    assert reg.in_order() == ["beta", "alpha", "gamma"]  # a registration keeps its declared place
    with pytest.raises(ValueError, match="did not register widget 'beta'"):
        reg.get("beta")  # the module registered alpha only: a wrong declaration is a bug, said so
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(2)
    with pytest.raises(ValueError, match="already declared or registered"):
        reg.declare("other.module", "gamma")


def test_a_registry_filled_across_the_library_loads_it_on_first_read(monkeypatch):
    from distillprune.core import registry as registry_module

    calls = []
    lib = registry_module._Library()
    lib.loader = lambda: calls.append("load")
    monkeypatch.setattr(registry_module, "library", lib)
    plain: Registry[int] = Registry("widget")
    plain.names()
    assert calls == []  # a toy registry does not import the library
    spread: Registry[int] = Registry("op", loads_library=True)
    spread.register("x")(1)
    assert spread.get("x") == 1 and "x" in spread and spread.names() == ["x"]
    assert calls == ["load"]  # once per process


def test_nearest():
    assert nearest("ratoi", ["ratio", "round_to"]) == " (did you mean 'ratio'?)"
    assert nearest("xyz", ["ratio"]) == ""


# ---------------------------------------------------------------- --set overrides
BASE = {
    "name": "r",
    "data": {"batch_size": 64},
    "stages": [{"type": "train", "epochs": 2}, {"type": "finetune", "epochs": 1, "distill": None}],
}


def test_apply_overrides_nested_and_list_values():
    raw = apply_overrides(
        copy.deepcopy(BASE),
        [
            "data.batch_size=32",
            "stages.0.epochs=5",
            "stages.0.optimizer.lr=0.01",
            "runtime.progress=false",
            "measure.batch_sizes=[1, 8]",
            "name=other",
            "stages.1.distill.teacher=ckpt/t",
        ],
    )
    assert raw["data"]["batch_size"] == 32
    assert raw["stages"][0] == {"type": "train", "epochs": 5, "optimizer": {"lr": 0.01}}
    assert raw["runtime"] == {"progress": False}
    assert raw["measure"]["batch_sizes"] == [1, 8]
    assert raw["name"] == "other"
    # a null mapping (``distill:`` in YAML) is replaced in place, not written into a detached dict
    assert raw["stages"][1]["distill"] == {"teacher": "ckpt/t"}
    r = validate(Recipe, raw)
    assert r.stages[0].optimizer.lr == 0.01 and r.measure.batch_sizes == [1, 8]


def test_apply_overrides_replaces_list_items():
    raw = apply_overrides(copy.deepcopy(BASE), ["stages.1={type: export}"])
    assert raw["stages"][1] == {"type": "export"}


@pytest.mark.parametrize(
    "ov,match",
    [
        ("stages.5.epochs=1", "not an index of a 2-item list"),
        ("stages.x.epochs=1", "not an index"),
        ("data.batch_size.foo=1", "'data.batch_size' is not a mapping"),
        ("novalue", "key=value"),
        ("=3", "key=value"),
    ],
)
def test_apply_overrides_bad_paths(ov, match):
    with pytest.raises(RecipeError, match=match):
        apply_overrides(copy.deepcopy(BASE), [ov])


def test_load_recipe_with_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(BASE))
    r = load_recipe(p, ["stages.0.epochs=7", "data.limit_train=100"])
    assert r.stages[0].epochs == 7 and r.data.limit_train == 100
    with pytest.raises(RecipeError, match=r"r\.yaml: stages\.0\.epochs"):
        load_recipe(p, ["stages.0.epochs=0"])


def test_read_yaml_errors(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        read_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="mapping at the top level"):
        read_yaml(lst)
    obj = tmp_path / "obj.yaml"
    obj.write_text("!!python/object:os.system ls\n")
    with pytest.raises(RecipeError):  # safe_load only: no arbitrary objects
        read_yaml(obj)


# ---------------------------------------------------------------- LossSpec
def test_loss_spec_rejects_unknown_options_with_nearest():
    with pytest.raises(ValidationError) as ei:
        LossSpec.model_validate({"name": "kd", "temprature": 2.0})
    msg = str(ei.value)
    assert "loss 'kd' has no option 'temprature'" in msg and "did you mean 'temperature'" in msg
    assert "options: temperature, alpha, label_smoothing" in msg
    with pytest.raises(ValidationError, match="did you mean 'pairs'"):
        LossSpec.model_validate({"name": "fitnet", "pair": [["a", "b"]]})
    with pytest.raises(ValidationError):
        LossSpec.model_validate({"name": "kd", "weight": -1})


def test_loss_spec_options_become_constructor_arguments():
    spec = LossSpec.model_validate({"name": "kd", "weight": 0.5, "temperature": 2.0})
    assert spec.spec() == {"name": "kd", "weight": 0.5, "temperature": 2.0}
    d = DistillConfig()
    assert d.teacher == "auto" and [s.spec() for s in d.losses] == [{"name": "kd", "weight": 1.0}]


def test_data_config_ranges():
    with pytest.raises(ValidationError):
        DataConfig(test_fraction=1.0)
    with pytest.raises(ValidationError, match="did you mean 'batch_size'"):
        DataConfig.model_validate({"batchsize": 3})
