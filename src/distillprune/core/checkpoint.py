"""Checkpoints without pickle: ``model.safetensors`` (weights) + ``model.json``.

``model.json`` holds the architecture spec (a zoo name and its kwargs), the replayable pruning
history, and whatever the caller adds (resolved recipe, metrics). Loading builds the base model
from the zoo, replays the history (channel removals, removed blocks), then loads the weights:
a pruned model comes back from data alone.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from distillprune.core.io import atomic_write, write_json
from distillprune.errors import CheckpointError

FORMAT = "distillprune/1"


@dataclass
class ArchSpec:
    name: str | None  # zoo name; None for a user model (pass ``base`` when loading)
    num_classes: int
    input_shape: list[int]
    kwargs: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def build(self, base: nn.Module | None = None) -> nn.Module:
        from distillprune.models import build_model

        if base is None:
            if self.name is None:
                raise CheckpointError("checkpoint holds a user model: pass the unpruned model as base")
            base = build_model(self.name, self.num_classes, self.input_shape, **self.kwargs)
        replay(base, self.input_shape, self.history)
        return base

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ArchSpec:
        try:
            return cls(**d)
        except TypeError as e:
            raise CheckpointError(f"bad architecture spec: {e}") from None


def replay(model: nn.Module, input_shape: list[int], history: list[dict]) -> None:
    from distillprune.prune.depth import remove_block
    from distillprune.prune.structured import replay_channels

    for op in history:
        kind = op.get("op")
        if kind == "channels":
            replay_channels(model, torch.zeros(1, *input_shape), op["entries"])
        elif kind == "remove_block":
            remove_block(model, op["path"])
        elif kind == "lowrank":
            from distillprune.lowrank.svd import replay_lowrank

            replay_lowrank(model, op["layer"], int(op["rank"]))
        elif kind in ("sparsity", "cluster"):
            continue  # zeros and shared values live in the weights; nothing to rebuild
        else:
            raise CheckpointError(f"unknown pruning history op {kind!r}")


def save_checkpoint(folder: str | Path, model: nn.Module, spec: ArchSpec, **meta: Any) -> Path:
    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(tensors, tmp))
    write_json(folder / "model.json", {"format": FORMAT, "arch": spec.to_dict(), **meta})
    return folder


def read_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    if not (folder / "model.json").exists():
        raise CheckpointError(f"not a distillprune checkpoint (no model.json): {folder}")
    try:
        meta = json.loads((folder / "model.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / 'model.json'}: unreadable ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / 'model.json'}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load_checkpoint(folder: str | Path, base: nn.Module | None = None) -> tuple[nn.Module, ArchSpec, dict]:
    """Rebuild the model of a checkpoint folder; returns (model, spec, meta)."""
    folder = Path(folder)
    meta = read_meta(folder)
    spec = ArchSpec.from_dict(meta["arch"])
    model = spec.build(base)
    try:
        state = load_file(str(folder / "model.safetensors"))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{folder / 'model.safetensors'}: corrupt or unreadable ({e})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise CheckpointError(f"{folder}: weights do not fit the architecture ({first})") from None
    return model.eval(), spec, meta
