"""Checkpoints without pickle: ``model.safetensors`` (weights) + ``model.json``.

``model.json`` holds the architecture spec (where the base model comes from and its arguments), the
replayable history (typed ops, see ``core.history``), and whatever the caller adds (resolved recipe,
metrics). Loading builds the base model through the builder registered for the spec's ``source``,
replays the history, then loads the weights: a pruned model comes back from data alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from distillprune.core.history import HistoryOp, op_from_dict, replay
from distillprune.core.io import atomic_write, loads, read_safetensors, write_json
from distillprune.core.registry import Registry
from distillprune.core.trust import code_trust
from distillprune.errors import CheckpointError, DistillpruneError

FORMAT = "distillprune/1"

#: source name -> builder of the unpruned base model of a spec (the model zoo registers "zoo")
ARCH_BUILDERS: Registry[Callable[[ArchSpec], nn.Module]] = Registry("architecture source", loads_library=True)


@dataclass
class ArchSpec:
    name: str | None  # the model's name in its source (zoo name); None for a model only the caller can build
    num_classes: int
    input_shape: list[int]
    kwargs: dict[str, Any] = field(default_factory=dict)
    history: list[HistoryOp] = field(default_factory=list)
    source: str = "zoo"
    #: where the base came from, for its source to rebuild and check it (python: the file and its sha256;
    #: weights: the file the run started from)
    ref: dict[str, Any] = field(default_factory=dict)
    #: not stored: built in this process from the caller's own config (its code may run, see core.trust);
    #: a spec read from a model.json never is
    trusted: bool = field(default=False, compare=False, repr=False)
    #: not stored: files a checkpoint of this spec carries (name inside the folder -> local source file)
    bundle: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: not stored: the checkpoint folder the spec was read from (where the files it carries are)
    folder: Path | None = field(default=None, compare=False, repr=False)

    def base(self) -> nn.Module:
        """The unpruned base model, built by the spec's source."""
        if self.name is None:
            raise CheckpointError(
                "checkpoint holds a model given as an object in Python: pass the unpruned model "
                "as base=, or build it with model.python / distillprune.make_model so the "
                "checkpoint records where its class comes from"
            )
        return ARCH_BUILDERS.get(self.source)(self)

    def build(self, base: nn.Module | None = None) -> nn.Module:
        return replay(base if base is not None else self.base(), self.input_shape, self.history)

    def record(self, *ops: HistoryOp) -> None:
        self.history.extend(ops)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "kwargs": dict(self.kwargs),
            "history": [op.to_dict() for op in self.history],
            "source": self.source,
            **({"ref": dict(self.ref)} if self.ref else {}),
        }

    @classmethod
    def from_dict(cls, d: Any) -> ArchSpec:
        if not isinstance(d, dict):
            raise CheckpointError(f"bad architecture spec: expected a mapping, got {type(d).__name__}")
        d = dict(d)
        if not isinstance(d.get("history", []) or [], list):
            raise CheckpointError(f"bad architecture spec: history is a {type(d['history']).__name__}, expected a list")
        history = [op_from_dict(h) for h in d.pop("history", []) or []]
        stored = {"name", "num_classes", "input_shape", "kwargs", "source", "ref"}
        if set(d) - stored:  # the in-process fields (trusted, bundle, folder) are never read from a file
            raise CheckpointError(f"bad architecture spec: unknown keys {sorted(set(d) - stored)}")
        try:
            spec = cls(**d, history=history)
        except TypeError as e:
            raise CheckpointError(f"bad architecture spec: {e}") from None
        shape, n = spec.input_shape, spec.num_classes
        if (
            not isinstance(shape, list)
            or not all(isinstance(v, int) and v > 0 for v in shape)
            or not isinstance(n, int)
            or n < 0
            or not isinstance(spec.kwargs, dict)
            or not isinstance(spec.name, (str, type(None)))
            or not isinstance(spec.source, str)
            or not isinstance(spec.ref, dict)
        ):
            raise CheckpointError(
                f"bad architecture spec: input_shape {shape!r:.60}, num_classes {n!r:.20}, "
                f"kwargs {spec.kwargs!r:.60}, name {spec.name!r:.30}; expected positive sizes, a "
                "class count >= 0 (0: an embedder), a mapping and a name"
            )
        return spec


def save_checkpoint(folder: str | Path, model: nn.Module, spec: ArchSpec, **meta: Any) -> Path:
    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(tensors, tmp))
    for name, src in spec.bundle.items():  # the code a checkpoint carries (a user's class file)
        dst = folder / name
        if not (dst.exists() and dst.resolve() == Path(src).resolve()):
            atomic_write(dst, _copier(Path(src).read_bytes()))
    write_json(folder / "model.json", {"format": FORMAT, "arch": spec.to_dict(), **meta})
    return folder


def _copier(data: bytes) -> Callable[[str], object]:
    return lambda tmp: Path(tmp).write_bytes(data)


def read_meta(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if folder.is_file():
        raise CheckpointError(
            f"{folder} is a file, not a distillprune checkpoint folder; for a state_dict "
            f"(.pt / .safetensors) give it as weights: {{name: ..., weights: {folder}}}"
        )
    if not (folder / "model.json").exists():
        raise CheckpointError(f"not a distillprune checkpoint (no model.json): {folder}")
    try:
        meta = loads((folder / "model.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / 'model.json'}: unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{folder / 'model.json'}: format {got!r}, expected {FORMAT!r}")
    return meta


def load_checkpoint(
    folder: str | Path, base: nn.Module | None = None, *, trust_code: bool | None = None
) -> tuple[nn.Module, ArchSpec, dict]:
    """Rebuild the model of a checkpoint folder; returns (model, spec, meta).

    A checkpoint whose class is the user's own Python runs that code only with ``trust_code=True`` (and then
    only the file the folder carries, sha256 checked) or when the caller vouches for it (``core.trust``);
    otherwise it is a :class:`CheckpointError`. ``trust_code=None`` keeps the caller's ``code_trust`` block.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    spec = ArchSpec.from_dict(meta.get("arch"))
    spec.folder = folder
    try:
        with code_trust(trust_code):
            model = spec.build(base)
    except DistillpruneError as e:
        raise CheckpointError(f"{folder}: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as e:  # damaged history
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{folder}: the architecture does not rebuild from model.json ({first})") from None
    state = read_safetensors(folder / "model.safetensors", str(folder / "model.safetensors"))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        raise CheckpointError(f"{folder}: weights do not fit the architecture ({first})") from None
    return model.eval(), spec, meta


def history_list(history: ArchSpec | list[HistoryOp] | None) -> list[HistoryOp] | None:
    """The list a verb records its history ops in (``history=``): an ArchSpec's, or the list itself."""
    return history.history if isinstance(history, ArchSpec) else history
