"""Evaluation without a classifier: how good a representation is, read off frozen features with a few labels.

* **kNN top-1** (Wu et al., 2018, "Unsupervised Feature Learning via Non-Parametric Instance
  Discrimination"; the protocol of DINO and solo-learn): the features of a labelled *memory* split (the probe
  data's training split) and of the *query* split (its test split) are L2-normalised; each query takes its
  ``k`` most cosine-similar memory samples, each votes for its label with weight ``exp(cos / temperature)``,
  and the class with the most weight is the prediction. Nothing is trained: it says how well the
  embedding's neighbourhoods already follow the classes.
* **linear probe top-1**: a multinomial logistic regression (scikit-learn, L-BFGS) fitted on the standardised
  memory features, scored on the queries: what a linear classifier trained on the frozen features reaches.

kNN measures the geometry the embedding has (what retrieval and clustering see); the linear probe measures
what is linearly decodable, so it is the higher of the two and forgives a badly scaled or rotated
embedding that kNN punishes (docs/self-supervised.md).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from distillprune.core.config import StrictModel
from distillprune.data.config import DataConfig
from distillprune.errors import DataError


class ProbeConfig(StrictModel):
    """The recipe's ``probe`` block: kNN (and linear-probe) top-1 of every measured stage's outputs on a labelled
    probe data set, reported beside latency and size (``report.json``: ``metrics.knn_top1``, ``linear_top1``)."""

    data: DataConfig | None = Field(
        None,
        description="a labelled data set: its training split is the kNN memory (and the linear probe's training "
        "set), its test split the queries (default: the run's data source with its labels); inputs are "
        "normalised with the run's statistics",
    )
    k: int = Field(20, gt=0, description="neighbours that vote")
    temperature: float = Field(0.07, gt=0, description="vote weight exp(cosine / temperature)")
    linear: bool = Field(True, description="also fit a logistic-regression probe on the frozen features")
    linear_c: float = Field(1.0, gt=0, description="the probe's inverse L2 regularisation (scikit-learn's C)")
    linear_iter: int = Field(1000, gt=0, description="the probe's L-BFGS iterations at most")


@torch.no_grad()
def knn_top1(
    memory: np.ndarray | torch.Tensor,
    memory_labels: np.ndarray | torch.Tensor,
    queries: np.ndarray | torch.Tensor,
    query_labels: np.ndarray | torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> float:
    """Weighted kNN top-1 (%) of ``queries`` against the labelled ``memory`` (cosine similarity)."""
    bank = F.normalize(torch.as_tensor(np.asarray(memory), dtype=torch.float32).flatten(1), dim=1)
    q_all = F.normalize(torch.as_tensor(np.asarray(queries), dtype=torch.float32).flatten(1), dim=1)
    labels = torch.as_tensor(np.asarray(memory_labels), dtype=torch.long)
    truth = torch.as_tensor(np.asarray(query_labels), dtype=torch.long)
    if len(bank) != len(labels) or len(q_all) != len(truth):
        raise DataError(
            f"kNN: {len(bank)} memory features for {len(labels)} labels, {len(q_all)} queries for {len(truth)}"
        )
    if bank.shape[1] != q_all.shape[1]:
        raise DataError(f"kNN: memory features have width {bank.shape[1]}, queries {q_all.shape[1]}")
    k = min(k, len(bank))
    classes = int(max(int(labels.max()), int(truth.max()))) + 1
    correct = 0
    for i in range(0, len(q_all), chunk):
        sim, idx = (q_all[i : i + chunk] @ bank.T).topk(k, dim=1)
        votes = torch.zeros(len(sim), classes).scatter_add_(1, labels[idx], (sim / temperature).exp())
        correct += int((votes.argmax(1) == truth[i : i + chunk]).sum())
    return 100.0 * correct / len(q_all)


def linear_probe_top1(
    memory: np.ndarray,
    memory_labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    c: float = 1.0,
    max_iter: int = 1000,
) -> float:
    """Top-1 (%) of a logistic regression fitted on the standardised ``memory`` features, on ``queries``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(memory, dtype=np.float64).reshape(len(memory), -1)
    xq = np.asarray(queries, dtype=np.float64).reshape(len(queries), -1)
    if len(np.unique(memory_labels)) < 2:
        raise DataError("linear probe: the probe's training split holds one class; it needs at least two")
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=c, max_iter=max_iter)
    with warnings.catch_warnings():  # a capped probe is still a probe: the cap is in the recipe
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(x), np.asarray(memory_labels))
    return float(100.0 * (clf.predict(scaler.transform(xq)) == np.asarray(query_labels)).mean())
