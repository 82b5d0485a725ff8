"""The run's probe: kNN (and linear-probe) top-1 of each measured stage on the recipe's labelled probe data.

Loaded once per run (rank 0, which measures), normalised with the run's own input statistics (what the
model was trained with); each stage's features come from whatever the row measures -- the float model, or
the deployed file of a quantize stage (``embed``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from distillprune.core.batch import ArrayBatch, NamedInputs
from distillprune.data.base import DataBundle
from distillprune.data.config import DataConfig
from distillprune.data.sources import load_data
from distillprune.errors import DataError
from distillprune.measure.probe import ProbeConfig, knn_top1, linear_probe_top1

#: an ``embed(inputs) -> features`` function: the float model (``run_torch``) or a file (``run_onnx``)
Embed = Callable[[ArrayBatch], np.ndarray]


@dataclass
class Probe:
    cfg: ProbeConfig
    data: DataBundle

    def scores(self, embed: Embed) -> dict[str, float]:
        """``{"knn_top1": %, "linear_top1": %}`` of the features ``embed`` gives the probe's splits."""
        d, c = self.data, self.cfg
        y_mem, y_query = d.labels("train"), d.labels("test")
        assert y_mem is not None and y_query is not None  # checked when loaded
        memory, queries = embed(d.inputs("train")), embed(d.inputs("test"))
        out = {"knn_top1": round(knn_top1(memory, y_mem, queries, y_query, c.k, c.temperature), 2)}
        if c.linear:
            out["linear_top1"] = round(linear_probe_top1(memory, y_mem, queries, y_query, c.linear_c, c.linear_iter), 2)
        return out


def load_probe(cfg: ProbeConfig | None, run_data: DataConfig, run: DataBundle) -> Probe | None:
    """The probe data of ``cfg`` (None without a probe block): its own data block, else the run's data source
    with its labels; both splits must be labelled and shaped like the run's inputs."""
    if cfg is None:
        return None
    source = cfg.data or run_data.model_copy(update={"labels": True})
    data = load_data(source)
    where = f"probe.data ({source.source}{' at ' + source.path if source.path else ''})"
    if data.train.y is None or data.test.y is None:
        raise DataError(f"{where}: a probe needs labels in both splits (kNN memory and queries); this data has none")
    text = isinstance(data.train.x, NamedInputs)  # token ids: padded to each data set's own length
    if not text and tuple(data.input_shape) != tuple(run.input_shape):
        raise DataError(f"{where}: inputs of shape {tuple(data.input_shape)}, the run's are {tuple(run.input_shape)}")
    data.mean, data.std = run.mean, run.std  # what the model was trained with
    return Probe(cfg, data)
