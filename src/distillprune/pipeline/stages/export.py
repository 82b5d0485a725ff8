"""``export``: write ONNX and check it against torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field

from distillprune.core.progress import phase
from distillprune.core.reporting import Details, details_type
from distillprune.errors import ExportError
from distillprune.export.onnx import export_onnx, parity
from distillprune.pipeline.state import RunState
from distillprune.recipes.registry import StageOutcome, register_stage
from distillprune.recipes.schema import StageConfig


class ExportStage(StageConfig):
    """ONNX (dynamic batch; text models: named int64 inputs, dynamic batch and sequence) with a parity check
    against torch (max abs diff in the report); a Hugging Face encoder is also saved with `save_pretrained`
    (`hf/`, with the tokenizer)."""

    keeps_layers: ClassVar[bool] = True
    type: Literal["export"]
    filename: str = Field("model.onnx", description="file name inside the run folder")
    max_abs_diff: float = Field(1e-3, gt=0, description="parity tolerance on the logits")
    parity_samples: int = Field(64, gt=0, description="test samples compared")

    def changes_model(self) -> bool:
        return False


@details_type
@dataclass
class ExportReport(Details):
    kind = "export"
    onnx: str
    max_abs_diff: float
    top1_agreement: float
    cosine: float | None = None
    hf_folder: str | None = None  # Hugging Face encoders: the save_pretrained folder (reloads with from_pretrained)


@register_stage(ExportStage, measured=False)
def run_export(st: ExportStage, state: RunState, index: int) -> StageOutcome:
    path = state.output_path(st.filename, f"stages.{index - 1}.filename")
    if path is None:
        return StageOutcome()
    phase("exporting ONNX")(export_onnx)(state.model, state.data.input_shape, path)
    par = phase("checking the ONNX file against torch")(parity)(
        state.model, path, state.data.inputs("test", st.parity_samples)
    )
    if par["max_abs_diff"] > st.max_abs_diff:
        raise ExportError(f"ONNX parity failed: max abs diff {par['max_abs_diff']:.2e} > {st.max_abs_diff}")
    hf_folder = None
    save_pretrained = getattr(state.model, "save_pretrained", None)
    if callable(save_pretrained):  # an HF encoder ships its folder too
        hf_folder = "hf"
        save_pretrained(path.parent / hf_folder, tokenizer=state.recipe.data.text.tokenizer)
    return StageOutcome(
        ExportReport(
            path.name,
            float(f"{par['max_abs_diff']:.3g}"),
            float(f"{par['top1_agreement']:.3g}"),
            round(par["cosine"], 6),
            hf_folder,
        )
    )
