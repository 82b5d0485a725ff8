"""The ``ssl`` block of a training stage (train, finetune, prune): which self-supervised method, its options
and the views it learns from. ``{method: simclr, temperature: 0.2, views: {crop_scale: [0.2, 1.0]}}``: the
options besides ``method`` and ``views`` are the method's constructor arguments (as a distillation loss's
are, ``distill.config.LossSpec``)."""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from distillprune.core.config import StrictModel, registered
from distillprune.core.registry import nearest
from distillprune.data.views import ViewsConfig
from distillprune.ssl.base import SSL_METHODS, SSLMethod

if TYPE_CHECKING:
    MethodName = str
else:
    MethodName = registered(SSL_METHODS)


class SSLConfig(BaseModel):
    """A self-supervised training objective: no labels, no teacher; the method's heads are not exported."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    method: MethodName = Field(..., description="simclr | byol | mlm")
    views: ViewsConfig | None = Field(
        None, description="image methods: how the two views of every image are drawn (default: ViewsConfig())"
    )

    @model_validator(mode="after")
    def _options(self) -> SSLConfig:
        cls = SSL_METHODS.get(self.method)
        params = inspect.signature(cls.__init__).parameters
        names = [p for p in params if p != "self"]
        for key, value in (self.model_extra or {}).items():
            if key not in names:
                raise ValueError(
                    f"ssl method '{self.method}' has no option '{key}'{nearest(key, names + ['views'])}; "
                    f"options: {', '.join(names + (['views'] if cls.two_views else [])) or 'none'}"
                )
            default = params[key].default
            if isinstance(value, bool) != isinstance(default, bool) and default is not None:
                raise ValueError(f"ssl method '{self.method}': {key} expects {type(default).__name__}, got {value!r}")
            if type(default) is int and not isinstance(value, int):  # widths, sizes: 1.5 is no width
                raise ValueError(f"ssl method '{self.method}': {key} expects an integer, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"ssl method '{self.method}': {key} must be a finite number, got {value}")
        if self.views is not None and not cls.two_views:
            raise ValueError(f"ssl method '{self.method}' reads {cls.inputs}, not two views: drop views")
        try:  # build it once: bad option values fail at validation, not at training
            self.build()
        except (TypeError, ValueError) as e:
            raise ValueError(f"ssl method '{self.method}': {e}") from None
        return self

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def build(self, **defaults: Any) -> SSLMethod:
        """The method, with ``defaults`` for the options the recipe leaves out (that the method takes)."""
        cls = SSL_METHODS.get(self.method)
        params = inspect.signature(cls.__init__).parameters
        given = {k: v for k, v in defaults.items() if k in params and v is not None}
        return cls(**{**given, **self.options()})

    def views_config(self) -> ViewsConfig | None:
        """The views the method learns from (None: it reads the batch as it is)."""
        return (self.views or ViewsConfig()) if SSL_METHODS.get(self.method).two_views else None


class SSLOptions(StrictModel):
    """The ``ssl`` field of a stage that trains: a self-supervised objective instead of cross-entropy or KD."""

    ssl: SSLConfig | None = Field(
        None,
        description="train self-supervised (no labels, no teacher) with this method instead of cross-entropy "
        "or distillation; the method's heads are dropped from the exported model",
    )

    @model_validator(mode="after")
    def _one_objective(self) -> SSLOptions:
        distill = getattr(self, "distill", None)
        if self.ssl is not None and distill is not None and "distill" in self.model_fields_set:
            raise ValueError(
                "ssl and distill are two training objectives: give one (with ssl, distill is off; for "
                "self-supervised distillation from a teacher use distill with the seed or embedding loss)"
            )
        keep = getattr(self, "keep_best", None)
        if self.ssl is not None and keep is not None and keep.enabled:
            raise ValueError(
                "keep_best has nothing to judge a self-supervised run by (no labels, no held-out loss): drop "
                "keep_best.enabled (the stage trains to the end)"
            )
        return self
