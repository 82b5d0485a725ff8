"""Who may run code while a checkpoint is loaded: the rule that keeps "nothing unpickled, no code from data"
true for our own JSON.

A checkpoint's ``model.json`` is data. Its architecture reference resolves through our registries (the zoo,
Hugging Face configs), never through an import named by the file — except for a model whose class is the
user's own Python (``source: python``). That code runs only when

- the caller itself names it: a spec built in this process from the caller's own config (``model.python``
  of the recipe being run) is trusted, and so is a stored reference whose sha256 the caller vouches for
  (``vouched``: on ``--resume``, the run's recipe vouches for its own class, so a replaced ``model.json``
  cannot swap in other code), or
- the caller opts in (``--trust-code`` / ``trust_code=True``, the ``transformers`` convention), and then only
  a ``.py`` file *inside* the checkpoint folder whose sha256 matches the one recorded (or, for a class given
  as ``package.module:Name``, that installed module when its file's sha256 matches).

Everything else is one line and exit code 2.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CodeTrust:
    #: import code a checkpoint carries inside its folder (sha256 checked): the user's explicit opt-in
    trust_code: bool = False
    #: sha256 of code files the caller itself names (a run's own recipe), importable from their recorded place
    vouched: frozenset[str] = field(default_factory=frozenset)


_TRUST: ContextVar[CodeTrust] = ContextVar("distillprune_code_trust", default=CodeTrust())  # noqa: B039 - frozen


def current_trust() -> CodeTrust:
    return _TRUST.get()


@contextmanager
def code_trust(trust_code: bool | None = None, vouched: Iterable[str] = ()) -> Iterator[CodeTrust]:
    """Within the block, checkpoints may import the code they carry (``trust_code=True``) and the code whose
    sha256 is in ``vouched``. Nested blocks add to the outer trust; ``trust_code=None`` keeps the outer
    choice."""
    outer = _TRUST.get()
    inner = CodeTrust(
        outer.trust_code if trust_code is None else bool(trust_code),
        outer.vouched | frozenset(s for s in vouched if s),
    )
    token = _TRUST.set(inner)
    try:
        yield inner
    finally:
        _TRUST.reset(token)
