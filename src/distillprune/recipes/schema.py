"""Recipe = model + data + an ordered list of stages. YAML in, typed configs out (``yaml.safe_load`` only)."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from distillprune.auto.search import TargetConfig
from distillprune.cluster.config import ClusterConfig
from distillprune.core.config import StrictModel, register_union_tags, validate
from distillprune.core.registry import nearest
from distillprune.data.config import DataConfig
from distillprune.errors import RecipeError
from distillprune.lowrank.config import LowRankConfig
from distillprune.measure.latency import LatencyConfig
from distillprune.prune.config import DepthConfig, UnstructuredConfig, WidthConfig
from distillprune.quant.config import QuantConfig
from distillprune.train.config import OptimizerConfig, RuntimeConfig, ScheduleConfig


class ModelConfig(StrictModel):
    name: str = Field("digits_cnn", description="zoo name (distillprune models) or torchvision / timm")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="builder arguments, e.g. widths")
    checkpoint: str | None = Field(None, description="start from this distillprune checkpoint folder")

    @model_validator(mode="after")
    def _known(self) -> ModelConfig:
        from distillprune.models import MODELS

        MODELS.get(self.name)
        return self


class LossSpec(BaseModel):
    """``{name: kd, weight: 1.0, temperature: 4}``: the options are the loss's constructor arguments.

    The weight and the loss's schedulable options may be ramps over the stage:
    ``{name: kd, weight: {start: 0, end: 1}, temperature: {start: 8, end: 2, schedule: cosine}}``.
    """

    model_config = ConfigDict(extra="allow")
    name: str
    weight: float | dict[str, Any] = Field(1.0, description="a number >= 0, or a ramp {start, end, schedule, "
                                                             "fraction}")

    @model_validator(mode="after")
    def _options(self) -> LossSpec:
        from distillprune.distill.losses import LOSSES
        from distillprune.distill.schedule import build_term
        from distillprune.errors import DistillpruneError

        cls = LOSSES.get(self.name)
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        for key in self.model_extra or {}:
            if key not in params:
                raise ValueError(f"loss '{self.name}' has no option '{key}'{nearest(key, params)}; "
                                 f"options: {', '.join(params) or 'none'}")
        if isinstance(self.weight, (int, float)) and self.weight < 0:
            raise ValueError(f"loss '{self.name}': weight must be >= 0, got {self.weight}")
        try:  # build it once: bad option values fail at validation, not at training
            build_term(self.spec())
        except (TypeError, DistillpruneError) as e:
            raise ValueError(f"loss '{self.name}': {e}") from None
        return self

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, **(self.model_extra or {})}


class DistillConfig(StrictModel):
    teacher: str = Field("auto", description="auto: the dense model before pruning; or a checkpoint folder")
    teachers: list[str] | None = Field(
        None, description="multi-teacher: checkpoint folders or auto, logits averaged by teacher_weights")
    teacher_weights: list[float] | None = Field(None, description="weights of the teachers' logits")
    mode: Literal["offline", "mutual"] = Field(
        "offline", description="mutual: the teacher trains too, each net distilling into the other (DML)")
    peer: ModelConfig | None = Field(
        None, description="mutual: a fresh network to train with the student (default: the teacher itself)")
    cache: bool = Field(False, description="compute the teacher's outputs once (no random augmentation)")
    fold_teacher: bool = Field(True, description="run a checked copy of the frozen teacher with its BatchNorm "
                                                 "folded into the convolutions (faster, same outputs)")
    compile_teacher: bool = Field(False, description="torch.compile that copy (no feature taps); pays on long runs")
    losses: list[LossSpec] = Field(default_factory=lambda: [LossSpec(name="kd")])

    @model_validator(mode="after")
    def _modes(self) -> DistillConfig:
        from distillprune.distill.modes import check_distill_config

        check_distill_config(self)
        return self


class TrainingOptions(StrictModel):
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip: float | None = Field(None, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class TrainStage(TrainingOptions):
    """Train the current model with cross-entropy (the teacher, usually)."""

    type: Literal["train"]
    epochs: int = Field(..., ge=1)


class DistillStage(TrainingOptions):
    """Distil a teacher into the current model, or into a new ``student`` model."""

    type: Literal["distill"]
    epochs: int = Field(..., ge=1)
    generations: int = Field(1, ge=1, description="born-again: each generation's student teaches the next, "
                                                 "which restarts from a fresh initialisation")
    distill: DistillConfig = DistillConfig()
    student: ModelConfig | None = None

    @model_validator(mode="after")
    def _generations(self) -> DistillStage:
        if self.generations > 1 and self.distill.mode == "mutual":
            raise ValueError("generations (born-again) need an offline teacher; mode: mutual has none")
        return self


class FinetuneStage(TrainingOptions):
    """Fine-tune the current model; with KD from the dense teacher unless ``distill`` is null."""

    type: Literal["finetune"]
    epochs: int = Field(..., ge=1)
    distill: DistillConfig | None = DistillConfig()


class PruneStage(TrainingOptions):
    """Prune while distilling: ``steps`` times, prune a little then train ``epochs_per_step`` with KD."""

    type: Literal["prune"]
    width: WidthConfig | None = None
    depth: DepthConfig | None = None
    unstructured: UnstructuredConfig | None = None
    target: TargetConfig | None = Field(None, description="search width ratio (and depth) to reach a MACs "
                                                          "ratio or a measured ORT speedup")
    steps: int = Field(1, ge=1)
    epochs_per_step: int = Field(0, ge=0)
    distill: DistillConfig | None = DistillConfig()

    @model_validator(mode="after")
    def _something(self) -> PruneStage:
        if not (self.width or self.depth or self.unstructured):
            raise ValueError("a prune stage needs at least one of width, depth, unstructured")
        if self.unstructured and (self.width or self.depth):
            raise ValueError("put unstructured pruning in its own prune stage: masks do not survive channel removal")
        if self.target is not None:
            if self.width is None:
                raise ValueError("target needs a width block (importance, round_to); its ratio is searched")
            if self.depth is not None:
                raise ValueError("with a target, depth is searched: use target.depth_fractions instead of depth")
        elif self.width is not None and self.width.ratio is None:
            raise ValueError("width.ratio is required unless the stage has a target")
        return self


class EvaluateStage(StrictModel):
    """Measure the current model (accuracy, params, MACs, size, latency) without changing it."""

    type: Literal["evaluate"]


class ExportStage(StrictModel):
    """Write ONNX and check it against torch."""

    type: Literal["export"]
    filename: str = "model.onnx"
    max_abs_diff: float = Field(1e-3, gt=0, description="parity tolerance on the logits")


class QATOptions(TrainingOptions):
    """Quantization-aware training (``method: qat``): KD from the teacher, fake-quant weights/activations."""

    epochs: int = Field(1, ge=1)
    distill: DistillConfig | None = DistillConfig()
    observer_fraction: float = Field(0.5, ge=0, le=1, description="share of the steps during which activation "
                                                                  "ranges still follow the data; frozen after")


class QuantizeStage(QuantConfig):
    """Quantize to an ONNX file (int8 static/dynamic/QAT, fp16/bf16); the stage's row measures that file."""

    type: Literal["quantize"]
    filename: str | None = Field(None, description="default: model.<method>.onnx in the run folder")
    qat: QATOptions | None = Field(None, description="method: qat only: epochs, optimizer, distill")

    @model_validator(mode="after")
    def _qat(self) -> QuantizeStage:
        if self.method == "qat" and self.qat is None:
            self.qat = QATOptions()
        elif self.method != "qat" and self.qat is not None:
            raise ValueError(f"qat options given but method is {self.method!r}; set method: qat or drop qat")
        return self


class LowrankStage(TrainingOptions, LowRankConfig):
    """Factorize Linear/Conv layers by truncated SVD, then fine-tune ``epochs`` with KD."""

    type: Literal["lowrank"]
    epochs: int = Field(0, ge=0)
    distill: DistillConfig | None = DistillConfig()


class ClusterStage(TrainingOptions, ClusterConfig):
    """k-means weight sharing per layer, centroids fine-tuned ``epochs`` with KD; writes the packed file."""

    type: Literal["cluster"]
    epochs: int = Field(0, ge=0)
    distill: DistillConfig | None = DistillConfig()


Stage = Annotated[TrainStage | DistillStage | FinetuneStage | PruneStage | EvaluateStage | ExportStage
                  | QuantizeStage | LowrankStage | ClusterStage, Field(discriminator="type")]
STAGE_TYPES = ("train", "distill", "finetune", "prune", "evaluate", "export", "quantize", "lowrank",
               "cluster")
register_union_tags(*STAGE_TYPES)


class Recipe(StrictModel):
    name: str = "run"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    measure: LatencyConfig = LatencyConfig()
    stages: list[Stage] = Field(..., min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _stage_types(cls, data: Any) -> Any:
        # a clearer message than pydantic's for a misspelt stage type
        for i, st in enumerate(data.get("stages") or [] if isinstance(data, dict) else []):
            if isinstance(st, dict) and st.get("type") not in STAGE_TYPES:
                t = st.get("type")
                raise ValueError(f"stages.{i}.type: unknown stage type {t!r}{nearest(str(t), list(STAGE_TYPES))}; "
                                 f"expected one of: {', '.join(STAGE_TYPES)}")
        return data


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
                if not p.isdigit() or int(p) >= len(node):
                    raise RecipeError(f"--set {key}: '{p}' is not an index of a {len(node)}-item list")
                if last:
                    node[int(p)] = yaml.safe_load(value)
                else:
                    node = node[int(p)]
            elif isinstance(node, dict):
                if last:
                    node[p] = yaml.safe_load(value)
                else:
                    if node.get(p) is None:  # missing or null (``key:`` in YAML): a new mapping in place
                        node[p] = {}
                    node = node[p]
            else:
                raise RecipeError(f"--set {key}: '{'.'.join(parts[:i])}' is not a mapping")
    return raw


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RecipeError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{p}: a recipe is a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate(Recipe, raw, where=str(path))
