"""Masked language modelling (Devlin et al., 2019, "BERT"), the pre-training of a Hugging Face encoder on text
without labels: ``mask_prob`` of the real, non-special tokens of every text are picked; of those 80 % become
the tokenizer's mask token, 10 % a random token and 10 % stay (what ``DataCollatorForLanguageModeling``
does); the encoder's last hidden states go through a masked-LM head and

    L = mean over the picked tokens of -log p(original token)

The head is the one ``AutoModelForMaskedLM`` builds for the encoder's config (BERT's ``cls``, RoBERTa's
``lm_head``, DistilBERT's ``vocab_*``...), freshly initialised, its decoder tied to the encoder's input
embeddings when the config ties them; it lives in the objective, so the exported model is the encoder
alone. The hidden states are read by a forward hook on the encoder while the model runs as the trainer
calls it (under torchrun through DistributedDataParallel), so gradients are synchronised as for any loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distillprune.core.batch import Batch, NamedInputs, call
from distillprune.core.extras import import_extra
from distillprune.data.views import Views
from distillprune.errors import DistillpruneError
from distillprune.ssl.base import SSL_METHODS, SSLMethod


def mask_tokens(
    ids: torch.Tensor,
    attention: torch.Tensor,
    special: list[int],
    mask_id: int,
    vocab: int,
    prob: float,
    gen: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked ids, labels): labels hold the original id at the picked positions and -100 elsewhere. At least
    one token of the batch is picked (a batch with none would have no loss)."""
    candidates = attention.bool() & ~torch.isin(ids, torch.tensor(special, device=ids.device))
    draw = torch.rand(ids.shape, generator=gen, device="cpu").to(ids.device)
    picked = candidates & (draw < prob)
    if not bool(picked.any()) and bool(candidates.any()):
        first = torch.nonzero(candidates)[0]
        picked[first[0], first[1]] = True
    labels = torch.where(picked, ids, torch.full_like(ids, -100))
    how = torch.rand(ids.shape, generator=gen, device="cpu").to(ids.device)
    masked = torch.where(picked & (how < 0.8), torch.full_like(ids, mask_id), ids)
    random_ids = torch.randint(0, vocab, ids.shape, generator=gen, device="cpu").to(ids.device)
    masked = torch.where(picked & (how >= 0.8) & (how < 0.9), random_ids, masked)
    return masked, labels


class _Given(nn.Module):
    """Stands in for the MLM model's encoder: returns the hidden states the real encoder just computed (as the
    encoder's output type, ``output_type``: ``transformers``' ``BaseModelOutput``)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: torch.Tensor | None = None
        self.output_type: Any = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        assert self.hidden is not None and self.output_type is not None
        return self.output_type(last_hidden_state=self.hidden)


@SSL_METHODS.register("mlm")
class MaskedLM(SSLMethod):
    two_views = False
    inputs = "text"

    def __init__(self, mask_prob: float = 0.15, tokenizer: str | None = None):
        super().__init__()
        if not 0 < mask_prob < 1:
            raise ValueError(f"mlm.mask_prob must be in (0, 1), got {mask_prob}")
        self.mask_prob, self.tokenizer = float(mask_prob), tokenizer
        # the head's own parameters, each once: a tied decoder shares the encoder's embedding (and BERT's
        # decoder bias is its prediction bias), and a checkpoint must hold no tensor twice
        self.head = nn.ParameterList()
        self._mlm: list[nn.Module] = []
        self._encoder: list[nn.Module] = []
        self._special: list[int] = []
        self._mask_id, self._vocab = 0, 0
        self._given = _Given()

    def setup(self, model: nn.Module, probe: Batch, embedding: torch.Tensor) -> None:
        encoder = getattr(model, "hf", None)
        if not isinstance(probe, NamedInputs) or encoder is None or not hasattr(encoder, "get_input_embeddings"):
            raise DistillpruneError(
                "ssl method 'mlm' pre-trains a Hugging Face encoder on text (model.source: hf, text data); "
                f"got a {type(model).__name__} on {'text' if isinstance(probe, NamedInputs) else 'tensor'} inputs"
            )
        self._read_tokenizer()
        if not self._mlm or self._encoder[0] is not encoder:
            self._build(encoder, embedding.device)
        self._vocab = int(getattr(encoder, "config").vocab_size)  # noqa: B009 - an HF model's config (typed Any)

    def _read_tokenizer(self) -> None:
        if self._special:
            return
        if self.tokenizer is None:
            raise DistillpruneError("ssl method 'mlm' needs the tokenizer (data.text.tokenizer or model.path)")
        tr = import_extra("transformers", "hf", "ssl method 'mlm'")
        tok = tr.AutoTokenizer.from_pretrained(self.tokenizer, local_files_only=True)
        if tok.mask_token_id is None:
            raise DistillpruneError(f"ssl method 'mlm': the tokenizer at {self.tokenizer} has no mask token")
        self._mask_id, self._special = int(tok.mask_token_id), [int(i) for i in tok.all_special_ids]

    def _build(self, encoder: nn.Module, device: torch.device) -> None:
        tr = import_extra("transformers", "hf", "ssl method 'mlm'")
        config = encoder.config  # type: ignore[union-attr]
        with _quiet(tr):
            mlm = tr.AutoModelForMaskedLM.from_config(config)
        self._given.output_type = tr.modeling_outputs.BaseModelOutput
        setattr(mlm, mlm.base_model_prefix, self._given)  # the head reads the real encoder's hidden states
        if getattr(config, "tie_word_embeddings", True):
            mlm.get_output_embeddings().weight = encoder.get_input_embeddings().weight  # type: ignore[operator]
        mlm.to(device)
        shared = {id(p) for p in encoder.parameters()}
        own = {id(p): p for n, m in mlm.named_children() if m is not self._given for p in m.parameters()}
        self.head = nn.ParameterList([p for i, p in own.items() if i not in shared])
        self._mlm, self._encoder = [mlm], [encoder]

    def forward(self, model: nn.Module, x: Views | Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, NamedInputs):
            raise TypeError(f"ssl method 'mlm' reads text (named inputs); got a {type(x).__name__}")
        ids, attention = x.tensors["input_ids"], x.tensors["attention_mask"]
        masked, labels = mask_tokens(ids, attention, self._special, self._mask_id, self._vocab, self.mask_prob)
        seen: list[torch.Tensor] = []
        hook = self._encoder[0].register_forward_hook(lambda m, a, out: seen.append(out[0]))
        try:
            embedding = call(model, NamedInputs({**x.tensors, "input_ids": masked}))
        finally:
            hook.remove()
        self._given.hidden = seen[-1]
        try:
            logits = self._mlm[0](input_ids=masked, attention_mask=attention).logits
        finally:
            self._given.hidden = None
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)
        return loss, embedding

    def trainable(self) -> Iterator[nn.Parameter]:
        return (p for p in self.head if p.requires_grad)


@contextlib.contextmanager
def _quiet(tr: Any) -> Iterator[None]:
    """transformers' notices off while the head is built (restored after)."""
    level = tr.logging.get_verbosity()
    tr.logging.set_verbosity_error()
    try:
        yield
    finally:
        tr.logging.set_verbosity(level)
