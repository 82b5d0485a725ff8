"""Who may run code while a checkpoint is loaded: the rule that keeps "nothing unpickled, no code from data"
true for our own JSON.

A checkpoint's ``model.json`` is data. Its architecture reference resolves through our registries (the zoo,
Hugging Face configs), never through an import named by the file — except for a model whose class is the
user's own Python (``source: python``). That code runs only when

- the caller itself names it: a spec built in this process from the caller's own config (``model.python``
  of the recipe being run) is trusted, and so is a stored reference whose sha256 the caller vouches for
  (``vouched``: on ``--resume``, the run's recipe vouches for its own class, so a replaced ``model.json``
  cannot swap in other code); the code is then imported from where the *caller* names it (its file, or its
  module), never from a module or file the stored reference names, or
- the caller opts in (``--trust-code`` / ``trust_code=True``, the ``transformers`` convention), and then only
  a ``.py`` file *inside* the checkpoint folder whose sha256 matches the one recorded (or, for a class given
  as ``package.module:Name``, that installed module when its file's sha256 matches).

Everything else is one line and exit code 2.

Hugging Face folders follow the same rule (:func:`hf_options`): every ``from_pretrained`` on a local folder
passes ``trust_remote_code`` explicitly (never None, so transformers never asks on stdin), False unless the
caller opted in, and a folder whose ``auto_map`` names Python code (model, config or tokenizer) is refused
in one line before transformers reads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillprune.errors import DistillpruneError, printable


@dataclass(frozen=True)
class CodeTrust:
    #: import code a checkpoint carries inside its folder (sha256 checked): the user's explicit opt-in
    trust_code: bool = False
    #: sha256 of code the caller itself names (a run's own recipe) -> where the caller names it: an absolute
    #: ``.py`` path or an installed module's name. Only that place is imported, and only for that sha256.
    vouched: Mapping[str, str] = field(default_factory=dict)


_TRUST: ContextVar[CodeTrust] = ContextVar("distillprune_code_trust", default=CodeTrust())  # noqa: B039 - frozen


def current_trust() -> CodeTrust:
    return _TRUST.get()


@contextmanager
def code_trust(trust_code: bool | None = None, vouched: Mapping[str, str] | None = None) -> Iterator[CodeTrust]:
    """Within the block, checkpoints may import the code they carry (``trust_code=True``) and the code whose
    sha256 is a key of ``vouched`` (from the place its value names: the caller's file or module). Nested
    blocks add to the outer trust; ``trust_code=None`` keeps the outer choice."""
    outer = _TRUST.get()
    inner = CodeTrust(
        outer.trust_code if trust_code is None else bool(trust_code),
        {**outer.vouched, **{k: v for k, v in (vouched or {}).items() if k and v}},
    )
    token = _TRUST.set(inner)
    try:
        yield inner
    finally:
        _TRUST.reset(token)


#: the ``auto_map`` entry distillprune's own ``save_pretrained`` writes for a pruned encoder: its loader rebuilds
#: the stock transformers class itself and never imports that file, so the entry names no code it would run
OWN_HF_CODE = "modeling_distillprune.Distillprune"
#: the files whose ``auto_map`` transformers follows when it loads a model, its config or its tokenizer
HF_CODE_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def hf_code(folder: Path) -> list[str]:
    """``file: Auto... -> module.Class`` for every class the ``auto_map`` of a Hugging Face folder's JSON files
    names, except distillprune's own layout class (which its loader never imports). Imports nothing."""
    from distillprune.core.io import loads

    found: list[str] = []
    for name in HF_CODE_FILES:
        try:
            meta = loads((folder / name).read_bytes())
        except (OSError, ValueError):
            continue  # no such file, or one transformers itself refuses (one line, by its caller)
        amap = meta.get("auto_map") if isinstance(meta, dict) else None
        if amap is None:
            continue
        if not isinstance(amap, dict):
            found.append(f"{name}: auto_map {type(amap).__name__}")
            continue
        for key, value in amap.items():
            refs = value if isinstance(value, list) else [value]
            for ref in refs:
                if ref is None:
                    continue
                own = key in ("AutoModel", "AutoModelForSequenceClassification") and str(ref).startswith(OWN_HF_CODE)
                if not own:
                    found.append(f"{name}: {key} -> {ref}")
    return found


def hf_options(folder: str | Path, where: str) -> dict[str, Any]:
    """The keyword arguments of every ``from_pretrained`` on a local Hugging Face folder: local files only,
    and ``trust_remote_code`` as the caller chose (``code_trust``), never None; without the opt-in a folder
    whose ``auto_map`` names code is one ``DistillpruneError`` line (``where`` names the recipe key)."""
    trust = current_trust().trust_code
    if not trust:
        code = hf_code(Path(folder))
        if code:
            what = printable("; ".join(code))[:200]
            raise DistillpruneError(
                f"{where} {folder}: its auto_map names Python code ({what}); loading it would run that code. "
                "If you trust this folder, pass --trust-code (trust_code=True in Python)"
            )
    return {"local_files_only": True, "trust_remote_code": trust}
