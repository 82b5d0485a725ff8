"""sentence-transformers folders, in and out: an encoder that came from one is written back as one.

A sentence-transformers model folder is the Hugging Face encoder plus ``modules.json`` naming its pipeline:
``Transformer`` (the encoder at the folder's root, with ``sentence_bert_config.json``), ``Pooling`` (its
``config.json``: the mode) and optionally ``Normalize``. Reading one gives a :class:`SentencePipeline` -- the
pooling mode, the normalisation, ``max_seq_length``, nothing else -- which the encoder applies in its own
forward (so ONNX export, pruning and distillation see the pipeline) and which ``save_pretrained`` writes back
in the format every sentence-transformers version reads (the module types of ``sentence_transformers.models``),
so ``SentenceTransformer(out)`` embeds as the pipeline did.

Only the values are read, checked and rewritten; no text of the source folder is copied into the output, so a
checkpoint's JSON cannot smuggle a module type into a folder the user will load. A pipeline with modules
beyond these three (``Dense``, ``LayerNorm``, ...) is refused with one line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from distillprune.errors import DistillpruneError

#: the pooling modes, as sentence-transformers names them (``pooling_mode`` / ``pooling_mode_<name>`` flags)
POOLING = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_FLAGS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
SUPPORTED = ("Transformer", "Pooling", "Normalize")


@dataclasses.dataclass(frozen=True)
class SentencePipeline:
    pooling: str = "mean"
    normalize: bool = True
    max_seq_length: int | None = None
    do_lower_case: bool = False
    include_prompt: bool = True

    def __post_init__(self) -> None:
        ok = (
            self.pooling in POOLING
            and isinstance(self.normalize, bool)
            and (self.max_seq_length is None or (type(self.max_seq_length) is int and self.max_seq_length > 0))
            and isinstance(self.do_lower_case, bool)
            and isinstance(self.include_prompt, bool)
        )
        if not ok:
            raise DistillpruneError(f"not a sentence-transformers pipeline this encoder can run: {self}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: object) -> SentencePipeline:
        """The pipeline a checkpoint's spec stored (``ArchSpec.kwargs["sentence"]``); one line when it is not one."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or not set(d) <= names:
            raise DistillpruneError(f"hf checkpoint: 'sentence' is not a sentence-transformers pipeline: {d!r:.120}")
        try:
            return cls(**d)
        except TypeError as e:
            raise DistillpruneError(f"hf checkpoint: 'sentence': {e}") from None


def _json(path: Path, where: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise DistillpruneError(f"{where}: cannot read {path.name} ({type(e).__name__}: {e})") from None


def read_pipeline(folder: Path) -> SentencePipeline | None:
    """The sentence-transformers pipeline of ``folder`` (None when it has no ``modules.json``)."""
    if not (folder / "modules.json").is_file():
        return None
    where = f"model.path {folder}"
    modules = _json(folder / "modules.json", where)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise DistillpruneError(f"{where}: modules.json is not a list of modules")
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: str(m.get("path", "")) for m in modules}
    extra = [k for k in kinds if k not in SUPPORTED]
    if extra or "Transformer" not in kinds or "Pooling" not in kinds or len(kinds) != len(modules):
        raise DistillpruneError(
            f"{where}: sentence-transformers modules {[m.get('type') for m in modules]}; supported are a "
            f"Transformer, a Pooling and optionally a Normalize ({', '.join(extra) or 'a module twice'} is not)"
        )
    if kinds["Transformer"] != "":
        raise DistillpruneError(
            f"{where}: its encoder is in {kinds['Transformer']}/ (an old sentence-transformers layout); re-save it "
            "with a current sentence-transformers (SentenceTransformer(DIR).save(NEW_DIR)) and use NEW_DIR"
        )
    pooling = _json(folder / kinds["Pooling"] / "config.json", where)
    sbert = folder / "sentence_bert_config.json"
    tconf = _json(sbert, where) if sbert.is_file() else {}
    return SentencePipeline(
        _pooling_mode(pooling, where),
        "Normalize" in kinds,
        tconf.get("max_seq_length") if isinstance(tconf, dict) else None,
        bool(tconf.get("do_lower_case", False)) if isinstance(tconf, dict) else False,
        bool(pooling.get("include_prompt", True)),
    )


def _pooling_mode(conf: Any, where: str) -> str:
    if not isinstance(conf, dict):
        raise DistillpruneError(f"{where}: the Pooling config is not a JSON object")
    if "pooling_mode" in conf:  # sentence-transformers >= 6
        modes = [conf["pooling_mode"]] if isinstance(conf["pooling_mode"], str) else conf["pooling_mode"]
    else:
        modes = [name for name, flag in _FLAGS.items() if conf.get(flag)]
    if not isinstance(modes, list) or len(modes) != 1 or modes[0] not in POOLING:
        raise DistillpruneError(f"{where}: pooling {modes!r}; supported is one of {', '.join(POOLING)}")
    return str(modes[0])


def write_pipeline(folder: Path, pipe: SentencePipeline, dim: int) -> None:
    """``modules.json``, ``1_Pooling/config.json``, ``2_Normalize/`` and ``sentence_bert_config.json`` beside the
    encoder saved at ``folder``'s root."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    if pipe.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(parents=True, exist_ok=True)
    pooling = {"word_embedding_dimension": dim, **{flag: mode == pipe.pooling for mode, flag in _FLAGS.items()}}
    pooling["include_prompt"] = pipe.include_prompt
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    sbert: dict[str, Any] = {"do_lower_case": pipe.do_lower_case}
    if pipe.max_seq_length is not None:
        sbert = {"max_seq_length": pipe.max_seq_length, **sbert}
    for name, data in [
        ("modules.json", modules),
        ("1_Pooling/config.json", pooling),
        ("sentence_bert_config.json", sbert),
    ]:
        (folder / name).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def pool(h: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, L, D) token states and the (B, L) attention mask to (B, D), as sentence-transformers' Pooling does."""
    m = mask.unsqueeze(-1).to(h.dtype)
    if mode == "cls":
        return h[:, 0]
    if mode == "max":
        return h.masked_fill(m == 0, -1e9).max(1).values
    if mode == "lasttoken":  # the last real token, for right or left padding
        values, idx = mask.flip(1).max(1)
        idx = torch.where(values == 0, torch.full_like(idx, mask.shape[1] - 1), idx)
        last = (mask.shape[1] - idx - 1).view(-1, 1, 1).expand(-1, 1, h.shape[-1])
        return h.gather(1, last).squeeze(1)
    if mode == "weightedmean":
        m = m * torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype).view(1, -1, 1)
    sums, n = (h * m).sum(1), m.sum(1).clamp_min(1e-9)
    return sums / n.sqrt() if mode == "mean_sqrt_len_tokens" else sums / n
