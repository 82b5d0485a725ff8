"""Recipe = model + data + an ordered list of stages. YAML in, typed configs out (``yaml.safe_load`` only).

This module only composes: each family owns its config (``models.ModelConfig``, ``data.DataConfig``,
``train.RuntimeConfig``, ``measure.LatencyConfig``) and each stage type registers its own config class
(``recipes.registry``); the stage list is the discriminated union of whatever is registered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Union

from pydantic import Field, SerializeAsAny, model_validator
from torch import nn

from distillprune.core.config import StrictModel, validate
from distillprune.core.registry import nearest
from distillprune.data.base import DataBundle
from distillprune.data.config import DataConfig
from distillprune.errors import DistillpruneError, RecipeError
from distillprune.measure.latency import LatencyConfig
from distillprune.measure.probe import ProbeConfig
from distillprune.models.config import ModelConfig
from distillprune.recipes.registry import STAGES
from distillprune.recipes.yaml_io import parse_yaml, read_text
from distillprune.train.config import RuntimeConfig


class StageConfig(StrictModel):
    """Base of every stage's config: ``type`` names the registered stage; ``example`` holds the options the
    contract tests run it with (after one training epoch on a tiny model)."""

    example: ClassVar[dict[str, Any]] = {}
    #: the stage leaves the model's layers as they are (training, export): a later stage's preflight
    #: dry-run still sees the model the recipe names
    keeps_layers: ClassVar[bool] = False
    #: the stage measures the model it receives (its row is the run's dense baseline): as the first stage,
    #: the run adds no "0:input" row before it
    measures_input: ClassVar[bool] = False
    type: str

    def changes_model(self) -> bool:
        """Whether the stage trains or changes the model. Under torchrun every rank runs such a stage; one
        that only reads the model (export, evaluate, post-training quantization) runs on rank 0 alone."""
        return True

    def output_file(self) -> str | None:
        """The file the stage writes into the run folder (its ``filename``, or the default it writes when
        none is given); preflight checks that it stays inside the folder and that no two stages share it."""
        name = getattr(self, "filename", None)
        return name if isinstance(name, str) else None

    def dry_run(self, model: Callable[[], nn.Module | None], data: DataBundle, where: str, name: str) -> None:
        """Preflight: raise one ``RecipeError`` line (prefixed ``where``, e.g. ``stages.2``) for what this stage
        would refuse on the model it meets, before the stages before it train. ``model()`` builds that
        model on the CPU (None when it cannot be built cheaply: a checkpoint, another source); ``name``
        is its recipe name. Called only while every earlier stage keeps the layers."""


class Recipe(StrictModel):
    name: str = "run"
    seed: int = Field(0, ge=0, le=2**62, description="torch and numpy seeds (stages add their index)")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    measure: LatencyConfig = LatencyConfig()
    probe: ProbeConfig | None = Field(
        None,
        description="evaluation without a classifier: kNN (and linear-probe) top-1 of every measured stage on "
        "labelled probe data (embedding models, self-supervised runs)",
    )
    stages: list[SerializeAsAny[StageConfig]] = Field(..., min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _stage_types(cls, data: Any) -> Any:
        # a clearer message than pydantic's for a misspelt stage type
        names = STAGES.names()
        stages = data.get("stages") if isinstance(data, dict) else None
        for i, st in enumerate(stages if isinstance(stages, list) else []):
            if isinstance(st, dict) and st.get("type") not in names:
                t = st.get("type")
                raise ValueError(
                    f"stages.{i}.type: unknown stage type {t!r}{nearest(str(t), names)}; "
                    f"expected one of: {', '.join(names)}"
                )
        return data

    @model_validator(mode="after")
    def _tokenizer(self) -> Recipe:
        # text data is tokenised with the model folder's tokenizer unless the recipe names another
        if self.model.source == "hf" and self.model.path and self.data.text.tokenizer is None:
            self.data.text.tokenizer = self.model.path
        return self

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Recipe:  # type: ignore[override]
        _sync_stage_union()
        return super().model_validate(obj, **kwargs)


_union_of: tuple[str, ...] = ()


def _sync_stage_union() -> None:
    """Make ``Recipe.stages`` the discriminated union of the registered stage configs (rebuilt when a stage
    registers, e.g. a plugin or a test's toy stage)."""
    global _union_of
    if STAGES.version == _union_of:
        return
    configs = tuple(d.config for _, d in STAGES.items())
    if len(configs) == 1:
        item: Any = configs[0]
    else:
        item = Annotated[Union[configs], Field(discriminator="type")]  # noqa: UP007 - a runtime tuple
    Recipe.model_fields["stages"].annotation = list[item]  # type: ignore[valid-type]
    Recipe.model_rebuild(force=True)
    _union_of = STAGES.version


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``a.b.0.c=value`` (value parsed as YAML) into the raw recipe dict."""
    for ov in overrides:
        key, sep, value = ov.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set expects key=value, got {ov!r}")
        node: Any = raw
        parts = key.split(".")
        for i, p in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not (p.isascii() and p.isdigit()) or int(p) >= len(node):
                    raise RecipeError(f"--set {key}: '{p}' is not an index of a {len(node)}-item list")
                if last:
                    node[int(p)] = parse_yaml(value, f"--set {key}")
                else:
                    node = node[int(p)]
            elif isinstance(node, dict):
                if last:
                    node[p] = parse_yaml(value, f"--set {key}")
                else:
                    if node.get(p) is None:  # missing or null (``key:`` in YAML): a new mapping in place
                        node[p] = {}
                    node = node[p]
            else:
                raise RecipeError(f"--set {key}: '{'.'.join(parts[:i])}' is not a mapping")
    return raw


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    raw = parse_yaml(read_text(p), str(p))
    if not isinstance(raw, dict):
        raise RecipeError(f"{p}: a recipe is a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate(Recipe, raw, where=str(path))


def load_eval_data(spec: str | Path) -> DataBundle:
    """A recipe's data (``.yaml``/``.yml``) or an ``.npz`` with x_train, y_train, x_test, y_test."""
    from distillprune.data import load_data

    p = Path(spec)
    if p.suffix in (".yaml", ".yml"):
        return load_data(load_recipe(p).data)
    if p.suffix == ".npz":
        return load_data(DataConfig(source="npz", path=str(p)))
    raise DistillpruneError(f"--data expects a recipe (.yaml) or an .npz file, got {p.name!r}")
