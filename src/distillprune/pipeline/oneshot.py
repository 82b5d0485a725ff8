"""One-step jobs in one line: ``distillprune export SRC OUT.onnx`` and ``distillprune quantize SRC OUT.onnx --data D``.

Each builds the recipe a user would write -- the model (a run's final model, a stage checkpoint, a Hugging Face
folder, or the checkpoint behind an ONNX file a run exported), its data, one stage -- and runs it as any recipe
runs (checks first, then the stage and its parity check) in a temporary run folder; the stage's file then
moves to ``OUT``. The command prints the recipe before it runs, so the job can be repeated or extended with
``distillprune run``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from distillprune.core.checkpoint import read_meta
from distillprune.core.config import validate
from distillprune.core.io import atomic_write, loads
from distillprune.data.config import DataConfig
from distillprune.errors import DistillpruneError
from distillprune.recipes.schema import Recipe, read_yaml

SOURCES = "a run folder, a stage checkpoint (model.json), a Hugging Face model folder or an ONNX file a run exported"


def one_step_recipe(source: Path, stage: dict[str, Any], data: Path | None = None) -> dict[str, Any]:
    """The recipe of the job: ``source``'s model, its data (``data``, else the data its checkpoint was made
    with), and the one ``stage`` (its options as a recipe has them)."""
    model, made_with = model_of(source)
    return {
        "name": f"{stage.get('type')}-{_name(source)}",
        "model": model,
        "data": data_of(data, made_with, model.get("source") == "hf"),
        "runtime": {"tensorboard": False},
        "measure": {"enabled": False},
        "stages": [stage],
    }


def _name(source: Path) -> str:
    return (source.resolve().stem if source.suffix == ".onnx" else source.resolve().name) or "model"


def model_of(source: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the recipe's ``model`` block for ``source``, the ``data`` block its checkpoint was made with or None)."""
    if not source.exists():
        raise DistillpruneError(f"{source}: no such file or folder; expected {SOURCES}")
    if source.is_file():
        if source.suffix != ".onnx":
            raise DistillpruneError(f"{source}: expected {SOURCES}")
        return model_of(_exported_by(source))
    if (source / "model.json").is_file():
        meta = read_meta(source)
        recipe = meta.get("recipe")
        data = recipe.get("data") if isinstance(recipe, dict) else None
        return {"checkpoint": str(source)}, data if isinstance(data, dict) else None
    if (source / "run.json").is_file():
        return model_of(_final_checkpoint(source))
    if (source / "config.json").is_file():
        return {"source": "hf", "path": str(source), "task": _hf_task(source)}, None
    raise DistillpruneError(f"{source}: expected {SOURCES} (it holds no model.json, run.json or config.json)")


def _final_checkpoint(run: Path) -> Path:
    try:
        state = loads((run / "state.json").read_text(encoding="utf-8"))
        folder = run / "stages" / f"{int(state['completed']):02d}_{state['kind']}"
    except (OSError, ValueError, KeyError, TypeError):
        raise DistillpruneError(f"{run}: a run folder without a completed stage (no state.json)") from None
    if not (folder / "model.json").is_file():
        raise DistillpruneError(f"{run}: its last stage left no checkpoint at {folder}")
    return folder


def _exported_by(onnx_file: Path) -> Path:
    """The checkpoint of the export stage that wrote ``onnx_file`` into its run folder."""
    run = onnx_file.resolve().parent
    try:
        report = loads((run / "report.json").read_text(encoding="utf-8"))
        stage = next(
            s
            for s in report["stages"]
            if isinstance(s.get("details"), dict) and s["details"].get("onnx") == onnx_file.name
        )
        return run / "stages" / f"{int(stage['index']):02d}_{stage['type']}"
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        raise DistillpruneError(
            f"{onnx_file}: not an ONNX file a distillprune run exported (its run folder's report.json names no "
            "export stage that wrote it); quantization calibrates and checks against the float model, so give the "
            "model itself: a run folder, a stage checkpoint or a Hugging Face folder"
        ) from None


def _hf_task(folder: Path) -> str:
    try:
        config = loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DistillpruneError(f"{folder / 'config.json'}: unreadable ({e})") from None
    names = config.get("architectures") if isinstance(config, dict) else None
    classifier = any(str(a).endswith("ForSequenceClassification") for a in names or [])
    return "sequence-classification" if classifier else "embedding"


def data_of(data: Path | None, made_with: dict[str, Any] | None, text_model: bool) -> dict[str, Any]:
    """The recipe's ``data`` block: from ``--data`` (a recipe YAML's data, an .npz, or for a text model a text
    file or folder), else the data the checkpoint was made with."""
    if data is None:
        if made_with is not None:
            source = {"source": made_with["source"]} if "source" in made_with else {}
            return {**source, **_without_defaults(made_with, DataConfig().model_dump(mode="json"))}
        raise DistillpruneError(
            "--data is needed: a recipe YAML (its data block), an .npz file"
            + (", or a text file or folder (CSV / JSONL / TXT)" if text_model else "")
            + " -- the inputs the parity check and calibration run on"
        )
    if not data.exists():
        raise DistillpruneError(f"--data {data}: no such file or folder")
    if data.suffix in (".yaml", ".yml"):
        block = read_yaml(data).get("data")
        if not isinstance(block, dict):
            raise DistillpruneError(f"--data {data}: the recipe has no data block")
        return block
    if data.suffix == ".npz":
        return {"source": "npz", "path": str(data)}
    if text_model:
        return {"source": "text", "path": str(data)}
    raise DistillpruneError(f"--data {data}: expected a recipe YAML or an .npz file")


def _without_defaults(block: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """A stored (resolved) config block as a person writes it: the values that differ from the defaults."""
    out = {}
    for k, v in block.items():
        d = defaults.get(k, object())
        if isinstance(v, dict) and isinstance(d, dict):
            v = _without_defaults(v, d)
            if v:
                out[k] = v
        elif v != d:
            out[k] = v
    return out


def check_out(out: Path, force: bool) -> None:
    if out.suffix != ".onnx":
        raise DistillpruneError(f"{out}: the output is an ONNX file (OUT.onnx)")
    if out.is_dir():
        raise DistillpruneError(f"{out} is a folder; give the ONNX file's name, e.g. {out / 'model.onnx'}")
    if out.exists() and not force:
        raise DistillpruneError(f"{out} exists; pass --force to replace it")


def run_one_step(raw: dict[str, Any], out: Path, *, trust_code: bool = False) -> tuple[Recipe, Any]:
    """Run the one-stage recipe ``raw`` in a temporary run folder; its file moves to ``out`` (written atomically).
    Returns the recipe and the stage's report."""
    from distillprune.pipeline.run import compress

    recipe = validate(Recipe, raw, where="the recipe built for the command")
    with tempfile.TemporaryDirectory(prefix="distillprune-oneshot-") as tmp:
        report = compress(recipe, Path(tmp) / "run", trust_code=trust_code)
        made = Path(tmp) / "run" / recipe.stages[0].output_file()  # type: ignore[operator]
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda t: shutil.copyfile(made, t))
    return recipe, report.stages[-1].details
